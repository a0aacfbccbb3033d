//! An admission plugin for the host's tests. What it does for a request is
//! its `mode` parameter, or, with `mode = "by-path"` (the default), the
//! request path's first segment (`/trap`, `/spin/x`, ...):
//!
//! - `allow` (or any other path): allow;
//! - `trap`: traps; `spin`: loops forever; `grow`: grows memory without end;
//! - `garbage`: denies with status 200 (not an error status: a bad answer);
//! - `bad-header`: allows with a header name that is not one;
//! - `tag`: allows with `x-admitted: yes` and `x-pick: <x-want-pick>`
//!   (for the test strategy's `echo-header` mode);
//! - `deny`: denies with 451, reason `test says no`, `Retry-After: 7`;
//! - `inflight`: acquires concurrency `inflight` under key `all` with
//!   `max` (param, default 1); over it: 429 with reason `in flight: <n>`;
//! - `count`: adds 1 to the counter `hits` (window `window-ms`, default
//!   60000) under key `all`; over `max` (default 3): 429 `count: <n>`;
//! - `undeclared`: takes from a limiter it never declared (a trap);
//! - `late-declare`: declares a limiter during `admit`; denies with 418 and
//!   the error it got.
//!
//! `init` declares `inflight` and `hits`; with `fail-init = true` it fails.

wit_bindgen::generate!({ path: "../../../../wit", world: "admission" });

use std::cell::RefCell;

use exports::switchyard::balancer::gate::{AdmissionRequest, Guest, Refusal, Verdict};
use switchyard::balancer::types::ParamValue;
use switchyard::balancer::{limits, request};

struct Settings {
    mode: String,
    max: u32,
    inflight: limits::Limiter,
    hits: limits::Limiter,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = const {
        RefCell::new(Settings { mode: String::new(), max: 1, inflight: 0, hits: 0 })
    };
}

fn deny(status: u16, reason: String) -> Verdict {
    Verdict::Deny(Refusal {
        status,
        reason,
        retry_after: None,
    })
}

struct TestAdmission;

impl Guest for TestAdmission {
    fn init(params: Vec<(String, ParamValue)>) -> Result<(), String> {
        let mut mode = "by-path".to_owned();
        let mut max = None;
        let mut window = 60_000u32;
        for (key, value) in params {
            match (key.as_str(), value) {
                ("mode", ParamValue::Text(m)) => mode = m,
                ("max", ParamValue::Integer(n)) => max = Some(n as u32),
                ("window-ms", ParamValue::Integer(n)) => window = n as u32,
                ("fail-init", ParamValue::Boolean(true)) => {
                    return Err("test-admission refuses to start (fail-init)".into());
                }
                (other, _) => return Err(format!("test-admission: bad parameter `{other}`")),
            }
        }
        let inflight = limits::declare_concurrency("inflight")?;
        let hits = limits::declare_counter("hits", window)?;
        let max = max.unwrap_or(if mode == "count" { 3 } else { 1 });
        SETTINGS.with_borrow_mut(|s| {
            *s = Settings {
                mode,
                max,
                inflight,
                hits,
            }
        });
        Ok(())
    }

    fn admit(_req: AdmissionRequest) -> Verdict {
        let (mode, max, inflight, hits) =
            SETTINGS.with_borrow(|s| (s.mode.clone(), s.max, s.inflight, s.hits));
        let mode = if mode == "by-path" {
            let path = request::path();
            path.trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("")
                .to_owned()
        } else {
            mode
        };
        match mode.as_str() {
            "trap" => unreachable!("test-admission traps on purpose"),
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            "garbage" => deny(200, "not an error status".into()),
            "bad-header" => Verdict::AllowWith(vec![("not a header".into(), "x".into())]),
            "tag" => {
                let pick = request::header("x-want-pick").unwrap_or_else(|| "0".into());
                Verdict::AllowWith(vec![
                    ("x-admitted".into(), "yes".into()),
                    ("x-pick".into(), pick),
                ])
            }
            "deny" => Verdict::Deny(Refusal {
                status: 451,
                reason: "test says no".into(),
                retry_after: Some(7),
            }),
            "inflight" => match limits::acquire(inflight, "all", max) {
                Ok(()) => Verdict::Allow,
                Err(n) => deny(429, format!("in flight: {n}")),
            },
            "count" => {
                let n = limits::add(hits, "all", 1);
                if n > u64::from(max) {
                    deny(429, format!("count: {n}"))
                } else {
                    Verdict::Allow
                }
            }
            // A handle no declaration answered.
            "undeclared" => match limits::take(99, "k", 1) {
                Ok(()) => Verdict::Allow,
                Err(_) => deny(429, "limited".into()),
            },
            "late-declare" => match limits::declare_rate("late", 1, 1000, 1) {
                Ok(_) => deny(418, "declared late".into()),
                Err(e) => deny(418, e),
            },
            _ => Verdict::Allow,
        }
    }
}

#[cfg(target_arch = "wasm32")]
export!(TestAdmission);
