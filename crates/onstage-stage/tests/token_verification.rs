//! Participant tokens presented to the media plane (BEHAVIOUR §3), with real tokens:
//! issued by the control plane, and self-signed with a P-384 key imported through
//! it. The control plane's clock stands still at the test kit's epoch.

use std::sync::Arc;

use onstage_stage::model::EventErrorCode;
use onstage_stage::service::{
    NewStage, SignatureCheck, TokenRequest, TokenVerificationError, VerifiedToken,
};
use onstage_stage::token::{TokenIssuer, TokenRejection};
use onstage_stage::{ControlPlane, ids::Account};
use onstage_testkit::tokens::{customer_key, sign};
use onstage_testkit::{
    EPOCH, EVENTS_URL, ManualClock, TestStore, WHIP_URL, account, control_plane,
};
use serde_json::json;

async fn setup() -> (Arc<ControlPlane>, onstage_stage::model::Stage) {
    let control = control_plane(Arc::new(TestStore::new().await), ManualClock::new()).await;
    let (stage, _) = control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap();
    (control, stage)
}

/// The control plane's time, in seconds.
fn now_secs() -> i64 {
    EPOCH / 1000
}

fn rejection(result: Result<VerifiedToken, TokenVerificationError>) -> TokenRejection {
    match result {
        Err(TokenVerificationError::Rejected { rejection, .. }) => rejection,
        Err(TokenVerificationError::Internal(e)) => panic!("internal error: {e}"),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

/// Claims of a valid self-signed token for `stage`.
fn self_signed_claims(stage: &onstage_stage::model::Stage, jti: &str) -> serde_json::Value {
    let now = now_secs();
    json!({
        "exp": now + 3600,
        "iat": now,
        "jti": jti,
        "resource": stage.arn.to_string(),
        "topic": stage.arn.id,
        "events_url": EVENTS_URL,
        "whip_url": WHIP_URL,
        "user_id": "alice",
        "attributes": {"role": "host"},
        "capabilities": {"allow_publish": true, "allow_subscribe": true},
        "version": "1.0",
    })
}

#[tokio::test]
async fn accepts_a_server_issued_token_for_its_stage() {
    let (control, stage) = setup().await;
    let issued = control
        .create_participant_token(
            &account(),
            &stage.arn.to_string(),
            TokenRequest {
                user_id: Some("bob".into()),
                capabilities: Some(vec![onstage_stage::service::Capability::Subscribe]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let verified = control
        .verify_participant_token(&issued.token, None, now_secs())
        .await
        .unwrap();
    assert_eq!(verified.issuer, TokenIssuer::Server);
    assert_eq!(verified.stage.arn, stage.arn);
    assert_eq!(verified.claims.jti, issued.participant_id);
    assert_eq!(verified.claims.user_id.as_deref(), Some("bob"));
    assert!(!verified.claims.capabilities.allow_publish);
    assert!(verified.claims.capabilities.allow_subscribe);
    // Presented at its own stage's events URL.
    control
        .verify_participant_token(&issued.token, Some(&stage.arn.id), now_secs())
        .await
        .unwrap();
}

#[tokio::test]
async fn refuses_expired_forged_and_malformed_tokens() {
    let (control, stage) = setup().await;
    let issued = control
        .create_participant_token(
            &account(),
            &stage.arn.to_string(),
            TokenRequest {
                duration_minutes: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // Expired: the same token a minute and a second later. Still genuine, so the
    // refusal is recorded (as IVS does).
    let later = now_secs() + 61;
    match control
        .verify_participant_token(&issued.token, None, later)
        .await
    {
        Err(TokenVerificationError::Rejected {
            rejection: TokenRejection::Expired(_),
            claimed: Some(_),
            signature: SignatureCheck::Verified,
        }) => {}
        other => panic!("{other:?}"),
    }
    // Presented at another stage's events socket: genuine too.
    match control
        .verify_participant_token(&issued.token, Some("zzzzzzzzzzzz"), now_secs())
        .await
    {
        Err(TokenVerificationError::Rejected {
            rejection: TokenRejection::WrongStage(_),
            signature: SignatureCheck::Verified,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }

    // Forged: a valid token's claims signed with another key under the server's kid.
    let header = jsonwebtoken::decode_header(&issued.token).unwrap();
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&issued.token).unwrap();
    let (other_key, _) = customer_key();
    let forged = sign(&other_key, header.kid.as_deref().unwrap(), &claims);
    let result = control
        .verify_participant_token(&forged, None, now_secs())
        .await;
    match result {
        Err(TokenVerificationError::Rejected {
            rejection,
            claimed,
            signature,
        }) => {
            assert_eq!(rejection, TokenRejection::BadSignature);
            // Not believed: a forged token is never recorded.
            assert_eq!(signature, SignatureCheck::NotVerified);
            // What it claimed is kept, to record the refusal where it was aimed.
            let claimed = claimed.unwrap();
            assert_eq!(
                claimed.participant_id.as_deref(),
                Some(issued.participant_id.as_str())
            );
            assert_eq!(claimed.stage_arn.as_ref(), Some(&stage.arn));
        }
        other => panic!("{other:?}"),
    }

    // Tampered claims under the real signature.
    let mut parts: Vec<String> = issued.token.split('.').map(str::to_owned).collect();
    let mut tampered = claims.clone();
    tampered["capabilities"] = json!({"allow_publish": true, "allow_subscribe": true});
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tampered.to_string());
    let tampered = parts.join(".");
    assert_eq!(
        rejection(
            control
                .verify_participant_token(&tampered, None, now_secs())
                .await
        ),
        TokenRejection::BadSignature
    );

    // Not a JWT at all.
    match control
        .verify_participant_token("not-a-token", None, now_secs())
        .await
    {
        Err(TokenVerificationError::Rejected {
            rejection: TokenRejection::Malformed(_),
            claimed: None,
            signature: SignatureCheck::NotVerified,
        }) => {}
        other => panic!("{other:?}"),
    }

    // Another algorithm.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: header.kid.clone(),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    assert!(matches!(
        rejection(
            control
                .verify_participant_token(&hs, None, now_secs())
                .await
        ),
        TokenRejection::Malformed(_)
    ));

    for r in [
        TokenRejection::BadSignature,
        TokenRejection::Expired("x".into()),
        TokenRejection::Malformed("x".into()),
    ] {
        assert_eq!(r.error_code(), EventErrorCode::InvalidInput);
    }
}

#[tokio::test]
async fn refuses_a_token_at_another_stage_or_for_a_deleted_one() {
    let (control, stage) = setup().await;
    let (other, _) = control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap();
    let issued = control
        .create_participant_token(&account(), &stage.arn.to_string(), TokenRequest::default())
        .await
        .unwrap();
    assert!(matches!(
        rejection(
            control
                .verify_participant_token(&issued.token, Some(&other.arn.id), now_secs())
                .await
        ),
        TokenRejection::WrongStage(_)
    ));
    control
        .delete_stage(&account(), &stage.arn.to_string())
        .await
        .unwrap();
    assert!(matches!(
        rejection(
            control
                .verify_participant_token(&issued.token, None, now_secs())
                .await
        ),
        TokenRejection::WrongStage(_)
    ));
}

#[tokio::test]
async fn accepts_self_signed_tokens_under_an_imported_key() {
    let (control, stage) = setup().await;
    let (private, pem) = customer_key();
    let key = control
        .import_public_key(&account(), &pem, None, Default::default())
        .await
        .unwrap();
    let token = sign(
        &private,
        &key.arn.to_string(),
        &self_signed_claims(&stage, "my_participant-1"),
    );
    let verified = control
        .verify_participant_token(&token, Some(&stage.arn.id), now_secs())
        .await
        .unwrap();
    assert_eq!(verified.issuer, TokenIssuer::PublicKey(key.arn.clone()));
    assert_eq!(verified.claims.jti, "my_participant-1");
    assert_eq!(verified.claims.attributes.unwrap()["role"], "host");

    // Without the optional claims.
    let mut minimal = self_signed_claims(&stage, "p2");
    minimal.as_object_mut().unwrap().remove("user_id");
    minimal.as_object_mut().unwrap().remove("attributes");
    control
        .verify_participant_token(
            &sign(&private, &key.arn.to_string(), &minimal),
            None,
            now_secs(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn enforces_the_self_signed_claim_rules() {
    let (control, stage) = setup().await;
    let (private, pem) = customer_key();
    let key = control
        .import_public_key(&account(), &pem, None, Default::default())
        .await
        .unwrap();
    let kid = key.arn.to_string();
    let check = |claims: serde_json::Value| {
        let control = control.clone();
        let token = sign(&private, &kid, &claims);
        async move {
            rejection(
                control
                    .verify_participant_token(&token, None, now_secs())
                    .await,
            )
        }
    };

    for required in [
        "exp",
        "iat",
        "jti",
        "resource",
        "topic",
        "events_url",
        "whip_url",
        "capabilities",
        "version",
    ] {
        let mut claims = self_signed_claims(&stage, "p");
        claims.as_object_mut().unwrap().remove(required);
        let r = check(claims).await;
        // Without `resource` the token names no stage at all.
        assert!(
            matches!(r, TokenRejection::Malformed(_)),
            "{required}: {r:?}"
        );
    }

    let mut claims = self_signed_claims(&stage, "p");
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() + 14 * 24 * 3600 + 1);
    assert!(matches!(check(claims).await, TokenRejection::Malformed(m) if m.contains("14 days")));

    let mut claims = self_signed_claims(&stage, "p");
    claims["version"] = json!("0.0");
    assert!(matches!(check(claims).await, TokenRejection::Malformed(m) if m.contains("version")));

    let mut claims = self_signed_claims(&stage, "p");
    claims["whip_url"] = json!("https://elsewhere.example/whip");
    assert!(matches!(check(claims).await, TokenRejection::WrongStage(m) if m.contains("whip_url")));

    let mut claims = self_signed_claims(&stage, "p");
    claims["events_url"] = json!("wss://elsewhere.example/events");
    assert!(
        matches!(check(claims).await, TokenRejection::WrongStage(m) if m.contains("events_url"))
    );

    let mut claims = self_signed_claims(&stage, "p");
    claims["topic"] = json!("abcdefabcdef");
    assert!(matches!(check(claims).await, TokenRejection::WrongStage(_)));

    let mut claims = self_signed_claims(&stage, "p");
    claims["jti"] = json!("has spaces");
    assert!(matches!(check(claims).await, TokenRejection::Malformed(_)));

    let mut claims = self_signed_claims(&stage, "p");
    claims["exp"] = json!(now_secs() - 1);
    claims["iat"] = json!(now_secs() - 100);
    assert!(matches!(check(claims).await, TokenRejection::Expired(_)));

    let mut claims = self_signed_claims(&stage, "p");
    claims["iat"] = json!(now_secs() + 3600);
    claims["exp"] = json!(now_secs() + 7200);
    assert!(matches!(check(claims).await, TokenRejection::Malformed(m) if m.contains("future")));
}

#[tokio::test]
async fn a_deleted_or_foreign_key_verifies_nothing() {
    let (control, stage) = setup().await;
    let (private, pem) = customer_key();
    let key = control
        .import_public_key(&account(), &pem, None, Default::default())
        .await
        .unwrap();
    let token = sign(
        &private,
        &key.arn.to_string(),
        &self_signed_claims(&stage, "p"),
    );
    control
        .verify_participant_token(&token, None, now_secs())
        .await
        .unwrap();

    control
        .delete_public_key(&account(), &key.arn.to_string())
        .await
        .unwrap();
    assert_eq!(
        rejection(
            control
                .verify_participant_token(&token, None, now_secs())
                .await
        ),
        TokenRejection::UnknownKey(key.arn.to_string())
    );

    // A key imported in another account cannot sign for this one's stages.
    let foreign = Account {
        id: "111111111111".into(),
        region: "us-east-1".into(),
    };
    let foreign_key = control
        .import_public_key(&foreign, &pem, None, Default::default())
        .await
        .unwrap();
    let token = sign(
        &private,
        &foreign_key.arn.to_string(),
        &self_signed_claims(&stage, "p"),
    );
    assert!(matches!(
        rejection(
            control
                .verify_participant_token(&token, None, now_secs())
                .await
        ),
        TokenRejection::UnknownKey(_)
    ));

    // A kid that is neither the server's nor a public-key ARN.
    let token = sign(&private, "some-other-kid", &self_signed_claims(&stage, "p"));
    assert!(matches!(
        rejection(
            control
                .verify_participant_token(&token, None, now_secs())
                .await
        ),
        TokenRejection::UnknownKey(_)
    ));

    // The server's kid on a self-signed token is a forgery.
    let issued = control
        .create_participant_token(&account(), &stage.arn.to_string(), TokenRequest::default())
        .await
        .unwrap();
    let server_kid = jsonwebtoken::decode_header(&issued.token)
        .unwrap()
        .kid
        .unwrap();
    let token = sign(&private, &server_kid, &self_signed_claims(&stage, "p"));
    assert_eq!(
        rejection(
            control
                .verify_participant_token(&token, None, now_secs())
                .await
        ),
        TokenRejection::BadSignature
    );
}
