//! The backend-independent conformance suite: every [`Store`] implementation must pass it.
//!
//! Use from a backend's tests: `dp3_store::conformance::run_all(|| Box::new(open_fresh()))`.
//! Each case gets a fresh, empty store from the factory. All cases run; failures are
//! collected and reported together with the case names.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bson::{Bson, Document, doc};
use chrono::{DateTime, Duration, TimeZone, Utc};
use dp3_model::aggregate::AggregatedItem;
use dp3_model::{DataPoint, Eid, HistoryItem, value};

use crate::Store;
use crate::error::StoreError;
use crate::filter::replace_magic_strings;
use crate::types::*;

/// One named case.
pub type Case = (&'static str, fn(&dyn Store));

/// Every case of the suite.
pub const CASES: &[Case] = &[
    ("master_record_shape", master_record_shape),
    (
        "plain_last_write_wins_and_revision",
        plain_last_write_wins_and_revision,
    ),
    ("batch_is_atomic", batch_is_atomic),
    ("ttl_tokens", ttl_tokens),
    ("scan_master", scan_master),
    ("records_match_master_records", records_match_master_records),
    ("replace_histories", replace_histories),
    ("delete_old_history", delete_old_history),
    ("delete_cascade", delete_cascade),
    ("raw_log", raw_log),
    ("link_cache", link_cache),
    ("snapshots_latest_and_history", snapshots_latest_and_history),
    (
        "snapshot_filters_sort_distinct",
        snapshot_filters_sort_distinct,
    ),
    ("binary_bucket_ids", binary_bucket_ids),
    ("metadata", metadata),
    ("run_metadata", run_metadata),
];

/// Run every case against fresh stores from `make_store`; panics listing the failed cases.
pub fn run_all(make_store: impl Fn() -> Box<dyn Store>) {
    let mut failed = Vec::new();
    for (name, case) in CASES {
        let store = make_store();
        match catch_unwind(AssertUnwindSafe(|| case(store.as_ref()))) {
            Ok(()) => println!("conformance {name} ... ok"),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                println!("conformance {name} ... FAILED: {msg}");
                failed.push(name);
            }
        }
    }
    assert!(failed.is_empty(), "conformance cases failed: {failed:?}");
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

fn at(minutes: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(minutes)
}

fn s(e: &str) -> Eid {
    Eid::String(e.into())
}

fn obs(t1: i64, t2: i64, v: impl Into<Bson>, c: f64) -> HistoryItem {
    HistoryItem {
        t1: at(t1),
        t2: at(t2),
        v: v.into(),
        c: Some(c),
    }
}

fn create(etype: &str, eid: Eid) -> EntityWrite {
    let mut w = EntityWrite::new(etype, eid.clone());
    w.create = Some(Creation {
        hash: eid.hash(etype),
        time_created: t0(),
    });
    w
}

fn apply(store: &dyn Store, ops: Vec<WriteOp>) -> ApplyStats {
    store
        .apply(&WriteBatch {
            ops,
            ..Default::default()
        })
        .expect("apply")
}

fn master(store: &dyn Store, etype: &str, eid: &Eid) -> Document {
    store
        .get_master(etype, eid)
        .expect("get_master")
        .unwrap_or_else(|| panic!("master record {etype}/{eid} missing"))
}

fn datapoint(etype: &str, eid: Eid, attr: &str, v: impl Into<Bson>, t1: Option<i64>) -> DataPoint {
    DataPoint {
        etype: etype.into(),
        eid,
        attr: attr.into(),
        src: Some("test".into()),
        v: v.into(),
        c: 1.0,
        t1: t1.map(at),
        t2: t1.map(|t| at(t + 1)),
    }
}

fn master_record_shape(store: &dyn Store) {
    let e = s("bus-1");
    let mut w1 = create("bus", e.clone());
    w1.plain
        .push(("label".into(), Bson::String("night".into()), at(1)));
    w1.history.push(("speed".into(), obs(10, 12, 48.5, 0.7)));
    w1.history.push(("speed".into(), obs(2, 3, 40.0, 1.0)));
    w1.ttl.push(("base".into(), at(30)));
    let mut w2 = EntityWrite::new("bus", e.clone());
    w2.history.push(("speed".into(), obs(5, 6, 41.0, 0.5)));
    w2.history.push((
        "load".into(),
        HistoryItem {
            t1: at(0),
            t2: at(10),
            v: Bson::Document(doc! {"riders": [1, 2]}),
            c: None,
        },
    ));
    let stats = apply(store, vec![WriteOp::Entity(w1), WriteOp::Entity(w2)]);
    assert_eq!(stats.entities_created, 1, "stats {stats:?}");
    assert_eq!(stats.history_items, 4, "stats {stats:?}");
    assert!(store.exists("bus", &e).expect("exists"));
    assert!(!store.exists("bus", &s("bus-2")).expect("exists"));
    assert!(!store.exists("nobody", &e).expect("exists of unknown type"));
    assert_eq!(store.get_master("bus", &s("bus-2")).expect("get"), None);
    assert_eq!(store.count_master("bus").expect("count"), 1);
    let m = master(store, "bus", &e);
    assert_eq!(m.get("_id"), Some(&Bson::String("bus-1".into())));
    assert_eq!(
        m.get("#hash").and_then(value::as_int),
        Some(i64::from(e.hash("bus")))
    );
    assert_eq!(m.get("#time_created"), Some(&value::time(t0())));
    assert_eq!(m.get("#revision").and_then(value::as_int), Some(1));
    let min = m.get_document("#min_t2s").expect("#min_t2s");
    assert_eq!(min.get("speed"), Some(&value::time(at(3))));
    assert_eq!(min.get("load"), Some(&value::time(at(10))));
    assert_eq!(
        m.get_document("#ttl").expect("#ttl"),
        &doc! {"base": value::time(at(30))}
    );
    assert_eq!(
        m.get_document("label").expect("label"),
        &doc! {"v": "night", "ts_last_update": value::time(at(1))}
    );
    // arrival order, not t1 order; observation items carry c
    let speed = m.get_array("speed").expect("speed");
    let vs: Vec<&Bson> = speed
        .iter()
        .map(|i| i.as_document().and_then(|d| d.get("v")).expect("v"))
        .collect();
    assert_eq!(
        vs,
        [
            &Bson::Double(48.5),
            &Bson::Double(40.0),
            &Bson::Double(41.0)
        ]
    );
    assert_eq!(
        speed[0],
        Bson::Document(
            doc! {"t1": value::time(at(10)), "t2": value::time(at(12)), "v": 48.5, "c": 0.7}
        )
    );
    // timeseries items have no c
    assert_eq!(
        m.get_array("load").expect("load")[0],
        Bson::Document(
            doc! {"t1": value::time(at(0)), "t2": value::time(at(10)), "v": {"riders": [1, 2]}}
        )
    );
}

fn plain_last_write_wins_and_revision(store: &dyn Store) {
    let e = Eid::Int(7);
    let mut w1 = create("A", e.clone());
    w1.plain.push(("x".into(), Bson::Int32(1), at(1)));
    let mut w2 = EntityWrite::new("A", e.clone());
    w2.plain.push(("x".into(), Bson::Int32(2), at(2)));
    apply(store, vec![WriteOp::Entity(w1), WriteOp::Entity(w2)]);
    let rev1 = master(store, "A", &e)
        .get("#revision")
        .and_then(value::as_int);
    let mut w3 = EntityWrite::new("A", e.clone());
    w3.plain.push(("x".into(), Bson::Int32(3), at(3)));
    apply(store, vec![WriteOp::Entity(w3)]);
    let m = master(store, "A", &e);
    assert_eq!(m.get("_id"), Some(&Bson::Int32(7)));
    assert_eq!(
        m.get_document("x").expect("x").get("v"),
        Some(&Bson::Int32(3))
    );
    let rev2 = m.get("#revision").and_then(value::as_int);
    assert!(rev2 > rev1, "revision must grow: {rev1:?} -> {rev2:?}");
    // a TTL-only write creates a record without #hash/#time_created
    let mut w4 = EntityWrite::new("A", Eid::Int(8));
    w4.ttl.push(("custom".into(), at(5)));
    apply(store, vec![WriteOp::Entity(w4)]);
    let m = master(store, "A", &Eid::Int(8));
    assert!(
        !m.contains_key("#hash") && !m.contains_key("#time_created"),
        "{m}"
    );
}

fn batch_is_atomic(store: &dyn Store) {
    let mut ok = create("A", s("a"));
    ok.plain.push(("x".into(), Bson::Int32(1), at(0)));
    // A key with a NUL byte cannot be encoded as BSON: the whole batch must fail.
    let mut bad = create("A", s("b"));
    bad.plain
        .push(("y".into(), Bson::Document(doc! {"bad\0key": 1}), at(0)));
    let r = store.apply(&WriteBatch {
        ops: vec![WriteOp::Entity(ok), WriteOp::Entity(bad)],
        raw: vec![datapoint("A", s("a"), "x", 1, None)],
        meta: vec![("watermark".into(), doc! {"n": 1})],
    });
    assert!(r.is_err(), "unencodable value must fail the batch");
    assert!(
        !store.exists("A", &s("a")).expect("exists"),
        "partial batch visible"
    );
    assert_eq!(store.get_meta("watermark").expect("meta"), None);
    assert!(
        store
            .raw_get("A", &RawQuery::default())
            .expect("raw")
            .is_empty()
    );
    assert!(store.apply(&WriteBatch::default()).is_ok());
}

fn ttl_tokens(store: &dyn Store) {
    let mut ops = Vec::new();
    for (name, base, data) in [("a", 10, 20), ("b", 10, 100), ("c", 1, 2)] {
        let mut w = create("T", s(name));
        w.ttl.push(("base".into(), at(base)));
        w.ttl.push(("data".into(), at(data)));
        ops.push(WriteOp::Entity(w));
    }
    // tokens only grow
    let mut lower = EntityWrite::new("T", s("a"));
    lower.ttl.push(("data".into(), at(5)));
    ops.push(WriteOp::Entity(lower));
    // no #hash: never in a partition
    let mut nohash = EntityWrite::new("T", s("d"));
    nohash.ttl.push(("base".into(), at(0)));
    ops.push(WriteOp::Entity(nohash));
    apply(store, ops);
    assert_eq!(
        master(store, "T", &s("a"))
            .get_document("#ttl")
            .expect("ttl"),
        &doc! {"base": value::time(at(10)), "data": value::time(at(20))}
    );
    let mut expired = store.expire_ttl_tokens("T", at(15), None).expect("expire");
    expired.sort();
    assert_eq!(expired, vec![s("c"), s("d")]);
    // partially expired tokens were removed, others kept
    assert_eq!(
        master(store, "T", &s("a"))
            .get_document("#ttl")
            .expect("ttl"),
        &doc! {"data": value::time(at(20))}
    );
    // exactly-now is not expired (strict <)
    assert!(
        store
            .expire_ttl_tokens("T", at(20), None)
            .expect("expire")
            .contains(&s("c"))
    );
    assert!(
        !store
            .expire_ttl_tokens("T", at(20), None)
            .expect("expire")
            .contains(&s("a"))
    );
    // partitions
    let all: Vec<Eid> = (0..3)
        .flat_map(|i| {
            store
                .expire_ttl_tokens("T", at(1000), Some((i, 3)))
                .expect("expire")
        })
        .collect();
    assert_eq!(
        all.len(),
        3,
        "d lacks #hash and is in no partition: {all:?}"
    );
    assert!(matches!(
        store.expire_ttl_tokens("T", at(0), Some((0, 0))),
        Err(StoreError::InvalidQuery(_))
    ));
}

fn scan_master(store: &dyn Store) {
    let mut ops = Vec::new();
    for i in [5i64, -3, 100, 0, 42] {
        let mut w = create("N", Eid::Int(i));
        w.plain.push(("p".into(), Bson::Int64(i), at(0)));
        w.plain.push(("q".into(), Bson::Int64(-i), at(0)));
        ops.push(WriteOp::Entity(w));
    }
    apply(store, ops);
    let ids = |docs: &[Document]| -> Vec<Bson> {
        docs.iter()
            .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
            .collect()
    };
    let all = store
        .scan_master(
            "N",
            &MasterScan {
                limit: 0,
                ..Default::default()
            },
        )
        .expect("scan");
    assert_eq!(
        ids(&all),
        [-3, 0, 5, 42, 100].map(Bson::Int32).to_vec(),
        "ordered by eid"
    );
    let page = store
        .scan_master(
            "N",
            &MasterScan {
                after: Some(Eid::Int(0)),
                limit: 2,
                ..Default::default()
            },
        )
        .expect("scan");
    assert_eq!(ids(&page), vec![Bson::Int32(5), Bson::Int32(42)]);
    let projected = store
        .scan_master(
            "N",
            &MasterScan {
                limit: 1,
                projection: Some(vec!["q".into()]),
                ..Default::default()
            },
        )
        .expect("scan");
    assert!(projected[0].contains_key("q") && !projected[0].contains_key("p"));
    assert!(projected[0].contains_key("#hash") && projected[0].contains_key("_id"));
    let mut total = 0;
    for i in 0..4 {
        let part = store
            .scan_master(
                "N",
                &MasterScan {
                    partition: Some((i, 4)),
                    ..Default::default()
                },
            )
            .expect("scan");
        for d in &part {
            let h = d.get("#hash").and_then(value::as_int).expect("#hash");
            assert_eq!(h % 4, i64::from(i));
        }
        total += part.len();
    }
    assert_eq!(total, 5);
}

/// The snapshooter's read path ([`Store::get_records`], [`Store::scan_eids`]) agrees with
/// master records and [`Store::scan_master`].
fn records_match_master_records(store: &dyn Store) {
    let mut ops = Vec::new();
    for i in [5i64, -3, 100, 0, 42] {
        let mut w = create("R", Eid::Int(i));
        w.plain.push(("p".into(), Bson::Int64(i), at(0)));
        w.plain
            .push(("q".into(), Bson::String(format!("q{i}")), at(0)));
        w.history.push(("o".into(), obs(0, 1, i, 0.5)));
        w.history
            .push(("o".into(), obs(2, 3, doc! {"eid": 1}, 0.75)));
        w.history.push(("a".into(), obs(1, 2, 1.5, 1.0)));
        if i == 42 {
            // Arrival order differs from `t2` order: readers keep arrival order.
            w.history.push(("o".into(), obs(6, 9, "late", 1.0)));
            w.history.push(("o".into(), obs(1, 8, "early", 1.0)));
        }
        if i > 0 {
            w.history.push((
                "ts".into(),
                HistoryItem {
                    t1: at(0),
                    t2: at(5),
                    v: Bson::Document(doc! {"x": [1, 2]}),
                    c: None,
                },
            ));
        }
        ops.push(WriteOp::Entity(w));
    }
    ops.push(WriteOp::Entity(create("R", Eid::Int(7))));
    apply(store, ops);
    let sorted = |mut r: StoredRecord| {
        r.plain.sort_by(|a, b| a.0.cmp(&b.0));
        r.history.sort_by(|a, b| a.0.cmp(&b.0));
        r
    };
    let eids: Vec<Eid> = [42i64, 9, -3, 7, 5, 0, 100].map(Eid::Int).to_vec();
    let projections: [Option<Vec<String>>; 4] = [
        None,
        Some(vec![]),
        Some(vec!["o".into(), "q".into(), "nope".into()]),
        Some(vec!["ts".into()]),
    ];
    let window = |t2_from: i64, t1_until: i64| HistoryWindow {
        t2_from: at(t2_from),
        t1_until: at(t1_until),
    };
    let windows = [
        Vec::new(),
        vec![("o".to_string(), window(3, 6))],
        vec![
            ("o".to_string(), window(0, 1)),
            ("a".to_string(), window(3, 9)),
        ],
        // A window on a plain attribute: its plain value is not read.
        vec![
            ("o".to_string(), window(0, 9)),
            ("p".to_string(), window(0, 9)),
        ],
    ];
    for projection in &projections {
        for windows in &windows {
            let read = RecordRead {
                attrs: projection.clone(),
                windows: windows.clone(),
            };
            let got = store.get_records("R", &eids, &read).expect("records");
            assert_eq!(got.len(), eids.len());
            for (eid, record) in eids.iter().zip(got) {
                let master = match projection {
                    None => store.get_master("R", eid),
                    Some(p) => store.get_master_projected("R", eid, p),
                }
                .expect("master");
                let want = master.as_ref().map(|m| {
                    let mut r = StoredRecord::from_master(m);
                    read.apply_windows(&mut r);
                    r
                });
                assert_eq!(record.map(sorted), want.map(sorted), "{eid} {read:?}");
            }
        }
    }
    // Boundaries are inclusive and order is arrival order, not `t2` order.
    let read = RecordRead {
        attrs: Some(vec!["o".into()]),
        windows: vec![("o".into(), window(3, 6))],
    };
    let got = store
        .get_records("R", &[Eid::Int(42)], &read)
        .expect("records");
    let items = &got[0].as_ref().expect("exists").history[0].1;
    let values: Vec<&Bson> = items.iter().map(|i| &i.v).collect();
    assert_eq!(
        values,
        [
            &Bson::Document(doc! {"eid": 1}),
            &Bson::from("late"),
            &Bson::from("early")
        ]
    );
    assert_eq!(
        store
            .get_records("nothing", &eids, &RecordRead::default())
            .expect("records"),
        vec![None; eids.len()]
    );
    for scan in [
        MasterScan::default(),
        MasterScan {
            after: Some(Eid::Int(0)),
            limit: 2,
            ..Default::default()
        },
        MasterScan {
            partition: Some((1, 2)),
            projection: Some(vec!["p".into()]),
            ..Default::default()
        },
    ] {
        let want: Vec<Eid> = store
            .scan_master("R", &scan)
            .expect("scan")
            .iter()
            .filter_map(|d| d.get("_id").and_then(Eid::from_bson))
            .collect();
        assert_eq!(store.scan_eids("R", &scan).expect("scan eids"), want);
    }
    assert!(
        store
            .scan_eids("nothing", &MasterScan::default())
            .expect("scan")
            .is_empty()
    );
}

fn replace_histories(store: &dyn Store) {
    let e = s("x");
    let mut w = create("H", e.clone());
    w.history.push(("o".into(), obs(0, 1, 1, 1.0)));
    w.history.push(("o".into(), obs(1, 2, 1, 1.0)));
    w.history.push(("k".into(), obs(0, 1, 9, 1.0)));
    apply(store, vec![WriteOp::Entity(w)]);
    let rev = master(store, "H", &e)
        .get("#revision")
        .and_then(value::as_int)
        .expect("rev");
    let merged = vec![
        (
            "o".to_string(),
            vec![AggregatedItem {
                item: obs(0, 2, 1, 1.0),
                count: 2,
            }],
        ),
        ("k".to_string(), vec![]),
    ];
    assert!(
        !store
            .replace_histories("H", &e, rev + 1, &merged)
            .expect("replace")
    );
    assert!(
        !store
            .replace_histories("H", &s("nope"), rev, &merged)
            .expect("replace")
    );
    assert!(
        store
            .replace_histories("H", &e, rev, &merged)
            .expect("replace")
    );
    let m = master(store, "H", &e);
    assert_eq!(m.get_array("o").expect("o").len(), 1);
    // the merge count is kept for the next aggregation run
    let merged_item = AggregatedItem::from_bson(&m.get_array("o").expect("o")[0]).expect("item");
    assert_eq!(merged_item.count, 2, "{m}");
    assert!(!m.contains_key("k"), "emptied history removed: {m}");
    let min = m.get_document("#min_t2s").expect("min");
    assert_eq!(min.get("o"), Some(&value::time(at(2))));
    assert!(!min.contains_key("k"));
    assert_eq!(m.get("#revision").and_then(value::as_int), Some(rev + 1));
    // later pushes still append after the replaced items
    let mut w = EntityWrite::new("H", e.clone());
    w.history.push(("o".into(), obs(9, 9, 2, 1.0)));
    apply(store, vec![WriteOp::Entity(w)]);
    let o = master(store, "H", &e);
    let o = o.get_array("o").expect("o");
    assert_eq!(o.len(), 2);
    assert_eq!(
        o[1].as_document().and_then(|d| d.get("v")),
        Some(&Bson::Int32(2))
    );
}

fn delete_old_history(store: &dyn Store) {
    let mut a = create("H", s("a"));
    a.history.push(("o".into(), obs(0, 10, 1, 1.0)));
    a.history.push(("o".into(), obs(0, 30, 2, 1.0)));
    let mut b = create("H", s("b"));
    b.history.push(("o".into(), obs(0, 5, 3, 1.0)));
    let mut c = create("H", s("c"));
    c.history.push(("o".into(), obs(0, 50, 4, 1.0)));
    apply(
        store,
        vec![WriteOp::Entity(a), WriteOp::Entity(b), WriteOp::Entity(c)],
    );
    let changed = store.delete_old_history("H", "o", at(20)).expect("cleanup");
    assert_eq!(changed, 2);
    let a = master(store, "H", &s("a"));
    assert_eq!(a.get_array("o").expect("o").len(), 1);
    assert_eq!(
        a.get_document("#min_t2s").expect("min").get("o"),
        Some(&value::time(at(30)))
    );
    let b = master(store, "H", &s("b"));
    assert!(!b.contains_key("o"));
    assert!(
        b.get_document("#min_t2s")
            .map_or(true, |m| !m.contains_key("o"))
    );
    assert_eq!(
        master(store, "H", &s("c")).get_array("o").expect("o").len(),
        1
    );
    // t2 == older_than is kept
    assert_eq!(
        store.delete_old_history("H", "o", at(30)).expect("cleanup"),
        0
    );
}

fn delete_cascade(store: &dyn Store) {
    let b1 = s("b1");
    let b2 = s("b2");
    let link = |e: &Eid| Bson::Document(doc! {"eid": e.to_bson()});
    let mut a = create("A", s("a"));
    a.history
        .push(("obs_link".into(), obs(0, 1, link(&b1), 1.0)));
    a.history
        .push(("obs_link".into(), obs(0, 50, link(&b2), 1.0)));
    a.plain.push(("one".into(), link(&b1), at(0)));
    a.plain.push((
        "many".into(),
        Bson::Array(vec![link(&b1), link(&b2)]),
        at(0),
    ));
    a.plain.push(("other".into(), link(&b2), at(0)));
    let mut wb1 = create("B", b1.clone());
    wb1.plain.push(("x".into(), Bson::Int32(1), at(0)));
    let from = LinkKey::new("A", s("a"));
    let far = Utc::now() + Duration::days(365);
    let ops = vec![
        WriteOp::Entity(a),
        WriteOp::Entity(wb1),
        WriteOp::Entity(create("B", b2.clone())),
        WriteOp::Link(LinkOp::Upsert {
            from: from.clone(),
            to: LinkKey::new("B", b1.clone()),
            using_attr: "A#obs_link".into(),
            ttl: far,
        }),
        WriteOp::Link(LinkOp::Replace {
            from: from.clone(),
            using_attr: "A#one".into(),
            targets: vec![LinkKey::new("B", b1.clone())],
        }),
        WriteOp::Link(LinkOp::Replace {
            from: from.clone(),
            using_attr: "A#many".into(),
            targets: vec![LinkKey::new("B", b1.clone()), LinkKey::new("B", b2.clone())],
        }),
    ];
    store
        .apply(&WriteBatch {
            ops,
            raw: vec![datapoint("B", b1.clone(), "x", 1, None)],
            meta: vec![],
        })
        .expect("apply");
    store
        .save_snapshots("B", &[(b1.clone(), doc! {"eid": "b1", "x": 1})], at(5))
        .expect("snapshots");
    let stats = apply(
        store,
        vec![
            WriteOp::Delete {
                etype: "B".into(),
                eid: b1.clone(),
            },
            WriteOp::Delete {
                etype: "B".into(),
                eid: s("never-existed"),
            },
        ],
    );
    assert_eq!(stats.entities_deleted, 1);
    assert!(!store.exists("B", &b1).expect("exists"));
    assert!(store.exists("B", &b2).expect("exists"));
    assert_eq!(store.latest_snapshot("B", &b1).expect("snap"), None);
    assert!(
        store
            .snapshot_history("B", &b1, &HistoryQuery::default())
            .expect("hist")
            .is_empty()
    );
    assert_eq!(
        store.raw_get("B", &RawQuery::default()).expect("raw").len(),
        1,
        "raw kept"
    );
    let a = master(store, "A", &s("a"));
    let obs_link = a.get_array("obs_link").expect("obs_link");
    assert_eq!(obs_link.len(), 1, "datapoint referencing b1 removed: {a}");
    assert_eq!(
        a.get_document("#min_t2s").expect("min").get("obs_link"),
        Some(&value::time(at(50)))
    );
    assert!(!a.contains_key("one"), "single plain link unset: {a}");
    assert_eq!(
        a.get_document("many").expect("many").get("v"),
        Some(&Bson::Array(vec![link(&b2)]))
    );
    assert!(a.contains_key("other"));
    assert!(a.get("#revision").and_then(value::as_int) >= Some(2));
    assert!(
        store
            .links_to(&LinkKey::new("B", b1.clone()), None, t0())
            .expect("links")
            .is_empty()
    );
    assert_eq!(
        store
            .links_to(&LinkKey::new("B", b2.clone()), None, t0())
            .expect("links")
            .len(),
        1
    );
    // deleting the source removes links from it
    apply(
        store,
        vec![WriteOp::Delete {
            etype: "A".into(),
            eid: s("a"),
        }],
    );
    assert!(
        store
            .links_to(&LinkKey::new("B", b2), None, t0())
            .expect("links")
            .is_empty()
    );
}

fn raw_log(store: &dyn Store) {
    let raw = vec![
        datapoint("R", s("a"), "o", 1, Some(10)),
        datapoint("R", s("b"), "o", 2, Some(30)),
        datapoint("R", s("a"), "p", "plain", None),
        datapoint("R", s("a"), "o", 3, Some(20)),
    ];
    store
        .apply(&WriteBatch {
            raw: raw.clone(),
            ..Default::default()
        })
        .expect("apply");
    let all = store.raw_get("R", &RawQuery::default()).expect("raw");
    assert_eq!(all.len(), 4);
    assert_eq!(all[0], raw[3].to_document(), "newest first, DP3 raw shape");
    assert_eq!(all[3], raw[0].to_document());
    let by_t1 = store
        .raw_get(
            "R",
            &RawQuery {
                attr: Some("o".into()),
                order_by_t1: true,
                ..Default::default()
            },
        )
        .expect("raw");
    let vs: Vec<&Bson> = by_t1.iter().filter_map(|d| d.get("v")).collect();
    assert_eq!(vs, [&Bson::Int32(2), &Bson::Int32(3), &Bson::Int32(1)]);
    let a = store
        .raw_get(
            "R",
            &RawQuery {
                eid: Some(s("a")),
                skip: 1,
                limit: 1,
                ..Default::default()
            },
        )
        .expect("raw");
    assert_eq!(a, vec![raw[2].to_document()]);
    let none = store
        .raw_get(
            "R",
            &RawQuery {
                src: Some("other".into()),
                ..Default::default()
            },
        )
        .expect("raw");
    assert!(none.is_empty());
    let mut archived = Vec::new();
    let n = store
        .archive_raw("R", at(25), &mut |docs| {
            archived.extend_from_slice(docs);
            Ok(())
        })
        .expect("archive");
    assert_eq!(n, 3, "t1 < 25 min and plain ones");
    assert_eq!(archived.len(), 3);
    let left = store.raw_get("R", &RawQuery::default()).expect("raw");
    assert_eq!(left, vec![raw[1].to_document()]);
    // a failing sink keeps the data
    let r = store.archive_raw("R", at(100), &mut |_| Err(StoreError::Full("sink".into())));
    assert!(r.is_err());
    assert_eq!(
        store.raw_get("R", &RawQuery::default()).expect("raw").len(),
        1
    );
}

fn link_cache(store: &dyn Store) {
    let from = LinkKey::new("S", s("s1"));
    let t = |e: &str| LinkKey::new("T", s(e));
    apply(
        store,
        vec![
            WriteOp::Link(LinkOp::Replace {
                from: from.clone(),
                using_attr: "S#plain".into(),
                targets: vec![t("x"), t("y")],
            }),
            WriteOp::Link(LinkOp::Replace {
                from: from.clone(),
                using_attr: "S#plain".into(),
                targets: vec![t("y"), t("z")],
            }),
            WriteOp::Link(LinkOp::Upsert {
                from: from.clone(),
                to: t("o"),
                using_attr: "S#obs".into(),
                ttl: at(10),
            }),
            WriteOp::Link(LinkOp::Upsert {
                from: from.clone(),
                to: t("o"),
                using_attr: "S#obs".into(),
                ttl: at(5),
            }),
        ],
    );
    assert!(
        store
            .links_to(&t("x"), None, t0())
            .expect("links")
            .is_empty(),
        "replaced"
    );
    let y = store.links_to(&t("y"), None, t0()).expect("links");
    assert_eq!(
        y,
        vec![LinkEntry {
            from: from.clone(),
            to: t("y"),
            using_attr: "S#plain".into(),
            ttl: None
        }]
    );
    let o = store.links_to(&t("o"), Some("S#obs"), t0()).expect("links");
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].ttl, Some(at(10)), "ttl = max");
    assert!(
        store
            .links_to(&t("o"), Some("S#plain"), t0())
            .expect("links")
            .is_empty()
    );
    assert!(
        store
            .links_to(&t("o"), None, at(11))
            .expect("links")
            .is_empty(),
        "expired"
    );
    assert_eq!(
        store.links_to(&t("o"), None, at(10)).expect("links").len(),
        1
    );
    let using = store.links_using(&["S#plain".into()], t0()).expect("links");
    assert_eq!(using.len(), 2);
    let mut refs = store.referenced_eids("T", t0()).expect("refs");
    refs.sort();
    assert_eq!(refs, vec![s("o"), s("y"), s("z")]);
    let refs = store.referenced_eids("T", at(11)).expect("refs");
    assert_eq!(refs.len(), 2);
}

