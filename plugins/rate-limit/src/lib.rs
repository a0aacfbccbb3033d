//! Rate limiting as an admission plugin: the same verdicts as the built-in
//! `limit-req` (a token bucket per key, kept by the host, so global across
//! worker threads and kept across reloads of this plugin).
//!
//! Parameters (`admission-params`):
//!
//! - `rate` (required): `"N/s"`, `"N/m"` or `"N/h"`, N in 1 ..= 1 000 000;
//! - `burst` (default 1): requests that may come at once, 1 ..= 100 000;
//! - `key` (default `"client-ip"`): what requests are counted by:
//!   `"client-ip"`, `"header:<name>"` or `"cookie:<name>"`; a request
//!   without that header or cookie is not limited;
//! - `status` (default 429): the answer over the limit, 400 ..= 599.
//!
//! A request over the limit is answered with `status` and `Retry-After`
//! (seconds, rounded up).

wit_bindgen::generate!({ path: "../../wit", world: "admission" });

use std::cell::RefCell;

use exports::switchyard::balancer::gate::{AdmissionRequest, Guest, Refusal, Verdict};
use switchyard::balancer::types::{IpAddress, ParamValue};
use switchyard::balancer::{limits, request};

/// The host-kept limiter's name.
const LIMITER: &str = "limit-req";

/// What requests are counted by.
#[derive(Clone, Debug, PartialEq)]
enum Key {
    ClientIp,
    Header(String),
    Cookie(String),
}

struct Settings {
    key: Key,
    status: u16,
    /// The host's handle of the limiter declared in `init`.
    limiter: limits::Limiter,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = const {
        RefCell::new(Settings { key: Key::ClientIp, status: 429, limiter: 0 })
    };
}

/// `"10/s"` as (requests, period in ms).
fn parse_rate(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("rate-limit: `rate = \"{text}\"`: expected \"N/s\", \"N/m\" or \"N/h\"");
    let (n, unit) = text.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if !(1..=1_000_000).contains(&n) {
        return Err(bad());
    }
    let per = match unit.trim() {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    Ok((n, per))
}

fn parse_key(text: &str) -> Result<Key, String> {
    if text == "client-ip" {
        return Ok(Key::ClientIp);
    }
    match text.split_once(':') {
        Some(("header", name)) if !name.is_empty() => Ok(Key::Header(name.to_ascii_lowercase())),
        Some(("cookie", name)) if !name.is_empty() => Ok(Key::Cookie(name.to_owned())),
        _ => Err(format!(
            "rate-limit: `key = \"{text}\"`: expected \"client-ip\", \"header:<name>\" or \"cookie:<name>\""
        )),
    }
}

/// The client's address as text (`10.0.0.7`; an IPv4-mapped IPv6 address
/// as its IPv4 address; IPv6 as eight lower-case hex groups), the key its
/// requests are counted by. Written by hand into a buffer on the stack:
/// `format!` costs several times the rest of a call in a guest.
fn ip_text(ip: &IpAddress) -> Text {
    let mut t = Text::default();
    match *ip {
        IpAddress::Ipv4((a, b, c, d)) => t.dotted([a, b, c, d]),
        IpAddress::Ipv6((0, 0, 0, 0, 0, 0xffff, hi, lo)) => {
            let ([a, b], [c, d]) = (hi.to_be_bytes(), lo.to_be_bytes());
            t.dotted([a, b, c, d]);
        }
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            for (i, group) in [a, b, c, d, e, f, g, h].into_iter().enumerate() {
                if i > 0 {
                    t.byte(b':');
                }
                t.hex(group);
            }
        }
    }
    t
}

/// Up to 40 bytes of ASCII text.
struct Text {
    buf: [u8; 40],
    len: usize,
}

impl Default for Text {
    fn default() -> Self {
        Self {
            buf: [0; 40],
            len: 0,
        }
    }
}

impl Text {
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn decimal(&mut self, v: u8) {
        if v >= 100 {
            self.byte(b'0' + v / 100);
        }
        if v >= 10 {
            self.byte(b'0' + v / 10 % 10);
        }
        self.byte(b'0' + v % 10);
    }

