//! The live plane: who is on a stage right now, and the record of it (BEHAVIOUR §3–§5).
//!
//! Participants reach a stage through three kinds of connection — a WHIP publish, a
//! subscribe to one publisher, the stage-events socket — each authenticated by a
//! participant token. This module decides whether a connection is accepted, what it
//! replaces, when a participant joins and leaves, when a stage session starts and
//! ends, and what is written to the store and told to the stage's events sockets.
//!
//! It is split the way str0m is:
//!
//! - [`machine::StageMachine`] holds the rules for one stage as a plain state
//!   machine: inputs are admissions, accepted connections, closed connections and
//!   peers, DisconnectParticipant and stage deletion, each with the time; outputs are
//!   [`machine::Effects`] — store writes, media peers and sources to close, events
//!   sockets to close. No I/O, no clock, no tasks: every rule is unit-tested without
//!   a socket.
//! - [`LivePlane`] is the thin driver: it verifies tokens through the
//!   [`ControlPlane`](crate::ControlPlane), asks the [`MediaPlane`](crate::media::MediaPlane)
//!   for SDP answers, feeds the machine, and carries out its effects. One lock per
//!   stage serialises that stage's changes, so admission and acceptance see the same
//!   state and the store receives a stage's writes in order; stages never wait for
//!   each other.
//!
//! Participant replication (BEHAVIOUR §6) is a rule of both stages involved: the
//! source stage keeps the participant's replications and their reconnect windows,
//! the destination has the replica as a participant without connections whose
//! publishing slot is the source's media source (see [`machine`]). How the
//! destination gets hold of that media is behind [`ReplicaFeeds`] (see
//! [`replication`]), so that a cluster can relay it between nodes later.

pub mod client;
pub mod machine;
mod plane;
mod recording;
pub mod refusals;
pub mod replication;

use crate::media::MediaRefusal;
use crate::model::{Attributes, ClientAttributes, EventErrorCode, EventName};
use crate::token::{Capabilities, TokenRejection};

pub use machine::{
    Admission, ConnectionId, CrossStage, Effects, EventsClose, IngestOrigin, StageLimits,
    StageMachine,
};
pub use plane::{Accepted, EventsSubscription, EventsUpdate, IngestStream, LiveConfig, LivePlane};
pub use replication::{FeedOrigin, LocalReplicaFeeds, ReplicaFeeds};

/// At most this many publishers per stage (IVS's quota), replicas included.
pub const MAX_PUBLISHERS_PER_STAGE: usize = 12;
/// At most this many active replications of one participant (BEHAVIOUR §6).
pub const MAX_REPLICATIONS_PER_PARTICIPANT: usize = 5;
/// Subscribing participants per stage when the operator sets no limit (IVS's quota).
pub const DEFAULT_MAX_SUBSCRIBERS_PER_STAGE: usize = 10_000;

/// Someone connecting to a stage: what their verified token says, and what their
/// client says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joiner {
    pub participant_id: String,
    pub user_id: Option<String>,
    pub attributes: Attributes,
    pub capabilities: Capabilities,
    pub client: ClientAttributes,
}

/// What a connection is for; it decides which error event a refusal records, and
/// what ends when the connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
    /// The stage-events socket.
    Events,
}

/// Why a connection was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// The token does not authenticate its holder for the stage.
    Token(TokenRejection),
    /// DisconnectParticipant removed this participant id from the stage.
    Revoked,
    /// RevokeConnectionToken revoked the token.
    TokenRevoked,
    /// A publish URL names another participant id than the token's.
    WrongParticipantId,
    /// The token does not grant what the connection needs.
    MissingCapability,
    /// 13th publisher, or the subscriber limit.
    QuotaExceeded,
    /// Subscribing to someone who is not publishing.
    PublisherNotFound,
    /// The participant id is a replica's on this stage (only a self-signed token
    /// can claim another stage's participant id).
    ReplicaIdInUse,
    /// The SDP offer could not be used.
    InvalidOffer,
    InvalidVideoCodec,
    InvalidAudioCodec,
    /// Something on our side failed.
    Internal,
}

