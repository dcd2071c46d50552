//! Property tests: validation never panics on arbitrary input, the raw fast path agrees with
//! the general value validator, accepted datapoints survive the wire JSON round trip, and the
//! datetime parser inverts RFC 3339 formatting.

mod support;

use chrono::{DateTime, SecondsFormat, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value as Json, json};

use dp3_model::time::parse_datetime_str;
use dp3_model::validate::{
    group_into_tasks, parse_api_datapoints, task_from_wire_json, task_to_wire_json,
    validate_raw_value, validate_value,
};
use support::model::test_model;

fn arb_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(Json::from),
        ".{0,12}".prop_map(Json::String),
        prop_oneof![
            Just("2024-05-01T12:00:00Z"),
            Just("2024-05-01"),
            Just("1.2.3.4"),
            Just("::1"),
            Just("aa:bb:cc:dd:ee:ff"),
            Just("cat1"),
            Just("12"),
            Just("nan"),
            Just("{\"a\":1}"),
        ]
        .prop_map(|s| Json::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("eid".to_owned()),
                        Just("data".to_owned()),
                        Just("key1".to_owned()),
                        Just("key2".to_owned()),
                        Just("value".to_owned()),
                        Just("time".to_owned()),
                        "[a-z]{1,4}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Json::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Attribute names of the test model (and a few unknown ones).
fn arb_target() -> impl Strategy<Value = (String, String)> {
    let model = test_model();
    let mut pairs: Vec<(String, String)> = model
        .entities
        .iter()
        .flat_map(|(e, et)| et.attribs.keys().map(move |a| (e.clone(), a.clone())))
        .collect();
    pairs.push(("nope".into(), "x".into()));
    pairs.push(("A".into(), "nope".into()));
    prop::sample::select(pairs)
}

fn arb_time() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        (0i64..4_000_000_000).prop_map(Json::from),
        (0i64..4_000_000_000).prop_map(|s| {
            let t = DateTime::from_timestamp(s, 0).unwrap_or_default();
            Json::String(t.to_rfc3339_opts(SecondsFormat::Secs, true))
        }),
        arb_json(),
    ]
}

/// Datapoint objects that are mostly shaped right, with arbitrary parts.
fn arb_datapoint() -> impl Strategy<Value = Json> {
    (
        arb_target(),
        prop_oneof![
            Just(json!("x")),
            Just(json!(5)),
            Just(json!("1.2.3.4")),
            Just(json!("aa:bb:cc:dd:ee:ff")),
            Just(json!("::1")),
            arb_json()
        ],
        arb_json(),
        arb_time(),
        arb_time(),
        prop_oneof![
            Just(None),
            Just(Some(json!(0.5))),
            arb_json().prop_map(Some)
        ],
        prop_oneof![
            Just(None),
            Just(Some(json!("src"))),
            arb_json().prop_map(Some)
        ],
    )
        .prop_map(|((etype, attr), id, v, t1, t2, c, src)| {
            let mut m = Map::new();
            m.insert("type".into(), Json::String(etype));
            m.insert("id".into(), id);
            m.insert("attr".into(), Json::String(attr));
            m.insert("v".into(), v);
            if !t1.is_null() {
                m.insert("t1".into(), t1);
            }
            if !t2.is_null() {
                m.insert("t2".into(), t2);
            }
            if let Some(c) = c {
                m.insert("c".into(), c);
            }
            if let Some(src) = src {
                m.insert("src".into(), src);
            }
            Json::Object(m)
        })
}

/// Accepted datapoints must survive the wire round trip (compared as wire text, which is
/// NaN-safe), and wire decoding must never panic.
fn check_round_trip(body: &[u8]) {
    let model = test_model();
    if let Ok(dps) = parse_api_datapoints(&model, body) {
        for task in group_into_tasks(dps) {
            let wire = task_to_wire_json(&task);
            let back = task_from_wire_json(&model, wire.as_bytes())
                .unwrap_or_else(|e| panic!("wire message rejected: {e}\n{wire}"));
            let again = task_to_wire_json(&back);
            let (a, b): (Json, Json) = (
                serde_json::from_str(&wire).unwrap(),
                serde_json::from_str(&again).unwrap(),
            );
            assert!(same_json(&a, &b), "{wire}\n{again}");
        }
    }
}

