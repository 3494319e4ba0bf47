//! The rules of each section: which keys exist, their types and ranges, and the checks that
//! span two keys (`listen` vs `admin_listen`, `connect_timeout` vs `timeout`).
//!
//! Each function starts from the section's defaults and overwrites only the keys the file sets
//! validly; an invalid key leaves a problem behind and the default in place, so the walk goes on.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use tracing_subscriber::EnvFilter;

use super::reader::{Problems, Section};
use super::{
    CacheConfig, CertConfig, EdgeConfig, FallbackConfig, LogConfig, LogFormat, OutpostConfig,
    RouteAuth, RouteConfig, ServerConfig,
};

/// Keys of `[server]`.
pub(super) const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "trusted_proxies",
    "max_header_bytes",
    "header_read_timeout",
    "shutdown_delay",
    "drain_timeout",
    "workers",
];
/// Keys of `[outpost]`.
pub(super) const OUTPOST_KEYS: &[&str] = &[
    "url",
    "connect_timeout",
    "timeout",
    "pool_max_idle",
    "pool_idle_timeout",
];
/// Keys of `[cache]`.
pub(super) const CACHE_KEYS: &[&str] = &["ttl", "capacity"];
/// Keys of `[fallback]`.
pub(super) const FALLBACK_KEYS: &[&str] = &[
    "enabled",
    "realm",
    "htpasswd_file",
    "trip_after",
    "probe_interval",
    "verified_ttl",
    "max_failures_per_user",
    "max_failures_per_address",
    "failure_window",
];
/// Keys of `[log]`.
pub(super) const LOG_KEYS: &[&str] = &["level", "format"];
/// Keys of `[edge]`.
pub(super) const EDGE_KEYS: &[&str] = &["listen_https", "listen_http", "cert", "route"];
/// Keys of each `[[edge.cert]]`.
pub(super) const CERT_KEYS: &[&str] = &["cert", "key"];
/// Keys of each `[[edge.route]]`.
pub(super) const ROUTE_KEYS: &[&str] = &["host", "backend", "auth", "local_networks"];

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// `[server]`.
pub(super) fn server(s: &Section<'_>, p: &mut Problems<'_>) -> ServerConfig {
    s.reject_unknown(p, SERVER_KEYS);
    let mut c = ServerConfig::default();
    set(&mut c.listen, socket_addr(s, p, "listen"));
    set(&mut c.admin_listen, socket_addr(s, p, "admin_listen"));
    set(&mut c.trusted_proxies, networks(s, p, "trusted_proxies"));
    set(
        &mut c.max_header_bytes,
        s.integer(p, "max_header_bytes", 8192..=16_777_216),
    );
    set(
        &mut c.header_read_timeout,
        s.duration(p, "header_read_timeout", false),
    );
    set(&mut c.shutdown_delay, s.duration(p, "shutdown_delay", true));
    set(&mut c.drain_timeout, s.duration(p, "drain_timeout", false));
    set(&mut c.workers, s.integer(p, "workers", 0..=1024));
    if listeners_clash(c.listen, c.admin_listen) {
        let key = if s.has("admin_listen") {
            "admin_listen"
        } else {
            "listen"
        };
        let problem = "server.listen and server.admin_listen must be different addresses";
        s.fail(p, key, problem);
    }
    c
}

/// Same address, or same port and family with one side on the unspecified address (the
/// second bind would fail with EADDRINUSE). Port 0 asks the kernel for a free port, so two
/// port-0 listeners never clash.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || b.port() == 0 {
        return false;
    }
    let wildcard = a.ip().is_unspecified() || b.ip().is_unspecified();
    a == b || (a.port() == b.port() && a.is_ipv4() == b.is_ipv4() && wildcard)
}

fn socket_addr(s: &Section<'_>, p: &mut Problems<'_>, key: &str) -> Option<SocketAddr> {
    let text = s.string(p, key)?;
    let addr = text.parse().ok();
    if addr.is_none() {
        let problem = format!("\"{text}\" is not IP:port (e.g. \"0.0.0.0:9000\" or \"[::]:9000\")");
        s.fail(p, key, problem);
    }
    addr
}

/// Each entry a CIDR or a bare address (a /32 or /128), host bits cleared.
fn networks(s: &Section<'_>, p: &mut Problems<'_>, key: &str) -> Option<Vec<IpNet>> {
    let mut nets = Vec::new();
    for (text, line) in s.strings(p, key)? {
        let net = text
            .parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
        match net {
            Some(net) => nets.push(net.trunc()),
            None => p.add(
                line,
                s.dotted(key),
                format!("\"{text}\" is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address"),
            ),
        }
    }
    Some(nets)
}

