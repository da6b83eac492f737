//! Where an accepted stream goes: its configuration's participant joins the
//! stage ([`LivePlane::ingest_started`]) and its media feeds the participant's
//! source in the media plane, as a WHIP publisher's would — so subscribers,
//! replication and recording follow it unchanged.
//!
//! Video frames from the bridge go to the source's feeder packet by packet
//! (their RTP payloads made once, shared by every subscriber); audio goes
//! through the AAC → Opus transcoder (`audio.rs`), whose Opus frames reach the
//! feeder from GStreamer's thread. The feeder never blocks: when the media plane
//! is behind, packets are shed there. When the stream ends, the transcoder is
//! stopped first, then the live plane records the end (with the error code of a
//! cut stream) and lets go of the feeder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use onstage_stage::Arn;
use onstage_stage::live::{IngestStream, LivePlane};
use onstage_stage::media::{FedKind, FedPacket, SourceFeeder};
use onstage_stage::model::{EventErrorCode, IngestConfiguration, ParticipantProtocol};

use crate::audio::AudioTranscoder;
use crate::bridge::VideoFrame;
use crate::flv::AudioTag;
use crate::server::{StreamFeed, StreamSink};

/// The ingest server's sink in a running server: streams join their stages.
pub struct LiveSink {
    live: Arc<LivePlane>,
}

impl LiveSink {
    pub fn new(live: Arc<LivePlane>) -> Self {
        LiveSink { live }
    }
}

#[async_trait]
impl StreamSink for LiveSink {
    async fn start(
        &self,
        config: &IngestConfiguration,
        secure: bool,
    ) -> Result<Box<dyn StreamFeed>, String> {
        let protocol = if secure {
            ParticipantProtocol::Rtmps
        } else {
            ParticipantProtocol::Rtmp
        };
        let stream = self
            .live
            .ingest_started(config, protocol)
            .await
            .map_err(|refusal| refusal.to_string())?;
        Ok(Box::new(LiveFeed {
            live: self.live.clone(),
            feeder: Some(stream.feeder.clone()),
            stream: Some(stream),
            audio: None,
            audio_config: Vec::new(),
        }))
    }

    async fn refused(&self, configuration: &Arn, code: EventErrorCode) {
        self.live.ingest_refused(configuration, code).await;
    }
}

struct LiveFeed {
    live: Arc<LivePlane>,
    /// Until the stream ends (then the live plane lets go of it last).
    feeder: Option<Arc<dyn SourceFeeder>>,
    /// Until the stream ends.
    stream: Option<IngestStream>,
    audio: Option<AudioTranscoder>,
    /// The AudioSpecificConfig the transcoder was made for.
    audio_config: Vec<u8>,
}

impl StreamFeed for LiveFeed {
    fn video(&mut self, frame: VideoFrame) {
        let Some(feeder) = &self.feeder else { return };
        // An encoder cannot be asked for a keyframe: subscribers wait for its
        // next one (DECISIONS.md), so a request is only taken off the flag.
        let _ = feeder.take_keyframe_request();
        for (i, packet) in frame.packets.into_iter().enumerate() {
            feeder.push(FedPacket {
                kind: FedKind::Video,
                time: frame.rtp_time,
                marker: packet.marker,
                keyframe_start: frame.keyframe && i == 0,
                payload: packet.payload.into(),
            });
        }
    }

    fn audio(&mut self, timestamp_ms: u32, tag: AudioTag<'_>) {
        match tag {
            AudioTag::Config(asc) => {
                if self.audio.is_some() && self.audio_config == asc {
                    return;
                }
                let Some(feeder) = self.feeder.clone() else {
                    return;
                };
                self.audio = match AudioTranscoder::new(asc, move |opus| {
                    feeder.push(FedPacket {
                        kind: FedKind::Audio,
                        time: opus.rtp_time,
                        marker: false,
                        keyframe_start: false,
                        payload: opus.payload.into(),
                    });
                }) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "ingest audio is not forwarded");
                        None
                    }
                };
                self.audio_config = asc.to_vec();
            }
            AudioTag::Frame(frame) => {
                if let Some(t) = &self.audio {
                    t.push(timestamp_ms, frame);
                }
            }
        }
    }

    fn end(&mut self, error: Option<EventErrorCode>) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let audio = self.audio.take();
        let feeder = self.feeder.take();
        let live = self.live.clone();
        tokio::spawn(async move {
            if let Some(audio) = audio {
                let _ = tokio::task::spawn_blocking(move || audio.finish()).await;
            }
            live.ingest_ended(stream, error).await;
            drop(feeder);
        });
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        match &self.feeder {
            Some(feeder) => feeder.closed(),
            None => Box::pin(std::future::pending()),
        }
    }
}
