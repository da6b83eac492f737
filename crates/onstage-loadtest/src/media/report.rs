//! Readings, windows and the printed and JSON results of a media run.
//!
//! A [`Reading`] is everything cumulative at one instant (the shards' totals,
//! the server's and the tool's CPU ticks, the kernel's drop count for the
//! tool's sockets); a [`Window`] is what happened between two readings. The
//! per-second line is the window since the previous second; a step's or the
//! run's result is the window over its measurement period, with CPU and RSS
//! maxima taken from the per-second samples inside it.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::procstat::{self, ProcSample};
use super::stats::{Percentiles, Totals, loss_percent};

pub struct Reading {
    pub at: Instant,
    pub totals: Totals,
    pub server: Option<ProcSample>,
    pub tool: Option<ProcSample>,
    pub socket_drops: u64,
}

/// One second's server figures, kept for the maxima and averages of a window.
#[derive(Clone, Copy)]
pub struct SecondSample {
    pub at: Instant,
    pub server_cpu: Option<f64>,
    pub server_rss_kib: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    pub seconds: f64,
    /// Subscriber peers (one per subscription) connected at the end.
    pub subscribers_connected: u64,
    pub publishers_connected: u64,
    pub rx_packets_per_second: f64,
    pub rx_bits_per_second: f64,
    /// RTP packets expected (from sequence numbers) but not received, in percent.
    pub loss_percent: f64,
    /// Publisher frames missing at subscribers (gaps in the frame counters
    /// stamped into every packet: no packet of the frame arrived), in percent:
    /// loss before the SFU or inside it.
    pub frame_loss_percent: f64,
    /// Mean RFC 3550 interarrival jitter of the video streams at the end, ms.
    pub video_jitter_ms: Option<f64>,
    /// Added latency of the SFU, per packet: the packet's arrival on a
    /// subscriber's socket (the kernel's receive timestamp) − the time its
    /// publisher handed it to str0m (stamped into every packet, so a paced
    /// keyframe's last packet counts from its own send time, not the frame's).
    /// Packets an SFU repacketized without their stamp near the start are not
    /// counted.
    pub latency_ms: Percentiles,
    /// The same until the tool read the packet: adds the time it waited in the
    /// tool's socket, which grows when the tool's own core is busy.
    pub read_latency_ms: Percentiles,
    /// Subscribe POST → first RTP packet, for subscribers that joined in the window.
    pub join_ms: Percentiles,
    pub server_cpu_percent_avg: Option<f64>,
    pub server_cpu_percent_max: Option<f64>,
    pub server_rss_mib_avg: Option<f64>,
    pub server_rss_mib_max: Option<f64>,
    pub tool_cpu_percent: Option<f64>,
    /// rx packets/s ÷ (server CPU% / 100): what one core of the server forwards.
    pub forwarded_packets_per_second_per_core: Option<f64>,
    /// Datagrams the kernel dropped on the tool's own sockets: loss that is the
    /// tool's, not the server's.
    pub tool_socket_drops: u64,
    pub frames_sent_per_second: f64,
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

impl Window {
    pub fn between(a: &Reading, b: &Reading, seconds_samples: &[SecondSample]) -> Window {
        let seconds = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let (ta, tb) = (&a.totals, &b.totals);
        let rx_pps = tb.rtp_packets.saturating_sub(ta.rtp_packets) as f64 / seconds;
        let server_cpu = match (&a.server, &b.server) {
            (Some(x), Some(y)) => Some(procstat::cpu_percent(x, y)),
            _ => None,
        };
        let inside: Vec<&SecondSample> = seconds_samples
            .iter()
            .filter(|s| s.at > a.at && s.at <= b.at)
            .collect();
        let cpu_max = inside
            .iter()
            .filter_map(|s| s.server_cpu)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let rss: Vec<f64> = inside
            .iter()
            .filter_map(|s| s.server_rss_kib)
            .map(|k| k as f64 / 1024.0)
            .collect();
        let rss_now = b.server.map(|s| s.rss_kib as f64 / 1024.0);
        let rss_avg = if rss.is_empty() {
            rss_now
        } else {
            Some(rss.iter().sum::<f64>() / rss.len() as f64)
        };
        let rss_max = rss
            .iter()
            .copied()
            .fold(rss_now, |m, v| Some(m.map_or(v, |m| m.max(v))));
        Window {
            seconds: round(seconds, 2),
            subscribers_connected: tb.subscribers_connected,
            publishers_connected: tb.publishers_connected,
            rx_packets_per_second: round(rx_pps, 1),
            rx_bits_per_second: round(
                tb.rx_bytes.saturating_sub(ta.rx_bytes) as f64 * 8.0 / seconds,
                0,
            ),
            loss_percent: round(
                loss_percent(
                    tb.expected.saturating_sub(ta.expected),
                    tb.received.saturating_sub(ta.received),
                ),
                3,
            ),
            frame_loss_percent: {
                let missing = tb.frames_missing.saturating_sub(ta.frames_missing);
                let seen = tb.frames_received.saturating_sub(ta.frames_received);
                round(loss_percent(missing + seen, seen), 3)
            },
            video_jitter_ms: tb.mean_video_jitter_ms().map(|j| round(j, 3)),
            latency_ms: Percentiles::of_micros(&tb.latency_us.since(&ta.latency_us)),
            read_latency_ms: Percentiles::of_micros(&tb.read_latency_us.since(&ta.read_latency_us)),
            join_ms: Percentiles::of_micros(&tb.join_us.since(&ta.join_us)),
            server_cpu_percent_avg: server_cpu.map(|c| round(c, 1)),
            server_cpu_percent_max: cpu_max.or(server_cpu).map(|c| round(c, 1)),
            server_rss_mib_avg: rss_avg.map(|r| round(r, 1)),
            server_rss_mib_max: rss_max.map(|r| round(r, 1)),
            tool_cpu_percent: match (&a.tool, &b.tool) {
                (Some(x), Some(y)) => Some(round(procstat::cpu_percent(x, y), 1)),
                _ => None,
            },
            forwarded_packets_per_second_per_core: server_cpu
                .filter(|c| *c > 0.5)
                .map(|c| round(rx_pps / (c / 100.0), 0)),
            tool_socket_drops: b.socket_drops.saturating_sub(a.socket_drops),
            frames_sent_per_second: round(
                tb.frames_sent.saturating_sub(ta.frames_sent) as f64 / seconds,
                1,
            ),
        }
    }

