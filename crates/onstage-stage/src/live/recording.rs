//! When a participant is recorded (BEHAVIOUR §9): its recording starts when it
//! starts publishing on a stage whose `autoParticipantRecordingConfiguration`
//! names a storage configuration, goes on across a replaced publisher and a
//! publisher back within `recordingReconnectWindowSeconds` (the same prefix), and
//! ends when that window has passed without it (the end file waits for it). The
//! window holds the recording, not the stage's session: a publisher alone on its
//! stage ends the session when it drops, and comes back in a new one, still
//! recording into the prefix that names the first.
//!
//! The windows are timers on the live plane's [`Clock`], so tests pass them in
//! virtual time. What this decides reaches the [`Recorder`] (which writes the
//! media) and the store (the participant's `recordingState`, bucket and prefix).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::ids::Arn;
use crate::media::SourceId;
use crate::model::{AutoParticipantRecording, RecordingPlace, RecordingState};
use crate::recording::{Recorder, RecordingId, RecordingJob, RecordingSignal};
use crate::service::ControlPlane;
use crate::store::LiveWrite;
use crate::time_fmt::UnixMillis;

/// A participant's running recording.
struct Running {
    id: RecordingId,
    /// Whether its publisher is on the stage now.
    publishing: bool,
    /// Bumped at each stop and start: a window's timer acts only if it is unchanged.
    generation: u64,
    window_ms: UnixMillis,
}

/// Who a recording belongs to, for the store writes its signals cause: the
/// participant's record in each session the recording spans (the stage's session
/// may end while its only publisher is away inside the window, and the next
/// starts when it is back).
#[derive(Clone)]
struct Owner {
    stage: Arn,
    sessions: Vec<String>,
    participant_id: String,
    place: RecordingPlace,
}

pub(crate) struct Recordings {
    me: Weak<Recordings>,
    control: Arc<ControlPlane>,
    clock: Arc<dyn Clock>,
    recorder: Arc<dyn Recorder>,
    next_id: AtomicU64,
    running: Mutex<HashMap<(Arn, String), Running>>,
    owners: Mutex<HashMap<RecordingId, Owner>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `2024-01-01T12-00-55Z`: the last part of a recording's prefix.
pub(crate) fn prefix_time(at: UnixMillis) -> String {
    crate::time_fmt::iso8601(at).replace(':', "-")
}

impl Recordings {
    pub(crate) fn new(
        control: Arc<ControlPlane>,
        recorder: Arc<dyn Recorder>,
        signals: mpsc::UnboundedReceiver<RecordingSignal>,
    ) -> Arc<Self> {
        let me = Arc::new_cyclic(|me| Recordings {
            me: me.clone(),
            clock: control.clock().clone(),
            control,
            recorder,
            next_id: AtomicU64::new(1),
            running: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut signals = signals;
            while let Some(signal) = signals.recv().await {
                let Some(me) = weak.upgrade() else { break };
                me.on_signal(signal).await;
            }
        });
        me
    }

    /// A participant started publishing `source` on `stage` (a new publish, a
    /// replaced publisher, or a replica joining).
    pub(crate) async fn publish_started(
        &self,
        stage: &Arn,
        session_id: &str,
        participant_id: &str,
        source: SourceId,
        replica: bool,
    ) {
        let key = (stage.clone(), participant_id.to_owned());
        let resumed = {
            let mut running = lock(&self.running);
            running.get_mut(&key).map(|r| {
                r.publishing = true;
                r.generation += 1;
                self.recorder.resume(r.id, source);
                r.id
            })
        };
        if let Some(id) = resumed {
            let owner = {
                let mut owners = lock(&self.owners);
                owners.get_mut(&id).and_then(|o| {
                    (!o.sessions.iter().any(|s| s == session_id)).then(|| {
                        o.sessions.push(session_id.to_owned());
                        o.clone()
                    })
                })
            };
            if let Some(owner) = owner {
                // Back in a new session: its record shows the recording too.
                self.write(&owner, RecordingState::Active).await;
            }
            return;
        }
        let (settings, bucket) = match self.control.recording_target(stage).await {
            Ok(Some(target)) => target,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(%stage, error = %e, "could not read the stage's recording settings");
                return;
            }
        };
        if replica && !settings.record_participant_replicas {
            return;
        }
        let now = self.clock.now();
        let place = RecordingPlace {
            bucket,
            prefix: format!(
                "{}/{}/{}/{}",
                stage.id,
                session_id,
                participant_id,
                prefix_time(now)
            ),
        };
        let id = RecordingId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let owner = Owner {
            stage: stage.clone(),
            sessions: vec![session_id.to_owned()],
            participant_id: participant_id.to_owned(),
            place: place.clone(),
        };
        lock(&self.owners).insert(id, owner.clone());
        self.write(&owner, RecordingState::Starting).await;
        lock(&self.running).insert(
            key,
            Running {
                id,
                publishing: true,
                generation: 0,
                window_ms: window_ms(&settings),
            },
        );
        let job = RecordingJob {
            stage_arn: stage.to_string(),
            session_id: session_id.to_owned(),
            participant_id: participant_id.to_owned(),
            place,
            started_at: now,
            settings,
        };
        self.recorder.start(id, job, source);
    }

