//! The login and logout flow: redirect to authorize, `/start`, the callback, `/sign_out` (research
//! §2.5–2.7, §7), and the auto-approving stand-in for authentik's authorize endpoint.
//!
//! The state JWT is HS256 over `cookie_secret` with `iss`, `sid`, `state` and `redirect` and no `exp`,
//! as upstream; the callback rejects any signature, issuer or `sid` mismatch with an empty 400.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use http::request::Parts;
use http::{Method, StatusCode};
use rand::RngCore as _;
use serde_json::json;

use super::handler::{append, append_cookies, empty, text, Resp};
use super::identity::CookieState;
use super::jwt;
use super::session::{lock, set_cookie, Session};
use super::url::{encode_sorted, form_escape, html_escape, query_param, ForwardUrl};
use super::{Inner, APP_SLUG};

/// Scopes the outpost requests (`scopes_to_request`); form-encoded as `openid+email+profile+ak_proxy`.
const SCOPES: &str = "openid email profile ak_proxy";
/// Outstanding authorization codes kept at most; older ones are dropped wholesale beyond this.
const MAX_CODES: usize = 10_000;

/// 302 to the authorize endpoint with a fresh state; mints a session (with `Set-Cookie`) when the
/// request has no live one, plus a deletion cookie first when its cookie was stale.
pub fn redirect_to_authorize(
    inner: &Inner,
    req: &Parts,
    cookie: CookieState,
    redirect: String,
) -> Resp {
    let mut cookies = Vec::new();
    let sid = match cookie {
        CookieState::Known(id) => id,
        other => match inner.new_anonymous_session(other, inner.is_secure(req), &mut cookies) {
            Ok(id) => id,
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        },
    };
    let state = jwt::sign(
        &json!({ "iss": inner.state_issuer(), "sid": sid, "state": random_token(), "redirect": redirect }),
        inner.cfg.cookie_secret.as_bytes(),
    );
    let ext = inner.external_host(req);
    let redirect_uri =
        format!("{ext}/outpost.goauthentik.io/callback?X-authentik-auth-callback=true");
    let query = encode_sorted(&[
        ("client_id", &inner.cfg.client_id),
        ("redirect_uri", &redirect_uri),
        ("response_type", "code"),
        ("scope", SCOPES),
        ("state", &state),
    ]);
    let location = format!("{}/application/o/authorize/?{query}", inner.authentik_base);
    found(req, &location, &cookies)
}

/// `/outpost.goauthentik.io/start?rd=…`: validated `rd` becomes the state's redirect.
pub fn start(inner: &Inner, req: &Parts) -> Resp {
    let ext = inner.external_host(req);
    let rd = query_param(req.uri.query().unwrap_or_default(), "rd")
        .and_then(|rd| checked_redirect(&ext, &rd))
        .unwrap_or_default();
    let (cookie, _) = inner.cookie_state(req);
    redirect_to_authorize(inner, req, cookie, rd)
}

/// Single-mode `rd` check (research §7.2): a host-less path gets the external host prepended, a URL
/// must name exactly the external host (port included); anything else is dropped.
fn checked_redirect(ext: &str, rd: &str) -> Option<String> {
    let ext_host = ForwardUrl::parse_absolute(ext)?.host;
    if let Some(url) = ForwardUrl::parse_absolute(rd) {
        return (url.host == ext_host).then(|| rd.to_owned());
    }
    if let Some(rest) = rd.strip_prefix("//") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        return (host == ext_host).then(|| rd.to_owned());
    }
    rd.starts_with('/').then(|| format!("{ext}{rd}"))
}

/// The OAuth callback; `query` is the request's or the forwarded URL's query.
pub fn callback(inner: &Inner, req: &Parts, query: Option<&str>) -> Resp {
    let query = query.unwrap_or_default();
    let (cookie, _) = inner.cookie_state(req);
    let Some(redirect) = inner.verify_state(query, &cookie) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let redirect = if redirect.is_empty() {
        inner.external_host(req)
    } else {
        redirect
    };
    let user = query_param(query, "code")
        .and_then(|code| lock(&inner.codes).remove(&code))
        .and_then(|username| inner.user(Some(&username)));
    let (Some(user), CookieState::Known(sid)) = (user, cookie) else {
        // Failed exchange: back to the target without a session; the next request restarts the login.
        return found(req, &redirect, &[]);
    };
    let claims = inner.claims_for(&user);
    if inner.store_claims(Some(&sid), &claims).is_none() {
        return empty(StatusCode::BAD_REQUEST);
    }
    let max_age = inner.cfg.access_token_validity.as_secs();
    let cookie = set_cookie(&inner.cookie_name, &sid, max_age, inner.is_secure(req));
    found(req, &redirect, &[cookie])
}

