//! Bounded, time-limited caches of per-workspace values: unwrapped data keys by subject,
//! and the subject of each identifier by blind index.
//!
//! - Bounded: at most `capacity` entries; the oldest insertion is evicted first.
//! - Time-limited: an entry older than `ttl` is not served; the next use reloads it from the
//!   key store, so a `forget` done by another replica is seen within `ttl`. Each entry lives
//!   between half the `ttl` and the whole of it (spread by its insertion number): entries
//!   loaded together, as in a burst of new shoppers, expire over half a `ttl` rather than
//!   all at once. `bench ingest` at batch 100 showed the burst: every call 10 s after the
//!   start of the load missed at once, and the calls of that second took 40–75 ms against a
//!   median of 7–9 ms.
//! - Forget-safe on this replica: [`WorkspaceCache::evict`] and
//!   [`WorkspaceCache::evict_where`] bump a generation counter under the same lock as the
//!   insert check, so a load that started before a `forget` cannot put what it read back into
//!   the cache after it.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::seal::Dek;

/// Unwrapped data keys by subject.
pub(crate) type DekCache = WorkspaceCache<String, Arc<Dek>>;

/// The vault subject of each identifier, by blind index.
pub(crate) type IdentifierSubjectCache = WorkspaceCache<[u8; 32], Arc<str>, BlindIndexHashing>;

/// Hashing for maps keyed by blind indexes.
pub(crate) type BlindIndexHashing = BuildHasherDefault<BlindIndexHasher>;

/// Hashes a blind index by taking its first eight bytes, without SipHash's per-process
/// key. A blind index is already a keyed hash (HMAC-SHA-256 under the workspace's
/// blind-index key): its bits are uniform, and nobody without that key can pick values that
/// collide, which is what SipHash guards against. Ingest looks up every event's anchor by
/// blind index, twice per call; SipHash cost a few percent of the server's CPU there.
/// For 32-byte blind indexes only (`[u8; 32]`).
#[derive(Default)]
pub(crate) struct BlindIndexHasher(u64);

impl Hasher for BlindIndexHasher {
    fn write(&mut self, bytes: &[u8]) {
        if let Some(word) = bytes.first_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*word);
        }
    }

    /// The length `[u8; 32]` hashes before its bytes: always 32, so it adds nothing.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Entry<V> {
    value: V,
    loaded_at: Instant,
    /// Served while younger: [`lifetime`] of the entry's `seq`.
    lifetime: Duration,
    seq: u64,
}

impl<V> Entry<V> {
    fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.loaded_at) < self.lifetime
    }
}

/// How long the entry inserted as number `seq` is served: between `ttl / 2` and `ttl`,
/// spread evenly by a hash of `seq` (splitmix64's finalizer: consecutive numbers land far
/// apart). Never longer than `ttl`, which is the bound a `forget` elsewhere relies on.
fn lifetime(ttl: Duration, seq: u64) -> Duration {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // The top 16 bits as a fraction of 2^17: [0, 0.5).
    let extra = u32::try_from(z >> 48).unwrap_or(0);
    ttl / 2 + ttl.mul_f64(f64::from(extra) / f64::from(1u32 << 17))
}

struct State<K, V, S> {
    /// By workspace. The workspace's name is shared with its entries in `order`: an insert
    /// allocates no name for a workspace already cached.
    map: HashMap<Arc<str>, HashMap<K, Entry<V>, S>>,
    order: VecDeque<(Arc<str>, K, u64)>,
    len: usize,
    seq: u64,
    generation: u64,
}

impl<K, V, S> Default for State<K, V, S> {
    fn default() -> Self {
        State {
            map: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            seq: 0,
            generation: 0,
        }
    }
}

