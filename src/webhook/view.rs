//! The webhook's view of the rotation, kept by every replica from watches: the `cluster`
//! TrustAnchorRotation, the trust-roots ConfigMap, and namespaces' annotations. Until all three
//! have listed once the view is `None`, and the webhook patches nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};

use super::patch::RotationView;
use crate::bundle::Bundle;
use crate::crd::TrustAnchorRotation;
use crate::watch::WatchErrors;

/// Names the view watches (all overridable by flags).
#[derive(Clone, Debug)]
pub struct ViewConfig {
    pub rotation_name: String,
    pub linkerd_namespace: String,
    pub trust_roots_configmap: String,
    pub trust_roots_key: String,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            rotation_name: crate::crd::CLUSTER_ROTATION_NAME.to_owned(),
            linkerd_namespace: "linkerd".to_owned(),
            trust_roots_configmap: "linkerd-identity-trust-roots".to_owned(),
            trust_roots_key: "ca-bundle.crt".to_owned(),
        }
    }
}

/// Cheap to clone; read on every admission.
#[derive(Clone)]
pub struct ViewHandle {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Option<Arc<RotationView>>>,
    namespaces: RwLock<Option<Store<PartialObjectMeta<Namespace>>>>,
}

impl ViewHandle {
    /// A view that has not synced (and, unless [`ViewHandle::set`] is called, never will).
    pub fn unsynced() -> Self {
        Self {
            inner: Arc::new(Inner {
                current: RwLock::new(None),
                namespaces: RwLock::new(None),
            }),
        }
    }

    /// A fixed view, for tests and benchmarks.
    pub fn fixed(view: RotationView) -> Self {
        let handle = Self::unsynced();
        handle.set(view);
        handle
    }

    pub fn set(&self, view: RotationView) {
        *self.inner.current.write().expect("view lock") = Some(Arc::new(view));
    }

    /// The view, or `None` until synced.
    pub fn current(&self) -> Option<Arc<RotationView>> {
        self.inner.current.read().expect("view lock").clone()
    }

    pub fn is_synced(&self) -> bool {
        self.current().is_some()
    }

    /// A namespace's `linkerd.io/inject` annotation, from the namespace watch.
    pub fn namespace_inject(&self, namespace: &str) -> Option<String> {
        let guard = self.inner.namespaces.read().expect("view lock");
        let ns = guard.as_ref()?.get(&ObjectRef::new(namespace))?;
        ns.metadata
            .annotations
            .as_ref()?
            .get(super::patch::INJECT_ANNOTATION)
            .cloned()
    }

    /// Runs the watches until dropped, keeping the view current. Calls `on_synced` once, when
    /// all three watches have listed. Failed watch attempts are logged, counted in `errors` and
    /// retried with backoff.
    pub async fn run(
        self,
        client: Client,
        config: ViewConfig,
        errors: WatchErrors,
        on_synced: impl FnOnce(),
    ) {
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let tars: Api<TrustAnchorRotation> = Api::all(client.clone());
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &config.linkerd_namespace);
        // Metadata only: annotations are all the webhook reads of a namespace.
        let nss: Api<PartialObjectMeta<Namespace>> = Api::all(client);

        let (tar_store, tar_writer) = reflector::store();
        let (cm_store, cm_writer) = reflector::store();
        let (ns_store, ns_writer) = reflector::store();
        *self.inner.namespaces.write().expect("view lock") = Some(ns_store);

