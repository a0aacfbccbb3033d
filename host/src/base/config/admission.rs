//! Admission keys: who may send requests through an upstream (`allow`,
//! `deny`) and how many, how fast (`limit-req`, `limit-conn`,
//! `limit-keys`). Each may be written at the top level, as the default of
//! every upstream, and in an `[[upstream]]`, which then replaces the
//! top-level value of that key (as nginx's `limit_req` in a `location`
//! replaces the server's).

use std::fmt;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{ConfigError, Validator, parse_cidr};

/// Default of `limit-keys`: distinct keys one limiter remembers.
pub const DEFAULT_LIMIT_KEYS: usize = 100_000;

/// Most `limit-keys` accepted (about 100 bytes of memory each).
pub const MAX_LIMIT_KEYS: usize = 10_000_000;

/// An upstream's admission rules, the top-level defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Clients refused with 403 (checked first).
    pub deny: Vec<IpNet>,
    /// When not empty: the only clients let in; any other gets 403.
    pub allow: Vec<IpNet>,
    /// Request-rate limits, each checked in turn.
    pub limit_req: Vec<LimitReq>,
    /// Limits of requests in flight at once, each checked in turn.
    pub limit_conn: Vec<LimitConn>,
    /// Distinct keys each limiter remembers; past it the least recently
    /// seen key is forgotten.
    pub limit_keys: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            deny: Vec::new(),
            allow: Vec::new(),
            limit_req: Vec::new(),
            limit_conn: Vec::new(),
            limit_keys: DEFAULT_LIMIT_KEYS,
        }
    }
}

impl Admission {
    /// Whether every request is let in without a look.
    pub fn is_open(&self) -> bool {
        self.deny.is_empty()
            && self.allow.is_empty()
            && self.limit_req.is_empty()
            && self.limit_conn.is_empty()
    }

    /// What the rules are, in a few words (`switchyard check` prints it):
    /// `deny 1, allow 2, limit-req 10/s burst 5 by client-ip`; None when
    /// there are none.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (name, list) in [("deny", &self.deny), ("allow", &self.allow)] {
            if !list.is_empty() {
                parts.push(format!("{name} {}", list.len()));
            }
        }
        let dry = |d: bool| if d { " (dry run)" } else { "" };
        for r in &self.limit_req {
            parts.push(format!(
                "limit-req {} burst {} by {}{}",
                r.rate,
                r.burst,
                r.key,
                dry(r.dry_run)
            ));
        }
        for c in &self.limit_conn {
            parts.push(format!(
                "limit-conn {} by {}{}",
                c.max,
                c.key,
                dry(c.dry_run)
            ));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// What a limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The client's address (after `trusted-proxies`).
    ClientIp,
    /// A request header's first value (`header:X-Api-Key`); requests
    /// without it are not limited.
    Header(HeaderName),
    /// A cookie's value (`cookie:session`); requests without it are not
    /// limited.
    Cookie(String),
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKey::ClientIp => f.write_str("client-ip"),
            LimitKey::Header(name) => write!(f, "header:{name}"),
            LimitKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// A rate: `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests allowed per `per`, 1 ..= 1 000 000.
    pub requests: u32,
    /// One second, one minute or one hour.
    pub per: Duration,
}

impl Rate {
    /// The time one request uses up: `per / requests`, in nanoseconds.
    pub fn interval_ns(&self) -> u64 {
        let per = u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX);
        (per / u64::from(self.requests.max(1))).max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.requests)
    }
}

/// `limit-req`: a token bucket per key (GCRA). `burst` requests may come
/// at once; after that one more every `1 / rate`. A request over it is
/// answered at once with `status` and `Retry-After` (nginx's `nodelay`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitReq {
    /// The sustained rate.
    pub rate: Rate,
    /// Requests that may come at once (the bucket's size), at least 1.
    /// nginx's `burst=N nodelay` lets N + 1 through: here that is
    /// `burst = N + 1`.
    pub burst: u32,
    /// What requests are counted by.
    pub key: LimitKey,
    /// The answer to a request over the limit (default 429).
    pub status: StatusCode,
    /// Count what would be refused, refuse nothing (nginx's
    /// `limit_req_dry_run`).
    pub dry_run: bool,
}

