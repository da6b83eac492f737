//! The receive side of the media socket: one thin loop that reads every datagram
//! and hands it to the shard that owns its peer.
//!
//! Peers are spread over several forwarding shards (see [`crate::shard`]), but they
//! all share one UDP port, so something has to decide which shard a datagram is
//! for. That is all this loop does: it never touches a peer's state. The first
//! datagram a peer sends is an ICE connectivity check (STUN), whose USERNAME
//! attribute starts with the ICE ufrag onstage put in that peer's answer; the
//! shard registered for that ufrag gets it, and the sender's address is remembered
//! so the datagrams that follow (DTLS, SRTP, SRTCP) are routed by address alone —
//! one hash lookup per packet.
//!
//! A shard that falls behind has datagrams shed here (its queue is bounded, see
//! [`crate::shard::DATA_QUEUE`]) rather than delayed without bound.
//!
//! Datagrams are read into slices of a shared pool buffer ([`BytesMut`] split into
//! [`Bytes`]): a shard drops its slice when done and the pool reuses the memory, so
//! the steady state allocates nothing per packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::shard::ShardData;

/// Largest datagram read.
pub(crate) const MAX_DATAGRAM: usize = 2000;
/// How much the pool buffer grows by when it has to: room for a burst of
/// datagrams per allocation, reclaimed in place once the shards are done with them.
const POOL_CHUNK: usize = 256 * 1024;

/// What the rest of the media plane tells the receive loop.
pub(crate) enum Routing {
    /// A peer was created on `shard` with this local ICE ufrag.
    Register { ufrag: String, shard: usize },
    /// A peer is gone: its ufrag and, if it ever sent anything, its address.
    Forget {
        ufrag: String,
        remote: Option<SocketAddr>,
    },
}

/// The loop's routing tables. Kept apart from the socket so it can be tested
/// with plain datagrams.
#[derive(Default)]
pub(crate) struct Router {
    by_ufrag: HashMap<String, usize>,
    by_remote: HashMap<SocketAddr, usize>,
}

impl Router {
    pub(crate) fn apply(&mut self, routing: Routing) {
        match routing {
            Routing::Register { ufrag, shard } => {
                self.by_ufrag.insert(ufrag, shard);
            }
            Routing::Forget { ufrag, remote } => {
                self.by_ufrag.remove(&ufrag);
                if let Some(remote) = remote {
                    self.by_remote.remove(&remote);
                }
            }
        }
    }

    /// The shard for a datagram, or None when nothing claims it. A STUN request
    /// names its peer by ufrag, which wins over the address: a peer may move to a
    /// new address (a new candidate pair), and an address may be reused by a new
    /// peer after the old one left.
    pub(crate) fn route(&mut self, datagram: &[u8], from: SocketAddr) -> Option<usize> {
        if let Some(ufrag) = stun_local_ufrag(datagram) {
            let shard = *self.by_ufrag.get(ufrag)?;
            self.by_remote.insert(from, shard);
            return Some(shard);
        }
        self.by_remote.get(&from).copied()
    }

    pub(crate) fn knows_ufrag_of(&self, datagram: &[u8]) -> bool {
        stun_local_ufrag(datagram).is_none_or(|u| self.by_ufrag.contains_key(u))
    }
}

/// The local (onstage's) ufrag in a STUN message's USERNAME attribute
/// (`local:remote`, RFC 8445 §7.2.2), if the datagram is a STUN message that
/// carries one.
pub(crate) fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
    const USERNAME: u16 = 0x0006;
    // A STUN message starts with two zero bits (RFC 7983 demultiplexing) and
    // carries the magic cookie at bytes 4..8.
    if datagram.len() < 20 || datagram[0] & 0xC0 != 0 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let body = datagram.get(20..20 + body_len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return Some(username.split(':').next().unwrap_or(username));
        }
        // Attributes are padded to a multiple of four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// Reads the socket until the routing channel closes (the media plane was
