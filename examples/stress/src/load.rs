//! The load generator. One task per connection: each holds a keep-alive
//! connection (HTTP/1.1 or HTTP/2, over TCP or TLS: see [`conn`]; hyper's
//! connection-level client, no pool) with one request in flight, takes the
//! next request number from a shared counter, sends the request, reads the
//! response and counts the outcome in its own [`Tally`]. A broken or closed
//! connection is replaced before the next request.
//!
//! The request is rebuilt from parts parsed once up front, the response body
//! is drained without being collected (unless it names the backend), and the
//! only shared writes per request are one counter increment (plus two more
//! while a progress bar is shown), so the client stays out of the way of the
//! server being measured.

use std::{
    future::Future,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header::HOST};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::{
    sync::oneshot,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};

use crate::{
    BackendKey, Error, Options, Report,
    conn::{self, Body, Connector, Driver, Sender},
    options::MAX_BODY_KEY,
    progress::{Counters, Progress},
    report::{Failure, Reason, RunInfo, Tally},
    tls,
};

/// How often the progress bar is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the load described by `options` until its request count or duration
/// is reached or `shutdown` completes, and reports what completed.
pub(crate) async fn run(
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, Error> {
    if let Some(rate) = options.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(Error::InvalidRate { rate });
    }
    let tls = if options.target.is_https() {
        Some((
            tls::client_config(&options)?,
            tls::server_name(options.target.host())?,
        ))
    } else {
        None
    };
    let addrs = resolve(options.target.host(), options.target.port()).await?;
    let limit = options.request_limit();
    let concurrency = options.concurrency.get();
    let tallies = (0..concurrency)
        .map(|_| Tally::new())
        .collect::<Result<Vec<_>, _>>()?;
    let mut total = Tally::new()?;

    let progress = if options.progress {
        Progress::start(limit, options.duration)
    } else {
        None
    };
    let counters = progress.as_ref().map(|_| Arc::new(Counters::default()));

    let mut headers = options.headers;
    let uri = if options.http2 {
        // HTTP/2 names the host in `:authority`, taken from the URI, and
        // has no Host header.
        let host = headers
            .remove(HOST)
            .unwrap_or_else(|| options.target.host_header().clone());
        options
            .target
            .absolute_form(&host)
            .ok_or_else(|| Error::InvalidAuthority {
                host: String::from_utf8_lossy(host.as_bytes()).into_owned(),
            })?
    } else {
        if !headers.contains_key(HOST) {
            headers.insert(HOST, options.target.host_header().clone());
        }
        options.target.origin_form()
    };
    let run_info = RunInfo {
        url: options.target.url().to_owned(),
        method: options.method.to_string(),
        concurrency,
        rate: options.rate,
        interrupted: false,
    };

    let start = Instant::now();
    let plan = Arc::new(Plan {
        connector: Connector::new(addrs, tls, options.http2),
        method: options.method,
        uri,
        headers,
        timeout: options.timeout,
        by: options.by,
        limit,
        schedule: options.rate.map(|rate| Schedule { start, rate }),
        next: AtomicU64::new(0),
        counters: counters.clone(),
    });

    // Each worker has its own stop signal (no lock shared by all on the
    // request path); dropping the senders stops them all.
    let mut stops = Vec::with_capacity(concurrency);
    let mut workers = JoinSet::new();
    for tally in tallies {
        let (stop, stopped) = oneshot::channel();
        stops.push(stop);
        let worker = Worker {
            plan: Arc::clone(&plan),
            conn: None,
            body: Vec::new(),
            tally,
        };
        workers.spawn(worker.run(stopped));
    }

    let deadline = options
        .duration
        .and_then(|duration| start.checked_add(duration));
    let mut deadline = pin!(async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    });
    let mut shutdown = pin!(shutdown);
    let mut redraw = tokio::time::interval(PROGRESS_INTERVAL);
    redraw.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut interrupted = false;
    let mut stopping = false;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(tally)) => total.merge(tally),
                Some(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Some(Err(_cancelled)) => {}
                None => break,
            },
            () = &mut shutdown, if !stopping => {
                interrupted = true;
                stopping = true;
                stops.clear();
            }
            () = &mut deadline, if !stopping => {
                stopping = true;
                stops.clear();
            }
            _ = redraw.tick(), if progress.is_some() => {
                if let (Some(progress), Some(counters)) = (&progress, &counters) {
                    progress.update(counters);
                }
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(progress) = progress {
        progress.finish();
    }
    Ok(total.into_report(
        RunInfo {
            interrupted,
            ..run_info
        },
        elapsed,
    ))
}

