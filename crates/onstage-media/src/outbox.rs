//! Outgoing datagrams of one shard, sent in batches.
//!
//! Forwarding the RTP packets of one video frame to N subscribers produces
//! N × (packets per frame) datagrams within microseconds. Sending each with its
//! own `sendto` pays the kernel's send path every time. On Linux the outbox
//! queues them while the shard works through an input, sends each subscriber's
//! run of equal-sized packets (a frame's) as one message with UDP segmentation
//! offload (`UDP_SEGMENT`: the kernel walks its send path once and cuts the
//! datagrams at the end), and hands the kernel up to [`BATCH`] messages per
//! `sendmmsg(2)`. A kernel without offload gets one datagram per message.
//! Elsewhere the outbox falls back to one `send_to` per datagram.
//!
//! Datagrams to one destination leave in the order they were queued. A full socket
//! buffer drops what does not fit, as the network would, instead of blocking the
//! shard (the socket is non-blocking).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

/// Most datagrams handed to the kernel in one call.
pub(crate) const BATCH: usize = 64;

pub(crate) struct Outbox {
    socket: Arc<UdpSocket>,
    queue: Vec<(Vec<u8>, SocketAddr)>,
    #[cfg(target_os = "linux")]
    scratch: linux::Scratch,
    pub(crate) sent: u64,
    pub(crate) dropped: u64,
}

impl Outbox {
    pub(crate) fn new(socket: Arc<UdpSocket>) -> Outbox {
        Outbox {
            socket,
            queue: Vec::with_capacity(BATCH),
            #[cfg(target_os = "linux")]
            scratch: linux::Scratch::default(),
            sent: 0,
            dropped: 0,
        }
    }

    /// Queues a datagram; sends the queue when it holds a full batch.
    pub(crate) fn push(&mut self, datagram: Vec<u8>, to: SocketAddr) {
        self.queue.push((datagram, to));
        if self.queue.len() >= BATCH {
            self.flush();
        }
    }

    /// Sends everything queued.
    pub(crate) fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        #[cfg(target_os = "linux")]
        let sent = linux::send_batch(&self.socket, &self.queue, &mut self.scratch);
        #[cfg(not(target_os = "linux"))]
        let sent = self
            .queue
            .iter()
            .take_while(|(d, to)| self.socket.send_to(d, *to).is_ok())
            .count();
        self.sent += sent as u64;
        self.dropped += (self.queue.len() - sent) as u64;
        if sent < self.queue.len() {
            tracing::trace!(
                dropped = self.queue.len() - sent,
                "media send buffer full; datagrams dropped"
            );
        }
        self.queue.clear();
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;

    use super::BATCH;

    /// Most datagrams in one segmentation offload send (the kernel's limit).
    const MAX_SEGMENTS: usize = 64;
    /// Most bytes in one segmentation offload send.
    const MAX_GSO_BYTES: usize = 65_000;
    /// Room for one `UDP_SEGMENT` control message (a `cmsghdr` and a u16, aligned).
    const CONTROL_SPACE: usize = 32;

    /// One control-message buffer, aligned as a `cmsghdr` must be.
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct Control([u8; CONTROL_SPACE]);

    /// The `sendmmsg` argument arrays, kept between calls so a batch allocates
    /// nothing once they have grown to a batch's size.
    pub(super) struct Scratch {
        addrs: Vec<libc::sockaddr_storage>,
        iovecs: Vec<libc::iovec>,
        controls: Vec<Control>,
        headers: Vec<libc::mmsghdr>,
        /// Datagrams carried by each message.
        carried: Vec<usize>,
        /// Whether the kernel takes segmentation offload; cleared the first time
        /// it refuses it.
        gso: bool,
    }

    impl Default for Scratch {
        fn default() -> Self {
            Scratch {
                addrs: Vec::with_capacity(BATCH),
                iovecs: Vec::with_capacity(BATCH),
                controls: Vec::with_capacity(BATCH),
                headers: Vec::with_capacity(BATCH),
                carried: Vec::with_capacity(BATCH),
                gso: true,
            }
        }
    }

