//! One forward-auth exchange with the outpost: the request exactly as Traefik would send it, and
//! the answer sorted into an [`Outcome`].
//!
//! Invariants: the request is a `GET` with no body whatever the caller sent (security rule 5);
//! only the headers the outpost reads travel; the answer's body is read to its end within
//! `outpost.timeout` and a bound, or the exchange is abandoned and its connection dropped, so a
//! half-read response never goes back into the pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, COOKIE, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode};

use super::headers::{
    self, IDENTITY, X_AUTHENTIK_JWT, X_AUTHENTIK_USERNAME, X_FORWARDED_FOR, X_FORWARDED_HOST,
    X_FORWARDED_METHOD, X_FORWARDED_PROTO, X_FORWARDED_URI, X_ORIGINAL_URL,
};
pub use super::identity::Identity;
use super::request::Caller;
use crate::body::Body;
use crate::metrics::Endpoint;
use crate::upstream::client::OutpostClient;
use crate::upstream::pool::PoolError;

/// Largest outpost body read on the auth leg (a 302 page or an error JSON is a few hundred bytes).
pub const AUTH_BODY_LIMIT: usize = 256 * 1024;

/// An outpost answer relayed as is (deny, redirect, anonymous allow).
#[derive(Clone)]
pub struct Relayed {
    /// Status code.
    pub status: StatusCode,
    /// Headers, hop-by-hop and framing removed.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values include Set-Cookie: names only.
        f.debug_struct("Relayed")
            .field("status", &self.status)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// An authenticated allow.
#[derive(Clone)]
pub struct Allowed {
    /// The cacheable part.
    pub identity: Arc<Identity>,
    /// Headers for this answer only (`Set-Cookie` after header auth, `X-Powered-By`).
    pub extra: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allowed")
            .field("identity", &self.identity)
            .field(
                "extra",
                &self.extra.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why the outpost is judged unavailable for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused: trips the breaker at once.
    Refused,
    /// Other connect error.
    Connect,
    /// Connection broke mid-exchange.
    Exchange,
    /// `outpost.timeout` passed.
    Timeout,
    /// 502, 503 or 504 from the outpost.
    Status(u16),
    /// The breaker is open: the outpost was not asked.
    CircuitOpen,
    /// The answer broke the protocol (oversized body): fail closed, never fall back.
    Protocol,
}

impl Failure {
    /// Whether this failure may be answered by the emergency realm (DESIGN.md section 1).
    pub fn falls_back(self) -> bool {
        !matches!(self, Failure::Protocol)
    }

    /// A short reason for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "connection refused",
            Failure::Connect => "connect error",
            Failure::Exchange => "connection broken",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "bad gateway status",
            Failure::CircuitOpen => "circuit open",
            Failure::Protocol => "protocol violation",
        }
    }
}

/// What one forward-auth exchange decided.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 2xx with a non-empty `X-authentik-username`.
    Allow(Arc<Allowed>),
    /// 2xx without identity (a skip path): path-specific, never cached.
    Anonymous(Arc<Relayed>),
    /// Any other answer (3xx, 4xx, 500): relayed as is.
    Deny(Arc<Relayed>),
    /// No usable answer.
    Unavailable(Failure),
}

/// The fixed outpost path for an endpoint; Envoy keeps the caller's own path (its original path
/// rides behind the prefix).
pub fn auth_path(endpoint: Endpoint, caller: &Caller<'_>) -> PathAndQuery {
    match endpoint {
        Endpoint::Nginx => PathAndQuery::from_static("/outpost.goauthentik.io/auth/nginx"),
        Endpoint::Caddy => PathAndQuery::from_static("/outpost.goauthentik.io/auth/caddy"),
        Endpoint::Envoy => {
            caller
                .parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or(PathAndQuery::from_static(
                    "/outpost.goauthentik.io/auth/envoy",
                ))
        }
        _ => PathAndQuery::from_static("/outpost.goauthentik.io/auth/traefik"),
    }
}

