//! The control plane as aws-sdk-ivsrealtime sees it: every operation of BEHAVIOUR §1–§3
//! through the real SDK against a real `onstage serve` process, including the error
//! codes and messages the SDK surfaces, SDK pagination, token verification through
//! the published JWKS, and persistence across a restart.
//!
//! Each test starts its own server with its own data directory.

#[macro_use]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ivsrealtime::Client;
use aws_sdk_ivsrealtime::types::{
    AutoParticipantRecordingConfiguration, ChannelDestinationConfiguration,
    DestinationConfiguration, ParticipantToken, ParticipantTokenCapability,
    ParticipantTokenConfiguration, S3StorageConfiguration, Stage, Video,
};
use common::{ACCOUNT_ID, Server, arn_id, is_arn, p256_public_key_pem, p384_public_key_pem};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn create_stage(client: &Client, name: &str) -> Stage {
    client
        .create_stage()
        .name(name)
        .send()
        .await
        .expect("CreateStage")
        .stage
        .expect("CreateStage returns the stage")
}

/// Verifies a participant token against the server's JWKS and returns its claims.
async fn verify_token(server: &Server, token: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("the token is a JWT");
    assert_eq!(header.alg, Algorithm::ES384, "tokens are ES384");
    let kid = header.kid.expect("the token header names its key (kid)");
    let jwks = server.jwks().await;
    let keys = jwks["keys"].as_array().expect("JWKS has keys");
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("no key with kid {kid} in the JWKS {jwks}"));
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("EC"), Some("P-384")),
        "JWK {jwk}"
    );
    let key = DecodingKey::from_ec_components(
        jwk["x"].as_str().expect("JWK x"),
        jwk["y"].as_str().expect("JWK y"),
    )
    .expect("a usable EC key");
    let mut validation = Validation::new(Algorithm::ES384);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iat", "jti"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("the token does not verify with JWKS key {kid}: {e}"))
        .claims
}

/// Checks the claims of a server-issued token against the stage and the API's
/// description of the token (BEHAVIOUR §3).
fn check_claims(claims: &Value, stage: &Stage, token: &ParticipantToken) {
    let endpoints = stage.endpoints().expect("stage endpoints");
    assert_eq!(
        claims["jti"].as_str(),
        token.participant_id(),
        "jti is the participant id"
    );
    assert_eq!(
        claims["resource"].as_str(),
        Some(stage.arn()),
        "resource is the stage ARN"
    );
    assert_eq!(
        claims["topic"].as_str(),
        Some(arn_id(stage.arn())),
        "topic is the stage id"
    );
    assert_eq!(
        claims["whip_url"].as_str(),
        endpoints.whip(),
        "whip_url is the stage's WHIP endpoint"
    );
    assert_eq!(
        claims["events_url"].as_str(),
        endpoints.events(),
        "events_url is the stage's events endpoint"
    );
    assert_eq!(
        claims["version"], "0.0",
        "server-issued tokens are version 0.0"
    );
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert!((iat - now()).abs() < 120, "iat {iat} is now");
    let duration = i64::from(token.duration().expect("duration"));
    assert_eq!(exp - iat, duration * 60, "exp = iat + duration");
    assert_eq!(
        token.expiration_time().map(|t| t.secs()),
        Some(exp),
        "expirationTime is exp"
    );
    match token.user_id() {
        Some(u) => assert_eq!(claims["user_id"].as_str(), Some(u)),
        None => assert!(
            claims.get("user_id").is_none_or(|v| v.is_null() || v == ""),
            "no user_id: {claims}"
        ),
    }
    match token.attributes() {
        Some(a) if !a.is_empty() => assert_eq!(claims["attributes"], json!(a)),
        _ => assert!(
            claims.get("attributes").is_none(),
            "attributes only when set: {claims}"
        ),
    }
    let mut capabilities = serde_json::Map::new();
    for c in token.capabilities() {
        match c {
            ParticipantTokenCapability::Publish => {
                capabilities.insert("allow_publish".into(), json!(true))
            }
            ParticipantTokenCapability::Subscribe => {
                capabilities.insert("allow_subscribe".into(), json!(true))
            }
            other => panic!("unexpected capability {other:?}"),
        };
    }
    assert_eq!(
        claims["capabilities"],
        Value::Object(capabilities),
        "capabilities list only what is granted"
    );
}

// ----- stages ---------------------------------------------------------------------

