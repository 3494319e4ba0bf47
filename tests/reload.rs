//! Hot reload (DESIGN.md section 6): through a real config file and
//! `portcullis::reload::reload_from` (what SIGHUP and the file poll call), and through the real
//! binary with `kill -HUP` and a rewritten file. A new `cache.ttl` applies, a broken file is
//! refused while the old config keeps answering, a `listen` change is reported and ignored, and
//! no forward-auth call fails while the config is swapped under load.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis::reload::reload_from;
use support::*;

const TRAEFIK: &str = "/outpost.goauthentik.io/auth/traefik";

/// A harness on fixed-for-this-test free ports, so a config file can name the same listeners,
/// plus that file.
async fn harness_with_file(tag: &str, ttl: &str) -> (Harness, ConfigFile) {
    let outpost = outpost().await;
    let file = ConfigFile::new(tag, &outpost.url());
    file.write(&[("cache", &format!("ttl = \"{ttl}\""))]);
    let config = portcullis::config::Config::load(&file.path).expect("test config is valid");
    let h = start_with(outpost, move |c| *c = config).await;
    (h, file)
}

async fn allow(url: &str, cookie: &str) -> u16 {
    get(url, &traefik_headers(&[("cookie", cookie)]))
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn reload_applies_a_new_cache_ttl() {
    let (h, file) = harness_with_file("reload-ttl", "60s").await;
    let (url, cookie) = (h.url(TRAEFIK), h.session_cookie("akadmin"));
    for _ in 0..3 {
        assert_eq!(allow(&url, &cookie).await, 200);
    }
    assert_eq!(
        h.outpost.stats().auth_requests,
        1,
        "ttl 60s: one outpost call, then cached"
    );

    file.write(&[("cache", "ttl = \"0s\"")]);
    assert!(reload_from(&h.app, &file.path, "test"));
    assert!(
        h.app.runtime().cache.is_empty(),
        "a reload starts with an empty cache"
    );
    for _ in 0..3 {
        assert_eq!(allow(&url, &cookie).await, 200);
    }
    assert_eq!(
        h.outpost.stats().auth_requests,
        4,
        "ttl 0s: every check asks the outpost"
    );
}

#[tokio::test]
async fn a_config_naming_an_unusable_file_is_rejected_as_check_rejects_it() {
    let (h, file) = harness_with_file("reload-files", "60s").await;
    let generation = h.app.runtime().generation;
    let bad = temp_dir("reload-files-ht").join("htpasswd");
    std::fs::write(&bad, "admin:plaintext-password\n").unwrap();
    let text = file.text(&[("cache", "ttl = \"0s\"")]).replace(
        &file.htpasswd.display().to_string(),
        &bad.display().to_string(),
    );
    std::fs::write(&file.path, text).unwrap();
    assert!(!reload_from(&h.app, &file.path, "test"));
    let rt = h.app.runtime();
    assert_eq!(rt.generation, generation);
    assert_eq!(rt.config.cache.ttl, Duration::from_secs(60));
    assert_eq!(
        h.app.metrics.config_reload(false).get(),
        1,
        "counted as rejected"
    );
}

#[tokio::test]
async fn broken_file_is_rejected_and_the_old_config_keeps_answering() {
    let (h, file) = harness_with_file("reload-broken", "60s").await;
    let (url, cookie) = (h.url(TRAEFIK), h.session_cookie("akadmin"));
    assert_eq!(allow(&url, &cookie).await, 200);
    let generation = h.app.runtime().generation;

    // A value error, then a TOML syntax error, then a missing file.
    for text in [
        file.text(&[("cache", "ttl = \"0s\"\ncapacity = -1")]),
        "[cache\nttl = ".to_owned(),
    ] {
        std::fs::write(&file.path, text).unwrap();
        assert!(!reload_from(&h.app, &file.path, "test"));
    }
    std::fs::remove_file(&file.path).unwrap();
    assert!(!reload_from(&h.app, &file.path, "test"));

    let rt = h.app.runtime();
    assert_eq!(rt.generation, generation);
    assert_eq!(rt.config.cache.ttl, Duration::from_secs(60));
    let text = scrape(h.admin).await;
    assert_eq!(
        metric(
            &text,
            "portcullis_config_reloads_total",
            &[("result", "rejected")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "portcullis_config_reloads_total",
            &[("result", "ok")]
        ),
        Some(0.0)
    );
    // The old ttl still caches: no further outpost call.
    assert_eq!(allow(&url, &cookie).await, 200);
    assert_eq!(h.outpost.stats().auth_requests, 1);
}

#[tokio::test]
async fn listen_change_is_not_applied_and_the_listener_stays() {
    let (h, file) = harness_with_file("reload-listen", "10s").await;
    let moved = ConfigFile {
        main: SocketAddr::from(([127, 0, 0, 1], free_port())),
        ..file
    };
    moved.write(&[("cache", "ttl = \"20s\"")]);
    assert!(
        reload_from(&h.app, &moved.path, "test"),
        "the rest of the file applies"
    );
    let rt = h.app.runtime();
    assert_eq!(rt.config.server.listen, h.proxy, "listen kept");
    assert_eq!(
        rt.config.cache.ttl,
        Duration::from_secs(20),
        "other keys applied"
    );
    assert_eq!(get(&h.url("/healthz"), &[]).await.status, 200);
    assert!(
        tokio::net::TcpStream::connect(moved.main).await.is_err(),
        "nothing bound on the new address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_forward_auth_call() {
    let (h, file) = harness_with_file("reload-load", "1s").await;
    let (url, cookie) = (h.url(TRAEFIK), h.session_cookie("akadmin"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (made, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (url, cookie, stop, made, failed) = (
            url.clone(),
            cookie.clone(),
            stop.clone(),
            made.clone(),
            failed.clone(),
        );
        loops.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Relaxed) {
                let mut req = http::Request::get(&url);
                for (k, v) in traefik_headers(&[("cookie", &cookie)]) {
                    req = req.header(k, v);
                }
                let req = req
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let ok =
                    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                        Ok(Ok(resp)) => {
                            let status = resp.status();
                            let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                            status == 200 && body.is_ok()
                        }
                        _ => false,
                    };
                made.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Alternate cache off / on and the outpost timeout, so every reload builds a new runtime.
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ttl = if i % 2 == 0 {
            "ttl = \"0s\""
        } else {
            "ttl = \"5s\""
        };
        file.write(&[("cache", ttl)]);
        assert!(reload_from(&h.app, &file.path, "test"), "reload {i}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (made, failed) = (made.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("20 reloads under 4 client loops: {made} forward-auth requests, {failed} failed");
    assert!(made >= 100, "too few requests to mean anything: {made}");
    assert_eq!(
        failed, 0,
        "{failed} of {made} requests failed during reloads"
    );
    let text = scrape(h.admin).await;
    assert_eq!(
        metric(
            &text,
            "portcullis_config_reloads_total",
            &[("result", "ok")]
        ),
        Some(20.0)
    );
}

/// Polls the binary's metrics until `portcullis_config_reloads_total{result}` reaches `want`
/// (at least: a rewritten file can be seen by both the file poll and a SIGHUP sent right after).
async fn wait_reloads(bin: &Binary, result: &str, want: f64, limit: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        let text = scrape(bin.admin).await;
        if metric(
            &text,
            "portcullis_config_reloads_total",
            &[("result", result)],
        )
        .is_some_and(|n| n >= want)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no {result} reload within {limit:?}:\n{}",
            bin.stderr()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn sighup_applies_a_new_cache_ttl_in_the_running_binary() {
    let (outpost, file, bin) = start_binary("reload-hup", &[("cache", "ttl = \"60s\"")]).await;
    let cookie = format!("{}={}", outpost.cookie_name(), outpost.login("akadmin"));
    let url = bin.url(TRAEFIK);
    for _ in 0..3 {
        assert_eq!(allow(&url, &cookie).await, 200);
    }
    assert_eq!(outpost.stats().auth_requests, 1);

    // Same length and the old mtime, so the file poll cannot see it: only SIGHUP applies it.
    let mtime = std::fs::metadata(&file.path).unwrap().modified().unwrap();
    file.write(&[("cache", "ttl = \"0ms\"")]);
    std::fs::File::options()
        .write(true)
        .open(&file.path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    bin.signal("HUP");
    wait_reloads(&bin, "ok", 1.0, Duration::from_secs(2)).await;
    let line = bin
        .wait_for_line("config reloaded", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(line.contains("SIGHUP"), "{line}");
    for _ in 0..3 {
        assert_eq!(allow(&url, &cookie).await, 200);
    }
    assert_eq!(
        outpost.stats().auth_requests,
        4,
        "ttl 0: every check reached the outpost"
    );
}

#[tokio::test]
async fn changed_file_is_applied_within_two_seconds_without_a_signal() {
    let (outpost, file, bin) = start_binary("reload-poll", &[("cache", "ttl = \"60s\"")]).await;
    file.write(&[("cache", "ttl = \"0s\"\ncapacity = 5000")]);
    let took = wait_reloads(&bin, "ok", 1.0, Duration::from_millis(2500)).await;
    println!("file change applied after {took:?}");
    assert!(took <= Duration::from_secs(2), "applied after {took:?}");
    let line = bin
        .wait_for_line("config reloaded", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(line.contains("file changed"), "{line}");

    // A broken rewrite is refused and counted; the process keeps answering.
    std::fs::write(&file.path, "[cache]\nttl = \"forever\"\n").unwrap();
    wait_reloads(&bin, "rejected", 1.0, Duration::from_millis(2500)).await;
    let cookie = format!("{}={}", outpost.cookie_name(), outpost.login("akadmin"));
    assert_eq!(allow(&bin.url(TRAEFIK), &cookie).await, 200);
}

#[tokio::test]
async fn listen_change_in_the_running_binary_asks_for_a_restart() {
    let (_outpost, file, bin) = start_binary("reload-listen-bin", &[]).await;
    // One answered request: the SIGHUP handler is installed by then.
    assert_eq!(get(&bin.url("/healthz"), &[]).await.status, 200);
    let moved = ConfigFile {
        main: SocketAddr::from(([127, 0, 0, 1], free_port())),
        ..file
    };
    moved.write(&[]);
    bin.signal("HUP");
    wait_reloads(&bin, "ok", 1.0, Duration::from_secs(2)).await;
    let line = bin
        .wait_for_line("restart is needed", Duration::from_secs(1))
        .await;
    assert!(line.is_some(), "no restart warning in:\n{}", bin.stderr());
    assert_eq!(
        get(&bin.url("/healthz"), &[]).await.status,
        200,
        "old listener still serves"
    );
    assert!(
        tokio::net::TcpStream::connect(moved.main).await.is_err(),
        "new address not bound"
    );
}

#[tokio::test]
async fn a_config_refused_for_a_half_written_file_applies_once_the_file_is_whole() {
    let (_outpost, file, bin) = start_binary("reload-retry", &[]).await;
    assert_eq!(get(&bin.url("/healthz"), &[]).await.status, 200);
    // The htpasswd is being rewritten when the config changes: the config is refused...
    let good = std::fs::read_to_string(&file.htpasswd).unwrap();
    std::fs::write(&file.htpasswd, "admin:$2y$10$half-writ").unwrap();
    file.write(&[("cache", "ttl = \"3s\"")]);
    wait_reloads(&bin, "rejected", 1.0, Duration::from_millis(2500)).await;
    // ...and applied, with no further change to the config, once the htpasswd is whole.
    std::fs::write(&file.htpasswd, good).unwrap();
    wait_reloads(&bin, "ok", 1.0, Duration::from_millis(2500)).await;
}

#[tokio::test]
async fn log_level_change_applies_on_reload_without_a_restart() {
    let (outpost, file, bin) = start_binary("reload-log", &[("log", "level = \"warn\"")]).await;
    let cookie = format!("{}={}", outpost.cookie_name(), outpost.login("akadmin"));
    let url = bin.url(TRAEFIK);
    assert_eq!(allow(&url, &cookie).await, 200);
    let access = |b: &Binary| {
        b.lines()
            .iter()
            .filter(|l| l.contains("\"decision\""))
            .count()
    };
    assert_eq!(access(&bin), 0, "warn level writes no access line");
    file.write(&[("log", "level = \"info\"")]);
    wait_reloads(&bin, "ok", 1.0, Duration::from_millis(2500)).await;
    bin.wait_for_line("log level changed", Duration::from_secs(1))
        .await
        .expect("the change is logged at the new level");
    assert_eq!(allow(&url, &cookie).await, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while access(&bin) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(access(&bin), 1, "info level writes the access line");
}

#[tokio::test]
async fn a_new_outpost_url_on_reload_resets_the_outage_gauges() {
    let h = start(trust_loopback).await;
    h.outpost
        .set_behaviour(portcullis::demo::outpost::Behaviour::Status(503));
    let url = h.url(TRAEFIK);
    for _ in 0..3 {
        get(&url, &traefik_headers(&[])).await;
    }
    assert_eq!(h.app.metrics.outpost_up.get(), 0);
    assert_eq!(h.app.metrics.fallback_active.get(), 1);
    let healthy = outpost().await;
    let mut config = h.config.clone();
    config.outpost.url = healthy.url().parse().unwrap();
    h.app.reload(config).unwrap();
    assert_eq!(
        h.app.metrics.outpost_up.get(),
        1,
        "the new outpost's breaker is closed"
    );
    assert_eq!(h.app.metrics.fallback_active.get(), 0);
    let cookie = format!("{}={}", healthy.cookie_name(), healthy.login("akadmin"));
    assert_eq!(allow(&url, &cookie).await, 200);
}
