//! A backend that answers each request with bytes the test wrote, so that
//! the test decides the framing exactly (chunk boundaries, pauses, closes,
//! malformed heads), as a misbehaving or unusual server would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One step of an answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Wait this long (the proxy reads what came so far).
    Pause(Duration),
    /// Close the connection.
    Close,
}

/// `text` as one write.
pub fn write(text: &str) -> Step {
    Step::Write(text.as_bytes().to_vec())
}

/// A request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Asked {
    pub method: String,
    pub target: String,
    /// Its head as it arrived: the request line and every field line, each
    /// ending in CRLF, and the empty line.
    pub head: String,
    /// Its body (read by `Content-Length`).
    pub body: Vec<u8>,
}

type Script = dyn Fn(&Asked) -> Vec<Step> + Send + Sync;

/// A running raw backend; stops when dropped.
pub struct Raw {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Request heads read, over all connections.
    pub requests: Arc<AtomicUsize>,
    /// Connections the proxy closed (a read or write found them ended).
    pub closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Raw {
    /// Starts a backend that answers each request with `script(request)`.
    /// A request body is read by its `Content-Length`; after an answer that
    /// does not close, the connection waits for the next request.
    pub async fn start(script: impl Fn(&Asked) -> Vec<Step> + Send + Sync + 'static) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let (conns, reqs, ended) = (
            Arc::clone(&connections),
            Arc::clone(&requests),
            Arc::clone(&closed),
        );
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (script, reqs, ended) =
                    (Arc::clone(&script), Arc::clone(&reqs), Arc::clone(&ended));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    'requests: loop {
                        let Some(end) = read_until(&mut stream, &mut buf, |b| {
                            b.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
                        })
                        .await
                        else {
                            ended.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        let length = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        let Some(length) = read_until(&mut stream, &mut buf, |b| {
                            (b.len() >= length).then_some(length)
                        })
                        .await
                        else {
                            ended.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        let body = buf.drain(..length).collect();
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let mut line = head.split_whitespace();
                        let asked = Asked {
                            method: line.next().unwrap_or("").to_owned(),
                            target: line.next().unwrap_or("").to_owned(),
                            head: head.clone(),
                            body,
                        };
                        for step in script(&asked) {
                            match step {
                                Step::Write(bytes) => {
                                    if stream.write_all(&bytes).await.is_err() {
                                        ended.fetch_add(1, Ordering::SeqCst);
                                        return;
                                    }
                                }
                                Step::Pause(d) => tokio::time::sleep(d).await,
                                Step::Close => break 'requests,
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        Raw {
            addr,
            connections,
            requests,
            closed,
            task,
        }
    }
}

/// Reads into `buf` until `done` finds what it looks for; None if the
/// connection ends first.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    loop {
        if let Some(at) = done(buf) {
            return Some(at);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
