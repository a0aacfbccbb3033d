//! A ketama-style consistent hash ring (Karger et al. 1997; libketama,
//! nginx's `hash ... consistent`): every backend owns `vnodes x weight`
//! points on a 32-bit circle, placed by hashing its stable `id`, and a key
//! belongs to the owner of the first point at or after the key's hash,
//! wrapping around.
//!
//! Because a backend's points depend only on its own id and weight, adding
//! a backend moves only the keys that now land on its new points, and
//! removing one moves only the keys that were on its points; every other key
//! keeps its backend (the property tests below check both). Equal points of
//! two backends are ordered by id, so the ring does not depend on the order
//! of the backend set either.
//!
//! Plain Rust, no Wasm: the component's glue is in `component.rs`.

/// Seed of the point hashes, different from the key hashes' so a key that
/// happens to equal a backend id is not pinned to that backend.
const POINT_SEED: u64 = 0x6B65_7461_6D61_2121;
/// Seed of the key hashes.
const KEY_SEED: u64 = 0xCBF2_9CE4_8422_2325;

/// The ring: `(point, owner)` sorted by point, then by owner id.
#[derive(Debug, Default, Clone)]
pub struct Ring {
    points: Vec<(u32, u32)>,
}

/// One member of the ring: its index in the backend set, id and weight.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Index the ring answers with.
    pub index: u32,
    /// Stable identity the points are derived from.
    pub id: &'a str,
    /// Relative weight (points = `vnodes x weight`); 0 counts as 1.
    pub weight: u32,
}

impl Ring {
    /// Builds the ring of `members` with `vnodes` points per unit of weight.
    /// 8 bytes per point. The points are hashed twice instead of sorted:
    /// once to count how many fall in each of 2^16 buckets (their top 16
    /// bits), once to write each into its bucket; then only the buckets,
    /// a few points each, are sorted. That is O(P) for P points and needs
    /// no second array: a per-thread instance must build its ring within the
    /// host's instance deadline even at 10 000 backends.
    pub fn build(members: &[Member<'_>], vnodes: u32) -> Self {
        let count = |m: &Member<'_>| u64::from(m.weight.max(1)) * u64::from(vnodes);
        let bases: Vec<u64> = members
            .iter()
            .map(|m| hash64(POINT_SEED, m.id.as_bytes()))
            .collect();
        let bucket = |point: u32| (point >> (32 - BUCKET_BITS)) as usize;

        // `start[b]..start[b + 1]` will hold bucket b.
        let mut start = vec![0usize; (1 << BUCKET_BITS) + 1];
        for (m, &base) in members.iter().zip(&bases) {
            for k in 0..count(m) {
                start[bucket(point(base, k)) + 1] += 1;
            }
        }
        for b in 1..start.len() {
            start[b] += start[b - 1];
        }
        let total = start[start.len() - 1];
        let mut points = vec![(0u32, 0u32); total];
        let mut next = start.clone();
        for (slot, (m, &base)) in members.iter().zip(&bases).enumerate() {
            for k in 0..count(m) {
                let p = point(base, k);
                let at = &mut next[bucket(p)];
                points[*at] = (p, slot as u32);
                *at += 1;
            }
        }
        for range in start.windows(2) {
            if range[1] - range[0] > 1 {
                points[range[0]..range[1]].sort_unstable_by(|a, b| {
                    a.0.cmp(&b.0)
                        .then_with(|| members[a.1 as usize].id.cmp(members[b.1 as usize].id))
                });
            }
        }
        for p in &mut points {
            p.1 = members[p.1 as usize].index;
        }
        Self { points }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The owner of key hash `hash`. O(log P).
    pub fn owner(&self, hash: u32) -> Option<u32> {
        self.walk(hash).next()
    }

    /// Owners of the points from `hash` on, clockwise, once round the ring:
    /// the first is [`Ring::owner`], the next ones are where its keys go
    /// when it is unusable. Consecutive points of one owner are reported
    /// once.
    pub fn walk(&self, hash: u32) -> impl Iterator<Item = u32> + '_ {
        let start = self.points.partition_point(|&(p, _)| p < hash);
        let (before, after) = self.points.split_at(start);
        let mut last = None;
        after
            .iter()
            .chain(before)
            .map(|&(_, owner)| owner)
            .filter(move |&owner| last.replace(owner) != Some(owner))
    }
}

/// Buckets of [`Ring::build`]'s placement: 2^16 (512 KiB of offsets on a
/// 32-bit guest while building).
const BUCKET_BITS: u32 = 16;

/// The `k`th point of the backend whose id hashes to `base`.
fn point(base: u64, k: u64) -> u32 {
    (fmix64(base ^ (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32) as u32
}

/// The 32-bit ring position of a key.
pub fn key_hash(key: &[u8]) -> u32 {
    (hash64(KEY_SEED, key) >> 32) as u32
}

/// FNV-1a over `bytes` from `seed`, finished with Murmur3's 64-bit mixer so
/// every input bit affects every output bit. Not cryptographic.
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let h = bytes.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    });
    fmix64(h ^ bytes.len() as u64)
}

