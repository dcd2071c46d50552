//! Building the entity model from `db_entities/` (data-model.md §2, §2.7).
//!
//! Order of checks, like DP3: all `entity` blocks first (links may refer to types defined in
//! any file), then every attribute, then relation targets, then mirrors. Unlike DP3 we also
//! check at load time: entity/attribute id format, reserved attribute ids `eid`/`_id`, a
//! user-supplied `t`, `time_step` of regular timeseries, `pre/post_validity: null`, and that a
//! weak entity type is the target of at least one relation.

use std::collections::HashSet;
use std::sync::LazyLock;

use indexmap::IndexMap;
use regex::Regex;

use super::error::ConfigError;
use super::reader::{Ctx, join, render, suggest};
use super::tree::{DirTree, Entry, Yaml};
use crate::datatype::{DataType, Primitive};
use crate::eid::EidType;
use crate::spec::{
    AttrKind, AttrSpec, EntitySpec, EntityType, HistoryParams, Lifetime, ModelSpec,
    TimeseriesParams, TimeseriesType,
};

static ID_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z_][a-zA-Z0-9_-]*$").expect("static regex"));
const ID_EXPECTED: &str = "letters, digits, '_' and '-', not starting with a digit or '-' \
(^[a-zA-Z_][a-zA-Z0-9_-]*$)";

/// Attribute ids that collide with keys of snapshots and master records (data-model.md §9.4).
const RESERVED_ATTR_IDS: [&str; 2] = ["eid", "_id"];

const ATTR_TYPES: [&str; 3] = ["plain", "observations", "timeseries"];
const COMMON_KEYS: [&str; 5] = ["type", "name", "description", "ttl", "id"];
const PLAIN_KEYS: [&str; 2] = ["data_type", "editable"];
const OBSERVATIONS_KEYS: [&str; 6] = [
    "data_type",
    "editable",
    "confidence",
    "multi_value",
    "history_params",
    "history_force_graph",
];
const TIMESERIES_KEYS: [&str; 3] = ["timeseries_type", "series", "timeseries_params"];
const SERIES_TYPES: [Primitive; 4] = [
    Primitive::Int,
    Primitive::Int64,
    Primitive::Float,
    Primitive::Time,
];

/// One parsed `db_entities/<file>.yml` before attributes are built.
struct EntityFile<'t> {
    rel: String,
    spec: EntitySpec,
    attribs: &'t Yaml,
}

