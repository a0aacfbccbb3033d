//! The request path: route, pick a backend through the upstream's strategy,
//! forward with rewritten headers, stream the response back.
//!
//! Nothing here blocks, compiles or allocates per backend; every failure a
//! client, backend or plugin can cause ends in a status code and a log line:
//! no route 404, strategy rejects or nothing usable 503, backend unreachable
//! 502, backend too slow 504. A failed try is tried again on another backend
//! when [`crate::backend::retry`] says it may be. An upgrade request (WebSocket) that
//! the backend answers with 101 becomes a tunnel ([`crate::proxy::tunnel`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::body::ProxyBody;
use super::tunnel::{self, Tunnel};
use crate::backend::h1::{self, H1Body};
use crate::backend::pool::{self, Conn, ConnectError, Sender};
use crate::backend::retry::{self, Replay, RetryToken};
use crate::backend::{Backend, BackendSet, InFlight, Lease, Terms};
use crate::base::access;
use crate::base::clock::{self, Instant};
use crate::base::config::FailurePolicy;
use crate::base::workers::{self, Tunnels};
use crate::gateway::Gateway;
use crate::gateway::router::RouteTable;
use crate::gateway::upstream::Upstream;
use crate::limit::{Gate, Holds, Reason, Refusal, Verdict};
use crate::plugin::{Choice, Gated, PickInput, fallback};
use crate::wire::body::ClientBody;
use crate::wire::head::host_of;
use crate::wire::{forwarded, front};

/// Pooled connections found closing that one try takes before it opens a
/// new connection.
const MAX_STALE: u32 = 3;

/// How the client reached the proxy: what `X-Forwarded-Proto` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// The plain listener.
    Http,
    /// The TLS listener (`[tls]`).
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A client connection as the request path sees it, made once per
/// connection.
#[derive(Debug)]
pub struct Client {
    /// Its address.
    pub peer: SocketAddr,
    /// How it reached the proxy.
    pub scheme: Scheme,
    /// Its address for the forwarding headers.
    forwarded: forwarded::Peer,
}

impl Client {
    /// The connection from `peer` over `scheme`.
    pub fn new(peer: SocketAddr, scheme: Scheme) -> Self {
        Self {
            peer,
            scheme,
            forwarded: forwarded::Peer::new(peer.ip()),
        }
    }
}

/// A client's upgrade request on its way: the protocol it asked for and
/// its connection, to be taken over if the backend agrees.
struct ClientUpgrade {
    protocol: HeaderValue,
    on: OnUpgrade,
    tunnels: Arc<Tunnels>,
}

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

/// Handles one client request that came over `client`'s connection: its
/// body as hyper's server reads it, or none (the front's own HTTP/1.1
/// server, [`front::h1`], takes only requests without one). Its response
/// keeps it counted in flight on the connection (`conn`) until it has been
/// sent.
///
/// The one `async` step of a request; what comes before and after it are
/// plain functions. An `async fn` keeps its arguments for its whole life,
/// so every level that passed the request on kept one more copy of it in
/// the request's future, which is made whole and then copied into its box
/// for every request.
///
/// A plain function returning an `async` block, not an `async fn`: an
/// `async fn` keeps each argument twice in its future (as passed, and as
/// the binding its body uses), and this future is boxed per request.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub fn handle(
    gateway: Arc<Gateway>,
    client: Arc<Client>,
    conn: front::Admitted,
    req: Request<Option<Incoming>>,
) -> impl Future<Output = Result<Response<front::Tracked<ProxyBody>>, Infallible>> + Send + 'static
{
    async move {
        // The front stops following an HTTP/1 connection after a head that asks
        // to switch protocols (as hyper does); unless the switch happens, that
        // connection carries no further request.
        let switching = req.version() == Version::HTTP_11
            && (req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE));
        let resp = {
            // Taken apart in a statement of its own: a `match` on the admission
            // around the await would keep all of it in the request's future.
            let (mut exchange, parts, body) = match admit(&gateway, &client, &conn, req) {
                Admission::Answered(resp) => return Ok(answer(resp, switching, conn)),
                Admission::Forward(exchange, parts, body) => (exchange, parts, body),
            };
            let mut resp = exchange.run(parts, body).await;
            exchange.finish(&mut resp);
            // The exchange (which borrows `conn`) ends with this block, where it
            // is: `drop(exchange)` would copy it first.
            resp
        };
        Ok(answer(resp, switching, conn))
    }
}

/// The response as the client gets it: a switch of protocols that did not
/// happen closes the connection, and the response is counted in flight on
/// it until sent.
fn answer(
    resp: Response<ProxyBody>,
    switching: bool,
    conn: front::Admitted,
) -> Response<front::Tracked<ProxyBody>> {
    let resp = if switching && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        closing(resp)
    } else {
        resp
    };
    resp.map(|body| front::Tracked::new(body, conn))
}

