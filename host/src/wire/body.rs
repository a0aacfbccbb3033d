//! The client's request body on its way upstream, recording whether the
//! client's side failed (so the proxy answers 400 and does not blame the
//! backend), and counting the bytes that went to the backend.

// pin-project-lite cannot carry doc comments on variant fields.
#![allow(missing_docs)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

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
            // Where the bytes read are counted (the backend's total).
            sent: Option<Arc<AtomicU64>>,
        },
        /// No body (a bodiless request sent again).
        Empty,
    }
}

impl ClientBody {
    /// Wraps `inner`; `failed` is set if reading it fails.
    pub fn new(inner: Incoming, failed: Arc<AtomicBool>) -> Self {
        ClientBody::Streaming {
            inner,
            failed,
            sent: None,
        }
    }

    /// Counts the bytes read from now on into `sent` (one relaxed addition
    /// per frame).
    pub fn count_sent(&mut self, counter: &Arc<AtomicU64>) {
        if let ClientBody::Streaming { sent, .. } = self {
            *sent = Some(Arc::clone(counter));
        }
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

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ClientBodyProj::Streaming {
                inner,
                failed,
                sent,
            } => {
                let polled = inner.poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Err(_))) => failed.store(true, Ordering::Relaxed),
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(sent), Some(data)) = (sent, frame.data_ref()) {
                            sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                    }
                    _ => {}
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
