//! The write path: one transaction per batch; runs of entity writes are stable-sorted by
//! key (same-entity order kept) and merged per entity so each entity row is read and written
//! once; history items and raw datapoints are appended with cached prepared statements.

use bson::{Bson, Document};
use chrono::Utc;
use dp3_model::{DataPoint, Eid};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, params};

use super::codec::{SqlResultExt, bson_time, encode_value, ms, sql_blob, sql_int, sql_opt_int};
use super::entity_cache::EntityCache;
use super::links;
use super::master::{self, EntityRow};
use super::meta;
use super::names::Names;
use crate::error::{Result, StoreError};
use crate::keys::eid_key;
use crate::types::{ApplyStats, EntityWrite, WriteBatch, WriteOp};

/// Every entity type and attribute name the batch writes (to intern before the
/// transaction).
pub fn batch_names(batch: &WriteBatch) -> impl Iterator<Item = &str> {
    let ops = batch
        .ops
        .iter()
        .flat_map(|op| -> Box<dyn Iterator<Item = &str>> {
            match op {
                WriteOp::Entity(w) => Box::new(
                    std::iter::once(w.etype.as_str())
                        .chain(w.plain.iter().map(|(a, _, _)| a.as_str()))
                        .chain(w.history.iter().map(|(a, _)| a.as_str())),
                ),
                _ => Box::new(std::iter::empty()),
            }
        });
    let raw = batch
        .raw
        .iter()
        .flat_map(|dp| [dp.etype.as_str(), dp.attr.as_str()]);
    ops.chain(raw)
}

/// Rows per multi-row `INSERT` of history items and raw datapoints: one statement step per
/// 64 rows instead of one per row (the per-statement work of stepping, resetting and
/// binding was about as large as the B-tree work of appending these narrow rows).
const ROWS_PER_INSERT: usize = 64;

/// `INSERT INTO <table>(<columns>) VALUES (?, ...), ... ` with `rows` rows.
fn multi_insert_sql(table_columns: &str, columns: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; columns].join(", "));
    format!(
        "INSERT INTO {table_columns} VALUES {}",
        vec![one; rows].join(", ")
    )
}

/// Buffers rows of one table and inserts them `ROWS_PER_INSERT` at a time.
struct RowInserter<'a> {
    table_columns: &'static str,
    columns: usize,
    multi_sql: String,
    pending: Vec<ToSqlOutput<'a>>,
}

impl<'a> RowInserter<'a> {
    fn new(table_columns: &'static str, columns: usize) -> Self {
        RowInserter {
            table_columns,
            columns,
            multi_sql: multi_insert_sql(table_columns, columns, ROWS_PER_INSERT),
            pending: Vec::with_capacity(columns * ROWS_PER_INSERT),
        }
    }

    /// Queue one row (`columns` values); inserts a full chunk.
    fn push(
        &mut self,
        conn: &Connection,
        row: impl IntoIterator<Item = ToSqlOutput<'a>>,
    ) -> Result<()> {
        self.pending.extend(row);
        debug_assert_eq!(self.pending.len() % self.columns, 0);
        if self.pending.len() >= self.columns * ROWS_PER_INSERT {
            let mut stmt = conn.prepare_cached(&self.multi_sql).db()?;
            execute_bound(&mut stmt, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Insert what is queued (before anything in the transaction reads the table, and at
    /// the end of the batch).
    fn flush(&mut self, conn: &Connection) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut stmt = conn
            .prepare_cached(&multi_insert_sql(self.table_columns, self.columns, 1))
            .db()?;
        for row in self.pending.chunks(self.columns) {
            execute_bound(&mut stmt, row)?;
        }
        self.pending.clear();
        Ok(())
    }
}

fn execute_bound(stmt: &mut rusqlite::Statement<'_>, values: &[ToSqlOutput<'_>]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, v).db()?;
    }
    stmt.raw_execute().db()?;
    Ok(())
}

const RAW_COLUMNS: &str = "raw(etype, ekey, attr, src, t1, t2, c, v)";

const INSERT_PLAIN_SQL: &str =
    "INSERT OR REPLACE INTO plain(etype, ekey, attr, v, ts) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Statements of the hot path, prepared once per batch, and a per-batch memo of name ids
