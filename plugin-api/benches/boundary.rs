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
    let file = format!("{}derive_category{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
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
    assert_eq!(ffi(&eid, &dp).expect("ffi call"), same_conversion(&eid, &dp).expect("in-process call"));

    let mut g = c.benchmark_group("on_new_attr");
    g.bench_function("across_library_boundary", |b| b.iter(|| black_box(ffi(black_box(&eid), black_box(&dp)))));
    g.bench_function("in_process_same_conversion", |b| {
        b.iter(|| black_box(same_conversion(black_box(&eid), black_box(&dp))))
    });
    g.bench_function("in_process_no_conversion", |b| b.iter(|| black_box(direct(black_box(&eid), black_box(&dp)))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
