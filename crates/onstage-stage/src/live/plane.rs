//! The driver of the stage machines: tokens in, SDP through the media plane,
//! effects out to the store, the media plane and the events sockets.
//!
//! Each stage has a slot with its [`StageMachine`] behind an async lock. A request
//! takes the lock, asks the machine, calls the media plane if admitted, records the
//! result and carries out the effects — store writes included — before it lets go,
//! so a stage's writes reach the store in the order they happened and a connection
//! is only accepted once its join is recorded (one whose join the store refuses is
//! taken down again and refused as an internal error). A slot exists only while its stage has
//! someone on it (or is being deleted); an idle slot is retired and dropped.
//!
//! Every operation runs in a task of its own: an HTTP client that hangs up halfway
//! cannot leave a peer open in the media plane that the machine never heard of.
//!
//! Replication involves two stages. StartParticipantReplication locks both, always
//! in ARN order; every other cross-stage consequence (a replica to remove, a source
//! to tell) comes out of a machine as a [`CrossStage`] message, which is delivered
//! to the other stage only after this stage's lock is released — so no task ever
//! waits for a stage while holding another out of order. Messages are delivered
//! before the operation that caused them returns. A machine that wants to be woken
//! (a reconnect window ending) says when; a task waits for that time on the
//! control plane's [`Clock`] and calls it back. Every time the machines see comes
//! from that clock too, so tests drive the plane in virtual time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, MutexGuard, OnceLock, PoisonError, Weak};

use async_trait::async_trait;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot, watch};

use super::machine::IngestOrigin;
use crate::clock::Clock;
use crate::error::{DomainError, StoreError};
use crate::ids::{Account, Arn, IdSource};
use crate::media::{CloseCause, MediaPlane, MediaSignal, PeerId, SourceFeeder};
use crate::model::{ClientAttributes, EventErrorCode, IngestConfiguration, ParticipantProtocol};
use crate::model::{EventName, RecordingPlace};
use crate::recording::{Recorder, RecordingSignal};
use crate::service::{
    ControlPlane, LiveStages, ReplicationStart, SignatureCheck, TokenVerificationError,
    VerifiedToken,
};
use crate::store::LiveWrite;
use crate::time_fmt::UnixMillis;
use crate::token::Capabilities;
use crate::token::{ParticipantClaims, TokenIssuer};

use super::client;
use super::machine::{
    self, Admission, ConnectionId, CrossStage, Effects, EventsClose, ReplicaJoin, StageLimits,
    StageMachine,
};
use super::recording::Recordings;
use super::refusals::{ForgeryLog, RefusalBudget, RefusalRecord};
use super::replication::{FeedOrigin, LocalReplicaFeeds, ReplicaFeeds};
use super::{
    Action, DEFAULT_MAX_SUBSCRIBERS_PER_STAGE, ExchangeRefusal, Joiner, MAX_PUBLISHERS_PER_STAGE,
    Refusal, RefusalKind, StageState,
};

/// How long the close of a peer the live plane has not registered yet is remembered
/// (the media plane may report it before `publish`/`subscribe` has returned).
const EARLY_CLOSE_MEMORY_MS: UnixMillis = 60_000;

/// Limits of the live plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveConfig {
    /// Publishers per stage (IVS: 12).
    pub max_publishers: usize,
    /// Participants subscribing per stage (IVS: 10,000).
    pub max_subscribers: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            max_publishers: MAX_PUBLISHERS_PER_STAGE,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS_PER_STAGE,
        }
    }
}

/// A publish or subscribe the server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub participant_id: String,
    /// The SDP answer for the `201`.
    pub answer_sdp: String,
    /// The unguessable id of the WHIP resource: `DELETE` on its URL ends the
    /// connection ([`LivePlane::end_connection`]).
    pub resource_id: String,
    /// The stage's WHIP endpoint (`endpoints.whip`), which resource URLs extend.
    pub whip_endpoint: String,
}

/// An accepted events socket: the stage's state as it changes, and the server's
/// request to close the socket. Dropping it closes the connection on the stage.
pub struct EventsSubscription {
    participant_id: String,
    /// The claims of the token the socket holds now (the one it was opened with, or
    /// the last one exchanged for it).
    claims: ParticipantClaims,
    states: watch::Receiver<Arc<StageState>>,
    closed: oneshot::Receiver<EventsClose>,
    /// Why the server closed the socket, once it has (the receiver is spent then).
    close_reason: Option<EventsClose>,
    _registration: EventsRegistration,
}

impl EventsSubscription {
    pub fn participant_id(&self) -> &str {
        &self.participant_id
    }

    /// `SET_STATE` from the client: its audio muted, its video stopped. Announced
    /// to the stage in the next STAGE_STATE (not recorded in the store).
    pub async fn set_client_state(&self, audio_muted: bool, video_stopped: bool) {
        let Some(plane) = self._registration.plane.upgrade() else {
            return;
        };
        let (stage, pid) = (
            self._registration.stage.clone(),
            self.participant_id.clone(),
        );
        let _ = tokio::spawn(async move {
            plane
                .client_state(&stage, &pid, audio_muted, video_stopped)
                .await;
        })
        .await;
    }

    /// `EXCHANGE_TOKEN`: the participant now holds `token`, which must be signed
    /// with one of the stage's account's public keys and name the same participant,
    /// stage and endpoints. Its attributes and capabilities apply at once.
    pub async fn exchange_token(&mut self, token: String) -> Result<(), ExchangeRefusal> {
        let plane = self._registration.plane.upgrade().ok_or_else(|| {
            ExchangeRefusal::Refused(Refusal::internal("the live plane has stopped"))
        })?;
        let (stage, current) = (self._registration.stage.clone(), self.claims.clone());
        let claims = tokio::spawn(async move { plane.exchange(&stage, &current, &token).await })
            .await
            .map_err(|_| ExchangeRefusal::Refused(Refusal::internal("internal error")))??;
        self.claims = claims;
        Ok(())
    }

    /// The stage's state: `borrow_and_update` for the current one, `changed` to wait
    /// for the next.
    pub fn states(&mut self) -> &mut watch::Receiver<Arc<StageState>> {
        &mut self.states
    }

    /// Resolves when the server ends the socket (replaced, disconnected, stage
    /// deleted, shutdown).
    pub async fn closed(&mut self) -> EventsClose {
        if let Some(why) = &self.close_reason {
            return why.clone();
        }
        let why = (&mut self.closed)
            .await
            .unwrap_or(EventsClose::ServerShutdown);
        self.close_reason = Some(why.clone());
        why
    }

    /// The next thing to tell the socket: a new stage state, or that the server
    /// closes it. Cancel-safe, for use in `select!`.
    pub async fn next_update(&mut self) -> EventsUpdate {
        if let Some(why) = &self.close_reason {
            return EventsUpdate::Closed(why.clone());
        }
        tokio::select! {
            why = &mut self.closed => {
                let why = why.unwrap_or(EventsClose::ServerShutdown);
                self.close_reason = Some(why.clone());
                EventsUpdate::Closed(why)
            }
            changed = self.states.changed() => match changed {
                Ok(()) => EventsUpdate::State(self.states.borrow_and_update().clone()),
                Err(_) => EventsUpdate::Closed(EventsClose::ServerShutdown),
            },
        }
    }
}

/// See [`EventsSubscription::next_update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsUpdate {
    State(Arc<StageState>),
    Closed(EventsClose),
}

