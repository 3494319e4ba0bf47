//! Every answer kind of DESIGN.md section 1 on the forward-auth endpoints, against the fake outpost.

mod support;

use support::*;

#[tokio::test]
async fn session_cookie_is_allowed_with_all_twelve_identity_headers() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/traefik"),
        &traefik_headers(&[("cookie", &cookie)]),
    )
    .await;
    assert_eq!(r.status, 200);
    for name in IDENTITY {
        assert!(r.headers.contains_key(name), "{name} missing");
    }
    assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    assert_eq!(r.header("user-agent"), Some("Mozilla/5.0 test"));
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn no_session_relays_the_redirect_with_cookie_and_body() {
    let h = start(trust_loopback).await;
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/traefik"),
        &traefik_headers(&[]),
    )
    .await;
    assert_eq!(r.status, 302);
    let location = r.header("location").expect("location relayed");
    assert!(location.contains("/application/o/authorize/"), "{location}");
    assert!(location.contains("state="), "{location}");
    assert!(r
        .header("set-cookie")
        .unwrap()
        .starts_with(&h.outpost.cookie_name()));
    assert!(String::from_utf8_lossy(&r.body).contains("Found"));
    assert!(!r.headers.contains_key("x-authentik-username"));
}

/// [`traefik_headers`] with some values replaced (the client would send a name twice otherwise).
fn traefik_with<'a>(over: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h: Vec<(&str, &str)> = traefik_headers(&[])
        .into_iter()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .collect();
    h.extend_from_slice(over);
    h
}

/// Every value of a header, in order.
fn all<'r>(r: &'r Reply, name: &str) -> Vec<&'r str> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// The last request the fake outpost recorded.
fn last_request(h: &Harness) -> portcullis::demo::outpost::RecordedRequest {
    h.outpost.requests().pop().expect("the outpost was asked")
}

#[tokio::test]
async fn basic_header_auth_is_allowed_and_relays_the_outposts_session_cookie() {
    let h = start(trust_loopback).await;
    let auth = basic("akadmin", portcullis::demo::outpost::DEMO_APP_PASSWORD);
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/traefik"),
        &traefik_headers(&[("authorization", &auth)]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    assert_eq!(r.header("x-authentik-email"), Some("akadmin@example.org"));
    for name in IDENTITY {
        assert!(r.headers.contains_key(name), "{name} missing");
    }
    let cookies = all(&r, "set-cookie");
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let prefix = format!("{}=", h.outpost.cookie_name());
    assert!(cookies[0].starts_with(&prefix), "{}", cookies[0]);
    assert!(cookies[0].len() > prefix.len() + 1 && !cookies[0][prefix.len()..].starts_with(';'));
    assert!(r.headers.get("x-auth-fallback").is_none());
}

#[tokio::test]
async fn skip_path_without_session_is_an_anonymous_allow_with_twelve_empty_identity_headers() {
    let h = start(trust_loopback).await;
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/traefik"),
        &traefik_with(&[("x-forwarded-uri", "/public/x")]),
    )
    .await;
    assert_eq!(r.status, 200);
    for name in IDENTITY {
        assert_eq!(r.header(name), Some(""), "{name} must be present and empty");
    }
    assert!(r.headers.get("location").is_none());
    assert!(r.headers.get("set-cookie").is_none());
    assert!(r.headers.get("x-auth-fallback").is_none());
    use portcullis::metrics::{Decision, Endpoint};
    assert_eq!(
        h.app
            .metrics
            .requests_total(Endpoint::Traefik, Decision::Anonymous),
        1
    );
}

#[tokio::test]
async fn stale_cookie_redirect_relays_both_set_cookies_in_order_and_the_body() {
    let h = start(trust_loopback).await;
    let stale = format!("{}=no-such-session", h.outpost.cookie_name());
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/traefik"),
        &traefik_headers(&[("cookie", &stale)]),
    )
    .await;
    assert_eq!(r.status, 302);
    let cookies = all(&r, "set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let name = h.outpost.cookie_name();
    assert!(
        cookies[0].starts_with(&format!("{name}=;")),
        "deletion first: {}",
        cookies[0]
    );
    assert!(cookies[0].contains("Max-Age=0"), "{}", cookies[0]);
    assert!(
        cookies[1].starts_with(&format!("{name}="))
            && !cookies[1].starts_with(&format!("{name}=;"))
    );
    let location = r.header("location").unwrap();
    assert!(location.contains("/application/o/authorize/"), "{location}");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.starts_with("<a href=\"") && body.ends_with("\">Found</a>.\n"),
        "{body}"
    );
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
}

