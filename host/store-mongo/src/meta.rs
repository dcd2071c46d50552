//! Key/value metadata (`#cache#dp3rs_meta`, `{_id: key, value: doc}`) and DP3's run
//! records (`#metadata`, §8.7).

use bson::{Bson, Document, doc};
use dp3_model::value;
use dp3_store::{Result, RunMetadataQuery};

use crate::command::{Cx, Find, WriteCommand, WriteKind};
use crate::names::{META, METADATA};
use crate::write::meta_statement;

pub fn value_of(mut d: Document) -> Option<Document> {
    match d.remove("value") {
        Some(Bson::Document(v)) => Some(v),
        _ => None,
    }
}

pub async fn get(cx: &mut Cx<'_>, key: &str) -> Result<Option<Document>> {
    let mut f = Find::new(META, doc! {"_id": key});
    f.limit = 1;
    Ok(cx
        .find(&format!("read metadata '{key}'"), f)
        .await?
        .into_iter()
        .next()
        .and_then(value_of))
}

pub async fn put(cx: &mut Cx<'_>, key: &str, value: &Document) -> Result<()> {
    let mut cmd = WriteCommand::new(META, WriteKind::Update);
    cmd.statements.push(meta_statement(key, value));
    cx.write(&format!("write metadata '{key}'"), &cmd)
        .await
        .map(|_| ())
}

pub fn list_find(prefix: &str) -> Find {
    let filter = if prefix.is_empty() {
        Document::new()
    } else {
        doc! {"_id": {"$regex": format!("^{}", regex::escape(prefix))}}
    };
    let mut f = Find::new(META, filter);
    f.sort = Some(doc! {"_id": 1});
    f
}

pub async fn list(cx: &mut Cx<'_>, prefix: &str) -> Result<Vec<(String, Document)>> {
    let docs = cx
        .find(&format!("list metadata '{prefix}*'"), list_find(prefix))
        .await?;
    Ok(docs
        .into_iter()
        .filter_map(|d| {
            let key = d.get_str("_id").ok()?.to_owned();
            Some((key, value_of(d)?))
        })
        .collect())
}

pub async fn delete(cx: &mut Cx<'_>, key: &str) -> Result<()> {
    let mut cmd = WriteCommand::new(META, WriteKind::Delete);
    cmd.statements
        .push(WriteCommand::delete(doc! {"_id": key}, false));
    cx.write(&format!("delete metadata '{key}'"), &cmd)
        .await
        .map(|_| ())
}

pub async fn insert_run(cx: &mut Cx<'_>, d: &Document) -> Result<()> {
    let mut cmd = WriteCommand::new(METADATA, WriteKind::Insert);
    cmd.statements.push(d.clone());
    cx.write("insert run metadata", &cmd).await.map(|_| ())
}

/// `$set`/`$inc` of one run record; `None` when both are empty.
pub fn run_update(id: &str, set: &Document, inc: &Document) -> Option<Document> {
    let mut u = Document::new();
    if !set.is_empty() {
        u.insert("$set", set.clone());
    }
    if !inc.is_empty() {
        u.insert("$inc", inc.clone());
    }
    (!u.is_empty()).then(|| WriteCommand::update(doc! {"_id": id}, u, false, false))
}

pub async fn update_run(cx: &mut Cx<'_>, id: &str, set: &Document, inc: &Document) -> Result<()> {
    let Some(s) = run_update(id, set, inc) else {
        return Ok(());
    };
    let mut cmd = WriteCommand::new(METADATA, WriteKind::Update);
    cmd.statements.push(s);
    cx.write(&format!("update run metadata '{id}'"), &cmd)
        .await
        .map(|_| ())
}

pub fn runs_find(q: &RunMetadataQuery) -> Find {
    let mut filter = Document::new();
    if let Some(m) = &q.module {
        filter.insert("#module", m.as_str());
    }
    let mut range = Document::new();
    if let Some(from) = q.from {
        range.insert("$gte", value::time(from));
    }
    if let Some(to) = q.to {
        range.insert("$lte", value::time(to));
    }
    if !range.is_empty() {
        filter.insert("#time_created", range);
    }
    let dir = if q.newest_first { -1 } else { 1 };
    let mut f = Find::new(METADATA, filter);
    f.sort = Some(doc! {"#time_created": dir, "_id": dir});
    f.skip = q.skip;
    f.limit = q.limit;
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn meta_documents() {
        assert_eq!(
            value_of(doc! {"_id": "k", "value": {"x": 1}}),
            Some(doc! {"x": 1})
        );
        assert_eq!(value_of(doc! {"_id": "k"}), None);
        assert_eq!(
            list_find("a.b/").filter,
            doc! {"_id": {"$regex": r"^a\.b/"}}
        );
        assert_eq!(list_find("").filter, doc! {});
    }

    #[test]
    fn run_records() {
        assert_eq!(run_update("x", &doc! {}, &doc! {}), None);
        assert_eq!(
            run_update("x", &doc! {"a": 1}, &doc! {"n": 2}),
            Some(
                doc! {"q": {"_id": "x"}, "u": {"$set": {"a": 1}, "$inc": {"n": 2}}, "upsert": false, "multi": false}
            )
        );
        let t = Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("time");
        let f = runs_find(&RunMetadataQuery {
            module: Some("SnapShooter".into()),
            from: Some(t),
            to: None,
            newest_first: true,
            skip: 0,
            limit: 3,
        });
        assert_eq!(
            f.filter,
            doc! {"#module": "SnapShooter", "#time_created": {"$gte": value::time(t)}}
        );
        assert_eq!(f.sort, Some(doc! {"#time_created": -1, "_id": -1}));
        assert_eq!(f.limit, 3);
    }
}
