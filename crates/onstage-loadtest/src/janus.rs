//! Janus (its VideoRoom plugin) as the reference SFU the media load generator
//! measures onstage against, on the same machine and with the same peers.
//!
//! Two halves:
//!
//! - [`JanusServer`] starts the system's `janus` binary as a child process with a
//!   configuration folder generated for the run: the HTTP transport alone on a free
//!   loopback port, the VideoRoom plugin alone, no loggers or event handlers, ICE
//!   gathering restricted to one address ([`ICE_ADDRESS`]) with no STUN and no IPv6,
//!   half-trickle (so every SDP Janus hands out already carries its host
//!   candidate), and a chosen RTP port range. It can be pinned to CPUs (through `taskset -c`), exposes its pid for
//!   CPU/RSS sampling, and is stopped (SIGTERM, then SIGKILL) when dropped.
//! - [`JanusClient`] speaks the Janus HTTP REST API: one session, a long-poll task
//!   that routes events to the requests waiting for them, and a keepalive. On top
//!   of it, [`JanusRoom`] offers the two operations a load peer needs, shaped like
//!   the onstage side: [`JanusRoom::publish`] (client offer in, Janus answer out)
//!   and [`JanusRoom::subscribe`] (Janus offer out, then the client's answer in
//!   through [`PendingSubscription::answer`]).
//!
//! Janus never gathers candidates on a loopback *interface*: it skips every
//! `IFF_LOOPBACK` one (and libnice then falls back to the machine's real
//! addresses). A 127.x address on another interface does not help either:
//! libnice pins its sockets to their interface (`IP_UNICAST_IF`), and the kernel
//! refuses a loopback source on a non-loopback device. So the benchmarks run in a
//! private network namespace, made for the run and gone after it, in which one
//! end of a veth pair carries [`ICE_ADDRESS`] (198.18.0.1, from the range RFC 2544
//! reserves for benchmarks). Janus gathers there, the load peers bind there too,
//! and every datagram is still local delivery through the namespace's loopback
//! device: nothing is routed anywhere. The namespace also routes all of
//! [`PEER_NETWORK`] as local on the veth, so every load peer can have its own
//! source address there ([`PEER_ADDRESSES`]), as it has under 127/8 with onstage.
//! `scripts/bench-netns <command>` makes such
//! a namespace; [`enter_bench_netns`] makes one for the current process (before
//! it starts threads). onstage and the load peers must run inside it.
//!
//! The hidden `janus-smoke` subcommand ([`smoke`]) proves the whole path with two
//! minimal str0m peers: one publishes VP8-shaped frames, the other subscribes and
//! counts the frames Janus forwards.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// Where Debian's package puts Janus and its plugins.
pub const JANUS_BINARY: &str = "/usr/bin/janus";
const JANUS_LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu/janus";
/// The address Janus gathers its ICE candidates on, inside the benchmark
/// namespace; peers talking to Janus bind their sockets to it as well.
pub const ICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The veth pair that carries [`ICE_ADDRESS`] in the benchmark namespace.
const VETH: (&str, &str) = ("osbench0", "osbench1");
/// Routed as local on the veth in the benchmark namespace (a `local` route, like
/// 127.0.0.0/8 on `lo`): any address in it can be a load peer's source address
/// without being added to an interface, and Janus's interface-pinned sockets
/// reach it.
pub const PEER_NETWORK: &str = "198.18.0.0/16";
/// The load peers' addresses when talking to Janus: `PEER_ADDRESSES.0` up to,
/// not including, `PEER_ADDRESSES.1` (inside [`PEER_NETWORK`], clear of
/// [`ICE_ADDRESS`]).
pub const PEER_ADDRESSES: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(198, 18, 1, 0), Ipv4Addr::new(198, 19, 0, 0));

/// How to start Janus.
#[derive(Clone, Debug)]
pub struct JanusOptions {
    pub binary: PathBuf,
    /// Folder holding Janus's `plugins/`, `transports/`, `loggers/`, `events/`.
    pub lib_dir: PathBuf,
    /// The address Janus gathers ICE candidates on: on a non-loopback interface
    /// of the benchmark namespace (see the module doc).
    pub ice_address: Ipv4Addr,
    /// The UDP ports Janus may use for its peers (inclusive).
    pub rtp_ports: (u16, u16),
    /// A `taskset -c` CPU list (`"0"`, `"0,1"`, `"0-3"`) to pin Janus to.
    pub cpus: Option<String>,
    /// Janus's log level, 0 (silent) to 7.
    pub debug_level: u8,
    /// Shared event loops for the PeerConnections (Janus's `event_loops`);
    /// 0 keeps Janus's default of one thread per handle.
    pub event_loops: u32,
    /// How long to wait for the HTTP API to answer after start.
    pub start_timeout: Duration,
}

