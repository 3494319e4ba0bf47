//! In-memory session store and cookie formatting for the fake outpost.
//!
//! Sessions are keyed by a 52-character base32 ID from 32 random bytes, like the Go outpost's
//! `createState`. The cookie value is the raw ID (the shape of the embedded outpost's PostgreSQL store;
//! the filesystem store's securecookie signing is not emulated). The store is bounded
//! ([`MAX_SESSIONS`]); a full store is the "session store write fails" case, which callers answer with 400.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore as _;

/// Upper bound on stored sessions; anonymous visitors each create one, so this bounds memory.
pub const MAX_SESSIONS: usize = 100_000;

/// The identity stored in an authenticated session (the outpost's "claims").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `preferred_username`.
    pub username: String,
    /// `email`.
    pub email: String,
    /// `name`.
    pub name: String,
    /// `groups`.
    pub groups: Vec<String>,
    /// `entitlements` (always empty in the demo).
    pub entitlements: Vec<String>,
    /// `sub`: 64 hex characters, SHA-256 of the username (authentik's hashed-ID sub mode).
    pub sub: String,
    /// The raw access token sent as `X-authentik-jwt` (and as `id_token_hint` on sign-out).
    pub token: String,
    /// Token expiry, Unix seconds.
    pub exp: u64,
}

/// One outpost-side session: anonymous (only a pending login) or authenticated.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Present once the OAuth callback or header auth succeeded.
    pub claims: Option<Claims>,
    /// nginx mode stores the forwarded URL here (never read again, as upstream).
    pub redirect: Option<String>,
    /// When the session stops being valid, Unix seconds.
    pub expires_at: u64,
}

/// The bounded, thread-safe session map.
#[derive(Debug, Default)]
pub struct SessionStore {
    map: Mutex<HashMap<String, Session>>,
}

/// The store is full even after dropping expired sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFull;

impl SessionStore {
    /// The live session with this ID, if any; expired sessions are removed and reported as absent.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = lock(&self.map);
        let expired = map.get(id).is_some_and(|s| s.expires_at <= unix_now());
        if expired {
            map.remove(id);
            return None;
        }
        map.get(id).cloned()
    }

    /// Inserts or replaces a session.
    pub fn put(&self, id: &str, session: Session) -> Result<(), StoreFull> {
        let mut map = lock(&self.map);
        if !map.contains_key(id) && map.len() >= MAX_SESSIONS {
            let now = unix_now();
            map.retain(|_, s| s.expires_at > now);
            if map.len() >= MAX_SESSIONS {
                return Err(StoreFull);
            }
        }
        map.insert(id.to_owned(), session);
        Ok(())
    }

    /// Mints a new anonymous session valid for `validity` and returns its ID.
    pub fn create(&self, validity: Duration) -> Result<String, StoreFull> {
        let id = new_session_id();
        let session = Session {
            expires_at: unix_now().saturating_add(validity.as_secs()),
            ..Session::default()
        };
        self.put(&id, session)?;
        Ok(id)
    }

    /// Deletes every session whose claims have this `sub` (the outpost's outpost-wide logout).
    pub fn delete_user(&self, sub: &str) -> usize {
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|_, s| s.claims.as_ref().is_none_or(|c| c.sub != sub));
        before - map.len()
    }

    /// Number of stored sessions (expired ones included until touched).
    pub fn count(&self) -> usize {
        lock(&self.map).len()
    }
}

/// Locks a mutex, recovering from poisoning: the maps stay consistent because no code panics while
/// holding them, and a poisoned demo store is better than a fake that stops answering.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// 52-character base32 (RFC 4648 alphabet, no padding) of 32 random bytes.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base32_nopad(&bytes)
}

fn base32_nopad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `Set-Cookie` value as gorilla/Go writes it: `Path=/; Expires=…; Max-Age=…; HttpOnly; [Secure; ]SameSite=Lax`.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    let expires = http_date(unix_now().saturating_add(max_age));
    let secure = if secure { "Secure; " } else { "" };
    format!("{name}={value}; Path=/; Expires={expires}; Max-Age={max_age}; HttpOnly; {secure}SameSite=Lax")
}

/// The deletion cookie: empty value, `Max-Age=0`, `Expires` one second after the epoch.
pub fn delete_cookie(name: &str, secure: bool) -> String {
    let secure = if secure { "Secure; " } else { "" };
    format!(
        "{name}=; Path=/; Expires={}; Max-Age=0; HttpOnly; {secure}SameSite=Lax",
        http_date(1)
    )
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// IMF-fixdate (RFC 9110 §5.6.7), e.g. `Thu, 01 Jan 1970 00:00:01 GMT`.
pub fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01 (non-negative only).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_52_char_base32() {
        let id = new_session_id();
        assert_eq!(id.len(), 52);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(base32_nopad(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn http_dates_match_go() {
        assert_eq!(http_date(1), "Thu, 01 Jan 1970 00:00:01 GMT");
        assert_eq!(http_date(1_709_251_200), "Fri, 01 Mar 2024 00:00:00 GMT");
        assert!(delete_cookie("c", false).contains("Max-Age=0"));
    }

    #[test]
    fn delete_user_removes_only_that_users_sessions() {
        let store = SessionStore::default();
        let claims = |sub: &str| Claims {
            username: sub.into(),
            email: String::new(),
            name: String::new(),
            groups: vec![],
            entitlements: vec![],
            sub: sub.into(),
            token: String::new(),
            exp: 0,
        };
        for (id, sub) in [("a", "u1"), ("b", "u1"), ("c", "u2")] {
            let s = Session {
                claims: Some(claims(sub)),
                expires_at: unix_now() + 60,
                ..Session::default()
            };
            store.put(id, s).unwrap();
        }
        assert_eq!(store.delete_user("u1"), 2);
        assert!(store.get("a").is_none());
        assert!(store.get("c").is_some());
    }
}
