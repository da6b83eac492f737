//! `onstage-loadtest media`: loads a server's media plane with real WebRTC peers
//! and measures what subscribers receive and what it costs the server.
//!
//! Why it exists: browser-grade clients (aiortc, Chromium) cost far more CPU per
//! peer than the SFU they talk to, so they cannot load one core of a server past
//! a few dozen subscribers. This tool's peers are str0m `Rtc`s like the
//! server's own, fed synthetic frames ([`synth`]) instead of an encoder's (or
//! a real encoder's H.264 file, looped: [`h264file`], `--video-file`), and
//! its subscribers stop at RTP (no depacketizing, no decoding), many per socket
//! and thread ([`shard`], [`net`]).
//!
//! A run: create the rooms, publish (one synthetic camera per publisher, audio +
//! video), optionally replicate stage 1's publisher into more stages, join the
//! subscribers at `--ramp` per second, settle, then measure for `--duration`
//! (or step through `--step-subscribers`), printing one line a second; then
//! leave, check the participant list and delete the rooms. Signaling goes
//! through a [`target::Target`], so the same load runs against onstage or Janus.

mod h264file;
mod http;
mod janus;
mod net;
mod onstage;
mod packetize;
mod peer;
mod procstat;
mod report;
mod shard;
mod stats;
mod synth;
pub mod target;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::oneshot;

use self::h264file::H264File;
use self::net::LoopbackAddresses;
use self::peer::{PeerFactory, local_addr};
use self::report::{ChurnResult, MediaReport, PublisherTime, Reading, SecondSample, Step, Window};
use self::shard::{NewPeer, NewRole, Shard};
use self::stats::{Failures, Percentiles, Totals};
use self::synth::{VideoCodec, VideoShape};
use self::target::{Failure, Room, Session, SubscribeMode, Target};
use crate::parse_duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    Onstage,
    /// Janus VideoRoom (the server makes subscribe offers).
    Janus,
}

/// Preset combinations of the flags below; flags given explicitly win.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 1 publisher → --subscribers (default 50); add --step-subscribers to find the ceiling.
    Fanout,
    /// 12 publishers each subscribed to the other 11, plus --subscribers viewers (default 10).
    Meeting,
    /// Stage 1's publisher replicated into 5 more stages, --subscribers (default 20) in each.
    Replication,
    /// --subscribers steady viewers (default 20) plus --churn joins and leaves per second (default 10).
    Churn,
}

/// Which publishers of its stage a subscriber subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeTo {
    /// One subscription (one peer) per publisher of the stage.
    All,
    /// Only the stage's first publisher.
    First,
}

