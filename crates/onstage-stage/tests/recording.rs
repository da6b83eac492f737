//! When participants are recorded (BEHAVIOUR §9), driven end to end without
//! sockets: the live plane with the SQLite store in memory, a fake media plane, a
//! recorder that logs what it is asked, and the reconnect window in virtual time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use onstage_stage::ControlPlane;
use onstage_stage::live::{LiveConfig, LivePlane};
use onstage_stage::media::SourceId;
use onstage_stage::model::{RecordingState, Stage};
use onstage_stage::recording::{Recorder, RecordingId, RecordingJob, RecordingSignal};
use onstage_stage::service::{AutoRecordingRequest, Capability, NewStage, TokenRequest};
use onstage_stage::time_fmt::UnixMillis;
use onstage_testkit::{FakeMedia, ManualClock, TestStore, account, control_plane, eventually};
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Start(RecordingId, Box<RecordingJob>, SourceId),
    Resume(RecordingId, SourceId),
    Finish(RecordingId, UnixMillis),
}

/// Logs the calls; a finish is answered with `Ended` at once.
struct LoggingRecorder {
    calls: Mutex<Vec<Call>>,
    signals: mpsc::UnboundedSender<RecordingSignal>,
}

impl LoggingRecorder {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Recorder for LoggingRecorder {
    fn start(&self, id: RecordingId, job: RecordingJob, source: SourceId) {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Start(id, Box::new(job), source));
        let _ = self.signals.send(RecordingSignal::Active(id));
    }
    fn resume(&self, id: RecordingId, source: SourceId) {
        self.calls.lock().unwrap().push(Call::Resume(id, source));
    }
    fn finish(&self, id: RecordingId, at: UnixMillis) {
        self.calls.lock().unwrap().push(Call::Finish(id, at));
        let _ = self.signals.send(RecordingSignal::Ended(id));
    }
}

struct World {
    store: Arc<TestStore>,
    clock: Arc<ManualClock>,
    control: Arc<ControlPlane>,
    live: Arc<LivePlane>,
    recorder: Arc<LoggingRecorder>,
    stage: Stage,
}

async fn world(window_seconds: i64) -> World {
    let store = Arc::new(TestStore::new().await);
    let media = Arc::new(FakeMedia::default());
    let clock = ManualClock::new();
    let control = control_plane(store.clone(), clock.clone()).await;
    let live = LivePlane::open(control.clone(), media, LiveConfig::default())
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let recorder = Arc::new(LoggingRecorder {
        calls: Mutex::new(Vec::new()),
        signals: tx,
    });
    live.attach_recorder(recorder.clone(), rx);
    let storage = control
        .create_storage_configuration(&account(), None, "bucket-1".into(), Default::default())
        .await
        .unwrap();
    let (stage, _) = control
        .create_stage(
            &account(),
            NewStage {
                auto_participant_recording: Some(AutoRecordingRequest {
                    storage_configuration_arn: storage.arn.to_string(),
                    recording_reconnect_window_seconds: Some(window_seconds),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    World {
        store,
        clock,
        control,
        live,
        recorder,
        stage,
    }
}

impl World {
    async fn token(&self) -> (String, String) {
        let issued = self
            .control
            .create_participant_token(
                &account(),
                &self.stage.arn.to_string(),
                TokenRequest {
                    capabilities: Some(vec![Capability::Publish, Capability::Subscribe]),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        (issued.participant_id, issued.token)
    }

    async fn publish(&self, token: &str) -> String {
        self.live
            .publish(token.to_owned(), "offer".into(), None)
            .await
            .unwrap()
            .resource_id
    }

    async fn recording_state(&self, pid: &str) -> Option<RecordingState> {
        let p = self.store.participant_in(&self.stage.arn, pid).await?;
        Some(p.recording_state)
    }
}

#[tokio::test]
async fn a_publisher_is_recorded_under_its_stage_session_and_participant() {
    let w = world(0).await;
    let (pid, token) = w.token().await;
    let resource = w.publish(&token).await;
    let calls = w.recorder.calls();
    let Some(Call::Start(id, job, _)) = calls.first() else {
        panic!("no recording started: {calls:?}");
    };
    let session = w.store.running_session(&w.stage.arn).await.unwrap();
    assert_eq!(job.place.bucket, "bucket-1");
    assert_eq!(
        job.place.prefix,
        format!("{}/{session}/{pid}/2026-01-01T00-00-00Z", w.stage.arn.id)
    );
    eventually("the recording is ACTIVE", async || {
        w.recording_state(&pid).await == Some(RecordingState::Active)
    })
    .await;
    let p = w.store.participant_in(&w.stage.arn, &pid).await.unwrap();
    assert_eq!(
        p.recording.as_ref().map(|r| r.prefix.as_str()),
        Some(job.place.prefix.as_str())
    );

    // No window: the recording ends as the publisher goes.
    assert!(w.live.end_connection(&resource).await);
    let id = *id;
    eventually("the recording is finished", async || {
        w.recorder
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Finish(i, _) if *i == id))
    })
    .await;
    eventually("the recording is STOPPED", async || {
        w.recording_state(&pid).await == Some(RecordingState::Stopped)
    })
    .await;
}

#[tokio::test]
async fn back_within_the_window_continues_after_it_a_new_prefix() {
    let w = world(30).await;
    let (pid, token) = w.token().await;
    let first = w.publish(&token).await;
    assert!(w.live.end_connection(&first).await);
    // 20 s later (virtual), inside the 30 s window: the same recording goes on.
    w.clock.advance(Duration::from_secs(20));
    tokio::task::yield_now().await;
    let second = w.publish(&token).await;
    let calls = w.recorder.calls();
    assert!(
        matches!(calls.as_slice(), [Call::Start(..), Call::Resume(..)]),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| matches!(c, Call::Finish(..))));

    // Gone again; the window passes: the recording ends (the end waits for it).
    assert!(w.live.end_connection(&second).await);
    w.clock.advance(Duration::from_secs(29));
    tokio::task::yield_now().await;
    assert!(
        !w.recorder
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Finish(..)))
    );
    w.clock.advance(Duration::from_secs(2));
    eventually("the recording ends after the window", async || {
        w.recorder
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Finish(..)))
    })
    .await;
    eventually("the recording is STOPPED", async || {
        w.recording_state(&pid).await == Some(RecordingState::Stopped)
    })
    .await;

    // The next publish starts another recording, under a new prefix.
    w.clock.advance(Duration::from_secs(5));
    w.publish(&token).await;
    let starts: Vec<_> = w
        .recorder
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Start(id, job, _) => Some((id, job.place.prefix)),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_ne!(starts[0].0, starts[1].0);
    assert_ne!(starts[0].1, starts[1].1);
}

#[tokio::test]
async fn a_stage_without_recording_records_nobody() {
    let w = world(0).await;
    let (stage, _) = w
        .control
        .create_stage(&account(), NewStage::default())
        .await
        .unwrap();
    let issued = w
        .control
        .create_participant_token(
            &account(),
            &stage.arn.to_string(),
            TokenRequest {
                capabilities: Some(vec![Capability::Publish]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    w.live
        .publish(issued.token, "offer".into(), None)
        .await
        .unwrap();
    assert!(w.recorder.calls().is_empty());
    let p = w
        .store
        .participant_in(&stage.arn, &issued.participant_id)
        .await
        .unwrap();
    assert_eq!(p.recording_state, RecordingState::Disabled);
    assert_eq!(p.recording, None);
}
