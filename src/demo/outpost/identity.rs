//! Who is asking: session cookie lookup, header auth (research §4) and the identity headers (§3).
//!
//! Order as upstream `checkAuth`: session claims from the cookie first, then `Authorization`
//! (`Bearer` accepts an access token minted by this fake, `Basic` a configured user's app password).
//! Header auth success creates a new session and emits its `Set-Cookie`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{AUTHORIZATION, COOKIE, USER_AGENT};
use http::request::Parts;
use http::{HeaderName, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::handler::{append, append_cookies, empty, header_str, powered_by, Resp};
use super::jwt;
use super::session::{delete_cookie, set_cookie, unix_now, Claims, Session, StoreFull};
use super::{DemoUser, Inner, APP_SLUG, OUTPOST_NAME, PROVIDER_NAME};

/// What the request's session cookie refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieState {
    /// No `authentik_proxy_…` cookie.
    Absent,
    /// A cookie naming a live session (anonymous or authenticated).
    Known(String),
    /// A cookie naming no live session (signed out, expired, from another outpost).
    Unknown,
}

/// Result of the authentication check.
#[derive(Debug)]
pub struct Auth {
    /// The cookie's state.
    pub cookie: CookieState,
    /// The identity, if the session or a header authenticated the request.
    pub claims: Option<Claims>,
    /// `Set-Cookie` values to send with a success (header auth creates a session).
    pub set_cookies: Vec<String>,
}

/// Looks the request up by session cookie, then by `Authorization`.
pub fn check_auth(inner: &Inner, req: &Parts) -> Auth {
    let (cookie, session) = inner.cookie_state(req);
    if let Some(claims) = session
        .and_then(|s| s.claims)
        .filter(|c| c.exp > unix_now())
    {
        return Auth {
            cookie,
            claims: Some(claims),
            set_cookies: Vec::new(),
        };
    }
    let mut set_cookies = Vec::new();
    let claims = inner
        .header_auth(header_str(req, AUTHORIZATION.as_str()))
        .and_then(|claims| {
            let id = inner.store_claims(None, &claims)?;
            let max_age = claims.exp.saturating_sub(unix_now());
            set_cookies.push(set_cookie(
                &inner.cookie_name,
                &id,
                max_age,
                inner.is_secure(req),
            ));
            Some(claims)
        });
    Auth {
        cookie,
        claims,
        set_cookies,
    }
}