/// `[outpost]`; `url` is required and has no default a real deployment could use.
pub(super) fn outpost(s: &Section<'_>, p: &mut Problems<'_>) -> OutpostConfig {
    s.reject_unknown(p, OUTPOST_KEYS);
    let mut c = OutpostConfig::default();
    if !s.has("url") {
        // A missing key has no line of its own: the `[outpost]` header's, else the first line.
        s.fail(p, "url", "missing (required)");
    }
    set(
        &mut c.url,
        s.string(p, "url").and_then(|u| outpost_url(s, p, u)),
    );
    set(
        &mut c.connect_timeout,
        s.duration(p, "connect_timeout", false),
    );
    set(&mut c.timeout, s.duration(p, "timeout", false));
    set(
        &mut c.pool_max_idle,
        s.integer(p, "pool_max_idle", 0..=65_536),
    );
    set(
        &mut c.pool_idle_timeout,
        s.duration(p, "pool_idle_timeout", false),
    );
    if c.connect_timeout > c.timeout {
        // `timeout` bounds the whole exchange, connect included (DESIGN.md section 4).
        let problem = format!(
            "must not exceed outpost.timeout ({})",
            humantime::format_duration(c.timeout)
        );
        s.fail(p, "connect_timeout", problem);
    }
    c
}

/// Plain `http://host[:port][/]`: anything more would be silently ignored by the client.
fn outpost_url(s: &Section<'_>, p: &mut Problems<'_>, text: &str) -> Option<http::Uri> {
    let problem = url_problem(text);
    if let Err(problem) = &problem {
        s.fail(p, "url", problem.as_str());
    }
    problem.ok()
}

fn url_problem(text: &str) -> Result<http::Uri, String> {
    if text.contains('#') {
        return Err("must not have a fragment".to_owned());
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("\"{text}\" is not a URL like \"http://host:9000\": {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https to the outpost is not supported yet; use http".to_owned())
        }
        Some(other) => return Err(format!("scheme \"{other}\" is not supported; use http")),
        None => return Err(format!("\"{text}\" is not a URL like \"http://host:9000\"")),
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if authority.contains('@') {
        return Err("must not contain user info (secrets are never inline)".to_owned());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("must have a host".to_owned());
    }
    // A port, when written, is one a socket can use (`:0`, `:99999` or an empty `:` parse as
    // URLs but could never connect: every check would fail over to the emergency realm).
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(format!("port \"{port}\" is not a TCP port (1-65535)"));
        }
    }
    if !matches!(uri.path(), "" | "/") {
        return Err("must not have a path (only \"/\")".to_owned());
    }
    if uri.query().is_some() {
        return Err("must not have a query".to_owned());
    }
    Ok(uri)
}

/// `[cache]`.
pub(super) fn cache(s: &Section<'_>, p: &mut Problems<'_>) -> CacheConfig {
    s.reject_unknown(p, CACHE_KEYS);
    let mut c = CacheConfig::default();
    set(&mut c.ttl, s.duration(p, "ttl", true));
    set(&mut c.capacity, s.integer(p, "capacity", 1..=100_000_000));
    c
}

/// `[fallback]`.
pub(super) fn fallback(s: &Section<'_>, p: &mut Problems<'_>) -> FallbackConfig {
    s.reject_unknown(p, FALLBACK_KEYS);
    let mut c = FallbackConfig::default();
    set(&mut c.enabled, s.boolean(p, "enabled"));
    set(&mut c.realm, realm(s, p));
    set(&mut c.htpasswd_file, htpasswd_file(s, p));
    set(&mut c.trip_after, s.integer(p, "trip_after", 1..=1000));
    set(
        &mut c.probe_interval,
        s.duration(p, "probe_interval", false),
    );
    set(&mut c.verified_ttl, s.duration(p, "verified_ttl", true));
    let limits = 1..=1_000_000;
    set(
        &mut c.max_failures_per_user,
        s.integer(p, "max_failures_per_user", limits.clone()),
    );
    set(
        &mut c.max_failures_per_address,
        s.integer(p, "max_failures_per_address", limits),
    );
    set(
        &mut c.failure_window,
        s.duration(p, "failure_window", false),
    );
    c
}

/// The realm goes verbatim into `WWW-Authenticate: Basic realm="..."` (RFC 7617 section 2), so
/// it must be a quoted-string without escapes: printable ASCII, no `"` or `\`.
fn realm(s: &Section<'_>, p: &mut Problems<'_>) -> Option<String> {
    let text = s.string(p, "realm")?;
    let bad = |c: char| !(' '..='~').contains(&c) || c == '"' || c == '\\';
    let problem = if text.is_empty() {
        "must not be empty"
    } else if text.chars().any(bad) {
        "must be printable ASCII without '\"' or '\\' (it goes into a WWW-Authenticate header)"
    } else {
        return Some(text.to_owned());
    };
    s.fail(p, "realm", problem);
    None
}

