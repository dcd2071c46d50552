//! Master-record update documents: DP3's buffered upsert per entity (data-model.md §6.1)
//! `{$push: {a: {$each: [...]}}, $set: {...}, $min: {"#min_t2s.a"}, $max: {"#ttl.n"},
//! $inc: {"#revision": 1}}`, plus `$setOnInsert` of `#hash`/`#time_created` for creations.

use std::collections::BTreeSet;

use bson::{Bson, Document, doc};
use dp3_model::aggregate::AggregatedItem;
use dp3_model::value;
use dp3_store::{EntityWrite, HistoryItem, Result, StoreError};

use crate::names::{check_attr, check_field};

/// A history item as stored: `{t1, t2, v, c}` (observations) or `{t1, t2, v}`
/// (timeseries).
pub fn history_item(item: &HistoryItem) -> Document {
    let mut d = doc! {"t1": value::time(item.t1), "t2": value::time(item.t2), "v": item.v.clone()};
    if let Some(c) = item.c {
        d.insert("c", c);
    }
    d
}

/// The merged update of consecutive writes of one entity, applied in order; `None` when
/// they change nothing. Also returns the number of history items pushed.
pub fn master_update(writes: &[&EntityWrite]) -> Result<Option<(Document, u64)>> {
    if writes.iter().all(|w| w.is_empty()) {
        return Ok(None);
    }
    let mut set_on_insert = Document::new();
    let mut set = Document::new();
    let mut push: Vec<(String, Vec<Bson>)> = Vec::new();
    let mut min = Document::new();
    let mut max = Document::new();
    let mut items = 0u64;
    for w in writes {
        if let Some(c) = w.create {
            set_on_insert.insert("#hash", i32::from(c.hash));
            set_on_insert.insert("#time_created", value::time(c.time_created));
        }
        for (attr, v, ts) in &w.plain {
            check_attr(attr)?;
            // last write wins (Document::insert replaces the value)
            set.insert(
                attr.as_str(),
                doc! {"v": v.clone(), "ts_last_update": value::time(*ts)},
            );
        }
        for (attr, item) in &w.history {
            check_attr(attr)?;
            match push.iter_mut().find(|(a, _)| a == attr) {
                Some((_, list)) => list.push(Bson::Document(history_item(item))),
                None => push.push((attr.clone(), vec![Bson::Document(history_item(item))])),
            }
            let key = format!("#min_t2s.{attr}");
            let t2 = value::time(item.t2);
            let lower = match (min.get(&key), &t2) {
                (Some(Bson::DateTime(cur)), Bson::DateTime(new)) => new < cur,
                _ => true,
            };
            if lower {
                min.insert(key, t2);
            }
            items += 1;
        }
        for (name, expiry) in &w.ttl {
            check_field("TTL token", name)?;
            let key = format!("#ttl.{name}");
            let e = value::time(*expiry);
            let higher = match (max.get(&key), &e) {
                (Some(Bson::DateTime(cur)), Bson::DateTime(new)) => new > cur,
                _ => true,
            };
            if higher {
                max.insert(key, e);
            }
        }
    }
    let pushed: BTreeSet<&str> = push.iter().map(|(a, _)| a.as_str()).collect();
    if let Some(both) = set.keys().find(|k| pushed.contains(k.as_str())) {
        return Err(StoreError::InvalidQuery(format!(
            "attribute '{both}' is written both as a plain value and as history in one batch"
        )));
    }
    let mut u = Document::new();
    if !set_on_insert.is_empty() {
        u.insert("$setOnInsert", set_on_insert);
    }
    if !set.is_empty() {
        u.insert("$set", set);
    }
    if !push.is_empty() {
        let p: Document = push
            .into_iter()
            .map(|(a, list)| (a, Bson::Document(doc! {"$each": list})))
            .collect();
        u.insert("$push", p);
    }
    if !min.is_empty() {
        u.insert("$min", min);
    }
    if !max.is_empty() {
        u.insert("$max", max);
    }
    u.insert("$inc", doc! {"#revision": 1});
    Ok(Some((u, items)))
}

