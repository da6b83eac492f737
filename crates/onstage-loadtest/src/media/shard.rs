//! A shard: one thread, one [`SharedSocket`], and every peer placed on it.
//!
//! The thread reads all waiting datagrams, hands each to the peer its
//! destination address names, drains that peer's output (datagrams out, events
//! in), runs the publishers' frame clocks and pacers and the peers' str0m
//! timers, and sleeps in `ppoll` when idle. Peers arrive and leave over a channel, so the
//! receive path takes no lock. A few shards carry thousands of subscribers: the
//! cost per packet is one `recvmsg`, str0m's SRTP and RTP parsing, and a few
//! counter updates — no allocation of ours, no frame assembly.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use str0m::format::Codec;
use str0m::media::{Frequency, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::oneshot;

use super::h264file::{FileCursor, H264File};
use super::net::{RecvBatch, SharedSocket};
use super::packetize::{self, OutPacket};
use super::stats::{Failures, StreamStats, Totals};
use super::synth::{self, Jiggle, Stamp, VideoShape};

/// A peer that has not connected by then is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A connected subscriber without any RTP by then counts as a `no_media` failure.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle peers' str0m timers are checked (busy peers get theirs with
/// every datagram).
const SWEEP_INTERVAL: Duration = Duration::from_millis(5);
/// How often the shard publishes its totals to the reporter.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest sleep, so a new peer waits at most this long to start.
const MAX_IDLE: Duration = Duration::from_millis(2);
/// Datagrams read with one `recvmmsg`; timers get a turn between batches.
const RECV_BATCH: usize = 64;
/// A publisher answers keyframe requests at most this often, as encoders do.
const KEYFRAME_ANSWER_INTERVAL: Duration = Duration::from_millis(500);
/// A publisher that fell behind its frame clock sends at most this many late
/// frames at once, then skips ahead.
const MAX_CATCH_UP_FRAMES: u32 = 5;
const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// Bytes a video packet costs the pacer beyond its payload: the RTP header
/// with its extensions and the SRTP tag, roughly.
const PACKET_OVERHEAD: usize = 40;
/// The pacer sends faster than its rate when its queue would otherwise take
/// longer than this to drain (libwebrtc's queue time limit).
const PACER_QUEUE_LIMIT: Duration = Duration::from_secs(2);
/// Packets a publisher's video stream keeps for answering NACKs, and for how
/// long (str0m's defaults, set explicitly because the stream is written directly).
const RTX_CACHE_PACKETS: usize = 1024;
const RTX_CACHE_AGE: Duration = Duration::from_secs(3);
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

/// What a peer added to a shard does.
pub enum NewRole {
    Publisher {
        index: u32,
        audio: Mid,
        video: Mid,
        shape: VideoShape,
        audio_bytes: usize,
        /// Video leaves at this many times the bitrate; 0 sends a frame's packets at once.
        pacing_factor: f64,
        /// A real H.264 stream to send instead of synthetic frames.
        file: Option<Arc<H264File>>,
    },
    Subscriber {
        /// When its subscribe request was sent, for the join time.
        join_started: Instant,
    },
}

pub struct NewPeer {
    pub local: Ipv4Addr,
    pub rtc: Rtc,
    pub role: NewRole,
    /// Told when ICE and DTLS have completed; dropped if the peer fails first.
    pub on_connected: Option<oneshot::Sender<()>>,
}

enum Command {
    Add(Box<NewPeer>),
    Remove(Ipv4Addr),
}

/// What the shard thread shares with the rest of the tool.
pub struct ShardShared {
    pub totals: Mutex<Totals>,
    stop: AtomicBool,
    /// Set while the run tears down: peers closed by the server then are expected.
    quiet: AtomicBool,
}

/// The tool's handle on one shard thread.
pub struct Shard {
    port: u16,
    commands: Sender<Command>,
    shared: Arc<ShardShared>,
    thread: Option<JoinHandle<()>>,
}

impl Shard {
    pub fn start(
        index: usize,
        socket_buffer: usize,
        failures: Arc<Failures>,
    ) -> anyhow::Result<Shard> {
        let socket = SharedSocket::bind(socket_buffer).context("could not open a peer socket")?;
        let port = socket.port();
        let (commands, receiver) = channel();
        let shared = Arc::new(ShardShared {
            totals: Mutex::new(Totals::default()),
            stop: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
        });
        let worker = Worker {
            socket,
            port,
            commands: receiver,
            shared: shared.clone(),
            failures,
            peers: Vec::new(),
            publishers: Vec::new(),
            by_local: HashMap::new(),
            totals: Totals::default(),
            departed_expected: 0,
            departed_received: 0,
            departed_frames_seen: 0,
            departed_frames_missing: 0,
            packets: Vec::with_capacity(128),
            arrival: Arrival::default(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("peers-{index}"))
            .spawn(move || worker.run())
            .context("could not start a shard thread")?;
        Ok(Shard {
            port,
            commands,
            shared,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn add(&self, peer: NewPeer) -> anyhow::Result<()> {
        self.commands
            .send(Command::Add(Box::new(peer)))
            .map_err(|_| anyhow::anyhow!("the shard thread has stopped"))
    }

    pub fn remove(&self, local: Ipv4Addr) {
        let _ = self.commands.send(Command::Remove(local));
    }

    pub fn totals(&self) -> Totals {
        self.shared
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_quiet(&self) {
        self.shared.quiet.store(true, Ordering::Relaxed);
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Publisher {
    index: u32,
    audio: Mid,
    video: Mid,
    audio_pt: Option<Pt>,
    video_pt: Option<Pt>,
    shape: VideoShape,
    /// Where the frames of a real stream come from; synthetic frames without it.
    file: Option<FileCursor>,
    audio_bytes: usize,
    /// Frame clocks, started when the peer connects.
    started: Option<Instant>,
    next_video: Instant,
    next_audio: Instant,
    video_frames: u64,
    audio_frames: u64,
    frames_since_key: u32,
    last_key: Option<Instant>,
    keyframe_requested: bool,
    jiggle: Jiggle,
    /// Extended RTP sequence numbers of the next packets (ROC 0 at the start).
    video_seq: u64,
    audio_seq: u64,
    /// Video pacing rate in bytes per second; `None` sends frames as bursts.
    pacing_rate: Option<f64>,
    /// Video packets made but not yet handed to str0m, oldest first, and their bytes.
    paced: VecDeque<PacedPacket>,
    paced_bytes: usize,
    /// When the pacer lets the next video packet go.
    next_paced: Instant,
}

/// A video packet waiting for the pacer.
struct PacedPacket {
    packet: OutPacket,
    rtp_time: u32,
    /// The frame's capture time, for str0m's sender reports.
    wallclock: Instant,
}

/// A publisher's frame counter as one subscriber sees it: frames of which the
/// SFU delivered no packet at all (lost before it, or dropped by it) leave
/// gaps, which RTP sequence numbers cannot show because the SFU numbers its
/// own packets. Every packet of a frame carries the counter; the first to
/// arrive counts the frame, the rest are repeats.
#[derive(Default, Clone, Copy)]
struct FrameTrack {
    last: Option<u64>,
    seen: u64,
    missing: u64,
}

impl FrameTrack {
    fn on_frame(&mut self, frame: u64) {
        match self.last {
            Some(last) if frame <= last => return, // a repeat (retransmission) or reordering
            Some(last) => self.missing += frame - last - 1,
            None => {}
        }
        self.last = Some(frame);
        self.seen += 1;
    }
}

struct Subscriber {
    join_started: Instant,
    audio: StreamStats,
    video: StreamStats,
    audio_frames: FrameTrack,
    video_frames: FrameTrack,
    got_media: bool,
    got_video: bool,
    no_media_reported: bool,
}

enum Role {
    Publisher(Box<Publisher>),
    Subscriber(Subscriber),
}

struct Peer {
    local: Ipv4Addr,
    rtc: Rtc,
    role: Role,
    added: Instant,
    connected_at: Option<Instant>,
    next_timeout: Instant,
    on_connected: Option<oneshot::Sender<()>>,
}

struct Worker {
    socket: SharedSocket,
    port: u16,
    commands: Receiver<Command>,
    shared: Arc<ShardShared>,
    failures: Arc<Failures>,
    peers: Vec<Peer>,
    /// Indices in `peers` of the publishers, so the frame clocks are run
    /// without touching every subscriber's (large, cold) `Peer` on each wake.
    publishers: Vec<usize>,
    by_local: HashMap<Ipv4Addr, usize>,
    totals: Totals,
    /// Expected and received packets, seen and missing frames of subscribers
    /// that already left.
    departed_expected: u64,
    departed_received: u64,
    departed_frames_seen: u64,
    departed_frames_missing: u64,
    /// The packets of the frame being made, reused.
    packets: Vec<OutPacket>,
    /// When the datagram being handled arrived.
    arrival: Arrival,
}

/// When a datagram arrived, on `CLOCK_MONOTONIC` (the clock of the stamps).
#[derive(Clone, Copy, Debug, Default)]
struct Arrival {
    /// When the kernel queued it on this tool's socket: the server's part of
    /// the latency ends here.
    queued_ns: u64,
    /// When this tool read it (taken once per batch); later than `queued_ns`
    /// by however long the datagram waited for the tool.
    read_ns: u64,
}

impl Arrival {
    /// Both times "now": for inputs that are not datagrams.
    fn now() -> Self {
        let now = synth::monotonic_ns();
        Arrival {
            queued_ns: now,
            read_ns: now,
        }
    }
}

/// Why a peer stopped.
enum Death {
    Failed(&'static str, String),
}

impl Worker {
    fn run(mut self) {
        let mut batch = RecvBatch::new(RECV_BATCH);
        let mut next_sweep = Instant::now();
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        while !self.shared.stop.load(Ordering::Relaxed) {
            if !self.take_commands() {
                break;
            }
            let received = match self.socket.recv_batch(&mut batch) {
                Ok(n) => n,
                Err(e) => {
                    self.failures.record("socket_recv", &e.to_string());
                    0
                }
            };
            if received > 0 {
                // Every datagram of the batch had arrived by now. The kernel
                // stamps arrivals on the realtime clock: read both clocks once
                // and move the stamps over (a slewing realtime clock moves by
                // microseconds per second, and this is redone every batch).
                let (now, now_ns, realtime_now_ns) =
                    (Instant::now(), synth::monotonic_ns(), synth::realtime_ns());
                for i in 0..received {
                    let (datagram, r) = batch.get(i);
                    let queued_ns = r.queued_realtime_ns.map_or(now_ns, |queued| {
                        now_ns
                            .saturating_sub(realtime_now_ns.saturating_sub(queued))
                            .min(now_ns)
                    });
                    let arrival = Arrival {
                        queued_ns,
                        read_ns: now_ns,
                    };
                    self.on_datagram(datagram, SocketAddr::V4(r.from), r.to, now, arrival);
                }
            }
            let now = Instant::now();
            self.run_publishers(now);
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP_INTERVAL;
            }
            if now >= next_flush {
                self.flush();
                next_flush = now + FLUSH_INTERVAL;
            }
            // A batch that did not fill up emptied the socket: sleep rather
            // than ask again (`ppoll` returns at once if more has arrived).
            if received < RECV_BATCH {
                let wake = self
                    .next_publisher_due()
                    .unwrap_or(next_sweep)
                    .min(next_sweep)
                    .min(next_flush);
                let idle = wake.saturating_duration_since(Instant::now()).min(MAX_IDLE);
                if !idle.is_zero()
                    && let Err(e) = self.socket.wait_readable(idle)
                {
                    self.failures.record("socket_poll", &e.to_string());
                    std::thread::sleep(idle);
                }
            }
        }
        self.flush();
    }

    /// Applies queued adds and removes; false when the tool has gone away.
    fn take_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Add(new)) => self.add(*new),
                Ok(Command::Remove(local)) => self.remove(local),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn add(&mut self, new: NewPeer) {
        let now = Instant::now();
        let role = match new.role {
            NewRole::Publisher {
                index,
                audio,
                video,
                shape,
                audio_bytes,
                pacing_factor,
                file,
            } => {
                let mut jiggle = Jiggle::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(index));
                // Random first sequence numbers as senders pick them, low enough
                // that the rollover counter starts at 0.
                let (video_seq, audio_seq) = (
                    jiggle.vary(16_384, 99) as u64,
                    jiggle.vary(16_384, 99) as u64,
                );
                let pacing_rate = (pacing_factor > 0.0)
                    .then(|| pacing_factor * shape.bits_per_second as f64 / 8.0);
                Role::Publisher(Box::new(Publisher {
                    index,
                    audio,
                    video,
                    audio_pt: None,
                    video_pt: None,
                    shape,
                    file: file.map(FileCursor::new),
                    audio_bytes,
                    started: None,
                    next_video: now,
                    next_audio: now,
                    video_frames: 0,
                    audio_frames: 0,
                    frames_since_key: 0,
                    last_key: None,
                    keyframe_requested: false,
                    jiggle,
                    video_seq,
                    audio_seq,
                    pacing_rate,
                    paced: VecDeque::new(),
                    paced_bytes: 0,
                    next_paced: now,
                }))
            }
            NewRole::Subscriber { join_started } => Role::Subscriber(Subscriber {
                join_started,
                audio: StreamStats::default(),
                video: StreamStats::default(),
                audio_frames: FrameTrack::default(),
                video_frames: FrameTrack::default(),
                got_media: false,
                got_video: false,
                no_media_reported: false,
            }),
        };
        let peer = Peer {
            local: new.local,
            rtc: new.rtc,
            role,
            added: now,
            connected_at: None,
            next_timeout: now,
            on_connected: new.on_connected,
        };
        let index = self.peers.len();
        self.by_local.insert(new.local, index);
        if matches!(peer.role, Role::Publisher(_)) {
            self.publishers.push(index);
        }
        self.peers.push(peer);
        self.arrival = Arrival::now();
        self.feed(index, Input::Timeout(now));
    }

    fn remove(&mut self, local: Ipv4Addr) {
        let Some(index) = self.by_local.remove(&local) else {
            return;
        };
        let peer = self.peers.swap_remove(index);
        if let Some(moved) = self.peers.get(index) {
            self.by_local.insert(moved.local, index);
        }
        let publishers = self
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.role, Role::Publisher(_)));
        self.publishers = publishers.map(|(i, _)| i).collect();
        if let Role::Subscriber(s) = &peer.role {
            self.departed_expected += s.audio.expected() + s.video.expected();
            self.departed_received += s.audio.received() + s.video.received();
            self.departed_frames_seen += s.audio_frames.seen + s.video_frames.seen;
            self.departed_frames_missing += s.audio_frames.missing + s.video_frames.missing;
        }
    }

    fn on_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        to: Ipv4Addr,
        now: Instant,
        arrival: Arrival,
    ) {
        self.totals.rx_bytes += datagram.len() as u64;
        let Some(&index) = self.by_local.get(&to) else {
            self.totals.stray_datagrams += 1;
            return;
        };
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: SocketAddr::new(to.into(), self.port),
                contents,
            },
        );
        self.arrival = arrival;
        self.feed(index, input);
    }

    /// Gives one input to a peer and drains its output; removes it if it died.
    fn feed(&mut self, index: usize, input: Input) {
        let Some(peer) = self.peers.get_mut(index) else {
            return;
        };
        let death = match peer.rtc.handle_input(input) {
            Ok(()) => drain(peer, &self.socket, &mut self.totals, self.arrival),
            Err(e) => Some(Death::Failed("rtc_error", e.to_string())),
        };
        if let Some(death) = death {
            self.bury(index, death);
        }
    }

    fn bury(&mut self, index: usize, death: Death) {
        let Some(peer) = self.peers.get(index) else {
            return;
        };
        let local = peer.local;
        let Death::Failed(kind, detail) = death;
        if !self.shared.quiet.load(Ordering::Relaxed) {
            let kind = match peer.role {
                Role::Publisher(_) => format!("publisher_{kind}"),
                Role::Subscriber(_) => kind.to_owned(),
            };
            self.failures
                .record(&kind, &format!("peer {local}: {detail}"));
        }
        self.remove(local);
    }

    fn sweep(&mut self, now: Instant) {
        self.arrival = Arrival::now();
        let mut index = 0;
        while index < self.peers.len() {
            let peer = &mut self.peers[index];
            if peer.connected_at.is_none() && now.duration_since(peer.added) > CONNECT_TIMEOUT {
                self.bury(
                    index,
                    Death::Failed("ice_timeout", "not connected after 15 s".into()),
                );
                continue; // another peer moved into `index`
            }
            if let (Role::Subscriber(s), Some(at)) = (&mut peer.role, peer.connected_at)
                && !s.got_media
                && !s.no_media_reported
                && now.duration_since(at) > MEDIA_TIMEOUT
            {
                s.no_media_reported = true;
                if !self.shared.quiet.load(Ordering::Relaxed) {
                    self.failures.record(
                        "no_media",
                        &format!("peer {}: no RTP 10 s after connecting", peer.local),
                    );
                }
            }
            if peer.next_timeout <= now {
                let before = self.peers.len();
                self.feed(index, Input::Timeout(now));
                if self.peers.len() < before {
                    continue;
                }
            }
            index += 1;
        }
    }

    fn next_publisher_due(&self) -> Option<Instant> {
        self.publishers
            .iter()
            .filter_map(|&i| match &self.peers.get(i)?.role {
                Role::Publisher(publisher) if publisher.started.is_some() => {
                    Some(publisher.next_due())
                }
                _ => None,
            })
            .min()
    }

    fn run_publishers(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(&index) = self.publishers.get(i) {
            i += 1;
            let Some(peer) = self.peers.get_mut(index) else {
                continue;
            };
            let due = matches!(&peer.role, Role::Publisher(p) if p.started.is_some() && p.next_due() <= now);
            if due && write_due_packets(peer, now, &mut self.packets, &mut self.totals) {
                // str0m sends what was written once time moves on: its pacer
                // snapshots the stream queues in `handle_timeout`. If the
                // publisher dies, `publishers` is rebuilt and one publisher
                // may wait for the next wake.
                self.arrival = Arrival::now();
                self.feed(index, Input::Timeout(now));
            }
        }
    }

    /// Publishes the cumulative totals (plus live gauges) for the reporter.
    fn flush(&mut self) {
        let mut expected = self.departed_expected;
        let mut received = self.departed_received;
        let mut frames_seen = self.departed_frames_seen;
        let mut frames_missing = self.departed_frames_missing;
        let (mut subscribers, mut publishers, mut jitter_sum, mut video_streams) = (0, 0, 0.0, 0);
        for peer in &self.peers {
            match &peer.role {
                Role::Subscriber(s) => {
                    expected += s.audio.expected() + s.video.expected();
                    received += s.audio.received() + s.video.received();
                    frames_seen += s.audio_frames.seen + s.video_frames.seen;
                    frames_missing += s.audio_frames.missing + s.video_frames.missing;
                    if peer.connected_at.is_some() {
                        subscribers += 1;
                    }
                    if let Some(j) = s.video.jitter_ms() {
                        jitter_sum += j;
                        video_streams += 1;
                    }
                }
                Role::Publisher(_) => {
                    if peer.connected_at.is_some() {
                        publishers += 1;
                    }
                }
            }
        }
        self.totals.expected = expected;
        self.totals.received = received;
        self.totals.frames_received = frames_seen;
        self.totals.frames_missing = frames_missing;
        self.totals.subscribers_connected = subscribers;
        self.totals.publishers_connected = publishers;
        self.totals.video_jitter_ms_sum = jitter_sum;
        self.totals.video_streams = video_streams;
        self.shared
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&self.totals);
    }
}

