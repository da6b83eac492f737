//! UDP sockets that carry many peers, each under its own loopback address.
//!
//! An SFU tells its peers apart by their address: onstage matches the first
//! datagram from an address to a peer by its ICE credentials and every later one
//! by the address alone. So two client peers must never share a source address,
//! yet a socket (and a thread) per peer would make the load tool cost more than
//! the server it loads. Instead each socket here is bound to the wildcard address
//! and sends every peer's datagrams from that peer's own loopback address
//! (all of 127.0.0.0/8 is local on Linux), chosen per datagram with `IP_PKTINFO`;
//! a received datagram names the address it was sent to, which finds the peer.
//! This only works against a server on the same machine, which is what a load
//! test measures anyway.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Hands out local addresses, never the same one twice in a run (the server
/// may still hold a mapping for an address whose peer just left).
pub struct LoopbackAddresses {
    first: u32,
    end: u32,
    next: AtomicU32,
}

impl LoopbackAddresses {
    /// 127.1.0.1, 127.1.0.2, …: all of 127.0.0.0/8 is local.
    pub fn new() -> Self {
        Self::range(Ipv4Addr::new(127, 1, 0, 0), Ipv4Addr::new(128, 0, 0, 0))
    }

    /// Addresses from `first` up to, not including, `end`, all of which must be
    /// local (e.g. under a `local` route, as the Janus benchmark namespace has).
    pub fn range(first: Ipv4Addr, end: Ipv4Addr) -> Self {
        LoopbackAddresses {
            first: u32::from(first),
            end: u32::from(end),
            next: AtomicU32::new(0),
        }
    }

    /// The next address of the range, skipping .0 and .255 host bytes.
    pub fn next(&self) -> io::Result<Ipv4Addr> {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let ip = self.first.checked_add(n).filter(|&ip| ip < self.end);
            let Some(ip) = ip else {
                return Err(io::Error::other("out of peer addresses"));
            };
            if matches!(ip & 0xFF, 0 | 255) {
                continue;
            }
            return Ok(Ipv4Addr::from(ip));
        }
    }
}

/// One received datagram's addresses.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    /// The local address it was sent to: the peer it is for.
    pub to: Ipv4Addr,
    /// When the kernel queued it on the socket (`SO_TIMESTAMPNS`,
    /// `CLOCK_REALTIME` in ns), if the kernel said: the arrival time that does
    /// not include the time the datagram then waited for this tool to read it.
    pub queued_realtime_ns: Option<u64>,
}

/// Largest datagram read; WebRTC media stays under ~1,250 bytes.
const DATAGRAM_MAX: usize = 2048;

/// Buffers for one `recvmmsg`: reused for every call, so receiving allocates nothing.
pub struct RecvBatch {
    buffers: Vec<[u8; DATAGRAM_MAX]>,
    names: Vec<libc::sockaddr_in>,
    controls: Vec<ControlBuffer>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: Vec<Received>,
}

// SAFETY: the raw pointers inside are rebuilt before every use and only ever
// point into the batch itself; a batch is used by one thread at a time.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        // SAFETY: all-zero is a valid value for these plain C structs.
        let (name, header): (libc::sockaddr_in, libc::mmsghdr) = unsafe { (zeroed(), zeroed()) };
        let none = Received {
            len: 0,
            from: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            to: Ipv4Addr::UNSPECIFIED,
            queued_realtime_ns: None,
        };
        RecvBatch {
            buffers: vec![[0; DATAGRAM_MAX]; size],
            names: vec![name; size],
            controls: (0..size)
                .map(|_| ControlBuffer([0; CONTROL_BYTES]))
                .collect(),
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                size
            ],
            headers: vec![header; size],
            received: vec![none; size],
        }
    }

    /// The `i`th datagram of the last batch.
    pub fn get(&self, i: usize) -> (&[u8], Received) {
        let r = self.received[i];
        (&self.buffers[i][..r.len], r)
    }
}

