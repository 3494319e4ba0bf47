//! A lean HTTP/1.1 keepalive pool for the auth leg.
//!
//! Forward-auth exchanges are small, bodiless GETs whose answers are read whole: the connection
//! is free again the moment the body is read. hyper-util's general pool cannot know that and
//! spawns a task per request to return the connection once it is ready; here the exchange reads
//! the body, waits for the connection to be ready inline, and puts it back (LIFO, so hot
//! connections stay hot). A request that fails on a reused connection before any answer (the
//! outpost closed it while idle) is replayed once on a fresh one: it is a GET without a body.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::response::Parts;
use http::uri::Authority;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::Body;

/// Why an auth exchange failed before an answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Nothing listens there.
    #[error("outpost refused the connection")]
    Refused(#[source] std::io::Error),
    /// Any other connect failure, or the connect timeout.
    #[error("cannot connect to the outpost")]
    Connect(#[source] std::io::Error),
    /// The connection broke during the exchange.
    #[error("outpost exchange failed")]
    Exchange(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer's body is larger than the auth leg allows.
    #[error("outpost answer body too large")]
    TooLarge,
}

/// Idle connections to one outpost.
#[derive(Debug)]
pub struct AuthPool {
    idle: Mutex<Vec<(SendRequest<Body>, Instant)>>,
    authority: Authority,
    host: HeaderValue,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    opened: IntCounter,
}

impl AuthPool {
    /// A pool towards `authority` (`host:port`).
    pub fn new(
        authority: Authority,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        opened: IntCounter,
    ) -> AuthPool {
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or(HeaderValue::from_static("outpost"));
        AuthPool {
            idle: Mutex::new(Vec::new()),
            authority,
            host,
            max_idle,
            idle_timeout,
            connect_timeout,
            opened,
        }
    }

    /// Sends `req` (origin-form URI, no body) and reads the whole answer, at most `limit` bytes.
    /// Callers bound the whole call with their own timeout.
    pub async fn exchange(
        &self,
        req: Request<Body>,
        limit: usize,
    ) -> Result<(Parts, Bytes), PoolError> {
        let (mut parts, _) = req.into_parts();
        // Origin-form on the wire (RFC 9112 section 3.2.1): the outpost is not a proxy.
        if let Some(pq) = parts.uri.path_and_query().cloned() {
            parts.uri = http::Uri::from(pq);
        }
        if !parts.headers.contains_key(HOST) {
            parts.headers.insert(HOST, self.host.clone());
        }
        let replay = || {
            let mut r = Request::new(Body::Empty);
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.headers_mut() = parts.headers.clone();
            r
        };
        let (mut sender, reused) = match self.checkout() {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        let resp = match sender.send_request(replay()).await {
            Ok(resp) => resp,
            // The outpost closed an idle connection under us: replay once on a fresh one.
            Err(err)
                if reused
                    && (err.is_canceled() || err.is_closed() || err.is_incomplete_message()) =>
            {
                sender = self.connect().await?;
                sender
                    .send_request(replay())
                    .await
                    .map_err(|e| PoolError::Exchange(e.into()))?
            }
            Err(err) => return Err(PoolError::Exchange(err.into())),
        };
        let (head, body) = resp.into_parts();
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            // Dropping `sender` here closes the half-read connection (security rule 5).
            Err(err)
                if err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(PoolError::TooLarge)
            }
            Err(err) => return Err(PoolError::Exchange(err)),
        };
        // The message is complete; once the connection task has seen it the sender is ready.
        if sender.ready().await.is_ok() {
            self.checkin(sender);
        }
        Ok((head, body))
    }

    fn checkout(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().ok()?;
        while let Some((sender, since)) = idle.pop() {
            if sender.is_ready() && now.saturating_duration_since(since) < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<Body>) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push((sender, Instant::now()));
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, PoolError> {
        let addr = self.authority.as_str();
        let addr = if self.authority.port().is_some() {
            addr.to_owned()
        } else {
            format!("{addr}:80")
        };
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(PoolError::Refused(e))
                }
                Ok(Err(e)) => return Err(PoolError::Connect(e)),
                Err(_) => return Err(PoolError::Connect(std::io::ErrorKind::TimedOut.into())),
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PoolError::Exchange(e.into()))?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "outpost connection ended with an error");
            }
        });
        self.opened.inc();
        Ok(sender)
    }
}
