//! Configuration: command-line flags, `ONSTAGE_*` environment variables and an
//! optional TOML file, in that order of precedence, over embedded defaults that let
//! `onstage serve` run with nothing configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
pub const DEFAULT_MEDIA_PORT: u16 = 7701;
pub const DEFAULT_DATA_DIR: &str = "./onstage-data";
pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_ACCOUNT_ID: &str = "000000000000";
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 10_000;
pub const DEV_ACCESS_KEY_ID: &str = "onstage";
pub const DEV_SECRET_ACCESS_KEY: &str = "onstage-secret";
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_HTTP_BODY_TIMEOUT_SECS: u64 = 30;

#[derive(Parser, Debug)]
#[command(
    name = "onstage",
    version,
    about = "A self-hostable real-time video stage server whose API is the Amazon IVS Real-Time API.",
    long_about = "onstage serves the Amazon IVS Real-Time (\"stages\") API, so code written for IVS — boto3, \
the AWS CLI, aws-sdk-rust — works against it with an endpoint override, and participants \
join stages over WebRTC (WHIP) with the tokens it issues.\n\n\
Start it with `onstage serve`; every setting has a working default."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: the HTTP API, WHIP, stage events and the join page on one TCP
    /// port, media on one UDP port, state in an embedded database.
    Serve(ServeArgs),
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "ONSTAGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API, WHIP, stage events and the join page [default: 127.0.0.1:7700]
    #[arg(long, env = "ONSTAGE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// UDP port of the media plane [default: 7701]
    #[arg(long, env = "ONSTAGE_MEDIA_PORT", value_name = "PORT")]
    pub media_port: Option<u16>,
    /// TCP port of RTMP ingest (encoders publishing with an ingest configuration's
    /// stream key) [default: 1935; 0 turns plain RTMP off]
    #[arg(long, env = "ONSTAGE_RTMP_PORT", value_name = "PORT")]
    pub rtmp_port: Option<u16>,
    /// TCP port of RTMPS ingest (e.g. 443 or 1936); off unless set (or 0)
    #[arg(long, env = "ONSTAGE_RTMPS_PORT", value_name = "PORT")]
    pub rtmps_port: Option<u16>,
    /// PEM certificate chain of RTMPS [default: a self-signed development
    /// certificate made on first start in the data directory]
    #[arg(
        long,
        env = "ONSTAGE_RTMPS_CERT",
        value_name = "FILE",
        requires = "rtmps_key"
    )]
    pub rtmps_cert: Option<PathBuf>,
    /// PEM private key of RTMPS (with --rtmps-cert)
    #[arg(
        long,
        env = "ONSTAGE_RTMPS_KEY",
        value_name = "FILE",
        requires = "rtmps_cert"
    )]
    pub rtmps_key: Option<PathBuf>,
    /// Directory of the embedded database [default: ./onstage-data]
    #[arg(long, env = "ONSTAGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base URL of the endpoints handed out in stages and tokens [default: http://<listen>]
    #[arg(long, env = "ONSTAGE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// AWS region this deployment answers as; requests must be signed for it [default: us-east-1]
    #[arg(long, env = "ONSTAGE_REGION")]
    pub region: Option<String>,
    /// Account id of the primary access key [default: 000000000000]
    #[arg(long, env = "ONSTAGE_ACCOUNT_ID")]
    pub account_id: Option<String>,
    /// Primary access key id [default: onstage, for development]
    #[arg(long, env = "ONSTAGE_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    /// Secret of the primary access key [default: onstage-secret, for development]
    #[arg(long, env = "ONSTAGE_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: Option<String>,
    /// Address peers reach the media port at, put in ICE candidates [default: the
    /// listen address; required when listening on a wildcard address]
    #[arg(long, env = "ONSTAGE_PUBLIC_IP", value_name = "IP")]
    pub public_ip: Option<std::net::IpAddr>,
    /// Most subscribers one stage accepts at once [default: 10000, as IVS]
    #[arg(long, env = "ONSTAGE_MAX_SUBSCRIBERS", value_name = "N")]
    pub max_subscribers: Option<usize>,
    /// Media forwarding threads; peers are spread over them [default: one per core]
    #[arg(long, env = "ONSTAGE_MEDIA_THREADS", value_name = "N")]
    pub media_threads: Option<usize>,
    /// Seconds a media peer may take to complete ICE and DTLS before it is given
    /// up [default: 20]
    #[arg(long, env = "ONSTAGE_CONNECT_TIMEOUT", value_name = "SECONDS")]
    pub connect_timeout: Option<f64>,
    /// Seconds a connected media peer may send nothing before it is taken to have
    /// vanished and its participant leaves [default: 12]
    #[arg(long, env = "ONSTAGE_SILENCE_TIMEOUT", value_name = "SECONDS")]
    pub silence_timeout: Option<f64>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "ONSTAGE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Most HTTP connections (WebSockets included) open at once; more wait until one
    /// closes. Lowered at start-up to fit the process's file-descriptor limit
    /// [default: 8192]
    #[arg(long, env = "ONSTAGE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds a connection has to send a request's complete header [default: 10]
    #[arg(long, env = "ONSTAGE_HTTP_HEADER_TIMEOUT", value_name = "SECONDS")]
    pub http_header_timeout: Option<u64>,
    /// Seconds a request has to send its whole body [default: 30]
    #[arg(long, env = "ONSTAGE_HTTP_BODY_TIMEOUT", value_name = "SECONDS")]
    pub http_body_timeout: Option<u64>,
    /// Accept the well-known development credentials on a listen address other than
    /// loopback (refused otherwise)
    #[arg(long, env = "ONSTAGE_ALLOW_DEV_CREDENTIALS")]
    pub allow_dev_credentials: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// RTMP's usual port, where encoders look first (BEHAVIOUR §10.5).
