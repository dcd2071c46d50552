//! MongoDB query documents evaluated in Rust, so the embedded store answers
//! `generic_filter` exactly like MongoDB, and DP3's magic strings.

pub mod magic;
pub mod matcher;
pub mod order;

pub use magic::{MagicError, replace_magic_strings};
pub use matcher::Filter;
pub use order::{bson_eq, cmp_bson};

#[cfg(test)]
mod tests;
