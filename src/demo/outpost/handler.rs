//! Request entry point and routing of the fake outpost, plus the forward-auth endpoints (research §2.2–2.4).
//!
//! Every request body is read to the end and discarded (its length recorded), then the current
//! [`Behaviour`] is applied, then the request is routed. No route checks the method, as upstream.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, SET_COOKIE};
use http::request::Parts;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;

use super::flow;
use super::identity::{check_auth, CookieState};
use super::session::{lock, StoreFull};
use super::url::{has_signature, ForwardUrl};
use super::{Behaviour, Inner, RecordedRequest};

/// Response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// Query signature that turns any request into the OAuth callback.
pub const CALLBACK_SIGNATURE: &str = "X-authentik-auth-callback";
/// Query signature that turns any request into a sign-out.
pub const LOGOUT_SIGNATURE: &str = "X-authentik-logout";
/// Prefix of the outpost's own paths.
pub const PREFIX: &str = "/outpost.goauthentik.io";
const ENVOY_PREFIX: &str = "/outpost.goauthentik.io/auth/envoy";

/// Serves one request: drain the body, record it, apply the behaviour switch, route.
pub async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let (parts, body) = req.into_parts();
    let body_len = drain(body).await;
    inner.record(RecordedRequest {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers.clone(),
        body_len,
    });
    let behaviour = *lock(&inner.behaviour);
    match behaviour {
        Behaviour::Normal => {}
        Behaviour::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(text(status, "fake failure\n"));
        }
        Behaviour::BlackHole => {
            // Hold the connection until shutdown aborts this task.
            let never: Infallible = std::future::pending().await;
            match never {}
        }
        Behaviour::Delay(d) => tokio::time::sleep(d).await,
    }
    Ok(route(&inner, &parts))
}

/// Reads a body to its end without buffering it; returns the number of data bytes.
async fn drain(mut body: Incoming) -> u64 {
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => len += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    len
}

