//! What subscribers measure, kept cheap enough to update for every RTP packet.
//!
//! Each shard thread owns a [`Totals`] and updates it without locks; a few times
//! a second it copies it into a shared slot that the reporter reads. Totals are
//! cumulative (a peer that leaves folds its counts into the shard's), so any
//! window — one second, one step, the whole run — is the difference of two
//! readings. Latencies and join times go into fixed-size log-linear histograms,
//! which subtract bucket by bucket.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Sub-buckets per power of two: values are kept to within 1/64 (~1.6%).
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Powers of two covered above the linear range: up to 2^40 µs (~12 days).
const MAGNITUDES: usize = 40 - SUB_BUCKET_BITS as usize;
const BUCKETS: usize = 2 * SUB_BUCKETS + MAGNITUDES * SUB_BUCKETS;

/// A histogram of non-negative integer values (microseconds here), log-linear.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }
}

impl Histogram {
    fn index(value: u64) -> usize {
        if value < (2 * SUB_BUCKETS) as u64 {
            return value as usize;
        }
        let magnitude = 63 - value.leading_zeros(); // ≥ SUB_BUCKET_BITS + 1
        let shift = magnitude - SUB_BUCKET_BITS;
        let sub = ((value >> shift) as usize) & (SUB_BUCKETS - 1);
        let index = SUB_BUCKETS * (shift as usize + 1) + sub;
        index.min(BUCKETS - 1)
    }

    /// The middle of a bucket's range, for reporting.
    fn value_of(index: usize) -> f64 {
        if index < 2 * SUB_BUCKETS {
            return index as f64;
        }
        let shift = (index / SUB_BUCKETS - 1) as u32;
        let sub = (index % SUB_BUCKETS) as u64 + SUB_BUCKETS as u64;
        let low = sub << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    pub fn record(&mut self, value: u64) {
        self.counts[Self::index(value)] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// `self - earlier`, where `earlier` is an older reading of the same histogram.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let counts: Box<[u64]> = self
            .counts
            .iter()
            .zip(earlier.counts.iter())
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        Histogram {
            counts,
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// The value at quantile `q` (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value_of(i));
            }
        }
        None
    }
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of_micros(h: &Histogram) -> Self {
        let ms = |q| {
            h.quantile(q)
                .map(|us| (us / 1000.0 * 100.0).round() / 100.0)
        };
        Percentiles {
            samples: h.count(),
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            max: ms(1.0),
        }
    }
}

/// One received RTP stream (an SSRC's worth of one media line): loss from
/// extended sequence numbers and interarrival jitter as RFC 3550 §6.4.1 and
/// appendix A.8 compute them.
#[derive(Default, Clone, Copy)]
pub struct StreamStats {
    started: bool,
    base_seq: u64,
    max_seq: u64,
    received: u64,
    /// Jitter estimate in RTP timestamp units, scaled by 16 as in RFC 3550 A.8.
    jitter_x16: u64,
    last_transit: i64,
    clock_rate: u32,
}

impl StreamStats {
    /// `seq` is str0m's extended sequence number, `rtp_time` the extended RTP
    /// timestamp at `clock_rate`, `arrival_ns` the monotonic arrival time.
    pub fn on_packet(&mut self, seq: u64, rtp_time: u64, clock_rate: u32, arrival_ns: u64) {
        let arrival = ((arrival_ns as u128 * clock_rate as u128) / 1_000_000_000) as i64;
        let transit = arrival.wrapping_sub(rtp_time as i64);
        if !self.started {
            self.started = true;
            self.base_seq = seq;
            self.max_seq = seq;
            self.clock_rate = clock_rate;
        } else {
            self.max_seq = self.max_seq.max(seq);
            let d = transit.wrapping_sub(self.last_transit).unsigned_abs();
            // J += (|D| - J) / 16, kept as 16·J in integers.
            self.jitter_x16 = self.jitter_x16 + d - (self.jitter_x16 + 8) / 16;
        }
        self.last_transit = transit;
        self.received += 1;
    }

