//! `portcullis demo`: the fake outpost and the proxy on loopback, with the commands to try.
//!
//! Not for production: the outpost here is [`FakeOutpost`], and the emergency password is
//! printed on the terminal. `--self-test` runs the printed checks itself and exits non-zero if
//! any answer is not what the README promises.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use super::outpost::{Behaviour, FakeOutpost, FakeOutpostConfig, DEMO_APP_PASSWORD, DEMO_USERNAME};
use crate::app::App;
use crate::config::{Config, LogConfig, LogFormat};
use crate::metrics::Metrics;
use crate::server::{self, Listeners};

/// The emergency realm's demo credentials.
const FALLBACK_USER: &str = "admin";
const FALLBACK_PASSWORD: &str = "emergency";

/// Runs the demo until Ctrl-C (or, with `self_test`, runs the checks and exits).
pub fn main(listen: SocketAddr, self_test: bool) -> ExitCode {
    let _logging = crate::cli::init_logging(&LogConfig {
        level: "info".into(),
        format: LogFormat::Text,
    });
    let runtime = match crate::cli::tokio_runtime(0) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(listen, self_test)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: SocketAddr, self_test: bool) -> Result<(), Box<dyn std::error::Error>> {
    let outpost = FakeOutpost::start("127.0.0.1:0".parse()?, FakeOutpostConfig::default()).await?;
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let htpasswd = dir.join("htpasswd");
    let line = format!(
        "{FALLBACK_USER}:{}\n",
        crate::auth::htpasswd::hash_password(FALLBACK_PASSWORD)?
    );
    std::fs::write(&htpasswd, line)?;
    let mut config = Config::default();
    config.server.listen = listen;
    config.server.admin_listen = "127.0.0.1:0".parse()?;
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse()?, "::1/128".parse()?];
    config.server.shutdown_delay = Duration::ZERO;
    config.outpost.url = outpost.url().parse()?;
    config.fallback.htpasswd_file = htpasswd;
    config.fallback.probe_interval = Duration::from_millis(500);
    let listeners = Listeners::bind(config.server.listen, config.server.admin_listen).await?;
    let proxy = listeners.main.local_addr()?;
    let admin = listeners.admin.local_addr()?;
    let app = App::new(config, Metrics::new())?;
    let cookie = format!("{}={}", outpost.cookie_name(), outpost.login(DEMO_USERNAME));
    let control = super::control::start(outpost.clone()).await?;
    print_guide(proxy, admin, control, &outpost, &cookie);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(app.clone(), listeners, async {
        let _ = stop_rx.await;
    }));
    let outcome = if self_test {
        super::selftest::run(proxy, admin, &outpost, &cookie).await
    } else {
        crate::signal::shutdown().await;
        Ok(())
    };
    let _ = stop_tx.send(());
    let _ = serving.await;
    outpost.set_behaviour(Behaviour::Normal);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn print_guide(
    proxy: SocketAddr,
    admin: SocketAddr,
    control: SocketAddr,
    outpost: &FakeOutpost,
    cookie: &str,
) {
    let fa = format!("http://{proxy}/outpost.goauthentik.io/auth/traefik");
    let tf = "-H 'X-Forwarded-Proto: https' -H 'X-Forwarded-Host: app.example' -H 'X-Forwarded-Uri: /dashboard'";
    println!(
        "\nportcullis demo — NOT FOR PRODUCTION (fake outpost at {outpost_url})\n\
         proxy {proxy}, admin {admin}. Try, as Traefik's ForwardAuth would ask:\n\n\
         # 1. no session: relayed 302 to the (fake) authentik authorize page, with Set-Cookie\n\
         curl -si {fa} {tf}\n\n\
         # 2. a logged-in session: 200 with the twelve X-Authentik-* headers\n\
         curl -si {fa} {tf} -H 'Cookie: {cookie}'\n\n\
         # 3. the same again: answered from the cache (see decision=allow_cached in the log)\n\
         curl -si {fa} {tf} -H 'Cookie: {cookie}'\n\n\
         # 4. header auth with an app password (the outpost's Basic support)\n\
         curl -si {fa} {tf} -u {DEMO_USERNAME}:{DEMO_APP_PASSWORD}\n\n\
         # 5. passthrough of /outpost.goauthentik.io/*: 204 from the outpost\n\
         curl -si http://{proxy}/outpost.goauthentik.io/ping\n\n\
         # 6. take the outpost down, then use the emergency realm (answers carry X-Auth-Fallback: true)\n\
         curl -s -X POST http://{control}/down\n\
         curl -si {fa} {tf}\n\
         curl -si {fa} {tf} -u {FALLBACK_USER}:{FALLBACK_PASSWORD}\n\
         curl -s -X POST http://{control}/up\n\n\
         # 7. metrics and readiness\n\
         curl -s http://{admin}/metrics | grep portcullis_requests_total\n\
         curl -s http://{admin}/readyz\n\n\
         Ctrl-C stops the demo.\n",
        outpost_url = outpost.url(),
    );
}
