//! The media plane: a selective forwarding unit (SFU) built on str0m.
//!
//! Every peer shares one UDP socket. str0m's `Rtc` is a sans-IO state machine per
//! peer, and so is the [`forwarder`] that owns a shard's peers: it takes `(now,
//! input)` and returns what to send, forwarding each publisher's RTP packets to the
//! subscribers of its source — on its own shard and, once per packet, to the other
//! shards that have some. Around them run thin I/O loops: [`ingress`] reads the
//! socket and routes each datagram to the [`shard`] that owns its peer, and each
//! shard (one thread per core) feeds its forwarder datagrams and time and carries
//! out its outputs. A peer is only ever touched by its shard, so the forwarding
//! path takes no lock. Control (new peers, closing) reaches the shards through
//! channels.
//!
//! The domain talks to this crate only through [`onstage_stage::media::MediaPlane`]:
//! SDP in, SDP out, ids, and [`MediaSignal`]s back.

mod consumer;
mod feeder;
mod forwarder;
pub mod h264;
mod ingress;
mod keyframe;
mod outbox;
mod pacer;
mod placement;
mod producer;
mod rewrite;
mod sdp_check;
mod shard;
mod tap;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use onstage_stage::media::{MediaPlane, MediaRefusal, MediaSignal, PeerId, SourceFeeder, SourceId};
use str0m::change::SdpOffer;
use str0m::crypto::CryptoProvider;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot};

pub use sdp_check::{OfferSummary, check_offer};
pub use tap::{MediaPacket, TapCodec};

use forwarder::{Control, NewRole, Timeouts};
use shard::{ShardInput, ShardLoad};

/// Where the media plane listens and what it tells peers.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// The UDP socket all peers share.
    pub bind: SocketAddr,
    /// The address put in the host candidate; defaults to the bound IP (a wildcard
    /// bind needs an explicit address, e.g. `--public-ip`).
    pub candidate_ip: Option<IpAddr>,
    /// Forwarding threads; 0 means one per available core.
    pub shards: usize,
    /// A peer that has not completed ICE and DTLS by then is given up (20 s by default).
    pub connect_timeout: Duration,
    /// A connected peer that sends nothing for this long has vanished (12 s by
    /// default; str0m's own 15 s ICE timeout stays the backstop).
    pub silence_timeout: Duration,
}

impl MediaConfig {
    /// The defaults for everything but the socket.
    pub fn new(bind: SocketAddr) -> Self {
        let timeouts = Timeouts::default();
        MediaConfig {
            bind,
            candidate_ip: None,
            shards: 0,
            connect_timeout: timeouts.connect,
            silence_timeout: timeouts.silence,
        }
    }
}

/// Handle to the running media plane. Cheap to clone.
#[derive(Clone)]
pub struct MediaServer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each shard's input, by index.
    shards: Vec<mpsc::UnboundedSender<ShardInput>>,
    /// Each shard's media input (bounded, shed when full), by index: feeders
    /// push their packets here.
    data: Vec<mpsc::Sender<shard::ShardData>>,
    loads: Arc<[ShardLoad]>,
    /// Tells the receive loop which shard a new peer's ICE ufrag belongs to.
    routing: mpsc::UnboundedSender<ingress::Routing>,
    next_source: AtomicU64,
    next_peer: AtomicU64,
    candidate: SocketAddr,
    crypto: Arc<CryptoProvider>,
    dtls_cert: str0m::config::DtlsCert,
    /// The open sources, with the video codec their publisher negotiated (None
    /// before it did, or for audio only). Subscribers are offered only that codec,
    /// since RTP packets are forwarded, not transcoded. A subscriber is placed while
    /// this lock is held, and a source's closing is sent to the shards while it
    /// is held, so no shard sees a subscriber of a source after that source's
    /// closing. Touched on publish, subscribe and close only, never per packet.
    sources: Mutex<HashMap<SourceId, Option<VideoCodec>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for shard in &self.shards {
            let _ = shard.send(ShardInput::Stop);
        }
    }
}

