//! The fuzz targets' bodies, shared by the libFuzzer binaries (`fuzz/fuzz_targets/*.rs`) and
//! the corpus replay test of the main test suite (`tests/fault_fuzz_replay.rs`, which
//! includes this file with `#[path]`). Each function takes arbitrary bytes, must never panic,
//! and asserts properties that must hold for every input.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bson::{Bson, Document, doc};
use dp3_model::ModelSpec;
use dp3_model::config::{Config, load_config_dir};

/// The repository root (this file is `fuzz/src/targets.rs`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("tests/fixtures/dp3-test-config").is_dir())
        .expect("the repository root is an ancestor of the crate")
        .to_path_buf()
}

/// DP3's test configuration, loaded once.
pub fn test_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        load_config_dir(&repo_root().join("tests/fixtures/dp3-test-config"))
            .expect("DP3's test configuration loads")
    })
}

pub fn test_model() -> &'static ModelSpec {
    &test_config().model
}

// --------------------------------------------------------------------------- datapoints

/// Datapoint JSON (a `POST /datapoints` body) → body limits → validation. Every accepted
/// datapoint names a configured entity type and attribute, and regrouping into tasks keeps
/// every datapoint.
pub fn datapoint_json(data: &[u8]) {
    let _ = dp3::api::limits::check_json_limits(data, &dp3::api::limits::JsonLimits::default());
    let model = test_model();
    match dp3_model::validate::parse_api_datapoints(model, data) {
        Ok(dps) => {
            for dp in &dps {
                let et = model
                    .entity(&dp.etype)
                    .unwrap_or_else(|| panic!("accepted unknown entity type {:?}", dp.etype));
                assert!(
                    et.attribs.contains_key(&dp.attr),
                    "accepted unknown attribute {}/{}",
                    dp.etype,
                    dp.attr
                );
            }
            let n = dps.len();
            let tasks = dp3_model::validate::group_into_tasks(dps);
            let regrouped: usize = tasks.iter().map(|t| t.data_points.len()).sum();
            assert_eq!(regrouped, n, "grouping into tasks lost datapoints");
        }
        Err(errors) => assert!(!errors.is_empty(), "a rejection names at least one error"),
    }
}

// --------------------------------------------------------------------------- config

/// The files a configuration input may replace, selected by its first byte.
const CONFIG_FILES: [&str; 8] = [
    "api.yml",
    "processing_core.yml",
    "history_manager.yml",
    "snapshots.yml",
    "db_entities/A.yml",
    "db_entities/test_entity_type.yml",
    "control.yml",
    "database.yml",
];

/// Configuration YAML: DP3's test configuration with one file replaced by the input. Loading
/// either succeeds or reports at least one error; it never panics.
pub fn config_yaml(data: &[u8]) {
    let Some((&selector, yaml)) = data.split_first() else {
        return;
    };
    let file = CONFIG_FILES[usize::from(selector) % CONFIG_FILES.len()];
    thread_local! {
        static DIR: tempfile::TempDir = {
            let dir = tempfile::tempdir().expect("temporary directory");
            copy_dir(&repo_root().join("tests/fixtures/dp3-test-config"), dir.path());
            dir
        };
    }
    DIR.with(|dir| {
        let path = dir.path().join(file);
        let original = std::fs::read(&path).ok();
        std::fs::write(&path, yaml).expect("write the fuzzed file");
        let result = load_config_dir(dir.path());
        if let Err(errors) = &result {
            assert!(!errors.is_empty(), "a failed load reports an error");
            // Rendering the errors must not panic either.
            let _ = errors.to_string();
        }
        match original {
            Some(bytes) => std::fs::write(&path, bytes).expect("restore the file"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

// --------------------------------------------------------------------------- filters

/// Sample snapshots the fuzzed filters are matched against.
fn sample_docs() -> Vec<Document> {
    vec![
        doc! {"eid": "e1", "test_attr_string": "abc", "test_attr_int": 5_i64,
        "test_attr_array": [1, 2, 3], "nested": {"a": {"b": [1, "x", null]}}},
        doc! {"eid": "e2", "test_attr_float": 1.5, "test_attr_bool": true},
        doc! {},
    ]
}

/// Generic filter parsing and matching: the input as a JSON `generic_filter` (and as a
/// `fulltext_filters`) goes through the API's checks and query building; a query that is
/// built is compiled by the store's matcher and run against sample documents. Additionally,
/// the input read as a BSON document is compiled and matched directly.
pub fn generic_filter(data: &[u8]) {
    let et = test_model()
        .entity("test_entity_type")
        .expect("test_entity_type is configured");
    let docs = sample_docs();
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        for (fulltext, generic) in [(None, Some(json.clone())), (Some(json), None)] {
            let Ok(filters) = dp3::api::filters::check_filters(fulltext, generic) else {
                continue;
            };
            let Ok(query) = dp3::api::filters::build_query(et, filters) else {
                continue;
            };
            if let Ok(filter) = dp3_store::filter::Filter::new(&query) {
                for d in &docs {
                    let _ = filter.matches(d);
                }
            }
        }
    }
    if let Ok(query) = Document::from_reader(data) {
        let mut query = query;
        let _ = dp3_store::filter::replace_magic_strings(&mut query);
        if let Ok(filter) = dp3_store::filter::Filter::new(&query) {
            for d in &docs {
                let _ = filter.matches(d);
            }
        }
    }
}

// --------------------------------------------------------------------------- plugin bytes

/// Bytes returned by a module across the plugin boundary (a value element): decoding never
/// panics, and what decodes re-encodes to something that decodes to the same value.
pub fn plugin_value_bytes(data: &[u8]) {
    use dp3_plugin_api::__private::{decode_value, encode_value};
    let Ok(value) = decode_value(data) else {
        return;
    };
    let mut out = Vec::new();
    if encode_value(&value, &mut out).is_err() {
        return;
    }
    let again = decode_value(&out).expect("a re-encoded value decodes");
    assert!(
        same_value(&value, &again),
        "value changed across a round trip: {value:?} vs {again:?}"
    );
    // A decoded value is validated against each data type before the host uses it.
    let model = test_model();
    if let Some(et) = model.entity("test_entity_type") {
        for dt in et.attribs.values().filter_map(|a| a.data_type()) {
            let _ = dp3_model::validate::normalize_bson(model, dt, value.clone());
        }
    }
}

/// Equality where NaN equals NaN (a NaN double survives a round trip bit for bit).
fn same_value(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits() || x == y,
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Bson::Document(x), Bson::Document(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
        }
        _ => a == b,
    }
}
