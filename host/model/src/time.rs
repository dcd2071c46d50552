//! DP3's datetime input grammar (data-model.md §3.3, §4.2; api.md §4.2).
//!
//! Accepted:
//! * RFC 3339 / ISO 8601 date-times `YYYY-MM-DD[T| |t|_]HH:MM[:SS[.f]][Z|z|±HH:MM|±HHMM|±HH]`,
//!   fractions of any length truncated to microseconds (`,` also accepted as the decimal mark);
//! * date-only `YYYY-MM-DD` (midnight);
//! * Unix timestamps as JSON numbers or numeric strings: seconds when `|x| <= 2e10`, else
//!   milliseconds.
//!
//! **Naive inputs are UTC everywhere** — for `t1`/`t2`, for `time`-typed values and for
//! timeseries `time` series alike. DP3 keeps naive `time` values naive in memory (and crashes
//! comparing them with aware `t1`/`t2`, data-model.md §9 items 17–18) but stores them as UTC
//! anyway; treating them as UTC from the start gives the same stored data without the crash.
//!
//! The parser is hand-written on bytes (this is on the ingestion hot path) and never panics:
//! every out-of-range field is an error. Only years 1..=9999 are representable (as in Python).

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};

/// Why a datetime input was rejected, in pydantic's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct DateTimeError {
    /// Pydantic error type: `datetime_type`, `datetime_from_date_parsing`, `datetime_parsing`.
    pub kind: &'static str,
    /// Full pydantic-style message.
    pub msg: String,
    /// The bare parser error (pydantic's `ctx.error`), when there is one.
    pub detail: Option<&'static str>,
}

impl DateTimeError {
    fn parse(detail: &'static str) -> Self {
        DateTimeError {
            kind: "datetime_from_date_parsing",
            msg: format!("Input should be a valid datetime or date, {detail}"),
            detail: Some(detail),
        }
    }

    fn timestamp(detail: &'static str) -> Self {
        DateTimeError {
            kind: "datetime_parsing",
            msg: format!("Input should be a valid datetime, {detail}"),
            detail: Some(detail),
        }
    }

    /// The input is not a string or number at all.
    pub fn wrong_type() -> Self {
        DateTimeError {
            kind: "datetime_type",
            msg: "Input should be a valid datetime".to_owned(),
            detail: None,
        }
    }
}

/// Seconds/milliseconds threshold for Unix timestamps (pydantic's rule).
const MS_THRESHOLD: f64 = 2e10;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in Unix microseconds.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// Parse a datetime given as text.
pub fn parse_datetime_str(s: &str) -> Result<DateTime<Utc>, DateTimeError> {
    let b = s.as_bytes();
    // Numeric strings are Unix timestamps; a date always has a `-` at byte 4.
    if b.get(4) != Some(&b'-') && looks_numeric(b) {
        return match s.trim().parse::<f64>() {
            Ok(x) => from_unix(x),
            Err(_) => Err(DateTimeError::parse("invalid character in year")),
        };
    }
    parse_iso(b)
}

/// Parse a datetime given as JSON (string or number; anything else is `datetime_type`).
pub fn parse_datetime_json(v: &serde_json::Value) -> Result<DateTime<Utc>, DateTimeError> {
    match v {
        serde_json::Value::String(s) => parse_datetime_str(s),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => from_unix_int(i),
            None => from_unix(n.as_f64().unwrap_or(f64::NAN)),
        },
        _ => Err(DateTimeError::wrong_type()),
    }
}

/// A Unix timestamp given as an integer (seconds, or milliseconds beyond 2e10).
pub fn from_unix_int(i: i64) -> Result<DateTime<Utc>, DateTimeError> {
    let micros = if i.unsigned_abs() as f64 <= MS_THRESHOLD {
        i.checked_mul(1_000_000)
    } else {
        i.checked_mul(1_000)
    };
    micros_to_datetime(micros)
}