/// What [`admit`] made of a request.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per request and taken apart at once; a box would be an allocation per request"
)]
enum Admission<'c> {
    /// The proxy answers it itself (refused, no route, ...).
    Answered(Response<ProxyBody>),
    /// It goes to a backend of the upstream it was routed to.
    Forward(Exchange<'c>, Parts, ClientBody),
}

/// Checks, routes and rewrites a request: everything before the first
/// try, under one load of the route table.
fn admit<'c>(
    gateway: &Gateway,
    client: &Client,
    conn: &'c front::Admitted,
    req: Request<Option<Incoming>>,
) -> Admission<'c> {
    let peer = client.peer;
    let (mut parts, body) = req.into_parts();
    // Everything synchronous happens under one load of the route table.
    let table = gateway.routes();
    let mut log = table.access_log.then(|| {
        access::Entry::new(
            clock::now(),
            peer.ip(),
            parts.method.clone(),
            parts.uri.clone(),
        )
    });
    if let Some(resp) = refused(conn, &mut parts, peer) {
        return Admission::Answered(answered_here(resp, log));
    }
    let upgrade = upgrade_asked(&mut parts, gateway);
    let Some((upstream, client_ip)) = route(&table, client, &mut parts, &mut log) else {
        let resp = local_response(
            StatusCode::NOT_FOUND,
            "no upstream serves this host and path",
        );
        return Admission::Answered(answered_here(resp, log));
    };
    let holds = match gate(&upstream, &mut parts, client_ip, &mut log) {
        Ok(holds) => holds,
        Err(resp) => {
            upstream.local_responses.record(resp.status());
            return Admission::Answered(answered_here(resp, log));
        }
    };
    let set = upstream.backends.load_full();
    // Not held across the awaits below: a reload may retire this table.
    drop(table);
    to_backend_form(&mut parts, upgrade.as_ref());

    let client_failed = Arc::new(AtomicBool::new(false));
    let body = match body {
        Some(body) => ClientBody::new(body, Arc::clone(&client_failed)),
        None => ClientBody::empty(),
    };
    let exchange = Exchange {
        front: conn,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        upstream,
        set,
        peer,
        client_ip,
        client_failed,
        tried: Vec::new(),
        preference: None,
        retry: None,
        log,
        upgrade,
        holds,
    };
    Admission::Forward(exchange, parts, body)
}

/// The upstream's admission rules (`deny`, `allow`, `limit-req`,
/// `limit-conn`), then its admission plugin, applied to the request: Ok
/// with the counts it holds (the plugin may have added headers to
/// `parts`), or the answer that turns it away.
#[allow(
    clippy::result_large_err,
    reason = "made once per request and answered at once; a box would be an allocation per refusal"
)]
fn gate(
    upstream: &Upstream,
    parts: &mut Parts,
    client_ip: IpAddr,
    log: &mut Option<Box<access::Entry>>,
) -> Result<Holds, Response<ProxyBody>> {
    let Some(gate) = &upstream.gate else {
        return Ok(Holds::default());
    };
    let verdict = gate.check(&parts.headers, client_ip, clock::now_ns());
    if let Some(log) = log {
        log.admission(verdict.label());
    }
    let refusal = match verdict {
        Verdict::Pass(holds, _) => match &upstream.admission {
            None => return Ok(holds),
            Some(admission) => {
                return admit_plugin(upstream, gate, admission, holds, parts, client_ip, log);
            }
        },
        Verdict::Refuse(refusal) => refusal,
    };
    // Not at `info`: a flood would flood the log; the access log and
    // `switchyard_admission_total` count every refusal.
    tracing::debug!(
        upstream = upstream.name(), client = %client_ip, method = %parts.method,
        path = parts.uri.path(), status = refusal.status.as_u16(),
        reason = refusal.reason.as_str(), "refused by the upstream's admission rules"
    );
    Err(turned_away(&refusal, refusal.reason.message()))
}

