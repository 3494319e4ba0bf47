//! Coalescing of identical concurrent cache misses into one outpost call.
//!
//! A page load fires dozens of asset requests with the same cookie at once; the first becomes the
//! leader and asks the outpost, the others wait for its outcome. If the leader goes away without
//! an answer (its client hung up), the waiters see the channel close and ask for themselves, so a
//! cancelled request never strands the others.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use super::cache::CacheKey;
use super::outpost::Outcome;

type Slot = watch::Receiver<Option<Outcome>>;

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
    tx: watch::Sender<Option<Outcome>>,
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
    pub fn publish(self, outcome: &Outcome) {
        // send_replace never fails, even with no receiver left.
        self.tx.send_replace(Some(outcome.clone()));
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
pub async fn wait(mut slot: Slot) -> Option<Outcome> {
    match slot.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}
