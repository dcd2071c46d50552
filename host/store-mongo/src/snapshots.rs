//! Snapshot buckets `{etype}#snapshots` and `{etype}#snapshots_oversized`
//! (data-model.md §8.5, §6.6).

use std::collections::HashSet;

use bson::spec::BinarySubtype;
use bson::{Bson, Document, doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use dp3_model::{Eid, value};
use dp3_store::keys::packed_eid;
use dp3_store::{HistoryQuery, Result, SnapshotQuery, StoreError};

use crate::buckets::{eid_buckets, make_bucket_id};
use crate::command::{Cx, Find, TOO_LARGE_CODES, WriteCommand, WriteKind, clamp_i64, encoded_len};
use crate::names::{self, check_field};

/// Which entity a bucket id belongs to, independent of the eid type: the text before the
/// last `_#` of string ids, the bytes before the 8-byte time of binary ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Str(String),
    Bin(Vec<u8>),
}

pub fn owner_of_id(id: &Bson) -> Option<Owner> {
    match id {
        Bson::String(s) => s.rsplit_once("_#").map(|(e, _)| Owner::Str(e.to_owned())),
        Bson::Binary(b) if b.subtype == BinarySubtype::Generic && b.bytes.len() > 8 => {
            Some(Owner::Bin(b.bytes[..b.bytes.len() - 8].to_vec()))
        }
        _ => None,
    }
}

pub fn owner_of_eid(eid: &Eid) -> Owner {
    match eid {
        Eid::String(s) => Owner::Str(s.clone()),
        other => Owner::Bin(packed_eid(other).unwrap_or_default()),
    }
}

/// The snapshot as stored: the given document with `_time_created = time`.
pub fn stamp(snapshot: &Document, time: DateTime<Utc>) -> Document {
    let mut d = snapshot.clone();
    d.insert("_time_created", value::time(time));
    d
}

/// The bucket size as DP3 writes it (an int32 when it fits), so our partial index and
/// queries are byte-identical to DP3's.
pub fn size_bson(bucket_size: u32) -> Bson {
    i32::try_from(bucket_size).map_or(Bson::Int64(i64::from(bucket_size)), Bson::Int32)
}

/// DP3's bucket upsert for one entity (normal state).
pub fn bucket_upsert(
    eid: &Eid,
    snap: &Document,
    time: DateTime<Utc>,
    bucket_size: u32,
) -> Document {
    WriteCommand::update(
        doc! {"_id": eid_buckets(eid), "count": {"$lt": size_bson(bucket_size)}},
        doc! {
            "$set": {"last": snap.clone()},
            "$push": {"history": {"$each": [snap.clone()], "$position": 0}},
            "$inc": {"count": 1},
            "$setOnInsert": {
                "_id": make_bucket_id(eid, time.timestamp()),
                "_time_created": value::time(time),
                "oversized": false,
                "latest": true,
            },
        },
        true,
        false,
    )
}

/// `_id` condition of the eid's buckets other than `except`.
pub fn other_buckets(eid: &Eid, except: &Bson) -> Bson {
    match eid_buckets(eid) {
        Bson::Document(mut d) => {
            d.insert("$ne", except.clone());
            Bson::Document(d)
        }
        other => other,
    }
}

/// After a new bucket was inserted: the older buckets lose `latest` (DP3 unsets it on the
/// full ones; all others is the same for DP3's data and keeps exactly one `latest` bucket).
pub fn unset_latest(eid: &Eid, new_id: &Bson) -> Document {
    WriteCommand::update(
        doc! {"_id": other_buckets(eid, new_id), "latest": true},
        doc! {"$unset": {"latest": ""}},
        false,
        true,
    )
}

/// The marker left in `{etype}#snapshots` for an oversized entity.
pub fn oversized_marker(id: &Bson, snap: &Document, time: DateTime<Utc>) -> Document {
    doc! {
        "_id": id.clone(),
        "oversized": true,
        "last": snap.clone(),
        "_time_created": value::time(time),
        "count": 0,
        "latest": true,
    }
}