fn htpasswd_file(s: &Section<'_>, p: &mut Problems<'_>) -> Option<PathBuf> {
    let text = s.string(p, "htpasswd_file")?;
    secret_path(s, p, "htpasswd_file", text)
}

/// A path naming a secret (htpasswd, certificate, key). Secrets are never inline (DESIGN.md
/// section 6): a value that is the secret itself (PEM, an htpasswd line, anything multi-line) is
/// refused without being repeated, so it never reaches a terminal or a log.
fn secret_path(s: &Section<'_>, p: &mut Problems<'_>, key: &str, text: &str) -> Option<PathBuf> {
    if text.is_empty() {
        s.fail(p, key, "must not be empty");
        return None;
    }
    if let Some(what) = inline_secret(text) {
        s.fail(
            p,
            key,
            format!("looks like {what}, not a file path: secrets are never inline, name the file that holds it"),
        );
        return None;
    }
    Some(PathBuf::from(text))
}

/// What an inline secret in a path value looks like, if it is one.
fn inline_secret(text: &str) -> Option<&'static str> {
    // "-----BEGIN", and the same in base64 (a Kubernetes Secret's data field pasted as is).
    if text.contains("-----BEGIN") || text.contains("LS0tLS1CRUdJTi") {
        return Some("inline PEM");
    }
    if text.contains(['\n', '\r']) {
        return Some("a multi-line value");
    }
    const HASHES: [&str; 11] = [
        "$2y$", "$2b$", "$2a$", "$2x$", "$argon2", "$apr1$", "{SHA}", "{SSHA}", "$1$", "$5$", "$6$",
    ];
    let text = text.trim();
    let hash = text
        .split_once(':')
        .map_or(text, |(_, rest)| rest.trim_start());
    if HASHES.iter().any(|h| hash.starts_with(h)) {
        return Some("an htpasswd line");
    }
    // No file name is this long (NAME_MAX); a base64 key or token is.
    if text.split('/').any(|part| part.len() > 255) {
        return Some("a secret (a path component over 255 bytes)");
    }
    None
}

/// `[log]`.
pub(super) fn log(s: &Section<'_>, p: &mut Problems<'_>) -> LogConfig {
    s.reject_unknown(p, LOG_KEYS);
    let mut c = LogConfig::default();
    if let Some(level) = s.string(p, "level") {
        match EnvFilter::try_new(level) {
            Ok(_) if !level.trim().is_empty() => c.level = level.to_owned(),
            Ok(_) => s.fail(p, "level", "must not be empty (e.g. \"info\")"),
            Err(e) => s.fail(p, "level", format!("not a log filter like \"info\": {e}")),
        }
    }
    match s.string(p, "format") {
        Some("json") => c.format = LogFormat::Json,
        Some("text") => c.format = LogFormat::Text,
        Some(other) => s.fail(
            p,
            "format",
            format!("\"{other}\" is not \"json\" or \"text\""),
        ),
        None => {}
    }
    c
}

/// `[edge]`: listeners that clash with none of `server`'s, at least one cert and one route.
pub(super) fn edge(s: &Section<'_>, server: &ServerConfig, p: &mut Problems<'_>) -> EdgeConfig {
    s.reject_unknown(p, EDGE_KEYS);
    let mut c = EdgeConfig {
        listen_https: super::DEFAULT_EDGE_LISTEN_HTTPS,
        listen_http: socket_addr(s, p, "listen_http"),
        certs: Vec::new(),
        routes: Vec::new(),
    };
    set(&mut c.listen_https, socket_addr(s, p, "listen_https"));
    let mut taken = vec![
        ("server.listen", server.listen),
        ("server.admin_listen", server.admin_listen),
    ];
    for (key, addr) in [
        ("listen_https", Some(c.listen_https)),
        ("listen_http", c.listen_http),
    ] {
        let Some(addr) = addr else { continue };
        if let Some((other, _)) = taken.iter().find(|(_, a)| listeners_clash(*a, addr)) {
            s.fail(p, key, format!("must differ from {other}"));
        }
        taken.push((
            if key == "listen_https" {
                "edge.listen_https"
            } else {
                "edge.listen_http"
            },
            addr,
        ));
    }
    c.certs = each_table(s, p, "cert", cert);
    c.routes = each_table(s, p, "route", route);
    duplicate_hosts(s, p);
    c
}

