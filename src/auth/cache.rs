//! The positive-decision cache (DESIGN.md section 3).
//!
//! Only authenticated allows are stored, keyed by config generation, effective host and every
//! credential the outpost reads (`authentik_proxy_*` cookie values and `Authorization`). The
//! index is a 64-bit hash, but a hit compares the full key bytes, so a collision can never hand
//! one user's identity to another. Shards each hold an LRU behind their own mutex; no lock is
//! held across an `.await`. The shards' caps sum to exactly `cache.capacity`, so the cache never
//! holds more; below 4096 entries there is one shard, and eviction is exactly LRU.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use lru::LruCache;
use tokio::time::Instant;

use super::outpost::Identity;
use super::request::{Caller, SESSION_COOKIE_PREFIX};
use crate::metrics::Lookup;

/// Shards of a large cache: enough that two cores rarely meet on one lock (a power of two, so
/// picking one is a mask).
const SHARDS: usize = 16;
const _: () = assert!(SHARDS.is_power_of_two());
/// The capacity from which the cache is split into [`SHARDS`] shards; below it there is one.
/// Eviction is LRU within a shard, so a split cache is only approximately LRU. From 4096 on each
/// shard holds at least 256 entries, and the entry a full split cache evicts (the oldest of a
/// random sixteenth) is on average the 16th least recent of 4096 or more, and among the oldest
/// 2% with 99% probability. Below it a split would hold a handful per shard (2 at capacity 32),
/// so an active session could be evicted while older ones survive in other shards. A cache that
/// small serves at most a few thousand sessions, and a lock held for one table lookup and a copy
/// of a few hundred bytes is not where such a deployment spends its time: exact LRU is worth
/// more.
const SHARD_FROM: usize = 4096;
/// Bytes of the config generation at the start of every key.
const GENERATION_BYTES: usize = 8;
/// Separator between the key's fields; header values cannot contain it.
const FIELD_END: u8 = 0;
/// Marks the start of the `Authorization` field.
const AUTH_MARK: u8 = 1;

/// The full key: `generation | host \0 count (name=value \0)* \1 authorization`, `count` being
/// the number of cookie fields (one byte, 255 for 255 or more): a purge reads a key of one
/// cookie without scanning its value.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    bytes: Vec<u8>,
    hash: u64,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes are credentials: show their size, never them.
        f.debug_struct("CacheKey")
            .field("hash", &self.hash)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl CacheKey {
    /// Builds the key of a request, or `None` when it carries no credential at all (then the
    /// outpost can only answer anonymously or with a redirect, which are never cached).
    pub fn new(
        generation: u64,
        host: &HeaderValue,
        caller: &Caller<'_>,
        hasher: &impl BuildHasher,
    ) -> Option<CacheKey> {
        let auth = caller.authorization();
        let mut bytes = Vec::with_capacity(8 + host.len() + 256 + auth.map_or(0, |a| a.len()));
        bytes.extend_from_slice(&generation.to_le_bytes());
        bytes.extend_from_slice(host.as_bytes());
        bytes.push(FIELD_END);
        let count_at = bytes.len();
        bytes.push(0);
        let mut count = 0u8;
        for header in caller.cookies() {
            for (name, value) in session_cookies(header.as_bytes()) {
                bytes.extend_from_slice(name);
                bytes.push(b'=');
                bytes.extend_from_slice(value);
                bytes.push(FIELD_END);
                count = count.saturating_add(1);
            }
        }
        bytes[count_at] = count;
        let mut any = count > 0;
        bytes.push(AUTH_MARK);
        if let Some(a) = auth {
            bytes.extend_from_slice(a.as_bytes());
            any = true;
        }
        if !any {
            return None;
        }
        let hash = index_hash(&bytes, hasher);
        Some(CacheKey { bytes, hash })
    }

    /// The 64-bit index hash.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // `hash` already covers every byte of a key up to `2 * HASH_SAMPLE` (keyed per process):
        // hashing them again cost ~1 µs of SipHash per coalescing-map operation on a miss. A
        // longer key's `hash` was sampled, so its bytes are hashed in full here, or keys crafted
        // with equal ends would all share one bucket.
        if self.bytes.len() <= 2 * HASH_SAMPLE {
            state.write_u64(self.hash);
        } else {
            self.bytes.hash(state);
        }
    }
}

/// Bytes hashed from each end of a long key.
const HASH_SAMPLE: usize = 1024;

/// The index hash of key bytes: all of them up to `2 * HASH_SAMPLE`, else the length and both
/// ends. A 32 KiB Cookie header (30+ outpost cookies) would otherwise cost ~20 µs of SipHash per
/// request; the sample still separates hosts (at the start) and sessions, and a hit compares the
/// full bytes anyway, so a sampled collision is at worst a miss.
fn index_hash(bytes: &[u8], hasher: &impl BuildHasher) -> u64 {
    if bytes.len() <= 2 * HASH_SAMPLE {
        return hasher.hash_one(bytes);
    }
    let (head, tail) = (&bytes[..HASH_SAMPLE], &bytes[bytes.len() - HASH_SAMPLE..]);
    hasher.hash_one((bytes.len(), head, tail))
}

