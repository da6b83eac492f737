//! An ingest stream's audio: AAC from the encoder becomes Opus at 48 kHz, in
//! 20 ms frames, off the forwarding threads and off the server's runtime.
//!
//! WebRTC subscribers take Opus, encoders send AAC, so this is the one place
//! ingest transcodes. It is Debian's GStreamer (already linked for the
//! recorder's thumbnails): `appsrc` (raw AAC frames, the AudioSpecificConfig as
//! `codec_data`) `! avdec_aac ! audioconvert ! audioresample ! opusenc !
//! appsink`. GStreamer's own streaming thread decodes and encodes; the RTMP task
//! only hands it each frame without waiting (a full queue drops the oldest), and
//! each Opus frame goes from GStreamer's thread straight to `on_opus`.
//!
//! Timestamps: a frame's RTMP timestamp (milliseconds) is its presentation time
//! in the pipeline, which keeps it through decoding, resampling and encoding; an
//! Opus frame's time in 48 kHz units is its RTP timestamp. Video's RTP timestamp is
//! the same RTMP clock in 90 kHz units (`bridge.rs`), so both start together at
//! RTMP time 0 and stay in step.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// Samples in one Opus frame (20 ms at 48 kHz).
const OPUS_FRAME: u32 = 960;

/// One Opus frame, ready to be an RTP payload.
#[derive(Debug)]
pub struct OpusFrame {
    /// 48 kHz, from the RTMP clock.
    pub rtp_time: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("the AAC configuration is not usable: {0}")]
    Config(&'static str),
    #[error("GStreamer: {0}")]
    Gst(String),
}

impl From<gst::glib::Error> for AudioError {
    fn from(e: gst::glib::Error) -> Self {
        AudioError::Gst(e.to_string())
    }
}

impl From<gst::glib::BoolError> for AudioError {
    fn from(e: gst::glib::BoolError) -> Self {
        AudioError::Gst(e.to_string())
    }
}

impl From<gst::StateChangeError> for AudioError {
    fn from(e: gst::StateChangeError) -> Self {
        AudioError::Gst(e.to_string())
    }
}

/// What an AudioSpecificConfig (ISO 14496-3) says, as far as a decoder's caps need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AacConfig {
    pub object_type: u8,
    pub rate: u32,
    pub channels: u8,
}

const RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

pub fn aac_config(asc: &[u8]) -> Result<AacConfig, AudioError> {
    let [a, b, rest @ ..] = asc else {
        return Err(AudioError::Config("shorter than two bytes"));
    };
    let object_type = a >> 3;
    let index = usize::from((a & 0x07) << 1 | b >> 7);
    let (rate, channels) = if index == 15 {
        // An explicit 24-bit rate follows the index.
        let [c, d, e, ..] = rest else {
            return Err(AudioError::Config("an explicit rate runs past its end"));
        };
        let rate =
            u32::from(b & 0x7f) << 17 | u32::from(*c) << 9 | u32::from(*d) << 1 | u32::from(e >> 7);
        (rate, (e >> 3) & 0x0f)
    } else {
        let rate = *RATES
            .get(index)
            .ok_or(AudioError::Config("a reserved sampling frequency index"))?;
        (rate, (b >> 3) & 0x0f)
    };
    if object_type == 0 || channels == 0 || channels > 2 {
        return Err(AudioError::Config(
            "only AAC with one or two channels is taken",
        ));
    }
    Ok(AacConfig {
        object_type,
        rate,
        channels,
    })
}

/// One stream's AAC → Opus pipeline.
pub struct AudioTranscoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
}

