//! Bodies crossing the proxy: the response body it sends (the backend's body
//! streamed through, holding the backend's [`Lease`] until it ends, or a
//! short body the proxy made itself), and the client's request body on its
//! way upstream. A backend's body read by hyper's client is bounded by the
//! upstream's `read-timeout` as the own client's is (see
//! [`Lease::poll_silence`]).

// pin-project-lite cannot carry doc comments on variant fields.
#![allow(missing_docs)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::head::{CarriesFields, RawFields};
use crate::upstream::Lease;
use crate::upstream_h1::{self, H1Body};

/// A response body's error, whichever client read it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A proxied or locally generated response body.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// Streamed from a backend by hyper's client.
        Upstream {
            #[pin]
            inner: Incoming,
            // Released when the body ends (connection reused), fails or is
            // dropped (connection closed).
            lease: Option<Lease>,
        },
        /// Streamed from a backend by the own client; holds its lease.
        H1 {
            inner: H1Body,
        },
        /// Made by the proxy (errors, demo backends).
        Full {
            data: Option<Bytes>,
        },
    }
}

impl ProxyBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        ProxyBody::Full {
            data: Some(data.into()),
        }
    }

    /// The (empty) body of a backend's `101 Switching Protocols`: the
    /// tunnel that follows holds the lease (see [`crate::tunnel`]).
    pub fn switched(inner: Incoming) -> Self {
        ProxyBody::Upstream { inner, lease: None }
    }

    /// Whether the proxy made this body itself (no backend answered).
    pub fn is_local(&self) -> bool {
        matches!(self, ProxyBody::Full { .. })
    }

    /// A backend's body, holding `lease` until it is finished.
    pub fn upstream(inner: Incoming, lease: Lease) -> Self {
        if inner.is_end_stream() {
            // No body (HEAD, 204, 304, empty): the exchange is over.
            lease.release(true);
            return ProxyBody::Upstream { inner, lease: None };
        }
        ProxyBody::Upstream {
            inner,
            lease: Some(lease),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Upstream { mut inner, lease } => {
                let polled = inner.as_mut().poll_frame(cx);
                // The end: hyper stops polling as soon as a body with a
                // known length says it has ended, so that is checked after
                // every frame, not only at `None`.
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => {
                        if let Some(lease) = lease {
                            lease.heard();
                        }
                        inner.is_end_stream()
                    }
                    Poll::Ready(Some(Err(_))) => {
                        lease.take();
                        false
                    }
                    // Waiting for the backend: `read-timeout` runs (the
                    // lease's timer) until a frame comes. When it runs out
                    // the lease ends uncleanly, which closes the connection,
                    // and the client's response is cut.
                    Poll::Pending => {
                        if lease
                            .as_mut()
                            .is_some_and(|l| l.poll_silence(cx).is_ready())
                            && let Some(lease) = lease.take()
                        {
                            let error = upstream_h1::Error::ReadTimeout(lease.timed_out());
                            return Poll::Ready(Some(Err(error.into())));
                        }
                        false
                    }
                };
                if ended && let Some(lease) = lease.take() {
                    lease.release(true);
                }
                polled.map_err(Into::into)
            }
            ProxyBodyProj::H1 { inner } => inner.poll_frame(cx).map_err(Into::into),
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::H1 { inner } => inner.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::H1 { inner } => inner.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project! {
    /// The client's request body on its way upstream. Records whether the
    /// *client's* side failed (a bad chunk, a reset), so that the proxy can
    /// answer 400 and not blame the backend.
    #[project = ClientBodyProj]
    pub enum ClientBody {
        /// The body as the client sends it.
        Streaming {
            #[pin]
            inner: Incoming,
            failed: Arc<AtomicBool>,
        },
        /// No body (a bodiless request sent again).
        Empty,
    }
}

impl ClientBody {
    /// Wraps `inner`; `failed` is set if reading it fails.
    pub fn new(inner: Incoming, failed: Arc<AtomicBool>) -> Self {
        ClientBody::Streaming { inner, failed }
    }

    /// No body.
    pub fn empty() -> Self {
        ClientBody::Empty
    }

    /// Whether there is nothing to send (and so nothing to lose by sending
    /// the request twice).
    pub fn is_empty(&self) -> bool {
        self.is_end_stream()
    }
}

impl CarriesFields for ProxyBody {
    fn take_raw_fields(&mut self) -> Option<RawFields> {
        match self {
            ProxyBody::H1 { inner } => inner.take_raw_fields(),
            ProxyBody::Upstream { .. } | ProxyBody::Full { .. } => None,
        }
    }
}

impl From<H1Body> for ProxyBody {
    fn from(inner: H1Body) -> Self {
        ProxyBody::H1 { inner }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ClientBodyProj::Streaming { inner, failed } => {
                let polled = inner.poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    failed.store(true, Ordering::Relaxed);
                }
                polled
            }
            ClientBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Streaming { inner, .. } => inner.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Streaming { inner, .. } => inner.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}
