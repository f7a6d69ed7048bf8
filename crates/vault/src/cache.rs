//! Bounded, time-limited cache of unwrapped data keys.
//!
//! - Bounded: at most `capacity` keys; the oldest insertion is evicted first.
//! - Time-limited: an entry older than `ttl` is not served; the next use reloads it from the
//!   key store, so a `forget` done by another replica is seen within `ttl`.
//! - Forget-safe on this replica: [`DekCache::evict`] bumps a generation counter under the
//!   same lock as the insert check, so a load that started before a `forget` cannot put the
//!   destroyed key back into the cache after it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::seal::Dek;

struct Entry {
    dek: Arc<Dek>,
    loaded_at: Instant,
    seq: u64,
}

#[derive(Default)]
struct State {
    map: HashMap<String, HashMap<String, Entry>>,
    order: VecDeque<(String, String, u64)>,
    len: usize,
    seq: u64,
    generation: u64,
}

impl State {
    fn remove(&mut self, workspace: &str, subject: &str) -> bool {
        let Some(subjects) = self.map.get_mut(workspace) else {
            return false;
        };
        let removed = subjects.remove(subject).is_some();
        if subjects.is_empty() {
            self.map.remove(workspace);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }
}

pub(crate) struct DekCache {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
}

impl DekCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        DekCache {
            state: Mutex::new(State::default()),
            capacity,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, workspace: &str, subject: &str, now: Instant) -> Option<Arc<Dek>> {
        let mut state = self.lock();
        let entry = state.map.get(workspace)?.get(subject)?;
        if now.saturating_duration_since(entry.loaded_at) < self.ttl {
            return Some(entry.dek.clone());
        }
        state.remove(workspace, subject);
        None
    }

    /// The generation to pass to [`DekCache::insert`]; read it before loading from the store.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches `dek` loaded at `loaded_at`, unless an eviction happened since `generation`.
    pub(crate) fn insert(
        &self,
        workspace: &str,
        subject: &str,
        dek: Arc<Dek>,
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
            subject.to_owned(),
            Entry {
                dek,
                loaded_at,
                seq,
            },
        );
        if previous.is_none() {
            state.len += 1;
        }
        state
            .order
            .push_back((workspace.to_owned(), subject.to_owned(), seq));
        while state.len > self.capacity {
            let Some((ws, subj, seq)) = state.order.pop_front() else {
                break;
            };
            let current = state.map.get(&ws).and_then(|m| m.get(&subj)).map(|e| e.seq);
            if current == Some(seq) {
                state.remove(&ws, &subj);
            }
        }
        if state.order.len() > self.capacity.saturating_mul(2).max(64) {
            // Drop queue entries whose key was replaced or removed since.
            let State { map, order, .. } = &mut *state;
            order.retain(|(ws, subj, seq)| {
                map.get(ws).and_then(|m| m.get(subj)).map(|e| e.seq) == Some(*seq)
            });
        }
        true
    }

    /// Drops a subject's key and invalidates loads in flight.
    pub(crate) fn evict(&self, workspace: &str, subject: &str) {
        let mut state = self.lock();
        state.generation += 1;
        state.remove(workspace, subject);
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
            assert!(cache.insert("w", &format!("s{i}"), dek(i), t, cache.generation()));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get("w", "s0", t).is_none());
        assert!(cache.get("w", "s1", t).is_none());
        assert_eq!(cache.get("w", "s4", t).unwrap().key_id, Uuid::from_u128(4));
        // Re-inserting many times keeps the queue bounded.
        for _ in 0..1000 {
            cache.insert("w", "s4", dek(4), t, cache.generation());
        }
        assert!(cache.lock().order.len() <= 64 + 1);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn entries_expire_after_ttl() {
        let cache = DekCache::new(10, Duration::from_secs(10));
        let t = Instant::now();
        cache.insert("w", "s", dek(1), t, cache.generation());
        assert!(cache.get("w", "s", t + Duration::from_secs(9)).is_some());
        assert!(cache.get("w", "s", t + Duration::from_secs(10)).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn eviction_blocks_stale_inserts() {
        let cache = DekCache::new(10, Duration::from_secs(10));
        let t = Instant::now();
        let before_forget = cache.generation();
        cache.evict("w", "s");
        assert!(!cache.insert("w", "s", dek(1), t, before_forget));
        assert!(cache.get("w", "s", t).is_none());
        assert!(cache.insert("w", "s", dek(1), t, cache.generation()));
        cache.evict("w", "s");
        assert!(cache.get("w", "s", t).is_none());
    }

    #[test]
    fn zero_ttl_disables_caching() {
        let cache = DekCache::new(10, Duration::ZERO);
        assert!(!cache.insert("w", "s", dek(1), Instant::now(), cache.generation()));
    }
}
