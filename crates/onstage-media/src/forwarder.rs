//! The forwarding core of a shard, sans IO: peers, sources, placement, the
//! producer and consumer paths and the keyframe-request pacer.
//!
//! A [`Forwarder`] owns the str0m `Rtc` of every peer placed on its shard. It is
//! driven by `(now, input)` calls — a datagram from a peer, a packet from the
//! source's home shard, a control message, the passing of time — and answers
//! with [`Output`]s, polled by the caller: datagrams to send, packets and
//! messages for other shards, signals for the live plane. It reads no clock and
//! touches no socket or channel, so tests drive it in virtual time with real
//! str0m peers (`forwarder/tests.rs`); `shard.rs` is the thin loop around it
//! that owns the thread, the socket, the outbox and the clock.
//!
//! Every source has a *home* shard (fixed by its id), where its publisher lives,
//! keyframe requests are paced, and its packets arrive. Subscribers are placed on
//! whichever shard has the fewest peers: the home forwarder writes a packet to
//! its own subscribers of the source and passes it once to each other shard that
//! has some ([`Output::Packet`]), whose forwarder writes it to theirs.
//!
//! Media is forwarded as RTP packets: a publisher's packet is decrypted once
//! (`producer.rs`), its payload shared by every subscriber's send queue and
//! retransmission cache, each subscriber's copy differing only in the header
//! (`consumer.rs`). Writing only queues a packet in the subscriber's `Rtc`; the
//! subscribers written to are run by [`Forwarder::kick`], which encrypts and
//! sends everything they have queued in one go.

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onstage_stage::media::{CloseCause, FedPacket, MediaRefusal, MediaSignal, PeerId, SourceId};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output as RtcOutput, Rtc};

use crate::consumer::{Consumer, Written};
use crate::feeder::{Fed, FedParams, FeederLink};
use crate::pacer::{KeyframePacer, Pace};
use crate::placement::{IdHash, home_of};
use crate::producer::{Packet, Producer};

/// How long peers may take, and be quiet, before they are given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A peer that has not completed ICE and DTLS by then is given up.
    pub connect: Duration,
    /// A connected peer that sends nothing for this long has vanished (a killed
    /// browser says no goodbye). Connected peers are never that quiet: publishers
    /// send media; subscribers send RTCP receiver reports every second or so and
    /// consent checks every five seconds or so, so one lost check is tolerated.
    /// str0m's own ICE-lite timeout (15 s after the last check) stays the
    /// backstop; 12 s keeps detection inside 15 s of the disappearance wherever
    /// the last check fell.
    pub silence: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(20),
            silence: Duration::from_secs(12),
        }
    }
}

/// At most one keyframe request per source in this interval, however many
/// subscribers ask; a request inside it is sent when it ends, not dropped. Short,
/// because a keyframe asked for just before a subscriber connected is of no use
/// to it (replication start → first frame went from ~305 ms to ~158 ms p50).
pub(crate) const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(100);

/// How often connected peers are checked for silence.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Packets queued in subscribers (a packet written to 200 subscribers counts
/// 200) before the subscribers written to should be run ([`Forwarder::kick`]).
/// Running a subscriber (its timers, then encrypting and sending what it has
/// queued) costs several times more than queueing a packet, so while input is
/// waiting a shard queues this much and then runs each subscriber once for all
/// its packets (which also go out as one segmentation-offload run); when no
/// input waits it runs them at once. Queueing this many takes well under a
/// millisecond.
pub(crate) const KICK_EVERY: usize = 1024;

/// Most addresses a peer is ever learned at. A real peer moves a few times at
/// most (its candidate pairs, a change of network); each new address costs its
/// `Rtc` a remote candidate kept for the connection's life and searched by every
/// later check, so a peer that sends valid checks from ever new addresses is
/// stopped here instead.
pub(crate) const MAX_ADDRESSES_PER_PEER: u32 = 32;

/// A new peer's part.
pub(crate) enum NewRole {
    Publisher { source: SourceId },
    Subscriber { source: SourceId },
}

/// Control for a forwarder, from the media plane or another shard's forwarder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Control {
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
    /// To the source's home shard: its packets go to the loop's tap too
    /// ([`Output::Tap`]) or no longer do.
    Tap {
        source: SourceId,
        on: bool,
    },
}

