//! The forward-auth pipeline: cache, then breaker, then outpost, then fallback, then headers.
//!
//! Every 2xx leaves through [`allow_response`] or the fallback's allow, which guarantee security
//! rule 2: the full identity header set, empty where not applicable, so nothing a client sent can
//! survive the caller's copy. Only [`Failure`]s that fall back may reach the emergency realm.

pub mod cache;
pub mod coalesce;
pub mod fallback;
pub mod headers;
pub mod htpasswd;
pub mod identity;
pub mod outpost;
pub mod request;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use http::header::{HeaderValue, CONTENT_LENGTH, USER_AGENT};
use http::request::Parts;
use http::{Response, StatusCode};

use self::cache::{CacheKey, Credentials};
use self::coalesce::{Leader, Role, Shared};
use self::fallback::Verdict;
use self::headers::{IDENTITY, X_AUTHENTIK_USERNAME, X_AUTH_FALLBACK};
use self::outpost::{Failure, Identity, Outcome, Relayed};
use self::request::{
    has_dot_segments, has_outpost_signature, is_outpost_path, is_sign_out, Caller,
};
use crate::app::{App, Runtime};
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::{Attempt, Decision, Endpoint, Lookup};

/// Extra wait a coalesced request gives its leader beyond `outpost.timeout`.
const COALESCE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// What the pipeline produced: the response, its decision, and the outpost time if asked.
#[derive(Debug)]
pub struct Answer {
    /// The response to send.
    pub response: Response<Body>,
    /// The decision, for metrics and the access log.
    pub decision: Decision,
    /// Time spent on the outpost exchange, when there was one.
    pub outpost_seconds: Option<f64>,
}

/// Who asks: the TCP peer, whether the connection is TLS, and — in edge mode, where forwarded
/// headers are stripped before the check — the client address already resolved from a trusted
/// proxy's chain (for the emergency realm's limiter).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The TCP peer.
    pub ip: IpAddr,
    /// Whether the connection to us is TLS.
    pub tls: bool,
    /// The resolved client, when the caller already knows it.
    pub client: Option<IpAddr>,
}

/// Answers one forward-auth check.
pub async fn check(app: &App, endpoint: Endpoint, parts: &Parts, peer: Peer) -> Answer {
    let rt = app.runtime();
    let trusted = &rt.config.server.trusted_proxies;
    let caller = Caller::new(parts, peer.ip, trusted, peer.tls);
    let forwarded = forwarded_url(endpoint, &caller);
    if has_dot_segments(forwarded.as_bytes()) {
        tracing::info!(
            endpoint = endpoint.as_str(),
            path = %log_path(forwarded.as_bytes()),
            "forwarded URL with dot-segments refused (400): a backend could resolve it elsewhere"
        );
        return Answer {
            response: ProxyError::BadPath.response(),
            decision: Decision::Error,
            outpost_seconds: None,
        };
    }
    let host = match caller.host_for(endpoint == Endpoint::Nginx) {
        Ok(host) => host.unwrap_or(headers::EMPTY),
        Err(err) => {
            tracing::info!(
                endpoint = endpoint.as_str(),
                "X-Original-URL names a host other than the one nginx routed to, or none (400)"
            );
            return Answer {
                response: err.response(),
                decision: Decision::Error,
                outpost_seconds: None,
            };
        }
    };
    // Login and logout flows, and the outpost's own paths, are never cached (DESIGN.md 3).
    let signed =
        has_outpost_signature(forwarded.as_bytes()) || is_outpost_path(forwarded.as_bytes());
    // Purged now, and again when this check ends (the outpost has answered) or is abandoned, as
    // for a passthrough sign-out.
    let _sign_out = is_sign_out(forwarded.as_bytes())
        .then(|| cache::SignOut::begin(&rt.cache, Credentials::of(&caller)));
    // Coalescing needs the key even with the cache off; signed URLs get neither.
    let key = if signed {
        None
    } else {
        CacheKey::new(rt.generation, &host, &caller, app.hasher())
    };
    if let Some(key) = key.as_ref().filter(|_| rt.cache.enabled()) {
        let (lookup, identity) = rt.cache.get(key, tokio::time::Instant::now());
        app.metrics.cache_lookup(lookup).inc();
        if let (Lookup::Hit, Some(identity)) = (lookup, identity) {
            return Answer {
                response: allow_response(&identity, &[], &caller),
                decision: Decision::AllowCached,
                outpost_seconds: None,
            };
        }
    }
    if rt.breaker.is_open() {
        return fallback(app, &rt, &caller, peer, Failure::CircuitOpen, None).await;
    }
    let started = StdInstant::now();
    let outcome = match key.as_ref().map(|k| app.inflight.join(k)) {
        Some(Role::Waiter(slot)) => waited(app, &rt, endpoint, &caller, slot, &forwarded).await,
        Some(Role::Leader(leader)) => {
            let question = (endpoint, &forwarded);
            led(app, &rt, question, &caller, leader, key.as_ref()).await
        }
        None => ask(app, &rt, endpoint, &caller).await,
    };
    let seconds = Some(started.elapsed().as_secs_f64());
    match outcome {
        Outcome::Allow(a) => Answer {
            response: allow_response(&a.identity, &a.extra, &caller),
            decision: Decision::Allow,
            outpost_seconds: seconds,
        },
        Outcome::Anonymous(r) => Answer {
            response: relay(&r),
            decision: Decision::Anonymous,
            outpost_seconds: seconds,
        },
        Outcome::Deny(r) => Answer {
            response: relay(&r),
            decision: Decision::Deny,
            outpost_seconds: seconds,
        },
        Outcome::Unavailable(f) => fallback(app, &rt, &caller, peer, f, seconds).await,
    }
}

