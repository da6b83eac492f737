//! Synthetic media: frames that look like a camera's to an SFU, made without an
//! encoder.
//!
//! An SFU needs no more than the codec syntax that tells it where frames and
//! keyframes start (written by [`super::packetize`]) and realistic sizes:
//! delta frames around the target bitrate, a keyframe every `keyframe_interval`
//! about nine deltas big, Opus-sized audio every 20 ms ([`VideoShape`]).
//!
//! Every RTP packet carries a [`Stamp`] right after its codec header: a magic,
//! the publisher's index, the frame's counter and the packet's send time on
//! `CLOCK_MONOTONIC` (one clock for every process on the machine), which lets
//! a subscriber compute each packet's latency through the SFU and find frames
//! the SFU never delivered. The stamp is encoded without zero bytes, and the
//! filler is `0xAA`, so no start code (`00 00 01`) can appear inside an H.264
//! NAL unit.

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
/// descriptor and codec header come first (VP8: 4 + 10 bytes; H.264 FU-A: 2;
/// the STAP-A of a keyframe: 38, see `packetize`).
pub const STAMP_SEARCH_WINDOW: usize = 48;
/// What fills frames past their headers and stamps: no zero byte.
pub const FILLER: u8 = 0xAA;

/// What a stamped frame says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub frame: u64,
    pub sent_ns: u64,
}

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds on `CLOCK_REALTIME` (the clock of the kernel's receive timestamps).
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
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

    /// Overwrites the send time of the stamp that `at` starts with (written
    /// by [`Stamp::write`]); does nothing if `at` is too short to hold one.
    pub fn set_sent_ns(at: &mut [u8], sent_ns: u64) {
        let field = MAGIC.len() + 5 + 10;
        if let Some(slot) = at.get_mut(field..field + 10) {
            for (i, b) in slot.iter_mut().enumerate() {
                *b = 0x80 | ((sent_ns >> (7 * (9 - i))) & 0x7F) as u8;
            }
        }
    }

    /// Finds a stamp near the start of an RTP payload.
    pub fn find(payload: &[u8]) -> Option<Stamp> {
        let window = &payload[..payload.len().min(STAMP_SEARCH_WINDOW + STAMP_LEN)];
        // Runs for every received packet: look for the magic's first byte,
        // then compare the rest, rather than compare at every offset.
        let mut from = 0;
        let at = loop {
            let at = from
                + window
                    .get(from..STAMP_SEARCH_WINDOW.min(window.len()))?
                    .iter()
                    .position(|&b| b == MAGIC[0])?;
            if window.get(at..at + MAGIC.len()) == Some(&MAGIC[..]) {
                break at;
            }
            from = at + 1;
        };
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
    pub bits_per_second: u64,
    pub fps: u32,
    /// Frames from one keyframe to the next.
    pub gop: u32,
    pub delta_bytes: usize,
    pub key_bytes: usize,
}

/// How much bigger a keyframe is than a delta frame.
const KEYFRAME_RATIO: usize = 9;

impl VideoShape {
    pub fn new(
        codec: VideoCodec,
        bits_per_second: u64,
        fps: u32,
        keyframe_interval: Duration,
    ) -> Self {
        let fps = fps.max(1);
        let gop = ((keyframe_interval.as_secs_f64() * f64::from(fps)).round() as u32).max(1);
        // One GOP = (gop - 1) deltas + one keyframe of KEYFRAME_RATIO deltas.
        let gop_bytes = bits_per_second as f64 / 8.0 * f64::from(gop) / f64::from(fps);
        let delta = (gop_bytes / (f64::from(gop - 1) + KEYFRAME_RATIO as f64)).max(64.0) as usize;
        VideoShape {
            codec,
            bits_per_second,
            fps,
            gop,
            delta_bytes: delta,
            key_bytes: delta * KEYFRAME_RATIO,
        }
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.fps))
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
        let stamp = Stamp {
            publisher: 7,
            frame: 1,
            sent_ns: 1_234_567_890_123,
        };
        let mut out = vec![0x90, 0x10, 0x11];
        stamp.write(&mut out);
        assert_eq!(out.len(), 3 + STAMP_LEN);
        assert!(out[3..].iter().all(|&b| b != 0));
        assert_eq!(Stamp::find(&out), Some(stamp));
        Stamp::set_sent_ns(&mut out[3..], 987_654_321);
        assert_eq!(
            Stamp::find(&out),
            Some(Stamp {
                sent_ns: 987_654_321,
                ..stamp
            })
        );
        assert_eq!(Stamp::find(&[0xAA; 100]), None);
    }

    #[test]
    fn shape_matches_the_bitrate() {
        let s = VideoShape::new(VideoCodec::Vp8, 2_500_000, 30, Duration::from_secs(2));
        assert_eq!(s.gop, 60);
        let bits = ((s.gop as usize - 1) * s.delta_bytes + s.key_bytes) * 8;
        assert!((bits as f64 / 2.0 - 2_500_000.0).abs() < 10_000.0, "{bits}");
    }
}
