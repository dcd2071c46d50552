//! Health, the entity model (`/entities`) and control actions (api.md §4.1, §4.3, §4.8).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::Uri;
use axum::http::request::Parts;
use axum::routing::get;
use serde_json::{Map, Value as Json, json};

use super::error::{ApiError, Source};
use super::params::{Checker, QueryParams};
use super::render::entity_type_json;
use crate::queue::ControlAction;

use super::AppState;

/// Percent-decoded path parameters. Undecodable parameters (invalid UTF-8) are `404`.
pub struct PathParams(pub HashMap<String, String>);

impl PathParams {
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|_| ApiError::NotFound)
    }
}

/// `GET /`.
pub async fn health() -> axum::Json<Json> {
    axum::Json(json!({ "detail": "It works!" }))
}

/// `GET /entities`: entity types in configuration (readdir) order with attribute specs and
/// estimated record counts.
pub async fn entities(State(state): State<AppState>) -> Result<axum::Json<Json>, ApiError> {
    let etypes: Vec<String> = state.model.entities.keys().cloned().collect();
    let counts = state
        .store_call(move |store| {
            etypes
                .iter()
                .map(|e| store.count_master(e))
                .collect::<Result<Vec<u64>, _>>()
        })
        .await?;
    let mut out = Map::new();
    for ((etype, et), count) in state.model.entities.iter().zip(counts) {
        let mut m = entity_type_json(et);
        m.insert("eid_estimate_count".into(), json!(count));
        out.insert(etype.clone(), Json::Object(m));
    }
    Ok(axum::Json(Json::Object(out)))
}

pub fn control_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/control/refresh_on_entity_creation",
            get(refresh_on_entity_creation),
        )
        .route("/control/refresh_module_config", get(refresh_module_config))
        .route("/control/{action}", get(control_action))
}

const ACTIONS: [&str; 3] = [
    "make_snapshots",
    "refresh_on_entity_creation",
    "refresh_module_config",
];

/// Send an action; DP3 answers "Action sent." whatever `control.allowed_actions` says (the
/// workers ignore disallowed actions), so we only warn here (core.md §7).
fn send(state: &AppState, action: ControlAction) -> Result<axum::Json<Json>, ApiError> {
    if !state
        .settings
        .allowed_control_actions
        .iter()
        .any(|a| a == action.name())
    {
        tracing::warn!(
            action = action.name(),
            "control action is not in control.allowed_actions; workers will ignore it"
        );
    }
    state.control.send(action)?;
    Ok(axum::Json(json!({ "detail": "Action sent." })))
}

/// `GET /control/{action}`: any of the three names, delivered to worker 0.
pub async fn control_action(
    State(state): State<AppState>,
    path: PathParams,
) -> Result<axum::Json<Json>, ApiError> {
    let mut c = Checker::default();
    let action = c.one_of(Source::Path, "action", path.get("action"), &ACTIONS, "enum");
    c.finish()?;
    // The parameterised actions have their own routes; reached here only without their
    // parameter, which DP3's generic route sends with empty kwargs.
    let action = match action {
        Some("make_snapshots") => ControlAction::MakeSnapshots,
        Some(other) => {
            return Err(ApiError::Internal(format!(
                "control action '{other}' reached the generic route"
            )));
        }
        None => return Err(ApiError::Internal("control action missing".into())),
    };
    send(&state, action)
}

/// `GET /control/refresh_on_entity_creation?etype=` (etype not checked, as in DP3).
pub async fn refresh_on_entity_creation(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<axum::Json<Json>, ApiError> {
    let q = QueryParams::parse(uri.query());
    let mut c = Checker::default();
    let etype = c.required(&q, "etype").map(str::to_owned);
    c.finish()?;
    let etype = etype.unwrap_or_default();
    send(&state, ControlAction::RefreshOnEntityCreation { etype })
}

/// `GET /control/refresh_module_config?module=` (module must be enabled).
pub async fn refresh_module_config(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<axum::Json<Json>, ApiError> {
    let q = QueryParams::parse(uri.query());
    let mut c = Checker::default();
    let module = c.required(&q, "module").map(str::to_owned);
    let enabled: Vec<&str> = state
        .settings
        .enabled_modules
        .iter()
        .map(String::as_str)
        .collect();
    let module = module.and_then(|m| {
        c.one_of(Source::Query, "module", &m, &enabled, "enum")
            .map(str::to_owned)
    });
    c.finish()?;
    let module = module.unwrap_or_default();
    send(&state, ControlAction::RefreshModuleConfig { module })
}
