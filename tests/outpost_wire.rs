//! The auth leg on the wire: answers framed every way HTTP/1.1 allows (and ways it forbids),
//! from a scripted outpost that writes raw bytes. What must hold: a well-framed answer is read
//! whole and its connection reused; a broken one fails closed (502, never the emergency realm)
//! and its connection is never reused; nothing after an answer is ever taken for the next one.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::metrics::Attempt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUTH: &str = "/outpost.goauthentik.io/auth/traefik";

/// What the scripted outpost does with one request.
#[derive(Clone)]
enum Step {
    /// Write these bytes and keep the connection.
    Write(&'static [u8]),
    /// Write these bytes and close.
    WriteClose(&'static [u8]),
    /// Close without a byte of an answer.
    Close,
}

/// An outpost that plays `script` in order, one step per request, across connections.
struct Scripted {
    url: String,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

async fn scripted(script: Vec<Step>) -> Scripted {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let steps = Arc::new(Mutex::new(script.into_iter()));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (steps, r) = (steps.clone(), r.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        r.fetch_add(1, Ordering::SeqCst);
                        let step = steps.lock().unwrap().next();
                        match step {
                            Some(Step::Write(bytes)) => {
                                let _ = sock.write_all(bytes).await;
                            }
                            Some(Step::WriteClose(bytes)) => {
                                let _ = sock.write_all(bytes).await;
                                return;
                            }
                            Some(Step::Close) | None => return,
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Scripted {
        url,
        connections,
        requests,
    }
}

/// The outpost's allow for akadmin, title-cased like Go, with `tail` after the fields.
macro_rules! allow {
    ($tail:expr) => {
        concat!(
            "HTTP/1.1 200 OK\r\n",
            "X-Authentik-Username: akadmin\r\n",
            "X-Authentik-Groups: admins\r\n",
            "X-Authentik-Uid: 42\r\n",
            "Date: Tue, 24 Nov 2026 21:00:00 GMT\r\n",
            $tail
        )
        .as_bytes()
    };
}

const REDIRECT: &[u8] = b"HTTP/1.1 302 Found\r\nLocation: https://auth.example/start\r\n\
    Content-Length: 5\r\n\r\nFound";

async fn proxy_for(outpost: &Scripted) -> Harness {
    let url = outpost.url.clone();
    start(move |c| {
        trust_loopback(c);
        c.outpost.url = url.parse().unwrap();
        c.outpost.timeout = Duration::from_secs(2);
        c.cache.ttl = Duration::ZERO;
        c.fallback.probe_interval = Duration::from_secs(60);
    })
    .await
}

/// Every check carries valid emergency credentials: a violation that reached the realm would
/// come back as a fallback allow.
async fn check(h: &Harness) -> Reply {
    let auth = basic(FALLBACK_USER, FALLBACK_PASSWORD);
    let cookie = format!("{}=session-1", h.outpost.cookie_name());
    get(
        &h.url(AUTH),
        &traefik_headers(&[("cookie", &cookie), ("authorization", &auth)]),
    )
    .await
}

fn assert_akadmin(r: &Reply) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    assert_eq!(r.header("x-authentik-groups"), Some("admins"));
    assert_eq!(r.header("x-auth-fallback"), None);
}

fn assert_failed_closed(r: &Reply) {
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-authentik-username"), None);
    assert_eq!(r.header("x-auth-fallback"), None);
}

#[tokio::test]
async fn chunked_and_length_framed_answers_are_read_whole_on_one_connection() {
    let outpost = scripted(vec![
        Step::Write(allow!(
            "Transfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"
        )),
        Step::Write(allow!("Content-Length: 2\r\n\r\nok")),
        Step::Write(allow!("Content-Length: 0\r\n\r\n")),
    ])
    .await;
    let h = proxy_for(&outpost).await;
    for _ in 0..3 {
        assert_akadmin(&check(&h).await);
    }
    assert_eq!(outpost.requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        outpost.connections.load(Ordering::SeqCst),
        1,
        "every answer was framed: the connection was kept"
    );
}

#[tokio::test]
async fn a_user_in_hundreds_of_groups_is_allowed_with_all_of_them() {
    // 5 000 groups: ~70 KiB of X-authentik-groups, twice the nginx tier's 32 KiB buffer.
    let groups: Vec<String> = (0..5000).map(|i| format!("group-{i:05}-x")).collect();
    let groups = groups.join("|");
    let answer = format!(
        "HTTP/1.1 200 OK\r\nX-Authentik-Username: akadmin\r\nX-Authentik-Groups: {groups}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let outpost = scripted(vec![Step::Write(answer.leak().as_bytes())]).await;
    let h = proxy_for(&outpost).await;
    let r = check(&h).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("x-authentik-groups").map(str::len),
        Some(groups.len())
    );
    assert!(groups.len() > 64 * 1024);
}

#[tokio::test]
async fn malformed_framing_fails_closed_and_drops_the_connection() {
    let outpost = scripted(vec![
        Step::Write(allow!("Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc")),
        Step::Write(allow!(
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
        )),
        Step::Write(allow!("Transfer-Encoding: gzip\r\n\r\n")),
        Step::Write(b"HTTP/1.1 200 OK\r\nX-Authentik-Username: akadmin\r\n folded\r\n\r\n"),
        Step::Write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
        Step::Write(allow!("Content-Length: 0\r\n\r\n")),
    ])
    .await;
    let h = proxy_for(&outpost).await;
    for i in 1..=5 {
        let r = check(&h).await;
        assert_failed_closed(&r);
        assert_eq!(
            outpost.requests.load(Ordering::SeqCst),
            i,
            "every check asked"
        );
    }
    assert_akadmin(&check(&h).await);
    assert_eq!(
        outpost.connections.load(Ordering::SeqCst),
        6,
        "no connection that carried a malformed answer was used again"
    );
    assert_eq!(h.app.metrics.fallback_attempt(Attempt::Ok).get(), 0);
}

#[tokio::test]
async fn bytes_after_an_answer_are_never_taken_for_the_next_answer() {
    // The first answer is followed by a second, unasked-for allow: a smuggled answer. It must
    // not answer the next request, which gets the outpost's real redirect on a fresh connection.
    let outpost = scripted(vec![
        Step::Write(allow!(
            "Content-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nX-Authentik-Username: mallory\r\nContent-Length: 0\r\n\r\n"
        )),
        Step::Write(REDIRECT),
    ])
    .await;
    let h = proxy_for(&outpost).await;
    assert_akadmin(&check(&h).await);
    let second = check(&h).await;
    assert_eq!(second.status, 302, "{second:?}");
    assert_eq!(second.header("x-authentik-username"), None);
    assert_eq!(outpost.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_outpost_closed_while_idle_is_replaced() {
    let outpost = scripted(vec![
        Step::WriteClose(allow!("Content-Length: 0\r\n\r\n")),
        Step::Write(allow!("Content-Length: 0\r\n\r\n")),
        Step::WriteClose(allow!("Connection: close\r\nContent-Length: 0\r\n\r\n")),
        Step::Write(REDIRECT),
    ])
    .await;
    let h = proxy_for(&outpost).await;
    assert_akadmin(&check(&h).await);
    // Let the close arrive while the connection sits in the pool.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_akadmin(&check(&h).await);
    assert_akadmin(&check(&h).await);
    assert_eq!(check(&h).await.status, 302);
    assert_eq!(
        outpost.requests.load(Ordering::SeqCst),
        4,
        "no request was lost"
    );
    assert_eq!(outpost.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_reused_connection_closed_before_any_answer_is_retried_once_on_a_fresh_one() {
    let outpost = scripted(vec![
        Step::Write(allow!("Content-Length: 0\r\n\r\n")),
        // The outpost takes the request on the pooled connection and closes it unanswered (its
        // idle timeout racing our reuse): the bodiless GET is sent again on a new connection.
        Step::Close,
        Step::Write(allow!("Content-Length: 0\r\n\r\n")),
        // Once more on the pooled connection, but the fresh one fails too: one retry only, and
        // then it is an outage the realm answers.
        Step::Close,
        Step::Close,
    ])
    .await;
    let h = proxy_for(&outpost).await;
    assert_akadmin(&check(&h).await);
    assert_akadmin(&check(&h).await);
    assert_eq!(outpost.requests.load(Ordering::SeqCst), 3);
    assert_eq!(outpost.connections.load(Ordering::SeqCst), 2);
    let r = check(&h).await;
    assert_eq!(r.header("x-auth-fallback"), Some("true"), "{r:?}");
    assert_eq!(outpost.requests.load(Ordering::SeqCst), 5);
    assert_eq!(outpost.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_answer_cut_short_is_an_outage_and_body_bounds_hold() {
    let outpost = scripted(vec![
        Step::WriteClose(b"HTTP/1.1 200 OK\r\nX-Authentik-Username: akadmin\r\nContent-Le"),
        Step::WriteClose(allow!("Content-Length: 10\r\n\r\nshort")),
        Step::Write(allow!("Content-Length: 999999999\r\n\r\n")),
    ])
    .await;
    let h = proxy_for(&outpost).await;
    // A connection broken mid-answer is the outpost failing: the emergency realm answers.
    for _ in 0..2 {
        let r = check(&h).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-auth-fallback"), Some("true"));
        assert_eq!(r.header("x-authentik-username"), Some(FALLBACK_USER));
    }
    // A body over the auth leg's bound breaks the protocol: closed, not the realm.
    assert_failed_closed(&check(&h).await);
}

#[tokio::test]
async fn passthrough_answer_with_length_and_chunks_is_relayed_by_its_chunks_alone() {
    // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length, and a proxy relaying
    // such an answer must drop the Content-Length (else the client reads 5 bytes of chunk text).
    let outpost = scripted(vec![Step::Write(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          b\r\nhello world\r\n0\r\n\r\n",
    )])
    .await;
    let h = proxy_for(&outpost).await;
    let r = get(&h.url("/outpost.goauthentik.io/static/app.js"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(&r.body[..], b"hello world");
    assert_ne!(r.header("content-length"), Some("5"));
}
