//! The media plane: a selective forwarding unit (SFU) built on str0m.
//!
//! Every peer shares one UDP socket. str0m's `Rtc` is a sans-IO state machine per
//! peer; [`driver`] is the thin I/O loop around all of them: it owns the socket and
//! every `Rtc`, feeds them datagrams and time, and forwards each publisher's frames
//! to the subscribers of its source. Control (new peers, closing) reaches the loop
//! through a channel, so the forwarding path takes no lock.
//!
//! The domain talks to this crate only through [`onstage_stage::media::MediaPlane`]:
//! SDP in, SDP out, ids, and [`MediaSignal`]s back.

mod driver;
mod sdp_check;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use onstage_stage::media::{MediaPlane, MediaRefusal, MediaSignal, PeerId, SourceId};
use str0m::change::SdpOffer;
use str0m::crypto::CryptoProvider;
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot};

pub use sdp_check::{OfferSummary, check_offer};

/// Where the media plane listens and what it tells peers.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// The UDP socket all peers share.
    pub bind: SocketAddr,
    /// The address put in the host candidate; defaults to the bound IP (a wildcard
    /// bind needs an explicit address, e.g. `--public-ip`).
    pub candidate_ip: Option<IpAddr>,
}

/// Handle to the running media plane. Cheap to clone.
#[derive(Clone)]
pub struct MediaServer {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<driver::Command>,
    next_source: AtomicU64,
    next_peer: AtomicU64,
    candidate: SocketAddr,
    crypto: Arc<CryptoProvider>,
    dtls_cert: str0m::config::DtlsCert,
    /// The video codec each source's publisher negotiated. Subscribers are offered
    /// only that codec, since frames are forwarded, not transcoded. Touched on
    /// publish and subscribe only, never per packet.
    source_video: Mutex<HashMap<SourceId, VideoCodec>>,
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
    #[error("the media socket is bound to a wildcard address; give the address peers should reach (--public-ip)")]
    NoCandidateAddress,
    #[error("could not create the DTLS certificate")]
    Certificate,
    #[error("starting the media thread: {0}")]
    Thread(std::io::Error),
}

