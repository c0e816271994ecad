//! The webhook's HTTPS server run in-process (no Kubernetes needed): the real router, TLS
//! config and reloading resolver over a fixed view. Shared by tests and the benchmark.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use trust_rotation_operator::crd::Phase;
use trust_rotation_operator::webhook::deadline::ConnectionTimeouts;
use trust_rotation_operator::webhook::metrics::{HandshakeFailures, WebhookMetrics};
use trust_rotation_operator::webhook::patch::RotationView;
use trust_rotation_operator::webhook::server::{AppState, router, serve_tls};
use trust_rotation_operator::webhook::tls::{ReloadingResolver, server_config};
use trust_rotation_operator::webhook::view::ViewHandle;

/// The webhook's router over `view`, with metrics of its own.
pub fn webhook_router(view: ViewHandle) -> axum::Router {
    webhook_router_in(view, &mut Registry::default())
}

/// The webhook's router over `view`, its metrics registered in `registry`.
pub fn webhook_router_in(view: ViewHandle, registry: &mut Registry) -> axum::Router {
    let metrics = WebhookMetrics::register(registry);
    router(AppState::new(view, metrics))
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

/// The handlers the load bench and `examples/server_profile` can put behind the server: the
/// no-op baseline, the webhook, and the rungs of a ladder between them, each doing one more
/// part of the webhook's work than the one before, so that the ratio's gap can be taken apart
/// under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadHandler {
    /// Reads the body, answers a fixed allowed response.
    Noop,
    /// Reads the body, answers the webhook's patched response for the typical pod, computed
    /// once: what the larger answer alone costs.
    Answer,
    /// Checks the body is JSON (serde_json, into `IgnoredAny`), then answers as `Answer`: the
    /// floor for any handler that looks at its input.
    Validate,
    /// Reads the body with the webhook's fast path (UTF-8 check and `scan::review_in`), then
    /// answers as `Answer`.
    Read,
    /// The whole pure review (`review::review` and `to_json`): decode, patch, encode; no span,
    /// no metrics.
    Review,
    /// The webhook's own router.
    Webhook,
}

impl LoadHandler {
    /// The ladder, in order of the work each rung adds.
    pub const LADDER: [LoadHandler; 4] = [
        LoadHandler::Answer,
        LoadHandler::Validate,
        LoadHandler::Read,
        LoadHandler::Review,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LoadHandler::Noop => "no-op",
            LoadHandler::Answer => "answer",
            LoadHandler::Validate => "validate",
            LoadHandler::Read => "read",
            LoadHandler::Review => "review",
            LoadHandler::Webhook => "webhook",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Noop, Self::Webhook]
            .into_iter()
            .chain(Self::LADDER)
            .find(|h| h.name() == name)
    }
}

/// The typical pod's AdmissionReview, compact, as the API server sends it.
pub fn typical_body() -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/admission/pod-inject-enabled.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect(&path);
    let fixture: serde_json::Value = serde_json::from_str(&text).expect(&path);
    serde_json::to_vec(&fixture).unwrap()
}

/// The router for `handler`. The webhook and the rungs read [`accelerating_view`].
pub fn load_router(handler: LoadHandler) -> axum::Router {
    use axum::response::{IntoResponse, Response};
    use trust_rotation_operator::webhook::{review::review, scan};

    let rung = match handler {
        LoadHandler::Noop => return noop_router(),
        LoadHandler::Webhook => return webhook_router(ViewHandle::fixed(accelerating_view())),
        rung => rung,
    };
    let view = Arc::new(accelerating_view());
    let answer: axum::body::Bytes = review(&typical_body(), Some(&view), &|_| None)
        .review
        .to_json()
        .into();
    let handle = move |body: axum::body::Bytes| {
        let (view, answer) = (view.clone(), answer.clone());
        async move {
            let answer = match rung {
                LoadHandler::Answer => answer,
                LoadHandler::Validate => {
                    let checked = serde_json::from_slice::<serde::de::IgnoredAny>(&body);
                    assert!(checked.is_ok(), "the load's body is JSON");
                    answer
                }
                LoadHandler::Read => {
                    let read = std::str::from_utf8(&body).ok().and_then(scan::review_in);
                    assert!(read.is_some(), "the fast path reads the load's body");
                    answer
                }
                _ => review(&body, Some(&view), &|_| None)
                    .review
                    .to_json()
                    .into(),
            };
            let response: Response =
                ([("content-type", "application/json")], answer).into_response();
            response
        }
    };
    axum::Router::new().route("/mutate", axum::routing::post(handle))
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

/// The value of one sample line (`name{labels}`, as the text format writes it) in Prometheus
/// text.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub struct InProcessWebhook {
    pub addr: SocketAddr,
    pub resolver: Arc<ReloadingResolver>,
    registry: Option<Registry>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
}

impl InProcessWebhook {
    /// Serves `/mutate` on a free loopback port, re-reading the certificate files every
    /// `reload_every`.
    pub async fn start(cert: &Path, key: &Path, view: ViewHandle, reload_every: Duration) -> Self {
        Self::start_timed(cert, key, view, reload_every, ConnectionTimeouts::default()).await
    }

    /// As [`InProcessWebhook::start`], with the connections' `timeouts`.
    pub async fn start_timed(
        cert: &Path,
        key: &Path,
        view: ViewHandle,
        reload_every: Duration,
        timeouts: ConnectionTimeouts,
    ) -> Self {
        let mut registry = Registry::default();
        let app = webhook_router_in(view, &mut registry);
        let handshake_failures = HandshakeFailures::register(&mut registry);
        let mut server = Self::start_serving(
            cert,
            key,
            app,
            timeouts,
            Some(handshake_failures),
            reload_every,
        )
        .await;
        server.registry = Some(registry);
        server
    }

    /// One sample of the webhook's metrics (`name{labels}` as the text format writes it), if
    /// this server runs the webhook's router.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, self.registry.as_ref()?).ok()?;
        sample_value(&text, sample)
    }

    /// Serves any router (the benchmark's no-op baseline, a timed router) over the real TLS
    /// config, with the certificate from `cert` and `key`.
    pub async fn start_app(
        cert: &Path,
        key: &Path,
        app: axum::Router,
        reload_every: Duration,
    ) -> Self {
        Self::start_serving(
            cert,
            key,
            app,
            ConnectionTimeouts::default(),
            None,
            reload_every,
        )
        .await
    }

    async fn start_serving(
        cert: &Path,
        key: &Path,
        app: axum::Router,
        timeouts: ConnectionTimeouts,
        handshake_failures: Option<Arc<HandshakeFailures>>,
        reload_every: Duration,
    ) -> Self {
        let resolver = ReloadingResolver::new(cert, key).expect("serving certificate");
        let tls = server_config(resolver.clone()).expect("TLS config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tls(
            listener,
            tls,
            app,
            timeouts,
            handshake_failures,
            async {
                let _ = rx.await;
            },
        ));
        let watcher = tokio::spawn(resolver.clone().watch(reload_every, |_| {}, || {}));
        Self {
            addr,
            resolver,
            registry: None,
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
