//! An APScheduler-3-compatible cron evaluator (core.md §1.14, data-model.md §1.2.2).
//!
//! DP3 schedules are APScheduler `CronTrigger` field sets: `year`, `month`, `day`, `week`
//! (ISO week), `day_of_week` (0 = Monday … 6 = Sunday), `hour`, `minute`, `second`, plus a
//! time zone. The `cron` crate does not fit: it uses Quartz numbering (1 = Sunday), has no
//! `week` field and no APScheduler defaulting, and no field translates cleanly enough to be
//! worth the dependency, so the evaluator is written here by hand.
//!
//! # Semantics (APScheduler 3)
//!
//! * Expressions per field, comma-separated (spaces around commas allowed): `*`, `*/n`, `a`,
//!   `a-b`, `a-b/n`, `a/n` (= `a-max/n`); month names `jan`…`dec` and weekday names
//!   `mon`…`sun` (also in ranges, case-insensitive); in `day` also `last` (last day of the
//!   month) and `1st|2nd|3rd|4th|5th|last <weekday>`. Steps count from the start of the range,
//!   for `*` from the field minimum (year 1970, month/day/week 1, others 0).
//! * Defaulting: walking the fields from `year` to `second`, a field that is not given is `*`
//!   until the least significant given field has been seen; after it, missing fields take
//!   their minimum (`month`/`day` 1, `hour`/`minute`/`second` 0; `week`/`day_of_week` stay
//!   `*`). So `{minute: "*/10"}` fires at second 0, `{hour: 2}` at 02:00:00 daily,
//!   `{hour: 2, second: 5}` every minute of hour 2 at second 5.
//! * Validation errors follow APScheduler: values outside the field range, `a-b` with
//!   `a > b`, step 0 or a step larger than the range it steps over.
//! * Years are limited to 1970–9999; past 9999 there is no next fire time.
//!
//! # Time zones and DST
//!
//! Matching is done on local wall-clock time in the schedule's IANA zone (default UTC).
//! Around DST changes the rules are those of Vixie cron, which agree with APScheduler 3.11
//! (checked against it, see below) except where APScheduler is visibly broken:
//!
//! * **Schedules with `hour` = every hour** (`{minute: "*/10"}`, `{second: "*/30"}`,
//!   `{minute: 30}`): real time. The job fires at every instant whose local time matches:
//!   wall times inside a spring-forward gap do not exist and are skipped; wall times in the
//!   repeated fall-back hour fire at both occurrences. So "every 10 minutes" stays every 10
//!   minutes of real time across both transitions (as in APScheduler).
//! * **Schedules with specific hours** (`{hour: 2}`, `{hour: 2, minute: 30}`):
//!   * a non-existent wall time (02:30 on the day Europe/Prague jumps from 02:00 CET to
//!     03:00 CEST) fires at the instant given by the offset in force *before* the jump, i.e.
//!     at 03:30 CEST: the daily run is shifted by the gap, not lost. APScheduler 3 does the
//!     same (its localisation uses `fold=0` / pytz `is_dst=False`).
//!   * an ambiguous wall time (02:30 on the fall-back night happens twice) fires **once**, at
//!     its first occurrence (summer time). APScheduler 3.11 fires such a job twice (at both
//!     occurrences); we deliberately do not: a daily job runs once a day. When evaluation
//!     starts inside the repeated hour (first occurrence already past), the second one is used.
//!
//! APScheduler 3.11 also advances its search by adding wall-clock differences to absolute
//! time, which after a DST change skips whole periods (verified: `{day_of_week: "mon"}` in
//! Europe/Prague skips the Monday after the spring change, `{month: "*"}` in New York skips
//! April 1). This evaluator searches on the wall clock and has no such gaps.
//!
//! DP3's own jobs all run in UTC, where neither case arises.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// The cron fields of one schedule as given by the user: one optional expression per field
/// (ints are passed as their decimal string) and an IANA time-zone name.
///
/// Config loading builds it from the YAML `CronExpression`; modules from their
/// `scheduler_register` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronFields {
    pub year: Option<String>,
    pub month: Option<String>,
    pub day: Option<String>,
    pub week: Option<String>,
    pub day_of_week: Option<String>,
    pub hour: Option<String>,
    pub minute: Option<String>,
    pub second: Option<String>,
    /// IANA time-zone name, e.g. `"UTC"` or `"Europe/Prague"`.
    pub timezone: String,
}

impl Default for CronFields {
    fn default() -> Self {
        CronFields {
            year: None,
            month: None,
            day: None,
            week: None,
            day_of_week: None,
            hour: None,
            minute: None,
            second: None,
            timezone: "UTC".to_string(),
        }
    }
}

impl CronFields {
    /// Builds the fields from `(name, expression)` pairs, e.g. the config model's
    /// `CronExpression::field_exprs()` or a module's `scheduler_register` keyword arguments.
    /// `None` expressions are skipped; unknown names are rejected.
    pub fn from_named<'a>(
        fields: impl IntoIterator<Item = (&'a str, Option<String>)>,
        timezone: &str,
    ) -> Result<CronFields, CronError> {
        let mut out = CronFields {
            timezone: timezone.to_string(),
            ..CronFields::default()
        };
        for (name, expr) in fields {
            let slot = match name {
                "year" => &mut out.year,
                "month" => &mut out.month,
                "day" => &mut out.day,
                "week" => &mut out.week,
                "day_of_week" => &mut out.day_of_week,
                "hour" => &mut out.hour,
                "minute" => &mut out.minute,
                "second" => &mut out.second,
                other => return Err(CronError::UnknownField(other.to_string())),
            };
            if expr.is_some() {
                *slot = expr;
            }
        }
        Ok(out)
    }
}

