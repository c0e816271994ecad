//! The mutating admission webhook (DESIGN.md "The webhook").
//!
//! - [`patch`]: the pure patch builder over a Pod, its namespace's annotations and the view.
//! - [`review`]: AdmissionReview decoding and the response, also pure; [`scan`]: its fast path
//!   for Pod reviews.
//! - [`server`]: `POST /mutate` over TLS; [`deadline`]: its connections' idle and request
//!   timeouts; [`tls`]: the reloading serving certificate.
//! - [`view`]: the rotation view every replica keeps from watches; [`metrics`].

pub mod admission;
pub mod config;
pub mod deadline;
pub mod metrics;
pub mod patch;
pub mod review;
pub mod scan;
pub mod server;
pub mod tls;
pub mod view;