/// Reads every table of `edge.<key>` with `read`; at least one must be present and valid.
fn each_table<T>(
    s: &Section<'_>,
    p: &mut Problems<'_>,
    key: &'static str,
    read: fn(&Section<'_>, &mut Problems<'_>) -> Option<T>,
) -> Vec<T> {
    if !s.has(key) {
        p.add(
            s.line(p, key),
            s.dotted(key),
            format!("missing (at least one [[edge.{key}]] is required)"),
        );
        return Vec::new();
    }
    let tables = s.tables(p, key).unwrap_or_default();
    if tables.is_empty() && s.tables(&mut Problems::new(""), key).is_some() {
        s.fail(p, key, format!("at least one [[edge.{key}]] is required"));
    }
    let mut out = Vec::new();
    for (i, (table, line)) in tables.into_iter().enumerate() {
        let item = Section::new(format!("{}[{i}]", s.dotted(key)), Some(table), line);
        out.extend(read(&item, p));
    }
    out
}

/// Hosts are compared case-insensitively; every repeat is reported at its own line.
fn duplicate_hosts(s: &Section<'_>, p: &mut Problems<'_>) {
    let mut scratch = Problems::new("");
    let tables = s.tables(&mut scratch, "route").unwrap_or_default();
    let mut seen: Vec<String> = Vec::new();
    for (i, (table, line)) in tables.into_iter().enumerate() {
        let Some(host) = table.get("host").and_then(|h| h.as_str()) else {
            continue;
        };
        let host = host.to_ascii_lowercase();
        if seen.contains(&host) {
            let route = Section::new(format!("edge.route[{i}]"), Some(table), line);
            route.fail(p, "host", format!("duplicate host \"{host}\""));
        }
        seen.push(host);
    }
}

/// One `[[edge.cert]]`: both paths required and non-empty.
fn cert(s: &Section<'_>, p: &mut Problems<'_>) -> Option<CertConfig> {
    s.reject_unknown(p, CERT_KEYS);
    let cert = required_path(s, p, "cert");
    let key = required_path(s, p, "key");
    Some(CertConfig {
        cert: cert?,
        key: key?,
    })
}

fn required_path(s: &Section<'_>, p: &mut Problems<'_>, key: &str) -> Option<PathBuf> {
    if !s.has(key) {
        s.fail(p, key, "missing (required)");
        return None;
    }
    let text = s.string(p, key)?;
    secret_path(s, p, key, text)
}

/// One `[[edge.route]]`.
fn route(s: &Section<'_>, p: &mut Problems<'_>) -> Option<RouteConfig> {
    s.reject_unknown(p, ROUTE_KEYS);
    let host = route_host(s, p);
    let backend = backend(s, p);
    let auth = match s.string(p, "auth") {
        None | Some("required") => Some(RouteAuth::Required),
        Some("none") => Some(RouteAuth::None),
        Some("local-or-auth") => Some(RouteAuth::LocalOrAuth),
        Some(other) => {
            let problem = format!("\"{other}\" is not \"required\", \"none\" or \"local-or-auth\"");
            s.fail(p, "auth", problem);
            None
        }
    };
    let local_networks = match (auth, s.has("local_networks")) {
        (Some(RouteAuth::LocalOrAuth), false) => {
            s.fail(
                p,
                "local_networks",
                "missing (required with auth = \"local-or-auth\")",
            );
            None
        }
        (Some(RouteAuth::LocalOrAuth), true) => networks(s, p, "local_networks"),
        (Some(_), true) => {
            s.fail(
                p,
                "local_networks",
                "only allowed with auth = \"local-or-auth\"",
            );
            None
        }
        _ => Some(Vec::new()),
    };
    Some(RouteConfig {
        host: host?,
        backend: backend?,
        auth: auth?,
        local_networks: local_networks?,
    })
}

/// A DNS name (letters, digits, `-`, `.`), stored lower case; no port, no wildcard.
fn route_host(s: &Section<'_>, p: &mut Problems<'_>) -> Option<String> {
    if !s.has("host") {
        s.fail(p, "host", "missing (required)");
        return None;
    }
    let text = s.string(p, "host")?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if text.len() > 253 || !text.split('.').all(label_ok) {
        let problem = format!(
            "\"{text}\" is not a host name like \"grafana.home.example\" (no port, no wildcard)"
        );
        s.fail(p, "host", problem);
        return None;
    }
    Some(text.to_ascii_lowercase())
}

/// `http://host:port`, the port explicit: a backend is never guessed.
fn backend(s: &Section<'_>, p: &mut Problems<'_>) -> Option<http::Uri> {
    if !s.has("backend") {
        s.fail(p, "backend", "missing (required)");
        return None;
    }
    let text = s.string(p, "backend")?;
    let checked = if text.starts_with("https:") {
        Err("https backends are not supported; use http".to_owned())
    } else {
        url_problem(text).and_then(|uri| match uri.port_u16() {
            Some(_) => Ok(uri),
            None => Err(format!(
                "\"{text}\" has no port; write it like \"http://10.0.0.5:3000\""
            )),
        })
    };
    match checked {
        Ok(uri) => Some(uri),
        Err(problem) => {
            s.fail(p, "backend", problem);
            None
        }
    }
}
