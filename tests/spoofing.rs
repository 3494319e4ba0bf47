//! Header spoofing on the auth tier (DESIGN.md sections 2 and 8, research/peers.md section 4
//! items 1-3): what a client sends must never reach the outpost unless the rules allow it, and
//! every 2xx the proxy answers carries the outpost's identity (or empty values), never the
//! client's. Each test asserts on what the fake outpost recorded and on the proxy's answer.

mod support;

use std::time::Duration;

use portcullis::demo::outpost::{Behaviour, RecordedRequest};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRAEFIK: &str = "/outpost.goauthentik.io/auth/traefik";
const CADDY: &str = "/outpost.goauthentik.io/auth/caddy";
const NGINX: &str = "/outpost.goauthentik.io/auth/nginx";
const ENVOY: &str = "/outpost.goauthentik.io/auth/envoy/dashboard";

/// Identity headers a client tries to inject, in every spelling the family check must catch.
const SPOOFED: [(&str, &str); 8] = [
    ("X-authentik-groups", "admins"),
    ("x_authentik_username", "mallory"),
    ("X.Authentik.Uid", "0"),
    ("X-AUTHENTIK-Email", "mallory@evil.example"),
    ("x-Authentik_meta-App", "evil"),
    ("X_AUTHENTIK_JWT", "forged.jwt.token"),
    ("x-authentik-entitlements", "root"),
    ("X.authentik-Name", "Mallory"),
];

/// The value a spoofed header carries, whatever header it lands in.
const SPOOFED_VALUES: [&str; 8] = [
    "admins",
    "mallory",
    "0",
    "mallory@evil.example",
    "evil",
    "forged.jwt.token",
    "root",
    "Mallory",
];

/// Whether `name` is any spelling of the `X-authentik-` family.
fn is_family(name: &str) -> bool {
    let folded: String = name.to_ascii_lowercase().replace(['_', '.'], "-");
    folded.starts_with("x-authentik-")
}

/// The forward-auth requests the fake outpost received (pings and other paths left out).
fn auth_requests(h: &Harness) -> Vec<RecordedRequest> {
    h.outpost
        .requests()
        .into_iter()
        .filter(|r| {
            r.path_and_query
                .starts_with("/outpost.goauthentik.io/auth/")
        })
        .collect()
}

/// The single forward-auth request the outpost received since the last `clear_requests`.
fn only_auth_request(h: &Harness) -> RecordedRequest {
    let mut all = auth_requests(h);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one auth request at the outpost: {all:#?}"
    );
    all.remove(0)
}

fn outpost_header<'a>(r: &'a RecordedRequest, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

/// Asserts that no spelling of the identity family reached the outpost.
fn assert_no_family_at_outpost(r: &RecordedRequest, what: &str) {
    for name in r.headers.keys() {
        assert!(
            !is_family(name.as_str()),
            "{what}: {name} reached the outpost"
        );
    }
}