#[tokio::test]
async fn nginx_without_session_relays_401_with_cookie_and_body() {
    let h = start(trust_loopback).await;
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/nginx"),
        &[
            ("host", "app.example"),
            ("x-original-url", "https://app.example/dashboard"),
            ("user-agent", "nginx-test"),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(&r.body[..], b"unauthorized request\n");
    let cookie = r.header("set-cookie").expect("session cookie relayed");
    assert!(
        cookie.starts_with(&format!("{}=", h.outpost.cookie_name())),
        "{cookie}"
    );
    assert!(r.headers.get("www-authenticate").is_none());
    assert!(r.headers.get("x-auth-fallback").is_none());
}

#[tokio::test]
async fn nginx_forwards_a_trusted_original_url_but_never_original_uri() {
    let h = start(trust_loopback).await;
    // X-Original-URI points at a skip path: were it forwarded, the outpost would prefer it and allow.
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/nginx"),
        &[
            ("host", "app.example"),
            ("x-original-url", "https://app.example/dashboard?a=1"),
            ("x-original-uri", "/public/x"),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    let sent = last_request(&h);
    assert_eq!(sent.path_and_query, "/outpost.goauthentik.io/auth/nginx");
    assert_eq!(
        sent.headers.get("x-original-url").unwrap(),
        "https://app.example/dashboard?a=1"
    );
    assert!(sent.headers.get("x-original-uri").is_none());
}

#[tokio::test]
async fn nginx_host_is_the_original_urls_and_must_be_the_one_nginx_routed_to() {
    // The outpost picks the app by the host it is sent. On /auth/nginx that is the original
    // URL's, and only when nginx routed the request to that host (its Host, or a trusted
    // X-Forwarded-Host): nginx builds the URL from the client's Host line but routes by the
    // request line first, and passes a client's X-Forwarded-Host on.
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let nginx = |headers: Vec<(&'static str, String)>| {
        let url = h.url("/outpost.goauthentik.io/auth/nginx");
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            get(&url, &headers).await
        }
    };
    let with = |host: &str, url: &str, extra: Option<(&'static str, &str)>| {
        let mut v = vec![
            ("host", host.to_owned()),
            ("x-original-url", url.to_owned()),
            ("cookie", cookie.clone()),
        ];
        v.extend(extra.map(|(n, x)| (n, x.to_owned())));
        v
    };
    // nginx's $host has no port; the URL's port goes on to the outpost.
    let r = nginx(with(
        "admin.example",
        "https://admin.example:8443/panel",
        None,
    ))
    .await;
    assert_eq!(r.status, 200);
    let sent = last_request(&h);
    assert_eq!(
        sent.headers.get("x-forwarded-host").unwrap(),
        "admin.example:8443"
    );
    assert_eq!(sent.headers.get("host").unwrap(), "admin.example:8443");
    // A userinfo part, or bytes the URL parser refuses after the authority, change nothing.
    for url in [
        "https://public.example@admin.example/panel",
        "https://admin.example/settings?x=<",
    ] {
        let r = nginx(with("ADMIN.example.", url, None)).await;
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(
            last_request(&h).headers.get("x-forwarded-host").unwrap(),
            "admin.example"
        );
    }
    let asked = h.outpost.stats().auth_requests;
    // Routed to admin (an absolute-form request line), URL built from a Host line naming wiki.
    let r = nginx(with("admin.example", "https://wiki.example/settings", None)).await;
    assert_eq!(r.status, 400);
    // A client's own X-Forwarded-Host passed on by nginx disagrees with the URL.
    let claim = Some(("x-forwarded-host", "wiki.example"));
    let r = nginx(with(
        "admin.example",
        "https://admin.example/settings",
        claim,
    ))
    .await;
    assert_eq!(r.status, 400);
    // No host in the URL at all.
    let r = nginx(with("admin.example", "/settings", None)).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        h.outpost.stats().auth_requests,
        asked,
        "refused before asking"
    );
    assert_eq!(
        h.app.runtime().cache.len(),
        2,
        "keyed by admin.example and admin.example:8443"
    );
}

