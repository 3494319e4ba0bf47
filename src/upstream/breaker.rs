//! The circuit breaker in front of the outpost (DESIGN.md section 4).
//!
//! Closed: every check asks the outpost; `trip_after` consecutive failures (counted once per
//! exchange, in completion order) or one refused connection open it. Open: no request waits on
//! the outpost; a background probe of `/outpost.goauthentik.io/ping` every `probe_interval`
//! closes it again. State lives in atomics, so the hot path reads one `bool`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::Notify;

/// What a recorded failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// The breaker just opened.
    Opened,
    /// The breaker just closed.
    Closed,
}

/// Breaker state for one outpost.
#[derive(Debug)]
pub struct Breaker {
    open: AtomicBool,
    failures: AtomicU32,
    trip_after: AtomicU32,
    opened: Notify,
}

impl Breaker {
    /// A closed breaker that opens after `trip_after` consecutive failures.
    pub fn new(trip_after: u32) -> Breaker {
        Breaker {
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            trip_after: AtomicU32::new(trip_after.max(1)),
            opened: Notify::new(),
        }
    }

    /// Changes the threshold (config reload).
    pub fn set_trip_after(&self, n: u32) {
        self.trip_after.store(n.max(1), Ordering::Relaxed);
    }

    /// Whether requests must skip the outpost.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Records an answer that was not a failure: resets the count.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records one failed exchange; `refused` trips at once.
    pub fn record_failure(&self, refused: bool) -> Transition {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if refused || n >= self.trip_after.load(Ordering::Relaxed) {
            return self.open();
        }
        Transition::None
    }

    /// Opens the breaker (no-op if already open).
    pub fn open(&self) -> Transition {
        if self.open.swap(true, Ordering::AcqRel) {
            return Transition::None;
        }
        self.opened.notify_one();
        Transition::Opened
    }

    /// Closes the breaker after a successful probe.
    pub fn close(&self) -> Transition {
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::AcqRel) {
            Transition::Closed
        } else {
            Transition::None
        }
    }

    /// Resolves once the breaker is open (immediately if it already is).
    pub async fn wait_open(&self) {
        loop {
            let notified = self.opened.notified();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3);
        assert_eq!(b.record_failure(false), Transition::None);
        assert_eq!(b.record_failure(false), Transition::None);
        b.record_success();
        assert_eq!(b.record_failure(false), Transition::None);
        assert_eq!(b.record_failure(false), Transition::None);
        assert!(!b.is_open());
        assert_eq!(b.record_failure(false), Transition::Opened);
        assert!(b.is_open());
        assert_eq!(b.record_failure(false), Transition::None);
        assert_eq!(b.close(), Transition::Closed);
        assert!(!b.is_open());
    }

    #[test]
    fn refused_trips_at_once() {
        let b = Breaker::new(3);
        assert_eq!(b.record_failure(true), Transition::Opened);
        assert!(b.is_open());
    }

    #[tokio::test]
    async fn wait_open_returns_when_opened() {
        let b = std::sync::Arc::new(Breaker::new(1));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait_open().await }
        });
        tokio::task::yield_now().await;
        b.open();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
