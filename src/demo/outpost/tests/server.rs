//! Fake outpost tests: behaviour switch, keepalive, shutdown, ping, static and 404.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tokio::net::TcpStream;

use super::*;

#[tokio::test]
async fn ping_answers_204_for_any_method_and_body_is_recorded() {
    let fake = start_fake().await;
    let mut sender = connect(&fake).await;
    assert_eq!(
        send(
            &mut sender,
            Method::GET,
            "/outpost.goauthentik.io/ping",
            &[]
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    let req = Request::post("/outpost.goauthentik.io/ping")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let recorded = fake.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].method, Method::POST);
    assert_eq!(recorded[1].body_len, 5);
    assert_eq!(fake.stats().pings, 2);
    fake.clear_requests();
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn unknown_paths_are_404_and_static_is_served() {
    let fake = start_fake().await;
    for path in [
        "/outpost.goauthentik.io/auth",
        "/outpost.goauthentik.io/nope",
        "/app",
    ] {
        let reply = get(&fake, path, &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.body, "404 page not found\n");
    }
    let css = get(&fake, "/outpost.goauthentik.io/static/dist/main.css", &[]).await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
}

#[tokio::test]
async fn status_behaviour_answers_every_path_including_ping() {
    let fake = start_fake().await;
    fake.set_behaviour(Behaviour::Status(503));
    let reply = get(&fake, "/outpost.goauthentik.io/ping", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "fake failure\n");
    assert_eq!(
        traefik(&fake, "/", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    fake.set_behaviour(Behaviour::Normal);
    assert_eq!(
        get(&fake, "/outpost.goauthentik.io/ping", &[]).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn delay_behaviour_holds_each_answer() {
    let fake = start_fake().await;
    fake.set_behaviour(Behaviour::Delay(Duration::from_millis(100)));
    let started = std::time::Instant::now();
    assert_eq!(
        get(&fake, "/outpost.goauthentik.io/ping", &[]).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn keepalive_serves_ten_requests_on_one_connection() {
    let fake = start_fake().await;
    let mut sender = connect(&fake).await;
    let fwd = [
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "app.localhost"),
        ("x-forwarded-uri", "/"),
    ];
    for _ in 0..10 {
        let reply = send(
            &mut sender,
            Method::GET,
            "/outpost.goauthentik.io/auth/traefik",
            &fwd,
        )
        .await;
        assert_eq!(reply.status, StatusCode::FOUND);
    }
    let stats = fake.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.requests_total, 10);
    assert_eq!(stats.auth_requests, 10);
    assert_eq!(
        stats.per_path.get("/outpost.goauthentik.io/auth/traefik"),
        Some(&10)
    );
}

#[tokio::test]
async fn shutdown_closes_black_holed_connections_and_refuses_new_ones() {
    let fake = start_fake().await;
    fake.set_behaviour(Behaviour::BlackHole);
    let mut sender = connect(&fake).await;
    let req = Request::get("/outpost.goauthentik.io/ping")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished(), "black hole must not answer");
    assert_eq!(fake.stats().requests_total, 1, "the request was read");
    let addr = fake.addr();
    tokio::time::timeout(Duration::from_secs(5), fake.clone().shutdown())
        .await
        .expect("shutdown completes");
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_err(), "connection closed without an answer");
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn identity_headers_go_out_title_cased_like_go() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fake = start_fake().await;
    let cookie = cookie_header(&fake, &fake.login("akadmin"));
    let mut stream = TcpStream::connect(fake.addr()).await.unwrap();
    let request = format!(
        "GET /outpost.goauthentik.io/auth/traefik HTTP/1.1\r\nHost: o\r\nX-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: app.localhost\r\nX-Forwarded-Uri: /\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(
        raw.contains("\r\nX-Authentik-Username: akadmin\r\n"),
        "{raw}"
    );
    assert!(
        raw.contains("\r\nX-Authentik-Meta-App: portcullis-demo\r\n"),
        "{raw}"
    );
    assert!(raw.contains("\r\nUser-Agent: \r\n"), "{raw}");
    assert!(raw.contains("\r\nContent-Length: 0\r\n"), "{raw}");
}
