//! Current values of an entity at a time `T` (data-model.md §5.1–5.4, core.md §5.7): what a
//! snapshot contains for plain and observations attributes.
//!
//! Mirror attributes are not filled here (the snapshooter adds them from the link cache) and
//! timeseries never appear in snapshots.

use bson::{Bson, Document};
use chrono::{DateTime, TimeDelta, Utc};

use crate::history::HistoryItem;
use crate::spec::{AttrKind, EntityType, HistoryParams};

/// Why a stored history item could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistoryDecodeError {
    #[error("history item is not a document but {0}")]
    NotADocument(String),
    #[error("history item has no `{0}`")]
    MissingKey(&'static str),
    #[error("history item key `{key}` should be {expected}, found {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
}

fn type_name(v: &Bson) -> String {
    format!("{:?}", v.element_type())
}

/// A number stored as int32, int64 or double.
fn as_number(v: &Bson) -> Option<f64> {
    match v {
        Bson::Double(f) => Some(*f),
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        _ => None,
    }
}

fn datetime_key(d: &Document, key: &'static str) -> Result<DateTime<Utc>, HistoryDecodeError> {
    match d.get(key) {
        None => Err(HistoryDecodeError::MissingKey(key)),
        Some(v @ Bson::DateTime(_)) => {
            crate::value::as_time(v).ok_or_else(|| HistoryDecodeError::WrongType {
                key,
                expected: "a datetime within chrono's range",
                found: format!("{v}"),
            })
        }
        Some(other) => Err(HistoryDecodeError::WrongType {
            key,
            expected: "a datetime",
            found: type_name(other),
        }),
    }
}

/// Reads one stored history item `{t1, t2, v, c}` (DP3's master-record shape). A missing `v`
/// reads as null, a missing or null `c` as none (timeseries rows have no `c`).
pub fn history_item_from_bson(item: &Bson) -> Result<HistoryItem, HistoryDecodeError> {
    let Bson::Document(d) = item else {
        return Err(HistoryDecodeError::NotADocument(type_name(item)));
    };
    let c = match d.get("c") {
        None | Some(Bson::Null) => None,
        Some(v) => Some(as_number(v).ok_or_else(|| HistoryDecodeError::WrongType {
            key: "c",
            expected: "a number",
            found: type_name(v),
        })?),
    };
    Ok(HistoryItem {
        t1: datetime_key(d, "t1")?,
        t2: datetime_key(d, "t2")?,
        v: d.get("v").cloned().unwrap_or(Bson::Null),
        c,
    })
}

/// `d` in seconds as a real number. Microsecond resolution, like Python's `timedelta`, so
/// ratios of durations come out bit-identical to DP3's.
fn real_micros(d: TimeDelta) -> f64 {
    match d.num_microseconds() {
        Some(us) => us as f64,
        None => d.num_milliseconds() as f64 * 1000.0,
    }
}

/// Confidence of one datapoint at time `t` (data-model.md §5.2): `c` inside `[t1, t2]`, a
/// linear ramp over `pre` before `t1` and over `post` after `t2`, exactly 0 at and beyond
/// `t1 − pre` / `t2 + post`. A missing `c` counts as 1.0.
pub fn confidence_at(item: &HistoryItem, pre: TimeDelta, post: TimeDelta, t: DateTime<Utc>) -> f64 {
    let c = item.c.unwrap_or(1.0);
    if t < item.t1 {
        // `<=` first: with pre = 0 the ramp is empty and nothing is divided by zero.
        if t <= item.t1 - pre {
            return 0.0;
        }
        return c * (1.0 - real_micros(item.t1 - t) / real_micros(pre));
    }
    if t <= item.t2 {
        return c;
    }
    if t >= item.t2 + post {
        return 0.0;
    }
    c * (1.0 - real_micros(t - item.t2) / real_micros(post))
}