#[tokio::test]
async fn stages_create_get_update_list_delete() {
    let server = Server::start().await;
    let client = server.client();

    let created = client
        .create_stage()
        .name("first-stage")
        .set_tags(Some(tags(&[("team", "video"), ("env", "test")])))
        .participant_token_configurations(
            ParticipantTokenConfiguration::builder()
                .user_id("alice")
                .duration(60)
                .attributes("role", "host")
                .capabilities(ParticipantTokenCapability::Publish)
                .build(),
        )
        .participant_token_configurations(
            ParticipantTokenConfiguration::builder()
                .user_id("bob")
                .build(),
        )
        .participant_token_configurations(
            ParticipantTokenConfiguration::builder()
                .user_id("carol")
                .set_capabilities(Some(vec![]))
                .build(),
        )
        .send()
        .await
        .expect("CreateStage");
    let stage = created.stage().expect("stage");
    assert!(
        is_arn(stage.arn(), ACCOUNT_ID, "stage"),
        "stage ARN {}",
        stage.arn()
    );
    assert_eq!(stage.name(), Some("first-stage"));
    assert_eq!(
        stage.tags(),
        Some(&tags(&[("team", "video"), ("env", "test")]))
    );
    assert_eq!(stage.active_session_id(), None, "no session on a new stage");
    let endpoints = stage.endpoints().expect("endpoints");
    assert!(
        endpoints.whip().is_some_and(|u| u.starts_with("http")),
        "whip endpoint {endpoints:?}"
    );
    assert!(
        endpoints.events().is_some_and(|u| u.starts_with("ws")),
        "events endpoint {endpoints:?}"
    );

    // Tokens come back in request order, with the documented defaults.
    let tokens = created.participant_tokens();
    let users: Vec<_> = tokens.iter().map(|t| t.user_id()).collect();
    assert_eq!(users, [Some("alice"), Some("bob"), Some("carol")]);
    assert_eq!(tokens[0].duration(), Some(60));
    assert_eq!(
        tokens[0].capabilities(),
        [ParticipantTokenCapability::Publish]
    );
    assert_eq!(tokens[0].attributes(), Some(&tags(&[("role", "host")])));
    assert_eq!(tokens[1].duration(), Some(720), "default duration");
    assert_eq!(
        tokens[1].capabilities(),
        [
            ParticipantTokenCapability::Publish,
            ParticipantTokenCapability::Subscribe
        ],
        "default capabilities"
    );
    assert!(
        tokens[2].capabilities().is_empty(),
        "capabilities [] grants nothing"
    );
    let ids: BTreeSet<_> = tokens
        .iter()
        .map(|t| t.participant_id().expect("participantId"))
        .collect();
    assert_eq!(ids.len(), 3, "distinct participant ids");
    for token in tokens {
        let claims = verify_token(&server, token.token().expect("token")).await;
        check_claims(&claims, stage, token);
    }

    let got = client
        .get_stage()
        .arn(stage.arn())
        .send()
        .await
        .expect("GetStage");
    assert_eq!(
        got.stage(),
        Some(stage),
        "GetStage answers what CreateStage returned"
    );

    let updated = client
        .update_stage()
        .arn(stage.arn())
        .name("renamed")
        .send()
        .await
        .expect("UpdateStage");
    assert_eq!(updated.stage().and_then(|s| s.name()), Some("renamed"));
    assert_eq!(
        updated.stage().and_then(|s| s.tags()),
        stage.tags(),
        "UpdateStage keeps the tags"
    );
    let got = client
        .get_stage()
        .arn(stage.arn())
        .send()
        .await
        .expect("GetStage");
    assert_eq!(got.stage().and_then(|s| s.name()), Some("renamed"));

    let unnamed = client
        .create_stage()
        .send()
        .await
        .expect("CreateStage without arguments");
    let unnamed = unnamed.stage().expect("stage");
    assert!(
        unnamed.name().unwrap_or("").is_empty(),
        "a stage created without name has none"
    );
    assert!(unnamed.tags().is_none_or(|t| t.is_empty()));

    let listed = client.list_stages().send().await.expect("ListStages");
    let summaries = listed.stages();
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    let summary = summaries
        .iter()
        .find(|s| s.arn() == stage.arn())
        .expect("the stage is listed");
    assert_eq!(summary.name(), Some("renamed"));
    assert_eq!(summary.tags(), stage.tags());
    assert!(listed.next_token().is_none(), "one page");

    client
        .delete_stage()
        .arn(stage.arn())
        .send()
        .await
        .expect("DeleteStage");
    expect_failure!(client.get_stage().arn(stage.arn()).send().await)
        .is(404, "ResourceNotFoundException")
        .names(&[arn_id(stage.arn())]);
    expect_failure!(client.delete_stage().arn(stage.arn()).send().await)
        .is(404, "ResourceNotFoundException")
        .names(&[arn_id(stage.arn())]);
    expect_failure!(
        client
            .update_stage()
            .arn(stage.arn())
            .name("x")
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&[arn_id(stage.arn())]);
    let listed = client.list_stages().send().await.expect("ListStages");
    assert_eq!(listed.stages().len(), 1);
}

#[tokio::test]
async fn stage_requests_are_validated_and_errors_name_the_field() {
    let server = Server::start().await;
    let client = server.client();

    expect_failure!(client.create_stage().name("not a valid name!").send().await)
        .is(400, "ValidationException")
        .names(&["name"]);
    expect_failure!(client.create_stage().name("x".repeat(129)).send().await)
        .is(400, "ValidationException")
        .names(&["name"]);
    let thirteen: Vec<_> = (0..13)
        .map(|_| ParticipantTokenConfiguration::builder().build())
        .collect();
    expect_failure!(
        client
            .create_stage()
            .set_participant_token_configurations(Some(thirteen))
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["participantTokenConfigurations"]);
    expect_failure!(
        client
            .create_stage()
            .participant_token_configurations(
                ParticipantTokenConfiguration::builder()
                    .duration(20161)
                    .build()
            )
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["duration"]);
    let many_tags: HashMap<_, _> = (0..51).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    expect_failure!(client.create_stage().set_tags(Some(many_tags)).send().await)
        .is(400, "ValidationException")
        .names(&["tags"]);
    expect_failure!(
        client
            .get_stage()
            .arn("arn:aws:ivs:us-east-1:000000000000:channel/abcdABCD1234")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["arn"]);
    expect_failure!(client.list_stages().max_results(101).send().await)
        .is(400, "ValidationException")
        .names(&["maxResults"]);
    expect_failure!(client.list_stages().max_results(0).send().await)
        .is(400, "ValidationException")
        .names(&["maxResults"]);
    expect_failure!(client.list_stages().next_token("forged").send().await)
        .is(400, "ValidationException")
        .names(&["nextToken"]);
    // Nothing was created by the refused requests.
    assert!(
        client
            .list_stages()
            .send()
            .await
            .expect("ListStages")
            .stages()
            .is_empty()
    );

    let missing = "arn:aws:ivs:us-east-1:000000000000:stage/abcdABCD1234";
    expect_failure!(client.get_stage().arn(missing).send().await)
        .is(404, "ResourceNotFoundException")
        .names(&["abcdABCD1234"]);
}

#[tokio::test]
async fn stage_pagination_with_the_sdk_paginator() {
    let server = Server::start().await;
    let client = server.client();
    let mut created = BTreeSet::new();
    for i in 0..7 {
        created.insert(
            create_stage(&client, &format!("page-{i}"))
                .await
                .arn()
                .to_owned(),
        );
    }

    // The SDK's ListStages paginator has no `.items()` (the model names no item
    // member for it), so collect the pages and flatten them.
    let pages = client
        .list_stages()
        .max_results(2)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .expect("ListStages pages");
    let listed: Vec<String> = pages
        .iter()
        .flat_map(|p| p.stages())
        .map(|s| s.arn().to_owned())
        .collect();
    assert_eq!(listed.len(), 7, "every stage exactly once: {listed:?}");
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), created);

    let sizes: Vec<usize> = pages.iter().map(|p| p.stages().len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 7);
    assert!(
        sizes.iter().all(|&n| n <= 2),
        "pages respect maxResults: {sizes:?}"
    );
    assert_eq!(sizes.len(), 4, "pages: {sizes:?}");
    for p in &pages {
        if let Some(token) = p.next_token() {
            assert!(token.len() <= 1024, "nextToken too long");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=_-".contains(&b)),
                "nextToken {token:?} outside [a-zA-Z0-9+/=_-]"
            );
        }
    }

    // A page token is stable under inserts made while paging.
    let first = client
        .list_stages()
        .max_results(3)
        .send()
        .await
        .expect("ListStages");
    let token = first.next_token().expect("more pages").to_owned();
    create_stage(&client, "late").await;
    let mut seen: Vec<String> = first.stages().iter().map(|s| s.arn().to_owned()).collect();
    let mut next = Some(token);
    while let Some(t) = next {
        let page = client
            .list_stages()
            .max_results(3)
            .next_token(t)
            .send()
            .await
            .expect("ListStages");
        seen.extend(page.stages().iter().map(|s| s.arn().to_owned()));
        next = page.next_token().map(str::to_owned);
    }
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no stage twice while paging: {seen:?}"
    );
    assert!(created.is_subset(&unique), "no stage lost while paging");

    // Tokens belong to their operation.
    let stage_token = client
        .list_stages()
        .max_results(1)
        .send()
        .await
        .expect("ListStages")
        .next_token
        .expect("token");
    expect_failure!(
        client
            .list_public_keys()
            .next_token(stage_token)
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["nextToken"]);
}

