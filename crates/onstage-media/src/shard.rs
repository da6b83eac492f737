//! A forwarding shard: one thread owning a share of the peers.
//!
//! The media plane runs one shard per core. A shard owns the `Rtc` of every peer
//! placed on it and is the only thread that touches them, so forwarding takes no
//! lock. Its loop waits for an input (a datagram routed to it by [`crate::ingress`],
//! a command, a packet from another shard) or the earliest peer timeout, hands the
//! input to the one `Rtc` it concerns, then drains that peer's output: datagrams
//! go to the shared socket, events become work (forward a packet, ask for a
//! keyframe, report a state change).
//!
//! Every source has a *home* shard (fixed by its id), where its publisher lives,
//! keyframe requests are rate-limited, and its packets arrive. Subscribers are
//! placed on whichever shard has the fewest peers, so one big audience spreads
//! over every core: the home shard writes a packet to its own subscribers of the
//! source and sends it once to each other shard that has some, which writes it
//! to theirs.
//!
//! Media is forwarded as RTP packets, not frames: a publisher's packet is
//! decrypted once, its payload shared (`Arc<[u8]>`) by every subscriber's send
//! queue and retransmission cache, and each subscriber's copy differs only in
//! the header ([`crate::rewrite`] renumbers it). Packets go out as they arrive,
//! so a big keyframe does not hold up every subscriber until it is complete.
//! Writing only queues a packet in the subscriber's `Rtc`; the subscribers
//! written to are then run once per batch of input (see [`KICK_EVERY`]), which
//! encrypts and sends everything they have queued in one go.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use onstage_stage::media::{CloseCause, MediaRefusal, MediaSignal, PeerId, SourceId};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::{mpsc, oneshot};

use crate::ingress::Routing;
use crate::keyframe::{VideoFormat, starts_keyframe};
use crate::outbox::Outbox;
use crate::rewrite::OutgoingStream;

/// A peer that has not completed ICE and DTLS by then is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A connected peer that sends nothing for this long has vanished (a killed
/// browser says no goodbye). Connected peers are never that quiet: publishers send
/// media; subscribers send RTCP receiver reports every second or so and consent
/// checks every five seconds or so, so one lost check is tolerated. str0m's own
/// ICE-lite timeout (15 s after the last check) stays the backstop; this one keeps
/// detection inside 15 s of the disappearance wherever the last check fell.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(12);
/// At most one keyframe request per source in this interval, however many
/// subscribers ask; a request inside it is sent when it ends, not dropped. Short,
/// because a keyframe asked for just before a subscriber connected is of no use
/// to it (replication start → first frame went from ~305 ms to ~158 ms p50).
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(100);

/// Datagrams and forwarded packets a shard may have queued. A shard that cannot keep up
/// sheds what arrives beyond this, as a network card drops what overflows its
/// ring, instead of queueing without bound: a backlog would delay every packet,
/// connectivity checks included, by as long as it takes to clear (at ~30,000
/// datagrams a second, 2,048 is under 70 ms).
pub(crate) const DATA_QUEUE: usize = 2048;

/// Packets queued in subscribers (a packet written to 200 subscribers counts
/// 200) before the subscribers written to are run. Running a subscriber (its
/// timers, then encrypting and sending what it has queued) costs several times
/// more than queueing a packet, so while input is waiting a shard queues this
/// much and then runs each subscriber once for all its packets (which also go
/// out as one segmentation-offload run); when no input waits it runs them at
/// once. Queueing this many takes well under a millisecond.
const KICK_EVERY: usize = 1024;

/// Video packets a subscriber's connection keeps to answer NACKs with: about
/// half a second of 2.5 Mbit/s video, more than a round trip and a retry on any
/// network a live stage is usable on. Their payloads are the publisher's, shared
/// by every subscriber, so an entry costs only str0m's packet record (~430 bytes,
/// ~55 KB per subscriber; own copies of the packets cost ~190 KB).
const VIDEO_RETRANSMIT_PACKETS: usize = 128;
const VIDEO_RETRANSMIT_AGE: Duration = Duration::from_secs(1);

/// Bits of a [`PeerId`] that name its shard: the id alone says where a peer lives.
const SHARD_BITS: u32 = 8;
/// Most shards a media plane runs.
pub(crate) const MAX_SHARDS: usize = 1 << SHARD_BITS;

