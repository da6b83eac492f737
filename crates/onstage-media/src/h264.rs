//! The picture size of an H.264 sequence parameter set (ITU-T H.264 §7.3.2.1.1),
//! and the slice type of a slice header (§7.3.3), read with Exp-Golomb codes after
//! removing emulation-prevention bytes. One reader for every part of onstage that
//! looks into H.264: the ingest bridge (limits, B-frames) and the recorder (the
//! init segment's size).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PictureSize {
    pub width: u32,
    pub height: u32,
}

/// Reads bits MSB first over a NAL unit's payload, skipping the `00 00 03` escapes.
struct Bits<'a> {
    data: &'a [u8],
    byte: usize,
    bit: u8,
    zeros: u8,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            byte: 0,
            bit: 0,
            zeros: 0,
        }
    }

    fn bit(&mut self) -> Option<u32> {
        if self.bit == 0 {
            // Entering a new byte: an 0x03 after two zero bytes is not data.
            let b = *self.data.get(self.byte)?;
            if self.zeros >= 2 && b == 3 {
                self.byte += 1;
                self.zeros = 0;
            }
            let b = *self.data.get(self.byte)?;
            self.zeros = if b == 0 { self.zeros + 1 } else { 0 };
        }
        let b = *self.data.get(self.byte)?;
        let v = (b >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.byte += 1;
        }
        Some(u32::from(v))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |v, _| Some(v << 1 | self.bit()?))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?)) as u32)
    }

    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// The cropped picture size of an SPS NAL unit (header byte included); `None`
/// when it is malformed.
pub fn picture_size(sps: &[u8]) -> Option<PictureSize> {
    let mut r = Bits::new(sps.get(1..)?);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut crop_x, mut crop_y) = (0, 0);
    if r.bit()? == 1 {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (unit_x, unit_y) = match chroma_format {
            0 | 3 => (1, 2 - frame_mbs_only),
            2 => (2, 2 - frame_mbs_only),
            _ => (2, 2 * (2 - frame_mbs_only)),
        };
        crop_x = unit_x * (left.checked_add(right)?);
        crop_y = unit_y * (top.checked_add(bottom)?);
    }
    let width = width_mbs.checked_mul(16)?.checked_sub(crop_x)?;
    let height = (2 - frame_mbs_only)
        .checked_mul(height_units)?
        .checked_mul(16)?
        .checked_sub(crop_y)?;
    Some(PictureSize { width, height })
}

/// Whether a coded slice NAL unit (type 1 or 5) is a B slice.
pub fn is_b_slice(nal: &[u8]) -> bool {
    let Some(payload) = nal.get(1..) else {
        return false;
    };
    let mut r = Bits::new(payload);
    let slice_type = r.ue().and_then(|_first_mb| r.ue());
    matches!(slice_type, Some(1 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter sets as Debian's ffmpeg/x264 writes them (`-f h264`, testsrc).
    #[test]
    fn reads_the_picture_size_of_real_parameter_sets() {
        let cases: [(&[u8], u32, u32); 3] = [
            (
                // Constrained Baseline 1280x720.
                &[
                    0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00,
                    0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
                ],
                1280,
                720,
            ),
            (
                // High 1920x1080: 1088 coded, cropped by 8.
                &[
                    0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44,
                    0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc6,
                    0x58,
                ],
                1920,
                1080,
            ),
            (
                // Main 640x360: 368 coded, cropped by 8.
                &[
                    0x67, 0x4d, 0x40, 0x1e, 0xec, 0xa0, 0x50, 0x17, 0xfc, 0xb8, 0x08, 0x80, 0x00,
                    0x00, 0x03, 0x00, 0x80, 0x00, 0x00, 0x1e, 0x07, 0x8b, 0x16, 0xcb,
                ],
                640,
                360,
            ),
        ];
        for (sps, width, height) in cases {
            assert_eq!(picture_size(sps), Some(PictureSize { width, height }));
        }
    }

    #[test]
    fn malformed_parameter_sets_have_no_size() {
        assert_eq!(picture_size(&[]), None);
        assert_eq!(picture_size(&[0x67, 0x42]), None);
        assert_eq!(picture_size(&[0x67, 0x42, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn finds_b_slices() {
        // first_mb_in_slice 0 ("1"), slice_type 1 ("010"): 1010 0000.
        assert!(is_b_slice(&[0x01, 0b1010_0000]));
        // slice_type 0 (P, "1"): 11.
        assert!(!is_b_slice(&[0x41, 0b1100_0000]));
        // slice_type 6 (B, "00111"): 1 00111 00.
        assert!(is_b_slice(&[0x01, 0b1001_1100]));
        assert!(!is_b_slice(&[0x01]));
    }
}
