//! A fake authentik proxy outpost (proxyv2, forward-single mode) for tests and `portcullis demo`.
//!
//! **Development aid, not for production.** It emulates the wire behaviour documented in
//! `research/authentik-outpost.md` §§1–7 for one provider that answers any host (the standalone
//! single-provider case): the forward-auth endpoints (`/auth/traefik`, `/auth/caddy`, `/auth/nginx`,
//! `/auth/envoy/…`), `/start`, `/callback`, `/sign_out`, `/ping`, `/static/…`, plus a stand-in for
//! authentik's own authorize endpoint (`/application/o/authorize/`) that auto-approves, so a browser
//! login works on loopback with nothing else running.
//!
//! Differences from the real outpost, on purpose:
//! - sessions live in memory; the cookie value is the raw session ID (no securecookie MAC);
//! - skip paths are plain path prefixes (`/public` also matches `/publicity`, like the regex `^/public`),
//!   not Go regular expressions;
//! - header auth checks `Basic user:app_password` against the configured users and accepts
//!   `Bearer <access token>` minted by this fake; no back-channel calls, no 60 s credential cache;
//! - the code exchange is an in-memory lookup of single-use codes issued by the authorize stand-in;
//! - no `configuration_error` event is posted, no metrics listener, no underscore-header filter.
//!
//! Test hooks: [`FakeOutpost::set_behaviour`] (fail, black-hole or delay every request),
//! [`FakeOutpost::stats`] (connections accepted, to prove keepalive reuse) and
//! [`FakeOutpost::requests`] (what the proxy actually sent).

mod flow;
mod handler;
mod identity;
mod jwt;
mod session;
mod url;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use session::{lock, SessionStore};

/// Username of the default demo user.
pub const DEMO_USERNAME: &str = "akadmin";
/// App password of the default demo user: `curl -u akadmin:demo-app-password` authenticates.
pub const DEMO_APP_PASSWORD: &str = "demo-app-password";
/// Default `client_id` of the emulated provider.
pub const DEFAULT_CLIENT_ID: &str = "portcullis-demo";
/// Application slug sent as `X-authentik-meta-app` and used in the end-session URL.
pub const APP_SLUG: &str = "portcullis-demo";
/// Provider name sent as `X-authentik-meta-provider`.
pub const PROVIDER_NAME: &str = "portcullis-demo-provider";
/// Outpost name sent as `X-authentik-meta-outpost`.
pub const OUTPOST_NAME: &str = "fake-outpost";
/// How many requests [`FakeOutpost::requests`] keeps.
pub const MAX_RECORDED: usize = 1000;
/// Distinct paths tracked in [`Stats::per_path`]; further paths are counted under `"<other>"`.
const MAX_TRACKED_PATHS: usize = 256;

/// Configuration of the fake outpost. Build with `..FakeOutpostConfig::default()`.
#[derive(Clone)]
pub struct FakeOutpostConfig {
    /// Provider client ID; the cookie is `authentik_proxy_` + first 8 hex of SHA-256 of it.
    pub client_id: String,
    /// HS256 key for the state JWTs (and the fake's access tokens).
    pub cookie_secret: String,
    /// e.g. `http://app.localhost:9000`; `None` derives `<X-Forwarded-Proto>://<X-Forwarded-Host or Host>`
    /// per request.
    pub external_host: Option<String>,
    /// Base of the authorize and end-session endpoints; `None` means the fake's own `http://<addr>`.
    pub authentik_host: Option<String>,
    /// Users the authorize stand-in and header auth know about; the first one is the default login.
    pub users: Vec<DemoUser>,
    /// Forwarded-URL path prefixes that need no authentication (the outpost's skip_path_regex).
    pub skip_path_prefixes: Vec<String>,
    /// Lifetime of access tokens (`exp` of `X-authentik-jwt`) and of authenticated sessions.
    pub access_token_validity: Duration,
    /// Version for `X-authentik-meta-version: goauthentik.io/outpost/<version>`.
    pub version: String,
}

