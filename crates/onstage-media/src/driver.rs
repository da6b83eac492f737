//! The forwarding loop: one thread, one UDP socket, every peer's `Rtc`.
//!
//! The loop waits for a datagram, a command or the earliest peer timeout, hands
//! the input to the one `Rtc` it concerns, then drains that peer's output: datagrams
//! go to the socket, events become work (forward a frame, ask for a keyframe, report
//! a state change). Work is processed in order until none is left. Because the loop
//! owns every peer and source, forwarding takes no lock; frames are shared
//! (`Arc<[u8]>`), never copied per subscriber.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use onstage_stage::media::{CloseCause, MediaRefusal, MediaSignal, PeerId, SourceId};
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// A peer that has not completed ICE and DTLS by then is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// At most one keyframe request per source in this interval, however many
/// subscribers ask; a request inside it is sent when it ends, not dropped. Short,
/// because a keyframe asked for just before a subscriber connected is of no use
/// to it (replication start → first frame went from ~305 ms to ~158 ms p50).
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(100);
/// Largest datagram read.
const MAX_DATAGRAM: usize = 2000;

pub(crate) enum NewRole {
    Publisher { source: SourceId },
    Subscriber { source: SourceId },
}

pub(crate) enum Command {
    AddPeer {
        id: PeerId,
        rtc: Box<Rtc>,
        role: NewRole,
        reply: oneshot::Sender<Result<(), MediaRefusal>>,
    },
    ClosePeer(PeerId),
    CloseSource(SourceId),
    RequestKeyframe(SourceId),
}

pub(crate) fn spawn(
    socket: std::net::UdpSocket,
    commands: mpsc::UnboundedReceiver<Command>,
    signals: mpsc::UnboundedSender<MediaSignal>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("onstage-media".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "media plane could not start its runtime");
                return;
            }
        };
        runtime.block_on(async move {
            let local = match socket.local_addr() {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "media socket has no local address");
                    return;
                }
            };
            match UdpSocket::from_std(socket) {
                Ok(socket) => Driver::new(socket, local, signals).run(commands).await,
                Err(e) => tracing::error!(error = %e, "media socket could not join the runtime"),
            }
        });
    })?;
    Ok(())
}

enum Role {
    Publisher { source: SourceId, kinds: Vec<(Mid, MediaKind)> },
    Subscriber { source: SourceId, audio: Option<Mid>, video: Option<Mid>, awaiting_keyframe: bool },
}

struct Peer {
    rtc: Box<Rtc>,
    role: Role,
    connected: bool,
    added: Instant,
    next_timeout: Instant,
    remote: Option<SocketAddr>,
}

#[derive(Default)]
struct Source {
    feeder: Option<PeerId>,
    subscribers: Vec<PeerId>,
    last_keyframe_request: Option<Instant>,
    /// A request that came too soon after the last one, sent when the interval
    /// ends: dropping it would leave a new subscriber waiting for the publisher's
    /// next scheduled keyframe, seconds away.
    keyframe_due: Option<Instant>,
}

/// Work produced while draining a peer's output, done after the drain.
enum Work {
    Forward { source: SourceId, kind: MediaKind, data: MediaData },
    Keyframe { source: SourceId },
    Close { peer: PeerId, cause: CloseCause },
}

#[derive(Default)]
struct Counters {
    packets_in: u64,
    bytes_in: u64,
    frames_forwarded: u64,
    bytes_forwarded: u64,
}

struct Driver {
    socket: UdpSocket,
    local: SocketAddr,
    peers: HashMap<PeerId, Peer>,
    by_remote: HashMap<SocketAddr, PeerId>,
    sources: HashMap<SourceId, Source>,
    signals: mpsc::UnboundedSender<MediaSignal>,
    work: VecDeque<Work>,
    counters: Counters,
}

