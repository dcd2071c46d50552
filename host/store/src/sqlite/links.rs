//! The link cache (DP3's `#cache#Link`, data-model.md §7.4). Plain links never expire
//! (stored with `ttl = i64::MAX`); "live" means `ttl >= now`.

use chrono::{DateTime, Utc};
use dp3_model::Eid;
use rusqlite::{Connection, params};

use super::codec::{SqlResultExt, chrono_time, ms};
use super::master::corrupt_key;
use crate::error::Result;
use crate::keys::{eid_from_key, eid_key};
use crate::types::{LinkEntry, LinkKey, LinkOp};

const NEVER: i64 = i64::MAX;

/// `(from_etype, from_key, using_attr, to_etype, to_key, ttl)` as stored.
type LinkRow = (String, Vec<u8>, String, String, Vec<u8>, i64);

fn upsert(
    conn: &Connection,
    from: &LinkKey,
    using_attr: &str,
    to: &LinkKey,
    ttl: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO link(from_etype, from_key, using_attr, to_etype, to_key, ttl) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT(from_etype, from_key, using_attr, to_etype, to_key) \
         DO UPDATE SET ttl = max(ttl, excluded.ttl)",
    )
    .db()?
    .execute(params![
        from.etype,
        eid_key(&from.eid),
        using_attr,
        to.etype,
        eid_key(&to.eid),
        ttl
    ])
    .db()?;
    Ok(())
}

pub fn apply_link_op(conn: &Connection, op: &LinkOp) -> Result<()> {
    match op {
        LinkOp::Replace {
            from,
            using_attr,
            targets,
        } => {
            let from_key = eid_key(&from.eid);
            let existing: Vec<(String, Vec<u8>)> = {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT to_etype, to_key FROM link \
                         WHERE from_etype = ?1 AND from_key = ?2 AND using_attr = ?3",
                    )
                    .db()?;
                let rows = stmt
                    .query_map(params![from.etype, from_key, using_attr], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .db()?;
                rows.collect::<std::result::Result<_, _>>().db()?
            };
            for (to_etype, to_key) in existing {
                let kept = targets
                    .iter()
                    .any(|t| t.etype == to_etype && eid_key(&t.eid) == to_key);
                if !kept {
                    conn.prepare_cached(
                        "DELETE FROM link WHERE from_etype = ?1 AND from_key = ?2 \
                         AND using_attr = ?3 AND to_etype = ?4 AND to_key = ?5",
                    )
                    .db()?
                    .execute(params![from.etype, from_key, using_attr, to_etype, to_key])
                    .db()?;
                }
            }
            for t in targets {
                upsert(conn, from, using_attr, t, NEVER)?;
            }
            Ok(())
        }
        LinkOp::Upsert {
            from,
            to,
            using_attr,
            ttl,
        } => upsert(conn, from, using_attr, to, ms(*ttl)),
    }
}

/// `(from_etype, from_key, using_attr)` of live entries pointing at an entity.
pub fn live_sources(
    conn: &Connection,
    to_etype: &str,
    to_key: &[u8],
    now: i64,
) -> Result<Vec<(String, Vec<u8>, String)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT from_etype, from_key, using_attr FROM link \
             WHERE to_etype = ?1 AND to_key = ?2 AND ttl >= ?3",
        )
        .db()?;
    let rows = stmt
        .query_map(params![to_etype, to_key, now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .db()?;
    rows.collect::<std::result::Result<_, _>>().db()
}

pub fn delete_entity_links(conn: &Connection, etype: &str, key: &[u8]) -> Result<()> {
    conn.prepare_cached("DELETE FROM link WHERE from_etype = ?1 AND from_key = ?2")
        .db()?
        .execute(params![etype, key])
        .db()?;
    conn.prepare_cached("DELETE FROM link WHERE to_etype = ?1 AND to_key = ?2")
        .db()?
        .execute(params![etype, key])
        .db()?;
    Ok(())
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<LinkRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_entry(row: LinkRow) -> Result<LinkEntry> {
    let (from_etype, from_key, using_attr, to_etype, to_key, ttl) = row;
    Ok(LinkEntry {
        from: LinkKey::new(
            from_etype,
            eid_from_key(&from_key).ok_or_else(|| corrupt_key(&from_key))?,
        ),
        to: LinkKey::new(
            to_etype,
            eid_from_key(&to_key).ok_or_else(|| corrupt_key(&to_key))?,
        ),
        using_attr,
        ttl: (ttl != NEVER).then(|| chrono_time(ttl)),
    })
}

const COLUMNS: &str = "from_etype, from_key, using_attr, to_etype, to_key, ttl";

pub fn links_to(
    conn: &Connection,
    to: &LinkKey,
    using_attr: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<LinkEntry>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM link WHERE to_etype = ?1 AND to_key = ?2 \
             AND (?3 IS NULL OR using_attr = ?3) AND ttl >= ?4 \
             ORDER BY from_etype, from_key, using_attr"
        ))
        .db()?;
    let rows = stmt
        .query_map(
            params![to.etype, eid_key(&to.eid), using_attr, ms(now)],
            entry,
        )
        .db()?;
    let rows: Vec<_> = rows.collect::<std::result::Result<_, _>>().db()?;
    rows.into_iter().map(to_entry).collect()
}

pub fn links_using(
    conn: &Connection,
    using_attrs: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<LinkEntry>> {
    let mut out = Vec::new();
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM link WHERE using_attr = ?1 AND ttl >= ?2 \
             ORDER BY from_etype, from_key, to_etype, to_key"
        ))
        .db()?;
    for attr in using_attrs {
        let rows = stmt.query_map(params![attr, ms(now)], entry).db()?;
        let rows: Vec<_> = rows.collect::<std::result::Result<_, _>>().db()?;
        for r in rows {
            out.push(to_entry(r)?);
        }
    }
    Ok(out)
}

pub fn referenced_eids(conn: &Connection, etype: &str, now: DateTime<Utc>) -> Result<Vec<Eid>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT DISTINCT to_key FROM link WHERE to_etype = ?1 AND ttl >= ?2 ORDER BY to_key",
        )
        .db()?;
    let rows = stmt
        .query_map(params![etype, ms(now)], |r| r.get::<_, Vec<u8>>(0))
        .db()?;
    let keys: Vec<Vec<u8>> = rows.collect::<std::result::Result<_, _>>().db()?;
    keys.iter()
        .map(|k| eid_from_key(k).ok_or_else(|| corrupt_key(k)))
        .collect()
}
