//! A participant's frames as an fMP4 HLS rendition, sans IO: frames in, objects
//! (init segment, media segments, playlists) out, paths relative to
//! `media/hls/`.
//!
//! Timestamps: each track's decode time follows its RTP timestamps while one
//! incoming stream (a *feed*: one publisher's SSRC) lasts; when another feed
//! starts (the publisher replaced, or back within the reconnect window) the
//! track carries on just after its last sample, so the recording's timeline has
//! no jumps and no overlaps. Video starts at a keyframe and audio with it; a
//! segment is cut at the first keyframe after the target duration.

use crate::depacketize::{VideoCodec, VideoFrame, sps_size};
use crate::fmp4::{
    self, AUDIO_TIMESCALE, AUDIO_TRACK, Run, Sample, VIDEO_TIMESCALE, VIDEO_TRACK, VideoConfig,
};

/// An object to store under the recording's `media/hls/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// The rendition's one name (IVS records a single rendition, `high`).
pub const RENDITION: &str = "high";

/// Maps one track's RTP timestamps to a continuous decode timeline.
#[derive(Debug, Default)]
struct TrackClock {
    feed: Option<u64>,
    last_rtp: u32,
    last_dts: u64,
    last_duration: u64,
    started: bool,
}

impl TrackClock {
    /// The decode time of a sample; None for one older than the last.
    fn dts(&mut self, feed: u64, rtp: u32) -> Option<u64> {
        let dts = if !self.started {
            self.started = true;
            0
        } else if self.feed != Some(feed) {
            self.last_dts + self.last_duration.max(1)
        } else {
            let delta = rtp.wrapping_sub(self.last_rtp) as i32;
            if delta <= 0 {
                return None;
            }
            self.last_dts + delta as u64
        };
        if self.started && self.feed == Some(feed) && dts > self.last_dts {
            self.last_duration = dts - self.last_dts;
        }
        self.feed = Some(feed);
        self.last_rtp = rtp;
        self.last_dts = dts;
        Some(dts)
    }
}

struct Pending {
    dts: u64,
    data: Vec<u8>,
    sync: bool,
}

#[derive(Default)]
struct Accumulated {
    base: Option<u64>,
    samples: Vec<Sample>,
    data: Vec<u8>,
    duration: u64,
}

impl Accumulated {
    fn push(&mut self, dts: u64, duration: u32, data: &[u8], sync: bool) {
        self.base.get_or_insert(dts);
        self.samples.push(Sample {
            duration,
            size: data.len() as u32,
            sync,
        });
        self.data.extend_from_slice(data);
        self.duration += u64::from(duration);
    }
    fn take(&mut self, track_id: u32) -> Run {
        let run = Run {
            track_id,
            base_decode_time: self.base.unwrap_or(0),
            samples: std::mem::take(&mut self.samples),
            data: std::mem::take(&mut self.data),
        };
        self.base = None;
        self.duration = 0;
        run
    }
}

struct Segment {
    uri: String,
    seconds: f64,
    /// A new init segment applies from this one on.
    map: Option<String>,
}

/// Which tracks a recording keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracks {
    pub video: bool,
    pub audio: bool,
}

/// One rendition being written.
pub struct HlsWriter {
    tracks: Tracks,
    target_seconds: u32,
    video_config: Option<VideoConfig>,
    inits: u32,
    video_clock: TrackClock,
    audio_clock: TrackClock,
    pending_video: Option<Pending>,
    pending_audio: Option<Pending>,
    video: Accumulated,
    audio: Accumulated,
    /// Video waits for a keyframe (start, loss, a new feed).
    wants_keyframe: bool,
    /// The init segment to announce with the next segment.
    new_map: Option<String>,
    segments: Vec<Segment>,
    /// Total recorded time, in seconds.
    recorded: f64,
    announced: bool,
}

impl HlsWriter {
    pub fn new(tracks: Tracks, target_seconds: u32) -> Self {
        HlsWriter {
            tracks,
            target_seconds: target_seconds.max(1),
            video_config: None,
            inits: 0,
            video_clock: TrackClock::default(),
            audio_clock: TrackClock::default(),
            pending_video: None,
            pending_audio: None,
            video: Accumulated::default(),
            audio: Accumulated::default(),
            wants_keyframe: true,
            new_map: None,
            segments: Vec::new(),
            recorded: 0.0,
            announced: false,
        }
    }

