//! `dp3 check <config_dir>`: validate a configuration directory and print either a short
//! summary (exit 0) or every error, one per line (exit 1).

use std::io::Write;
use std::path::{Path, PathBuf};

use dp3_model::config::{self, Config};
use dp3_model::duration::format_duration;
use dp3_model::spec::{AttrType, Lifetime};

/// Arguments of `dp3 check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration directory (the one containing db_entities/).
    pub config_dir: PathBuf,
}

/// Run the check; exits the process with status 1 when the configuration is invalid.
pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let ok = check_dir(&args.config_dir, &mut stdout.lock(), &mut stderr.lock())?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Validate `dir`, writing the summary to `out` and warnings/errors to `err`. Returns whether
/// the configuration is valid.
pub fn check_dir(dir: &Path, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<bool> {
    // Reported even when loading fails: a `.yaml` file is the classic reason for a
    // "missing required file" error.
    for f in config::ignored_yaml_files(dir) {
        writeln!(
            err,
            "WARNING: {f}: ignored — only files ending in \".yml\" are read"
        )?;
    }
    match config::load_config_dir(dir) {
        Ok(c) => {
            for w in c.warnings.iter().filter(|w| !w.contains(".yaml: ignored")) {
                writeln!(err, "WARNING: {w}")?;
            }
            write_summary(&c, out)?;
            Ok(true)
        }
        Err(errors) => {
            for e in errors.iter() {
                writeln!(err, "{e}")?;
            }
            let n = errors.len();
            writeln!(
                err,
                "{}: {n} configuration error{}",
                dir.display(),
                if n == 1 { "" } else { "s" }
            )?;
            Ok(false)
        }
    }
}

fn write_summary(c: &Config, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "Configuration {} is valid.", c.config_dir.display())?;
    writeln!(out, "Entity types ({}):", c.model.entities.len())?;
    let width = c.model.entities.keys().map(String::len).max().unwrap_or(0);
    for (id, et) in &c.model.entities {
        let count = |t: AttrType| {
            et.attribs
                .values()
                .filter(|a| !a.is_read_only() && a.attr_type() == t)
                .count()
        };
        let mirrors = et.attribs.values().filter(|a| a.is_read_only()).count();
        let lifetime = match &et.spec.lifetime {
            Lifetime::Immortal => "immortal".to_owned(),
            Lifetime::Weak => "weak".to_owned(),
            Lifetime::Ttl { on_create, .. } => format!("ttl {}", format_duration(*on_create)),
        };
        let mut line = format!(
            "  {id:<width$}  eid {:<6}  {:<8}  {} plain, {} observations, {} timeseries",
            et.spec.id_data_type.name(),
            lifetime,
            count(AttrType::Plain),
            count(AttrType::Observations),
            count(AttrType::Timeseries),
        );
        if mirrors > 0 {
            line.push_str(&format!(", {mirrors} mirror"));
        }
        if !et.spec.snapshot {
            line.push_str("  (no snapshots)");
        }
        writeln!(out, "{line}")?;
    }
    let pc = &c.processing_core;
    writeln!(out, "Modules dir: {}", pc.modules_dir.display())?;
    if pc.enabled_modules.is_empty() {
        writeln!(out, "Enabled modules: (none)")?;
    } else {
        writeln!(out, "Enabled modules: {}", pc.enabled_modules.join(", "))?;
    }
    writeln!(
        out,
        "Workers: {} process(es) × {} thread(s); database backend: {}; snapshots: {}",
        pc.worker_processes,
        pc.worker_threads,
        c.database.backend.name(),
        c.snapshots.creation_rate
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
    }

    fn check(dir: &Path) -> (bool, String, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let ok = check_dir(dir, &mut out, &mut err).expect("write to memory");
        (
            ok,
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(err).expect("utf-8"),
        )
    }

    #[test]
    fn example_config_passes_with_a_summary() {
        let (ok, out, err) = check(&repo("config"));
        assert!(ok, "{err}");
        assert!(out.contains("is valid"), "{out}");
        assert!(out.contains("Entity types (3):"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("ip ") && l.contains("eid ipv4")),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("device ") && l.contains("1 mirror")),
            "{out}"
        );
        assert!(out.contains("Enabled modules: "), "{out}");
        assert!(out.contains("Modules dir: "), "{out}");
        // The example's modules_dir is a build directory, which may not exist yet.
        assert!(
            err.lines()
                .all(|l| l.starts_with("WARNING: ") && l.contains("modules_dir")),
            "{err}"
        );
    }

    #[test]
    fn dp3_test_config_passes() {
        let (ok, out, err) = check(&repo("tests/fixtures/dp3-test-config"));
        assert!(ok, "{err}");
        assert!(out.contains("Enabled modules: test_module"), "{out}");
    }

    #[test]
    fn errors_are_printed_one_per_line_and_yaml_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = repo("config");
        copy_dir(&src, dir.path());
        std::fs::rename(
            dir.path().join("control.yml"),
            dir.path().join("control.yaml"),
        )
        .expect("rename");
        std::fs::write(
            dir.path().join("snapshots.yml"),
            "creation_rate: {minute: \"*/5\", hour: \"1\"}\nkeep_emtpy: true\n",
        )
        .expect("write");
        let (ok, out, err) = check(dir.path());
        assert!(!ok);
        assert!(out.is_empty(), "{out}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("WARNING: control.yaml: ignored")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("control.yml: missing required file")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("snapshots.yml: creation_rate: only one")),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("snapshots.yml: keep_emtpy: unknown key")
                    && l.contains("did you mean \"keep_empty\"")),
            "{err}"
        );
        assert!(
            lines
                .last()
                .is_some_and(|l| l.ends_with("3 configuration errors")),
            "{err}"
        );
    }

    fn copy_dir(src: &Path, dst: &Path) {
        for entry in std::fs::read_dir(src).expect("read_dir").flatten() {
            let target = dst.join(entry.file_name());
            if entry.path().is_dir() {
                std::fs::create_dir_all(&target).expect("mkdir");
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).expect("copy");
            }
        }
    }
}