#[derive(Args, Clone, Debug)]
pub struct MediaArgs {
    /// The server under test.
    #[arg(long, value_enum, default_value = "onstage")]
    pub target: TargetKind,
    /// A preset: fanout, meeting, replication or churn.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Base URL of the onstage API.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    pub endpoint: String,
    #[arg(long, default_value = "onstage")]
    pub access_key_id: String,
    #[arg(long, default_value = "onstage-secret")]
    pub secret_access_key: String,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Stages (rooms) to create, each with its own publishers and subscribers [default: 1].
    #[arg(long)]
    pub stages: Option<u32>,
    /// Publishers per stage [default: 1; meeting: 12].
    #[arg(long)]
    pub publishers: Option<u32>,
    /// Subscribers per stage (and per replica stage), each subscribing to every
    /// publisher of its stage or only the first (--subscribe-to) [default: 10].
    #[arg(long)]
    pub subscribers: Option<u32>,
    #[arg(long, value_enum, default_value = "all")]
    pub subscribe_to: SubscribeTo,
    /// Every publisher also subscribes to the other publishers of its stage (a meeting).
    #[arg(long)]
    pub publishers_subscribe: bool,
    /// Replicate stage 1's first publisher into this many extra stages
    /// (StartParticipantReplication), each with --subscribers subscribers [default: 0].
    #[arg(long)]
    pub replications: Option<u32>,
    /// How long to measure after every subscriber has joined.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Video bitrate of each publisher: 2.5M, 800k or bits per second.
    #[arg(long, default_value = "2.5M", value_parser = parse_bitrate)]
    pub bitrate: u64,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=120))]
    pub fps: u32,
    /// Time between scheduled keyframes (each about 9 delta frames big).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub keyframe_interval: Duration,
    /// Bytes of each 20 ms audio frame (Opus at ~64 kbit/s: 160).
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u32).range(40..=1200))]
    pub audio_bytes: u32,
    /// Video codec of the synthetic publishers [default: vp8; h264 with --video-file].
    #[arg(long, value_enum)]
    pub codec: Option<VideoCodec>,
    /// Publish the access units of this H.264 Annex B file, looped, instead of
    /// synthetic frames (a stream a recorder can decode): its frame rate comes
    /// from the file's SPS (else --fps); --bitrate and --keyframe-interval do
    /// not apply. E.g. `ffmpeg -f lavfi -i testsrc2=s=1280x720:r=30 -t 10
    /// -c:v libx264 -profile:v baseline -bf 0 -g 60 -b:v 2500k -f h264 FILE`.
    #[arg(long)]
    pub video_file: Option<PathBuf>,
    /// onstage target: create a storage configuration for this bucket and
    /// every stage of the run with automatic participant recording into it.
    #[arg(long)]
    pub record_bucket: Option<String>,
    /// With --record-bucket: a thumbnail every this many seconds (1-86400,
    /// SEQUENTIAL); without it, thumbnails are off.
    #[arg(long, requires = "record_bucket", value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub record_thumbnail_interval: Option<u32>,
    /// Publishers pace video as libwebrtc does, at this many times --bitrate
    /// (a keyframe then takes ~100 ms to send); 0 sends each frame as one burst.
    #[arg(long, default_value_t = 2.5)]
    pub pacing_factor: f64,
    /// Subscriptions started per second while joining.
    #[arg(long, default_value_t = 50.0)]
    pub ramp: f64,
    /// Extra subscribers joining per second (each leaving after --churn-hold), on
    /// top of the steady ones, for the whole --duration [default: 0; churn: 10].
    #[arg(long)]
    pub churn: Option<f64>,
    /// How long each churning subscriber stays.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub churn_hold: Duration,
    /// Stepping mode: subscribers per stage at each step, e.g. 25,50,100,200.
    /// Each step joins the extra subscribers, settles, measures for --step-hold;
    /// stepping stops when loss > --max-loss or server CPU ≥ --max-cpu.
    #[arg(long, value_delimiter = ',')]
    pub step_subscribers: Vec<u32>,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub step_hold: Duration,
    /// Wait after the last join before measuring.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Stepping stops above this loss, in percent.
    #[arg(long, default_value_t = 1.0)]
    pub max_loss: f64,
    /// Stepping stops at this server CPU, in percent of one core.
    #[arg(long, default_value_t = 95.0)]
    pub max_cpu: f64,
    /// UDP sockets (and threads) the peers are spread over [default: one per
    /// CPU the tool may run on, so `taskset -c 1` gives one].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sockets: Option<u32>,
    /// Receive and send buffer of each socket, bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub socket_buffer: usize,
    /// The server's process id: its CPU% and RSS are sampled from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Janus target: the HTTP API of a running Janus (http://127.0.0.1:8088/janus),
    /// whose ICE address must be 198.18.0.1 in the benchmark namespace.
    /// Without it the tool starts Janus itself (in its own benchmark namespace
    /// unless already in one), samples it and stops it at the end.
    #[arg(long)]
    pub janus_url: Option<String>,
    /// Janus target: pin the Janus the tool starts to these CPUs (taskset -c list).
    #[arg(long)]
    pub janus_cpus: Option<String>,
    /// Janus target: log level (0-7) of the Janus the tool starts.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=7))]
    pub janus_debug_level: u8,
    /// Janus target: event loops shared by its PeerConnections (Janus's
    /// `event_loops`); 0 keeps Janus's default, one thread per PeerConnection.
    #[arg(long, default_value_t = 0)]
    pub janus_event_loops: u32,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, factor) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a bitrate: {s:?} (try 2.5M, 800k)"))?;
    let bits = value * factor;
    if !(bits.is_finite() && bits >= 10_000.0) {
        return Err(format!("bitrate must be at least 10k: {s:?}"));
    }
    Ok(bits as u64)
}

/// The flags after the preset is applied.
#[derive(Clone, Debug, Serialize)]
struct Plan {
    stages: u32,
    publishers: u32,
    subscribers: u32,
    subscribe_to: SubscribeTo,
    publishers_subscribe: bool,
    replications: u32,
    churn_per_second: f64,
    churn_hold_seconds: f64,
    steps: Vec<u32>,
    duration_seconds: f64,
    bitrate: u64,
    fps: u32,
    codec: VideoCodec,
    /// The H.264 file published instead of synthetic frames.
    video_file: Option<PathBuf>,
    /// Stages record every publisher into this bucket.
    record_bucket: Option<String>,
    record_thumbnail_interval_seconds: Option<u32>,
    pacing_factor: f64,
    delta_frame_bytes: usize,
    keyframe_bytes: usize,
    audio_frame_bytes: u32,
    sockets: u32,
}

