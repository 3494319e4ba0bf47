//! Host to route: the table built from `[[edge.route]]` once per config generation.
//!
//! Hosts are stored lower case without port; a request's `Host` (or HTTP/2 `:authority`) is
//! matched the same way, port and one trailing dot removed, case ignored. Lookups do not
//! allocate unless the request's host has upper-case letters.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use ipnet::IpNet;

use crate::auth::request::is_trusted;
use crate::config::{EdgeConfig, RouteAuth};

/// One route, ready for requests.
#[derive(Debug)]
pub struct Route {
    /// The host, lower case.
    pub host: String,
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

    /// The route for a `Host` value (`Grafana.Home.Example:443` finds `grafana.home.example`).
    pub fn find(&self, host: &str) -> Option<&Arc<Route>> {
        let name = host_name(host);
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_host.get(&name.to_ascii_lowercase());
        }
        self.by_host.get(name)
    }

    /// Whether `host` (any case, with or without port) is a configured route host.
    pub fn contains(&self, host: &str) -> bool {
        self.find(host).is_some()
    }
}

/// A `Host` value without its port and trailing dot: `a.example:8443` -> `a.example`,
/// `[::1]:443` -> `[::1]`.
pub fn host_name(host: &str) -> &str {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.strip_suffix('.').unwrap_or(name)
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

    #[test]
    fn host_matches_without_port_case_or_trailing_dot() {
        let t = table();
        for host in [
            "grafana.home.example",
            "GRAFANA.home.Example:443",
            "grafana.home.example.",
            "grafana.home.example.:8443",
        ] {
            let route = t.find(host).unwrap_or_else(|| panic!("{host}"));
            assert_eq!(route.host, "grafana.home.example");
            assert_eq!(route.authority.as_str(), "10.0.0.5:3000");
        }
        assert!(t.find("other.example").is_none());
        assert!(t.find("home.example").is_none());
        assert!(t.find("").is_none());
    }

    #[test]
    fn host_name_strips_ports_of_ipv6_literals() {
        assert_eq!(host_name("[::1]:443"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("a:1"), "a");
    }

    #[test]
    fn only_local_or_auth_routes_have_local_clients() {
        let t = table();
        let lan: IpAddr = "192.168.1.10".parse().unwrap();
        let wan: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(t.find("nas.home.example").unwrap().is_local(lan));
        assert!(!t.find("nas.home.example").unwrap().is_local(wan));
        // A required route ignores local_networks entirely.
        assert!(!t.find("grafana.home.example").unwrap().is_local(lan));
    }
}
