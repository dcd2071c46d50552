//! History aggregation and trimming for observations attributes (data-model.md §6.2, §6.3,
//! §2.5.3).
//!
//! # Aggregation
//!
//! Adjacent datapoints (in `t1` order) with equal values whose validity intervals
//! `[t1 − pre, t2 + post]` touch or overlap merge into one: earliest `t1`, latest `t2`, mean
//! confidence. Single-value attributes merge only *consecutive* equal values (another value in
//! between blocks); multi-value attributes keep one pool per distinct value.
//!
//! Two deliberate departures from DP3, both keeping the stored shape readable by DP3:
//!
//! * **Confidence drift fixed.** DP3 averages the confidences of one run only, so an item that
//!   already stands for several datapoints counts as one when merged again (1.0 + 0.0 → 0.5,
//!   then + 0.0 → 0.25 instead of 0.33). Every merged item therefore carries its merge count in
//!   an extra key [`MERGE_COUNT_KEY`] (`"#n"`, written only when > 1; `#` marks internal keys
//!   as elsewhere in the master record). The merged confidence is the count-weighted mean, i.e.
//!   the true mean over all raw datapoints. DP3 ignores the key; our API must not show it.
//!   Items merged by DP3 itself (no key) count as one — their history is lost.
//! * **Canonical multi-value order.** DP3 emits multi-value output in pool order, which can
//!   oscillate between runs and rewrite documents forever (§6.2). Here multi-value output is
//!   sorted by `t1`, then value ([`cmp_values`]), then `t2`, so a second run changes nothing.
//!   Single-value output keeps DP3's stable `t1` order (its order decides ties in §5.3).

use std::cmp::Ordering;

use bson::{Bson, Document};
use chrono::{DateTime, TimeDelta, Utc};

use crate::current::{HistoryDecodeError, history_item_from_bson, values_equal};
use crate::history::HistoryItem;

/// Key of the merge count stored in merged history items.
pub const MERGE_COUNT_KEY: &str = "#n";

/// A stored observations history item and the number of raw datapoints it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatedItem {
    pub item: HistoryItem,
    /// ≥ 1; 1 for an unmerged datapoint.
    pub count: u64,
}

impl AggregatedItem {
    /// A raw (unmerged) datapoint.
    pub fn single(item: HistoryItem) -> Self {
        AggregatedItem { item, count: 1 }
    }

    /// Reads a stored item; a missing [`MERGE_COUNT_KEY`] means 1.
    pub fn from_bson(stored: &Bson) -> Result<Self, HistoryDecodeError> {
        let item = history_item_from_bson(stored)?;
        let count = match stored.as_document().and_then(|d| d.get(MERGE_COUNT_KEY)) {
            None => 1,
            Some(n) => match n {
                Bson::Int32(i) if *i >= 1 => *i as u64,
                Bson::Int64(i) if *i >= 1 => *i as u64,
                other => {
                    return Err(HistoryDecodeError::WrongType {
                        key: MERGE_COUNT_KEY,
                        expected: "a positive integer",
                        found: format!("{other}"),
                    });
                }
            },
        };
        Ok(AggregatedItem { item, count })
    }

    /// The stored form `{t1, t2, v, c}` (+ `"#n"` when the count is above 1).
    pub fn to_bson(&self) -> Bson {
        let mut d = Document::new();
        d.insert("t1", crate::value::time(self.item.t1));
        d.insert("t2", crate::value::time(self.item.t2));
        d.insert("v", self.item.v.clone());
        if let Some(c) = self.item.c {
            d.insert("c", c);
        }
        if self.count > 1 {
            d.insert(
                MERGE_COUNT_KEY,
                i64::try_from(self.count).unwrap_or(i64::MAX),
            );
        }
        Bson::Document(d)
    }
}

/// Result of aggregating one attribute's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    pub items: Vec<AggregatedItem>,
    /// Whether `items` differs from the input (merges or re-ordering): only then does the
    /// master record need a write.
    pub changed: bool,
}

