//! Values. Every attribute value, master record and snapshot is a BSON value
//! ([`bson::Bson`] / [`bson::Document`]): BSON is DP3's storage format, it is what crosses the
//! plugin boundary, and it carries everything DP3 values need (int32/int64/double, datetimes,
//! binary). IP and MAC addresses use DP3's user-defined binary subtypes so stored data stays
//! compatible with existing DP3 MongoDB databases (data-model.md §8.2).
//!
//! This module adds the typed constructors/accessors for those subtypes, DP3's JSON rendering
//! of values for the HTTP API, and the datetime formats DP3 uses.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::Value as Json;

/// A value as stored and passed around: a BSON value.
pub type Value = Bson;

/// BSON binary subtype DP3 uses for IPv4 addresses (4 bytes).
pub const SUBTYPE_IPV4: u8 = 0x81;
/// BSON binary subtype DP3 uses for IPv6 addresses (16 bytes).
pub const SUBTYPE_IPV6: u8 = 0x82;
/// BSON binary subtype DP3 uses for MAC addresses (6 bytes).
pub const SUBTYPE_MAC: u8 = 0x83;

/// A 48-bit MAC address, displayed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// Why a MAC address string was rejected (messages follow DP3's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `xx:xx:xx:xx:xx:xx` or `xx-xx-xx-xx-xx-xx` (one separator used consistently,
    /// hex digits of any case), exactly 17 characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 17 {
            return Err(MacParseError(format!(
                "Invalid MAC address length, {} != 17",
                s.chars().count()
            )));
        }
        let sep = bytes[2];
        if sep != b':' && sep != b'-' {
            return Err(MacParseError(
                "Invalid MAC address format, expected separator ':' or '-'".into(),
            ));
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            let pos = i * 3;
            if i > 0 && bytes[pos - 1] != sep {
                return Err(MacParseError(format!(
                    "Invalid MAC address format at pos {}, expected separator '{}' but got '{}'",
                    pos - 1,
                    sep as char,
                    bytes[pos - 1] as char
                )));
            }
            let hex = &s[pos..pos + 2];
            *byte = u8::from_str_radix(hex, 16)
                .map_err(|_| MacParseError(format!("invalid hex digits '{hex}' in MAC address")))?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(MacParseError(format!(
                    "invalid hex digits '{hex}' in MAC address"
                )));
            }
        }
        Ok(MacAddr(out))
    }
}

fn binary(subtype: u8, bytes: Vec<u8>) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::UserDefined(subtype),
        bytes,
    })
}

/// An IPv4 address as DP3 stores it.
pub fn ipv4(addr: Ipv4Addr) -> Bson {
    binary(SUBTYPE_IPV4, addr.octets().to_vec())
}

/// An IPv6 address as DP3 stores it.
pub fn ipv6(addr: Ipv6Addr) -> Bson {
    binary(SUBTYPE_IPV6, addr.octets().to_vec())
}

/// A MAC address as DP3 stores it.
pub fn mac(addr: MacAddr) -> Bson {
    binary(SUBTYPE_MAC, addr.0.to_vec())
}

/// A datetime as stored (BSON dates have millisecond precision).
pub fn time(t: DateTime<Utc>) -> Bson {
    Bson::DateTime(bson::DateTime::from_millis(t.timestamp_millis()))
}

fn user_binary(v: &Bson, subtype: u8) -> Option<&[u8]> {
    match v {
        Bson::Binary(Binary {
            subtype: BinarySubtype::UserDefined(s),
            bytes,
        }) if *s == subtype => Some(bytes),
        _ => None,
    }
}