/// A document of `{etype}#snapshots_oversized`: the snapshot with its own `_id` and
/// (if the snapshot lacks it) the `eid` it is looked up by.
pub fn oversized_doc(eid: &Eid, snap: &Document) -> Document {
    let mut d = doc! {"_id": ObjectId::new()};
    d.extend(snap.clone());
    if !d.contains_key("eid") {
        d.insert("eid", eid.to_bson());
    }
    d
}

pub async fn save(
    cx: &mut Cx<'_>,
    etype: &str,
    snapshots: &[(Eid, Document)],
    time: DateTime<Utc>,
    bucket_size: u32,
    max_bson: usize,
) -> Result<()> {
    let coll = names::snapshots(etype);
    let ctx = format!("save snapshots of '{etype}'");
    let mut markers = Find::new(coll.clone(), doc! {"oversized": true});
    markers.projection = Some(doc! {"_id": 1});
    let oversized: HashSet<Owner> = cx
        .find(&ctx, markers)
        .await?
        .iter()
        .filter_map(|d| d.get("_id").and_then(owner_of_id))
        .collect();
    let mut normal: Vec<(&Eid, Document)> = Vec::new();
    let mut cmd = WriteCommand::new(coll.clone(), WriteKind::Update);
    cmd.ordered = false;
    let mut to_convert: Vec<(&Eid, Document)> = Vec::new();
    for (eid, snapshot) in snapshots {
        let snap = stamp(snapshot, time);
        if oversized.contains(&owner_of_eid(eid)) {
            append_oversized(cx, etype, eid, &snap, time).await?;
            continue;
        }
        let statement = bucket_upsert(eid, &snap, time, bucket_size);
        let len = encoded_len(&statement).map_err(|e| {
            StoreError::backend(
                "mongodb",
                format!("{ctx}: snapshot of {eid} cannot be encoded: {e}"),
            )
        })?;
        if len > max_bson {
            to_convert.push((eid, snap));
            continue;
        }
        cmd.statements.push(statement);
        normal.push((eid, snap));
    }
    let reply = cx.write_lenient(&ctx, &cmd).await?;
    let mut unset = WriteCommand::new(coll.clone(), WriteKind::Update);
    for (index, id) in &reply.upserted {
        if let Some((eid, _)) = normal.get(*index) {
            unset.statements.push(unset_latest(eid, id));
        }
    }
    let mut failures = Vec::new();
    for e in &reply.errors {
        match normal.get(e.index) {
            Some((eid, snap)) if TOO_LARGE_CODES.contains(&e.code) => {
                to_convert.push((eid, snap.clone()))
            }
            _ => failures.push(e.to_string()),
        }
    }
    cx.write(&ctx, &unset).await?;
    for (eid, snap) in to_convert {
        convert_to_oversized(cx, etype, eid, &snap, time).await?;
    }
    if !failures.is_empty() {
        return Err(StoreError::backend(
            "mongodb",
            format!("{ctx}: {}", failures.join("; ")),
        ));
    }
    Ok(())
}

/// A snapshot of an entity that is already oversized.
async fn append_oversized(
    cx: &mut Cx<'_>,
    etype: &str,
    eid: &Eid,
    snap: &Document,
    time: DateTime<Utc>,
) -> Result<()> {
    let ctx = format!("save oversized snapshot of {etype}/{eid}");
    let mut ins = WriteCommand::new(names::snapshots_oversized(etype), WriteKind::Insert);
    ins.statements.push(oversized_doc(eid, snap));
    cx.write(&ctx, &ins).await?;
    let mut up = WriteCommand::new(names::snapshots(etype), WriteKind::Update);
    up.statements.push(WriteCommand::update(
        doc! {"_id": eid_buckets(eid), "oversized": true},
        doc! {"$set": {"last": snap.clone(), "_time_created": value::time(time)}},
        false,
        false,
    ));
    cx.write(&ctx, &up).await?;
    Ok(())
}