pub const DEFAULT_RTMP_PORT: u16 = 1935;

/// The optional TOML file. Same names as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub media_port: Option<u16>,
    pub rtmp_port: Option<u16>,
    pub rtmps_port: Option<u16>,
    pub rtmps_cert: Option<PathBuf>,
    pub rtmps_key: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    pub region: Option<String>,
    pub account_id: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub public_ip: Option<std::net::IpAddr>,
    pub max_subscribers: Option<usize>,
    pub media_threads: Option<usize>,
    pub connect_timeout: Option<f64>,
    pub silence_timeout: Option<f64>,
    pub log_format: Option<LogFormat>,
    pub max_connections: Option<usize>,
    pub http_header_timeout: Option<u64>,
    pub http_body_timeout: Option<u64>,
    #[serde(default)]
    pub allow_dev_credentials: bool,
    /// Further access keys, each mapped to an account.
    #[serde(default)]
    pub access_keys: Vec<AccessKeyConfig>,
    /// Where storage configurations' buckets are: an S3-compatible service.
    /// Without it each bucket is a directory under `<data_dir>/buckets/`.
    pub s3: Option<S3Config>,
}

/// `[s3]`: the S3-compatible service recordings go to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host:port`; AWS's endpoint for the region when absent.
    pub endpoint: Option<String>,
    #[serde(default = "default_s3_region")]
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Bucket in the path (`endpoint/bucket/key`), as most self-hosted services
    /// want; false for virtual-hosted buckets (`bucket.endpoint/key`).
    #[serde(default = "default_path_style")]
    pub path_style: bool,
}

fn default_s3_region() -> String {
    DEFAULT_REGION.to_owned()
}

fn default_path_style() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default = "default_account")]
    pub account_id: String,
}

fn default_account() -> String {
    DEFAULT_ACCOUNT_ID.to_owned()
}

/// The settings in force, after flags, environment, file and defaults.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub media_port: u16,
    /// RTMP ingest's port; `None`: no plain RTMP.
    pub rtmp_port: Option<u16>,
    /// RTMPS ingest's port; `None`: no RTMPS.
    pub rtmps_port: Option<u16>,
    /// RTMPS certificate and key; `None`: the development certificate.
    pub rtmps_tls: Option<(PathBuf, PathBuf)>,
    pub data_dir: PathBuf,
    pub public_url: String,
    pub region: String,
    pub access_keys: Vec<AccessKeyConfig>,
    pub public_ip: Option<std::net::IpAddr>,
    pub max_subscribers: usize,
    /// 0: one per available core.
    pub media_threads: usize,
    pub connect_timeout: std::time::Duration,
    pub silence_timeout: std::time::Duration,
    pub log_format: LogFormat,
    pub max_connections: usize,
    pub http_header_timeout: std::time::Duration,
    pub http_body_timeout: std::time::Duration,
    /// Where recordings go; None: `<data_dir>/buckets/<bucket>/`.
    pub s3: Option<S3Config>,
}

