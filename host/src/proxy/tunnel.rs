//! Upgraded connections: WebSocket (and any other HTTP/1.1 `Upgrade`)
//! passed through to the backend.
//!
//! An HTTP/1.1 request with `Connection: upgrade` and `Upgrade: <protocol>`
//! is forwarded with those two headers kept (other hop-by-hop headers are
//! still removed). When the backend answers `101 Switching Protocols`, the
//! client gets the 101 and both connections are taken over from hyper
//! (`hyper::upgrade::on` on the client's request and on the backend's
//! response); a task copies bytes both ways until either side closes, or
//! until no byte has crossed in either direction for the upstream's
//! `tunnel-idle-timeout`. Any other answer is an ordinary response.
//!
//! The tunnel holds the backend's [`Lease`] (its in-flight count: a
//! WebSocket is a long request to least-conn) and the access log line,
//! written when the tunnel closes with status 101 and the session's
//! duration. The backend connection is never pooled again.
//!
//! Not upgraded: `Upgrade: h2c` (the proxy speaks HTTP/2 itself; the request
//! is served as HTTP/1.1, as RFC 9113 allows), HTTP/1.0, and HTTP/2
//! requests (HTTP/2 has no `Upgrade`; extended CONNECT, RFC 8441, is not
//! offered, so WebSocket clients use HTTP/1.1).

// pin-project-lite cannot carry doc comments on fields.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::{HeaderValue, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::backend::Lease;
use crate::base::workers::TunnelGuard;

/// The `Upgrade` value of a request the proxy passes through, if `parts` is
/// one: HTTP/1.1, `Connection` naming `upgrade`, an `Upgrade` header, and
/// not `h2c`.
pub fn requested(parts: &Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    let mut values = parts.headers.get_all(header::UPGRADE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        // None, or on two lines: not an upgrade this proxy takes part in.
        return None;
    };
    let text = value.to_str().ok()?;
    let h2c = text.split(',').any(|p| {
        p.trim()
            .split('/')
            .next()
            .is_some_and(|name| name.trim().eq_ignore_ascii_case("h2c"))
    });
    (!text.trim().is_empty() && !h2c).then(|| value.clone())
}

/// An upgrade agreed by the backend, to be carried out.
#[derive(Debug)]
pub struct Tunnel {
    /// The client's connection, once hyper has sent it the 101.
    pub client: OnUpgrade,
    /// The backend's connection, after its 101.
    pub backend: OnUpgrade,
    /// The backend's in-flight count and the access log line.
    pub lease: Lease,
    /// Closed after this long without a byte either way.
    pub idle_timeout: Duration,
    /// Counts the tunnel as open until it ends.
    pub guard: TunnelGuard,
    /// For the log.
    pub upstream: String,
    /// For the log.
    pub backend_address: String,
    /// For the log.
    pub peer: SocketAddr,
}

/// How a tunnel ended.
#[derive(Debug)]
enum Ended {
    /// Both sides closed.
    Closed,
    /// Reading or writing failed (a reset).
    Error(std::io::Error),
    /// Nothing crossed for the idle timeout.
    Idle,
    /// One of the two connections could not be taken over.
    NotUpgraded(hyper::Error),
}

impl Tunnel {
    /// Takes both connections over and copies bytes both ways until the
    /// tunnel ends; then releases the lease (which writes the access log
    /// line: `complete` when both sides closed cleanly).
    pub async fn run(self) {
        let Tunnel {
            client,
            backend,
            lease,
            idle_timeout,
            guard,
            upstream,
            backend_address,
            peer,
        } = self;
        let activity = Arc::new(Activity::new());
        let mut up = 0;
        let mut down = 0;
        let ended = match tokio::time::timeout(idle_timeout, async {
            tokio::try_join!(client, backend)
        })
        .await
        {
            Err(_) => Ended::Idle,
            Ok(Err(e)) => Ended::NotUpgraded(e),
            Ok(Ok((client, backend))) => {
                let mut client = Watched::new(TokioIo::new(client), Arc::clone(&activity));
                let mut backend = Watched::new(TokioIo::new(backend), Arc::clone(&activity));
                let ended = tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => match copied {
                        Ok(_) => Ended::Closed,
                        Err(e) => Ended::Error(e),
                    },
                    () = activity.idle(idle_timeout) => Ended::Idle,
                };
                up = client.read;
                down = backend.read;
                ended
            }
        };
        let seconds = activity.since_start().as_secs_f64();
        match &ended {
            Ended::Closed => tracing::debug!(
                upstream, backend = backend_address, %peer, from_client = up, from_backend = down,
                seconds, "tunnel closed"
            ),
            Ended::Idle => tracing::info!(
                upstream, backend = backend_address, %peer, from_client = up, from_backend = down,
                seconds, "tunnel closed: idle for tunnel-idle-timeout ({idle_timeout:?})"
            ),
            Ended::Error(e) => tracing::debug!(
                upstream, backend = backend_address, %peer, from_client = up, from_backend = down,
                seconds, "tunnel ended: {e}"
            ),
            Ended::NotUpgraded(e) => tracing::info!(
                upstream, backend = backend_address, %peer,
                "upgrade not completed (a side closed first): {e}"
            ),
        }
        lease.release(matches!(ended, Ended::Closed));
        drop(guard);
    }
}

/// When a byte last crossed a tunnel, in either direction.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read that returned data.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn since_start(&self) -> Duration {
        self.start.elapsed()
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has crossed for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

pin_project! {
    /// One side of a tunnel: notes activity and counts bytes read.
    struct Watched<T> {
        #[pin]
        io: T,
        activity: Arc<Activity>,
        read: u64,
    }
}

impl<T> Watched<T> {
    fn new(io: T, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            read: 0,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            *this.read += n as u64;
            this.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().version(version).uri("/ws");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).expect("request").into_parts().0
    }

    #[test]
    fn only_http11_upgrades_with_connection_upgrade_pass() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(
            requested(&parts(Version::HTTP_11, &ws))
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert!(requested(&parts(Version::HTTP_10, &ws)).is_none());
        assert!(requested(&parts(Version::HTTP_11, &[("upgrade", "websocket")])).is_none());
        assert!(requested(&parts(Version::HTTP_11, &[("connection", "upgrade")])).is_none());
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ];
        assert!(requested(&parts(Version::HTTP_11, &h2c)).is_none());
        let other = [("connection", "upgrade"), ("upgrade", "foo/2, bar")];
        assert!(requested(&parts(Version::HTTP_11, &other)).is_some());
    }
}
