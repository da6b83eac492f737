//! A virtual network for forwarder tests: real str0m client peers and one or
//! more [`Forwarder`]s (shards), datagrams passed in memory, time advanced by
//! the test. Nothing here reads the clock after the start or opens a socket.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onstage_stage::media::{CloseCause, FedPacket, MediaSignal, PeerId, SourceId};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction as MediaDirection, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc, RtcConfig};

use super::{Control, Forwarder, NewRole, Output, Timeouts};
use crate::feeder::FeederLink;
use crate::placement::{home_of, peer_id};
use crate::{Direction, PeerConfig, VideoCodec, answer_offer, local_ufrag};

const MS: Duration = Duration::from_millis(1);
const SERVER: &str = "10.0.0.1:7701";

/// A packet a client received.
#[derive(Clone, Debug)]
pub(super) struct Received {
    pub(super) kind: MediaKind,
    pub(super) seq: u64,
    pub(super) time: u32,
    pub(super) payload: Vec<u8>,
}

pub(super) struct Client {
    pub(super) rtc: Rtc,
    pub(super) addr: SocketAddr,
    pub(super) peer: PeerId,
    pub(super) shard: usize,
    pub(super) audio: Option<Mid>,
    pub(super) video: Option<Mid>,
    next_timeout: Instant,
    pub(super) connected: bool,
    pub(super) received: Vec<Received>,
    pub(super) keyframe_requests: Vec<Instant>,
    /// Sends nothing (a vanished peer).
    pub(super) mute: bool,
    /// Datagrams to it dropped by [`Client::drop_next_over`].
    drop_next_over: Option<usize>,
    pub(super) dropped: usize,
    seq: u16,
    time: u32,
    audio_seq: u16,
    audio_time: u32,
    pub(super) frames: u32,
}

pub(super) struct Net {
    pub(super) now: Instant,
    config: PeerConfig,
    client_cert: str0m::config::DtlsCert,
    server: SocketAddr,
    pub(super) forwarders: Vec<Forwarder>,
    pub(super) clients: Vec<Client>,
    pub(super) signals: Vec<MediaSignal>,
    pub(super) forgotten: Vec<String>,
    /// Every address a forwarder learned for a peer ([`Output::Learned`]).
    pub(super) learned: Vec<(PeerId, SocketAddr)>,
    /// Packets passed from one shard to another.
    pub(super) packets_between_shards: usize,
    /// Packets output for a source's tap, and the sources whose taps were let go.
    pub(super) tapped: Vec<(SourceId, bool)>,
    pub(super) untapped: Vec<SourceId>,
    next_peer: u64,
    /// The video codecs a new peer's answer accepts (VP8 unless a test says).
    pub(super) video_codecs: Vec<VideoCodec>,
    /// Datagrams from clients, on their way to the forwarders.
    up: VecDeque<(usize, Vec<u8>)>,
}

impl Net {
    pub(super) fn new(shards: usize) -> Net {
        Net::with_timeouts(shards, Timeouts::default())
    }

    pub(super) fn with_timeouts(shards: usize, timeouts: Timeouts) -> Net {
        let now = Instant::now();
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let dtls_cert = crypto
            .dtls_provider
            .generate_certificate()
            .expect("a DTLS certificate");
        let server: SocketAddr = SERVER.parse().expect("an address");
        let client_cert = crypto
            .dtls_provider
            .generate_certificate()
            .expect("a DTLS certificate");
        let forwarders = (0..shards)
            .map(|i| Forwarder::new(i, shards, server, timeouts, now))
            .collect();
        Net {
            now,
            config: PeerConfig {
                candidate: server,
                crypto,
                dtls_cert,
            },
            client_cert,
            server,
            forwarders,
            clients: Vec::new(),
            signals: Vec::new(),
            tapped: Vec::new(),
            untapped: Vec::new(),
            forgotten: Vec::new(),
            learned: Vec::new(),
            packets_between_shards: 0,
            next_peer: 1,
            video_codecs: vec![VideoCodec::Vp8],
            up: VecDeque::new(),
        }
    }

    /// A publisher of `source` with an audio and a video line, on its home shard.
    pub(super) fn publish(&mut self, source: SourceId) -> usize {
        let shard = home_of(source, self.forwarders.len());
        self.join(
            shard,
            NewRole::Publisher { source },
            MediaDirection::SendOnly,
            &[MediaKind::Audio, MediaKind::Video],
        )
    }

