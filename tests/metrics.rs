//! Every metric of DESIGN.md section 7 moves when its event happens, read the way Prometheus
//! reads it: a scrape of the admin listener's `/metrics` over HTTP, parsed from the text. The
//! scrape and the alert rules in `deploy/` pass `promtool` (skipped with a printed reason when
//! promtool is not installed, except under `CI=true`, where its absence fails).

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis::demo::outpost::Behaviour;
use support::*;

const TRAEFIK: &str = "/outpost.goauthentik.io/auth/traefik";
/// What nginx's `auth_request` sends (from a trusted peer).
const NGINX: [(&str, &str); 2] = [
    ("host", "app.example"),
    ("x-original-url", "https://app.example/dashboard"),
];

/// `portcullis_requests_total{endpoint,decision}`.
fn requests(text: &str, endpoint: &str, decision: &str) -> f64 {
    metric(
        text,
        "portcullis_requests_total",
        &[("endpoint", endpoint), ("decision", decision)],
    )
    .unwrap_or_else(|| panic!("requests_total{{{endpoint},{decision}}} missing"))
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing in\n{text}"))
}

#[tokio::test]
async fn each_forward_auth_decision_moves_its_request_counter_and_duration() {
    let h = start(trust_loopback).await;
    let cookie = h.session_cookie("akadmin");
    let url = h.url(TRAEFIK);
    let before = scrape(h.admin).await;

    assert_eq!(
        get(&url, &traefik_headers(&[("cookie", &cookie)]))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&url, &traefik_headers(&[("cookie", &cookie)]))
            .await
            .status,
        200
    );
    assert_eq!(get(&url, &traefik_headers(&[])).await.status, 302);
    let public = [("x-forwarded-uri", "/public/logo.png")];
    let mut anon = traefik_headers(&[]);
    anon.retain(|(k, _)| *k != "x-forwarded-uri");
    anon.extend_from_slice(&public);
    assert_eq!(get(&url, &anon).await.status, 200);
    assert_eq!(
        get(&h.url("/outpost.goauthentik.io/ping"), &[])
            .await
            .status,
        204
    );
    assert_eq!(
        get(&h.url("/outpost.goauthentik.io/auth/../x"), &[])
            .await
            .status
            .as_u16()
            / 100,
        4
    );
    let nginx = get(&h.url("/outpost.goauthentik.io/auth/nginx"), &NGINX).await;
    assert_eq!(nginx.status, 401);

    let after = scrape(h.admin).await;
    for (endpoint, decision, moved) in [
        ("traefik", "allow", 1.0),
        ("traefik", "allow_cached", 1.0),
        ("traefik", "deny", 1.0),
        ("traefik", "anonymous", 1.0),
        ("outpost", "passthrough", 1.0),
        ("outpost", "error", 1.0),
        ("nginx", "deny", 1.0),
        ("traefik", "fallback_allow", 0.0),
    ] {
        assert_eq!(
            requests(&after, endpoint, decision) - requests(&before, endpoint, decision),
            moved,
            "{endpoint}/{decision}"
        );
    }
    let count = |t: &str, e| {
        value(
            t,
            "portcullis_request_duration_seconds_count",
            &[("endpoint", e)],
        )
    };
    assert_eq!(count(&after, "traefik") - count(&before, "traefik"), 4.0);
    assert_eq!(count(&after, "nginx") - count(&before, "nginx"), 1.0);
    assert_eq!(count(&after, "outpost") - count(&before, "outpost"), 2.0);
}

#[tokio::test]
async fn outpost_down_with_fallback_disabled_counts_error() {
    let h = start(|c| {
        trust_loopback(c);
        c.fallback.enabled = false;
    })
    .await;
    h.outpost.set_behaviour(Behaviour::Status(503));
    let r = get(&h.url(TRAEFIK), &traefik_headers(&[])).await;
    assert_eq!(r.status, 503);
    let text = scrape(h.admin).await;
    assert_eq!(requests(&text, "traefik", "error"), 1.0);
    assert_eq!(requests(&text, "traefik", "deny"), 0.0);
}

