//! Interned names: entity types and attribute names are stored as small integer ids in
//! the per-entity tables (saves ~20 bytes per history and raw row).

use std::collections::HashMap;
use std::sync::RwLock;

use rusqlite::{Connection, OptionalExtension};

use super::codec::SqlResultExt;
use crate::error::{Result, StoreError};

/// Cache of the append-only `name` table (ids never change once assigned, so the cache
/// stays valid even when other processes add names).
#[derive(Debug, Default)]
pub struct Names {
    cache: RwLock<Cache>,
}

/// Looked up several times per datapoint by the writer: a fast hash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct Cache {
    by_name: FastMap<String, i64>,
    by_id: FastMap<i64, String>,
}

impl Names {
    fn cached(&self, name: &str) -> Option<i64> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_name
            .get(name)
            .copied()
    }

    fn remember(&self, name: &str, id: i64) {
        let mut c = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.by_name.insert(name.to_owned(), id);
        c.by_id.insert(id, name.to_owned());
    }

    /// The id of `name`, if it was ever stored.
    pub fn id(&self, conn: &Connection, name: &str) -> Result<Option<i64>> {
        if let Some(id) = self.cached(name) {
            return Ok(Some(id));
        }
        let id: Option<i64> = conn
            .prepare_cached("SELECT id FROM name WHERE name = ?1")
            .db()?
            .query_row([name], |r| r.get(0))
            .optional()
            .db()?;
        if let Some(id) = id {
            self.remember(name, id);
        }
        Ok(id)
    }

    /// The id of a name that must exist (interned before the transaction).
    pub fn require(&self, conn: &Connection, name: &str) -> Result<i64> {
        self.id(conn, name)?
            .ok_or_else(|| StoreError::backend("sqlite", format!("name '{name}' was not interned")))
    }

    /// The name of an id.
    pub fn name(&self, conn: &Connection, id: i64) -> Result<String> {
        if let Some(n) = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_id
            .get(&id)
        {
            return Ok(n.clone());
        }
        let name: Option<String> = conn
            .prepare_cached("SELECT name FROM name WHERE id = ?1")
            .db()?
            .query_row([id], |r| r.get(0))
            .optional()
            .db()?;
        let name = name.ok_or_else(|| StoreError::Corrupt {
            what: "name table".into(),
            reason: format!("unknown name id {id}"),
        })?;
        self.remember(&name, id);
        Ok(name)
    }

    /// Make sure every name has an id. Runs in its own small transaction before the data
    /// transaction: an unused name left behind by a failed write is harmless.
    pub fn intern<'a>(
        &self,
        conn: &Connection,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        let mut missing: Vec<&str> = Vec::new();
        {
            let cache = self
                .cache
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for n in names {
                if !cache.by_name.contains_key(n) && !missing.contains(&n) {
                    missing.push(n);
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        conn.execute_batch("BEGIN IMMEDIATE").db()?;
        let result = (|| {
            for n in &missing {
                conn.prepare_cached("INSERT OR IGNORE INTO name(name) VALUES (?1)")
                    .db()?
                    .execute([n])
                    .db()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => conn.execute_batch("COMMIT").db()?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        for n in missing {
            self.id(conn, n)?;
        }
        Ok(())
    }
}
