//! Byte encodings of entity ids: the store's ordered key, DP3's packed eid and snapshot
//! bucket ids (data-model.md §8.5).
//!
//! **Eid key** (primary-key column of every per-entity table): one tag byte, then
//! * string `0x01` ‖ UTF-8 bytes,
//! * int `0x02` ‖ 8-byte big-endian with the sign bit flipped (so negatives sort first),
//! * IPv4 `0x03` ‖ 4 bytes, IPv6 `0x04` ‖ 16 bytes, MAC `0x05` ‖ 6 bytes.
//!
//! Within one entity type (one id type) keys sort like the typed eids (strings bytewise,
//! ints numerically, addresses by octets) and decode back without knowing the type.

use bson::spec::BinarySubtype;
use bson::{Binary, Bson};
use dp3_model::Eid;
use dp3_model::value::MacAddr;

const TAG_STRING: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_IPV4: u8 = 3;
const TAG_IPV6: u8 = 4;
const TAG_MAC: u8 = 5;

/// The ordered byte key of an eid.
pub fn eid_key(eid: &Eid) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    match eid {
        Eid::String(s) => {
            out.push(TAG_STRING);
            out.extend_from_slice(s.as_bytes());
        }
        Eid::Int(i) => {
            out.push(TAG_INT);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Eid::Ipv4(a) => {
            out.push(TAG_IPV4);
            out.extend_from_slice(&a.octets());
        }
        Eid::Ipv6(a) => {
            out.push(TAG_IPV6);
            out.extend_from_slice(&a.octets());
        }
        Eid::Mac(m) => {
            out.push(TAG_MAC);
            out.extend_from_slice(&m.0);
        }
    }
    out
}

/// Decode a key written by [`eid_key`].
pub fn eid_from_key(key: &[u8]) -> Option<Eid> {
    let (tag, rest) = key.split_first()?;
    Some(match *tag {
        TAG_STRING => Eid::String(String::from_utf8(rest.to_vec()).ok()?),
        TAG_INT => Eid::Int((u64::from_be_bytes(rest.try_into().ok()?) ^ (1 << 63)) as i64),
        TAG_IPV4 => Eid::Ipv4(<[u8; 4]>::try_from(rest).ok()?.into()),
        TAG_IPV6 => Eid::Ipv6(<[u8; 16]>::try_from(rest).ok()?.into()),
        TAG_MAC => Eid::Mac(MacAddr(rest.try_into().ok()?)),
        _ => return None,
    })
}

/// Python's `int.to_bytes((x.bit_length() + 8) // 8, "big", signed=True)`, DP3's packing of
/// int eids in binary bucket ids (`0`→`00`, `128`→`0080`, `-1`→`ff`, `-129`→`ff7f`).
pub fn pack_int(i: i64) -> Vec<u8> {
    let bit_length = 64 - i.unsigned_abs().leading_zeros() as usize;
    let len = ((bit_length + 8) / 8).min(8);
    i.to_be_bytes()[8 - len..].to_vec()
}

/// DP3's packed eid bytes for binary bucket ids; `None` for string eids.
pub fn packed_eid(eid: &Eid) -> Option<Vec<u8>> {
    match eid {
        Eid::String(_) => None,
        Eid::Int(i) => Some(pack_int(*i)),
        Eid::Ipv4(a) => Some(a.octets().to_vec()),
        Eid::Ipv6(a) => Some(a.octets().to_vec()),
        Eid::Mac(m) => Some(m.0.to_vec()),
    }
}

/// `packed ‖ 8-byte big-endian signed seconds` as a generic (subtype 0) binary.
pub fn binary_bucket_id(packed: &[u8], secs: i64) -> Bson {
    let mut bytes = packed.to_vec();
    bytes.extend_from_slice(&secs.to_be_bytes());
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    })
}

