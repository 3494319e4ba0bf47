//! Unit tests of `Config::from_toml` and `Config::load`: defaults, every rule, and the exact
//! `FILE:LINE: KEY: problem` lines the `check` command prints.

use super::*;

const MINIMAL: &str = "[outpost]\nurl = \"http://127.0.0.1:9000\"\n";

/// DESIGN.md section 6, without `[edge]`.
const DESIGN_EXAMPLE: &str = r#"[server]
listen = "0.0.0.0:9000"
admin_listen = "127.0.0.1:9090"
trusted_proxies = ["10.0.0.0/8", "127.0.0.0/8"]
max_header_bytes = 524288          # 30+ authentik_proxy_* cookies must fit
header_read_timeout = "10s"
shutdown_delay = "5s"
drain_timeout = "30s"
workers = 0                        # async worker threads; 0 = one per CPU the process may run on

[outpost]
url = "http://ak-outpost-authentik-embedded-outpost.authentik.svc:9000"
connect_timeout = "3s"
timeout = "5s"
pool_max_idle = 256                # idle connections kept
pool_idle_timeout = "90s"          # below the outpost's 120 s idle timeout

[cache]
ttl = "10s"
capacity = 100000

[fallback]
enabled = true
realm = "Emergency Access"
htpasswd_file = "/etc/portcullis/htpasswd"
trip_after = 3
probe_interval = "2s"
verified_ttl = "5m"

[log]
level = "info"
format = "json"                    # or "text"
"#;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The problems of `text` as printed lines, file name `f.toml`.
fn problems(text: &str) -> Vec<String> {
    let errors = Config::from_toml(text, "f.toml").unwrap_err();
    errors.to_string().lines().map(str::to_owned).collect()
}

/// The problems of `[outpost] url` plus `extra` appended (which starts on line 3).
fn problems_with(extra: &str) -> Vec<String> {
    problems(&format!("{MINIMAL}{extra}"))
}

#[test]
fn design_example_parses_to_its_values() {
    let c = Config::from_toml(DESIGN_EXAMPLE, "design.toml").unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(c.server.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(
        c.server.trusted_proxies,
        vec![net("10.0.0.0/8"), net("127.0.0.0/8")]
    );
    assert_eq!(c.server.max_header_bytes, 524_288);
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.server.shutdown_delay, Duration::from_secs(5));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.server.workers, 0);
    let url = &c.outpost.url;
    assert_eq!(
        url.host(),
        Some("ak-outpost-authentik-embedded-outpost.authentik.svc")
    );
    assert_eq!(url.port_u16(), Some(9000));
    assert_eq!(c.outpost.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.outpost.timeout, Duration::from_secs(5));
    assert_eq!(c.outpost.pool_max_idle, 256);
    assert_eq!(c.outpost.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(
        c.cache,
        CacheConfig {
            ttl: Duration::from_secs(10),
            capacity: 100_000
        }
    );
    assert!(c.fallback.enabled);
    assert_eq!(c.fallback.realm, "Emergency Access");
    assert_eq!(
        c.fallback.htpasswd_file,
        PathBuf::from("/etc/portcullis/htpasswd")
    );
    assert_eq!(c.fallback.trip_after, 3);
    assert_eq!(c.fallback.probe_interval, Duration::from_secs(2));
    assert_eq!(c.fallback.verified_ttl, Duration::from_secs(300));
    assert_eq!(
        c.log,
        LogConfig {
            level: "info".into(),
            format: LogFormat::Json
        }
    );
}

#[test]
fn non_default_values_are_read() {
    let text = "[server]\nlisten = \"[::]:8000\"\nworkers = 4\n[cache]\nttl = \"0s\"\n\
                [fallback]\nenabled = false\nverified_ttl = \"0s\"\nmax_failures_per_user = 7\n\
                max_failures_per_address = 20\nfailure_window = \"1h\"\n[log]\nformat = \"text\"\n\
                level = \"portcullis=debug,info\"\n";
    let c = Config::from_toml(&format!("{text}{MINIMAL}"), "f.toml").unwrap();
    assert_eq!(c.server.listen, "[::]:8000".parse().unwrap());
    assert_eq!(c.server.workers, 4);
    assert_eq!(c.cache.ttl, Duration::ZERO);
    assert!(!c.fallback.enabled);
    assert_eq!(c.fallback.verified_ttl, Duration::ZERO);
    assert_eq!(c.fallback.max_failures_per_user, 7);
    assert_eq!(c.fallback.max_failures_per_address, 20);
    assert_eq!(c.fallback.failure_window, Duration::from_secs(3600));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "portcullis=debug,info");
}

