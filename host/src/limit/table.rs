//! The table every keyed limiter keeps its state in: up to `keys` keys,
//! split over shards that each have their own lock and forget their least
//! recently seen key when full. Keys are 64-bit SipHash values of the
//! key's bytes under a secret of the table's own.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

use super::lock;

/// Per-key state `V` for up to `keys` keys (plus at most one per shard).
pub(super) struct Table<V> {
    per_shard: usize,
    shards: Box<[Mutex<LruCache<u64, V>>]>,
    hasher: RandomState,
}

impl<V> Table<V> {
    /// An empty table for `keys` keys.
    pub(super) fn new(keys: usize) -> Self {
        let shards = shard_count(keys);
        Self {
            per_shard: per_shard(keys, shards),
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::unbounded()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The key `material` is kept under.
    pub(super) fn key(&self, material: &[u8]) -> u64 {
        self.hasher.hash_one(material)
    }

    /// The shard holding `key`, locked.
    pub(super) fn shard(&self, key: u64) -> MutexGuard<'_, LruCache<u64, V>> {
        // The key is a SipHash value: its top bits are as good as any.
        lock(&self.shards[(key >> 58) as usize % self.shards.len()])
    }

    /// Whether `shard` (locked) holds its share of the keys already.
    pub(super) fn is_full(&self, shard: &LruCache<u64, V>) -> bool {
        shard.len() >= self.per_shard
    }

    /// Puts `key` into its (locked) `shard`, forgetting the shard's least
    /// recently seen key first when it is full.
    pub(super) fn insert(&self, shard: &mut LruCache<u64, V>, key: u64, value: V) {
        if self.is_full(shard) {
            shard.pop_lru();
        }
        shard.put(key, value);
    }

    /// Every shard, for a sweep.
    pub(super) fn shards(&self) -> impl Iterator<Item = MutexGuard<'_, LruCache<u64, V>>> {
        self.shards.iter().map(lock)
    }

    /// Keys held now.
    pub(super) fn keys(&self) -> usize {
        self.shards().map(|s| s.len()).sum()
    }

    /// Most keys held at once.
    pub(super) fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }
}

/// Shards of a table that remembers `keys` keys: enough that two workers
/// rarely meet on a lock, few enough that each shard's share of the bound
/// stays large (the bound is kept per shard).
fn shard_count(keys: usize) -> usize {
    (keys / 1024).clamp(1, 64).next_power_of_two().min(64)
}

/// Each shard's share of `keys` (rounded up: the table may hold up to one
/// key per shard more than `keys`).
fn per_shard(keys: usize, shards: usize) -> usize {
    keys.div_ceil(shards).max(1)
}
