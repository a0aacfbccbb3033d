//! Host-side bindings generated from `wit/balancer.wit`: the only place they
//! are generated. Everything else uses the re-exports below.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "balancer",
});

pub use self::switchyard::balancer::types::{
    Backend as WitBackend, Decision, HttpMethod, IpAddress, ParamValue, Request as WitRequest,
};
pub use self::switchyard::balancer::{backends, request, types};
