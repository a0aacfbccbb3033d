//! When a failed try is tried again, on another backend.
//!
//! - Nothing reached the backend (connect refused or timed out, or a pooled
//!   connection closed before the request was written): any request is
//!   retried, body included, since the body was never read.
//! - A kept connection the backend closed with no answer at all, as an
//!   idempotent request without a body went out (the backend's idle timeout
//!   racing the request): not a failed try; the request is sent once more on
//!   a new connection to the same backend (`proxy`, as nginx does for its
//!   cached connections).
//! - The request was sent and then the connection failed or the response
//!   head did not arrive within `response-timeout`: only idempotent methods
//!   (GET, HEAD, OPTIONS, PUT, DELETE) without a request body are retried;
//!   a body is streamed to the backend, not kept, so it cannot be sent twice.
//! - A response whose status is listed in `retry-on-status` (none by
//!   default), under the same conditions. It counts toward `max-fails`,
//!   unless it is a 403, 404 or 429 (as in nginx).
//! - An upgrade request (WebSocket handshake: `Upgrade` forwarded, see
//!   [`crate::proxy::tunnel`]) is never sent twice, whatever its method: a backend
//!   that saw it may have started a session (and the handshake's key is
//!   one-off). It is retried only when it reached no backend.
//!
//! At most `retries` more tries per request, each on a backend this request
//! has not tried yet, chosen by the strategy with the tried ones excluded.
//! Retries of requests that reached a backend are capped by a budget, as in
//! Envoy: at any moment at most `retry-budget-percent` of the requests in
//! flight (but always at least `retry-budget-min`) may be such retries
//! waiting for their response, so a failing backend cannot multiply the
//! load on the others. A retry of a request that reached no backend adds no
//! load and is not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};

use crate::base::config::RetryPolicy;
use crate::wire::body::ClientBody;

/// Whether a retried `status` counts against the backend's passive health.
/// As in nginx, 403, 404 and 429 are answers about the request, never
/// unsuccessful attempts, even when `retry-on-status` lists them.
pub fn status_blames_backend(status: http::StatusCode) -> bool {
    !matches!(status.as_u16(), 403 | 404 | 429)
}

/// Methods that may be sent twice (RFC 9110 §9.2.2, less TRACE).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The retries of one upstream in flight now.
#[derive(Debug, Default)]
pub struct RetryBudget {
    active: Arc<AtomicU32>,
}

impl RetryBudget {
    /// A token for one more retry, if `policy` allows it with `in_flight`
    /// requests on the upstream. Held until the retry's response head
    /// arrives.
    pub fn acquire(&self, policy: &RetryPolicy, in_flight: u32) -> Option<RetryToken> {
        let cap = (u64::from(in_flight) * u64::from(policy.budget_percent) / 100)
            .max(u64::from(policy.budget_min));
        let cap = u32::try_from(cap).unwrap_or(u32::MAX);
        self.active
            .try_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| RetryToken(Arc::clone(&self.active)))
    }

    /// Retries in flight now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

/// One retry counted against its upstream's budget until dropped.
#[derive(Debug)]
pub struct RetryToken(Arc<AtomicU32>);

impl Drop for RetryToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `req` may be sent again after it reached a backend:
/// idempotent, bodiless and not an `upgrade` (a WebSocket handshake).
pub fn resendable(req: &Request<ClientBody>, upgrade: bool) -> bool {
    idempotent(req.method()) && req.body().is_empty() && !upgrade
}

/// A copy of a bodiless request's head, kept so that the request can be
/// sent again after hyper's client took it (the own client only borrows
/// it, see [`crate::backend::h1`]).
#[derive(Debug)]
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    /// The fields in order (a list, not a `HeaderMap`: copying one with its
    /// index for every request cost twice as much, and a replay is rare).
    fields: Vec<(HeaderName, HeaderValue)>,
}

impl Replay {
    /// A copy of `req`.
    pub fn of(req: &Request<ClientBody>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            fields: req
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        }
    }

    /// The request again.
    pub fn request(self) -> Request<ClientBody> {
        let mut req = Request::new(ClientBody::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        let headers = req.headers_mut();
        headers.reserve(self.fields.len());
        for (name, value) in self.fields {
            headers.append(name, value);
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_share_of_in_flight_and_a_floor() {
        let policy = RetryPolicy::default();
        let budget = RetryBudget::default();
        // 10 in flight: 20% is 2, the floor 3 wins.
        let tokens: Vec<_> = (0..3).filter_map(|_| budget.acquire(&policy, 10)).collect();
        assert_eq!(tokens.len(), 3);
        assert!(budget.acquire(&policy, 10).is_none());
        // 100 in flight: 20.
        let more: Vec<_> = (0..30)
            .filter_map(|_| budget.acquire(&policy, 100))
            .collect();
        assert_eq!(more.len(), 17);
        drop(tokens);
        drop(more);
        assert_eq!(budget.active(), 0);
        assert!(budget.acquire(&policy, 0).is_some());
    }

    #[test]
    fn upgrade_requests_are_never_sent_again() {
        let mut req = Request::new(ClientBody::empty());
        assert!(resendable(&req, false));
        assert!(!resendable(&req, true));
        *req.method_mut() = Method::POST;
        assert!(!resendable(&req, false));
    }

    #[test]
    fn a_replay_is_the_same_request() {
        let mut req = Request::new(ClientBody::empty());
        *req.method_mut() = Method::PUT;
        *req.uri_mut() = Uri::from_static("/a?b=c");
        let headers = req.headers_mut();
        headers.insert(http::header::HOST, HeaderValue::from_static("example.com"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        headers.insert("x-other", HeaderValue::from_static("3"));
        let again = Replay::of(&req).request();
        assert_eq!(again.method(), Method::PUT);
        assert_eq!(again.uri(), "/a?b=c");
        assert_eq!(again.version(), req.version());
        assert_eq!(again.headers(), req.headers());
        let many: Vec<_> = again.headers().get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2"]);
        assert!(again.body().is_empty());
    }

    #[test]
    fn only_idempotent_methods_replay() {
        assert!(idempotent(&Method::GET));
        assert!(idempotent(&Method::DELETE));
        assert!(!idempotent(&Method::POST));
        assert!(!idempotent(&Method::PATCH));
    }
}
