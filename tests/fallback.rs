//! The emergency Basic realm through the running proxy (DESIGN.md sections 1, 4, 7): its answers,
//! the failed-attempt limiter, htpasswd reload, every hash format, and that bcrypt runs once per
//! credential rather than once per request.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis::config::Config;
use portcullis::metrics::{Attempt, Decision, Endpoint};
use support::*;

const AUTH: &str = "/outpost.goauthentik.io/auth/traefik";

/// A proxy whose outpost refuses connections, so every check reaches the fallback.
async fn outage(tweak: impl FnOnce(&mut Config)) -> Harness {
    let outpost = outpost().await;
    let h = start_with(outpost.clone(), |c| {
        trust_loopback(c);
        c.fallback.probe_interval = Duration::from_secs(60);
        tweak(c);
    })
    .await;
    outpost.shutdown().await;
    h
}

/// A forward-auth check from client address `client` (via `X-Forwarded-For`, loopback trusted)
/// with `Authorization: Basic user:password`.
async fn attempt(h: &Harness, client: &str, user: &str, password: &str) -> Reply {
    let creds = basic(user, password);
    let mut headers = traefik_headers(&[("authorization", &creds)]);
    for (k, v) in headers.iter_mut() {
        if *k == "x-forwarded-for" {
            *v = client;
        }
    }
    get(&h.url(AUTH), &headers).await
}

fn assert_allowed(r: &Reply, user: &str) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-authentik-username"), Some(user), "{r:?}");
    assert_eq!(r.header("x-auth-fallback"), Some("true"), "{r:?}");
}

fn assert_challenged(r: &Reply) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Emergency Access\""),
        "{r:?}"
    );
    assert_eq!(r.header("x-auth-fallback"), Some("true"), "{r:?}");
}

fn assert_limited(r: &Reply) {
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("x-auth-fallback"), Some("true"), "{r:?}");
    assert_eq!(r.header("x-authentik-username"), None, "{r:?}");
}

fn bcrypt_line(user: &str, password: &str) -> String {
    format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap())
}

/// Writes `contents` through a temp file and a rename, as Vault Agent and kubelet do.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn valid_emergency_credentials_are_allowed_with_the_full_identity_set() {
    let h = outage(|_| {}).await;
    let r = attempt(&h, "203.0.113.7", FALLBACK_USER, FALLBACK_PASSWORD).await;
    assert_allowed(&r, FALLBACK_USER);
    for name in &IDENTITY[1..] {
        assert_eq!(r.header(name), Some(""), "{name} must be present and empty");
    }
    assert!(r.body.is_empty());
    assert_eq!(
        h.app
            .metrics
            .requests_total(Endpoint::Traefik, Decision::FallbackAllow),
        1
    );
}

#[tokio::test]
async fn wrong_or_missing_credentials_get_the_basic_challenge() {
    let h = outage(|_| {}).await;
    let r = attempt(&h, "203.0.113.7", FALLBACK_USER, "wrong").await;
    assert_challenged(&r);
    assert_eq!(r.header("x-authentik-username"), None);
    let r = get(&h.url(AUTH), &traefik_headers(&[])).await;
    assert_challenged(&r);
    let r = attempt(&h, "203.0.113.7", "nobody", FALLBACK_PASSWORD).await;
    assert_challenged(&r);
}

#[tokio::test]
async fn five_wrong_passwords_from_many_addresses_limit_the_user_even_with_the_right_one() {
    let h = outage(|_| {}).await;
    for i in 1..=5 {
        let r = attempt(&h, &format!("198.51.100.{i}"), FALLBACK_USER, "guess").await;
        assert_challenged(&r);
    }
    let r = attempt(&h, "198.51.100.6", FALLBACK_USER, FALLBACK_PASSWORD).await;
    assert_limited(&r);
    assert_eq!(
        h.app
            .metrics
            .requests_total(Endpoint::Traefik, Decision::FallbackLimited),
        1
    );
}

#[tokio::test]
async fn ten_failures_from_one_address_limit_that_address_only() {
    let h = outage(|_| {}).await;
    for i in 0..10 {
        let r = attempt(&h, "198.51.100.66", &format!("user{i}"), "guess").await;
        assert_challenged(&r);
    }
    let r = attempt(&h, "198.51.100.66", FALLBACK_USER, FALLBACK_PASSWORD).await;
    assert_limited(&r);
    let r = attempt(&h, "198.51.100.67", FALLBACK_USER, FALLBACK_PASSWORD).await;
    assert_allowed(&r, FALLBACK_USER);
}

