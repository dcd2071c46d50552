//! Master records: the entity row, assembly of DP3's document shape from the plain and
//! history rows, scans, and the history/TTL maintenance operations.

use std::collections::{BTreeMap, HashSet};

use bson::{Bson, Document};
use chrono::{DateTime, Utc};
use dp3_model::aggregate::{AggregatedItem, MERGE_COUNT_KEY};
use dp3_model::{Eid, HistoryItem, value};
use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{Connection, OptionalExtension, params};

use super::codec::{
    SqlResultExt, bson_time, decode_doc, decode_value, encode_doc, encode_value, ms, sql_blob,
    sql_int,
};
use super::names::Names;
use crate::error::{Result, StoreError};
use crate::keys::{eid_from_key, eid_key};
use crate::types::MasterScan;

/// The `entity` row: metadata of one master record.
#[derive(Debug, Clone, Default)]
pub struct EntityRow {
    /// Small integer id referenced by history rows (assigned at creation).
    pub id: i64,
    pub hash: Option<i64>,
    pub time_created: Option<i64>,
    pub revision: i64,
    pub ttl: Option<Document>,
    /// `#min_t2s`: attr → datetime.
    pub min_t2s: Document,
}

pub const LOAD_ENTITY_SQL: &str = "SELECT hash, time_created, revision, ttl, min_t2s, id \
     FROM entity WHERE etype = ?1 AND ekey = ?2";
pub const STORE_ENTITY_SQL: &str = "INSERT OR REPLACE INTO \
     entity(etype, ekey, hash, time_created, revision, ttl, min_t2s, id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
/// [`STORE_ENTITY_SQL`] for a row believed to exist: updated in place (a replace deletes and
/// re-inserts the row). Matches nothing if the row is gone or has another id.
pub const UPDATE_ENTITY_SQL: &str = "UPDATE entity SET hash = ?3, time_created = ?4, \
     revision = ?5, ttl = ?6, min_t2s = ?7 WHERE id = ?8 AND etype = ?1 AND ekey = ?2";
/// The history table with the columns of [`history_row`].
pub const HISTORY_COLUMNS: &str = "history(entity, attr, seq, t1, t2, c, v)";
pub const INSERT_HISTORY_SQL: &str =
    "INSERT INTO history(entity, attr, seq, t1, t2, c, v) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

pub fn load_entity(conn: &Connection, et: i64, key: &[u8]) -> Result<Option<EntityRow>> {
    load_entity_with(&mut *conn.prepare_cached(LOAD_ENTITY_SQL).db()?, et, key)
}

/// [`load_entity`] with a statement prepared from [`LOAD_ENTITY_SQL`] (hot path).
pub fn load_entity_with(
    stmt: &mut rusqlite::Statement<'_>,
    et: i64,
    key: &[u8],
) -> Result<Option<EntityRow>> {
    let row = stmt
        .query_row(params![et, key], |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .optional()
        .db()?;
    let Some((hash, time_created, revision, ttl, min_t2s, id)) = row else {
        return Ok(None);
    };
    Ok(Some(EntityRow {
        id,
        hash,
        time_created,
        revision,
        ttl: ttl.map(|b| decode_doc(&b, "#ttl")).transpose()?,
        min_t2s: match min_t2s {
            Some(b) => decode_doc(&b, "#min_t2s")?,
            None => Document::new(),
        },
    }))
}

pub fn store_entity(conn: &Connection, et: i64, key: &[u8], row: &EntityRow) -> Result<()> {
    store_entity_with(
        &mut *conn.prepare_cached(STORE_ENTITY_SQL).db()?,
        et,
        key,
        row,
    )?;
    Ok(())
}

/// [`store_entity`] with a statement prepared from [`STORE_ENTITY_SQL`] or, for a row known
/// to exist, [`UPDATE_ENTITY_SQL`] (hot path). Returns the number of rows written.
pub fn store_entity_with(
    stmt: &mut rusqlite::Statement<'_>,
    et: i64,
    key: &[u8],
    row: &EntityRow,
) -> Result<usize> {
    let ttl = row.ttl.as_ref().map(encode_doc).transpose()?;
    let min_t2s = if row.min_t2s.is_empty() {
        None
    } else {
        Some(encode_doc(&row.min_t2s)?)
    };
    stmt.execute(params![
        et,
        key,
        row.hash,
        row.time_created,
        row.revision,
        ttl,
        min_t2s,
        row.id
    ])
    .db()
}

/// Minimum `t2` of the remaining history of one attribute (`None` when empty).
pub fn min_t2(conn: &Connection, entity: i64, attr: i64) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT min(t2) FROM history WHERE entity = ?1 AND attr = ?2")
        .db()?
        .query_row(params![entity, attr], |r| r.get(0))
        .db()
}