/// Closes the events connection on the stage when the subscription goes away,
/// however the socket ended.
struct EventsRegistration {
    plane: Weak<LivePlane>,
    stage: Arn,
    conn: ConnectionId,
}

impl Drop for EventsRegistration {
    fn drop(&mut self) {
        let (Some(plane), Ok(runtime)) =
            (self.plane.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (stage, conn) = (self.stage.clone(), self.conn);
        runtime.spawn(async move { plane.events_closed(&stage, conn).await });
    }
}

/// One stage's machine, the senders that close its events sockets, and the state
/// its sockets watch.
struct StageSlot {
    inner: Arc<Mutex<StageInner>>,
    state: watch::Sender<Arc<StageState>>,
}

struct StageInner {
    machine: StageMachine,
    events_sockets: HashMap<ConnectionId, oneshot::Sender<EventsClose>>,
    /// Messages for other stages' machines, delivered once this lock is released.
    pending: Vec<CrossStage>,
    /// Dropped from the map: whoever waited for this lock must look again.
    retired: bool,
}

type LockedStage = (Arc<StageSlot>, OwnedMutexGuard<StageInner>);

/// Where connections and peers live, for DELETEs and media signals.
#[derive(Default)]
struct Routes {
    /// WHIP resource id → stage and connection.
    resources: HashMap<String, (Arn, ConnectionId)>,
    resource_of: HashMap<ConnectionId, String>,
    /// Peer → its stage.
    peers: HashMap<PeerId, Arn>,
    /// Closes reported for peers nobody had registered yet.
    early_closes: HashMap<PeerId, (CloseCause, UnixMillis)>,
}

/// The live plane: participants' connections to stages (BEHAVIOUR §3–§5).
pub struct LivePlane {
    me: Weak<LivePlane>,
    control: Arc<ControlPlane>,
    /// The control plane's clock: every time the machines see, and their timers.
    clock: Arc<dyn Clock>,
    media: Arc<dyn MediaPlane>,
    feeds: Arc<dyn ReplicaFeeds>,
    limits: StageLimits,
    stages: SyncMutex<HashMap<Arn, Arc<StageSlot>>>,
    routes: SyncMutex<Routes>,
    next_connection: AtomicU64,
    /// Replications running now (for the metrics).
    active_replications: AtomicI64,
    /// Which genuine refusals are recorded (`refusals`).
    refusal_budget: SyncMutex<RefusalBudget>,
    /// When forged tokens were last logged (`refusals`).
    forgery_log: SyncMutex<ForgeryLog>,
    /// Who is recorded (`recording`), once a recorder is attached.
    recordings: OnceLock<Arc<Recordings>>,
    /// Recordings the previous process left running, for the recorder to end.
    interrupted_recordings: SyncMutex<Vec<RecordingPlace>>,
}

fn lock<T>(m: &SyncMutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LivePlane {
    /// Closes what a previous process left running (BEHAVIOUR §7: live connections end
    /// with the process, and are recorded as ended), then connects itself to the
    /// control plane for DisconnectParticipant and DeleteStage.
    pub async fn open(
        control: Arc<ControlPlane>,
        media: Arc<dyn MediaPlane>,
        config: LiveConfig,
    ) -> Result<Arc<LivePlane>, DomainError> {
        Self::open_with_feeds(control, media, Arc::new(LocalReplicaFeeds), config).await
    }

    /// [`LivePlane::open`] with another way for replicas to get their source's media
    /// (a cluster's relay, see [`super::replication`]).
    pub async fn open_with_feeds(
        control: Arc<ControlPlane>,
        media: Arc<dyn MediaPlane>,
        feeds: Arc<dyn ReplicaFeeds>,
        config: LiveConfig,
    ) -> Result<Arc<LivePlane>, DomainError> {
        let closed = control
            .store()
            .close_interrupted_sessions(control.clock().now())
            .await?;
        if closed.sessions > 0
            || closed.participants > 0
            || closed.replications > 0
            || !closed.recordings.is_empty()
        {
            tracing::info!(
                sessions = closed.sessions,
                participants = closed.participants,
                replications = closed.replications,
                recordings = closed.recordings.len(),
                "ended what the previous run left open"
            );
        }
        let limits = StageLimits {
            max_publishers: config.max_publishers,
            max_subscribers: config.max_subscribers,
        };
        let live = Arc::new_cyclic(|me| LivePlane {
            me: me.clone(),
            control: control.clone(),
            clock: control.clock().clone(),
            media,
            feeds,
            limits,
            stages: SyncMutex::new(HashMap::new()),
            routes: SyncMutex::new(Routes::default()),
            next_connection: AtomicU64::new(1),
            active_replications: AtomicI64::new(0),
            refusal_budget: SyncMutex::new(RefusalBudget::default()),
            forgery_log: SyncMutex::new(ForgeryLog::default()),
            recordings: OnceLock::new(),
            interrupted_recordings: SyncMutex::new(closed.recordings),
        });
        let hook: Weak<LivePlane> = Arc::downgrade(&live);
        control.attach_live_stages(hook);
        Ok(live)
    }

    /// Records participants of stages with automatic participant recording from
    /// now on, through `recorder`, whose signals come in on `signals`. Without it
    /// the settings are kept but nothing is recorded. Attached once.
    pub fn attach_recorder(
        &self,
        recorder: Arc<dyn Recorder>,
        signals: mpsc::UnboundedReceiver<RecordingSignal>,
    ) {
        for place in std::mem::take(&mut *lock(&self.interrupted_recordings)) {
            recorder.end_interrupted(place);
        }
        let _ = self
            .recordings
            .set(Recordings::new(self.control.clone(), recorder, signals));
    }

    /// Feeds the media plane's signals in until the channel closes. Each signal is
    /// handled on its own task, so a busy stage does not hold up the others.
    pub fn spawn_media_signals(
        self: &Arc<Self>,
        mut signals: mpsc::UnboundedReceiver<MediaSignal>,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(signal) = signals.recv().await {
                let Some(plane) = me.upgrade() else { break };
                tokio::spawn(async move { plane.on_media_signal(signal).await });
            }
        })
    }

    /// One signal from the media plane: a closed peer ends its connection (a peer
    /// that vanished is recorded like one that said goodbye).
    pub async fn on_media_signal(&self, signal: MediaSignal) {
        match signal {
            MediaSignal::Connected(peer) => tracing::debug!(%peer, "peer connected"),
            MediaSignal::Closed(peer, cause) => {
                let stage = {
                    let mut routes = lock(&self.routes);
                    match routes.peers.get(&peer) {
                        Some(stage) => stage.clone(),
                        // The echo of a close this plane asked for: the
                        // connection had already ended (a peer is always
                        // routed before anyone can ask to close it).
                        None if cause == CloseCause::Requested => return,
                        None => {
                            routes.remember_early_close(peer, cause, self.now());
                            return;
                        }
                    }
                };
                let Some((slot, mut inner)) = self.lock_existing_stage(&stage).await else {
                    return;
                };
                let fx = inner.machine.peer_closed(peer, cause, self.now());
                let _ = self.execute(&slot, &mut inner, fx).await;
                self.release(&stage, &slot, inner).await;
            }
        }
    }

    /// WHIP publish: verifies the token, admits the publish, gets the answer.
    pub async fn publish(
        &self,
        token: String,
        offer_sdp: String,
        user_agent: Option<String>,
    ) -> Result<Accepted, Refusal> {
        let plane = self.arc()?;
        run_detached(async move {
            plane
                .connect_media(token, Action::Publish, None, offer_sdp, user_agent)
                .await
        })
        .await
    }

