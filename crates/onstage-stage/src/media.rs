//! The boundary between the domain and the media plane.
//!
//! The domain decides *who* may publish or subscribe and records what happens; the
//! media plane (the `onstage-media` crate, a WebRTC SFU) moves the packets. The
//! domain sees WebRTC only as opaque SDP text and ids.
//!
//! Media flows from a **source** — a publishing slot, one per publishing
//! participant (and, for replication, shared by its replicas) — to subscribers.
//! A publisher peer *feeds* a source; a new publish to the same source replaces the
//! feeding peer without disturbing the source's subscribers, which is how a
//! reconnecting publisher resumes for everyone at once. A source's subscribers may
//! belong to any stage: a replica in another stage reads its publisher's source
//! (see `live::replication`), and a source whose feeding peer is gone (a replicated
//! publisher inside its reconnect window) stays open, with its subscribers, until
//! it is closed.

use std::fmt;

use async_trait::async_trait;

/// A publishing slot in the media plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

/// One WebRTC peer connection (a publish or a subscribe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why the media plane refused an offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaRefusal {
    #[error("the SDP offer is not valid: {0}")]
    InvalidOffer(String),
    #[error(
        "the offer has no acceptable video codec (H.264 constrained baseline/baseline with packetization-mode 1, or VP8)"
    )]
    InvalidVideoCodec,
    #[error("the offer has no acceptable audio codec (Opus)")]
    InvalidAudioCodec,
    #[error("the source is not publishing")]
    NoSuchSource,
    #[error("media plane failure: {0}")]
    Internal(String),
}

/// Why a peer connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// Closed on request (DELETE, replacement, disconnect, stage deletion).
    Requested,
    /// ICE or DTLS timed out: the peer vanished without a goodbye.
    Timeout,
    /// The remote end closed DTLS or failed.
    RemoteClosed,
    /// A subscriber whose source was closed.
    SourceClosed,
}

/// What the media plane reports about peers, in order per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSignal {
    /// ICE and DTLS are up: media can flow.
    Connected(PeerId),
    /// The peer is gone; no further signals for it.
    Closed(PeerId, CloseCause),
}

#[async_trait]
pub trait MediaPlane: Send + Sync + 'static {
    /// A new, empty publishing slot.
    fn new_source(&self) -> SourceId;
    /// Answers a publisher's offer; the new peer feeds `source`, replacing (and
    /// closing) the peer that fed it before.
    async fn publish(
        &self,
        source: SourceId,
        offer_sdp: String,
    ) -> Result<(PeerId, String), MediaRefusal>;
    /// Answers a subscriber's (recvonly) offer with the source's audio and video.
    /// The media plane asks the source's publisher for a keyframe.
    async fn subscribe(
        &self,
        source: SourceId,
        offer_sdp: String,
    ) -> Result<(PeerId, String), MediaRefusal>;
    /// Closes one peer; a `Closed(peer, Requested)` signal follows.
    fn close_peer(&self, peer: PeerId);
    /// Closes a source: its feeding peer and all its subscribers.
    fn close_source(&self, source: SourceId);
    /// Asks the source's publisher for a keyframe now (a replication starting);
    /// rate-limited like subscribers' requests. A source without a publisher ignores it.
    fn request_keyframe(&self, _source: SourceId) {}
    /// A feeder for `source` that is not a WebRTC peer (an RTMP encoder): its
    /// packets reach the source's subscribers as a publisher's do, replacing
    /// (and closing) the peer that fed it before. The `PeerId` names the feeder
    /// like a publisher's peer: `close_peer` closes it, and a `Closed` signal
    /// follows its end. Subscribers of the source are offered H.264 video.
    fn feed(&self, _source: SourceId) -> Result<(PeerId, Box<dyn SourceFeeder>), MediaRefusal> {
        Err(MediaRefusal::Internal(
            "this media plane cannot be fed from outside WebRTC".into(),
        ))
    }
}

/// What a fed packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FedKind {
    /// Opus, 48 kHz RTP clock.
    Audio,
    /// H.264 (packetization mode 1), 90 kHz RTP clock.
    Video,
}

/// One RTP-ready packet fed into a source by something that is not a WebRTC peer
/// (an RTMP encoder's bridge): the payload as it goes on the wire, and what a
/// subscriber's RTP header needs. Sequence numbers are the media plane's.
#[derive(Clone, Debug)]
pub struct FedPacket {
    pub kind: FedKind,
    /// RTP timestamp: 90 kHz for video, 48 kHz for audio, from one clock.
    pub time: u32,
    /// The last packet of a video access unit.
    pub marker: bool,
    /// The first packet of a keyframe (with its parameter sets), where a
    /// subscriber's video may start.
    pub keyframe_start: bool,
    pub payload: std::sync::Arc<[u8]>,
}

/// Feeds one source from outside WebRTC (BEHAVIOUR §10): packets go to the
/// source's home shard as its publisher's would. Dropping it is the publisher
/// leaving: the media plane lets go of the feeder (subscribers stay until the
/// source closes).
pub trait SourceFeeder: Send + Sync {
    /// Delivers a packet without waiting: `false` when it was dropped (the home
    /// shard is behind, or the feeder was closed).
    fn push(&self, packet: FedPacket) -> bool;
    /// Whether a subscriber asked for a keyframe since the last call. An encoder
    /// that cannot be asked may ignore it.
    fn take_keyframe_request(&self) -> bool;
    /// Whether the media plane closed the feeder (its source closed, or another
    /// publisher replaced it).
    fn is_closed(&self) -> bool;
    /// Resolves when the media plane closes the feeder.
    fn closed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}
