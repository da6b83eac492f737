//! The RTMP listener: the thin driver around `rml_rtmp`'s sans-IO handshake and
//! server session and the [`VideoBridge`].
//!
//! What an unauthenticated client can cost is bounded: at most `max_connections`
//! at once (more are closed on accept), a deadline for the handshake, `connect` and
//! `publish` together, and at most [`MAX_UNAUTHENTICATED_BYTES`] read before its
//! stream key has been accepted. Reads go through one fixed buffer per connection.
//!
//! An encoder connects to `rtmp://host:port/app/<streamKey>`: the application must
//! be `app`, the key must open an ingest configuration with a stage
//! ([`ControlPlane::ingest_by_stream_key`]), plain RTMP only where the configuration
//! allows it, and one stream per configuration at a time.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use onstage_stage::model::{EventErrorCode, IngestConfiguration};
use onstage_stage::service::StreamKeyRefusal;
use onstage_stage::{Arn, ControlPlane};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::bridge::{VideoBridge, VideoFrame, Violation};
use crate::flv::{self, AudioTag};

/// Bytes a client may send before its stream key is accepted: a handshake is
/// 3,073 bytes, `connect`, `releaseStream`, `FCPublish`, `createStream` and
/// `publish` a few hundred more.
pub const MAX_UNAUTHENTICATED_BYTES: usize = 64 * 1024;
/// The RTMP application an encoder connects to.
pub const APP: &str = "app";

#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// Most RTMP connections open at once.
    pub max_connections: usize,
    /// From accept to an accepted `publish`.
    pub handshake_timeout: Duration,
    /// A publishing encoder that sends nothing this long is gone.
    pub idle_timeout: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Where an accepted stream goes: the stage (`live.rs`: its participant joins and
/// its media feeds a source); tests count frames.
#[async_trait]
pub trait StreamSink: Send + Sync + 'static {
    /// A stream of `config` was accepted; frames follow through the returned feed.
    /// Refused (the stage's publisher quota, the participant disconnected) with
    /// the reason.
    async fn start(
        &self,
        config: &IngestConfiguration,
        secure: bool,
    ) -> Result<Box<dyn StreamFeed>, String>;
    /// An encoder was refused with `code` after its key named `configuration`
    /// (plain RTMP where RTMPS is required, a key already live).
    async fn refused(&self, _configuration: &Arn, _code: EventErrorCode) {}
}

pub trait StreamFeed: Send + Sync {
    fn video(&mut self, frame: VideoFrame);
    /// An AAC message: the AudioSpecificConfig or a raw frame, with its RTMP time.
    fn audio(&mut self, _timestamp_ms: u32, _tag: AudioTag<'_>) {}
    /// The stream ended: `None` when the encoder stopped, else why it was cut.
    fn end(&mut self, error: Option<EventErrorCode>);
    /// Resolves when the stage lets go of the stream (DisconnectParticipant,
    /// DeleteStage): the connection is closed.
    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

/// Why a connection ended, for the log.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("closed by the client")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the handshake, connect and publish took too long")]
    HandshakeTimeout,
    #[error("no data for the idle timeout")]
    Idle,
    #[error("more than {MAX_UNAUTHENTICATED_BYTES} bytes before a stream key was accepted")]
    TooMuchBeforePublish,
    #[error("RTMP: {0}")]
    Rtmp(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("stream cut: {0}")]
    Violation(#[from] Violation),
    #[error(
        "the stage let go of the stream (the participant was disconnected or the stage deleted)"
    )]
    Released,
}

pub struct IngestServer {
    control: Arc<ControlPlane>,
    sink: Arc<dyn StreamSink>,
    settings: IngestSettings,
    slots: Arc<Semaphore>,
    /// Configurations with a stream right now (REUSE_OF_STREAM_KEY).
    live: Mutex<HashSet<Arn>>,
}

impl IngestServer {
    pub fn new(
        control: Arc<ControlPlane>,
        sink: Arc<dyn StreamSink>,
        settings: IngestSettings,
    ) -> Arc<Self> {
        Arc::new(IngestServer {
            control,
            sink,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            settings,
            live: Mutex::new(HashSet::new()),
        })
    }

    /// Serves plain RTMP on `listener` until the task is dropped.
    pub async fn serve_plain(self: Arc<Self>, listener: TcpListener) {
        self.serve(listener, None).await
    }

