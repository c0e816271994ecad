//! trust-rotation-operator: rotates a Linkerd service mesh's trust anchor safely and
//! automatically. See README.md and DESIGN.md for the domain; this crate is the library behind
//! the `trust-rotation-operator` and `linkerd-trust` binaries.
#![forbid(unsafe_code)]

pub mod admin;
pub mod apiclient;
pub mod bundle;
pub mod cli;
pub mod crd;
pub mod demo;
pub mod devcerts;
pub mod duration;
pub mod logging;
pub mod probe;
pub mod rbac;
pub mod reconcile;
pub mod run;
pub mod sim;
pub mod testbed;
pub mod watch;
pub mod webhook;
