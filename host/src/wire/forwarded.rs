//! Request and response header rewriting at the proxy boundary: the client's
//! real address (`X-Forwarded-For` believed only from trusted proxies),
//! `X-Real-IP`, `X-Forwarded-For`, `X-Forwarded-Proto`, and removal of
//! hop-by-hop headers (RFC 9110 section 7.6.1).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{self, Entry, HeaderName, HeaderValue};
use ipnet::IpNet;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Real-IP`.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// Parses one `X-Forwarded-For` element: `1.2.3.4`, `1.2.3.4:5678`,
/// `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case `X-Forwarded-For` is read from the right and the first address
/// that is not a trusted proxy is the client (nginx `real_ip_recursive on`).
/// A malformed element stops the walk at the last good address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for value in values.iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !trusted(ip, proxies) {
                        return ip;
                    }
                }
                None => return client,
            }
        }
    }
    client
}

/// Hop-by-hop headers that never cross the proxy (RFC 9110 7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive`). `Connection` first.
pub(crate) static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` (in any case) is in [`HOP_BY_HOP`].
fn hop_by_hop_index(name: &str) -> Option<usize> {
    let is = |hop: &str| name.eq_ignore_ascii_case(hop);
    match name.len() {
        10 if is("connection") => Some(0),
        16 if is("proxy-connection") => Some(1),
        10 if is("keep-alive") => Some(2),
        2 if is("te") => Some(3),
        7 if is("trailer") => Some(4),
        17 if is("transfer-encoding") => Some(5),
        7 if is("upgrade") => Some(6),
        _ => None,
    }
}

/// Whether a `Connection` value is one of the two options that name no
/// other field (`keep-alive`, `close`), as nearly every message sends it.
pub fn names_no_field(connection: &[u8]) -> bool {
    connection.eq_ignore_ascii_case(b"keep-alive") || connection.eq_ignore_ascii_case(b"close")
}

/// Whether a `Connection` value lists the `close` option (in any case,
/// among other tokens).
pub fn says_close(connection: &[u8]) -> bool {
    connection
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, |_| false);
}

/// Whether `name` is a field the proxy forwards or sets itself on every
/// request: `Host`, `X-Real-IP`, `X-Forwarded-For`, `X-Forwarded-Proto`.
fn set_by_proxy(name: &HeaderName) -> bool {
    name == header::HOST
        || name == X_REAL_IP
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
}

/// [`strip_hop_by_hop`], except that the fields `kept` says are not
/// removed when `Connection` names them.
fn strip(headers: &mut HeaderMap, kept: impl Fn(&HeaderName) -> bool) {
    // Which of them are present, in one pass over the names: most messages
    // carry none, or only `Connection: keep-alive`, and each removal hashes
    // its name.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present[i] = true;
        }
    }
    let only_options = || {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .all(|v| names_no_field(v.as_bytes()))
    };
    if present[0] && !only_options() {
        // Other names `Connection` lists (`close` is an option, not a name).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| {
                !token.eq_ignore_ascii_case("close") && hop_by_hop_index(token).is_none()
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .filter(|name| !kept(name))
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (hop, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, there)| *there) {
        headers.remove(hop);
    }
}

/// A client connection's address, with its text as a header value made once
/// per connection (not per request).
#[derive(Debug, Clone)]
pub struct Peer {
    ip: IpAddr,
    value: HeaderValue,
}

impl Peer {
    /// The peer at `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            value: ip_value(ip),
        }
    }

    /// Its address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// `ip` as header text.
