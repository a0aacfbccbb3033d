//! The component's glue: parameters, the ring kept per backend set, and the
//! pick (see the crate docs).

wit_bindgen::generate!({ path: "../../../wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::types::{Backend, Decision, IpAddress, ParamValue, Request};
use switchyard::balancer::{backends, request};

use crate::cookie_value;
use crate::ring::{Member, Ring, key_hash};

/// Owners visited on the ring before a pick gives up on consistency and
/// scans the set for any usable backend (only when nearly all are
/// unusable: the ring has `vnodes x weight` points per backend, so a long
/// walk would be slow).
const WALK_LIMIT: usize = 64;

/// What a request is hashed by.
enum Key {
    ClientIp,
    Header(String),
    Cookie(String),
}

struct State {
    key: Key,
    vnodes: u32,
    ring: Ring,
    count: u32,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        key: Key::ClientIp,
        vnodes: 100,
        ring: Ring::default(),
        count: 0,
    });
}

/// The client address as bytes (v4 and v6 kept apart by length).
fn ip_bytes(ip: &IpAddress) -> Vec<u8> {
    match *ip {
        IpAddress::Ipv4((a, b, c, d)) => vec![a, b, c, d],
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => [a, b, c, d, e, f, g, h]
            .iter()
            .flat_map(|g| g.to_be_bytes())
            .collect(),
    }
}

impl State {
    /// The ring position of this request.
    fn hash(&self, req: &Request) -> u32 {
        let value = match &self.key {
            Key::ClientIp => None,
            Key::Header(name) => request::header(name).filter(|v| !v.is_empty()),
            Key::Cookie(name) => {
                request::header("cookie").and_then(|h| cookie_value(&h, name).map(str::to_owned))
            }
        };
        match value {
            Some(v) => key_hash(v.as_bytes()),
            None => key_hash(&ip_bytes(&req.client_ip)),
        }
    }
}

fn text_param(key: &str, value: &ParamValue) -> Result<String, String> {
    match value {
        ParamValue::Text(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!("`{key}` must be a non-empty string")),
    }
}

struct ConsistentHash;

impl Guest for ConsistentHash {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        STATE.with_borrow_mut(|s| {
            for (key, value) in &params {
                let chosen = match key.as_str() {
                    "header" => Key::Header(text_param(key, value)?.to_ascii_lowercase()),
                    "cookie" => Key::Cookie(text_param(key, value)?),
                    "vnodes" => {
                        s.vnodes = match value {
                            ParamValue::Integer(v) if (1..=1000).contains(v) => *v as u32,
                            _ => return Err("`vnodes` must be an integer in 1..=1000".into()),
                        };
                        continue;
                    }
                    other => {
                        return Err(format!(
                            "unknown parameter `{other}` (expected `header`, `cookie` or `vnodes`)"
                        ));
                    }
                };
                if !matches!(s.key, Key::ClientIp) {
                    return Err("set at most one of `header` and `cookie`".into());
                }
                s.key = chosen;
            }
            Ok(())
        })
    }

    fn set_backends(set: Vec<Backend>) {
        STATE.with_borrow_mut(|s| {
            // Free the old ring before building the new one: both at once
            // could exceed the plugin's memory cap on a big set.
            s.ring = Ring::default();
            let members: Vec<Member<'_>> = set
                .iter()
                .enumerate()
                .map(|(i, b)| Member {
                    index: i as u32,
                    id: &b.id,
                    weight: b.weight,
                })
                .collect();
            s.ring = Ring::build(&members, s.vnodes);
            s.count = set.len() as u32;
        });
    }

    fn pick(req: Request) -> Decision {
        STATE.with_borrow(|s| {
            if s.ring.is_empty() {
                return Decision::Reject("no backends configured".into());
            }
            if req.avoid >= s.count {
                return Decision::Reject("no usable backend".into());
            }
            let hash = s.hash(&req);
            let choice = if req.avoid == 0 {
                s.ring.owner(hash)
            } else {
                s.ring
                    .walk(hash)
                    .take(WALK_LIMIT)
                    .find(|&i| backends::usable(i))
                    .or_else(|| {
                        // Nearly everything is unusable: scan the set.
                        let first = s.ring.owner(hash).unwrap_or(0);
                        (1..s.count)
                            .map(|step| (first + step) % s.count)
                            .find(|&i| backends::usable(i))
                    })
            };
            choice.map_or_else(
                || Decision::Reject("no usable backend".into()),
                Decision::Backend,
            )
        })
    }
}

export!(ConsistentHash with_types_in self);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 21] = *b"consistent-hash@0.1.0";
