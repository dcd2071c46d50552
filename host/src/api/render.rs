//! DP3's JSON renderings: the entity model (`/entities`), master records, histories and
//! snapshots (api.md §1.3, §4.3, §4.6).

use bson::{Bson, Document};
use chrono::{DateTime, TimeDelta, Utc};
use dp3_model::value::{as_time, format_api_datetime, to_api_json};
use dp3_model::{AttrKind, AttrSpec, EntityType, TimeseriesType};
use serde_json::{Map, Value as Json, json};

/// A duration as pydantic serialises `timedelta`: ISO-8601 (`PT0S`, `PT10M`, `PT1H`, `P7D`,
/// `P1Y` for 365 days, `PT1.5S`).
pub fn iso_duration(d: TimeDelta) -> String {
    let negative = d < TimeDelta::zero();
    let d = d.abs();
    let total_secs = d.num_seconds();
    let micros = d.subsec_nanos() / 1000;
    let days = total_secs / 86_400;
    let secs = total_secs % 86_400;
    let mut out = String::from(if negative { "-P" } else { "P" });
    let (years, days) = (days / 365, days % 365);
    if years != 0 {
        out.push_str(&format!("{years}Y"));
    }
    if days != 0 {
        out.push_str(&format!("{days}D"));
    }
    if secs != 0 || micros != 0 {
        out.push('T');
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h != 0 {
            out.push_str(&format!("{h}H"));
        }
        if m != 0 {
            out.push_str(&format!("{m}M"));
        }
        if micros != 0 {
            let frac = format!("{micros:06}");
            out.push_str(&format!("{s}.{}S", frac.trim_end_matches('0')));
        } else if s != 0 {
            out.push_str(&format!("{s}S"));
        }
    }
    if total_secs == 0 && micros == 0 {
        out.push_str("T0S");
    }
    out
}

fn opt_duration(d: Option<TimeDelta>) -> Json {
    d.map_or(Json::Null, |d| Json::String(iso_duration(d)))
}

/// One attribute as `/entities` shows it (exactly DP3's keys: its own clients validate them
/// strictly).
pub fn attr_spec_json(a: &AttrSpec) -> Json {
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("name".into(), json!(a.name));
    m.insert("description".into(), json!(a.description));
    m.insert(
        "ttl".into(),
        json!(iso_duration(a.ttl.unwrap_or_else(TimeDelta::zero))),
    );
    let data_type = || json!(a.data_type_str.clone().unwrap_or_default());
    match &a.kind {
        AttrKind::Plain { editable, .. } => {
            m.insert("data_type".into(), data_type());
            m.insert("editable".into(), json!(editable));
            m.insert("t".into(), json!(1));
            m.insert("type".into(), json!("plain"));
        }
        AttrKind::Observations {
            editable,
            confidence,
            multi_value,
            history_params: h,
            history_force_graph,
            ..
        } => {
            m.insert("data_type".into(), data_type());
            m.insert("editable".into(), json!(editable));
            m.insert("t".into(), json!(2));
            m.insert("type".into(), json!("observations"));
            m.insert("confidence".into(), json!(confidence));
            m.insert("multi_value".into(), json!(multi_value));
            m.insert(
                "history_params".into(),
                json!({
                    "max_age": opt_duration(h.max_age),
                    "max_items": h.max_items,
                    "expire_time": opt_duration(h.expire_time),
                    "pre_validity": iso_duration(h.pre_validity),
                    "post_validity": iso_duration(h.post_validity),
                    "aggregate": h.aggregate,
                }),
            );
            m.insert("history_force_graph".into(), json!(history_force_graph));
        }
        AttrKind::Timeseries {
            timeseries_type,
            series,
            timeseries_params,
        } => {
            m.insert("t".into(), json!(4));
            m.insert("type".into(), json!("timeseries"));
            m.insert("timeseries_type".into(), json!(timeseries_type.name()));
            let series: Map<String, Json> = series
                .iter()
                .map(|(name, p)| (name.clone(), json!({ "data_type": p.name() })))
                .collect();
            m.insert("series".into(), Json::Object(series));
            m.insert(
                "timeseries_params".into(),
                json!({
                    "max_age": opt_duration(timeseries_params.max_age),
                    "time_step": opt_duration(timeseries_params.time_step),
                }),
            );
        }
    }
    Json::Object(m)
}

/// One entity type as `/entities` shows it (without `eid_estimate_count`).
pub fn entity_type_json(et: &EntityType) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("id".into(), json!(et.spec.id));
    m.insert("id_data_type".into(), json!(et.spec.id_data_type.name()));
    m.insert("name".into(), json!(et.spec.name));
    let attribs: Map<String, Json> = et
        .attribs
        .iter()
        .map(|(id, a)| (id.clone(), attr_spec_json(a)))
        .collect();
    m.insert("attribs".into(), Json::Object(attribs));
    m
}

