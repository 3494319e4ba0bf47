//! The real binary (DESIGN.md section 6): `check` and `serve` refuse invalid files with exit 64
//! and one `FILE:LINE: KEY: problem` line per problem, `PORTCULLIS_CONFIG` names the file,
//! `hash-password` prints a verifiable htpasswd line, and `serve` binds and answers `/healthz`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{temp_dir, FALLBACK_PASSWORD, FALLBACK_USER};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// sysexits.h `EX_USAGE`, the binary's exit code for a configuration problem.
const EXIT_CONFIG: i32 = 64;

/// Runs the binary with `args` (and no inherited `PORTCULLIS_CONFIG`), waiting at most 30 s.
fn run(args: &[&str], env: Option<(&str, &Path)>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(Stdio::null());
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(ChildGuard::new(child), Duration::from_secs(30))
}

/// Waits for the child to exit (killing it at the deadline) and collects its output.
fn wait_output(mut guard: ChildGuard, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while !guard.exited() {
        assert!(
            Instant::now() < deadline,
            "the binary did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let child = guard.0.take().unwrap();
    child.wait_with_output().unwrap()
}

/// Kills the child when dropped, so a failed assertion never leaves a server running.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn new(child: Child) -> Self {
        ChildGuard(Some(child))
    }

    /// Whether the child has exited (without reaping its output).
    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A port nobody listens on right now (bound, then released).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A valid htpasswd file in `dir`.
fn htpasswd(dir: &Path) -> PathBuf {
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(FALLBACK_PASSWORD, 4).unwrap();
    std::fs::write(&path, format!("{FALLBACK_USER}:{hash}\n")).unwrap();
    path
}

/// A valid config file; `extra` is appended to `[server]`.
fn valid_config(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> PathBuf {
    let path = dir.join("portcullis.toml");
    let text = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nshutdown_delay = \"0s\"\n\n\
         [outpost]\nurl = \"http://127.0.0.1:9\"\n\n\
         [fallback]\nhtpasswd_file = \"{}\"\n\n[log]\nformat = \"text\"\n",
        htpasswd(dir).display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A file with exactly three problems, on lines 2, 6 and 9.
const THREE_PROBLEMS: &str = "[server]\n\
listen = \"not an address\"\n\
\n\
[outpost]\n\
url = \"http://127.0.0.1:9000\"\n\
timeout = \"forever\"\n\
\n\
[cache]\n\
capacity = \"many\"\n";

fn three_problems(dir: &Path) -> PathBuf {
    let path = dir.join("bad.toml");
    std::fs::write(&path, THREE_PROBLEMS).unwrap();
    path
}

fn assert_three_problem_lines(out: &Output, file: &Path) {
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    let lines = stderr_lines(out);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let f = file.display();
    let expected = [
        (2, "server.listen"),
        (6, "outpost.timeout"),
        (9, "cache.capacity"),
    ];
    for (line, (n, key)) in lines.iter().zip(expected) {
        let prefix = format!("{f}:{n}: {key}: ");
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start with {prefix:?}"
        );
        assert!(line.len() > prefix.len(), "{line:?} names no problem");
    }
}

#[test]
fn check_accepts_a_valid_file_with_exit_0() {
    let dir = temp_dir("cli-valid");
    let file = valid_config(&dir, free_port(), free_port());
    let out = run(&["check", "--config", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn check_reports_each_problem_on_its_own_line_with_exit_64() {
    let dir = temp_dir("cli-three");
    let file = three_problems(&dir);
    let out = run(&["check", "--config", file.to_str().unwrap()], None);
    assert_three_problem_lines(&out, &file);
}

#[test]
fn check_names_an_unknown_key_and_its_line() {
    let dir = temp_dir("cli-unknown");
    let file = dir.join("unknown.toml");
    std::fs::write(
        &file,
        "[outpost]\nurl = \"http://127.0.0.1:9000\"\n\n[cache]\nttl = \"5s\"\nbogus = 1\n",
    )
    .unwrap();
    let out = run(&["check", "--config", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let prefix = format!("{}:6: cache.bogus: ", file.display());
    assert!(lines[0].starts_with(&prefix), "{:?}", lines[0]);
    assert!(lines[0].contains("unknown"), "{:?}", lines[0]);
}

#[test]
fn check_reports_a_missing_file_with_exit_64() {
    let dir = temp_dir("cli-missing");
    let file = dir.join("does-not-exist.toml");
    let out = run(&["check", "--config", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("{}:1: config: ", file.display())),
        "{:?}",
        lines[0]
    );
}

#[test]
fn serve_refuses_an_invalid_file_with_the_same_lines_and_no_listener() {
    let dir = temp_dir("cli-serve-bad");
    let file = three_problems(&dir);
    let check = run(&["check", "--config", file.to_str().unwrap()], None);
    let serve = run(&["serve", "--config", file.to_str().unwrap()], None);
    assert_three_problem_lines(&serve, &file);
    assert_eq!(
        stderr_lines(&serve),
        stderr_lines(&check),
        "serve prints exactly what check prints"
    );

    // With a bindable listener and one bad value elsewhere, serve still binds nothing.
    let (listen, admin) = (free_port(), free_port());
    let file = dir.join("bad-cache.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n\n\
             [outpost]\nurl = \"http://127.0.0.1:9\"\n\n[cache]\nttl = \"soon\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", file.to_str().unwrap()])
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::new(cmd.spawn().unwrap());
    // Until it exits, nothing must accept on either port.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !guard.exited() {
        assert!(
            TcpStream::connect(listen).is_err(),
            "serve bound {listen} despite an invalid config"
        );
        assert!(
            TcpStream::connect(admin).is_err(),
            "serve bound {admin} despite an invalid config"
        );
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = wait_output(guard, Duration::from_secs(1));
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("{}:9: cache.ttl: ", file.display())),
        "{:?}",
        lines[0]
    );
}

#[test]
fn serve_refuses_a_malformed_htpasswd_naming_its_line() {
    let dir = temp_dir("cli-htpasswd");
    let file = valid_config(&dir, free_port(), free_port());
    let ht = dir.join("htpasswd");
    let good = std::fs::read_to_string(&ht).unwrap();
    std::fs::write(
        &ht,
        format!("# emergency users\n{good}broken-line-without-a-hash\n"),
    )
    .unwrap();
    for cmd in ["check", "serve"] {
        let out = run(&[cmd, "--config", file.to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{cmd}: {out:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{cmd}: {lines:#?}");
        let line = &lines[0];
        assert!(
            line.contains(&ht.display().to_string()),
            "{cmd}: {line:?} names no htpasswd file"
        );
        assert!(line.contains("fallback.htpasswd_file"), "{cmd}: {line:?}");
        // CONFIG:LINE-OF-THE-KEY: KEY: HTPASSWD:LINE: problem
        let text = std::fs::read_to_string(&file).unwrap();
        let key_line = 1 + text
            .lines()
            .position(|l| l.starts_with("htpasswd_file"))
            .unwrap();
        let head = format!(
            "{}:{key_line}: fallback.htpasswd_file: {}:3: ",
            file.display(),
            ht.display()
        );
        assert!(
            line.starts_with(&head),
            "{cmd}: {line:?} does not start with {head:?}"
        );
        assert!(
            !line.contains("$2"),
            "{cmd}: {line:?} must not quote a hash"
        );
    }
}

#[test]
fn check_lists_every_file_problem_not_only_the_first() {
    let dir = temp_dir("cli-files");
    let file = valid_config(&dir, free_port(), free_port());
    std::fs::write(dir.join("htpasswd"), "admin:plaintext-password\n").unwrap();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "\n[edge]\nlisten_https = \"{}\"\n\n\
         [[edge.cert]]\ncert = \"{d}/missing-a.pem\"\nkey = \"{d}/missing-a.key\"\n\n\
         [[edge.cert]]\ncert = \"{d}/missing-b.pem\"\nkey = \"{d}/missing-b.key\"\n\n\
         [[edge.route]]\nhost = \"app.example\"\nbackend = \"http://127.0.0.1:9\"\n",
        free_port(),
        d = dir.display()
    ));
    std::fs::write(&file, text).unwrap();
    let out = run(&["check", "--config", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].contains("fallback.htpasswd_file: "), "{lines:#?}");
    assert!(lines[1].contains("edge.cert[0].cert: ") && lines[1].contains("missing-a.pem"));
    assert!(lines[2].contains("edge.cert[1].cert: ") && lines[2].contains("missing-b.pem"));
}

#[test]
fn no_config_named_anywhere_is_a_config_error() {
    let out = run(&["check"], None);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    let lines = stderr_lines(&out);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--config") && l.contains("PORTCULLIS_CONFIG")),
        "{lines:#?}"
    );
}

#[test]
fn portcullis_config_names_the_file_when_config_is_absent() {
    let dir = temp_dir("cli-env");
    let good = valid_config(&dir, free_port(), free_port());
    let out = run(&["check"], Some(("PORTCULLIS_CONFIG", &good)));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let bad = three_problems(&dir);
    let out = run(&["check"], Some(("PORTCULLIS_CONFIG", &bad)));
    assert_three_problem_lines(&out, &bad);
    let out = run(&["serve"], Some(("PORTCULLIS_CONFIG", &bad)));
    assert_three_problem_lines(&out, &bad);
    // --config wins over the environment.
    let out = run(
        &["check", "--config", good.to_str().unwrap()],
        Some(("PORTCULLIS_CONFIG", &bad)),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn hash_password_prints_a_bcrypt_line_that_verifies() {
    let mut child = Command::new(BIN)
        .args(["hash-password", "admin"])
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery\n")
        .unwrap();
    let out = wait_output(ChildGuard::new(child), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let hash = line.strip_prefix("admin:").expect("starts with the user");
    assert!(hash.starts_with("$2y$"), "{hash}");
    assert!(bcrypt::verify("correct horse battery", hash).unwrap());
    assert!(
        !bcrypt::verify("correct horse battery\n", hash).unwrap(),
        "the newline is not part of the password"
    );
    assert!(!bcrypt::verify("wrong", hash).unwrap());
}

/// GET `path` on `addr` with a raw HTTP/1.1 request; the status line and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.lines().next().unwrap_or_default().to_owned();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn serve_with_a_valid_file_binds_and_answers_healthz() {
    let dir = temp_dir("cli-serve");
    let (listen, admin) = (free_port(), free_port());
    let file = valid_config(&dir, listen, admin);
    let child = Command::new(BIN)
        .args(["serve", "--config", file.to_str().unwrap()])
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let main = loop {
        if let Ok(reply) = http_get(listen, "/healthz") {
            break reply;
        }
        assert!(!guard.exited(), "serve exited early");
        assert!(
            Instant::now() < deadline,
            "serve did not answer on {listen} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(main.0.starts_with("HTTP/1.1 200"), "{main:?}");
    assert_eq!(main.1.trim_end(), "ok");
    let (status, _) = http_get(admin, "/healthz").unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "admin /healthz: {status}"
    );
    let (status, body) = http_get(admin, "/metrics").unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "admin /metrics: {status}"
    );
    assert!(
        body.contains("portcullis_outpost_connections_opened_total"),
        "{body}"
    );
    let (status, _) = http_get(listen, "/nothing-here").unwrap();
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    drop(guard);
}

#[test]
fn check_warns_about_a_missing_htpasswd_file_and_refuses_an_unusable_outpost_port() {
    let dir = temp_dir("cli-warn");
    let file = valid_config(&dir, free_port(), free_port());
    let ht = htpasswd(&dir);
    std::fs::remove_file(&ht).unwrap();
    let out = run(&["check", "--config", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("{}:", file.display()))
            && lines[0].contains(": fallback.htpasswd_file: warning: ")
            && lines[0].contains(&ht.display().to_string()),
        "{lines:#?}"
    );
    assert!(lines[1].ends_with(": ok"), "{lines:#?}");

    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("http://127.0.0.1:9\"", "http://127.0.0.1:99999\"");
    std::fs::write(&file, text).unwrap();
    let out = run(&["check", "--config", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    let lines = stderr_lines(&out);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(": outpost.url: port \"99999\" is not a TCP port")),
        "{lines:#?}"
    );
}