pub(crate) fn build_model(dir: &DirTree, errors: &mut Vec<ConfigError>) -> Option<ModelSpec> {
    let start_errors = errors.len();
    // (1) entity blocks
    let mut files = Vec::new();
    for (stem, entry) in &dir.entries {
        match entry {
            Entry::Dir(sub) => errors.push(ConfigError::new(
                sub.rel.clone(),
                "",
                "sub-directories are not allowed in db_entities/ (one <entity>.yml file per entity type)",
            )),
            Entry::File { rel, value } => {
                let mut ctx = Ctx::new(rel.clone());
                let parsed = parse_entity_file(&mut ctx, stem, value);
                ctx.drain_into(errors);
                if let Some(f) = parsed {
                    files.push(f);
                }
            }
        }
    }
    let etypes: IndexMap<String, EidType> = files
        .iter()
        .map(|f| (f.spec.id.clone(), f.spec.id_data_type))
        .collect();

    // (2) attributes, (3) relation targets
    let mut model = ModelSpec::default();
    let mut attr_files: IndexMap<String, String> = IndexMap::new();
    for f in files {
        let mut ctx = Ctx::new(f.rel.clone());
        let attribs = parse_attribs(&mut ctx, f.attribs, &etypes).unwrap_or_default();
        ctx.drain_into(errors);
        attr_files.insert(f.spec.id.clone(), f.rel);
        model.entities.insert(
            f.spec.id.clone(),
            EntityType {
                spec: f.spec,
                attribs,
            },
        );
    }

    // (4) mirrors: a read-only `set<link<S>>` attribute on the target type.
    let mut mirrors: Vec<(String, String, String, String)> = Vec::new(); // (target, M, S, a)
    for (etype, et) in &model.entities {
        for attr in et.attribs.values() {
            if let Some(dt) = attr.data_type()
                && let (Some(m), Some(target)) = (dt.mirror(), dt.link_target())
            {
                mirrors.push((
                    target.to_owned(),
                    m.to_owned(),
                    etype.clone(),
                    attr.id.clone(),
                ));
            }
        }
    }
    for (target, m, source, attr) in mirrors {
        let file = attr_files.get(&source).cloned().unwrap_or_default();
        let path = format!("attribs.{attr}.data_type");
        let Some(t) = model.entities.get_mut(&target) else {
            continue; // unknown target already reported
        };
        if RESERVED_ATTR_IDS.contains(&m.as_str()) {
            errors.push(
                ConfigError::new(file, path, "reserved mirror attribute name")
                    .with_value(format!("\"{m}\""))
                    .with_expected("a name other than eid and _id"),
            );
            continue;
        }
        if let Some(existing) = t.attribs.get(&m) {
            let why = match &existing.mirror_of {
                Some((s, a)) => format!("it is already the mirror of {s}.{a}"),
                None => format!("{target} already defines an attribute '{m}'"),
            };
            errors.push(
                ConfigError::new(
                    file,
                    path,
                    format!(
                        "'{target}.{m}' is a mirrored attribute, but {why}; mirrored attributes are \
                         defined implicitly — remove the definition or choose another mirror name"
                    ),
                )
                .with_value(format!("\"mirror={m}\"")),
            );
            continue;
        }
        t.attribs.insert(
            m.clone(),
            AttrSpec {
                id: m.clone(),
                name: m.clone(),
                description: format!("Read-only mirror attribute of {source}.{attr}"),
                ttl: None,
                kind: AttrKind::Plain {
                    data_type: DataType::Set(Box::new(DataType::Link {
                        etype: source.clone(),
                        data: None,
                        mirror: None,
                    })),
                    editable: false,
                },
                data_type_str: Some(format!("set<link<{source}>>")),
                mirror_of: Some((source, attr)),
            },
        );
    }

    // Weak entity types must be the target of a relation (DP3 checks this only when the
    // garbage collector starts; mirror attributes do not count).
    let targets: HashSet<&str> = model.relations().map(|(_, _, t)| t).collect();
    for (etype, et) in &model.entities {
        if et.spec.lifetime == Lifetime::Weak && !targets.contains(etype.as_str()) {
            let file = attr_files.get(etype).cloned().unwrap_or_default();
            errors.push(
                ConfigError::new(
                    file,
                    "entity.lifetime.type",
                    format!("entity type '{etype}' has weak lifetime but is not referenced by any relation attribute"),
                )
                .with_value("weak")
                .with_expected(format!("a link<{etype}> attribute in some entity type, or another lifetime")),
            );
        }
    }

    (errors.len() == start_errors).then_some(model)
}

fn parse_entity_file<'t>(ctx: &mut Ctx, stem: &str, v: &'t Yaml) -> Option<EntityFile<'t>> {
    let f = ctx.fields(v, "", &["entity", "attribs"])?;
    let spec = f.req(ctx, "entity", |ctx, v, p| {
        parse_entity_block(ctx, v, p, stem)
    });
    let attribs = f.req(ctx, "attribs", |ctx, v, p| {
        if v.is_mapping() {
            Some(v)
        } else {
            ctx.invalid(
                p,
                v,
                "expected a mapping of attributes, got",
                "a mapping attribute id → specification (`attribs: {}` for none)",
            );
            None
        }
    });
    Some(EntityFile {
        rel: ctx.file.clone(),
        spec: spec?,
        attribs: attribs?,
    })
}

