//! Properties of the offer check: whatever text arrives as an offer, `check_offer`
//! answers with a summary or a refusal, never a panic.

use onstage_media::check_offer;
use proptest::prelude::*;

/// A browser-like offer: the starting point that mutations are applied to.
const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

/// SDP-looking lines, for offers assembled from plausible parts.
fn sdp_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v=0".to_owned()),
        "m=(audio|video|application) [0-9]{1,5} [A-Z/]{0,16}( [0-9]{1,3}){0,4}",
        "a=rtpmap:[0-9]{1,3} (opus|VP8|H264|VP9|AV1|rtx|PCMU|[A-Za-z0-9]{0,8})(/[0-9]{0,6}){0,2}",
        "a=fmtp:[0-9]{1,3} [a-z=;0-9-]{0,60}",
        Just("a=inactive".to_owned()),
        Just("a=sendonly".to_owned()),
        ".{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = check_offer(&text);
    }

    #[test]
    fn offers_of_plausible_lines_never_panic(lines in prop::collection::vec(sdp_line(), 0..40),
                                             crlf in any::<bool>()) {
        let sep = if crlf { "\r\n" } else { "\n" };
        let _ = check_offer(&lines.join(sep));
    }

    #[test]
    fn a_mutated_real_offer_never_panics(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..12)) {
        let mut chars: Vec<char> = OFFER.chars().collect();
        for (at, c, op) in edits {
            match op {
                0 if !chars.is_empty() => { let i = at.index(chars.len()); chars[i] = c; }
                1 => { let i = at.index(chars.len() + 1); chars.insert(i, c); }
                _ if !chars.is_empty() => { let i = at.index(chars.len()); chars.remove(i); }
                _ => {}
            }
        }
        let _ = check_offer(&chars.into_iter().collect::<String>());
    }

    #[test]
    fn a_real_offer_cut_anywhere_never_panics(end in 0usize..OFFER.len()) {
        let mut end = end;
        while !OFFER.is_char_boundary(end) { end -= 1; }
        let _ = check_offer(&OFFER[..end]);
    }
}

#[test]
fn the_starting_offer_is_accepted() {
    let summary = check_offer(OFFER).expect("the sample offer is acceptable");
    assert_eq!((summary.audio_lines, summary.video_lines), (1, 1));
}
