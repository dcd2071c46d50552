//! Raw datapoint archiving (data-model.md §6.5): raw datapoints older than
//! `datapoint_archivation.older_than` (and plain ones, which have no `t1`) are moved out of
//! the raw log into `<archive_dir>/dp-log-<min t1>--<max t1>.jsonl.gz`, or just deleted when
//! `archive_dir` is null.
//!
//! File format: gzip-compressed JSON lines, one datapoint per line with the keys
//! `attr, src, v, c, t1, t2, id, type` in that order (DP3's export: the raw document with
//! `eid` renamed to `id` and `etype` to `type`). Values are rendered like the HTTP API renders
//! them (`dp3_model::value::to_api_json`). The file may consist of several gzip members
//! (one per batch); any gzip reader that handles multi-member files (`zcat`, Python's
//! `gzip`, [`read_archive`]) reads it as one stream.
//!
//! Fixed DP3 bugs: datetimes carry the `Z` zone suffix (DP3 wrote naive local-looking
//! `…T…:…:….mmm`), MAC addresses are exported as strings (DP3's encoder crashed on them),
//! each entity type's raw log is archived on its own (DP3's unanchored regex also matched
//! archives of other types), archives holding only plain datapoints are exported too (DP3
//! skipped them until a timed datapoint aged out), and an existing file of the same name is
//! never overwritten (a `-<n>` suffix is added).
//!
//! Crash safety: batches are appended to a hidden `.dp-log-run-….partial` file and synced
//! before the store deletes them; the file is renamed to its final name at the end of the
//! run. A partial file left by a crash is recovered (its readable lines re-written under
//! the final name) at the start of the next run, so datapoints are archived at least once.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bson::Document;
use chrono::{DateTime, TimeDelta, Utc};
use dp3_model::ModelSpec;
use dp3_model::value::{as_time, to_api_json};
use dp3_store::{Store, StoreError};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde_json::{Map, Value as Json};
use tracing::{info, warn};

use super::error::{BackgroundError, Result};
use crate::clock::Clock;

const PARTIAL_PREFIX: &str = ".dp-log-run-";
const PARTIAL_SUFFIX: &str = ".jsonl.gz.partial";

/// What one archiving run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiveStats {
    /// Datapoints moved out of the raw logs.
    pub archived: u64,
    /// The archive file written, if any.
    pub file: Option<PathBuf>,
    /// Partial files of interrupted runs that were recovered.
    pub recovered: Vec<PathBuf>,
}

/// The archiving job.
pub struct Archiver {
    pub model: Arc<ModelSpec>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub older_than: TimeDelta,
    /// `None`: delete without exporting.
    pub archive_dir: Option<PathBuf>,
}

/// One raw datapoint document as an archive line (a JSON object, DP3's key order).
pub fn archive_line(raw: &Document) -> Json {
    let get = |k: &str| raw.get(k).map_or(Json::Null, to_api_json);
    let mut m = Map::new();
    m.insert("attr".into(), get("attr"));
    m.insert("src".into(), get("src"));
    m.insert("v".into(), get("v"));
    m.insert("c".into(), get("c"));
    m.insert("t1".into(), get("t1"));
    m.insert("t2".into(), get("t2"));
    m.insert("id".into(), get("eid"));
    m.insert("type".into(), get("etype"));
    Json::Object(m)
}

/// Read an archive file back: one JSON value per line.
pub fn read_archive(path: &Path) -> Result<Vec<Json>> {
    let mut out = Vec::new();
    let complete = read_lines(path, |v| out.push(v))?;
    if !complete {
        return Err(BackgroundError::Malformed {
            what: format!("archive {}", path.display()),
            reason: "truncated gzip stream".into(),
        });
    }
    Ok(out)
}

/// Feed every readable line of a (possibly truncated) archive to `f`; returns whether the
/// whole file was readable.
fn read_lines(path: &Path, mut f: impl FnMut(Json)) -> Result<bool> {
    let file = File::open(path).map_err(|e| BackgroundError::io("cannot open", path, e))?;
    let reader = BufReader::new(MultiGzDecoder::new(BufReader::new(file)));
    for (i, line) in reader.lines().enumerate() {
        let Ok(line) = line else { return Ok(false) };
        if line.is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| BackgroundError::Malformed {
            what: format!("archive {} line {}", path.display(), i + 1),
            reason: e.to_string(),
        })?;
        f(v);
    }
    Ok(true)
}

/// Earliest/latest `t1` of timed datapoints seen so far.
#[derive(Debug, Default, Clone, Copy)]
struct T1Range(Option<(DateTime<Utc>, DateTime<Utc>)>);

impl T1Range {
    fn add(&mut self, t: DateTime<Utc>) {
        self.0 = Some(match self.0 {
            None => (t, t),
            Some((lo, hi)) => (lo.min(t), hi.max(t)),
        });
    }

