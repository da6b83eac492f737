//! `onstage-loadtest raw`: what this machine's kernel can forward over UDP with no
//! WebRTC at all, so a media figure for onstage or Janus can be read against a
//! ceiling.
//!
//! One process, three roles, each on its own thread:
//!
//! - the **sender** emits `--size`-byte datagrams to the forwarder: paced
//!   (`--pps`, in bursts of `--burst` like the packets of one video frame) or, with
//!   `--pps 0`, flat out in a closed loop that keeps a bounded window of packets
//!   ahead of the forwarder, so the forwarder never idles and its socket never
//!   overflows;
//! - the **forwarder** reads each datagram once from one socket (the way an SFU
//!   shares one UDP port among all its peers) and sends one copy to each of
//!   `--subscribers` destinations, in the `--mode` under test;
//! - the **receivers** are `--receiver-sockets` sockets read by one thread; the
//!   subscribers' destinations cycle over them, so N subscribers do not need N
//!   sockets.
//!
//! The modes:
//!
//! - `sendto`: one `recv` per input packet, one `sendto` per copy — what a naive
//!   forwarder (or one `send_to` per `Transmit`) does;
//! - `sendmmsg`: `recvmmsg` reads up to 64 input packets at once and every copy of
//!   every packet read goes out through `sendmmsg`, up to 1024 messages per call —
//!   the syscall batching a careful SFU can do with distinct destinations;
//! - `gso`: as `sendmmsg`, but each message carries up to `--burst` consecutive
//!   input packets for one subscriber as a single UDP GSO send (`UDP_SEGMENT`), the
//!   kernel splitting it into datagrams. GSO only batches datagrams to *one*
//!   destination, so it pays off only when a subscriber gets several packets at
//!   once (a frame's packets from one publisher); `--burst` bounds that.
//!
//! The forwarder measures its own CPU time (`getrusage(RUSAGE_THREAD)`), so the
//! figure that matters — copies sent per second of forwarder CPU — does not depend
//! on whether it was saturated. Over loopback the sending thread also pays for the
//! receive half of the kernel path (delivery into the receiver's socket runs in the
//! sender's context), so these ceilings are lower than a real NIC's would be; they
//! are the ceiling for loopback benchmarks on this machine, which is what the
//! onstage-versus-Janus runs use. Pin the roles with `--forwarder-cpu` and
//! `--peers-cpu`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

/// How the forwarder sends its copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One `sendto` per copy, one `recv` per input packet.
    Sendto,
    /// `recvmmsg` in, `sendmmsg` out (up to 1024 copies per call).
    Sendmmsg,
    /// As sendmmsg, each message a UDP GSO send of up to --burst packets to one subscriber.
    Gso,
}

#[derive(Args, Clone, Debug)]
pub struct RawArgs {
    /// Subscribers per input packet; a comma-separated list runs one step per value.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,200,500", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub subscribers: Vec<u32>,
    /// Forwarding modes to run; a comma-separated list runs each at every step.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sendto,sendmmsg"
    )]
    pub mode: Vec<Mode>,
    /// How long each step sends: `5s`, `500ms`, or plain seconds.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Input packets per second into the forwarder; 0 sends flat out (closed loop).
    /// One 2.5 Mbps video stream of 1200-byte packets is about 250.
    #[arg(long, default_value_t = 0)]
    pub pps: u32,
    /// Packets the paced sender emits back to back (one frame's worth); also the
    /// most packets one GSO send carries.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub burst: u32,
    /// UDP payload size of every packet, in bytes.
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(64..=1472))]
    pub size: u32,
    /// Receiver sockets the subscribers' destinations cycle over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub receiver_sockets: u32,
    /// Pin the forwarder thread to this CPU.
    #[arg(long)]
    pub forwarder_cpu: Option<usize>,
    /// Pin the sender and receiver threads to this CPU.
    #[arg(long)]
    pub peers_cpu: Option<usize>,
    /// Print the results as JSON (to stdout, or to the file given).
    #[arg(long, num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