pub(crate) fn peer_id(sequence: u64, shard: usize) -> PeerId {
    PeerId((sequence << SHARD_BITS) | shard as u64)
}

pub(crate) fn shard_of_peer(peer: PeerId, shards: usize) -> usize {
    (peer.0 & (MAX_SHARDS as u64 - 1)) as usize % shards
}

/// The shard that is home to a source: where its publisher is placed.
pub(crate) fn home_of(source: SourceId, shards: usize) -> usize {
    (source.0 % shards as u64) as usize
}

pub(crate) enum NewRole {
    Publisher { source: SourceId },
    Subscriber { source: SourceId },
}

/// Media for a shard: shed when the shard falls behind (see [`DATA_QUEUE`]).
pub(crate) enum ShardData {
    /// A datagram from a peer of this shard.
    Datagram {
        at: Instant,
        from: SocketAddr,
        datagram: Bytes,
    },
    /// From the source's home shard: a packet for this shard's subscribers of it.
    Packet { source: SourceId, packet: Packet },
}

/// Everything else a shard is sent: never shed.
pub(crate) enum ShardInput {
    AddPeer {
        id: PeerId,
        rtc: Box<Rtc>,
        role: NewRole,
        /// The peer's local ICE ufrag, to unregister it from the receive loop when
        /// the peer goes.
        ufrag: String,
        reply: oneshot::Sender<Result<(), MediaRefusal>>,
    },
    ClosePeer(PeerId),
    /// Sent to every shard: each closes its own peers of the source.
    CloseSource(SourceId),
    /// To the source's home shard.
    RequestKeyframe(SourceId),
    /// To the source's home shard: shard `shard` has subscribers of `source` now.
    Attach {
        source: SourceId,
        shard: usize,
    },
    /// To the source's home shard: shard `shard` has no subscribers of `source` left.
    Detach {
        source: SourceId,
        shard: usize,
    },
    /// From the source's home shard: a new publisher feeds the source, so its
    /// subscribers' video waits for that publisher's first keyframe.
    Restart(SourceId),
    /// The media plane is being dropped.
    Stop,
}

/// One RTP packet of a source, as forwarded to subscribers: what a subscriber's
/// header needs, and the payload, shared.
#[derive(Clone)]
pub(crate) struct Packet {
    kind: MediaKind,
    params: PayloadParams,
    /// The incoming stream (publisher and SSRC) it belongs to.
    feed: u64,
    seq: u64,
    time: u32,
    arrival: Instant,
    marker: bool,
    /// The first packet of a keyframe, where a subscriber's video may start.
    keyframe_start: bool,
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    payload: Arc<[u8]>,
}

/// How busy a shard is, read by the media plane to place subscribers and to
/// report gauges.
#[derive(Default)]
pub(crate) struct ShardLoad {
    pub(crate) peers: AtomicUsize,
    pub(crate) sources: AtomicUsize,
}

/// What a shard needs to reach the rest of the media plane.
pub(crate) struct ShardLinks {
    pub(crate) index: usize,
    /// Every shard's control input, this one's included, by index.
    pub(crate) shards: Vec<mpsc::UnboundedSender<ShardInput>>,
    /// Every shard's media input, by index.
    pub(crate) data: Vec<mpsc::Sender<ShardData>>,
    pub(crate) loads: Arc<[ShardLoad]>,
    pub(crate) routing: mpsc::UnboundedSender<Routing>,
    pub(crate) signals: mpsc::UnboundedSender<MediaSignal>,
    /// The shared media socket (sends only; the receive loop reads it).
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) local: SocketAddr,
}

/// Work that runs on a shard's thread beside the shard, made there (it may need
/// the thread's runtime to be built): the receive loop, when there is only one
/// shard, so a datagram reaches its shard without crossing threads.
pub(crate) type Companion = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

pub(crate) fn spawn(
    links: ShardLinks,
    inputs: mpsc::UnboundedReceiver<ShardInput>,
    data: mpsc::Receiver<ShardData>,
    companion: Option<Companion>,
) -> std::io::Result<()> {
    let name = format!("onstage-media-{}", links.index);
    std::thread::Builder::new().name(name).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "media shard could not start its runtime");
                return;
            }
        };
        if let Some(companion) = companion {
            let _entered = runtime.enter();
            runtime.spawn(companion());
        }
        runtime.block_on(Shard::new(links).run(inputs, data));
    })?;
    Ok(())
}