/// The URL of the protected request as the outpost will read it, for the signature checks.
fn forwarded_url(endpoint: Endpoint, caller: &Caller<'_>) -> HeaderValue {
    match endpoint {
        Endpoint::Nginx => caller
            .original_url()
            .cloned()
            .unwrap_or_else(|| caller.uri()),
        // Envoy appends the protected path to the check prefix; the outpost strips the prefix.
        Endpoint::Envoy => {
            let full = caller.parts.uri.path_and_query().map_or("", |p| p.as_str());
            let original = full.strip_prefix(ENVOY_PREFIX).unwrap_or(full);
            let original = if original.starts_with('/') {
                original.to_owned()
            } else {
                format!("/{original}")
            };
            HeaderValue::from_str(&original).unwrap_or(headers::EMPTY)
        }
        _ => caller.uri(),
    }
}

/// A forwarded URL's path for a log line: no query (it may carry tokens), at most 256 bytes.
fn log_path(url: &[u8]) -> String {
    let path = url.split(|&b| b == b'?').next().unwrap_or(url);
    String::from_utf8_lossy(&path[..path.len().min(256)]).into_owned()
}

/// The path Envoy's `ext_authz` puts in front of the protected request's path.
const ENVOY_PREFIX: &str = "/outpost.goauthentik.io/auth/envoy";

/// Asks the outpost once and feeds the breaker.
async fn ask(app: &App, rt: &Runtime, endpoint: Endpoint, caller: &Caller<'_>) -> Outcome {
    let req = outpost::build_request(&rt.client, endpoint, caller);
    let started = StdInstant::now();
    let outcome = outpost::exchange(&rt.client, &req, rt.client.timeout()).await;
    app.metrics
        .outpost_duration
        .observe(started.elapsed().as_secs_f64());
    match &outcome {
        Outcome::Unavailable(f) => {
            let status = match f {
                Failure::Status(s) => Some(*s),
                _ => None,
            };
            app.metrics.outpost_response(status);
            tracing::warn!(
                endpoint = endpoint.as_str(),
                reason = f.as_str(),
                "outpost unavailable"
            );
            // A broken answer is an answer: it fails closed and leaves the breaker alone, so
            // an outpost (or something in its place) that misframes can never open the
            // emergency realm (DESIGN.md section 8).
            if f.falls_back() {
                let t = rt.breaker.record_failure(*f == Failure::Refused);
                app.breaker_transition(t, f.as_str());
            }
        }
        Outcome::Allow(_) => {
            app.metrics.outpost_response(Some(200));
            rt.breaker.record_success();
        }
        Outcome::Anonymous(r) | Outcome::Deny(r) => {
            app.metrics.outpost_response(Some(r.status.as_u16()));
            rt.breaker.record_success();
        }
    }
    // The outpost answered: the realm is no longer what answers (read first, so the hot path
    // does not write a shared gauge on every miss).
    if !matches!(outcome, Outcome::Unavailable(_)) && app.metrics.fallback_active.get() != 0 {
        app.metrics.fallback_active.set(0);
    }
    outcome
}