/// (statement-cache and name-cache lookups per row were a measurable share of CPU time).
struct Hot<'c> {
    load_entity: rusqlite::CachedStatement<'c>,
    store_entity: rusqlite::CachedStatement<'c>,
    update_entity: rusqlite::CachedStatement<'c>,
    insert_plain: rusqlite::CachedStatement<'c>,
    history: RowInserter<'c>,
    raw: RowInserter<'c>,
    names: Vec<(String, i64)>,
}

impl<'c> Hot<'c> {
    fn new(conn: &'c Connection) -> Result<Self> {
        Ok(Hot {
            load_entity: conn.prepare_cached(master::LOAD_ENTITY_SQL).db()?,
            store_entity: conn.prepare_cached(master::STORE_ENTITY_SQL).db()?,
            update_entity: conn.prepare_cached(master::UPDATE_ENTITY_SQL).db()?,
            insert_plain: conn.prepare_cached(INSERT_PLAIN_SQL).db()?,
            history: RowInserter::new(master::HISTORY_COLUMNS, 7),
            raw: RowInserter::new(RAW_COLUMNS, 8),
            names: Vec::new(),
        })
    }

    fn name(&mut self, conn: &Connection, names: &Names, name: &str) -> Result<i64> {
        if let Some((_, id)) = self.names.iter().find(|(n, _)| n == name) {
            return Ok(*id);
        }
        let id = names.require(conn, name)?;
        self.names.push((name.to_owned(), id));
        Ok(id)
    }
}