#[test]
fn only_outpost_url_gives_every_default() {
    let c = Config::from_toml(MINIMAL, "f.toml").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.server.admin_listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
    let cluster: Vec<ipnet::IpNet> = vec![
        "10.0.0.0/8".parse().unwrap(),
        "127.0.0.0/8".parse().unwrap(),
    ];
    assert_eq!(c.server.trusted_proxies, cluster);
    assert_eq!(c.server.max_header_bytes, 512 * 1024);
    assert_eq!(c.outpost.url, "http://127.0.0.1:9000");
    assert_eq!(c.cache.ttl, Duration::from_secs(10));
    assert_eq!(c.fallback.failure_window, Duration::from_secs(900));
    assert_eq!(c.fallback.max_failures_per_user, 5);
    assert_eq!(c.fallback.max_failures_per_address, 10);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "info");
}

#[test]
fn inline_section_tables_are_read() {
    let c = Config::from_toml(
        "outpost = { url = \"http://a:1\", timeout = \"9s\" }\n",
        "f",
    )
    .unwrap();
    assert_eq!(c.outpost.url, "http://a:1/");
    assert_eq!(c.outpost.timeout, Duration::from_secs(9));
}

#[test]
fn empty_file_misses_outpost_url_on_line_1() {
    assert_eq!(problems(""), ["f.toml:1: outpost.url: missing (required)"]);
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let text = "[server]\n\
                listen = \"nowhere\"\n\
                workers = 2000\n\
                \n\
                [outpost]\n\
                url = \"http://a:9000\"\n\
                timeout = 5\n\
                [cache]\n\
                ttl = \"10 parsecs\"\n\
                capacity = \"lots\"\n\
                [log]\n\
                format = \"xml\"\n";
    assert_eq!(
        problems(text),
        [
            "f.toml:2: server.listen: \"nowhere\" is not IP:port (e.g. \"0.0.0.0:9000\" or \"[::]:9000\")",
            "f.toml:3: server.workers: 2000 is out of range 0..=1024",
            "f.toml:7: outpost.timeout: expected a duration like \"10s\"",
            "f.toml:9: cache.ttl: expected a duration like \"10s\"",
            "f.toml:10: cache.capacity: expected an integer",
            "f.toml:12: log.format: \"xml\" is not \"json\" or \"text\"",
        ]
    );
}

#[test]
fn unknown_key_is_reported_with_a_suggestion() {
    assert_eq!(
        problems_with("[cache]\nttl = \"1s\"\ncapacty = 10\ncolour = \"red\"\n"),
        [
            "f.toml:5: cache.capacty: unknown key; did you mean \"capacity\"?",
            "f.toml:6: cache.colour: unknown key",
        ]
    );
}

#[test]
fn unknown_sections_are_reported() {
    assert_eq!(
        problems_with("[cahce]\nttl = \"1s\"\n[egde]\n"),
        [
            "f.toml:3: cahce: unknown section; did you mean \"cache\"?",
            "f.toml:5: egde: unknown section; did you mean \"edge\"?",
        ]
    );
    assert_eq!(
        problems_with("[cache.sub]\n"),
        ["f.toml:3: cache.sub: unknown key"]
    );
    let top_level = format!("log = \"info\"\n{MINIMAL}");
    assert_eq!(problems(&top_level), ["f.toml:1: log: expected a table"]);
    // After a header, a bare key belongs to that section.
    assert_eq!(
        problems_with("log = \"info\"\n"),
        ["f.toml:3: outpost.log: unknown key"]
    );
}

#[test]
fn syntax_error_is_one_problem_on_its_line() {
    let lines = problems("[server]\nlisten = \"0.0.0.0:9000\"\nworkers = = 3\n");
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("f.toml:3: server.workers: "),
        "{}",
        lines[0]
    );
}

