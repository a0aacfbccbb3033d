//! The checks every request head goes through (RFC 9112 6.1, 6.3, 3.2,
//! 7.1), on its fields as sent: what the front refuses and why.

use http::header::{CONTENT_LENGTH, COOKIE, Entry, HOST, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, Version};

use crate::wire::head::MAX_HEADERS;

/// Largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 32 * 1024;
/// Largest request target, in bytes.
pub const MAX_URI: usize = 8 * 1024;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 408, 413, 414, 431.
    pub status: StatusCode,
    /// Short reason, sent to the client and logged.
    pub reason: &'static str,
}

/// A refusal with `status` and `reason`.
pub const fn refuse(status: StatusCode, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// How the body that follows a request head is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the checks learnt from a head they accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The body framing.
    pub framing: Framing,
    /// The client asks to switch protocols (`Upgrade`), as hyper reads it:
    /// after this message the connection may stop being HTTP.
    pub upgrade: bool,
}

/// Length of the request target as sent (origin or absolute form), counted
/// without building it.
fn target_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len())
}

/// The checks every request head goes through, on its fields as they were
/// sent (`name`, `value` pairs, names in any case).
pub fn check_fields<'a>(
    version: Version,
    target_len: usize,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    max_body: Option<u64>,
) -> Result<Checked, Refusal> {
    let bad = |reason| Err(refuse(StatusCode::BAD_REQUEST, reason));
    if target_len > MAX_URI {
        return Err(refuse(StatusCode::URI_TOO_LONG, "request target too long"));
    }
    let (mut hosts, mut lengths, mut encodings, mut upgrade) = (0, 0, 0, false);
    let mut length = None;
    let mut chunked_last = false;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str().as_bytes()) {
            lengths += 1;
            length = parse_length(value);
            if length.is_none() {
                return bad("invalid Content-Length");
            }
        } else if name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str().as_bytes()) {
            encodings += 1;
            let Ok(value) = std::str::from_utf8(value) else {
                return bad("invalid Transfer-Encoding");
            };
            let mut codings = value.split(',').map(str::trim);
            let chunked = codings
                .clone()
                .filter(|c| c.eq_ignore_ascii_case("chunked"))
                .count();
            chunked_last = chunked == 1
                && codings
                    .next_back()
                    .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case(HOST.as_str().as_bytes()) {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(UPGRADE.as_str().as_bytes()) {
            upgrade = version == Version::HTTP_11;
        }
    }
    if encodings > 0 && lengths > 0 {
        return bad("both Content-Length and Transfer-Encoding");
    }
    if lengths > 1 {
        return bad("more than one Content-Length");
    }
    if encodings > 1 {
        return bad("Transfer-Encoding on more than one line");
    }
    if encodings == 1 && version < Version::HTTP_11 {
        return bad("Transfer-Encoding in an HTTP/1.0 request");
    }
    if encodings == 1 && !chunked_last {
        return bad("Transfer-Encoding must end in exactly one chunked");
    }
    if version == Version::HTTP_11 {
        match hosts {
            0 => return bad("HTTP/1.1 request without Host"),
            1 => {}
            _ => return bad("more than one Host"),
        }
    }
    let framing = match (encodings, length) {
        (1, _) => Framing::Chunked,
        (_, Some(0) | None) => Framing::None,
        (_, Some(n)) => Framing::Length(n),
    };
    if let (Framing::Length(n), Some(max)) = (framing, max_body)
        && n > max
    {
        return Err(too_large());
    }
    Ok(Checked { framing, upgrade })
}

/// The refusal of a body over `client.max-body-size`.
pub const fn too_large() -> Refusal {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body larger than client.max-body-size",
    )
}

/// `1*DIGIT`, nothing else (no sign, no list, no spaces): a
/// `Content-Length` value.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Checks a request head hyper parsed itself (HTTP/2; HTTP/1 heads were
/// checked raw by the [`Guard`](super::Guard)), with the same limits: more than
/// [`MAX_HEADERS`] fields is 431 (its `cookie` crumbs counted as the one
/// field [`join_cookies`] makes of them).
pub fn check(parts: &Parts) -> Result<(), Refusal> {
    if parts.headers.len() > MAX_HEADERS {
        return Err(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields",
        ));
    }
    check_fields(
        parts.version,
        target_len(&parts.uri),
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        None,
    )
    .map(drop)
}