impl Default for JanusOptions {
    fn default() -> Self {
        JanusOptions {
            // A wrapper script (extra flags, environment) can stand in for it.
            binary: std::env::var_os("ONSTAGE_JANUS_BINARY")
                .map_or_else(|| PathBuf::from(JANUS_BINARY), PathBuf::from),
            lib_dir: PathBuf::from(JANUS_LIB_DIR),
            ice_address: ICE_ADDRESS,
            rtp_ports: (40_000, 49_999),
            cpus: None,
            debug_level: 3,
            event_loops: 0,
            start_timeout: Duration::from_secs(15),
        }
    }
}

/// A running Janus, stopped on drop. Its configuration and log live in a
/// temporary folder that is removed with it.
pub struct JanusServer {
    child: Child,
    dir: PathBuf,
    http: SocketAddr,
}

impl JanusServer {
    /// Writes the configuration, starts Janus and waits until its HTTP API
    /// answers `info`.
    pub async fn start(options: &JanusOptions) -> anyhow::Result<Self> {
        if !options.binary.exists() {
            bail!(
                "{} is missing; run scripts/bench-setup (apt-get install janus)",
                options.binary.display()
            );
        }
        if !has_non_loopback_address(options.ice_address) {
            bail!(
                "no non-loopback interface carries {}: Janus would gather candidates on the machine's real \
                 addresses. Run inside scripts/bench-netns (or call janus::enter_bench_netns first).",
                options.ice_address
            );
        }
        let http = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_tcp_port()?));
        let dir = make_temp_dir()?;
        write_config(&dir, options, http.port())?;
        let log = std::fs::File::create(dir.join("janus.log"))?;
        let mut command = match &options.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&options.binary);
                c
            }
            None => Command::new(&options.binary),
        };
        let config: OsString = dir.join("janus.jcfg").into();
        command
            .arg("-C")
            .arg(&config)
            .arg("-F")
            .arg(&dir)
            .arg("-o")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("could not start {}", options.binary.display()))?;
        let mut server = JanusServer { child, dir, http };

        let deadline = Instant::now() + options.start_timeout;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "janus exited during start-up ({status}); its log:\n{}",
                    server.log_tail(40)
                );
            }
            if let Ok(info) = call(http, Method::GET, "/janus/info", None).await
                && info.get("janus").and_then(Value::as_str) == Some("server_info")
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "janus did not answer on {http} within {:?}; its log:\n{}",
                    options.start_timeout,
                    server.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id, for CPU and RSS sampling (`/proc/<pid>/stat`, `status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The HTTP API's address (`http://<addr>/janus`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The generated configuration folder (also holds `janus.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `lines` lines of Janus's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Connects a client to this server.
    pub async fn client(&self) -> anyhow::Result<JanusClient> {
        JanusClient::connect(self.http).await
    }
}

impl Drop for JanusServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether an up, running, non-loopback interface carries `address`.
fn has_non_loopback_address(address: Ipv4Addr) -> bool {
    let mut found = false;
    // SAFETY: getifaddrs allocates a list we only read and then free.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return false;
        }
        let mut at = list;
        while !at.is_null() {
            let ifa = &*at;
            let flags = ifa.ifa_flags as libc::c_int;
            let usable = flags & libc::IFF_UP != 0
                && flags & libc::IFF_RUNNING != 0
                && flags & libc::IFF_LOOPBACK == 0;
            if usable
                && !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == address {
                    found = true;
                }
            }
            at = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

