//! Snapshot bucket ids (data-model.md §8.5): building, selecting all buckets of one eid,
//! and decoding the eid back.
//!
//! String eids: `"<eid>_#<unix seconds>"`. Other eids: generic Binary
//! `packed eid ‖ 8-byte big-endian signed seconds` (see [`dp3_store::keys`]).

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, doc};
use dp3_model::value::MacAddr;
use dp3_model::{Eid, EidType};

pub use dp3_store::keys::bucket_id;
use dp3_store::keys::{binary_bucket_id, packed_eid};

/// The `_id` condition selecting every bucket of `eid`.
///
/// String eids use the anchored regex `^<escaped eid>_#-?[0-9]+$` rather than DP3's prefix
/// regex `^<eid>_#` (which also matches buckets of an eid starting with `<eid>_#`, §9.44);
/// the literal prefix still lets MongoDB use the `_id` index. Binary ids use the inclusive
/// range `packed‖00…00 ..= packed‖FF…FF`, correct because MongoDB orders Binary by length
/// first (so other eids' buckets of a different packed length never fall inside).
pub fn eid_buckets(eid: &Eid) -> Bson {
    match eid {
        Eid::String(s) => Bson::Document(doc! {"$regex": string_bucket_pattern(s)}),
        other => {
            let packed = packed_eid(other).unwrap_or_default();
            let (lo, hi) = binary_range(&packed);
            Bson::Document(doc! {"$gte": lo, "$lte": hi})
        }
    }
}

/// The anchored regex matching the bucket ids of string eid `s`.
pub fn string_bucket_pattern(s: &str) -> String {
    format!("^{}_#-?[0-9]+$", regex::escape(s))
}

/// `{_id: <eid_buckets>}`.
pub fn eid_filter(eid: &Eid) -> Document {
    doc! {"_id": eid_buckets(eid)}
}

fn binary_range(packed: &[u8]) -> (Bson, Bson) {
    let mut lo = packed.to_vec();
    lo.extend_from_slice(&[0u8; 8]);
    let mut hi = packed.to_vec();
    hi.extend_from_slice(&[0xffu8; 8]);
    let bin = |bytes| {
        Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes,
        })
    };
    (bin(lo), bin(hi))
}

/// The bucket id of `eid` created at `secs` (same as [`bucket_id`], re-exported for
/// symmetry with [`decode_bucket_id`]).
pub fn make_bucket_id(eid: &Eid, secs: i64) -> Bson {
    match eid {
        Eid::String(_) => bucket_id(eid, secs),
        other => binary_bucket_id(&packed_eid(other).unwrap_or_default(), secs),
    }
}

/// Decode `(eid, bucket creation seconds)` from a bucket id of an entity type whose ids are
/// of type `ty`. String ids split at the **last** `_#` like DP3.
pub fn decode_bucket_id(id: &Bson, ty: EidType) -> Option<(Eid, i64)> {
    match (id, ty) {
        (Bson::String(s), EidType::String) => {
            let (eid, secs) = s.rsplit_once("_#")?;
            Some((Eid::String(eid.to_owned()), secs.parse().ok()?))
        }
        (
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes,
            }),
            ty,
        ) if ty != EidType::String && bytes.len() > 8 => {
            let (packed, secs) = bytes.split_at(bytes.len() - 8);
            let secs = i64::from_be_bytes(secs.try_into().ok()?);
            let eid = match ty {
                EidType::Int => Eid::Int(unpack_int(packed)?),
                EidType::Ipv4 => Eid::Ipv4(<[u8; 4]>::try_from(packed).ok()?.into()),
                EidType::Ipv6 => Eid::Ipv6(<[u8; 16]>::try_from(packed).ok()?.into()),
                EidType::Mac => Eid::Mac(MacAddr(packed.try_into().ok()?)),
                EidType::String => return None,
            };
            Some((eid, secs))
        }
        _ => None,
    }
}

