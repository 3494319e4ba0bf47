//! Interop with real reverse proxies from Debian: nginx `auth_request` against
//! `/outpost.goauthentik.io/auth/nginx` and Caddy `forward_auth` against
//! `/outpost.goauthentik.io/auth/caddy`, each in front of a small header-echoing backend, driven
//! by the real `curl` binary.
//!
//! Each test runs the fake outpost and portcullis in-process (loopback trusted, so nginx and
//! Caddy count as trusted proxies), a hyper backend that answers with the request headers it
//! received (one `name: value` per line) and counts its hits, and nginx or Caddy as a child
//! process whose config is rendered from `tests/interop/` into a per-test temp dir.
//!
//! Ports: a child proxy cannot be handed a bound socket, so the test binds `127.0.0.1:0`, reads
//! the port, drops the listener and writes the port into the config. Another process could take
//! the port in that short window; the child then exits at start-up and the test retries with a
//! fresh port (up to [`START_ATTEMPTS`] times).
//!
//! Skipping: without nginx, Caddy or curl the tests print `skipped: … not installed` and pass,
//! unless `CI=true` or `PORTCULLIS_REQUIRE_INTEROP` is set (as `.ci/run` does): then a missing
//! binary fails the test with the install hint.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis::demo::outpost::{Behaviour, RecordedRequest};
use support::*;
use tokio::net::TcpListener;

/// How often a child is started on a fresh port before the test gives up.
const START_ATTEMPTS: usize = 3;
/// How long a child proxy may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(15);
/// The host every request claims; nginx's `$http_host` and the outpost's `rd` check agree on it.
const APP_HOST: &str = "app.example";

const NGINX_CONF: &str = include_str!("interop/nginx.conf");
const CADDYFILE: &str = include_str!("interop/Caddyfile");

// ---------------------------------------------------------------------------------------------
// Binaries and skipping

/// Whether a missing binary must fail the test rather than skip it.
fn interop_required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    set("CI") || set("PORTCULLIS_REQUIRE_INTEROP")
}

/// Finds `name` on `PATH` or in the sbin directories (Debian's nginx is `/usr/sbin/nginx`).
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The binaries a test needs, or `None` (after printing why) when the test should be skipped.
fn binaries(names: &[&str]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    for name in names {
        match find_binary(name) {
            Some(p) => found.push(p),
            None if interop_required() => panic!(
                "{name} not installed, but CI / PORTCULLIS_REQUIRE_INTEROP requires the interop \
                 tests: apt-get install -y nginx caddy curl"
            ),
            None => {
                eprintln!("skipped: {name} not installed (apt-get install -y nginx caddy curl)");
                return None;
            }
        }
    }
    Some(found)
}

// ---------------------------------------------------------------------------------------------
// The backend

