//! Layer 3, the plugin runtime: compiles strategy components, prepares them
//! for an upstream, and runs picks on long-lived per-thread instances under
//! a deadline, with the host's round robin as the fallback.
//!
//! Shape (after pingora's swap-in selector and wasmtime's `serve`):
//! compiling ([`Runtime::compile`], tens of ms) and checking a plugin
//! ([`Strategy::prepare`]) happen off the request path; the result, a
//! [`Strategy`], is swapped into the upstream atomically. On the request path
//! a worker thread finds its own instance of that strategy (instantiating it
//! once from the shared `InstancePre`) and calls `pick`.
//!
//! A strategy that exports the optional `state` interface carries its
//! guest-side state across reloads: each thread's instance of the new
//! version is restored from a snapshot of that thread's instance of the old
//! one ([`Strategy::lineage`]). An upstream may also run a second strategy
//! as a shadow, asked on every request without routing any ([`shadow`]).
//!
//! Files, bottom up: `bindings` (generated from `wit/`), `sandbox` (the
//! WASI a guest gets), `imports` (what a guest can call, per store),
//! [`runtime`] (engine, linker, compiled components), `instance` (one
//! thread's instance), [`stats`] (counters and the breaker), [`choice`]
//! (pick inputs and answers, the host's round robin), [`strategy`] (the
//! pick), [`shadow`], [`builtin`] (the reference strategies in the binary).

pub mod admission;
mod bindings;
pub mod builtin;
pub mod choice;
pub mod identity;
mod imports;
mod instance;
pub mod runtime;
mod sandbox;
pub mod shadow;
pub mod stats;
pub mod strategy;

pub use self::admission::{Admission, Gated};
pub use self::bindings::ParamValue;
pub use self::choice::{Choice, PickInput, fallback};
pub use self::instance::{HandoverError, MAX_SNAPSHOT};
pub use self::runtime::{
    Compiled, PluginError, Runtime, STATE_INTERFACE, content_hash, plugin_path,
};
pub use self::shadow::{Shadow, ShadowStats};
pub use self::stats::{FailureKind, StrategyStats};
pub use self::strategy::{Strategy, Succession};