impl Plan {
    fn from_args(a: &MediaArgs, shape: &VideoShape) -> anyhow::Result<Plan> {
        let (stages, publishers, subscribers, replications, churn, meeting) = match a.scenario {
            None => (1, 1, 10, 0, 0.0, false),
            Some(Scenario::Fanout) => (1, 1, 50, 0, 0.0, false),
            Some(Scenario::Meeting) => (1, 12, 10, 0, 0.0, true),
            Some(Scenario::Replication) => (1, 1, 20, 5, 0.0, false),
            Some(Scenario::Churn) => (1, 1, 20, 0, 10.0, false),
        };
        let plan = Plan {
            stages: a.stages.unwrap_or(stages),
            publishers: a.publishers.unwrap_or(publishers),
            subscribers: a.subscribers.unwrap_or(subscribers),
            subscribe_to: a.subscribe_to,
            publishers_subscribe: a.publishers_subscribe || meeting,
            replications: a.replications.unwrap_or(replications),
            churn_per_second: a.churn.unwrap_or(churn),
            churn_hold_seconds: a.churn_hold.as_secs_f64(),
            steps: a.step_subscribers.clone(),
            duration_seconds: a.duration.as_secs_f64(),
            bitrate: shape.bits_per_second,
            fps: shape.fps,
            codec: shape.codec,
            video_file: a.video_file.clone(),
            record_bucket: a.record_bucket.clone(),
            record_thumbnail_interval_seconds: a.record_thumbnail_interval,
            pacing_factor: a.pacing_factor,
            delta_frame_bytes: shape.delta_bytes,
            keyframe_bytes: shape.key_bytes,
            audio_frame_bytes: a.audio_bytes,
            // More shard threads than cores only adds context switches and
            // smaller receive batches: 4 threads on one core cost ~10% more
            // CPU per packet than 1.
            sockets: a.sockets.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(64).min(64))
            }),
        };
        if plan.record_bucket.is_some() && a.target != TargetKind::Onstage {
            bail!("--record-bucket needs the onstage target");
        }
        if plan.stages == 0 || plan.publishers == 0 {
            bail!("--stages and --publishers must be at least 1");
        }
        if a.ramp.is_nan() || a.ramp <= 0.0 {
            bail!("--ramp must be positive");
        }
        if !(plan.pacing_factor >= 0.0 && plan.pacing_factor.is_finite()) {
            bail!("--pacing-factor must be 0 (no pacing) or positive");
        }
        if plan.churn_per_second < 0.0 {
            bail!("--churn must not be negative");
        }
        if plan.steps.windows(2).any(|w| w[1] <= w[0]) {
            bail!("--step-subscribers must increase: {:?}", plan.steps);
        }
        Ok(plan)
    }
}

/// A subscriber peer: where it lives and how it leaves.
struct Subscription {
    shard: usize,
    local: Ipv4Addr,
    participant_id: Option<String>,
    session: Box<dyn Session>,
}

/// A publisher peer.
struct PublisherPeer {
    shard: usize,
    local: Ipv4Addr,
    publisher_id: String,
    connected_at: Instant,
    session: Box<dyn Session>,
}

/// What every signaling task needs.
struct Ctx {
    target: Box<dyn Target>,
    factory: PeerFactory,
    shards: Vec<Shard>,
    addresses: LoopbackAddresses,
    failures: Arc<Failures>,
    next_shard: AtomicUsize,
    /// Subscriber peers that should be connected now (for the progress line).
    wanted_subscribers: AtomicU64,
    shape: VideoShape,
    /// The real stream publishers send, if any.
    file: Option<Arc<H264File>>,
    audio_bytes: usize,
    pacing_factor: f64,
}

impl Ctx {
    fn pick_shard(&self) -> usize {
        self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len()
    }

    fn totals(&self) -> Totals {
        let mut sum = Totals::default();
        for s in &self.shards {
            sum.add(&s.totals());
        }
        sum
    }

    fn ports(&self) -> Vec<u16> {
        self.shards.iter().map(Shard::port).collect()
    }
}