/// A refused connection: why (the API crate answers with the status that goes with
/// it), the plain-text reason, and the `errorCode` to record (BEHAVIOUR §3).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Refusal {
            kind,
            message: message.into(),
        }
    }

    pub fn token(rejection: TokenRejection) -> Self {
        let message = rejection.to_string();
        Refusal {
            kind: RefusalKind::Token(rejection),
            message,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Refusal::new(RefusalKind::Internal, message)
    }

    pub fn from_media(refusal: MediaRefusal) -> Self {
        let kind = match &refusal {
            MediaRefusal::InvalidOffer(_) => RefusalKind::InvalidOffer,
            MediaRefusal::InvalidVideoCodec => RefusalKind::InvalidVideoCodec,
            MediaRefusal::InvalidAudioCodec => RefusalKind::InvalidAudioCodec,
            MediaRefusal::NoSuchSource => RefusalKind::PublisherNotFound,
            MediaRefusal::Internal(_) => RefusalKind::Internal,
        };
        Refusal {
            kind,
            message: refusal.to_string(),
        }
    }

    /// The `errorCode` of the error event.
    pub fn error_code(&self) -> EventErrorCode {
        match &self.kind {
            RefusalKind::Token(rejection) => rejection.error_code(),
            RefusalKind::Revoked | RefusalKind::TokenRevoked | RefusalKind::MissingCapability => {
                EventErrorCode::InsufficientCapabilities
            }
            RefusalKind::WrongParticipantId => EventErrorCode::InvalidInput,
            RefusalKind::QuotaExceeded => EventErrorCode::QuotaExceeded,
            RefusalKind::PublisherNotFound => EventErrorCode::PublisherNotFound,
            RefusalKind::InvalidOffer | RefusalKind::ReplicaIdInUse => EventErrorCode::InvalidInput,
            RefusalKind::InvalidVideoCodec => EventErrorCode::InvalidVideoCodec,
            RefusalKind::InvalidAudioCodec => EventErrorCode::InvalidAudioCodec,
            RefusalKind::Internal => EventErrorCode::InternalServerException,
        }
    }

    /// The error event to record: a refused token or a revoked participant could
    /// not join at all (`JOIN_ERROR`); anything else failed the publish or the
    /// subscribe it was for.
    pub fn event_name(&self, action: Action) -> EventName {
        match (&self.kind, action) {
            (
                RefusalKind::Token(_)
                | RefusalKind::Revoked
                | RefusalKind::TokenRevoked
                | RefusalKind::ReplicaIdInUse,
                _,
            )
            | (_, Action::Events) => EventName::JoinError,
            (_, Action::Publish) => EventName::PublishError,
            (_, Action::Subscribe) => EventName::SubscribeError,
        }
    }
}

/// Why an `EXCHANGE_TOKEN` was not accepted; the socket stays open with the token
/// it held.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeRefusal {
    /// The new token does not authenticate its holder for the stage (or is revoked).
    #[error("{0}")]
    Refused(Refusal),
    /// Only tokens signed with one of the account's public keys may be exchanged.
    #[error("token exchange needs a token signed with an imported public key")]
    NotSelfSigned,
    /// A claim that must stay the same changed.
    #[error("the new token's {0} differs from the current token's")]
    Changed(&'static str),
}

/// What the stage-events socket sends as `STAGE_STATE`: who is on the stage, who
/// publishes and what each said about its own media (`SET_STATE`), in the order they
/// joined. One value per change, shared by every socket of the stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageState {
    pub stage_id: String,
    pub participants: Vec<StageStateParticipant>,
    /// The wire form of this state, made once by whoever serves it (the first
    /// socket to send it) and shared by every other socket.
    pub rendered: Rendered,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageStateParticipant {
    pub id: String,
    pub user_id: Option<String>,
    pub attributes: Attributes,
    pub is_publishing: bool,
    /// As the participant's client last said (`SET_STATE`); `false` until it does.
    pub audio_muted: bool,
    pub video_stopped: bool,
}

/// A value's wire form, made at most once. It is a cache: two states are equal
/// whatever their caches hold, and a clone starts empty.
#[derive(Default)]
pub struct Rendered(std::sync::OnceLock<std::sync::Arc<str>>);

impl Rendered {
    /// The wire form, made by `render` the first time it is asked for.
    pub fn get_or_render(&self, render: impl FnOnce() -> String) -> std::sync::Arc<str> {
        self.0.get_or_init(|| render().into()).clone()
    }
}

impl Clone for Rendered {
    fn clone(&self) -> Self {
        Rendered::default()
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Rendered {}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Rendered(..)"
        } else {
            "Rendered(empty)"
        })
    }
}
