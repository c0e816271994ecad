//! The reconciler: moves the `cluster` TrustAnchorRotation through its phases.
//!
//! - [`model`]: what is observed and what is to be done, as plain values;
//! - [`decide`]: the pure state machine over them;
//! - the I/O layer gathers [`model::Observed`] from watches and executes [`model::Effect`]s.

pub mod certs;
pub mod controller;
pub mod decide;
pub mod lease;
pub mod metrics;
pub mod model;
pub mod retry;

#[cfg(test)]
mod decide_tests;
