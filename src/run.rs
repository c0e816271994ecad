//! `trust-rotation-operator run`: the webhook server, its view of the rotation, the reconciler
//! and the admin server in one process. Every replica serves the webhook.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::admin::{self, Health};
use crate::reconcile::controller;
use crate::reconcile::lease::Elector;
use crate::reconcile::metrics::ReconcileMetrics;
use crate::webhook::deadline::ConnectionTimeouts;
use crate::webhook::metrics::{HandshakeFailures, WebhookMetrics};
use crate::webhook::server::{AppState, router, serve_tls};
use crate::webhook::tls::{ReloadingResolver, TlsError, server_config};
use crate::webhook::view::{ViewConfig, ViewHandle};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub webhook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    pub cert_reload_interval: Duration,
    pub view: ViewConfig,
    /// The reconciler, when this replica runs it.
    pub reconciler: Option<crate::reconcile::controller::ReconcilerConfig>,
    /// Run the reconciler only while holding this Lease (`None`: always).
    pub leader: Option<crate::reconcile::lease::LeaseConfig>,
    /// After the shutdown signal: not ready, still serving, for this long, so the API server
    /// has stopped sending admissions here before the listener closes.
    pub shutdown_delay: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("serving certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("binding the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A part that runs for the process's whole life stopped: the process stops too (not
    /// ready, draining), so the kubelet restarts it instead of it serving half-alive.
    #[error("the {what} stopped unexpectedly ({how}); the operator stops so that it is restarted")]
    PartStopped { what: &'static str, how: String },
}

/// Runs until `shutdown` completes: then `/ready` turns false, the webhook stops accepting,
/// requests in flight finish, and the function returns.
pub async fn run(
    config: RunConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut registry = Registry::default();
    let metrics = WebhookMetrics::register(&mut registry);
    let handshake_failures = HandshakeFailures::register(&mut registry);
    let reconcile_metrics = ReconcileMetrics::register(&mut registry);
    registry.register(
        "trust_rotation_panics",
        "Panics anywhere in the process (each also logged); a webhook connection that panicked closed without an answer, and its pod was admitted unstamped",
        crate::logging::report_panics(),
    );
    let health = Arc::new(Health::default());

    let resolver = ReloadingResolver::new(&config.tls_cert_file, &config.tls_key_file)?;
    metrics
        .serving_certificate_not_after
        .set(resolver.not_after());
    health.cert_loaded.store(true, Ordering::Release);
    let tls = server_config(resolver.clone())?;

    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { what, addr, source })
    };
    let webhook_listener = bind("webhook", config.webhook_addr).await?;
    let admin_listener = bind("admin", config.admin_addr).await?;
    health.listener_bound.store(true, Ordering::Release);
    tracing::info!(
        webhook = %config.webhook_addr,
        admin = %config.admin_addr,
        "listening"
    );

    let mut tasks = Parts::default();
    let (reload_metrics, failure_metrics) = (metrics.clone(), metrics.clone());
    tasks.spawn(
        "serving certificate reloader",
        resolver.watch(
            config.cert_reload_interval,
            move |not_after| {
                reload_metrics.serving_certificate_not_after.set(not_after);
            },
            move || {
                failure_metrics.serving_certificate_reload_failures.inc();
            },
        ),
    );
    let view = ViewHandle::unsynced();
    let (synced_health, synced_metrics) = (health.clone(), metrics.clone());
    tasks.spawn(
        "rotation view",
        view.clone().run(
            client.clone(),
            config.view.clone(),
            metrics.view_watch_errors.clone(),
            move || {
                synced_health.view_synced.store(true, Ordering::Release);
                synced_metrics.view_synced.set(1);
                tracing::info!("rotation view synced; webhook patching enabled");
            },
        ),
    );
    // The reconciler's task, and the election it runs under: both are stopped as soon as
    // shutdown starts.
    let (mut reconciler_part, mut elector) = (None, None);
    if let Some(reconciler) = config.reconciler.clone() {
        let lead = {
            let (client, metrics) = (client.clone(), reconcile_metrics.clone());
            move || controller::run(client.clone(), reconciler.clone(), metrics.clone())
        };
        match config.leader.clone() {
            None => {
                reconcile_metrics.leader.set(1);
                reconciler_part = Some(tasks.spawn("reconciler", lead()));
            }
            Some(lease) => {
                let leader_gauge = reconcile_metrics.clone();
                let on_change = move |leading: bool| {
                    leader_gauge.leader.set(i64::from(leading));
                    if !leading {
                        leader_gauge.forget_rotation();
                    }
                };
                let e = Elector::new(client.clone(), lease);
                reconciler_part = Some(tasks.spawn(
                    "reconciler (leader-elected)",
                    e.clone().run(lead, on_change),
                ));
                elector = Some(e);
            }
        }
    }
    let admin_app = admin::router(Arc::new(registry), health.clone());
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    tasks.spawn("admin server", async move {
        let stopped = async {
            let _ = admin_stop_rx.await;
        };
        if let Err(e) = axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    let shutdown_health = health.clone();
    let stopped_metrics = reconcile_metrics.clone();
    let state = AppState::new(view, metrics);
    let stopping = state.clone();
    let app = router(state);
    let delay = config.shutdown_delay;
    let mut failure = None;
    let parts = &mut tasks;
    let failed = &mut failure;
    serve_tls(
        webhook_listener,
        tls,
        app,
        ConnectionTimeouts::default(),
        Some(handshake_failures),
        async move {
            tokio::select! {
                () = shutdown => {}
                error = parts.next_stopped() => {
                    tracing::error!(error = %error, "shutting down");
                    *failed = Some(error);
                }
            }
            // Not ready first: the Service drops this endpoint (and the API server stops calling
            // it) while the listener still answers whoever has not heard yet. Connections the API
            // server keeps alive outlive the endpoint, so each answer now asks it to close its
            // connection: few are left idle for the drain to close under a request.
            shutdown_health.shutting_down.store(true, Ordering::Release);
            stopping.stop();
            tracing::info!(delay = ?delay, "shutting down: not ready, still serving");
            let serving = tokio::time::Instant::now() + delay;
            // The reconciler has nothing to wait for: it stops now, and hands the Lease over
            // (given the Lease's retry interval, or 1 s if longer) while the webhook still
            // serves, so the next leader takes over without waiting for this replica's drain.
            if let Some(part) = reconciler_part {
                for error in parts.stop(part).await {
                    tracing::error!(error = %error, "while stopping the reconciler");
                    failed.get_or_insert(error);
                }
                // As the election says when it stops leading (cancelled, it cannot).
                stopped_metrics.leader.set(0);
                stopped_metrics.forget_rotation();
                if let Some(elector) = &elector {
                    elector.release().await;
                }
                tracing::info!("shutting down: the reconciler has stopped");
            }
            tokio::time::sleep_until(serving).await;
            tracing::info!("shutting down: closing the listener, draining requests in flight");
        },
    )
    .await;
    let _ = admin_stop_tx.send(());
    tasks.stop_all().await;
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}

/// The process's long-lived parts, each with a name to say which one stopped.
#[derive(Default)]
struct Parts {
    set: tokio::task::JoinSet<()>,
    /// Those not yet seen to stop.
    names: std::collections::HashMap<tokio::task::Id, (&'static str, tokio::task::AbortHandle)>,
}

impl Parts {
    fn spawn(
        &mut self,
        what: &'static str,
        part: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::Id {
        let handle = self.set.spawn(part);
        let id = handle.id();
        self.names.insert(id, (what, handle));
        id
    }

    /// Stops the part `id` (at shutdown) and waits until it has stopped. Returns how each part
    /// that ended of itself meanwhile ended (`id` included, if it ended before it was stopped):
    /// the process still stops, but not as if all were well.
    async fn stop(&mut self, id: tokio::task::Id) -> Vec<RunError> {
        let mut ended = Vec::new();
        let Some((_, handle)) = self.names.get(&id) else {
            // Already stopped (and reported).
            return ended;
        };
        handle.abort();
        let mut stopped_it = false;
        // Until `id` has stopped, and then those that had already ended too.
        loop {
            let joined = if stopped_it {
                self.set.try_join_next_with_id()
            } else {
                self.set.join_next_with_id().await
            };
            let Some(joined) = joined else {
                return ended;
            };
            let stopped = match &joined {
                Ok((stopped, ())) => *stopped,
                Err(e) => e.id(),
            };
            stopped_it |= stopped == id;
            if matches!(&joined, Err(e) if e.is_cancelled()) {
                self.names.remove(&stopped);
            } else {
                ended.push(self.ended(joined));
            }
        }
    }

    /// Waits for the first part to stop (none should before shutdown) and says which and how.
    async fn next_stopped(&mut self) -> RunError {
        match self.set.join_next_with_id().await {
            Some(joined) => self.ended(joined),
            // Nothing was spawned: nothing can stop.
            None => std::future::pending().await,
        }
    }

    /// Which part ended, and how.
    fn ended(&mut self, joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> RunError {
        let (id, how): (tokio::task::Id, String) = match joined {
            Ok((id, ())) => (id, "it returned".to_owned()),
            Err(e) if e.is_panic() => {
                let id = e.id();
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|m| (*m).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                (id, format!("it panicked: {message}"))
            }
            Err(e) => (e.id(), format!("it was cancelled: {e}")),
        };
        RunError::PartStopped {
            what: self.names.remove(&id).map_or("a part", |(what, _)| what),
            how,
        }
    }

    async fn stop_all(&mut self) {
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part that stops is named, with how: returned, or panicked with its message (either
    /// payload type `panic!` makes). The error says the process stops to be restarted.
    #[tokio::test]
    async fn a_part_that_stops_is_named_with_how() {
        struct Dropped(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let view_dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard = Dropped(view_dropped.clone());
        let mut parts = Parts::default();
        parts.spawn("rotation view", async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        parts.spawn("reconciler", async {});
        let stopped = parts.next_stopped().await;
        assert!(
            matches!(&stopped, RunError::PartStopped { what: "reconciler", how } if how == "it returned"),
            "{stopped:?}"
        );
        assert_eq!(
            stopped.to_string(),
            "the reconciler stopped unexpectedly (it returned); the operator stops so that it is restarted"
        );

        parts.spawn("admin server", async { panic!("a bug") });
        let stopped = parts.next_stopped().await.to_string();
        assert!(
            stopped.contains("the admin server stopped unexpectedly (it panicked: a bug)"),
            "{stopped}"
        );
        let n = 7;
        parts.spawn(
            "serving certificate reloader",
            async move { panic!("bug {n}") },
        );
        let stopped = parts.next_stopped().await.to_string();
        assert!(stopped.contains("(it panicked: bug 7)"), "{stopped}");

        // The part still running is not reported, and is stopped by stop_all.
        let quiet = tokio::time::timeout(Duration::from_millis(50), parts.next_stopped()).await;
        assert!(quiet.is_err(), "a running part was reported stopped");
        assert!(!view_dropped.load(Ordering::Acquire));
        parts.stop_all().await;
        assert!(
            view_dropped.load(Ordering::Acquire),
            "stop_all left a part running"
        );
    }

    /// A part stopped at shutdown has stopped (its future dropped) when `stop` returns, and the
    /// others run on; a part already reported as stopped is not waited for.
    #[tokio::test]
    async fn a_part_stopped_at_shutdown_is_gone_when_stop_returns() {
        let dropped = |flag: &Arc<std::sync::atomic::AtomicBool>| {
            struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);
            impl Drop for SetOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                }
            }
            let guard = SetOnDrop(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await
            }
        };
        let (reconciler, view) = (Arc::default(), Arc::default());
        let mut parts = Parts::default();
        let id = parts.spawn("reconciler", dropped(&reconciler));
        parts.spawn("rotation view", dropped(&view));
        let ended = parts.stop(id).await;
        assert!(ended.is_empty(), "{ended:?}");
        assert!(reconciler.load(Ordering::Acquire), "stop returned first");
        assert!(!view.load(Ordering::Acquire), "another part was stopped");

        // A part that ended of itself before the shutdown (not yet reported) is said, and so is
        // the part stopped, when it had ended of itself first.
        let id = parts.spawn("reconciler", async {});
        parts.spawn("serving certificate reloader", async { panic!("a bug") });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut ended: Vec<String> = parts.stop(id).await.iter().map(|e| e.to_string()).collect();
        ended.sort();
        assert_eq!(ended.len(), 2, "{ended:?}");
        assert!(
            ended[0].starts_with("the reconciler stopped unexpectedly (it returned)"),
            "{ended:?}"
        );
        assert!(
            ended[1].contains("certificate reloader stopped unexpectedly (it panicked: a bug)"),
            "{ended:?}"
        );
        assert!(!view.load(Ordering::Acquire));

        let returned = parts.spawn("admin server", async {});
        let stopped = parts.next_stopped().await;
        assert!(matches!(
            stopped,
            RunError::PartStopped {
                what: "admin server",
                ..
            }
        ));
        let waited = tokio::time::timeout(Duration::from_secs(5), parts.stop(returned)).await;
        assert!(waited.is_ok(), "waited for a part already stopped");
        assert!(!view.load(Ordering::Acquire));
    }

    /// With no part at all there is nothing to report: waiting on it never ends (it must not
    /// read as a stop and shut the operator down).
    #[tokio::test]
    async fn no_parts_never_stop() {
        let mut parts = Parts::default();
        let waited = tokio::time::timeout(Duration::from_millis(50), parts.next_stopped()).await;
        assert!(waited.is_err());
    }
}
