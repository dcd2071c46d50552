//! Source freshness telemetry (core.md §8.3, api.md §4.9 `sources_validity`/`sources_age`).
//!
//! The executor calls [`SourceTelemetry::observe`] for every task (DP3's Telemetry core module
//! hooks `on_task_start`); a job calls [`SourceTelemetry::sync`] every 30 s, which merges the
//! in-memory times into store metadata `telemetry/src/<src>` = `{src_t}` with `$max`
//! semantics, so the stored time only grows.
//!
//! Difference to DP3: DP3 keeps the *last processed* time per source in memory (a later task
//! with an older `t2` overwrites a newer one until the next sync). Only the maximum can ever
//! reach the store, so the maximum is what is kept here as well.

use std::collections::HashMap;

use bson::doc;
use chrono::{DateTime, Utc};
use dp3_model::{DataPointTask, value};
use dp3_store::Store;
use parking_lot::Mutex;

use super::error::Result;

/// Metadata key prefix (shared with the API, `api::telemetry::SOURCES_PREFIX`).
pub const SOURCES_PREFIX: &str = "telemetry/src/";

/// Lock stripes of [`SourceTelemetry`]: every lane records every task, and one shared lock
/// made the lanes wait on each other (measured: ~5% of the lanes' time).
const STRIPES: usize = 16;

type Times = HashMap<String, DateTime<Utc>>;

/// Latest datapoint time per source, waiting to be merged into the store.
#[derive(Debug, Default)]
pub struct SourceTelemetry {
    stripes: [Mutex<Times>; STRIPES],
}

/// The stripe of the calling thread (threads are numbered in the order they first record).
fn stripe_of_thread() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

fn merge_max(into: &mut Times, src: &str, t: DateTime<Utc>) {
    match into.get_mut(src) {
        Some(cur) => *cur = (*cur).max(t),
        None => {
            into.insert(src.to_owned(), t);
        }
    }
}

impl SourceTelemetry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record the `t2` (or `t1`) of every timed datapoint with a source. Plain datapoints
    /// (no `t1`) are ignored, as in DP3.
    pub fn observe(&self, task: &DataPointTask) {
        let mut times = task
            .data_points
            .iter()
            .filter_map(|dp| Some((dp.src.as_deref()?, dp.t2.or(dp.t1)?)))
            .peekable();
        if times.peek().is_none() {
            return;
        }
        let mut pending = self.stripes[stripe_of_thread()].lock();
        for (src, t) in times {
            merge_max(&mut pending, src, t);
        }
    }

    /// What `sync` would merge now.
    #[cfg(test)]
    fn pending(&self) -> Times {
        let mut all = Times::new();
        for stripe in &self.stripes {
            for (src, t) in stripe.lock().iter() {
                merge_max(&mut all, src, *t);
            }
        }
        all
    }

    /// Merge the recorded times into the store (`$max`). Returns how many sources were
    /// written. Entries that could not be written are kept for the next sync.
    pub fn sync(&self, store: &dyn Store) -> Result<usize> {
        let mut taken = Times::new();
        for stripe in &self.stripes {
            for (src, t) in std::mem::take(&mut *stripe.lock()) {
                merge_max(&mut taken, &src, t);
            }
        }
        let mut written = 0;
        let mut entries = taken.into_iter();
        while let Some((src, t)) = entries.next() {
            if let Err(e) = merge_one(store, &src, t) {
                // Put this and the remaining entries back (max-merged with anything observed
                // meanwhile) and report the failure.
                let mut pending = self.stripes[0].lock();
                for (s, t) in std::iter::once((src, t)).chain(entries) {
                    merge_max(&mut pending, &s, t);
                }
                return Err(e);
            }
            written += 1;
        }
        Ok(written)
    }
}

fn merge_one(store: &dyn Store, src: &str, t: DateTime<Utc>) -> Result<()> {
    let key = format!("{SOURCES_PREFIX}{src}");
    let stored = store
        .get_meta(&key)?
        .and_then(|d| d.get("src_t").and_then(value::as_time));
    if stored.is_none_or(|s| s < t) {
        store.put_meta(&key, &doc! {"src_t": value::time(t)})?;
    }
    Ok(())
}

/// Metadata key prefix of the attribute size statistics (shared with the API,
/// `api::telemetry::BSON_SIZES_PREFIX`).
pub const BSON_SIZES_PREFIX: &str = "telemetry/attribute_bson_sizes/";

/// Size statistics of one attribute over the master records of a type.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SizeStats {
    pub count: u64,
    pub min: u64,
    pub max: u64,
    pub total: u64,
}