/// The result of one step (one mode at one subscriber count).
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub mode: Mode,
    pub subscribers: u32,
    pub packet_size: u32,
    /// Offered input rate (0 = closed-loop flat out).
    pub offered_pps: u32,
    pub seconds: f64,
    /// Input packets the sender sent and the forwarder read.
    pub input_sent: u64,
    pub input_read: u64,
    /// Copies the forwarder handed to the kernel, the copies receivers got.
    pub copies_sent: u64,
    pub copies_received: u64,
    /// Send calls that failed (the copies they carried are lost).
    pub send_errors: u64,
    /// Syscalls the forwarder made to send, and copies per such call.
    pub send_calls: u64,
    pub copies_per_call: f64,
    /// Forwarder CPU time, split, and as a share of one core over the step.
    pub forwarder_user_s: f64,
    pub forwarder_sys_s: f64,
    pub forwarder_cpu_share: f64,
    /// Copies sent per wall-clock second, and per second of forwarder CPU: the
    /// latter is the forwarder's ceiling on one core.
    pub copies_per_s: f64,
    pub copies_per_cpu_s: f64,
    /// The same in payload bits.
    pub gbps_per_cpu_s: f64,
    /// With `--forwarder-cpu`: how busy that whole core was (the forwarder plus
    /// the softirq work of loopback delivery the kernel ran there, which is not
    /// charged to the thread), and copies per second of that core's busy time.
    pub forwarder_core_busy: Option<f64>,
    pub copies_per_core_s: Option<f64>,
    /// 1 − received / (read × subscribers): copies lost on the way to receivers.
    pub copy_loss: f64,
    /// 1 − read / sent: input packets lost before the forwarder.
    pub input_loss: f64,
}

pub fn run(args: &RawArgs) -> anyhow::Result<Vec<StepResult>> {
    if args.subscribers.is_empty() || args.mode.is_empty() {
        bail!("give at least one --subscribers value and one --mode");
    }
    let mut results = Vec::new();
    if args.json.is_none() {
        println!(
            "{:>8} {:>6} {:>10} {:>12} {:>14} {:>8} {:>7} {:>9} {:>14} {:>8}",
            "mode",
            "subs",
            "input/s",
            "copies/s",
            "copies/cpu-s",
            "thread",
            "sys",
            "core",
            "copies/core-s",
            "loss"
        );
    }
    for &subscribers in &args.subscribers {
        for &mode in &args.mode {
            let result = step(args, mode, subscribers)?;
            if args.json.is_none() {
                println!(
                    "{:>8} {:>6} {:>10.0} {:>12.0} {:>14.0} {:>7.0}% {:>6.0}% {:>9} {:>14} {:>7.2}%",
                    format!("{:?}", result.mode).to_lowercase(),
                    result.subscribers,
                    result.input_read as f64 / result.seconds,
                    result.copies_per_s,
                    result.copies_per_cpu_s,
                    result.forwarder_cpu_share * 100.0,
                    if result.forwarder_user_s + result.forwarder_sys_s > 0.0 {
                        result.forwarder_sys_s / (result.forwarder_user_s + result.forwarder_sys_s)
                            * 100.0
                    } else {
                        0.0
                    },
                    result
                        .forwarder_core_busy
                        .map_or("-".to_owned(), |b| format!("{:.0}%", b * 100.0)),
                    result
                        .copies_per_core_s
                        .map_or("-".to_owned(), |c| format!("{c:.0}")),
                    result.copy_loss * 100.0,
                );
            }
            results.push(result);
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("could not write {}", path.display()))?;
        }
    }
    Ok(results)
}

/// What the forwarder thread counted.
#[derive(Default)]
struct ForwarderStats {
    input: u64,
    copies: u64,
    calls: u64,
    errors: u64,
    user: Duration,
    sys: Duration,
    /// From the first packet read to the last copy sent.
    active: Duration,
}

