//! Logs of the real binary: one access-log line per request with endpoint, decision, status and
//! duration; `Cookie`, `Authorization` and passwords never appear, even at `debug`; the regime
//! change "outpost down, fallback active" is logged once however many requests fall back; the
//! text format works too.

mod support;

use std::time::Duration;

use base64::Engine;
use portcullis::demo::outpost::Behaviour;
use support::*;

const TRAEFIK: &str = "/outpost.goauthentik.io/auth/traefik";
const SECRET_COOKIE: &str = "authentik_proxy_x=SECRETCOOKIE";
const SECRET_PASS: &str = "SECRETPASS";
const WRONG_PASS: &str = "SECRETWRONG";

fn b64(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// A config whose emergency user `admin` has the password [`SECRET_PASS`].
fn secret_config(tag: &str, outpost_url: &str, log: &str) -> ConfigFile {
    let mut file = ConfigFile::new(tag, outpost_url);
    file.htpasswd = temp_dir(tag).join("htpasswd");
    let hash = bcrypt::hash(SECRET_PASS, 4).unwrap();
    std::fs::write(&file.htpasswd, format!("admin:{hash}\n")).unwrap();
    file.write(&[("log", log)]);
    file
}

/// Every forbidden string, and its first occurrence in `text`.
fn leaks(text: &str) -> Vec<String> {
    let forbidden = [
        "SECRETCOOKIE".to_owned(),
        SECRET_PASS.to_owned(),
        WRONG_PASS.to_owned(),
        b64("admin", SECRET_PASS),
        b64("admin", WRONG_PASS),
    ];
    forbidden
        .into_iter()
        .filter_map(|f| {
            text.lines()
                .find(|l| l.contains(&f))
                .map(|l| format!("{f} in: {l}"))
        })
        .collect()
}

/// Sends the forward-auth checks of one test run: session-cookie and Basic requests while the
/// outpost is up, a passthrough, then many Basic requests while it is down. Returns the
/// expected `(endpoint, decision, status)` per request.
async fn mixed_run(
    bin: &Binary,
    outpost: &portcullis::demo::outpost::FakeOutpost,
) -> Vec<(String, String, u16)> {
    let url = bin.url(TRAEFIK);
    let good = format!("Basic {}", b64("admin", SECRET_PASS));
    let wrong = format!("Basic {}", b64("admin", WRONG_PASS));
    let mut expected = Vec::new();
    let call = |path: &str, headers: Vec<(&str, &str)>| {
        let url = if path == TRAEFIK {
            url.clone()
        } else {
            bin.url(path)
        };
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            get(&url, &h).await.status.as_u16()
        }
    };
    let s = call(TRAEFIK, traefik_headers(&[("cookie", SECRET_COOKIE)])).await;
    expected.push(("traefik".into(), "deny".into(), s));
    let s = call(TRAEFIK, traefik_headers(&[("authorization", &good)])).await;
    expected.push(("traefik".into(), "deny".into(), s));
    let s = call(
        "/outpost.goauthentik.io/ping",
        vec![("cookie", SECRET_COOKIE), ("authorization", &good)],
    )
    .await;
    expected.push(("outpost".into(), "passthrough".into(), s));

    outpost.set_behaviour(Behaviour::Status(503));
    for i in 0..12 {
        let auth = if i % 4 == 3 { &wrong } else { &good };
        let s = call(
            TRAEFIK,
            traefik_headers(&[("authorization", auth), ("cookie", SECRET_COOKIE)]),
        )
        .await;
        let decision = if i % 4 == 3 {
            "fallback_deny"
        } else {
            "fallback_allow"
        };
        expected.push(("traefik".into(), decision.into(), s));
    }
    expected
}

#[tokio::test]
async fn json_access_log_has_one_line_per_request_and_no_secrets() {
    let outpost = outpost().await;
    let file = secret_config(
        "logs-json",
        &outpost.url(),
        "level = \"debug\"\nformat = \"json\"",
    );
    let bin = Binary::start(&file).await;
    let expected = mixed_run(&bin, &outpost).await;
    let statuses: Vec<u16> = expected.iter().map(|e| e.2).collect();
    assert_eq!(&statuses[..3], &[302, 302, 204]);
    assert!(
        statuses[3..].iter().all(|s| *s == 200 || *s == 401),
        "{statuses:?}"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let access = loop {
        let access: Vec<serde_json::Value> = bin
            .lines()
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .filter(|v| v["target"] == "access")
            .collect();
        if access.len() >= expected.len() || tokio::time::Instant::now() >= deadline {
            break access;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let got: Vec<(String, String, u16)> = access
        .iter()
        .map(|v| {
            assert!(
                v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
                "duration_ms: {v}"
            );
            (
                v["endpoint"].as_str().unwrap_or_default().to_owned(),
                v["decision"].as_str().unwrap_or_default().to_owned(),
                v["status"].as_u64().unwrap_or_default() as u16,
            )
        })
        .collect();
    assert_eq!(got, expected, "one access line per request, in order");
    let with_outpost_time = access
        .iter()
        .filter(|v| v["outpost_ms"].as_f64().is_some())
        .count();
    assert!(
        with_outpost_time >= 3,
        "outpost_ms missing from the lines that asked the outpost"
    );

    let stderr = bin.stderr();
    assert!(stderr.contains("\"level\":\"DEBUG\""), "debug level is on");
    assert_eq!(leaks(&stderr), Vec::<String>::new());
    let regime = stderr
        .lines()
        .filter(|l| l.contains("outpost down, fallback active"))
        .count();
    assert_eq!(
        regime, 1,
        "regime change logged once across 12 fallback requests"
    );
}

#[tokio::test]
async fn text_format_logs_access_lines_without_secrets_or_colour_codes() {
    let outpost = outpost().await;
    let file = secret_config(
        "logs-text",
        &outpost.url(),
        "level = \"debug\"\nformat = \"text\"",
    );
    let bin = Binary::start(&file).await;
    let expected = mixed_run(&bin, &outpost).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let access = loop {
        let access: Vec<String> = bin
            .lines()
            .into_iter()
            .filter(|l| l.contains(" access:") && l.contains("decision="))
            .collect();
        if access.len() >= expected.len() || tokio::time::Instant::now() >= deadline {
            break access;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(access.len(), expected.len(), "{}", bin.stderr());
    for (line, (endpoint, decision, status)) in access.iter().zip(&expected) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "text, not JSON: {line}"
        );
        for field in [
            format!("endpoint=\"{endpoint}\""),
            format!("decision=\"{decision}\""),
            format!("status={status}"),
            "duration_ms=".to_owned(),
        ] {
            assert!(line.contains(&field), "{field} missing: {line}");
        }
    }
    let stderr = bin.stderr();
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI colour codes in a log that is not a terminal"
    );
    assert_eq!(leaks(&stderr), Vec::<String>::new());
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("outpost down, fallback active"))
            .count(),
        1
    );
}
