//! Snapshots end to end, ported from DP3's own integration tests (tests/test_api/
//! test_snapshots.py) with the `test_module` example plugin loaded into the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Dp3, dp3_test_config};
use serde_json::{Value, json};

/// DP3's test configuration with `test_module` enabled.
fn config_with_test_module(dir: &Path) -> PathBuf {
    let cfg = dp3_test_config(dir);
    std::fs::copy(
        common::example_library("test_module"),
        cfg.join("modules").join(format!(
            "{}test_module{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        )),
    )
    .unwrap();
    let pc = cfg.join("processing_core.yml");
    let text = std::fs::read_to_string(&pc)
        .unwrap()
        .replace("enabled_modules: []", "enabled_modules: [test_module]");
    std::fs::write(&pc, text).unwrap();
    cfg
}

fn now() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn link(etype: &str, id: Value, attr: &str, target: Value) -> Value {
    let t = now();
    json!({"type": etype, "id": id, "attr": attr, "v": {"eid": target}, "t1": t, "t2": t})
}

fn plain(etype: &str, id: Value, attr: &str, v: &str) -> Value {
    json!({"type": etype, "id": id, "attr": attr, "v": v})
}

/// The latest snapshot of one entity from the list endpoint.
fn latest(dp3: &Dp3, etype: &str, eid: &Value) -> Option<Value> {
    let (_, body) = dp3.get(&format!("/entity/{etype}/get?limit=0"));
    body["data"]
        .as_array()?
        .iter()
        .find(|s| &s["eid"] == eid)
        .cloned()
}

fn post(dp3: &Dp3, dps: Value) {
    let (status, body) = dp3.post_json("/datapoints", &dps);
    assert_eq!(status, 200, "{body}");
}

/// Wait until everything accepted is applied (the metrics say so).
fn wait_applied(dp3: &Dp3) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = common::client()
            .get(dp3.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let n = |name: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        };
        if n("dp3_queue_tasks_in_flight") == Some(0.0)
            && n("dp3_datapoints_accepted_total").is_some()
        {
            return;
        }
        assert!(Instant::now() < deadline, "pipeline did not become idle");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a snapshot and return when it is visible (and how long after the request).
fn snapshot(dp3: &Dp3, probe: (&str, Value)) -> Duration {
    wait_applied(dp3);
    let before = latest(dp3, probe.0, &probe.1).and_then(|s| s.get("_time_created").cloned());
    let started = Instant::now();
    let (status, body) = dp3.get("/control/make_snapshots");
    assert_eq!(status, 200, "{body}");
    let (_, snaps) = dp3.get(&format!("/entity/{}/{}/snapshots", probe.0, probe.1));
    let count_before = snaps.as_array().map_or(0, Vec::len);
    loop {
        let (_, snaps) = dp3.get(&format!("/entity/{}/{}/snapshots", probe.0, probe.1));
        if snaps.as_array().map_or(0, Vec::len) > count_before
            || (count_before > 0 && before.is_none())
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "snapshot not visible:\n{}",
            dp3.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn correlation_hooks_across_links_in_dependency_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_test_module(dir.path());
    let dp3 = Dp3::start(&cfg, &dir.path().join("data"));

    // test_linked_entities_loaded: A1 <-> B b1, each copies the other's attribute.
    // test_weak_component_detection: B b2 -> A2 only.
    // test_hook_dependency_value_forwarding: C c1 <-> D d1.
    // test_master_record_hook: A3.data3 = "master_..." -> data4.
    post(
        &dp3,
        json!([
            plain("A", json!(1), "data2", "a1-two"),
            plain("B", json!("b1"), "data1", "b1-one"),
            link("A", json!(1), "bs", json!("b1")),
            link("B", json!("b1"), "as", json!(1)),
            plain("A", json!(2), "data2", "a2-two"),
            link("B", json!("b2"), "as", json!(2)),
            plain("C", json!("c1"), "data1", "c1-stored"),
            plain("D", json!("d1"), "data2", "d1-stored"),
            link("C", json!("c1"), "ds", json!("d1")),
            link("D", json!("d1"), "cs", json!("c1")),
            plain("A", json!(3), "data3", "master_abc")
        ]),
    );
    let visible_after = snapshot(&dp3, ("A", json!(1)));

    let a1 = latest(&dp3, "A", &json!(1)).expect("A1 snapshot");
    assert_eq!(
        a1["data1"],
        json!("b1-one"),
        "A copies B.data1 across bs: {a1}"
    );
    assert_eq!(
        a1["bs"],
        json!({"eid": "b1"}),
        "record keys are not stored: {a1}"
    );
    let b1 = latest(&dp3, "B", &json!("b1")).expect("B b1 snapshot");
    assert_eq!(b1["data2"], json!("a1-two"), "{b1}");

    let b2 = latest(&dp3, "B", &json!("b2")).expect("B b2 snapshot");
    assert_eq!(
        b2["data2"],
        json!("a2-two"),
        "one-way link still forms a component: {b2}"
    );

    for (etype, eid) in [("C", "c1"), ("D", "d1")] {
        let s = latest(&dp3, etype, &json!(eid)).unwrap();
        assert_eq!(s["data1"], json!("modifd"), "{etype}: {s}");
        assert_eq!(s["data2"], json!("modifc"), "{etype}: {s}");
    }

    let a3 = latest(&dp3, "A", &json!(3)).unwrap();
    assert_eq!(a3["data4"], json!("master_abc_from_master"), "{a3}");

    // The entity endpoint serves the same snapshot with the master record.
    let (status, entity) = dp3.get("/entity/A/1");
    assert_eq!(status, 200);
    assert_eq!(entity["empty"], json!(false));
    assert_eq!(
        entity["snapshots"]
            .as_array()
            .and_then(|s| s.last())
            .map(|s| &s["data1"]),
        Some(&json!("b1-one"))
    );
    assert!(
        visible_after < Duration::from_secs(2),
        "snapshot visible {visible_after:?} after the request"
    );

    // /metrics shows hook telemetry, queue depth, accepted/rejected datapoints, snapshot
    // run durations and entities per type.
    let (status, _) = dp3.post_json(
        "/datapoints",
        &json!([{"type": "A", "id": "not-an-int", "attr": "data1", "v": "x"}]),
    );
    assert_eq!(status, 422);
    let text = common::client()
        .get(dp3.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(value("dp3_datapoints_accepted_total") >= 11.0, "{text}");
    assert_eq!(value("dp3_datapoints_rejected_total"), 1.0, "{text}");
    assert!(text.contains("dp3_queue_tasks_in_flight"), "{text}");
    assert!(value("dp3_snapshot_runs_total") >= 1.0, "{text}");
    assert!(value("dp3_snapshot_run_seconds_count") >= 1.0, "{text}");
    assert!(value("dp3_entities{etype=\"A\"}") >= 3.0, "{text}");
    let correlation_calls =
        value("dp3_hook_executions_total{family=\"snapshot_correlation\",module=\"test_module\"");
    assert!(correlation_calls >= 7.0, "per-hook counts: {text}");
    assert!(text.contains("dp3_hook_duration_ns_total"), "{text}");
}