fn parse_entity_block(ctx: &mut Ctx, v: &Yaml, path: &str, stem: &str) -> Option<EntitySpec> {
    let f = ctx.fields(
        v,
        path,
        &[
            "id",
            "name",
            "description",
            "snapshot",
            "id_data_type",
            "lifetime",
        ],
    )?;
    let id = f.req(ctx, "id", |ctx, v, p| {
        let id = ctx.string(v, p)?;
        if !ID_RE.is_match(&id) {
            ctx.invalid(p, v, "invalid entity type id", ID_EXPECTED);
            return None;
        }
        if id != stem {
            ctx.push(
                ConfigError::new(
                    ctx.file.clone(),
                    p,
                    format!("entity id does not match the file name '{stem}.yml':"),
                )
                .with_value(render(v))
                .with_expected(format!("\"{stem}\", or rename the file to {id}.yml")),
            );
            return None;
        }
        Some(id)
    });
    let name = f.req(ctx, "name", Ctx::string);
    let description = f.opt(ctx, "description", String::new(), Ctx::string);
    let snapshot = f.req(ctx, "snapshot", Ctx::boolean);
    let id_data_type = f.opt(ctx, "id_data_type", EidType::String, |ctx, v, p| {
        let s = ctx.string(v, p)?;
        match EidType::from_name(&s) {
            Some(t) => Some(t),
            None => {
                let names: Vec<&str> = EidType::ALL.iter().map(|t| t.name()).collect();
                ctx.push(
                    ConfigError::new(ctx.file.clone(), p, "unsupported entity id data type")
                        .with_value(render(v))
                        .with_expected(format!("one of: {}", names.join(", ")))
                        .with_suggestion(suggest(&s, names.iter().copied())),
                );
                None
            }
        }
    });
    let lifetime = f.opt(ctx, "lifetime", Lifetime::Immortal, parse_lifetime);
    Some(EntitySpec {
        id: id?,
        name: name?,
        description: description?,
        snapshot: snapshot?,
        id_data_type: id_data_type?,
        lifetime: lifetime?,
    })
}

fn parse_lifetime(ctx: &mut Ctx, v: &Yaml, path: &str) -> Option<Lifetime> {
    if v.is_null() {
        return Some(Lifetime::Immortal);
    }
    let types = ["immortal", "ttl", "weak"];
    let ty = match v.get("type") {
        None if v.is_mapping() => {
            ctx.push(
                ConfigError::new(ctx.file.clone(), join(path, "type"), "missing required key")
                    .with_expected("one of: immortal, ttl, weak"),
            );
            None
        }
        None => None,
        Some(t) => match t.as_str() {
            Some(s) if types.contains(&s) => Some(s),
            _ => {
                ctx.push(
                    ConfigError::new(
                        ctx.file.clone(),
                        join(path, "type"),
                        "unknown lifetime type",
                    )
                    .with_value(render(t))
                    .with_expected("one of: immortal, ttl, weak")
                    .with_suggestion(t.as_str().and_then(|s| suggest(s, types))),
                );
                None
            }
        },
    };
    match ty {
        Some("ttl") => {
            let f = ctx.fields(v, path, &["type", "on_create", "mirror_data"])?;
            let on_create = f.req(ctx, "on_create", Ctx::duration);
            let mirror_data = f.opt(ctx, "mirror_data", true, Ctx::boolean);
            Some(Lifetime::Ttl {
                on_create: on_create?,
                mirror_data: mirror_data?,
            })
        }
        Some(t) => {
            ctx.fields(v, path, &["type"])?;
            Some(if t == "weak" {
                Lifetime::Weak
            } else {
                Lifetime::Immortal
            })
        }
        None => {
            ctx.fields(v, path, &["type", "on_create", "mirror_data"]);
            None
        }
    }
}

