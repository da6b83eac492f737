//! The receive side of the media socket: one thin loop that reads every datagram
//! and hands it to the shard that owns its peer.
//!
//! Peers are spread over several forwarding shards (see [`crate::shard`]), but they
//! all share one UDP port, so something has to decide which shard a datagram is
//! for. That is all this loop does: it never touches a peer's state. The first
//! datagram a peer sends is an ICE connectivity check (STUN), whose USERNAME
//! attribute starts with the ICE ufrag onstage put in that peer's answer; a check
//! goes to the shard registered for that ufrag, always, and changes no route.
//! Only when that shard has accepted the check — its peer's `Rtc` verified the
//! MESSAGE-INTEGRITY with the peer's password — does the shard tell this loop the
//! peer's address ([`Routing::Learn`]); the datagrams that follow (DTLS, SRTP,
//! SRTCP) are then routed by address alone, one hash lookup per packet. Anyone can
//! put a known ufrag in a datagram from any address, so a check by itself proves
//! nothing: a spoofed one can neither add a route nor move one.
//!
//! The address map holds at most one address per live peer: learning a new
//! address drops the peer's old one, an address owned by another live peer is
//! not taken from it, and a peer's address goes with the peer.
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
use onstage_stage::media::PeerId;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::shard::ShardData;

/// Largest datagram read.
pub(crate) const MAX_DATAGRAM: usize = 2000;
/// How much the pool buffer grows by when it has to: room for a burst of
/// datagrams per allocation, reclaimed in place once the shards are done with them.
const POOL_CHUNK: usize = 256 * 1024;

/// What the rest of the media plane tells the receive loop.
#[derive(Debug)]
pub(crate) enum Routing {
    /// A peer was created on `shard` with this local ICE ufrag.
    Register { ufrag: String, shard: usize },
    /// `peer`, on `shard`, accepted a connectivity check with valid integrity
    /// from `remote`: its datagrams come from there now.
    Learn {
        peer: PeerId,
        shard: usize,
        remote: SocketAddr,
    },
    /// A peer is gone: its ufrag and, if it ever sent anything, the address its
    /// shard last knew for it.
    Forget {
        ufrag: String,
        peer: PeerId,
        remote: Option<SocketAddr>,
    },
}

/// The loop's routing tables. Kept apart from the socket so it can be tested
/// with plain datagrams.
#[derive(Default)]
pub(crate) struct Router {
    by_ufrag: HashMap<String, usize>,
    /// Where each learned address goes, and whose it is.
    by_remote: HashMap<SocketAddr, (usize, PeerId)>,
    /// Each peer's one learned address.
    by_peer: HashMap<PeerId, SocketAddr>,
    /// Learned addresses refused because another live peer owns them.
    pub(crate) refused: u64,
}

impl Router {
    pub(crate) fn apply(&mut self, routing: Routing) {
        match routing {
            Routing::Register { ufrag, shard } => {
                self.by_ufrag.insert(ufrag, shard);
            }
            Routing::Learn {
                peer,
                shard,
                remote,
            } => {
                if let Some((_, owner)) = self.by_remote.get(&remote)
                    && *owner != peer
                {
                    // Another live peer sends from there: a check naming this
                    // peer from that address was someone else's, or the peer
                    // reuses an address whose owner has not gone yet. Either
                    // way the owner keeps it.
                    self.refused += 1;
                    tracing::debug!(%peer, %remote, owner = %owner, "address owned by another peer: not learned");
                    return;
                }
                if let Some(old) = self.by_peer.insert(peer, remote)
                    && old != remote
                {
                    self.unbind(old, peer);
                }
                self.by_remote.insert(remote, (shard, peer));
            }
            Routing::Forget {
                ufrag,
                peer,
                remote,
            } => {
                self.by_ufrag.remove(&ufrag);
                if let Some(learned) = self.by_peer.remove(&peer) {
                    self.unbind(learned, peer);
                }
                if let Some(remote) = remote {
                    self.unbind(remote, peer);
                }
            }
        }
    }

    /// Drops `remote`'s route if it is `peer`'s (and not another's since).
    fn unbind(&mut self, remote: SocketAddr, peer: PeerId) {
        if self.by_remote.get(&remote).is_some_and(|(_, p)| *p == peer) {
            self.by_remote.remove(&remote);
        }
    }

    /// The shard for a datagram, or None when nothing claims it. A STUN request
    /// names its peer by ufrag and goes to that peer's shard, whatever address
    /// it comes from (a peer may try a new candidate pair), without changing any
    /// route: the shard checks its integrity and reports the address if it is
    /// good. Everything else is routed by the address learned that way.
    pub(crate) fn route(&self, datagram: &[u8], from: SocketAddr) -> Option<usize> {
        if let Some(ufrag) = stun_local_ufrag(datagram) {
            return self.by_ufrag.get(ufrag).copied();
        }
        self.by_remote.get(&from).map(|(shard, _)| *shard)
    }

