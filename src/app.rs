//! The application: everything a request needs, behind one `Arc`.
//!
//! Config-derived state (the validated config, outpost client, breaker, emergency realm, cache)
//! lives in a [`Runtime`] swapped atomically on reload, so a request sees one consistent
//! generation from start to end. Metrics, the in-flight table and the readiness flags live as
//! long as the process.

use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::auth::cache::Cache;
use crate::auth::coalesce::Inflight;
use crate::auth::fallback::{HtpasswdError, Realm};
use crate::config::Config;
use crate::edge::Edge;
use crate::metrics::Metrics;
use crate::upstream::breaker::{Breaker, Transition};
use crate::upstream::client::OutpostClient;

/// One generation of config-derived state.
#[derive(Debug)]
pub struct Runtime {
    /// The validated config.
    pub config: Config,
    /// Increments on every reload; part of every cache key.
    pub generation: u64,
    /// The keepalive pool to the outpost.
    pub client: OutpostClient,
    /// The outpost's circuit breaker (kept across reloads while the outpost URL is unchanged).
    pub breaker: Arc<Breaker>,
    /// The emergency realm; `None` when `fallback.enabled = false`.
    pub realm: Option<Arc<Realm>>,
    /// The positive-decision cache.
    pub cache: Arc<Cache>,
    /// Edge routes and backend pools; `None` without `[edge]`.
    pub edge: Option<Arc<Edge>>,
}

/// Process-wide state.
#[derive(Debug)]
pub struct App {
    /// Metrics registry and handles.
    pub metrics: Metrics,
    runtime: ArcSwap<Runtime>,
    /// Coalesced misses in flight.
    pub inflight: Inflight,
    hasher: RandomState,
    generation: AtomicU64,
    draining: AtomicBool,
    log_level: std::sync::OnceLock<crate::cli::LogLevel>,
    /// Milliseconds from `epoch` to the emergency realm's last answer, plus one (0: never), for
    /// `portcullis_fallback_active`: an atomic, no lock on the fallback path.
    last_fallback: AtomicU64,
    epoch: std::time::Instant,
}

/// Why a runtime could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The htpasswd file is broken.
    #[error("fallback.htpasswd_file: {0}")]
    Htpasswd(#[from] HtpasswdError),
}

impl App {
    /// Builds the app from a validated config. Must run inside a Tokio runtime (the realm's
    /// file watcher and the breaker probe are spawned here).
    pub fn new(config: Config, metrics: Metrics) -> Result<Arc<App>, BuildError> {
        let runtime = build_runtime(config, 1, None, &metrics)?;
        let app = Arc::new(App {
            metrics,
            runtime: ArcSwap::from_pointee(runtime),
            inflight: Inflight::default(),
            hasher: RandomState::new(),
            generation: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            last_fallback: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            log_level: std::sync::OnceLock::new(),
        });
        tokio::spawn(probe_loop(Arc::downgrade(&app)));
        Ok(app)
    }

    /// The current runtime (one atomic load and a refcount).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The random hasher of cache keys.
    pub fn hasher(&self) -> &RandomState {
        &self.hasher
    }