// ----- participant tokens -----------------------------------------------------------

#[tokio::test]
async fn participant_tokens_verify_with_the_published_jwks() {
    let server = Server::start().await;
    let client = server.client();
    let stage = create_stage(&client, "tokens").await;

    let full = client
        .create_participant_token()
        .stage_arn(stage.arn())
        .user_id("user-1")
        .attributes("displayName", "Ada")
        .attributes("seat", "3")
        .duration(90)
        .capabilities(ParticipantTokenCapability::Subscribe)
        .send()
        .await
        .expect("CreateParticipantToken")
        .participant_token
        .expect("participantToken");
    let pid = full.participant_id().expect("participantId");
    assert!(
        pid.len() == 12 && pid.bytes().all(|b| b.is_ascii_alphanumeric()),
        "participant id {pid}"
    );
    assert_eq!(full.user_id(), Some("user-1"));
    assert_eq!(full.duration(), Some(90));
    assert_eq!(full.capabilities(), [ParticipantTokenCapability::Subscribe]);
    assert_eq!(
        full.attributes(),
        Some(&tags(&[("displayName", "Ada"), ("seat", "3")]))
    );
    let claims = verify_token(&server, full.token().expect("token")).await;
    check_claims(&claims, &stage, &full);
    assert_eq!(claims["capabilities"], json!({ "allow_subscribe": true }));

    let plain = client
        .create_participant_token()
        .stage_arn(stage.arn())
        .send()
        .await
        .expect("CreateParticipantToken")
        .participant_token
        .expect("participantToken");
    assert_eq!(plain.duration(), Some(720));
    assert_ne!(
        plain.participant_id(),
        full.participant_id(),
        "each token is a new participant"
    );
    let claims = verify_token(&server, plain.token().expect("token")).await;
    check_claims(&claims, &stage, &plain);
    assert_eq!(
        claims["capabilities"],
        json!({ "allow_publish": true, "allow_subscribe": true })
    );
    assert!(claims.get("attributes").is_none());

    let nothing = client
        .create_participant_token()
        .stage_arn(stage.arn())
        .set_capabilities(Some(vec![]))
        .send()
        .await
        .expect("CreateParticipantToken")
        .participant_token
        .expect("participantToken");
    assert!(nothing.capabilities().is_empty());
    let claims = verify_token(&server, nothing.token().expect("token")).await;
    assert_eq!(
        claims["capabilities"],
        json!({}),
        "capabilities [] grants nothing"
    );

    // The JWKS is public and every key in it is an ES384 P-384 key with an id.
    let (status, headers, _) = server.get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    assert!(
        headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("json"))
    );
    for key in server.jwks().await["keys"].as_array().expect("keys") {
        assert!(
            key["kid"].is_string() && key["x"].is_string() && key["y"].is_string(),
            "{key}"
        );
        assert!(
            key.get("d").is_none(),
            "the JWKS must not publish the private key"
        );
    }

    // A tampered token does not verify.
    let token = full.token().expect("token");
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = {
        use base64::Engine;
        let mut claims = verify_token(&server, token).await;
        claims["capabilities"] = json!({ "allow_publish": true, "allow_subscribe": true });
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
    };
    parts[1] = &forged_payload;
    let forged = parts.join(".");
    let header = jsonwebtoken::decode_header(&forged).expect("header");
    let jwks = server.jwks().await;
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == header.kid.as_deref().unwrap_or(""))
        .expect("key");
    let key = DecodingKey::from_ec_components(
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y"),
    )
    .expect("key");
    let mut validation = Validation::new(Algorithm::ES384);
    validation.validate_aud = false;
    assert!(
        jsonwebtoken::decode::<Value>(&forged, &key, &validation).is_err(),
        "a forged token must not verify"
    );

    // Refusals.
    let missing = "arn:aws:ivs:us-east-1:000000000000:stage/abcdABCD1234";
    expect_failure!(
        client
            .create_participant_token()
            .stage_arn(missing)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&["abcdABCD1234"]);
    expect_failure!(
        client
            .create_participant_token()
            .stage_arn(stage.arn())
            .duration(0)
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["duration"]);
    expect_failure!(
        client
            .create_participant_token()
            .stage_arn(stage.arn())
            .duration(20161)
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["duration"]);
    expect_failure!(
        client
            .create_participant_token()
            .stage_arn(stage.arn())
            .user_id("u".repeat(129))
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["userId"]);
    let big = "v".repeat(1100);
    expect_failure!(
        client
            .create_participant_token()
            .stage_arn(stage.arn())
            .attributes("k", big)
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["attributes"]);
    expect_failure!(
        client
            .create_participant_token()
            .stage_arn(stage.arn())
            .capabilities(ParticipantTokenCapability::from("BROADCAST"))
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["capabilities"]);
}

// ----- public keys ------------------------------------------------------------------

