//! The recording's event files, `events/recording-started.json`,
//! `recording-ended.json` and `recording-failed.json`, in IVS's layout.

use onstage_stage::recording::RecordingJob;
use onstage_stage::time_fmt::{UnixMillis, iso8601};
use serde_json::{Value, json};

use crate::hls::{HlsWriter, RENDITION};
use crate::thumbnail::{LATEST_DIR, LATEST_NAME, Plan, SEQUENTIAL_DIR};
use onstage_stage::model::RecordingMediaType;

/// `recording_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndStatus {
    Started,
    Ended,
    Failed,
}

impl EndStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EndStatus::Started => "RECORDING_STARTED",
            EndStatus::Ended => "RECORDING_ENDED",
            EndStatus::Failed => "RECORDING_ENDED_WITH_FAILURE",
        }
    }
}

/// The document for one of the event files; `writer` gives the media's duration
/// and size once there is some, `thumbnail_size` the size of the thumbnails
/// written so far.
pub fn document(
    job: &RecordingJob,
    ended_at: Option<UnixMillis>,
    status: EndStatus,
    message: &str,
    writer: Option<&HlsWriter>,
    thumbnail_size: Option<(u32, u32)>,
) -> Vec<u8> {
    let size = writer.and_then(HlsWriter::video_size);
    let rendition = |path: &str, playlist: Option<&str>| {
        let mut r = json!({ "path": path });
        if let Some(p) = playlist {
            r["playlist"] = json!(p);
        }
        if let Some((w, h)) = size {
            r["resolution_width"] = json!(w);
            r["resolution_height"] = json!(h);
        }
        r
    };
    let duration_ms = writer
        .map(|w| (w.recorded_seconds() * 1000.0).round() as u64)
        .unwrap_or(0);
    let mut media = json!({});
    let types = &job.settings.media_types;
    if types.contains(&RecordingMediaType::AudioVideo)
        || types.contains(&RecordingMediaType::AudioOnly)
    {
        media["hls"] = json!({
            "duration_ms": duration_ms,
            "path": "media/hls",
            "playlist": "multivariant.m3u8",
            "renditions": [rendition(RENDITION, Some("playlist.m3u8"))],
        });
    }
    if let Some(plan) = Plan::from_settings(&job.settings.thumbnail) {
        // Named from the start; the size once a thumbnail was made.
        let thumbnails = |path: &str| {
            let mut r = json!({ "path": RENDITION });
            if let Some((w, h)) = thumbnail_size {
                r["resolution_width"] = json!(w);
                r["resolution_height"] = json!(h);
            }
            json!({ "path": path, "renditions": [r] })
        };
        if plan.sequential {
            media["thumbnails"] = thumbnails(SEQUENTIAL_DIR);
        }
        if plan.latest {
            media["latest_thumbnail"] = thumbnails(LATEST_DIR);
            media["latest_thumbnail"]["renditions"][0]["file"] = json!(LATEST_NAME);
        }
    }
    let doc: Value = json!({
        "version": "v1",
        "stage_arn": job.stage_arn,
        "session_id": job.session_id,
        "participant_id": job.participant_id,
        "recording_started_at": iso8601(job.started_at),
        "recording_ended_at": ended_at.map(iso8601).unwrap_or_default(),
        "recording_status": status.as_str(),
        "recording_status_message": message,
        "media": media,
    });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// What the previous process did not write for a recording it left running: its
/// start file turned into a failure file, ended `at`, with `seconds` of media.
pub fn interrupted(started: &[u8], at: UnixMillis, seconds: f64) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(started).unwrap_or_else(|_| json!({}));
    doc["recording_ended_at"] = json!(iso8601(at));
    doc["recording_status"] = json!(EndStatus::Failed.as_str());
    doc["recording_status_message"] = json!("onstage stopped while recording");
    if doc["media"].get("hls").is_some() {
        doc["media"]["hls"]["duration_ms"] = json!((seconds * 1000.0).round() as u64);
    }
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_recording_fails_with_what_it_stored() {
        let started = br#"{"version":"v1","recording_status":"RECORDING_STARTED","recording_ended_at":"","media":{"hls":{"duration_ms":0,"path":"media/hls"}}}"#;
        let doc: Value =
            serde_json::from_slice(&interrupted(started, 1_704_110_455_000, 12.5)).expect("json");
        assert_eq!(doc["recording_status"], "RECORDING_ENDED_WITH_FAILURE");
        assert_eq!(doc["recording_ended_at"], "2024-01-01T12:00:55Z");
        assert_eq!(doc["media"]["hls"]["duration_ms"], 12_500);
        assert_eq!(doc["media"]["hls"]["path"], "media/hls");
        assert_eq!(doc["version"], "v1");
    }
}
