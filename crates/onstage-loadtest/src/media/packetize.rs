//! RTP packetization of the synthetic frames (and of a real H.264 stream's
//! access units, [`h264_access_unit`]), done here rather than by str0m so
//! that every packet can carry a [`Stamp`] and so that the packets are the ones
//! a browser would send.
//!
//! An SFU that forwards RTP packets as they are (Janus, or onstage forwarding
//! packets) never looks inside a frame: it decides that a packet starts a
//! keyframe from the codec's payload descriptor and the first bytes after it,
//! and it passes every payload byte on untouched. So the packets follow the
//! RFCs exactly as libwebrtc fills them in:
//!
//! - VP8 (RFC 7741): a 4-byte payload descriptor (X=1, I=1, M=1: a 15-bit
//!   PictureID) on every packet, S=1 and PID=0 on a frame's first packet, which
//!   then begins with the VP8 payload header (RFC 6386 §9.1: P bit clear and the
//!   start code `9d 01 2a` on a keyframe).
//! - H.264 packetization-mode 1 (RFC 6184): a keyframe opens with one STAP-A
//!   holding the SPS, the PPS and an SEI NAL unit (user data unregistered) that
//!   carries that packet's stamp; a slice NAL unit (type 5 IDR or type 1) that
//!   fits goes as a single NAL unit packet, a bigger one as FU-A fragments with
//!   the start and end bits set on the first and last.
//! - Opus: one packet per 20 ms frame, a CELT fullband TOC byte first.
//!
//! The marker bit is set on a video frame's last packet; all packets of a frame
//! share its RTP timestamp (the caller's); no payload exceeds [`MAX_PAYLOAD`].
//!
//! A real stream's slices are sent byte for byte (single NAL unit or FU-A), so
//! only the SEI NAL unit put in front of each of its frames carries a stamp:
//! latency and frame counts then come from one packet per video frame.
//!
//! Every synthetic packet's payload carries a stamp right after the descriptor or codec
//! header (a VP8 frame's first packet: after the descriptor and the payload
//! header). Its send time is written when the packet is handed to str0m, by
//! [`OutPacket::stamp_sent`], so that a subscriber measures each packet's own
//! time through the SFU even when the pacer spreads a frame over 100 ms.
//! Stamps and the `0xAA` filler contain no zero byte, so no start code
//! (`00 00 01`) can appear inside an H.264 NAL unit.

use super::synth::{FILLER, STAMP_LEN, Stamp, VideoCodec};

/// Largest RTP payload, as libwebrtc keeps packets under a 1,200-byte payload.
pub const MAX_PAYLOAD: usize = 1200;

/// VP8 payload descriptor bytes written: the required byte, the extension
/// byte and a 2-byte PictureID.
const VP8_DESCRIPTOR_LEN: usize = 4;
/// H.264 NAL unit header types (RFC 6184 §5.2, ITU-T H.264 table 7-1).
const NAL_NON_IDR: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_SEI: u8 = 6;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;
/// SPS (Constrained Baseline, level 3.1) and PPS NAL units with their headers;
/// nothing decodes them, so past the profile and level their bodies are
/// placeholders without zero bytes.
const SPS: [u8; 8] = [0x67, 0x42, 0xe0, 0x1f, 0x8d, 0x68, 0x05, 0x8b];
const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];
/// The UUID of the SEI message that carries the stamp of a STAP-A (no zeros).
const SEI_UUID: [u8; 16] = *b"onstage-loadtest";
/// SEI payload type 5: user data unregistered.
const SEI_USER_DATA_UNREGISTERED: u8 = 5;

/// One packet ready for str0m, apart from its stamp's send time.
#[derive(Clone, Debug)]
pub struct OutPacket {
    pub payload: Vec<u8>,
    /// The last packet of a video frame.
    pub marker: bool,
    /// Where the stamp starts in `payload`; `None` for the packets of a real
    /// stream's slices, which carry none (see [`h264_access_unit`]).
    pub stamp_at: Option<usize>,
}

