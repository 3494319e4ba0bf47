//! One forward-auth request through the real proxy over loopback, in process: a keepalive hyper
//! client -> portcullis -> the fake outpost. `hit` answers from the cache; `miss` runs with
//! `cache.ttl = 0s` and the same cookie, sequentially, so every request asks the outpost (no
//! coalescing can help a lone request).
//!
//! Run: `taskset -c 1 cargo bench --bench e2e`. Results: `benches/RESULTS.md`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::app::App;
use portcullis::config::Config;
use portcullis::demo::outpost::{FakeOutpost, FakeOutpostConfig};
use portcullis::metrics::Metrics;
use portcullis::server::{self, Listeners};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A proxy on `127.0.0.1:0` in front of a fresh fake outpost, loopback trusted as Traefik.
/// (tests/support cannot be shared: it uses integration-test-only environment variables.)
async fn start(ttl: Duration) -> (SocketAddr, FakeOutpost) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let outpost = FakeOutpost::start(any, FakeOutpostConfig::default())
        .await
        .unwrap();
    let mut c = Config::default();
    c.server.listen = any;
    c.server.admin_listen = any;
    c.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    c.outpost.url = outpost.url().parse().unwrap();
    c.fallback.enabled = false;
    c.cache.ttl = ttl;
    let listeners = Listeners::bind(c.server.listen, c.server.admin_listen)
        .await
        .unwrap();
    let proxy = listeners.main.local_addr().unwrap();
    let app = App::new(c, Metrics::new()).unwrap();
    tokio::spawn(server::run(app, listeners, std::future::pending::<()>()));
    (proxy, outpost)
}

/// One Traefik-style check with `cookie`; panics unless it is a 200 for `akadmin`.
async fn one_check(client: &HttpClient, url: &str, cookie: &str) {
    let req = Request::get(url)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example")
        .header("x-forwarded-uri", "/dashboard")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-for", "203.0.113.7")
        .header("user-agent", "Mozilla/5.0 bench")
        .header("cookie", cookie)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-authentik-username"], "akadmin");
    resp.into_body().collect().await.unwrap();
}

fn bench_case(c: &mut Criterion, name: &str, ttl: Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (proxy, outpost) = rt.block_on(start(ttl));
    let cookie = format!("{}={}", outpost.cookie_name(), outpost.login("akadmin"));
    let url = format!("http://{proxy}/outpost.goauthentik.io/auth/traefik");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Warm the keepalive connections and (for `hit`) the cache.
    rt.block_on(one_check(&client, &url, &cookie));
    let before = outpost.stats().auth_requests;
    let mut sent = 0u64;
    c.bench_function(name, |b| {
        b.to_async(&rt).iter(|| {
            sent += 1;
            one_check(&client, &url, &cookie)
        })
    });
    let asked = outpost.stats().auth_requests - before;
    if ttl.is_zero() {
        assert_eq!(asked, sent, "every miss must reach the outpost");
    } else {
        assert_eq!(asked, 0, "every hit must stay off the outpost");
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn forward_auth(c: &mut Criterion) {
    bench_case(c, "e2e/forward_auth_hit", Duration::from_secs(3600));
    bench_case(c, "e2e/forward_auth_miss", Duration::ZERO);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = forward_auth
}
criterion_main!(benches);