#[test]
fn syntax_errors_name_the_key_or_table_written_on_their_line() {
    let first = |text: &str| problems(text).remove(0);
    let dup = first("[outpost]\nurl = \"http://a:1\"\n[cache]\nttl = \"1s\"\nttl = \"2s\"\n");
    assert!(dup.starts_with("f.toml:5: cache.ttl: "), "{dup}");
    let cert = "[[edge.cert]]\ncert = \"a\"\n[[edge.cert]]\ncert = \"b\nkey = 1\n";
    assert!(
        first(cert).starts_with("f.toml:4: edge.cert[1].cert: "),
        "{}",
        first(cert)
    );
    let header = first("[outpost]\nurl = \"http://a:1\"\n[cache\n");
    assert!(header.starts_with("f.toml:3: cache: "), "{header}");
    assert!(first("= 3\n").starts_with("f.toml:1: toml: "));
    // Text that is no key of this format is never repeated as one (it may be a pasted secret).
    let pasted = first("[cache]\nttl = \"1s\"\nQUJDREVGR0g = = 3\n");
    assert!(
        pasted.starts_with("f.toml:3: cache: ") && !pasted.contains("QUJD"),
        "{pasted}"
    );
}

#[test]
fn duration_rules() {
    assert_eq!(
        problems_with("[server]\nheader_read_timeout = \"0s\"\nshutdown_delay = \"0s\"\ndrain_timeout = \"2days\"\n"),
        [
            "f.toml:4: server.header_read_timeout: must be greater than 0s",
            "f.toml:6: server.drain_timeout: must be at most 1day",
        ]
    );
    assert_eq!(
        problems_with("[fallback]\nprobe_interval = 2\n"),
        ["f.toml:4: fallback.probe_interval: expected a duration like \"10s\""]
    );
    let c = Config::from_toml(
        &format!("{MINIMAL}[server]\nheader_read_timeout = \"500ms\"\n"),
        "f",
    )
    .unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_millis(500));
}

#[test]
fn connect_timeout_must_not_exceed_timeout() {
    assert_eq!(
        problems("[outpost]\nurl = \"http://a\"\nconnect_timeout = \"6s\"\n"),
        ["f.toml:3: outpost.connect_timeout: must not exceed outpost.timeout (5s)"]
    );
}

#[test]
fn outpost_url_rules() {
    let cases = [
        (
            "https://a:9443",
            "https to the outpost is not supported yet; use http",
        ),
        ("ftp://a", "scheme \"ftp\" is not supported; use http"),
        (
            "a:9000",
            "\"a:9000\" is not a URL like \"http://host:9000\"",
        ),
        ("http://:9000", "must have a host"),
        ("http://a:9000/outpost", "must not have a path (only \"/\")"),
        ("http://a:9000/?x=1", "must not have a query"),
        ("http://a:9000/#top", "must not have a fragment"),
        (
            "http://user:pw@a:9000",
            "must not contain user info (secrets are never inline)",
        ),
        (
            "http://a:99999",
            "port \"99999\" is not a TCP port (1-65535)",
        ),
        ("http://a:0", "port \"0\" is not a TCP port (1-65535)"),
        ("http://a:", "port \"\" is not a TCP port (1-65535)"),
        (
            "http://[::1]:65536",
            "port \"65536\" is not a TCP port (1-65535)",
        ),
    ];
    for (url, problem) in cases {
        let text = format!("[outpost]\nurl = \"{url}\"\n");
        assert_eq!(
            problems(&text),
            [format!("f.toml:2: outpost.url: {problem}")],
            "{url}"
        );
    }
    assert_eq!(
        problems("[outpost]\nurl = 9000\n"),
        ["f.toml:2: outpost.url: expected a string"]
    );
    let c = Config::from_toml("[outpost]\nurl = \"http://outpost/\"\n", "f").unwrap();
    assert_eq!(c.outpost.url.host(), Some("outpost"));
    assert_eq!(c.outpost.url.port_u16(), None);
    let c = Config::from_toml("[outpost]\nurl = \"http://[::1]:65535\"\n", "f").unwrap();
    assert_eq!(c.outpost.url.port_u16(), Some(65535));
}

#[test]
fn trusted_proxies_accept_bare_ips_and_truncate() {
    let text = format!(
        "{MINIMAL}[server]\ntrusted_proxies = [\"10.1.2.3\", \"::1\", \"192.168.7.9/16\"]\n"
    );
    let c = Config::from_toml(&text, "f").unwrap();
    let want = vec![net("10.1.2.3/32"), net("::1/128"), net("192.168.0.0/16")];
    assert_eq!(c.server.trusted_proxies, want);
}

#[test]
fn trusted_proxies_problems_name_each_entry_line() {
    assert_eq!(
        problems_with("[server]\ntrusted_proxies = [\n  \"10.0.0.0/8\",\n  \"10.0.0.300\",\n]\n"),
        ["f.toml:6: server.trusted_proxies: \"10.0.0.300\" is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address"]
    );
    assert_eq!(
        problems_with("[server]\ntrusted_proxies = \"10.0.0.0/8\"\n"),
        ["f.toml:4: server.trusted_proxies: expected an array of strings"]
    );
}

