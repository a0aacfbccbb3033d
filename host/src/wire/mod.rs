//! Layer 1, HTTP as the client sends it: the strict front ([`front`]) with
//! the own HTTP/1.1 server, request and response heads parsed in place
//! ([`head`]), the forwarding and hop-by-hop fields ([`forwarded`]), the
//! client's request body ([`body`]) and TLS termination ([`tls`]). Knows
//! the config, nothing of backends or plugins.

pub mod body;
pub mod forwarded;
pub mod front;
pub mod head;
pub mod tls;
