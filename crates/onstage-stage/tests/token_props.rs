//! Properties of participant-token inspection and verification: whatever a client
//! presents, the answer is a typed rejection or genuine claims, never a panic; and a
//! token changed in any byte after it was signed never verifies.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use onstage_stage::ids::Arn;
use onstage_stage::model::StageEndpoints;
use onstage_stage::token::{
    self, Capabilities, ParticipantClaims, TokenCheck, TokenIssuer, TokenSigner,
};
use proptest::prelude::*;

const STAGE: &str = "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef";
const NOW: i64 = 1_800_000_000;

struct Fixture {
    signer: TokenSigner,
    token: String,
    arn: Arn,
    endpoints: StageEndpoints,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let signer = TokenSigner::from_pkcs8(&TokenSigner::generate_pkcs8().unwrap()).unwrap();
        let endpoints = StageEndpoints {
            whip: "http://127.0.0.1:7700/whip".into(),
            events: "ws://127.0.0.1:7700/events".into(),
            rtmp: None,
            rtmps: None,
        };
        let claims = ParticipantClaims {
            exp: NOW + 3600,
            iat: NOW,
            jti: "abcdefabcdef".into(),
            resource: STAGE.into(),
            topic: "abcdefabcdef".into(),
            events_url: endpoints.events.clone(),
            whip_url: endpoints.whip.clone(),
            user_id: Some("alice".into()),
            attributes: None,
            capabilities: Capabilities {
                allow_publish: true,
                allow_subscribe: true,
            },
            version: token::SERVER_TOKEN_VERSION.into(),
        };
        let token = signer.sign(&claims).unwrap();
        Fixture {
            signer,
            token,
            arn: Arn::parse(STAGE).unwrap(),
            endpoints,
        }
    })
}

/// Inspects and verifies `text` as the server would; `true` when it verified.
fn verifies(text: &str) -> bool {
    let f = fixture();
    // Inspection answers (either way) without panicking, whatever the text.
    let _ = token::inspect(text);
    let check = TokenCheck {
        issuer: &TokenIssuer::Server,
        key: f.signer.decoding_key(),
        stage_arn: &f.arn,
        endpoints: &f.endpoints,
        now: NOW,
    };
    let signed = token::verify_signature(text, f.signer.decoding_key()).is_ok();
    let verified = token::verify(text, &check).is_ok();
    // Whatever verifies completely has a verified signature.
    assert!(!verified || signed);
    verified
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,200}",
        any::<Vec<u8>>().prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        // JSON of a plausible header or claims, with arbitrary values.
        ("(ES384|HS256|none|RS256|[A-Z0-9]{0,6})", "[ -~]{0,40}")
            .prop_map(|(alg, kid)| URL_SAFE_NO_PAD
                .encode(serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string())),
        (any::<i64>(), "[ -~]{0,20}", "[ -~]{0,80}").prop_map(|(exp, jti, resource)| {
            URL_SAFE_NO_PAD.encode(
                serde_json::json!({"exp": exp, "jti": jti, "resource": resource, "version": "0.0"})
                    .to_string(),
            )
        }),
    ]
}

proptest! {
    // proptest's default case count: each case verifies an ES384 signature, and
    // the `token_verify` fuzz target (fuzz/) is where inputs are tried by the million.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_are_refused(text in any::<String>()) {
        prop_assert!(!verifies(&text));
    }

    #[test]
    fn assembled_near_tokens_are_refused(parts in prop::collection::vec(segment(), 1..5)) {
        prop_assert!(!verifies(&parts.join(".")));
    }

    #[test]
    fn a_genuine_header_and_claims_with_another_signature_are_refused(sig in any::<Vec<u8>>()) {
        let f = fixture();
        let (signed_part, _) = f.token.rsplit_once('.').unwrap();
        let forged = format!("{signed_part}.{}", URL_SAFE_NO_PAD.encode(sig));
        prop_assert!(!verifies(&forged));
    }

    #[test]
    fn a_token_altered_in_any_byte_never_verifies(at in any::<prop::sample::Index>(), by in 1u8..=255) {
        let f = fixture();
        let mut bytes = f.token.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= by;
        // Only text can be presented (a header value, a subprotocol).
        if let Ok(altered) = String::from_utf8(bytes) {
            prop_assert!(!verifies(&altered), "altered at byte {}: {}", i, altered);
        }
    }

    #[test]
    fn a_token_cut_or_extended_never_verifies(end in 0usize..2000, tail in "[A-Za-z0-9_.=-]{1,8}") {
        let f = fixture();
        let end = end % f.token.len();
        prop_assert!(!verifies(&f.token[..end]));
        let extended = format!("{}{}", f.token, tail);
        prop_assert!(!verifies(&extended));
    }
}

#[test]
fn the_unaltered_token_verifies() {
    assert!(verifies(&fixture().token));
}