/// Builds the request the outpost sees: `GET`, no body, only what the outpost reads.
pub fn build_request(
    client: &OutpostClient,
    endpoint: Endpoint,
    caller: &Caller<'_>,
) -> Request<Body> {
    let mut req = Request::new(Body::Empty);
    *req.method_mut() = Method::GET;
    *req.uri_mut() = client.uri(auth_path(endpoint, caller));
    let h = req.headers_mut();
    h.reserve(10);
    if let Some(host) = caller.host() {
        h.insert(HOST, host.clone());
        h.insert(X_FORWARDED_HOST, host);
    }
    h.insert(X_FORWARDED_PROTO, caller.proto());
    h.insert(X_FORWARDED_URI, caller.uri());
    h.insert(X_FORWARDED_METHOD, caller.method());
    h.insert(X_FORWARDED_FOR, caller.forwarded_for());
    if endpoint == Endpoint::Nginx {
        if let Some(url) = caller.original_url() {
            h.insert(X_ORIGINAL_URL, url.clone());
        }
    }
    if let Some(cookie) = joined_cookies(caller) {
        h.insert(COOKIE, cookie);
    }
    if let Some(auth) = caller.authorization() {
        h.insert(AUTHORIZATION, auth.clone());
    }
    if let Some(ua) = caller.user_agent() {
        h.insert(USER_AGENT, ua.clone());
    }
    req
}

/// One `Cookie` header (RFC 6265 section 5.4: a single header on HTTP/1.1), joining the pieces
/// HTTP/2 clients split.
fn joined_cookies(caller: &Caller<'_>) -> Option<HeaderValue> {
    let mut all = caller.cookies().iter();
    let first = all.next()?;
    let Some(second) = all.next() else {
        return Some(first.clone());
    };
    let mut buf = Vec::with_capacity(first.len() + second.len() + 64);
    for v in std::iter::once(first)
        .chain(std::iter::once(second))
        .chain(all)
    {
        if !buf.is_empty() {
            buf.extend_from_slice(b"; ");
        }
        buf.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&buf).ok()
}

/// Sends `req` and sorts the answer, all within `timeout`.
pub async fn exchange(client: &OutpostClient, req: Request<Body>, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, send_and_read(client, req)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Unavailable(Failure::Timeout),
    }
}

async fn send_and_read(client: &OutpostClient, req: Request<Body>) -> Outcome {
    // Read to the end (or give up and drop the connection) before deciding anything, so the
    // pooled connection is clean (security rule 5).
    match client.auth_pool().exchange(req, AUTH_BODY_LIMIT).await {
        Ok((parts, body)) => classify(parts.status, parts.headers, body),
        Err(PoolError::Refused(_)) => Outcome::Unavailable(Failure::Refused),
        Err(PoolError::Connect(_)) => Outcome::Unavailable(Failure::Connect),
        Err(PoolError::TooLarge) => Outcome::Unavailable(Failure::Protocol),
        Err(PoolError::Exchange(_)) => Outcome::Unavailable(Failure::Exchange),
    }
}