/// A run of merged datapoints being built.
struct Run {
    first: AggregatedItem,
    t2: DateTime<Utc>,
    weighted_c: f64,
    all_c_missing: bool,
    count: u64,
    merged: usize,
}

impl Run {
    fn start(d: &AggregatedItem) -> Run {
        Run {
            first: d.clone(),
            t2: d.item.t2,
            weighted_c: d.item.c.unwrap_or(1.0) * d.count as f64,
            all_c_missing: d.item.c.is_none(),
            count: d.count,
            merged: 1,
        }
    }

    /// Whether `d` (later or equal `t1`) touches this run's validity interval.
    fn touches(&self, d: &AggregatedItem, pre: TimeDelta, post: TimeDelta) -> bool {
        self.t2 + post >= d.item.t1 - pre
    }

    fn absorb(&mut self, d: &AggregatedItem) {
        self.t2 = self.t2.max(d.item.t2);
        self.weighted_c += d.item.c.unwrap_or(1.0) * d.count as f64;
        self.all_c_missing &= d.item.c.is_none();
        self.count += d.count;
        self.merged += 1;
    }

    fn finish(self) -> AggregatedItem {
        if self.merged == 1 {
            // Untouched: keep the stored item bit for bit (no `c·n/n` float noise).
            return self.first;
        }
        let c = (!self.all_c_missing).then(|| self.weighted_c / self.count as f64);
        AggregatedItem {
            item: HistoryItem {
                t1: self.first.item.t1,
                t2: self.t2,
                v: self.first.item.v,
                c,
            },
            count: self.count,
        }
    }
}

fn sorted_by_t1(items: &[AggregatedItem]) -> Vec<AggregatedItem> {
    let mut sorted = items.to_vec();
    sorted.sort_by_key(|d| d.item.t1); // stable, like Python's sort
    sorted
}

/// Single-value aggregation: consecutive (in `t1` order) equal values whose validity
/// intervals touch merge. Output is sorted by `t1`.
pub fn aggregate_single_value(
    items: &[AggregatedItem],
    pre: TimeDelta,
    post: TimeDelta,
) -> Vec<AggregatedItem> {
    let mut out = Vec::with_capacity(items.len());
    let mut cur: Option<Run> = None;
    for d in sorted_by_t1(items) {
        match cur.as_mut() {
            Some(run)
                if values_equal(&run.first.item.v, &d.item.v) && run.touches(&d, pre, post) =>
            {
                run.absorb(&d);
            }
            _ => {
                if let Some(run) = cur.replace(Run::start(&d)) {
                    out.push(run.finish());
                }
            }
        }
    }
    if let Some(run) = cur {
        out.push(run.finish());
    }
    out
}

/// Multi-value aggregation: the single-value rule per distinct value (other values in
/// between do not block). Output in canonical order: `t1`, value, `t2`.
pub fn aggregate_multi_value(
    items: &[AggregatedItem],
    pre: TimeDelta,
    post: TimeDelta,
) -> Vec<AggregatedItem> {
    let mut out = Vec::with_capacity(items.len());
    let mut pools: Vec<Run> = Vec::new();
    for d in sorted_by_t1(items) {
        match pools
            .iter_mut()
            .find(|run| values_equal(&run.first.item.v, &d.item.v))
        {
            Some(run) if run.touches(&d, pre, post) => run.absorb(&d),
            Some(run) => out.push(std::mem::replace(run, Run::start(&d)).finish()),
            None => pools.push(Run::start(&d)),
        }
    }
    out.extend(pools.into_iter().map(Run::finish));
    out.sort_by(|a, b| {
        a.item
            .t1
            .cmp(&b.item.t1)
            .then_with(|| cmp_values(&a.item.v, &b.item.v))
            .then_with(|| a.item.t2.cmp(&b.item.t2))
    });
    out
}