/// A history item read from a master record: `{t1, t2, v, c?}`.
struct StoredItem<'a> {
    t1: DateTime<Utc>,
    t2: DateTime<Utc>,
    doc: &'a Document,
}

fn stored_item(b: &Bson) -> Option<StoredItem<'_>> {
    let doc = b.as_document()?;
    Some(StoredItem {
        t1: doc.get("t1").and_then(as_time)?,
        t2: doc.get("t2").and_then(as_time)?,
        doc,
    })
}

/// The time window of history reads (defaults: epoch .. now, api.md §4.6).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Window {
    pub fn new(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        Window {
            from: from.unwrap_or(DateTime::UNIX_EPOCH),
            to: to.unwrap_or_else(Utc::now),
        }
    }

    /// Interval overlap: `t1 <= to && t2 >= from`.
    fn overlaps(&self, t1: DateTime<Utc>, t2: DateTime<Utc>) -> bool {
        t1 <= self.to && t2 >= self.from
    }
}

/// Observation history items overlapping the window, stored order.
pub fn observations_history(stored: Option<&Bson>, w: &Window) -> Vec<Json> {
    let Some(Bson::Array(items)) = stored else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|b| stored_item(b).is_some_and(|it| w.overlaps(it.t1, it.t2)))
        .map(observation_item_json)
        .collect()
}

/// One stored observation as DP3 shows it: `{t1, t2, v, c}` (the merge count aggregation
/// keeps next to merged items is internal).
fn observation_item_json(b: &Bson) -> Json {
    let mut j = to_api_json(b);
    if let Json::Object(m) = &mut j {
        m.remove(dp3_model::aggregate::MERGE_COUNT_KEY);
    }
    j
}

/// Timeseries rows overlapping the window, expanded to one point per sample
/// (data-model.md §6.4), each `{t1, t2, v: {user series: value}}`, filtered again.
pub fn timeseries_history(attr: &AttrSpec, stored: Option<&Bson>, w: &Window) -> Vec<Json> {
    let (
        Some(Bson::Array(rows)),
        AttrKind::Timeseries {
            timeseries_type,
            series,
            timeseries_params,
        },
    ) = (stored, &attr.kind)
    else {
        return Vec::new();
    };
    let time_series: &[&str] = match timeseries_type {
        TimeseriesType::Regular => &[],
        TimeseriesType::Irregular => &["time"],
        TimeseriesType::IrregularIntervals => &["time_first", "time_last"],
    };
    let user_series: Vec<&String> = series
        .keys()
        .filter(|k| !time_series.contains(&k.as_str()))
        .collect();
    let mut out = Vec::new();
    for row in rows.iter().filter_map(stored_item) {
        if !w.overlaps(row.t1, row.t2) {
            continue;
        }
        let Ok(v) = row.doc.get_document("v") else {
            continue;
        };
        let column = |name: &str| -> &[Bson] {
            match v.get(name) {
                Some(Bson::Array(a)) => a.as_slice(),
                _ => &[],
            }
        };
        let len = user_series
            .iter()
            .map(|s| column(s).len())
            .chain(time_series.iter().map(|s| column(s).len()))
            .min()
            .unwrap_or(0);
        for i in 0..len {
            let bounds = match timeseries_type {
                TimeseriesType::Regular => timeseries_params.time_step.and_then(|step| {
                    // Checked: chrono's operators panic on overflow.
                    let offset = step.checked_mul(i32::try_from(i).ok()?)?;
                    let start = row.t1.checked_add_signed(offset)?;
                    Some((start, start.checked_add_signed(step)?))
                }),
                TimeseriesType::Irregular => {
                    column("time").get(i).and_then(as_time).map(|t| (t, t))
                }
                TimeseriesType::IrregularIntervals => column("time_first")
                    .get(i)
                    .and_then(as_time)
                    .zip(column("time_last").get(i).and_then(as_time)),
            };
            let Some((t1, t2)) = bounds else { continue };
            if !w.overlaps(t1, t2) {
                continue;
            }
            let values: Map<String, Json> = user_series
                .iter()
                .map(|s| {
                    let value = column(s).get(i).map_or(Json::Null, to_api_json);
                    ((*s).clone(), value)
                })
                .collect();
            out.push(json!({
                "t1": format_api_datetime(&t1),
                "t2": format_api_datetime(&t2),
                "v": values,
            }));
        }
    }
    out
}

/// Master-record keys never shown by the API.
const HIDDEN_MASTER_KEYS: [&str; 4] = ["_id", "#hash", "#min_t2s", "#revision"];

