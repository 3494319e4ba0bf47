//! The legs towards the backends: one keepalive pool (hyper-util's legacy client keys its pool
//! by backend `host:port`, so every backend has its own idle connections), bodies streamed both
//! ways, WebSocket-style upgrades tunnelled, and a bound on the wait for the response head.
//!
//! Upgrades (RFC 9110 section 7.8): the client's `Connection: upgrade` + `Upgrade` survive the
//! hop-by-hop strip; when the backend answers 101, both sides' upgraded connections are joined
//! with `copy_bidirectional` in a task of their own, and the 101 goes back to the client.

use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::auth::headers;
use crate::body::Body;
use crate::error::ProxyError;

/// nginx's default `proxy_connect_timeout` is 60 s; a LAN backend that has not accepted in 5 s
/// is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// nginx's `proxy_read_timeout` default: the longest wait for the response head.
pub const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per backend (the nginx tier's `keepalive 32`).
pub const POOL_MAX_IDLE: usize = 32;
/// Idle connections older than this are closed (below common backends' own idle timeouts).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// The pooled client of every backend.
#[derive(Clone, Debug)]
pub struct Backends {
    client: Client<HttpConnector, Body>,
}

impl Default for Backends {
    fn default() -> Self {
        Backends::new()
    }
}

impl Backends {
    /// A client with the pool settings above.
    pub fn new() -> Backends {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(http);
        Backends { client }
    }

    /// Sends a prepared request (absolute backend URI, headers final); `upgrade` is the client
    /// side of an upgrade request. The response streams; a 101 starts the tunnel.
    pub async fn send(
        &self,
        req: Request<Body>,
        upgrade: Option<OnUpgrade>,
    ) -> Result<Response<Body>, ProxyError> {
        let resp = match tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, self.client.request(req)).await
        {
            Err(_) => return Err(ProxyError::BackendTimeout),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "backend request failed");
                return Err(ProxyError::BackendUnavailable);
            }
            Ok(Ok(resp)) => resp,
        };
        let mut resp = resp;
        let backend_side = (resp.status() == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| hyper::upgrade::on(&mut resp));
        let (mut parts, body) = resp.into_parts();
        let upgrade_to = parts.headers.get(UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers);
        match (backend_side, upgrade, upgrade_to) {
            (Some(backend_side), Some(client_side), Some(protocol)) => {
                tokio::spawn(tunnel(client_side, backend_side));
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(UPGRADE, protocol);
                Ok(Response::from_parts(parts, Body::Empty))
            }
            // A 101 the client did not ask for cannot be relayed.
            (Some(_), _, _) => Err(ProxyError::BackendUnavailable),
            _ => Ok(Response::from_parts(parts, Body::Stream(body))),
        }
    }
}

/// Joins both upgraded connections until either side closes.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade) {
    let (client, backend) = tokio::join!(client, backend);
    let (client, backend) = match (client, backend) {
        (Ok(c), Ok(b)) => (c, b),
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %err, "upgraded tunnel ended with an error");
    }
}
