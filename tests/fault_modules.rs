//! Module faults, black-box (the real `dp3 run`):
//!
//! * a module that panics in every hook (`plugins/panicky`) is contained: ingestion goes on,
//!   the panic is logged with its reason, the host answers;
//! * tasks a module emits for an unknown entity type, an unknown attribute or with a
//!   wrongly typed value (`plugins/bad_tasks`) are rejected with a logged reason, while its
//!   valid task is applied;
//! * a module library or modules directory writable by other users is refused at start with
//!   an error naming the file and the fix, so a library dropped there by someone else is
//!   never loaded.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Dp3, copy_dir, dp3_bin, dp3_test_config, repo_root};
use serde_json::json;

/// Put `module`'s library into `cfg/modules` (mode `lib_mode`, directory `dir_mode`) and
/// enable only it.
fn enable_module(cfg: &Path, module: &str, lib_mode: u32, dir_mode: u32) -> PathBuf {
    let modules = cfg.join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    let src = common::example_library(module);
    let lib = modules.join(src.file_name().unwrap());
    std::fs::copy(&src, &lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(lib_mode)).unwrap();
    std::fs::set_permissions(&modules, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    let pc = cfg.join("processing_core.yml");
    let mut out = String::new();
    // Skip the old list: flow style (`[...]`, maybe over lines) or block style (`- x`).
    let mut skipping: Option<bool> = None; // Some(flow?)
    for line in std::fs::read_to_string(&pc).unwrap().lines() {
        let t = line.trim_start();
        match skipping {
            Some(true) => {
                if t.starts_with(']') {
                    skipping = None;
                }
                continue;
            }
            Some(false) if t.is_empty() || line.starts_with([' ', '\t', '-', '#']) => continue,
            _ => skipping = None,
        }
        if line.starts_with("enabled_modules") {
            out.push_str(&format!("enabled_modules: [{module}]\n"));
            skipping = match line.split_once(':').map(|(_, rest)| rest.trim()) {
                Some(rest) if rest.starts_with('[') && rest.contains(']') => None,
                Some(rest) if rest.starts_with('[') => Some(true),
                _ => Some(false),
            };
            continue;
        }
        if line.starts_with("modules_dir") {
            out.push_str("modules_dir: \"modules\"\n");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(&pc, out).unwrap();
    lib
}

/// `dp3 run` that must fail to start; returns its stderr.
fn start_fails(cfg: &Path, data: &Path) -> String {
    let out = Command::new(dp3_bin())
        .arg("run")
        .arg("--config")
        .arg(cfg)
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "dp3 must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn panicking_module_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    // panicky registers its hooks on the example configuration's `ip` entity.
    let cfg = dir.path().join("config");
    copy_dir(&repo_root().join("config"), &cfg);
    enable_module(&cfg, "panicky", 0o644, 0o755);
    let dp3 = Dp3::start(&cfg, &dir.path().join("data"));
    for i in 0..20 {
        let (status, body) = dp3.post_json(
            "/datapoints",
            &json!([{"type": "ip", "id": format!("192.0.2.{i}"), "attr": "hostname",
                     "v": format!("h{i}.example")}]),
        );
        assert_eq!(status, 200, "{body}");
    }
    // Every datapoint is applied despite the panicking hooks.
    for i in 0..20 {
        let master = dp3.wait_for(
            &format!("/entity/ip/192.0.2.{i}/master"),
            Duration::from_secs(20),
            |b| b.get("hostname").is_some(),
        );
        assert!(
            master["hostname"].is_object() || master["hostname"].is_array(),
            "{master}"
        );
    }
    assert_eq!(dp3.get("/").0, 200, "the host is unaffected");
    let log = dp3.log_text();
    assert!(
        log.contains("panic"),
        "the module panics are logged with their reason:\n{log}"
    );
}

#[test]
fn writable_modules_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    enable_module(&cfg, "test_module", 0o644, 0o777);
    let err = start_fails(&cfg, &dir.path().join("data"));
    assert!(
        err.contains("writable by group or others") && err.contains("modules"),
        "{err}"
    );
}

#[test]
fn writable_module_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    let lib = enable_module(&cfg, "test_module", 0o666, 0o755);
    let err = start_fails(&cfg, &dir.path().join("data"));
    assert!(
        err.contains("writable by group or others") && err.contains("chmod go-w"),
        "{err}"
    );
    assert!(
        err.contains(&*lib.file_name().unwrap().to_string_lossy()),
        "{err}"
    );
}

#[test]
fn invalid_tasks_from_a_module_are_rejected_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dp3_test_config(dir.path());
    enable_module(&cfg, "bad_tasks", 0o644, 0o755);
    let dp3 = Dp3::start(&cfg, &dir.path().join("data"));
    let (status, body) = dp3.post_json(
        "/datapoints",
        &json!([{"type": "test_entity_type", "id": "m1", "attr": "test_attr_int", "v": 3}]),
    );
    assert_eq!(status, 200, "{body}");
    // The valid task of the module is applied ...
    let master = dp3.wait_for(
        "/entity/test_entity_type/m1/master",
        Duration::from_secs(20),
        |b| b.get("test_attr_string").is_some(),
    );
    assert_eq!(
        master["test_attr_string"]["v"],
        json!("from bad_tasks"),
        "{master}"
    );
    // ... the wrongly typed value is not ...
    assert_eq!(master["test_attr_int"]["v"], json!(3), "{master}");
    // ... nothing was created for the unknown type, and the reasons are logged.
    let (status, _) = dp3.get("/entity/no_such_type/m1/master");
    assert_eq!(status, 422);
    std::thread::sleep(Duration::from_millis(300));
    let log = dp3.log_text();
    for needle in ["no_such_type", "no_such_attr"] {
        assert!(log.contains(needle), "{needle} not logged:\n{log}");
    }
    assert_eq!(dp3.get("/").0, 200, "the host is unaffected");
}
