//! A forwarding shard: the thread, socket, outbox and clock around a
//! [`Forwarder`].
//!
//! The media plane runs one shard per core. The shard's loop waits for an input
//! (a datagram routed to it by [`crate::ingress`], a command, a packet from
//! another shard) or the forwarder's next timeout, reads the clock once, hands
//! the input to the forwarder, then carries out what the forwarder asks:
//! datagrams go to the shared socket through the [`Outbox`], packets and control
//! to other shards' channels, signals to the live plane. All forwarding
//! decisions are the forwarder's (`forwarder.rs`); this file only moves bytes
//! and reads the time.
//!
//! While input keeps arriving, the subscribers written to are run once per
//! batch (see [`crate::forwarder::KICK_EVERY`]), which encrypts and sends
//! everything they have queued in one go.

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use onstage_stage::media::{FedPacket, MediaRefusal, MediaSignal, PeerId, SourceId};
use str0m::Rtc;
use tokio::sync::{mpsc, oneshot};

use crate::feeder::FeederLink;
use crate::forwarder::{Control, Forwarder, NewRole, Output, Timeouts};
use crate::ingress::Routing;
use crate::outbox::Outbox;
use crate::producer::Packet;
use crate::tap::MediaPacket;

/// Datagrams and forwarded packets a shard may have queued. A shard that cannot keep up
/// sheds what arrives beyond this, as a network card drops what overflows its
/// ring, instead of queueing without bound: a backlog would delay every packet,
/// connectivity checks included, by as long as it takes to clear (at ~30,000
/// datagrams a second, 2,048 is under 70 ms).
pub(crate) const DATA_QUEUE: usize = 2048;

/// How often metrics and load gauges are published.
const METRICS_EVERY: Duration = Duration::from_secs(1);

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
    /// From a feeder outside WebRTC (`feeder.rs`), for its source's home shard.
    Fed { peer: PeerId, packet: FedPacket },
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
    Control(Control),
    /// A feeder from outside WebRTC for a source whose home is this shard.
    AddFeeder {
        id: PeerId,
        source: SourceId,
        link: Arc<FeederLink>,
    },
    /// A recorder's tap on a source whose home is this shard: its packets go
    /// to `tx` too, dropped (and counted) when `tx` is full.
    Tap {
        source: SourceId,
        tx: mpsc::Sender<MediaPacket>,
    },
    /// The media plane is being dropped.
    Stop,
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
    pub(crate) timeouts: Timeouts,
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

struct Shard {
    links: ShardLinks,
    outbox: Outbox,
    forwarder: Forwarder,
    /// Packets not passed to a shard that was behind.
    packets_shed: u64,
    /// Peers on this shard as last published in its [`ShardLoad`].
    peers: usize,
    /// Recorders' taps on this shard's sources.
    taps: HashMap<SourceId, mpsc::Sender<MediaPacket>>,
    /// Packets a full tap did not take.
    tap_shed: u64,
}

