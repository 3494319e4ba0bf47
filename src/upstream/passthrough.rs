//! `/outpost.goauthentik.io/*` (start, callback, sign_out, ping, static) passed to the outpost
//! unauthenticated, streaming both ways over the same keepalive pool.
//!
//! The request keeps its method, path, body and ordinary headers; spoofable headers are dropped
//! and `X-Forwarded-*` rebuilt under the same trust rule as forward-auth checks. The response
//! head must arrive within `outpost.timeout`; its body then streams as the outpost sends it.

use std::net::IpAddr;

use http::request::Parts;
use http::Response;
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::app::Runtime;
use crate::auth::headers::{
    self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_METHOD, X_FORWARDED_PROTO, X_FORWARDED_URI,
};
use crate::auth::outpost::Failure;
use crate::auth::request::Caller;
use crate::body::Body;
use crate::error::ProxyError;
use crate::upstream::client::ClientError;

/// Forwards one request to the outpost and returns its response, streamed.
pub async fn forward(
    rt: &Runtime,
    parts: Parts,
    body: Incoming,
    peer: IpAddr,
    tls: bool,
    trusted: &[IpNet],
) -> Result<Response<Body>, ProxyError> {
    if rt.breaker.is_open() {
        return Err(failed(Failure::CircuitOpen.into(), None));
    }
    let req = build(rt, parts, body, peer, tls, trusted);
    let resp = match tokio::time::timeout(rt.client.timeout(), rt.client.send(req)).await {
        Ok(Ok(resp)) => resp,
        Err(_) => return Err(failed(Failure::Timeout.into(), None)),
        Ok(Err(err)) => {
            let refusal = match &err {
                ClientError::Refused(_) => Failure::Refused.into(),
                ClientError::Connect(_) => Failure::Connect.into(),
                ClientError::Exchange(_) => Failure::Exchange.into(),
                ClientError::RequestBody(_) => ProxyError::BadRequestBody,
            };
            return Err(failed(refusal, Some(&err)));
        }
    };
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(
        parts,
        Body::watched(body, crate::body::STREAM_IDLE_TIMEOUT),
    ))
}

fn build(
    rt: &Runtime,
    mut parts: Parts,
    body: Incoming,
    peer: IpAddr,
    tls: bool,
    trusted: &[IpNet],
) -> http::Request<Body> {
    // Connection-listed headers go first (RFC 9110 7.6.1), so nothing a hop declared hop-by-hop
    // is read below.
    headers::strip_hop_by_hop(&mut parts.headers);
    let (host, proto, uri, method, xff) = {
        let caller = Caller::new(&parts, peer, trusted, tls);
        (
            caller.host(),
            caller.proto(),
            caller.uri(),
            caller.method(),
            caller.forwarded_for(),
        )
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or(http::uri::PathAndQuery::from_static("/"));
    parts.uri = rt.client.uri(path);
    let h = &mut parts.headers;
    let spoofable: Vec<_> = h
        .keys()
        .filter(|n| headers::is_spoofable(n) || headers::is_forwarded_family(n.as_str()))
        .cloned()
        .collect();
    for name in spoofable {
        h.remove(name);
    }
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host);
    }
    h.insert(X_FORWARDED_PROTO, proto);
    h.insert(X_FORWARDED_URI, uri);
    h.insert(X_FORWARDED_METHOD, method);
    h.insert(X_FORWARDED_FOR, xff);
    parts.version = http::Version::HTTP_11;
    // The client's body streams under the same idle deadline as the answer (security rule 6).
    http::Request::from_parts(parts, Body::watched(body, crate::body::STREAM_IDLE_TIMEOUT))
}

/// The one log line of a failed passthrough, with the client error's causes when there is one.
fn failed(err: ProxyError, cause: Option<&ClientError>) -> ProxyError {
    let cause = cause.map(|c| crate::error::error_chain(c));
    tracing::warn!(error = %err, cause = cause.as_deref(), "passthrough failed");
    err
}

impl From<Failure> for ProxyError {
    fn from(f: Failure) -> ProxyError {
        ProxyError::PassthroughFailed(f)
    }
}
