//! The rules of one stage as a state machine, without I/O (SPEC §4–§5).
//!
//! A participant is on the stage while it holds at least one connection: a publish,
//! subscribes (one per publisher) and an events socket. Its first accepted
//! connection joins it (`JOINED`), its last one closing makes it leave (`LEFT`). The
//! first participant to join an idle stage starts a session; the last to leave ends
//! it. A new connection of a kind the participant already holds replaces the old
//! one at once. A publisher that stops takes its subscribers' subscriptions with it.
//!
//! Accepting a publish or a subscribe needs an SDP answer from the media plane, so it
//! takes two steps: [`StageMachine::admit`] says whether the connection may happen
//! (and which media source it uses), then, once the media plane has answered, the
//! `*_accepted` method records it. The driver holds the stage's lock across both.
//!
//! Every input returns [`Effects`]; the machine never touches the store, the media
//! plane or a socket itself.

use std::collections::{BTreeMap, HashMap};

use crate::ids::{self, Arn};
use crate::media::{CloseCause, PeerId, SourceId};
use crate::model::{ClientAttributes, EventName, Participant, ParticipantEvent, ParticipantState};
use crate::store::LiveWrite;
use crate::time_fmt::UnixMillis;
use crate::token::TokenRejection;

use super::{Action, Joiner, Refusal, RefusalKind, StageState, StageStateParticipant};

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
    /// Publish into `source` when the participant already publishes (the new peer
    /// replaces the old one on the same source, so its subscribers keep going), or
    /// into a new source when `None`.
    Publish {
        source: Option<SourceId>,
    },
    /// Subscribe to the publisher's source.
    Subscribe {
        source: SourceId,
    },
    Events,
}