fn snapshots_latest_and_history(store: &dyn Store) {
    let e = s("e1");
    for (i, v) in [1, 2, 3].iter().enumerate() {
        store
            .save_snapshots(
                "S",
                &[(e.clone(), doc! {"eid": "e1", "v": *v})],
                at(i as i64 * 10),
            )
            .expect("save");
    }
    let latest = store
        .latest_snapshot("S", &e)
        .expect("latest")
        .expect("some");
    assert_eq!(
        latest,
        doc! {"eid": "e1", "v": 3, "_time_created": value::time(at(20))}
    );
    assert_eq!(
        store.latest_snapshot("S", &s("none")).expect("latest"),
        None
    );
    let hist = store
        .snapshot_history("S", &e, &HistoryQuery::default())
        .expect("hist");
    let vs: Vec<&Bson> = hist.iter().filter_map(|d| d.get("v")).collect();
    assert_eq!(vs, [&Bson::Int32(1), &Bson::Int32(2), &Bson::Int32(3)]);
    let ranged = store
        .snapshot_history(
            "S",
            &e,
            &HistoryQuery {
                from: Some(at(10)),
                to: Some(at(20)),
                skip: 1,
                limit: 0,
            },
        )
        .expect("hist");
    assert_eq!(ranged.len(), 1);
    assert_eq!(ranged[0].get("v"), Some(&Bson::Int32(3)));
    assert_eq!(store.delete_old_snapshots("S", at(15)).expect("delete"), 2);
    assert_eq!(
        store
            .snapshot_history("S", &e, &HistoryQuery::default())
            .expect("h")
            .len(),
        1
    );
    assert!(store.latest_snapshot("S", &e).expect("latest").is_some());
    store.delete_old_snapshots("S", at(100)).expect("delete");
    assert_eq!(store.latest_snapshot("S", &e).expect("latest"), None);
}