fn parse_attribs(
    ctx: &mut Ctx,
    v: &Yaml,
    etypes: &IndexMap<String, EidType>,
) -> Option<IndexMap<String, AttrSpec>> {
    let items = ctx.id_map(v, "attribs", "attribute ids")?;
    let mut out = IndexMap::new();
    let mut ok = true;
    for (id, spec) in items {
        let path = join("attribs", &id);
        if !ID_RE.is_match(&id) {
            ctx.invalid(
                &path,
                &Yaml::String(id.clone()),
                "invalid attribute id",
                ID_EXPECTED,
            );
            ok = false;
            continue;
        }
        if RESERVED_ATTR_IDS.contains(&id.as_str()) {
            ctx.invalid(
                &path,
                &Yaml::String(id.clone()),
                "reserved attribute id",
                "an id other than eid and _id (they collide with keys of snapshots and master records)",
            );
            ok = false;
            continue;
        }
        match parse_attr(ctx, &id, spec, &path, etypes) {
            Some(a) => {
                out.insert(id, a);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn parse_attr(
    ctx: &mut Ctx,
    id: &str,
    v: &Yaml,
    path: &str,
    etypes: &IndexMap<String, EidType>,
) -> Option<AttrSpec> {
    if !v.is_mapping() {
        ctx.invalid(
            path,
            v,
            "an attribute specification must be a mapping, got",
            "a mapping with type, name, ...",
        );
        return None;
    }
    if let Some(t) = v.get("t") {
        ctx.invalid(
            &join(path, "t"),
            t,
            "`t` is DP3's internal attribute type flag and cannot be set",
            "`type: plain | observations | timeseries` instead",
        );
    }
    let ty = match v.get("type") {
        None => {
            ctx.push(
                ConfigError::new(ctx.file.clone(), join(path, "type"), "missing required key")
                    .with_expected("one of: plain, observations, timeseries"),
            );
            None
        }
        Some(t) => match t.as_str() {
            Some(s) if ATTR_TYPES.contains(&s) => Some(s),
            _ => {
                ctx.push(
                    ConfigError::new(
                        ctx.file.clone(),
                        join(path, "type"),
                        "unknown attribute type",
                    )
                    .with_value(render(t))
                    .with_expected("one of: plain, observations, timeseries")
                    .with_suggestion(t.as_str().and_then(|s| suggest(s, ATTR_TYPES))),
                );
                None
            }
        },
    };
    let kind_keys: Vec<&str> = match ty {
        Some("plain") => PLAIN_KEYS.to_vec(),
        Some("observations") => OBSERVATIONS_KEYS.to_vec(),
        Some(_) => TIMESERIES_KEYS.to_vec(),
        // Unknown type: accept the union so that only real typos are reported.
        None => OBSERVATIONS_KEYS
            .iter()
            .chain(TIMESERIES_KEYS.iter())
            .copied()
            .collect(),
    };
    let allowed: Vec<&str> = COMMON_KEYS
        .iter()
        .chain(kind_keys.iter())
        .copied()
        .collect();
    // `t` was reported above with a specific message.
    let f = ctx.fields_hiding(v, path, &allowed, &["t"])?;

    // DP3 overwrites an inner `id` with the map key; we accept it only when it agrees.
    let id_ok = f
        .opt(ctx, "id", id.to_owned(), |ctx, v, p| {
            let s = ctx.string(v, p)?;
            if s != id {
                ctx.invalid(
                    p,
                    v,
                    "attribute id differs from its key",
                    format!("\"{id}\" or no `id` key (the key is the attribute id)"),
                );
                return None;
            }
            Some(s)
        })
        .is_some();
    let name = f.req(ctx, "name", Ctx::string);
    let description = f.opt(ctx, "description", String::new(), Ctx::string);
    let ttl = f.nullable(ctx, "ttl", Ctx::duration);

    let data_type = |ctx: &mut Ctx| {
        f.req(ctx, "data_type", |ctx, v, p| {
            let s = ctx.string(v, p)?;
            let dt = parse_data_type(ctx, v, p, &s, etypes)?;
            Some((dt, s))
        })
    };
    let editable = |ctx: &mut Ctx| f.opt(ctx, "editable", false, Ctx::boolean);
    let (kind, data_type_str) = match ty {
        Some("plain") => {
            let dt = data_type(ctx);
            let editable = editable(ctx);
            let (dt, s) = dt?;
            (
                AttrKind::Plain {
                    data_type: dt,
                    editable: editable?,
                },
                Some(s),
            )
        }
        Some("observations") => {
            let dt = data_type(ctx);
            let editable = editable(ctx);
            let confidence = f.opt(ctx, "confidence", false, Ctx::boolean);
            let multi_value = f.opt(ctx, "multi_value", false, Ctx::boolean);
            let history_params = f.opt(
                ctx,
                "history_params",
                HistoryParams::default(),
                parse_history_params,
            );
            let force_graph = f.opt(ctx, "history_force_graph", false, Ctx::boolean);
            let (dt, s) = dt?;
            (
                AttrKind::Observations {
                    data_type: dt,
                    editable: editable?,
                    confidence: confidence?,
                    multi_value: multi_value?,
                    history_params: history_params?,
                    history_force_graph: force_graph?,
                },
                Some(s),
            )
        }
        Some(_) => (parse_timeseries(ctx, &f)?, None),
        None => return None,
    };
    if !id_ok || v.get("t").is_some() {
        return None;
    }
    Some(AttrSpec {
        id: id.to_owned(),
        name: name?,
        description: description?,
        ttl: ttl?,
        kind,
        data_type_str,
        mirror_of: None,
    })
}

fn parse_data_type(
    ctx: &mut Ctx,
    v: &Yaml,
    path: &str,
    s: &str,
    etypes: &IndexMap<String, EidType>,
) -> Option<DataType> {
    let dt = match DataType::parse(s) {
        Ok(dt) => dt,
        Err(e) => {
            ctx.push(
                ConfigError::new(ctx.file.clone(), path, e.message)
                    .with_expected(e.expected)
                    .with_suggestion(e.suggestion),
            );
            return None;
        }
    };
    let mut ok = true;
    for target in dt.referenced_etypes() {
        if !etypes.contains_key(target) {
            ok = false;
            ctx.push(
                ConfigError::new(
                    ctx.file.clone(),
                    path,
                    format!("entity type '{target}' is not defined"),
                )
                .with_value(render(v))
                .with_expected("a link to an entity type defined in db_entities/")
                .with_suggestion(suggest(target, etypes.keys().map(String::as_str))),
            );
        }
    }
    ok.then_some(dt)
}

fn parse_history_params(ctx: &mut Ctx, v: &Yaml, path: &str) -> Option<HistoryParams> {
    if v.is_null() {
        return Some(HistoryParams::default());
    }
    let f = ctx.fields(
        v,
        path,
        &[
            "max_age",
            "max_items",
            "expire_time",
            "pre_validity",
            "post_validity",
            "aggregate",
        ],
    )?;
    let d = HistoryParams::default();
    let max_age = f.nullable(ctx, "max_age", Ctx::duration);
    let max_items = f.nullable(ctx, "max_items", |ctx, v, p| {
        ctx.int(v, p, 1, i64::MAX).map(|i| i as u64)
    });
    let expire_time = f.nullable(ctx, "expire_time", |ctx, v, p| match v.as_str() {
        // DP3: "inf" means no expiry (None).
        Some("inf") => Some(None),
        _ => ctx.duration(v, p).map(Some),
    });
    // `null` is rejected here: DP3 loads it and then crashes in snapshots/aggregation.
    let validity = |ctx: &mut Ctx, v: &Yaml, p: &str| {
        if v.is_null() {
            ctx.invalid(
                p,
                v,
                "must not be null:",
                "a duration such as 0s or 15m (omit the key for 0s)",
            );
            return None;
        }
        ctx.duration(v, p)
    };
    let pre_validity = f.opt(ctx, "pre_validity", d.pre_validity, validity);
    let post_validity = f.opt(ctx, "post_validity", d.post_validity, validity);
    let aggregate = f.opt(ctx, "aggregate", true, Ctx::boolean);
    Some(HistoryParams {
        max_age: max_age?,
        max_items: max_items?,
        expire_time: expire_time?.flatten(),
        pre_validity: pre_validity?,
        post_validity: post_validity?,
        aggregate: aggregate?,
    })
}

fn parse_timeseries(ctx: &mut Ctx, f: &super::reader::Fields<'_>) -> Option<AttrKind> {
    let types = ["regular", "irregular", "irregular_intervals"];
    let ts_type = f.req(ctx, "timeseries_type", |ctx, v, p| match v.as_str() {
        Some("regular") => Some(TimeseriesType::Regular),
        Some("irregular") => Some(TimeseriesType::Irregular),
        Some("irregular_intervals") => Some(TimeseriesType::IrregularIntervals),
        _ => {
            ctx.push(
                ConfigError::new(ctx.file.clone(), p, "unknown timeseries type")
                    .with_value(render(v))
                    .with_expected("one of: regular, irregular, irregular_intervals")
                    .with_suggestion(v.as_str().and_then(|s| suggest(s, types))),
            );
            None
        }
    });
    let params = f.req(ctx, "timeseries_params", |ctx, v, p| {
        if v.is_null() {
            return Some((TimeseriesParams::default(), p.to_owned(), false));
        }
        let f = ctx.fields(v, p, &["max_age", "time_step"])?;
        let max_age = f.nullable(ctx, "max_age", Ctx::duration);
        let time_step = f.nullable(ctx, "time_step", Ctx::positive_duration);
        Some((
            TimeseriesParams {
                max_age: max_age?,
                time_step: time_step?,
            },
            p.to_owned(),
            true,
        ))
    });
    let series_path = f.path("series");
    let series = f.opt(ctx, "series", IndexMap::new(), |ctx, v, p| {
        if v.is_null() {
            return Some(IndexMap::new());
        }
        let items = ctx.id_map(v, p, "series ids")?;
        let mut out = IndexMap::new();
        let mut ok = true;
        for (sid, spec) in items {
            let sp = join(p, &sid);
            if !ID_RE.is_match(&sid) {
                ctx.invalid(
                    &sp,
                    &Yaml::String(sid.clone()),
                    "invalid series id",
                    ID_EXPECTED,
                );
                ok = false;
                continue;
            }
            let Some(sf) = ctx.fields(spec, &sp, &["data_type"]) else {
                ok = false;
                continue;
            };
            let ty = sf.req(ctx, "data_type", |ctx, v, p| {
                let s = ctx.string(v, p)?;
                match Primitive::from_name(&s).filter(|t| SERIES_TYPES.contains(t)) {
                    Some(t) => Some(t),
                    None => {
                        ctx.push(
                            ConfigError::new(ctx.file.clone(), p, "unsupported series data type")
                                .with_value(render(v))
                                .with_expected("one of: int, int64, float, time")
                                .with_suggestion(suggest(&s, ["int", "int64", "float", "time"])),
                        );
                        None
                    }
                }
            });
            match ty {
                Some(t) => {
                    out.insert(sid, t);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    });
    let ts_type = ts_type?;
    let (params, params_path, _) = params?;
    let mut series = series?;
    let mut ok = true;
    if ts_type == TimeseriesType::Regular && params.time_step.is_none() {
        ctx.push(
            ConfigError::new(
                ctx.file.clone(),
                join(&params_path, "time_step"),
                "missing required key for a regular timeseries",
            )
            .with_expected("the sample spacing, e.g. time_step: 10m"),
        );
        ok = false;
    }
    let implicit: &[&str] = match ts_type {
        TimeseriesType::Regular => &[],
        TimeseriesType::Irregular => &["time"],
        TimeseriesType::IrregularIntervals => &["time_first", "time_last"],
    };
    for name in implicit {
        if let Some(t) = series.get(*name)
            && *t != Primitive::Time
        {
            ctx.push(
                ConfigError::new(
                    ctx.file.clone(),
                    join(&series_path, name),
                    format!(
                        "series '{name}' is implicit for {} timeseries and has type time",
                        ts_type.name()
                    ),
                )
                .with_value(t.name())
                .with_expected(format!("no series named '{name}' (or data_type: time)")),
            );
            ok = false;
        }
        series.insert((*name).to_owned(), Primitive::Time);
    }
    if series.is_empty() {
        ctx.push(
            ConfigError::new(
                ctx.file.clone(),
                series_path,
                "a regular timeseries needs at least one series",
            )
            .with_expected("series: {<id>: {data_type: int | int64 | float | time}}"),
        );
        ok = false;
    }
    ok.then_some(AttrKind::Timeseries {
        timeseries_type: ts_type,
        series,
        timeseries_params: params,
    })
}