/// Resolves the target once; connections then go to the first address that
/// accepts.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| Error::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::NoAddress {
            host: host.to_owned(),
        });
    }
    Ok(addrs)
}

/// What every worker needs, shared read-only (bar the counters).
struct Plan {
    /// How to open a connection to the target.
    connector: Connector,
    method: Method,
    /// Request target: origin form for HTTP/1.1, absolute for HTTP/2.
    uri: Uri,
    /// Headers sent on every request, `Host` included for HTTP/1.1.
    headers: HeaderMap,
    timeout: Duration,
    by: BackendKey,
    /// Requests to send at most.
    limit: Option<u64>,
    /// Send times, when the rate is fixed.
    schedule: Option<Schedule>,
    /// Number of the next request to send.
    next: AtomicU64,
    /// Progress counters, only while a bar is shown.
    counters: Option<Arc<Counters>>,
}

impl Plan {
    /// A fresh request: hyper takes requests by value.
    fn request(&self) -> Request<Body> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The open-loop schedule of `--rate`: request `n` is due at
/// `start + n / rate`, whether or not earlier ones have been answered.
struct Schedule {
    start: Instant,
    rate: f64,
}

impl Schedule {
    /// When request `n` is due; `None` if beyond any representable time.
    fn due(&self, n: u64) -> Option<Instant> {
        #[expect(
            clippy::cast_precision_loss,
            reason = "sub-request precision is plenty"
        )]
        let offset = Duration::try_from_secs_f64(n as f64 / self.rate).ok()?;
        self.start.checked_add(offset)
    }
}

/// `from + by`, or about thirty years on if that is beyond what an
/// [`Instant`] can hold (as tokio does for far-off sleeps).
fn later(from: Instant, by: Duration) -> Instant {
    from.checked_add(by)
        .or_else(|| from.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(from)
}

/// One connection's request loop.
struct Worker {
    plan: Arc<Plan>,
    /// The keep-alive connection, if one is open.
    conn: Option<Conn>,
    /// Response body buffer for `--by body`.
    body: Vec<u8>,
    tally: Tally,
}

impl Worker {
    /// Sends requests until the plan is exhausted or `stop` fires (or its
    /// sender is dropped), then hands back the counts. A request in flight
    /// when the run stops is abandoned uncounted.
    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Tally {
        let timeout = self.plan.timeout;
        // One timer for all requests, re-armed only when it goes off before
        // the current request's deadline, rather than a timer registered
        // (and removed again) with the runtime for every request.
        let mut timer = pin!(tokio::time::sleep(timeout));
        'requests: loop {
            let n = self.plan.next.fetch_add(1, Ordering::Relaxed);
            if self.plan.limit.is_some_and(|limit| n >= limit) {
                break;
            }
            let (sent, deadline) = match &self.plan.schedule {
                None => {
                    let now = Instant::now();
                    (now, later(now, timeout))
                }
                Some(schedule) => {
                    let Some(due) = schedule.due(n) else { break };
                    let now = Instant::now();
                    if now < due {
                        // On schedule. The timer wheel wakes us up to a
                        // millisecond late: the client's delay, not the
                        // server's, so latency counts from the actual send.
                        tokio::select! {
                            biased;
                            _ = &mut stop => break,
                            () = tokio::time::sleep_until(due) => {}
                        }
                        let now = Instant::now();
                        (now, later(now, timeout))
                    } else {
                        // Behind schedule: every connection was busy, so
                        // the wait for one counts as latency (no
                        // coordinated omission).
                        (due, later(now, timeout))
                    }
                }
            };
            let outcome = {
                let mut exchange = pin!(self.exchange());
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut stop => break 'requests,
                        outcome = &mut exchange => break outcome,
                        () = &mut timer => {
                            if Instant::now() >= deadline {
                                break Err(Failure::Timeout);
                            }
                            timer.as_mut().reset(deadline);
                        }
                    }
                }
            };
            if outcome.is_err() {
                // Whatever state the connection is in, it is not reusable.
                self.conn = None;
            }
            let failed = !matches!(&outcome, Ok(status) if status.as_u16() < 400);
            self.tally.record(outcome, sent.elapsed());
            if let Some(counters) = &self.plan.counters {
                counters.record(failed);
            }
        }
        self.tally
    }

    /// One request and its response, read to the end, on the open
    /// connection or a new one. Counts the backend that answered.
    async fn exchange(&mut self) -> Result<StatusCode, Failure> {
        // The server may have closed the connection since the last response
        // (`Connection: close`, idle timeout): not this request's failure.
        if let Some(conn) = &mut self.conn
            && !conn.ready().await
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            // Boxed: connecting is rare, and its large future would otherwise
            // be part of every request's.
            self.conn = Some(Box::pin(Conn::open(&self.plan)).await?);
        }
        let Some(Conn {
            sender,
            driver,
            open,
        }) = &mut self.conn
        else {
            return Err(Failure::Connect(Reason::Borrowed("no connection")));
        };
        let outcome = drive(
            driver,
            open,
            send(&self.plan, sender, &mut self.tally, &mut self.body),
        )
        .await;
        if !*open {
            self.conn = None;
        }
        outcome
    }
}