fn ip_value(ip: IpAddr) -> HeaderValue {
    // Digits, dots and colons: always a valid value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Rewrites a request head for the backend: strips hop-by-hop headers, sets
/// `X-Real-IP` to the client, appends the peer to `X-Forwarded-For` (keeping
/// what came before, trusted or not), and sets `X-Forwarded-Proto` unless a
/// trusted proxy already did. A client's `Connection` cannot remove what
/// the proxy forwards or sets itself (`Host` and those three): the backend
/// would get HTTP/1.1 without `Host`, or a forwarding chain cut short.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    peer: &Peer,
    client: IpAddr,
    scheme: &'static str,
    proxies: &[IpNet],
) {
    strip(headers, set_by_proxy);
    let real_ip = if client == peer.ip {
        peer.value.clone()
    } else {
        ip_value(client)
    };
    headers.insert(&X_REAL_IP, real_ip);
    // One lookup for both reading and setting it.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(field) => {
            field.insert(peer.value.clone());
        }
        Entry::Occupied(mut field) => {
            let previous: Vec<&str> = field.iter().filter_map(|v| v.to_str().ok()).collect();
            let joined = if previous.is_empty() {
                Some(peer.value.clone())
            } else {
                let peer_text = peer.value.to_str().unwrap_or_default();
                HeaderValue::from_str(&format!("{}, {peer_text}", previous.join(", "))).ok()
            };
            if let Some(v) = joined {
                field.insert(v);
            }
        }
    }
    if !(trusted(peer.ip, proxies) && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn close_is_found_among_the_connection_tokens_and_only_whole() {
        for yes in ["close", "Close", "keep-alive, CLOSE", " close ,x-a"] {
            assert!(says_close(yes.as_bytes()), "{yes}");
        }
        for no in ["keep-alive", "closed", "x-close", ""] {
            assert!(!says_close(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        assert_eq!(
            client_ip(ip("203.0.113.9"), &xff(&["1.1.1.1"]), &proxies),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("198.51.100.7"));
        let h = xff(&["[2001:db8::5]:443, 10.2.2.2"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("2001:db8::5"));
        // Garbage stops the walk at the last good hop.
        let h = xff(&["1.2.3.4, bogus, 10.3.3.3"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("10.3.3.3"));
        // No header: the peer itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &proxies),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn request_rewrite_strips_hop_by_hop_and_sets_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let peer = Peer::new(ip("127.0.0.1"));
        rewrite_request(&mut h, &peer, ip("127.0.0.1"), "http", &[]);
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone} must be stripped");
        }
        assert_eq!(h[header::HOST], "example.com");
        assert_eq!(h[&X_REAL_IP], "127.0.0.1");
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 127.0.0.1");
        assert_eq!(
            h[&X_FORWARDED_PROTO], "http",
            "untrusted peer cannot set the scheme"
        );
    }

    #[test]
    fn a_clients_connection_cannot_remove_what_the_proxy_forwards_or_sets() {
        let proxies: Vec<IpNet> = vec!["127.0.0.0/8".parse().expect("net")];
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, HOST, X-Real-IP, x-private"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("x-forwarded-for , X-Forwarded-Proto"),
        );
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(&X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.7"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let peer = Peer::new(ip("127.0.0.1"));
        let client = client_ip(peer.ip(), &h, &proxies);
        rewrite_request(&mut h, &peer, client, "http", &proxies);
        assert_eq!(h[header::HOST], "example.com");
        assert_eq!(h[&X_REAL_IP], "198.51.100.7");
        assert_eq!(h[&X_FORWARDED_FOR], "198.51.100.7, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https", "set by a trusted proxy");
        assert!(!h.contains_key("x-private") && !h.contains_key(header::CONNECTION));
        // A response's `Connection` is not the client's: it still removes
        // what it names.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-real-ip"));
        h.insert(&X_REAL_IP, HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn a_client_behind_a_trusted_proxy_is_the_real_ip_and_the_peer_is_appended() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer = Peer::new(ip("10.0.0.1"));
        let mut h = xff(&["198.51.100.7"]);
        let client = client_ip(peer.ip(), &h, &proxies);
        rewrite_request(&mut h, &peer, client, "https", &proxies);
        assert_eq!(h[&X_REAL_IP], "198.51.100.7");
        assert_eq!(h[&X_FORWARDED_FOR], "198.51.100.7, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        // The connection's value serves its next request too.
        let mut h = HeaderMap::new();
        rewrite_request(&mut h, &peer, peer.ip(), "http", &proxies);
        assert_eq!(h[&X_REAL_IP], "10.0.0.1");
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
    }

    #[test]
    fn the_index_matches_the_list() {
        for (i, hop) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(hop.as_str()), Some(i));
        }
        assert_eq!(hop_by_hop_index("host"), None);
        assert_eq!(hop_by_hop_index("Keep-ALIVE"), Some(2));
        assert_eq!(hop_by_hop_index("x-te"), None);
    }

    #[test]
    fn a_head_without_hop_by_hop_headers_is_left_as_is() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // Names listed in `Connection` go, in any case, whatever else it lists.
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Close, X-Gone"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        h.insert(
            "close",
            HeaderValue::from_static("kept: an option, not a name"),
        );
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("x-gone") && !h.contains_key(header::CONNECTION));
        h.remove("close");
        assert_eq!(h, before);
    }
}