/// A Unix timestamp given as a float (seconds, or milliseconds beyond 2e10).
pub fn from_unix(x: f64) -> Result<DateTime<Utc>, DateTimeError> {
    if !x.is_finite() {
        return Err(DateTimeError::timestamp("invalid timestamp"));
    }
    let micros = if x.abs() <= MS_THRESHOLD {
        (x * 1e6).round()
    } else {
        (x * 1e3).round()
    };
    // Out-of-range floats saturate in `as`; the range check below catches them.
    if micros.abs() > 9.0e18 {
        return micros_to_datetime(None);
    }
    micros_to_datetime(Some(micros as i64))
}

fn micros_to_datetime(micros: Option<i64>) -> Result<DateTime<Utc>, DateTimeError> {
    match micros {
        Some(m) if (MIN_MICROS..=MAX_MICROS).contains(&m) => DateTime::from_timestamp_micros(m)
            .ok_or_else(|| DateTimeError::timestamp("timestamp is out of range")),
        _ => Err(DateTimeError::timestamp(
            "dates before 0001 or after 9999 are not supported as unix timestamps",
        )),
    }
}

/// `[ws][+-]digits[.digits][e[+-]digits][ws]` or `inf`/`nan` spellings are numeric.
fn looks_numeric(b: &[u8]) -> bool {
    let t = b.trim_ascii();
    !t.is_empty()
        && t.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.' | b'e' | b'E'))
        && t.iter().any(u8::is_ascii_digit)
}

/// Cursor over the input bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// Exactly `n` ASCII digits as a number.
    #[inline]
    fn digits(&mut self, n: usize, what: &'static str) -> Result<u32, DateTimeError> {
        let Some(chunk) = self.b.get(self.pos..self.pos + n) else {
            return Err(DateTimeError::parse("input is too short"));
        };
        let mut v = 0u32;
        for &c in chunk {
            if !c.is_ascii_digit() {
                return Err(DateTimeError::parse(what));
            }
            v = v * 10 + u32::from(c - b'0');
        }
        self.pos += n;
        Ok(v)
    }

    #[inline]
    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), DateTimeError> {
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(DateTimeError::parse(what)),
            None => Err(DateTimeError::parse("input is too short")),
        }
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn parse_iso(b: &[u8]) -> Result<DateTime<Utc>, DateTimeError> {
    let mut c = Cursor { b, pos: 0 };
    let year = i64::from(c.digits(4, "invalid character in year")?);
    c.expect(b'-', "invalid date separator, expected `-`")?;
    let month = c.digits(2, "invalid character in month")?;
    c.expect(b'-', "invalid date separator, expected `-`")?;
    let day = c.digits(2, "invalid character in day")?;
    if year == 0 {
        return Err(DateTimeError::parse("year 0 is out of range"));
    }
    if !(1..=12).contains(&month) {
        return Err(DateTimeError::parse(
            "month value is outside expected range of 1-12",
        ));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(DateTimeError::parse("day value is outside expected range"));
    }

    let (mut secs_of_day, mut micros, mut offset_secs) = (0i64, 0i64, 0i64);
    match c.peek() {
        None => {}
        Some(b'T' | b't' | b' ' | b'_') => {
            c.pos += 1;
            let hour = c.digits(2, "invalid character in hour")?;
            c.expect(b':', "invalid time separator, expected `:`")?;
            let minute = c.digits(2, "invalid character in minute")?;
            let mut second = 0;
            if c.peek() == Some(b':') {
                c.pos += 1;
                second = c.digits(2, "invalid character in second")?;
                if matches!(c.peek(), Some(b'.' | b',')) {
                    c.pos += 1;
                    let start = c.pos;
                    let mut scale = 100_000i64;
                    while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
                        // Digits beyond microseconds are truncated.
                        micros += i64::from(d - b'0') * scale;
                        scale /= 10;
                        c.pos += 1;
                    }
                    if c.pos == start {
                        return Err(DateTimeError::parse(
                            "second fraction must contain at least one digit",
                        ));
                    }
                }
            }
            if hour > 23 {
                return Err(DateTimeError::parse(
                    "hour value is outside expected range of 0-23",
                ));
            }
            if minute > 59 {
                return Err(DateTimeError::parse(
                    "minute value is outside expected range of 0-59",
                ));
            }
            if second > 59 {
                return Err(DateTimeError::parse(
                    "second value is outside expected range of 0-59",
                ));
            }
            secs_of_day = i64::from(hour * 3600 + minute * 60 + second);
            offset_secs = parse_offset(&mut c)?;
        }
        Some(_) => {
            return Err(DateTimeError::parse(
                "invalid datetime separator, expected `T`, `t`, `_` or space",
            ));
        }
    }
    if c.pos != b.len() {
        return Err(DateTimeError::parse(
            "unexpected extra characters at the end of the input",
        ));
    }
    // Assembling from fields is cheaper than converting a timestamp back to a date.
    let out_of_range = || DateTimeError::parse("date is out of range");
    let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(out_of_range)?;
    let time =
        NaiveTime::from_num_seconds_from_midnight_opt(secs_of_day as u32, (micros * 1000) as u32)
            .ok_or_else(out_of_range)?;
    let mut local = NaiveDateTime::new(date, time);
    if offset_secs != 0 {
        local = local
            .checked_sub_signed(TimeDelta::seconds(offset_secs))
            .filter(|t| (1..=9999).contains(&t.year()))
            .ok_or_else(out_of_range)?;
    }
    Ok(local.and_utc())
}

