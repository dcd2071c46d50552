//! Conversions between stored columns and BSON / chrono values.

use bson::{Bson, Document, doc};
use chrono::{DateTime, TimeZone, Utc};

use crate::error::{Result, StoreError};

/// Milliseconds since the epoch (BSON date precision).
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A stored millisecond timestamp as a BSON date.
pub fn bson_time(ms: i64) -> Bson {
    Bson::DateTime(bson::DateTime::from_millis(ms))
}

/// A stored millisecond timestamp as a chrono time.
pub fn chrono_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Encode one value as a one-field document `{v: value}` (BSON has no bare-value encoding).
pub fn encode_value(v: &Bson) -> Result<Vec<u8>> {
    doc! {"v": v.clone()}
        .to_vec()
        .map_err(|e| StoreError::InvalidQuery(format!("value cannot be encoded as BSON: {e}")))
}

/// Decode a value written by [`encode_value`].
pub fn decode_value(bytes: &[u8], what: &str) -> Result<Bson> {
    let d = decode_doc(bytes, what)?;
    Ok(d.get("v").cloned().unwrap_or(Bson::Null))
}

pub fn encode_doc(d: &Document) -> Result<Vec<u8>> {
    d.to_vec()
        .map_err(|e| StoreError::InvalidQuery(format!("document cannot be encoded as BSON: {e}")))
}

pub fn decode_doc(bytes: &[u8], what: &str) -> Result<Document> {
    Document::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// Map a SQLite error to a store error (disk full gets its own variant).
pub fn sql_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::DiskFull
    {
        return StoreError::Full(e.to_string());
    }
    StoreError::backend("sqlite", e)
}

pub trait SqlResultExt<T> {
    fn db(self) -> Result<T>;
}

impl<T> SqlResultExt<T> for std::result::Result<T, rusqlite::Error> {
    fn db(self) -> Result<T> {
        self.map_err(sql_err)
    }
}