/// `limit-conn`: requests in flight at once per key (nginx's
/// `limit_conn`), counted from admission until the response has been sent
/// (for a WebSocket, until the tunnel closes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitConn {
    /// Most requests in flight per key.
    pub max: u32,
    /// What requests are counted by.
    pub key: LimitKey,
    /// The answer to a request over the limit (default 429).
    pub status: StatusCode,
    /// Count what would be refused, refuse nothing.
    pub dry_run: bool,
}

/// The admission keys as written at one level (top or upstream); None:
/// not written there.
#[derive(Default)]
pub(super) struct RawAdmission {
    pub(super) allow: Option<Vec<String>>,
    pub(super) deny: Option<Vec<String>>,
    pub(super) limit_req: Option<RawLimits<RawLimitReq>>,
    pub(super) limit_conn: Option<RawLimits<RawLimitConn>>,
    pub(super) limit_keys: Option<i64>,
}

/// A limit key's value: `"off"`, one table, or a list of tables.
pub(super) enum RawLimits<T> {
    Off,
    Some(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for RawLimits<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = RawLimits<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table such as { rate = \"10/s\", burst = 5 }, a list of them, or \"off\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "off" {
                    Ok(RawLimits::Off)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|one| RawLimits::Some(vec![one]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(RawLimits::Some)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLimitReq {
    rate: String,
    #[serde(default = "default_burst")]
    burst: i64,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLimitConn {
    max: i64,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    dry_run: bool,
}

fn default_burst() -> i64 {
    1
}

fn default_key() -> String {
    "client-ip".into()
}

fn default_status() -> u16 {
    429
}

/// The admission keys of one level, checked; None where not written.
#[derive(Default)]
pub(super) struct Written {
    allow: Option<Vec<IpNet>>,
    deny: Option<Vec<IpNet>>,
    limit_req: Option<Vec<LimitReq>>,
    limit_conn: Option<Vec<LimitConn>>,
    limit_keys: Option<usize>,
}

impl Written {
    /// These keys over `defaults` (the top level's).
    pub(super) fn over(self, defaults: &Written) -> Admission {
        fn or<T: Clone>(own: Option<T>, top: &Option<T>) -> Option<T> {
            own.or_else(|| top.clone())
        }
        Admission {
            deny: or(self.deny, &defaults.deny).unwrap_or_default(),
            allow: or(self.allow, &defaults.allow).unwrap_or_default(),
            limit_req: or(self.limit_req, &defaults.limit_req).unwrap_or_default(),
            limit_conn: or(self.limit_conn, &defaults.limit_conn).unwrap_or_default(),
            limit_keys: or(self.limit_keys, &defaults.limit_keys).unwrap_or(DEFAULT_LIMIT_KEYS),
        }
    }
}

impl Validator<'_> {
    /// Checks the admission keys written under `prefix` (`""` for the top
    /// level, `"upstream[0]."` for an upstream).
    pub(super) fn admission(
        &self,
        prefix: &str,
        raw: RawAdmission,
    ) -> Result<Written, ConfigError> {
        let key = |k: &str| format!("{prefix}{k}");
        let cidrs = |name: &str,
                     list: Option<Vec<String>>|
         -> Result<Option<Vec<IpNet>>, ConfigError> {
            list.map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        parse_cidr(s).ok_or_else(|| {
                            self.err(
                                key(&format!("{name}[{i}]")),
                                format!("`{s}` is not an IP address or CIDR (expected e.g. \"10.0.0.0/8\" or \"192.0.2.7\")"),
                            )
                        })
                    })
                    .collect()
            })
            .transpose()
        };
        let limit_req = limits(raw.limit_req, |i, r| {
            self.limit_req(&key(&indexed("limit-req", i)), r)
        })?;
        let limit_conn = limits(raw.limit_conn, |i, c| {
            self.limit_conn(&key(&indexed("limit-conn", i)), c)
        })?;
        let limit_keys = raw
            .limit_keys
            .map(|n| {
                usize::try_from(n)
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT_KEYS).contains(n))
                    .ok_or_else(|| {
                        self.err(
                            key("limit-keys"),
                            format!("{n} is out of range (expected 1 to {MAX_LIMIT_KEYS}: distinct keys each limiter remembers)"),
                        )
                    })
            })
            .transpose()?;
        Ok(Written {
            allow: cidrs("allow", raw.allow)?,
            deny: cidrs("deny", raw.deny)?,
            limit_req,
            limit_conn,
            limit_keys,
        })
    }

    fn limit_req(&self, at: &str, r: RawLimitReq) -> Result<LimitReq, ConfigError> {
        let rate = parse_rate(&r.rate).ok_or_else(|| {
            self.err(
                format!("{at}.rate"),
                format!("`{}` is not a rate (expected requests per second, minute or hour, 1 to 1000000: e.g. \"10/s\", \"600r/m\")", r.rate),
            )
        })?;
        let burst = u32::try_from(r.burst)
            .ok()
            .filter(|b| (1..=1_000_000).contains(b))
            .ok_or_else(|| {
                self.err(
                    format!("{at}.burst"),
                    format!("{} is out of range (expected 1 to 1000000: requests that may come at once; nginx's `burst=N nodelay` is `burst = N + 1`)", r.burst),
                )
            })?;
        Ok(LimitReq {
            rate,
            burst,
            key: self.limit_key(at, &r.key)?,
            status: self.refusal_status(at, r.status)?,
            dry_run: r.dry_run,
        })
    }

    fn limit_conn(&self, at: &str, c: RawLimitConn) -> Result<LimitConn, ConfigError> {
        let max = u32::try_from(c.max)
            .ok()
            .filter(|m| *m >= 1)
            .ok_or_else(|| {
                self.err(
                    format!("{at}.max"),
                    format!("{} is out of range (expected at least 1: requests in flight at once per key)", c.max),
                )
            })?;
        Ok(LimitConn {
            max,
            key: self.limit_key(at, &c.key)?,
            status: self.refusal_status(at, c.status)?,
            dry_run: c.dry_run,
        })
    }

    fn limit_key(&self, at: &str, text: &str) -> Result<LimitKey, ConfigError> {
        let bad = || {
            self.err(
                format!("{at}.key"),
                format!("`{text}` is not a limit key (expected \"client-ip\", \"header:NAME\" or \"cookie:NAME\")"),
            )
        };
        if text == "client-ip" {
            return Ok(LimitKey::ClientIp);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::try_from(name.trim())
                .map(LimitKey::Header)
                .map_err(|_| bad());
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            let name = name.trim();
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b";=,\"".contains(&b))
            {
                return Ok(LimitKey::Cookie(name.to_owned()));
            }
        }
        Err(bad())
    }

    fn refusal_status(&self, at: &str, status: u16) -> Result<StatusCode, ConfigError> {
        StatusCode::from_u16(status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .ok_or_else(|| {
                self.err(
                    format!("{at}.status"),
                    format!(
                        "{status} is not an error status (expected 400 to 599, e.g. 429 or 503)"
                    ),
                )
            })
    }
}

