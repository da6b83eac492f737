//! The Janus target: Janus's VideoRoom plugin as the server under test, so the
//! same peers and the same load measure onstage and Janus side by side.
//!
//! Signaling goes through [`crate::janus`]'s HTTP client, on one Janus session
//! whose long poll carries every handle's events:
//!
//! - a room is a VideoRoom room created for the run's video codec (VP8 unless
//!   `--codec h264`) and Opus, with a publisher limit well above the scenario's
//!   and a 10 Mbit/s bitrate cap, so Janus's REMB never throttles a publisher;
//! - publish: a handle joins as a publisher and sends the client's offer in
//!   `publish`; Janus's answer comes back (no trickle: half-trickle Janus puts
//!   its host candidate in every SDP);
//! - subscribe: a handle joins as a subscriber to the feed, Janus makes the offer
//!   ([`SubscribeMode::ServerOffers`]) and the client's answer goes back in
//!   `start` through [`Session::answer`];
//! - leave: `leave`, then `detach` (which closes the PeerConnection).
//!
//! By default the tool starts Janus itself ([`JanusServer`], pinned with
//! `--janus-cpus`), samples its CPU and RSS, and stops it at the end;
//! `--janus-url` uses a running one instead.
//!
//! Addressing. onstage tells peers apart by source address, so every peer of
//! the tool has its own (one socket carries many peers, see [`super::net`]).
//! Janus needs its peers on the benchmark namespace's veth address, because
//! libnice gathers nothing on loopback and pins its sockets to their
//! interface. Janus itself would not need distinct addresses (it gives every
//! peer its own local port), but keeping them keeps the tool identical for both
//! servers: the same shards, the same per-datagram demultiplexing by
//! destination address, no second lookup. The namespace therefore routes all of
//! 198.18.0.0/16 as local on the veth (a `local` route, as 127.0.0.0/8 is on
//! `lo`), and the peers take 198.18.1.1, 198.18.1.2, …: no address is added per
//! peer, and Janus's pinned sockets reach them like 198.18.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;

use super::synth::VideoCodec;
use super::target::{Failure, Published, Room, Session, SubscribeMode, Subscribed, Target};
use crate::janus::{JanusClient, JanusOptions, JanusServer, RoomCodec};

/// Every room allows at least this many publishers (VideoRoom's default is 3).
const MIN_ROOM_PUBLISHERS: u32 = 100;

/// How to reach Janus: start one, or use one that runs.
pub struct JanusSettings {
    /// `http://127.0.0.1:8088/janus` of a running Janus; `None` starts one.
    pub url: Option<String>,
    /// `taskset -c` list for the Janus the tool starts.
    pub cpus: Option<String>,
    pub debug_level: u8,
    /// Janus's `event_loops` (0: its default, a thread per PeerConnection).
    pub event_loops: u32,
    pub codec: VideoCodec,
}

pub struct JanusTarget {
    /// The Janus this tool started (stopped at shutdown), if any.
    server: Mutex<Option<JanusServer>>,
    pid: Option<u32>,
    addr: SocketAddr,
    client: Arc<JanusClient>,
    codec: RoomCodec,
    next_room: AtomicU64,
}

impl JanusTarget {
    /// Starts Janus (unless `settings.url` names one) and opens a session on it.
    /// When starting, the caller must already be inside the benchmark namespace.
    pub async fn connect(settings: &JanusSettings) -> anyhow::Result<Self> {
        crate::janus::ensure_peer_addresses()?;
        let (server, addr) = match &settings.url {
            Some(url) => (None, parse_url(url)?),
            None => {
                let options = JanusOptions {
                    cpus: settings.cpus.clone(),
                    debug_level: settings.debug_level,
                    event_loops: settings.event_loops,
                    ..JanusOptions::default()
                };
                let server = JanusServer::start(&options)
                    .await
                    .context("could not start janus")?;
                let addr = server.http_addr();
                eprintln!(
                    "janus pid {} on http://{addr}/janus (log: {})",
                    server.pid(),
                    server.dir().display()
                );
                (Some(server), addr)
            }
        };
        let pid = server.as_ref().map(JanusServer::pid);
        let client = JanusClient::connect(addr)
            .await
            .with_context(|| format!("could not open a janus session at {addr}"))?;
        let codec = match settings.codec {
            VideoCodec::Vp8 => RoomCodec::Vp8,
            VideoCodec::H264 => RoomCodec::H264,
        };
        // Room numbers unlikely to collide with rooms a running Janus already has.
        let base = (crate::api::unix_now() % 1_000_000) * 1_000;
        Ok(JanusTarget {
            server: Mutex::new(server),
            pid,
            addr,
            client: Arc::new(client),
            codec,
            next_room: AtomicU64::new(base),
        })
    }
}

