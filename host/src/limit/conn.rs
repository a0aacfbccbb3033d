//! A limiter of requests in flight per key (nginx's `limit_conn`). A
//! request counted holds a [`Held`]; the count goes down when it is
//! dropped (the response sent, the tunnel closed, the client gone). A key
//! whose count is 0 is not remembered, so the table holds only keys with
//! requests in flight, and at most `keys` of them: past that a new key is
//! refused (nginx answers so when its zone is full).

use std::sync::Arc;

use super::table::Table;

/// In-flight counts per key.
pub struct ConnLimiter {
    /// Each key's count, never 0 (such keys are dropped).
    table: Table<u32>,
}

/// Why [`ConnLimiter::acquire`] did not count a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The key has `max` requests in flight already.
    Max,
    /// The table holds `keys` keys already.
    Full,
}

impl ConnLimiter {
    /// Counts for up to `keys` keys at once.
    pub fn new(keys: usize) -> Self {
        Self {
            table: Table::new(keys),
        }
    }

    /// The key `material` is counted under.
    pub fn key(&self, material: &[u8]) -> u64 {
        self.table.key(material)
    }

    /// Counts one more request for `key` if it has fewer than `max` in
    /// flight; with `dry_run`, also when it has not (a dry run counts what
    /// it would refuse), saying so with `true`. The count lasts as long as
    /// the [`Held`]. A new key finds no room when the table is full, dry
    /// run or not.
    pub fn acquire(
        self: &Arc<Self>,
        key: u64,
        max: u32,
        dry_run: bool,
    ) -> Result<(Held, bool), Over> {
        let mut shard = self.table.shard(key);
        let over = match shard.peek(&key) {
            Some(&n) => n >= max,
            None if self.table.is_full(&shard) => return Err(Over::Full),
            None => max == 0,
        };
        if over && !dry_run {
            return Err(Over::Max);
        }
        match shard.peek_mut(&key) {
            Some(n) => *n += 1,
            // Not full (checked above): nothing is forgotten.
            None => {
                shard.put(key, 1);
            }
        }
        let held = Held {
            limiter: Arc::clone(self),
            key,
        };
        Ok((held, over))
    }

    /// Keys with requests in flight now.
    pub fn keys(&self) -> usize {
        self.table.keys()
    }

    /// Requests in flight for `key` now.
    pub fn in_flight(&self, key: u64) -> u32 {
        self.table.shard(key).peek(&key).copied().unwrap_or(0)
    }

    fn release(&self, key: u64) {
        let mut shard = self.table.shard(key);
        if let Some(n) = shard.peek_mut(&key) {
            *n -= 1;
            if *n == 0 {
                shard.pop(&key);
            }
        }
    }
}

impl std::fmt::Debug for ConnLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimiter")
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

/// One request counted by a [`ConnLimiter`], until dropped.
#[derive(Debug)]
pub struct Held {
    limiter: Arc<ConnLimiter>,
    key: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.limiter.release(self.key);
    }
}

/// What one request holds: none, or one [`Held`] per `limit-conn`.
#[derive(Debug, Default)]
pub struct Holds(Vec<Held>);

impl Holds {
    /// Adds `held`.
    pub fn push(&mut self, held: Held) {
        self.0.push(held);
    }

    /// Adds everything `other` holds.
    pub fn append(&mut self, mut other: Holds) {
        self.0.append(&mut other.0);
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_up_to_max_and_down_as_holds_drop() {
        let l = Arc::new(ConnLimiter::new(100));
        let a = l.acquire(1, 2, false).expect("valid");
        let b = l.acquire(1, 2, false).expect("valid");
        assert_eq!(l.acquire(1, 2, false).expect_err("an error"), Over::Max);
        assert!(l.acquire(2, 2, false).is_ok(), "other keys are apart");
        drop(a);
        let c = l.acquire(1, 2, false).expect("valid");
        drop((b, c));
        assert_eq!(l.in_flight(1), 0);
        assert_eq!(l.keys(), 0, "idle keys are not remembered");
    }

    #[test]
    fn a_dry_run_counts_what_it_would_refuse() {
        let l = Arc::new(ConnLimiter::new(100));
        let (_a, over) = l.acquire(1, 1, true).expect("valid");
        assert!(!over);
        let (_b, over) = l.acquire(1, 1, true).expect("valid");
        assert!(over);
        assert_eq!(l.in_flight(1), 2);
    }

    #[test]
    fn a_full_table_refuses_new_keys() {
        let l = Arc::new(ConnLimiter::new(1));
        let _a = l.acquire(1, 5, false).expect("valid");
        assert_eq!(l.acquire(2, 5, true).expect_err("an error"), Over::Full);
        assert!(l.acquire(1, 5, false).is_ok());
    }
}