    /// Subscribe to `publisher_id`'s media with a recvonly offer.
    pub async fn subscribe(
        &self,
        token: String,
        publisher_id: String,
        offer_sdp: String,
        user_agent: Option<String>,
    ) -> Result<Accepted, Refusal> {
        let plane = self.arc()?;
        run_detached(async move {
            plane
                .connect_media(
                    token,
                    Action::Subscribe,
                    Some(publisher_id),
                    offer_sdp,
                    user_agent,
                )
                .await
        })
        .await
    }

    /// WHIP publish at `{whip}/publish/{participantId}`: as [`LivePlane::publish`],
    /// and the path's participant id must be the token's (`jti`).
    pub async fn publish_as(
        &self,
        token: String,
        participant_id: String,
        offer_sdp: String,
        user_agent: Option<String>,
    ) -> Result<Accepted, Refusal> {
        let plane = self.arc()?;
        run_detached(async move {
            plane
                .connect_media_as(
                    token,
                    Action::Publish,
                    None,
                    Some(participant_id),
                    offer_sdp,
                    user_agent,
                )
                .await
        })
        .await
    }

    /// `DELETE` on a WHIP resource: ends that publish or subscribe. `false` when
    /// there is no such resource (any more).
    pub async fn end_connection(&self, resource_id: &str) -> bool {
        let Ok(plane) = self.arc() else { return false };
        let resource_id = resource_id.to_owned();
        run_detached(async move {
            let found = lock(&plane.routes).resources.get(&resource_id).cloned();
            let Some((stage, conn)) = found else {
                return Ok(false);
            };
            let Some((slot, mut inner)) = plane.lock_existing_stage(&stage).await else {
                return Ok(false);
            };
            let fx = inner.machine.connection_closed(conn, plane.now());
            let _ = plane.execute(&slot, &mut inner, fx).await;
            plane.release(&stage, &slot, inner).await;
            Ok(true)
        })
        .await
        .unwrap_or(false)
    }

    /// Opens the stage-events socket of a participant on the stage `stage_id` (the
    /// `{topic}` of its URL).
    pub async fn open_events(
        &self,
        token: String,
        stage_id: String,
        user_agent: Option<String>,
    ) -> Result<EventsSubscription, Refusal> {
        let plane = self.arc()?;
        run_detached(async move { plane.connect_events(token, stage_id, user_agent).await }).await
    }

    /// Ends every connection on every stage, recording everyone as gone and every
    /// session as ended, and refuses new connections: for a graceful shutdown.
    pub async fn shutdown(&self) {
        let stages: Vec<Arn> = lock(&self.stages).keys().cloned().collect();
        for stage in stages {
            if let Some((slot, mut inner)) = self.lock_existing_stage(&stage).await {
                let fx = inner
                    .machine
                    .close_stage(EventsClose::ServerShutdown, true, self.now());
                let _ = self.execute(&slot, &mut inner, fx).await;
                let pending = std::mem::take(&mut inner.pending);
                drop(inner);
                self.deliver(pending).await;
            }
        }
    }

    /// The current STAGE_STATE of a stage with someone on it.
    pub fn stage_state(&self, stage: &Arn) -> Option<Arc<StageState>> {
        lock(&self.stages)
            .get(stage)
            .map(|slot| slot.state.borrow().clone())
    }

    /// Stages with someone on them (or being deleted).
    pub fn live_stage_count(&self) -> usize {
        lock(&self.stages).len()
    }

    /// Closes the media plane reported for peers not (yet) routed, kept until
    /// their connection registers; for diagnostics and tests.
    pub fn remembered_early_closes(&self) -> usize {
        lock(&self.routes).early_closes.len()
    }

    // ----- the operations ----------------------------------------------------

    fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    fn arc(&self) -> Result<Arc<LivePlane>, Refusal> {
        self.me
            .upgrade()
            .ok_or_else(|| Refusal::internal("the live plane has stopped"))
    }

    async fn connect_media(
        self: Arc<Self>,
        token: String,
        action: Action,
        publisher: Option<String>,
        offer_sdp: String,
        user_agent: Option<String>,
    ) -> Result<Accepted, Refusal> {
        self.connect_media_as(token, action, publisher, None, offer_sdp, user_agent)
            .await
    }

    /// `path_participant`: the participant id a publish URL names, which must be
    /// the token's.
    async fn connect_media_as(
        self: Arc<Self>,
        token: String,
        action: Action,
        publisher: Option<String>,
        path_participant: Option<String>,
        offer_sdp: String,
        user_agent: Option<String>,
    ) -> Result<Accepted, Refusal> {
        let verified = self.verify(&token, None, action).await?;
        let joiner = joiner(&verified, user_agent.as_deref());
        let stage = verified.stage.arn;
        let (slot, mut inner) = self.lock_stage(&stage).await;
        let result = match path_participant {
            Some(id) if id != joiner.participant_id => {
                let refusal = Refusal::new(
                    RefusalKind::WrongParticipantId,
                    format!(
                        "the URL names participant {id}, the token participant {}",
                        joiner.participant_id
                    ),
                );
                Err(self
                    .refuse_locked(
                        &slot,
                        &mut inner,
                        &joiner.participant_id,
                        action,
                        None,
                        refusal,
                    )
                    .await)
            }
            _ => {
                self.connect_media_locked(
                    &slot,
                    &mut inner,
                    (&joiner, verified.claims.iat),
                    action,
                    publisher.as_deref(),
                    offer_sdp,
                )
                .await
            }
        };
        self.release(&stage, &slot, inner).await;
        result.map(|accepted| Accepted {
            whip_endpoint: verified.stage.endpoints.whip,
            ..accepted
        })
    }

    async fn connect_media_locked(
        &self,
        slot: &StageSlot,
        inner: &mut StageInner,
        // The verified token's participant, and its `iat`.
        (joiner, issued_at): (&Joiner, i64),
        action: Action,
        publisher: Option<&str>,
        offer_sdp: String,
    ) -> Result<Accepted, Refusal> {
        let admission = self
            .admit(inner, joiner, issued_at, action, publisher)
            .await;
        let admission = match admission {
            Ok(a) => a,
            Err(refusal) => {
                return Err(self
                    .refuse_locked(
                        slot,
                        inner,
                        &joiner.participant_id,
                        action,
                        publisher,
                        refusal,
                    )
                    .await);
            }
        };
        let conn = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let (peer, answer_sdp, fx) = match admission {
            Admission::Publish { source } => {
                let (source, fresh) = match source {
                    Some(existing) => (existing, false),
                    None => (self.media.new_source(), true),
                };
                match self.media.publish(source, offer_sdp).await {
                    Ok((peer, answer)) => {
                        let fx =
                            inner
                                .machine
                                .publish_accepted(joiner, conn, peer, source, self.now());
                        (peer, answer, fx)
                    }
                    Err(refused) => {
                        if fresh {
                            self.media.close_source(source);
                        }
                        let refusal = Refusal::from_media(refused);
                        return Err(self
                            .refuse_locked(
                                slot,
                                inner,
                                &joiner.participant_id,
                                action,
                                publisher,
                                refusal,
                            )
                            .await);
                    }
                }
            }
            Admission::Subscribe { source } => {
                match self.media.subscribe(source, offer_sdp).await {
                    Ok((peer, answer)) => {
                        let publisher = publisher.unwrap_or_default();
                        let fx = inner.machine.subscribe_accepted(
                            joiner,
                            publisher,
                            conn,
                            peer,
                            self.now(),
                        );
                        (peer, answer, fx)
                    }
                    Err(refused) => {
                        let refusal = Refusal::from_media(refused);
                        return Err(self
                            .refuse_locked(
                                slot,
                                inner,
                                &joiner.participant_id,
                                action,
                                publisher,
                                refusal,
                            )
                            .await);
                    }
                }
            }
            Admission::Events => {
                return Err(Refusal::internal(
                    "an events admission for a media connection",
                ));
            }
        };
        let stage = inner.machine.stage().clone();
        let (resource_id, early_close) = self.register(&stage, conn, peer);
        if self.execute(slot, inner, fx).await.is_err() {
            return Err(self.unrecorded(slot, inner, conn).await);
        }
        if let Some(cause) = early_close {
            let fx = inner.machine.peer_closed(peer, cause, self.now());
            let _ = self.execute(slot, inner, fx).await;
        }
        Ok(Accepted {
            participant_id: joiner.participant_id.clone(),
            answer_sdp,
            resource_id,
            whip_endpoint: String::new(),
        })
    }

