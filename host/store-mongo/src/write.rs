//! [`dp3_store::Store::apply`]: a [`WriteBatch`] becomes a plan of batched write commands
//! (built and BSON-encoded completely before anything is sent, so an unencodable value fails
//! the whole batch up front) plus entity deletions with DP3's cascade, executed in batch
//! order with the metadata entries last.

use std::collections::BTreeMap;

use bson::{Bson, Document, doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use dp3_model::Eid;
use dp3_store::keys::eid_key;
use dp3_store::{ApplyStats, EntityWrite, LinkKey, Result, StoreError, WriteBatch, WriteOp};

use crate::buckets::eid_buckets;
use crate::cascade::link_removal_update;
use crate::command::{Cx, Find, WriteCommand, WriteKind};
use crate::eids::{EidTypes, split_key};
use crate::links::{link_commands, live};
use crate::names::{self, LINK_CACHE, META, check_attr, check_etype};
use crate::update::master_update;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A batched write; `master` marks master-record upserts (their upserts count as
    /// created entities).
    Write { cmd: WriteCommand, master: bool },
    /// Delete an entity with DP3's cascade (needs reads, so built while executing).
    Delete { etype: String, eid: Eid },
}

/// A batch turned into commands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub entities_written: u64,
    pub history_items: u64,
    pub raw_datapoints: u64,
}

impl Plan {
    fn push(&mut self, cmd: WriteCommand, master: bool) {
        if let Some(Step::Write {
            cmd: last,
            master: m,
        }) = self.steps.last_mut()
            && last.coll == cmd.coll
            && last.kind == cmd.kind
            && *m == master
        {
            last.statements.extend(cmd.statements);
            return;
        }
        self.steps.push(Step::Write { cmd, master });
    }
}

/// The metadata document of key `key`: `{_id: key, value: <doc>}`.
pub fn meta_statement(key: &str, value: &Document) -> Document {
    WriteCommand::update(
        doc! {"_id": key},
        doc! {"_id": key, "value": value.clone()},
        true,
        false,
    )
}

/// Build the plan of `batch` (validating names and BSON encodability).
pub fn build_plan(batch: &WriteBatch) -> Result<Plan> {
    let mut plan = Plan::default();
    let ops = &batch.ops;
    let mut i = 0;
    while i < ops.len() {
        match &ops[i] {
            WriteOp::Entity(_) => {
                // A run of consecutive entity writes may be reordered across entities (the
                // trait allows it); writes of one entity stay in order and are merged.
                let mut run: Vec<&EntityWrite> = Vec::new();
                while let Some(WriteOp::Entity(w)) = ops.get(i) {
                    check_etype(&w.etype)?;
                    run.push(w);
                    i += 1;
                }
                let mut groups: BTreeMap<(&str, Vec<u8>), Vec<&EntityWrite>> = BTreeMap::new();
                for w in run {
                    groups
                        .entry((w.etype.as_str(), eid_key(&w.eid)))
                        .or_default()
                        .push(w);
                }
                for ((etype, _), writes) in groups {
                    let Some((u, items)) = master_update(&writes)? else {
                        continue;
                    };
                    let mut cmd = WriteCommand::new(names::master(etype), WriteKind::Update);
                    cmd.statements.push(WriteCommand::update(
                        doc! {"_id": writes[0].eid.to_bson()},
                        u,
                        true,
                        false,
                    ));
                    plan.push(cmd, true);
                    plan.entities_written += 1;
                    plan.history_items += items;
                }
            }
            WriteOp::Delete { etype, eid } => {
                check_etype(etype)?;
                plan.steps.push(Step::Delete {
                    etype: etype.clone(),
                    eid: eid.clone(),
                });
                i += 1;
            }
            WriteOp::Link(op) => {
                for cmd in link_commands(op) {
                    plan.push(cmd, false);
                }
                i += 1;
            }
        }
    }
    // Raw datapoints: one insert per entity type, arrival order kept. `_id`s are made here
    // (as drivers do) so a retried command cannot insert a datapoint twice.
    let mut raw: Vec<(String, WriteCommand)> = Vec::new();
    for dp in &batch.raw {
        check_etype(&dp.etype)?;
        let coll = names::raw(&dp.etype);
        let mut d = doc! {"_id": ObjectId::new()};
        d.extend(dp.to_document());
        match raw.iter_mut().find(|(c, _)| *c == coll) {
            Some((_, cmd)) => cmd.statements.push(d),
            None => {
                let mut cmd = WriteCommand::new(coll.clone(), WriteKind::Insert);
                cmd.statements.push(d);
                raw.push((coll, cmd));
            }
        }
        plan.raw_datapoints += 1;
    }
    for (_, cmd) in raw {
        plan.push(cmd, false);
    }
    // Metadata last: without a transaction a crash then leaves the watermark behind the
    // data, never ahead of it.
    if !batch.meta.is_empty() {
        let mut cmd = WriteCommand::new(META, WriteKind::Update);
        for (key, value) in &batch.meta {
            cmd.statements.push(meta_statement(key, value));
        }
        plan.push(cmd, false);
    }
    for step in &plan.steps {
        if let Step::Write { cmd, .. } = step {
            cmd.commands()?;
        }
    }
    Ok(plan)
}

