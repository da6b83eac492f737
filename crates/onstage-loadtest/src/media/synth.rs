//! Synthetic media: frames that look like a camera's to an SFU, made without an
//! encoder.
//!
//! The server under test forwards *frames*: it depacketizes what a publisher
//! sends, asks str0m whether a frame is a keyframe (to start new subscribers on
//! one), and packetizes it again for each subscriber. So a synthetic frame needs
//! just enough codec syntax for that — a VP8 frame tag with the P bit clear and
//! the keyframe start code, or an H.264 IDR NAL unit — and a realistic size:
//! delta frames around the target bitrate, a keyframe every `keyframe_interval`
//! about nine deltas big, Opus-sized audio every 20 ms.
//!
//! Right after the codec header every frame carries a [`Stamp`]: a magic, the
//! publisher's index, its frame counter and the send time on `CLOCK_MONOTONIC`
//! (one clock for every process on the machine), which lets a subscriber compute
//! end-to-end latency from the first packet of a frame. The stamp is encoded
//! without zero bytes, and the filler is `0xAA`, so no start code (`00 00 01`)
//! can appear inside an H.264 NAL unit.

use std::time::Duration;

/// The video codecs the synthetic publisher can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    Vp8,
    /// H.264 Constrained Baseline, packetization-mode 1.
    H264,
}

/// Opens every stamp; chosen to be unlikely in codec headers and free of zeros.
pub const MAGIC: [u8; 6] = [0xF3, b'O', b'S', b'L', b'G', 0xF7];
/// Largest encoded stamp: magic, 5-byte publisher index, two 10-byte u64s.
pub const STAMP_LEN: usize = MAGIC.len() + 5 + 10 + 10;
/// How far into an RTP payload a subscriber looks for the magic: the payload
/// descriptor and codec header come first (VP8: ≤ 6 + 10 bytes; H.264 FU-A: 2).
pub const STAMP_SEARCH_WINDOW: usize = 48;
const FILLER: u8 = 0xAA;

/// What a stamped frame says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub frame: u64,
    pub sent_ns: u64,
}

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Writes `value` as 7-bit groups, most significant first, each with the top
/// bit set (so never a zero byte); `len` groups.
fn put_septets(out: &mut Vec<u8>, value: u64, len: usize) {
    for i in (0..len).rev() {
        out.push(0x80 | ((value >> (7 * i)) & 0x7F) as u8);
    }
}

fn get_septets(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for &b in bytes {
        if b & 0x80 == 0 {
            return None;
        }
        value = (value << 7) | u64::from(b & 0x7F);
    }
    Some(value)
}

impl Stamp {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        put_septets(out, u64::from(self.publisher), 5);
        put_septets(out, self.frame, 10);
        put_septets(out, self.sent_ns, 10);
    }

    /// Finds a stamp near the start of an RTP payload.
    pub fn find(payload: &[u8]) -> Option<Stamp> {
        let window = &payload[..payload.len().min(STAMP_SEARCH_WINDOW + STAMP_LEN)];
        let at = window.windows(MAGIC.len()).take(STAMP_SEARCH_WINDOW).position(|w| w == MAGIC)?;
        let rest = window.get(at + MAGIC.len()..at + STAMP_LEN)?;
        Some(Stamp {
            publisher: u32::try_from(get_septets(&rest[..5])?).ok()?,
            frame: get_septets(&rest[5..15])?,
            sent_ns: get_septets(&rest[15..25])?,
        })
    }
}

/// Frame sizes for a target bitrate.
#[derive(Clone, Copy, Debug)]
pub struct VideoShape {
    pub codec: VideoCodec,
    pub fps: u32,
    /// Frames from one keyframe to the next.
    pub gop: u32,
    pub delta_bytes: usize,
    pub key_bytes: usize,
}

/// How much bigger a keyframe is than a delta frame.
const KEYFRAME_RATIO: usize = 9;

impl VideoShape {
    pub fn new(codec: VideoCodec, bits_per_second: u64, fps: u32, keyframe_interval: Duration) -> Self {
        let fps = fps.max(1);
        let gop = ((keyframe_interval.as_secs_f64() * f64::from(fps)).round() as u32).max(1);
        // One GOP = (gop - 1) deltas + one keyframe of KEYFRAME_RATIO deltas.
        let gop_bytes = bits_per_second as f64 / 8.0 * f64::from(gop) / f64::from(fps);
        let delta = (gop_bytes / (f64::from(gop - 1) + KEYFRAME_RATIO as f64)).max(64.0) as usize;
        VideoShape { codec, fps, gop, delta_bytes: delta, key_bytes: delta * KEYFRAME_RATIO }
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.fps))
    }
}