    /// Learned addresses held (at most one per live peer).
    #[cfg(test)]
    fn routes(&self) -> usize {
        debug_assert!(self.by_remote.len() <= self.by_peer.len());
        self.by_remote.len()
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
    // Unrouted datagrams already added to the metric.
    let mut reported: u64 = 0;
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
                    // A peer's first check can overtake its registration (sent
                    // just before its answer), and its first DTLS record the
                    // address its shard learned from the check: apply what is
                    // queued, then look once more before dropping it.
                    let mut shard = router.route(&datagram, from);
                    if shard.is_none() {
                        while let Ok(change) = routing.try_recv() {
                            router.apply(change);
                        }
                        shard = router.route(&datagram, from);
                    }
                    match shard {
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
        if (shed > 0 || router.refused > 0 || unrouted > reported)
            && flushed_at.elapsed().as_secs() >= 1
        {
            metrics::counter!("onstage_media_datagrams_unrouted_total")
                .increment(unrouted - reported);
            reported = unrouted;
            metrics::counter!("onstage_media_datagrams_shed_total")
                .increment(std::mem::take(&mut shed));
            metrics::counter!("onstage_media_routes_refused_total")
                .increment(std::mem::take(&mut router.refused));
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

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("an address")
    }

    const RTP: [u8; 40] = [0x80; 40];

    fn registered() -> Router {
        let mut router = Router::default();
        router.apply(Routing::Register {
            ufrag: "u1".into(),
            shard: 1,
        });
        router.apply(Routing::Register {
            ufrag: "u0".into(),
            shard: 0,
        });
        router
    }

    #[test]
    fn a_check_goes_to_its_ufrags_shard_and_adds_no_route() {
        let router = registered();
        let a = addr("127.0.0.1:4000");
        assert_eq!(router.route(&RTP, a), None, "no address known yet");
        assert_eq!(router.route(&binding_request("u1:x"), a), Some(1));
        assert_eq!(router.route(&RTP, a), None, "a check proves nothing");
        assert_eq!(router.route(&binding_request("nobody:y"), a), None);
        assert_eq!(router.routes(), 0);
    }

    #[test]
    fn a_learned_address_routes_the_peers_datagrams() {
        let mut router = registered();
        let (a, b) = (addr("127.0.0.1:4000"), addr("127.0.0.1:4001"));
        router.apply(Routing::Learn {
            peer: PeerId(1),
            shard: 1,
            remote: a,
        });
        assert_eq!(router.route(&RTP, a), Some(1));
        // The peer moves: its old address goes.
        router.apply(Routing::Learn {
            peer: PeerId(1),
            shard: 1,
            remote: b,
        });
        assert_eq!(router.route(&RTP, b), Some(1));
        assert_eq!(router.route(&RTP, a), None);
        assert_eq!(router.routes(), 1);
    }

    #[test]
    fn an_address_owned_by_another_peer_is_not_taken() {
        let mut router = registered();
        let (publisher, viewer) = (addr("127.0.0.1:4000"), addr("127.0.0.1:4001"));
        router.apply(Routing::Learn {
            peer: PeerId(0),
            shard: 0,
            remote: publisher,
        });
        router.apply(Routing::Learn {
            peer: PeerId(1),
            shard: 1,
            remote: viewer,
        });
        // The viewer's own (valid) check, sent from the publisher's address.
        assert_eq!(router.route(&binding_request("u1:x"), publisher), Some(1));
        router.apply(Routing::Learn {
            peer: PeerId(1),
            shard: 1,
            remote: publisher,
        });
        assert_eq!(router.refused, 1);
        assert_eq!(
            router.route(&RTP, publisher),
            Some(0),
            "still the publisher's"
        );
        assert_eq!(
            router.route(&RTP, viewer),
            Some(1),
            "the viewer kept its own"
        );
    }

    #[test]
    fn only_the_owner_going_unbinds_an_address() {
        let mut router = registered();
        let a = addr("127.0.0.1:4000");
        router.apply(Routing::Learn {
            peer: PeerId(0),
            shard: 0,
            remote: a,
        });
        // Another peer goes, its shard believing it was at `a`.
        router.apply(Routing::Forget {
            ufrag: "u1".into(),
            peer: PeerId(1),
            remote: Some(a),
        });
        assert_eq!(router.route(&RTP, a), Some(0));
        assert_eq!(router.route(&binding_request("u1:x"), a), None);
        // The owner goes: its address and ufrag with it.
        router.apply(Routing::Forget {
            ufrag: "u0".into(),
            peer: PeerId(0),
            remote: Some(a),
        });
        assert_eq!(router.route(&RTP, a), None);
        assert_eq!(router.routes(), 0);
        assert!(router.by_peer.is_empty());
        // The address, reused by a new peer, is learned afresh.
        router.apply(Routing::Register {
            ufrag: "u2".into(),
            shard: 1,
        });
        assert_eq!(router.route(&binding_request("u2:z"), a), Some(1));
        router.apply(Routing::Learn {
            peer: PeerId(2),
            shard: 1,
            remote: a,
        });
        assert_eq!(router.route(&RTP, a), Some(1));
    }

    #[test]
    fn spoofed_checks_from_many_addresses_leave_the_map_as_it_was() {
        let mut router = registered();
        let a = addr("127.0.0.1:4000");
        router.apply(Routing::Learn {
            peer: PeerId(1),
            shard: 1,
            remote: a,
        });
        let check = binding_request("u1:x");
        for i in 0..300_000u32 {
            let [_, x, y, z] = i.to_be_bytes();
            let from = SocketAddr::from(([127, x, y, z], 5000));
            assert_eq!(router.route(&check, from), Some(1));
        }
        assert_eq!(router.routes(), 1);
        assert_eq!(router.by_peer.len(), 1);
        assert_eq!(router.route(&RTP, a), Some(1));
    }
}
