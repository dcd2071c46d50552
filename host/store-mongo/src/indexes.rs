//! Indexes of DP3's layout (data-model.md §8.10), created at open. Names follow the
//! drivers' default (`<field>_<dir>_...`) so indexes DP3 created are recognised as the same.

use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use dp3_model::{AttrType, ModelSpec};

use crate::names;

/// Run records expire after 30 days.
pub const METADATA_TTL_SECS: i32 = 30 * 24 * 3600;

/// One index of a `createIndexes` command.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub coll: String,
    pub spec: Document,
}

/// The drivers' default index name: `field_dir` pairs joined with `_`.
pub fn default_name(keys: &Document) -> String {
    keys.iter()
        .map(|(k, v)| match v {
            Bson::Int32(i) => format!("{k}_{i}"),
            Bson::Int64(i) => format!("{k}_{i}"),
            Bson::String(s) => format!("{k}_{s}"),
            other => format!("{k}_{other}"),
        })
        .collect::<Vec<_>>()
        .join("_")
}

fn index(coll: &str, keys: Document, options: Document) -> IndexSpec {
    let mut spec = doc! {"key": keys.clone(), "name": default_name(&keys)};
    spec.extend(options);
    IndexSpec {
        coll: coll.to_owned(),
        spec,
    }
}

/// Indexes of the shared collections.
pub fn global_indexes() -> Vec<IndexSpec> {
    vec![
        index(
            names::METADATA,
            doc! {"#time_created": 1},
            doc! {"expireAfterSeconds": METADATA_TTL_SECS},
        ),
        index(names::LINK_CACHE, doc! {"to": 1}, doc! {}),
        index(names::LINK_CACHE, doc! {"from": 1}, doc! {}),
        index(names::LINK_CACHE, doc! {"using_attr": 1}, doc! {}),
        index(
            names::LINK_CACHE,
            doc! {"ttl": 1},
            doc! {"expireAfterSeconds": 0},
        ),
    ]
}

/// The partial index that finds an eid's non-full bucket.
pub fn open_bucket_index(etype: &str, bucket_size: u32) -> IndexSpec {
    index(
        &names::snapshots(etype),
        doc! {"_id": -1, "count": 1},
        doc! {"partialFilterExpression": {"count": {"$lt": crate::snapshots::size_bson(bucket_size)}}},
    )
}

/// Snapshot and master indexes of one entity type (the wildcard index is planned
/// separately, it depends on what exists).
pub fn entity_indexes(etype: &str, bucket_size: u32) -> Vec<IndexSpec> {
    let snaps = names::snapshots(etype);
    let over = names::snapshots_oversized(etype);
    vec![
        open_bucket_index(etype, bucket_size),
        index(
            &snaps,
            doc! {"latest": -1, "_id": 1},
            doc! {"partialFilterExpression": {"latest": {"$eq": true}}},
        ),
        index(
            &snaps,
            doc! {"oversized": -1},
            doc! {"partialFilterExpression": {"oversized": {"$eq": true}}},
        ),
        index(&snaps, doc! {"_time_created": 1}, doc! {}),
        index(&over, doc! {"eid": 1}, doc! {}),
        index(&over, doc! {"_time_created": 1}, doc! {}),
        index(&names::master(etype), doc! {"#hash": 1}, doc! {}),
    ]
}

/// The existing open-bucket index must be dropped first when its partial filter differs
/// (e.g. created without one, or for another bucket size).
pub fn open_bucket_index_is_stale(existing: &[Document], wanted: &IndexSpec) -> Option<String> {
    let name = wanted.spec.get_str("name").ok()?;
    let found = existing
        .iter()
        .find(|i| i.get_str("name").ok() == Some(name))?;
    let want = wanted.spec.get("partialFilterExpression");
    (found.get("partialFilterExpression") != want).then(|| name.to_owned())
}

/// The wildcard projection covering the model's attributes of one entity type:
/// `#min_t2s.<a>` for histories, `<a>.ts_last_update` for plain attributes.
pub fn wildcard_projection(model: &ModelSpec, etype: &str) -> Document {
    let mut p = Document::new();
    if let Some(et) = model.entity(etype) {
        for (id, a) in &et.attribs {
            if a.is_read_only() {
                continue; // mirrors never appear in master records
            }
            match a.attr_type() {
                AttrType::Plain => p.insert(format!("{id}.ts_last_update"), 1),
                AttrType::Observations | AttrType::Timeseries => {
                    p.insert(format!("#min_t2s.{id}"), 1)
                }
            };
        }
    }
    p
}