fn snapshot_filters_sort_distinct(store: &dyn Store) {
    let snaps: Vec<(Eid, Document)> = vec![
        (
            s("b"),
            doc! {"eid": "b", "n": 2, "tags": ["x", "y"], "l": {"eid": "t1"}},
        ),
        (
            s("a"),
            doc! {"eid": "a", "n": 3, "tags": ["y"], "l": {"eid": "t2"}},
        ),
        (
            s("c"),
            doc! {"eid": "c", "n": 1, "l": {"eid": "t1"}, "z": Bson::Null},
        ),
    ];
    store.save_snapshots("F", &snaps, at(0)).expect("save");
    let eids = |docs: &[Document]| -> Vec<String> {
        docs.iter()
            .map(|d| d.get_str("eid").unwrap_or("?").to_owned())
            .collect()
    };
    let q = |filter: Document| SnapshotQuery {
        filter,
        ..Default::default()
    };
    let all = store.latest_snapshots("F", &q(doc! {})).expect("list");
    assert_eq!(eids(&all), ["a", "b", "c"], "bucket id order");
    assert!(all[0].contains_key("_time_created"));
    let gt = store
        .latest_snapshots("F", &q(doc! {"last.n": {"$gte": 2}}))
        .expect("list");
    assert_eq!(eids(&gt), ["a", "b"]);
    let ft = store
        .latest_snapshots(
            "F",
            &q(doc! {"latest": true, "last.l.eid": {"$regex": "T1", "$options": "i"}}),
        )
        .expect("list");
    assert_eq!(eids(&ft), ["b", "c"]);
    let by_id = store
        .latest_snapshots("F", &q(doc! {"_id": {"$regex": "^a_#"}}))
        .expect("list");
    assert_eq!(eids(&by_id), ["a"]);
    let sorted = store
        .latest_snapshots(
            "F",
            &SnapshotQuery {
                sort: vec![("last.n".into(), -1)],
                skip: 1,
                limit: 1,
                ..Default::default()
            },
        )
        .expect("list");
    assert_eq!(eids(&sorted), ["b"]);
    let page = store
        .latest_snapshots(
            "F",
            &SnapshotQuery {
                skip: 1,
                limit: 5,
                ..Default::default()
            },
        )
        .expect("list");
    assert_eq!(eids(&page), ["b", "c"]);
    assert_eq!(
        store
            .count_latest_snapshots("F", &doc! {"last.tags": "y"})
            .expect("count"),
        2
    );
    assert_eq!(
        store.count_latest_snapshots("F", &doc! {}).expect("count"),
        3
    );
    assert_eq!(
        store
            .count_latest_snapshots("nothing", &doc! {})
            .expect("count"),
        0
    );
    assert!(matches!(
        store.count_latest_snapshots("F", &doc! {"$foo": 1}),
        Err(StoreError::InvalidQuery(_))
    ));
    assert!(matches!(
        store.latest_snapshots("F", &q(doc! {"a": {"$bar": 1}})),
        Err(StoreError::InvalidQuery(_))
    ));
    assert_eq!(
        store.distinct_latest("F", "tags").expect("distinct"),
        vec![(Bson::String("x".into()), 1), (Bson::String("y".into()), 2)]
    );
    assert_eq!(
        store.distinct_latest("F", "l").expect("distinct"),
        vec![
            (Bson::String("t1".into()), 2),
            (Bson::String("t2".into()), 1)
        ]
    );
    assert_eq!(
        store.distinct_latest("F", "n").expect("distinct"),
        vec![
            (Bson::Int32(1), 1),
            (Bson::Int32(2), 1),
            (Bson::Int32(3), 1)
        ]
    );
    assert!(
        store
            .distinct_latest("F", "z")
            .expect("distinct")
            .is_empty(),
        "nulls dropped"
    );
}

