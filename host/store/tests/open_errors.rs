//! Opening foreign, corrupted or incompatible files fails with `StoreError::Open` naming the
//! file; reopening and concurrent opens of a real store work.

use std::io::Write;

use bson::Bson;
use chrono::Utc;
use dp3_model::Eid;
use dp3_store::sqlite::SqliteStore;
use dp3_store::{EntityWrite, Store, StoreError, WriteBatch, WriteOp};

fn expect_open_error(path: &std::path::Path, needle: &str) {
    match SqliteStore::open(path) {
        Err(e @ StoreError::Open { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "names the file: {msg}"
            );
            assert!(msg.contains(needle), "'{msg}' should mention '{needle}'");
        }
        Err(other) => panic!("expected Open error, got {other}"),
        Ok(_) => panic!("{} must not open", path.display()),
    }
}

#[test]
fn random_bytes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("garbage.db");
    let mut f = std::fs::File::create(&path).expect("create");
    let mut x = 0x1234_5678_9abc_def0u64;
    let bytes: Vec<u8> = (0..16384)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    f.write_all(&bytes).expect("write");
    drop(f);
    expect_open_error(&path, "not a readable SQLite database");
}

#[test]
fn foreign_sqlite_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other-app.db");
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);")
        .expect("ddl");
    drop(conn);
    expect_open_error(&path, "customers");

    let path = dir.path().join("other-id.db");
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch("PRAGMA application_id = 42; CREATE TABLE t(x);")
        .expect("ddl");
    drop(conn);
    expect_open_error(&path, "application_id");
}

#[test]
fn newer_schema_versions_and_missing_directories_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    drop(SqliteStore::open(&path).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch("PRAGMA user_version = 99;")
        .expect("pragma");
    drop(conn);
    expect_open_error(&path, "schema version 99");
    expect_open_error(&dir.path().join("missing/store.db"), "does not exist");
}

#[test]
fn truncated_store_is_refused_or_reports_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    {
        let s = SqliteStore::open(&path).expect("create");
        s.flush().expect("flush");
    }
    // keep the valid header page, replace the rest with junk
    let mut bytes = std::fs::read(&path).expect("read");
    for b in bytes.iter_mut().skip(100) {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).expect("write");
    let _ = std::fs::remove_file(dir.path().join("store.db-wal"));
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Open { .. })
    ));
}

fn write_plain(store: &SqliteStore, eid: &str, attr: &str, v: i32) {
    let mut w = EntityWrite::new("E", Eid::String(eid.into()));
    w.plain.push((attr.into(), Bson::Int32(v), Utc::now()));
    store
        .apply(&WriteBatch {
            ops: vec![WriteOp::Entity(w)],
            ..Default::default()
        })
        .expect("apply");
}