/// Murmur3's 64-bit finalizer (a bijection).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    k ^= k >> 33;
    k = k.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The ring of `ids` (index = position) with `weights`.
    fn ring(ids: &[String], weights: &[u32], vnodes: u32) -> Ring {
        let members: Vec<Member<'_>> = ids
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (id, &weight))| Member {
                index: i as u32,
                id,
                weight,
            })
            .collect();
        Ring::build(&members, vnodes)
    }

    /// The id owning `key` on `ring` built from `ids`.
    fn owner_id<'a>(ring: &Ring, ids: &'a [String], key: u32) -> &'a str {
        let i = ring.owner(key).expect("a non-empty ring has an owner");
        &ids[i as usize]
    }

    #[test]
    fn shares_follow_weights() {
        let ids: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}:80")).collect();
        let ring = ring(&ids, &[1, 1, 1, 3], 160);
        assert_eq!(ring.len(), 6 * 160);
        let mut counts = [0u32; 4];
        for k in 0..60_000u32 {
            let i = ring.owner(key_hash(&k.to_le_bytes())).expect("owner");
            counts[i as usize] += 1;
        }
        // Expected 10 000, 10 000, 10 000, 30 000; ketama's spread with 160
        // points per unit of weight is within about 15%.
        for (i, &c) in counts.iter().enumerate() {
            let expected = if i == 3 { 30_000.0 } else { 10_000.0 };
            assert!(
                (f64::from(c) - expected).abs() < expected * 0.2,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn the_walk_visits_every_owner_once_in_a_row() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let ring = ring(&ids, &[1, 1, 1], 50);
        let walked: Vec<u32> = ring.walk(12345).collect();
        assert_eq!(walked.first().copied(), ring.owner(12345));
        assert!(walked.windows(2).all(|w| w[0] != w[1]));
        for i in 0..3 {
            assert!(walked.contains(&i));
        }
        assert_eq!(Ring::default().owner(7), None);
    }

    fn setup() -> impl Strategy<Value = (Vec<String>, Vec<u32>, Vec<u32>)> {
        prop::collection::hash_set("[a-z0-9.:-]{1,16}", 2..12).prop_flat_map(|ids| {
            let n = ids.len();
            (
                Just(ids.into_iter().collect::<Vec<_>>()),
                prop::collection::vec(1u32..=4, n),
                prop::collection::vec(any::<u32>(), 200),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A key's owner is the owner of the first point at or after it,
        /// wrapping round (checked against a linear scan).
        #[test]
        fn the_owner_is_the_first_point_clockwise((ids, weights, keys) in setup()) {
            let ring = ring(&ids, &weights, 40);
            for &key in &keys {
                let expected = ring
                    .points
                    .iter()
                    .find(|&&(p, _)| p >= key)
                    .or(ring.points.first())
                    .map(|&(_, owner)| owner);
                prop_assert_eq!(ring.owner(key), expected);
            }
        }

        /// Removing a backend moves only the keys it owned.
        #[test]
        fn removing_a_backend_moves_only_its_keys(
            (ids, weights, keys) in setup(),
            pick in any::<prop::sample::Index>(),
        ) {
            let gone = pick.index(ids.len());
            let before = ring(&ids, &weights, 40);
            let mut ids_after = ids.clone();
            let mut weights_after = weights.clone();
            ids_after.remove(gone);
            weights_after.remove(gone);
            let after = ring(&ids_after, &weights_after, 40);
            for &key in &keys {
                let was = owner_id(&before, &ids, key);
                let is = owner_id(&after, &ids_after, key);
                if was != ids[gone] {
                    prop_assert_eq!(was, is, "key {} moved though its backend stayed", key);
                }
            }
        }

        /// Adding a backend moves keys only onto the new backend.
        #[test]
        fn adding_a_backend_moves_keys_only_onto_it(
            (ids, weights, keys) in setup(),
            new_id in "[A-Z]{1,8}",
            new_weight in 1u32..=4,
            at in any::<prop::sample::Index>(),
        ) {
            let before = ring(&ids, &weights, 40);
            // Inserted anywhere: indices shift, ids do not.
            let at = at.index(ids.len() + 1);
            let mut ids_after = ids.clone();
            let mut weights_after = weights.clone();
            ids_after.insert(at, new_id.clone());
            weights_after.insert(at, new_weight);
            let after = ring(&ids_after, &weights_after, 40);
            for &key in &keys {
                let was = owner_id(&before, &ids, key);
                let is = owner_id(&after, &ids_after, key);
                if was != is {
                    prop_assert_eq!(is, new_id.as_str(), "key {} moved to an old backend", key);
                }
            }
        }
    }
}