    /// Whether video waits for a keyframe — to start, after a loss, or to end a
    /// segment that reached its target (the caller asks the publisher for one;
    /// publishers whose keyframes are far apart would make long segments).
    pub fn wants_keyframe(&self) -> bool {
        self.tracks.video
            && (self.wants_keyframe
                || self.video.duration
                    >= u64::from(self.target_seconds) * u64::from(VIDEO_TIMESCALE))
    }

    /// A frame was lost: video waits for the next keyframe.
    pub fn video_lost(&mut self) {
        self.wants_keyframe = true;
    }

    /// Seconds recorded in finished segments.
    pub fn recorded_seconds(&self) -> f64 {
        self.recorded
    }

    /// Whether media has started (an init segment was written).
    pub fn started(&self) -> bool {
        self.inits > 0
    }

    pub fn video_size(&self) -> Option<(u16, u16)> {
        self.video_config.as_ref().map(VideoConfig::size)
    }

    /// A whole video frame of incoming stream `feed`.
    pub fn video(
        &mut self,
        feed: u64,
        codec: VideoCodec,
        frame: VideoFrame,
        out: &mut Vec<Object>,
    ) {
        if !self.tracks.video {
            return;
        }
        if self.video_clock.feed.is_some_and(|f| f != feed) && !frame.keyframe {
            // Another publisher: its frames decode only from its first keyframe.
            self.wants_keyframe = true;
        }
        if self.wants_keyframe && !frame.keyframe {
            return;
        }
        if frame.keyframe {
            self.wants_keyframe = false;
            let config = match (codec, &frame.sps, &frame.pps) {
                (VideoCodec::H264, Some(sps), Some(pps)) => {
                    sps_size(sps).map(|(width, height)| VideoConfig::H264 {
                        sps: sps.clone(),
                        pps: pps.clone(),
                        width,
                        height,
                    })
                }
                (VideoCodec::Vp8, _, _) => frame
                    .vp8_size
                    .map(|(width, height)| VideoConfig::Vp8 { width, height }),
                _ => None,
            };
            if let Some(config) = config
                && self.video_config.as_ref() != Some(&config)
            {
                // New parameters: a segment ends here and a new init segment starts.
                if let Some(dts) = self.peek_dts(feed, frame.rtp_time) {
                    self.close_pending_video(dts);
                }
                self.cut(out);
                self.video_config = Some(config);
                self.write_init(out);
            }
        }
        if self.video_config.is_none() {
            // A keyframe without parameter sets: nothing can be decoded yet.
            self.wants_keyframe = true;
            return;
        }
        let Some(dts) = self.video_clock.dts(feed, frame.rtp_time) else {
            return;
        };
        self.close_pending_video(dts);
        if frame.keyframe
            && self.video.duration >= u64::from(self.target_seconds) * u64::from(VIDEO_TIMESCALE)
        {
            self.cut(out);
        }
        self.pending_video = Some(Pending {
            dts,
            data: frame.data,
            sync: frame.keyframe,
        });
    }

    fn peek_dts(&self, feed: u64, rtp: u32) -> Option<u64> {
        let c = &self.video_clock;
        if !c.started {
            return None;
        }
        if c.feed != Some(feed) {
            return Some(c.last_dts + c.last_duration.max(1));
        }
        let delta = rtp.wrapping_sub(c.last_rtp) as i32;
        (delta > 0).then(|| c.last_dts + delta as u64)
    }

    fn close_pending_video(&mut self, next_dts: u64) {
        if let Some(p) = self.pending_video.take() {
            let duration = next_dts.saturating_sub(p.dts).clamp(1, u64::from(u32::MAX)) as u32;
            self.video.push(p.dts, duration, &p.data, p.sync);
        }
    }

    /// An Opus packet of incoming stream `feed`.
    pub fn audio(&mut self, feed: u64, rtp_time: u32, packet: &[u8], out: &mut Vec<Object>) {
        if !self.tracks.audio || packet.is_empty() {
            return;
        }
        if self.tracks.video && self.video_config.is_none() {
            // Audio starts with video.
            return;
        }
        if !self.tracks.video && self.inits == 0 {
            self.write_init(out);
        }
        let Some(dts) = self.audio_clock.dts(feed, rtp_time) else {
            return;
        };
        if let Some(p) = self.pending_audio.take() {
            let duration = dts.saturating_sub(p.dts).clamp(1, u64::from(u32::MAX)) as u32;
            self.audio.push(p.dts, duration, &p.data, true);
        }
        if !self.tracks.video
            && self.audio.duration >= u64::from(self.target_seconds) * u64::from(AUDIO_TIMESCALE)
        {
            self.cut(out);
        }
        self.pending_audio = Some(Pending {
            dts,
            data: packet.to_vec(),
            sync: true,
        });
    }

