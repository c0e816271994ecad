//! The admin server, plain HTTP on its own port: `/live`, `/ready`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// What `/ready` checks. Each flag is set by the part that owns it.
#[derive(Debug, Default)]
pub struct Health {
    pub cert_loaded: AtomicBool,
    pub listener_bound: AtomicBool,
    pub view_synced: AtomicBool,
    pub shutting_down: AtomicBool,
}

impl Health {
    /// Empty when ready; otherwise what is missing, for the `/ready` body.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.shutting_down.load(Ordering::Acquire) {
            reasons.push("shutting down");
        }
        if !self.cert_loaded.load(Ordering::Acquire) {
            reasons.push("serving certificate not loaded");
        }
        if !self.listener_bound.load(Ordering::Acquire) {
            reasons.push("webhook listener not bound");
        }
        if !self.view_synced.load(Ordering::Acquire) {
            reasons.push("rotation view not synced");
        }
        reasons
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

pub fn router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(AdminState { registry, health })
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    let reasons = s.health.not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join(", ")),
        )
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
