//! The consumer side: a subscriber's media lines, and how a source's packet is
//! written to one of them.
//!
//! Audio goes into the audio line and video into the video line (mixing them up
//! is accepted silently by the stack and stalls the receiver). Each packet is
//! renumbered for the subscriber ([`crate::rewrite`]) and its video starts — and,
//! after the publisher is replaced, restarts — at a keyframe: the keyframe gate.
//! Writing only queues the packet in the subscriber's `Rtc` (its payload shared,
//! and kept in the line's retransmission cache to answer NACKs); the forwarder
//! runs the subscriber later, which encrypts and sends what it queued.

use std::time::Duration;

use onstage_stage::media::{PeerId, SourceId};
use str0m::Rtc;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite};

use crate::placement::spread;
use crate::producer::Packet;
use crate::rewrite::OutgoingStream;

/// Video packets a subscriber's connection keeps to answer NACKs with: about
/// half a second of 2.5 Mbit/s video, more than a round trip and a retry on any
/// network a live stage is usable on. Their payloads are the publisher's, shared
/// by every subscriber, so an entry costs only str0m's packet record (~430 bytes,
/// ~55 KB per subscriber; own copies of the packets cost ~190 KB).
pub(crate) const VIDEO_RETRANSMIT_PACKETS: usize = 128;
const VIDEO_RETRANSMIT_AGE: Duration = Duration::from_secs(1);

/// A subscriber: the source it follows and its media lines.
pub(crate) struct Consumer {
    pub(crate) source: SourceId,
    audio: Option<Track>,
    video: Option<Track>,
}

/// What became of a packet written to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Written {
    Queued,
    /// The subscriber's video waits for a keyframe and this packet does not start one.
    AwaitingKeyframe,
    /// Nothing to write it to (no such media line, no matching codec, a stray).
    Skipped,
}

/// A subscriber's media line of one kind.
struct Track {
    mid: Mid,
    /// Whether str0m's send stream for the line has had its retransmission
    /// cache sized (on the first write).
    configured: bool,
    /// The incoming payload parameters last matched, and the local payload type
    /// they matched (publishers and subscribers number codecs independently).
    pt: Option<(PayloadParams, Pt)>,
    stream: OutgoingStream,
}

impl Track {
    fn new(mid: Mid, kind: MediaKind, id: PeerId) -> Self {
        let clock_rate = if kind == MediaKind::Audio {
            48_000
        } else {
            90_000
        };
        // Any first sequence number will do; differing ones keep subscribers'
        // streams from looking alike.
        let first_seq = (spread(id.0) >> 48) as u16;
        Track {
            mid,
            configured: false,
            pt: None,
            stream: OutgoingStream::new(clock_rate, first_seq),
        }
    }
}

impl Consumer {
    pub(crate) fn new(source: SourceId) -> Self {
        Consumer {
            source,
            audio: None,
            video: None,
        }
    }

    /// The peer's connection added a media line: the first of each kind is used.
    pub(crate) fn media_added(&mut self, id: PeerId, mid: Mid, kind: MediaKind) {
        let line = if kind == MediaKind::Audio {
            &mut self.audio
        } else {
            &mut self.video
        };
        if line.is_none() {
            *line = Some(Track::new(mid, kind, id));
        }
    }

    /// A new publisher feeds the source: video waits for its first keyframe.
    pub(crate) fn await_keyframe(&mut self) {
        if let Some(track) = &mut self.video {
            track.stream.restart();
        }
    }

    /// Queues `packet` in the media line of its kind, renumbered for this subscriber.
    pub(crate) fn write(&mut self, rtc: &mut Rtc, packet: &Packet) -> Written {
        let video_packet = packet.kind == MediaKind::Video;
        let Some(track) = (if video_packet {
            self.video.as_mut()
        } else {
            self.audio.as_mut()
        }) else {
            return Written::Skipped;
        };
        let pt = match track.pt {
            Some((params, pt)) if params == packet.params => pt,
            _ => {
                let Some(pt) = rtc
                    .codec_config()
                    .match_params(packet.params)
                    .map(|p| p.pt())
                else {
                    return Written::Skipped;
                };
                track.pt = Some((packet.params, pt));
                pt
            }
        };
        // A subscriber starts (and, after its publisher is replaced, restarts) its
        // video at a keyframe; packets before one are undecodable. Audio starts anywhere.
        let can_start = !video_packet || packet.keyframe_start;
        let Some(out) = track.stream.renumber(
            packet.feed,
            packet.seq,
            packet.time,
            packet.arrival,
            can_start,
        ) else {
            return if video_packet && !track.stream.is_following() {
                Written::AwaitingKeyframe
            } else {
                Written::Skipped
            };
        };
        // By media line, not by SSRC: a scan of the line's two streams costs less
        // than hashing an SSRC, and this runs for every packet and subscriber.
        let mut api = rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(track.mid, None) else {
            return Written::Skipped;
        };
        if !track.configured {
            track.configured = true;
            if video_packet {
                stream.set_rtx_cache(VIDEO_RETRANSMIT_PACKETS, VIDEO_RETRANSMIT_AGE, None);
            }
        }
        let ext = ExtensionValues {
            audio_level: packet.audio_level,
            voice_activity: packet.voice_activity,
            ..Default::default()
        };
        stream.write_rtp(
            RtpWrite::new(
                pt,
                out.seq.into(),
                out.time,
                packet.arrival,
                packet.payload.clone(),
            )
            .marker(packet.marker)
            .nackable(video_packet)
            .ext_vals(ext),
        );
        Written::Queued
    }
}
