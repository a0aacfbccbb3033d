//! `switchyard run` as a child process, the way a user starts it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Fixture;

/// `switchyard run --config <fixture's config> <args>`, with its listen
/// and admin addresses read from its log (text or JSON) and every line it
/// writes to stdout kept.
pub struct Running {
    /// The proxy's process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin API listens (the fixture's config turns it on).
    pub admin: Option<SocketAddr>,
    /// Every line the proxy wrote to stdout so far.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts the binary on `fx`'s config with `args` after it, and waits
    /// (up to 20 s) for it to log its address.
    pub fn start(fx: &Fixture, args: &[&str]) -> Self {
        Self::start_logging(fx, args, "info")
    }

    /// [`Running::start`] with `RUST_LOG=<filter>`.
    pub fn start_logging(fx: &Fixture, args: &[&str], filter: &str) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .arg("run")
            .arg("--config")
            .arg(fx.config_path())
            .args(args)
            .env("RUST_LOG", filter);
        Self::spawn(command)
    }

    /// Starts `command` (a `switchyard run ...` set up by the caller: its
    /// working directory, config, environment), and waits (up to 20 s)
    /// for it to log its address.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start switchyard");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = field(&line, "listen") {
                    let _ = tx.send((addr, field(&line, "admin")));
                }
                kept.lock().expect("lock").push(line);
            }
        });
        let (addr, admin) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("switchyard logs its address");
        Self {
            child,
            addr: addr.parse().expect("an address"),
            admin: admin.map(|a| a.parse().expect("an admin address")),
            lines,
        }
    }

    /// How many of the lines it wrote so far contain `text`.
    pub fn lines_with(&self, text: &str) -> usize {
        let lines = self.lines.lock().expect("lock");
        lines.iter().filter(|l| l.contains(text)).count()
    }

    /// Sends signal `name` (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Its exit status, if it exits within `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Field `name` of a log line: `name=value` as text, `"name":"value"` as
/// JSON.
fn field(line: &str, name: &str) -> Option<String> {
    let text = format!("{name}=");
    let json = format!("\"{name}\":\"");
    line.split(text.as_str())
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .or_else(|| line.split(json.as_str()).nth(1)?.split('"').next())
        .map(str::to_owned)
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