        let synced = [(); 3].map(|_| Arc::new(AtomicBool::new(false)));
        let tar_events = track_init(
            reflector(tar_writer, watcher(tars, by_name(&config.rotation_name))),
            synced[0].clone(),
            format!("TrustAnchorRotation {}", config.rotation_name),
            errors.clone(),
        );
        let cm_events = track_init(
            reflector(
                cm_writer,
                watcher(cms, by_name(&config.trust_roots_configmap)),
            ),
            synced[1].clone(),
            format!(
                "ConfigMap {}/{}",
                config.linkerd_namespace, config.trust_roots_configmap
            ),
            errors.clone(),
        );
        let ns_events = track_init(
            reflector(ns_writer, watcher(nss, watcher::Config::default())),
            synced[2].clone(),
            "Namespaces (metadata)".to_owned(),
            errors,
        );
        let mut events =
            futures::stream::select_all([tar_events.boxed(), cm_events.boxed(), ns_events.boxed()]);
        let mut on_synced = Some(on_synced);
        // What was last said of the bundle, to say it again only when it changes.
        let mut bundle_problem = None;
        while events.next().await.is_some() {
            if !synced.iter().all(|s| s.load(Ordering::Acquire)) {
                continue;
            }
            let tar = tar_store.get(&ObjectRef::new(&config.rotation_name));
            let cm = cm_store.get(
                &ObjectRef::new(&config.trust_roots_configmap).within(&config.linkerd_namespace),
            );
            let (view, problem) = compute_view(tar.as_deref(), cm.as_deref(), &config);
            if problem != bundle_problem {
                match &problem {
                    Some(e) => {
                        tracing::warn!(error = %e, "trust bundle unusable; pods get no bundle annotation until it is fixed")
                    }
                    None => tracing::info!("trust bundle usable again"),
                }
                bundle_problem = problem;
            }
            if self.current().as_deref() != Some(&view) {
                let rotation = if tar.is_some() { "found" } else { "not found" };
                tracing::info!(rotation, phase = %view.phase(), bundle = ?view.desired_bundle_fingerprint(), interval = ?view.refresh_interval(), "rotation view updated");
                self.set(view);
            }
            if let Some(f) = on_synced.take() {
                f();
            }
        }
    }
}

/// Passes events through, marking `flag` at the end of each initial list and reporting errors
/// (the watcher retries after a backoff wait, [`crate::watch::with_backoff`]).
fn track_init<K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + 'static>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    flag: Arc<AtomicBool>,
    what: String,
    errors: WatchErrors,
) -> impl Stream<Item = ()> + Send {
    errors.watching(&K::kind(&()));
    crate::watch::with_backoff(stream).map(move |event| match event {
        Ok(watcher::Event::InitDone) => flag.store(true, Ordering::Release),
        Ok(_) => {}
        Err(e) => {
            errors.report(&K::kind(&()), &what, &e);
        }
    })
}

/// The view from the watched objects: the phase and interval from the rotation's status, the
/// fingerprint of the ConfigMap's bundle if it is usable; and if it is not (missing too), why
/// (the caller logs that when it changes, not on every watch event).
pub fn compute_view(
    tar: Option<&TrustAnchorRotation>,
    trust_roots: Option<&ConfigMap>,
    config: &ViewConfig,
) -> (RotationView, Option<String>) {
    let status = tar.and_then(|t| t.status.as_ref());
    let object = format!(
        "ConfigMap {}/{}",
        config.linkerd_namespace, config.trust_roots_configmap
    );
    let mut problem = None;
    let desired_text =
        match trust_roots.map(|cm| crate::bundle::configmap_text(cm, &config.trust_roots_key)) {
            Some(Ok(None)) => {
                problem = Some(format!("{object} has no key {}", config.trust_roots_key));
                None
            }
            Some(Ok(text)) => text,
            Some(Err(e)) => {
                problem = Some(format!("{object}: {e}"));
                None
            }
            None => {
                problem = Some(format!("{object} not found"));
                None
            }
        };
    let source = format!("{object} key {}", config.trust_roots_key);
    let desired_bundle_fingerprint =
        desired_text.and_then(|pem| match Bundle::from_pem(&source, pem) {
            Ok(b) => Some(b.fingerprint()),
            Err(e) => {
                problem = Some(e.to_string());
                None
            }
        });
    let view = RotationView::new(
        status.map(|s| s.phase).unwrap_or_default(),
        desired_bundle_fingerprint,
        status.and_then(|s| s.workload_certificate_refresh_interval.clone()),
    );
    let view = match desired_text {
        Some(pem) => view.with_desired_bundle_text(pem),
        None => view,
    };
    (view, problem)
}