/// Drains a peer's output: datagrams go out now, events update its state.
/// Returns why the peer died, if it did.
fn drain(
    peer: &mut Peer,
    socket: &SharedSocket,
    totals: &mut Totals,
    arrival: Arrival,
) -> Option<Death> {
    loop {
        if !peer.rtc.is_alive() {
            return Some(Death::Failed("closed", "the connection was closed".into()));
        }
        let output = match peer.rtc.poll_output() {
            Ok(o) => o,
            Err(e) => return Some(Death::Failed("rtc_error", e.to_string())),
        };
        match output {
            Output::Timeout(t) => {
                peer.next_timeout = t;
                return None;
            }
            Output::Transmit(t) => {
                if socket.send(peer.local, t.destination, &t.contents).is_err() {
                    totals.send_errors += 1;
                }
            }
            Output::Event(event) => match event {
                Event::RtpPacket(packet) => {
                    if let Role::Subscriber(s) = &mut peer.role {
                        on_rtp(s, &packet, totals, arrival);
                    }
                }
                Event::Connected => {
                    let now = Instant::now();
                    peer.connected_at = Some(now);
                    if let Some(tell) = peer.on_connected.take() {
                        let _ = tell.send(());
                    }
                    if let Role::Publisher(p) = &mut peer.role {
                        start_publishing(p, &mut peer.rtc, now);
                    }
                }
                Event::KeyframeRequest(_) => {
                    if let Role::Publisher(p) = &mut peer.role {
                        p.keyframe_requested = true;
                    }
                }
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    return Some(Death::Failed("ice_disconnected", "ICE disconnected".into()));
                }
                _ => {}
            },
        }
    }
}

