//! A real H.264 stream for publishers: the access units of an Annex B file.
//!
//! Synthetic frames are enough for an SFU, which never decodes, but not for a
//! recorder whose files must play. `--video-file` makes every publisher send
//! the frames of a real encoder's output instead (e.g. Debian's ffmpeg:
//! `ffmpeg -f lavfi -i testsrc2=s=1280x720:r=30 -t 10 -c:v libx264 -profile:v
//! baseline -bf 0 -g 60 -b:v 2500k -f h264 file.h264`), read once and shared.
//!
//! What is read: the NAL units between start codes, grouped into access units
//! (a new one starts at an access unit delimiter, SPS, PPS or SEI after a
//! slice, or at a slice whose `first_mb_in_slice` is 0 after a slice); each
//! keyframe (IDR) carries the parameter sets last seen before it; the frame
//! rate comes from the SPS's VUI timing, when the encoder wrote it. Delimiters,
//! the encoder's SEI and anything but slices and parameter sets are left out:
//! the packetizer puts its own SEI (the stamp) in front of every frame.
//!
//! A publisher walks the frames in a loop ([`FileCursor`]), so the stream
//! restarts at the file's first IDR; its RTP timestamps keep running. A
//! keyframe request skips ahead to the next IDR, as an encoder answers one
//! with a fresh keyframe (the content jumps, the stream stays decodable).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

const NAL_NON_IDR: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_SEI: u8 = 6;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// One access unit of the file.
#[derive(Debug)]
pub struct FileFrame {
    pub keyframe: bool,
    /// The SPS and PPS to send before a keyframe's slices; empty otherwise.
    pub parameter_sets: Vec<Vec<u8>>,
    /// The slice NAL units, each with its header byte, without start codes.
    pub slices: Vec<Vec<u8>>,
}

impl FileFrame {
    fn bytes(&self) -> usize {
        self.slices.iter().map(Vec::len).sum()
    }
}

/// An H.264 Annex B file, read whole.
#[derive(Debug)]
pub struct H264File {
    /// From the first IDR on.
    pub frames: Vec<FileFrame>,
    /// Frames per second from the SPS's VUI timing, if it has any.
    pub fps: Option<f64>,
    /// Index of the first keyframe after each frame (wrapping to the start).
    next_key: Vec<usize>,
}

impl H264File {
    pub fn read(path: &Path) -> anyhow::Result<Arc<H264File>> {
        let data =
            std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
        let file = H264File::parse(&data)
            .with_context(|| format!("{} is not a usable H.264 Annex B stream", path.display()))?;
        Ok(Arc::new(file))
    }

    pub fn parse(data: &[u8]) -> anyhow::Result<H264File> {
        let mut frames = Vec::new();
        let mut sps: Option<Vec<u8>> = None;
        let mut pps: Option<Vec<u8>> = None;
        let mut fps = None;
        let mut current: Option<FileFrame> = None;
        for nal in nal_units(data) {
            let kind = nal[0] & 0x1F;
            let after_slice = current.as_ref().is_some_and(|f| !f.slices.is_empty());
            let starts_unit = match kind {
                NAL_AUD | NAL_SPS | NAL_PPS | NAL_SEI => after_slice,
                NAL_NON_IDR | NAL_IDR => {
                    // first_mb_in_slice is ue(v): 0 is the single bit 1.
                    after_slice && nal.get(1).is_some_and(|b| b & 0x80 != 0)
                }
                _ => false,
            };
            if starts_unit {
                frames.extend(current.take());
            }
            match kind {
                NAL_SPS => {
                    if fps.is_none() {
                        fps = vui_frame_rate(nal);
                    }
                    sps = Some(nal.to_vec());
                }
                NAL_PPS => pps = Some(nal.to_vec()),
                NAL_NON_IDR | NAL_IDR => {
                    let frame = current.get_or_insert_with(|| FileFrame {
                        keyframe: false,
                        parameter_sets: Vec::new(),
                        slices: Vec::new(),
                    });
                    if kind == NAL_IDR && !frame.keyframe {
                        let (Some(sps), Some(pps)) = (&sps, &pps) else {
                            bail!("an IDR slice comes before any SPS and PPS");
                        };
                        frame.keyframe = true;
                        frame.parameter_sets = vec![sps.clone(), pps.clone()];
                    }
                    frame.slices.push(nal.to_vec());
                }
                _ => {}
            }
        }
        frames.extend(current);
        // Frames before the first IDR cannot be decoded by anyone.
        let Some(first_key) = frames.iter().position(|f| f.keyframe) else {
            bail!("no IDR slice in {} frames", frames.len());
        };
        frames.drain(..first_key);
        let mut next_key = vec![0; frames.len()];
        let mut key = 0; // the first frame is a keyframe: the wrap target
        for i in (0..frames.len()).rev() {
            next_key[i] = key;
            if frames[i].keyframe {
                key = i;
            }
        }
        Ok(H264File {
            frames,
            fps: fps.filter(|f| (1.0..=240.0).contains(f)),
            next_key,
        })
    }

