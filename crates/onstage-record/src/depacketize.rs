//! RTP payloads back into frames: H.264 (RFC 6184: single NAL units, STAP-A,
//! FU-A), VP8 (RFC 7741) and Opus (RFC 7587, one packet per RTP payload).
//!
//! A frame is the packets of one RTP timestamp. A frame with a gap in its
//! sequence numbers, or one whose start was lost, is dropped whole; the caller
//! then waits for the next keyframe, so a lossy stream leaves a recording that
//! skips rather than one that decodes to garbage.

/// A whole video frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoFrame {
    pub rtp_time: u32,
    /// H.264: NAL units with 4-byte lengths (parameter sets kept in band);
    /// VP8: the frame as the encoder wrote it.
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// H.264 parameter sets seen in this frame.
    pub sps: Option<Vec<u8>>,
    pub pps: Option<Vec<u8>>,
    /// VP8 keyframes carry the picture size.
    pub vp8_size: Option<(u16, u16)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Vp8,
}

/// Collects one video stream's packets into frames.
#[derive(Debug)]
pub struct VideoDepacketizer {
    codec: VideoCodec,
    time: Option<u32>,
    last_seq: Option<u64>,
    broken: bool,
    started: bool,
    data: Vec<u8>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    idr: bool,
    vp8_size: Option<(u16, u16)>,
    vp8_key: bool,
    /// FU-A in progress (its NAL's length prefix is at this offset in `data`).
    fu_at: Option<usize>,
}