/// Set or remove `#min_t2s.<attr>` after the attribute's history changed.
pub fn refresh_min_t2(
    conn: &Connection,
    row: &mut EntityRow,
    attr_id: i64,
    attr: &str,
) -> Result<()> {
    match min_t2(conn, row.id, attr_id)? {
        Some(t) => {
            row.min_t2s.insert(attr, bson_time(t));
        }
        None => {
            row.min_t2s.remove(attr);
        }
    }
    Ok(())
}

/// The values of one history row, in [`HISTORY_COLUMNS`] order.
pub fn history_row(
    entity: i64,
    attr: i64,
    seq: i64,
    item: &HistoryItem,
) -> Result<[ToSqlOutput<'static>; 7]> {
    Ok([
        sql_int(entity),
        sql_int(attr),
        sql_int(seq),
        sql_int(ms(item.t1)),
        sql_int(ms(item.t2)),
        ToSqlOutput::Owned(item.c.map_or(Value::Null, Value::Real)),
        sql_blob(encode_value(&item.v)?),
    ])
}

pub fn insert_history(
    conn: &Connection,
    entity: i64,
    attr: i64,
    seq: i64,
    item: &HistoryItem,
) -> Result<()> {
    conn.prepare_cached(INSERT_HISTORY_SQL)
        .db()?
        .execute(rusqlite::params_from_iter(history_row(
            entity, attr, seq, item,
        )?))
        .db()?;
    Ok(())
}

/// Read the global history sequence counter (arrival order across processes).
pub fn load_seq(conn: &Connection) -> Result<i64> {
    load_counter(conn, "history_seq")
}

pub fn store_seq(conn: &Connection, seq: i64) -> Result<()> {
    store_counter(conn, "history_seq", seq)
}

/// A new entity row id (ids are never reused, so history rows cannot be mis-attributed).
pub fn next_entity_id(conn: &Connection) -> Result<i64> {
    let id = load_counter(conn, "entity_id")? + 1;
    store_counter(conn, "entity_id", id)?;
    Ok(id)
}

fn load_counter(conn: &Connection, name: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT value FROM counter WHERE name = ?1")
        .db()?
        .query_row([name], |r| r.get::<_, i64>(0))
        .optional()
        .db()?
        .unwrap_or(0))
}

fn store_counter(conn: &Connection, name: &str, value: i64) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO counter(name, value) VALUES (?1, ?2)")
        .db()?
        .execute(params![name, value])
        .db()?;
    Ok(())
}

pub fn exists(conn: &Connection, names: &Names, etype: &str, eid: &Eid) -> Result<bool> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(false);
    };
    Ok(conn
        .prepare_cached("SELECT 1 FROM entity WHERE etype = ?1 AND ekey = ?2")
        .db()?
        .query_row(params![et, eid_key(eid)], |_| Ok(()))
        .optional()
        .db()?
        .is_some())
}

/// Assemble DP3's master-record document of one entity.
fn assemble(
    conn: &Connection,
    names: &Names,
    et: i64,
    key: &[u8],
    eid: &Eid,
    row: &EntityRow,
    projection: Option<&HashSet<i64>>,
) -> Result<Document> {
    let mut d = Document::new();
    d.insert("_id", eid.to_bson());
    if let Some(h) = row.hash {
        d.insert("#hash", value::int(h));
    }
    if let Some(t) = row.time_created {
        d.insert("#time_created", bson_time(t));
    }
    d.insert("#revision", value::int(row.revision));
    if !row.min_t2s.is_empty() {
        d.insert("#min_t2s", row.min_t2s.clone());
    }
    if let Some(ttl) = &row.ttl {
        d.insert("#ttl", ttl.clone());
    }
    let wanted = |attr: i64| projection.is_none_or(|p| p.contains(&attr));
    let mut attrs: BTreeMap<String, Bson> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare_cached("SELECT attr, v, ts FROM plain WHERE etype = ?1 AND ekey = ?2")
            .db()?;
        let mut rows = stmt.query(params![et, key]).db()?;
        while let Some(r) = rows.next().db()? {
            let attr: i64 = r.get(0).db()?;
            if !wanted(attr) {
                continue;
            }
            let v = decode_value(&r.get::<_, Vec<u8>>(1).db()?, "plain value")?;
            let ts: i64 = r.get(2).db()?;
            let mut pd = Document::new();
            pd.insert("v", v);
            pd.insert("ts_last_update", bson_time(ts));
            attrs.insert(names.name(conn, attr)?, Bson::Document(pd));
        }
    }
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT attr, t1, t2, c, v, n FROM history WHERE entity = ?1 ORDER BY attr, seq",
            )
            .db()?;
        let mut rows = stmt.query([row.id]).db()?;
        let mut current: Option<(i64, Vec<Bson>)> = None;
        let flush = |cur: Option<(i64, Vec<Bson>)>, attrs: &mut BTreeMap<String, Bson>| {
            if let Some((attr, items)) = cur {
                attrs.insert(names.name(conn, attr)?, Bson::Array(items));
            }
            Ok::<_, StoreError>(())
        };
        while let Some(r) = rows.next().db()? {
            let attr: i64 = r.get(0).db()?;
            if !wanted(attr) {
                continue;
            }
            if current.as_ref().is_none_or(|(a, _)| *a != attr) {
                flush(current.take(), &mut attrs)?;
                current = Some((attr, Vec::new()));
            }
            let mut item = Document::new();
            item.insert("t1", bson_time(r.get(1).db()?));
            item.insert("t2", bson_time(r.get(2).db()?));
            item.insert(
                "v",
                decode_value(&r.get::<_, Vec<u8>>(4).db()?, "history value")?,
            );
            if let Some(c) = r.get::<_, Option<f64>>(3).db()? {
                item.insert("c", c);
            }
            if let Some(n) = r.get::<_, Option<i64>>(5).db()?.filter(|n| *n > 1) {
                item.insert(MERGE_COUNT_KEY, n);
            }
            if let Some((_, items)) = current.as_mut() {
                items.push(Bson::Document(item));
            }
        }
        flush(current.take(), &mut attrs)?;
    }
    d.extend(attrs);
    Ok(d)
}

