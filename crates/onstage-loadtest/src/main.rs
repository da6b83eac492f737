//! `onstage-loadtest`: load generator for an onstage server.
//!
//! `onstage-loadtest api` measures the control plane the way AWS clients use it:
//! it creates a stage with a signed `CreateStage`, then keeps `--concurrency`
//! keep-alive HTTP/1.1 connections busy with one operation (`GetStage` or
//! `CreateParticipantToken`) for `--duration`, every request freshly signed with
//! SigV4 (service `ivs`, current `x-amz-date`). It prints the rate each second and
//! a summary at the end (requests, req/s, p50/p95/p99 latency, errors by status),
//! optionally as JSON, and deletes the stage it created.
//!
//! `onstage-loadtest media` loads the media plane with real WebRTC peers (str0m),
//! against onstage or Janus's VideoRoom; `onstage-loadtest raw` measures the
//! machine's plain UDP fan-out ceiling, without WebRTC.
//!
//! The client is meant to stay out of the way of what it measures: by default it
//! runs on one runtime thread (`--threads`), so on a two-core machine the server
//! gets the other core; pin both with `taskset` for steady numbers.

mod api;
mod janus;
mod media;
mod raw;
mod report;
mod sigv4;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "onstage-loadtest", version, about = "Load generator for onstage", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hammer one control-plane operation with SigV4-signed requests and report
    /// throughput and latency.
    ///
    /// Creates a stage first (signed CreateStage), then sends the operation over
    /// --concurrency keep-alive connections for --duration. Non-2xx answers count
    /// as errors; the first error body is printed. The stage is deleted at the end.
    Api(ApiArgs),
    /// Measure this machine's UDP fan-out ceiling without WebRTC: one forwarder
    /// thread sends each input packet to N subscribers with sendto, sendmmsg or
    /// UDP GSO, and reports copies per second of forwarder CPU.
    Raw(raw::RawArgs),
    /// Start Janus (VideoRoom), publish one str0m peer and subscribe another,
    /// and check RTP flows end to end through it.
    #[command(hide = true)]
    JanusSmoke(janus::SmokeArgs),
    /// Load the media plane with real WebRTC peers: synthetic publishers and
    /// many cheap subscribers; reports rates, loss, jitter, latency, join time
    /// and the server's CPU and RSS (see README: "Load testing the media plane").
    Media(Box<media::MediaArgs>),
}

/// The operations `api` can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Operation {
    /// `POST /GetStage {"arn": …}`
    GetStage,
    /// `POST /CreateParticipantToken {"stageArn": …}`
    CreateParticipantToken,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::GetStage => "GetStage",
            Operation::CreateParticipantToken => "CreateParticipantToken",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Base URL of the onstage API (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    pub endpoint: String,
    /// The operation to send.
    #[arg(long, value_enum)]
    pub operation: Operation,
    /// Number of keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// How long to send requests: `10s`, `500ms`, `2m`, or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Access key id to sign with.
    #[arg(long, default_value = "onstage")]
    pub access_key_id: String,
    /// Secret access key to sign with.
    #[arg(long, default_value = "onstage-secret")]
    pub secret_access_key: String,
    /// Region of the signing scope.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Runtime worker threads for the client.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 10s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Api(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads as usize)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: could not start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(api::run(args)) {
                Ok(report) if report.errors == 0 => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(2),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Raw(args) => match raw::run(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Media(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: could not start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(media::run(*args)) {
                Ok(report) if report.failures.is_empty() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(2),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::JanusSmoke(args) => match janus::smoke(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
