//! The emergency Basic realm: who may in while the outpost is down (DESIGN.md section 4).
//!
//! Why: this is the only fail-open path (DESIGN.md section 8, rule 4), so it must be cheap for the
//! right people during an outage and expensive for everyone else.
//!
//! - Credentials come from `Authorization: Basic base64(user:password)` (RFC 7617) and are checked
//!   against the htpasswd file (see `htpasswd.rs`) on a blocking thread.
//! - A verified credential is remembered for `verified_ttl` as HMAC-SHA256(key, user NUL password)
//!   under a per-process random key, one entry per htpasswd user, compared in constant time, so an
//!   outage costs one bcrypt per credential, not per request. Passwords are never stored.
//! - Failures are counted per user name (across addresses) and per client address (IPv6 per /64,
//!   since one host owns a whole /64) over a fixed window that starts at the first failure. Once
//!   either count reaches its limit every attempt is `Limited`, a correct password too, until the
//!   window ends. The limit is checked before any verification. An attempt reserves its failure
//!   before the slow verification and a success refunds it, so concurrent guesses cannot overrun
//!   the limit; a success does not otherwise reset earlier failures (the window is a fixed budget).
//! - The file is re-read when its contents change; a good new file replaces the users atomically
//!   and forgets every remembered credential; a broken or vanished file keeps the last good users.
//!
//! Invariants: no panic on request input; no lock is held across `.await`; every map is bounded.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use http::HeaderValue;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use super::htpasswd::HtpasswdError;
use super::htpasswd::{Htpasswd, MAX_FILE_BYTES};
use crate::config::FallbackConfig;

/// Longest `Authorization` value considered; longer Basic credentials are refused unread.
pub const MAX_AUTHORIZATION_BYTES: usize = 4096;
/// Entries per failure map (user names, addresses). Past it, expired entries go first, then the
/// oldest; htpasswd users are counted in their own map, so sprayed names cannot evict them.
pub const MAX_TRACKED: usize = 65_536;
/// How often the watcher looks at the file: the contract applies changes within 2 s.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);
/// Smallest `retry_after`: `Retry-After` is in whole seconds and 0 would invite a retry storm.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// RFC 7617 section 2 uses RFC 4648 base64; some clients drop the padding, which is harmless.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What the emergency realm says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid credentials for this user.
    Allow {
        /// The htpasswd user name.
        user: Arc<str>,
    },
    /// No, malformed or wrong credentials.
    Deny,
    /// Too many failures for this user or address.
    Limited {
        /// When to come back: until the window ends, at least 1 s.
        retry_after: Duration,
    },
}

/// A remembered successful verification.
struct Remembered {
    mac: [u8; 32],
    verified_at: Instant,
}

/// Remembered verifications; `generation` changes on every reload so a verification that began
/// before a reload cannot be remembered after it.
#[derive(Default)]
struct Memory {
    generation: u64,
    entries: HashMap<Arc<str>, Remembered>,
}

/// What the file watcher knows: the digest of the contents in force, the last problem logged.
#[derive(Default)]
struct FileState {
    applied: Option<[u8; 32]>,
    last_problem: Option<String>,
}

/// The emergency realm: users, remembered verifications, failure limits.
pub struct Realm {
    name: String,
    path: PathBuf,
    verified_ttl: Duration,
    users: ArcSwap<Htpasswd>,
    mac: Hmac<Sha256>,
    memory: Mutex<Memory>,
    limiter: Mutex<Limiter>,
    file: Mutex<FileState>,
    slow: AtomicU64,
}

impl fmt::Debug for Realm {
    // Neither hashes nor the HMAC key nor remembered MACs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Realm")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("users", &self.users())
            .field("remembered", &self.remembered_credentials())
            .field("slow_verifications", &self.slow_verifications())
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means another thread panicked mid-update; the maps stay usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Realm {
    /// Loads the realm from `cfg.htpasswd_file`.
    ///
    /// A missing file is not an error: the realm starts empty and denies everything (fail
    /// closed), an error is logged, and the watcher picks the file up when it appears. An
    /// unreadable or malformed file is an error, so start-up refuses.
    pub fn load(cfg: &FallbackConfig) -> Result<Realm, HtpasswdError> {
        let realm = Realm::empty(cfg);
        match realm.read_and_apply() {
            Ok(_) => {}
            Err(HtpasswdError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::error!(
                    path = %realm.path.display(),
                    "htpasswd file missing: every emergency login is denied until it appears"
                );
                lock(&realm.file).last_problem = Some("missing".to_owned());
            }
            Err(error) => return Err(error),
        }
        Ok(realm)
    }

    fn empty(cfg: &FallbackConfig) -> Realm {
        // A 32-byte key; HMAC pads keys to the 64-byte block (RFC 2104 section 2), so the padded
        // form is the same key and construction cannot fail.
        let mut key = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut key[..32]);
        Realm {
            name: cfg.realm.clone(),
            path: cfg.htpasswd_file.clone(),
            verified_ttl: cfg.verified_ttl,
            users: ArcSwap::from_pointee(Htpasswd::default()),
            mac: Hmac::<Sha256>::new(&key.into()),
            memory: Mutex::new(Memory::default()),
            limiter: Mutex::new(Limiter::new(cfg)),
            file: Mutex::new(FileState::default()),
            slow: AtomicU64::new(0),
        }
    }