/// Whether the key bytes `key` hold any of `cred`'s credentials (a session cookie or the
/// `Authorization` value), on any host. At most O(key bytes) per entry whatever the caller sends.
fn shares_credential(key: &[u8], cred: &Credentials) -> bool {
    let Some((mut cookies, auth)) = key_credentials(key) else {
        return false;
    };
    (!auth.is_empty() && cred.authorization.as_deref() == Some(auth))
        || cookies.any(|f| cred.has_cookie(f))
}

/// Each credential field a key holds: its cookies (`name=value`), then its `Authorization`.
fn credential_fields(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    key_credentials(key)
        .into_iter()
        .flat_map(|(cookies, auth)| cookies.chain((!auth.is_empty()).then_some(auth)))
}

/// A key's cookie fields and its `Authorization` value (empty when there is none). A purge runs
/// this on every entry, so it reads as little of the key as it can: the end (the `Authorization`
/// field), the host, the cookie count, and with one cookie (the usual case) that field straight
/// from its bounds.
fn key_credentials(key: &[u8]) -> Option<(impl Iterator<Item = &[u8]>, &[u8])> {
    let mark = memchr::memrchr(AUTH_MARK, key)?;
    let auth = &key[mark + 1..];
    // Skip the fixed-width generation (its bytes may be anything), then the host and the count.
    let fields = &key[GENERATION_BYTES.min(mark)..mark];
    let host_end = memchr::memchr(FIELD_END, fields)?;
    let (&count, fields) = fields[host_end + 1..].split_first()?;
    let fields = fields.strip_suffix(&[FIELD_END]).unwrap_or(fields);
    // With one cookie, `splitn(1, ..)` yields the whole field without looking at its bytes.
    let most = if count == 1 { 1 } else { usize::MAX };
    let cookies = fields
        .splitn(most, |&b| b == FIELD_END)
        .filter(|f| !f.is_empty());
    Some((cookies, auth))
}

/// `authentik_proxy_*` pairs of one `Cookie` header value (RFC 6265 section 4.2.1 syntax:
/// `name=value` separated by `;` and optional spaces).
pub fn session_cookies(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        name.starts_with(SESSION_COOKIE_PREFIX.as_bytes())
            .then_some((name, value))
    })
}

/// Session cookies a purge looks at: more than any browser holds for one parent domain.
const MAX_PURGE_COOKIES: usize = 64;
/// Longest cookie value a purge looks at (the outpost's are under 200 bytes).
const MAX_PURGE_VALUE: usize = 8 * 1024;

/// The credentials of a sign-out request, for purging.
#[derive(Default)]
pub struct Credentials {
    /// `name=value` of each session cookie.
    cookies: HashSet<Vec<u8>>,
    authorization: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cookies", &self.cookies.len())
            .field("authorization", &self.authorization.is_some())
            .finish()
    }
}

impl Credentials {
    /// Collects a caller's credentials (bounded: at most 64 session cookies of up to 8 KiB).
    pub fn of(caller: &Caller<'_>) -> Credentials {
        let mut cookies = HashSet::new();
        let pairs = caller
            .cookies()
            .iter()
            .flat_map(|h| session_cookies(h.as_bytes()))
            .filter(|(_, value)| value.len() <= MAX_PURGE_VALUE)
            .take(MAX_PURGE_COOKIES);
        for (name, value) in pairs {
            let mut pair = Vec::with_capacity(name.len() + value.len() + 1);
            pair.extend_from_slice(name);
            pair.push(b'=');
            pair.extend_from_slice(value);
            cookies.insert(pair);
        }
        let authorization = caller.authorization().map(|a| a.as_bytes().to_vec());
        Credentials {
            cookies,
            authorization,
        }
    }

