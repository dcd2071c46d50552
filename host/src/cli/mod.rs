//! Command-line entry points.

pub mod api;
pub mod check;
pub mod load;
pub mod platform;
pub mod run;
pub mod worker;
