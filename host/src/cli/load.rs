//! `dp3 load`: a load generator. It reads a configuration directory, generates realistic
//! datapoints for its entity model (plain values, observations, timeseries with correct
//! `t2`, links to other entities of the pool), POSTs them in batches from several
//! connections, shows a progress bar, and prints throughput (accepted by HTTP, and applied to
//! master records as reported by the server's `/metrics`) and latency percentiles.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{TimeDelta, Utc};
use dp3_model::{AttrKind, DataType, EidType, ModelSpec, Primitive, TimeseriesType};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Options of `dp3 load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of the dp3 API.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub url: String,
    /// Configuration directory whose entity model the datapoints follow.
    #[arg(long, default_value = "config")]
    pub config: PathBuf,
    /// Total number of datapoints to send.
    #[arg(long, default_value_t = 1_000_000)]
    pub datapoints: u64,
    /// Datapoints per POST.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Parallel connections.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Size of the entity pool per entity type.
    #[arg(long, default_value_t = 10_000)]
    pub entities: u64,
    /// Target rate in datapoints per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Do not wait for the server to apply everything.
    #[arg(long)]
    pub no_wait: bool,
    /// Random seed (the same seed generates the same datapoints).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The figures of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub sent: u64,
    pub accepted: u64,
    pub rejected_requests: u64,
    pub overloaded_requests: u64,
    pub send_secs: f64,
    pub applied_secs: Option<f64>,
    pub latencies_ms: Vec<f64>,
    pub server_rss_bytes: Option<u64>,
}

impl LoadReport {
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_ms.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ms[idx.min(self.latencies_ms.len() - 1)]
    }
}

pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    let config = super::load_config(&args.config)?;
    check_reachable(&args.url)?;
    let report = generate_load(args, &config.model)?;
    let per_sec = report.accepted as f64 / report.send_secs.max(1e-9);
    println!();
    println!("datapoints sent:            {}", report.sent);
    println!("datapoints accepted (200):  {}", report.accepted);
    println!("requests rejected (4xx):    {}", report.rejected_requests);
    println!("requests overloaded (503):  {}", report.overloaded_requests);
    println!("accept throughput:          {per_sec:.0} datapoints/s");
    if let Some(applied) = report.applied_secs {
        println!(
            "end-to-end throughput:      {:.0} datapoints/s (accepted and applied to master records in {applied:.2} s)",
            report.accepted as f64 / applied.max(1e-9)
        );
    }
    println!(
        "POST latency ({} dp):      p50 {:.1} ms · p90 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        args.batch,
        report.percentile(0.50),
        report.percentile(0.90),
        report.percentile(0.99),
        report.percentile(1.0)
    );
    if let Some(rss) = report.server_rss_bytes {
        println!(
            "server resident memory:     {:.1} MiB",
            rss as f64 / 1048576.0
        );
    }
    Ok(())
}

/// Send the load and measure it.
pub fn generate_load(args: &LoadArgs, model: &ModelSpec) -> anyhow::Result<LoadReport> {
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be positive");
    }
    let generator = Generator::new(model, args.entities.max(1))?;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!("{}/datapoints", args.url.trim_end_matches('/'));
    let applied_before = applied_datapoints(&http, &args.url);

    // Pre-generate a pool of request bodies so the generator does not compete with the
    // server for CPU during the measurement.
    let pool_size = 64usize;
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let bodies: Vec<Arc<Vec<u8>>> = (0..pool_size)
        .map(|_| {
            let batch: Vec<Value> = (0..args.batch)
                .map(|_| generator.datapoint(&mut rng))
                .collect();
            Arc::new(serde_json::to_vec(&batch).unwrap_or_default())
        })
        .collect();

    let total_requests = args.datapoints.div_ceil(args.batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total_requests as usize)));
    let bar = ProgressBar::new(total_requests * args.batch as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} datapoints ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.concurrency {
            let (next, accepted, rejected, overloaded, latencies) = (
                next.clone(),
                accepted.clone(),
                rejected.clone(),
                overloaded.clone(),
                latencies.clone(),
            );
            let (http, url, bodies, bar) = (&http, &url, &bodies, &bar);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total_requests {
                        break;
                    }
                    if args.rate > 0 {
                        // Pace requests: request i is due at i * batch / rate seconds.
                        let due = Duration::from_secs_f64(
                            i as f64 * args.batch as f64 / args.rate as f64,
                        );
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let body = bodies[(i as usize) % bodies.len()].clone();
                    loop {
                        let t0 = Instant::now();
                        let res = http
                            .post(url.as_str())
                            .header("content-type", "application/json")
                            .body((*body).clone())
                            .send();
                        let ms = t0.elapsed().as_secs_f64() * 1000.0;
                        match res.map(|r| r.status().as_u16()) {
                            Ok(200) => {
                                latencies.lock().push(ms);
                                accepted.fetch_add(args.batch as u64, Ordering::Relaxed);
                                break;
                            }
                            Ok(503) => {
                                overloaded.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            Ok(_) => {
                                rejected.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(_) => {
                                rejected.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    bar.inc(args.batch as u64);
                }
            });
        }
    });
    let send_secs = started.elapsed().as_secs_f64();
    bar.finish();
    let accepted = accepted.load(Ordering::Relaxed);

    let applied_secs = match (args.no_wait, applied_before) {
        (false, Some(before)) => {
            let target = before + accepted;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                match applied_datapoints(&http, &args.url) {
                    Some(n) if n >= target => break Some(started.elapsed().as_secs_f64()),
                    _ if Instant::now() > deadline => break None,
                    // Each poll is a `/metrics` scrape, which costs the server CPU the
                    // writer needs; 50 ms is fine resolution for runs of seconds.
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        _ => None,
    };
    let mut latencies_ms = std::mem::take(&mut *latencies.lock());
    latencies_ms.sort_by(f64::total_cmp);
    Ok(LoadReport {
        sent: total_requests * args.batch as u64,
        accepted,
        rejected_requests: rejected.load(Ordering::Relaxed),
        overloaded_requests: overloaded.load(Ordering::Relaxed),
        send_secs,
        applied_secs,
        latencies_ms,
        server_rss_bytes: metric(&http, &args.url, "dp3_process_resident_memory_bytes")
            .map(|v| v as u64),
    })
}

/// `dp3_datapoints_applied_total` from the server's `/metrics`.
fn applied_datapoints(http: &reqwest::blocking::Client, base: &str) -> Option<u64> {
    metric(http, base, "dp3_datapoints_applied_total").map(|v| v as u64)
}

fn metric(http: &reqwest::blocking::Client, base: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{}/metrics", base.trim_end_matches('/')))
        .send()
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Generates datapoints that follow an entity model.
struct Generator {
    /// (etype, eid type, writable attributes)
    types: Vec<(String, EidType, Vec<GenAttr>)>,
    /// eid pool size per type
    pool: u64,
    model_eid_types: std::collections::HashMap<String, EidType>,
}

struct GenAttr {
    id: String,
    kind: AttrKind,
}

impl Generator {
    fn new(model: &ModelSpec, pool: u64) -> anyhow::Result<Generator> {
        let mut types = Vec::new();
        for (etype, et) in &model.entities {
            let attrs: Vec<GenAttr> = et
                .attribs
                .values()
                .filter(|a| !a.is_read_only())
                .map(|a| GenAttr {
                    id: a.id.clone(),
                    kind: a.kind.clone(),
                })
                .collect();
            if !attrs.is_empty() {
                types.push((etype.clone(), et.spec.id_data_type, attrs));
            }
        }
        if types.is_empty() {
            bail!("the configuration has no entity type with writable attributes");
        }
        let model_eid_types = model
            .entities
            .iter()
            .map(|(k, v)| (k.clone(), v.spec.id_data_type))
            .collect();
        Ok(Generator {
            types,
            pool,
            model_eid_types,
        })
    }

    fn eid(&self, ty: EidType, rng: &mut fastrand::Rng) -> Value {
        let n = rng.u64(0..self.pool);
        match ty {
            EidType::String => json!(format!("e{n}")),
            EidType::Int => json!(n),
            EidType::Ipv4 => json!(format!(
                "10.{}.{}.{}",
                (n >> 16) & 255,
                (n >> 8) & 255,
                n & 255
            )),
            EidType::Ipv6 => json!(format!("2001:db8::{:x}", n)),
            EidType::Mac => json!(format!(
                "02:00:00:{:02x}:{:02x}:{:02x}",
                (n >> 16) & 255,
                (n >> 8) & 255,
                n & 255
            )),
        }
    }

    fn datapoint(&self, rng: &mut fastrand::Rng) -> Value {
        let (etype, eid_type, attrs) = &self.types[rng.usize(0..self.types.len())];
        let attr = &attrs[rng.usize(0..attrs.len())];
        let now = Utc::now();
        let mut dp =
            json!({"type": etype, "id": self.eid(*eid_type, rng), "attr": attr.id, "src": "load"});
        match &attr.kind {
            AttrKind::Plain { data_type, .. } => {
                dp["v"] = self.value(data_type, rng);
            }
            AttrKind::Observations { data_type, .. } => {
                let t1 = now - TimeDelta::seconds(rng.i64(0..600));
                dp["v"] = self.value(data_type, rng);
                dp["t1"] = json!(t1.to_rfc3339());
                dp["t2"] = json!((t1 + TimeDelta::seconds(60)).to_rfc3339());
                dp["c"] = json!(0.9);
            }
            AttrKind::Timeseries {
                timeseries_type,
                series,
                timeseries_params,
            } => {
                let n = 3usize;
                let step = timeseries_params
                    .time_step
                    .unwrap_or(TimeDelta::seconds(60));
                let t1 = now - step * n as i32;
                let mut v = serde_json::Map::new();
                for (name, ty) in series {
                    let vals: Vec<Value> = (0..n)
                        .map(|i| match (name.as_str(), ty) {
                            ("time" | "time_first", _) => {
                                json!((t1 + step * i as i32).to_rfc3339())
                            }
                            ("time_last", _) => json!((t1 + step * (i as i32 + 1)).to_rfc3339()),
                            (_, p) => self.value(&DataType::Primitive(*p), rng),
                        })
                        .collect();
                    v.insert(name.clone(), Value::Array(vals));
                }
                let t2 = match timeseries_type {
                    TimeseriesType::Regular => t1 + step * n as i32,
                    _ => t1 + step * (n as i32 + 1),
                };
                dp["v"] = Value::Object(v);
                dp["t1"] = json!(t1.to_rfc3339());
                dp["t2"] = json!(t2.to_rfc3339());
            }
        }
        dp
    }

    fn value(&self, dt: &DataType, rng: &mut fastrand::Rng) -> Value {
        match dt {
            DataType::Primitive(p) => match p {
                Primitive::Tag | Primitive::Binary => json!(rng.bool()),
                Primitive::String => json!(format!("value-{}", rng.u32(0..1000))),
                Primitive::Int | Primitive::Int64 => json!(rng.i64(0..65536)),
                Primitive::Float => json!(rng.f64() * 100.0),
                Primitive::Time => json!(Utc::now().to_rfc3339()),
                Primitive::Ipv4 => json!(format!("192.0.2.{}", rng.u8(1..255))),
                Primitive::Ipv6 => json!(format!("2001:db8:1::{:x}", rng.u16(..))),
                Primitive::Mac => json!(format!("02:00:5e:00:53:{:02x}", rng.u8(..))),
                Primitive::Special | Primitive::Json => json!({"n": rng.u32(0..100)}),
            },
            DataType::Category { members, .. } => members
                .get(rng.usize(0..members.len().max(1)))
                .map(dp3_model::value::to_api_json)
                .unwrap_or(Value::Null),
            DataType::Link { etype, data, .. } => {
                let ty = self.model_eid_types.get(etype).copied().unwrap_or_default();
                let mut v = json!({"eid": self.eid(ty, rng)});
                if let Some(d) = data {
                    v["data"] = self.value(d, rng);
                }
                v
            }
            DataType::Array(e) | DataType::Set(e) => {
                json!([self.value(e, rng), self.value(e, rng)])
            }
            DataType::Dict(fields) => {
                let mut m = serde_json::Map::new();
                for f in fields {
                    m.insert(f.name.clone(), self.value(&DataType::Primitive(f.ty), rng));
                }
                Value::Object(m)
            }
        }
    }
}

/// Fail early, naming the URL, when nothing answers there.
fn check_reachable(url: &str) -> anyhow::Result<()> {
    reqwest::blocking::get(url).with_context(|| format!("dp3 API at {url} is not reachable"))?;
    Ok(())
}