/// Asserts that no spoofed value appears anywhere in an answer's identity headers, and that the
/// answer carries no non-canonical spelling of the family.
fn assert_no_spoofed_identity(r: &Reply, what: &str) {
    for (name, value) in &r.headers {
        if !is_family(name.as_str()) {
            continue;
        }
        assert!(
            name.as_str().starts_with("x-authentik-"),
            "{what}: non-canonical {name} in the answer"
        );
        let v = value.to_str().unwrap();
        assert!(
            !SPOOFED_VALUES.contains(&v),
            "{what}: spoofed value {v:?} in {name}"
        );
    }
    for name in IDENTITY {
        assert_eq!(
            r.headers.get_all(name).iter().count(),
            1,
            "{what}: {name} must appear exactly once"
        );
    }
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_outpost_and_allow_carries_outpost_values() {
    let h = start(trust_loopback).await;
    for path in [TRAEFIK, CADDY, NGINX, ENVOY] {
        // A new session per endpoint, so every check is a fresh one (the cache spans endpoints).
        let cookie = h.session_cookie("akadmin");
        h.outpost.clear_requests();
        let mut headers = traefik_headers(&[("cookie", &cookie)]);
        headers.push(("x-original-url", "https://app.example/dashboard"));
        headers.push(("host", "app.example"));
        headers.extend_from_slice(&SPOOFED);
        let r = get(&h.url(path), &headers).await;
        assert_eq!(r.status, 200, "{path}");
        let seen = only_auth_request(&h);
        assert_no_family_at_outpost(&seen, path);
        assert_no_spoofed_identity(&r, path);
        assert_eq!(r.header("x-authentik-username"), Some("akadmin"), "{path}");
        assert_eq!(
            r.header("x-authentik-groups"),
            Some("authentik Admins"),
            "{path}"
        );
        assert_eq!(
            r.header("x-authentik-email"),
            Some("akadmin@example.org"),
            "{path}"
        );
        assert_eq!(
            r.header("x-authentik-meta-app"),
            Some("portcullis-demo"),
            "{path}"
        );
        assert_ne!(r.header("x-authentik-uid"), Some("0"), "{path}");
    }
}

#[tokio::test]
async fn spoofed_identity_headers_are_dropped_for_an_untrusted_peer_too() {
    // The harness trusts no peer, so loopback is an ordinary client.
    let h = start(|_| {}).await;
    for path in [TRAEFIK, CADDY, ENVOY] {
        let cookie = h.session_cookie("akadmin");
        h.outpost.clear_requests();
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend_from_slice(&SPOOFED);
        let r = get(&h.url(path), &headers).await;
        assert_eq!(r.status, 200, "{path}");
        assert_no_family_at_outpost(&only_auth_request(&h), path);
        assert_no_spoofed_identity(&r, path);
        assert_eq!(r.header("x-authentik-username"), Some("akadmin"), "{path}");
    }
}

#[tokio::test]
async fn mixed_case_family_names_on_the_wire_never_reach_the_outpost() {
    // hyper's client lower-cases names; a raw request keeps the exact bytes a client could send.
    let h = start(|_| {}).await;
    let cookie = h.session_cookie("akadmin");
    let head = format!(
        "GET {TRAEFIK} HTTP/1.1\r\nHost: app.example\r\nCookie: {cookie}\r\n\
         X-AuThEnTiK-GrOuPs: admins\r\nX_Authentik_Username: mallory\r\nX.AUTHENTIK.UID: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let mut s = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("x-authentik-groups: authentik admins\r\n"),
        "{text}"
    );
    assert!(
        lower.contains("x-authentik-username: akadmin\r\n"),
        "{text}"
    );
    assert!(
        !lower.contains("mallory") && !lower.contains(": admins\r\n"),
        "{text}"
    );
    assert_no_family_at_outpost(&only_auth_request(&h), "raw");
}

#[tokio::test]
async fn anonymous_skip_path_answers_empty_identity_never_the_clients() {
    // Trusted Traefik forwarding a public path without a session: the outpost's skip path.
    let h = start(trust_loopback).await;
    let mut headers = traefik_headers(&[]);
    headers.retain(|(k, _)| *k != "x-forwarded-uri");
    headers.push(("x-forwarded-uri", "/public/info"));
    headers.extend_from_slice(&SPOOFED);
    let r = get(&h.url(TRAEFIK), &headers).await;
    assert_eq!(r.status, 200);
    assert_no_family_at_outpost(&only_auth_request(&h), "anonymous traefik");
    assert_no_spoofed_identity(&r, "anonymous traefik");
    for name in IDENTITY {
        assert_eq!(r.header(name), Some(""), "{name} must be present and empty");
    }

    // Untrusted caller on Envoy: the skip path rides in the path itself.
    h.outpost.clear_requests();
    let mut headers = vec![("host", "app.example")];
    headers.extend_from_slice(&SPOOFED);
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/envoy/public/info"),
        &headers,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_no_family_at_outpost(&only_auth_request(&h), "anonymous envoy");
    assert_no_spoofed_identity(&r, "anonymous envoy");
    for name in IDENTITY {
        assert_eq!(
            r.header(name),
            Some(""),
            "envoy: {name} must be present and empty"
        );
    }
}

#[tokio::test]
async fn fallback_allow_carries_only_the_emergency_user_and_the_marker() {
    let h = start(|_| {}).await;
    h.outpost.set_behaviour(Behaviour::Status(503));
    let auth = basic(FALLBACK_USER, FALLBACK_PASSWORD);
    let mut headers = vec![("authorization", auth.as_str()), ("host", "app.example")];
    headers.extend_from_slice(&SPOOFED);
    let r = get(&h.url(TRAEFIK), &headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-auth-fallback"), Some("true"));
    assert_eq!(r.header("x-authentik-username"), Some(FALLBACK_USER));
    assert_no_spoofed_identity(&r, "fallback");
    for name in IDENTITY.iter().filter(|n| **n != "x-authentik-username") {
        assert_eq!(r.header(name), Some(""), "{name} must be present and empty");
    }
    // Whatever the outpost saw while failing, it saw no identity header either.
    for seen in auth_requests(&h) {
        assert_no_family_at_outpost(&seen, "fallback");
    }
}

#[tokio::test]
async fn cached_answer_repeats_the_fresh_identity_and_never_crosses_users() {
    let h = start(trust_loopback).await;
    let alice = h.session_cookie("akadmin");
    let bob = h.session_cookie("bob");
    let ask = |cookie: String| {
        let url = h.url(TRAEFIK);
        async move {
            let mut headers = traefik_headers(&[("cookie", &cookie)]);
            headers.extend_from_slice(&SPOOFED);
            get(&url, &headers).await
        }
    };
    let fresh = ask(alice.clone()).await;
    let before = h.outpost.stats().auth_requests;
    let cached = ask(alice.clone()).await;
    assert_eq!(
        h.outpost.stats().auth_requests,
        before,
        "second answer must come from the cache"
    );
    assert_eq!((fresh.status.as_u16(), cached.status.as_u16()), (200, 200));
    let identity = |r: &Reply| -> Vec<(String, Vec<String>)> {
        let mut names: Vec<String> = r
            .headers
            .keys()
            .filter(|n| is_family(n.as_str()))
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let values = r
                    .headers
                    .get_all(&n)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                (n, values)
            })
            .collect()
    };
    assert_eq!(identity(&fresh), identity(&cached));
    assert_eq!(identity(&fresh).len(), IDENTITY.len());
    assert_no_spoofed_identity(&cached, "cached");

    // Another user's cookie with alice cached: a fresh answer for bob, never alice's identity.
    let other = ask(bob.clone()).await;
    assert_eq!(other.status, 200);
    assert_eq!(
        h.outpost.stats().auth_requests,
        before + 1,
        "bob must not hit alice's entry"
    );
    assert_eq!(other.header("x-authentik-username"), Some("bob"));
    assert_eq!(other.header("x-authentik-groups"), Some(""));
    assert_ne!(
        other.header("x-authentik-jwt"),
        fresh.header("x-authentik-jwt")
    );
    assert_ne!(
        other.header("x-authentik-uid"),
        fresh.header("x-authentik-uid")
    );
    // And both stay themselves once both are cached.
    assert_eq!(ask(bob).await.header("x-authentik-username"), Some("bob"));
    assert_eq!(
        ask(alice).await.header("x-authentik-username"),
        Some("akadmin")
    );
    assert_eq!(h.outpost.stats().auth_requests, before + 1);
}