/// The value `entries` holds for `key` if still fresh; an expired entry is removed (and
/// counted out of `len`).
fn fresh_or_removed<K, V, S, Q>(
    entries: &mut HashMap<K, Entry<V>, S>,
    len: &mut usize,
    key: &Q,
    now: Instant,
) -> Option<V>
where
    K: Borrow<Q> + Hash + Eq,
    V: Clone,
    S: BuildHasher,
    Q: Hash + Eq + ?Sized,
{
    match entries.get(key) {
        Some(entry) if entry.is_fresh(now) => Some(entry.value.clone()),
        Some(_) => {
            entries.remove(key);
            *len -= 1;
            None
        }
        None => None,
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> State<K, V, S> {
    fn remove<Q>(&mut self, workspace: &str, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(entries) = self.map.get_mut(workspace) else {
            return false;
        };
        let removed = entries.remove(key).is_some();
        if entries.is_empty() {
            self.map.remove(workspace);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }
}

pub(crate) struct WorkspaceCache<K, V, S = RandomState> {
    state: Mutex<State<K, V, S>>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Default> WorkspaceCache<K, V, S> {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        WorkspaceCache {
            state: Mutex::new(State::default()),
            capacity,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, V, S>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get<Q>(&self, workspace: &str, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut state = self.lock();
        let State { map, len, .. } = &mut *state;
        let entries = map.get_mut(workspace)?;
        let found = fresh_or_removed(entries, len, key, now);
        if entries.is_empty() {
            map.remove(workspace);
        }
        found
    }

    /// What is cached for each of `keys` of one workspace, in order, under one lock (a
    /// request's keys are looked up together). Expired entries are dropped.
    pub(crate) fn get_many<'q, Q>(
        &self,
        workspace: &str,
        keys: impl IntoIterator<Item = &'q Q>,
        now: Instant,
    ) -> Vec<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'q,
    {
        let keys = keys.into_iter();
        let mut found = Vec::with_capacity(keys.size_hint().0);
        let mut state = self.lock();
        let State { map, len, .. } = &mut *state;
        let Some(entries) = map.get_mut(workspace) else {
            found.extend(keys.map(|_| None));
            return found;
        };
        for key in keys {
            found.push(fresh_or_removed(entries, len, key, now));
        }
        if entries.is_empty() {
            map.remove(workspace);
        }
        found
    }

    /// The generation to pass to [`WorkspaceCache::insert`]; read it before loading from
    /// the store.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches `value` loaded at `loaded_at`, unless an eviction happened since `generation`.
    pub(crate) fn insert(
        &self,
        workspace: &str,
        key: K,
        value: V,
        loaded_at: Instant,
        generation: u64,
    ) -> bool {
        self.insert_many(workspace, [(key, value)], loaded_at, generation)
    }

    /// Caches each of `entries` of one workspace, loaded at `loaded_at`, under one lock;
    /// none if an eviction happened since `generation`.
    pub(crate) fn insert_many(
        &self,
        workspace: &str,
        entries: impl IntoIterator<Item = (K, V)>,
        loaded_at: Instant,
        generation: u64,
    ) -> bool {
        if self.capacity == 0 || self.ttl.is_zero() {
            return false;
        }
        let mut state = self.lock();
        if state.generation != generation {
            return false;
        }
        let mut entries = entries.into_iter().peekable();
        if entries.peek().is_none() {
            // No empty map for the workspace.
            return true;
        }
        let name: Arc<str> = match state.map.get_key_value(workspace) {
            Some((name, _)) => name.clone(),
            None => Arc::from(workspace),
        };
        let State {
            map,
            order,
            len,
            seq,
            ..
        } = &mut *state;
        // The workspace's map is found once per batch. Evicting after the whole batch, not
        // after each entry, evicts the same entries: the queue is in insertion order and
        // eviction always takes its front.
        let cached = map.entry(name.clone()).or_default();
        for (key, value) in entries {
            *seq += 1;
            let entry = Entry {
                value,
                loaded_at,
                lifetime: lifetime(self.ttl, *seq),
                seq: *seq,
            };
            if cached.insert(key.clone(), entry).is_none() {
                *len += 1;
            }
            order.push_back((name.clone(), key, *seq));
        }
        self.evict_oldest(&mut state);
        true
    }

    /// Evicts the oldest insertions while over capacity, and compacts the queue.
    fn evict_oldest(&self, state: &mut State<K, V, S>) {
        while state.len > self.capacity {
            let Some((ws, key, seq)) = state.order.pop_front() else {
                break;
            };
            let current = state.map.get(&ws).and_then(|m| m.get(&key)).map(|e| e.seq);
            if current == Some(seq) {
                state.remove(&ws, &key);
            }
        }
        if state.order.len() > self.capacity.saturating_mul(2).max(64) {
            // Drop queue entries whose value was replaced or removed since.
            let State { map, order, .. } = state;
            order.retain(|(ws, key, seq)| {
                map.get(ws).and_then(|m| m.get(key)).map(|e| e.seq) == Some(*seq)
            });
        }
    }

    /// Drops one entry and invalidates loads in flight.
    pub(crate) fn evict<Q>(&self, workspace: &str, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut state = self.lock();
        state.generation += 1;
        state.remove(workspace, key);
    }

    /// Drops every entry of the workspace whose value matches, and invalidates loads in
    /// flight. Linear in the workspace's entries: for erasures, not for every request.
    pub(crate) fn evict_where(&self, workspace: &str, matches: impl Fn(&V) -> bool) {
        let mut state = self.lock();
        state.generation += 1;
        let Some(entries) = state.map.get_mut(workspace) else {
            return;
        };
        let before = entries.len();
        entries.retain(|_, e| !matches(&e.value));
        let removed = before - entries.len();
        if entries.is_empty() {
            state.map.remove(workspace);
        }
        state.len -= removed;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn dek(n: u128) -> Arc<Dek> {
        Arc::new(Dek::from_bytes(Uuid::from_u128(n), &[n as u8; 32]).unwrap())
    }

    #[test]
    fn bounded_oldest_first() {
        let cache = DekCache::new(3, Duration::from_secs(60));
        let t = Instant::now();
        for i in 0..5u128 {
            assert!(cache.insert("w", format!("s{i}"), dek(i), t, cache.generation()));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get("w", "s0", t).is_none());
        assert!(cache.get("w", "s1", t).is_none());
        assert_eq!(cache.get("w", "s4", t).unwrap().key_id, Uuid::from_u128(4));
        // Re-inserting many times keeps the queue bounded.
        for _ in 0..1000 {
            cache.insert("w", "s4".to_owned(), dek(4), t, cache.generation());
        }
        assert!(cache.lock().order.len() <= 64 + 1);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn entries_expire_after_ttl() {
        let cache = DekCache::new(10, Duration::from_secs(10));
        let t = Instant::now();
        cache.insert("w", "s".to_owned(), dek(1), t, cache.generation());
        assert!(
            cache
                .get("w", "s", t + Duration::from_millis(4999))
                .is_some()
        );
        assert!(cache.get("w", "s", t + Duration::from_secs(10)).is_none());
        assert_eq!(cache.len(), 0);
    }

    /// The blind-index-shaped key numbered `i`.
    fn key(i: u32) -> [u8; 32] {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key
    }

    #[test]
    fn entries_loaded_together_expire_over_the_second_half_of_the_ttl() {
        let ttl = Duration::from_secs(10);
        let cache = IdentifierSubjectCache::new(10_000, ttl);
        let t = Instant::now();
        let value: Arc<str> = Arc::from("idn");
        for i in 0..1000u32 {
            cache.insert("w", key(i), value.clone(), t, cache.generation());
        }
        // Read without `get`, which drops what has expired.
        let lifetime_of = |i: u32| cache.lock().map["w"][&key(i)].lifetime;
        let served_at = |after: Duration| (0..1000u32).filter(|i| lifetime_of(*i) > after).count();
        assert_eq!(served_at(ttl / 2 - Duration::from_millis(1)), 1000);
        // Spread over the second half: about a tenth expires in each twentieth of the ttl.
        for (at, low, high) in [(0.6, 750, 850), (0.75, 430, 570), (0.9, 150, 250)] {
            let served = served_at(ttl.mul_f64(at));
            assert!(
                (low..=high).contains(&served),
                "{served} of 1000 served at {at} of the ttl"
            );
        }
        assert_eq!(served_at(ttl), 0);
        // And `get` honours each entry's own lifetime.
        let own = lifetime_of(0);
        assert!(
            cache
                .get("w", &key(0), t + own - Duration::from_millis(1))
                .is_some()
        );
        assert!(cache.get("w", &key(0), t + own).is_none());
    }

    #[test]
    fn eviction_blocks_stale_inserts() {
        let cache = DekCache::new(10, Duration::from_secs(10));
        let t = Instant::now();
        let before_forget = cache.generation();
        cache.evict("w", "s");
        assert!(!cache.insert("w", "s".to_owned(), dek(1), t, before_forget));
        assert!(cache.get("w", "s", t).is_none());
        assert!(cache.insert("w", "s".to_owned(), dek(1), t, cache.generation()));
        cache.evict("w", "s");
        assert!(cache.get("w", "s", t).is_none());
    }

    #[test]
    fn evict_where_drops_the_matching_entries_of_one_workspace_and_blocks_stale_inserts() {
        let cache = IdentifierSubjectCache::new(10, Duration::from_secs(10));
        let t = Instant::now();
        let subject: Arc<str> = Arc::from("idn-a");
        let other: Arc<str> = Arc::from("idn-b");
        let g = cache.generation();
        cache.insert("w", [1; 32], subject.clone(), t, g);
        cache.insert("w", [2; 32], subject.clone(), t, g);
        cache.insert("w", [3; 32], other.clone(), t, g);
        cache.insert("v", [1; 32], subject.clone(), t, g);
        let before_forget = cache.generation();
        cache.evict_where("w", |s| **s == *subject);
        assert!(cache.get("w", &[1; 32], t).is_none());
        assert!(cache.get("w", &[2; 32], t).is_none());
        assert_eq!(cache.get("w", &[3; 32], t), Some(other));
        // Another workspace's entry with the same value stays.
        assert_eq!(cache.get("v", &[1; 32], t), Some(subject.clone()));
        assert_eq!(cache.len(), 2);
        // A load that read the mapping before the eviction cannot put it back.
        assert!(!cache.insert("w", [1; 32], subject, t, before_forget));
        assert!(cache.get("w", &[1; 32], t).is_none());
    }

    #[test]
    fn many_keys_are_looked_up_in_order_and_expired_ones_dropped() {
        let ttl = Duration::from_secs(10);
        let cache = IdentifierSubjectCache::new(100, ttl);
        let t = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("idn-a"), Arc::from("idn-b"));
        assert!(cache.insert_many("w", [], t, cache.generation()));
        assert!(cache.lock().map.is_empty());
        assert!(cache.insert_many(
            "w",
            [(key(1), a.clone()), (key(2), b.clone())],
            t,
            cache.generation()
        ));
        let later = t + ttl / 2 + Duration::from_secs(1);
        assert!(cache.insert("w", key(3), a.clone(), later, cache.generation()));
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache.get_many("w", [&key(2), &key(9), &key(1), &key(2)], t),
            vec![Some(b.clone()), None, Some(a.clone()), Some(b.clone())]
        );
        assert_eq!(cache.get_many("v", [&key(1)], t), vec![None]);
        // Past every lifetime of the first two, within the third's.
        let found = cache.get_many("w", [&key(1), &key(2), &key(3)], t + ttl);
        assert_eq!(found, vec![None, None, Some(a)]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get_many("w", [&key(3)], later + ttl), vec![None]);
        assert_eq!(cache.len(), 0);
        assert!(cache.lock().map.is_empty());
    }

    #[test]
    fn inserting_many_is_bounded_and_refused_after_an_eviction() {
        let cache = DekCache::new(3, Duration::from_secs(60));
        let t = Instant::now();
        let stale = cache.generation();
        cache.evict("w", "nothing");
        assert!(!cache.insert_many("w", [("s0".to_owned(), dek(0))], t, stale));
        assert_eq!(cache.len(), 0);
        let entries = (0..5u128).map(|i| (format!("s{i}"), dek(i)));
        assert!(cache.insert_many("w", entries, t, cache.generation()));
        assert_eq!(cache.len(), 3);
        let found = cache.get_many("w", ["s0", "s1", "s2", "s3", "s4"], t);
        let ids: Vec<Option<Uuid>> = found.iter().map(|d| d.as_ref().map(|d| d.key_id)).collect();
        assert_eq!(
            ids,
            vec![
                None,
                None,
                Some(Uuid::from_u128(2)),
                Some(Uuid::from_u128(3)),
                Some(Uuid::from_u128(4))
            ]
        );
    }

    #[test]
    fn a_blind_index_hashes_to_its_first_eight_bytes() {
        let hash = |k: &[u8; 32]| BlindIndexHashing::default().hash_one(k);
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
        k[8..].fill(0xee);
        assert_eq!(hash(&k), 0x0123_4567_89ab_cdef);
        let mut other = k;
        other[0] ^= 1;
        assert_ne!(hash(&k), hash(&other));
    }

    #[test]
    fn zero_ttl_disables_caching() {
        let cache = DekCache::new(10, Duration::ZERO);
        assert!(!cache.insert(
            "w",
            "s".to_owned(),
            dek(1),
            Instant::now(),
            cache.generation()
        ));
    }
}