/// Joins the `cookie` fields an HTTP/2 client split into crumbs into the
/// one `Cookie` field an HTTP/1.1 backend expects, with `"; "` between
/// them (RFC 9113 8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let Entry::Occupied(mut cookies) = headers.entry(COOKIE) else {
        return;
    };
    if cookies.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, crumb) in cookies.iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Valid values joined by "; " are a valid value.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        cookies.insert(value);
    }
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

    fn fields(
        version: Version,
        list: &[(&str, &str)],
        max: Option<u64>,
    ) -> Result<Checked, Refusal> {
        check_fields(
            version,
            1,
            list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            max,
        )
    }

    #[test]
    fn framing_follows_the_one_length_or_chunked() {
        let v11 = Version::HTTP_11;
        let ok = |list: &[(&str, &str)]| fields(v11, list, None).expect("accepted").framing;
        assert_eq!(ok(&[("Host", "a")]), Framing::None);
        assert_eq!(ok(&[("host", "a"), ("Content-Length", "0")]), Framing::None);
        assert_eq!(
            ok(&[("Host", "a"), ("content-length", "12")]),
            Framing::Length(12)
        );
        assert_eq!(
            ok(&[("Host", "a"), ("Transfer-Encoding", "gzip, Chunked")]),
            Framing::Chunked
        );
        let up = fields(v11, &[("Host", "a"), ("Upgrade", "websocket")], None);
        assert!(up.expect("accepted").upgrade);
        let up10 = fields(Version::HTTP_10, &[("Upgrade", "websocket")], None);
        assert!(
            !up10.expect("accepted").upgrade,
            "hyper ignores Upgrade on 1.0"
        );
    }

    #[test]
    fn ambiguous_framing_and_hosts_are_refused() {
        let v11 = Version::HTTP_11;
        for (why, list) in [
            (
                "CL+TE",
                &[
                    ("Host", "a"),
                    ("Content-Length", "3"),
                    ("Transfer-Encoding", "chunked"),
                ][..],
            ),
            (
                "TE+CL",
                &[
                    ("Host", "a"),
                    ("Transfer-Encoding", "chunked"),
                    ("Content-Length", "3"),
                ],
            ),
            (
                "same CL twice",
                &[
                    ("Host", "a"),
                    ("Content-Length", "3"),
                    ("Content-Length", "3"),
                ],
            ),
            ("CL list", &[("Host", "a"), ("Content-Length", "3, 3")]),
            ("signed CL", &[("Host", "a"), ("Content-Length", "+3")]),
            (
                "huge CL",
                &[("Host", "a"), ("Content-Length", "99999999999999999999")],
            ),
            (
                "TE twice",
                &[
                    ("Host", "a"),
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", "chunked"),
                ],
            ),
            (
                "chunked not last",
                &[("Host", "a"), ("Transfer-Encoding", "chunked, gzip")],
            ),
            (
                "chunked twice",
                &[("Host", "a"), ("Transfer-Encoding", "chunked, chunked")],
            ),
            ("no Host", &[]),
            ("two Hosts", &[("Host", "a"), ("host", "b")]),
        ] {
            let refusal = fields(v11, list, None).expect_err(why);
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{why}");
        }
        let te10 = fields(Version::HTTP_10, &[("Transfer-Encoding", "chunked")], None);
        assert_eq!(te10.expect_err("1.0 TE").status, StatusCode::BAD_REQUEST);
        assert!(
            fields(Version::HTTP_10, &[], None).is_ok(),
            "1.0 needs no Host"
        );
    }

    #[test]
    fn cookie_crumbs_become_one_field_and_other_fields_stay() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        h.append(COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let cookies: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        assert_eq!((h.len(), &h["x-a"]), (2, &HeaderValue::from_static("1")));
        let one = h.clone();
        join_cookies(&mut h);
        assert_eq!(h, one, "one field is left as it is");
        let mut none = HeaderMap::new();
        join_cookies(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn an_http2_head_with_more_than_max_headers_fields_gets_431() {
        let head = |n: usize| {
            let mut req = http::Request::builder()
                .version(Version::HTTP_2)
                .uri("http://a/");
            for i in 0..n {
                req = req.header(format!("x-{i}"), "v");
            }
            req.body(()).expect("request").into_parts().0
        };
        assert_eq!(check(&head(MAX_HEADERS)), Ok(()));
        let refusal = check(&head(MAX_HEADERS + 1)).expect_err("too many");
        assert_eq!(refusal.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn limits_give_their_own_statuses() {
        let long = check_fields(
            Version::HTTP_11,
            MAX_URI + 1,
            [(&b"Host"[..], &b"a"[..])],
            None,
        );
        assert_eq!(long.expect_err("414").status, StatusCode::URI_TOO_LONG);
        let big = fields(
            Version::HTTP_11,
            &[("Host", "a"), ("Content-Length", "11")],
            Some(10),
        );
        assert_eq!(big.expect_err("413").status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            fields(
                Version::HTTP_11,
                &[("Host", "a"), ("Content-Length", "10")],
                Some(10)
            )
            .is_ok()
        );
    }
}