/// dropped), handing each datagram to its shard.
pub(crate) async fn run(
    socket: UdpSocket,
    mut routing: mpsc::UnboundedReceiver<Routing>,
    shards: Vec<mpsc::Sender<ShardData>>,
) {
    let mut router = Router::default();
    let mut pool = BytesMut::with_capacity(POOL_CHUNK);
    let mut unrouted: u64 = 0;
    let mut flushed_at = Instant::now();
    let mut shed: u64 = 0;
    loop {
        if pool.capacity() < MAX_DATAGRAM {
            pool.reserve(POOL_CHUNK);
        }
        tokio::select! {
            biased;
            change = routing.recv() => match change {
                Some(change) => router.apply(change),
                None => break,
            },
            received = socket.recv_buf_from(&mut pool) => match received {
                Ok((_, from)) => {
                    let datagram: Bytes = pool.split().freeze();
                    let at = Instant::now();
                    // A peer's first check can overtake its registration, which
                    // is sent just before its answer: apply what is queued, then
                    // look again.
                    if !router.knows_ufrag_of(&datagram) {
                        while let Ok(change) = routing.try_recv() {
                            router.apply(change);
                        }
                    }
                    match router.route(&datagram, from) {
                        Some(shard) => {
                            if let Some(tx) = shards.get(shard)
                                && tx.try_send(ShardData::Datagram { at, from, datagram }).is_err() {
                                    shed += 1;
                                }
                        }
                        None => {
                            unrouted += 1;
                            if unrouted.is_power_of_two() {
                                tracing::debug!(%from, unrouted, "datagram from an unknown peer dropped");
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "media socket read failed"),
            },
        }
        if shed > 0 && flushed_at.elapsed().as_secs() >= 1 {
            metrics::counter!("onstage_media_datagrams_shed_total")
                .increment(std::mem::take(&mut shed));
            flushed_at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, so the parser has to skip one.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attrs);
        msg
    }

    #[test]
    fn stun_username_names_the_local_ufrag() {
        assert_eq!(
            stun_local_ufrag(&binding_request("srvU:cliU")),
            Some("srvU")
        );
        assert_eq!(stun_local_ufrag(&binding_request("abc")), Some("abc"));
    }

    #[test]
    fn non_stun_and_truncated_datagrams_carry_no_ufrag() {
        // RTP (version 2): first two bits 10.
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None);
        // DTLS record.
        assert_eq!(stun_local_ufrag(&[22; 40]), None);
        let mut cut = binding_request("srvU:cliU");
        cut.truncate(26);
        assert_eq!(stun_local_ufrag(&cut), None);
        let mut lying = binding_request("srvU:cliU");
        lying[3] = 0xff;
        assert_eq!(stun_local_ufrag(&lying), None);
    }

    #[test]
    fn a_peer_is_found_by_ufrag_then_by_address() {
        let mut router = Router::default();
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        router.apply(Routing::Register {
            ufrag: "u1".into(),
            shard: 1,
        });
        router.apply(Routing::Register {
            ufrag: "u0".into(),
            shard: 0,
        });
        assert_eq!(router.route(&[0x80; 40], a), None, "no address known yet");
        assert_eq!(router.route(&binding_request("u1:x"), a), Some(1));
        assert_eq!(router.route(&[0x80; 40], a), Some(1));
        assert_eq!(router.route(&binding_request("u0:y"), b), Some(0));
        assert_eq!(router.route(&binding_request("nobody:y"), b), None);
        router.apply(Routing::Forget {
            ufrag: "u1".into(),
            remote: Some(a),
        });
        assert_eq!(router.route(&[0x80; 40], a), None);
        assert_eq!(router.route(&[0x80; 40], b), Some(0));
        // The address of a gone peer, reused by a new one, follows the new ufrag.
        router.apply(Routing::Register {
            ufrag: "u2".into(),
            shard: 0,
        });
        assert_eq!(router.route(&binding_request("u2:z"), a), Some(0));
    }
}
