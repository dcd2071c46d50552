//! Entity ids. An eid is typed by its entity type's `id_data_type` (data-model.md §2.2).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use bson::Bson;
use serde::{Deserialize, Serialize};

use crate::hash::entity_hash;
use crate::value::{self, MacAddr};

/// The data type of an entity type's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EidType {
    #[default]
    String,
    Int,
    Ipv4,
    Ipv6,
    Mac,
}

impl EidType {
    pub const ALL: [EidType; 5] = [
        EidType::String,
        EidType::Int,
        EidType::Ipv4,
        EidType::Ipv6,
        EidType::Mac,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EidType::String => "string",
            EidType::Int => "int",
            EidType::Ipv4 => "ipv4",
            EidType::Ipv6 => "ipv6",
            EidType::Mac => "mac",
        }
    }

    pub fn from_name(s: &str) -> Option<EidType> {
        EidType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// DP3's `type_info` string of this id type (stored in the schema document, §8.8).
    pub fn type_info(self) -> &'static str {
        match self {
            EidType::String => "<class 'str'>",
            EidType::Int => "<class 'int'>",
            EidType::Ipv4 => "<class 'ipaddress.IPv4Address'>",
            EidType::Ipv6 => "<class 'ipaddress.IPv6Address'>",
            EidType::Mac => "<class 'dp3.common.mac_address.MACAddress'>",
        }
    }
}

/// A typed entity id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Eid {
    String(String),
    Int(i64),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    Mac(MacAddr),
}

/// Why a text could not be parsed as an eid of a given type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct EidParseError {
    /// Pydantic-style error type (`int_parsing`, `ip_v4_address`, ...).
    pub kind: &'static str,
    pub msg: String,
}

impl EidParseError {
    fn new(kind: &'static str, msg: impl Into<String>) -> Self {
        EidParseError {
            kind,
            msg: msg.into(),
        }
    }
}

impl Eid {
    pub fn eid_type(&self) -> EidType {
        match self {
            Eid::String(_) => EidType::String,
            Eid::Int(_) => EidType::Int,
            Eid::Ipv4(_) => EidType::Ipv4,
            Eid::Ipv6(_) => EidType::Ipv6,
            Eid::Mac(_) => EidType::Mac,
        }
    }

    /// Parse an eid from text (URL path/query, link-cache keys, bucket ids). Lax like DP3's
    /// validator for text input: ints accept surrounding whitespace and `_` separators.
    pub fn parse(ty: EidType, s: &str) -> Result<Eid, EidParseError> {
        match ty {
            EidType::String => Ok(Eid::String(s.to_owned())),
            EidType::Int => parse_int_text(s).map(Eid::Int),
            EidType::Ipv4 => parse_ipv4(s).map(Eid::Ipv4),
            EidType::Ipv6 => parse_ipv6(s).map(Eid::Ipv6),
            EidType::Mac => s
                .parse::<MacAddr>()
                .map(Eid::Mac)
                .map_err(|e| EidParseError::new("value_error", e.0)),
        }
    }