/// Fills `out` (cleared first) with one video frame of about `size` bytes.
pub fn video_frame(out: &mut Vec<u8>, codec: VideoCodec, keyframe: bool, size: usize, stamp: &Stamp) {
    out.clear();
    match codec {
        VideoCodec::Vp8 => {
            // Frame tag (RFC 6386 §9.1): P bit (0 = key frame), version 0,
            // show_frame 1, 19-bit first partition size.
            let partition = (size.saturating_sub(10) as u32).min(0x7FFFF);
            let tag = (if keyframe { 0 } else { 1 }) | (1 << 4) | (partition << 5);
            out.extend_from_slice(&[tag as u8, (tag >> 8) as u8, (tag >> 16) as u8]);
            if keyframe {
                // Start code, then 1280x720 with no scaling.
                out.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02]);
            }
        }
        VideoCodec::H264 => {
            if keyframe {
                // SPS (Constrained Baseline 3.1) and PPS; nothing decodes them, so
                // their bodies are placeholders without zero bytes.
                out.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0x8d, 0x68, 0x05, 0x8b]);
                out.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
                out.extend_from_slice(&[0, 0, 0, 1, 0x65]); // IDR slice
            } else {
                out.extend_from_slice(&[0, 0, 0, 1, 0x41]); // non-IDR slice, nal_ref_idc 2
            }
        }
    }
    stamp.write(out);
    if out.len() < size {
        out.resize(size, FILLER);
    }
}

/// Opus-sized audio: a 20 ms frame of `size` bytes (a CELT fullband TOC byte,
/// the stamp, filler).
pub fn audio_frame(out: &mut Vec<u8>, size: usize, stamp: &Stamp) {
    out.clear();
    out.push(0xFC);
    stamp.write(out);
    if out.len() < size {
        out.resize(size, FILLER);
    }
}

/// A small deterministic generator for frame-size variation (xorshift64).
pub struct Jiggle(u64);

impl Jiggle {
    pub fn new(seed: u64) -> Self {
        Jiggle(seed | 1)
    }

    /// `base` varied by up to ±`percent`%.
    pub fn vary(&mut self, base: usize, percent: u64) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = base as u64 * percent / 100;
        if span == 0 {
            return base;
        }
        (base as u64 - span + self.0 % (2 * span + 1)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_without_zero_bytes() {
        let stamp = Stamp { publisher: 7, frame: 1, sent_ns: 1_234_567_890_123 };
        let mut out = vec![0x90, 0x10, 0x11];
        stamp.write(&mut out);
        assert_eq!(out.len(), 3 + STAMP_LEN);
        assert!(out[3..].iter().all(|&b| b != 0));
        assert_eq!(Stamp::find(&out), Some(stamp));
        assert_eq!(Stamp::find(&[0xAA; 100]), None);
    }

    #[test]
    fn vp8_keyframes_pass_the_keyframe_test() {
        let stamp = Stamp { publisher: 0, frame: 0, sent_ns: 1 };
        let mut f = Vec::new();
        video_frame(&mut f, VideoCodec::Vp8, true, 5000, &stamp);
        assert_eq!(f.len(), 5000);
        assert_eq!(f[0] & 1, 0);
        assert_eq!(&f[3..6], &[0x9d, 0x01, 0x2a]);
        video_frame(&mut f, VideoCodec::Vp8, false, 500, &stamp);
        assert_eq!(f[0] & 1, 1);
        assert_eq!(Stamp::find(&f[3..]), Some(stamp));
    }

    #[test]
    fn h264_frames_have_no_stray_start_codes() {
        let stamp = Stamp { publisher: 1, frame: 65_536, sent_ns: 1 << 40 };
        let mut f = Vec::new();
        video_frame(&mut f, VideoCodec::H264, true, 3000, &stamp);
        let starts = f.windows(3).filter(|w| *w == [0, 0, 1]).count();
        assert_eq!(starts, 3);
        assert_eq!(f[f.iter().rposition(|&b| b == 1).unwrap_or(0) + 1] & 0x1f, 5);
    }

    #[test]
    fn shape_matches_the_bitrate() {
        let s = VideoShape::new(VideoCodec::Vp8, 2_500_000, 30, Duration::from_secs(2));
        assert_eq!(s.gop, 60);
        let bits = ((s.gop as usize - 1) * s.delta_bytes + s.key_bytes) * 8;
        assert!((bits as f64 / 2.0 - 2_500_000.0).abs() < 10_000.0, "{bits}");
    }
}