    /// Writes `to` into `storage`; returns the address length.
    fn encode(to: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
        match to {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large enough and suitably aligned
                // for any socket address type, sockaddr_in included.
                let sin = unsafe {
                    &mut *(storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in)
                };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe {
                    &mut *(storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6)
                };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }

    /// How many datagrams from the start of `queue` can go as one segmentation
    /// offload send: same destination, same size (the last may be shorter).
    fn run_length(queue: &[(Vec<u8>, SocketAddr)]) -> usize {
        let Some((first, to)) = queue.first() else {
            return 0;
        };
        let size = first.len();
        let mut n = 1;
        let mut bytes = size;
        for (datagram, next_to) in &queue[1..] {
            if next_to != to
                || datagram.len() > size
                || n == MAX_SEGMENTS
                || bytes + datagram.len() > MAX_GSO_BYTES
            {
                break;
            }
            n += 1;
            bytes += datagram.len();
            if datagram.len() < size {
                break;
            }
        }
        n
    }

    /// Sends the queue; returns how many datagrams the kernel took. Runs of
    /// datagrams to one subscriber (a frame's packets) go as one message with
    /// UDP segmentation offload, so the kernel walks its send path once per run
    /// instead of once per packet; up to [`BATCH`] messages go per `sendmmsg`.
    pub(super) fn send_batch(
        socket: &UdpSocket,
        queue: &[(Vec<u8>, SocketAddr)],
        s: &mut Scratch,
    ) -> usize {
        let mut sent = 0;
        let mut at = 0;
        while at < queue.len() {
            let (took, consumed, refused_gso) = send_some(socket, &queue[at..], s);
            if refused_gso {
                // Not supported here (an old kernel, a device without it): from
                // now on one datagram per message.
                tracing::debug!("UDP segmentation offload refused; sending datagrams one by one");
                s.gso = false;
                continue;
            }
            sent += took;
            at += consumed;
            if consumed == 0 {
                break;
            }
        }
        sent
    }

    /// One `sendmmsg` call's worth: returns (datagrams sent, datagrams consumed —
    /// sent, refused or dropped —, whether the kernel refused offload).
    fn send_some(
        socket: &UdpSocket,
        queue: &[(Vec<u8>, SocketAddr)],
        s: &mut Scratch,
    ) -> (usize, usize, bool) {
        s.addrs.clear();
        s.iovecs.clear();
        s.controls.clear();
        s.headers.clear();
        s.carried.clear();
        // Group first: the headers point into these vectors, which must not
        // grow once a pointer has been taken.
        let mut at = 0;
        while at < queue.len() && s.carried.len() < BATCH {
            let n = if s.gso { run_length(&queue[at..]) } else { 1 };
            for (datagram, _) in &queue[at..at + n] {
                s.iovecs.push(libc::iovec {
                    iov_base: datagram.as_ptr() as *mut libc::c_void,
                    iov_len: datagram.len(),
                });
            }
            s.carried.push(n);
            at += n;
        }
        let messages = s.carried.len();
        // SAFETY: all-zero is a valid sockaddr_storage.
        s.addrs.resize(messages, unsafe { std::mem::zeroed() });
        s.controls.resize(messages, Control([0; CONTROL_SPACE]));
        let mut first = 0;
        for m in 0..messages {
            let n = s.carried[m];
            let (datagram, to) = &queue[first];
            let name_len = encode(to, &mut s.addrs[m]);
            // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name =
                &mut s.addrs[m] as *mut libc::sockaddr_storage as *mut libc::c_void;
            header.msg_hdr.msg_namelen = name_len;
            header.msg_hdr.msg_iov = &mut s.iovecs[first] as *mut libc::iovec;
            header.msg_hdr.msg_iovlen = n as _;
            if n > 1 {
                header.msg_hdr.msg_control = s.controls[m].0.as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE only computes a size.
                header.msg_hdr.msg_controllen =
                    unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
                // SAFETY: the control buffer is CONTROL_SPACE bytes, aligned for
                // cmsghdr, and larger than CMSG_SPACE(2); CMSG_FIRSTHDR of a
                // msghdr with a non-empty control buffer is that buffer.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(&header.msg_hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    libc::CMSG_DATA(cmsg)
                        .cast::<u16>()
                        .write_unaligned(datagram.len() as u16);
                }
            }
            s.headers.push(header);
            first += n;
        }
        let fd = socket.as_raw_fd();
        let mut done_messages = 0;
        let mut sent = 0;
        let mut consumed = 0;
        while done_messages < messages {
            // SAFETY: the headers point into `addrs`, `iovecs`, `controls` and the
            // queued datagrams, all alive and unmoved for the duration of the
            // call; the count does not exceed the headers' length.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    s.headers.as_mut_ptr().add(done_messages),
                    (messages - done_messages) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                let carried = s.carried[done_messages];
                match err.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    // The send buffer is full: the rest of the queue is dropped.
                    std::io::ErrorKind::WouldBlock => return (sent, queue.len(), false),
                    // A kernel or device without segmentation offload.
                    _ if carried > 1
                        && matches!(
                            err.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                        ) =>
                    {
                        return (sent, consumed, true);
                    }
                    // A datagram the kernel refuses for its own sake (say, an
                    // address of the wrong family) must not sink the rest.
                    _ => {
                        consumed += carried;
                        done_messages += 1;
                        continue;
                    }
                }
            }
            if n == 0 {
                return (sent, queue.len(), false);
            }
            for m in done_messages..done_messages + n as usize {
                sent += s.carried[m];
                consumed += s.carried[m];
            }
            done_messages += n as usize;
        }
        (sent, consumed, false)
    }

    #[cfg(test)]
    pub(super) fn runs(queue: &[(Vec<u8>, SocketAddr)]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < queue.len() {
            let n = run_length(&queue[at..]);
            out.push(n);
            at += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[cfg(target_os = "linux")]
    #[test]
    fn runs_group_one_destinations_equal_sized_datagrams() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let q = |items: &[(usize, SocketAddr)]| {
            items
                .iter()
                .map(|(n, to)| (vec![0u8; *n], *to))
                .collect::<Vec<_>>()
        };
        // A frame of three full packets and a short last one, then another peer.
        assert_eq!(
            linux::runs(&q(&[(100, a), (100, a), (100, a), (40, a), (100, b)])),
            vec![4, 1]
        );
        // A short packet ends a run; a bigger one starts a new one.
        assert_eq!(
            linux::runs(&q(&[(100, a), (40, a), (100, a), (120, a), (120, a)])),
            vec![2, 1, 2]
        );
        // Never more than 64 segments in one send.
        assert_eq!(linux::runs(&q(&vec![(10, a); 70])), vec![64, 6]);
    }

    #[test]
    fn a_batch_arrives_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let rx6 = UdpSocket::bind("[::1]:0").ok();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut outbox = Outbox::new(Arc::new(tx));
        let to = rx.local_addr().unwrap();
        // More than one batch, with a final partial one.
        for i in 0..(BATCH * 2 + 5) as u32 {
            outbox.push(i.to_be_bytes().to_vec(), to);
        }
        outbox.flush();
        assert_eq!(outbox.sent, (BATCH * 2 + 5) as u64);
        let mut buf = [0u8; 16];
        for i in 0..(BATCH * 2 + 5) as u32 {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes());
        }
        // A frame's packets: equal sizes and a shorter last one, cut apart again.
        for (i, n) in [1200usize, 1200, 1200, 300].iter().enumerate() {
            outbox.push(vec![i as u8; *n], to);
        }
        outbox.flush();
        let mut big = [0u8; 2000];
        for (i, n) in [1200usize, 1200, 1200, 300].iter().enumerate() {
            let (got, _) = rx.recv_from(&mut big).unwrap();
            assert_eq!((got, big[0]), (*n, i as u8));
        }
        // An IPv6 destination from an IPv4 socket is refused by the kernel: it is
        // counted as dropped and does not stop the datagrams after it.
        if let Some(rx6) = rx6 {
            outbox.push(vec![1], rx6.local_addr().unwrap());
            outbox.push(vec![2], to);
            outbox.flush();
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[2]);
            assert_eq!((outbox.sent, outbox.dropped), ((BATCH * 2 + 10) as u64, 1));
        }
    }
}