/// Counts one subscriber RTP packet: loss and jitter per stream, latency from
/// the packet's own stamp (arrival on the socket − the time its publisher
/// handed it to str0m; also until the tool read it), the join time from the
/// first packet. A frame counts as received
/// when the first of its packets to arrive does, whichever packet that is.
/// A packet without a stamp (an SFU that repacketizes frames moves the stamps
/// around) counts for loss and jitter only.
fn on_rtp(s: &mut Subscriber, packet: &RtpPacket, totals: &mut Totals, arrival: Arrival) {
    totals.rtp_packets += 1;
    let clock = packet.time.denom();
    let is_video = clock == Frequency::NINETY_KHZ.get();
    let stream = if is_video { &mut s.video } else { &mut s.audio };
    stream.on_packet(
        *packet.seq_no,
        packet.time.numer(),
        clock,
        arrival.queued_ns,
    );
    if !s.got_media {
        s.got_media = true;
        totals
            .join_us
            .record(s.join_started.elapsed().as_micros() as u64);
    }
    if is_video && !s.got_video {
        s.got_video = true;
        totals
            .first_video_us
            .record(s.join_started.elapsed().as_micros() as u64);
    }
    if let Some(stamp) = Stamp::find(&packet.payload) {
        totals
            .latency_us
            .record(arrival.queued_ns.saturating_sub(stamp.sent_ns) / 1000);
        totals
            .read_latency_us
            .record(arrival.read_ns.saturating_sub(stamp.sent_ns) / 1000);
        if is_video {
            &mut s.video_frames
        } else {
            &mut s.audio_frames
        }
        .on_frame(stamp.frame);
    }
}