/// Why a cron schedule was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("cron field `{field}`: invalid expression `{expr}`: {reason}")]
    InvalidExpression {
        field: &'static str,
        expr: String,
        reason: String,
    },
    #[error("cron schedule: unknown time zone `{0}`")]
    UnknownTimezone(String),
    #[error(
        "cron schedule: unknown field `{0}` (expected year, month, day, week, day_of_week, hour, minute or second)"
    )]
    UnknownField(String),
}

/// The fields in APScheduler's order of significance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Year,
    Month,
    Day,
    Week,
    DayOfWeek,
    Hour,
    Minute,
    Second,
}

impl Field {
    const ALL: [Field; 8] = [
        Field::Year,
        Field::Month,
        Field::Day,
        Field::Week,
        Field::DayOfWeek,
        Field::Hour,
        Field::Minute,
        Field::Second,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Year => "year",
            Field::Month => "month",
            Field::Day => "day",
            Field::Week => "week",
            Field::DayOfWeek => "day_of_week",
            Field::Hour => "hour",
            Field::Minute => "minute",
            Field::Second => "second",
        }
    }

    fn min(self) -> u32 {
        match self {
            Field::Year => 1970,
            Field::Month | Field::Day | Field::Week => 1,
            Field::DayOfWeek | Field::Hour | Field::Minute | Field::Second => 0,
        }
    }

    fn max(self) -> u32 {
        match self {
            Field::Year => 9999,
            Field::Month => 12,
            Field::Day => 31,
            Field::Week => 53,
            Field::DayOfWeek => 6,
            Field::Hour => 23,
            Field::Minute | Field::Second => 59,
        }
    }

    /// APScheduler's `DEFAULT_VALUES`, used after the least significant given field.
    fn default_expr(self) -> &'static str {
        match self {
            Field::Year | Field::Week | Field::DayOfWeek => "*",
            Field::Month | Field::Day => "1",
            Field::Hour | Field::Minute | Field::Second => "0",
        }
    }

    fn given(self, f: &CronFields) -> Option<&str> {
        match self {
            Field::Year => f.year.as_deref(),
            Field::Month => f.month.as_deref(),
            Field::Day => f.day.as_deref(),
            Field::Week => f.week.as_deref(),
            Field::DayOfWeek => f.day_of_week.as_deref(),
            Field::Hour => f.hour.as_deref(),
            Field::Minute => f.minute.as_deref(),
            Field::Second => f.second.as_deref(),
        }
    }
}