/// Moves the calling thread into a new network namespace with loopback up and a
/// veth pair carrying [`ICE_ADDRESS`]/32 and [`PEER_NETWORK`] routed as local on
/// it, as `scripts/bench-netns` does.
/// Call it first thing in `main`, before any thread exists: a namespace change
/// applies to the calling thread and the threads and children it starts later.
/// Does nothing when an interface already carries the address. Needs root.
pub fn enter_bench_netns() -> anyhow::Result<()> {
    if has_non_loopback_address(ICE_ADDRESS) {
        return Ok(());
    }
    // SAFETY: unshare only changes this thread's namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "could not make a network namespace (root needed): {}",
            std::io::Error::last_os_error()
        );
    }
    let address = format!("{ICE_ADDRESS}/32");
    let steps: [&[&str]; 6] = [
        &["link", "set", "lo", "up"],
        &[
            "link", "add", VETH.0, "type", "veth", "peer", "name", VETH.1,
        ],
        &["addr", "add", &address, "dev", VETH.0],
        &["link", "set", VETH.1, "up"],
        &["link", "set", VETH.0, "up"],
        &[
            "route",
            "add",
            "local",
            PEER_NETWORK,
            "dev",
            VETH.0,
            "table",
            "local",
        ],
    ];
    for args in steps {
        let status = Command::new("ip")
            .args(args)
            .status()
            .context("could not run ip (iproute2)")?;
        if !status.success() {
            bail!("ip {} failed ({status})", args.join(" "));
        }
    }
    // The veth carrier comes up asynchronously.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !has_non_loopback_address(ICE_ADDRESS) {
        if Instant::now() > deadline {
            bail!("{} did not come up", VETH.0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Makes sure the load peers can use [`PEER_ADDRESSES`]: binding to the first
/// one works only where [`PEER_NETWORK`] is routed as local. A namespace from
/// [`enter_bench_netns`] or `scripts/bench-netns` has the route; an older one
/// gets it added here (needs root inside it).
pub fn ensure_peer_addresses() -> anyhow::Result<()> {
    let probe = SocketAddrV4::new(Ipv4Addr::from(u32::from(PEER_ADDRESSES.0) + 1), 0);
    if UdpSocket::bind(probe).is_ok() {
        return Ok(());
    }
    if !has_non_loopback_address(ICE_ADDRESS) {
        bail!(
            "no non-loopback interface carries {ICE_ADDRESS}: run inside scripts/bench-netns \
             (or let the tool start janus, which makes its own namespace)"
        );
    }
    let args = [
        "route",
        "replace",
        "local",
        PEER_NETWORK,
        "dev",
        VETH.0,
        "table",
        "local",
    ];
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("could not run ip (iproute2)")?;
    if !status.success() || UdpSocket::bind(probe).is_err() {
        bail!(
            "the load peers cannot use {PEER_NETWORK} (ip {} failed: {status})",
            args.join(" ")
        );
    }
    Ok(())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("could not find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn make_temp_dir() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("onstage-janus-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    Ok(dir)
}

/// The `.so` files in `dir` other than `keep`, comma-separated: Janus loads every
/// plugin it finds unless it is listed as disabled.
fn disable_all_but(dir: &Path, keep: &str) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.ends_with(".so") && name != keep)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}

fn write_config(dir: &Path, options: &JanusOptions, http_port: u16) -> anyhow::Result<()> {
    let lib = &options.lib_dir;
    let (low, high) = options.rtp_ports;
    let janus = format!(
        r#"general: {{
	configs_folder = "{configs}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = {debug}
	interface = "{ice}"
	session_timeout = 60
	server_name = "onstage-loadtest"{event_loops}
}}
certificates: {{
}}
media: {{
	rtp_port_range = "{low}-{high}"
	ipv6 = false
}}
nat: {{
	ice_enforce_list = "{ice}"
	full_trickle = false
	ice_lite = false
	ice_tcp = false
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
loggers: {{
	disable = "{loggers}"
}}
events: {{
	broadcast = false
}}
"#,
        configs = dir.display(),
        lib = lib.display(),
        debug = options.debug_level.min(7),
        event_loops = match options.event_loops {
            0 => String::new(),
            n => format!("\n\tevent_loops = {n}"),
        },
        ice = options.ice_address,
        plugins = disable_all_but(&lib.join("plugins"), "libjanus_videoroom.so"),
        transports = disable_all_but(&lib.join("transports"), "libjanus_http.so"),
        loggers = disable_all_but(&lib.join("loggers"), ""),
    );
    let http = format!(
        r#"general: {{
	json = "compact"
	base_path = "/janus"
	http = true
	port = {http_port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
"#
    );
    // Rooms are created through the API; the plugin needs its file to exist.
    let videoroom = "general: {\n}\n";
    std::fs::write(dir.join("janus.jcfg"), janus)?;
    std::fs::write(dir.join("janus.transport.http.jcfg"), http)?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), videoroom)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The HTTP REST API
// ---------------------------------------------------------------------------

/// One HTTP/1.1 exchange on a fresh loopback connection. Janus's API is the
/// control plane only, so a connection per request costs nothing that matters
/// and keeps a long poll from holding up other requests.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("could not connect to janus at {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let payload = match body {
        Some(v) => Bytes::from(serde_json::to_vec(v)?),
        None => Bytes::new(),
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(payload))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "janus answered {status} to {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "janus sent non-JSON to {path}: {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// State shared by the client and its long-poll task.
struct Shared {
    addr: SocketAddr,
    session: u64,
    next_transaction: AtomicU64,
    /// Requests waiting for their asynchronous event, by transaction.
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// Events not answering a request (`webrtcup`, `media`, `hangup`, …), by handle.
    events: Mutex<HashMap<u64, Vec<Value>>>,
    notify: Notify,
}

impl Shared {
    fn transaction(&self) -> String {
        format!("t{}", self.next_transaction.fetch_add(1, Ordering::Relaxed))
    }

    fn dispatch(&self, event: Value) {
        let transaction = event
            .get("transaction")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(t) = transaction {
            let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&t));
            if let Some(waiter) = waiter {
                let _ = waiter.send(event);
                return;
            }
        }
        if event.get("janus").and_then(Value::as_str) == Some("keepalive") {
            return;
        }
        let handle = event.get("sender").and_then(Value::as_u64).unwrap_or(0);
        if let Ok(mut events) = self.events.lock() {
            events.entry(handle).or_default().push(event);
        }
        self.notify.notify_waiters();
    }
}