/// Python's `==` on the values DP3 stores: int32, int64 and double compare as numbers
/// (`5 == 5.0`), documents compare as dicts (key order ignored), arrays element-wise.
/// Booleans are *not* numbers here (Python has `True == 1`; no DP3 data type mixes the two
/// except free-form `json`, where treating `true` and `1` as one value would be surprising).
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_), _)
        | (_, Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)) => numbers_equal(a, b),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Bson::Document(x), Bson::Document(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Exact numeric equality across int32/int64/double (no rounding through f64 for large
/// integers, as in Python).
fn numbers_equal(a: &Bson, b: &Bson) -> bool {
    fn int(v: &Bson) -> Option<i64> {
        match v {
            Bson::Int32(i) => Some(i64::from(*i)),
            Bson::Int64(i) => Some(*i),
            _ => None,
        }
    }
    fn int_eq_float(i: i64, f: f64) -> bool {
        // 2^63 as f64 is exact; integral floats in range convert exactly.
        f.fract() == 0.0
            && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f)
            && f as i64 == i
    }
    match (a, b, int(a), int(b)) {
        (_, _, Some(x), Some(y)) => x == y,
        (Bson::Double(x), Bson::Double(y), _, _) => x == y,
        (Bson::Double(f), _, None, Some(i)) | (_, Bson::Double(f), Some(i), None) => {
            int_eq_float(i, *f)
        }
        _ => false,
    }
}

/// Single-value observations (§5.3): the value of the datapoint with the highest confidence
/// at `t` (the first one in stored order on ties), or `None` if no datapoint has a positive
/// confidence (the attribute is then omitted).
pub fn single_value_current(
    history: &[HistoryItem],
    pre: TimeDelta,
    post: TimeDelta,
    t: DateTime<Utc>,
) -> Option<(Bson, f64)> {
    let mut best: Option<(&HistoryItem, f64)> = None;
    for item in history {
        let conf = confidence_at(item, pre, post, t);
        if best.is_none_or(|(_, b)| conf > b) {
            best = Some((item, conf));
        }
    }
    best.filter(|(_, conf)| *conf > 0.0)
        .map(|(item, conf)| (item.v.clone(), conf))
}

/// Multi-value observations (§5.4): every distinct value with a positive confidence at `t`,
/// each with the maximum confidence over its datapoints, in the order in which values first
/// appear (with positive confidence) in stored order. `None` when no value is current.
pub fn multi_value_current(
    history: &[HistoryItem],
    pre: TimeDelta,
    post: TimeDelta,
    t: DateTime<Utc>,
) -> Option<(Vec<Bson>, Vec<f64>)> {
    let mut values: Vec<Bson> = Vec::new();
    let mut confs: Vec<f64> = Vec::new();
    for item in history {
        let conf = confidence_at(item, pre, post, t);
        match values.iter().position(|v| values_equal(v, &item.v)) {
            Some(i) => {
                if let Some(c) = confs.get_mut(i) {
                    *c = c.max(conf);
                }
            }
            None if conf > 0.0 => {
                values.push(item.v.clone());
                confs.push(conf);
            }
            None => {}
        }
    }
    (!values.is_empty()).then_some((values, confs))
}

/// Whether a datapoint no longer counts for the current value at `t` because of the
/// attribute's `expire_time` (data-model.md §2.5.3, parsed but unimplemented in DP3).
///
/// Chosen semantics (DP3's docs: "how long after t2 is the value considered valid"): a
/// datapoint is expired once `t > t2 + expire_time`; `None` (`inf`, the default) never
/// expires, so the default behaves exactly like DP3. `expire_time` is a hard cut applied on
/// top of the `post_validity` ramp; with `expire_time ≥ post_validity` it changes nothing.
pub fn is_expired(item: &HistoryItem, expire_time: Option<TimeDelta>, t: DateTime<Utc>) -> bool {
    expire_time.is_some_and(|e| t > item.t2 + e)
}

/// The history items of one observations attribute that can count for its current value
/// at a time `t`: every item outside has zero confidence at `t` (it ends before
/// `t − post_validity`, starts after `t + pre_validity`, or is expired). Stores use it to
/// skip rows a snapshot run would read for nothing; dropping those items changes no current
/// value, confidence or order (zero-confidence items never win, never add a value and
/// never raise a maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryWindow {
    /// Items with `t2` before this cannot count.
    pub t2_from: DateTime<Utc>,
    /// Items with `t1` after this cannot count.
    pub t1_until: DateTime<Utc>,
}

