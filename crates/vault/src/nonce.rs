//! Seal nonces from the operating system's generator, fetched a page at a time.
//!
//! One `getrandom` system call per seal cost the ingest server about 5 % of its CPU, more
//! than twice the AES-GCM it fed (`perf` during `meridian bench ingest`): the kernel sets up
//! its generator state per call, whatever the length. Each thread now fetches
//! [`POOL_BYTES`] at once and hands them out 12 at a time, so one call serves 341 seals.
//!
//! Only for values that are public once used: a nonce is written in clear into the sealed
//! value it served. Keys never come from here (they are drawn straight from
//! `SystemRandom` by the vault). Every byte is handed out once: the pool only moves forward
//! and refills from the generator, never from itself.
//!
//! A process that forked would hand its unused bytes out twice (the child's copy of the
//! thread's pool is the parent's): meridian forks only to `exec` another program
//! (`bench` starting a server), and never seals in between.

use std::cell::RefCell;

use ring::aead::NONCE_LEN;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Result, VaultError};

/// Bytes fetched per system call.
const POOL_BYTES: usize = 4096;

/// Unused random bytes, consumed from the front.
struct RandomPool {
    bytes: [u8; POOL_BYTES],
    /// Bytes already handed out (or not yet filled: a new pool starts empty).
    used: usize,
}

impl RandomPool {
    const fn empty() -> Self {
        RandomPool {
            bytes: [0; POOL_BYTES],
            used: POOL_BYTES,
        }
    }

    /// The next `N` unused bytes, refilling the whole pool from `fill` when fewer are left
    /// (the remainder is dropped, not reused).
    fn take<const N: usize>(
        &mut self,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<[u8; N]> {
        if POOL_BYTES - self.used < N {
            fill(&mut self.bytes)?;
            self.used = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.used..self.used + N]);
        self.used += N;
        Ok(out)
    }
}

thread_local! {
    static POOL: RefCell<RandomPool> = const { RefCell::new(RandomPool::empty()) };
}

/// A fresh random nonce for AES-256-GCM.
pub(crate) fn next() -> Result<[u8; NONCE_LEN]> {
    POOL.with(|pool| {
        pool.borrow_mut().take(|buf| {
            SystemRandom::new()
                .fill(buf)
                .map_err(|_| VaultError::Crypto)
        })
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// A generator that counts its calls and writes a running counter, so every byte it
    /// ever produced can be told apart from every other.
    struct CountingSource {
        calls: usize,
        next: u32,
    }

    impl CountingSource {
        fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
            self.calls += 1;
            for chunk in buf.chunks_mut(4) {
                let word = self.next.to_be_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
                self.next += 1;
            }
            Ok(())
        }
    }

    #[test]
    fn one_fill_serves_many_nonces_and_no_byte_is_handed_out_twice() {
        let mut pool = RandomPool::empty();
        let mut source = CountingSource { calls: 0, next: 0 };
        let mut seen = HashSet::new();
        let per_fill = POOL_BYTES / NONCE_LEN;
        for _ in 0..3 * per_fill + 1 {
            let nonce: [u8; NONCE_LEN] = pool.take(|b| source.fill(b)).unwrap();
            // Each nonce is three counter words: distinct nonces mean no byte came twice.
            assert!(seen.insert(nonce), "a nonce was handed out twice");
        }
        assert_eq!(per_fill, 341);
        assert_eq!(source.calls, 4, "one generator call per {per_fill} nonces");
    }

    #[test]
    fn a_failed_fill_is_an_error_and_the_next_call_refills() {
        let mut pool = RandomPool::empty();
        let mut source = CountingSource { calls: 0, next: 0 };
        let first: [u8; NONCE_LEN] = pool.take(|b| source.fill(b)).unwrap();
        pool.used = POOL_BYTES - 4;
        let failed: Result<[u8; NONCE_LEN]> = pool.take(|_| Err(VaultError::Crypto));
        assert!(failed.is_err());
        // The next call refills rather than handing out what the failed fill left.
        let next: [u8; NONCE_LEN] = pool.take(|b| source.fill(b)).unwrap();
        assert_eq!(source.calls, 2);
        assert_ne!(next, first);
    }

    #[test]
    fn nonces_from_the_system_generator_differ_across_threads_and_refills() {
        let per_thread = 2 * POOL_BYTES / NONCE_LEN + 5;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread).map(|_| next().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for nonce in t.join().unwrap() {
                assert!(seen.insert(nonce), "a nonce repeated");
            }
        }
        assert_eq!(seen.len(), 4 * per_thread);
    }
}