/// Sorts an outpost answer (DESIGN.md section 1).
pub fn classify(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Outcome {
    headers::strip_hop_by_hop(&mut headers);
    headers.remove(http::header::CONTENT_LENGTH);
    match status.as_u16() {
        502..=504 => Outcome::Unavailable(Failure::Status(status.as_u16())),
        200..=299 => {
            let named = headers
                .get(&X_AUTHENTIK_USERNAME)
                .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
            if named {
                Outcome::Allow(Arc::new(allowed(headers)))
            } else {
                for name in IDENTITY {
                    headers.insert(name, headers::EMPTY);
                }
                drop_odd_identity_spellings(&mut headers);
                Outcome::Anonymous(Arc::new(Relayed {
                    status,
                    headers,
                    body,
                }))
            }
        }
        _ => Outcome::Deny(Arc::new(Relayed {
            status,
            headers,
            body,
        })),
    }
}

/// Splits a 2xx answer into the cacheable identity and the per-answer extras.
fn allowed(mut headers: HeaderMap) -> Allowed {
    let mut identity = Vec::with_capacity(IDENTITY.len() + 2);
    for name in IDENTITY {
        if let Some(value) = headers.remove(&name) {
            identity.push((name, value));
        }
    }
    let jwt_exp = headers_jwt_exp(&identity);
    let mut extra = Vec::new();
    let mut last: Option<HeaderName> = None;
    for (name, value) in headers {
        let name = match name {
            Some(n) => {
                last = Some(n.clone());
                n
            }
            None => match &last {
                Some(n) => n.clone(),
                None => continue,
            },
        };
        match sort_extra(&name) {
            ExtraKind::Identity => identity.push((name, value)),
            ExtraKind::ThisAnswer => extra.push((name, value)),
            ExtraKind::Drop => {}
        }
    }
    Allowed {
        identity: Arc::new(Identity::from_pairs(identity, jwt_exp)),
        extra,
    }
}

fn headers_jwt_exp(pairs: &[(HeaderName, HeaderValue)]) -> Option<u64> {
    pairs
        .iter()
        .find(|(n, _)| *n == X_AUTHENTIK_JWT)
        .and_then(|(_, v)| jwt_exp(v.as_bytes()))
}

enum ExtraKind {
    Identity,
    ThisAnswer,
    Drop,
}

fn sort_extra(name: &HeaderName) -> ExtraKind {
    if is_odd_identity_spelling(name) {
        return ExtraKind::Drop;
    }
    match name.as_str() {
        "set-cookie" | "x-powered-by" | "vary" => ExtraKind::ThisAnswer,
        "user-agent"
        | "location"
        | "date"
        | "server"
        | "content-type"
        | "content-encoding"
        | "x-content-type-options" => ExtraKind::Drop,
        _ => ExtraKind::Identity,
    }
}

/// Reads `exp` from a JWT's payload without verifying it (the outpost already did).
pub fn jwt_exp(token: &[u8]) -> Option<u64> {
    use base64::Engine;
    let mut parts = token.split(|&b| b == b'.');
    let _header = parts.next()?;
    let payload = parts.next()?;
    parts.next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<f64>,
    }
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    claims
        .exp
        .filter(|e| e.is_finite() && *e >= 0.0)
        .map(|e| e as u64)
}

/// An `X-authentik-` family name in a spelling other than the dashed one (`_`, `.`): the outpost
/// drops these itself since 2025.10, and so do we on every relayed answer.
fn is_odd_identity_spelling(name: &HeaderName) -> bool {
    let s = name.as_str();
    headers::is_authentik_family(s) && !s.starts_with("x-authentik-")
}

/// Removes every odd spelling of the identity family from a relayed header map.
fn drop_odd_identity_spellings(headers: &mut HeaderMap) {
    let odd: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_odd_identity_spelling(n))
        .cloned()
        .collect();
    for n in odd {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bad_gateway_statuses_are_unavailable_but_500_is_an_answer() {
        for code in [502, 503, 504] {
            let o = classify(
                StatusCode::from_u16(code).unwrap(),
                HeaderMap::new(),
                Bytes::new(),
            );
            assert!(matches!(o, Outcome::Unavailable(Failure::Status(c)) if c == code));
        }
        for code in [302, 400, 401, 403, 404, 500] {
            let o = classify(
                StatusCode::from_u16(code).unwrap(),
                HeaderMap::new(),
                Bytes::new(),
            );
            assert!(matches!(o, Outcome::Deny(_)), "{code}");
        }
    }

    #[test]
    fn allow_needs_a_username_and_fills_all_twelve() {
        let o = classify(
            StatusCode::OK,
            map(&[
                ("x-authentik-username", "alice"),
                ("set-cookie", "a=b"),
                ("x-custom", "1"),
            ]),
            Bytes::new(),
        );
        let Outcome::Allow(a) = o else {
            panic!("not an allow")
        };
        let names: Vec<String> = a
            .identity
            .headers()
            .map(|(n, _)| n.as_str().to_owned())
            .collect();
        for name in IDENTITY {
            assert!(names.iter().any(|n| n == name.as_str()), "{name}");
        }
        assert!(names.iter().any(|n| n == "x-custom"));
        assert!(!names.iter().any(|n| n == "set-cookie"));
        assert_eq!(a.extra.len(), 1);
        let anon = classify(
            StatusCode::OK,
            map(&[("x-authentik-username", "")]),
            Bytes::new(),
        );
        assert!(matches!(anon, Outcome::Anonymous(_)));
    }

    #[test]
    fn jwt_exp_is_read_without_verification() {
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"exp":1900000000,"sub":"x"}"#);
        let token = format!("e30.{payload}.sig");
        assert_eq!(jwt_exp(token.as_bytes()), Some(1_900_000_000));
        assert_eq!(jwt_exp(b"not-a-jwt"), None);
        assert_eq!(jwt_exp(b"a.!!!.c"), None);
    }
}
