//! Schema creation and the check that refuses foreign or newer database files.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Result, StoreError};

/// `PRAGMA application_id` of a dp3-rs store ("DP3R").
pub const APPLICATION_ID: i32 = 0x4450_3352;
/// `PRAGMA user_version`: bump with a migration when the layout changes.
pub const SCHEMA_VERSION: i32 = 5;

/// All tables. Per-entity tables are keyed `(etype, ekey, ...)` WITHOUT ROWID so one
/// entity's rows are clustered, except `entity` and `history`. `entity` is keyed by its
/// small integer `id` (found by key through the `entity_key` index): every batch rewrites
/// the row of each entity it touches, and a rowid update is overwritten in place without
/// touching the index, where a WITHOUT ROWID row is found by comparing blob keys and deleted
/// and re-inserted (measured: ~25% of the store writer's time went to that update).
/// `history`: its rows are appended in `seq` (arrival)
/// order and found through the narrow `history_key` index `(entity, attr, t2)` (a snapshot
/// run reads only the `t2` range that can count at its time; readers order items by `seq`,
/// arrival order); history refers to its entity by the
/// entity row's small integer `id`, which keeps index entries ~10 bytes. Appending rows and inserting only
/// small index entries dirties far fewer pages per batch than inserting whole rows into a
/// clustered tree (measured: the write path is bound by dirty pages written to the WAL); `etype`/`attr` are ids from `name`; `ekey` is
/// [`crate::keys::eid_key`]; times are milliseconds since the epoch.
const DDL: &str = "
CREATE TABLE name(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE counter(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE entity(
    id INTEGER PRIMARY KEY, etype INTEGER NOT NULL, ekey BLOB NOT NULL,
    hash INTEGER, time_created INTEGER, revision INTEGER NOT NULL,
    ttl BLOB, min_t2s BLOB);
CREATE UNIQUE INDEX entity_key ON entity(etype, ekey);
CREATE TABLE plain(
    etype INTEGER NOT NULL, ekey BLOB NOT NULL, attr INTEGER NOT NULL,
    v BLOB NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY(etype, ekey, attr)) WITHOUT ROWID;
CREATE TABLE history(
    seq INTEGER PRIMARY KEY, entity INTEGER NOT NULL, attr INTEGER NOT NULL,
    t1 INTEGER NOT NULL, t2 INTEGER NOT NULL, c REAL, v BLOB NOT NULL,
    n INTEGER);
CREATE INDEX history_key ON history(entity, attr, t2);
CREATE TABLE raw(
    id INTEGER PRIMARY KEY, etype INTEGER NOT NULL, ekey BLOB NOT NULL, attr INTEGER NOT NULL,
    src TEXT, t1 INTEGER, t2 INTEGER, c REAL, v BLOB NOT NULL);
CREATE TABLE snapshot(
    etype INTEGER NOT NULL, ekey BLOB NOT NULL, time INTEGER NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY(etype, ekey, time)) WITHOUT ROWID;
CREATE TABLE snapshot_latest(
    etype INTEGER NOT NULL, ekey BLOB NOT NULL, first_time INTEGER NOT NULL,
    time INTEGER NOT NULL, sort_key BLOB NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY(etype, ekey)) WITHOUT ROWID;
CREATE INDEX snapshot_latest_order ON snapshot_latest(etype, sort_key);
CREATE TABLE link(
    from_etype TEXT NOT NULL, from_key BLOB NOT NULL, using_attr TEXT NOT NULL,
    to_etype TEXT NOT NULL, to_key BLOB NOT NULL, ttl INTEGER NOT NULL,
    PRIMARY KEY(from_etype, from_key, using_attr, to_etype, to_key)) WITHOUT ROWID;
CREATE INDEX link_to ON link(to_etype, to_key);
CREATE INDEX link_using ON link(using_attr);
CREATE TABLE meta(key TEXT PRIMARY KEY, doc BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE run_meta(
    id TEXT PRIMARY KEY, module TEXT, time_created INTEGER, doc BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX run_meta_time ON run_meta(time_created, id);
";

fn open_err(path: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Verify the file is a dp3-rs store of a supported version, creating the schema in an
/// empty database. Safe when several processes open a new file at once (the check runs in
/// an immediate transaction).
pub fn ensure_schema(conn: &mut Connection, path: &Path) -> Result<()> {
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| open_err(path, format!("not a readable SQLite database ({e})")))?;
    if app_id == APPLICATION_ID {
        return check_version(conn, path);
    }
    if app_id != 0 {
        return Err(open_err(
            path,
            format!("foreign SQLite database (application_id {app_id:#x}, not a dp3 store)"),
        ));
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| open_err(path, format!("cannot lock the database ({e})")))?;
    let app_id: i32 = tx
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| open_err(path, e))?;
    if app_id == APPLICATION_ID {
        drop(tx);
        return check_version(conn, path);
    }
    let foreign: Option<String> = tx
        .query_row(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| open_err(path, e))?;
    if let Some(table) = foreign {
        return Err(open_err(
            path,
            format!("foreign SQLite database (has table '{table}' but no dp3 application id)"),
        ));
    }
    tx.execute_batch(DDL).map_err(|e| open_err(path, e))?;
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .map_err(|e| open_err(path, e))?;
    tx.commit().map_err(|e| open_err(path, e))
}

fn check_version(conn: &mut Connection, path: &Path) -> Result<()> {
    let found: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| open_err(path, e))?;
    let mut version = found;
    if version == 2 {
        // v3: history rows carry the aggregation merge count `n` (NULL = 1).
        conn.execute_batch("ALTER TABLE history ADD COLUMN n INTEGER; PRAGMA user_version = 3;")
            .map_err(|e| open_err(path, format!("cannot migrate the store to version 3 ({e})")))?;
        version = 3;
    }
    if version == 3 {
        // v4: `t2` in the history index (snapshot runs read only the rows that can count).
        conn.execute_batch(
            "BEGIN IMMEDIATE; DROP INDEX IF EXISTS history_key; \
             CREATE INDEX history_key ON history(entity, attr, t2); PRAGMA user_version = 4; COMMIT;",
        )
        .map_err(|e| open_err(path, format!("cannot migrate the store to version 4 ({e})")))?;
        version = 4;
    }
    if version == 4 {
        migrate_to_5(conn)
            .map_err(|e| open_err(path, format!("cannot migrate the store to version 5 ({e})")))?;
        version = 5;
    }
    if version != found {
        tracing::info!(
            path = %path.display(),
            from = found,
            to = version,
            "store migrated (older dp3-rs builds cannot open it any more)"
        );
    }
    if version != SCHEMA_VERSION {
        return Err(open_err(
            path,
            format!(
                "store schema version {version} is not supported by this build (expects \
                 {SCHEMA_VERSION})"
            ),
        ));
    }
    // A quick structural check catches truncated or partly overwritten files early.
    conn.query_row("SELECT count(*) FROM entity LIMIT 1", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| open_err(path, format!("database is damaged ({e})")))?;
    Ok(())
}

/// v5: the `entity` table is keyed by `id` (a rowid table) with a unique `(etype, ekey)`
/// index. The version is re-read under the write lock, so processes opening the same v4
/// file at once migrate it once.
fn migrate_to_5(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 4 {
        tx.execute_batch(
            "CREATE TABLE entity_v5(
                 id INTEGER PRIMARY KEY, etype INTEGER NOT NULL, ekey BLOB NOT NULL,
                 hash INTEGER, time_created INTEGER, revision INTEGER NOT NULL,
                 ttl BLOB, min_t2s BLOB);
             INSERT INTO entity_v5(id, etype, ekey, hash, time_created, revision, ttl, min_t2s)
                 SELECT id, etype, ekey, hash, time_created, revision, ttl, min_t2s FROM entity;
             DROP TABLE entity;
             ALTER TABLE entity_v5 RENAME TO entity;
             CREATE UNIQUE INDEX entity_key ON entity(etype, ekey);
             PRAGMA user_version = 5;",
        )?;
    }
    tx.commit()
}