#[test]
fn listeners_must_differ() {
    assert_eq!(
        problems_with("[server]\nlisten = \"0.0.0.0:9090\"\n"),
        ["f.toml:4: server.listen: server.listen and server.admin_listen must be different addresses"]
    );
    assert_eq!(
        problems_with("[server]\nadmin_listen = \"0.0.0.0:9000\"\n"),
        ["f.toml:4: server.admin_listen: server.listen and server.admin_listen must be different addresses"]
    );
}

#[test]
fn integer_ranges_and_types() {
    assert_eq!(
        problems_with("[server]\nmax_header_bytes = 1024\n[fallback]\ntrip_after = 0\nenabled = \"yes\"\n[cache]\ncapacity = 1.5\n"),
        [
            "f.toml:4: server.max_header_bytes: 1024 is out of range 8192..=16777216",
            "f.toml:6: fallback.trip_after: 0 is out of range 1..=1000",
            "f.toml:7: fallback.enabled: expected true or false",
            "f.toml:9: cache.capacity: expected an integer",
        ]
    );
}

#[test]
fn realm_and_htpasswd_rules() {
    assert_eq!(
        problems_with("[fallback]\nrealm = \"say \\\"hi\\\"\"\nhtpasswd_file = \"\"\n"),
        [
            "f.toml:4: fallback.realm: must be printable ASCII without '\"' or '\\' (it goes into a WWW-Authenticate header)",
            "f.toml:5: fallback.htpasswd_file: must not be empty",
        ]
    );
    assert_eq!(
        problems_with("[fallback]\nrealm = \"\"\n"),
        ["f.toml:4: fallback.realm: must not be empty"]
    );
}

#[test]
fn log_level_must_be_a_filter() {
    let lines = problems_with("[log]\nlevel = \"bogus=[\"\n");
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("f.toml:4: log.level: not a log filter like \"info\": "),
        "{}",
        lines[0]
    );
}

#[test]
fn default_listen_consts_agree() {
    assert_eq!(
        DEFAULT_LISTEN.parse::<SocketAddr>().unwrap(),
        DEFAULT_LISTEN_ADDR
    );
    assert_eq!(
        DEFAULT_ADMIN_LISTEN.parse::<SocketAddr>().unwrap(),
        DEFAULT_ADMIN_LISTEN_ADDR
    );
}

