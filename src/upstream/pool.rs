//! A lean HTTP/1.1 keepalive pool for the auth leg.
//!
//! Forward-auth exchanges are small, bodiless GETs whose answers are read whole, so the exchange
//! needs no connection task, no channel and no `HeaderMap`: the caller's task writes the request
//! head (built once, [`crate::auth::outpost::build_request`]) with one write, reads the answer
//! with [`super::wire`], and puts the socket back (LIFO, so hot connections stay hot). A
//! connection goes back only after a complete keep-alive answer with nothing behind it, and is
//! taken out only if it stayed quiet while idle (no end of stream, no stray bytes). A request that
//! fails on a reused connection before any byte of an answer (the outpost closed it while idle)
//! is sent once more on a fresh one: it is a GET without a body.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use http::uri::Authority;
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::wire::{self, Answer, WireError};

/// Why an auth exchange failed before a usable answer.
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
    Exchange(#[source] std::io::Error),
    /// The answer broke HTTP/1.1 (framing, limits) or its body is larger than the auth leg allows.
    #[error(transparent)]
    Protocol(WireError),
}

/// One keepalive connection: the socket and whatever was read past the last answer (nothing,
/// for a connection in the pool).
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

/// Idle connections to one outpost.
#[derive(Debug)]
pub struct AuthPool {
    /// Most recently used at the back; the front is the oldest.
    idle: Mutex<VecDeque<(Conn, Instant)>>,
    authority: Authority,
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
        AuthPool {
            idle: Mutex::new(VecDeque::new()),
            authority,
            max_idle,
            idle_timeout,
            connect_timeout,
            opened,
        }
    }

    /// Sends `head` (a complete request head: a GET has no body) and reads the whole answer, its
    /// body at most `limit` bytes. Callers bound the whole call with their own timeout; a dropped
    /// call drops its connection, so a half-read answer never returns to the pool.
    pub async fn exchange(&self, head: &[u8], limit: usize) -> Result<Answer, PoolError> {
        if let Some(mut conn) = self.checkout() {
            match conn.exchange(head, limit).await {
                Ok((answer, reusable)) => {
                    self.checkin(conn, reusable);
                    return Ok(answer);
                }
                // The outpost closed an idle connection under us before answering: send again
                // on a fresh one (a bodiless GET is safe to repeat).
                Err(Failed::BeforeAnswer(_)) => {}
                Err(Failed::During(err)) => return Err(err),
            }
        }
        let mut conn = self.connect().await?;
        match conn.exchange(head, limit).await {
            Ok((answer, reusable)) => {
                self.checkin(conn, reusable);
                Ok(answer)
            }
            Err(Failed::BeforeAnswer(err)) => Err(PoolError::Exchange(err)),
            Err(Failed::During(err)) => Err(err),
        }
    }

    /// The most recently used idle connection that is still quiet and young enough.
    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().ok()?;
        while let Some((conn, since)) = idle.pop_back() {
            if now.saturating_duration_since(since) < self.idle_timeout && conn.is_quiet() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn, reusable: bool) {
        if !reusable {
            return;
        }
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            // LIFO leaves the oldest at the front: close those past the idle timeout here, so
            // a quiet spell does not keep dead sockets open until the pool drains.
            while idle.front().is_some_and(|(_, since)| {
                now.saturating_duration_since(*since) >= self.idle_timeout
            }) {
                idle.pop_front();
            }
            if idle.len() < self.max_idle {
                idle.push_back((conn, now));
            }
        }
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
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
        self.opened.inc();
        Ok(Conn {
            io: stream,
            buf: BytesMut::new(),
        })
    }
}

/// How one exchange on one connection failed.
enum Failed {
    /// Nothing of an answer arrived: the request may be sent again elsewhere.
    BeforeAnswer(std::io::Error),
    /// Part of an answer arrived, or it broke the protocol.
    During(PoolError),
}

impl Conn {
    async fn exchange(&mut self, head: &[u8], limit: usize) -> Result<(Answer, bool), Failed> {
        self.io
            .write_all(head)
            .await
            .map_err(Failed::BeforeAnswer)?;
        match wire::read_answer(&mut self.io, &mut self.buf, limit).await {
            Ok(done) => Ok(done),
            Err(WireError::Closed) => Err(Failed::BeforeAnswer(
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
            Err(WireError::Io(err)) => Err(Failed::During(PoolError::Exchange(err))),
            Err(err) => Err(Failed::During(PoolError::Protocol(err))),
        }
    }

    /// Whether an idle connection has seen nothing since its last answer: no end of stream, no
    /// unsolicited bytes (either makes it unusable). Costs a syscall only when the socket
    /// reported readable, which the last short read normally cleared.
    fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conn(listener: &tokio::net::TcpListener) -> Conn {
        let io = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    #[tokio::test]
    async fn a_reset_after_part_of_an_answer_is_an_error_never_a_retry() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(AtomicU64::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = sock.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                            sock.write_all(ok).await.unwrap();
                            continue;
                        }
                        // The head, then a reset in the middle of the body.
                        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
                        sock.write_all(head).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        sock.set_zero_linger().unwrap();
                        drop(sock);
                        return;
                    }
                });
            }
        });
        let pool = AuthPool::new(
            Authority::try_from(addr.to_string()).unwrap(),
            8,
            Duration::from_secs(90),
            Duration::from_secs(1),
            IntCounter::new("opened", "test").unwrap(),
        );
        let get = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        assert!(pool.exchange(get, 1024).await.is_ok());
        let second = pool.exchange(get, 1024).await;
        assert!(matches!(second, Err(PoolError::Exchange(_))), "{second:?}");
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "part of an answer arrived: the request is not sent again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn checkin_closes_connections_idle_past_the_timeout_and_keeps_the_newest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = AuthPool::new(
            Authority::from_static("127.0.0.1:1"),
            8,
            Duration::from_secs(90),
            Duration::from_secs(1),
            IntCounter::new("opened", "test").unwrap(),
        );
        pool.checkin(conn(&listener).await, true);
        pool.checkin(conn(&listener).await, false);
        assert_eq!(pool.idle.lock().unwrap().len(), 1, "not reusable: closed");
        tokio::time::advance(Duration::from_secs(91)).await;
        pool.checkin(conn(&listener).await, true);
        assert_eq!(
            pool.idle.lock().unwrap().len(),
            1,
            "the stale one was closed on checkin"
        );
        assert!(pool.checkout().is_some(), "the fresh one is handed out");
        assert!(pool.checkout().is_none());
    }
}
