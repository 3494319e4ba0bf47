//! Emergency-fallback timings over loopback against an in-process proxy (issue 4, DESIGN.md
//! section 4): the answer time with a black-holed outpost once the breaker is open (valid
//! emergency credentials, and none), fallback-with-credentials against a cache hit, and, outside
//! criterion, the time from the outpost's return to the first normal answer for two probe
//! intervals.
//!
//! Run: `taskset -c 1 cargo bench --bench fallback` (proxy, fake outpost and client then share
//! one core, so the numbers are per-request costs, not parallel throughput).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::app::App;
use portcullis::config::Config;
use portcullis::demo::outpost::{Behaviour, FakeOutpost, FakeOutpostConfig};
use portcullis::metrics::Metrics;
use portcullis::server::{self, Listeners};

const AUTH: &str = "/outpost.goauthentik.io/auth/traefik";
const USER: &str = "admin";
const PASSWORD: &str = "emergency";

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A proxy in front of its own fake outpost.
struct Proxy {
    url: String,
    app: Arc<App>,
    outpost: FakeOutpost,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A fresh htpasswd file per proxy (a shared one would be rewritten under a running realm,
/// which reloads it and forgets the remembered credential).
fn htpasswd() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-bench-fallback-{}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("htpasswd");
    // Cost 10, as `portcullis hash-password` writes: the remembered-credential path is what we
    // measure, so the cost only shows in the first request.
    let hash = bcrypt::hash(PASSWORD, 10).expect("bcrypt");
    std::fs::write(&path, format!("{USER}:{hash}\n")).expect("write htpasswd");
    path
}

async fn proxy(tweak: impl FnOnce(&mut Config)) -> Proxy {
    let outpost = FakeOutpost::start(
        "127.0.0.1:0".parse().expect("addr"),
        FakeOutpostConfig::default(),
    )
    .await
    .expect("fake outpost");
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().expect("addr");
    c.server.admin_listen = "127.0.0.1:0".parse().expect("addr");
    c.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    c.outpost.url = outpost.url().parse().expect("url");
    c.cache.ttl = Duration::from_secs(3600);
    c.fallback.htpasswd_file = htpasswd();
    tweak(&mut c);
    let listeners = Listeners::bind(c.server.listen, c.server.admin_listen)
        .await
        .expect("bind");
    let addr: SocketAddr = listeners.main.local_addr().expect("addr");
    let app = App::new(c, Metrics::new()).expect("app");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::run(app.clone(), listeners, async {
        let _ = rx.await;
    }));
    Proxy {
        url: format!("http://{addr}{AUTH}"),
        app,
        outpost,
        _stop: tx,
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One Traefik-style check; returns the status and whether it came from the fallback.
async fn check(client: &HttpClient, url: &str, extra: &[(&str, &str)]) -> (StatusCode, bool) {
    let mut b = Request::get(url)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example")
        .header("x-forwarded-uri", "/dashboard")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-for", "203.0.113.7");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(b.body(Empty::new()).expect("request"))
        .await
        .expect("answer");
    let status = resp.status();
    let fallback = resp.headers().contains_key("x-auth-fallback");
    resp.into_body().collect().await.expect("body");
    (status, fallback)
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// (a) black-holed outpost, breaker open; (b) fallback with credentials vs a cache hit.
fn breaker_open(c: &mut Criterion) {
    let rt = runtime();
    let client = client();
    let (down, up, cookie) = rt.block_on(async {
        let down = proxy(|c| {
            c.outpost.timeout = Duration::from_millis(300);
            c.fallback.trip_after = 3;
        })
        .await;
        down.outpost.set_behaviour(Behaviour::BlackHole);
        let started = Instant::now();
        for _ in 0..3 {
            let (s, fb) = check(&client, &down.url, &[]).await;
            assert!(s == StatusCode::UNAUTHORIZED && fb);
        }
        assert!(down.app.runtime().breaker.is_open(), "breaker open");
        eprintln!(
            "black-holed: the 3 requests before the breaker opened took {:?} in all",
            started.elapsed()
        );
        let up = proxy(|_| {}).await;
        let cookie = format!(
            "{}={}",
            up.outpost.cookie_name(),
            up.outpost.login("akadmin")
        );
        let (s, fb) = check(&client, &up.url, &[("cookie", &cookie)]).await;
        assert!(s == StatusCode::OK && !fb, "fresh allow");
        (down, up, cookie)
    });
    let creds = basic(USER, PASSWORD);
    let mut g = c.benchmark_group("fallback");
    g.bench_function("black_holed_open/valid_credentials", |b| {
        b.to_async(&rt).iter(|| async {
            let (s, fb) = check(&client, &down.url, &[("authorization", &creds)]).await;
            assert!(s == StatusCode::OK && fb);
        })
    });
    g.bench_function("black_holed_open/no_credentials", |b| {
        b.to_async(&rt).iter(|| async {
            let (s, fb) = check(&client, &down.url, &[]).await;
            assert!(s == StatusCode::UNAUTHORIZED && fb);
        })
    });
    g.bench_function("cache_hit/session_cookie", |b| {
        b.to_async(&rt).iter(|| async {
            let (s, fb) = check(&client, &up.url, &[("cookie", &cookie)]).await;
            assert!(s == StatusCode::OK && !fb);
        })
    });
    g.finish();
    let realm = down.app.runtime().realm.clone().expect("realm");
    eprintln!(
        "slow verifications during the benchmark: {} (bcrypt cost 10)",
        realm.slow_verifications()
    );
    let asked = down.outpost.stats().auth_requests;
    eprintln!("auth requests that reached the black-holed outpost: {asked} (3 expected)");
}

criterion_group!(benches, breaker_open);

/// (c) Time from the outpost's return to the first normal answer, polling every 1 ms.
fn recovery(probe_interval: Duration, runs: usize) {
    let rt = runtime();
    let client = client();
    let mut times: Vec<Duration> = rt.block_on(async {
        let p = proxy(|c| {
            c.fallback.trip_after = 1;
            c.fallback.probe_interval = probe_interval;
        })
        .await;
        let mut times = Vec::with_capacity(runs);
        for i in 0..runs {
            p.outpost.set_behaviour(Behaviour::Status(503));
            let cookie = format!("{}={}", p.outpost.cookie_name(), p.outpost.login("akadmin"));
            let (s, fb) = check(&client, &p.url, &[("cookie", &cookie)]).await;
            assert!(s == StatusCode::UNAUTHORIZED && fb, "fallback");
            assert!(p.app.runtime().breaker.is_open());
            // The probe runs probe_interval after the breaker opened, then every probe_interval:
            // spread the outpost's return over one interval to sample every probe phase.
            let outage = probe_interval.mul_f64((i as f64 + 0.5) / runs as f64);
            tokio::time::sleep(outage).await;
            p.outpost.set_behaviour(Behaviour::Normal);
            let back = Instant::now();
            loop {
                let (s, fb) = check(&client, &p.url, &[("cookie", &cookie)]).await;
                if s == StatusCode::OK && !fb {
                    break;
                }
                assert!(back.elapsed() < probe_interval * 3 + Duration::from_secs(2));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            times.push(back.elapsed());
        }
        times
    });
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "recovery/probe_interval={probe_interval:?}: runs={runs} min={:.1} ms median={:.1} ms max={:.1} ms",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (not `cargo test --benches`), and only when a name filter, if
    // any, matches "recovery".
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    if benching && filter.is_none_or(|f| "recovery".contains(f.as_str())) {
        recovery(Duration::from_millis(100), 20);
        recovery(Duration::from_secs(2), 10);
    }
}
