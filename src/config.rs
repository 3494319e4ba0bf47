//! Configuration: the TOML file of DESIGN.md section 6, parsed and validated.
//!
//! `Config` is the typed, validated form every other module reads. Parsing reports every
//! problem at once, each as `FILE:LINE: KEY: problem`, and a file with any problem is refused
//! whole (exit code 64 from the binary). Secrets never live in this file: only paths to them.
//!
//! The file is parsed with `toml_edit` keeping byte spans, then walked by hand section by section
//! (`sections`, over the typed getters of `reader`), so every problem carries the line of the key
//! or value at fault and one run reports all of them. Every key is optional except `outpost.url`;
//! an absent key takes the default const below, whose doc says why it is that value.

mod reader;
mod sections;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml_edit::{ImDocument, Table, TableLike};

use reader::{Problems, Section};

/// Default main listener: where the nginx auth-proxy listened, so Traefik middlewares keep working.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9000";
/// Default admin listener: loopback only, metrics and probes are not for the world.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// [`DEFAULT_LISTEN`] as an address (a test keeps the two equal).
pub const DEFAULT_LISTEN_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9000));
/// [`DEFAULT_ADMIN_LISTEN`] as an address (a test keeps the two equal).
pub const DEFAULT_ADMIN_LISTEN_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));
/// Outpost URL used by `Config::default()` only: a file must name its outpost (`outpost.url` is
/// required), this is the outpost's own default listener on the same host.
pub const DEFAULT_OUTPOST_URL: &str = "http://127.0.0.1:9000";
/// 512 KiB of request head: 30+ `authentik_proxy_*` cookies must fit (nginx used 8 x 64k buffers).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 512 * 1024;
/// A client that has not sent its whole head in 10 s is dropped (nginx `client_header_timeout` is 60 s;
/// forward-auth callers are proxies on a LAN, so far less is plenty).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Peers trusted to set `X-Forwarded-*` and `X-Original-URL` when the file names none: DESIGN
/// section 6's cluster default (pods, which is where Traefik runs, and loopback).
pub const DEFAULT_TRUSTED_PROXIES: [&str; 2] = ["10.0.0.0/8", "127.0.0.0/8"];
/// Time between `/readyz` turning 503 and accepting stopping, so load balancers move away first.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// Deadline for requests in flight at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The nginx tier's `proxy_connect_timeout 3s`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The nginx tier's `proxy_read_timeout 5s`, here bounding the whole exchange.
pub const DEFAULT_OUTPOST_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle outpost connections kept. nginx's `keepalive 32` churned at 64 concurrent callers.
pub const DEFAULT_POOL_MAX_IDLE: usize = 256;
/// Below the outpost's 120 s idle timeout, so we never race its close.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a positive decision may answer from memory (the staleness bound of a revoked session).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);
/// Entries kept before LRU eviction.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;
/// The nginx tier's realm name, so browsers' remembered credentials still apply.
pub const DEFAULT_REALM: &str = "Emergency Access";
/// Where the emergency htpasswd lives by default.
pub const DEFAULT_HTPASSWD_FILE: &str = "/etc/portcullis/htpasswd";
/// Consecutive outpost failures that open the circuit breaker.
pub const DEFAULT_TRIP_AFTER: u32 = 3;
/// How often the open breaker probes `/outpost.goauthentik.io/ping`.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a verified emergency credential is remembered (one bcrypt per credential per 5 min).
pub const DEFAULT_VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Failed emergency logins per user (across addresses) before the user is limited.
pub const DEFAULT_MAX_FAILURES_PER_USER: u32 = 5;
/// Failed emergency logins per client address before the address is limited.
pub const DEFAULT_MAX_FAILURES_PER_ADDRESS: u32 = 10;
/// The window both failure limits count over.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// `info`: a line per regime change and per problem, not per request.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// JSON, for log shippers; `text` is for a terminal.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Json;
/// Default edge HTTPS listener: the standard port on every address.
pub const DEFAULT_EDGE_LISTEN_HTTPS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 443));

/// The sections a file may have, in the order DESIGN.md section 6 lists them.
const SECTIONS: &[&str] = &["server", "outpost", "cache", "fallback", "log", "edge"];

/// The whole validated configuration; `Default` is every default, with [`DEFAULT_OUTPOST_URL`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[outpost]`
    pub outpost: OutpostConfig,
    /// `[cache]`
    pub cache: CacheConfig,
    /// `[fallback]`
    pub fallback: FallbackConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[edge]`: TLS front with host routes; `None` (the default) runs the auth tier only.
    pub edge: Option<EdgeConfig>,
}

/// `[server]`: listeners, trust and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Main (forward-auth) listener.
    pub listen: SocketAddr,
    /// Admin listener: `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// Peers whose `X-Forwarded-*` and `X-Original-URL` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request head accepted; beyond it the answer is 431.
    pub max_header_bytes: usize,
    /// Time allowed for a client to send its request head.
    pub header_read_timeout: Duration,
    /// Delay between readiness turning 503 and accepting stopping.
    pub shutdown_delay: Duration,
    /// Deadline for in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// Async worker threads; 0 = one per CPU available to the process.
    pub workers: usize,
}

