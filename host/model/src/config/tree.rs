//! Reading the configuration directory with DP3's rules (data-model.md §1.1):
//! sub-directories become nested maps, only files ending in exactly `.yml` are parsed, an
//! empty document counts as absent, the top level of a file must be a mapping, and entries
//! keep the order the OS lists them in (the API's `/entities` preserves it).

use std::fs;
use std::path::Path;

use indexmap::IndexMap;

use super::error::{ConfigError, ConfigErrors};
use super::reader::{render, yaml_to_json};

pub(crate) type Yaml = yaml_serde::Value;

/// One directory of the configuration tree, in listing order.
#[derive(Debug, Default)]
pub(crate) struct DirTree {
    /// Path relative to the configuration root, with a trailing `/` (`""` for the root).
    pub rel: String,
    pub entries: IndexMap<String, Entry>,
}

#[derive(Debug)]
pub(crate) enum Entry {
    File { rel: String, value: Yaml },
    Dir(DirTree),
}

/// Read `root` recursively. Errors (unreadable entries, YAML syntax, non-mapping top levels)
/// and warnings (ignored `.yaml` files) are collected.
pub(crate) fn read_tree(
    root: &Path,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> DirTree {
    read_dir(root, String::new(), errors, warnings)
}

fn read_dir(
    dir: &Path,
    rel: String,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> DirTree {
    let mut tree = DirTree {
        rel: rel.clone(),
        entries: IndexMap::new(),
    };
    let shown = if rel.is_empty() {
        ".".to_owned()
    } else {
        rel.clone()
    };
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) => {
            errors.push(ConfigError::new(
                shown,
                "",
                format!("cannot list directory: {e}"),
            ));
            return tree;
        }
    };
    for entry in listing {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                errors.push(ConfigError::new(
                    shown.clone(),
                    "",
                    format!("cannot list directory: {e}"),
                ));
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        // Follow symlinks, like DP3's os.path.isdir / isfile.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let sub = read_dir(&path, format!("{rel}{name}/"), errors, warnings);
            insert(&mut tree, name.clone(), Entry::Dir(sub), &rel, errors);
        } else if meta.is_file() {
            if let Some(stem) = name.strip_suffix(".yml") {
                let file_rel = format!("{rel}{name}");
                if let Some(value) = read_yaml_file(&path, &file_rel, errors) {
                    insert(
                        &mut tree,
                        stem.to_owned(),
                        Entry::File {
                            rel: file_rel,
                            value,
                        },
                        &rel,
                        errors,
                    );
                }
            } else if name.ends_with(".yaml") {
                warnings.push(format!(
                    "{rel}{name}: ignored — only files ending in \".yml\" are read (rename it to \"{}.yml\")",
                    name.trim_end_matches(".yaml")
                ));
            }
        }
    }
    tree
}

fn insert(tree: &mut DirTree, key: String, entry: Entry, rel: &str, errors: &mut Vec<ConfigError>) {
    if tree.entries.contains_key(&key) {
        errors.push(ConfigError::new(
            format!("{rel}{key}"),
            "",
            format!("both \"{key}.yml\" and the directory \"{key}/\" exist; keep only one"),
        ));
        return;
    }
    tree.entries.insert(key, entry);
}

/// Parse one `.yml` file. `None` when it is empty (null document = absent) or invalid.
fn read_yaml_file(path: &Path, rel: &str, errors: &mut Vec<ConfigError>) -> Option<Yaml> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::new(rel, "", format!("cannot read file: {e}")));
            return None;
        }
    };
    let value: Yaml = match yaml_serde::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(ConfigError::new(rel, "", format!("invalid YAML: {e}")));
            return None;
        }
    };
    match value {
        Yaml::Null => None,
        Yaml::Mapping(_) => Some(value),
        other => {
            errors.push(
                ConfigError::new(
                    rel,
                    "",
                    "the top level of a configuration file must be a mapping, got",
                )
                .with_value(render(&other)),
            );
            None
        }
    }
}

/// Every `*.yaml` file under `root` (relative paths), which DP3 — and we — silently ignore.
/// `dp3 check` warns about them: a `.yaml` extension is a classic operator mistake.
pub fn ignored_yaml_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    collect_yaml_files(root, "", &mut out);
    out
}

fn collect_yaml_files(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_yaml_files(&path, &format!("{rel}{name}/"), out);
        } else if meta.is_file() && name.ends_with(".yaml") {
            out.push(format!("{rel}{name}"));
        }
    }
}

/// `modules/<module>.yml` (or `modules/<module>/`) as JSON; `{}` when absent or empty.
pub(crate) fn read_module_config(
    root: &Path,
    module: &str,
) -> Result<serde_json::Value, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let empty = || serde_json::Value::Object(serde_json::Map::new());
    if module.is_empty() || module.contains(['/', '\\']) || module == "." || module == ".." {
        return Err(ConfigErrors::single(
            ConfigError::new("modules/", "", "invalid module name")
                .with_value(format!("\"{module}\"")),
        ));
    }
    let modules = root.join("modules");
    let file = modules.join(format!("{module}.yml"));
    let sub = modules.join(module);
    let value = if file.is_file() {
        let rel = format!("modules/{module}.yml");
        match read_yaml_file(&file, &rel, &mut errors) {
            Some(v) => yaml_to_json(&v, &rel, "", &mut errors),
            None => Some(empty()),
        }
    } else if sub.is_dir() {
        let tree = read_dir(
            &sub,
            format!("modules/{module}/"),
            &mut errors,
            &mut warnings,
        );
        Some(tree_to_json(&tree, &mut errors))
    } else {
        Some(empty())
    };
    match value {
        Some(v) if errors.is_empty() => Ok(v),
        _ => Err(ConfigErrors(errors)),
    }
}

/// A directory tree as a JSON object (files → their content, directories → nested objects).
pub(crate) fn tree_to_json(tree: &DirTree, errors: &mut Vec<ConfigError>) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (key, entry) in &tree.entries {
        let v = match entry {
            Entry::File { rel, value } => yaml_to_json(value, rel, "", errors),
            Entry::Dir(sub) => Some(tree_to_json(sub, errors)),
        };
        if let Some(v) = v {
            map.insert(key.clone(), v);
        }
    }
    serde_json::Value::Object(map)
}