fn binary_bucket_ids(store: &dyn Store) {
    let snaps: Vec<(Eid, Document)> = [1000i64, -1, 5, 128]
        .iter()
        .map(|i| (Eid::Int(*i), doc! {"eid": *i}))
        .collect();
    store.save_snapshots("I", &snaps, at(0)).expect("save");
    let all = store
        .latest_snapshots("I", &SnapshotQuery::default())
        .expect("list");
    let ns: Vec<i64> = all
        .iter()
        .filter_map(|d| d.get("eid").and_then(value::as_int))
        .collect();
    // MongoDB BinData order: packed length first (-1 and 5 are one byte, 128/1000 two)
    assert_eq!(ns, vec![5, -1, 128, 1000]);
    let mut f = doc! {"_id": "$$Binary_ID{128}"};
    replace_magic_strings(&mut f).expect("magic");
    let one = store
        .latest_snapshots(
            "I",
            &SnapshotQuery {
                filter: f,
                ..Default::default()
            },
        )
        .expect("list");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].get("eid").and_then(value::as_int), Some(128));
    let ip = Eid::Ipv4("10.0.0.7".parse().expect("ip"));
    store
        .save_snapshots("ip", &[(ip.clone(), doc! {"eid": ip.to_bson()})], at(0))
        .expect("save");
    let mut f = doc! {"last.eid": "$$IPv4Prefix{10.0.0.0/24}"};
    replace_magic_strings(&mut f).expect("magic");
    assert_eq!(store.count_latest_snapshots("ip", &f).expect("count"), 1);
}

