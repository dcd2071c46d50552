//! Snapshots: full history rows plus one "latest" row per entity. List/count queries build
//! DP3's bucket document shape `{_id, _time_created, oversized, latest, last}` for each
//! latest snapshot and evaluate the MongoDB filter over it; `_id` is DP3's bucket id of the
//! entity's first snapshot (the store keeps one unbounded "bucket" per entity, so bucket
//! ids order and filter like DP3's).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bson::{Bson, Document};
use chrono::{DateTime, Utc};
use dp3_model::Eid;
use rusqlite::{Connection, OptionalExtension, params};

use super::codec::{SqlResultExt, bson_time, decode_doc, ms};
use super::master::corrupt_key;
use super::names::Names;
use crate::error::{Result, StoreError};
use crate::filter::{Filter, cmp_bson};
use crate::keys::{bucket_id, bucket_sort_key, eid_from_key, eid_key};
use crate::types::{HistoryQuery, SnapshotQuery};

pub fn save_snapshots(
    conn: &Connection,
    names: &Names,
    etype: &str,
    snapshots: &[(Eid, Document)],
    time: DateTime<Utc>,
) -> Result<()> {
    let et = names.require(conn, etype)?;
    let t = ms(time);
    let mut history = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO snapshot(etype, ekey, time, doc) VALUES (?1, ?2, ?3, ?4)",
        )
        .db()?;
    // The latest row: inserted with its first time, or replaced unless it is newer (an
    // older snapshot arriving late).
    let mut latest = conn
        .prepare_cached(
            "INSERT INTO snapshot_latest(etype, ekey, first_time, time, sort_key, doc) \
             VALUES (?1, ?2, ?3, ?3, ?4, ?5) ON CONFLICT(etype, ekey) DO UPDATE \
             SET time = excluded.time, doc = excluded.doc WHERE excluded.time >= snapshot_latest.time",
        )
        .db()?;
    let created = bson_time(t);
    for (eid, doc) in snapshots {
        let key = eid_key(eid);
        let bytes = dp3_model::bson_bytes::document_with(doc, "_time_created", &created)
            .map_err(|e| StoreError::InvalidQuery(e.to_string()))?;
        history.execute(params![et, key, t, bytes]).db()?;
        let sort_key = bucket_sort_key(eid, time.timestamp());
        latest.execute(params![et, key, t, sort_key, bytes]).db()?;
    }
    Ok(())
}

/// Stream the bucket documents of all latest snapshots in bucket-id order; `f` returns
/// false to stop.
fn for_each_bucket(
    conn: &Connection,
    names: &Names,
    etype: &str,
    mut f: impl FnMut(Document) -> Result<bool>,
) -> Result<()> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(());
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT ekey, first_time, doc FROM snapshot_latest WHERE etype = ?1 ORDER BY sort_key",
        )
        .db()?;
    let mut rows = stmt.query([et]).db()?;
    while let Some(r) = rows.next().db()? {
        let key: Vec<u8> = r.get(0).db()?;
        let first: i64 = r.get(1).db()?;
        let last = decode_doc(&r.get::<_, Vec<u8>>(2).db()?, "snapshot")?;
        let eid = eid_from_key(&key).ok_or_else(|| corrupt_key(&key))?;
        let mut bucket = Document::new();
        bucket.insert("_id", bucket_id(&eid, first.div_euclid(1000)));
        bucket.insert("_time_created", bson_time(first));
        bucket.insert("oversized", false);
        bucket.insert("latest", true);
        bucket.insert("last", last);
        if !f(bucket)? {
            break;
        }
    }
    Ok(())
}

fn take_last(mut bucket: Document) -> Document {
    match bucket.remove("last") {
        Some(Bson::Document(d)) => d,
        _ => Document::new(),
    }
}

/// Values a dotted path reaches for sorting (arrays flattened one level per step).
fn path_values<'a>(v: &'a Bson, comps: &[&str], out: &mut Vec<&'a Bson>) {
    match (v, comps.split_first()) {
        (Bson::Array(items), _) => {
            for i in items {
                match i {
                    Bson::Array(_) if comps.is_empty() => out.push(i),
                    _ => path_values(i, comps, out),
                }
            }
        }
        (_, None) => out.push(v),
        (Bson::Document(d), Some((first, rest))) => {
            if let Some(x) = d.get(*first) {
                path_values(x, rest, out);
            }
        }
        _ => {}
    }
}

/// MongoDB's sort key of one document for one path: the smallest reached value ascending,
/// the largest descending; missing = null.
fn sort_value(doc: &Document, path: &str, dir: i32) -> Bson {
    let comps: Vec<&str> = path.split('.').collect();
    let mut vals = Vec::new();
    if let Some((first, rest)) = comps.split_first()
        && let Some(v) = doc.get(*first)
    {
        path_values(v, rest, &mut vals);
    }
    let best = if dir < 0 {
        vals.into_iter().max_by(|a, b| cmp_bson(a, b))
    } else {
        vals.into_iter().min_by(|a, b| cmp_bson(a, b))
    };
    best.cloned().unwrap_or(Bson::Null)
}

