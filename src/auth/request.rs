//! The caller's request as the forward-auth pipeline sees it: who is asking, and what they are
//! allowed to tell us.
//!
//! Invariant: `X-Forwarded-*` and `X-Original-URL` are read only from a peer inside
//! `server.trusted_proxies`; for anyone else they are rebuilt from the connection itself
//! (DESIGN.md section 2, security rule 3).

use std::net::IpAddr;

use http::header::{HeaderValue, AUTHORIZATION, COOKIE, HOST, USER_AGENT};
use http::request::Parts;
use ipnet::IpNet;

use crate::edge::routes::ClientHost;
use crate::error::ProxyError;

use super::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_METHOD, X_FORWARDED_PROTO, X_FORWARDED_URI,
    X_ORIGINAL_URL,
};

const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");
/// The prefix of every outpost cookie (authentik `application.go` `NewApplication`).
pub const SESSION_COOKIE_PREFIX: &str = "authentik_proxy_";

/// One request from a forward-auth caller, with the trust decision made once.
pub struct Caller<'a> {
    /// The request head.
    pub parts: &'a Parts,
    /// The TCP peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy.
    pub trusted: bool,
    /// Whether the connection to us is TLS.
    pub tls: bool,
}

impl std::fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the headers: they carry Cookie and Authorization.
        f.debug_struct("Caller")
            .field("method", &self.parts.method)
            .field("path", &self.parts.uri.path())
            .field("peer", &self.peer)
            .field("trusted", &self.trusted)
            .field("tls", &self.tls)
            .finish()
    }
}

impl<'a> Caller<'a> {
    /// Wraps a request head, deciding trust from the peer address.
    pub fn new(parts: &'a Parts, peer: IpAddr, trusted_proxies: &[IpNet], tls: bool) -> Self {
        let trusted = is_trusted(peer, trusted_proxies);
        Caller {
            parts,
            peer,
            trusted,
            tls,
        }
    }

