//! The result of a run: what is printed at the end and written with `--json`.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latency percentiles of the successful requests, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// From request latencies in microseconds (sorted in place).
    pub fn from_micros(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            f64::from(samples[rank.clamp(1, samples.len()) - 1]) / 1000.0
        };
        let sum: u64 = samples.iter().map(|&v| u64::from(v)).sum();
        Latency {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
            mean: sum as f64 / samples.len() as f64 / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub endpoint: String,
    pub operation: &'static str,
    pub stage_arn: String,
    pub concurrency: u32,
    pub threads: u32,
    /// Wall-clock time from the first request to the last answer, in seconds.
    pub elapsed_seconds: f64,
    /// Requests answered (successes and errors).
    pub total: u64,
    pub ok: u64,
    pub errors: u64,
    /// Answered requests per second.
    pub requests_per_second: f64,
    /// Latency of the 2xx answers, from sending the request to the last body byte.
    pub latency_ms: Latency,
    /// Error counts keyed by HTTP status, or `transport` for failed connections.
    pub errors_by_status: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// TCP connections opened (one per worker unless the server closed some).
    pub connections_opened: u64,
}

impl Report {
    pub fn print(&self) {
        println!();
        println!(
            "operation       {} ({} connections, {} client threads)",
            self.operation, self.concurrency, self.threads
        );
        println!(
            "requests        {} in {:.2} s: {} ok, {} errors",
            self.total, self.elapsed_seconds, self.ok, self.errors
        );
        println!("throughput      {:.0} req/s", self.requests_per_second);
        let l = &self.latency_ms;
        println!(
            "latency (2xx)   p50 {:.3} ms   p95 {:.3} ms   p99 {:.3} ms   max {:.3} ms   mean {:.3} ms",
            l.p50, l.p95, l.p99, l.max, l.mean
        );
        if self.errors_by_status.is_empty() {
            println!("errors          none");
        } else {
            let by: Vec<String> = self
                .errors_by_status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            println!("errors          {}", by.join(", "));
        }
        if let Some(e) = &self.first_error {
            println!("first error     {e}");
        }
        println!("connections     {} opened", self.connections_opened);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        let l = Latency::from_micros(&mut v);
        assert_eq!((l.p50, l.p95, l.p99, l.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(l.mean, 50.5);
        assert_eq!(Latency::from_micros(&mut []), Latency::default());
        let mut one = vec![1500];
        assert_eq!(Latency::from_micros(&mut one).p50, 1.5);
    }
}