/// Publishes one synthetic camera and waits until it is connected.
async fn publish(ctx: &Ctx, room: &Room, index: u32, user: &str) -> anyhow::Result<PublisherPeer> {
    let shard = ctx.pick_shard();
    let local = ctx.addresses.next()?;
    let offering = ctx
        .factory
        .publisher(local_addr(local, ctx.shards[shard].port()), ctx.shape.codec)?;
    let published = ctx.target.publish(room, user, offering.offer_sdp()).await?;
    let (rtc, audio, video) = offering.accept(&published.answer_sdp)?;
    let (tell, connected) = oneshot::channel();
    ctx.shards[shard].add(NewPeer {
        local,
        rtc,
        role: NewRole::Publisher {
            index,
            audio,
            video,
            shape: ctx.shape,
            audio_bytes: ctx.audio_bytes,
            pacing_factor: ctx.pacing_factor,
            file: ctx.file.clone(),
        },
        on_connected: Some(tell),
    })?;
    match tokio::time::timeout(Duration::from_secs(20), connected).await {
        Ok(Ok(())) => {}
        _ => bail!("publisher {user} did not connect"),
    }
    Ok(PublisherPeer {
        shard,
        local,
        connected_at: Instant::now(),
        publisher_id: published.publisher_id,
        session: published.session,
    })
}

/// Subscribes to one publisher; the peer connects on its shard afterwards.
async fn subscribe(
    ctx: &Ctx,
    room: &Room,
    publisher_id: &str,
    user: &str,
) -> anyhow::Result<Subscription> {
    let shard = ctx.pick_shard();
    let local = ctx.addresses.next()?;
    let addr = local_addr(local, ctx.shards[shard].port());
    let join_started = Instant::now();
    let (rtc, subscribed) = match ctx.target.subscribe_mode() {
        SubscribeMode::ClientOffers => {
            let offering = ctx.factory.subscriber_offering(addr)?;
            let subscribed = ctx
                .target
                .subscribe(room, publisher_id, user, Some(offering.offer_sdp()))
                .await?;
            let (rtc, _, _) = offering
                .accept(&subscribed.server_sdp)
                .map_err(|e| Failure::new("sdp_answer", format!("{e:#}")))?;
            (rtc, subscribed)
        }
        SubscribeMode::ServerOffers => {
            let mut subscribed = ctx.target.subscribe(room, publisher_id, user, None).await?;
            let (rtc, answer) = ctx
                .factory
                .subscriber_answering(addr, &subscribed.server_sdp)
                .map_err(|e| Failure::new("sdp_offer", format!("{e:#}")))?;
            subscribed.session.answer(answer).await?;
            (rtc, subscribed)
        }
    };
    ctx.shards[shard].add(NewPeer {
        local,
        rtc,
        role: NewRole::Subscriber { join_started },
        on_connected: None,
    })?;
    Ok(Subscription {
        shard,
        local,
        participant_id: subscribed.participant_id,
        session: subscribed.session,
    })
}

async fn leave_subscription(ctx: &Ctx, s: Subscription) {
    ctx.shards[s.shard].remove(s.local);
    if let Err(e) = s.session.leave().await {
        ctx.failures
            .record(&Failure::kind_of(&e, "leave"), &format!("{e:#}"));
    }
}

/// A stage of the run and the publishers visible in it.
struct StageRun {
    room: Room,
    publisher_ids: Vec<String>,
}

/// Per-second progress: reads the shards, samples the server, prints a line.
struct Monitor {
    server_pid: Option<u32>,
    started: Instant,
    last: Option<Reading>,
    seconds: Vec<SecondSample>,
}

impl Monitor {
    fn read(&self, ctx: &Ctx) -> Reading {
        Reading {
            at: Instant::now(),
            totals: ctx.totals(),
            server: self.server_pid.and_then(|p| procstat::sample(Some(p))),
            tool: procstat::sample(None),
            socket_drops: net::socket_drops(&ctx.ports()),
        }
    }

    fn tick(&mut self, ctx: &Ctx) {
        let now = self.read(ctx);
        if let Some(last) = &self.last {
            let w = Window::between(last, &now, &[]);
            self.seconds.push(SecondSample {
                at: now.at,
                server_cpu: w.server_cpu_percent_avg,
                server_rss_kib: now.server.map(|s| s.rss_kib),
            });
            eprintln!(
                "{}",
                w.line(
                    now.at.duration_since(self.started).as_secs_f64(),
                    ctx.wanted_subscribers.load(Ordering::Relaxed)
                )
            );
        }
        self.last = Some(now);
    }
}

/// Runs the monitor once a second until told to stop; keeps the samples.
fn spawn_monitor(ctx: Arc<Ctx>, monitor: Arc<Mutex<Monitor>>) -> oneshot::Sender<()> {
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => monitor.lock().unwrap_or_else(PoisonError::into_inner).tick(&ctx),
                _ = &mut stopped => break,
            }
        }
    });
    stop
}

