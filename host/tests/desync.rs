//! A backend that writes more than its response, a moment after it (a body
//! after a HEAD, 204 or 304 answer, or past its `Content-Length`), must not
//! reach the next request on that connection: the proxy checks an idle
//! connection for stray bytes before it reuses it, and closes it if there
//! are any. Otherwise the next request, often another client's, gets those
//! bytes as its response (a response desync: one client can plant a forged
//! response for another).
//!
//! Fresh clients send one request each, one after another, through a proxy
//! over one scripted backend. The backend answers each request with a
//! per-request token (`X-Token`, and the body where there is one), then, a
//! moment later, writes a complete forged response. Every client must get
//! its own token.
//!
//! Two timings. In the first, the stray bytes come 30 ms after the answer
//! and the next client 150 ms after it: the proxy's event loop has long
//! seen them by then. In the second, the next request has already been
//! read when they come, and the proxy is busy picking a backend (a
//! strategy that spins until its deadline) while they arrive: only a look
//! at the socket itself at checkout sees them, not the readiness the event
//! loop recorded before.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::raw::{Asked, Raw, Step, write};
use common::*;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// When the stray bytes come and when the next client does.
#[derive(Clone, Copy)]
struct Timing {
    /// Clients, one after another.
    clients: usize,
    /// How long after its answer the backend writes the stray bytes.
    stray_after: Duration,
    /// Between one client's response and the next client's request.
    gap: Duration,
    /// Whether every pick spins until its deadline (`SPIN_DEADLINE`).
    slow_pick: bool,
}

/// Stray bytes 30 ms after the answer, the next client 150 ms after it:
/// a margin for a busy machine (bytes the backend writes after the next
/// request went out cannot be told from its response, by any proxy).
const QUIET: Timing = Timing {
    clients: 20,
    stray_after: Duration::from_millis(30),
    gap: Duration::from_millis(150),
    slow_pick: false,
};

/// The next client 20 ms after the answer, the stray bytes 150 ms after
/// it, while the proxy spends `SPIN_DEADLINE` in that client's pick. Five
/// clients: after five failed picks in a row the strategy is paused (and
/// picks are quick again).
const DURING_PICK: Timing = Timing {
    clients: 5,
    stray_after: Duration::from_millis(150),
    gap: Duration::from_millis(20),
    slow_pick: true,
};

/// How long a spinning pick lasts.
const SPIN_DEADLINE: &str = "400ms";

/// The token the client sends, from its path `/<case>/<token>`.
fn token(asked: &Asked) -> String {
    asked.target.rsplit('/').next().unwrap_or("").to_owned()
}

/// A complete response the backend should never have sent.
fn forged() -> Step {
    write("HTTP/1.1 200 OK\r\nX-Token: forged\r\nContent-Length: 6\r\n\r\nforged")
}

/// Answers `/<case>/<token>` with its token, then, `stray_after` later,
/// the forged response.
fn answers(asked: &Asked, stray_after: Duration) -> Vec<Step> {
    let token = token(asked);
    let case = asked.target.split('/').nth(1).unwrap_or("");
    let answer = match case {
        // A HEAD answer says how long the GET's body would be; the body
        // itself follows, unasked.
        "head" => format!("HTTP/1.1 200 OK\r\nX-Token: {token}\r\nContent-Length: 6\r\n\r\n"),
        "no-content" => format!("HTTP/1.1 204 No Content\r\nX-Token: {token}\r\n\r\n"),
        "not-modified" => format!("HTTP/1.1 304 Not Modified\r\nX-Token: {token}\r\n\r\n"),
        // The body as announced; more comes after it.
        _ => format!(
            "HTTP/1.1 200 OK\r\nX-Token: {token}\r\nContent-Length: {}\r\n\r\n{token}",
            token.len()
        ),
    };
    vec![write(&answer), Step::Pause(stray_after), forged()]
}

/// One request from a fresh client (its own connection); the reply, or
/// why there is none. Bounded to 10 s.
async fn fresh_client(
    proxy: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Reply, String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    reply_within(&client, req).await
}

/// Sends `timing.clients` requests `method /<case>/<token>` (with `body`,
/// which makes it go through hyper's client), each from a fresh client,
/// one after another; returns what each client got that was not its own
/// answer: `status` with its token, and its token as the body where the
/// answer has one.
async fn desyncs(timing: Timing, case: &str, method: &str, body: &str, status: u16) -> Vec<String> {
    let stray_after = timing.stray_after;
    let raw = Raw::start(move |asked| answers(asked, stray_after)).await;
    let fx = Fixture::new(&[
        ("round-robin", ROUND_ROBIN),
        ("test-strategy", TEST_STRATEGY),
    ]);
    let strategy = if timing.slow_pick {
        format!(
            "strategy = \"test-strategy\"\nparams = {{ mode = \"spin\" }}\n\
             [plugin-limits]\npick-deadline = \"{SPIN_DEADLINE}\"\n"
        )
    } else {
        String::new()
    };
    // One worker: every request uses the same idle connections.
    // `max-fails = 0`: the backend stays in, whatever happens.
    fx.write_config(&format!(
        "workers = 1\n[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\nmax-fails = 0\n{strategy}",
        raw.addr
    ));
    let proxy = fx.start().await;
    let mut wrong = Vec::new();
    for i in 0..timing.clients {
        let token = format!("client-{i}");
        let expected_body = match (method, status) {
            ("HEAD", _) | (_, 204 | 304) => "",
            _ => token.as_str(),
        };
        match fresh_client(proxy.addr(), method, &format!("/{case}/{token}"), body).await {
            Ok(reply) => {
                let got = reply.headers.get("x-token").and_then(|v| v.to_str().ok());
                if reply.status != status
                    || got != Some(token.as_str())
                    || reply.body != expected_body
                {
                    wrong.push(format!(
                        "{token} got {} x-token {got:?} body {:?}",
                        reply.status, reply.body
                    ));
                }
            }
            Err(e) => wrong.push(format!("{token}: {e}")),
        }
        tokio::time::sleep(timing.gap).await;
    }
    proxy.shutdown().await;
    wrong
}

async fn check(timing: Timing, case: &str, method: &str, body: &str, status: u16) {
    let wrong = desyncs(timing, case, method, body, status).await;
    assert!(
        wrong.is_empty(),
        "{case} ({method}): {} of {} clients got a response that was not theirs:\n{}",
        wrong.len(),
        timing.clients,
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_after_a_head_answer_never_reaches_the_next_client() {
    check(QUIET, "head", "HEAD", "", 200).await;
    check(DURING_PICK, "head", "HEAD", "", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_after_a_204_never_reaches_the_next_client() {
    check(QUIET, "no-content", "GET", "", 204).await;
    check(DURING_PICK, "no-content", "GET", "", 204).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_after_a_304_never_reaches_the_next_client() {
    check(QUIET, "not-modified", "GET", "", 304).await;
    check(DURING_PICK, "not-modified", "GET", "", 304).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_the_content_length_never_reach_the_next_client() {
    check(QUIET, "length", "GET", "", 200).await;
    check(DURING_PICK, "length", "GET", "", 200).await;
}

/// Requests with a body go through hyper's client, on the same pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_the_content_length_never_reach_the_next_client_with_a_body() {
    check(QUIET, "length", "POST", "payload", 200).await;
    check(DURING_PICK, "length", "POST", "payload", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_after_a_204_never_reaches_the_next_client_with_a_body() {
    check(QUIET, "no-content", "POST", "payload", 204).await;
    check(DURING_PICK, "no-content", "POST", "payload", 204).await;
}
