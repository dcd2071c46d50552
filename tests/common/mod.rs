//! Helpers for black-box tests: start the real `dp3` binary on a free port with a
//! configuration and a data directory, talk to it over HTTP, stop or kill it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn dp3_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dp3"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The built library of an example module (`plugins/<name>`). The host lists the example
/// modules as dev-dependencies, so `cargo test` builds them next to the test executables
/// (`target/<profile>/deps/`); a workspace build puts them in `target/<profile>/`. The newer
/// one wins.
pub fn example_library(name: &str) -> PathBuf {
    let file = format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    [
        deps.join(&file),
        deps.parent().expect("profile dir").join(&file),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .unwrap_or_else(|| panic!("{file} was not built next to {}", exe.display()))
}

/// Copy a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of DP3's test configuration in `dir`, with an empty modules directory and no
/// enabled modules (tests that need modules enable them explicitly).
pub fn dp3_test_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("config");
    copy_dir(&repo_root().join("tests/fixtures/dp3-test-config"), &cfg);
    std::fs::create_dir_all(cfg.join("modules")).unwrap();
    let pc = cfg.join("processing_core.yml");
    let text = std::fs::read_to_string(&pc).unwrap();
    let mut out = String::new();
    let mut skip_list = false;
    for line in text.lines() {
        if skip_list {
            if line.trim_start().starts_with(']') {
                skip_list = false;
            }
            continue;
        }
        if line.starts_with("enabled_modules") {
            out.push_str("enabled_modules: []\n");
            skip_list = !line.contains(']');
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
    cfg
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `dp3 run`.
pub struct Dp3 {
    pub child: Child,
    pub base: String,
    pub config: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Dp3 {
    /// Start `dp3 run` and wait until it answers HTTP.
    pub fn start(config: &Path, data: &Path) -> Dp3 {
        Self::start_with(config, data, &[])
    }

    pub fn start_with(config: &Path, data: &Path, extra: &[&str]) -> Dp3 {
        let port = free_port();
        // Next to the configuration, not the data: a test may fill the data's disk.
        let log = config.with_extension(format!("{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(dp3_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("dp3 binary starts");
        let mut d = Dp3 {
            child,
            base: format!("http://127.0.0.1:{port}"),
            config: config.to_owned(),
            data: data.to_owned(),
            log,
        };
        d.wait_ready(Duration::from_secs(20));
        d
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = client();
        loop {
            if let Ok(r) = client.get(&self.base).send()
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "dp3 exited with {status} before becoming ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dp3 not ready in time:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = client().get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = client().post(self.url(path)).json(body).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// SIGKILL the process (no cleanup at all).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(Instant::now() < deadline, "dp3 did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Poll `path` until `pred` holds on the JSON body (or panic after `timeout`).
    pub fn wait_for(&self, path: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(path);
            if status == 200 && pred(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "condition on {path} not met in time; last body: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dp3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client with sane timeouts.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}
