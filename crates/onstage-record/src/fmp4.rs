//! Fragmented MP4 (ISO BMFF) as HLS wants it: an init segment (`ftyp` + `moov`
//! with one track per media kind) and media segments (`moof` + `mdat`).
//!
//! Written box by box from the sample data; nothing is transcoded. Video is
//! H.264 (`avc1`, parameter sets also kept in band) or VP8 (`vp08`); audio is
//! Opus (`Opus` with `dOps`), both at their RTP clock rates (90 kHz, 48 kHz).

/// Track ids in the init segment.
pub const VIDEO_TRACK: u32 = 1;
pub const AUDIO_TRACK: u32 = 2;

pub const VIDEO_TIMESCALE: u32 = 90_000;
pub const AUDIO_TIMESCALE: u32 = 48_000;
/// Samples a player drops from the start of the decoded Opus (`dOps`
/// pre-skip): 312 at 48 kHz, libopus's encoder lookahead (6.5 ms), the value
/// an encoder's OpusHead states. WebRTC carries no OpusHead to read it from.
pub const OPUS_PRE_SKIP: u16 = 312;

/// What the init segment says of the video track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VideoConfig {
    H264 {
        sps: Vec<u8>,
        pps: Vec<u8>,
        width: u16,
        height: u16,
    },
    Vp8 {
        width: u16,
        height: u16,
    },
}

impl VideoConfig {
    pub fn size(&self) -> (u16, u16) {
        match self {
            VideoConfig::H264 { width, height, .. } | VideoConfig::Vp8 { width, height } => {
                (*width, *height)
            }
        }
    }

    /// The RFC 6381 codec string for the multivariant playlist.
    pub fn codec_string(&self) -> String {
        match self {
            VideoConfig::H264 { sps, .. } if sps.len() >= 4 => {
                format!("avc1.{:02x}{:02x}{:02x}", sps[1], sps[2], sps[3])
            }
            VideoConfig::H264 { .. } => "avc1.42e01f".into(),
            VideoConfig::Vp8 { .. } => "vp08.00.10.08".into(),
        }
    }
}

/// One sample of a track in a media segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub duration: u32,
    pub size: u32,
    pub sync: bool,
}

/// One track's part of a media segment.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub track_id: u32,
    pub base_decode_time: u64,
    pub samples: Vec<Sample>,
    pub data: Vec<u8>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Self {
        Writer(Vec::with_capacity(1024))
    }
    /// Opens a box; returns where its size goes.
    fn open(&mut self, kind: &[u8; 4]) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0, 0, 0]);
        self.0.extend_from_slice(kind);
        at
    }
    /// Opens a full box (version and flags).
    fn open_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) -> usize {
        let at = self.open(kind);
        self.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
        at
    }
    fn close(&mut self, at: usize) {
        let size = (self.0.len() - at) as u32;
        self.0[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
    fn matrix(&mut self) {
        for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
            self.u32(v);
        }
    }
}

/// The init segment for the tracks recorded: video when `video` is given, audio
/// (Opus, stereo, 48 kHz) when `audio` is true.
pub fn init_segment(video: Option<&VideoConfig>, audio: bool) -> Vec<u8> {
    let mut w = Writer::new();
    let ftyp = w.open(b"ftyp");
    w.bytes(b"iso6");
    w.u32(0);
    for brand in [b"iso6", b"cmfc", b"mp41", b"dash"] {
        w.bytes(brand);
    }
    w.close(ftyp);

    let moov = w.open(b"moov");
    let mvhd = w.open_full(b"mvhd", 0, 0);
    w.u32(0); // creation
    w.u32(0); // modification
    w.u32(1000); // timescale
    w.u32(0); // duration: fragmented
    w.u32(0x0001_0000); // rate
    w.u16(0x0100); // volume
    w.zeros(10);
    w.matrix();
    w.zeros(24);
    w.u32(AUDIO_TRACK + 1); // next track id
    w.close(mvhd);
    if let Some(video) = video {
        track(&mut w, VIDEO_TRACK, Some(video));
    }
    if audio {
        track(&mut w, AUDIO_TRACK, None);
    }
    let mvex = w.open(b"mvex");
    for (id, present) in [(VIDEO_TRACK, video.is_some()), (AUDIO_TRACK, audio)] {
        if present {
            let trex = w.open_full(b"trex", 0, 0);
            w.u32(id);
            w.u32(1); // sample description index
            w.u32(0);
            w.u32(0);
            w.u32(0);
            w.close(trex);
        }
    }
    w.close(mvex);
    w.close(moov);
    w.0
}