impl MediaServer {
    /// Binds the socket and starts the forwarding loop on its own thread. Signals
    /// about peers go to `signals`.
    pub fn start(config: MediaConfig, signals: mpsc::UnboundedSender<MediaSignal>) -> Result<MediaServer, StartError> {
        let socket = UdpSocket::bind(config.bind).map_err(|e| StartError::Bind(config.bind, e))?;
        let local = socket.local_addr().map_err(|e| StartError::Bind(config.bind, e))?;
        let ip = config.candidate_ip.unwrap_or(local.ip());
        if ip.is_unspecified() {
            return Err(StartError::NoCandidateAddress);
        }
        let candidate = SocketAddr::new(ip, local.port());
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        // One certificate for every peer: generating one costs milliseconds per join.
        let dtls_cert = crypto.dtls_provider.generate_certificate().ok_or(StartError::Certificate)?;
        let (tx, rx) = mpsc::unbounded_channel();
        socket.set_nonblocking(true).map_err(|e| StartError::Bind(config.bind, e))?;
        driver::spawn(socket, rx, signals).map_err(StartError::Thread)?;
        tracing::info!(%local, %candidate, "media plane listening");
        Ok(MediaServer {
            inner: Arc::new(Inner {
                commands: tx,
                next_source: AtomicU64::new(1),
                next_peer: AtomicU64::new(1),
                candidate,
                crypto,
                dtls_cert,
                source_video: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The address and port in the host candidate handed to peers.
    pub fn candidate_addr(&self) -> SocketAddr {
        self.inner.candidate
    }

    /// Builds a peer for `offer` and its answer. The SDP work happens on the caller's
    /// task, not in the forwarding loop.
    /// `video`: the codec families to accept (a subscriber gets only its
    /// publisher's).
    fn answer(&self, offer_sdp: &str, video: &[VideoCodec]) -> Result<(Rtc, String), MediaRefusal> {
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| MediaRefusal::InvalidOffer(e.to_string()))?;
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .set_crypto_provider(self.inner.crypto.clone())
            .set_dtls_cert(self.inner.dtls_cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(video.contains(&VideoCodec::Vp8));
        if video.contains(&VideoCodec::H264) {
            // H.264 as IVS takes it: Baseline and Constrained Baseline, packetization-mode 1.
            config.codec_config().add_h264(127.into(), Some(121.into()), true, 0x42001f);
            config.codec_config().add_h264(108.into(), Some(109.into()), true, 0x42e01f);
        }
        let mut rtc = config.build(Instant::now());
        let candidate = Candidate::host(self.inner.candidate, "udp")
            .map_err(|e| MediaRefusal::Internal(format!("host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| MediaRefusal::InvalidOffer(e.to_string()))?;
        Ok((rtc, answer.to_sdp_string()))
    }

    async fn add(&self, rtc: Rtc, role: driver::NewRole) -> Result<PeerId, MediaRefusal> {
        let id = PeerId(self.inner.next_peer.fetch_add(1, Ordering::Relaxed));
        let (reply, accepted) = oneshot::channel();
        self.inner
            .commands
            .send(driver::Command::AddPeer { id, rtc: Box::new(rtc), role, reply })
            .map_err(|_| MediaRefusal::Internal("the media plane has stopped".into()))?;
        accepted
            .await
            .map_err(|_| MediaRefusal::Internal("the media plane has stopped".into()))??;
        Ok(id)
    }
}

#[async_trait]
impl MediaPlane for MediaServer {
    fn new_source(&self) -> SourceId {
        SourceId(self.inner.next_source.fetch_add(1, Ordering::Relaxed))
    }

    async fn publish(&self, source: SourceId, offer_sdp: String) -> Result<(PeerId, String), MediaRefusal> {
        check_offer(&offer_sdp)?;
        let (rtc, answer) = self.answer(&offer_sdp, &[VideoCodec::H264, VideoCodec::Vp8])?;
        let chosen = negotiated_video(&answer);
        let id = self.add(rtc, driver::NewRole::Publisher { source }).await?;
        let mut codecs = self.inner.source_video.lock().unwrap_or_else(PoisonError::into_inner);
        match chosen {
            Some(codec) => codecs.insert(source, codec),
            None => codecs.remove(&source),
        };
        Ok((id, answer))
    }

    async fn subscribe(&self, source: SourceId, offer_sdp: String) -> Result<(PeerId, String), MediaRefusal> {
        let summary = check_offer(&offer_sdp)?;
        let publisher_video = self.inner.source_video.lock().unwrap_or_else(PoisonError::into_inner).get(&source).copied();
        let video = match publisher_video {
            Some(codec) => vec![codec],
            None => vec![VideoCodec::H264, VideoCodec::Vp8],
        };
        let (rtc, answer) = self.answer(&offer_sdp, &video)?;
        if let (Some(codec), true) = (publisher_video, summary.video_lines > 0) {
            if negotiated_video(&answer) != Some(codec) {
                return Err(MediaRefusal::InvalidOffer(format!(
                    "the publisher sends {codec:?} video, which the offer does not accept"
                )));
            }
        }
        let id = self.add(rtc, driver::NewRole::Subscriber { source }).await?;
        Ok((id, answer))
    }

    fn close_peer(&self, peer: PeerId) {
        let _ = self.inner.commands.send(driver::Command::ClosePeer(peer));
    }

    fn close_source(&self, source: SourceId) {
        self.inner.source_video.lock().unwrap_or_else(PoisonError::into_inner).remove(&source);
        let _ = self.inner.commands.send(driver::Command::CloseSource(source));
    }

    fn request_keyframe(&self, source: SourceId) {
        let _ = self.inner.commands.send(driver::Command::RequestKeyframe(source));
    }
}

/// The video codec an answer settled on: the first payload type of its active
/// video line.
fn negotiated_video(answer_sdp: &str) -> Option<VideoCodec> {
    let section = answer_sdp.split("\nm=").skip(1).find(|s| s.starts_with("video") && !s.starts_with("video 0 "))?;
    let first_pt = section.lines().next()?.split_whitespace().nth(3)?;
    let codec = section.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=rtpmap:")?;
        let (pt, codec) = rest.split_once(' ')?;
        (pt == first_pt).then(|| codec.split('/').next().unwrap_or_default().to_ascii_uppercase())
    })?;
    match codec.as_str() {
        "VP8" => Some(VideoCodec::Vp8),
        "H264" => Some(VideoCodec::H264),
        _ => None,
    }
}
