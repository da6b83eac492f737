//! Participant tokens from arbitrary bytes: inspection and verification answer
//! without panicking, and nothing but a token the server signed verifies.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use onstage_stage::ids::Arn;
use onstage_stage::model::StageEndpoints;
use onstage_stage::token::{self, TokenCheck, TokenIssuer, TokenSigner};

struct Fixture {
    signer: TokenSigner,
    arn: Arn,
    endpoints: StageEndpoints,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pkcs8 = TokenSigner::generate_pkcs8().expect("a key");
        Fixture {
            signer: TokenSigner::from_pkcs8(&pkcs8).expect("the key loads"),
            arn: Arn::parse("arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef")
                .expect("an ARN"),
            endpoints: StageEndpoints {
                whip: "http://127.0.0.1:7700/whip".into(),
                events: "ws://127.0.0.1:7700/events".into(),
            },
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let _ = token::inspect(text);
    let check = TokenCheck {
        issuer: &TokenIssuer::Server,
        key: f.signer.decoding_key(),
        stage_arn: &f.arn,
        endpoints: &f.endpoints,
        now: 1_800_000_000,
    };
    // The key was made in this process and signed nothing: no input may verify.
    assert!(token::verify_signature(text, f.signer.decoding_key()).is_err());
    assert!(token::verify(text, &check).is_err());
});
