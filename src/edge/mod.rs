//! Edge mode (DESIGN.md section 5): portcullis as the TLS front, routing hosts to backends with
//! forward-auth built in.
//!
//! Every request, in this order:
//! 0. The host must be `name` or `name:digits` (`Host`; HTTP/2 `:authority`, which wins, as an
//!    HTTP/1.1 absolute-form target does; both present and different: refused), and the path
//!    must have no dot-segment or backslash, percent-encoded or not ([`path`]): else 400.
//! 1. `/outpost.goauthentik.io/*` on any host goes to the outpost (the auth tier's passthrough),
//!    before any route, so login callbacks work on every application host.
//! 2. The route is found by that host, port and case ignored; none: 404.
//! 3. The client's hop-by-hop fields and every name its `Connection` lists are removed first
//!    (the upgrade intent noted), so a listed name can never delete what the proxy sets later;
//!    then its `X-authentik-*` family (any spelling), `X-Auth-Fallback`, `Forwarded`,
//!    `X-Original-*` and every `X-Forwarded-*`, on every path (security rules 2, 3, 4).
//! 4. `auth = "none"`, or `local-or-auth` from a listed network: proxied without identity
//!    (decision `passthrough`). Otherwise the forward-auth pipeline runs as for Traefik; a 2xx
//!    copies its `X-authentik-*` (and `X-Auth-Fallback`, `Authorization` if present) onto the
//!    backend request, anything else (302 to authorize, 401 challenge, 429, 503) goes back to
//!    the browser as is. A fallback allow also drops the client's `Authorization`: it holds the
//!    emergency password, which no backend needs.
//! 5. Towards the backend `X-Forwarded-For` (the TCP peer), `-Proto` (`https`) and `-Host` are
//!    generated; `Host` and `X-Forwarded-Host` are the route's configured host, plus the
//!    client's port when it sent one, never the client's text. Bodies stream both ways under
//!    an idle deadline (`body::STREAM_IDLE_TIMEOUT`), upgraded tunnels under their own
//!    (`backend::TUNNEL_IDLE_TIMEOUT`).
//!
//! The plain HTTP listener only redirects (308) to `https://` on configured hosts (rule 7).

pub mod backend;
pub mod path;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, COOKIE, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use self::backend::Backends;
use self::routes::{ClientHost, Route, RouteTable};
use crate::app::App;
use crate::auth::headers::{
    self, X_AUTH_FALLBACK, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
use crate::auth::{self, Answer};
use crate::body::Body;
use crate::config::{EdgeConfig, RouteAuth};
use crate::error::ProxyError;
use crate::metrics::{Decision, Endpoint};
use crate::router::{self, OUTPOST_PREFIX};

const HTTPS: HeaderValue = HeaderValue::from_static("https");
const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Config-derived edge state, rebuilt with every runtime generation.
#[derive(Debug)]
pub struct Edge {
    /// Host routes.
    pub routes: RouteTable,
    /// The backend pools (kept across reloads).
    pub backends: Backends,
}

impl Edge {
    /// Builds the routes of `config`, keeping `old`'s backend pools.
    pub fn new(config: &EdgeConfig, old: Option<&Edge>) -> Edge {
        Edge {
            routes: RouteTable::new(config),
            backends: old.map(|o| o.backends.clone()).unwrap_or_default(),
        }
    }
}

/// Handles one request on the HTTPS listener.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let Some(edge) = app.runtime().edge.clone() else {
        return ProxyError::NotFound.response();
    };
    let checked = request_host(&req);
    let host = checked.as_ref().ok().and_then(Option::as_ref);
    let route = host.and_then(|h| edge.routes.find(&h.name)).cloned();
    let (endpoint, answer) = match (&checked, route) {
        (Err(err), _) => (Endpoint::Edge, router::refused(err.clone())),
        // Before auth, on every route: the outpost and the backend must see the same path.
        _ if path::is_ambiguous(req.uri().path()) => {
            (Endpoint::Edge, router::refused(ProxyError::BadPath))
        }
        // On every host, configured or not (authentik's domain-level mode sends logins to an
        // auth host that need not be a route).
        (Ok(h), route) if req.uri().path().starts_with(OUTPOST_PREFIX) => {
            let host = match (h, route.as_ref()) {
                (Some(h), Some(route)) => Some(forwarded_host(route, h.port)),
                (Some(h), None) => host_value(&h.name, h.port),
                (None, _) => None,
            };
            (Endpoint::Outpost, outpost(&app, host, req, peer).await)
        }
        (Ok(Some(h)), Some(route)) => {
            let port = h.port;
            (
                Endpoint::Edge,
                routed(&app, &edge, &route, port, req, peer).await,
            )
        }
        (Ok(_), _) => {
            log_unrouted(host.map(|h| h.name.as_str()), peer, StatusCode::NOT_FOUND);
            return ProxyError::NotFound.response();
        }
    };
    let host = host.map_or("", |h| h.name.as_str());
    router::finish(&app, endpoint, answer, started, peer, Some(host))
}

