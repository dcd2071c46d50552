//! Cron schedules in configuration files (data-model.md §1.2.2, DP3's `CronExpression`).
//!
//! This is the configuration model only: which fields are set and with what expression. The
//! scheduler (`schedule.rs`) evaluates it with APScheduler's semantics.
//!
//! Validation is DP3's, plus two deliberate tightenings (documented in docs/configuration.md):
//! numbers inside cron strings are range-checked per field (DP3 accepts `minute: "75"` and the
//! scheduler fails later), and `hour` is limited to 0–23 (DP3's validator allows up to 59).
//! `timezone` must be an IANA time-zone name (default `UTC`).

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// A field that accepts an int or a cron string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronField {
    /// A single value (`minute: 5` or `minute: "5"`, which DP3 coerces to the int 5).
    Value(u32),
    /// A validated cron string: `"*"`, `"*/N"`, `"a-b"` or `"a,b,c"`.
    Expr(String),
}

/// The parsed form of a [`CronField`], convenient for evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronPattern {
    /// `*`
    Any,
    /// `*/N` (N ≥ 1)
    Step(u32),
    /// `a-b` (inclusive, a ≤ b)
    Range(u32, u32),
    /// `a,b,c` or a single value.
    List(Vec<u32>),
}

impl CronField {
    pub fn pattern(&self) -> CronPattern {
        match self {
            CronField::Value(v) => CronPattern::List(vec![*v]),
            CronField::Expr(s) => parse_pattern(s).unwrap_or(CronPattern::Any),
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CronField::Value(v) => write!(f, "{v}"),
            CronField::Expr(s) => write!(f, "\"{s}\""),
        }
    }
}

/// A cron schedule as written in the configuration. Unset fields follow APScheduler's
/// defaulting (finer than the finest set field → minimum, coarser → `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpression {
    pub second: Option<CronField>,
    pub minute: Option<CronField>,
    pub hour: Option<CronField>,
    pub day: Option<CronField>,
    /// 0 = Monday … 6 = Sunday.
    pub day_of_week: Option<CronField>,
    /// ISO week 1–53.
    pub week: Option<u32>,
    pub month: Option<u32>,
    /// Exactly four digits, kept as a string like DP3.
    pub year: Option<String>,
    pub timezone: String,
}

impl Default for CronExpression {
    /// No field set: fires every second.
    fn default() -> Self {
        CronExpression {
            second: None,
            minute: None,
            hour: None,
            day: None,
            day_of_week: None,
            week: None,
            month: None,
            year: None,
            timezone: "UTC".into(),
        }
    }
}

/// The keys a cron mapping may contain, in display order.
pub const CRON_KEYS: [&str; 9] = [
    "year",
    "month",
    "week",
    "day",
    "day_of_week",
    "hour",
    "minute",
    "second",
    "timezone",
];

/// Why a cron field is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    pub message: String,
    pub expected: String,
}

static CRON_STRING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^((\d+,)+\d+|(\d+-\d+)|\d+|(\*/\d+)|\*)$").expect("static regex")
});

impl CronExpression {
    /// `{<field>: "<expr>"}` for a single string field, e.g. `CronExpression::with("minute",
    /// "*/30")`. Panics only on programmer error (unknown field / invalid literal).
    pub fn with_fields(fields: &[(&str, &str)]) -> CronExpression {
        let mut c = CronExpression::default();
        for (k, v) in fields {
            c.set_field(k, &yaml_serde::Value::String((*v).to_owned()))
                .expect("valid built-in cron expression");
        }
        c
    }

