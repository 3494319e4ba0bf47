//! portcullis behind an emulation of Traefik's ForwardAuth middleware (`pkg/middlewares/auth/forward.go`):
//! the auth request built the way `writeHeader` builds it with `trustForwardHeader: true`, and the
//! answer applied the way `ServeHTTP` applies it with
//! `authResponseHeadersRegex: ^(?i)x[-_.]authentik[-_.]`.

mod support;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use support::*;

/// Go's `forward.HopHeaders` (vulcand/oxy), removed from the copy of the client's headers.
const HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// `^(?i)x[-_.]authentik[-_.]`, matched by hand.
fn matches_regex(name: &str) -> bool {
    let b = name.as_bytes();
    let sep = |c: u8| c == b'-' || c == b'_' || c == b'.';
    b.len() >= 12
        && b[0].eq_ignore_ascii_case(&b'x')
        && sep(b[1])
        && b[2..11].eq_ignore_ascii_case(b"authentik")
        && sep(b[11])
}

/// A request as it reaches the ForwardAuth middleware (after Traefik's entry point).
struct AppRequest {
    method: &'static str,
    /// `req.Host`
    host: &'static str,
    /// `req.URL.RequestURI()`
    request_uri: &'static str,
    /// The browser's address (`req.RemoteAddr` without the port).
    remote_ip: &'static str,
    headers: HeaderMap,
}

impl AppRequest {
    /// A browser `method https://app.example<uri>` with `client` headers, as the entry point passes
    /// it on: client-sent X-Forwarded-* replaced (the browser is not a trusted IP), then set.
    fn from_browser(
        method: &'static str,
        request_uri: &'static str,
        client: &[(&str, &str)],
    ) -> Self {
        let mut headers = HeaderMap::new();
        for (k, v) in client {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let remote_ip = "203.0.113.7";
        for name in [
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-for",
        ] {
            headers.remove(name);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("app.example"));
        headers.insert("x-forwarded-port", HeaderValue::from_static("443"));
        headers.insert("x-real-ip", HeaderValue::from_static("203.0.113.7"));
        AppRequest {
            method,
            host: "app.example",
            request_uri,
            remote_ip,
            headers,
        }
    }
}

/// What Traefik did with the request.
enum Traefik {
    /// 2xx: the request goes on to the app with these headers.
    Upstream(HeaderMap),
    /// Non-2xx: this answer went back to the browser.
    Browser(Reply),
}

/// `writeHeader(req, forwardReq, trustForwardHeader=true, authRequestHeaders=nil)`.
fn auth_request_headers(req: &AppRequest) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(n, _)| !HOP_HEADERS.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let mut set = |name: &str, value: String| {
        out.retain(|(n, _)| n != name);
        out.push((name.to_owned(), value));
    };
    let get = |name: &str| {
        req.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .filter(|v| !v.is_empty())
    };
    let prior: Vec<&str> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let xff = if prior.is_empty() {
        req.remote_ip.to_owned()
    } else {
        format!("{}, {}", prior.join(", "), req.remote_ip)
    };
    set("x-forwarded-for", xff);
    set(
        "x-forwarded-method",
        get("x-forwarded-method").unwrap_or_else(|| req.method.to_owned()),
    );
    set(
        "x-forwarded-proto",
        get("x-forwarded-proto").unwrap_or_else(|| "http".to_owned()),
    );
    if let Some(port) = get("x-forwarded-port") {
        set("x-forwarded-port", port);
    }
    set(
        "x-forwarded-host",
        get("x-forwarded-host").unwrap_or_else(|| req.host.to_owned()),
    );
    set(
        "x-forwarded-uri",
        get("x-forwarded-uri").unwrap_or_else(|| req.request_uri.to_owned()),
    );
    out
}

/// `ServeHTTP`: a bodyless GET to the auth address (its own Host), then relay or copy.
async fn traefik(h: &Harness, mut req: AppRequest) -> Traefik {
    let headers = auth_request_headers(&req);
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let auth = get(&h.url("/outpost.goauthentik.io/auth/traefik"), &pairs).await;
    if !auth.status.is_success() {
        return Traefik::Browser(auth);
    }
    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| matches_regex(n.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        req.headers.remove(name);
    }
    for name in auth.headers.keys().filter(|n| matches_regex(n.as_str())) {
        for value in auth.headers.get_all(name) {
            req.headers.append(name.clone(), value.clone());
        }
    }
    Traefik::Upstream(req.headers)
}

fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn hand_written_regex_matches_the_family_like_the_real_one() {
    for name in [
        "x-authentik-groups",
        "X_Authentik_Username",
        "x.authentik.uid",
        "X-AUTHENTIK-meta-app",
        "x-authentik-",
    ] {
        assert!(matches_regex(name), "{name}");
    }
    for name in [
        "x-authentikgroups",
        "xx-authentik-groups",
        "x-auth-groups",
        "authentik-groups",
        "x-authentik",
    ] {
        assert!(!matches_regex(name), "{name}");
    }
    // portcullis's own family check agrees wherever a name follows the prefix.
    for name in [
        "x-authentik-groups",
        "X_Authentik_Username",
        "x.authentik.uid",
        "x-authentikgroups",
        "x-auth-x",
    ] {
        assert_eq!(
            matches_regex(name),
            portcullis::auth::headers::is_authentik_family(name),
            "{name}"
        );
    }
}

#[tokio::test]
async fn client_sent_groups_are_replaced_by_the_outposts_groups_only() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let req = AppRequest::from_browser(
        "GET",
        "/dashboard",
        &[
            ("cookie", &cookie),
            ("user-agent", "Mozilla/5.0 test"),
            ("x-authentik-groups", "admins"),
            ("x_authentik_groups", "admins"),
            ("x.authentik.uid", "0"),
        ],
    );
    let Traefik::Upstream(up) = traefik(&h, req).await else {
        panic!("expected an allow")
    };
    assert_eq!(values(&up, "x-authentik-groups"), ["authentik Admins"]);
    assert_eq!(values(&up, "x-authentik-username"), ["akadmin"]);
    assert!(up.get("x_authentik_groups").is_none());
    assert!(up.get("x.authentik.uid").is_none());
    assert_eq!(values(&up, "x-authentik-uid").len(), 1);
    assert_ne!(up.get("x-authentik-uid").unwrap(), "0");
    for name in IDENTITY {
        assert_eq!(values(&up, name).len(), 1, "{name}");
    }
    // Nor did the client's spellings reach the outpost on the auth leg.
    let sent = h.outpost.requests().pop().unwrap();
    assert!(
        sent.headers.keys().all(|n| !matches_regex(n.as_str())),
        "{:?}",
        sent.headers
    );
}

#[tokio::test]
async fn anonymous_skip_path_allow_overwrites_a_client_sent_username_with_empty() {
    let h = start(trust_loopback).await;
    let req = AppRequest::from_browser(
        "GET",
        "/public/x",
        &[
            ("x-authentik-username", "admin"),
            ("X-Authentik-Groups", "admins"),
        ],
    );
    // Traefik's middleware reads X-Forwarded-Uri from the request when trusted; the entry point
    // does not set it, so the request URI is used.
    let Traefik::Upstream(up) = traefik(&h, req).await else {
        panic!("expected an anonymous allow")
    };
    assert_eq!(values(&up, "x-authentik-username"), [""]);
    assert_eq!(values(&up, "x-authentik-groups"), [""]);
    for name in IDENTITY {
        assert_eq!(values(&up, name), [""], "{name}");
    }
    let sent = h.outpost.requests().pop().unwrap();
    assert_eq!(sent.headers.get("x-forwarded-uri").unwrap(), "/public/x");
}

#[tokio::test]
async fn denial_reaches_the_browser_as_the_outposts_302() {
    let h = start(trust_loopback).await;
    let req = AppRequest::from_browser(
        "POST",
        "/dashboard?tab=2",
        &[
            ("x-authentik-username", "admin"),
            ("content-type", "text/plain"),
        ],
    );
    let Traefik::Browser(r) = traefik(&h, req).await else {
        panic!("expected a denial")
    };
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    assert!(location.contains("/application/o/authorize/"), "{location}");
    assert!(r
        .header("set-cookie")
        .unwrap()
        .starts_with(&h.outpost.cookie_name()));
    assert!(String::from_utf8_lossy(&r.body).contains("Found"));
    assert!(r.headers.get("x-authentik-username").is_none());
    let sent = h.outpost.requests().pop().unwrap();
    assert_eq!(sent.method, http::Method::GET);
    assert_eq!(sent.headers.get("x-forwarded-method").unwrap(), "POST");
    assert_eq!(
        sent.headers.get("x-forwarded-uri").unwrap(),
        "/dashboard?tab=2"
    );
    assert_eq!(sent.headers.get("x-forwarded-host").unwrap(), "app.example");
    assert_eq!(sent.headers.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(sent.headers.get("x-forwarded-for").unwrap(), "203.0.113.7");
}
