//! The snapshooter's read path: stored attributes of entities as [`StoredRecord`]s straight
//! from the plain and history rows (no BSON master-record document, no metadata decoding),
//! and eid-only scans.

use chrono::{TimeZone, Utc};
use dp3_model::{Eid, HistoryItem};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{SqlResultExt, decode_value, ms};
use super::master::{corrupt_key, projection_ids, scan_keys};
use super::names::Names;
use crate::error::{Result, StoreError};
use crate::keys::{eid_from_key, eid_key};
use crate::types::{MasterScan, RecordRead, StoredRecord};

pub fn get_records(
    conn: &Connection,
    names: &Names,
    etype: &str,
    eids: &[Eid],
    read: &RecordRead,
) -> Result<Vec<Option<StoredRecord>>> {
    let Some(et) = names.id(conn, etype)? else {
        return Ok(vec![None; eids.len()]);
    };
    // One read transaction: a consistent view of the batch, and one WAL snapshot instead of
    // one per statement. Dropping it ends it (nothing to commit).
    let _tx = conn.unchecked_transaction().db()?;
    // History windows by attribute id, in stored milliseconds (widened to whole
    // milliseconds: a store may return more items, never fewer).
    let mut windows: Vec<(i64, RowWindow)> = Vec::new();
    for (name, w) in &read.windows {
        if let Some(id) = names.id(conn, name)? {
            windows.push((id, (ms(w.t2_from), ms(w.t1_until).saturating_add(1))));
        }
    }
    let window_of = |attr: i64| windows.iter().find(|(a, _)| *a == attr).map(|(_, w)| *w);
    // Attribute ids of the projection (names never stored cannot have rows).
    let wanted = projection_ids(conn, names, read.attrs.as_deref())?;
    let mut entity = conn
        .prepare_cached("SELECT id FROM entity WHERE etype = ?1 AND ekey = ?2")
        .db()?;
    let mut plain = conn
        .prepare_cached("SELECT attr, v FROM plain WHERE etype = ?1 AND ekey = ?2")
        .db()?;
    let mut all_history = conn
        .prepare_cached("SELECT attr, seq, t1, t2, c, v FROM history WHERE entity = ?1")
        .db()?;
    // One index range per projected attribute: rows of other attributes are never read,
    // and with a window only the index range of `t2` that can count.
    let mut attr_history = conn
        .prepare_cached(
            "SELECT attr, seq, t1, t2, c, v FROM history WHERE entity = ?1 AND attr = ?2",
        )
        .db()?;
    let mut window_history = conn
        .prepare_cached(
            "SELECT attr, seq, t1, t2, c, v FROM history \
             WHERE entity = ?1 AND attr = ?2 AND t2 >= ?3 AND t1 <= ?4",
        )
        .db()?;
    let mut out = Vec::with_capacity(eids.len());
    let mut rows_buf = Vec::new();
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
        // Windowed attributes are history attributes: no plain row of theirs is read, and
        // when only they are wanted the plain table is not searched at all.
        if wanted
            .as_ref()
            .is_none_or(|w| w.iter().any(|&a| window_of(a).is_none()))
        {
            let mut rows = plain.query(params![et, key]).db()?;
            while let Some(r) = rows.next().db()? {
                let attr: i64 = r.get(0).db()?;
                if wanted.as_ref().is_some_and(|w| !w.contains(&attr)) || window_of(attr).is_some()
                {
                    continue;
                }
                let v = decode_value(blob(r, 1)?, "plain value")?;
                record.plain.push((names.name(conn, attr)?, v));
            }
        }
        match &wanted {
            None => read_rows(all_history.query([id]).db()?, &window_of, &mut rows_buf)?,
            Some(w) => {
                for &attr in w {
                    let rows = match window_of(attr) {
                        Some((from, until)) => window_history.query(params![id, attr, from, until]),
                        None => attr_history.query(params![id, attr]),
                    };
                    read_rows(rows.db()?, &window_of, &mut rows_buf)?;
                }
            }
        }
        group_rows(conn, names, &mut rows_buf, &mut record)?;
        out.push(Some(record));
    }
    Ok(out)
}

/// `(t2 from, t1 until)` in stored milliseconds, inclusive.
type RowWindow = (i64, i64);

/// Collect history rows `(attr, seq, t1, t2, c, v)` into `out`, skipping rows outside their
/// attribute's window before decoding them.
fn read_rows(
    mut rows: rusqlite::Rows<'_>,
    window_of: &impl Fn(i64) -> Option<RowWindow>,
    out: &mut Vec<(i64, i64, HistoryItem)>,
) -> Result<()> {
    while let Some(r) = rows.next().db()? {
        let attr: i64 = r.get(0).db()?;
        let (t1, t2) = (r.get::<_, i64>(2).db()?, r.get::<_, i64>(3).db()?);
        if window_of(attr).is_some_and(|(from, until)| t2 < from || t1 > until) {
            continue;
        }
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
            c: r.get::<_, Option<f64>>(4).db()?,
            v: decode_value(blob(r, 5)?, "history value")?,
        };
        out.push((attr, r.get(1).db()?, item));
    }
    Ok(())
}

/// Move collected rows into `record`, one history per attribute (by attribute id), items
/// in stored (`seq`) order: the index returns a window's rows in `t2` order.
fn group_rows(
    conn: &Connection,
    names: &Names,
    rows: &mut Vec<(i64, i64, HistoryItem)>,
    record: &mut StoredRecord,
) -> Result<()> {
    rows.sort_by_key(|(attr, seq, _)| (*attr, *seq));
    let mut current: Option<(i64, Vec<HistoryItem>)> = None;
    for (attr, _, item) in rows.drain(..) {
        if current.as_ref().is_none_or(|(a, _)| *a != attr) {
            if let Some((a, items)) = current.take() {
                record.history.push((names.name(conn, a)?, items));
            }
            current = Some((attr, Vec::new()));
        }
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