    /// Set one field from YAML, validating it like DP3. `key` must be one of [`CRON_KEYS`].
    pub fn set_field(&mut self, key: &str, v: &yaml_serde::Value) -> Result<(), CronError> {
        match key {
            "second" => self.second = Some(cron_field(v, 0, 59)?),
            "minute" => self.minute = Some(cron_field(v, 0, 59)?),
            "hour" => self.hour = Some(cron_field(v, 0, 23)?),
            "day" => self.day = Some(cron_field(v, 1, 31)?),
            "day_of_week" => self.day_of_week = Some(cron_field(v, 0, 6)?),
            "week" => self.week = Some(int_only(v, 1, 53)?),
            "month" => self.month = Some(int_only(v, 1, 12)?),
            "year" => match v {
                yaml_serde::Value::String(s)
                    if s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    self.year = Some(s.clone());
                }
                _ => {
                    return Err(CronError {
                        message: "invalid year".into(),
                        expected: "a string of exactly 4 digits, e.g. \"2027\" (quoted)".into(),
                    });
                }
            },
            "timezone" => match v {
                yaml_serde::Value::String(s) if s.parse::<chrono_tz::Tz>().is_ok() => {
                    self.timezone = s.clone();
                }
                _ => {
                    return Err(CronError {
                        message: "unknown time zone".into(),
                        expected: "an IANA time-zone name such as \"UTC\" or \"Europe/Prague\""
                            .into(),
                    });
                }
            },
            _ => {
                return Err(CronError {
                    message: "unknown cron field".into(),
                    expected: format!("one of {}", CRON_KEYS.join(", ")),
                });
            }
        }
        Ok(())
    }

    /// Every field as the expression string the scheduler evaluates (ints as decimal text),
    /// coarse to fine: year, month, day, week, day_of_week, hour, minute, second.
    pub fn field_exprs(&self) -> [(&'static str, Option<String>); 8] {
        let f = |c: &Option<CronField>| {
            c.as_ref().map(|c| match c {
                CronField::Value(v) => v.to_string(),
                CronField::Expr(s) => s.clone(),
            })
        };
        [
            ("year", self.year.clone()),
            ("month", self.month.map(|m| m.to_string())),
            ("day", f(&self.day)),
            ("week", self.week.map(|w| w.to_string())),
            ("day_of_week", f(&self.day_of_week)),
            ("hour", f(&self.hour)),
            ("minute", f(&self.minute)),
            ("second", f(&self.second)),
        ]
    }

    /// The fields that are set, as `(name, rendered value)` in coarse-to-fine order.
    pub fn set_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(y) = &self.year {
            out.push(("year", format!("\"{y}\"")));
        }
        if let Some(m) = self.month {
            out.push(("month", m.to_string()));
        }
        if let Some(w) = self.week {
            out.push(("week", w.to_string()));
        }
        for (name, f) in [
            ("day", &self.day),
            ("day_of_week", &self.day_of_week),
            ("hour", &self.hour),
            ("minute", &self.minute),
            ("second", &self.second),
        ] {
            if let Some(f) = f {
                out.push((name, f.to_string()));
            }
        }
        out
    }
}

impl fmt::Display for CronExpression {
    /// `{hour: 2, minute: "*/5"}` (the YAML flow form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .set_fields()
            .into_iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

fn int_only(v: &yaml_serde::Value, min: u32, max: u32) -> Result<u32, CronError> {
    let expected = || format!("an integer {min}–{max} (not a string)");
    match v {
        yaml_serde::Value::Number(n) => match n.as_u64() {
            Some(i) if i >= u64::from(min) && i <= u64::from(max) => Ok(i as u32),
            _ => Err(CronError {
                message: "out of range".into(),
                expected: expected(),
            }),
        },
        _ => Err(CronError {
            message: "invalid value".into(),
            expected: expected(),
        }),
    }
}

fn cron_field(v: &yaml_serde::Value, min: u32, max: u32) -> Result<CronField, CronError> {
    let expected = || {
        format!(
            "an integer {min}–{max} or a cron string: \"*\", \"*/N\", \"a-b\", \"a,b,c\" \
             (combinations such as \"1-5,10\" and names such as \"mon\" are not supported)"
        )
    };
    let out_of_range = || CronError {
        message: format!("value out of range {min}–{max}"),
        expected: expected(),
    };
    match v {
        yaml_serde::Value::Number(n) => match n.as_u64() {
            Some(i) if i >= u64::from(min) && i <= u64::from(max) => Ok(CronField::Value(i as u32)),
            Some(_) => Err(out_of_range()),
            None => Err(CronError {
                message: "invalid cron value".into(),
                expected: expected(),
            }),
        },
        yaml_serde::Value::String(s) => {
            // DP3 coerces a numeric string (also with surrounding whitespace) to an int.
            let t = s.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                return match t.parse::<u32>() {
                    Ok(i) if i >= min && i <= max => Ok(CronField::Value(i)),
                    _ => Err(out_of_range()),
                };
            }
            if !CRON_STRING.is_match(s) {
                return Err(CronError {
                    message: "invalid cron string".into(),
                    expected: expected(),
                });
            }
            match parse_pattern(s) {
                Some(CronPattern::Step(0)) => Err(CronError {
                    message: "step must be at least 1".into(),
                    expected: expected(),
                }),
                Some(CronPattern::Step(_) | CronPattern::Any) => Ok(CronField::Expr(s.clone())),
                Some(CronPattern::Range(a, b)) => {
                    if a < min || b > max {
                        Err(out_of_range())
                    } else if a > b {
                        Err(CronError {
                            message: "range start is after its end".into(),
                            expected: expected(),
                        })
                    } else {
                        Ok(CronField::Expr(s.clone()))
                    }
                }
                Some(CronPattern::List(items)) => {
                    if items.iter().any(|i| *i < min || *i > max) {
                        Err(out_of_range())
                    } else {
                        Ok(CronField::Expr(s.clone()))
                    }
                }
                None => Err(out_of_range()),
            }
        }
        _ => Err(CronError {
            message: "invalid cron value".into(),
            expected: expected(),
        }),
    }
}