/// Aggregates one attribute's history and reports whether anything changed.
pub fn aggregate(
    items: &[AggregatedItem],
    multi_value: bool,
    pre: TimeDelta,
    post: TimeDelta,
) -> Aggregation {
    let out = if multi_value {
        aggregate_multi_value(items, pre, post)
    } else {
        aggregate_single_value(items, pre, post)
    };
    let changed = out.as_slice() != items;
    Aggregation {
        items: out,
        changed,
    }
}

/// Rank of a BSON type in [`cmp_values`] (numbers share one rank).
fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::Null | Bson::Undefined => 0,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 1,
        Bson::String(_) | Bson::Symbol(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Binary(_) => 5,
        Bson::ObjectId(_) => 6,
        Bson::Boolean(_) => 7,
        Bson::DateTime(_) => 8,
        Bson::Timestamp(_) => 9,
        _ => 10,
    }
}

fn cmp_numbers(a: &Bson, b: &Bson) -> Ordering {
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => i64::from(*x).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&i64::from(*y)),
        _ if values_equal(a, b) => Ordering::Equal,
        _ => {
            let f = |v: &Bson| match v {
                Bson::Int32(i) => f64::from(*i),
                Bson::Int64(i) => *i as f64,
                Bson::Double(d) => *d,
                _ => f64::NAN,
            };
            f(a).total_cmp(&f(b))
        }
    }
}

/// A total order on stored values used for canonical multi-value output: by type (numbers
/// together), then by content (numbers numerically, strings/bytes lexicographically, arrays
/// element-wise, documents by their key-sorted entries). Values equal under
/// [`values_equal`] compare `Equal`.
pub fn cmp_values(a: &Bson, b: &Bson) -> Ordering {
    let rank = type_rank(a).cmp(&type_rank(b));
    if rank != Ordering::Equal {
        return rank;
    }
    match (a, b) {
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Binary(x), Bson::Binary(y)) => u8::from(x.subtype)
            .cmp(&u8::from(y.subtype))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::Array(x), Bson::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| cmp_values(p, q))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (Bson::Document(x), Bson::Document(y)) => {
            let mut xs: Vec<(&String, &Bson)> = x.iter().collect();
            let mut ys: Vec<(&String, &Bson)> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            xs.iter()
                .zip(&ys)
                .map(|((ka, va), (kb, vb))| ka.cmp(kb).then_with(|| cmp_values(va, vb)))
                .find(|o| *o != Ordering::Equal)
                .unwrap_or_else(|| xs.len().cmp(&ys.len()))
        }
        _ if type_rank(a) == 1 => cmp_numbers(a, b),
        _ if a == b => Ordering::Equal,
        // Rare types (ObjectId, Timestamp, regexes, …): any fixed order will do.
        _ => format!("{a:?}").cmp(&format!("{b:?}")),
    }
}

/// Items with a validity end, for [`trim_history`].
pub trait HasValidityEnd {
    fn t2(&self) -> DateTime<Utc>;
}

impl HasValidityEnd for HistoryItem {
    fn t2(&self) -> DateTime<Utc> {
        self.t2
    }
}

impl HasValidityEnd for AggregatedItem {
    fn t2(&self) -> DateTime<Utc> {
        self.item.t2
    }
}

/// Result of [`trim_history`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrimmedHistory<T> {
    /// What stays stored, in the original order.
    pub kept: Vec<T>,
    /// How many items were dropped from storage.
    pub removed: usize,
    /// The subset of `kept` that still counts for the current value at `now`.
    pub current: Vec<T>,
}

