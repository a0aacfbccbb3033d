//! Header canary: requests that carry a marker header (by default
//! `X-Canary: 1`) go to the canary pool, all others to the stable pool.
//!
//! The canary pool is the backends whose `id` is listed in the `canary`
//! parameter (ids not in the upstream's set are ignored); every other backend
//! is stable. Requests without the marker never reach a canary backend: when
//! no stable backend is usable they are rejected (503) rather than sent to
//! the canary. Requests with the marker go to the stable pool when no canary
//! backend is usable (none listed, all down, or all tried by this request),
//! unless `fallback = "reject"`, which answers them 503 instead.
//!
//! Within a pool backends take turns (weights are not used): each worker
//! thread's instance keeps one counter per pool, started at the first
//! pick's global `sequence` so threads do not all begin with the same
//! backend. (The global `sequence` alone would not do: canary and stable
//! requests interleave, and a client alternating between them would send
//! every stable request to the same backend of a two-backend pool.) A pick
//! is O(1) when every backend is usable, O(pool size) at worst otherwise.
//!
//! Parameters:
//! - `canary` (array of backend ids, e.g. `["v2-a", "v2-b"]`, or one id as a
//!   string; default empty): the canary pool.
//! - `header` (text, default `"x-canary"`): the marker header's name.
//! - `value` (text, default `"1"`): the value that marks a canary request
//!   (compared exactly; other values are stable requests).
//! - `fallback` (`"stable"` (default) or `"reject"`): what happens to marked
//!   requests when no canary backend is usable.

wit_bindgen::generate!({ path: "../../../wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};
use switchyard::balancer::{backends, request};

/// Backends of one pool and the instance's turn counter.
#[derive(Default)]
struct Pool {
    members: Vec<u32>,
    /// Next turn; `None` until the first pick from this pool.
    turn: Option<u64>,
}

impl Pool {
    /// The member whose turn it is, or the next usable one after it.
    fn next(&mut self, req: &Request) -> Option<u32> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let turn = self.turn.unwrap_or(req.sequence);
        self.turn = Some(turn.wrapping_add(1));
        let start = (turn % n as u64) as usize;
        (0..n)
            .map(|step| self.members[(start + step) % n])
            .find(|&i| req.avoid == 0 || backends::usable(i))
    }
}

struct State {
    canary_ids: Vec<String>,
    header: String,
    value: String,
    reject_when_canary_down: bool,
    canary: Pool,
    stable: Pool,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        canary_ids: Vec::new(),
        header: "x-canary".into(),
        value: "1".into(),
        reject_when_canary_down: false,
        canary: Pool::default(),
        stable: Pool::default(),
    });
}

fn text_param(key: &str, value: &ParamValue) -> Result<String, String> {
    match value {
        ParamValue::Text(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!("`{key}` must be a non-empty string")),
    }
}

/// The strings of an inline TOML array of strings, as the host writes
/// array parameters (`["a", 'b']`).
fn string_array(toml: &str) -> Option<Vec<String>> {
    let inner = toml.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(quote) = chars.next() else {
            return Some(out);
        };
        let mut s = String::new();
        match quote {
            // Literal string: no escapes.
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => s.push(c),
                }
            },
            // Basic string: the escapes an id can plausibly need.
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => s.push(match chars.next()? {
                        'n' => '\n',
                        't' => '\t',
                        c @ ('"' | '\\') => c,
                        _ => return None,
                    }),
                    c => s.push(c),
                }
            },
            _ => return None,
        }
        out.push(s);
    }
}

struct Canary;

impl Guest for Canary {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        STATE.with_borrow_mut(|s| {
            for (key, value) in &params {
                match key.as_str() {
                    "canary" => {
                        s.canary_ids = match value {
                            ParamValue::Text(id) => vec![id.clone()],
                            ParamValue::Toml(array) => string_array(array).ok_or_else(|| {
                                format!("`canary` must be an array of backend ids, got {array}")
                            })?,
                            _ => return Err("`canary` must be an array of backend ids".into()),
                        };
                    }
                    "header" => s.header = text_param(key, value)?.to_ascii_lowercase(),
                    "value" => s.value = text_param(key, value)?,
                    "fallback" => {
                        s.reject_when_canary_down = match text_param(key, value)?.as_str() {
                            "stable" => false,
                            "reject" => true,
                            other => {
                                return Err(format!(
                                    "`fallback` must be \"stable\" or \"reject\", got \"{other}\""
                                ));
                            }
                        };
                    }
                    other => {
                        return Err(format!(
                            "unknown parameter `{other}` (expected `canary`, `header`, `value` or `fallback`)"
                        ));
                    }
                }
            }
            Ok(())
        })
    }

    fn set_backends(set: Vec<Backend>) {
        STATE.with_borrow_mut(|s| {
            let (canary, stable): (Vec<u32>, Vec<u32>) =
                (0..set.len() as u32).partition(|&i| s.canary_ids.contains(&set[i as usize].id));
            s.canary = Pool {
                members: canary,
                turn: None,
            };
            s.stable = Pool {
                members: stable,
                turn: None,
            };
        });
    }

    fn pick(req: Request) -> Decision {
        STATE.with_borrow_mut(|s| {
            let marked = request::header(&s.header).is_some_and(|v| v == s.value);
            if marked {
                if let Some(i) = s.canary.next(&req) {
                    return Decision::Backend(i);
                }
                if s.reject_when_canary_down {
                    return Decision::Reject("no usable canary backend".into());
                }
            }
            s.stable.next(&req).map_or_else(
                || Decision::Reject("no usable stable backend".into()),
                Decision::Backend,
            )
        })
    }
}

// The component exports exist only in the wasm build (a native build of
// this crate runs its unit tests; the linker refuses their WIT names).
#[cfg(target_arch = "wasm32")]
export!(Canary);

/// What the proxy shows this build as, whatever its file is called.
#[unsafe(link_section = "switchyard:plugin")]
#[used]
static PLUGIN: [u8; 12] = *b"canary@0.1.0";

#[cfg(test)]
mod tests {
    use super::string_array;

    #[test]
    fn inline_arrays_of_strings_parse() {
        assert_eq!(
            string_array(r#"["v2-a", 'v2-b',"x\"y"]"#),
            Some(vec!["v2-a".into(), "v2-b".into(), "x\"y".into()])
        );
        assert_eq!(string_array("[]"), Some(vec![]));
        assert_eq!(string_array("[1, 2]"), None);
        assert_eq!(string_array(r#"["open"#), None);
    }
}
