//! A look at an SDP offer before it reaches the WebRTC stack, to refuse offers that
//! carry no codec onstage forwards with the precise reason (IVS's
//! `INVALID_VIDEO_CODEC` / `INVALID_AUDIO_CODEC`) instead of a silently rejected line.

use onstage_stage::media::MediaRefusal;

/// What an offer carries, per kind of media line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OfferSummary {
    pub audio_lines: usize,
    pub video_lines: usize,
}

/// Checks that every active audio line offers Opus and every active video line
/// offers VP8 or H.264 (Baseline / Constrained Baseline, packetization-mode 1).
pub fn check_offer(sdp: &str) -> Result<OfferSummary, MediaRefusal> {
    if !sdp.trim_start().starts_with("v=0") {
        return Err(MediaRefusal::InvalidOffer(
            "the body is not an SDP offer (it must start with v=0)".into(),
        ));
    }
    let mut summary = OfferSummary::default();
    for section in sdp.split("\nm=").skip(1) {
        let first = section.lines().next().unwrap_or_default();
        let mut fields = first.split_whitespace();
        let kind = fields.next().unwrap_or_default();
        let port = fields.next().unwrap_or_default();
        if port == "0" || section.lines().any(|l| l.trim() == "a=inactive") {
            continue;
        }
        match kind {
            "audio" => {
                summary.audio_lines += 1;
                if !has_opus(section) {
                    return Err(MediaRefusal::InvalidAudioCodec);
                }
            }
            "video" => {
                summary.video_lines += 1;
                if !has_acceptable_video(section) {
                    return Err(MediaRefusal::InvalidVideoCodec);
                }
            }
            _ => {}
        }
    }
    if summary.audio_lines + summary.video_lines == 0 {
        return Err(MediaRefusal::InvalidOffer(
            "the offer has no active audio or video line".into(),
        ));
    }
    Ok(summary)
}

/// `(payload type, codec name)` of every `a=rtpmap` line in a media section.
fn rtpmaps(section: &str) -> impl Iterator<Item = (&str, &str)> {
    section.lines().filter_map(|l| {
        let rest = l.trim().strip_prefix("a=rtpmap:")?;
        let (pt, codec) = rest.split_once(' ')?;
        Some((pt, codec.split('/').next().unwrap_or_default()))
    })
}

fn fmtp<'a>(section: &'a str, pt: &str) -> Option<&'a str> {
    section.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=fmtp:")?;
        let (p, params) = rest.split_once(' ')?;
        (p == pt).then_some(params)
    })
}

fn has_opus(section: &str) -> bool {
    rtpmaps(section).any(|(_, c)| c.eq_ignore_ascii_case("opus"))
}

fn has_acceptable_video(section: &str) -> bool {
    rtpmaps(section).any(|(pt, codec)| {
        if codec.eq_ignore_ascii_case("VP8") {
            return true;
        }
        if !codec.eq_ignore_ascii_case("H264") {
            return false;
        }
        let params = fmtp(section, pt).unwrap_or_default();
        let param = |name: &str| {
            params.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                k.eq_ignore_ascii_case(name).then_some(v.trim())
            })
        };
        let packetization_mode_1 = param("packetization-mode") == Some("1");
        // profile_idc 0x42 is Baseline; with constraint_set1 it is Constrained
        // Baseline. RFC 6184 makes 42000a the default when the parameter is absent.
        let baseline = param("profile-level-id")
            .is_none_or(|p| p.len() == 6 && p[..2].eq_ignore_ascii_case("42"));
        packetization_mode_1 && baseline
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";

    #[test]
    fn accepts_vp8_and_baseline_h264() {
        let vp8 = format!("{HEAD}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n");
        assert_eq!(check_offer(&vp8).unwrap().video_lines, 1);
        let h264 = format!(
            "{HEAD}m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
        );
        assert_eq!(
            check_offer(&h264).unwrap(),
            OfferSummary {
                audio_lines: 1,
                video_lines: 1
            }
        );
    }

    #[test]
    fn refuses_high_profile_h264_and_non_opus_audio() {
        let high = format!(
            "{HEAD}m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id=64001f\r\n"
        );
        assert_eq!(check_offer(&high), Err(MediaRefusal::InvalidVideoCodec));
        let pcmu = format!("{HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n");
        assert_eq!(check_offer(&pcmu), Err(MediaRefusal::InvalidAudioCodec));
        assert!(matches!(
            check_offer("hello"),
            Err(MediaRefusal::InvalidOffer(_))
        ));
    }
}
