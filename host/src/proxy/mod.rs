//! Layer 5, the request path: the listeners accept client connections
//! ([`listener`]), each request goes through an [`exchange`] (route, pick,
//! forward, retry), the response streams back in a [`body`], and an
//! upgraded connection becomes a [`tunnel`].

pub mod body;
pub mod exchange;
pub mod listener;
pub mod tunnel;
