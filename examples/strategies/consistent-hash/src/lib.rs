//! Consistent hashing, ketama style: requests with the same key (a header,
//! a cookie, or else the client address) go to the same backend, and when a
//! backend leaves or joins the set only the keys on its share of the ring
//! move (about 1/n of them), unlike `ip-hash`, where most keys move.
//!
//! Every backend gets `vnodes x weight` points on a ring, placed by hashing
//! its `id` (not its index, which shifts when the set changes); a key goes to
//! the owner of the first point at or after its hash ([`ring`]). A pick is a
//! binary search, O(log P) for P points. When the owner is unusable
//! (unhealthy, or already tried by this request), the walk continues
//! clockwise to the next usable owner, which is where the key moves when
//! that backend is removed, so failover is consistent too. (After 64 unusable
//! owners in a row the set is scanned for any usable backend instead.)
//!
//! Parameters:
//! - `header` (text): hash this request header's first value.
//! - `cookie` (text): hash this cookie's value (from the first `Cookie`
//!   header). At most one of `header` and `cookie`; with neither, or when
//!   the request has no (or an empty) value, the client address is hashed.
//! - `vnodes` (integer 1..=1000, default 100): ring points per unit of
//!   weight. More points spread keys more evenly (a backend's share is off
//!   by roughly `1/sqrt(vnodes x weight)`), but each costs 8 bytes and
//!   building time: every worker thread builds its ring in `set-backends`
//!   (on its first pick and after a set change), which must finish within
//!   five pick deadlines (50 ms by default), and a build takes about 35 ns
//!   per point natively, more in Wasm. Keep `sum(weight) x vnodes` under
//!   about 400 000 points: the default suits up to a few thousand backends;
//!   at 10 000 backends use `vnodes = 20` (or raise `pick-deadline`).

pub mod ring;

#[cfg(target_arch = "wasm32")]
mod component;

/// The value of cookie `name` in a `Cookie` header value
/// (`a=1; name=value; b=2`), if present and not empty. Surrounding quotes
/// are kept: they are part of the value as the client sent it.
pub fn cookie_value<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::cookie_value;

    #[test]
    fn cookies_are_found_by_name() {
        let header = "theme=dark; session=abc123;lang=en; empty=";
        assert_eq!(cookie_value(header, "session"), Some("abc123"));
        assert_eq!(cookie_value(header, "lang"), Some("en"));
        assert_eq!(cookie_value(header, "theme"), Some("dark"));
        assert_eq!(cookie_value(header, "empty"), None);
        assert_eq!(cookie_value(header, "sess"), None);
        assert_eq!(cookie_value("", "session"), None);
    }
}
