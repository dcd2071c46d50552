//! Per-lane memory of entities known to exist, so the executor can skip the store's
//! existence query for entities it has already seen (that query was the largest part of a
//! lane's CPU time).
//!
//! Why only positive facts, and why per lane: an entity is always processed by the same lane
//! (lanes are chosen by the entity's hash, and in scale-out mode the worker is too), and an
//! entity row disappears only when a delete task applies, which runs on that same lane. So
//! "exists" stays true until this lane itself processes a delete, which removes the entry.
//! Absence is never cached: another process (or an earlier run) may create the entity.

use dp3_model::Eid;
use dp3_model::recent::RecentMap;

/// Entries kept per generation: a lane remembers between `CAP` and `2 * CAP` entities
/// (bounded memory with millions of entities, recently seen ones stay).
const CAP: usize = 100_000;

/// Entities known to exist, by entity type (the type's position in the model).
#[derive(Debug)]
pub struct KnownEntities {
    known: RecentMap<usize, Eid, ()>,
    etypes: usize,
}

impl KnownEntities {
    pub fn new(etypes: usize) -> Self {
        Self::with_capacity(etypes, CAP)
    }

    fn with_capacity(etypes: usize, cap: usize) -> Self {
        KnownEntities {
            known: RecentMap::new(cap),
            etypes,
        }
    }

    /// Whether the entity is known to exist (`false` = unknown, ask elsewhere).
    pub fn contains(&self, etype: usize, eid: &Eid) -> bool {
        self.known.contains_key(etype, eid)
    }

    /// Remember that the entity exists (entities of types outside the model are ignored).
    pub fn insert(&mut self, etype: usize, eid: &Eid) {
        // Known already: `get_mut` keeps it in the current generation.
        if etype < self.etypes && self.known.get_mut(etype, eid).is_none() {
            self.known.insert(etype, eid.clone(), ());
        }
    }

    /// Forget the entity (it is being deleted).
    pub fn remove(&mut self, etype: usize, eid: &Eid) {
        self.known.remove(etype, eid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_forgets_and_stays_bounded() {
        let mut k = KnownEntities::with_capacity(2, 3);
        let e = |i: i64| Eid::Int(i);
        assert!(!k.contains(0, &e(1)));
        k.insert(0, &e(1));
        assert!(k.contains(0, &e(1)));
        assert!(!k.contains(1, &e(1)), "types are separate");
        k.remove(0, &e(1));
        assert!(!k.contains(0, &e(1)));
        // unknown type index: ignored
        k.insert(7, &e(1));
        assert!(!k.contains(7, &e(1)));
        for i in 0..3 {
            k.insert(0, &e(i));
        }
        // a fourth entity starts a new generation: the old three are still known
        k.insert(0, &e(3));
        assert!((0..4).all(|i| k.contains(0, &e(i))));
        // deleting an entity of the old generation forgets it
        k.remove(0, &e(0));
        assert!(!k.contains(0, &e(0)));
        // re-inserting an old-generation entity moves it to the current one
        k.insert(0, &e(1));
        k.insert(0, &e(4));
        k.insert(0, &e(5));
        k.insert(0, &e(6)); // 5 started a generation: current = {5, 6}, previous = {3, 1, 4}
        assert!(k.contains(0, &e(1)));
        assert!(!k.contains(0, &e(2)), "oldest generation forgotten");
        assert!(k.known.kept() <= 6);
    }
}