impl Inner {
    /// The request's session cookie and, when it names a live session, that session.
    pub(super) fn cookie_state(&self, req: &Parts) -> (CookieState, Option<Session>) {
        let value = req
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value.trim_matches('"').to_owned());
        match value {
            None => (CookieState::Absent, None),
            Some(id) => match self.sessions.get(&id) {
                Some(session) => (CookieState::Known(id), Some(session)),
                None => (CookieState::Unknown, None),
            },
        }
    }

    /// `external_host` from the config, else `<X-Forwarded-Proto or http>://<X-Forwarded-Host or Host>`.
    pub(super) fn external_host(&self, req: &Parts) -> String {
        if let Some(ext) = &self.cfg.external_host {
            return ext.trim_end_matches('/').to_owned();
        }
        let proto = match header_str(req, "x-forwarded-proto") {
            "" => "http",
            p => p,
        };
        let host = match header_str(req, "x-forwarded-host") {
            "" => header_str(req, "host"),
            h => h,
        };
        format!("{proto}://{host}")
    }

    /// Cookies get `Secure` iff the external host is https (research §5.2).
    pub(super) fn is_secure(&self, req: &Parts) -> bool {
        self.external_host(req).starts_with("https://")
    }

    /// Mints an anonymous session for a request without a live one; pushes a deletion cookie first when
    /// the request carried a stale cookie, then the new session's cookie. Callers answer `StoreFull`
    /// with an empty 400, as upstream answers a failed session save.
    pub(super) fn new_anonymous_session(
        &self,
        cookie: CookieState,
        secure: bool,
        cookies: &mut Vec<String>,
    ) -> Result<String, StoreFull> {
        // Anonymous sessions last the access-token validity + 1 s, as upstream's `Max-Age` at creation.
        let max_age = self.cfg.access_token_validity.as_secs().saturating_add(1);
        let id = self
            .sessions
            .create(std::time::Duration::from_secs(max_age))?;
        if cookie == CookieState::Unknown {
            cookies.push(delete_cookie(&self.cookie_name, secure));
        }
        cookies.push(set_cookie(&self.cookie_name, &id, max_age, secure));
        Ok(id)
    }

    /// Issuer of the fake's access tokens: `<authentik_host>/application/o/<app>/`.
    fn token_issuer(&self) -> String {
        format!("{}/application/o/{APP_SLUG}/", self.authentik_base)
    }

    /// Mints an access token and the claims for `user`, valid for `access_token_validity`.
    pub(super) fn claims_for(&self, user: &DemoUser) -> Claims {
        let now = unix_now();
        let exp = now.saturating_add(self.cfg.access_token_validity.as_secs());
        let sub: String = Sha256::digest(user.username.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let token = jwt::sign(
            &json!({
                "iss": self.token_issuer(), "sub": sub, "aud": self.cfg.client_id, "exp": exp, "iat": now,
                "preferred_username": user.username, "email": user.email, "name": user.name,
                "groups": user.groups, "entitlements": [],
            }),
            self.cfg.cookie_secret.as_bytes(),
        );
        Claims {
            username: user.username.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            groups: user.groups.clone(),
            entitlements: Vec::new(),
            sub,
            token,
            exp,
        }
    }

    /// Stores `claims` in session `id` (or a new one) until the token expires; returns the session ID.
    pub(super) fn store_claims(&self, id: Option<&str>, claims: &Claims) -> Option<String> {
        let id = id.map_or_else(super::session::new_session_id, str::to_owned);
        let session = Session {
            claims: Some(claims.clone()),
            redirect: None,
            expires_at: claims.exp,
        };
        self.sessions.put(&id, session).ok()?;
        Some(id)
    }

    /// Creates an authenticated session for `user`; returns its ID (the cookie value).
    pub(super) fn authenticated_session(&self, user: &DemoUser) -> Option<String> {
        self.store_claims(None, &self.claims_for(user))
    }

    /// `Bearer <access token of this fake>` or `Basic <user:app password>`.
    fn header_auth(&self, authorization: &str) -> Option<Claims> {
        let (scheme, credentials) = authorization.split_once(' ')?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let claims = jwt::verify(credentials, self.cfg.cookie_secret.as_bytes())?;
            let valid = claims.get("iss")?.as_str()? == self.token_issuer()
                && claims.get("exp")?.as_u64()? > unix_now();
            let user = self
                .user(Some(claims.get("preferred_username")?.as_str()?))
                .filter(|_| valid)?;
            let mut result = self.claims_for(&user);
            result.token = credentials.to_owned();
            result.exp = claims.get("exp")?.as_u64()?;
            return Some(result);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(credentials).ok()?).ok()?;
        let (username, password) = decoded.split_once(':')?;
        let user = self.user(Some(username))?;
        let matches: bool = user
            .app_password
            .as_bytes()
            .ct_eq(password.as_bytes())
            .into();
        (matches && !user.app_password.is_empty()).then(|| self.claims_for(&user))
    }

    /// The forward-auth 200: all 12 identity headers (empty values included), `User-Agent` echo,
    /// optional `X-Powered-By` (not for nginx) and any `Set-Cookie` from header auth.
    pub(super) fn identity_response(
        &self,
        req: &Parts,
        claims: &Claims,
        cookies: &[String],
        with_powered_by: bool,
    ) -> Resp {
        let mut resp = empty(StatusCode::OK);
        let jwks = format!("{}/application/o/{APP_SLUG}/jwks/", self.authentik_base);
        let version = format!("goauthentik.io/outpost/{}", self.cfg.version);
        let pairs: [(&'static str, &str); 12] = [
            ("x-authentik-username", &claims.username),
            ("x-authentik-groups", &claims.groups.join("|")),
            ("x-authentik-entitlements", &claims.entitlements.join("|")),
            ("x-authentik-email", &claims.email),
            ("x-authentik-name", &claims.name),
            ("x-authentik-uid", &claims.sub),
            ("x-authentik-jwt", &claims.token),
            ("x-authentik-meta-jwks", &jwks),
            ("x-authentik-meta-outpost", OUTPOST_NAME),
            ("x-authentik-meta-provider", PROVIDER_NAME),
            ("x-authentik-meta-app", APP_SLUG),
            ("x-authentik-meta-version", &version),
        ];
        for (name, value) in pairs {
            append(&mut resp, HeaderName::from_static(name), value);
        }
        append(&mut resp, USER_AGENT, header_str(req, USER_AGENT.as_str()));
        if with_powered_by {
            powered_by(&mut resp);
        }
        append_cookies(&mut resp, cookies);
        resp
    }
}