/// Optional zone designator; returns the offset east of UTC in seconds (0 for naive).
fn parse_offset(c: &mut Cursor<'_>) -> Result<i64, DateTimeError> {
    let sign = match c.peek() {
        None => return Ok(0),
        Some(b'Z' | b'z') => {
            c.pos += 1;
            return Ok(0);
        }
        Some(b'+') => 1,
        Some(b'-') => -1,
        Some(_) => return Err(DateTimeError::parse("invalid timezone sign")),
    };
    c.pos += 1;
    let hh = c.digits(2, "invalid timezone hour")?;
    let mut mm = 0;
    if c.peek() == Some(b':') {
        c.pos += 1;
        mm = c.digits(2, "invalid timezone minute")?;
    } else if c.peek().is_some() {
        mm = c.digits(2, "invalid timezone minute")?;
    }
    if hh > 23 || mm > 59 {
        return Err(DateTimeError::parse(
            "timezone offset must be less than 24 hours",
        ));
    }
    Ok(sign * i64::from(hh * 3600 + mm * 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn p(s: &str) -> DateTime<Utc> {
        parse_datetime_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn rfc3339_forms() {
        let t = utc(2024, 5, 1, 12, 0, 30);
        assert_eq!(p("2024-05-01T12:00:30Z"), t);
        assert_eq!(p("2024-05-01t12:00:30z"), t);
        assert_eq!(p("2024-05-01 12:00:30"), t);
        assert_eq!(p("2024-05-01_12:00:30"), t);
        assert_eq!(p("2024-05-01T14:00:30+02:00"), t);
        assert_eq!(p("2024-05-01T14:00:30+0200"), t);
        assert_eq!(p("2024-05-01T14:00:30+02"), t);
        assert_eq!(p("2024-05-01T10:30:30-01:30"), t);
        assert_eq!(p("2024-05-01T12:00Z"), utc(2024, 5, 1, 12, 0, 0));
        assert_eq!(p("2024-05-01"), utc(2024, 5, 1, 0, 0, 0));
    }

    #[test]
    fn fractions_are_truncated_to_microseconds() {
        let base = utc(2025, 1, 1, 12, 0, 0);
        assert_eq!(
            p("2025-01-01T12:00:00.123"),
            base + chrono::TimeDelta::microseconds(123_000)
        );
        assert_eq!(
            p("2025-01-01T12:00:00.1234569Z"),
            base + chrono::TimeDelta::microseconds(123_456)
        );
        assert_eq!(
            p("2025-01-01T12:00:00,5Z"),
            base + chrono::TimeDelta::milliseconds(500)
        );
    }

    #[test]
    fn unix_timestamps() {
        assert_eq!(p("1700000000"), utc(2023, 11, 14, 22, 13, 20));
        assert_eq!(p(" 1700000000 "), utc(2023, 11, 14, 22, 13, 20));
        assert_eq!(p("1700000000000"), utc(2023, 11, 14, 22, 13, 20));
        assert_eq!(
            parse_datetime_json(&json!(1700000000.5)).unwrap(),
            utc(2023, 11, 14, 22, 13, 20) + chrono::TimeDelta::milliseconds(500)
        );
        assert_eq!(
            parse_datetime_json(&json!(1_700_000_000_000i64)).unwrap(),
            utc(2023, 11, 14, 22, 13, 20)
        );
        assert_eq!(
            parse_datetime_json(&json!(0)).unwrap(),
            utc(1970, 1, 1, 0, 0, 0)
        );
        assert_eq!(
            parse_datetime_json(&json!(-86400)).unwrap(),
            utc(1969, 12, 31, 0, 0, 0)
        );
        // 2e10 is still seconds (year 2603), just above is milliseconds
        assert_eq!(
            from_unix_int(20_000_000_000).unwrap().timestamp(),
            20_000_000_000
        );
        assert_eq!(
            from_unix_int(20_000_000_001).unwrap().timestamp(),
            20_000_000
        );
        assert!(from_unix_int(i64::MAX).is_err());
        assert!(from_unix_int(i64::MIN).is_err());
        assert!(from_unix(f64::NAN).is_err());
        assert!(from_unix(1e300).is_err());
    }

    #[test]
    fn rejections() {
        for bad in [
            "",
            "xyz",
            "10:00",
            "2024-13-01",
            "2024-02-30",
            "2023-02-29",
            "0000-01-01",
            "2024-01-01T24:00:00",
            "2024-01-01T12:60:00",
            "2024-01-01T12:00:60",
            "2024-01-01T12:00:00.",
            "2024-01-01T12:00:00+24:00",
            "2024-01-01T12:00:00+02:60",
            "2024-01-01T12:00:00 Z",
            "2024-01-01T12",
            "2024-01-01X12:00",
            "2024-1-01",
            "2024-01-01T12:00:00Zjunk",
            "1e999",
            "-",
            "9999-12-31T23:59:59-01:00",
        ] {
            assert!(
                parse_datetime_str(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let e = parse_datetime_str("xyz").unwrap_err();
        assert_eq!(e.kind, "datetime_from_date_parsing");
        assert_eq!(
            e.msg,
            "Input should be a valid datetime or date, input is too short"
        );
        assert_eq!(
            parse_datetime_json(&json!(true)).unwrap_err().kind,
            "datetime_type"
        );
        assert_eq!(
            parse_datetime_json(&json!(null)).unwrap_err().kind,
            "datetime_type"
        );
    }

    #[test]
    fn leap_years_and_extremes() {
        assert_eq!(p("2024-02-29T00:00:00Z"), utc(2024, 2, 29, 0, 0, 0));
        assert_eq!(p("2000-02-29"), utc(2000, 2, 29, 0, 0, 0));
        assert!(parse_datetime_str("1900-02-29").is_err());
        assert_eq!(p("0001-01-01T00:00:00Z"), utc(1, 1, 1, 0, 0, 0));
        assert_eq!(p("9999-12-31T23:59:59Z"), utc(9999, 12, 31, 23, 59, 59));
        assert!(parse_datetime_str("0001-01-01T00:00:00+01:00").is_err());
    }

    #[test]
    fn agrees_with_chrono_on_rfc3339() {
        for s in [
            "1970-01-01T00:00:00Z",
            "1999-12-31T23:59:59.999999Z",
            "2038-01-19T03:14:07+05:45",
            "1601-03-01T00:00:00-11:00",
        ] {
            let expected = DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
            assert_eq!(p(s), expected, "{s}");
        }
    }
}