    async fn connect_events(
        self: Arc<Self>,
        token: String,
        stage_id: String,
        user_agent: Option<String>,
    ) -> Result<EventsSubscription, Refusal> {
        let verified = self.verify(&token, Some(&stage_id), Action::Events).await?;
        let joiner = joiner(&verified, user_agent.as_deref());
        let stage = verified.stage.arn;
        let (slot, mut inner) = self.lock_stage(&stage).await;
        let admitted = self
            .admit(
                &mut inner,
                &joiner,
                verified.claims.iat,
                Action::Events,
                None,
            )
            .await;
        if let Err(refusal) = admitted {
            let refusal = self
                .refuse_locked(
                    &slot,
                    &mut inner,
                    &joiner.participant_id,
                    Action::Events,
                    None,
                    refusal,
                )
                .await;
            self.release(&stage, &slot, inner).await;
            return Err(refusal);
        }
        let conn = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let (close, closed) = oneshot::channel();
        inner.events_sockets.insert(conn, close);
        let fx = inner.machine.events_opened(&joiner, conn, self.now());
        if self.execute(&slot, &mut inner, fx).await.is_err() {
            let refusal = self.unrecorded(&slot, &mut inner, conn).await;
            self.release(&stage, &slot, inner).await;
            return Err(refusal);
        }
        let states = slot.state.subscribe();
        self.release(&stage, &slot, inner).await;
        Ok(EventsSubscription {
            participant_id: joiner.participant_id,
            claims: verified.claims,
            states,
            closed,
            close_reason: None,
            _registration: EventsRegistration {
                plane: self.me.clone(),
                stage,
                conn,
            },
        })
    }

    /// A connection was accepted but its join could not be recorded: it is taken
    /// down again at once (its peer closed, the machine as if it had ended) and
    /// refused as an internal error, because a participant on the stage that the
    /// store never heard of would break the session's record (DECISIONS.md). What
    /// the teardown writes is best effort: the store is failing.
    async fn unrecorded(
        &self,
        slot: &StageSlot,
        inner: &mut StageInner,
        conn: ConnectionId,
    ) -> Refusal {
        tracing::error!(stage = %inner.machine.stage(), ?conn, "a connection could not be recorded; it is refused");
        let fx = inner.machine.connection_closed(conn, self.now());
        let _ = self.execute(slot, inner, fx).await;
        Refusal::internal("the connection could not be recorded; try again")
    }

    async fn events_closed(&self, stage: &Arn, conn: ConnectionId) {
        let Some((slot, mut inner)) = self.lock_existing_stage(stage).await else {
            return;
        };
        inner.events_sockets.remove(&conn);
        let fx = inner.machine.connection_closed(conn, self.now());
        let _ = self.execute(&slot, &mut inner, fx).await;
        self.release(stage, &slot, inner).await;
    }