impl Settings {
    /// The directory local buckets are in (without `[s3]`).
    pub fn buckets_dir(&self) -> PathBuf {
        self.data_dir.join("buckets")
    }

    pub fn resolve(args: ServeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = match args.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN.parse().context("default listen address")?,
        };
        let public_url = args
            .public_url
            .or(file.public_url)
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            bail!("--public-url must start with http:// or https://, got {public_url}");
        }
        let region = args
            .region
            .or(file.region)
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("--region must be of [a-z0-9-], got {region:?}");
        }
        let account_id = args
            .account_id
            .or(file.account_id)
            .unwrap_or_else(default_account);
        let access_keys = resolve_access_keys(
            args.access_key_id.or(file.access_key_id),
            args.secret_access_key.or(file.secret_access_key),
            account_id,
            file.access_keys,
        )?;
        let uses_dev_secret = access_keys
            .iter()
            .any(|k| k.secret_access_key == DEV_SECRET_ACCESS_KEY);
        if uses_dev_secret
            && !listen.ip().is_loopback()
            && !(args.allow_dev_credentials || file.allow_dev_credentials)
        {
            bail!(
                "refusing to listen on {listen} with the development credentials \
                 ({DEV_ACCESS_KEY_ID} / {DEV_SECRET_ACCESS_KEY}), which anyone can read in the \
                 documentation: configure access keys of your own (--access-key-id and \
                 --secret-access-key, or [[access_keys]] in the configuration file), listen on \
                 loopback, or pass --allow-dev-credentials"
            );
        }
        let whole_seconds = |name: &str, value: Option<u64>, default: u64| {
            let s = value.unwrap_or(default);
            if s == 0 {
                bail!("--{name} must be at least 1 second");
            }
            Ok(std::time::Duration::from_secs(s))
        };
        let http_header_timeout = whole_seconds(
            "http-header-timeout",
            args.http_header_timeout.or(file.http_header_timeout),
            DEFAULT_HTTP_HEADER_TIMEOUT_SECS,
        )?;
        let http_body_timeout = whole_seconds(
            "http-body-timeout",
            args.http_body_timeout.or(file.http_body_timeout),
            DEFAULT_HTTP_BODY_TIMEOUT_SECS,
        )?;
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if let Some(s3) = &file.s3
            && let Some(endpoint) = &s3.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            bail!("s3.endpoint must start with http:// or https://, got {endpoint}");
        }
        let s3 = file.s3.clone();
        Ok(Settings {
            s3,
            listen,
            media_port: args
                .media_port
                .or(file.media_port)
                .unwrap_or(DEFAULT_MEDIA_PORT),
            rtmp_port: Some(
                args.rtmp_port
                    .or(file.rtmp_port)
                    .unwrap_or(DEFAULT_RTMP_PORT),
            )
            .filter(|p| *p != 0),
            rtmps_port: args.rtmps_port.or(file.rtmps_port).filter(|p| *p != 0),
            rtmps_tls: match (
                args.rtmps_cert.or(file.rtmps_cert),
                args.rtmps_key.or(file.rtmps_key),
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => bail!("rtmps_cert and rtmps_key go together: give both or neither"),
            },
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            public_url,
            region,
            access_keys,
            public_ip: args.public_ip.or(file.public_ip),
            max_subscribers: args
                .max_subscribers
                .or(file.max_subscribers)
                .unwrap_or(DEFAULT_MAX_SUBSCRIBERS),
            media_threads: args.media_threads.or(file.media_threads).unwrap_or(0),
            connect_timeout: seconds(
                "connect-timeout",
                args.connect_timeout.or(file.connect_timeout),
                20.0,
            )?,
            silence_timeout: seconds(
                "silence-timeout",
                args.silence_timeout.or(file.silence_timeout),
                12.0,
            )?,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            max_connections,
            http_header_timeout,
            http_body_timeout,
        })
    }

    /// Where the media plane binds: the listen address's IP, the media port.
    pub fn media_bind(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.listen.ip(), self.media_port)
    }

    /// Where RTMP ingest binds: the listen address's IP, the RTMP port.
    pub fn rtmp_bind(&self) -> Option<std::net::SocketAddr> {
        self.rtmp_port
            .map(|port| std::net::SocketAddr::new(self.listen.ip(), port))
    }

    pub fn rtmps_bind(&self) -> Option<std::net::SocketAddr> {
        self.rtmps_port
            .map(|port| std::net::SocketAddr::new(self.listen.ip(), port))
    }

    /// `endpoints.rtmp` of every stage: the public URL's host, the RTMP port, the
    /// application an encoder connects to (`rtmp://host:port/app/`).
    pub fn rtmp_url(&self) -> Option<String> {
        Some(format!(
            "rtmp://{}:{}/app/",
            self.public_host(),
            self.rtmp_port?
        ))
    }

    /// `endpoints.rtmps` of every stage.
    pub fn rtmps_url(&self) -> Option<String> {
        Some(format!(
            "rtmps://{}:{}/app/",
            self.public_host(),
            self.rtmps_port?
        ))
    }

    fn public_host(&self) -> &str {
        let rest = self
            .public_url
            .strip_prefix("https://")
            .or_else(|| self.public_url.strip_prefix("http://"))
            .unwrap_or(&self.public_url);
        let authority = rest.split('/').next().unwrap_or(rest);
        match authority.rfind(':') {
            // Not the colon of a bracketed IPv6 address.
            Some(i) if !authority[i..].contains(']') => &authority[..i],
            _ => authority,
        }
    }

    /// `endpoints.whip` of every stage.
    pub fn whip_url(&self) -> String {
        format!("{}/whip", self.public_url)
    }

    /// `endpoints.events`: the same origin over WebSocket.
    pub fn events_url(&self) -> String {
        let ws = if let Some(rest) = self.public_url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.public_url.trim_start_matches("http://"))
        };
        format!("{ws}/events")
    }
}

