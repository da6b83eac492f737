//! The `onstage` binary: reads the configuration, opens the store, wires the
//! control plane to the HTTP API and serves until told to stop.

mod config;
mod fd_limit;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use onstage_api::server::HttpLimits;
use onstage_api::{AccessKey, ApiState, Credentials};
use onstage_ingest::live::LiveSink;
use onstage_ingest::server::{IngestServer, IngestSettings};
use onstage_media::{MediaConfig, MediaServer};
use onstage_record::{Buckets, MediaRecorder, S3Settings, StorageSettings};
use onstage_stage::live::{LiveConfig, LivePlane};
use onstage_stage::{ControlPlane, ControlPlaneConfig};
use onstage_store::SqliteStore;
use tracing_subscriber::EnvFilter;

use config::{Cli, Command, DEV_SECRET_ACCESS_KEY, LogFormat, Settings};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::resolve(args)?;
            init_logging(settings.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("onstage")
                .build()
                .context("starting the async runtime")?
                .block_on(serve(settings))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("ONSTAGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store = SqliteStore::open(&settings.data_dir)
        .await
        .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?;
    let control = ControlPlane::open(
        Arc::new(store),
        ControlPlaneConfig {
            whip_url: settings.whip_url(),
            events_url: settings.events_url(),
            rtmp_url: settings.rtmp_url(),
            rtmps_url: settings.rtmps_url(),
        },
    )
    .await
    .context("loading the token-signing key")?;
    let control = Arc::new(control);

    let (signals, signal_receiver) = tokio::sync::mpsc::unbounded_channel();
    let media = MediaServer::start(
        MediaConfig {
            bind: settings.media_bind(),
            candidate_ip: settings.public_ip,
            shards: settings.media_threads,
            connect_timeout: settings.connect_timeout,
            silence_timeout: settings.silence_timeout,
        },
        signals,
    )
    .context("starting the media plane")?;
    let media_candidate = media.candidate_addr();
    let media = Arc::new(media);
    let live = LivePlane::open(
        control.clone(),
        media.clone(),
        LiveConfig {
            max_subscribers: settings.max_subscribers,
            ..LiveConfig::default()
        },
    )
    .await
    .context("starting the live plane")?;
    live.spawn_media_signals(signal_receiver);
    let storage = match &settings.s3 {
        Some(s3) => StorageSettings::S3(S3Settings {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
            path_style: s3.path_style,
        }),
        None => StorageSettings::Local {
            root: settings.buckets_dir(),
        },
    };
    let (recording_signals, recording_receiver) = tokio::sync::mpsc::unbounded_channel();
    live.attach_recorder(
        MediaRecorder::new(
            media,
            Arc::new(Buckets::new(storage, control.clock().clone())),
            control.clock().clone(),
            recording_signals,
        ),
        recording_receiver,
    );
    let live_for_shutdown = live.clone();

    let ingest = IngestServer::new(
        control.clone(),
        Arc::new(LiveSink::new(live.clone())),
        IngestSettings::default(),
    );
    if let Some(bind) = settings.rtmp_bind() {
        let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| {
            format!(
                "binding RTMP ingest to {bind} (another port: --rtmp-port; none: --rtmp-port 0)"
            )
        })?;
        tokio::spawn(ingest.clone().serve_plain(listener));
        tracing::info!(%bind, "RTMP ingest listening");
    }
    if let Some(bind) = settings.rtmps_bind() {
        let (cert, key) = match &settings.rtmps_tls {
            Some(files) => files.clone(),
            None => onstage_ingest::tls::development_certificate(&settings.data_dir)
                .context("making the RTMPS development certificate")?,
        };
        let tls =
            onstage_ingest::tls::acceptor(&cert, &key).context("loading RTMPS's certificate")?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding RTMPS ingest to {bind}"))?;
        tokio::spawn(ingest.clone().serve_tls(listener, tls));
        tracing::info!(%bind, certificate = %cert.display(), "RTMPS ingest listening");
    }

    let mut credentials = Credentials::new();
    for k in &settings.access_keys {
        credentials.insert(
            k.access_key_id.clone(),
            AccessKey {
                secret: k.secret_access_key.clone(),
                account_id: k.account_id.clone(),
            },
        );
    }
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let runtime = tokio::runtime::Handle::current();
    let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
        // Sampled at scrape time: a count that only grows under steady load is a
        // leaked task.
        metrics::gauge!("onstage_runtime_alive_tasks")
            .set(runtime.metrics().num_alive_tasks() as f64);
        prometheus.render()
    });
    let state = ApiState::new(control, credentials, settings.region.clone(), Some(render))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = onstage_api::router(Arc::new(state))
        .merge(onstage_api::participant_router(live.clone()))
        .merge(onstage_api::join::join_router())
        .layer(onstage_api::trace::layer());

    let limits = HttpLimits {
        header_read_timeout: settings.http_header_timeout,
        body_deadline: settings.http_body_timeout,
        max_connections: fd_limit::connections_within(settings.max_connections),
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    print_banner(
        &settings,
        listener.local_addr().unwrap_or(settings.listen),
        media_candidate,
        &limits,
    );
    onstage_api::server::serve(listener, app, limits, async move {
        shutdown_signal().await;
        // Record everyone as LEFT and end the sessions, and close the events
        // sockets, which graceful shutdown would otherwise wait for.
        live_for_shutdown.shutdown().await;
    })
    .await
    .context("serving HTTP")?;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(
    settings: &Settings,
    bound: std::net::SocketAddr,
    media: std::net::SocketAddr,
    limits: &HttpLimits,
) {
    let api = format!("http://{bound}");
    println!(
        "onstage {} — Amazon IVS Real-Time API",
        env!("CARGO_PKG_VERSION")
    );
    println!("  API endpoint    {api}   (aws ivs-realtime --endpoint-url {api} ...)");
    println!(
        "  public URL      {}  (whip {}, events {})",
        settings.public_url,
        settings.whip_url(),
        settings.events_url()
    );
    println!("  region          {}", settings.region);
    const SHOWN_KEYS: usize = 3;
    for k in settings.access_keys.iter().take(SHOWN_KEYS) {
        let secret = if k.secret_access_key == DEV_SECRET_ACCESS_KEY {
            format!("{} (development default)", k.secret_access_key)
        } else {
            mask(&k.secret_access_key)
        };
        println!(
            "  credentials     {} / {}  → account {}",
            k.access_key_id, secret, k.account_id
        );
    }
    if settings.access_keys.len() > SHOWN_KEYS {
        println!(
            "                  … and {} more access keys from the configuration",
            settings.access_keys.len() - SHOWN_KEYS
        );
    }
    println!("  data directory  {}", settings.data_dir.display());
    match &settings.s3 {
        Some(s3) => println!(
            "  recordings      S3 {}",
            s3.endpoint.as_deref().unwrap_or("(AWS)")
        ),
        None => println!(
            "  recordings      {}/<bucket>/",
            settings.buckets_dir().display()
        ),
    }
    println!("  media (UDP)     {media}  (ICE host candidate)");
    for url in [settings.rtmp_url(), settings.rtmps_url()]
        .into_iter()
        .flatten()
    {
        println!("  ingest          {url}<streamKey>");
    }
    println!("  join page       {api}/join?token=<participant token>");
    println!("  JWKS            {api}/.well-known/jwks.json   metrics {api}/metrics");
    println!(
        "  HTTP limits     {} connections, headers within {} s, bodies within {} s",
        limits.max_connections,
        limits.header_read_timeout.as_secs(),
        limits.body_deadline.as_secs()
    );
}

fn mask(secret: &str) -> String {
    let shown: String = secret.chars().take(2).collect();
    format!(
        "{shown}{}",
        "*".repeat(secret.chars().count().saturating_sub(2).min(16))
    )
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