    /// The revocation checks need the store; they run under the stage's lock so a
    /// DisconnectParticipant or RevokeConnectionToken cannot slip between them and
    /// the join. `issued_at` is the token's `iat`.
    async fn admit(
        &self,
        inner: &mut StageInner,
        joiner: &Joiner,
        issued_at: i64,
        action: Action,
        publisher: Option<&str>,
    ) -> Result<Admission, Refusal> {
        self.check_token_revoked(inner.machine.stage(), &joiner.participant_id, issued_at)
            .await?;
        let revoked = self
            .control
            .store()
            .is_participant_revoked(inner.machine.stage(), &joiner.participant_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not check revocations");
                Refusal::internal("internal error")
            })?;
        inner.machine.admit(joiner, action, publisher, revoked)
    }

    /// Refuses a token RevokeConnectionToken revoked: one of the stage's account with
    /// the same id, issued at or before the revocation (in whole seconds, as `iat`).
    async fn check_token_revoked(
        &self,
        stage: &Arn,
        token_id: &str,
        issued_at: i64,
    ) -> Result<(), Refusal> {
        let account = Account {
            id: stage.account.clone(),
            region: stage.region.clone(),
        };
        let revoked_at = self
            .control
            .store()
            .token_revoked_at(&account, token_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not check token revocations");
                Refusal::internal("internal error")
            })?;
        match revoked_at {
            Some(at) if issued_at <= at / 1000 => Err(Refusal::new(
                RefusalKind::TokenRevoked,
                format!("token {token_id} was revoked (RevokeConnectionToken)"),
            )),
            _ => Ok(()),
        }
    }

    /// `SET_STATE` of a participant's client; a change goes out in STAGE_STATE.
    async fn client_state(&self, stage: &Arn, pid: &str, audio_muted: bool, video_stopped: bool) {
        let Some((slot, mut inner)) = self.lock_existing_stage(stage).await else {
            return;
        };
        if inner.machine.client_state(pid, audio_muted, video_stopped) {
            let _ = self.execute(&slot, &mut inner, Effects::default()).await;
        }
        self.release(stage, &slot, inner).await;
    }

    /// Token exchange on an events socket of `stage` holding `current`: checks the
    /// new token and what may not change, then applies it. Returns the new claims.
    async fn exchange(
        &self,
        stage: &Arn,
        current: &ParticipantClaims,
        token: &str,
    ) -> Result<ParticipantClaims, ExchangeRefusal> {
        let verified = self
            .verify(token, Some(&stage.id), Action::Events)
            .await
            .map_err(ExchangeRefusal::Refused)?;
        if !matches!(verified.issuer, TokenIssuer::PublicKey(_)) {
            return Err(ExchangeRefusal::NotSelfSigned);
        }
        let new = &verified.claims;
        let unchanged = [
            ("jti", &current.jti, &new.jti),
            ("topic", &current.topic, &new.topic),
            ("resource", &current.resource, &new.resource),
            ("whip_url", &current.whip_url, &new.whip_url),
            ("events_url", &current.events_url, &new.events_url),
        ];
        if let Some((claim, _, _)) = unchanged.iter().find(|(_, a, b)| a != b) {
            return Err(ExchangeRefusal::Changed(claim));
        }
        if current.user_id != new.user_id {
            return Err(ExchangeRefusal::Changed("user_id"));
        }
        let joiner = joiner(&verified, None);
        let Some((slot, mut inner)) = self.lock_existing_stage(stage).await else {
            return Err(ExchangeRefusal::Refused(Refusal::internal(
                "the participant is no longer on the stage",
            )));
        };
        let outcome = match self.check_token_revoked(stage, &new.jti, new.iat).await {
            Err(refusal) => Err(ExchangeRefusal::Refused(refusal)),
            Ok(()) => match inner.machine.token_exchanged(&joiner, self.now()) {
                Some(fx) => {
                    let _ = self.execute(&slot, &mut inner, fx).await;
                    Ok(verified.claims)
                }
                None => Err(ExchangeRefusal::Refused(Refusal::internal(
                    "the participant is no longer on the stage",
                ))),
            },
        };
        self.release(stage, &slot, inner).await;
        outcome
    }

    /// Verifies a token; a rejected one is recorded as a `JOIN_ERROR` where the
    /// connection was aimed: the stage in the URL if there is one, else the stage
    /// the token names.
    async fn verify(
        &self,
        token: &str,
        presented_to: Option<&str>,
        action: Action,
    ) -> Result<VerifiedToken, Refusal> {
        match self
            .control
            .verify_participant_token(token, presented_to, self.now() / 1000)
            .await
        {
            Ok(verified) => Ok(verified),
            Err(TokenVerificationError::Internal(e)) => {
                tracing::error!(error = %e, "could not verify a participant token");
                Err(Refusal::internal("internal error"))
            }
            Err(TokenVerificationError::Rejected {
                rejection,
                claimed,
                signature: SignatureCheck::NotVerified,
            }) => {
                // Forged, altered or unverifiable: what it claims is not believed, so
                // nothing is written and no stage is locked for it (DECISIONS).
                metrics::counter!("onstage_participant_tokens_forged_total").increment(1);
                let refusal = Refusal::token(rejection);
                let now = self.now();
                if let Some(unlogged) = lock(&self.forgery_log).forgery(now) {
                    let claimed_stage = claimed
                        .as_ref()
                        .and_then(|c| c.stage_arn.as_ref())
                        .map(ToString::to_string);
                    tracing::warn!(claimed_stage, ?action, reason = %refusal, unlogged_since_last_line = unlogged, "participant token with no valid signature refused");
                }
                Err(refusal)
            }
            Err(TokenVerificationError::Rejected {
                rejection,
                claimed,
                signature: SignatureCheck::Verified,
            }) => {
                let refusal = Refusal::token(rejection);
                let stage = match presented_to {
                    Some(id) => self.live_stage_by_id(id),
                    None => claimed.as_ref().and_then(|c| c.stage_arn.clone()),
                };
                let participant = claimed.and_then(|c| c.participant_id);
                let (Some(stage), Some(participant)) = (stage, participant) else {
                    tracing::info!(?action, reason = %refusal, "participant token refused");
                    return Err(refusal);
                };
                if !self.within_refusal_budget(&stage, &participant, action, &refusal) {
                    return Err(refusal);
                }
                if let Some((slot, mut inner)) = self.lock_existing_stage(&stage).await {
                    let fx =
                        inner
                            .machine
                            .refused(&participant, action, None, &refusal, self.now());
                    let _ = self.execute(&slot, &mut inner, fx).await;
                    self.release(&stage, &slot, inner).await;
                }
                Err(refusal)
            }
        }
    }

    /// Whether a genuine refusal may be recorded (and logged): each participant of a
    /// stage has a budget per minute; the rest are counted (`refusals`).
    fn within_refusal_budget(
        &self,
        stage: &Arn,
        participant: &str,
        action: Action,
        refusal: &Refusal,
    ) -> bool {
        let record = lock(&self.refusal_budget).refusal(stage, participant, self.now());
        match record {
            RefusalRecord::Write { unrecorded_before } => {
                if unrecorded_before > 0 {
                    tracing::warn!(%stage, participant, unrecorded = unrecorded_before, "refusals over the participant's budget went unrecorded in its last window");
                }
                tracing::info!(%stage, participant, ?action, kind = ?refusal.kind, reason = %refusal, "connection refused");
                true
            }
            RefusalRecord::Skip => {
                metrics::counter!("onstage_participant_refusals_unrecorded_total").increment(1);
                false
            }
        }
    }

    async fn refuse_locked(
        &self,
        slot: &StageSlot,
        inner: &mut StageInner,
        participant: &str,
        action: Action,
        publisher: Option<&str>,
        refusal: Refusal,
    ) -> Refusal {
        tracing::info!(stage = %inner.machine.stage(), participant, ?action, ?publisher, kind = ?refusal.kind, reason = %refusal, "connection refused");
        let stage = inner.machine.stage().clone();
        if !self.within_refusal_budget(&stage, participant, action, &refusal) {
            return refusal;
        }
        let fx = inner
            .machine
            .refused(participant, action, publisher, &refusal, self.now());
        let _ = self.execute(slot, inner, fx).await;
        refusal
    }

    // ----- replication ------------------------------------------------------

    /// StartParticipantReplication's preconditions 3–5 and its effect, with both
    /// stages locked (in ARN order, so that two replications in opposite directions
    /// cannot deadlock): the replica joins the destination (starting its session if
    /// idle), then the source records the replication, then the publisher is asked
    /// for a keyframe.
    async fn start_replication_now(&self, start: ReplicationStart) -> Result<(), DomainError> {
        let pid = start.participant_id.as_str();
        let not_publishing = || {
            DomainError::Conflict(format!(
                "participant {pid} is not publishing in {}",
                start.source
            ))
        };
        let Some(((src_slot, mut src), (dst_slot, mut dst))) =
            self.lock_pair(&start.source, &start.destination).await
        else {
            return Err(not_publishing());
        };
        let result = self
            .start_replication_locked(&start, &src_slot, &mut src, &dst_slot, &mut dst)
            .await;
        self.release(&start.destination, &dst_slot, dst).await;
        self.release(&start.source, &src_slot, src).await;
        result
    }

    async fn start_replication_locked(
        &self,
        start: &ReplicationStart,
        src_slot: &StageSlot,
        src: &mut StageInner,
        dst_slot: &StageSlot,
        dst: &mut StageInner,
    ) -> Result<(), DomainError> {
        let pid = start.participant_id.as_str();
        let origin = machine::check_replication(&src.machine, &dst.machine, pid)?;
        let feed = self
            .feeds
            .open(&FeedOrigin {
                source_stage: start.source.clone(),
                participant_id: pid.to_owned(),
                source: origin.source,
            })
            .await?;
        let mut attributes = origin.attributes;
        attributes.extend(start.attributes.clone());
        let now = self.now();
        let fx = dst.machine.replica_joined(
            ReplicaJoin {
                participant_id: pid.to_owned(),
                user_id: origin.user_id,
                attributes,
                source: feed,
                source_stage: start.source.clone(),
                source_session: origin.session_id,
            },
            now,
        );
        let joined = self.execute(dst_slot, dst, fx).await;
        let destination_session = dst.machine.session_id().unwrap_or_default().to_owned();
        let fx = src.machine.replication_started(
            pid,
            &start.destination,
            &destination_session,
            start.reconnect_window_seconds,
            now,
        );
        let recorded = self.execute(src_slot, src, fx).await;
        self.media.request_keyframe(origin.source);
        tracing::info!(source = %start.source, destination = %start.destination, participant = pid,
            window = start.reconnect_window_seconds, "replication started");
        joined.and(recorded).map_err(DomainError::from)
    }

    /// Both stages' slots, locked in ARN order; `None` when nobody is on the source.
    async fn lock_pair(
        &self,
        source: &Arn,
        destination: &Arn,
    ) -> Option<(LockedStage, LockedStage)> {
        if source < destination {
            let src = self.lock_existing_stage(source).await?;
            let dst = self.lock_stage(destination).await;
            Some((src, dst))
        } else {
            let (dst_slot, dst) = self.lock_stage(destination).await;
            match self.lock_existing_stage(source).await {
                Some(src) => Some((src, (dst_slot, dst))),
                None => {
                    self.release(destination, &dst_slot, dst).await;
                    None
                }
            }
        }
    }

    async fn stop_replication_now(
        &self,
        source: &Arn,
        destination: &Arn,
        participant_id: &str,
    ) -> Result<bool, DomainError> {
        let Some((slot, mut inner)) = self.lock_existing_stage(source).await else {
            return Ok(false);
        };
        let Some(fx) = inner
            .machine
            .stop_replication(participant_id, destination, self.now())
        else {
            self.release(source, &slot, inner).await;
            return Ok(false);
        };
        let stored = self.execute(&slot, &mut inner, fx).await;
        // Delivers the replica's removal to the destination before answering.
        self.release(source, &slot, inner).await;
        stored.map(|()| true).map_err(DomainError::from)
    }

    /// Calls the stage machine's `handle_timeout` at `at` (a reconnect window ends).
    /// A spare wake-up finds nothing to do.
    fn wake_at(&self, stage: Arn, at: UnixMillis) {
        let Some(plane) = self.me.upgrade() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            plane.clock.sleep_until(at).await;
            if let Some((slot, mut inner)) = plane.lock_existing_stage(&stage).await {
                let fx = inner.machine.handle_timeout(plane.now());
                let _ = plane.execute(&slot, &mut inner, fx).await;
                plane.release(&stage, &slot, inner).await;
            }
        });
    }

    fn count_replications(&self, writes: &[LiveWrite]) {
        for w in writes {
            match w {
                LiveWrite::StartReplication { .. } => {
                    metrics::counter!("onstage_replications_started_total").increment(1);
                    let n = self.active_replications.fetch_add(1, Ordering::Relaxed) + 1;
                    metrics::gauge!("onstage_replications_active").set(n as f64);
                }
                LiveWrite::StopReplication { .. } => {
                    metrics::counter!("onstage_replications_stopped_total").increment(1);
                    let n = self.active_replications.fetch_sub(1, Ordering::Relaxed) - 1;
                    metrics::gauge!("onstage_replications_active").set(n as f64);
                }
                _ => {}
            }
        }
    }

    // ----- slots, routes, effects --------------------------------------------

    /// The stage's slot, locked; created if the stage has none.
    async fn lock_stage(&self, stage: &Arn) -> LockedStage {
        loop {
            let slot = lock(&self.stages)
                .entry(stage.clone())
                .or_insert_with(|| {
                    Arc::new(StageSlot::new(
                        stage.clone(),
                        self.limits,
                        self.control.ids().clone(),
                    ))
                })
                .clone();
            let inner = slot.inner.clone().lock_owned().await;
            if !inner.retired {
                return (slot, inner);
            }
        }
    }

    /// The stage's slot, locked, if anyone is on the stage.
    async fn lock_existing_stage(&self, stage: &Arn) -> Option<LockedStage> {
        loop {
            let slot = lock(&self.stages).get(stage).cloned()?;
            let inner = slot.inner.clone().lock_owned().await;
            if !inner.retired {
                return Some((slot, inner));
            }
        }
    }

    /// Unlocks a slot, dropping it when its stage has gone idle.
    /// Unlocks a slot, dropping it when its stage has gone idle, then delivers what
    /// its machine had to tell other stages.
    async fn release(
        &self,
        stage: &Arn,
        slot: &Arc<StageSlot>,
        mut inner: OwnedMutexGuard<StageInner>,
    ) {
        let pending = std::mem::take(&mut inner.pending);
        if inner.machine.is_idle() {
            retire(&mut lock(&self.stages), stage, slot, &mut inner);
        }
        drop(inner);
        self.deliver(pending).await;
    }

    /// Delivers cross-stage messages, one stage lock at a time, and whatever those
    /// produce in turn. Never called with a stage locked, so no stage waits for
    /// another while holding its own.
    async fn deliver(&self, messages: Vec<CrossStage>) {
        let mut queue: VecDeque<CrossStage> = messages.into();
        while let Some(message) = queue.pop_front() {
            let target = match &message {
                CrossStage::EndReplica { destination, .. } => destination.clone(),
                CrossStage::ReplicaEnded { source, .. } => source.clone(),
            };
            let Some((slot, mut inner)) = self.lock_existing_stage(&target).await else {
                continue;
            };
            let now = self.now();
            let fx = match &message {
                CrossStage::EndReplica {
                    source,
                    participant_id,
                    ..
                } => inner.machine.end_replica(participant_id, source, now),
                CrossStage::ReplicaEnded {
                    destination,
                    participant_id,
                    reason,
                    ..
                } => inner
                    .machine
                    .replication_ended(participant_id, destination, *reason, now),
            };
            let _ = self.execute(&slot, &mut inner, fx).await;
            queue.extend(std::mem::take(&mut inner.pending));
            if inner.machine.is_idle() {
                retire(&mut lock(&self.stages), &target, &slot, &mut inner);
            }
        }
    }

    fn live_stage_by_id(&self, stage_id: &str) -> Option<Arn> {
        lock(&self.stages)
            .keys()
            .find(|arn| arn.id == stage_id)
            .cloned()
    }

    /// Gives a new media connection its WHIP resource id and routes its peer; returns
    /// a close the media plane reported before this.
    fn register(
        &self,
        stage: &Arn,
        conn: ConnectionId,
        peer: PeerId,
    ) -> (String, Option<CloseCause>) {
        let resource_id: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let mut routes = lock(&self.routes);
        routes
            .resources
            .insert(resource_id.clone(), (stage.clone(), conn));
        routes.resource_of.insert(conn, resource_id.clone());
        routes.peers.insert(peer, stage.clone());
        let early = routes.early_closes.remove(&peer).map(|(cause, _)| cause);
        (resource_id, early)
    }

    /// Carries out a machine's effects: media first (cut at once), then events
    /// sockets, routes, the store, and the new STAGE_STATE.
    async fn execute(
        &self,
        slot: &StageSlot,
        inner: &mut StageInner,
        fx: Effects,
    ) -> Result<(), StoreError> {
        for peer in &fx.close_peers {
            self.media.close_peer(*peer);
        }
        for source in &fx.close_sources {
            self.media.close_source(*source);
        }
        for source in &fx.released_feeds {
            self.feeds.close(*source);
        }
        for (conn, why) in fx.close_events {
            if let Some(close) = inner.events_sockets.remove(&conn) {
                let _ = close.send(why);
            }
        }
        if !fx.ended.is_empty() {
            let mut routes = lock(&self.routes);
            for (conn, peer) in &fx.ended {
                inner.events_sockets.remove(conn);
                if let Some(resource_id) = routes.resource_of.remove(conn) {
                    routes.resources.remove(&resource_id);
                }
                if let Some(peer) = peer {
                    routes.peers.remove(peer);
                }
            }
        }
        inner.pending.extend(fx.cross_stage);
        if let Some(at) = fx.wake_at {
            self.wake_at(inner.machine.stage().clone(), at);
        }
        self.count_replications(&fx.writes);
        let stored = if fx.writes.is_empty() {
            Ok(())
        } else {
            self.control
                .store()
                .write_live(inner.machine.stage(), &fx.writes)
                .await
        };
        if let Err(e) = &stored {
            tracing::error!(stage = %inner.machine.stage(), error = %e, writes = ?fx.writes, "could not record what happened on a stage");
        } else if let Some(recordings) = self.recordings.get() {
            self.recording_effects(recordings, inner, &fx.writes).await;
        }
        let snapshot = inner.machine.snapshot();
        slot.state.send_if_modified(|current| {
            if **current == snapshot {
                false
            } else {
                *current = Arc::new(snapshot);
                true
            }
        });
        stored
    }
}