/// What a forwarder asks its loop to do.
#[derive(Debug)]
pub(crate) enum Output {
    /// A datagram for a peer.
    Transmit { to: SocketAddr, contents: Vec<u8> },
    /// A packet of `source` for shard `shard`'s subscribers (shed if it is behind).
    Packet {
        shard: usize,
        source: SourceId,
        packet: Packet,
    },
    /// A control message for shard `shard` (never shed).
    Control { shard: usize, control: Control },
    /// A packet of a tapped source, for the loop's tap (a recorder).
    Tap { source: SourceId, packet: Packet },
    /// The tapped source closed: the loop drops its tap.
    Untap(SourceId),
    /// For the live plane.
    Signal(MediaSignal),
    /// A peer accepted a connectivity check from `remote` (its `Rtc` verified
    /// the check's MESSAGE-INTEGRITY): its datagrams come from there from now
    /// on. The only way the receive loop learns an address.
    Learned { peer: PeerId, remote: SocketAddr },
    /// A peer is gone: the receive loop forgets its ufrag and address.
    Forget {
        ufrag: String,
        peer: PeerId,
        remote: Option<SocketAddr>,
    },
}

// A consumer is the larger; peers are few next to the packets written to them,
// and boxing it would add a pointer chase to every write.
#[allow(clippy::large_enum_variant)]
enum Role {
    Publisher(Producer),
    Subscriber(Consumer),
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
    /// Addresses it has been learned at (see [`MAX_ADDRESSES_PER_PEER`]).
    addresses: u32,
    /// Written to since it was last run (see [`KICK_EVERY`]).
    written: bool,
}

/// A source as one shard sees it: its subscribers here, and on its home shard
/// also its publisher, the other shards to forward to and the keyframe pacer.
#[derive(Default)]
struct Source {
    subscribers: Vec<PeerId>,
    feeder: Option<PeerId>,
    /// Other shards with subscribers of this source (home shard only).
    attached: Vec<usize>,
    pacer: KeyframePacer,
    /// The loop taps its packets (home shard only).
    tapped: bool,
}

/// Work produced while draining a peer's output, done after the drain.
enum Work {
    Forward { source: SourceId, packet: Packet },
    Keyframe { source: SourceId },
    Close { peer: PeerId, cause: CloseCause },
}

/// What went through a forwarder since its counters were last taken.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) packets_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) packets_forwarded: u64,
    pub(crate) bytes_forwarded: u64,
}

pub(crate) struct Forwarder {
    index: usize,
    shards: usize,
    /// The shared socket's address: every datagram's destination.
    local: SocketAddr,
    timeouts: Timeouts,
    peers: HashMap<PeerId, Peer, IdHash>,
    /// Feeders from outside WebRTC (`feeder.rs`), on their source's home shard.
    feeders: HashMap<PeerId, Fed, IdHash>,
    /// What fed packets are forwarded as (None only if str0m could not make them).
    fed_params: Option<FedParams>,
    by_remote: HashMap<SocketAddr, PeerId>,
    sources: HashMap<SourceId, Source, IdHash>,
    work: VecDeque<Work>,
    out: VecDeque<Output>,
    /// Subscribers written to since they were last run.
    written: Vec<PeerId>,
    /// Packets queued in subscribers since they were last run.
    unkicked: usize,
    /// When connected peers are next checked for silence.
    sweep_at: Instant,
    /// Reused across timeouts: nothing is allocated to find the peers and sources due.
    due: Vec<PeerId>,
    keyframes_due: Vec<SourceId>,
    counters: Counters,
}

