//! DP3's magic strings in `generic_filter` (api.md §4.4).
//!
//! A string that is the value of an object key (at any depth, through objects and arrays of
//! objects) and fully matches `$$<Type>{<arg>}` is replaced by a typed value. Strings that
//! are themselves array elements stay literal strings (DP3 behaviour users rely on).

use std::net::{Ipv4Addr, Ipv6Addr};

use bson::{Bson, Document, doc};
use chrono::{NaiveDateTime, TimeZone, Utc};
use dp3_model::value::{self, MacAddr};

use crate::keys::{binary_bucket_id, pack_int};

/// Why a magic string could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MagicError(pub String);

fn err(msg: impl Into<String>) -> MagicError {
    MagicError(msg.into())
}

/// Replace every magic string in a filter document, in place.
pub fn replace_magic_strings(filter: &mut Document) -> Result<(), MagicError> {
    for (_, v) in filter.iter_mut() {
        replace_in_value(v)?;
    }
    Ok(())
}

fn replace_in_value(v: &mut Bson) -> Result<(), MagicError> {
    match v {
        Bson::String(s) => {
            if let Some((ty, arg)) = split_magic(s) {
                *v = convert(ty, arg)?;
            }
        }
        Bson::Document(d) => replace_magic_strings(d)?,
        Bson::Array(items) => {
            // Only documents inside arrays are searched; bare strings stay literal.
            for item in items {
                if let Bson::Document(d) = item {
                    replace_magic_strings(d)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `$$Type{arg}` → `(Type, arg)`.
fn split_magic(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("$$")?.strip_suffix('}')?;
    let (ty, arg) = rest.split_once('{')?;
    (!ty.is_empty() && ty.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some((ty, arg))
}

fn parse_v4(arg: &str) -> Result<Ipv4Addr, MagicError> {
    arg.parse()
        .map_err(|_| err(format!("'{arg}' is not a valid IPv4 address")))
}

fn parse_v6(arg: &str) -> Result<Ipv6Addr, MagicError> {
    arg.parse()
        .map_err(|_| err(format!("'{arg}' is not a valid IPv6 address")))
}

/// `a.b.c.d/len` → (first, last) address; host bits must be zero (Python's strict networks).
fn parse_prefix<const N: usize>(
    arg: &str,
    parse: impl Fn(&str) -> Result<[u8; N], MagicError>,
) -> Result<([u8; N], [u8; N]), MagicError> {
    let (addr, len) = arg
        .split_once('/')
        .ok_or_else(|| err(format!("'{arg}' is not a network prefix (missing '/')")))?;
    let bytes = parse(addr)?;
    let bits = N * 8;
    let len: usize = len
        .parse()
        .ok()
        .filter(|l| *l <= bits)
        .ok_or_else(|| err(format!("'{arg}' has an invalid prefix length")))?;
    let mut first = bytes;
    let mut last = bytes;
    for bit in len..bits {
        let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
        if bytes[byte] & mask != 0 {
            return Err(err(format!("'{arg}' has host bits set")));
        }
        first[byte] &= !mask;
        last[byte] |= mask;
    }
    Ok((first, last))
}

fn convert(ty: &str, arg: &str) -> Result<Bson, MagicError> {
    Ok(match ty {
        "int" => value::int(
            dp3_model::eid::parse_int_text(arg)
                .map_err(|_| err(format!("'{arg}' is not a valid integer")))?,
        ),
        "IPv4" => value::ipv4(parse_v4(arg)?),
        "IPv6" => value::ipv6(parse_v6(arg)?),
        "MAC" => value::mac(
            arg.parse::<MacAddr>()
                .map_err(|e| err(format!("'{arg}' is not a valid MAC address: {e}")))?,
        ),
        "Date" => {
            let t = NaiveDateTime::parse_from_str(arg, "%Y-%m-%dT%H:%M:%SZ").map_err(|_| {
                err(format!(
                    "'{arg}' is not a date in the format YYYY-MM-DDTHH:MM:SSZ"
                ))
            })?;
            value::time(Utc.from_utc_datetime(&t))
        }
        "DateTs" => {
            let secs: f64 = arg
                .trim()
                .parse()
                .ok()
                .filter(|f: &f64| f.is_finite())
                .ok_or_else(|| err(format!("'{arg}' is not a unix timestamp")))?;
            Bson::DateTime(bson::DateTime::from_millis((secs * 1000.0).floor() as i64))
        }
        "IPv4Prefix" => {
            let (a, b) = parse_prefix(arg, |s| parse_v4(s).map(|a| a.octets()))?;
            Bson::Document(doc! {
                "$gte": value::ipv4(a.into()), "$lte": value::ipv4(b.into())
            })
        }
        "IPv6Prefix" => {
            let (a, b) = parse_prefix(arg, |s| parse_v6(s).map(|a| a.octets()))?;
            Bson::Document(doc! {
                "$gte": value::ipv6(a.into()), "$lte": value::ipv6(b.into())
            })
        }
        "Binary_ID" => binary_id_range(arg)?,
        other => return Err(err(format!("unknown magic string type '{other}'"))),
    })
}

/// `$$Binary_ID{<eid>}`: the range of binary bucket ids of one eid (or of a prefix's
/// addresses).
fn binary_id_range(arg: &str) -> Result<Bson, MagicError> {
    let packed_range = |first: Vec<u8>, last: Vec<u8>, inclusive: bool| {
        let hi = binary_bucket_id(&last, -1);
        let mut d = doc! { "$gte": binary_bucket_id(&first, 0) };
        d.insert(if inclusive { "$lte" } else { "$lt" }, hi);
        Bson::Document(d)
    };
    let inner = match split_magic(arg) {
        Some((ty, inner_arg)) => convert(ty, inner_arg)?,
        None => value::int(
            dp3_model::eid::parse_int_text(arg)
                .map_err(|_| err(format!("'{arg}' is not a valid integer eid for Binary_ID")))?,
        ),
    };
    match inner {
        Bson::Document(range) => {
            // a prefix: from its first to its last address
            let bytes = |k: &str| match range.get(k) {
                Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
                _ => Err(err("Binary_ID prefix range is malformed")),
            };
            Ok(packed_range(bytes("$gte")?, bytes("$lte")?, true))
        }
        Bson::Binary(b) => Ok(packed_range(b.bytes.clone(), b.bytes, false)),
        Bson::Int32(_) | Bson::Int64(_) => {
            let i = value::as_int(&inner).unwrap_or_default();
            Ok(packed_range(pack_int(i), pack_int(i), false))
        }
        _ => Err(err(format!("Binary_ID does not support '{arg}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::Binary;
    use bson::spec::BinarySubtype;

    fn replaced(d: Document) -> Document {
        let mut d = d;
        replace_magic_strings(&mut d).unwrap();
        d
    }

    #[test]
    fn values_of_keys_are_replaced_array_strings_are_not() {
        let ip = value::ipv4("1.2.3.4".parse().unwrap());
        assert_eq!(
            replaced(doc! {"$or": [{"last.eid": "$$IPv4{1.2.3.4}"}]}),
            doc! {"$or": [{"last.eid": ip.clone()}]}
        );
        assert_eq!(
            replaced(doc! {"last.eid": {"$in": ["$$IPv4{1.2.3.4}"]}}),
            doc! {"last.eid": {"$in": ["$$IPv4{1.2.3.4}"]}}
        );
        assert_eq!(
            replaced(doc! {"a": {"$gt": "$$int{5}"}, "b": "$$DateTs{1609459200}"}),
            doc! {"a": {"$gt": 5}, "b": bson::DateTime::from_millis(1_609_459_200_000)}
        );
        assert_eq!(
            replaced(doc! {"d": "$$Date{2024-11-07T00:00:00Z}"}),
            doc! {"d": bson::DateTime::from_millis(1_730_937_600_000)}
        );
        assert_eq!(
            replaced(doc! {"m": "$$MAC{aa:bb:cc:dd:ee:ff}"}),
            doc! {"m": value::mac("aa:bb:cc:dd:ee:ff".parse().unwrap())}
        );
        // not a magic string: partial match
        assert_eq!(replaced(doc! {"a": "x$$int{5}"}), doc! {"a": "x$$int{5}"});
    }

    #[test]
    fn prefixes_become_ranges() {
        assert_eq!(
            replaced(doc! {"last.eid": "$$IPv4Prefix{10.0.0.0/24}"}),
            doc! {"last.eid": {
                "$gte": value::ipv4("10.0.0.0".parse().unwrap()),
                "$lte": value::ipv4("10.0.0.255".parse().unwrap()),
            }}
        );
        let mut bad = doc! {"a": "$$IPv4Prefix{10.0.0.1/24}"};
        assert!(replace_magic_strings(&mut bad).is_err());
    }

    #[test]
    fn binary_ids() {
        let bin = |b: Vec<u8>| {
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: b,
            })
        };
        assert_eq!(
            replaced(doc! {"_id": "$$Binary_ID{$$IPv4{1.2.3.4}}"}),
            doc! {"_id": {
                "$gte": bin(vec![1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]),
                "$lt": bin(vec![1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            }}
        );
        assert_eq!(
            replaced(doc! {"_id": "$$Binary_ID{128}"}),
            doc! {"_id": {
                "$gte": bin(vec![0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]),
                "$lt": bin(vec![0, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            }}
        );
    }

    #[test]
    fn bad_magic_strings_are_errors() {
        for bad in [
            "$$int{x}",
            "$$IPv4{1.2.3}",
            "$$Date{2024-11-07}",
            "$$Nope{1}",
            "$$Binary_ID{abc}",
        ] {
            let mut d = doc! {"a": bad};
            assert!(replace_magic_strings(&mut d).is_err(), "{bad}");
        }
    }
}
