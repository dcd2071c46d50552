//! Durability: a child process commits batches in a loop and is SIGKILLed at a random
//! moment; after reopening, every batch it reported committed is there, and no batch is
//! partially there.
//!
//! The child is this test binary re-executed with `DP3_STORE_DURABILITY_CHILD=<db path>`,
//! running only `durability_child`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::{Bson, doc};
use chrono::Utc;
use dp3_model::{DataPoint, Eid};
use dp3_store::sqlite::SqliteStore;
use dp3_store::{Creation, EntityWrite, Store, WriteBatch, WriteOp};

const CHILD_ENV: &str = "DP3_STORE_DURABILITY_CHILD";
const PER_BATCH: u64 = 200;

fn eid(batch: u64, i: u64) -> Eid {
    Eid::String(format!("b{batch}-{i}"))
}

/// The child: commit batches forever, printing each batch number after commit returns.
#[test]
fn durability_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // only runs when re-executed by the parent test
    };
    let store = SqliteStore::open(std::path::Path::new(&path)).expect("child open");
    let start: u64 = store
        .get_meta("last_batch")
        .expect("meta")
        .and_then(|d| d.get_i64("n").ok())
        .map_or(1, |n| n as u64 + 1);
    for n in start.. {
        let mut b = WriteBatch::default();
        for i in 0..PER_BATCH {
            let e = eid(n, i);
            let mut w = EntityWrite::new("D", e.clone());
            w.create = Some(Creation {
                hash: e.hash("D"),
                time_created: Utc::now(),
            });
            w.plain
                .push(("batch".into(), Bson::Int64(n as i64), Utc::now()));
            b.ops.push(WriteOp::Entity(w));
            b.raw.push(DataPoint {
                etype: "D".into(),
                eid: e,
                attr: "batch".into(),
                src: None,
                v: Bson::Int64(n as i64),
                c: 1.0,
                t1: None,
                t2: None,
            });
        }
        b.meta.push(("last_batch".into(), doc! {"n": n as i64}));
        store.apply(&b).expect("child apply");
        println!("committed {n}");
    }
}

fn random_delay() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(200 + u64::from(nanos % 1300))
}

#[test]
fn committed_batches_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("durability.db");
    let exe = std::env::current_exe().expect("current exe");
    let mut reported = 0u64;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "durability_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("committed ").and_then(|n| n.parse().ok()) {
                    let _ = tx.send(n);
                }
            }
        });
        // wait until the child has committed something, then kill it at a random moment
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child commits");
        reported = reported.max(first);
        let deadline = Instant::now() + random_delay();
        while Instant::now() < deadline {
            if let Ok(n) = rx.recv_timeout(Duration::from_millis(5)) {
                reported = reported.max(n);
            }
        }
        child.kill().expect("SIGKILL child"); // Child::kill sends SIGKILL on Unix
        child.wait().expect("wait child");
        reader.join().expect("reader");
        while let Ok(n) = rx.try_recv() {
            reported = reported.max(n);
        }

        let store = SqliteStore::open(&path).expect("reopen after kill");
        let last = store
            .get_meta("last_batch")
            .expect("meta")
            .and_then(|d| d.get_i64("n").ok())
            .expect("last_batch present") as u64;
        assert!(
            last >= reported,
            "round {round}: reported {reported}, store has {last}"
        );
        for n in 1..=last {
            for i in [0, PER_BATCH / 2, PER_BATCH - 1] {
                assert!(
                    store.exists("D", &eid(n, i)).expect("exists"),
                    "round {round}: batch {n} (committed) lost entity {i}"
                );
            }
        }
        // the batch after the last committed one is absent entirely (no partial batch)
        for i in 0..PER_BATCH {
            assert!(
                !store.exists("D", &eid(last + 1, i)).expect("exists"),
                "round {round}: partial batch {} visible",
                last + 1
            );
        }
        assert_eq!(
            store.count_master("D").expect("count"),
            last * PER_BATCH,
            "round {round}: entity count"
        );
        reported = last;
        println!("round {round}: killed after batch {last}; all committed batches present");
    }
}
