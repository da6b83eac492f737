//! How a destination stage gets a replicated participant's media (BEHAVIOUR §6, §7).
//!
//! A replica in stage B is a participant whose publishing slot is a media
//! [`SourceId`]: B's subscribers subscribe to that source exactly as to a local
//! publisher's, and the media plane forwards the publisher's RTP packets to every
//! subscriber of the source, whatever stage it belongs to. The one step that depends
//! on *where* the publisher is — turning "participant P publishing in stage A, into
//! source S there" into "a source B's subscribers can read here" — is
//! [`ReplicaFeeds`]:
//!
//! - on one node, [`LocalReplicaFeeds`] answers with A's own source: nothing is
//!   copied; a replicated packet is forwarded from the publisher's peer straight to
//!   B's subscribers, and their keyframe requests and NACKs reach the real publisher
//!   the same way a local subscriber's do. Because the source outlives its feeding
//!   peer, a publisher that returns within the reconnect window feeds the same source
//!   and B's subscribers resume on their existing subscriptions.
//! - in a cluster (not built yet), a node-to-node relay implements the same trait:
//!   `open` creates a local source on B's node fed by a relay peer pulling S from A's
//!   node (forwarding keyframe requests back), `close` tears the relay down. The
//!   control messages between the two stages' machines
//!   ([`CrossStage`](super::machine::CrossStage)) are already explicit values the
//!   driver delivers, so they can travel between nodes the same way.

use async_trait::async_trait;

use crate::error::DomainError;
use crate::ids::Arn;
use crate::media::SourceId;

/// Whose media a replica carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedOrigin {
    /// The stage the participant publishes in.
    pub source_stage: Arn,
    pub participant_id: String,
    /// The participant's media source on the source stage's node.
    pub source: SourceId,
}

/// Makes a replicated participant's media available where its destination stage is.
#[async_trait]
pub trait ReplicaFeeds: Send + Sync + 'static {
    /// A media source on this node carrying `origin`'s media, for the destination
    /// stage's subscribers to subscribe to.
    async fn open(&self, origin: &FeedOrigin) -> Result<SourceId, DomainError>;
    /// The replica that `open` served has left its destination. The live plane has
    /// already closed the destination subscribers' peers.
    fn close(&self, source: SourceId);
}

/// Source and destination on this node: the replica reads the publisher's own
/// source.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalReplicaFeeds;

#[async_trait]
impl ReplicaFeeds for LocalReplicaFeeds {
    async fn open(&self, origin: &FeedOrigin) -> Result<SourceId, DomainError> {
        Ok(origin.source)
    }

    fn close(&self, _source: SourceId) {}
}
