//! In-process tests of the HTTP API (`tower::ServiceExt::oneshot`) against the real SQLite
//! store in a temporary directory, DP3's own test configuration, a recording task submitter
//! and a recording control sink.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bson::{Bson, doc};
use chrono::{TimeDelta, TimeZone, Utc};
use dp3::api::{ApiSettings, AppState, RabbitMqManagement, router};
use dp3::queue::{Accepted, ControlAction, ControlSink, SubmitError, TaskSubmitter};
use dp3_model::value::time;
use dp3_model::{DataPointTask, Eid, HistoryItem, ModelSpec};
use dp3_store::sqlite::SqliteStore;
use dp3_store::{Creation, EntityWrite, Store, WriteBatch, WriteOp};
use parking_lot::Mutex;
use serde_json::{Value as Json, json};
use tower::ServiceExt;

// ------------------------------------------------------------------ fixtures

#[derive(Default)]
struct RecordingSubmitter {
    tasks: Mutex<Vec<DataPointTask>>,
    /// `submit` answers Overloaded.
    overloaded: Mutex<bool>,
    /// `refusal` answers Overloaded (checked before the body is parsed).
    full: Mutex<bool>,
}

impl TaskSubmitter for RecordingSubmitter {
    fn submit(&self, tasks: Vec<DataPointTask>) -> Result<Accepted, SubmitError> {
        if *self.overloaded.lock() {
            return Err(SubmitError::Overloaded {
                retry_after_secs: 2,
            });
        }
        self.tasks.lock().extend(tasks);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Ok(()));
        Ok(rx)
    }

    fn refusal(&self) -> Option<SubmitError> {
        (*self.full.lock()).then_some(SubmitError::Overloaded {
            retry_after_secs: 3,
        })
    }
}

#[derive(Default)]
struct RecordingControl {
    actions: Mutex<Vec<ControlAction>>,
}

impl ControlSink for RecordingControl {
    fn send(&self, action: ControlAction) -> Result<(), SubmitError> {
        self.actions.lock().push(action);
        Ok(())
    }
}

fn config_dir() -> PathBuf {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dp3-test-config");
    if fixture.is_dir() {
        fixture
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/dp3-test-config")
    }
}

struct Harness {
    app: Router,
    store: Arc<SqliteStore>,
    submitter: Arc<RecordingSubmitter>,
    control: Arc<RecordingControl>,
    model: Arc<ModelSpec>,
    _dir: tempfile::TempDir,
}

fn harness_with(edit: impl FnOnce(&mut ApiSettings, &std::path::Path)) -> Harness {
    let config = dp3_model::config::load_config_dir(&config_dir()).expect("DP3 test config loads");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("dp3.sqlite")).expect("store opens"));
    let mut settings = ApiSettings::from_config(&config, "test");
    // Nothing listens on port 1: the management API is unreachable.
    settings.rabbitmq = Some(RabbitMqManagement {
        host: "127.0.0.1".into(),
        port: 1,
        username: "guest".into(),
        password: "guest".into(),
    });
    edit(&mut settings, dir.path());
    let model = Arc::new(config.model.clone());
    let submitter = Arc::new(RecordingSubmitter::default());
    let control = Arc::new(RecordingControl::default());
    let state = AppState::new(
        Arc::clone(&model),
        settings,
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&submitter) as Arc<dyn TaskSubmitter>,
        Arc::clone(&control) as Arc<dyn ControlSink>,
    )
    .expect("state");
    Harness {
        app: router(state),
        store,
        submitter,
        control,
        model,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(|_, _| {})
}

/// Percent-encode the characters of a query string that are not valid in a URI (`{`, `"`,
/// `$`, ...), the way a client library would.
fn encode_query(uri: &str) -> String {
    let Some((path, query)) = uri.split_once('?') else {
        return uri.to_owned();
    };
    let mut out = format!("{path}?");
    for b in query.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~=&:,%".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Json,
    text: String,
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, body: Option<(&str, &str)>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(encode_query(uri))
            .header(header::HOST, "testserver");
        let body = match body {
            Some((ct, b)) => {
                if !ct.is_empty() {
                    req = req.header(header::CONTENT_TYPE, ct);
                }
                Body::from(b.to_owned())
            }
            None => Body::empty(),
        };
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, None).await
    }

    async fn post_json(&self, uri: &str, body: &str) -> Reply {
        self.send(Method::POST, uri, Some(("application/json", body)))
            .await
    }

    fn tasks(&self) -> Vec<DataPointTask> {
        std::mem::take(&mut *self.submitter.tasks.lock())
    }

    /// Seed one entity of type `A` (int ids) with a plain and an observation attribute,
    /// and of `test_entity_type` with a timeseries, through the Store interface.
    fn seed(&self) {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        let mut a = EntityWrite::new("A", Eid::Int(1));
        a.create = Some(Creation {
            hash: Eid::Int(1).hash("A"),
            time_created: t,
        });
        a.plain.push(("data1".into(), Bson::String("v1".into()), t));
        a.history.push((
            "bs".into(),
            HistoryItem {
                t1: t,
                t2: t + TimeDelta::minutes(10),
                v: Bson::Document(doc! {"eid": "b1"}),
                c: Some(0.8),
            },
        ));
        let e = Eid::String("e1".into());
        let mut ts = EntityWrite::new("test_entity_type", e.clone());
        ts.create = Some(Creation {
            hash: e.hash("test_entity_type"),
            time_created: t,
        });
        ts.history.push((
            "test_attr_timeseries".into(),
            HistoryItem {
                t1: t,
                t2: t + TimeDelta::minutes(20),
                v: Bson::Document(doc! {"value": [1, 2]}),
                c: None,
            },
        ));
        self.store
            .apply(&WriteBatch {
                ops: vec![WriteOp::Entity(a), WriteOp::Entity(ts)],
                ..Default::default()
            })
            .unwrap();
        self.store
            .save_snapshots(
                "A",
                &[(
                    Eid::Int(1),
                    doc! {"eid": 1, "data1": "v1", "bs": {"eid": "b1"}, "bs#c": 0.8},
                )],
                t + TimeDelta::hours(1),
            )
            .unwrap();
    }
}