impl AudioTranscoder {
    /// A pipeline for the stream whose AudioSpecificConfig is `asc`; each Opus
    /// frame goes to `on_opus`, on GStreamer's thread.
    pub fn new(
        asc: &[u8],
        on_opus: impl Fn(OpusFrame) + Send + Sync + 'static,
    ) -> Result<Self, AudioError> {
        let config = aac_config(asc)?;
        gst::init()?;
        let pipeline = gst::parse::launch(
            "appsrc name=src format=time is-live=true do-timestamp=false block=false \
               max-bytes=65536 leaky-type=downstream \
             ! avdec_aac ! audioconvert ! audioresample ! audio/x-raw,rate=48000 \
             ! opusenc frame-size=20 bitrate=64000 \
             ! appsink name=sink sync=false max-buffers=64 drop=true",
        )?
        .downcast::<gst::Pipeline>()
        .map_err(|_| AudioError::Gst("not a pipeline".into()))?;
        let element = |name: &str| {
            pipeline
                .by_name(name)
                .ok_or_else(|| AudioError::Gst(format!("no element {name}")))
        };
        let src = element("src")?
            .downcast::<gst_app::AppSrc>()
            .map_err(|_| AudioError::Gst("src is not an appsrc".into()))?;
        let sink = element("sink")?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| AudioError::Gst("sink is not an appsink".into()))?;
        src.set_caps(Some(
            &gst::Caps::builder("audio/mpeg")
                .field("mpegversion", 4i32)
                .field("stream-format", "raw")
                .field("rate", config.rate as i32)
                .field("channels", i32::from(config.channels))
                .field("codec_data", gst::Buffer::from_slice(asc.to_vec()))
                .build(),
        ));
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let Ok(map) = buffer.map_readable() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    // A frame's RTP time is where its 960 samples start: from
                    // where it ends, since the encoder's first frame is
                    // shortened by its lookahead in the pipeline's timeline.
                    // 48 kHz units, wrapping as RTP timestamps do.
                    let end = buffer.pts().map_or(0, gst::ClockTime::nseconds)
                        + buffer.duration().map_or(0, gst::ClockTime::nseconds);
                    let rtp_time = ((u128::from(end) * 48_000 / 1_000_000_000) as u32)
                        .wrapping_sub(OPUS_FRAME);
                    on_opus(OpusFrame {
                        rtp_time,
                        payload: map.as_slice().to_vec(),
                    });
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing)?;
        Ok(AudioTranscoder { pipeline, src })
    }

    /// One raw AAC frame with its RTMP timestamp; never waits.
    pub fn push(&self, timestamp_ms: u32, frame: &[u8]) {
        let mut buffer = gst::Buffer::from_slice(frame.to_vec());
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_mseconds(u64::from(timestamp_ms)));
        }
        let _ = self.src.push_buffer(buffer);
    }

    /// Ends the stream: what is queued is encoded, then the pipeline stops. Blocks
    /// for at most about a second (call it off the runtime's threads).
    pub fn finish(self) {
        let _ = self.src.end_of_stream();
        if let Some(bus) = self.pipeline.bus() {
            let _ = bus.timed_pop_filtered(
                gst::ClockTime::from_seconds(1),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            );
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl Drop for AudioTranscoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn reads_audio_specific_configs() {
        // AAC-LC, 44.1 kHz, stereo; 48 kHz mono.
        assert_eq!(
            aac_config(&[0x12, 0x10]).unwrap(),
            AacConfig {
                object_type: 2,
                rate: 44_100,
                channels: 2
            }
        );
        assert_eq!(aac_config(&[0x11, 0x88]).unwrap().rate, 48_000);
        assert_eq!(aac_config(&[0x11, 0x88]).unwrap().channels, 1);
        assert!(aac_config(&[0x12]).is_err());
        assert!(aac_config(&[0x12, 0x30]).is_err(), "six channels");
    }

    /// ADTS frames (as ffmpeg writes them) into raw frames and the stream's
    /// AudioSpecificConfig.
    fn adts_frames(data: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut frames = Vec::new();
        let mut asc = Vec::new();
        let mut at = 0;
        while at + 7 <= data.len() {
            let h = &data[at..at + 7];
            assert_eq!(h[0], 0xff, "ADTS sync");
            let protection_absent = h[1] & 1 == 1;
            let profile = (h[2] >> 6) + 1;
            let index = (h[2] >> 2) & 0x0f;
            let channels = (h[2] & 1) << 2 | h[3] >> 6;
            let len = usize::from(h[3] & 3) << 11 | usize::from(h[4]) << 3 | usize::from(h[5] >> 5);
            let header = if protection_absent { 7 } else { 9 };
            asc = vec![profile << 3 | index >> 1, (index & 1) << 7 | channels << 3];
            frames.push(data[at + header..at + len].to_vec());
            at += len;
        }
        (asc, frames)
    }

    #[test]
    fn aac_from_ffmpeg_becomes_20ms_opus_frames_on_the_rtmp_clock() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("tone.aac");
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-f", "lavfi", "-i"])
            .arg("sine=frequency=440:sample_rate=44100:duration=2")
            .args(["-c:a", "aac", "-ac", "2", "-f", "adts"])
            .arg(&path)
            .status()
            .expect("Debian's ffmpeg (apt-get install ffmpeg)");
        assert!(status.success());
        let (asc, frames) = adts_frames(&std::fs::read(&path).expect("the AAC file"));
        assert!(frames.len() > 80);
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let t =
            AudioTranscoder::new(&asc, move |f| sink.lock().unwrap().push(f)).expect("a pipeline");
        // RTMP gives each frame its time in milliseconds; start at 1 s, as an
        // encoder whose audio starts after its video would.
        for (i, f) in frames.iter().enumerate() {
            t.push(1000 + (i as u64 * 1024 * 1000 / 44_100) as u32, f);
        }
        t.finish();
        let out = out.lock().unwrap();
        // About 2 s of audio in 20 ms frames.
        assert!((95..=105).contains(&out.len()), "{} Opus frames", out.len());
        // 20 ms steps (the last frame, cut short by the end of the stream, aside).
        for pair in out[..out.len() - 1].windows(2) {
            assert_eq!(pair[1].rtp_time.wrapping_sub(pair[0].rtp_time), 960);
        }
        // The first frame sits at 1 s on the 48 kHz clock (within the decoder's
        // and encoder's priming).
        let first = out[0].rtp_time as i64;
        assert!((first - 48_000).abs() < 48 * 30, "first Opus time {first}");
        assert!(out.iter().all(|f| !f.payload.is_empty()));
    }
}