    /// Serves RTMPS on `listener`: the TLS handshake counts towards the handshake
    /// deadline.
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener, tls: TlsAcceptor) {
        self.serve(listener, Some(tls)).await
    }

    async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "RTMP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "RTMP connection cap reached; closing");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let server = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + server.settings.handshake_timeout;
                let result = match tls {
                    None => server.connection(socket, peer, false, deadline).await,
                    Some(tls) => {
                        match tokio::time::timeout_at(deadline, tls.accept(socket)).await {
                            Ok(Ok(stream)) => server.connection(stream, peer, true, deadline).await,
                            Ok(Err(e)) => Err(End::Io(e)),
                            Err(_) => Err(End::HandshakeTimeout),
                        }
                    }
                };
                drop(slot);
                match result {
                    Ok(()) | Err(End::Closed) => tracing::debug!(%peer, "RTMP connection ended"),
                    Err(e) => tracing::info!(%peer, reason = %e, "RTMP connection ended"),
                }
            });
        }
    }

    async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut io: S,
        peer: SocketAddr,
        secure: bool,
        deadline: Instant,
    ) -> Result<(), End> {
        let mut buf = vec![0u8; 4096];
        let mut received = 0usize;
        let mut handshake = Handshake::new(PeerType::Server);
        let leftover = loop {
            let n = read_until(&mut io, &mut buf, deadline).await?;
            received += n;
            if received > MAX_UNAUTHENTICATED_BYTES {
                return Err(End::TooMuchBeforePublish);
            }
            match handshake
                .process_bytes(&buf[..n])
                .map_err(|e| End::Rtmp(format!("{e:?}")))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    io.write_all(&response_bytes).await?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    io.write_all(&response_bytes).await?;
                    break remaining_bytes;
                }
            }
        };
        let (mut session, results) = ServerSession::new(ServerSessionConfig::new())
            .map_err(|e| End::Rtmp(format!("{e:?}")))?;
        let mut stream = Stream {
            server: self,
            secure,
            peer,
            publishing: None,
            bridge: VideoBridge::new(),
        };
        let outcome = async {
            stream.handle(&mut io, &mut session, results).await?;
            let results = session
                .handle_input(&leftover)
                .map_err(|e| End::Rtmp(format!("{e:?}")))?;
            stream.handle(&mut io, &mut session, results).await?;
            loop {
                let n = if let Some(p) = &stream.publishing {
                    tokio::select! {
                        read = tokio::time::timeout(self.settings.idle_timeout, io.read(&mut buf)) => {
                            match read {
                                Ok(n) => n?,
                                Err(_) => return Err(End::Idle),
                            }
                        }
                        _ = p.feed.closed() => return Err(End::Released),
                    }
                } else {
                    let n = read_until(&mut io, &mut buf, deadline).await?;
                    received += n;
                    if received > MAX_UNAUTHENTICATED_BYTES {
                        return Err(End::TooMuchBeforePublish);
                    }
                    n
                };
                if n == 0 {
                    return Err(End::Closed);
                }
                let results = session
                    .handle_input(&buf[..n])
                    .map_err(|e| End::Rtmp(format!("{e:?}")))?;
                stream.handle(&mut io, &mut session, results).await?;
            }
        }
        .await;
        stream.finish(&outcome);
        outcome
    }

    fn claim(&self, arn: &Arn) -> bool {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(arn.clone())
    }

    fn release(&self, arn: &Arn) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(arn);
    }
}

async fn read_until<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, End> {
    match tokio::time::timeout_at(deadline, io.read(buf)).await {
        Ok(Ok(0)) => Err(End::Closed),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(End::HandshakeTimeout),
    }
}

/// One connection's stream, once `publish` was accepted.
struct Publishing {
    arn: Arn,
    feed: Box<dyn StreamFeed>,
}

struct Stream<'a> {
    server: &'a IngestServer,
    secure: bool,
    peer: SocketAddr,
    publishing: Option<Publishing>,
    bridge: VideoBridge,
}

