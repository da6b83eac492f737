//! One ingest stream's video path, sans IO: FLV video tags in (with the RTMP
//! timestamp), RTP payloads with a 90 kHz timestamp out, and the limits of an
//! ingest stream (BEHAVIOUR §10.6) checked on the way as typed [`Violation`]s.

use onstage_stage::model::EventErrorCode;

use crate::flv::{self, FlvError, VideoTag};
use crate::packetize::{self, RtpPayload};
use crate::sps::{self, PictureSize};

/// IVS's ingest limit: 8.5 Mbps of audio and video.
pub const MAX_BITRATE_BPS: u64 = 8_500_000;
/// The bitrate is averaged over this much stream time, so one large keyframe does
/// not trip it.
pub const BITRATE_WINDOW_MS: u32 = 2_000;

/// Why a stream must end, each with the participant event's error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("the stream has B-frames; encode with B-frames off (e.g. ffmpeg -bf 0)")]
    BFrame,
    #[error("the picture is {0:?}; at most 1280x720 (or 720x1280)")]
    Resolution(PictureSize),
    #[error("the stream sends {0} bit/s; at most 8.5 Mbps")]
    Bitrate(u64),
    #[error("unusable video: {0}")]
    Video(#[from] FlvError),
    #[error("unusable audio: {0}")]
    Audio(FlvError),
}

impl Violation {
    pub fn error_code(&self) -> EventErrorCode {
        match self {
            Violation::BFrame => EventErrorCode::BFramePresent,
            Violation::Resolution(_) => EventErrorCode::ResolutionExceeded,
            Violation::Bitrate(_) => EventErrorCode::BitrateExceeded,
            Violation::Video(FlvError::NotH264(_)) => EventErrorCode::InvalidVideoCodec,
            Violation::Video(_) => EventErrorCode::InvalidInput,
            Violation::Audio(FlvError::NotAac(_)) => EventErrorCode::InvalidAudioCodec,
            Violation::Audio(_) => EventErrorCode::InvalidInput,
        }
    }
}

/// An access unit ready to send.
#[derive(Debug)]
pub struct VideoFrame {
    /// 90 kHz, from the RTMP timestamp (decode time = presentation time: no
    /// B-frames).
    pub rtp_time: u32,
    /// An IDR slice starts it (the parameter sets precede it).
    pub keyframe: bool,
    pub packets: Vec<RtpPayload>,
}

#[derive(Default)]
pub struct VideoBridge {
    length_size: usize,
    sps: Vec<u8>,
    pps: Vec<u8>,
    bitrate: BitrateMeter,
}

impl VideoBridge {
    pub fn new() -> Self {
        VideoBridge {
            length_size: 4,
            ..Default::default()
        }
    }

    /// One RTMP video message. `Ok(None)`: nothing to send (a configuration, or a
    /// frame before the first configuration).
    pub fn on_video(
        &mut self,
        timestamp_ms: u32,
        data: &[u8],
    ) -> Result<Option<VideoFrame>, Violation> {
        self.bitrate.add(timestamp_ms, data.len())?;
        match flv::video_tag(data)? {
            VideoTag::Config {
                length_size,
                sps,
                pps,
            } => {
                if let Some(s) = sps.first() {
                    if let Some(size) = sps::picture_size(s) {
                        check_size(size)?;
                    }
                    self.sps = s.to_vec();
                }
                if let Some(p) = pps.first() {
                    self.pps = p.to_vec();
                }
                self.length_size = length_size;
                Ok(None)
            }
            VideoTag::Frame {
                composition_offset_ms,
                data,
                ..
            } => {
                if composition_offset_ms != 0 {
                    return Err(Violation::BFrame);
                }
                if self.sps.is_empty() {
                    return Ok(None);
                }
                let nals = flv::nal_units(data, self.length_size).collect::<Result<Vec<_>, _>>()?;
                let mut keyframe = false;
                for nal in &nals {
                    match packetize::nal_type(nal) {
                        1 | 5 if sps::is_b_slice(nal) => return Err(Violation::BFrame),
                        5 => keyframe = true,
                        7 => {
                            // A new SPS in band: it must keep to the limit too.
                            if let Some(size) = sps::picture_size(nal) {
                                check_size(size)?;
                            }
                        }
                        _ => {}
                    }
                }
                let mut packets = Vec::new();
                packetize::access_unit(&nals, &[&self.sps, &self.pps], &mut packets);
                Ok(Some(VideoFrame {
                    rtp_time: timestamp_ms.wrapping_mul(90),
                    keyframe,
                    packets,
                }))
            }
            VideoTag::Other => Ok(None),
        }
    }

    /// An audio message's bytes count towards the bitrate too.
    pub fn on_audio_bytes(&mut self, timestamp_ms: u32, len: usize) -> Result<(), Violation> {
        self.bitrate.add(timestamp_ms, len)
    }
}