    /// The Basic realm name, for `WWW-Authenticate: Basic realm="..."`.
    pub fn realm_name(&self) -> &str {
        &self.name
    }

    /// Number of users in force.
    pub fn users(&self) -> usize {
        self.users.load().len()
    }

    /// Slow (bcrypt/argon2id) verifications started since load.
    pub fn slow_verifications(&self) -> u64 {
        self.slow.load(Ordering::Relaxed)
    }

    /// Credentials currently remembered (at most one per user).
    pub fn remembered_credentials(&self) -> usize {
        lock(&self.memory).entries.len()
    }

    /// Judges one request: `authorization` is its `Authorization` header, `client` the address
    /// already resolved through trusted proxies.
    ///
    /// No header, or a scheme other than Basic, is `Deny` without counting a failure. A broken
    /// Basic header counts against the address; a wrong password against user and address.
    pub async fn check(&self, authorization: Option<&HeaderValue>, client: IpAddr) -> Verdict {
        let Some(value) = authorization else {
            return Verdict::Deny;
        };
        let now = Instant::now();
        let address = address_key(client);
        let (user, password) = match parse_authorization(value) {
            Presented::OtherScheme => return Verdict::Deny,
            Presented::Malformed => return self.malformed(address, now),
            Presented::Basic { user, password } => (user, password),
        };
        // Generation before users: a reload stores users and bumps the generation under the
        // memory lock, so a verification against old users can never be remembered as new.
        let generation = lock(&self.memory).generation;
        let users = self.users.load_full();
        let key = UserKey::new(&user, users.user(&user).is_some());
        if let Some(retry_after) = lock(&self.limiter).blocked(Some(&key), address, now) {
            return Verdict::Limited { retry_after };
        }
        let mac = self.mac_of(&user, &password);
        if let Some(name) = self.recall(&user, &mac, now) {
            return Verdict::Allow { user: name };
        }
        if let Err(retry_after) = lock(&self.limiter).reserve(Some(&key), address, now) {
            return Verdict::Limited { retry_after };
        }
        let name = users.user(&user);
        if !self.slow_verify(users, user, password).await {
            return Verdict::Deny;
        }
        let Some(name) = name else {
            return Verdict::Deny;
        };
        lock(&self.limiter).refund(Some(&key), address);
        self.remember(&name, mac, generation);
        Verdict::Allow { user: name }
    }

    /// A broken Basic header: limited if the address is, else one failure for the address.
    fn malformed(&self, address: IpAddr, now: Instant) -> Verdict {
        match lock(&self.limiter).reserve(None, address, now) {
            Ok(()) => Verdict::Deny,
            Err(retry_after) => Verdict::Limited { retry_after },
        }
    }

    fn mac_of(&self, user: &str, password: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The user's stored name if this exact credential was verified within `verified_ttl`.
    fn recall(&self, user: &str, mac: &[u8; 32], now: Instant) -> Option<Arc<str>> {
        let memory = lock(&self.memory);
        let (name, entry) = memory.entries.get_key_value(user)?;
        let fresh = now.saturating_duration_since(entry.verified_at) < self.verified_ttl;
        (fresh && bool::from(entry.mac.ct_eq(mac))).then(|| name.clone())
    }

    /// Remembers a success, unless the TTL is zero or a reload happened meanwhile.
    fn remember(&self, name: &Arc<str>, mac: [u8; 32], generation: u64) {
        if self.verified_ttl.is_zero() {
            return;
        }
        let mut memory = lock(&self.memory);
        if memory.generation != generation {
            return;
        }
        // Keyed by htpasswd user: bounded by the file, a new password replaces the old entry.
        let verified_at = Instant::now();
        memory
            .entries
            .insert(name.clone(), Remembered { mac, verified_at });
    }

    /// Runs the slow hash on a blocking thread; a failed task denies (fail closed).
    async fn slow_verify(&self, users: Arc<Htpasswd>, user: String, password: String) -> bool {
        self.slow.fetch_add(1, Ordering::Relaxed);
        match tokio::task::spawn_blocking(move || users.verify(&user, &password)).await {
            Ok(verified) => verified,
            Err(error) => {
                tracing::error!(%error, "htpasswd verification task failed");
                false
            }
        }
    }

    /// Re-reads the file; if its contents changed and parse, swaps the users in atomically and
    /// forgets every remembered credential. Returns whether anything changed.
    ///
    /// On error the previous users stay in force and the problem is logged (once per distinct
    /// problem, so the watcher does not repeat it every second).
    pub fn reload(&self) -> Result<bool, HtpasswdError> {
        let result = self.read_and_apply();
        match &result {
            Ok(changed) => {
                let recovered = lock(&self.file).last_problem.take().is_some();
                if *changed || recovered {
                    tracing::info!(
                        path = %self.path.display(),
                        users = self.users(),
                        "htpasswd loaded; remembered credentials forgotten"
                    );
                }
            }
            Err(error) => self.log_problem(error),
        }
        result
    }

    fn log_problem(&self, error: &HtpasswdError) {
        let mut problem = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            problem = format!("{problem}: {cause}");
            source = cause.source();
        }
        let mut file = lock(&self.file);
        if file.last_problem.as_deref() != Some(problem.as_str()) {
            tracing::error!(
                path = %self.path.display(),
                error = %problem,
                "htpasswd not reloaded, keeping the previous users"
            );
            file.last_problem = Some(problem);
        }
    }