/// `[outpost]`: where the authentik outpost is and how to talk to it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutpostConfig {
    /// Base URL, `http://host:port` (no path beyond `/`).
    pub url: http::Uri,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Bound on the whole exchange, connect included.
    pub timeout: Duration,
    /// Idle keepalive connections kept.
    pub pool_max_idle: usize,
    /// Idle connections older than this are closed.
    pub pool_idle_timeout: Duration,
}

/// `[cache]`: the positive-decision cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Time to live of a positive decision; zero turns the cache off.
    pub ttl: Duration,
    /// Maximum entries.
    pub capacity: usize,
}

/// `[fallback]`: the emergency Basic realm and the circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackConfig {
    /// `false`: an outpost outage answers 503.
    pub enabled: bool,
    /// Basic realm name.
    pub realm: String,
    /// htpasswd file path.
    pub htpasswd_file: PathBuf,
    /// Consecutive failures that open the breaker.
    pub trip_after: u32,
    /// Probe interval while the breaker is open.
    pub probe_interval: Duration,
    /// How long a verified credential is remembered.
    pub verified_ttl: Duration,
    /// Failed attempts per user before limiting.
    pub max_failures_per_user: u32,
    /// Failed attempts per client address before limiting.
    pub max_failures_per_address: u32,
    /// Window for both failure counts.
    pub failure_window: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// An `EnvFilter` directive, e.g. `info` or `portcullis=debug`.
    pub level: String,
    /// JSON or text.
    pub format: LogFormat,
}

/// `[edge]`: the TLS front of DESIGN.md section 5.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    /// HTTPS listener (HTTP/1.1 and HTTP/2 over TLS).
    pub listen_https: SocketAddr,
    /// Plain HTTP listener that only answers 308 to `https://`; `None`: not bound.
    pub listen_http: Option<SocketAddr>,
    /// Certificates, at least one; the first is served to clients without SNI.
    pub certs: Vec<CertConfig>,
    /// Host routes, at least one; hosts are unique and lower case.
    pub routes: Vec<RouteConfig>,
}

/// One `[[edge.cert]]`: paths only, the files are read at start-up and watched.
#[derive(Debug, Clone, PartialEq)]
pub struct CertConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One `[[edge.route]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The host this route answers, lower case, without port.
    pub host: String,
    /// `http://host:port` of the backend.
    pub backend: http::Uri,
    /// Who may pass.
    pub auth: RouteAuth,
    /// With [`RouteAuth::LocalOrAuth`]: client addresses that pass without auth.
    pub local_networks: Vec<IpNet>,
}

/// `auth` of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    /// Every request runs the forward-auth pipeline (the default: fail closed).
    Required,
    /// No authentication; identity headers are still stripped.
    None,
    /// Clients in `local_networks` pass without identity, others as `Required`.
    LocalOrAuth,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN_ADDR,
            admin_listen: DEFAULT_ADMIN_LISTEN_ADDR,
            trusted_proxies: DEFAULT_TRUSTED_PROXIES
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_delay: DEFAULT_SHUTDOWN_DELAY,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            workers: 0,
        }
    }
}

impl Default for OutpostConfig {
    fn default() -> Self {
        OutpostConfig {
            url: http::Uri::from_static(DEFAULT_OUTPOST_URL),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_OUTPOST_TIMEOUT,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: DEFAULT_CACHE_TTL,
            capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            enabled: true,
            realm: DEFAULT_REALM.to_owned(),
            htpasswd_file: PathBuf::from(DEFAULT_HTPASSWD_FILE),
            trip_after: DEFAULT_TRIP_AFTER,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            verified_ttl: DEFAULT_VERIFIED_TTL,
            max_failures_per_user: DEFAULT_MAX_FAILURES_PER_USER,
            max_failures_per_address: DEFAULT_MAX_FAILURES_PER_ADDRESS,
            failure_window: DEFAULT_FAILURE_WINDOW,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            format: DEFAULT_LOG_FORMAT,
        }
    }
}

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line of the offending key or value (1 when there is none, e.g. a missing key).
    pub line: usize,
    /// Dotted key, e.g. `cache.ttl`; `toml` for a syntax error, `config` for an unreadable file.
    pub key: String,
    /// What is wrong, in words, e.g. `expected a duration like "10s"`.
    pub problem: String,
}

/// Every problem of one file; displayed one line per problem as `FILE:LINE: KEY: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file as the user named it.
    pub file: String,
    /// Never empty, ordered by line.
    pub problems: Vec<ConfigProblem>,
}