/// `http://host:port[/janus]` → the HTTP API's socket address.
fn parse_url(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--janus-url must be http://host:port/janus: {url}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .parse()
        .with_context(|| format!("--janus-url needs a numeric host:port: {url}"))
}

fn room_number(room: &Room) -> anyhow::Result<u64> {
    room.id
        .parse()
        .with_context(|| format!("not a janus room number: {}", room.id))
}

/// A publisher's or subscriber's VideoRoom handle.
struct JanusSession {
    client: Arc<JanusClient>,
    handle: u64,
}

#[async_trait]
impl Session for JanusSession {
    async fn answer(&mut self, answer_sdp: String) -> anyhow::Result<()> {
        self.client
            .start(self.handle, &answer_sdp)
            .await
            .map_err(|e| Failure::new("janus_start", format!("{e:#}")))
    }

    async fn leave(self: Box<Self>) -> anyhow::Result<()> {
        // Detach even when `leave` fails (e.g. Janus already closed the peer).
        let left = self.client.leave(self.handle).await;
        self.client
            .detach(self.handle)
            .await
            .map_err(|e| Failure::new("janus_detach", format!("{e:#}")))?;
        left.map_err(|e| Failure::new("janus_leave", format!("{e:#}")))
    }
}

#[async_trait]
impl Target for JanusTarget {
    fn name(&self) -> &'static str {
        "janus"
    }

    fn subscribe_mode(&self) -> SubscribeMode {
        SubscribeMode::ServerOffers
    }

    fn server_pid(&self) -> Option<u32> {
        self.pid
    }

    fn endpoint(&self) -> Option<String> {
        Some(format!("http://{}/janus", self.addr))
    }

    async fn create_room(&self, name: &str, publishers: u32) -> anyhow::Result<Room> {
        let number = self.next_room.fetch_add(1, Ordering::Relaxed);
        self.client
            .create_room(number, publishers.max(MIN_ROOM_PUBLISHERS), self.codec)
            .await
            .map_err(|e| Failure::new("janus_create_room", format!("{e:#}")))?;
        Ok(Room {
            id: number.to_string(),
            name: name.to_owned(),
        })
    }

    async fn delete_room(&self, room: &Room) -> anyhow::Result<()> {
        self.client.destroy_room(room_number(room)?).await
    }

    async fn publish(
        &self,
        room: &Room,
        user: &str,
        offer_sdp: String,
    ) -> anyhow::Result<Published> {
        let published = self
            .client
            .publish(room_number(room)?, user, &offer_sdp)
            .await
            .map_err(|e| Failure::new("janus_publish", format!("{e:#}")))?;
        Ok(Published {
            publisher_id: published.feed.to_string(),
            answer_sdp: published.answer_sdp,
            session: Box::new(JanusSession {
                client: self.client.clone(),
                handle: published.handle,
            }),
        })
    }

    async fn subscribe(
        &self,
        room: &Room,
        publisher_id: &str,
        _user: &str,
        offer_sdp: Option<String>,
    ) -> anyhow::Result<Subscribed> {
        if offer_sdp.is_some() {
            bail!("janus makes the subscription offer itself");
        }
        let feed: u64 = publisher_id
            .parse()
            .with_context(|| format!("not a janus feed id: {publisher_id}"))?;
        // Janus offers a feed only once its publisher is fully set up; a
        // subscribe that comes first is refused with 428 "No such feed". The
        // onstage target has no such window (its publish answer means the source
        // exists), so retry briefly rather than count a failure the server under
        // test did not make.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let subscribed = loop {
            match self.client.subscribe(room_number(room)?, feed).await {
                Ok(subscribed) => break subscribed,
                Err(e)
                    if format!("{e:#}").contains("No such feed")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(Failure::new("janus_subscribe", format!("{e:#}"))),
            }
        };
        Ok(Subscribed {
            participant_id: None,
            server_sdp: subscribed.offer_sdp,
            session: Box::new(JanusSession {
                client: self.client.clone(),
                handle: subscribed.handle,
            }),
        })
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        let server = self
            .server
            .lock()
            .map_err(|_| anyhow!("janus server lock poisoned"))?
            .take();
        if let Some(server) = server {
            // Dropping stops it (SIGTERM, then SIGKILL) and removes its folder;
            // that blocks for up to a few seconds, off the runtime thread.
            tokio::task::spawn_blocking(move || drop(server))
                .await
                .context("stopping janus")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn janus_urls_name_the_api_address() {
        assert_eq!(
            parse_url("http://127.0.0.1:8088/janus").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 8088)))
        );
        assert_eq!(
            parse_url("http://127.0.0.1:8088").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 8088)))
        );
        assert!(parse_url("https://127.0.0.1:8089/janus").is_err());
        assert!(parse_url("http://localhost:8088/janus").is_err());
    }
}