/// Structural equality with floats compared to within 2 ulp-ish: serde_json (without its
/// `float_roundtrip` feature) may parse the last digit of a printed float differently.
fn same_json(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) if x.is_f64() || y.is_f64() => {
                p == q || (p - q).abs() <= p.abs().max(q.abs()) * 4.0 * f64::EPSILON
            }
            _ => x == y,
        },
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && same_json(v1, v2))
        }
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let model = test_model();
        let _ = parse_api_datapoints(&model, &bytes);
        let _ = task_from_wire_json(&model, &bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let model = test_model();
        let body = v.to_string();
        let _ = parse_api_datapoints(&model, body.as_bytes());
        let _ = task_from_wire_json(&model, body.as_bytes());
        let wrapped = Json::Array(vec![v]).to_string();
        let _ = parse_api_datapoints(&model, wrapped.as_bytes());
    }

    #[test]
    fn shaped_datapoints_validate_or_fail_cleanly(items in prop::collection::vec(arb_datapoint(), 0..6)) {
        let body = Json::Array(items).to_string();
        let model = test_model();
        match parse_api_datapoints(&model, body.as_bytes()) {
            Ok(dps) => prop_assert!(dps.iter().all(|d| d.t1 <= d.t2 || d.t2.is_none())),
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    let j = serde_json::to_value(e).unwrap();
                    prop_assert_eq!(j["loc"][0].as_str(), Some("body"));
                    prop_assert!(j["type"].is_string() && j["msg"].is_string());
                }
            }
        }
        check_round_trip(body.as_bytes());
    }

    #[test]
    fn fast_path_agrees_with_general_validator(v in arb_json()) {
        let model = test_model();
        let raw = serde_json::value::to_raw_value(&v).unwrap();
        // Compare with the value as parsed back from the same text (serde_json's float
        // parsing does not round-trip every float exactly without `float_roundtrip`).
        let v: Json = serde_json::from_str(raw.get()).unwrap();
        for et in model.entities.values() {
            for a in et.attribs.values() {
                if let Some(dt) = a.data_type() {
                    let slow = validate_value(&model, dt, &v);
                    let fast = validate_raw_value(&model, dt, &raw);
                    // Debug text compares NaN payloads as equal
                    prop_assert_eq!(format!("{slow:?}"), format!("{fast:?}"), "{}", a.id);
                }
            }
        }
    }

    #[test]
    fn datetime_parser_inverts_rfc3339(
        // 0002-01-01 .. 9999-01-01, so that no offset pushes the local date out of range
        micros in -62_104_060_800_000_000i64..253_370_764_800_000_000,
        offset_min in -1439i32..1439,
        secs_format in 0usize..3,
    ) {
        let t = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
        let offset = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
        let (fmt, expect) = match secs_format {
            0 => (SecondsFormat::Micros, t),
            1 => (SecondsFormat::Millis, DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()),
            _ => (SecondsFormat::Secs, DateTime::from_timestamp(t.timestamp(), 0).unwrap()),
        };
        let text = t.with_timezone(&offset).to_rfc3339_opts(fmt, true);
        prop_assert_eq!(parse_datetime_str(&text).ok(), Some(expect), "{}", text);
        // the space separator and a naive UTC form are the same instant
        let naive = t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        prop_assert_eq!(parse_datetime_str(&naive).ok(), Some(t), "{}", naive);
    }

    #[test]
    fn datetime_parser_never_panics(s in ".{0,40}", n in any::<f64>(), i in any::<i64>()) {
        let _ = parse_datetime_str(&s);
        let _ = dp3_model::time::from_unix(n);
        let _ = dp3_model::time::from_unix_int(i);
        let _ = parse_datetime_str(&format!("2024-01-01T{s}"));
    }
}