/// `hour` mask with all 24 hours set.
const ALL_HOURS: u64 = (1 << 24) - 1;

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Position of a weekday within a month (`1st mon` … `5th mon`, `last mon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeekdayPosition {
    Nth(u32),
    Last,
}

/// One comma-separated part of a field expression.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// `first..=last` every `step` (covers `*`, `*/n`, `a`, `a-b`, `a-b/n`, `a/n`). For the
    /// `day` field `last` is additionally capped at the month length.
    Range { first: u32, last: u32, step: u32 },
    /// `day: last`.
    LastDayOfMonth,
    /// `day: "2nd fri"`, `day: "last sun"`; weekday 0 = Monday.
    WeekdayOfMonth {
        position: WeekdayPosition,
        weekday: u32,
    },
}

/// A parsed, validated schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSchedule {
    year: Vec<Expr>,
    month: u64,
    day: Vec<Expr>,
    week: u64,
    day_of_week: u64,
    hour: u64,
    minute: u64,
    second: u64,
    timezone: Tz,
}

/// Bit mask of the values `first..=last` every `step`.
fn mask_of(exprs: &[Expr]) -> u64 {
    let mut mask = 0u64;
    for e in exprs {
        if let Expr::Range { first, last, step } = *e {
            let mut v = first;
            while v <= last && v < 64 {
                mask |= 1 << v;
                v += step;
            }
        }
    }
    mask
}

/// Smallest value `>= from` and `<= max` set in `mask`.
fn next_in_mask(mask: u64, from: u32, max: u32) -> Option<u32> {
    (from..=max.min(63)).find(|v| mask & (1 << v) != 0)
}

fn parse_number(field: Field, expr: &str, s: &str) -> Result<u32, CronError> {
    s.parse::<u32>().map_err(|_| CronError::InvalidExpression {
        field: field.name(),
        expr: expr.to_string(),
        reason: format!("`{s}` is not a non-negative integer"),
    })
}

/// A number or, for `month`/`day_of_week`, a name.
fn parse_value(field: Field, expr: &str, s: &str) -> Result<u32, CronError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return parse_number(field, expr, s);
    }
    let lower = s.to_ascii_lowercase();
    let named = match field {
        Field::Month => MONTH_NAMES
            .iter()
            .position(|n| *n == lower)
            .map(|i| i as u32 + 1),
        Field::DayOfWeek => WEEKDAY_NAMES
            .iter()
            .position(|n| *n == lower)
            .map(|i| i as u32),
        _ => None,
    };
    named.ok_or_else(|| CronError::InvalidExpression {
        field: field.name(),
        expr: expr.to_string(),
        reason: match field {
            Field::Month => format!("`{s}` is neither a number nor a month name (jan..dec)"),
            Field::DayOfWeek => format!("`{s}` is neither a number nor a weekday name (mon..sun)"),
            _ => format!("`{s}` is not a non-negative integer"),
        },
    })
}

fn parse_part(field: Field, whole: &str, part: &str) -> Result<Expr, CronError> {
    let bad = |reason: String| CronError::InvalidExpression {
        field: field.name(),
        expr: whole.to_string(),
        reason,
    };
    if part.is_empty() {
        return Err(bad("empty expression".to_string()));
    }
    let lower = part.to_ascii_lowercase();
    if field == Field::Day {
        if lower == "last" {
            return Ok(Expr::LastDayOfMonth);
        }
        let words: Vec<&str> = lower.split_whitespace().collect();
        if let [pos, wd] = words.as_slice() {
            let position = match *pos {
                "1st" => WeekdayPosition::Nth(1),
                "2nd" => WeekdayPosition::Nth(2),
                "3rd" => WeekdayPosition::Nth(3),
                "4th" => WeekdayPosition::Nth(4),
                "5th" => WeekdayPosition::Nth(5),
                "last" => WeekdayPosition::Last,
                other => {
                    return Err(bad(format!(
                        "`{other}` is not a weekday position (1st..5th, last)"
                    )));
                }
            };
            let weekday = WEEKDAY_NAMES
                .iter()
                .position(|n| n == wd)
                .ok_or_else(|| bad(format!("`{wd}` is not a weekday name (mon..sun)")))?;
            return Ok(Expr::WeekdayOfMonth {
                position,
                weekday: weekday as u32,
            });
        }
    }

    let (range, step) = match part.split_once('/') {
        Some((r, s)) => (r, Some(parse_number(field, whole, s.trim())?)),
        None => (part, None),
    };
    let range = range.trim();
    if step == Some(0) {
        return Err(bad("the step must be higher than 0".to_string()));
    }
    let (first, last) = if range == "*" {
        (field.min(), field.max())
    } else if let Some((a, b)) = range.split_once('-') {
        let first = parse_value(field, whole, a.trim())?;
        let last = parse_value(field, whole, b.trim())?;
        if first > last {
            return Err(bad(format!(
                "the minimum value in a range ({first}) must not be higher than the maximum ({last})"
            )));
        }
        (first, last)
    } else {
        let first = parse_value(field, whole, range)?;
        // `a/n` steps from `a` to the field maximum; a bare `a` is just `a`.
        (first, if step.is_some() { field.max() } else { first })
    };
    if first < field.min() {
        return Err(bad(format!(
            "the first value ({first}) is lower than the minimum value ({})",
            field.min()
        )));
    }
    if last > field.max() {
        return Err(bad(format!(
            "the last value ({last}) is higher than the maximum value ({})",
            field.max()
        )));
    }
    let step = step.unwrap_or(1);
    // APScheduler rejects steps larger than the span they step over (`minute: "*/60"`).
    if step > 1 && step > last - first {
        return Err(bad(format!(
            "the step value ({step}) is higher than the total range of the expression ({})",
            last - first
        )));
    }
    Ok(Expr::Range { first, last, step })
}

fn parse_field(field: Field, expr: &str) -> Result<Vec<Expr>, CronError> {
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err(CronError::InvalidExpression {
            field: field.name(),
            expr: expr.to_string(),
            reason: "empty expression".to_string(),
        });
    }
    trimmed
        .split(',')
        .map(|part| parse_part(field, expr, part.trim()))
        .collect()
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    match (
        NaiveDate::from_ymd_opt(year, month, 1),
        NaiveDate::from_ymd_opt(ny, nm, 1),
    ) {
        (Some(a), Some(b)) => (b - a).num_days() as u32,
        _ => 31,
    }
}

fn day_expr_matches(e: &Expr, date: NaiveDate, month_len: u32) -> bool {
    let d = date.day();
    match *e {
        Expr::Range { first, last, step } => {
            d >= first && d <= last.min(month_len) && (d - first).is_multiple_of(step)
        }
        Expr::LastDayOfMonth => d == month_len,
        Expr::WeekdayOfMonth { position, weekday } => {
            date.weekday().num_days_from_monday() == weekday
                && match position {
                    WeekdayPosition::Nth(n) => (d - 1) / 7 + 1 == n,
                    WeekdayPosition::Last => d + 7 > month_len,
                }
        }
    }
}

fn year_matches(exprs: &[Expr], y: u32) -> bool {
    exprs.iter().any(|e| match *e {
        Expr::Range { first, last, step } => {
            y >= first && y <= last && (y - first).is_multiple_of(step)
        }
        _ => false,
    })
}

fn at(date: NaiveDate, h: u32, m: u32, s: u32) -> Option<NaiveDateTime> {
    date.and_hms_opt(h, m, s)
}

fn first_of_month(y: i32, m: u32) -> Option<NaiveDateTime> {
    NaiveDate::from_ymd_opt(y, m, 1).and_then(|d| at(d, 0, 0, 0))
}

impl CronSchedule {
    /// Parses and validates the fields with APScheduler's defaulting.
    pub fn parse(fields: &CronFields) -> Result<CronSchedule, CronError> {
        let timezone: Tz = fields
            .timezone
            .trim()
            .parse()
            .map_err(|_| CronError::UnknownTimezone(fields.timezone.clone()))?;
        let least_significant_given = Field::ALL.iter().rposition(|f| f.given(fields).is_some());
        let mut parsed: Vec<Vec<Expr>> = Vec::with_capacity(8);
        for (i, field) in Field::ALL.iter().enumerate() {
            let expr = match (field.given(fields), least_significant_given) {
                (Some(e), _) => e,
                (None, Some(last)) if i > last => field.default_expr(),
                _ => "*",
            };
            parsed.push(parse_field(*field, expr)?);
        }
        let mut it = parsed.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let year = next();
        let month = mask_of(&next());
        let day = next();
        let week = mask_of(&next());
        let day_of_week = mask_of(&next());
        let hour = mask_of(&next());
        let minute = mask_of(&next());
        let second = mask_of(&next());
        Ok(CronSchedule {
            year,
            month,
            day,
            week,
            day_of_week,
            hour,
            minute,
            second,
            timezone,
        })
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    fn date_matches(&self, date: NaiveDate, month_len: u32) -> bool {
        self.day
            .iter()
            .any(|e| day_expr_matches(e, date, month_len))
            && self.week & (1 << date.iso_week().week()) != 0
            && self.day_of_week & (1 << date.weekday().num_days_from_monday()) != 0
    }

    /// The earliest wall-clock time `>= from` (whole seconds) matching every field.
    ///
    /// Field-wise: each field jumps straight to its next allowed value, resetting the less
    /// significant fields, and a roll-over restarts the check from `year`. Days are scanned
    /// within one month at most (because `day`, `week` and `day_of_week` interact).
    fn next_local(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut cur = from.with_nanosecond(0)?;
        loop {
            let year = u32::try_from(cur.year()).ok()?;
            if year > Field::Year.max() {
                return None;
            }
            let next_year = (year.max(Field::Year.min())..=Field::Year.max())
                .find(|y| year_matches(&self.year, *y))?;
            if next_year != year {
                cur = first_of_month(next_year as i32, 1)?;
                continue;
            }
            let y = cur.year();

            match next_in_mask(self.month, cur.month(), 12) {
                None => {
                    cur = first_of_month(y + 1, 1)?;
                    continue;
                }
                Some(m) if m != cur.month() => {
                    cur = first_of_month(y, m)?;
                    continue;
                }
                Some(_) => {}
            }

            let month_len = days_in_month(y, cur.month());
            let date = cur.date();
            let found = (date.day()..=month_len)
                .filter_map(|d| date.with_day(d))
                .find(|d| self.date_matches(*d, month_len));
            match found {
                None => {
                    cur = if cur.month() == 12 {
                        first_of_month(y + 1, 1)?
                    } else {
                        first_of_month(y, cur.month() + 1)?
                    };
                    continue;
                }
                Some(d) if d != date => {
                    cur = at(d, 0, 0, 0)?;
                    continue;
                }
                Some(_) => {}
            }

            match next_in_mask(self.hour, cur.hour(), 23) {
                None => {
                    cur = at(date.succ_opt()?, 0, 0, 0)?;
                    continue;
                }
                Some(h) if h != cur.hour() => {
                    cur = at(date, h, 0, 0)?;
                }
                Some(_) => {}
            }

            match next_in_mask(self.minute, cur.minute(), 59) {
                None => {
                    cur = at(date, cur.hour(), 0, 0)? + TimeDelta::hours(1);
                    continue;
                }
                Some(m) if m != cur.minute() => {
                    cur = at(date, cur.hour(), m, 0)?;
                }
                Some(_) => {}
            }

            match next_in_mask(self.second, cur.second(), 59) {
                None => {
                    cur = at(date, cur.hour(), cur.minute(), 0)? + TimeDelta::minutes(1);
                    continue;
                }
                Some(s) => return at(date, cur.hour(), cur.minute(), s),
            }
        }
    }

    /// The instant a matching wall-clock time fires at, given that it must be after `after`
    /// (see the module docs for DST).
    fn resolve(&self, wall: NaiveDateTime, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use chrono::LocalResult;
        match self.timezone.from_local_datetime(&wall) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, second) => {
                let first = first.with_timezone(&Utc);
                if first > after {
                    Some(first)
                } else {
                    Some(second.with_timezone(&Utc))
                }
            }
            LocalResult::None => {
                // In a gap: use the offset in force before the transition, i.e. the smaller
                // of the offsets a day before and a day after (clocks jumped forward).
                let probe = |d: TimeDelta| {
                    let u = Utc.from_utc_datetime(&(wall + d));
                    self.timezone
                        .offset_from_utc_datetime(&u.naive_utc())
                        .fix()
                        .local_minus_utc()
                };
                use chrono::Offset;
                let before = probe(TimeDelta::days(-1)).min(probe(TimeDelta::days(1)));
                let instant = wall - TimeDelta::seconds(i64::from(before));
                Some(Utc.from_utc_datetime(&instant))
            }
        }
    }

    /// The first fire time strictly after `t`, or `None` if there is none (past year 9999).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Fire times are whole seconds: the first candidate is the next whole second.
        let start = t.with_nanosecond(0)? + TimeDelta::seconds(1);
        if self.hour == ALL_HOURS {
            self.next_real_time(start)
        } else {
            self.next_wall_clock(start, t)
        }
    }

    /// UTC offset in force at `u`, in seconds.
    fn offset_at(&self, u: DateTime<Utc>) -> i32 {
        use chrono::Offset;
        self.timezone
            .offset_from_utc_datetime(&u.naive_utc())
            .fix()
            .local_minus_utc()
    }

    /// The first instant in `(from, limit]` where the UTC offset differs from the one at
    /// `from` (scanned a day at a time, then bisected to the second).
    fn next_transition(&self, from: DateTime<Utc>, limit: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let off = self.offset_at(from);
        let mut lo = from;
        while lo < limit {
            let hi = (lo + TimeDelta::days(1)).min(limit);
            if self.offset_at(hi) != off {
                // Invariant: offset(lo) == off, offset(hi) != off.
                let mut hi = hi;
                while hi - lo > TimeDelta::seconds(1) {
                    let mid = lo + (hi - lo) / 2;
                    let mid = mid.with_nanosecond(0).unwrap_or(mid);
                    if self.offset_at(mid) == off {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                return Some(hi);
            }
            lo = hi;
        }
        None
    }

    /// Real-time semantics for schedules whose `hour` is `*`: fire at every whole-second
    /// instant whose local time matches. Within one UTC-offset segment local time is
    /// monotonic, so the first match of a segment is found on the wall clock; a segment
    /// without a match moves the search to the next offset change.
    fn next_real_time(&self, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut start = start;
        loop {
            let off = TimeDelta::seconds(i64::from(self.offset_at(start)));
            let wall = self.next_local(start.naive_utc() + off)?;
            let candidate = Utc.from_utc_datetime(&(wall - off));
            match self.next_transition(start, candidate) {
                None => return Some(candidate),
                Some(change) => start = change,
            }
        }
    }

    /// Wall-clock semantics for schedules with specific hours (see the module docs).
    fn next_wall_clock(&self, start: DateTime<Utc>, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = start.with_timezone(&self.timezone).naive_local();
        // The resolved instant is always > t (see module docs); the loop is a guard only.
        for _ in 0..4 {
            let wall = self.next_local(from)?;
            let instant = self.resolve(wall, t)?;
            if instant > t {
                return Some(instant);
            }
            from = wall + TimeDelta::seconds(1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    fn fields(pairs: &[(&str, &str)]) -> CronFields {
        let mut f = CronFields::default();
        for (k, v) in pairs {
            if *k == "timezone" {
                f.timezone = v.to_string();
                continue;
            }
            let v = Some(v.to_string());
            match *k {
                "year" => f.year = v,
                "month" => f.month = v,
                "day" => f.day = v,
                "week" => f.week = v,
                "day_of_week" => f.day_of_week = v,
                "hour" => f.hour = v,
                "minute" => f.minute = v,
                "second" => f.second = v,
                other => panic!("unknown test field {other}"),
            }
        }
        f
    }

    fn sched(pairs: &[(&str, &str)]) -> CronSchedule {
        CronSchedule::parse(&fields(pairs)).expect("valid schedule")
    }

    /// The first `n` fire times after `start`.
    fn fires(s: &CronSchedule, start: &str, n: usize) -> Vec<String> {
        let mut t = utc(start);
        let mut out = Vec::new();
        for _ in 0..n {
            match s.next_after(t) {
                Some(next) => {
                    assert!(next > t, "next_after must be strictly after");
                    out.push(next.to_rfc3339());
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    #[test]
    fn every_ten_minutes_fires_at_second_zero() {
        let s = sched(&[("minute", "*/10")]);
        assert_eq!(
            fires(&s, "2024-05-01T12:03:17Z", 3),
            [
                "2024-05-01T12:10:00+00:00",
                "2024-05-01T12:20:00+00:00",
                "2024-05-01T12:30:00+00:00"
            ]
        );
        // Strictly after: exactly on a fire time gives the next one.
        assert_eq!(
            fires(&s, "2024-05-01T12:10:00Z", 1),
            ["2024-05-01T12:20:00+00:00"]
        );
        // Sub-second times are not rounded down to a fire time already passed.
        assert_eq!(
            fires(&s, "2024-05-01T12:09:59.999Z", 1),
            ["2024-05-01T12:10:00+00:00"]
        );
        assert_eq!(
            fires(&s, "2024-05-01T23:55:00Z", 1),
            ["2024-05-02T00:00:00+00:00"]
        );
    }

    #[test]
    fn hour_two_is_daily_at_two() {
        let s = sched(&[("hour", "2")]);
        assert_eq!(
            fires(&s, "2024-05-01T02:00:00Z", 2),
            ["2024-05-02T02:00:00+00:00", "2024-05-03T02:00:00+00:00"]
        );
        assert_eq!(
            fires(&s, "2024-05-01T01:59:59Z", 1),
            ["2024-05-01T02:00:00+00:00"]
        );
    }

    #[test]
    fn every_thirty_seconds() {
        let s = sched(&[("second", "*/30")]);
        assert_eq!(
            fires(&s, "2024-05-01T12:00:00Z", 3),
            [
                "2024-05-01T12:00:30+00:00",
                "2024-05-01T12:01:00+00:00",
                "2024-05-01T12:01:30+00:00"
            ]
        );
    }

    #[test]
    fn day_of_week_monday_by_name_and_number() {
        // 2024-05-01 is a Wednesday; Monday = 0.
        for expr in ["mon", "0", "MON"] {
            let s = sched(&[("day_of_week", expr)]);
            assert_eq!(
                fires(&s, "2024-05-01T10:00:00Z", 2),
                ["2024-05-06T00:00:00+00:00", "2024-05-13T00:00:00+00:00"],
                "{expr}"
            );
        }
        let sunday = sched(&[("day_of_week", "6")]);
        assert_eq!(
            fires(&sunday, "2024-05-01T10:00:00Z", 1),
            ["2024-05-05T00:00:00+00:00"]
        );
        let workdays = sched(&[("day_of_week", "mon-fri"), ("hour", "8")]);
        assert_eq!(
            fires(&workdays, "2024-05-03T09:00:00Z", 2),
            ["2024-05-06T08:00:00+00:00", "2024-05-07T08:00:00+00:00"]
        );
    }

    #[test]
    fn iso_week_one() {
        // Every day of ISO week 1 at midnight. ISO week 1 of 2025 starts Mon 2024-12-30.
        let s = sched(&[("week", "1")]);
        let got = fires(&s, "2024-06-01T00:00:00Z", 8);
        assert_eq!(
            got,
            [
                "2024-12-30T00:00:00+00:00",
                "2024-12-31T00:00:00+00:00",
                "2025-01-01T00:00:00+00:00",
                "2025-01-02T00:00:00+00:00",
                "2025-01-03T00:00:00+00:00",
                "2025-01-04T00:00:00+00:00",
                "2025-01-05T00:00:00+00:00",
                "2025-12-29T00:00:00+00:00"
            ]
        );
        let week53 = sched(&[("week", "53"), ("day_of_week", "mon")]);
        // 2026 has 53 ISO weeks (week 53 starts Mon 2026-12-28); 2025 has 52.
        assert_eq!(
            fires(&week53, "2025-01-01T00:00:00Z", 1),
            ["2026-12-28T00:00:00+00:00"]
        );
    }

    #[test]
    fn last_day_of_month_and_leap_years() {
        let s = sched(&[("day", "last"), ("hour", "23"), ("minute", "59")]);
        assert_eq!(
            fires(&s, "2024-01-15T00:00:00Z", 4),
            [
                "2024-01-31T23:59:00+00:00",
                "2024-02-29T23:59:00+00:00",
                "2024-03-31T23:59:00+00:00",
                "2024-04-30T23:59:00+00:00"
            ]
        );
        assert_eq!(
            fires(&s, "2023-02-01T00:00:00Z", 1),
            ["2023-02-28T23:59:00+00:00"]
        );
        // Day 31 skips short months; day 29 of February only in leap years.
        let d31 = sched(&[("day", "31")]);
        assert_eq!(
            fires(&d31, "2024-01-31T00:00:00Z", 2),
            ["2024-03-31T00:00:00+00:00", "2024-05-31T00:00:00+00:00"]
        );
        let feb29 = sched(&[("month", "2"), ("day", "29")]);
        assert_eq!(
            fires(&feb29, "2024-03-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]
        );
        // A day range running past the month end is capped at the month length.
        let tail = sched(&[("day", "27-31"), ("month", "feb")]);
        assert_eq!(
            fires(&tail, "2023-01-01T00:00:00Z", 3),
            [
                "2023-02-27T00:00:00+00:00",
                "2023-02-28T00:00:00+00:00",
                "2024-02-27T00:00:00+00:00"
            ]
        );
    }

    #[test]
    fn weekday_position_in_month() {
        let s = sched(&[("day", "last fri")]);
        assert_eq!(
            fires(&s, "2024-05-01T00:00:00Z", 2),
            ["2024-05-31T00:00:00+00:00", "2024-06-28T00:00:00+00:00"]
        );
        let s = sched(&[("day", "2nd mon")]);
        assert_eq!(
            fires(&s, "2024-05-01T00:00:00Z", 1),
            ["2024-05-13T00:00:00+00:00"]
        );
    }

    #[test]
    fn year_boundaries_and_year_field() {
        let s = sched(&[
            ("month", "12"),
            ("day", "31"),
            ("hour", "23"),
            ("minute", "59"),
            ("second", "59"),
        ]);
        assert_eq!(
            fires(&s, "2024-12-31T23:59:59Z", 1),
            ["2025-12-31T23:59:59+00:00"]
        );
        let new_year = sched(&[("month", "1")]);
        // month given → day 1, 00:00:00.
        assert_eq!(
            fires(&new_year, "2024-06-01T00:00:00Z", 2),
            ["2025-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"]
        );
        let once = sched(&[("year", "2030")]);
        assert_eq!(
            fires(&once, "2024-06-01T00:00:00Z", 2),
            ["2030-01-01T00:00:00+00:00"]
        );
        let even = sched(&[("year", "*/2"), ("month", "6"), ("day", "15")]);
        assert_eq!(
            fires(&even, "2025-01-01T00:00:00Z", 2),
            ["2026-06-15T00:00:00+00:00", "2028-06-15T00:00:00+00:00"]
        );
        assert_eq!(once.next_after(utc("2030-01-01T00:00:00Z")), None);
        // Impossible dates end with None instead of looping forever.
        let never = sched(&[("month", "2"), ("day", "30")]);
        assert_eq!(never.next_after(utc("2024-01-01T00:00:00Z")), None);
    }

    #[test]
    fn defaulting_follows_apscheduler() {
        // Fields between given ones stay `*`: every minute of hour 2 at second 5.
        let s = sched(&[("hour", "2"), ("second", "5")]);
        assert_eq!(
            fires(&s, "2024-05-01T02:00:00Z", 2),
            ["2024-05-01T02:00:05+00:00", "2024-05-01T02:01:05+00:00"]
        );
        // Nothing given: every second.
        let every = sched(&[]);
        assert_eq!(
            fires(&every, "2024-05-01T02:00:00Z", 2),
            ["2024-05-01T02:00:01+00:00", "2024-05-01T02:00:02+00:00"]
        );
    }

    #[test]
    fn steps_ranges_and_lists() {
        let s = sched(&[("minute", "0-30/10, 45"), ("hour", "9-17/4")]);
        assert_eq!(
            fires(&s, "2024-05-01T00:00:00Z", 7),
            [
                "2024-05-01T09:00:00+00:00",
                "2024-05-01T09:10:00+00:00",
                "2024-05-01T09:20:00+00:00",
                "2024-05-01T09:30:00+00:00",
                "2024-05-01T09:45:00+00:00",
                "2024-05-01T13:00:00+00:00",
                "2024-05-01T13:10:00+00:00"
            ]
        );
        let from = sched(&[("second", "10/20")]);
        assert_eq!(
            fires(&from, "2024-05-01T00:00:00Z", 3),
            [
                "2024-05-01T00:00:10+00:00",
                "2024-05-01T00:00:30+00:00",
                "2024-05-01T00:00:50+00:00"
            ]
        );
        let watchdog = sched(&[("second", "20,50")]);
        assert_eq!(
            fires(&watchdog, "2024-05-01T00:00:50Z", 2),
            ["2024-05-01T00:01:20+00:00", "2024-05-01T00:01:50+00:00"]
        );
        let months = sched(&[("month", "jan-mar,nov")]);
        assert_eq!(
            fires(&months, "2024-03-05T00:00:00Z", 2),
            ["2024-11-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"]
        );
    }

    #[test]
    fn prague_spring_forward_shifts_the_missing_hour() {
        // 2025-03-30: 02:00 CET (01:00 UTC) jumps to 03:00 CEST.
        let tz = ("timezone", "Europe/Prague");
        let daily = sched(&[("hour", "2"), ("minute", "30"), tz]);
        assert_eq!(
            fires(&daily, "2025-03-28T12:00:00Z", 3),
            [
                "2025-03-29T01:30:00+00:00", // 02:30 CET
                "2025-03-30T01:30:00+00:00", // 02:30 does not exist: fires at 03:30 CEST
                "2025-03-31T00:30:00+00:00"  // 02:30 CEST
            ]
        );
        let at_three = sched(&[("hour", "3"), ("minute", "30"), tz]);
        assert_eq!(
            fires(&at_three, "2025-03-29T12:00:00Z", 1),
            ["2025-03-30T01:30:00+00:00"]
        );
        // Every 20 minutes keeps going in real time across the gap, no duplicates.
        let frequent = sched(&[("minute", "*/20"), tz]);
        assert_eq!(
            fires(&frequent, "2025-03-30T00:30:00Z", 4),
            [
                "2025-03-30T00:40:00+00:00", // 01:40 CET
                "2025-03-30T01:00:00+00:00", // 03:00 CEST
                "2025-03-30T01:20:00+00:00",
                "2025-03-30T01:40:00+00:00"
            ]
        );
        // Hours 2 and 3 both at :30: the shifted 02:30 and the real 03:30 are the same
        // instant and fire once.
        let both = sched(&[("hour", "2,3"), ("minute", "30"), tz]);
        assert_eq!(
            fires(&both, "2025-03-30T00:00:00Z", 2),
            ["2025-03-30T01:30:00+00:00", "2025-03-31T00:30:00+00:00"]
        );
    }

    #[test]
    fn prague_fall_back_fires_ambiguous_time_once() {
        // 2025-10-26: 03:00 CEST (01:00 UTC) falls back to 02:00 CET; 02:xx happens twice.
        let tz = ("timezone", "Europe/Prague");
        let daily = sched(&[("hour", "2"), ("minute", "30"), tz]);
        assert_eq!(
            fires(&daily, "2025-10-25T12:00:00Z", 2),
            [
                "2025-10-26T00:30:00+00:00", // first occurrence, 02:30 CEST
                "2025-10-27T01:30:00+00:00"  // 02:30 CET next day
            ]
        );
        // Every-N-minutes schedules run in real time through the repeated hour
        // (APScheduler 3.11 agrees).
        let frequent = sched(&[("minute", "*/30"), tz]);
        assert_eq!(
            fires(&frequent, "2025-10-26T00:00:00Z", 5),
            [
                "2025-10-26T00:30:00+00:00", // 02:30 CEST
                "2025-10-26T01:00:00+00:00", // 02:00 CET (second occurrence)
                "2025-10-26T01:30:00+00:00", // 02:30 CET
                "2025-10-26T02:00:00+00:00", // 03:00 CET
                "2025-10-26T02:30:00+00:00"
            ]
        );
        // Specific hours fire once (APScheduler 3.11 would also fire 01:00Z and 01:30Z).
        let two_and_three = sched(&[("hour", "2,3"), ("minute", "30"), tz]);
        assert_eq!(
            fires(&two_and_three, "2025-10-25T22:00:00Z", 2),
            ["2025-10-26T00:30:00+00:00", "2025-10-26T02:30:00+00:00"]
        );
        // Starting inside the repeated hour uses the second occurrence.
        assert_eq!(
            fires(&daily, "2025-10-26T01:10:00Z", 1),
            ["2025-10-26T01:30:00+00:00"]
        );
    }

    #[test]
    fn half_hour_dst_shift_lord_howe() {
        // Australia/Lord_Howe moves by 30 minutes. Values checked against APScheduler 3.11.
        let tz = ("timezone", "Australia/Lord_Howe");
        // Spring 2025-10-05 02:00 LHST (+10:30, 15:30Z) → 02:30 LHDT: 02:00 and 02:20 do
        // not exist, so an every-20-minutes job goes 01:40 → 02:40.
        let frequent = sched(&[("minute", "*/20"), tz]);
        assert_eq!(
            fires(&frequent, "2025-10-04T15:00:00Z", 2),
            ["2025-10-04T15:10:00+00:00", "2025-10-04T15:40:00+00:00"]
        );
        let hourly = sched(&[("hour", "*"), tz]);
        assert_eq!(
            fires(&hourly, "2025-10-04T14:00:00Z", 2),
            ["2025-10-04T14:30:00+00:00", "2025-10-04T16:00:00+00:00"]
        );
        // Autumn 2025-04-06 02:00 LHDT (15:00Z) → 01:30 LHST: 01:30–01:59 repeat.
        let every_ten = sched(&[("minute", "*/10"), tz]);
        assert_eq!(
            fires(&every_ten, "2025-04-05T14:45:00Z", 4),
            [
                "2025-04-05T14:50:00+00:00", // 01:50 LHDT
                "2025-04-05T15:00:00+00:00", // 01:30 LHST (repeat)
                "2025-04-05T15:10:00+00:00",
                "2025-04-05T15:20:00+00:00"
            ]
        );
    }

    #[test]
    fn weekly_and_monthly_do_not_skip_after_dst_change() {
        // APScheduler 3.11 skips these (see module docs); the correct fires are:
        let monday = sched(&[("day_of_week", "mon"), ("timezone", "Europe/Prague")]);
        assert_eq!(
            fires(&monday, "2025-03-29T22:00:00Z", 2),
            ["2025-03-30T22:00:00+00:00", "2025-04-06T22:00:00+00:00"]
        );
        let monthly = sched(&[("month", "*"), ("timezone", "America/New_York")]);
        assert_eq!(
            fires(&monthly, "2025-03-08T12:00:00Z", 2),
            ["2025-04-01T04:00:00+00:00", "2025-05-01T04:00:00+00:00"]
        );
    }

    #[test]
    fn non_utc_zone_without_dst_change() {
        let s = sched(&[("hour", "2"), ("timezone", "Europe/Prague")]);
        assert_eq!(
            fires(&s, "2024-07-01T12:00:00Z", 1),
            ["2024-07-02T00:00:00+00:00"]
        );
    }

    #[test]
    fn invalid_inputs_name_field_and_expression() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[("minute", "not-a-minute")], "minute", "not-a-minute"),
            (&[("minute", "60")], "minute", "60"),
            (&[("hour", "24")], "hour", "24"),
            (&[("hour", "5-3")], "hour", "5-3"),
            (&[("second", "*/0")], "second", "*/0"),
            (&[("minute", "*/60")], "minute", "*/60"),
            (&[("day", "0")], "day", "0"),
            (&[("day", "32")], "day", "32"),
            (&[("day", "lastt")], "day", "lastt"),
            (&[("day", "6th mon")], "day", "6th mon"),
            (&[("week", "54")], "week", "54"),
            (&[("week", "0")], "week", "0"),
            (&[("day_of_week", "7")], "day_of_week", "7"),
            (&[("day_of_week", "funday")], "day_of_week", "funday"),
            (&[("month", "13")], "month", "13"),
            (&[("month", "foo")], "month", "foo"),
            (&[("year", "1969")], "year", "1969"),
            (&[("minute", "1,,2")], "minute", "1,,2"),
            (&[("minute", "")], "minute", ""),
            (&[("minute", "-5")], "minute", "-5"),
        ];
        for (pairs, field, expr) in cases {
            match CronSchedule::parse(&fields(pairs)) {
                Err(CronError::InvalidExpression {
                    field: f, expr: e, ..
                }) => {
                    assert_eq!((f, e.as_str()), (*field, *expr));
                    let msg = CronSchedule::parse(&fields(pairs))
                        .expect_err("invalid")
                        .to_string();
                    assert!(msg.contains(field) && msg.contains(expr), "{msg}");
                }
                other => panic!("{pairs:?} should be rejected, got {other:?}"),
            }
        }
        assert_eq!(
            CronSchedule::parse(&fields(&[("timezone", "Mars/Olympus")])),
            Err(CronError::UnknownTimezone("Mars/Olympus".into()))
        );
    }

    #[test]
    fn fields_from_named_pairs() {
        let f = CronFields::from_named(
            [
                ("hour", Some("2".to_string())),
                ("minute", None),
                ("second", Some("30".into())),
            ],
            "Europe/Prague",
        )
        .expect("known fields");
        assert_eq!(f.hour.as_deref(), Some("2"));
        assert_eq!(f.minute, None);
        assert_eq!(f.second.as_deref(), Some("30"));
        assert_eq!(f.timezone, "Europe/Prague");
        assert_eq!(
            CronFields::from_named([("minutes", Some("5".to_string()))], "UTC"),
            Err(CronError::UnknownField("minutes".into()))
        );
    }

    #[test]
    fn far_future_is_fast() {
        // A schedule that only matches rarely must not be searched second by second.
        let s = sched(&[("month", "2"), ("day", "29"), ("day_of_week", "mon")]);
        let started = std::time::Instant::now();
        assert_eq!(
            fires(&s, "2024-03-01T00:00:00Z", 1),
            ["2044-02-29T00:00:00+00:00"]
        );
        // Real-time (every-hour) schedules far away cross many DST changes.
        let far = sched(&[
            ("year", "2100"),
            ("hour", "*"),
            ("timezone", "Europe/Prague"),
        ]);
        assert_eq!(
            fires(&far, "2024-03-01T00:00:00Z", 2),
            ["2099-12-31T23:00:00+00:00", "2100-01-01T00:00:00+00:00"]
        );
        let never = sched(&[("week", "1"), ("month", "6")]);
        assert_eq!(never.next_after(utc("2024-01-01T00:00:00Z")), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
