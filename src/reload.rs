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
        let mut waiting: Option<Waiting> = None;
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
            // A config refused because a file it names was unusable (a certificate pair
            // half-rotated, an htpasswd half-written) is tried again once those files change.
            let files_changed = waiting.as_ref().is_some_and(|w| w.changed());
            if !by_signal && !files_changed && (now == seen || now.is_none()) {
                continue;
            }
            seen = now;
            let trigger = match (by_signal, files_changed) {
                (true, _) => "SIGHUP",
                (false, true) => "named file changed",
                (false, false) => "file changed",
            };
            waiting = match reload(&app, &path, trigger) {
                Reload::FilesUnusable(files) => Some(files),
                Reload::Applied | Reload::Rejected => None,
            };
        }
    })
}

/// The files a refused config names, as they were when it was refused.
struct Waiting(Vec<(PathBuf, Option<Fingerprint>)>);

impl Waiting {
    fn on(files: Vec<PathBuf>) -> Waiting {
        Waiting(
            files
                .into_iter()
                .map(|f| {
                    let p = fingerprint(&f);
                    (f, p)
                })
                .collect(),
        )
    }

    fn changed(&self) -> bool {
        self.0.iter().any(|(f, p)| fingerprint(f) != *p)
    }
}

/// How one reload ended.
enum Reload {
    Applied,
    /// The file itself was invalid, or the app refused it.
    Rejected,
    /// It was valid, but a file it names was not usable (these, as they were before the check).
    FilesUnusable(Waiting),
}

/// The files `config` names: the htpasswd file, each certificate and key.
fn named_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.fallback.htpasswd_file.clone()];
    if let Some(edge) = &config.edge {
        for c in &edge.certs {
            files.extend([c.cert.clone(), c.key.clone()]);
        }
    }
    files
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
    matches!(reload(app, path, trigger), Reload::Applied)
}

fn reload(app: &App, path: &Path, trigger: &str) -> Reload {
    let outcome = match Config::load(path) {
        Ok(config) => {
            // Fingerprinted before they are checked: a writer that finishes in between must
            // still count as a change and bring the retry.
            let named = Waiting::on(named_files(&config));
            if !files_usable(&config, path, trigger) {
                return finish(app, trigger, Reload::FilesUnusable(named));
            }
            match app.reload(config) {
                Ok(()) => Reload::Applied,
                Err(err) => {
                    tracing::error!(trigger, error = %err, "config reload rejected; keeping the last good config");
                    Reload::Rejected
                }
            }
        }
        Err(errors) => {
            for p in &errors.problems {
                tracing::error!(trigger, file = %errors.file, line = p.line, key = %p.key, problem = %p.problem, "config reload rejected");
            }
            Reload::Rejected
        }
    };
    finish(app, trigger, outcome)
}

/// Counts and logs how a reload ended.
fn finish(app: &App, trigger: &str, outcome: Reload) -> Reload {
    let applied = matches!(outcome, Reload::Applied);
    app.metrics.config_reload(applied).inc();
    if applied {
        tracing::info!(
            trigger,
            generation = app.runtime().generation,
            "config reloaded"
        );
    }
    outcome
}
