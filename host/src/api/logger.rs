//! The datapoint logger of `api.yml` (api.md §1.4): accepted datapoints go to `good_log`,
//! validation errors of `/datapoints` to `bad_log`, one line each:
//! `<asctime> (<client ip>) | <record>`.
//!
//! Records are written as Python dict reprs like DP3's (`{'etype': 'A', 'eid': 1, ...}`,
//! `None`/`True`/`False`, error `loc`s as tuples). Values are the API's JSON renderings, so
//! datetimes appear as ISO strings where DP3 prints `datetime.datetime(...)`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use parking_lot::Mutex;
use serde_json::Value as Json;

/// A log file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("datapoint log directory {dir} does not exist (log file {file})")]
    MissingDirectory { dir: PathBuf, file: PathBuf },
    #[error("cannot open datapoint log {file}: {reason}")]
    Open { file: PathBuf, reason: String },
}

/// Appends good/bad datapoint lines; disabled logs cost nothing.
#[derive(Debug, Default)]
pub struct DatapointLogger {
    good: Option<Mutex<File>>,
    bad: Option<Mutex<File>>,
}

fn open_log(path: &Path) -> Result<Mutex<File>, LoggerError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(LoggerError::MissingDirectory {
            dir: dir.to_owned(),
            file: path.to_owned(),
        });
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Mutex::new)
        .map_err(|e| LoggerError::Open {
            file: path.to_owned(),
            reason: e.to_string(),
        })
}

impl DatapointLogger {
    pub fn open(good: Option<&Path>, bad: Option<&Path>) -> Result<Self, LoggerError> {
        Ok(DatapointLogger {
            good: good.map(open_log).transpose()?,
            bad: bad.map(open_log).transpose()?,
        })
    }

    pub fn logs_good(&self) -> bool {
        self.good.is_some()
    }

    pub fn logs_bad(&self) -> bool {
        self.bad.is_some()
    }

    /// One line per accepted datapoint.
    pub fn good(&self, client: &str, records: &[Json]) {
        if let Some(f) = &self.good {
            write_lines(f, client, records);
        }
    }

    /// One line per validation error.
    pub fn bad(&self, client: &str, records: &[Json]) {
        if let Some(f) = &self.bad {
            write_lines(f, client, records);
        }
    }
}

/// Python's `repr()` of a JSON value; arrays under a `loc` key are tuples.
pub fn python_repr(v: &Json) -> String {
    let mut out = String::new();
    repr_into(&mut out, v, false);
    out
}

fn repr_str(out: &mut String, s: &str) {
    // Python prefers single quotes, switching to double quotes when only `'` occurs.
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn repr_into(out: &mut String, v: &Json, as_tuple: bool) {
    match v {
        Json::Null => out.push_str("None"),
        Json::Bool(true) => out.push_str("True"),
        Json::Bool(false) => out.push_str("False"),
        Json::Number(n) => out.push_str(&n.to_string()),
        Json::String(s) => repr_str(out, s),
        Json::Array(items) => {
            out.push(if as_tuple { '(' } else { '[' });
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(out, item, false);
            }
            if as_tuple && items.len() == 1 {
                out.push(',');
            }
            out.push(if as_tuple { ')' } else { ']' });
        }
        Json::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_str(out, k);
                out.push_str(": ");
                repr_into(out, item, k == "loc");
            }
            out.push('}');
        }
    }
}

fn write_lines(file: &Mutex<File>, client: &str, records: &[Json]) {
    // Python logging's default `asctime`: `2026-11-27 17:49:27,645`.
    let now = Utc::now().format("%Y-%m-%d %H:%M:%S,%3f").to_string();
    let mut buf = String::new();
    for r in records {
        buf.push_str(&format!("{now} ({client}) | {}\n", python_repr(r)));
    }
    if let Err(e) = file.lock().write_all(buf.as_bytes()) {
        // Losing a log line must not fail ingestion (DP3's logging handler behaves the same).
        tracing::warn!(error = %e, "cannot write the datapoint log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_directory_is_an_error() {
        let err = DatapointLogger::open(Some(Path::new("/nonexistent-dir-dp3/good.log")), None)
            .unwrap_err();
        assert!(matches!(err, LoggerError::MissingDirectory { .. }));
    }

    #[test]
    fn lines_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.log");
        let l = DatapointLogger::open(Some(&good), None).unwrap();
        l.good("1.2.3.4", &[json!({"attr": "a"}), json!({"attr": "b"})]);
        let text = std::fs::read_to_string(&good).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with("(1.2.3.4) | {'attr': 'a'}"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn python_reprs() {
        assert_eq!(
            python_repr(
                &json!({"type": "missing", "loc": ["body", 0, "v"], "input": null,
                                "ok": true, "c": 1.0, "l": [1, "it's"]})
            ),
            r#"{'type': 'missing', 'loc': ('body', 0, 'v'), 'input': None, 'ok': True, 'c': 1.0, 'l': [1, "it's"]}"#
        );
        assert_eq!(python_repr(&json!({"loc": ["body"]})), "{'loc': ('body',)}");
        assert_eq!(python_repr(&json!("a'b\"c\n")), r#"'a\'b"c\n'"#);
    }
}
