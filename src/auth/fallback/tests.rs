//! Unit tests of the emergency realm: credentials, remembered verifications, limiter, reload.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicUsize;

const WINDOW: Duration = Duration::from_secs(15 * 60);
const TTL: Duration = Duration::from_secs(300);

fn temp_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("portcullis-htpasswd-{}-{n}", std::process::id()));
    // A file left by an earlier run whose process had the same id would stand in for "missing".
    let _ = std::fs::remove_file(&path);
    path
}

fn bcrypt_line(user: &str, password: &str) -> String {
    format!("{user}:{}\n", bcrypt::hash(password, 4).expect("hash"))
}

fn config(path: &Path, verified_ttl: Duration) -> FallbackConfig {
    FallbackConfig {
        enabled: true,
        realm: "Emergency Access".to_owned(),
        htpasswd_file: path.to_owned(),
        trip_after: 3,
        probe_interval: Duration::from_secs(2),
        verified_ttl,
        max_failures_per_user: 5,
        max_failures_per_address: 10,
        failure_window: WINDOW,
    }
}

/// A realm over a fresh file holding alice:right (bcrypt).
fn realm_with(verified_ttl: Duration) -> (Realm, PathBuf) {
    let path = temp_path();
    std::fs::write(&path, bcrypt_line("alice", "right")).expect("write");
    let realm = Realm::load(&config(&path, verified_ttl)).expect("load");
    (realm, path)
}

fn basic(user: &str, password: &str) -> HeaderValue {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::try_from(format!("Basic {token}")).expect("header")
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

fn allow(user: &str) -> Verdict {
    Verdict::Allow { user: user.into() }
}

async fn attempt(realm: &Realm, user: &str, password: &str, from: IpAddr) -> Verdict {
    realm.check(Some(&basic(user, password)), from).await
}

fn is_limited(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Limited { retry_after }
        if *retry_after >= MIN_RETRY_AFTER && *retry_after <= WINDOW)
}

#[tokio::test]
async fn right_password_allows_wrong_denies() {
    let (realm, _path) = realm_with(TTL);
    assert_eq!(realm.users(), 1);
    assert_eq!(realm.realm_name(), "Emergency Access");
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
    assert_eq!(
        attempt(&realm, "alice", "wrong", ip(1)).await,
        Verdict::Deny
    );
    assert_eq!(
        attempt(&realm, "Alice", "right", ip(1)).await,
        Verdict::Deny
    );
    assert_eq!(attempt(&realm, "bob", "right", ip(1)).await, Verdict::Deny);
}

#[tokio::test]
async fn scheme_is_case_insensitive_and_padding_optional() {
    let (realm, _path) = realm_with(TTL);
    let token = base64::engine::general_purpose::STANDARD_NO_PAD.encode("alice:right");
    let header = HeaderValue::try_from(format!("bAsIc   {token}")).expect("header");
    assert_eq!(realm.check(Some(&header), ip(1)).await, allow("alice"));
}

#[tokio::test]
async fn missing_or_other_scheme_denies_without_counting() {
    let (realm, _path) = realm_with(TTL);
    let bearer = HeaderValue::from_static("Bearer abc");
    for _ in 0..30 {
        assert_eq!(realm.check(None, ip(1)).await, Verdict::Deny);
        assert_eq!(realm.check(Some(&bearer), ip(1)).await, Verdict::Deny);
    }
    assert_eq!(realm.slow_verifications(), 0);
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
}

#[tokio::test]
async fn garbage_basic_headers_deny_and_count_against_the_address() {
    let (realm, _path) = realm_with(TTL);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let long = format!(
        "Basic {}",
        b64(format!("alice:{}", "x".repeat(4096)).as_bytes())
    );
    let garbage = [
        "Basic".to_owned(),
        "Basic !!!not-base64!!!".to_owned(),
        format!("Basic {}", b64(b"no-colon")),
        format!("Basic {}", b64(b":empty-user")),
        format!("Basic {}", b64(b"alice:\xff\xfe")),
        long,
    ];
    for value in &garbage {
        let header = HeaderValue::try_from(value.as_str()).expect("header");
        assert_eq!(
            realm.check(Some(&header), ip(7)).await,
            Verdict::Deny,
            "{value}"
        );
    }
    assert_eq!(
        realm.slow_verifications(),
        0,
        "garbage never reaches bcrypt"
    );
    for _ in garbage.len()..10 {
        let header = HeaderValue::from_static("Basic %%%");
        assert_eq!(realm.check(Some(&header), ip(7)).await, Verdict::Deny);
    }
    assert!(is_limited(&attempt(&realm, "alice", "right", ip(7)).await));
}

