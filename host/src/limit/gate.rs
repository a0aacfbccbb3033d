//! One upstream's admission: its `deny` and `allow` lists, then its
//! `limit-req` and `limit-conn` limits, in that order, asked once per
//! request before a backend is picked.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, StatusCode};
use ipnet::IpNet;

use super::conn::{ConnLimiter, Holds, Over};
use super::key::key_material;
use super::rate::RateLimiter;
use crate::base::config::{Admission, LimitConn, LimitReq};

/// Why a request was refused (or, in a dry run, would have been).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client is in `deny`.
    DenyList,
    /// `allow` is not empty and the client is not in it.
    NotAllowed,
    /// A `limit-req` bucket is empty.
    LimitReq,
    /// A `limit-conn` count is at its `max` (or its table is full).
    LimitConn,
    /// The upstream's admission plugin denied it.
    Plugin,
    /// The admission plugin failed and the upstream fails closed (503).
    PluginFailure,
}

impl Reason {
    /// As metrics and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DenyList => "deny",
            Reason::NotAllowed => "allow",
            Reason::LimitReq => "limit-req",
            Reason::LimitConn => "limit-conn",
            Reason::Plugin => "plugin",
            Reason::PluginFailure => "plugin-failure",
        }
    }

    /// What the proxy's answer says (a plugin's refusal says its own).
    pub fn message(self) -> &'static str {
        match self {
            Reason::DenyList | Reason::NotAllowed => "access denied",
            Reason::LimitReq => "too many requests: rate limit reached (limit-req)",
            Reason::LimitConn => "too many requests in flight (limit-conn)",
            Reason::Plugin => "refused by the admission plugin",
            Reason::PluginFailure => "admission plugin failed",
        }
    }
}

/// A request the gate turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The answer's status.
    pub status: StatusCode,
    /// `Retry-After`, in seconds, when the limit says when.
    pub retry_after: Option<u64>,
    /// Which rule refused it.
    pub reason: Reason,
}

impl Refusal {
    /// As the access log writes it: `denied:deny`, `limited:limit-req`,
    /// `denied:plugin`, ...
    pub fn label(&self) -> &'static str {
        match self.reason {
            Reason::DenyList => "denied:deny",
            Reason::NotAllowed => "denied:allow",
            Reason::LimitReq => "limited:limit-req",
            Reason::LimitConn => "limited:limit-conn",
            Reason::Plugin => "denied:plugin",
            Reason::PluginFailure => "denied:plugin-failure",
        }
    }
}

/// What [`Gate::check`] decided.
#[derive(Debug)]
pub enum Verdict {
    /// Let in, holding its `limit-conn` counts until dropped; with the
    /// limit a dry run would have refused it by, if any.
    Pass(Holds, Option<Reason>),
    /// Turned away.
    Refuse(Refusal),
}

impl Verdict {
    /// As the access log writes it: `allowed`, `dry-run:limit-req`,
    /// `denied:deny`, `limited:limit-conn`, ...
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass(_, None) => "allowed",
            Verdict::Pass(_, Some(Reason::LimitConn)) => "dry-run:limit-conn",
            Verdict::Pass(_, Some(_)) => "dry-run:limit-req",
            Verdict::Refuse(refusal) => refusal.label(),
        }
    }
}

/// Requests by verdict and reason, since start (carried across reloads).
#[derive(Debug, Default)]
pub struct Tally([AtomicU64; TALLY.len()]);

/// The rows of a [`Tally`]: verdict and reason.
const TALLY: [(&str, &str); 9] = [
    ("allowed", ""),
    ("denied", "deny"),
    ("denied", "allow"),
    ("denied", "plugin"),
    ("denied", "plugin-failure"),
    ("limited", "limit-req"),
    ("limited", "limit-conn"),
    ("dry-run", "limit-req"),
    ("dry-run", "limit-conn"),
];

