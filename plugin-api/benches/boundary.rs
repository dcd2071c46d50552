//! Cost of an `on_new_attr` call across the module-library boundary (datapoint in, one task
//! out) versus the same closure called in-process with the same data conversion.
//!
//! Needs the example module built in the same profile first:
//! `cargo build --release -p derive_category && cargo bench -p dp3-plugin-api --features host`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use dp3_plugin_api::hooks::AttrHookFn;
use dp3_plugin_api::host::{LoadOptions, TracingServices, load_library};
use dp3_plugin_api::model::value::as_int;
use dp3_plugin_api::{Bson, DataPoint, DataPointTask, Eid, Hook, HookError, Utc};

fn library() -> PathBuf {
    let file = format!(
        "{}derive_category{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("bench executable");
    let profile = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let p = profile.join(&file);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --profile <same profile> -p derive_category` first",
        p.display()
    );
    p
}

/// The same logic as `plugins/derive_category` with the same (default) configuration.
fn in_process_hook() -> AttrHookFn {
    let rules: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    Arc::new(move |_eid: &Eid, dp: &DataPoint| {
        let port = as_int(&dp.v).ok_or_else(|| HookError::new("not an int"))?;
        let category = rules
            .iter()
            .find(|(_, ports)| ports.contains(&port))
            .map_or("unknown", |(c, _)| c.as_str());
        Ok(vec![DataPointTask {
            etype: dp.etype.clone(),
            eid: dp.eid.clone(),
            data_points: vec![DataPoint {
                etype: dp.etype.clone(),
                eid: dp.eid.clone(),
                attr: "category".into(),
                src: Some("derive_category".into()),
                v: Bson::String(category.to_owned()),
                c: dp.c,
                t1: dp.t1,
                t2: dp.t2,
            }],
            ..DataPointTask::default()
        }])
    })
}

fn datapoint() -> DataPoint {
    let t1 = Utc::now();
    DataPoint {
        etype: "ip".into(),
        eid: Eid::Ipv4("192.0.2.10".parse().expect("ip")),
        attr: "open_ports".into(),
        src: Some("scanner".into()),
        v: Bson::Int32(443),
        c: 0.9,
        t1: Some(t1),
        t2: Some(t1),
    }
}

fn bench(c: &mut Criterion) {
    let mut opts = LoadOptions::new(Arc::new(TracingServices::default()));
    opts.check_permissions = false;
    let lib = load_library(&library(), &opts).expect("derive_category loads");
    let ffi = lib
        .instance
        .registrar
        .registrations()
        .iter()
        .find_map(|r| match &r.hook {
            Hook::OnNewAttr { hook, .. } => Some(Arc::clone(hook)),
            _ => None,
        })
        .expect("on_new_attr hook");
    let same_conversion = dp3_plugin_api::__private::through_codec_attr(in_process_hook());
    let direct = in_process_hook();
    let dp = datapoint();
    let eid = dp.eid.clone();
    assert_eq!(
        ffi(&eid, &dp).expect("ffi call"),
        same_conversion(&eid, &dp).expect("in-process call")
    );

    let mut g = c.benchmark_group("on_new_attr");
    g.bench_function("across_library_boundary", |b| {
        b.iter(|| black_box(ffi(black_box(&eid), black_box(&dp))))
    });
    g.bench_function("in_process_same_conversion", |b| {
        b.iter(|| black_box(same_conversion(black_box(&eid), black_box(&dp))))
    });
    g.bench_function("in_process_no_conversion", |b| {
        b.iter(|| black_box(direct(black_box(&eid), black_box(&dp))))
    });
    g.finish();

    // Wall-clock figures above are inflated when the machine is shared; CPU time spent on
    // this thread (from /proc/thread-self/schedstat) is not.
    let iters = 300_000;
    let ffi_ns = cpu_ns_per_call(iters, || {
        black_box(ffi(black_box(&eid), black_box(&dp))).map(|_| ())
    });
    let same_ns = cpu_ns_per_call(iters, || {
        black_box(same_conversion(black_box(&eid), black_box(&dp))).map(|_| ())
    });
    let direct_ns = cpu_ns_per_call(iters, || {
        black_box(direct(black_box(&eid), black_box(&dp))).map(|_| ())
    });
    if let (Some(f), Some(s), Some(d)) = (ffi_ns, same_ns, direct_ns) {
        println!(
            "CPU time per call: across the boundary {f:.0} ns, in-process with the same conversion {s:.0} ns \
             (boundary throughput = {:.1}% of in-process), in-process without conversion {d:.0} ns",
            100.0 * s / f
        );
    }
}

/// Average CPU time per call of `f` on this thread, in ns (None where schedstat is missing).
fn cpu_ns_per_call<E>(iters: u32, mut f: impl FnMut() -> Result<(), E>) -> Option<f64> {
    fn thread_cpu_ns() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        s.split_whitespace().next()?.parse().ok()
    }
    for _ in 0..iters / 10 {
        let _ = f();
    }
    let start = thread_cpu_ns()?;
    for _ in 0..iters {
        let _ = f();
    }
    let end = thread_cpu_ns()?;
    Some((end - start) as f64 / f64::from(iters))
}

criterion_group!(benches, bench);
criterion_main!(benches);
