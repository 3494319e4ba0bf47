//! Development aids for `portcullis demo` and the integration tests. **Not for production.**
//!
//! [`outpost::FakeOutpost`] is an in-process stand-in for the authentik proxy outpost (and for the
//! bits of authentik it talks to), so portcullis can be exercised on loopback with nothing else
//! running. The default demo user is `akadmin` with app password `demo-app-password`:
//!
//! ```text
//! curl -u akadmin:demo-app-password -H 'X-Forwarded-Proto: http' -H 'X-Forwarded-Host: app.localhost' \
//!      -H 'X-Forwarded-Uri: /' http://127.0.0.1:PORT/outpost.goauthentik.io/auth/traefik
//! ```

pub mod control;
pub mod outpost;
pub mod run;
pub mod selftest;

/// The demo user's credentials, `(username, app password)`, accepted as `Authorization: Basic`.
pub fn demo_credentials() -> (&'static str, &'static str) {
    (outpost::DEMO_USERNAME, outpost::DEMO_APP_PASSWORD)
}
