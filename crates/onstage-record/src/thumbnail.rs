//! Thumbnails: which keyframes become thumbnails (sans IO) and a keyframe turned
//! into a JPEG of the video's size by Debian's GStreamer plugins.
//!
//! The schedule takes the first keyframe at or after each interval mark (marks
//! every `targetIntervalSeconds` from the recording's start, on the recorder's
//! clock). Decoding and encoding run on a blocking thread, one thumbnail at a
//! time per recording, never on a forwarding thread nor in the recorder's task.

use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use onstage_stage::model::{ThumbnailRecordingMode, ThumbnailSettings, ThumbnailStorage};

use crate::depacketize::{VideoCodec, VideoFrame};

/// Where the numbered thumbnails go, under the recording's prefix.
pub const SEQUENTIAL_DIR: &str = "media/thumbnails";
/// Where the latest thumbnail goes, under the recording's prefix.
pub const LATEST_DIR: &str = "media/latest_thumbnail";
/// The latest thumbnail's file name.
pub const LATEST_NAME: &str = "thumb.jpg";

/// How long one thumbnail may take before it is given up.
const ENCODE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("the decoder gave no picture for the keyframe")]
    NoPicture,
}

impl From<gst::glib::Error> for ThumbnailError {
    fn from(e: gst::glib::Error) -> Self {
        ThumbnailError::Gst(e.to_string())
    }
}

impl From<gst::glib::BoolError> for ThumbnailError {
    fn from(e: gst::glib::BoolError) -> Self {
        ThumbnailError::Gst(e.to_string())
    }
}

impl From<gst::StateChangeError> for ThumbnailError {
    fn from(e: gst::StateChangeError) -> Self {
        ThumbnailError::Gst(e.to_string())
    }
}

impl From<gst::FlowError> for ThumbnailError {
    fn from(e: gst::FlowError) -> Self {
        ThumbnailError::Gst(e.to_string())
    }
}

/// What a recording's thumbnail settings ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub interval: Duration,
    pub sequential: bool,
    pub latest: bool,
}

impl Plan {
    /// None when thumbnails are off (`DISABLED`, or no storage named).
    pub fn from_settings(s: &ThumbnailSettings) -> Option<Plan> {
        let plan = Plan {
            interval: Duration::from_secs(s.target_interval_seconds.clamp(1, 86_400) as u64),
            sequential: s.storage.contains(&ThumbnailStorage::Sequential),
            latest: s.storage.contains(&ThumbnailStorage::Latest),
        };
        (s.recording_mode == ThumbnailRecordingMode::Interval && (plan.sequential || plan.latest))
            .then_some(plan)
    }
}

/// When the next thumbnail is due and what it is numbered.
#[derive(Debug)]
pub struct Schedule {
    interval: Duration,
    next_mark: Duration,
    next_number: u64,
}

impl Schedule {
    pub fn new(interval: Duration) -> Self {
        Schedule {
            interval: interval.max(Duration::from_secs(1)),
            next_mark: Duration::ZERO,
            next_number: 0,
        }
    }

    /// Whether a keyframe arriving at `elapsed` (since the recording started)
    /// should become a thumbnail.
    pub fn due(&self, elapsed: Duration) -> bool {
        elapsed >= self.next_mark
    }

    /// A keyframe at `elapsed` was taken: its number, and the next mark is the
    /// first one after `elapsed` (marks missed while no keyframe came are
    /// skipped, not made up).
    pub fn take(&mut self, elapsed: Duration) -> u64 {
        let n = self.next_number;
        self.next_number += 1;
        let interval = self.interval.as_millis().max(1);
        let marks = elapsed.as_millis() / interval + 1;
        self.next_mark = Duration::from_millis((marks * interval) as u64);
        n
    }

    /// How many thumbnails were taken.
    pub fn taken(&self) -> u64 {
        self.next_number
    }
}

/// One keyframe, whole, for the decoder.
#[derive(Clone, Debug)]
pub struct Keyframe {
    pub codec: VideoCodec,
    /// H.264: Annex B with its parameter sets; VP8: the frame.
    pub data: Vec<u8>,
}

