//! The failed-attempt limiter of the emergency realm (DESIGN.md section 4): failures per user
//! (across addresses) and per client address within a window; a limited user or address gets
//! `Verdict::Limited` until its window passes, a correct password too. Every map is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::{MAX_TRACKED, MIN_RETRY_AFTER};
use crate::config::FallbackConfig;
/// The limiter's key for an address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
pub(super) fn address_key(ip: IpAddr) -> IpAddr {
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
pub(super) struct UserKey {
    digest: [u8; 32],
    known: bool,
}

impl UserKey {
    pub(super) fn new(user: &str, known: bool) -> UserKey {
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
        self.live(key, window, now)
            .filter(|&(failures, _)| failures >= self.max)
            .map(|(_, left)| left.max(MIN_RETRY_AFTER))
    }

    /// `key`'s failures in its live window and the time that window has left.
    fn live(&self, key: &K, window: Duration, now: Instant) -> Option<(u32, Duration)> {
        let entry = self.map.get(key)?;
        remaining(entry.started, window, now).map(|left| (entry.failures, left))
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

    /// Keeps the map under `cap`: drop expired windows, then, if still full, the oldest tenth at
    /// once. Evicting in bulk keeps the cost amortised O(1) per new key even while an attacker
    /// sprays fresh addresses or names into a full map (one O(n) pass frees room for n/10 keys).
    fn make_room(&mut self, window: Duration, now: Instant) {
        if self.map.len() < self.cap {
            return;
        }
        self.map
            .retain(|_, entry| remaining(entry.started, window, now).is_some());
        if self.map.len() < self.cap {
            return;
        }
        let evict = (self.cap / 10).max(1);
        let mut starts: Vec<Instant> = self.map.values().map(|e| e.started).collect();
        let cut = evict.min(starts.len()) - 1;
        let (_, &mut threshold, _) = starts.select_nth_unstable(cut);
        let mut left = evict;
        self.map.retain(|_, e| {
            if left > 0 && e.started <= threshold {
                left -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// The failed-attempt limiter of DESIGN.md section 4.
pub(super) struct Limiter {
    window: Duration,
    known_users: Counter<[u8; 32]>,
    other_users: Counter<[u8; 32]>,
    addresses: Counter<IpAddr>,
}

impl Limiter {
    pub(super) fn new(cfg: &FallbackConfig) -> Limiter {
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
    pub(super) fn blocked(
        &mut self,
        user: Option<&UserKey>,
        address: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        let window = self.window;
        let by_user = user.and_then(|u| {
            let own = self.users_of(u).live(&u.digest, window, now);
            // Failures of a name while the file lacked it (missing, or before the user was
            // added) still count once the file has it, until their window passes.
            let before = match u.known {
                true => self.other_users.live(&u.digest, window, now),
                false => None,
            };
            let max = self.known_users.max;
            let failures = own.map_or(0, |(f, _)| f) + before.map_or(0, |(f, _)| f);
            // Limited until the sum drops below the limit: when one window alone reaches it,
            // that window's end; otherwise the first of the two to end.
            let left = match (own, before) {
                (Some((f, a)), Some((g, b))) if f >= max && g >= max => a.max(b),
                (Some((f, l)), _) | (_, Some((f, l))) if f >= max => l,
                (Some((_, a)), Some((_, b))) => a.min(b),
                (Some((_, l)), None) | (None, Some((_, l))) => l,
                (None, None) => return None,
            };
            (failures >= max).then(|| left.max(MIN_RETRY_AFTER))
        });
        let by_address = self.addresses.blocked(&address, window, now);
        by_user.max(by_address)
    }

    /// Counts one failure in advance unless already limited (then `Err(retry_after)`).
    pub(super) fn reserve(
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
    pub(super) fn refund(&mut self, user: Option<&UserKey>, address: IpAddr) {
        if let Some(u) = user {
            self.users_of(u).refund(&u.digest);
        }
        self.addresses.refund(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_name_limited_while_unknown_stays_limited_once_the_file_has_it() {
        let cfg = FallbackConfig::default();
        let mut limiter = Limiter::new(&cfg);
        let now = Instant::now();
        let unknown = UserKey::new("admin", false);
        for i in 0..cfg.max_failures_per_user {
            // A different address each time: only the user's count can trip.
            let address = IpAddr::from([192, 0, 2, i as u8]);
            assert!(limiter.reserve(Some(&unknown), address, now).is_ok());
        }
        let known = UserKey::new("admin", true);
        let elsewhere = IpAddr::from([198, 51, 100, 1]);
        assert!(limiter.blocked(Some(&known), elsewhere, now).is_some());
        assert!(limiter
            .blocked(Some(&UserKey::new("bob", true)), elsewhere, now)
            .is_none());
        let later = now + cfg.failure_window;
        assert!(limiter.blocked(Some(&known), elsewhere, later).is_none());
        // Failures before and after the file had the name add up.
        let mut limiter = Limiter::new(&cfg);
        let carol = (UserKey::new("carol", false), UserKey::new("carol", true));
        for i in 0..cfg.max_failures_per_user - 1 {
            let address = IpAddr::from([192, 0, 2, i as u8]);
            assert!(limiter.reserve(Some(&carol.0), address, now).is_ok());
        }
        assert!(limiter.blocked(Some(&carol.1), elsewhere, now).is_none());
        assert!(limiter.reserve(Some(&carol.1), elsewhere, now).is_ok());
        assert!(limiter.blocked(Some(&carol.1), elsewhere, now).is_some());
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

    #[tokio::test(start_paused = true)]
    async fn a_full_map_evicts_the_oldest_tenth_at_once() {
        let mut counter: Counter<u32> = Counter::new(1, 100);
        let window = Duration::from_secs(1000);
        for key in 0..100 {
            counter.add(key, window, Instant::now());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        counter.add(100, window, Instant::now());
        assert_eq!(counter.map.len(), 91, "ten oldest gone, the new key in");
        assert!((0..10).all(|k| !counter.map.contains_key(&k)));
        assert!(counter.map.contains_key(&10) && counter.map.contains_key(&100));
        for key in 101..110 {
            counter.add(key, window, Instant::now());
        }
        assert_eq!(
            counter.map.len(),
            100,
            "room for nine more without another eviction"
        );
    }
}