/// Sends one request on `sender` and reads its response to the end,
/// counting the backend that served it.
async fn send(
    plan: &Plan,
    sender: &mut Sender,
    tally: &mut Tally,
    buf: &mut Vec<u8>,
) -> Result<StatusCode, Failure> {
    let response = sender
        .send(plan.request())
        .await
        .map_err(|e| Failure::Io(conn::describe(&e)))?;
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    match &plan.by {
        BackendKey::Headers(names) => {
            drain(&mut body).await?;
            let name = names.iter().find_map(|name| parts.headers.get(name));
            tally.backend(
                name.map(HeaderValue::as_bytes)
                    .unwrap_or_default()
                    .trim_ascii(),
            );
        }
        BackendKey::Body => {
            buf.clear();
            read_prefix(&mut body, buf).await?;
            tally.backend(buf.trim_ascii());
        }
    }
    Ok(status)
}

/// A keep-alive connection, driven by the worker that owns it: its
/// I/O runs inside that worker's task, only while a request is under way,
/// rather than in a task of its own that every request would have to wake.
struct Conn {
    sender: Sender,
    driver: Driver,
    /// Whether `driver` may still be polled (it has not completed).
    open: bool,
}

impl Conn {
    /// A new connection, ready for a request.
    async fn open(plan: &Plan) -> Result<Self, Failure> {
        let (sender, driver) = plan.connector.open().await?;
        let mut conn = Self {
            sender,
            driver,
            open: true,
        };
        if conn.ready().await {
            Ok(conn)
        } else {
            Err(Failure::Connect(Reason::Borrowed(
                "connection closed before the first request",
            )))
        }
    }

    /// Waits until the connection can take a request; `false` if it has
    /// closed.
    async fn ready(&mut self) -> bool {
        let ready = self.sender.ready();
        drive(&mut self.driver, &mut self.open, async {
            ready.await.map_err(|e| Failure::Io(conn::describe(&e)))
        })
        .await
        .is_ok()
    }
}

/// Runs `work`, a request on the connection `driver` serves, polling the
/// connection alongside it. `open` turns false when the connection ends;
/// work that still waits on it then fails instead of waiting for ever.
async fn drive<T>(
    driver: &mut Driver,
    open: &mut bool,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let mut work = pin!(work);
    std::future::poll_fn(move |cx| {
        // Connection first, so that a response it reads now is there for
        // the work to take. A request the work queues is written on the
        // next poll, which queueing it has already scheduled.
        if *open && Pin::new(&mut *driver).poll(cx).is_ready() {
            *open = false;
        }
        match work.as_mut().poll(cx) {
            Poll::Pending if !*open => Poll::Ready(Err(Failure::Io(Reason::Borrowed(
                "connection closed before the response was complete",
            )))),
            polled => polled,
        }
    })
    .await
}

/// Reads and discards a response body.
async fn drain(body: &mut Incoming) -> Result<(), Failure> {
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| Failure::Io(conn::describe(&e)))?;
    }
    Ok(())
}

/// Reads a response body, keeping its first [`MAX_BODY_KEY`] bytes in `buf`.
async fn read_prefix(body: &mut Incoming, buf: &mut Vec<u8>) -> Result<(), Failure> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Io(conn::describe(&e)))?;
        if let Some(data) = frame.data_ref() {
            let room = MAX_BODY_KEY.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(())
}