    /// Average bits per second at `fps`.
    pub fn bits_per_second(&self, fps: f64) -> u64 {
        let bytes: usize = self.frames.iter().map(FileFrame::bytes).sum();
        (bytes as f64 * 8.0 * fps / self.frames.len().max(1) as f64) as u64
    }

    /// Average sizes of a delta frame and a keyframe, and the mean distance
    /// between keyframes, in frames.
    pub fn shape(&self) -> (usize, usize, u32) {
        let average = |key: bool| {
            let (n, bytes) = self
                .frames
                .iter()
                .filter(|f| f.keyframe == key)
                .fold((0, 0), |(n, b), f| (n + 1, b + f.bytes()));
            bytes / n.max(1)
        };
        let keys = self.frames.iter().filter(|f| f.keyframe).count().max(1);
        (
            average(false),
            average(true),
            (self.frames.len() / keys) as u32,
        )
    }
}

/// A publisher's place in a file.
pub struct FileCursor {
    file: Arc<H264File>,
    next: usize,
}

impl FileCursor {
    pub fn new(file: Arc<H264File>) -> Self {
        FileCursor { file, next: 0 }
    }

    /// Whether the next frame is a keyframe.
    pub fn at_keyframe(&self) -> bool {
        self.file.frames.get(self.next).is_some_and(|f| f.keyframe)
    }

    /// Moves to the next keyframe (wrapping), unless already at one.
    pub fn skip_to_keyframe(&mut self) {
        if !self.at_keyframe() {
            self.next = self.file.next_key.get(self.next).copied().unwrap_or(0);
        }
    }

    /// The next frame; moves past it.
    pub fn take(&mut self) -> Option<&FileFrame> {
        let at = self.next;
        self.next = (at + 1) % self.file.frames.len().max(1);
        self.file.frames.get(at)
    }
}

/// The NAL units of an Annex B byte stream (between `00 00 01` start codes,
/// trailing zeros of a four-byte start code trimmed), empty ones skipped.
fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| s - 3)
        .chain(std::iter::once(data.len()))
        .collect();
    starts.into_iter().zip(ends).filter_map(move |(s, e)| {
        let mut nal = &data[s..e];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        (!nal.is_empty()).then_some(nal)
    })
}

/// Reads an RBSP (emulation prevention bytes removed) bit by bit.
struct Bits {
    bytes: Vec<u8>,
    at: usize,
}

impl Bits {
    fn new(nal_payload: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(nal_payload.len());
        let mut zeros = 0;
        for &b in nal_payload {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            bytes.push(b);
        }
        Bits { bytes, at: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = self.bytes.get(self.at / 8)?;
        let bit = (byte >> (7 - self.at % 8)) & 1;
        self.at += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |v, _| Some((v << 1) | self.bit()?))
    }

    fn flag(&mut self) -> Option<bool> {
        Some(self.bit()? == 1)
    }

    /// ue(v), H.264 §9.1.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k % 2 == 1 {
            k.div_ceil(2) as i32
        } else {
            -((k / 2) as i32)
        })
    }
}

