//! Plain data types of the [`crate::Store`] interface.

use bson::{Bson, Document};
use chrono::{DateTime, Utc};
pub use dp3_model::HistoryItem;
pub use dp3_model::current::{HistoryWindow, StoredRecord};
use dp3_model::{DataPoint, Eid};

/// A new entity's creation metadata (`#hash`, `#time_created`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Creation {
    pub hash: u16,
    pub time_created: DateTime<Utc>,
}

/// Changes to one entity's master record (DP3's buffered `$set`/`$push`/`$min`/`$max`).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityWrite {
    pub etype: String,
    pub eid: Eid,
    /// Set when the task created the entity: `#hash` and `#time_created` are written.
    /// (Unlike DP3, also for entities created by TTL-only tasks.)
    pub create: Option<Creation>,
    /// Plain attributes: `attr = {v, ts_last_update}`; the last write of an attr wins.
    pub plain: Vec<(String, Bson, DateTime<Utc>)>,
    /// Observations/timeseries pushes in arrival order; `#min_t2s.<attr>` is lowered to the
    /// pushed `t2`.
    pub history: Vec<(String, HistoryItem)>,
    /// TTL tokens: `#ttl.<name> = max(existing, expiry)`.
    pub ttl: Vec<(String, DateTime<Utc>)>,
}

impl EntityWrite {
    pub fn new(etype: impl Into<String>, eid: Eid) -> Self {
        EntityWrite {
            etype: etype.into(),
            eid,
            create: None,
            plain: Vec::new(),
            history: Vec::new(),
            ttl: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.create.is_none()
            && self.plain.is_empty()
            && self.history.is_empty()
            && self.ttl.is_empty()
    }
}

/// `"<etype>#<canonical eid>"`, the key format of DP3's link cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    pub etype: String,
    pub eid: Eid,
}

impl LinkKey {
    pub fn new(etype: impl Into<String>, eid: Eid) -> Self {
        LinkKey {
            etype: etype.into(),
            eid,
        }
    }
}

impl std::fmt::Display for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.etype, self.eid)
    }
}

/// One link-cache entry: `from` links to `to` through `using_attr` until `ttl`
/// (`None` = never expires: plain links).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkEntry {
    pub from: LinkKey,
    pub to: LinkKey,
    /// `"<source etype>#<attr>"`.
    pub using_attr: String,
    pub ttl: Option<DateTime<Utc>>,
}

/// Link-cache maintenance (data-model.md §7.4).
#[derive(Debug, Clone, PartialEq)]
pub enum LinkOp {
    /// Plain link (or array/set of links) got a new value: the cache for `(from, using_attr)`
    /// becomes exactly `targets`, never expiring.
    Replace {
        from: LinkKey,
        using_attr: String,
        targets: Vec<LinkKey>,
    },
    /// Observation link datapoint: upsert with `ttl = max(existing, ttl)`.
    Upsert {
        from: LinkKey,
        to: LinkKey,
        using_attr: String,
        ttl: DateTime<Utc>,
    },
}

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Master-record changes.
    Entity(EntityWrite),
    /// Delete an entity: its master record, its snapshots, link-cache entries from and to
    /// it, and link values pointing at it in other entities' records (data-model.md §7.5).
    /// Raw datapoints are kept.
    Delete { etype: String, eid: Eid },
    /// Link-cache maintenance.
    Link(LinkOp),
}

/// A batch of writes applied in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
    /// Raw datapoint log appends (`{etype}#raw`).
    pub raw: Vec<DataPoint>,
    /// Metadata written in the same transaction (see [`crate::Store::put_meta`]).
    pub meta: Vec<(String, Document)>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.raw.is_empty() && self.meta.is_empty()
    }
}

/// What [`crate::Store::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entities_written: u64,
    pub entities_created: u64,
    pub entities_deleted: u64,
    pub history_items: u64,
    pub raw_datapoints: u64,
}

/// A scan over master records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MasterScan {
    /// Exclusive lower bound (eids ordered by the backend's key order).
    pub after: Option<Eid>,
    pub limit: usize,
    /// `(index, count)`: only records with `#hash mod count == index`.
    pub partition: Option<(u32, u32)>,
    /// Attributes to include (metadata keys are always included); `None` = all.
    pub projection: Option<Vec<String>>,
}

/// Query of the raw datapoint log (API `raw/get`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawQuery {
    pub eid: Option<Eid>,
    pub attr: Option<String>,
    pub src: Option<String>,
    /// When `attr` is a timed attribute: order by `t1` descending, then newest first.
    /// Otherwise: newest inserted first.
    pub order_by_t1: bool,
    pub skip: u64,
    /// 0 = unlimited.
    pub limit: u64,
}

/// Query of latest snapshots (API list endpoint).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotQuery {
    /// A MongoDB filter over DP3's snapshot *bucket* document shape: `last.<attr>`, `_id`
    /// (bucket id), `latest`. Magic strings are already replaced.
    pub filter: Document,
    /// `(path, 1 | -1)` pairs over the same shape (e.g. `last.eid`). Empty = bucket id order.
    pub sort: Vec<(String, i32)>,
    pub skip: u64,
    /// 0 = unlimited.
    pub limit: u64,
}

/// Query of one entity's snapshot history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub skip: u64,
    /// 0 = unlimited.
    pub limit: u64,
}

/// Query of run metadata (API `telemetry/metadata`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunMetadataQuery {
    pub module: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub newest_first: bool,
    pub skip: u64,
    /// 0 = unlimited.
    pub limit: u64,
}

/// What [`crate::Store::get_records`] reads of each entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordRead {
    /// The attributes to read, like [`crate::Store::get_master_projected`]; `None` = all
    /// (`Some(vec![])` only checks existence).
    pub attrs: Option<Vec<String>>,
    /// History attributes whose items outside their window are left out (a store may
    /// return more, never less), and whose plain values are not read; other attributes are
    /// read whole.
    pub windows: Vec<(String, HistoryWindow)>,
}

impl RecordRead {
    /// The window of `attr`, if it has one.
    pub fn window(&self, attr: &str) -> Option<&HistoryWindow> {
        self.windows.iter().find(|(a, _)| a == attr).map(|(_, w)| w)
    }

    /// Drop the history items outside their windows, windowed attributes left without
    /// items (as when no row was read) and plain values of windowed attributes, for stores
    /// that read them anyway.
    pub fn apply_windows(&self, record: &mut StoredRecord) {
        if self.windows.is_empty() {
            return;
        }
        record.plain.retain(|(attr, _)| self.window(attr).is_none());
        record
            .history
            .retain_mut(|(attr, items)| match self.window(attr) {
                Some(w) => {
                    items.retain(|i| w.contains(i));
                    !items.is_empty()
                }
                None => true,
            });
    }
}