impl Inner {
    /// `goauthentik.io/outpost/<client_id>`.
    fn state_issuer(&self) -> String {
        format!("goauthentik.io/outpost/{}", self.cfg.client_id)
    }

    /// Checks the `state` parameter: signature, issuer, and `sid` equal to the cookie's live session.
    /// Returns the state's `redirect` (possibly empty).
    fn verify_state(&self, query: &str, cookie: &CookieState) -> Option<String> {
        let state = query_param(query, "state")?;
        let claims = jwt::verify(&state, self.cfg.cookie_secret.as_bytes())?;
        let issuer_ok = claims.get("iss")?.as_str()? == self.state_issuer();
        let sid_ok = matches!(cookie, CookieState::Known(id) if Some(id.as_str()) == claims.get("sid")?.as_str());
        let redirect = claims
            .get("redirect")
            .and_then(|r| r.as_str())
            .unwrap_or_default();
        (issuer_ok && sid_ok).then(|| redirect.to_owned())
    }
}

/// `/outpost.goauthentik.io/sign_out` or `?X-authentik-logout=true`.
pub fn sign_out(inner: &Inner, req: &Parts) -> Resp {
    let (_, session) = inner.cookie_state(req);
    if let Some(claims) = session.and_then(|s: Session| s.claims) {
        let removed = inner.sessions.delete_user(&claims.sub);
        tracing::debug!(user = %claims.username, removed, "fake outpost signed a user out");
        let location = format!(
            "{}/application/o/{APP_SLUG}/end-session/?{}",
            inner.authentik_base,
            encode_sorted(&[("id_token_hint", &claims.token)])
        );
        // The browser cookie is deliberately not cleared (research §2.7).
        return found(req, &location, &[]);
    }
    let ext = inner.external_host(req);
    let rd = format!("{ext}/outpost.goauthentik.io/sign_out");
    found(
        req,
        &format!("{ext}/outpost.goauthentik.io/start?rd={}", form_escape(&rd)),
        &[],
    )
}

/// Stand-in for authentik's `/application/o/authorize/`: auto-approves the first user (or `?user=`)
/// and redirects to `redirect_uri` with a single-use `code` and the `state`.
/// `redirect_uri` must be an outpost callback URL (under `external_host` when one is configured).
pub fn authorize(inner: &Inner, req: &Parts) -> Resp {
    let query = req.uri.query().unwrap_or_default();
    if query_param(query, "client_id").as_deref() != Some(inner.cfg.client_id.as_str()) {
        return text(StatusCode::BAD_REQUEST, "unknown client_id\n");
    }
    let redirect_uri = query_param(query, "redirect_uri").unwrap_or_default();
    let allowed_base = inner.cfg.external_host.as_deref().unwrap_or("");
    let well_formed = ForwardUrl::parse_absolute(&redirect_uri).is_some_and(|u| {
        u.path == "/outpost.goauthentik.io/callback" && redirect_uri.starts_with(allowed_base)
    });
    if !well_formed {
        return text(StatusCode::BAD_REQUEST, "invalid redirect_uri\n");
    }
    let Some(user) = inner.user(query_param(query, "user").as_deref()) else {
        return text(StatusCode::BAD_REQUEST, "unknown user\n");
    };
    let code = random_token();
    {
        let mut codes = lock(&inner.codes);
        if codes.len() >= MAX_CODES {
            codes.clear();
        }
        codes.insert(code.clone(), user.username);
    }
    let state = query_param(query, "state").unwrap_or_default();
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!(
        "{redirect_uri}{separator}code={}&state={}",
        form_escape(&code),
        form_escape(&state)
    );
    found(req, &location, &[])
}

/// 32 random bytes, base64url without padding.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Go `http.Redirect` with 302: HTML content type on GET/HEAD, `<a href="…">Found</a>.` body on GET.
pub fn found(req: &Parts, location: &str, cookies: &[String]) -> Resp {
    let body = if req.method == Method::GET {
        format!("<a href=\"{}\">Found</a>.\n", html_escape(location))
    } else {
        String::new()
    };
    let mut resp = Resp::new(body.into());
    *resp.status_mut() = StatusCode::FOUND;
    append(&mut resp, LOCATION, location);
    if req.method == Method::GET || req.method == Method::HEAD {
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    append_cookies(&mut resp, cookies);
    resp
}