fn step(args: &RawArgs, mode: Mode, subscribers: u32) -> anyhow::Result<StepResult> {
    let localhost = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    let forwarder = UdpSocket::bind(localhost).context("could not bind the forwarder socket")?;
    set_buffer(&forwarder, libc::SO_RCVBUF, 8 << 20);
    set_buffer(&forwarder, libc::SO_SNDBUF, 8 << 20);
    forwarder.set_read_timeout(Some(Duration::from_millis(20)))?;
    let forwarder_addr = forwarder.local_addr()?;

    let mut receivers = Vec::new();
    for _ in 0..args.receiver_sockets {
        let socket = UdpSocket::bind(localhost).context("could not bind a receiver socket")?;
        set_buffer(&socket, libc::SO_RCVBUF, 32 << 20);
        socket.set_nonblocking(true)?;
        receivers.push(socket);
    }
    let destinations: Vec<libc::sockaddr_in> = (0..subscribers as usize)
        .map(|i| receivers[i % receivers.len()].local_addr().map(sockaddr_in))
        .collect::<io::Result<_>>()?;

    let stop_sender = Arc::new(AtomicBool::new(false));
    let stop_forwarder = Arc::new(AtomicBool::new(false));
    let stop_receiver = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));

    let receiver = {
        let stop = stop_receiver.clone();
        let cpu = args.peers_cpu;
        thread::Builder::new()
            .name("raw-receiver".into())
            .spawn(move || {
                pin(cpu);
                receive(&receivers, &stop)
            })?
    };
    let forwarder_thread = {
        let stop = stop_forwarder.clone();
        let consumed = consumed.clone();
        let cpu = args.forwarder_cpu;
        let burst = args.burst as usize;
        let size = args.size as usize;
        thread::Builder::new()
            .name("raw-forwarder".into())
            .spawn(move || {
                pin(cpu);
                forward(
                    &forwarder,
                    &destinations,
                    mode,
                    burst,
                    size,
                    &stop,
                    &consumed,
                )
            })?
    };
    let sender = {
        let stop = stop_sender.clone();
        let consumed = consumed.clone();
        let cpu = args.peers_cpu;
        let (pps, burst, size) = (args.pps, args.burst, args.size as usize);
        thread::Builder::new()
            .name("raw-sender".into())
            .spawn(move || {
                pin(cpu);
                send(forwarder_addr, pps, burst, size, &stop, &consumed)
            })?
    };

    let started = Instant::now();
    let core_before = args.forwarder_cpu.and_then(core_ticks);
    thread::sleep(args.duration);
    let core_after = args.forwarder_cpu.and_then(core_ticks);
    stop_sender.store(true, Ordering::Relaxed);
    let sent = join(sender)?;
    let seconds = started.elapsed().as_secs_f64();
    // The forwarder drains its socket before it returns; then the receivers
    // get a moment to drain theirs.
    stop_forwarder.store(true, Ordering::Relaxed);
    let stats = join(forwarder_thread)?;
    thread::sleep(Duration::from_millis(200));
    stop_receiver.store(true, Ordering::Relaxed);
    let received = join(receiver)?;

    let cpu = (stats.user + stats.sys).as_secs_f64();
    let core_busy = match (core_before, core_after) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            Some((busy1 - busy0) as f64 / (total1 - total0) as f64)
        }
        _ => None,
    };
    let expected = stats.input * u64::from(subscribers);
    // Rates over the forwarder's active time (first read to last send, which
    // includes draining the window left in flight when the sender stopped).
    let busy = stats.active.as_secs_f64().max(1e-9);
    Ok(StepResult {
        mode,
        subscribers,
        packet_size: args.size,
        offered_pps: args.pps,
        seconds,
        input_sent: sent,
        input_read: stats.input,
        copies_sent: stats.copies,
        copies_received: received,
        send_errors: stats.errors,
        send_calls: stats.calls,
        copies_per_call: if stats.calls > 0 {
            stats.copies as f64 / stats.calls as f64
        } else {
            0.0
        },
        forwarder_user_s: stats.user.as_secs_f64(),
        forwarder_sys_s: stats.sys.as_secs_f64(),
        forwarder_cpu_share: cpu / busy,
        copies_per_s: stats.copies as f64 / busy,
        copies_per_cpu_s: if cpu > 0.0 {
            stats.copies as f64 / cpu
        } else {
            0.0
        },
        gbps_per_cpu_s: if cpu > 0.0 {
            stats.copies as f64 * f64::from(args.size) * 8.0 / cpu / 1e9
        } else {
            0.0
        },
        forwarder_core_busy: core_busy,
        copies_per_core_s: core_busy
            .filter(|&b| b > 0.0)
            .map(|b| stats.copies as f64 / (b * seconds)),
        copy_loss: if expected > 0 {
            1.0 - received as f64 / expected as f64
        } else {
            0.0
        },
        input_loss: if sent > 0 {
            1.0 - stats.input as f64 / sent as f64
        } else {
            0.0
        },
    })
}