impl ConfigErrors {
    /// Errors made of one problem.
    pub fn single(
        file: impl Into<String>,
        line: usize,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ConfigErrors {
            file: file.into(),
            problems: vec![ConfigProblem {
                line,
                key: key.into(),
                problem: problem.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}: {}: {}", self.file, p.line, p.key, p.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Parses and validates `text`; `file` only names the source in problems.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let doc = ImDocument::parse(text).map_err(|e| syntax_error(text, file, &e))?;
        let mut p = Problems::new(text);
        let root = doc.as_table();
        reject_unknown_sections(root, &mut p);
        let config = Config {
            server: sections::server(&section(root, &p, "server"), &mut p),
            outpost: sections::outpost(&section(root, &p, "outpost"), &mut p),
            cache: sections::cache(&section(root, &p, "cache"), &mut p),
            fallback: sections::fallback(&section(root, &p, "fallback"), &mut p),
            log: sections::log(&section(root, &p, "log"), &mut p),
            edge: None,
        };
        let config = Config {
            edge: root
                .contains_key("edge")
                .then(|| sections::edge(&section(root, &p, "edge"), &config.server, &mut p)),
            ..config
        };
        let problems = p.into_sorted();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(ConfigErrors {
            file: file.to_owned(),
            problems,
        })
    }

    /// Reads and validates the file at `path`; an unreadable file is one problem, key `config`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, &file),
            Err(e) => Err(ConfigErrors::single(
                file,
                1,
                "config",
                format!("cannot read file: {e}"),
            )),
        }
    }
}

/// The 1-based line of a dotted key in TOML `text` (`fallback.htpasswd_file`,
/// `edge.cert[0].key`), if the text parses and has it.
pub fn key_line(text: &str, key: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut table: &dyn TableLike = doc.as_table();
    let mut span = None;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (part, None),
        };
        let (k, item) = table.get_key_value(name)?;
        span = k.span();
        if parts.peek().is_none() {
            break;
        }
        table = match index {
            Some(i) => item.as_array_of_tables()?.get(i)?,
            None => item.as_table_like()?,
        };
    }
    Problems::new(text).line_at(span)
}

/// A TOML syntax error as one problem on its line, named by the key written there (or its
/// table; `toml` when there is neither); the message keeps to one line.
fn syntax_error(text: &str, file: &str, e: &toml_edit::TomlError) -> ConfigErrors {
    let line = Problems::new(text).line_at(e.span()).unwrap_or(1);
    let message = e.message().trim().replace('\n', "; ");
    let key = key_at_line(text, line).unwrap_or_else(|| "toml".to_owned());
    ConfigErrors::single(file, line, &key, message)
}

/// The dotted key that line `line` of a file that does not parse writes: the table headers above
/// it, then its own `key =`, by reading the lines (`[[edge.cert]]` counted as `edge.cert[N]`).
/// Just the table when the line is no `key =`; `None` outside any.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    // Only names this file format has are repeated: the text around a syntax error may be a
    // secret pasted into the wrong place.
    let known = |k: &str| {
        use sections::*;
        let keys = [
            SECTIONS,
            SERVER_KEYS,
            OUTPOST_KEYS,
            CACHE_KEYS,
            FALLBACK_KEYS,
            LOG_KEYS,
            EDGE_KEYS,
            CERT_KEYS,
            ROUTE_KEYS,
        ];
        let last = k.rsplit('.').next().unwrap_or(k);
        keys.iter().any(|list| list.contains(&last))
    };
    let mut table = None;
    let mut arrays: Vec<(String, usize)> = Vec::new();
    for (i, l) in text.lines().enumerate().take(line) {
        let l = l.trim();
        if i + 1 == line {
            if l.starts_with('[') {
                // A broken header names its own table.
                let name = l.trim_matches(|c| c == '[' || c == ']').trim();
                return known(name).then(|| name.to_owned());
            }
            if let Some((k, _)) = l.split_once('=').filter(|(k, _)| known(k.trim())) {
                let k = k.trim();
                return Some(table.map_or_else(|| k.to_owned(), |t| format!("{t}.{k}")));
            }
        }
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            let name = name.0.trim().to_owned();
            let n = match arrays.iter_mut().find(|(a, _)| *a == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    arrays.push((name.clone(), 0));
                    0
                }
            };
            table = Some(format!("{name}[{n}]"));
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split_once(']')) {
            table = Some(name.0.trim().to_owned());
        }
    }
    table
}

/// Top-level entries that are not one of [`SECTIONS`], and sections that are not tables.
fn reject_unknown_sections(root: &Table, p: &mut Problems<'_>) {
    for (name, item) in root.iter() {
        let span = root
            .key(name)
            .and_then(|k| k.span())
            .or_else(|| item.span());
        let line = p.line_at(span).unwrap_or(1);
        let problem = if !SECTIONS.contains(&name) {
            let what = if item.is_table_like() {
                "section"
            } else {
                "key"
            };
            reader::unknown(what, name, SECTIONS)
        } else if !item.is_table_like() && !item.is_none() {
            "expected a table".to_owned()
        } else {
            continue;
        };
        p.add(line, name.to_owned(), problem);
    }
}

/// The section `name` as a reader; absent (or not a table, already reported) reads as empty.
fn section<'a>(root: &'a Table, p: &Problems<'_>, name: &'static str) -> Section<'a> {
    let Some((key, item)) = root.get_key_value(name) else {
        return Section::new(name, None, 1);
    };
    let table: Option<&dyn TableLike> = item.as_table_like();
    let line = p.line_at(key.span()).or_else(|| p.line_at(item.span()));
    Section::new(name, table, line.unwrap_or(1))
}

#[cfg(test)]
mod tests;
