//! A lean stand-in for the authentik outpost, for the load harness (`benches/load/run.sh`).
//!
//! It answers only what a forward-auth tier asks, as cheaply as a hyper server can, so that it is
//! the ceiling the harness compares everything against and never the bottleneck of a proxy in front
//! of it:
//! - `/outpost.goauthentik.io/auth/traefik` and `/auth/caddy`: a valid session cookie
//!   (`authentik_proxy_<8 hex of SHA-256("portcullis-demo")>`, the name `FakeOutpost` uses) gets
//!   200 with the 12 identity headers (built once at start-up); anything else gets 302 to a fake
//!   authorize URL, as the outpost answers an anonymous browser;
//! - `/outpost.goauthentik.io/ping`: 204;
//! - `/load/stats`: `connections N\nrequests N\n` (the harness reads it to count upstream
//!   connections per run, e.g. the nginx `keepalive 32` churn); everything else 404.
//!
//! `--sessions K` pre-creates K sessions and writes one `Cookie` header value per line to
//! `--cookie-file`, so the load generator can send a different valid cookie per request (a cache
//! miss that coalescing cannot turn into a hit). Sessions are fixed at start-up and read without a
//! lock. `--delay-us N` holds every forward-auth answer N µs (the real outpost's PostgreSQL
//! session lookup) on a timer thread with sub-millisecond resolution: tokio's own timer rounds up
//! to whole milliseconds, which would turn 500 µs into about 1 ms. `--blackhole` accepts and reads
//! but never answers. `--jwt-bytes N` sends a JWT-shaped `X-authentik-jwt` of about N bytes
//! (0: empty, as the fake outpost's identity without a token).
//!
//! Development aid for benchmarks only: no OAuth flow, no header auth, no skip paths, and the
//! forwarded URL is not parsed. The full emulation is `portcullis::demo::outpost::FakeOutpost`.

use std::collections::{BinaryHeap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderName, HeaderValue, COOKIE, LOCATION, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Client ID whose hash names the cookie; the same as the demo outpost's default.
const CLIENT_ID: &str = "portcullis-demo";
/// Base32 alphabet of the Go outpost's session IDs.
const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Lean fake authentik outpost for the load harness (loopback only)")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:18000.
    #[arg(long)]
    listen: SocketAddr,
    /// Delay in microseconds before every forward-auth answer.
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Number of valid sessions to create.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Where to write the `Cookie` header values, one per line.
    #[arg(long)]
    cookie_file: Option<PathBuf>,
    /// Approximate size of the `X-authentik-jwt` value (0: empty header).
    #[arg(long, default_value_t = 0)]
    jwt_bytes: usize,
    /// Accept and read, never answer.
    #[arg(long)]
    blackhole: bool,
    /// Use tokio's single-threaded runtime instead of the multi-threaded one.
    #[arg(long)]
    current_thread: bool,
}

