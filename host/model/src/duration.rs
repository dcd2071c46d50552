//! Durations in configuration files (data-model.md §1.2.1, DP3's `ParsedTimedelta`).
//!
//! Accepted forms:
//! * `"<n>s"`, `"<n>m"`, `"<n>h"`, `"<n>d"` and `"0"` (leading whitespace tolerated, as in DP3);
//! * YAML integers and floats = seconds;
//! * ISO-8601 durations (`P1D`, `PT1H30M`, `P1W`, fractional seconds allowed);
//! * `[-]N day[s][,] [HH:MM:SS[.ffffff]]` and `HH:MM:SS[.ffffff]`.
//!
//! Deliberate differences from DP3 (documented in docs/configuration.md): negative durations
//! and booleans (`true` = 1 s in DP3) are rejected, because no setting has a meaning for them.

use std::sync::LazyLock;

use chrono::TimeDelta;
use regex::Regex;

/// What the parser accepts, for error messages.
pub const DURATION_EXPECTED: &str = "a number of seconds, \"<n>s\", \"<n>m\", \"<n>h\", \
\"<n>d\", an ISO-8601 duration (\"P1DT2H\") or \"[N days, ]HH:MM:SS\"";

/// Why a value is not a valid duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DurationError {
    pub message: String,
}

impl DurationError {
    fn invalid() -> Self {
        DurationError {
            message: "invalid duration".into(),
        }
    }
}

static SIMPLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*(\d+)([smhd])?$").expect("static regex"));
static ISO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d{1,9})?)S)?)?$")
        .expect("static regex")
});
static CLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(-)?(?:(\d+) ?days?,? ?)?(?:(\d{1,2}):(\d{2}):(\d{2}(?:\.\d{1,6})?))?$")
        .expect("static regex")
});

/// Parse a duration given as YAML.
pub fn parse_duration_yaml(v: &yaml_serde::Value) -> Result<TimeDelta, DurationError> {
    match v {
        yaml_serde::Value::String(s) => parse_duration_str(s),
        yaml_serde::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                seconds_i64(i)
            } else if let Some(f) = n.as_f64() {
                seconds_f64(f)
            } else {
                Err(DurationError::invalid())
            }
        }
        _ => Err(DurationError::invalid()),
    }
}

/// Parse a duration given as text (see the module docs for the accepted forms).
pub fn parse_duration_str(s: &str) -> Result<TimeDelta, DurationError> {
    if let Some(c) = SIMPLE.captures(s) {
        let n: i64 = c[1].parse().map_err(|_| too_large())?;
        let unit = match c.get(2).map(|m| m.as_str()) {
            None if n == 0 => return Ok(TimeDelta::zero()),
            // DP3: a unit-less string other than "0" is an error (`30` as a number is fine).
            None => {
                return Err(DurationError {
                    message: "invalid duration (a number in quotes needs a unit)".into(),
                });
            }
            Some("s") => 1,
            Some("m") => 60,
            Some("h") => 3600,
            _ => 86400,
        };
        return n
            .checked_mul(unit)
            .ok_or_else(too_large)
            .and_then(seconds_i64);
    }
    if s.len() > 1
        && let Some(c) = ISO.captures(s)
        && s != "PT"
    {
        let mut whole: i64 = 0;
        for (group, unit) in [(1, 7 * 86400), (2, 86400), (3, 3600), (4, 60)] {
            if let Some(m) = c.get(group) {
                let n: i64 = m.as_str().parse().map_err(|_| too_large())?;
                whole = n
                    .checked_mul(unit)
                    .and_then(|x| x.checked_add(whole))
                    .ok_or_else(too_large)?;
            }
        }
        let secs: f64 = c.get(5).map_or(Ok(0.0), |m| {
            m.as_str()
                .parse::<f64>()
                .map_err(|_| DurationError::invalid())
        })?;
        return seconds_i64(whole)?
            .checked_add(&seconds_f64(secs)?)
            .ok_or_else(too_large);
    }
    if !s.is_empty()
        && let Some(c) = CLOCK.captures(s)
        && (c.get(2).is_some() || c.get(3).is_some())
    {
        let days: i64 = c
            .get(2)
            .map_or(Ok(0), |m| m.as_str().parse().map_err(|_| too_large()))?;
        let (h, m, sec) = match (c.get(3), c.get(4), c.get(5)) {
            (Some(h), Some(m), Some(sec)) => (
                h.as_str()
                    .parse::<i64>()
                    .map_err(|_| DurationError::invalid())?,
                m.as_str()
                    .parse::<i64>()
                    .map_err(|_| DurationError::invalid())?,
                sec.as_str()
                    .parse::<f64>()
                    .map_err(|_| DurationError::invalid())?,
            ),
            _ => (0, 0, 0.0),
        };
        if m >= 60 || sec >= 60.0 {
            return Err(DurationError::invalid());
        }
        if c.get(1).is_some() {
            return Err(negative());
        }
        let whole = days
            .checked_mul(86400)
            .and_then(|d| d.checked_add(h * 3600 + m * 60))
            .ok_or_else(too_large)?;
        return seconds_i64(whole)?
            .checked_add(&seconds_f64(sec)?)
            .ok_or_else(too_large);
    }
    Err(DurationError::invalid())
}

