//! `POST /datapoints` (api.md §4.2) and task submission shared by the entity endpoints.
//!
//! Unlike DP3 (which answers once RabbitMQ took the message), a `200` here means the tasks
//! are durable: we wait for the submitter's acceptance.

use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use dp3_model::validate::{group_into_tasks, parse_api_datapoints};
use dp3_model::value::{format_api_datetime, to_api_json};
use dp3_model::{DataPoint, DataPointTask};
use serde_json::{Value as Json, json};
use std::net::SocketAddr;

use super::error::{ApiError, ErrorItem};
use super::routing::RawBody;
use super::{AppState, client_ip};

/// `{"detail": "OK"}`.
pub fn ok() -> axum::Json<Json> {
    axum::Json(json!({ "detail": "OK" }))
}

/// Submit tasks and wait until they are durable.
pub async fn submit_and_wait(state: &AppState, tasks: Vec<DataPointTask>) -> Result<(), ApiError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let accepted = state.submitter.submit(tasks)?;
    match accepted.await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::Unavailable {
            detail: "the task queue stopped before the tasks were accepted".into(),
            retry_after_secs: None,
        }),
    }
}

/// Whether a Content-Type is JSON (`application/json`, `application/*+json`, any
/// parameters).
pub fn is_json_content_type(headers: &HeaderMap) -> Option<bool> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((main, sub)) = mime.split_once('/') else {
        return Some(false);
    };
    Some(main == "application" && (sub == "json" || sub.ends_with("+json")))
}

/// A datapoint as DP3's good log shows it (internal field names).
pub fn datapoint_log_json(dp: &DataPoint) -> Json {
    json!({
        "etype": dp.etype,
        "eid": dp.eid.to_json(),
        "attr": dp.attr,
        "src": dp.src,
        "v": to_api_json(&dp.v),
        "c": dp.c,
        "t1": dp.t1.as_ref().map(format_api_datetime),
        "t2": dp.t2.as_ref().map(format_api_datetime),
    })
}

pub async fn post_datapoints(
    State(state): State<AppState>,
    parts: Parts,
    RawBody(body): RawBody,
) -> Result<axum::Json<Json>, ApiError> {
    let client = client_ip(
        parts.extensions.get::<ConnectInfo<SocketAddr>>(),
        &parts.headers,
    );
    // A full (or unavailable) queue refuses before the body is parsed: under overload most
    // requests are refused, and validating them would take CPU from applying.
    if let Some(refused) = state.submitter.refusal() {
        return Err(refused.into());
    }
    // FastAPI reads a JSON body only for JSON content types; other declared types reach
    // validation as text (`list_type`). A missing Content-Type is read as JSON (never 415).
    let result = if is_json_content_type(&parts.headers) == Some(false) {
        Err(vec![ErrorItem::fastapi(
            "list_type",
            vec![json!("body")],
            "Input should be a valid list",
            json!(String::from_utf8_lossy(&body)),
        )])
    } else {
        let model = std::sync::Arc::clone(&state.model);
        let body = body.clone();
        // Validation of large bodies is CPU work: keep it off the reactor.
        tokio::task::spawn_blocking(move || parse_api_datapoints(&model, &body))
            .await
            .map_err(|e| ApiError::Internal(format!("validation task failed: {e}")))?
            .map_err(|errs| errs.into_iter().map(ErrorItem::from).collect())
    };
    let datapoints = match result {
        Ok(dps) => dps,
        Err(items) => {
            // One invalid datapoint rejects the whole request (as DP3): count the datapoints
            // the errors point at (`loc = ["body", i, ...]`), or the request as one.
            let rejected: std::collections::BTreeSet<u64> = items
                .iter()
                .filter_map(|i| i.loc.get(1).and_then(Json::as_u64))
                .collect();
            metrics::counter!("dp3_datapoints_rejected_total")
                .increment(rejected.len().max(1) as u64);
            metrics::counter!("dp3_requests_rejected_total").increment(1);
            if state.logger.logs_bad() {
                let records: Vec<Json> = items
                    .iter()
                    .map(|i| serde_json::to_value(i).unwrap_or(Json::Null))
                    .collect();
                state.logger.bad(&client, &records);
            }
            return Err(ApiError::Validation(items));
        }
    };
    if let Some(max) = state.settings.max_datapoints_per_request
        && datapoints.len() > max
    {
        return Err(ApiError::PayloadTooLarge(format!(
            "Too many datapoints in one request: {} (limits.max_datapoints_per_request is {max})",
            datapoints.len()
        )));
    }
    let good_records: Vec<Json> = if state.logger.logs_good() {
        datapoints.iter().map(datapoint_log_json).collect()
    } else {
        Vec::new()
    };
    submit_and_wait(&state, group_into_tasks(datapoints)).await?;
    state.logger.good(&client, &good_records);
    Ok(ok())
}
