//! Storage for DP3: master records, raw datapoints, snapshots, the link cache and metadata.
//!
//! [`Store`] is the one interface every other room uses; backends implement it:
//! [`sqlite::SqliteStore`] (the embedded default) and the MongoDB backend (crate
//! `dp3-store-mongo`, DP3's collection layout). [`filter`] evaluates MongoDB query documents
//! in Rust so the embedded store answers `generic_filter` exactly like MongoDB.
//!
//! The trait is synchronous on purpose: hooks and the task executor run on worker threads
//! (never on the async reactor), SQLite is a blocking library, and the HTTP layer calls the
//! store through `spawn_blocking`. The MongoDB backend drives the async driver on its own
//! runtime.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod filter;
pub mod keys;
pub mod sqlite;
pub mod types;

pub use error::{Result, StoreError};
pub use types::*;

use bson::Document;
use chrono::{DateTime, Utc};
use dp3_model::Eid;

/// Everything the pipeline, snapshots, background jobs and the HTTP API need from storage.
///
/// Documents returned by master-record reads have DP3's master-record shape
/// (data-model.md §8.3); snapshot documents have DP3's snapshot shape (§5.6).
pub trait Store: Send + Sync {
    // ---------------------------------------------------------------- write path

    /// Apply a batch of writes atomically (all or nothing). Operations on the same entity
    /// are applied in batch order; the backend may reorder operations of different entities
    /// (e.g. sort by key) for throughput. `meta` entries are written in the same transaction
    /// (the pipeline records its applied-task watermarks there).
    fn apply(&self, batch: &WriteBatch) -> Result<ApplyStats>;

    // ---------------------------------------------------------------- master records

    /// Whether a master record exists.
    fn exists(&self, etype: &str, eid: &Eid) -> Result<bool>;

    /// The master record in DP3's shape (`_id`, `#hash`, `#time_created`, `#revision`,
    /// `#min_t2s`, `#ttl`, plain `{v, ts_last_update}`, observation and timeseries arrays in
    /// stored order), or `None`.
    fn get_master(&self, etype: &str, eid: &Eid) -> Result<Option<Document>>;

    /// [`Store::get_master`] with only the given attributes (metadata keys and `_id` are
    /// always included). Backends that cannot project cheaply return the whole record.
    fn get_master_projected(
        &self,
        etype: &str,
        eid: &Eid,
        attrs: &[String],
    ) -> Result<Option<Document>> {
        let _ = attrs;
        self.get_master(etype, eid)
    }

    /// Stream master records of one entity type, ordered by eid key, starting after
    /// `after` (exclusive), at most `limit`. Restrict to a hash partition with
    /// `partition = Some((index, count))` (`#hash mod count == index`); records lacking
    /// `#hash` are never in a partition. `projection` limits attributes (metadata keys
    /// starting with `#` and `_id` are always included); `None` means everything.
    fn scan_master(&self, etype: &str, scan: &MasterScan) -> Result<Vec<Document>>;

    /// Number of master records of an entity type (DP3's estimated count).
    fn count_master(&self, etype: &str) -> Result<u64>;

    /// The stored attributes of several entities of one type, in `eids` order (`None` for
    /// a missing entity), without building master-record documents: the snapshooter's
    /// read path. `read` limits the attributes and the history items (see [`RecordRead`]).
    /// The default builds them from master records.
    fn get_records(
        &self,
        etype: &str,
        eids: &[Eid],
        read: &RecordRead,
    ) -> Result<Vec<Option<StoredRecord>>> {
        eids.iter()
            .map(|eid| {
                let master = match &read.attrs {
                    Some(a) => self.get_master_projected(etype, eid, a)?,
                    None => self.get_master(etype, eid)?,
                };
                Ok(master.as_ref().map(|m| {
                    let mut record = StoredRecord::from_master(m);
                    read.apply_windows(&mut record);
                    record
                }))
            })
            .collect()
    }

    /// The eids [`Store::scan_master`] would return for `scan` (its projection is
    /// ignored), without reading the records. The default scans with an empty projection.
    fn scan_eids(&self, etype: &str, scan: &MasterScan) -> Result<Vec<Eid>> {
        let scan = MasterScan {
            projection: Some(Vec::new()),
            ..scan.clone()
        };
        Ok(self
            .scan_master(etype, &scan)?
            .iter()
            .filter_map(|d| d.get("_id").and_then(Eid::from_bson))
            .collect())
    }

    /// Replace the history arrays of the given attributes of one record, but only if its
    /// `#revision` still equals `expected_revision` (optimistic concurrency, used by history
    /// aggregation and cleanup). An empty array removes the attribute and its `#min_t2s`.
    /// Merge counts above 1 are kept (read back as `#n` on the item) so that the next
    /// aggregation run computes the true weighted mean of confidences.
    /// Returns false on a revision conflict or if the record is gone.
    fn replace_histories(
        &self,
        etype: &str,
        eid: &Eid,
        expected_revision: i64,
        histories: &[(String, Vec<dp3_model::aggregate::AggregatedItem>)],
    ) -> Result<bool>;