// A subscriber's role is the larger; peers are few next to the packets written
// to them, and boxing it would add a pointer chase to every write.
#[allow(clippy::large_enum_variant)]
enum Role {
    Publisher {
        source: SourceId,
        kinds: Vec<(Mid, MediaKind)>,
        streams: Vec<IncomingStream>,
    },
    Subscriber {
        source: SourceId,
        audio: Option<Track>,
        video: Option<Track>,
    },
}

/// One of a publisher's RTP streams, as the packets forwarded from it need.
struct IncomingStream {
    ssrc: Ssrc,
    kind: MediaKind,
    feed: u64,
    /// The payload type last seen and what it stands for.
    params: Option<PayloadParams>,
    format: Option<VideoFormat>,
    /// The RTP timestamp of the last packet: a new one starts a frame.
    last_time: Option<u32>,
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

struct Peer {
    rtc: Box<Rtc>,
    role: Role,
    ufrag: String,
    connected: bool,
    added: Instant,
    /// When the peer last sent a datagram.
    heard: Instant,
    next_timeout: Instant,
    remote: Option<SocketAddr>,
    /// Written to since it was last run (see [`KICK_EVERY`]).
    written: bool,
}

/// A source as one shard sees it: its subscribers here, and on its home shard
/// also its publisher, the other shards to forward to and the keyframe timing.
#[derive(Default)]
struct Source {
    subscribers: Vec<PeerId>,
    feeder: Option<PeerId>,
    /// Other shards with subscribers of this source (home shard only).
    attached: Vec<usize>,
    last_keyframe_request: Option<Instant>,
    /// A request that came too soon after the last one, sent when the interval
    /// ends: dropping it would leave a new subscriber waiting for the publisher's
    /// next scheduled keyframe, seconds away.
    keyframe_due: Option<Instant>,
}

/// Work produced while draining a peer's output, done after the drain.
enum Work {
    Forward { source: SourceId, packet: Packet },
    Keyframe { source: SourceId },
    Close { peer: PeerId, cause: CloseCause },
}

#[derive(Default)]
struct Counters {
    packets_in: u64,
    bytes_in: u64,
    packets_forwarded: u64,
    bytes_forwarded: u64,
    /// Packets not passed to a shard that was behind.
    packets_shed: u64,
}

struct Shard {
    links: ShardLinks,
    outbox: Outbox,
    peers: HashMap<PeerId, Peer, IdHash>,
    by_remote: HashMap<SocketAddr, PeerId>,
    sources: HashMap<SourceId, Source, IdHash>,
    work: VecDeque<Work>,
    /// Subscribers written to since they were last run.
    written: Vec<PeerId>,
    /// Packets queued in subscribers since they were last run.
    unkicked: usize,
    counters: Counters,
}

impl Shard {
    fn new(links: ShardLinks) -> Self {
        Shard {
            outbox: Outbox::new(links.socket.clone()),
            links,
            peers: HashMap::default(),
            by_remote: HashMap::new(),
            sources: HashMap::default(),
            work: VecDeque::new(),
            written: Vec::new(),
            unkicked: 0,
            counters: Counters::default(),
        }
    }

    fn is_home(&self, source: SourceId) -> bool {
        home_of(source, self.links.shards.len()) == self.links.index
    }

    fn send_to_shard(&self, shard: usize, input: ShardInput) {
        if let Some(tx) = self.links.shards.get(shard) {
            let _ = tx.send(input);
        }
    }

