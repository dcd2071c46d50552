//! Master records `{etype}#master` and the raw log `{etype}#raw`: reads and maintenance.

use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use dp3_model::{Eid, value};
use dp3_store::{MasterScan, RawQuery, Result, StoreError};

use crate::command::{Cx, Find, WriteCommand, WriteKind};
use crate::names::{self, check_attr};
use crate::update::{delete_old_history_pipeline, replace_histories_update};

/// Metadata fields every projection keeps.
pub const META_FIELDS: [&str; 6] = [
    "_id",
    "#hash",
    "#time_created",
    "#revision",
    "#min_t2s",
    "#ttl",
];

pub fn check_partition(partition: Option<(u32, u32)>) -> Result<Option<Document>> {
    match partition {
        Some((_, 0)) => Err(StoreError::InvalidQuery(
            "hash partition count must be positive".into(),
        )),
        Some((index, count)) => Ok(Some(doc! {"$mod": [i64::from(count), i64::from(index)]})),
        None => Ok(None),
    }
}

pub fn scan_find(etype: &str, scan: &MasterScan) -> Result<Find> {
    let mut filter = Document::new();
    if let Some(after) = &scan.after {
        filter.insert("_id", doc! {"$gt": after.to_bson()});
    }
    if let Some(m) = check_partition(scan.partition)? {
        filter.insert("#hash", m);
    }
    let mut f = Find::new(names::master(etype), filter);
    f.sort = Some(doc! {"_id": 1});
    f.limit = scan.limit as u64;
    if let Some(attrs) = &scan.projection {
        let mut p: Document = META_FIELDS
            .iter()
            .map(|k| ((*k).to_owned(), Bson::Int32(1)))
            .collect();
        for a in attrs {
            // names that cannot be stored cannot be present either
            if check_attr(a).is_ok() {
                p.insert(a.as_str(), 1);
            }
        }
        f.projection = Some(p);
    }
    Ok(f)
}

pub async fn get(
    cx: &mut Cx<'_>,
    etype: &str,
    eid: &Eid,
    projection: Option<Document>,
) -> Result<Option<Document>> {
    let mut f = Find::new(names::master(etype), doc! {"_id": eid.to_bson()});
    f.projection = projection;
    f.limit = 1;
    Ok(cx
        .find(&format!("read {etype}/{eid}"), f)
        .await?
        .into_iter()
        .next())
}

pub async fn count(cx: &mut Cx<'_>, etype: &str) -> Result<u64> {
    // DP3's estimated_document_count: the `count` command without a query reads metadata.
    let reply = cx
        .run(
            &format!("count '{etype}'"),
            doc! {"count": names::master(etype)},
        )
        .await?;
    Ok(reply
        .get("n")
        .and_then(value::as_int)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0))
}

pub async fn replace_histories(
    cx: &mut Cx<'_>,
    etype: &str,
    eid: &Eid,
    expected_revision: i64,
    histories: &[(String, Vec<dp3_model::aggregate::AggregatedItem>)],
) -> Result<bool> {
    let u = replace_histories_update(histories)?;
    let mut cmd = WriteCommand::new(names::master(etype), WriteKind::Update);
    cmd.statements.push(WriteCommand::update(
        doc! {"_id": eid.to_bson(), "#revision": expected_revision},
        u,
        false,
        false,
    ));
    Ok(cx
        .write(&format!("replace histories of {etype}/{eid}"), &cmd)
        .await?
        .n
        > 0)
}

pub async fn delete_old_history(
    cx: &mut Cx<'_>,
    etype: &str,
    attr: &str,
    older_than: DateTime<Utc>,
) -> Result<u64> {
    let t = value::time(older_than);
    let pipeline = delete_old_history_pipeline(attr, t.clone())?;
    let mut cmd = WriteCommand::new(names::master(etype), WriteKind::Update);
    cmd.statements.push(WriteCommand::update(
        doc! {format!("#min_t2s.{attr}"): {"$lt": t}},
        pipeline,
        false,
        true,
    ));
    Ok(cx
        .write(&format!("clean history '{attr}' of '{etype}'"), &cmd)
        .await?
        .n)
}