    fn add_json(&mut self, line: &Json) {
        if let Some(t) = line
            .get("t1")
            .and_then(Json::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            self.add(t.with_timezone(&Utc));
        }
    }

    /// The final file name; an archive without timed datapoints is named after `fallback`.
    fn file_name(&self, fallback: DateTime<Utc>) -> String {
        let (lo, hi) = self.0.unwrap_or((fallback, fallback));
        format!(
            "dp-log-{}--{}",
            lo.format("%Y%m%dT%H%M%S"),
            hi.format("%Y%m%dT%H%M%S")
        )
    }
}

/// The run's partial file: gzip members appended batch by batch.
struct PartialFile {
    path: PathBuf,
    file: File,
    range: T1Range,
}

impl PartialFile {
    fn create(path: PathBuf) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| BackgroundError::io("cannot create", &path, e))?;
        Ok(PartialFile {
            path,
            file,
            range: T1Range::default(),
        })
    }

    /// Append one batch as a complete gzip member and sync it; on failure the file is cut
    /// back so it never holds a half-written member.
    fn append(&mut self, docs: &[Document]) -> std::io::Result<()> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        for d in docs {
            serde_json::to_writer(&mut enc, &archive_line(d))?;
            enc.write_all(b"\n")?;
            if let Some(t) = d.get("t1").and_then(as_time) {
                self.range.add(t);
            }
        }
        let bytes = enc.finish()?;
        let start = self.file.stream_position()?;
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            let _ = self.file.set_len(start);
            let _ = self.file.seek(std::io::SeekFrom::Start(start));
        }
        written
    }
}

