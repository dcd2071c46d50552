//! Tests of value, datapoint, task and wire validation against the hand-built test model.

use bson::{Bson, doc};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value as Json, json};

use super::test_model::{link, prim, test_model};
use super::*;
use crate::datatype::{DataType, DictField, Primitive};
use crate::eid::Eid;
use crate::task::{DataPoint, DataPointTask};
use crate::value::{self, MacAddr};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn ok(p: Primitive, v: Json) -> Bson {
    let model = test_model();
    let dt = DataType::Primitive(p);
    let slow = validate_value(&model, &dt, &v).unwrap_or_else(|e| panic!("{p:?} {v}: {e:?}"));
    // The raw fast path must agree with the general path.
    let raw = serde_json::value::to_raw_value(&v).unwrap();
    assert_eq!(
        validate_raw_value(&model, &dt, &raw).unwrap(),
        slow,
        "{p:?} {v}"
    );
    slow
}

fn bad(p: Primitive, v: Json) -> ValidationError {
    let model = test_model();
    let dt = DataType::Primitive(p);
    let errs = validate_value(&model, &dt, &v).expect_err(&format!("{p:?} should reject {v}"));
    let raw = serde_json::value::to_raw_value(&v).unwrap();
    assert_eq!(validate_raw_value(&model, &dt, &raw).unwrap_err(), errs);
    errs.into_iter().next().unwrap()
}

#[test]
fn tag_and_binary() {
    for p in [Primitive::Tag, Primitive::Binary] {
        for (v, want) in [
            (json!(true), true),
            (json!(false), false),
            (json!(1), true),
            (json!(0), false),
            (json!(1.0), true),
            (json!(0.0), false),
            (json!("yes"), true),
            (json!("No"), false),
            (json!("ON"), true),
            (json!("off"), false),
            (json!("t"), true),
            (json!("f"), false),
            (json!("y"), true),
            (json!("n"), false),
            (json!("1"), true),
            (json!("0"), false),
            (json!("TRUE"), true),
        ] {
            assert_eq!(ok(p, v), Bson::Boolean(want));
        }
        assert_eq!(bad(p, json!(2)).kind, "bool_parsing");
        assert_eq!(bad(p, json!(1.5)).kind, "bool_parsing");
        assert_eq!(bad(p, json!("x")).kind, "bool_parsing");
        assert_eq!(bad(p, json!(null)).kind, "bool_type");
        assert_eq!(bad(p, json!([true])).kind, "bool_type");
    }
}

#[test]
fn strings() {
    assert_eq!(
        ok(Primitive::String, json!("a\"b\\c")),
        Bson::String("a\"b\\c".into())
    );
    assert_eq!(
        ok(Primitive::String, json!("")),
        Bson::String(String::new())
    );
    for v in [json!(5), json!(true), json!(null), json!(["a"])] {
        let e = bad(Primitive::String, v);
        assert_eq!(
            (e.kind, e.msg.as_str()),
            ("string_type", "Input should be a valid string")
        );
    }
}

#[test]
fn ints_are_lax_and_64_bit() {
    for p in [Primitive::Int, Primitive::Int64] {
        assert_eq!(ok(p, json!(5)), Bson::Int32(5));
        assert_eq!(ok(p, json!(-5)), Bson::Int32(-5));
        assert_eq!(ok(p, json!(5.0)), Bson::Int32(5));
        assert_eq!(ok(p, json!("5")), Bson::Int32(5));
        assert_eq!(ok(p, json!(" 7 ")), Bson::Int32(7));
        assert_eq!(ok(p, json!("1_000")), Bson::Int32(1000));
        assert_eq!(ok(p, json!("5.0")), Bson::Int32(5));
        assert_eq!(ok(p, json!(true)), Bson::Int32(1));
        assert_eq!(ok(p, json!(1i64 << 40)), Bson::Int64(1 << 40));
        assert_eq!(ok(p, json!(i64::MAX)), Bson::Int64(i64::MAX));
        assert_eq!(ok(p, json!(i64::MIN)), Bson::Int64(i64::MIN));
        assert_eq!(ok(p, json!(i32::MAX)), Bson::Int32(i32::MAX));
        assert_eq!(ok(p, json!(i64::from(i32::MAX) + 1)), Bson::Int64(1 << 31));
        let e = bad(p, json!(5.5));
        assert_eq!(e.kind, "int_from_float");
        let e = bad(p, json!("x"));
        assert_eq!(
            (e.kind, e.msg.as_str()),
            (
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer"
            )
        );
        assert_eq!(bad(p, json!(null)).kind, "int_type");
        assert_eq!(bad(p, json!([1.5])).kind, "int_type");
        // beyond signed 64 bits: a clean rejection, not a failed DB write later
        assert_eq!(bad(p, json!(u64::MAX)).kind, "int_parsing");
        assert_eq!(bad(p, json!(1e19)).kind, "int_parsing");
        assert_eq!(bad(p, json!("99999999999999999999")).kind, "int_parsing");
        let big: Json = serde_json::from_str("100000000000000000000000000000").unwrap();
        assert_eq!(bad(p, big).kind, "int_parsing");
    }
}

#[test]
fn floats() {
    assert_eq!(ok(Primitive::Float, json!(1.5)), Bson::Double(1.5));
    assert_eq!(ok(Primitive::Float, json!(3)), Bson::Double(3.0));
    assert_eq!(ok(Primitive::Float, json!("1.5")), Bson::Double(1.5));
    assert_eq!(ok(Primitive::Float, json!("1e3")), Bson::Double(1000.0));
    assert_eq!(ok(Primitive::Float, json!(" 2 ")), Bson::Double(2.0));
    assert_eq!(ok(Primitive::Float, json!(true)), Bson::Double(1.0));
    assert_eq!(
        ok(Primitive::Float, json!("inf")),
        Bson::Double(f64::INFINITY)
    );
    assert_eq!(
        ok(Primitive::Float, json!("-Infinity")),
        Bson::Double(f64::NEG_INFINITY)
    );
    let nan = validate_value(&test_model(), &prim(Primitive::Float), &json!("NaN")).unwrap();
    assert!(matches!(nan, Bson::Double(f) if f.is_nan()));
    assert_eq!(bad(Primitive::Float, json!("x")).kind, "float_parsing");
    assert_eq!(bad(Primitive::Float, json!(null)).kind, "float_type");
}