#[test]
fn example_file_parses_without_problems() {
    let c = Config::from_toml(include_str!("../../config/example.toml"), "example.toml").unwrap();
    assert_eq!(
        c.fallback.htpasswd_file,
        PathBuf::from("/etc/portcullis/htpasswd")
    );
    assert_eq!(c.fallback.failure_window, DEFAULT_FAILURE_WINDOW);
    assert_eq!(
        c.server.trusted_proxies,
        vec![net("10.0.0.0/8"), net("127.0.0.0/8")]
    );
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let path = std::env::temp_dir().join(format!("portcullis-config-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[outpost]\nurl = \"http://a:1\"\n[cache]\nttl = \"x\"\n",
    )
    .unwrap();
    let errors = Config::load(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let file = path.display().to_string();
    assert_eq!(
        errors.to_string(),
        format!("{file}:4: cache.ttl: expected a duration like \"10s\"")
    );
    let missing = Path::new("/nonexistent/portcullis.toml");
    assert_eq!(
        Config::load(missing).unwrap_err().to_string(),
        "/nonexistent/portcullis.toml:1: config: cannot read file: No such file or directory (os error 2)"
    );
}

#[test]
fn single_displays_one_line() {
    let e = ConfigErrors::single("a.toml", 7, "cache.ttl", "bad");
    assert_eq!(e.to_string(), "a.toml:7: cache.ttl: bad");
}

#[test]
fn dotted_keys_at_top_level_are_read_and_located() {
    let text = format!("server.workers = 5000\ncache.ttl = \"1m\"\n{MINIMAL}");
    assert_eq!(
        problems(&text),
        ["f.toml:1: server.workers: 5000 is out of range 0..=1024"]
    );
    let c = Config::from_toml(&format!("cache.ttl = \"1m\"\n{MINIMAL}"), "f").unwrap();
    assert_eq!(c.cache.ttl, Duration::from_secs(60));
}

/// DESIGN.md section 6's `[edge]`, plus a second route of each other kind.
const EDGE: &str = r#"[edge]
listen_https = "0.0.0.0:443"
listen_http = "0.0.0.0:80"
[[edge.cert]]
cert = "/etc/portcullis/tls/home.pem"
key = "/etc/portcullis/tls/home.key"
[[edge.route]]
host = "Grafana.Home.Example"
backend = "http://10.0.0.5:3000"
auth = "required"
[[edge.route]]
host = "public.home.example"
backend = "http://10.0.0.6:80"
auth = "none"
[[edge.route]]
host = "nas.home.example"
backend = "http://10.0.0.7:5000"
auth = "local-or-auth"
local_networks = ["192.168.0.0/16", "10.1.2.3"]
"#;

#[test]
fn no_edge_section_means_no_edge_mode() {
    assert_eq!(Config::from_toml(MINIMAL, "f").unwrap().edge, None);
    assert_eq!(Config::default().edge, None);
}

#[test]
fn edge_section_parses_to_typed_routes() {
    let c = Config::from_toml(&format!("{MINIMAL}{EDGE}"), "f").unwrap();
    let edge = c.edge.unwrap();
    assert_eq!(edge.listen_https, "0.0.0.0:443".parse().unwrap());
    assert_eq!(edge.listen_http, Some("0.0.0.0:80".parse().unwrap()));
    assert_eq!(
        edge.certs,
        [CertConfig {
            cert: PathBuf::from("/etc/portcullis/tls/home.pem"),
            key: PathBuf::from("/etc/portcullis/tls/home.key"),
        }]
    );
    let hosts: Vec<_> = edge.routes.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "grafana.home.example",
            "public.home.example",
            "nas.home.example"
        ]
    );
    let auths: Vec<_> = edge.routes.iter().map(|r| r.auth).collect();
    assert_eq!(
        auths,
        [RouteAuth::Required, RouteAuth::None, RouteAuth::LocalOrAuth]
    );
    assert_eq!(edge.routes[0].backend.port_u16(), Some(3000));
    assert!(edge.routes[0].local_networks.is_empty());
    assert_eq!(
        edge.routes[2].local_networks,
        [net("192.168.0.0/16"), net("10.1.2.3/32")]
    );
}

#[test]
fn edge_defaults_https_port_and_required_auth() {
    let text = format!(
        "{MINIMAL}[[edge.cert]]\ncert = \"c\"\nkey = \"k\"\n[[edge.route]]\nhost = \"a.example\"\nbackend = \"http://b:1\"\n"
    );
    let edge = Config::from_toml(&text, "f").unwrap().edge.unwrap();
    assert_eq!(edge.listen_https, DEFAULT_EDGE_LISTEN_HTTPS);
    assert_eq!(edge.listen_http, None);
    assert_eq!(edge.routes[0].auth, RouteAuth::Required);
}

#[test]
fn edge_needs_a_cert_and_a_route() {
    assert_eq!(
        problems_with("[edge]\nlisten_https = \"0.0.0.0:443\"\n"),
        [
            "f.toml:3: edge.cert: missing (at least one [[edge.cert]] is required)",
            "f.toml:3: edge.route: missing (at least one [[edge.route]] is required)",
        ]
    );
    assert_eq!(
        problems_with("[edge]\ncert = []\nroute = 3\n"),
        [
            "f.toml:4: edge.cert: at least one [[edge.cert]] is required",
            "f.toml:5: edge.route: expected an array of tables",
        ]
    );
}

#[test]
fn edge_route_and_cert_problems_name_the_entry_and_line() {
    let extra = r#"[edge]
listen_https = "127.0.0.1:9000"
colour = 1
[[edge.cert]]
cert = "c.pem"
[[edge.route]]
host = "a.example"
backend = "https://b:1"
[[edge.route]]
host = "A.example"
backend = "http://b"
auth = "sometimes"
[[edge.route]]
host = "*.example:443"
backend = "http://b:1/path"
auth = "local-or-auth"
[[edge.route]]
host = "c.example"
backend = "http://b:1"
local_networks = ["10.0.0.0/8"]
[[edge.route]]
host = "d.example"
backend = "http://b:1"
auth = "local-or-auth"
local_networks = ["nope"]
"#;
    assert_eq!(
        problems_with(extra),
        [
            "f.toml:4: edge.listen_https: must differ from server.listen",
            "f.toml:5: edge.colour: unknown key",
            "f.toml:6: edge.cert[0].key: missing (required)",
            "f.toml:10: edge.route[0].backend: https backends are not supported; use http",
            "f.toml:12: edge.route[1].host: duplicate host \"a.example\"",
            "f.toml:13: edge.route[1].backend: \"http://b\" has no port; write it like \"http://10.0.0.5:3000\"",
            "f.toml:14: edge.route[1].auth: \"sometimes\" is not \"required\", \"none\" or \"local-or-auth\"",
            "f.toml:15: edge.route[2].local_networks: missing (required with auth = \"local-or-auth\")",
            "f.toml:16: edge.route[2].host: \"*.example:443\" is not a host name like \"grafana.home.example\" (no port, no wildcard)",
            "f.toml:17: edge.route[2].backend: must not have a path (only \"/\")",
            "f.toml:22: edge.route[3].local_networks: only allowed with auth = \"local-or-auth\"",
            "f.toml:27: edge.route[4].local_networks: \"nope\" is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address",
        ]
    );
}

