//! The producer side of a source: a publisher's incoming RTP packets become the
//! [`Packet`]s forwarded to its subscribers.
//!
//! Each incoming packet is looked at once, on the source's home shard: which
//! media kind and codec it carries, which incoming stream it belongs to, and
//! whether a keyframe starts with it (`keyframe.rs`). That answer travels with the
//! packet to every subscriber; its payload is shared, never copied.

use std::sync::Arc;
use std::time::Instant;

use onstage_stage::media::{PeerId, SourceId};
use str0m::Rtc;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::rtp::{RtpPacket, Ssrc};

use crate::VideoCodec;
use crate::keyframe::starts_keyframe;
use crate::placement::spread;

/// One RTP packet of a source, as forwarded to subscribers: what a subscriber's
/// header needs, and the payload, shared.
#[derive(Clone, Debug)]
pub(crate) struct Packet {
    pub(crate) kind: MediaKind,
    pub(crate) params: PayloadParams,
    /// The incoming stream (publisher and SSRC) it belongs to.
    pub(crate) feed: u64,
    pub(crate) seq: u64,
    pub(crate) time: u32,
    pub(crate) arrival: Instant,
    pub(crate) marker: bool,
    /// The first packet of a keyframe, where a subscriber's video may start.
    pub(crate) keyframe_start: bool,
    pub(crate) audio_level: Option<i8>,
    pub(crate) voice_activity: Option<bool>,
    pub(crate) payload: Arc<[u8]>,
}

/// A publisher: the source it feeds, its media lines and incoming streams.
pub(crate) struct Producer {
    pub(crate) source: SourceId,
    kinds: Vec<(Mid, MediaKind)>,
    streams: Vec<IncomingStream>,
}

/// One of a publisher's RTP streams, as the packets forwarded from it need.
struct IncomingStream {
    ssrc: Ssrc,
    kind: MediaKind,
    feed: u64,
    /// The payload type last seen and what it stands for.
    params: Option<PayloadParams>,
    codec: Option<VideoCodec>,
    /// The RTP timestamp of the last packet: a new one starts a frame.
    last_time: Option<u32>,
}

impl Producer {
    pub(crate) fn new(source: SourceId) -> Self {
        Producer {
            source,
            kinds: Vec::new(),
            streams: Vec::new(),
        }
    }

    /// The peer's connection added a media line.
    pub(crate) fn media_added(&mut self, mid: Mid, kind: MediaKind) {
        self.kinds.push((mid, kind));
    }

    /// Turns a publisher's RTP packet into the packet forwarded to its source's
    /// subscribers; None for a packet of no known line or payload type.
    pub(crate) fn packet(
        &mut self,
        id: PeerId,
        rtc: &mut Rtc,
        packet: RtpPacket,
    ) -> Option<Packet> {
        let ssrc = packet.header.ssrc;
        let index = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None => {
                let mid = rtc.direct_api().stream_rx(&ssrc)?.mid();
                let kind = self.kinds.iter().find(|(m, _)| *m == mid)?.1;
                // Tells this stream from any other that fed the source: another SSRC
                // of this publisher, or the next publisher.
                let feed = spread(id.0) ^ u64::from(*ssrc);
                self.streams.push(IncomingStream {
                    ssrc,
                    kind,
                    feed,
                    params: None,
                    codec: None,
                    last_time: None,
                });
                self.streams.len() - 1
            }
        };
        let stream = &mut self.streams[index];
        let pt = packet.header.payload_type;
        if stream.params.is_none_or(|p| p.pt() != pt) {
            let params = *rtc.codec_config().find(|p| p.pt() == pt)?;
            stream.codec = match params.spec().codec {
                Codec::Vp8 => Some(VideoCodec::Vp8),
                Codec::H264 => Some(VideoCodec::H264),
                _ => None,
            };
            stream.params = Some(params);
        }
        let params = stream.params?;
        let time = packet.header.timestamp;
        let starts_frame = stream.last_time != Some(time);
        stream.last_time = Some(time);
        let keyframe_start = stream.kind == MediaKind::Video
            && stream
                .codec
                .is_some_and(|c| starts_keyframe(c, &packet.payload, starts_frame));
        let ext = &packet.header.ext_vals;
        Some(Packet {
            kind: stream.kind,
            params,
            feed: stream.feed,
            seq: *packet.seq_no,
            time,
            arrival: packet.timestamp,
            marker: packet.header.marker,
            keyframe_start,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            payload: packet.payload,
        })
    }

    /// Asks the publisher for a keyframe on each of its video lines; whether
    /// there was one to ask on.
    pub(crate) fn request_keyframe(&self, rtc: &mut Rtc) -> bool {
        let mut asked = false;
        let mut api = rtc.direct_api();
        for &(mid, kind) in &self.kinds {
            if kind != MediaKind::Video {
                continue;
            }
            if let Some(stream) = api.stream_rx_by_mid(mid, None) {
                stream.request_keyframe(KeyframeRequestKind::Pli);
                asked = true;
            }
        }
        asked
    }
}
