//! Removal of link values pointing at a deleted entity from one source record
//! (data-model.md §7.5 step 4), computed from the stored document so the update can be
//! applied with an optimistic `#revision` check.

use bson::{Bson, Document, doc};
use dp3_model::{Eid, value};

/// Whether a stored link value (`{eid, ...}` or an array of them) references `eid`.
pub fn references(v: &Bson, eid: &Eid) -> bool {
    match v {
        Bson::Document(d) => d.get("eid").and_then(Eid::from_bson).as_ref() == Some(eid),
        Bson::Array(items) => items.iter().any(|i| references(i, eid)),
        _ => false,
    }
}

/// The update removing references to `deleted` from attribute `attr` of `record`, or
/// `None` when nothing references it:
/// * observations (an array of `{t1, t2, v, c}`): datapoints whose value references it
///   are removed (the whole datapoint for array values); an emptied history is removed with
///   its `#min_t2s` entry, otherwise the marker is recomputed;
/// * plain single link: `$unset`;
/// * plain array/set of links: matching elements removed, the attribute removed when empty.
pub fn link_removal_update(record: &Document, attr: &str, deleted: &Eid) -> Option<Document> {
    let min_key = format!("#min_t2s.{attr}");
    let mut set = Document::new();
    let mut unset = Document::new();
    match record.get(attr)? {
        Bson::Array(items) => {
            let kept: Vec<Bson> = items
                .iter()
                .filter(|i| {
                    !i.as_document()
                        .and_then(|d| d.get("v"))
                        .is_some_and(|v| references(v, deleted))
                })
                .cloned()
                .collect();
            if kept.len() == items.len() {
                return None;
            }
            let min_t2 = kept
                .iter()
                .filter_map(|i| i.as_document()?.get("t2").and_then(value::as_time))
                .min();
            match min_t2 {
                Some(t) if !kept.is_empty() => {
                    set.insert(attr, kept);
                    set.insert(min_key, value::time(t));
                }
                _ if !kept.is_empty() => {
                    set.insert(attr, kept);
                    unset.insert(min_key, "");
                }
                _ => {
                    unset.insert(attr, "");
                    unset.insert(min_key, "");
                }
            }
        }
        Bson::Document(plain) => match plain.get("v")? {
            v @ Bson::Document(_) if references(v, deleted) => {
                unset.insert(attr, "");
            }
            Bson::Array(items) if items.iter().any(|i| references(i, deleted)) => {
                let kept: Vec<Bson> = items
                    .iter()
                    .filter(|i| !references(i, deleted))
                    .cloned()
                    .collect();
                if kept.is_empty() {
                    unset.insert(attr, "");
                } else {
                    set.insert(format!("{attr}.v"), kept);
                }
            }
            _ => return None,
        },
        _ => return None,
    }
    let mut u = Document::new();
    if !set.is_empty() {
        u.insert("$set", set);
    }
    if !unset.is_empty() {
        u.insert("$unset", unset);
    }
    u.insert("$inc", doc! {"#revision": 1});
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn t(m: u32) -> Bson {
        value::time(
            Utc.with_ymd_and_hms(2024, 5, 1, 12, m, 0)
                .single()
                .expect("time"),
        )
    }

    fn link(e: &str) -> Bson {
        Bson::Document(doc! {"eid": e})
    }

    fn b1() -> Eid {
        Eid::String("b1".into())
    }

    #[test]
    fn observations_drop_datapoints_and_recompute_marker() {
        let rec = doc! {
            "_id": "a",
            "obs": [
                {"t1": t(0), "t2": t(1), "v": link("b1"), "c": 1.0},
                {"t1": t(0), "t2": t(50), "v": link("b2"), "c": 1.0},
                {"t1": t(0), "t2": t(2), "v": [link("b2"), link("b1")], "c": 1.0},
            ],
            "#min_t2s": {"obs": t(1)},
        };
        let u = link_removal_update(&rec, "obs", &b1()).expect("changed");
        assert_eq!(
            u,
            doc! {
                "$set": {
                    "obs": [{"t1": t(0), "t2": t(50), "v": link("b2"), "c": 1.0}],
                    "#min_t2s.obs": t(50),
                },
                "$inc": {"#revision": 1},
            }
        );
        let only = doc! {"obs": [{"t1": t(0), "t2": t(1), "v": link("b1"), "c": 1.0}]};
        assert_eq!(
            link_removal_update(&only, "obs", &b1()),
            Some(doc! {"$unset": {"obs": "", "#min_t2s.obs": ""}, "$inc": {"#revision": 1}})
        );
    }

    #[test]
    fn plain_links() {
        let rec = doc! {
            "one": {"v": link("b1"), "ts_last_update": t(0)},
            "many": {"v": [link("b1"), link("b2")], "ts_last_update": t(0)},
            "lone": {"v": [link("b1")], "ts_last_update": t(0)},
            "other": {"v": link("b2"), "ts_last_update": t(0)},
            "num": {"v": 5, "ts_last_update": t(0)},
        };
        assert_eq!(
            link_removal_update(&rec, "one", &b1()),
            Some(doc! {"$unset": {"one": ""}, "$inc": {"#revision": 1}})
        );
        assert_eq!(
            link_removal_update(&rec, "many", &b1()),
            Some(doc! {"$set": {"many.v": [link("b2")]}, "$inc": {"#revision": 1}})
        );
        assert_eq!(
            link_removal_update(&rec, "lone", &b1()),
            Some(doc! {"$unset": {"lone": ""}, "$inc": {"#revision": 1}})
        );
        assert_eq!(link_removal_update(&rec, "other", &b1()), None);
        assert_eq!(link_removal_update(&rec, "num", &b1()), None);
        assert_eq!(link_removal_update(&rec, "missing", &b1()), None);
    }

    #[test]
    fn typed_references() {
        let ip = Eid::Ipv4("1.2.3.4".parse().expect("ip"));
        assert!(references(
            &Bson::Document(doc! {"eid": ip.to_bson(), "data": 1}),
            &ip
        ));
        assert!(
            !references(&link("1.2.3.4"), &ip),
            "a string is not an IPv4 eid"
        );
        assert!(references(
            &Bson::Document(doc! {"eid": 5i64}),
            &Eid::Int(5)
        ));
    }
}