impl Driver {
    fn new(socket: UdpSocket, local: SocketAddr, signals: mpsc::UnboundedSender<MediaSignal>) -> Self {
        Driver {
            socket,
            local,
            peers: HashMap::new(),
            by_remote: HashMap::new(),
            sources: HashMap::new(),
            signals,
            work: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut flush_at = Instant::now() + Duration::from_secs(1);
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
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => self.receive(&buf[..n], from),
                    Err(e) => tracing::debug!(error = %e, "media socket read failed"),
                },
                command = commands.recv() => match command {
                    Some(c) => self.command(c),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            // Reused across wakes: the loop wakes for every datagram and allocates
            // nothing to find the peers whose timers are due.
            due.clear();
            due.extend(self.peers.iter().filter(|(_, p)| p.next_timeout <= now).map(|(id, _)| *id));
            for &id in &due {
                if let Some(peer) = self.peers.get_mut(&id) {
                    if !peer.connected && now.duration_since(peer.added) > CONNECT_TIMEOUT {
                        self.work.push_back(Work::Close { peer: id, cause: CloseCause::Timeout });
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
                self.sources.iter().filter(|(_, s)| s.keyframe_due.is_some_and(|t| t <= now)).map(|(id, _)| *id),
            );
            for &source in &keyframes_due {
                self.request_keyframe(source);
            }
            self.do_work();
            if now >= flush_at {
                self.flush_metrics();
                flush_at = now + Duration::from_secs(1);
            }
        }
        for (_, mut peer) in self.peers.drain() {
            peer.rtc.disconnect();
        }
    }

    fn flush_metrics(&mut self) {
        let c = std::mem::take(&mut self.counters);
        metrics::counter!("onstage_media_packets_received_total").increment(c.packets_in);
        metrics::counter!("onstage_media_bytes_received_total").increment(c.bytes_in);
        metrics::counter!("onstage_media_frames_forwarded_total").increment(c.frames_forwarded);
        metrics::counter!("onstage_media_bytes_forwarded_total").increment(c.bytes_forwarded);
        metrics::gauge!("onstage_media_peers").set(self.peers.len() as f64);
        metrics::gauge!("onstage_media_sources").set(self.sources.len() as f64);
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += datagram.len() as u64;
        let Ok(contents) = datagram.try_into() else { return };
        let input = Input::Receive(
            Instant::now(),
            Receive { proto: Protocol::Udp, source: from, destination: self.local, contents },
        );
        let id = match self.by_remote.get(&from) {
            Some(id) => *id,
            None => {
                // First datagram from this address: find the peer whose ICE
                // credentials it carries.
                let Some((id, peer)) = self.peers.iter_mut().find(|(_, p)| p.rtc.accepts(&input)) else {
                    return;
                };
                peer.remote = Some(from);
                self.by_remote.insert(from, *id);
                *id
            }
        };
        let Some(peer) = self.peers.get_mut(&id) else { return };
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(peer = %id, error = %e, "peer rejected input");
        }
        self.drain(id);
        self.do_work();
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::AddPeer { id, rtc, role, reply } => {
                let result = self.add_peer(id, rtc, role);
                let _ = reply.send(result);
                self.drain(id);
            }
            Command::ClosePeer(id) => self.close_peer(id, CloseCause::Requested),
            Command::RequestKeyframe(source) => self.request_keyframe(source),
            Command::CloseSource(source) => {
                if let Some(s) = self.sources.remove(&source) {
                    if let Some(feeder) = s.feeder {
                        self.close_peer(feeder, CloseCause::Requested);
                    }
                    for sub in s.subscribers {
                        self.close_peer(sub, CloseCause::SourceClosed);
                    }
                }
            }
        }
        self.do_work();
    }

    fn add_peer(&mut self, id: PeerId, rtc: Box<Rtc>, role: NewRole) -> Result<(), MediaRefusal> {
        let now = Instant::now();
        let role = match role {
            NewRole::Publisher { source } => {
                let s = self.sources.entry(source).or_default();
                let replaced = s.feeder.replace(id);
                // The new feeder's stream starts over: its subscribers wait for
                // its first keyframe.
                for sub in s.subscribers.clone() {
                    if let Some(Peer { role: Role::Subscriber { awaiting_keyframe, .. }, .. }) = self.peers.get_mut(&sub) {
                        *awaiting_keyframe = true;
                    }
                }
                if let Some(old) = replaced {
                    self.close_peer(old, CloseCause::Requested);
                }
                Role::Publisher { source, kinds: Vec::new() }
            }
            NewRole::Subscriber { source } => {
                // A source whose publisher is away (a replication's reconnect window)
                // is still open: the subscriber gets media when the publisher returns.
                let s = self.sources.get_mut(&source).ok_or(MediaRefusal::NoSuchSource)?;
                s.subscribers.push(id);
                Role::Subscriber { source, audio: None, video: None, awaiting_keyframe: true }
            }
        };
        self.peers.insert(id, Peer { rtc, role, connected: false, added: now, next_timeout: now, remote: None });
        Ok(())
    }

    fn close_peer(&mut self, id: PeerId, cause: CloseCause) {
        let Some(mut peer) = self.peers.remove(&id) else { return };
        self.say_goodbye(id, &mut peer.rtc);
        if let Some(remote) = peer.remote {
            self.by_remote.remove(&remote);
        }
        match peer.role {
            Role::Publisher { source, .. } => {
                if let Some(s) = self.sources.get_mut(&source) {
                    if s.feeder == Some(id) {
                        s.feeder = None;
                    }
                }
            }
            Role::Subscriber { source, .. } => {
                if let Some(s) = self.sources.get_mut(&source) {
                    s.subscribers.retain(|p| *p != id);
                }
            }
        }
        let _ = self.signals.send(MediaSignal::Closed(id, cause));
    }