#[tokio::test]
async fn remembered_credential_skips_the_slow_hash() {
    let (realm, _path) = realm_with(TTL);
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
    assert_eq!(realm.slow_verifications(), 1);
    for _ in 0..5 {
        assert_eq!(
            attempt(&realm, "alice", "right", ip(2)).await,
            allow("alice")
        );
    }
    assert_eq!(realm.slow_verifications(), 1);
    assert_eq!(realm.remembered_credentials(), 1);
    // Memory never admits another password for the same user.
    assert_eq!(
        attempt(&realm, "alice", "wrong", ip(1)).await,
        Verdict::Deny
    );
    assert_eq!(realm.slow_verifications(), 2);
}

#[tokio::test(start_paused = true)]
async fn remembered_credential_expires_after_ttl() {
    let (realm, _path) = realm_with(TTL);
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
    tokio::time::advance(TTL - Duration::from_secs(1)).await;
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
    assert_eq!(realm.slow_verifications(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
    assert_eq!(realm.slow_verifications(), 2);
}

#[tokio::test]
async fn zero_ttl_remembers_nothing() {
    let (realm, _path) = realm_with(Duration::ZERO);
    for _ in 0..3 {
        assert_eq!(
            attempt(&realm, "alice", "right", ip(1)).await,
            allow("alice")
        );
    }
    assert_eq!(realm.slow_verifications(), 3);
    assert_eq!(realm.remembered_credentials(), 0);
}

#[tokio::test]
async fn five_failures_limit_the_user_even_with_the_right_password_from_anywhere() {
    let (realm, _path) = realm_with(TTL);
    for n in 0..5 {
        assert_eq!(
            attempt(&realm, "alice", "wrong", ip(10 + n)).await,
            Verdict::Deny
        );
    }
    let slow = realm.slow_verifications();
    assert!(is_limited(&attempt(&realm, "alice", "right", ip(10)).await));
    assert!(is_limited(&attempt(&realm, "alice", "right", ip(99)).await));
    assert_eq!(
        realm.slow_verifications(),
        slow,
        "no bcrypt for a limited user"
    );
}

#[tokio::test]
async fn limit_applies_to_a_remembered_credential_too() {
    let (realm, _path) = realm_with(TTL);
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
    for n in 0..5 {
        attempt(&realm, "alice", "wrong", ip(20 + n)).await;
    }
    assert!(is_limited(&attempt(&realm, "alice", "right", ip(1)).await));
}

#[tokio::test]
async fn ten_failures_from_one_address_limit_that_address() {
    let (realm, _path) = realm_with(TTL);
    for n in 0..10 {
        let user = format!("user{n}");
        assert_eq!(attempt(&realm, &user, "guess", ip(66)).await, Verdict::Deny);
    }
    assert!(is_limited(&attempt(&realm, "alice", "right", ip(66)).await));
    assert_eq!(
        attempt(&realm, "alice", "right", ip(67)).await,
        allow("alice")
    );
}

#[tokio::test(start_paused = true)]
async fn limit_lifts_when_the_window_ends() {
    let (realm, _path) = realm_with(TTL);
    for n in 0..5 {
        attempt(&realm, "alice", "wrong", ip(30 + n)).await;
    }
    let Verdict::Limited { retry_after } = attempt(&realm, "alice", "right", ip(1)).await else {
        panic!("expected Limited");
    };
    tokio::time::advance(retry_after - Duration::from_millis(500)).await;
    assert!(is_limited(&attempt(&realm, "alice", "right", ip(1)).await));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
}

#[tokio::test]
async fn success_refunds_its_reservation_but_not_earlier_failures() {
    let (realm, _path) = realm_with(Duration::ZERO);
    for n in 0..4 {
        attempt(&realm, "alice", "wrong", ip(40 + n)).await;
    }
    for _ in 0..3 {
        assert_eq!(
            attempt(&realm, "alice", "right", ip(1)).await,
            allow("alice")
        );
    }
    attempt(&realm, "alice", "wrong", ip(50)).await;
    assert!(is_limited(&attempt(&realm, "alice", "right", ip(1)).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_cannot_overrun_the_limit() {
    let (realm, _path) = realm_with(TTL);
    let realm = Arc::new(realm);
    let mut guesses = tokio::task::JoinSet::new();
    for n in 0..20 {
        let realm = realm.clone();
        guesses.spawn(async move { attempt(&realm, "alice", "wrong", ip(100 + n)).await });
    }
    let mut limited = 0;
    while let Some(verdict) = guesses.join_next().await {
        limited += usize::from(is_limited(&verdict.expect("task")));
    }
    assert_eq!(realm.slow_verifications(), 5);
    assert_eq!(limited, 15);
}

proptest::proptest! {
    #[test]
    fn any_header_value_parses_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let mut value = b"Basic ".to_vec();
        value.extend(bytes.iter().filter(|b| **b >= 0x20 && **b != 0x7f));
        if let Ok(header) = HeaderValue::from_bytes(&value) {
            let _ = parse_authorization(&header);
        }
        if let Ok(header) = HeaderValue::from_bytes(&bytes) {
            let _ = parse_authorization(&header);
        }
    }
}

#[tokio::test]
async fn reload_rotates_the_password_and_forgets_remembered_ones() {
    let (realm, path) = realm_with(TTL);
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
    assert!(!realm.reload().expect("unchanged"));
    std::fs::write(&path, bcrypt_line("alice", "rotated")).expect("write");
    assert!(realm.reload().expect("reload"));
    assert_eq!(realm.remembered_credentials(), 0);
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        Verdict::Deny
    );
    assert_eq!(
        attempt(&realm, "alice", "rotated", ip(1)).await,
        allow("alice")
    );
}

#[tokio::test]
async fn broken_file_keeps_the_previous_users_but_a_removed_one_revokes_them_all() {
    let (realm, path) = realm_with(TTL);
    let broken = format!("{}alice-without-a-hash\n", bcrypt_line("bob", "x"));
    std::fs::write(&path, broken).expect("write");
    match realm.reload() {
        Err(HtpasswdError::Malformed { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
    std::fs::remove_file(&path).expect("remove");
    assert!(matches!(realm.reload(), Err(HtpasswdError::Io { .. })));
    assert_eq!(realm.users(), 0);
    assert_eq!(realm.remembered_credentials(), 0);
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        Verdict::Deny,
        "a removed htpasswd file must revoke remembered logins too"
    );
    std::fs::write(&path, bcrypt_line("alice", "back")).expect("write");
    assert!(realm.reload().expect("reload"));
    assert_eq!(
        attempt(&realm, "alice", "back", ip(2)).await,
        allow("alice")
    );
}

#[tokio::test]
async fn missing_file_at_load_denies_until_it_appears() {
    let path = temp_path();
    let realm = Realm::load(&config(&path, TTL)).expect("missing is not fatal");
    assert_eq!(realm.users(), 0);
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        Verdict::Deny
    );
    std::fs::write(&path, bcrypt_line("alice", "right")).expect("write");
    assert!(realm.reload().expect("reload"));
    assert_eq!(
        attempt(&realm, "alice", "right", ip(1)).await,
        allow("alice")
    );
}

#[test]
fn malformed_file_at_load_is_an_error() {
    let path = temp_path();
    std::fs::write(&path, "# ok\nadmin:plaintext\n").expect("write");
    let err = Realm::load(&config(&path, TTL)).expect_err("malformed");
    assert!(
        matches!(err, HtpasswdError::Malformed { line: 2, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn watcher_applies_a_change_within_two_seconds() {
    let (realm, path) = realm_with(TTL);
    let realm = Arc::new(realm);
    let watcher = realm.spawn_watcher();
    std::fs::write(&path, bcrypt_line("alice", "a") + &bcrypt_line("bob", "b")).expect("write");
    let deadline = Instant::now() + Duration::from_secs(2);
    while realm.users() != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(realm.users(), 2);
    watcher.abort();
}

#[test]
fn debug_shows_neither_hashes_nor_key() {
    let (realm, _path) = realm_with(TTL);
    let shown = format!("{realm:?}");
    assert!(
        shown.contains("Emergency Access") && !shown.contains("$2"),
        "{shown}"
    );
}

#[test]
fn ipv6_is_limited_per_64_and_mapped_ipv4_as_ipv4() {
    let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
    let b: Ipv6Addr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
    let c: Ipv6Addr = "2001:db8:1:3::1".parse().expect("ip");
    assert_eq!(address_key(a.into()), address_key(b.into()));
    assert_ne!(address_key(a.into()), address_key(c.into()));
    let mapped: Ipv6Addr = "::ffff:192.0.2.1".parse().expect("ip");
    assert_eq!(address_key(mapped.into()), ip(1));
}