    /// Whether there is nothing to purge by: no `authentik_proxy_*` cookie and no
    /// `Authorization` (both are credentials the outpost reads, DESIGN.md section 3).
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty() && self.authorization.as_ref().is_none_or(|a| a.is_empty())
    }

    /// Each credential as a key holds it: `name=value` cookies, then the `Authorization` value.
    fn fields(&self) -> impl Iterator<Item = &[u8]> {
        let auth = self.authorization.as_deref().filter(|a| !a.is_empty());
        self.cookies.iter().map(Vec::as_slice).chain(auth)
    }

    /// Whether `field` is one of the cookies. Compared, not hashed, for the few cookies a
    /// sign-out carries (a purge asks this of every cached key; a length check settles most).
    fn has_cookie(&self, field: &[u8]) -> bool {
        if self.cookies.len() <= 4 {
            self.cookies.iter().any(|c| c.as_slice() == field)
        } else {
            self.cookies.contains(field)
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// The key bytes followed by the packed identity ([`Identity::pack`]): one allocation of
    /// exactly its bytes (a `Bytes` here would cost 16 more bytes per entry, and 32 more once a
    /// hit shared it).
    data: Box<[u8]>,
    key_len: u32,
    /// Expiry in milliseconds since the cache's epoch.
    expires: u64,
}

impl Entry {
    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    fn fixed(&self, slot: usize) -> Option<&[u8]> {
        Identity::packed_fixed(&self.data, self.key_len as usize, slot)
    }
}

/// Bytes of entries (key and identity) the cache holds per entry of `cache.capacity`, on
/// average: 195 MiB at the default 100 000 entries. Sessions without a JWT take about 600 bytes,
/// with a 1 KiB JWT about 2.3 KiB (so about 85 000 of those fit at the default); the bound keeps
/// a pod with a 256 MiB limit alive when someone fills the cache with huge cookies (a key can be
/// as large as `server.max_header_bytes`).
const BYTES_PER_ENTRY: usize = 2048;

/// One shard: its LRU and the bytes its entries hold.
#[derive(Debug)]
struct Shard {
    lru: LruCache<u64, Entry>,
    bytes: usize,
}

impl Shard {
    fn put(&mut self, hash: u64, entry: Entry) {
        self.bytes += entry.data.len();
        if let Some(old) = self.lru.put(hash, entry) {
            self.bytes -= old.data.len();
        }
    }

    fn pop(&mut self, hash: &u64) {
        if let Some(old) = self.lru.pop(hash) {
            self.bytes -= old.data.len();
        }
    }

    /// Evicts least recently used entries until at most `entries` and `bytes` are held.
    fn shrink_to(&mut self, entries: usize, bytes: usize) {
        while self.lru.len() > entries || self.bytes > bytes {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= old.data.len(),
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }
}

/// The sharded LRU.
#[derive(Debug)]
pub struct Cache {
    /// One shard, or [`SHARDS`] of them.
    shards: Box<[Mutex<Shard>]>,
    /// `shards.len() - 1`: a hash's shard is `hash & mask`.
    mask: usize,
    /// Entries each shard keeps before it evicts its least recently used: `capacity / shards`,
    /// plus one in the first [`Cache::remainder`] shards, so the caps sum to the capacity.
    per_shard: usize,
    /// `capacity % shards`.
    remainder: usize,
    /// Bytes of entries each shard keeps: its share of `capacity * BYTES_PER_ENTRY`.
    bytes_per_shard: usize,
    ttl: Duration,
    /// Expiries are kept as milliseconds since this instant (8 bytes instead of 16 per entry).
    epoch: Instant,
    /// Purges begun so far: an answer asked for before a sign-out's purge must not be stored
    /// after it if the purge concerned it ([`Cache::insert_asked_at`]).
    purges: AtomicU64,
    /// The latest purges (at most [`PURGE_LOG`]), oldest first, numbered as `purges` counts.
    purged: Mutex<VecDeque<Purged>>,
    /// Keys the purge log's hashes (per process).
    log_hasher: RandomState,
}

/// Purges remembered for the checks in flight when they ran; a check whose purge count is older
/// than the log reaches back is not stored (a flood of sign-outs only costs misses).
const PURGE_LOG: usize = 256;

/// One purge, for the checks that were in flight while it ran: keyed hashes of what it matched
/// by (fixed size whatever a sign-out carries; a collision can only keep an allow out).
#[derive(Debug)]
struct Purged {
    /// Its number: the value `purges` took when it began.
    seq: u64,
    /// Hashes of the sign-out's credential fields (`name=value` cookies, `Authorization`).
    credentials: HashSet<u64>,
    /// Hashes of the users (`X-authentik-uid`) whose entries it removed, complete once `done`.
    users: HashSet<u64>,
    done: bool,
}

impl Purged {
    /// Whether this purge removes (or would have removed) an entry of these field and user
    /// hashes.
    fn concerns(&self, marks: &Marks) -> bool {
        // The purge's few credentials against the entry's set: a key of thousands of cookie
        // fields costs no more than one of a single cookie here.
        !self.done
            || self.credentials.iter().any(|c| marks.fields.contains(c))
            || marks.user.is_some_and(|u| self.users.contains(&u))
    }
}

/// Keyed hashes of an entry's credential fields and of its user, as the purge log keeps them.
#[derive(Debug)]
struct Marks {
    fields: HashSet<u64>,
    user: Option<u64>,
}

/// What a purge found, for the purge that follows once the outpost has answered the sign-out.
#[derive(Debug, Default)]
pub struct Purge {
    /// Entries removed.
    pub removed: usize,
    /// The users (`X-authentik-uid`) whose entries were removed.
    users: HashSet<Vec<u8>>,
}

/// A sign-out in progress: purged when made, and again when dropped (once the outpost has
/// answered, or when the request is abandoned), with the users the first purge found: a check
/// answered in between, for this credential or another session of the same users, is removed or
/// never stored.
#[derive(Debug)]
pub struct SignOut<'a> {
    cache: &'a Cache,
    cred: Credentials,
    first: Purge,
}

impl<'a> SignOut<'a> {
    /// Purges `cred`'s entries now.
    pub fn begin(cache: &'a Cache, cred: Credentials) -> SignOut<'a> {
        let first = cache.purge(&cred);
        SignOut { cache, cred, first }
    }
}

impl Drop for SignOut<'_> {
    fn drop(&mut self) {
        self.cache.purge_users(&self.cred, &self.first.users);
    }
}

impl Cache {
    /// A cache of at most `capacity` entries whose entries live at most `ttl` (zero: disabled).
    /// One shard (exact LRU) below 4096 entries, else 16. The configuration rejects a capacity
    /// of 0 (`cache.capacity` is 1 or more); a 0 here is taken as 1, as the cache is turned off
    /// by a zero `ttl` only. The shards' tables grow with their entries instead of being sized
    /// for `capacity` up front, so a generous capacity costs nothing until it is used.
    pub fn new(capacity: usize, ttl: Duration) -> Cache {
        let capacity = capacity.max(1);
        let count = if capacity < SHARD_FROM { 1 } else { SHARDS };
        let shards = (0..count)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                })
            })
            .collect();
        Cache {
            shards,
            mask: count - 1,
            per_shard: capacity / count,
            bytes_per_shard: capacity.saturating_mul(BYTES_PER_ENTRY) / count,
            remainder: capacity % count,
            ttl,
            epoch: Instant::now(),
            purges: AtomicU64::new(0),
            purged: Mutex::new(VecDeque::new()),
            log_hasher: RandomState::new(),
        }
    }

    /// The index of `hash`'s shard.
    fn index(&self, hash: u64) -> usize {
        (hash as usize) & self.mask
    }

    /// The most entries shard `index` keeps.
    fn cap(&self, index: usize) -> usize {
        self.per_shard + usize::from(index < self.remainder)
    }

    /// Milliseconds from the cache's epoch to `at`, rounded up so an entry never outlives its TTL
    /// by the rounding.
    fn millis(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// Whether the cache is on (`cache.ttl` above zero).
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[self.index(hash)]
    }

    /// Looks a key up; a hit is a live entry whose full key bytes equal `key`'s.
    pub fn get(&self, key: &CacheKey, now: Instant) -> (Lookup, Option<Identity>) {
        let Ok(mut shard) = self.shard(key.hash).lock() else {
            return (Lookup::Miss, None);
        };
        let Some(entry) = shard.lru.get(&key.hash) else {
            return (Lookup::Miss, None);
        };
        if entry.key() != key.bytes.as_slice() {
            return (Lookup::Miss, None);
        }
        if entry.expires <= self.millis(now) {
            shard.pop(&key.hash);
            return (Lookup::Expired, None);
        }
        // Copy the identity out under the lock (a few hundred bytes), unpack after.
        let packed = bytes::Bytes::copy_from_slice(&entry.data[entry.key_len as usize..]);
        drop(shard);
        match Identity::unpack(&packed, 0) {
            Some(identity) => (Lookup::Hit, Some(identity)),
            None => (Lookup::Miss, None),
        }
    }

    /// Stores an authenticated identity, its TTL capped by the JWT `exp`. Returns whether it
    /// was stored (an already expired token is not).
    pub fn insert(&self, key: &CacheKey, identity: &Identity, now: Instant) -> bool {
        self.put(key, identity, now, None)
    }

    /// The purge count to pass to [`Cache::insert_asked_at`]: read it before asking the outpost.
    pub fn purges(&self) -> u64 {
        self.purges.load(Ordering::SeqCst)
    }

    /// Stores an allow the outpost was asked for when the purge count was `purges`, unless a
    /// purge begun since concerns it (its credential, or its user): a sign-out that raced the
    /// check must not see the signed-out session stored again for a whole TTL. Other users'
    /// allows are stored as usual. Returns whether it was stored.
    pub fn insert_asked_at(
        &self,
        key: &CacheKey,
        identity: &Identity,
        now: Instant,
        purges: u64,
    ) -> bool {
        self.put(key, identity, now, Some(purges))
    }

    fn put(&self, key: &CacheKey, identity: &Identity, now: Instant, asked: Option<u64>) -> bool {
        let Some(ttl) = self.ttl_for(identity) else {
            return false;
        };
        let Ok(key_len) = u32::try_from(key.bytes.len()) else {
            return false;
        };
        let entry = Entry {
            data: identity.pack(&key.bytes),
            key_len,
            expires: self.millis(now + ttl),
        };
        let index = self.index(key.hash);
        let cap = self.cap(index);
        // Hashed before the lock when a purge has already run since the check was asked.
        let marks = asked
            .filter(|&n| n != self.purges())
            .map(|_| self.marks(&entry));
        if let Ok(mut shard) = self.shards[index].lock() {
            // Checked under the shard lock: a purge is logged and counted first and then takes
            // every shard's lock, so it either is seen here or removes this entry after.
            if asked.is_some_and(|n| self.purged_since(n, &entry, marks.as_ref())) {
                return false;
            }
            // An entry alone over the shard's byte budget would only evict everything else.
            if entry.data.len() > self.bytes_per_shard {
                return false;
            }
            shard.put(key.hash, entry);
            shard.shrink_to(cap, self.bytes_per_shard);
            return true;
        }
        false
    }

    fn ttl_for(&self, identity: &Identity) -> Option<Duration> {
        if self.ttl.is_zero() {
            return None;
        }
        let Some(exp) = identity.jwt_exp() else {
            return Some(self.ttl);
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let left = Duration::from_secs(exp.checked_sub(now)?);
        (!left.is_zero()).then(|| left.min(self.ttl))
    }

    /// Whether a purge begun after the purge count was `asked` concerns `entry` (or may have:
    /// one the log no longer holds).
    /// `marks` are `entry`'s, when they were computed before the shard lock was taken.
    fn purged_since(&self, asked: u64, entry: &Entry, marks: Option<&Marks>) -> bool {
        if self.purges() == asked {
            return false;
        }
        let computed;
        let marks = match marks {
            Some(m) => m,
            None => {
                computed = self.marks(entry);
                &computed
            }
        };
        let log = self.purged.lock().unwrap_or_else(PoisonError::into_inner);
        if log.front().is_none_or(|p| p.seq > asked + 1) {
            return true;
        }
        log.iter()
            .filter(|p| p.seq > asked)
            .any(|p| p.concerns(marks))
    }

    fn marks(&self, entry: &Entry) -> Marks {
        Marks {
            fields: credential_fields(entry.key())
                .map(|f| self.log_hasher.hash_one(f))
                .collect(),
            user: uid_of(entry).map(|u| self.log_hasher.hash_one(u)),
        }
    }

    /// Removes every entry that shares a credential with `cred`, on every host, and every entry
    /// of the same users (by `X-authentik-uid`).
    pub fn purge(&self, cred: &Credentials) -> Purge {
        self.purge_users(cred, &HashSet::new())
    }

    /// [`Cache::purge`], also removing the entries of `users`.
    fn purge_users(&self, cred: &Credentials, users: &HashSet<Vec<u8>>) -> Purge {
        if cred.is_empty() && users.is_empty() {
            return Purge::default();
        }
        let credentials = cred.fields().map(|f| self.log_hasher.hash_one(f)).collect();
        let seq = {
            let mut log = self.purged.lock().unwrap_or_else(PoisonError::into_inner);
            let seq = self.purges() + 1;
            if log.len() == PURGE_LOG {
                log.pop_front();
            }
            log.push_back(Purged {
                seq,
                credentials,
                users: HashSet::new(),
                done: false,
            });
            self.purges.store(seq, Ordering::SeqCst);
            seq
        };
        let mut found = users.clone();
        let mut removed = self.remove_where(|e| {
            let hit = shares_credential(e.key(), cred);
            if hit {
                found.extend(uid_of(e).map(<[u8]>::to_vec));
            }
            hit
        });
        if !found.is_empty() {
            removed += self.remove_where(|e| uid_of(e).is_some_and(|u| found.contains(u)));
        }
        let hashed = found.iter().map(|u| self.log_hasher.hash_one(u)).collect();
        let mut log = self.purged.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = log.iter_mut().find(|p| p.seq == seq) {
            p.users = hashed;
            p.done = true;
        }
        Purge {
            removed,
            users: found,
        }
    }

    fn remove_where(&self, mut pred: impl FnMut(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let Ok(mut shard) = shard.lock() else {
                continue;
            };
            let doomed: Vec<u64> = shard
                .lru
                .iter()
                .filter(|(_, e)| pred(e))
                .map(|(k, _)| *k)
                .collect();
            for k in doomed {
                shard.pop(&k);
                removed += 1;
            }
        }
        removed
    }

    /// Drops everything (config reload).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            if let Ok(mut s) = shard.lock() {
                s.clear();
            }
        }
    }

    /// Entries held (live or not yet noticed as expired).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.lru.len()))
            .sum()
    }

    /// Entries whose TTL has not passed at `now` (walks every shard: for scrapes, not requests).
    pub fn live_len(&self, now: Instant) -> usize {
        let now = self.millis(now);
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map_or(0, |s| s.lru.iter().filter(|(_, e)| e.expires > now).count())
            })
            .sum()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The entry's `X-authentik-uid` (a slice of its buffer: no copy), if non-empty.