    /// Passes media to another shard, or sheds it if that shard is behind.
    fn send_data_to_shard(&mut self, shard: usize, data: ShardData) {
        if let Some(tx) = self.links.data.get(shard)
            && tx.try_send(data).is_err()
        {
            self.counters.packets_shed += 1;
        }
    }

    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<ShardInput>,
        mut data: mpsc::Receiver<ShardData>,
    ) {
        let mut flush_at = Instant::now() + Duration::from_secs(1);
        // Reused across wakes: the loop wakes for every datagram and allocates
        // nothing to find the peers and sources whose timers are due.
        let mut due: Vec<PeerId> = Vec::new();
        let mut keyframes_due: Vec<SourceId> = Vec::new();
        loop {
            let wake = self
                .peers
                .values()
                .map(|p| p.next_timeout)
                .chain(self.sources.values().filter_map(|s| s.keyframe_due))
                .min()
                .unwrap_or(flush_at)
                .min(flush_at);
            tokio::select! {
                // Control first: a new peer or a close must not wait behind media.
                biased;
                input = inputs.recv() => match input {
                    Some(ShardInput::Stop) | None => break,
                    Some(input) => self.input(input),
                },
                media = data.recv() => if let Some(media) = media {
                    self.media(media);
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            // Take whatever else is queued before looking at timers: under load
            // the queues are rarely empty.
            for _ in 0..64 {
                let mut idle = true;
                match inputs.try_recv() {
                    Ok(ShardInput::Stop) => return self.stop(),
                    Ok(input) => {
                        self.input(input);
                        idle = false;
                    }
                    Err(_) => {}
                }
                if let Ok(media) = data.try_recv() {
                    self.media(media);
                    idle = false;
                }
                if idle {
                    break;
                }
            }
            self.flush();
            let now = Instant::now();
            due.clear();
            due.extend(
                self.peers
                    .iter()
                    .filter(|(_, p)| p.next_timeout <= now)
                    .map(|(id, _)| *id),
            );
            for &id in &due {
                if let Some(peer) = self.peers.get_mut(&id) {
                    if !peer.connected && now.duration_since(peer.added) > CONNECT_TIMEOUT {
                        self.work.push_back(Work::Close {
                            peer: id,
                            cause: CloseCause::Timeout,
                        });
                        continue;
                    }
                    if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                        tracing::debug!(peer = %id, error = %e, "peer failed on timeout");
                    }
                    self.drain(id);
                }
            }
            keyframes_due.clear();
            keyframes_due.extend(
                self.sources
                    .iter()
                    .filter(|(_, s)| s.keyframe_due.is_some_and(|t| t <= now))
                    .map(|(id, _)| *id),
            );
            for &source in &keyframes_due {
                self.request_keyframe(source);
            }
            self.do_work();
            self.flush();
            if now >= flush_at {
                for (id, peer) in &self.peers {
                    if peer.connected && now.duration_since(peer.heard) > SILENCE_TIMEOUT {
                        tracing::debug!(peer = %id, "peer went silent");
                        self.work.push_back(Work::Close {
                            peer: *id,
                            cause: CloseCause::Timeout,
                        });
                    }
                }
                self.do_work();
                self.flush_metrics();
                self.flush();
                flush_at = now + Duration::from_secs(1);
            }
        }
        self.stop();
    }

    /// Runs the subscribers written to and sends everything queued.
    fn flush(&mut self) {
        self.kick_written();
        self.outbox.flush();
    }

    /// Runs every subscriber written to since the last kick: str0m moves queued
    /// packets to its send queue on a timeout, then they are polled out
    /// (encrypted) into the outbox.
    fn kick_written(&mut self) {
        self.unkicked = 0;
        if self.written.is_empty() {
            return;
        }
        let now = Instant::now();
        let written = std::mem::take(&mut self.written);
        for &id in &written {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            peer.written = false;
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(peer = %id, error = %e, "subscriber failed on timeout");
            }
            self.drain(id);
        }
        // Hand the (now empty) list back to keep its capacity.
        self.written = written;
        self.written.clear();
        self.do_work();
    }

    fn stop(&mut self) {
        self.flush();
        for (_, mut peer) in self.peers.drain() {
            peer.rtc.disconnect();
        }
    }

    fn media(&mut self, media: ShardData) {
        match media {
            ShardData::Datagram { at, from, datagram } => self.receive(at, &datagram, from),
            ShardData::Packet { source, packet } => self.forward_here(source, &packet),
        }
        self.do_work();
        if self.unkicked >= KICK_EVERY {
            self.kick_written();
        }
    }