fn join<T>(handle: thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    match handle.join() {
        Ok(result) => result,
        Err(_) => bail!("a raw benchmark thread panicked"),
    }
}

/// Packets the closed-loop sender keeps ahead of the forwarder.
const WINDOW: u64 = 128;

fn send(
    to: SocketAddr,
    pps: u32,
    burst: u32,
    size: usize,
    stop: &AtomicBool,
    consumed: &AtomicU64,
) -> anyhow::Result<u64> {
    let socket = UdpSocket::bind(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))?;
    socket.connect(to)?;
    let mut packet = vec![0x5a_u8; size];
    let mut sent: u64 = 0;
    let mut put = |sent: &mut u64| {
        packet[..8].copy_from_slice(&sent.to_be_bytes());
        // A full socket buffer or a transient error loses the packet; the input
        // loss figure shows it.
        if socket.send(&packet).is_ok() {
            *sent += 1;
        }
    };
    if pps == 0 {
        while !stop.load(Ordering::Relaxed) {
            if sent.saturating_sub(consumed.load(Ordering::Relaxed)) >= WINDOW {
                thread::sleep(Duration::from_micros(50));
                continue;
            }
            put(&mut sent);
        }
    } else {
        let interval = Duration::from_secs_f64(f64::from(burst) / f64::from(pps));
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                thread::sleep(next - now);
                continue;
            }
            for _ in 0..burst {
                put(&mut sent);
            }
            next += interval;
        }
    }
    Ok(sent)
}

/// Input packets read per `recvmmsg`.
const READ_BATCH: usize = 64;
/// Messages per `sendmmsg` (the kernel's UIO_MAXIOV).
const SEND_BATCH: usize = 1024;

fn forward(
    socket: &UdpSocket,
    destinations: &[libc::sockaddr_in],
    mode: Mode,
    burst: usize,
    size: usize,
    stop: &AtomicBool,
    consumed: &AtomicU64,
) -> anyhow::Result<ForwarderStats> {
    let fd = socket.as_raw_fd();
    let mut stats = ForwarderStats::default();
    let (user0, sys0) = thread_cpu();
    let mut buffers = vec![vec![0_u8; size.max(1500)]; READ_BATCH];
    let mut lengths = [0_usize; READ_BATCH];
    let mut out = Batch::new(burst);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    // After `stop`, keep going until the socket is empty, so that every packet
    // the sender got out is forwarded and the loss figures are not skewed by
    // the closed-loop window still in flight.
    loop {
        let count = match mode {
            Mode::Sendto => match socket.recv(&mut buffers[0]) {
                Ok(n) => {
                    lengths[0] = n;
                    1
                }
                Err(e) if is_timeout(&e) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e).context("forwarder recv"),
            },
            Mode::Sendmmsg | Mode::Gso => match recv_batch(fd, &mut buffers, &mut lengths) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e).context("forwarder recvmmsg"),
            },
        };
        first.get_or_insert_with(Instant::now);
        stats.input += count as u64;
        consumed.store(stats.input, Ordering::Relaxed);
        let packets: Vec<&[u8]> = buffers[..count]
            .iter()
            .zip(&lengths[..count])
            .map(|(b, &n)| &b[..n])
            .collect();
        match mode {
            Mode::Sendto => {
                for packet in &packets {
                    for destination in destinations {
                        stats.calls += 1;
                        // SAFETY: the buffer and address outlive the call; lengths match them.
                        let rc = unsafe {
                            libc::sendto(
                                fd,
                                packet.as_ptr().cast(),
                                packet.len(),
                                0,
                                (destination as *const libc::sockaddr_in).cast(),
                                size_of::<libc::sockaddr_in>() as libc::socklen_t,
                            )
                        };
                        if rc < 0 {
                            stats.errors += 1;
                        } else {
                            stats.copies += 1;
                        }
                    }
                }
            }
            Mode::Sendmmsg => {
                for packet in &packets {
                    for destination in destinations {
                        if out.full(1) {
                            out.flush(fd, &mut stats);
                        }
                        out.push(destination, &[packet], None);
                    }
                }
                out.flush(fd, &mut stats);
            }
            Mode::Gso => {
                for destination in destinations {
                    let mut rest = &packets[..];
                    while !rest.is_empty() {
                        // One GSO send: up to `burst` packets of one size (the
                        // last may be shorter), to this destination.
                        let segment = rest[0].len();
                        let mut take = 1;
                        while take < rest.len().min(burst)
                            && rest[take].len() == segment
                            && rest[take - 1].len() == segment
                        {
                            take += 1;
                        }
                        if out.full(take) {
                            out.flush(fd, &mut stats);
                        }
                        let gso = if take > 1 { Some(segment as u16) } else { None };
                        out.push(destination, &rest[..take], gso);
                        rest = &rest[take..];
                    }
                }
                out.flush(fd, &mut stats);
            }
        }
        last = Instant::now();
    }
    stats.active = first.map_or(Duration::ZERO, |f| last.saturating_duration_since(f));
    let (user1, sys1) = thread_cpu();
    stats.user = user1.saturating_sub(user0);
    stats.sys = sys1.saturating_sub(sys0);
    Ok(stats)
}

