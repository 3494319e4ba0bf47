//! The positive-decision cache and miss coalescing (DESIGN.md section 3), through the real proxy
//! in front of the fake outpost: what is stored, what never is, how long it lives, what purges
//! it, and that no answer ever carries another user's identity.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::demo::outpost::{Behaviour, FakeOutpost, FakeOutpostConfig};
use portcullis::metrics::{Decision, Endpoint, Lookup};
use support::*;

const TRAEFIK: &str = "/outpost.goauthentik.io/auth/traefik";

/// Traefik forward-auth headers for `GET https://<host><uri>`, plus `cookie` when given.
fn forwarded<'a>(host: &'a str, uri: &'a str, cookie: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", host),
        ("x-forwarded-uri", uri),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-for", "203.0.113.7"),
        ("user-agent", "Mozilla/5.0 test"),
    ];
    if let Some(c) = cookie {
        h.push(("cookie", c));
    }
    h
}

/// One Traefik check for `https://<host><uri>` with `cookie`.
async fn check(h: &Harness, host: &str, uri: &str, cookie: Option<&str>) -> Reply {
    get(&h.url(TRAEFIK), &forwarded(host, uri, cookie)).await
}

/// Forward-auth calls the outpost has received so far.
fn calls(h: &Harness) -> u64 {
    h.outpost.stats().auth_requests
}

fn cached(h: &Harness) -> u64 {
    h.app
        .metrics
        .requests_total(Endpoint::Traefik, Decision::AllowCached)
}

fn lookups(h: &Harness, l: Lookup) -> u64 {
    h.app.metrics.cache_lookup(l).get()
}

/// Sends `n` identical checks at once; returns every reply.
async fn burst(h: &Harness, n: usize, uri: &'static str, cookie: &str) -> Vec<Reply> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = h.url(TRAEFIK);
        let cookie = cookie.to_owned();
        set.spawn(async move { get(&url, &forwarded("app.example", uri, Some(&cookie))).await });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

/// Polls `cond` every 10 ms until it holds or 5 s pass.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn repeated_check_is_answered_from_the_cache_without_the_outpost() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let first = check(&h, "app.example", "/dashboard", Some(&cookie)).await;
    assert_eq!(first.status, 200);
    assert_eq!(calls(&h), 1);
    for _ in 0..5 {
        let r = check(&h, "app.example", "/other", Some(&cookie)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
        for name in IDENTITY {
            assert_eq!(r.headers.get(name), first.headers.get(name), "{name}");
        }
        assert_eq!(r.header("user-agent"), Some("Mozilla/5.0 test"));
        assert!(r.headers.get("set-cookie").is_none());
    }
    assert_eq!(calls(&h), 1, "hits must not reach the outpost");
    assert_eq!(cached(&h), 5);
    assert_eq!(lookups(&h, Lookup::Hit), 5);
    assert_eq!(lookups(&h, Lookup::Miss), 1);
}

#[tokio::test]
async fn cached_answer_echoes_the_current_user_agent() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    check(&h, "app.example", "/", Some(&cookie)).await;
    let mut headers = forwarded("app.example", "/", Some(&cookie));
    headers.retain(|(k, _)| *k != "user-agent");
    headers.push(("user-agent", "curl/8.0"));
    let r = get(&h.url(TRAEFIK), &headers).await;
    assert_eq!(cached(&h), 1);
    assert_eq!(r.header("user-agent"), Some("curl/8.0"));
}

#[tokio::test]
async fn redirect_for_unknown_session_is_never_stored() {
    let h = start(trust_loopback).await;
    let cookie = format!("{}=no-such-session", h.outpost.cookie_name());
    for i in 1..=3 {
        let r = check(&h, "app.example", "/dashboard", Some(&cookie)).await;
        assert_eq!(r.status, 302);
        assert_eq!(calls(&h), i);
    }
    assert_eq!(cached(&h), 0);
    assert!(h.app.runtime().cache.is_empty());
}

#[tokio::test]
async fn nginx_401_is_never_stored() {
    let h = start(trust_loopback).await;
    let cookie = format!("{}=no-such-session", h.outpost.cookie_name());
    let headers = [
        ("host", "app.example"),
        ("x-original-url", "https://app.example/dashboard"),
        ("cookie", cookie.as_str()),
    ];
    for i in 1..=3 {
        let r = get(&h.url("/outpost.goauthentik.io/auth/nginx"), &headers).await;
        assert_eq!(r.status, 401);
        assert_eq!(calls(&h), i);
    }
    assert!(h.app.runtime().cache.is_empty());
}

