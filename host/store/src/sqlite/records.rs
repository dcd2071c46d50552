//! The snapshooter's read path: stored attributes of entities as [`StoredRecord`]s straight
//! from the plain and history rows (no BSON master-record document, no metadata decoding),
//! and eid-only scans.

use chrono::{TimeZone, Utc};
use dp3_model::{Eid, HistoryItem};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{SqlResultExt, decode_value};
use super::master::{corrupt_key, scan_keys};
use super::names::Names;
use crate::error::{Result, StoreError};
use crate::keys::{eid_from_key, eid_key};
use crate::types::{MasterScan, StoredRecord};

pub fn get_records(
    conn: &Connection,
    names: &Names,
    etype: &str,
    eids: &[Eid],
    attrs: Option<&[String]>,
) -> Result<Vec<Option<StoredRecord>>> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(vec![None; eids.len()]);
    };
    // One read transaction: a consistent view of the batch, and one WAL snapshot instead of
    // one per statement. Dropping it ends it (nothing to commit).
    let _tx = conn.unchecked_transaction().db()?;
    // Attribute ids of the projection (names never stored cannot have rows).
    let wanted: Option<Vec<i64>> = match attrs {
        Some(a) => {
            let mut ids = Vec::with_capacity(a.len());
            for name in a {
                if let Some(id) = names.id(conn, name)?
                    && !ids.contains(&id)
                {
                    ids.push(id);
                }
            }
            Some(ids)
        }
        None => None,
    };
    let mut entity = conn
        .prepare_cached("SELECT id FROM entity WHERE etype = ?1 AND ekey = ?2")
        .db()?;
    let mut plain = conn
        .prepare_cached("SELECT attr, v FROM plain WHERE etype = ?1 AND ekey = ?2")
        .db()?;
    let mut all_history = conn
        .prepare_cached(
            "SELECT attr, t1, t2, c, v FROM history WHERE entity = ?1 ORDER BY attr, seq",
        )
        .db()?;
    // One index range per projected attribute: rows of other attributes are never read.
    let mut attr_history = conn
        .prepare_cached(
            "SELECT attr, t1, t2, c, v FROM history WHERE entity = ?1 AND attr = ?2 ORDER BY seq",
        )
        .db()?;
    let mut out = Vec::with_capacity(eids.len());
    for eid in eids {
        let key = eid_key(eid);
        let id: Option<i64> = entity
            .query_row(params![et, key], |r| r.get(0))
            .optional()
            .db()?;
        let Some(id) = id else {
            out.push(None);
            continue;
        };
        let mut record = StoredRecord::default();
        if wanted.as_ref().is_none_or(|w| !w.is_empty()) {
            let mut rows = plain.query(params![et, key]).db()?;
            while let Some(r) = rows.next().db()? {
                let attr: i64 = r.get(0).db()?;
                if wanted.as_ref().is_some_and(|w| !w.contains(&attr)) {
                    continue;
                }
                let v = decode_value(blob(r, 1)?, "plain value")?;
                record.plain.push((names.name(conn, attr)?, v));
            }
        }
        match &wanted {
            None => {
                let rows = all_history.query([id]).db()?;
                read_history(conn, names, rows, &mut record)?;
            }
            Some(w) => {
                for attr in w {
                    let rows = attr_history.query(params![id, attr]).db()?;
                    read_history(conn, names, rows, &mut record)?;
                }
            }
        }
        out.push(Some(record));
    }
    Ok(out)
}

/// Append history rows `(attr, t1, t2, c, v)` ordered by attribute to `record`.
fn read_history(
    conn: &Connection,
    names: &Names,
    mut rows: rusqlite::Rows<'_>,
    record: &mut StoredRecord,
) -> Result<()> {
    let mut current: Option<(i64, Vec<HistoryItem>)> = None;
    while let Some(r) = rows.next().db()? {
        let attr: i64 = r.get(0).db()?;
        if current.as_ref().is_none_or(|(a, _)| *a != attr) {
            if let Some((a, items)) = current.take() {
                record.history.push((names.name(conn, a)?, items));
            }
            current = Some((attr, Vec::new()));
        }
        let (t1, t2) = (r.get::<_, i64>(1).db()?, r.get::<_, i64>(2).db()?);
        // As the master-record path: items whose times chrono cannot represent are skipped.
        let (Some(t1), Some(t2)) = (
            Utc.timestamp_millis_opt(t1).single(),
            Utc.timestamp_millis_opt(t2).single(),
        ) else {
            continue;
        };
        let item = HistoryItem {
            t1,
            t2,
            c: r.get::<_, Option<f64>>(3).db()?,
            v: decode_value(blob(r, 4)?, "history value")?,
        };
        if let Some((_, items)) = current.as_mut() {
            items.push(item);
        }
    }
    if let Some((a, items)) = current.take() {
        record.history.push((names.name(conn, a)?, items));
    }
    Ok(())
}

/// A blob column borrowed from the row (no copy per value).
fn blob<'r>(r: &'r Row<'_>, i: usize) -> Result<&'r [u8]> {
    match r.get_ref(i).db()? {
        ValueRef::Blob(b) => Ok(b),
        other => Err(StoreError::Corrupt {
            what: "stored value".into(),
            reason: format!("expected a blob, found {:?}", other.data_type()),
        }),
    }
}

pub fn scan_eids(
    conn: &Connection,
    names: &Names,
    etype: &str,
    scan: &MasterScan,
) -> Result<Vec<Eid>> {
    let Some((_, keys)) = scan_keys(conn, names, etype, scan)? else {
        return Ok(Vec::new());
    };
    keys.iter()
        .map(|key| eid_from_key(key).ok_or_else(|| corrupt_key(key)))
        .collect()
}