/// What to change on `{etype}#master` (§8.10): drop indexes on attribute fields and
/// wildcard indexes that do not cover the current attributes (or are `t2`-based), and
/// create `wildcard_<YYYYmmddHHMMSS>` when none fits.
pub fn plan_master_indexes(
    existing: &[Document],
    attrs: &[String],
    projection: &Document,
    now: DateTime<Utc>,
) -> (Vec<String>, Option<Document>) {
    let mut drop = Vec::new();
    let mut covered = false;
    for ix in existing {
        let (Ok(name), Ok(key)) = (ix.get_str("name"), ix.get_document("key")) else {
            continue;
        };
        if name == "_id_" {
            continue;
        }
        if key.contains_key("$**") {
            let proj = ix
                .get_document("wildcardProjection")
                .cloned()
                .unwrap_or_default();
            let t2_based = proj.keys().any(|k| k.ends_with(".t2"));
            let covers = projection.keys().all(|k| proj.contains_key(k));
            if !t2_based && covers && !covered && !projection.is_empty() {
                covered = true;
            } else {
                drop.push(name.to_owned());
            }
            continue;
        }
        let on_attr = key.keys().any(|k| {
            let first = k.split('.').next().unwrap_or(k);
            attrs.iter().any(|a| a == first)
        });
        if on_attr {
            drop.push(name.to_owned());
        }
    }
    let create = (!covered && !projection.is_empty()).then(|| {
        doc! {
            "key": {"$**": 1},
            "name": format!("wildcard_{}", now.format("%Y%m%d%H%M%S")),
            "wildcardProjection": projection.clone(),
        }
    });
    (drop, create)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn default_names_match_the_drivers() {
        assert_eq!(
            default_name(&doc! {"_id": -1, "count": 1}),
            "_id_-1_count_1"
        );
        assert_eq!(
            default_name(&doc! {"latest": -1, "_id": 1}),
            "latest_-1__id_1"
        );
        assert_eq!(default_name(&doc! {"#time_created": 1}), "#time_created_1");
    }

    #[test]
    fn dp3_index_specs() {
        let g = global_indexes();
        assert_eq!(g[0].coll, "#metadata");
        assert_eq!(
            g[0].spec.get_i32("expireAfterSeconds").ok(),
            Some(2_592_000)
        );
        assert_eq!(
            g[4].spec,
            doc! {"key": {"ttl": 1}, "name": "ttl_1", "expireAfterSeconds": 0}
        );
        let e = entity_indexes("bus", 32);
        assert_eq!(
            e[0].spec,
            doc! {"key": {"_id": -1, "count": 1}, "name": "_id_-1_count_1",
            "partialFilterExpression": {"count": {"$lt": 32}}}
        );
        assert_eq!(e[0].coll, "bus#snapshots");
        assert_eq!(
            e[1].spec.get_document("partialFilterExpression").ok(),
            Some(&doc! {"latest": {"$eq": true}})
        );
        assert_eq!(e[4].coll, "bus#snapshots_oversized");
        assert_eq!(e[6].coll, "bus#master");
    }

    #[test]
    fn stale_open_bucket_index() {
        let wanted = open_bucket_index("bus", 32);
        let without = doc! {"name": "_id_-1_count_1", "key": {"_id": -1, "count": 1}};
        assert_eq!(
            open_bucket_index_is_stale(&[without], &wanted),
            Some("_id_-1_count_1".into())
        );
        let same = wanted.spec.clone();
        assert_eq!(open_bucket_index_is_stale(&[same], &wanted), None);
        assert_eq!(open_bucket_index_is_stale(&[], &wanted), None);
    }

    #[test]
    fn master_index_planning() {
        let now = Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("time");
        let attrs = vec!["speed".to_owned(), "label".to_owned()];
        let proj = doc! {"#min_t2s.speed": 1, "label.ts_last_update": 1};
        let existing = vec![
            doc! {"name": "_id_", "key": {"_id": 1}},
            doc! {"name": "#hash_1", "key": {"#hash": 1}},
            doc! {"name": "speed.t2_1", "key": {"speed.t2": 1}},
            doc! {"name": "wildcard_old", "key": {"$**": 1}, "wildcardProjection": {"#min_t2s.speed": 1}},
        ];
        let (drop, create) = plan_master_indexes(&existing, &attrs, &proj, now);
        assert_eq!(
            drop,
            vec!["speed.t2_1".to_owned(), "wildcard_old".to_owned()]
        );
        assert_eq!(
            create,
            Some(
                doc! {"key": {"$**": 1}, "name": "wildcard_20240501120000", "wildcardProjection": proj.clone()}
            )
        );
        let fitting = vec![
            doc! {"name": "wildcard_x", "key": {"$**": 1}, "wildcardProjection": proj.clone()},
        ];
        assert_eq!(
            plan_master_indexes(&fitting, &attrs, &proj, now),
            (vec![], None)
        );
        let t2 = vec![
            doc! {"name": "w", "key": {"$**": 1}, "wildcardProjection": {"#min_t2s.speed": 1, "label.ts_last_update": 1, "speed.t2": 1}},
        ];
        assert_eq!(
            plan_master_indexes(&t2, &attrs, &proj, now).0,
            vec!["w".to_owned()]
        );
        assert_eq!(plan_master_indexes(&[], &[], &doc! {}, now), (vec![], None));
    }
}