#[tokio::test]
async fn nginx_drops_an_untrusted_original_url_and_relays_the_outposts_500() {
    let h = start(|_| {}).await;
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/nginx"),
        &[("x-original-url", "https://app.example/dashboard")],
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(&r.body[..], b"configuration error\n");
    assert!(r.headers.get("x-auth-fallback").is_none());
    let sent = last_request(&h);
    assert!(
        sent.headers.get("x-original-url").is_none(),
        "{:?}",
        sent.headers
    );
}

#[tokio::test]
async fn caddy_endpoint_allows_a_session_and_redirects_without_one() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let url = h.url("/outpost.goauthentik.io/auth/caddy");
    let ok = get(&url, &traefik_headers(&[("cookie", &cookie)])).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-authentik-username"), Some("akadmin"));
    assert_eq!(
        last_request(&h).path_and_query,
        "/outpost.goauthentik.io/auth/caddy"
    );
    let redirect = get(&url, &traefik_headers(&[])).await;
    assert_eq!(redirect.status, 302);
    assert!(redirect
        .header("location")
        .unwrap()
        .contains("/application/o/authorize/"));
    assert!(redirect.header("set-cookie").is_some());
    assert_eq!(
        last_request(&h).path_and_query,
        "/outpost.goauthentik.io/auth/caddy"
    );
}

#[tokio::test]
async fn envoy_forwards_path_query_and_app_host_and_relays_the_redirect() {
    let h = start(|_| {}).await;
    let url = h.url("/outpost.goauthentik.io/auth/envoy/app/x?q=1");
    let r = get(
        &url,
        &[("host", "app.example"), ("user-agent", "envoy-test")],
    )
    .await;
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .contains("/application/o/authorize/"));
    assert!(r.header("set-cookie").is_some());
    let sent = last_request(&h);
    assert_eq!(sent.method, http::Method::GET);
    assert_eq!(
        sent.path_and_query,
        "/outpost.goauthentik.io/auth/envoy/app/x?q=1"
    );
    assert_eq!(sent.headers.get("host").unwrap(), "app.example");
    assert_eq!(sent.headers.get("x-forwarded-host").unwrap(), "app.example");

    let cookie = h.session_cookie("akadmin");
    let ok = get(&url, &[("host", "app.example"), ("cookie", &cookie)]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-authentik-username"), Some("akadmin"));
}

#[tokio::test]
async fn outpost_configuration_error_from_a_bad_forwarded_proto_is_relayed_as_500() {
    let h = start(trust_loopback).await;
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/traefik"),
        &traefik_with(&[("x-forwarded-proto", "not a scheme")]),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(&r.body[..], b"configuration error\n");
    assert!(r.headers.get("x-auth-fallback").is_none());
    assert!(r.headers.get("x-authentik-username").is_none());
}