/// Execute a plan (inside the caller's transaction when `cx` has one).
pub async fn execute(
    cx: &mut Cx<'_>,
    plan: &Plan,
    types: &EidTypes,
    now: DateTime<Utc>,
) -> Result<ApplyStats> {
    let mut stats = ApplyStats {
        entities_written: plan.entities_written,
        history_items: plan.history_items,
        raw_datapoints: plan.raw_datapoints,
        ..Default::default()
    };
    for step in &plan.steps {
        match step {
            Step::Write { cmd, master } => {
                let r = cx.write(&format!("write to '{}'", cmd.coll), cmd).await?;
                if *master {
                    stats.entities_created += r.upserted.len() as u64;
                }
            }
            Step::Delete { etype, eid } => {
                if delete_entity(cx, types, etype, eid, now).await? {
                    stats.entities_deleted += 1;
                }
            }
        }
    }
    Ok(stats)
}

fn single(coll: impl Into<String>, kind: WriteKind, statement: Document) -> WriteCommand {
    let mut c = WriteCommand::new(coll, kind);
    c.statements.push(statement);
    c
}

/// Delete an entity with DP3's cascade (data-model.md §7.5); returns whether its master
/// record existed. Raw datapoints are kept.
pub async fn delete_entity(
    cx: &mut Cx<'_>,
    types: &EidTypes,
    etype: &str,
    eid: &Eid,
    now: DateTime<Utc>,
) -> Result<bool> {
    let ctx = format!("delete {etype}/{eid}");
    let id = eid.to_bson();
    let del =
        |coll: String, q: Document| single(coll, WriteKind::Delete, WriteCommand::delete(q, true));
    let existed = cx
        .write(&ctx, &del(names::master(etype), doc! {"_id": id.clone()}))
        .await?
        .n
        > 0;
    cx.write(
        &ctx,
        &del(names::snapshots(etype), doc! {"_id": eid_buckets(eid)}),
    )
    .await?;
    cx.write(
        &ctx,
        &del(names::snapshots_oversized(etype), doc! {"eid": id}),
    )
    .await?;
    let key = LinkKey::new(etype, eid.clone()).to_string();
    let mut sources = Find::new(LINK_CACHE, doc! {"to": &key, "ttl": live(now)});
    sources.projection = Some(doc! {"_id": 0, "from": 1, "using_attr": 1});
    let mut seen: Vec<(String, String)> = Vec::new();
    for d in cx.find(&ctx, sources).await? {
        let (Ok(from), Ok(using)) = (d.get_str("from"), d.get_str("using_attr")) else {
            continue;
        };
        let pair = (from.to_owned(), using.to_owned());
        if !seen.contains(&pair) {
            seen.push(pair);
        }
    }
    for (from, using_attr) in seen {
        let Some((src_etype, src_eid)) = split_key(&from) else {
            continue;
        };
        let attr = using_attr
            .split_once('#')
            .map_or(using_attr.as_str(), |(_, a)| a);
        if check_etype(src_etype).is_err() || check_attr(attr).is_err() {
            continue; // not something we could have written; leave foreign entries alone
        }
        remove_link_values(cx, types, src_etype, src_eid, attr, eid, &ctx).await?;
    }
    cx.write(
        &ctx,
        &del(
            LINK_CACHE.to_owned(),
            doc! {"$or": [{"from": &key}, {"to": &key}]},
        ),
    )
    .await?;
    Ok(existed)
}

