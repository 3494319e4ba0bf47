//! Tests of the fake outpost over real loopback HTTP/1.1 (hyper client connections): shared helpers.
//! The behaviour tests live in `forward` (forward-auth endpoints), `flow` (login and logout) and
//! `server` (behaviour switch, keepalive, shutdown, global routes).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::jwt;
use super::url::query_param;
use super::*;

mod flow;
mod forward;
mod server;

pub(super) const IDENTITY_HEADERS: [&str; 12] = [
    "x-authentik-username",
    "x-authentik-groups",
    "x-authentik-entitlements",
    "x-authentik-email",
    "x-authentik-name",
    "x-authentik-uid",
    "x-authentik-jwt",
    "x-authentik-meta-jwks",
    "x-authentik-meta-outpost",
    "x-authentik-meta-provider",
    "x-authentik-meta-app",
    "x-authentik-meta-version",
];

pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

impl Reply {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    pub(super) fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
    pub(super) fn location(&self) -> &str {
        self.header("location").expect("location header")
    }
}

pub(super) async fn start_fake() -> FakeOutpost {
    FakeOutpost::start("127.0.0.1:0".parse().unwrap(), FakeOutpostConfig::default())
        .await
        .unwrap()
}

pub(super) async fn connect(fake: &FakeOutpost) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(fake.addr()).await.unwrap();
    let (sender, conn) = handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

pub(super) async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "outpost.local");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub(super) async fn get(fake: &FakeOutpost, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(&mut connect(fake).await, Method::GET, path, headers).await
}

/// A Traefik forward-auth call for `http://app.localhost<uri>`, with extra headers.
pub(super) async fn traefik(fake: &FakeOutpost, uri: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "app.localhost"),
        ("x-forwarded-uri", uri),
    ];
    headers.extend_from_slice(extra);
    get(fake, "/outpost.goauthentik.io/auth/traefik", &headers).await
}

pub(super) fn cookie_header(fake: &FakeOutpost, value: &str) -> String {
    format!("{}={value}", fake.cookie_name())
}

/// The cookie value from a `Set-Cookie` of the fake's cookie with a positive Max-Age.
pub(super) fn session_cookie(fake: &FakeOutpost, reply: &Reply) -> String {
    let prefix = format!("{}=", fake.cookie_name());
    reply
        .cookies()
        .into_iter()
        .filter(|c| !c.contains("Max-Age=0"))
        .find_map(|c| {
            c.strip_prefix(&prefix)
                .map(|rest| rest.split(';').next().unwrap().to_owned())
        })
        .expect("session Set-Cookie")
}

pub(super) fn state_claims(location: &str) -> serde_json::Map<String, serde_json::Value> {
    let query = location.split_once('?').unwrap().1;
    let state = query_param(query, "state").unwrap();
    jwt::verify(
        &state,
        FakeOutpostConfig::default().cookie_secret.as_bytes(),
    )
    .expect("state verifies")
}

/// Follows a Location that points at the fake itself (host ignored, path and query kept).
pub(super) async fn follow(fake: &FakeOutpost, location: &str, headers: &[(&str, &str)]) -> Reply {
    let path = location
        .split_once("://")
        .map_or(location, |(_, rest)| &rest[rest.find('/').unwrap()..]);
    get(fake, path, headers).await
}
