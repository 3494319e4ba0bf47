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
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http::StatusCode;

use super::headers::{
    self, IDENTITY, JWT_SLOT, USERNAME_SLOT, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_METHOD,
    X_FORWARDED_PROTO, X_FORWARDED_URI, X_ORIGINAL_URL,
};
pub use super::identity::Identity;
use super::request::Caller;
use crate::metrics::Endpoint;
use crate::upstream::client::OutpostClient;
use crate::upstream::pool::PoolError;
use crate::upstream::wire::Answer;

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

/// Builds the request head the outpost sees: `GET`, no body, only what the outpost reads. Every
/// value comes from a `HeaderValue` (no CR, LF or NUL can be in it), joined by fixed bytes.
pub fn build_request(client: &OutpostClient, endpoint: Endpoint, caller: &Caller<'_>) -> Vec<u8> {
    let path = auth_path(endpoint, caller);
    let cookies = caller.cookies();
    let cookie_bytes: usize = cookies.iter().map(|v| v.len() + 2).sum();
    let mut head = Vec::with_capacity(512 + path.as_str().len() + cookie_bytes);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(path.as_str().as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // `check` refused a mismatched nginx host before asking.
    let host = caller.host_for(endpoint == Endpoint::Nginx).ok().flatten();
    let authority = client.authority().as_str().as_bytes();
    field(
        &mut head,
        &HOST,
        host.as_ref().map_or(authority, |h| h.as_bytes()),
    );
    if let Some(host) = &host {
        field(&mut head, &X_FORWARDED_HOST, host.as_bytes());
    }
    field(&mut head, &X_FORWARDED_PROTO, caller.proto().as_bytes());
    field(&mut head, &X_FORWARDED_URI, caller.uri().as_bytes());
    field(&mut head, &X_FORWARDED_METHOD, caller.method().as_bytes());
    field(
        &mut head,
        &X_FORWARDED_FOR,
        caller.forwarded_for().as_bytes(),
    );
    if endpoint == Endpoint::Nginx {
        if let Some(url) = caller.original_url() {
            field(&mut head, &X_ORIGINAL_URL, url.as_bytes());
        }
    }
    // One Cookie header (RFC 6265 section 5.4: a single header on HTTP/1.1), joining the pieces
    // HTTP/2 clients split.
    let mut pieces = cookies.iter().filter(|v| !v.is_empty());
    if let Some(first) = pieces.next() {
        head.extend_from_slice(b"cookie: ");
        head.extend_from_slice(first.as_bytes());
        for piece in pieces {
            head.extend_from_slice(b"; ");
            head.extend_from_slice(piece.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
    }
    if let Some(auth) = caller.authorization() {
        field(&mut head, &AUTHORIZATION, auth.as_bytes());
    }
    if let Some(ua) = caller.user_agent() {
        field(&mut head, &USER_AGENT, ua.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn field(head: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    head.extend_from_slice(name.as_str().as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Sends `head` and sorts the answer, all within `timeout`. The answer is read to its end (or
/// the connection dropped) before anything is decided, so the pooled connection is clean
/// (security rule 5).
pub async fn exchange(client: &OutpostClient, head: &[u8], timeout: Duration) -> Outcome {
    let answer =
        tokio::time::timeout(timeout, client.auth_pool().exchange(head, AUTH_BODY_LIMIT)).await;
    match answer {
        Ok(Ok(answer)) => classify(&answer),
        Ok(Err(PoolError::Refused(_))) => Outcome::Unavailable(Failure::Refused),
        Ok(Err(PoolError::Connect(io))) => {
            tracing::warn!(error = %io, "cannot connect to the outpost");
            Outcome::Unavailable(Failure::Connect)
        }
        Ok(Err(PoolError::Exchange(io))) => {
            tracing::warn!(error = %io, "outpost connection broke during the exchange");
            Outcome::Unavailable(Failure::Exchange)
        }
        Ok(Err(PoolError::Protocol(err))) => {
            tracing::warn!(error = %err, "outpost answer refused");
            Outcome::Unavailable(Failure::Protocol)
        }
        Err(_) => Outcome::Unavailable(Failure::Timeout),
    }
}

/// Sorts an outpost answer (DESIGN.md section 1). Hop-by-hop fields (and those `Connection`
/// lists) and `Content-Length` never travel on.
pub fn classify(answer: &Answer) -> Outcome {
    let status = answer.status;
    if (502..=504).contains(&status) {
        return Outcome::Unavailable(Failure::Status(status));
    }
    let Ok(code) = StatusCode::from_u16(status) else {
        return Outcome::Unavailable(Failure::Protocol);
    };
    let fields = end_to_end(answer);
    if !(200..=299).contains(&status) {
        return Outcome::Deny(Arc::new(relayed(code, &fields, answer)));
    }
    let named = fields
        .iter()
        .find(|f| f.slot == Some(USERNAME_SLOT))
        .is_some_and(|f| !f.value.iter().all(u8::is_ascii_whitespace));
    if named {
        return Outcome::Allow(Arc::new(allowed(&fields)));
    }
    let mut anonymous = relayed(code, &fields, answer);
    for name in &IDENTITY {
        anonymous.headers.insert(name, headers::EMPTY);
    }
    drop_odd_identity_spellings(&mut anonymous.headers);
    Outcome::Anonymous(Arc::new(anonymous))
}

/// One end-to-end answer field: its name, its place in [`IDENTITY`] if it is one of the twelve,
/// its raw value.
struct Field<'a> {
    name: HeaderName,
    slot: Option<usize>,
    value: &'a [u8],
}

/// The answer's fields without hop-by-hop ones, those `Connection` lists, `Content-Length`, and
/// any spelling of `X-Auth-Fallback`.
fn end_to_end(answer: &Answer) -> Vec<Field<'_>> {
    let listed = headers::connection_listed(answer.values("connection"));
    let mut fields = Vec::with_capacity(answer.len());
    fields.extend(answer.headers().filter_map(|(raw, value)| {
        // The twelve are matched without building a name (a static one is cloned).
        let slot = identity_slot(raw);
        let name = match slot {
            Some(i) => IDENTITY[i].clone(),
            None => HeaderName::from_bytes(raw).ok()?,
        };
        // The fallback marker is portcullis's alone (security rule 4): never relayed or cached
        // from an answer.
        let hop = headers::is_hop_by_hop(&name)
            || name == http::header::CONTENT_LENGTH
            || listed.contains(&name)
            || (slot.is_none() && headers::is_fallback_marker(name.as_str()));
        (!hop).then_some(Field { name, slot, value })
    }));
    fields
}

/// The place in [`IDENTITY`] of a raw field name, in any case.
fn identity_slot(raw: &[u8]) -> Option<usize> {
    const PREFIX: &[u8] = b"x-authentik-";
    let rest = raw
        .get(PREFIX.len()..)
        .filter(|_| raw[..PREFIX.len()].eq_ignore_ascii_case(PREFIX))?;
    IDENTITY
        .iter()
        .position(|n| rest.eq_ignore_ascii_case(&n.as_str().as_bytes()[PREFIX.len()..]))
}

fn relayed(status: StatusCode, fields: &[Field<'_>], answer: &Answer) -> Relayed {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let Ok(value) = HeaderValue::from_bytes(f.value) {
            headers.append(f.name.clone(), value);
        }
    }
    Relayed {
        status,
        headers,
        body: answer.body.clone(),
    }
}

/// Splits a 2xx answer into the cacheable identity and the per-answer extras. Only the first
/// value of each of the twelve counts.
fn allowed(fields: &[Field<'_>]) -> Allowed {
    let mut fixed: [Option<&[u8]>; 12] = [None; 12];
    let mut others = Vec::new();
    let mut extra = Vec::new();
    for f in fields {
        if let Some(i) = f.slot {
            fixed[i].get_or_insert(f.value);
            continue;
        }
        match sort_extra(&f.name) {
            ExtraKind::Identity => others.push((f.name.clone(), f.value)),
            ExtraKind::ThisAnswer => {
                if let Ok(value) = HeaderValue::from_bytes(f.value) {
                    extra.push((f.name.clone(), value));
                }
            }
            ExtraKind::Drop => {}
        }
    }
    let jwt_exp = fixed[JWT_SLOT].and_then(jwt_exp);
    Allowed {
        identity: Arc::new(Identity::from_slots(&fixed, others, jwt_exp)),
        extra,
    }
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
    use crate::auth::headers::is_fallback_marker;

    fn answer(status: u16, pairs: &[(&str, &str)]) -> Answer {
        let mut raw = format!("HTTP/1.1 {status} X\r\n");
        for (k, v) in pairs {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("Content-Length: 4\r\n\r\nbody");
        Answer::parse_complete(raw.as_bytes(), 1024).unwrap()
    }

    /// Classifies a 200 with `pairs`, which must be an allow; returns it and its header names.
    fn allowed_names(pairs: &[(&str, &str)]) -> (Arc<Allowed>, Vec<String>) {
        let Outcome::Allow(a) = classify(&answer(200, pairs)) else {
            panic!("not an allow")
        };
        let names = a
            .identity
            .headers()
            .map(|(n, _)| n.as_str().to_owned())
            .collect();
        (a, names)
    }

    #[test]
    fn bad_gateway_statuses_are_unavailable_but_500_is_an_answer() {
        for code in [502, 503, 504] {
            let o = classify(&answer(code, &[]));
            assert!(matches!(o, Outcome::Unavailable(Failure::Status(c)) if c == code));
        }
        for code in [302, 400, 401, 403, 404, 500] {
            let o = classify(&answer(code, &[("Location", "/x")]));
            let Outcome::Deny(r) = o else {
                panic!("{code} not a deny")
            };
            assert_eq!(r.status.as_u16(), code);
            assert_eq!(r.headers["location"], "/x");
            assert_eq!(&r.body[..], b"body");
            assert!(!r.headers.contains_key("content-length"));
        }
    }

    #[test]
    fn allow_needs_a_username_and_fills_all_twelve() {
        let (a, names) = allowed_names(&[
            ("X-Authentik-Username", "alice"),
            ("x-authentik-username", "mallory"),
            ("Set-Cookie", "a=b"),
            ("X-Custom", "1"),
            ("Date", "now"),
        ]);
        for name in &IDENTITY {
            assert!(names.iter().any(|n| n == name.as_str()), "{name}");
        }
        assert_eq!(
            a.identity.get(&IDENTITY[USERNAME_SLOT]).unwrap(),
            "alice",
            "the first value counts"
        );
        assert!(names.iter().any(|n| n == "x-custom"));
        assert!(!names.iter().any(|n| n == "set-cookie" || n == "date"));
        assert_eq!(a.extra.len(), 1);
        for blank in ["", "  "] {
            let anon = classify(&answer(200, &[("X-Authentik-Username", blank)]));
            assert!(matches!(anon, Outcome::Anonymous(_)), "{blank:?}");
        }
    }

    #[test]
    fn an_answers_own_fallback_marker_is_never_kept() {
        let (a, names) = allowed_names(&[
            ("X-Authentik-Username", "alice"),
            ("X-Auth-Fallback", "true"),
            ("x_auth_fallback", "true"),
        ]);
        assert!(!names.iter().any(|n| is_fallback_marker(n)), "{names:?}");
        assert!(a.extra.iter().all(|(n, _)| !is_fallback_marker(n.as_str())));
        let Outcome::Deny(r) = classify(&answer(302, &[("X-Auth-Fallback", "true")])) else {
            panic!("not a deny")
        };
        assert!(r.headers.get("x-auth-fallback").is_none());
    }

    #[test]
    fn hop_by_hop_and_connection_listed_fields_never_count() {
        // A username the outpost marked hop-by-hop is not an identity: anonymous, never allow.
        let o = classify(&answer(
            200,
            &[
                ("Connection", "keep-alive, X-Authentik-Username"),
                ("X-Authentik-Username", "alice"),
                ("Keep-Alive", "timeout=5"),
            ],
        ));
        let Outcome::Anonymous(r) = o else {
            panic!("not anonymous")
        };
        assert_eq!(r.headers["x-authentik-username"], "");
        assert!(!r.headers.contains_key("connection"));
        assert!(!r.headers.contains_key("keep-alive"));
        let (a, names) = allowed_names(&[
            ("X-Authentik-Username", "alice"),
            ("Connection", "X-Extra"),
            ("X-Extra", "hop"),
            ("Upgrade", "h2c"),
            ("X_Authentik_Groups", "admins"),
        ]);
        assert_eq!(names.len(), 12, "{names:?}");
        assert_eq!(
            a.identity.get(&IDENTITY[1]).unwrap(),
            "",
            "odd spelling dropped"
        );
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
        let o = classify(&answer(
            200,
            &[("X-Authentik-Username", "a"), ("X-Authentik-Jwt", &token)],
        ));
        let Outcome::Allow(a) = o else {
            panic!("not an allow")
        };
        assert_eq!(a.identity.jwt_exp(), Some(1_900_000_000));
    }
}