/// A Janus API session with its event long-poll and keepalive running.
///
/// Every method is safe to call concurrently from many tasks: requests are
/// matched to their events by transaction id.
pub struct JanusClient {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// The handle used for room management, attached on first use.
    admin: tokio::sync::Mutex<Option<u64>>,
}

/// What a publisher got back from Janus.
#[derive(Clone, Debug)]
pub struct Published {
    /// The plugin handle: pass it to `leave`/`detach`.
    pub handle: u64,
    /// The publisher's id in the room: what subscribers subscribe to.
    pub feed: u64,
    /// Janus's SDP answer (carries its host candidate).
    pub answer_sdp: String,
}

/// What a subscriber got back from Janus before answering.
#[derive(Clone, Debug)]
pub struct Subscribed {
    pub handle: u64,
    /// Janus's SDP offer (carries its host candidate).
    pub offer_sdp: String,
}

/// The video codec a room is created for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomCodec {
    Vp8,
    H264,
}

impl RoomCodec {
    fn as_str(self) -> &'static str {
        match self {
            RoomCodec::Vp8 => "vp8",
            RoomCodec::H264 => "h264",
        }
    }
}

impl JanusClient {
    /// Creates a session and starts its long-poll and keepalive tasks (on the
    /// current tokio runtime).
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let created = call(
            addr,
            Method::POST,
            "/janus",
            Some(&json!({"janus": "create", "transaction": "create"})),
        )
        .await?;
        let session = created
            .pointer("/data/id")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("janus did not create a session: {created}"))?;
        let shared = Arc::new(Shared {
            addr,
            session,
            next_transaction: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            notify: Notify::new(),
        });
        let poller = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let path = format!("/janus/{}?maxev=32", shared.session);
                loop {
                    match call(shared.addr, Method::GET, &path, None).await {
                        Ok(Value::Array(events)) => {
                            events.into_iter().for_each(|e| shared.dispatch(e))
                        }
                        Ok(event) => shared.dispatch(event),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
        };
        let keepalive = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let path = format!("/janus/{}", shared.session);
                loop {
                    tokio::time::sleep(Duration::from_secs(25)).await;
                    let body = json!({"janus": "keepalive", "transaction": shared.transaction()});
                    let _ = call(shared.addr, Method::POST, &path, Some(&body)).await;
                }
            })
        };
        Ok(JanusClient {
            shared,
            tasks: vec![poller, keepalive],
            admin: tokio::sync::Mutex::new(None),
        })
    }

    /// The session id.
    #[allow(dead_code)] // API for the media load peers; not every caller uses it yet
    pub fn session(&self) -> u64 {
        self.shared.session
    }

    /// Sends a session-level or handle-level request and returns Janus's reply:
    /// the immediate one when it is final, or the event that completes it after
    /// an `ack`. Fails on `"janus": "error"`.
    async fn request(
        &self,
        handle: Option<u64>,
        mut body: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let transaction = self.shared.transaction();
        body["transaction"] = Value::String(transaction.clone());
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.insert(transaction.clone(), tx);
        }
        let path = match handle {
            Some(h) => format!("/janus/{}/{h}", self.shared.session),
            None => format!("/janus/{}", self.shared.session),
        };
        let reply = match call(self.shared.addr, Method::POST, &path, Some(&body)).await {
            Ok(reply) => reply,
            Err(e) => {
                self.forget(&transaction);
                return Err(e);
            }
        };
        let reply = match reply.get("janus").and_then(Value::as_str) {
            Some("ack") => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(event)) => event,
                Ok(Err(_)) => bail!("janus event channel closed"),
                Err(_) => {
                    self.forget(&transaction);
                    bail!("janus did not complete {body} within {timeout:?}");
                }
            },
            _ => {
                self.forget(&transaction);
                reply
            }
        };
        if reply.get("janus").and_then(Value::as_str) == Some("error") {
            bail!(
                "janus refused {body}: {}",
                reply.get("error").unwrap_or(&reply)
            );
        }
        Ok(reply)
    }

    fn forget(&self, transaction: &str) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.remove(transaction);
        }
    }

    /// Sends a VideoRoom plugin message (with an optional JSEP) and returns the
    /// plugin's data and the JSEP that came with it. Fails on a plugin error.
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<(Value, Option<Value>)> {
        let mut request = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            request["jsep"] = jsep;
        }
        let reply = self
            .request(Some(handle), request, Duration::from_secs(20))
            .await?;
        let data = reply
            .pointer("/plugindata/data")
            .cloned()
            .ok_or_else(|| anyhow!("janus reply without plugin data: {reply}"))?;
        if let Some(error) = data.get("error") {
            bail!(
                "videoroom error {}: {error}",
                data.get("error_code").unwrap_or(&Value::Null)
            );
        }
        Ok((data, reply.get("jsep").cloned()))
    }

    /// Attaches a new VideoRoom handle.
    pub async fn attach(&self) -> anyhow::Result<u64> {
        let reply = self
            .request(
                None,
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
                Duration::from_secs(10),
            )
            .await?;
        reply
            .pointer("/data/id")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("attach without a handle id: {reply}"))
    }

    /// Detaches a handle (closing its PeerConnection if it has one).
    pub async fn detach(&self, handle: u64) -> anyhow::Result<()> {
        self.request(
            Some(handle),
            json!({"janus": "detach"}),
            Duration::from_secs(10),
        )
        .await?;
        if let Ok(mut events) = self.shared.events.lock() {
            events.remove(&handle);
        }
        Ok(())
    }

    async fn admin_handle(&self) -> anyhow::Result<u64> {
        let mut admin = self.admin.lock().await;
        if let Some(h) = *admin {
            return Ok(h);
        }
        let h = self.attach().await?;
        *admin = Some(h);
        Ok(h)
    }

    /// Creates a room (not permanent) for up to `max_publishers` publishers with
    /// one video codec and Opus, a 10 Mbps per-publisher bitrate cap (so Janus's
    /// REMB does not throttle the load peers), no periodic FIR, and no
    /// join/leave notifications to attendees.
    pub async fn create_room(
        &self,
        room: u64,
        max_publishers: u32,
        codec: RoomCodec,
    ) -> anyhow::Result<()> {
        let handle = self.admin_handle().await?;
        let body = json!({
            "request": "create",
            "room": room,
            "permanent": false,
            "description": format!("onstage-loadtest {room}"),
            "publishers": max_publishers,
            "bitrate": 10_000_000,
            "bitrate_cap": false,
            "fir_freq": 0,
            "videocodec": codec.as_str(),
            "audiocodec": "opus",
            "notify_joining": false,
        });
        let (data, _) = self.message(handle, body, None).await?;
        if data.get("videoroom").and_then(Value::as_str) != Some("created") {
            bail!("room {room} was not created: {data}");
        }
        Ok(())
    }

    /// Destroys a room (its publishers and subscribers are kicked).
    pub async fn destroy_room(&self, room: u64) -> anyhow::Result<()> {
        let handle = self.admin_handle().await?;
        self.message(handle, json!({"request": "destroy", "room": room}), None)
            .await?;
        Ok(())
    }

    /// Publishes into `room`: attaches a handle, joins as a publisher named
    /// `display`, and sends `offer_sdp` (with all the client's candidates: no
    /// trickle) in a `publish` request. Returns the handle, the feed id that
    /// subscribers use, and Janus's answer.
    pub async fn publish(
        &self,
        room: u64,
        display: &str,
        offer_sdp: &str,
    ) -> anyhow::Result<Published> {
        let handle = self.attach().await?;
        let (joined, _) = self
            .message(
                handle,
                json!({"request": "join", "ptype": "publisher", "room": room, "display": display}),
                None,
            )
            .await?;
        let feed = joined
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("join without a feed id: {joined}"))?;
        let (_, jsep) = self
            .message(
                handle,
                json!({"request": "publish", "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": offer_sdp, "trickle": false})),
            )
            .await?;
        let answer_sdp = sdp_of(jsep, "answer")?;
        Ok(Published {
            handle,
            feed,
            answer_sdp,
        })
    }

    /// Subscribes to publisher `feed` in `room`: attaches a handle and joins as a
    /// subscriber; Janus makes the offer. Answer it with [`JanusClient::start`].
    pub async fn subscribe(&self, room: u64, feed: u64) -> anyhow::Result<Subscribed> {
        let handle = self.attach().await?;
        let (_, jsep) = self
            .message(
                handle,
                json!({"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": feed}]}),
                None,
            )
            .await?;
        let offer_sdp = sdp_of(jsep, "offer")?;
        Ok(Subscribed { handle, offer_sdp })
    }

    /// Completes a subscription with the client's answer (all candidates in it).
    pub async fn start(&self, handle: u64, answer_sdp: &str) -> anyhow::Result<()> {
        self.message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer_sdp, "trickle": false})),
        )
        .await?;
        Ok(())
    }

    /// Leaves the room on `handle` (publisher: unpublishes; subscriber: stops).
    pub async fn leave(&self, handle: u64) -> anyhow::Result<()> {
        self.message(handle, json!({"request": "leave"}), None)
            .await?;
        Ok(())
    }

    /// Waits until Janus reports the handle's PeerConnection up (`webrtcup`:
    /// ICE and DTLS done on Janus's side).
    pub async fn wait_webrtc_up(&self, handle: u64, timeout: Duration) -> anyhow::Result<()> {
        let found = |events: &HashMap<u64, Vec<Value>>| {
            events.get(&handle).is_some_and(|list| {
                list.iter()
                    .any(|e| e.get("janus").and_then(Value::as_str) == Some("webrtcup"))
            })
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            if self
                .shared
                .events
                .lock()
                .map(|e| found(&e))
                .unwrap_or(false)
            {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("janus handle {handle} not up within {timeout:?}");
            }
        }
    }

    /// The unsolicited events Janus sent about `handle` so far (`webrtcup`,
    /// `media`, `slowlink`, `hangup`, …).
    #[allow(dead_code)] // API for the media load peers; not every caller uses it yet
    pub fn events(&self, handle: u64) -> Vec<Value> {
        self.shared
            .events
            .lock()
            .map(|e| e.get(&handle).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Destroys the session (Janus detaches every handle of it).
    pub async fn close(mut self) -> anyhow::Result<()> {
        let result = self
            .request(None, json!({"janus": "destroy"}), Duration::from_secs(10))
            .await;
        for task in self.tasks.drain(..) {
            task.abort();
        }
        result.map(|_| ())
    }
}

impl Drop for JanusClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn sdp_of(jsep: Option<Value>, kind: &str) -> anyhow::Result<String> {
    let jsep = jsep.ok_or_else(|| anyhow!("janus sent no {kind}"))?;
    if jsep.get("type").and_then(Value::as_str) != Some(kind) {
        bail!(
            "janus sent a {} where an {kind} was expected",
            jsep.get("type").unwrap_or(&Value::Null)
        );
    }
    let sdp = jsep
        .get("sdp")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("janus {kind} without sdp"))?;
    if !sdp.contains("a=candidate:") {
        bail!("janus {kind} carries no candidate (is full-trickle on?):\n{sdp}");
    }
    Ok(sdp.to_owned())
}

