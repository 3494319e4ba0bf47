//! The legs towards the backends: one keepalive pool (hyper-util's legacy client keys its pool
//! by backend `host:port`, so every backend has its own idle connections), bodies streamed both
//! ways, WebSocket-style upgrades tunnelled, and a bound on the wait for the response head.
//!
//! Upgrades (RFC 9110 section 7.8): the client's `Connection: upgrade` + `Upgrade` survive the
//! hop-by-hop strip; when the backend answers 101, both sides' upgraded connections are joined
//! with `copy_bidirectional` in a task of their own, and the 101 goes back to the client.
//!
//! Every wait is bounded (security rule 6): the response head by [`RESPONSE_HEAD_TIMEOUT`],
//! each body frame either way by the stream idle deadline (`body::STREAM_IDLE_TIMEOUT`), and a
//! tunnel by [`TUNNEL_IDLE_TIMEOUT`] without a byte in either direction.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::auth::headers;
use crate::body::{Body, STREAM_IDLE_TIMEOUT};
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

/// A WebSocket (or other upgraded) tunnel with no byte either way for this long is closed.
/// Longer than the stream deadline: chat and dashboards idle for minutes between messages, and
/// their pings (typically every 30-60 s) keep a live tunnel well inside it.
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The pooled client of every backend.
#[derive(Clone, Debug)]
pub struct Backends {
    client: Client<HttpConnector, Body>,
    /// Shared by every clone, so a setting survives config reloads.
    idle: Arc<IdleTimeouts>,
}

/// The idle deadlines, in milliseconds (changeable only for tests).
#[derive(Debug)]
struct IdleTimeouts {
    stream_ms: AtomicU64,
    tunnel_ms: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
        let idle = Arc::new(IdleTimeouts {
            stream_ms: AtomicU64::new(millis(STREAM_IDLE_TIMEOUT)),
            tunnel_ms: AtomicU64::new(millis(TUNNEL_IDLE_TIMEOUT)),
        });
        Backends { client, idle }
    }

    /// The idle deadline of a body streamed to or from a backend.
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle.stream_ms.load(Ordering::Relaxed))
    }

    /// The idle deadline of an upgraded tunnel.
    pub fn tunnel_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle.tunnel_ms.load(Ordering::Relaxed))
    }

    /// Test hook: shortens the idle deadlines, so tests need not wait a minute.
    #[doc(hidden)]
    pub fn set_idle_timeouts(&self, stream: Duration, tunnel: Duration) {
        self.idle.stream_ms.store(millis(stream), Ordering::Relaxed);
        self.idle.tunnel_ms.store(millis(tunnel), Ordering::Relaxed);
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
                tokio::spawn(tunnel(
                    client_side,
                    backend_side,
                    self.tunnel_idle_timeout(),
                ));
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(UPGRADE, protocol);
                Ok(Response::from_parts(parts, Body::Empty))
            }
            // A 101 the client did not ask for cannot be relayed.
            (Some(_), _, _) => Err(ProxyError::BackendUnavailable),
            _ => Ok(Response::from_parts(
                parts,
                Body::watched(body, self.stream_idle_timeout()),
            )),
        }
    }
}

/// Joins both upgraded connections until either side closes or the tunnel idles `idle`.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, idle: Duration) {
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
    if let Err(err) = copy_until_idle(&mut client, &mut backend, idle).await {
        tracing::debug!(error = %err, "upgraded tunnel ended with an error");
    }
}

/// `copy_bidirectional`, ended with [`io::ErrorKind::TimedOut`] once no byte was read on
/// either side for `idle`. Both ends are dropped (closed) by the caller.
pub async fn copy_until_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Activity {
        io: a,
        start,
        last: &last,
    };
    let mut b = Activity {
        io: b,
        start,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let mut copy = std::pin::pin!(copy);
    loop {
        let quiet_until = || start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            done = copy.as_mut() => return done,
            () = tokio::time::sleep_until(quiet_until()) => {
                // A read since the timer was set moved the deadline: wait again.
                if Instant::now() >= quiet_until() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle"));
                }
            }
        }
    }
}

/// An upgraded connection that notes when it last read a byte.
struct Activity<'a, T: ?Sized> {
    io: &'a mut T,
    start: Instant,
    /// Milliseconds after `start` of the last read, shared by both sides.
    last: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Activity<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.last
                .store(millis(this.start.elapsed()), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Activity<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(600);

    #[tokio::test(start_paused = true)]
    async fn quiet_tunnel_is_closed_after_the_idle_timeout_and_busy_one_is_not() {
        let (mut client, mut client_end) = tokio::io::duplex(1024);
        let (mut backend, mut backend_end) = tokio::io::duplex(1024);
        let started = Instant::now();
        let tunnel = tokio::spawn(async move {
            let r = copy_until_idle(&mut client_end, &mut backend_end, IDLE).await;
            (r, started.elapsed())
        });
        // Traffic every 9 minutes, alternating directions: 27 minutes, never idle 10.
        let mut buf = [0u8; 4];
        for round in 0..3 {
            tokio::time::sleep(IDLE - Duration::from_secs(60)).await;
            if round % 2 == 0 {
                client.write_all(b"ping").await.unwrap();
                backend.read_exact(&mut buf).await.unwrap();
            } else {
                backend.write_all(b"pong").await.unwrap();
                client.read_exact(&mut buf).await.unwrap();
            }
            assert!(!tunnel.is_finished(), "closed while busy (round {round})");
        }
        let (result, elapsed) = tunnel.await.unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(elapsed, 3 * (IDLE - Duration::from_secs(60)) + IDLE);
        // Both ends were closed with the tunnel.
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        assert_eq!(backend.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn tunnel_ends_normally_when_both_sides_close() {
        let (mut client, mut client_end) = tokio::io::duplex(64);
        let (mut backend, mut backend_end) = tokio::io::duplex(64);
        let tunnel =
            tokio::spawn(
                async move { copy_until_idle(&mut client_end, &mut backend_end, IDLE).await },
            );
        client.write_all(b"abc").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abc");
        backend.shutdown().await.unwrap();
        assert_eq!(tunnel.await.unwrap().unwrap(), (3, 0));
    }
}