impl HistoryWindow {
    /// The window of an attribute with `params` for current values at `t`.
    pub fn at(params: &HistoryParams, t: DateTime<Utc>) -> HistoryWindow {
        let after_t2 = match params.expire_time {
            Some(e) => e.min(params.post_validity),
            None => params.post_validity,
        };
        // Saturating: validities far beyond the representable range mean "everything".
        HistoryWindow {
            t2_from: t
                .checked_sub_signed(after_t2)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            t1_until: t
                .checked_add_signed(params.pre_validity)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// Whether `item` may count (inclusive bounds: a superset of the positive ones).
    pub fn contains(&self, item: &HistoryItem) -> bool {
        item.t2 >= self.t2_from && item.t1 <= self.t1_until
    }
}

/// The current values of one entity at time `t` (§5.1): `{"eid": _id, plain attributes,
/// observations attributes with their "<attr>#c" confidences}` in configuration order.
///
/// `master` is the entity's master record in DP3's shape (plain `{v, ts_last_update}`,
/// observations arrays of `{t1, t2, v, c}`). Attributes missing from the record, no longer
/// configured, timeseries and mirror attributes are left out; so are observations without a
/// current value. Malformed stored items (wrong shape) are skipped rather than failing the
/// whole snapshot; [`history_item_from_bson`] reports what is wrong with them.
pub fn current_values(entity: &EntityType, master: &Document, t: DateTime<Utc>) -> Document {
    let mut values = Document::new();
    if let Some(id) = master.get("_id") {
        values.insert("eid", id.clone());
    }
    for (name, spec) in &entity.attribs {
        if spec.mirror_of.is_some() {
            continue;
        }
        let Some(stored) = master.get(name) else {
            continue;
        };
        match &spec.kind {
            AttrKind::Plain { .. } => {
                if let Some(v) = stored.as_document().and_then(|d| d.get("v")) {
                    values.insert(name.clone(), v.clone());
                }
            }
            AttrKind::Observations {
                multi_value,
                history_params,
                ..
            } => {
                let Some(items) = stored.as_array() else {
                    continue;
                };
                let history: Vec<HistoryItem> = items
                    .iter()
                    .filter_map(|i| history_item_from_bson(i).ok())
                    .collect();
                insert_observation(&mut values, name, *multi_value, history_params, &history, t);
            }
            AttrKind::Timeseries { .. } => {}
        }
    }
    values
}

/// The stored attributes of one entity without DP3's master-record document around them:
/// what the snapshooter's read path gets from the store (building a BSON master record per
/// entity dominated snapshot runs). [`current_values_of`] gives exactly what
/// [`current_values`] gives for the equivalent master record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredRecord {
    /// Plain attributes `(name, value)`.
    pub plain: Vec<(String, Bson)>,
    /// Observations and timeseries attributes `(name, items in stored order)`.
    pub history: Vec<(String, Vec<HistoryItem>)>,
}

impl StoredRecord {
    /// The record of a master record in DP3's shape (metadata keys are dropped, plain
    /// values without `v` and malformed history items are skipped, as [`current_values`]
    /// skips them).
    pub fn from_master(master: &Document) -> StoredRecord {
        let mut r = StoredRecord::default();
        for (k, v) in master {
            if k == "_id" || k.starts_with('#') {
                continue;
            }
            match v {
                Bson::Document(d) => {
                    if let Some(v) = d.get("v") {
                        r.plain.push((k.clone(), v.clone()));
                    }
                }
                Bson::Array(items) => {
                    let items = items
                        .iter()
                        .filter_map(|i| history_item_from_bson(i).ok())
                        .collect();
                    r.history.push((k.clone(), items));
                }
                _ => {}
            }
        }
        r
    }

    /// History items of `name` (a stored history wins over a plain value of the same name,
    /// as in the master record the store assembles).
    fn items(&self, name: &str) -> Option<&[HistoryItem]> {
        self.history
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| i.as_slice())
    }

