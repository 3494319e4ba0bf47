//! Edge mode end to end: a real TLS client (rustls, SNI, ALPN) against the HTTPS listener, a
//! fake outpost behind the pipeline, and a recording backend. Certificates are made here with
//! rcgen (ring), never read from the repository.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::app::App;
use portcullis::config::{CertConfig, Config, EdgeConfig, RouteAuth, RouteConfig};
use portcullis::demo::outpost::{Behaviour, FakeOutpost};
use portcullis::metrics::{Decision, Endpoint, Metrics};
use portcullis::server::{self, Listeners};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

use support::Reply;

/// Hosts of the main certificate; `other.example` has a certificate of its own.
const MAIN_HOSTS: [&str; 5] = [
    "app.example",
    "open.example",
    "lan.example",
    "wan.example",
    "stall.example",
];

/// One request as the backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    /// The request target as received (path and query).
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An HTTP/1.1 backend that records requests, echoes bodies and accepts WebSocket upgrades
/// (answers 101, then echoes bytes).
#[derive(Clone)]
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
        };
        let seen = backend.seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                let service = service_fn(move |req| serve_backend(seen.clone(), req));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        backend
    }

    fn url(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the backend received a request")
    }
}

async fn serve_backend(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        record(&seen, &req, Bytes::new());
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::default())
            .unwrap());
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    record(&seen, &Request::from_parts(parts, ()), body.clone());
    Ok(Response::new(Full::new(body)))
}

fn record<B>(seen: &Mutex<Vec<Seen>>, req: &Request<B>, body: Bytes) {
    seen.lock().unwrap().push(Seen {
        version: req.version(),
        target: req.uri().to_string(),
        headers: req.headers().clone(),
        body,
    });
}

/// A backend that answers every request with a 200 head and one chunk of a chunked body, then
/// goes silent with the connection open; counts the connections the proxy closed.
async fn start_stalling_backend() -> (http::Uri, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let counter = closed.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                stream.write_all(answer).await.unwrap();
                // Silent until the proxy gives up and closes.
                while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                counter.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, closed)
}

/// A self-signed certificate for `names`, written as PEM into `dir`; returns its DER.
fn write_cert(dir: &Path, stem: &str, names: &[&str]) -> (CertConfig, CertificateDer<'static>) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let der = ck.cert.der().clone();
    (CertConfig { cert, key }, der)
}

fn route(host: &str, backend: &Backend, auth: RouteAuth, local: &[&str]) -> RouteConfig {
    RouteConfig {
        host: host.to_owned(),
        backend: backend.url(),
        auth,
        local_networks: local.iter().map(|n| n.parse().unwrap()).collect(),
    }
}