/// Which way a peer's media goes, seen from the peer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Publish,
    Subscribe,
}

/// The video codec families onstage forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    H264,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the media UDP socket {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(
        "the media socket is bound to a wildcard address; give the address peers should reach (--public-ip)"
    )]
    NoCandidateAddress,
    #[error("could not create the DTLS certificate")]
    Certificate,
    #[error("starting the media threads: {0}")]
    Thread(std::io::Error),
    #[error("the media plane runs at most {max} forwarding threads, not {asked}")]
    TooManyShards { asked: usize, max: usize },
}

impl MediaServer {
    /// Taps a source: its packets, as its home shard forwards them, go to the
    /// returned channel too (at most `capacity` waiting; more are dropped, never
    /// waited for). The channel closes when the source closes; dropping the
    /// receiver removes the tap. A new tap on a source replaces the old one.
    pub fn tap(&self, source: SourceId, capacity: usize) -> mpsc::Receiver<MediaPacket> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let home = placement::home_of(source, self.inner.shards.len());
        let _ = self.inner.shards[home].send(ShardInput::Tap { source, tx });
        rx
    }

    /// Binds the socket and starts the receive loop and the forwarding shards on
    /// their own threads. Signals about peers go to `signals`.
    pub fn start(
        config: MediaConfig,
        signals: mpsc::UnboundedSender<MediaSignal>,
    ) -> Result<MediaServer, StartError> {
        let shard_count = match config.shards {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        if shard_count > placement::MAX_SHARDS {
            return Err(StartError::TooManyShards {
                asked: shard_count,
                max: placement::MAX_SHARDS,
            });
        }
        let socket = UdpSocket::bind(config.bind).map_err(|e| StartError::Bind(config.bind, e))?;
        let local = socket
            .local_addr()
            .map_err(|e| StartError::Bind(config.bind, e))?;
        let ip = config.candidate_ip.unwrap_or(local.ip());
        if ip.is_unspecified() {
            return Err(StartError::NoCandidateAddress);
        }
        let candidate = SocketAddr::new(ip, local.port());
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        // One certificate for every peer: generating one costs milliseconds per join.
        let dtls_cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or(StartError::Certificate)?;
        // Non-blocking for every user of the socket: the shards' sends drop a
        // datagram when the send buffer is full instead of stalling their peers.
        socket
            .set_nonblocking(true)
            .map_err(|e| StartError::Bind(config.bind, e))?;
        let sender = Arc::new(
            socket
                .try_clone()
                .map_err(|e| StartError::Bind(config.bind, e))?,
        );

        let (routing, routing_rx) = mpsc::unbounded_channel();
        let loads: Arc<[ShardLoad]> = (0..shard_count).map(|_| ShardLoad::default()).collect();
        let (shard_txs, shard_rxs): (Vec<_>, Vec<_>) =
            (0..shard_count).map(|_| mpsc::unbounded_channel()).unzip();
        let (data_txs, data_rxs): (Vec<_>, Vec<_>) = (0..shard_count)
            .map(|_| mpsc::channel(shard::DATA_QUEUE))
            .unzip();
        // With one shard the receive loop shares its thread: each datagram would
        // otherwise wake a second thread on the way (two context switches, ~10%
        // of a core's time at a few hundred subscribers). With more, it has its own
        // thread, so no shard's forwarding waits behind another's receiving.
        let ingress_shards = data_txs.clone();
        let mut receive: Option<shard::Companion> = Some(Box::new(move || {
            Box::pin(async move {
                match tokio::net::UdpSocket::from_std(socket) {
                    Ok(socket) => ingress::run(socket, routing_rx, ingress_shards).await,
                    Err(e) => {
                        tracing::error!(error = %e, "media socket could not join the runtime")
                    }
                }
            })
        }));
        for (index, (inputs, data)) in shard_rxs.into_iter().zip(data_rxs).enumerate() {
            let links = shard::ShardLinks {
                index,
                shards: shard_txs.clone(),
                data: data_txs.clone(),
                loads: loads.clone(),
                routing: routing.clone(),
                signals: signals.clone(),
                socket: sender.clone(),
                local,
                timeouts: Timeouts {
                    connect: config.connect_timeout,
                    silence: config.silence_timeout,
                },
            };
            let companion = if shard_count == 1 {
                receive.take()
            } else {
                None
            };
            shard::spawn(links, inputs, data, companion).map_err(StartError::Thread)?;
        }
        if let Some(receive) = receive {
            std::thread::Builder::new()
                .name("onstage-media-rx".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "media receive loop could not start its runtime");
                            return;
                        }
                    };
                    runtime.block_on(receive());
                })
                .map_err(StartError::Thread)?;
        }
        tracing::info!(%local, %candidate, shards = shard_count, "media plane listening");
        Ok(MediaServer {
            inner: Arc::new(Inner {
                shards: shard_txs,
                data: data_txs,
                loads,
                routing,
                next_source: AtomicU64::new(1),
                next_peer: AtomicU64::new(1),
                candidate,
                crypto,
                dtls_cert,
                sources: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// How many forwarding threads run.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The address and port in the host candidate handed to peers.
    pub fn candidate_addr(&self) -> SocketAddr {
        self.inner.candidate
    }

    /// Builds a peer for `offer` and its answer. The SDP work happens on the caller's
    /// task, not in the forwarding loop.
    /// `video`: the codec families to accept (a subscriber gets only its
    /// publisher's).
    fn answer(
        &self,
        offer_sdp: &str,
        video: &[VideoCodec],
        direction: Direction,
    ) -> Result<(Rtc, String), MediaRefusal> {
        let peer = PeerConfig {
            candidate: self.inner.candidate,
            crypto: self.inner.crypto.clone(),
            dtls_cert: self.inner.dtls_cert.clone(),
        };
        answer_offer(&peer, offer_sdp, video, direction, Instant::now())
    }

    /// The shard for a new subscriber: the one with the fewest peers, the
    /// source's home on a tie (a packet written there needs no hop).
    fn place_subscriber(&self, source: SourceId) -> usize {
        let home = placement::home_of(source, self.inner.shards.len());
        let load = |i: usize| self.inner.loads[i].peers.load(Ordering::Relaxed);
        (0..self.inner.shards.len())
            .fold(home, |best, i| if load(i) < load(best) { i } else { best })
    }

    /// Registers the peer's ufrag with the receive loop and sends it to its
    /// shard. Called with the sources lock held (see [`Inner::sources`]).
    fn send_peer(
        &self,
        shard: usize,
        rtc: Rtc,
        role: NewRole,
        ufrag: String,
    ) -> Result<(PeerId, oneshot::Receiver<Result<(), MediaRefusal>>), MediaRefusal> {
        let stopped = || MediaRefusal::Internal("the media plane has stopped".into());
        let id = placement::peer_id(self.inner.next_peer.fetch_add(1, Ordering::Relaxed), shard);
        let (reply, accepted) = oneshot::channel();
        // The ufrag is known to the receive loop before the answer leaves, so the
        // peer's first check finds its shard.
        self.inner
            .routing
            .send(ingress::Routing::Register {
                ufrag: ufrag.clone(),
                shard,
            })
            .map_err(|_| stopped())?;
        self.inner.shards[shard]
            .send(ShardInput::AddPeer {
                id,
                rtc: Box::new(rtc),
                role,
                ufrag,
                reply,
            })
            .map_err(|_| stopped())?;
        Ok((id, accepted))
    }

    async fn added(
        id: PeerId,
        accepted: oneshot::Receiver<Result<(), MediaRefusal>>,
    ) -> Result<PeerId, MediaRefusal> {
        accepted
            .await
            .map_err(|_| MediaRefusal::Internal("the media plane has stopped".into()))??;
        Ok(id)
    }

    fn lock_sources(&self) -> std::sync::MutexGuard<'_, HashMap<SourceId, Option<VideoCodec>>> {
        self.inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl MediaPlane for MediaServer {
    fn new_source(&self) -> SourceId {
        SourceId(self.inner.next_source.fetch_add(1, Ordering::Relaxed))
    }

    async fn publish(
        &self,
        source: SourceId,
        offer_sdp: String,
    ) -> Result<(PeerId, String), MediaRefusal> {
        check_offer(&offer_sdp)?;
        let (rtc, answer) = self.answer(
            &offer_sdp,
            &[VideoCodec::H264, VideoCodec::Vp8],
            Direction::Publish,
        )?;
        let ufrag = local_ufrag(&answer)?;
        let home = placement::home_of(source, self.inner.shards.len());
        let (id, accepted) = {
            let mut sources = self.lock_sources();
            sources.insert(source, negotiated_video(&answer));
            self.send_peer(home, rtc, NewRole::Publisher { source }, ufrag)?
        };
        Ok((Self::added(id, accepted).await?, answer))
    }

    async fn subscribe(
        &self,
        source: SourceId,
        offer_sdp: String,
    ) -> Result<(PeerId, String), MediaRefusal> {
        let summary = check_offer(&offer_sdp)?;
        let publisher_video = *self
            .lock_sources()
            .get(&source)
            .ok_or(MediaRefusal::NoSuchSource)?;
        let video = match publisher_video {
            Some(codec) => vec![codec],
            None => vec![VideoCodec::H264, VideoCodec::Vp8],
        };
        let (rtc, answer) = self.answer(&offer_sdp, &video, Direction::Subscribe)?;
        if let (Some(codec), true) = (publisher_video, summary.video_lines > 0)
            && negotiated_video(&answer) != Some(codec)
        {
            return Err(MediaRefusal::InvalidOffer(format!(
                "the publisher sends {codec:?} video, which the offer does not accept"
            )));
        }
        let ufrag = local_ufrag(&answer)?;
        let (id, accepted) = {
            let sources = self.lock_sources();
            // The source may have closed while the answer was being built.
            if !sources.contains_key(&source) {
                return Err(MediaRefusal::NoSuchSource);
            }
            self.send_peer(
                self.place_subscriber(source),
                rtc,
                NewRole::Subscriber { source },
                ufrag,
            )?
        };
        Ok((Self::added(id, accepted).await?, answer))
    }

    fn close_peer(&self, peer: PeerId) {
        let shard = placement::shard_of_peer(peer, self.inner.shards.len());
        let _ = self.inner.shards[shard].send(ShardInput::Control(Control::ClosePeer(peer)));
    }

    fn close_source(&self, source: SourceId) {
        let mut sources = self.lock_sources();
        sources.remove(&source);
        for shard in &self.inner.shards {
            let _ = shard.send(ShardInput::Control(Control::CloseSource(source)));
        }
    }

    fn request_keyframe(&self, source: SourceId) {
        let home = placement::home_of(source, self.inner.shards.len());
        let _ = self.inner.shards[home].send(ShardInput::Control(Control::RequestKeyframe(source)));
    }

    fn feed(&self, source: SourceId) -> Result<(PeerId, Box<dyn SourceFeeder>), MediaRefusal> {
        let stopped = || MediaRefusal::Internal("the media plane has stopped".into());
        let home = placement::home_of(source, self.inner.shards.len());
        let id = placement::peer_id(self.inner.next_peer.fetch_add(1, Ordering::Relaxed), home);
        let link = Arc::new(feeder::FeederLink::default());
        let mut sources = self.lock_sources();
        // An RTMP encoder's video is H.264; its audio is made Opus.
        sources.insert(source, Some(VideoCodec::H264));
        // Sent on the control queue before any packet on the media queue: the
        // shard serves control first, so the feeder is placed before its packets.
        self.inner.shards[home]
            .send(ShardInput::AddFeeder {
                id,
                source,
                link: link.clone(),
            })
            .map_err(|_| stopped())?;
        Ok((
            id,
            Box::new(feeder::FeederHandle {
                peer: id,
                data: self.inner.data[home].clone(),
                control: self.inner.shards[home].clone(),
                link,
            }),
        ))
    }
}

/// What every peer's connection shares.
pub(crate) struct PeerConfig {
    /// The host candidate: the shared socket's address as peers reach it.
    pub(crate) candidate: SocketAddr,
    pub(crate) crypto: Arc<CryptoProvider>,
    pub(crate) dtls_cert: str0m::config::DtlsCert,
}

/// Builds a peer's `Rtc` for `offer`, and the answer.
/// `video`: the codec families to accept (a subscriber gets only its
/// publisher's).
pub(crate) fn answer_offer(
    peer: &PeerConfig,
    offer_sdp: &str,
    video: &[VideoCodec],
    direction: Direction,
    now: Instant,
) -> Result<(Rtc, String), MediaRefusal> {
    let offer = SdpOffer::from_sdp_string(offer_sdp)
        .map_err(|e| MediaRefusal::InvalidOffer(e.to_string()))?;
    let mut config = RtcConfig::new()
        .set_ice_lite(true)
        .set_crypto_provider(peer.crypto.clone())
        .set_dtls_cert(peer.dtls_cert.clone())
        // Packets in, packets out: the shards forward RTP, not frames.
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(video.contains(&VideoCodec::Vp8));
    if direction == Direction::Subscribe {
        // Transport-wide congestion control numbers every packet sent and keeps
        // a record of the last thousand for bandwidth estimation (~100 KB per
        // connection), and has the receiver report on each. Nothing here
        // estimates a subscriber's bandwidth (there are no layers to pick
        // from), so a subscriber's connection does not negotiate it. A
        // publisher's does: its sender needs our feedback to pace itself.
        let standard = ExtensionMap::standard();
        let mut exts = ExtensionMap::empty();
        for (id, ext) in standard
            .iter()
            .filter(|(_, e)| **e != Extension::TransportSequenceNumber)
        {
            exts.set(id, ext.clone());
        }
        config = config.set_extension_map(exts);
    }
    if video.contains(&VideoCodec::H264) {
        // H.264 as IVS takes it: Baseline and Constrained Baseline, packetization-mode 1.
        config
            .codec_config()
            .add_h264(127.into(), Some(121.into()), true, 0x42001f);
        config
            .codec_config()
            .add_h264(108.into(), Some(109.into()), true, 0x42e01f);
    }
    let mut rtc = config.build(now);
    let candidate = Candidate::host(peer.candidate, "udp")
        .map_err(|e| MediaRefusal::Internal(format!("host candidate: {e}")))?;
    rtc.add_local_candidate(candidate);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| MediaRefusal::InvalidOffer(e.to_string()))?;
    Ok((rtc, answer.to_sdp_string()))
}

/// The ICE ufrag onstage chose for a peer, from its answer: the receive loop
/// routes the peer's connectivity checks by it.
pub(crate) fn local_ufrag(answer_sdp: &str) -> Result<String, MediaRefusal> {
    answer_sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
        .ok_or_else(|| MediaRefusal::Internal("the answer has no ICE ufrag".into()))
}

/// The video codec an answer settled on: the first payload type of its active
/// video line.
fn negotiated_video(answer_sdp: &str) -> Option<VideoCodec> {
    let section = answer_sdp
        .split("\nm=")
        .skip(1)
        .find(|s| s.starts_with("video") && !s.starts_with("video 0 "))?;
    let first_pt = section.lines().next()?.split_whitespace().nth(3)?;
    let codec = section.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=rtpmap:")?;
        let (pt, codec) = rest.split_once(' ')?;
        (pt == first_pt).then(|| {
            codec
                .split('/')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase()
        })
    })?;
    match codec.as_str() {
        "VP8" => Some(VideoCodec::Vp8),
        "H264" => Some(VideoCodec::H264),
        _ => None,
    }
}