#[tokio::test]
async fn fallback_attempt_metrics_count_ok_bad_and_limited() {
    let h = outage(|_| {}).await;
    let m = &h.app.metrics;
    assert_allowed(
        &attempt(&h, "192.0.2.1", FALLBACK_USER, FALLBACK_PASSWORD).await,
        FALLBACK_USER,
    );
    for _ in 0..5 {
        assert_challenged(&attempt(&h, "192.0.2.1", FALLBACK_USER, "guess").await);
    }
    assert_limited(&attempt(&h, "192.0.2.1", FALLBACK_USER, FALLBACK_PASSWORD).await);
    assert_eq!(m.fallback_attempt(Attempt::Ok).get(), 1);
    assert_eq!(m.fallback_attempt(Attempt::BadCredentials).get(), 5);
    assert_eq!(m.fallback_attempt(Attempt::Limited).get(), 1);
    let text = String::from_utf8(
        get(&format!("http://{}/metrics", h.admin), &[])
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    for (result, n) in [("ok", 1), ("bad_credentials", 5), ("limited", 1)] {
        let line = format!("portcullis_fallback_attempts_total{{result=\"{result}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}

#[tokio::test]
async fn bcrypt_runs_once_for_fifty_requests_with_the_same_credentials() {
    let h = outage(|_| {}).await;
    for _ in 0..50 {
        assert_allowed(
            &attempt(&h, "192.0.2.9", FALLBACK_USER, FALLBACK_PASSWORD).await,
            FALLBACK_USER,
        );
    }
    let realm = h.app.runtime().realm.clone().unwrap();
    assert_eq!(realm.slow_verifications(), 1);
    assert_eq!(realm.remembered_credentials(), 1);
}

#[tokio::test]
async fn a_rewritten_htpasswd_applies_within_two_seconds() {
    let h = outage(|_| {}).await;
    let path = h.config.fallback.htpasswd_file.clone();
    assert_allowed(
        &attempt(&h, "192.0.2.20", FALLBACK_USER, FALLBACK_PASSWORD).await,
        FALLBACK_USER,
    );
    replace(&path, &bcrypt_line(FALLBACK_USER, "rotated"));
    let written = Instant::now();
    // Poll with the old password: it succeeds until the reload, so no failure is counted early.
    loop {
        let r = attempt(&h, "192.0.2.20", FALLBACK_USER, FALLBACK_PASSWORD).await;
        if r.status == 401 {
            assert!(
                written.elapsed() < Duration::from_secs(2),
                "applied too late"
            );
            break;
        }
        assert_allowed(&r, FALLBACK_USER);
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "old password still accepted 2 s after the rewrite"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_allowed(
        &attempt(&h, "192.0.2.20", FALLBACK_USER, "rotated").await,
        FALLBACK_USER,
    );
}

#[tokio::test]
async fn a_broken_htpasswd_keeps_the_old_password_working() {
    let h = outage(|_| {}).await;
    let path = h.config.fallback.htpasswd_file.clone();
    replace(&path, "admin:this-is-not-a-hash\n");
    // Across more than two watcher polls the old password keeps working.
    let written = Instant::now();
    while written.elapsed() < Duration::from_millis(2500) {
        assert_allowed(
            &attempt(&h, "192.0.2.30", FALLBACK_USER, FALLBACK_PASSWORD).await,
            FALLBACK_USER,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.app.runtime().realm.as_ref().unwrap().users(), 1);
    // The watcher is alive: a good file after the broken one applies.
    replace(&path, &bcrypt_line("second", "pw2"));
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = attempt(&h, "192.0.2.31", FALLBACK_USER, FALLBACK_PASSWORD).await;
        if r.status == 401 {
            assert!(Instant::now() < deadline, "good file applied too late");
            break;
        }
        assert!(Instant::now() < deadline, "good file not applied in 2 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_allowed(&attempt(&h, "192.0.2.31", "second", "pw2").await, "second");
}

#[tokio::test]
async fn every_htpasswd_hash_format_works_end_to_end() {
    use argon2::password_hash::{PasswordHasher as _, SaltString};

    let bcrypt = bcrypt::hash_with_result("pw-bcrypt", 4).unwrap();
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    let params = argon2::Params::new(256, 1, 1, None).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(b"pw-argon", &salt)
        .unwrap()
        .to_string();
    let users = [
        (
            "y",
            bcrypt.format_for_version(bcrypt::Version::TwoY),
            "pw-bcrypt",
        ),
        (
            "b",
            bcrypt.format_for_version(bcrypt::Version::TwoB),
            "pw-bcrypt",
        ),
        (
            "a",
            bcrypt.format_for_version(bcrypt::Version::TwoA),
            "pw-bcrypt",
        ),
        ("argon", argon, "pw-argon"),
        // SHA-1("password"), base64.
        (
            "sha",
            "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=".to_owned(),
            "password",
        ),
        // `openssl passwd -apr1 -salt abcdefgh password`
        (
            "apr",
            "$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1".to_owned(),
            "password",
        ),
    ];
    let file = temp_dir("formats").join("htpasswd");
    let text: String = users.iter().map(|(u, h, _)| format!("{u}:{h}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let h = outage(|c| c.fallback.htpasswd_file = file.clone()).await;
    assert_eq!(h.app.runtime().realm.as_ref().unwrap().users(), users.len());
    for (i, (user, _, password)) in users.iter().enumerate() {
        let client = format!("192.0.2.{}", 100 + i);
        assert_challenged(&attempt(&h, &client, user, "not-it").await);
        assert_allowed(&attempt(&h, &client, user, password).await, user);
    }
}

#[tokio::test]
async fn a_limited_address_gets_429_without_credentials_too_and_others_still_get_the_challenge() {
    let h = outage(|_| {}).await;
    for i in 0..10 {
        let r = attempt(&h, "198.51.100.70", &format!("user{i}"), "guess").await;
        assert_challenged(&r);
    }
    let from = |client: &'static str, auth: Option<&'static str>| {
        let mut headers = traefik_headers(&[]);
        for (k, v) in headers.iter_mut() {
            if *k == "x-forwarded-for" {
                *v = client;
            }
        }
        headers.extend(auth.map(|a| ("authorization", a)));
        let url = h.url(AUTH);
        async move { get(&url, &headers).await }
    };
    // No credentials, or a scheme other than Basic: no fresh challenge for a limited address.
    assert_limited(&from("198.51.100.70", None).await);
    assert_limited(&from("198.51.100.70", Some("Bearer abc")).await);
    assert_challenged(&from("198.51.100.71", None).await);
}
