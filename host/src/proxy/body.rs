//! The response body the proxy sends: a backend's body streamed through,
//! holding the backend's [`Lease`] until it ends, or a short body the proxy
//! made itself. Whichever client reads a backend's body, each wait on the
//! backend is bounded by the upstream's `read-timeout`
//! ([`Lease::poll_silence`]): past it the response is cut (never made to
//! look whole), the connection closed and the backend counted as failed.

// pin-project-lite cannot carry doc comments on variant fields.
#![allow(missing_docs)]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::backend::Lease;
use crate::backend::h1::H1Body;
use crate::limit::Holds;
use crate::wire::head::{CarriesFields, RawFields};

/// A response body's error, whichever client read it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`Body::poll_frame`] answers.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

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
        /// Streamed from a backend by the own client; settled when it
        /// ends.
        H1 {
            inner: H1Body,
            lease: Option<Lease>,
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
    /// tunnel that follows holds the lease (see [`crate::proxy::tunnel`]).
    pub fn switched(inner: Incoming) -> Self {
        ProxyBody::Upstream { inner, lease: None }
    }

    /// Keeps the request's `limit-conn` counts until the backend's body
    /// ends (a body the proxy made, or one already over, lets them go).
    pub fn hold(&mut self, holds: Holds) {
        match self {
            ProxyBody::Upstream {
                lease: Some(lease), ..
            }
            | ProxyBody::H1 {
                lease: Some(lease), ..
            } => lease.hold(holds),
            _ => {}
        }
    }

    /// Whether the proxy made this body itself (no backend answered).
    pub fn is_local(&self) -> bool {
        matches!(self, ProxyBody::Full { .. })
    }

    /// A body from the own client, holding `lease` until it ends.
    pub fn h1(mut inner: H1Body, lease: Lease) -> Self {
        match inner.take_end() {
            // No body (HEAD, 204, 304, empty): the exchange is over.
            Some(end) => {
                lease.settle(end);
                ProxyBody::H1 { inner, lease: None }
            }
            None => ProxyBody::H1 {
                inner,
                lease: Some(lease),
            },
        }
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

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match self.project() {
            ProxyBodyProj::Upstream { mut inner, lease } => {
                let polled = inner.as_mut().poll_frame(cx);
                // The end: hyper stops polling as soon as a body with a
                // known length says it has ended, so that is checked after
                // every frame, not only at `None`.
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(lease) = lease {
                            lease.heard();
                            if let Some(data) = frame.data_ref() {
                                lease.received(data.len());
                            }
                        }
                        inner.is_end_stream()
                    }
                    Poll::Ready(Some(Err(_))) => {
                        lease.take();
                        false
                    }
                    Poll::Pending => {
                        if let Some(cut) = silence(lease, cx) {
                            return cut;
                        }
                        false
                    }
                };
                if ended && let Some(lease) = lease.take() {
                    lease.release(true);
                }
                polled.map_err(Into::into)
            }
            ProxyBodyProj::H1 { inner, lease } => {
                let polled = inner.poll_frame(cx);
                if inner.take_heard()
                    && let Some(lease) = lease
                {
                    lease.heard();
                }
                if let (Poll::Ready(Some(Ok(frame))), Some(lease)) = (&polled, &*lease)
                    && let Some(data) = frame.data_ref()
                {
                    lease.received(data.len());
                }
                if let Some(end) = inner.take_end()
                    && let Some(lease) = lease.take()
                {
                    lease.settle(end);
                }
                if polled.is_pending()
                    && let Some(cut) = silence(lease, cx)
                {
                    inner.abandon();
                    return cut;
                }
                polled.map_err(Into::into)
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::H1 { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::H1 { inner, .. } => inner.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl CarriesFields for ProxyBody {
    fn take_raw_fields(&mut self) -> Option<RawFields> {
        match self {
            ProxyBody::H1 { inner, .. } => inner.take_raw_fields(),
            ProxyBody::Upstream { .. } | ProxyBody::Full { .. } => None,
        }
    }
}

/// A read of the backend has to wait: `read-timeout` runs (the lease's
/// timer) until something comes. When it runs out the lease ends uncleanly
/// (the connection is closed, the backend counted as failed) and the
/// body fails, which cuts the client's response.
fn silence(lease: &mut Option<Lease>, cx: &mut Context<'_>) -> Option<Polled> {
    if lease.as_mut()?.poll_silence(cx).is_pending() {
        return None;
    }
    let timed_out = lease.take()?.timed_out();
    Some(Poll::Ready(Some(Err(timed_out.into()))))
}
