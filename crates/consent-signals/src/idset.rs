//! A set of IAB ids (vendors, purposes): 16-bit ids kept in a bitset, so a
//! string full of overlapping ranges costs at most 8 KiB and linear time.

use serde::{Serialize, Serializer};

/// A set of ids in `1..=65535`, iterated in ascending order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IdSet {
    words: Vec<u64>,
}

impl IdSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u16) -> bool {
        let (word, bit) = (usize::from(id) / 64, usize::from(id) % 64);
        self.words.get(word).is_some_and(|w| w & (1u64 << bit) != 0)
    }

    /// Adds one id.
    pub fn insert(&mut self, id: u16) {
        self.insert_range(id, id);
    }

    /// Adds every id in `first..=last` (nothing when `last < first`).
    pub fn insert_range(&mut self, first: u16, last: u16) {
        if last < first {
            return;
        }
        let (first, last) = (usize::from(first), usize::from(last));
        let last_word = last / 64;
        if self.words.len() <= last_word {
            self.words.resize(last_word + 1, 0);
        }
        for (index, word) in self
            .words
            .iter_mut()
            .enumerate()
            .take(last_word + 1)
            .skip(first / 64)
        {
            let lo = if index == first / 64 { first % 64 } else { 0 };
            let hi = if index == last_word { last % 64 } else { 63 };
            let width = hi - lo + 1;
            let mask = if width == 64 {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << lo
            };
            *word |= mask;
        }
    }

    /// Adds every id of `other`.
    pub fn union_with(&mut self, other: &IdSet) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.words.iter().enumerate().flat_map(|(index, word)| {
            (0..64u32).filter_map(move |bit| {
                if word & (1u64 << bit) != 0 {
                    u16::try_from(index * 64 + bit as usize).ok()
                } else {
                    None
                }
            })
        })
    }

    /// The ids in ascending order, collected.
    pub fn to_vec(&self) -> Vec<u16> {
        self.iter().collect()
    }

    /// The set of 1-based positions whose flag is set (`flags[0]` is id 1).
    pub(crate) fn from_flags(flags: &[bool]) -> Self {
        let mut set = Self::new();
        for (index, flag) in flags.iter().enumerate() {
            if *flag && let Ok(id) = u16::try_from(index + 1) {
                set.insert(id);
            }
        }
        set
    }
}

impl std::fmt::Debug for IdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<u16> for IdSet {
    fn from_iter<T: IntoIterator<Item = u16>>(iter: T) -> Self {
        let mut set = Self::new();
        for id in iter {
            set.insert(id);
        }
        set
    }
}

impl Serialize for IdSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_across_words() {
        let mut s = IdSet::new();
        s.insert_range(60, 130);
        s.insert(1);
        s.insert_range(65535, 65535);
        s.insert_range(10, 5);
        let v = s.to_vec();
        assert_eq!(v.len(), 71 + 2);
        assert_eq!(v.first(), Some(&1));
        assert_eq!(v.last(), Some(&65535));
        assert!(s.contains(64) && s.contains(128) && !s.contains(131) && !s.contains(59));
        assert_eq!(s.len(), 73);
    }

    #[test]
    fn full_range_is_cheap() {
        let mut s = IdSet::new();
        for _ in 0..4095 {
            s.insert_range(1, 65535);
        }
        assert_eq!(s.len(), 65535);
    }
}