impl Tally {
    /// Counts a request let in.
    pub fn allowed(&self) {
        self.0[0].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request the admission plugin turned away (`Plugin`), or
    /// that its failure did (`PluginFailure`).
    pub fn denied(&self, reason: Reason) {
        self.count("denied", reason);
    }

    fn count(&self, verdict: &str, reason: Reason) {
        let row = TALLY
            .iter()
            .position(|&(v, r)| v == verdict && r == reason.as_str())
            .unwrap_or(0);
        self.0[row].fetch_add(1, Ordering::Relaxed);
    }

    /// `(verdict, reason, requests)` for every row.
    pub fn rows(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        TALLY
            .iter()
            .zip(&self.0)
            .map(|(&(v, r), n)| (v, r, n.load(Ordering::Relaxed)))
    }

    /// Requests with `verdict`, whatever the reason.
    pub fn total(&self, verdict: &str) -> u64 {
        self.rows()
            .filter(|(v, _, _)| *v == verdict)
            .map(|(_, _, n)| n)
            .sum()
    }

    fn carried(previous: Option<&Tally>) -> Tally {
        let tally = Tally::default();
        if let Some(previous) = previous {
            for (to, from) in tally.0.iter().zip(&previous.0) {
                to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        tally
    }
}

/// One upstream's admission rules and the limiters behind them.
#[derive(Debug)]
pub struct Gate {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    req: Vec<(LimitReq, usize, Arc<RateLimiter>)>,
    conn: Vec<(LimitConn, usize, Arc<ConnLimiter>)>,
    /// An admission plugin decides after the rules: a request they pass is
    /// counted as allowed once it has decided too.
    then_plugin: bool,
    /// Requests by verdict.
    pub tally: Tally,
}

impl Gate {
    /// The gate for `config`; a limiter of `previous` (the same upstream
    /// before a reload) with the same settings is kept, with its keys.
    /// With `then_plugin`, an admission plugin decides after the rules, and
    /// counts what it lets in itself ([`Tally::allowed`]).
    pub fn new(config: &Admission, previous: Option<&Gate>, then_plugin: bool) -> Gate {
        let keys = config.limit_keys;
        let req = config
            .limit_req
            .iter()
            .map(|limit| {
                let kept = previous.and_then(|p| {
                    p.req
                        .iter()
                        .find(|(l, k, _)| l == limit && *k == keys)
                        .map(|(_, _, r)| Arc::clone(r))
                });
                let limiter = kept.unwrap_or_else(|| {
                    Arc::new(RateLimiter::new(
                        limit.rate.interval_ns(),
                        limit.burst,
                        keys,
                    ))
                });
                (limit.clone(), keys, limiter)
            })
            .collect();
        // A count is a count whatever the `max`: a limit with the same key
        // keeps its counts (each kept limiter goes to one limit only).
        let mut taken = Vec::new();
        let conn = config
            .limit_conn
            .iter()
            .map(|limit| {
                let kept = previous.and_then(|p| {
                    let (i, (_, _, c)) = p.conn.iter().enumerate().find(|(i, (l, k, _))| {
                        l.key == limit.key && *k == keys && !taken.contains(i)
                    })?;
                    taken.push(i);
                    Some(Arc::clone(c))
                });
                let limiter = kept.unwrap_or_else(|| Arc::new(ConnLimiter::new(keys)));
                (limit.clone(), keys, limiter)
            })
            .collect();
        Gate {
            deny: config.deny.clone(),
            allow: config.allow.clone(),
            req,
            conn,
            then_plugin,
            tally: Tally::carried(previous.map(|p| &p.tally)),
        }
    }

    /// Whether a request from `client_ip` with `headers` may go on, at
    /// `now` (nanoseconds of the proxy's clock).
    pub fn check(&self, headers: &HeaderMap, client_ip: IpAddr, now: u64) -> Verdict {
        let ip = client_ip.to_canonical();
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return self.refuse(StatusCode::FORBIDDEN, None, Reason::DenyList);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&ip)) {
            return self.refuse(StatusCode::FORBIDDEN, None, Reason::NotAllowed);
        }
        let mut buf = [0u8; 16];
        let mut dry = None;
        for (limit, _, limiter) in &self.req {
            let Some(material) = key_material(&limit.key, headers, ip, &mut buf) else {
                continue;
            };
            if let Err(wait_ns) = limiter.take(limiter.key(material), 1, now) {
                if limit.dry_run {
                    self.tally.count("dry-run", Reason::LimitReq);
                    dry = Some(Reason::LimitReq);
                    continue;
                }
                let retry_after = wait_ns.div_ceil(1_000_000_000).max(1);
                return self.refuse(limit.status, Some(retry_after), Reason::LimitReq);
            }
        }
        let mut holds = Holds::default();
        for (limit, _, limiter) in &self.conn {
            let Some(material) = key_material(&limit.key, headers, ip, &mut buf) else {
                continue;
            };
            match limiter.acquire(limiter.key(material), limit.max, limit.dry_run) {
                Ok((held, over)) => {
                    if over {
                        self.tally.count("dry-run", Reason::LimitConn);
                        dry = Some(Reason::LimitConn);
                    }
                    holds.push(held);
                }
                Err(Over::Full) if limit.dry_run => {
                    self.tally.count("dry-run", Reason::LimitConn);
                    dry = Some(Reason::LimitConn);
                }
                Err(_) => {
                    // `holds` drops here: nothing stays counted.
                    return self.refuse(limit.status, None, Reason::LimitConn);
                }
            }
        }
        if !self.then_plugin {
            self.tally.allowed();
        }
        Verdict::Pass(holds, dry)
    }

    fn refuse(&self, status: StatusCode, retry_after: Option<u64>, reason: Reason) -> Verdict {
        let verdict = match reason {
            Reason::DenyList | Reason::NotAllowed | Reason::Plugin | Reason::PluginFailure => {
                "denied"
            }
            Reason::LimitReq | Reason::LimitConn => "limited",
        };
        self.tally.count(verdict, reason);
        Verdict::Refuse(Refusal {
            status,
            retry_after,
            reason,
        })
    }

    /// Forgets the rate limiters' keys whose bucket is full again at `now`
    /// (see [`RateLimiter::sweep`]). (`limit-conn` tables forget a key as
    /// soon as its last request ends.)
    pub fn sweep(&self, now: u64) {
        for (_, _, limiter) in &self.req {
            limiter.sweep(now);
        }
    }

    /// `(name, keys now, most keys)` of each limiter: `limit-req`,
    /// `limit-req[1]`, ..., `limit-conn`, ...
    pub fn limiters(&self) -> Vec<(String, usize, usize)> {
        let name = |kind: &str, i: usize| {
            if i == 0 {
                kind.to_owned()
            } else {
                format!("{kind}[{i}]")
            }
        };
        let req = self
            .req
            .iter()
            .enumerate()
            .map(|(i, (_, _, l))| (name("limit-req", i), l.keys(), l.capacity()));
        let conn = self
            .conn
            .iter()
            .enumerate()
            .map(|(i, (_, keys, l))| (name("limit-conn", i), l.keys(), *keys));
        req.chain(conn).collect()
    }
}
