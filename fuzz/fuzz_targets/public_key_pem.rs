//! ImportPublicKey's PEM parsing and the verification key read from the same text:
//! nothing may panic, and whatever is accepted for a fingerprint also yields a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onstage_stage::token::{p384_decoding_key, parse_p384_public_key};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let imported = parse_p384_public_key(text);
    let verifying = p384_decoding_key(text);
    assert_eq!(imported.is_ok(), verifying.is_ok());
});