/// A master record as `/master` shows it: internal keys stripped, timeseries re-expanded and
/// filtered, everything else (incl. attributes no longer configured) passed through.
pub fn master_record_json(et: &EntityType, master: Option<&Document>, w: &Window) -> Json {
    let Some(master) = master else {
        return json!({});
    };
    let mut out = Map::new();
    for (key, value) in master {
        if HIDDEN_MASTER_KEYS.contains(&key.as_str()) {
            continue;
        }
        let rendered = match et.attribs.get(key) {
            Some(a) if matches!(a.kind, AttrKind::Timeseries { .. }) => {
                Json::Array(timeseries_history(a, Some(value), w))
            }
            Some(a) if matches!(a.kind, AttrKind::Observations { .. }) => match value {
                Bson::Array(items) => {
                    Json::Array(items.iter().map(observation_item_json).collect())
                }
                other => to_api_json(other),
            },
            _ => to_api_json(value),
        };
        out.insert(key.clone(), rendered);
    }
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use dp3_model::value::time;
    use dp3_model::{Primitive, TimeseriesParams};
    use indexmap::IndexMap;

    #[test]
    fn durations_render_like_pydantic() {
        assert_eq!(iso_duration(TimeDelta::zero()), "PT0S");
        assert_eq!(iso_duration(TimeDelta::minutes(10)), "PT10M");
        assert_eq!(iso_duration(TimeDelta::hours(1)), "PT1H");
        assert_eq!(iso_duration(TimeDelta::days(7)), "P7D");
        assert_eq!(iso_duration(TimeDelta::seconds(10)), "PT10S");
        assert_eq!(iso_duration(TimeDelta::days(365)), "P1Y");
        assert_eq!(
            iso_duration(TimeDelta::days(1) + TimeDelta::seconds(3661)),
            "P1DT1H1M1S"
        );
        assert_eq!(iso_duration(TimeDelta::milliseconds(1500)), "PT1.5S");
    }

    fn ts_attr(ty: TimeseriesType, step: Option<TimeDelta>) -> AttrSpec {
        let mut series = IndexMap::new();
        series.insert("value".to_string(), Primitive::Int);
        match ty {
            TimeseriesType::Irregular => {
                series.insert("time".to_string(), Primitive::Time);
            }
            TimeseriesType::IrregularIntervals => {
                series.insert("time_first".to_string(), Primitive::Time);
                series.insert("time_last".to_string(), Primitive::Time);
            }
            TimeseriesType::Regular => {}
        }
        AttrSpec {
            id: "ts".into(),
            name: "ts".into(),
            description: String::new(),
            ttl: None,
            kind: AttrKind::Timeseries {
                timeseries_type: ty,
                series,
                timeseries_params: TimeseriesParams {
                    max_age: None,
                    time_step: step,
                },
            },
            data_type_str: None,
            mirror_of: None,
        }
    }

    #[test]
    fn regular_timeseries_expand_per_sample() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        let a = ts_attr(TimeseriesType::Regular, Some(TimeDelta::minutes(10)));
        let stored = Bson::Array(vec![Bson::Document(bson::doc! {
            "t1": time(t0), "t2": time(t0 + TimeDelta::minutes(20)),
            "v": {"value": [1, 2]},
        })]);
        let all = Window::new(None, Some(t0 + TimeDelta::days(1)));
        assert_eq!(
            Json::Array(timeseries_history(&a, Some(&stored), &all)),
            json!([
                {"t1":"2026-01-01T12:00:00Z","t2":"2026-01-01T12:10:00Z","v":{"value":1}},
                {"t1":"2026-01-01T12:10:00Z","t2":"2026-01-01T12:20:00Z","v":{"value":2}},
            ])
        );
        // The second sample only: the first ends before the window starts.
        let late = Window::new(
            Some(t0 + TimeDelta::minutes(11)),
            Some(t0 + TimeDelta::days(1)),
        );
        assert_eq!(timeseries_history(&a, Some(&stored), &late).len(), 1);
    }

    #[test]
    fn irregular_timeseries_use_their_time_series() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        let a = ts_attr(TimeseriesType::Irregular, None);
        let stored = Bson::Array(vec![Bson::Document(bson::doc! {
            "t1": time(t0), "t2": time(t0 + TimeDelta::minutes(5)),
            "v": {"value": [7], "time": [time(t0 + TimeDelta::minutes(3))]},
        })]);
        let w = Window::new(None, Some(t0 + TimeDelta::days(1)));
        assert_eq!(
            Json::Array(timeseries_history(&a, Some(&stored), &w)),
            json!([{"t1":"2026-01-01T12:03:00Z","t2":"2026-01-01T12:03:00Z","v":{"value":7}}])
        );
    }
}
