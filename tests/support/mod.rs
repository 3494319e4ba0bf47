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
    // The test client on loopback is an ordinary client unless a test trusts it
    // (`trust_loopback`); the default would trust 127.0.0.0/8.
    c.server.trusted_proxies = Vec::new();
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
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir =
        std::env::temp_dir().join(format!("portcullis-test-{tag}-{}-{n}", std::process::id()));
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
    let listeners = Listeners::bind(config.server.listen, config.server.admin_listen)
        .await
        .unwrap();
    let proxy = listeners.main.local_addr().unwrap();
    let admin = listeners.admin.local_addr().unwrap();
    let app = App::new(config.clone(), Metrics::new()).unwrap();
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(server::run(app.clone(), listeners, async {
        let _ = rx.await;
    }));
    Harness {
        proxy,
        admin,
        app,
        outpost,
        config,
        stop: Some(tx),
        done,
    }
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
        format!(
            "{}={}",
            self.outpost.cookie_name(),
            self.outpost.login(user)
        )
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
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
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

// ---- The real binary (tests/reload.rs, tests/shutdown.rs, tests/logs.rs) ----

/// A loopback port that was free a moment ago. The binary takes its ports from its config file,
/// and a config with `:0` for both listeners is refused as a clash, so tests pick ports first.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config file for the binary, written from named sections; `main`/`admin` are its listeners.
pub struct ConfigFile {
    pub path: PathBuf,
    pub main: SocketAddr,
    pub admin: SocketAddr,
    pub outpost_url: String,
    pub htpasswd: PathBuf,
}

impl ConfigFile {
    /// A file in a fresh temp dir, for a proxy in front of `outpost_url`.
    pub fn new(tag: &str, outpost_url: &str) -> ConfigFile {
        let dir = temp_dir(tag);
        ConfigFile {
            path: dir.join("portcullis.toml"),
            main: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            outpost_url: outpost_url.to_owned(),
            htpasswd: htpasswd_file(),
        }
    }

    /// The TOML text: test defaults plus `extra` lines per section (`("cache", "ttl = \"0s\"")`).
    pub fn text(&self, extra: &[(&str, &str)]) -> String {
        let mut sections: Vec<(&str, String)> = vec![
            (
                "server",
                format!(
                    "listen = \"{}\"\nadmin_listen = \"{}\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
                    self.main, self.admin
                ),
            ),
            (
                "outpost",
                format!(
                    "url = \"{}\"\nconnect_timeout = \"500ms\"\ntimeout = \"800ms\"\n",
                    self.outpost_url
                ),
            ),
            ("cache", String::new()),
            (
                "fallback",
                format!(
                    "htpasswd_file = \"{}\"\nprobe_interval = \"100ms\"\n",
                    self.htpasswd.display()
                ),
            ),
            ("log", String::new()),
        ];
        for (name, lines) in extra {
            let section = sections
                .iter_mut()
                .find(|(n, _)| n == name)
                .expect("known section");
            section.1.push_str(lines);
            section.1.push('\n');
        }
        sections
            .iter()
            .map(|(n, body)| format!("[{n}]\n{body}\n"))
            .collect()
    }

    /// Writes [`ConfigFile::text`] to the file.
    pub fn write(&self, extra: &[(&str, &str)]) {
        std::fs::write(&self.path, self.text(extra)).unwrap();
    }
}

/// A running `portcullis serve`; killed on drop so a failing test leaves no process behind.
pub struct Binary {
    child: std::process::Child,
    pub main: SocketAddr,
    pub admin: SocketAddr,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    /// Starts the binary on `file` and waits (deadline 10 s) until both listeners accept.
    pub async fn start(file: &ConfigFile) -> Binary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&file.path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("binary starts");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let mut bin = Binary {
            child,
            main: file.main,
            admin: file.admin,
            lines,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = bin.child.try_wait().unwrap() {
                panic!("binary exited early ({status}):\n{}", bin.stderr());
            }
            let main = tokio::net::TcpStream::connect(bin.main).await;
            let admin = tokio::net::TcpStream::connect(bin.admin).await;
            if main.is_ok() && admin.is_ok() {
                return bin;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "binary not listening:\n{}",
                bin.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` ("TERM", "INT", "HUP") with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Stderr so far, as one string.
    pub fn stderr(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits up to `limit` for a stderr line containing `needle`.
    pub async fn wait_for_line(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `http://<main><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.main)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of one Prometheus sample in `text`: `name` with exactly the labels `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, have) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
                None => (series, Vec::new()),
            };
            (n == name && have == want)
                .then(|| value.parse().ok())
                .flatten()
        })
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = s
        .split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once("=\"")?;
            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
        })
        .collect();
    out.sort();
    out
}

/// Scrapes `http://<admin>/metrics`.
pub async fn scrape(admin: SocketAddr) -> String {
    let r = get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// A fresh outpost, a config file `tag` in front of it written with `extra` sections, and the
/// binary serving that file.
pub async fn start_binary(tag: &str, extra: &[(&str, &str)]) -> (FakeOutpost, ConfigFile, Binary) {
    let outpost = outpost().await;
    let file = ConfigFile::new(tag, &outpost.url());
    file.write(extra);
    let bin = Binary::start(&file).await;
    (outpost, file, bin)
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