    /// The one-line progress report.
    pub fn line(&self, elapsed: f64, wanted_subscribers: u64) -> String {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let server = match (self.server_cpu_percent_avg, self.server_rss_mib_avg) {
            (Some(c), Some(r)) => format!("server {c:>5.1}% {r:>6.1} MiB"),
            _ => "server -".to_owned(),
        };
        let per_core = self
            .forwarded_packets_per_second_per_core
            .map_or_else(String::new, |v| format!("  fwd/core {:.0} pkt/s", v));
        format!(
            "[{elapsed:>5.0}s] subs {}/{} pubs {}  rx {:>8.0} pkt/s {:>7.1} Mbit/s  loss {:>5.2}% (frames {:.2}%)  jitter {} ms  \
             latency p50 {} p99 {} ms  {server}  tool {}%{per_core}{}",
            self.subscribers_connected,
            wanted_subscribers,
            self.publishers_connected,
            self.rx_packets_per_second,
            self.rx_bits_per_second / 1e6,
            self.loss_percent,
            self.frame_loss_percent,
            self.video_jitter_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            ms(self.latency_ms.p50),
            ms(self.latency_ms.p99),
            self.tool_cpu_percent
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            if self.tool_socket_drops > 0 {
                format!("  TOOL DROPS {}", self.tool_socket_drops)
            } else {
                String::new()
            },
        )
    }