fn route(inner: &Inner, req: &Parts) -> Resp {
    let path = req.uri.path();
    let query = req.uri.query();
    // Global routes first: any host, no app middleware (research §2.8).
    if path == "/outpost.goauthentik.io/ping" {
        return empty(StatusCode::NO_CONTENT);
    }
    if let Some(asset) = path.strip_prefix("/outpost.goauthentik.io/static/") {
        return static_asset(asset);
    }
    // The authentik stand-in.
    if path == "/application/o/authorize/" {
        return flow::authorize(inner, req);
    }
    if path.starts_with("/application/o/") && path.ends_with("/end-session/") {
        return text(
            StatusCode::OK,
            "Signed out of the fake authentik (portcullis demo only).\n",
        );
    }
    // App-level middleware: the signatures work on any path (research §2).
    if has_signature(query, CALLBACK_SIGNATURE) {
        return flow::callback(inner, req, query);
    }
    if has_signature(query, LOGOUT_SIGNATURE) {
        return flow::sign_out(inner, req);
    }
    match path {
        "/outpost.goauthentik.io/auth/traefik" | "/outpost.goauthentik.io/auth/caddy" => {
            forward_traefik(inner, req)
        }
        "/outpost.goauthentik.io/auth/nginx" => forward_nginx(inner, req),
        "/outpost.goauthentik.io/start" => flow::start(inner, req),
        "/outpost.goauthentik.io/callback" => flow::callback(inner, req, query),
        "/outpost.goauthentik.io/sign_out" => flow::sign_out(inner, req),
        _ if path.starts_with(ENVOY_PREFIX) => forward_envoy(inner, req),
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// Traefik and Caddy: `<X-Forwarded-Proto>://<X-Forwarded-Host><X-Forwarded-Uri>` (research §2.2).
fn forward_traefik(inner: &Inner, req: &Parts) -> Resp {
    let proto = header_str(req, "x-forwarded-proto");
    let host = header_str(req, "x-forwarded-host");
    let uri = header_str(req, "x-forwarded-uri");
    let fwd = match ForwardUrl::parse_absolute(&format!("{proto}://{host}{uri}")) {
        Some(fwd) => fwd,
        None => return config_error(),
    };
    if has_signature(fwd.query.as_deref(), CALLBACK_SIGNATURE) {
        return flow::callback(inner, req, fwd.query.as_deref());
    }
    if has_signature(fwd.query.as_deref(), LOGOUT_SIGNATURE) {
        return flow::sign_out(inner, req);
    }
    decide_redirecting(inner, req, &fwd)
}

/// Envoy: Host + the path after the prefix + the query; scheme-relative (research §2.4).
fn forward_envoy(inner: &Inner, req: &Parts) -> Resp {
    let rest = req
        .uri
        .path()
        .strip_prefix(ENVOY_PREFIX)
        .unwrap_or_default();
    let fwd = ForwardUrl {
        scheme: String::new(),
        host: header_str(req, "host").to_owned(),
        path: if rest.is_empty() {
            "/".to_owned()
        } else {
            rest.to_owned()
        },
        query: req.uri.query().map(str::to_owned),
    };
    decide_redirecting(inner, req, &fwd)
}

/// Identity 200, skip-path 200, or 302 to authorize.
fn decide_redirecting(inner: &Inner, req: &Parts, fwd: &ForwardUrl) -> Resp {
    let auth = check_auth(inner, req);
    if let Some(claims) = &auth.claims {
        return inner.identity_response(req, claims, &auth.set_cookies, true);
    }
    if inner.is_skipped(fwd) {
        return skip_response();
    }
    flow::redirect_to_authorize(inner, req, auth.cookie, fwd.to_string())
}

/// nginx `auth_request`: `X-Original-URI` wins over `X-Original-URL`; 401 instead of 302 (research §2.3).
fn forward_nginx(inner: &Inner, req: &Parts) -> Resp {
    let original_uri = header_str(req, "x-original-uri");
    let original_url = header_str(req, "x-original-url");
    let fwd = if !original_uri.is_empty() {
        ForwardUrl::parse_path(original_uri)
    } else {
        match ForwardUrl::parse_absolute(original_url) {
            Some(fwd) => fwd,
            None => return config_error(),
        }
    };
    let auth = check_auth(inner, req);
    if let Some(claims) = &auth.claims {
        return inner.identity_response(req, claims, &auth.set_cookies, false);
    }
    if inner.is_skipped(&fwd) {
        return skip_response();
    }
    if fwd.path.starts_with(PREFIX) && fwd.path != req.uri.path() {
        return empty(StatusCode::OK);
    }
    let mut cookies = Vec::new();
    if let Err(StoreFull) = inner.remember_redirect(
        auth.cookie,
        fwd.to_string(),
        inner.is_secure(req),
        &mut cookies,
    ) {
        return empty(StatusCode::BAD_REQUEST);
    }
    let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized request\n");
    append_cookies(&mut resp, &cookies);
    resp
}

impl Inner {
    /// nginx mode: store the forwarded URL in the (possibly new) session, emitting its cookie.
    fn remember_redirect(
        &self,
        cookie: CookieState,
        redirect: String,
        secure: bool,
        cookies: &mut Vec<String>,
    ) -> Result<(), StoreFull> {
        if let CookieState::Known(id) = &cookie {
            if let Some(mut session) = self.sessions.get(id) {
                if session.redirect.is_none() {
                    session.redirect = Some(redirect);
                    self.sessions.put(id, session)?;
                }
                return Ok(());
            }
        }
        let id = self.new_anonymous_session(cookie, secure, cookies)?;
        if let Some(mut session) = self.sessions.get(&id) {
            session.redirect = Some(redirect);
            self.sessions.put(&id, session)?;
        }
        Ok(())
    }

    /// Skip-path check against the decoded forwarded path (plain prefixes, see the module docs).
    fn is_skipped(&self, fwd: &ForwardUrl) -> bool {
        let path = fwd.decoded_path();
        self.cfg
            .skip_path_prefixes
            .iter()
            .any(|prefix| !prefix.is_empty() && path.starts_with(prefix.as_str()))
    }
}

/// A request header as text; missing or non-UTF-8 headers read as empty.
pub fn header_str<'a>(req: &'a Parts, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// An empty-bodied response.
pub fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// A `text/plain; charset=utf-8` response with `X-Content-Type-Options: nosniff` (Go's `http.Error`).
pub fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Adds a header whose value came from data; values that are not valid header bytes are sent empty.
pub fn append(resp: &mut Resp, name: HeaderName, value: &str) {
    let value =
        HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""));
    resp.headers_mut().append(name, value);
}

/// Appends one `Set-Cookie` per entry, in order.
pub fn append_cookies(resp: &mut Resp, cookies: &[String]) {
    for cookie in cookies {
        append(resp, SET_COOKIE, cookie);
    }
}

/// `X-Powered-By: authentik_proxy2`, which the outpost's root middleware adds when a handler wrote no header.
pub fn powered_by(resp: &mut Resp) {
    resp.headers_mut().insert(
        HeaderName::from_static("x-powered-by"),
        HeaderValue::from_static("authentik_proxy2"),
    );
}

fn skip_response() -> Resp {
    let mut resp = empty(StatusCode::OK);
    powered_by(&mut resp);
    resp
}

fn config_error() -> Resp {
    text(StatusCode::INTERNAL_SERVER_ERROR, "configuration error\n")
}

fn static_asset(name: &str) -> Resp {
    let (content_type, body) = if name.ends_with(".css") {
        (
            "text/css; charset=utf-8",
            "/* fake authentik outpost stylesheet */\n",
        )
    } else {
        (
            "text/plain; charset=utf-8",
            "fake authentik outpost static asset\n",
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
