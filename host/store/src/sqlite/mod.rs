//! The embedded store on SQLite (WAL mode).
//!
//! Layout (see [`schema`]): one row per entity with its metadata, one row per plain
//! attribute, one row per history item clustered by `(etype, eid, attr, seq)` (append-only,
//! `seq` from a global counter keeps arrival order), an append-only raw log, snapshot
//! history plus one "latest" row per entity, the link cache, and metadata tables.
//!
//! Concurrency: one writer connection and a small pool of reader connections (WAL lets
//! readers run next to the writer). Writes use `BEGIN IMMEDIATE` and a busy timeout, so
//! several processes may open the same file. `synchronous = NORMAL`: a committed
//! transaction survives a process crash (it is in the WAL); after a power loss the last
//! transactions may be lost, which the queue's accept log covers.

mod codec;
mod entity_cache;
mod links;
mod master;
mod meta;
mod names;
mod raw;
mod records;
mod schema;
mod snapshots;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bson::Document;
use chrono::{DateTime, Utc};
use dp3_model::Eid;
use dp3_model::aggregate::AggregatedItem;
use rusqlite::{Connection, OpenFlags};

use crate::Store;
use crate::error::{Result, StoreError};
use crate::types::*;
use codec::SqlResultExt;
use entity_cache::EntityCache;
use names::Names;

pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_IDLE_READERS: usize = 4;

/// The embedded SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    names: Names,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The writer connection and what it remembers between transactions.
struct Writer {
    conn: Connection,
    entities: EntityCache,
}

/// What a write transaction does to the writer's entity cache.
#[derive(Clone, Copy, PartialEq)]
enum EntityRows {
    /// It may change entity rows without going through the cache: the cache is dropped.
    ChangedDirectly,
    /// It leaves entity rows alone, or changes them through the cache (batches).
    ViaCacheOrUntouched,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves the connection usable (SQLite rolls back an
    // unfinished transaction when the next one begins), so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SqliteStore {
    /// Open (creating if missing) the store at `path`. Refuses foreign, corrupted or
    /// incompatible files with [`StoreError::Open`] naming the file.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(open_err(format!(
                "directory {} does not exist",
                parent.display()
            )));
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_err(e.to_string()))?;
        schema::ensure_schema(&mut conn, path)?;
        let mode = enable_wal(&conn).map_err(|e| open_err(format!("cannot enable WAL ({e})")))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(format!(
                "cannot enable WAL (journal mode is {mode})"
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -131072; \
             PRAGMA temp_store = MEMORY; PRAGMA foreign_keys = OFF; \
             PRAGMA wal_autocheckpoint = 50000; PRAGMA journal_size_limit = 67108864;",
        )
        .map_err(|e| open_err(e.to_string()))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(Writer {
                conn,
                entities: EntityCache::new(),
            }),
            readers: Mutex::new(Vec::new()),
            names: Names::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_reader(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .db()?;
        conn.busy_timeout(BUSY_TIMEOUT).db()?;
        // Readers map the file: a page already in the OS cache costs no read() call and no
        // copy (snapshot runs seek through the history index of the whole store).
        conn.execute_batch(
            "PRAGMA query_only = 1; PRAGMA cache_size = -16384; PRAGMA mmap_size = 17179869184;",
        )
        .db()?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Run `f` on a pooled reader connection.
    fn read<T>(&self, f: impl FnOnce(&Connection, &Names) -> Result<T>) -> Result<T> {
        let conn = match lock(&self.readers).pop() {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let out = f(&conn, &self.names);
        let mut pool = lock(&self.readers);
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    /// Run `f` in one immediate write transaction (committed when `f` succeeds) that may
    /// change entity rows.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &Names) -> Result<T>,
    ) -> Result<T> {
        self.write_touching(EntityRows::ChangedDirectly, |tx, names, _| f(tx, names))
    }

    /// [`SqliteStore::write`] for transactions that leave entity rows alone.
    fn write_other<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &Names) -> Result<T>,
    ) -> Result<T> {
        self.write_touching(EntityRows::ViaCacheOrUntouched, |tx, names, _| f(tx, names))
    }

    fn write_touching<T>(
        &self,
        rows: EntityRows,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &Names, &mut EntityCache) -> Result<T>,
    ) -> Result<T> {
        let mut writer = lock(&self.writer);
        let Writer { conn, entities } = &mut *writer;
        if rows == EntityRows::ChangedDirectly {
            entities.clear();
        }
        let result = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .db()
            .and_then(|tx| {
                let out = f(&tx, &self.names, entities)?;
                tx.commit().db()?;
                Ok(out)
            });
        if result.is_err() {
            // Rolled back: the cache may hold rows that were never committed.
            entities.clear();
        }
        result
    }
}