/// State shared by every connection; read-only apart from the counters.
struct Outpost {
    cookie_name: String,
    sessions: HashSet<String>,
    identity: Vec<(HeaderName, HeaderValue)>,
    delay: Option<(Duration, Arc<DelayQueue>)>,
    connections: AtomicU64,
    requests: AtomicU64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut builder = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    if args.blackhole {
        eprintln!("load_outpost: black hole on {}", listener.local_addr()?);
        return blackhole(listener).await;
    }
    let cookie_name = cookie_name();
    let sessions: HashSet<String> = (0..args.sessions.max(1)).map(|_| session_id()).collect();
    if let Some(path) = &args.cookie_file {
        let mut lines = String::with_capacity(sessions.len() * (cookie_name.len() + 54));
        for id in &sessions {
            lines.push_str(&cookie_name);
            lines.push('=');
            lines.push_str(id);
            lines.push('\n');
        }
        std::fs::write(path, lines)?;
    }
    let delay =
        (args.delay_us > 0).then(|| (Duration::from_micros(args.delay_us), DelayQueue::start()));
    let outpost = Arc::new(Outpost {
        cookie_name,
        sessions,
        identity: identity_headers(args.jwt_bytes),
        delay,
        connections: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    eprintln!(
        "load_outpost: listening on {} ({} sessions, delay {} us)",
        listener.local_addr()?,
        outpost.sessions.len(),
        args.delay_us
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("load_outpost: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        outpost.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let outpost = Arc::clone(&outpost);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&outpost), req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Holds every connection open and reads what arrives, never writing a byte.
async fn blackhole(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(swallow(stream));
    }
}

async fn swallow(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn handle(
    outpost: Arc<Outpost>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    outpost.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    let resp = match path {
        "/outpost.goauthentik.io/auth/traefik" | "/outpost.goauthentik.io/auth/caddy" => {
            if let Some((delay, queue)) = &outpost.delay {
                let _ = queue.wait(*delay).await;
            }
            forward_auth(&outpost, &req)
        }
        "/outpost.goauthentik.io/ping" => status(StatusCode::NO_CONTENT, Bytes::new()),
        "/load/stats" => {
            let body = format!(
                "connections {}\nrequests {}\n",
                outpost.connections.load(Ordering::Relaxed),
                outpost.requests.load(Ordering::Relaxed)
            );
            status(StatusCode::OK, Bytes::from(body))
        }
        _ => status(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"404 page not found\n"),
        ),
    };
    Ok(resp)
}

/// 200 with the identity for a known session cookie, else 302 to the (fake) authorize endpoint.
fn forward_auth(outpost: &Outpost, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let known = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == outpost.cookie_name && outpost.sessions.contains(value));
    if !known {
        let mut resp = status(StatusCode::FOUND, Bytes::new());
        resp.headers_mut().insert(
            LOCATION,
            HeaderValue::from_static(
                "http://127.0.0.1/application/o/authorize/?client_id=portcullis-demo",
            ),
        );
        return resp;
    }
    let mut resp = status(StatusCode::OK, Bytes::new());
    let headers = resp.headers_mut();
    for (name, value) in &outpost.identity {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(ua) = req.headers().get(USER_AGENT) {
        headers.insert(USER_AGENT, ua.clone());
    }
    resp
}

fn status(code: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = code;
    resp
}

/// `authentik_proxy_` + first 8 hex of SHA-256 of the client ID (research §5.1).
fn cookie_name() -> String {
    let digest = Sha256::digest(CLIENT_ID.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("authentik_proxy_{hex}")
}

/// 52 base32 characters, the shape of the Go outpost's session IDs.
fn session_id() -> String {
    let mut rng = rand::thread_rng();
    (0..52)
        .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
        .collect()
}

/// The 12 identity headers of the demo user `akadmin`, as the fake outpost sends them.
fn identity_headers(jwt_bytes: usize) -> Vec<(HeaderName, HeaderValue)> {
    let sub: String = Sha256::digest(b"akadmin")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pairs = [
        ("x-authentik-username", "akadmin".to_owned()),
        ("x-authentik-groups", "authentik Admins".to_owned()),
        ("x-authentik-entitlements", String::new()),
        ("x-authentik-email", "akadmin@example.org".to_owned()),
        ("x-authentik-name", "authentik Default Admin".to_owned()),
        ("x-authentik-uid", sub),
        ("x-authentik-jwt", jwt(jwt_bytes)),
        (
            "x-authentik-meta-jwks",
            "http://127.0.0.1/application/o/portcullis-demo/jwks/".to_owned(),
        ),
        ("x-authentik-meta-outpost", "fake-outpost".to_owned()),
        (
            "x-authentik-meta-provider",
            "portcullis-demo-provider".to_owned(),
        ),
        ("x-authentik-meta-app", "portcullis-demo".to_owned()),
        (
            "x-authentik-meta-version",
            "goauthentik.io/outpost/2026.5.0".to_owned(),
        ),
    ];
    pairs
        .into_iter()
        .map(|(name, value)| {
            let value = HeaderValue::from_str(&value).expect("identity values are ASCII");
            (HeaderName::from_static(name), value)
        })
        .collect()
}

/// A JWT-shaped token of about `bytes` bytes whose `exp` is a day ahead (never verified by anyone).
fn jwt(bytes: usize) -> String {
    if bytes == 0 {
        return String::new();
    }
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let signature = URL_SAFE_NO_PAD.encode([7u8; 32]);
    // base64 grows 4/3: pad the claims so the whole token lands near `bytes`.
    let fixed = header.len() + signature.len() + 2;
    let claims_len = bytes.saturating_sub(fixed) * 3 / 4;
    let mut claims = format!(r#"{{"iss":"http://127.0.0.1/","exp":{exp},"pad":""#);
    let pad = claims_len.saturating_sub(claims.len() + 2);
    claims.extend(std::iter::repeat_n('x', pad));
    claims.push_str("\"}");
    let payload = URL_SAFE_NO_PAD.encode(claims.as_bytes());
    format!("{header}.{payload}.{signature}")
}

/// Wakes waiters at their deadline from one OS thread (`Condvar::wait_timeout` has microsecond
/// resolution, unlike tokio's millisecond timer wheel).
struct DelayQueue {
    heap: Mutex<BinaryHeap<Pending>>,
    wake: Condvar,
}

struct Pending {
    at: Instant,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    // Earliest deadline on top of the max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

impl DelayQueue {
    fn start() -> Arc<DelayQueue> {
        let queue = Arc::new(DelayQueue {
            heap: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&queue);
        std::thread::Builder::new()
            .name("delay".to_owned())
            .spawn(move || worker.serve())
            .expect("spawn the delay thread");
        queue
    }

    async fn wait(&self, delay: Duration) -> Result<(), oneshot::error::RecvError> {
        let (tx, rx) = oneshot::channel();
        let at = Instant::now() + delay;
        {
            let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
            let earliest = heap.peek().is_none_or(|p| at < p.at);
            heap.push(Pending { at, tx });
            if earliest {
                self.wake.notify_one();
            }
        }
        rx.await
    }

    fn serve(&self) {
        let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while heap.peek().is_some_and(|p| p.at <= now) {
                if let Some(p) = heap.pop() {
                    let _ = p.tx.send(());
                }
            }
            heap = match heap.peek().map(|p| p.at - now) {
                None => self.wake.wait(heap).unwrap_or_else(|e| e.into_inner()),
                Some(left) => {
                    self.wake
                        .wait_timeout(heap, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}
