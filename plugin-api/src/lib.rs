//! The DP3 module author's crate.