/// What the driver must do after an input, in this order: cut media, close events
/// sockets, forget ended connections, write the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub close_peers: Vec<PeerId>,
    pub close_sources: Vec<SourceId>,
    pub close_events: Vec<(ConnectionId, EventsClose)>,
    /// Connections that no longer exist, with their peer where they had one.
    pub ended: Vec<(ConnectionId, Option<PeerId>)>,
    /// For [`crate::Store::write_live`], one batch.
    pub writes: Vec<LiveWrite>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        *self == Effects::default()
    }

    /// The names of the events written, in order (for logs and tests).
    pub fn event_names(&self) -> Vec<&str> {
        self.writes
            .iter()
            .filter_map(|w| match w {
                LiveWrite::AppendEvent { event, .. } => Some(event.name.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionKind {
    Publish,
    Subscribe,
    Events,
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

#[derive(Clone, Debug)]
struct OnStage {
    /// Join order, for STAGE_STATE.
    order: u64,
    user_id: Option<String>,
    attributes: crate::model::Attributes,
    client: ClientAttributes,
    first_join_time: UnixMillis,
    /// Published since it joined this time (the store keeps "ever in the session").
    published: bool,
    publish: Option<Publishing>,
    /// By publisher id.
    subscriptions: BTreeMap<String, Subscription>,
    events: Option<ConnectionId>,
}

impl OnStage {
    fn has_connections(&self) -> bool {
        self.publish.is_some() || !self.subscriptions.is_empty() || self.events.is_some()
    }
}

/// The live state of one stage.
#[derive(Debug)]
pub struct StageMachine {
    stage: Arn,
    limits: StageLimits,
    session: Option<String>,
    participants: BTreeMap<String, OnStage>,
    /// Every live connection: whose, and of what kind.
    connections: HashMap<ConnectionId, (String, ConnectionKind)>,
    /// Peers of live publish and subscribe connections.
    peers: HashMap<PeerId, ConnectionId>,
    next_order: u64,
    /// Set when the stage is being deleted: everything is refused.
    closed: bool,
}

impl StageMachine {
    pub fn new(stage: Arn, limits: StageLimits) -> Self {
        StageMachine {
            stage,
            limits,
            session: None,
            participants: BTreeMap::new(),
            connections: HashMap::new(),
            peers: HashMap::new(),
            next_order: 0,
            closed: false,
        }
    }

    pub fn stage(&self) -> &Arn {
        &self.stage
    }

    /// The running session, if anyone is on the stage.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Nobody is on the stage and it is not being deleted: the machine can go.
    pub fn is_idle(&self) -> bool {
        self.participants.is_empty() && self.session.is_none() && !self.closed
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn is_connected(&self, participant_id: &str) -> bool {
        self.participants.contains_key(participant_id)
    }

    /// Publishing participants (replicas will count here too).
    pub fn publisher_count(&self) -> usize {
        self.participants.values().filter(|p| p.publish.is_some()).count()
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
                    is_publishing: p.publish.is_some(),
                })
                .collect(),
        }
    }

    // ----- admission ---------------------------------------------------------

    /// Whether `joiner` may open a connection for `action` (for a subscribe, to
    /// `publisher`), checked in this order: the stage still exists, the participant
    /// was not revoked (`revoked`, from the store), the token's capabilities, the
    /// publisher exists, the quotas.
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
                let Some(publishing) = self.participants.get(publisher).and_then(|p| p.publish) else {
                    return Err(Refusal::new(
                        RefusalKind::PublisherNotFound,
                        format!("participant {publisher} is not publishing in stage {}", self.stage),
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
                Ok(Admission::Subscribe {
                    source: publishing.source,
                })
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
            let mut event = self.event(participant_id, name, now);
            event.error_code = Some(refusal.error_code().as_str().to_owned());
            if name == EventName::SubscribeError {
                event.remote_participant_id = publisher.map(str::to_owned);
            }
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
    /// subscribers are undisturbed.
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
        self.connections.insert(conn, (pid.clone(), ConnectionKind::Publish));
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
            fx.writes
                .push(self.append(&session_id, &pid, EventName::SubscribeStopped, Some(publisher), now));
        }
        self.connections.insert(conn, (pid.clone(), ConnectionKind::Subscribe));
        self.peers.insert(peer, conn);
        fx.writes
            .push(self.append(&session_id, &pid, EventName::SubscribeStarted, Some(publisher), now));
        fx
    }

    /// An events socket was accepted; a previous one of the participant is closed.
    pub fn events_opened(&mut self, joiner: &Joiner, conn: ConnectionId, now: UnixMillis) -> Effects {
        let mut fx = Effects::default();
        self.join(joiner, now, &mut fx);
        let pid = joiner.participant_id.clone();
        let previous = self.participants.get_mut(&pid).and_then(|p| p.events.replace(conn));
        if let Some(old) = previous {
            fx.close_events.push((old, EventsClose::Replaced));
            self.forget_connection(old, None, &mut fx);
        }
        self.connections.insert(conn, (pid, ConnectionKind::Events));
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
            ConnectionKind::Publish => self.stop_publishing(&pid, now, &mut fx),
            ConnectionKind::Subscribe => {
                let publisher = self.publisher_of(&pid, conn);
                if let Some(publisher) = publisher {
                    self.stop_subscription(&pid, &publisher, true, now, &mut fx);
                }
            }
            ConnectionKind::Events => {
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
            ConnectionKind::Publish => self.stop_publishing(&pid, now, &mut fx),
            ConnectionKind::Subscribe => {
                if let Some(publisher) = self.publisher_of(&pid, conn) {
                    // The peer is gone already: nothing to close.
                    self.stop_subscription(&pid, &publisher, false, now, &mut fx);
                }
            }
            ConnectionKind::Events => {}
        }
        self.leave_if_unconnected(&pid, now, &mut fx);
        fx
    }

    /// DisconnectParticipant: every connection of the participant ends at once, it
    /// leaves, and its id is revoked on the stage. `None` when it is not connected.
    pub fn disconnect(&mut self, participant_id: &str, reason: Option<&str>, now: UnixMillis) -> Option<Effects> {
        if !self.participants.contains_key(participant_id) {
            return None;
        }
        let mut fx = Effects::default();
        self.end_all_connections(
            participant_id,
            EventsClose::Disconnected(reason.map(str::to_owned)),
            now,
            &mut fx,
        );
        fx.writes.push(LiveWrite::RevokeParticipant {
            participant_id: participant_id.to_owned(),
            reason: reason.map(str::to_owned),
            at: now,
        });
        Some(fx)
    }

    /// The stage is being deleted (or the server stops): everyone leaves, the session
    /// ends, and with `refuse_from_now` every later connection is refused.
    pub fn close_stage(&mut self, why: EventsClose, refuse_from_now: bool, now: UnixMillis) -> Effects {
        self.closed |= refuse_from_now;
        let mut fx = Effects::default();
        let mut everyone: Vec<(u64, String)> = self.participants.iter().map(|(id, p)| (p.order, id.clone())).collect();
        everyone.sort();
        for (_, pid) in everyone {
            if self.participants.contains_key(&pid) {
                self.end_all_connections(&pid, why.clone(), now, &mut fx);
            }
        }
        fx
    }

    // ----- internals ---------------------------------------------------------

    /// Starts the session if the stage is idle and adds the participant if it is not
    /// on the stage yet (`JOINED`). Refreshes what its token says either way. Returns
    /// the running session.
    fn join(&mut self, joiner: &Joiner, now: UnixMillis, fx: &mut Effects) -> String {
        let session_id = match &self.session {
            Some(s) => s.clone(),
            None => {
                let s = ids::new_session_id();
                fx.writes.push(LiveWrite::StartSession {
                    session_id: s.clone(),
                    start_time: now,
                });
                self.session = Some(s.clone());
                s
            }
        };
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
                    },
                );
                self.write_participant(pid, &session_id, ParticipantState::Connected, fx);
                fx.writes
                    .push(self.append(&session_id, pid, EventName::Joined, None, now));
            }
        }
        session_id
    }

    /// Ends a publish: the source closes (its feeding peer and every subscriber's
    /// peer with it), `PUBLISH_STOPPED`, and each subscriber's subscription to it
    /// ends (`SUBSCRIBE_STOPPED`), which may make that subscriber leave.
    ///
    /// (A reconnect window, SPEC §6, would keep the source open here instead.)
    fn stop_publishing(&mut self, pid: &str, now: UnixMillis, fx: &mut Effects) {
        let Some(publishing) = self.participants.get_mut(pid).and_then(|p| p.publish.take()) else {
            return;
        };
        fx.close_sources.push(publishing.source);
        self.forget_connection(publishing.conn, Some(publishing.peer), fx);
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
            // Closing the source closed their peers.
            self.stop_subscription(&subscriber, pid, false, now, fx);
            if subscriber != pid {
                self.leave_if_unconnected(&subscriber, now, fx);
            }
        }
    }

    fn stop_subscription(&mut self, pid: &str, publisher: &str, close_peer: bool, now: UnixMillis, fx: &mut Effects) {
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
            fx.writes
                .push(self.append(&session_id, pid, EventName::SubscribeStopped, Some(publisher), now));
        }
    }

    fn end_all_connections(&mut self, pid: &str, why: EventsClose, now: UnixMillis, fx: &mut Effects) {
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

    /// A participant without connections leaves (`LEFT`, DISCONNECTED); the last one
    /// to leave ends the session.
    fn leave_if_unconnected(&mut self, pid: &str, now: UnixMillis, fx: &mut Effects) {
        if self.participants.get(pid).is_none_or(OnStage::has_connections) {
            return;
        }
        let Some(session_id) = self.session.clone() else {
            return;
        };
        self.write_participant(pid, &session_id, ParticipantState::Disconnected, fx);
        self.participants.remove(pid);
        fx.writes
            .push(self.append(&session_id, pid, EventName::Left, None, now));
        if self.participants.is_empty() {
            fx.writes.push(LiveWrite::EndSession {
                session_id,
                end_time: now,
            });
            self.session = None;
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

    fn write_participant(&self, pid: &str, session_id: &str, state: ParticipantState, fx: &mut Effects) {
        let Some(p) = self.participants.get(pid) else {
            return;
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
                recording_state: "DISABLED".into(),
                protocol: "WHIP".into(),
                replication_type: "NONE".into(),
                replication_state: None,
                source_stage_arn: None,
                source_session_id: None,
            }),
        });
    }

    fn event(&self, pid: &str, name: EventName, now: UnixMillis) -> ParticipantEvent {
        ParticipantEvent {
            name: name.as_str().to_owned(),
            participant_id: pid.to_owned(),
            event_time: now,
            remote_participant_id: None,
            error_code: None,
            destination_stage_arn: None,
            destination_session_id: None,
            replica: false,
        }
    }

    fn append(&self, session_id: &str, pid: &str, name: EventName, remote: Option<&str>, now: UnixMillis) -> LiveWrite {
        let mut event = self.event(pid, name, now);
        event.remote_participant_id = remote.map(str::to_owned);
        LiveWrite::AppendEvent {
            session_id: session_id.to_owned(),
            event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Account, ResourceKind};
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
        StageMachine::new(Arn::new(&account, ResourceKind::Stage, "stageAAAAAAA"), limits)
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

    fn subscribe(m: &mut StageMachine, who: &str, publisher: &str, conn: u64, peer: u64, now: UnixMillis) -> Effects {
        let j = joiner(who);
        assert!(matches!(
            m.admit(&j, Action::Subscribe, Some(publisher), false).unwrap(),
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
                LiveWrite::UpsertParticipant { participant, .. } if participant.participant_id == who => {
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
        let LiveWrite::StartSession { session_id, start_time } = &fx.writes[0] else {
            panic!("{:?}", fx.writes)
        };
        assert_eq!(*start_time, T0);
        assert_eq!(m.session_id(), Some(session_id.as_str()));
        assert_eq!(fx.event_names(), ["JOINED"]);
        let record = last_record(&fx, "a");
        assert_eq!(record.state, ParticipantState::Connected);
        assert_eq!(record.first_join_time, T0);
        assert_eq!(record.user_id.as_deref(), Some("user-a"));
        assert_eq!(record.protocol, "WHIP");
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
        assert!(!fx.writes.iter().any(|w| matches!(w, LiveWrite::StartSession { .. })));
        let fx = m.connection_closed(ConnectionId(1), T0 + 2);
        assert_eq!(fx.event_names(), ["LEFT"]);
        assert!(!fx.writes.iter().any(|w| matches!(w, LiveWrite::EndSession { .. })));
        assert_eq!(
            m.snapshot()
                .participants
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        let fx = m.connection_closed(ConnectionId(2), T0 + 3);
        assert!(matches!(fx.writes.last(), Some(LiveWrite::EndSession { .. })));
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
        assert!(m.peer_closed(PeerId(10), CloseCause::Requested, T0 + 2).is_empty());
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
            [("SUBSCRIBE_STOPPED", Some("a")), ("SUBSCRIBE_STARTED", Some("a"))]
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
        let refusal = m.admit(&joiner("p12"), Action::Publish, None, false).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::QuotaExceeded);
        assert_eq!(refusal.http_status(), 403);
        assert_eq!(refusal.error_code(), EventErrorCode::QuotaExceeded);
        let fx = m.refused("p12", Action::Publish, None, &refusal, T0 + 1);
        let LiveWrite::AppendEvent { event, .. } = &fx.writes[0] else {
            panic!()
        };
        assert_eq!(
            (event.name.as_str(), event.error_code.as_deref()),
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
        let refusal = m.admit(&joiner("d"), Action::Subscribe, Some("a"), false).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::QuotaExceeded);
        assert_eq!(refusal.event_name(Action::Subscribe), EventName::SubscribeError);
    }

    #[test]
    fn capabilities_are_enforced() {
        let mut m = machine();
        publish(&mut m, "a", 1, 10, T0);
        let mut nothing = joiner("n");
        nothing.capabilities = Capabilities::default();
        let refusal = m.admit(&nothing, Action::Publish, None, false).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::MissingCapability);
        assert_eq!(refusal.http_status(), 403);
        assert_eq!(refusal.error_code(), EventErrorCode::InsufficientCapabilities);
        assert_eq!(refusal.event_name(Action::Publish), EventName::PublishError);
        let refusal = m.admit(&nothing, Action::Subscribe, Some("a"), false).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::MissingCapability);
        // No capabilities still hold the events socket.
        assert_eq!(m.admit(&nothing, Action::Events, None, false), Ok(Admission::Events));
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
            assert_eq!(refusal.http_status(), 404);
            assert_eq!(refusal.error_code(), EventErrorCode::PublisherNotFound);
        }
    }

    #[test]
    fn refusals_are_recorded_only_in_a_running_session() {
        let mut m = machine();
        let refusal = Refusal::token(TokenRejection::BadSignature);
        assert!(
            m.refused("x", Action::Publish, None, &refusal, T0).is_empty(),
            "an idle stage starts no session"
        );
        m.events_opened(&joiner("a"), ConnectionId(1), T0);
        let fx = m.refused("x", Action::Publish, None, &refusal, T0 + 1);
        let LiveWrite::AppendEvent { event, .. } = &fx.writes[0] else {
            panic!()
        };
        assert_eq!(event.name, "JOIN_ERROR", "a refused token never joined");
        assert_eq!(event.error_code.as_deref(), Some("INVALID_INPUT"));
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
        assert_eq!(events_of(&fx, "a"), [("PUBLISH_STOPPED", None), ("LEFT", None)]);
        assert_eq!(events_of(&fx, "b"), [("SUBSCRIBE_STOPPED", Some("a")), ("LEFT", None)]);
        // c still holds its events socket.
        assert_eq!(events_of(&fx, "c"), [("SUBSCRIBE_STOPPED", Some("a"))]);
        assert!(m.is_connected("c") && !m.is_connected("b"));
        assert!(!fx.writes.iter().any(|w| matches!(w, LiveWrite::EndSession { .. })));
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
        assert_eq!(events_of(&fx, "b"), [("SUBSCRIBE_STOPPED", Some("a")), ("LEFT", None)]);
        assert_eq!(last_record(&fx, "b").state, ParticipantState::Disconnected);
        // DELETE of a subscribe closes its peer.
        subscribe(&mut m, "c", "a", 3, 30, T0);
        let fx = m.connection_closed(ConnectionId(3), T0 + 1);
        assert_eq!(fx.close_peers, [PeerId(30)]);
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
            [(ConnectionId(2), EventsClose::Disconnected(Some("bye".into())))]
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

        let refusal = m.admit(&joiner("a"), Action::Events, None, true).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::Revoked);
        assert_eq!(refusal.http_status(), 403);
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
        assert_eq!(fx.close_events, [(ConnectionId(3), EventsClose::StageDeleted)]);
        assert!(matches!(fx.writes.last(), Some(LiveWrite::EndSession { .. })));
        assert_eq!(fx.event_names().iter().filter(|n| **n == "LEFT").count(), 2);
        assert!(m.is_closed() && !m.is_idle() && m.snapshot().participants.is_empty());
        let refusal = m.admit(&joiner("c"), Action::Events, None, false).unwrap_err();
        assert_eq!(refusal.http_status(), 401);
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
}