    /// Validate an eid given as JSON (datapoint `id`, task `eid`).
    pub fn from_json(ty: EidType, j: &serde_json::Value) -> Result<Eid, EidParseError> {
        use serde_json::Value as J;
        match (ty, j) {
            (_, J::String(s)) => Eid::parse(ty, s),
            (EidType::String, _) => Err(EidParseError::new(
                "string_type",
                "Input should be a valid string",
            )),
            (EidType::Int, J::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    Ok(Eid::Int(i))
                } else if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                {
                    Ok(Eid::Int(f as i64))
                } else if n.as_u64().is_some() {
                    Err(EidParseError::new(
                        "int_parsing",
                        "Input should be an integer within the signed 64-bit range",
                    ))
                } else {
                    Err(EidParseError::new(
                        "int_from_float",
                        "Input should be a valid integer, got a number with a fractional part",
                    ))
                }
            }
            (EidType::Int, J::Bool(b)) => Ok(Eid::Int(i64::from(*b))),
            (EidType::Ipv4, J::Number(n)) => n
                .as_u64()
                .and_then(|u| u32::try_from(u).ok())
                .map(|u| Eid::Ipv4(Ipv4Addr::from(u)))
                .ok_or_else(|| {
                    EidParseError::new("ip_v4_address", "Input is not a valid IPv4 address")
                }),
            (EidType::Ipv6, J::Number(n)) => n
                .as_u64()
                .map(|u| Eid::Ipv6(Ipv6Addr::from(u128::from(u))))
                .ok_or_else(|| {
                    EidParseError::new("ip_v6_address", "Input is not a valid IPv6 address")
                }),
            (EidType::Int, _) => Err(EidParseError::new(
                "int_type",
                "Input should be a valid integer",
            )),
            (EidType::Ipv4, _) => Err(EidParseError::new(
                "ip_v4_address",
                "Input is not a valid IPv4 address",
            )),
            (EidType::Ipv6, _) => Err(EidParseError::new(
                "ip_v6_address",
                "Input is not a valid IPv6 address",
            )),
            (EidType::Mac, _) => Err(EidParseError::new(
                "value_error",
                "Value error, MAC address must be a string",
            )),
        }
    }

    /// The stored form (`_id` of the master record, `eid` of snapshots, link `eid`s).
    pub fn to_bson(&self) -> Bson {
        match self {
            Eid::String(s) => Bson::String(s.clone()),
            Eid::Int(i) => value::int(*i),
            Eid::Ipv4(a) => value::ipv4(*a),
            Eid::Ipv6(a) => value::ipv6(*a),
            Eid::Mac(m) => value::mac(*m),
        }
    }

    /// Read a stored eid back.
    pub fn from_bson(v: &Bson) -> Option<Eid> {
        match v {
            Bson::String(s) => Some(Eid::String(s.clone())),
            Bson::Int32(i) => Some(Eid::Int(i64::from(*i))),
            Bson::Int64(i) => Some(Eid::Int(*i)),
            _ => value::as_ipv4(v)
                .map(Eid::Ipv4)
                .or_else(|| value::as_ipv6(v).map(Eid::Ipv6))
                .or_else(|| value::as_mac(v).map(Eid::Mac)),
        }
    }

    /// The id as JSON for API responses (ints as numbers, everything else as strings).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Eid::Int(i) => serde_json::Value::from(*i),
            other => serde_json::Value::String(other.to_string()),
        }
    }

    /// DP3's partition hash of `"<etype>:<eid>"`.
    pub fn hash(&self, etype: &str) -> u16 {
        entity_hash(etype, &self.to_string())
    }
}

/// The canonical string form, identical to Python's `str()` of the typed eid: used for routing
/// keys, link-cache keys, string bucket ids and archive exports.
impl fmt::Display for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Eid::String(s) => f.write_str(s),
            Eid::Int(i) => write!(f, "{i}"),
            Eid::Ipv4(a) => write!(f, "{a}"),
            Eid::Ipv6(a) => f.write_str(&value::ipv6_to_string(a)),
            Eid::Mac(m) => write!(f, "{m}"),
        }
    }
}

/// Parse an integer the way pydantic's lax mode parses text: surrounding whitespace allowed,
/// `_` between digits allowed, an optional sign, and a `.0`-only fraction.
pub fn parse_int_text(s: &str) -> Result<i64, EidParseError> {
    let err = || {
        EidParseError::new(
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        )
    };
    let t = s.trim();
    let t = match t.split_once('.') {
        Some((int_part, frac)) if !frac.is_empty() && frac.bytes().all(|c| c == b'0') => int_part,
        Some(_) => return Err(err()),
        None => t,
    };
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    {
        return Err(err());
    }
    let cleaned: String = digits.chars().filter(|c| *c != '_').collect();
    let magnitude: i128 = cleaned.parse().map_err(|_| {
        EidParseError::new(
            "int_parsing",
            "Input should be an integer within the signed 64-bit range",
        )
    })?;
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).map_err(|_| {
        EidParseError::new(
            "int_parsing",
            "Input should be an integer within the signed 64-bit range",
        )
    })
}

