//! The DP3-compatible HTTP API (api.md): 35 operations under `/`, `/datapoints`,
//! `/entities`, `/entity/...`, `/v2/entity/...`, `/control/...` and `/telemetry/...`, plus
//! `/openapi.json` and `/docs`.
//!
//! Build an [`AppState`] and serve [`router`]. Store calls are blocking and run on tokio's
//! blocking pool; tasks go to the [`TaskSubmitter`] and a `200` for `/datapoints` means the
//! tasks are durable.
//!
//! Deliberate differences from DP3 (everything else follows api.md):
//! * `200` from `/datapoints`, `set`, `ttl` and `DELETE` means the tasks are durable; a full
//!   queue is `503` with `Retry-After` instead of a request that blocks.
//! * Unhandled errors are `500 {"detail": "Internal Server Error"}` (DP3: bare text), so every
//!   error body has the `{"detail": ...}` shape. Body-size and datapoint-count limits are
//!   `413 {"detail": ...}`.
//! * DP3 bugs not reproduced: an invalid query operator in `/get` is `400 "Query is invalid:
//!   ..."` as in `/count` (DP3: `500`); `ttl` with `{}` is a no-op `200` (DP3: `500`).
//! * `POST /datapoints` and `ttl` without a Content-Type read the body as JSON (older
//!   FastAPI); another non-JSON Content-Type gets FastAPI 0.165's `list_type`/`dict_type`.
//! * v1 paths accept eids containing an encoded `/` (`%2F`); DP3 answers 404.
//! * The datapoint logs hold Python dict reprs of the API's JSON renderings (datetimes as
//!   ISO strings, where DP3 prints `datetime.datetime(...)`).
//! * `X-Forwarded-For` is honoured only from a loopback peer (uvicorn's default trust).
//! * `ROOT_PATH` is not needed: a reverse proxy strips its prefix.

pub mod auth;
pub mod entity;
pub mod error;
pub mod filters;
pub mod ingest;
pub mod limits;
pub mod logger;
pub mod openapi;
pub mod params;
pub mod render;
pub mod routing;
pub mod system;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::{get, post};
use dp3_model::{EntityType, ModelSpec};
use dp3_store::Store;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

pub use error::{ApiError, ErrorItem, Source};
pub use logger::{DatapointLogger, LoggerError};

use crate::queue::{ControlSink, TaskSubmitter};

/// Default maximum request body size (issue 8 makes it configurable).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Where the RabbitMQ management API is (`/telemetry/rabbitmq/queues`).
#[derive(Debug, Clone, PartialEq)]
pub struct RabbitMqManagement {
    pub host: String,
    /// `msg_broker.management_port`, default 15672.
    pub port: u16,
    pub username: String,
    pub password: String,
}

/// The configuration values the API uses (from `api.yml`, `processing_core.yml`,
/// `control.yml` and the environment).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// `APP_NAME`: prefix of the worker queue names.
    pub app_name: String,
    /// `api.yml: cors.allow_origins` (default `["*"]`).
    pub cors_allow_origins: Vec<String>,
    /// `api.yml: datapoint_logger.good_log` (`None` = disabled).
    pub good_log: Option<PathBuf>,
    /// `api.yml: datapoint_logger.bad_log` (`None` = disabled).
    pub bad_log: Option<PathBuf>,
    /// `processing_core.enabled_modules`: the allowed `module` values of
    /// `/control/refresh_module_config`.
    pub enabled_modules: Vec<String>,
    /// `processing_core.worker_processes`.
    pub worker_processes: u32,
    /// `workers_finished` of a complete snapshot run (`/telemetry/snapshot_summary`). DP3's
    /// workers each report, so it is `worker_processes` there; this host's snapshooter runs
    /// a whole run in one process and reports 1.
    pub snapshot_workers: u32,
    /// `control.allowed_actions` (the API only warns about others, as DP3's workers ignore
    /// them).
    pub allowed_control_actions: Vec<String>,
    /// `None`: `/telemetry/rabbitmq/queues` answers 503 (no broker in this deployment).
    pub rabbitmq: Option<RabbitMqManagement>,
    /// Maximum request body size in bytes (`413` beyond it).
    pub body_limit: usize,
    /// Maximum number of datapoints in one `POST /datapoints` (`413` beyond it); `None` =
    /// unlimited, as in DP3.
    pub max_datapoints_per_request: Option<usize>,
    /// String/array/nesting limits of request bodies (`413`).
    pub json_limits: limits::JsonLimits,
    /// Largest `limit` of paged endpoints (`422` beyond it).
    pub max_page_size: u64,
    /// API tokens; `None` = open API (DP3-compatible).
    pub auth: Option<auth::Auth>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            app_name: "dp3".into(),
            cors_allow_origins: vec!["*".into()],
            good_log: None,
            bad_log: None,
            enabled_modules: Vec::new(),
            worker_processes: 1,
            snapshot_workers: 1,
            allowed_control_actions: Vec::new(),
            rabbitmq: None,
            body_limit: DEFAULT_BODY_LIMIT,
            max_datapoints_per_request: None,
            json_limits: limits::JsonLimits::default(),
            max_page_size: dp3_model::config::ApiLimits::default().max_page_size,
            auth: None,
        }
    }
}