/// The upstream's admission plugin asked about a request the rules let
/// in: Ok with what the request holds (the rules' counts and the plugin's
/// acquisitions), or its refusal; a failed plugin lets the request go on
/// unless the upstream fails closed (503).
#[allow(
    clippy::result_large_err,
    reason = "made once per request and answered at once; a box would be an allocation per refusal"
)]
fn admit_plugin(
    upstream: &Upstream,
    gate: &Gate,
    admission: &arc_swap::ArcSwap<crate::plugin::Admission>,
    mut holds: Holds,
    parts: &mut Parts,
    client_ip: IpAddr,
    log: &mut Option<Box<access::Entry>>,
) -> Result<Holds, Response<ProxyBody>> {
    let gated = admission.load().admit(client_ip, parts, &mut holds);
    let (status, message, retry_after, reason) = match gated {
        Gated::Allow => {
            gate.tally.allowed();
            return Ok(holds);
        }
        Gated::Failed if upstream.config.plugin_failure == FailurePolicy::FailOpen => {
            gate.tally.allowed();
            return Ok(holds);
        }
        Gated::Failed => {
            tracing::warn!(upstream = upstream.name(), client = %client_ip, method = %parts.method, path = parts.uri.path(), "admission plugin failed and the upstream fails closed: 503");
            let reason = Reason::PluginFailure;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                reason.message().to_owned(),
                None,
                reason,
            )
        }
        Gated::Deny {
            status,
            reason,
            retry_after,
        } => (status, reason, retry_after, Reason::Plugin),
    };
    // Nothing the rules or the plugin acquired stays counted.
    drop(holds);
    let refusal = Refusal {
        status,
        retry_after: retry_after.map(u64::from),
        reason,
    };
    gate.tally.denied(reason);
    if let Some(log) = log {
        log.admission(refusal.label());
    }
    tracing::debug!(
        upstream = upstream.name(), client = %client_ip, method = %parts.method,
        path = parts.uri.path(), status = status.as_u16(), reason = %message,
        "refused by the upstream's admission plugin"
    );
    Err(turned_away(&refusal, &message))
}

/// The answer to a request turned away by the admission rules or plugin:
/// its status (403, 429, the limit's or the plugin's), `message`, and
/// `Retry-After` when the refusal says when.
fn turned_away(refusal: &Refusal, message: &str) -> Response<ProxyBody> {
    let mut resp = local_response(refusal.status, message);
    if let Some(secs) = refusal.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The proxy's own answer to a request it refuses before routing: a head
/// the front refused (it arrives as a stand-in), an HTTP/2 head that fails
/// the front's checks (hyper parses those itself), or CONNECT.
fn refused(
    conn: &front::Admitted,
    parts: &mut Parts,
    peer: SocketAddr,
) -> Option<Response<ProxyBody>> {
    let refused = match conn.refusal() {
        Some(refusal) => Err(refusal),
        None if parts.version == Version::HTTP_2 => {
            // HTTP/1.1 allows one Cookie line (RFC 9113 8.2.3).
            front::join_cookies(&mut parts.headers);
            front::check(parts)
        }
        None => Ok(()),
    };
    if let Err(refusal) = refused {
        tracing::info!(%peer, method = %parts.method, status = refusal.status.as_u16(), "refused request: {}", refusal.reason);
        return Some(closing(local_response(refusal.status, refusal.reason)));
    }
    if parts.method == Method::CONNECT {
        // A reverse proxy has nothing to tunnel to (and HTTP/2's extended
        // CONNECT for WebSockets is not offered).
        tracing::info!(%peer, "CONNECT refused: 405");
        let mut resp = local_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported by this reverse proxy",
        );
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        return Some(resp);
    }
    None
}

/// `resp`, answered by the proxy before any backend was tried, with its
/// access log line written.
fn answered_here(
    resp: Response<ProxyBody>,
    log: Option<Box<access::Entry>>,
) -> Response<ProxyBody> {
    if let Some(mut log) = log {
        log.answered(None, resp.status().as_u16(), 0);
        log.completed();
    }
    resp
}

/// The client's upgrade request (WebSocket), if it is one the proxy passes
/// on: `Connection: upgrade` and `Upgrade` are kept, and the client's
/// connection is taken from hyper if the backend answers 101. hyper only
/// offers that for a head with `Upgrade` (the own server takes none), so
/// the fields are not looked at otherwise.
fn upgrade_asked(parts: &mut Parts, gateway: &Gateway) -> Option<ClientUpgrade> {
    let on = parts.extensions.remove::<OnUpgrade>()?;
    tunnel::requested(parts).map(|protocol| ClientUpgrade {
        protocol,
        on,
        tunnels: Arc::clone(gateway.tunnels()),
    })
}

/// The upstream that serves the request (None: no upstream does, 404), and
/// the client's address; the forwarding fields are rewritten for it.
fn route(
    table: &RouteTable,
    client: &Client,
    parts: &mut Parts,
    log: &mut Option<Box<access::Entry>>,
) -> Option<(Arc<Upstream>, IpAddr)> {
    let peer = client.peer;
    let Some(upstream) = table.route(parts) else {
        tracing::info!(%peer, method = %parts.method, path = parts.uri.path(), host = host_of(parts), "no upstream matches: 404");
        return None;
    };
    let client_ip = forwarded::client_ip(peer.ip(), &parts.headers, &table.trusted_proxies);
    if let Some(log) = log {
        log.client(client_ip);
        log.upstream(upstream.name());
    }
    forwarded::rewrite_request(
        &mut parts.headers,
        &client.forwarded,
        client_ip,
        client.scheme.as_str(),
        &table.trusted_proxies,
    );
    Some((Arc::clone(upstream), client_ip))
}

