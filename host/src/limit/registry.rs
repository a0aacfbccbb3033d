//! The limiters an admission plugin declares (`limits` in the WIT): kept by
//! the host per upstream, by name, so that every worker thread's instance
//! finds the same one and a new version of the plugin (a hot reload, a
//! config reload) declaring the same name with the same settings continues
//! with it, keys and all.

use std::sync::{Arc, Mutex};

use super::conn::ConnLimiter;
use super::lock;
use super::rate::RateLimiter;
use super::window::WindowCounter;

/// Most limiters one plugin may declare.
pub const MAX_DECLARED: usize = 16;
/// Longest limiter name.
pub const MAX_NAME: usize = 64;
/// Longest key a plugin may count by.
pub const MAX_KEY: usize = 256;

/// A limiter's kind and settings: what must be equal for a declaration to
/// get an existing limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// A token bucket: one request every `interval_ns`, `burst` at once.
    Rate {
        /// Nanoseconds one request uses up.
        interval_ns: u64,
        /// Requests at once.
        burst: u32,
    },
    /// Requests in flight per key.
    Concurrency,
    /// A sliding-window counter over `window_ns`.
    Counter {
        /// The window.
        window_ns: u64,
    },
}

impl Spec {
    /// `rate`, `concurrency` or `counter`.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Rate { .. } => "rate",
            Spec::Concurrency => "concurrency",
            Spec::Counter { .. } => "counter",
        }
    }
}

/// One declared limiter.
#[derive(Debug, Clone)]
pub enum Limiter {
    /// `declare-rate`.
    Rate(Arc<RateLimiter>),
    /// `declare-concurrency`.
    Concurrency(Arc<ConnLimiter>),
    /// `declare-counter`.
    Counter(Arc<WindowCounter>),
}

impl Limiter {
    fn new(spec: Spec, keys: usize) -> Limiter {
        match spec {
            Spec::Rate { interval_ns, burst } => {
                Limiter::Rate(Arc::new(RateLimiter::new(interval_ns, burst, keys)))
            }
            Spec::Concurrency => Limiter::Concurrency(Arc::new(ConnLimiter::new(keys))),
            Spec::Counter { window_ns } => {
                Limiter::Counter(Arc::new(WindowCounter::new(window_ns, keys)))
            }
        }
    }

    /// `(keys now, most keys)`.
    pub fn keys(&self) -> (usize, usize) {
        match self {
            Limiter::Rate(l) => (l.keys(), l.capacity()),
            Limiter::Concurrency(l) => (l.keys(), usize::MAX),
            Limiter::Counter(l) => (l.keys(), l.capacity()),
        }
    }
}

/// A named, declared limiter.
type Entry = (String, Spec, Limiter);

/// The limiters one admission plugin (one version of it, for one upstream)
/// declared, and those of the version before it, to be continued.
#[derive(Debug)]
pub struct Registry {
    keys: usize,
    carried: Vec<Entry>,
    declared: Mutex<Vec<Entry>>,
}

impl Registry {
    /// A registry whose limiters remember up to `keys` keys each; the
    /// limiters `previous` declared (the upstream's plugin before a reload)
    /// are continued by a declaration with the same name and settings.
    pub fn new(keys: usize, previous: Option<&Registry>) -> Registry {
        let carried = previous
            .filter(|p| p.keys == keys)
            .map(|p| lock(&p.declared).clone())
            .unwrap_or_default();
        Registry {
            keys,
            carried,
            declared: Mutex::new(Vec::new()),
        }
    }

    /// Declares `name` as `spec`: the limiter declared under that name
    /// already (by another thread's instance), the previous version's, or
    /// a new one.
    pub fn declare(&self, name: &str, spec: Spec) -> Result<Limiter, String> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(format!(
                "limiter name `{name}` must be 1 to {MAX_NAME} bytes"
            ));
        }
        let mut declared = lock(&self.declared);
        if let Some((_, was, limiter)) = declared.iter().find(|(n, _, _)| n == name) {
            return if *was == spec {
                Ok(limiter.clone())
            } else {
                Err(format!(
                    "limiter `{name}` is declared already with other settings ({was:?})"
                ))
            };
        }
        if declared.len() >= MAX_DECLARED {
            return Err(format!(
                "a plugin may declare at most {MAX_DECLARED} limiters"
            ));
        }
        let limiter = self
            .carried
            .iter()
            .find(|(n, s, _)| n == name && *s == spec)
            .map_or_else(|| Limiter::new(spec, self.keys), |(_, _, l)| l.clone());
        declared.push((name.to_owned(), spec, limiter.clone()));
        Ok(limiter)
    }

    /// `(name, kind, keys now, most keys)` of every declared limiter.
    pub fn limiters(&self) -> Vec<(String, &'static str, usize, usize)> {
        lock(&self.declared)
            .iter()
            .map(|(name, spec, l)| {
                let (keys, max) = l.keys();
                (name.clone(), spec.kind(), keys, max.min(self.keys))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Spec = Spec::Rate {
        interval_ns: 1_000,
        burst: 2,
    };

    #[test]
    fn the_same_declaration_finds_the_same_limiter_and_a_reload_continues_it() {
        let r = Registry::new(100, None);
        let Limiter::Rate(a) = r.declare("ip", RATE).expect("declared") else {
            panic!("a rate limiter")
        };
        let Limiter::Rate(b) = r.declare("ip", RATE).expect("declared") else {
            panic!("a rate limiter")
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert!(r.declare("ip", Spec::Concurrency).is_err());
        let next = Registry::new(100, Some(&r));
        let Limiter::Rate(c) = next.declare("ip", RATE).expect("declared") else {
            panic!("a rate limiter")
        };
        assert!(Arc::ptr_eq(&a, &c), "kept across versions");
        let other = Registry::new(100, Some(&r));
        let Limiter::Rate(d) = other
            .declare(
                "ip",
                Spec::Rate {
                    interval_ns: 1_000,
                    burst: 3,
                },
            )
            .expect("declared")
        else {
            panic!("a rate limiter")
        };
        assert!(!Arc::ptr_eq(&a, &d), "other settings: a new limiter");
    }

    #[test]
    fn declarations_are_bounded() {
        let r = Registry::new(100, None);
        for i in 0..MAX_DECLARED {
            r.declare(&format!("c{i}"), Spec::Concurrency)
                .expect("room");
        }
        assert!(r.declare("one-more", Spec::Concurrency).is_err());
        assert!(
            r.declare(&"x".repeat(MAX_NAME + 1), Spec::Concurrency)
                .is_err()
        );
    }
}