impl ApiSettings {
    /// The API's view of a loaded configuration directory; `app_name` is DP3's `APP_NAME`.
    pub fn from_config(config: &dp3_model::config::Config, app_name: &str) -> Self {
        let pc = &config.processing_core;
        let broker = &pc.msg_broker;
        ApiSettings {
            app_name: app_name.to_owned(),
            cors_allow_origins: config.api.cors.allow_origins.clone(),
            good_log: config.api.datapoint_logger.good_log.clone(),
            bad_log: config.api.datapoint_logger.bad_log.clone(),
            enabled_modules: pc.enabled_modules.clone(),
            worker_processes: pc.worker_processes,
            snapshot_workers: 1,
            allowed_control_actions: config
                .control
                .allowed_actions
                .iter()
                .map(|a| a.name().to_owned())
                .collect(),
            rabbitmq: Some(RabbitMqManagement {
                host: broker.host.clone(),
                port: broker.management_port,
                username: broker.username.clone(),
                password: broker.password.clone(),
            }),
            body_limit: config.api.limits.max_body_bytes,
            max_datapoints_per_request: Some(config.api.limits.max_datapoints_per_request),
            json_limits: limits::JsonLimits::from(&config.api.limits),
            max_page_size: config.api.limits.max_page_size,
            auth: config.api.auth.as_ref().map(auth::Auth::from_config),
        }
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub model: Arc<ModelSpec>,
    pub settings: Arc<ApiSettings>,
    pub store: Arc<dyn Store>,
    pub submitter: Arc<dyn TaskSubmitter>,
    pub control: Arc<dyn ControlSink>,
    pub logger: Arc<DatapointLogger>,
    /// Client for the RabbitMQ management API (short timeouts).
    pub http: reqwest::Client,
}

/// The API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiSetupError {
    #[error(transparent)]
    Logger(#[from] LoggerError),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
}

impl AppState {
    /// Build the state; opens the datapoint logs (a missing log directory is an error, as
    /// in DP3, api.md §1.4).
    pub fn new(
        model: Arc<ModelSpec>,
        settings: ApiSettings,
        store: Arc<dyn Store>,
        submitter: Arc<dyn TaskSubmitter>,
        control: Arc<dyn ControlSink>,
    ) -> Result<Self, ApiSetupError> {
        let logger =
            DatapointLogger::open(settings.good_log.as_deref(), settings.bad_log.as_deref())?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiSetupError::HttpClient(e.to_string()))?;
        Ok(AppState {
            model,
            settings: Arc::new(settings),
            store,
            submitter,
            control,
            logger: Arc::new(logger),
            http,
        })
    }

    /// The configured entity type, or DP3's `422` for `{etype}` (checked before anything
    /// else, api.md §1.2).
    pub fn entity_type(&self, etype: &str) -> Result<&EntityType, ApiError> {
        self.model
            .entity(etype)
            .ok_or_else(|| ApiError::unknown_etype(etype))
    }

    /// Run a blocking store call on the blocking pool.
    pub async fn store_call<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> dp3_store::Result<T> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
            .map_err(ApiError::from)
    }
}

/// The client address for logs and `set`'s `src` (`"<ip> via API"`).
pub fn client_ip(conn: Option<&ConnectInfo<SocketAddr>>, headers: &HeaderMap) -> String {
    let peer = conn.map(|c| c.0.ip());
    // Like uvicorn's default `forwarded_allow_ips`: only a proxy on this machine may set
    // the client address through `X-Forwarded-For`.
    let trusted_proxy = peer.is_some_and(|ip| ip.is_loopback());
    if let Some(fwd) = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| trusted_proxy && !v.is_empty())
    {
        return fwd.to_owned();
    }
    peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The API router with all routes, DP3's routing behaviour (404/405 bodies, slash
/// redirects, no automatic `HEAD`), CORS and a body-size limit.
pub fn router(state: AppState) -> Router {
    let settings = Arc::clone(&state.settings);
    let api = Router::new()
        .route("/", get(system::health))
        .route("/datapoints", post(ingest::post_datapoints))
        .route("/entities", get(system::entities))
        .merge(entity::routes())
        .merge(system::control_routes())
        .merge(telemetry::routes())
        .with_state(state)
        .merge(openapi::routes())
        .method_not_allowed_fallback(routing::method_not_allowed)
        .fallback(routing::not_found_or_redirect)
        .layer(DefaultBodyLimit::max(settings.body_limit));
    let request_limits = routing::RequestLimits {
        max_body_bytes: settings.body_limit,
        json: settings.json_limits,
    };
    let mut outer = Router::new().fallback_service(api);
    // Inside the CORS layer, so refusals carry CORS headers too.
    if let Some(auth) = &settings.auth {
        outer = outer.layer(axum::middleware::from_fn_with_state(
            Arc::new(auth.clone()),
            auth::require_token,
        ));
    }
    // Layers on an outer router run before routing: HEAD must be rejected before axum maps
    // it to the GET handler.
    outer
        .layer(axum::middleware::map_request(
            move |mut req: axum::extract::Request| async move {
                req.extensions_mut().insert(request_limits);
                req
            },
        ))
        .layer(axum::middleware::map_request(routing::reject_head))
        .layer(axum::middleware::map_response(routing::allow_without_head))
        .layer(cors_layer(&settings.cors_allow_origins))
        .layer(axum::middleware::from_fn(routing::preflight_ok_body))
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods(Any)
        .allow_headers(Any)
}
