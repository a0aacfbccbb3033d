//! The request path: route, pick a backend through the upstream's strategy,
//! forward with rewritten headers, stream the response back.
//!
//! Nothing here blocks, compiles or allocates per backend; every failure a
//! client, backend or plugin can cause ends in a status code and a log line:
//! no route 404, strategy rejects or nothing usable 503, backend unreachable
//! 502, backend too slow 504.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;

use crate::body::{ClientBody, ProxyBody};
use crate::config::FailurePolicy;
use crate::gateway::Gateway;
use crate::plugin::{Choice, PickInput, fallback};
use crate::router::host_of;
use crate::upstream::{Backend, Upstream};
use crate::{forwarded, front};

/// A short plain-text response made by the proxy itself.
pub fn local_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Handles one client request.
pub async fn handle(
    gateway: &Gateway,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    if let Err(refusal) = front::check(&parts) {
        tracing::info!(%peer, %method, status = refusal.status.as_u16(), "refused request: {}", refusal.reason);
        return closing(local_response(refusal.status, refusal.reason));
    }

    // Everything synchronous happens under one load of the route table.
    let (upstream, backend) = {
        let table = gateway.routes();
        let Some(upstream) = table.route(host_of(&parts), &path) else {
            tracing::info!(%peer, %method, path, host = host_of(&parts), "no upstream matches: 404");
            return local_response(
                StatusCode::NOT_FOUND,
                "no upstream serves this host and path",
            );
        };
        let client_ip = forwarded::client_ip(peer.ip(), &parts.headers, &table.trusted_proxies);
        forwarded::rewrite_request(
            &mut parts.headers,
            peer.ip(),
            client_ip,
            "http",
            &table.trusted_proxies,
        );

        let set = upstream.backends.load();
        let input = PickInput {
            set: &set,
            sequence: upstream.next_sequence(),
            client_ip,
            exclude: &[],
            attempt: 0,
        };
        let strategy = upstream.strategy.load();
        let (choice, picked_parts) = strategy.pick(input, parts);
        parts = picked_parts;
        let index = match choice {
            Choice::Backend(i) => Some(i),
            Choice::Fallback(_) if upstream.config.plugin_failure == FailurePolicy::FailClosed => {
                tracing::warn!(upstream = upstream.name(), %peer, %method, path, "strategy failed and the upstream fails closed: 503");
                return local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the balancing strategy failed",
                );
            }
            Choice::Fallback(i) => Some(i),
            Choice::Preference(list) => {
                list.iter()
                    .copied()
                    .find(|&i| set.usable(i, &[]))
                    .or_else(|| match fallback(&input) {
                        Choice::Backend(i) => Some(i),
                        _ => None,
                    })
            }
            Choice::Reject(reason) => {
                tracing::warn!(upstream = upstream.name(), %peer, %method, path, reason, "no backend: 503");
                return local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no backend is available for this request",
                );
            }
        };
        let Some(backend) = index.and_then(|i| set.get(i)) else {
            tracing::warn!(upstream = upstream.name(), %peer, %method, path, "no usable backend: 503");
            return local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend is available for this request",
            );
        };
        (Arc::clone(upstream), Arc::clone(backend))
    };

    // HTTP/2 clients send `:authority` instead of Host; backends get Host.
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = match backend_uri(&backend, &parts.uri) {
        Some(uri) => uri,
        None => return local_response(StatusCode::BAD_REQUEST, "invalid request target"),
    };
    parts.version = http::Version::HTTP_11;

    let guard = backend.start_request();
    let client_failed = Arc::new(AtomicBool::new(false));
    let request = Request::from_parts(parts, ClientBody::new(body, Arc::clone(&client_failed)));
    let timeout = upstream.config.response_timeout;
    match tokio::time::timeout(timeout, upstream.pool.request(request)).await {
        Ok(Ok(mut resp)) => {
            backend.health.record_success();
            forwarded::strip_hop_by_hop(resp.headers_mut());
            resp.map(|b| ProxyBody::upstream(b, guard))
        }
        Ok(Err(e)) if client_failed.load(Ordering::Relaxed) => {
            // The client's body broke (bad chunk, reset): not the backend's
            // fault. The upstream connection is discarded with the request.
            tracing::info!(upstream = upstream.name(), %peer, %method, path, "invalid or aborted request body: 400: {}", error_chain(&e));
            closing(local_response(
                StatusCode::BAD_REQUEST,
                "invalid request body",
            ))
        }
        Ok(Err(e)) => {
            backend_failed(&upstream, &backend);
            let (status, what) = if is_timeout(&e) {
                (StatusCode::GATEWAY_TIMEOUT, "connect timed out")
            } else if e.is_connect() {
                (StatusCode::BAD_GATEWAY, "cannot connect to backend")
            } else {
                (StatusCode::BAD_GATEWAY, "backend connection failed")
            };
            tracing::warn!(
                upstream = upstream.name(), backend = %backend.address, %peer, %method, path,
                status = status.as_u16(), "{what}: {}", error_chain(&e)
            );
            local_response(status, what)
        }
        Err(_) => {
            backend_failed(&upstream, &backend);
            tracing::warn!(
                upstream = upstream.name(), backend = %backend.address, %peer, %method, path,
                status = 504, "backend sent no response head within {timeout:?}"
            );
            local_response(
                StatusCode::GATEWAY_TIMEOUT,
                "backend did not answer in time",
            )
        }
    }
}

/// Asks hyper to close the client connection after this response.
fn closing(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Counts a request the backend failed (connect error, timeout, broken
/// connection), in its totals and against its passive health.
fn backend_failed(upstream: &Upstream, backend: &Backend) {
    backend.record_failure();
    let policy = &upstream.config.passive;
    if backend.health.record_failure(policy) {
        tracing::warn!(
            upstream = upstream.name(), backend = %backend.address,
            "backend taken out for {:?} after {} failure(s) (max-fails)",
            policy.fail_timeout, policy.max_fails
        );
    }
}

/// `http://<backend><path?query>`.
fn backend_uri(backend: &Backend, original: &Uri) -> Option<Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(backend.authority.clone());
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = err.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}
