//! Optional API tokens (`api.yml: auth`). Without an `auth` section the API is open, as in
//! DP3. With one, every request except the health check, the API docs and CORS preflights
//! needs a token (`Authorization: Bearer <token>` or `X-API-Token: <token>`) with the scope
//! the endpoint needs:
//!
//! * `control`: `/control/*` (whatever the method);
//! * `read`: other `GET`/`HEAD` requests;
//! * `write`: everything else (`POST /datapoints`, `set`, `ttl`, `DELETE`).
//!
//! `401` = no token or an unknown one, `403` = the token lacks the scope; both
//! `{"detail": "..."}` naming what is needed. Secrets are kept only as SHA-256 digests and
//! compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dp3_model::config::{ApiScope, AuthConfig, TokenSecret};
use serde_json::json;
use sha2::{Digest, Sha256};

/// One configured token: its name, the digest of its secret and its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenEntry {
    name: String,
    digest: [u8; 32],
    scopes: Vec<ApiScope>,
}

/// The configured tokens, ready for lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    tokens: Vec<TokenEntry>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// `401`: no token, or one we do not know.
    Unauthenticated(String),
    /// `403`: the token is valid but lacks the scope.
    Forbidden(String),
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Equality without an early exit, so response timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Build from `api.yml: auth` (the loader already checked the digests' format; an
    /// invalid one never matches).
    pub fn from_config(cfg: &AuthConfig) -> Self {
        let tokens = cfg
            .tokens
            .iter()
            .map(|t| TokenEntry {
                name: t.name.clone(),
                digest: match &t.secret {
                    TokenSecret::Plain(s) => sha256(s.as_bytes()),
                    // An unparsable digest (impossible after config validation) matches
                    // nothing: all-zero is not the SHA-256 of any known input.
                    TokenSecret::Sha256Hex(h) => hex_digest(h).unwrap_or([0; 32]),
                },
                scopes: t.scopes.clone(),
            })
            .collect();
        Auth { tokens }
    }

    /// Check a presented token (if any) for `scope`; the token's name when allowed.
    pub fn check(&self, presented: Option<&str>, scope: ApiScope) -> Result<&str, Denied> {
        let Some(token) = presented else {
            return Err(Denied::Unauthenticated(format!(
                "Not authenticated: this endpoint needs an API token with the '{}' scope \
                 (Authorization: Bearer <token>)",
                scope.name()
            )));
        };
        let digest = sha256(token.as_bytes());
        let mut found: Option<&TokenEntry> = None;
        for t in &self.tokens {
            if constant_time_eq(&t.digest, &digest) {
                found = Some(t);
            }
        }
        let Some(entry) = found else {
            return Err(Denied::Unauthenticated(format!(
                "Invalid API token: this endpoint needs a valid token with the '{}' scope",
                scope.name()
            )));
        };
        if entry.scopes.contains(&scope) {
            Ok(&entry.name)
        } else {
            Err(Denied::Forbidden(format!(
                "Forbidden: token '{}' lacks the '{}' scope this endpoint needs",
                entry.name,
                scope.name()
            )))
        }
    }
}

/// The scope a request needs; `None` for requests that are always open.
pub fn required_scope(method: &Method, path: &str) -> Option<ApiScope> {
    let open = path == "/"
        || path == "/openapi.json"
        || path == "/redoc"
        || path == "/docs"
        || path.starts_with("/docs/");
    // Browsers send CORS preflights without credentials.
    if open || method == Method::OPTIONS {
        return None;
    }
    if path == "/control" || path.starts_with("/control/") {
        return Some(ApiScope::Control);
    }
    if method == Method::GET || method == Method::HEAD {
        Some(ApiScope::Read)
    } else {
        Some(ApiScope::Write)
    }
}

/// The token a request presents: `Authorization: Bearer <t>`, else `X-API-Token: <t>`.
fn presented_token(req: &Request) -> Option<&str> {
    let headers = req.headers();
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = v.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-api-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn denied_response(d: Denied) -> Response {
    let (status, detail) = match d {
        Denied::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, m),
        Denied::Forbidden(m) => (StatusCode::FORBIDDEN, m),
    };
    let mut resp = (status, axum::Json(json!({ "detail": detail }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Middleware: refuse requests without the scope they need.
pub async fn require_token(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let Some(scope) = required_scope(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    match auth.check(presented_token(&req), scope) {
        Ok(_) => next.run(req).await,
        Err(d) => {
            tracing::info!(
                method = %req.method(),
                path = req.uri().path(),
                scope = scope.name(),
                "request refused: {d:?}"
            );
            denied_response(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_model::config::ApiToken;

    fn auth() -> Auth {
        let hashed: String = sha256(b"writer-secret-0123")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Auth::from_config(&AuthConfig {
            tokens: vec![
                ApiToken {
                    name: "reader".into(),
                    secret: TokenSecret::Plain("reader-secret-0123".into()),
                    scopes: vec![ApiScope::Read],
                },
                ApiToken {
                    name: "writer".into(),
                    secret: TokenSecret::Sha256Hex(hashed),
                    scopes: vec![ApiScope::Read, ApiScope::Write],
                },
            ],
        })
    }

    #[test]
    fn tokens_and_scopes() {
        let a = auth();
        assert_eq!(
            a.check(Some("reader-secret-0123"), ApiScope::Read),
            Ok("reader")
        );
        assert!(matches!(
            a.check(Some("reader-secret-0123"), ApiScope::Write),
            Err(Denied::Forbidden(m)) if m.contains("'write'") && m.contains("reader")
        ));
        assert_eq!(
            a.check(Some("writer-secret-0123"), ApiScope::Write),
            Ok("writer")
        );
        assert!(matches!(
            a.check(Some("writer-secret-0123"), ApiScope::Control),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            a.check(Some("nope"), ApiScope::Read),
            Err(Denied::Unauthenticated(m)) if m.contains("Invalid")
        ));
        assert!(matches!(
            a.check(None, ApiScope::Read),
            Err(Denied::Unauthenticated(m)) if m.contains("'read'")
        ));
    }

    #[test]
    fn scopes_by_route() {
        assert_eq!(required_scope(&Method::GET, "/"), None);
        assert_eq!(required_scope(&Method::GET, "/docs/index.css"), None);
        assert_eq!(required_scope(&Method::OPTIONS, "/datapoints"), None);
        assert_eq!(
            required_scope(&Method::GET, "/entity/A/get"),
            Some(ApiScope::Read)
        );
        assert_eq!(
            required_scope(&Method::POST, "/datapoints"),
            Some(ApiScope::Write)
        );
        assert_eq!(
            required_scope(&Method::DELETE, "/entity/A/1"),
            Some(ApiScope::Write)
        );
        assert_eq!(
            required_scope(&Method::GET, "/control/make_snapshots"),
            Some(ApiScope::Control)
        );
    }

    #[test]
    fn hex_digests_parse() {
        assert_eq!(hex_digest(&"00".repeat(32)), Some([0; 32]));
        assert_eq!(hex_digest("zz"), None);
        assert_eq!(hex_digest(&"é".repeat(32)), None);
    }
}
