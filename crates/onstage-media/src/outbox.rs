//! Outgoing datagrams of one shard, sent in batches.
//!
//! Forwarding one frame to N subscribers produces N × (packets per frame)
//! datagrams within microseconds. Sending each with its own `sendto` pays the
//! system call's fixed cost every time; on Linux the outbox queues them while the
//! shard works through an input and hands the kernel up to [`BATCH`] at once with
//! `sendmmsg(2)`. Elsewhere it falls back to one `send_to` per datagram.
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
        let sent = self.queue.iter().take_while(|(d, to)| self.socket.send_to(d, *to).is_ok()).count();
        self.sent += sent as u64;
        self.dropped += (self.queue.len() - sent) as u64;
        if sent < self.queue.len() {
            tracing::trace!(dropped = self.queue.len() - sent, "media send buffer full; datagrams dropped");
        }
        self.queue.clear();
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;

    use super::BATCH;

    /// The `sendmmsg` argument arrays, kept between calls so a batch allocates
    /// nothing.
    pub(super) struct Scratch {
        addrs: Vec<libc::sockaddr_storage>,
        iovecs: Vec<libc::iovec>,
        headers: Vec<libc::mmsghdr>,
    }

    impl Default for Scratch {
        fn default() -> Self {
            Scratch {
                addrs: Vec::with_capacity(BATCH),
                iovecs: Vec::with_capacity(BATCH),
                headers: Vec::with_capacity(BATCH),
            }
        }
    }

    /// Writes `to` into `storage`; returns the address length.
    fn encode(to: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
        match to {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large enough and suitably aligned
                // for any socket address type, sockaddr_in included.
                let sin = unsafe { &mut *(storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &mut *(storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }

    /// Sends the queue with as few `sendmmsg` calls as it takes; returns how many
    /// datagrams the kernel took (it stops at the first one it refuses).
    pub(super) fn send_batch(socket: &UdpSocket, queue: &[(Vec<u8>, SocketAddr)], s: &mut Scratch) -> usize {
        let fd = socket.as_raw_fd();
        let mut done = 0;
        let mut refused = 0;
        for chunk in queue.chunks(BATCH) {
            s.addrs.clear();
            s.iovecs.clear();
            s.headers.clear();
            // SAFETY: all-zero is a valid sockaddr_storage.
            s.addrs.resize(chunk.len(), unsafe { std::mem::zeroed() });
            let mut lens = [0 as libc::socklen_t; BATCH];
            for (i, (datagram, to)) in chunk.iter().enumerate() {
                lens[i] = encode(to, &mut s.addrs[i]);
                s.iovecs.push(libc::iovec { iov_base: datagram.as_ptr() as *mut libc::c_void, iov_len: datagram.len() });
            }
            for i in 0..chunk.len() {
                // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_name = &mut s.addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
                header.msg_hdr.msg_namelen = lens[i];
                header.msg_hdr.msg_iov = &mut s.iovecs[i] as *mut libc::iovec;
                header.msg_hdr.msg_iovlen = 1;
                s.headers.push(header);
            }
            let mut offset = 0;
            while offset < chunk.len() {
                // SAFETY: the headers point into `addrs`, `iovecs` and the queued
                // datagrams, all alive and unmoved for the duration of the call;
                // the count is the headers' length.
                let n = unsafe {
                    libc::sendmmsg(
                        fd,
                        s.headers.as_mut_ptr().add(offset),
                        (chunk.len() - offset) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    let err = std::io::Error::last_os_error();
                    match err.kind() {
                        std::io::ErrorKind::Interrupted => continue,
                        // The send buffer is full: the rest of the queue is dropped.
                        std::io::ErrorKind::WouldBlock => return done + offset - refused,
                        // A datagram the kernel refuses for its own sake (say, an
                        // address of the wrong family) must not sink the rest.
                        _ => {
                            refused += 1;
                            offset += 1;
                            continue;
                        }
                    }
                }
                if n == 0 {
                    return done + offset - refused;
                }
                offset += n as usize;
            }
            done += chunk.len();
        }
        done - refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        // An IPv6 destination from an IPv4 socket is refused by the kernel: it is
        // counted as dropped and does not stop the datagrams after it.
        if let Some(rx6) = rx6 {
            outbox.push(vec![1], rx6.local_addr().unwrap());
            outbox.push(vec![2], to);
            outbox.flush();
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[2]);
            assert_eq!((outbox.sent, outbox.dropped), ((BATCH * 2 + 6) as u64, 1));
        }
    }
}