/// A non-blocking UDP socket bound to `0.0.0.0:<port>` with `IP_PKTINFO` and
/// `SO_TIMESTAMPNS` on.
pub struct SharedSocket {
    socket: UdpSocket,
    port: u16,
}

/// Bytes of control messages one datagram may carry: an `in_pktinfo` and a
/// `timespec`, each behind its `cmsghdr` (32 bytes each on 64-bit Linux), with room to spare.
const CONTROL_BYTES: usize = 128;

/// Room for the control messages of one datagram (aligned as `cmsghdr` needs).
#[repr(C, align(8))]
struct ControlBuffer([u8; CONTROL_BYTES]);

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl SharedSocket {
    /// Binds a new socket with receive and send buffers of about `buffer_bytes`
    /// (forced past `rmem_max` when the process may, else as large as allowed):
    /// a keyframe fanned out to hundreds of subscribers arrives as one burst.
    pub fn bind(buffer_bytes: usize) -> io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        socket.set_nonblocking(true)?;
        let port = socket.local_addr()?.port();
        let fd = socket.as_raw_fd();
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        // Best effort: without it, arrival is when the tool reads a datagram.
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
        let size = i32::try_from(buffer_bytes).unwrap_or(i32::MAX);
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
        }
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size)?;
        }
        Ok(SharedSocket { socket, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Receives up to a batch of waiting datagrams with one `recvmmsg`; returns
    /// how many (0 when none was waiting).
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let n = batch.buffers.len();
        for i in 0..n {
            batch.iovecs[i] = libc::iovec {
                iov_base: batch.buffers[i].as_mut_ptr().cast(),
                iov_len: DATAGRAM_MAX,
            };
            // SAFETY: all-zero is a valid msghdr; the pointers set below point
            // into `batch`, which outlives the call.
            let mut hdr: libc::msghdr = unsafe { zeroed() };
            hdr.msg_name = (&mut batch.names[i] as *mut libc::sockaddr_in).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_iov = &mut batch.iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = batch.controls[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = batch.controls[i].0.len() as _;
            batch.headers[i] = libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            };
        }
        // SAFETY: `headers` holds `n` initialised mmsghdrs whose buffers live in `batch`.
        let got = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                batch.headers.as_mut_ptr(),
                n as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let got = got as usize;
        for i in 0..got {
            let hdr = &batch.headers[i].msg_hdr;
            let mut to = None;
            let mut queued_realtime_ns = None;
            // SAFETY: the CMSG_* macros walk the control buffer the kernel filled
            // in, bounded by `msg_controllen`.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
                while !cmsg.is_null() {
                    let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
                    if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                        let info = std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo
                        );
                        to = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                    } else if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
                        let ts = std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg) as *const libc::timespec
                        );
                        queued_realtime_ns = Some(
                            (ts.tv_sec as u64)
                                .saturating_mul(1_000_000_000)
                                .saturating_add(ts.tv_nsec as u64),
                        );
                    }
                    cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
                }
            }
            let name = &batch.names[i];
            batch.received[i] = Received {
                len: (batch.headers[i].msg_len as usize).min(DATAGRAM_MAX),
                from: SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
                    u16::from_be(name.sin_port),
                ),
                // A datagram without the option cannot be placed: no peer has 0.0.0.0.
                to: to.unwrap_or(Ipv4Addr::UNSPECIFIED),
                queued_realtime_ns,
            };
        }
        Ok(got)
    }

    /// Sends `data` to `to` from the local address `from` (this socket's port).
    pub fn send(&self, from: Ipv4Addr, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        let SocketAddr::V4(to) = to else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "IPv6 destination",
            ));
        };
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut dest: libc::sockaddr_in = unsafe { zeroed() };
        dest.sin_family = libc::AF_INET as libc::sa_family_t;
        dest.sin_port = to.port().to_be();
        dest.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        let mut control = ControlBuffer([0; CONTROL_BYTES]);
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut dest as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations; the header and
        // its data are written inside `control`, which CMSG_SPACE(in_pktinfo) fits.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for IP_PKTINFO"));
            }
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let mut info: libc::in_pktinfo = zeroed();
            info.ipi_spec_dst.s_addr = u32::from(from).to_be();
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::in_pktinfo, info);
        }
        // SAFETY: `msg` points into locals that outlive the call.
        let n = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Waits until a datagram is ready or `timeout` passes.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<()> {
        let mut fds = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        let rc = unsafe { libc::ppoll(&mut fds, 1, &ts, std::ptr::null()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The receive-queue drops the kernel counted for UDP sockets bound to these
/// ports (`/proc/net/udp`, last column): datagrams lost inside this tool rather
/// than by the server.
pub fn socket_drops(ports: &[u16]) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            ports
                .contains(&port)
                .then(|| fields.last()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_on_one_socket_keep_their_own_addresses() -> io::Result<()> {
        let shared = SharedSocket::bind(1 << 20)?;
        let server = UdpSocket::bind("127.0.0.1:0")?;
        let server_addr = server.local_addr()?;
        let addresses = LoopbackAddresses::new();
        let (a, b) = (addresses.next()?, addresses.next()?);
        assert_ne!(a, b);
        shared.send(a, server_addr, b"from a")?;
        shared.send(b, server_addr, b"from b")?;
        let mut buf = [0u8; 64];
        let (_, seen_a) = server.recv_from(&mut buf)?;
        let (_, seen_b) = server.recv_from(&mut buf)?;
        assert_eq!(
            seen_a,
            SocketAddr::from(SocketAddrV4::new(a, shared.port()))
        );
        assert_eq!(
            seen_b,
            SocketAddr::from(SocketAddrV4::new(b, shared.port()))
        );
        server.send_to(b"to b", seen_b)?;
        server.send_to(b"to a", seen_a)?;
        let mut batch = RecvBatch::new(8);
        let mut got = Vec::new();
        for _ in 0..10 {
            shared.wait_readable(Duration::from_millis(100))?;
            let n = shared.recv_batch(&mut batch)?;
            got.extend((0..n).map(|i| {
                let (data, r) = batch.get(i);
                (r.to, data.to_vec(), r.from)
            }));
            if got.len() == 2 {
                break;
            }
        }
        let server_seen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, server_addr.port());
        assert_eq!(
            got,
            vec![
                (b, b"to b".to_vec(), server_seen),
                (a, b"to a".to_vec(), server_seen)
            ]
        );
        Ok(())
    }

    #[test]
    fn a_received_datagram_says_when_the_kernel_queued_it() -> io::Result<()> {
        let shared = SharedSocket::bind(1 << 20)?;
        // The first socket to ask for timestamps turns them on for the whole
        // stack a moment later (a deferred kernel work item); until then the
        // kernel stamps a datagram when it is read.
        std::thread::sleep(Duration::from_millis(200));
        let client = UdpSocket::bind("127.0.0.1:0")?;
        let before = crate::media::synth::realtime_ns();
        client.send_to(
            b"stamped",
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, shared.port()),
        )?;
        // Read well after it arrived: the stamp is the arrival, not the read.
        std::thread::sleep(Duration::from_millis(50));
        let mut batch = RecvBatch::new(4);
        shared.wait_readable(Duration::from_millis(500))?;
        assert_eq!(shared.recv_batch(&mut batch)?, 1);
        let read = crate::media::synth::realtime_ns();
        let (data, r) = batch.get(0);
        assert_eq!(data, b"stamped");
        let queued = r
            .queued_realtime_ns
            .expect("SO_TIMESTAMPNS gives every datagram a stamp");
        assert!(
            queued >= before,
            "queued {queued} before the send at {before}"
        );
        assert!(
            read - queued >= 40_000_000,
            "the stamp is the arrival, {} ns before the read",
            read - queued
        );
        Ok(())
    }
}
