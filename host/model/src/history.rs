//! History items: what observations and timeseries attributes keep in the master record.

use bson::Bson;
use chrono::{DateTime, Utc};

/// One history item of an observations (`c` set) or timeseries (`c` none) attribute:
/// `{t1, t2, v, c}` in the master record.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryItem {
    pub t1: DateTime<Utc>,
    pub t2: DateTime<Utc>,
    pub v: Bson,
    pub c: Option<f64>,
}
