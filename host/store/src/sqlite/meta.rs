//! Key/value metadata and run records of periodic jobs (DP3's `#metadata`).

use bson::{Bson, Document};
use rusqlite::{Connection, OptionalExtension, params};

use super::codec::{SqlResultExt, decode_doc, encode_doc, ms};
use crate::error::{Result, StoreError};
use crate::types::RunMetadataQuery;

pub fn get(conn: &Connection, key: &str) -> Result<Option<Document>> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT doc FROM meta WHERE key = ?1")
        .db()?
        .query_row([key], |r| r.get(0))
        .optional()
        .db()?;
    bytes
        .map(|b| decode_doc(&b, &format!("metadata '{key}'")))
        .transpose()
}

pub fn put(conn: &Connection, key: &str, value: &Document) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta(key, doc) VALUES (?1, ?2)")
        .db()?
        .execute(params![key, encode_doc(value)?])
        .db()?;
    Ok(())
}

pub fn list(conn: &Connection, prefix: &str) -> Result<Vec<(String, Document)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key, doc FROM meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
        )
        .db()?;
    let rows = stmt
        .query_map([prefix], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .db()?;
    let mut out = Vec::new();
    for r in rows {
        let (k, b) = r.db()?;
        let d = decode_doc(&b, &format!("metadata '{k}'"))?;
        out.push((k, d));
    }
    Ok(out)
}

pub fn delete(conn: &Connection, key: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM meta WHERE key = ?1")
        .db()?
        .execute([key])
        .db()?;
    Ok(())
}

fn run_columns(doc: &Document) -> Result<(String, Option<String>, Option<i64>)> {
    let id = match doc.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        _ => {
            return Err(StoreError::InvalidQuery(
                "run metadata document needs a string '_id'".into(),
            ));
        }
    };
    let module = doc.get_str("#module").ok().map(str::to_owned);
    let time = match doc.get("#time_created") {
        Some(Bson::DateTime(t)) => Some(t.timestamp_millis()),
        _ => None,
    };
    Ok((id, module, time))
}

fn save_run(conn: &Connection, doc: &Document) -> Result<()> {
    let (id, module, time) = run_columns(doc)?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO run_meta(id, module, time_created, doc) VALUES (?1, ?2, ?3, ?4)",
    )
    .db()?
    .execute(params![id, module, time, encode_doc(doc)?])
    .db()?;
    Ok(())
}

pub fn insert_run(conn: &Connection, doc: &Document) -> Result<()> {
    save_run(conn, doc)
}

/// Set a possibly dotted path (`a.b`) in a document, creating sub-documents.
fn set_path(doc: &mut Document, path: &str, v: Bson) {
    match path.split_once('.') {
        None => {
            doc.insert(path, v);
        }
        Some((head, rest)) => {
            if !matches!(doc.get(head), Some(Bson::Document(_))) {
                doc.insert(head, Document::new());
            }
            if let Some(Bson::Document(sub)) = doc.get_mut(head) {
                set_path(sub, rest, v);
            }
        }
    }
}

fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    match path.split_once('.') {
        None => doc.get(path),
        Some((head, rest)) => match doc.get(head) {
            Some(Bson::Document(sub)) => get_path(sub, rest),
            _ => None,
        },
    }
}

fn add(a: Option<&Bson>, b: &Bson, path: &str) -> Result<Bson> {
    use Bson::*;
    Ok(match (a, b) {
        (None | Some(Null), n @ (Int32(_) | Int64(_) | Double(_))) => n.clone(),
        (Some(Int32(x)), Int32(y)) => x
            .checked_add(*y)
            .map_or(Int64(i64::from(*x) + i64::from(*y)), Int32),
        (Some(x @ (Int32(_) | Int64(_))), y @ (Int32(_) | Int64(_))) => Int64(
            dp3_model::value::as_int(x)
                .unwrap_or(0)
                .saturating_add(dp3_model::value::as_int(y).unwrap_or(0)),
        ),
        (Some(x), y) => match (dp3_model::value::as_f64(x), dp3_model::value::as_f64(y)) {
            (Some(x), Some(y)) => Double(x + y),
            _ => {
                return Err(StoreError::InvalidQuery(format!(
                    "cannot $inc non-numeric field '{path}'"
                )));
            }
        },
        (None, _) => {
            return Err(StoreError::InvalidQuery(format!(
                "$inc of '{path}' needs a number"
            )));
        }
    })
}

pub fn update_run(conn: &Connection, id: &str, set: &Document, inc: &Document) -> Result<()> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT doc FROM run_meta WHERE id = ?1")
        .db()?
        .query_row([id], |r| r.get(0))
        .optional()
        .db()?;
    // Like MongoDB's update with upsert: a missing record is created.
    let mut doc = match bytes {
        Some(b) => decode_doc(&b, "run metadata")?,
        None => {
            let mut d = Document::new();
            d.insert("_id", id);
            d
        }
    };
    for (k, v) in set {
        set_path(&mut doc, k, v.clone());
    }
    for (k, v) in inc {
        let sum = add(get_path(&doc, k), v, k)?;
        set_path(&mut doc, k, sum);
    }
    save_run(conn, &doc)
}

pub fn query_runs(conn: &Connection, q: &RunMetadataQuery) -> Result<Vec<Document>> {
    let dir = if q.newest_first { "DESC" } else { "ASC" };
    let limit = if q.limit == 0 {
        -1
    } else {
        i64::try_from(q.limit).unwrap_or(i64::MAX)
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT doc FROM run_meta WHERE (?1 IS NULL OR module = ?1) \
             AND (?2 IS NULL OR time_created >= ?2) AND (?3 IS NULL OR time_created <= ?3) \
             ORDER BY time_created {dir}, id {dir} LIMIT ?4 OFFSET ?5"
        ))
        .db()?;
    let rows = stmt
        .query_map(
            params![
                q.module,
                q.from.map(ms),
                q.to.map(ms),
                limit,
                i64::try_from(q.skip).unwrap_or(i64::MAX)
            ],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .db()?;
    let mut out = Vec::new();
    for r in rows {
        out.push(decode_doc(&r.db()?, "run metadata")?);
    }
    Ok(out)
}