/// Applies an observations attribute's `history_params` limits at time `now`:
///
/// * `max_age` (DP3 §6.3): items with `t2 < now − max_age` are removed; `None` or zero keeps
///   everything (DP3: "null/0 = keep forever").
/// * `max_items` (parsed but unimplemented in DP3): keep the `N` newest items by `t2`; among
///   equal `t2` the later stored (later arrived) item is newer. `None` (and 0, which the
///   configuration rejects) means no limit.
/// * `expire_time` (parsed but unimplemented in DP3; DP3's docs: how long after `t2` a value
///   is still considered current): does **not** delete anything; items with
///   `now > t2 + expire_time` are left out of [`TrimmedHistory::current`], the list to compute
///   current values from (see [`crate::current::is_expired`]). `None` (`inf`) keeps all.
pub fn trim_history<T: HasValidityEnd + Clone>(
    items: &[T],
    max_age: Option<TimeDelta>,
    max_items: Option<u64>,
    expire_time: Option<TimeDelta>,
    now: DateTime<Utc>,
) -> TrimmedHistory<T> {
    let mut keep: Vec<bool> = match max_age.filter(|a| *a > TimeDelta::zero()) {
        Some(age) => {
            let oldest = now - age;
            items.iter().map(|i| i.t2() >= oldest).collect()
        }
        None => vec![true; items.len()],
    };
    if let Some(limit) = max_items.filter(|n| *n > 0) {
        let mut newest: Vec<usize> = (0..items.len())
            .filter(|i| keep.get(*i).copied().unwrap_or(false))
            .collect();
        newest.sort_by(|a, b| {
            let ta = items.get(*a).map(HasValidityEnd::t2);
            let tb = items.get(*b).map(HasValidityEnd::t2);
            tb.cmp(&ta).then(b.cmp(a))
        });
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        for dropped in newest.into_iter().skip(limit) {
            if let Some(k) = keep.get_mut(dropped) {
                *k = false;
            }
        }
    }
    let kept: Vec<T> = items
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(i, _)| i.clone())
        .collect();
    let current = kept
        .iter()
        .filter(|i| expire_time.is_none_or(|e| now <= i.t2() + e))
        .cloned()
        .collect();
    TrimmedHistory {
        removed: items.len() - kept.len(),
        kept,
        current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(hm: &str) -> DateTime<Utc> {
        let (h, m) = hm.split_once(':').expect("HH:MM");
        Utc.with_ymd_and_hms(
            2024,
            5,
            1,
            h.parse().expect("hour"),
            m.parse().expect("minute"),
            0,
        )
        .single()
        .expect("valid time")
    }

    fn dp(v: i64, t1: &str, t2: &str, c: f64) -> AggregatedItem {
        AggregatedItem::single(HistoryItem {
            t1: at(t1),
            t2: at(t2),
            v: Bson::Int64(v),
            c: Some(c),
        })
    }

    /// `(value, t1, t2, c, count)` for compact assertions.
    fn summary(items: &[AggregatedItem]) -> Vec<(Bson, String, String, f64, u64)> {
        items
            .iter()
            .map(|a| {
                (
                    a.item.v.clone(),
                    a.item.t1.format("%H:%M").to_string(),
                    a.item.t2.format("%H:%M").to_string(),
                    (a.item.c.unwrap_or(f64::NAN) * 1e9).round() / 1e9,
                    a.count,
                )
            })
            .collect()
    }

    fn row(v: i64, t1: &str, t2: &str, c: f64, n: u64) -> (Bson, String, String, f64, u64) {
        (Bson::Int64(v), t1.into(), t2.into(), c, n)
    }

    const FIVE: TimeDelta = TimeDelta::minutes(5);

    /// data-model.md §6.2 worked example (pre = post = 5m).
    #[test]
    fn worked_example_merge() {
        let history = [
            dp(1, "12:10", "12:12", 0.5),
            dp(1, "12:00", "12:01", 1.0),
            dp(1, "12:30", "12:31", 0.9),
            dp(2, "12:32", "12:33", 1.0),
        ];
        let want = vec![
            row(1, "12:00", "12:12", 0.75, 2),
            row(1, "12:30", "12:31", 0.9, 1),
            row(2, "12:32", "12:33", 1.0, 1),
        ];
        for multi in [false, true] {
            let got = aggregate(&history, multi, FIVE, FIVE);
            assert!(got.changed);
            assert_eq!(summary(&got.items), want, "multi_value = {multi}");
        }
    }

    /// §6.2: `1@12:00–12:01, 2@12:02–12:03, 1@12:04–12:05`.
    #[test]
    fn worked_example_intervening_value() {
        let history = [
            dp(1, "12:00", "12:01", 1.0),
            dp(2, "12:02", "12:03", 1.0),
            dp(1, "12:04", "12:05", 1.0),
        ];
        let single = aggregate(&history, false, FIVE, FIVE);
        assert!(!single.changed);
        assert_eq!(single.items, history);
        let multi = aggregate(&history, true, FIVE, FIVE);
        assert_eq!(
            summary(&multi.items),
            [
                row(1, "12:00", "12:05", 1.0, 2),
                row(2, "12:02", "12:03", 1.0, 1)
            ]
        );
    }

    #[test]
    fn containment_and_confidence_never_blocks() {
        let history = [dp(7, "12:00", "12:30", 1.0), dp(7, "12:05", "12:10", 0.5)];
        let z = TimeDelta::zero();
        let got = aggregate(&history, false, z, z);
        assert_eq!(summary(&got.items), [row(7, "12:00", "12:30", 0.75, 2)]);
    }

    #[test]
    fn confidence_is_the_true_mean_across_runs() {
        let z = TimeDelta::zero();
        // Run 1: 1.0 and 0.0 → 0.5 (count 2).
        let run1 = aggregate(
            &[dp(1, "12:00", "12:10", 1.0), dp(1, "12:10", "12:20", 0.0)],
            false,
            z,
            z,
        );
        assert_eq!(summary(&run1.items), [row(1, "12:00", "12:20", 0.5, 2)]);
        // Run 2 adds another 0.0: DP3 would give 0.25, the true mean is 1/3.
        let mut history = run1.items.clone();
        history.push(dp(1, "12:20", "12:30", 0.0));
        let run2 = aggregate(&history, false, z, z);
        assert_eq!(run2.items.len(), 1);
        let merged = &run2.items[0];
        assert_eq!(merged.count, 3);
        assert!((merged.item.c.unwrap_or(0.0) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn merge_count_round_trips_through_bson() {
        let merged = aggregate(
            &[dp(1, "12:00", "12:10", 1.0), dp(1, "12:05", "12:20", 0.5)],
            false,
            FIVE,
            FIVE,
        );
        let stored = merged.items[0].to_bson();
        let doc = stored.as_document().expect("document");
        let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
        assert_eq!(keys, ["t1", "t2", "v", "c", "#n"]);
        assert_eq!(
            AggregatedItem::from_bson(&stored).as_ref(),
            Ok(&merged.items[0])
        );
        // Unmerged items keep DP3's exact shape.
        let raw = dp(1, "12:00", "12:10", 1.0).to_bson();
        let keys: Vec<String> = raw.as_document().expect("doc").keys().cloned().collect();
        assert_eq!(keys, ["t1", "t2", "v", "c"]);
        assert_eq!(AggregatedItem::from_bson(&raw).map(|a| a.count), Ok(1));
        let mut bad = raw.as_document().cloned().expect("doc");
        bad.insert("#n", 0);
        assert!(matches!(
            AggregatedItem::from_bson(&Bson::Document(bad)),
            Err(HistoryDecodeError::WrongType { key: "#n", .. })
        ));
    }

    /// §6.2: DP3's multi-value output oscillates for `1@00:00, 2@00:00, 2@01:00, 1@01:00`.
    #[test]
    fn multi_value_order_is_canonical_and_stable() {
        let z = TimeDelta::zero();
        let history = [
            dp(1, "00:00", "00:00", 1.0),
            dp(2, "00:00", "00:00", 1.0),
            dp(2, "01:00", "01:00", 1.0),
            dp(1, "01:00", "01:00", 1.0),
        ];
        let first = aggregate(&history, true, z, z);
        assert!(first.changed);
        assert_eq!(
            summary(&first.items),
            [
                row(1, "00:00", "00:00", 1.0, 1),
                row(2, "00:00", "00:00", 1.0, 1),
                row(1, "01:00", "01:00", 1.0, 1),
                row(2, "01:00", "01:00", 1.0, 1),
            ]
        );
        let second = aggregate(&first.items, true, z, z);
        assert!(!second.changed);
        assert_eq!(second.items, first.items);
    }

    #[test]
    fn numerically_equal_values_merge() {
        let z = TimeDelta::zero();
        let mut a = dp(5, "12:00", "12:10", 1.0);
        a.item.v = Bson::Int32(5);
        let mut b = dp(5, "12:10", "12:20", 1.0);
        b.item.v = Bson::Double(5.0);
        let got = aggregate(&[a, b], true, z, z);
        assert_eq!(got.items.len(), 1);
        assert_eq!(got.items[0].item.v, Bson::Int32(5));
    }

    #[test]
    fn canonical_value_order() {
        use bson::doc;
        assert_eq!(
            cmp_values(&Bson::Int32(2), &Bson::Double(10.0)),
            Ordering::Less
        );
        assert_eq!(
            cmp_values(&Bson::Int64(5), &Bson::Double(5.0)),
            Ordering::Equal
        );
        assert_eq!(
            cmp_values(&Bson::String("b".into()), &Bson::String("a".into())),
            Ordering::Greater
        );
        assert_eq!(
            cmp_values(
                &Bson::Document(doc! {"a": 1, "b": 2}),
                &Bson::Document(doc! {"b": 2, "a": 1})
            ),
            Ordering::Equal
        );
        assert_eq!(
            cmp_values(
                &Bson::Array(vec![Bson::Int32(1)]),
                &Bson::Array(vec![Bson::Int32(1), Bson::Int32(0)])
            ),
            Ordering::Less
        );
        assert_eq!(cmp_values(&Bson::Null, &Bson::Int32(0)), Ordering::Less);
    }

    #[test]
    fn trim_max_age() {
        let items = [
            dp(1, "10:00", "10:30", 1.0),
            dp(2, "11:00", "11:30", 1.0),
            dp(3, "11:40", "12:00", 1.0),
        ];
        let now = at("12:30");
        // t_old = 11:30: t2 = 11:30 is kept (strictly older goes).
        let got = trim_history(&items, Some(TimeDelta::hours(1)), None, None, now);
        assert_eq!(got.kept, items[1..]);
        assert_eq!(got.removed, 1);
        assert_eq!(got.current, got.kept);
        for keep_all in [None, Some(TimeDelta::zero())] {
            let got = trim_history(&items, keep_all, None, None, now);
            assert_eq!((got.kept.len(), got.removed), (3, 0));
        }
    }

    #[test]
    fn trim_max_items_keeps_newest_by_t2_in_stored_order() {
        let items = [
            dp(1, "11:00", "11:50", 1.0),
            dp(2, "10:00", "10:10", 1.0),
            dp(3, "11:00", "11:20", 1.0),
            dp(4, "11:10", "11:20", 1.0),
        ];
        let now = at("12:00");
        let got = trim_history(&items, None, Some(2), None, now);
        assert_eq!(got.kept, [items[0].clone(), items[3].clone()]);
        assert_eq!(got.removed, 2);
        let got = trim_history(&items, None, Some(10), None, now);
        assert_eq!(got.kept, items);
        // Combined with max_age: the age limit applies first.
        let got = trim_history(&items, Some(TimeDelta::minutes(45)), Some(3), None, now);
        assert_eq!(
            got.kept,
            [items[0].clone(), items[2].clone(), items[3].clone()]
        );
    }

    #[test]
    fn trim_expire_time_only_affects_current() {
        let items = [dp(1, "11:00", "11:30", 1.0), dp(2, "11:50", "11:55", 1.0)];
        let now = at("12:00");
        let got = trim_history(&items, None, None, Some(TimeDelta::minutes(10)), now);
        assert_eq!(got.kept, items);
        assert_eq!(got.removed, 0);
        assert_eq!(got.current, items[1..]);
        // Exactly t2 + expire_time is still current.
        let got = trim_history(&items, None, None, Some(TimeDelta::minutes(30)), now);
        assert_eq!(got.current, items);
        let got = trim_history(&items, None, None, None, at("23:00"));
        assert_eq!(got.current, items);
    }

    fn arb_history() -> impl Strategy<Value = Vec<AggregatedItem>> {
        let item = (0i64..3, 0u8..3, 0i64..120, 0i64..15, 0u32..=4, 1u64..4).prop_map(
            |(v, ty, t1, len, c, count)| {
                let t1 = at("10:00") + TimeDelta::minutes(t1);
                let v = match ty {
                    0 => Bson::Int64(v),
                    1 => Bson::Int32(v as i32),
                    _ => Bson::Double(v as f64),
                };
                AggregatedItem {
                    item: HistoryItem {
                        t1,
                        t2: t1 + TimeDelta::minutes(len),
                        v,
                        c: Some(f64::from(c) / 4.0),
                    },
                    count,
                }
            },
        );
        prop::collection::vec(item, 0..25)
    }

    proptest! {
        #[test]
        fn aggregation_is_idempotent(
            history in arb_history(), multi in any::<bool>(), pre in 0i64..6, post in 0i64..6,
        ) {
            let (pre, post) = (TimeDelta::minutes(pre), TimeDelta::minutes(post));
            let once = aggregate(&history, multi, pre, post);
            let twice = aggregate(&once.items, multi, pre, post);
            prop_assert!(!twice.changed);
            prop_assert_eq!(&twice.items, &once.items);
        }

        #[test]
        fn aggregation_keeps_coverage_counts_and_mean(
            history in arb_history(), multi in any::<bool>(), pre in 0i64..6, post in 0i64..6,
        ) {
            let (pre, post) = (TimeDelta::minutes(pre), TimeDelta::minutes(post));
            let out = aggregate(&history, multi, pre, post).items;
            // Every input interval lies inside an output item of an equal value.
            for d in &history {
                prop_assert!(out.iter().any(|o| values_equal(&o.item.v, &d.item.v)
                    && o.item.t1 <= d.item.t1 && d.item.t2 <= o.item.t2));
            }
            // No datapoint is lost or invented; confidence mass is preserved.
            let count = |xs: &[AggregatedItem]| xs.iter().map(|a| a.count).sum::<u64>();
            prop_assert_eq!(count(&out), count(&history));
            let mass = |xs: &[AggregatedItem]| {
                xs.iter().map(|a| a.item.c.unwrap_or(1.0) * a.count as f64).sum::<f64>()
            };
            prop_assert!((mass(&out) - mass(&history)).abs() < 1e-9);
            // Output never grows, and multi-value output is canonical.
            prop_assert!(out.len() <= history.len());
            if multi {
                for w in out.windows(2) {
                    let ord = w[0].item.t1.cmp(&w[1].item.t1)
                        .then_with(|| cmp_values(&w[0].item.v, &w[1].item.v));
                    prop_assert!(ord != Ordering::Greater);
                }
            }
        }

        #[test]
        fn multi_value_result_does_not_depend_on_arrival_order(
            history in arb_history(), pre in 0i64..6, post in 0i64..6, seed in any::<u64>(),
        ) {
            let (pre, post) = (TimeDelta::minutes(pre), TimeDelta::minutes(post));
            let mut shuffled = history.clone();
            // Deterministic Fisher–Yates from the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let a = aggregate(&history, true, pre, post).items;
            let b = aggregate(&shuffled, true, pre, post).items;
            prop_assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                prop_assert!(values_equal(&x.item.v, &y.item.v));
                prop_assert_eq!((x.item.t1, x.item.t2, x.count), (y.item.t1, y.item.t2, y.count));
                prop_assert!((x.item.c.unwrap_or(1.0) - y.item.c.unwrap_or(1.0)).abs() < 1e-9);
            }
        }
    }
}
