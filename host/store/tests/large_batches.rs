//! Batches larger than one multi-row `INSERT` (64 rows): every history item and raw datapoint
//! is stored once, in order, with its values, also when a delete in the middle of the batch
//! has to see the history inserted before it.

use bson::Bson;
use chrono::{DateTime, TimeZone, Utc};
use dp3_model::{DataPoint, Eid, HistoryItem};
use dp3_store::sqlite::SqliteStore;
use dp3_store::{Creation, EntityWrite, RawQuery, Store, WriteBatch, WriteOp};

fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("time")
        + chrono::Duration::minutes(minute)
}

fn write(eid: &Eid, from: i64, n: i64, create: bool) -> WriteOp {
    let mut w = EntityWrite::new("ip", eid.clone());
    if create {
        w.create = Some(Creation {
            hash: eid.hash("ip"),
            time_created: at(0),
        });
    }
    for i in from..from + n {
        w.history.push((
            "h".into(),
            HistoryItem {
                t1: at(i),
                t2: at(i + 1),
                v: Bson::Int64(i),
                c: (i % 2 == 0).then_some(0.5),
            },
        ));
    }
    WriteOp::Entity(w)
}

fn raw(eid: &Eid, i: i64) -> DataPoint {
    DataPoint {
        etype: "ip".into(),
        eid: eid.clone(),
        attr: "h".into(),
        src: (i % 3 == 0).then(|| format!("src{i}")),
        v: Bson::Int64(i),
        c: 0.5,
        t1: Some(at(i)),
        t2: (i % 5 != 0).then(|| at(i + 1)),
    }
}

fn history_values(store: &SqliteStore, eid: &Eid) -> Vec<i64> {
    let m = store.get_master("ip", eid).expect("get").expect("exists");
    m.get_array("h")
        .expect("history")
        .iter()
        .map(|item| {
            let d = item.as_document().expect("item");
            match d.get("v") {
                Some(Bson::Int64(v)) => *v,
                Some(Bson::Int32(v)) => i64::from(*v),
                other => panic!("unexpected value {other:?}"),
            }
        })
        .collect()
}

#[test]
fn history_and_raw_rows_of_large_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("dp3.sqlite")).expect("open");
    let (a, b) = (Eid::String("a".into()), Eid::String("b".into()));
    let mut batch = WriteBatch {
        ops: vec![write(&a, 0, 150, true), write(&b, 0, 70, true)],
        raw: (0..130).map(|i| raw(&a, i)).collect(),
        ..Default::default()
    };
    // `b` is deleted after its 70 items were queued, then re-created with 3 new ones.
    batch.ops.push(WriteOp::Delete {
        etype: "ip".into(),
        eid: b.clone(),
    });
    batch.ops.push(write(&b, 1000, 3, true));
    store.apply(&batch).expect("apply");

    let mut got = history_values(&store, &a);
    got.sort_unstable();
    assert_eq!(got, (0..150).collect::<Vec<_>>());
    let mut got_b = history_values(&store, &b);
    got_b.sort_unstable();
    assert_eq!(
        got_b,
        vec![1000, 1001, 1002],
        "history before the delete is gone"
    );

    // No orphaned rows: the delete also removed the items that were still queued.
    let conn = rusqlite::Connection::open(dir.path().join("dp3.sqlite")).expect("sqlite");
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM history", [], |r| r.get(0))
        .expect("count");
    assert_eq!(stored, 153);

    let rows = store
        .raw_get(
            "ip",
            &RawQuery {
                eid: Some(a.clone()),
                ..Default::default()
            },
        )
        .expect("raw");
    assert_eq!(rows.len(), 130);
    let with_src = rows.iter().filter(|d| d.get_str("src").is_ok()).count();
    assert_eq!(with_src, (0..130).filter(|i| i % 3 == 0).count());
}
