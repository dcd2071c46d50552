//! Fault tests of ingestion, black-box (the real `dp3 run` over HTTP):
//!
//! * disk full: the data directory on an 8 MiB tmpfs that a filler file fills up → `503`,
//!   the server stays up, ingestion resumes once space returns, and every datapoint that
//!   was answered `200` is stored (also after a `kill -9` and restart);
//! * a loop of random `SIGKILL`s during ingestion with module hooks (test_module) and
//!   snapshots running: after each restart the store holds every acknowledged datapoint,
//!   exactly once.
//!
//! The tmpfs test needs root (mount); it fails with a clear message otherwise.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::{Dp3, client, dp3_test_config};
use serde_json::{Value, json};

type Key = (String, String);

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

/// A batch of `n` observations with unique (eid, t1) keys starting at `k`.
fn batch(k: &mut i64, n: usize, entities: i64, pad: usize) -> (Value, Vec<Key>) {
    let mut dps = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let eid = format!("k{}", *k % entities);
        let t1 = (base_time() + TimeDelta::seconds(*k))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        dps.push(
            json!({"type": "test_entity_type", "id": eid, "attr": "test_attr_history",
                        "v": *k, "t1": t1, "src": "x".repeat(pad)}),
        );
        keys.push((eid, t1));
        *k += 1;
    }
    (Value::Array(dps), keys)
}

