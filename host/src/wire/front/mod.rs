//! The strict front: request heads that two parsers could read two ways
//! (request smuggling), that exceed the limits, or that arrive too slowly
//! are answered here, before anything is sent upstream, and the connection
//! is closed.
//!
//! HTTP/1 connections are read through a [`Guard`] that sees the raw bytes
//! before hyper does: it holds each request head back until it is complete
//! and checked (`framer.rs`), follows the body framing so it always knows
//! where the next head starts, and keeps the client timeouts (head, body,
//! keep-alive). It is needed because hyper normalises what a proxy must
//! refuse: it drops a `Content-Length` sent with `Transfer-Encoding` and
//! merges repeated identical ones, so the parsed request no longer shows
//! them. A refused head never reaches hyper: the guard hands it a stand-in
//! head instead, and the service answers that one with the refusal
//! ([`Admitted::refusal`]), so the answer is written in order after earlier
//! pipelined responses.
//!
//! Refused (RFC 9112 6.1, 6.3, 3.2, 7.1; the checks are [`check_fields`],
//! shared with HTTP/2 requests, which hyper parses itself): `Content-Length`
//! with `Transfer-Encoding`, more than one `Content-Length` or one that is
//! not digits, `Transfer-Encoding` on two lines, not ending in exactly one
//! `chunked`, or on HTTP/1.0, HTTP/1.1 without `Host` or with two, obs-fold
//! and other malformed lines, invalid chunk sizes and extensions (400);
//! targets over [`MAX_URI`] (414); heads over [`MAX_HEAD`] or with more than
//! [`MAX_HEADERS`](crate::wire::head::MAX_HEADERS) fields (431, HTTP/2 too); bodies over `client.max-body-size` (413);
//! heads not complete within `client.header-timeout` and bodies silent for
//! `client.body-timeout` (408).

mod check;
mod framer;
mod guard;
pub mod h1;

pub use self::check::{
    Checked, Framing, MAX_HEAD, MAX_URI, Refusal, check, check_fields, join_cookies, parse_length,
    refuse, too_large,
};
pub use self::framer::{Fed, Framer, RefusedAt};
pub use self::guard::{Admitted, Conn, Guard, Protocol, Tracked};