#[test]
fn times_are_utc() {
    let t = utc(2024, 5, 1, 12, 0, 0);
    assert_eq!(
        ok(Primitive::Time, json!("2024-05-01T12:00:00Z")),
        value::time(t)
    );
    // naive = UTC (DP3 keeps it naive in memory but stores it as UTC)
    assert_eq!(
        ok(Primitive::Time, json!("2024-05-01T12:00:00")),
        value::time(t)
    );
    assert_eq!(
        ok(Primitive::Time, json!("2024-05-01 14:00:00+02:00")),
        value::time(t)
    );
    assert_eq!(ok(Primitive::Time, json!(t.timestamp())), value::time(t));
    assert_eq!(
        ok(Primitive::Time, json!(t.timestamp_millis())),
        value::time(t)
    );
    assert_eq!(
        ok(Primitive::Time, json!("2024-05-01")),
        value::time(t - chrono::TimeDelta::hours(12))
    );
    let e = bad(Primitive::Time, json!("10:00"));
    assert_eq!(e.kind, "datetime_from_date_parsing");
    assert!(e.ctx.is_some());
    assert_eq!(
        bad(Primitive::Time, json!("2024-02-30")).kind,
        "datetime_from_date_parsing"
    );
    assert_eq!(bad(Primitive::Time, json!(true)).kind, "datetime_type");
    assert_eq!(
        bad(Primitive::Time, json!("garbage")).kind,
        "datetime_from_date_parsing"
    );
}

#[test]
fn addresses() {
    assert_eq!(
        ok(Primitive::Ipv4, json!("1.2.3.4")),
        value::ipv4("1.2.3.4".parse().unwrap())
    );
    assert_eq!(
        ok(Primitive::Ipv4, json!(16909060)),
        value::ipv4("1.2.3.4".parse().unwrap())
    );
    for v in [
        json!(" 1.2.3.4"),
        json!("1.2.3"),
        json!("1.2.3.4/32"),
        json!("::1"),
        json!("010.1.1.1"),
        json!(true),
    ] {
        let e = bad(Primitive::Ipv4, v);
        assert_eq!(
            (e.kind, e.msg.as_str()),
            ("ip_v4_address", "Input is not a valid IPv4 address")
        );
    }
    assert_eq!(
        ok(Primitive::Ipv6, json!("2001:DB8::1")),
        value::ipv6("2001:db8::1".parse().unwrap())
    );
    assert_eq!(
        ok(Primitive::Ipv6, json!("::ffff:1.2.3.4")),
        value::ipv6("::ffff:1.2.3.4".parse().unwrap())
    );
    assert_eq!(
        ok(Primitive::Ipv6, json!("fe80::1%eth0")),
        value::ipv6("fe80::1".parse().unwrap())
    );
    assert_eq!(bad(Primitive::Ipv6, json!("1.2.3.4")).kind, "ip_v6_address");
    assert_eq!(bad(Primitive::Ipv6, json!("xyz")).kind, "ip_v6_address");
    assert_eq!(
        ok(Primitive::Mac, json!("AA-BB-CC-DD-EE-0F")),
        value::mac(MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f]))
    );
    let e = bad(Primitive::Mac, json!("aa:bb:cc:dd:ee"));
    assert_eq!(e.msg, "Value error, Invalid MAC address length, 14 != 17");
    let e = bad(Primitive::Mac, json!("aa:bb:cc:dd:ee-ff"));
    assert_eq!(
        e.msg,
        "Value error, Invalid MAC address format at pos 14, expected separator ':' but got '-'"
    );
    let e = bad(Primitive::Mac, json!("aa.bb.cc.dd.ee.ff"));
    assert_eq!(
        e.msg,
        "Value error, Invalid MAC address format, expected separator ':' or '-'"
    );
    assert_eq!(
        bad(Primitive::Mac, json!("aabbccddeeff")).kind,
        "value_error"
    );
    assert_eq!(bad(Primitive::Mac, json!(5)).kind, "value_error");
}

#[test]
fn special_and_json() {
    assert_eq!(ok(Primitive::Special, json!(null)), Bson::Null);
    assert_eq!(
        ok(Primitive::Special, json!({"a": [1, "x"]})),
        Bson::Document(doc! {"a": [1, "x"]})
    );
    assert_eq!(
        ok(Primitive::Json, json!({"a": 1})),
        Bson::Document(doc! {"a": 1})
    );
    assert_eq!(
        ok(Primitive::Json, json!([1, 2])),
        Bson::Array(vec![Bson::Int32(1), Bson::Int32(2)])
    );
    assert_eq!(ok(Primitive::Json, json!("5")), Bson::Int32(5));
    assert_eq!(ok(Primitive::Json, json!("null")), Bson::Null);
    assert_eq!(
        ok(Primitive::Json, json!("{\"a\": true}")),
        Bson::Document(doc! {"a": true})
    );
    let model = test_model();
    let dt = prim(Primitive::Json);
    let errs = validate_value(&model, &dt, &json!("abc")).unwrap_err();
    assert_eq!(
        errs.iter().map(|e| e.kind).collect::<Vec<_>>(),
        ["json_invalid", "dict_type", "list_type"]
    );
    for v in [json!(5), json!(true), json!(null)] {
        assert_eq!(validate_value(&model, &dt, &v).unwrap_err().len(), 3);
    }
    // BSON keys end at NUL: such values could be accepted but never stored.
    for v in [
        json!({"a\0": 1}),
        json!([{"b": {"c\0d": 2}}]),
        json!("{\"x\\u0000\": 1}"),
    ] {
        let errs = validate_value(&model, &dt, &v).unwrap_err();
        assert_eq!(errs[0].kind, "value_error", "{v}");
    }
    let special = prim(Primitive::Special);
    assert!(validate_value(&model, &special, &json!({"k\0": 1})).is_err());
}