/// A proxy in edge mode, its outpost and its backend.
struct Edge {
    https: SocketAddr,
    http: SocketAddr,
    app: Arc<App>,
    outpost: FakeOutpost,
    backend: Backend,
    /// Connections of the stalling backend (`stall.example`) the proxy closed.
    stall_closed: Arc<AtomicUsize>,
    roots: Vec<CertificateDer<'static>>,
    other_cert: CertConfig,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Edge {
    start_with(|_| {}).await
}

/// [`start`] with a change to the config before the proxy is built.
async fn start_with(tweak: impl FnOnce(&mut Config)) -> Edge {
    let dir = support::temp_dir("edge");
    let (main_cert, main_der) = write_cert(&dir, "main", &MAIN_HOSTS);
    let (other_cert, other_der) = write_cert(&dir, "other", &["other.example"]);
    let outpost = support::outpost().await;
    let backend = Backend::start().await;
    let (stall_url, stall_closed) = start_stalling_backend().await;
    let mut config: Config = support::config_for(&outpost.url());
    config.edge = Some(EdgeConfig {
        listen_https: "127.0.0.1:0".parse().unwrap(),
        listen_http: Some("127.0.0.1:0".parse().unwrap()),
        certs: vec![main_cert, other_cert.clone()],
        routes: vec![
            route("app.example", &backend, RouteAuth::Required, &[]),
            route("open.example", &backend, RouteAuth::None, &[]),
            route(
                "lan.example",
                &backend,
                RouteAuth::LocalOrAuth,
                &["127.0.0.0/8"],
            ),
            route(
                "wan.example",
                &backend,
                RouteAuth::LocalOrAuth,
                &["10.0.0.0/8"],
            ),
            route("other.example", &backend, RouteAuth::None, &[]),
            RouteConfig {
                host: "stall.example".to_owned(),
                backend: stall_url,
                auth: RouteAuth::None,
                local_networks: Vec::new(),
            },
        ],
    });
    tweak(&mut config);
    let mut listeners = Listeners::bind(config.server.listen, config.server.admin_listen)
        .await
        .unwrap();
    listeners
        .bind_edge(config.edge.as_ref().unwrap())
        .await
        .unwrap();
    let edge = listeners.edge.as_ref().unwrap();
    let https = edge.https.local_addr().unwrap();
    let http = edge.http.as_ref().unwrap().local_addr().unwrap();
    let app = App::new(config, Metrics::new()).unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(server::run(app.clone(), listeners, async {
        let _ = rx.await;
    }));
    Edge {
        https,
        http,
        app,
        outpost,
        backend,
        stall_closed,
        roots: vec![main_der, other_der],
        other_cert,
        _stop: tx,
    }
}

/// A TLS connection to `addr` with SNI `name`, trusting `roots`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(server_name, tcp).await.unwrap()
}

/// An HTTP/1.1 connection over TLS to `host` (SNI), its connection task spawned (upgrades
/// allowed); the task's handle tells when the proxy closed the connection.
async fn h1_sender(
    edge: &Edge,
    host: &str,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tls = connect(edge.https, host, &edge.roots, &[b"http/1.1"]).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    (sender, tokio::spawn(conn.with_upgrades()))
}

/// An HTTP/2 connection over `tls`, its connection task spawned.
async fn h2_handshake(
    tls: TlsStream<TcpStream>,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A WebSocket upgrade of `/ws` on `open.example`, answered 101 by the backend through the proxy.
async fn open_websocket(edge: &Edge) -> Response<Incoming> {
    let (mut sender, _conn) = h1_sender(edge, "open.example").await;
    let req = Request::builder()
        .uri("/ws")
        .header("host", "open.example")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    resp
}

/// The leaf certificate the server presented.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

impl Edge {
    /// One HTTP/1.1 request over TLS to `host` (SNI and Host), with `headers` and `body`.
    async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let (mut sender, _conn) = h1_sender(self, host).await;
        let mut b = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", host);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            sender.send_request(b.body(Full::new(body)).unwrap()),
        )
        .await
        .expect("answered within 10 s")
        .unwrap();
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", host, path, headers, Bytes::new()).await
    }

    /// Shortens the backend idle deadlines (body frames, tunnels) for this proxy.
    fn set_idle_timeouts(&self, stream: Duration, tunnel: Duration) {
        let rt = self.app.runtime();
        let edge = rt.edge.as_ref().expect("edge mode");
        edge.backends.set_idle_timeouts(stream, tunnel);
    }

    /// `requests_total` of the edge endpoint for `decision`.
    fn requests_total(&self, decision: Decision) -> u64 {
        self.app.metrics.requests_total(Endpoint::Edge, decision)
    }

    /// Neither the backend nor the outpost's auth endpoint saw a request.
    fn assert_nothing_reached(&self) {
        assert!(self.backend.requests().is_empty());
        assert_eq!(self.outpost.stats().auth_requests, 0);
    }

    fn session_cookie(&self) -> String {
        format!(
            "{}={}",
            self.outpost.cookie_name(),
            self.outpost.login("akadmin")
        )
    }
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