#[tokio::test]
async fn anonymous_skip_path_allow_is_never_stored() {
    let h = start(trust_loopback).await;
    let cookie = format!("{}=no-such-session", h.outpost.cookie_name());
    for i in 1..=3 {
        let r = check(&h, "app.example", "/public/logo.png", Some(&cookie)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-authentik-username"), Some(""));
        assert_eq!(calls(&h), i);
    }
    assert_eq!(cached(&h), 0);
    assert!(h.app.runtime().cache.is_empty());
}

#[tokio::test]
async fn fallback_allow_is_never_stored() {
    let h = start(trust_loopback).await;
    h.outpost.set_behaviour(Behaviour::Status(503));
    let auth = basic(FALLBACK_USER, FALLBACK_PASSWORD);
    for _ in 0..3 {
        let r = get(
            &h.url(TRAEFIK),
            &[
                ("x-forwarded-host", "app.example"),
                ("x-forwarded-uri", "/"),
                ("authorization", auth.as_str()),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-auth-fallback"), Some("true"));
    }
    assert_eq!(
        h.app
            .metrics
            .requests_total(Endpoint::Traefik, Decision::FallbackAllow),
        3
    );
    assert!(h.app.runtime().cache.is_empty());
    // Once the outpost is back, the same credential gets the outpost's own verdict.
    h.outpost.set_behaviour(Behaviour::Normal);
    let app = h.app.clone();
    eventually("breaker to close", || !app.runtime().breaker.is_open()).await;
    let before = calls(&h);
    let r = get(
        &h.url(TRAEFIK),
        &forwarded("app.example", "/", None)
            .into_iter()
            .chain([("authorization", auth.as_str())])
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(calls(&h), before + 1);
    assert_ne!(r.header("x-auth-fallback"), Some("true"));
    assert_eq!(cached(&h), 0);
}

#[tokio::test]
async fn entry_expires_after_the_ttl() {
    let h = start(|c| {
        trust_loopback(c);
        c.cache.ttl = Duration::from_millis(300);
    })
    .await;
    let cookie = h.session_cookie("akadmin");
    check(&h, "app.example", "/", Some(&cookie)).await;
    check(&h, "app.example", "/", Some(&cookie)).await;
    assert_eq!((calls(&h), cached(&h)), (1, 1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = check(&h, "app.example", "/", Some(&cookie)).await;
    assert_eq!(r.status, 200);
    assert_eq!(calls(&h), 2, "an expired entry must ask the outpost");
    assert_eq!(lookups(&h, Lookup::Expired), 1);
}

#[tokio::test]
async fn jwt_exp_caps_the_ttl() {
    let outpost = FakeOutpost::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeOutpostConfig {
            access_token_validity: Duration::from_secs(1),
            ..FakeOutpostConfig::default()
        },
    )
    .await
    .unwrap();
    let h = start_with(outpost, |c| {
        trust_loopback(c);
        c.cache.ttl = Duration::from_secs(60);
    })
    .await;
    // `exp` has whole seconds: log in early in a second so the token outlives the first check.
    let into_second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis()
    };
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - into_second()) + 5)).await;
    let cookie = h.session_cookie("akadmin");
    assert_eq!(
        check(&h, "app.example", "/", Some(&cookie)).await.status,
        200
    );
    check(&h, "app.example", "/", Some(&cookie)).await;
    assert_eq!((calls(&h), cached(&h)), (1, 1));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    check(&h, "app.example", "/", Some(&cookie)).await;
    assert_eq!(
        calls(&h),
        2,
        "the token's exp must end the entry before cache.ttl"
    );
    assert_eq!(cached(&h), 1);
}

#[tokio::test]
async fn hundred_concurrent_misses_make_one_outpost_call() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    h.outpost
        .set_behaviour(Behaviour::Delay(Duration::from_millis(400)));
    let replies = burst(&h, 100, "/asset.js", &cookie).await;
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    }
    assert_eq!(calls(&h), 1);
    assert_eq!(h.app.metrics.coalesced.get(), 99);
    assert!(h.app.inflight.is_empty());
}

