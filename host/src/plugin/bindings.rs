//! Host-side bindings generated from `wit/balancer.wit`: the only place they
//! are generated. Everything else uses the re-exports below.
//!
//! Two worlds: `balancer` (strategies) and `admission` (admission
//! plugins). They share the `types` and `request` interfaces, generated
//! once (the admission bindings are told to use the balancer's), so the
//! store data implements `request::Host` once for both.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "balancer",
});

/// The `admission` world's bindings.
pub mod admission {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "admission",
        // A limiter used wrongly (undeclared name, key too long) traps.
        imports: { "switchyard:balancer/limits": trappable },
        with: {
            "switchyard:balancer/types": crate::plugin::bindings::switchyard::balancer::types,
            "switchyard:balancer/request": crate::plugin::bindings::switchyard::balancer::request,
        },
    });
}

pub use self::admission::exports::switchyard::balancer::gate::{
    AdmissionRequest, Verdict as WitVerdict,
};
pub use self::admission::switchyard::balancer::limits;
pub use self::admission::{Admission as AdmissionWorld, AdmissionIndices};
pub use self::switchyard::balancer::types::{
    Backend as WitBackend, Decision, HttpMethod, IpAddress, ParamValue, Request as WitRequest,
};
pub use self::switchyard::balancer::{backends, request, types};