/// Strict dotted-quad IPv4 (no leading zeros, no whitespace), as Python's `ipaddress`.
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, EidParseError> {
    s.parse::<Ipv4Addr>()
        .map_err(|_| EidParseError::new("ip_v4_address", "Input is not a valid IPv4 address"))
}

/// Any textual IPv6 form. A zone id (`fe80::1%eth0`) is accepted and dropped: it cannot be
/// stored (DP3 loses it in storage too), so keeping it only in memory would make the routing
/// key differ between the first task and every later one.
pub fn parse_ipv6(s: &str) -> Result<Ipv6Addr, EidParseError> {
    let addr = s
        .split_once('%')
        .map_or(s, |(a, zone)| if zone.is_empty() { s } else { a });
    addr.parse::<Ipv6Addr>()
        .map_err(|_| EidParseError::new("ip_v6_address", "Input is not a valid IPv6 address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn int_text_parsing_is_lax_like_pydantic() {
        assert_eq!(parse_int_text("12").unwrap(), 12);
        assert_eq!(parse_int_text("0012").unwrap(), 12);
        assert_eq!(parse_int_text(" 12 ").unwrap(), 12);
        assert_eq!(parse_int_text("1_2").unwrap(), 12);
        assert_eq!(parse_int_text("5.0").unwrap(), 5);
        assert_eq!(parse_int_text("-7").unwrap(), -7);
        assert!(parse_int_text("1.5").is_err());
        assert!(parse_int_text("abc").is_err());
        assert!(parse_int_text("").is_err());
        assert!(parse_int_text("_1").is_err());
        assert!(parse_int_text("99999999999999999999").is_err());
    }

    #[test]
    fn eids_from_json() {
        assert_eq!(
            Eid::from_json(EidType::Int, &json!(12.0)).unwrap(),
            Eid::Int(12)
        );
        assert!(Eid::from_json(EidType::Int, &json!(12.5)).is_err());
        assert!(Eid::from_json(EidType::String, &json!(5)).is_err());
        assert_eq!(
            Eid::from_json(EidType::Ipv4, &json!(16909060)).unwrap(),
            Eid::Ipv4("1.2.3.4".parse().unwrap())
        );
        assert!(Eid::from_json(EidType::Ipv4, &json!("010.1.1.1")).is_err());
        assert_eq!(
            Eid::from_json(EidType::Mac, &json!("AA-BB-CC-DD-EE-FF"))
                .unwrap()
                .to_string(),
            "aa:bb:cc:dd:ee:ff"
        );
    }

    #[test]
    fn canonical_keys_and_hashes() {
        let ip = Eid::parse(EidType::Ipv4, "1.2.3.4").unwrap();
        assert_eq!(ip.hash("ip"), 32693);
        let v6 = Eid::parse(EidType::Ipv6, "2001:DB8::1").unwrap();
        assert_eq!(v6.to_string(), "2001:db8::1");
        assert_eq!(v6.hash("ip6"), 41862);
        let mac = Eid::parse(EidType::Mac, "aa:bb:cc:dd:ee:ff").unwrap();
        assert_eq!(mac.hash("dev"), 767);
        assert_eq!(Eid::parse(EidType::Int, "0012").unwrap().hash("A"), 32236);
        let zoned = Eid::parse(EidType::Ipv6, "fe80::1%eth0").unwrap();
        assert_eq!(zoned.to_string(), "fe80::1");
    }

    #[test]
    fn bson_round_trip() {
        for e in [
            Eid::String("x".into()),
            Eid::Int(-5),
            Eid::Int(1 << 40),
            Eid::Ipv4("1.2.3.4".parse().unwrap()),
            Eid::Ipv6("::1".parse().unwrap()),
            Eid::Mac(MacAddr([1, 2, 3, 4, 5, 6])),
        ] {
            assert_eq!(Eid::from_bson(&e.to_bson()), Some(e));
        }
    }
}
