//! The DP3 host: everything behind the `dp3` binary.

pub mod cli;