/// A `sendmmsg` batch under construction. Its vectors are allocated once with
/// their final capacity, so the pointers the headers hold stay valid until flush.
struct Batch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    /// One `cmsghdr` + u16 (aligned) per message, for `UDP_SEGMENT`.
    controls: Vec<[u64; 4]>,
    /// Datagrams each message carries (more than one for a GSO send).
    segments: Vec<u32>,
    iovec_capacity: usize,
}

impl Batch {
    fn new(burst: usize) -> Self {
        let iovec_capacity = SEND_BATCH * burst.max(1);
        Batch {
            headers: Vec::with_capacity(SEND_BATCH),
            iovecs: Vec::with_capacity(iovec_capacity),
            names: Vec::with_capacity(SEND_BATCH),
            controls: Vec::with_capacity(SEND_BATCH),
            segments: Vec::with_capacity(SEND_BATCH),
            iovec_capacity,
        }
    }

    fn full(&self, iovecs: usize) -> bool {
        self.headers.len() == SEND_BATCH || self.iovecs.len() + iovecs > self.iovec_capacity
    }

    fn push(
        &mut self,
        destination: &libc::sockaddr_in,
        packets: &[&[u8]],
        gso_segment: Option<u16>,
    ) {
        let first_iovec = self.iovecs.len();
        for packet in packets {
            self.iovecs.push(libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            });
        }
        self.names.push(*destination);
        self.controls.push([0; 4]);
        self.segments.push(packets.len() as u32);
        let index = self.headers.len();
        // SAFETY: every pointer below targets an element of a vector that is never
        // reallocated before `flush` (capacities are fixed up front and `full`
        // is checked before every push); a zeroed msghdr is a valid value.
        unsafe {
            let mut header: libc::mmsghdr = zeroed();
            header.msg_hdr.msg_name = (&mut self.names[index] as *mut libc::sockaddr_in).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_hdr.msg_iov = self.iovecs.as_mut_ptr().add(first_iovec);
            header.msg_hdr.msg_iovlen = packets.len();
            if let Some(segment) = gso_segment {
                let control = self.controls[index].as_mut_ptr().cast::<u8>();
                let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                header.msg_hdr.msg_control = control.cast();
                header.msg_hdr.msg_controllen = space;
                let cmsg = libc::CMSG_FIRSTHDR(&header.msg_hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(segment);
            }
            self.headers.push(header);
        }
    }

    /// Sends everything queued; a message the kernel refuses is counted as lost
    /// with all its datagrams, and the rest of the batch still goes.
    fn flush(&mut self, fd: libc::c_int, stats: &mut ForwarderStats) {
        let mut at = 0;
        while at < self.headers.len() {
            stats.calls += 1;
            let left = self.headers.len() - at;
            // SAFETY: the headers from `at` on are initialised and point into live buffers.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers.as_mut_ptr().add(at),
                    left as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                stats.errors += u64::from(self.segments[at]);
                at += 1;
                continue;
            }
            let sent = rc as usize;
            stats.copies += self.segments[at..at + sent]
                .iter()
                .map(|&s| u64::from(s))
                .sum::<u64>();
            at += sent;
        }
        self.headers.clear();
        self.iovecs.clear();
        self.names.clear();
        self.controls.clear();
        self.segments.clear();
    }
}

