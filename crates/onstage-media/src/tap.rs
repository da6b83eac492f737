//! A tap on a source: its packets, as forwarded, for a consumer off the
//! forwarding threads (the recorder).
//!
//! The source's home shard sends each packet of a tapped source once more, into
//! a bounded channel, with `try_send`: the payload is shared (`Arc`), nothing is
//! copied, and a full channel drops the packet and counts it
//! (`onstage_media_tap_packets_shed_total`). Forwarding never waits for a tap.

use std::sync::Arc;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::MediaKind;

use crate::producer::Packet;

/// What a tapped packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapCodec {
    H264,
    Vp8,
    Opus,
    /// Anything else (not recorded).
    Other,
}

/// One RTP packet of a tapped source.
#[derive(Clone, Debug)]
pub struct MediaPacket {
    pub codec: TapCodec,
    pub video: bool,
    /// The incoming stream (a publisher's SSRC): another feed means another
    /// publisher, whose timestamps and sequence numbers start afresh.
    pub feed: u64,
    /// Extended sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub time: u32,
    pub arrival: Instant,
    pub marker: bool,
    pub keyframe_start: bool,
    pub payload: Arc<[u8]>,
}

impl MediaPacket {
    pub(crate) fn from_forwarded(p: &Packet) -> Self {
        MediaPacket {
            codec: match p.params.spec().codec {
                Codec::H264 => TapCodec::H264,
                Codec::Vp8 => TapCodec::Vp8,
                Codec::Opus => TapCodec::Opus,
                _ => TapCodec::Other,
            },
            video: p.kind == MediaKind::Video,
            feed: p.feed,
            seq: p.seq,
            time: p.time,
            arrival: p.arrival,
            marker: p.marker,
            keyframe_start: p.keyframe_start,
            payload: p.payload.clone(),
        }
    }
}
