//! Hot reload: on SIGHUP, and when the config file changes (polled every second, so a change
//! applies within 2 s), the file is read and validated off the hot path and swapped in
//! atomically. An invalid file is refused, logged problem by problem, counted as rejected, and
//! the last good config keeps answering. Listeners are never rebound.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::app::App;
use crate::config::Config;

/// How often the config file's metadata is looked at.
const POLL: Duration = Duration::from_secs(1);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Installs the SIGHUP handler. Call it before binding, so a SIGHUP sent during start-up is a
/// reload request rather than the default action (terminate).
pub fn hangup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP; file changes still reload");
            None
        }
    }
}

/// Watches `path` and SIGHUP (from [`hangup`]) for the life of the process.
pub fn spawn(app: Arc<App>, path: PathBuf, hup: Option<Signal>) -> tokio::task::JoinHandle<()> {
    let mut hup = hup;
    tokio::spawn(async move {
        let mut seen = fingerprint(&path);
        let mut tick = tokio::time::interval(POLL);
        loop {
            let by_signal = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            };
            let now = fingerprint(&path);
            if now.is_none() && seen.is_some() {
                // Once per disappearance: the running config stays (a rename-replace never
                // leaves the path missing long enough to be seen twice).
                tracing::warn!(
                    path = %path.display(),
                    "config file is gone; keeping the running config until it reappears"
                );
                seen = None;
            }
            if !by_signal && (now == seen || now.is_none()) {
                continue;
            }
            seen = now;
            reload_from(
                &app,
                &path,
                if by_signal { "SIGHUP" } else { "file changed" },
            );
        }
    })
}

/// Whether the files `config` names are usable, as `check` would judge them; each problem is
/// logged. A config that `check` refuses is never applied.
fn files_usable(config: &Config, path: &Path, trigger: &str) -> bool {
    let problems = crate::cli::file_problems(config, path);
    for problem in &problems {
        tracing::error!(trigger, %problem, "config reload rejected; keeping the last good config");
    }
    problems.is_empty()
}

/// Reads, validates and applies the file once. Returns whether the new config is in force.
pub fn reload_from(app: &App, path: &Path, trigger: &str) -> bool {
    let applied = match Config::load(path) {
        Ok(config) if !files_usable(&config, path, trigger) => false,
        Ok(config) => match app.reload(config) {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(trigger, error = %err, "config reload rejected; keeping the last good config");
                false
            }
        },
        Err(errors) => {
            for p in &errors.problems {
                tracing::error!(trigger, file = %errors.file, line = p.line, key = %p.key, problem = %p.problem, "config reload rejected");
            }
            false
        }
    };
    app.metrics.config_reload(applied).inc();
    if applied {
        tracing::info!(
            trigger,
            generation = app.runtime().generation,
            "config reloaded"
        );
    }
    applied
}
