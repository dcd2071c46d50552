//! Test support shared by the integration tests.

#![allow(dead_code)]

pub use dp3_model as dp3;

pub mod model;