impl Forwarder {
    pub(crate) fn new(
        index: usize,
        shards: usize,
        local: SocketAddr,
        timeouts: Timeouts,
        now: Instant,
    ) -> Self {
        Forwarder {
            index,
            shards,
            local,
            timeouts,
            peers: HashMap::default(),
            feeders: HashMap::default(),
            fed_params: FedParams::new(),
            by_remote: HashMap::new(),
            sources: HashMap::default(),
            work: VecDeque::new(),
            out: VecDeque::new(),
            written: Vec::new(),
            unkicked: 0,
            sweep_at: now + SWEEP_EVERY,
            due: Vec::new(),
            keyframes_due: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// The next output, if any: poll until None after every call.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Forwarder::handle_timeout`] is next due.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.peers
            .values()
            .map(|p| p.next_timeout)
            .chain(self.sources.values().filter_map(|s| s.pacer.due()))
            .min()
            .unwrap_or(self.sweep_at)
            .min(self.sweep_at)
    }

    /// Peers on this shard.
    pub(crate) fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Sources whose home is this shard.
    pub(crate) fn homed_sources(&self) -> usize {
        self.sources.keys().filter(|s| self.is_home(**s)).count()
    }

    pub(crate) fn take_counters(&mut self) -> Counters {
        std::mem::take(&mut self.counters)
    }

    /// Whether enough has been queued in subscribers that they should be run
    /// now, even though more input waits (see [`KICK_EVERY`]).
    pub(crate) fn wants_kick(&self) -> bool {
        self.unkicked >= KICK_EVERY
    }

    fn is_home(&self, source: SourceId) -> bool {
        home_of(source, self.shards) == self.index
    }

    fn tell_shard(&mut self, shard: usize, control: Control) {
        self.out.push_back(Output::Control { shard, control });
    }

    /// A datagram that arrived at `now` from `from`.
    pub(crate) fn receive(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += datagram.len() as u64;
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local,
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
                if peer.addresses >= MAX_ADDRESSES_PER_PEER {
                    tracing::debug!(peer = %id, %from, "check from one address too many: ignored");
                    return;
                }
                peer.addresses += 1;
                if let Some(old) = peer.remote.replace(from) {
                    self.by_remote.remove(&old);
                }
                self.by_remote.insert(from, *id);
                self.out.push_back(Output::Learned {
                    peer: *id,
                    remote: from,
                });
                *id
            }
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.heard = now;
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(peer = %id, error = %e, "peer rejected input");
        }
        self.drain(id, now);
        self.do_work(now);
    }

    /// A packet of `source` passed on by its home shard.
    pub(crate) fn packet(&mut self, now: Instant, source: SourceId, packet: &Packet) {
        self.forward_here(now, source, packet);
        self.do_work(now);
    }

    /// A control message.
    pub(crate) fn control(&mut self, now: Instant, control: Control) {
        match control {
            Control::ClosePeer(id) => self.close_peer(id, CloseCause::Requested),
            Control::RequestKeyframe(source) => self.request_keyframe(now, source),
            Control::CloseSource(source) => self.close_source(source),
            Control::Attach { source, shard } => {
                // Only a source still open here: an attach that crossed the
                // source's closing is moot, the other shard closes its side too.
                if let Some(s) = self.sources.get_mut(&source)
                    && !s.attached.contains(&shard)
                {
                    s.attached.push(shard);
                }
            }
            Control::Detach { source, shard } => {
                if let Some(s) = self.sources.get_mut(&source) {
                    s.attached.retain(|x| *x != shard);
                }
            }
            Control::Restart(source) => self.await_keyframe(source),
            Control::Tap { source, on } => {
                if let Some(s) = self.sources.get_mut(&source) {
                    s.tapped = on;
                } else if on {
                    // Closed before the tap arrived: the loop lets go of it.
                    self.out.push_back(Output::Untap(source));
                }
            }
        }
        self.do_work(now);
    }

    /// Places a peer here. `rtc` has its answer made; `ufrag` is its local ICE
    /// ufrag, for the receive loop to forget when the peer goes.
    pub(crate) fn add_peer(
        &mut self,
        now: Instant,
        id: PeerId,
        rtc: Box<Rtc>,
        role: NewRole,
        ufrag: String,
    ) -> Result<(), MediaRefusal> {
        let result = self.place(now, id, rtc, role, ufrag.clone());
        if result.is_err() {
            self.out.push_back(Output::Forget {
                ufrag,
                peer: id,
                remote: None,
            });
        } else {
            self.drain(id, now);
        }
        self.do_work(now);
        result
    }

    fn place(
        &mut self,
        now: Instant,
        id: PeerId,
        rtc: Box<Rtc>,
        role: NewRole,
        ufrag: String,
    ) -> Result<(), MediaRefusal> {
        let role = match role {
            NewRole::Publisher { source } => {
                if !self.is_home(source) {
                    return Err(MediaRefusal::Internal(
                        "a publisher was placed away from its source's shard".into(),
                    ));
                }
                self.start_feeding(source, id);
                Role::Publisher(Producer::new(source))
            }
            NewRole::Subscriber { source } => {
                // A source whose publisher is away (a replication's reconnect
                // window) is still open: the subscriber gets media when the
                // publisher returns. The media plane checked the source is open
                // before placing the subscriber; at home the source's entry is
                // made by its publisher, elsewhere by its first subscriber here.
                let home = home_of(source, self.shards);
                if home == self.index {
                    let s = self
                        .sources
                        .get_mut(&source)
                        .ok_or(MediaRefusal::NoSuchSource)?;
                    s.subscribers.push(id);
                } else {
                    let s = self.sources.entry(source).or_default();
                    s.subscribers.push(id);
                    if s.subscribers.len() == 1 {
                        let shard = self.index;
                        self.tell_shard(home, Control::Attach { source, shard });
                    }
                }
                Role::Subscriber(Consumer::new(source))
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
                addresses: 0,
                written: false,
            },
        );
        Ok(())
    }

    /// Places a feeder from outside WebRTC (`feeder.rs`) on its source's home
    /// shard: it replaces the source's feeding peer, as a new publisher does.
    pub(crate) fn add_feeder(
        &mut self,
        now: Instant,
        id: PeerId,
        source: SourceId,
        link: Arc<FeederLink>,
    ) -> Result<(), MediaRefusal> {
        if !self.is_home(source) {
            link.close();
            return Err(MediaRefusal::Internal(
                "a feeder was placed away from its source's shard".into(),
            ));
        }
        self.feeders.insert(id, Fed::new(id, source, link));
        self.start_feeding(source, id);
        self.do_work(now);
        Ok(())
    }

    /// A packet from a feeder, forwarded as a publisher's packet is. Packets of a
    /// feeder that no longer feeds its source are dropped.
    pub(crate) fn fed(&mut self, now: Instant, id: PeerId, packet: FedPacket) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += packet.payload.len() as u64;
        let (Some(fed), Some(params)) = (self.feeders.get_mut(&id), self.fed_params.as_ref())
        else {
            return;
        };
        let source = fed.source;
        if self.sources.get(&source).and_then(|s| s.feeder) != Some(id) {
            return;
        }
        let packet = fed.packet(now, params, packet);
        self.forward(now, source, packet);
        self.do_work(now);
    }

    /// `id` feeds `source` from now on (its entry made here, at its home); the
    /// new feeder's stream starts over: its subscribers, here and on other
    /// shards, wait for its first keyframe. The feeder it replaces is closed.
    fn start_feeding(&mut self, source: SourceId, id: PeerId) {
        let s = self.sources.entry(source).or_default();
        let replaced = s.feeder.replace(id);
        let attached = s.attached.clone();
        for shard in attached {
            self.tell_shard(shard, Control::Restart(source));
        }
        self.await_keyframe(source);
        if let Some(old) = replaced {
            self.close_peer(old, CloseCause::Requested);
        }
    }

    /// The passing of time: peers' timers, postponed keyframe requests, the
    /// connect and silence timeouts.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        due.extend(
            self.peers
                .iter()
                .filter(|(_, p)| p.next_timeout <= now)
                .map(|(id, _)| *id),
        );
        for &id in &due {
            if let Some(peer) = self.peers.get_mut(&id) {
                if !peer.connected
                    && now.saturating_duration_since(peer.added) > self.timeouts.connect
                {
                    self.work.push_back(Work::Close {
                        peer: id,
                        cause: CloseCause::Timeout,
                    });
                    continue;
                }
                if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(peer = %id, error = %e, "peer failed on timeout");
                }
                self.drain(id, now);
            }
        }
        self.due = due;
        let mut keyframes_due = std::mem::take(&mut self.keyframes_due);
        keyframes_due.clear();
        keyframes_due.extend(
            self.sources
                .iter()
                .filter(|(_, s)| s.pacer.due().is_some_and(|t| t <= now))
                .map(|(id, _)| *id),
        );
        for &source in &keyframes_due {
            self.request_keyframe(now, source);
        }
        self.keyframes_due = keyframes_due;
        if now >= self.sweep_at {
            for (id, peer) in &self.peers {
                if peer.connected
                    && now.saturating_duration_since(peer.heard) > self.timeouts.silence
                {
                    tracing::debug!(peer = %id, "peer went silent");
                    self.work.push_back(Work::Close {
                        peer: *id,
                        cause: CloseCause::Timeout,
                    });
                }
            }
            self.sweep_at = now + SWEEP_EVERY;
        }
        self.do_work(now);
    }

    /// Runs every subscriber written to since the last kick: str0m moves queued
    /// packets to its send queue on a timeout, then they are polled out
    /// (encrypted) as [`Output::Transmit`]s.
    pub(crate) fn kick(&mut self, now: Instant) {
        self.unkicked = 0;
        if self.written.is_empty() {
            return;
        }
        let mut written = std::mem::take(&mut self.written);
        for &id in &written {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            peer.written = false;
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(peer = %id, error = %e, "subscriber failed on timeout");
            }
            self.drain(id, now);
        }
        // Hand the (now empty) list back to keep its capacity.
        written.clear();
        self.written = written;
        self.do_work(now);
    }

    /// Runs what was written and drops every peer (the shard stops).
    pub(crate) fn stop(&mut self, now: Instant) {
        self.kick(now);
        for (_, mut peer) in self.peers.drain() {
            peer.rtc.disconnect();
        }
        for (_, fed) in self.feeders.drain() {
            fed.link.close();
        }
    }

    fn await_keyframe(&mut self, source: SourceId) {
        let Some(s) = self.sources.get(&source) else {
            return;
        };
        for sub in &s.subscribers {
            if let Some(Peer {
                role: Role::Subscriber(consumer),
                ..
            }) = self.peers.get_mut(sub)
            {
                consumer.await_keyframe();
            }
        }
    }

    fn close_source(&mut self, source: SourceId) {
        let Some(s) = self.sources.remove(&source) else {
            return;
        };
        if s.tapped {
            self.out.push_back(Output::Untap(source));
        }
        if let Some(feeder) = s.feeder {
            self.close_peer(feeder, CloseCause::Requested);
        }
        for sub in s.subscribers {
            self.close_peer(sub, CloseCause::SourceClosed);
        }
    }

    fn close_peer(&mut self, id: PeerId, cause: CloseCause) {
        if let Some(fed) = self.feeders.remove(&id) {
            fed.link.close();
            if let Some(s) = self.sources.get_mut(&fed.source)
                && s.feeder == Some(id)
            {
                s.feeder = None;
            }
            self.out
                .push_back(Output::Signal(MediaSignal::Closed(id, cause)));
            return;
        }
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        self.say_goodbye(id, &mut peer.rtc);
        if let Some(remote) = peer.remote {
            self.by_remote.remove(&remote);
        }
        self.out.push_back(Output::Forget {
            ufrag: peer.ufrag,
            peer: id,
            remote: peer.remote,
        });
        match peer.role {
            Role::Publisher(producer) => {
                if let Some(s) = self.sources.get_mut(&producer.source)
                    && s.feeder == Some(id)
                {
                    s.feeder = None;
                }
            }
            Role::Subscriber(consumer) => {
                let source = consumer.source;
                let home = home_of(source, self.shards);
                if let Some(s) = self.sources.get_mut(&source) {
                    s.subscribers.retain(|p| *p != id);
                    if s.subscribers.is_empty() && home != self.index {
                        self.sources.remove(&source);
                        let shard = self.index;
                        self.tell_shard(home, Control::Detach { source, shard });
                    }
                }
            }
        }
        self.out
            .push_back(Output::Signal(MediaSignal::Closed(id, cause)));
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
                    Ok(RtcOutput::Transmit(t)) => self.out.push_back(Output::Transmit {
                        to: t.destination,
                        contents: t.contents.into(),
                    }),
                    Ok(RtcOutput::Event(_)) => {}
                    Ok(RtcOutput::Timeout(_)) | Err(_) => break,
                }
            }
        }
        tracing::debug!(peer = %id, "peer closed");
        rtc.disconnect();
    }

    /// Drains one peer's output: datagrams go out, events become work.
    fn drain(&mut self, id: PeerId, now: Instant) {
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
                RtcOutput::Timeout(t) => {
                    // A timer str0m leaves in the past is run at the next wake,
                    // not in a loop now.
                    peer.next_timeout = t.max(now);
                    return;
                }
                RtcOutput::Transmit(t) => self.out.push_back(Output::Transmit {
                    to: t.destination,
                    contents: t.contents.into(),
                }),
                RtcOutput::Event(event) => match event {
                    Event::Connected => {
                        peer.connected = true;
                        self.out
                            .push_back(Output::Signal(MediaSignal::Connected(id)));
                        if let Role::Subscriber(consumer) = &peer.role {
                            self.work.push_back(Work::Keyframe {
                                source: consumer.source,
                            });
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
                        Role::Publisher(producer) => producer.media_added(added.mid, added.kind),
                        Role::Subscriber(consumer) => {
                            consumer.media_added(id, added.mid, added.kind)
                        }
                    },
                    Event::RtpPacket(packet) => {
                        if let Role::Publisher(producer) = &mut peer.role
                            && let Some(forwarded) = producer.packet(id, &mut peer.rtc, packet)
                        {
                            self.work.push_back(Work::Forward {
                                source: producer.source,
                                packet: forwarded,
                            });
                        }
                    }
                    Event::KeyframeRequest(_) => {
                        if let Role::Subscriber(consumer) = &peer.role {
                            self.work.push_back(Work::Keyframe {
                                source: consumer.source,
                            });
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    fn do_work(&mut self, now: Instant) {
        while let Some(work) = self.work.pop_front() {
            match work {
                Work::Forward { source, packet } => self.forward(now, source, packet),
                Work::Keyframe { source } => self.request_keyframe(now, source),
                Work::Close { peer, cause } => self.close_peer(peer, cause),
            }
        }
    }

    /// A packet from a source's publisher (on its home shard): to the other shards
    /// with subscribers of it, then to the subscribers here.
    fn forward(&mut self, now: Instant, source: SourceId, packet: Packet) {
        if let Some(s) = self.sources.get(&source) {
            for &shard in &s.attached {
                self.out.push_back(Output::Packet {
                    shard,
                    source,
                    packet: packet.clone(),
                });
            }
            if s.tapped {
                self.out.push_back(Output::Tap {
                    source,
                    packet: packet.clone(),
                });
            }
        }
        self.forward_here(now, source, &packet);
    }

    /// Queues one packet of a source in every connected subscriber's matching
    /// media line on this shard. The subscribers are run, and the packets sent,
    /// at the next kick.
    fn forward_here(&mut self, now: Instant, source: SourceId, packet: &Packet) {
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
            let Role::Subscriber(consumer) = &mut sub.role else {
                continue;
            };
            match consumer.write(&mut sub.rtc, packet) {
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
            self.request_keyframe(now, source);
        }
    }

    /// Asks the source's publisher for a keyframe, paced per source; a shard
    /// that is not the source's home passes the request there.
    fn request_keyframe(&mut self, now: Instant, source: SourceId) {
        let home = home_of(source, self.shards);
        if home != self.index {
            self.tell_shard(home, Control::RequestKeyframe(source));
            return;
        }
        let Some(s) = self.sources.get_mut(&source) else {
            return;
        };
        if s.pacer.ask(now, KEYFRAME_REQUEST_INTERVAL) == Pace::Postponed {
            return;
        }
        let Some(feeder) = s.feeder else { return };
        if let Some(fed) = self.feeders.get(&feeder) {
            // An encoder cannot be asked: the request is a hint its owner may
            // ignore, and subscribers wait for its next keyframe.
            fed.link.want_keyframe();
            s.pacer.sent(now);
            return;
        }
        let Some(peer) = self.peers.get_mut(&feeder) else {
            return;
        };
        let Role::Publisher(producer) = &peer.role else {
            return;
        };
        if producer.request_keyframe(&mut peer.rtc) {
            s.pacer.sent(now);
        }
        self.drain(feeder, now);
    }
}