/// Move every snapshot of the entity into the oversized collection and leave a marker
/// (data-model.md §8.5). Histories are copied before the buckets are replaced, so an
/// interruption can duplicate snapshots but never lose them.
async fn convert_to_oversized(
    cx: &mut Cx<'_>,
    etype: &str,
    eid: &Eid,
    snap: &Document,
    time: DateTime<Utc>,
) -> Result<()> {
    let ctx = format!("make {etype}/{eid} oversized");
    let coll = names::snapshots(etype);
    let mut q = Find::new(coll.clone(), doc! {"_id": eid_buckets(eid)});
    q.sort = Some(doc! {"_time_created": -1, "_id": -1});
    let buckets = cx.find(&ctx, q).await?;
    let mut ins = WriteCommand::new(names::snapshots_oversized(etype), WriteKind::Insert);
    for b in &buckets {
        if let Ok(history) = b.get_array("history") {
            for h in history.iter().rev() {
                if let Some(d) = h.as_document() {
                    ins.statements.push(oversized_doc(eid, d));
                }
            }
        }
    }
    ins.statements.push(oversized_doc(eid, snap));
    cx.write(&ctx, &ins).await?;
    let marker_id = buckets
        .first()
        .and_then(|b| b.get("_id").cloned())
        .unwrap_or_else(|| make_bucket_id(eid, time.timestamp()));
    let mut up = WriteCommand::new(coll.clone(), WriteKind::Update);
    up.statements.push(WriteCommand::update(
        doc! {"_id": marker_id.clone()},
        oversized_marker(&marker_id, snap, time),
        true,
        false,
    ));
    cx.write(&ctx, &up).await?;
    let mut del = WriteCommand::new(coll, WriteKind::Delete);
    del.statements.push(WriteCommand::delete(
        doc! {"_id": other_buckets(eid, &marker_id)},
        true,
    ));
    cx.write(&ctx, &del).await?;
    Ok(())
}

/// `query.filter` with `latest: true` forced (as DP3 does: it overrides a user's `latest`).
pub fn latest_filter(filter: &Document) -> Document {
    let mut f = filter.clone();
    f.insert("latest", true);
    f
}

pub fn list_find(etype: &str, query: &SnapshotQuery) -> Result<Find> {
    let mut sort = Document::new();
    for (path, dir) in &query.sort {
        if *dir != 1 && *dir != -1 {
            return Err(StoreError::InvalidQuery(format!(
                "sort direction of '{path}' must be 1 or -1, not {dir}"
            )));
        }
        sort.insert(path.as_str(), *dir);
    }
    if sort.is_empty() {
        sort.insert("_id", 1);
    }
    let mut f = Find::new(names::snapshots(etype), latest_filter(&query.filter));
    f.projection = Some(doc! {"_id": 0, "last": 1});
    f.sort = Some(sort);
    f.skip = query.skip;
    f.limit = query.limit;
    Ok(f)
}

pub fn take_last(mut d: Document) -> Document {
    match d.remove("last") {
        Some(Bson::Document(l)) => l,
        _ => Document::new(),
    }
}

pub async fn latest(cx: &mut Cx<'_>, etype: &str, query: &SnapshotQuery) -> Result<Vec<Document>> {
    let f = list_find(etype, query)?;
    let docs = cx.find(&format!("list snapshots of '{etype}'"), f).await?;
    Ok(docs.into_iter().map(take_last).collect())
}

pub async fn count_latest(cx: &mut Cx<'_>, etype: &str, filter: &Document) -> Result<u64> {
    let pipeline = vec![doc! {"$match": latest_filter(filter)}, doc! {"$count": "n"}];
    let out = cx
        .aggregate(
            &format!("count snapshots of '{etype}'"),
            &names::snapshots(etype),
            pipeline,
        )
        .await?;
    Ok(out
        .first()
        .and_then(|d| d.get("n"))
        .and_then(value::as_int)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0))
}