    /// A subscriber of `source` with an audio and a video line, on `shard`.
    pub(super) fn subscribe(&mut self, source: SourceId, shard: usize) -> usize {
        self.subscribe_lines(source, shard, &[MediaKind::Audio, MediaKind::Video])
    }

    pub(super) fn subscribe_lines(
        &mut self,
        source: SourceId,
        shard: usize,
        kinds: &[MediaKind],
    ) -> usize {
        self.join(
            shard,
            NewRole::Subscriber { source },
            MediaDirection::RecvOnly,
            kinds,
        )
    }

    /// Makes a client's offer, the server's answer and places the server's peer.
    fn join(
        &mut self,
        shard: usize,
        role: NewRole,
        dir: MediaDirection,
        kinds: &[MediaKind],
    ) -> usize {
        let index = self.clients.len();
        let addr: SocketAddr = format!("10.0.1.{}:{}", index + 1, 40_000 + index)
            .parse()
            .expect("an address");
        // The clients share one certificate: making one per peer costs more than
        // the rest of a test.
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .set_crypto_provider(self.config.crypto.clone())
            .set_dtls_cert(self.client_cert.clone())
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a candidate"));
        let mut api = rtc.sdp_api();
        let mut audio = None;
        let mut video = None;
        for &kind in kinds {
            let mid = api.add_media(kind, dir, None, None, None);
            if kind == MediaKind::Audio {
                audio = Some(mid);
            } else {
                video = Some(mid);
            }
        }
        let (offer, pending) = api.apply().expect("an offer");
        let direction = if dir == MediaDirection::SendOnly {
            Direction::Publish
        } else {
            Direction::Subscribe
        };
        let (server_rtc, answer) = answer_offer(
            &self.config,
            &offer.to_sdp_string(),
            &self.video_codecs,
            direction,
            self.now,
        )
        .expect("an answer");
        let ufrag = local_ufrag(&answer).expect("a ufrag");
        rtc.sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&answer).expect("an answer that parses"),
            )
            .expect("the answer accepted");
        let peer = peer_id(self.next_peer, shard);
        self.next_peer += 1;
        self.forwarders[shard]
            .add_peer(self.now, peer, Box::new(server_rtc), role, ufrag)
            .expect("the peer placed");
        self.clients.push(Client {
            rtc,
            addr,
            peer,
            shard,
            audio,
            video,
            next_timeout: self.now,
            connected: false,
            received: Vec::new(),
            keyframe_requests: Vec::new(),
            mute: false,
            drop_next_over: None,
            dropped: 0,
            seq: 1000 + 7 * index as u16,
            time: 50_000 * (index as u32 + 1),
            audio_seq: 300,
            audio_time: 9_000,
            frames: 0,
        });
        index
    }

    /// Moves every datagram, packet and message until nothing moves.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for c in 0..self.clients.len() {
                moved |= self.poll_client(c);
            }
            while let Some((c, datagram)) = self.up.pop_front() {
                moved = true;
                let (from, shard) = (self.clients[c].addr, self.clients[c].shard);
                let now = self.now;
                self.forwarders[shard].receive(now, from, &datagram);
            }
            for f in 0..self.forwarders.len() {
                while let Some(output) = self.forwarders[f].poll_output() {
                    moved = true;
                    self.carry_out(output);
                }
            }
            if !moved {
                // Like the shard after a batch: run the subscribers written to.
                let now = self.now;
                for f in &mut self.forwarders {
                    f.kick(now);
                }
                if self.forwarders.iter_mut().all(|f| f.out.is_empty()) {
                    return;
                }
            }
        }
        panic!("the network never settled");
    }

    /// Drains a client's output (str0m wants it after every input): datagrams
    /// wait in `up`, events are recorded.
    fn poll_client(&mut self, c: usize) -> bool {
        let mut moved = false;
        let now = self.now;
        let client = &mut self.clients[c];
        loop {
            match client.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    client.next_timeout = t;
                    return moved;
                }
                Ok(RtcOutput::Transmit(t)) => {
                    moved = true;
                    if !client.mute {
                        self.up.push_back((c, t.contents.into()));
                    }
                }
                Ok(RtcOutput::Event(e)) => {
                    moved = true;
                    client_event(client, e, now);
                }
                Err(e) => panic!("client {c} failed: {e}"),
            }
        }
    }

    fn carry_out(&mut self, output: Output) {
        let now = self.now;
        match output {
            Output::Transmit { to, contents } => {
                let Some(client) = self.clients.iter_mut().find(|c| c.addr == to) else {
                    return;
                };
                if let Some(size) = client.drop_next_over
                    && contents.len() > size
                {
                    client.drop_next_over = None;
                    client.dropped += 1;
                    return;
                }
                let Ok(contents) = contents.as_slice().try_into() else {
                    return;
                };
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: self.server,
                        destination: to,
                        contents,
                    },
                );
                let _ = client.rtc.handle_input(input);
                if let Some(c) = self.clients.iter().position(|c| c.addr == to) {
                    self.poll_client(c);
                }
            }
            Output::Packet {
                shard,
                source,
                packet,
            } => {
                self.packets_between_shards += 1;
                self.forwarders[shard].packet(now, source, &packet);
            }
            Output::Control { shard, control } => self.forwarders[shard].control(now, control),
            Output::Signal(signal) => self.signals.push(signal),
            Output::Learned { peer, remote } => self.learned.push((peer, remote)),
            Output::Forget { ufrag, .. } => self.forgotten.push(ufrag),
            Output::Tap { source, packet } => self.tapped.push((source, packet.keyframe_start)),
            Output::Untap(source) => self.untapped.push(source),
        }
    }

    /// Advances virtual time by `d`, running every timer that falls due.
    pub(super) fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            self.settle();
            let next = self
                .clients
                .iter()
                .map(|c| c.next_timeout)
                .chain(self.forwarders.iter().map(|f| f.poll_timeout()))
                .min()
                .unwrap_or(until);
            let next = if next <= self.now {
                self.now + Duration::from_millis(1)
            } else {
                next
            };
            if next > until {
                self.now = until;
                self.settle();
                return;
            }
            self.now = next;
            let now = self.now;
            for c in 0..self.clients.len() {
                if self.clients[c].next_timeout <= now {
                    let _ = self.clients[c].rtc.handle_input(Input::Timeout(now));
                    self.poll_client(c);
                }
            }
            for f in &mut self.forwarders {
                if f.poll_timeout() <= now {
                    f.handle_timeout(now);
                }
            }
        }
    }

    /// The first connectivity check client `c` sends, taken off the wire; the
    /// client sends nothing more (its credentials are someone else's now).
    pub(super) fn steal_check(&mut self, c: usize) -> Vec<u8> {
        for _ in 0..1000 {
            let now = self.now;
            let _ = self.clients[c].rtc.handle_input(Input::Timeout(now));
            self.poll_client(c);
            let check = self
                .up
                .iter()
                .position(|(from, d)| *from == c && d.starts_with(&[0x00, 0x01]));
            if let Some(check) = check.and_then(|i| self.up.remove(i)) {
                self.up.retain(|(from, _)| *from != c);
                self.clients[c].mute = true;
                return check.1;
            }
            self.now += MS;
        }
        panic!("client {c} sent no check");
    }

    /// A datagram from `from` to shard `shard`, then everything it sets moving.
    pub(super) fn deliver(&mut self, shard: usize, from: SocketAddr, datagram: &[u8]) {
        let now = self.now;
        self.forwarders[shard].receive(now, from, datagram);
        self.settle();
    }

    /// Runs until every client is connected (at most ten virtual seconds).
    pub(super) fn connect(&mut self) {
        for _ in 0..1000 {
            if self.clients.iter().all(|c| c.connected) {
                return;
            }
            self.run_for(Duration::from_millis(10));
        }
        panic!("the clients did not connect");
    }

    /// One video frame of `packets` packets from a publisher, then a frame's time.
    pub(super) fn video_frame(&mut self, c: usize, key: bool, packets: usize) {
        let now = self.now;
        let client = &mut self.clients[c];
        client.frames += 1;
        let frame = client.frames;
        let mid = client.video.expect("a video line");
        let pt = client
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
            .expect("VP8");
        for i in 0..packets {
            // The VP8 payload descriptor (S on the first packet, partition 0), the
            // payload header's inverse key frame bit, then the frame's number.
            let mut payload = vec![0u8; 600];
            payload[0] = if i == 0 { 0x10 } else { 0x00 };
            payload[1] = if key { 0x00 } else { 0x01 };
            payload[2..6].copy_from_slice(&frame.to_be_bytes());
            payload[6] = i as u8;
            let seq = client.seq;
            client.seq = client.seq.wrapping_add(1);
            let mut api = client.rtc.direct_api();
            let stream = api.stream_tx_by_mid(mid, None).expect("a video stream");
            stream.write_rtp(
                RtpWrite::new(pt, u64::from(seq).into(), client.time, now, payload)
                    .marker(i + 1 == packets)
                    .nackable(true),
            );
        }
        client.time = client.time.wrapping_add(3000);
        self.run_for(Duration::from_millis(33));
    }

    /// One audio packet from a publisher, then a millisecond.
    pub(super) fn audio_packet(&mut self, c: usize) {
        let now = self.now;
        let client = &mut self.clients[c];
        let mid = client.audio.expect("an audio line");
        let pt = client
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
            .expect("Opus");
        let seq = client.audio_seq;
        client.audio_seq = client.audio_seq.wrapping_add(1);
        let mut api = client.rtc.direct_api();
        let stream = api.stream_tx_by_mid(mid, None).expect("an audio stream");
        stream.write_rtp(RtpWrite::new(
            pt,
            u64::from(seq).into(),
            client.audio_time,
            now,
            vec![0xA0; 80],
        ));
        client.audio_time = client.audio_time.wrapping_add(960);
        self.run_for(MS);
    }

    /// The next datagram over `size` bytes for client `c` is lost.
    pub(super) fn drop_next_over(&mut self, c: usize, size: usize) {
        self.clients[c].drop_next_over = Some(size);
    }

    pub(super) fn video_received(&self, c: usize) -> Vec<Received> {
        self.clients[c]
            .received
            .iter()
            .filter(|r| r.kind == MediaKind::Video)
            .cloned()
            .collect()
    }

    pub(super) fn closed(&self, peer: PeerId) -> Option<CloseCause> {
        self.signals.iter().find_map(|s| match s {
            MediaSignal::Closed(p, cause) if *p == peer => Some(*cause),
            _ => None,
        })
    }

    /// A feeder from outside WebRTC for `source`, on its home shard.
    pub(super) fn feed(&mut self, source: SourceId) -> (PeerId, Arc<FeederLink>) {
        let shard = home_of(source, self.forwarders.len());
        let peer = peer_id(self.next_peer, shard);
        self.next_peer += 1;
        let link = Arc::new(FeederLink::default());
        self.forwarders[shard]
            .add_feeder(self.now, peer, source, link.clone())
            .expect("the feeder placed");
        self.settle();
        (peer, link)
    }

    /// A packet from feeder `peer` of `source`, then everything it sets moving.
    pub(super) fn push_fed(&mut self, source: SourceId, peer: PeerId, packet: FedPacket) {
        let now = self.now;
        let shard = home_of(source, self.forwarders.len());
        self.forwarders[shard].fed(now, peer, packet);
        self.settle();
    }

    pub(super) fn control(&mut self, shard: usize, control: Control) {
        let now = self.now;
        self.forwarders[shard].control(now, control);
        self.settle();
    }
}

fn client_event(client: &mut Client, event: Event, now: Instant) {
    match event {
        Event::Connected => client.connected = true,
        Event::RtpPacket(p) => {
            let mid = client
                .rtc
                .direct_api()
                .stream_rx(&p.header.ssrc)
                .map(|s| s.mid());
            let kind = if mid.is_some() && mid == client.video {
                MediaKind::Video
            } else {
                MediaKind::Audio
            };
            client.received.push(Received {
                kind,
                seq: *p.seq_no,
                time: p.header.timestamp,
                payload: p.payload.to_vec(),
            });
        }
        Event::KeyframeRequest(_) => client.keyframe_requests.push(now),
        _ => {}
    }
}

impl Received {
    /// The frame number a test publisher wrote into the payload.
    pub(super) fn frame(&self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.payload[2..6]);
        u32::from_be_bytes(b)
    }

    pub(super) fn starts_keyframe(&self) -> bool {
        self.payload[0] & 0x10 != 0 && self.payload[1] & 0x01 == 0
    }
}
