//! Write-path and read benchmarks of the SQLite store.
//!
//! `apply`: observation datapoints for random entities out of 10,000 (5 observation
//! attributes, ~20 stored items each after prefill), each datapoint one history push plus a
//! raw-log append, applied through `Store::apply` in batches of 50,000.
//! `get_master`: one master record with 100 history items.
//! Also prints on-disk bytes per datapoint and read latency percentiles.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bson::Bson;
use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dp3_model::{DataPoint, Eid, HistoryItem};
use dp3_store::sqlite::SqliteStore;
use dp3_store::{Creation, EntityWrite, Store, WriteBatch, WriteOp};

const ENTITIES: u64 = 10_000;
const ATTRS: [&str; 5] = ["open_ports", "seen_by", "speed", "label_obs", "risk"];
const BATCH: usize = 50_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn batch(rng: &mut Rng, n: usize, minute: &mut i64, create: bool) -> WriteBatch {
    let base = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let mut b = WriteBatch::default();
    for i in 0..n {
        let e = if create {
            (i as u64) % ENTITIES
        } else {
            rng.next() % ENTITIES
        };
        let eid = Eid::String(format!("entity-{e:05}"));
        let attr = ATTRS[(rng.next() % ATTRS.len() as u64) as usize];
        *minute += 1;
        let t1 = base + chrono::Duration::seconds(*minute);
        let t2 = t1 + chrono::Duration::minutes(5);
        let v = Bson::Int64((rng.next() % 65536) as i64);
        let mut w = EntityWrite::new("ip", eid.clone());
        if create && (i as u64) < ENTITIES {
            w.create = Some(Creation {
                hash: eid.hash("ip"),
                time_created: t1,
            });
        }
        w.history.push((
            attr.to_owned(),
            HistoryItem {
                t1,
                t2,
                v: v.clone(),
                c: Some(0.9),
            },
        ));
        b.ops.push(WriteOp::Entity(w));
        b.raw.push(DataPoint {
            etype: "ip".into(),
            eid,
            attr: attr.into(),
            src: Some("bench".into()),
            v,
            c: 0.9,
            t1: Some(t1),
            t2: Some(t2),
        });
    }
    b
}

/// `(on-CPU ns, run-queue wait ns)` of the current thread.
fn schedstat() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Bytes this process caused to be written to storage.
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("bench.db")).expect("open");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut minute = 0i64;
    // prefill: ~20 items per (entity, attr)
    let prefill = (ENTITIES as usize) * ATTRS.len() * 20;
    let start = Instant::now();
    let mut written = 0usize;
    let mut first = true;
    while written < prefill {
        let b = batch(&mut rng, BATCH, &mut minute, first);
        first = false;
        store.apply(&b).expect("prefill");
        written += BATCH;
    }
    let secs = start.elapsed().as_secs_f64();
    store.flush().expect("flush");
    let bytes = disk_bytes(dir.path());
    eprintln!(
        "prefill: {written} datapoints in {secs:.1} s = {:.0} dp/s; on disk {bytes} bytes = {:.0} bytes/datapoint (history row + raw row)",
        written as f64 / secs,
        bytes as f64 / written as f64
    );

    // The machine is shared (load average often above the core count), so besides wall
    // time report on-CPU time and run-queue wait of the applying thread and bytes written.
    let mut wall = Duration::ZERO;
    let (mut run_ns, mut wait_ns, mut wrote) = (0u64, 0u64, 0u64);
    const ROUNDS: usize = 10;
    for _ in 0..ROUNDS {
        let b = batch(&mut rng, BATCH, &mut minute, false);
        let (r0, w0) = schedstat();
        let io0 = write_bytes();
        let t = Instant::now();
        store.apply(&b).expect("apply");
        wall += t.elapsed();
        let (r1, w1) = schedstat();
        run_ns += r1 - r0;
        wait_ns += w1 - w0;
        wrote += write_bytes() - io0;
    }
    let n = (ROUNDS * BATCH) as f64;
    let secs = wall.as_secs_f64();
    let waited = wait_ns as f64 / 1e9;
    eprintln!(
        "apply {ROUNDS} x {BATCH}: wall {secs:.2} s = {:.0} dp/s; on-CPU {:.2} s; run-queue wait {waited:.2} s; \
         without run-queue wait {:.0} dp/s; written {:.0} bytes/dp",
        n / secs,
        run_ns as f64 / 1e9,
        n / (secs - waited).max(1e-9),
        wrote as f64 / n
    );

    let mut group = c.benchmark_group("write_path");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.bench_function("apply_50k_observation_datapoints", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let b = batch(&mut rng, BATCH, &mut minute, false);
                let t = Instant::now();
                store.apply(&b).expect("apply");
                total += t.elapsed();
            }
            total
        });
    });
    group.finish();

    // a record with 100 history items (5 attrs x 20)
    let hot = Eid::String("hot-entity".into());
    let mut w = EntityWrite::new("ip", hot.clone());
    let base = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    for i in 0..100i64 {
        w.history.push((
            ATTRS[(i % 5) as usize].to_owned(),
            HistoryItem {
                t1: base + chrono::Duration::minutes(i),
                t2: base + chrono::Duration::minutes(i + 1),
                v: Bson::Int64(i),
                c: Some(1.0),
            },
        ));
    }
    store
        .apply(&WriteBatch {
            ops: vec![WriteOp::Entity(w)],
            ..Default::default()
        })
        .expect("apply");
    let mut lat: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            black_box(store.get_master("ip", &hot).expect("get"));
            t.elapsed()
        })
        .collect();
    lat.sort();
    eprintln!(
        "get_master (100 history items): p50 {:?}, p99 {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    c.bench_function("get_master_100_history_items", |bench| {
        bench.iter(|| black_box(store.get_master("ip", &hot).expect("get")));
    });
}

criterion_group!(write_path, benches);
criterion_main!(write_path);