impl Stream<'_> {
    async fn handle<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        session: &mut ServerSession,
        results: Vec<ServerSessionResult>,
    ) -> Result<(), End> {
        let mut queue = std::collections::VecDeque::from(results);
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    io.write_all(&packet.bytes).await?;
                }
                ServerSessionResult::RaisedEvent(event) => {
                    let more = self.event(io, session, event).await?;
                    queue.extend(more);
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    async fn event<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        session: &mut ServerSession,
        event: ServerSessionEvent,
    ) -> Result<Vec<ServerSessionResult>, End> {
        let rtmp = |e| End::Rtmp(format!("{e:?}"));
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name.trim_end_matches('/') == APP {
                    session.accept_request(request_id).map_err(rtmp)
                } else {
                    reject(io, session, request_id, "NetConnection.Connect.Rejected").await?;
                    Err(End::Refused(format!(
                        "application {app_name:?} is not {APP:?}"
                    )))
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                if self.publishing.is_some() {
                    reject(io, session, request_id, "NetStream.Publish.BadName").await?;
                    return Err(End::Refused("a second publish on one connection".into()));
                }
                let config = match self
                    .server
                    .control
                    .ingest_by_stream_key(&stream_key, self.secure)
                    .await
                {
                    Ok(Ok(config)) => config,
                    Ok(Err(refusal)) => {
                        reject(io, session, request_id, "NetStream.Publish.BadName").await?;
                        if let StreamKeyRefusal::InsecureRefused(arn) = &refusal {
                            self.server
                                .sink
                                .refused(arn, EventErrorCode::InvalidProtocol)
                                .await;
                        }
                        return Err(End::Refused(refusal_text(&refusal)));
                    }
                    Err(e) => {
                        reject(io, session, request_id, "NetStream.Publish.Failed").await?;
                        return Err(End::Refused(format!("lookup failed: {e}")));
                    }
                };
                if !self.server.claim(&config.arn) {
                    reject(io, session, request_id, "NetStream.Publish.BadName").await?;
                    self.server
                        .sink
                        .refused(&config.arn, EventErrorCode::ReuseOfStreamKey)
                        .await;
                    return Err(End::Refused(format!(
                        "{}: {} already has a live stream",
                        EventErrorCode::ReuseOfStreamKey,
                        config.arn
                    )));
                }
                let feed = match self.server.sink.start(&config, self.secure).await {
                    Ok(feed) => feed,
                    Err(reason) => {
                        self.server.release(&config.arn);
                        reject(io, session, request_id, "NetStream.Publish.Failed").await?;
                        return Err(End::Refused(reason));
                    }
                };
                tracing::info!(peer = %self.peer, configuration = %config.arn, "RTMP stream accepted");
                self.publishing = Some(Publishing {
                    arn: config.arn,
                    feed,
                });
                session.accept_request(request_id).map_err(rtmp)
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                if let Some(p) = &mut self.publishing
                    && let Some(frame) = self.bridge.on_video(timestamp.value, &data)?
                {
                    p.feed.video(frame);
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                self.bridge.on_audio_bytes(timestamp.value, data.len())?;
                if let Some(p) = &mut self.publishing {
                    let tag = flv::audio_tag(&data).map_err(Violation::Audio)?;
                    p.feed.audio(timestamp.value, tag);
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::PublishStreamFinished { .. } => Err(End::Closed),
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                reject(io, session, request_id, "NetStream.Play.Failed").await?;
                Err(End::Refused("ingest does not play streams".into()))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Ends the stream (if one was accepted) and frees its configuration.
    fn finish(&mut self, outcome: &Result<(), End>) {
        if let Some(mut p) = self.publishing.take() {
            let error = match outcome {
                Err(End::Violation(v)) => Some(v.error_code()),
                _ => None,
            };
            p.feed.end(error);
            self.server.release(&p.arn);
        }
    }
}

async fn reject<S: AsyncWrite + Unpin>(
    io: &mut S,
    session: &mut ServerSession,
    request_id: u32,
    code: &str,
) -> Result<(), End> {
    let results = session
        .reject_request(request_id, code, "refused by onstage")
        .map_err(|e| End::Rtmp(format!("{e:?}")))?;
    for r in results {
        if let ServerSessionResult::OutboundResponse(packet) = r {
            io.write_all(&packet.bytes).await?;
        }
    }
    io.flush().await?;
    Ok(())
}

fn refusal_text(refusal: &StreamKeyRefusal) -> String {
    let code = match refusal {
        StreamKeyRefusal::Invalid | StreamKeyRefusal::NoStage(_) => {
            EventErrorCode::InvalidStreamKey
        }
        StreamKeyRefusal::InsecureRefused(_) => EventErrorCode::InvalidProtocol,
    };
    format!("{code}: {refusal}")
}
