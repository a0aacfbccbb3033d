//! What a limit counts a request by: the client's address, a header's
//! value or a cookie's.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::COOKIE;

use crate::base::config::LimitKey;

/// The bytes a request is counted by under `key`: None when the request
/// carries no such header or cookie (it is then not limited, as nginx does
/// with an empty key). An IPv4 client reached over an IPv6 socket counts
/// as its IPv4 address.
pub fn key_material<'r>(
    key: &LimitKey,
    headers: &'r HeaderMap,
    client_ip: IpAddr,
    buf: &'r mut [u8; 16],
) -> Option<&'r [u8]> {
    match key {
        LimitKey::ClientIp => Some(match client_ip.to_canonical() {
            IpAddr::V4(v4) => {
                buf[..4].copy_from_slice(&v4.octets());
                &buf[..4]
            }
            IpAddr::V6(v6) => {
                *buf = v6.octets();
                &buf[..]
            }
        }),
        LimitKey::Header(name) => headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty()),
        LimitKey::Cookie(name) => cookie(headers, name.as_bytes()),
    }
}

/// The value of cookie `name` in the request's `Cookie` fields (RFC 6265
/// 4.2.1: `name=value` pairs separated by `; `), the first if repeated.
fn cookie<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
        })
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookies_are_found_among_others_and_across_fields() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; session=abc ;b=2"));
        h.append(COOKIE, HeaderValue::from_static("later=x"));
        assert_eq!(cookie(&h, b"session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, b"later"), Some(&b"x"[..]));
        assert_eq!(cookie(&h, b"sess"), None);
        let mut empty = HeaderMap::new();
        empty.insert(COOKIE, HeaderValue::from_static("session="));
        assert_eq!(cookie(&empty, b"session"), None);
    }

    #[test]
    fn a_mapped_ipv4_client_counts_as_itself() {
        let (mut a, mut b) = ([0; 16], [0; 16]);
        let h = HeaderMap::new();
        let v4 = key_material(
            &LimitKey::ClientIp,
            &h,
            "10.0.0.7".parse().expect("valid"),
            &mut a,
        );
        let mapped = key_material(
            &LimitKey::ClientIp,
            &h,
            "::ffff:10.0.0.7".parse().expect("valid"),
            &mut b,
        );
        assert_eq!(v4, mapped);
    }
}