pub fn apply(
    conn: &Connection,
    names: &Names,
    entities: &mut EntityCache,
    batch: &WriteBatch,
) -> Result<ApplyStats> {
    let mut hot = Hot::new(conn)?;
    let mut stats = ApplyStats::default();
    let mut seq = master::load_seq(conn)?;
    let seq_before = seq;
    let ops = &batch.ops;
    let mut i = 0;
    while i < ops.len() {
        match &ops[i] {
            WriteOp::Entity(_) => {
                // A run of consecutive entity writes may be reordered across entities.
                let mut run: Vec<(i64, Vec<u8>, &EntityWrite)> = Vec::new();
                while let Some(WriteOp::Entity(w)) = ops.get(i) {
                    run.push((hot.name(conn, names, &w.etype)?, eid_key(&w.eid), w));
                    i += 1;
                }
                run.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
                let mut start = 0;
                while start < run.len() {
                    let mut end = start + 1;
                    while end < run.len()
                        && run[end].0 == run[start].0
                        && run[end].1 == run[start].1
                    {
                        end += 1;
                    }
                    let (et, key) = (run[start].0, &run[start].1);
                    let writes: Vec<&EntityWrite> = run[start..end].iter().map(|r| r.2).collect();
                    apply_entity(
                        conn, names, &mut hot, entities, et, key, &writes, &mut seq, &mut stats,
                    )?;
                    start = end;
                }
            }
            WriteOp::Delete { etype, eid } => {
                // The cascade reads and deletes history rows.
                hot.history.flush(conn)?;
                if delete_entity(conn, names, entities, etype, eid)? {
                    stats.entities_deleted += 1;
                }
                i += 1;
            }
            WriteOp::Link(op) => {
                links::apply_link_op(conn, op)?;
                i += 1;
            }
        }
    }
    hot.history.flush(conn)?;
    if seq != seq_before {
        master::store_seq(conn, seq)?;
    }
    for dp in &batch.raw {
        append_raw(conn, names, &mut hot, dp)?;
        stats.raw_datapoints += 1;
    }
    hot.raw.flush(conn)?;
    for (key, doc) in &batch.meta {
        meta::put(conn, key, doc)?;
    }
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
fn apply_entity(
    conn: &Connection,
    names: &Names,
    hot: &mut Hot<'_>,
    entities: &mut EntityCache,
    et: i64,
    key: &[u8],
    writes: &[&EntityWrite],
    seq: &mut i64,
    stats: &mut ApplyStats,
) -> Result<()> {
    if writes.iter().all(|w| w.is_empty()) {
        return Ok(());
    }
    let (row, created) = match entities.get_mut(et, key) {
        Some(row) => (row, false),
        None => match master::load_entity_with(&mut hot.load_entity, et, key)? {
            Some(row) => (entities.insert(et, key, row), false),
            None => {
                let row = EntityRow {
                    id: master::next_entity_id(conn)?,
                    ..EntityRow::default()
                };
                (entities.insert(et, key, row), true)
            }
        },
    };
    for w in writes {
        if let Some(c) = w.create {
            row.hash = Some(i64::from(c.hash));
            row.time_created = Some(ms(c.time_created));
        }
        for (attr, v, ts) in &w.plain {
            let at = hot.name(conn, names, attr)?;
            hot.insert_plain
                .execute(params![et, key, at, encode_value(v)?, ms(*ts)])
                .db()?;
        }
        for (attr, item) in &w.history {
            let at = hot.name(conn, names, attr)?;
            *seq += 1;
            hot.history
                .push(conn, master::history_row(row.id, at, *seq, item)?)?;
            let t2 = ms(item.t2);
            let lower = match row.min_t2s.get(attr) {
                Some(Bson::DateTime(cur)) => cur.timestamp_millis() > t2,
                _ => true,
            };
            if lower {
                row.min_t2s.insert(attr.as_str(), bson_time(t2));
            }
            stats.history_items += 1;
        }
        if !w.ttl.is_empty() {
            let ttl = row.ttl.get_or_insert_with(Document::new);
            for (name, expiry) in &w.ttl {
                let raise = match ttl.get(name) {
                    Some(Bson::DateTime(cur)) => cur.timestamp_millis() < ms(*expiry),
                    _ => true,
                };
                if raise {
                    ttl.insert(name.as_str(), bson_time(ms(*expiry)));
                }
            }
        }
    }
    row.revision += 1;
    // The row is changed in the cache before the transaction commits: a failed batch drops
    // the whole cache (see `SqliteStore::write_touching`).
    if created {
        master::store_entity_with(&mut hot.store_entity, et, key, row)?;
    } else if master::store_entity_with(&mut hot.update_entity, et, key, row)? == 0 {
        // The row was read or cached in this transaction, so it cannot be gone; if it is,
        // fail the batch (it is retried with an empty cache) rather than write a stale row.
        return Err(StoreError::backend(
            "sqlite",
            format!(
                "entity row {} disappeared while the batch was written",
                row.id
            ),
        ));
    }
    stats.entities_written += 1;
    if created {
        stats.entities_created += 1;
    }
    Ok(())
}

fn append_raw<'b>(
    conn: &Connection,
    names: &Names,
    hot: &mut Hot<'b>,
    dp: &'b DataPoint,
) -> Result<()> {
    let et = hot.name(conn, names, &dp.etype)?;
    let at = hot.name(conn, names, &dp.attr)?;
    let src = match &dp.src {
        Some(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        None => ToSqlOutput::Owned(Value::Null),
    };
    let row = [
        sql_int(et),
        sql_blob(eid_key(&dp.eid)),
        sql_int(at),
        src,
        sql_opt_int(dp.t1.map(ms)),
        sql_opt_int(dp.t2.map(ms)),
        ToSqlOutput::Owned(Value::Real(dp.c)),
        sql_blob(encode_value(&dp.v)?),
    ];
    hot.raw.push(conn, row)
}

/// Delete an entity with DP3's cascade (data-model.md §7.5). Returns whether a master
/// record existed.
fn delete_entity(
    conn: &Connection,
    names: &Names,
    entities: &mut EntityCache,
    etype: &str,
    eid: &Eid,
) -> Result<bool> {
    let key = eid_key(eid);
    let mut existed = false;
    if let Some(et) = names.id(conn, etype)? {
        entities.remove(et, &key);
        if let Some(row) = master::load_entity(conn, et, &key)? {
            conn.prepare_cached("DELETE FROM history WHERE entity = ?1")
                .db()?
                .execute([row.id])
                .db()?;
        }
        existed = conn
            .prepare_cached("DELETE FROM entity WHERE etype = ?1 AND ekey = ?2")
            .db()?
            .execute(params![et, key])
            .db()?
            > 0;
        for table in ["plain", "snapshot", "snapshot_latest"] {
            conn.prepare_cached(&format!(
                "DELETE FROM {table} WHERE etype = ?1 AND ekey = ?2"
            ))
            .db()?
            .execute(params![et, key])
            .db()?;
        }
    }
    let now = ms(Utc::now());
    for (from_etype, from_key, using_attr) in links::live_sources(conn, etype, &key, now)? {
        let attr = using_attr
            .split_once('#')
            .map_or(using_attr.as_str(), |(_, a)| a);
        if let Some(from_et) = names.id(conn, &from_etype)? {
            entities.remove(from_et, &from_key);
        }
        remove_link_values(conn, names, &from_etype, &from_key, attr, eid)?;
    }
    links::delete_entity_links(conn, etype, &key)?;
    Ok(existed)
}

/// Whether a stored link value (`{eid, ...}` or an array of them) references `eid`.
fn references(v: &Bson, eid: &Eid) -> bool {
    match v {
        Bson::Document(d) => d.get("eid").and_then(Eid::from_bson).as_ref() == Some(eid),
        Bson::Array(items) => items.iter().any(|i| references(i, eid)),
        _ => false,
    }
}

/// Remove link values pointing at `deleted` from one attribute of one source record.
fn remove_link_values(
    conn: &Connection,
    names: &Names,
    etype: &str,
    key: &[u8],
    attr: &str,
    deleted: &Eid,
) -> Result<()> {
    let (Some(et), Some(at)) = (names.id(conn, etype)?, names.id(conn, attr)?) else {
        return Ok(());
    };
    let Some(mut row) = master::load_entity(conn, et, key)? else {
        return Ok(());
    };
    let mut changed = false;
    // observations: drop whole datapoints referencing the deleted eid
    let doomed: Vec<i64> = {
        let mut stmt = conn
            .prepare_cached("SELECT seq, v FROM history WHERE entity = ?1 AND attr = ?2")
            .db()?;
        let mut rows = stmt.query(params![row.id, at]).db()?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().db()? {
            let v = super::codec::decode_value(&r.get::<_, Vec<u8>>(1).db()?, "history value")?;
            if references(&v, deleted) {
                out.push(r.get(0).db()?);
            }
        }
        out
    };
    for s in &doomed {
        conn.prepare_cached("DELETE FROM history WHERE seq = ?1")
            .db()?
            .execute([s])
            .db()?;
    }
    if !doomed.is_empty() {
        master::refresh_min_t2(conn, &mut row, at, attr)?;
        changed = true;
    }
    // plain: unset a single link, filter an array/set of links
    let plain: Option<Vec<u8>> = rusqlite::OptionalExtension::optional(
        conn.prepare_cached("SELECT v FROM plain WHERE etype = ?1 AND ekey = ?2 AND attr = ?3")
            .db()?
            .query_row(params![et, key, at], |r| r.get(0)),
    )
    .db()?;
    if let Some(bytes) = plain {
        let v = super::codec::decode_value(&bytes, "plain value")?;
        let replacement = match &v {
            Bson::Document(_) if references(&v, deleted) => Some(None),
            Bson::Array(items) if items.iter().any(|i| references(i, deleted)) => {
                let kept: Vec<Bson> = items
                    .iter()
                    .filter(|i| !references(i, deleted))
                    .cloned()
                    .collect();
                Some((!kept.is_empty()).then_some(Bson::Array(kept)))
            }
            _ => None,
        };
        match replacement {
            Some(None) => {
                conn.prepare_cached(
                    "DELETE FROM plain WHERE etype = ?1 AND ekey = ?2 AND attr = ?3",
                )
                .db()?
                .execute(params![et, key, at])
                .db()?;
                changed = true;
            }
            Some(Some(kept)) => {
                conn.prepare_cached(
                    "UPDATE plain SET v = ?4 WHERE etype = ?1 AND ekey = ?2 AND attr = ?3",
                )
                .db()?
                .execute(params![et, key, at, encode_value(&kept)?])
                .db()?;
                changed = true;
            }
            None => {}
        }
    }
    if changed {
        row.revision += 1;
        master::store_entity(conn, et, key, &row)?;
    }
    Ok(())
}
