//! Coalescing of identical concurrent cache misses into one outpost call.
//!
//! A page load fires dozens of asset requests with the same cookie at once; the first becomes the
//! leader and asks the outpost, the others wait for its outcome. If the leader goes away without
//! an answer (its client hung up), the waiters are released with nothing and ask for themselves, so a
//! cancelled request never strands the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use http::HeaderValue;
use tokio::sync::Notify;

use super::cache::CacheKey;
use super::outpost::Outcome;
use crate::metrics::Endpoint;

/// A leader's outcome and the question it answered.
#[derive(Debug, Clone)]
pub struct Shared {
    /// What the outpost decided.
    pub outcome: Outcome,
    /// The endpoint the leader was asked on.
    pub endpoint: Endpoint,
    /// The forwarded URL the leader asked about.
    pub forwarded: HeaderValue,
}

impl Shared {
    /// The outcome, if it answers a waiter asking on `endpoint` about `forwarded`. An allow with
    /// identity and an outage hold for the credential whatever the path; a deny or an anonymous
    /// allow is path- and endpoint-specific (a 302 carries its `Location` and state, a skip path
    /// is a path), so it is shared only with the very same question.
    pub fn answers(self, endpoint: Endpoint, forwarded: &HeaderValue) -> Option<Outcome> {
        match self.outcome {
            Outcome::Allow(_) | Outcome::Unavailable(_) => Some(self.outcome),
            _ if self.endpoint == endpoint && self.forwarded == forwarded => Some(self.outcome),
            _ => None,
        }
    }
}

/// One in-flight call: set once (the leader's outcome, or `None` if it went away without one),
/// then every waiter is woken.
#[derive(Debug, Default)]
pub struct Slot {
    done: OnceLock<Option<Shared>>,
    woken: Notify,
}

impl Slot {
    fn finish(&self, shared: Option<Shared>) {
        let _ = self.done.set(shared);
        self.woken.notify_waiters();
    }
}

/// In-flight outpost calls by full cache key.
#[derive(Debug, Default)]
pub struct Inflight {
    calls: Mutex<HashMap<CacheKey, Arc<Slot>>>,
}

/// The role a request takes for its key.
#[derive(Debug)]
pub enum Role<'a> {
    /// Ask the outpost, then [`Leader::publish`].
    Leader(Leader<'a>),
    /// Wait on the leader's answer.
    Waiter(Arc<Slot>),
}

/// The one request that asks the outpost for a key; removes its slot when dropped, and releases
/// the waiters (with nothing) if it never published.
#[derive(Debug)]
pub struct Leader<'a> {
    inflight: &'a Inflight,
    key: &'a CacheKey,
    slot: Arc<Slot>,
}

impl Inflight {
    /// Joins the call in flight for `key`, or starts one.
    pub fn join<'a>(&'a self, key: &'a CacheKey) -> Role<'a> {
        let Ok(mut calls) = self.calls.lock() else {
            return Role::Leader(Leader {
                inflight: self,
                key,
                slot: Arc::default(),
            });
        };
        if let Some(running) = calls.get(key) {
            if running.done.get().is_none() {
                return Role::Waiter(running.clone());
            }
        }
        let slot = Arc::new(Slot::default());
        calls.insert(key.clone(), slot.clone());
        Role::Leader(Leader {
            inflight: self,
            key,
            slot,
        })
    }

    /// Number of calls in flight.
    pub fn len(&self) -> usize {
        self.calls.lock().map_or(0, |c| c.len())
    }

    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Leader<'_> {
    /// Hands the outcome to every waiter.
    pub fn publish(self, shared: Shared) {
        self.slot.finish(Some(shared));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.inflight.calls.lock() {
            if calls
                .get(self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                calls.remove(self.key);
            }
        }
        // A no-op after publish; otherwise the waiters learn the leader is gone.
        self.slot.finish(None);
    }
}

/// Waits for the leader's outcome; `None` if it went away without one.
pub async fn wait(slot: Arc<Slot>) -> Option<Shared> {
    let woken = slot.woken.notified();
    let mut woken = std::pin::pin!(woken);
    // Registered before looking, so a finish between the look and the await still wakes us.
    woken.as_mut().enable();
    if let Some(done) = slot.done.get() {
        return done.clone();
    }
    woken.await;
    slot.done.get().cloned().flatten()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::auth::outpost::{Failure, Relayed};

    fn shared(outcome: Outcome) -> Shared {
        Shared {
            outcome,
            endpoint: Endpoint::Traefik,
            forwarded: HeaderValue::from_static("/a"),
        }
    }

    fn relayed(status: StatusCode) -> Arc<Relayed> {
        Arc::new(Relayed {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        })
    }

    #[test]
    fn path_specific_answers_are_shared_only_with_the_same_question() {
        let a = HeaderValue::from_static("/a");
        let b = HeaderValue::from_static("/b");
        let deny = || shared(Outcome::Deny(relayed(StatusCode::FOUND)));
        let anon = || shared(Outcome::Anonymous(relayed(StatusCode::OK)));
        assert!(deny().answers(Endpoint::Traefik, &a).is_some());
        assert!(deny().answers(Endpoint::Traefik, &b).is_none());
        assert!(deny().answers(Endpoint::Nginx, &a).is_none());
        assert!(anon().answers(Endpoint::Traefik, &a).is_some());
        assert!(anon().answers(Endpoint::Traefik, &b).is_none());
        let down = shared(Outcome::Unavailable(Failure::Timeout));
        assert!(down.answers(Endpoint::Nginx, &b).is_some());
    }

    fn key() -> CacheKey {
        let p = http::Request::builder()
            .header("cookie", "authentik_proxy_a=1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let c = crate::auth::request::Caller::new(&p, "127.0.0.1".parse().unwrap(), &[], false);
        CacheKey::new(
            1,
            &HeaderValue::from_static("h"),
            &c,
            &std::collections::hash_map::RandomState::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn waiters_before_and_after_the_publish_get_the_outcome() {
        let inflight = Inflight::default();
        let key = key();
        let Role::Leader(leader) = inflight.join(&key) else {
            panic!("first is leader")
        };
        let Role::Waiter(early) = inflight.join(&key) else {
            panic!("second waits")
        };
        let waiting = tokio::spawn(wait(early.clone()));
        tokio::task::yield_now().await;
        leader.publish(shared(Outcome::Unavailable(Failure::Timeout)));
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert!(matches!(
            got.unwrap().outcome,
            Outcome::Unavailable(Failure::Timeout)
        ));
        assert!(wait(early).await.is_some(), "a late look sees it too");
        assert!(inflight.is_empty());
    }

    #[tokio::test]
    async fn a_vanished_leader_releases_its_waiters() {
        let inflight = Inflight::default();
        let key = key();
        let Role::Leader(leader) = inflight.join(&key) else {
            panic!("first is leader")
        };
        let Role::Waiter(slot) = inflight.join(&key) else {
            panic!("second waits")
        };
        drop(leader);
        assert!(wait(slot).await.is_none());
        assert!(inflight.is_empty());
        assert!(matches!(inflight.join(&key), Role::Leader(_)));
    }
}