pub async fn latest_one(cx: &mut Cx<'_>, etype: &str, eid: &Eid) -> Result<Option<Document>> {
    let mut f = Find::new(names::snapshots(etype), doc! {"_id": eid_buckets(eid)});
    f.sort = Some(doc! {"_time_created": -1, "_id": -1});
    f.projection = Some(doc! {"_id": 0, "last": 1});
    f.limit = 1;
    let docs = cx
        .find(&format!("latest snapshot of {etype}/{eid}"), f)
        .await?;
    Ok(docs.into_iter().next().map(take_last))
}

fn time_range(q: &HistoryQuery) -> Option<Document> {
    let mut r = Document::new();
    if let Some(from) = q.from {
        r.insert("$gte", value::time(from));
    }
    if let Some(to) = q.to {
        r.insert("$lte", value::time(to));
    }
    (!r.is_empty()).then_some(r)
}

/// Snapshot history from the buckets: unwind `history`, filter, sort ascending.
pub fn history_pipeline(eid: &Eid, q: &HistoryQuery) -> Vec<Document> {
    let mut p = vec![
        doc! {"$match": {"_id": eid_buckets(eid), "oversized": {"$ne": true}}},
        doc! {"$unwind": "$history"},
        doc! {"$replaceRoot": {"newRoot": "$history"}},
    ];
    if let Some(r) = time_range(q) {
        p.push(doc! {"$match": {"_time_created": r}});
    }
    p.push(doc! {"$sort": {"_time_created": 1}});
    if q.skip > 0 {
        p.push(doc! {"$skip": clamp_i64(q.skip)});
    }
    if q.limit > 0 {
        p.push(doc! {"$limit": clamp_i64(q.limit)});
    }
    p
}

pub async fn history(
    cx: &mut Cx<'_>,
    etype: &str,
    eid: &Eid,
    q: &HistoryQuery,
) -> Result<Vec<Document>> {
    let ctx = format!("snapshot history of {etype}/{eid}");
    let mut marker = Find::new(
        names::snapshots(etype),
        doc! {"_id": eid_buckets(eid), "oversized": true},
    );
    marker.projection = Some(doc! {"_id": 1});
    marker.limit = 1;
    if cx.find(&ctx, marker).await?.is_empty() {
        return cx
            .aggregate(&ctx, &names::snapshots(etype), history_pipeline(eid, q))
            .await;
    }
    let mut filter = doc! {"eid": eid.to_bson()};
    if let Some(r) = time_range(q) {
        filter.insert("_time_created", r);
    }
    let mut f = Find::new(names::snapshots_oversized(etype), filter);
    f.projection = Some(doc! {"_id": 0});
    f.sort = Some(doc! {"_time_created": 1});
    f.skip = q.skip;
    f.limit = q.limit;
    cx.find(&ctx, f).await
}

/// Distinct values of `last.<attr>` over latest buckets (arrays unwound twice, links
/// grouped by `eid`, nulls dropped), sorted by value.
pub fn distinct_pipeline(attr: &str) -> Result<Vec<Document>> {
    check_field("attribute", attr)?;
    let is_link = doc! {"$and": [
        {"$eq": [{"$type": "$v"}, "object"]},
        {"$ne": [{"$type": "$v.eid"}, "missing"]},
    ]};
    Ok(vec![
        doc! {"$match": {"latest": true}},
        doc! {"$project": {"_id": 0, "v": format!("$last.{attr}")}},
        doc! {"$unwind": "$v"},
        doc! {"$unwind": "$v"},
        doc! {"$project": {"k": {"$cond": [is_link, "$v.eid", "$v"]}}},
        doc! {"$match": {"k": {"$ne": null}}},
        doc! {"$group": {"_id": "$k", "n": {"$sum": 1}}},
        doc! {"$sort": {"_id": 1}},
    ])
}

