//! Hot reload and refresh-on-config-change while load is running: a new build of a module
//! dropped into the modules directory becomes a new generation, an edited module config is
//! reloaded, and no acknowledged datapoint is lost.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, TimeZone, Utc};
use common::{Dp3, client, copy_dir, example_library, repo_root};
use serde_json::json;

fn lib_name(module: &str) -> String {
    format!(
        "{}{module}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn wait_for_log(dp3: &Dp3, needle: &str, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while dp3.log_text().matches(needle).count() < at_least {
        assert!(
            Instant::now() < deadline,
            "log never showed {needle:?}:\n{}",
            dp3.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hot_reload_and_config_refresh_under_load_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    copy_dir(&repo_root().join("config"), &cfg);
    let modules = dir.path().join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::copy(
        example_library("derive_category"),
        modules.join(lib_name("derive_category")),
    )
    .unwrap();
    let pc = cfg.join("processing_core.yml");
    let text = std::fs::read_to_string(&pc).unwrap();
    let mut out = String::new();
    let mut in_list = false;
    for line in text.lines() {
        if line.starts_with("modules_dir") {
            out.push_str(&format!("modules_dir: {}\n", modules.display()));
        } else if line.starts_with("enabled_modules") {
            out.push_str("enabled_modules: [derive_category]\n");
            in_list = true;
        } else if in_list && line.starts_with("  - ") {
            continue;
        } else {
            in_list = false;
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&pc, out).unwrap();

    let dp3 = Dp3::start(&cfg, &dir.path().join("data"));
    wait_for_log(&dp3, "module loaded", 1);

    // Load: open_ports observations on 20 IPs, unique t1 per datapoint.
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = dp3.url("/datapoints");
    let loader = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let http = client();
            let mut k: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut batch = Vec::new();
                let mut keys = Vec::new();
                for _ in 0..100 {
                    let ip = format!("192.0.2.{}", k % 20 + 1);
                    let t1 = base + TimeDelta::seconds(k);
                    let port = [22, 80, 443, 631][(k % 4) as usize];
                    batch.push(json!({"type": "ip", "id": ip, "attr": "open_ports",
                        "v": port, "t1": t1.to_rfc3339()}));
                    keys.push((ip, k));
                    k += 1;
                }
                if let Ok(r) = http.post(&url).json(&batch).send()
                    && r.status().as_u16() == 200
                {
                    acked.lock().unwrap().extend(keys);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    // A "new build": same code, different bytes (a trailing byte), installed atomically.
    let lib = std::fs::read(example_library("derive_category")).unwrap();
    let tmp = modules.join(".derive_category.new");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(&lib).unwrap();
    f.write_all(b"\0").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, modules.join(lib_name("derive_category"))).unwrap();
    wait_for_log(&dp3, "new module generation is live", 1);

    // Refresh on config change: the module's YAML is edited while load runs.
    let conf = cfg.join("modules/derive_category.yml");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("default: unknown", "default: other");
    std::fs::write(&conf, text).unwrap();
    wait_for_log(&dp3, "module configuration reloaded", 1);

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    loader.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "load ran: {}", acked.len());

    // Every acknowledged datapoint is stored exactly once (counted in the raw log: master
    // histories are merged by the example config's aggregation job); derived categories exist.
    let mut per_ip: HashMap<String, usize> = HashMap::new();
    for (ip, _) in &acked {
        *per_ip.entry(ip.clone()).or_default() += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (ip, n) in &per_ip {
        loop {
            let (_, m) = dp3.get(&format!("/entity/ip/{ip}/master"));
            let (_, raw) = dp3.get(&format!(
                "/entity/ip/raw/get?eid={ip}&attr=open_ports&limit=0"
            ));
            let stored = raw["data"].as_array().map_or(0, Vec::len);
            let categories = m["category"].as_array().map_or(0, Vec::len);
            if stored >= *n && categories > 0 {
                assert_eq!(stored, *n, "{ip}: datapoints applied exactly once");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ip}: {stored} of {n} acknowledged datapoints stored, {categories} categories: {m}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let metrics = client()
        .get(dp3.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("family=\"on_new_observation\",module=\"derive_category\""),
        "hooks ran: {metrics}"
    );
}
