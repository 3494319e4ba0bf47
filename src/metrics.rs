//! Prometheus metrics of DESIGN.md section 7, in a registry the app owns.
//!
//! Names and label values are part of the contract (alert rules in `deploy/` use them). Every
//! labelled child the hot path touches is resolved once here, so counting a request is an atomic
//! add, never a label lookup. Tests read the same handles to assert on counters.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The forward-auth endpoint a request came in on (label `endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/outpost.goauthentik.io/auth/traefik`
    Traefik,
    /// `/outpost.goauthentik.io/auth/nginx`
    Nginx,
    /// `/outpost.goauthentik.io/auth/caddy`
    Caddy,
    /// `/outpost.goauthentik.io/auth/envoy...`
    Envoy,
    /// Any other `/outpost.goauthentik.io/*` path, passed through.
    Outpost,
    /// Edge mode.
    Edge,
}

impl Endpoint {
    /// Every endpoint, in label order.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Traefik,
        Endpoint::Nginx,
        Endpoint::Caddy,
        Endpoint::Envoy,
        Endpoint::Outpost,
        Endpoint::Edge,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Traefik => "traefik",
            Endpoint::Nginx => "nginx",
            Endpoint::Caddy => "caddy",
            Endpoint::Envoy => "envoy",
            Endpoint::Outpost => "outpost",
            Endpoint::Edge => "edge",
        }
    }
}

/// What the proxy decided for one request (label `decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Fresh allow from the outpost, with identity.
    Allow,
    /// Allow answered from the cache.
    AllowCached,
    /// 2xx from the outpost without identity (skip path).
    Anonymous,
    /// 3xx/4xx/500 relayed from the outpost.
    Deny,
    /// `/outpost.goauthentik.io/*` passed through.
    Passthrough,
    /// Emergency realm accepted the credentials.
    FallbackAllow,
    /// Emergency realm refused.
    FallbackDeny,
    /// Emergency realm rate-limited the caller.
    FallbackLimited,
    /// Fail-closed answer (503, 502, 431, ...).
    Error,
}

impl Decision {
    /// Every decision, in label order.
    pub const ALL: [Decision; 9] = [
        Decision::Allow,
        Decision::AllowCached,
        Decision::Anonymous,
        Decision::Deny,
        Decision::Passthrough,
        Decision::FallbackAllow,
        Decision::FallbackDeny,
        Decision::FallbackLimited,
        Decision::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::AllowCached => "allow_cached",
            Decision::Anonymous => "anonymous",
            Decision::Deny => "deny",
            Decision::Passthrough => "passthrough",
            Decision::FallbackAllow => "fallback_allow",
            Decision::FallbackDeny => "fallback_deny",
            Decision::FallbackLimited => "fallback_limited",
            Decision::Error => "error",
        }
    }
}

/// Result of one cache lookup (label `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A live entry answered.
    Hit,
    /// No entry.
    Miss,
    /// An entry was there but its TTL had passed.
    Expired,
}

/// Result of one emergency-realm attempt (label `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Valid credentials.
    Ok,
    /// Missing or wrong credentials.
    BadCredentials,
    /// Refused by the failure limiter.
    Limited,
}

/// Every metric name of DESIGN.md section 7: the contract alert rules and dashboards rely on.
pub const NAMES: [&str; 12] = [
    "portcullis_requests_total",
    "portcullis_request_duration_seconds",
    "portcullis_cache_lookups_total",
    "portcullis_cache_entries",
    "portcullis_coalesced_total",
    "portcullis_outpost_responses_total",
    "portcullis_outpost_duration_seconds",
    "portcullis_outpost_connections_opened_total",
    "portcullis_outpost_up",
    "portcullis_fallback_active",
    "portcullis_fallback_attempts_total",
    "portcullis_config_reloads_total",
];

/// Label values of `portcullis_outpost_responses_total{code}`.
const OUTPOST_CODES: [&str; 6] = ["200", "302", "400", "401", "5xx", "error"];

