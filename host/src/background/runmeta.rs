//! Run records of periodic jobs (DP3's `#metadata` collection, data-model.md §8.7).
//!
//! `_id = "<Module><T as %Y-%m-%dT%H:%M:%S.%fZ>w<worker>"`. With one process there is one
//! worker (`w0`). Two runs of the same module started at the same instant (several entity
//! types collected by one job, or a manual test clock) would collide on `_id` and overwrite
//! each other, so run times handed out here are strictly increasing per process (bumped by
//! 1 µs when needed).

use std::sync::atomic::{AtomicI64, Ordering};

use bson::{Bson, Document, doc};
use chrono::{DateTime, TimeDelta, Utc};
use dp3_model::value;
use dp3_store::Store;
use tracing::warn;

static LAST_RUN_MICROS: AtomicI64 = AtomicI64::new(i64::MIN);

/// A run time not handed out before in this process (≥ `now`).
pub fn unique_run_time(now: DateTime<Utc>) -> DateTime<Utc> {
    let wanted = now.timestamp_micros();
    let mut last = LAST_RUN_MICROS.load(Ordering::SeqCst);
    loop {
        let next = wanted.max(last.saturating_add(1));
        match LAST_RUN_MICROS.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return now + TimeDelta::microseconds(next - wanted),
            Err(actual) => last = actual,
        }
    }
}

/// A run record being written: created at the start of a run, updated as it goes.
pub struct RunRecord<'a> {
    store: &'a dyn Store,
    id: String,
}

impl<'a> RunRecord<'a> {
    /// Insert `{_id, #module, #time_created, #last_update, ..fields}`. Failures are logged,
    /// not returned: run records are telemetry and must not stop the job itself.
    pub fn start(
        store: &'a dyn Store,
        module: &str,
        time: DateTime<Utc>,
        fields: Document,
    ) -> RunRecord<'a> {
        let id = format!("{module}{}w0", time.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
        let mut d = doc! {
            "_id": &id,
            "#module": module,
            "#time_created": value::time(time),
            "#last_update": value::time(time),
        };
        d.extend(fields);
        if let Err(e) = store.insert_run_metadata(&d) {
            warn!(module, error = %e, "cannot write run metadata");
        }
        RunRecord { store, id }
    }

    /// `$set` the fields (and `#last_update = now`), `$inc` the counters.
    pub fn update(&self, now: DateTime<Utc>, mut set: Document, inc: Document) {
        set.insert("#last_update", value::time(now));
        if let Err(e) = self.store.update_run_metadata(&self.id, &set, &inc) {
            warn!(id = %self.id, error = %e, "cannot update run metadata");
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A counter value for run records (int64, as MongoDB stores Python ints that grow).
pub fn count(n: u64) -> Bson {
    value::int(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn run_times_are_unique_and_never_earlier_than_asked() {
        let t = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let a = unique_run_time(t);
        let b = unique_run_time(t);
        assert!(a >= t);
        assert!(b > a);
    }
}
