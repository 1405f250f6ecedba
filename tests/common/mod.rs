//! Test support shared by the integration tests (`mod common;` in a test file): running the binary
//! ([`cli`]), numerical references ([`numeric`]) and the toys and oracles of the C-ΠGDM / ΠGDM / DDIM tests
//! ([`cpigdm`]). Each test binary uses a subset.

#![allow(dead_code)]

pub mod cli;
pub mod cpigdm;
pub mod numeric;