/// What to do with one record's TTL tokens at `now`.
#[derive(Debug, Clone, PartialEq)]
pub enum TtlVerdict {
    /// Every token expired (also an empty `#ttl`): a deletion candidate.
    Expired,
    /// Remove these expired tokens.
    Prune(Vec<String>),
    Keep,
}

pub fn ttl_verdict(ttl: &Document, now: DateTime<Utc>) -> TtlVerdict {
    let expired = |v: &Bson| value::as_time(v).is_some_and(|t| t < now);
    if ttl.values().all(expired) {
        return TtlVerdict::Expired;
    }
    let gone: Vec<String> = ttl
        .iter()
        .filter(|(_, v)| expired(v))
        .map(|(k, _)| k.clone())
        .collect();
    if gone.is_empty() {
        TtlVerdict::Keep
    } else {
        TtlVerdict::Prune(gone)
    }
}

/// `$unset` of expired tokens, only while they are still expired (a concurrent `$max`
/// may have extended one).
pub fn prune_statement(id: &Bson, tokens: &[String], now: DateTime<Utc>) -> Document {
    let mut q = doc! {"_id": id.clone()};
    let mut unset = Document::new();
    for t in tokens {
        q.insert(format!("#ttl.{t}"), doc! {"$lt": value::time(now)});
        unset.insert(format!("#ttl.{t}"), "");
    }
    WriteCommand::update(
        q,
        doc! {"$unset": unset, "$inc": {"#revision": 1}},
        false,
        false,
    )
}

pub async fn expire_ttl_tokens(
    cx: &mut Cx<'_>,
    etype: &str,
    now: DateTime<Utc>,
    partition: Option<(u32, u32)>,
) -> Result<Vec<Eid>> {
    let mut filter = doc! {"#ttl": {"$exists": true}};
    if let Some(m) = check_partition(partition)? {
        filter.insert("#hash", m);
    }
    let mut f = Find::new(names::master(etype), filter);
    f.projection = Some(doc! {"#ttl": 1});
    f.sort = Some(doc! {"_id": 1});
    let ctx = format!("expire TTL tokens of '{etype}'");
    let mut expired = Vec::new();
    let mut prune = WriteCommand::new(names::master(etype), WriteKind::Update);
    prune.ordered = false;
    for d in cx.find(&ctx, f).await? {
        let Some(id) = d.get("_id") else { continue };
        let Ok(ttl) = d.get_document("#ttl") else {
            continue;
        };
        match ttl_verdict(ttl, now) {
            TtlVerdict::Expired => match Eid::from_bson(id) {
                Some(e) => expired.push(e),
                None => {
                    return Err(StoreError::Corrupt {
                        what: format!("{etype}#master"),
                        reason: format!("_id {id} is not an eid"),
                    });
                }
            },
            TtlVerdict::Prune(tokens) => prune.statements.push(prune_statement(id, &tokens, now)),
            TtlVerdict::Keep => {}
        }
    }
    cx.write(&ctx, &prune).await?;
    Ok(expired)
}

pub fn raw_find(etype: &str, q: &RawQuery) -> Find {
    let mut filter = Document::new();
    if let Some(e) = &q.eid {
        filter.insert("eid", e.to_bson());
    }
    if let Some(a) = &q.attr {
        filter.insert("attr", a.as_str());
    }
    if let Some(s) = &q.src {
        filter.insert("src", s.as_str());
    }
    let mut f = Find::new(names::raw(etype), filter);
    f.projection = Some(doc! {"_id": 0});
    // DP3: by t1 for timed attributes, otherwise natural order (insertion order) reversed
    f.sort = Some(if q.order_by_t1 {
        doc! {"t1": -1, "_id": -1}
    } else {
        doc! {"$natural": -1}
    });
    f.skip = q.skip;
    f.limit = q.limit;
    f
}

/// Raw datapoints to archive: timed ones older than the cut-off and plain ones.
pub fn archive_filter(older_than: DateTime<Utc>) -> Document {
    doc! {"$or": [{"t1": {"$lt": value::time(older_than)}}, {"t1": null}]}
}