    fn input(&mut self, input: ShardInput) {
        match input {
            ShardInput::AddPeer {
                id,
                rtc,
                role,
                ufrag,
                reply,
            } => {
                let result = self.add_peer(id, rtc, role, ufrag.clone());
                if result.is_err() {
                    let _ = self.links.routing.send(Routing::Forget {
                        ufrag,
                        remote: None,
                    });
                }
                let _ = reply.send(result);
                self.drain(id);
            }
            ShardInput::ClosePeer(id) => self.close_peer(id, CloseCause::Requested),
            ShardInput::RequestKeyframe(source) => self.request_keyframe(source),
            ShardInput::CloseSource(source) => self.close_source(source),
            ShardInput::Attach { source, shard } => {
                // Only a source still open here: an attach that crossed the
                // source's closing is moot, the other shard closes its side too.
                if let Some(s) = self.sources.get_mut(&source)
                    && !s.attached.contains(&shard)
                {
                    s.attached.push(shard);
                }
            }
            ShardInput::Detach { source, shard } => {
                if let Some(s) = self.sources.get_mut(&source) {
                    s.attached.retain(|x| *x != shard);
                }
            }
            ShardInput::Restart(source) => self.await_keyframe(source),
            ShardInput::Stop => {}
        }
        self.do_work();
    }

    fn flush_metrics(&mut self) {
        let c = std::mem::take(&mut self.counters);
        metrics::counter!("onstage_media_packets_received_total").increment(c.packets_in);
        metrics::counter!("onstage_media_bytes_received_total").increment(c.bytes_in);
        metrics::counter!("onstage_media_packets_forwarded_total").increment(c.packets_forwarded);
        metrics::counter!("onstage_media_bytes_forwarded_total").increment(c.bytes_forwarded);
        metrics::counter!("onstage_media_packets_shed_total").increment(c.packets_shed);
        metrics::counter!("onstage_media_datagrams_sent_total")
            .increment(std::mem::take(&mut self.outbox.sent));
        metrics::counter!("onstage_media_datagrams_dropped_total")
            .increment(std::mem::take(&mut self.outbox.dropped));
        let load = &self.links.loads[self.links.index];
        load.peers.store(self.peers.len(), Ordering::Relaxed);
        // A source is counted by its home shard only, however many shards have
        // subscribers of it.
        let homed = self.sources.keys().filter(|s| self.is_home(**s)).count();
        load.sources.store(homed, Ordering::Relaxed);
        metrics::gauge!("onstage_media_shard_peers", "shard" => self.links.index.to_string())
            .set(self.peers.len() as f64);
        // The first shard reports the totals (the gauges are the plane's, not a
        // shard's); the others' loads are at most a second old.
        if self.links.index == 0 {
            let peers: usize = self
                .links
                .loads
                .iter()
                .map(|l| l.peers.load(Ordering::Relaxed))
                .sum();
            metrics::gauge!("onstage_media_peers").set(peers as f64);
            metrics::gauge!("onstage_media_shards").set(self.links.loads.len() as f64);
            let sources: usize = self
                .links
                .loads
                .iter()
                .map(|l| l.sources.load(Ordering::Relaxed))
                .sum();
            metrics::gauge!("onstage_media_sources").set(sources as f64);
        }
    }

