//! Resident memory of the positive-decision cache holding 100 000 live entries.
//!
//! Fills a [`Cache`] of capacity 100 000 with identities shaped like the fake outpost's (the
//! twelve `X-authentik-*` headers, one distinct identity per session), first without a JWT and
//! then with a realistic ~1 KiB `X-authentik-jwt`, and prints `VmRSS` from `/proc/self/status`
//! before and after, the payload bytes (key + header names and values) and the overhead per entry
//! beyond that payload.
//!
//! Run: `cargo run --release --example cache_rss` (each case in its own child process). Results: `benches/RESULTS.md`.

use std::collections::hash_map::RandomState;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use portcullis::auth::cache::{Cache, CacheKey};
use portcullis::auth::headers::IDENTITY;
use portcullis::auth::outpost::Identity;
use portcullis::auth::request::Caller;
use tokio::time::Instant;

const ENTRIES: usize = 100_000;

/// `VmRSS` of this process in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// A deterministic string of `len` base32 characters (like the fake's session IDs).
fn base32(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 32) as usize] as char
        })
        .collect()
}

/// The key of session `i`: host `app.example`, cookie `authentik_proxy_3b1f8c2a=<52 chars>`.
fn key(i: u64, hasher: &RandomState) -> CacheKey {
    let cookie = format!("authentik_proxy_3b1f8c2a={}", base32(i, 52));
    let parts = http::Request::builder()
        .header("cookie", cookie)
        .body(())
        .expect("request")
        .into_parts()
        .0;
    let caller = Caller::new(&parts, "127.0.0.1".parse().expect("ip"), &[], false);
    CacheKey::new(1, &HeaderValue::from_static("app.example"), &caller, hasher).expect("key")
}

/// The fake outpost's twelve headers for user `i`, with `jwt` (possibly empty).
fn identity(i: u64, jwt: &str) -> Identity {
    let user = format!("user{i}");
    let values = [
        user.clone(),
        "authentik Admins".to_owned(),
        String::new(),
        format!("{user}@example.org"),
        format!("User {i}"),
        base32(i ^ 0xABCD, 64).to_lowercase(),
        jwt.to_owned(),
        "http://127.0.0.1:9000/application/o/portcullis-demo/jwks/".to_owned(),
        "fake-outpost".to_owned(),
        "portcullis-demo-provider".to_owned(),
        "portcullis-demo".to_owned(),
        "goauthentik.io/outpost/2026.5.0".to_owned(),
    ];
    let headers: Vec<(HeaderName, HeaderValue)> = IDENTITY
        .iter()
        .cloned()
        .zip(values)
        .map(|(n, v)| (n, HeaderValue::from_str(&v).expect("header value")))
        .collect();
    Identity::from_pairs(headers, None)
}

/// Key length (without the hash) plus header name and value bytes of one entry.
fn payload(key_len: usize, identity: &Identity) -> usize {
    key_len
        + identity
            .headers()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum::<usize>()
}

fn measure(label: &str, jwt: &str) {
    let hasher = RandomState::new();
    let now = Instant::now();
    // Keys are built outside the measured window: the cache stores its own copy of the bytes.
    let keys: Vec<CacheKey> = (0..ENTRIES as u64).map(|i| key(i, &hasher)).collect();
    let key_len = 8 + "app.example".len() + 1 + 25 + 52 + 1 + 1;
    let before = rss();
    let cache = Cache::new(ENTRIES, Duration::from_secs(3600));
    let mut stored = 0usize;
    for (i, k) in keys.iter().enumerate() {
        let ident = identity(i as u64, jwt);
        stored += payload(key_len, &ident);
        assert!(cache.insert(k, &ident, now));
    }
    let after = rss();
    // Shards hold capacity/16 each and keys spread unevenly, so a few hundred are evicted early.
    let held = cache.len();
    let grown = after.saturating_sub(before);
    let per_entry = grown as f64 / held as f64;
    let payload_per_entry = stored as f64 / ENTRIES as f64;
    println!(
        "{label}: inserted={ENTRIES} held={held} rss_before={:.1}MiB rss_after={:.1}MiB growth={:.1}MiB \
         per_entry={per_entry:.0}B payload_per_entry={payload_per_entry:.0}B \
         overhead_per_entry={:.0}B",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        per_entry - payload_per_entry,
    );
    drop(cache);
    drop(keys);
}

/// Each measurement runs in a fresh child process, so memory freed by one cannot hide the growth
/// of the next.
fn main() {
    let jwt = format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
        base32(7, 640),
        base32(8, 342)
    );
    match std::env::args().nth(1).as_deref() {
        Some("sizes") => println!(
            "size_of: (HeaderName, HeaderValue)={}B Identity={}B CacheKey={}B",
            std::mem::size_of::<(HeaderName, HeaderValue)>(),
            std::mem::size_of::<Identity>(),
            std::mem::size_of::<CacheKey>(),
        ),
        Some("no_jwt") => measure("no_jwt", ""),
        Some("jwt") => measure("jwt_1KiB", &jwt),
        _ => {
            let me = std::env::current_exe().expect("current exe");
            for mode in ["sizes", "no_jwt", "jwt"] {
                let status = std::process::Command::new(&me)
                    .arg(mode)
                    .status()
                    .expect("child");
                assert!(status.success(), "{mode}: {status}");
            }
        }
    }
}