/// Inverse of [`dp3_store::keys::pack_int`]: big-endian two's complement of 1–8 bytes.
pub fn unpack_int(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 8];
    buf[8 - bytes.len()..].copy_from_slice(bytes);
    Some(i64::from_be_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dp3_store::keys::pack_int;

    #[test]
    fn string_bucket_ids_round_trip() {
        let e = Eid::String("a_#b".into());
        let id = make_bucket_id(&e, 1_700_000_000);
        assert_eq!(id, Bson::String("a_#b_#1700000000".into()));
        assert_eq!(
            decode_bucket_id(&id, EidType::String),
            Some((e, 1_700_000_000))
        );
        assert_eq!(
            decode_bucket_id(&Bson::String("nohash".into()), EidType::String),
            None
        );
    }

    #[test]
    fn binary_bucket_ids_round_trip() {
        let eids = [
            Eid::Int(0),
            Eid::Int(-129),
            Eid::Int(128),
            Eid::Int(i64::MIN),
            Eid::Int(i64::MAX),
            Eid::Ipv4("10.0.0.7".parse().expect("ip")),
            Eid::Ipv6("2001:db8::1".parse().expect("ip")),
            Eid::Mac(MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])),
        ];
        for e in eids {
            for secs in [0, 1_700_000_000, -5] {
                let id = make_bucket_id(&e, secs);
                assert_eq!(
                    decode_bucket_id(&id, e.eid_type()),
                    Some((e.clone(), secs)),
                    "{e:?} {secs}"
                );
            }
        }
        // Known encoding: int 128 at second 1.
        let Bson::Binary(b) = make_bucket_id(&Eid::Int(128), 1) else {
            panic!("binary expected")
        };
        assert_eq!(b.bytes, vec![0, 0x80, 0, 0, 0, 0, 0, 0, 0, 1]);
        // Wrong id type for the entity type: not decodable.
        assert_eq!(
            decode_bucket_id(&Bson::String("a_#1".into()), EidType::Int),
            None
        );
        assert_eq!(
            decode_bucket_id(&make_bucket_id(&Eid::Int(1), 1), EidType::Ipv4),
            None
        );
    }

    #[test]
    fn unpack_inverts_pack() {
        for i in [0, 1, 127, 128, -1, -128, -129, 65535, i64::MIN, i64::MAX] {
            assert_eq!(unpack_int(&pack_int(i)), Some(i), "{i}");
        }
        assert_eq!(unpack_int(&[]), None);
        assert_eq!(unpack_int(&[0; 9]), None);
    }

    #[test]
    fn string_selector_is_anchored_and_escaped() {
        assert_eq!(
            eid_buckets(&Eid::String("a.b".into())),
            Bson::Document(doc! {"$regex": r"^a\.b_#-?[0-9]+$"})
        );
        let re = regex::Regex::new(&string_bucket_pattern("a.b")).expect("valid regex");
        assert!(re.is_match("a.b_#1700000000"));
        // DP3's prefix regex would also match the buckets of eid "a.b_#x".
        assert!(!re.is_match("a.b_#x_#1700000000"));
        assert!(!re.is_match("aXb_#1"));
    }

    #[test]
    fn binary_selector_covers_all_seconds_of_one_eid() {
        let Bson::Document(d) = eid_buckets(&Eid::Int(128)) else {
            panic!("range expected")
        };
        let (Some(Bson::Binary(lo)), Some(Bson::Binary(hi))) = (d.get("$gte"), d.get("$lte"))
        else {
            panic!("binary bounds expected: {d}")
        };
        assert_eq!(lo.bytes, [vec![0, 0x80], vec![0; 8]].concat());
        assert_eq!(hi.bytes, [vec![0, 0x80], vec![0xff; 8]].concat());
        assert_eq!(
            eid_filter(&Eid::Int(128)).get("_id"),
            Some(&Bson::Document(d))
        );
    }
}