/// The leader of a coalesced miss: ask, store an authenticated allow, publish to the waiters.
async fn led(
    app: &App,
    rt: &Runtime,
    (endpoint, forwarded): (Endpoint, &HeaderValue),
    caller: &Caller<'_>,
    leader: Leader<'_>,
    key: Option<&CacheKey>,
) -> Outcome {
    let purges = rt.cache.purges();
    let outcome = ask(app, rt, endpoint, caller).await;
    if let (Outcome::Allow(a), Some(key)) = (&outcome, key) {
        if rt.cache.enabled() {
            let now = tokio::time::Instant::now();
            rt.cache.insert_asked_at(key, &a.identity, now, purges);
        }
    }
    leader.publish(Shared {
        outcome: outcome.clone(),
        endpoint,
        forwarded: forwarded.clone(),
    });
    outcome
}

/// A waiter of a coalesced miss: takes the leader's outcome when it answers this question
/// ([`Shared::answers`]), else asks for itself.
async fn waited(
    app: &App,
    rt: &Runtime,
    endpoint: Endpoint,
    caller: &Caller<'_>,
    slot: Arc<coalesce::Slot>,
    forwarded: &HeaderValue,
) -> Outcome {
    // The leader's exchange is bounded by the same timeout; the grace keeps a waiter that
    // joined in the same timer tick from giving up just before the leader's answer lands.
    let bound = rt.client.timeout() + COALESCE_GRACE;
    let shared = tokio::time::timeout(bound, coalesce::wait(slot)).await;
    match shared
        .ok()
        .flatten()
        .and_then(|s| s.answers(endpoint, forwarded))
    {
        Some(outcome) => {
            // Counted only when the shared answer was used (DESIGN.md 7: "instead of making
            // their own" call).
            app.metrics.coalesced.inc();
            outcome
        }
        // Another question, or the leader vanished or took too long: ask for ourselves.
        None => ask(app, rt, endpoint, caller).await,
    }
}

/// The outpost could not answer: the emergency realm, or fail closed.
async fn fallback(
    app: &App,
    rt: &Runtime,
    caller: &Caller<'_>,
    peer: Peer,
    failure: Failure,
    outpost_seconds: Option<f64>,
) -> Answer {
    let realm = match (&rt.realm, failure.falls_back()) {
        (Some(realm), true) => realm,
        _ => {
            let err = if failure.falls_back() {
                ProxyError::OutpostUnavailable(failure)
            } else {
                ProxyError::OutpostProtocol
            };
            return Answer {
                response: err.response(),
                decision: Decision::Error,
                outpost_seconds,
            };
        }
    };
    // The realm is answering (before the breaker opens too): metered at once (DESIGN.md 7).
    app.fallback_answered();
    // Resolved only here, where the limiter needs it. An unknown client (garbage in a trusted
    // chain) is limited as the peer that sent it.
    let trusted = &rt.config.server.trusted_proxies;
    let client = peer
        .client
        .or_else(|| caller.client_ip(trusted))
        .unwrap_or(peer.ip);
    let (response, decision, attempt) = match realm.check(caller.authorization(), client).await {
        Verdict::Allow { user } => match fallback_allow(&user) {
            Some(resp) => (resp, Decision::FallbackAllow, Attempt::Ok),
            // Never a 200 without the user: fail closed.
            None => (
                fallback_deny(&rt.config.fallback.realm),
                Decision::FallbackDeny,
                Attempt::BadCredentials,
            ),
        },
        Verdict::Deny => (
            fallback_deny(&rt.config.fallback.realm),
            Decision::FallbackDeny,
            Attempt::BadCredentials,
        ),
        Verdict::Limited { retry_after } => (
            ProxyError::FallbackLimited(retry_after).response(),
            Decision::FallbackLimited,
            Attempt::Limited,
        ),
    };
    app.metrics.fallback_attempt(attempt).inc();
    Answer {
        response,
        decision,
        outpost_seconds,
    }
}

