//! Walking a YAML value tree by hand, so that every problem is collected with its file and
//! YAML path (serde's `deny_unknown_fields` would stop at the first one).

use chrono::TimeDelta;

use super::error::ConfigError;
use super::tree::Yaml;
use crate::cron::{CRON_KEYS, CronExpression};
use crate::duration::{DURATION_EXPECTED, parse_duration_yaml};

/// Error collector for one file.
pub(crate) struct Ctx {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

/// `a.b` from `a` and `b` (or just `b` at the top level).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo (similar
/// spelling, or one contains the other, e.g. `bucket_size` → `snapshot_bucket_size`). Ties go
/// to the earlier candidate.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let lower = word.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let cl = c.to_lowercase();
        let mut score = strsim::jaro_winkler(&lower, &cl);
        if lower.len() >= 3 && (cl.contains(&lower) || lower.contains(&cl)) {
            score = score.max(0.85);
        }
        if score >= 0.8 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_owned())
}

/// Compact one-line rendering of a YAML value for messages (long values are shortened).
pub(crate) fn render(v: &Yaml) -> String {
    let mut s = render_inner(v);
    if s.chars().count() > 80 {
        s = s.chars().take(77).collect::<String>() + "...";
    }
    s
}

fn render_inner(v: &Yaml) -> String {
    match v {
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\"")),
        Yaml::Sequence(items) => {
            format!(
                "[{}]",
                items
                    .iter()
                    .map(render_inner)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Yaml::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", render_key(k), render_inner(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Yaml::Tagged(t) => format!("{} {}", t.tag, render_inner(&t.value)),
    }
}

fn render_key(k: &Yaml) -> String {
    match k {
        Yaml::String(s) => s.clone(),
        other => render_inner(other),
    }
}

fn type_name(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// A YAML mapping whose keys were checked against the allowed set.
pub(crate) struct Fields<'v> {
    pub map: &'v yaml_serde::Mapping,
    pub path: String,
}

impl<'v> Fields<'v> {
    pub fn get(&self, key: &str) -> Option<&'v Yaml> {
        self.map.get(key)
    }

    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// A required key: reports it missing, else parses it.
    pub fn req<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        parse: impl FnOnce(&mut Ctx, &'v Yaml, &str) -> Option<T>,
    ) -> Option<T> {
        let path = self.path(key);
        match self.get(key) {
            None => {
                ctx.missing(&path);
                None
            }
            Some(v) => parse(ctx, v, &path),
        }
    }

    /// An optional key with a default. `None` only when the value present is invalid.
    pub fn opt<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        default: T,
        parse: impl FnOnce(&mut Ctx, &'v Yaml, &str) -> Option<T>,
    ) -> Option<T> {
        let path = self.path(key);
        match self.get(key) {
            None => Some(default),
            Some(v) => parse(ctx, v, &path),
        }
    }

    /// An optional key where `null` (or absence) means "unset".
    pub fn nullable<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        parse: impl FnOnce(&mut Ctx, &'v Yaml, &str) -> Option<T>,
    ) -> Option<Option<T>> {
        let path = self.path(key);
        match self.get(key) {
            None | Some(Yaml::Null) => Some(None),
            Some(v) => parse(ctx, v, &path).map(Some),
        }
    }
}

impl Ctx {
    pub fn new(file: impl Into<String>) -> Ctx {
        Ctx {
            file: file.into(),
            errors: Vec::new(),
        }
    }

    /// Move the collected errors into `all`.
    pub fn drain_into(&mut self, all: &mut Vec<ConfigError>) {
        all.append(&mut self.errors);
    }

    pub fn push(&mut self, e: ConfigError) {
        self.errors.push(e);
    }

    /// `path: <message> <value> — expected <expected>`.
    pub fn invalid(&mut self, path: &str, v: &Yaml, message: &str, expected: impl Into<String>) {
        let e = ConfigError::new(self.file.clone(), path, message)
            .with_value(render(v))
            .with_expected(expected);
        self.errors.push(e);
    }