/// A limit key as written (None: not written; `"off"`: none), each
/// entry checked by `check` with its index.
fn limits<R, T>(
    raw: Option<RawLimits<R>>,
    check: impl Fn(usize, R) -> Result<T, ConfigError>,
) -> Result<Option<Vec<T>>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(RawLimits::Off) => Ok(Some(Vec::new())),
        Some(RawLimits::Some(list)) => list
            .into_iter()
            .enumerate()
            .map(|(i, r)| check(i, r))
            .collect::<Result<_, _>>()
            .map(Some),
    }
}

/// `limit-req` or, for the second and later of a list, `limit-req[i]`.
fn indexed(name: &str, i: usize) -> String {
    if i == 0 {
        name.to_owned()
    } else {
        format!("{name}[{i}]")
    }
}

/// `10/s`, `10r/s`, `600/m`, `600r/m`, `1000/h` (nginx writes `r/s` and
/// `r/m`).
fn parse_rate(text: &str) -> Option<Rate> {
    let (count, unit) = text.trim().split_once('/')?;
    let count = count.trim();
    let count = count.strip_suffix('r').unwrap_or(count);
    let requests = count
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(Rate { requests, per })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::config::Config;
    use std::path::Path;

    const UPSTREAM: &str = "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:5001\"]\n";

    fn parse(top: &str, upstream: &str) -> Result<Admission, String> {
        let text = format!("{top}\n{UPSTREAM}{upstream}\n");
        Config::parse(&text, Path::new("t.toml"))
            .map(|c| c.upstreams[0].admission.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_upstream_takes_the_top_level_keys_it_does_not_write() {
        let a = parse(
            "deny = [\"10.0.0.0/8\"]\nlimit-req = { rate = \"10/s\", burst = 5 }\nlimit-keys = 500",
            "allow = [\"192.0.2.1\"]\nlimit-conn = [{ max = 2 }, { max = 50, key = \"cookie:sid\", status = 503 }]",
        )
        .expect("valid");
        assert_eq!(a.deny, vec!["10.0.0.0/8".parse::<IpNet>().expect("valid")]);
        assert_eq!(
            a.allow,
            vec!["192.0.2.1/32".parse::<IpNet>().expect("valid")]
        );
        assert_eq!(a.limit_req.len(), 1);
        let r = &a.limit_req[0];
        assert_eq!(
            (r.rate.to_string(), r.burst, r.status.as_u16()),
            ("10/s".into(), 5, 429)
        );
        assert_eq!((r.key.clone(), r.dry_run), (LimitKey::ClientIp, false));
        assert_eq!(a.limit_conn.len(), 2);
        assert_eq!(a.limit_conn[1].key, LimitKey::Cookie("sid".into()));
        assert_eq!(a.limit_keys, 500);

        // Written in the upstream, a key replaces the top level's; "off"
        // and an empty list turn it off there.
        let a = parse(
            "deny = [\"10.0.0.0/8\"]\nlimit-req = { rate = \"10/s\" }",
            "deny = []\nlimit-req = \"off\"",
        )
        .expect("valid");
        assert!(a.is_open(), "{a:?}");
        assert_eq!(a.limit_keys, DEFAULT_LIMIT_KEYS);
        assert!(parse("", "").expect("valid").is_open());
    }

    #[test]
    fn bad_admission_values_name_their_key() {
        let cases = [
            ("deny = [\"10.0.0.0/33\"]", "", "`deny[0]`"),
            ("", "allow = [\"a\", \"nope\"]", "`upstream[0].allow[0]`"),
            ("limit-req = { rate = \"10/d\" }", "", "`limit-req.rate`"),
            (
                "",
                "limit-req = { rate = \"0/s\" }",
                "`upstream[0].limit-req.rate`",
            ),
            (
                "",
                "limit-req = { rate = \"1/s\", burst = 0 }",
                "`upstream[0].limit-req.burst`",
            ),
            (
                "",
                "limit-req = [{ rate = \"1/s\" }, { rate = \"1/s\", key = \"ip\" }]",
                "`upstream[0].limit-req[1].key`",
            ),
            (
                "",
                "limit-req = { rate = \"1/s\", key = \"header:bad name\" }",
                "`upstream[0].limit-req.key`",
            ),
            (
                "",
                "limit-req = { rate = \"1/s\", status = 200 }",
                "`upstream[0].limit-req.status`",
            ),
            (
                "",
                "limit-conn = { max = 0 }",
                "`upstream[0].limit-conn.max`",
            ),
            ("limit-keys = 0", "", "`limit-keys`"),
            ("", "limit-keys = 100000000", "`upstream[0].limit-keys`"),
            (
                "",
                "admission = \"../rate-limit\"",
                "`upstream[0].admission`",
            ),
            ("", "admission = \"x.wasm \"", "`upstream[0].admission`"),
            (
                "",
                "admission-params = { rate = \"1/s\" }",
                "`upstream[0].admission-params`",
            ),
        ];
        for (top, upstream, key) in cases {
            let err = parse(top, upstream).expect_err("an error");
            assert!(err.contains(key), "{top} / {upstream}: {err}");
        }
        // Unknown keys and wrong shapes come from the parser, with the line.
        let err = parse("", "limit-req = { rate = \"1/s\", brust = 2 }").expect_err("an error");
        assert!(err.contains("unknown key `brust`"), "{err}");
        let err = parse("", "limit-req = \"on\"").expect_err("an error");
        assert!(err.contains("\"off\""), "{err}");
    }

    #[test]
    fn rates_take_nginx_forms() {
        let interval = |text| parse_rate(text).map(|r| r.interval_ns());
        for (text, ns) in [
            ("10/s", 100_000_000),
            ("10r/s", 100_000_000),
            ("600r/m", 100_000_000),
            ("3600/h", 1_000_000_000),
        ] {
            assert_eq!(interval(text), Some(ns), "{text}");
        }
        for bad in ["10", "0/s", "10/d", "x/s", "-1/s", "2000000/s", ""] {
            assert!(parse_rate(bad).is_none(), "{bad}");
        }
    }
}