impl Shard {
    fn new(links: ShardLinks) -> Self {
        let forwarder = Forwarder::new(
            links.index,
            links.shards.len(),
            links.local,
            links.timeouts,
            Instant::now(),
        );
        Shard {
            outbox: Outbox::new(links.socket.clone()),
            forwarder,
            links,
            packets_shed: 0,
            peers: 0,
            taps: HashMap::new(),
            tap_shed: 0,
        }
    }

    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<ShardInput>,
        mut data: mpsc::Receiver<ShardData>,
    ) {
        let mut metrics_at = Instant::now() + METRICS_EVERY;
        loop {
            let wake = self.forwarder.poll_timeout().min(metrics_at);
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
            let now = Instant::now();
            self.forwarder.kick(now);
            self.forwarder.handle_timeout(now);
            self.forwarder.kick(now);
            self.carry_out();
            self.outbox.flush();
            if now >= metrics_at {
                self.flush_metrics();
                metrics_at = now + METRICS_EVERY;
            }
        }
        self.stop();
    }

    /// Carries out everything the forwarder asked for.
    fn carry_out(&mut self) {
        while let Some(output) = self.forwarder.poll_output() {
            match output {
                Output::Transmit { to, contents } => self.outbox.push(contents, to),
                Output::Packet {
                    shard,
                    source,
                    packet,
                } => {
                    // Shed, not queued without bound, if that shard is behind.
                    if let Some(tx) = self.links.data.get(shard)
                        && tx.try_send(ShardData::Packet { source, packet }).is_err()
                    {
                        self.packets_shed += 1;
                    }
                }
                Output::Control { shard, control } => {
                    if let Some(tx) = self.links.shards.get(shard) {
                        let _ = tx.send(ShardInput::Control(control));
                    }
                }
                Output::Tap { source, packet } => {
                    // The recorder never holds forwarding up: a full tap drops.
                    let gone = match self.taps.get(&source) {
                        Some(tx) => match tx.try_send(MediaPacket::from_forwarded(&packet)) {
                            Ok(()) => false,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                self.tap_shed += 1;
                                false
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => true,
                        },
                        None => true,
                    };
                    if gone {
                        self.taps.remove(&source);
                        self.forwarder
                            .control(Instant::now(), Control::Tap { source, on: false });
                    }
                }
                Output::Untap(source) => {
                    self.taps.remove(&source);
                }
                Output::Signal(signal) => {
                    let _ = self.links.signals.send(signal);
                }
                // Sent while the peer's output is drained, before the outbox
                // sends its answer to the check: the receive loop has the
                // route before the peer's first DTLS record can arrive.
                Output::Learned { peer, remote } => {
                    let _ = self.links.routing.send(Routing::Learn {
                        peer,
                        shard: self.links.index,
                        remote,
                    });
                }
                Output::Forget {
                    ufrag,
                    peer,
                    remote,
                } => {
                    let _ = self.links.routing.send(Routing::Forget {
                        ufrag,
                        peer,
                        remote,
                    });
                }
            }
        }
        // The media plane places subscribers by these counts. Stored only when it
        // changed: the shards' counts share a cache line, and this runs per datagram.
        let peers = self.forwarder.peer_count();
        if peers != self.peers {
            self.peers = peers;
            self.links.loads[self.links.index]
                .peers
                .store(peers, Ordering::Relaxed);
        }
    }

    fn stop(&mut self) {
        self.forwarder.stop(Instant::now());
        self.carry_out();
        self.outbox.flush();
    }

    fn media(&mut self, media: ShardData) {
        match media {
            ShardData::Datagram { at, from, datagram } => {
                self.forwarder.receive(at, from, &datagram)
            }
            ShardData::Packet { source, packet } => {
                self.forwarder.packet(Instant::now(), source, &packet)
            }
            ShardData::Fed { peer, packet } => self.forwarder.fed(Instant::now(), peer, packet),
        }
        if self.forwarder.wants_kick() {
            self.forwarder.kick(Instant::now());
        }
        self.carry_out();
    }

    fn input(&mut self, input: ShardInput) {
        let now = Instant::now();
        match input {
            ShardInput::AddPeer {
                id,
                rtc,
                role,
                ufrag,
                reply,
            } => {
                let result = self.forwarder.add_peer(now, id, rtc, role, ufrag);
                // Counted before the answer leaves, so the next placement sees it.
                self.carry_out();
                let _ = reply.send(result);
            }
            ShardInput::Control(control) => self.forwarder.control(now, control),
            ShardInput::AddFeeder { id, source, link } => {
                if let Err(e) = self.forwarder.add_feeder(now, id, source, link) {
                    tracing::error!(error = %e, "a feeder could not be placed");
                }
            }
            ShardInput::Tap { source, tx } => {
                self.taps.insert(source, tx);
                self.forwarder
                    .control(now, Control::Tap { source, on: true });
            }
            ShardInput::Stop => {}
        }
        self.carry_out();
    }

    fn flush_metrics(&mut self) {
        let c = self.forwarder.take_counters();
        metrics::counter!("onstage_media_packets_received_total").increment(c.packets_in);
        metrics::counter!("onstage_media_bytes_received_total").increment(c.bytes_in);
        metrics::counter!("onstage_media_packets_forwarded_total").increment(c.packets_forwarded);
        metrics::counter!("onstage_media_bytes_forwarded_total").increment(c.bytes_forwarded);
        metrics::counter!("onstage_media_packets_shed_total")
            .increment(std::mem::take(&mut self.packets_shed));
        metrics::counter!("onstage_media_tap_packets_shed_total")
            .increment(std::mem::take(&mut self.tap_shed));
        metrics::counter!("onstage_media_datagrams_sent_total")
            .increment(std::mem::take(&mut self.outbox.sent));
        metrics::counter!("onstage_media_datagrams_dropped_total")
            .increment(std::mem::take(&mut self.outbox.dropped));
        let load = &self.links.loads[self.links.index];
        let peers = self.forwarder.peer_count();
        load.peers.store(peers, Ordering::Relaxed);
        // A source is counted by its home shard only, however many shards have
        // subscribers of it.
        load.sources
            .store(self.forwarder.homed_sources(), Ordering::Relaxed);
        metrics::gauge!("onstage_media_shard_peers", "shard" => self.links.index.to_string())
            .set(peers as f64);
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
}