impl std::fmt::Debug for FakeOutpostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOutpostConfig")
            .field("client_id", &self.client_id)
            .field("cookie_secret", &"<redacted>")
            .field("external_host", &self.external_host)
            .field("authentik_host", &self.authentik_host)
            .field("users", &self.users)
            .field("skip_path_prefixes", &self.skip_path_prefixes)
            .field("access_token_validity", &self.access_token_validity)
            .field("version", &self.version)
            .finish()
    }
}

impl Default for FakeOutpostConfig {
    fn default() -> Self {
        FakeOutpostConfig {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            cookie_secret: "portcullis-demo-cookie-secret-not-for-production".to_owned(),
            external_host: None,
            authentik_host: None,
            users: vec![DemoUser::default()],
            skip_path_prefixes: vec!["/public".to_owned()],
            access_token_validity: Duration::from_secs(3600),
            version: "2026.5.0".to_owned(),
        }
    }
}

/// A user known to the fake.
#[derive(Clone, PartialEq, Eq)]
pub struct DemoUser {
    /// `preferred_username` / `X-authentik-username`.
    pub username: String,
    /// `X-authentik-email`.
    pub email: String,
    /// `X-authentik-name`.
    pub name: String,
    /// `X-authentik-groups`, joined with `|`.
    pub groups: Vec<String>,
    /// Password accepted in `Authorization: Basic` header auth.
    pub app_password: String,
}

impl std::fmt::Debug for DemoUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoUser")
            .field("username", &self.username)
            .field("email", &self.email)
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("app_password", &"<redacted>")
            .finish()
    }
}

impl Default for DemoUser {
    fn default() -> Self {
        DemoUser {
            username: DEMO_USERNAME.to_owned(),
            email: "akadmin@example.org".to_owned(),
            name: "authentik Default Admin".to_owned(),
            groups: vec!["authentik Admins".to_owned()],
            app_password: DEMO_APP_PASSWORD.to_owned(),
        }
    }
}

/// How the fake answers, switchable at run time to simulate outages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Emulate the outpost.
    #[default]
    Normal,
    /// Answer every request, ping included, with this status and body `fake failure\n`.
    Status(u16),
    /// Read the request, then never answer (until shutdown).
    BlackHole,
    /// Sleep this long before every answer, then behave normally.
    Delay(Duration),
}

/// Snapshot of the fake's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Requests received (all paths, all behaviours).
    pub requests_total: u64,
    /// Requests to the forward-auth endpoints (`/outpost.goauthentik.io/auth/…`).
    pub auth_requests: u64,
    /// Requests to `/outpost.goauthentik.io/ping`.
    pub pings: u64,
    /// Requests per path (without query), bounded.
    pub per_path: BTreeMap<String, u64>,
    /// Sessions currently stored (anonymous and authenticated).
    pub sessions: usize,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Request method.
    pub method: http::Method,
    /// Path and query as sent.
    pub path_and_query: String,
    /// All request headers.
    pub headers: http::HeaderMap,
    /// Bytes of request body read (and discarded).
    pub body_len: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    auth: AtomicU64,
    pings: AtomicU64,
    per_path: Mutex<BTreeMap<String, u64>>,
}