impl Publisher {
    /// When this publisher next has something to send.
    fn next_due(&self) -> Instant {
        let media = self.next_video.min(self.next_audio);
        if self.paced.is_empty() {
            media
        } else {
            media.min(self.next_paced)
        }
    }
}

fn start_publishing(p: &mut Publisher, rtc: &mut Rtc, now: Instant) {
    // The payload types the server accepted, as str0m's frame writer would pick them.
    let pt_of = |rtc: &Rtc, mid: Mid, want: &[Codec]| {
        let accepted = rtc.media(mid)?.remote_pts();
        rtc.codec_config()
            .params()
            .iter()
            .find(|params| accepted.contains(&params.pt()) && want.contains(&params.spec().codec))
            .map(|params| params.pt())
    };
    p.audio_pt = pt_of(rtc, p.audio, &[Codec::Opus]);
    p.video_pt = pt_of(rtc, p.video, &[Codec::Vp8, Codec::H264]);
    if let Some(stream) = rtc.direct_api().stream_tx_by_mid(p.video, None) {
        stream.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, RTX_RATIO_CAP);
    }
    p.started = Some(now);
    p.next_video = now;
    p.next_audio = now;
    p.next_paced = now;
}

/// Makes the frames whose time has come (the first video frame is a
/// keyframe) and writes their packets to str0m: audio at once, video as the
/// pacer allows. Each packet's stamp gets the time it is written. Returns
/// whether anything was written.
fn write_due_packets(
    peer: &mut Peer,
    now: Instant,
    packets: &mut Vec<OutPacket>,
    totals: &mut Totals,
) -> bool {
    let Role::Publisher(p) = &mut peer.role else {
        return false;
    };
    let Some(started) = p.started else {
        return false;
    };
    let interval = p.shape.frame_interval();
    let mut made = 0;
    while p.next_video <= now && made < MAX_CATCH_UP_FRAMES {
        let answer_request = p.keyframe_requested
            && p.last_key
                .is_none_or(|t| now.duration_since(t) >= KEYFRAME_ANSWER_INTERVAL);
        let stamp = Stamp {
            publisher: p.index,
            frame: p.video_frames,
            sent_ns: 0,
        };
        packets.clear();
        let keyframe = if let Some(cursor) = &mut p.file {
            // A real stream answers a request with its next IDR.
            if answer_request {
                cursor.skip_to_keyframe();
            }
            match cursor.take() {
                Some(frame) => {
                    packetize::h264_access_unit(
                        packets,
                        &frame.parameter_sets,
                        &frame.slices,
                        &stamp,
                    );
                    frame.keyframe
                }
                None => false,
            }
        } else {
            let keyframe_due = p.video_frames == 0 || p.frames_since_key + 1 >= p.shape.gop;
            let keyframe = keyframe_due || answer_request;
            let size = if keyframe {
                p.jiggle.vary(p.shape.key_bytes, 5)
            } else {
                p.jiggle.vary(p.shape.delta_bytes, 15)
            };
            packetize::video_frame(
                packets,
                p.shape.codec,
                keyframe,
                size,
                &stamp,
                p.video_frames as u16,
            );
            keyframe
        };
        // 90 kHz from the frame's scheduled time; RTP timestamps wrap.
        let rtp_time = (p.next_video.duration_since(started).as_micros() as u64 * 9 / 100) as u32;
        if p.paced.is_empty() {
            // An idle pacer has no credit saved up: the frame starts now.
            p.next_paced = p.next_paced.max(now);
        }
        for packet in packets.drain(..) {
            p.paced_bytes += packet.payload.len();
            p.paced.push_back(PacedPacket {
                packet,
                rtp_time,
                wallclock: p.next_video,
            });
        }
        totals.frames_sent += 1;
        if keyframe {
            p.frames_since_key = 0;
            p.last_key = Some(now);
            p.keyframe_requested = false;
        } else {
            p.frames_since_key += 1;
        }
        p.video_frames += 1;
        p.next_video += interval;
        made += 1;
    }
    if p.next_video <= now {
        p.next_video = now + interval;
    }

    let mut wrote = false;
    let mut direct = peer.rtc.direct_api();
    made = 0;
    while p.next_audio <= now && made < MAX_CATCH_UP_FRAMES {
        let stamp = Stamp {
            publisher: p.index,
            frame: p.audio_frames,
            sent_ns: 0,
        };
        let rtp_time = (p.next_audio.duration_since(started).as_micros() as u64 * 48 / 1000) as u32;
        if let (Some(pt), Some(stream)) = (p.audio_pt, direct.stream_tx_by_mid(p.audio, None)) {
            let mut packet = packetize::audio_frame(p.audio_bytes, &stamp);
            packet.stamp_sent(synth::monotonic_ns());
            stream.write_rtp(RtpWrite::new(
                pt,
                p.audio_seq.into(),
                rtp_time,
                p.next_audio,
                packet.payload,
            ));
            p.audio_seq += 1;
            totals.frames_sent += 1;
            wrote = true;
        }
        p.audio_frames += 1;
        p.next_audio += AUDIO_FRAME;
        made += 1;
    }
    if p.next_audio <= now {
        p.next_audio = now + AUDIO_FRAME;
    }

    let (Some(pt), Some(stream)) = (p.video_pt, direct.stream_tx_by_mid(p.video, None)) else {
        p.paced.clear();
        p.paced_bytes = 0;
        return wrote;
    };
    while p.paced.front().is_some() {
        // libwebrtc's pacer: its rate, or faster when the queue would take
        // longer than its limit to drain.
        let rate = p
            .pacing_rate
            .map(|r| r.max(p.paced_bytes as f64 / PACER_QUEUE_LIMIT.as_secs_f64()));
        if rate.is_some() && p.next_paced > now {
            break;
        }
        let Some(PacedPacket {
            mut packet,
            rtp_time,
            wallclock,
        }) = p.paced.pop_front()
        else {
            break;
        };
        p.paced_bytes = p.paced_bytes.saturating_sub(packet.payload.len());
        if let Some(rate) = rate {
            p.next_paced +=
                Duration::from_secs_f64((packet.payload.len() + PACKET_OVERHEAD) as f64 / rate);
        }
        packet.stamp_sent(synth::monotonic_ns());
        let write = RtpWrite::new(pt, p.video_seq.into(), rtp_time, wallclock, packet.payload);
        stream.write_rtp(write.marker(packet.marker).nackable(true));
        p.video_seq += 1;
        wrote = true;
    }
    wrote
}