    /// A participant stopped publishing: its recording ends when the reconnect
    /// window passes without it publishing again.
    pub(crate) fn publish_stopped(&self, stage: &Arn, participant_id: &str) {
        let key = (stage.clone(), participant_id.to_owned());
        let (generation, at) = {
            let mut running = lock(&self.running);
            let Some(r) = running.get_mut(&key) else {
                return;
            };
            r.publishing = false;
            r.generation += 1;
            (r.generation, self.clock.now() + r.window_ms)
        };
        let me = self.me.clone();
        let sleep = self.clock.sleep_until(at);
        tokio::spawn(async move {
            sleep.await;
            if let Some(me) = me.upgrade() {
                me.window_passed(key, generation).await;
            }
        });
    }

    async fn window_passed(&self, key: (Arn, String), generation: u64) {
        let id = {
            let mut running = lock(&self.running);
            match running.get(&key) {
                Some(r) if r.generation == generation && !r.publishing => {}
                _ => return,
            }
            match running.remove(&key) {
                Some(r) => r.id,
                None => return,
            }
        };
        let owner = lock(&self.owners).get(&id).cloned();
        if let Some(owner) = owner {
            self.write(&owner, RecordingState::Stopping).await;
        }
        self.recorder.finish(id, self.clock.now());
    }

    async fn on_signal(&self, signal: RecordingSignal) {
        let (id, state) = match &signal {
            RecordingSignal::Active(id) => (*id, RecordingState::Active),
            RecordingSignal::Ended(id) => (*id, RecordingState::Stopped),
            RecordingSignal::Failed(id, why) => {
                tracing::warn!(recording = id.0, reason = %why, "recording failed");
                (*id, RecordingState::Failed)
            }
        };
        let owner = {
            let mut owners = lock(&self.owners);
            if matches!(state, RecordingState::Active) {
                owners.get(&id).cloned()
            } else {
                owners.remove(&id)
            }
        };
        if matches!(state, RecordingState::Failed) {
            // A failed recording is over; the participant's next publish starts another.
            lock(&self.running).retain(|_, r| r.id != id);
        }
        if let Some(owner) = owner {
            self.write(&owner, state).await;
        }
    }

    async fn write(&self, owner: &Owner, state: RecordingState) {
        let writes: Vec<LiveWrite> = owner
            .sessions
            .iter()
            .map(|session_id| LiveWrite::SetRecording {
                session_id: session_id.clone(),
                participant_id: owner.participant_id.clone(),
                state,
                place: Some(owner.place.clone()),
            })
            .collect();
        if let Err(e) = self.control.store().write_live(&owner.stage, &writes).await {
            tracing::error!(stage = %owner.stage, error = %e, "could not record a recording's state");
        }
    }
}

fn window_ms(settings: &AutoParticipantRecording) -> UnixMillis {
    settings.recording_reconnect_window_seconds.clamp(0, 300) * 1000
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_time_has_no_colons() {
        assert_eq!(
            super::prefix_time(1_704_110_455_000),
            "2024-01-01T12-00-55Z"
        );
    }
}