/// Shared state behind every clone of [`FakeOutpost`] and every connection task.
struct Inner {
    cfg: FakeOutpostConfig,
    addr: SocketAddr,
    cookie_name: String,
    authentik_base: String,
    behaviour: Mutex<Behaviour>,
    sessions: SessionStore,
    codes: Mutex<HashMap<String, String>>,
    counters: Counters,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    shutdown_tx: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Handle to a running fake outpost; clones share the same server.
#[derive(Clone)]
pub struct FakeOutpost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeOutpost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOutpost")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

/// `authentik_proxy_` + first 8 hex characters of SHA-256(`client_id`) (research §5.1).
pub fn cookie_name_for(client_id: &str) -> String {
    let digest = Sha256::digest(client_id.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("authentik_proxy_{hex}")
}

impl FakeOutpost {
    /// Binds `addr` (use `127.0.0.1:0` in tests) and serves HTTP/1.1 with keepalive in a spawned task.
    pub async fn start(addr: SocketAddr, cfg: FakeOutpostConfig) -> std::io::Result<FakeOutpost> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let authentik_base = cfg
            .authentik_host
            .clone()
            .map(|h| h.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{addr}"));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            cookie_name: cookie_name_for(&cfg.client_id),
            cfg,
            addr,
            authentik_base,
            behaviour: Mutex::new(Behaviour::Normal),
            sessions: SessionStore::default(),
            codes: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            recorded: Mutex::new(VecDeque::new()),
            shutdown_tx,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&inner), shutdown_rx));
        *lock(&inner.task) = Some(task);
        tracing::info!(%addr, "fake authentik outpost listening (development aid, not for production)");
        Ok(FakeOutpost { inner })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://<bound addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The session cookie name, `authentik_proxy_<8 hex>`.
    pub fn cookie_name(&self) -> String {
        self.inner.cookie_name.clone()
    }

    /// Creates an authenticated session for `username` directly and returns the cookie value.
    /// Unknown usernames get a user with that name and no groups; an empty string on a full store.
    pub fn login(&self, username: &str) -> String {
        let user = self.inner.user(Some(username)).unwrap_or_else(|| DemoUser {
            username: username.to_owned(),
            email: String::new(),
            name: String::new(),
            groups: Vec::new(),
            app_password: String::new(),
        });
        self.inner.authenticated_session(&user).unwrap_or_default()
    }

    /// Switches how every subsequent request is answered.
    pub fn set_behaviour(&self, b: Behaviour) {
        *lock(&self.inner.behaviour) = b;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            connections_accepted: c.connections.load(Ordering::Relaxed),
            requests_total: c.requests.load(Ordering::Relaxed),
            auth_requests: c.auth.load(Ordering::Relaxed),
            pings: c.pings.load(Ordering::Relaxed),
            per_path: lock(&c.per_path).clone(),
            sessions: self.inner.sessions.count(),
        }
    }

    /// The last (up to [`MAX_RECORDED`]) requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.recorded).iter().cloned().collect()
    }

    /// Forgets the recorded requests (counters are kept).
    pub fn clear_requests(&self) {
        lock(&self.inner.recorded).clear();
    }

    /// Stops accepting and closes every open connection (black-holed ones too); later connects are refused.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown_tx.send(true);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Inner {
    fn record(&self, req: RecordedRequest) {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let path = req.path_and_query.split('?').next().unwrap_or_default();
        if path.starts_with("/outpost.goauthentik.io/auth/") {
            c.auth.fetch_add(1, Ordering::Relaxed);
        } else if path == "/outpost.goauthentik.io/ping" {
            c.pings.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut per_path = lock(&c.per_path);
            let key = if per_path.contains_key(path) || per_path.len() < MAX_TRACKED_PATHS {
                path
            } else {
                "<other>"
            };
            *per_path.entry(key.to_owned()).or_default() += 1;
        }
        let mut recorded = lock(&self.recorded);
        if recorded.len() >= MAX_RECORDED {
            recorded.pop_front();
        }
        recorded.push_back(req);
    }

    fn user(&self, username: Option<&str>) -> Option<DemoUser> {
        match username {
            Some(name) => self.cfg.users.iter().find(|u| u.username == name).cloned(),
            None => self.cfg.users.first().cloned(),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    inner: Arc<Inner>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    inner.counters.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve_connection(stream, Arc::clone(&inner)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fake outpost accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_connection(stream: tokio::net::TcpStream, inner: Arc<Inner>) {
    let service = service_fn(move |req| handler::handle(Arc::clone(&inner), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Go canonicalises header names (`X-Authentik-Username`); do the same on the wire.
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "fake outpost connection ended with an error");
    }
}