#[tokio::test]
async fn ttl_zero_still_coalesces_but_never_caches() {
    let h = start(|c| {
        trust_loopback(c);
        c.cache.ttl = Duration::ZERO;
    })
    .await;
    let cookie = h.session_cookie("akadmin");
    h.outpost
        .set_behaviour(Behaviour::Delay(Duration::from_millis(400)));
    let replies = burst(&h, 100, "/asset.js", &cookie).await;
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.header("x-authentik-username") == Some("akadmin")));
    assert_eq!(calls(&h), 1);
    h.outpost.set_behaviour(Behaviour::Normal);
    for i in 1..=3 {
        check(&h, "app.example", "/asset.js", Some(&cookie)).await;
        assert_eq!(calls(&h), 1 + i);
    }
    assert_eq!(cached(&h), 0);
    assert!(h.app.runtime().cache.is_empty());
}

#[tokio::test]
async fn coalesced_anonymous_answer_is_not_shared_with_another_path() {
    let h = start(trust_loopback).await;
    let cookie = format!("{}=no-such-session", h.outpost.cookie_name());
    h.outpost
        .set_behaviour(Behaviour::Delay(Duration::from_millis(300)));
    let url = h.url(TRAEFIK);
    let c = cookie.clone();
    let public = tokio::spawn(async move {
        get(&url, &forwarded("app.example", "/public/a.css", Some(&c))).await
    });
    let app = h.app.clone();
    eventually("the public request to lead", || app.inflight.len() == 1).await;
    let private = check(&h, "app.example", "/admin", Some(&cookie)).await;
    let public = public.await.unwrap();
    assert_eq!(public.status, 200);
    assert_eq!(
        private.status, 302,
        "a skip-path allow must not answer a protected path"
    );
    // It waited, but made its own call: not counted as coalesced (DESIGN.md 7).
    assert_eq!(h.app.metrics.coalesced.get(), 0);
    assert_eq!(calls(&h), 2);
}

#[tokio::test]
async fn sign_out_through_the_proxy_purges_the_session_on_every_host() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    check(&h, "one.example", "/", Some(&cookie)).await;
    check(&h, "two.example", "/", Some(&cookie)).await;
    check(&h, "one.example", "/", Some(&cookie)).await;
    assert_eq!((calls(&h), cached(&h)), (2, 1));
    assert_eq!(h.app.runtime().cache.len(), 2);
    let r = get(
        &h.url("/outpost.goauthentik.io/sign_out"),
        &[("host", "one.example"), ("cookie", cookie.as_str())],
    )
    .await;
    assert_eq!(r.status, 302);
    assert!(h.app.runtime().cache.is_empty());
    for (i, host) in ["one.example", "two.example"].into_iter().enumerate() {
        let r = check(&h, host, "/", Some(&cookie)).await;
        assert_eq!(
            r.status, 302,
            "{host}: the revoked session must not be answered"
        );
        assert_eq!(calls(&h), 3 + i as u64);
    }
}