#[tokio::test]
async fn cache_lookups_and_entries_follow_hit_miss_expiry_and_sign_out() {
    let h = start(|c| {
        trust_loopback(c);
        c.cache.ttl = Duration::from_millis(300);
    })
    .await;
    let url = h.url(TRAEFIK);
    let alice = h.session_cookie("akadmin");
    let lookups = |t: &str, r| value(t, "portcullis_cache_lookups_total", &[("result", r)]);
    let entries = |t: &str| value(t, "portcullis_cache_entries", &[]);

    get(&url, &traefik_headers(&[("cookie", &alice)])).await;
    let t = scrape(h.admin).await;
    assert_eq!(
        (lookups(&t, "miss"), lookups(&t, "hit"), entries(&t)),
        (1.0, 0.0, 1.0)
    );

    get(&url, &traefik_headers(&[("cookie", &alice)])).await;
    let t = scrape(h.admin).await;
    assert_eq!((lookups(&t, "miss"), lookups(&t, "hit")), (1.0, 1.0));

    // Past the TTL the entry is reported as expired, dropped, and refilled by the answer.
    tokio::time::sleep(Duration::from_millis(400)).await;
    get(&url, &traefik_headers(&[("cookie", &alice)])).await;
    let t = scrape(h.admin).await;
    assert_eq!(lookups(&t, "expired"), 1.0);
    assert_eq!(entries(&t), 1.0);

    // Expired and not refilled (the outpost now denies): the gauge drops to zero.
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.outpost.set_behaviour(Behaviour::Status(401));
    let r = get(&url, &traefik_headers(&[("cookie", &alice)])).await;
    assert_eq!(r.status, 401);
    let t = scrape(h.admin).await;
    assert_eq!(lookups(&t, "expired"), 2.0);
    assert_eq!(
        entries(&t),
        0.0,
        "expired entry removed but cache_entries not updated"
    );
    h.outpost.set_behaviour(Behaviour::Normal);

    // A sign_out through the proxy purges the credential's entries at once.
    let bob = h.session_cookie("akadmin");
    get(&url, &traefik_headers(&[("cookie", &bob)])).await;
    assert_eq!(entries(&scrape(h.admin).await), 1.0);
    get(
        &h.url("/outpost.goauthentik.io/sign_out"),
        &[("cookie", &bob)],
    )
    .await;
    assert_eq!(entries(&scrape(h.admin).await), 0.0);
}