// ---------------------------------------------------------------------------
// The shape the load peers use
// ---------------------------------------------------------------------------

/// One VideoRoom room, as the load generator's SFU-agnostic peers see it: publish
/// an offer and get an answer; subscribe to a publisher and get an offer plus a
/// sink for the answer.
#[derive(Clone)]
pub struct JanusRoom {
    pub client: Arc<JanusClient>,
    pub room: u64,
}

/// A subscription waiting for the client's answer.
pub struct PendingSubscription {
    client: Arc<JanusClient>,
    pub handle: u64,
}

impl PendingSubscription {
    /// Sends the client's answer; Janus starts forwarding once ICE and DTLS are up.
    pub async fn answer(self, answer_sdp: &str) -> anyhow::Result<u64> {
        self.client.start(self.handle, answer_sdp).await?;
        Ok(self.handle)
    }
}

impl JanusRoom {
    /// Creates room `room` on `client`.
    pub async fn create(
        client: Arc<JanusClient>,
        room: u64,
        max_publishers: u32,
        codec: RoomCodec,
    ) -> anyhow::Result<Self> {
        client.create_room(room, max_publishers, codec).await?;
        Ok(JanusRoom { client, room })
    }

    /// Client offer in, Janus answer out. `Published::feed` identifies the
    /// publisher to [`JanusRoom::subscribe`].
    pub async fn publish(&self, display: &str, offer_sdp: &str) -> anyhow::Result<Published> {
        self.client.publish(self.room, display, offer_sdp).await
    }

