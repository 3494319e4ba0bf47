//! `/outpost.goauthentik.io/*` passed through to the outpost: the login round trip through the
//! proxy, streaming bodies, header hygiene, the sign-out purge, the open breaker and refused paths.

mod support;

use std::time::{Duration, Instant};

use portcullis::demo::outpost::{FakeOutpost, FakeOutpostConfig};
use portcullis::metrics::{Decision, Endpoint};
use support::*;

/// `name=value` of the first `Set-Cookie` of `r`.
fn cookie_pair(r: &Reply) -> String {
    let sc = r.header("set-cookie").expect("a Set-Cookie");
    sc.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn ping_passes_through_as_204() {
    let h = start(trust_loopback).await;
    let r = get(&h.url("/outpost.goauthentik.io/ping"), &[]).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(h.outpost.stats().pings, 1);
    assert_eq!(
        h.app
            .metrics
            .requests_total(Endpoint::Outpost, Decision::Passthrough),
        1
    );
}

#[tokio::test]
async fn full_login_round_trip_through_the_proxy_ends_in_an_allow() {
    let cfg = FakeOutpostConfig {
        external_host: Some("http://app.example".to_owned()),
        ..Default::default()
    };
    let outpost = FakeOutpost::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let h = start_with(outpost, trust_loopback).await;
    let check = h.url("/outpost.goauthentik.io/auth/traefik");

    // 1. Forward-auth without a session: 302 to authorize, with a fresh session cookie.
    let first = get(&check, &traefik_headers(&[])).await;
    assert_eq!(first.status, 302);
    let anon = cookie_pair(&first);
    let authorize = first.header("location").unwrap().to_owned();
    assert!(
        authorize.starts_with(&format!("{}/application/o/authorize/", h.outpost.url())),
        "{authorize}"
    );

    // 2. The authorize stand-in (on the fake itself) sends the browser to the callback.
    let approved = get(&authorize, &[]).await;
    assert_eq!(approved.status, 302);
    let callback = approved.header("location").unwrap().to_owned();
    let path = callback
        .strip_prefix("http://app.example")
        .expect("callback under external_host");
    assert!(
        path.starts_with("/outpost.goauthentik.io/callback?"),
        "{path}"
    );

    // 3. The callback goes through the proxy's passthrough.
    let done = get(&h.url(path), &[("host", "app.example"), ("cookie", &anon)]).await;
    assert_eq!(
        done.status,
        302,
        "{:?}",
        String::from_utf8_lossy(&done.body)
    );
    assert_eq!(
        done.header("location"),
        Some("https://app.example/dashboard")
    );
    let session = cookie_pair(&done);
    assert!(session.starts_with(&format!("{}=", h.outpost.cookie_name())));

    // 4. Forward-auth with the new cookie: allowed as the demo user.
    let ok = get(&check, &traefik_headers(&[("cookie", &session)])).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-authentik-username"), Some("akadmin"));
    let callbacks = h
        .outpost
        .stats()
        .per_path
        .get("/outpost.goauthentik.io/callback")
        .copied();
    assert_eq!(callbacks, Some(1));
}

#[tokio::test]
async fn post_body_of_one_mebibyte_streams_to_the_outpost() {
    let h = start(trust_loopback).await;
    let body = "a".repeat(1 << 20);
    let r = send(
        "POST",
        &h.url("/outpost.goauthentik.io/static/upload"),
        &[("content-type", "application/octet-stream")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    let sent = h.outpost.requests().pop().unwrap();
    assert_eq!(sent.method, http::Method::POST);
    assert_eq!(sent.path_and_query, "/outpost.goauthentik.io/static/upload");
    assert_eq!(sent.body_len, 1 << 20);
}

#[tokio::test]
async fn client_identity_original_and_forwarded_headers_never_reach_the_outpost() {
    let h = start(|_| {}).await;
    let r = get(
        &h.url("/outpost.goauthentik.io/ping"),
        &[
            ("host", "app.example"),
            ("x-authentik-username", "admin"),
            ("X_authentik_groups", "admins"),
            ("x.authentik.uid", "0"),
            ("x-original-uri", "/public/x"),
            ("x-original-url", "https://app.example/public/x"),
            ("forwarded", "for=1.2.3.4;host=evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("x_forwarded_host", "evil.example"),
            ("x-forwarded-for", "1.2.3.4"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    let sent = h.outpost.requests().pop().unwrap();
    for (name, _) in sent.headers.iter() {
        let n = name.as_str();
        assert!(
            !portcullis::auth::headers::is_authentik_family(n),
            "{n} reached the outpost"
        );
        assert!(
            !portcullis::auth::headers::is_original_family(n),
            "{n} reached the outpost"
        );
        assert_ne!(n, "forwarded");
        assert_ne!(n, "x_forwarded_host");
    }
    // Untrusted caller: X-Forwarded-* rebuilt from the connection.
    assert_eq!(sent.headers.get("x-forwarded-host").unwrap(), "app.example");
    assert_eq!(sent.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(sent.headers.get("x-forwarded-proto").unwrap(), "http");
}

#[tokio::test]
async fn sign_out_through_the_proxy_purges_the_cached_allow() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let check = h.url("/outpost.goauthentik.io/auth/traefik");
    let headers = traefik_headers(&[("cookie", &cookie)]);

    let fresh = get(&check, &headers).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(h.outpost.stats().auth_requests, 1);
    let cached = get(&check, &headers).await;
    assert_eq!(cached.status, 200);
    assert_eq!(cached.header("x-authentik-username"), Some("akadmin"));
    assert_eq!(
        h.outpost.stats().auth_requests,
        1,
        "second check must be answered from the cache"
    );
    assert_eq!(
        h.app
            .metrics
            .requests_total(Endpoint::Traefik, Decision::AllowCached),
        1
    );

    let out = get(
        &h.url("/outpost.goauthentik.io/sign_out"),
        &[("host", "app.example"), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(out.status, 302);
    assert!(out.header("location").unwrap().contains("/end-session/"));
    assert_eq!(h.app.runtime().cache.len(), 0);

    // The outpost is asked again, and the signed-out session is no longer allowed.
    let after = get(&check, &headers).await;
    assert_eq!(h.outpost.stats().auth_requests, 2);
    assert_eq!(after.status, 302);
    assert!(after.headers.get("x-authentik-username").is_none());
}

#[tokio::test]
async fn passthrough_answers_503_at_once_while_the_breaker_is_open() {
    let h = start(trust_loopback).await;
    h.outpost.clone().shutdown().await;
    let check = h.url("/outpost.goauthentik.io/auth/traefik");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.app.runtime().breaker.is_open() {
        assert!(Instant::now() < deadline, "breaker never opened");
        let r = get(&check, &traefik_headers(&[])).await;
        assert_eq!(r.header("x-auth-fallback"), Some("true"));
    }
    let started = Instant::now();
    let r = get(&h.url("/outpost.goauthentik.io/ping"), &[]).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("circuit open"));
    assert!(took < Duration::from_millis(300), "took {took:?}");
    assert_eq!(
        h.app
            .metrics
            .requests_total(Endpoint::Outpost, Decision::Error),
        1
    );
}

#[tokio::test]
async fn unknown_path_under_the_prefix_relays_the_outposts_404() {
    let h = start(trust_loopback).await;
    let r = get(&h.url("/outpost.goauthentik.io/no-such-thing"), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(&r.body[..], b"404 page not found\n");
    let sent = h.outpost.requests().pop().unwrap();
    assert_eq!(sent.path_and_query, "/outpost.goauthentik.io/no-such-thing");
}

#[tokio::test]
async fn dot_segment_paths_are_refused_with_400_before_the_outpost() {
    let h = start(trust_loopback).await;
    for path in [
        "/outpost.goauthentik.io/../x",
        "/outpost.goauthentik.io/static/../../application/o/authorize/",
        "/outpost.goauthentik.io/%2e%2e/x",
        "/outpost.goauthentik.io/./ping",
    ] {
        let r = get(&h.url(path), &[]).await;
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(h.outpost.stats().requests_total, 0);
    assert_eq!(
        h.app
            .metrics
            .requests_total(Endpoint::Outpost, Decision::Error),
        4
    );
}