#[tokio::test]
async fn outpost_500_401_and_302_are_relayed_never_fallback_and_never_trip_the_breaker() {
    use portcullis::demo::outpost::Behaviour;
    let h = start(trust_loopback).await;
    let url = h.url("/outpost.goauthentik.io/auth/traefik");
    // Valid emergency credentials: a fallback would answer 200 with them.
    let auth = basic(FALLBACK_USER, FALLBACK_PASSWORD);
    for code in [500u16, 401, 302, 500, 500, 500] {
        h.outpost.set_behaviour(Behaviour::Status(code));
        let r = get(&url, &traefik_headers(&[("authorization", &auth)])).await;
        assert_eq!(r.status.as_u16(), code);
        assert_eq!(&r.body[..], b"fake failure\n");
        assert!(
            r.headers.get("x-auth-fallback").is_none(),
            "{code} fell back"
        );
        assert!(r.headers.get("x-authentik-username").is_none());
    }
    assert!(!h.app.runtime().breaker.is_open());
    h.outpost.set_behaviour(Behaviour::Normal);
    let cookie = h.session_cookie("akadmin");
    let r = get(&url, &traefik_headers(&[("cookie", &cookie)])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    assert!(r.headers.get("x-auth-fallback").is_none());
}

#[tokio::test]
async fn post_with_body_reaches_the_outpost_as_a_bodyless_get_with_traefiks_headers() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let r = send(
        "POST",
        &h.url("/outpost.goauthentik.io/auth/traefik"),
        &traefik_with(&[
            ("x-forwarded-method", "POST"),
            ("cookie", &cookie),
            (
                "authorization",
                "Bearer not-checked-when-the-cookie-is-valid",
            ),
            ("content-type", "application/json"),
        ]),
        "{\"a\": \"some body that must not travel\"}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    let sent = last_request(&h);
    assert_eq!(sent.method, http::Method::GET);
    assert_eq!(sent.body_len, 0);
    assert_eq!(sent.path_and_query, "/outpost.goauthentik.io/auth/traefik");
    let want = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example"),
        ("x-forwarded-uri", "/dashboard"),
        ("x-forwarded-method", "POST"),
        ("x-forwarded-for", "203.0.113.7"),
        ("cookie", cookie.as_str()),
        (
            "authorization",
            "Bearer not-checked-when-the-cookie-is-valid",
        ),
        ("user-agent", "Mozilla/5.0 test"),
    ];
    for (name, value) in want {
        assert_eq!(
            sent.headers.get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{name}"
        );
    }
    assert!(sent.headers.get("content-type").is_none());
    assert!(sent.headers.get("content-length").is_none_or(|v| v == "0"));
    assert!(sent.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn unknown_paths_are_404_without_asking_the_outpost() {
    let h = start(trust_loopback).await;
    for path in [
        "/",
        "/auth/traefik",
        "/outpost.goauthentik.io",
        "/healthz/x",
    ] {
        let r = get(&h.url(path), &traefik_headers(&[])).await;
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(h.outpost.stats().requests_total, 0);
}

#[tokio::test]
async fn healthz_on_the_main_port_answers_200_ok() {
    let h = start(trust_loopback).await;
    let r = get(&h.url("/healthz"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(std::str::from_utf8(&r.body).unwrap().trim_end(), "ok");
    assert_eq!(h.outpost.stats().requests_total, 0);
}

#[tokio::test]
async fn request_without_any_host_gets_the_outposts_configuration_error_relayed_as_500() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start(|_| {}).await;
    let mut s = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(b"GET /outpost.goauthentik.io/auth/traefik HTTP/1.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 500"), "{text}");
    assert!(text.ends_with("configuration error\n"), "{text}");
    assert!(!text.contains("x-auth-fallback"), "{text}");
    let sent = last_request(&h);
    assert!(sent.headers.get("x-forwarded-host").is_none());
}

#[tokio::test]
async fn dot_segments_in_the_forwarded_uri_are_refused_before_the_outpost() {
    let h = start(trust_loopback).await;
    for uri in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/.%2E/admin",
    ] {
        let r = get(
            &h.url("/outpost.goauthentik.io/auth/traefik"),
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example"),
                ("x-forwarded-uri", uri),
            ],
        )
        .await;
        assert_eq!(r.status, 400, "{uri}");
        assert!(!r.headers.contains_key("x-authentik-username"), "{uri}");
    }
    let r = get(
        &h.url("/outpost.goauthentik.io/auth/nginx"),
        &[
            ("host", "app.example"),
            ("x-original-url", "https://app.example/public/../admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(h.outpost.stats().auth_requests, 0);
}

#[tokio::test]
async fn envoy_checks_are_cached_per_host_and_take_encoded_slashes_but_not_dot_segments() {
    let h = start(|_| {}).await;
    let cookie = h.session_cookie("akadmin");
    let headers = [("host", "app.example"), ("cookie", cookie.as_str())];
    let first = get(
        &h.url("/outpost.goauthentik.io/auth/envoy/dashboard?x=1"),
        &headers,
    )
    .await;
    assert_eq!(first.status, 200);
    let asked = h.outpost.stats().auth_requests;
    // Another path on the same host with the same session: answered from the cache, and a
    // GitLab-style encoded slash inside a segment is a path like any other.
    let second = get(
        &h.url("/outpost.goauthentik.io/auth/envoy/group%2Fproject/-/tree"),
        &headers,
    )
    .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-authentik-username"), Some("akadmin"));
    assert_eq!(
        h.outpost.stats().auth_requests,
        asked,
        "not answered from the cache"
    );
    let text = scrape(h.admin).await;
    let cached = [("endpoint", "envoy"), ("decision", "allow_cached")];
    assert_eq!(
        metric(&text, "portcullis_requests_total", &cached),
        Some(1.0)
    );
    for bad in ["/..", "/a/%2e%2e/admin", "/a/..%2Fadmin"] {
        let url = h.url(&format!("/outpost.goauthentik.io/auth/envoy{bad}"));
        let r = get(&url, &headers).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.header("x-authentik-username").is_none(), "{bad}");
    }
    assert_eq!(h.outpost.stats().auth_requests, asked);
}
