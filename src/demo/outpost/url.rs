//! URL plumbing for the fake outpost: the forwarded URL, query parsing and Go-compatible form encoding.
//!
//! Deliberately small: the outpost only needs "scheme://host/path?query" splitting, `url.Values`-style
//! decoding (`+` is a space) and `url.QueryEscape`-style encoding. Nothing here panics on input; invalid
//! percent escapes are kept verbatim.

use std::fmt;

/// The URL the outpost judges: what Traefik/Caddy/Envoy/nginx say the client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardUrl {
    /// `http`/`https`, or empty for scheme-relative (Envoy) and path-only (nginx `X-Original-URI`) URLs.
    pub scheme: String,
    /// Host with port as sent, or empty for a path-only URL.
    pub host: String,
    /// Raw (still percent-encoded) path.
    pub path: String,
    /// Raw query without the `?`, if any.
    pub query: Option<String>,
}

impl ForwardUrl {
    /// Parses an absolute URL `scheme://host/path?query` (fragment dropped).
    /// Returns `None` when the scheme or host is missing, as Go's `url.Parse` rejects `://host/x`.
    pub fn parse_absolute(s: &str) -> Option<ForwardUrl> {
        let (scheme, rest) = s.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return None;
        }
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (host, tail) = rest.split_at(host_end);
        if host.is_empty() {
            return None;
        }
        let mut url = ForwardUrl::parse_path(tail);
        url.scheme = scheme.to_ascii_lowercase();
        url.host = host.to_owned();
        Some(url)
    }

    /// Parses a path with an optional query (`/a/b?c=d`), as in `X-Forwarded-Uri` or `X-Original-URI`.
    pub fn parse_path(s: &str) -> ForwardUrl {
        let s = s.split('#').next().unwrap_or_default();
        let (path, query) = match s.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (s, None),
        };
        ForwardUrl {
            path: path.to_owned(),
            query,
            ..ForwardUrl::default()
        }
    }

    /// The percent-decoded path, which is what the outpost matches skip paths against.
    pub fn decoded_path(&self) -> String {
        percent_decode(&self.path, false)
    }
}

impl fmt::Display for ForwardUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.scheme.is_empty() {
            write!(f, "{}:", self.scheme)?;
        }
        if !self.host.is_empty() {
            write!(f, "//{}", self.host)?;
        }
        f.write_str(&self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// Decoded value of the first `key` in a raw query string (`a=1&b=2`), `+` read as a space.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| percent_decode(k, true) == key)
        .map(|(_, v)| percent_decode(v, true))
}

/// True when the query carries `key=true` (value compared case-insensitively, as the outpost does).
pub fn has_signature(query: Option<&str>, key: &str) -> bool {
    query
        .and_then(|q| query_param(q, key))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Percent-decodes `s`; with `plus_is_space`, `+` becomes a space (form encoding).
/// Invalid escapes and invalid UTF-8 are kept (lossily), never an error.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) if plus_is_space => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go `url.QueryEscape`: unreserved bytes kept, space as `+`, everything else `%XX`.
pub fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Encodes pairs Go `url.Values.Encode` style: keys sorted, `k=v` joined with `&`.
pub fn encode_sorted(pairs: &[(&str, &str)]) -> String {
    let mut sorted: Vec<_> = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted
        .iter()
        .map(|(k, v)| format!("{}={}", form_escape(k), form_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Minimal HTML escaping for the `<a href="…">Found</a>.` body Go's `http.Redirect` writes.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_url_without_scheme_or_host_is_rejected() {
        assert!(ForwardUrl::parse_absolute("://app/x").is_none());
        assert!(ForwardUrl::parse_absolute("http:///x").is_none());
        let u = ForwardUrl::parse_absolute("https://app:8443/a%20b?x=1#frag").unwrap();
        assert_eq!(u.host, "app:8443");
        assert_eq!(u.decoded_path(), "/a b");
        assert_eq!(u.to_string(), "https://app:8443/a%20b?x=1");
    }

    #[test]
    fn scheme_relative_url_renders_like_envoy() {
        let mut u = ForwardUrl::parse_path("/p?q=1");
        u.host = "app".into();
        assert_eq!(u.to_string(), "//app/p?q=1");
    }

    #[test]
    fn query_and_form_encoding_round_trip() {
        let enc = encode_sorted(&[("state", "a b&c"), ("client_id", "x/y")]);
        assert_eq!(enc, "client_id=x%2Fy&state=a+b%26c");
        assert_eq!(query_param(&enc, "state").as_deref(), Some("a b&c"));
        assert!(has_signature(
            Some("X-authentik-auth-callback=TRUE"),
            "X-authentik-auth-callback"
        ));
        assert!(!has_signature(
            Some("X-authentik-logout=no"),
            "X-authentik-logout"
        ));
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
    }
}
