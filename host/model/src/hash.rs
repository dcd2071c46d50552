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
    entity_hash_of(etype, &eid_canonical)
}

/// [`entity_hash`] of an eid written by its `Display` (the canonical form), streamed into
/// the digest without building the key string (computed for every task, several times).
pub fn entity_hash_of(etype: &str, eid: &dyn std::fmt::Display) -> u16 {
    struct Sink(Md5);
    impl std::fmt::Write for Sink {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut d = Sink(Md5::new());
    d.0.update(etype.as_bytes());
    d.0.update(b":");
    // Writing into a digest cannot fail.
    let _ = std::fmt::write(&mut d, format_args!("{eid}"));
    let digest = d.0.finalize();
    u16::from_be_bytes([digest[14], digest[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_eids_hash_like_their_canonical_strings() {
        use crate::eid::Eid;
        for eid in [
            Eid::String("192.168.0.1".into()),
            Eid::Int(-12),
            Eid::String("žluťoučký kůň".into()),
        ] {
            assert_eq!(
                entity_hash_of("ip", &eid),
                entity_hash("ip", &eid.to_string()),
                "{eid}"
            );
        }
    }

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