    /// Janus's offer for publisher `feed`, and where the client's answer goes.
    pub async fn subscribe(&self, feed: u64) -> anyhow::Result<(String, PendingSubscription)> {
        let subscribed = self.client.subscribe(self.room, feed).await?;
        Ok((
            subscribed.offer_sdp,
            PendingSubscription {
                client: self.client.clone(),
                handle: subscribed.handle,
            },
        ))
    }

    /// Leaves and detaches a publisher's or subscriber's handle.
    pub async fn remove(&self, handle: u64) -> anyhow::Result<()> {
        let left = self.client.leave(handle).await;
        self.client.detach(handle).await?;
        left
    }
}

// ---------------------------------------------------------------------------
// End-to-end check with two minimal str0m peers
// ---------------------------------------------------------------------------

#[derive(Args, Clone, Debug)]
pub struct SmokeArgs {
    /// Pin Janus to these CPUs (taskset -c list).
    #[arg(long)]
    pub cpus: Option<String>,
    /// How long the publisher sends after connecting, in seconds.
    #[arg(long, default_value_t = 4)]
    pub seconds: u64,
    /// Janus's log level (0–7); its log is printed on failure.
    #[arg(long, default_value_t = 3)]
    pub debug_level: u8,
}

/// What one smoke peer saw.
#[derive(Debug, Default)]
struct PeerCounts {
    connected: bool,
    frames_sent: u64,
    frames_received: u64,
    bytes_received: u64,
}

