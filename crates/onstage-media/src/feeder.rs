//! A source fed from outside WebRTC (an RTMP encoder's bridge, BEHAVIOUR §10).
//!
//! The feeder's owner (a task off the forwarding threads) holds a
//! [`FeederHandle`]; each [`FedPacket`] it pushes goes with `try_send` into the
//! source's home shard's media queue — the queue datagrams use, bounded, shed
//! when full and counted (`onstage_media_fed_packets_shed_total`) — so a shard
//! that is behind never blocks the feeder. On the home shard the forwarder turns
//! it into the [`Packet`] a publisher's decrypted packet would have become
//! ([`Fed::packet`]: H.264 or Opus payload parameters, the feeder's own sequence
//! numbers) and forwards it the same way: to the subscribers, other shards, the
//! tap. Keyframe requests for the source set a flag on the [`FeederLink`] that
//! the owner may read or ignore; closing the source (or a new publisher) closes
//! the link, which the owner can await. Dropping the handle is the publisher
//! leaving: its shard lets go of the feeder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use onstage_stage::media::{FedKind, FedPacket, PeerId, SourceFeeder, SourceId};
use str0m::format::{Codec, CodecConfig, PayloadParams};
use str0m::media::MediaKind;
use tokio::sync::{Notify, mpsc};

use crate::forwarder::Control;
use crate::placement::spread;
use crate::producer::Packet;
use crate::shard::{ShardData, ShardInput};

/// What the forwarder and the feeder's owner share.
#[derive(Default, Debug)]
pub(crate) struct FeederLink {
    closed: AtomicBool,
    keyframe_wanted: AtomicBool,
    notify: Notify,
}

impl FeederLink {
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn want_keyframe(&self) {
        self.keyframe_wanted.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn take_keyframe_request(&self) -> bool {
        self.keyframe_wanted.swap(false, Ordering::Relaxed)
    }
}

/// The payload parameters fed packets are forwarded with: the H.264 (constrained
/// baseline, packetization mode 1) and Opus that every subscriber's answer offers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FedParams {
    h264: PayloadParams,
    opus: PayloadParams,
}

impl FedParams {
    pub(crate) fn new() -> Option<FedParams> {
        let mut config = CodecConfig::empty();
        config.enable_opus(true, false);
        config.add_h264(108.into(), Some(109.into()), true, 0x42e01f);
        Some(FedParams {
            h264: *config.find(|p| p.spec().codec == Codec::H264)?,
            opus: *config.find(|p| p.spec().codec == Codec::Opus)?,
        })
    }
}

/// A feeder as its home forwarder sees it.
pub(crate) struct Fed {
    pub(crate) source: SourceId,
    pub(crate) link: Arc<FeederLink>,
    audio_feed: u64,
    video_feed: u64,
    audio_seq: u64,
    video_seq: u64,
}

impl Fed {
    pub(crate) fn new(id: PeerId, source: SourceId, link: Arc<FeederLink>) -> Self {
        let base = spread(id.0);
        Fed {
            source,
            link,
            audio_feed: base ^ 1,
            video_feed: base ^ 2,
            // Any start will do: subscribers renumber.
            audio_seq: 1 << 16,
            video_seq: 1 << 16,
        }
    }

    /// The packet forwarded for a fed one, as `producer.rs` makes a publisher's.
    pub(crate) fn packet(&mut self, now: Instant, params: &FedParams, fed: FedPacket) -> Packet {
        let (kind, params, feed, seq) = match fed.kind {
            FedKind::Audio => {
                self.audio_seq += 1;
                (
                    MediaKind::Audio,
                    params.opus,
                    self.audio_feed,
                    self.audio_seq,
                )
            }
            FedKind::Video => {
                self.video_seq += 1;
                (
                    MediaKind::Video,
                    params.h264,
                    self.video_feed,
                    self.video_seq,
                )
            }
        };
        Packet {
            kind,
            params,
            feed,
            seq,
            time: fed.time,
            arrival: now,
            marker: fed.marker,
            keyframe_start: kind == MediaKind::Video && fed.keyframe_start,
            audio_level: None,
            voice_activity: None,
            payload: fed.payload,
        }
    }
}

/// The feeder's owner's end (see the module's documentation).
pub(crate) struct FeederHandle {
    pub(crate) peer: PeerId,
    pub(crate) data: mpsc::Sender<ShardData>,
    pub(crate) control: mpsc::UnboundedSender<ShardInput>,
    pub(crate) link: Arc<FeederLink>,
}

impl SourceFeeder for FeederHandle {
    fn push(&self, packet: FedPacket) -> bool {
        if self.link.is_closed() {
            return false;
        }
        let sent = self
            .data
            .try_send(ShardData::Fed {
                peer: self.peer,
                packet,
            })
            .is_ok();
        if !sent {
            metrics::counter!("onstage_media_fed_packets_shed_total").increment(1);
        }
        sent
    }

    fn take_keyframe_request(&self) -> bool {
        self.link.keyframe_wanted.swap(false, Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
        self.link.is_closed()
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let notified = self.link.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.link.is_closed() {
                    return;
                }
                notified.await;
            }
        })
    }
}

impl Drop for FeederHandle {
    fn drop(&mut self) {
        if !self.link.is_closed() {
            let _ = self
                .control
                .send(ShardInput::Control(Control::ClosePeer(self.peer)));
        }
    }
}
