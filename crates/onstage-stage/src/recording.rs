//! The boundary between the domain and the recorder (BEHAVIOUR §9).
//!
//! The domain decides *when* a participant is recorded and *where* (the live
//! plane's `live::recording`); a [`Recorder`] (the `onstage-record` crate) takes
//! the media of a source and writes it into a bucket. It reports back through
//! [`RecordingSignal`]s, which the domain records as the participant's
//! `recordingState`.

use crate::media::SourceId;
use crate::model::{AutoParticipantRecording, RecordingPlace};
use crate::time_fmt::UnixMillis;

/// One recording (one prefix) while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordingId(pub u64);

/// What a recording is of and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingJob {
    pub stage_arn: String,
    pub session_id: String,
    pub participant_id: String,
    pub place: RecordingPlace,
    pub started_at: UnixMillis,
    pub settings: AutoParticipantRecording,
}

/// How a recording ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordingSignal {
    /// Media reached the bucket.
    Active(RecordingId),
    /// The end was written (`events/recording-ended.json`).
    Ended(RecordingId),
    /// The recording could not go on; why, for the log and the end file.
    Failed(RecordingId, String),
}

/// What records sources.
pub trait Recorder: Send + Sync + 'static {
    /// Starts a recording of `source` (`events/recording-started.json`, then media).
    fn start(&self, id: RecordingId, job: RecordingJob, source: SourceId);
    /// The recording goes on from `source` (the publisher came back, or was
    /// replaced): its timeline continues where it was.
    fn resume(&self, id: RecordingId, source: SourceId);
    /// Ends the recording at `at`: the last segment, the playlist's end and
    /// `events/recording-ended.json`.
    fn finish(&self, id: RecordingId, at: UnixMillis);
    /// A recording a previous process left running (BEHAVIOUR §9.7): end what it
    /// stored (its playlist's end, `events/recording-failed.json`) so it plays.
    fn end_interrupted(&self, _place: RecordingPlace) {}
}

/// Records nothing (recording settings stay bookkeeping): for tests and for a
/// server started without a recorder.
pub struct NoRecorder;

impl Recorder for NoRecorder {
    fn start(&self, _: RecordingId, _: RecordingJob, _: SourceId) {}
    fn resume(&self, _: RecordingId, _: SourceId) {}
    fn finish(&self, _: RecordingId, _: UnixMillis) {}
}
