//! Throughput of `POST /datapoints` parsing + validation: batches of 1,000 observation
//! datapoints (ipv4 eids, int and string values, t1/t2 strings, src, c) from JSON bytes.
//!
//! Run: `cargo bench -p dp3-model --bench datapoint_parse`. Criterion reports the rate in
//! elements (datapoints) per second.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dp3_model::validate::{group_into_tasks, parse_api_datapoints};
use dp3_model::{
    AttrKind, AttrSpec, DataType, EidType, EntitySpec, EntityType, HistoryParams, Lifetime,
    ModelSpec, Primitive,
};

fn observations(id: &str, p: Primitive) -> AttrSpec {
    AttrSpec {
        id: id.to_owned(),
        name: id.to_owned(),
        description: String::new(),
        ttl: None,
        kind: AttrKind::Observations {
            data_type: DataType::Primitive(p),
            editable: false,
            confidence: false,
            multi_value: false,
            history_params: HistoryParams::default(),
            history_force_graph: false,
        },
        data_type_str: Some(p.name().to_owned()),
        mirror_of: None,
    }
}

fn model() -> ModelSpec {
    let mut m = ModelSpec::default();
    m.entities.insert(
        "ip".to_owned(),
        EntityType {
            spec: EntitySpec {
                id: "ip".to_owned(),
                name: "ip".to_owned(),
                description: String::new(),
                snapshot: true,
                id_data_type: EidType::Ipv4,
                lifetime: Lifetime::Immortal,
            },
            attribs: [
                ("open_ports", observations("open_ports", Primitive::Int)),
                ("hostname", observations("hostname", Primitive::String)),
                ("score", observations("score", Primitive::Float)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        },
    );
    m
}

/// A realistic batch: alternating int / string / float observations from 250 addresses.
fn batch(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        let ip = format!("10.{}.{}.{}", i % 7, (i / 7) % 250, i % 250);
        let (attr, v) = match i % 3 {
            0 => ("open_ports", format!("{}", 20 + i % 1000)),
            1 => ("hostname", format!("\"host-{i}.example.com\"")),
            _ => ("score", format!("{}", (i % 100) as f64 / 7.0)),
        };
        let sec = i % 60;
        s.push_str(&format!(
            r#"{{"type":"ip","id":"{ip}","attr":"{attr}","v":{v},"t1":"2024-05-01T12:00:{sec:02}Z","t2":"2024-05-01T12:05:{sec:02}.250Z","src":"scanner","c":0.8}}"#
        ));
    }
    s.push(']');
    s.into_bytes()
}

/// On-CPU time of the current thread (Linux), so the figure is per core even when other
/// processes share the machine.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Print datapoints per second of thread CPU time (criterion's figure is wall-clock time).
fn report_cpu_throughput(model: &ModelSpec, body: &[u8]) {
    const ROUNDS: u64 = 2000;
    let wall = std::time::Instant::now();
    let Some(start) = thread_cpu_ns() else {
        return;
    };
    for _ in 0..ROUNDS {
        let _ = black_box(parse_api_datapoints(model, black_box(body)));
    }
    let Some(end) = thread_cpu_ns() else {
        return;
    };
    let cpu = end.saturating_sub(start).max(1) as f64 / 1e9;
    let n = (ROUNDS * 1000) as f64;
    println!(
        "datapoint_parse: {:.0} datapoints/s per core (CPU time), {:.0} datapoints/s wall-clock",
        n / cpu,
        n / wall.elapsed().as_secs_f64()
    );
}

fn bench(c: &mut Criterion) {
    let model = model();
    let body = batch(1000);
    assert_eq!(
        parse_api_datapoints(&model, &body).map(|d| d.len()),
        Ok(1000)
    );
    report_cpu_throughput(&model, &body);
    let mut g = c.benchmark_group("datapoint_parse");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("observations_1000", |b| {
        b.iter(|| parse_api_datapoints(&model, black_box(&body)))
    });
    g.bench_function("observations_1000_grouped", |b| {
        b.iter(|| {
            parse_api_datapoints(&model, black_box(&body))
                .map(group_into_tasks)
                .map(|t| t.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