/// A `trak`: video when `video` is given, otherwise the Opus audio track.
fn track(w: &mut Writer, id: u32, video: Option<&VideoConfig>) {
    let trak = w.open(b"trak");
    let tkhd = w.open_full(b"tkhd", 0, 0x3); // enabled, in movie
    w.u32(0);
    w.u32(0);
    w.u32(id);
    w.u32(0);
    w.u32(0); // duration
    w.zeros(8);
    w.u16(0); // layer
    w.u16(if video.is_some() { 0 } else { 1 }); // alternate group
    w.u16(if video.is_some() { 0 } else { 0x0100 }); // volume
    w.u16(0);
    w.matrix();
    let (width, height) = video.map(VideoConfig::size).unwrap_or((0, 0));
    w.u32(u32::from(width) << 16);
    w.u32(u32::from(height) << 16);
    w.close(tkhd);

    let mdia = w.open(b"mdia");
    let mdhd = w.open_full(b"mdhd", 0, 0);
    w.u32(0);
    w.u32(0);
    w.u32(if video.is_some() {
        VIDEO_TIMESCALE
    } else {
        AUDIO_TIMESCALE
    });
    w.u32(0);
    w.u16(0x55c4); // language "und"
    w.u16(0);
    w.close(mdhd);
    let hdlr = w.open_full(b"hdlr", 0, 0);
    w.u32(0);
    w.bytes(if video.is_some() { b"vide" } else { b"soun" });
    w.zeros(12);
    w.bytes(if video.is_some() {
        b"VideoHandler\0"
    } else {
        b"SoundHandler\0"
    });
    w.close(hdlr);

    let minf = w.open(b"minf");
    if video.is_some() {
        let vmhd = w.open_full(b"vmhd", 0, 1);
        w.zeros(8);
        w.close(vmhd);
    } else {
        let smhd = w.open_full(b"smhd", 0, 0);
        w.zeros(4);
        w.close(smhd);
    }
    let dinf = w.open(b"dinf");
    let dref = w.open_full(b"dref", 0, 0);
    w.u32(1);
    let url = w.open_full(b"url ", 0, 1); // media in this file
    w.close(url);
    w.close(dref);
    w.close(dinf);

    let stbl = w.open(b"stbl");
    let stsd = w.open_full(b"stsd", 0, 0);
    w.u32(1);
    match video {
        Some(config) => video_sample_entry(w, config),
        None => opus_sample_entry(w),
    }
    w.close(stsd);
    for kind in [b"stts", b"stsc", b"stco"] {
        let b = w.open_full(kind, 0, 0);
        w.u32(0);
        w.close(b);
    }
    let stsz = w.open_full(b"stsz", 0, 0);
    w.u32(0);
    w.u32(0);
    w.close(stsz);
    w.close(stbl);
    w.close(minf);
    w.close(mdia);
    w.close(trak);
}

fn video_sample_entry(w: &mut Writer, config: &VideoConfig) {
    let (width, height) = config.size();
    let entry = w.open(match config {
        VideoConfig::H264 { .. } => b"avc1",
        VideoConfig::Vp8 { .. } => b"vp08",
    });
    w.zeros(6);
    w.u16(1); // data reference index
    w.zeros(16);
    w.u16(width);
    w.u16(height);
    w.u32(0x0048_0000); // 72 dpi
    w.u32(0x0048_0000);
    w.u32(0);
    w.u16(1); // frames per sample
    w.zeros(32); // compressor name
    w.u16(0x0018); // depth
    w.u16(0xffff); // pre-defined -1
    match config {
        VideoConfig::H264 { sps, pps, .. } => {
            let avcc = w.open(b"avcC");
            w.u8(1);
            w.u8(sps.get(1).copied().unwrap_or(0x42));
            w.u8(sps.get(2).copied().unwrap_or(0xe0));
            w.u8(sps.get(3).copied().unwrap_or(0x1f));
            w.u8(0xff); // 4-byte NAL lengths
            w.u8(0xe1); // one SPS
            w.u16(sps.len() as u16);
            w.bytes(sps);
            w.u8(1); // one PPS
            w.u16(pps.len() as u16);
            w.bytes(pps);
            w.close(avcc);
        }
        VideoConfig::Vp8 { .. } => {
            let vpcc = w.open_full(b"vpcC", 1, 0);
            w.u8(0); // profile
            w.u8(10); // level
            // bit depth 8, chroma 4:2:0 colocated (1), full range 0
            w.u8((8 << 4) | (1 << 1));
            w.u8(1); // colour primaries BT.709
            w.u8(1); // transfer characteristics
            w.u8(1); // matrix coefficients
            w.u16(0); // no codec initialization data
            w.close(vpcc);
        }
    }
    w.close(entry);
}

fn opus_sample_entry(w: &mut Writer) {
    let entry = w.open(b"Opus");
    w.zeros(6);
    w.u16(1);
    w.zeros(8);
    w.u16(2); // channels
    w.u16(16); // sample size
    w.zeros(4);
    w.u32(AUDIO_TIMESCALE << 16);
    let dops = w.open(b"dOps");
    w.u8(0); // version
    w.u8(2); // output channels
    w.u16(OPUS_PRE_SKIP);
    w.u32(AUDIO_TIMESCALE); // input sample rate
    w.u16(0); // output gain
    w.u8(0); // channel mapping family 0
    w.close(dops);
    w.close(entry);
}