#[tokio::test]
async fn a_check_in_flight_during_a_sign_out_is_not_stored_after_it() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    h.outpost
        .set_behaviour(Behaviour::Delay(Duration::from_millis(400)));
    let in_flight = check(&h, "app.example", "/", Some(&cookie));
    let sign_out = async {
        // Sign out while the outpost is still answering the check.
        let deadline = Instant::now() + Duration::from_secs(5);
        while calls(&h) == 0 {
            assert!(
                Instant::now() < deadline,
                "the check never reached the outpost"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        get(
            &h.url("/outpost.goauthentik.io/sign_out"),
            &[("host", "app.example"), ("cookie", cookie.as_str())],
        )
        .await
    };
    let (first, out) = tokio::join!(in_flight, sign_out);
    assert_eq!(
        first.status, 200,
        "answered before the sign-out took effect"
    );
    assert_eq!(out.status, 302);
    assert!(
        h.app.runtime().cache.is_empty(),
        "the answer that raced the sign-out was stored"
    );
    h.outpost.set_behaviour(Behaviour::Normal);
    let r = check(&h, "app.example", "/", Some(&cookie)).await;
    assert_eq!(r.status, 302, "the signed-out session must not be answered");
    assert_eq!(cached(&h), 0);
}

#[tokio::test]
async fn a_check_answered_while_the_outpost_is_still_signing_out_is_not_kept() {
    // The sign-out reaches the outpost first but takes long; a check that starts after it (after
    // the first purge) is answered 200 before the session ends. The purge after the sign-out's
    // answer must remove what that check stored.
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    h.outpost
        .set_behaviour(Behaviour::Delay(Duration::from_millis(600)));
    let sign_out_url = h.url("/outpost.goauthentik.io/sign_out");
    let sign_out_headers = [("host", "app.example"), ("cookie", cookie.as_str())];
    let sign_out = get(&sign_out_url, &sign_out_headers);
    let check_meanwhile = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.outpost.stats().requests_total == 0 {
            assert!(
                Instant::now() < deadline,
                "the sign-out never reached the outpost"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        h.outpost
            .set_behaviour(Behaviour::Delay(Duration::from_millis(50)));
        let r = check(&h, "app.example", "/", Some(&cookie)).await;
        let stored = h.app.runtime().cache.len();
        (r, stored)
    };
    let (out, (first, stored)) = tokio::join!(sign_out, check_meanwhile);
    assert_eq!(first.status, 200, "answered before the session ended");
    assert_eq!(stored, 1, "stored while the sign-out was still running");
    assert_eq!(out.status, 302);
    assert!(h.app.runtime().cache.is_empty(), "the sign-out left it");
    h.outpost.set_behaviour(Behaviour::Normal);
    let r = check(&h, "app.example", "/", Some(&cookie)).await;
    assert_eq!(r.status, 302, "the signed-out session must not be answered");
}

#[tokio::test]
async fn an_outpost_path_with_the_logout_signature_purges_too() {
    let h = start(trust_loopback).await;
    for path in [
        "/outpost.goauthentik.io/start?X-authentik-logout=true",
        "/outpost.goauthentik.io/callback?x-AUTHENTIK-logout=1",
        "/outpost.goauthentik.io/SIGN_OUT",
    ] {
        let cookie = h.session_cookie("akadmin");
        check(&h, "app.example", "/", Some(&cookie)).await;
        assert_eq!(h.app.runtime().cache.len(), 1, "{path}");
        get(
            &h.url(path),
            &[("host", "app.example"), ("cookie", cookie.as_str())],
        )
        .await;
        assert!(h.app.runtime().cache.is_empty(), "{path} left the entry");
    }
    // Any other outpost path leaves it.
    let cookie = h.session_cookie("akadmin");
    check(&h, "app.example", "/", Some(&cookie)).await;
    get(
        &h.url("/outpost.goauthentik.io/start?rd=/"),
        &[("host", "app.example"), ("cookie", cookie.as_str())],
    )
    .await;
    assert_eq!(h.app.runtime().cache.len(), 1);
}

#[tokio::test]
async fn callback_and_logout_signatures_bypass_the_cache() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    check(&h, "app.example", "/", Some(&cookie)).await;
    check(&h, "app.example", "/", Some(&cookie)).await;
    assert_eq!((calls(&h), cached(&h)), (1, 1));
    for uri in [
        "/?X-authentik-auth-callback=true&code=x&state=y",
        "/page?x-AUTHENTIK-auth-callback=true",
        "/?X-authentik-logout=true",
    ] {
        let before = calls(&h);
        check(&h, "app.example", uri, Some(&cookie)).await;
        assert_eq!(calls(&h), before + 1, "{uri} was answered from the cache");
        assert_eq!(cached(&h), 1, "{uri}");
    }
}

#[tokio::test]
async fn capacity_bounds_the_entries() {
    let h = start(|c| {
        trust_loopback(c);
        c.cache.capacity = 16; // one shard of 16 (below 4096 the cache is one exact LRU)
    })
    .await;
    let cookies: Vec<String> = (0..200)
        .map(|i| h.session_cookie(&format!("user{i}")))
        .collect();
    for c in &cookies {
        check(&h, "app.example", "/", Some(c)).await;
    }
    let held = h.app.runtime().cache.len();
    assert!((1..=16).contains(&held), "{held} entries held");
    for c in &cookies {
        check(&h, "app.example", "/", Some(c)).await;
    }
    assert!(cached(&h) <= 16, "{} hits from 16 slots", cached(&h));
    assert!(calls(&h) >= 384);
}

#[tokio::test]
async fn same_cookie_on_different_hosts_is_two_entries() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    check(&h, "one.example", "/", Some(&cookie)).await;
    check(&h, "two.example", "/", Some(&cookie)).await;
    assert_eq!((calls(&h), cached(&h)), (2, 0));
    assert_eq!(h.app.runtime().cache.len(), 2);
    check(&h, "two.example", "/", Some(&cookie)).await;
    assert_eq!((calls(&h), cached(&h)), (2, 1));
}

