//! nginx's smooth weighted round robin, run the way nginx runs it: every
//! backend keeps a *current weight* in guest memory; each pick adds every
//! usable backend's weight to its current weight, picks the largest and
//! subtracts the total from the winner (`ngx_http_upstream_get_peer`, see
//! also nginx commit 52327e0627f4, "smooth weighted round-robin").
//! Weights 5/1/1 give `a a b a c a a`, again and again.
//!
//! Unlike the reference `round-robin` (which derives its rotation from the
//! host's global sequence number), this strategy is stateful: the current
//! weights live in the instance, one set per worker thread. Each thread
//! therefore runs its own smooth sequence over the requests it serves, which
//! is what nginx does per worker process.
//!
//! The strategy exports the optional `state` interface (world
//! `stateful-balancer`), so a new version of the plugin (or a config reload
//! that changes the upstream) continues each thread's sequence where the old
//! version left it instead of starting over: `snapshot` writes the current
//! weights by backend id, `restore` reads them back onto the new version's
//! backend set (backends it does not know start at 0, as a new peer does in
//! nginx).
//!
//! Backends that must not be used for a pick (down, or already tried by this
//! request) take no part in that round, as in nginx.
//!
//! Parameters: none.

wit_bindgen::generate!({ path: "../../../wit", world: "stateful-balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::state::Guest as StateGuest;
use exports::switchyard::balancer::strategy::Guest as StrategyGuest;
use switchyard::balancer::backends;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};

/// First bytes of a snapshot: format name and version.
const MAGIC: &[u8; 8] = b"swrr\0\0\0\x01";

/// One backend as this strategy keeps it.
struct Peer {
    id: String,
    weight: i64,
    current: i64,
}

thread_local! {
    static PEERS: RefCell<Vec<Peer>> = const { RefCell::new(Vec::new()) };
}

struct SmoothWrr;

impl StrategyGuest for SmoothWrr {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        match params.first() {
            Some((key, _)) => Err(format!("smooth-wrr takes no parameters, got `{key}`")),
            None => Ok(()),
        }
    }

    fn set_backends(set: Vec<Backend>) {
        PEERS.with_borrow_mut(|peers| {
            // Backends that stay keep their current weight.
            let next = set
                .into_iter()
                .map(|b| {
                    let current = peers.iter().find(|p| p.id == b.id).map_or(0, |p| p.current);
                    Peer {
                        id: b.id,
                        weight: i64::from(b.weight.max(1)),
                        current,
                    }
                })
                .collect();
            *peers = next;
        });
    }

    fn pick(req: Request) -> Decision {
        PEERS.with_borrow_mut(|peers| {
            let mut total = 0;
            let mut best: Option<usize> = None;
            for i in 0..peers.len() {
                if req.avoid != 0 && !backends::usable(i as u32) {
                    continue;
                }
                peers[i].current += peers[i].weight;
                total += peers[i].weight;
                if best.is_none_or(|b| peers[i].current > peers[b].current) {
                    best = Some(i);
                }
            }
            match best {
                Some(b) => {
                    peers[b].current -= total;
                    Decision::Backend(b as u32)
                }
                None => Decision::Reject("no usable backend".into()),
            }
        })
    }
}

impl StateGuest for SmoothWrr {
    fn snapshot() -> Vec<u8> {
        PEERS.with_borrow(|peers| {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&(peers.len() as u32).to_le_bytes());
            for p in peers {
                out.extend_from_slice(&(p.id.len() as u32).to_le_bytes());
                out.extend_from_slice(p.id.as_bytes());
                out.extend_from_slice(&p.current.to_le_bytes());
            }
            out
        })
    }

    fn restore(state: Vec<u8>) -> Result<(), String> {
        let saved = decode(&state).ok_or("not a smooth-wrr snapshot of this format")?;
        PEERS.with_borrow_mut(|peers| {
            for peer in peers.iter_mut() {
                peer.current = saved
                    .iter()
                    .find(|(id, _)| *id == peer.id)
                    .map_or(0, |(_, current)| *current);
            }
        });
        Ok(())
    }
}

/// `(id, current weight)` pairs of a snapshot; `None` if it is malformed.
fn decode(bytes: &[u8]) -> Option<Vec<(&str, i64)>> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let id = std::str::from_utf8(take(len)?).ok()?;
        let current = i64::from_le_bytes(take(8)?.try_into().ok()?);
        out.push((id, current));
    }
    Some(out)
}

// The component exports exist only in the wasm build (a native build of
// this crate runs its unit tests; the linker refuses their WIT names).
#[cfg(target_arch = "wasm32")]
export!(SmoothWrr);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 16] = *b"smooth-wrr@0.1.0";