/// A media segment: one `moof` with a `traf` per non-empty run, and one `mdat`
/// holding the runs' data in the same order.
pub fn media_segment(sequence: u32, runs: &[Run]) -> Vec<u8> {
    let mut w = Writer::new();
    let moof = w.open(b"moof");
    let mfhd = w.open_full(b"mfhd", 0, 0);
    w.u32(sequence);
    w.close(mfhd);
    // Where each trun's data_offset goes, patched once the moof's size is known.
    let mut offsets = Vec::with_capacity(runs.len());
    for run in runs.iter().filter(|r| !r.samples.is_empty()) {
        let traf = w.open(b"traf");
        let tfhd = w.open_full(b"tfhd", 0, 0x02_0000); // default-base-is-moof
        w.u32(run.track_id);
        w.close(tfhd);
        let tfdt = w.open_full(b"tfdt", 1, 0);
        w.u64(run.base_decode_time);
        w.close(tfdt);
        // data offset, sample duration, size, flags
        let trun = w.open_full(b"trun", 0, 0x0001 | 0x0100 | 0x0200 | 0x0400);
        w.u32(run.samples.len() as u32);
        offsets.push(w.0.len());
        w.u32(0);
        for s in &run.samples {
            w.u32(s.duration);
            w.u32(s.size);
            w.u32(if s.sync { 0x0200_0000 } else { 0x0101_0000 });
        }
        w.close(trun);
        w.close(traf);
    }
    w.close(moof);
    let moof_size = w.0.len();
    let data_len: usize = runs.iter().map(|r| r.data.len()).sum();
    w.u32((8 + data_len) as u32);
    w.bytes(b"mdat");
    let mut at = moof_size + 8;
    for (run, offset) in runs.iter().filter(|r| !r.samples.is_empty()).zip(offsets) {
        w.0[offset..offset + 4].copy_from_slice(&(at as u32).to_be_bytes());
        at += run.data.len();
        w.bytes(&run.data);
    }
    w.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a buffer's top-level boxes: (kind, size).
    fn boxes(b: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= b.len() {
            let size = u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
            out.push((
                String::from_utf8_lossy(&b[at + 4..at + 8]).into_owned(),
                size,
            ));
            assert!(size >= 8, "box too small");
            at += size;
        }
        assert_eq!(at, b.len(), "boxes fill the buffer exactly");
        out
    }

    #[test]
    fn init_segment_is_ftyp_then_moov() {
        let video = VideoConfig::H264 {
            sps: vec![0x67, 0x42, 0xe0, 0x1f, 1, 2],
            pps: vec![0x68, 3],
            width: 640,
            height: 480,
        };
        let init = init_segment(Some(&video), true);
        let kinds: Vec<_> = boxes(&init).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, ["ftyp", "moov"]);
        assert!(init.windows(4).any(|w| w == b"avcC"));
        let dops = init
            .windows(4)
            .position(|w| w == b"dOps")
            .expect("an Opus sample entry");
        // version, output channels, then the pre-skip (RFC 7845 §5.1, ISO Opus-in-MP4 §4.3.2).
        let fields = &init[dops + 4..dops + 12];
        assert_eq!(fields[..2], [0, 2]);
        assert_eq!(u16::from_be_bytes([fields[2], fields[3]]), OPUS_PRE_SKIP);
        assert_eq!(
            u32::from_be_bytes([fields[4], fields[5], fields[6], fields[7]]),
            48_000
        );
        assert_eq!(video.codec_string(), "avc1.42e01f");
    }

    #[test]
    fn trun_offsets_point_into_mdat() {
        let runs = [
            Run {
                track_id: VIDEO_TRACK,
                base_decode_time: 9000,
                samples: vec![Sample {
                    duration: 3000,
                    size: 3,
                    sync: true,
                }],
                data: vec![7, 7, 7],
            },
            Run {
                track_id: AUDIO_TRACK,
                base_decode_time: 4800,
                samples: vec![Sample {
                    duration: 960,
                    size: 2,
                    sync: true,
                }],
                data: vec![9, 9],
            },
        ];
        let seg = media_segment(1, &runs);
        let top = boxes(&seg);
        assert_eq!(top[0].0, "moof");
        assert_eq!(top[1], ("mdat".to_string(), 8 + 5));
        let moof_size = top[0].1;
        // The first trun's data offset is just past the mdat header.
        let trun = seg.windows(4).position(|w| w == b"trun").unwrap_or(0);
        let offset = u32::from_be_bytes([
            seg[trun + 12],
            seg[trun + 13],
            seg[trun + 14],
            seg[trun + 15],
        ]) as usize;
        assert_eq!(offset, moof_size + 8);
        assert_eq!(&seg[offset..offset + 3], &[7, 7, 7]);
        assert_eq!(&seg[offset + 3..offset + 5], &[9, 9]);
    }
}
