//! The `portcullis` binary: parse the command line, set up logging, validate the config
//! (exit 64 on any problem), then serve until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::config::Config;

/// Exit code for a configuration problem (sysexits.h `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "Forward-auth reverse proxy in front of the authentik outpost"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve forward-auth checks.
    Serve {
        /// The TOML config file.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit (0 valid, 64 invalid).
    Check {
        /// The TOML config file.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print an htpasswd line (bcrypt) for the emergency realm; the password is read from stdin.
    HashPassword {
        /// The user name.
        user: String,
    },
    /// Run a self-contained demo on loopback: a fake outpost and the proxy in front of it.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// Make the printed requests, check every answer, and exit (0 = all as described).
        #[arg(long)]
        self_test: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config } => match named(config) {
            Ok(config) => serve(config),
            Err(code) => code,
        },
        Command::Check { config } => match named(config).and_then(|c| load(&c).map(|l| (c, l))) {
            Ok((config, loaded)) => {
                for warning in portcullis::cli::file_warnings(&loaded, &config) {
                    eprintln!("{warning}");
                }
                eprintln!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::HashPassword { user } => portcullis::cli::hash_password(&user),
        Command::Demo { listen, self_test } => portcullis::demo::run::main(listen, self_test),
    }
}

/// The config file `--config` or `PORTCULLIS_CONFIG` names; naming none is a config problem.
fn named(config: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    config.ok_or_else(|| {
        eprintln!("no config file: pass --config FILE or set PORTCULLIS_CONFIG");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    let config = Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let problems = portcullis::cli::file_problems(&config, path);
    for problem in &problems {
        eprintln!("{problem}");
    }
    if !problems.is_empty() {
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(config)
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match portcullis::cli::tokio_runtime(config.server.workers) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(portcullis::cli::serve(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "portcullis failed");
            eprintln!("portcullis: {err}");
            ExitCode::FAILURE
        }
    }
}
