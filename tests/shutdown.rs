//! Graceful shutdown of the real binary (DESIGN.md section 6): on SIGTERM `/readyz` answers 503
//! at once, accepting stops after `server.shutdown_delay`, requests in flight finish within
//! `server.drain_timeout`, and the process exits 0. The fake outpost runs in the test process;
//! the binary is killed on drop if a test fails half-way.

mod support;

use std::time::{Duration, Instant};

use portcullis::demo::outpost::Behaviour;
use support::*;

const TRAEFIK: &str = "/outpost.goauthentik.io/auth/traefik";

/// A forward-auth check with `cookie`, in its own task; yields the status or the transport error.
fn check_in_flight(url: String, cookie: String) -> tokio::task::JoinHandle<Result<u16, String>> {
    tokio::spawn(async move {
        let mut req = http::Request::get(&url);
        for (k, v) in traefik_headers(&[("cookie", &cookie)]) {
            req = req.header(k, v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = client().request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    })
}

/// Waits until the fake outpost has received `n` forward-auth requests.
async fn wait_auth_requests(outpost: &portcullis::demo::outpost::FakeOutpost, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while outpost.stats().auth_requests < n {
        assert!(
            Instant::now() < deadline,
            "request never reached the outpost"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_slow_request_then_stops_accepting_and_exits_zero() {
    let outpost = outpost().await;
    let file = ConfigFile::new("shutdown-term", &outpost.url());
    std::fs::write(
        &file.path,
        file.text(&[("server", "shutdown_delay = \"1s\"\ndrain_timeout = \"5s\"")])
            .replace("timeout = \"800ms\"", "timeout = \"5s\""),
    )
    .unwrap();
    let mut bin = Binary::start(&file).await;
    let cookie = format!("{}={}", outpost.cookie_name(), outpost.login("akadmin"));
    outpost.set_behaviour(Behaviour::Delay(Duration::from_millis(1500)));
    let slow = check_in_flight(bin.url(TRAEFIK), cookie);
    wait_auth_requests(&outpost, 1).await;

    let signalled = Instant::now();
    bin.signal("TERM");
    // Readiness turns 503 at once (well before the 1 s delay ends).
    let readyz = format!("http://{}/readyz", bin.admin);
    loop {
        let r = get(&readyz, &[]).await;
        if r.status == 503 {
            assert!(String::from_utf8_lossy(&r.body).contains("shutting down"));
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "readyz still {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let readiness_503_after = signalled.elapsed();
    // During the delay new connections are still served.
    assert_eq!(get(&bin.url("/healthz"), &[]).await.status, 200);
    // After it, new connections are refused.
    loop {
        if tokio::net::TcpStream::connect(bin.main).await.is_err() {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "still accepting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_after = signalled.elapsed();
    assert!(
        refused_after >= Duration::from_millis(900),
        "stopped accepting after only {refused_after:?}"
    );

    assert_eq!(
        slow.await.unwrap(),
        Ok(200),
        "the request in flight completed"
    );
    let status = bin
        .wait_exit(Duration::from_secs(1 + 5 + 1))
        .await
        .expect("exited within delay + drain");
    let exited_after = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", bin.stderr());
    println!(
        "SIGTERM: readyz 503 after {readiness_503_after:?}, refused after {refused_after:?}, \
         exit 0 after {exited_after:?}"
    );
    assert!(
        exited_after < Duration::from_secs(3),
        "slow request took 1.5 s, exit after {exited_after:?}"
    );
}

#[tokio::test]
async fn sigint_also_exits_zero() {
    let (_outpost, _file, mut bin) =
        start_binary("shutdown-int", &[("server", "shutdown_delay = \"0s\"")]).await;
    assert_eq!(get(&bin.url("/healthz"), &[]).await.status, 200);
    bin.signal("INT");
    let status = bin.wait_exit(Duration::from_secs(5)).await.expect("exited");
    assert_eq!(status.code(), Some(0), "{}", bin.stderr());
    assert!(bin.stderr().contains("SIGINT received"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_drain_deadline_are_cut_and_the_process_still_exits() {
    let outpost = outpost().await;
    let file = ConfigFile::new("shutdown-cut", &outpost.url());
    std::fs::write(
        &file.path,
        file.text(&[("server", "shutdown_delay = \"0s\"\ndrain_timeout = \"1s\"")])
            .replace("timeout = \"800ms\"", "timeout = \"30s\""),
    )
    .unwrap();
    let mut bin = Binary::start(&file).await;
    let cookie = format!("{}={}", outpost.cookie_name(), outpost.login("akadmin"));
    outpost.set_behaviour(Behaviour::BlackHole);
    let stuck = check_in_flight(bin.url(TRAEFIK), cookie);
    wait_auth_requests(&outpost, 1).await;

    let signalled = Instant::now();
    bin.signal("TERM");
    let status = bin
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exited despite a stuck request");
    let exited_after = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", bin.stderr());
    assert!(
        exited_after >= Duration::from_millis(900),
        "exited before the drain deadline: {exited_after:?}"
    );
    assert!(
        exited_after < Duration::from_secs(3),
        "exit took {exited_after:?}"
    );
    let cut = tokio::time::timeout(Duration::from_secs(2), stuck)
        .await
        .expect("client saw the cut")
        .unwrap();
    assert!(cut.is_err(), "stuck request answered: {cut:?}");
    assert!(
        bin.stderr().contains("drain deadline passed"),
        "{}",
        bin.stderr()
    );
}
