//! Header names and the rules about which headers may cross which leg.
//!
//! Every name the hot path sets is a `from_static` constant here. The family checks treat `-`,
//! `_` and `.` alike and ignore case, because backends (PHP, CGI/WSGI, nginx) fold those
//! spellings together; a client must not smuggle `X_authentik_groups` past a check that only knew
//! `X-authentik-groups` (Traefik CVE-2026-54763/88011, oauth2-proxy CVE-2025-64484).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `X-authentik-username`
pub const X_AUTHENTIK_USERNAME: HeaderName = HeaderName::from_static("x-authentik-username");
/// `X-authentik-jwt`
pub const X_AUTHENTIK_JWT: HeaderName = HeaderName::from_static("x-authentik-jwt");
/// `X-authentik-uid`
pub const X_AUTHENTIK_UID: HeaderName = HeaderName::from_static("x-authentik-uid");

/// The twelve identity headers the outpost always sends on an authenticated 200
/// (authentik `mode_common.go` `getHeaders`), in the order the docs list them.
///
/// A `static`, not a `const`: every use of a `const` array builds a temporary of twelve names and
/// drops it again, which on the answer-parsing path ran once per header field (perf: 3% of a
/// miss's own time).
pub static IDENTITY: [HeaderName; 12] = [
    X_AUTHENTIK_USERNAME,
    HeaderName::from_static("x-authentik-groups"),
    HeaderName::from_static("x-authentik-entitlements"),
    HeaderName::from_static("x-authentik-email"),
    HeaderName::from_static("x-authentik-name"),
    X_AUTHENTIK_UID,
    X_AUTHENTIK_JWT,
    HeaderName::from_static("x-authentik-meta-jwks"),
    HeaderName::from_static("x-authentik-meta-outpost"),
    HeaderName::from_static("x-authentik-meta-provider"),
    HeaderName::from_static("x-authentik-meta-app"),
    HeaderName::from_static("x-authentik-meta-version"),
];

/// Places in [`IDENTITY`] the pipeline reads by position: the username decides an allow, the
/// JWT's `exp` caps a cache entry's TTL, the uid finds a user's entries on sign-out.
pub const USERNAME_SLOT: usize = 0;
/// See [`USERNAME_SLOT`].
pub const UID_SLOT: usize = 5;
/// See [`USERNAME_SLOT`].
pub const JWT_SLOT: usize = 6;

/// `X-Forwarded-Proto`
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Uri`
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// `X-Forwarded-Method`
pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
/// `X-Forwarded-For`
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Original-URL` (nginx `auth_request` callers)
pub const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
/// `X-Auth-Fallback`: marks every answer of the emergency realm.
pub const X_AUTH_FALLBACK: HeaderName = HeaderName::from_static("x-auth-fallback");
/// `X-Powered-By`
pub const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

/// `true`
pub const TRUE: HeaderValue = HeaderValue::from_static("true");
/// The empty value the outpost sends for an identity field it has no value for.
pub const EMPTY: HeaderValue = HeaderValue::from_static("");

/// Hop-by-hop headers of RFC 9110 section 7.6.1 (plus the legacy `Keep-Alive` and
/// `Proxy-Connection`): never relayed between legs.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is hop-by-hop (the fixed list; names listed in `Connection` are checked by
/// [`strip_hop_by_hop`]).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Whether `name` starts with `prefix` when `-`, `_` and `.` count as one separator.
/// `prefix` is lower case with `-` separators and ends with `-`.
fn has_family_prefix(name: &str, prefix: &str) -> bool {
    name.len() > prefix.len() && folds_to(&name.as_bytes()[..prefix.len()], prefix)
}

/// Whether `name` is `canonical` (lower case) with any case and `_` or `.` for any dash.
fn folds_to(name: &[u8], canonical: &str) -> bool {
    name.len() == canonical.len()
        && name.iter().zip(canonical.bytes()).all(|(&n, c)| {
            let n = n.to_ascii_lowercase();
            n == c || (c == b'-' && (n == b'_' || n == b'.'))
        })
}