#[test]
fn categories() {
    let model = test_model();
    let cat = model
        .attr("test_entity_type", "test_attr_category")
        .unwrap()
        .data_type()
        .unwrap();
    assert_eq!(
        validate_value(&model, cat, &json!("cat1")).unwrap(),
        Bson::String("cat1".into())
    );
    let e = &validate_value(&model, cat, &json!("CAT1")).unwrap_err()[0];
    assert_eq!(
        (e.kind, e.msg.as_str()),
        ("enum", "Input should be 'cat1' or 'cat2'")
    );
    assert_eq!(
        e.ctx.as_deref(),
        Some(&json!({"expected": "'cat1' or 'cat2'"}))
    );
    assert!(validate_value(&model, cat, &json!(1)).is_err());
    let icat = model
        .attr("test_entity_type", "test_attr_int_category")
        .unwrap()
        .data_type()
        .unwrap();
    assert_eq!(
        validate_value(&model, icat, &json!(1)).unwrap(),
        Bson::Int32(1)
    );
    assert_eq!(
        validate_value(&model, icat, &json!(1.0)).unwrap(),
        Bson::Int32(1)
    );
    let e = &validate_value(&model, icat, &json!("1")).unwrap_err()[0];
    assert_eq!(e.msg, "Input should be 1, 2 or 3");
    assert!(validate_value(&model, icat, &json!(4)).is_err());
    assert!(validate_value(&model, icat, &json!(true)).is_err());
}

#[test]
fn arrays_and_sets_keep_order_and_duplicates() {
    let model = test_model();
    for a in ["test_attr_array", "test_attr_set"] {
        let dt = model
            .attr("test_entity_type", a)
            .unwrap()
            .data_type()
            .unwrap();
        assert_eq!(
            validate_value(&model, dt, &json!([3, "1", 3])).unwrap(),
            Bson::Array(vec![Bson::Int32(3), Bson::Int32(1), Bson::Int32(3)])
        );
        assert_eq!(
            validate_value(&model, dt, &json!([])).unwrap(),
            Bson::Array(vec![])
        );
        let errs = validate_value(&model, dt, &json!([1, "x", 2.5])).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].loc, vec![LocItem::Index(1)]);
        assert_eq!(errs[1].loc, vec![LocItem::Index(2)]);
        for v in [json!(5), json!("12"), json!({"a": 1})] {
            assert_eq!(
                validate_value(&model, dt, &v).unwrap_err()[0].kind,
                "list_type"
            );
        }
    }
}

#[test]
fn dicts() {
    let model = test_model();
    let dt = model
        .attr("test_entity_type", "test_attr_dict")
        .unwrap()
        .data_type()
        .unwrap();
    assert_eq!(
        validate_value(&model, dt, &json!({"key1": "5", "key2": "x", "extra": 1})).unwrap(),
        Bson::Document(doc! {"key1": 5, "key2": "x", "key3": Bson::Null})
    );
    assert_eq!(
        validate_value(
            &model,
            dt,
            &json!({"key1": 5, "key2": "x", "key3": "1.2.3.4"})
        )
        .unwrap(),
        Bson::Document(
            doc! {"key1": 5, "key2": "x", "key3": value::ipv4("1.2.3.4".parse().unwrap())}
        )
    );
    let errs = validate_value(&model, dt, &json!({"key3": "bad"})).unwrap_err();
    let summary: Vec<(&str, Vec<LocItem>)> = errs.iter().map(|e| (e.kind, e.loc.clone())).collect();
    assert_eq!(
        summary,
        vec![
            ("missing", vec![LocItem::from("key1")]),
            ("missing", vec![LocItem::from("key2")]),
            ("ip_v4_address", vec![LocItem::from("key3")]),
        ]
    );
    assert_eq!(*errs[0].input, json!({"key3": "bad"}));
    assert_eq!(
        validate_value(&model, dt, &json!([1])).unwrap_err()[0].kind,
        "dict_type"
    );
    // Later duplicate dict fields win at parse time; a required null is a type error.
    let d = DataType::Dict(vec![DictField {
        name: "a".into(),
        optional: false,
        ty: Primitive::Int,
    }]);
    assert_eq!(
        validate_value(&model, &d, &json!({"a": null})).unwrap_err()[0].kind,
        "int_type"
    );
}

#[test]
fn links() {
    let model = test_model();
    let l = link("test_entity_type", None);
    assert_eq!(
        validate_value(&model, &l, &json!({"eid": "x"})).unwrap(),
        Bson::Document(doc! {"eid": "x"})
    );
    let errs = validate_value(&model, &l, &json!({"id": "t"})).unwrap_err();
    assert_eq!(
        serde_json::to_value(&errs).unwrap(),
        json!([
            {"type": "missing", "loc": ["eid"], "msg": "Field required", "input": {"id": "t"}},
            {"type": "extra_forbidden", "loc": ["id"], "msg": "Extra inputs are not permitted", "input": "t"}
        ])
    );
    assert_eq!(
        validate_value(&model, &l, &json!({"eid": "x", "data": 1})).unwrap_err()[0].kind,
        "extra_forbidden"
    );
    assert_eq!(
        validate_value(&model, &l, &json!("x")).unwrap_err()[0].kind,
        "dict_type"
    );
    assert_eq!(
        validate_value(&model, &l, &json!({"eid": 5})).unwrap_err()[0].kind,
        "string_type"
    );
    let dl = link("A", Some(prim(Primitive::Int)));
    assert_eq!(
        validate_value(&model, &dl, &json!({"eid": "12", "data": 3})).unwrap(),
        Bson::Document(doc! {"eid": 12, "data": 3})
    );
    let errs = validate_value(&model, &dl, &json!({"eid": "x"})).unwrap_err();
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0].loc, vec![LocItem::from("eid")]);
    assert_eq!(errs[1].loc, vec![LocItem::from("data")]);
    let ip = link("ip", None);
    assert_eq!(
        validate_value(&model, &ip, &json!({"eid": "10.0.0.1"})).unwrap(),
        Bson::Document(doc! {"eid": value::ipv4("10.0.0.1".parse().unwrap())})
    );
    let arr = DataType::Array(Box::new(link("A", None)));
    let errs = validate_value(&model, &arr, &json!([{"eid": 1}, {"eid": "z"}])).unwrap_err();
    assert_eq!(errs[0].loc, vec![LocItem::Index(1), LocItem::from("eid")]);
    // unknown link target (config bug) is an error, not a panic
    assert!(validate_value(&model, &link("nope", None), &json!({"eid": 1})).is_err());
}

// ---- POST /datapoints ------------------------------------------------------------------

fn api(body: Json) -> Result<Vec<DataPoint>, Vec<ValidationError>> {
    parse_api_datapoints(&test_model(), body.to_string().as_bytes())
}

fn api_err(body: Json) -> Json {
    serde_json::to_value(api(body).expect_err("should be rejected")).unwrap()
}

