//! Black-box ingestion tests: the real `dp3 run` binary, driven over HTTP.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use common::{Dp3, client, dp3_test_config};
use serde_json::{Value, json};

fn history_t1s(body: &Value, attr: &str) -> Vec<String> {
    body.get(attr)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("t1").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn datapoints_are_applied_to_master_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    let dp3 = Dp3::start(&cfg, &dir.path().join("data"));
    let (status, body) = dp3.post_json(
        "/datapoints",
        &json!([
            {"type": "test_entity_type", "id": "e1", "attr": "test_attr_int", "v": 5, "src": "t"},
            {"type": "test_entity_type", "id": "e1", "attr": "test_attr_history", "v": 7,
             "t1": "2025-01-01T00:00:00Z", "t2": "2025-01-01T00:10:00Z", "c": 0.5},
            {"type": "A", "id": 12, "attr": "data1", "v": "hello"}
        ]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"detail": "OK"}));
    let master = dp3.wait_for(
        "/entity/test_entity_type/e1/master",
        Duration::from_secs(10),
        |b| b.get("test_attr_history").is_some() && b.get("test_attr_int").is_some(),
    );
    assert_eq!(master["test_attr_int"]["v"], json!(5));
    assert_eq!(
        master["test_attr_history"],
        json!([{"t1": "2025-01-01T00:00:00Z", "t2": "2025-01-01T00:10:00Z", "v": 7, "c": 0.5}])
    );
    assert!(master.get("#time_created").is_some(), "{master}");
    let a = dp3.wait_for("/entity/A/12/master", Duration::from_secs(10), |b| {
        b.get("data1").is_some()
    });
    assert_eq!(a["data1"]["v"], json!("hello"));

    // Invalid input is refused as a whole and names the problem.
    let (status, body) = dp3.post_json(
        "/datapoints",
        &json!([{"type": "A", "id": "x", "attr": "data1", "v": "ok"}]),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", 0, "eid"]));
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    let data = dir.path().join("data");
    let mut dp3 = Dp3::start(&cfg, &data);
    let dps: Vec<Value> = (0..500)
        .map(|i| {
            json!({"type": "test_entity_type", "id": format!("e{}", i % 50),
                   "attr": "test_attr_history", "v": i,
                   "t1": (Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
                          + TimeDelta::seconds(i)).to_rfc3339()})
        })
        .collect();
    let (status, _) = dp3.post_json("/datapoints", &Value::Array(dps));
    assert_eq!(status, 200);
    let exit = dp3.terminate();
    assert!(exit.success(), "exit status {exit}:\n{}", dp3.log_text());
    drop(dp3);

    let dp3 = Dp3::start(&cfg, &data);
    let total: usize = (0..50)
        .map(|e| {
            let (_, b) = dp3.get(&format!("/entity/test_entity_type/e{e}/master"));
            history_t1s(&b, "test_attr_history").len()
        })
        .sum();
    assert_eq!(
        total, 500,
        "every accepted datapoint is applied exactly once"
    );
}

/// Under load, `kill -9` the process and restart it: every datapoint that was answered 200
/// is in the store, exactly once.
#[test]
fn kill9_under_load_loses_no_acknowledged_datapoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    let data = dir.path().join("data");
    let mut dp3 = Dp3::start(&cfg, &data);
    let base = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let entities = 40;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sent: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = dp3.url("/datapoints");
    let loader = {
        let (acked, sent, stop) = (acked.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let http = client();
            let mut k: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut batch = Vec::new();
                let mut keys = Vec::new();
                for _ in 0..200 {
                    let eid = format!("k{}", k % entities);
                    let t1 = (base + TimeDelta::seconds(k))
                        .format("%Y-%m-%dT%H:%M:%SZ")
                        .to_string();
                    batch.push(json!({"type": "test_entity_type", "id": eid,
                                      "attr": "test_attr_history", "v": k, "t1": t1}));
                    keys.push((eid, t1));
                    k += 1;
                }
                sent.lock().unwrap().extend(keys.iter().cloned());
                match http.post(&url).json(&batch).send() {
                    Ok(r) if r.status().as_u16() == 200 => acked.lock().unwrap().extend(keys),
                    Ok(_) => {}
                    Err(_) => break, // the server is gone
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    dp3.kill9();
    stop.store(true, Ordering::SeqCst);
    let _ = loader.join();
    drop(dp3);

    let acked = acked.lock().unwrap().clone();
    let sent: HashSet<(String, String)> = sent.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= 200, "the load ran (acked {})", acked.len());

    let dp3 = Dp3::start(&cfg, &data);
    // Wait until the replay is applied: the acknowledged count must be reached.
    let mut stored: HashMap<(String, String), usize> = HashMap::new();
    for attempt in 0..200 {
        stored.clear();
        for e in 0..entities {
            let eid = format!("k{e}");
            let (_, b) = dp3.get(&format!("/entity/test_entity_type/{eid}/master"));
            for t1 in history_t1s(&b, "test_attr_history") {
                *stored.entry((eid.clone(), t1)).or_default() += 1;
            }
        }
        if acked.iter().all(|k| stored.contains_key(k)) || attempt == 199 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let missing: Vec<_> = acked.iter().filter(|k| !stored.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged datapoints lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let dup: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup.is_empty(),
        "datapoints applied twice: {:?}",
        &dup[..dup.len().min(5)]
    );
    assert!(
        stored.keys().all(|k| sent.contains(k)),
        "only sent datapoints are stored"
    );
}
