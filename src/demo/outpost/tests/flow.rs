//! Fake outpost tests: the login round trip, the callback's state checks, `/start` and sign-out.

use http::StatusCode;

use super::*;

#[tokio::test]
async fn full_login_round_trip_start_authorize_callback() {
    let fake = start_fake().await;
    let fwd = [
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "app.localhost"),
    ];
    let start = get(
        &fake,
        "/outpost.goauthentik.io/start?rd=http%3A%2F%2Fapp.localhost%2Fdashboard",
        &fwd,
    )
    .await;
    assert_eq!(start.status, StatusCode::FOUND);
    assert_eq!(
        state_claims(start.location())["redirect"],
        "http://app.localhost/dashboard"
    );
    let cookie = cookie_header(&fake, &session_cookie(&fake, &start));
    let authorize = follow(&fake, start.location(), &[]).await;
    assert_eq!(authorize.status, StatusCode::FOUND);
    let callback_url = authorize.location().to_owned();
    assert!(callback_url.starts_with(
        "http://app.localhost/outpost.goauthentik.io/callback?X-authentik-auth-callback=true&code="
    ));
    let mut headers = fwd.to_vec();
    headers.push(("cookie", &cookie));
    let callback = follow(&fake, &callback_url, &headers).await;
    assert_eq!(callback.status, StatusCode::FOUND);
    assert_eq!(callback.location(), "http://app.localhost/dashboard");
    assert!(callback.cookies()[0].contains("Max-Age=3600;"));
    assert_eq!(
        cookie_header(&fake, &session_cookie(&fake, &callback)),
        cookie
    );
    let auth = traefik(&fake, "/dashboard", &[("cookie", &cookie)]).await;
    assert_eq!(auth.status, StatusCode::OK);
    assert_eq!(auth.header("x-authentik-username"), Some("akadmin"));
    // Codes are single use: a replay redirects without a new session cookie.
    let replay = follow(&fake, &callback_url, &headers).await;
    assert_eq!(replay.status, StatusCode::FOUND);
    assert!(replay.cookies().is_empty());
}

#[tokio::test]
async fn callback_signature_in_forwarded_uri_completes_login_inside_auth_request() {
    let fake = start_fake().await;
    let first = traefik(&fake, "/page", &[]).await;
    let cookie = cookie_header(&fake, &session_cookie(&fake, &first));
    let callback_url = follow(&fake, first.location(), &[])
        .await
        .location()
        .to_owned();
    let uri = &callback_url["http://app.localhost".len()..];
    let done = traefik(&fake, uri, &[("cookie", &cookie)]).await;
    assert_eq!(done.status, StatusCode::FOUND);
    assert_eq!(done.location(), "http://app.localhost/page");
    assert_eq!(
        traefik(&fake, "/page", &[("cookie", &cookie)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn callback_with_tampered_state_or_other_session_is_400() {
    let fake = start_fake().await;
    let first = traefik(&fake, "/page", &[]).await;
    let cookie = cookie_header(&fake, &session_cookie(&fake, &first));
    let callback_url = follow(&fake, first.location(), &[])
        .await
        .location()
        .to_owned();
    let path = &callback_url["http://app.localhost".len()..];
    let tampered = path.replacen("state=", "state=x", 1);
    let reply = get(&fake, &tampered, &[("cookie", &cookie)]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.is_empty());
    let other = cookie_header(&fake, &fake.login("akadmin"));
    assert_eq!(
        get(&fake, path, &[("cookie", &other)]).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(get(&fake, path, &[]).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&fake, path, &[("cookie", &cookie)]).await.status,
        StatusCode::FOUND
    );
}

#[tokio::test]
async fn sign_out_deletes_all_sessions_of_the_user() {
    let fake = start_fake().await;
    let first = cookie_header(&fake, &fake.login("akadmin"));
    let second = cookie_header(&fake, &fake.login("akadmin"));
    let reply = get(
        &fake,
        "/outpost.goauthentik.io/sign_out",
        &[("cookie", &first)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let expected = format!(
        "{}/application/o/portcullis-demo/end-session/?id_token_hint=",
        fake.url()
    );
    assert!(
        reply.location().starts_with(&expected),
        "{}",
        reply.location()
    );
    assert!(
        reply.cookies().is_empty(),
        "the cookie is not cleared on sign-out"
    );
    for cookie in [&first, &second] {
        let after = traefik(&fake, "/", &[("cookie", cookie)]).await;
        assert_eq!(after.status, StatusCode::FOUND);
        let cookies = after.cookies();
        assert!(cookies[0].contains("=; Path=/; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0"));
        assert_eq!(session_cookie(&fake, &after).len(), 52);
    }
    let anonymous = get(
        &fake,
        "/outpost.goauthentik.io/sign_out",
        &[("x-forwarded-host", "app.localhost")],
    )
    .await;
    assert_eq!(
        anonymous.location(),
        "http://app.localhost/outpost.goauthentik.io/start?rd=http%3A%2F%2Fapp.localhost%2Foutpost.goauthentik.io%2Fsign_out"
    );
}

#[tokio::test]
async fn basic_app_password_authenticates_and_sets_cookie() {
    let fake = start_fake().await;
    let (user, password) = crate::demo::demo_credentials();
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{user}:{password}")
        )
    );
    let reply = traefik(&fake, "/api", &[("authorization", &basic)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-authentik-username"), Some("akadmin"));
    let cookie = cookie_header(&fake, &session_cookie(&fake, &reply));
    assert_eq!(
        traefik(&fake, "/api", &[("cookie", &cookie)]).await.status,
        StatusCode::OK
    );
    let wrong = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "akadmin:nope")
    );
    assert_eq!(
        traefik(&fake, "/api", &[("authorization", &wrong)])
            .await
            .status,
        StatusCode::FOUND
    );
    let bearer = format!("Bearer {}", reply.header("x-authentik-jwt").unwrap());
    let by_token = traefik(&fake, "/api", &[("authorization", &bearer)]).await;
    assert_eq!(by_token.header("x-authentik-username"), Some("akadmin"));
}

#[tokio::test]
async fn start_drops_rd_for_a_foreign_host() {
    let fake = start_fake().await;
    let fwd = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.localhost"),
    ];
    let reply = get(
        &fake,
        "/outpost.goauthentik.io/start?rd=https%3A%2F%2Fevil.example%2F",
        &fwd,
    )
    .await;
    assert_eq!(state_claims(reply.location())["redirect"], "");
    assert!(reply.cookies()[0].contains("; Secure; SameSite=Lax"));
}
