//! Command-line entry points.

pub mod check;
pub mod load;
pub mod run;
