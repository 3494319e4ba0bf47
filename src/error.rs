//! Request-level errors, and the one place they become responses.
//!
//! A denial from the outpost is an outcome, not an error; what is here is everything the proxy
//! answers on its own: fail-closed outages, limits, bad paths.

use std::error::Error;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::auth::headers::{TRUE, X_AUTH_FALLBACK};
use crate::auth::outpost::Failure;
use crate::body::Body;

/// Everything the proxy refuses by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The outpost is down and the emergency realm is off: fail closed.
    #[error("outpost unavailable ({}) and the fallback realm is disabled", .0.as_str())]
    OutpostUnavailable(Failure),
    /// The outpost answered something that breaks the protocol (oversized body).
    #[error("outpost answer violates the protocol")]
    OutpostProtocol,
    /// Too many failed emergency logins for this user or address.
    #[error("too many failed fallback attempts; retry after {0:?}")]
    FallbackLimited(Duration),
    /// A passthrough request could not reach the outpost, or the exchange with it failed.
    #[error("outpost passthrough failed ({})", .0.as_str())]
    PassthroughFailed(Failure),
    /// A passthrough request's own body was malformed or stalled.
    #[error("request body malformed or stalled")]
    BadRequestBody,
    /// A path with dot-segments or encoded slashes under the outpost prefix; in edge mode, a
    /// path with (encoded) dot-segments or backslashes anywhere.
    #[error("ambiguous path")]
    BadPath,
    /// Edge mode: a `Host` / `:authority` that is not `name` or `name:port`, or two that differ.
    #[error("malformed host")]
    BadHost,
    /// No route.
    #[error("not found")]
    NotFound,
    /// The request head is larger than `server.max_header_bytes`.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// Edge mode: the backend could not be reached or broke the exchange.
    #[error("backend unavailable")]
    BackendUnavailable,
    /// Edge mode: the backend sent no response head in time.
    #[error("backend did not answer in time")]
    BackendTimeout,
}

impl ProxyError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::OutpostUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::OutpostProtocol => StatusCode::BAD_GATEWAY,
            ProxyError::FallbackLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::PassthroughFailed(Failure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::PassthroughFailed(Failure::CircuitOpen) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::PassthroughFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BadPath | ProxyError::BadHost | ProxyError::BadRequestBody => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BackendUnavailable => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response: status, a one-line plain-text body, and the headers the error needs.
    pub fn response(&self) -> Response<Body> {
        let status = self.status();
        let mut body = self.to_string();
        body.push('\n');
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            ProxyError::FallbackLimited(after) => {
                h.insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
                h.insert(X_AUTH_FALLBACK, TRUE);
            }
            // The rest of an oversized head may still be on the wire: do not read it as a request.
            ProxyError::HeadTooLarge => {
                h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// An error and its causes, outermost first.
pub fn causes<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

/// An error and its causes on one line: `a: b: c`.
pub fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status() {
        let table = [
            (ProxyError::OutpostUnavailable(Failure::Refused), 503),
            (ProxyError::OutpostProtocol, 502),
            (ProxyError::FallbackLimited(Duration::from_secs(30)), 429),
            (ProxyError::PassthroughFailed(Failure::Timeout), 504),
            (ProxyError::PassthroughFailed(Failure::CircuitOpen), 503),
            (ProxyError::PassthroughFailed(Failure::Refused), 502),
            (ProxyError::BadPath, 400),
            (ProxyError::BadHost, 400),
            (ProxyError::NotFound, 404),
            (ProxyError::HeadTooLarge, 431),
            (ProxyError::BackendUnavailable, 502),
            (ProxyError::BackendTimeout, 504),
        ];
        for (err, code) in table {
            assert_eq!(err.response().status().as_u16(), code, "{err}");
        }
    }

    #[test]
    fn limited_answer_carries_retry_after_and_the_fallback_marker() {
        let resp = ProxyError::FallbackLimited(Duration::from_millis(1500)).response();
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        assert_eq!(resp.headers()[X_AUTH_FALLBACK], "true");
        let resp = ProxyError::FallbackLimited(Duration::from_secs(0)).response();
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
    }
}