#[test]
fn observations_datapoint() {
    let dps = api(json!([{"type": "ip", "id": "1.2.3.4", "attr": "open_ports", "v": "22",
        "t1": "2024-05-01T12:00:00Z", "t2": "2024-05-01T12:00:30Z", "c": 0.9, "src": "scan", "extra": 1}]))
    .unwrap();
    assert_eq!(
        dps,
        vec![DataPoint {
            etype: "ip".into(),
            eid: Eid::Ipv4("1.2.3.4".parse().unwrap()),
            attr: "open_ports".into(),
            src: Some("scan".into()),
            v: Bson::Int32(22),
            c: 0.9,
            t1: Some(utc(2024, 5, 1, 12, 0, 0)),
            t2: Some(utc(2024, 5, 1, 12, 0, 30)),
        }]
    );
    // t2 defaults to t1; falsy t2 too; c defaults to 1.0
    for t2 in [json!(null), json!(""), json!(0)] {
        let dps = api(json!([{"type": "ip", "id": 16909060, "attr": "hostname", "v": "a", "t1": 1714564800, "t2": t2}])).unwrap();
        assert_eq!(dps[0].t2, Some(utc(2024, 5, 1, 12, 0, 0)));
        assert_eq!(dps[0].c, 1.0);
        assert_eq!(dps[0].src, None);
    }
}

#[test]
fn observations_time_rules() {
    let e = api_err(
        json!([{"type": "ip", "id": "1.2.3.4", "attr": "hostname", "v": "a",
        "t1": "2024-05-01T12:00:00Z", "t2": "2024-05-01T11:00:00Z"}]),
    );
    assert_eq!(
        e,
        json!([{"type": "assertion_error", "loc": ["body", 0, "t2"],
        "msg": "Assertion failed, 't2' is before 't1'", "input": "2024-05-01T11:00:00Z", "ctx": {"error": {}}}])
    );
    let e = api_err(json!([{"type": "ip", "id": "1.2.3.4", "attr": "hostname", "v": "a"}]));
    assert_eq!(
        e,
        json!([
            {"type": "datetime_type", "loc": ["body", 0, "t1"], "msg": "Input should be a valid datetime", "input": null},
            {"type": "datetime_type", "loc": ["body", 0, "t2"], "msg": "Input should be a valid datetime", "input": null}
        ])
    );
    let e = api_err(
        json!([{"type": "ip", "id": "1.2.3.4", "attr": "hostname", "v": "a", "t1": "xyz"}]),
    );
    assert_eq!(
        e,
        json!([{"type": "datetime_from_date_parsing", "loc": ["body", 0, "t1"],
        "msg": "Input should be a valid datetime or date, input is too short", "input": "xyz",
        "ctx": {"error": "input is too short"}}])
    );
}

#[test]
fn confidence_is_range_checked_for_all_kinds() {
    let e = api_err(
        json!([{"type": "test_entity_type", "id": "x", "attr": "test_attr_int", "v": 1, "c": 2}]),
    );
    assert_eq!(
        e,
        json!([{"type": "less_than_equal", "loc": ["body", 0, "c"],
        "msg": "Input should be less than or equal to 1", "input": 2, "ctx": {"le": 1.0}}])
    );
    let e = api_err(
        json!([{"type": "test_entity_type", "id": "x", "attr": "test_attr_int", "v": 1, "c": -0.5}]),
    );
    assert_eq!(e[0]["type"], "greater_than_equal");
    let e = api_err(
        json!([{"type": "test_entity_type", "id": "x", "attr": "test_attr_int", "v": 1, "c": null}]),
    );
    assert_eq!(e[0]["msg"], "Input should be a valid number");
    let dps = api(json!([{"type": "test_entity_type", "id": "x", "attr": "test_attr_int", "v": 1, "c": "0.5"}])).unwrap();
    assert_eq!(dps[0].c, 0.5);
}

#[test]
fn plain_datapoints_drop_t1_and_reject_t2() {
    let dps = api(
        json!([{"type": "test_entity_type", "id": "x", "attr": "test_attr_string", "v": "s",
        "t1": "2024-05-01T12:00:00Z"}]),
    )
    .unwrap();
    assert_eq!((dps[0].t1, dps[0].t2), (None, None));
    let e = api_err(
        json!([{"type": "test_entity_type", "id": "x", "attr": "test_attr_string", "v": "s",
        "t1": "2024-05-01T12:00:00Z", "t2": "2024-05-01T12:00:00Z"}]),
    );
    assert_eq!(
        e,
        json!([{"type": "none_required", "loc": ["body", 0, "t2"], "msg": "Input should be None",
        "input": "2024-05-01T12:00:00Z"}])
    );
}

#[test]
fn envelope_errors_match_dp3() {
    let e =
        api_err(json!({"type": "test_entity_type", "attr": "test_attr_int", "id": "x", "v": 123}));
    assert_eq!(
        e,
        json!([{"type": "list_type", "loc": ["body"], "msg": "Input should be a valid list",
        "input": {"type": "test_entity_type", "attr": "test_attr_int", "id": "x", "v": 123}}])
    );
    let e = api_err(json!(["xyz"]));
    assert_eq!(
        e,
        json!([{"type": "model_attributes_type", "loc": ["body", 0],
        "msg": "Input should be a valid dictionary or object to extract fields from", "input": "xyz"}])
    );
    let e = api_err(json!([{"type": "xyz", "attr": "test_attr_int", "id": "x", "v": 123}]));
    assert_eq!(
        e,
        json!([{"type": "value_error", "loc": ["body", 0],
        "msg": "Value error, Combination of type 'xyz' and attr 'test_attr_int' doesn't exist",
        "input": {"type": "xyz", "attr": "test_attr_int", "id": "x", "v": 123}, "ctx": {"error": {}}}])
    );
    let e = api_err(json!([{"type": "test_entity_type", "attr": "test_attr_int", "id": "x"}]));
    assert_eq!(
        e,
        json!([{"type": "missing", "loc": ["body", 0, "v"], "msg": "Field required",
        "input": {"type": "test_entity_type", "attr": "test_attr_int", "id": "x"}}])
    );
    let e = api_err(
        json!([{"type": "test_entity_type", "attr": "test_attr_int", "id": "x", "v": "xyz"}]),
    );
    assert_eq!(
        e,
        json!([{"type": "int_parsing", "loc": ["body", 0, "v"],
        "msg": "Input should be a valid integer, unable to parse string as an integer", "input": "xyz"}])
    );
    let e = api_err(json!([{"type": "A", "attr": "name", "id": "abc", "v": "n"}]));
    assert_eq!(e[0]["loc"], json!(["body", 0, "eid"]));
    assert_eq!(e[0]["type"], "int_parsing");
    let e = api_err(
        json!([{"type": "test_entity_type", "attr": "test_attr_link", "id": "x", "v": {"id": "t"}}]),
    );
    assert_eq!(
        e,
        json!([
            {"type": "missing", "loc": ["body", 0, "v", "eid"], "msg": "Field required", "input": {"id": "t"}},
            {"type": "extra_forbidden", "loc": ["body", 0, "v", "id"], "msg": "Extra inputs are not permitted", "input": "t"}
        ])
    );
    let e = api_err(json!([{"type": 5, "attr": null, "v": 1}]));
    let locs: Vec<&Json> = e.as_array().unwrap().iter().map(|x| &x["loc"]).collect();
    assert_eq!(
        locs,
        [
            &json!(["body", 0, "type"]),
            &json!(["body", 0, "attr"]),
            &json!(["body", 0, "id"])
        ]
    );
    assert_eq!(api(json!([])).unwrap(), vec![]);
}