    pub fn missing(&mut self, path: &str) {
        self.errors.push(ConfigError::new(
            self.file.clone(),
            path,
            "missing required key",
        ));
    }

    /// Check that `v` is a mapping with string keys from `allowed`; report every other key
    /// (with the nearest allowed key suggested).
    pub fn fields<'v>(&mut self, v: &'v Yaml, path: &str, allowed: &[&str]) -> Option<Fields<'v>> {
        self.fields_hiding(v, path, allowed, &[])
    }

    /// Like [`Ctx::fields`], but keys in `hidden` are skipped silently (the caller reports
    /// them with a specific message) and are not offered as suggestions.
    pub fn fields_hiding<'v>(
        &mut self,
        v: &'v Yaml,
        path: &str,
        allowed: &[&str],
        hidden: &[&str],
    ) -> Option<Fields<'v>> {
        let Yaml::Mapping(map) = v else {
            self.invalid(
                path,
                v,
                &format!("expected a mapping, got {}", type_name(v)),
                mapping_expected(allowed),
            );
            return None;
        };
        for key in map.keys() {
            match key {
                Yaml::String(k)
                    if allowed.contains(&k.as_str()) || hidden.contains(&k.as_str()) => {}
                Yaml::String(k) => {
                    let e = ConfigError::new(self.file.clone(), join(path, k), "unknown key")
                        .with_expected(mapping_expected(allowed))
                        .with_suggestion(suggest(k, allowed.iter().copied()));
                    self.errors.push(e);
                }
                other => {
                    let e = ConfigError::new(self.file.clone(), path, "keys must be strings, got")
                        .with_value(render(other))
                        .with_expected(mapping_expected(allowed));
                    self.errors.push(e);
                }
            }
        }
        Some(Fields {
            map,
            path: path.to_owned(),
        })
    }

    /// A mapping with arbitrary string keys (ids), in YAML order.
    pub fn id_map<'v>(
        &mut self,
        v: &'v Yaml,
        path: &str,
        what: &str,
    ) -> Option<Vec<(String, &'v Yaml)>> {
        let Yaml::Mapping(map) = v else {
            self.invalid(
                path,
                v,
                &format!("expected a mapping, got {}", type_name(v)),
                format!("a mapping of {what}"),
            );
            return None;
        };
        let mut out = Vec::with_capacity(map.len());
        for (k, val) in map {
            match k {
                Yaml::String(k) => out.push((k.clone(), val)),
                other => self.invalid(
                    path,
                    other,
                    "keys must be strings, got",
                    format!("{what} as string keys"),
                ),
            }
        }
        Some(out)
    }

    pub fn string(&mut self, v: &Yaml, path: &str) -> Option<String> {
        match v {
            Yaml::String(s) => Some(s.clone()),
            other => {
                self.invalid(
                    path,
                    other,
                    &format!("expected a string, got {}", type_name(other)),
                    "a string (quote numbers: \"123\")",
                );
                None
            }
        }
    }

    /// Booleans are lenient like DP3's (pydantic): `true/false`, `yes/no`, `on/off`, `1/0`.
    pub fn boolean(&mut self, v: &Yaml, path: &str) -> Option<bool> {
        let parsed = match v {
            Yaml::Bool(b) => Some(*b),
            Yaml::Number(n) => match n.as_i64() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            },
            Yaml::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "y" | "t" | "1" => Some(true),
                "false" | "no" | "off" | "n" | "f" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.invalid(path, v, "expected a boolean, got", "true or false");
        }
        parsed
    }

    /// An integer in `[min, max]`. Booleans and floats are rejected.
    pub fn int(&mut self, v: &Yaml, path: &str, min: i64, max: i64) -> Option<i64> {
        let range = if max == i64::MAX {
            format!("an integer ≥ {min}")
        } else {
            format!("an integer from {min} to {max}")
        };
        match v {
            Yaml::Number(n) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Some(i),
                Some(_) => {
                    self.invalid(path, v, "out of range:", range);
                    None
                }
                None => {
                    self.invalid(path, v, "expected an integer, got", range);
                    None
                }
            },
            other => {
                self.invalid(
                    path,
                    other,
                    &format!("expected an integer, got {}", type_name(other)),
                    range,
                );
                None
            }
        }
    }

    pub fn number(&mut self, v: &Yaml, path: &str) -> Option<f64> {
        match v {
            Yaml::Number(n) => n.as_f64(),
            other => {
                self.invalid(
                    path,
                    other,
                    &format!("expected a number, got {}", type_name(other)),
                    "a number",
                );
                None
            }
        }
    }

    pub fn string_list(&mut self, v: &Yaml, path: &str) -> Option<Vec<String>> {
        let Yaml::Sequence(items) = v else {
            self.invalid(
                path,
                v,
                &format!("expected a list, got {}", type_name(v)),
                "a list of strings",
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &format!("{path}[{i}]")) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub fn duration(&mut self, v: &Yaml, path: &str) -> Option<TimeDelta> {
        match parse_duration_yaml(v) {
            Ok(d) => Some(d),
            Err(e) => {
                self.invalid(path, v, &e.message, DURATION_EXPECTED);
                None
            }
        }
    }

    /// A strictly positive duration.
    pub fn positive_duration(&mut self, v: &Yaml, path: &str) -> Option<TimeDelta> {
        let d = self.duration(v, path)?;
        if d <= TimeDelta::zero() {
            self.invalid(path, v, "must be greater than zero:", "a positive duration");
            return None;
        }
        Some(d)
    }

    pub fn cron(&mut self, v: &Yaml, path: &str) -> Option<CronExpression> {
        let f = self.fields(v, path, &CRON_KEYS)?;
        let mut cron = CronExpression::default();
        let mut ok = true;
        for (k, val) in f.map {
            let Yaml::String(k) = k else { continue };
            if !CRON_KEYS.contains(&k.as_str()) {
                ok = false;
                continue;
            }
            if let Err(e) = cron.set_field(k, val) {
                self.invalid(&join(path, k), val, &e.message, e.expected);
                ok = false;
            }
        }
        ok.then_some(cron)
    }

    /// A path relative to the configuration directory (or absolute).
    pub fn path_value(
        &mut self,
        v: &Yaml,
        path: &str,
        base: &std::path::Path,
    ) -> Option<std::path::PathBuf> {
        let s = self.string(v, path)?;
        if s.is_empty() {
            self.invalid(path, v, "empty path", "a file or directory path");
            return None;
        }
        Some(base.join(s))
    }
}

fn mapping_expected(allowed: &[&str]) -> String {
    if allowed.is_empty() {
        "an empty mapping".into()
    } else {
        format!("one of: {}", allowed.join(", "))
    }
}

/// Convert free-form YAML (module configs) to JSON. Map keys that are numbers/bools are
/// stringified; values JSON cannot hold are reported.
pub(crate) fn yaml_to_json(
    v: &Yaml,
    file: &str,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match v {
        Yaml::Null => J::Null,
        Yaml::Bool(b) => J::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                match n.as_f64().and_then(serde_json::Number::from_f64) {
                    Some(f) => J::Number(f),
                    None => {
                        errors.push(
                            ConfigError::new(file, path, "number cannot be represented in JSON:")
                                .with_value(n.to_string()),
                        );
                        return None;
                    }
                }
            }
        }
        Yaml::String(s) => J::String(s.clone()),
        Yaml::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(yaml_to_json(item, file, &format!("{path}[{i}]"), errors)?);
            }
            J::Array(out)
        }
        Yaml::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, val) in m {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    other => {
                        errors.push(
                            ConfigError::new(file, path, "mapping keys must be scalars, got")
                                .with_value(render(other)),
                        );
                        return None;
                    }
                };
                let sub = join(path, &key);
                out.insert(key, yaml_to_json(val, file, &sub, errors)?);
            }
            J::Object(out)
        }
        Yaml::Tagged(t) => {
            errors.push(
                ConfigError::new(file, path, "YAML tags are not supported:")
                    .with_value(t.tag.to_string()),
            );
            return None;
        }
    })
}