    fn receive(&mut self, at: Instant, datagram: &[u8], from: SocketAddr) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += datagram.len() as u64;
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let input = Input::Receive(
            at,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.links.local,
                contents,
            },
        );
        let id = match self.by_remote.get(&from) {
            Some(id) => *id,
            None => {
                // First datagram from this address: find the peer whose ICE
                // credentials it carries.
                let Some((id, peer)) = self.peers.iter_mut().find(|(_, p)| p.rtc.accepts(&input))
                else {
                    return;
                };
                if let Some(old) = peer.remote.replace(from) {
                    self.by_remote.remove(&old);
                }
                self.by_remote.insert(from, *id);
                *id
            }
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.heard = at;
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(peer = %id, error = %e, "peer rejected input");
        }
        self.drain(id);
    }

    fn add_peer(
        &mut self,
        id: PeerId,
        rtc: Box<Rtc>,
        role: NewRole,
        ufrag: String,
    ) -> Result<(), MediaRefusal> {
        let now = Instant::now();
        let role = match role {
            NewRole::Publisher { source } => {
                if !self.is_home(source) {
                    return Err(MediaRefusal::Internal(
                        "a publisher was placed away from its source's shard".into(),
                    ));
                }
                let s = self.sources.entry(source).or_default();
                let replaced = s.feeder.replace(id);
                // The new feeder's stream starts over: its subscribers, here and
                // on other shards, wait for its first keyframe.
                for shard in s.attached.clone() {
                    self.send_to_shard(shard, ShardInput::Restart(source));
                }
                self.await_keyframe(source);
                if let Some(old) = replaced {
                    self.close_peer(old, CloseCause::Requested);
                }
                Role::Publisher {
                    source,
                    kinds: Vec::new(),
                    streams: Vec::new(),
                }
            }
            NewRole::Subscriber { source } => {
                // A source whose publisher is away (a replication's reconnect
                // window) is still open: the subscriber gets media when the
                // publisher returns. The media plane checked the source is open
                // before placing the subscriber; at home the source's entry is
                // made by its publisher, elsewhere by its first subscriber here.
                let home = home_of(source, self.links.shards.len());
                if home == self.links.index {
                    let s = self
                        .sources
                        .get_mut(&source)
                        .ok_or(MediaRefusal::NoSuchSource)?;
                    s.subscribers.push(id);
                } else {
                    let s = self.sources.entry(source).or_default();
                    s.subscribers.push(id);
                    if s.subscribers.len() == 1 {
                        self.send_to_shard(
                            home,
                            ShardInput::Attach {
                                source,
                                shard: self.links.index,
                            },
                        );
                    }
                }
                Role::Subscriber {
                    source,
                    audio: None,
                    video: None,
                }
            }
        };
        self.peers.insert(
            id,
            Peer {
                rtc,
                role,
                ufrag,
                connected: false,
                added: now,
                heard: now,
                next_timeout: now,
                remote: None,
                written: false,
            },
        );
        self.links.loads[self.links.index]
            .peers
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn await_keyframe(&mut self, source: SourceId) {
        let Some(s) = self.sources.get(&source) else {
            return;
        };
        for sub in &s.subscribers {
            if let Some(Peer {
                role:
                    Role::Subscriber {
                        video: Some(track), ..
                    },
                ..
            }) = self.peers.get_mut(sub)
            {
                track.stream.restart();
            }
        }
    }

    fn close_source(&mut self, source: SourceId) {
        let Some(s) = self.sources.remove(&source) else {
            return;
        };
        if let Some(feeder) = s.feeder {
            self.close_peer(feeder, CloseCause::Requested);
        }
        for sub in s.subscribers {
            self.close_peer(sub, CloseCause::SourceClosed);
        }
    }

    fn close_peer(&mut self, id: PeerId, cause: CloseCause) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        self.links.loads[self.links.index]
            .peers
            .fetch_sub(1, Ordering::Relaxed);
        self.say_goodbye(id, &mut peer.rtc);
        if let Some(remote) = peer.remote {
            self.by_remote.remove(&remote);
        }
        let _ = self.links.routing.send(Routing::Forget {
            ufrag: peer.ufrag,
            remote: peer.remote,
        });
        match peer.role {
            Role::Publisher { source, .. } => {
                if let Some(s) = self.sources.get_mut(&source)
                    && s.feeder == Some(id)
                {
                    s.feeder = None;
                }
            }
            Role::Subscriber { source, .. } => {
                let home = home_of(source, self.links.shards.len());
                if let Some(s) = self.sources.get_mut(&source) {
                    s.subscribers.retain(|p| *p != id);
                    if s.subscribers.is_empty() && home != self.links.index {
                        self.sources.remove(&source);
                        self.send_to_shard(
                            home,
                            ShardInput::Detach {
                                source,
                                shard: self.links.index,
                            },
                        );
                    }
                }
            }
        }
        let _ = self.links.signals.send(MediaSignal::Closed(id, cause));
    }

    /// Sends RTCP BYE and DTLS close_notify so the remote end learns at once that
    /// the connection is over (a replaced publisher, a disconnected participant),
    /// instead of after its consent checks time out.
    fn say_goodbye(&mut self, id: PeerId, rtc: &mut Rtc) {
        if rtc.is_alive() && rtc.close().is_ok() {
            // Closing only queues datagrams; a few polls flush them.
            for _ in 0..64 {
                if !rtc.is_alive() {
                    break;
                }
                match rtc.poll_output() {
                    Ok(Output::Transmit(t)) => self.outbox.push(t.contents.into(), t.destination),
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
            }
        }
        tracing::debug!(peer = %id, "peer closed");
        rtc.disconnect();
    }

    /// Drains one peer's output: datagrams go out now, events become work.
    fn drain(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        loop {
            if !peer.rtc.is_alive() {
                self.work.push_back(Work::Close {
                    peer: id,
                    cause: CloseCause::RemoteClosed,
                });
                return;
            }
            let output = match peer.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(peer = %id, error = %e, "peer failed");
                    self.work.push_back(Work::Close {
                        peer: id,
                        cause: CloseCause::RemoteClosed,
                    });
                    return;
                }
            };
            match output {
                Output::Timeout(t) => {
                    peer.next_timeout = t;
                    return;
                }
                Output::Transmit(t) => self.outbox.push(t.contents.into(), t.destination),
                Output::Event(event) => match event {
                    Event::Connected => {
                        peer.connected = true;
                        let _ = self.links.signals.send(MediaSignal::Connected(id));
                        if let Role::Subscriber { source, .. } = peer.role {
                            self.work.push_back(Work::Keyframe { source });
                        }
                    }
                    Event::Closed => {
                        self.work.push_back(Work::Close {
                            peer: id,
                            cause: CloseCause::RemoteClosed,
                        });
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.work.push_back(Work::Close {
                            peer: id,
                            cause: CloseCause::Timeout,
                        });
                    }
                    Event::MediaAdded(added) => match &mut peer.role {
                        Role::Publisher { kinds, .. } => kinds.push((added.mid, added.kind)),
                        Role::Subscriber { audio, video, .. } => {
                            let line = if added.kind == MediaKind::Audio {
                                audio
                            } else {
                                video
                            };
                            if line.is_none() {
                                *line = Some(Track::new(added.mid, added.kind, id));
                            }
                        }
                    },
                    Event::RtpPacket(packet) => {
                        if let Some((source, packet)) =
                            incoming_packet(id, &mut peer.rtc, &mut peer.role, packet)
                        {
                            self.work.push_back(Work::Forward { source, packet });
                        }
                    }
                    Event::KeyframeRequest(_) => {
                        if let Role::Subscriber { source, .. } = peer.role {
                            self.work.push_back(Work::Keyframe { source });
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    fn do_work(&mut self) {
        while let Some(work) = self.work.pop_front() {
            match work {
                Work::Forward { source, packet } => self.forward(source, packet),
                Work::Keyframe { source } => self.request_keyframe(source),
                Work::Close { peer, cause } => self.close_peer(peer, cause),
            }
        }
    }

    /// A packet from a source's publisher (on its home shard): to the other shards
    /// with subscribers of it, then to the subscribers here.
    fn forward(&mut self, source: SourceId, packet: Packet) {
        let attached = self
            .sources
            .get_mut(&source)
            .map(|s| std::mem::take(&mut s.attached))
            .unwrap_or_default();
        for &shard in &attached {
            self.send_data_to_shard(
                shard,
                ShardData::Packet {
                    source,
                    packet: packet.clone(),
                },
            );
        }
        if let Some(s) = self.sources.get_mut(&source) {
            s.attached = attached;
        }
        self.forward_here(source, &packet);
    }

    /// Queues one packet of a source in every connected subscriber's matching
    /// media line on this shard (audio into audio, video into video: mixing them
    /// up is accepted silently by the stack and stalls the receiver). The
    /// subscribers are run, and the packets sent, at the next kick.
    fn forward_here(&mut self, source: SourceId, packet: &Packet) {
        // Borrow the list out of the source while peers are written (which does
        // not touch sources); it goes back untouched.
        let Some(subscribers) = self
            .sources
            .get_mut(&source)
            .map(|s| std::mem::take(&mut s.subscribers))
        else {
            return;
        };
        let mut wants_keyframe = false;
        for &sub_id in &subscribers {
            let Some(sub) = self.peers.get_mut(&sub_id) else {
                continue;
            };
            if !sub.connected {
                continue;
            }
            match write_packet(&mut sub.rtc, &mut sub.role, packet) {
                Written::Queued => {
                    self.unkicked += 1;
                    self.counters.packets_forwarded += 1;
                    self.counters.bytes_forwarded += packet.payload.len() as u64;
                    if !sub.written {
                        sub.written = true;
                        self.written.push(sub_id);
                    }
                }
                Written::AwaitingKeyframe => wants_keyframe = true,
                Written::Skipped => {}
            }
        }
        if let Some(s) = self.sources.get_mut(&source) {
            s.subscribers = subscribers;
        }
        if wants_keyframe {
            self.request_keyframe(source);
        }
    }

    /// Asks the source's publisher for a keyframe, at most once per interval per
    /// source; a shard that is not the source's home passes the request there.
    fn request_keyframe(&mut self, source: SourceId) {
        let home = home_of(source, self.links.shards.len());
        if home != self.links.index {
            self.send_to_shard(home, ShardInput::RequestKeyframe(source));
            return;
        }
        let now = Instant::now();
        let Some(s) = self.sources.get_mut(&source) else {
            return;
        };
        if let Some(last) = s
            .last_keyframe_request
            .filter(|t| now.duration_since(*t) < KEYFRAME_REQUEST_INTERVAL)
        {
            s.keyframe_due
                .get_or_insert(last + KEYFRAME_REQUEST_INTERVAL);
            return;
        }
        s.keyframe_due = None;
        let Some(feeder) = s.feeder else { return };
        let Some(peer) = self.peers.get_mut(&feeder) else {
            return;
        };
        let Role::Publisher { kinds, .. } = &peer.role else {
            return;
        };
        let mut asked = false;
        let mut api = peer.rtc.direct_api();
        for &(mid, kind) in kinds.iter() {
            if kind != MediaKind::Video {
                continue;
            }
            if let Some(stream) = api.stream_rx_by_mid(mid, None) {
                stream.request_keyframe(KeyframeRequestKind::Pli);
                asked = true;
            }
        }
        if asked {
            s.last_keyframe_request = Some(now);
        }
        self.drain(feeder);
    }
}

/// Hashing for the shard's maps keyed by our own ids (a peer is looked up for
/// every packet and subscriber): one multiply spreads the bits, where the
/// standard library's SipHash, built to resist chosen keys, costs more and
/// protects nothing here — the server picks these ids, not a peer.
type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The product's high bits depend on every input bit; the table indexes
        // by the low bits (a peer id's low bits are its shard, the same for all).
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = spread(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = spread(self.0 ^ n);
    }
}

/// Multiplies by 2^64 / φ (Fibonacci hashing): nearby inputs land far apart in
/// the high bits. Used wherever an id needs scattering.
fn spread(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What became of a packet written to a subscriber.
enum Written {
    Queued,
    /// The subscriber's video waits for a keyframe and this packet does not start one.
    AwaitingKeyframe,
    /// Nothing to write it to (no such media line, no matching codec, a stray).
    Skipped,
}

/// Turns a publisher's RTP packet into the packet forwarded to its source's
/// subscribers: which kind and codec it is, whether a keyframe starts with it.
fn incoming_packet(
    id: PeerId,
    rtc: &mut Rtc,
    role: &mut Role,
    packet: RtpPacket,
) -> Option<(SourceId, Packet)> {
    let Role::Publisher {
        source,
        kinds,
        streams,
    } = role
    else {
        return None;
    };
    let ssrc = packet.header.ssrc;
    let index = match streams.iter().position(|s| s.ssrc == ssrc) {
        Some(i) => i,
        None => {
            let mid = rtc.direct_api().stream_rx(&ssrc)?.mid();
            let kind = kinds.iter().find(|(m, _)| *m == mid)?.1;
            // Tells this stream from any other that fed the source: another SSRC
            // of this publisher, or the next publisher.
            let feed = spread(id.0) ^ u64::from(*ssrc);
            streams.push(IncomingStream {
                ssrc,
                kind,
                feed,
                params: None,
                format: None,
                last_time: None,
            });
            streams.len() - 1
        }
    };
    let stream = &mut streams[index];
    let pt = packet.header.payload_type;
    if stream.params.is_none_or(|p| p.pt() != pt) {
        let params = *rtc.codec_config().find(|p| p.pt() == pt)?;
        stream.format = match params.spec().codec {
            Codec::Vp8 => Some(VideoFormat::Vp8),
            Codec::H264 => Some(VideoFormat::H264),
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
            .format
            .is_some_and(|f| starts_keyframe(f, &packet.payload, starts_frame));
    let ext = &packet.header.ext_vals;
    Some((
        *source,
        Packet {
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
        },
    ))
}

/// Queues `packet` in the subscriber's media line of its kind, renumbered for it.
fn write_packet(rtc: &mut Rtc, role: &mut Role, packet: &Packet) -> Written {
    let Role::Subscriber { audio, video, .. } = role else {
        return Written::Skipped;
    };
    let video_packet = packet.kind == MediaKind::Video;
    let Some(track) = (if video_packet {
        video.as_mut()
    } else {
        audio.as_mut()
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
    // video at a keyframe; frames before one are undecodable. Audio starts anywhere.
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