#[test]
fn all_items_are_reported() {
    let e = api_err(json!([
        {"type": "test_entity_type", "attr": "test_attr_int", "id": "x", "v": 1},
        {"type": "test_entity_type", "attr": "test_attr_int", "id": "x", "v": "a"},
        "junk",
        {"type": "test_entity_type", "attr": "nope", "id": "x", "v": 1},
    ]));
    let locs: Vec<&Json> = e.as_array().unwrap().iter().map(|x| &x["loc"]).collect();
    assert_eq!(
        locs,
        [
            &json!(["body", 1, "v"]),
            &json!(["body", 2]),
            &json!(["body", 3])
        ]
    );
}

#[test]
fn malformed_bodies() {
    let model = test_model();
    for body in [
        &b"bodyisstring"[..],
        b"[",
        b"",
        b"[{\"type\": }]",
        b"\xff\xfe",
        b"[1,]",
    ] {
        let e = parse_api_datapoints(&model, body).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, "json_invalid", "{body:?}");
        assert_eq!(e[0].loc[0], LocItem::from("body"));
    }
    let e = parse_api_datapoints(&model, b"  \n [1, 2").unwrap_err();
    // the position of the unexpected end (serde_json points at the last byte)
    assert_eq!(e[0].loc, vec![LocItem::from("body"), LocItem::Index(8)]);
}

#[test]
fn read_only_mirrors_are_rejected() {
    let e = api_err(
        json!([{"type": "test_entity_type", "attr": "mirror_attr", "id": "x", "v": [{"eid": 1}]}]),
    );
    assert_eq!(
        e[0]["msg"],
        "Value error, Cannot instantiate a read-only attribute datapoint."
    );
    assert_eq!(e[0]["loc"], json!(["body", 0, "v"]));
}

#[test]
fn eids_of_every_type() {
    let cases = [
        ("A", json!("0012"), Eid::Int(12)),
        ("A", json!(12.0), Eid::Int(12)),
        ("A", json!(true), Eid::Int(1)),
        (
            "ip",
            json!("1.2.3.4"),
            Eid::Ipv4("1.2.3.4".parse().unwrap()),
        ),
        (
            "ip6",
            json!("2001:DB8::1"),
            Eid::Ipv6("2001:db8::1".parse().unwrap()),
        ),
        (
            "dev",
            json!("AA-BB-CC-DD-EE-FF"),
            Eid::Mac(MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])),
        ),
        (
            "test_entity_type",
            json!("x\"y"),
            Eid::String("x\"y".into()),
        ),
    ];
    for (etype, id, want) in cases {
        let attr = if etype == "test_entity_type" {
            "test_attr_string"
        } else if etype == "ip" {
            "hostname"
        } else {
            "name"
        };
        let mut item = json!({"type": etype, "id": id, "attr": attr, "v": "n"});
        if etype == "ip" {
            item["t1"] = json!("2024-01-01T00:00:00Z");
        }
        let dps = api(json!([item])).unwrap_or_else(|e| panic!("{etype} {id}: {e:?}"));
        assert_eq!(dps[0].eid, want);
    }
    for (etype, id) in [
        ("A", json!(12.5)),
        ("A", json!("1.5")),
        ("ip", json!("010.1.1.1")),
        ("test_entity_type", json!(5)),
        ("dev", json!("aabbccddeeff")),
        ("ip6", json!("1.2.3.4")),
    ] {
        let attr = if etype == "test_entity_type" {
            "test_attr_string"
        } else if etype == "ip" {
            "hostname"
        } else {
            "name"
        };
        let e = api_err(json!([{"type": etype, "id": id, "attr": attr, "v": "n", "t1": 0}]));
        assert_eq!(e[0]["loc"], json!(["body", 0, "eid"]), "{etype} {id}");
    }
}

// ---- timeseries ------------------------------------------------------------------------

#[test]
fn regular_timeseries_computes_or_checks_t2() {
    let dps = api(
        json!([{"type": "test_entity_type", "id": "x", "attr": "ts_regular2",
        "t1": "2024-05-01T12:00:00Z", "v": {"a": [3, 5, 0], "b": [1, 0, 4.5], "junk": [1]}}]),
    )
    .unwrap();
    assert_eq!(dps[0].t2, Some(utc(2024, 5, 1, 12, 30, 0)));
    assert_eq!(
        dps[0].v,
        Bson::Document(doc! {"a": [3, 5, 0], "b": [1.0, 0.0, 4.5]})
    );
    assert!(api(json!([{"type": "test_entity_type", "id": "x", "attr": "ts_regular2",
        "t1": "2024-05-01T12:00:00Z", "t2": "2024-05-01T12:30:00Z", "v": {"a": [3, 5, 0], "b": [1, 0, 4]}}])).is_ok());
    let e = api_err(
        json!([{"type": "test_entity_type", "id": "x", "attr": "ts_regular2",
        "t1": "2024-05-01T12:00:00Z", "t2": "2024-05-01T12:20:00Z", "v": {"a": [3, 5, 0], "b": [1, 0, 4]}}]),
    );
    assert_eq!(e[0]["loc"], json!(["body", 0]));
    assert_eq!(
        e[0]["msg"],
        "Assertion failed, Difference of t1 and t2 is invalid. Must be values_len*time_step."
    );
    let e = api_err(
        json!([{"type": "test_entity_type", "id": "x", "attr": "ts_regular2",
        "t1": "2024-05-01T12:00:00Z", "v": {"a": [3, 5, 0], "b": [1, 0]}}]),
    );
    assert_eq!(
        e[0]["msg"],
        "Assertion failed, Series values have different lengths: {2, 3}"
    );
    assert_eq!(e[0]["loc"], json!(["body", 0, "v"]));
    let e = api_err(
        json!([{"type": "test_entity_type", "id": "x", "attr": "ts_regular2",
        "t1": "2024-05-01T12:00:00Z", "v": {"a": [3, "x"]}}]),
    );
    let locs: Vec<&Json> = e.as_array().unwrap().iter().map(|x| &x["loc"]).collect();
    assert_eq!(
        locs,
        [
            &json!(["body", 0, "v", "a", 1]),
            &json!(["body", 0, "v", "b"])
        ]
    );
    let e = api_err(
        json!([{"type": "test_entity_type", "id": "x", "attr": "ts_regular2",
        "t1": "2024-05-01T12:00:00Z", "v": [1]}]),
    );
    assert_eq!(e[0]["type"], "dict_type");
    // empty regular series: t2 = t1
    let dps = api(
        json!([{"type": "test_entity_type", "id": "x", "attr": "ts_regular2",
        "t1": "2024-05-01T12:00:00Z", "v": {"a": [], "b": []}}]),
    )
    .unwrap();
    assert_eq!(dps[0].t2, dps[0].t1);
}