#[tokio::test]
async fn untrusted_peer_forwarded_headers_are_rebuilt_from_the_connection() {
    let h = start(|_| {}).await;
    let r = send(
        "POST",
        &h.url(TRAEFIK),
        &[
            ("host", "app.example"),
            ("x-forwarded-host", "admin.evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-uri", "/public/bypass"),
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-port", "8443"),
            ("x-forwarded-prefix", "/public"),
        ],
        "a body that must not travel",
    )
    .await;
    // The spoofed skip path did not work: the outpost judged the real (protected) path.
    assert_eq!(r.status, 302);
    let seen = only_auth_request(&h);
    assert_eq!(seen.method, http::Method::GET);
    assert_eq!(seen.body_len, 0);
    assert_eq!(
        outpost_header(&seen, "x-forwarded-host"),
        Some("app.example")
    );
    assert_eq!(outpost_header(&seen, "host"), Some("app.example"));
    assert_eq!(outpost_header(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(outpost_header(&seen, "x-forwarded-uri"), Some(TRAEFIK));
    assert_eq!(outpost_header(&seen, "x-forwarded-method"), Some("POST"));
    assert_eq!(outpost_header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(outpost_header(&seen, "x-forwarded-port"), None);
    assert_eq!(outpost_header(&seen, "x-forwarded-prefix"), None);
    for name in [
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-uri",
        "x-forwarded-method",
        "x-forwarded-for",
    ] {
        assert_eq!(seen.headers.get_all(name).iter().count(), 1, "{name} once");
    }
}

#[tokio::test]
async fn trusted_peer_forwarded_headers_are_kept() {
    let h = start(trust_loopback).await;
    let r = get(
        &h.url(TRAEFIK),
        &[
            ("host", "portcullis.internal"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-uri", "/public/info?q=1"),
            ("x-forwarded-method", "PUT"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "trusted skip path is anonymous allow");
    let seen = only_auth_request(&h);
    assert_eq!(
        outpost_header(&seen, "x-forwarded-host"),
        Some("app.example")
    );
    assert_eq!(outpost_header(&seen, "x-forwarded-proto"), Some("https"));
    assert_eq!(
        outpost_header(&seen, "x-forwarded-uri"),
        Some("/public/info?q=1")
    );
    assert_eq!(outpost_header(&seen, "x-forwarded-method"), Some("PUT"));
    assert_eq!(
        outpost_header(&seen, "x-forwarded-for"),
        Some("203.0.113.7, 10.0.0.1")
    );
}

#[tokio::test]
async fn x_original_uri_is_never_forwarded_even_from_a_trusted_peer() {
    let h = start(trust_loopback).await;
    // The outpost prefers X-Original-URI; had it been forwarded, `/public` would be a skip path.
    let r = get(
        &h.url(NGINX),
        &[
            ("host", "app.example"),
            ("x-original-url", "https://app.example/dashboard"),
            ("x-original-uri", "/public/bypass"),
            ("X_Original_URI", "/public/bypass"),
            ("x.original.uri", "/public/bypass"),
        ],
    )
    .await;
    assert_eq!(
        r.status, 401,
        "nginx without a session is 401, not the spoofed skip path"
    );
    let seen = only_auth_request(&h);
    assert_eq!(
        outpost_header(&seen, "x-original-url"),
        Some("https://app.example/dashboard")
    );
    for name in seen.headers.keys() {
        let folded = name.as_str().replace(['_', '.'], "-");
        assert_ne!(folded, "x-original-uri", "{name} reached the outpost");
    }
}

#[tokio::test]
async fn x_original_url_is_forwarded_only_from_a_trusted_peer_on_nginx() {
    // Trusted nginx: forwarded as is.
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let r = get(
        &h.url(NGINX),
        &[
            ("host", "app.example"),
            ("x-original-url", "https://app.example/x"),
            ("cookie", &cookie),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        outpost_header(&only_auth_request(&h), "x-original-url"),
        Some("https://app.example/x")
    );
    // Trusted, but Traefik's endpoint: never forwarded there. (A fresh session: the nginx
    // allow above is cached for app.example, the host its original URL names.)
    h.outpost.clear_requests();
    let cookie = h.session_cookie("akadmin");
    let r = get(
        &h.url(TRAEFIK),
        &traefik_headers(&[
            ("host", "app.example"),
            ("x-original-url", "https://app.example/x"),
            ("cookie", &cookie),
        ]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        outpost_header(&only_auth_request(&h), "x-original-url"),
        None
    );

    // Untrusted nginx caller: dropped, so the outpost cannot be steered by it.
    let h = start(|_| {}).await;
    let cookie = h.session_cookie("akadmin");
    let r = get(
        &h.url(NGINX),
        &[
            ("x-original-url", "https://app.example/public/x"),
            ("cookie", &cookie),
        ],
    )
    .await;
    let seen = only_auth_request(&h);
    assert_eq!(outpost_header(&seen, "x-original-url"), None);
    for name in seen.headers.keys() {
        assert!(
            !name.as_str().starts_with("x-original"),
            "{name} reached the outpost"
        );
    }
    assert!(
        !r.status.is_success(),
        "an untrusted nginx caller names no URL: {r:?}"
    );
}

#[tokio::test]
async fn forwarded_and_alias_spellings_are_never_forwarded() {
    let h = start(trust_loopback).await;
    let r = get(
        &h.url(TRAEFIK),
        &[
            ("host", "portcullis.internal"),
            ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
            ("x_forwarded_proto", "https"),
            ("X.Forwarded.Host", "evil.example"),
            ("x-forwarded_uri", "/public/bypass"),
            ("X_FORWARDED_FOR", "6.6.6.6"),
            ("x_forwarded_method", "DELETE"),
        ],
    )
    .await;
    // Only canonical names count: with none sent, the values come from the connection.
    assert_eq!(r.status, 302, "the alias skip path must not work");
    let seen = only_auth_request(&h);
    for name in seen.headers.keys() {
        let s = name.as_str();
        assert_ne!(s, "forwarded", "Forwarded reached the outpost");
        let folded = s.replace(['_', '.'], "-");
        if folded.starts_with("x-forwarded-") {
            assert!(
                s.starts_with("x-forwarded-"),
                "alias {s} reached the outpost"
            );
        }
    }
    assert_eq!(outpost_header(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        outpost_header(&seen, "x-forwarded-host"),
        Some("portcullis.internal")
    );
    assert_eq!(outpost_header(&seen, "x-forwarded-uri"), Some(TRAEFIK));
    assert_eq!(outpost_header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(outpost_header(&seen, "x-forwarded-method"), Some("GET"));
}

#[tokio::test]
async fn naming_forwarded_headers_in_connection_cannot_remove_them() {
    let listed = "keep-alive, X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, X-Forwarded-Uri, X-Forwarded-Method";
    let spoof = [
        ("connection", listed),
        ("host", "app.example"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-uri", "/public/x"),
        ("x-forwarded-method", "DELETE"),
    ];
    // Untrusted: every value is the one the proxy set from the connection.
    let h = start(|_| {}).await;
    get(&h.url(TRAEFIK), &spoof).await;
    let seen = only_auth_request(&h);
    assert_eq!(outpost_header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        outpost_header(&seen, "x-forwarded-host"),
        Some("app.example")
    );
    assert_eq!(outpost_header(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(outpost_header(&seen, "x-forwarded-uri"), Some(TRAEFIK));
    assert_eq!(outpost_header(&seen, "x-forwarded-method"), Some("GET"));
    assert_eq!(
        outpost_header(&seen, "connection"),
        None,
        "the client's Connection must not travel"
    );

    // Trusted: the outpost still gets all five, non-empty.
    let h = start(trust_loopback).await;
    get(&h.url(TRAEFIK), &spoof).await;
    let seen = only_auth_request(&h);
    for name in [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-uri",
        "x-forwarded-method",
    ] {
        let v = outpost_header(&seen, name).unwrap_or_default();
        assert!(!v.is_empty(), "{name} was dropped");
    }
    assert_eq!(outpost_header(&seen, "connection"), None);
}