impl Keyframe {
    /// The decoder's input for `frame` (a keyframe); `sps`/`pps` are the
    /// stream's last parameter sets, used if the frame has none in band.
    pub fn from_frame(
        codec: VideoCodec,
        frame: &VideoFrame,
        sps: Option<&[u8]>,
        pps: Option<&[u8]>,
    ) -> Keyframe {
        let data = match codec {
            VideoCodec::Vp8 => frame.data.clone(),
            VideoCodec::H264 => {
                let nals = length_prefixed(&frame.data);
                let has_sps = nals
                    .iter()
                    .any(|n| n.first().is_some_and(|b| b & 0x1f == 7));
                let mut out = Vec::with_capacity(frame.data.len() + 64);
                if !has_sps {
                    for ps in [sps, pps].into_iter().flatten() {
                        out.extend_from_slice(&[0, 0, 0, 1]);
                        out.extend_from_slice(ps);
                    }
                }
                for n in nals {
                    out.extend_from_slice(&[0, 0, 0, 1]);
                    out.extend_from_slice(n);
                }
                out
            }
        };
        Keyframe { codec, data }
    }
}

fn length_prefixed(mut data: &[u8]) -> Vec<&[u8]> {
    let mut nals = Vec::new();
    while data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let Some(nal) = data.get(4..4 + len) else {
            break;
        };
        nals.push(nal);
        data = &data[4 + len..];
    }
    nals
}