/// 200 with the identity (fresh or cached), this answer's extras, and the caller's User-Agent.
/// Public for the hot-path bench.
pub fn allow_response(
    identity: &Identity,
    extra: &[(http::HeaderName, HeaderValue)],
    caller: &Caller<'_>,
) -> Response<Body> {
    let mut resp = Response::new(Body::Empty);
    let h = resp.headers_mut();
    h.reserve(identity.len() + extra.len() + 2);
    for (name, value) in identity.headers() {
        h.append(name, value);
    }
    for (name, value) in extra {
        h.append(name.clone(), value.clone());
    }
    if let Some(ua) = caller.user_agent() {
        h.insert(USER_AGENT, ua.clone());
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// An outpost answer relayed as is: status, every header (every `Set-Cookie`), body.
fn relay(r: &Relayed) -> Response<Body> {
    let mut resp = Response::new(if r.body.is_empty() {
        Body::Empty
    } else {
        Body::full(r.body.clone())
    });
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers.clone();
    resp
}

/// 200 from the emergency realm: the user, eleven empty identity headers, the marker. `None`
/// if the user name cannot be a header value (the caller then denies).
fn fallback_allow(user: &Arc<str>) -> Option<Response<Body>> {
    let user = HeaderValue::from_str(user).ok().filter(|v| !v.is_empty())?;
    let mut resp = Response::new(Body::Empty);
    let h = resp.headers_mut();
    for name in &IDENTITY {
        h.insert(name, headers::EMPTY);
    }
    h.insert(X_AUTHENTIK_USERNAME, user);
    h.insert(X_AUTH_FALLBACK, headers::TRUE);
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(resp)
}

/// 401 with the Basic challenge (RFC 7617 section 2).
fn fallback_deny(realm: &str) -> Response<Body> {
    let mut resp = Response::new(Body::full("401 Authorization Required\n"));
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    let h = resp.headers_mut();
    let challenge = format!("Basic realm=\"{realm}\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        h.insert(http::header::WWW_AUTHENTICATE, v);
    }
    h.insert(X_AUTH_FALLBACK, headers::TRUE);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName};

    fn parts(user_agent: Option<&str>) -> Parts {
        let mut b = http::Request::builder().uri("/outpost.goauthentik.io/auth/traefik");
        if let Some(ua) = user_agent {
            b = b.header(USER_AGENT, ua);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn identity(custom: &[(&'static str, &str)]) -> Identity {
        let mut pairs: Vec<(HeaderName, String)> = IDENTITY
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 2) // some fixed ones missing: they go out empty
            .map(|(i, n)| (n.clone(), format!("value-{i}")))
            .collect();
        pairs.extend(
            custom
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), v.to_string())),
        );
        Identity::from_pairs(pairs, None)
    }

    fn values(h: &HeaderMap, name: &HeaderName) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn allow_carries_every_identity_header_once_with_its_value() {
        let p = parts(Some("Mozilla/5.0 test"));
        let caller = Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false);
        let id = identity(&[("x-authentik-custom", "c1")]);
        let extra = [(X_AUTH_FALLBACK, headers::TRUE)];
        let resp = allow_response(&id, &extra, &caller);
        let h = resp.headers();
        for (i, name) in IDENTITY.iter().enumerate() {
            let want = if i % 3 == 2 {
                String::new()
            } else {
                format!("value-{i}")
            };
            assert_eq!(values(h, name), vec![want], "{name}");
        }
        assert_eq!(values(h, &USER_AGENT), vec!["Mozilla/5.0 test"]);
        assert_eq!(values(h, &CONTENT_LENGTH), vec!["0"]);
        assert_eq!(
            values(h, &HeaderName::from_static("x-authentik-custom")),
            vec!["c1"]
        );
        assert_eq!(values(h, &X_AUTH_FALLBACK), vec!["true"]);
        assert_eq!(h.len(), IDENTITY.len() + 4);
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[test]
    fn allow_without_a_user_agent_sends_none() {
        let p = parts(None);
        let caller = Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false);
        let resp = allow_response(&identity(&[]), &[], &caller);
        let h = resp.headers();
        assert!(h.get(USER_AGENT).is_none());
        assert_eq!(values(h, &X_AUTHENTIK_USERNAME), vec!["value-0"]);
        assert_eq!(values(h, &CONTENT_LENGTH), vec!["0"]);
        assert_eq!(h.len(), IDENTITY.len() + 1);
    }

    #[test]
    fn one_answer_never_leaks_into_the_next() {
        // The head is shared: a second answer must not see the first one's values.
        let p = parts(Some("first"));
        let caller = Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false);
        let _ = allow_response(&identity(&[("x-authentik-custom", "c1")]), &[], &caller);
        let q = parts(None);
        let caller = Caller::new(&q, "127.0.0.1".parse().unwrap(), &[], false);
        let bob = Identity::from_pairs([(X_AUTHENTIK_USERNAME, "bob")], None);
        let resp = allow_response(&bob, &[], &caller);
        let h = resp.headers();
        assert_eq!(values(h, &X_AUTHENTIK_USERNAME), vec!["bob"]);
        for name in &IDENTITY[1..] {
            assert_eq!(values(h, name), vec![String::new()], "{name}");
        }
        assert!(h.get("x-authentik-custom").is_none());
        assert!(h.get(USER_AGENT).is_none());
    }
}
