//! The admin listener: `/healthz` (process up), `/readyz` (ready to serve; stays ready during an
//! outpost outage because the fallback is a working state), `/metrics` (Prometheus text).

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};

use crate::app::App;
use crate::body::Body;
use crate::router;

/// Answers one admin request.
pub fn handle<B>(app: &App, req: &Request<B>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => router::health(),
        "/readyz" => readyz(app),
        "/metrics" => {
            // Counted at scrape time: no shard walk on the request path.
            let entries = app.runtime().cache.live_len(tokio::time::Instant::now());
            app.metrics.cache_entries.set(entries as i64);
            app.refresh_fallback_gauge();
            let mut resp = Response::new(Body::full(app.metrics.render()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => crate::error::ProxyError::NotFound.response(),
    }
}

fn readyz(app: &App) -> Response<Body> {
    let rt = app.runtime();
    let outpost = if rt.breaker.is_open() { "down" } else { "up" };
    let fallback = match (&rt.realm, rt.breaker.is_open()) {
        (Some(_), true) => "active",
        (Some(_), false) => "standby",
        (None, _) => "disabled",
    };
    let (status, state) = if app.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        (StatusCode::OK, "ready")
    };
    let body = format!("{state}\noutpost: {outpost}\nfallback: {fallback}\n");
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