impl OutPacket {
    /// Writes the send time into the packet's stamp, if it has one.
    pub fn stamp_sent(&mut self, sent_ns: u64) {
        if let Some(at) = self.stamp_at.and_then(|at| self.payload.get_mut(at..)) {
            Stamp::set_sent_ns(at, sent_ns);
        }
    }
}

/// Appends the packets of one video frame of about `size` bytes of codec data
/// to `out`. `picture_id` is the VP8 PictureID (15 bits are used).
pub fn video_frame(
    out: &mut Vec<OutPacket>,
    codec: VideoCodec,
    keyframe: bool,
    size: usize,
    stamp: &Stamp,
    picture_id: u16,
) {
    let first = out.len();
    match codec {
        VideoCodec::Vp8 => vp8_frame(out, keyframe, size, stamp, picture_id),
        VideoCodec::H264 => h264_frame(out, keyframe, size, stamp),
    }
    if out.len() > first
        && let Some(last) = out.last_mut()
    {
        last.marker = true;
    }
}

/// One Opus packet of `size` bytes.
pub fn audio_frame(size: usize, stamp: &Stamp) -> OutPacket {
    let mut payload = Vec::with_capacity(size.max(1 + STAMP_LEN));
    payload.push(0xFC); // TOC: config 31 (CELT fullband 20 ms), mono, one frame
    stamp.write(&mut payload);
    payload.resize(size.clamp(1 + STAMP_LEN, MAX_PAYLOAD), FILLER);
    OutPacket {
        payload,
        marker: false,
        stamp_at: Some(1),
    }
}

/// How `total` bytes split into packets of at most `capacity` bytes, evenly
/// as libwebrtc splits them: the sizes, larger ones first.
fn even_split(total: usize, capacity: usize) -> impl Iterator<Item = usize> {
    let capacity = capacity.max(1);
    let count = total.div_ceil(capacity).max(1);
    let (base, extra) = (total / count, total % count);
    (0..count).map(move |i| base + usize::from(i < extra))
}

fn vp8_frame(
    out: &mut Vec<OutPacket>,
    keyframe: bool,
    size: usize,
    stamp: &Stamp,
    picture_id: u16,
) {
    // VP8 payload header (RFC 6386 §9.1): P bit (0 = keyframe), version 0,
    // show_frame 1, 19-bit first partition size; a keyframe adds the start
    // code and 1280x720 with no scaling.
    let partition = (size.saturating_sub(10) as u32).min(0x7FFFF);
    let tag = u32::from(!keyframe) | (1 << 4) | (partition << 5);
    let mut header = vec![tag as u8, (tag >> 8) as u8, (tag >> 16) as u8];
    if keyframe {
        header.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02]);
    }
    let picture_id = picture_id & 0x7FFF;
    for (i, data_len) in even_split(size, MAX_PAYLOAD - VP8_DESCRIPTOR_LEN).enumerate() {
        let start = i == 0;
        let mut payload = Vec::with_capacity(MAX_PAYLOAD);
        // X=1, N=0, S on the first packet, PID=0; then I=1; then M=1 and the PictureID.
        payload.push(0x80 | if start { 0x10 } else { 0 });
        payload.push(0x80);
        payload.push(0x80 | (picture_id >> 8) as u8);
        payload.push(picture_id as u8);
        if start {
            payload.extend_from_slice(&header);
        }
        let stamp_at = payload.len();
        stamp.write(&mut payload);
        let len = (VP8_DESCRIPTOR_LEN + data_len).clamp(payload.len(), MAX_PAYLOAD);
        payload.resize(len, FILLER);
        out.push(OutPacket {
            payload,
            marker: false,
            stamp_at: Some(stamp_at),
        });
    }
}

