//! The fuzz targets in the test suite: every input of `fuzz/corpus/<target>/` (seeds, plus
//! what the libFuzzer runs kept) is replayed through the same target functions the fuzzers
//! run (`fuzz/src/targets.rs`), followed by a short, seeded mutation run (about a second per
//! target) so the suite also exercises inputs nobody wrote down.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir: PathBuf = targets::repo_root().join("fuzz/corpus").join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is readable: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    inputs.into_iter().map(|(_, d)| d).collect()
}

/// A small byte-level mutator (flip, insert, delete, duplicate a slice, splice two inputs).
fn mutate(rng: &mut fastrand::Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = base.to_vec();
    for _ in 0..rng.usize(1..=4) {
        match rng.u8(0..5) {
            0 if !d.is_empty() => {
                let i = rng.usize(..d.len());
                d[i] ^= 1 << rng.u8(0..8);
            }
            1 => {
                let i = rng.usize(..=d.len());
                let b = *rng
                    .choice(b"[]{}\",:\\0123456789.eE-+ tfnx\x00\xff".iter())
                    .unwrap();
                d.insert(i, b);
            }
            2 if !d.is_empty() => {
                let i = rng.usize(..d.len());
                let n = rng.usize(1..=(d.len() - i).min(8));
                d.drain(i..i + n);
            }
            3 if !d.is_empty() => {
                let i = rng.usize(..d.len());
                let n = rng.usize(1..=(d.len() - i).min(16));
                let chunk = d[i..i + n].to_vec();
                let at = rng.usize(..=d.len());
                d.splice(at..at, chunk);
            }
            _ if !other.is_empty() => {
                let at = rng.usize(..=d.len());
                let from = rng.usize(..other.len());
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    d
}

/// Replay the corpus, then mutate it for `budget`; returns the number of executions.
fn run(target: &str, f: fn(&[u8]), budget: Duration) -> usize {
    let inputs = corpus(target);
    for input in &inputs {
        f(input);
    }
    let mut rng = fastrand::Rng::with_seed(0x0d93_f022);
    let deadline = Instant::now() + budget;
    let mut execs = inputs.len();
    while Instant::now() < deadline {
        let a = &inputs[rng.usize(..inputs.len())];
        let b = &inputs[rng.usize(..inputs.len())];
        f(&mutate(&mut rng, a, b));
        execs += 1;
    }
    eprintln!("{target}: {execs} executions");
    execs
}

const BUDGET: Duration = Duration::from_millis(1500);

#[test]
fn datapoint_json_corpus() {
    assert!(run("datapoint_json", targets::datapoint_json, BUDGET) > 0);
}

#[test]
fn config_yaml_corpus() {
    assert!(run("config_yaml", targets::config_yaml, BUDGET) > 0);
}

#[test]
fn generic_filter_corpus() {
    assert!(run("generic_filter", targets::generic_filter, BUDGET) > 0);
}

#[test]
fn plugin_value_bytes_corpus() {
    assert!(run("plugin_value_bytes", targets::plugin_value_bytes, BUDGET) > 0);
}
