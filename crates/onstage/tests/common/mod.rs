//! Shared plumbing for tests that drive a real `onstage serve` process with the
//! real AWS SDK: spawning a server on free ports with its own data directory,
//! building an `aws-sdk-ivsrealtime` client for it, plain HTTP GETs (health,
//! JWKS), and reading AWS errors the way SDK users read them.

#![allow(dead_code)]

use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ivsrealtime::Client;
use aws_sdk_ivsrealtime::config::retry::RetryConfig;
use aws_sdk_ivsrealtime::config::timeout::TimeoutConfig;
use aws_sdk_ivsrealtime::config::{Credentials, Region};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;

pub const ACCESS_KEY_ID: &str = "onstage";
pub const SECRET_ACCESS_KEY: &str = "onstage-secret";
pub const ACCOUNT_ID: &str = "000000000000";
pub const REGION: &str = "us-east-1";

/// How long a server may take to answer `/healthz` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `onstage serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub media_port: u16,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    /// The data directory, when the server owns it.
    _data: Option<TempDir>,
    _logs: TempDir,
}

impl Server {
    /// A server with a fresh, private data directory.
    pub async fn start() -> Server {
        let data = TempDir::new().expect("temporary data directory");
        let mut server = Server::start_in(data.path(), &[]).await;
        server._data = Some(data);
        server
    }

    /// A server on `data_dir` (which outlives it), with extra `serve` arguments.
    pub async fn start_in(data_dir: &Path, extra_args: &[&str]) -> Server {
        let mut last_log = String::new();
        // A port found free may be taken by someone else before the server binds
        // it; try again with other ports in that case.
        for _ in 0..3 {
            match Server::try_start(data_dir, extra_args).await {
                Ok(server) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("onstage did not start; its last output:\n{last_log}");
    }

    async fn try_start(data_dir: &Path, extra_args: &[&str]) -> Result<Server, String> {
        let port = free_tcp_port();
        let media_port = free_udp_port();
        let logs = TempDir::new().expect("temporary log directory");
        let log_path = logs.path().join("onstage.log");
        let log = File::create(&log_path).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_onstage"));
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--media-port")
            .arg(media_port.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            // RTMP ingest listens on 1935 by default; tests run servers side by
            // side, so only those that ask for RTMP get it.
            .args(if extra_args.contains(&"--rtmp-port") {
                &[][..]
            } else {
                &["--rtmp-port", "0"][..]
            })
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        // The developer's own ONSTAGE_* settings must not leak into the tests.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ONSTAGE_") {
                command.env_remove(name);
            }
        }
        let child = command.spawn().expect("spawn the onstage binary");
        let mut server = Server {
            child,
            port,
            media_port,
            data_dir: data_dir.to_owned(),
            log_path,
            _data: None,
            _logs: logs,
        };

        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("(exited with {status})\n{}", server.log()));
            }
            if let Ok((200, _, _)) = http_get(port, "/healthz").await {
                return Ok(server);
            }
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "onstage did not answer /healthz within {START_TIMEOUT:?}; output:\n{}",
                    server.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK client with the development credentials.
    pub fn client(&self) -> Client {
        self.client_as(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    }

    /// An SDK client signing with other credentials. Retries are off, so a test
    /// sees exactly the server's first answer.
    pub fn client_as(&self, access_key_id: &str, secret_access_key: &str) -> Client {
        let config = aws_sdk_ivsrealtime::Config::builder()
            .behavior_version_latest()
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key,
                None,
                None,
                "onstage-tests",
            ))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            )
            .build();
        Client::from_conf(config)
    }

    /// `GET path` on the server, unsigned.
    pub async fn get(&self, path: &str) -> (u16, http::HeaderMap, Vec<u8>) {
        http_get(self.port, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET /.well-known/jwks.json`, parsed.
    pub async fn jwks(&self) -> serde_json::Value {
        let (status, _, body) = self.get("/.well-known/jwks.json").await;
        assert_eq!(
            status,
            200,
            "GET /.well-known/jwks.json: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("the JWKS is JSON")
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the server as an operator would (SIGTERM), and waits for it to exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "onstage did not stop within 10 s of SIGTERM; output:\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
    listener.local_addr().expect("local address").port()
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    socket.local_addr().expect("local address").port()
}

/// A plain HTTP/1.1 GET to 127.0.0.1:`port`.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, http::HeaderMap, Vec<u8>), String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, body.to_vec()))
}

// Key pairs for ImportPublicKey come from the test kit, like every other test's.
#[allow(unused_imports)] // not every test binary imports a key
pub use onstage_testkit::tokens::{p256_public_key_pem, p384_public_key_pem};

/// The id at the end of an ARN (`…:stage/<id>`).
pub fn arn_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// Whether `arn` is `arn:aws:ivs:us-east-1:<account>:<kind>/<12 alphanumerics>`.
pub fn is_arn(arn: &str, account: &str, kind: &str) -> bool {
    let Some(id) = arn.strip_prefix(&format!("arn:aws:ivs:{REGION}:{account}:{kind}/")) else {
        return false;
    };
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// An AWS error as an SDK user sees it, read with [`expect_failure!`].
#[derive(Debug)]
pub struct Failure {
    /// HTTP status of the response, when there was one.
    pub status: Option<u16>,
    /// `err.into_service_error().meta().code()`.
    pub code: String,
    /// `err.into_service_error().meta().message()`.
    pub message: String,
    /// Response headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The whole SDK error, for assertion messages.
    pub debug: String,
}

impl Failure {
    /// Checks the status and the error code.
    pub fn is(&self, status: u16, code: &str) -> &Self {
        if std::env::var_os("ONSTAGE_TEST_SHOW_ERRORS").is_some() {
            eprintln!("{:?} {}: {}", self.status, self.code, self.message);
        }
        assert_eq!(
            (self.status, self.code.as_str()),
            (Some(status), code),
            "expected HTTP {status} {code}, got {self:#?}"
        );
        assert!(
            !self.message.is_empty(),
            "the error message is empty: {self:#?}"
        );
        self
    }

    /// Checks that the message names the field or resource at fault (any of `names`).
    pub fn names(&self, names: &[&str]) -> &Self {
        assert!(
            names.iter().any(|n| self.message.contains(n)),
            "the message {:?} names none of {names:?}",
            self.message
        );
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Awaits an SDK call that must fail and returns its [`Failure`]: HTTP status from
/// the raw response, code and message through `into_service_error().meta()` (every
/// operation error has an inherent `meta()`).
macro_rules! expect_failure {
    ($call:expr) => {{
        match $call {
            Ok(output) => panic!(
                "expected `{}` to fail, it answered {:?}",
                stringify!($call),
                output
            ),
            Err(err) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let headers: Vec<(String, String)> = err
                    .raw_response()
                    .map(|r| {
                        r.headers()
                            .iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let debug = format!("{err:?}");
                let service = err.into_service_error();
                crate::common::Failure {
                    status,
                    code: service.meta().code().unwrap_or_default().to_owned(),
                    message: service.meta().message().unwrap_or_default().to_owned(),
                    headers,
                    debug,
                }
            }
        }
    }};
}