/// Handles one request on the plain HTTP listener: 308 to the same path and query on
/// `https://<route host>[:https_port]`, for configured hosts only.
pub fn redirect(
    app: &App,
    req: &Request<Incoming>,
    peer: SocketAddr,
    https_port: u16,
) -> Response<Body> {
    let rt = app.runtime();
    let host = match request_host(req) {
        Ok(host) => host,
        Err(err) => {
            log_unrouted(None, peer, err.status());
            return err.response();
        }
    };
    let name = host.as_ref().map(|h| h.name.as_str());
    let route = rt
        .edge
        .as_ref()
        .and_then(|e| name.and_then(|h| e.routes.find(h)));
    let Some(route) = route else {
        log_unrouted(name, peer, StatusCode::NOT_FOUND);
        return ProxyError::NotFound.response();
    };
    // Origin form only: `*` or an absolute-form target must not end up after the host.
    let pq = req
        .uri()
        .path_and_query()
        .map(PathAndQuery::as_str)
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    // The host is the configured one, never the client's text (security rule 7).
    let location = if https_port == 443 {
        format!("https://{}{pq}", route.host)
    } else {
        format!("https://{}:{https_port}{pq}", route.host)
    };
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    log_unrouted(name, peer, resp.status());
    resp
}

fn log_unrouted(host: Option<&str>, peer: SocketAddr, status: StatusCode) {
    tracing::info!(
        target: "access",
        endpoint = "edge",
        status = status.as_u16(),
        host = host.unwrap_or(""),
        peer = %peer.ip(),
    );
}

/// A request's host after [`ClientHost::parse`]: the name as sent (for the route lookup and
/// the log) and the port, if the client named one.
#[derive(Debug)]
struct RequestHost {
    name: String,
    port: Option<u16>,
}

/// The request's host: the target's authority (HTTP/2 `:authority`, or an HTTP/1.1
/// absolute-form target, which RFC 9112 section 3.2.2 puts before `Host`), else the one `Host`
/// field. Malformed, several `Host` fields (RFC 9112 section 3.2), or an authority and a
/// `Host` naming different hosts (RFC 9113 section 8.3.1): [`ProxyError::BadHost`].
fn request_host<B>(req: &Request<B>) -> Result<Option<RequestHost>, ProxyError> {
    let mut fields = req.headers().get_all(HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(ProxyError::BadHost);
    }
    let field = field
        .map(|v| v.to_str().ok().and_then(ClientHost::parse))
        .map(|h| h.ok_or(ProxyError::BadHost))
        .transpose()?;
    let authority = req
        .uri()
        .authority()
        .map(|a| ClientHost::parse(a.as_str()).ok_or(ProxyError::BadHost))
        .transpose()?;
    let host = match (authority, field) {
        (Some(a), Some(f)) if !a.same(&f) => return Err(ProxyError::BadHost),
        (Some(h), _) | (None, Some(h)) => h,
        (None, None) => return Ok(None),
    };
    Ok(Some(RequestHost {
        name: host.name.to_owned(),
        port: host.port,
    }))
}

/// The `Host` the backend (and the outpost) sees: the route's configured host, plus the
/// client's port when it sent one.
fn forwarded_host(route: &Route, port: Option<u16>) -> HeaderValue {
    match port {
        None => route.host_header.clone(),
        Some(_) => host_value(&route.host, port).unwrap_or_else(|| route.host_header.clone()),
    }
}

