//! What the binary's subcommands do, kept in the library so `main.rs` stays a thin shell and
//! tests can drive the same code.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::app::App;
use crate::config::{Config, LogConfig, LogFormat};
use crate::error::error_chain;
use crate::metrics::Metrics;
use crate::server::tls::EdgeCerts;
use crate::server::{self, Listeners};

/// Every problem of the files the config at `source` names (the htpasswd file, each edge
/// certificate and key), read the way `serve` loads them, one line each in the form of a config
/// problem: `CONFIG:LINE: KEY: problem`, LINE being the key's line and the problem naming the
/// file (and its line, if it has one). Empty when all are usable. `check`, `serve` and a config
/// reload all refuse a config with any.
pub fn file_problems(config: &Config, source: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(source).unwrap_or_default();
    let problem = |key: &str, problem: String| {
        let line = crate::config::key_line(&text, key).unwrap_or(1);
        format!("{}:{line}: {key}: {problem}", source.display())
    };
    let mut problems = Vec::new();
    if let Err(p) = check_htpasswd(config) {
        problems.push(problem("fallback.htpasswd_file", p));
    }
    if let Some(edge) = &config.edge {
        for err in EdgeCerts::problems(edge) {
            let (key, p) = err.key_and_problem();
            problems.push(problem(key, p));
        }
    }
    problems
}

/// What `check` reports without failing, in the same `CONFIG:LINE: KEY: ...` form: an htpasswd
/// file that does not exist (`serve` starts, and the realm denies everyone until it appears).
pub fn file_warnings(config: &Config, source: &Path) -> Vec<String> {
    let ht = &config.fallback.htpasswd_file;
    if !config.fallback.enabled || ht.exists() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(source).unwrap_or_default();
    let key = "fallback.htpasswd_file";
    let line = crate::config::key_line(&text, key).unwrap_or(1);
    vec![format!(
        "{}:{line}: {key}: warning: {} does not exist: every emergency login is denied until it appears",
        source.display(),
        ht.display()
    )]
}

/// The htpasswd file's problem, naming the file and, for a bad entry, its line. A missing file
/// is not one (see [`file_warnings`]).
fn check_htpasswd(config: &Config) -> Result<(), String> {
    use crate::auth::htpasswd::HtpasswdError;
    if !config.fallback.enabled {
        return Ok(());
    }
    let file = config.fallback.htpasswd_file.display();
    match crate::auth::fallback::check_file(&config.fallback.htpasswd_file) {
        Ok(_) => Ok(()),
        Err(HtpasswdError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(HtpasswdError::Malformed { line, reason }) => Err(format!("{file}:{line}: {reason}")),
        Err(HtpasswdError::Io { source, .. }) => Err(format!("{file}: cannot read: {source}")),
        Err(other) => Err(format!("{file}: {other}")),
    }
}

/// Changes the log filter of the running process (`[log] level` on reload).
pub struct LogLevel(Box<SetLevel>);

/// The closure behind [`LogLevel`] (its subscriber type differs for JSON and text).
type SetLevel = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl LogLevel {
    /// Applies a new filter directive.
    pub fn set(&self, level: &str) -> Result<(), String> {
        (self.0)(level)
    }
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevel")
    }
}

/// Log lines queued for the writer thread before new ones are dropped.
const LOG_QUEUE_LINES: usize = 8192;

/// The installed logging: the handle that changes the level later, and the guard that flushes
/// the log writer's queue when dropped (keep it alive until exit).
#[derive(Debug, Default)]
pub struct Logging {
    /// `None` if a subscriber was already installed (as in tests).
    pub level: Option<LogLevel>,
    _flush: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the tracing subscriber from `[log]`. Lines go to stderr through a writer thread with
/// a bounded queue, so an access line costs its formatting but never a `write(2)` on an async
/// worker, and a slow log reader (journald, `kubectl logs`) cannot stall requests; under
/// extreme overload the queue drops lines rather than block.
pub fn init_logging(log: &LogConfig) -> Logging {
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Buffered: the writer thread flushes whenever its queue runs empty, so lines leave at
    // once when idle and in batches under load.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    // 8 192 queued lines (~256 KiB of slots) instead of the default 128 000 (~4 MiB at start).
    let (writer, flush) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(stderr);
    // Colour only on a terminal: escape codes in journald or `kubectl logs` are noise.
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let level = match log.format {
        LogFormat::Json => {
            let b = builder
                .json()
                .flatten_event(true)
                .with_env_filter(filter)
                .with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init()
                .ok()
                .map(|()| LogLevel(Box::new(move |level| set_level(&handle, level))))
        }
        LogFormat::Text => {
            let b = builder.with_env_filter(filter).with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init()
                .ok()
                .map(|()| LogLevel(Box::new(move |level| set_level(&handle, level))))
        }
    };
    Logging {
        level,
        _flush: Some(flush),
    }
}

fn set_level<S>(
    handle: &tracing_subscriber::reload::Handle<EnvFilter, S>,
    level: &str,
) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())
}

/// The Tokio runtime for `workers` threads (0: one per CPU this process may run on).
///
/// One thread gets the current-thread scheduler: with a single worker the multi-threaded one only
/// adds cross-thread handoffs, and it runs a woken task at once (its LIFO slot), so every outpost
/// write happens in the middle of reading the next requests. The current-thread scheduler first
/// runs what is ready, then writes: under load on one core the outpost is woken (and this process
/// preempted) about half as often, measured in `benches/RESULTS.md`. Blocking work (password
/// hashing) still goes to the blocking pool either way.
pub fn tokio_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

/// `portcullis serve`: bind, build the app, watch for reloads, serve until SIGTERM/SIGINT.
pub async fn serve(config: Config, path: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let mut logging = init_logging(&config.log);
    let hup = crate::reload::hangup();
    let stop = crate::signal::shutdown();
    let mut listeners = Listeners::bind(config.server.listen, config.server.admin_listen)
        .await
        .map_err(|e| {
            format!(
                "cannot bind {} / {}: {e}",
                config.server.listen, config.server.admin_listen
            )
        })?;
    if let Some(edge) = &config.edge {
        listeners
            .bind_edge(edge)
            .await
            .map_err(|e| format!("edge mode cannot start: {}", error_chain(&e)))?;
        tracing::info!(https = %edge.listen_https, http = ?edge.listen_http, "edge mode");
    }
    tracing::info!(
        listen = %config.server.listen,
        admin = %config.server.admin_listen,
        outpost = %config.outpost.url,
        "portcullis serving"
    );
    let app = App::new(config, Metrics::new())?;
    if let Some(set) = logging.level.take() {
        app.set_log_level(set);
    }
    crate::reload::spawn(app.clone(), path, hup);
    server::run(app, listeners, stop).await;
    tracing::info!("bye");
    Ok(())
}

/// `portcullis hash-password USER`: reads a password from stdin (one line) and prints `USER:HASH`.
pub fn hash_password(user: &str) -> ExitCode {
    if user.is_empty() || user.contains(':') {
        eprintln!("user name must be non-empty and must not contain ':'");
        return ExitCode::from(64);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {user}: ");
    }
    let mut line = String::new();
    if let Err(err) = stdin.lock().read_line(&mut line) {
        eprintln!("cannot read the password: {err}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("empty password refused");
        return ExitCode::from(64);
    }
    match crate::auth::htpasswd::hash_password(password) {
        Ok(hash) => {
            println!("{user}:{hash}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("cannot hash: {err}");
            ExitCode::FAILURE
        }
    }
}