pub fn get_master(
    conn: &Connection,
    names: &Names,
    etype: &str,
    eid: &Eid,
    projection: Option<&HashSet<i64>>,
) -> Result<Option<Document>> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(None);
    };
    let key = eid_key(eid);
    let Some(row) = load_entity(conn, et, &key)? else {
        return Ok(None);
    };
    assemble(conn, names, et, &key, eid, &row, projection).map(Some)
}

/// Attribute-name ids of a projection (`None` = everything).
pub fn projection_ids(
    conn: &Connection,
    names: &Names,
    attrs: Option<&[String]>,
) -> Result<Option<HashSet<i64>>> {
    let Some(attrs) = attrs else {
        return Ok(None);
    };
    let mut ids = HashSet::new();
    for a in attrs {
        if let Some(id) = names.id(conn, a)? {
            ids.insert(id);
        }
    }
    Ok(Some(ids))
}

fn check_partition(partition: Option<(u32, u32)>) -> Result<()> {
    match partition {
        Some((_, 0)) => Err(StoreError::InvalidQuery(
            "hash partition count must be positive".into(),
        )),
        _ => Ok(()),
    }
}

/// The entity keys of one page of a scan (`etype` id and keys in order; `None` when the
/// type has no entities yet). Shared by [`scan_master`] and `records::scan_eids`.
pub(super) fn scan_keys(
    conn: &Connection,
    names: &Names,
    etype: &str,
    scan: &MasterScan,
) -> Result<Option<(i64, Vec<Vec<u8>>)>> {
    check_partition(scan.partition)?;
    let Some(et) = names.id(conn, etype)? else {
        return Ok(None);
    };
    let after = scan.after.as_ref().map(eid_key).unwrap_or_default();
    let (index, count) = scan
        .partition
        .map_or((-1i64, 1i64), |(i, c)| (i64::from(i), i64::from(c)));
    let limit = if scan.limit == 0 {
        -1
    } else {
        i64::try_from(scan.limit).unwrap_or(i64::MAX)
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT ekey FROM entity WHERE etype = ?1 AND ekey > ?2 \
             AND (?3 < 0 OR (hash IS NOT NULL AND hash % ?4 = ?3)) ORDER BY ekey LIMIT ?5",
        )
        .db()?;
    let rows = stmt
        .query_map(params![et, after, index, count, limit], |r| r.get(0))
        .db()?;
    Ok(Some((
        et,
        rows.collect::<std::result::Result<_, _>>().db()?,
    )))
}

pub fn scan_master(
    conn: &Connection,
    names: &Names,
    etype: &str,
    scan: &MasterScan,
) -> Result<Vec<Document>> {
    let Some((et, keys)) = scan_keys(conn, names, etype, scan)? else {
        return Ok(Vec::new());
    };
    let projection = projection_ids(conn, names, scan.projection.as_deref())?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let eid = eid_from_key(&key).ok_or_else(|| corrupt_key(&key))?;
        if let Some(row) = load_entity(conn, et, &key)? {
            out.push(assemble(
                conn,
                names,
                et,
                &key,
                &eid,
                &row,
                projection.as_ref(),
            )?);
        }
    }
    Ok(out)
}

pub fn corrupt_key(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        what: "entity key".into(),
        reason: format!("cannot decode eid key {key:02x?}"),
    }
}