impl LivePlane {
    /// Publishes that started and stopped, for the recordings (after the store has
    /// the participants' records).
    async fn recording_effects(
        &self,
        recordings: &Recordings,
        inner: &StageInner,
        writes: &[LiveWrite],
    ) {
        let stage = inner.machine.stage();
        for write in writes {
            let LiveWrite::AppendEvent { session_id, event } = write else {
                continue;
            };
            let pid = &event.participant_id;
            match event.name {
                EventName::PublishStarted => {
                    if let Some(source) = inner.machine.publishing_source(pid) {
                        let replica = inner.machine.is_replica(pid);
                        recordings
                            .publish_started(stage, session_id, pid, source, replica)
                            .await;
                    }
                }
                EventName::PublishStopped => recordings.publish_stopped(stage, pid),
                _ => {}
            }
        }
    }
}

fn retire(
    stages: &mut HashMap<Arn, Arc<StageSlot>>,
    stage: &Arn,
    slot: &Arc<StageSlot>,
    inner: &mut StageInner,
) {
    if stages.get(stage).is_some_and(|s| Arc::ptr_eq(s, slot)) {
        stages.remove(stage);
    }
    inner.retired = true;
}

impl StageSlot {
    fn new(stage: Arn, limits: StageLimits, ids: Arc<dyn IdSource>) -> Self {
        let machine = StageMachine::new(stage, limits, ids);
        let (state, _) = watch::channel(Arc::new(machine.snapshot()));
        StageSlot {
            inner: Arc::new(Mutex::new(StageInner {
                machine,
                events_sockets: HashMap::new(),
                pending: Vec::new(),
                retired: false,
            })),
            state,
        }
    }
}

