//! Layer 0, the base every other layer stands on: the configuration, the
//! one clock, counters and histograms, the access log, and the worker
//! threads. Nothing here knows about HTTP, backends or plugins.

pub mod access;
pub mod clock;
pub mod config;
pub mod stats;
pub mod workers;
