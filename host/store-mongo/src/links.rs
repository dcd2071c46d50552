//! The link cache `#cache#Link` (data-model.md §7.4): `{from, to, using_attr, ttl}` with
//! eids as canonical text and a TTL index expiring entries.

use bson::{Bson, Document, doc};
use chrono::{DateTime, TimeZone, Utc};
use dp3_model::value;
use dp3_store::{LinkEntry, LinkKey, LinkOp};

use crate::command::{WriteCommand, WriteKind};
use crate::eids::{EidTypes, split_key};
use crate::names::LINK_CACHE;

/// DP3's "never expires" (`datetime.max`, truncated to BSON's milliseconds).
pub fn never() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        + chrono::Duration::milliseconds(999)
}

/// The write commands of one link-cache operation, in order.
pub fn link_commands(op: &LinkOp) -> Vec<WriteCommand> {
    match op {
        LinkOp::Replace {
            from,
            using_attr,
            targets,
        } => {
            let keep: Vec<String> = targets.iter().map(ToString::to_string).collect();
            let mut del = WriteCommand::new(LINK_CACHE, WriteKind::Delete);
            del.statements.push(WriteCommand::delete(
                doc! {"from": from.to_string(), "using_attr": using_attr, "to": {"$nin": keep}},
                true,
            ));
            let mut up = WriteCommand::new(LINK_CACHE, WriteKind::Update);
            for t in targets {
                up.statements
                    .push(upsert_statement(from, t, using_attr, never()));
            }
            if up.statements.is_empty() {
                vec![del]
            } else {
                vec![del, up]
            }
        }
        LinkOp::Upsert {
            from,
            to,
            using_attr,
            ttl,
        } => {
            let mut up = WriteCommand::new(LINK_CACHE, WriteKind::Update);
            up.statements
                .push(upsert_statement(from, to, using_attr, *ttl));
            vec![up]
        }
    }
}

fn upsert_statement(
    from: &LinkKey,
    to: &LinkKey,
    using_attr: &str,
    ttl: DateTime<Utc>,
) -> Document {
    WriteCommand::update(
        doc! {"to": to.to_string(), "from": from.to_string(), "using_attr": using_attr},
        doc! {"$max": {"ttl": value::time(ttl)}},
        true,
        false,
    )
}

/// Live entries: `ttl >= now` (MongoDB's TTL monitor removes expired ones only about once
/// a minute).
pub fn live(now: DateTime<Utc>) -> Bson {
    Bson::Document(doc! {"$gte": value::time(now)})
}

/// Read one cache document; `None` for malformed entries (skipped).
pub fn decode_entry(d: &Document, types: &EidTypes) -> Option<LinkEntry> {
    let key = |k: &str| -> Option<LinkKey> {
        let (etype, eid) = split_key(d.get_str(k).ok()?)?;
        Some(LinkKey::new(etype, types.parse(etype, eid)))
    };
    let ttl = d.get("ttl").and_then(value::as_time);
    Some(LinkEntry {
        from: key("from")?,
        to: key("to")?,
        using_attr: d.get_str("using_attr").ok()?.to_owned(),
        ttl: ttl.filter(|t| *t < never()),
    })
}

/// Entries read from the cache, without duplicates (concurrent upserts may create two
/// documents for one link; the later expiry wins).
pub fn dedup(entries: Vec<LinkEntry>) -> Vec<LinkEntry> {
    let mut out: Vec<LinkEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        match out
            .iter_mut()
            .find(|o| o.from == e.from && o.to == e.to && o.using_attr == e.using_attr)
        {
            Some(o) => {
                let longer = match (o.ttl, e.ttl) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(a), Some(b)) => b > a,
                };
                if longer {
                    o.ttl = e.ttl;
                }
            }
            None => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_model::Eid;

    fn key(e: &str, id: &str) -> LinkKey {
        LinkKey::new(e, Eid::String(id.into()))
    }

    #[test]
    fn replace_deletes_others_then_upserts_forever() {
        let cmds = link_commands(&LinkOp::Replace {
            from: key("S", "s1"),
            using_attr: "S#plain".into(),
            targets: vec![key("T", "y"), key("T", "z")],
        });
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].kind, WriteKind::Delete);
        assert_eq!(
            cmds[0].statements[0],
            doc! {"q": {"from": "S#s1", "using_attr": "S#plain", "to": {"$nin": ["T#y", "T#z"]}}, "limit": 0}
        );
        assert_eq!(cmds[1].kind, WriteKind::Update);
        assert_eq!(
            cmds[1].statements[1],
            doc! {
                "q": {"to": "T#z", "from": "S#s1", "using_attr": "S#plain"},
                "u": {"$max": {"ttl": value::time(never())}},
                "upsert": true, "multi": false,
            }
        );
        let empty = link_commands(&LinkOp::Replace {
            from: key("S", "s1"),
            using_attr: "S#plain".into(),
            targets: vec![],
        });
        assert_eq!(empty.len(), 1, "an empty target list only deletes");
    }

    #[test]
    fn decodes_entries_and_never_expiring_ttl() {
        let d =
            doc! {"from": "S#s1", "to": "T#x#y", "using_attr": "S#a", "ttl": value::time(never())};
        let e = decode_entry(&d, &EidTypes::default()).expect("entry");
        assert_eq!(e.to, key("T", "x#y"));
        assert_eq!(e.ttl, None);
        assert_eq!(
            never().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "9999-12-31T23:59:59.999Z"
        );
        assert!(decode_entry(&doc! {"from": "nohash"}, &EidTypes::default()).is_none());
    }

    #[test]
    fn dedup_keeps_longest_ttl() {
        let t = |m| {
            Some(
                Utc.with_ymd_and_hms(2024, 1, 1, 0, m, 0)
                    .single()
                    .expect("t"),
            )
        };
        let e = |ttl| LinkEntry {
            from: key("S", "a"),
            to: key("T", "b"),
            using_attr: "S#x".into(),
            ttl,
        };
        assert_eq!(dedup(vec![e(t(1)), e(t(5)), e(t(3))]), vec![e(t(5))]);
        assert_eq!(dedup(vec![e(t(1)), e(None)]), vec![e(None)]);
    }
}