fn too_large() -> DurationError {
    DurationError {
        message: "duration too large".into(),
    }
}

fn negative() -> DurationError {
    DurationError {
        message: "negative durations are not allowed".into(),
    }
}

fn seconds_i64(s: i64) -> Result<TimeDelta, DurationError> {
    if s < 0 {
        return Err(negative());
    }
    TimeDelta::try_seconds(s).ok_or_else(too_large)
}

fn seconds_f64(s: f64) -> Result<TimeDelta, DurationError> {
    if s.is_nan() {
        return Err(DurationError::invalid());
    }
    if s < 0.0 {
        return Err(negative());
    }
    // Microsecond precision, like Python's timedelta.
    let micros = (s * 1e6).round();
    if micros >= i64::MAX as f64 {
        return Err(too_large());
    }
    Ok(TimeDelta::microseconds(micros as i64))
}

/// Render a duration compactly (`90s` → `1m30s`, `0s`), for summaries and messages.
pub fn format_duration(d: TimeDelta) -> String {
    let mut secs = d.num_seconds();
    let sub_micros = (d - TimeDelta::seconds(secs))
        .num_microseconds()
        .unwrap_or(0);
    if secs == 0 && sub_micros == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    if secs < 0 {
        out.push('-');
        secs = -secs;
    }
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if sub_micros != 0 {
        let frac = format!("{:06}", sub_micros.abs());
        out.push_str(&format!("{secs}.{}s", frac.trim_end_matches('0')));
    } else if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> yaml_serde::Value {
        yaml_serde::from_str(s).expect("test yaml")
    }

    fn secs(v: &str) -> Result<f64, DurationError> {
        parse_duration_yaml(&yaml(v)).map(|d| d.num_microseconds().unwrap_or(0) as f64 / 1e6)
    }

    #[test]
    fn accepted_forms() {
        for (input, expect) in [
            ("\"0\"", 0.0),
            ("\"5s\"", 5.0),
            ("\"5m\"", 300.0),
            ("\" 5m\"", 300.0),
            ("2h", 7200.0),
            ("7d", 604800.0),
            ("30", 30.0),
            ("0", 0.0),
            ("1.5", 1.5),
            ("P1D", 86400.0),
            ("PT1H30M", 5400.0),
            ("P1W", 604800.0),
            ("PT0.5S", 0.5),
            ("P1DT1S", 86401.0),
            ("\"01:00:00\"", 3600.0),
            ("\"1 day\"", 86400.0),
            ("\"2 days, 01:00:00\"", 2.0 * 86400.0 + 3600.0),
            ("\"00:00:01.25\"", 1.25),
        ] {
            assert_eq!(secs(input), Ok(expect), "{input}");
        }
    }

    #[test]
    fn rejected_forms() {
        for input in [
            "\"30\"",
            "\"1.5h\"",
            "\"-5m\"",
            "\"5M\"",
            "\"5 m\"",
            "\"5w\"",
            "\"1d2h\"",
            "\"inf\"",
            "\"5m \"",
            "\"\"",
            "P",
            "PT",
            "\"10:00\"",
            "\"01:60:00\"",
            "-5",
            "-1.5",
            "true",
            "null",
            "[1]",
            "{a: 1}",
            "\"-1 day\"",
            "\"99999999999999999999d\"",
        ] {
            assert!(secs(input).is_err(), "{input} should be rejected");
        }
    }

    #[test]
    fn unitless_string_message_explains_the_unit() {
        let e = parse_duration_str("30").unwrap_err();
        assert!(e.message.contains("unit"), "{e}");
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(TimeDelta::seconds(90)), "1m30s");
        assert_eq!(format_duration(TimeDelta::zero()), "0s");
        assert_eq!(format_duration(TimeDelta::days(7)), "7d");
        assert_eq!(format_duration(TimeDelta::milliseconds(1500)), "1.5s");
        assert_eq!(format_duration(TimeDelta::seconds(3600 + 5)), "1h5s");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,30}") {
            let _ = parse_duration_str(&s);
        }

        #[test]
        fn unit_forms_scale(n in 0i64..1_000_000, unit in proptest::sample::select(vec![("s", 1), ("m", 60), ("h", 3600), ("d", 86400)])) {
            prop_assert_eq!(parse_duration_str(&format!("{n}{}", unit.0)), Ok(TimeDelta::seconds(n * unit.1)));
        }

        #[test]
        fn format_parses_back(secs in 0i64..10_000_000_000) {
            let d = TimeDelta::seconds(secs);
            let text = format_duration(d);
            // The formatted form is for humans; compound forms are not DP3 syntax, but a
            // single-unit output must parse back.
            if text.matches(char::is_alphabetic).count() == 1 {
                prop_assert_eq!(parse_duration_str(&text), Ok(d));
            }
        }
    }
}
