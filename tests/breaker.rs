//! The circuit breaker in front of the outpost (DESIGN.md sections 1, 4, 7): what counts as
//! "outpost down", when the breaker opens, that nothing waits on the outpost while it is open, and
//! that the probe closes it again.

mod support;

use std::time::{Duration, Instant};

use portcullis::config::Config;
use portcullis::demo::outpost::Behaviour;
use portcullis::metrics::{Decision, Endpoint};
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const AUTH: &str = "/outpost.goauthentik.io/auth/traefik";

/// Asserts the fallback's Basic challenge.
fn assert_fallback_challenge(r: &Reply) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("x-auth-fallback"), Some("true"), "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Emergency Access\""),
        "{r:?}"
    );
}

/// One forward-auth check with `extra` headers; returns the reply and how long it took.
async fn timed_check(h: &Harness, extra: &[(&str, &str)]) -> (Reply, Duration) {
    let started = Instant::now();
    let r = get(&h.url(AUTH), &traefik_headers(extra)).await;
    (r, started.elapsed())
}

/// `/metrics` from the admin listener.
async fn metrics_text(h: &Harness) -> String {
    let r = get(&format!("http://{}/metrics", h.admin), &[]).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// The value of the sample line starting with `series ` (name plus labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Asserts the two breaker gauges through `/metrics`.
async fn assert_gauges(h: &Harness, up: f64, fallback_active: f64) {
    let text = metrics_text(h).await;
    assert_eq!(sample(&text, "portcullis_outpost_up"), Some(up), "{text}");
    assert_eq!(
        sample(&text, "portcullis_fallback_active"),
        Some(fallback_active),
        "{text}"
    );
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns the time it took.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond().then(|| started.elapsed())
}

fn is_open(h: &Harness) -> bool {
    h.app.runtime().breaker.is_open()
}

/// Loopback trusted, `trip_after` consecutive failures open the breaker, and no probe during the
/// test; then `tweak`.
async fn start_unprobed(trip_after: u32, tweak: impl FnOnce(&mut Config)) -> Harness {
    start(|c| {
        trust_loopback(c);
        c.fallback.trip_after = trip_after;
        c.fallback.probe_interval = Duration::from_secs(60);
        tweak(c);
    })
    .await
}

/// `requests_total` of the Traefik endpoint for `decision`.
fn traefik_total(h: &Harness, decision: Decision) -> u64 {
    h.app.metrics.requests_total(Endpoint::Traefik, decision)
}

/// Asserts a plain allow of `akadmin` (outpost answer, not the fallback).
fn assert_allowed_as_akadmin(r: &Reply) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    assert_eq!(r.header("x-auth-fallback"), None);
}

#[tokio::test]
async fn refused_outpost_falls_back_on_the_first_request_and_opens_at_once() {
    let outpost = outpost().await;
    let h = start_with(outpost.clone(), trust_loopback).await;
    outpost.shutdown().await;
    assert_gauges(&h, 1.0, 0.0).await;

    let cookie = h.session_cookie("akadmin");
    let (r, took) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_fallback_challenge(&r);
    assert!(took < Duration::from_millis(300), "refused took {took:?}");
    assert!(is_open(&h), "one refused connection opens the breaker");
    assert_gauges(&h, 0.0, 1.0).await;
}

#[tokio::test]
async fn black_holed_outpost_costs_the_timeout_trip_after_times_then_nothing() {
    // No probe during the test: it would count as a black-holed exchange, not an auth request,
    // but keeps the fake busy.
    let h = start_unprobed(3, |c| c.outpost.timeout = Duration::from_millis(300)).await;
    h.outpost.set_behaviour(Behaviour::BlackHole);
    let cookie = h.session_cookie("akadmin");

    for i in 0..3 {
        assert!(!is_open(&h), "open before failure {i}");
        let (r, took) = timed_check(&h, &[("cookie", &cookie)]).await;
        assert_fallback_challenge(&r);
        assert!(
            took >= Duration::from_millis(280) && took < Duration::from_millis(1000),
            "request {i} took {took:?}, expected about the 300 ms timeout"
        );
    }
    assert!(is_open(&h), "three timeouts open the breaker");
    let asked = h.outpost.stats().auth_requests;
    assert_eq!(asked, 3);

    for i in 0..10 {
        let (r, took) = timed_check(&h, &[("cookie", &cookie)]).await;
        assert_fallback_challenge(&r);
        assert!(
            took < Duration::from_millis(50),
            "request {i} with the breaker open took {took:?}"
        );
    }
    assert_eq!(
        h.outpost.stats().auth_requests,
        asked,
        "an open breaker must not touch the outpost"
    );
    assert_gauges(&h, 0.0, 1.0).await;
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_counts_as_a_failure() {
    let h = start_unprobed(2, |c| c.outpost.timeout = Duration::from_millis(300)).await;
    h.outpost
        .set_behaviour(Behaviour::Delay(Duration::from_secs(1)));
    let cookie = h.session_cookie("akadmin");

    let (r, took) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_fallback_challenge(&r);
    assert!(took < Duration::from_millis(900), "took {took:?}");
    assert!(!is_open(&h), "one failure of two");
    let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_fallback_challenge(&r);
    assert!(is_open(&h), "the second slow answer opens the breaker");
}

#[tokio::test]
async fn bad_gateway_statuses_each_fall_back() {
    for code in [502u16, 503, 504] {
        let h = start(trust_loopback).await;
        h.outpost.set_behaviour(Behaviour::Status(code));
        let cookie = h.session_cookie("akadmin");
        let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
        assert_fallback_challenge(&r);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("fake failure"),
            "{code}: the outpost's body must not be relayed"
        );
        let (r, _) = timed_check(
            &h,
            &[("authorization", &basic(FALLBACK_USER, FALLBACK_PASSWORD))],
        )
        .await;
        assert_eq!(r.status, 200, "{code}: {r:?}");
        assert_eq!(r.header("x-auth-fallback"), Some("true"));
        assert_eq!(r.header("x-authentik-username"), Some(FALLBACK_USER));
    }
}

