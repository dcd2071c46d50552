//! Updater periods (core.md §3.9): `<n>[smhd]` strings or seconds.

use std::time::Duration;

/// A period string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid period '{input}': {reason}")]
pub struct PeriodError {
    pub input: String,
    pub reason: &'static str,
}

/// Parse an updater period as DP3 does: `<n>[smhd]` (e.g. `"30s"`, `"5m"`, `"1h"`, `"7d"`).
/// A bare number string is rejected (except `"0"`, which is a zero period and then fails the
/// host's `period >= update_batch_period` check).
pub fn parse_period(s: &str) -> Result<Duration, PeriodError> {
    let bad = |reason| PeriodError {
        input: s.to_owned(),
        reason,
    };
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad("expected a number followed by s, m, h or d")),
    };
    if num.is_empty() || !num.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad("expected a non-negative whole number before the unit"));
    }
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| bad("number too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_period("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_period("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_period("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_period("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_period("0").unwrap(), Duration::ZERO);
        for bad in ["60", "m", "-5m", "1.5h", "5x", ""] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }
}
