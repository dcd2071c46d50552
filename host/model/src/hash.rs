//! DP3's partition hash: `HASH(s)` = the last two bytes of `MD5(utf8(s))`, read big-endian.
//!
//! It routes tasks to workers (`HASH("<etype>:<eid>") mod N`) and is stored in every master
//! record as `#hash`, so it must stay byte-identical with DP3 for existing databases to work.

use md5::{Digest, Md5};

/// `int(md5(s).hexdigest()[-4:], 16)`, a value in `0..=65535`.
pub fn dp3_hash(s: &str) -> u16 {
    let digest = Md5::digest(s.as_bytes());
    u16::from_be_bytes([digest[14], digest[15]])
}

/// The hash of an entity key `"<etype>:<canonical eid>"`.
pub fn entity_hash(etype: &str, eid_canonical: &str) -> u16 {
    let mut key = String::with_capacity(etype.len() + 1 + eid_canonical.len());
    key.push_str(etype);
    key.push(':');
    key.push_str(eid_canonical);
    dp3_hash(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values verified against DP3's Python code (data-model.md §7.6, core.md §1.5).
    #[test]
    fn matches_dp3_reference_values() {
        assert_eq!(dp3_hash("ip:192.168.0.1"), 50631);
        assert_eq!(dp3_hash("ip:1.2.3.4"), 32693);
        assert_eq!(dp3_hash("A:12"), 32236);
        assert_eq!(dp3_hash("dev:aa:bb:cc:dd:ee:ff"), 767);
        assert_eq!(dp3_hash("ip6:2001:db8::1"), 41862);
        assert_eq!(dp3_hash("A:1-B:b1"), 56004);
        assert_eq!(entity_hash("A", "12"), 32236);
    }
}