impl SizeStats {
    fn add(&mut self, size: u64) {
        self.min = if self.count == 0 {
            size
        } else {
            self.min.min(size)
        };
        self.max = self.max.max(size);
        self.total += size;
        self.count += 1;
    }

    fn to_document(self) -> bson::Document {
        let mean = if self.count > 0 {
            self.total as f64 / self.count as f64
        } else {
            0.0
        };
        doc! {
            "count": super::runmeta::count(self.count),
            "min": super::runmeta::count(self.min),
            "mean": mean,
            "max": super::runmeta::count(self.max),
            "total": super::runmeta::count(self.total),
        }
    }
}

/// DP3's telemetry BSON-size sweep (`telemetry.attribute_bson_size_schedule`): per entity
/// type, the stored size of every configured attribute present in master records, written to
/// `telemetry/attribute_bson_sizes/<etype>` as `{calculated_at, duration_s, attributes:
/// {attr: {count, min, mean, max, total}}}`. The size of an attribute is the encoded size
/// of the one-field document `{<attr>: <stored value>}` (plain `{v, ts_last_update}`,
/// history arrays as stored). Returns the number of entity types written.
pub fn sweep_attribute_sizes(
    model: &dp3_model::ModelSpec,
    store: &dyn Store,
    clock: &dyn crate::clock::Clock,
) -> Result<usize> {
    for (etype, et) in &model.entities {
        let started = std::time::Instant::now();
        let mut stats: Vec<SizeStats> = vec![SizeStats::default(); et.attribs.len()];
        let mut after = None;
        loop {
            let page = store.scan_master(
                etype,
                &dp3_store::MasterScan {
                    after: after.clone(),
                    limit: 500,
                    partition: None,
                    projection: None,
                },
            )?;
            for record in &page {
                for (st, attr) in stats.iter_mut().zip(et.attribs.keys()) {
                    if let Some(v) = record.get(attr) {
                        let one = doc! {attr: v.clone()};
                        if let Ok(bytes) = bson::serialize_to_vec(&one) {
                            st.add(bytes.len() as u64);
                        }
                    }
                }
                after = record.get("_id").and_then(dp3_model::Eid::from_bson);
            }
            if page.len() < 500 || after.is_none() {
                break;
            }
        }
        let attributes: bson::Document = et
            .attribs
            .keys()
            .zip(&stats)
            .filter(|(_, s)| s.count > 0)
            .map(|(a, s)| (a.clone(), bson::Bson::Document(s.to_document())))
            .collect();
        store.put_meta(
            &format!("{BSON_SIZES_PREFIX}{etype}"),
            &doc! {
                "calculated_at": value::time(clock.now()),
                "duration_s": started.elapsed().as_secs_f64(),
                "attributes": attributes,
            },
        )?;
    }
    Ok(model.entities.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::Bson;
    use chrono::{TimeDelta, TimeZone};
    use dp3_model::{DataPoint, Eid};

    fn dp(src: Option<&str>, t1: Option<DateTime<Utc>>, t2: Option<DateTime<Utc>>) -> DataPoint {
        DataPoint {
            etype: "A".into(),
            eid: Eid::Int(1),
            attr: "x".into(),
            src: src.map(str::to_owned),
            v: Bson::Int32(1),
            c: 1.0,
            t1,
            t2,
        }
    }

    #[test]
    fn size_stats() {
        let mut s = SizeStats::default();
        for x in [10, 4, 7] {
            s.add(x);
        }
        assert_eq!((s.count, s.min, s.max, s.total), (3, 4, 10, 21));
        assert_eq!(s.to_document().get_f64("mean").unwrap(), 7.0);
    }

    #[test]
    fn keeps_the_newest_time_per_source_and_ignores_plain_and_sourceless() {
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let tel = SourceTelemetry::new();
        tel.observe(&DataPointTask {
            data_points: vec![
                dp(Some("a"), Some(t), Some(t + TimeDelta::hours(1))),
                dp(Some("a"), Some(t), None),
                dp(Some("b"), None, None),
                dp(None, Some(t), Some(t)),
            ],
            ..Default::default()
        });
        let p = tel.pending();
        assert_eq!(p.len(), 1);
        assert_eq!(p["a"], t + TimeDelta::hours(1));
    }

    #[test]
    fn threads_recording_the_same_source_keep_the_newest_time() {
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let tel = std::sync::Arc::new(SourceTelemetry::new());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let tel = tel.clone();
                std::thread::spawn(move || {
                    let at = t + TimeDelta::minutes(i);
                    tel.observe(&DataPointTask {
                        data_points: vec![dp(Some("s"), Some(at), Some(at))],
                        ..Default::default()
                    });
                })
            })
            .collect();
        threads.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(tel.pending()["s"], t + TimeDelta::minutes(3));
    }
}