    /// The block printed for a measured window.
    pub fn print(&self, title: &str) {
        let opt =
            |v: Option<f64>, unit: &str| v.map_or_else(|| "-".to_owned(), |v| format!("{v}{unit}"));
        let pct = |p: &Percentiles| {
            format!(
                "p50 {} p95 {} p99 {} max {} ({} samples)",
                opt(p.p50, " ms"),
                opt(p.p95, " ms"),
                opt(p.p99, " ms"),
                opt(p.max, " ms"),
                p.samples
            )
        };
        println!("{title} ({:.1} s)", self.seconds);
        println!(
            "  subscribers connected  {}   publishers {}",
            self.subscribers_connected, self.publishers_connected
        );
        println!(
            "  received               {:.0} packets/s, {:.2} Mbit/s",
            self.rx_packets_per_second,
            self.rx_bits_per_second / 1e6
        );
        println!(
            "  loss                   {:.3}% of packets, {:.3}% of frames   (tool socket drops: {})",
            self.loss_percent, self.frame_loss_percent, self.tool_socket_drops
        );
        println!(
            "  video jitter           {}",
            opt(self.video_jitter_ms, " ms")
        );
        println!("  latency                {}", pct(&self.latency_ms));
        println!("    until read by tool   {}", pct(&self.read_latency_ms));
        println!("  join (POST → 1st RTP)  {}", pct(&self.join_ms));
        println!(
            "  server CPU             avg {} max {}   RSS avg {} max {}",
            opt(self.server_cpu_percent_avg, "%"),
            opt(self.server_cpu_percent_max, "%"),
            opt(self.server_rss_mib_avg, " MiB"),
            opt(self.server_rss_mib_max, " MiB")
        );
        println!(
            "  tool CPU               {}",
            opt(self.tool_cpu_percent, "%")
        );
        println!(
            "  forwarded per core     {}",
            self.forwarded_packets_per_second_per_core.map_or_else(
                || "- (give --server-pid)".to_owned(),
                |v| format!("{v:.0} packets/s per server core")
            )
        );
    }
}

/// One step of `--step-subscribers`.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub subscribers_per_stage: u32,
    pub result: Window,
    /// Why stepping stopped after this step, if it did.
    pub stopped_because: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnResult {
    pub joins: u64,
    pub leaves: u64,
    pub join_failures: u64,
    /// Participants that joined and left during churn but are still listed as
    /// CONNECTED by ListParticipants afterwards.
    pub stuck_connected: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MediaReport {
    pub target: String,
    pub scenario: Option<String>,
    pub endpoint: String,
    pub plan: serde_json::Value,
    /// The measured window: the run's `--duration` after ramp-up and settling.
    pub measured: Option<Window>,
    pub steps: Vec<Step>,
    /// Over the whole run, every subscriber that received media.
    pub join_ms: Percentiles,
    pub first_video_ms: Percentiles,
    pub failures: BTreeMap<String, u64>,
    pub churn: Option<ChurnResult>,
    /// Participants still CONNECTED a few seconds after every peer left (None
    /// when the target cannot list participants).
    pub connected_after_leaving: Option<u64>,
    /// Each publisher's id on the target and how long it published: from its
    /// connection to its leave request (what a recording of it should last).
    pub publishers: Vec<PublisherTime>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PublisherTime {
    pub publisher_id: String,
    pub seconds: f64,
}

impl MediaReport {
    pub fn print(&self) {
        println!();
        println!(
            "target                   {} ({})",
            self.target, self.endpoint
        );
        if let Some(s) = &self.scenario {
            println!("scenario                 {s}");
        }
        println!("plan                     {}", self.plan);
        if !self.steps.is_empty() {
            println!("steps:");
            println!(
                "  {:>6} {:>6} {:>10} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>12}",
                "subs",
                "conn",
                "rx pkt/s",
                "Mbit/s",
                "loss%",
                "frame%",
                "lat p50",
                "lat p99",
                "srv CPU",
                "RSS MiB",
                "tool%",
                "fwd/core"
            );
            for s in &self.steps {
                let r = &s.result;
                let o = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
                println!(
                    "  {:>6} {:>6} {:>10.0} {:>8.1} {:>7.3} {:>7.3} {:>8} {:>8} {:>8} {:>8} {:>7} {:>12}{}",
                    s.subscribers_per_stage,
                    r.subscribers_connected,
                    r.rx_packets_per_second,
                    r.rx_bits_per_second / 1e6,
                    r.loss_percent,
                    r.frame_loss_percent,
                    o(r.latency_ms.p50),
                    o(r.latency_ms.p99),
                    o(r.server_cpu_percent_avg),
                    o(r.server_rss_mib_max),
                    o(r.tool_cpu_percent),
                    r.forwarded_packets_per_second_per_core
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
                    s.stopped_because
                        .as_ref()
                        .map_or_else(String::new, |why| format!("  stop: {why}")),
                );
            }
        }
        if let Some(m) = &self.measured {
            m.print("measured");
        }
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
        println!(
            "join time (whole run)    p50 {} p95 {} ({} subscribers); first video p50 {} p95 {}",
            opt(self.join_ms.p50),
            opt(self.join_ms.p95),
            self.join_ms.samples,
            opt(self.first_video_ms.p50),
            opt(self.first_video_ms.p95)
        );
        if let Some(c) = &self.churn {
            println!(
                "churn                    {} joins, {} leaves, {} join failures, {} stuck CONNECTED",
                c.joins,
                c.leaves,
                c.join_failures,
                c.stuck_connected.len()
            );
        }
        if let Some(n) = self.connected_after_leaving {
            println!("connected after leaving  {n}");
        }
        if self.failures.is_empty() {
            println!("failures                 none");
        } else {
            println!("failures                 {:?}", self.failures);
        }
        if let Some(v) = self
            .measured
            .as_ref()
            .and_then(|m| m.forwarded_packets_per_second_per_core)
        {
            println!("HEADLINE                 {v:.0} forwarded packets/s per server core");
        }
    }
}