/// All metrics, with the hot-path children resolved.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: Vec<IntCounter>,
    durations: Vec<Histogram>,
    cache_lookups: [IntCounter; 3],
    /// `portcullis_cache_entries`
    pub cache_entries: IntGauge,
    /// `portcullis_coalesced_total`
    pub coalesced: IntCounter,
    outpost_responses: IntCounterVec,
    outpost_fixed: [IntCounter; 6],
    /// `portcullis_outpost_duration_seconds`
    pub outpost_duration: Histogram,
    /// `portcullis_outpost_connections_opened_total`
    pub outpost_connections_opened: IntCounter,
    /// `portcullis_outpost_up`
    pub outpost_up: IntGauge,
    /// `portcullis_fallback_active`
    pub fallback_active: IntGauge,
    fallback_attempts: [IntCounter; 3],
    config_reloads: [IntCounter; 2],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets from 50 µs (a cache hit) to 10 s (past every timeout), with 5 s, the default
/// `outpost.timeout`, as a bound of its own: requests that waited for it show there.
const LATENCY_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        Self::build().expect("metric definitions are static and valid")
    }

    fn build() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests_vec = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests by endpoint and decision.",
            ),
            &["endpoint", "decision"],
        )?;
        let duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request head to response head, by endpoint.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let lookups = IntCounterVec::new(
            Opts::new("portcullis_cache_lookups_total", "Cache lookups by result."),
            &["result"],
        )?;
        let outpost_responses = IntCounterVec::new(
            Opts::new(
                "portcullis_outpost_responses_total",
                "Outpost answers by status class.",
            ),
            &["code"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "portcullis_fallback_attempts_total",
                "Emergency realm attempts by result.",
            ),
            &["result"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Config reloads by result.",
            ),
            &["result"],
        )?;
        let m = Metrics {
            requests: Self::request_children(&requests_vec)?,
            durations: Endpoint::ALL
                .iter()
                .map(|e| duration_vec.get_metric_with_label_values(&[e.as_str()]))
                .collect::<prometheus::Result<_>>()?,
            cache_lookups: [
                lookups.get_metric_with_label_values(&["hit"])?,
                lookups.get_metric_with_label_values(&["miss"])?,
                lookups.get_metric_with_label_values(&["expired"])?,
            ],
            cache_entries: IntGauge::new("portcullis_cache_entries", "Live cache entries.")?,
            coalesced: IntCounter::new(
                "portcullis_coalesced_total",
                "Checks that waited on another identical outpost call.",
            )?,
            outpost_fixed: [
                outpost_responses.get_metric_with_label_values(&[OUTPOST_CODES[0]])?,
                outpost_responses.get_metric_with_label_values(&[OUTPOST_CODES[1]])?,
                outpost_responses.get_metric_with_label_values(&[OUTPOST_CODES[2]])?,
                outpost_responses.get_metric_with_label_values(&[OUTPOST_CODES[3]])?,
                outpost_responses.get_metric_with_label_values(&[OUTPOST_CODES[4]])?,
                outpost_responses.get_metric_with_label_values(&[OUTPOST_CODES[5]])?,
            ],
            outpost_responses,
            outpost_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_outpost_duration_seconds",
                    "Duration of outpost exchanges.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            outpost_connections_opened: IntCounter::new(
                "portcullis_outpost_connections_opened_total",
                "TCP connections opened to the outpost.",
            )?,
            outpost_up: IntGauge::new(
                "portcullis_outpost_up",
                "1 while the outpost circuit is closed, 0 while open.",
            )?,
            fallback_active: IntGauge::new(
                "portcullis_fallback_active",
                "1 while answering from the emergency realm.",
            )?,
            fallback_attempts: [
                attempts.get_metric_with_label_values(&["ok"])?,
                attempts.get_metric_with_label_values(&["bad_credentials"])?,
                attempts.get_metric_with_label_values(&["limited"])?,
            ],
            config_reloads: [
                reloads.get_metric_with_label_values(&["ok"])?,
                reloads.get_metric_with_label_values(&["rejected"])?,
            ],
            registry,
        };
        m.outpost_up.set(1);
        m.register(requests_vec, duration_vec, lookups, attempts, reloads)?;
        Ok(m)
    }

    fn request_children(v: &IntCounterVec) -> prometheus::Result<Vec<IntCounter>> {
        let mut out = Vec::with_capacity(Endpoint::ALL.len() * Decision::ALL.len());
        for e in Endpoint::ALL {
            for d in Decision::ALL {
                out.push(v.get_metric_with_label_values(&[e.as_str(), d.as_str()])?);
            }
        }
        Ok(out)
    }

    fn register(
        &self,
        requests: IntCounterVec,
        durations: HistogramVec,
        lookups: IntCounterVec,
        attempts: IntCounterVec,
        reloads: IntCounterVec,
    ) -> prometheus::Result<()> {
        let r = &self.registry;
        r.register(Box::new(requests))?;
        r.register(Box::new(durations))?;
        r.register(Box::new(lookups))?;
        r.register(Box::new(self.cache_entries.clone()))?;
        r.register(Box::new(self.coalesced.clone()))?;
        r.register(Box::new(self.outpost_responses.clone()))?;
        r.register(Box::new(self.outpost_duration.clone()))?;
        r.register(Box::new(self.outpost_connections_opened.clone()))?;
        r.register(Box::new(self.outpost_up.clone()))?;
        r.register(Box::new(self.fallback_active.clone()))?;
        r.register(Box::new(attempts))?;
        r.register(Box::new(reloads))?;
        Ok(())
    }

    /// The child of one (endpoint, decision) pair: the enums' declaration order is the order of
    /// their `ALL` arrays (a unit test holds it), so the discriminants index directly.
    fn index(endpoint: Endpoint, decision: Decision) -> usize {
        endpoint as usize * Decision::ALL.len() + decision as usize
    }

    /// Counts one finished request and its duration.
    pub fn request(&self, endpoint: Endpoint, decision: Decision, seconds: f64) {
        self.requests[Self::index(endpoint, decision)].inc();
        self.durations[endpoint as usize].observe(seconds);
    }

    /// Value of `portcullis_requests_total{endpoint,decision}` (tests, demo).
    pub fn requests_total(&self, endpoint: Endpoint, decision: Decision) -> u64 {
        self.requests[Self::index(endpoint, decision)].get()
    }

    /// Counts a cache lookup.
    pub fn cache_lookup(&self, result: Lookup) -> &IntCounter {
        &self.cache_lookups[result as usize]
    }

    /// Counts one outpost answer by status class, or a transport error (`None`). The label set
    /// is the contract's (DESIGN.md section 7): other codes count in their class — any 2xx as
    /// `200`, any 3xx as `302`, 401 as `401`, any other 4xx as `400`.
    pub fn outpost_response(&self, status: Option<u16>) {
        let i = match status {
            None => 5,
            Some(401) => 3,
            Some(s) if s >= 500 => 4,
            Some(s) if s >= 400 => 2,
            Some(s) if s >= 300 => 1,
            Some(_) => 0,
        };
        self.outpost_fixed[i].inc();
    }

    /// Value of `portcullis_outpost_responses_total{code}`.
    pub fn outpost_responses_total(&self, code: &str) -> u64 {
        self.outpost_responses.with_label_values(&[code]).get()
    }

    /// Counts one emergency-realm attempt.
    pub fn fallback_attempt(&self, result: Attempt) -> &IntCounter {
        &self.fallback_attempts[result as usize]
    }

    /// Counts one config reload.
    pub fn config_reload(&self, ok: bool) -> &IntCounter {
        &self.config_reloads[usize::from(!ok)]
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counter_moves_only_its_own_child() {
        let m = Metrics::new();
        m.request(Endpoint::Traefik, Decision::AllowCached, 0.001);
        assert_eq!(
            m.requests_total(Endpoint::Traefik, Decision::AllowCached),
            1
        );
        assert_eq!(m.requests_total(Endpoint::Traefik, Decision::Allow), 0);
        assert_eq!(m.requests_total(Endpoint::Nginx, Decision::AllowCached), 0);
        let text = m.render();
        assert!(text.contains(
            "portcullis_requests_total{decision=\"allow_cached\",endpoint=\"traefik\"} 1"
        ));
    }

    #[test]
    fn enum_order_is_the_order_of_all() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
    }

    #[test]
    fn outpost_codes_are_classed() {
        let m = Metrics::new();
        m.outpost_response(Some(503));
        m.outpost_response(Some(502));
        m.outpost_response(None);
        m.outpost_response(Some(204));
        m.outpost_response(Some(403));
        m.outpost_response(Some(307));
        assert_eq!(m.outpost_responses_total("5xx"), 2);
        assert_eq!(m.outpost_responses_total("error"), 1);
        assert_eq!(m.outpost_responses_total("200"), 1);
        assert_eq!(m.outpost_responses_total("400"), 1);
        assert_eq!(m.outpost_responses_total("302"), 1);
        assert!(!m.render().contains("code=\"204\""));
    }

    #[test]
    fn every_contract_metric_is_exported() {
        let m = Metrics::new();
        m.outpost_duration.observe(0.01);
        let text = m.render();
        for name in NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