    fn plain_value(&self, name: &str) -> Option<&Bson> {
        self.plain.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// [`current_values`] of an entity read as a [`StoredRecord`] (`eid` is the entity id as
/// BSON, the master record's `_id`).
pub fn current_values_of(
    entity: &EntityType,
    eid: Bson,
    record: &StoredRecord,
    t: DateTime<Utc>,
) -> Document {
    let mut values = Document::new();
    values.insert("eid", eid);
    for (name, spec) in &entity.attribs {
        if spec.mirror_of.is_some() {
            continue;
        }
        match &spec.kind {
            AttrKind::Plain { .. } => {
                if record.items(name).is_none()
                    && let Some(v) = record.plain_value(name)
                {
                    values.insert(name.clone(), v.clone());
                }
            }
            AttrKind::Observations {
                multi_value,
                history_params,
                ..
            } => {
                if let Some(items) = record.items(name) {
                    insert_observation(&mut values, name, *multi_value, history_params, items, t);
                }
            }
            AttrKind::Timeseries { .. } => {}
        }
    }
    values
}

/// The current value of one observations attribute (with `<attr>#c`), if it has one.
fn insert_observation(
    values: &mut Document,
    name: &str,
    multi_value: bool,
    params: &HistoryParams,
    items: &[HistoryItem],
    t: DateTime<Utc>,
) {
    // Only an `expire_time` needs a filtered copy (the default never expires).
    let filtered: Vec<HistoryItem>;
    let history = if params.expire_time.is_some() {
        filtered = items
            .iter()
            .filter(|i| !is_expired(i, params.expire_time, t))
            .cloned()
            .collect();
        filtered.as_slice()
    } else {
        items
    };
    let (pre, post) = (params.pre_validity, params.post_validity);
    if multi_value {
        if let Some((vals, confs)) = multi_value_current(history, pre, post, t) {
            values.insert(name, Bson::Array(vals));
            values.insert(
                format!("{name}#c"),
                Bson::Array(confs.into_iter().map(Bson::Double).collect()),
            );
        }
    } else if let Some((v, conf)) = single_value_current(history, pre, post, t) {
        values.insert(name, v);
        values.insert(format!("{name}#c"), Bson::Double(conf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datatype::DataType;
    use crate::eid::EidType;
    use crate::spec::{AttrSpec, EntitySpec, HistoryParams, Lifetime, TimeseriesParams};
    use bson::doc;
    use chrono::TimeZone;
    use indexmap::IndexMap;

    const EPS: f64 = 1e-9;

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

    fn item(v: Bson, t1: &str, t2: &str, c: f64) -> HistoryItem {
        HistoryItem {
            t1: at(t1),
            t2: at(t2),
            v,
            c: Some(c),
        }
    }

    fn stored(i: &HistoryItem) -> Bson {
        let mut d = doc! {
            "t1": crate::value::time(i.t1),
            "t2": crate::value::time(i.t2),
            "v": i.v.clone(),
        };
        if let Some(c) = i.c {
            d.insert("c", c);
        }
        Bson::Document(d)
    }

    fn mins(m: i64) -> TimeDelta {
        TimeDelta::minutes(m)
    }

    fn assert_close(got: f64, want: f64) {
        assert!((got - want).abs() < EPS, "got {got}, want {want}");
    }

    #[test]
    fn confidence_boundaries() {
        let p = item(Bson::Int32(1), "12:00", "12:10", 0.5);
        let (pre, post) = (mins(5), mins(10));
        assert_close(confidence_at(&p, pre, post, at("11:55")), 0.0);
        assert_close(confidence_at(&p, pre, post, at("11:54")), 0.0);
        assert_close(
            confidence_at(&p, pre, post, at("11:56")),
            0.5 * (1.0 - 4.0 / 5.0),
        );
        assert_close(confidence_at(&p, pre, post, at("12:00")), 0.5);
        assert_close(confidence_at(&p, pre, post, at("12:10")), 0.5);
        assert_close(confidence_at(&p, pre, post, at("12:15")), 0.25);
        assert_close(confidence_at(&p, pre, post, at("12:20")), 0.0);
        assert_close(confidence_at(&p, pre, post, at("12:21")), 0.0);
        // Zero validity extensions: no ramp, no division by zero.
        let z = TimeDelta::zero();
        assert_eq!(confidence_at(&p, z, z, at("11:59")), 0.0);
        assert_eq!(confidence_at(&p, z, z, at("12:11")), 0.0);
        assert_eq!(confidence_at(&p, z, z, at("12:05")), 0.5);
        // Missing c counts as 1.0; sub-second ramps are real-valued.
        let no_c = HistoryItem {
            c: None,
            ..p.clone()
        };
        assert_eq!(confidence_at(&no_c, z, z, at("12:00")), 1.0);
        let half_sec = at("12:10") + TimeDelta::milliseconds(500);
        assert_close(
            confidence_at(&no_c, z, TimeDelta::seconds(1), half_sec),
            0.5,
        );
    }

    /// data-model.md §5.7 Example A (pre 5m, post 10m).
    #[test]
    fn worked_example_a_single_value() {
        let history = [
            item(Bson::Double(50.0), "12:00", "12:02", 0.8),
            item(Bson::Double(60.0), "12:10", "12:11", 1.0),
        ];
        let (pre, post) = (mins(5), mins(10));
        let cases = [
            ("11:57", Some((50.0, 0.32))),
            ("12:01", Some((50.0, 0.8))),
            ("12:06", Some((50.0, 0.48))),
            ("12:08", Some((60.0, 0.6))),
            ("12:12", Some((60.0, 0.9))),
            ("12:21", None),
        ];
        for (t, want) in cases {
            let got = single_value_current(&history, pre, post, at(t));
            match (got, want) {
                (Some((v, c)), Some((wv, wc))) => {
                    assert_eq!(v, Bson::Double(wv), "at {t}");
                    assert_close(c, wc);
                }
                (None, None) => {}
                (got, want) => panic!("at {t}: got {got:?}, want {want:?}"),
            }
        }
        // The exact binary values quoted by the spec.
        assert_eq!(
            confidence_at(&history[0], pre, post, at("11:57")),
            0.32000000000000006
        );
        assert_eq!(
            confidence_at(&history[1], pre, post, at("12:06")),
            0.19999999999999996
        );
    }

    #[test]
    fn single_value_ties_take_the_first_and_zero_c_never_wins() {
        let z = TimeDelta::zero();
        let history = [
            item(Bson::String("a".into()), "12:00", "12:10", 0.7),
            item(Bson::String("b".into()), "12:00", "12:10", 0.7),
        ];
        let (v, _) = single_value_current(&history, z, z, at("12:05")).expect("current");
        assert_eq!(v, Bson::String("a".into()));
        let zero = [item(Bson::Int32(1), "12:00", "12:10", 0.0)];
        assert_eq!(single_value_current(&zero, z, z, at("12:05")), None);
        assert_eq!(single_value_current(&[], z, z, at("12:05")), None);
    }

    fn multi(
        history: &[HistoryItem],
        pre: TimeDelta,
        post: TimeDelta,
        t: &str,
    ) -> Option<(Vec<Bson>, Vec<f64>)> {
        multi_value_current(history, pre, post, at(t))
    }

    fn assert_multi(got: Option<(Vec<Bson>, Vec<f64>)>, want: Option<(Vec<Bson>, Vec<f64>)>) {
        match (got, want) {
            (Some((v, c)), Some((wv, wc))) => {
                assert_eq!(v, wv);
                assert_eq!(c.len(), wc.len());
                for (g, w) in c.iter().zip(&wc) {
                    assert_close(*g, *w);
                }
            }
            (None, None) => {}
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    /// data-model.md §5.7 Example B (multi-value, pre = post = 5m).
    #[test]
    fn worked_example_b_multi_value() {
        let i = |n: i64| Bson::Int64(n);
        let history = [
            item(i(1), "12:00", "12:10", 1.0),
            item(i(2), "12:05", "12:20", 0.5),
            item(i(1), "12:30", "12:40", 1.0),
            item(i(3), "12:21", "12:22", 1.0),
        ];
        let five = mins(5);
        assert_multi(
            multi(&history, five, five, "12:07"),
            Some((vec![i(1), i(2)], vec![1.0, 0.5])),
        );
        assert_multi(
            multi(&history, five, five, "12:23"),
            Some((vec![i(2), i(3)], vec![0.2, 0.8])),
        );
        assert_multi(
            multi(&history, five, five, "12:27"),
            Some((vec![i(1)], vec![0.4])),
        );
        assert_multi(multi(&history, five, five, "12:50"), None);
    }

    /// data-model.md §5.7 Example C (multi-value arrays).
    #[test]
    fn worked_example_c_multi_value_arrays() {
        let arr = |a: f64, b: f64| Bson::Array(vec![Bson::Double(a), Bson::Double(b)]);
        let history = [
            item(arr(1.0, 2.0), "12:00", "12:00", 1.0),
            item(arr(1.0, 2.0), "12:02", "12:02", 1.0),
            item(arr(3.0, 4.0), "12:01", "12:01", 1.0),
        ];
        let five = mins(5);
        assert_multi(
            multi(&history, five, five, "12:03"),
            Some((vec![arr(1.0, 2.0), arr(3.0, 4.0)], vec![0.8, 0.6])),
        );
    }

    #[test]
    fn multi_value_equality_is_python_like() {
        let z = TimeDelta::zero();
        let history = [
            item(Bson::Int32(5), "12:00", "12:10", 0.3),
            item(Bson::Int64(5), "12:00", "12:10", 0.9),
            item(Bson::Double(5.0), "12:00", "12:10", 0.5),
            item(
                Bson::Document(doc! {"eid": "x", "data": {"a": 1, "b": 2}}),
                "12:00",
                "12:10",
                0.4,
            ),
            item(
                Bson::Document(doc! {"data": {"b": 2.0, "a": 1}, "eid": "x"}),
                "12:00",
                "12:10",
                0.6,
            ),
            item(Bson::Boolean(true), "12:00", "12:10", 1.0),
        ];
        assert_multi(
            multi_value_current(&history, z, z, at("12:05")),
            Some((
                vec![
                    Bson::Int32(5),
                    Bson::Document(doc! {"eid": "x", "data": {"a": 1, "b": 2}}),
                    Bson::Boolean(true),
                ],
                vec![0.9, 0.6, 1.0],
            )),
        );
        assert!(values_equal(
            &Bson::Int64(1 << 53),
            &Bson::Double(9007199254740992.0)
        ));
        assert!(!values_equal(
            &Bson::Int64((1 << 53) + 1),
            &Bson::Double(9007199254740992.0)
        ));
        assert!(!values_equal(&Bson::Int32(1), &Bson::Double(1.5)));
        assert!(!values_equal(&Bson::Int32(1), &Bson::String("1".into())));
        assert!(!values_equal(
            &Bson::Array(vec![Bson::Int32(1)]),
            &Bson::Array(vec![Bson::Int32(1), Bson::Int32(2)])
        ));
    }

    #[test]
    fn multi_value_zero_confidence_values_are_dropped() {
        // test_multivalue_fitering: 4 points, one with c = 0 → 3 values.
        let z = TimeDelta::zero();
        let history = [
            item(Bson::Int32(1), "12:00", "12:10", 1.0),
            item(Bson::Int32(2), "12:00", "12:10", 0.0),
            item(Bson::Int32(3), "12:00", "12:10", 0.5),
            item(Bson::Int32(4), "12:00", "12:10", 0.2),
        ];
        let (vals, _) = multi_value_current(&history, z, z, at("12:05")).expect("current");
        assert_eq!(vals, [Bson::Int32(1), Bson::Int32(3), Bson::Int32(4)]);
    }

    fn attr(id: &str, kind: AttrKind) -> AttrSpec {
        AttrSpec {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            ttl: None,
            kind,
            data_type_str: None,
            mirror_of: None,
        }
    }

    fn observations(multi_value: bool, pre: i64, post: i64) -> AttrKind {
        AttrKind::Observations {
            data_type: DataType::Primitive(crate::datatype::Primitive::Int),
            editable: false,
            confidence: false,
            multi_value,
            history_params: HistoryParams {
                pre_validity: mins(pre),
                post_validity: mins(post),
                ..HistoryParams::default()
            },
            history_force_graph: false,
        }
    }

    fn bus() -> EntityType {
        let mut attribs = IndexMap::new();
        attribs.insert(
            "label".to_string(),
            attr(
                "label",
                AttrKind::Plain {
                    data_type: DataType::Primitive(crate::datatype::Primitive::String),
                    editable: true,
                },
            ),
        );
        attribs.insert(
            "speed".to_string(),
            attr("speed", observations(false, 5, 10)),
        );
        attribs.insert(
            "passengers".to_string(),
            attr("passengers", observations(true, 5, 5)),
        );
        attribs.insert(
            "load".to_string(),
            attr(
                "load",
                AttrKind::Timeseries {
                    timeseries_type: crate::spec::TimeseriesType::Irregular,
                    series: IndexMap::new(),
                    timeseries_params: TimeseriesParams::default(),
                },
            ),
        );
        let mut mirror = attr("riders", observations(true, 0, 0));
        mirror.mirror_of = Some(("rider".into(), "bus".into()));
        attribs.insert("riders".to_string(), mirror);
        EntityType {
            spec: EntitySpec {
                id: "bus".into(),
                name: "bus".into(),
                description: String::new(),
                snapshot: true,
                id_data_type: EidType::String,
                lifetime: Lifetime::Immortal,
            },
            attribs,
        }
    }

    #[test]
    fn current_values_of_a_master_record() {
        let speed = [
            item(Bson::Double(50.0), "12:00", "12:02", 0.8),
            item(Bson::Double(60.0), "12:10", "12:11", 1.0),
        ];
        let passengers = [
            item(Bson::Int64(1), "12:00", "12:10", 1.0),
            item(Bson::Int64(2), "12:05", "12:20", 0.5),
        ];
        let master = doc! {
            "_id": "bus-42",
            "#hash": 17,
            "speed": speed.iter().map(stored).collect::<Vec<_>>(),
            "label": {"v": "Night line", "ts_last_update": crate::value::time(at("11:00"))},
            "passengers": passengers.iter().map(stored).collect::<Vec<_>>(),
            "load": [{"t1": crate::value::time(at("12:00")), "t2": crate::value::time(at("12:00")), "v": {"x": [1]}}],
            "riders": [{"eid": "ignored"}],
            "retired_attr": {"v": 1},
        };
        let got = current_values(&bus(), &master, at("12:07"));
        let keys: Vec<&str> = got.keys().map(String::as_str).collect();
        // eid first, then configuration order; no timeseries, mirrors or unknown attributes.
        assert_eq!(
            keys,
            [
                "eid",
                "label",
                "speed",
                "speed#c",
                "passengers",
                "passengers#c"
            ]
        );
        assert_eq!(got.get("eid"), Some(&Bson::String("bus-42".into())));
        assert_eq!(got.get("label"), Some(&Bson::String("Night line".into())));
        assert_eq!(got.get("speed"), Some(&Bson::Double(50.0)));
        // 12:07: A is 5 min past t2 → 0.8·0.5 = 0.4; B 3 min before t1 → 0.4. Tie: first wins.
        assert_close(got.get_f64("speed#c").expect("conf"), 0.4);
        assert_eq!(
            got.get("passengers"),
            Some(&Bson::Array(vec![Bson::Int64(1), Bson::Int64(2)]))
        );

        // Nothing current → observation attributes omitted, plain still present.
        let later = current_values(&bus(), &master, at("14:00"));
        let keys: Vec<&str> = later.keys().map(String::as_str).collect();
        assert_eq!(keys, ["eid", "label"]);
    }

    #[test]
    fn malformed_items_are_skipped_and_reported() {
        let good = item(Bson::Double(60.0), "12:00", "12:10", 1.0);
        let master = doc! {
            "_id": 7,
            "speed": [stored(&good), "garbage", {"t1": 5, "t2": 6, "v": 1.0}],
            "label": "not a plain document",
        };
        let got = current_values(&bus(), &master, at("12:05"));
        assert_eq!(got.get("speed"), Some(&Bson::Double(60.0)));
        assert_eq!(got.get("label"), None);
        assert_eq!(
            history_item_from_bson(&Bson::String("garbage".into())),
            Err(HistoryDecodeError::NotADocument("String".into()))
        );
        assert!(matches!(
            history_item_from_bson(&Bson::Document(doc! {"t1": 5, "t2": 6})),
            Err(HistoryDecodeError::WrongType { key: "t1", .. })
        ));
        assert!(matches!(
            history_item_from_bson(&Bson::Document(
                doc! {"t1": bson::DateTime::now(), "t2": bson::DateTime::now(), "c": "x"}
            )),
            Err(HistoryDecodeError::WrongType { key: "c", .. })
        ));
        assert_eq!(
            history_item_from_bson(&Bson::Document(doc! {"t2": bson::DateTime::now()})),
            Err(HistoryDecodeError::MissingKey("t1"))
        );
    }

    #[test]
    fn expire_time_cuts_the_post_validity_ramp() {
        let p = item(Bson::Int32(1), "12:00", "12:10", 1.0);
        assert!(!is_expired(&p, None, at("23:00")));
        assert!(!is_expired(&p, Some(mins(5)), at("12:15")));
        assert!(is_expired(&p, Some(mins(5)), at("12:16")));
        let mut entity = bus();
        if let Some(AttrKind::Observations { history_params, .. }) =
            entity.attribs.get_mut("speed").map(|a| &mut a.kind)
        {
            history_params.expire_time = Some(mins(2));
        }
        let master = doc! {"_id": "b", "speed": [stored(&p)]};
        // post_validity 10m alone would give 0.7 at 12:13; expire_time 2m drops it.
        let plain = current_values(&bus(), &master, at("12:13"));
        assert_close(plain.get_f64("speed#c").expect("conf"), 0.7);
        assert_eq!(
            current_values(&entity, &master, at("12:13")).get("speed"),
            None
        );
        assert!(
            current_values(&entity, &master, at("12:12"))
                .get("speed")
                .is_some()
        );
    }

    /// The record read path computes exactly what the master-record path computes, on
    /// well-formed, malformed, mixed-shape and expiring records.
    #[test]
    fn stored_records_give_the_same_current_values_as_master_records() {
        let a = item(Bson::Double(50.0), "12:00", "12:02", 0.8);
        let b = item(Bson::Double(60.0), "12:10", "12:11", 1.0);
        let p1 = item(Bson::Int64(1), "12:00", "12:10", 1.0);
        let p2 = item(Bson::Int32(1), "12:05", "12:20", 0.5);
        let masters = [
            doc! {
                "_id": "bus-42", "#hash": 17, "#min_t2s": {"speed": 1},
                "speed": [stored(&a), stored(&b)],
                "label": {"v": "Night line", "ts_last_update": crate::value::time(at("11:00"))},
                "passengers": [stored(&p1), stored(&p2), stored(&p1)],
                "load": [{"t1": crate::value::time(at("12:00")), "t2": crate::value::time(at("12:00")), "v": 3}],
                "retired_attr": {"v": 1},
            },
            doc! {"_id": 7, "speed": [stored(&b), "garbage", {"t1": 5, "t2": 6, "v": 1.0}], "label": "bad"},
            // shapes that do not fit the configured kind are skipped
            doc! {"_id": 8, "speed": {"v": 1.0}, "label": [stored(&a)], "passengers": {"x": 1}},
            doc! {"_id": 9, "label": {"ts_last_update": 1}},
            doc! {"_id": 10},
        ];
        let mut expiring = bus();
        if let Some(AttrKind::Observations { history_params, .. }) =
            expiring.attribs.get_mut("speed").map(|a| &mut a.kind)
        {
            history_params.expire_time = Some(mins(2));
        }
        for entity in [bus(), expiring] {
            for master in &masters {
                for t in ["11:55", "12:01", "12:07", "12:13", "12:30", "14:00"] {
                    let want = current_values(&entity, master, at(t));
                    let record = StoredRecord::from_master(master);
                    let id = master.get("_id").cloned().expect("id");
                    let got = current_values_of(&entity, id, &record, at(t));
                    assert_eq!(got, want, "{master} at {t}");
                }
            }
        }
    }

    #[test]
    fn huge_validities_give_an_unbounded_window() {
        let params = HistoryParams {
            pre_validity: TimeDelta::MAX,
            post_validity: TimeDelta::MAX,
            ..HistoryParams::default()
        };
        let w = HistoryWindow::at(&params, at("12:00"));
        assert_eq!(w.t2_from, DateTime::<Utc>::MIN_UTC);
        assert_eq!(w.t1_until, DateTime::<Utc>::MAX_UTC);
    }

    proptest::proptest! {
        /// Leaving out the items outside [`HistoryWindow`] changes no current value:
        /// minutes on a small grid so that items land exactly on the window's edges.
        #[test]
        fn items_outside_the_window_never_change_current_values(
            items in proptest::collection::vec((0i64..40, 0i64..10, 0i64..4, 0u8..5), 0..12),
            pre in 0i64..6,
            post in 0i64..6,
            expire in proptest::option::of(0i64..8),
            now in 0i64..50,
        ) {
            let base = at("12:00");
            let history: Vec<HistoryItem> = items
                .iter()
                .map(|&(start, len, v, c)| HistoryItem {
                    t1: base + mins(start),
                    t2: base + mins(start + len),
                    v: Bson::Int64(v),
                    c: Some(f64::from(c) / 4.0),
                })
                .collect();
            let params = HistoryParams {
                pre_validity: mins(pre),
                post_validity: mins(post),
                expire_time: expire.map(mins),
                ..HistoryParams::default()
            };
            let t = base + mins(now);
            let window = HistoryWindow::at(&params, t);
            let kept: Vec<HistoryItem> =
                history.iter().filter(|i| window.contains(i)).cloned().collect();
            for multi_value in [false, true] {
                let (mut all, mut windowed) = (Document::new(), Document::new());
                insert_observation(&mut all, "a", multi_value, &params, &history, t);
                insert_observation(&mut windowed, "a", multi_value, &params, &kept, t);
                proptest::prop_assert_eq!(&all, &windowed, "multi_value {}", multi_value);
            }
        }
    }
}