    fn header(&self, name: &http::HeaderName) -> Option<&'a HeaderValue> {
        self.parts.headers.get(name)
    }

    fn trusted_header(&self, name: &http::HeaderName) -> Option<&'a HeaderValue> {
        if self.trusted {
            self.header(name).filter(|v| !v.is_empty())
        } else {
            None
        }
    }

    /// The host the protected request was for: a trusted `X-Forwarded-Host`, else `Host`
    /// (or the HTTP/2 authority).
    pub fn host(&self) -> Option<HeaderValue> {
        if let Some(v) = self.trusted_header(&X_FORWARDED_HOST) {
            return Some(v.clone());
        }
        if let Some(v) = self.header(&HOST) {
            return Some(v.clone());
        }
        let authority = self.parts.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    }

    /// The host to judge: on `/auth/nginx` (`nginx`) with a trusted `X-Original-URL`, that URL's
    /// host and port, and only when nginx routed the request to that same host name (its trusted
    /// `X-Forwarded-Host` if it sends one, else `Host`); `Err` when they differ or the URL names
    /// no usable host. nginx builds the URL from the client's `Host` line, but routes by the
    /// request line's host first (absolute-form) or falls to a default server: a client could
    /// otherwise have one app's session judged while nginx serves another app. Elsewhere
    /// [`Caller::host`].
    pub fn host_for(&self, nginx: bool) -> Result<Option<HeaderValue>, ProxyError> {
        let Some(url) = nginx.then(|| self.original_url()).flatten() else {
            return Ok(self.host());
        };
        let judged = url_host(url.as_bytes()).ok_or(ProxyError::BadHost)?;
        let routed = self.host().ok_or(ProxyError::BadHost)?;
        match same_host_name(&judged, &routed) {
            true => Ok(Some(judged)),
            false => Err(ProxyError::BadHost),
        }
    }

    /// The scheme of the protected request.
    pub fn proto(&self) -> HeaderValue {
        match self.trusted_header(&X_FORWARDED_PROTO) {
            Some(v) => v.clone(),
            None if self.tls => HTTPS,
            None => HTTP,
        }
    }

    /// Path and query of the protected request.
    pub fn uri(&self) -> HeaderValue {
        if let Some(v) = self.trusted_header(&X_FORWARDED_URI) {
            return v.clone();
        }
        let pq = self.parts.uri.path_and_query().map_or("/", |p| p.as_str());
        HeaderValue::from_str(pq).unwrap_or(HeaderValue::from_static("/"))
    }

    /// Method of the protected request.
    pub fn method(&self) -> HeaderValue {
        if let Some(v) = self.trusted_header(&X_FORWARDED_METHOD) {
            return v.clone();
        }
        HeaderValue::from_str(self.parts.method.as_str()).unwrap_or(HeaderValue::from_static("GET"))
    }

    /// `X-Forwarded-For` towards the outpost: a trusted chain as sent (every header line, joined
    /// in order, as RFC 9110 section 5.3 allows), else the peer.
    pub fn forwarded_for(&self) -> HeaderValue {
        if !self.trusted {
            return ip_header(self.peer);
        }
        let mut lines = self
            .parts
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter(|v| !v.is_empty());
        let Some(first) = lines.next() else {
            return ip_header(self.peer);
        };
        let Some(second) = lines.next() else {
            return first.clone();
        };
        let mut joined = first.as_bytes().to_vec();
        for line in std::iter::once(second).chain(lines) {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(line.as_bytes());
        }
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| ip_header(self.peer))
    }

    /// `X-Original-URL` from a trusted nginx; `None` for anyone else.
    pub fn original_url(&self) -> Option<&'a HeaderValue> {
        self.trusted_header(&X_ORIGINAL_URL)
    }

    /// The client address: the right-most address of a trusted `X-Forwarded-For` chain (all
    /// header lines) that is not itself a trusted proxy, else the peer. `None` when the chain has
    /// a hop that is not an address: the client is then unknown, never the proxy's address.
    pub fn client_ip(&self, trusted_proxies: &[IpNet]) -> Option<IpAddr> {
        if !self.trusted {
            return Some(self.peer);
        }
        let lines = self.parts.headers.get_all(&X_FORWARDED_FOR);
        let mut last = self.peer;
        let hops = lines
            .iter()
            .rev()
            .flat_map(|l| l.to_str().unwrap_or("?").rsplit(','));
        for hop in hops {
            let hop = hop.trim();
            if hop.is_empty() {
                continue;
            }
            let ip = parse_hop(hop)?;
            if !is_trusted(ip, trusted_proxies) {
                return Some(ip);
            }
            last = ip;
        }
        Some(last)
    }

    /// Every `Cookie` header value (HTTP/2 may split them).
    pub fn cookies(&self) -> http::header::GetAll<'a, HeaderValue> {
        self.parts.headers.get_all(COOKIE)
    }

    /// `Authorization`, if any.
    pub fn authorization(&self) -> Option<&'a HeaderValue> {
        self.header(&AUTHORIZATION)
    }

    /// `User-Agent`, if any.
    pub fn user_agent(&self) -> Option<&'a HeaderValue> {
        self.header(&USER_AGENT)
    }
}

