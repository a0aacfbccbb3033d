//! A sliding-window counter per key, as Cloudflare's rate limiting counts:
//! two fixed windows, the current one's count plus the previous one's
//! weighted by the share of it the sliding window still covers. Two
//! numbers a key, O(1) a call, exact when requests are spread evenly over
//! the previous window.

use super::table::Table;

/// One key's two fixed windows.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Index of the current fixed window (`now / window`).
    index: u64,
    current: u64,
    previous: u64,
}

/// Sliding-window counts for up to `keys` keys.
pub struct WindowCounter {
    window: u64,
    table: Table<Slot>,
}

impl WindowCounter {
    /// Counts over a window of `window_ns`, remembering up to `keys` keys
    /// (the least recently counted is forgotten first).
    pub fn new(window_ns: u64, keys: usize) -> Self {
        Self {
            window: window_ns.max(1),
            table: Table::new(keys),
        }
    }

    /// The key `material` is counted under.
    pub fn key(&self, material: &[u8]) -> u64 {
        self.table.key(material)
    }

    /// Adds `n` to `key` at `now` (nanoseconds of the proxy's clock) and
    /// returns its count over the sliding window ending at `now`.
    pub fn add(&self, key: u64, n: u32, now: u64) -> u64 {
        let index = now / self.window;
        let into = now % self.window;
        let mut shard = self.table.shard(key);
        if shard.peek(&key).is_none() {
            if n == 0 {
                return 0;
            }
            let fresh = Slot {
                index,
                current: 0,
                previous: 0,
            };
            self.table.insert(&mut shard, key, fresh);
        }
        let Some(slot) = shard.get_mut(&key) else {
            return 0;
        };
        if slot.index != index {
            slot.previous = if slot.index + 1 == index {
                slot.current
            } else {
                0
            };
            slot.current = 0;
            slot.index = index;
        }
        slot.current = slot.current.saturating_add(u64::from(n));
        // The previous window's share still inside the sliding window.
        let weight = u128::from(self.window - into);
        let carried = (u128::from(slot.previous) * weight / u128::from(self.window)) as u64;
        slot.current.saturating_add(carried)
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

impl std::fmt::Debug for WindowCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowCounter")
            .field("window_ns", &self.window)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counts_within_a_window_then_weighs_the_previous_one() {
        let c = WindowCounter::new(10 * S, 100);
        assert_eq!(c.add(1, 0, S), 0, "reading leaves no key");
        assert_eq!(c.keys(), 0);
        for i in 1..=10 {
            assert_eq!(c.add(1, 1, S + i), i);
        }
        assert_eq!(c.add(2, 3, S), 3, "keys count apart");
        // A quarter into the next window: 3/4 of the previous 10 remain.
        assert_eq!(c.add(1, 0, 12 * S + S / 2), 7);
        assert_eq!(c.add(1, 2, 12 * S + S / 2), 9);
        // Two windows later nothing of them is left.
        assert_eq!(c.add(1, 1, 35 * S), 1);
    }

    #[test]
    fn keys_stay_within_the_bound() {
        let c = WindowCounter::new(S, 10);
        for k in 0..1000 {
            c.add(k << 7, 1, S);
        }
        assert!(c.keys() <= c.capacity());
    }
}