#[tokio::test]
async fn public_keys_import_get_list_delete_with_quota_and_conflict() {
    let server = Server::start().await;
    let client = server.client();
    let pems: Vec<String> = (0..4).map(|_| p384_public_key_pem()).collect();

    let first = client
        .import_public_key()
        .public_key_material(&pems[0])
        .name("signer-0")
        .set_tags(Some(tags(&[("owner", "backend")])))
        .send()
        .await
        .expect("ImportPublicKey")
        .public_key
        .expect("publicKey");
    let arn = first.arn().expect("arn").to_owned();
    assert!(
        is_arn(&arn, ACCOUNT_ID, "public-key"),
        "public key ARN {arn}"
    );
    assert_eq!(first.name(), Some("signer-0"));
    assert_eq!(first.tags(), Some(&tags(&[("owner", "backend")])));
    assert_eq!(
        first.public_key_material().map(str::trim),
        Some(pems[0].trim())
    );
    assert!(
        first.fingerprint().is_some_and(|f| !f.is_empty()),
        "a fingerprint"
    );

    let got = client
        .get_public_key()
        .arn(&arn)
        .send()
        .await
        .expect("GetPublicKey")
        .public_key
        .expect("publicKey");
    assert_eq!(got, first);

    // The same key material twice is a conflict.
    expect_failure!(
        client
            .import_public_key()
            .public_key_material(&pems[0])
            .name("again")
            .send()
            .await
    )
    .is(409, "ConflictException");

    for (i, pem) in pems.iter().enumerate().take(3).skip(1) {
        client
            .import_public_key()
            .public_key_material(pem)
            .name(format!("signer-{i}"))
            .send()
            .await
            .expect("ImportPublicKey");
    }
    // At most three per account and region.
    expect_failure!(
        client
            .import_public_key()
            .public_key_material(&pems[3])
            .send()
            .await
    )
    .is(402, "ServiceQuotaExceededException");

    let listed = client
        .list_public_keys()
        .send()
        .await
        .expect("ListPublicKeys");
    let names: BTreeSet<_> = listed
        .public_keys()
        .iter()
        .filter_map(|k| k.name())
        .collect();
    assert_eq!(names, BTreeSet::from(["signer-0", "signer-1", "signer-2"]));
    let listed_first = listed
        .public_keys()
        .iter()
        .find(|k| k.arn() == Some(arn.as_str()))
        .expect("listed");
    assert_eq!(listed_first.tags(), Some(&tags(&[("owner", "backend")])));
    let paged = client
        .list_public_keys()
        .max_results(1)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .expect("ListPublicKeys pages");
    assert_eq!(paged.len(), 3);

    client
        .delete_public_key()
        .arn(&arn)
        .send()
        .await
        .expect("DeletePublicKey");
    expect_failure!(client.get_public_key().arn(&arn).send().await)
        .is(404, "ResourceNotFoundException")
        .names(&[arn_id(&arn)]);
    expect_failure!(client.delete_public_key().arn(&arn).send().await)
        .is(404, "ResourceNotFoundException");
    // Deleting frees a slot.
    client
        .import_public_key()
        .public_key_material(&pems[3])
        .send()
        .await
        .expect("ImportPublicKey after a delete");

    // Key material that is not a P-384 public key in PEM.
    expect_failure!(
        client
            .import_public_key()
            .public_key_material("not a key")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["publicKeyMaterial"]);
    expect_failure!(
        client
            .import_public_key()
            .public_key_material(p256_public_key_pem())
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["publicKeyMaterial", "P-384"]);
    expect_failure!(
        client
            .get_public_key()
            .arn("arn:aws:ivs:us-east-1:000000000000:stage/abcdABCD1234")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["arn"]);
}

// ----- tags ---------------------------------------------------------------------------

