//! Bounded memory of recently used entries: the caches of the store writer (entity rows) and
//! of the task lanes (entities known to exist) keep what they saw last without growing with
//! the number of entities.
//!
//! Entries live in two generations. New and re-used entries go to the current one; when it
//! holds `cap` entries it becomes the previous one and the old previous one is forgotten. So
//! between `cap` and `2 * cap` entries are kept, and an entry used within the last `cap`
//! insertions is never forgotten. Entries are partitioned (by entity type): lookups take the
//! partition and a borrowed key, so no key is built for a lookup.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Generation<P, K, V> = HashMap<P, Map<K, V>>;

/// A two-generation map from `(partition, key)` to `V`.
#[derive(Debug)]
pub struct RecentMap<P, K, V> {
    current: Generation<P, K, V>,
    previous: Generation<P, K, V>,
    /// Entries in `current`.
    len: usize,
    cap: usize,
}

impl<P: Hash + Eq + Copy, K: Hash + Eq, V> RecentMap<P, K, V> {
    /// A map keeping between `cap` and `2 * cap` entries (`cap` at least 1).
    pub fn new(cap: usize) -> Self {
        RecentMap {
            current: HashMap::new(),
            previous: HashMap::new(),
            len: 0,
            cap: cap.max(1),
        }
    }

    /// Whether the entry is kept (in either generation; it is not moved).
    pub fn contains_key<Q>(&self, partition: P, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let has = |g: &Generation<P, K, V>| g.get(&partition).is_some_and(|m| m.contains_key(key));
        has(&self.current) || has(&self.previous)
    }

    /// The entry, to be changed in place; an entry of the previous generation moves to the
    /// current one (it was just used).
    pub fn get_mut<Q>(&mut self, partition: P, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let in_current = self
            .current
            .get(&partition)
            .is_some_and(|m| m.contains_key(key));
        if in_current {
            return self.current.get_mut(&partition)?.get_mut(key);
        }
        let (key, value) = self.previous.get_mut(&partition)?.remove_entry(key)?;
        Some(self.insert(partition, key, value))
    }

    /// Keep `value` under the key (replacing an older value) in the current generation.
    pub fn insert(&mut self, partition: P, key: K, value: V) -> &mut V {
        if let Some(m) = self.previous.get_mut(&partition) {
            m.remove(&key);
        }
        let full = self.len >= self.cap
            && !self
                .current
                .get(&partition)
                .is_some_and(|m| m.contains_key(&key));
        if full {
            // Start a new generation; the oldest one is forgotten.
            self.previous = std::mem::take(&mut self.current);
            self.len = 0;
        }
        match self.current.entry(partition).or_default().entry(key) {
            Entry::Occupied(mut e) => {
                e.insert(value);
                e.into_mut()
            }
            Entry::Vacant(e) => {
                self.len += 1;
                e.insert(value)
            }
        }
    }

    /// Forget the entry.
    pub fn remove<Q>(&mut self, partition: P, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self
            .current
            .get_mut(&partition)
            .and_then(|m| m.remove(key))
            .is_some()
        {
            self.len -= 1;
        }
        if let Some(m) = self.previous.get_mut(&partition) {
            m.remove(key);
        }
    }

    /// Forget every entry.
    pub fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
        self.len = 0;
    }

    /// Entries kept in both generations.
    pub fn kept(&self) -> usize {
        let count = |g: &Generation<P, K, V>| g.values().map(Map::len).sum::<usize>();
        count(&self.current) + count(&self.previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_between_cap_and_twice_cap_entries_and_forgets_the_oldest() {
        let mut m: RecentMap<u8, String, i32> = RecentMap::new(2);
        m.insert(0, "a".into(), 1);
        m.insert(0, "b".into(), 2);
        m.insert(0, "c".into(), 3); // new generation: a, b are previous
        assert!(m.contains_key(0, "a") && m.contains_key(0, "c"));
        m.insert(1, "a".into(), 4); // partitions are separate keys
        m.insert(0, "d".into(), 5); // new generation: a, b forgotten
        assert!(!m.contains_key(0, "a") && !m.contains_key(0, "b"));
        assert_eq!(m.kept(), 3);
        assert_eq!(m.get_mut(1, "a").copied(), Some(4));
    }

    #[test]
    fn replacing_a_current_entry_does_not_start_a_generation() {
        let mut m: RecentMap<u8, String, i32> = RecentMap::new(2);
        m.insert(0, "a".into(), 1);
        m.insert(0, "b".into(), 2);
        m.insert(0, "b".into(), 3);
        *m.get_mut(0, "a").expect("kept") += 10;
        assert_eq!(m.get_mut(0, "a").copied(), Some(11));
        assert_eq!(m.get_mut(0, "b").copied(), Some(3));
        assert_eq!(m.kept(), 2);
    }

    #[test]
    fn remove_and_clear_forget_entries_of_both_generations() {
        let mut m: RecentMap<u8, String, ()> = RecentMap::new(1);
        m.insert(0, "a".into(), ());
        m.insert(0, "b".into(), ()); // a is previous
        m.remove(0, "a");
        m.remove(0, "b");
        assert_eq!(m.kept(), 0);
        m.insert(0, "c".into(), ());
        m.clear();
        assert!(!m.contains_key(0, "c"));
    }
}