/// The request as a backend gets it: HTTP/1.1, `Host` (HTTP/2 clients send
/// `:authority` instead), the target in origin form, and an upgrade's
/// `Connection` and `Upgrade`.
fn to_backend_form(parts: &mut Parts, upgrade: Option<&ClientUpgrade>) {
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
    }
    parts.version = http::Version::HTTP_11;
    if let Some(upgrade) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, upgrade.protocol.clone());
    }
}

/// One client request on its way through an upstream: its tries, and what
/// is needed to pick again and to log.
struct Exchange<'c> {
    /// The client connection's state shared with the front.
    front: &'c front::Admitted,
    method: Method,
    uri: Uri,
    upstream: Arc<Upstream>,
    set: Arc<BackendSet>,
    peer: SocketAddr,
    client_ip: IpAddr,
    client_failed: Arc<AtomicBool>,
    /// Backends that failed this request (excluded from later picks).
    tried: Vec<u32>,
    /// The strategy's ordered list, when it answered with one.
    preference: Option<Vec<u32>>,
    /// This request's place in the retry budget while a retry is on.
    retry: Option<RetryToken>,
    /// The access log line, when the access log is on.
    log: Option<Box<access::Entry>>,
    /// The client's upgrade request, if it is one.
    upgrade: Option<ClientUpgrade>,
    /// Its `limit-conn` counts: handed to the response's body, or to the
    /// tunnel.
    holds: Holds,
}

/// The end of one try. A request that may be sent again (see
/// [`retry::resendable`]) comes back with a response or a failure after it
/// was sent: the own client only lent it; what hyper's client took is
/// rebuilt from a copy.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per try and taken apart at once; a box would be an allocation per request"
)]
enum Tried {
    /// A response head arrived.
    Response(Response<Answer>, InFlight, Option<Request<ClientBody>>),
    /// Nothing reached the backend; the request is intact.
    NotSent(Request<ClientBody>, Failure),
    /// The request was (at least partly) sent, then the exchange failed.
    Sent(Failure, Option<Request<ClientBody>>),
}

/// What a send that got no response head means for the request (which is
/// whole again: the own client lent it, or hyper gave it back).
enum Failed {
    /// It goes on another connection.
    Retake(Retake),
    /// The try failed, and nothing reached the backend.
    NotSent(Failure),
    /// The try failed after the request was (at least partly) sent.
    Sent(Failure),
}

/// Which connection a request that comes back goes on.
enum Retake {
    /// Another pooled one, if any (this one was closing).
    Pooled,
    /// A new one (a kept connection closed with no answer).
    New,
}

/// A backend's response body, with what the client that read its head
/// needs to finish the exchange.
enum Answer {
    /// hyper's client: its connection goes back to the pool when the body
    /// has been read.
    Hyper(Incoming, Sender),
    /// The own client: the body holds its connection.
    H1(H1Body),
}

/// How a try failed, for the status, the log and passive health.
enum Failure {
    Connect(ConnectError),
    Broken { error: Broken, reused: bool },
    Timeout(Duration),
}

/// A connection that failed during an exchange, by client.
enum Broken {
    Hyper(hyper::Error),
    H1(h1::Error),
}

impl Broken {
    fn error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Broken::Hyper(e) => e,
            Broken::H1(e) => e,
        }
    }

    /// Whether the connection closed before any of a response came.
    fn before_response(&self) -> bool {
        match self {
            Broken::Hyper(e) => e.is_incomplete_message(),
            Broken::H1(e) => e.no_response(),
        }
    }
}

impl Failure {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Failure::Connect(ConnectError::TimedOut(_)) => {
                (StatusCode::GATEWAY_TIMEOUT, "connect timed out")
            }
            Failure::Connect(_) => (StatusCode::BAD_GATEWAY, "cannot connect to backend"),
            Failure::Broken { .. } => (StatusCode::BAD_GATEWAY, "backend connection failed"),
            Failure::Timeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "backend did not answer in time",
            ),
        }
    }

    /// Whether this says something about the backend's health. A reused
    /// connection that closed with no response at all is most likely the
    /// backend closing an idle connection as the request went out.
    fn blames_backend(&self) -> bool {
        !matches!(self, Failure::Broken { error, reused: true } if error.before_response())
    }

    fn detail(&self) -> String {
        match self {
            Failure::Connect(e) => e.to_string(),
            Failure::Broken { error, .. } => error_chain(error.error()),
            Failure::Timeout(t) => format!("no response head within {t:?}"),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail())
    }
}

