//! Fake outpost tests: forward-auth endpoints: traefik/caddy, nginx, envoy, skip paths, header auth.

use http::{Method, StatusCode};

use super::*;

#[tokio::test]
async fn unauthenticated_traefik_redirects_to_authorize_with_new_session_cookie() {
    let fake = start_fake().await;
    let reply = traefik(&fake, "/dashboard?tab=1", &[]).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let expected = format!(
        "{}/application/o/authorize/?client_id=portcullis-demo&redirect_uri=http%3A%2F%2Fapp.localhost%2Foutpost.goauthentik.io%2Fcallback%3FX-authentik-auth-callback%3Dtrue&response_type=code&scope=openid+email+profile+ak_proxy&state=",
        fake.url()
    );
    assert!(
        reply.location().starts_with(&expected),
        "{}",
        reply.location()
    );
    let cookies = reply.cookies();
    assert_eq!(cookies.len(), 1);
    assert!(cookies[0].starts_with(&format!("{}=", fake.cookie_name())));
    assert!(
        cookies[0].contains("; Path=/; Expires=")
            && cookies[0].ends_with("; Max-Age=3601; HttpOnly; SameSite=Lax")
    );
    assert_eq!(session_cookie(&fake, &reply).len(), 52);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(reply.body.starts_with("<a href=\"http://") && reply.body.ends_with("\">Found</a>.\n"));
    let state = state_claims(reply.location());
    assert_eq!(state["iss"], "goauthentik.io/outpost/portcullis-demo");
    assert_eq!(state["redirect"], "http://app.localhost/dashboard?tab=1");
    assert_eq!(state["sid"], session_cookie(&fake, &reply).as_str());
    assert!(state.get("exp").is_none());
    assert!(reply.header("x-authentik-username").is_none());
}

#[tokio::test]
async fn session_cookie_gets_all_twelve_identity_headers() {
    let fake = start_fake().await;
    assert!(fake.cookie_name().starts_with("authentik_proxy_") && fake.cookie_name().len() == 24);
    let cookie = cookie_header(&fake, &fake.login("akadmin"));
    let reply = traefik(
        &fake,
        "/",
        &[("cookie", &cookie), ("user-agent", "probe/1.0")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    for name in IDENTITY_HEADERS {
        assert!(reply.headers.contains_key(name), "missing {name}");
    }
    assert_eq!(reply.header("x-authentik-username"), Some("akadmin"));
    assert_eq!(reply.header("x-authentik-groups"), Some("authentik Admins"));
    assert_eq!(reply.header("x-authentik-entitlements"), Some(""));
    assert_eq!(
        reply.header("x-authentik-email"),
        Some("akadmin@example.org")
    );
    let uid = reply.header("x-authentik-uid").unwrap();
    assert!(uid.len() == 64 && uid.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        reply.header("x-authentik-meta-version"),
        Some("goauthentik.io/outpost/2026.5.0")
    );
    assert_eq!(
        reply.header("x-authentik-meta-outpost"),
        Some("fake-outpost")
    );
    assert_eq!(reply.header("user-agent"), Some("probe/1.0"));
    assert_eq!(reply.header("x-powered-by"), Some("authentik_proxy2"));
    assert_eq!(reply.header("content-length"), Some("0"));
    assert!(reply.cookies().is_empty());
    let token = jwt::verify(
        reply.header("x-authentik-jwt").unwrap(),
        b"portcullis-demo-cookie-secret-not-for-production",
    )
    .unwrap();
    assert_eq!(token["sub"], uid);
    assert_eq!(token["preferred_username"], "akadmin");
    assert!(token["exp"].as_u64().unwrap() > session::unix_now() + 3500);
}

#[tokio::test]
async fn missing_forwarded_host_or_proto_is_configuration_error() {
    let fake = start_fake().await;
    for headers in [
        vec![("x-forwarded-proto", "http"), ("x-forwarded-uri", "/")],
        vec![
            ("x-forwarded-host", "app.localhost"),
            ("x-forwarded-uri", "/"),
        ],
    ] {
        let reply = get(&fake, "/outpost.goauthentik.io/auth/caddy", &headers).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.body, "configuration error\n");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test]
async fn nginx_unauthenticated_gets_401_with_session_cookie() {
    let fake = start_fake().await;
    let reply = get(
        &fake,
        "/outpost.goauthentik.io/auth/nginx",
        &[("x-original-url", "http://app.localhost/private")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body, "unauthorized request\n");
    assert_eq!(session_cookie(&fake, &reply).len(), 52);
    assert_eq!(fake.stats().sessions, 1);
    let neither = get(&fake, "/outpost.goauthentik.io/auth/nginx", &[]).await;
    assert_eq!(neither.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(neither.body, "configuration error\n");
}

#[tokio::test]
async fn nginx_prefers_x_original_uri_and_omits_powered_by_on_success() {
    let fake = start_fake().await;
    let both = [
        ("x-original-uri", "/public/app.css"),
        ("x-original-url", "http://app.localhost/private"),
    ];
    let reply = get(&fake, "/outpost.goauthentik.io/auth/nginx", &both).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "X-Original-URI must win and match the skip prefix"
    );
    assert!(reply.header("x-authentik-username").is_none());
    let swapped = [
        ("x-original-uri", "/private"),
        ("x-original-url", "http://app.localhost/public/x"),
    ];
    assert_eq!(
        get(&fake, "/outpost.goauthentik.io/auth/nginx", &swapped)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let cookie = cookie_header(&fake, &fake.login("akadmin"));
    let ok = get(
        &fake,
        "/outpost.goauthentik.io/auth/nginx",
        &[("x-original-uri", "/private"), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-authentik-username"), Some("akadmin"));
    assert!(ok.header("x-powered-by").is_none());
}

#[tokio::test]
async fn skip_path_is_allowed_without_identity_unless_logged_in() {
    let fake = start_fake().await;
    let reply = traefik(&fake, "/public/style.css?v=2", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply
        .headers
        .keys()
        .all(|k| !k.as_str().starts_with("x-authentik-")));
    assert_eq!(reply.header("x-powered-by"), Some("authentik_proxy2"));
    assert!(reply.cookies().is_empty());
    assert_eq!(
        traefik(&fake, "/private/public", &[]).await.status,
        StatusCode::FOUND
    );
    let cookie = cookie_header(&fake, &fake.login("akadmin"));
    let logged_in = traefik(&fake, "/public/style.css", &[("cookie", &cookie)]).await;
    assert_eq!(logged_in.header("x-authentik-username"), Some("akadmin"));
}

#[tokio::test]
async fn envoy_builds_scheme_relative_redirect_from_host() {
    let fake = start_fake().await;
    let reply = send(
        &mut connect(&fake).await,
        Method::GET,
        "/outpost.goauthentik.io/auth/envoy/page?q=1",
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        state_claims(reply.location())["redirect"],
        "//outpost.local/page?q=1"
    );
}