#[tokio::test]
async fn concurrent_identical_misses_are_counted_as_coalesced() {
    let h = start(trust_loopback).await;
    h.outpost
        .set_behaviour(Behaviour::Delay(Duration::from_millis(300)));
    let cookie = h.session_cookie("akadmin");
    let url = h.url(TRAEFIK);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, cookie) = (url.clone(), cookie.clone());
        tasks.push(tokio::spawn(async move {
            get(&url, &traefik_headers(&[("cookie", &cookie)]))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let t = scrape(h.admin).await;
    let coalesced = value(&t, "portcullis_coalesced_total", &[]);
    assert!(coalesced >= 1.0, "coalesced_total = {coalesced}");
    assert_eq!(h.outpost.stats().auth_requests as f64 + coalesced, 8.0);
}

#[tokio::test]
async fn outpost_answers_are_counted_by_code_with_duration_and_connections() {
    let h = start(|c| {
        trust_loopback(c);
        c.fallback.trip_after = 100;
        c.cache.ttl = Duration::ZERO;
    })
    .await;
    let url = h.url(TRAEFIK);
    let cookie = h.session_cookie("akadmin");
    let code = |t: &str, c| value(t, "portcullis_outpost_responses_total", &[("code", c)]);

    get(&url, &traefik_headers(&[("cookie", &cookie)])).await;
    get(&url, &traefik_headers(&[("cookie", &cookie)])).await;
    get(&url, &traefik_headers(&[])).await;
    get(&h.url("/outpost.goauthentik.io/auth/nginx"), &NGINX).await;
    h.outpost.set_behaviour(Behaviour::Status(400));
    get(&url, &traefik_headers(&[])).await;
    h.outpost.set_behaviour(Behaviour::Status(502));
    get(&url, &traefik_headers(&[])).await;
    h.outpost.set_behaviour(Behaviour::BlackHole);
    get(&url, &traefik_headers(&[])).await;

    let t = scrape(h.admin).await;
    assert_eq!(code(&t, "200"), 2.0);
    assert_eq!(code(&t, "302"), 1.0);
    assert_eq!(code(&t, "401"), 1.0);
    assert_eq!(code(&t, "400"), 1.0);
    assert_eq!(code(&t, "5xx"), 1.0);
    assert_eq!(code(&t, "error"), 1.0);
    assert_eq!(
        value(&t, "portcullis_outpost_duration_seconds_count", &[]),
        7.0
    );
    // Keepalive: sequential checks share connections; the black hole's is abandoned.
    let opened = value(&t, "portcullis_outpost_connections_opened_total", &[]);
    assert!(
        (1.0..=3.0).contains(&opened),
        "connections opened = {opened}"
    );
    assert_eq!(opened, h.outpost.stats().connections_accepted as f64);
}

#[tokio::test]
async fn outage_moves_breaker_gauges_and_fallback_counters() {
    let h = start(|c| {
        trust_loopback(c);
        c.fallback.max_failures_per_user = 3;
    })
    .await;
    let url = h.url(TRAEFIK);
    let t = scrape(h.admin).await;
    assert_eq!(value(&t, "portcullis_outpost_up", &[]), 1.0);
    assert_eq!(value(&t, "portcullis_fallback_active", &[]), 0.0);

    h.outpost.set_behaviour(Behaviour::Status(503));
    let good = basic(FALLBACK_USER, FALLBACK_PASSWORD);
    let bad = basic(FALLBACK_USER, "wrong");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            get(&url, &traefik_headers(&[("authorization", &good)]))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200]);
    let t = scrape(h.admin).await;
    assert_eq!(value(&t, "portcullis_outpost_up", &[]), 0.0);
    assert_eq!(value(&t, "portcullis_fallback_active", &[]), 1.0);

    for _ in 0..3 {
        assert_eq!(
            get(&url, &traefik_headers(&[("authorization", &bad)]))
                .await
                .status,
            401
        );
    }
    assert_eq!(
        get(&url, &traefik_headers(&[("authorization", &good)]))
            .await
            .status,
        429
    );

    let t = scrape(h.admin).await;
    let attempts = |r| value(&t, "portcullis_fallback_attempts_total", &[("result", r)]);
    assert_eq!(
        (
            attempts("ok"),
            attempts("bad_credentials"),
            attempts("limited")
        ),
        (3.0, 3.0, 1.0)
    );
    assert_eq!(requests(&t, "traefik", "fallback_allow"), 3.0);
    assert_eq!(requests(&t, "traefik", "fallback_deny"), 3.0);
    assert_eq!(requests(&t, "traefik", "fallback_limited"), 1.0);

    // The probe closes the breaker once the outpost answers again.
    h.outpost.set_behaviour(Behaviour::Normal);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let t = scrape(h.admin).await;
        if value(&t, "portcullis_outpost_up", &[]) == 1.0 {
            assert_eq!(value(&t, "portcullis_fallback_active", &[]), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn config_reloads_are_counted_ok_and_rejected() {
    let h = start(trust_loopback).await;
    let dir = temp_dir("metrics-reload");
    let path = dir.join("portcullis.toml");
    let listen = format!(
        "[server]\nlisten = \"{}\"\nadmin_listen = \"127.0.0.1:1\"\n",
        h.config.server.listen
    );
    let rest = format!(
        "[outpost]\nurl = \"{}\"\n[fallback]\nhtpasswd_file = \"{}\"\n",
        h.outpost.url(),
        h.config.fallback.htpasswd_file.display()
    );
    std::fs::write(&path, format!("{listen}{rest}")).unwrap();
    assert!(portcullis::reload::reload_from(&h.app, &path, "test"));
    std::fs::write(&path, "[cache]\nttl = \"soon\"\n").unwrap();
    assert!(!portcullis::reload::reload_from(&h.app, &path, "test"));
    assert!(!portcullis::reload::reload_from(&h.app, &path, "test"));
    let t = scrape(h.admin).await;
    let reloads = |r| value(&t, "portcullis_config_reloads_total", &[("result", r)]);
    assert_eq!((reloads("ok"), reloads("rejected")), (1.0, 2.0));
}

/// Runs promtool with `args` and `stdin`; `None` (after printing why) when it is not installed
/// and this is not CI.
fn promtool(args: &[&str], stdin: &str) -> Option<std::process::Output> {
    let child = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("promtool is required under CI=true (Debian package prometheus): {err}")
        }
        Err(err) => {
            eprintln!(
                "SKIPPED: promtool not runnable ({err}); install the Debian package prometheus"
            );
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap())
}

#[tokio::test]
async fn promtool_accepts_the_scrape_after_a_mixed_run() {
    let h = start(trust_loopback).await;
    let url = h.url(TRAEFIK);
    let cookie = h.session_cookie("akadmin");
    get(&url, &traefik_headers(&[("cookie", &cookie)])).await;
    get(&url, &traefik_headers(&[("cookie", &cookie)])).await;
    get(&url, &traefik_headers(&[])).await;
    h.outpost.set_behaviour(Behaviour::Status(204));
    get(&url, &traefik_headers(&[])).await; // a rare code counts in its class (200)
    h.outpost.set_behaviour(Behaviour::Status(503));
    for _ in 0..4 {
        let auth = basic(FALLBACK_USER, FALLBACK_PASSWORD);
        get(&url, &traefik_headers(&[("authorization", &auth)])).await;
    }
    let text = scrape(h.admin).await;
    println!("{text}");
    for name in portcullis::metrics::NAMES {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    let Some(out) = promtool(&["check", "metrics"], &text) else {
        return;
    };
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus-rules.yml");
    let text = std::fs::read_to_string(&rules).expect("deploy/prometheus-rules.yml exists");
    for name in [
        "portcullis_fallback_active",
        "portcullis_outpost_up",
        "portcullis_outpost_responses_total{code=\"400\"}",
        "portcullis_config_reloads_total{result=\"rejected\"}",
    ] {
        assert!(text.contains(name), "rules do not use {name}");
    }
    let Some(out) = promtool(&["check", "rules", "deploy/prometheus-rules.yml"], "") else {
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(out) = promtool(&["test", "rules", "deploy/prometheus-rules.test.yml"], "") else {
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
