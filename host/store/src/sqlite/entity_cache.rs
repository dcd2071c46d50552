//! The writer's memory of entity rows it wrote, so a batch updates a touched entity's row
//! (revision, `#min_t2s`, TTL tokens) without first reading and decoding it from the file
//! (that read was about a quarter of the store writer's time under ingestion).
//!
//! Why this is safe: the cache belongs to the single writer connection and is checked against
//! `PRAGMA data_version` inside each write transaction, which changes exactly when another
//! connection (another `dp3` process sharing the file) has committed; then the cache is
//! dropped. Write transactions of this store that change entity rows outside the batch path
//! (history maintenance, TTL expiry) drop it too, and so does a failed batch (its
//! transaction is rolled back, the cache may hold rows that were never committed).

use dp3_model::recent::RecentMap;
use rusqlite::Connection;

use super::codec::SqlResultExt;
use super::master::EntityRow;
use crate::error::Result;

/// Rows kept per generation: the writer remembers between `CAP` and `2 * CAP` recently
/// written entities (bounded memory with millions of entities).
const CAP: usize = 100_000;

#[derive(Debug)]
pub struct EntityCache {
    /// Rows by entity type id and entity key.
    rows: RecentMap<i64, Vec<u8>, EntityRow>,
    /// `PRAGMA data_version` the cached rows were valid at (`None`: nothing cached).
    data_version: Option<i64>,
}

impl EntityCache {
    pub fn new() -> Self {
        Self::with_capacity(CAP)
    }

    fn with_capacity(cap: usize) -> Self {
        EntityCache {
            rows: RecentMap::new(cap),
            data_version: None,
        }
    }

    /// Call inside a write transaction before using the cache: forgets everything when
    /// another connection has committed since the cache was last validated.
    pub fn validate(&mut self, conn: &Connection) -> Result<()> {
        let version: i64 = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .db()?;
        if self.data_version != Some(version) {
            self.clear();
            self.data_version = Some(version);
        }
        Ok(())
    }

    /// Forget every row.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.data_version = None;
    }

    /// The cached row of an entity, to be changed in place as it is written.
    pub fn get_mut(&mut self, etype: i64, key: &[u8]) -> Option<&mut EntityRow> {
        self.rows.get_mut(etype, key)
    }

    /// Remember a row read from the file or created in the current transaction.
    pub fn insert(&mut self, etype: i64, key: &[u8], row: EntityRow) -> &mut EntityRow {
        self.rows.insert(etype, key.to_vec(), row)
    }

    /// Forget one entity (its row was deleted or changed outside the cache).
    pub fn remove(&mut self, etype: i64, key: &[u8]) {
        self.rows.remove(etype, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> EntityRow {
        EntityRow {
            id,
            ..EntityRow::default()
        }
    }

    fn id(c: &mut EntityCache, etype: i64, key: &[u8]) -> Option<i64> {
        c.get_mut(etype, key).map(|r| r.id)
    }

    #[test]
    fn keeps_two_generations_and_forgets_the_oldest() {
        let mut c = EntityCache::with_capacity(2);
        c.insert(1, b"a", row(1));
        c.insert(1, b"b", row(2));
        c.insert(1, b"c", row(3)); // new generation: a, b become previous
        c.insert(2, b"a", row(4));
        c.insert(1, b"d", row(5)); // a, b forgotten
        assert_eq!(id(&mut c, 1, b"a"), None);
        assert_eq!(id(&mut c, 1, b"d"), Some(5));
        // c and 2/a are in the previous generation: reading one moves it to the current
        // generation (a new one starts when that is full).
        assert_eq!(id(&mut c, 1, b"c"), Some(3));
        assert_eq!(id(&mut c, 2, b"a"), Some(4));
        assert_eq!(id(&mut c, 1, b"c"), Some(3));
    }

    #[test]
    fn rows_change_in_place() {
        let mut c = EntityCache::with_capacity(10);
        c.insert(1, b"a", row(1)).revision = 5;
        c.get_mut(1, b"a").expect("cached").revision += 1;
        assert_eq!(c.get_mut(1, b"a").map(|r| r.revision), Some(6));
    }

    #[test]
    fn remove_and_clear_forget_rows() {
        let mut c = EntityCache::with_capacity(10);
        c.insert(1, b"a", row(1));
        c.insert(1, b"b", row(2));
        c.remove(1, b"a");
        assert_eq!(id(&mut c, 1, b"a"), None);
        c.clear();
        assert_eq!(id(&mut c, 1, b"b"), None);
    }

    #[test]
    fn a_commit_by_another_connection_drops_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let ours = Connection::open(&path).unwrap();
        ours.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t(x)")
            .unwrap();
        let other = Connection::open(&path).unwrap();
        let mut c = EntityCache::new();
        c.validate(&ours).unwrap();
        c.insert(1, b"a", row(1));
        ours.execute("INSERT INTO t VALUES (1)", []).unwrap();
        c.validate(&ours).unwrap();
        assert_eq!(
            id(&mut c, 1, b"a"),
            Some(1),
            "our own commits keep the cache"
        );
        other.execute("INSERT INTO t VALUES (2)", []).unwrap();
        c.validate(&ours).unwrap();
        assert_eq!(id(&mut c, 1, b"a"), None, "another connection committed");
    }
}