/// Whether `name` is `canonical` (lower case) in any spelling: `-`, `_` or `.` for each dash,
/// any case. Backends that fold `_` and `.` into `-` (CGI, PHP, WSGI) read them all alike.
pub fn is_spelling_of(name: &str, canonical: &str) -> bool {
    folds_to(name.as_bytes(), canonical)
}

/// Any spelling of `X-Auth-Fallback`: a backend would read it as the marker.
pub fn is_fallback_marker(name: &str) -> bool {
    is_spelling_of(name, X_AUTH_FALLBACK.as_str())
}

/// Any spelling of the `X-authentik-` family (`-`, `_`, `.`, any case).
pub fn is_authentik_family(name: &str) -> bool {
    has_family_prefix(name, "x-authentik-")
}

/// Any spelling of `X-Original-*` (`X-Original-URI`, `X_Original_URL`, ...).
pub fn is_original_family(name: &str) -> bool {
    has_family_prefix(name, "x-original-")
}

/// Any spelling of `X-Forwarded-*`.
pub fn is_forwarded_family(name: &str) -> bool {
    has_family_prefix(name, "x-forwarded-")
}

/// Headers a client may never pass to the outpost or an app, whoever it is: the identity family,
/// `X-Original-*`, RFC 7239 `Forwarded`, and non-canonical `X-Forwarded-*` spellings.
pub fn is_spoofable(name: &HeaderName) -> bool {
    let s = name.as_str();
    is_authentik_family(s)
        || is_original_family(s)
        || s == "forwarded"
        || (is_forwarded_family(s) && !s.starts_with("x-forwarded-"))
}

/// The comma-separated tokens of `Connection` field values (RFC 9110 section 7.6.1), trimmed.
pub fn connection_tokens<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> impl Iterator<Item = &'a [u8]> {
    values
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// The header names `Connection` lists: hop-by-hop too, whatever they are.
pub fn connection_listed<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<HeaderName> {
    connection_tokens(values)
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect()
}

/// Removes hop-by-hop headers, including every name listed in `Connection` (RFC 9110 7.6.1),
/// so a client cannot name a header in `Connection` to have it dropped after we set it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    for name in listed {
        headers.remove(name);
    }
    strip_fixed_hop_by_hop(headers);
}

/// Removes the fixed hop-by-hop fields only (never what a `Connection` lists). A message framed
/// by `Transfer-Encoding` loses its `Content-Length` with it: chunked framing overrides it, and
/// it must not travel on (RFC 9112 section 6.3).
pub fn strip_fixed_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_name_their_headers() {
        assert_eq!(IDENTITY[USERNAME_SLOT], X_AUTHENTIK_USERNAME);
        assert_eq!(IDENTITY[UID_SLOT], X_AUTHENTIK_UID);
        assert_eq!(IDENTITY[JWT_SLOT], X_AUTHENTIK_JWT);
    }

    #[test]
    fn authentik_family_matches_every_spelling() {
        for name in [
            "x-authentik-username",
            "X-Authentik-Groups",
            "x_authentik_groups",
            "X.AUTHENTIK.uid",
            "x-authentik_meta-app",
        ] {
            assert!(is_authentik_family(name), "{name}");
        }
        for name in [
            "x-authentik",
            "x-authenticity",
            "authentik-username",
            "x-auth",
        ] {
            assert!(!is_authentik_family(name), "{name}");
        }
    }

    #[test]
    fn spoofable_covers_original_forwarded_and_aliases() {
        for name in [
            "x-original-uri",
            "x-original-url",
            "x_original_uri",
            "forwarded",
            "x_forwarded_proto",
            "x.forwarded.host",
            "x-authentik-jwt",
        ] {
            assert!(
                is_spoofable(&HeaderName::from_bytes(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
        for name in ["x-forwarded-proto", "cookie", "authorization", "user-agent"] {
            assert!(
                !is_spoofable(&HeaderName::from_bytes(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
    }

    #[test]
    fn connection_listed_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-forwarded-for"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("cookie", HeaderValue::from_static("a=b"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-forwarded-for").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("cookie").unwrap(), "a=b");
    }
}