/// Parse a string already matching DP3's cron-string regex. `None` if a number overflows.
fn parse_pattern(s: &str) -> Option<CronPattern> {
    if s == "*" {
        return Some(CronPattern::Any);
    }
    if let Some(step) = s.strip_prefix("*/") {
        return step.parse().ok().map(CronPattern::Step);
    }
    if let Some((a, b)) = s.split_once('-') {
        return Some(CronPattern::Range(a.parse().ok()?, b.parse().ok()?));
    }
    s.split(',')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<Vec<u32>>>()
        .map(CronPattern::List)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, yaml: &str) -> Result<CronExpression, CronError> {
        let mut c = CronExpression::default();
        let v: yaml_serde::Value = yaml_serde::from_str(yaml).expect("test yaml");
        c.set_field(key, &v).map(|()| c)
    }

    #[test]
    fn accepted() {
        assert_eq!(
            set("minute", "\"*/10\"").unwrap().minute,
            Some(CronField::Expr("*/10".into()))
        );
        assert_eq!(
            set("minute", "5").unwrap().minute,
            Some(CronField::Value(5))
        );
        assert_eq!(
            set("minute", "\" 5\"").unwrap().minute,
            Some(CronField::Value(5))
        );
        assert_eq!(
            set("minute", "\"15,45\"")
                .unwrap()
                .minute
                .unwrap()
                .pattern(),
            CronPattern::List(vec![15, 45])
        );
        assert_eq!(
            set("day_of_week", "\"0-4\"")
                .unwrap()
                .day_of_week
                .unwrap()
                .pattern(),
            CronPattern::Range(0, 4)
        );
        assert_eq!(
            set("hour", "\"*\"").unwrap().hour.unwrap().pattern(),
            CronPattern::Any
        );
        assert_eq!(set("week", "53").unwrap().week, Some(53));
        assert_eq!(set("month", "12").unwrap().month, Some(12));
        assert_eq!(
            set("year", "\"2027\"").unwrap().year.as_deref(),
            Some("2027")
        );
        assert_eq!(set("timezone", "UTC").unwrap().timezone, "UTC");
        assert_eq!(
            set("timezone", "Europe/Prague").unwrap().timezone,
            "Europe/Prague"
        );
        assert_eq!(set("day", "31").unwrap().day, Some(CronField::Value(31)));
    }

    #[test]
    fn rejected() {
        for (k, v) in [
            ("minute", "60"),
            ("minute", "\"75\""),
            ("minute", "\"1-5,10\""),
            ("minute", "\"0-30/5\""),
            ("minute", "\"*/0\""),
            ("minute", "\"5-1\""),
            ("minute", "-1"),
            ("minute", "1.5"),
            ("minute", "true"),
            ("second", "\"0,60\""),
            ("hour", "24"),
            ("day", "0"),
            ("day", "32"),
            ("day_of_week", "mon"),
            ("day_of_week", "7"),
            ("week", "\"5\""),
            ("week", "0"),
            ("month", "\"1\""),
            ("month", "13"),
            ("year", "2027"),
            ("year", "\"27\""),
            ("timezone", "Mars/Olympus"),
            ("timezone", "5"),
            ("minutes", "5"),
        ] {
            assert!(set(k, v).is_err(), "{k}: {v} should be rejected");
        }
    }

    #[test]
    fn field_exprs_for_the_scheduler() {
        let mut c = CronExpression::with_fields(&[("hour", "2"), ("minute", "*/5")]);
        c.week = Some(3);
        let f = c.field_exprs();
        assert_eq!(f[3], ("week", Some("3".to_owned())));
        assert_eq!(f[5], ("hour", Some("2".to_owned())));
        assert_eq!(f[6], ("minute", Some("*/5".to_owned())));
        assert_eq!(f[7], ("second", None));
    }

    #[test]
    fn display_is_yaml_flow() {
        let c = CronExpression::with_fields(&[("hour", "2"), ("minute", "*/5")]);
        assert_eq!(c.to_string(), "{hour: 2, minute: \"*/5\"}");
    }
}