    /// Ends the rendition: the last samples, the last segment and the playlist
    /// with its end.
    pub fn finish(&mut self, out: &mut Vec<Object>) {
        if let Some(p) = self.pending_video.take() {
            let d = self.video_clock.last_duration.clamp(1, 9000) as u32;
            self.video.push(p.dts, d, &p.data, p.sync);
        }
        if let Some(p) = self.pending_audio.take() {
            let d = crate::depacketize::opus_duration(&p.data).unwrap_or(960);
            self.audio.push(p.dts, d, &p.data, true);
        }
        self.cut(out);
        if self.inits > 0 {
            out.push(self.playlist(true));
        }
    }

    fn write_init(&mut self, out: &mut Vec<Object>) {
        let name = if self.inits == 0 {
            "init.mp4".to_string()
        } else {
            format!("init-{}.mp4", self.inits)
        };
        self.inits += 1;
        let video = if self.tracks.video {
            self.video_config.as_ref()
        } else {
            None
        };
        out.push(Object {
            path: format!("{RENDITION}/{name}"),
            bytes: fmp4::init_segment(video, self.tracks.audio),
        });
        self.new_map = Some(name);
        if !self.announced {
            self.announced = true;
            out.push(self.multivariant());
        }
    }

    /// Writes what has accumulated as the next segment, and the playlist.
    fn cut(&mut self, out: &mut Vec<Object>) {
        if self.video.samples.is_empty() && self.audio.samples.is_empty() {
            return;
        }
        let seconds = if self.tracks.video && !self.video.samples.is_empty() {
            self.video.duration as f64 / f64::from(VIDEO_TIMESCALE)
        } else {
            self.audio.duration as f64 / f64::from(AUDIO_TIMESCALE)
        };
        let number = self.segments.len() as u32 + 1;
        let runs = [self.video.take(VIDEO_TRACK), self.audio.take(AUDIO_TRACK)];
        let uri = format!("{number}.m4s");
        out.push(Object {
            path: format!("{RENDITION}/{uri}"),
            bytes: fmp4::media_segment(number, &runs),
        });
        self.segments.push(Segment {
            uri,
            seconds,
            map: self.new_map.take(),
        });
        self.recorded += seconds;
        out.push(self.playlist(false));
    }

    fn playlist(&self, ended: bool) -> Object {
        let target = self
            .segments
            .iter()
            .map(|s| s.seconds.ceil() as u64)
            .max()
            .unwrap_or(u64::from(self.target_seconds))
            .max(u64::from(self.target_seconds));
        let mut p = format!(
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-INDEPENDENT-SEGMENTS\n"
        );
        for (i, s) in self.segments.iter().enumerate() {
            if let Some(map) = &s.map {
                if i > 0 {
                    p.push_str("#EXT-X-DISCONTINUITY\n");
                }
                p.push_str(&format!("#EXT-X-MAP:URI=\"{map}\"\n"));
            }
            p.push_str(&format!("#EXTINF:{:.3},\n{}\n", s.seconds, s.uri));
        }
        if ended {
            p.push_str("#EXT-X-ENDLIST\n");
        }
        Object {
            path: format!("{RENDITION}/playlist.m3u8"),
            bytes: p.into_bytes(),
        }
    }

    fn multivariant(&self) -> Object {
        let mut codecs = Vec::new();
        let mut resolution = String::new();
        if let (true, Some(v)) = (self.tracks.video, &self.video_config) {
            codecs.push(v.codec_string());
            let (w, h) = v.size();
            resolution = format!(",RESOLUTION={w}x{h}");
        }
        if self.tracks.audio {
            codecs.push("opus".into());
        }
        let bandwidth = if self.tracks.video {
            2_500_000
        } else {
            128_000
        };
        let p = format!(
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{}\"{resolution}\n{RENDITION}/playlist.m3u8\n",
            codecs.join(",")
        );
        Object {
            path: "multivariant.m3u8".into(),
            bytes: p.into_bytes(),
        }
    }
}

