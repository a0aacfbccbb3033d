//! A request-rate limiter: a token bucket per key, kept as GCRA's one
//! timestamp (the "theoretical arrival time", TAT) per key.
//!
//! With `interval = 1 / rate` and `burst` requests allowed at once, a
//! request of cost `c` at `now` moves the key's TAT to
//! `max(TAT, now) + c * interval` if that is at most
//! `now + burst * interval`, and is refused otherwise, told to come back
//! when it would fit. So over `t` a key gets at most `burst + rate * t`
//! requests, whichever threads they come through.

use super::table::Table;

/// Keys of one shard a [`RateLimiter::sweep`] looks at (the shard's lock is
/// held meanwhile: a few microseconds).
pub const SWEEP_LOOK: usize = 512;

/// Token buckets for up to `keys` keys (see the module's documentation).
pub struct RateLimiter {
    interval: u64,
    capacity: u64,
    /// Each key's TAT.
    table: Table<u64>,
}

impl RateLimiter {
    /// A limiter letting `burst` requests through at once and one more
    /// every `interval_ns`, remembering up to `keys` keys.
    pub fn new(interval_ns: u64, burst: u32, keys: usize) -> Self {
        let interval = interval_ns.max(1);
        Self {
            interval,
            capacity: interval.saturating_mul(u64::from(burst.max(1))),
            table: Table::new(keys),
        }
    }

    /// The key `material` is remembered under.
    pub fn key(&self, material: &[u8]) -> u64 {
        self.table.key(material)
    }

    /// Takes `cost` requests' worth for `key` at `now` (nanoseconds of the
    /// proxy's clock): Ok, or Err with the nanoseconds until it would
    /// pass.
    pub fn take(&self, key: u64, cost: u32, now: u64) -> Result<(), u64> {
        let need = self.interval.saturating_mul(u64::from(cost));
        let limit = now.saturating_add(self.capacity);
        let mut shard = self.table.shard(key);
        if let Some(tat) = shard.get_mut(&key) {
            let next = (*tat).max(now).saturating_add(need);
            if next > limit {
                return Err(next - limit);
            }
            *tat = next;
            return Ok(());
        }
        let next = now.saturating_add(need);
        if next > limit {
            return Err(next - limit);
        }
        // Keys whose bucket has filled up again are as good as forgotten:
        // drop a few of the oldest before a new one comes in.
        for _ in 0..2 {
            match shard.peek_lru() {
                Some((_, &tat)) if tat <= now => {
                    shard.pop_lru();
                }
                _ => break,
            }
        }
        self.table.insert(&mut shard, key, next);
        Ok(())
    }

    /// Forgets keys whose bucket has filled up again by `now` (they hold
    /// nothing a new key would not), looking at up to [`SWEEP_LOOK`] of the
    /// least recently seen keys of each shard: run about once a second, it
    /// gives memory back once clients go quiet. Returns how many it forgot.
    pub fn sweep(&self, now: u64) -> usize {
        let mut forgotten = 0;
        for mut shard in self.table.shards() {
            let idle: Vec<u64> = shard
                .iter()
                .rev()
                .take(SWEEP_LOOK)
                .filter(|&(_, &tat)| tat <= now)
                .map(|(&key, _)| key)
                .collect();
            for key in &idle {
                shard.pop(key);
            }
            forgotten += idle.len();
        }
        forgotten
    }

    /// Keys remembered now.
    pub fn keys(&self) -> usize {
        self.table.keys()
    }

    /// Most keys remembered at once.
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("interval_ns", &self.interval)
            .field("capacity_ns", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_then_one_per_interval() {
        let l = RateLimiter::new(100 * MS, 5, 1000);
        let now = 1_000 * MS;
        for _ in 0..5 {
            assert_eq!(l.take(1, 1, now), Ok(()));
        }
        assert_eq!(l.take(1, 1, now), Err(100 * MS));
        assert_eq!(l.take(2, 1, now), Ok(()), "another key is not affected");
        assert_eq!(l.take(1, 1, now + 99 * MS), Err(MS));
        assert_eq!(l.take(1, 1, now + 100 * MS), Ok(()));
        assert_eq!(l.take(1, 1, now + 100 * MS), Err(100 * MS));
        // Idle for a long time: the whole burst again, not more.
        let later = now + 10_000 * MS;
        for _ in 0..5 {
            assert_eq!(l.take(1, 1, later), Ok(()));
        }
        assert!(l.take(1, 1, later).is_err());
    }

    #[test]
    fn a_cost_over_the_burst_never_passes_and_leaves_no_key() {
        let l = RateLimiter::new(MS, 3, 1000);
        assert_eq!(l.take(9, 4, 5 * MS), Err(MS));
        assert_eq!(l.keys(), 0);
        assert_eq!(l.take(9, 3, 5 * MS), Ok(()));
    }

    #[test]
    fn keys_stay_within_the_bound() {
        let l = RateLimiter::new(1_000 * MS, 1, 5_000);
        for k in 0..100_000u64 {
            let key = l.key(&k.to_le_bytes());
            assert_eq!(l.take(key, 1, MS), Ok(()));
        }
        assert!(l.keys() <= l.capacity(), "{} > {}", l.keys(), l.capacity());
        assert!(l.capacity() < 5_000 + 64);
    }

    #[test]
    fn a_sweep_forgets_only_full_buckets() {
        let l = RateLimiter::new(10 * MS, 1, 1000);
        assert_eq!(l.take(1, 1, 0), Ok(()));
        assert_eq!(l.take(2, 1, 5 * MS), Ok(()));
        // At 12 ms key 1's bucket is full again (10 ms), key 2's is not
        // (15 ms).
        assert_eq!(l.sweep(12 * MS), 1);
        assert_eq!(l.keys(), 1);
        assert_eq!(l.take(2, 1, 12 * MS), Err(3 * MS), "key 2 is remembered");
        assert_eq!(l.sweep(30 * MS), 1);
        assert_eq!(l.keys(), 0);
    }

    #[test]
    fn full_buckets_make_room_before_live_keys() {
        let l = RateLimiter::new(10 * MS, 1, 1);
        assert_eq!(l.take(1, 1, 0), Ok(()));
        // Key 1's bucket is full again at 10 ms: key 2 takes its place.
        assert_eq!(l.take(2, 1, 20 * MS), Ok(()));
        assert_eq!(l.keys(), 1);
    }
}