fn check_size(size: PictureSize) -> Result<(), Violation> {
    let long = size.width.max(size.height);
    let short = size.width.min(size.height);
    if long > 1280 || short > 720 {
        return Err(Violation::Resolution(size));
    }
    Ok(())
}

/// Bytes per window of stream time (the encoder's timestamps, so a burst after a
/// network stall is not mistaken for a high bitrate).
#[derive(Default)]
struct BitrateMeter {
    window_start: Option<u32>,
    bytes: u64,
}

impl BitrateMeter {
    fn add(&mut self, timestamp_ms: u32, len: usize) -> Result<(), Violation> {
        let start = *self.window_start.get_or_insert(timestamp_ms);
        self.bytes += len as u64;
        let elapsed = timestamp_ms.wrapping_sub(start);
        // A timestamp going backwards (a wrapped difference) restarts nothing.
        if (BITRATE_WINDOW_MS..u32::MAX / 2).contains(&elapsed) {
            let bps = self.bytes * 8 * 1000 / u64::from(elapsed);
            self.window_start = Some(timestamp_ms);
            self.bytes = 0;
            if bps > MAX_BITRATE_BPS {
                return Err(Violation::Bitrate(bps));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS_720P: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
    ];
    const SPS_1080P: &[u8] = &[
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00,
        0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc6, 0x58,
    ];

    fn config_tag(sps: &[u8]) -> Vec<u8> {
        let mut t = vec![0x17, 0, 0, 0, 0, 1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        t.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        t.extend_from_slice(sps);
        t.extend_from_slice(&[1, 0, 2, 0x68, 0xce]);
        t
    }

    fn frame_tag(keyframe: bool, cts: i32, nal: &[u8]) -> Vec<u8> {
        let c = cts.to_be_bytes();
        let mut t = vec![if keyframe { 0x17 } else { 0x27 }, 1, c[1], c[2], c[3]];
        t.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        t.extend_from_slice(nal);
        t
    }

    #[test]
    fn frames_become_rtp_with_90khz_time_and_sets_before_idr() {
        let mut b = VideoBridge::new();
        assert!(b.on_video(0, &config_tag(SPS_720P)).unwrap().is_none());
        // I slice: first_mb 0, slice_type 7 ("0001000").
        let idr = [0x65, 0b1000_1000, 0x80];
        let f = b.on_video(40, &frame_tag(true, 0, &idr)).unwrap().unwrap();
        assert!(f.keyframe);
        assert_eq!(f.rtp_time, 3_600);
        assert_eq!(f.packets.len(), 2, "STAP-A with SPS and PPS, then the IDR");
        assert!(f.packets[1].marker);
        // P slice: slice_type 5 ("00110").
        let p = [0x41, 0b1001_1000];
        let f = b.on_video(73, &frame_tag(false, 0, &p)).unwrap().unwrap();
        assert!(!f.keyframe);
        assert_eq!(f.packets.len(), 1);
    }

    #[test]
    fn b_frames_are_refused_by_composition_offset_or_slice_type() {
        let mut b = VideoBridge::new();
        b.on_video(0, &config_tag(SPS_720P)).unwrap();
        let p = [0x41, 0b1001_1000];
        assert_eq!(
            b.on_video(33, &frame_tag(false, 66, &p)).unwrap_err(),
            Violation::BFrame
        );
        let bslice = [0x01, 0b1010_0000];
        let err = b.on_video(66, &frame_tag(false, 0, &bslice)).unwrap_err();
        assert_eq!(err.error_code(), EventErrorCode::BFramePresent);
    }

    #[test]
    fn more_than_720p_is_refused() {
        let mut b = VideoBridge::new();
        let err = b.on_video(0, &config_tag(SPS_1080P)).unwrap_err();
        assert_eq!(
            err,
            Violation::Resolution(PictureSize {
                width: 1920,
                height: 1080
            })
        );
        assert_eq!(err.error_code(), EventErrorCode::ResolutionExceeded);
    }

    #[test]
    fn a_bitrate_over_the_limit_is_refused_over_a_window() {
        let mut b = VideoBridge::new();
        // 9 Mbps: 37,500 bytes every 33 ms of stream time is ~9.1 Mbps.
        let mut t = 0;
        let err = loop {
            if let Err(e) = b.on_audio_bytes(t, 37_500) {
                break e;
            }
            t += 33;
            assert!(t < 10_000, "never refused");
        };
        assert_eq!(err.error_code(), EventErrorCode::BitrateExceeded);
        // 8 Mbps for a long time is fine.
        let mut ok = VideoBridge::new();
        for i in 0..300u32 {
            ok.on_audio_bytes(i * 10, 10_000).unwrap();
        }
    }
}