/// The total of a media playlist's `#EXTINF` durations, in seconds.
pub fn playlist_seconds(playlist: &str) -> f64 {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| l.split(',').next()?.trim().parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: [u8; 25] = [
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];

    fn frame(rtp_time: u32, keyframe: bool) -> VideoFrame {
        VideoFrame {
            rtp_time,
            data: vec![0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }],
            keyframe,
            sps: keyframe.then(|| SPS.to_vec()),
            pps: keyframe.then(|| vec![0x68, 0xce]),
            vp8_size: None,
        }
    }

    fn names(out: &[Object]) -> Vec<&str> {
        out.iter().map(|o| o.path.as_str()).collect()
    }

    #[test]
    fn segments_start_on_keyframes_after_the_target() {
        let mut w = HlsWriter::new(
            Tracks {
                video: true,
                audio: true,
            },
            2,
        );
        let mut out = Vec::new();
        // Audio before the first keyframe is not kept; a delta frame before it neither.
        w.audio(1, 100, &[0xfc, 1], &mut out);
        w.video(2, VideoCodec::H264, frame(0, false), &mut out);
        assert!(out.is_empty());
        // 30 fps for 5 s, a keyframe every second.
        for i in 0..150u32 {
            w.video(2, VideoCodec::H264, frame(i * 3000, i % 30 == 0), &mut out);
        }
        w.finish(&mut out);
        let n = names(&out);
        assert_eq!(n[0], "high/init.mp4");
        assert_eq!(n[1], "multivariant.m3u8");
        assert!(
            n.contains(&"high/1.m4s") && n.contains(&"high/2.m4s") && n.contains(&"high/3.m4s")
        );
        let playlist = String::from_utf8_lossy(&out.last().expect("playlist").bytes).into_owned();
        assert!(playlist.contains("#EXTINF:2.000,\n1.m4s"), "{playlist}");
        assert!(playlist.contains("#EXTINF:1.000,\n3.m4s"), "{playlist}");
        assert!(playlist.ends_with("#EXT-X-ENDLIST\n"));
        assert!((w.recorded_seconds() - 5.0).abs() < 1e-9);
        assert!((playlist_seconds(&playlist) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_new_feed_continues_the_timeline() {
        let mut w = HlsWriter::new(
            Tracks {
                video: true,
                audio: false,
            },
            6,
        );
        let mut out = Vec::new();
        for i in 0..30u32 {
            w.video(
                1,
                VideoCodec::H264,
                frame(1000 + i * 3000, i == 0),
                &mut out,
            );
        }
        // Another publisher with unrelated timestamps: no frame until its keyframe.
        w.video(9, VideoCodec::H264, frame(77, false), &mut out);
        for i in 0..30u32 {
            w.video(
                9,
                VideoCodec::H264,
                frame(5_000_000 + i * 3000, i == 0),
                &mut out,
            );
        }
        w.finish(&mut out);
        assert!(
            (w.recorded_seconds() - 2.0).abs() < 1e-9,
            "{}",
            w.recorded_seconds()
        );
    }

    #[test]
    fn after_a_loss_the_recording_resumes_at_the_next_keyframe_without_a_hole() {
        let mut w = HlsWriter::new(
            Tracks {
                video: true,
                audio: false,
            },
            2,
        );
        let mut out = Vec::new();
        // 30 fps for 3 s, a keyframe every second; a frame is lost after the 40th,
        // so the deltas up to the next keyframe cannot be decoded and are not kept.
        for i in 0..90u32 {
            if i == 41 {
                w.video_lost();
            }
            w.video(1, VideoCodec::H264, frame(i * 3000, i % 30 == 0), &mut out);
        }
        w.finish(&mut out);
        let playlist = String::from_utf8_lossy(&out.last().expect("playlist").bytes).into_owned();
        // The frame before the loss lasts until the keyframe after it: the timeline
        // has no hole, and the segments still start on keyframes.
        assert!(
            (playlist_seconds(&playlist) - 3.0).abs() < 1e-9,
            "{playlist}"
        );
        assert!(playlist.contains("#EXTINF:2.000,\n1.m4s"), "{playlist}");
        assert!(playlist.contains("#EXTINF:1.000,\n2.m4s"), "{playlist}");
        // The first segment holds frames 0 to 40 only.
        let first = out
            .iter()
            .find(|o| o.path == "high/1.m4s")
            .expect("the first segment");
        let trun = first
            .bytes
            .windows(4)
            .position(|b| b == b"trun")
            .expect("a trun box");
        let samples = u32::from_be_bytes(
            first.bytes[trun + 8..trun + 12]
                .try_into()
                .expect("four bytes"),
        );
        assert_eq!(samples, 41);
    }
}
