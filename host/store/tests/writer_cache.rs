//! The SQLite writer remembers the entity rows it wrote. These tests change the rows behind
//! its back (another store on the same file, history maintenance, TTL expiry, a failed
//! batch) and check that the next batch builds on the stored row, not on a stale copy.

use bson::Bson;
use chrono::{DateTime, TimeZone, Utc};
use dp3_model::Eid;
use dp3_model::HistoryItem;
use dp3_model::aggregate::AggregatedItem;
use dp3_store::sqlite::SqliteStore;
use dp3_store::{EntityWrite, Store, WriteBatch, WriteOp};

fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("time")
        + chrono::Duration::minutes(minute)
}

fn push(eid: &Eid, minute: i64) -> WriteBatch {
    let mut w = EntityWrite::new("ip", eid.clone());
    w.history.push((
        "h".into(),
        HistoryItem {
            t1: at(minute),
            t2: at(minute + 1),
            v: Bson::Int64(minute),
            c: None,
        },
    ));
    WriteBatch {
        ops: vec![WriteOp::Entity(w)],
        ..Default::default()
    }
}

fn ttl(eid: &Eid, name: &str, minute: i64) -> WriteBatch {
    let mut w = EntityWrite::new("ip", eid.clone());
    w.ttl.push((name.into(), at(minute)));
    WriteBatch {
        ops: vec![WriteOp::Entity(w)],
        ..Default::default()
    }
}

fn revision(store: &dyn Store, eid: &Eid) -> i64 {
    store
        .get_master("ip", eid)
        .expect("get")
        .expect("exists")
        .get("#revision")
        .and_then(|r| r.as_i64().or_else(|| r.as_i32().map(i64::from)))
        .expect("#revision")
}

/// A store file in a fresh temporary directory (removed when the guard drops).
fn temp_store_path() -> (std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    (dir.path().join("store.sqlite"), dir)
}

/// A store in a fresh temporary directory holding one pushed item of `eid` (the directory
/// goes when the guard drops, after the store).
fn store_with_one_item(eid: &Eid) -> (tempfile::TempDir, SqliteStore) {
    let (path, dir) = temp_store_path();
    let store = SqliteStore::open(&path).expect("open");
    store.apply(&push(eid, 0)).expect("push");
    (dir, store)
}

#[test]
fn writes_by_another_store_on_the_same_file_are_seen() {
    let (path, _dir) = temp_store_path();
    let a = SqliteStore::open(&path).expect("open a");
    let b = SqliteStore::open(&path).expect("open b");
    let eid = Eid::Int(1);
    a.apply(&push(&eid, 0)).expect("a");
    b.apply(&push(&eid, 1)).expect("b");
    b.apply(&ttl(&eid, "base", 100)).expect("b ttl");
    a.apply(&push(&eid, 2)).expect("a again");
    assert_eq!(revision(&a, &eid), 4, "every write counted once");
    let master = a.get_master("ip", &eid).expect("get").expect("exists");
    assert!(
        master
            .get_document("#ttl")
            .is_ok_and(|t| t.contains_key("base")),
        "the token written by the other store survives: {master}"
    );
    assert_eq!(master.get_array("h").expect("history").len(), 3);
}

#[test]
fn maintenance_writes_are_seen_by_the_next_batch() {
    let eid = Eid::Int(7);
    let (_dir, store) = store_with_one_item(&eid);
    store.apply(&ttl(&eid, "old", 5)).expect("ttl");
    let rev = revision(&store, &eid);

    // Aggregation replaces the history and bumps the revision.
    let merged = vec![(
        "h".to_owned(),
        vec![AggregatedItem::single(HistoryItem {
            t1: at(0),
            t2: at(1),
            v: Bson::Int64(0),
            c: None,
        })],
    )];
    assert!(
        store
            .replace_histories("ip", &eid, rev, &merged)
            .expect("replace")
    );
    store.apply(&push(&eid, 3)).expect("push after replace");
    assert_eq!(revision(&store, &eid), rev + 2);

    // TTL expiry removes the expired token.
    store.apply(&ttl(&eid, "live", 100)).expect("live token");
    store.expire_ttl_tokens("ip", at(50), None).expect("expire");
    store.apply(&push(&eid, 4)).expect("push after expiry");
    let master = store.get_master("ip", &eid).expect("get").expect("exists");
    let tokens = master.get_document("#ttl").expect("#ttl");
    assert!(
        !tokens.contains_key("old"),
        "expired token came back: {master}"
    );
    assert!(tokens.contains_key("live"));
}

#[test]
fn a_failed_batch_leaves_no_trace_in_the_next_one() {
    let eid = Eid::Int(3);
    let (_dir, store) = store_with_one_item(&eid);
    let before = revision(&store, &eid);
    // The entity write succeeds inside the transaction, then the meta write fails (a key
    // with a NUL byte cannot be encoded as BSON), so the whole batch is rolled back.
    let mut failing = push(&eid, 1);
    let mut bad = bson::Document::new();
    bad.insert("a\0b", 1);
    failing.meta.push(("k".into(), bad));
    assert!(store.apply(&failing).is_err(), "the batch must fail");
    store.apply(&push(&eid, 2)).expect("push after failure");
    assert_eq!(
        revision(&store, &eid),
        before + 1,
        "the failed batch counted"
    );
    let master = store.get_master("ip", &eid).expect("get").expect("exists");
    assert_eq!(master.get_array("h").expect("history").len(), 2);
}