pub fn count_master(conn: &Connection, names: &Names, etype: &str) -> Result<u64> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(0);
    };
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM entity WHERE etype = ?1")
        .db()?
        .query_row([et], |r| r.get(0))
        .db()?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub fn replace_histories(
    conn: &Connection,
    names: &Names,
    etype: &str,
    eid: &Eid,
    expected_revision: i64,
    histories: &[(String, Vec<AggregatedItem>)],
) -> Result<bool> {
    let et = names.require(conn, etype)?;
    let key = eid_key(eid);
    let Some(mut row) = load_entity(conn, et, &key)? else {
        return Ok(false);
    };
    if row.revision != expected_revision {
        return Ok(false);
    }
    let mut seq = load_seq(conn)?;
    for (attr, items) in histories {
        let at = names.require(conn, attr)?;
        conn.prepare_cached("DELETE FROM history WHERE entity = ?1 AND attr = ?2")
            .db()?
            .execute(params![row.id, at])
            .db()?;
        for item in items {
            seq += 1;
            insert_history(conn, row.id, at, seq, &item.item)?;
            if item.count > 1 {
                conn.prepare_cached("UPDATE history SET n = ?1 WHERE seq = ?2")
                    .db()?
                    .execute(params![i64::try_from(item.count).unwrap_or(i64::MAX), seq])
                    .db()?;
            }
        }
        refresh_min_t2(conn, &mut row, at, attr)?;
    }
    store_seq(conn, seq)?;
    row.revision += 1;
    store_entity(conn, et, &key, &row)?;
    Ok(true)
}

pub fn delete_old_history(
    conn: &Connection,
    names: &Names,
    etype: &str,
    attr: &str,
    older_than: DateTime<Utc>,
) -> Result<u64> {
    let (Some(et), Some(at)) = (names.id(conn, etype)?, names.id(conn, attr)?) else {
        return Ok(0);
    };
    let old = ms(older_than);
    // Candidates by the `#min_t2s` marker, like DP3's `{"#min_t2s.<a>": {$lt: t_old}}`.
    let candidates: Vec<Vec<u8>> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT ekey, min_t2s FROM entity WHERE etype = ?1 AND min_t2s IS NOT NULL",
            )
            .db()?;
        let mut rows = stmt.query([et]).db()?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().db()? {
            let m = decode_doc(&r.get::<_, Vec<u8>>(1).db()?, "#min_t2s")?;
            if let Some(Bson::DateTime(t)) = m.get(attr)
                && t.timestamp_millis() < old
            {
                out.push(r.get(0).db()?);
            }
        }
        out
    };
    let mut changed = 0u64;
    for key in candidates {
        let Some(mut row) = load_entity(conn, et, &key)? else {
            continue;
        };
        conn.prepare_cached("DELETE FROM history WHERE entity = ?1 AND attr = ?2 AND t2 < ?3")
            .db()?
            .execute(params![row.id, at, old])
            .db()?;
        refresh_min_t2(conn, &mut row, at, attr)?;
        row.revision += 1;
        store_entity(conn, et, &key, &row)?;
        changed += 1;
    }
    Ok(changed)
}

pub fn expire_ttl_tokens(
    conn: &Connection,
    names: &Names,
    etype: &str,
    now: DateTime<Utc>,
    partition: Option<(u32, u32)>,
) -> Result<Vec<Eid>> {
    check_partition(partition)?;
    let Some(et) = names.id(conn, etype)? else {
        return Ok(Vec::new());
    };
    let now = ms(now);
    let (index, count) = partition.map_or((-1i64, 1i64), |(i, c)| (i64::from(i), i64::from(c)));
    let rows: Vec<(Vec<u8>, Vec<u8>)> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT ekey, ttl FROM entity WHERE etype = ?1 AND ttl IS NOT NULL \
                 AND (?2 < 0 OR (hash IS NOT NULL AND hash % ?3 = ?2)) ORDER BY ekey",
            )
            .db()?;
        let r = stmt
            .query_map(params![et, index, count], |r| Ok((r.get(0)?, r.get(1)?)))
            .db()?;
        r.collect::<std::result::Result<_, _>>().db()?
    };
    let mut expired = Vec::new();
    for (key, ttl) in rows {
        let ttl = decode_doc(&ttl, "#ttl")?;
        let is_expired = |v: &Bson| match v {
            Bson::DateTime(t) => t.timestamp_millis() < now,
            _ => false,
        };
        if ttl.values().all(is_expired) {
            expired.push(eid_from_key(&key).ok_or_else(|| corrupt_key(&key))?);
        } else if ttl.values().any(is_expired) {
            let kept: Document = ttl.into_iter().filter(|(_, v)| !is_expired(v)).collect();
            conn.prepare_cached(
                "UPDATE entity SET ttl = ?3, revision = revision + 1 \
                 WHERE etype = ?1 AND ekey = ?2",
            )
            .db()?
            .execute(params![et, key, encode_doc(&kept)?])
            .db()?;
        }
    }
    Ok(expired)
}