/// The frame rate an SPS's VUI states (`time_scale / (2 × num_units_in_tick)`,
/// H.264 §E.2.1), walking the SPS fields before it (§7.3.2.1.1).
fn vui_frame_rate(sps: &[u8]) -> Option<f64> {
    let mut r = Bits::new(sps.get(1..)?);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.flag()?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.flag()?; // qpprime_y_zero_transform_bypass_flag
        if r.flag()? {
            // seq_scaling_matrix_present_flag: skip every list present.
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.flag()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.flag()?; // gaps_in_frame_num_value_allowed_flag
    r.ue()?; // pic_width_in_mbs_minus1
    r.ue()?; // pic_height_in_map_units_minus1
    if !r.flag()? {
        r.flag()?; // mb_adaptive_frame_field_flag
    }
    r.flag()?; // direct_8x8_inference_flag
    if r.flag()? {
        for _ in 0..4 {
            r.ue()?; // frame_crop_*_offset
        }
    }
    if !r.flag()? {
        return None; // no VUI
    }
    if r.flag()? && r.bits(8)? == 255 {
        r.bits(32)?; // aspect_ratio_idc Extended_SAR: sar_width, sar_height
    }
    if r.flag()? {
        r.flag()?; // overscan_appropriate_flag
    }
    if r.flag()? {
        r.bits(4)?; // video_format, video_full_range_flag
        if r.flag()? {
            r.bits(24)?; // colour description
        }
    }
    if r.flag()? {
        r.ue()?;
        r.ue()?; // chroma sample locations
    }
    if !r.flag()? {
        return None; // no timing_info
    }
    let units = r.bits(32)?;
    let scale = r.bits(32)?;
    (units > 0).then(|| f64::from(scale) / (2.0 * f64::from(units)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What x264 wrote for 1280x720 Constrained Baseline at 30 fps (VUI
    /// timing 1/60), as ffmpeg's libx264 writes it with `-profile:v baseline`.
    const X264_SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xcb, 0x8c, 0xb2];

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, nal) in nals.iter().enumerate() {
            // Four-byte start codes sometimes, as encoders write them.
            if i % 2 == 0 {
                out.push(0);
            }
            out.extend_from_slice(&[0, 0, 1]);
            out.extend_from_slice(nal);
        }
        out
    }

    #[test]
    fn reads_the_frame_rate_from_x264s_vui() {
        assert_eq!(vui_frame_rate(X264_SPS), Some(30.0));
        // An SPS cut before its VUI states none.
        assert_eq!(vui_frame_rate(&X264_SPS[..8]), None);
    }

    #[test]
    fn groups_nal_units_into_access_units() {
        let idr: &[u8] = &[0x65, 0x88, 0x84, 0x21];
        let p1: &[u8] = &[0x41, 0x9a, 0x02];
        let p2_slice_a: &[u8] = &[0x41, 0x9a, 0x03];
        let p2_slice_b: &[u8] = &[0x41, 0x40, 0x44]; // first_mb_in_slice != 0
        let sei: &[u8] = &[0x06, 0x05, 0x01, 0xAA, 0x80];
        let aud: &[u8] = &[0x09, 0xf0];
        let skipped_p: &[u8] = &[0x41, 0x9a, 0x01];
        let data = annex_b(&[
            skipped_p, aud, X264_SPS, PPS, sei, idr, p1, aud, p2_slice_a, p2_slice_b, X264_SPS,
            PPS, idr,
        ]);
        let file = H264File::parse(&data).unwrap();
        assert_eq!(file.fps, Some(30.0));
        let kinds: Vec<(bool, usize, usize)> = file
            .frames
            .iter()
            .map(|f| (f.keyframe, f.parameter_sets.len(), f.slices.len()))
            .collect();
        // The P frame before the first IDR is dropped; the SEI and AUDs are left out.
        assert_eq!(
            kinds,
            [(true, 2, 1), (false, 0, 1), (false, 0, 2), (true, 2, 1)]
        );
        assert_eq!(
            file.frames[0].parameter_sets,
            [X264_SPS.to_vec(), PPS.to_vec()]
        );
        assert_eq!(file.frames[0].slices, [idr.to_vec()]);
        assert_eq!(
            file.frames[2].slices,
            [p2_slice_a.to_vec(), p2_slice_b.to_vec()]
        );
        assert_eq!(file.next_key, [3, 3, 3, 0]);
    }

    #[test]
    fn a_cursor_loops_and_skips_to_keyframes() {
        let idr: &[u8] = &[0x65, 0x88];
        let p: &[u8] = &[0x41, 0x9a];
        let data = annex_b(&[X264_SPS, PPS, idr, p, p, X264_SPS, PPS, idr, p]);
        let file = Arc::new(H264File::parse(&data).unwrap());
        assert_eq!(file.frames.len(), 5);
        let mut c = FileCursor::new(file.clone());
        let mut keys = Vec::new();
        for _ in 0..7 {
            keys.push(c.take().unwrap().keyframe);
        }
        assert_eq!(keys, [true, false, false, true, false, true, false]);
        // At frame 2 (a delta), a request skips to frame 3; at a keyframe it stays.
        c.skip_to_keyframe();
        assert!(c.at_keyframe());
        c.take(); // frame 3; frame 4 (the last) is next
        c.skip_to_keyframe(); // wraps to frame 0
        assert!(c.take().unwrap().keyframe);
    }

    #[test]
    fn refuses_streams_without_a_keyframe() {
        let p: &[u8] = &[0x41, 0x9a];
        assert!(H264File::parse(&annex_b(&[X264_SPS, PPS, p, p])).is_err());
        assert!(H264File::parse(b"not h264 at all").is_err());
        let idr: &[u8] = &[0x65, 0x88];
        assert!(
            H264File::parse(&annex_b(&[idr])).is_err(),
            "IDR without SPS/PPS"
        );
    }
}