#[test]
fn irregular_timeseries() {
    let base = json!({"type": "test_entity_type", "id": "x", "attr": "ts_irregular",
        "t1": "2024-05-01T00:00:00Z", "t2": "2024-05-02T00:00:00Z",
        "v": {"time": ["2024-05-01T06:10:00Z", "2024-05-01T18:45:00"], "litres": [120.5, 98.0]}});
    // naive series times are UTC, no crash
    let dps = api(json!([base.clone()])).unwrap();
    assert_eq!(dps[0].t2, Some(utc(2024, 5, 2, 0, 0, 0)));
    // t2 absent: computed from the last time
    let mut no_t2 = base.clone();
    no_t2.as_object_mut().unwrap().remove("t2");
    assert_eq!(
        api(json!([no_t2])).unwrap()[0].t2,
        Some(utc(2024, 5, 1, 18, 45, 0))
    );
    let mut late_t1 = base.clone();
    late_t1["t1"] = json!("2024-05-01T07:00:00Z");
    assert_eq!(
        api_err(json!([late_t1]))[0]["msg"],
        "Assertion failed, 't1' is above first item in 'time' series (2024-05-01 06:10:00+00:00)"
    );
    let mut early_t2 = base.clone();
    early_t2["t2"] = json!("2024-05-01T12:00:00Z");
    assert_eq!(
        api_err(json!([early_t2]))[0]["msg"],
        "Assertion failed, 't2' is below last item in 'time' series (2024-05-01 18:45:00+00:00)"
    );
    let mut unordered = base.clone();
    unordered["v"]["time"] = json!(["2024-05-01T18:00:00Z", "2024-05-01T06:00:00Z"]);
    assert_eq!(
        api_err(json!([unordered]))[0]["msg"],
        "Assertion failed, 'time' series is not ordered"
    );
    let mut empty = base.clone();
    empty["v"] = json!({"time": [], "litres": []});
    assert_eq!(api_err(json!([empty]))[0]["type"], "assertion_error");
}

#[test]
fn irregular_intervals_timeseries() {
    let base = json!({"type": "test_entity_type", "id": "x", "attr": "ts_intervals",
        "t1": "2024-05-01T00:00:00Z",
        "v": {"time_first": ["2024-05-01T01:00:00Z", "2024-05-01T00:30:00Z"],
              "time_last": ["2024-05-01T02:00:00Z", "2024-05-01T03:00:00Z"], "bytes": [1, 2]}});
    let dps = api(json!([base.clone()])).unwrap();
    assert_eq!(dps[0].t2, Some(utc(2024, 5, 1, 3, 0, 0)));
    let mut swapped = base.clone();
    swapped["v"]["time_last"] = json!(["2024-05-01T00:00:00Z", "2024-05-01T03:00:00Z"]);
    assert_eq!(
        api_err(json!([swapped]))[0]["msg"],
        "Assertion failed, 'time_first[i] <= time_last[i]' isn't true for all 'i'"
    );
    let mut backwards = base.clone();
    backwards["t1"] = json!("2024-05-01T00:45:00Z");
    backwards["v"]["time_first"] = json!(["2024-05-01T01:00:00Z", "2024-05-01T00:10:00Z"]);
    backwards["v"]["time_last"] = json!(["2024-05-01T02:00:00Z", "2024-05-01T00:20:00Z"]);
    // last interval ends before t1 → t2 would precede t1
    assert!(api(json!([backwards])).is_err());
}

// ---- grouping, tasks, wire ------------------------------------------------------------