#[test]
fn two_handles_on_one_file_see_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open(&path).expect("open a");
    let b = SqliteStore::open(&path).expect("open b");
    write_plain(&a, "x", "from_a", 1);
    write_plain(&b, "x", "from_b", 2);
    // names interned by the other handle resolve correctly
    let m = a
        .get_master("E", &Eid::String("x".into()))
        .expect("get")
        .expect("some");
    assert!(m.contains_key("from_a") && m.contains_key("from_b"), "{m}");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let p = path.clone();
            std::thread::spawn(move || {
                let s = SqliteStore::open(&p).expect("open");
                for i in 0..50 {
                    write_plain(&s, &format!("t{t}-{i}"), &format!("attr{}", i % 3), i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    assert_eq!(b.count_master("E").expect("count"), 201);
    drop(a);
    drop(b);
    let again = SqliteStore::open(&path).expect("reopen");
    assert_eq!(again.count_master("E").expect("count"), 201);
}

/// The `CREATE` statement of a table or index.
fn schema_sql(conn: &rusqlite::Connection, name: &str) -> String {
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .unwrap_or_else(|e| panic!("no schema entry '{name}': {e}"))
}

/// A store holding one entity with three history items and a TTL token, written by this
/// build and then turned back into the layout of store version 4 (the `entity` table keyed
/// `(etype, ekey)` WITHOUT ROWID).
fn version_4_store(path: &std::path::Path, eid: &Eid) {
    let s = SqliteStore::open(path).expect("create");
    let mut w = EntityWrite::new("E", eid.clone());
    for i in 0..3 {
        let t1 = Utc::now() - chrono::TimeDelta::minutes(10 - i);
        w.history.push((
            "o".into(),
            dp3_store::HistoryItem {
                t1,
                t2: t1,
                v: Bson::Int64(i),
                c: Some(1.0),
            },
        ));
    }
    w.ttl
        .push(("base".into(), Utc::now() + chrono::TimeDelta::days(1)));
    s.apply(&WriteBatch {
        ops: vec![WriteOp::Entity(w)],
        ..Default::default()
    })
    .expect("write");
    drop(s);
    let conn = rusqlite::Connection::open(path).expect("sqlite");
    conn.execute_batch(
        "CREATE TABLE entity_v4(
             etype INTEGER NOT NULL, ekey BLOB NOT NULL, id INTEGER NOT NULL,
             hash INTEGER, time_created INTEGER, revision INTEGER NOT NULL,
             ttl BLOB, min_t2s BLOB,
             PRIMARY KEY(etype, ekey)) WITHOUT ROWID;
         INSERT INTO entity_v4 SELECT etype, ekey, id, hash, time_created, revision, ttl, min_t2s
             FROM entity;
         DROP TABLE entity;
         ALTER TABLE entity_v4 RENAME TO entity;
         PRAGMA user_version = 4;",
    )
    .expect("downgrade to version 4");
}

/// Open the old store at `path`: it is migrated to the current version, keeps the entity
/// of [`version_4_store`] (history, TTL, revision) and takes new writes to it.
fn assert_migrated(path: &std::path::Path, eid: &Eid) -> rusqlite::Connection {
    let s = SqliteStore::open(path).expect("migrates");
    let master = s.get_master("E", eid).expect("get").expect("some");
    assert_eq!(master.get_array("o").expect("history").len(), 3);
    assert_eq!(master.get_i32("#revision").expect("revision"), 1);
    assert!(
        master
            .get_document("#ttl")
            .expect("ttl")
            .contains_key("base")
    );
    let mut w = EntityWrite::new("E", eid.clone());
    w.plain.push(("p".into(), Bson::Int32(7), Utc::now()));
    s.apply(&WriteBatch {
        ops: vec![WriteOp::Entity(w)],
        ..Default::default()
    })
    .expect("write after migration");
    let master = s.get_master("E", eid).expect("get").expect("some");
    assert_eq!(master.get_i32("#revision").expect("revision"), 2);
    assert_eq!(master.get_array("o").expect("history").len(), 3);
    assert_eq!(s.count_master("E").expect("count"), 1);
    drop(s);
    let conn = rusqlite::Connection::open(path).expect("sqlite");
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, dp3_store::sqlite::SCHEMA_VERSION);
    let sql = schema_sql(&conn, "entity_key");
    assert!(sql.contains("UNIQUE"), "{sql}");
    conn
}

#[test]
fn version_4_stores_are_migrated_with_their_entities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let eid = Eid::String("x".into());
    version_4_store(&path, &eid);
    let conn = assert_migrated(&path, &eid);
    let table = schema_sql(&conn, "entity");
    assert!(!table.contains("WITHOUT ROWID"), "{table}");
}

#[test]
fn version_3_stores_are_migrated_with_their_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let eid = Eid::String("x".into());
    version_4_store(&path, &eid);
    // Version 3 had the history index without `t2`.
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch(
        "DROP INDEX history_key; CREATE INDEX history_key ON history(entity, attr); \
         PRAGMA user_version = 3;",
    )
    .expect("downgrade");
    drop(conn);
    let conn = assert_migrated(&path, &eid);
    let sql = schema_sql(&conn, "history_key");
    assert!(sql.contains("t2"), "{sql}");
}