/// `replace_histories`: new arrays with their exact `#min_t2s`, emptied histories removed.
pub fn replace_histories_update(histories: &[(String, Vec<AggregatedItem>)]) -> Result<Document> {
    let mut set = Document::new();
    let mut unset = Document::new();
    for (attr, items) in histories {
        check_attr(attr)?;
        let key = format!("#min_t2s.{attr}");
        // a repeated attribute: the last replacement wins
        set.remove(attr);
        set.remove(&key);
        unset.remove(attr);
        unset.remove(&key);
        match items.iter().map(|i| i.item.t2).min() {
            Some(t2) => {
                // merge counts above 1 are kept as `#n`, as the aggregation reads them back
                let list: Vec<Bson> = items.iter().map(AggregatedItem::to_bson).collect();
                set.insert(attr.as_str(), list);
                set.insert(key, value::time(t2));
            }
            None => {
                unset.insert(attr.as_str(), "");
                unset.insert(key, "");
            }
        }
    }
    let mut u = Document::new();
    if !set.is_empty() {
        u.insert("$set", set);
    }
    if !unset.is_empty() {
        u.insert("$unset", unset);
    }
    u.insert("$inc", doc! {"#revision": 1});
    Ok(u)
}

/// DP3's `max_age` cleanup of one attribute as an update pipeline (data-model.md §6.3):
/// keep items with `t2 >= t_old`, recompute `#min_t2s.<a>`, remove both when emptied.
pub fn delete_old_history_pipeline(attr: &str, older_than: Bson) -> Result<Vec<Document>> {
    check_attr(attr)?;
    let field = format!("${attr}");
    let kept = doc! {"$filter": {
        "input": {"$ifNull": [&field, []]},
        "cond": {"$gte": ["$$this.t2", older_than]},
    }};
    let empty = doc! {"$eq": [{"$size": &field}, 0]};
    let markers = doc! {"$ifNull": ["$#min_t2s", {}]};
    let without_marker = doc! {"$arrayToObject": {"$filter": {
        "input": {"$objectToArray": markers.clone()},
        "cond": {"$ne": ["$$this.k", attr]},
    }}};
    let with_marker = doc! {"$mergeObjects": [markers, {attr: {"$min": format!("{field}.t2")}}]};
    Ok(vec![
        doc! {"$set": {attr: kept}},
        // `#min_t2s` is rebuilt as a whole (`$objectToArray`/`$arrayToObject`, MongoDB
        // 3.4.4+) so the emptied attribute's entry is really removed.
        doc! {"$set": {
            "#min_t2s": {"$cond": [empty.clone(), without_marker, with_marker]},
            attr: {"$cond": [empty, "$$REMOVE", &field]},
            "#revision": {"$add": [{"$ifNull": ["$#revision", 0]}, 1]},
        }},
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
    use dp3_model::Eid;
    use dp3_store::Creation;

    fn at(m: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("time")
            + chrono::Duration::minutes(m)
    }

    fn item(t1: i64, t2: i64, v: i32, c: Option<f64>) -> HistoryItem {
        HistoryItem {
            t1: at(t1),
            t2: at(t2),
            v: Bson::Int32(v),
            c,
        }
    }

    #[test]
    fn dp3_upsert_shape() {
        let mut w1 = EntityWrite::new("bus", Eid::String("b".into()));
        w1.create = Some(Creation {
            hash: 50631,
            time_created: at(0),
        });
        w1.plain
            .push(("label".into(), Bson::String("a".into()), at(1)));
        w1.history
            .push(("speed".into(), item(10, 12, 1, Some(0.5))));
        w1.ttl.push(("base".into(), at(30)));
        let mut w2 = EntityWrite::new("bus", Eid::String("b".into()));
        w2.plain
            .push(("label".into(), Bson::String("b".into()), at(2)));
        w2.history.push(("speed".into(), item(2, 3, 2, Some(1.0))));
        w2.history.push(("load".into(), item(0, 10, 3, None)));
        w2.ttl.push(("base".into(), at(20)));
        w2.ttl.push(("data".into(), at(40)));
        let (u, n) = master_update(&[&w1, &w2]).expect("valid").expect("changes");
        assert_eq!(n, 3);
        assert_eq!(
            u,
            doc! {
                "$setOnInsert": {"#hash": 50631, "#time_created": value::time(at(0))},
                "$set": {"label": {"v": "b", "ts_last_update": value::time(at(2))}},
                "$push": {
                    "speed": {"$each": [
                        {"t1": value::time(at(10)), "t2": value::time(at(12)), "v": 1, "c": 0.5},
                        {"t1": value::time(at(2)), "t2": value::time(at(3)), "v": 2, "c": 1.0},
                    ]},
                    "load": {"$each": [{"t1": value::time(at(0)), "t2": value::time(at(10)), "v": 3}]},
                },
                "$min": {"#min_t2s.speed": value::time(at(3)), "#min_t2s.load": value::time(at(10))},
                "$max": {"#ttl.base": value::time(at(30)), "#ttl.data": value::time(at(40))},
                "$inc": {"#revision": 1},
            }
        );
    }

    #[test]
    fn ttl_only_and_empty_writes() {
        let mut w = EntityWrite::new("A", Eid::Int(8));
        assert_eq!(master_update(&[&w]).expect("valid"), None);
        w.ttl.push(("custom".into(), at(5)));
        let (u, n) = master_update(&[&w]).expect("valid").expect("changes");
        assert_eq!(n, 0);
        assert!(
            !u.contains_key("$setOnInsert"),
            "no #hash for TTL-only writes: {u}"
        );
        assert_eq!(
            u.get_document("$max").expect("max"),
            &doc! {"#ttl.custom": value::time(at(5))}
        );
    }

    #[test]
    fn rejects_unstorable_names_and_conflicts() {
        let mut w = EntityWrite::new("A", Eid::Int(1));
        w.plain.push(("a.b".into(), Bson::Int32(1), at(0)));
        assert!(master_update(&[&w]).is_err());
        let mut w = EntityWrite::new("A", Eid::Int(1));
        w.ttl.push(("$x".into(), at(0)));
        assert!(master_update(&[&w]).is_err());
        let mut w = EntityWrite::new("A", Eid::Int(1));
        w.plain.push(("x".into(), Bson::Int32(1), at(0)));
        w.history.push(("x".into(), item(0, 1, 1, None)));
        let e = master_update(&[&w]).expect_err("conflict");
        assert!(e.to_string().contains("'x'"), "{e}");
    }

    #[test]
    fn replace_histories_sets_and_unsets() {
        let u = replace_histories_update(&[
            (
                "o".into(),
                vec![
                    AggregatedItem::single(item(0, 5, 1, Some(1.0))),
                    AggregatedItem {
                        item: item(0, 2, 1, Some(1.0)),
                        count: 3,
                    },
                ],
            ),
            ("k".into(), vec![]),
        ])
        .expect("valid");
        assert_eq!(
            u,
            doc! {
                "$set": {
                    "o": [
                        {"t1": value::time(at(0)), "t2": value::time(at(5)), "v": 1, "c": 1.0},
                        {"t1": value::time(at(0)), "t2": value::time(at(2)), "v": 1, "c": 1.0, "#n": 3_i64},
                    ],
                    "#min_t2s.o": value::time(at(2)),
                },
                "$unset": {"k": "", "#min_t2s.k": ""},
                "$inc": {"#revision": 1},
            }
        );
        assert!(replace_histories_update(&[("#x".into(), vec![])]).is_err());
    }

    #[test]
    fn cleanup_pipeline_shape() {
        let p = delete_old_history_pipeline("o", value::time(at(20))).expect("valid");
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            doc! {"$set": {"o": {"$filter": {
                "input": {"$ifNull": ["$o", []]},
                "cond": {"$gte": ["$$this.t2", value::time(at(20))]},
            }}}}
        );
        let second = p[1].get_document("$set").expect("$set");
        assert!(
            second.contains_key("#min_t2s") && second.contains_key("o"),
            "{second}"
        );
        assert!(second.to_string().contains("$objectToArray"), "{second}");
        assert!(delete_old_history_pipeline("a.b", Bson::Null).is_err());
    }
}