/// Starts `jobs` subscriptions at `ramp` per second; returns those that were
/// accepted (failures are counted).
async fn join_all(
    ctx: &Arc<Ctx>,
    jobs: Vec<(Room, String, String)>,
    ramp: f64,
) -> Vec<Subscription> {
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(jobs.len());
    for (i, (room, publisher_id, user)) in jobs.into_iter().enumerate() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / ramp)).await;
        ctx.wanted_subscribers.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            match subscribe(&ctx, &room, &publisher_id, &user).await {
                Ok(s) => Some(s),
                Err(e) => {
                    ctx.wanted_subscribers.fetch_sub(1, Ordering::Relaxed);
                    ctx.failures
                        .record(&Failure::kind_of(&e, "subscribe"), &format!("{e:#}"));
                    None
                }
            }
        }));
    }
    let mut joined = Vec::new();
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            joined.push(s);
        }
    }
    joined
}

/// The subscriptions `count` more viewers per stage make (numbered from `first`).
fn viewer_jobs(
    stages: &[StageRun],
    plan: &Plan,
    first: u32,
    count: u32,
) -> Vec<(Room, String, String)> {
    let mut jobs = Vec::new();
    for v in first..first + count {
        for (si, stage) in stages.iter().enumerate() {
            let publishers = match plan.subscribe_to {
                SubscribeTo::All => &stage.publisher_ids[..],
                SubscribeTo::First => &stage.publisher_ids[..stage.publisher_ids.len().min(1)],
            };
            for (pi, pid) in publishers.iter().enumerate() {
                jobs.push((
                    stage.room.clone(),
                    pid.clone(),
                    format!("viewer-{si}-{v}-{pi}"),
                ));
            }
        }
    }
    jobs
}

