//! SDP offers from arbitrary bytes: the offer check refuses or summarises, never
//! panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = onstage_media::check_offer(text);
    }
});