pub async fn distinct(cx: &mut Cx<'_>, etype: &str, attr: &str) -> Result<Vec<(Bson, u64)>> {
    let out = cx
        .aggregate(
            &format!("distinct '{attr}' of '{etype}'"),
            &names::snapshots(etype),
            distinct_pipeline(attr)?,
        )
        .await?;
    Ok(out
        .into_iter()
        .map(|mut d| {
            let n = d.get("n").and_then(value::as_int).unwrap_or(0);
            (
                d.remove("_id").unwrap_or(Bson::Null),
                u64::try_from(n).unwrap_or(0),
            )
        })
        .collect())
}

/// Number of bucket-held snapshots older than `t` (before they are removed).
pub fn old_count_pipeline(t: &Bson) -> Vec<Document> {
    vec![
        doc! {"$match": {"_time_created": {"$lt": t.clone()}, "oversized": {"$ne": true}}},
        doc! {"$project": {"n": {"$size": {"$filter": {
            "input": {"$ifNull": ["$history", []]},
            "cond": {"$lt": ["$$this._time_created", t.clone()]},
        }}}}},
        doc! {"$group": {"_id": null, "n": {"$sum": "$n"}}},
    ]
}

/// Delete snapshots older than `older_than`: whole buckets whose newest snapshot is old,
/// old items pulled from the others. `count` is left as is, so a trimmed bucket is never
/// refilled (DP3 fills the first non-full bucket of an eid, which must stay the newest).
/// Unlike DP3's bucket-granular retention (§6.6) this honours the exact cut-off, and the
/// count returned is exact.
pub async fn delete_old(cx: &mut Cx<'_>, etype: &str, older_than: DateTime<Utc>) -> Result<u64> {
    let ctx = format!("delete old snapshots of '{etype}'");
    let coll = names::snapshots(etype);
    let t = value::time(older_than);
    let counted = cx.aggregate(&ctx, &coll, old_count_pipeline(&t)).await?;
    let in_buckets = counted
        .first()
        .and_then(|d| d.get("n"))
        .and_then(value::as_int)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let mut del = WriteCommand::new(coll.clone(), WriteKind::Delete);
    del.statements.push(WriteCommand::delete(
        doc! {"last._time_created": {"$lt": t.clone()}},
        true,
    ));
    cx.write(&ctx, &del).await?;
    let mut pull = WriteCommand::new(coll, WriteKind::Update);
    pull.statements.push(WriteCommand::update(
        doc! {"_time_created": {"$lt": t.clone()}, "oversized": {"$ne": true}},
        doc! {"$pull": {"history": {"_time_created": {"$lt": t.clone()}}}},
        false,
        true,
    ));
    cx.write(&ctx, &pull).await?;
    let mut del_over = WriteCommand::new(names::snapshots_oversized(etype), WriteKind::Delete);
    del_over.statements.push(WriteCommand::delete(
        doc! {"_time_created": {"$lt": t}},
        true,
    ));
    let over = cx.write(&ctx, &del_over).await?.n;
    Ok(in_buckets + over)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, m, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn bucket_upsert_is_dp3s() {
        let e = Eid::String("e1".into());
        let snap = stamp(&doc! {"eid": "e1", "v": 1}, t(0));
        assert_eq!(
            snap,
            doc! {"eid": "e1", "v": 1, "_time_created": value::time(t(0))}
        );
        let s = bucket_upsert(&e, &snap, t(0), 32);
        let secs = t(0).timestamp();
        assert_eq!(
            s,
            doc! {
                "q": {"_id": {"$regex": "^e1_#-?[0-9]+$"}, "count": {"$lt": 32}},
                "u": {
                    "$set": {"last": snap.clone()},
                    "$push": {"history": {"$each": [snap.clone()], "$position": 0}},
                    "$inc": {"count": 1},
                    "$setOnInsert": {
                        "_id": format!("e1_#{secs}"),
                        "_time_created": value::time(t(0)),
                        "oversized": false,
                        "latest": true,
                    },
                },
                "upsert": true,
                "multi": false,
            }
        );
    }

    #[test]
    fn latest_flag_moves_to_the_new_bucket() {
        let e = Eid::Int(128);
        let new_id = make_bucket_id(&e, 99);
        let s = unset_latest(&e, &new_id);
        let q = s.get_document("q").expect("q");
        let cond = q.get_document("_id").expect("_id");
        assert_eq!(cond.get("$ne"), Some(&new_id));
        assert!(cond.contains_key("$gte") && cond.contains_key("$lte"));
        assert_eq!(q.get_bool("latest").ok(), Some(true));
        assert_eq!(s.get_bool("multi").ok(), Some(true));
    }

    #[test]
    fn owners_match_ids_and_eids() {
        let eids = [
            Eid::String("a_#b".into()),
            Eid::Int(-129),
            Eid::Ipv4("1.2.3.4".parse().expect("ip")),
        ];
        for e in &eids {
            assert_eq!(
                owner_of_id(&make_bucket_id(e, 1_700_000_000)),
                Some(owner_of_eid(e))
            );
        }
        assert_ne!(owner_of_eid(&Eid::Int(1)), owner_of_eid(&Eid::Int(2)));
        assert_eq!(owner_of_id(&Bson::Int32(1)), None);
    }

    #[test]
    fn oversized_documents() {
        let e = Eid::String("big".into());
        let snap = stamp(&doc! {"eid": "big", "x": 1}, t(5));
        let m = oversized_marker(&Bson::String("big_#1".into()), &snap, t(5));
        assert_eq!(
            m,
            doc! {"_id": "big_#1", "oversized": true, "last": snap.clone(),
            "_time_created": value::time(t(5)), "count": 0, "latest": true}
        );
        let d = oversized_doc(&e, &snap);
        assert!(matches!(d.get("_id"), Some(Bson::ObjectId(_))));
        assert_eq!(d.get_str("eid").ok(), Some("big"));
        let no_eid = oversized_doc(&Eid::Int(3), &doc! {"x": 1});
        assert_eq!(no_eid.get("eid"), Some(&Bson::Int32(3)));
    }

    #[test]
    fn list_query_passes_the_filter_through() {
        let filter = doc! {"last.eid": {"$in": ["$$IPv4{1.2.3.4}"]}, "latest": false, "$or": [{"last.n": 1}]};
        let f = list_find(
            "F",
            &SnapshotQuery {
                filter: filter.clone(),
                sort: vec![("last.n".into(), -1)],
                skip: 1,
                limit: 2,
            },
        )
        .expect("query");
        let mut expected = filter;
        expected.insert("latest", true);
        assert_eq!(f.filter, expected, "untouched except latest: true");
        assert_eq!(f.coll, "F#snapshots");
        assert_eq!(f.sort, Some(doc! {"last.n": -1}));
        assert_eq!((f.skip, f.limit), (1, 2));
        let default = list_find("F", &SnapshotQuery::default()).expect("query");
        assert_eq!(default.sort, Some(doc! {"_id": 1}));
        assert!(
            list_find(
                "F",
                &SnapshotQuery {
                    sort: vec![("x".into(), 2)],
                    ..Default::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn history_and_distinct_pipelines() {
        let q = HistoryQuery {
            from: Some(t(1)),
            to: None,
            skip: 0,
            limit: 5,
        };
        let p = history_pipeline(&Eid::String("e".into()), &q);
        assert_eq!(p[1], doc! {"$unwind": "$history"});
        assert_eq!(
            p[3],
            doc! {"$match": {"_time_created": {"$gte": value::time(t(1))}}}
        );
        assert_eq!(p.last(), Some(&doc! {"$limit": 5i64}));
        assert!(!p.iter().any(|s| s.contains_key("$skip")));
        let d = distinct_pipeline("tags").expect("pipeline");
        assert_eq!(d[1], doc! {"$project": {"_id": 0, "v": "$last.tags"}});
        assert!(distinct_pipeline("$x").is_err());
    }
}