// ------------------------------------------------------------------ root endpoints

#[tokio::test]
async fn health() {
    let h = harness();
    let r = h.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"detail": "It works!"}));
}

#[tokio::test]
async fn entities_in_readdir_order_with_dp3_attribute_shapes() {
    let h = harness();
    let r = h.get("/entities").await;
    assert_eq!(r.status, StatusCode::OK);
    let keys: Vec<String> = r.body.as_object().unwrap().keys().cloned().collect();
    let expected: Vec<String> = h.model.entities.keys().cloned().collect();
    assert_eq!(keys, expected);
    let listed: Vec<String> = std::fs::read_dir(config_dir().join("db_entities"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".yml")
                .map(str::to_owned)
        })
        .collect();
    // Gotcha 2: raw readdir order, not sorted (entity ids equal file names in this config).
    assert_eq!(keys, listed);
    let a = &r.body["A"];
    assert_eq!(a["id_data_type"], json!("int"));
    assert_eq!(
        a["attribs"]["data1"],
        json!({"id":"data1","name":"data1","description":"entity data","ttl":"PT0S",
               "data_type":"string","editable":false,"t":1,"type":"plain"})
    );
    assert_eq!(
        a["attribs"]["bs"]["history_params"]["pre_validity"],
        json!("PT12H")
    );
    assert_eq!(
        a["attribs"]["bs"]["history_params"]["max_age"],
        json!("P14D")
    );
    assert_eq!(a["attribs"]["bs"]["t"], json!(2));
    let ts = &r.body["test_entity_type"]["attribs"]["test_attr_timeseries"];
    assert_eq!(ts["t"], json!(4));
    assert_eq!(
        ts["timeseries_params"],
        json!({"max_age":"P7D","time_step":"PT10M"})
    );
    assert_eq!(ts["series"]["value"], json!({"data_type":"int"}));
    assert!(ts.get("data_type").is_none());
    assert_eq!(a["eid_estimate_count"], json!(0));
    h.seed();
    let r = h.get("/entities").await;
    assert_eq!(r.body["A"]["eid_estimate_count"], json!(1));
}

// ------------------------------------------------------------------ /datapoints

#[tokio::test]
async fn datapoints_are_grouped_into_tasks() {
    let h = harness();
    let body = json!([
        {"type": "A", "id": "12", "attr": "data1", "v": "x"},
        {"type": "A", "id": 7, "attr": "data2", "v": "y"},
        {"type": "A", "id": 12, "attr": "as", "v": {"eid": 3}, "t1": "2024-01-01T00:00:00Z", "src": "s"},
    ]);
    let r = h.post_json("/datapoints", &body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"detail": "OK"}));
    let tasks = h.tasks();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].eid, Eid::Int(12));
    assert_eq!(tasks[0].data_points.len(), 2);
    assert_eq!(tasks[1].eid, Eid::Int(7));
    // An empty list is valid and queues nothing.
    let r = h.post_json("/datapoints", "[]").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(h.tasks().is_empty());
}