#[tokio::test]
async fn outpost_401_and_302_are_relayed_and_never_fall_back() {
    let h = start(|c| {
        trust_loopback(c);
        c.fallback.trip_after = 1;
    })
    .await;
    for code in [401u16, 302] {
        h.outpost.set_behaviour(Behaviour::Status(code));
        for _ in 0..3 {
            let (r, _) = timed_check(&h, &[]).await;
            assert_eq!(r.status, code, "{r:?}");
            assert_eq!(r.header("x-auth-fallback"), None, "{r:?}");
            assert_eq!(r.header("www-authenticate"), None, "{r:?}");
            assert_eq!(&r.body[..], b"fake failure\n");
        }
    }
    assert!(!is_open(&h), "answers never open the breaker");
    assert_eq!(traefik_total(&h, Decision::Deny), 6);
    assert_eq!(traefik_total(&h, Decision::FallbackDeny), 0);
}

#[tokio::test]
async fn a_relayed_answer_resets_the_consecutive_failure_count() {
    let h = start_unprobed(3, |_| {}).await;
    let step = |code: u16| {
        h.outpost.set_behaviour(Behaviour::Status(code));
        timed_check(&h, &[])
    };
    for code in [503, 503, 401, 503, 503, 302, 502, 504] {
        let (r, _) = step(code).await;
        let fell_back = r.header("x-auth-fallback").is_some();
        assert_eq!(fell_back, code >= 500, "{code}: {r:?}");
        assert!(!is_open(&h), "opened after {code}");
    }
    // The count is real: a third consecutive failure opens it.
    let (r, _) = step(503).await;
    assert_fallback_challenge(&r);
    assert!(is_open(&h));
}

#[tokio::test]
async fn the_probe_closes_the_breaker_when_the_outpost_returns() {
    let h = start(|c| {
        trust_loopback(c);
        c.fallback.trip_after = 1;
        c.fallback.probe_interval = Duration::from_millis(100);
    })
    .await;
    h.outpost.set_behaviour(Behaviour::Status(503));
    let cookie = h.session_cookie("akadmin");
    let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_fallback_challenge(&r);
    assert!(is_open(&h));
    assert_gauges(&h, 0.0, 1.0).await;

    // A failing ping (503) keeps it open while the probe keeps trying.
    let pings = h.outpost.stats().pings;
    wait_until(Duration::from_secs(3), || {
        h.outpost.stats().pings >= pings + 3
    })
    .await
    .expect("the probe pings every probe_interval");
    assert!(is_open(&h), "a 503 ping must not close the breaker");

    h.outpost.set_behaviour(Behaviour::Normal);
    let took = wait_until(Duration::from_secs(1), || !is_open(&h))
        .await
        .expect("closed within a few probe intervals");
    assert!(took < Duration::from_millis(500), "took {took:?}");

    let before = h.outpost.stats().auth_requests;
    let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_allowed_as_akadmin(&r);
    assert_eq!(h.outpost.stats().auth_requests, before + 1);
    assert_eq!(traefik_total(&h, Decision::Allow), 1);
    assert_gauges(&h, 1.0, 0.0).await;
}

/// A one-route HTTP/1.1 server that answers every request with 503 after `delay`; counts requests.
async fn slow_503(delay: Duration) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        counted.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let resp =
                            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown";
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn coalesced_requests_onto_one_failing_exchange_count_once() {
    let (url, exchanges) = slow_503(Duration::from_millis(200)).await;
    let h = start_unprobed(2, |c| c.outpost.url = url.parse().unwrap()).await;
    let cookie = format!("{}=same-session", h.outpost.cookie_name());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = h.url(AUTH);
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            get(&url, &traefik_headers(&[("cookie", &cookie)])).await
        }));
    }
    for t in tasks {
        assert_fallback_challenge(&t.await.unwrap());
    }
    assert_eq!(
        exchanges.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "20 concurrent misses with one cookie make one exchange"
    );
    assert_eq!(h.app.metrics.coalesced.get(), 19);
    assert!(
        !is_open(&h),
        "one failed exchange is one failure of trip_after = 2"
    );
}