/// Churn: a subscriber joins every 1/rate s and leaves after `hold`, until `until`.
async fn churn(
    ctx: Arc<Ctx>,
    stages: Vec<(Room, String)>,
    rate: f64,
    hold: Duration,
    until: tokio::time::Instant,
) -> ChurnResult {
    let result = Arc::new(Mutex::new(ChurnResult::default()));
    let left_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    let started = tokio::time::Instant::now();
    let mut n = 0u64;
    loop {
        let at = started + Duration::from_secs_f64(n as f64 / rate);
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at).await;
        let (room, publisher_id) = stages[n as usize % stages.len()].clone();
        let (ctx, result, left_ids) = (ctx.clone(), result.clone(), left_ids.clone());
        let user = format!("churn-{n}");
        tasks.push(tokio::spawn(async move {
            ctx.wanted_subscribers.fetch_add(1, Ordering::Relaxed);
            match subscribe(&ctx, &room, &publisher_id, &user).await {
                Ok(s) => {
                    result.lock().unwrap_or_else(PoisonError::into_inner).joins += 1;
                    tokio::time::sleep(hold).await;
                    let id = s.participant_id.clone();
                    leave_subscription(&ctx, s).await;
                    result.lock().unwrap_or_else(PoisonError::into_inner).leaves += 1;
                    if let Some(id) = id {
                        left_ids
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(id);
                    }
                }
                Err(e) => {
                    result
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .join_failures += 1;
                    ctx.failures
                        .record(&Failure::kind_of(&e, "subscribe"), &format!("{e:#}"));
                }
            }
            ctx.wanted_subscribers.fetch_sub(1, Ordering::Relaxed);
        }));
        n += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut out = result
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    // Participants that left must not stay CONNECTED: ask, allowing the server a
    // few seconds to process the last leaves.
    let left: HashSet<String> = left_ids
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    let rooms: Vec<Room> = {
        let mut seen = HashSet::new();
        stages
            .iter()
            .filter(|(r, _)| seen.insert(r.id.clone()))
            .map(|(r, _)| r.clone())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stuck = Vec::new();
        let mut unsupported = false;
        for room in &rooms {
            match ctx.target.connected_participants(room).await {
                Ok(ids) => stuck.extend(ids.into_iter().filter(|id| left.contains(id))),
                Err(e) => {
                    eprintln!("note: cannot check for stuck participants: {e:#}");
                    unsupported = true;
                }
            }
        }
        if unsupported || stuck.is_empty() || Instant::now() >= deadline {
            out.stuck_connected = stuck;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

/// Waits out `period`, measuring it: the window between its start and end.
async fn measure(ctx: &Ctx, monitor: &Arc<Mutex<Monitor>>, period: Duration) -> Window {
    let start = monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .read(ctx);
    tokio::time::sleep(period).await;
    let m = monitor.lock().unwrap_or_else(PoisonError::into_inner);
    let end = m.read(ctx);
    Window::between(&start, &end, &m.seconds)
}

/// The video every publisher sends: synthetic frames of the codec, or a file's.
fn video_source(args: &MediaArgs) -> anyhow::Result<(VideoShape, Option<Arc<H264File>>)> {
    let Some(path) = &args.video_file else {
        let codec = args.codec.unwrap_or(VideoCodec::Vp8);
        let shape = VideoShape::new(codec, args.bitrate, args.fps, args.keyframe_interval);
        return Ok((shape, None));
    };
    if args.codec == Some(VideoCodec::Vp8) {
        bail!("--codec vp8 cannot send --video-file, an H.264 stream");
    }
    let file = H264File::read(path)?;
    let fps = file.fps.unwrap_or(f64::from(args.fps));
    let (delta_bytes, key_bytes, gop) = file.shape();
    let shape = VideoShape {
        codec: VideoCodec::H264,
        bits_per_second: file.bits_per_second(fps),
        // The frame clock ticks in whole frames per second (29.97 → 30).
        fps: (fps.round() as u32).max(1),
        gop,
        delta_bytes,
        key_bytes,
    };
    eprintln!(
        "video file {}: {} frames at {fps} fps, {} kbit/s, a keyframe every {gop} frames",
        path.display(),
        file.frames.len(),
        shape.bits_per_second / 1000,
    );
    Ok((shape, Some(file)))
}

pub async fn run(args: MediaArgs) -> anyhow::Result<MediaReport> {
    let (shape, file) = video_source(&args)?;
    let plan = Plan::from_args(&args, &shape)?;
    let target: Box<dyn Target> = match args.target {
        TargetKind::Onstage => {
            let mut onstage = onstage::Onstage::new(
                &args.endpoint,
                &args.access_key_id,
                &args.secret_access_key,
                &args.region,
            )?;
            if let Some(bucket) = &args.record_bucket {
                onstage
                    .record_into(bucket, args.record_thumbnail_interval)
                    .await
                    .context("could not set up recording")?;
            }
            Box::new(onstage)
        }
        TargetKind::Janus => {
            if args.janus_url.is_none() {
                // Janus needs the benchmark namespace (see `janus`); entering it
                // moves this thread only, so it must come before any other
                // thread exists: the runtime is current-thread and nothing has
                // been spawned yet. A no-op inside scripts/bench-netns.
                crate::janus::enter_bench_netns().context("janus target")?;
            }
            let settings = janus::JanusSettings {
                url: args.janus_url.clone(),
                cpus: args.janus_cpus.clone(),
                debug_level: args.janus_debug_level,
                event_loops: args.janus_event_loops,
                codec: shape.codec,
            };
            Box::new(janus::JanusTarget::connect(&settings).await?)
        }
    };
    let server_pid = args.server_pid.or_else(|| target.server_pid());
    if server_pid.is_none() {
        eprintln!(
            "note: no --server-pid: server CPU, RSS and forwarded packets per core are not measured"
        );
    }
    let failures = Arc::new(Failures::default());
    let shards = (0..plan.sockets as usize)
        .map(|i| Shard::start(i, args.socket_buffer, failures.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ctx = Arc::new(Ctx {
        target,
        factory: PeerFactory::new()?,
        shards,
        addresses: match args.target {
            TargetKind::Onstage => LoopbackAddresses::new(),
            TargetKind::Janus => LoopbackAddresses::range(
                crate::janus::PEER_ADDRESSES.0,
                crate::janus::PEER_ADDRESSES.1,
            ),
        },
        failures: failures.clone(),
        next_shard: AtomicUsize::new(0),
        wanted_subscribers: AtomicU64::new(0),
        shape,
        file,
        audio_bytes: args.audio_bytes as usize,
        pacing_factor: args.pacing_factor,
    });
    eprintln!("plan: {}", serde_json::to_string(&plan)?);

    let monitor = Arc::new(Mutex::new(Monitor {
        server_pid,
        started: Instant::now(),
        last: None,
        seconds: Vec::new(),
    }));
    let stop_monitor = spawn_monitor(ctx.clone(), monitor.clone());

    let mut stages: Vec<StageRun> = Vec::new();
    let mut publishers: Vec<PublisherPeer> = Vec::new();
    let mut subscriptions: Vec<Subscription> = Vec::new();
    let mut replicas: Vec<Room> = Vec::new();
    let outcome = drive(
        &ctx,
        &plan,
        &args,
        &monitor,
        &mut stages,
        &mut publishers,
        &mut subscriptions,
        &mut replicas,
    )
    .await;

    // Leave in an order that closes nothing under anyone: subscribers, then
    // replications, then publishers.
    eprintln!(
        "leaving: {} subscriptions, {} publishers",
        subscriptions.len(),
        publishers.len()
    );
    for s in &ctx.shards {
        s.set_quiet();
    }
    let mut leaving = Vec::new();
    for s in subscriptions.drain(..) {
        let ctx = ctx.clone();
        leaving.push(tokio::spawn(
            async move { leave_subscription(&ctx, s).await },
        ));
        if leaving.len() >= 64 {
            for t in leaving.drain(..) {
                let _ = t.await;
            }
        }
    }
    for t in leaving {
        let _ = t.await;
    }
    if let (Some(source), Some(first)) = (stages.first(), publishers.first()) {
        for r in &replicas {
            if let Err(e) = ctx
                .target
                .stop_replication(&source.room, &first.publisher_id, r)
                .await
            {
                ctx.failures.record("stop_replication", &format!("{e:#}"));
            }
        }
    }
    let mut publisher_times = Vec::new();
    for p in publishers.drain(..) {
        publisher_times.push(PublisherTime {
            publisher_id: p.publisher_id.clone(),
            seconds: p.connected_at.elapsed().as_secs_f64(),
        });
        ctx.shards[p.shard].remove(p.local);
        if let Err(e) = p.session.leave().await {
            ctx.failures
                .record(&Failure::kind_of(&e, "leave"), &format!("{e:#}"));
        }
    }
    ctx.wanted_subscribers.store(0, Ordering::Relaxed);
    // Replica destinations are among the stages.
    let all_rooms: Vec<Room> = stages.iter().map(|s| s.room.clone()).collect();
    let connected_after_leaving = connected_after_leaving(&ctx, &all_rooms).await;
    let _ = stop_monitor.send(());
    for room in &all_rooms {
        if let Err(e) = ctx.target.delete_room(room).await {
            eprintln!("warning: could not delete {}: {e:#}", room.name);
        }
    }
    if let Err(e) = ctx.target.shutdown().await {
        eprintln!("warning: target shutdown: {e:#}");
    }

    let (measured, steps, churn) = outcome?;
    let totals = ctx.totals();
    let report = MediaReport {
        target: ctx.target.name().to_owned(),
        scenario: args.scenario.map(|s| format!("{s:?}").to_lowercase()),
        endpoint: ctx
            .target
            .endpoint()
            .unwrap_or_else(|| args.endpoint.clone()),
        plan: serde_json::to_value(&plan)?,
        measured,
        steps,
        join_ms: Percentiles::of_micros(&totals.join_us),
        first_video_ms: Percentiles::of_micros(&totals.first_video_us),
        failures: failures.snapshot(),
        churn,
        connected_after_leaving,
        publishers: publisher_times,
    };
    report.print();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("could not write {}", path.display()))?;
        println!("wrote                    {}", path.display());
    }
    Ok(report)
}

/// Participants still CONNECTED in any room, after allowing a few seconds.
async fn connected_after_leaving(ctx: &Ctx, rooms: &[Room]) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut connected = 0u64;
        for room in rooms {
            match ctx.target.connected_participants(room).await {
                Ok(ids) => connected += ids.len() as u64,
                Err(_) => return None,
            }
        }
        if connected == 0 || Instant::now() >= deadline {
            return Some(connected);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

type Outcome = (Option<Window>, Vec<Step>, Option<ChurnResult>);

/// Everything between setup and teardown; what it created is left in the
/// vectors so the caller can clean up even after a failure.
#[allow(clippy::too_many_arguments)]
async fn drive(
    ctx: &Arc<Ctx>,
    plan: &Plan,
    args: &MediaArgs,
    monitor: &Arc<Mutex<Monitor>>,
    stages: &mut Vec<StageRun>,
    publishers: &mut Vec<PublisherPeer>,
    subscriptions: &mut Vec<Subscription>,
    replicas: &mut Vec<Room>,
) -> anyhow::Result<Outcome> {
    let run_id = crate::api::unix_now();
    for i in 0..plan.stages {
        let room = ctx
            .target
            .create_room(&format!("load-{run_id}-{i}"), plan.publishers)
            .await?;
        stages.push(StageRun {
            room,
            publisher_ids: Vec::new(),
        });
    }

    // Publishers, all connected before anyone subscribes.
    let mut index = 0u32;
    for (si, stage) in stages.iter_mut().enumerate() {
        for p in 0..plan.publishers {
            let user = format!("publisher-{si}-{p}");
            let peer = publish(ctx, &stage.room, index, &user)
                .await
                .with_context(|| format!("could not start {user}"))?;
            stage.publisher_ids.push(peer.publisher_id.clone());
            publishers.push(peer);
            index += 1;
        }
    }
    eprintln!("{} publishers connected", publishers.len());

    for r in 0..plan.replications {
        let room = ctx
            .target
            .create_room(&format!("load-{run_id}-replica-{r}"), 1)
            .await?;
        replicas.push(room.clone());
        let (source, first) = (&stages[0].room, &stages[0].publisher_ids[0]);
        ctx.target
            .replicate(source, first, &room)
            .await
            .context("StartParticipantReplication")?;
        stages.push(StageRun {
            room,
            publisher_ids: vec![first.clone()],
        });
    }
    if plan.replications > 0 {
        eprintln!(
            "stage 1's publisher replicated into {} stages",
            plan.replications
        );
    }

    // A meeting: every publisher also watches the others of its stage.
    if plan.publishers_subscribe {
        let mut jobs = Vec::new();
        for (si, stage) in stages.iter().enumerate().take(plan.stages as usize) {
            for (a, _) in stage.publisher_ids.iter().enumerate() {
                for (b, pid) in stage.publisher_ids.iter().enumerate() {
                    if a != b {
                        jobs.push((
                            stage.room.clone(),
                            pid.clone(),
                            format!("publisher-{si}-{a}-watches-{b}"),
                        ));
                    }
                }
            }
        }
        eprintln!(
            "meeting: {} publisher-to-publisher subscriptions",
            jobs.len()
        );
        subscriptions.extend(join_all(ctx, jobs, args.ramp).await);
    }

    if !plan.steps.is_empty() {
        let mut steps = Vec::new();
        let mut have = 0u32;
        for &want in &plan.steps {
            let jobs = viewer_jobs(stages, plan, have, want - have);
            eprintln!(
                "step: {want} subscribers per stage ({} new subscriptions)",
                jobs.len()
            );
            subscriptions.extend(join_all(ctx, jobs, args.ramp).await);
            have = want;
            tokio::time::sleep(args.settle).await;
            let result = measure(ctx, monitor, args.step_hold).await;
            let mut stop = None;
            let loss = result.loss_percent.max(result.frame_loss_percent);
            if loss > args.max_loss {
                stop = Some(format!(
                    "loss {:.2}% of packets, {:.2}% of frames > {}%",
                    result.loss_percent, result.frame_loss_percent, args.max_loss
                ));
            } else if result
                .server_cpu_percent_avg
                .is_some_and(|c| c >= args.max_cpu)
            {
                stop = Some(format!(
                    "server CPU {:.0}% ≥ {}%",
                    result.server_cpu_percent_avg.unwrap_or_default(),
                    args.max_cpu
                ));
            } else if result.subscribers_connected
                < ctx.wanted_subscribers.load(Ordering::Relaxed) * 9 / 10
            {
                stop = Some(format!(
                    "only {} of {} subscribers connected",
                    result.subscribers_connected,
                    ctx.wanted_subscribers.load(Ordering::Relaxed)
                ));
            }
            result.print(&format!("step {want} subscribers per stage"));
            let done = stop.is_some();
            steps.push(Step {
                subscribers_per_stage: want,
                result,
                stopped_because: stop,
            });
            if done {
                break;
            }
        }
        return Ok((None, steps, None));
    }

    let jobs = viewer_jobs(stages, plan, 0, plan.subscribers);
    eprintln!("joining {} subscriptions at {}/s", jobs.len(), args.ramp);
    subscriptions.extend(join_all(ctx, jobs, args.ramp).await);
    tokio::time::sleep(args.settle).await;

    eprintln!("measuring for {:.0} s", args.duration.as_secs_f64());
    let churning = (plan.churn_per_second > 0.0).then(|| {
        let targets: Vec<(Room, String)> = stages
            .iter()
            .filter_map(|s| Some((s.room.clone(), s.publisher_ids.first()?.clone())))
            .collect();
        let until = tokio::time::Instant::now() + args.duration;
        tokio::spawn(churn(
            ctx.clone(),
            targets,
            plan.churn_per_second,
            args.churn_hold,
            until,
        ))
    });
    let measured = measure(ctx, monitor, args.duration).await;
    let churn_result = match churning {
        Some(task) => Some(task.await.map_err(|e| anyhow!("churn task failed: {e}"))?),
        None => None,
    };
    Ok((Some(measured), Vec::new(), churn_result))
}