impl Exchange<'_> {
    /// What is left once `resp` goes to the client: a local answer is
    /// counted, and the access log line written unless a backend's response
    /// writes it when it ends.
    fn finish(&mut self, resp: &mut Response<ProxyBody>) {
        resp.body_mut().hold(std::mem::take(&mut self.holds));
        if resp.body().is_local() {
            self.upstream.local_responses.record(resp.status());
        }
        // Not handed to a backend's response: the proxy answered, or a kept
        // `retry-on-status` answer is passed on.
        if let Some(mut log) = self.log.take() {
            log.answered(None, resp.status().as_u16(), self.retries());
            log.completed();
        }
    }

    /// (Not an `async fn`, for the reason given at [`handle`].)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn run(
        &mut self,
        mut parts: Parts,
        mut body: ClientBody,
    ) -> impl Future<Output = Response<ProxyBody>> {
        async move {
            let upstream = Arc::clone(&self.upstream);
            let policy = &upstream.config.retry;
            // What the client gets if no further try happens.
            let mut last: Option<Response<ProxyBody>> = None;
            for attempt in 0..=policy.retries {
                let index = match self.pick(&mut parts, attempt) {
                    Ok(index) => index,
                    Err(refused) => return last.unwrap_or_else(|| refused.response()),
                };
                let Some(backend) = self.set.get(index).cloned() else {
                    return last.unwrap_or_else(no_backend);
                };
                if attempt > 0 {
                    self.upstream.retries.fetch_add(1, Ordering::Relaxed);
                }
                let more = attempt < policy.retries;
                // In a block: the request is in the try's future, and a local
                // holding it across the await would take its room twice.
                let tried = {
                    let request = Request::from_parts(parts, body);
                    // A forwarded request keeps `Upgrade` only when it is one.
                    let resendable = more && retry::resendable(&request, self.upgrade.is_some());
                    self.try_backend(&backend, request, resendable)
                };
                let (failure, sent) = match tried.await {
                    Tried::Response(resp, in_flight, again) => {
                        let again = match again {
                            Some(again) if policy.retries_status(resp.status()) => again,
                            _ => return self.respond(resp, in_flight, &backend),
                        };
                        let status = resp.status();
                        if retry::status_blames_backend(status) {
                            self.upstream
                                .backend_failed(&backend, &format_args!("answered {status}"));
                        }
                        // Kept (not logged) in case a retry answers instead.
                        let log = self.log.take();
                        let resp = self.respond(resp, in_flight, &backend);
                        self.log = log;
                        self.tried.push(index);
                        if !self.budget(true) {
                            return resp;
                        }
                        backend.record_retried();
                        tracing::info!(
                            upstream = self.upstream.name(), backend = %backend.address, peer = %self.peer,
                            method = %self.method, path = self.uri.path(), status = status.as_u16(),
                            "retry-on-status: trying another backend"
                        );
                        last = Some(resp);
                        (parts, body) = again.into_parts();
                        continue;
                    }
                    Tried::NotSent(request, failure) => {
                        (parts, body) = request.into_parts();
                        (failure, false)
                    }
                    Tried::Sent(..) if self.client_failed.load(Ordering::Relaxed) => {
                        // The client's body broke (bad chunk, too large, stalled,
                        // reset): not the backend's fault, and nothing to retry.
                        let refusal = self.front.refusal().unwrap_or(front::refuse(
                            StatusCode::BAD_REQUEST,
                            "invalid or aborted request body",
                        ));
                        tracing::info!(upstream = self.upstream.name(), peer = %self.peer, method = %self.method, path = self.uri.path(), status = refusal.status.as_u16(), "request body refused: {}", refusal.reason);
                        return closing(local_response(refusal.status, refusal.reason));
                    }
                    Tried::Sent(failure, again) => match again {
                        Some(again) => {
                            (parts, body) = again.into_parts();
                            (failure, true)
                        }
                        None => {
                            self.failed(&backend, &failure, "");
                            return self.failure_response(&failure);
                        }
                    },
                };
                // `parts` and `body` hold the request again.
                self.tried.push(index);
                if more && self.budget(sent) {
                    backend.record_retried();
                    self.failed(&backend, &failure, "; trying another backend");
                    last = Some(self.failure_response(&failure));
                } else {
                    self.failed(&backend, &failure, "");
                    return self.failure_response(&failure);
                }
            }
            last.unwrap_or_else(no_backend)
        }
    }

    /// Picks a backend not tried yet. `parts` is lent to the strategy (it
    /// may read the method, path and headers).
    fn pick(&mut self, parts: &mut Parts, attempt: u32) -> Result<u32, NoPick> {
        // A preference list from an earlier try is walked before asking
        // again.
        if let Some(i) = self.preference.as_ref().and_then(|list| {
            list.iter()
                .copied()
                .find(|&i| self.set.usable(i, &self.tried))
        }) {
            return Ok(i);
        }
        let input = PickInput {
            set: &self.set,
            sequence: self.upstream.next_sequence(),
            client_ip: self.client_ip,
            exclude: &self.tried,
            attempt,
        };
        let choice = if self.upstream.native {
            fallback(&input)
        } else {
            let strategy = self.upstream.strategy.load();
            strategy.pick(input, parts)
        };
        if let Some(shadow) = &self.upstream.shadow {
            shadow.observe(input, parts, &choice);
        }
        match choice {
            Choice::Backend(i) => Ok(i),
            Choice::Fallback(_)
                if self.upstream.config.plugin_failure == FailurePolicy::FailClosed =>
            {
                tracing::warn!(upstream = self.upstream.name(), peer = %self.peer, method = %self.method, path = self.uri.path(), "strategy failed and the upstream fails closed: 503");
                Err(NoPick::StrategyFailed)
            }
            Choice::Fallback(i) => Ok(i),
            Choice::Preference(list) => {
                let first = list
                    .iter()
                    .copied()
                    .find(|&i| self.set.usable(i, &self.tried))
                    .or_else(|| match fallback(&input) {
                        Choice::Backend(i) => Some(i),
                        _ => None,
                    });
                self.preference = Some(list);
                first.ok_or_else(|| {
                    tracing::warn!(upstream = self.upstream.name(), peer = %self.peer, method = %self.method, path = self.uri.path(), "no usable backend: 503");
                    NoPick::NoBackend
                })
            }
            Choice::Reject(reason) => {
                tracing::warn!(upstream = self.upstream.name(), peer = %self.peer, method = %self.method, path = self.uri.path(), reason, "no backend: 503");
                Err(NoPick::NoBackend)
            }
        }
    }

    /// Sends `request` to `backend` on a pooled or new connection: a
    /// bodiless request that is not an upgrade through the own client
    /// ([`h1`]), which only borrows it, any other through hyper's, which
    /// takes it (a copy is kept if it may be sent again). A pooled
    /// connection that turns out to be closing hands the request back
    /// unsent; after a few of those, a new connection. What a failed send
    /// means is decided by [`own_failed`] and [`hyper_failed`].
    ///
    /// The sends stay in this one `async` block: as futures of their own
    /// they cost more instructions per request, in moves of the request and
    /// the response through them (examples/bench/HISTORY.md).
    ///
    /// (Not an `async fn`, for the reason given at [`handle`].)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn try_backend(
        &self,
        backend: &Arc<Backend>,
        mut request: Request<ClientBody>,
        resendable: bool,
    ) -> impl Future<Output = Tried> {
        async move {
            let in_flight = backend.start_request();
            let started = clock::now();
            let settings = &self.upstream.pool;
            let timeout = self.head_timeout();
            let own = h1::handles(&request, self.upgrade.is_some());
            let mut stale = 0;
            loop {
                let pooled = if stale < MAX_STALE {
                    backend.pool.checkout(settings, started)
                } else {
                    None
                };
                let Conn { sender, reused } = match pooled {
                    Some(conn) => conn,
                    None => match pool::connect(backend.addr, settings.connect_timeout).await {
                        Ok(conn) => {
                            backend.record_connect();
                            conn
                        }
                        Err(e) => return Tried::NotSent(request, Failure::Connect(e)),
                    },
                };
                // The worker's reused timer: a new one per request costs a
                // wake-up of the event loop (see `workers::timer`).
                let deadline = workers::timer(timeout);
                let failed = match sender {
                    Sender::H1(conn) if own => {
                        let answer = tokio::select! {
                            biased;
                            answer = h1::send(conn, &request) => answer,
                            () = deadline => {
                                return Tried::Sent(Failure::Timeout(timeout), resendable.then_some(request));
                            }
                        };
                        match answer {
                            Ok(resp) => {
                                let resp = resp.map(Answer::H1);
                                let again = resendable.then_some(request);
                                return self.answered(backend, started, resp, in_flight, again);
                            }
                            Err(e) => own_failed(e, reused, &request, backend),
                        }
                    }
                    sender => {
                        let (mut sender, socket) = match sender {
                            Sender::Hyper(sender, socket) => (sender, socket),
                            Sender::H1(conn) => match pool::handshake(conn.into_stream()).await {
                                Ok(hyper) => hyper,
                                Err(e) => return Tried::NotSent(request, Failure::Connect(e)),
                            },
                        };
                        request.body_mut().count_sent(&backend.bytes_sent);
                        let replay = resendable.then(|| Replay::of(&request));
                        let answer = tokio::select! {
                            biased;
                            answer = sender.try_send_request(request) => answer,
                            () = deadline => {
                                return Tried::Sent(Failure::Timeout(timeout), replay.map(Replay::request));
                            }
                        };
                        match answer {
                            Ok(resp) => {
                                let resp = resp
                                    .map(|body| Answer::Hyper(body, Sender::Hyper(sender, socket)));
                                let again = replay.map(Replay::request);
                                return self.answered(backend, started, resp, in_flight, again);
                            }
                            Err(e) => match hyper_failed(e, reused) {
                                Ok((failed, unsent)) => {
                                    request = unsent;
                                    failed
                                }
                                Err(failure) => {
                                    return Tried::Sent(failure, replay.map(Replay::request));
                                }
                            },
                        }
                    }
                };
                // `request` is whole again: it was lent, or came back unsent.
                match failed {
                    Failed::Retake(Retake::Pooled) => stale += 1,
                    Failed::Retake(Retake::New) => stale = MAX_STALE,
                    Failed::NotSent(failure) => return Tried::NotSent(request, failure),
                    Failed::Sent(failure) => {
                        return Tried::Sent(failure, resendable.then_some(request));
                    }
                }
            }
        }
    }

    /// The wait for a response head: `response-timeout`, or `read-timeout`
    /// when shorter (as nginx's `proxy_read_timeout` bounds the head too).
    fn head_timeout(&self) -> Duration {
        let config = &self.upstream.config;
        config.response_timeout.min(config.read_timeout)
    }

    /// A response head came from `backend`, `started` after the try began.
    fn answered(
        &self,
        backend: &Backend,
        started: Instant,
        resp: Response<Answer>,
        in_flight: InFlight,
        again: Option<Request<ClientBody>>,
    ) -> Tried {
        let now = clock::now();
        let us =
            u64::try_from(now.saturating_duration_since(started).as_micros()).unwrap_or(u64::MAX);
        backend.latency.record(us, now);
        backend.responses.record(resp.status());
        Tried::Response(resp, in_flight, again)
    }

    /// The backend's response on its way to the client.
    fn respond(
        &mut self,
        resp: Response<Answer>,
        in_flight: InFlight,
        backend: &Backend,
    ) -> Response<ProxyBody> {
        let (mut parts, answer) = resp.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // An upgraded connection is no longer HTTP: never pooled. The
            // own client only takes requests that are not upgrades.
            return match answer {
                Answer::Hyper(body, _) => {
                    self.switch(Response::from_parts(parts, body), in_flight, backend)
                }
                Answer::H1(_) => self.switched_unasked(backend),
            };
        }
        if !matches!(&answer, Answer::H1(body) if body.hop_by_hop_stripped()) {
            forwarded::strip_hop_by_hop(&mut parts.headers);
        }
        if let Some(name) = &self.upstream.config.backend_header {
            parts
                .headers
                .insert(name.clone(), backend.id_header.clone());
        }
        // The retry (if any) is over: its place in the budget is free.
        self.retry = None;
        let retries = self.retries();
        let log = self.log.take().map(|mut log| {
            log.answered(Some(&backend.address), parts.status.as_u16(), retries);
            log
        });
        let terms: Arc<dyn Terms> = Arc::clone(&self.upstream) as _;
        let body = match answer {
            Answer::Hyper(body, sender) => {
                ProxyBody::upstream(body, Lease::new(in_flight, Some(sender), terms, log))
            }
            Answer::H1(body) => ProxyBody::h1(body, Lease::new(in_flight, None, terms, log)),
        };
        Response::from_parts(parts, body)
    }

    /// The backend answered 101: passes it on and starts the tunnel, which
    /// holds the backend's in-flight count until it closes. A 101 nobody
    /// asked for, or without `Upgrade`, is the backend's fault: 502.
    fn switch(
        &mut self,
        mut resp: Response<Incoming>,
        in_flight: InFlight,
        backend: &Backend,
    ) -> Response<ProxyBody> {
        let protocol = resp.headers().get(header::UPGRADE).cloned();
        let (Some(upgrade), Some(protocol)) = (self.upgrade.take(), protocol) else {
            return self.switched_unasked(backend);
        };
        let backend_io = hyper::upgrade::on(&mut resp);
        forwarded::strip_hop_by_hop(resp.headers_mut());
        let headers = resp.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
        if let Some(name) = &self.upstream.config.backend_header {
            headers.insert(name.clone(), backend.id_header.clone());
        }
        self.retry = None;
        let retries = self.retries();
        let log = self.log.take().map(|mut log| {
            log.answered(Some(&backend.address), resp.status().as_u16(), retries);
            log
        });
        let mut lease = Lease::new(in_flight, None, Arc::clone(&self.upstream) as _, log);
        lease.hold(std::mem::take(&mut self.holds));
        let tunnel = Tunnel {
            client: upgrade.on,
            backend: backend_io,
            lease,
            idle_timeout: self.upstream.config.tunnel_idle_timeout,
            guard: upgrade.tunnels.open(),
            upstream: self.upstream.name().to_owned(),
            backend_address: backend.address.clone(),
            peer: self.peer,
        };
        tokio::spawn(tunnel.run());
        resp.map(ProxyBody::switched)
    }

    /// A 101 to a request that did not ask to upgrade, or without
    /// `Upgrade`: the backend's fault.
    fn switched_unasked(&self, backend: &Backend) -> Response<ProxyBody> {
        self.upstream
            .backend_failed(backend, &"answered 101 Switching Protocols unasked");
        tracing::warn!(
            upstream = self.upstream.name(), backend = %backend.address, peer = %self.peer,
            method = %self.method, path = self.uri.path(),
            "backend answered 101 Switching Protocols to a request that did not ask to upgrade, or without Upgrade: 502"
        );
        local_response(
            StatusCode::BAD_GATEWAY,
            "backend switched protocols unasked",
        )
    }

    /// Retries so far: one per failed try.
    fn retries(&self) -> u32 {
        u32::try_from(self.tried.len()).unwrap_or(u32::MAX)
    }

    /// Whether the next try may go ahead. A retry of a request that reached
    /// a backend (`sent`) takes a place in the retry budget until its
    /// response head arrives; one that reached no backend adds no load, so
    /// it is not counted.
    fn budget(&mut self, sent: bool) -> bool {
        if !sent {
            return true;
        }
        self.retry = None;
        let policy = &self.upstream.config.retry;
        match self
            .upstream
            .retry_budget
            .acquire(policy, self.set.in_flight())
        {
            Some(token) => {
                self.retry = Some(token);
                true
            }
            None => {
                tracing::warn!(
                    upstream = self.upstream.name(), peer = %self.peer, method = %self.method, path = self.uri.path(),
                    "retry budget exhausted ({} retries in flight): not retrying", self.upstream.retry_budget.active()
                );
                false
            }
        }
    }

    /// Counts and logs a failed try; `then` says what happens next.
    fn failed(&self, backend: &Backend, failure: &Failure, then: &str) {
        if failure.blames_backend() {
            self.upstream.backend_failed(backend, failure);
        }
        let (status, what) = failure.status();
        tracing::warn!(
            upstream = self.upstream.name(), backend = %backend.address, peer = %self.peer,
            method = %self.method, path = self.uri.path(), status = status.as_u16(),
            "{what}: {}{then}", failure.detail()
        );
    }

    fn failure_response(&self, failure: &Failure) -> Response<ProxyBody> {
        let (status, what) = failure.status();
        local_response(status, what)
    }
}

