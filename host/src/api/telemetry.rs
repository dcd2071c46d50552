//! `/telemetry/...` (api.md §4.9, core.md §8.3).
//!
//! Store conventions read here (written by the workers):
//! * `telemetry/src/<src>` metadata: `{src_t: datetime}`, the newest `t2` seen per source;
//! * `telemetry/attribute_bson_sizes/<etype>` metadata: `{calculated_at, duration_s,
//!   attributes: {attr: {count, min, mean, max, total}}}`;
//! * run metadata (DP3's `#metadata`) for snapshot summaries.

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use bson::Document;
use chrono::Utc;
use dp3_model::AttrKind;
use dp3_model::value::{as_f64, as_int, as_time, doc_to_api_json, format_api_datetime};
use dp3_store::{MasterScan, RunMetadataQuery};
use serde_json::{Map, Value as Json, json};

use super::AppState;
use super::error::{ApiError, Source};
use super::params::{Checker, QueryParams};

type JsonResult = Result<axum::Json<Json>, ApiError>;

/// Metadata key prefix of per-source freshness.
pub const SOURCES_PREFIX: &str = "telemetry/src/";
/// Metadata key prefix of cached attribute size statistics.
pub const BSON_SIZES_PREFIX: &str = "telemetry/attribute_bson_sizes/";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/telemetry/sources_validity", get(sources_validity))
        .route("/telemetry/sources_age", get(sources_age))
        .route("/telemetry/entities_per_attr", get(entities_per_attr))
        .route("/telemetry/attribute_bson_sizes", get(attribute_bson_sizes))
        .route("/telemetry/snapshot_summary", get(snapshot_summary))
        .route("/telemetry/metadata", get(metadata))
        .route("/telemetry/rabbitmq/queues", get(rabbitmq_queues))
}