/// `name` or `name:port` as a `Host` value.
fn host_value(name: &str, port: Option<u16>) -> Option<HeaderValue> {
    match port {
        None => HeaderValue::from_str(name).ok(),
        Some(port) => HeaderValue::from_str(&format!("{name}:{port}")).ok(),
    }
}

/// `/outpost.goauthentik.io/*`: the auth tier's passthrough, ambiguous paths refused. The outpost
/// sees `host` (a route's configured host, or the checked client host) and `X-Forwarded-*` this
/// proxy generates: at the edge no peer's forwarding claims are believed (the outpost builds its
/// redirects from them).
async fn outpost(
    app: &App,
    host: Option<HeaderValue>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Answer {
    if router::route(req.uri().path()) == router::Route::BadPath {
        return router::refused(ProxyError::BadPath);
    }
    if let Some(host) = host {
        req.headers_mut().insert(http::header::HOST, host);
    }
    // An HTTP/2 request names its host in the URI too: keep only the path, so `Host` rules.
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(pq);
    }
    router::pass(app, req, peer, true, false).await
}

/// A routed request: strip, decide, proxy.
async fn routed(
    app: &App,
    edge: &Edge,
    route: &Route,
    port: Option<u16>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Answer {
    // The upgrade intent is read before the client's hop-by-hop fields go; the backend request
    // asks for it again itself.
    let upgrade = upgrade_protocol(req.headers()).map(|p| (p, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    // The client's hop-by-hop fields, the names its `Connection` lists included, end here, before
    // anything is decided or set: listing `X-Auth-Fallback` or an identity header there must not
    // delete what the proxy adds below (GHSA-62c8-mh53-4cqv; security rule 4).
    headers::strip_hop_by_hop(&mut parts.headers);
    // From here on the host is the configured one: the outpost builds its redirects from it
    // and the backend its links (security rule 7).
    let host = forwarded_host(route, port);
    parts.headers.insert(HOST, host.clone());
    // Edge mode is the edge: the client is the TCP peer, for `local_networks` and for the
    // emergency realm's limiter alike. A forwarded address, even from a trusted peer, would let
    // anyone in the pod network claim to be local and skip the login, or pin the limit on
    // someone else's address.
    let client = Some(peer.ip());
    let local = route.auth == RouteAuth::None || route.is_local(peer.ip());
    // Edge mode is the edge: what the outpost judges (host, scheme, path, method) comes from the
    // request itself, never from a client's X-Forwarded-* (DESIGN.md section 5), even a trusted
    // peer's.
    strip_client_headers(&mut parts.headers);
    let (decision, outpost_seconds) = if local {
        (Decision::Passthrough, None)
    } else {
        let who = auth::Peer {
            ip: peer.ip(),
            tls: true,
            client,
        };
        let answer = auth::check(app, Endpoint::Edge, &parts, who).await;
        if !answer.response.status().is_success() {
            return answer;
        }
        apply_identity(
            &mut parts.headers,
            answer.response.headers(),
            answer.decision,
        );
        (answer.decision, answer.outpost_seconds)
    };
    let (protocol, on_upgrade) = upgrade.unzip();
    let body = Body::watched(body, edge.backends.stream_idle_timeout());
    let backend_req = backend_request(route, host, parts, body, peer, protocol);
    let response = edge
        .backends
        .send(backend_req, on_upgrade)
        .await
        .unwrap_or_else(|err| err.response());
    Answer {
        response,
        decision,
        outpost_seconds,
    }
}

/// The `Upgrade` protocol of an HTTP/1.1 WebSocket upgrade (`Connection: upgrade` + `Upgrade:
/// websocket`). Any other protocol (`h2c` above all) is not tunnelled: a tunnel to the backend
/// would carry requests this proxy never sees, so never strips (the h2c smuggling pattern).
fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers::connection_tokens(h.get_all(CONNECTION).iter().map(HeaderValue::as_bytes))
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    let protocol = h.get(http::header::UPGRADE)?;
    (asks && protocol.as_bytes().eq_ignore_ascii_case(b"websocket")).then(|| protocol.clone())
}

/// Removes what only the proxy may say: identity, fallback marker, forwarding claims (`X-Real-IP`
/// too: apps believe it for the client's address).
pub fn strip_client_headers(h: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = h
        .keys()
        .filter(|n| {
            let s = n.as_str();
            headers::is_authentik_family(s)
                || headers::is_original_family(s)
                || headers::is_forwarded_family(s)
                || s == "forwarded"
                || headers::is_spelling_of(s, "x-real-ip")
                || headers::is_fallback_marker(s)
        })
        .cloned()
        .collect();
    for name in doomed {
        h.remove(name);
    }
}

/// Copies the pipeline's identity onto the backend request.
fn apply_identity(h: &mut HeaderMap, answer: &HeaderMap, decision: Decision) {
    if decision == Decision::FallbackAllow {
        h.remove(AUTHORIZATION);
    }
    for (name, value) in answer {
        if headers::is_authentik_family(name.as_str()) || name == X_AUTH_FALLBACK {
            h.append(name.clone(), value.clone());
        }
    }
    if let Some(v) = answer.get(AUTHORIZATION) {
        h.insert(AUTHORIZATION, v.clone());
    }
}

/// The request towards the backend: absolute URI, the fixed hop-by-hop fields removed (never a
/// name the client listed in `Connection`; the upgrade kept when asked), `Host` and
/// `X-Forwarded-Host` set to `host`, `X-Forwarded-*` generated, HTTP/1.1.
fn backend_request(
    route: &Route,
    host: HeaderValue,
    mut parts: http::request::Parts,
    body: Body,
    peer: SocketAddr,
    upgrade: Option<HeaderValue>,
) -> Request<Body> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(route.scheme.clone());
    uri.authority = Some(route.authority.clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or(PathAndQuery::from_static("/")),
    );
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    let h = &mut parts.headers;
    // Only the fixed list: the client's `Connection` was applied (and removed) in `routed`, and
    // the names it listed may since have been set by the proxy itself.
    headers::strip_fixed_hop_by_hop(h);
    join_cookies(h);
    if let Some(protocol) = upgrade {
        h.insert(CONNECTION, UPGRADE_TOKEN);
        h.insert(http::header::UPGRADE, protocol);
    }
    h.insert(HOST, host.clone());
    h.insert(X_FORWARDED_HOST, host);
    let ip = peer.ip().to_canonical().to_string();
    if let Ok(v) = HeaderValue::from_str(&ip) {
        h.insert(X_FORWARDED_FOR, v.clone());
        h.insert(X_REAL_IP, v);
    }
    h.insert(X_FORWARDED_PROTO, HTTPS);
    parts.version = http::Version::HTTP_11;
    Request::from_parts(parts, body)
}

/// HTTP/2 clients may split `Cookie` into several fields; an HTTP/1.1 backend needs one,
/// joined with "; " (RFC 9113 section 8.2.3).
fn join_cookies(h: &mut HeaderMap) {
    if h.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = h
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let joined = joined.join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_identity_and_forwarding_claims_are_stripped() {
        let mut h = HeaderMap::new();
        for name in [
            "x-authentik-groups",
            "x_authentik_username",
            "X.Authentik.Uid",
            "x-auth-fallback",
            "forwarded",
            "x-original-url",
            "x_original_uri",
            "x-forwarded-for",
            "x-forwarded-host",
            "x_forwarded_proto",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert(COOKIE, HeaderValue::from_static("a=b"));
        strip_client_headers(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[COOKIE], "a=b");
    }

    #[test]
    fn fallback_allow_drops_the_emergency_credential() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic secret"));
        let mut answer = HeaderMap::new();
        answer.insert("x-authentik-username", HeaderValue::from_static("admin"));
        answer.insert(X_AUTH_FALLBACK, HeaderValue::from_static("true"));
        answer.insert("content-length", HeaderValue::from_static("0"));
        apply_identity(&mut h, &answer, Decision::FallbackAllow);
        assert!(h.get(AUTHORIZATION).is_none());
        assert_eq!(h["x-authentik-username"], "admin");
        assert_eq!(h[X_AUTH_FALLBACK], "true");
        assert!(h.get("content-length").is_none());
    }

    #[test]
    fn split_cookies_are_joined_for_http1() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2");
    }

    #[test]
    fn upgrade_needs_connection_upgrade_and_a_protocol() {
        let mut h = HeaderMap::new();
        h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_protocol(&h), None);
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
    }
}