/// The headers a hostile client sends: an identity and forwarding claims in several spellings.
const SPOOFED: [(&str, &str); 5] = [
    ("X-authentik-groups", "admins"),
    ("X_authentik_username", "mallory"),
    ("X-Forwarded-For", "198.51.100.1"),
    ("Forwarded", "for=198.51.100.1"),
    ("X-Original-URL", "/admin"),
];

fn assert_no_spoofed_headers(seen: &Seen) {
    assert_eq!(header(seen, "x_authentik_username"), None);
    assert_ne!(header(seen, "x-authentik-groups"), Some("admins"));
    assert_eq!(header(seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(seen, "forwarded"), None);
    assert_eq!(header(seen, "x-original-url"), None);
}

#[tokio::test]
async fn sni_picks_the_certificate_valid_for_the_name() {
    let edge = start().await;
    let main = connect(edge.https, "app.example", &edge.roots, &[]).await;
    let other = connect(edge.https, "other.example", &edge.roots, &[]).await;
    assert_eq!(presented(&main), edge.roots[0]);
    assert_eq!(presented(&other), edge.roots[1]);
}

#[tokio::test]
async fn required_route_without_session_relays_the_outpost_redirect() {
    let edge = start().await;
    let r = edge.get("app.example", "/dashboard", &[]).await;
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains("authorize"), "{r:?}");
    assert!(edge.backend.requests().is_empty());
    let auth = edge.outpost.requests().pop().unwrap();
    assert_eq!(auth.headers["x-forwarded-proto"], "https");
    assert_eq!(auth.headers["x-forwarded-host"], "app.example");
    assert_eq!(auth.headers["x-forwarded-uri"], "/dashboard");
    assert_eq!(edge.requests_total(Decision::Deny), 1);
}

#[tokio::test]
async fn a_trusted_peer_cannot_steer_the_decision_with_forwarded_headers() {
    // Even from a trusted proxy, edge mode judges the request itself: a forwarded URI naming the
    // skip path must not let `/admin` through as `/public`.
    let edge = start_with(support::trust_loopback).await;
    let spoof = [
        ("x-forwarded-uri", "/public/page"),
        ("x-forwarded-host", "open.example"),
        ("x-forwarded-proto", "http"),
    ];
    let r = edge.get("app.example", "/admin", &spoof).await;
    assert_eq!(r.status, 302, "{r:?}");
    assert!(edge.backend.requests().is_empty());
    let auth = edge.outpost.requests().pop().unwrap();
    assert_eq!(auth.headers["x-forwarded-uri"], "/admin");
    assert_eq!(auth.headers["x-forwarded-host"], "app.example");
    assert_eq!(auth.headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn session_reaches_backend_with_identity_and_client_identity_is_gone() {
    let edge = start().await;
    let cookie = edge.session_cookie();
    let mut headers = vec![("cookie", cookie.as_str())];
    headers.extend_from_slice(&SPOOFED);
    let r = edge.get("app.example", "/dashboard?x=1", &headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "x-authentik-username"), Some("akadmin"));
    assert_no_spoofed_headers(&seen);
    assert_eq!(header(&seen, "host"), Some("app.example"));
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("https"));
    assert_eq!(header(&seen, "x-forwarded-host"), Some("app.example"));
    assert_eq!(edge.requests_total(Decision::Allow), 1);
}

#[tokio::test]
async fn unauthenticated_route_reaches_backend_and_still_strips_client_identity() {
    let edge = start().await;
    let r = edge.get("open.example", "/", &SPOOFED).await;
    assert_eq!(r.status, 200);
    let seen = edge.backend.last();
    assert_no_spoofed_headers(&seen);
    assert_eq!(header(&seen, "x-authentik-groups"), None);
    assert_eq!(edge.outpost.stats().auth_requests, 0);
    assert_eq!(edge.requests_total(Decision::Passthrough), 1);
}