pub const ARCHIVE_BATCH: u64 = 1000;

/// The next batch of raw datapoints to archive (oldest inserted first).
pub fn archive_batch_find(etype: &str, older_than: DateTime<Utc>) -> Find {
    let mut f = Find::new(names::raw(etype), archive_filter(older_than));
    f.sort = Some(doc! {"_id": 1});
    f.limit = ARCHIVE_BATCH;
    f
}

/// Split fetched raw documents into their `_id`s and the DP3 raw shape given to the sink.
pub fn split_ids(docs: Vec<Document>) -> (Vec<Bson>, Vec<Document>) {
    let mut ids = Vec::with_capacity(docs.len());
    let batch = docs
        .into_iter()
        .map(|mut d| {
            ids.push(d.remove("_id").unwrap_or(Bson::Null));
            d
        })
        .collect();
    (ids, batch)
}

pub fn delete_ids(coll: String, ids: Vec<Bson>) -> WriteCommand {
    let mut del = WriteCommand::new(coll, WriteKind::Delete);
    del.statements
        .push(WriteCommand::delete(doc! {"_id": {"$in": ids}}, true));
    del
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, m, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn scans_filter_sort_and_project() {
        let f = scan_find(
            "N",
            &MasterScan {
                after: Some(Eid::Int(0)),
                limit: 2,
                partition: Some((1, 4)),
                projection: Some(vec!["q".into(), "a.b".into()]),
            },
        )
        .expect("scan");
        assert_eq!(f.coll, "N#master");
        assert_eq!(
            f.filter,
            doc! {"_id": {"$gt": 0}, "#hash": {"$mod": [4i64, 1i64]}}
        );
        assert_eq!(f.sort, Some(doc! {"_id": 1}));
        assert_eq!(f.limit, 2);
        let p = f.projection.expect("projection");
        assert!(p.contains_key("q") && p.contains_key("#hash") && p.contains_key("#ttl"));
        assert!(!p.contains_key("a.b"));
        assert!(matches!(
            check_partition(Some((0, 0))),
            Err(StoreError::InvalidQuery(_))
        ));
    }

    #[test]
    fn ttl_verdicts() {
        let ttl = doc! {"base": value::time(t(10)), "data": value::time(t(20))};
        assert_eq!(ttl_verdict(&ttl, t(5)), TtlVerdict::Keep);
        assert_eq!(
            ttl_verdict(&ttl, t(15)),
            TtlVerdict::Prune(vec!["base".into()])
        );
        assert_eq!(
            ttl_verdict(&ttl, t(20)),
            TtlVerdict::Prune(vec!["base".into()]),
            "strict <"
        );
        assert_eq!(ttl_verdict(&ttl, t(21)), TtlVerdict::Expired);
        assert_eq!(ttl_verdict(&Document::new(), t(0)), TtlVerdict::Expired);
        let s = prune_statement(&Bson::String("a".into()), &["base".into()], t(15));
        assert_eq!(
            s,
            doc! {
                "q": {"_id": "a", "#ttl.base": {"$lt": value::time(t(15))}},
                "u": {"$unset": {"#ttl.base": ""}, "$inc": {"#revision": 1}},
                "upsert": false, "multi": false,
            }
        );
    }

    #[test]
    fn raw_queries() {
        let f = raw_find(
            "R",
            &RawQuery {
                eid: Some(Eid::String("a".into())),
                skip: 1,
                limit: 1,
                ..Default::default()
            },
        );
        assert_eq!(f.filter, doc! {"eid": "a"});
        assert_eq!(f.sort, Some(doc! {"$natural": -1}));
        assert_eq!(f.projection, Some(doc! {"_id": 0}));
        let f = raw_find(
            "R",
            &RawQuery {
                attr: Some("o".into()),
                order_by_t1: true,
                ..Default::default()
            },
        );
        assert_eq!(f.sort, Some(doc! {"t1": -1, "_id": -1}));
        assert_eq!(
            archive_filter(t(25)),
            doc! {"$or": [{"t1": {"$lt": value::time(t(25))}}, {"t1": null}]}
        );
    }
}