impl Routes {
    fn remember_early_close(&mut self, peer: PeerId, cause: CloseCause, now: UnixMillis) {
        if self.early_closes.len() >= 256 {
            self.early_closes
                .retain(|_, (_, at)| now.saturating_sub(*at) < EARLY_CLOSE_MEMORY_MS);
        }
        self.early_closes.insert(peer, (cause, now));
    }
}

fn joiner(verified: &VerifiedToken, user_agent: Option<&str>) -> Joiner {
    Joiner {
        participant_id: verified.claims.jti.clone(),
        user_id: verified.claims.user_id.clone(),
        attributes: verified.claims.attributes.clone().unwrap_or_default(),
        capabilities: verified.claims.capabilities,
        client: client::from_user_agent(user_agent),
    }
}

/// Runs an operation on its own task, so that it completes even if the caller
/// (an HTTP request) is dropped.
async fn run_detached<T: Send + 'static>(
    op: impl Future<Output = Result<T, Refusal>> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::spawn(op).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "a live-plane operation failed");
            Err(Refusal::internal("internal error"))
        }
    }
}

#[async_trait]
impl LiveStages for LivePlane {
    async fn disconnect_participant(
        &self,
        stage: &Arn,
        participant_id: &str,
        reason: Option<&str>,
    ) -> Result<bool, DomainError> {
        let plane = self
            .me
            .upgrade()
            .ok_or_else(|| DomainError::Internal("the live plane has stopped".into()))?;
        let (stage, participant_id, reason) = (
            stage.clone(),
            participant_id.to_owned(),
            reason.map(str::to_owned),
        );
        let outcome = tokio::spawn(async move {
            let Some((slot, mut inner)) = plane.lock_existing_stage(&stage).await else {
                return Ok(false);
            };
            let Some(fx) = inner
                .machine
                .disconnect(&participant_id, reason.as_deref(), plane.now())
            else {
                plane.release(&stage, &slot, inner).await;
                return Ok(false);
            };
            tracing::info!(%stage, participant = %participant_id, ?reason, "disconnecting a participant");
            let stored = plane.execute(&slot, &mut inner, fx).await;
            plane.release(&stage, &slot, inner).await;
            stored.map(|()| true).map_err(DomainError::from)
        })
        .await;
        outcome.map_err(|e| DomainError::Internal(format!("disconnecting failed: {e}")))?
    }

    async fn revoke_token(&self, account: &Account, token_id: &str) -> Result<(), DomainError> {
        let plane = self
            .me
            .upgrade()
            .ok_or_else(|| DomainError::Internal("the live plane has stopped".into()))?;
        let stages: Vec<Arn> = lock(&self.stages)
            .keys()
            .filter(|arn| arn.is_in(account))
            .cloned()
            .collect();
        let token_id = token_id.to_owned();
        let outcome = tokio::spawn(async move {
            let mut stored = Ok(());
            for stage in stages {
                let Some((slot, mut inner)) = plane.lock_existing_stage(&stage).await else {
                    continue;
                };
                if let Some(fx) = inner.machine.token_revoked(&token_id, plane.now()) {
                    tracing::info!(%stage, token = %token_id, "closing a revoked token's connections");
                    let result = plane.execute(&slot, &mut inner, fx).await;
                    stored = stored.and(result);
                }
                plane.release(&stage, &slot, inner).await;
            }
            stored.map_err(DomainError::from)
        })
        .await;
        outcome.map_err(|e| DomainError::Internal(format!("revoking failed: {e}")))?
    }

    async fn stage_deletion_started(&self, stage: &Arn) {
        let Some(plane) = self.me.upgrade() else {
            return;
        };
        let stage = stage.clone();
        let _ = tokio::spawn(async move {
            let (slot, mut inner) = plane.lock_stage(&stage).await;
            let fx = inner
                .machine
                .close_stage(EventsClose::StageDeleted, true, plane.now());
            let _ = plane.execute(&slot, &mut inner, fx).await;
            // Replications into and out of the stage stop in the other stages too
            // before DeleteStage answers.
            let pending = std::mem::take(&mut inner.pending);
            drop(inner);
            plane.deliver(pending).await;
        })
        .await;
    }

    async fn start_replication(&self, start: ReplicationStart) -> Result<(), DomainError> {
        let plane = self
            .me
            .upgrade()
            .ok_or_else(|| DomainError::Internal("the live plane has stopped".into()))?;
        tokio::spawn(async move { plane.start_replication_now(start).await })
            .await
            .map_err(|e| DomainError::Internal(format!("starting the replication failed: {e}")))?
    }

    async fn stop_replication(
        &self,
        source: &Arn,
        destination: &Arn,
        participant_id: &str,
    ) -> Result<bool, DomainError> {
        let plane = self
            .me
            .upgrade()
            .ok_or_else(|| DomainError::Internal("the live plane has stopped".into()))?;
        let (source, destination, participant_id) = (
            source.clone(),
            destination.clone(),
            participant_id.to_owned(),
        );
        tokio::spawn(async move {
            plane
                .stop_replication_now(&source, &destination, &participant_id)
                .await
        })
        .await
        .map_err(|e| DomainError::Internal(format!("stopping the replication failed: {e}")))?
    }

