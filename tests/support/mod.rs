//! Shared test support: a proxy on `127.0.0.1:0` in front of a [`FakeOutpost`], and a small
//! HTTP client. Every test gets its own ports; nothing sleeps waiting for readiness (the
//! listeners are bound before the proxy task starts).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::app::App;
use portcullis::config::Config;
use portcullis::demo::outpost::{FakeOutpost, FakeOutpostConfig};
use portcullis::metrics::Metrics;
use portcullis::server::{self, Listeners};
use tokio::sync::oneshot;

/// A running proxy and its outpost.
pub struct Harness {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    pub outpost: FakeOutpost,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
}

/// A config pointing at `outpost_url`, listeners on port 0, the htpasswd of [`htpasswd_file`].
pub fn config_for(outpost_url: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    c.server.shutdown_delay = Duration::ZERO;
    c.server.drain_timeout = Duration::from_secs(5);
    c.outpost.url = outpost_url.parse().unwrap();
    c.outpost.timeout = Duration::from_millis(800);
    c.outpost.connect_timeout = Duration::from_millis(500);
    c.fallback.htpasswd_file = htpasswd_file();
    c.fallback.probe_interval = Duration::from_millis(100);
    c
}

/// A per-test temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("portcullis-test-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Emergency user `admin`, password `emergency` (bcrypt, cost 4 to keep tests fast).
pub const FALLBACK_USER: &str = "admin";
/// The emergency password.
pub const FALLBACK_PASSWORD: &str = "emergency";

/// An htpasswd file holding [`FALLBACK_USER`].
pub fn htpasswd_file() -> PathBuf {
    let dir = temp_dir("htpasswd");
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(FALLBACK_PASSWORD, 4).unwrap();
    std::fs::write(&path, format!("{FALLBACK_USER}:{hash}\n")).unwrap();
    path
}

/// Starts a fake outpost with default settings.
pub async fn outpost() -> FakeOutpost {
    FakeOutpost::start("127.0.0.1:0".parse().unwrap(), FakeOutpostConfig::default())
        .await
        .unwrap()
}

/// Starts a fake outpost and a proxy in front of it; `tweak` adjusts the config.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Harness {
    let outpost = outpost().await;
    start_with(outpost, tweak).await
}

/// Starts a proxy in front of `outpost`.
pub async fn start_with(outpost: FakeOutpost, tweak: impl FnOnce(&mut Config)) -> Harness {
    let mut config = config_for(&outpost.url());
    tweak(&mut config);
    let listeners = Listeners::bind(config.server.listen, config.server.admin_listen).await.unwrap();
    let proxy = listeners.main.local_addr().unwrap();
    let admin = listeners.admin.local_addr().unwrap();
    let app = App::new(config.clone(), Metrics::new()).unwrap();
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(server::run(app.clone(), listeners, async {
        let _ = rx.await;
    }));
    Harness { proxy, admin, app, outpost, config, stop: Some(tx), done }
}

impl Harness {
    /// Begins graceful shutdown.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// `http://<proxy><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// A Traefik-style forward-auth GET with a session cookie for `user` (via the fake's login).
    pub fn session_cookie(&self, user: &str) -> String {
        format!("{}={}", self.outpost.cookie_name(), self.outpost.login(user))
    }
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A keepalive client for tests.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `method url` with `headers` and `body`; returns the whole reply.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("proxy answered within 10 s")
        .expect("request succeeded");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// A GET.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, "").await
}

/// The headers Traefik's ForwardAuth sends for `GET https://app.example/dashboard`.
pub fn traefik_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example"),
        ("x-forwarded-uri", "/dashboard"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-for", "203.0.113.7"),
        ("user-agent", "Mozilla/5.0 test"),
    ];
    h.extend_from_slice(extra);
    h
}

/// The trusted-proxy list tests use so loopback callers count as Traefik.
pub fn trust_loopback(c: &mut Config) {
    c.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
}

/// The twelve identity header names.
pub const IDENTITY: [&str; 12] = [
    "x-authentik-username",
    "x-authentik-groups",
    "x-authentik-entitlements",
    "x-authentik-email",
    "x-authentik-name",
    "x-authentik-uid",
    "x-authentik-jwt",
    "x-authentik-meta-jwks",
    "x-authentik-meta-outpost",
    "x-authentik-meta-provider",
    "x-authentik-meta-app",
    "x-authentik-meta-version",
];