/// DP3's snapshot bucket `_id` of an entity whose bucket was created at `secs`.
pub fn bucket_id(eid: &Eid, secs: i64) -> Bson {
    match eid {
        Eid::String(s) => Bson::String(format!("{s}_#{secs}")),
        other => binary_bucket_id(&packed_eid(other).unwrap_or_default(), secs),
    }
}

/// A byte string that sorts like [`bucket_id`] values sort in MongoDB (strings bytewise;
/// binaries length first, then bytes), used as an indexed column for the default list order.
pub fn bucket_sort_key(eid: &Eid, secs: i64) -> Vec<u8> {
    match bucket_id(eid, secs) {
        Bson::String(s) => s.into_bytes(),
        Bson::Binary(b) => {
            let mut out = Vec::with_capacity(b.bytes.len() + 1);
            out.push(u8::try_from(b.bytes.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&b.bytes);
            out
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_like_eids() {
        let eids = [
            Eid::Int(i64::MIN),
            Eid::Int(-1),
            Eid::Int(0),
            Eid::Int(5),
            Eid::Int(i64::MAX),
        ];
        for w in eids.windows(2) {
            assert!(eid_key(&w[0]) < eid_key(&w[1]));
        }
        for e in eids.iter().chain(&[
            Eid::String("a_#b".into()),
            Eid::Ipv4("1.2.3.4".parse().unwrap()),
            Eid::Ipv6("::1".parse().unwrap()),
            Eid::Mac(MacAddr([1, 2, 3, 4, 5, 6])),
        ]) {
            assert_eq!(eid_from_key(&eid_key(e)).as_ref(), Some(e));
        }
        assert_eq!(eid_from_key(&[9, 1]), None);
        assert_eq!(eid_from_key(&[TAG_INT, 1]), None);
    }

    proptest::proptest! {
        #[test]
        fn int_keys_sort_numerically(a: i64, b: i64) {
            proptest::prop_assert_eq!(eid_key(&Eid::Int(a)).cmp(&eid_key(&Eid::Int(b))), a.cmp(&b));
            proptest::prop_assert_eq!(eid_from_key(&eid_key(&Eid::Int(a))), Some(Eid::Int(a)));
        }

        #[test]
        fn string_keys_round_trip_and_sort_bytewise(a: String, b: String) {
            let (ka, kb) = (eid_key(&Eid::String(a.clone())), eid_key(&Eid::String(b.clone())));
            proptest::prop_assert_eq!(ka.cmp(&kb), a.as_bytes().cmp(b.as_bytes()));
            proptest::prop_assert_eq!(eid_from_key(&ka), Some(Eid::String(a)));
        }

        #[test]
        fn packed_ints_decode_back(i: i64) {
            let p = pack_int(i);
            // sign-extend big-endian two's complement
            let mut buf = if p.first().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
            buf[8 - p.len()..].copy_from_slice(&p);
            proptest::prop_assert_eq!(i64::from_be_bytes(buf), i);
        }
    }

    #[test]
    fn int_packing_matches_dp3() {
        assert_eq!(pack_int(0), vec![0x00]);
        assert_eq!(pack_int(127), vec![0x7f]);
        assert_eq!(pack_int(128), vec![0x00, 0x80]);
        assert_eq!(pack_int(-1), vec![0xff]);
        assert_eq!(pack_int(-129), vec![0xff, 0x7f]);
        assert_eq!(pack_int(i64::MIN).len(), 8);
    }

    #[test]
    fn bucket_ids() {
        assert_eq!(
            bucket_id(&Eid::String("bus-1".into()), 1700000000),
            Bson::String("bus-1_#1700000000".into())
        );
        let Bson::Binary(b) = bucket_id(&Eid::Int(128), 1) else {
            panic!("binary expected")
        };
        assert_eq!(b.bytes, vec![0, 0x80, 0, 0, 0, 0, 0, 0, 0, 1]);
        // shorter packed eids sort first, as in MongoDB
        assert!(bucket_sort_key(&Eid::Int(1000), 5) > bucket_sort_key(&Eid::Int(-1), 9));
    }
}