fn history_t1s(body: &Value) -> Vec<String> {
    body.get("test_attr_history")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("t1").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until every acknowledged key is stored; returns the stored keys with their counts.
fn wait_all_stored(dp3: &Dp3, acked: &[Key], entities: i64) -> HashMap<Key, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stored: HashMap<Key, usize> = HashMap::new();
        for e in 0..entities {
            let eid = format!("k{e}");
            let (_, b) = dp3.get(&format!("/entity/test_entity_type/{eid}/master"));
            for t1 in history_t1s(&b) {
                *stored.entry((eid.clone(), t1)).or_default() += 1;
            }
        }
        let missing = acked.iter().filter(|k| !stored.contains_key(*k)).count();
        if missing == 0 || Instant::now() > deadline {
            return stored;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_no_loss_no_dup(stored: &HashMap<Key, usize>, acked: &[Key], sent: &HashSet<Key>) {
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

// ------------------------------------------------------------------ disk full

/// A tmpfs mounted for the test; unmounted (lazily, so a leftover process cannot block it)
/// when dropped, on every path including panics.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn mount(dir: &Path, size: &str) -> TmpfsMount {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TmpfsMount(dir.to_owned())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system holding `dir` completely with one file.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

/// `df` and the file sizes of the test's file system (for failure messages).
fn disk_usage(dir: &Path) -> String {
    let output = |cmd: &str, flag: &str| {
        Command::new(cmd)
            .arg(flag)
            .arg(dir)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    format!("{}{}", output("df", "-k"), output("ls", "-laR"))
}

/// The two fault tests of this file each drive a real server hard; run them one at a time so
/// their timing assertions do not depend on each other's CPU use.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn disk_full_answers_503_loses_nothing_and_recovers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    let mount_dir = dir.path().join("disk");
    let _mount = TmpfsMount::mount(&mount_dir, "8m");
    let data = mount_dir.join("data");
    let filler = mount_dir.join("filler");
    let entities = 20;
    let mut dp3 = Dp3::start(&cfg, &data);
    let http = client();
    let url = dp3.url("/datapoints");
    let mut k = 0i64;
    let mut acked: Vec<Key> = Vec::new();
    let mut sent: HashSet<Key> = HashSet::new();
    let post = |k: &mut i64, acked: &mut Vec<Key>, sent: &mut HashSet<Key>| -> (u16, Value) {
        let (body, keys) = batch(k, 50, entities, 100);
        sent.extend(keys.iter().cloned());
        let r = http
            .post(&url)
            .json(&body)
            .send()
            .expect("the server answers");
        let status = r.status().as_u16();
        let retry_after = r.headers().contains_key("retry-after");
        let body: Value = r.json().unwrap_or(Value::Null);
        if status == 200 {
            acked.extend(keys);
        } else if status == 503 {
            assert!(body["detail"].is_string(), "{body}");
            let _ = retry_after;
        }
        (status, body)
    };
    // Phase 1: normal ingestion.
    for _ in 0..10 {
        let (s, b) = post(&mut k, &mut acked, &mut sent);
        assert_eq!(s, 200, "{b}");
    }
    // Phase 2: the disk fills up.
    fill_disk(&filler);
    let mut unavailable = 0;
    let mut other = Vec::new();
    for _ in 0..40 {
        let (s, b) = post(&mut k, &mut acked, &mut sent);
        match s {
            200 => {}
            503 => unavailable += 1,
            _ => other.push((s, b)),
        }
    }
    assert!(
        other.is_empty(),
        "unexpected answers with a full disk: {other:?}"
    );
    assert!(
        unavailable > 0,
        "a full disk must be refused with 503\n{}",
        dp3.log_text()
    );
    assert_eq!(dp3.get("/").0, 200, "the server stays up");
    // Phase 3: space returns, ingestion resumes.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, _) = post(&mut k, &mut acked, &mut sent);
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingestion did not resume after space returned\n{}\n{}",
            disk_usage(&mount_dir),
            dp3.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..5 {
        let (s, b) = post(&mut k, &mut acked, &mut sent);
        assert_eq!(s, 200, "{b}");
    }
    let stored = wait_all_stored(&dp3, &acked, entities);
    assert_no_loss_no_dup(&stored, &acked, &sent);
    // And after a crash.
    dp3.kill9();
    drop(dp3);
    let dp3 = Dp3::start(&cfg, &data);
    let stored = wait_all_stored(&dp3, &acked, entities);
    assert_no_loss_no_dup(&stored, &acked, &sent);
    eprintln!(
        "disk full: {} datapoints acknowledged, {unavailable} requests answered 503, 0 lost",
        acked.len()
    );
    drop(dp3);
}

// ------------------------------------------------------------------ SIGKILL loop

/// DP3's test configuration with test_module enabled.
fn config_with_test_module(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let cfg = dp3_test_config(dir);
    let lib = cfg.join("modules").join(
        common::example_library("test_module")
            .file_name()
            .expect("library file name"),
    );
    std::fs::copy(common::example_library("test_module"), &lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(cfg.join("modules"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pc = cfg.join("processing_core.yml");
    let text = std::fs::read_to_string(&pc)
        .unwrap()
        .replace("enabled_modules: []", "enabled_modules: [test_module]");
    std::fs::write(&pc, text).unwrap();
    cfg
}

#[test]
fn random_sigkills_during_ingestion_lose_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_test_module(dir.path());
    let data = dir.path().join("data");
    let entities = 30;
    let acked: Arc<Mutex<Vec<Key>>> = Arc::default();
    let sent: Arc<Mutex<HashSet<Key>>> = Arc::default();
    let next_k = Arc::new(Mutex::new(0i64));
    let mut rng = fastrand::Rng::with_seed(0x5eed_0901);
    let cycles = 5;
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut dp3 = Dp3::start(&cfg, &data);
        // After each restart: everything acknowledged so far is there, exactly once.
        let acked_now = acked.lock().unwrap().clone();
        let sent_now = sent.lock().unwrap().clone();
        let stored = wait_all_stored(&dp3, &acked_now, entities);
        assert_no_loss_no_dup(&stored, &acked_now, &sent_now);
        assert!(
            dp3.log_text().contains("module loaded"),
            "test_module is loaded:\n{}",
            dp3.log_text()
        );
        assert!(
            !dp3.log_text().contains("panicked"),
            "cycle {cycle}: {}",
            dp3.log_text()
        );

        let stop = Arc::new(AtomicBool::new(false));
        let url = dp3.url("/datapoints");
        let snap_url = dp3.url("/control/make_snapshots");
        let loaders: Vec<_> = (0..2)
            .map(|_| {
                let (acked, sent, stop, next_k, url) = (
                    acked.clone(),
                    sent.clone(),
                    stop.clone(),
                    next_k.clone(),
                    url.clone(),
                );
                std::thread::spawn(move || {
                    let http = client();
                    while !stop.load(Ordering::SeqCst) {
                        let (mut body, keys) = {
                            let mut k = next_k.lock().unwrap();
                            batch(&mut k, 100, entities, 0)
                        };
                        // Datapoints that run test_module's hooks (correlations on A/B).
                        if let Value::Array(a) = &mut body {
                            let n = keys.len();
                            a.push(json!({"type": "A", "id": n as i64 % 7, "attr": "data1", "v": "hook"}));
                        }
                        sent.lock().unwrap().extend(keys.iter().cloned());
                        match http.post(&url).json(&body).send() {
                            Ok(r) if r.status().as_u16() == 200 => {
                                acked.lock().unwrap().extend(keys)
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        let snapshooter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let http = client();
                while !stop.load(Ordering::SeqCst) {
                    if http.get(&snap_url).send().is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.u64(400..1500)));
        dp3.kill9();
        stop.store(true, Ordering::SeqCst);
        for l in loaders {
            let _ = l.join();
        }
        let _ = snapshooter.join();
        drop(dp3);
    }
    // Final restart and check.
    let dp3 = Dp3::start(&cfg, &data);
    let acked_now = acked.lock().unwrap().clone();
    let sent_now = sent.lock().unwrap().clone();
    assert!(
        acked_now.len() >= 500,
        "the load ran (acked {})",
        acked_now.len()
    );
    let stored = wait_all_stored(&dp3, &acked_now, entities);
    assert_no_loss_no_dup(&stored, &acked_now, &sent_now);
    // The hooks ran: test_module's correlation copies A's data1 values.
    let (s, _) = dp3.get("/entity/A/0/master");
    assert_eq!(s, 200);
    let (_, snaps) = dp3.get("/entity/test_entity_type/k0/snapshots");
    let snapshots = snaps.as_array().map_or(0, Vec::len);
    eprintln!(
        "SIGKILL loop: {cycles} kills survived, {} datapoints acknowledged, 0 lost, \
         {snapshots} snapshots of k0, {:?}",
        acked_now.len(),
        started.elapsed()
    );
}
