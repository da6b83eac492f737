//! The rules of one stage as a state machine, without I/O (BEHAVIOUR §4–§6).
//!
//! A participant is on the stage while it holds at least one connection: a publish,
//! subscribes (one per publisher) and an events socket — or, for a replica, while
//! its replication runs. Its first accepted connection joins it (`JOINED`), its last
//! one closing makes it leave (`LEFT`). The first participant to join an idle stage
//! starts a session; the last to leave ends it. A new connection of a kind the
//! participant already holds replaces the old one at once. A publisher that stops
//! takes its subscribers' subscriptions with it.
//!
//! Accepting a publish or a subscribe needs an SDP answer from the media plane, so it
//! takes two steps: [`StageMachine::admit`] says whether the connection may happen
//! (and which media source it uses), then, once the media plane has answered, the
//! `*_accepted` method records it. The driver holds the stage's lock across both.
//!
//! **Replication** (BEHAVIOUR §6) touches two stages, so each machine keeps its own side:
//!
//! - the *source* stage keeps, per replicated participant, its active replications
//!   (destination, destination session, reconnect window) and the media source they
//!   read. When the publisher drops, the source is kept for the longest window still
//!   running: replications with window 0 stop at once, the others stop when their
//!   window passes ([`StageMachine::handle_timeout`]) unless the participant publishes
//!   again first, into the same source. While such a window runs the session stays
//!   open and the slot counts toward the stage's publishers.
//! - the *destination* stage has the replica as a participant of its own, with no
//!   connection: its publishing slot is the source's media source. Subscribing to it
//!   is subscribing to that source.
//!
//! What one side decides for the other leaves as [`CrossStage`] messages in the
//! effects, which the driver delivers to the other stage's machine after it has let
//! go of this one (so no stage ever waits for another while holding its own lock).
//!
//! Every input returns [`Effects`]; the machine never touches the store, the media
//! plane or a socket itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::DomainError;
use std::sync::Arc;

use crate::ids::{Arn, IdSource};
use crate::media::{CloseCause, PeerId, SourceId};
use crate::model::{
    Attributes, ClientAttributes, EventErrorCode, EventName, Participant, ParticipantEvent,
    ParticipantProtocol, ParticipantState, RecordingState, ReplicationState, ReplicationType,
    StopReason,
};
use crate::store::LiveWrite;
use crate::time_fmt::UnixMillis;
use crate::token::TokenRejection;

use super::{
    Action, Joiner, MAX_REPLICATIONS_PER_PARTICIPANT, Refusal, RefusalKind, StageState,
    StageStateParticipant,
};

/// One accepted connection (a publish, a subscribe or an events socket), unique
/// within the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Why the server closes an events socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsClose {
    /// The participant opened another events socket.
    Replaced,
    /// DisconnectParticipant, with its reason.
    Disconnected(Option<String>),
    /// RevokeConnectionToken revoked the token the socket was opened with.
    TokenRevoked,
    /// The stage was deleted.
    StageDeleted,
    /// The server is shutting down.
    ServerShutdown,
}

/// What the stage's limits are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageLimits {
    pub max_publishers: usize,
    pub max_subscribers: usize,
}

/// What an accepted connection will use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Publish into `source` when the participant already publishes, or returns
    /// within a replication's reconnect window (the new peer feeds the same source,
    /// so its subscribers and replicas keep going), or into a new source when `None`.
    Publish {
        source: Option<SourceId>,
    },
    /// Subscribe to the publisher's source (for a replica: the source it replicates).
    Subscribe {
        source: SourceId,
    },
    Events,
}

/// What one stage's machine tells another's, delivered by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrossStage {
    /// From a source stage: the replication into `destination` stopped, so the
    /// replica there must go ([`StageMachine::end_replica`]).
    EndReplica {
        destination: Arn,
        source: Arn,
        participant_id: String,
    },
    /// From a destination stage: the replica went away on the destination's side
    /// (disconnected there, the stage deleted), so the source records the
    /// replication as stopped ([`StageMachine::replication_ended`]).
    ReplicaEnded {
        source: Arn,
        destination: Arn,
        participant_id: String,
        reason: StopReason,
    },
}

/// What the driver must do after an input, in this order: cut media, close events
/// sockets, forget ended connections, write the store, then (after letting go of
/// the stage) deliver the cross-stage messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub close_peers: Vec<PeerId>,
    pub close_sources: Vec<SourceId>,
    pub close_events: Vec<(ConnectionId, EventsClose)>,
    /// Connections that no longer exist, with their peer where they had one.
    pub ended: Vec<(ConnectionId, Option<PeerId>)>,
    /// For [`crate::Store::write_live`], one batch.
    pub writes: Vec<LiveWrite>,
    /// Sources that replicas of this (destination) stage read and no longer need:
    /// for the [`super::ReplicaFeeds`] that provided them.
    pub released_feeds: Vec<SourceId>,
    /// For other stages' machines.
    pub cross_stage: Vec<CrossStage>,
    /// Call [`StageMachine::handle_timeout`] at this time (a reconnect window ends).
    pub wake_at: Option<UnixMillis>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        *self == Effects::default()
    }

    /// The names of the events written, in order (for logs and tests).
    pub fn event_names(&self) -> Vec<&'static str> {
        self.writes
            .iter()
            .filter_map(|w| match w {
                LiveWrite::AppendEvent { event, .. } => Some(event.name.as_str()),
                _ => None,
            })
            .collect()
    }

    fn wake_no_later_than(&mut self, at: UnixMillis) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// A participant's publishing slot: the media source its subscribers read, and the
/// peer feeding it now.
#[derive(Clone, Copy, Debug)]
struct Publishing {
    source: SourceId,
    conn: ConnectionId,
    peer: PeerId,
}

#[derive(Clone, Copy, Debug)]
struct Subscription {
    conn: ConnectionId,
    peer: PeerId,
}

/// A replica's publishing slot in its destination stage.
#[derive(Clone, Debug)]
struct ReplicaOf {
    /// The source's media, as the replica feed made it available here.
    source: SourceId,
    source_stage: Arn,
    source_session: String,
}

#[derive(Clone, Debug)]
struct OnStage {
    /// Join order, for STAGE_STATE.
    order: u64,
    user_id: Option<String>,
    attributes: Attributes,
    client: ClientAttributes,
    first_join_time: UnixMillis,
    /// Published since it joined this time (the store keeps "ever in the session").
    published: bool,
    publish: Option<Publishing>,
    /// By publisher id.
    subscriptions: BTreeMap<String, Subscription>,
    events: Option<ConnectionId>,
    /// Set for a replica of another stage's participant (it holds no connection).
    replica: Option<ReplicaOf>,
    /// What its client last said about its media (`SET_STATE`).
    audio_muted: bool,
    video_stopped: bool,
}

impl OnStage {
    fn has_connections(&self) -> bool {
        self.publish.is_some()
            || !self.subscriptions.is_empty()
            || self.events.is_some()
            || self.replica.is_some()
    }

    fn source(&self) -> Option<SourceId> {
        self.publish
            .map(|p| p.source)
            .or_else(|| self.replica.as_ref().map(|r| r.source))
    }
}

/// One active replication out of this stage.
#[derive(Clone, Debug)]
struct Outgoing {
    destination_session: String,
    window_ms: UnixMillis,
}

/// A participant of this stage with active replications (the source side).
#[derive(Clone, Debug)]
struct Replicated {
    /// The media source the replicas read: the participant's publishing source.
    source: SourceId,
    /// Set while the publisher is gone (dropped or unpublished): each replication's
    /// window counts from here, and the source is kept for the publisher's return.
    away_since: Option<UnixMillis>,
    /// By destination stage.
    active: BTreeMap<Arn, Outgoing>,
}

impl Replicated {
    fn next_deadline(&self) -> Option<UnixMillis> {
        let away = self.away_since?;
        self.active.values().map(|r| away + r.window_ms).min()
    }
}

/// What [`check_replication`] found out about the participant to replicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationOrigin {
    /// The media source the participant publishes into.
    pub source: SourceId,
    /// The source stage's running session.
    pub session_id: String,
    pub user_id: Option<String>,
    /// The token's attributes.
    pub attributes: Attributes,
}

/// A replica about to appear in its destination stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaJoin {
    pub participant_id: String,
    pub user_id: Option<String>,
    /// The token's attributes overlaid with the request's.
    pub attributes: Attributes,
    /// The source's media as available on the destination's side.
    pub source: SourceId,
    pub source_stage: Arn,
    pub source_session: String,
}

/// The live state of one stage.
#[derive(Debug)]
pub struct StageMachine {
    stage: Arn,
    limits: StageLimits,
    /// Where a new session's id comes from.
    ids: Arc<dyn IdSource>,
    session: Option<String>,
    participants: BTreeMap<String, OnStage>,
    /// Every live connection: whose, and of what kind.
    connections: HashMap<ConnectionId, (String, Action)>,
    /// Peers of live publish and subscribe connections.
    peers: HashMap<PeerId, ConnectionId>,
    /// Participants with active replications out of this stage.
    replicated: BTreeMap<String, Replicated>,
    /// Participants that were a replication's source in this session: their record
    /// says `SOURCE` for the rest of it.
    sources_in_session: BTreeSet<String>,
    next_order: u64,
    /// Set when the stage is being deleted: everything is refused.
    closed: bool,
    /// Participants published by an RTMP(S) encoder (BEHAVIOUR §10), while on the stage.
    ingest: HashMap<String, IngestOrigin>,
}

/// Where an ingest participant's stream comes from: its record says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestOrigin {
    pub protocol: ParticipantProtocol,
    pub configuration_arn: String,
}

// ----- ingest (BEHAVIOUR §10) ------------------------------------------------------

impl StageMachine {
    /// An RTMP(S) stream accepted into the slot [`StageMachine::admit`] gave its
    /// configuration's participant: a publish like a WHIP publisher's (`JOINED`,
    /// `PUBLISH_STARTED`), whose feeder `peer` is not a WebRTC peer, recorded with
    /// its protocol and configuration.
    pub fn ingest_accepted(
        &mut self,
        joiner: &Joiner,
        origin: IngestOrigin,
        conn: ConnectionId,
        peer: PeerId,
        source: SourceId,
        now: UnixMillis,
    ) -> Effects {
        self.ingest.insert(joiner.participant_id.clone(), origin);
        self.publish_accepted(joiner, conn, peer, source, now)
    }

    /// An ingest stream failed or was cut with `code` (a B-frame, a limit, a key
    /// refused): a `PUBLISH_ERROR` with the code, in the running session only (as
    /// any refusal; on an idle stage the server's log has it).
    pub fn ingest_error(
        &self,
        participant_id: &str,
        code: EventErrorCode,
        now: UnixMillis,
    ) -> Effects {
        let mut fx = Effects::default();
        if let Some(session_id) = &self.session {
            let mut event = self.event(participant_id, EventName::PublishError, None, now);
            event.error_code = Some(code);
            fx.writes.push(LiveWrite::AppendEvent {
                session_id: session_id.clone(),
                event,
            });
        }
        fx
    }
}

#[cfg(test)]
mod ingest_tests {
    use super::*;
    use crate::ids::{Account, ResourceKind, SequentialIds};
    use crate::token::Capabilities;

    const T0: UnixMillis = 1_700_000_000_000;

    fn stage() -> StageMachine {
        let account = Account {
            id: "000000000000".into(),
            region: "us-east-1".into(),
        };
        StageMachine::new(
            Arn::new(&account, ResourceKind::Stage, "stageINGEST1"),
            StageLimits {
                max_publishers: 12,
                max_subscribers: 10,
            },
            Arc::new(SequentialIds::new()),
        )
    }

    fn encoder() -> Joiner {
        Joiner {
            participant_id: "ingestPid".into(),
            user_id: Some("studio".into()),
            attributes: [("room".to_owned(), "a".to_owned())].into(),
            capabilities: Capabilities {
                allow_publish: true,
                allow_subscribe: false,
            },
            client: ClientAttributes::default(),
        }
    }