/// The `host[:port]` of an absolute URL, read by hand so that what follows the authority (a raw
/// `<` in the query, bytes that are not UTF-8) cannot make it fail: after `scheme://`, up to the
/// first `/`, `?` or `#`, without any `user@` part, and only if it is a valid authority.
fn url_host(url: &[u8]) -> Option<HeaderValue> {
    let start = url.windows(3).position(|w| w == b"://")? + 3;
    let scheme = &url[..start - 3];
    if scheme.is_empty()
        || !scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
    {
        return None;
    }
    let rest = &url[start..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(authority, |at| &authority[at + 1..]);
    let parsed = http::uri::Authority::try_from(host).ok()?;
    if parsed.host().is_empty() {
        return None;
    }
    HeaderValue::from_bytes(host).ok()
}

/// Whether two `host[:port]` values name the same host: both valid hosts (the edge's own check,
/// [`ClientHost::parse`]: one trailing dot dropped, `[v6]` literals whole), names equal but for
/// ASCII case, ports ignored.
fn same_host_name(a: &HeaderValue, b: &HeaderValue) -> bool {
    fn name(h: &HeaderValue) -> Option<&str> {
        h.to_str().ok().and_then(ClientHost::parse).map(|h| h.name)
    }
    matches!((name(a), name(b)), (Some(x), Some(y)) if x.eq_ignore_ascii_case(y))
}

/// Whether `ip` lies in one of `nets` (IPv4-mapped IPv6 peers count as IPv4).
pub fn is_trusted(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// One `X-Forwarded-For` hop: `ip`, `ip:port` or `[v6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

fn ip_header(ip: IpAddr) -> HeaderValue {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Whether a forwarded URL carries the outpost's callback or logout signature
/// (`X-authentik-auth-callback=` / `X-authentik-logout=` in the query, any case, percent-encoded
/// or not). Such requests complete a login or logout inside the auth call: never cached.
pub fn has_outpost_signature(url: &[u8]) -> bool {
    let Some(q) = url.iter().position(|&b| b == b'?') else {
        return false;
    };
    contains_folded(
        &url[q + 1..],
        &[b"x-authentik-auth-callback", b"x-authentik-logout"],
    )
}

/// Whether the path of a forwarded URL (absolute, or path and query) has dot-segments (RFC 3986
/// section 5.2.4) or a backslash, literal or percent-encoded. The outpost matches skip paths on
/// the raw path while a backend may normalise it, so `/public/../admin` could be let through as
/// `/public` and served as `/admin` (peers.md section 4 item 3): such URLs are refused.
pub fn has_dot_segments(url: &[u8]) -> bool {
    path_has_dot_segments(url_path(url))
}

/// [`has_dot_segments`] of a bare path (no query): a decoded `/` separates segments too, so
/// `/public/..%2fadmin` counts.
pub fn path_has_dot_segments(path: &[u8]) -> bool {
    if !path.contains(&b'.') && !path.contains(&b'%') && !path.contains(&b'\\') {
        return false;
    }
    // Without an escape there is nothing to decode (dots, `;` and `\\` have no case).
    if !path.contains(&b'%') {
        return path.contains(&b'\\') || path.split(|&b| b == b'/').any(is_dot_segment);
    }
    let decoded = percent_decode_lower(path);
    decoded.contains(&b'\\') || decoded.split(|&b| b == b'/').any(is_dot_segment)
}

/// Whether one decoded path segment is `.` or `..` to some server: also with path parameters
/// (`..;x=1`: Tomcat and Spring drop them before resolving) or trailing blanks or NULs
/// (`..%20`, `..%00`: some servers trim them).
fn is_dot_segment(segment: &[u8]) -> bool {
    let name = segment.split(|&b| b == b';').next().unwrap_or(segment);
    let end = name
        .iter()
        .rposition(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c | 0))
        .map_or(0, |i| i + 1);
    matches!(&name[..end], b"." | b"..")
}

/// Whether a forwarded URL is a sign-out: its path is `/outpost.goauthentik.io/sign_out`, or its
/// query carries the logout signature.
pub fn is_sign_out(url: &[u8]) -> bool {
    let query = url
        .iter()
        .position(|&b| b == b'?')
        .map_or(&url[url.len()..], |q| &url[q + 1..]);
    contains_folded(url_path(url), &[b"/outpost.goauthentik.io/sign_out"])
        || contains_folded(query, &[b"x-authentik-logout"])
}

/// Whether a forwarded URL points under `/outpost.goauthentik.io/` itself (start, callback,
/// sign_out): never answered from or stored in the cache (DESIGN.md section 3).
pub fn is_outpost_path(url: &[u8]) -> bool {
    let path = url_path(url);
    path.len() >= OUTPOST_PREFIX.len()
        && path[..OUTPOST_PREFIX.len()].eq_ignore_ascii_case(OUTPOST_PREFIX)
}

/// The path of a forwarded URL (absolute, or path and query): no scheme, authority, query or
/// fragment.
fn url_path(url: &[u8]) -> &[u8] {
    // A path (origin form) is a path even when `://` appears in it (`/go/http://x/../y`).
    let absolute = url.first() != Some(&b'/');
    let path = match url
        .windows(3)
        .position(|w| w == b"://")
        .filter(|_| absolute)
    {
        Some(i) => {
            let rest = &url[i + 3..];
            rest.iter()
                .position(|&b| b == b'/')
                .map_or(&rest[rest.len()..], |p| &rest[p..])
        }
        None => url,
    };
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    &path[..end]
}

const OUTPOST_PREFIX: &[u8] = b"/outpost.goauthentik.io/";

/// Whether `hay`, lower-cased and percent-decoded, contains one of the lower-case `needles`.
/// Decoding (an allocation) happens only when `hay` holds an escape, which the hot path's
/// ordinary URLs do not.
fn contains_folded(hay: &[u8], needles: &[&[u8]]) -> bool {
    if hay.contains(&b'%') {
        let decoded = percent_decode_lower(hay);
        return needles
            .iter()
            .any(|n| decoded.windows(n.len()).any(|w| w == *n));
    }
    needles
        .iter()
        .any(|n| hay.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n)))
}