/// Optimistic read-modify-write of one source record (its `#revision` must not change in
/// between; inside a transaction the first attempt always succeeds).
async fn remove_link_values(
    cx: &mut Cx<'_>,
    types: &EidTypes,
    src_etype: &str,
    src_eid: &str,
    attr: &str,
    deleted: &Eid,
    ctx: &str,
) -> Result<()> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let mut q = Find::new(
            names::master(src_etype),
            doc! {"_id": types.id_condition(src_etype, src_eid)},
        );
        q.projection = Some(doc! {attr: 1, "#revision": 1});
        q.limit = 1;
        let Some(rec) = cx.find(ctx, q).await?.into_iter().next() else {
            return Ok(());
        };
        let Some(u) = link_removal_update(&rec, attr, deleted) else {
            return Ok(());
        };
        let mut filter = doc! {"_id": rec.get("_id").cloned().unwrap_or(Bson::Null)};
        match rec.get("#revision") {
            Some(r) => filter.insert("#revision", r.clone()),
            None => filter.insert("#revision", doc! {"$exists": false}),
        };
        let cmd = single(
            names::master(src_etype),
            WriteKind::Update,
            WriteCommand::update(filter, u, false, false),
        );
        if cx.write(ctx, &cmd).await?.n > 0 {
            return Ok(());
        }
    }
    Err(StoreError::backend(
        "mongodb",
        format!(
            "{ctx}: record {src_etype}/{src_eid} kept changing while removing links from '{attr}'"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use dp3_model::DataPoint;
    use dp3_store::{Creation, LinkOp};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("time")
    }

    fn plain(etype: &str, eid: &str, attr: &str, v: i32) -> WriteOp {
        let mut w = EntityWrite::new(etype, Eid::String(eid.into()));
        w.plain.push((attr.into(), Bson::Int32(v), t0()));
        WriteOp::Entity(w)
    }

    fn dp(etype: &str, v: i32) -> DataPoint {
        DataPoint {
            etype: etype.into(),
            eid: Eid::String("e".into()),
            attr: "a".into(),
            src: None,
            v: Bson::Int32(v),
            c: 1.0,
            t1: None,
            t2: None,
        }
    }

    #[test]
    fn plan_orders_and_merges() {
        let mut create = EntityWrite::new("B", Eid::String("x".into()));
        create.create = Some(Creation {
            hash: 1,
            time_created: t0(),
        });
        let batch = WriteBatch {
            ops: vec![
                plain("B", "y", "a", 1),
                WriteOp::Entity(create),
                plain("A", "z", "a", 1),
                plain("B", "y", "a", 2),
                WriteOp::Delete {
                    etype: "A".into(),
                    eid: Eid::String("z".into()),
                },
                WriteOp::Link(LinkOp::Upsert {
                    from: LinkKey::new("A", Eid::String("q".into())),
                    to: LinkKey::new("B", Eid::String("y".into())),
                    using_attr: "A#l".into(),
                    ttl: t0(),
                }),
                plain("A", "z", "a", 3),
            ],
            raw: vec![dp("A", 1), dp("B", 2), dp("A", 3)],
            meta: vec![("w".into(), doc! {"n": 1})],
        };
        let plan = build_plan(&batch).expect("plan");
        assert_eq!(plan.entities_written, 4);
        assert_eq!(plan.raw_datapoints, 3);
        let shape: Vec<String> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Write { cmd, .. } => {
                    format!("{:?} {} x{}", cmd.kind, cmd.coll, cmd.statements.len())
                }
                Step::Delete { etype, eid } => format!("delete {etype}/{eid}"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "Update A#master x1",
                "Update B#master x2",
                "delete A/z",
                "Update #cache#Link x1",
                "Update A#master x1",
                "Insert A#raw x2",
                "Insert B#raw x1",
                "Update #cache#dp3rs_meta x1",
            ]
        );
        // writes of one entity merged: last plain value wins
        let Step::Write { cmd, .. } = &plan.steps[1] else {
            panic!("write")
        };
        let y = cmd
            .statements
            .iter()
            .find(|s| s.get_document("q").ok() == Some(&doc! {"_id": "y"}))
            .expect("y");
        assert_eq!(
            y.get_document("u")
                .and_then(|u| u.get_document("$set"))
                .expect("$set"),
            &doc! {"a": {"v": 2, "ts_last_update": dp3_model::value::time(t0())}}
        );
        // raw documents: generated _id first, then DP3's raw shape
        let Step::Write { cmd, .. } = &plan.steps[5] else {
            panic!("write")
        };
        let keys: Vec<&str> = cmd.statements[0].keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["_id", "etype", "eid", "attr", "src", "v", "c", "t1", "t2"]
        );
        let Step::Write { cmd, .. } = &plan.steps[7] else {
            panic!("write")
        };
        assert_eq!(
            cmd.statements[0],
            doc! {"q": {"_id": "w"}, "u": {"_id": "w", "value": {"n": 1}}, "upsert": true, "multi": false}
        );
    }

    #[test]
    fn unencodable_batch_fails_before_writing() {
        let mut bad = EntityWrite::new("A", Eid::String("b".into()));
        bad.plain
            .push(("y".into(), Bson::Document(doc! {"bad\0key": 1}), t0()));
        let batch = WriteBatch {
            ops: vec![plain("A", "a", "x", 1), WriteOp::Entity(bad)],
            ..Default::default()
        };
        assert!(build_plan(&batch).is_err());
        let bad_type = WriteBatch {
            ops: vec![plain("a#b", "a", "x", 1)],
            ..Default::default()
        };
        assert!(matches!(
            build_plan(&bad_type),
            Err(StoreError::InvalidQuery(_))
        ));
        assert_eq!(
            build_plan(&WriteBatch::default()).expect("empty").steps,
            vec![]
        );
    }
}
