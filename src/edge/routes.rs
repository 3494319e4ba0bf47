//! Host to route: the table built from `[[edge.route]]` once per config generation.
//!
//! Hosts are stored lower case without port. A request's `Host` (or HTTP/2 `:authority`) must
//! first pass [`ClientHost::parse`] (`name` or `name:digits`, anything else is a 400); its name
//! is then matched with one trailing dot removed, case ignored. Lookups do not allocate unless
//! the request's host has upper-case letters.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::HeaderValue;
use ipnet::IpNet;

use crate::auth::request::is_trusted;
use crate::config::{EdgeConfig, RouteAuth};

/// One route, ready for requests.
#[derive(Debug)]
pub struct Route {
    /// The host, lower case.
    pub host: String,
    /// `host` as a header value, for the backend's `Host` and `X-Forwarded-Host`.
    pub host_header: HeaderValue,
    /// Backend scheme (always `http`).
    pub scheme: Scheme,
    /// Backend `host:port`.
    pub authority: Authority,
    /// Who may pass.
    pub auth: RouteAuth,
    /// Client networks that pass without auth (only with `local-or-auth`).
    pub local_networks: Vec<IpNet>,
}

impl Route {
    /// Whether `client` may pass without authentication.
    pub fn is_local(&self, client: IpAddr) -> bool {
        self.auth == RouteAuth::LocalOrAuth && is_trusted(client, &self.local_networks)
    }
}

/// Every route by host.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_host: HashMap<String, Arc<Route>>,
}

impl RouteTable {
    /// Builds the table from a validated `[edge]` (hosts already unique and lower case).
    pub fn new(edge: &EdgeConfig) -> RouteTable {
        let by_host = edge
            .routes
            .iter()
            .map(|r| {
                let route = Route {
                    host: r.host.clone(),
                    // Config hosts are validated DNS names, so this never falls back.
                    host_header: HeaderValue::from_str(&r.host)
                        .unwrap_or(HeaderValue::from_static("invalid.invalid")),
                    scheme: r.backend.scheme().cloned().unwrap_or(Scheme::HTTP),
                    authority: r
                        .backend
                        .authority()
                        .cloned()
                        .unwrap_or(Authority::from_static("127.0.0.1")),
                    auth: r.auth,
                    local_networks: r.local_networks.clone(),
                };
                (r.host.clone(), Arc::new(route))
            })
            .collect();
        RouteTable { by_host }
    }

    /// The route for a checked host name (`Grafana.Home.Example` finds `grafana.home.example`);
    /// see [`ClientHost::parse`].
    pub fn find(&self, name: &str) -> Option<&Arc<Route>> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_host.get(&name.to_ascii_lowercase());
        }
        self.by_host.get(name)
    }

    /// Whether `name` (any case, no port) is a configured route host.
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }
}

/// A client's `Host` (or HTTP/2 `:authority`) that passed the syntax check: `name` or
/// `name:digits` (RFC 9110 section 7.2, RFC 3986 section 3.2.2), nothing else. No userinfo
/// (`app.example:1@evil.example`), no empty or non-numeric port, no second trailing dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHost<'a> {
    /// The name as sent (case kept), one trailing dot removed; `[::1]` for IPv6 literals.
    pub name: &'a str,
    /// The port, when the client sent one.
    pub port: Option<u16>,
}