/// Lower-cased, percent-decoded copy (`+` left as is; a bad escape is kept verbatim).
fn percent_decode_lower(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' && i + 2 < input.len() {
            let hex = std::str::from_utf8(&input[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v.to_ascii_lowercase());
                i += 3;
                continue;
            }
        }
        out.push(b.to_ascii_lowercase());
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_host_reads_the_authority_whatever_follows_it() {
        let host = |u: &[u8]| url_host(u).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(
            host(b"https://admin.example/settings?x=<"),
            Some("admin.example".into())
        );
        assert_eq!(
            host(b"http://admin.example:8080/a`b"),
            Some("admin.example:8080".into())
        );
        assert_eq!(
            host(b"https://admin.example/\xff\xfe"),
            Some("admin.example".into())
        );
        assert_eq!(
            host(b"https://wiki.example@admin.example/"),
            Some("admin.example".into())
        );
        assert_eq!(host(b"https://[::1]:8443/x"), Some("[::1]:8443".into()));
        assert_eq!(
            host(b"https://admin.example?q"),
            Some("admin.example".into())
        );
        for none in [
            &b"/settings"[..],
            b"admin.example/x",
            b"https:///x",
            b"https://a b/",
            b"://x/",
        ] {
            assert_eq!(url_host(none), None, "{:?}", String::from_utf8_lossy(none));
        }
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri("/outpost.goauthentik.io/auth/traefik");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn untrusted_peer_cannot_set_forwarded_headers() {
        let p = parts(&[
            ("host", "app.example"),
            ("x-forwarded-host", "admin.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-uri", "/public"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let c = Caller::new(&p, "192.168.1.5".parse().unwrap(), &nets, false);
        assert_eq!(c.host().unwrap(), "app.example");
        assert_eq!(c.proto(), "http");
        assert_eq!(c.uri(), "/outpost.goauthentik.io/auth/traefik");
        assert_eq!(c.forwarded_for(), "192.168.1.5");
        let t = Caller::new(&p, "10.1.2.3".parse().unwrap(), &nets, false);
        assert_eq!(t.host().unwrap(), "admin.example");
        assert_eq!(t.proto(), "https");
        assert_eq!(t.uri(), "/public");
        assert_eq!(t.forwarded_for(), "1.2.3.4");
    }

    #[test]
    fn client_ip_is_rightmost_untrusted_hop() {
        let p = parts(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.0.0.3")]);
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let c = Caller::new(&p, "10.0.0.2".parse().unwrap(), &nets, false);
        assert_eq!(c.client_ip(&nets), Some("198.51.100.7".parse().unwrap()));
        let u = Caller::new(&p, "192.0.2.1".parse().unwrap(), &nets, false);
        assert_eq!(u.client_ip(&nets), Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn every_forwarded_for_line_counts_and_garbage_makes_the_client_unknown() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut b = http::Request::builder();
        b = b.header("x-forwarded-for", "10.9.9.9");
        b = b.header("x-forwarded-for", "203.0.113.5:4711");
        let p = b.body(()).unwrap().into_parts().0;
        let c = Caller::new(&p, "10.0.0.2".parse().unwrap(), &nets, false);
        assert_eq!(c.client_ip(&nets), Some("203.0.113.5".parse().unwrap()));
        assert_eq!(c.forwarded_for(), "10.9.9.9, 203.0.113.5:4711");
        let p = parts(&[("x-forwarded-for", "203.0.113.5, not-an-ip")]);
        let c = Caller::new(&p, "10.0.0.2".parse().unwrap(), &nets, false);
        assert_eq!(c.client_ip(&nets), None);
    }

    #[test]
    fn sign_out_and_outpost_paths_are_told_apart_from_lookalikes() {
        assert!(is_sign_out(b"/outpost.goauthentik.io/sign_out"));
        assert!(is_sign_out(
            b"https://app.example/outpost.goauthentik.io/sign_out?x=1"
        ));
        assert!(is_sign_out(b"/app?X-authentik-logout=true"));
        assert!(!is_sign_out(b"/app?X-authentik-auth-callback=true"));
        assert!(!is_sign_out(b"/x-authentik-logout/page"));
        assert!(is_outpost_path(b"/outpost.goauthentik.io/start?rd=x"));
        assert!(is_outpost_path(
            b"https://app.example/Outpost.goauthentik.io/callback"
        ));
        assert!(!is_outpost_path(b"/app/outpost.goauthentik.io/start"));
        assert!(!is_outpost_path(
            b"/dashboard?next=/outpost.goauthentik.io/start"
        ));
    }

    #[test]
    fn dot_segments_are_found_literal_or_encoded() {
        for url in [
            &b"/public/../admin"[..],
            b"/public/%2e%2e/admin",
            b"/public/%2E./admin",
            b"/a/./b",
            b"https://app.example/public/../admin?x=1",
            b"/public\\..\\admin",
            b"/public%5cadmin",
            b"/..",
            // Path parameters and trailing blanks some servers drop before resolving.
            b"/public/..;/admin",
            b"/public/..;x=1/admin",
            b"/public/.;/admin",
            b"/public/..%3b/admin",
            b"/public/%2e%2e;/admin",
            b"/public/..%00/admin",
            b"/public/..%20/admin",
            // `://` inside a path does not make it an absolute URL.
            b"/public/../admin/http://x/y",
        ] {
            assert!(has_dot_segments(url), "{}", String::from_utf8_lossy(url));
        }
        for url in [
            &b"/public/page"[..],
            b"/a.b/c..d/.e",
            b"/group%2Fproject/-/tree",
            b"https://app.example/x?path=../y",
            b"/",
            b"/a/..x;/b",
            b"/a/x..;/b",
            b"/a/...;/b",
        ] {
            assert!(!has_dot_segments(url), "{}", String::from_utf8_lossy(url));
        }
    }

    #[test]
    fn signatures_are_found_in_any_spelling() {
        assert!(has_outpost_signature(
            b"/x?X-authentik-auth-callback=true&code=1"
        ));
        assert!(has_outpost_signature(b"/x?a=1&x-AUTHENTIK-logout=true"));
        assert!(has_outpost_signature(b"/x?X%2Dauthentik%2Dlogout=true"));
        assert!(!has_outpost_signature(b"/X-authentik-logout/page"));
        assert!(!has_outpost_signature(b"/app?q=1"));
        assert!(is_sign_out(b"/outpost.goauthentik.io/sign_out"));
    }
}
