//! API keys as an admission plugin: a request is let in when a header
//! carries one of the configured keys, each key with its own rate (a token
//! bucket kept by the host, global across worker threads and kept across
//! reloads), and goes on with a header naming the key's client, for the
//! strategy and the backend.
//!
//! Parameters (`admission-params`):
//!
//! - `keys` (required): a table of clients, each `name = "<key>:<rate>"`,
//!   the rate as `"N/s"`, `"N/m"` or `"N/h"` (a client may send N at once,
//!   then N per period); at most 16 distinct rates;
//! - `header` (default `"x-api-key"`): the request header carrying the key;
//! - `identity-header` (default `"x-api-client"`): the header added to the
//!   request let in, naming the client (any value the client sent under that
//!   name is replaced).
//!
//! A request without a known key gets 401; one over its key's rate, 429
//! with `Retry-After`.
//!
//! ```toml
//! admission = "api-key"
//! admission-params = { keys = { alice = "k-3f9a:10/s", batch = "k-77c1:100/m" } }
//! ```

wit_bindgen::generate!({ path: "../../wit", world: "admission" });

use std::cell::RefCell;

use exports::switchyard::balancer::gate::{AdmissionRequest, Guest, Refusal, Verdict};
use switchyard::balancer::types::ParamValue;
use switchyard::balancer::{limits, request};

/// One client.
#[derive(Debug, Clone, PartialEq)]
struct Client {
    name: String,
    key: String,
    /// The limiter of its rate (`"10/s"`).
    limiter: String,
    /// The host's handle of that limiter (declared in `init`).
    handle: limits::Limiter,
}

#[derive(Default)]
struct Settings {
    header: String,
    identity: String,
    clients: Vec<Client>,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings::default());
}

/// `"10/s"` as (requests, period in ms).
fn parse_rate(text: &str) -> Option<(u32, u32)> {
    let (n, unit) = text.split_once('/')?;
    let n: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))?;
    let per = match unit.trim() {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some((n, per))
}

/// A TOML string or bare key at the start of `s`: (it, the rest).
fn token(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((out, &rest[i + 1..])),
                '\\' => out.push(chars.next()?.1),
                c => out.push(c),
            }
        }
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_owned(), &s[end..]))
}

/// The `keys` table as the host writes it back (`{ a = "x", b = "y" }`):
/// (name, value) pairs of strings.
fn parse_table(text: &str) -> Option<Vec<(String, String)>> {
    let mut rest = text.trim().strip_prefix('{')?;
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return after.trim().is_empty().then_some(out);
        }
        let (name, after) = token(rest)?;
        let after = after.trim_start().strip_prefix('=')?.trim_start();
        if !after.starts_with('"') {
            return None;
        }
        let (value, after) = token(after)?;
        out.push((name, value));
        rest = after.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        }
    }
}

fn clients(table: &str) -> Result<Vec<Client>, String> {
    let pairs = parse_table(table)
        .ok_or_else(|| "api-key: `keys` must be a table of `name = \"<key>:<rate>\"`".to_owned())?;
    pairs
        .into_iter()
        .map(|(name, value)| {
            let (key, rate) = value
                .rsplit_once(':')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| {
                    format!("api-key: keys.{name}: expected \"<key>:<rate>\", e.g. \"k-3f9a:10/s\"")
                })?;
            parse_rate(rate).ok_or_else(|| {
                format!("api-key: keys.{name}: rate `{rate}` is not \"N/s\", \"N/m\" or \"N/h\"")
            })?;
            Ok(Client {
                name,
                key: key.to_owned(),
                limiter: rate.trim().to_owned(),
                handle: 0,
            })
        })
        .collect()
}

struct ApiKey;

impl Guest for ApiKey {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        let mut settings = Settings {
            header: "x-api-key".into(),
            identity: "x-api-client".into(),
            clients: Vec::new(),
        };
        let mut keys = None;
        for (name, value) in params {
            match (name.as_str(), value) {
                ("keys", ParamValue::Toml(t)) => keys = Some(clients(&t)?),
                ("header", ParamValue::Text(t)) => settings.header = t.to_ascii_lowercase(),
                ("identity-header", ParamValue::Text(t)) => {
                    settings.identity = t.to_ascii_lowercase()
                }
                (other, _) => {
                    return Err(format!(
                        "api-key: unknown or invalid parameter `{other}` (keys = {{ name = \"<key>:<rate>\" }}, header, identity-header)"
                    ));
                }
            }
        }
        settings.clients = keys.ok_or("api-key: `keys` is required")?;
        for client in &mut settings.clients {
            // Each distinct rate is one host limiter, counting per client
            // (declaring a rate again answers the same handle).
            if let Some((n, per)) = parse_rate(&client.limiter) {
                client.handle = limits::declare_rate(&client.limiter, n, per, n)?;
            }
        }
        SETTINGS.with_borrow_mut(|s| *s = settings);
        Ok(())
    }

    fn admit(_req: AdmissionRequest) -> Verdict {
        SETTINGS.with_borrow(|s| {
            let presented = request::header(&s.header);
            let Some(client) = presented
                .as_deref()
                .and_then(|key| s.clients.iter().find(|c| c.key == key))
            else {
                return Verdict::Deny(Refusal {
                    status: 401,
                    reason: "missing or unknown API key".into(),
                    retry_after: None,
                });
            };
            match limits::take(client.handle, &client.name, 1) {
                Ok(()) => Verdict::AllowWith(vec![(s.identity.clone(), client.name.clone())]),
                Err(wait_ms) => Verdict::Deny(Refusal {
                    status: 429,
                    reason: format!("too many requests for API client `{}`", client.name),
                    retry_after: Some(wait_ms.div_ceil(1000).max(1).min(u64::from(u32::MAX)) as u32),
                }),
            }
        })
    }
}

#[cfg(target_arch = "wasm32")]
export!(ApiKey);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 13] = *b"api-key@0.1.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_table_parses_as_the_host_writes_it() {
        let c = clients(r#"{ alice = "k-1:10/s", "bob smith" = "k:2:5/m" }"#).expect("valid");
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].name.as_str(), c[0].key.as_str(), c[0].limiter.as_str()),
            ("alice", "k-1", "10/s")
        );
        assert_eq!(
            (c[1].name.as_str(), c[1].key.as_str()),
            ("bob smith", "k:2")
        );
        assert!(clients(r#"{ alice = "k-1" }"#).is_err());
        assert!(clients("[1, 2]").is_err());
    }
}
