//! Building the client peers: str0m `Rtc`s in RTP mode. A publisher writes
//! RTP packets it packetized itself (see `packetize`: every packet stamped,
//! paced as a browser paces them); a subscriber gets each decrypted RTP packet
//! and does no depacketizing, jitter buffering or frame assembly, which keeps
//! it far cheaper than the server's side of it. str0m still runs RTCP for both
//! (sender and receiver reports, NACKs and their retransmissions, PLI).
//!
//! Every peer is the full-ICE, controlling side (the servers are ICE-lite) with
//! one host candidate: its own loopback address on its shard's socket. All
//! peers share one DTLS certificate; making one costs milliseconds per join.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Rtc, RtcConfig};

use super::synth::VideoCodec;

/// What every client peer shares.
pub struct PeerFactory {
    crypto: Arc<CryptoProvider>,
    cert: DtlsCert,
}

/// H.264 Constrained Baseline level 3.1, packetization-mode 1, as browsers offer it.
const H264_CONSTRAINED_BASELINE: u32 = 0x42e01f;

impl PeerFactory {
    pub fn new() -> anyhow::Result<Self> {
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| anyhow!("could not create a DTLS certificate"))?;
        Ok(PeerFactory { crypto, cert })
    }

    fn config(&self, rtp_mode: bool, video: &[VideoCodec]) -> RtcConfig {
        let mut config = RtcConfig::new()
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.cert.clone())
            .set_rtp_mode(rtp_mode)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(video.contains(&VideoCodec::Vp8));
        if video.contains(&VideoCodec::H264) {
            config.codec_config().add_h264(
                102.into(),
                Some(103.into()),
                true,
                H264_CONSTRAINED_BASELINE,
            );
        }
        config
    }

    fn build(&self, config: RtcConfig, local: SocketAddr) -> anyhow::Result<Rtc> {
        let mut rtc = config.build(Instant::now());
        let candidate =
            Candidate::host(local, "udp").map_err(|e| anyhow!("host candidate {local}: {e}"))?;
        rtc.add_local_candidate(candidate);
        Ok(rtc)
    }

    /// A publisher with a sendonly audio and video line, and its offer.
    pub fn publisher(&self, local: SocketAddr, codec: VideoCodec) -> anyhow::Result<OfferingPeer> {
        let mut rtc = self.build(self.config(true, &[codec]), local)?;
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let video = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| anyhow!("str0m made no offer"))?;
        Ok(OfferingPeer {
            rtc,
            offer,
            pending,
            audio,
            video,
        })
    }

    /// A subscriber that offers: recvonly audio and video, either video codec.
    pub fn subscriber_offering(&self, local: SocketAddr) -> anyhow::Result<OfferingPeer> {
        let mut rtc = self.build(
            self.config(true, &[VideoCodec::Vp8, VideoCodec::H264]),
            local,
        )?;
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let video = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| anyhow!("str0m made no offer"))?;
        Ok(OfferingPeer {
            rtc,
            offer,
            pending,
            audio,
            video,
        })
    }

    /// A subscriber that answers the server's offer; returns it and its answer.
    pub fn subscriber_answering(
        &self,
        local: SocketAddr,
        server_offer: &str,
    ) -> anyhow::Result<(Rtc, String)> {
        let mut rtc = self.build(
            self.config(true, &[VideoCodec::Vp8, VideoCodec::H264]),
            local,
        )?;
        let offer =
            SdpOffer::from_sdp_string(server_offer).context("the server's offer does not parse")?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .context("the server's offer was not accepted")?;
        Ok((rtc, answer.to_sdp_string()))
    }
}

/// A peer that made an offer and waits for the answer.
pub struct OfferingPeer {
    pub rtc: Rtc,
    offer: SdpOffer,
    pending: SdpPendingOffer,
    pub audio: Mid,
    pub video: Mid,
}

impl OfferingPeer {
    pub fn offer_sdp(&self) -> String {
        self.offer.to_sdp_string()
    }

    /// Applies the server's answer; the peer is then ready to connect.
    pub fn accept(mut self, answer_sdp: &str) -> anyhow::Result<(Rtc, Mid, Mid)> {
        let answer = SdpAnswer::from_sdp_string(answer_sdp).context("the answer does not parse")?;
        self.rtc
            .sdp_api()
            .accept_answer(self.pending, answer)
            .context("the answer was not accepted")?;
        Ok((self.rtc, self.audio, self.video))
    }
}

/// The socket address a peer with loopback address `ip` uses on a shard.
pub fn local_addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}