/// `dir/name.jsonl.gz`, or `dir/name-<n>.jsonl.gz` when that exists.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(format!("{name}.jsonl.gz"));
    if !first.exists() {
        return first;
    }
    (1u32..)
        .map(|n| dir.join(format!("{name}-{n}.jsonl.gz")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Archiver {
    /// Archive (or delete) old raw datapoints of every entity type.
    pub fn run(&self) -> Result<ArchiveStats> {
        let now = self.clock.now();
        let t_old = now - self.older_than;
        let mut stats = ArchiveStats::default();
        let Some(dir) = &self.archive_dir else {
            for etype in self.model.entities.keys() {
                stats.archived += self.store.archive_raw(etype, t_old, &mut |_| Ok(()))?;
            }
            if stats.archived > 0 {
                info!(
                    deleted = stats.archived,
                    "old raw datapoints deleted (no archive_dir)"
                );
            }
            return Ok(stats);
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| BackgroundError::io("cannot create archive directory", dir, e))?;
        stats.recovered = recover_partials(dir, now)?;

        let partial_path = dir.join(format!(
            "{PARTIAL_PREFIX}{}{PARTIAL_SUFFIX}",
            now.format("%Y%m%dT%H%M%S%.6f")
        ));
        let mut partial: Option<PartialFile> = None;
        let mut failure: Option<BackgroundError> = None;
        for etype in self.model.entities.keys() {
            let mut sink = |docs: &[Document]| -> dp3_store::Result<()> {
                if partial.is_none() {
                    match PartialFile::create(partial_path.clone()) {
                        Ok(p) => partial = Some(p),
                        Err(e) => {
                            let msg = e.to_string();
                            failure = Some(e);
                            return Err(StoreError::backend("archive", msg));
                        }
                    }
                }
                let Some(p) = partial.as_mut() else {
                    return Err(StoreError::backend("archive", "no archive file"));
                };
                p.append(docs).map_err(|e| {
                    let msg = format!("cannot write {}: {e}", p.path.display());
                    failure = Some(BackgroundError::io("cannot write", &p.path, e));
                    StoreError::backend("archive", msg)
                })
            };
            match self.store.archive_raw(etype, t_old, &mut sink) {
                Ok(n) => stats.archived += n,
                Err(e) => {
                    // Keep what was archived so far: finish the file, then report.
                    let err = failure.take().unwrap_or(BackgroundError::Store(e));
                    if let Some(p) = partial.take() {
                        stats.file = Some(finish_partial(dir, p, now)?);
                    }
                    return Err(err);
                }
            }
        }
        if let Some(p) = partial.take() {
            let file = finish_partial(dir, p, now)?;
            info!(archived = stats.archived, file = %file.display(), "raw datapoints archived");
            stats.file = Some(file);
        }
        Ok(stats)
    }
}

fn finish_partial(dir: &Path, p: PartialFile, now: DateTime<Utc>) -> Result<PathBuf> {
    let PartialFile { path, file, range } = p;
    drop(file);
    let target = free_name(dir, &range.file_name(now));
    std::fs::rename(&path, &target).map_err(|e| BackgroundError::io("cannot rename", &path, e))?;
    sync_dir(dir);
    Ok(target)
}

/// Give partial files of interrupted runs their final names, re-writing only their
/// readable lines (a crash may have cut the last gzip member).
fn recover_partials(dir: &Path, now: DateTime<Utc>) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| BackgroundError::io("cannot list", dir, e))?;
    let mut recovered = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(PARTIAL_PREFIX) && name.ends_with(PARTIAL_SUFFIX)) {
            continue;
        }
        let path = entry.path();
        let tmp = path.with_extension("recovering");
        let mut range = T1Range::default();
        let mut lines = 0u64;
        {
            let out =
                File::create(&tmp).map_err(|e| BackgroundError::io("cannot create", &tmp, e))?;
            let mut enc = GzEncoder::new(BufWriter::new(out), Compression::default());
            let mut write_err = None;
            read_lines(&path, |v| {
                if write_err.is_some() {
                    return;
                }
                range.add_json(&v);
                lines += 1;
                let written = serde_json::to_writer(&mut enc, &v)
                    .map_err(std::io::Error::from)
                    .and_then(|()| enc.write_all(b"\n"));
                if let Err(e) = written {
                    write_err = Some(e);
                }
            })?;
            if let Some(e) = write_err {
                return Err(BackgroundError::io("cannot write", &tmp, e));
            }
            let mut w = enc
                .finish()
                .map_err(|e| BackgroundError::io("cannot write", &tmp, e))?;
            w.flush()
                .map_err(|e| BackgroundError::io("cannot write", &tmp, e))?;
            if let Ok(f) = w.into_inner() {
                let _ = f.sync_all();
            }
        }
        if lines == 0 {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let target = free_name(dir, &range.file_name(now));
        std::fs::rename(&tmp, &target)
            .map_err(|e| BackgroundError::io("cannot rename", &tmp, e))?;
        std::fs::remove_file(&path).map_err(|e| BackgroundError::io("cannot remove", &path, e))?;
        sync_dir(dir);
        warn!(file = %target.display(), datapoints = lines, "recovered the archive of an interrupted run");
        recovered.push(target);
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, doc};
    use chrono::TimeZone;
    use dp3_model::value::{MacAddr, ipv4, mac, time};

    #[test]
    fn lines_have_dp3_keys_in_order_with_zoned_times_and_address_strings() {
        let t = Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap();
        let raw = doc! {
            "etype": "dev", "eid": mac(MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])),
            "attr": "ip", "src": "scan", "v": ipv4("10.0.0.1".parse().unwrap()),
            "c": 0.5, "t1": time(t), "t2": time(t + TimeDelta::milliseconds(250)),
        };
        let line = serde_json::to_string(&archive_line(&raw)).unwrap();
        assert_eq!(
            line,
            r#"{"attr":"ip","src":"scan","v":"10.0.0.1","c":0.5,"t1":"2025-03-04T05:06:07Z","t2":"2025-03-04T05:06:07.250000Z","id":"aa:bb:cc:dd:ee:ff","type":"dev"}"#
        );
        let plain = doc! {"etype": "A", "eid": 5, "attr": "x", "src": Bson::Null, "v": 1, "c": Bson::Null, "t1": Bson::Null, "t2": Bson::Null};
        assert_eq!(
            serde_json::to_string(&archive_line(&plain)).unwrap(),
            r#"{"attr":"x","src":null,"v":1,"c":null,"t1":null,"t2":null,"id":5,"type":"A"}"#
        );
    }

    #[test]
    fn partial_members_concatenate_and_truncation_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let path = dir
            .path()
            .join(format!("{PARTIAL_PREFIX}x{PARTIAL_SUFFIX}"));
        let mut p = PartialFile::create(path.clone()).unwrap();
        let d = |i: i32, m: i64| doc! {"etype": "A", "eid": i, "attr": "o", "src": "s", "v": i, "c": 1.0, "t1": time(t + TimeDelta::minutes(m)), "t2": time(t + TimeDelta::minutes(m))};
        p.append(&[d(1, 5), d(2, 1)]).unwrap();
        p.append(&[d(3, 9)]).unwrap();
        drop(p);
        assert_eq!(read_archive(&path).unwrap().len(), 3);
        // cut the last member in half: recovery keeps the complete first member
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 10).unwrap();
        drop(f);
        assert!(read_archive(&path).is_err());
        let rec = recover_partials(dir.path(), t).unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(
            rec[0].file_name().unwrap().to_str().unwrap(),
            "dp-log-20250101T000100--20250101T000500.jsonl.gz"
        );
        let lines = read_archive(&rec[0]).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(!path.exists());
    }

    #[test]
    fn existing_files_are_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dp-log-a.jsonl.gz"), b"x").unwrap();
        assert_eq!(
            free_name(dir.path(), "dp-log-a"),
            dir.path().join("dp-log-a-1.jsonl.gz")
        );
    }
}