pub fn latest_snapshots(
    conn: &Connection,
    names: &Names,
    etype: &str,
    query: &SnapshotQuery,
) -> Result<Vec<Document>> {
    let filter = Filter::new(&query.filter)?;
    for (path, dir) in &query.sort {
        if *dir != 1 && *dir != -1 {
            return Err(StoreError::InvalidQuery(format!(
                "sort direction of '{path}' must be 1 or -1, not {dir}"
            )));
        }
    }
    let skip = usize::try_from(query.skip).unwrap_or(usize::MAX);
    let limit = if query.limit == 0 {
        usize::MAX
    } else {
        usize::try_from(query.limit).unwrap_or(usize::MAX)
    };
    if query.sort.is_empty() {
        let mut out = Vec::new();
        let mut skipped = 0usize;
        for_each_bucket(conn, names, etype, |bucket| {
            if filter.matches(&bucket) {
                if skipped < skip {
                    skipped += 1;
                } else {
                    out.push(take_last(bucket));
                }
            }
            Ok(out.len() < limit)
        })?;
        return Ok(out);
    }
    let mut matched: Vec<(Vec<Bson>, Document)> = Vec::new();
    for_each_bucket(conn, names, etype, |bucket| {
        if filter.matches(&bucket) {
            let keys = query
                .sort
                .iter()
                .map(|(p, d)| sort_value(&bucket, p, *d))
                .collect();
            matched.push((keys, bucket));
        }
        Ok(true)
    })?;
    matched.sort_by(|(a, _), (b, _)| {
        for ((x, y), (_, dir)) in a.iter().zip(b.iter()).zip(&query.sort) {
            let o = cmp_bson(x, y);
            let o = if *dir < 0 { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    Ok(matched
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(|(_, b)| take_last(b))
        .collect())
}

pub fn count_latest(
    conn: &Connection,
    names: &Names,
    etype: &str,
    filter: &Document,
) -> Result<u64> {
    let filter = Filter::new(filter)?;
    let mut n = 0u64;
    for_each_bucket(conn, names, etype, |bucket| {
        if filter.matches(&bucket) {
            n += 1;
        }
        Ok(true)
    })?;
    Ok(n)
}

pub fn latest_snapshot(
    conn: &Connection,
    names: &Names,
    etype: &str,
    eid: &Eid,
) -> Result<Option<Document>> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(None);
    };
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT doc FROM snapshot_latest WHERE etype = ?1 AND ekey = ?2")
        .db()?
        .query_row(params![et, eid_key(eid)], |r| r.get(0))
        .optional()
        .db()?;
    bytes.map(|b| decode_doc(&b, "snapshot")).transpose()
}

pub fn snapshot_history(
    conn: &Connection,
    names: &Names,
    etype: &str,
    eid: &Eid,
    query: &HistoryQuery,
) -> Result<Vec<Document>> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(Vec::new());
    };
    let from = query.from.map_or(i64::MIN, ms);
    let to = query.to.map_or(i64::MAX, ms);
    let limit = if query.limit == 0 {
        -1
    } else {
        i64::try_from(query.limit).unwrap_or(i64::MAX)
    };
    let skip = i64::try_from(query.skip).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT doc FROM snapshot WHERE etype = ?1 AND ekey = ?2 AND time >= ?3 AND time <= ?4 \
             ORDER BY time LIMIT ?5 OFFSET ?6",
        )
        .db()?;
    let rows = stmt
        .query_map(params![et, eid_key(eid), from, to, limit, skip], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .db()?;
    let mut out = Vec::new();
    for r in rows {
        out.push(decode_doc(&r.db()?, "snapshot")?);
    }
    Ok(out)
}

/// BSON value ordered by MongoDB's order (for grouping distinct values).
struct Ordered(Bson);

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        cmp_bson(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_bson(&self.0, &other.0)
    }
}

fn unwind(v: &Bson, depth: u8, out: &mut BTreeMap<Ordered, u64>) {
    match v {
        Bson::Array(items) if depth < 2 => {
            for i in items {
                unwind(i, depth + 1, out);
            }
        }
        Bson::Null | Bson::Undefined => {}
        Bson::Document(d) if d.contains_key("eid") => {
            if let Some(e) = d.get("eid").filter(|e| !matches!(e, Bson::Null)) {
                *out.entry(Ordered(e.clone())).or_default() += 1;
            }
        }
        other => *out.entry(Ordered(other.clone())).or_default() += 1,
    }
}

pub fn distinct_latest(
    conn: &Connection,
    names: &Names,
    etype: &str,
    attr: &str,
) -> Result<Vec<(Bson, u64)>> {
    let mut counts: BTreeMap<Ordered, u64> = BTreeMap::new();
    for_each_bucket(conn, names, etype, |bucket| {
        if let Some(Bson::Document(last)) = bucket.get("last")
            && let Some(v) = last.get(attr)
        {
            unwind(v, 0, &mut counts);
        }
        Ok(true)
    })?;
    Ok(counts.into_iter().map(|(k, n)| (k.0, n)).collect())
}

pub fn delete_old(
    conn: &Connection,
    names: &Names,
    etype: &str,
    older_than: DateTime<Utc>,
) -> Result<u64> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(0);
    };
    let old = ms(older_than);
    let n = conn
        .prepare_cached("DELETE FROM snapshot WHERE etype = ?1 AND time < ?2")
        .db()?
        .execute(params![et, old])
        .db()?;
    // An entity whose every snapshot is gone no longer has a latest one either.
    conn.prepare_cached("DELETE FROM snapshot_latest WHERE etype = ?1 AND time < ?2")
        .db()?
        .execute(params![et, old])
        .db()?;
    Ok(n as u64)
}
