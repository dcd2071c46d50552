//! Black-box tests of request limits and API tokens (`api.yml: limits`, `auth`): the real
//! `dp3 run`, driven over HTTP. Every refusal is a `4xx` whose `detail` names the limit and
//! its value, or what is needed.

mod common;

use common::{Dp3, client, dp3_test_config};
use serde_json::{Value, json};

const READER: &str = "reader-token-0123456789";
const WRITER: &str = "writer-token-0123456789";
const OPS: &str = "ops-token-0123456789abcd";

fn start(api_yml_extra: &str) -> (tempfile::TempDir, Dp3) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    let api = cfg.join("api.yml");
    let mut text = std::fs::read_to_string(&api).unwrap();
    text.push_str(api_yml_extra);
    std::fs::write(&api, text).unwrap();
    let dp3 = Dp3::start(&cfg, &dir.path().join("data"));
    (dir, dp3)
}

fn post_raw(dp3: &Dp3, path: &str, body: String, token: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(dp3.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn get_with(dp3: &Dp3, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(dp3.url(path));
    if let Some(t) = token {
        req = req.header("x-api-token", t);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn detail(body: &Value) -> String {
    body["detail"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body["detail"].to_string())
}

fn dp(v: Value) -> Value {
    json!({"type": "test_entity_type", "id": "e1", "attr": "test_attr_int", "v": v})
}

#[test]
fn every_limit_is_enforced_and_named() {
    let (_dir, dp3) = start(
        "\nlimits:\n  max_body_bytes: 4000\n  max_datapoints_per_request: 3\n  \
         max_string_length: 50\n  max_array_length: 5\n  max_nesting_depth: 4\n  max_page_size: 100\n",
    );
    let mut tried = 0;
    let mut check = |(status, body): (u16, Value), want: u16, needle: &str| {
        tried += 1;
        assert_eq!(status, want, "{body}");
        let d = detail(&body);
        assert!(d.contains(needle), "{needle:?} not in {d}");
    };
    // Body size.
    let big = format!("[{}]", vec![dp(json!(1)).to_string(); 60].join(","));
    assert!(big.len() > 4000);
    check(
        post_raw(&dp3, "/datapoints", big, None),
        413,
        "limits.max_body_bytes (4000 bytes)",
    );
    // Datapoints per request.
    let four = Value::Array(vec![dp(json!(1)); 4]).to_string();
    check(
        post_raw(&dp3, "/datapoints", four, None),
        413,
        "limits.max_datapoints_per_request is 3",
    );
    // String length (any string, also keys and unknown fields).
    let long = json!([{"type": "test_entity_type", "id": "x".repeat(51), "attr": "a", "v": 1}]);
    check(
        post_raw(&dp3, "/datapoints", long.to_string(), None),
        413,
        "limits.max_string_length (50 bytes)",
    );
    // Array length below the top level.
    let arr = json!([{"type": "test_entity_type", "id": "e1", "attr": "test_attr_array", "v": [1, 2, 3, 4, 5, 6]}]);
    check(
        post_raw(&dp3, "/datapoints", arr.to_string(), None),
        413,
        "limits.max_array_length (5)",
    );
    // Nesting depth.
    let deep = json!([{"type": "test_entity_type", "id": "e1", "attr": "a", "v": [[[1]]]}]);
    check(
        post_raw(&dp3, "/datapoints", deep.to_string(), None),
        413,
        "limits.max_nesting_depth (4)",
    );
    // The limits apply to every body, e.g. `set`.
    let set = json!({"value": "y".repeat(60)}).to_string();
    check(
        post_raw(
            &dp3,
            "/entity/test_entity_type/e1/set/test_attr_string",
            set,
            None,
        ),
        413,
        "limits.max_string_length",
    );
    // Page size.
    let (status, body) = dp3.get("/entity/test_entity_type/get?limit=101");
    tried += 1;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["query", "limit"]));
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("100 (limits.max_page_size)"),
        "{body}"
    );
    // Within every limit: accepted.
    let ok = Value::Array(vec![dp(json!(1)); 3]).to_string();
    let (status, body) = post_raw(&dp3, "/datapoints", ok, None);
    assert_eq!(status, 200, "{body}");
    let (status, _) = dp3.get("/entity/test_entity_type/get?limit=100");
    assert_eq!(status, 200);
    eprintln!("limit violations tried: {tried}");
    // The server is unaffected.
    assert_eq!(dp3.get("/").0, 200);
}

#[test]
fn default_limits_refuse_hostile_nesting() {
    let (_dir, dp3) = start("");
    // 10 000 nested arrays: far below the default body limit, far above the depth limit.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let (status, body) = post_raw(&dp3, "/datapoints", deep, None);
    assert_eq!(status, 413, "{body}");
    assert!(
        detail(&body).contains("limits.max_nesting_depth (64)"),
        "{body}"
    );
    assert_eq!(dp3.get("/").0, 200);
}

#[test]
fn tokens_and_scopes_are_enforced() {
    let hashed_writer = {
        use sha2::{Digest, Sha256};
        Sha256::digest(WRITER.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (_dir, dp3) = start(&format!(
        "\nauth:\n  tokens:\n    - {{name: reader, token: {READER}, scopes: [read]}}\n    \
         - {{name: writer, token_sha256: \"{hashed_writer}\", scopes: [read, write]}}\n    \
         - {{name: ops, token: {OPS}, scopes: [control]}}\n"
    ));
    let body = Value::Array(vec![dp(json!(7))]).to_string();
    // Open: health and API docs.
    assert_eq!(get_with(&dp3, "/", None).0, 200);
    assert_eq!(get_with(&dp3, "/openapi.json", None).0, 200);
    // 401 without or with an unknown token, naming the scope.
    let (s, b) = post_raw(&dp3, "/datapoints", body.clone(), None);
    assert_eq!(s, 401, "{b}");
    assert!(detail(&b).contains("'write' scope"), "{b}");
    let (s, b) = post_raw(
        &dp3,
        "/datapoints",
        body.clone(),
        Some("wrong-token-0123456789"),
    );
    assert_eq!(s, 401, "{b}");
    assert!(detail(&b).contains("Invalid API token"), "{b}");
    let (s, b) = get_with(&dp3, "/entities", None);
    assert_eq!(s, 401, "{b}");
    assert!(detail(&b).contains("'read' scope"), "{b}");
    // 403 with a token lacking the scope.
    let (s, b) = post_raw(&dp3, "/datapoints", body.clone(), Some(READER));
    assert_eq!(s, 403, "{b}");
    assert!(
        detail(&b).contains("token 'reader' lacks the 'write' scope"),
        "{b}"
    );
    let (s, b) = get_with(&dp3, "/control/make_snapshots", Some(WRITER));
    assert_eq!(s, 403, "{b}");
    assert!(detail(&b).contains("'control' scope"), "{b}");
    let (s, b) = get_with(&dp3, "/entities", Some(OPS));
    assert_eq!(s, 403, "{b}");
    // Allowed.
    let (s, b) = post_raw(&dp3, "/datapoints", body, Some(WRITER));
    assert_eq!(s, 200, "{b}");
    assert_eq!(get_with(&dp3, "/entities", Some(READER)).0, 200);
    assert_eq!(
        get_with(&dp3, "/entity/test_entity_type/get", Some(WRITER)).0,
        200
    );
    let (s, b) = get_with(&dp3, "/control/make_snapshots", Some(OPS));
    assert_ne!(s, 401, "{b}");
    assert_ne!(s, 403, "{b}");
}