/// The IPv4 address stored in `v`, if it is one.
pub fn as_ipv4(v: &Bson) -> Option<Ipv4Addr> {
    let b: [u8; 4] = user_binary(v, SUBTYPE_IPV4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// The IPv6 address stored in `v`, if it is one.
pub fn as_ipv6(v: &Bson) -> Option<Ipv6Addr> {
    let b: [u8; 16] = user_binary(v, SUBTYPE_IPV6)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// The MAC address stored in `v`, if it is one.
pub fn as_mac(v: &Bson) -> Option<MacAddr> {
    let b: [u8; 6] = user_binary(v, SUBTYPE_MAC)?.try_into().ok()?;
    Some(MacAddr(b))
}

/// The datetime stored in `v`, if it is one.
pub fn as_time(v: &Bson) -> Option<DateTime<Utc>> {
    match v {
        Bson::DateTime(d) => Utc.timestamp_millis_opt(d.timestamp_millis()).single(),
        _ => None,
    }
}

/// Render an IPv6 address the way Python's `ipaddress` does: compressed lower-case, with
/// IPv4-mapped addresses in hex groups (`::ffff:102:304`, where Rust prints `::ffff:1.2.3.4`).
pub fn ipv6_to_string(addr: &Ipv6Addr) -> String {
    let s = addr.to_string();
    if !s.contains('.') {
        return s;
    }
    // Rust renders IPv4-mapped (and IPv4-compatible) addresses with a dotted tail; rebuild
    // the compressed hex form by hand.
    let segs = addr.segments();
    // find the longest run of zero segments (length >= 2), first one wins on ties
    let (mut best_start, mut best_len) = (usize::MAX, 0usize);
    let mut i = 0;
    while i < 8 {
        if segs[i] == 0 {
            let start = i;
            while i < 8 && segs[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                best_start = start;
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    let hex = |r: &[u16]| {
        r.iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    if best_len < 2 {
        return hex(&segs);
    }
    format!(
        "{}::{}",
        hex(&segs[..best_start]),
        hex(&segs[best_start + best_len..])
    )
}

/// Format a UTC datetime as DP3's API does: `2026-11-27T17:49:27Z`, with a 6-digit fraction
/// only when it is non-zero (`2026-11-27T17:49:27.645000Z`).
pub fn format_api_datetime(t: &DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

/// Render a stored value as DP3's API renders it in JSON: datetimes as `…Z` strings, IP/MAC
/// binaries as their canonical strings, NaN/Inf as `null`, other binaries as base64-free
/// lists of bytes are not produced by DP3 (generic binaries render as hex strings here).
pub fn to_api_json(v: &Bson) -> Json {
    match v {
        Bson::Null | Bson::Undefined => Json::Null,
        Bson::Boolean(b) => Json::Bool(*b),
        Bson::Int32(i) => Json::from(*i),
        Bson::Int64(i) => Json::from(*i),
        Bson::Double(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Bson::String(s) => Json::String(s.clone()),
        Bson::Array(a) => Json::Array(a.iter().map(to_api_json).collect()),
        Bson::Document(d) => Json::Object(doc_to_api_json(d)),
        Bson::DateTime(_) => match as_time(v) {
            Some(t) => Json::String(format_api_datetime(&t)),
            None => Json::Null,
        },
        Bson::Binary(b) => {
            if let Some(a) = as_ipv4(v) {
                Json::String(a.to_string())
            } else if let Some(a) = as_ipv6(v) {
                Json::String(ipv6_to_string(&a))
            } else if let Some(a) = as_mac(v) {
                Json::String(a.to_string())
            } else {
                Json::String(b.bytes.iter().map(|x| format!("{x:02x}")).collect())
            }
        }
        Bson::ObjectId(o) => Json::String(o.to_hex()),
        Bson::Decimal128(d) => Json::String(d.to_string()),
        other => Json::String(other.to_string()),
    }
}

/// [`to_api_json`] for a whole document.
pub fn doc_to_api_json(d: &Document) -> serde_json::Map<String, Json> {
    d.iter().map(|(k, v)| (k.clone(), to_api_json(v))).collect()
}

/// Convert untyped JSON (e.g. a `json`/`special` attribute value) to BSON: integers become
/// int32 when they fit, else int64; integers beyond 64 bits become doubles.
pub fn json_to_bson(j: &Json) -> Bson {
    match j {
        Json::Null => Bson::Null,
        Json::Bool(b) => Bson::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                int(i)
            } else if let Some(u) = n.as_u64() {
                Bson::Double(u as f64)
            } else {
                Bson::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Bson::String(s.clone()),
        Json::Array(a) => Bson::Array(a.iter().map(json_to_bson).collect()),
        Json::Object(o) => Bson::Document(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_bson(v)))
                .collect(),
        ),
    }
}

/// An integer as DP3 stores it: int32 when it fits, else int64.
pub fn int(i: i64) -> Bson {
    match i32::try_from(i) {
        Ok(small) => Bson::Int32(small),
        Err(_) => Bson::Int64(i),
    }
}

/// The integer stored in `v` (int32 or int64).
pub fn as_int(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    }
}

/// Numeric value of `v` as f64 (ints and doubles).
pub fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(f) => Some(*f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_display() {
        let m: MacAddr = "AA-BB-cc-dd-ee-0F".parse().unwrap();
        assert_eq!(m.to_string(), "aa:bb:cc:dd:ee:0f");
        assert!("aa:bb:cc:dd:ee".parse::<MacAddr>().is_err());
        assert!("aa:bb:cc:dd:ee-ff".parse::<MacAddr>().is_err());
        assert!("aa.bb.cc.dd.ee.ff".parse::<MacAddr>().is_err());
        assert!("aa:bb:cc:dd:ee:0x".parse::<MacAddr>().is_err());
        assert!("aa:bb:cc:dd:ee:+f".parse::<MacAddr>().is_err());
    }

    #[test]
    fn ipv6_rendering_matches_python() {
        let p = |s: &str| ipv6_to_string(&s.parse::<Ipv6Addr>().unwrap());
        assert_eq!(p("::ffff:1.2.3.4"), "::ffff:102:304");
        assert_eq!(p("2001:DB8:0:0:0:0:0:1"), "2001:db8::1");
        assert_eq!(p("::1"), "::1");
        assert_eq!(p("::1.2.3.4"), "::102:304");
        assert_eq!(p("1:0:0:2:0:0:0:3"), "1:0:0:2::3");
    }

    #[test]
    fn typed_binaries_round_trip() {
        let a: Ipv4Addr = "10.0.0.1".parse().unwrap();
        assert_eq!(as_ipv4(&ipv4(a)), Some(a));
        assert_eq!(as_ipv6(&ipv4(a)), None);
        let m = MacAddr([1, 2, 3, 4, 5, 6]);
        assert_eq!(as_mac(&mac(m)), Some(m));
        assert_eq!(
            to_api_json(&mac(m)),
            Json::String("01:02:03:04:05:06".into())
        );
    }

    #[test]
    fn api_datetimes() {
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 17, 49, 27).unwrap();
        assert_eq!(format_api_datetime(&t), "2026-11-27T17:49:27Z");
        let t2 = t + chrono::TimeDelta::milliseconds(645);
        assert_eq!(format_api_datetime(&t2), "2026-11-27T17:49:27.645000Z");
    }

    #[test]
    fn ints_pick_the_smallest_width() {
        assert_eq!(int(5), Bson::Int32(5));
        assert_eq!(int(1 << 40), Bson::Int64(1 << 40));
    }
}