impl VideoDepacketizer {
    pub fn new(codec: VideoCodec) -> Self {
        VideoDepacketizer {
            codec,
            time: None,
            last_seq: None,
            broken: false,
            started: false,
            data: Vec::new(),
            sps: None,
            pps: None,
            idr: false,
            vp8_size: None,
            vp8_key: false,
            fu_at: None,
        }
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// One RTP packet (in arrival order); returns the frame it completes, if any.
    /// A frame also completes when a packet of a later timestamp arrives first
    /// (its marker was lost): then it is returned only if nothing is missing.
    pub fn push(
        &mut self,
        seq: u64,
        time: u32,
        marker: bool,
        payload: &[u8],
    ) -> Option<VideoFrame> {
        let mut done = None;
        if self.time.is_some_and(|t| t != time) {
            // A new frame began before the last one ended.
            self.broken = true;
            done = self.finish();
        }
        if self.time.is_none() {
            self.time = Some(time);
            self.started = false;
        }
        if let Some(last) = self.last_seq
            && seq != last + 1
            && self.started
        {
            self.broken = true;
        }
        self.last_seq = Some(seq);
        match self.codec {
            VideoCodec::H264 => self.push_h264(payload),
            VideoCodec::Vp8 => self.push_vp8(payload),
        }
        if marker {
            let frame = self.finish();
            return frame.or(done);
        }
        done
    }

    fn finish(&mut self) -> Option<VideoFrame> {
        let time = self.time.take()?;
        let broken = std::mem::take(&mut self.broken) || !self.started || self.fu_at.is_some();
        self.fu_at = None;
        self.started = false;
        let data = std::mem::take(&mut self.data);
        let (sps, pps) = (self.sps.take(), self.pps.take());
        let keyframe = match self.codec {
            VideoCodec::H264 => std::mem::take(&mut self.idr),
            VideoCodec::Vp8 => std::mem::take(&mut self.vp8_key),
        };
        let vp8_size = self.vp8_size.take();
        if broken || data.is_empty() {
            return None;
        }
        Some(VideoFrame {
            rtp_time: time,
            data,
            keyframe,
            sps,
            pps,
            vp8_size,
        })
    }

    fn nal(&mut self, nal: &[u8]) {
        let Some(&header) = nal.first() else { return };
        match header & 0x1f {
            5 => self.idr = true,
            7 => self.sps = Some(nal.to_vec()),
            8 => self.pps = Some(nal.to_vec()),
            _ => {}
        }
        self.data
            .extend_from_slice(&(nal.len() as u32).to_be_bytes());
        self.data.extend_from_slice(nal);
    }

    fn push_h264(&mut self, payload: &[u8]) {
        let Some(&first) = payload.first() else {
            return;
        };
        match first & 0x1f {
            1..=23 => {
                self.started = true;
                self.nal(payload);
            }
            24 => {
                // STAP-A: 16-bit sizes, then NAL units.
                self.started = true;
                let mut rest = &payload[1..];
                while rest.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    if rest.len() < 2 + len {
                        self.broken = true;
                        return;
                    }
                    self.nal(&rest[2..2 + len]);
                    rest = &rest[2 + len..];
                }
            }
            28 => {
                let Some(&fu) = payload.get(1) else {
                    self.broken = true;
                    return;
                };
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                let body = &payload[2..];
                if start {
                    self.started = true;
                    let header = (first & 0xe0) | (fu & 0x1f);
                    match header & 0x1f {
                        5 => self.idr = true,
                        7 | 8 => {} // parameter sets are never fragmented in practice
                        _ => {}
                    }
                    self.fu_at = Some(self.data.len());
                    self.data.extend_from_slice(&[0, 0, 0, 0, header]);
                    self.data.extend_from_slice(body);
                } else if let Some(_at) = self.fu_at {
                    self.data.extend_from_slice(body);
                } else {
                    self.broken = true;
                    return;
                }
                if end && let Some(at) = self.fu_at.take() {
                    let len = (self.data.len() - at - 4) as u32;
                    self.data[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
            }
            _ => self.broken = true,
        }
    }

    fn push_vp8(&mut self, payload: &[u8]) {
        // RFC 7741 payload descriptor.
        let Some(&b0) = payload.first() else { return };
        let mut at = 1;
        if b0 & 0x80 != 0 {
            let Some(&x) = payload.get(1) else {
                self.broken = true;
                return;
            };
            at = 2;
            if x & 0x80 != 0 {
                // PictureID: 7 or 15 bits.
                at += if payload.get(at).is_some_and(|b| b & 0x80 != 0) {
                    2
                } else {
                    1
                };
            }
            if x & 0x40 != 0 {
                at += 1;
            }
            if x & 0x30 != 0 {
                at += 1;
            }
        }
        let Some(body) = payload.get(at..) else {
            self.broken = true;
            return;
        };
        let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
        if start {
            self.started = true;
            if let Some(&h) = body.first()
                && h & 0x01 == 0
                && body.len() >= 10
            {
                self.vp8_key = true;
                let w = u16::from_le_bytes([body[6], body[7]]) & 0x3fff;
                let h = u16::from_le_bytes([body[8], body[9]]) & 0x3fff;
                self.vp8_size = Some((w, h));
            }
        } else if !self.started {
            self.broken = true;
        }
        self.data.extend_from_slice(body);
    }
}

/// An Opus packet's duration in 48 kHz samples, from its TOC byte (RFC 6716 §3.1).
pub fn opus_duration(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame length in 48 kHz samples, ×2 so 2.5 ms stays whole.
    let twice = match config {
        0..=11 => [960u32, 1920, 3840, 5760][usize::from(config % 4)],
        12..=15 => [960, 1920][usize::from(config % 2)],
        _ => [240, 480, 960, 1920][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    Some(twice * frames / 2)
}

/// Width and height from an H.264 sequence parameter set (the NAL unit, header
/// byte included), cropping applied: the media plane's reader
/// (`onstage_media::h264`), in the sizes an init segment holds.
pub fn sps_size(sps: &[u8]) -> Option<(u16, u16)> {
    let size = onstage_media::h264::picture_size(sps)?;
    Some((
        u16::try_from(size.width).ok()?,
        u16::try_from(size.height).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stap_a_then_fu_a_make_one_keyframe() {
        let mut d = VideoDepacketizer::new(VideoCodec::H264);
        let sps = [0x67, 0x42, 0xe0, 0x1e];
        let pps = [0x68, 0xce];
        let mut stap = vec![24];
        for nal in [&sps[..], &pps[..]] {
            stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            stap.extend_from_slice(nal);
        }
        assert_eq!(d.push(10, 3000, false, &stap), None);
        assert_eq!(d.push(11, 3000, false, &[0x7c, 0x85, 1, 2]), None);
        let frame = d.push(12, 3000, true, &[0x7c, 0x45, 3]).expect("a frame");
        assert!(frame.keyframe);
        assert_eq!(frame.sps.as_deref(), Some(&sps[..]));
        assert_eq!(
            frame.data,
            [
                &[0, 0, 0, 4][..],
                &sps,
                &[0, 0, 0, 2],
                &pps,
                &[0, 0, 0, 4, 0x65, 1, 2, 3]
            ]
            .concat()
        );
    }

    #[test]
    fn a_frame_with_a_gap_is_dropped() {
        let mut d = VideoDepacketizer::new(VideoCodec::H264);
        assert_eq!(d.push(1, 10, false, &[0x7c, 0x85, 1]), None);
        // seq 2 lost
        assert_eq!(d.push(3, 10, true, &[0x7c, 0x45, 3]), None);
        // The next frame is whole again.
        let f = d.push(4, 20, true, &[0x41, 9]).expect("next frame");
        assert!(!f.keyframe);
    }

    #[test]
    fn a_lost_marker_ends_the_frame_at_the_next_timestamp() {
        let mut d = VideoDepacketizer::new(VideoCodec::H264);
        assert_eq!(d.push(1, 10, false, &[0x65, 1]), None);
        // The next frame's packet arrives: the last one is incomplete-marked, dropped.
        assert_eq!(
            d.push(2, 20, true, &[0x41, 2]).map(|f| f.rtp_time),
            Some(20)
        );
    }

    #[test]
    fn vp8_keyframe_size() {
        let mut d = VideoDepacketizer::new(VideoCodec::Vp8);
        // S=1, PID 0, keyframe header with start code and 320x240
        let payload = [
            0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 7,
        ];
        let f = d.push(1, 90, true, &payload).expect("a frame");
        assert!(f.keyframe);
        assert_eq!(f.vp8_size, Some((320, 240)));
        assert_eq!(f.data, payload[1..]);
    }

    #[test]
    fn opus_durations() {
        assert_eq!(opus_duration(&[0xfc]), Some(960)); // CELT 20 ms
        assert_eq!(opus_duration(&[0x78]), Some(960)); // hybrid 20 ms (config 15)
        assert_eq!(opus_duration(&[0xfd]), Some(1920)); // two 20 ms frames
        assert_eq!(opus_duration(&[]), None);
    }

    #[test]
    fn sps_sizes() {
        // Baseline 640x360 as x264 writes it (360 is not a multiple of 16: cropped).
        let sps = [
            0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03,
            0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
        ];
        assert_eq!(sps_size(&sps), Some((640, 360)));
    }
}
