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
use limiter::{address_key, Limiter, UserKey};

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
    /// No header, or a scheme other than Basic, is `Deny` without counting a failure (`Limited`
    /// from a limited address: it gets no fresh challenge). A broken Basic header counts against
    /// the address; a wrong password against user and address.
    pub async fn check(&self, authorization: Option<&HeaderValue>, client: IpAddr) -> Verdict {
        let now = Instant::now();
        let address = address_key(client);
        let presented = authorization.map_or(Presented::OtherScheme, parse_authorization);
        let (user, password) = match presented {
            Presented::OtherScheme => {
                return match lock(&self.limiter).blocked(None, address, now) {
                    Some(retry_after) => Verdict::Limited { retry_after },
                    None => Verdict::Deny,
                }
            }
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
        // The audit line of emergency access: once per verification (then it is remembered for
        // `verified_ttl`), not once per request.
        tracing::warn!(user = %name, %client, "emergency login verified against the htpasswd file");
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
    /// problem, so the watcher does not repeat it every second); except when the file is gone:
    /// removing it revokes every emergency login, as a file missing at start-up denies them.
    /// (Secret renderers replace files by rename, which never leaves the path missing.)
    pub fn reload(&self) -> Result<bool, HtpasswdError> {
        let result = self.read_and_apply();
        if let Err(HtpasswdError::Io { source, .. }) = &result {
            if source.kind() == std::io::ErrorKind::NotFound {
                self.revoke_all();
                return result;
            }
        }
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
        let problem = crate::error::error_chain(error);
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

    /// The file is gone: no user, nothing remembered; logged once until it reappears.
    fn revoke_all(&self) {
        let mut file = lock(&self.file);
        if file.last_problem.as_deref() == Some("missing") {
            return;
        }
        let mut memory = lock(&self.memory);
        self.users.store(Arc::new(Htpasswd::default()));
        memory.generation = memory.generation.wrapping_add(1);
        memory.entries.clear();
        file.applied = None;
        file.last_problem = Some("missing".to_owned());
        tracing::error!(
            path = %self.path.display(),
            "htpasswd file removed: every emergency login is denied until it reappears"
        );
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

/// Reads and parses an htpasswd file the way the realm does, without a realm (for `check` and a
/// config reload). Returns the number of users.
pub fn check_file(path: &Path) -> Result<usize, HtpasswdError> {
    Ok(Htpasswd::parse(&read_bounded(path)?)?.len())
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

mod limiter;
#[cfg(test)]
mod tests;