#[tokio::test]
async fn local_or_auth_passes_local_clients_and_challenges_others() {
    let edge = start().await;
    let r = edge.get("lan.example", "/", &SPOOFED).await;
    assert_eq!(r.status, 200);
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "x-authentik-username"), None);
    assert_no_spoofed_headers(&seen);
    // Loopback is outside 10.0.0.0/8: auth is required.
    let r = edge.get("wan.example", "/", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(edge.backend.requests().len(), 1);
}

#[tokio::test]
async fn local_networks_match_the_tcp_peer_never_a_forwarded_address() {
    // Even a trusted peer's X-Forwarded-For cannot make a client local: wan.example lets
    // 10.0.0.0/8 in, the peer is loopback, so a login is still required.
    let edge =
        start_with(|c| c.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    for claim in ["10.1.2.3", "198.51.100.7, 10.1.2.3"] {
        let r = edge
            .get("wan.example", "/", &[("x-forwarded-for", claim)])
            .await;
        assert_eq!(r.status, 302, "{claim}: {r:?}");
    }
    let r = edge
        .get("wan.example", "/", &[("x-real-ip", "10.1.2.3")])
        .await;
    assert_eq!(r.status, 302);
    assert!(edge.backend.requests().is_empty());
    assert_eq!(edge.outpost.stats().auth_requests, 3);
}

#[tokio::test]
async fn backend_sees_the_peer_in_x_real_ip_not_the_clients_claim() {
    let edge = start().await;
    let r = edge
        .get(
            "open.example",
            "/",
            &[
                ("x-real-ip", "10.9.9.9"),
                ("X_Real_IP", "10.8.8.8"),
                ("x.real.ip", "10.7.7.7"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "x_real_ip"), None);
    assert_eq!(header(&seen, "x.real.ip"), None);
    let real: Vec<_> = seen.headers.get_all("x-real-ip").iter().collect();
    assert_eq!(real, ["127.0.0.1"]);
    assert_eq!(header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn outpost_paths_go_to_the_outpost_on_every_host() {
    let edge = start().await;
    let r = edge
        .get("app.example", "/outpost.goauthentik.io/ping", &[])
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(edge.outpost.stats().pings, 1);
    assert!(edge.backend.requests().is_empty());
}

#[tokio::test]
async fn emergency_logins_are_limited_by_the_tcp_peer_never_a_forwarded_address() {
    // Even a trusted peer's X-Forwarded-For does not name the client at the edge: ten failures
    // claiming ten addresses limit the one peer they all came from.
    let edge =
        start_with(|c| c.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    edge.outpost.set_behaviour(Behaviour::Status(503));
    for i in 0..10 {
        let (auth, forwarded) = (
            support::basic(&format!("nobody-{i}"), "wrong"),
            format!("10.0.0.{i}"),
        );
        let headers = [
            ("authorization", auth.as_str()),
            ("x-forwarded-for", forwarded.as_str()),
        ];
        let r = edge.get("app.example", "/", &headers).await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let auth = support::basic(support::FALLBACK_USER, support::FALLBACK_PASSWORD);
    let headers = [
        ("authorization", auth.as_str()),
        ("x-forwarded-for", "10.0.0.99"),
    ];
    let r = edge.get("app.example", "/", &headers).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(edge.backend.requests().is_empty());
}

#[tokio::test]
async fn outpost_down_lets_fallback_credentials_through_with_the_marker() {
    let edge = start().await;
    edge.outpost.set_behaviour(Behaviour::Status(503));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        support::FALLBACK_USER,
        support::FALLBACK_PASSWORD
    ));
    let auth = format!("Basic {basic}");
    let r = edge
        .get(
            "app.example",
            "/",
            &[
                ("authorization", auth.as_str()),
                ("x-auth-fallback", "forged"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "x-authentik-username"), Some("admin"));
    assert_eq!(header(&seen, "x-auth-fallback"), Some("true"));
    assert_eq!(
        header(&seen, "authorization"),
        None,
        "the emergency password stays here"
    );
    // Without credentials the browser gets the Basic challenge.
    let r = edge.get("app.example", "/", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic realm="));
}

#[tokio::test]
async fn large_request_body_streams_to_the_backend_and_back_intact() {
    let edge = start().await;
    let body: Bytes = (0..1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let r = edge
        .send("POST", "open.example", "/upload", &[], body.clone())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(edge.backend.last().body, body);
    assert_eq!(r.body, body);
}

#[tokio::test]
async fn http2_over_alpn_reaches_the_backend_as_http1() {
    let edge = start().await;
    let tls = connect(
        edge.https,
        "open.example",
        &edge.roots,
        &[b"h2", b"http/1.1"],
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = h2_handshake(tls).await;
    let req = Request::builder()
        .uri("https://open.example/h2")
        .header("x-authentik-username", "mallory")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let seen = edge.backend.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(header(&seen, "host"), Some("open.example"));
    assert_eq!(header(&seen, "x-authentik-username"), None);
}

#[tokio::test]
async fn websocket_upgrade_tunnels_bytes_both_ways() {
    let edge = start().await;
    let resp = open_websocket(&edge).await;
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for msg in [&b"hello"[..], b"over the tunnel"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test]
async fn plain_http_redirects_configured_hosts_to_https() {
    let edge = start().await;
    let url = format!("http://{}/path?q=1", edge.http);
    let r = support::get(&url, &[("host", "App.Example")]).await;
    assert_eq!(r.status, 308);
    let want = format!("https://app.example:{}/path?q=1", edge.https.port());
    assert_eq!(r.header("location"), Some(want.as_str()));
    let r = support::get(&url, &[("host", "evil.example")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("location"), None);
}

#[tokio::test]
async fn unknown_host_is_not_found() {
    let edge = start().await;
    let r = edge
        .get("app.example", "/", &[("host", "nothere.example")])
        .await;
    assert_eq!(r.status, 404);
    assert!(edge.backend.requests().is_empty());
}

#[tokio::test]
async fn replaced_certificate_is_served_within_seconds() {
    let edge = start().await;
    let dir: PathBuf = edge.other_cert.cert.parent().unwrap().to_owned();
    let (fresh, fresh_der) = write_cert(&dir, "fresh", &["other.example"]);
    // Key first, then the certificate, as a renewal tool might (a half-done pair is refused
    // and the old one kept until the pair matches).
    std::fs::rename(&fresh.key, &edge.other_cert.key).unwrap();
    std::fs::rename(&fresh.cert, &edge.other_cert.cert).unwrap();
    let mut roots = edge.roots.clone();
    roots.push(fresh_der.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let tls = connect(edge.https, "other.example", &roots, &[]).await;
        if presented(&tls) == fresh_der {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other hosts keep their certificate.
    let main = connect(edge.https, "app.example", &roots, &[]).await;
    assert_eq!(presented(&main), edge.roots[0]);
}

#[tokio::test]
async fn dot_segment_paths_are_refused_before_auth_and_never_reach_the_backend() {
    let edge = start().await;
    // `/public` is the outpost's skip prefix: these passed auth as "public" and a normalising
    // backend served /admin.
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/..%2fadmin",
        "/public/.%2E%5cadmin",
        "/public%5cadmin",
    ] {
        let r = edge.get("app.example", path, &[]).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        // Also where no auth runs at all.
        let r = edge.get("open.example", path, &[]).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    edge.assert_nothing_reached();
    assert_eq!(edge.requests_total(Decision::Error), 12);
}

#[tokio::test]
async fn encoded_slash_inside_a_segment_still_reaches_the_backend() {
    let edge = start().await;
    let path = "/api/v4/projects/group%2Fproject/repository/files/a%2Fb.txt?ref=main";
    let r = edge.get("open.example", path, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(edge.backend.last().target, path);
    // The skip prefix still works for a plain public path.
    let r = edge.get("app.example", "/public/logo.png", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(edge.backend.last().target, "/public/logo.png");
}

#[tokio::test]
async fn malformed_host_is_refused_and_never_routed() {
    let edge = start().await;
    for host in [
        "app.example:1@evil.example",
        "open.example:1@evil.example",
        "open.example:evil",
        "open.example:",
        "open.example..",
        "open.example:443:443",
    ] {
        let r = edge.get("open.example", "/", &[("host", host)]).await;
        assert_eq!(r.status, 400, "{host}: {r:?}");
    }
    edge.assert_nothing_reached();
}

#[tokio::test]
async fn backend_sees_the_configured_host_and_only_a_numeric_client_port() {
    let edge = start().await;
    let r = edge
        .get("open.example", "/", &[("host", "OPEN.Example.:8443")])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "host"), Some("open.example:8443"));
    assert_eq!(header(&seen, "x-forwarded-host"), Some("open.example:8443"));
    let r = edge
        .get("open.example", "/", &[("host", "Open.Example")])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "host"), Some("open.example"));
    assert_eq!(header(&seen, "x-forwarded-host"), Some("open.example"));
}

/// An HTTP/2 connection to `open.example`.
async fn h2_sender(edge: &Edge) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tls = connect(edge.https, "open.example", &edge.roots, &[b"h2"]).await;
    h2_handshake(tls).await
}

#[tokio::test]
async fn http2_authority_is_the_host_and_a_conflicting_host_field_is_refused() {
    let edge = start().await;
    let mut sender = h2_sender(&edge).await;
    let req = Request::builder()
        .uri("https://Open.Example:8443/h2")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "host"), Some("open.example:8443"));
    assert_eq!(header(&seen, "x-forwarded-host"), Some("open.example:8443"));
    let req = Request::builder()
        .uri("https://open.example/h2")
        .header("host", "app.example")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    let req = Request::builder()
        .uri("https://open.example:1@evil.example/h2")
        .body(Full::<Bytes>::default());
    // The client library may refuse userinfo itself; if it sends it, the proxy must refuse.
    if let Ok(req) = req {
        if let Ok(resp) = sender.send_request(req).await {
            assert_eq!(resp.status(), 400);
        }
    }
    assert_eq!(edge.backend.requests().len(), 1);
}

#[tokio::test]
async fn backend_that_stalls_after_the_headers_gets_the_client_connection_cut() {
    let edge = start().await;
    edge.set_idle_timeouts(Duration::from_millis(300), Duration::from_secs(600));
    let (mut sender, conn) = h1_sender(&edge, "stall.example").await;
    let req = Request::builder()
        .uri("/report")
        .header("host", "stall.example")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "hello");
    let next = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the proxy gave up on the silent backend within 5 s");
    assert!(
        matches!(next, Some(Err(_))),
        "a cut body, not a clean end: {next:?}"
    );
    // The client connection is gone, and so is the backend one.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "client connection still open");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while edge.stall_closed.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend connection still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn client_that_stalls_mid_body_is_cut_after_the_idle_timeout() {
    let edge = start().await;
    edge.set_idle_timeouts(Duration::from_millis(300), Duration::from_secs(600));
    let mut tls = connect(edge.https, "open.example", &edge.roots, &[b"http/1.1"]).await;
    let head = "POST /upload HTTP/1.1\r\nhost: open.example\r\ncontent-length: 100\r\n\r\n";
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(b"only ten b").await.unwrap();
    tls.flush().await.unwrap();
    // The rest never comes: the backend leg must be abandoned, not held for ever.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 5 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}

#[tokio::test]
async fn idle_websocket_tunnel_is_closed_after_the_tunnel_timeout() {
    let edge = start().await;
    edge.set_idle_timeouts(Duration::from_secs(60), Duration::from_millis(300));
    let resp = open_websocket(&edge).await;
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut rest))
        .await
        .expect("the idle tunnel was closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, no data");
}

/// `Authorization: Basic` with the emergency realm's credentials.
fn fallback_authorization() -> String {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        support::FALLBACK_USER,
        support::FALLBACK_PASSWORD
    ));
    format!("Basic {basic}")
}

#[tokio::test]
async fn connection_header_cannot_remove_the_fallback_marker_or_identity() {
    // GHSA-62c8-mh53-4cqv: a client lists what the proxy sets in `Connection`, hoping hop-by-hop
    // cleanup deletes it after it was set. The fallback marker must always reach the backend.
    let edge = start().await;
    edge.outpost.set_behaviour(Behaviour::Status(503));
    let auth = fallback_authorization();
    let listed = "keep-alive, X-Auth-Fallback, X-authentik-username, X-authentik-groups";
    let r = edge
        .get(
            "app.example",
            "/",
            &[("authorization", auth.as_str()), ("connection", listed)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "x-auth-fallback"), Some("true"), "{seen:?}");
    assert_eq!(header(&seen, "x-authentik-username"), Some("admin"));
    assert!(header(&seen, "x-authentik-groups").is_some(), "{seen:?}");
    assert_eq!(header(&seen, "authorization"), None);
    assert_eq!(header(&seen, "connection"), None);
    assert_eq!(edge.requests_total(Decision::FallbackAllow), 1);
}

#[tokio::test]
async fn connection_header_cannot_remove_session_identity_headers() {
    // `wan.example` is local-or-auth and loopback is not local there: the same auth path.
    let edge = start().await;
    let cookie = edge.session_cookie();
    for host in ["app.example", "wan.example"] {
        let r = edge
            .get(
                host,
                "/",
                &[
                    ("cookie", cookie.as_str()),
                    ("connection", "X-authentik-groups, X-authentik-uid"),
                    ("x-authentik-groups", "admins"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
        let seen = edge.backend.last();
        for name in support::IDENTITY {
            assert!(seen.headers.contains_key(name), "{host}: {name} missing");
        }
        assert_eq!(header(&seen, "x-authentik-username"), Some("akadmin"));
        assert!(!header(&seen, "x-authentik-uid").unwrap().is_empty());
        assert_ne!(header(&seen, "x-authentik-groups"), Some("admins"));
        assert_eq!(seen.headers.get_all("x-authentik-groups").iter().count(), 1);
    }
    assert_eq!(edge.requests_total(Decision::Allow), 2);
}

#[tokio::test]
async fn connection_listed_client_header_does_not_reach_the_backend_on_any_route() {
    let edge = start().await;
    let cookie = edge.session_cookie();
    // Auth required, auth none, local-or-auth from a local network.
    for host in ["app.example", "open.example", "lan.example"] {
        let r = edge
            .get(
                host,
                "/",
                &[
                    ("cookie", cookie.as_str()),
                    ("connection", "keep-alive, X-Custom"),
                    ("x-custom", "1"),
                    ("x-kept", "2"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
        let seen = edge.backend.last();
        assert_eq!(header(&seen, "x-custom"), None, "{host}: {seen:?}");
        assert_eq!(header(&seen, "x-kept"), Some("2"), "{host}");
        assert_eq!(header(&seen, "connection"), None, "{host}");
        assert_eq!(header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    }
}

#[tokio::test]
async fn websocket_upgrade_on_an_auth_route_keeps_identity_listed_in_connection() {
    let edge = start().await;
    let cookie = edge.session_cookie();
    let (mut sender, _conn) = h1_sender(&edge, "app.example").await;
    let req = Request::builder()
        .uri("/ws")
        .header("host", "app.example")
        .header("cookie", cookie.as_str())
        .header("connection", "Upgrade, X-authentik-username, X-Custom")
        .header("upgrade", "websocket")
        .header("x-custom", "1")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "x-authentik-username"), Some("akadmin"));
    assert_eq!(header(&seen, "upgrade"), Some("websocket"));
    assert_eq!(header(&seen, "connection"), Some("upgrade"));
    assert_eq!(header(&seen, "x-custom"), None);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled_never_h2c() {
    let edge = start().await;
    let cookie = edge.session_cookie();
    let r = edge
        .get(
            "app.example",
            "/h2c",
            &[
                ("cookie", cookie.as_str()),
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        )
        .await;
    // An h2c tunnel would carry requests the proxy never sees (so never strips): the request
    // goes on as a plain one, without the upgrade.
    assert_ne!(r.status, StatusCode::SWITCHING_PROTOCOLS, "{r:?}");
    let seen = edge.backend.last();
    assert_eq!(header(&seen, "upgrade"), None);
    assert_eq!(header(&seen, "http2-settings"), None);
    assert_eq!(header(&seen, "x-authentik-username"), Some("akadmin"));
}

#[tokio::test]
async fn path_parameter_and_blank_dot_segments_are_refused_like_plain_ones() {
    let edge = start().await;
    // Tomcat and Spring resolve `..;` as `..`: `/public/..;/admin` passed the outpost as its
    // `/public` skip path and was served as `/admin`.
    for path in [
        "/public/..;/admin",
        "/public/..%3b/admin",
        "/public/..;x=1/admin",
        "/public/.;/admin",
        "/public/%2e%2e;/admin",
        "/public/..%00/admin",
        "/public/..%20/admin",
    ] {
        let r = edge.get("app.example", path, &[]).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    edge.assert_nothing_reached();
}

#[tokio::test]
async fn outpost_paths_see_the_configured_host_and_only_generated_forwarding() {
    let edge =
        start_with(|c| c.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    // A host that is no route still reaches the outpost (authentik's domain-level mode logs in
    // on an auth host of its own), with that host as checked and nothing the peer claims.
    let r = edge
        .get(
            "app.example",
            "/outpost.goauthentik.io/start?rd=/",
            &[
                ("host", "auth.example"),
                ("x-forwarded-host", "evil.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 302, "{r:?}");
    let seen = edge
        .outpost
        .requests()
        .pop()
        .expect("the outpost was asked");
    assert_eq!(seen.headers["host"], "auth.example");
    assert_eq!(seen.headers["x-forwarded-host"], "auth.example");
    // A configured host, typed in capitals, from a peer that is a trusted proxy in auth-tier
    // terms: the outpost sees the configured host and this proxy's forwarding, nothing claimed.
    let r = edge
        .get(
            "app.example",
            "/outpost.goauthentik.io/start?rd=/",
            &[
                ("host", "APP.EXAMPLE"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-uri", "/other"),
                ("x-forwarded-for", "203.0.113.66"),
            ],
        )
        .await;
    assert_eq!(r.status, 302, "{r:?}");
    let seen = edge
        .outpost
        .requests()
        .pop()
        .expect("the outpost was asked");
    assert_eq!(seen.headers["host"], "app.example");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(seen.headers["x-forwarded-uri"]
        .to_str()
        .unwrap()
        .starts_with("/outpost.goauthentik.io/start"));
}

#[tokio::test]
async fn fallback_marker_spellings_from_the_client_never_reach_the_backend() {
    let edge = start().await;
    let r = edge
        .get(
            "open.example",
            "/",
            &[
                ("x-auth_fallback", "true"),
                ("X.Auth.Fallback", "true"),
                ("X_AUTH_FALLBACK", "true"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = edge.backend.last();
    for name in [
        "x-auth_fallback",
        "x.auth.fallback",
        "x_auth_fallback",
        "x-auth-fallback",
    ] {
        assert_eq!(header(&seen, name), None, "{name}");
    }
}

#[tokio::test]
async fn plain_http_redirect_of_an_asterisk_target_goes_to_the_root() {
    let edge = start().await;
    let mut s = TcpStream::connect(edge.http).await.unwrap();
    s.write_all(b"OPTIONS * HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let want = format!("location: https://app.example:{}/\r\n", edge.https.port());
    assert!(text.contains(&want), "{text}");
}
