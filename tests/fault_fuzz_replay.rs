//! The fuzz targets in the test suite: inputs of `fuzz/corpus/<target>/` (seeds, regression
//! inputs, plus what the libFuzzer runs kept) are replayed through the same target functions
//! the fuzzers run (`fuzz/src/targets.rs`), followed by a short, seeded mutation run, so the
//! suite also exercises inputs nobody wrote down.
//!
//! Bounded to seconds: seeds and regressions always run; the libFuzzer-kept inputs run
//! smallest first until the replay budget is spent (a debug build replays a few hundred per
//! second; the full corpora are replayed by the release fuzz binaries with `-runs=0`, see
//! fuzz/README.md). Each target runs on a thread with a 64 MiB stack: debug-build frames
//! are several times larger than release ones (the release binaries replay every corpus
//! input within a 512 KiB stack).

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The corpus: seeds and regressions first, then the rest smallest first.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir: PathBuf = targets::repo_root().join("fuzz/corpus").join(target);
    let mut inputs: Vec<(bool, usize, String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is readable: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let data = std::fs::read(e.path()).unwrap();
            let kept = !(name.starts_with("seed-") || name.starts_with("regression-"));
            (kept, data.len(), name, data)
        })
        .collect();
    inputs.sort();
    assert!(
        inputs.iter().any(|i| !i.0) || inputs.is_empty(),
        "corpus {} has no seeds",
        dir.display()
    );
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    inputs.into_iter().map(|i| i.3).collect()
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

/// Replay the corpus (seeds always, the rest within `replay`), then mutate for `mutation`;
/// returns the number of executions. Runs on a thread with a large stack (see above).
fn run(target: &'static str, f: fn(&[u8]), replay: Duration, mutation: Duration) -> usize {
    std::thread::Builder::new()
        .name(target.into())
        .stack_size(64 << 20)
        .spawn(move || {
            let inputs = corpus(target);
            let seeds = inputs.len()
                - std::fs::read_dir(targets::repo_root().join("fuzz/corpus").join(target))
                    .unwrap()
                    .flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        !(n.starts_with("seed-") || n.starts_with("regression-"))
                    })
                    .count();
            let deadline = Instant::now() + replay;
            let mut replayed = 0;
            for (i, input) in inputs.iter().enumerate() {
                if i >= seeds && Instant::now() > deadline {
                    break;
                }
                f(input);
                replayed += 1;
            }
            let mut rng = fastrand::Rng::with_seed(0x0d93_f022);
            let deadline = Instant::now() + mutation;
            let mut mutated = 0;
            while Instant::now() < deadline {
                let a = &inputs[rng.usize(..inputs.len())];
                let b = &inputs[rng.usize(..inputs.len())];
                f(&mutate(&mut rng, a, b));
                mutated += 1;
            }
            eprintln!(
                "{target}: replayed {replayed} of {} corpus inputs, {mutated} mutations",
                inputs.len()
            );
            replayed + mutated
        })
        .unwrap()
        .join()
        .unwrap_or_else(|_| panic!("{target}: a target panicked (see above)"))
}

const REPLAY: Duration = Duration::from_millis(2000);
const MUTATION: Duration = Duration::from_millis(1000);

#[test]
fn datapoint_json_corpus() {
    assert!(run("datapoint_json", targets::datapoint_json, REPLAY, MUTATION) > 0);
}

#[test]
fn config_yaml_corpus() {
    assert!(run("config_yaml", targets::config_yaml, REPLAY, MUTATION) > 0);
}

#[test]
fn generic_filter_corpus() {
    assert!(run("generic_filter", targets::generic_filter, REPLAY, MUTATION) > 0);
}

#[test]
fn plugin_value_bytes_corpus() {
    assert!(
        run(
            "plugin_value_bytes",
            targets::plugin_value_bytes,
            REPLAY,
            MUTATION
        ) > 0
    );
}
