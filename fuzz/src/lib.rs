//! Fuzz target bodies (see `targets.rs`); the binaries in `fuzz_targets/` call them.

#[path = "targets.rs"]
pub mod targets;
