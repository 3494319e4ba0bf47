//! Coalescing of identical concurrent cache misses into one outpost call.
//!
//! A page load fires dozens of asset requests with the same cookie at once; the first becomes the
//! leader and asks the outpost, the others wait for its outcome. If the leader goes away without
//! an answer (its client hung up), the waiters see the channel close and ask for themselves, so a
//! cancelled request never strands the others.

use std::collections::HashMap;
use std::sync::Mutex;

use http::HeaderValue;
use tokio::sync::watch;

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

type Slot = watch::Receiver<Option<Shared>>;

/// In-flight outpost calls by full cache key.
#[derive(Debug, Default)]
pub struct Inflight {
    calls: Mutex<HashMap<CacheKey, Slot>>,
}

/// The role a request takes for its key.
#[derive(Debug)]
pub enum Role<'a> {
    /// Ask the outpost, then [`Leader::publish`].
    Leader(Leader<'a>),
    /// Wait on the leader's answer.
    Waiter(Slot),
}

/// The one request that asks the outpost for a key; removes its slot when dropped.
#[derive(Debug)]
pub struct Leader<'a> {
    inflight: &'a Inflight,
    key: CacheKey,
    tx: watch::Sender<Option<Shared>>,
}

impl Inflight {
    /// Joins the call for `key`, or starts it.
    pub fn join(&self, key: &CacheKey) -> Role<'_> {
        let Ok(mut calls) = self.calls.lock() else {
            let (tx, _rx) = watch::channel(None);
            return Role::Leader(Leader {
                inflight: self,
                key: key.clone(),
                tx,
            });
        };
        if let Some(rx) = calls.get(key) {
            if rx.has_changed().is_ok() {
                return Role::Waiter(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        calls.insert(key.clone(), rx);
        Role::Leader(Leader {
            inflight: self,
            key: key.clone(),
            tx,
        })
    }

    /// Calls in flight (tests).
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
        // send_replace never fails, even with no receiver left.
        self.tx.send_replace(Some(shared));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.inflight.calls.lock() {
            if calls
                .get(&self.key)
                .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
            {
                calls.remove(&self.key);
            }
        }
    }
}

/// Waits for the leader's outcome; `None` if the leader vanished without one.
pub async fn wait(mut slot: Slot) -> Option<Shared> {
    match slot.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    #[tokio::test]
    async fn a_vanished_leader_releases_its_waiters() {
        let inflight = Inflight::default();
        let key = {
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
        };
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
