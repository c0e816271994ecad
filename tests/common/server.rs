//! The webhook's HTTPS server run in-process (no Kubernetes needed): the real router, TLS
//! config and reloading resolver over a fixed view. Shared by tests and the benchmark.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use trust_rotation_operator::crd::Phase;
use trust_rotation_operator::webhook::metrics::WebhookMetrics;
use trust_rotation_operator::webhook::patch::RotationView;
use trust_rotation_operator::webhook::server::{AppState, router, serve_tls};
use trust_rotation_operator::webhook::tls::{ReloadingResolver, server_config};
use trust_rotation_operator::webhook::view::ViewHandle;

/// The webhook's router over `view`, with metrics of its own.
pub fn webhook_router(view: ViewHandle) -> axum::Router {
    let metrics = WebhookMetrics::register(&mut Registry::default());
    router(AppState { view, metrics })
}

/// The load bench's baseline: the same TLS, HTTP and routing stack, answering a fixed allowed
/// response and reading nothing of the body but its bytes.
pub fn noop_router() -> axum::Router {
    async fn noop(_body: axum::body::Bytes) -> axum::response::Response {
        use axum::response::IntoResponse;
        (
            [("content-type", "application/json")],
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#,
        )
            .into_response()
    }
    axum::Router::new().route("/mutate", axum::routing::post(noop))
}

/// The load run's router: the no-op baseline, or the webhook over [`accelerating_view`].
pub fn load_router(noop: bool) -> axum::Router {
    if noop {
        noop_router()
    } else {
        webhook_router(ViewHandle::fixed(accelerating_view()))
    }
}

/// A rotation in its first accelerating phase (a 5 minute interval), with a placeholder
/// fingerprint: every meshed pod gets both the annotation and the env.
pub fn accelerating_view() -> RotationView {
    RotationView::new(
        Phase::PropagatingTrustRoots,
        Some("d0".repeat(32)),
        Some("5m".to_owned()),
    )
}

pub struct InProcessWebhook {
    pub addr: SocketAddr,
    pub resolver: Arc<ReloadingResolver>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
}

impl InProcessWebhook {
    /// Serves `/mutate` on a free loopback port, re-reading the certificate files every
    /// `reload_every`.
    pub async fn start(cert: &Path, key: &Path, view: ViewHandle, reload_every: Duration) -> Self {
        Self::start_app(cert, key, webhook_router(view), reload_every).await
    }

    /// Serves any router (the benchmark's no-op baseline, a timed router) over the real TLS
    /// config, with the certificate from `cert` and `key`.
    pub async fn start_app(
        cert: &Path,
        key: &Path,
        app: axum::Router,
        reload_every: Duration,
    ) -> Self {
        let resolver = ReloadingResolver::new(cert, key).expect("serving certificate");
        let tls = server_config(resolver.clone()).expect("TLS config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tls(listener, tls, app, async {
            let _ = rx.await;
        }));
        let watcher = tokio::spawn(resolver.clone().watch(reload_every, |_| {}));
        Self {
            addr,
            resolver,
            shutdown: Some(tx),
            server,
            watcher,
        }
    }

    /// Graceful shutdown: stops accepting, waits for requests in flight.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.server).await.unwrap();
    }
}

impl Drop for InProcessWebhook {
    fn drop(&mut self) {
        self.server.abort();
        self.watcher.abort();
    }
}
