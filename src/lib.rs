//! portcullis: a forward-auth reverse proxy in front of the authentik proxy outpost.
//!
//! It answers Traefik, nginx, Caddy and Envoy forward-auth calls by asking the outpost over a
//! keepalive pool, caches positive decisions briefly, coalesces identical misses, passes
//! `/outpost.goauthentik.io/*` through, and answers from an emergency Basic realm while the
//! outpost is down. The contract is `DESIGN.md`; the tree is the architecture:
//!
//! - [`config`]: the TOML file, validated;
//! - [`app`]: config-derived runtime state behind one `Arc`;
//! - [`router`]: path to handler, access log, metrics;
//! - [`auth`]: the pipeline (cache, breaker, outpost, fallback, headers);
//! - [`upstream`]: keepalive pool, passthrough, circuit breaker;
//! - [`server`], [`admin`], [`signal`], [`reload`]: listeners, probes, lifecycle;
//! - [`demo`]: a fake outpost for tests and the demo (not for production).

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod edge;
pub mod error;
pub mod metrics;
pub mod reload;
pub mod router;
pub mod server;
pub mod signal;
pub mod upstream;
