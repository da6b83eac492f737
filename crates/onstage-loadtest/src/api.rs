//! The `api` subcommand: SigV4-signed control-plane requests over keep-alive
//! HTTP/1.1 connections, one request in flight per connection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::report::{Latency, Report};
use crate::sigv4::Signer;
use crate::{ApiArgs, Operation};

/// Where requests go: the address to connect to and the `Host` header to send.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) connect_to: String,
    pub(crate) host: String,
}

impl Target {
    pub(crate) fn parse(endpoint: &str) -> anyhow::Result<Self> {
        let rest = match endpoint.strip_prefix("http://") {
            Some(rest) => rest,
            None if endpoint.starts_with("https://") => {
                bail!("https endpoints are not supported; use http://")
            }
            None => bail!("the endpoint must look like http://host:port, not {endpoint:?}"),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("the endpoint must be http://host[:port] without a path, not {endpoint:?}");
        }
        let connect_to = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            && !authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            connect_to,
            host: authority.to_owned(),
        })
    }
}

/// A signed POST over one keep-alive connection.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(target: &Target) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(&target.connect_to)
            .await
            .with_context(|| format!("could not connect to {}", target.connect_to))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the peer closes or the sender is dropped.
            let _ = connection.await;
        });
        Ok(Connection { sender })
    }

    /// Sends one request and reads the whole answer.
    async fn post(
        &mut self,
        signer: &mut Signer,
        target: &Target,
        path: &str,
        body: &Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let signed = signer.sign(
            "POST",
            path,
            &target.host,
            "application/json",
            body,
            unix_now(),
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, &target.host)
            .header(CONTENT_TYPE, "application/json")
            .header("x-amz-date", signed.amz_date)
            .header(AUTHORIZATION, signed.authorization)
            .body(Full::new(body.clone()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One signed call outside the measurement (setup and cleanup; also the media
/// load generator's stage and token calls).
pub(crate) async fn call(
    target: &Target,
    signer: &mut Signer,
    operation: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut connection = Connection::open(target).await?;
    let path = format!("/{operation}");
    let (status, answer) = connection
        .post(signer, target, &path, &Bytes::from(body.to_string()))
        .await?;
    if !status.is_success() {
        bail!(
            "{operation} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    serde_json::from_slice(&answer)
        .with_context(|| format!("{operation} answered {status} with a body that is not JSON"))
}

/// Counters the workers update and the progress printer reads.
#[derive(Default)]
struct Shared {
    ok: AtomicU64,
    errors: AtomicU64,
    connections: AtomicU64,
    stop: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            eprintln!("first error: {what}");
            *first = Some(what);
        }
    }
}

/// What one worker measured.
#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u32>,
    errors_by_status: BTreeMap<String, u64>,
}

async fn worker(
    target: Target,
    mut signer: Signer,
    path: String,
    body: Bytes,
    shared: Arc<Shared>,
) -> WorkerResult {
    let mut result = WorkerResult {
        latencies_us: Vec::with_capacity(64 * 1024),
        ..Default::default()
    };
    let mut connection: Option<Connection> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let conn = match &mut connection {
            Some(c) if !c.is_closed() => c,
            _ => match Connection::open(&target).await {
                Ok(c) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    connection.insert(c)
                }
                Err(e) => {
                    *result
                        .errors_by_status
                        .entry("transport".into())
                        .or_default() += 1;
                    shared.error(format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        match conn.post(&mut signer, &target, &path, &body).await {
            Ok((status, _)) if status.is_success() => {
                let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                result.latencies_us.push(micros);
                shared.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, answer)) => {
                *result
                    .errors_by_status
                    .entry(status.as_u16().to_string())
                    .or_default() += 1;
                shared.error(format!("{status}: {}", String::from_utf8_lossy(&answer)));
            }
            Err(e) => {
                *result
                    .errors_by_status
                    .entry("transport".into())
                    .or_default() += 1;
                shared.error(format!("{e:#}"));
                connection = None;
            }
        }
    }
    result
}

pub async fn run(args: ApiArgs) -> anyhow::Result<Report> {
    let target = Target::parse(&args.endpoint)?;
    let mut signer = Signer::new(
        &args.access_key_id,
        &args.secret_access_key,
        &args.region,
        "ivs",
    );

    let name = format!("loadtest-{}", unix_now());
    let created = call(
        &target,
        &mut signer,
        "CreateStage",
        serde_json::json!({ "name": name }),
    )
    .await
    .context("could not create the stage to test with")?;
    let Some(stage_arn) = created
        .pointer("/stage/arn")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
    else {
        bail!("CreateStage answered without stage.arn: {created}");
    };
    println!("stage           {stage_arn}");

    let body = match args.operation {
        Operation::GetStage => serde_json::json!({ "arn": stage_arn }),
        Operation::CreateParticipantToken => serde_json::json!({ "stageArn": stage_arn }),
    };
    let body = Bytes::from(body.to_string());
    let path = format!("/{}", args.operation.name());
    println!(
        "sending         POST {path} over {} connections for {:?} ({} client threads)",
        args.concurrency, args.duration, args.threads
    );

    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                target.clone(),
                signer.clone(),
                path.clone(),
                body.clone(),
                shared.clone(),
            ))
        })
        .collect();

    // Progress, once a second, until the duration has passed.
    let deadline = started + args.duration;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::from_std(started) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let (mut last_ok, mut last_errors, mut last_at) = (0u64, 0u64, started);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::time::sleep(remaining) => break,
        }
        let (ok, errors, now) = (
            shared.ok.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
            Instant::now(),
        );
        let window = now.duration_since(last_at).as_secs_f64();
        println!(
            "[{:>4.0}s] {:>8.0} req/s   errors {:>6} ({:>4.0}/s)   total {}",
            now.duration_since(started).as_secs_f64(),
            (ok + errors - last_ok - last_errors) as f64 / window,
            errors,
            (errors - last_errors) as f64 / window,
            ok + errors
        );
        (last_ok, last_errors, last_at) = (ok, errors, now);
    }
    shared.stop.store(true, Ordering::Relaxed);

    let mut latencies = Vec::new();
    let mut errors_by_status: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        match w.await {
            Ok(r) => {
                latencies.extend_from_slice(&r.latencies_us);
                for (k, v) in r.errors_by_status {
                    *errors_by_status.entry(k).or_default() += v;
                }
            }
            Err(e) => {
                *errors_by_status
                    .entry(format!("worker panicked: {e}"))
                    .or_default() += 1
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let ok = latencies.len() as u64;
    let errors: u64 = errors_by_status.values().sum();
    let first_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    let report = Report {
        endpoint: args.endpoint.clone(),
        operation: args.operation.name(),
        stage_arn: stage_arn.clone(),
        concurrency: args.concurrency,
        threads: args.threads,
        elapsed_seconds: elapsed,
        total: ok + errors,
        ok,
        errors,
        requests_per_second: (ok + errors) as f64 / elapsed,
        latency_ms: Latency::from_micros(&mut latencies),
        errors_by_status,
        first_error,
        connections_opened: shared.connections.load(Ordering::Relaxed),
    };
    report.print();

    if let Err(e) = call(
        &target,
        &mut signer,
        "DeleteStage",
        serde_json::json!({ "arn": stage_arn }),
    )
    .await
    {
        eprintln!("warning: could not delete the test stage: {e:#}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("could not write {}", path.display()))?;
        println!("wrote           {}", path.display());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let t = Target::parse("http://127.0.0.1:7700").unwrap();
        assert_eq!(
            (t.connect_to.as_str(), t.host.as_str()),
            ("127.0.0.1:7700", "127.0.0.1:7700")
        );
        let t = Target::parse("http://localhost/").unwrap();
        assert_eq!(
            (t.connect_to.as_str(), t.host.as_str()),
            ("localhost:80", "localhost")
        );
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("127.0.0.1:7700").is_err());
        assert!(Target::parse("http://h:1/api").is_err());
    }
}