/// What the own client's failed send means. It only borrowed the request,
/// so the request is whole whatever happened.
fn own_failed(
    e: h1::Error,
    reused: bool,
    request: &Request<ClientBody>,
    backend: &Backend,
) -> Failed {
    match e {
        // Nothing reached the backend: on a reused connection, most likely
        // closing as it was picked.
        h1::Error::Unsent(_) if reused => Failed::Retake(Retake::Pooled),
        // The backend closed a kept connection with no answer, most likely
        // as the request went out: an idempotent request is sent again,
        // once, on a new connection (RFC 9110 §9.2.2; nginx does the same
        // for a cached connection). Once: a request that makes the backend
        // crash reaches it at most twice.
        e if reused && e.no_response() && retry::idempotent(request.method()) => {
            tracing::debug!(backend = %backend.address, "kept connection closed with no answer: {e}; sending again on a new one");
            Failed::Retake(Retake::New)
        }
        e @ h1::Error::Unsent(_) => Failed::NotSent(Failure::Broken {
            error: Broken::H1(e),
            reused,
        }),
        e => Failed::Sent(Failure::Broken {
            error: Broken::H1(e),
            reused,
        }),
    }
}

/// What hyper's failed send means, with the request when hyper hands it
/// back unsent; when it does not (it was sent, at least partly), the
/// failure.
fn hyper_failed(
    mut e: hyper::client::conn::TrySendError<Request<ClientBody>>,
    reused: bool,
) -> Result<(Failed, Request<ClientBody>), Failure> {
    let unsent = e.take_message();
    let error = Broken::Hyper(e.into_error());
    match unsent {
        Some(unsent) if reused => Ok((Failed::Retake(Retake::Pooled), unsent)),
        Some(unsent) => Ok((Failed::NotSent(Failure::Broken { error, reused }), unsent)),
        None => Err(Failure::Broken { error, reused }),
    }
}

/// Why no backend was picked.
enum NoPick {
    /// The plugin failed and the upstream fails closed.
    StrategyFailed,
    /// Nothing usable, or the strategy rejected the request.
    NoBackend,
}

impl NoPick {
    fn response(self) -> Response<ProxyBody> {
        match self {
            NoPick::StrategyFailed => local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the balancing strategy failed",
            ),
            NoPick::NoBackend => no_backend(),
        }
    }
}

fn no_backend() -> Response<ProxyBody> {
    local_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "no backend is available for this request",
    )
}

/// Asks hyper to close the client connection after this response.
fn closing(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
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