#[test]
fn grouping_preserves_first_seen_order() {
    let dps = api(json!([
        {"type": "A", "id": 2, "attr": "name", "v": "a"},
        {"type": "A", "id": "1", "attr": "name", "v": "b"},
        {"type": "A", "id": 2.0, "attr": "name", "v": "c"},
        {"type": "test_entity_type", "id": "2", "attr": "test_attr_string", "v": "d"},
    ]))
    .unwrap();
    let tasks = group_into_tasks(dps);
    let summary: Vec<(String, String, Vec<String>)> = tasks
        .iter()
        .map(|t| {
            (
                t.etype.clone(),
                t.eid.to_string(),
                t.data_points
                    .iter()
                    .map(|d| d.v.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("A".into(), "2".into(), vec!["a".into(), "c".into()]),
            ("A".into(), "1".into(), vec!["b".into()]),
            ("test_entity_type".into(), "2".into(), vec!["d".into()]),
        ]
    );
}

fn obs_task() -> DataPointTask {
    let t1 = utc(2025, 1, 1, 0, 0, 0);
    let eid = Eid::Ipv4("1.2.3.4".parse().unwrap());
    DataPointTask {
        etype: "ip".into(),
        eid: eid.clone(),
        data_points: vec![DataPoint {
            etype: "ip".into(),
            eid,
            attr: "open_ports".into(),
            src: Some("s".into()),
            v: Bson::Int64(22),
            c: 1.0,
            t1: Some(t1),
            t2: None,
        }],
        ..Default::default()
    }
}

#[test]
fn task_validation() {
    let model = test_model();
    let t = validate_task(&model, obs_task(), EmptyTasks::Reject).unwrap();
    assert_eq!(t.data_points[0].v, Bson::Int32(22));
    assert_eq!(t.data_points[0].t2, t.data_points[0].t1);

    let mut unknown = obs_task();
    unknown.etype = "nope".into();
    assert_eq!(
        validate_task(&model, unknown, EmptyTasks::Reject)
            .unwrap_err()
            .to_string(),
        "Invalid etype 'nope'"
    );

    let mut bad_attr = obs_task();
    bad_attr.data_points[0].attr = "zzz".into();
    let e = validate_task(&model, bad_attr, EmptyTasks::Reject).unwrap_err();
    assert!(
        matches!(&e, TaskError::DataPoint { index: 0, errors } if errors[0].msg == "Value error, Attribute 'zzz' not found in entity 'ip'"),
        "{e}"
    );

    let mut mismatch = obs_task();
    mismatch.data_points[0].eid = Eid::Ipv4("1.2.3.5".parse().unwrap());
    let e = validate_task(&model, mismatch, EmptyTasks::Reject).unwrap_err();
    assert_eq!(
        e.to_string(),
        "data_points[0]: eid: Value error, Task's eid '1.2.3.4' doesn't match datapoint's eid '1.2.3.5' [type=value_error]"
    );

    let mut wrong_type = obs_task();
    wrong_type.data_points[0].v = Bson::String("22".into());
    let e = validate_task(&model, wrong_type, EmptyTasks::Reject).unwrap_err();
    assert!(
        matches!(&e, TaskError::DataPoint { errors, .. } if errors[0].loc == vec![LocItem::from("v")])
    );

    let mut no_t1 = obs_task();
    no_t1.data_points[0].t1 = None;
    assert!(validate_task(&model, no_t1, EmptyTasks::Reject).is_err());

    let mut bad_c = obs_task();
    bad_c.data_points[0].c = 1.5;
    assert!(validate_task(&model, bad_c, EmptyTasks::Reject).is_err());

    let mut wrong_eid_type = obs_task();
    wrong_eid_type.eid = Eid::String("x".into());
    assert!(matches!(
        validate_task(&model, wrong_eid_type, EmptyTasks::Reject),
        Err(TaskError::Field(_))
    ));

    let empty = DataPointTask {
        etype: "A".into(),
        eid: Eid::Int(1),
        ..Default::default()
    };
    assert_eq!(
        validate_task(&model, empty.clone(), EmptyTasks::Reject),
        Err(TaskError::Empty)
    );
    assert!(validate_task(&model, empty, EmptyTasks::Allow).is_ok());

    let mirror = DataPointTask {
        etype: "test_entity_type".into(),
        eid: Eid::String("x".into()),
        data_points: vec![DataPoint {
            etype: "test_entity_type".into(),
            eid: Eid::String("x".into()),
            attr: "mirror_attr".into(),
            src: None,
            v: Bson::Array(vec![]),
            c: 1.0,
            t1: None,
            t2: None,
        }],
        ..Default::default()
    };
    assert!(validate_task(&model, mirror, EmptyTasks::Reject).is_err());
}

#[test]
fn task_validation_of_bson_values() {
    let model = test_model();
    let eid = Eid::String("x".into());
    let mk = |attr: &str, v: Bson| DataPointTask {
        etype: "test_entity_type".into(),
        eid: eid.clone(),
        data_points: vec![DataPoint {
            etype: "test_entity_type".into(),
            eid: eid.clone(),
            attr: attr.into(),
            src: None,
            v,
            c: 1.0,
            t1: None,
            t2: None,
        }],
        ..Default::default()
    };
    let check = |attr: &str, v: Bson| {
        validate_task(&model, mk(attr, v), EmptyTasks::Reject).map(|t| t.data_points[0].v.clone())
    };
    assert_eq!(
        check(
            "test_attr_dict",
            Bson::Document(doc! {"key1": 1i64, "key2": "a", "x": 1})
        )
        .unwrap(),
        Bson::Document(doc! {"key1": 1, "key2": "a", "key3": Bson::Null})
    );
    assert!(check("test_attr_dict", Bson::Document(doc! {"key1": 1})).is_err());
    assert_eq!(
        check("test_attr_float", Bson::Int32(2)).unwrap(),
        Bson::Double(2.0)
    );
    assert_eq!(
        check("test_attr_ipv4", Bson::String("1.2.3.4".into())).unwrap(),
        value::ipv4("1.2.3.4".parse().unwrap())
    );
    assert!(check("test_attr_ipv4", value::ipv6("::1".parse().unwrap())).is_err());
    assert_eq!(
        check(
            "test_attr_link_ip",
            Bson::Document(doc! {"eid": "1.2.3.4", "data": "d"})
        )
        .unwrap(),
        Bson::Document(doc! {"eid": value::ipv4("1.2.3.4".parse().unwrap()), "data": "d"})
    );
    assert!(check("test_attr_link", Bson::Document(doc! {"eid": 5})).is_err());
    assert!(check("test_attr_category", Bson::String("cat3".into())).is_err());
    assert_eq!(
        check("test_attr_json", Bson::String("[1]".into())).unwrap(),
        Bson::Array(vec![Bson::Int32(1)])
    );
    assert!(check("test_attr_int", Bson::Double(1.5)).is_err());
    assert!(check("test_attr_time", Bson::String("2024-01-01".into())).is_err());
}

#[test]
fn wire_json_matches_dp3() {
    let model = test_model();
    let t1 = utc(2024, 1, 1, 0, 0, 0);
    let e1 = Eid::String("e1".into());
    let task = DataPointTask {
        etype: "test_entity_type".into(),
        eid: e1.clone(),
        data_points: vec![
            DataPoint {
                etype: "test_entity_type".into(),
                eid: e1.clone(),
                attr: "test_attr_history".into(),
                src: Some("s1".into()),
                v: Bson::Int32(5),
                c: 1.0,
                t1: Some(t1),
                t2: Some(t1),
            },
            DataPoint {
                etype: "test_entity_type".into(),
                eid: e1.clone(),
                attr: "test_attr_string".into(),
                src: Some("s1".into()),
                v: Bson::String("x".into()),
                c: 1.0,
                t1: None,
                t2: None,
            },
        ],
        ..Default::default()
    };
    let s = task_to_wire_json(&task);
    assert_eq!(
        s,
        r#"{"etype":"test_entity_type","eid":"e1","data_points":[{"etype":"test_entity_type","eid":"e1","attr":"test_attr_history","src":"s1","v":5,"c":1.0,"t1":"2024-01-01T00:00:00Z","t2":"2024-01-01T00:00:00Z"},{"etype":"test_entity_type","eid":"e1","attr":"test_attr_string","src":"s1","v":"x","c":1.0}]}"#
    );
    assert_eq!(task_from_wire_json(&model, s.as_bytes()).unwrap(), task);

    let ttl = DataPointTask {
        etype: "A".into(),
        eid: Eid::Int(5),
        ttl_tokens: Some(
            [("user".to_owned(), utc(2024, 10, 1, 12, 3, 0))]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    let s = task_to_wire_json(&ttl);
    assert_eq!(
        s,
        r#"{"etype":"A","eid":5,"ttl_tokens":{"user":"2024-10-01T12:03:00Z"}}"#
    );
    assert_eq!(task_from_wire_json(&model, s.as_bytes()).unwrap(), ttl);

    let del = DataPointTask {
        etype: "A".into(),
        eid: Eid::Int(5),
        delete: true,
        ..Default::default()
    };
    assert_eq!(
        task_to_wire_json(&del),
        r#"{"etype":"A","eid":5,"delete":true}"#
    );
    assert_eq!(
        task_from_wire_json(&model, br#"{"etype":"A","eid":5,"delete":true}"#).unwrap(),
        del
    );
}

#[test]
fn wire_json_from_dp3_workers() {
    let model = test_model();
    // DP3's verified example message: c and t2 are re-defaulted on receipt.
    let msg = br#"{"etype":"test_entity_type","eid":"e1",
 "data_points":[{"etype":"test_entity_type","eid":"e1","attr":"test_attr_history","src":"s","v":3,"t1":"2025-01-01T00:00:00Z"}],
 "tags":["x"],"ttl_tokens":{"data":"2025-02-01T00:00:00Z"}}"#;
    let t = task_from_wire_json(&model, msg).unwrap();
    assert_eq!(t.tags, vec![Bson::String("x".into())]);
    assert_eq!(t.data_points[0].c, 1.0);
    assert_eq!(t.data_points[0].t2, Some(utc(2025, 1, 1, 0, 0, 0)));
    assert_eq!(
        t.ttl_tokens.as_ref().unwrap()["data"],
        utc(2025, 2, 1, 0, 0, 0)
    );
    // values of address types and IPv6 rendering
    let v6 = Eid::Ipv6("::ffff:1.2.3.4".parse().unwrap());
    let task = DataPointTask {
        etype: "ip6".into(),
        eid: v6.clone(),
        data_points: vec![DataPoint {
            etype: "ip6".into(),
            eid: v6,
            attr: "name".into(),
            src: None,
            v: Bson::String("n".into()),
            c: 1.0,
            t1: None,
            t2: None,
        }],
        ..Default::default()
    };
    let s = task_to_wire_json(&task);
    assert!(s.contains(r#""eid":"::ffff:102:304""#), "{s}");
    assert_eq!(task_from_wire_json(&model, s.as_bytes()).unwrap(), task);
}

#[test]
fn wire_json_rejections() {
    let model = test_model();
    for (msg, want) in [
        (
            &br#"{"etype":"nope","eid":"x","delete":true}"#[..],
            "Invalid etype 'nope'",
        ),
        (
            br#"{"etype":"A","eid":5}"#,
            "DataPointTask must contain at least one datapoint, non-empty ttl_tokens, or be a delete task.",
        ),
        (br#"[1]"#, ""),
        (br#"{"etype":"A","eid":"x","delete":true}"#, ""),
        (
            br#"{"etype":"A","eid":5,"data_points":[{"etype":"A","eid":6,"attr":"name","v":"n"}]}"#,
            "",
        ),
        (
            br#"{"etype":"A","eid":5,"data_points":[{"etype":"A","eid":5,"attr":"zzz","v":"n"}]}"#,
            "",
        ),
        (
            br#"{"etype":"A","eid":5,"data_points":[{"etype":"A","eid":5,"attr":"name","v":1}]}"#,
            "",
        ),
        (br#"{"etype":"A","eid":5,"data_points":[7]}"#, ""),
        (br#"{"etype":"A","eid":5,"ttl_tokens":{"a":"x"}}"#, ""),
    ] {
        let e = task_from_wire_json(&model, msg).expect_err(std::str::from_utf8(msg).unwrap());
        if !want.is_empty() {
            assert_eq!(e.to_string(), want);
        }
    }
}

#[test]
fn wire_round_trip_of_every_value_kind() {
    let model = test_model();
    let body = json!([
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_tag", "v": "yes"},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_int64", "v": i64::MAX},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_float", "v": "nan"},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_float", "v": "-inf"},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_ipv6", "v": "::ffff:1.2.3.4"},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_mac", "v": "AA:BB:CC:DD:EE:FF"},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_time", "v": "2024-01-01T00:00:00.123+01:00"},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_json", "v": "{\"a\": [1, null]}"},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_special", "v": null},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_dict", "v": {"key1": 1, "key2": "b"}},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_data_link", "v": {"eid": "y", "data": 2}},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_link_array", "v": [{"eid": 1}, {"eid": 1}],
         "t1": "2024-01-01T00:00:00Z", "t2": "2024-01-02T00:00:00.5Z", "c": 0.25, "src": "s"},
        {"type": "test_entity_type", "id": "x", "attr": "test_attr_timeseries", "t1": "2024-01-01T00:00:00Z",
         "v": {"value": [1, 2]}},
        {"type": "test_entity_type", "id": "x", "attr": "ts_irregular", "t1": "2024-01-01T00:00:00Z",
         "v": {"time": ["2024-01-01T00:00:01Z"], "litres": [1.5]}},
    ]);
    let dps = parse_api_datapoints(&model, body.to_string().as_bytes()).unwrap();
    let tasks = group_into_tasks(dps);
    assert_eq!(tasks.len(), 1);
    let wire = task_to_wire_json(&tasks[0]);
    let back =
        task_from_wire_json(&model, wire.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{wire}"));
    // NaN != NaN, so compare the re-rendered wire form
    assert_eq!(task_to_wire_json(&back), wire);
    assert_eq!(back.data_points.len(), tasks[0].data_points.len());
    // and the typed task passes task validation unchanged (except NaN identity)
    let validated = validate_task(&model, back, EmptyTasks::Reject).unwrap();
    assert_eq!(task_to_wire_json(&validated), wire);
}
