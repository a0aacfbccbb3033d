//! The strict front: request heads that could be read two ways by two
//! parsers (request smuggling) or that exceed the limits are answered here,
//! before anything is sent upstream, and the connection is closed.
//!
//! hyper itself rejects differing `Content-Length`s, a `Transfer-Encoding`
//! that does not end in `chunked`, `Transfer-Encoding` on HTTP/1.0, obs-fold,
//! more than 100 headers (431) and heads over the buffer size (431, see
//! [`MAX_HEAD`]). This adds what a proxy must also refuse (RFC 9112 6.1, 6.3,
//! 3.2): `Content-Length` together with `Transfer-Encoding`, any repeated
//! `Content-Length`, `Transfer-Encoding` on two lines or with `chunked` more
//! than once, HTTP/1.1 without `Host` or with two, and over-long URIs.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{StatusCode, Version};

/// Largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 32 * 1024;
/// Largest request target, in bytes.
pub const MAX_URI: usize = 8 * 1024;

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 414, ...
    pub status: StatusCode,
    /// Short reason, sent to the client and logged.
    pub reason: &'static str,
}

const fn refuse(status: StatusCode, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// Length of the request target as sent (origin or absolute form), counted
/// without building it.
fn target_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len())
}

/// Checks a request head that hyper accepted.
pub fn check(parts: &Parts) -> Result<(), Refusal> {
    let bad = |reason| Err(refuse(StatusCode::BAD_REQUEST, reason));
    if target_len(&parts.uri) > MAX_URI {
        return Err(refuse(StatusCode::URI_TOO_LONG, "request target too long"));
    }
    let headers = &parts.headers;
    let te_lines = headers.get_all(TRANSFER_ENCODING).iter().count();
    let cl_lines = headers.get_all(CONTENT_LENGTH).iter().count();
    if te_lines > 0 && cl_lines > 0 {
        return bad("both Content-Length and Transfer-Encoding");
    }
    if cl_lines > 1 {
        return bad("more than one Content-Length");
    }
    if te_lines > 1 {
        return bad("Transfer-Encoding on more than one line");
    }
    if let Some(te) = headers.get(TRANSFER_ENCODING) {
        let Ok(te) = te.to_str() else {
            return bad("invalid Transfer-Encoding");
        };
        let codings: Vec<&str> = te.split(',').map(str::trim).collect();
        let chunked = codings
            .iter()
            .filter(|c| c.eq_ignore_ascii_case("chunked"))
            .count();
        if chunked != 1
            || !codings
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case("chunked"))
        {
            return bad("Transfer-Encoding must end in exactly one chunked");
        }
    }
    if parts.version == Version::HTTP_11 {
        match headers.get_all(HOST).iter().count() {
            0 => return bad("HTTP/1.1 request without Host"),
            1 => {}
            _ => return bad("more than one Host"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_length_is_the_length_of_the_uri_as_written() {
        for uri in ["/", "/a/b?c=d", "http://example.com:8080/x?y", "*"] {
            let parsed: http::Uri = uri.parse().expect("uri");
            assert_eq!(target_len(&parsed), parsed.to_string().len(), "{uri}");
        }
    }
}
