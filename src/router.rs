//! Path to handler on the main listener (DESIGN.md section 2), the access log and the request
//! metrics.
//!
//! Priority: the four forward-auth endpoints, then every other `/outpost.goauthentik.io/*` path
//! (passthrough), then `/healthz`, then 404. Paths under the prefix with dot-segments or encoded
//! slashes are refused before matching, so routing and the outpost agree on one canonical path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::auth::{self, Answer};
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::{Decision, Endpoint};
use crate::upstream::passthrough;

/// The outpost's path prefix.
pub const OUTPOST_PREFIX: &str = "/outpost.goauthentik.io/";

/// Where a path goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A forward-auth check.
    Check(Endpoint),
    /// Passed to the outpost.
    Passthrough,
    /// `/healthz`.
    Health,
    /// A refused path under the prefix.
    BadPath,
    /// Nothing.
    NotFound,
}

/// Routes a path.
pub fn route(path: &str) -> Route {
    let Some(rest) = path.strip_prefix(OUTPOST_PREFIX) else {
        return if path == "/healthz" {
            Route::Health
        } else {
            Route::NotFound
        };
    };
    // Envoy's suffix is the protected request's own path: the check rejects its dot-segments
    // (as for any forwarded URL) but takes encoded slashes and empty segments as they come.
    if rest.starts_with("auth/envoy/") {
        return Route::Check(Endpoint::Envoy);
    }
    if is_ambiguous(rest) {
        return Route::BadPath;
    }
    match rest {
        "auth/traefik" => Route::Check(Endpoint::Traefik),
        "auth/caddy" => Route::Check(Endpoint::Caddy),
        "auth/nginx" => Route::Check(Endpoint::Nginx),
        "auth/envoy" => Route::Check(Endpoint::Envoy),
        _ => Route::Passthrough,
    }
}

/// The metrics endpoint of a main-listener path: a check's, or `outpost` for anything else
/// under the prefix; `None` for `/healthz` and unknown paths (not counted).
pub fn endpoint(path: &str) -> Option<Endpoint> {
    endpoint_of(route(path))
}

fn endpoint_of(route: Route) -> Option<Endpoint> {
    match route {
        Route::Check(endpoint) => Some(endpoint),
        Route::Passthrough | Route::BadPath => Some(Endpoint::Outpost),
        Route::Health | Route::NotFound => None,
    }
}

/// Dot-segments (RFC 3986 section 5.2.4), encoded dots or slashes, backslashes or empty
/// segments: anything a server further on might normalise differently.
fn is_ambiguous(rest: &str) -> bool {
    let path = rest.split('?').next().unwrap_or(rest).as_bytes();
    // Escapes of `.`, `/` and `\` (any case): a later hop could decode them into structure.
    let escaped = path.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                [w[1], w[2].to_ascii_lowercase()],
                [b'2', b'e'] | [b'2', b'f'] | [b'5', b'c']
            )
    });
    escaped
        || path
            .split(|&b| b == b'/')
            .any(|seg| seg == b"." || seg == b"..")
        || path.contains(&b'\\')
        || path.windows(2).any(|w| w == b"//")
        || path.first() == Some(&b'/')
}

/// Handles one request on the main listener.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
) -> Response<Body> {
    let started = Instant::now();
    let route = route(req.uri().path());
    // Two Host lines name two hosts: refused, as RFC 9112 section 3.2 requires.
    if req
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        let answer = refused(ProxyError::BadHost);
        return match endpoint_of(route) {
            Some(endpoint) => finish(&app, endpoint, answer, started, peer, None),
            None => answer.response,
        };
    }
    let (endpoint, answer) = match route {
        Route::Check(endpoint) => {
            let (parts, _body) = req.into_parts();
            (
                endpoint,
                auth::check(
                    &app,
                    endpoint,
                    &parts,
                    auth::Peer {
                        ip: peer.ip(),
                        tls,
                        client: None,
                    },
                )
                .await,
            )
        }
        Route::Passthrough => (Endpoint::Outpost, pass(&app, req, peer, tls, true).await),
        Route::Health => return health(),
        Route::BadPath => (Endpoint::Outpost, refused(ProxyError::BadPath)),
        Route::NotFound => return ProxyError::NotFound.response(),
    };
    finish(&app, endpoint, answer, started, peer, None)
}

