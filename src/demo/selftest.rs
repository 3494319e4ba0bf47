//! `portcullis demo --self-test`: makes the requests the demo prints and checks each answer, so
//! CI proves the README's first command works as written.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::outpost::{Behaviour, FakeOutpost, DEMO_APP_PASSWORD, DEMO_USERNAME};

type Check = Result<(), Box<dyn std::error::Error>>;

async fn get(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<http::Response<Bytes>, Box<dyn std::error::Error>> {
    let mut b = http::Request::builder().uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(b.body(Empty::new())?),
    )
    .await??;
    let (parts, body) = resp.into_parts();
    Ok(http::Response::from_parts(
        parts,
        body.collect().await?.to_bytes(),
    ))
}

fn expect(what: &str, ok: bool) -> Check {
    if ok {
        println!("self-test: ok   {what}");
        Ok(())
    } else {
        Err(format!("self-test: FAIL {what}").into())
    }
}

/// Runs every check of the printed guide.
pub async fn run(
    proxy: SocketAddr,
    admin: SocketAddr,
    outpost: &FakeOutpost,
    cookie: &str,
) -> Check {
    use base64::Engine;
    let fa = format!("http://{proxy}/outpost.goauthentik.io/auth/traefik");
    let tf = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example"),
        ("x-forwarded-uri", "/dashboard"),
    ];
    let with = |extra: (&'static str, String)| {
        let mut h: Vec<(&str, String)> = tf.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        h.push(extra);
        h
    };
    let as_refs = |h: &Vec<(&'static str, String)>| {
        h.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
    };
    let r = get(&fa, &tf).await?;
    expect(
        "no session: 302 to authorize",
        r.status() == 302 && r.headers().contains_key("location"),
    )?;
    let h = with(("cookie", cookie.to_owned()));
    let hv = as_refs(&h);
    let hr: Vec<(&str, &str)> = hv.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = get(&fa, &hr).await?;
    expect(
        "session: 200 with X-Authentik-Username",
        r.status() == 200
            && r.headers()
                .get("x-authentik-username")
                .is_some_and(|v| v == DEMO_USERNAME),
    )?;
    let before = outpost.stats().auth_requests;
    let r = get(&fa, &hr).await?;
    expect(
        "repeat: answered from the cache",
        r.status() == 200 && outpost.stats().auth_requests == before,
    )?;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{DEMO_USERNAME}:{DEMO_APP_PASSWORD}"))
    );
    let r = get(&fa, &[tf[0], tf[1], tf[2], ("authorization", &basic)]).await?;
    expect("app password header auth: 200", r.status() == 200)?;
    let r = get(&format!("http://{proxy}/outpost.goauthentik.io/ping"), &[]).await?;
    expect("passthrough ping: 204", r.status() == 204)?;
    outpost.set_behaviour(Behaviour::Status(503));
    let r = get(&fa, &tf).await?;
    expect(
        "outage, no credentials: 401 Basic challenge",
        r.status() == 401
            && r.headers()
                .get("x-auth-fallback")
                .is_some_and(|v| v == "true"),
    )?;
    let emergency = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:emergency")
    );
    let r = get(&fa, &[tf[0], tf[1], tf[2], ("authorization", &emergency)]).await?;
    expect(
        "outage, emergency credentials: 200 as admin",
        r.status() == 200
            && r.headers()
                .get("x-authentik-username")
                .is_some_and(|v| v == "admin"),
    )?;
    outpost.set_behaviour(Behaviour::Normal);
    let r = get(&format!("http://{admin}/metrics"), &[]).await?;
    let text = String::from_utf8_lossy(r.body());
    expect(
        "metrics count the cached allow",
        text.contains("decision=\"allow_cached\",endpoint=\"traefik\"} 1"),
    )?;
    println!("self-test: all checks passed");
    Ok(())
}