fn h264_frame(out: &mut Vec<OutPacket>, keyframe: bool, size: usize, stamp: &Stamp) {
    if keyframe {
        out.push(stap_a_parameter_sets(stamp));
    }
    // nal_ref_idc 3 for an IDR slice, 2 for the others, as libwebrtc's encoders set them.
    let nal_header = if keyframe {
        0x60 | NAL_IDR
    } else {
        0x40 | NAL_NON_IDR
    };
    let body = size.saturating_sub(1).max(STAMP_LEN);
    if body < MAX_PAYLOAD {
        let mut payload = Vec::with_capacity(1 + body);
        payload.push(nal_header);
        stamp.write(&mut payload);
        payload.resize(1 + body, FILLER);
        out.push(OutPacket {
            payload,
            marker: false,
            stamp_at: Some(1),
        });
        return;
    }
    // FU-A (RFC 6184 §5.8): the NAL header's F and NRI bits go into the FU
    // indicator, its type into the FU header; the header byte itself is not sent.
    let indicator = (nal_header & 0xE0) | NAL_FU_A;
    let parts: Vec<usize> = even_split(body, MAX_PAYLOAD - 2).collect();
    let last = parts.len() - 1;
    for (i, &part) in parts.iter().enumerate() {
        let mut fu_header = nal_header & 0x1F;
        if i == 0 {
            fu_header |= 0x80;
        }
        if i == last {
            fu_header |= 0x40;
        }
        let mut payload = Vec::with_capacity(2 + part.max(STAMP_LEN));
        payload.push(indicator);
        payload.push(fu_header);
        stamp.write(&mut payload);
        let len = (2 + part).clamp(payload.len(), MAX_PAYLOAD);
        payload.resize(len, FILLER);
        out.push(OutPacket {
            payload,
            marker: false,
            stamp_at: Some(2),
        });
    }
}

/// A STAP-A (RFC 6184 §5.7.1) with the synthetic SPS and PPS and an SEI carrying the stamp.
fn stap_a_parameter_sets(stamp: &Stamp) -> OutPacket {
    let (sei, stamp_in_sei) = stamp_sei(stamp);
    stap_a(&[&SPS[..], &PPS[..], &sei[..]], 2, stamp_in_sei)
}

/// An SEI NAL unit (user data unregistered) whose payload is `stamp`, and
/// where in it the stamp starts. Decoders skip it; a subscriber finds it.
fn stamp_sei(stamp: &Stamp) -> (Vec<u8>, usize) {
    let mut sei = Vec::with_capacity(3 + SEI_UUID.len() + STAMP_LEN + 1);
    sei.push(NAL_SEI); // nal_ref_idc 0
    sei.push(SEI_USER_DATA_UNREGISTERED);
    sei.push((SEI_UUID.len() + STAMP_LEN) as u8); // payloadSize, < 255 so one byte
    sei.extend_from_slice(&SEI_UUID);
    let stamp_in_sei = sei.len();
    stamp.write(&mut sei);
    sei.push(0x80); // rbsp_trailing_bits
    (sei, stamp_in_sei)
}

/// One STAP-A of `nals`; the stamp is at `stamp_in` bytes into NAL unit
/// `stamp_nal`.
fn stap_a(nals: &[&[u8]], stamp_nal: usize, stamp_in: usize) -> OutPacket {
    // NRI of an aggregation packet: the highest of its NAL units'.
    let nri = nals.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
    let mut payload = vec![nri | NAL_STAP_A];
    let mut stamp_at = None;
    for (i, nal) in nals.iter().enumerate() {
        payload.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        if i == stamp_nal {
            stamp_at = Some(payload.len() + stamp_in);
        }
        payload.extend_from_slice(nal);
    }
    OutPacket {
        payload,
        marker: false,
        stamp_at,
    }
}