#[test]
fn edge_listeners_must_not_clash() {
    let extra = "[edge]\nlisten_https = \"0.0.0.0:8443\"\nlisten_http = \"127.0.0.1:8443\"\n[[edge.cert]]\ncert = \"c\"\nkey = \"k\"\n[[edge.route]]\nhost = \"a\"\nbackend = \"http://b:1\"\n";
    assert_eq!(
        problems_with(extra),
        ["f.toml:5: edge.listen_http: must differ from edge.listen_https"]
    );
}

#[test]
fn key_line_finds_dotted_keys_and_array_entries() {
    let text = "[server]\nlisten = \"127.0.0.1:1\"\n\n[fallback]\n\nhtpasswd_file = \"/x\"\n\n\
                [[edge.cert]]\ncert = \"a\"\nkey = \"b\"\n[[edge.cert]]\ncert = \"c\"\nkey = \"d\"\n";
    assert_eq!(key_line(text, "fallback.htpasswd_file"), Some(6));
    assert_eq!(key_line(text, "edge.cert[0].key"), Some(10));
    assert_eq!(key_line(text, "edge.cert[1].cert"), Some(12));
    assert_eq!(key_line(text, "edge.cert[2].cert"), None);
    assert_eq!(key_line(text, "fallback.missing"), None);
    assert_eq!(key_line("not toml [", "fallback.htpasswd_file"), None);
}

#[test]
fn inline_secrets_are_refused_without_being_repeated() {
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----";
    let toml = format!(
        "[edge]\nlisten_https = \"127.0.0.1:8443\"\n[[edge.cert]]\ncert = \"/etc/tls/home.pem\"\nkey = \"\"\"{pem}\"\"\"\n"
    );
    let lines = problems_with(&toml);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("edge.cert[0].key: looks like inline PEM")),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains("MIIEvQ")), "{lines:?}");
    let line = "admin:$2y$10$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01";
    assert_eq!(
        problems_with(&format!("[fallback]\nhtpasswd_file = \"{line}\"\n")),
        ["f.toml:4: fallback.htpasswd_file: looks like an htpasswd line, not a file path: secrets are never inline, name the file that holds it"]
    );
    for (value, what) in [
        (
            "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JSUV2UUlCQURBTkJna3Foa2lHOXcwQkFRRUZBQVND",
            "inline PEM",
        ),
        (
            "$2y$10$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01",
            "an htpasswd line",
        ),
        ("admin: {SSHA}c2VjcmV0c2FsdA==", "an htpasswd line"),
        ("admin:$6$salt$hash", "an htpasswd line"),
    ] {
        let lines = problems_with(&format!("[fallback]\nhtpasswd_file = \"{value}\"\n"));
        assert_eq!(lines.len(), 1, "{value}: {lines:?}");
        assert!(
            lines[0].contains(&format!("looks like {what}")),
            "{lines:?}"
        );
        assert!(!lines[0].contains(value), "{lines:?}");
    }
    let blob = "A".repeat(300);
    let lines = problems_with(&format!("[fallback]\nhtpasswd_file = \"/run/{blob}\"\n"));
    assert!(
        lines[0].contains("looks like a secret") && !lines[0].contains(&blob),
        "{lines:?}"
    );
    // Ordinary paths, colons included, are paths.
    let c = Config::from_toml(
        &format!("{MINIMAL}[fallback]\nhtpasswd_file = \"/run/secrets/a:b/htpasswd\"\n"),
        "f.toml",
    )
    .unwrap();
    assert_eq!(
        c.fallback.htpasswd_file,
        std::path::PathBuf::from("/run/secrets/a:b/htpasswd")
    );
}
