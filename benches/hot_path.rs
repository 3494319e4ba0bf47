//! Criterion benches of the pure hot-path functions (no sockets): cache key extraction from a
//! realistic 32 KiB `Cookie` header, a cache hit among 100 000 entries, an insert into a full
//! cache (with eviction), classification of an outpost 200, and building the allow response.
//!
//! Run: `taskset -c 1 cargo bench --bench hot_path`. Results: `benches/RESULTS.md`.

use std::collections::hash_map::RandomState;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderName, HeaderValue};
use portcullis::auth::cache::{Cache, CacheKey, Credentials};
use portcullis::auth::outpost::{self, Identity};
use portcullis::auth::request::Caller;
use portcullis::auth::{allow_response, headers::IDENTITY};
use portcullis::upstream::wire::Answer;
use tokio::time::Instant;

/// Entries in the cache for the hit and insert benches (the default `cache.capacity`).
const ENTRIES: usize = 100_000;
/// Size of one outpost session cookie value (securecookie-encoded, as the nginx tier saw them).
const SESSION_VALUE_LEN: usize = 900;

/// A deterministic cookie-safe string of `len` characters.
fn filler(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// One `authentik_proxy_<8 hex>=<900 chars>` pair.
fn session_cookie(i: u64) -> String {
    format!(
        "authentik_proxy_{:08x}={}",
        (i.wrapping_mul(2_654_435_761)) as u32,
        filler(i, SESSION_VALUE_LEN)
    )
}

/// 34 outpost cookies plus analytics, CSRF and preference cookies: about 32 KiB.
fn big_cookie_header() -> String {
    let mut parts: Vec<String> = (0..34).map(session_cookie).collect();
    for (i, name) in [
        "_ga",
        "_gid",
        "csrftoken",
        "sessionid",
        "theme",
        "lang",
        "_pk_id.1.abcd",
    ]
    .iter()
    .enumerate()
    {
        parts.insert(i * 5, format!("{name}={}", filler(1000 + i as u64, 120)));
    }
    parts.join("; ")
}

fn parts_with_cookie(cookie: &str) -> http::request::Parts {
    http::Request::builder()
        .uri("/outpost.goauthentik.io/auth/traefik")
        .header("host", "auth.example")
        .header("x-forwarded-host", "app.example")
        .header("x-forwarded-uri", "/dashboard")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        )
        .header("cookie", cookie)
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn key_for(cookie: &str, hasher: &RandomState) -> CacheKey {
    let parts = parts_with_cookie(cookie);
    let caller = Caller::new(&parts, "127.0.0.1".parse().unwrap(), &[], false);
    let host = HeaderValue::from_static("app.example");
    CacheKey::new(1, &host, &caller, hasher).unwrap()
}

/// A JWT-sized value: header.payload.signature, about 1 KiB.
fn jwt() -> String {
    format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
        filler(7, 640),
        filler(8, 342)
    )
}

/// The twelve identity headers the outpost sends for a user.
fn identity_headers(user: &str, jwt: &str) -> Vec<(HeaderName, HeaderValue)> {
    let values = [
        user.to_owned(),
        "authentik Admins|staff".to_owned(),
        String::new(),
        format!("{user}@example.org"),
        format!("User {user}"),
        filler(user.len() as u64, 64),
        jwt.to_owned(),
        "https://auth.example/application/o/app/jwks/".to_owned(),
        "authentik Embedded Outpost".to_owned(),
        "app-provider".to_owned(),
        "app".to_owned(),
        "goauthentik.io/outpost/2026.5.0".to_owned(),
    ];
    IDENTITY
        .iter()
        .cloned()
        .zip(values)
        .map(|(n, v)| (n, HeaderValue::from_str(&v).unwrap()))
        .collect()
}

fn identity(user: &str) -> Identity {
    Identity::from_pairs(identity_headers(user, &jwt()), None)
}

