//! Conversions between stored columns and BSON / chrono values.

use bson::{Bson, Document};
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::types::{ToSqlOutput, Value};

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

/// Encode one value compactly as a BSON element without its name: the type byte followed
/// by the value bytes (the one-field document `{v: value}` minus its 4-byte length, the
/// key `"v\0"` and the terminator; saves 7 bytes per stored value). Written directly,
/// without building that document (it cloned the value on every history and raw row).
pub fn encode_value(v: &Bson) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(16);
    dp3_model::bson_bytes::write_element(&mut out, v)
        .map_err(|e| StoreError::InvalidQuery(e.to_string()))?;
    Ok(out)
}

/// Decode a value written by [`encode_value`].
pub fn decode_value(bytes: &[u8], what: &str) -> Result<Bson> {
    let (ty, value) = bytes.split_first().ok_or_else(|| StoreError::Corrupt {
        what: what.to_owned(),
        reason: "empty value".into(),
    })?;
    // Fast paths for the scalar element types that make up almost all history values:
    // building a whole document to read one scalar dominated master-record reads.
    if let Some(v) = decode_scalar(*ty, value) {
        return Ok(v);
    }
    let len = u32::try_from(bytes.len() + 7).map_err(|_| StoreError::Corrupt {
        what: what.to_owned(),
        reason: "value too large".into(),
    })?;
    let mut doc = Vec::with_capacity(bytes.len() + 7);
    doc.extend_from_slice(&len.to_le_bytes());
    doc.push(*ty);
    doc.extend_from_slice(b"v\0");
    doc.extend_from_slice(value);
    doc.push(0);
    let mut d = decode_doc(&doc, what)?;
    Ok(d.remove("v").unwrap_or(Bson::Null))
}

/// Decode a scalar BSON element value (without its key) of element type `ty`; `None` for
/// other types or malformed input (the general path then reports the error).
fn decode_scalar(ty: u8, b: &[u8]) -> Option<Bson> {
    let le8 = |b: &[u8]| -> Option<[u8; 8]> { b.get(..8)?.try_into().ok() };
    let le4 = |b: &[u8]| -> Option<[u8; 4]> { b.get(..4)?.try_into().ok() };
    match ty {
        0x01 if b.len() == 8 => Some(Bson::Double(f64::from_le_bytes(le8(b)?))),
        0x10 if b.len() == 4 => Some(Bson::Int32(i32::from_le_bytes(le4(b)?))),
        0x12 if b.len() == 8 => Some(Bson::Int64(i64::from_le_bytes(le8(b)?))),
        0x08 if b.len() == 1 => match b[0] {
            0 => Some(Bson::Boolean(false)),
            1 => Some(Bson::Boolean(true)),
            _ => None,
        },
        0x0A if b.is_empty() => Some(Bson::Null),
        0x09 if b.len() == 8 => Some(Bson::DateTime(bson::DateTime::from_millis(
            i64::from_le_bytes(le8(b)?),
        ))),
        0x02 => {
            let n = usize::try_from(i32::from_le_bytes(le4(b)?)).ok()?;
            let body = b.get(4..4 + n)?;
            if b.len() != 4 + n || body.last() != Some(&0) {
                return None;
            }
            std::str::from_utf8(&body[..n - 1])
                .ok()
                .map(|s| Bson::String(s.to_owned()))
        }
        _ => None,
    }
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

/// An integer SQL value (for rows bound value by value).
pub fn sql_int(v: i64) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Integer(v))
}

/// An integer or NULL SQL value.
pub fn sql_opt_int(v: Option<i64>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(v.map_or(Value::Null, Value::Integer))
}

/// A blob SQL value.
pub fn sql_blob(v: Vec<u8>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Blob(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn values_round_trip_compactly() {
        for v in [
            Bson::Int32(5),
            Bson::Int64(1 << 40),
            Bson::Double(0.5),
            Bson::String("x".into()),
            Bson::Null,
            Bson::Boolean(true),
            Bson::Document(doc! {"eid": 1, "data": [1, 2]}),
            Bson::Array(vec![Bson::Int32(1), Bson::String("a".into())]),
            dp3_model::value::ipv4("1.2.3.4".parse().unwrap()),
        ] {
            let bytes = encode_value(&v).unwrap();
            assert_eq!(decode_value(&bytes, "test").unwrap(), v);
        }
        assert_eq!(encode_value(&Bson::Int32(5)).unwrap().len(), 5);
        assert!(decode_value(&[], "test").is_err());
        assert!(decode_value(&[0x10, 1], "test").is_err());
    }

    #[test]
    fn scalar_fast_path_agrees_with_the_document_decoder() {
        for v in [
            Bson::Int32(-7),
            Bson::Int64(i64::MIN),
            Bson::Double(f64::NAN),
            Bson::Double(-0.0),
            Bson::String(String::new()),
            Bson::String("žluťoučký".into()),
            Bson::Boolean(false),
            Bson::Null,
            Bson::DateTime(bson::DateTime::from_millis(1_700_000_000_123)),
        ] {
            let bytes = encode_value(&v).unwrap();
            let fast = decode_scalar(bytes[0], &bytes[1..]).expect("scalar");
            let mut d = doc! {};
            d.insert("v", v.clone());
            let slow = Document::from_reader(d.to_vec().unwrap().as_slice()).unwrap();
            assert_eq!(
                format!("{fast:?}"),
                format!("{:?}", slow.get("v").unwrap()),
                "{v:?}"
            );
        }
        // malformed scalars fall back to the general path, which reports them
        assert!(decode_scalar(0x02, &[5, 0, 0, 0, b'a', 0]).is_none());
        assert!(decode_scalar(0x08, &[2]).is_none());
    }
}
