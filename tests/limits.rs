//! Size and time limits of the main listener (DESIGN.md section 8 rule 6, research/peers.md
//! section 4 item 10): a 256 KiB Cookie header fits, a head beyond `server.max_header_bytes`
//! gets 431, a malformed request line 400, and a client that stalls mid-head is disconnected
//! after `server.header_read_timeout`. Over-limit cases use a raw TCP stream so the status
//! line is read even where a full HTTP client would report a broken connection.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TRAEFIK: &str = "/outpost.goauthentik.io/auth/traefik";

/// Writes `request` (ignoring a write error: the server may close before reading it all) and
/// reads until the server closes or 10 s pass; returns whatever arrived.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

fn status_line(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_256_kib_cookie_header_with_30_plus_outpost_cookies_is_allowed() {
    let h = start(|_| {}).await;
    let session = h.session_cookie("akadmin");
    let real_name = h.outpost.cookie_name();
    let filler = "v".repeat(8 * 1024);
    let mut cookies = Vec::new();
    for i in 0..32u32 {
        let name = format!("authentik_proxy_{:08x}", 0x1000_0000 + i);
        assert_ne!(name, real_name);
        cookies.push(format!("{name}={filler}"));
    }
    // The real session in the middle, as browsers order by path and age, not by relevance.
    cookies.insert(16, session);
    let cookie = cookies.join("; ");
    assert!(cookie.len() >= 256 * 1024, "{}", cookie.len());
    let r = get(
        &h.url(TRAEFIK),
        &[("host", "app.example"), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-authentik-username"), Some("akadmin"));
    let seen = h
        .outpost
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == TRAEFIK)
        .expect("the outpost was asked");
    assert_eq!(
        seen.headers.get("cookie").unwrap().len(),
        cookie.len(),
        "the whole Cookie header travels"
    );
}

#[tokio::test]
async fn a_head_beyond_max_header_bytes_gets_431() {
    let h = start(|c| c.server.max_header_bytes = 64 * 1024).await;
    // 100 KiB fits hyper's read buffer (it checks its size only between reads) and is refused by
    // the proxy's own check; 1 MiB is refused by hyper while still reading.
    for kib in [100, 1024] {
        let big = "x".repeat(kib * 1024);
        let request = format!(
            "GET {TRAEFIK} HTTP/1.1\r\nHost: app.example\r\nCookie: authentik_proxy_00000000={big}\r\n\r\n"
        );
        let reply = raw_exchange(h.proxy, request.as_bytes()).await;
        let line = status_line(&reply);
        assert!(line.starts_with("HTTP/1.1 431"), "{kib} KiB: got {line:?}");
    }
    assert_eq!(
        h.outpost.stats().auth_requests,
        0,
        "an oversized head never reaches the outpost"
    );
    // The refusal the proxy answers itself is counted against its endpoint (hyper's own, for
    // the 1 MiB head, is only logged: no route was read).
    let text = scrape(h.admin).await;
    let errors = [("endpoint", "traefik"), ("decision", "error")];
    assert_eq!(
        metric(&text, "portcullis_requests_total", &errors),
        Some(1.0)
    );
    // The listener still serves the next caller.
    assert_eq!(get(&h.url("/healthz"), &[]).await.status, 200);
}

#[tokio::test]
async fn a_head_within_max_header_bytes_is_served() {
    // The 431 above is the limit, not a fixed buffer: 48 KiB fits under a 64 KiB limit.
    let h = start(|c| c.server.max_header_bytes = 64 * 1024).await;
    let session = h.session_cookie("akadmin");
    let cookie = format!(
        "authentik_proxy_00000000={}; {session}",
        "x".repeat(48 * 1024)
    );
    let r = get(
        &h.url(TRAEFIK),
        &[("host", "app.example"), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_malformed_request_line_gets_400() {
    let h = start(|_| {}).await;
    for request in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET  HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    ] {
        let reply = raw_exchange(h.proxy, request).await;
        let line = status_line(&reply);
        assert!(
            line.starts_with("HTTP/1.1 400"),
            "{:?} -> {line:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(h.outpost.stats().requests_total, 0);
}

#[tokio::test]
async fn a_client_stalling_mid_head_is_disconnected_after_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let h = start(|c| c.server.header_read_timeout = timeout).await;
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    let started = Instant::now();
    s.write_all(format!("GET {TRAEFIK} HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let elapsed = started.elapsed();
    assert!(read.is_ok(), "still connected after 5 s");
    assert!(
        elapsed >= timeout - Duration::from_millis(50),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_secs(2),
        "closed too late: {elapsed:?}"
    );
    // Whatever was said on the way out, no request was served.
    let text = String::from_utf8_lossy(&buf);
    assert!(
        buf.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text:?}"
    );
    assert_eq!(h.outpost.stats().requests_total, 0);
}

#[tokio::test]
async fn a_client_sending_its_head_in_time_is_not_cut_off() {
    // The timeout bounds the head, not the exchange: a slow but complete head is answered.
    let h = start(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        status_line(&buf).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn two_host_lines_are_refused_with_400_before_the_outpost() {
    let h = start(|_| {}).await;
    let request = format!(
        "GET {TRAEFIK} HTTP/1.1\r\nHost: app.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    );
    let reply = raw_exchange(h.proxy, request.as_bytes()).await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 400"), "{reply:?}");
    assert_eq!(h.outpost.stats().auth_requests, 0);
}

#[tokio::test]
async fn a_broken_chunked_body_on_passthrough_is_the_clients_400_not_the_outposts_502() {
    let h = start(|_| {}).await;
    let request = "POST /outpost.goauthentik.io/callback HTTP/1.1\r\nHost: app.example\r\n\
                   Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let reply = raw_exchange(h.proxy, request.as_bytes()).await;
    let line = status_line(&reply);
    assert!(line.starts_with("HTTP/1.1 400"), "{line:?}");
    assert!(
        String::from_utf8_lossy(&reply).contains("request body malformed or stalled"),
        "{reply:?}"
    );
    // The outpost is up and was never blamed: the breaker stays closed.
    assert!(!h.app.runtime().breaker.is_open());
}
