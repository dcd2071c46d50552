//! Snapshot-run benchmark (issue: snapshots): 100,000 `host` entities, each with 5
//! observation attributes of ~20 datapoints and one observation link to one of 1,000 `site`
//! entities; a correlation hook reads the site's name through the link, so every host is
//! snapshotted as part of a linked component. The datapoints arrive in 20 rounds 5 minutes
//! apart (one per attribute per host per round), as over 100 minutes of real use. Prints
//! entities per second and memory, and checks a snapshot's content.
//!
//! Run: `cargo bench -p dp3 --bench snapshot_run` (env `DP3_BENCH_HOSTS` to change the size).
//! The populated store is cached under `target/bench-data/` between runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bson::{Bson, doc};
use chrono::{DateTime, TimeDelta, Utc};
use dp3::clock::ManualClock;
use dp3::plugins::{HookRegistryBuilder, LiveHooks, RegistrySettings};
use dp3::queue::{Accepted, SubmitError, TaskSubmitter};
use dp3::snapshot::SnapShooter;
use dp3::snapshot::hooks::SnapshotHookSource;
use dp3::wiring::LiveHookSource;
use dp3_model::config::load_config_dir;
use dp3_model::{DataPointTask, Eid, ModelSpec};
use dp3_plugin_api::Registrar;
use dp3_store::sqlite::SqliteStore;
use dp3_store::{Creation, EntityWrite, HistoryItem, LinkKey, LinkOp, Store, WriteBatch, WriteOp};

#[path = "../src/snapshot/test_platform.rs"]
mod test_platform;
use test_platform::write_platform_files;

// The allocator of the `dp3` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ATTRS: [&str; 5] = ["cpu", "mem", "disk", "temp", "load"];

fn write_config(dir: &Path) {
    write_platform_files(dir);
    let mut host = String::from(
        "entity: {id: host, name: Host, id_data_type: int, snapshot: true}\nattribs:\n",
    );
    for a in ATTRS {
        host.push_str(&format!(
            "  {a}: {{name: {a}, type: observations, data_type: float, history_params: {{pre_validity: 10m, post_validity: 10m}}}}\n"
        ));
    }
    host.push_str("  site: {name: site, type: observations, data_type: link<site>, history_params: {post_validity: 1d}}\n");
    host.push_str("  site_name: {name: site name, type: plain, data_type: string}\n");
    std::fs::write(dir.join("db_entities/host.yml"), host).unwrap();
    std::fs::write(
        dir.join("db_entities/site.yml"),
        "entity: {id: site, name: Site, snapshot: true}\nattribs:\n  name: {name: name, type: plain, data_type: string}\n",
    )
    .unwrap();
}

/// Rounds of datapoints: every host gets one datapoint per attribute per round, 5 minutes
/// apart, as data arriving over time (so one entity's rows are spread over the store as in
/// real use, not stored next to each other).
const ROUNDS: i64 = 20;

fn populate(store: &dyn Store, hosts: i64, sites: i64, now: DateTime<Utc>) {
    let mut batch = WriteBatch::default();
    let flush = |b: &mut WriteBatch| {
        store.apply(b).unwrap();
        *b = WriteBatch::default();
    };
    for s in 0..sites {
        let eid = Eid::String(format!("site{s}"));
        let mut w = EntityWrite::new("site", eid.clone());
        w.create = Some(Creation {
            hash: eid.hash("site"),
            time_created: now,
        });
        w.plain
            .push(("name".into(), Bson::String(format!("Site #{s}")), now));
        batch.ops.push(WriteOp::Entity(w));
    }
    flush(&mut batch);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let t1 = now - TimeDelta::minutes(5 * (ROUNDS - round));
        for h in 0..hosts {
            let eid = Eid::Int(h);
            let mut w = EntityWrite::new("host", eid.clone());
            for a in ATTRS {
                w.history.push((
                    a.to_string(),
                    HistoryItem {
                        t1,
                        t2: t1 + TimeDelta::minutes(5),
                        v: Bson::Double((h * 7 + round) as f64 / 3.0),
                        c: Some(0.9),
                    },
                ));
            }
            if round == 0 {
                w.create = Some(Creation {
                    hash: eid.hash("host"),
                    time_created: now,
                });
                let site = Eid::String(format!("site{}", h % sites));
                w.history.push((
                    "site".into(),
                    HistoryItem {
                        t1: now - TimeDelta::hours(2),
                        t2: now,
                        v: Bson::Document(doc! {"eid": site.to_bson()}),
                        c: Some(1.0),
                    },
                ));
                batch.ops.push(WriteOp::Link(LinkOp::Upsert {
                    from: LinkKey::new("host", eid.clone()),
                    to: LinkKey::new("site", site),
                    using_attr: "host#site".into(),
                    ttl: now + TimeDelta::days(1),
                }));
            }
            batch.ops.push(WriteOp::Entity(w));
            if batch.ops.len() >= 2000 {
                flush(&mut batch);
            }
        }
        flush(&mut batch);
        eprintln!(
            "  populated round {}/{ROUNDS} ({:.0} datapoints/s)",
            round + 1,
            ((round + 1) * hosts * 5) as f64 / started.elapsed().as_secs_f64()
        );
    }
}