fn uid_of(entry: &Entry) -> Option<&[u8]> {
    entry
        .fixed(super::headers::UID_SLOT)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;

    fn parts(cookie: &str, auth: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().header("cookie", cookie);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn identity(user: &str) -> Identity {
        Identity::from_pairs(
            [
                (
                    super::super::headers::X_AUTHENTIK_USERNAME,
                    HeaderValue::from_str(user).unwrap(),
                ),
                (
                    super::super::headers::X_AUTHENTIK_UID,
                    HeaderValue::from_str(user).unwrap(),
                ),
            ],
            None,
        )
    }

    fn key(cookie: &str, host: &str, s: &RandomState) -> Option<CacheKey> {
        let p = parts(cookie, None);
        let c = Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false);
        CacheKey::new(1, &HeaderValue::from_str(host).unwrap(), &c, s)
    }

    #[test]
    fn key_ignores_other_cookies_and_needs_a_credential() {
        let s = RandomState::new();
        let a = key("theme=dark; authentik_proxy_abcd1234=S1", "app", &s).unwrap();
        let b = key("authentik_proxy_abcd1234=S1; lang=en", "app", &s).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, key("authentik_proxy_abcd1234=S2", "app", &s).unwrap());
        assert_ne!(a, key("authentik_proxy_abcd1234=S1", "other", &s).unwrap());
        assert!(key("theme=dark", "app", &s).is_none());
    }

    #[test]
    fn keys_as_map_keys_follow_their_bytes_short_and_long() {
        let s = RandomState::new();
        let mut map = std::collections::HashMap::new();
        let short = key("authentik_proxy_abcd1234=S1", "app", &s).unwrap();
        map.insert(short.clone(), 1);
        assert_eq!(
            map.get(&key("authentik_proxy_abcd1234=S1", "app", &s).unwrap()),
            Some(&1)
        );
        assert_eq!(
            map.get(&key("authentik_proxy_abcd1234=S2", "app", &s).unwrap()),
            None
        );
        // Long keys that differ only in the middle: the sampled index hash is equal, the keys are
        // not, and each finds only its own entry.
        let long = |middle: char| {
            let value = format!("{}{}{}", "a".repeat(3000), middle, "z".repeat(3000));
            key(&format!("authentik_proxy_abcd1234={value}"), "app", &s).unwrap()
        };
        let (x, y) = (long('x'), long('y'));
        assert_eq!(x.hash, y.hash, "the index hash samples the ends");
        map.insert(x.clone(), 2);
        map.insert(y.clone(), 3);
        assert_eq!((map.get(&x), map.get(&y)), (Some(&2), Some(&3)));
        use std::hash::BuildHasher as _;
        assert_ne!(
            s.hash_one(&x),
            s.hash_one(&y),
            "long keys hash all their bytes as map keys"
        );
    }

    #[test]
    fn hash_collision_is_a_miss_not_another_users_identity() {
        let s = RandomState::new();
        let cache = Cache::new(100, Duration::from_secs(10));
        let alice = key("authentik_proxy_a=alice", "app", &s).unwrap();
        let mut mallory = key("authentik_proxy_a=mallory", "app", &s).unwrap();
        mallory.hash = alice.hash; // force the collision
        let now = Instant::now();
        assert!(cache.insert(&alice, &identity("alice"), now));
        assert_eq!(cache.get(&mallory, now).0, Lookup::Miss);
        assert_eq!(cache.get(&alice, now).0, Lookup::Hit);
    }

    fn cred(cookie: &str) -> Credentials {
        let p = parts(cookie, None);
        Credentials::of(&Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false))
    }

    #[test]
    fn a_purge_keeps_only_what_it_concerns_from_being_stored_after_it() {
        let s = RandomState::new();
        let cache = Cache::new(100, Duration::from_secs(10));
        let now = Instant::now();
        let alice = key("authentik_proxy_a=alice-1", "app", &s).unwrap();
        let alice_other_browser = key("authentik_proxy_a=alice-2", "app", &s).unwrap();
        let bob = key("authentik_proxy_a=bob-1", "app", &s).unwrap();
        assert!(cache.insert(&alice, &identity("alice"), now));
        // Checks in flight for all three, then alice signs out (her entry names her uid).
        let asked = cache.purges();
        assert_eq!(cache.purge(&cred("authentik_proxy_a=alice-1")).removed, 1);
        assert!(!cache.insert_asked_at(&alice, &identity("alice"), now, asked));
        assert!(
            !cache.insert_asked_at(&alice_other_browser, &identity("alice"), now, asked),
            "the same user through another credential"
        );
        assert!(
            cache.insert_asked_at(&bob, &identity("bob"), now, asked),
            "someone else's sign-out must not keep bob out of the cache"
        );
        // A check asked after the purge is stored as usual.
        assert!(cache.insert_asked_at(&alice, &identity("alice"), now, cache.purges()));
    }

    #[test]
    fn a_sign_out_purges_again_when_it_ends_with_the_users_it_found() {
        let s = RandomState::new();
        let cache = Cache::new(100, Duration::from_secs(10));
        let now = Instant::now();
        let first = key("authentik_proxy_a=alice-1", "app", &s).unwrap();
        let second = key("authentik_proxy_a=alice-2", "app", &s).unwrap();
        assert!(cache.insert(&first, &identity("alice"), now));
        let sign_out = SignOut::begin(&cache, cred("authentik_proxy_a=alice-1"));
        assert!(cache.is_empty());
        // Another session of the same user, answered while the outpost was signing out.
        assert!(cache.insert(&second, &identity("alice"), now));
        drop(sign_out);
        assert!(
            cache.is_empty(),
            "the second purge removes the user's other session"
        );
    }

    #[test]
    fn huge_keys_are_bounded_by_bytes_not_only_by_count() {
        let s = RandomState::new();
        let now = Instant::now();
        // 100 entries of budget: 200 KiB in one shard; each of these keys is ~30 KiB.
        let cache = Cache::new(100, Duration::from_secs(10));
        let big = |i: usize| {
            let value = format!("{i}-{}", "x".repeat(30_000));
            key(&format!("authentik_proxy_a={value}"), "app", &s).unwrap()
        };
        for i in 0..20 {
            assert!(cache.insert(&big(i), &identity("mallory"), now));
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert!(held <= 100 * BYTES_PER_ENTRY, "{held} bytes held");
        assert!(cache.len() < 20);
        assert_eq!(
            cache.get(&big(0), now).0,
            Lookup::Miss,
            "the oldest went first"
        );
        assert_eq!(cache.get(&big(19), now).0, Lookup::Hit);
        // Ordinary entries still fit in the same cache.
        let small = key("authentik_proxy_a=alice", "app", &s).unwrap();
        assert!(cache.insert(&small, &identity("alice"), now));
        assert_eq!(cache.get(&small, now).0, Lookup::Hit);
        // One entry over a shard's whole budget is not stored at all.
        let tiny = Cache::new(1, Duration::from_secs(10));
        assert!(!tiny.insert(&big(0), &identity("mallory"), now));
        assert!(tiny.insert(&small, &identity("alice"), now));
    }

    #[test]
    fn more_purges_than_the_log_holds_store_nothing_asked_before_them() {
        let s = RandomState::new();
        let cache = Cache::new(100, Duration::from_secs(10));
        let bob = key("authentik_proxy_a=bob-1", "app", &s).unwrap();
        let asked = cache.purges();
        for i in 0..=PURGE_LOG {
            cache.purge(&cred(&format!("authentik_proxy_a=junk-{i}")));
        }
        assert!(!cache.insert_asked_at(&bob, &identity("bob"), Instant::now(), asked));
        assert!(cache.insert_asked_at(&bob, &identity("bob"), Instant::now(), cache.purges()));
    }

    #[test]
    fn purge_removes_every_host_of_the_credential_and_the_user() {
        let s = RandomState::new();
        let cache = Cache::new(100, Duration::from_secs(10));
        let now = Instant::now();
        let k1 = key("authentik_proxy_a=S1", "one", &s).unwrap();
        let k2 = key("authentik_proxy_a=S1; authentik_proxy_b=T1", "two", &s).unwrap();
        let k3 = key("authentik_proxy_b=T9", "three", &s).unwrap();
        let other = key("authentik_proxy_a=S2", "one", &s).unwrap();
        cache.insert(&k1, &identity("alice"), now);
        cache.insert(&k2, &identity("alice"), now);
        cache.insert(&k3, &identity("alice"), now);
        cache.insert(&other, &identity("bob"), now);
        let p = parts("authentik_proxy_a=S1", None);
        let c = Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false);
        assert_eq!(cache.purge(&Credentials::of(&c)).removed, 3);
        assert_eq!(cache.get(&other, now).0, Lookup::Hit);
        assert_eq!(cache.get(&k3, now).0, Lookup::Miss);
    }

    #[test]
    fn purge_matches_whole_cookie_fields_only() {
        let s = RandomState::new();
        let cache = Cache::new(100, Duration::from_secs(10));
        let now = Instant::now();
        let longer = key("authentik_proxy_a=S10", "one", &s).unwrap();
        let prefixed = key("authentik_proxy_ab=S1", "one", &s).unwrap();
        cache.insert(&longer, &identity("carol"), now);
        cache.insert(&prefixed, &identity("dave"), now);
        let p = parts("authentik_proxy_a=S1", None);
        let c = Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false);
        assert_eq!(cache.purge(&Credentials::of(&c)).removed, 0);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn purge_looks_at_a_bounded_number_of_cookies() {
        let many: Vec<String> = (0..1000)
            .map(|i| format!("authentik_proxy_{i:08x}=v{i}"))
            .collect();
        let p = parts(&many.join("; "), None);
        let c = Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false);
        assert_eq!(Credentials::of(&c).cookies.len(), MAX_PURGE_COOKIES);
    }

    #[test]
    fn capacity_evicts_least_recently_used() {
        let s = RandomState::new();
        let cache = Cache::new(SHARDS, Duration::from_secs(10)); // one shard of 16
        let now = Instant::now();
        for i in 0..200 {
            let k = key(&format!("authentik_proxy_a={i}"), "app", &s).unwrap();
            cache.insert(&k, &identity("u"), now);
        }
        assert!(cache.len() <= SHARDS);
    }

    #[test]
    fn total_entries_never_exceed_the_capacity() {
        let s = RandomState::new();
        let now = Instant::now();
        for capacity in [1, 2, 15, 16, 17, 4095, 4096, 4099, 100_000] {
            let cache = Cache::new(capacity, Duration::from_secs(10));
            for i in 0..2 * capacity {
                let k = key(&format!("authentik_proxy_a={i}"), "app", &s).unwrap();
                assert!(cache.insert(&k, &identity("u"), now));
                let held = cache.len();
                assert!(held <= capacity, "capacity {capacity}: {held} entries held");
            }
            // Distinct keys (a shared 64-bit hash among them is all but impossible) fill it up.
            assert_eq!(cache.len(), capacity, "capacity {capacity}");
        }
    }

    #[test]
    fn shard_caps_sum_to_the_capacity_and_small_caches_have_one_shard() {
        for capacity in [1, 2, 17, 4095, 4096, 4097, 4111, 100_000, 100_015] {
            let cache = Cache::new(capacity, Duration::from_secs(10));
            let caps: Vec<usize> = (0..cache.shards.len()).map(|i| cache.cap(i)).collect();
            assert_eq!(caps.iter().sum::<usize>(), capacity, "{capacity}: {caps:?}");
            assert_eq!(cache.shards.len() == 1, capacity < SHARD_FROM, "{capacity}");
            assert!(caps.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
        }
        // 0 is rejected by the configuration; built directly it is one entry.
        assert_eq!(Cache::new(0, Duration::from_secs(10)).cap(0), 1);
    }

    #[test]
    fn small_cache_evicts_the_least_recently_used_across_all_keys() {
        let s = RandomState::new();
        let cache = Cache::new(3, Duration::from_secs(10));
        let now = Instant::now();
        let k: Vec<CacheKey> = (0..6)
            .map(|i| key(&format!("authentik_proxy_a={i}"), "app", &s).unwrap())
            .collect();
        for k in &k[..3] {
            cache.insert(k, &identity("u"), now);
        }
        // Touch the oldest: it becomes the most recent, so the next insert evicts k[1].
        assert_eq!(cache.get(&k[0], now).0, Lookup::Hit);
        cache.insert(&k[3], &identity("u"), now);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&k[1], now).0, Lookup::Miss, "k1 was the LRU");
        for kept in [&k[0], &k[2], &k[3]] {
            assert_eq!(cache.get(kept, now).0, Lookup::Hit);
        }
        // Recency is now k0, k2, k3 (the order of the gets): two inserts evict k0 and k2.
        cache.insert(&k[4], &identity("u"), now);
        cache.insert(&k[5], &identity("u"), now);
        assert_eq!(cache.get(&k[0], now).0, Lookup::Miss);
        assert_eq!(cache.get(&k[2], now).0, Lookup::Miss);
        for kept in [&k[3], &k[4], &k[5]] {
            assert_eq!(cache.get(kept, now).0, Lookup::Hit);
        }
    }

    #[test]
    fn expired_entries_are_reported_and_dropped() {
        let s = RandomState::new();
        let cache = Cache::new(10, Duration::from_secs(10));
        let k = key("authentik_proxy_a=1", "app", &s).unwrap();
        let now = Instant::now();
        cache.insert(&k, &identity("u"), now);
        assert_eq!(
            cache.get(&k, now + Duration::from_secs(11)).0,
            Lookup::Expired
        );
        assert_eq!(cache.get(&k, now).0, Lookup::Miss);
    }

    #[test]
    fn jwt_exp_caps_ttl_and_expired_tokens_are_not_stored() {
        let cache = Cache::new(10, Duration::from_secs(10));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let soon = Identity::from_pairs::<&[u8]>([], Some(now + 3));
        let ttl = cache.ttl_for(&soon).unwrap();
        assert!(ttl <= Duration::from_secs(3) && ttl >= Duration::from_secs(2));
        let past = Identity::from_pairs::<&[u8]>([], Some(now - 1));
        assert_eq!(cache.ttl_for(&past), None);
        let far = Identity::from_pairs::<&[u8]>([], Some(now + 3600));
        assert_eq!(cache.ttl_for(&far), Some(Duration::from_secs(10)));
    }
}
