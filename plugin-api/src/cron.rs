//! Cron schedules of scheduler callbacks (core.md §1.14, §3.10): APScheduler cron fields.
//!
//! This crate records and validates the fields; the host's scheduler evaluates them.

use std::time::Duration;

/// APScheduler cron fields. Unset fields follow APScheduler's defaulting: fields more
/// significant than the most significant set field are `*`, less significant ones their
/// minimum (`minute("*/10")` fires at second 0 every ten minutes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    pub year: Option<String>,
    pub month: Option<String>,
    pub day: Option<String>,
    pub week: Option<String>,
    /// `0` = Monday ... `6` = Sunday, or `mon` ... `sun`.
    pub day_of_week: Option<String>,
    pub hour: Option<String>,
    pub minute: Option<String>,
    pub second: Option<String>,
    pub timezone: String,
    pub misfire_grace_time: Duration,
}

impl Default for CronSchedule {
    fn default() -> Self {
        CronSchedule {
            year: None,
            month: None,
            day: None,
            week: None,
            day_of_week: None,
            hour: None,
            minute: None,
            second: None,
            timezone: "UTC".to_owned(),
            misfire_grace_time: Duration::from_secs(1),
        }
    }
}

/// A cron field is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron field {field}='{value}': {reason}")]
pub struct CronError {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

macro_rules! setter {
    ($name:ident) => {
        #[doc = concat!("Set the `", stringify!($name), "` field.")]
        pub fn $name(mut self, expr: impl ToString) -> Self {
            self.$name = Some(expr.to_string());
            self
        }
    };
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

impl CronSchedule {
    pub fn new() -> Self {
        Self::default()
    }

    setter!(year);
    setter!(month);
    setter!(day);
    setter!(week);
    setter!(day_of_week);
    setter!(hour);
    setter!(minute);
    setter!(second);

    pub fn timezone(mut self, tz: impl Into<String>) -> Self {
        self.timezone = tz.into();
        self
    }

    pub fn misfire_grace_time(mut self, grace: Duration) -> Self {
        self.misfire_grace_time = grace;
        self
    }

    /// The fields that are set, most significant first.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("year", &self.year),
            ("month", &self.month),
            ("day", &self.day),
            ("week", &self.week),
            ("day_of_week", &self.day_of_week),
            ("hour", &self.hour),
            ("minute", &self.minute),
            ("second", &self.second),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    /// Check every set field against APScheduler's expression grammar and ranges:
    /// `*`, `*/n`, `a`, `a-b`, `a-b/n`, comma lists of those, and names for
    /// `day_of_week`/`month`.
    pub fn validate(&self) -> Result<(), CronError> {
        for (field, value) in self.fields() {
            let (min, max, names): (u32, u32, &[&str]) = match field {
                "year" => (1970, 9999, &[]),
                "month" => (1, 12, &MONTHS),
                "day" => (1, 31, &[]),
                "week" => (1, 53, &[]),
                "day_of_week" => (0, 6, &DAYS),
                "hour" => (0, 23, &[]),
                _ => (0, 59, &[]),
            };
            let bad = |reason: String| CronError {
                field,
                value: value.to_owned(),
                reason,
            };
            for part in value.split(',') {
                check_part(part.trim(), min, max, names).map_err(bad)?;
            }
        }
        if self.timezone.trim().is_empty() {
            return Err(CronError {
                field: "timezone",
                value: self.timezone.clone(),
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

fn check_part(part: &str, min: u32, max: u32, names: &[&str]) -> Result<(), String> {
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => {
            let step: u32 = s
                .parse()
                .map_err(|_| format!("step '{s}' is not a positive number"))?;
            if step == 0 {
                return Err("step must be positive".into());
            }
            (r, true)
        }
        None => (part, false),
    };
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // month names are 1-based, day names 0-based
            return Ok(if min == 1 { i as u32 + 1 } else { i as u32 });
        }
        let n: u32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
        if n < min || n > max {
            return Err(format!("{n} is outside {min}..={max}"));
        }
        Ok(n)
    };
    match range {
        "*" => Ok(()),
        "" => Err("empty expression".into()),
        r => match r.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (value(a)?, value(b)?);
                if a > b {
                    return Err(format!("range start {a} is after its end {b}"));
                }
                Ok(())
            }
            None if step => {
                Err("a step needs '*' or a range before it".into()).or_else(|e: String| {
                    // APScheduler accepts `a/n` (from a to max, every n)
                    value(r).map(|_| ()).map_err(|_| e)
                })
            }
            None => value(r).map(|_| ()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_fields() {
        assert!(CronSchedule::new().minute("*/5").validate().is_ok());
        assert!(CronSchedule::new().hour(2).minute(0).validate().is_ok());
        assert!(
            CronSchedule::new()
                .day_of_week("mon-fri")
                .hour("8-18/2")
                .validate()
                .is_ok()
        );
        assert!(CronSchedule::new().second("0,30").validate().is_ok());
        assert!(CronSchedule::new().month("jan,jul").validate().is_ok());
        let e = CronSchedule::new()
            .minute("not-a-minute")
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "minute");
        assert!(CronSchedule::new().minute("61").validate().is_err());
        assert!(CronSchedule::new().hour("*/0").validate().is_err());
        assert!(CronSchedule::new().day_of_week("7").validate().is_err());
        assert!(CronSchedule::new().day("5-2").validate().is_err());
    }
}