    pub fn expected(&self) -> u64 {
        if self.started {
            self.max_seq - self.base_seq + 1
        } else {
            0
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Current jitter in milliseconds, if the stream has started.
    pub fn jitter_ms(&self) -> Option<f64> {
        (self.started && self.clock_rate > 0)
            .then(|| self.jitter_x16 as f64 / 16.0 / self.clock_rate as f64 * 1000.0)
    }
}

/// Cumulative counters of one shard (or, summed, of the whole tool).
#[derive(Clone, Default)]
pub struct Totals {
    /// RTP packets received by subscribers (after SRTP, as str0m hands them over).
    pub rtp_packets: u64,
    /// Bytes of every datagram the shard's sockets received.
    pub rx_bytes: u64,
    /// Packets expected and received per RFC 3550, summed over every stream.
    pub expected: u64,
    pub received: u64,
    /// Stamped packets subscribers received: publisher send → arrival on the
    /// subscriber's socket, in µs.
    pub latency_us: Histogram,
    /// The same, until the tool read the packet (adds the tool's own queue).
    pub read_latency_us: Histogram,
    /// WHIP subscribe POST → first RTP packet at that subscriber, in µs.
    pub join_us: Histogram,
    /// WHIP subscribe POST → first video packet (a keyframe's) at that subscriber, in µs.
    pub first_video_us: Histogram,
    /// Frames (audio and video) publishers sent.
    pub frames_sent: u64,
    /// Publisher frames subscribers received, and those missing from the
    /// publishers' frame counters (lost on the way in, or dropped by the SFU).
    pub frames_received: u64,
    pub frames_missing: u64,
    /// Datagrams that arrived for no known peer (late packets of a peer that left).
    pub stray_datagrams: u64,
    pub send_errors: u64,
    /// Gauges, as of the reading: connected subscriber and publisher peers, and
    /// the sum and count of the current jitter of every live video stream.
    pub subscribers_connected: u64,
    pub publishers_connected: u64,
    pub video_jitter_ms_sum: f64,
    pub video_streams: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.rtp_packets += o.rtp_packets;
        self.rx_bytes += o.rx_bytes;
        self.expected += o.expected;
        self.received += o.received;
        self.latency_us.add(&o.latency_us);
        self.read_latency_us.add(&o.read_latency_us);
        self.join_us.add(&o.join_us);
        self.first_video_us.add(&o.first_video_us);
        self.frames_sent += o.frames_sent;
        self.frames_received += o.frames_received;
        self.frames_missing += o.frames_missing;
        self.stray_datagrams += o.stray_datagrams;
        self.send_errors += o.send_errors;
        self.subscribers_connected += o.subscribers_connected;
        self.publishers_connected += o.publishers_connected;
        self.video_jitter_ms_sum += o.video_jitter_ms_sum;
        self.video_streams += o.video_streams;
    }

    pub fn mean_video_jitter_ms(&self) -> Option<f64> {
        (self.video_streams > 0).then(|| self.video_jitter_ms_sum / self.video_streams as f64)
    }
}

/// Failures by kind, shared by the signaling tasks and the shard threads.
/// Rare by nature, so a lock is fine; the first failure of each kind is printed.
#[derive(Default)]
pub struct Failures {
    by_kind: Mutex<BTreeMap<String, u64>>,
}

impl Failures {
    pub fn record(&self, kind: &str, detail: &str) {
        let mut map = self.by_kind.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(kind.to_owned()).or_default();
        if *count == 0 {
            eprintln!("first failure of kind {kind}: {detail}");
        }
        *count += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_kind
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Loss in percent between two readings: packets expected but not received.
/// Retransmissions answered to NACKs count as received, as RFC 3550 counts them.
pub fn loss_percent(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    (expected.saturating_sub(received) as f64 / expected as f64 * 100.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (1.0, 100_000.0)] {
            let got = h.quantile(q).unwrap_or_default();
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        let small = Histogram::default();
        assert_eq!(small.quantile(0.5), None);
    }

    #[test]
    fn histogram_difference_is_the_window() {
        let mut h = Histogram::default();
        h.record(10);
        let before = h.clone();
        h.record(5_000);
        let window = h.since(&before);
        assert_eq!(window.count(), 1);
        assert!((window.quantile(0.5).unwrap_or_default() - 5_000.0).abs() < 100.0);
    }

    #[test]
    fn stream_loss_and_jitter() {
        let mut s = StreamStats::default();
        // 90 kHz, one packet every 10 ms exactly on time: no jitter.
        for i in 0..10u64 {
            if i == 4 {
                continue; // lost
            }
            s.on_packet(100 + i, i * 900, 90_000, i * 10_000_000);
        }
        assert_eq!((s.expected(), s.received()), (10, 9));
        assert!(s.jitter_ms().unwrap_or(1.0) < 0.01);
        // A packet 5 ms late moves the estimate by 5/16 ms.
        s.on_packet(110, 10 * 900, 90_000, 10 * 10_000_000 + 5_000_000);
        let j = s.jitter_ms().unwrap_or_default();
        assert!((j - 5.0 / 16.0).abs() < 0.01, "{j}");
        assert!((loss_percent(10, 9) - 10.0).abs() < 1e-9);
    }
}
