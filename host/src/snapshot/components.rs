//! Linked components (core.md §5.4): entities connected through *used links* at snapshot
//! time are snapshotted together.
//!
//! Start points are the link-cache entries of used links. From each entity the current
//! values of its used link attributes (at the run time `T`) give its targets; components are
//! the weakly connected components of that graph. Unlike DP3, every hop uses the type of the
//! entity it starts from, so multi-hop chains through different entity types are always
//! found (DP3's BFS used the start entity's type: its components depended on iteration
//! order).

use std::collections::{HashMap, HashSet, VecDeque};

use bson::Bson;
use chrono::{DateTime, Utc};
use dp3_model::{Eid, ModelSpec};
use dp3_store::{MasterScan, RecordRead, Store, StoredRecord};

/// An entity of a component.
pub type Member = (String, Eid);

/// Find the linked components at `time`, following the current values of the used link
/// attributes; records are read `threads` at a time.
pub fn linked_components(
    store: &dyn Store,
    model: &ModelSpec,
    used_links: &[(String, String)],
    keep_empty: bool,
    time: DateTime<Utc>,
    threads: usize,
) -> dp3_store::Result<Vec<Vec<Member>>> {
    if used_links.is_empty() {
        return Ok(Vec::new());
    }
    let using: Vec<String> = used_links.iter().map(|(e, a)| format!("{e}#{a}")).collect();
    let entries = store.links_using(&using, time)?;

    // Union-find over member indices.
    let mut ids: HashMap<Member, usize> = HashMap::new();
    let mut members: Vec<Member> = Vec::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut intern = |m: Member, members: &mut Vec<Member>, parent: &mut Vec<usize>| -> usize {
        *ids.entry(m.clone()).or_insert_with(|| {
            members.push(m);
            parent.push(parent.len());
            parent.len() - 1
        })
    };
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    fn union(parent: &mut [usize], a: usize, b: usize) {
        let (ra, rb) = (find(parent, a), find(parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }

    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut seen_start: HashSet<usize> = HashSet::new();
    for e in &entries {
        for key in [&e.from, &e.to] {
            let i = intern(
                (key.etype.clone(), key.eid.clone()),
                &mut members,
                &mut parent,
            );
            if seen_start.insert(i) {
                queue.push_back(i);
            }
        }
    }

    // Breadth-first in waves: the records of a wave are read with one store call per entity
    // type, then processed in queue order (so members, and with them unit order and hook
    // order, come out exactly as when reading one entity at a time).
    let mut loaded: HashSet<usize> = HashSet::new();
    let mut empty: HashSet<usize> = HashSet::new();
    // Per entity type: its used link attributes (all that is read of it, besides existence)
    // and their target types.
    let plans: HashMap<&str, LinkPlan> = model
        .entities
        .iter()
        .map(|(etype, entity)| {
            let attrs: Vec<String> = used_links
                .iter()
                .filter(|(e, _)| e == etype)
                .map(|(_, a)| a.clone())
                .collect();
            let targets = attrs
                .iter()
                .filter_map(|a| {
                    let target = entity.attribs.get(a)?.data_type()?.link_target()?;
                    Some((a.clone(), target.to_owned()))
                })
                .collect();
            let read = RecordRead {
                windows: super::current_windows(entity, &attrs, time),
                attrs: Some(attrs),
            };
            (etype.as_str(), (read, targets))
        })
        .collect();
    while !queue.is_empty() {
        let mut wave: Vec<usize> = Vec::new();
        while wave.len() < BFS_WAVE
            && let Some(i) = queue.pop_front()
        {
            if loaded.insert(i) {
                wave.push(i);
            }
        }
        let mut records: HashMap<usize, Option<StoredRecord>> = HashMap::new();
        let mut types: Vec<&str> = Vec::new();
        for &i in &wave {
            let etype = members[i].0.as_str();
            if plans.contains_key(etype) && !types.contains(&etype) {
                types.push(etype);
            }
        }
        for etype in types {
            let idx: Vec<usize> = wave
                .iter()
                .copied()
                .filter(|&i| members[i].0 == etype)
                .collect();
            let eids: Vec<Eid> = idx.iter().map(|&i| members[i].1.clone()).collect();
            let got = read_parallel(store, etype, &eids, &plans[etype].0, threads)?;
            records.extend(idx.into_iter().zip(got));
        }
        for i in wave {
            let Some(record) = records.remove(&i) else {
                continue; // unknown entity type
            };
            let Some(record) = record else {
                empty.insert(i);
                continue;
            };
            let (etype, eid) = &members[i];
            let (Some(entity), Some((_, targets))) =
                (model.entity(etype), plans.get(etype.as_str()))
            else {
                continue;
            };
            if targets.is_empty() {
                continue;
            }
            let values =
                dp3_model::current::current_values_of(entity, eid.to_bson(), &record, time);
            for (attr, target) in targets {
                for eid in link_eids(values.get(attr)) {
                    let j = intern((target.clone(), eid), &mut members, &mut parent);
                    union(&mut parent, i, j);
                    if !loaded.contains(&j) {
                        queue.push_back(j);
                    }
                }
            }
        }
    }

    let mut groups: HashMap<usize, Vec<Member>> = HashMap::new();
    let mut order: Vec<usize> = Vec::new();
    for (i, member) in members.iter().enumerate() {
        // Without keep_empty, entities that do not exist are not snapshotted; they still
        // connect their neighbours (as DP3's stub records do) but are left out of the unit.
        if !keep_empty && empty.contains(&i) {
            continue;
        }
        let r = find(&mut parent, i);
        if !groups.contains_key(&r) {
            order.push(r);
        }
        groups.entry(r).or_default().push(member.clone());
    }
    Ok(order
        .into_iter()
        .filter_map(|r| groups.remove(&r))
        .collect())
}

/// [`Store::get_records`] of `eids` split across `threads` threads (each read uses its own
/// store connection), results in `eids` order.
fn read_parallel(
    store: &dyn Store,
    etype: &str,
    eids: &[Eid],
    read: &RecordRead,
    threads: usize,
) -> dp3_store::Result<Vec<Option<StoredRecord>>> {
    let chunk = eids.len().div_ceil(threads.max(1)).max(1);
    if chunk >= eids.len() {
        return store.get_records(etype, eids, read);
    }
    let parts: Vec<dp3_store::Result<Vec<Option<StoredRecord>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = eids
            .chunks(chunk)
            .map(|part| s.spawn(move || store.get_records(etype, part, read)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Vec::with_capacity(eids.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// How one entity type is read while following links: its used link attributes (nothing
/// else is needed besides existence) and their `(attribute, target type)` pairs.
type LinkPlan = (RecordRead, Vec<(String, String)>);

/// The eids of a link value (`{eid}` or a list of them).
pub fn link_eids(v: Option<&Bson>) -> Vec<Eid> {
    let one = |b: &Bson| {
        b.as_document()
            .and_then(|d| d.get("eid"))
            .and_then(Eid::from_bson)
    };
    match v {
        Some(Bson::Array(items)) => items.iter().filter_map(one).collect(),
        Some(other) => one(other).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Entities read per store call while following links.
const BFS_WAVE: usize = 2048;

/// Page size of linkless scans.
pub const SCAN_PAGE: usize = 256;

/// Page through one partition of an entity type: `fetch` reads the page after a key,
/// `key` gives an item's eid (the next page starts after the last one), `f` gets each page.
fn scan_pages<T>(
    partition: (u32, u32),
    fetch: impl Fn(&MasterScan) -> dp3_store::Result<Vec<T>>,
    key: impl Fn(&T) -> Option<Eid>,
    mut f: impl FnMut(Vec<T>) -> dp3_store::Result<()>,
) -> dp3_store::Result<()> {
    let mut after: Option<Eid> = None;
    loop {
        let page = fetch(&MasterScan {
            after: after.clone(),
            limit: SCAN_PAGE,
            partition: Some(partition),
            projection: None,
        })?;
        let n = page.len();
        after = page.last().and_then(&key);
        if n > 0 {
            f(page)?;
        }
        if n < SCAN_PAGE || after.is_none() {
            return Ok(());
        }
    }
}

/// Stream the eids of one partition of an entity type in pages, calling `f` per page
/// (bounded memory; records are read by the caller, only for the entities it needs).
pub fn scan_eid_pages(
    store: &dyn Store,
    etype: &str,
    partition: (u32, u32),
    f: impl FnMut(Vec<Eid>) -> dp3_store::Result<()>,
) -> dp3_store::Result<()> {
    scan_pages(
        partition,
        |scan| store.scan_eids(etype, scan),
        |eid| Some(eid.clone()),
        f,
    )
}

/// Stream the master records of one partition of an entity type in pages, calling `f` per
/// page (bounded memory).
pub fn scan_partition(
    store: &dyn Store,
    etype: &str,
    partition: (u32, u32),
    f: impl FnMut(Vec<bson::Document>) -> dp3_store::Result<()>,
) -> dp3_store::Result<()> {
    scan_pages(
        partition,
        |scan| store.scan_master(etype, scan),
        |d| d.get("_id").and_then(Eid::from_bson),
        f,
    )
}
