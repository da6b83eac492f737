//! Finding where a keyframe begins in a stream of RTP packets.
//!
//! The media plane forwards RTP packets as they arrive instead of reassembling
//! frames, yet a subscriber must start (and, after its publisher is replaced,
//! restart) on a keyframe: anything before one is undecodable. So the publisher's
//! packets are inspected once, on the source's home shard, for the first packet of
//! a keyframe, and that answer travels with the packet to every subscriber.
//!
//! Only the payload format's first bytes are read: the VP8 payload descriptor and
//! payload header (RFC 7741 §4.2–4.3), the H.264 NAL unit header and its STAP-A /
//! FU-A wrappers (RFC 6184 §5.6–5.8). Nothing here allocates.

use crate::VideoCodec;

/// Whether `payload` is the first packet of a keyframe.
///
/// `starts_frame`: the packet's RTP timestamp differs from the previous packet's
/// of the same stream. VP8 marks a frame's first packet itself; H.264 does not,
/// and a keyframe's parameter sets usually travel in their own packet ahead of the
/// IDR slice, so the first packet of a frame holding a parameter set or the start
/// of an IDR slice is where a decoder can begin.
pub(crate) fn starts_keyframe(format: VideoCodec, payload: &[u8], starts_frame: bool) -> bool {
    match format {
        VideoCodec::Vp8 => vp8_starts_keyframe(payload),
        VideoCodec::H264 => starts_frame && h264_has_key_nal(payload),
    }
}

fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start_of_partition = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start_of_partition || partition != 0 {
        return false;
    }
    let mut at = 1;
    if extended {
        let Some(&ext) = payload.get(1) else {
            return false;
        };
        at = 2;
        if ext & 0x80 != 0 {
            // PictureID: 15 bits when its M bit is set, 7 otherwise.
            let Some(&pid) = payload.get(at) else {
                return false;
            };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            at += 1; // TID / Y / KEYIDX
        }
    }
    // The VP8 payload header's P bit is the inverse key frame flag.
    payload.get(at).is_some_and(|b| b & 0x01 == 0)
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

fn is_key_nal(nal_type: u8) -> bool {
    matches!(nal_type, NAL_IDR | NAL_SPS | NAL_PPS)
}

fn h264_has_key_nal(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1F {
        NAL_STAP_A => {
            let mut at = 1;
            while let (Some(&hi), Some(&lo)) = (payload.get(at), payload.get(at + 1)) {
                let size = usize::from(u16::from_be_bytes([hi, lo]));
                match payload.get(at + 2) {
                    Some(nal) if size > 0 => {
                        if is_key_nal(nal & 0x1F) {
                            return true;
                        }
                    }
                    _ => return false,
                }
                at += 2 + size;
            }
            false
        }
        NAL_FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key_nal(fu & 0x1F)),
        nal_type => is_key_nal(nal_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_without_extensions() {
        // S=1, PID=0; payload header with P=0.
        assert!(starts_keyframe(
            VideoCodec::Vp8,
            &[0x10, 0x50, 0x01, 0x00],
            false
        ));
        // P=1: an interframe.
        assert!(!starts_keyframe(
            VideoCodec::Vp8,
            &[0x10, 0x51, 0x01, 0x00],
            true
        ));
        // Not the start of partition 0.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x00, 0x50], true));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x11, 0x50], true));
    }

    #[test]
    fn vp8_keyframe_behind_extensions() {
        // X, I with a 15-bit PictureID, L, T: the payload header is at byte 6.
        let key = [0x90, 0xE0, 0x80 | 0x12, 0x34, 0x07, 0x40, 0x10, 0x02];
        assert!(starts_keyframe(VideoCodec::Vp8, &key, false));
        let mut delta = key;
        delta[6] = 0x11;
        assert!(!starts_keyframe(VideoCodec::Vp8, &delta, false));
        // 7-bit PictureID only: payload header at byte 3.
        assert!(starts_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0x80, 0x05, 0x9C],
            false
        ));
        // Truncated descriptors are not keyframes, and do not panic.
        assert!(!starts_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0xE0, 0x80],
            false
        ));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[], false));
    }

    #[test]
    fn h264_single_nal_units() {
        assert!(starts_keyframe(VideoCodec::H264, &[0x67, 0x42], true)); // SPS
        assert!(starts_keyframe(VideoCodec::H264, &[0x65, 0x88], true)); // IDR
        assert!(!starts_keyframe(VideoCodec::H264, &[0x41, 0x9A], true)); // non-IDR slice
        // An IDR packet that is not its frame's first: the frame began earlier.
        assert!(!starts_keyframe(VideoCodec::H264, &[0x65, 0x88], false));
    }

    #[test]
    fn h264_stap_a_and_fu_a() {
        // STAP-A holding SPS and PPS.
        let stap = [0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xCE];
        assert!(starts_keyframe(VideoCodec::H264, &stap, true));
        // STAP-A of two non-IDR slices, and one whose size runs past the end.
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x01, 0x41, 0x00, 0x01, 0x41],
            true
        ));
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x09, 0x41],
            true
        ));
        // FU-A: start of an IDR, middle of an IDR, start of a non-IDR.
        assert!(starts_keyframe(VideoCodec::H264, &[0x7C, 0x85, 0xB8], true));
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x7C, 0x05, 0xB8],
            true
        ));
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x5C, 0x81, 0x9A],
            true
        ));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7C], true));
    }
}
