//! Bodies crossing the proxy: the response body it sends (the backend's body
//! streamed through, holding the backend's in-flight count until it ends, or
//! a short body the proxy made itself), and the client's request body on its
//! way upstream.

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

use crate::upstream::InFlight;

pin_project! {
    /// A proxied or locally generated response body.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// Streamed from a backend.
        Upstream {
            #[pin]
            inner: Incoming,
            // Released when the body ends, fails or is dropped.
            guard: Option<InFlight>,
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

    /// A backend's body, keeping `guard` alive until it is finished.
    pub fn upstream(inner: Incoming, guard: InFlight) -> Self {
        ProxyBody::Upstream {
            inner,
            guard: Some(guard),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ProxyBodyProj::Upstream { inner, guard } => {
                let polled = inner.poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    guard.take();
                }
                polled
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
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
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        failed: Arc<AtomicBool>,
    }
}

impl ClientBody {
    /// Wraps `inner`; `failed` is set if reading it fails.
    pub fn new(inner: Incoming, failed: Arc<AtomicBool>) -> Self {
        Self { inner, failed }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.failed.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