/// Appends the packets of one access unit of a real H.264 stream (see
/// `h264file`) to `out`: first the stamp, as an SEI NAL unit — in one STAP-A
/// with the parameter sets before a keyframe, alone otherwise — then each
/// slice as it is, a single NAL unit packet or FU-A fragments. Only that
/// first packet carries a stamp: the slices' bytes are the encoder's. The
/// marker goes on the last packet.
pub fn h264_access_unit(
    out: &mut Vec<OutPacket>,
    parameter_sets: &[Vec<u8>],
    slices: &[Vec<u8>],
    stamp: &Stamp,
) {
    let first = out.len();
    let (sei, stamp_in_sei) = stamp_sei(stamp);
    let mut head: Vec<&[u8]> = parameter_sets.iter().map(Vec::as_slice).collect();
    let stamp_nal = head.len();
    head.push(&sei);
    let stap_len: usize = 1 + head.iter().map(|n| 2 + n.len()).sum::<usize>();
    if head.len() > 1 && stap_len <= MAX_PAYLOAD && head.iter().all(|n| !n.is_empty()) {
        out.push(stap_a(&head, stamp_nal, stamp_in_sei));
    } else {
        for nal in &head[..stamp_nal] {
            nal_unit(out, nal);
        }
        out.push(OutPacket {
            payload: sei,
            marker: false,
            stamp_at: Some(stamp_in_sei),
        });
    }
    for slice in slices {
        nal_unit(out, slice);
    }
    if out.len() > first
        && let Some(last) = out.last_mut()
    {
        last.marker = true;
    }
}

