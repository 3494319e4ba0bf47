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
        return Err(ProxyError::PassthroughFailed(Failure::CircuitOpen));
    }
    let req = build(rt, parts, body, peer, tls, trusted);
    let resp = match tokio::time::timeout(rt.client.timeout(), rt.client.send(req)).await {
        Err(_) => return Err(ProxyError::PassthroughFailed(Failure::Timeout)),
        Ok(Err(ClientError::Refused(_))) => {
            return Err(ProxyError::PassthroughFailed(Failure::Refused))
        }
        Ok(Err(ClientError::Connect(_))) => {
            return Err(ProxyError::PassthroughFailed(Failure::Connect))
        }
        Ok(Err(ClientError::RequestBody(err))) => {
            tracing::warn!(error = %chain(&err), "passthrough request body broke or stalled");
            return Err(ProxyError::BadRequestBody);
        }
        Ok(Err(ClientError::Exchange(err))) => {
            tracing::warn!(error = %chain(&err), "passthrough exchange with the outpost failed");
            return Err(ProxyError::PassthroughFailed(Failure::Exchange));
        }
        Ok(Ok(resp)) => resp,
    };
    let (mut parts, body) = resp.into_parts();
    // A framed-by-chunks answer's Content-Length is meaningless and must not travel on
    // (RFC 9112 section 6.3): it would contradict the framing hyper gives the relayed body.
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
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

/// An error with its causes, `a: b: c`, for one log line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