/// One `recvmmsg` header per iovec, each reading into that one buffer.
fn receive_headers(iovecs: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: a zeroed mmsghdr is valid (null pointers, zero lengths).
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect()
}

/// Reads up to `buffers.len()` datagrams: blocks (up to the socket's read
/// timeout) for the first, then takes what is already queued.
fn recv_batch(
    fd: libc::c_int,
    buffers: &mut [Vec<u8>],
    lengths: &mut [usize],
) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut headers = receive_headers(&mut iovecs);
    // SAFETY: headers and buffers live across the call.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = rc as usize;
    for (length, header) in lengths.iter_mut().zip(&headers[..n]) {
        *length = header.msg_len as usize;
    }
    Ok(n)
}

/// Counts datagrams on all receiver sockets until told to stop. Reads only the
/// first bytes of each datagram: the receivers are there to be cheap.
fn receive(sockets: &[UdpSocket], stop: &AtomicBool) -> anyhow::Result<u64> {
    const BATCH: usize = 256;
    let mut received = 0_u64;
    let mut buffers = vec![[0_u8; 64]; BATCH];
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut polls: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the pollfd array is live and its length is passed.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 20) };
        if ready <= 0 {
            continue;
        }
        for poll in &mut polls {
            if poll.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                let mut headers = receive_headers(&mut iovecs);
                // SAFETY: as in `recv_batch`; the iovecs point into `buffers`.
                let rc = unsafe {
                    libc::recvmmsg(
                        poll.fd,
                        headers.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if rc <= 0 {
                    break;
                }
                received += rc as u64;
                if (rc as usize) < BATCH {
                    break;
                }
            }
        }
    }
    Ok(received)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn sockaddr_in(addr: SocketAddr) -> libc::sockaddr_in {
    let (ip, port) = match addr {
        SocketAddr::V4(v4) => (*v4.ip(), v4.port()),
        SocketAddr::V6(_) => (Ipv4Addr::LOCALHOST, addr.port()),
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One CPU's (busy, total) ticks from /proc/stat; busy excludes idle and iowait.
fn core_ticks(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let label = format!("cpu{cpu} ");
    let line = stat.lines().find(|l| l.starts_with(&label))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Raises a socket buffer, past `rmem_max`/`wmem_max` when running as root.
fn set_buffer(socket: &UdpSocket, option: libc::c_int, bytes: libc::c_int) {
    let forced = if option == libc::SO_RCVBUF {
        libc::SO_RCVBUFFORCE
    } else {
        libc::SO_SNDBUFFORCE
    };
    for opt in [forced, option] {
        // SAFETY: a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Pins the calling thread to one CPU (no-op for `None` or on failure).
fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks the index.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "warning: could not pin a thread to CPU {cpu}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// The calling thread's user and system CPU time.
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mode: Mode) -> RawArgs {
        RawArgs {
            subscribers: vec![3],
            mode: vec![mode],
            duration: Duration::from_millis(100),
            pps: 4000,
            burst: 4,
            size: 1200,
            receiver_sockets: 2,
            forwarder_cpu: None,
            peers_cpu: None,
            json: Some(PathBuf::from("/dev/null")),
        }
    }

    #[test]
    fn every_mode_delivers_every_copy() {
        for mode in [Mode::Sendto, Mode::Sendmmsg, Mode::Gso] {
            let result = step(&args(mode), mode, 3).expect("step runs");
            assert!(
                result.input_read > 100,
                "{mode:?}: read {}",
                result.input_read
            );
            assert_eq!(result.copies_sent, result.input_read * 3, "{mode:?}");
            assert_eq!(result.copies_received, result.copies_sent, "{mode:?}");
            assert_eq!(result.send_errors, 0, "{mode:?}");
        }
    }
}
