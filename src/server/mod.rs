//! Accept loops, connection limits and graceful shutdown.
//!
//! Listeners are bound by the caller (the binary, or tests on `127.0.0.1:0`) and never rebound.
//! Shutdown (DESIGN.md section 6): readiness turns 503 at once, accepting continues for
//! `server.shutdown_delay` so load balancers move away, then accepting stops and connections
//! in flight get `server.drain_timeout` to finish.
//!
//! Edge mode adds two listeners: HTTPS (rustls, HTTP/1.1 and HTTP/2 by ALPN, upgrades allowed)
//! and an optional plain HTTP one that only redirects; both share the stop and drain machinery.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use self::tls::{EdgeCerts, TlsError};
use crate::admin;
use crate::app::App;
use crate::config::EdgeConfig;
use crate::metrics::{Decision, Endpoint};
use crate::{edge, router};

/// The two bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// Forward-auth listener.
    pub main: TcpListener,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: TcpListener,
    /// Edge listeners, after [`Listeners::bind_edge`].
    pub edge: Option<EdgeListeners>,
}

/// The edge listeners and the certificates they serve.
pub struct EdgeListeners {
    /// HTTPS listener.
    pub https: TcpListener,
    /// Plain HTTP listener (redirects only), if configured.
    pub http: Option<TcpListener>,
    /// The live certificate set (watched once serving starts).
    pub certs: Arc<EdgeCerts>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for EdgeListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeListeners")
            .field("https", &self.https)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

/// Why edge mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeStartError {
    /// A certificate could not be loaded.
    #[error(transparent)]
    Certificate(#[from] TlsError),
    /// rustls refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A listener could not be bound.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Listeners {
    /// Binds both addresses.
    pub async fn bind(main: SocketAddr, admin: SocketAddr) -> std::io::Result<Listeners> {
        Ok(Listeners {
            main: TcpListener::bind(main).await?,
            admin: TcpListener::bind(admin).await?,
            edge: None,
        })
    }

    /// Loads the certificates of `[edge]` and binds its listeners.
    pub async fn bind_edge(&mut self, config: &EdgeConfig) -> Result<(), EdgeStartError> {
        let certs = EdgeCerts::load(config)?;
        let acceptor = certs.acceptor()?;
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| EdgeStartError::Bind { addr, source })
        };
        let https = bind(config.listen_https).await?;
        let http = match config.listen_http {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        self.edge = Some(EdgeListeners {
            https,
            http,
            certs,
            acceptor,
        });
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Main,
    Admin,
    /// The edge's plain HTTP listener; the HTTPS port its redirects name.
    Redirect(u16),
}

/// Serves until `shutdown` resolves, then drains as the config says.
pub async fn run(app: Arc<App>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    // Every connection task holds a clone of `alive`; the drain ends when the last one is gone.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let conns = Connections {
        alive,
        stop: stop_rx.clone(),
    };
    let main = tokio::spawn(accept_loop(
        listeners.main,
        app.clone(),
        Kind::Main,
        conns.clone(),
    ));
    let admin = tokio::spawn(accept_loop(
        listeners.admin,
        app.clone(),
        Kind::Admin,
        conns.clone(),
    ));
    let edge = listeners.edge.map(|e| spawn_edge(e, &app, &conns));
    drop(conns);
    shutdown.await;
    app.start_draining();
    let rt = app.runtime();
    tracing::info!(delay = ?rt.config.server.shutdown_delay, "shutting down: readiness is 503");
    tokio::time::sleep(rt.config.server.shutdown_delay).await;
    let _ = stop_tx.send(true);
    let _ = main.await;
    let _ = admin.await;
    for task in edge.into_iter().flatten() {
        let _ = task.await;
    }
    tracing::info!(deadline = ?rt.config.server.drain_timeout, "stopped accepting; draining");
    match tokio::time::timeout(rt.config.server.drain_timeout, all_closed.recv()).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain deadline passed; closing remaining connections"),
    }
}

/// What every connection task holds: a liveness token and the stop signal.
#[derive(Clone, Debug)]
struct Connections {
    alive: mpsc::Sender<()>,
    stop: watch::Receiver<bool>,
}

async fn accept_loop(listener: TcpListener, app: Arc<App>, kind: Kind, conns: Connections) {
    let mut stop = conns.stop.clone();
    while let Some((stream, peer)) = accept(&listener, &mut stop).await {
        tokio::spawn(connection(stream, peer, app.clone(), kind, conns.clone()));
    }
}

/// The next connection, or `None` once the stop flag is set.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped(stop) => return None,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Starts the certificate watcher and the edge accept loops.
fn spawn_edge(
    e: EdgeListeners,
    app: &Arc<App>,
    conns: &Connections,
) -> Vec<tokio::task::JoinHandle<()>> {
    e.certs.spawn_watcher();
    let mut tasks = Vec::with_capacity(2);
    if let Some(http) = e.http {
        let port = e.https.local_addr().map_or(443, |a| a.port());
        let kind = Kind::Redirect(port);
        tasks.push(tokio::spawn(accept_loop(
            http,
            app.clone(),
            kind,
            conns.clone(),
        )));
    }
    let (https, acceptor) = (e.https, e.acceptor);
    tasks.push(tokio::spawn(tls_accept_loop(
        https,
        app.clone(),
        acceptor,
        conns.clone(),
    )));
    tasks
}

async fn tls_accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    acceptor: TlsAcceptor,
    conns: Connections,
) {
    let mut stop = conns.stop.clone();
    while let Some((stream, peer)) = accept(&listener, &mut stop).await {
        let conn = tls_connection(stream, peer, app.clone(), acceptor.clone(), conns.clone());
        tokio::spawn(conn);
    }
}

