//! The keepalive pool towards the outpost.
//!
//! One hyper-util client per outpost, HTTP/1.1 only (the outpost serves no h2). The pool keeps up
//! to `pool_max_idle` idle connections and closes them after `pool_idle_timeout`, which only works
//! because a `pool_timer` is set. Every connection the connector opens is counted, so reuse can
//! be proven from outside (`portcullis_outpost_connections_opened_total`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntCounter;
use tower_service::Service;

use crate::body::Body;
use crate::config::OutpostConfig;

/// A connector that counts the connections it opens.
#[derive(Clone, Debug)]
pub struct CountingConnector {
    inner: HttpConnector,
    opened: IntCounter,
}

impl Service<Uri> for CountingConnector {
    type Response = <HttpConnector as Service<Uri>>::Response;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let fut = self.inner.call(dst);
        let opened = self.opened.clone();
        Box::pin(async move {
            let conn = fut.await?;
            opened.inc();
            Ok(conn)
        })
    }
}

/// The pooled clients plus the outpost's base address: the general pool (passthrough, probe)
/// and the lean auth-leg pool ([`super::pool::AuthPool`]).
#[derive(Clone, Debug)]
pub struct OutpostClient {
    client: Client<CountingConnector, Body>,
    auth: std::sync::Arc<super::pool::AuthPool>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

/// Why a request to the outpost failed before an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection was refused: nothing listens there.
    #[error("outpost refused the connection")]
    Refused(#[source] hyper_util::client::legacy::Error),
    /// Any other connect failure (unreachable, DNS, connect timeout).
    #[error("cannot connect to the outpost")]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// The connection broke during the exchange.
    #[error("outpost exchange failed")]
    Exchange(#[source] hyper_util::client::legacy::Error),
    /// The request's own body (the client's) broke or stalled while it was sent.
    #[error("request body failed")]
    RequestBody(#[source] hyper_util::client::legacy::Error),
}

impl OutpostClient {
    /// Builds the pool from `[outpost]`; `opened` counts new connections.
    pub fn new(cfg: &OutpostConfig, opened: IntCounter) -> OutpostClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(true);
        let connector = CountingConnector {
            inner: http,
            opened: opened.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let scheme = cfg.url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = cfg
            .url
            .authority()
            .cloned()
            .unwrap_or(Authority::from_static("127.0.0.1"));
        let auth = std::sync::Arc::new(super::pool::AuthPool::new(
            authority.clone(),
            cfg.pool_max_idle,
            cfg.pool_idle_timeout,
            cfg.connect_timeout,
            opened,
        ));
        OutpostClient {
            client,
            auth,
            scheme,
            authority,
            timeout: cfg.timeout,
        }
    }

    /// The outpost URL for a path (and query).
    pub fn uri(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// The outpost's `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// `outpost.timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The lean pool for forward-auth exchanges (bodiless GETs read whole).
    pub fn auth_pool(&self) -> &super::pool::AuthPool {
        &self.auth
    }

    /// Sends one request and waits for the response head (no timeout here: callers bound the
    /// whole exchange, body included).
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        self.client.request(req).await.map_err(classify)
    }
}

fn classify(err: hyper_util::client::legacy::Error) -> ClientError {
    let in_chain = |pred: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool| {
        crate::error::causes(&err).any(pred)
    };
    if !err.is_connect() {
        // The client's body failing (a bad chunk, a stall) is the caller's fault, not the
        // outpost's: hyper keeps the body's own error in the chain.
        if in_chain(&|e| e.is::<crate::body::BodyError>()) {
            return ClientError::RequestBody(err);
        }
        return ClientError::Exchange(err);
    }
    let refused = in_chain(&|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    if refused {
        ClientError::Refused(err)
    } else {
        ClientError::Connect(err)
    }
}