/// `(src, time)` pairs sorted by source.
async fn source_times(state: &AppState) -> Result<Vec<(String, chrono::DateTime<Utc>)>, ApiError> {
    let entries = state.store_call(|s| s.list_meta(SOURCES_PREFIX)).await?;
    let mut out: Vec<_> = entries
        .into_iter()
        .filter_map(|(key, doc)| {
            let src = key.strip_prefix(SOURCES_PREFIX)?.to_owned();
            let t = doc.get("src_t").and_then(as_time)?;
            Some((src, t))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `GET /telemetry/sources_validity`: `{src: datetime}`.
pub async fn sources_validity(State(state): State<AppState>) -> JsonResult {
    let out: Map<String, Json> = source_times(&state)
        .await?
        .into_iter()
        .map(|(src, t)| (src, json!(format_api_datetime(&t))))
        .collect();
    Ok(axum::Json(Json::Object(out)))
}

/// `GET /telemetry/sources_age?unit=minutes|seconds`: `{src: whole units since}`.
pub async fn sources_age(State(state): State<AppState>, uri: Uri) -> JsonResult {
    let q = QueryParams::parse(uri.query());
    let mut c = Checker::default();
    let unit = match q.get("unit") {
        Some(u) => c.one_of(
            Source::Query,
            "unit",
            u,
            &["minutes", "seconds"],
            "literal_error",
        ),
        None => Some("minutes"),
    };
    c.finish()?;
    let unit_ms: i64 = if unit == Some("seconds") {
        1000
    } else {
        60_000
    };
    let now = Utc::now();
    let out: Map<String, Json> = source_times(&state)
        .await?
        .into_iter()
        // Integer division truncates toward zero, like Python's int() of the quotient.
        .map(|(src, t)| (src, json!((now - t).num_milliseconds() / unit_ms)))
        .collect();
    Ok(axum::Json(Json::Object(out)))
}

/// `GET /telemetry/entities_per_attr`: `{etype: {attr: records having it}}` for every
/// configured attribute.
pub async fn entities_per_attr(State(state): State<AppState>) -> JsonResult {
    let model = std::sync::Arc::clone(&state.model);
    let counts = state
        .store_call(move |s| {
            let mut out = Map::new();
            for (etype, et) in &model.entities {
                let mut per_attr: Vec<u64> = vec![0; et.attribs.len()];
                let mut after = None;
                loop {
                    let page = s.scan_master(
                        etype,
                        &MasterScan {
                            after: after.clone(),
                            limit: 1000,
                            partition: None,
                            projection: None,
                        },
                    )?;
                    for doc in &page {
                        for (n, (attr, spec)) in per_attr.iter_mut().zip(&et.attribs) {
                            if has_attr(doc, attr, &spec.kind) {
                                *n += 1;
                            }
                        }
                    }
                    after = page
                        .last()
                        .and_then(|d| d.get("_id"))
                        .and_then(dp3_model::Eid::from_bson);
                    if page.len() < 1000 || after.is_none() {
                        break;
                    }
                }
                let m: Map<String, Json> = et
                    .attribs
                    .keys()
                    .zip(per_attr)
                    .map(|(a, n)| (a.clone(), json!(n)))
                    .collect();
                out.insert(etype.clone(), Json::Object(m));
            }
            Ok(out)
        })
        .await?;
    Ok(axum::Json(Json::Object(counts)))
}

/// DP3 counts `<attr>.ts_last_update` for plain and `#min_t2s.<attr>` for history
/// attributes.
fn has_attr(doc: &Document, attr: &str, kind: &AttrKind) -> bool {
    match kind {
        AttrKind::Plain { .. } => doc
            .get_document(attr)
            .is_ok_and(|d| d.contains_key("ts_last_update")),
        _ => doc
            .get_document("#min_t2s")
            .is_ok_and(|d| d.contains_key(attr)),
    }
}

/// `GET /telemetry/attribute_bson_sizes`: cached statistics by etype (`{}` until computed).
pub async fn attribute_bson_sizes(State(state): State<AppState>) -> JsonResult {
    let entries = state.store_call(|s| s.list_meta(BSON_SIZES_PREFIX)).await?;
    let mut items: Vec<(String, Json)> = entries
        .into_iter()
        .filter_map(|(key, doc)| {
            let etype = key.strip_prefix(BSON_SIZES_PREFIX)?.to_owned();
            Some((etype, Json::Object(doc_to_api_json(&doc))))
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(axum::Json(Json::Object(items.into_iter().collect())))
}

/// `GET /telemetry/snapshot_summary`.
pub async fn snapshot_summary(State(state): State<AppState>) -> JsonResult {
    let runs = state
        .store_call(|s| {
            s.query_run_metadata(&RunMetadataQuery {
                module: Some("SnapShooter".into()),
                newest_first: true,
                ..Default::default()
            })
        })
        .await?;
    let workers = i64::from(state.settings.snapshot_workers);
    let now = Utc::now();
    let age = |d: &Document| {
        d.get("#time_created")
            .and_then(as_time)
            .map(|t| (now - t).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6)
    };
    let latest_age = runs.first().and_then(age);
    let finished = runs.iter().find(|d| {
        d.get("workers_finished").and_then(as_int) == Some(workers)
            && d.get_bool("linked_finished").unwrap_or(false)
    });
    let (finished_age, entities, total_s) = match finished {
        Some(d) => {
            let total = d
                .get("#last_update")
                .and_then(as_time)
                .zip(d.get("#time_created").and_then(as_time))
                .map(|(end, start)| (end - start).num_microseconds().unwrap_or(0) as f64 / 1e6);
            (age(d), d.get("entities").and_then(as_f64), total)
        }
        None => (None, None, None),
    };
    Ok(axum::Json(json!({
        "latest_age": latest_age,
        "finished_age": finished_age,
        "entities": entities.map(|e| e as i64),
        "total_s": total_s,
    })))
}

/// `GET /telemetry/metadata`: raw run-metadata documents.
pub async fn metadata(State(state): State<AppState>, uri: Uri) -> JsonResult {
    let q = QueryParams::parse(uri.query());
    let mut c = Checker::default();
    let from = c.datetime(&q, "date_from");
    let to = c.datetime(&q, "date_to");
    let skip = c.uint(&q, "skip", 0);
    let limit = c.uint(&q, "limit", 0);
    let sort = match q.get("sort") {
        Some(s) => c.one_of(
            Source::Query,
            "sort",
            s,
            &["newest", "oldest"],
            "literal_error",
        ),
        None => Some("newest"),
    };
    c.finish()?;
    let query = RunMetadataQuery {
        module: q.get("module").map(str::to_owned),
        from,
        to,
        newest_first: sort != Some("oldest"),
        skip,
        limit,
    };
    let docs = state
        .store_call(move |s| s.query_run_metadata(&query))
        .await?;
    Ok(axum::Json(Json::Array(
        docs.iter()
            .map(|d| Json::Object(doc_to_api_json(d)))
            .collect(),
    )))
}

/// A queue of the management API as DP3 reports it, or `None` for foreign queues.
fn queue_entry(prefix: &str, q: &Json) -> Option<(String, Json)> {
    let name = q.get("name")?.as_str()?;
    let suffix = name.strip_prefix(prefix)?;
    let queue = if suffix.chars().count() <= 2 {
        format!("{suffix}-main")
    } else {
        suffix.to_owned()
    };
    let rate = |key: &str| {
        q.get("message_stats")
            .and_then(|s| s.get(key))
            .and_then(|d| d.get("rate"))
            .cloned()
            .unwrap_or(json!(0.0))
    };
    let field = |key: &str| q.get(key).cloned().unwrap_or(json!(0));
    Some((
        queue.clone(),
        json!({
            "name": name,
            "queue": queue,
            "total": field("messages"),
            "ready": field("messages_ready"),
            "unacked": field("messages_unacknowledged"),
            "consumers": field("consumers"),
            "memory": field("memory"),
            "message_bytes": field("message_bytes"),
            "incoming": rate("publish_details"),
            "outgoing": rate("deliver_get_details"),
        }),
    ))
}

fn rabbit_unavailable(reason: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable {
        detail: format!("RabbitMQ telemetry unavailable: {reason}"),
        retry_after_secs: None,
    }
}

/// `GET /telemetry/rabbitmq/queues`: worker queues from the RabbitMQ management API.
pub async fn rabbitmq_queues(State(state): State<AppState>) -> JsonResult {
    let Some(mq) = &state.settings.rabbitmq else {
        return Err(rabbit_unavailable("no message broker is configured"));
    };
    let url = format!("http://{}:{}/api/queues", mq.host, mq.port);
    let resp = state
        .http
        .get(&url)
        .basic_auth(&mq.username, Some(&mq.password))
        .send()
        .await
        .map_err(rabbit_unavailable)?
        .error_for_status()
        .map_err(rabbit_unavailable)?;
    let body: Json = resp.json().await.map_err(rabbit_unavailable)?;
    let prefix = format!("{}-worker-", state.settings.app_name);
    let mut queues: Vec<(String, Json)> = body
        .as_array()
        .map(|a| a.iter().filter_map(|q| queue_entry(&prefix, q)).collect())
        .unwrap_or_default();
    queues.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(axum::Json(json!({
        "queues": queues.into_iter().map(|(_, q)| q).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_dp3() {
        let (k, q) = queue_entry(
            "app-worker-",
            &json!({"name": "app-worker-0", "messages": 3}),
        )
        .unwrap();
        assert_eq!(k, "0-main");
        assert_eq!(q["total"], json!(3));
        let (k, _) = queue_entry("app-worker-", &json!({"name": "app-worker-0-pri"})).unwrap();
        assert_eq!(k, "0-pri");
        assert!(queue_entry("app-worker-", &json!({"name": "other"})).is_none());
    }
}