/// One correlation hook, registered through the real `Registrar` and `HookRegistry`:
/// `host.site_name := site.name` through the link.
fn hooks(model: &Arc<ModelSpec>) -> LiveHookSource {
    let mut r = Registrar::new("bench");
    r.correlation(
        "copy_site_name",
        "host",
        vec![vec!["site".into(), "name".into()]],
        vec![vec!["site_name".into()]],
        |_etype, values| {
            let name = values
                .get_document("site")
                .ok()
                .and_then(|l| l.get_document("record").ok())
                .and_then(|r| r.get_str("name").ok())
                .map(str::to_owned);
            if let Some(n) = name {
                values.insert("site_name", n);
            }
            Ok(Vec::new())
        },
    );
    let mut builder = HookRegistryBuilder::new(model.clone(), RegistrySettings::default());
    let errors = builder.add_module("bench", r.into_registrations());
    assert!(errors.is_empty(), "{errors:?}");
    let (registry, errors) = builder.build();
    assert!(errors.is_empty(), "{errors:?}");
    LiveHookSource {
        live: Arc::new(LiveHooks::new(registry)),
        telemetry: None,
    }
}

struct Sink;
impl TaskSubmitter for Sink {
    fn submit(&self, _tasks: Vec<DataPointTask>) -> Result<Accepted, SubmitError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Ok(()));
        Ok(rx)
    }
}

fn rss_mib() -> f64 {
    dp3::metrics::resident_memory_bytes().unwrap_or(0) as f64 / 1048576.0
}

/// A memory figure of `/proc/self/status` in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Anonymous resident memory (the process's own heap; the rest of RSS is pages of the
/// store file mapped by SQLite readers, which the kernel reclaims as needed).
fn anon_mib() -> f64 {
    status_mib("RssAnon:")
}

/// CPU time (user + system) used by this process so far (Linux `/proc/self/stat`, in the
/// kernel's 100 Hz ticks): with other work on the machine, CPU per entity is steadier than
/// throughput.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn main() {
    let hosts: i64 = std::env::var("DP3_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sites = (hosts / 100).max(1);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/bench-data/snapshots-{hosts}"));
    let cfg_dir = root.join("config");
    write_config(&cfg_dir);
    let config = load_config_dir(&cfg_dir).unwrap_or_else(|e| panic!("{e}"));
    let model = Arc::new(config.model);
    let db = root.join("dp3.sqlite");
    // The data's "now" is kept with the cached store and runs happen just after it, so a
    // cached store gives the same figures as a fresh one (observations stay current).
    let stamp = root.join("populated_at");
    let cached = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
        .filter(|_| db.exists());
    let store: Arc<dyn Store> = match cached {
        Some(_) => Arc::new(SqliteStore::open(&db).unwrap()),
        None => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(root.join(format!("dp3.sqlite{suffix}")));
            }
            Arc::new(SqliteStore::open(&db).unwrap())
        }
    };
    let now = match cached {
        Some(t) => t.with_timezone(&Utc),
        None => {
            let now = Utc::now();
            eprintln!(
                "populating {hosts} hosts and {sites} sites (cached in {})…",
                root.display()
            );
            populate(&*store, hosts, sites, now);
            std::fs::write(&stamp, now.to_rfc3339()).unwrap();
            now
        }
    };
    // Peak of the process's own memory, sampled while the runs go.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0f64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(anon_mib());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    let clock = ManualClock::new(now + TimeDelta::seconds(1));
    let source: Arc<dyn SnapshotHookSource> = Arc::new(hooks(&model));
    for threads in [1usize, 2] {
        clock.advance(TimeDelta::seconds(1));
        let shooter = SnapShooter::new(
            model.clone(),
            store.clone(),
            source.clone(),
            Arc::new(Sink),
            Arc::new(clock.clone()),
            true,
            threads,
        );
        let rss_before = rss_mib();
        let cpu_before = cpu_seconds();
        let report = shooter.run().unwrap();
        let secs = report.duration.as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        println!(
            "snapshot run, {threads} thread(s): {} entities ({} linked components) in {secs:.2} s = {:.0} entities/s; CPU {cpu:.2} s ({:.1} µs per entity); resident memory {rss_before:.0} MiB before, {:.0} MiB after ({:.0} MiB anonymous)",
            report.entities,
            report.components,
            report.entities as f64 / secs,
            cpu * 1e6 / report.entities as f64,
            rss_mib(),
            anon_mib()
        );
        let p = &report.phases;
        println!(
            "  phases: finding components {:.2} s, linked components {:.2} s, other entities {:.2} s",
            p.find_components.as_secs_f64(),
            p.linked.as_secs_f64(),
            p.linkless.as_secs_f64()
        );
        assert_eq!(report.failures, 0);
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_anon = sampler.join().unwrap();
    println!(
        "peak anonymous memory {peak_anon:.0} MiB; peak resident {:.0} MiB (counts the store \
         file's pages once per reader connection that maps them: shared page cache)",
        status_mib("VmHWM:")
    );
    // The figures count real work: a snapshot has every current value and the correlated
    // site name.
    let snap = store
        .latest_snapshot("host", &Eid::Int(hosts / 2))
        .unwrap()
        .expect("host snapshot");
    for key in ATTRS.iter().flat_map(|a| [a.to_string(), format!("{a}#c")]) {
        assert!(snap.contains_key(&key), "{key} missing from {snap}");
    }
    assert_eq!(
        snap.get_str("site_name").ok(),
        Some(format!("Site #{}", (hosts / 2) % sites).as_str()),
        "{snap}"
    );
}