/// An encoded thumbnail.
#[derive(Clone, Debug)]
pub struct Jpeg {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Decodes `keyframe` and encodes it as a JPEG of the picture's size. Blocks
/// (tens of milliseconds): call it on a blocking thread.
pub fn encode(keyframe: &Keyframe) -> Result<Jpeg, ThumbnailError> {
    gst::init()?;
    let (caps, decode) = match keyframe.codec {
        VideoCodec::H264 => (
            "video/x-h264,stream-format=byte-stream,alignment=au",
            "h264parse ! avdec_h264",
        ),
        VideoCodec::Vp8 => ("video/x-vp8", "vp8dec"),
    };
    let description = format!(
        "appsrc name=src format=time caps={caps} ! {decode} ! videoconvert ! jpegenc quality=85 ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| ThumbnailError::Gst("not a pipeline".into()))?;
    let result = run(&pipeline, keyframe);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn run(pipeline: &gst::Pipeline, keyframe: &Keyframe) -> Result<Jpeg, ThumbnailError> {
    let element = |name: &str| {
        pipeline
            .by_name(name)
            .ok_or_else(|| ThumbnailError::Gst(format!("no element {name}")))
    };
    let src = element("src")?
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| ThumbnailError::Gst("src is not an appsrc".into()))?;
    let sink = element("sink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| ThumbnailError::Gst("sink is not an appsink".into()))?;
    pipeline.set_state(gst::State::Playing)?;
    let mut buffer = gst::Buffer::from_slice(keyframe.data.clone());
    if let Some(b) = buffer.get_mut() {
        b.set_pts(gst::ClockTime::ZERO);
    }
    src.push_buffer(buffer)?;
    src.end_of_stream()?;
    let sample = sink
        .try_pull_sample(gst::ClockTime::from_nseconds(
            ENCODE_TIMEOUT.as_nanos() as u64
        ))
        .ok_or(ThumbnailError::NoPicture)?;
    let size = sample.caps().and_then(|c| {
        let s = c.structure(0)?;
        Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?))
    });
    let buffer = sample.buffer().ok_or(ThumbnailError::NoPicture)?;
    let map = buffer
        .map_readable()
        .map_err(|e| ThumbnailError::Gst(e.to_string()))?;
    let (width, height) = size.ok_or(ThumbnailError::NoPicture)?;
    Ok(Jpeg {
        bytes: map.as_slice().to_vec(),
        width: width.max(0) as u32,
        height: height.max(0) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One keyframe from a real encoder (GStreamer's x264enc / vp8enc).
    fn encoded(codec: VideoCodec, width: u32, height: u32) -> Vec<u8> {
        gst::init().expect("gst init");
        let enc = match codec {
            VideoCodec::H264 => {
                "x264enc key-int-max=1 ! video/x-h264,stream-format=byte-stream,alignment=au"
            }
            VideoCodec::Vp8 => "vp8enc",
        };
        let p = gst::parse::launch(&format!(
            "videotestsrc num-buffers=1 ! video/x-raw,format=I420,width={width},height={height} ! {enc} ! appsink name=sink sync=false"
        ))
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
        let sink = p
            .by_name("sink")
            .expect("sink")
            .downcast::<gst_app::AppSink>()
            .expect("appsink");
        p.set_state(gst::State::Playing).expect("playing");
        let sample = sink
            .try_pull_sample(gst::ClockTime::from_seconds(20))
            .expect("a frame");
        let bytes = sample
            .buffer()
            .expect("buffer")
            .map_readable()
            .expect("map")
            .to_vec();
        p.set_state(gst::State::Null).expect("null");
        bytes
    }

    fn is_jpeg(b: &[u8]) -> bool {
        b.starts_with(&[0xff, 0xd8]) && b.ends_with(&[0xff, 0xd9])
    }

    #[test]
    fn an_h264_keyframe_becomes_a_jpeg_of_its_size() {
        let annex_b = encoded(VideoCodec::H264, 320, 240);
        // As the depacketizer hands it over: NAL units with 4-byte lengths.
        let mut data = Vec::new();
        let mut sps = None;
        let mut pps = None;
        for nal in split_annex_b(&annex_b) {
            match nal.first().map(|b| b & 0x1f) {
                Some(7) => sps = Some(nal.to_vec()),
                Some(8) => pps = Some(nal.to_vec()),
                _ => {
                    data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    data.extend_from_slice(nal);
                }
            }
        }
        let frame = VideoFrame {
            rtp_time: 0,
            data,
            keyframe: true,
            sps: None,
            pps: None,
            vp8_size: None,
        };
        // The parameter sets arrived in an earlier frame.
        let key = Keyframe::from_frame(VideoCodec::H264, &frame, sps.as_deref(), pps.as_deref());
        let jpeg = encode(&key).expect("jpeg");
        assert_eq!((jpeg.width, jpeg.height), (320, 240));
        assert!(is_jpeg(&jpeg.bytes));
    }

    #[test]
    fn a_vp8_keyframe_becomes_a_jpeg_of_its_size() {
        let frame = VideoFrame {
            rtp_time: 0,
            data: encoded(VideoCodec::Vp8, 640, 360),
            keyframe: true,
            sps: None,
            pps: None,
            vp8_size: Some((640, 360)),
        };
        let jpeg =
            encode(&Keyframe::from_frame(VideoCodec::Vp8, &frame, None, None)).expect("jpeg");
        assert_eq!((jpeg.width, jpeg.height), (640, 360));
        assert!(is_jpeg(&jpeg.bytes));
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        let key = Keyframe {
            codec: VideoCodec::Vp8,
            data: vec![1, 2, 3],
        };
        assert!(encode(&key).is_err());
    }

    fn split_annex_b(b: &[u8]) -> Vec<&[u8]> {
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= b.len() {
            if b[i..].starts_with(&[0, 0, 1]) {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        let mut nals = Vec::new();
        for (k, &s) in starts.iter().enumerate() {
            let mut end = starts.get(k + 1).map_or(b.len(), |&n| n - 3);
            while end > s && b[end - 1] == 0 {
                end -= 1;
            }
            nals.push(&b[s..end]);
        }
        nals
    }

    #[test]
    fn the_first_keyframe_at_or_after_each_mark() {
        let ms = Duration::from_millis;
        let mut s = Schedule::new(Duration::from_secs(2));
        assert!(s.due(ms(0)));
        assert_eq!(s.take(ms(300)), 0);
        assert!(!s.due(ms(1999)));
        assert!(s.due(ms(2000)));
        assert_eq!(s.take(ms(2500)), 1);
        // No keyframe for a while: the missed marks are skipped.
        assert!(!s.due(ms(3999)));
        assert_eq!(s.take(ms(9100)), 2);
        assert!(!s.due(ms(9999)) && s.due(ms(10_000)));
        assert_eq!(s.taken(), 3);
    }

    #[test]
    fn disabled_or_nowhere_to_store_means_no_plan() {
        let mut t = ThumbnailSettings::default();
        assert_eq!(Plan::from_settings(&t), None);
        t.recording_mode = ThumbnailRecordingMode::Interval;
        t.target_interval_seconds = 2;
        assert_eq!(
            Plan::from_settings(&t),
            Some(Plan {
                interval: Duration::from_secs(2),
                sequential: true,
                latest: false
            })
        );
        t.storage.clear();
        assert_eq!(Plan::from_settings(&t), None);
    }
}