#[tokio::test]
async fn datapoint_validation_errors() {
    let h = harness();
    let r = h
        .post_json(
            "/datapoints",
            r#"{"type":"A","id":1,"attr":"data1","v":"x"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["type"], json!("list_type"));
    assert_eq!(r.body["detail"][0]["loc"], json!(["body"]));

    let r = h
        .post_json(
            "/datapoints",
            r#"[{"type":"xyz","id":1,"attr":"data1","v":"x"}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body["detail"][0]["msg"],
        json!("Value error, Combination of type 'xyz' and attr 'data1' doesn't exist")
    );
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", 0]));

    let r = h
        .post_json(
            "/datapoints",
            r#"[{"type":"A","id":"abc","attr":"data1","v":"x"}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", 0, "eid"]));

    let r = h
        .post_json(
            "/datapoints",
            r#"[{"type":"test_entity_type","id":"x","attr":"test_attr_int","v":"xyz"}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["type"], json!("int_parsing"));
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", 0, "v"]));

    let r = h
        .post_json(
            "/datapoints",
            r#"[{"type":"A","id":1,"attr":"as","v":{"eid":2},"t1":"xyz"}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", 0, "t1"]));

    let r = h.post_json("/datapoints", "bodyisstring").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["type"], json!("json_invalid"));
    assert!(h.tasks().is_empty());
}

#[tokio::test]
async fn datapoint_content_types_never_415() {
    let h = harness();
    let body = r#"[{"type":"A","id":1,"attr":"data1","v":"x"}]"#;
    // text/plain: FastAPI validates the text itself -> list_type.
    let r = h
        .send(Method::POST, "/datapoints", Some(("text/plain", body)))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["type"], json!("list_type"));
    // No Content-Type: read as JSON.
    let r = h.send(Method::POST, "/datapoints", Some(("", body))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = h
        .send(
            Method::POST,
            "/datapoints",
            Some(("application/json; charset=utf-8", body)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .send(Method::POST, "/datapoints", Some(("", "bodyisstring")))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn overload_is_503_with_retry_after() {
    let h = harness();
    *h.submitter.overloaded.lock() = true;
    let r = h
        .post_json(
            "/datapoints",
            r#"[{"type":"A","id":1,"attr":"data1","v":"x"}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers[header::RETRY_AFTER], "2");
    assert!(r.body["detail"].is_string());
    let r = h.send(Method::DELETE, "/entity/A/1", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_full_queue_refuses_datapoints_before_parsing_them() {
    let h = harness();
    *h.submitter.full.lock() = true;
    // Invalid (unknown type) and valid bodies alike: 503, nothing validated or submitted.
    for body in [
        r#"[{"type":"nope","id":1,"attr":"data1","v":"x"}]"#,
        r#"[{"type":"A","id":1,"attr":"data1","v":"x"}]"#,
    ] {
        let r = h.post_json("/datapoints", body).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert_eq!(r.headers[header::RETRY_AFTER], "3");
    }
    assert!(h.submitter.tasks.lock().is_empty());
    *h.submitter.full.lock() = false;
    let r = h
        .post_json(
            "/datapoints",
            r#"[{"type":"A","id":1,"attr":"data1","v":"x"}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(h.submitter.tasks.lock().len(), 1);
}

#[tokio::test]
async fn datapoint_logs_are_written() {
    let h = harness_with(|s, dir| {
        s.good_log = Some(dir.join("good.log"));
        s.bad_log = Some(dir.join("bad.log"));
    });
    h.post_json(
        "/datapoints",
        r#"[{"type":"A","id":1,"attr":"data1","v":"x"}]"#,
    )
    .await;
    h.post_json(
        "/datapoints",
        r#"[{"type":"A","id":"abc","attr":"data1","v":"x"}]"#,
    )
    .await;
    let good = std::fs::read_to_string(h._dir.path().join("good.log")).unwrap();
    let bad = std::fs::read_to_string(h._dir.path().join("bad.log")).unwrap();
    assert_eq!(good.lines().count(), 1);
    assert!(good.contains("(unknown) | "), "{good}");
    assert!(
        good.ends_with(
            "| {'etype': 'A', 'eid': 1, 'attr': 'data1', 'src': None, 'v': 'x', 'c': 1.0, 't1': None, 't2': None}\n"
        ),
        "{good}"
    );
    assert_eq!(bad.lines().count(), 1);
    assert!(bad.contains("'loc': ('body', 0, 'eid')"), "{bad}");
}

#[test]
fn missing_log_directory_is_a_startup_error() {
    let config = dp3_model::config::load_config_dir(&config_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = ApiSettings::from_config(&config, "test");
    settings.good_log = Some(dir.path().join("missing/good.log"));
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.sqlite")).unwrap());
    let r = AppState::new(
        Arc::new(config.model),
        settings,
        store,
        Arc::new(RecordingSubmitter::default()),
        Arc::new(RecordingControl::default()),
    );
    assert!(r.is_err());
}

// ------------------------------------------------------------------ etype / eid / attr

#[tokio::test]
async fn unknown_entity_type_is_checked_first() {
    let h = harness();
    for uri in [
        "/entity/xyz/get",
        "/entity/xyz/count",
        "/entity/xyz/raw/get",
        "/entity/xyz/abc/master",
        "/entity/xyz/_/distinct/a",
        "/v2/entity/xyz/master",
        "/v2/entity/xyz/?eid=1",
    ] {
        let r = h.get(uri).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
        assert_eq!(
            r.body,
            json!({"detail":[{"loc":["path","etype"],"msg":"Entity type 'xyz' doesn't exist","type":"value_error"}]}),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn bad_eids_per_type() {
    let h = harness();
    for (uri, loc0) in [
        ("/entity/A/abc", "path"),
        ("/entity/A/1.5/master", "path"),
        ("/entity/del_ttl_ip/010.1.1.1", "path"),
        ("/entity/del_weak_mac/aabbccddeeff", "path"),
        ("/v2/entity/A/master?eid=abc", "query"),
        ("/entity/A/raw/get?eid=abc", "query"),
    ] {
        let r = h.get(uri).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
        let item = &r.body["detail"][0];
        assert_eq!(item["loc"], json!([loc0, "eid"]), "{uri}");
        assert_eq!(item["type"], json!("value_error"));
        assert!(item.get("input").is_none());
    }
    let r = h.get("/entity/del_ttl_ip/010.1.1.1").await;
    assert_eq!(
        r.body["detail"][0]["msg"],
        json!("Input is not a valid IPv4 address")
    );
    let r = h.get("/entity/del_weak_mac/aabbccddeeff").await;
    assert!(
        r.body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .starts_with("Value error, "),
        "{}",
        r.text
    );
    // Normalised forms are accepted.
    let r = h.get("/entity/del_weak_mac/AA-BB-CC-DD-EE-FF/master").await;
    assert_eq!(r.status, StatusCode::OK);
    // Lax int parsing.
    let r = h.get("/entity/A/0012/master").await;
    assert_eq!(r.status, StatusCode::OK);
    // v2 without eid: FastAPI's `missing`.
    let r = h.get("/v2/entity/A/master").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body,
        json!({"detail":[{"type":"missing","loc":["query","eid"],"msg":"Field required","input":null}]})
    );
}

#[tokio::test]
async fn unknown_attributes() {
    let h = harness();
    let r = h.get("/entity/A/1/get/xyz").await;
    assert_eq!(
        r.body,
        json!({"detail":[{"loc":["path","attr"],"msg":"Attribute 'xyz' doesn't exist","type":"value_error"}]})
    );
    let r = h.get("/v2/entity/A/attr?eid=1&attr=xyz").await;
    assert_eq!(r.body["detail"][0]["loc"], json!(["query", "attr"]));
    let r = h.get("/v2/entity/A/attr?eid=1").await;
    assert_eq!(r.body["detail"][0]["type"], json!("missing"));
    let r = h.get("/entity/A/raw/get?attr=xyz").await;
    assert_eq!(r.body["detail"][0]["loc"], json!(["query", "attr"]));
    let r = h
        .send(
            Method::POST,
            "/entity/A/1/set/xyz",
            Some(("", r#"{"value":"x"}"#)),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["loc"], json!(["path", "attr"]));
}

// ------------------------------------------------------------------ records

#[tokio::test]
async fn unknown_entities_read_as_empty() {
    let h = harness();
    for uri in [
        "/entity/A/999",
        "/v2/entity/A/?eid=999",
        "/v2/entity/A?eid=999",
    ] {
        let r = h.get(uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(
            r.body,
            json!({"empty": true, "master_record": {}, "snapshots": []})
        );
    }
    assert_eq!(h.get("/entity/A/999/master").await.body, json!({}));
    assert_eq!(h.get("/entity/A/999/snapshots").await.body, json!([]));
    let r = h.get("/entity/A/999/get/data1").await;
    assert_eq!(
        r.body,
        json!({"attr_type": 1, "current_value": null, "history": []})
    );
}

#[tokio::test]
async fn master_records_and_attributes_render_like_dp3() {
    let h = harness();
    h.seed();
    let r = h.get("/entity/A/1/master").await;
    assert_eq!(r.status, StatusCode::OK);
    let m = r.body.as_object().unwrap();
    for hidden in ["_id", "#hash", "#min_t2s", "#revision"] {
        assert!(!m.contains_key(hidden), "{hidden} shown: {}", r.text);
    }
    assert!(m.contains_key("#time_created"));
    assert_eq!(
        r.body["data1"],
        json!({"v": "v1", "ts_last_update": "2026-01-01T12:00:00Z"})
    );
    assert_eq!(
        r.body["bs"],
        json!([{"t1":"2026-01-01T12:00:00Z","t2":"2026-01-01T12:10:00Z","v":{"eid":"b1"},"c":0.8}])
    );
    let r = h.get("/entity/test_entity_type/e1/master").await;
    assert_eq!(
        r.body["test_attr_timeseries"],
        json!([
            {"t1":"2026-01-01T12:00:00Z","t2":"2026-01-01T12:10:00Z","v":{"value":1}},
            {"t1":"2026-01-01T12:10:00Z","t2":"2026-01-01T12:20:00Z","v":{"value":2}},
        ])
    );
    // Observations: current value from the latest snapshot, history filtered by overlap.
    let r = h.get("/entity/A/1/get/bs").await;
    assert_eq!(r.body["attr_type"], json!(2));
    assert_eq!(r.body["current_value"], json!({"eid": "b1"}));
    assert_eq!(r.body["history"].as_array().unwrap().len(), 1);
    let r = h
        .get("/entity/A/1/get/bs?date_from=2026-01-01T12:30:00Z")
        .await;
    assert_eq!(r.body["history"], json!([]));
    let r = h.get("/entity/A/1/get/data1").await;
    assert_eq!(
        r.body,
        json!({"attr_type": 1, "current_value": "v1", "history": []})
    );
    let r = h
        .get("/entity/test_entity_type/e1/get/test_attr_timeseries")
        .await;
    assert_eq!(r.body["attr_type"], json!(4));
    assert_eq!(r.body["current_value"], json!(null));
    assert_eq!(r.body["history"].as_array().unwrap().len(), 2);
    // Snapshots and the combined view.
    let r = h.get("/entity/A/1/snapshots").await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(r.body[0]["data1"], json!("v1"));
    assert_eq!(r.body[0]["_time_created"], json!("2026-01-01T13:00:00Z"));
    let r = h.get("/entity/A/1").await;
    assert_eq!(r.body["empty"], json!(false));
    // Bad date.
    let r = h.get("/entity/A/1?date_from=xyz").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["loc"], json!(["query", "date_from"]));
}

#[tokio::test]
async fn v1_and_v2_answer_the_same() {
    let h = harness();
    h.seed();
    for (v1, v2) in [
        ("/entity/A/1", "/v2/entity/A/?eid=1"),
        ("/entity/A/1", "/v2/entity/A?eid=1"),
        ("/entity/A/1/master", "/v2/entity/A/master?eid=1"),
        ("/entity/A/1/snapshots", "/v2/entity/A/snapshots?eid=1"),
        ("/entity/A/1/get/bs", "/v2/entity/A/attr?eid=1&attr=bs"),
        ("/entity/A/get", "/v2/entity/A/get"),
        ("/entity/A/count", "/v2/entity/A/count"),
        ("/entity/A/raw/get", "/v2/entity/A/raw/get"),
        (
            "/entity/A/_/distinct/data1",
            "/v2/entity/A/_/distinct/data1",
        ),
    ] {
        let a = h.get(v1).await;
        let b = h.get(v2).await;
        assert_eq!(a.status, StatusCode::OK, "{v1}: {}", a.text);
        assert_eq!(a.body, b.body, "{v1} vs {v2}");
    }
}

// ------------------------------------------------------------------ list / count / distinct

#[tokio::test]
async fn list_and_count_latest_snapshots() {
    let h = harness();
    h.seed();
    let r = h.get("/entity/A/get").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["count"], json!(1));
    assert_eq!(r.body["time_created"], json!("2026-01-01T13:00:00Z"));
    assert_eq!(
        r.body["data"][0],
        json!({"eid": 1, "data1": "v1", "bs": {"eid": "b1"}, "bs#c": 0.8})
    );
    let r = h.get("/entity/A/count").await;
    assert_eq!(r.body, json!({"total_count": 1}));
    let r = h
        .get(r#"/entity/A/count?generic_filter={"last.eid":2}"#)
        .await;
    assert_eq!(r.body, json!({"total_count": 0}));
    let r = h
        .get(r#"/entity/A/get?fulltext_filters={"data1":"V"}&sort=data1:-1"#)
        .await;
    assert_eq!(r.body["count"], json!(1));
    let r = h.get("/entity/A/get?limit=0&skip=5").await;
    assert_eq!(
        r.body,
        json!({"time_created": null, "count": 0, "data": []})
    );
}

#[tokio::test]
async fn filter_and_sort_errors() {
    let h = harness();
    let r = h.get("/entity/A/get?generic_filter=xyz").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["type"], json!("json_invalid"));
    assert_eq!(
        r.body["detail"][0]["loc"],
        json!(["query", "generic_filter"])
    );
    let r = h.get("/entity/A/get?fulltext_filters=").await;
    assert_eq!(
        r.body["detail"][0]["loc"],
        json!(["query", "fulltext_filters"])
    );
    let r = h.get("/entity/A/get?skip=-1&limit=x").await;
    assert_eq!(r.body["detail"].as_array().unwrap().len(), 2);
    for (uri, detail) in [
        (
            "/entity/A/get?fulltext_filters=[1]",
            "Fulltext filter is invalid",
        ),
        (
            "/entity/A/count?generic_filter=5",
            "Generic filter is invalid",
        ),
        (
            r#"/entity/A/get?fulltext_filters={"data1":5}"#,
            "Filter '5' is not string",
        ),
        (
            r#"/entity/A/get?fulltext_filters={"xyz":"a"}"#,
            "Attribute 'xyz' in fulltext filter doesn't exist",
        ),
    ] {
        let r = h.get(uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(r.body, json!({"detail": detail}), "{uri}");
    }
    let r = h
        .get(r#"/entity/A/get?generic_filter={"last.eid":"$$IPv4{xyz}"}"#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("Invalid generic filter: ")
    );
    for (sort, msg) in [
        (
            "1x",
            "Sort specification at position 0 has invalid format '1x'. Expected format 'attribute' or 'attribute:direction' where direction is 1 or -1",
        ),
        ("xyz", "Attribute 'xyz' at position 0 doesn't exist"),
    ] {
        let r = h.get(&format!("/entity/A/get?sort=eid&sort={sort}")).await;
        let msg = msg.replace("position 0", "position 1");
        assert_eq!(
            r.body,
            json!({"detail":[{"loc":["query","sort"],"msg":msg,"type":"value_error"}]})
        );
    }
    let r = h
        .get("/entity/test_entity_type/get?sort=test_attr_timeseries")
        .await;
    assert!(
        r.body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("only plain and observations")
    );
    let r = h
        .get("/entity/test_entity_type/get?sort=test_attr_multi_value")
        .await;
    assert!(
        r.body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("multi_value")
    );
    let r = h
        .get("/entity/test_entity_type/get?sort=test_attr_json")
        .await;
    assert_eq!(
        r.body["detail"][0]["msg"],
        json!(
            "Cannot sort by attribute 'test_attr_json' at position 0: data type 'json' is not supported for sorting"
        )
    );
}

#[tokio::test]
async fn distinct_values_and_errors() {
    let h = harness();
    h.seed();
    let r = h.get("/entity/A/_/distinct/data1").await;
    assert_eq!(r.body, json!({"v1": 1}));
    for (uri, detail) in [
        ("/entity/A/_/distinct/xyz", "Attribute 'xyz' does not exist"),
        (
            "/entity/test_entity_type/_/distinct/test_attr_timeseries",
            "Attribute 'test_attr_timeseries' isn't plain or observations",
        ),
        (
            "/entity/test_entity_type/_/distinct/test_attr_json",
            "Data type 'json' of attribute 'test_attr_json' is not processable",
        ),
    ] {
        let r = h.get(uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(r.body, json!({"detail": detail}));
    }
}

// ------------------------------------------------------------------ raw log

#[tokio::test]
async fn raw_datapoints() {
    let h = harness();
    let dp = dp3_model::DataPoint {
        etype: "A".into(),
        eid: Eid::Int(1),
        attr: "data1".into(),
        src: None,
        v: Bson::String("v1b".into()),
        c: 1.0,
        t1: None,
        t2: None,
    };
    h.store
        .apply(&WriteBatch {
            raw: vec![dp],
            ..Default::default()
        })
        .unwrap();
    let r = h.get("/entity/A/raw/get?eid=1").await;
    assert_eq!(
        r.body,
        json!({"count": 1, "data": [{"attr":"data1","src":null,"v":"v1b","c":1.0,"t1":null,"t2":null,"type":"A","id":1}]})
    );
    let keys: Vec<&String> = r.body["data"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys.last().map(|k| k.as_str()), Some("id"));
    let r = h.get("/entity/A/raw/get?eid=2").await;
    assert_eq!(r.body, json!({"count": 0, "data": []}));
}

// ------------------------------------------------------------------ set / ttl / delete

#[tokio::test]
async fn set_attribute_without_content_type() {
    let h = harness();
    let r = h
        .send(
            Method::POST,
            "/entity/A/5/set/data1",
            Some(("", r#"{"value": "new"}"#)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"detail": "OK"}));
    let tasks = h.tasks();
    assert_eq!(tasks.len(), 1);
    let dp = &tasks[0].data_points[0];
    assert_eq!(dp.eid, Eid::Int(5));
    assert_eq!(dp.v, Bson::String("new".into()));
    assert_eq!(dp.src.as_deref(), Some("unknown via API"));
    assert_eq!(dp.c, 1.0);
    // Observations get t1 = t2 = now.
    let r = h
        .send(
            Method::POST,
            "/v2/entity/A/attr?eid=5&attr=bs",
            Some(("text/plain", r#"{"value": {"eid": "b1"}}"#)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let tasks = h.tasks();
    let dp = &tasks[0].data_points[0];
    assert!(dp.t1.is_some() && dp.t1 == dp.t2);
}

#[tokio::test]
async fn set_attribute_errors() {
    let h = harness();
    let r = h
        .send(Method::POST, "/entity/A/5/set/data1", Some(("", "")))
        .await;
    assert_eq!(
        r.body,
        json!({"detail":[{"loc":["body"],"msg":"Expecting value: line 1 column 1 (char 0)","type":"value_error"}]})
    );
    let r = h
        .send(Method::POST, "/entity/A/5/set/data1", Some(("", "[1]")))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["loc"], json!(["body"]));
    assert!(
        r.body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .starts_with("1 validation error")
    );
    let r = h
        .send(Method::POST, "/entity/A/5/set/data1", Some(("", "{}")))
        .await;
    assert_eq!(
        r.body,
        json!({"detail":[{"loc":["body","value"],"msg":"Input should be a valid string","type":"value_error"}]})
    );
    let r = h
        .send(
            Method::POST,
            "/entity/test_entity_type/x/set/test_attr_int",
            Some(("", r#"{"value":"xyz"}"#)),
        )
        .await;
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", "value"]));
    assert!(h.tasks().is_empty());
}

#[tokio::test]
async fn ttl_tokens() {
    let h = harness();
    let r = h
        .post_json("/entity/A/5/ttl", r#"{"user": "2024-10-01T12:03:00Z"}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r2 = h
        .post_json(
            "/v2/entity/A/ttl?eid=5",
            r#"{"user": "2024-10-01T12:03:00Z"}"#,
        )
        .await;
    assert_eq!(r2.status, StatusCode::OK);
    let tasks = h.tasks();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0], tasks[1]);
    let tokens = tasks[0].ttl_tokens.as_ref().unwrap();
    assert_eq!(
        tokens["user"],
        Utc.with_ymd_and_hms(2024, 10, 1, 12, 3, 0).unwrap()
    );
    let r = h.post_json("/entity/A/5/ttl", r#"{"user": "xyz"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", "user"]));
    let r = h.post_json("/entity/A/5/ttl", "[1]").await;
    assert_eq!(r.body["detail"][0]["type"], json!("dict_type"));
    let r = h.post_json("/entity/A/5/ttl", "{").await;
    assert_eq!(r.body["detail"][0]["type"], json!("json_invalid"));
    // Empty object: a no-op (DP3 answers 500 here).
    let r = h.post_json("/entity/A/5/ttl", "{}").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(h.tasks().is_empty());
}

#[tokio::test]
async fn deletes_queue_delete_tasks() {
    let h = harness();
    for (m, uri) in [
        (Method::DELETE, "/entity/A/5"),
        (Method::DELETE, "/v2/entity/A/?eid=5"),
        (Method::DELETE, "/v2/entity/A?eid=5"),
    ] {
        let r = h.send(m, uri, None).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(r.body, json!({"detail": "OK"}));
    }
    let tasks = h.tasks();
    assert_eq!(tasks.len(), 3);
    assert!(
        tasks
            .iter()
            .all(|t| t.delete && t.eid == Eid::Int(5) && t.data_points.is_empty())
    );
}

// ------------------------------------------------------------------ control

#[tokio::test]
async fn control_actions() {
    let h = harness();
    let r = h.get("/control/make_snapshots").await;
    assert_eq!(r.body, json!({"detail": "Action sent."}));
    let r = h.get("/control/refresh_on_entity_creation?etype=A").await;
    assert_eq!(r.body, json!({"detail": "Action sent."}));
    let r = h
        .get("/control/refresh_module_config?module=test_module")
        .await;
    assert_eq!(r.body, json!({"detail": "Action sent."}));
    assert_eq!(
        *h.control.actions.lock(),
        vec![
            ControlAction::MakeSnapshots,
            ControlAction::RefreshOnEntityCreation { etype: "A".into() },
            ControlAction::RefreshModuleConfig {
                module: "test_module".into()
            },
        ]
    );
    let r = h.get("/control/explode").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["type"], json!("enum"));
    assert_eq!(r.body["detail"][0]["loc"], json!(["path", "action"]));
    let r = h.get("/control/refresh_module_config?module=nope").await;
    assert_eq!(
        r.body["detail"][0]["msg"],
        json!("Input should be 'test_module'")
    );
    let r = h.get("/control/refresh_on_entity_creation").await;
    assert_eq!(r.body["detail"][0]["type"], json!("missing"));
    let r = h.send(Method::POST, "/control/make_snapshots", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

// ------------------------------------------------------------------ routing

#[tokio::test]
async fn routing_errors_and_redirects() {
    let h = harness();
    let r = h.get("/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, json!({"detail": "Not Found"}));
    let r = h.send(Method::POST, "/entities", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body, json!({"detail": "Method Not Allowed"}));
    assert_eq!(r.headers[header::ALLOW], "GET");
    let r = h.send(Method::HEAD, "/", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = h.send(Method::PUT, "/entity/A/1", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = h.get("/entities/?x=1").await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        r.headers[header::LOCATION],
        "http://testserver/entities?x=1"
    );
    let r = h.get("/entity/A/1/").await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers[header::LOCATION], "http://testserver/entity/A/1");
    // `+` stays `+` in paths.
    let r = h.get("/entity/test_entity_type/a+b/master").await;
    assert_eq!(r.status, StatusCode::OK);
    // An unknown etype with a weird eid still reports the etype first.
    let r = h.get("/entity/xyz/%FF").await;
    assert_ne!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn cors_preflight() {
    let h = harness();
    let req = Request::builder()
        .method(Method::OPTIONS)
        .uri("/datapoints")
        .header(header::ORIGIN, "http://example.test")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let bytes = axum::body::to_bytes(resp.into_body(), 100).await.unwrap();
    assert_eq!(&bytes[..], b"OK");
}

#[tokio::test]
async fn request_limits() {
    let h = harness_with(|s, _| {
        s.body_limit = 1000;
        s.max_datapoints_per_request = Some(2);
    });
    let big = format!(
        r#"[{{"type":"A","id":1,"attr":"data1","v":"{}"}}]"#,
        "x".repeat(2000)
    );
    let r = h.post_json("/datapoints", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body["detail"].is_string(), "{}", r.text);
    let three = r#"[{"type":"A","id":1,"attr":"data1","v":"a"},{"type":"A","id":1,"attr":"data1","v":"b"},{"type":"A","id":1,"attr":"data1","v":"c"}]"#;
    let r = h.post_json("/datapoints", three).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.tasks().is_empty());
}

#[tokio::test]
async fn forwarded_for_is_only_trusted_from_loopback() {
    let h = harness();
    // No peer address (in-process): the header is ignored.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/entity/A/5/set/data1")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Body::from(r#"{"value":"x"}"#))
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        h.tasks()[0].data_points[0].src.as_deref(),
        Some("unknown via API")
    );
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/entity/A/5/set/data1")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Body::from(r#"{"value":"x"}"#))
        .unwrap();
    let peer: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(
        h.tasks()[0].data_points[0].src.as_deref(),
        Some("203.0.113.9 via API")
    );
}

// ------------------------------------------------------------------ telemetry & docs

#[tokio::test]
async fn telemetry_endpoints() {
    let h = harness();
    let now = Utc::now();
    h.store
        .put_meta(
            "telemetry/src/b",
            &doc! {"src_t": time(now - TimeDelta::seconds(150))},
        )
        .unwrap();
    h.store
        .put_meta(
            "telemetry/src/a",
            &doc! {"src_t": time(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())},
        )
        .unwrap();
    let r = h.get("/telemetry/sources_validity").await;
    let keys: Vec<&String> = r.body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(r.body["a"], json!("2026-01-01T00:00:00Z"));
    let r = h.get("/telemetry/sources_age?unit=seconds").await;
    let age = r.body["b"].as_i64().unwrap();
    assert!((150..160).contains(&age), "{age}");
    let r = h.get("/telemetry/sources_age").await;
    assert_eq!(r.body["b"], json!(2));
    let r = h.get("/telemetry/sources_age?unit=hours").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["type"], json!("literal_error"));

    h.seed();
    let r = h.get("/telemetry/entities_per_attr").await;
    assert_eq!(r.body["A"]["data1"], json!(1));
    assert_eq!(r.body["A"]["bs"], json!(1));
    assert_eq!(r.body["A"]["data2"], json!(0));
    assert_eq!(r.body["test_entity_type"]["test_attr_timeseries"], json!(1));

    assert_eq!(
        h.get("/telemetry/attribute_bson_sizes").await.body,
        json!({})
    );
    let r = h.get("/telemetry/snapshot_summary").await;
    assert_eq!(
        r.body,
        json!({"latest_age": null, "finished_age": null, "entities": null, "total_s": null})
    );
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    h.store
        .insert_run_metadata(&doc! {
            "_id": "SnapShooter2026-01-01T00:00:00.000000Zw0", "#module": "SnapShooter",
            "#time_created": time(t0), "#last_update": time(t0 + TimeDelta::seconds(30)),
            "entities": 5, "components": 0, "workers_finished": 1, "linked_finished": true,
        })
        .unwrap();
    // A newer run still in progress: latest, but not finished.
    h.store
        .insert_run_metadata(&doc! {
            "_id": "SnapShooter2026-01-02T00:00:00.000000Zw0", "#module": "SnapShooter",
            "#time_created": time(t0 + TimeDelta::days(1)), "#last_update": time(t0 + TimeDelta::days(1)),
            "entities": 0, "components": 0, "workers_finished": 0, "linked_finished": false,
        })
        .unwrap();
    let r = h.get("/telemetry/snapshot_summary").await;
    let latest = r.body["latest_age"].as_f64().unwrap();
    let finished = r.body["finished_age"].as_f64().unwrap();
    assert!((finished - latest - 86400.0).abs() < 5.0, "{}", r.text);
    assert_eq!(r.body["entities"], json!(5));
    assert_eq!(r.body["total_s"], json!(30.0));
    assert!(r.body["latest_age"].as_f64().unwrap() > 0.0);
    let r = h.get("/telemetry/metadata?module=SnapShooter").await;
    assert_eq!(r.body.as_array().unwrap().len(), 2);
    assert_eq!(
        r.body[0]["_id"],
        json!("SnapShooter2026-01-02T00:00:00.000000Zw0")
    );
    assert_eq!(r.body[0]["#module"], json!("SnapShooter"));
    let r = h.get("/telemetry/metadata?sort=oldest&limit=1").await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(
        r.body[0]["_id"],
        json!("SnapShooter2026-01-01T00:00:00.000000Zw0")
    );
    let r = h.get("/telemetry/metadata?module=Nope").await;
    assert_eq!(r.body, json!([]));
    let r = h.get("/telemetry/metadata?sort=sideways").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    let r = h.get("/telemetry/rabbitmq/queues").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("RabbitMQ telemetry unavailable: ")
    );
}

#[tokio::test]
async fn openapi_and_docs() {
    let h = harness();
    let r = h.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let ops: usize = r.body["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(ops, 35);
    let r = h.get("/docs/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("swagger"), "{}", r.text);
    // The vendored UI loads our document and its assets from this server.
    let r = h.get("/docs/swagger-initializer.js").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("/openapi.json"), "{}", r.text);
    let r = h.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.len() > 100_000);
}

#[tokio::test]
async fn bad_values_per_data_type() {
    let h = harness();
    let t = "\"t1\":\"2026-01-01T00:00:00Z\"";
    for (attr, v, extra, loc) in [
        ("test_attr_tag", r#""xyz""#, "", json!(["body", 0, "v"])),
        ("test_attr_int", "1.5", "", json!(["body", 0, "v"])),
        ("test_attr_float", r#""xyz""#, "", json!(["body", 0, "v"])),
        ("test_attr_string", "5", "", json!(["body", 0, "v"])),
        (
            "test_attr_ipv4",
            r#""1.2.3.4/32""#,
            "",
            json!(["body", 0, "v"]),
        ),
        ("test_attr_ipv6", r#""xyz""#, "", json!(["body", 0, "v"])),
        (
            "test_attr_mac",
            r#""aabbccddeeff""#,
            "",
            json!(["body", 0, "v"]),
        ),
        ("test_attr_time", r#""xyz""#, "", json!(["body", 0, "v"])),
        (
            "test_attr_category",
            r#""cat3""#,
            "",
            json!(["body", 0, "v"]),
        ),
        (
            "test_attr_array",
            r#"["x"]"#,
            "",
            json!(["body", 0, "v", 0]),
        ),
        (
            "test_attr_dict",
            r#"{"key2":"a"}"#,
            "",
            json!(["body", 0, "v", "key1"]),
        ),
        (
            "test_attr_link",
            r#"{"id":"t"}"#,
            "",
            json!(["body", 0, "v", "eid"]),
        ),
        ("test_attr_history", "5", "", json!(["body", 0, "t1"])),
        (
            "test_attr_history",
            "5",
            &format!(",{t},\"c\":2"),
            json!(["body", 0, "c"]),
        ),
        // A regular timeseries with a wrong t2. (Without t2, the model's validator computes
        // it where DP3 rejects the datapoint: see dp3_model::validate::datapoint.)
        (
            "test_attr_timeseries",
            r#"{"value":[1,2]}"#,
            &format!(r#",{t},"t2":"2026-01-01T00:10:00Z""#),
            json!(["body", 0]),
        ),
    ] {
        let body =
            format!(r#"[{{"type":"test_entity_type","id":"e","attr":"{attr}","v":{v}{extra}}}]"#);
        let r = h.post_json("/datapoints", &body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.body["detail"][0]["loc"], loc, "{body}: {}", r.text);
        assert!(
            r.body["detail"][0]["input"].is_null() || r.body["detail"][0].get("input").is_some()
        );
    }
    // The exact t2 makes the timeseries valid.
    let ok = format!(
        r#"[{{"type":"test_entity_type","id":"e","attr":"test_attr_timeseries","v":{{"value":[1,2]}},{t},"t2":"2026-01-01T00:20:00Z"}}]"#
    );
    let r = h.post_json("/datapoints", &ok).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(h.tasks().len(), 1);
}

#[tokio::test]
async fn over_a_real_socket() {
    let h = harness();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = h.app.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .head(format!("{base}/entities"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // `set` without a Content-Type; the peer address becomes the source.
    let r = client
        .post(format!("{base}/entity/A/7/set/data1"))
        .body(r#"{"value": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        h.tasks()[0].data_points[0].src.as_deref(),
        Some("127.0.0.1 via API")
    );
    let r = client
        .get(format!("{base}/entity/A/1/"))
        .send()
        .await
        .unwrap();
    // reqwest follows the 307 to the slash-less form.
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.url().path(), "/entity/A/1");
    server.abort();
}