impl Store for SqliteStore {
    fn apply(&self, batch: &WriteBatch) -> Result<ApplyStats> {
        if batch.is_empty() {
            return Ok(ApplyStats::default());
        }
        self.names
            .intern(&lock(&self.writer).conn, write::batch_names(batch))?;
        self.write_touching(EntityRows::ViaCacheOrUntouched, |tx, names, entities| {
            entities.validate(tx)?;
            write::apply(tx, names, entities, batch)
        })
    }

    fn exists(&self, etype: &str, eid: &Eid) -> Result<bool> {
        self.read(|c, n| master::exists(c, n, etype, eid))
    }

    fn get_master(&self, etype: &str, eid: &Eid) -> Result<Option<Document>> {
        self.read(|c, n| master::get_master(c, n, etype, eid, None))
    }

    fn get_master_projected(
        &self,
        etype: &str,
        eid: &Eid,
        attrs: &[String],
    ) -> Result<Option<Document>> {
        self.read(|c, n| {
            let projection = master::projection_ids(c, n, Some(attrs))?;
            master::get_master(c, n, etype, eid, projection.as_ref())
        })
    }

    fn scan_master(&self, etype: &str, scan: &MasterScan) -> Result<Vec<Document>> {
        self.read(|c, n| master::scan_master(c, n, etype, scan))
    }

    fn count_master(&self, etype: &str) -> Result<u64> {
        self.read(|c, n| master::count_master(c, n, etype))
    }

    fn get_records(
        &self,
        etype: &str,
        eids: &[Eid],
        read: &RecordRead,
    ) -> Result<Vec<Option<StoredRecord>>> {
        self.read(|c, n| records::get_records(c, n, etype, eids, read))
    }

    fn scan_eids(&self, etype: &str, scan: &MasterScan) -> Result<Vec<Eid>> {
        self.read(|c, n| records::scan_eids(c, n, etype, scan))
    }

    fn replace_histories(
        &self,
        etype: &str,
        eid: &Eid,
        expected_revision: i64,
        histories: &[(String, Vec<AggregatedItem>)],
    ) -> Result<bool> {
        {
            let attrs = histories.iter().map(|(a, _)| a.as_str());
            self.names.intern(
                &lock(&self.writer).conn,
                std::iter::once(etype).chain(attrs),
            )?;
        }
        self.write(|tx, n| {
            master::replace_histories(tx, n, etype, eid, expected_revision, histories)
        })
    }

    fn delete_old_history(
        &self,
        etype: &str,
        attr: &str,
        older_than: DateTime<Utc>,
    ) -> Result<u64> {
        self.write(|tx, n| master::delete_old_history(tx, n, etype, attr, older_than))
    }

    fn expire_ttl_tokens(
        &self,
        etype: &str,
        now: DateTime<Utc>,
        partition: Option<(u32, u32)>,
    ) -> Result<Vec<Eid>> {
        self.write(|tx, n| master::expire_ttl_tokens(tx, n, etype, now, partition))
    }

    fn raw_get(&self, etype: &str, query: &RawQuery) -> Result<Vec<Document>> {
        self.read(|c, n| raw::raw_get(c, n, etype, query))
    }

    fn archive_raw(
        &self,
        etype: &str,
        older_than: DateTime<Utc>,
        sink: &mut dyn FnMut(&[Document]) -> Result<()>,
    ) -> Result<u64> {
        raw::archive_raw(self, etype, older_than, sink)
    }