impl<'a> ClientHost<'a> {
    /// Checks a `Host` value; `None` means malformed (the caller answers 400).
    pub fn parse(host: &'a str) -> Option<ClientHost<'a>> {
        let (name, port) = if host.starts_with('[') {
            let end = host.find(']')?;
            let (name, rest) = host.split_at(end + 1);
            let literal = &name[1..end];
            let ok = !literal.is_empty()
                && literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !ok {
                return None;
            }
            (name, rest)
        } else {
            let end = host.find(':').unwrap_or(host.len());
            let (name, rest) = host.split_at(end);
            let name = name.strip_suffix('.').unwrap_or(name);
            if !is_dns_name(name) {
                return None;
            }
            (name, rest)
        };
        let port = match port {
            "" => None,
            p => {
                let digits = p.strip_prefix(':')?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(digits.parse::<u16>().ok()?)
            }
        };
        Some(ClientHost { name, port })
    }

    /// Whether two hosts name the same thing (name case ignored).
    pub fn same(&self, other: &ClientHost<'_>) -> bool {
        self.port == other.port && self.name.eq_ignore_ascii_case(other.name)
    }
}

/// Letters, digits, `-` and `_` in non-empty dot-separated labels (`_` for internal names).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CertConfig, RouteConfig};

    fn table() -> RouteTable {
        let route = |host: &str, auth| RouteConfig {
            host: host.to_owned(),
            backend: "http://10.0.0.5:3000".parse().unwrap(),
            auth,
            local_networks: vec!["192.168.0.0/16".parse().unwrap()],
        };
        RouteTable::new(&EdgeConfig {
            listen_https: "0.0.0.0:443".parse().unwrap(),
            listen_http: None,
            certs: vec![CertConfig {
                cert: "c".into(),
                key: "k".into(),
            }],
            routes: vec![
                route("grafana.home.example", RouteAuth::Required),
                route("nas.home.example", RouteAuth::LocalOrAuth),
            ],
        })
    }

    fn find<'a>(t: &'a RouteTable, host: &str) -> Option<&'a Arc<Route>> {
        t.find(ClientHost::parse(host)?.name)
    }

    #[test]
    fn host_matches_without_port_case_or_trailing_dot() {
        let t = table();
        for host in [
            "grafana.home.example",
            "GRAFANA.home.Example:443",
            "grafana.home.example.",
            "grafana.home.example.:8443",
        ] {
            let route = find(&t, host).unwrap_or_else(|| panic!("{host}"));
            assert_eq!(route.host, "grafana.home.example");
            assert_eq!(route.authority.as_str(), "10.0.0.5:3000");
        }
        assert!(find(&t, "other.example").is_none());
        assert!(find(&t, "home.example").is_none());
        assert!(find(&t, "").is_none());
    }

    #[test]
    fn only_a_name_and_a_numeric_port_are_a_host() {
        for bad in [
            "grafana.home.example:1@evil.example",
            "grafana.home.example:evil",
            "grafana.home.example:",
            "grafana.home.example:443:443",
            "grafana.home.example:99999",
            "grafana.home.example..",
            "grafana..home.example",
            ".grafana.home.example",
            "user@grafana.home.example",
            "grafana.home.example/x",
            "grafana.home.example ",
            "[::1]x",
            "[]",
            "[::1",
            "",
        ] {
            assert_eq!(ClientHost::parse(bad), None, "{bad:?}");
        }
        let h = ClientHost::parse("Grafana.Home.Example.:8443").unwrap();
        assert_eq!((h.name, h.port), ("Grafana.Home.Example", Some(8443)));
        let h = ClientHost::parse("[::1]:443").unwrap();
        assert_eq!((h.name, h.port), ("[::1]", Some(443)));
        let h = ClientHost::parse("a_b.example").unwrap();
        assert_eq!((h.name, h.port), ("a_b.example", None));
        assert!(h.same(&ClientHost::parse("A_B.EXAMPLE").unwrap()));
        assert!(!h.same(&ClientHost::parse("a_b.example:1").unwrap()));
    }

    #[test]
    fn only_local_or_auth_routes_have_local_clients() {
        let t = table();
        let lan: IpAddr = "192.168.1.10".parse().unwrap();
        let wan: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(find(&t, "nas.home.example").unwrap().is_local(lan));
        assert!(!find(&t, "nas.home.example").unwrap().is_local(wan));
        // A required route ignores local_networks entirely.
        assert!(!find(&t, "grafana.home.example").unwrap().is_local(lan));
    }
}
