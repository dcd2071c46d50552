//! DP3's (Starlette's) routing behaviour around the routes (api.md §2 E4, §3):
//! `404 {"detail":"Not Found"}`, `405 {"detail":"Method Not Allowed"}`, no automatic `HEAD`,
//! and a `307` redirect when a path only differs from a route by a trailing slash.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The request body as bytes; over the body limit it is `413 {"detail": ...}` instead of
/// axum's plain-text rejection.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Set by the router (`api.yml: limits`); absent in routers built without it.
        let limits = req.extensions().get::<RequestLimits>().copied();
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(match limits {
                    Some(l) => format!(
                        "Request body is larger than limits.max_body_bytes ({} bytes)",
                        l.max_body_bytes
                    ),
                    None => "Request body is too large".into(),
                })
            } else {
                ApiError::BadRequest(format!("Cannot read the request body: {}", e.body_text()))
            }
        })?;
        if let Some(l) = limits {
            super::limits::check_json_limits(&body, &l.json)
                .map_err(|e| ApiError::PayloadTooLarge(format!("Request body rejected: {e}")))?;
        }
        Ok(RawBody(body))
    }
}

/// The body limits of a request, put into its extensions by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub json: super::limits::JsonLimits,
}

/// DP3 (Starlette) answers a CORS preflight with the text `OK`.
pub async fn preflight_ok_body(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let resp = next.run(req).await;
    if preflight && resp.status() == StatusCode::OK {
        let (mut parts, _) = resp.into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from("OK"));
    }
    resp
}

/// Every route pattern the API serves (axum syntax). Used to decide slash redirects: Starlette
/// redirects when the other form matches a route whatever the method.
pub const ROUTE_PATTERNS: &[&str] = &[
    "/",
    "/datapoints",
    "/entities",
    "/entity/{etype}/get",
    "/entity/{etype}/count",
    "/entity/{etype}/raw/get",
    "/entity/{etype}/{eid}",
    "/entity/{etype}/{eid}/master",
    "/entity/{etype}/{eid}/snapshots",
    "/entity/{etype}/{eid}/get/{attr}",
    "/entity/{etype}/{eid}/set/{attr}",
    "/entity/{etype}/_/distinct/{attr}",
    "/entity/{etype}/{eid}/ttl",
    "/v2/entity/{etype}/get",
    "/v2/entity/{etype}/count",
    "/v2/entity/{etype}/raw/get",
    "/v2/entity/{etype}/_/distinct/{attr}",
    "/v2/entity/{etype}/",
    "/v2/entity/{etype}",
    "/v2/entity/{etype}/master",
    "/v2/entity/{etype}/snapshots",
    "/v2/entity/{etype}/attr",
    "/v2/entity/{etype}/ttl",
    "/control/refresh_on_entity_creation",
    "/control/refresh_module_config",
    "/control/{action}",
    "/telemetry/sources_validity",
    "/telemetry/sources_age",
    "/telemetry/entities_per_attr",
    "/telemetry/attribute_bson_sizes",
    "/telemetry/snapshot_summary",
    "/telemetry/metadata",
    "/telemetry/rabbitmq/queues",
    "/openapi.json",
    "/docs",
    "/redoc",
];

/// Whether `path` (raw, percent-encoded) matches a route pattern: same number of segments,
/// equal static segments, any non-empty segment for a `{param}`.
pub fn matches_any_route(path: &str) -> bool {
    ROUTE_PATTERNS.iter().any(|p| pattern_matches(p, path))
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let mut ps = pattern.split('/');
    let mut xs = path.split('/');
    loop {
        match (ps.next(), xs.next()) {
            (None, None) => return true,
            (Some(p), Some(x)) => {
                let is_param = p.starts_with('{') && p.ends_with('}');
                if is_param {
                    if x.is_empty() {
                        return false;
                    }
                } else if p != x {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Axum answers `HEAD` with the `GET` handler; DP3 does not (`405`). Rename the method so
/// routing rejects it (`405` on known paths, `404` elsewhere).
pub async fn reject_head(mut req: Request) -> Request {
    if req.method() == Method::HEAD
        && let Ok(m) = Method::from_bytes(b"HEAD-NOT-SERVED")
    {
        *req.method_mut() = m;
    }
    req
}

/// Axum lists `HEAD` in `Allow` for GET routes, but we do not serve it: drop it there.
pub async fn allow_without_head(mut resp: Response) -> Response {
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(allow) = resp
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
    {
        let methods: Vec<&str> = allow
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != "HEAD")
            .collect();
        if let Ok(v) = HeaderValue::from_str(&methods.join(", ")) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
    }
    resp
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Unknown path: `307` to the slash/no-slash twin when that is a route, else `404`.
pub async fn not_found_or_redirect(uri: Uri, headers: axum::http::HeaderMap) -> Response {
    let path = uri.path();
    let twin = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped.to_owned(),
        Some(_) => return ApiError::NotFound.into_response(),
        None => format!("{path}/"),
    };
    if !matches_any_route(&twin) {
        return ApiError::NotFound.into_response();
    }
    let mut location = match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => format!("http://{host}{twin}"),
        None => twin,
    };
    if let Some(q) = uri.query() {
        location.push('?');
        location.push_str(q);
    }
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, v)]).into_response(),
        Err(_) => ApiError::NotFound.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segmentwise() {
        assert!(matches_any_route("/entities"));
        assert!(!matches_any_route("/entities/"));
        assert!(matches_any_route("/entity/A/12"));
        assert!(matches_any_route("/entity/A/12/get/data1"));
        assert!(!matches_any_route("/entity/A//get/data1"));
        assert!(matches_any_route("/v2/entity/A/"));
        assert!(matches_any_route("/v2/entity/A"));
        assert!(!matches_any_route("/nope"));
    }
}