#[tokio::test]
async fn tags_on_every_taggable_resource() {
    let server = Server::start().await;
    let client = server.client();
    let stage = create_stage(&client, "tagged").await;
    let arn = stage.arn();

    client
        .tag_resource()
        .resource_arn(arn)
        .set_tags(Some(tags(&[("a", "1"), ("b", "2"), ("c", ""), ("d", "4")])))
        .send()
        .await
        .expect("TagResource");
    let listed = client
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .expect("ListTagsForResource");
    assert_eq!(
        listed.tags(),
        &tags(&[("a", "1"), ("b", "2"), ("c", ""), ("d", "4")])
    );
    // Tagging again overwrites values and adds keys.
    client
        .tag_resource()
        .resource_arn(arn)
        .tags("a", "one")
        .tags("e", "5")
        .send()
        .await
        .expect("TagResource");
    client
        .untag_resource()
        .resource_arn(arn)
        .tag_keys("b")
        .tag_keys("d")
        .send()
        .await
        .expect("UntagResource");
    let listed = client
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .expect("ListTagsForResource");
    assert_eq!(listed.tags(), &tags(&[("a", "one"), ("c", ""), ("e", "5")]));
    let got = client.get_stage().arn(arn).send().await.expect("GetStage");
    assert_eq!(
        got.stage().and_then(|s| s.tags()),
        Some(&tags(&[("a", "one"), ("c", ""), ("e", "5")]))
    );
    // Untagging a key that is not there is fine.
    client
        .untag_resource()
        .resource_arn(arn)
        .tag_keys("zzz")
        .send()
        .await
        .expect("UntagResource of a missing key");

    // The other resources carry tags too.
    let key = client
        .import_public_key()
        .public_key_material(p384_public_key_pem())
        .send()
        .await
        .expect("ImportPublicKey")
        .public_key
        .and_then(|k| k.arn)
        .expect("public key arn");
    let storage = client
        .create_storage_configuration()
        .s3(S3StorageConfiguration::builder()
            .bucket_name("tagged-bucket")
            .build()
            .expect("s3"))
        .send()
        .await
        .expect("CreateStorageConfiguration")
        .storage_configuration
        .expect("storageConfiguration")
        .arn;
    let encoder = client
        .create_encoder_configuration()
        .send()
        .await
        .expect("CreateEncoderConfiguration")
        .encoder_configuration
        .expect("encoderConfiguration")
        .arn;
    for resource in [&key, &storage, &encoder] {
        client
            .tag_resource()
            .resource_arn(resource)
            .tags("k", "v")
            .send()
            .await
            .expect("TagResource");
        let listed = client
            .list_tags_for_resource()
            .resource_arn(resource)
            .send()
            .await
            .expect("ListTagsForResource");
        assert_eq!(listed.tags(), &tags(&[("k", "v")]), "tags of {resource}");
        client
            .untag_resource()
            .resource_arn(resource)
            .tag_keys("k")
            .send()
            .await
            .expect("UntagResource");
        let listed = client
            .list_tags_for_resource()
            .resource_arn(resource)
            .send()
            .await
            .expect("ListTagsForResource");
        assert!(listed.tags().is_empty(), "tags of {resource}");
    }

    // Refusals.
    expect_failure!(
        client
            .tag_resource()
            .resource_arn(arn)
            .tags("aws:owner", "x")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["aws:"]);
    expect_failure!(
        client
            .tag_resource()
            .resource_arn(arn)
            .tags("k".repeat(129), "x")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["tags", "key"]);
    expect_failure!(
        client
            .tag_resource()
            .resource_arn(arn)
            .tags("k", "v".repeat(257))
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["tags", "value"]);
    // 3 tags on the stage now; 48 more make 51.
    let too_many: HashMap<_, _> = (0..48)
        .map(|i| (format!("extra{i}"), "v".to_owned()))
        .collect();
    let failure = expect_failure!(
        client
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(too_many))
            .send()
            .await
    );
    assert!(
        matches!(
            (failure.status, failure.code.as_str()),
            (Some(400), "ValidationException") | (Some(402), "ServiceQuotaExceededException")
        ),
        "more than 50 tags must be refused: {failure:#?}"
    );
    assert_eq!(
        client
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .expect("ListTagsForResource")
            .tags()
            .len(),
        3,
        "a refused TagResource changes nothing"
    );
    let missing = "arn:aws:ivs:us-east-1:000000000000:stage/abcdABCD1234";
    expect_failure!(
        client
            .tag_resource()
            .resource_arn(missing)
            .tags("k", "v")
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&["abcdABCD1234"]);
    expect_failure!(
        client
            .list_tags_for_resource()
            .resource_arn(missing)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");
    expect_failure!(
        client
            .untag_resource()
            .resource_arn(missing)
            .tag_keys("k")
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");
    expect_failure!(
        client
            .list_tags_for_resource()
            .resource_arn("arn:aws:ivs:us-east-1:000000000000:stage")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["resourceArn"]);
    // The model's pattern allows only one character before `/`; onstage must not copy it.
    expect_failure!(
        client
            .list_tags_for_resource()
            .resource_arn("arn:aws:ivs:us-east-1:000000000000:s/abcdABCD1234")
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");
}

// ----- storage and encoder configurations -------------------------------------------

#[tokio::test]
async fn storage_configurations_and_their_use_by_stages() {
    let server = Server::start().await;
    let client = server.client();

    let a = client
        .create_storage_configuration()
        .name("recordings-a")
        .s3(S3StorageConfiguration::builder()
            .bucket_name("bucket-a")
            .build()
            .expect("s3"))
        .set_tags(Some(tags(&[("t", "1")])))
        .send()
        .await
        .expect("CreateStorageConfiguration")
        .storage_configuration
        .expect("storageConfiguration");
    assert!(
        is_arn(a.arn(), ACCOUNT_ID, "storage-configuration"),
        "ARN {}",
        a.arn()
    );
    assert_eq!(a.name(), Some("recordings-a"));
    assert_eq!(a.s3().map(|s| s.bucket_name()), Some("bucket-a"));
    assert_eq!(a.tags(), Some(&tags(&[("t", "1")])));
    let got = client
        .get_storage_configuration()
        .arn(a.arn())
        .send()
        .await
        .expect("GetStorageConfiguration");
    assert_eq!(got.storage_configuration(), Some(&a));
    let b = client
        .create_storage_configuration()
        .s3(S3StorageConfiguration::builder()
            .bucket_name("bucket-b")
            .build()
            .expect("s3"))
        .send()
        .await
        .expect("CreateStorageConfiguration")
        .storage_configuration
        .expect("storageConfiguration");
    let listed = client
        .list_storage_configurations()
        .send()
        .await
        .expect("ListStorageConfigurations");
    let arns: BTreeSet<_> = listed
        .storage_configurations()
        .iter()
        .map(|s| s.arn())
        .collect();
    assert_eq!(arns, BTreeSet::from([a.arn(), b.arn()]));
    let pages = client
        .list_storage_configurations()
        .max_results(1)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .expect("ListStorageConfigurations pages");
    let paged: BTreeSet<_> = pages
        .iter()
        .flat_map(|p| p.storage_configurations())
        .map(|s| s.arn())
        .collect();
    assert_eq!(paged, arns);

    // A stage that records to A.
    let recording = |arn: &str| {
        AutoParticipantRecordingConfiguration::builder()
            .storage_configuration_arn(arn)
            .build()
            .expect("recording configuration")
    };
    let stage = client
        .create_stage()
        .name("recorded")
        .auto_participant_recording_configuration(recording(a.arn()))
        .send()
        .await
        .expect("CreateStage with a recording configuration")
        .stage
        .expect("stage");
    let config = stage
        .auto_participant_recording_configuration()
        .expect("autoParticipantRecordingConfiguration");
    assert_eq!(config.storage_configuration_arn(), a.arn());

    let failure = expect_failure!(
        client
            .delete_storage_configuration()
            .arn(a.arn())
            .send()
            .await
    );
    failure
        .is(409, "ConflictException")
        .names(&[arn_id(a.arn()), arn_id(stage.arn())]);
    client
        .get_storage_configuration()
        .arn(a.arn())
        .send()
        .await
        .expect("a refused delete keeps it");

    // Moving the stage to B frees A and pins B.
    let updated = client
        .update_stage()
        .arn(stage.arn())
        .auto_participant_recording_configuration(recording(b.arn()))
        .send()
        .await
        .expect("UpdateStage");
    assert_eq!(
        updated
            .stage()
            .and_then(|s| s.auto_participant_recording_configuration())
            .map(|c| c.storage_configuration_arn()),
        Some(b.arn())
    );
    client
        .delete_storage_configuration()
        .arn(a.arn())
        .send()
        .await
        .expect("DeleteStorageConfiguration of an unused one");
    expect_failure!(client.get_storage_configuration().arn(a.arn()).send().await)
        .is(404, "ResourceNotFoundException")
        .names(&[arn_id(a.arn())]);
    expect_failure!(
        client
            .delete_storage_configuration()
            .arn(b.arn())
            .send()
            .await
    )
    .is(409, "ConflictException");

    client
        .delete_stage()
        .arn(stage.arn())
        .send()
        .await
        .expect("DeleteStage");
    client
        .delete_storage_configuration()
        .arn(b.arn())
        .send()
        .await
        .expect("DeleteStorageConfiguration after the stage");

    // Naming a storage configuration that does not exist.
    let ghost = "arn:aws:ivs:us-east-1:000000000000:storage-configuration/abcdABCD1234";
    expect_failure!(
        client
            .create_stage()
            .auto_participant_recording_configuration(recording(ghost))
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["abcdABCD1234", "storageConfigurationArn"]);
    let other = create_stage(&client, "plain").await;
    expect_failure!(
        client
            .update_stage()
            .arn(other.arn())
            .auto_participant_recording_configuration(recording(ghost))
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["abcdABCD1234", "storageConfigurationArn"]);
    expect_failure!(
        client
            .create_storage_configuration()
            .s3(S3StorageConfiguration::builder()
                .bucket_name("Bad_Bucket")
                .build()
                .expect("s3"))
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["bucketName"]);
}

#[tokio::test]
async fn encoder_configurations() {
    let server = Server::start().await;
    let client = server.client();

    let custom = client
        .create_encoder_configuration()
        .name("hd")
        .video(
            Video::builder()
                .width(1920)
                .height(1080)
                .framerate(25.0)
                .bitrate(3_500_000)
                .build(),
        )
        .tags("tier", "gold")
        .send()
        .await
        .expect("CreateEncoderConfiguration")
        .encoder_configuration
        .expect("encoderConfiguration");
    assert!(
        is_arn(custom.arn(), ACCOUNT_ID, "encoder-configuration"),
        "ARN {}",
        custom.arn()
    );
    assert_eq!(custom.name(), Some("hd"));
    let video = custom.video().expect("video");
    assert_eq!(
        (
            video.width(),
            video.height(),
            video.framerate(),
            video.bitrate()
        ),
        (Some(1920), Some(1080), Some(25.0), Some(3_500_000))
    );
    assert_eq!(custom.tags(), Some(&tags(&[("tier", "gold")])));

    let default = client
        .create_encoder_configuration()
        .send()
        .await
        .expect("CreateEncoderConfiguration")
        .encoder_configuration
        .expect("encoderConfiguration");
    let video = default.video().expect("video defaults are returned");
    assert_eq!(
        (
            video.width(),
            video.height(),
            video.framerate(),
            video.bitrate()
        ),
        (Some(1280), Some(720), Some(30.0), Some(2_500_000)),
        "the model's documented defaults"
    );

    let got = client
        .get_encoder_configuration()
        .arn(custom.arn())
        .send()
        .await
        .expect("GetEncoderConfiguration");
    assert_eq!(got.encoder_configuration(), Some(&custom));
    let listed = client
        .list_encoder_configurations()
        .send()
        .await
        .expect("ListEncoderConfigurations");
    let arns: BTreeSet<_> = listed
        .encoder_configurations()
        .iter()
        .map(|e| e.arn())
        .collect();
    assert_eq!(arns, BTreeSet::from([custom.arn(), default.arn()]));
    let summary = listed
        .encoder_configurations()
        .iter()
        .find(|e| e.arn() == custom.arn())
        .expect("listed");
    assert_eq!(
        (summary.name(), summary.tags()),
        (Some("hd"), Some(&tags(&[("tier", "gold")])))
    );

    client
        .delete_encoder_configuration()
        .arn(custom.arn())
        .send()
        .await
        .expect("DeleteEncoderConfiguration");
    expect_failure!(
        client
            .get_encoder_configuration()
            .arn(custom.arn())
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&[arn_id(custom.arn())]);
    expect_failure!(
        client
            .delete_encoder_configuration()
            .arn(custom.arn())
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");

    expect_failure!(
        client
            .create_encoder_configuration()
            .video(Video::builder().bitrate(0).build())
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["bitrate"]);
    expect_failure!(
        client
            .create_encoder_configuration()
            .video(Video::builder().width(4000).build())
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["width"]);
    expect_failure!(
        client
            .create_encoder_configuration()
            .video(Video::builder().framerate(61.0).build())
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["framerate"]);
}

// ----- sessions, participants, events, replication ------------------------------------

#[tokio::test]
async fn participant_data_of_a_stage_nobody_joined() {
    let server = Server::start().await;
    let client = server.client();
    let stage = create_stage(&client, "quiet").await;
    let arn = stage.arn();
    let token = client
        .create_participant_token()
        .stage_arn(arn)
        .send()
        .await
        .expect("token")
        .participant_token
        .expect("token");
    let pid = token.participant_id().expect("participantId");
    let session = "st-ABCDEFabcdef1";

    let sessions = client
        .list_stage_sessions()
        .stage_arn(arn)
        .send()
        .await
        .expect("ListStageSessions");
    assert!(
        sessions.stage_sessions().is_empty(),
        "no session before anyone joins"
    );
    expect_failure!(
        client
            .get_stage_session()
            .stage_arn(arn)
            .session_id(session)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&[session]);
    let participants = client
        .list_participants()
        .stage_arn(arn)
        .session_id(session)
        .send()
        .await
        .expect("ListParticipants");
    assert!(participants.participants().is_empty());
    expect_failure!(
        client
            .get_participant()
            .stage_arn(arn)
            .session_id(session)
            .participant_id(pid)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");
    let events = client
        .list_participant_events()
        .stage_arn(arn)
        .session_id(session)
        .participant_id(pid)
        .send()
        .await
        .expect("ListParticipantEvents");
    assert!(events.events().is_empty());
    expect_failure!(
        client
            .disconnect_participant()
            .stage_arn(arn)
            .participant_id(pid)
            .reason("bye")
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&[pid]);
    let replicas = client
        .list_participant_replicas()
        .source_stage_arn(arn)
        .participant_id(pid)
        .send()
        .await
        .expect("ListParticipantReplicas");
    assert!(replicas.replicas().is_empty());

    // Unknown stages give empty lists where the model has no ResourceNotFound…
    let missing = "arn:aws:ivs:us-east-1:000000000000:stage/abcdABCD1234";
    let sessions = client
        .list_stage_sessions()
        .stage_arn(missing)
        .send()
        .await
        .expect("ListStageSessions");
    assert!(sessions.stage_sessions().is_empty());
    let participants = client
        .list_participants()
        .stage_arn(missing)
        .session_id(session)
        .send()
        .await
        .expect("ListParticipants");
    assert!(participants.participants().is_empty());
    let replicas = client
        .list_participant_replicas()
        .source_stage_arn(missing)
        .participant_id(pid)
        .send()
        .await
        .expect("ListParticipantReplicas");
    assert!(replicas.replicas().is_empty());
    // …and ResourceNotFound where it has one.
    expect_failure!(
        client
            .get_stage_session()
            .stage_arn(missing)
            .session_id(session)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");
    expect_failure!(
        client
            .disconnect_participant()
            .stage_arn(missing)
            .participant_id(pid)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");

    // Validation.
    expect_failure!(
        client
            .list_participants()
            .stage_arn(arn)
            .session_id(session)
            .filter_by_user_id("u")
            .filter_by_published(true)
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["filterBy"]);
    expect_failure!(
        client
            .list_participants()
            .stage_arn(arn)
            .session_id("st-short")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["sessionId"]);
    expect_failure!(
        client
            .get_stage_session()
            .stage_arn(arn)
            .session_id("xx-ABCDEFabcdef1")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["sessionId"]);
    expect_failure!(
        client
            .list_participant_events()
            .stage_arn(arn)
            .session_id(session)
            .participant_id("bad id!")
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["participantId"]);
    expect_failure!(
        client
            .list_participant_replicas()
            .source_stage_arn(arn)
            .participant_id(pid)
            .max_results(51)
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["maxResults"]);
}

#[tokio::test]
async fn participant_replication_preconditions() {
    let server = Server::start().await;
    let client = server.client();
    let source = create_stage(&client, "source").await;
    let destination = create_stage(&client, "destination").await;
    let token = client
        .create_participant_token()
        .stage_arn(source.arn())
        .send()
        .await
        .expect("token")
        .participant_token
        .expect("token");
    let pid = token.participant_id().expect("participantId");

    // A participant that never joined is not publishing.
    expect_failure!(
        client
            .start_participant_replication()
            .source_stage_arn(source.arn())
            .destination_stage_arn(destination.arn())
            .participant_id(pid)
            .send()
            .await
    )
    .is(409, "ConflictException")
    .names(&[pid]);

    // Checked before: source ≠ destination, then both stages exist.
    expect_failure!(
        client
            .start_participant_replication()
            .source_stage_arn(source.arn())
            .destination_stage_arn(source.arn())
            .participant_id(pid)
            .send()
            .await
    )
    .is(400, "ValidationException");
    let missing = "arn:aws:ivs:us-east-1:000000000000:stage/abcdABCD1234";
    expect_failure!(
        client
            .start_participant_replication()
            .source_stage_arn(source.arn())
            .destination_stage_arn(missing)
            .participant_id(pid)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&["abcdABCD1234"]);
    expect_failure!(
        client
            .start_participant_replication()
            .source_stage_arn(missing)
            .destination_stage_arn(destination.arn())
            .participant_id(pid)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException")
    .names(&["abcdABCD1234"]);
    expect_failure!(
        client
            .start_participant_replication()
            .source_stage_arn(source.arn())
            .destination_stage_arn(destination.arn())
            .participant_id(pid)
            .reconnect_window_seconds(301)
            .send()
            .await
    )
    .is(400, "ValidationException")
    .names(&["reconnectWindowSeconds"]);

    expect_failure!(
        client
            .stop_participant_replication()
            .source_stage_arn(source.arn())
            .destination_stage_arn(destination.arn())
            .participant_id(pid)
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");
    let replicas = client
        .list_participant_replicas()
        .source_stage_arn(source.arn())
        .participant_id(pid)
        .send()
        .await
        .expect("ListParticipantReplicas");
    assert!(
        replicas.replicas().is_empty(),
        "a refused start leaves no record"
    );
}

// ----- scope, authentication, accounts ------------------------------------------------

#[tokio::test]
async fn operations_not_built_yet_answer_501() {
    let server = Server::start().await;
    let client = server.client();
    let stage = create_stage(&client, "composed").await;
    let composition = "arn:aws:ivs:us-east-1:000000000000:composition/abcdABCD1234";
    let destination = DestinationConfiguration::builder()
        .channel(
            ChannelDestinationConfiguration::builder()
                .channel_arn("arn:aws:ivs:us-east-1:000000000000:channel/abcdABCD1234")
                .build()
                .expect("channel destination"),
        )
        .build();

    let failures = vec![
        (
            "StartComposition",
            expect_failure!(
                client
                    .start_composition()
                    .stage_arn(stage.arn())
                    .destinations(destination)
                    .send()
                    .await
            ),
        ),
        (
            "GetComposition",
            expect_failure!(client.get_composition().arn(composition).send().await),
        ),
        (
            "StopComposition",
            expect_failure!(client.stop_composition().arn(composition).send().await),
        ),
        (
            "ListCompositions",
            expect_failure!(client.list_compositions().send().await),
        ),
    ];
    for (operation, failure) in failures {
        assert_eq!(
            (failure.status, failure.code.as_str()),
            (Some(501), "NotImplementedException"),
            "{operation}: {failure:#?}"
        );
        assert!(
            failure.message.to_lowercase().contains("not implemented"),
            "{operation}: message {:?}",
            failure.message
        );
        assert_eq!(
            failure.header("x-amzn-errortype"),
            Some("NotImplementedException"),
            "{operation}"
        );
        // The IVS response headers are on errors too.
        for (name, value) in [
            ("access-control-allow-origin", "*"),
            ("cache-control", "no-store, no-cache"),
            (
                "content-security-policy",
                "default-src 'self'; upgrade-insecure-requests;",
            ),
            (
                "strict-transport-security",
                "max-age:47304000; includeSubDomains",
            ),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
        ] {
            assert_eq!(
                failure.header(name),
                Some(value),
                "{operation}: header {name}"
            );
        }
        assert!(
            failure
                .header("access-control-expose-headers")
                .is_some_and(|v| !v.is_empty()),
            "{operation}"
        );
    }
}

#[tokio::test]
async fn requests_with_bad_credentials_are_refused() {
    let server = Server::start().await;
    let refused = [
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "AccessDeniedException",
        "UnrecognizedClientException",
    ];

    let wrong_secret = server.client_as(common::ACCESS_KEY_ID, "not-the-secret");
    let failure = expect_failure!(wrong_secret.list_stages().send().await);
    assert_eq!(failure.status, Some(403), "{failure:#?}");
    assert!(refused.contains(&failure.code.as_str()), "{failure:#?}");
    assert!(!failure.message.is_empty());

    let unknown_key = server.client_as("nobody", "whatever");
    let failure = expect_failure!(unknown_key.create_stage().name("x").send().await);
    assert_eq!(failure.status, Some(403), "{failure:#?}");
    assert!(refused.contains(&failure.code.as_str()), "{failure:#?}");

    // Nothing happened on the account.
    assert!(
        server
            .client()
            .list_stages()
            .send()
            .await
            .expect("ListStages")
            .stages()
            .is_empty()
    );
}

#[tokio::test]
async fn accounts_see_only_their_own_resources() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let config = dir.path().join("onstage.toml");
    std::fs::write(
        &config,
        // The development key is active only when no other key is configured: name it.
        "access_key_id = \"onstage\"\nsecret_access_key = \"onstage-secret\"\n\
         [[access_keys]]\naccess_key_id = \"other\"\nsecret_access_key = \"other-secret\"\naccount_id = \"111111111111\"\n",
    )
    .expect("write config");
    let data = dir.path().join("data");
    let server = Server::start_in(&data, &["--config", config.to_str().expect("utf-8 path")]).await;
    let mine = server.client();
    let theirs = server.client_as("other", "other-secret");

    let stage = create_stage(&mine, "private").await;
    let their_stage = create_stage(&theirs, "theirs").await;
    assert!(
        is_arn(their_stage.arn(), "111111111111", "stage"),
        "ARN in the caller's account: {}",
        their_stage.arn()
    );

    expect_failure!(theirs.get_stage().arn(stage.arn()).send().await)
        .is(404, "ResourceNotFoundException");
    expect_failure!(
        theirs
            .create_participant_token()
            .stage_arn(stage.arn())
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");
    expect_failure!(
        theirs
            .tag_resource()
            .resource_arn(stage.arn())
            .tags("k", "v")
            .send()
            .await
    )
    .is(404, "ResourceNotFoundException");
    expect_failure!(theirs.delete_stage().arn(stage.arn()).send().await)
        .is(404, "ResourceNotFoundException");
    let listed = theirs.list_stages().send().await.expect("ListStages");
    assert_eq!(
        listed.stages().iter().map(|s| s.arn()).collect::<Vec<_>>(),
        [their_stage.arn()]
    );
    let sessions = theirs
        .list_stage_sessions()
        .stage_arn(stage.arn())
        .send()
        .await
        .expect("ListStageSessions");
    assert!(sessions.stage_sessions().is_empty());
    // Someone else's page token is not ours.
    create_stage(&mine, "second").await;
    let token = mine
        .list_stages()
        .max_results(1)
        .send()
        .await
        .expect("ListStages")
        .next_token
        .expect("token");
    expect_failure!(theirs.list_stages().next_token(token).send().await)
        .is(400, "ValidationException");

    mine.get_stage()
        .arn(stage.arn())
        .send()
        .await
        .expect("still there for its owner");
}

// ----- persistence ---------------------------------------------------------------------

#[tokio::test]
async fn state_survives_a_restart() {
    let data = tempfile::TempDir::new().expect("tempdir");

    let server = Server::start_in(data.path(), &[]).await;
    let client = server.client();
    let stage = client
        .create_stage()
        .name("durable")
        .tags("keep", "me")
        .send()
        .await
        .expect("CreateStage")
        .stage
        .expect("stage");
    create_stage(&client, "second").await;
    let token = client
        .create_participant_token()
        .stage_arn(stage.arn())
        .user_id("u")
        .send()
        .await
        .expect("CreateParticipantToken")
        .participant_token
        .expect("participantToken");
    let key = client
        .import_public_key()
        .public_key_material(p384_public_key_pem())
        .name("kept")
        .send()
        .await
        .expect("ImportPublicKey")
        .public_key
        .expect("publicKey");
    let storage = client
        .create_storage_configuration()
        .s3(S3StorageConfiguration::builder()
            .bucket_name("kept-bucket")
            .build()
            .expect("s3"))
        .send()
        .await
        .expect("CreateStorageConfiguration")
        .storage_configuration
        .expect("storageConfiguration");
    let recorded = client
        .create_stage()
        .auto_participant_recording_configuration(
            AutoParticipantRecordingConfiguration::builder()
                .storage_configuration_arn(storage.arn())
                .build()
                .expect("config"),
        )
        .send()
        .await
        .expect("CreateStage")
        .stage
        .expect("stage");
    let encoder = client
        .create_encoder_configuration()
        .name("kept")
        .send()
        .await
        .expect("CreateEncoderConfiguration")
        .encoder_configuration
        .expect("encoderConfiguration");
    client
        .tag_resource()
        .resource_arn(encoder.arn())
        .tags("x", "y")
        .send()
        .await
        .expect("TagResource");
    let page_token = client
        .list_stages()
        .max_results(1)
        .send()
        .await
        .expect("ListStages")
        .next_token
        .expect("token");
    let kid_before = jsonwebtoken::decode_header(token.token().expect("token"))
        .expect("header")
        .kid;
    server.stop();

    let server = Server::start_in(data.path(), &[]).await;
    let client = server.client();
    let got = client
        .get_stage()
        .arn(stage.arn())
        .send()
        .await
        .expect("GetStage after restart")
        .stage
        .expect("stage");
    assert_eq!(
        (got.name(), got.tags()),
        (Some("durable"), Some(&tags(&[("keep", "me")])))
    );
    assert_eq!(
        client
            .list_stages()
            .send()
            .await
            .expect("ListStages")
            .stages()
            .len(),
        3
    );
    let got = client
        .get_public_key()
        .arn(key.arn().expect("arn"))
        .send()
        .await
        .expect("GetPublicKey")
        .public_key;
    assert_eq!(got.as_ref(), Some(&key));
    let got = client
        .get_storage_configuration()
        .arn(storage.arn())
        .send()
        .await
        .expect("GetStorageConfiguration");
    assert_eq!(got.storage_configuration(), Some(&storage));
    let got = client
        .get_stage()
        .arn(recorded.arn())
        .send()
        .await
        .expect("GetStage")
        .stage
        .expect("stage");
    assert_eq!(
        got.auto_participant_recording_configuration()
            .map(|c| c.storage_configuration_arn()),
        Some(storage.arn())
    );
    expect_failure!(
        client
            .delete_storage_configuration()
            .arn(storage.arn())
            .send()
            .await
    )
    .is(409, "ConflictException");
    let got = client
        .get_encoder_configuration()
        .arn(encoder.arn())
        .send()
        .await
        .expect("GetEncoderConfiguration");
    assert_eq!(
        got.encoder_configuration().and_then(|e| e.name()),
        Some("kept")
    );
    let tags_now = client
        .list_tags_for_resource()
        .resource_arn(encoder.arn())
        .send()
        .await
        .expect("ListTagsForResource");
    assert_eq!(tags_now.tags(), &tags(&[("x", "y")]));
    // The public-key quota counts the key imported before the restart.
    client
        .import_public_key()
        .public_key_material(p384_public_key_pem())
        .send()
        .await
        .expect("2nd key");
    client
        .import_public_key()
        .public_key_material(p384_public_key_pem())
        .send()
        .await
        .expect("3rd key");
    expect_failure!(
        client
            .import_public_key()
            .public_key_material(p384_public_key_pem())
            .send()
            .await
    )
    .is(402, "ServiceQuotaExceededException");

    // The token-signing key survives: the old token still verifies, new ones use the same key.
    let claims = verify_token(&server, token.token().expect("token")).await;
    assert_eq!(claims["jti"].as_str(), token.participant_id());
    let fresh = client
        .create_participant_token()
        .stage_arn(stage.arn())
        .send()
        .await
        .expect("CreateParticipantToken")
        .participant_token
        .expect("participantToken");
    assert_eq!(
        jsonwebtoken::decode_header(fresh.token().expect("token"))
            .expect("header")
            .kid,
        kid_before
    );

    // A page token issued before the restart still pages.
    let rest = client
        .list_stages()
        .next_token(page_token)
        .send()
        .await
        .expect("ListStages with an old token");
    assert_eq!(rest.stages().len(), 2);
}
