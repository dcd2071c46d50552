//! The raw datapoint log (`{etype}#raw`): append-only rows, newest first on reads.

use bson::{Bson, Document};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::SqliteStore;
use super::codec::{SqlResultExt, bson_time, decode_value, ms};
use super::master::corrupt_key;
use super::names::Names;
use crate::error::Result;
use crate::keys::{eid_from_key, eid_key};
use crate::types::RawQuery;

const COLUMNS: &str = "id, ekey, attr, src, t1, t2, c, v";

/// Rebuild the raw document in DP3's key order (`etype, eid, attr, src, v, c, t1, t2`).
fn to_doc(
    conn: &Connection,
    names: &Names,
    etype: &str,
    r: &rusqlite::Row<'_>,
) -> Result<(i64, Document)> {
    let id: i64 = r.get(0).db()?;
    let key: Vec<u8> = r.get(1).db()?;
    let eid = eid_from_key(&key).ok_or_else(|| corrupt_key(&key))?;
    let opt_time = |t: Option<i64>| t.map_or(Bson::Null, bson_time);
    let mut d = Document::new();
    d.insert("etype", etype);
    d.insert("eid", eid.to_bson());
    d.insert("attr", names.name(conn, r.get(2).db()?)?);
    d.insert(
        "src",
        r.get::<_, Option<String>>(3)
            .db()?
            .map_or(Bson::Null, Bson::String),
    );
    d.insert(
        "v",
        decode_value(&r.get::<_, Vec<u8>>(7).db()?, "raw value")?,
    );
    d.insert(
        "c",
        r.get::<_, Option<f64>>(6)
            .db()?
            .map_or(Bson::Null, Bson::Double),
    );
    d.insert("t1", opt_time(r.get(4).db()?));
    d.insert("t2", opt_time(r.get(5).db()?));
    Ok((id, d))
}

pub fn raw_get(
    conn: &Connection,
    names: &Names,
    etype: &str,
    q: &RawQuery,
) -> Result<Vec<Document>> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(Vec::new());
    };
    let attr = match &q.attr {
        Some(a) => match names.id(conn, a)? {
            Some(id) => Some(id),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let order = if q.order_by_t1 {
        "t1 DESC, id DESC"
    } else {
        "id DESC"
    };
    let limit = if q.limit == 0 {
        -1
    } else {
        i64::try_from(q.limit).unwrap_or(i64::MAX)
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM raw WHERE etype = ?1 AND (?2 IS NULL OR ekey = ?2) \
             AND (?3 IS NULL OR attr = ?3) AND (?4 IS NULL OR src = ?4) \
             ORDER BY {order} LIMIT ?5 OFFSET ?6"
        ))
        .db()?;
    let mut rows = stmt
        .query(params![
            et,
            q.eid.as_ref().map(eid_key),
            attr,
            q.src,
            limit,
            i64::try_from(q.skip).unwrap_or(i64::MAX)
        ])
        .db()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().db()? {
        out.push(to_doc(conn, names, etype, r)?.1);
    }
    Ok(out)
}

const ARCHIVE_BATCH: i64 = 1000;

pub fn archive_raw(
    store: &SqliteStore,
    etype: &str,
    older_than: DateTime<Utc>,
    sink: &mut dyn FnMut(&[Document]) -> Result<()>,
) -> Result<u64> {
    let old = ms(older_than);
    let mut after = 0i64;
    let mut total = 0u64;
    loop {
        let batch: Vec<(i64, Document)> = store.read(|conn, names| {
            let Some(et) = names.id(conn, etype)? else {
                return Ok(Vec::new());
            };
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM raw WHERE etype = ?1 AND id > ?2 \
                     AND (t1 IS NULL OR t1 < ?3) ORDER BY id LIMIT ?4"
                ))
                .db()?;
            let mut rows = stmt.query(params![et, after, old, ARCHIVE_BATCH]).db()?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().db()? {
                out.push(to_doc(conn, names, etype, r)?);
            }
            Ok(out)
        })?;
        let (Some(first), Some(last)) = (batch.first().map(|b| b.0), batch.last().map(|b| b.0))
        else {
            return Ok(total);
        };
        let docs: Vec<Document> = batch.into_iter().map(|(_, d)| d).collect();
        sink(&docs)?;
        store.write_other(|tx, names| {
            let et = names.require(tx, etype)?;
            tx.prepare_cached(
                "DELETE FROM raw WHERE etype = ?1 AND id >= ?2 AND id <= ?3 \
                 AND (t1 IS NULL OR t1 < ?4)",
            )
            .db()?
            .execute(params![et, first, last, old])
            .db()?;
            Ok(())
        })?;
        total += docs.len() as u64;
        after = last;
    }
}