/// How a generated request presents itself.
#[derive(Debug, Clone)]
enum CookieKind {
    /// The session of user `i`.
    Session(usize),
    /// The outpost's cookie name with a value naming no session.
    Garbage(String),
    /// No outpost cookie.
    None,
}

#[derive(Debug, Clone)]
struct Step {
    cookie: CookieKind,
    host: usize,
    path: usize,
    extra: Vec<(String, String)>,
}

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const HOSTS: [&str; 3] = ["one.example", "two.example", "three.example"];
const PATHS: [&str; 3] = ["/", "/public/x.css", "/admin"];

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let cookie = prop_oneof![
        (0..USERS.len()).prop_map(CookieKind::Session),
        "[a-z0-9]{1,12}".prop_map(CookieKind::Garbage),
        Just(CookieKind::None),
    ];
    // Extra cookies include other `authentik_proxy_*` names, which enter the key but not the
    // outpost's decision.
    let extra = prop::collection::vec(
        (
            prop_oneof!["[a-z]{1,6}", "authentik_proxy_[0-9a-f]{8}"],
            "[A-Za-z0-9]{0,10}",
        ),
        0..3,
    );
    (cookie, 0..HOSTS.len(), 0..PATHS.len(), extra).prop_map(|(cookie, host, path, extra)| Step {
        cookie,
        host,
        path,
        extra,
    })
}