    /// Sends RTCP BYE and DTLS close_notify so the remote end learns at once that
    /// the connection is over (a replaced publisher, a disconnected participant),
    /// instead of after its consent checks time out.
    fn say_goodbye(&self, id: PeerId, rtc: &mut Rtc) {
        if rtc.is_alive() && rtc.close().is_ok() {
            // Closing only queues datagrams; a few polls flush them.
            for _ in 0..64 {
                if !rtc.is_alive() {
                    break;
                }
                match rtc.poll_output() {
                    Ok(Output::Transmit(t)) => {
                        let _ = self.socket.try_send_to(&t.contents, t.destination);
                    }
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
        let Some(peer) = self.peers.get_mut(&id) else { return };
        loop {
            if !peer.rtc.is_alive() {
                self.work.push_back(Work::Close { peer: id, cause: CloseCause::RemoteClosed });
                return;
            }
            let output = match peer.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(peer = %id, error = %e, "peer failed");
                    self.work.push_back(Work::Close { peer: id, cause: CloseCause::RemoteClosed });
                    return;
                }
            };
            match output {
                Output::Timeout(t) => {
                    peer.next_timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.try_send_to(&t.contents, t.destination) {
                        tracing::trace!(error = %e, "media send dropped");
                    }
                }
                Output::Event(event) => match event {
                    Event::Connected => {
                        peer.connected = true;
                        let _ = self.signals.send(MediaSignal::Connected(id));
                        if let Role::Subscriber { source, .. } = peer.role {
                            self.work.push_back(Work::Keyframe { source });
                        }
                    }
                    Event::Closed => {
                        self.work.push_back(Work::Close { peer: id, cause: CloseCause::RemoteClosed });
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.work.push_back(Work::Close { peer: id, cause: CloseCause::Timeout });
                    }
                    Event::MediaAdded(added) => match &mut peer.role {
                        Role::Publisher { kinds, .. } => kinds.push((added.mid, added.kind)),
                        Role::Subscriber { audio, video, .. } => match added.kind {
                            MediaKind::Audio => *audio = audio.or(Some(added.mid)),
                            MediaKind::Video => *video = video.or(Some(added.mid)),
                        },
                    },
                    Event::MediaData(data) => {
                        if let Role::Publisher { source, kinds } = &peer.role {
                            if let Some((_, kind)) = kinds.iter().find(|(m, _)| *m == data.mid) {
                                self.work.push_back(Work::Forward { source: *source, kind: *kind, data });
                            }
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
                Work::Forward { source, kind, data } => self.forward(source, kind, &data),
                Work::Keyframe { source } => self.request_keyframe(source),
                Work::Close { peer, cause } => self.close_peer(peer, cause),
            }
        }
    }

    /// Writes one frame of a source into every connected subscriber's matching
    /// media line (audio into audio, video into video: mixing them up is accepted
    /// silently by the stack and stalls the receiver).
    fn forward(&mut self, source: SourceId, kind: MediaKind, data: &MediaData) {
        // Borrow the list out of the source while peers are written and drained
        // (neither touches sources); it goes back untouched.
        let Some(subscribers) = self.sources.get_mut(&source).map(|s| std::mem::take(&mut s.subscribers)) else {
            return;
        };
        let mut wants_keyframe = false;
        for &sub_id in &subscribers {
            let Some(sub) = self.peers.get_mut(&sub_id) else { continue };
            if !sub.connected {
                continue;
            }
            let Role::Subscriber { audio, video, awaiting_keyframe, .. } = &mut sub.role else { continue };
            let mid = match kind {
                MediaKind::Audio => *audio,
                MediaKind::Video => {
                    // A subscriber starts (and, after its publisher is replaced,
                    // restarts) at a keyframe; frames before one are undecodable.
                    if *awaiting_keyframe {
                        if data.is_keyframe() {
                            *awaiting_keyframe = false;
                        } else {
                            wants_keyframe = true;
                            continue;
                        }
                    }
                    *video
                }
            };
            let Some(mid) = mid else { continue };
            let Some(writer) = sub.rtc.writer(mid) else { continue };
            let Some(pt) = writer.match_params(data.params) else { continue };
            if let Err(e) = writer.write(pt, data.network_time, data.time, data.data.clone()) {
                tracing::debug!(peer = %sub_id, error = %e, "write to subscriber failed");
                continue;
            }
            self.counters.frames_forwarded += 1;
            self.counters.bytes_forwarded += data.data.len() as u64;
            self.drain(sub_id);
        }
        if let Some(s) = self.sources.get_mut(&source) {
            s.subscribers = subscribers;
        }
        if wants_keyframe {
            self.request_keyframe(source);
        }
    }

    fn request_keyframe(&mut self, source: SourceId) {
        let now = Instant::now();
        let Some(s) = self.sources.get_mut(&source) else { return };
        if let Some(last) = s.last_keyframe_request.filter(|t| now.duration_since(*t) < KEYFRAME_REQUEST_INTERVAL) {
            s.keyframe_due.get_or_insert(last + KEYFRAME_REQUEST_INTERVAL);
            return;
        }
        s.keyframe_due = None;
        let Some(feeder) = s.feeder else { return };
        let Some(peer) = self.peers.get_mut(&feeder) else { return };
        let Role::Publisher { kinds, .. } = &peer.role else { return };
        let video: Vec<Mid> = kinds.iter().filter(|(_, k)| *k == MediaKind::Video).map(|(m, _)| *m).collect();
        for mid in video {
            if let Some(mut writer) = peer.rtc.writer(mid) {
                let _ = writer.request_keyframe(None, KeyframeRequestKind::Pli);
            }
        }
        s.last_keyframe_request = Some(now);
        self.drain(feeder);
    }
}