    fn read_and_apply(&self) -> Result<bool, HtpasswdError> {
        let text = read_bounded(&self.path)?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let mut file = lock(&self.file);
        if file.applied == Some(digest) {
            return Ok(false);
        }
        let users = Arc::new(Htpasswd::parse(&text)?);
        let mut memory = lock(&self.memory);
        self.users.store(users);
        memory.generation = memory.generation.wrapping_add(1);
        memory.entries.clear();
        file.applied = Some(digest);
        Ok(true)
    }

    /// Polls the file every [`RELOAD_POLL`] and reloads it when it changes. The task ends when
    /// the realm is dropped; abort the handle to stop it sooner.
    pub fn spawn_watcher(self: &Arc<Self>) -> JoinHandle<()> {
        let realm: Weak<Realm> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(realm) = realm.upgrade() else {
                    return;
                };
                // File IO off the async threads; reload logs its own problems.
                let _ = tokio::task::spawn_blocking(move || realm.reload()).await;
            }
        })
    }
}

/// Reads the whole file, refusing more than [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<String, HtpasswdError> {
    let io = |source| HtpasswdError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(HtpasswdError::TooLarge {
            path: path.to_owned(),
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(text)
}

/// What an `Authorization` header presents.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    /// Another scheme (Bearer, Negotiate, ...): not ours, like no header.
    OtherScheme,
    /// Basic, but too long, bad base64, not UTF-8, no colon or no user name.
    Malformed,
    /// Basic with a user name and a password.
    Basic { user: String, password: String },
}

/// Parses `Basic token68` (RFC 7235 section 2.1: the scheme is case-insensitive and followed by
/// one or more spaces; RFC 7617 section 2: the token is base64 of `user-id ":" password`, the
/// user-id has no colon, the password may have any, and UTF-8 is the charset we accept).
fn parse_authorization(value: &HeaderValue) -> Presented {
    let bytes = value.as_bytes();
    let (scheme, rest) = match bytes.iter().position(|&b| b == b' ') {
        Some(space) => bytes.split_at(space),
        None => (bytes, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Presented::OtherScheme;
    }
    if bytes.len() > MAX_AUTHORIZATION_BYTES {
        return Presented::Malformed;
    }
    let Ok(decoded) = BASIC_BASE64.decode(rest.trim_ascii()) else {
        return Presented::Malformed;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return Presented::Malformed;
    };
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() => Presented::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        },
        _ => Presented::Malformed,
    }
}

/// The limiter's key for an address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
    }
}

/// A presented user name as the limiter knows it: a digest (fixed size whatever was sent), and
/// whether the file has that user (its own map, which sprayed names cannot evict).
struct UserKey {
    digest: [u8; 32],
    known: bool,
}

impl UserKey {
    fn new(user: &str, known: bool) -> UserKey {
        UserKey {
            digest: Sha256::digest(user.as_bytes()).into(),
            known,
        }
    }
}

/// Failures of one key in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    failures: u32,
    started: Instant,
}

/// Failure counts for one kind of key, bounded to `cap` entries.
struct Counter<K> {
    map: HashMap<K, Window>,
    max: u32,
    cap: usize,
}

/// Time left in a window started at `started`, if any.
fn remaining(started: Instant, window: Duration, now: Instant) -> Option<Duration> {
    window
        .checked_sub(now.saturating_duration_since(started))
        .filter(|left| !left.is_zero())
}

impl<K: std::hash::Hash + Eq + Copy> Counter<K> {
    fn new(max: u32, cap: usize) -> Counter<K> {
        Counter {
            map: HashMap::new(),
            max,
            cap,
        }
    }