/// One NAL unit as a single NAL unit packet (RFC 6184 §5.6) when it fits,
/// else as FU-A fragments (§5.8) of even sizes.
fn nal_unit(out: &mut Vec<OutPacket>, nal: &[u8]) {
    let Some((&header, body)) = nal.split_first() else {
        return;
    };
    if nal.len() <= MAX_PAYLOAD {
        out.push(OutPacket {
            payload: nal.to_vec(),
            marker: false,
            stamp_at: None,
        });
        return;
    }
    let indicator = (header & 0xE0) | NAL_FU_A;
    let parts: Vec<usize> = even_split(body.len(), MAX_PAYLOAD - 2).collect();
    let last = parts.len() - 1;
    let mut at = 0;
    for (i, &part) in parts.iter().enumerate() {
        let mut fu_header = header & 0x1F;
        if i == 0 {
            fu_header |= 0x80;
        }
        if i == last {
            fu_header |= 0x40;
        }
        let mut payload = Vec::with_capacity(2 + part);
        payload.push(indicator);
        payload.push(fu_header);
        payload.extend_from_slice(&body[at..at + part]);
        at += part;
        out.push(OutPacket {
            payload,
            marker: false,
            stamp_at: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        publisher: 3,
        frame: 70_000,
        sent_ns: 0,
    };

    fn packets(codec: VideoCodec, keyframe: bool, size: usize) -> Vec<OutPacket> {
        let mut out = Vec::new();
        video_frame(&mut out, codec, keyframe, size, &STAMP, 0x1234);
        out
    }

    /// Every packet's stamp is found where a subscriber looks, with the send
    /// time written last; only the last packet has the marker.
    fn check_common(out: &mut [OutPacket]) {
        let last = out.len() - 1;
        for (i, p) in out.iter_mut().enumerate() {
            assert!(
                p.payload.len() <= MAX_PAYLOAD,
                "packet {i}: {} bytes",
                p.payload.len()
            );
            assert_eq!(p.marker, i == last, "marker on packet {i}");
            p.stamp_sent(1_000_000 + i as u64);
            let found = Stamp::find(&p.payload);
            assert_eq!(
                found,
                Some(Stamp {
                    sent_ns: 1_000_000 + i as u64,
                    ..STAMP
                }),
                "packet {i}"
            );
        }
    }

    /// RFC 7741 §4.2: the descriptor's length and its S and PID fields.
    fn vp8_descriptor(p: &[u8]) -> (usize, bool, u8, Option<u16>) {
        let (x, s, pid) = (p[0] & 0x80 != 0, p[0] & 0x10 != 0, p[0] & 0x07);
        let mut len = 1;
        let mut picture_id = None;
        if x {
            let ext = p[1];
            len += 1;
            if ext & 0x80 != 0 {
                if p[len] & 0x80 != 0 {
                    picture_id = Some(u16::from_be_bytes([p[len] & 0x7F, p[len + 1]]));
                    len += 2;
                } else {
                    picture_id = Some(u16::from(p[len]));
                    len += 1;
                }
            }
            len += usize::from(ext & 0x40 != 0) + usize::from(ext & 0x30 != 0);
        }
        (len, s, pid, picture_id)
    }

    #[test]
    fn vp8_keyframe_is_recognisable_from_its_first_packet() {
        let mut out = packets(VideoCodec::Vp8, true, 83_000);
        assert!(out.len() >= 70, "{} packets", out.len());
        let (len, s, pid, picture_id) = vp8_descriptor(&out[0].payload);
        assert_eq!((len, s, pid, picture_id), (4, true, 0, Some(0x1234)));
        let header = &out[0].payload[len..];
        assert_eq!(header[0] & 1, 0, "P bit clear on a keyframe");
        assert_eq!(&header[3..6], &[0x9d, 0x01, 0x2a]);
        for p in &out[1..] {
            let (len, s, _, picture_id) = vp8_descriptor(&p.payload);
            assert_eq!((len, s, picture_id), (4, false, Some(0x1234)));
        }
        let total: usize = out.iter().map(|p| p.payload.len() - 4).sum();
        assert!(total.abs_diff(83_000) < 100, "{total}");
        check_common(&mut out);
    }

    #[test]
    fn vp8_delta_frame_has_the_p_bit() {
        let mut out = packets(VideoCodec::Vp8, false, 500);
        assert_eq!(out.len(), 1);
        let (len, s, pid, _) = vp8_descriptor(&out[0].payload);
        assert!(s && pid == 0);
        assert_eq!(out[0].payload[len] & 1, 1);
        check_common(&mut out);
    }

    /// Reassembles the NAL units of a frame's packets as a receiver does
    /// (RFC 6184 §5.6–5.8), checking the packets' structure on the way.
    fn h264_nal_units(out: &[OutPacket]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fragment: Option<Vec<u8>> = None;
        for p in out {
            let b = &p.payload;
            match b[0] & 0x1F {
                1..=23 => nals.push(b.clone()),
                NAL_STAP_A => {
                    let mut at = 1;
                    while at < b.len() {
                        let n = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
                        assert!(
                            n > 0 && at + 2 + n <= b.len(),
                            "STAP-A unit overruns the packet"
                        );
                        nals.push(b[at + 2..at + 2 + n].to_vec());
                        at += 2 + n;
                    }
                    assert_eq!(at, b.len());
                }
                NAL_FU_A => {
                    let (start, end) = (b[1] & 0x80 != 0, b[1] & 0x40 != 0);
                    assert!(!(start && end), "a NAL unit in one fragment");
                    if start {
                        assert!(fragment.is_none(), "start bit inside a fragmented unit");
                        fragment = Some(vec![(b[0] & 0xE0) | (b[1] & 0x1F)]);
                    }
                    let Some(nal) = fragment.as_mut() else {
                        panic!("fragment without a start")
                    };
                    nal.extend_from_slice(&b[2..]);
                    if end {
                        nals.extend(fragment.take());
                    }
                }
                t => panic!("unexpected packet type {t}"),
            }
        }
        assert!(fragment.is_none(), "unterminated FU-A");
        nals
    }

    #[test]
    fn h264_keyframe_sends_parameter_sets_then_a_fragmented_idr() {
        let mut out = packets(VideoCodec::H264, true, 83_000);
        assert_eq!(out[0].payload[0] & 0x1F, NAL_STAP_A);
        let nals = h264_nal_units(&out);
        let types: Vec<u8> = nals.iter().map(|n| n[0] & 0x1F).collect();
        assert_eq!(types, [7, 8, NAL_SEI, NAL_IDR]);
        assert!(nals[3].len().abs_diff(83_000) < 10, "{}", nals[3].len());
        assert_eq!(out[1].payload[1], 0x80 | NAL_IDR, "FU-A start of an IDR");
        assert_eq!(out[out.len() - 1].payload[1], 0x40 | NAL_IDR, "FU-A end");
        for nal in &nals {
            assert!(
                !nal.windows(3).any(|w| w == [0, 0, 1] || w == [0, 0, 0]),
                "start code in a NAL unit"
            );
        }
        check_common(&mut out);
    }

    #[test]
    fn h264_delta_frames_single_or_fragmented() {
        let mut small = packets(VideoCodec::H264, false, 900);
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].payload[0], 0x41);
        check_common(&mut small);
        let mut big = packets(VideoCodec::H264, false, 9_000);
        assert!(big.len() > 1);
        let nals = h264_nal_units(&big);
        assert_eq!(nals.len(), 1);
        assert_eq!(nals[0][0], 0x41);
        assert!(!nals[0].windows(3).any(|w| w == [0, 0, 1]));
        check_common(&mut big);
    }

    #[test]
    fn real_access_units_keep_their_slices_and_carry_one_stamp() {
        let sps = vec![0x67, 0x42, 0xc0, 0x1f, 0xd9];
        let pps = vec![0x68, 0xcb, 0x8c, 0xb2];
        // An IDR slice of 5,000 bytes with every byte value in it.
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..4_999u32).map(|i| (i * 7) as u8))
            .collect();
        let mut out = Vec::new();
        h264_access_unit(
            &mut out,
            &[sps.clone(), pps.clone()],
            std::slice::from_ref(&idr),
            &STAMP,
        );
        assert_eq!(out[0].payload[0], 0x60 | NAL_STAP_A);
        let nals = h264_nal_units(&out);
        assert_eq!(nals[0], sps);
        assert_eq!(nals[1], pps);
        assert_eq!(nals[2][0], NAL_SEI);
        assert_eq!(nals[3], idr, "the slice arrives byte for byte");
        assert_eq!(nals.len(), 4);
        assert!(out.iter().all(|p| p.payload.len() <= MAX_PAYLOAD));
        assert_eq!(
            out.iter().map(|p| p.marker).collect::<Vec<_>>(),
            (0..out.len())
                .map(|i| i == out.len() - 1)
                .collect::<Vec<_>>()
        );
        out[0].stamp_sent(77);
        assert_eq!(
            Stamp::find(&out[0].payload),
            Some(Stamp {
                sent_ns: 77,
                ..STAMP
            })
        );
        assert!(out[1..].iter().all(|p| p.stamp_at.is_none()));

        // A delta frame: the stamp's SEI alone, then the slice as one packet.
        let p = vec![0x41, 0x9a, 0x02, 0x00, 0x00, 0x03, 0x01];
        let mut out = Vec::new();
        h264_access_unit(&mut out, &[], std::slice::from_ref(&p), &STAMP);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].payload[0], NAL_SEI);
        assert_eq!(out[1].payload, p);
        assert!(out[1].marker && !out[0].marker);
        out[0].stamp_sent(5);
        assert_eq!(
            Stamp::find(&out[0].payload),
            Some(Stamp {
                sent_ns: 5,
                ..STAMP
            })
        );
    }

    #[test]
    fn opus_packets_carry_a_stamp() {
        let mut p = audio_frame(160, &STAMP);
        assert_eq!((p.payload.len(), p.payload[0]), (160, 0xFC));
        p.stamp_sent(42);
        assert_eq!(
            Stamp::find(&p.payload),
            Some(Stamp {
                sent_ns: 42,
                ..STAMP
            })
        );
    }

    #[test]
    fn even_split_covers_the_total() {
        let parts: Vec<usize> = even_split(2_500, 1_196).collect();
        assert_eq!(parts, [834, 833, 833]);
        assert_eq!(even_split(0, 1_196).collect::<Vec<_>>(), [0]);
    }
}
