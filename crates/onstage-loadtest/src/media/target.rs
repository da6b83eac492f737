//! The seam between the load generator and the server it loads.
//!
//! The peers, the synthetic media and the measurements are the same whatever
//! the server; what differs is signaling: how a room is made, how a publisher's
//! offer gets an answer, how a subscription is negotiated and how a peer leaves.
//! A [`Target`] does exactly that over the server's own API. onstage's is in
//! [`super::onstage`], Janus's VideoRoom in [`super::janus`]; they differ in one
//! way that shapes the trait: Janus makes the subscribe *offer* and the client
//! answers ([`SubscribeMode::ServerOffers`]), where onstage answers the client's
//! offer ([`SubscribeMode::ClientOffers`]).
//!
//! Features only one server has (replication, the participant list) are methods
//! with a default that says so, so a scenario that needs them fails clearly.

use anyhow::bail;
use async_trait::async_trait;

/// A failure with a kind to count it under in the report (`whip_publish_503`,
/// `token`, …); targets return it inside `anyhow::Error` where the kind is known.
#[derive(Debug)]
pub struct Failure {
    pub kind: String,
    pub detail: String,
}

impl Failure {
    /// A failure of the given kind, as an error.
    #[allow(clippy::new_ret_no_self)] // the point is an `anyhow::Error` carrying a `Failure`
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            kind: kind.into(),
            detail: detail.into(),
        })
    }

    /// The kind of any error: a [`Failure`]'s own, else `fallback`.
    pub fn kind_of(error: &anyhow::Error, fallback: &str) -> String {
        error
            .downcast_ref::<Failure>()
            .map_or_else(|| fallback.to_owned(), |f| f.kind.clone())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for Failure {}

/// A room (an onstage stage, a Janus VideoRoom room), as the target names it.
#[derive(Clone, Debug)]
pub struct Room {
    /// The target's id for it (a stage ARN, a room number).
    pub id: String,
    /// Human-readable name, for messages.
    pub name: String,
}

/// Who negotiates a subscription's SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeMode {
    /// The client offers (recvonly) and the server answers: onstage.
    ClientOffers,
    /// The server offers (sendonly) and the client answers: Janus.
    ServerOffers,
}

/// A peer's signaling session on the target: what leaving takes, and, for a
/// server-offered subscription, where the client's answer goes.
#[async_trait]
pub trait Session: Send {
    /// Sends the client's SDP answer to a server-made offer.
    async fn answer(&mut self, _answer_sdp: String) -> anyhow::Result<()> {
        bail!("this session takes no SDP answer")
    }

    /// Leaves: the server closes the peer and forgets the participant.
    async fn leave(self: Box<Self>) -> anyhow::Result<()>;
}

/// An accepted publish.
pub struct Published {
    /// The id subscribers name the publisher by (onstage participant id, Janus feed id).
    pub publisher_id: String,
    pub answer_sdp: String,
    pub session: Box<dyn Session>,
}

/// An accepted subscription: the server's answer (client-offered) or offer
/// (server-offered, to be answered through `session`).
pub struct Subscribed {
    pub participant_id: Option<String>,
    pub server_sdp: String,
    pub session: Box<dyn Session>,
}

#[async_trait]
pub trait Target: Send + Sync {
    fn name(&self) -> &'static str;

    fn subscribe_mode(&self) -> SubscribeMode;

    /// The server's process id, when the target knows it (e.g. it started the
    /// server); `--server-pid` wins over it.
    fn server_pid(&self) -> Option<u32> {
        None
    }

    /// Where the target's API is, for the report, when it differs from `--endpoint`.
    fn endpoint(&self) -> Option<String> {
        None
    }

    /// Creates a room for up to `publishers` publishers.
    async fn create_room(&self, name: &str, publishers: u32) -> anyhow::Result<Room>;

    async fn delete_room(&self, room: &Room) -> anyhow::Result<()>;

    /// Publishes with `offer_sdp` (sendonly audio + video) as user `user`.
    async fn publish(
        &self,
        room: &Room,
        user: &str,
        offer_sdp: String,
    ) -> anyhow::Result<Published>;

    /// Subscribes `user` to `publisher_id`'s media in `room`. `offer_sdp` is the
    /// client's recvonly offer in [`SubscribeMode::ClientOffers`], `None` otherwise.
    async fn subscribe(
        &self,
        room: &Room,
        publisher_id: &str,
        user: &str,
        offer_sdp: Option<String>,
    ) -> anyhow::Result<Subscribed>;

    /// Makes `publisher_id`, publishing in `source`, appear in `destination` too.
    async fn replicate(
        &self,
        _source: &Room,
        _publisher_id: &str,
        _destination: &Room,
    ) -> anyhow::Result<()> {
        bail!(
            "the {} target does not support participant replication",
            self.name()
        )
    }

    async fn stop_replication(
        &self,
        _source: &Room,
        _publisher_id: &str,
        _destination: &Room,
    ) -> anyhow::Result<()> {
        bail!(
            "the {} target does not support participant replication",
            self.name()
        )
    }

    /// Ids of the participants the server lists as connected in `room` now.
    async fn connected_participants(&self, _room: &Room) -> anyhow::Result<Vec<String>> {
        bail!("the {} target cannot list participants", self.name())
    }

    /// Called once at the end of a run (e.g. to stop a server the target started).
    async fn shutdown(&self) -> anyhow::Result<()> {
        Ok(())
    }
}
