//! The FLV tags inside RTMP audio and video messages (the FLV specification's
//! VIDEODATA/AVCVIDEOPACKET and AUDIODATA/AACAUDIODATA), for H.264 and AAC only.

/// A video message, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VideoTag<'a> {
    /// AVCDecoderConfigurationRecord: the parameter sets and the NAL length size.
    Config {
        length_size: usize,
        sps: Vec<&'a [u8]>,
        pps: Vec<&'a [u8]>,
    },
    /// One access unit: its NAL units (length-prefixed, `length_size` bytes, as the
    /// last configuration said), whether FLV marks it a keyframe, and the
    /// composition time offset in milliseconds (non-zero only with B-frames).
    Frame {
        keyframe: bool,
        composition_offset_ms: i32,
        data: &'a [u8],
    },
    /// End of sequence, or an AVC packet type onstage ignores.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("video codec {0} is not H.264 (AVC, FLV codec id 7)")]
    NotH264(u8),
    #[error("audio format {0} is not AAC (FLV sound format 10)")]
    NotAac(u8),
    #[error("the tag ends early")]
    Truncated,
    #[error("a NAL unit length runs past the tag")]
    BadNalLength,
}

pub fn video_tag(data: &[u8]) -> Result<VideoTag<'_>, FlvError> {
    let [head, packet_type, c0, c1, c2, rest @ ..] = data else {
        return Err(FlvError::Truncated);
    };
    let codec = head & 0x0f;
    if codec != 7 {
        return Err(FlvError::NotH264(codec));
    }
    let keyframe = head >> 4 == 1;
    // SI24, big-endian.
    let cts = (i32::from(*c0) << 16 | i32::from(*c1) << 8 | i32::from(*c2)) << 8 >> 8;
    match packet_type {
        0 => config(rest),
        1 => Ok(VideoTag::Frame {
            keyframe,
            composition_offset_ms: cts,
            data: rest,
        }),
        _ => Ok(VideoTag::Other),
    }
}

fn config(rec: &[u8]) -> Result<VideoTag<'_>, FlvError> {
    let (&size, rest) = rec
        .get(4..)
        .and_then(<[u8]>::split_first)
        .ok_or(FlvError::Truncated)?;
    let length_size = usize::from(size & 0x03) + 1;
    let mut cursor = Cursor(rest);
    let nsps = cursor.byte()? & 0x1f;
    let sps = (0..nsps)
        .map(|_| cursor.set())
        .collect::<Result<Vec<_>, _>>()?;
    // Some encoders stop after the SPS; the PPS may then come in band.
    let npps = if cursor.0.is_empty() {
        0
    } else {
        cursor.byte()?
    };
    let pps = (0..npps)
        .map(|_| cursor.set())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VideoTag::Config {
        length_size,
        sps,
        pps,
    })
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, FlvError> {
        let (&b, rest) = self.0.split_first().ok_or(FlvError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    /// A parameter set: a 16-bit length and that many bytes.
    fn set(&mut self) -> Result<&'a [u8], FlvError> {
        let len = usize::from(self.byte()?) << 8 | usize::from(self.byte()?);
        if self.0.len() < len {
            return Err(FlvError::Truncated);
        }
        let (set, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(set)
    }
}

/// The NAL units of a frame's data, each without its length prefix.
pub fn nal_units(data: &[u8], length_size: usize) -> NalUnits<'_> {
    NalUnits {
        rest: data,
        length_size,
    }
}

pub struct NalUnits<'a> {
    rest: &'a [u8],
    length_size: usize,
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = Result<&'a [u8], FlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < self.length_size {
            self.rest = &[];
            return Some(Err(FlvError::BadNalLength));
        }
        let (len, tail) = self.rest.split_at(self.length_size);
        let len = len.iter().fold(0usize, |n, b| n << 8 | usize::from(*b));
        if tail.len() < len {
            self.rest = &[];
            return Some(Err(FlvError::BadNalLength));
        }
        let (nal, rest) = tail.split_at(len);
        self.rest = rest;
        Some(Ok(nal))
    }
}

/// An audio message, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudioTag<'a> {
    /// AudioSpecificConfig.
    Config(&'a [u8]),
    /// One raw AAC frame.
    Frame(&'a [u8]),
}

pub fn audio_tag(data: &[u8]) -> Result<AudioTag<'_>, FlvError> {
    let [head, packet_type, rest @ ..] = data else {
        return Err(FlvError::Truncated);
    };
    let format = head >> 4;
    if format != 10 {
        return Err(FlvError::NotAac(format));
    }
    Ok(match packet_type {
        0 => AudioTag::Config(rest),
        _ => AudioTag::Frame(rest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_decoder_configuration() {
        let rec = [
            0x17, 0, 0, 0, 0, // keyframe, AVC, sequence header, cts 0
            1, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0, 3, 0x67, 0xaa, 0xbb, 1, 0, 2, 0x68, 0xcc,
        ];
        assert_eq!(
            video_tag(&rec),
            Ok(VideoTag::Config {
                length_size: 4,
                sps: vec![&[0x67, 0xaa, 0xbb][..]],
                pps: vec![&[0x68, 0xcc][..]],
            })
        );
    }

    #[test]
    fn reads_a_frame_and_its_negative_composition_offset() {
        let tag = [0x27, 1, 0xff, 0xff, 0xd8, 0, 0, 0, 2, 0x41, 0x9a];
        let VideoTag::Frame {
            keyframe,
            composition_offset_ms,
            data,
        } = video_tag(&tag).unwrap()
        else {
            panic!("a frame");
        };
        assert!(!keyframe);
        assert_eq!(composition_offset_ms, -40);
        let nals: Vec<_> = nal_units(data, 4).collect();
        assert_eq!(nals, vec![Ok(&[0x41, 0x9a][..])]);
    }

    #[test]
    fn refuses_other_codecs_and_bad_lengths() {
        assert_eq!(video_tag(&[0x12, 1, 0, 0, 0]), Err(FlvError::NotH264(2)));
        assert_eq!(video_tag(&[0x17]), Err(FlvError::Truncated));
        let nals: Vec<_> = nal_units(&[0, 0, 0, 9, 1], 4).collect();
        assert_eq!(nals, vec![Err(FlvError::BadNalLength)]);
        assert_eq!(audio_tag(&[0x2f, 1]), Err(FlvError::NotAac(2)));
        assert_eq!(
            audio_tag(&[0xaf, 0, 0x11, 0x90]),
            Ok(AudioTag::Config(&[0x11, 0x90]))
        );
    }
}