fn key_extraction(c: &mut Criterion) {
    let header = big_cookie_header();
    assert!((30_000..34_000).contains(&header.len()), "{}", header.len());
    let parts = parts_with_cookie(&header);
    let hasher = RandomState::new();
    let host = HeaderValue::from_static("app.example");
    c.bench_function("cache_key/cookie_32k", |b| {
        b.iter(|| {
            let caller = Caller::new(black_box(&parts), "127.0.0.1".parse().unwrap(), &[], false);
            CacheKey::new(1, &host, &caller, &hasher)
        })
    });
    let one = parts_with_cookie(&session_cookie(1));
    c.bench_function("cache_key/one_session_cookie", |b| {
        b.iter(|| {
            let caller = Caller::new(black_box(&one), "127.0.0.1".parse().unwrap(), &[], false);
            CacheKey::new(1, &host, &caller, &hasher)
        })
    });
}

/// `n` keys of one session cookie each, numbered from `from`.
fn keys(from: u64, n: usize, hasher: &RandomState) -> Vec<CacheKey> {
    (from..from + n as u64)
        .map(|i| key_for(&session_cookie(i), hasher))
        .collect()
}

fn cache_ops(c: &mut Criterion) {
    let hasher = RandomState::new();
    let ident = identity("alice");
    let now = Instant::now();
    let cache = Cache::new(ENTRIES, Duration::from_secs(3600));
    let resident = keys(0, ENTRIES, &hasher);
    for k in &resident {
        assert!(cache.insert(k, &ident, now));
    }
    let mut i = 0usize;
    c.bench_function("cache/hit_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            let (lookup, id) = cache.get(black_box(&resident[i]), now);
            debug_assert!(id.is_some(), "{lookup:?}");
            id
        })
    });
    // Cycle through twice the capacity so every insert misses and evicts the least recent.
    let fresh = keys(ENTRIES as u64, ENTRIES, &hasher);
    let pool: Vec<&CacheKey> = fresh.iter().chain(resident.iter()).collect();
    let mut j = 0usize;
    c.bench_function("cache/insert_evict_full_100k", |b| {
        b.iter(|| {
            j = (j + 1) % pool.len();
            cache.insert(black_box(pool[j]), &ident, now)
        })
    });
    assert!(cache.len() <= ENTRIES);
    // A sign-out whose credential is cached nowhere (what a flood of junk sign-outs costs): the
    // purge still scans every entry.
    let junk = parts_with_cookie("authentik_proxy_0badc0de=not-a-session");
    let junk = Credentials::of(&Caller::new(
        &junk,
        "127.0.0.1".parse().unwrap(),
        &[],
        false,
    ));
    let before = cache.len();
    c.bench_function("cache/purge_unknown_credential_100k", |b| {
        b.iter(|| cache.purge(black_box(&junk)))
    });
    assert_eq!(
        cache.len(),
        before,
        "a credential cached nowhere removes nothing"
    );
}

/// The outpost's 200 on the wire: the twelve identity headers (1 KiB JWT) and four others.
fn outpost_200() -> Vec<u8> {
    let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
    let mut field = |n: &str, v: &[u8]| {
        raw.extend_from_slice(n.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(v);
        raw.extend_from_slice(b"\r\n");
    };
    for (n, v) in identity_headers("alice", &jwt()) {
        field(n.as_str(), v.as_bytes());
    }
    field("User-Agent", b"Mozilla/5.0");
    field("X-Powered-By", b"goauthentik.io");
    field("Date", b"Tue, 02 Jun 2026 10:00:00 GMT");
    field("Content-Length", b"0");
    raw.extend_from_slice(b"\r\n");
    raw
}

fn classify_and_respond(c: &mut Criterion) {
    let raw = outpost_200();
    c.bench_function("outpost/parse_and_classify_200_12_identity_headers", |b| {
        b.iter(|| {
            let answer = Answer::parse_complete(black_box(&raw), 256 * 1024).unwrap();
            outpost::classify(&answer)
        })
    });
    let ident = identity("alice");
    let parts = parts_with_cookie(&session_cookie(1));
    c.bench_function("response/allow_from_cached_identity", |b| {
        b.iter(|| {
            let caller = Caller::new(&parts, "127.0.0.1".parse().unwrap(), &[], false);
            allow_response(black_box(&ident), &[], &caller)
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = key_extraction, cache_ops, classify_and_respond
}
criterion_main!(benches);
