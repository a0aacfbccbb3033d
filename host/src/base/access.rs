//! The access log (`access-log = true`): one line per request, written when
//! the response has been sent (or abandoned), on the `access` tracing
//! target, so `--log-format json` makes it one JSON object per line:
//!
//! ```text
//! {"timestamp":"...","level":"INFO","fields":{"message":"access","client":"10.0.0.7",
//!  "method":"GET","path":"/api/x","upstream":"app","backend":"10.0.0.2:8000",
//!  "status":200,"duration_ms":1.31,"retries":0,"complete":true,"admission":"-"},
//!  "target":"access"}
//! ```
//!
//! Off by default: it costs a formatted line per request.

use crate::base::clock::Instant;
use std::net::IpAddr;

use http::{Method, Uri};

/// One request's line, written when dropped.
#[derive(Debug)]
pub struct Entry {
    started: Instant,
    client: IpAddr,
    method: Method,
    uri: Uri,
    upstream: String,
    backend: Option<String>,
    status: u16,
    retries: u32,
    complete: bool,
    admission: &'static str,
}

impl Entry {
    /// A request from `client` that started at `started`.
    pub fn new(started: Instant, client: IpAddr, method: Method, uri: Uri) -> Box<Entry> {
        Box::new(Entry {
            started,
            client,
            method,
            uri,
            upstream: String::new(),
            backend: None,
            status: 0,
            retries: 0,
            complete: false,
            admission: "-",
        })
    }

    /// The client address, once known (after trusted `X-Forwarded-For`).
    pub fn client(&mut self, ip: IpAddr) {
        self.client = ip;
    }

    /// The upstream that served it.
    pub fn upstream(&mut self, name: &str) {
        name.clone_into(&mut self.upstream);
    }

    /// What the upstream's admission rules made of it: `allowed`,
    /// `denied:deny`, `limited:limit-req`, `dry-run:limit-conn`, ...
    pub fn admission(&mut self, verdict: &'static str) {
        self.admission = verdict;
    }

    /// The backend that answered, its status, and how many retries it took.
    pub fn answered(&mut self, backend: Option<&str>, status: u16, retries: u32) {
        self.backend = backend.map(str::to_owned);
        self.status = status;
        self.retries = retries;
    }

    /// The response was sent to its end (else the line says it was cut).
    pub fn completed(&mut self) {
        self.complete = true;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            path = %self.uri,
            upstream = self.upstream.as_str(),
            backend = self.backend.as_deref().unwrap_or("-"),
            status = self.status,
            duration_ms = (ms * 1000.0).round() / 1000.0,
            retries = self.retries,
            complete = self.complete,
            admission = self.admission,
            "access"
        );
    }
}