fn metadata(store: &dyn Store) {
    store.put_meta("a/1", &doc! {"x": 1}).expect("put");
    store.put_meta("a/2", &doc! {"x": 2}).expect("put");
    store.put_meta("b/1", &doc! {"x": 3}).expect("put");
    assert_eq!(store.get_meta("a/1").expect("get"), Some(doc! {"x": 1}));
    assert_eq!(store.get_meta("zz").expect("get"), None);
    let listed = store.list_meta("a/").expect("list");
    assert_eq!(
        listed,
        vec![("a/1".into(), doc! {"x": 1}), ("a/2".into(), doc! {"x": 2})]
    );
    store.delete_meta("a/1").expect("delete");
    assert_eq!(store.get_meta("a/1").expect("get"), None);
    store
        .apply(&WriteBatch {
            meta: vec![("a/2".into(), doc! {"x": 9})],
            ..Default::default()
        })
        .expect("apply");
    assert_eq!(store.get_meta("a/2").expect("get"), Some(doc! {"x": 9}));
    store.flush().expect("flush");
}

fn run_metadata(store: &dyn Store) {
    for (i, module) in ["SnapShooter", "GarbageCollector", "SnapShooter"]
        .iter()
        .enumerate()
    {
        store
            .insert_run_metadata(&doc! {
                "_id": format!("{module}{i}"),
                "#module": *module,
                "#time_created": value::time(at(i as i64)),
                "entities": 0,
            })
            .expect("insert");
    }
    store
        .update_run_metadata(
            "SnapShooter0",
            &doc! {"#last_update": value::time(at(9)), "linked_finished": true},
            &doc! {"entities": 5, "workers_finished": 1},
        )
        .expect("update");
    let snaps = store
        .query_run_metadata(&RunMetadataQuery {
            module: Some("SnapShooter".into()),
            newest_first: true,
            ..Default::default()
        })
        .expect("query");
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0].get_str("_id").ok(), Some("SnapShooter2"));
    let first = &snaps[1];
    assert_eq!(first.get("entities").and_then(value::as_int), Some(5));
    assert_eq!(
        first.get("workers_finished").and_then(value::as_int),
        Some(1)
    );
    assert_eq!(first.get("linked_finished"), Some(&Bson::Boolean(true)));
    let ranged = store
        .query_run_metadata(&RunMetadataQuery {
            from: Some(at(1)),
            to: Some(at(2)),
            limit: 1,
            ..Default::default()
        })
        .expect("query");
    assert_eq!(ranged.len(), 1);
    assert_eq!(ranged[0].get_str("_id").ok(), Some("GarbageCollector1"));
}