/// The access keys in force: the primary key (flags, environment or the file's
/// top level) and the file's `[[access_keys]]`. The development key applies only
/// when none is configured at all; an access key id given twice is an error.
fn resolve_access_keys(
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    account_id: String,
    more: Vec<AccessKeyConfig>,
) -> anyhow::Result<Vec<AccessKeyConfig>> {
    let primary = match (access_key_id, secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Some(AccessKeyConfig {
            access_key_id,
            secret_access_key,
            account_id,
        }),
        (Some(id), None) => bail!("access key {id} is configured without --secret-access-key"),
        (None, Some(_)) => bail!("--secret-access-key is configured without --access-key-id"),
        (None, None) if more.is_empty() => Some(AccessKeyConfig {
            access_key_id: DEV_ACCESS_KEY_ID.to_owned(),
            secret_access_key: DEV_SECRET_ACCESS_KEY.to_owned(),
            account_id,
        }),
        (None, None) => None,
    };
    let access_keys: Vec<AccessKeyConfig> = primary.into_iter().chain(more).collect();
    let mut seen = std::collections::HashSet::new();
    for k in &access_keys {
        if k.access_key_id.is_empty() || k.secret_access_key.is_empty() {
            bail!("access key ids and secrets must not be empty");
        }
        if !seen.insert(k.access_key_id.as_str()) {
            bail!(
                "access key id {} is configured more than once; each id must name one key",
                k.access_key_id
            );
        }
        if k.account_id.len() != 12 || !k.account_id.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "account id of access key {} must be 12 digits, got {:?}",
                k.access_key_id,
                k.account_id
            );
        }
    }
    Ok(access_keys)
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// A timeout setting in seconds: positive and at most a day.
fn seconds(name: &str, value: Option<f64>, default: f64) -> anyhow::Result<std::time::Duration> {
    let value = value.unwrap_or(default);
    if !(value > 0.0 && value <= 86_400.0) {
        bail!("{name} must be a number of seconds above 0 and at most 86400, got {value}");
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtmp_listens_on_1935_unless_turned_off_and_rtmps_only_when_asked() {
        let s = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(s.rtmp_port, Some(1935));
        assert_eq!(s.rtmps_port, None);
        let off = Settings::resolve(ServeArgs {
            rtmp_port: Some(0),
            rtmps_port: Some(0),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!((off.rtmp_port, off.rtmps_port), (None, None));
        assert_eq!(off.rtmp_url(), None);
    }

    #[test]
    fn the_rtmp_endpoint_uses_the_public_host() {
        let mut s = Settings::resolve(ServeArgs {
            rtmp_port: Some(1935),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(s.rtmp_url().as_deref(), Some("rtmp://127.0.0.1:1935/app/"));
        s.public_url = "https://stage.example.com".into();
        assert_eq!(
            s.rtmp_url().as_deref(),
            Some("rtmp://stage.example.com:1935/app/")
        );
        s.rtmp_port = None;
        assert_eq!(s.rtmp_url(), None);
        s.rtmps_port = Some(1936);
        assert_eq!(
            s.rtmps_url().as_deref(),
            Some("rtmps://stage.example.com:1936/app/")
        );
    }

    #[test]
    fn defaults_need_nothing() {
        let s = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.whip_url(), "http://127.0.0.1:7700/whip");
        assert_eq!(s.events_url(), "ws://127.0.0.1:7700/events");
        assert_eq!(s.access_keys.len(), 1);
        assert_eq!(s.access_keys[0].access_key_id, DEV_ACCESS_KEY_ID);
    }

    #[test]
    fn media_timeouts_default_and_refuse_nonsense() {
        let s = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(s.connect_timeout, std::time::Duration::from_secs(20));
        assert_eq!(s.silence_timeout, std::time::Duration::from_secs(12));
        let args = ServeArgs {
            silence_timeout: Some(0.5),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.silence_timeout, std::time::Duration::from_millis(500));
        let args = ServeArgs {
            connect_timeout: Some(-1.0),
            ..ServeArgs::default()
        };
        let err = Settings::resolve(args).unwrap_err().to_string();
        assert!(err.contains("connect-timeout"), "{err}");
    }

    #[test]
    fn file_adds_accounts_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("onstage.toml");
        std::fs::write(
            &path,
            "region = \"eu-west-1\"\npublic_url = \"https://stage.example.com/\"\n[[access_keys]]\naccess_key_id = \"A2\"\nsecret_access_key = \"s2\"\naccount_id = \"111111111111\"\n",
        )
        .unwrap();
        let s = Settings::resolve(ServeArgs {
            config: Some(path),
            region: Some("us-west-2".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.region, "us-west-2");
        assert_eq!(s.events_url(), "wss://stage.example.com/events");
        assert_eq!(
            s.access_keys.len(),
            1,
            "no development key beside configured ones"
        );
        assert_eq!(s.access_keys[0].access_key_id, "A2");
        assert_eq!(s.access_keys[0].account_id, "111111111111");
    }

    fn with_file(text: &str, args: ServeArgs) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("onstage.toml");
        std::fs::write(&path, text)?;
        Settings::resolve(ServeArgs {
            config: Some(path),
            ..args
        })
    }

    #[test]
    fn a_duplicate_access_key_id_is_an_error_naming_it() {
        let text = "[[access_keys]]\naccess_key_id = \"TWICE\"\nsecret_access_key = \"a\"\n\
                    [[access_keys]]\naccess_key_id = \"TWICE\"\nsecret_access_key = \"b\"\n";
        let e = with_file(text, ServeArgs::default()).unwrap_err();
        assert!(format!("{e}").contains("TWICE"), "{e}");
        let text = "access_key_id = \"P\"\nsecret_access_key = \"p\"\n\
                    [[access_keys]]\naccess_key_id = \"P\"\nsecret_access_key = \"b\"\n";
        let e = with_file(text, ServeArgs::default()).unwrap_err();
        assert!(format!("{e}").contains("access key id P "), "{e}");
    }

    #[test]
    fn a_primary_key_replaces_the_development_key() {
        let s = Settings::resolve(ServeArgs {
            access_key_id: Some("AKIDMINE".into()),
            secret_access_key: Some("mine".into()),
            ..Default::default()
        })
        .unwrap();
        let ids: Vec<_> = s
            .access_keys
            .iter()
            .map(|k| k.access_key_id.as_str())
            .collect();
        assert_eq!(ids, ["AKIDMINE"]);
        assert!(
            Settings::resolve(ServeArgs {
                access_key_id: Some("AKIDMINE".into()),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn development_credentials_stay_on_loopback_unless_allowed() {
        let public = || Some("0.0.0.0:7700".parse().unwrap());
        let e = Settings::resolve(ServeArgs {
            listen: public(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{e}").contains("--allow-dev-credentials"), "{e}");
        Settings::resolve(ServeArgs {
            listen: public(),
            allow_dev_credentials: true,
            ..Default::default()
        })
        .unwrap();
        Settings::resolve(ServeArgs {
            listen: public(),
            access_key_id: Some("AKIDMINE".into()),
            secret_access_key: Some("mine".into()),
            ..Default::default()
        })
        .unwrap();
        Settings::resolve(ServeArgs {
            listen: Some("[::1]:7700".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    }
}