    fn records(fx: &Effects) -> Vec<Participant> {
        fx.writes
            .iter()
            .filter_map(|w| match w {
                LiveWrite::UpsertParticipant { participant, .. } => Some((**participant).clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_ingest_stream_joins_as_a_publisher_recorded_with_its_protocol_and_configuration() {
        let mut m = stage();
        let j = encoder();
        let Ok(Admission::Publish { source: None }) = m.admit(&j, Action::Publish, None, false)
        else {
            panic!("a fresh publish");
        };
        let origin = IngestOrigin {
            protocol: ParticipantProtocol::Rtmps,
            configuration_arn: "arn:aws:ivs:us-east-1:000000000000:ingest-configuration/c1".into(),
        };
        let fx = m.ingest_accepted(
            &j,
            origin.clone(),
            ConnectionId(1),
            PeerId(7),
            SourceId(3),
            T0,
        );
        assert_eq!(fx.event_names(), ["JOINED", "PUBLISH_STARTED"]);
        for r in records(&fx) {
            assert_eq!(r.protocol, ParticipantProtocol::Rtmps);
            assert_eq!(
                r.ingest_configuration_arn.as_deref(),
                Some(origin.configuration_arn.as_str())
            );
            assert_eq!(r.user_id.as_deref(), Some("studio"));
        }
        assert_eq!(m.publishing_source("ingestPid"), Some(SourceId(3)));

        // Cut for a B-frame: the error event, then the publish ends as any.
        let fx = m.ingest_error("ingestPid", EventErrorCode::BFramePresent, T0 + 10);
        assert_eq!(fx.event_names(), ["PUBLISH_ERROR"]);
        let LiveWrite::AppendEvent { event, .. } = &fx.writes[0] else {
            panic!("an event");
        };
        assert_eq!(event.error_code, Some(EventErrorCode::BFramePresent));
        let fx = m.connection_closed(ConnectionId(1), T0 + 10);
        assert_eq!(fx.event_names(), ["PUBLISH_STOPPED", "LEFT"]);
        assert_eq!(fx.close_sources, vec![SourceId(3)]);
        let left = records(&fx);
        assert_eq!(
            left.last().map(|r| r.protocol),
            Some(ParticipantProtocol::Rtmps)
        );
        assert!(m.is_idle());

        // The same participant id publishing later over WHIP is recorded as WHIP.
        let fx = m.publish_accepted(&j, ConnectionId(2), PeerId(8), SourceId(4), T0 + 20);
        assert!(records(&fx).iter().all(
            |r| r.protocol == ParticipantProtocol::Whip && r.ingest_configuration_arn.is_none()
        ));
    }

    #[test]
    fn an_ingest_error_on_an_idle_stage_records_nothing() {
        let m = stage();
        assert!(
            m.ingest_error("ingestPid", EventErrorCode::InvalidProtocol, T0)
                .is_empty()
        );
    }
}

/// Checks BEHAVIOUR §6's preconditions 3–5 of StartParticipantReplication, in order, on
/// the two stages' machines (1 and 2 are the control plane's). The destination may
/// be idle.
pub fn check_replication(
    source: &StageMachine,
    destination: &StageMachine,
    participant_id: &str,
) -> Result<ReplicationOrigin, DomainError> {
    let pid = participant_id;
    let (src, dst) = (&source.stage, &destination.stage);
    if source.closed {
        return Err(DomainError::NotFound(format!("stage {src} does not exist")));
    }
    if destination.closed {
        return Err(DomainError::NotFound(format!("stage {dst} does not exist")));
    }
    // 3. Connected and publishing (a replica is, so that 4 can name it).
    let (on_stage, session_id) = match (source.participants.get(pid), &source.session) {
        (Some(p), Some(session)) if p.source().is_some() => (p, session),
        _ => {
            return Err(DomainError::Conflict(format!(
                "participant {pid} is not publishing in {src}"
            )));
        }
    };
    // 4. Not replicated there yet; not a replica itself.
    let replicated = source.replicated.get(pid);
    if replicated.is_some_and(|r| r.active.contains_key(dst)) {
        return Err(DomainError::Conflict(format!(
            "participant {pid} is already replicated from {src} to {dst}"
        )));
    }
    if on_stage.replica.is_some() {
        return Err(DomainError::Validation(format!(
            "participant {pid} is a replica in {src}: a replica cannot be replicated again"
        )));
    }
    if destination.participants.contains_key(pid) {
        return Err(DomainError::Conflict(format!(
            "participant {pid} is already a participant of {dst}"
        )));
    }
    // 5. Quotas.
    if replicated.is_some_and(|r| r.active.len() >= MAX_REPLICATIONS_PER_PARTICIPANT) {
        return Err(DomainError::QuotaExceeded(format!(
            "participant {pid} already has {MAX_REPLICATIONS_PER_PARTICIPANT} active replications, the most it can have"
        )));
    }
    if destination.publisher_count() >= destination.limits.max_publishers {
        return Err(DomainError::QuotaExceeded(format!(
            "stage {dst} already has {} publishers, the most it can have (a replica counts as one)",
            destination.limits.max_publishers
        )));
    }
    let Some(source_id) = on_stage.publish.map(|p| p.source) else {
        return Err(DomainError::Conflict(format!(
            "participant {pid} is not publishing in {src}"
        )));
    };
    Ok(ReplicationOrigin {
        source: source_id,
        session_id: session_id.clone(),
        user_id: on_stage.user_id.clone(),
        attributes: on_stage.attributes.clone(),
    })
}

impl StageMachine {
    pub fn new(stage: Arn, limits: StageLimits, ids: Arc<dyn IdSource>) -> Self {
        StageMachine {
            stage,
            limits,
            ids,
            session: None,
            participants: BTreeMap::new(),
            connections: HashMap::new(),
            peers: HashMap::new(),
            replicated: BTreeMap::new(),
            sources_in_session: BTreeSet::new(),
            next_order: 0,
            closed: false,
            ingest: HashMap::new(),
        }
    }

    pub fn stage(&self) -> &Arn {
        &self.stage
    }

    /// The running session, if anyone is on the stage (or a reconnect window holds it).
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Nobody is on the stage and it is not being deleted: the machine can go.
    pub fn is_idle(&self) -> bool {
        self.participants.is_empty()
            && self.session.is_none()
            && !self.closed
            && self.replicated.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn is_connected(&self, participant_id: &str) -> bool {
        self.participants.contains_key(participant_id)
    }

    /// Whether the participant is a replica on this stage.
    /// The media source the participant publishes to now (its own, or for a
    /// replica the source it reads), if it publishes.
    pub fn publishing_source(&self, participant_id: &str) -> Option<SourceId> {
        let p = self.participants.get(participant_id)?;
        p.publish
            .map(|publishing| publishing.source)
            .or_else(|| p.replica.as_ref().map(|r| r.source))
    }

    pub fn is_replica(&self, participant_id: &str) -> bool {
        self.participants
            .get(participant_id)
            .is_some_and(|p| p.replica.is_some())
    }

    /// The stages this participant is replicated into now.
    pub fn replication_destinations(&self, participant_id: &str) -> Vec<Arn> {
        self.replicated
            .get(participant_id)
            .map(|r| r.active.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Publishing slots taken: publishers, replicas, and publishers inside a
    /// reconnect window (their slot is kept for their return).
    pub fn publisher_count(&self) -> usize {
        let on_stage = self
            .participants
            .values()
            .filter(|p| p.source().is_some())
            .count();
        let away = self
            .replicated
            .values()
            .filter(|r| r.away_since.is_some())
            .count();
        on_stage + away
    }

    /// Participants holding at least one subscribe.
    pub fn subscriber_count(&self) -> usize {
        self.participants
            .values()
            .filter(|p| !p.subscriptions.is_empty())
            .count()
    }

    /// Whether the peer belongs to a live connection of this stage.
    pub fn has_peer(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// When [`StageMachine::handle_timeout`] next has something to do.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.replicated
            .values()
            .filter_map(Replicated::next_deadline)
            .min()
    }

    pub fn snapshot(&self) -> StageState {
        let mut on_stage: Vec<(&String, &OnStage)> = self.participants.iter().collect();
        on_stage.sort_by_key(|(_, p)| p.order);
        StageState {
            stage_id: self.stage.id.clone(),
            participants: on_stage
                .into_iter()
                .map(|(id, p)| StageStateParticipant {
                    id: id.clone(),
                    user_id: p.user_id.clone(),
                    attributes: p.attributes.clone(),
                    is_publishing: p.source().is_some(),
                    audio_muted: p.audio_muted,
                    video_stopped: p.video_stopped,
                })
                .collect(),
            rendered: Default::default(),
        }
    }

    // ----- admission ---------------------------------------------------------

    /// Whether `joiner` may open a connection for `action` (for a subscribe, to
    /// `publisher`), checked in this order: the stage still exists, the participant
    /// was not revoked (`revoked`, from the store), its id is not a replica's here,
    /// the token's capabilities, the publisher exists, the quotas.
    pub fn admit(
        &self,
        joiner: &Joiner,
        action: Action,
        publisher: Option<&str>,
        revoked: bool,
    ) -> Result<Admission, Refusal> {
        if self.closed {
            return Err(Refusal::token(TokenRejection::WrongStage(format!(
                "stage {} is being deleted",
                self.stage
            ))));
        }
        let pid = &joiner.participant_id;
        if revoked {
            return Err(Refusal::new(
                RefusalKind::Revoked,
                format!(
                    "participant {pid} was disconnected from stage {} and cannot rejoin it",
                    self.stage
                ),
            ));
        }
        let current = self.participants.get(pid);
        if current.is_some_and(|p| p.replica.is_some()) {
            return Err(Refusal::new(
                RefusalKind::ReplicaIdInUse,
                format!(
                    "participant id {pid} is in use in stage {} by a replica of another stage's participant",
                    self.stage
                ),
            ));
        }
        match action {
            Action::Events => Ok(Admission::Events),
            Action::Publish => {
                if !joiner.capabilities.allow_publish {
                    return Err(Refusal::new(
                        RefusalKind::MissingCapability,
                        format!("the token of participant {pid} does not allow publishing"),
                    ));
                }
                if let Some(publishing) = current.and_then(|p| p.publish) {
                    return Ok(Admission::Publish {
                        source: Some(publishing.source),
                    });
                }
                // Back within a reconnect window: the slot was kept.
                if let Some(r) = self.replicated.get(pid).filter(|r| r.away_since.is_some()) {
                    return Ok(Admission::Publish {
                        source: Some(r.source),
                    });
                }
                if self.publisher_count() >= self.limits.max_publishers {
                    return Err(Refusal::new(
                        RefusalKind::QuotaExceeded,
                        format!(
                            "stage {} already has {} publishers, the most it can have",
                            self.stage, self.limits.max_publishers
                        ),
                    ));
                }
                Ok(Admission::Publish { source: None })
            }
            Action::Subscribe => {
                if !joiner.capabilities.allow_subscribe {
                    return Err(Refusal::new(
                        RefusalKind::MissingCapability,
                        format!("the token of participant {pid} does not allow subscribing"),
                    ));
                }
                let publisher = publisher.unwrap_or_default();
                let Some(source) = self.participants.get(publisher).and_then(OnStage::source)
                else {
                    return Err(Refusal::new(
                        RefusalKind::PublisherNotFound,
                        format!(
                            "participant {publisher} is not publishing in stage {}",
                            self.stage
                        ),
                    ));
                };
                let already_subscribing = current.is_some_and(|p| !p.subscriptions.is_empty());
                if !already_subscribing && self.subscriber_count() >= self.limits.max_subscribers {
                    return Err(Refusal::new(
                        RefusalKind::QuotaExceeded,
                        format!(
                            "stage {} already has {} subscribers, the most it can have",
                            self.stage, self.limits.max_subscribers
                        ),
                    ));
                }
                Ok(Admission::Subscribe { source })
            }
        }
    }

    /// Records a refused connection: the error event goes into the running session;
    /// on an idle stage nothing is written (the driver logs it) and no session starts.
    /// A `SUBSCRIBE_ERROR` names the publisher asked for as its remote participant.
    pub fn refused(
        &self,
        participant_id: &str,
        action: Action,
        publisher: Option<&str>,
        refusal: &Refusal,
        now: UnixMillis,
    ) -> Effects {
        let mut fx = Effects::default();
        if let Some(session_id) = &self.session {
            let name = refusal.event_name(action);
            let remote = if name == EventName::SubscribeError {
                publisher
            } else {
                None
            };
            let mut event = self.event(participant_id, name, remote, now);
            event.error_code = Some(refusal.error_code());
            fx.writes.push(LiveWrite::AppendEvent {
                session_id: session_id.clone(),
                event,
            });
        }
        fx
    }

    // ----- accepted connections --------------------------------------------------

    /// A publish the media plane answered. When the participant already published,
    /// the new peer has replaced the old one on the same source: the old connection
    /// ends (`PUBLISH_STOPPED`) and the new one starts (`PUBLISH_STARTED`); its
    /// subscribers are undisturbed. A publisher back within a reconnect window feeds
    /// its kept source again: its replications go on.
    pub fn publish_accepted(
        &mut self,
        joiner: &Joiner,
        conn: ConnectionId,
        peer: PeerId,
        source: SourceId,
        now: UnixMillis,
    ) -> Effects {
        let mut fx = Effects::default();
        let session_id = self.join(joiner, now, &mut fx);
        let pid = joiner.participant_id.clone();
        let previous = self
            .participants
            .get_mut(&pid)
            .and_then(|p| p.publish.replace(Publishing { source, conn, peer }));
        if let Some(old) = previous {
            self.forget_connection(old.conn, Some(old.peer), &mut fx);
            fx.writes
                .push(self.append(&session_id, &pid, EventName::PublishStopped, None, now));
        }
        if let Some(r) = self.replicated.get_mut(&pid)
            && r.source == source
        {
            r.away_since = None;
        }
        self.connections
            .insert(conn, (pid.clone(), Action::Publish));
        self.peers.insert(peer, conn);
        if let Some(p) = self.participants.get_mut(&pid) {
            p.published = true;
        }
        fx.writes
            .push(self.append(&session_id, &pid, EventName::PublishStarted, None, now));
        self.write_participant(&pid, &session_id, ParticipantState::Connected, &mut fx);
        fx
    }

    /// A subscribe the media plane answered. A second subscribe to the same publisher
    /// replaces the first, whose peer is closed.
    pub fn subscribe_accepted(
        &mut self,
        joiner: &Joiner,
        publisher: &str,
        conn: ConnectionId,
        peer: PeerId,
        now: UnixMillis,
    ) -> Effects {
        let mut fx = Effects::default();
        let session_id = self.join(joiner, now, &mut fx);
        let pid = joiner.participant_id.clone();
        let previous = self.participants.get_mut(&pid).and_then(|p| {
            p.subscriptions
                .insert(publisher.to_owned(), Subscription { conn, peer })
        });
        if let Some(old) = previous {
            fx.close_peers.push(old.peer);
            self.forget_connection(old.conn, Some(old.peer), &mut fx);
            fx.writes.push(self.append(
                &session_id,
                &pid,
                EventName::SubscribeStopped,
                Some(publisher),
                now,
            ));
        }
        self.connections
            .insert(conn, (pid.clone(), Action::Subscribe));
        self.peers.insert(peer, conn);
        fx.writes.push(self.append(
            &session_id,
            &pid,
            EventName::SubscribeStarted,
            Some(publisher),
            now,
        ));
        fx
    }

    /// An events socket was accepted; a previous one of the participant is closed.
    pub fn events_opened(
        &mut self,
        joiner: &Joiner,
        conn: ConnectionId,
        now: UnixMillis,
    ) -> Effects {
        let mut fx = Effects::default();
        self.join(joiner, now, &mut fx);
        let pid = joiner.participant_id.clone();
        let previous = self
            .participants
            .get_mut(&pid)
            .and_then(|p| p.events.replace(conn));
        if let Some(old) = previous {
            fx.close_events.push((old, EventsClose::Replaced));
            self.forget_connection(old, None, &mut fx);
        }
        self.connections.insert(conn, (pid, Action::Events));
        fx
    }

    // ----- connections ending ---------------------------------------------------------

    /// The client ended a connection: DELETE on its WHIP resource, or its events
    /// socket closed. Unknown connections are ignored.
    pub fn connection_closed(&mut self, conn: ConnectionId, now: UnixMillis) -> Effects {
        let mut fx = Effects::default();
        let Some((pid, kind)) = self.connections.get(&conn).cloned() else {
            return fx;
        };
        match kind {
            Action::Publish => self.stop_publishing(&pid, now, &mut fx),
            Action::Subscribe => {
                let publisher = self.publisher_of(&pid, conn);
                if let Some(publisher) = publisher {
                    self.stop_subscription(&pid, &publisher, true, now, &mut fx);
                }
            }
            Action::Events => {
                if let Some(p) = self.participants.get_mut(&pid) {
                    p.events = None;
                }
                self.forget_connection(conn, None, &mut fx);
            }
        }
        self.leave_if_unconnected(&pid, now, &mut fx);
        fx
    }

    /// The media plane reports a peer gone (DTLS closed, ICE timed out, failed).
    /// Peers the machine already let go of (replaced, closed on request) are ignored.
    pub fn peer_closed(&mut self, peer: PeerId, cause: CloseCause, now: UnixMillis) -> Effects {
        let mut fx = Effects::default();
        let Some(conn) = self.peers.get(&peer).copied() else {
            return fx;
        };
        let Some((pid, kind)) = self.connections.get(&conn).cloned() else {
            return fx;
        };
        tracing::debug!(stage = %self.stage, participant = %pid, %peer, ?cause, "peer closed");
        match kind {
            Action::Publish => self.stop_publishing(&pid, now, &mut fx),
            Action::Subscribe => {
                if let Some(publisher) = self.publisher_of(&pid, conn) {
                    // The peer is gone already: nothing to close.
                    self.stop_subscription(&pid, &publisher, false, now, &mut fx);
                }
            }
            Action::Events => {}
        }
        self.leave_if_unconnected(&pid, now, &mut fx);
        fx
    }

    /// DisconnectParticipant: every connection of the participant ends at once, it
    /// leaves, and its id is revoked on the stage; its replications out of this stage
    /// stop at once, reconnect window or not (also while a window runs for it). For a
    /// replica: that replication stops, and nothing is revoked (the id holds no
    /// token for this stage; a later StartParticipantReplication may bring it back).
    /// `None` when the participant is neither connected nor inside a window.
    pub fn disconnect(
        &mut self,
        participant_id: &str,
        reason: Option<&str>,
        now: UnixMillis,
    ) -> Option<Effects> {
        let pid = participant_id;
        let mut fx = Effects::default();
        if self.is_replica(pid) {
            self.remove_replica(pid, Some(StopReason::ReplicaDisconnected), now, &mut fx);
            return Some(fx);
        }
        if !self.participants.contains_key(pid) && !self.replicated.contains_key(pid) {
            return None;
        }
        self.stop_all_replications(pid, StopReason::SourceDisconnected, now, &mut fx);
        if self.participants.contains_key(pid) {
            self.end_all_connections(
                pid,
                EventsClose::Disconnected(reason.map(str::to_owned)),
                now,
                &mut fx,
            );
        }
        fx.writes.push(LiveWrite::RevokeParticipant {
            participant_id: pid.to_owned(),
            reason: reason.map(str::to_owned),
            at: now,
        });
        Some(fx)
    }

    /// RevokeConnectionToken: the participant's connections end at once and it
    /// leaves, recorded as DisconnectParticipant records it, and its replications
    /// out of this stage stop — but its id is not revoked on the stage (a token with
    /// the same id issued later may connect). Replicas hold no token: `None` for
    /// them, as for a participant that is not here.
    pub fn token_revoked(&mut self, participant_id: &str, now: UnixMillis) -> Option<Effects> {
        let pid = participant_id;
        if self.is_replica(pid)
            || (!self.participants.contains_key(pid) && !self.replicated.contains_key(pid))
        {
            return None;
        }
        let mut fx = Effects::default();
        self.stop_all_replications(pid, StopReason::SourceDisconnected, now, &mut fx);
        if self.participants.contains_key(pid) {
            self.end_all_connections(pid, EventsClose::TokenRevoked, now, &mut fx);
        }
        Some(fx)
    }

    /// `SET_STATE` from the participant's client: whether its audio is muted and its
    /// video stopped. Only STAGE_STATE changes; nothing is written. `false` when
    /// nothing changed (or the participant is not here).
    pub fn client_state(
        &mut self,
        participant_id: &str,
        audio_muted: bool,
        video_stopped: bool,
    ) -> bool {
        match self.participants.get_mut(participant_id) {
            Some(p) if p.audio_muted != audio_muted || p.video_stopped != video_stopped => {
                p.audio_muted = audio_muted;
                p.video_stopped = video_stopped;
                true
            }
            _ => false,
        }
    }

    /// Token exchange: the participant now holds `joiner`'s token (same participant
    /// id and stage; the driver has checked what may not change). Its attributes are
    /// the new token's at once (`TOKEN_EXCHANGED` and the record), and a capability it
    /// lost ends what needed it: its publish without PUBLISH, its subscribes without
    /// SUBSCRIBE. `None` when the participant is not here.
    pub fn token_exchanged(&mut self, joiner: &Joiner, now: UnixMillis) -> Option<Effects> {
        let pid = joiner.participant_id.as_str();
        let session_id = self.session.clone()?;
        let p = self.participants.get_mut(pid)?;
        p.attributes.clone_from(&joiner.attributes);
        let mut fx = Effects::default();
        fx.writes
            .push(self.append(&session_id, pid, EventName::TokenExchanged, None, now));
        if !joiner.capabilities.allow_publish {
            self.stop_publishing(pid, now, &mut fx);
        }
        if !joiner.capabilities.allow_subscribe {
            let publishers: Vec<String> = self
                .participants
                .get(pid)
                .map(|p| p.subscriptions.keys().cloned().collect())
                .unwrap_or_default();
            for publisher in publishers {
                self.stop_subscription(pid, &publisher, true, now, &mut fx);
            }
        }
        self.write_participant(pid, &session_id, ParticipantState::Connected, &mut fx);
        self.leave_if_unconnected(pid, now, &mut fx);
        Some(fx)
    }

    /// The stage is being deleted (or the server stops): every replication into or
    /// out of it stops, everyone leaves, the session ends, and with
    /// `refuse_from_now` every later connection is refused.
    pub fn close_stage(
        &mut self,
        why: EventsClose,
        refuse_from_now: bool,
        now: UnixMillis,
    ) -> Effects {
        self.closed |= refuse_from_now;
        let mut fx = Effects::default();
        let (as_source, as_destination) = match why {
            EventsClose::ServerShutdown => (StopReason::ServerShutdown, StopReason::ServerShutdown),
            _ => (
                StopReason::SourceStageDeleted,
                StopReason::DestinationStageDeleted,
            ),
        };
        let sources: Vec<String> = self.replicated.keys().cloned().collect();
        for pid in sources {
            self.stop_all_replications(&pid, as_source, now, &mut fx);
        }
        let mut everyone: Vec<(u64, String)> = self
            .participants
            .iter()
            .map(|(id, p)| (p.order, id.clone()))
            .collect();
        everyone.sort();
        for (_, pid) in everyone {
            if self.is_replica(&pid) {
                self.remove_replica(&pid, Some(as_destination), now, &mut fx);
            } else if self.participants.contains_key(&pid) {
                self.end_all_connections(&pid, why.clone(), now, &mut fx);
            }
        }
        fx
    }

    // ----- replication -----------------------------------------------------------

    /// Destination side: the replica appears (after [`check_replication`]). It joins
    /// like a participant — starting the session if the stage was idle — and
    /// publishes at once (`JOINED`, `PUBLISH_STARTED`, both `replica: true`).
    pub fn replica_joined(&mut self, replica: ReplicaJoin, now: UnixMillis) -> Effects {
        let mut fx = Effects::default();
        let session_id = self.ensure_session(now, &mut fx);
        let pid = replica.participant_id.clone();
        self.next_order += 1;
        self.participants.insert(
            pid.clone(),
            OnStage {
                order: self.next_order,
                user_id: replica.user_id,
                attributes: replica.attributes,
                client: ClientAttributes::default(),
                first_join_time: now,
                published: true,
                publish: None,
                subscriptions: BTreeMap::new(),
                events: None,
                replica: Some(ReplicaOf {
                    source: replica.source,
                    source_stage: replica.source_stage,
                    source_session: replica.source_session,
                }),
                audio_muted: false,
                video_stopped: false,
            },
        );
        self.write_participant(&pid, &session_id, ParticipantState::Connected, &mut fx);
        fx.writes
            .push(self.append(&session_id, &pid, EventName::Joined, None, now));
        fx.writes
            .push(self.append(&session_id, &pid, EventName::PublishStarted, None, now));
        fx
    }

    /// Source side: the replica is in place in `destination`, whose session is
    /// `destination_session`. Records `REPLICATION_STARTED`, the replication and the
    /// participant as an ACTIVE `SOURCE`. The participant must be publishing here
    /// (checked by [`check_replication`] under the same lock).
    pub fn replication_started(
        &mut self,
        participant_id: &str,
        destination: &Arn,
        destination_session: &str,
        reconnect_window_seconds: u32,
        now: UnixMillis,
    ) -> Effects {
        let mut fx = Effects::default();
        let pid = participant_id;
        let (Some(session_id), Some(source)) = (
            self.session.clone(),
            self.participants
                .get(pid)
                .and_then(|p| p.publish)
                .map(|p| p.source),
        ) else {
            return fx;
        };
        self.sources_in_session.insert(pid.to_owned());
        self.replicated
            .entry(pid.to_owned())
            .or_insert_with(|| Replicated {
                source,
                away_since: None,
                active: BTreeMap::new(),
            })
            .active
            .insert(
                destination.clone(),
                Outgoing {
                    destination_session: destination_session.to_owned(),
                    window_ms: UnixMillis::from(reconnect_window_seconds) * 1000,
                },
            );
        let mut event = self.event(pid, EventName::ReplicationStarted, None, now);
        event.destination_stage_arn = Some(destination.to_string());
        event.destination_session_id = Some(destination_session.to_owned());
        fx.writes.push(LiveWrite::AppendEvent {
            session_id: session_id.clone(),
            event,
        });
        fx.writes.push(LiveWrite::StartReplication {
            participant_id: pid.to_owned(),
            source_session_id: session_id.clone(),
            destination_stage_arn: destination.to_string(),
            destination_session_id: destination_session.to_owned(),
        });
        self.write_participant(pid, &session_id, ParticipantState::Connected, &mut fx);
        fx
    }

    /// Source side, StopParticipantReplication: `None` when there is no active
    /// replication of the participant into `destination`.
    pub fn stop_replication(
        &mut self,
        participant_id: &str,
        destination: &Arn,
        now: UnixMillis,
    ) -> Option<Effects> {
        let mut fx = Effects::default();
        self.stop_outgoing(
            participant_id,
            destination,
            StopReason::StoppedByRequest,
            true,
            now,
            &mut fx,
        )
        .then_some(fx)
    }

    /// Source side: the destination reports that the replica went away there.
    pub fn replication_ended(
        &mut self,
        participant_id: &str,
        destination: &Arn,
        reason: StopReason,
        now: UnixMillis,
    ) -> Effects {
        let mut fx = Effects::default();
        self.stop_outgoing(participant_id, destination, reason, false, now, &mut fx);
        fx
    }

    /// Destination side: the source stopped the replication; the replica (of
    /// `source`'s participant, nobody else) leaves.
    pub fn end_replica(&mut self, participant_id: &str, source: &Arn, now: UnixMillis) -> Effects {
        let mut fx = Effects::default();
        let ours = self
            .participants
            .get(participant_id)
            .and_then(|p| p.replica.as_ref())
            .is_some_and(|r| r.source_stage == *source);
        if ours {
            self.remove_replica(participant_id, None, now, &mut fx);
        }
        fx
    }

    /// Time passed: replications whose reconnect window is over stop; a kept source
    /// with no replication left is closed, and the session ends if nobody is left.
    pub fn handle_timeout(&mut self, now: UnixMillis) -> Effects {
        let mut fx = Effects::default();
        let expired: Vec<(String, Arn)> = self
            .replicated
            .iter()
            .filter_map(|(pid, r)| r.away_since.map(|away| (pid, r, away)))
            .flat_map(|(pid, r, away)| {
                r.active
                    .iter()
                    .filter(move |(_, o)| away + o.window_ms <= now)
                    .map(move |(d, _)| (pid.clone(), d.clone()))
            })
            .collect();
        for (pid, destination) in expired {
            self.stop_outgoing(
                &pid,
                &destination,
                StopReason::WindowPassed,
                true,
                now,
                &mut fx,
            );
        }
        if let Some(next) = self.next_deadline() {
            fx.wake_no_later_than(next);
        }
        fx
    }

    // ----- internals ---------------------------------------------------------

    /// The running session, started now if the stage is idle.
    fn ensure_session(&mut self, now: UnixMillis, fx: &mut Effects) -> String {
        match &self.session {
            Some(s) => s.clone(),
            None => {
                let s = self.ids.session_id();
                fx.writes.push(LiveWrite::StartSession {
                    session_id: s.clone(),
                    start_time: now,
                });
                self.session = Some(s.clone());
                self.sources_in_session.clear();
                s
            }
        }
    }

    /// Starts the session if the stage is idle and adds the participant if it is not
    /// on the stage yet (`JOINED`). Refreshes what its token says either way. Returns
    /// the running session.
    fn join(&mut self, joiner: &Joiner, now: UnixMillis, fx: &mut Effects) -> String {
        let session_id = self.ensure_session(now, fx);
        let pid = &joiner.participant_id;
        match self.participants.get_mut(pid) {
            Some(p) => {
                p.user_id.clone_from(&joiner.user_id);
                p.attributes.clone_from(&joiner.attributes);
                if joiner.client != ClientAttributes::default() {
                    p.client.clone_from(&joiner.client);
                }
            }
            None => {
                self.next_order += 1;
                self.participants.insert(
                    pid.clone(),
                    OnStage {
                        order: self.next_order,
                        user_id: joiner.user_id.clone(),
                        attributes: joiner.attributes.clone(),
                        client: joiner.client.clone(),
                        first_join_time: now,
                        published: false,
                        publish: None,
                        subscriptions: BTreeMap::new(),
                        events: None,
                        replica: None,
                        audio_muted: false,
                        video_stopped: false,
                    },
                );
                self.write_participant(pid, &session_id, ParticipantState::Connected, fx);
                fx.writes
                    .push(self.append(&session_id, pid, EventName::Joined, None, now));
            }
        }
        session_id
    }

    /// Ends a publish (`PUBLISH_STOPPED`) and each subscriber's subscription to it
    /// (`SUBSCRIBE_STOPPED`), which may make that subscriber leave. Normally the
    /// source closes, taking the feeding peer and every subscriber's peer with it.
    /// A replicated publisher's source is kept instead while a reconnect window
    /// runs (replications with window 0 stop now): only its feeding peer and the
    /// local subscribers' peers are closed, and the replicas' subscribers wait for
    /// the publisher's return.
    fn stop_publishing(&mut self, pid: &str, now: UnixMillis, fx: &mut Effects) {
        let Some(publishing) = self
            .participants
            .get_mut(pid)
            .and_then(|p| p.publish.take())
        else {
            return;
        };
        self.forget_connection(publishing.conn, Some(publishing.peer), fx);
        if let Some(session_id) = self.session.clone() {
            fx.writes
                .push(self.append(&session_id, pid, EventName::PublishStopped, None, now));
        }
        let replicated = match self.replicated.get_mut(pid) {
            Some(r) => {
                r.away_since = Some(now);
                true
            }
            None => false,
        };
        if replicated {
            let at_once: Vec<Arn> = self.replicated[pid]
                .active
                .iter()
                .filter(|(_, o)| o.window_ms <= 0)
                .map(|(d, _)| d.clone())
                .collect();
            for destination in at_once {
                // The last one closes the kept source.
                self.stop_outgoing(
                    pid,
                    &destination,
                    StopReason::SourceStoppedPublishing,
                    true,
                    now,
                    fx,
                );
            }
        }
        let kept = self.replicated.get(pid).and_then(Replicated::next_deadline);
        match kept {
            Some(deadline) => {
                fx.close_peers.push(publishing.peer);
                fx.wake_no_later_than(deadline);
            }
            None if !replicated => fx.close_sources.push(publishing.source),
            None => {}
        }
        let subscribers: Vec<String> = self
            .participants
            .iter()
            .filter(|(_, p)| p.subscriptions.contains_key(pid))
            .map(|(id, _)| id.clone())
            .collect();
        for subscriber in subscribers {
            // A closed source closed their peers; a kept one did not.
            self.stop_subscription(&subscriber, pid, kept.is_some(), now, fx);
            if subscriber != pid {
                self.leave_if_unconnected(&subscriber, now, fx);
            }
        }
    }

    fn stop_subscription(
        &mut self,
        pid: &str,
        publisher: &str,
        close_peer: bool,
        now: UnixMillis,
        fx: &mut Effects,
    ) {
        let Some(sub) = self
            .participants
            .get_mut(pid)
            .and_then(|p| p.subscriptions.remove(publisher))
        else {
            return;
        };
        if close_peer {
            fx.close_peers.push(sub.peer);
        }
        self.forget_connection(sub.conn, Some(sub.peer), fx);
        if let Some(session_id) = self.session.clone() {
            fx.writes.push(self.append(
                &session_id,
                pid,
                EventName::SubscribeStopped,
                Some(publisher),
                now,
            ));
        }
    }

    fn end_all_connections(
        &mut self,
        pid: &str,
        why: EventsClose,
        now: UnixMillis,
        fx: &mut Effects,
    ) {
        self.stop_publishing(pid, now, fx);
        let publishers: Vec<String> = self
            .participants
            .get(pid)
            .map(|p| p.subscriptions.keys().cloned().collect())
            .unwrap_or_default();
        for publisher in publishers {
            self.stop_subscription(pid, &publisher, true, now, fx);
        }
        if let Some(conn) = self.participants.get_mut(pid).and_then(|p| p.events.take()) {
            fx.close_events.push((conn, why));
            self.forget_connection(conn, None, fx);
        }
        self.leave_if_unconnected(pid, now, fx);
    }

    /// Stops one active replication out of this stage: `REPLICATION_STOPPED`, the
    /// record, and (`tell_destination`) the replica's removal. The last one of a
    /// publisher that is away closes the kept source. `false` when there was none.
    fn stop_outgoing(
        &mut self,
        pid: &str,
        destination: &Arn,
        reason: StopReason,
        tell_destination: bool,
        now: UnixMillis,
        fx: &mut Effects,
    ) -> bool {
        let Some(r) = self.replicated.get_mut(pid) else {
            return false;
        };
        let Some(outgoing) = r.active.remove(destination) else {
            return false;
        };
        let (emptied, away, source) = (r.active.is_empty(), r.away_since.is_some(), r.source);
        if emptied {
            self.replicated.remove(pid);
        }
        tracing::info!(stage = %self.stage, participant = %pid, %destination, %reason, "replication stopped");
        if let Some(session_id) = self.session.clone() {
            let mut event = self.event(pid, EventName::ReplicationStopped, None, now);
            event.destination_stage_arn = Some(destination.to_string());
            event.destination_session_id = Some(outgoing.destination_session);
            fx.writes.push(LiveWrite::AppendEvent {
                session_id: session_id.clone(),
                event,
            });
            if self.participants.contains_key(pid) {
                self.write_participant(pid, &session_id, ParticipantState::Connected, fx);
            } else {
                let (replication_type, replication_state) = self.replication_fields(pid);
                fx.writes.push(LiveWrite::SetReplicationState {
                    session_id,
                    participant_id: pid.to_owned(),
                    replication_type,
                    replication_state,
                });
            }
        }
        fx.writes.push(LiveWrite::StopReplication {
            participant_id: pid.to_owned(),
            destination_stage_arn: destination.to_string(),
            reason,
        });
        if tell_destination {
            fx.cross_stage.push(CrossStage::EndReplica {
                destination: destination.clone(),
                source: self.stage.clone(),
                participant_id: pid.to_owned(),
            });
        }
        if emptied && away {
            fx.close_sources.push(source);
            self.end_session_if_empty(now, fx);
        }
        true
    }

    fn stop_all_replications(
        &mut self,
        pid: &str,
        reason: StopReason,
        now: UnixMillis,
        fx: &mut Effects,
    ) {
        for destination in self.replication_destinations(pid) {
            self.stop_outgoing(pid, &destination, reason, true, now, fx);
        }
    }

    /// A replica leaves its destination stage: `PUBLISH_STOPPED`, its subscribers'
    /// subscriptions end (their peers are closed: the source may live on), then
    /// `LEFT`. With `tell_source` (the destination's own decision, with its reason)
    /// the source stage is told.
    fn remove_replica(
        &mut self,
        pid: &str,
        tell_source: Option<StopReason>,
        now: UnixMillis,
        fx: &mut Effects,
    ) {
        let Some(replica) = self.participants.get(pid).and_then(|p| p.replica.clone()) else {
            return;
        };
        if let Some(session_id) = self.session.clone() {
            fx.writes
                .push(self.append(&session_id, pid, EventName::PublishStopped, None, now));
        }
        let subscribers: Vec<String> = self
            .participants
            .iter()
            .filter(|(_, p)| p.subscriptions.contains_key(pid))
            .map(|(id, _)| id.clone())
            .collect();
        for subscriber in subscribers {
            self.stop_subscription(&subscriber, pid, true, now, fx);
            self.leave_if_unconnected(&subscriber, now, fx);
        }
        fx.released_feeds.push(replica.source);
        if let Some(reason) = tell_source {
            fx.cross_stage.push(CrossStage::ReplicaEnded {
                source: replica.source_stage.clone(),
                destination: self.stage.clone(),
                participant_id: pid.to_owned(),
                reason,
            });
        }
        self.depart(pid, now, fx);
    }

    /// A participant without connections leaves (`LEFT`, DISCONNECTED); the last one
    /// to leave ends the session.
    fn leave_if_unconnected(&mut self, pid: &str, now: UnixMillis, fx: &mut Effects) {
        if self
            .participants
            .get(pid)
            .is_none_or(OnStage::has_connections)
        {
            return;
        }
        self.depart(pid, now, fx);
    }

    fn depart(&mut self, pid: &str, now: UnixMillis, fx: &mut Effects) {
        let Some(session_id) = self.session.clone() else {
            return;
        };
        self.write_participant(pid, &session_id, ParticipantState::Disconnected, fx);
        fx.writes
            .push(self.append(&session_id, pid, EventName::Left, None, now));
        self.participants.remove(pid);
        self.ingest.remove(pid);
        self.end_session_if_empty(now, fx);
    }

    /// Ends the session when nobody is on the stage and no reconnect window holds it.
    fn end_session_if_empty(&mut self, now: UnixMillis, fx: &mut Effects) {
        if !self.participants.is_empty() || !self.replicated.is_empty() {
            return;
        }
        if let Some(session_id) = self.session.take() {
            fx.writes.push(LiveWrite::EndSession {
                session_id,
                end_time: now,
            });
            self.sources_in_session.clear();
        }
    }

    fn forget_connection(&mut self, conn: ConnectionId, peer: Option<PeerId>, fx: &mut Effects) {
        self.connections.remove(&conn);
        if let Some(peer) = peer
            && self.peers.get(&peer) == Some(&conn)
        {
            self.peers.remove(&peer);
        }
        fx.ended.push((conn, peer));
    }

    fn publisher_of(&self, pid: &str, conn: ConnectionId) -> Option<String> {
        self.participants
            .get(pid)?
            .subscriptions
            .iter()
            .find(|(_, s)| s.conn == conn)
            .map(|(publisher, _)| publisher.clone())
    }

    /// `replicationType` and `replicationState` of a participant that is not a
    /// replica: a source keeps `SOURCE` for the rest of the session.
    fn replication_fields(&self, pid: &str) -> (ReplicationType, Option<ReplicationState>) {
        if self.replicated.contains_key(pid) {
            (ReplicationType::Source, Some(ReplicationState::Active))
        } else if self.sources_in_session.contains(pid) {
            (ReplicationType::Source, Some(ReplicationState::Stopped))
        } else {
            (ReplicationType::None, None)
        }
    }

    fn write_participant(
        &self,
        pid: &str,
        session_id: &str,
        state: ParticipantState,
        fx: &mut Effects,
    ) {
        let Some(p) = self.participants.get(pid) else {
            return;
        };
        let (replication_type, replication_state, source_stage_arn, source_session_id) =
            match &p.replica {
                Some(r) => (
                    ReplicationType::Replica,
                    Some(if state == ParticipantState::Connected {
                        ReplicationState::Active
                    } else {
                        ReplicationState::Stopped
                    }),
                    Some(r.source_stage.to_string()),
                    Some(r.source_session.clone()),
                ),
                None => {
                    let (t, s) = self.replication_fields(pid);
                    (t, s, None, None)
                }
            };
        fx.writes.push(LiveWrite::UpsertParticipant {
            session_id: session_id.to_owned(),
            participant: Box::new(Participant {
                participant_id: pid.to_owned(),
                user_id: p.user_id.clone(),
                state,
                first_join_time: p.first_join_time,
                attributes: p.attributes.clone(),
                published: p.published,
                client: p.client.clone(),
                recording_state: RecordingState::Disabled,
                recording: None,
                protocol: self
                    .ingest
                    .get(pid)
                    .map_or(ParticipantProtocol::Whip, |i| i.protocol),
                ingest_configuration_arn: self.ingest.get(pid).map(|i| i.configuration_arn.clone()),
                replication_type,
                replication_state,
                source_stage_arn,
                source_session_id,
            }),
        });
    }

    /// An event of `pid`; `replica: true` when it or the remote participant is a
    /// replica on this stage.
    fn event(
        &self,
        pid: &str,
        name: EventName,
        remote: Option<&str>,
        now: UnixMillis,
    ) -> ParticipantEvent {
        ParticipantEvent {
            name,
            participant_id: pid.to_owned(),
            event_time: now,
            remote_participant_id: remote.map(str::to_owned),
            error_code: None,
            destination_stage_arn: None,
            destination_session_id: None,
            replica: self.is_replica(pid) || remote.is_some_and(|r| self.is_replica(r)),
        }
    }

    fn append(
        &self,
        session_id: &str,
        pid: &str,
        name: EventName,
        remote: Option<&str>,
        now: UnixMillis,
    ) -> LiveWrite {
        LiveWrite::AppendEvent {
            session_id: session_id.to_owned(),
            event: self.event(pid, name, remote, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Account, ResourceKind, SequentialIds};
    use crate::model::EventErrorCode;
    use crate::token::Capabilities;

    const T0: UnixMillis = 1_700_000_000_000;

    fn machine() -> StageMachine {
        machine_with(StageLimits {
            max_publishers: 12,
            max_subscribers: 100,
        })
    }

    fn machine_with(limits: StageLimits) -> StageMachine {
        let account = Account {
            id: "000000000000".into(),
            region: "us-east-1".into(),
        };
        StageMachine::new(
            Arn::new(&account, ResourceKind::Stage, "stageAAAAAAA"),
            limits,
            Arc::new(SequentialIds::new()),
        )
    }

    fn joiner(id: &str) -> Joiner {
        Joiner {
            participant_id: id.into(),
            user_id: Some(format!("user-{id}")),
            attributes: [("k".to_owned(), id.to_owned())].into(),
            capabilities: Capabilities {
                allow_publish: true,
                allow_subscribe: true,
            },
            client: ClientAttributes::default(),
        }
    }

    /// Admits and accepts a publish with the given ids; returns its effects.
    fn publish(m: &mut StageMachine, who: &str, conn: u64, peer: u64, now: UnixMillis) -> Effects {
        let j = joiner(who);
        let source = match m.admit(&j, Action::Publish, None, false).unwrap() {
            Admission::Publish { source } => source.unwrap_or(SourceId(conn)),
            other => panic!("{other:?}"),
        };
        m.publish_accepted(&j, ConnectionId(conn), PeerId(peer), source, now)
    }

    fn subscribe(
        m: &mut StageMachine,
        who: &str,
        publisher: &str,
        conn: u64,
        peer: u64,
        now: UnixMillis,
    ) -> Effects {
        let j = joiner(who);
        assert!(matches!(
            m.admit(&j, Action::Subscribe, Some(publisher), false)
                .unwrap(),
            Admission::Subscribe { .. }
        ));
        m.subscribe_accepted(&j, publisher, ConnectionId(conn), PeerId(peer), now)
    }

    fn events_of<'a>(fx: &'a Effects, who: &str) -> Vec<(&'a str, Option<&'a str>)> {
        fx.writes
            .iter()
            .filter_map(|w| match w {
                LiveWrite::AppendEvent { event, .. } if event.participant_id == who => {
                    Some((event.name.as_str(), event.remote_participant_id.as_deref()))
                }
                _ => None,
            })
            .collect()
    }

    fn last_record(fx: &Effects, who: &str) -> Participant {
        fx.writes
            .iter()
            .rev()
            .find_map(|w| match w {
                LiveWrite::UpsertParticipant { participant, .. }
                    if participant.participant_id == who =>
                {
                    Some((**participant).clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no record of {who}"))
    }

    #[test]
    fn the_first_connection_joins_and_starts_a_session() {
        let mut m = machine();
        assert!(m.is_idle());
        let fx = m.events_opened(&joiner("a"), ConnectionId(1), T0);
        let LiveWrite::StartSession {
            session_id,
            start_time,
        } = &fx.writes[0]
        else {
            panic!("{:?}", fx.writes)
        };
        assert_eq!(*start_time, T0);
        assert_eq!(m.session_id(), Some(session_id.as_str()));
        assert_eq!(fx.event_names(), ["JOINED"]);
        let record = last_record(&fx, "a");
        assert_eq!(record.state, ParticipantState::Connected);
        assert_eq!(record.first_join_time, T0);
        assert_eq!(record.user_id.as_deref(), Some("user-a"));
        assert_eq!(record.protocol, ParticipantProtocol::Whip);
        assert!(!record.published);
        assert!(!m.is_idle());
        let state = m.snapshot();
        assert_eq!(state.stage_id, "stageAAAAAAA");
        assert_eq!(state.participants.len(), 1);
        assert!(!state.participants[0].is_publishing);

        // More connections of the same participant do not join it again.
        let fx = publish(&mut m, "a", 2, 20, T0 + 1);
        assert_eq!(fx.event_names(), ["PUBLISH_STARTED"]);
        assert!(m.snapshot().participants[0].is_publishing);
        assert!(last_record(&fx, "a").published);
    }

    #[test]
    fn the_last_connection_closing_leaves_and_ends_the_session() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        m.events_opened(&joiner("a"), ConnectionId(2), T0);
        let session = m.session_id().unwrap().to_owned();

        let fx = m.connection_closed(ConnectionId(1), T0 + 5);
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert_eq!(fx.ended, [(ConnectionId(1), Some(PeerId(10)))]);
        assert_eq!(fx.event_names(), ["PUBLISH_STOPPED"]);
        assert!(m.is_connected("a"));
        assert!(!m.snapshot().participants[0].is_publishing);

        let fx = m.connection_closed(ConnectionId(2), T0 + 9);
        assert_eq!(fx.event_names(), ["LEFT"]);
        let record = last_record(&fx, "a");
        assert_eq!(record.state, ParticipantState::Disconnected);
        assert!(record.published, "published stays true for the session");
        assert_eq!(
            fx.writes.last(),
            Some(&LiveWrite::EndSession {
                session_id: session,
                end_time: T0 + 9
            })
        );
        assert!(m.is_idle());
        assert!(m.snapshot().participants.is_empty());

        // Unknown connections are ignored.
        assert!(m.connection_closed(ConnectionId(2), T0 + 10).is_empty());

        // The next join starts a new session.
        let fx = m.events_opened(&joiner("a"), ConnectionId(3), T0 + 20);
        assert!(matches!(&fx.writes[0], LiveWrite::StartSession { .. }));
    }

    #[test]
    fn the_session_runs_while_anyone_is_on_the_stage() {
        let mut m = machine();
        m.events_opened(&joiner("a"), ConnectionId(1), T0);
        let fx = m.events_opened(&joiner("b"), ConnectionId(2), T0 + 1);
        assert!(
            !fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::StartSession { .. }))
        );
        let fx = m.connection_closed(ConnectionId(1), T0 + 2);
        assert_eq!(fx.event_names(), ["LEFT"]);
        assert!(
            !fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::EndSession { .. }))
        );
        assert_eq!(
            m.snapshot()
                .participants
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        let fx = m.connection_closed(ConnectionId(2), T0 + 3);
        assert!(matches!(
            fx.writes.last(),
            Some(LiveWrite::EndSession { .. })
        ));
    }

    #[test]
    fn a_new_publish_replaces_the_old_on_the_same_source() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        subscribe(&mut m, "b", "a", 2, 20, T0);
        let j = joiner("a");
        assert_eq!(
            m.admit(&j, Action::Publish, None, false),
            Ok(Admission::Publish {
                source: Some(SourceId(1))
            })
        );
        let fx = m.publish_accepted(&j, ConnectionId(3), PeerId(30), SourceId(1), T0 + 1);
        // The media plane closed the old peer when the new one took the source.
        assert!(fx.close_peers.is_empty() && fx.close_sources.is_empty());
        assert_eq!(fx.ended, [(ConnectionId(1), Some(PeerId(10)))]);
        assert_eq!(fx.event_names(), ["PUBLISH_STOPPED", "PUBLISH_STARTED"]);
        // The subscriber is undisturbed, and the old peer's close means nothing now.
        assert!(
            m.peer_closed(PeerId(10), CloseCause::Requested, T0 + 2)
                .is_empty()
        );
        assert!(m.has_peer(PeerId(20)) && m.has_peer(PeerId(30)));
        // DELETE on the old resource is a no-op too.
        assert!(m.connection_closed(ConnectionId(1), T0 + 2).is_empty());
    }

    #[test]
    fn a_new_subscribe_to_the_same_publisher_replaces_the_old() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        subscribe(&mut m, "b", "a", 2, 20, T0);
        let fx = subscribe(&mut m, "b", "a", 3, 30, T0 + 1);
        assert_eq!(fx.close_peers, [PeerId(20)]);
        assert_eq!(fx.ended, [(ConnectionId(2), Some(PeerId(20)))]);
        assert_eq!(
            events_of(&fx, "b"),
            [
                ("SUBSCRIBE_STOPPED", Some("a")),
                ("SUBSCRIBE_STARTED", Some("a"))
            ]
        );
        assert_eq!(m.subscriber_count(), 1);
    }

    #[test]
    fn a_second_events_socket_replaces_the_first() {
        let mut m = machine();
        m.events_opened(&joiner("a"), ConnectionId(1), T0);
        let fx = m.events_opened(&joiner("a"), ConnectionId(2), T0 + 1);
        assert_eq!(fx.close_events, [(ConnectionId(1), EventsClose::Replaced)]);
        assert!(fx.event_names().is_empty());
        // The replaced socket closing later does not make the participant leave.
        assert!(m.connection_closed(ConnectionId(1), T0 + 2).is_empty());
        assert!(m.is_connected("a"));
    }

    #[test]
    fn the_thirteenth_publisher_is_refused() {
        let mut m = machine();
        for i in 0..12 {
            publish(&mut m, &format!("p{i}"), i + 1, 100 + i, T0);
        }
        assert_eq!(m.publisher_count(), 12);
        let refusal = m
            .admit(&joiner("p12"), Action::Publish, None, false)
            .unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::QuotaExceeded);
        assert_eq!(refusal.error_code(), EventErrorCode::QuotaExceeded);
        let fx = m.refused("p12", Action::Publish, None, &refusal, T0 + 1);
        let LiveWrite::AppendEvent { event, .. } = &fx.writes[0] else {
            panic!()
        };
        assert_eq!(
            (
                event.name.as_str(),
                event.error_code.map(EventErrorCode::as_str)
            ),
            ("PUBLISH_ERROR", Some("QUOTA_EXCEEDED"))
        );
        // A publisher reconnecting is not a new publisher.
        assert!(m.admit(&joiner("p3"), Action::Publish, None, false).is_ok());
        // Nor does the refused one hold anything.
        assert!(!m.is_connected("p12"));
    }

    #[test]
    fn the_subscriber_limit_counts_subscribing_participants() {
        let mut m = machine_with(StageLimits {
            max_publishers: 12,
            max_subscribers: 1,
        });
        publish(&mut m, "a", 1, 10, T0);
        publish(&mut m, "c", 2, 11, T0);
        subscribe(&mut m, "b", "a", 3, 12, T0);
        // b subscribing to another publisher is fine; d is one subscriber too many.
        subscribe(&mut m, "b", "c", 4, 13, T0);
        let refusal = m
            .admit(&joiner("d"), Action::Subscribe, Some("a"), false)
            .unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::QuotaExceeded);
        assert_eq!(
            refusal.event_name(Action::Subscribe),
            EventName::SubscribeError
        );
    }

    #[test]
    fn capabilities_are_enforced() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        let mut nothing = joiner("n");
        nothing.capabilities = Capabilities::default();
        let refusal = m.admit(&nothing, Action::Publish, None, false).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::MissingCapability);
        assert_eq!(
            refusal.error_code(),
            EventErrorCode::InsufficientCapabilities
        );
        assert_eq!(refusal.event_name(Action::Publish), EventName::PublishError);
        let refusal = m
            .admit(&nothing, Action::Subscribe, Some("a"), false)
            .unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::MissingCapability);
        // No capabilities still hold the events socket.
        assert_eq!(
            m.admit(&nothing, Action::Events, None, false),
            Ok(Admission::Events)
        );
    }

    #[test]
    fn subscribing_to_someone_not_publishing_is_not_found() {
        let mut m = machine();
        m.events_opened(&joiner("a"), ConnectionId(1), T0);
        for publisher in ["a", "nobody"] {
            let refusal = m
                .admit(&joiner("b"), Action::Subscribe, Some(publisher), false)
                .unwrap_err();
            assert_eq!(refusal.kind, RefusalKind::PublisherNotFound);
            assert_eq!(refusal.error_code(), EventErrorCode::PublisherNotFound);
        }
    }

    #[test]
    fn refusals_are_recorded_only_in_a_running_session() {
        let mut m = machine();
        let refusal = Refusal::token(TokenRejection::BadSignature);
        assert!(
            m.refused("x", Action::Publish, None, &refusal, T0)
                .is_empty(),
            "an idle stage starts no session"
        );
        m.events_opened(&joiner("a"), ConnectionId(1), T0);
        let fx = m.refused("x", Action::Publish, None, &refusal, T0 + 1);
        let LiveWrite::AppendEvent { event, .. } = &fx.writes[0] else {
            panic!()
        };
        assert_eq!(
            event.name.as_str(),
            "JOIN_ERROR",
            "a refused token never joined"
        );
        assert_eq!(
            event.error_code.map(EventErrorCode::as_str),
            Some("INVALID_INPUT")
        );
        assert_eq!(fx.writes.len(), 1);
    }

    #[test]
    fn a_publisher_leaving_ends_its_subscriptions() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        subscribe(&mut m, "b", "a", 2, 20, T0);
        m.events_opened(&joiner("c"), ConnectionId(3), T0);
        subscribe(&mut m, "c", "a", 4, 40, T0);

        let fx = m.peer_closed(PeerId(10), CloseCause::Timeout, T0 + 15_000);
        // Closing the source closes its subscribers' peers in the media plane.
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert!(fx.close_peers.is_empty());
        assert_eq!(
            events_of(&fx, "a"),
            [("PUBLISH_STOPPED", None), ("LEFT", None)]
        );
        assert_eq!(
            events_of(&fx, "b"),
            [("SUBSCRIBE_STOPPED", Some("a")), ("LEFT", None)]
        );
        // c still holds its events socket.
        assert_eq!(events_of(&fx, "c"), [("SUBSCRIBE_STOPPED", Some("a"))]);
        assert!(m.is_connected("c") && !m.is_connected("b"));
        assert!(
            !fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::EndSession { .. }))
        );
        // Their peers' closes (SourceClosed) change nothing more.
        assert!(
            m.peer_closed(PeerId(20), CloseCause::SourceClosed, T0 + 15_001)
                .is_empty()
        );
    }

    #[test]
    fn a_vanished_subscriber_is_recorded_as_left() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        subscribe(&mut m, "b", "a", 2, 20, T0);
        let fx = m.peer_closed(PeerId(20), CloseCause::Timeout, T0 + 15_000);
        assert!(fx.close_peers.is_empty(), "the peer is gone already");
        assert_eq!(
            events_of(&fx, "b"),
            [("SUBSCRIBE_STOPPED", Some("a")), ("LEFT", None)]
        );
        assert_eq!(last_record(&fx, "b").state, ParticipantState::Disconnected);
        // DELETE of a subscribe closes its peer.
        subscribe(&mut m, "c", "a", 3, 30, T0);
        let fx = m.connection_closed(ConnectionId(3), T0 + 1);
        assert_eq!(fx.close_peers, [PeerId(30)]);
    }

    #[test]
    fn a_revoked_token_cuts_everything_but_revokes_no_id() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        m.events_opened(&joiner("a"), ConnectionId(2), T0);
        publish(&mut m, "b", 3, 30, T0);
        subscribe(&mut m, "b", "a", 5, 50, T0);

        assert!(m.token_revoked("nobody", T0).is_none());
        let fx = m.token_revoked("a", T0 + 1).unwrap();
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert_eq!(
            fx.close_events,
            [(ConnectionId(2), EventsClose::TokenRevoked)]
        );
        assert_eq!(
            events_of(&fx, "a"),
            [("PUBLISH_STOPPED", None), ("LEFT", None)]
        );
        assert_eq!(events_of(&fx, "b"), [("SUBSCRIBE_STOPPED", Some("a"))]);
        assert!(
            !fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::RevokeParticipant { .. }))
        );
        assert!(!m.is_connected("a") && m.is_connected("b"));
    }

    #[test]
    fn client_state_shows_in_the_snapshot_and_only_changes_count() {
        let mut m = machine();
        m.events_opened(&joiner("a"), ConnectionId(1), T0);
        assert!(!m.client_state("nobody", true, true));
        assert!(m.client_state("a", true, false));
        assert!(!m.client_state("a", true, false), "no change, no new state");
        let p = &m.snapshot().participants[0];
        assert!(p.audio_muted && !p.video_stopped);
    }

    #[test]
    fn an_exchanged_token_without_publish_ends_the_publish_and_changes_attributes() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        m.events_opened(&joiner("a"), ConnectionId(2), T0);
        let mut newer = joiner("a");
        newer.capabilities.allow_publish = false;
        newer.attributes = [("k".to_owned(), "new".to_owned())].into();
        let fx = m.token_exchanged(&newer, T0 + 1).unwrap();
        assert_eq!(
            events_of(&fx, "a"),
            [("TOKEN_EXCHANGED", None), ("PUBLISH_STOPPED", None)]
        );
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert!(m.is_connected("a"), "the events socket stays");
        assert_eq!(last_record(&fx, "a").attributes["k"], "new");
        let p = &m.snapshot().participants[0];
        assert!(!p.is_publishing && p.attributes["k"] == "new");
    }

    #[test]
    fn disconnect_cuts_everything_and_revokes() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        m.events_opened(&joiner("a"), ConnectionId(2), T0);
        publish(&mut m, "b", 3, 30, T0);
        subscribe(&mut m, "a", "b", 4, 40, T0);
        subscribe(&mut m, "b", "a", 5, 50, T0);

        assert!(m.disconnect("nobody", None, T0).is_none());
        let fx = m.disconnect("a", Some("bye"), T0 + 1).unwrap();
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert_eq!(fx.close_peers, [PeerId(40)]);
        assert_eq!(
            fx.close_events,
            [(
                ConnectionId(2),
                EventsClose::Disconnected(Some("bye".into()))
            )]
        );
        assert_eq!(
            events_of(&fx, "a"),
            [
                ("PUBLISH_STOPPED", None),
                ("SUBSCRIBE_STOPPED", Some("b")),
                ("LEFT", None)
            ]
        );
        assert_eq!(events_of(&fx, "b"), [("SUBSCRIBE_STOPPED", Some("a"))]);
        assert!(fx.writes.contains(&LiveWrite::RevokeParticipant {
            participant_id: "a".into(),
            reason: Some("bye".into()),
            at: T0 + 1
        }));
        assert!(!m.is_connected("a") && m.is_connected("b"));
        assert_eq!(fx.ended.len(), 4);

        let refusal = m
            .admit(&joiner("a"), Action::Events, None, true)
            .unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::Revoked);
        assert_eq!(refusal.event_name(Action::Publish), EventName::JoinError);
    }

    #[test]
    fn closing_the_stage_disconnects_everyone_and_refuses_newcomers() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        subscribe(&mut m, "b", "a", 2, 20, T0);
        m.events_opened(&joiner("b"), ConnectionId(3), T0);
        let fx = m.close_stage(EventsClose::StageDeleted, true, T0 + 1);
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert_eq!(
            fx.close_events,
            [(ConnectionId(3), EventsClose::StageDeleted)]
        );
        assert!(matches!(
            fx.writes.last(),
            Some(LiveWrite::EndSession { .. })
        ));
        assert_eq!(fx.event_names().iter().filter(|n| **n == "LEFT").count(), 2);
        assert!(m.is_closed() && !m.is_idle() && m.snapshot().participants.is_empty());
        let refusal = m
            .admit(&joiner("c"), Action::Events, None, false)
            .unwrap_err();
        assert!(matches!(refusal.kind, RefusalKind::Token(_)), "{refusal:?}");
    }

    #[test]
    fn stage_state_lists_participants_in_join_order() {
        let mut m = machine();
        m.events_opened(&joiner("zed"), ConnectionId(1), T0);
        publish(&mut m, "amy", 2, 20, T0);
        let state = m.snapshot();
        let listed: Vec<(&str, bool)> = state
            .participants
            .iter()
            .map(|p| (p.id.as_str(), p.is_publishing))
            .collect();
        assert_eq!(listed, [("zed", false), ("amy", true)]);
        assert_eq!(state.participants[1].user_id.as_deref(), Some("user-amy"));
        assert_eq!(state.participants[1].attributes["k"], "amy");
    }

    // ----- replication ---------------------------------------------------------

    fn stage_named(id: &str) -> StageMachine {
        let account = Account {
            id: "000000000000".into(),
            region: "us-east-1".into(),
        };
        StageMachine::new(
            Arn::new(&account, ResourceKind::Stage, id),
            StageLimits {
                max_publishers: 12,
                max_subscribers: 100,
            },
            Arc::new(SequentialIds::new()),
        )
    }

    /// Source stage A (`a` publishes with source 1, peer 10) and destination B.
    fn two_stages() -> (StageMachine, StageMachine) {
        let mut a = stage_named("stageAAAAAAA");
        publish(&mut a, "a", 1, 10, T0);
        (a, stage_named("stageBBBBBBB"))
    }

    /// Replicates `pid` from `src` to `dst` as the driver does; the effects on each.
    fn replicate(
        src: &mut StageMachine,
        dst: &mut StageMachine,
        pid: &str,
        window: u32,
        now: UnixMillis,
    ) -> (Effects, Effects) {
        let origin = check_replication(src, dst, pid).unwrap();
        let mut attributes = origin.attributes.clone();
        attributes.insert("role".into(), "guest".into());
        let on_dst = dst.replica_joined(
            ReplicaJoin {
                participant_id: pid.into(),
                user_id: origin.user_id,
                attributes,
                source: origin.source,
                source_stage: src.stage().clone(),
                source_session: origin.session_id,
            },
            now,
        );
        let session = dst.session_id().unwrap().to_owned();
        let on_src = src.replication_started(pid, dst.stage(), &session, window, now);
        (on_src, on_dst)
    }

    fn replica_events(fx: &Effects) -> Vec<(&str, &str, bool)> {
        fx.writes
            .iter()
            .filter_map(|w| match w {
                LiveWrite::AppendEvent { event, .. } => Some((
                    event.participant_id.as_str(),
                    event.name.as_str(),
                    event.replica,
                )),
                _ => None,
            })
            .collect()
    }

    fn stop_reasons(fx: &Effects) -> Vec<StopReason> {
        fx.writes
            .iter()
            .filter_map(|w| match w {
                LiveWrite::StopReplication { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn conflict(e: DomainError) -> String {
        match e {
            DomainError::Conflict(m) => m,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn replication_preconditions_are_checked_in_order() {
        let (mut a, mut b) = two_stages();
        a.events_opened(&joiner("watcher"), ConnectionId(2), T0);
        for who in ["watcher", "nobody"] {
            let message = conflict(check_replication(&a, &b, who).unwrap_err());
            assert_eq!(
                message,
                format!("participant {who} is not publishing in {}", a.stage())
            );
        }
        let origin = check_replication(&a, &b, "a").unwrap();
        assert_eq!(origin.source, SourceId(1));
        assert_eq!(origin.session_id, a.session_id().unwrap());
        assert_eq!(origin.user_id.as_deref(), Some("user-a"));

        replicate(&mut a, &mut b, "a", 0, T0 + 1);
        assert!(
            conflict(check_replication(&a, &b, "a").unwrap_err()).contains("already replicated")
        );
        // The replica in B cannot be replicated again, not even back to A.
        assert!(matches!(
            check_replication(&b, &a, "a"),
            Err(DomainError::Validation(_))
        ));
        let mut c = stage_named("stageCCCCCCC");
        assert!(matches!(
            check_replication(&b, &c, "a"),
            Err(DomainError::Validation(_))
        ));
        // An id already on the destination.
        c.events_opened(&joiner("a"), ConnectionId(1), T0);
        assert!(
            conflict(check_replication(&a, &c, "a").unwrap_err()).contains("already a participant")
        );
        // A stage being deleted does not exist any more.
        let mut d = stage_named("stageDDDDDDD");
        d.close_stage(EventsClose::StageDeleted, true, T0);
        assert!(matches!(
            check_replication(&a, &d, "a"),
            Err(DomainError::NotFound(_))
        ));
    }

    #[test]
    fn at_most_five_replications_and_a_replica_takes_a_publisher_slot() {
        let (mut a, _) = two_stages();
        for i in 0..5 {
            let mut dst = stage_named(&format!("stageDst{i:04}"));
            replicate(&mut a, &mut dst, "a", 0, T0);
        }
        assert_eq!(a.replication_destinations("a").len(), 5);
        let sixth = stage_named("stageDst0006");
        assert!(matches!(
            check_replication(&a, &sixth, "a"),
            Err(DomainError::QuotaExceeded(_))
        ));

        // A destination with 11 publishers takes one replica, which makes it full.
        let mut full = stage_named("stageFull001");
        for i in 0..11 {
            publish(&mut full, &format!("p{i}"), 100 + i, 200 + i, T0);
        }
        let mut b = stage_named("stageBBBBBBB");
        publish(&mut b, "b", 50, 60, T0);
        replicate(&mut b, &mut full, "b", 0, T0);
        assert_eq!(full.publisher_count(), 12);
        let mut c = stage_named("stageCCCCCCC");
        publish(&mut c, "c", 70, 80, T0);
        assert!(matches!(
            check_replication(&c, &full, "c"),
            Err(DomainError::QuotaExceeded(_))
        ));
        let refusal = full
            .admit(&joiner("p99"), Action::Publish, None, false)
            .unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::QuotaExceeded);
    }

    #[test]
    fn a_replica_joins_its_destination_as_a_publisher() {
        let (mut a, mut b) = two_stages();
        let (on_a, on_b) = replicate(&mut a, &mut b, "a", 0, T0 + 1);

        // B was idle: the replica starts its session.
        assert!(matches!(&on_b.writes[0], LiveWrite::StartSession { .. }));
        assert_eq!(
            replica_events(&on_b),
            [("a", "JOINED", true), ("a", "PUBLISH_STARTED", true)]
        );
        let replica = last_record(&on_b, "a");
        assert_eq!(replica.state, ParticipantState::Connected);
        assert!(replica.published);
        assert_eq!(replica.replication_type, ReplicationType::Replica);
        assert_eq!(replica.replication_state, Some(ReplicationState::Active));
        assert_eq!(replica.source_stage_arn, Some(a.stage().to_string()));
        assert_eq!(replica.source_session_id.as_deref(), a.session_id());
        assert_eq!(replica.user_id.as_deref(), Some("user-a"));
        assert_eq!(replica.attributes["k"], "a");
        assert_eq!(replica.attributes["role"], "guest");
        let state = b.snapshot();
        assert_eq!(
            (
                state.participants[0].id.as_str(),
                state.participants[0].is_publishing
            ),
            ("a", true)
        );
        assert!(b.is_replica("a") && !a.is_replica("a"));

        // A records the replication.
        let b_session = b.session_id().unwrap().to_owned();
        let LiveWrite::AppendEvent { event, .. } = &on_a.writes[0] else {
            panic!("{:?}", on_a.writes)
        };
        assert_eq!(event.name.as_str(), "REPLICATION_STARTED");
        assert_eq!(event.destination_stage_arn, Some(b.stage().to_string()));
        assert_eq!(
            event.destination_session_id.as_deref(),
            Some(b_session.as_str())
        );
        assert!(on_a.writes.contains(&LiveWrite::StartReplication {
            participant_id: "a".into(),
            source_session_id: a.session_id().unwrap().into(),
            destination_stage_arn: b.stage().to_string(),
            destination_session_id: b_session,
        }));
        let source = last_record(&on_a, "a");
        assert_eq!(
            (source.replication_type, source.replication_state),
            (ReplicationType::Source, Some(ReplicationState::Active))
        );

        // B's participants subscribe to the replica: that is A's source.
        let j = joiner("viewer");
        assert_eq!(
            b.admit(&j, Action::Subscribe, Some("a"), false),
            Ok(Admission::Subscribe {
                source: SourceId(1)
            })
        );
        let fx = b.subscribe_accepted(&j, "a", ConnectionId(7), PeerId(70), T0 + 2);
        assert_eq!(
            replica_events(&fx),
            [
                ("viewer", "JOINED", false),
                ("viewer", "SUBSCRIBE_STARTED", true)
            ]
        );
        // Nobody can connect to B under the replica's id.
        let refusal = b
            .admit(&joiner("a"), Action::Events, None, false)
            .unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::ReplicaIdInUse);
        assert_eq!(refusal.event_name(Action::Subscribe), EventName::JoinError);
    }

    #[test]
    fn stopping_a_replication_removes_the_replica() {
        let (mut a, mut b) = two_stages();
        replicate(&mut a, &mut b, "a", 30, T0);
        subscribe(&mut b, "viewer", "a", 7, 70, T0);
        b.events_opened(&joiner("host"), ConnectionId(8), T0);
        subscribe(&mut b, "host", "a", 9, 90, T0);

        let fx = a.stop_replication("a", b.stage(), T0 + 5).unwrap();
        assert_eq!(fx.event_names(), ["REPLICATION_STOPPED"]);
        assert_eq!(stop_reasons(&fx), [StopReason::StoppedByRequest]);
        assert_eq!(
            fx.cross_stage,
            [CrossStage::EndReplica {
                destination: b.stage().clone(),
                source: a.stage().clone(),
                participant_id: "a".into()
            }]
        );
        assert!(fx.close_sources.is_empty(), "a still publishes in A");
        let record = last_record(&fx, "a");
        assert_eq!(
            (record.replication_type, record.replication_state),
            (ReplicationType::Source, Some(ReplicationState::Stopped))
        );
        assert!(a.stop_replication("a", b.stage(), T0 + 6).is_none());

        // Only A's replica of `a` answers to A.
        let other = stage_named("stageCCCCCCC");
        assert!(b.end_replica("a", other.stage(), T0 + 6).is_empty());
        let fx = b.end_replica("a", a.stage(), T0 + 6);
        assert_eq!(
            replica_events(&fx),
            [
                ("a", "PUBLISH_STOPPED", true),
                ("host", "SUBSCRIBE_STOPPED", true),
                ("viewer", "SUBSCRIBE_STOPPED", true),
                ("viewer", "LEFT", false),
                ("a", "LEFT", true),
            ]
        );
        // Their peers are closed one by one: A's source lives on.
        assert_eq!(fx.close_peers, [PeerId(90), PeerId(70)]);
        assert!(fx.close_sources.is_empty());
        assert_eq!(fx.released_feeds, [SourceId(1)]);
        let replica = last_record(&fx, "a");
        assert_eq!(replica.state, ParticipantState::Disconnected);
        assert_eq!(replica.replication_state, Some(ReplicationState::Stopped));
        assert!(
            !fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::EndSession { .. })),
            "host is still there"
        );
        assert!(!b.is_connected("a"));

        // It may be replicated there again, in the same source session.
        let (on_a, _) = replicate(&mut a, &mut b, "a", 0, T0 + 7);
        assert_eq!(
            last_record(&on_a, "a").replication_state,
            Some(ReplicationState::Active)
        );
    }

    #[test]
    fn with_no_window_the_replications_stop_when_the_publisher_goes() {
        let (mut a, mut b) = two_stages();
        replicate(&mut a, &mut b, "a", 0, T0);
        let fx = a.peer_closed(PeerId(10), CloseCause::Timeout, T0 + 15_000);
        assert_eq!(
            fx.event_names(),
            ["PUBLISH_STOPPED", "REPLICATION_STOPPED", "LEFT"]
        );
        assert_eq!(stop_reasons(&fx), [StopReason::SourceStoppedPublishing]);
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert_eq!(fx.cross_stage.len(), 1);
        assert!(matches!(
            fx.writes.last(),
            Some(LiveWrite::EndSession { .. })
        ));
        assert_eq!(
            last_record(&fx, "a").replication_state,
            Some(ReplicationState::Stopped)
        );
        assert!(a.is_idle());
    }

    #[test]
    fn a_publisher_back_within_the_window_feeds_the_same_source() {
        let (mut a, mut b) = two_stages();
        subscribe(&mut a, "local", "a", 2, 20, T0);
        replicate(&mut a, &mut b, "a", 10, T0);
        let session = a.session_id().unwrap().to_owned();

        let fx = a.peer_closed(PeerId(10), CloseCause::RemoteClosed, T0 + 1_000);
        assert_eq!(
            events_of(&fx, "a"),
            [("PUBLISH_STOPPED", None), ("LEFT", None)],
            "A records what happened to the publisher"
        );
        assert_eq!(
            events_of(&fx, "local"),
            [("SUBSCRIBE_STOPPED", Some("a")), ("LEFT", None)]
        );
        assert!(
            fx.close_sources.is_empty(),
            "the source is kept for the replicas"
        );
        assert_eq!(fx.close_peers, [PeerId(10), PeerId(20)]);
        assert_eq!(fx.wake_at, Some(T0 + 11_000));
        assert!(fx.cross_stage.is_empty());
        assert!(
            !fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::EndSession { .. }))
        );
        assert_eq!(
            a.session_id(),
            Some(session.as_str()),
            "the window keeps the session open"
        );
        assert_eq!(
            last_record(&fx, "a").replication_state,
            Some(ReplicationState::Active)
        );
        assert_eq!(a.publisher_count(), 1, "the slot is kept");
        assert!(!a.is_idle());
        assert!(a.handle_timeout(T0 + 10_999).writes.is_empty());

        // Back, with its token: the same source, the replication goes on.
        let j = joiner("a");
        assert_eq!(
            a.admit(&j, Action::Publish, None, false),
            Ok(Admission::Publish {
                source: Some(SourceId(1))
            })
        );
        let fx = a.publish_accepted(&j, ConnectionId(3), PeerId(30), SourceId(1), T0 + 10_000);
        assert_eq!(fx.event_names(), ["JOINED", "PUBLISH_STARTED"]);
        assert!(
            !fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::StartSession { .. }))
        );
        assert_eq!(
            last_record(&fx, "a").replication_type,
            ReplicationType::Source
        );
        assert!(a.handle_timeout(T0 + 20_000).is_empty());
        assert_eq!(a.replication_destinations("a"), [b.stage().clone()]);
        assert!(b.is_replica("a"));

        // Unpublishing (DELETE) while staying on the stage starts a window too.
        a.events_opened(&j, ConnectionId(4), T0 + 20_000);
        let fx = a.connection_closed(ConnectionId(3), T0 + 21_000);
        assert_eq!(fx.event_names(), ["PUBLISH_STOPPED"]);
        assert_eq!(fx.close_peers, [PeerId(30)]);
        assert_eq!(fx.wake_at, Some(T0 + 31_000));
    }

    #[test]
    fn past_the_window_the_replication_stops() {
        let (mut a, mut b) = two_stages();
        let mut c = stage_named("stageCCCCCCC");
        replicate(&mut a, &mut b, "a", 5, T0);
        replicate(&mut a, &mut c, "a", 0, T0);
        let fx = a.peer_closed(PeerId(10), CloseCause::Timeout, T0 + 1_000);
        // The window-0 replication stops at once, the other waits.
        assert_eq!(
            fx.event_names(),
            ["PUBLISH_STOPPED", "REPLICATION_STOPPED", "LEFT"]
        );
        assert!(
            matches!(&fx.cross_stage[..], [CrossStage::EndReplica { destination, .. }] if destination == c.stage())
        );
        assert!(fx.close_sources.is_empty());
        assert_eq!(a.next_deadline(), Some(T0 + 6_000));

        let fx = a.handle_timeout(T0 + 6_000);
        assert_eq!(fx.event_names(), ["REPLICATION_STOPPED"]);
        assert_eq!(stop_reasons(&fx), [StopReason::WindowPassed]);
        assert!(fx.writes.iter().any(|w| matches!(w,
            LiveWrite::SetReplicationState { participant_id, replication_type, replication_state, .. }
                if participant_id == "a" && *replication_type == ReplicationType::Source && *replication_state == Some(ReplicationState::Stopped))));
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert!(
            matches!(&fx.cross_stage[..], [CrossStage::EndReplica { destination, .. }] if destination == b.stage())
        );
        assert!(matches!(
            fx.writes.last(),
            Some(LiveWrite::EndSession { .. })
        ));
        assert!(a.is_idle());
        // Coming back now is a new publish in a new session.
        assert_eq!(
            a.admit(&joiner("a"), Action::Publish, None, false),
            Ok(Admission::Publish { source: None })
        );
    }

    #[test]
    fn disconnecting_the_source_stops_its_replications_at_once() {
        let (mut a, mut b) = two_stages();
        replicate(&mut a, &mut b, "a", 60, T0);
        let fx = a.disconnect("a", Some("bye"), T0 + 1).unwrap();
        assert_eq!(
            fx.event_names(),
            ["REPLICATION_STOPPED", "PUBLISH_STOPPED", "LEFT"]
        );
        assert_eq!(stop_reasons(&fx), [StopReason::SourceDisconnected]);
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert_eq!(fx.cross_stage.len(), 1);
        assert!(
            fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::RevokeParticipant { .. }))
        );
        assert!(a.is_idle());

        // Also inside its window, when it is not connected at all.
        let (mut a, mut b) = two_stages();
        replicate(&mut a, &mut b, "a", 60, T0);
        a.peer_closed(PeerId(10), CloseCause::Timeout, T0 + 1);
        assert!(!a.is_connected("a"));
        let fx = a
            .disconnect("a", None, T0 + 2)
            .expect("a window counts as being there");
        assert_eq!(fx.event_names(), ["REPLICATION_STOPPED"]);
        assert_eq!(fx.close_sources, [SourceId(1)]);
        assert!(matches!(
            fx.writes[fx.writes.len() - 2],
            LiveWrite::EndSession { .. }
        ));
        assert!(a.disconnect("a", None, T0 + 3).is_none());
    }

    #[test]
    fn disconnecting_a_replica_stops_that_replication_only() {
        let (mut a, mut b) = two_stages();
        let mut c = stage_named("stageCCCCCCC");
        replicate(&mut a, &mut b, "a", 0, T0);
        replicate(&mut a, &mut c, "a", 0, T0);

        let fx = b.disconnect("a", Some("off topic"), T0 + 1).unwrap();
        assert_eq!(
            replica_events(&fx),
            [("a", "PUBLISH_STOPPED", true), ("a", "LEFT", true)]
        );
        assert!(
            !fx.writes
                .iter()
                .any(|w| matches!(w, LiveWrite::RevokeParticipant { .. })),
            "a replica's id is not revoked: it may be replicated there again"
        );
        assert!(matches!(
            fx.writes.last(),
            Some(LiveWrite::EndSession { .. })
        ));
        let [
            CrossStage::ReplicaEnded {
                source,
                destination,
                participant_id,
                reason,
            },
        ] = &fx.cross_stage[..]
        else {
            panic!("{:?}", fx.cross_stage)
        };
        assert_eq!(
            (source, destination, participant_id.as_str()),
            (a.stage(), b.stage(), "a")
        );
        let reason = *reason;
        assert_eq!(reason, StopReason::ReplicaDisconnected);

        let fx = a.replication_ended("a", b.stage(), reason, T0 + 2);
        assert_eq!(fx.event_names(), ["REPLICATION_STOPPED"]);
        assert!(fx.cross_stage.is_empty(), "B knows already");
        assert_eq!(
            last_record(&fx, "a").replication_state,
            Some(ReplicationState::Active),
            "C still runs"
        );
        assert_eq!(a.replication_destinations("a"), [c.stage().clone()]);
        assert!(
            a.replication_ended("a", b.stage(), reason, T0 + 3)
                .is_empty()
        );
        // And B may have it back.
        assert!(check_replication(&a, &b, "a").is_ok());
    }

    #[test]
    fn closing_a_stage_stops_replications_in_and_out() {
        let (mut a, mut b) = two_stages();
        publish(&mut b, "b", 5, 50, T0);
        replicate(&mut a, &mut b, "a", 30, T0);
        let mut c = stage_named("stageCCCCCCC");
        replicate(&mut b, &mut c, "b", 30, T0);

        // B is deleted: its replica of `a` goes (A is told), its own `b` stops (C is told).
        let fx = b.close_stage(EventsClose::StageDeleted, true, T0 + 1);
        assert_eq!(stop_reasons(&fx), [StopReason::SourceStageDeleted]);
        assert_eq!(
            fx.cross_stage,
            [
                CrossStage::EndReplica {
                    destination: c.stage().clone(),
                    source: b.stage().clone(),
                    participant_id: "b".into()
                },
                CrossStage::ReplicaEnded {
                    source: a.stage().clone(),
                    destination: b.stage().clone(),
                    participant_id: "a".into(),
                    reason: StopReason::DestinationStageDeleted
                },
            ]
        );
        assert!(matches!(
            fx.writes.last(),
            Some(LiveWrite::EndSession { .. })
        ));
        let fx = a.replication_ended("a", b.stage(), StopReason::DestinationStageDeleted, T0 + 2);
        assert_eq!(stop_reasons(&fx), [StopReason::DestinationStageDeleted]);
        let fx = c.end_replica("b", b.stage(), T0 + 2);
        assert_eq!(
            replica_events(&fx),
            [("b", "PUBLISH_STOPPED", true), ("b", "LEFT", true)]
        );
        assert!(c.is_idle());

        // Shutting down says so.
        let (mut a, mut b) = two_stages();
        replicate(&mut a, &mut b, "a", 30, T0);
        let fx = a.close_stage(EventsClose::ServerShutdown, true, T0 + 1);
        assert_eq!(stop_reasons(&fx), [StopReason::ServerShutdown]);
        assert_eq!(fx.close_sources, [SourceId(1)]);
    }

    #[test]
    fn a_source_stays_a_source_for_the_rest_of_its_session() {
        let (mut a, mut b) = two_stages();
        a.events_opened(&joiner("other"), ConnectionId(2), T0);
        replicate(&mut a, &mut b, "a", 0, T0);
        a.stop_replication("a", b.stage(), T0 + 1).unwrap();
        // Leaves and comes back in the same session: still a (stopped) source.
        let fx = a.connection_closed(ConnectionId(1), T0 + 2);
        assert_eq!(
            last_record(&fx, "a").replication_type,
            ReplicationType::Source
        );
        let fx = a.events_opened(&joiner("a"), ConnectionId(3), T0 + 3);
        let record = last_record(&fx, "a");
        assert_eq!(
            (record.replication_type, record.replication_state),
            (ReplicationType::Source, Some(ReplicationState::Stopped))
        );
        // A new session forgets it.
        a.connection_closed(ConnectionId(2), T0 + 4);
        a.connection_closed(ConnectionId(3), T0 + 4);
        assert!(a.is_idle());
        let fx = a.events_opened(&joiner("a"), ConnectionId(4), T0 + 5);
        assert_eq!(
            last_record(&fx, "a").replication_type,
            ReplicationType::None
        );
    }
}