/// A backend that echoes the request headers it received and counts its hits.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| echo(req, counter.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// First line `backend saw: METHOD PATH`, then one `name: value` line per header, in order.
async fn echo(
    req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let mut body = format!("backend saw: {} {}\n", req.method(), req.uri());
    for (name, value) in req.headers() {
        body.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Values of header `name` (any case) in an echoed backend body.
fn echoed<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .skip(1)
        .filter_map(|l| {
            l.split_once(": ")
                .or_else(|| l.strip_suffix(':').map(|n| (n, "")))
        })
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// The `x-authentik-*` lines of an echoed body, for the report.
fn authentik_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-authentik-"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Child proxies

/// A child process that is killed (and reaped) when dropped, test failure included.
struct ChildGuard {
    name: &'static str,
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "{} logs in {}:\n{}",
                self.name,
                self.dir.display(),
                logs(&self.dir)
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Every `*.log` file in `dir`, for failure messages.
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            out.push_str(&format!("--- {}\n{}", path.display(), read(&path)));
        }
    }
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Starts a child with `spawn(port, dir)` until one accepts connections on its port (a port from
/// `free_port`, free a moment ago; see the module docs for the race).
async fn start_child(
    name: &'static str,
    spawn: impl Fn(u16, &Path) -> std::process::Child,
) -> ChildGuard {
    let mut last_log = String::new();
    for _ in 0..START_ATTEMPTS {
        let dir = temp_dir(name);
        let port = free_port();
        let child = spawn(port, &dir);
        let mut guard = ChildGuard {
            name,
            child,
            dir,
            port,
        };
        match wait_ready(&mut guard).await {
            Ok(()) => return guard,
            Err(why) => {
                last_log = format!("{why}\n{}", logs(&guard.dir));
                eprintln!("{name} did not start on port {port}, retrying: {last_log}");
            }
        }
    }
    panic!("{name} never became ready: {last_log}");
}

/// Polls the child's port until it accepts, it exits, or the deadline passes.
async fn wait_ready(guard: &mut ChildGuard) -> Result<(), String> {
    let deadline = Instant::now() + READY_DEADLINE;
    let addr = SocketAddr::from(([127, 0, 0, 1], guard.port));
    loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            return Err(format!("{} exited with {status}", guard.name));
        }
        // Alive after a successful connect: the listener is the child's, not an intruder's
        // that took the port while the child failed to bind.
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && guard.child.try_wait().unwrap().is_none()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not accepting on {addr} after {READY_DEADLINE:?}",
                guard.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `conf` to `dir/conf_name` and returns its path.
fn write_conf(dir: &Path, conf_name: &str, conf: String) -> PathBuf {
    let conf_path = dir.join(conf_name);
    std::fs::write(&conf_path, conf).unwrap();
    conf_path
}

/// Spawns `cmd` with no stdin and stdout + stderr both going to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> std::process::Child {
    let f = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

/// nginx on a fresh port with the authentik-style config, in front of `portcullis` and `backend`.
async fn start_nginx(bin: &Path, portcullis: SocketAddr, backend: SocketAddr) -> ChildGuard {
    start_child("nginx", |port, dir| {
        let conf = NGINX_CONF
            .replace("@DIR@", dir.to_str().unwrap())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@PORTCULLIS@", &portcullis.to_string())
            .replace("@BACKEND@", &backend.to_string());
        let conf_path = write_conf(dir, "nginx.conf", conf);
        spawn_logged(
            Command::new(bin)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf_path)
                // The start-up error log, before the config's own `error_log` applies.
                .arg("-e")
                .arg(dir.join("error.log"))
                .args(["-g", "daemon off;"]),
            &dir.join("stderr.log"),
            "nginx",
        )
    })
    .await
}

/// Caddy on a fresh port with the authentik-style Caddyfile.
async fn start_caddy(bin: &Path, portcullis: SocketAddr, backend: SocketAddr) -> ChildGuard {
    start_child("caddy", |port, dir| {
        let conf = CADDYFILE
            .replace("@LISTEN_PORT@", &port.to_string())
            .replace("@PORTCULLIS@", &portcullis.to_string())
            .replace("@BACKEND@", &backend.to_string());
        let conf_path = write_conf(dir, "Caddyfile", conf);
        spawn_logged(
            Command::new(bin)
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&conf_path)
                .env("HOME", dir)
                .env("XDG_CONFIG_HOME", dir.join("config"))
                .env("XDG_DATA_HOME", dir.join("data")),
            &dir.join("caddy.log"),
            "caddy",
        )
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// curl

/// A response as `curl -s -i` printed it.
#[derive(Debug)]
struct CurlReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl CurlReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// `curl -s -i` for `http://127.0.0.1:<port><path>` with `Host: app.example` and `headers`.
async fn curl(bin: &Path, port: u16, path: &str, headers: &[(&str, &str)]) -> CurlReply {
    let mut cmd = Command::new(bin);
    cmd.args(["-s", "-i", "--max-time", "10", "--noproxy", "*"])
        .args(["-H", &format!("Host: {APP_HOST}")]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run curl");
    assert!(out.status.success(), "curl failed: {out:?}");
    parse_curl(&String::from_utf8_lossy(&out.stdout))
}

fn parse_curl(raw: &str) -> CurlReply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in curl output: {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    CurlReply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Everything one test needs running.
struct Stack {
    /// `nginx` or `caddy`, for the report lines.
    name: &'static str,
    harness: Harness,
    backend: Backend,
    proxy: ChildGuard,
    curl: PathBuf,
}

impl Stack {
    /// The fake outpost, portcullis (loopback trusted), the backend and the child proxy `name`
    /// (`nginx` or `caddy`) in front of them; `None` when the test should be skipped.
    async fn start(name: &'static str) -> Option<Stack> {
        let bins = binaries(&[name, "curl"])?;
        let harness = start(trust_loopback).await;
        let backend = Backend::start().await;
        let proxy = match name {
            "nginx" => start_nginx(&bins[0], harness.proxy, backend.addr).await,
            "caddy" => start_caddy(&bins[0], harness.proxy, backend.addr).await,
            other => unreachable!("no interop config for {other}"),
        };
        Some(Stack {
            name,
            harness,
            backend,
            proxy,
            curl: bins[1].clone(),
        })
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> CurlReply {
        curl(&self.curl, self.proxy.port, path, headers).await
    }

    /// `get`, then prints what was observed under `case`.
    async fn get_reported(&self, case: &str, path: &str, headers: &[(&str, &str)]) -> CurlReply {
        let r = self.get(path, headers).await;
        report(self.name, case, &r);
        r
    }

    /// `/dashboard?tab=1` with an `akadmin` session cookie and a forged client username.
    async fn get_with_session(&self) -> CurlReply {
        let cookie = self.harness.session_cookie("akadmin");
        self.get_reported(
            "session cookie + client X-authentik-username: mallory",
            "/dashboard?tab=1",
            &[("Cookie", &cookie), ("X-authentik-username", "mallory")],
        )
        .await
    }

    /// `/public/page` (the outpost's skip prefix) with a forged client username.
    async fn get_skip_path(&self) -> CurlReply {
        self.get_reported(
            "skip path /public + client X-authentik-username: mallory",
            "/public/page",
            &[("X-authentik-username", "mallory")],
        )
        .await
    }

    /// `/outpost.goauthentik.io/start` with an `rd` back to the app.
    async fn get_start(&self) -> CurlReply {
        let rd = format!("http://{APP_HOST}/dashboard");
        self.get_reported(
            "/outpost.goauthentik.io/start",
            &format!("/outpost.goauthentik.io/start?rd={rd}"),
            &[],
        )
        .await
    }

    /// The auth check portcullis sent to the outpost's `/outpost.goauthentik.io/auth/{kind}`,
    /// checked to carry no client-supplied identity header.
    fn outpost_auth_request(&self, kind: &str) -> RecordedRequest {
        let path = format!("/outpost.goauthentik.io/auth/{kind}");
        let sent = self.harness.outpost.requests();
        let auth = sent.into_iter().find(|r| r.path_and_query == path);
        let auth = auth.unwrap_or_else(|| panic!("portcullis asked the outpost's /auth/{kind}"));
        assert!(
            auth.headers.get("x-authentik-username").is_none(),
            "client header reached the outpost"
        );
        auth
    }

    /// The reply carries a `Set-Cookie` for the outpost's session cookie.
    fn assert_sets_outpost_cookie(&self, r: &CurlReply) {
        let cookie_name = self.harness.outpost.cookie_name();
        assert!(
            r.all("set-cookie")
                .iter()
                .any(|c| c.starts_with(&cookie_name)),
            "{r:?}"
        );
    }

    /// `location` points at the outpost's authorize endpoint.
    fn assert_authorize_location(&self, location: &str) {
        assert!(
            location.starts_with(&format!(
                "{}/application/o/authorize/?",
                self.harness.outpost.url()
            )),
            "{location}"
        );
    }

    /// The start request reached the outpost exactly once and the backend not at all.
    fn assert_start_reached_outpost_only(&self) {
        assert_eq!(self.backend.hits(), 0);
        assert_eq!(
            self.harness
                .outpost
                .stats()
                .per_path
                .get("/outpost.goauthentik.io/start"),
            Some(&1)
        );
    }
}

/// The backend answered `GET /dashboard?tab=1` having seen `akadmin`'s identity.
fn assert_backend_saw_akadmin(r: &CurlReply) {
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.starts_with("backend saw: GET /dashboard?tab=1"),
        "{}",
        r.body
    );
    assert_eq!(
        echoed(&r.body, "x-authentik-username"),
        ["akadmin"],
        "{}",
        r.body
    );
    assert_eq!(echoed(&r.body, "x-authentik-groups"), ["authentik Admins"]);
    assert_eq!(
        echoed(&r.body, "x-authentik-email"),
        ["akadmin@example.org"]
    );
}

/// A 302; its `Location`.
fn redirect_location(r: &CurlReply) -> &str {
    assert_eq!(r.status, 302, "{r:?}");
    r.header("location").expect("location")
}

/// The backend answered once without the client's forged `mallory` username.
fn assert_backend_saw_no_client_username(s: &Stack, r: &CurlReply) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.backend.hits(), 1);
    let seen = echoed(&r.body, "x-authentik-username");
    assert!(
        seen.iter().all(|v| v.is_empty()),
        "backend saw {seen:?}\n{}",
        r.body
    );
    assert!(!r.body.contains("mallory"), "{}", r.body);
}

fn report(proxy: &str, case: &str, r: &CurlReply) {
    eprintln!(
        "observed [{proxy}] {case}: status {} location {:?} set-cookie {:?} backend x-authentik-* {:?}",
        r.status,
        r.header("location"),
        r.all("set-cookie"),
        authentik_lines(&r.body)
    );
}

// ---------------------------------------------------------------------------------------------
// nginx auth_request

#[tokio::test]
async fn nginx_auth_request_with_session_passes_identity_to_backend() {
    let Some(s) = Stack::start("nginx").await else {
        return;
    };
    let r = s.get_with_session().await;
    assert_backend_saw_akadmin(&r);
    assert_eq!(
        echoed(&r.body, "x-authentik-name"),
        ["authentik Default Admin"]
    );
    let uid = echoed(&r.body, "x-authentik-uid");
    assert!(uid.len() == 1 && !uid[0].is_empty(), "uid {uid:?}");
    assert_eq!(s.backend.hits(), 1);
    // The check went through portcullis with the original URL nginx reconstructed.
    let auth = s.outpost_auth_request("nginx");
    assert_eq!(
        auth.headers.get("x-original-url").unwrap(),
        &format!("http://{APP_HOST}/dashboard?tab=1")
    );
}

#[tokio::test]
async fn nginx_without_session_redirects_to_start_and_backend_is_not_reached() {
    let Some(s) = Stack::start("nginx").await else {
        return;
    };
    let r = s
        .get_reported(
            "no session",
            "/dashboard",
            &[("X-authentik-username", "mallory")],
        )
        .await;
    let location = redirect_location(&r);
    assert!(
        location.ends_with(&format!(
            "/outpost.goauthentik.io/start?rd=http://{APP_HOST}/dashboard"
        )),
        "{location}"
    );
    // The outpost's 401 carried the session cookie that remembers the target; nginx re-emits it.
    s.assert_sets_outpost_cookie(&r);
    assert_eq!(s.backend.hits(), 0, "backend reached without a session");
}

#[tokio::test]
async fn nginx_outpost_down_gives_the_basic_challenge_then_lets_the_emergency_user_in() {
    let Some(s) = Stack::start("nginx").await else {
        return;
    };
    s.harness.outpost.set_behaviour(Behaviour::Status(503));
    let r = s
        .get_reported(
            "outpost 503, no credentials",
            "/dashboard",
            &[("X-Auth-Fallback", "true")],
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Emergency Access\""),
        "{r:?}"
    );
    assert_eq!(r.header("x-auth-fallback"), Some("true"));
    assert_eq!(s.backend.hits(), 0);
    let basic = basic(FALLBACK_USER, FALLBACK_PASSWORD);
    let r = s
        .get_reported(
            "outpost 503, emergency credentials",
            "/dashboard",
            &[("Authorization", &basic)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r.body, "x-authentik-username"), [FALLBACK_USER]);
    assert_eq!(echoed(&r.body, "x-auth-fallback"), ["true"]);
    assert_eq!(s.backend.hits(), 1);
}

#[tokio::test]
async fn nginx_never_lets_a_clients_forwarding_claims_reach_the_check() {
    let Some(s) = Stack::start("nginx").await else {
        return;
    };
    let cookie = s.harness.session_cookie("akadmin");
    let r = s
        .get_reported(
            "session + client X-Forwarded-Host/-For",
            "/dashboard",
            &[
                ("Cookie", &cookie),
                ("X-Forwarded-Host", "other-app.example"),
                ("X-Forwarded-For", "203.0.113.9"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let auth = s.outpost_auth_request("nginx");
    assert_eq!(auth.headers.get("x-forwarded-host").unwrap(), APP_HOST);
    assert_eq!(auth.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
}

#[tokio::test]
async fn nginx_anonymous_skip_path_drops_client_username() {
    let Some(s) = Stack::start("nginx").await else {
        return;
    };
    let r = s.get_skip_path().await;
    // proxy_set_header with the empty captured value: nginx sends no header at all, and the
    // client's copy is not passed either.
    assert_backend_saw_no_client_username(&s, &r);
}

#[tokio::test]
async fn nginx_start_passthrough_reaches_outpost_and_redirects_to_authorize() {
    let Some(s) = Stack::start("nginx").await else {
        return;
    };
    let r = s.get_start().await;
    let location = redirect_location(&r);
    s.assert_authorize_location(location);
    assert!(location.contains("state="), "{location}");
    s.assert_sets_outpost_cookie(&r);
    s.assert_start_reached_outpost_only();
}

// ---------------------------------------------------------------------------------------------
// Caddy forward_auth

#[tokio::test]
async fn caddy_forward_auth_with_session_passes_identity_to_backend() {
    let Some(s) = Stack::start("caddy").await else {
        return;
    };
    let r = s.get_with_session().await;
    assert_backend_saw_akadmin(&r);
    for name in IDENTITY {
        assert_eq!(
            echoed(&r.body, name).len(),
            1,
            "{name} not copied exactly once:\n{}",
            r.body
        );
    }
    assert_eq!(s.backend.hits(), 1);
    // Caddy's forward_auth headers arrived at the outpost through portcullis.
    let auth = s.outpost_auth_request("caddy");
    assert_eq!(
        auth.headers.get("x-forwarded-uri").unwrap(),
        "/dashboard?tab=1"
    );
    assert_eq!(auth.headers.get("x-forwarded-host").unwrap(), APP_HOST);
}

#[tokio::test]
async fn caddy_without_session_relays_outpost_redirect_to_authorize() {
    let Some(s) = Stack::start("caddy").await else {
        return;
    };
    let r = s
        .get_reported(
            "no session + client X-authentik-username: mallory",
            "/dashboard",
            &[("X-authentik-username", "mallory")],
        )
        .await;
    s.assert_authorize_location(redirect_location(&r));
    s.assert_sets_outpost_cookie(&r);
    assert_eq!(s.backend.hits(), 0, "backend reached without a session");
}

#[tokio::test]
async fn caddy_anonymous_skip_path_overwrites_client_username_with_empty() {
    let Some(s) = Stack::start("caddy").await else {
        return;
    };
    let r = s.get_skip_path().await;
    // Caddy 2.6's copy_headers sets each header from the auth response; portcullis sends all
    // twelve, empty, on an anonymous allow (security rule 2), so the client's value is replaced.
    assert_backend_saw_no_client_username(&s, &r);
    assert!(
        !r.body.contains("{http.reverse_proxy"),
        "unreplaced placeholder:\n{}",
        r.body
    );
}

#[tokio::test]
async fn caddy_outpost_paths_are_proxied_to_start() {
    let Some(s) = Stack::start("caddy").await else {
        return;
    };
    let r = s.get_start().await;
    s.assert_authorize_location(redirect_location(&r));
    s.assert_start_reached_outpost_only();
}
