//! A hand-built entity model for validation tests (mirrors the relevant parts of DP3's
//! `test_entity_type` configuration plus entities for every eid type and timeseries kind).
//! Shared by the unit tests (`#[path]` include) and the integration tests.

#![allow(dead_code)]

use chrono::TimeDelta;
use indexmap::IndexMap;

use super::dp3::{
    AttrKind, AttrSpec, DataType, DictField, EidType, EntitySpec, EntityType, HistoryParams,
    Lifetime, ModelSpec, Primitive, TimeseriesParams, TimeseriesType,
};

fn attr(id: &str, kind: AttrKind) -> AttrSpec {
    AttrSpec {
        id: id.to_owned(),
        name: id.to_owned(),
        description: String::new(),
        ttl: None,
        kind,
        data_type_str: None,
        mirror_of: None,
    }
}

pub fn plain(id: &str, dt: DataType) -> AttrSpec {
    attr(
        id,
        AttrKind::Plain {
            data_type: dt,
            editable: false,
        },
    )
}

pub fn observations(id: &str, dt: DataType, multi_value: bool) -> AttrSpec {
    attr(
        id,
        AttrKind::Observations {
            data_type: dt,
            editable: false,
            confidence: false,
            multi_value,
            history_params: HistoryParams::default(),
            history_force_graph: false,
        },
    )
}

pub fn timeseries(
    id: &str,
    ts: TimeseriesType,
    series: &[(&str, Primitive)],
    step: Option<TimeDelta>,
) -> AttrSpec {
    let mut all: IndexMap<String, Primitive> =
        series.iter().map(|(k, p)| ((*k).to_owned(), *p)).collect();
    match ts {
        TimeseriesType::Regular => {}
        TimeseriesType::Irregular => {
            all.insert("time".into(), Primitive::Time);
        }
        TimeseriesType::IrregularIntervals => {
            all.insert("time_first".into(), Primitive::Time);
            all.insert("time_last".into(), Primitive::Time);
        }
    }
    attr(
        id,
        AttrKind::Timeseries {
            timeseries_type: ts,
            series: all,
            timeseries_params: TimeseriesParams {
                max_age: None,
                time_step: step,
            },
        },
    )
}

pub fn prim(p: Primitive) -> DataType {
    DataType::Primitive(p)
}

pub fn link(etype: &str, data: Option<DataType>) -> DataType {
    DataType::Link {
        etype: etype.to_owned(),
        data: data.map(Box::new),
        mirror: None,
    }
}

fn entity(id: &str, id_type: EidType, attrs: Vec<AttrSpec>) -> (String, EntityType) {
    (
        id.to_owned(),
        EntityType {
            spec: EntitySpec {
                id: id.to_owned(),
                name: id.to_owned(),
                description: String::new(),
                snapshot: true,
                id_data_type: id_type,
                lifetime: Lifetime::Immortal,
            },
            attribs: attrs.into_iter().map(|a| (a.id.clone(), a)).collect(),
        },
    )
}

/// The test model: `test_entity_type` (string ids) with one plain attribute per data type,
/// observations, timeseries of every kind and links; `A` (int ids), `ip` (ipv4), `ip6`,
/// `dev` (mac).
pub fn test_model() -> ModelSpec {
    use Primitive::*;
    let mut mirror = plain("mirror_attr", DataType::Set(Box::new(link("A", None))));
    mirror.mirror_of = Some(("A".into(), "to_test".into()));
    let tet = entity(
        "test_entity_type",
        EidType::String,
        vec![
            plain("test_attr_tag", prim(Tag)),
            plain("test_attr_binary", prim(Binary)),
            plain("test_attr_int", prim(Int)),
            plain("test_attr_int64", prim(Int64)),
            plain("test_attr_string", prim(String)),
            plain("test_attr_float", prim(Float)),
            plain("test_attr_ipv4", prim(Ipv4)),
            plain("test_attr_ipv6", prim(Ipv6)),
            plain("test_attr_mac", prim(Mac)),
            plain("test_attr_time", prim(Time)),
            plain("test_attr_json", prim(Json)),
            plain("test_attr_special", prim(Special)),
            plain(
                "test_attr_category",
                DataType::Category {
                    base: String,
                    members: vec!["cat1".into(), "cat2".into()],
                },
            ),
            plain(
                "test_attr_int_category",
                DataType::Category {
                    base: Int,
                    members: vec![
                        bson::Bson::Int32(1),
                        bson::Bson::Int32(2),
                        bson::Bson::Int32(3),
                    ],
                },
            ),
            plain("test_attr_array", DataType::Array(Box::new(prim(Int)))),
            plain("test_attr_set", DataType::Set(Box::new(prim(Int)))),
            plain(
                "test_attr_dict",
                DataType::Dict(vec![
                    DictField {
                        name: "key1".into(),
                        optional: false,
                        ty: Int,
                    },
                    DictField {
                        name: "key2".into(),
                        optional: false,
                        ty: String,
                    },
                    DictField {
                        name: "key3".into(),
                        optional: true,
                        ty: Ipv4,
                    },
                ]),
            ),
            observations("test_attr_history", prim(Int), false),
            observations("test_attr_multi_value", prim(String), true),
            timeseries(
                "test_attr_timeseries",
                TimeseriesType::Regular,
                &[("value", Int)],
                Some(TimeDelta::minutes(10)),
            ),
            timeseries(
                "ts_regular2",
                TimeseriesType::Regular,
                &[("a", Int), ("b", Float)],
                Some(TimeDelta::minutes(10)),
            ),
            timeseries(
                "ts_irregular",
                TimeseriesType::Irregular,
                &[("litres", Float)],
                None,
            ),
            timeseries(
                "ts_intervals",
                TimeseriesType::IrregularIntervals,
                &[("bytes", Int64)],
                None,
            ),
            plain("test_attr_link", link("test_entity_type", None)),
            plain(
                "test_attr_data_link",
                link("test_entity_type", Some(prim(Int))),
            ),
            plain("test_attr_link_ip", link("ip", Some(prim(String)))),
            observations(
                "test_attr_link_array",
                DataType::Array(Box::new(link("A", None))),
                true,
            ),
            mirror,
        ],
    );
    let mut m = ModelSpec::default();
    for (k, v) in [
        tet,
        entity("A", EidType::Int, vec![plain("name", prim(String))]),
        entity(
            "ip",
            EidType::Ipv4,
            vec![
                observations("open_ports", prim(Int), true),
                observations("hostname", prim(String), false),
            ],
        ),
        entity("ip6", EidType::Ipv6, vec![plain("name", prim(String))]),
        entity("dev", EidType::Mac, vec![plain("name", prim(String))]),
    ] {
        m.entities.insert(k, v);
    }
    m
}
