//! The `switchyard-backend` binary as a container runs it: name from flags
//! or the environment, `check` as the health check, SIGTERM drains.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard-backend");

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// The binary with a clean environment for the variables it reads.
fn backend() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("BACKEND_NAME")
        .env_remove("LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Kills the child if a test fails half-way.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check(addr: SocketAddr) -> ExitStatus {
    backend()
        .args([
            "--listen",
            &addr.to_string(),
            "check",
            "--timeout-ms",
            "1000",
        ])
        .stderr(Stdio::null())
        .status()
        .expect("run switchyard-backend check")
}

/// Starts a backend and waits until its health check passes.
fn start(addr: SocketAddr, configure: impl FnOnce(&mut Command)) -> Guard {
    let mut cmd = backend();
    cmd.args(["--listen", &addr.to_string()]);
    configure(&mut cmd);
    let guard = Guard(cmd.spawn().expect("spawn switchyard-backend"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check(addr).success() {
        assert!(Instant::now() < deadline, "{addr} never became healthy");
        thread::sleep(Duration::from_millis(50));
    }
    guard
}

fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn name_from_flag_beats_env() {
    let addr = free_addr();
    let _b = start(addr, |c| {
        c.args(["--name", "flagged"])
            .env("BACKEND_NAME", "from-env");
    });
    let a = common::get(addr, "/").expect("GET");
    assert_eq!(a.body, "Hello from flagged\n");
    assert_eq!(a.header("x-backend"), Some("flagged"));
}

#[test]
fn name_and_address_from_env() {
    let addr = free_addr();
    let mut cmd = backend();
    cmd.env("BACKEND_NAME", "from-env")
        .env("LISTEN", addr.to_string());
    let _b = Guard(cmd.spawn().expect("spawn"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        match common::get(addr, "/") {
            Ok(a) => break a,
            Err(e) => {
                assert!(Instant::now() < deadline, "{addr}: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(a.body, "Hello from from-env\n");
    assert_eq!(a.header("x-backend"), Some("from-env"));
}

#[test]
fn sigterm_finishes_in_flight_then_exits_zero() {
    let addr = free_addr();
    let mut b = start(addr, |c| {
        c.args(["--name", "term"]);
    });
    let in_flight = thread::spawn(move || common::get(addr, "/delay/700"));
    thread::sleep(Duration::from_millis(200));
    let pid = b.0.id().to_string();
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("run kill");
    assert!(killed.success());

    let a = in_flight
        .join()
        .expect("client thread")
        .expect("the in-flight request is answered");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "Hello from term after 700 ms\n");
    let status = wait_exit(&mut b.0, Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    assert_eq!(check(addr).code(), Some(1), "check fails once it is gone");
}

#[test]
fn a_bad_listen_address_is_an_error() {
    let out = backend()
        .env("LISTEN", "nowhere")
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LISTEN=\"nowhere\""), "{stderr}");
}