/// Runs `steps` five at a time (so some coalesce) and checks every identity answered.
async fn run_steps(h: Arc<Harness>, sessions: Arc<Vec<String>>, steps: Vec<Step>) {
    for chunk in steps.chunks(5) {
        let mut set = tokio::task::JoinSet::new();
        for s in chunk.iter().cloned() {
            let (h, sessions) = (h.clone(), sessions.clone());
            set.spawn(async move {
                let mut parts: Vec<String> =
                    s.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let name = h.outpost.cookie_name();
                match &s.cookie {
                    CookieKind::Session(i) => parts.insert(0, format!("{name}={}", sessions[*i])),
                    CookieKind::Garbage(g) => parts.push(format!("{name}={g}")),
                    CookieKind::None => {}
                }
                let cookie = parts.join("; ");
                let cookie = (!cookie.is_empty()).then_some(cookie.as_str());
                let r = check(&h, HOSTS[s.host], PATHS[s.path], cookie).await;
                let user = r.header("x-authentik-username").unwrap_or("");
                match s.cookie {
                    CookieKind::Session(i) => {
                        assert_eq!(r.status, 200, "{s:?}");
                        assert_eq!(user, USERS[i], "{s:?}");
                    }
                    _ => assert_eq!(user, "", "{s:?} got {user}: status {}", r.status),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
}

#[test]
fn no_answer_ever_carries_another_users_identity() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (h, sessions) = rt.block_on(async {
        let h = start(trust_loopback).await;
        let sessions: Vec<String> = USERS.iter().map(|u| h.outpost.login(u)).collect();
        (Arc::new(h), Arc::new(sessions))
    });
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let steps = proptest::collection::vec(step(), 1..30);
    runner
        .run(&steps, |steps| {
            rt.block_on(run_steps(h.clone(), sessions.clone(), steps));
            Ok(())
        })
        .unwrap();
    assert!(
        cached_total(&h) > 0,
        "the property run never exercised the cache"
    );
}

fn cached_total(h: &Harness) -> u64 {
    cached(h)
}

const PAGES: usize = 20;
const ASSETS: usize = 50;

/// One page-load pattern: `PAGES` pages of `ASSETS` parallel checks with one cookie. Returns
/// (outpost calls, coalesced waiters, cache hits).
async fn page_loads(ttl: Duration, outpost_delay: Duration) -> (u64, u64, u64) {
    let h = start(|c| {
        trust_loopback(c);
        c.cache.ttl = ttl;
    })
    .await;
    if !outpost_delay.is_zero() {
        h.outpost.set_behaviour(Behaviour::Delay(outpost_delay));
    }
    let cookie = h.session_cookie("akadmin");
    for page in 0..PAGES {
        let mut set = tokio::task::JoinSet::new();
        for asset in 0..ASSETS {
            let (url, cookie) = (h.url(TRAEFIK), cookie.clone());
            set.spawn(async move {
                let uri = format!("/page{page}/asset{asset}.js");
                let r = get(&url, &forwarded("app.example", &uri, Some(&cookie))).await;
                assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
    (
        calls(&h),
        h.app.metrics.coalesced.get(),
        lookups(&h, Lookup::Hit),
    )
}

/// Outpost calls per 1 000 requests for the page-load pattern, cache on and off, with an
/// instant outpost and one taking 5 ms (a session lookup). Prints the numbers for RESULTS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for benches/RESULTS.md: cargo test --release --test cache -- --ignored --nocapture"]
async fn page_load_outpost_calls_per_thousand_requests() {
    let total = (PAGES * ASSETS) as u64;
    let cases = [
        (
            "cache on (ttl 10s)",
            Duration::from_secs(10),
            Duration::ZERO,
        ),
        (
            "cache off (ttl 0s): coalescing only",
            Duration::ZERO,
            Duration::ZERO,
        ),
        (
            "cache on (ttl 10s), outpost +5 ms",
            Duration::from_secs(10),
            Duration::from_millis(5),
        ),
        (
            "cache off (ttl 0s): coalescing only, outpost +5 ms",
            Duration::ZERO,
            Duration::from_millis(5),
        ),
    ];
    for (label, ttl, delay) in cases {
        let (calls, coalesced, hits) = page_loads(ttl, delay).await;
        println!(
            "{label}: requests={total} outpost_calls={calls} per_1000={:.1} coalesced={coalesced} cache_hits={hits}",
            calls as f64 * 1000.0 / total as f64
        );
        assert!(calls < total, "{label}: nothing saved");
        if !ttl.is_zero() {
            assert!(
                calls <= 50,
                "{label}: the cache should answer after the first page"
            );
        }
    }
}

#[tokio::test]
async fn forwarded_urls_under_the_outpost_prefix_bypass_the_cache() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    check(&h, "app.example", "/dashboard", Some(&cookie)).await;
    assert_eq!(calls(&h), 1);
    for i in 1..=2 {
        let r = check(
            &h,
            "app.example",
            "/outpost.goauthentik.io/start?rd=/x",
            Some(&cookie),
        )
        .await;
        assert_ne!(r.status, 400, "{r:?}");
        assert_eq!(calls(&h), 1 + i, "never answered from the cache");
    }
    assert_eq!(cached(&h), 0);
}

#[tokio::test]
async fn capacity_two_holds_two_entries_and_evicts_the_least_recently_used() {
    let h = start(|c| {
        trust_loopback(c);
        c.cache.capacity = 2;
    })
    .await;
    let cookies: Vec<String> = (0..5)
        .map(|i| h.session_cookie(&format!("user{i}")))
        .collect();
    for c in &cookies {
        let r = check(&h, "app.example", "/", Some(c)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!((calls(&h), cached(&h)), (5, 0));
    let entries = metric(&scrape(h.admin).await, "portcullis_cache_entries", &[]);
    assert!(
        entries.is_some_and(|e| e <= 2.0),
        "portcullis_cache_entries {entries:?} with capacity 2"
    );
    // The most recent user is still cached...
    check(&h, "app.example", "/", Some(&cookies[4])).await;
    assert_eq!((calls(&h), cached(&h)), (5, 1), "user4 was evicted");
    // ...the first was evicted, so the outpost answers it again.
    let r = check(&h, "app.example", "/", Some(&cookies[0])).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((calls(&h), cached(&h)), (6, 1), "user0 was still cached");
    assert!(h.app.runtime().cache.len() <= 2);
}

#[tokio::test]
async fn sign_out_with_only_an_authorization_header_purges_the_entries_of_that_credential() {
    let h = start(trust_loopback).await;
    let auth = basic("akadmin", portcullis::demo::outpost::DEMO_APP_PASSWORD);
    let with_auth = |host: &'static str| {
        let mut headers = forwarded(host, "/", None);
        headers.push(("authorization", auth.as_str()));
        headers
    };
    for _ in 0..2 {
        let r = get(&h.url(TRAEFIK), &with_auth("app.example")).await;
        assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    }
    assert_eq!((calls(&h), cached(&h)), (1, 1));
    let r = get(
        &h.url("/outpost.goauthentik.io/sign_out"),
        &[("host", "app.example"), ("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(r.status, 302);
    assert!(h.app.runtime().cache.is_empty());
    get(&h.url(TRAEFIK), &with_auth("app.example")).await;
    assert_eq!(
        calls(&h),
        2,
        "the signed-out credential was answered from the cache"
    );
}
