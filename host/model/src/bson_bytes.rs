//! BSON bytes of single values, written straight from a [`Bson`] without building a
//! document first (wrapping a value as `{v: value}` and serialising it cloned the value and
//! allocated a document per call, a measurable share of the ingestion write path).
//!
//! The output is byte-for-byte what the `bson` crate writes for the value inside a document;
//! rare element types are delegated to the crate.

use bson::spec::BinarySubtype;
use bson::{Bson, Document, doc};

/// A value that has no BSON encoding (a document key with a NUL byte, or a size over 2 GiB).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value cannot be encoded as BSON: {0}")]
pub struct BsonWriteError(pub String);

/// Append the element `[type byte][value bytes]` of `v` (a document element without its
/// key).
pub fn write_element(out: &mut Vec<u8>, v: &Bson) -> Result<(), BsonWriteError> {
    out.push(v.element_type() as u8);
    write_value(out, v)
}

/// Append the value bytes of `v` as laid out inside a BSON document (no type byte, no key).
pub fn write_value(out: &mut Vec<u8>, v: &Bson) -> Result<(), BsonWriteError> {
    match v {
        Bson::Double(f) => out.extend_from_slice(&f.to_le_bytes()),
        Bson::String(s) => {
            out.extend_from_slice(&len_i32(s.len() + 1, "string")?.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        Bson::Document(d) => write_document(out, d.iter().map(|(k, v)| (k.as_str(), v)))?,
        Bson::Array(items) => {
            let mut key = String::new();
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            for (i, item) in items.iter().enumerate() {
                use std::fmt::Write as _;
                key.clear();
                let _ = write!(key, "{i}");
                write_field(out, &key, item)?;
            }
            finish_document(out, at)?;
        }
        Bson::Binary(b)
            if matches!(
                b.subtype,
                BinarySubtype::Generic | BinarySubtype::UserDefined(_)
            ) =>
        {
            out.extend_from_slice(&len_i32(b.bytes.len(), "binary")?.to_le_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(&b.bytes);
        }
        Bson::Boolean(b) => out.push(u8::from(*b)),
        Bson::DateTime(t) => out.extend_from_slice(&t.timestamp_millis().to_le_bytes()),
        Bson::Null => {}
        Bson::Int32(i) => out.extend_from_slice(&i.to_le_bytes()),
        Bson::Int64(i) => out.extend_from_slice(&i.to_le_bytes()),
        other => {
            // Rare types: let the bson crate lay them out (`{v: value}` minus the framing).
            let bytes = bson::serialize_to_vec(&doc! {"v": other.clone()})
                .map_err(|e| BsonWriteError(e.to_string()))?;
            // layout: len(4) type(1) 'v' 0 value... 0
            let value = bytes
                .get(7..bytes.len().saturating_sub(1))
                .ok_or_else(|| BsonWriteError("unexpected layout".into()))?;
            out.extend_from_slice(value);
        }
    }
    Ok(())
}

/// The BSON bytes of `doc` with `key` set to `value`: what `Document::insert` on a copy
/// would give (replaced in place when present, appended otherwise), without the copy.
pub fn document_with(doc: &Document, key: &str, value: &Bson) -> Result<Vec<u8>, BsonWriteError> {
    let mut out = Vec::with_capacity(256);
    let fields = doc
        .iter()
        .map(|(k, v)| (k.as_str(), if k == key { value } else { v }));
    if doc.contains_key(key) {
        write_document(&mut out, fields)?;
    } else {
        write_document(&mut out, fields.chain(std::iter::once((key, value))))?;
    }
    Ok(out)
}

fn len_i32(n: usize, what: &str) -> Result<i32, BsonWriteError> {
    i32::try_from(n).map_err(|_| BsonWriteError(format!("{what} exceeds 2 GiB")))
}

fn write_field(out: &mut Vec<u8>, key: &str, v: &Bson) -> Result<(), BsonWriteError> {
    if key.as_bytes().contains(&0) {
        return Err(BsonWriteError(format!(
            "document key {key:?} contains a NUL byte"
        )));
    }
    out.push(v.element_type() as u8);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    write_value(out, v)
}

fn write_document<'a>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'a str, &'a Bson)>,
) -> Result<(), BsonWriteError> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    for (k, v) in fields {
        write_field(out, k, v)?;
    }
    finish_document(out, at)
}

/// Terminate the document started at `at` and fill in its length.
fn finish_document(out: &mut Vec<u8>, at: usize) -> Result<(), BsonWriteError> {
    out.push(0);
    let n = len_i32(out.len() - at, "document")?;
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_with_equals_insert_on_a_copy() {
        let d = doc! {"eid": 5, "a": "x", "b": [1.5, {"c": null}]};
        for (key, value) in [
            ("a", Bson::Int64(7)),
            ("_time_created", Bson::Boolean(true)),
        ] {
            let mut copy = d.clone();
            copy.insert(key, value.clone());
            assert_eq!(
                document_with(&d, key, &value).expect("encodes"),
                copy.to_vec().expect("bson"),
                "{key}"
            );
        }
        assert!(document_with(&doc! {"a\0b": 1}, "t", &Bson::Null).is_err());
    }

    #[test]
    fn same_bytes_as_the_bson_crate() {
        let values = [
            Bson::Int32(-5),
            Bson::Int64(1 << 40),
            Bson::Double(-0.0),
            Bson::String("žluť\0ouček".into()),
            Bson::String(String::new()),
            Bson::Boolean(true),
            Bson::Null,
            Bson::DateTime(bson::DateTime::from_millis(-5)),
            bson::bson!({"eid": "x", "data": [1, 2.5, {"k": null}], "e": {}, "a": []}),
            Bson::Array((0..12).map(Bson::Int32).collect()),
            crate::value::ipv4("10.0.0.1".parse().unwrap()),
            crate::value::mac(crate::MacAddr([1, 2, 3, 4, 5, 6])),
            Bson::Binary(bson::Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![1, 2, 3],
            }),
            Bson::Binary(bson::Binary {
                subtype: BinarySubtype::Uuid,
                bytes: vec![7; 16],
            }),
            Bson::Timestamp(bson::Timestamp {
                time: 5,
                increment: 6,
            }),
            Bson::ObjectId(bson::oid::ObjectId::from_bytes([9; 12])),
            Bson::Decimal128(bson::Decimal128::from_bytes([3; 16])),
        ];
        for v in values {
            let mut out = Vec::new();
            write_element(&mut out, &v).unwrap();
            let reference = bson::serialize_to_vec(&doc! {"v": v.clone()}).unwrap();
            // reference: len(4) type 'v' 0 value 0
            let mut expected = vec![reference[4]];
            expected.extend_from_slice(&reference[7..reference.len() - 1]);
            assert_eq!(out, expected, "{v:?}");
        }
    }

    #[test]
    fn nul_keys_are_errors() {
        let mut out = Vec::new();
        assert!(write_element(&mut out, &bson::bson!({"a\0b": 1})).is_err());
    }
}