/// The tail of every answered request (main listener and edge): counts it in the metrics and
/// writes its access-log line; `host` (edge mode only) is logged when given.
pub(crate) fn finish(
    app: &App,
    endpoint: Endpoint,
    answer: Answer,
    started: Instant,
    peer: SocketAddr,
    host: Option<&str>,
) -> Response<Body> {
    let seconds = started.elapsed().as_secs_f64();
    app.metrics.request(endpoint, answer.decision, seconds);
    tracing::info!(
        target: "access",
        endpoint = endpoint.as_str(),
        decision = answer.decision.as_str(),
        status = answer.response.status().as_u16(),
        host,
        duration_ms = seconds * 1000.0,
        outpost_ms = answer.outpost_seconds.map(|s| s * 1000.0),
        peer = %peer.ip(),
    );
    answer.response
}

/// Passes one request to the outpost (edge mode uses it for `/outpost.goauthentik.io/*` on
/// every host).
///
/// `trust_forwarded`: whether a trusted peer's `X-Forwarded-*` are believed (the auth tier) or
/// all are generated here (the edge).
pub(crate) async fn pass(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    trust_forwarded: bool,
) -> Answer {
    let rt = app.runtime();
    let (parts, body) = req.into_parts();
    // `sign_out`, or any outpost path carrying the logout signature (the outpost signs out on
    // either): purge first, so no cached allow outlives the session, and again when this returns
    // (the outpost has answered) or is abandoned: a check answered in between is removed.
    let url = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
    let _sign_out = auth::request::is_sign_out(url.as_bytes()).then(|| {
        let caller =
            auth::request::Caller::new(&parts, peer.ip(), &rt.config.server.trusted_proxies, tls);
        auth::cache::SignOut::begin(&rt.cache, auth::cache::Credentials::of(&caller))
    });
    let started = Instant::now();
    let trusted: &[ipnet::IpNet] = if trust_forwarded {
        &rt.config.server.trusted_proxies
    } else {
        &[]
    };
    let result = passthrough::forward(&rt, parts, body, peer.ip(), tls, trusted).await;
    let outpost_seconds = Some(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => Answer {
            response,
            decision: Decision::Passthrough,
            outpost_seconds,
        },
        // `forward` logged it, with its cause.
        Err(err) => Answer {
            response: err.response(),
            decision: Decision::Error,
            outpost_seconds,
        },
    }
}

/// The answer for a request the proxy refuses itself (counted as `decision="error"`).
pub(crate) fn refused(err: ProxyError) -> Answer {
    tracing::info!(reason = %err, status = err.status().as_u16(), "request refused");
    Answer {
        response: err.response(),
        decision: Decision::Error,
        outpost_seconds: None,
    }
}

/// `/healthz` on the main port: 200 "ok", as the nginx tier answered.
pub fn health() -> Response<Body> {
    let mut resp = Response::new(Body::full("ok"));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_in_priority_order() {
        assert_eq!(
            route("/outpost.goauthentik.io/auth/traefik"),
            Route::Check(Endpoint::Traefik)
        );
        assert_eq!(
            route("/outpost.goauthentik.io/auth/caddy"),
            Route::Check(Endpoint::Caddy)
        );
        assert_eq!(
            route("/outpost.goauthentik.io/auth/nginx"),
            Route::Check(Endpoint::Nginx)
        );
        assert_eq!(
            route("/outpost.goauthentik.io/auth/envoy"),
            Route::Check(Endpoint::Envoy)
        );
        assert_eq!(
            route("/outpost.goauthentik.io/auth/envoy/app/x"),
            Route::Check(Endpoint::Envoy)
        );
        assert_eq!(
            route("/outpost.goauthentik.io/auth/envoyx"),
            Route::Passthrough
        );
        // Envoy's suffix is the protected path: the check judges it, not the router.
        assert_eq!(
            route("/outpost.goauthentik.io/auth/envoy/group%2Fproject//-/tree"),
            Route::Check(Endpoint::Envoy)
        );
        assert_eq!(
            route("/outpost.goauthentik.io/auth/envoy%2F../admin"),
            Route::BadPath
        );
        assert_eq!(route("/outpost.goauthentik.io/start"), Route::Passthrough);
        assert_eq!(
            route("/outpost.goauthentik.io/callback"),
            Route::Passthrough
        );
        assert_eq!(route("/healthz"), Route::Health);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("/outpost.goauthentik.io"), Route::NotFound);
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/outpost.goauthentik.io/../admin",
            "/outpost.goauthentik.io/auth/%2e%2e/x",
            "/outpost.goauthentik.io/auth%2Ftraefik",
            "/outpost.goauthentik.io//auth/traefik",
            "/outpost.goauthentik.io/auth\\traefik",
        ] {
            assert_eq!(route(p), Route::BadPath, "{p}");
        }
    }
}