    fn dotted(&mut self, octets: [u8; 4]) {
        for (i, o) in octets.into_iter().enumerate() {
            if i > 0 {
                self.byte(b'.');
            }
            self.decimal(o);
        }
    }

    fn hex(&mut self, v: u16) {
        let mut started = false;
        for shift in [12, 8, 4, 0] {
            let digit = usize::from((v >> shift) & 0xf);
            if digit != 0 || started || shift == 0 {
                started = true;
                self.byte(b"0123456789abcdef"[digit]);
            }
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// The value of cookie `name` in the request's `Cookie` header.
fn cookie(name: &str) -> Option<String> {
    let header = request::header("cookie")?;
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name && !v.trim().is_empty()).then(|| v.trim().to_owned())
    })
}

struct RateLimit;

impl Guest for RateLimit {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        let mut rate = None;
        let mut burst = 1u32;
        let mut key = Key::ClientIp;
        let mut status = 429u16;
        for (name, value) in params {
            match (name.as_str(), value) {
                ("rate", ParamValue::Text(t)) => rate = Some(parse_rate(&t)?),
                ("burst", ParamValue::Integer(n)) if (1..=100_000).contains(&n) => burst = n as u32,
                ("key", ParamValue::Text(t)) => key = parse_key(&t)?,
                ("status", ParamValue::Integer(n)) if (400..=599).contains(&n) => status = n as u16,
                (other, value) => {
                    return Err(format!(
                        "rate-limit: unknown or invalid parameter `{other}` = {value:?} (rate = \"N/s\", burst = 1.., key = \"client-ip\" | \"header:<name>\" | \"cookie:<name>\", status = 400..=599)"
                    ));
                }
            }
        }
        let (requests, per_ms) =
            rate.ok_or("rate-limit: `rate` is required, e.g. rate = \"10/s\"")?;
        let limiter = limits::declare_rate(LIMITER, requests, per_ms, burst)?;
        SETTINGS.with_borrow_mut(|s| {
            *s = Settings {
                key,
                status,
                limiter,
            }
        });
        Ok(())
    }

    fn admit(req: AdmissionRequest) -> Verdict {
        SETTINGS.with_borrow(|s| {
            let (ip, text);
            let material = match &s.key {
                Key::ClientIp => {
                    ip = ip_text(&req.client_ip);
                    Some(ip.as_str())
                }
                Key::Header(name) => {
                    text = request::header(name).filter(|v| !v.is_empty());
                    text.as_deref()
                }
                Key::Cookie(name) => {
                    text = cookie(name);
                    text.as_deref()
                }
            };
            let Some(material) = material else {
                return Verdict::Allow;
            };
            match limits::take(s.limiter, material, 1) {
                Ok(()) => Verdict::Allow,
                Err(wait_ms) => Verdict::Deny(Refusal {
                    status: s.status,
                    reason: "too many requests: rate limit reached (rate-limit plugin)".into(),
                    retry_after: Some(wait_ms.div_ceil(1000).max(1).min(u64::from(u32::MAX)) as u32),
                }),
            }
        })
    }
}

#[cfg(target_arch = "wasm32")]
export!(RateLimit);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 16] = *b"rate-limit@0.1.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_keys_parse_as_the_built_in_limit_reads_them() {
        assert_eq!(parse_rate("10/s"), Ok((10, 1_000)));
        assert_eq!(parse_rate("1/m"), Ok((1, 60_000)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/d").is_err());
        assert_eq!(
            parse_key("header:X-Api-Key"),
            Ok(Key::Header("x-api-key".into()))
        );
        assert!(parse_key("header:").is_err());
        let cases = [
            (IpAddress::Ipv4((192, 0, 2, 255)), "192.0.2.255"),
            (IpAddress::Ipv4((0, 10, 100, 7)), "0.10.100.7"),
            (
                IpAddress::Ipv6((0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0007)),
                "10.0.0.7",
            ),
            (
                IpAddress::Ipv6((0x2001, 0xdb8, 0, 0, 0, 0, 0xff, 0xabcd)),
                "2001:db8:0:0:0:0:ff:abcd",
            ),
        ];
        for (ip, text) in cases {
            assert_eq!(ip_text(&ip).as_str(), text);
        }
    }
}
