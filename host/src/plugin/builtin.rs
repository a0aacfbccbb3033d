//! The reference strategies, compiled into the binary so that `demo` works
//! from an empty directory and a missing reference plugin file falls back to
//! its built-in copy. Built from `plugins/` by `build.rs`.

use super::runtime::content_hash;

/// `(name, component bytes)` of each reference strategy.
pub const BUILTIN: [(&str, &[u8]); 3] = [
    (
        "round-robin",
        include_bytes!(env!("SWITCHYARD_WASM_ROUND_ROBIN")),
    ),
    (
        "least-conn",
        include_bytes!(env!("SWITCHYARD_WASM_LEAST_CONN")),
    ),
    ("ip-hash", include_bytes!(env!("SWITCHYARD_WASM_IP_HASH"))),
];

/// The built-in strategy named `name`, if there is one.
pub fn named(name: &str) -> Option<&'static [u8]> {
    BUILTIN
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, bytes)| *bytes)
}

/// Whether `name` with content hash `hash` is the built-in strategy of
/// that name (not a file of the same name with other content).
pub fn is_builtin(name: &str, hash: u64) -> bool {
    named(name).is_some_and(|bytes| content_hash(bytes) == hash)
}