/// Starts Janus, creates a VP8 room, publishes one str0m peer sending 30 fps of
/// VP8-shaped frames, subscribes a second str0m peer, and checks that frames
/// arrive through Janus.
pub fn smoke(args: &SmokeArgs) -> anyhow::Result<()> {
    enter_bench_netns()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = JanusOptions {
        cpus: args.cpus.clone(),
        debug_level: args.debug_level,
        ..JanusOptions::default()
    };
    let server = runtime.block_on(JanusServer::start(&options))?;
    println!(
        "janus pid {} on http://{}/janus",
        server.pid(),
        server.http_addr()
    );
    let result = runtime.block_on(smoke_with(&server, args.seconds));
    if result.is_err() {
        eprintln!("janus log (tail):\n{}", server.log_tail(60));
    }
    result
}

async fn smoke_with(server: &JanusServer, seconds: u64) -> anyhow::Result<()> {
    use str0m::change::{SdpAnswer, SdpOffer};
    use str0m::media::{Direction, MediaKind};
    use str0m::{Candidate, RtcConfig};

    let client = Arc::new(server.client().await?);
    let room = JanusRoom::create(client.clone(), 4242, 16, RoomCodec::Vp8).await?;

    // Publisher: str0m makes the offer (full ICE, controlling).
    let pub_socket = UdpSocket::bind((ICE_ADDRESS, 0))?;
    let mut publisher = RtcConfig::new()
        .clear_codecs()
        .enable_vp8(true)
        .build(Instant::now());
    publisher.add_local_candidate(Candidate::host(pub_socket.local_addr()?, "udp")?);
    let mut change = publisher.sdp_api();
    let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change
        .apply()
        .ok_or_else(|| anyhow!("str0m made no offer"))?;
    let published = room
        .publish("smoke-publisher", &offer.to_sdp_string())
        .await?;
    println!(
        "published: handle {} feed {}; janus answer candidates: {:?}",
        published.handle,
        published.feed,
        candidates(&published.answer_sdp)
    );
    publisher
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&published.answer_sdp)?)?;

    let deadline = Instant::now() + Duration::from_secs(seconds + 6);
    let pub_thread = std::thread::spawn(move || {
        let result = run_peer(publisher, pub_socket, Some(mid), deadline, seconds);
        if let Err(e) = &result {
            eprintln!("publisher peer failed: {e:#}");
        }
        result
    });
    client
        .wait_webrtc_up(published.handle, Duration::from_secs(5))
        .await
        .context("publisher")?;

    // Subscriber: Janus makes the offer, str0m answers.
    let (offer_sdp, sink) = room.subscribe(published.feed).await?;
    println!(
        "janus subscriber offer candidates: {:?}",
        candidates(&offer_sdp)
    );
    let sub_socket = UdpSocket::bind((ICE_ADDRESS, 0))?;
    let mut subscriber = RtcConfig::new()
        .clear_codecs()
        .enable_vp8(true)
        .enable_opus(true, false)
        .build(Instant::now());
    subscriber.add_local_candidate(Candidate::host(sub_socket.local_addr()?, "udp")?);
    let answer = subscriber
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&offer_sdp)?)?;
    let sub_handle = sink.answer(&answer.to_sdp_string()).await?;
    let sub_thread = std::thread::spawn(move || {
        let result = run_peer(subscriber, sub_socket, None, deadline, seconds);
        if let Err(e) = &result {
            eprintln!("subscriber peer failed: {e:#}");
        }
        result
    });
    client
        .wait_webrtc_up(sub_handle, Duration::from_secs(5))
        .await
        .context("subscriber")?;

    let (sent, received) =
        tokio::task::spawn_blocking(move || (pub_thread.join(), sub_thread.join())).await?;
    let sent = sent.map_err(|_| anyhow!("publisher thread panicked"))??;
    let received = received.map_err(|_| anyhow!("subscriber thread panicked"))??;
    println!(
        "publisher: connected {}, {} frames sent; subscriber: connected {}, {} frames ({} bytes) received",
        sent.connected,
        sent.frames_sent,
        received.connected,
        received.frames_received,
        received.bytes_received
    );
    room.remove(sub_handle).await?;
    room.remove(published.handle).await?;
    client.destroy_room(room.room).await?;
    drop(room);
    if let Ok(client) = Arc::try_unwrap(client) {
        client.close().await?;
    }
    if !(sent.connected && received.connected && received.frames_received > 0) {
        bail!("no media flowed through janus");
    }
    println!("ok: media flows through janus");
    Ok(())
}