    async fn stage_deletion_finished(&self, stage: &Arn) {
        let Some(plane) = self.me.upgrade() else {
            return;
        };
        let stage = stage.clone();
        let _ = tokio::spawn(async move {
            if let Some((slot, mut inner)) = plane.lock_existing_stage(&stage).await {
                retire(&mut lock(&plane.stages), &stage, &slot, &mut inner);
            }
        })
        .await;
    }
}

// ----- ingest (BEHAVIOUR §10) ------------------------------------------------------

/// An RTMP(S) stream on its stage: the ingest participant's publish. Its feeder
/// takes the stream's packets; [`LivePlane::ingest_ended`] ends it.
pub struct IngestStream {
    pub stage: Arn,
    pub participant_id: String,
    pub configuration: Arn,
    /// Shared with whatever produces packets off the caller's task (the audio
    /// transcoder's thread); let go of everywhere when the stream ends.
    pub feeder: Arc<dyn SourceFeeder>,
    conn: ConnectionId,
}

impl LivePlane {
    /// An encoder's stream was accepted for `config` (which has a stage): its
    /// participant joins the stage's running session (or a new one) and publishes
    /// into a new source fed by the returned stream (`JOINED`,
    /// `PUBLISH_STARTED`, the record with `protocol` and
    /// `ingestConfigurationArn`), and the configuration is `ACTIVE`. Refused as a
    /// WHIP publish would be (a revoked participant id, the publisher quota, the
    /// stage being deleted), with the error event recorded.
    pub async fn ingest_started(
        &self,
        config: &IngestConfiguration,
        protocol: ParticipantProtocol,
    ) -> Result<IngestStream, Refusal> {
        let stage = config
            .stage_arn
            .as_deref()
            .and_then(Arn::parse)
            .ok_or_else(|| Refusal::internal("the ingest configuration has no stage"))?;
        let joiner = Joiner {
            participant_id: config.participant_id.clone(),
            user_id: config.user_id.clone(),
            attributes: config.attributes.clone(),
            capabilities: Capabilities {
                allow_publish: true,
                allow_subscribe: false,
            },
            client: ClientAttributes::default(),
        };
        let origin = IngestOrigin {
            protocol,
            configuration_arn: config.arn.to_string(),
        };
        let (slot, mut inner) = self.lock_stage(&stage).await;
        let result = self.ingest_locked(&slot, &mut inner, &joiner, origin).await;
        let session = inner.machine.session_id().map(str::to_owned);
        self.release(&stage, &slot, inner).await;
        let (conn, feeder) = result?;
        if let Some(session) = session
            && let Err(e) = self
                .control
                .ingest_stream_changed(&config.arn, Some((&stage, &session)), self.now())
                .await
        {
            tracing::error!(configuration = %config.arn, error = %e, "could not record the ingest stream as live");
        }
        Ok(IngestStream {
            stage,
            participant_id: joiner.participant_id,
            configuration: config.arn.clone(),
            feeder: Arc::from(feeder),
            conn,
        })
    }

    async fn ingest_locked(
        &self,
        slot: &StageSlot,
        inner: &mut StageInner,
        joiner: &Joiner,
        origin: IngestOrigin,
    ) -> Result<(ConnectionId, Box<dyn SourceFeeder>), Refusal> {
        let pid = &joiner.participant_id;
        let revoked = self
            .control
            .store()
            .is_participant_revoked(inner.machine.stage(), pid)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not check revocations");
                Refusal::internal("internal error")
            });
        let admission =
            revoked.and_then(|revoked| inner.machine.admit(joiner, Action::Publish, None, revoked));
        let source = match admission {
            Ok(Admission::Publish { source }) => source,
            Ok(_) => return Err(Refusal::internal("not a publish admission")),
            Err(refusal) => {
                return Err(self
                    .refuse_locked(slot, inner, pid, Action::Publish, None, refusal)
                    .await);
            }
        };
        let (source, fresh) = match source {
            Some(existing) => (existing, false),
            None => (self.media.new_source(), true),
        };
        let (peer, feeder) = match self.media.feed(source) {
            Ok(fed) => fed,
            Err(refused) => {
                if fresh {
                    self.media.close_source(source);
                }
                let refusal = Refusal::from_media(refused);
                return Err(self
                    .refuse_locked(slot, inner, pid, Action::Publish, None, refusal)
                    .await);
            }
        };
        let conn = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let fx = inner
            .machine
            .ingest_accepted(joiner, origin, conn, peer, source, self.now());
        let stage = inner.machine.stage().clone();
        let (_resource, early_close) = self.register(&stage, conn, peer);
        if self.execute(slot, inner, fx).await.is_err() {
            return Err(self.unrecorded(slot, inner, conn).await);
        }
        if let Some(cause) = early_close {
            let fx = inner.machine.peer_closed(peer, cause, self.now());
            let _ = self.execute(slot, inner, fx).await;
        }
        Ok((conn, feeder))
    }

    /// The stream ended: the encoder stopped (`error` None) or it was cut for
    /// `error` (recorded as a `PUBLISH_ERROR` with that code first). The
    /// participant stops publishing and leaves as a WHIP publisher would (a
    /// replicated one keeps its source for the reconnect window), and the
    /// configuration is `INACTIVE`. A stream the stage already ended
    /// (DisconnectParticipant, DeleteStage) only updates the configuration.
    pub async fn ingest_ended(&self, stream: IngestStream, error: Option<EventErrorCode>) {
        if let Some((slot, mut inner)) = self.lock_existing_stage(&stream.stage).await {
            let now = self.now();
            if let Some(code) = error
                && inner.machine.is_connected(&stream.participant_id)
            {
                let fx = inner
                    .machine
                    .ingest_error(&stream.participant_id, code, now);
                let _ = self.execute(&slot, &mut inner, fx).await;
            }
            let fx = inner.machine.connection_closed(stream.conn, now);
            let _ = self.execute(&slot, &mut inner, fx).await;
            self.release(&stream.stage, &slot, inner).await;
        }
        // Let go of the feeder once the machine has, so its close is an echo.
        drop(stream.feeder);
        if let Err(e) = self
            .control
            .ingest_stream_changed(&stream.configuration, None, self.now())
            .await
        {
            tracing::error!(configuration = %stream.configuration, error = %e, "could not record the ingest stream's end");
        }
    }

    /// An encoder was refused after its key named `configuration`
    /// (plain RTMP where RTMPS is required, the key already live): a
    /// `PUBLISH_ERROR` with `code` for its participant, when its stage has a
    /// running session (DECISIONS.md).
    pub async fn ingest_refused(&self, configuration: &Arn, code: EventErrorCode) {
        let account = Account {
            id: configuration.account.clone(),
            region: configuration.region.clone(),
        };
        let Ok(config) = self
            .control
            .get_ingest_configuration(&account, &configuration.to_string())
            .await
        else {
            return;
        };
        let Some(stage) = config.stage_arn.as_deref().and_then(Arn::parse) else {
            return;
        };
        let Some((slot, mut inner)) = self.lock_existing_stage(&stage).await else {
            return;
        };
        let fx = inner
            .machine
            .ingest_error(&config.participant_id, code, self.now());
        let _ = self.execute(&slot, &mut inner, fx).await;
        self.release(&stage, &slot, inner).await;
    }
}