#[tokio::test]
async fn coalesced_requests_onto_one_black_holed_exchange_count_once() {
    let h = start_unprobed(2, |c| c.outpost.timeout = Duration::from_millis(300)).await;
    h.outpost.set_behaviour(Behaviour::BlackHole);
    let cookie = h.session_cookie("akadmin");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = h.url(AUTH);
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = get(&url, &traefik_headers(&[("cookie", &cookie)])).await;
            (r, started.elapsed())
        }));
    }
    for t in tasks {
        let (r, took) = t.await.unwrap();
        assert_fallback_challenge(&r);
        assert!(took < Duration::from_millis(550), "a waiter took {took:?}");
    }
    assert_eq!(h.outpost.stats().auth_requests, 1);
    assert!(!is_open(&h), "one timed-out exchange counts once");
}

#[tokio::test]
async fn cached_allows_keep_answering_during_an_outage() {
    let h = start(|c| {
        trust_loopback(c);
        c.fallback.trip_after = 1;
    })
    .await;
    let cookie = h.session_cookie("akadmin");
    let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
    h.outpost.set_behaviour(Behaviour::Status(503));
    // Another credential trips the breaker...
    let (r, _) = timed_check(&h, &[]).await;
    assert_fallback_challenge(&r);
    assert!(is_open(&h));
    // ...while the cached one keeps its identity.
    for _ in 0..3 {
        let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
        assert_allowed_as_akadmin(&r);
    }
    assert_eq!(traefik_total(&h, Decision::AllowCached), 3);
}

#[tokio::test]
async fn disabled_fallback_fails_closed_with_503() {
    let h = start_unprobed(1, |c| c.fallback.enabled = false).await;
    assert!(h.app.runtime().realm.is_none());
    h.outpost.set_behaviour(Behaviour::Status(503));
    let creds = basic(FALLBACK_USER, FALLBACK_PASSWORD);
    for _ in 0..2 {
        let (r, _) = timed_check(&h, &[("authorization", &creds)]).await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("x-authentik-username"), None);
        assert_eq!(r.header("x-auth-fallback"), None);
    }
    assert!(is_open(&h));
    assert_eq!(traefik_total(&h, Decision::Error), 2);
    let text = metrics_text(&h).await;
    assert_eq!(
        sample(
            &text,
            "portcullis_requests_total{decision=\"error\",endpoint=\"traefik\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_gauges(&h, 0.0, 0.0).await;
}

#[tokio::test]
async fn readyz_stays_ready_during_an_outage_and_reports_the_outpost_down() {
    let outpost = outpost().await;
    let h = start_with(outpost.clone(), trust_loopback).await;
    let readyz = format!("http://{}/readyz", h.admin);
    let r = get(&readyz, &[]).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("outpost: up"));

    outpost.shutdown().await;
    let (r, _) = timed_check(&h, &[]).await;
    assert_fallback_challenge(&r);
    let r = get(&readyz, &[]).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("outpost: down"), "{body}");
    assert!(body.contains("fallback: active"), "{body}");
}

#[tokio::test]
async fn fallback_gauge_is_set_by_the_first_realm_answer_and_cleared_by_the_next_outpost_answer() {
    use portcullis::demo::outpost::Behaviour;
    let h = start_unprobed(3, |_| {}).await;
    let cookie = h.session_cookie("akadmin");
    h.outpost.set_behaviour(Behaviour::Status(503));
    let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_fallback_challenge(&r);
    assert!(!is_open(&h), "one 503 of three does not open the breaker");
    // The realm answered: the gauge says so even though the circuit is still closed.
    assert_gauges(&h, 1.0, 1.0).await;
    h.outpost.set_behaviour(Behaviour::Normal);
    let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_allowed_as_akadmin(&r);
    assert_gauges(&h, 1.0, 0.0).await;
}

#[tokio::test]
async fn fallback_gauge_falls_back_to_zero_when_the_realm_stops_answering() {
    use portcullis::demo::outpost::Behaviour;
    let h = start(|c| {
        trust_loopback(c);
        c.fallback.trip_after = 3;
        c.fallback.probe_interval = Duration::from_millis(100);
    })
    .await;
    let cookie = h.session_cookie("akadmin");
    h.outpost.set_behaviour(Behaviour::Status(502));
    let (r, _) = timed_check(&h, &[("cookie", &cookie)]).await;
    assert_fallback_challenge(&r);
    assert!(!is_open(&h));
    assert_gauges(&h, 1.0, 1.0).await;
    // No traffic since: after two probe intervals the realm is no longer "answering".
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_gauges(&h, 1.0, 0.0).await;
}
