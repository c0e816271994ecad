//! The HTTPS server: `POST /mutate` over tokio-rustls, one task per connection, graceful
//! shutdown that lets requests in flight finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::LengthLimitError;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::util::MapResponse;

use super::deadline::{Answers, ConnectionTimeouts, Deadlines};
use super::metrics::{HandshakeFailure, HandshakeFailures, WebhookMetrics};
use super::review::{Outcome, review};
use super::view::ViewHandle;

/// The API server sends at most a few MiB per object (etcd's default request limit is
/// 1.5 MiB); 7 MiB leaves room for old and new objects of an update and refuses anything larger
/// with 413 before it is buffered.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// A client that opens a connection and never finishes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for requests in flight before closing their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the `/mutate` handler needs: one shared allocation, since axum clones the state for
/// every request.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    view: ViewHandle,
    metrics: Arc<WebhookMetrics>,
    /// Set once the process starts to stop (see [`AppState::stop`]).
    stopping: AtomicBool,
}

impl AppState {
    pub fn new(view: ViewHandle, metrics: Arc<WebhookMetrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                view,
                metrics,
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// The process starts to stop: from now on every HTTP/1.x answer carries
    /// `Connection: close`, so that the API server retires its kept-alive connections to this
    /// replica one at a time, each right after an answer, instead of finding them closed under
    /// a request when the listener drains (see [`serve_tls`]).
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
    }
}

/// The webhook's routes.
///
/// The body limit is enforced by the handler itself rather than by `DefaultBodyLimit` and a
/// `middleware::from_fn` layer: those two layers cost every admission a boxed future and a
/// request clone-through, measurable at tens of thousands of admissions per second on one core.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .with_state(state)
}

/// Reads the body, at most [`MAX_BODY_BYTES`]: an announced length over it is refused before a
/// byte of the body is read, and a body without a length (chunked) is cut off at the limit.
async fn read_body(request: Request) -> Result<Bytes, Response> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = announced.filter(|&len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large(&format!("body of {len} bytes")));
    }
    axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let e = e.into_inner();
            if e.is::<LengthLimitError>() {
                too_large("body")
            } else {
                // The client went away or sent a malformed chunk: as axum's `Bytes` extractor.
                let message = format!("Failed to buffer the request body: {e}\n");
                (StatusCode::BAD_REQUEST, message).into_response()
            }
        })
}

fn too_large(what: &str) -> Response {
    let message = format!("{what} is over the {MAX_BODY_BYTES}-byte limit\n");
    (StatusCode::PAYLOAD_TOO_LARGE, message).into_response()
}

async fn mutate(State(state): State<AppState>, request: Request) -> Response {
    let state = &*state.shared;
    let close = state.stopping.load(Ordering::Acquire);
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refused) => {
            // Too large, or a body that never arrived whole: not a usable AdmissionReview.
            state.metrics.refused();
            return closing_if(close, refused);
        }
    };
    let started = Instant::now();
    let view = state.view.current();
    // `review` is pure and logs nothing, so the request's span is opened once it is known whose
    // request it was: created with its fields, instead of created empty and filled in (which
    // formatted its fields twice, on every admission, for the log lines few admissions write).
    let reviewed = review(&body, view.as_deref(), &|ns| {
        state.view.namespace_inject(ns)
    });
    let span = tracing::info_span!(
        "admission",
        uid = reviewed.uid.as_str(),
        namespace = reviewed.namespace.as_str(),
        name = reviewed.name.as_str()
    );
    span.in_scope(|| match (&reviewed.outcome, &reviewed.note) {
        (Outcome::Invalid, Some(note)) => tracing::warn!(problem = %note, "invalid AdmissionReview"),
        (outcome, Some(note)) if reviewed.invalid_additional_env => {
            tracing::warn!(outcome = outcome.as_str(), problem = %note, "pod annotation left untouched")
        }
        (outcome, note) => tracing::debug!(outcome = outcome.as_str(), note = note.as_deref(), "admitted"),
    });
    if reviewed.unsynced {
        state.metrics.unsynced_admissions.inc();
    }
    if reviewed.invalid_additional_env {
        state.metrics.invalid_additional_env.inc();
    }
    let body = reviewed.review.to_json();
    state.metrics.observe(reviewed.outcome, started.elapsed());
    closing_if(
        close,
        ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
    )
}

/// With `close`, asks the client to close the connection after this response.
fn closing_if(close: bool, mut response: Response) -> Response {
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting, lets
/// requests in flight finish (up to a drain timeout) and returns.
///
/// A connection is closed once it has waited `timeouts.idle` for a request or for the client
/// to take an answer, or a request has not arrived whole within `timeouts.request` of its first
/// byte (see [`ConnectionTimeouts`]). Failed handshakes are counted in `handshake_failures` when given.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    timeouts: ConnectionTimeouts,
    handshake_failures: Option<Arc<HandshakeFailures>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    // HTTP/1 only: the API server's webhook client offers nothing else (it sets ALPN to
    // `http/1.1`, kubernetes#75791), and every connection is then timed the same way. No timer
    // for hyper, so none of its own timeouts: its header-read timeout also runs while a
    // kept-alive connection waits for its next request (see `deadline`), and the connection's
    // deadlines stand in for it. The API server keeps its connections alive; a close racing its
    // next POST fails the call (Go retries a POST only if nothing of it was written) and the pod
    // is admitted unstamped. So the idle timeout is longer than the API server's, and a
    // stopping process asks each client to close after its answer (`AppState::stop`) before it
    // drains.
    let builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, builder, watcher, failures) = (
            acceptor.clone(),
            app.clone(),
            builder.clone(),
            graceful.watcher(),
            handshake_failures.clone(),
        );
        tokio::spawn(async move {
            let failed = |failure, error: String| match &failures {
                Some(failures) => failures.record(failure, peer, &error),
                None => tracing::debug!(%peer, error, "TLS handshake failed"),
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return failed(HandshakeFailure::of(&e), e.to_string()),
                Err(_) => {
                    let error = format!("no handshake within {HANDSHAKE_TIMEOUT:?}");
                    return failed(HandshakeFailure::TimedOut, error);
                }
            };
            let answers = Answers::default();
            let counted = answers.clone();
            let app = MapResponse::new(app, move |response: Response| {
                counted.answered();
                response
            });
            let io = Deadlines::new(tls, timeouts, answers);
            let service = TowerToHyperService::new(app);
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing them");
    }
}