    /// Delete history items with `t2 < older_than` of one attribute in every record of the
    /// type (`max_age` cleanup driven by `#min_t2s`); returns the number of records changed.
    fn delete_old_history(&self, etype: &str, attr: &str, older_than: DateTime<Utc>)
    -> Result<u64>;

    /// Remove expired TTL tokens (`expiry < now`) from records that still have a live one;
    /// returns the eids whose tokens are *all* expired (candidates for deletion).
    fn expire_ttl_tokens(
        &self,
        etype: &str,
        now: DateTime<Utc>,
        partition: Option<(u32, u32)>,
    ) -> Result<Vec<Eid>>;

    // ---------------------------------------------------------------- raw datapoints

    /// The raw datapoint log of an entity type (newest first, see [`RawQuery`]).
    fn raw_get(&self, etype: &str, query: &RawQuery) -> Result<Vec<Document>>;

    /// Move raw datapoints with `t1 < older_than` (and plain ones, `t1` null) out of the raw
    /// log: they are passed to `sink` in batches (for archiving) and then deleted. Returns
    /// the number of datapoints archived.
    fn archive_raw(
        &self,
        etype: &str,
        older_than: DateTime<Utc>,
        sink: &mut dyn FnMut(&[Document]) -> Result<()>,
    ) -> Result<u64>;

    // ---------------------------------------------------------------- link cache

    /// Link-cache entries pointing to `to` (`"<etype>#<eid>"` keys as in DP3), optionally
    /// restricted to one `using_attr` (`"<etype>#<attr>"`), excluding expired entries.
    fn links_to(
        &self,
        to: &LinkKey,
        using_attr: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<LinkEntry>>;

    /// All live link-cache entries whose `using_attr` is one of `using_attrs`.
    fn links_using(&self, using_attrs: &[String], now: DateTime<Utc>) -> Result<Vec<LinkEntry>>;

    /// Eids of `etype` referenced by at least one live link-cache entry.
    fn referenced_eids(&self, etype: &str, now: DateTime<Utc>) -> Result<Vec<Eid>>;

    // ---------------------------------------------------------------- snapshots

    /// Store one snapshot per entity, all taken at `time` (DP3's bucket semantics: the
    /// latest snapshot is what list/count/distinct read; history is kept per entity).
    fn save_snapshots(
        &self,
        etype: &str,
        snapshots: &[(Eid, Document)],
        time: DateTime<Utc>,
    ) -> Result<()>;

    /// Latest snapshots matching a query (API `GET /entity/{etype}/get`). Each item is the
    /// snapshot document including `_time_created`.
    fn latest_snapshots(&self, etype: &str, query: &SnapshotQuery) -> Result<Vec<Document>>;

    /// Number of latest snapshots matching a filter (API `/count`).
    fn count_latest_snapshots(&self, etype: &str, filter: &Document) -> Result<u64>;

    /// The latest snapshot of one entity.
    fn latest_snapshot(&self, etype: &str, eid: &Eid) -> Result<Option<Document>>;

    /// Snapshot history of one entity, ascending by `_time_created`, inclusive time range.
    fn snapshot_history(
        &self,
        etype: &str,
        eid: &Eid,
        query: &HistoryQuery,
    ) -> Result<Vec<Document>>;

    /// Distinct values of an attribute over latest snapshots with their counts (arrays
    /// unwound, links grouped by `eid`, nulls dropped), sorted by value.
    fn distinct_latest(&self, etype: &str, attr: &str) -> Result<Vec<(bson::Bson, u64)>>;

    /// Delete snapshots whose time is older than `older_than`; returns how many.
    fn delete_old_snapshots(&self, etype: &str, older_than: DateTime<Utc>) -> Result<u64>;

    // ---------------------------------------------------------------- metadata & state

    /// Key/value metadata (pipeline watermarks, schema document, updater state, telemetry
    /// caches). Written atomically with [`Store::apply`] through [`WriteBatch::meta`] or on
    /// its own here.
    fn get_meta(&self, key: &str) -> Result<Option<Document>>;
    fn put_meta(&self, key: &str, value: &Document) -> Result<()>;
    /// All metadata entries whose key starts with `prefix`, ordered by key.
    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Document)>>;
    fn delete_meta(&self, key: &str) -> Result<()>;

    /// Run records of periodic core jobs (DP3's `#metadata` collection).
    fn insert_run_metadata(&self, doc: &Document) -> Result<()>;
    /// Update fields of a run record (`$set` / `$inc` semantics as given).
    fn update_run_metadata(&self, id: &str, set: &Document, inc: &Document) -> Result<()>;
    fn query_run_metadata(&self, query: &RunMetadataQuery) -> Result<Vec<Document>>;

    /// Flush everything to durable storage (called at shutdown).
    fn flush(&self) -> Result<()>;
}
