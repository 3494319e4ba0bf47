//! Keepalive reuse towards the outpost (DESIGN.md sections 6 and 7, research/peers.md section 4
//! item 7): forward-auth checks reuse pooled connections instead of opening one each, and
//! `portcullis_outpost_connections_opened_total` agrees with what the outpost accepted.
//! The cache is off in every test so each check really reaches the outpost.

mod support;

use std::time::Duration;

use support::*;

const TRAEFIK: &str = "/outpost.goauthentik.io/auth/traefik";

/// One forward-auth check with a session cookie; asserts the allow.
async fn check(url: &str, cookie: &str) {
    let r = get(url, &[("host", "app.example"), ("cookie", cookie)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("x-authentik-username")
        .is_some_and(|u| !u.is_empty()));
}

/// What the proxy says it opened, read from its metrics.
fn opened(h: &Harness) -> u64 {
    h.app.metrics.outpost_connections_opened.get()
}

fn cache_off_with_pool(max_idle: usize) -> impl FnOnce(&mut portcullis::config::Config) {
    move |c| {
        c.cache.ttl = Duration::ZERO;
        c.outpost.pool_max_idle = max_idle;
    }
}

#[tokio::test]
async fn sequential_checks_reuse_at_most_pool_max_idle_connections() {
    let pool_max_idle = 4;
    let h = start(cache_off_with_pool(pool_max_idle)).await;
    let cookie = h.session_cookie("akadmin");
    let url = h.url(TRAEFIK);
    for _ in 0..200 {
        check(&url, &cookie).await;
    }
    let stats = h.outpost.stats();
    assert_eq!(
        stats.auth_requests, 200,
        "the cache is off: every check asks the outpost"
    );
    eprintln!(
        "200 sequential checks: outpost accepted {} connections",
        stats.connections_accepted
    );
    assert!(stats.connections_accepted >= 1);
    assert!(
        stats.connections_accepted <= pool_max_idle as u64,
        "{} opened",
        stats.connections_accepted
    );
    assert_eq!(
        stats.connections_accepted,
        opened(&h),
        "the proxy's counter matches the outpost's"
    );
    let rendered = h.app.metrics.render();
    assert!(
        rendered.contains(&format!(
            "portcullis_outpost_connections_opened_total {}",
            stats.connections_accepted
        )),
        "{rendered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_open_at_most_pool_max_idle_connections() {
    let (callers, per_caller, pool_max_idle) = (32usize, 20usize, 64usize);
    let h = start(cache_off_with_pool(pool_max_idle)).await;
    // One session per caller, so coalescing cannot fold concurrent checks together.
    let cookies: Vec<String> = (0..callers)
        .map(|i| h.session_cookie(&format!("user{i}")))
        .collect();
    let url = h.url(TRAEFIK);
    let mut tasks = tokio::task::JoinSet::new();
    for cookie in cookies {
        let url = url.clone();
        tasks.spawn(async move {
            for _ in 0..per_caller {
                check(&url, &cookie).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let stats = h.outpost.stats();
    assert_eq!(stats.auth_requests, (callers * per_caller) as u64);
    eprintln!(
        "{callers} callers x {per_caller} checks, pool_max_idle {pool_max_idle}: outpost accepted {} connections",
        stats.connections_accepted
    );
    assert!(
        stats.connections_accepted <= pool_max_idle as u64,
        "{} opened",
        stats.connections_accepted
    );
    assert_eq!(stats.connections_accepted, opened(&h));
}

#[tokio::test]
async fn without_idle_pool_every_check_opens_a_connection() {
    // Shows the counter is real: with nothing kept idle, each check connects anew.
    let h = start(cache_off_with_pool(0)).await;
    let cookie = h.session_cookie("akadmin");
    let url = h.url(TRAEFIK);
    for _ in 0..50 {
        check(&url, &cookie).await;
    }
    let stats = h.outpost.stats();
    assert_eq!(stats.auth_requests, 50);
    assert_eq!(stats.connections_accepted, 50);
    assert_eq!(opened(&h), 50);
}