/// Edge HTTP/2: a PING after this long without a frame from the client.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Edge HTTP/2: the connection is closed when a PING is not acknowledged within this.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// One edge connection: the TLS handshake (bounded by `server.header_read_timeout`), then
/// HTTP/1.1 or HTTP/2 as ALPN chose, upgrades allowed, until it ends or the stop signal.
async fn tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    acceptor: TlsAcceptor,
    conns: Connections,
) {
    let cfg = app.runtime().config.server.clone();
    let tls = match tokio::time::timeout(cfg.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return tracing::debug!(error = %err, %peer, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    // Pings find dead HTTP/2 connections (a vanished phone, a NAT that dropped the flow) that
    // would otherwise hold their streams open forever (security rule 6).
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    let max_head = cfg.max_header_bytes;
    let service = service_fn(move |req| {
        let app = app.clone();
        async move {
            if let Some(refused) =
                head_too_large(&app, &req, max_head, peer, || Some(Endpoint::Edge))
            {
                return Ok::<_, Infallible>(refused);
            }
            Ok::<_, Infallible>(edge::handle(app, req, peer).await)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    let shutdown = |c: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(c);
    serve_until_stopped(conn, shutdown, conns, peer, "edge connection", boxed_hyper).await;
}

/// Drives `conn` until it ends, or until the stop signal asks it (through `shutdown`) to finish
/// the request in flight and close (no new keepalive requests). An end by a refused request
/// head is logged with its cause (`hyper_error` finds hyper's error in `E`); other error ends
/// (a client gone, an idle keepalive timed out) at debug. The liveness token in `conns` is
/// held until then, so a drain waits for this connection.
async fn serve_until_stopped<C, E>(
    conn: C,
    shutdown: impl FnOnce(Pin<&mut C>),
    conns: Connections,
    peer: SocketAddr,
    what: &'static str,
    hyper_error: fn(&E) -> Option<&hyper::Error>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Connections { alive, mut stop } = conns;
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut stop) => {
            shutdown(conn.as_mut());
            conn.await
        }
    };
    if let Err(err) = result {
        match hyper_error(&err) {
            Some(e) if e.is_parse_too_large() => tracing::warn!(
                error = %err,
                %peer,
                "request head too large (answered 431): see server.max_header_bytes"
            ),
            Some(e) if e.is_parse() => {
                tracing::info!(error = %err, %peer, "malformed request refused (answered 400)")
            }
            _ => tracing::debug!(error = %err, %peer, "{what} ended with an error"),
        }
    }
    drop(alive);
}

fn as_hyper(e: &hyper::Error) -> Option<&hyper::Error> {
    Some(e)
}

/// hyper's error inside the auto (HTTP/1.1 + HTTP/2) connection's boxed one. The `&Box` is the
/// connection's error type as `serve_until_stopped` passes it.
#[allow(clippy::borrowed_box)]
fn boxed_hyper(e: &Box<dyn std::error::Error + Send + Sync>) -> Option<&hyper::Error> {
    e.downcast_ref()
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Serves one connection until it ends, or until the stop signal asks it to finish the request
/// in flight and close.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    kind: Kind,
    conns: Connections,
) {
    let cfg = app.runtime().config.server.clone();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        // Header names go out lower case (RFC 9110 section 5.1: case-insensitive; Traefik,
        // Caddy and nginx all match them so). Title-casing cost 5% of a cache hit in hyper's
        // per-byte writer (perf, benches/RESULTS.md).
        // hyper answers 431 when the head outgrows this buffer.
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    // hyper checks its buffer only between reads, so a head up to about twice `max_buf_size`
    // can parse; the exact bound of `server.max_header_bytes` is enforced here.
    let max_head = cfg.max_header_bytes;
    let service = service_fn(move |req| {
        let app = app.clone();
        async move {
            let endpoint = || match kind {
                Kind::Main => router::endpoint(req.uri().path()),
                Kind::Admin | Kind::Redirect(_) => None,
            };
            if let Some(refused) = head_too_large(&app, &req, max_head, peer, endpoint) {
                return Ok::<_, Infallible>(refused);
            }
            Ok::<_, Infallible>(match kind {
                Kind::Main => router::handle(app, req, peer, false).await,
                Kind::Admin => admin::handle(&app, &req),
                Kind::Redirect(port) => edge::redirect(&app, &req, peer, port),
            })
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let shutdown = |c: Pin<&mut _>| http1::Connection::graceful_shutdown(c);
    serve_until_stopped(conn, shutdown, conns, peer, "connection", as_hyper).await;
}

/// The 431 for a head over `server.max_header_bytes`, logged and counted (as an `error` of
/// `endpoint`, when it has one) so an operator sees the refusals.
fn head_too_large(
    app: &App,
    req: &http::Request<hyper::body::Incoming>,
    max_head: usize,
    peer: SocketAddr,
    endpoint: impl FnOnce() -> Option<Endpoint>,
) -> Option<http::Response<crate::body::Body>> {
    let bytes = head_len(req);
    if bytes <= max_head {
        return None;
    }
    tracing::warn!(
        %peer,
        bytes,
        limit = max_head,
        path = %req.uri().path().chars().take(256).collect::<String>(),
        "request head over server.max_header_bytes (answered 431)"
    );
    if let Some(endpoint) = endpoint() {
        app.metrics.request(endpoint, Decision::Error, 0.0);
    }
    Some(crate::error::ProxyError::HeadTooLarge.response())
}

/// The size of a request head as sent on the wire (request line, header lines, blank line).
fn head_len(req: &http::Request<hyper::body::Incoming>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    // "METHOD SP target SP HTTP/1.1 CRLF" ... "CRLF"
    let line = req.method().as_str().len() + 1 + target + 11;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + headers + 2
}
