//! A strategy for the host's tests, behaving as its `mode` parameter says:
//!
//! - `fixed` (default): always backend `index` (default 0);
//! - `trap`: traps on every pick (after `after` good picks, default 0);
//! - `spin`: loops forever in `pick`;
//! - `bad-index`: answers an index past the end of the set;
//! - `reject`: rejects every request;
//! - `fail-init`: `init` returns an error;
//! - `grow`: tries to grow memory far beyond any sane limit in `pick`;
//! - `echo-header`: picks the backend whose index is the value of header
//!   `x-pick` (default 0).

wit_bindgen::generate!({ path: "../../../../wit", world: "balancer" });

use std::cell::RefCell;

use exports::switchyard::balancer::strategy::Guest;
use switchyard::balancer::types::{Backend, Decision, ParamValue, Request};

#[derive(Default)]
struct State {
    mode: String,
    index: u32,
    after: u64,
    picks: u64,
    count: u32,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct TestStrategy;

impl Guest for TestStrategy {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        STATE.with_borrow_mut(|s| {
            s.mode = "fixed".into();
            for (key, value) in params {
                match (key.as_str(), value) {
                    ("mode", ParamValue::Text(m)) => s.mode = m,
                    ("index", ParamValue::Integer(i)) => s.index = i as u32,
                    ("after", ParamValue::Integer(i)) => s.after = i as u64,
                    (other, _) => return Err(format!("test-strategy: bad parameter `{other}`")),
                }
            }
            if s.mode == "fail-init" {
                return Err("test-strategy refuses to start (mode = fail-init)".into());
            }
            Ok(())
        })
    }

    fn set_backends(set: Vec<Backend>) {
        STATE.with_borrow_mut(|s| s.count = set.len() as u32);
    }

    fn pick(_req: Request) -> Decision {
        let (mode, index, count, trap_now) = STATE.with_borrow_mut(|s| {
            s.picks += 1;
            (s.mode.clone(), s.index, s.count, s.picks > s.after)
        });
        match mode.as_str() {
            "trap" if trap_now => unreachable!("test-strategy traps on purpose"),
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "bad-index" => Decision::Backend(count + 7),
            "reject" => Decision::Reject("test-strategy rejects everything".into()),
            "grow" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            "echo-header" => {
                let i = switchyard::balancer::request::header("x-pick")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Decision::Backend(i)
            }
            _ => Decision::Backend(index),
        }
    }
}

// The component exports exist only in the wasm build (a native build of
// this crate runs its unit tests; the linker refuses their WIT names).
#[cfg(target_arch = "wasm32")]
export!(TestStrategy);
