//! Collection names of DP3's layout (data-model.md §8.1) and checks of the field names we
//! put into update paths.

use dp3_store::{Result, StoreError};

pub const METADATA: &str = "#metadata";
pub const LINK_CACHE: &str = "#cache#Link";
/// Our key/value metadata (pipeline watermarks etc.); DP3 ignores unknown caches.
pub const META: &str = "#cache#dp3rs_meta";

pub fn master(etype: &str) -> String {
    format!("{etype}#master")
}

pub fn raw(etype: &str) -> String {
    format!("{etype}#raw")
}

pub fn snapshots(etype: &str) -> String {
    format!("{etype}#snapshots")
}

pub fn snapshots_oversized(etype: &str) -> String {
    format!("{etype}#snapshots_oversized")
}

/// An entity type usable in collection names and link keys.
pub fn check_etype(etype: &str) -> Result<()> {
    if etype.is_empty() || etype.contains(['#', '\0', '$']) {
        return Err(StoreError::InvalidQuery(format!(
            "entity type '{etype}' cannot name a collection (empty, or contains '#', '$' or NUL)"
        )));
    }
    Ok(())
}

/// A name used as one component of an update path (`<attr>`, `#ttl.<name>`,
/// `#min_t2s.<attr>`): MongoDB would treat dots as nesting and `$` as an operator.
pub fn check_field(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('$') || name.contains(['.', '\0']) || name == "_id" {
        return Err(StoreError::InvalidQuery(format!(
            "{what} '{name}' cannot be stored (empty, starts with '$', contains '.' or NUL, or is '_id')"
        )));
    }
    Ok(())
}

/// An attribute name: a field name that also does not collide with DP3's `#` metadata.
pub fn check_attr(name: &str) -> Result<()> {
    check_field("attribute", name)?;
    if name.starts_with('#') {
        return Err(StoreError::InvalidQuery(format!(
            "attribute '{name}' collides with DP3's '#' metadata fields"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names() {
        assert_eq!(master("bus"), "bus#master");
        assert_eq!(raw("bus"), "bus#raw");
        assert_eq!(snapshots("bus"), "bus#snapshots");
        assert_eq!(snapshots_oversized("bus"), "bus#snapshots_oversized");
    }

    #[test]
    fn name_checks() {
        assert!(check_etype("bus_1").is_ok());
        assert!(check_etype("a#b").is_err());
        assert!(check_etype("").is_err());
        assert!(check_attr("speed").is_ok());
        for bad in ["", "a.b", "$set", "#hash", "_id", "x\0"] {
            assert!(check_attr(bad).is_err(), "{bad:?}");
        }
        assert!(check_field("TTL token", "base").is_ok());
        assert!(check_field("TTL token", "a.b").is_err());
    }
}