    /// Applies a new validated config. Listener addresses cannot change without a restart.
    pub fn reload(&self, mut config: Config) -> Result<(), BuildError> {
        let old = self.runtime();
        if config.server.listen != old.config.server.listen
            || config.server.admin_listen != old.config.server.admin_listen
        {
            tracing::warn!(
                "server.listen / server.admin_listen changed: a restart is needed to rebind; \
                 keeping the current listeners"
            );
            config.server.listen = old.config.server.listen;
            config.server.admin_listen = old.config.server.admin_listen;
        }
        keep_edge_listeners(&mut config, &old.config);
        if config.log.format != old.config.log.format {
            tracing::warn!("log.format changed: a restart is needed; keeping the current format");
            config.log.format = old.config.log.format;
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        // Build everything first: a rejected reload changes nothing, the log level included.
        let next = build_runtime(config, generation, Some(&old), &self.metrics)?;
        self.apply_log_level(&next.config, &old.config);
        old.cache.clear();
        // A new outpost URL brings a new, closed breaker; a new [fallback] may switch the realm
        // on or off: the gauges follow the new state, not the last transition.
        let open = next.breaker.is_open();
        self.metrics.outpost_up.set(i64::from(!open));
        self.metrics
            .fallback_active
            .set(i64::from(open && next.realm.is_some()));
        self.runtime.store(Arc::new(next));
        Ok(())
    }

    /// Lets reloads change the log level (the binary's subscriber; tests have none).
    pub fn set_log_level(&self, set: crate::cli::LogLevel) {
        let _ = self.log_level.set(set);
    }

    /// `[log] level` applies on reload (`[log] format` needs a restart).
    fn apply_log_level(&self, config: &Config, old: &Config) {
        if config.log.level == old.log.level {
            return;
        }
        if let Some(set) = self.log_level.get() {
            match set.set(&config.log.level) {
                Ok(()) => tracing::info!(level = %config.log.level, "log level changed"),
                Err(err) => tracing::error!(error = %err, "cannot change the log level"),
            }
        }
    }

    /// Marks the process as shutting down: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The emergency realm answered a request: `portcullis_fallback_active` is 1 now.
    pub fn fallback_answered(&self) {
        self.last_fallback
            .store(self.millis_since_epoch() + 1, Ordering::Relaxed);
        self.metrics.fallback_active.set(1);
    }

    /// `portcullis_fallback_active` as of now (called at scrape time): 1 while the breaker is
    /// open with the realm on, or while the realm answered within two probe intervals; 0 once
    /// neither holds, so one stray 502 does not leave the gauge (and its alert) up for good.
    pub fn refresh_fallback_gauge(&self) {
        let rt = self.runtime();
        let open = rt.breaker.is_open() && rt.realm.is_some();
        let window =
            u64::try_from((rt.config.fallback.probe_interval * 2).as_millis()).unwrap_or(u64::MAX);
        let last = self.last_fallback.load(Ordering::Relaxed);
        let recent = last != 0 && (self.millis_since_epoch() + 1).saturating_sub(last) < window;
        if !open && !recent {
            self.metrics.fallback_active.set(0);
        }
    }

    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Applies a breaker transition to the gauges and logs it once.
    pub fn breaker_transition(&self, t: Transition, reason: &str) {
        let rt = self.runtime();
        let fallback = rt.realm.is_some();
        match t {
            Transition::None => {}
            Transition::Opened => {
                self.metrics.outpost_up.set(0);
                self.metrics.fallback_active.set(i64::from(fallback));
                if fallback {
                    tracing::error!(reason, "outpost down, fallback active");
                } else {
                    tracing::error!(reason, "outpost down, fallback disabled: failing closed");
                }
            }
            Transition::Closed => {
                self.metrics.outpost_up.set(1);
                self.metrics.fallback_active.set(0);
                tracing::warn!("outpost back, fallback inactive");
            }
        }
    }
}

/// Edge listeners and certificates are bound and loaded once: a reload keeps them (routes apply).
fn keep_edge_listeners(config: &mut Config, old: &Config) {
    let (Some(new), Some(old)) = (config.edge.as_mut(), old.edge.as_ref()) else {
        return;
    };
    if new.listen_https != old.listen_https
        || new.listen_http != old.listen_http
        || new.certs != old.certs
    {
        tracing::warn!(
            "edge.listen_https / edge.listen_http / edge.cert changed: a restart is needed; \
             keeping the current listeners and certificates"
        );
        new.listen_https = old.listen_https;
        new.listen_http = old.listen_http;
        new.certs.clone_from(&old.certs);
    }
}

fn build_runtime(
    config: Config,
    generation: u64,
    old: Option<&Runtime>,
    metrics: &Metrics,
) -> Result<Runtime, BuildError> {
    // An unchanged [fallback] keeps its realm: its failure counts and verified credentials
    // survive a reload of other sections (the realm re-reads its own file when that changes).
    let realm = match old.and_then(|o| o.realm.as_ref()) {
        Some(realm) if old.is_some_and(|o| o.config.fallback == config.fallback) => {
            Some(realm.clone())
        }
        _ if config.fallback.enabled => {
            let realm = Arc::new(Realm::load(&config.fallback)?);
            realm.spawn_watcher();
            Some(realm)
        }
        _ => None,
    };
    let same_outpost = old.is_some_and(|o| o.config.outpost == config.outpost);
    let client = match old {
        Some(o) if same_outpost => o.client.clone(),
        _ => OutpostClient::new(&config.outpost, metrics.outpost_connections_opened.clone()),
    };
    let breaker = match old {
        Some(o) if o.config.outpost.url == config.outpost.url => o.breaker.clone(),
        _ => Arc::new(Breaker::new(config.fallback.trip_after)),
    };
    breaker.set_trip_after(config.fallback.trip_after);
    let cache = Arc::new(Cache::new(config.cache.capacity, config.cache.ttl));
    let old_edge = old.and_then(|o| o.edge.as_deref());
    let edge = config
        .edge
        .as_ref()
        .map(|e| Arc::new(Edge::new(e, old_edge)));
    Ok(Runtime {
        config,
        generation,
        client,
        breaker,
        realm,
        cache,
        edge,
    })
}

/// While the breaker is open, probes `/outpost.goauthentik.io/ping` every `probe_interval` and
/// closes it on the first answer below 500.
async fn probe_loop(app: std::sync::Weak<App>) {
    loop {
        let Some(strong) = app.upgrade() else { return };
        let rt = strong.runtime();
        drop(strong);
        // Re-check now and then: a reload may swap the breaker we wait on.
        if tokio::time::timeout(Duration::from_secs(1), rt.breaker.wait_open())
            .await
            .is_err()
        {
            continue;
        }
        tokio::time::sleep(rt.config.fallback.probe_interval).await;
        if probe(&rt).await {
            let t = rt.breaker.close();
            if let Some(app) = app.upgrade() {
                app.breaker_transition(t, "probe succeeded");
            }
        }
    }
}

async fn probe(rt: &Runtime) -> bool {
    let mut req = http::Request::new(crate::body::Body::Empty);
    *req.uri_mut() = rt.client.uri(http::uri::PathAndQuery::from_static(
        "/outpost.goauthentik.io/ping",
    ));
    let exchange = async {
        let resp = rt.client.send(req).await.ok()?;
        let status = resp.status();
        http_body_util::BodyExt::collect(http_body_util::Limited::new(resp.into_body(), 64 * 1024))
            .await
            .ok()?;
        Some(status.as_u16() < 500)
    };
    matches!(
        tokio::time::timeout(rt.client.timeout(), exchange).await,
        Ok(Some(true))
    )
}
