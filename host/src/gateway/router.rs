//! Chooses the upstream for a request from its host and path.
//!
//! Every upstream whose `hosts` and `path-prefix` both match is a candidate;
//! the most specific host wins (exact name, then the longest `*.` wildcard,
//! then upstreams without `hosts`), then the longest path prefix. A prefix
//! matches whole path segments: `/api` matches `/api` and `/api/users`, not
//! `/apix`; a prefix ending in `/` matches anything below it.

use std::sync::Arc;

use http::request::Parts;
use ipnet::IpNet;

use super::upstream::Upstream;
use crate::base::config::HostPattern;
use crate::wire::head::host_of;

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// How well an upstream's `hosts` match a host; `None` when they do not.
fn host_rank(hosts: &[HostPattern], host: &str) -> Option<(u8, usize)> {
    if hosts.is_empty() {
        return Some((0, 0));
    }
    hosts
        .iter()
        .filter_map(|p| match p {
            HostPattern::Exact(name) if name.eq_ignore_ascii_case(host) => Some((2, name.len())),
            HostPattern::Suffix(suffix)
                if host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix)) =>
            {
                Some((1, suffix.len()))
            }
            _ => None,
        })
        .max()
}

/// One generation of the proxy's routing state: swapped whole on a config
/// reload, read with one atomic load per request.
#[derive(Debug)]
pub struct RouteTable {
    /// Upstreams in config order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether requests are written to the access log.
    pub access_log: bool,
}

impl RouteTable {
    /// The upstream serving the request with `parts`, by its host and
    /// path; if any.
    pub fn route(&self, parts: &Parts) -> Option<&Arc<Upstream>> {
        // The host is only looked for when some upstream asks for one.
        let by_host = self.upstreams.iter().any(|u| !u.config.hosts.is_empty());
        self.route_to(if by_host { host_of(parts) } else { "" }, parts.uri.path())
    }

    /// The upstream serving `host` + `path`, if any.
    fn route_to(&self, host: &str, path: &str) -> Option<&Arc<Upstream>> {
        self.upstreams
            .iter()
            .filter(|u| prefix_matches(&u.config.path_prefix, path))
            .filter_map(|u| {
                host_rank(&u.config.hosts, host).map(|rank| (rank, u.config.path_prefix.len(), u))
            })
            // `max_by_key` keeps the last maximum; reverse so the first in
            // file order wins a tie.
            .rev()
            .max_by_key(|(rank, prefix_len, _)| (*rank, *prefix_len))
            .map(|(_, _, u)| u)
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
    }

    #[test]
    fn exact_hosts_beat_wildcards_beat_any() {
        let exact = [HostPattern::Exact("a.example.com".into())];
        let wild = [HostPattern::Suffix(".example.com".into())];
        let a = host_rank(&exact, "A.example.com");
        let w = host_rank(&wild, "a.example.com");
        let any = host_rank(&[], "a.example.com");
        assert!(a > w && w > any, "{a:?} {w:?} {any:?}");
        assert_eq!(host_rank(&exact, "b.example.com"), None);
        assert_eq!(host_rank(&wild, "example.com"), None);
    }
}