    /// `Some(retry_after)` while `key` has reached the limit in a live window.
    fn blocked(&self, key: &K, window: Duration, now: Instant) -> Option<Duration> {
        let entry = self.map.get(key)?;
        if entry.failures < self.max {
            return None;
        }
        remaining(entry.started, window, now).map(|left| left.max(MIN_RETRY_AFTER))
    }

    /// Counts one failure; returns whether this one reached the limit.
    fn add(&mut self, key: K, window: Duration, now: Instant) -> bool {
        if !self.map.contains_key(&key) {
            self.make_room(window, now);
        }
        let fresh = Window {
            failures: 0,
            started: now,
        };
        let entry = self.map.entry(key).or_insert(fresh);
        if remaining(entry.started, window, now).is_none() {
            *entry = fresh;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.failures == self.max
    }

    /// Takes back one failure (a reserved attempt that succeeded).
    fn refund(&mut self, key: &K) {
        if let Some(entry) = self.map.get_mut(key) {
            entry.failures = entry.failures.saturating_sub(1);
        }
    }

    /// Keeps the map under `cap`: drop expired windows, then, if still full, the oldest.
    fn make_room(&mut self, window: Duration, now: Instant) {
        if self.map.len() < self.cap {
            return;
        }
        self.map
            .retain(|_, entry| remaining(entry.started, window, now).is_some());
        while self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.started)
                .map(|(k, _)| *k);
            match oldest {
                Some(key) => self.map.remove(&key),
                None => break,
            };
        }
    }
}

/// The failed-attempt limiter of DESIGN.md section 4.
struct Limiter {
    window: Duration,
    known_users: Counter<[u8; 32]>,
    other_users: Counter<[u8; 32]>,
    addresses: Counter<IpAddr>,
}

impl Limiter {
    fn new(cfg: &FallbackConfig) -> Limiter {
        Limiter {
            window: cfg.failure_window,
            known_users: Counter::new(cfg.max_failures_per_user, MAX_TRACKED),
            other_users: Counter::new(cfg.max_failures_per_user, MAX_TRACKED),
            addresses: Counter::new(cfg.max_failures_per_address, MAX_TRACKED),
        }
    }

    fn users_of(&mut self, user: &UserKey) -> &mut Counter<[u8; 32]> {
        if user.known {
            &mut self.known_users
        } else {
            &mut self.other_users
        }
    }

    /// The longer wait of user and address, if either is limited.
    fn blocked(
        &mut self,
        user: Option<&UserKey>,
        address: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        let window = self.window;
        let by_user = user.and_then(|u| self.users_of(u).blocked(&u.digest, window, now));
        let by_address = self.addresses.blocked(&address, window, now);
        by_user.max(by_address)
    }

    /// Counts one failure in advance unless already limited (then `Err(retry_after)`).
    fn reserve(
        &mut self,
        user: Option<&UserKey>,
        address: IpAddr,
        now: Instant,
    ) -> Result<(), Duration> {
        if let Some(retry_after) = self.blocked(user, address, now) {
            return Err(retry_after);
        }
        let window = self.window;
        if let Some(u) = user {
            if self.users_of(u).add(u.digest, window, now) && u.known {
                tracing::warn!("emergency login limited for a user after repeated failures");
            }
        }
        if self.addresses.add(address, window, now) {
            tracing::warn!(%address, "emergency login limited for an address after repeated failures");
        }
        Ok(())
    }

    /// Takes back a reservation whose verification succeeded.
    fn refund(&mut self, user: Option<&UserKey>, address: IpAddr) {
        if let Some(u) = user {
            self.users_of(u).refund(&u.digest);
        }
        self.addresses.refund(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::AtomicUsize;

    const WINDOW: Duration = Duration::from_secs(15 * 60);
    const TTL: Duration = Duration::from_secs(300);

    fn temp_path() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("portcullis-htpasswd-{}-{n}", std::process::id()))
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
        let Verdict::Limited { retry_after } = attempt(&realm, "alice", "right", ip(1)).await
        else {
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
    async fn broken_or_vanished_file_keeps_the_previous_users() {
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
        assert_eq!(realm.users(), 1);
        assert_eq!(
            attempt(&realm, "alice", "right", ip(1)).await,
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

    #[tokio::test(start_paused = true)]
    async fn counter_stays_bounded_dropping_expired_then_oldest() {
        let mut counter: Counter<u32> = Counter::new(1, 3);
        let window = Duration::from_secs(10);
        for key in 0..3 {
            counter.add(key, window, Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        counter.add(3, window, Instant::now());
        assert_eq!(counter.map.len(), 3);
        assert!(!counter.map.contains_key(&0), "oldest evicted");
        tokio::time::advance(window).await;
        counter.add(4, window, Instant::now());
        assert_eq!(counter.map.len(), 1, "expired entries dropped first");
    }
}
