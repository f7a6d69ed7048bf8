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
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::seal::Dek;

/// Unwrapped data keys by subject.
pub(crate) type DekCache = WorkspaceCache<String, Arc<Dek>>;

/// The vault subject of each identifier, by blind index.
pub(crate) type IdentifierSubjectCache = WorkspaceCache<[u8; 32], Arc<str>>;

struct Entry<V> {
    value: V,
    loaded_at: Instant,
    /// Served while younger: [`lifetime`] of the entry's `seq`.
    lifetime: Duration,
    seq: u64,
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

struct State<K, V> {
    map: HashMap<String, HashMap<K, Entry<V>>>,
    order: VecDeque<(String, K, u64)>,
    len: usize,
    seq: u64,
    generation: u64,
}

impl<K, V> Default for State<K, V> {
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

impl<K: Hash + Eq, V> State<K, V> {
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

pub(crate) struct WorkspaceCache<K, V> {
    state: Mutex<State<K, V>>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V: Clone> WorkspaceCache<K, V> {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        WorkspaceCache {
            state: Mutex::new(State::default()),
            capacity,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, V>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get<Q>(&self, workspace: &str, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut state = self.lock();
        let entry = state.map.get(workspace)?.get(key)?;
        if now.saturating_duration_since(entry.loaded_at) < entry.lifetime {
            return Some(entry.value.clone());
        }
        state.remove(workspace, key);
        None
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
        if self.capacity == 0 || self.ttl.is_zero() {
            return false;
        }
        let mut state = self.lock();
        if state.generation != generation {
            return false;
        }
        state.seq += 1;
        let seq = state.seq;
        let previous = state.map.entry(workspace.to_owned()).or_default().insert(
            key.clone(),
            Entry {
                value,
                loaded_at,
                lifetime: lifetime(self.ttl, seq),
                seq,
            },
        );
        if previous.is_none() {
            state.len += 1;
        }
        state.order.push_back((workspace.to_owned(), key, seq));
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
            let State { map, order, .. } = &mut *state;
            order.retain(|(ws, key, seq)| {
                map.get(ws).and_then(|m| m.get(key)).map(|e| e.seq) == Some(*seq)
            });
        }
        true
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