fn candidates(sdp: &str) -> Vec<&str> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .collect()
}

/// A VP8 keyframe header (frame tag, start code, 320×240) and filler: enough
/// for any depacketizer or keyframe check on the way.
fn vp8_frame(len: usize) -> Vec<u8> {
    let mut frame = vec![0x55_u8; len.max(10)];
    frame[..10].copy_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
    frame
}

/// Drives one str0m peer on a blocking socket until `deadline`; when `send` is
/// given, writes a 30 fps VP8-shaped stream on that mid for `seconds` after
/// connecting.
fn run_peer(
    mut rtc: str0m::Rtc,
    socket: UdpSocket,
    send: Option<str0m::media::Mid>,
    deadline: Instant,
    seconds: u64,
) -> anyhow::Result<PeerCounts> {
    use str0m::media::{Frequency, MediaTime};
    use str0m::net::{Protocol, Receive};
    use str0m::{Event, Input, Output};

    let local = socket.local_addr()?;
    let debug = std::env::var_os("ONSTAGE_SMOKE_DEBUG").is_some();
    let mut counts = PeerCounts::default();
    let mut buf = vec![0_u8; 2000];
    let mut next_frame: Option<Instant> = None;
    let mut stop_sending = deadline;
    let frame = vp8_frame(9000);
    // str0m computes its first deadline only once time has been fed in.
    rtc.handle_input(Input::Timeout(Instant::now()))?;
    while Instant::now() < deadline {
        let timeout = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let sent = socket.send_to(&t.contents, t.destination);
                    if debug {
                        eprintln!(
                            "[{local}] -> {} {} bytes: {sent:?}",
                            t.destination,
                            t.contents.len()
                        );
                    }
                }
                Output::Event(Event::Connected) => {
                    counts.connected = true;
                    if send.is_some() {
                        next_frame = Some(Instant::now());
                        stop_sending = Instant::now() + Duration::from_secs(seconds);
                    }
                }
                Output::Event(Event::MediaData(data)) => {
                    counts.frames_received += 1;
                    counts.bytes_received += data.data.len() as u64;
                }
                Output::Event(event) => {
                    if debug {
                        eprintln!("[{local}] {event:?}");
                    }
                }
            }
        };
        let now = Instant::now();
        if let (Some(mid), Some(due)) = (send, next_frame)
            && now >= due
            && now < stop_sending
        {
            let pt = rtc.writer(mid).and_then(|w| {
                w.payload_params()
                    .find(|p| p.spec().codec == str0m::format::Codec::Vp8)
                    .map(|p| p.pt())
            });
            if let (Some(pt), Some(writer)) = (pt, rtc.writer(mid)) {
                let rtp_time = MediaTime::new(counts.frames_sent * 3000, Frequency::NINETY_KHZ);
                writer.write(pt, now, rtp_time, frame.clone())?;
                counts.frames_sent += 1;
            }
            next_frame = Some(due + Duration::from_millis(33));
            continue;
        }
        let mut wake = timeout.min(deadline);
        if let Some(due) = next_frame {
            wake = wake.min(due);
        }
        let wait = wake
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        socket.set_read_timeout(Some(wait))?;
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                if debug {
                    eprintln!("[{local}] <- {source} {n} bytes");
                }
                if let Ok(contents) = buf[..n].try_into() {
                    rtc.handle_input(Input::Receive(
                        Instant::now(),
                        Receive {
                            proto: Protocol::Udp,
                            source,
                            destination: local,
                            contents,
                        },
                    ))?;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                rtc.handle_input(Input::Timeout(Instant::now()))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_disables_all_plugins_but_videoroom() {
        let dir = make_temp_dir().expect("temp dir");
        write_config(&dir, &JanusOptions::default(), 18_088).expect("config");
        let text = std::fs::read_to_string(dir.join("janus.jcfg")).expect("read");
        assert!(text.contains("ice_enforce_list = \"198.18.0.1\""));
        assert!(text.contains("full_trickle = false"));
        if Path::new(JANUS_LIB_DIR).exists() {
            assert!(!text.contains("libjanus_videoroom.so"));
            assert!(text.contains("libjanus_echotest.so"));
            assert!(!text.contains("libjanus_http.so"));
        }
        let http = std::fs::read_to_string(dir.join("janus.transport.http.jcfg")).expect("read");
        assert!(http.contains("port = 18088") && http.contains("ip = \"127.0.0.1\""));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Needs Debian's `janus` (scripts/bench-setup):
    /// `cargo test -p onstage-loadtest -- --ignored janus`.
    #[test]
    #[ignore]
    fn janus_forwards_a_str0m_publisher_to_a_str0m_subscriber() {
        smoke(&SmokeArgs {
            cpus: None,
            seconds: 2,
            debug_level: 3,
        })
        .expect("media flows through janus");
    }
}