    fn links_to(
        &self,
        to: &LinkKey,
        using_attr: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<LinkEntry>> {
        self.read(|c, _| links::links_to(c, to, using_attr, now))
    }

    fn links_using(&self, using_attrs: &[String], now: DateTime<Utc>) -> Result<Vec<LinkEntry>> {
        self.read(|c, _| links::links_using(c, using_attrs, now))
    }

    fn referenced_eids(&self, etype: &str, now: DateTime<Utc>) -> Result<Vec<Eid>> {
        self.read(|c, _| links::referenced_eids(c, etype, now))
    }

    fn save_snapshots(
        &self,
        etype: &str,
        snapshots: &[(Eid, Document)],
        time: DateTime<Utc>,
    ) -> Result<()> {
        self.names
            .intern(&lock(&self.writer).conn, std::iter::once(etype))?;
        self.write_other(|tx, n| snapshots::save_snapshots(tx, n, etype, snapshots, time))
    }

    fn latest_snapshots(&self, etype: &str, query: &SnapshotQuery) -> Result<Vec<Document>> {
        self.read(|c, n| snapshots::latest_snapshots(c, n, etype, query))
    }

    fn count_latest_snapshots(&self, etype: &str, filter: &Document) -> Result<u64> {
        self.read(|c, n| snapshots::count_latest(c, n, etype, filter))
    }

    fn latest_snapshot(&self, etype: &str, eid: &Eid) -> Result<Option<Document>> {
        self.read(|c, n| snapshots::latest_snapshot(c, n, etype, eid))
    }

    fn snapshot_history(
        &self,
        etype: &str,
        eid: &Eid,
        query: &HistoryQuery,
    ) -> Result<Vec<Document>> {
        self.read(|c, n| snapshots::snapshot_history(c, n, etype, eid, query))
    }

    fn distinct_latest(&self, etype: &str, attr: &str) -> Result<Vec<(bson::Bson, u64)>> {
        self.read(|c, n| snapshots::distinct_latest(c, n, etype, attr))
    }

    fn delete_old_snapshots(&self, etype: &str, older_than: DateTime<Utc>) -> Result<u64> {
        self.write_other(|tx, n| snapshots::delete_old(tx, n, etype, older_than))
    }

    fn get_meta(&self, key: &str) -> Result<Option<Document>> {
        self.read(|c, _| meta::get(c, key))
    }

    fn put_meta(&self, key: &str, value: &Document) -> Result<()> {
        self.write_other(|tx, _| meta::put(tx, key, value))
    }

    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Document)>> {
        self.read(|c, _| meta::list(c, prefix))
    }

    fn delete_meta(&self, key: &str) -> Result<()> {
        self.write_other(|tx, _| meta::delete(tx, key))
    }

    fn insert_run_metadata(&self, doc: &Document) -> Result<()> {
        self.write_other(|tx, _| meta::insert_run(tx, doc))
    }

    fn update_run_metadata(&self, id: &str, set: &Document, inc: &Document) -> Result<()> {
        self.write_other(|tx, _| meta::update_run(tx, id, set, inc))
    }

    fn query_run_metadata(&self, query: &RunMetadataQuery) -> Result<Vec<Document>> {
        self.read(|c, _| meta::query_runs(c, query))
    }

    fn flush(&self) -> Result<()> {
        let conn = &lock(&self.writer).conn;
        // TRUNCATE also shrinks the WAL file (flush is called at shutdown).
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .db()
    }
}

/// Switch to WAL. Changing the journal mode needs an exclusive lock, and SQLite answers
/// "database is locked" at once (without the busy handler) while another process opens or
/// creates the same file, so retry for up to [`BUSY_TIMEOUT`]; a file already in WAL mode
/// (every open after the first) needs no lock at all.
fn enable_wal(conn: &Connection) -> rusqlite::Result<String> {
    let current: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if current.eq_ignore_ascii_case("wal") {
        return Ok(current);
    }
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
