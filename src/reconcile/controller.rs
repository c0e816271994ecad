//! The reconciler's I/O: reflectors gather [`Observed`] (named-object watches for the three
//! certificate Secrets and the bundle ConfigMap; meshed pods, the control plane's included, by
//! label; every Deployment, StatefulSet and DaemonSet; the `cluster` resource), the pure
//! [`decide`] picks the step, and this module executes its [`Effect`]s idempotently, then
//! writes status by server-side apply onto the resourceVersion it decided from, and publishes
//! the step's events once that has landed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectReference, Pod, PodSpec, PodTemplateSpec, Secret,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::sync::Notify;

use super::certs;
use super::decide::{
    Names, OUT_OF_ORDER_CONDITION, OUT_OF_ORDER_URGENT, announces_a_write, decide, first_n,
    reason_and_message,
};
use super::metrics::ReconcileMetrics;
use super::model::*;
use super::retry::{FORGET_AFTER, Retries};
use crate::crd::{
    RenewalPolicy, RestartPolicy, TrustAnchorRotation, TrustAnchorRotationSpec,
    TrustAnchorRotationStatus,
};
use crate::logging::{Lasted, Lasting};
use crate::rbac::EVENTS_NAMESPACE;
use crate::watch::WatchErrors;

/// Field manager of every write the reconciler makes.
pub const MANAGER: &str = "trust-rotation-operator";

/// A create or replace under [`MANAGER`].
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    }
}

/// A (non-apply) patch under [`MANAGER`].
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    }
}
/// Pod-template annotation that restarts a workload onto a bundle: its value is the bundle's
/// restart marker (its fingerprint, and the ConfigMap version the operator's write of it
/// replaced; see [`BundleMeta`]), so writing it again for the same bundle causes no second
/// rollout.
pub const RESTART_ANNOTATION: &str = "trust.linkerd.io/restarted-for-bundle";
/// On the bundle ConfigMap: the version of it the operator's last write replaced (see
/// [`BundleMeta`]).
pub const WRITTEN_OVER_ANNOTATION: &str = "trust.linkerd.io/written-over-version";
/// How long past its deletion deadline a pod still listed as running counts as draining.
const DRAIN_SLACK: k8s_openapi::jiff::SignedDuration =
    k8s_openapi::jiff::SignedDuration::from_secs(30);
/// Bundle writes in a row refused because the ConfigMap changed since the look, before the
/// next one is a failed step said in the status: one conflict is a cache a moment behind, and a
/// run of them another writer that keeps changing the ConfigMap faster than a look takes.
const CONFLICT_PATIENCE: u32 = 3;
/// How old a pod of a ReplicaSet must be for a missing Deployment to mean an orphaned
/// ReplicaSet rather than a watch that has not shown the Deployment yet.
const ORPHAN_AGE: k8s_openapi::jiff::SignedDuration =
    k8s_openapi::jiff::SignedDuration::from_secs(30);

/// On the bundle ConfigMap: the fingerprint of the bundle the operator wrote. Set by every
/// write, so the operator always manages a field besides the bundle's key: when another
/// manager takes the key, the API server keeps the operator's managedFields entry (it drops
/// an entry left with no field), which is how the overwrite is told.
pub const WRITTEN_BUNDLE_ANNOTATION: &str = "trust.linkerd.io/written-bundle-sha256";
/// Pod-template annotation that restarts a workload so that its proxies get a leaf from the
/// current issuer: its value is the issuer's fingerprint, so a workload is restarted at most
/// once per issuer for that reason.
pub const LEAF_RESTART_ANNOTATION: &str = "trust.linkerd.io/restarted-for-issuer";
/// On a control-plane Deployment's pod template: the proxy refresh interval the operator set
/// there for the rotation, so that it removes its own and never the user's.
pub const PROXY_REFRESH_ANNOTATION: &str = "trust.linkerd.io/proxy-max-refresh";
const MAX_REFRESH_ENV: &str = crate::webhook::patch::MAX_REFRESH_ENV;
const CONTROL_PLANE_NS_LABEL: &str = "linkerd.io/control-plane-ns";
const CONTROL_PLANE_COMPONENT_LABEL: &str = "linkerd.io/control-plane-component";
const PROXY_CONTAINER: &str = "linkerd-proxy";
const TRUST_ANCHORS_ENV: &str = "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS";
/// The proxy admin port, where a TLS handshake returns the live leaf chain.
const ADMIN_PORT: u16 = super::decide::PROXY_ADMIN_PORT;

/// events.k8s.io limits `note` to 1 kB.
const EVENT_NOTE_MAX_BYTES: usize = 1024;

/// Writes one events.k8s.io/v1 Event per call about the rotation, and says it in the log too
/// (Warning events at `warn`), so the log alone tells the rotation's story: phase transitions,
/// a parked rotation, a failed step.
struct EventWriter {
    api: Api<k8s_openapi::api::events::v1::Event>,
    instance: String,
}

impl EventWriter {
    async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        if warning {
            tracing::warn!(%reason, "{note}");
        } else {
            tracing::info!(%reason, "{note}");
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut end = note.len().min(EVENT_NOTE_MAX_BYTES);
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        let event = k8s_openapi::api::events::v1::Event {
            metadata: kube::api::ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(MANAGER),
                    now.as_nanosecond()
                )),
                namespace: Some(EVENTS_NAMESPACE.to_owned()),
                ..Default::default()
            },
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                now,
            )),
            action: Some("Reconcile".to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note[..end].to_owned()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(MANAGER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
            ..Default::default()
        };
        self.api.create(&post_params(), &event).await?;
        Ok(())
    }

    /// [`Self::publish`], an event that cannot be written logged: never a reason to stop.
    async fn say(&self, regarding: &ObjectReference, warning: bool, reason: &str, note: &str) {
        if let Err(e) = self.publish(regarding, warning, reason, note).await {
            tracing::warn!(error = %crate::watch::api_words(&e), %reason, "publishing an event");
        }
    }

    /// Says an [`Effect::Event`] (any other effect is not for it).
    async fn say_effect(&self, regarding: &ObjectReference, effect: &Effect) {
        if let Effect::Event {
            warning,
            reason,
            message,
        } = effect
        {
            self.say(regarding, *warning, reason, message).await;
        }
    }
}

/// Everything the reconciler needs to know about names and pacing.
#[derive(Clone, Debug)]
pub struct ReconcilerConfig {
    pub rotation_name: String,
    pub names: Names,
    pub linkerd_namespace: String,
    pub trust_domain: String,
    pub bundle_key: String,
    /// The identity issuer's Secret (cert-manager writes it; same name as the Certificate).
    pub issuer_secret: (String, String),
    /// How often a moving rotation looks again without a watch event (probes, rollouts).
    pub active_interval: Duration,
    /// How often a quiet one does.
    pub idle_interval: Duration,
    pub probe_concurrency: usize,
    pub probe_timeout: Duration,
    /// How long after an issuer is first seen every identity controller replica has surely
    /// loaded it (see [`Observed::issuer_reload`]).
    pub issuer_reload_grace: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            rotation_name: crate::crd::CLUSTER_ROTATION_NAME.to_owned(),
            names: Names::default(),
            linkerd_namespace: "linkerd".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            bundle_key: "ca-bundle.crt".to_owned(),
            issuer_secret: ("linkerd".to_owned(), "linkerd-identity-issuer".to_owned()),
            // Probing every meshed pod costs one handshake each; every 2 s is plenty to follow
            // a refresh interval of minutes, and rollouts are watched anyway.
            active_interval: Duration::from_secs(2),
            idle_interval: Duration::from_secs(300),
            probe_concurrency: 32,
            probe_timeout: Duration::from_secs(2),
            // The kubelet syncs each pod every sync period (1m by default) plus up to half of
            // it in jitter, 90 s, and reads the Secret from its cache (kept by a watch by
            // default; up to its TTL, 1m, old with the `Cache` strategy): 2.5 m at worst, and
            // half a minute's margin.
            issuer_reload_grace: Duration::from_secs(180),
        }
    }
}

/// Said as a blockingMessage says it: what failed and the API server's own words, without the
/// client's wrapping.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{}", crate::watch::in_api_words(.what, .source))]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// Several writes of one step failed (each workload's restart is tried).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<ReconcileError>),
    /// Some restarts of one step failed and the others were done: those are rolling, and the
    /// step's own event, which would have named them, is not published. Said as `failed` alone,
    /// so that the blockingMessage it becomes stays the same from one batch of restarts to the
    /// next (one `StepFailed` per failure); those done are announced by [`Self::restarted`].
    #[error("{failed}")]
    Partly {
        /// The step's event reason (`RestartingWorkloads`, `RestartingControlPlane`).
        reason: &'static str,
        done: Vec<String>,
        failed: Box<ReconcileError>,
    },
    /// A write the API server refused, not tried again yet (see [`Retries`]), or a failed
    /// restart not tried in this look for want of a free restart slot: the failure as it was
    /// said.
    #[error("{0}")]
    NotYetRetried(String),
}

impl ReconcileError {
    /// A write made onto a version that had changed (409 Conflict).
    fn conflict(&self) -> bool {
        matches!(self, ReconcileError::Kube { source: kube::Error::Api(status), .. }
            if status.code == 409)
    }

    /// The API server refused the write, and would refuse it again until someone changes
    /// something (RBAC, a policy, the object): 400, 401, 403, 405 or 422, admission webhook
    /// denials included. Not a conflict, a throttle, a timeout or a server error.
    fn refused(&self) -> bool {
        matches!(self, ReconcileError::Kube { source: kube::Error::Api(status), .. }
            if matches!(status.code, 400 | 401 | 403 | 405 | 422))
    }

    /// Whether no write of this look was sent: every failure in it is one not tried again yet
    /// (a refusal waiting out its [`Retries`] wait, a failed restart waiting for a slot).
    fn only_not_yet_retried(&self) -> bool {
        match self {
            ReconcileError::NotYetRetried(_) => true,
            ReconcileError::Several(errors) => errors.iter().all(Self::only_not_yet_retried),
            _ => false,
        }
    }

    /// For a step whose restarts partly failed, the Normal event that names those done and not
    /// `already` said (which then holds them too): its reason and message.
    fn restarted(&self, already: &mut BTreeSet<String>) -> Option<(&'static str, String)> {
        let ReconcileError::Partly { reason, done, .. } = self else {
            return None;
        };
        let news: Vec<String> = done
            .iter()
            .filter(|w| already.insert((*w).clone()))
            .cloned()
            .collect();
        (!news.is_empty()).then(|| {
            let message = format!(
                "restarted {} of the step's workloads ({}); the others were refused (see the StepFailed event)",
                news.len(),
                first_n(&news, 5)
            );
            (*reason, message)
        })
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Kube { what, source }
}

/// Stores the reconciler reads from, kept by watches.
struct Stores {
    rotation: Store<TrustAnchorRotation>,
    secrets: Vec<Store<Secret>>,
    bundle: Store<ConfigMap>,
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
}

impl Stores {
    /// Whether `workload` is in the watches' caches.
    fn holds(&self, workload: &Workload) -> bool {
        fn held<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, w: &Workload) -> bool {
            store
                .get(&ObjectRef::new(&w.name).within(&w.namespace))
                .is_some()
        }
        match workload.kind.as_str() {
            "Deployment" => held(&self.deployments, workload),
            "StatefulSet" => held(&self.statefulsets, workload),
            "DaemonSet" => held(&self.daemonsets, workload),
            _ => false,
        }
    }
}

/// The reconciler's watches: reflectors that wake it on every change, each task named after
/// what it watches (to say which one stopped), and which of them are failing.
struct Watches {
    wake: Arc<Notify>,
    errors: WatchErrors,
    failing: Failing,
    tasks: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, String>,
}

/// The watches whose last attempt failed and that have not listed since, with what went wrong.
/// A watch that failed may have missed changes, and kube's watcher says nothing when a retried
/// watch starts again; so a failed watch lists everything again, and is counted healthy only
/// once that list is in. Their number is published in `gauge`.
#[derive(Clone)]
struct Failing {
    watches: Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    gauge: Gauge,
}

impl Failing {
    fn set(&self, what: &str, failure: Option<String>) {
        let mut failing = self.watches.lock().expect("failing watches");
        match failure {
            Some(error) => failing.insert(what.to_owned(), error),
            None => failing.remove(what),
        };
        self.gauge.set(failing.len() as i64);
    }

    /// `watch of X (error); ...`, or `None` when every watch is healthy.
    fn describe(&self) -> Option<String> {
        let failing = self.watches.lock().expect("failing watches");
        (!failing.is_empty()).then(|| {
            (failing.iter())
                .map(|(what, error)| format!("the watch of {what} ({error})"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl Watches {
    /// `failing` counts the watches failing now.
    fn new(errors: WatchErrors, failing: Gauge) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            errors,
            failing: Failing {
                watches: Default::default(),
                gauge: failing,
            },
            tasks: tokio::task::JoinSet::new(),
            names: std::collections::HashMap::new(),
        }
    }

    /// A store of what `api` and `config` select, fed by a watch (described as `what` in logs)
    /// whose failed attempts are counted, marked failing and retried with backoff, each retry
    /// listing everything again. `managed_fields`: keep them (who wrote the bundle is read from
    /// them); elsewhere they are dropped (on a large cluster they are much of the memory a
    /// cache of every Deployment and meshed Pod takes).
    fn reflect<K>(
        &mut self,
        what: String,
        api: Api<K>,
        config: watcher::Config,
        managed_fields: bool,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (reader, mut writer) = reflector::store();
        self.errors.watching(&K::kind(&()));
        let (wake, errors, failing) =
            (self.wake.clone(), self.errors.clone(), self.failing.clone());
        let task_what = what.clone();
        let id = self
            .tasks
            .spawn(async move {
                // Not `watch::with_backoff` over one watcher: after a failed watch, kube's
                // watcher may resume from its last resourceVersion without listing again, and
                // a watch marked failing is cleared only by a whole new list (`InitDone`). So
                // each failure starts a new watcher, which lists.
                let mut backoff = crate::watch::Backoff::default();
                loop {
                    let mut events = std::pin::pin!(
                        watcher::watcher(api.clone(), config.clone()).modify(move |o: &mut K| {
                            if !managed_fields {
                                o.managed_fields_mut().clear();
                            }
                        })
                    );
                    while let Some(event) = events.next().await {
                        let event = match event {
                            Ok(event) => event,
                            Err(e) => {
                                let brief = errors.report(&K::kind(&()), &task_what, &e);
                                failing.set(&task_what, Some(brief));
                                break;
                            }
                        };
                        writer.apply_watcher_event(&event);
                        match event {
                            // The store now holds the whole list: whatever a failure may have
                            // missed is in.
                            watcher::Event::InitDone => {
                                failing.set(&task_what, None);
                                backoff = crate::watch::Backoff::default();
                            }
                            // Wake once the list is in, not for each object of it.
                            watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                            // Deletions too: a deleted bundle ConfigMap or previous-anchor
                            // Secret is put back at the next look, not after the idle interval.
                            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
                        }
                        wake.notify_one();
                    }
                    wake.notify_one();
                    tokio::time::sleep(backoff.next()).await;
                }
            })
            .id();
        self.names.insert(id, what);
        reader
    }

    /// Waits until a watch task ends (none should: the watcher retries every error) and says
    /// which one and how. Pending forever when there is none.
    async fn stopped(&mut self) -> String {
        let Some(ended) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, how) = match ended {
            Ok((id, ())) => (id, "ended".to_owned()),
            Err(e) if e.is_panic() => (e.id(), "panicked".to_owned()),
            Err(e) => (e.id(), e.to_string()),
        };
        let what = self.names.get(&id).map_or("a watch", String::as_str);
        format!("the watch of {what} {how}")
    }
}

/// Waits up to `every` for `synced` (the stores, one after another): `Ok(true)` once they have
/// listed, `Ok(false)` when `every` has passed first, and `Err` with which watch task ended and
/// how if one does: one whose store is further down the list is seen at once, not once those
/// before it have listed.
async fn until_synced(
    watches: &mut Watches,
    synced: std::pin::Pin<&mut impl Future<Output = bool>>,
    every: Duration,
) -> Result<bool, String> {
    tokio::select! {
        // A store's wait fails only if its watch's task ended, which `stopped` names.
        synced = synced => if synced { Ok(true) } else { Err(watches.stopped().await) },
        stopped = watches.stopped() => Err(stopped),
        _ = tokio::time::sleep(every) => Ok(false),
    }
}

fn named(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

/// Runs the reconciler until the task is dropped. Returns (with an error logged) only if one of
/// its watches stops, so that whoever runs it sees the reconciler end instead of deciding from
/// a cache that no longer changes.
pub async fn run(client: Client, config: ReconcilerConfig, metrics: Arc<ReconcileMetrics>) {
    let mut watches = Watches::new(
        metrics.watch_errors.clone(),
        metrics.watches_failing.clone(),
    );
    let wake = watches.wake.clone();
    let n = &config.names;
    let secrets = [
        &n.anchor_secret,
        &n.previous_anchor_secret,
        &config.issuer_secret,
    ]
    .map(|(ns, name)| {
        watches.reflect(
            format!("Secret {ns}/{name}"),
            Api::<Secret>::namespaced(client.clone(), ns),
            named(name),
            false,
        )
    })
    .to_vec();
    let (bundle_ns, bundle_name) = &n.bundle_configmap;
    let stores = Stores {
        rotation: watches.reflect(
            format!("TrustAnchorRotation {}", config.rotation_name),
            Api::all(client.clone()),
            named(&config.rotation_name),
            false,
        ),
        secrets,
        bundle: watches.reflect(
            format!("ConfigMap {bundle_ns}/{bundle_name}"),
            Api::namespaced(client.clone(), bundle_ns),
            named(bundle_name),
            true,
        ),
        pods: watches.reflect(
            format!("Pods labelled {CONTROL_PLANE_NS_LABEL}"),
            Api::all(client.clone()),
            watcher::Config::default().labels(CONTROL_PLANE_NS_LABEL),
            false,
        ),
        deployments: watches.reflect(
            "Deployments".to_owned(),
            Api::all(client.clone()),
            watcher::Config::default(),
            false,
        ),
        statefulsets: watches.reflect(
            "StatefulSets".to_owned(),
            Api::all(client.clone()),
            watcher::Config::default(),
            false,
        ),
        daemonsets: watches.reflect(
            "DaemonSets".to_owned(),
            Api::all(client.clone()),
            watcher::Config::default(),
            false,
        ),
    };
    // A store is ready once its watch has listed; its wait fails only if the watch's task
    // ended, which `stopped` then names.
    let synced = async {
        stores.rotation.wait_until_ready().await.is_ok()
            && stores.bundle.wait_until_ready().await.is_ok()
            && stores.pods.wait_until_ready().await.is_ok()
            && stores.deployments.wait_until_ready().await.is_ok()
            && stores.statefulsets.wait_until_ready().await.is_ok()
            && stores.daemonsets.wait_until_ready().await.is_ok()
            && futures::future::join_all(stores.secrets.iter().map(Store::wait_until_ready))
                .await
                .iter()
                .all(Result::is_ok)
    };
    // A watch that cannot list (a permission missing from the install, say) keeps the
    // reconciler from starting: the status says which, rather than nothing at all.
    let mut holding: Option<String> = None;
    tokio::pin!(synced);
    loop {
        match until_synced(&mut watches, synced.as_mut(), config.active_interval).await {
            Ok(true) => break,
            Ok(false) => {
                let failing = watches.failing.describe();
                track_holding(&client, &config, failing, &mut holding).await;
            }
            Err(stopped) => {
                tracing::error!("{stopped} before the reconciler synced; the reconciler stops");
                return;
            }
        }
    }
    tracing::info!("reconciler synced");
    let recorder = EventWriter {
        api: Api::namespaced(client.clone(), EVENTS_NAMESPACE),
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| MANAGER.to_owned()),
    };
    let mut memory = Memory::default();
    loop {
        // A failed watch may have missed changes: nothing is decided from its cache until it has
        // listed again (the pods that hold the bundle, above all, must be the pods there are).
        track_holding(&client, &config, watches.failing.describe(), &mut holding).await;
        let interval = if holding.is_some() {
            // The watch's list, once in, wakes us.
            config.active_interval
        } else {
            let pass = reconcile_once(&client, &config, &stores, &recorder, &metrics, &mut memory);
            match pass.await {
                Ok(Requeue::Soon) => config.active_interval,
                Ok(Requeue::Idle) => config.idle_interval,
                // Not `clamp`: it panics when `--reconcile-interval` is set above the idle interval.
                Ok(Requeue::Within(d)) => d.max(config.active_interval).min(config.idle_interval),
                // Said once, when refused: not again for each look that waits to retry it.
                Err(e) if e.only_not_yet_retried() => {
                    tracing::debug!(error = %e, "a refused write waits to be tried again");
                    config.active_interval
                }
                Err(e) => {
                    metrics.errors.inc();
                    tracing::warn!(error = %e, "reconcile failed; retrying");
                    config.active_interval
                }
            }
        };
        // Watch events wake us early; debounce a burst of them a little.
        tokio::select! {
            _ = tokio::time::timeout(interval, wake.notified()) => {}
            stopped = watches.stopped() => {
                tracing::error!("{stopped}; the reconciler stops rather than act on a cache that no longer changes");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Says (in the log, and in the status with [`say_holding`]) when the `failing` watches
/// change from what the reconciler was `holding` on, which it then records.
async fn track_holding(
    client: &Client,
    config: &ReconcilerConfig,
    failing: Option<String>,
    holding: &mut Option<String>,
) {
    match (&failing, &*holding) {
        (Some(now), before) if before.as_ref() != Some(now) => {
            tracing::warn!(
                failing = %now,
                "the reconciler holds: a failed watch may have missed changes; nothing is decided until it has listed again"
            );
            let why = format!(
                "{now}; a failed watch may have missed changes, so nothing is decided until it has listed again"
            );
            say_holding(client, config, &why).await;
        }
        (None, Some(_)) => tracing::info!("every watch has listed again; the reconciler resumes"),
        _ => {}
    }
    *holding = failing;
}

/// Leads the blockingMessage while the reconciler holds on a failed watch (after the urgent
/// prefix, if the status carried one).
pub const HOLDING: &str = "the reconciler holds: ";

/// Says in the rotation's status that the reconciler holds, and `why` (failed watches and
/// their errors, say): the status it last wrote stays, phase and counts, with that
/// blockingMessage. Read with a GET (the rotation's own watch may be the one failing); a write
/// that fails is logged, never a reason to stop. The next decision replaces the message.
async fn say_holding(client: &Client, config: &ReconcilerConfig, why: &str) {
    let name = &config.rotation_name;
    let rotation = match Api::<TrustAnchorRotation>::all(client.clone())
        .get_opt(name)
        .await
    {
        Ok(Some(rotation)) => rotation,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %crate::watch::api_words(&e), "reading TrustAnchorRotation {name} to say the reconciler holds");
            return;
        }
    };
    let mut status = rotation.status.clone().unwrap_or_default();
    let message = format!("{}{HOLDING}{why}", urgent_prefix(&status));
    if status.blocking_message.as_deref() == Some(message.as_str()) {
        return;
    }
    status.blocking_message = Some(message);
    let read_at = rotation.resource_version();
    if let Err(e) = write_status(client, name, &status, read_at.as_deref()).await {
        tracing::warn!(error = %e, "saying in the status that the reconciler holds");
    }
}

fn policies(spec: &TrustAnchorRotationSpec) -> Policies {
    Policies {
        restart: spec
            .data_plane_restart
            .as_ref()
            .map(|r| r.policy)
            .unwrap_or(RestartPolicy::Manual),
        max_concurrent_workloads: spec
            .data_plane_restart
            .as_ref()
            .and_then(|r| r.max_concurrent_workloads)
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_CONCURRENT_WORKLOADS),
        issuer_renewal: spec
            .issuer_renewal
            .as_ref()
            .map(|r| r.policy)
            .unwrap_or(RenewalPolicy::Manual),
        paused: spec.paused.unwrap_or(false),
        refresh_interval: spec.workload_certificate_refresh_interval.clone(),
    }
}

#[tracing::instrument(skip_all, fields(phase))]
async fn reconcile_once(
    client: &Client,
    config: &ReconcilerConfig,
    stores: &Stores,
    recorder: &EventWriter,
    metrics: &ReconcileMetrics,
    memory: &mut Memory,
) -> Result<Requeue, ReconcileError> {
    let Memory {
        own_writes,
        refused_restarts,
        retries,
        unseen_restarts,
        said_missing,
        said_certificate,
        published,
        seen_leaves,
        count_writes,
        announced_restarts,
        announced_writes,
        bundle_conflicts,
    } = memory;
    own_writes.confirm(client, config, stores).await;
    match own_writes.awaited(config, stores) {
        Awaited::No => {}
        Awaited::Yes => return Ok(Requeue::Soon),
        Awaited::Overdue(object) => {
            let why = format!(
                "its watch of {object} has not shown its own write of it for {OWN_WRITE_PATIENCE:?}; nothing is decided until it does (a watch that stopped delivering events: restarting the operator starts it anew)"
            );
            say_holding(client, config, &why).await;
            return Ok(Requeue::Soon);
        }
    }
    let Some(rotation) = stores.rotation.get(&ObjectRef::new(&config.rotation_name)) else {
        // Said once: a rotation never created (or a `--rotation-name` mistyped) is otherwise
        // a reconciler that is synced, ready and silent.
        if !std::mem::replace(said_missing, true) {
            tracing::warn!(
                "TrustAnchorRotation {} not found: nothing is rotated until it exists (see the README's TrustAnchorRotation resource)",
                config.rotation_name
            );
        }
        return Ok(Requeue::Idle);
    };
    if std::mem::replace(said_missing, false) {
        tracing::info!("TrustAnchorRotation {} found", config.rotation_name);
    }
    let stored = rotation.status.clone().unwrap_or_default();
    // The message of a hold now over is no input to the decision, which says anew what it
    // waits for (or that it waits for nothing).
    let mut status = stored.clone();
    if status
        .blocking_message
        .as_deref()
        .is_some_and(|m| m.contains(HOLDING))
    {
        status.blocking_message = None;
    }
    tracing::Span::current().record("phase", status.phase.as_str());
    let policies = policies(&rotation.spec);
    let now = tokio::time::Instant::now().into_std();
    forget_restarts(refused_restarts, status.phase, |w| stores.holds(w), now);
    let mut observed = observe(
        client,
        config,
        stores,
        refused_restarts,
        accelerating(status.phase),
        said_certificate,
    )
    .await?;
    unseen_restarts.show(&mut observed.restart_markers, now);
    if status.phase == crate::crd::Phase::RenewingWorkloadCerts {
        let probed = probe_leaves(config, &mut observed, seen_leaves, now).await;
        metrics.probed(&probed);
    } else {
        let issuer = observed.issuer.as_ref().ok();
        seen_leaves.clear(issuer.map(|i| i.cert.fingerprint.as_str()));
    }
    let decision = decide(&policies, &config.names, &status, &observed);
    let mut reference = rotation.object_ref(&());
    reference.namespace = None;
    // Every status write carries the resourceVersion the decision was made from: a watch cache
    // that has not yet shown the last write (ours or anyone's) fails it with a conflict, and
    // the step is decided again from a fresh look instead of being written, and announced,
    // twice.
    let read_at = rotation.resource_version();
    let read_at = read_at.as_deref();
    // The writes first, in order, each only if the one before it landed; then the status that
    // records them; the step's events (which say what was done) only once that has landed.
    let (events, writes): (Vec<&Effect>, Vec<&Effect>) = decision
        .effects
        .iter()
        .partition(|e| matches!(e, Effect::Event { .. }));
    let wrote = !writes.is_empty();
    for effect in writes {
        let target = OwnWrite::target(effect);
        let before = target.and_then(|t| t.version(config, stores));
        let written = execute(
            client,
            config,
            recorder,
            &reference,
            effect,
            (refused_restarts, retries, unseen_restarts),
        )
        .await;
        if let (Some(target), Ok(after)) = (target, &written) {
            own_writes.wrote(target, before, after.clone());
        }
        if written.is_ok() && matches!(effect, Effect::WriteBundle { .. }) {
            *bundle_conflicts = 0;
        }
        if let Err(error) = written {
            let bundle_write = matches!(effect, Effect::WriteBundle { .. });
            if bundle_write && error.conflict() {
                // Decided from a version that has changed since: nothing was written, and the
                // step is decided again from a fresh look (as a stale status write is). Quietly,
                // unless it keeps happening (a writer that changes the ConfigMap faster than a
                // look takes): then it is a step that fails, said in the status in the API
                // server's words.
                *bundle_conflicts += 1;
                if *bundle_conflicts < CONFLICT_PATIENCE {
                    tracing::info!(error = %error, "the bundle ConfigMap changed since the look; deciding again");
                    return Ok(Requeue::Soon);
                }
            }
            // What did go ahead is rolling: said as the step would have said it (a Normal
            // event for each batch, as the restarts themselves), whatever becomes of the status
            // write below. Each restart once: a look that decides one again (its watch has not
            // shown it yet, and the repeated patch changes nothing) does not announce it again.
            if let Some((reason, message)) = error.restarted(announced_restarts) {
                recorder.say(&reference, false, reason, &message).await;
            }
            // The step did not happen, or only in part: the status stays where it was (the
            // next look decides again from what landed) and says why it is stuck.
            let held = failed_step_status(&status, &decision.status, &error);
            metrics.record(&status, &held, &observed);
            // Said once per failure: a look that only counted pods anew writes no event.
            let news = held.blocking_message != stored.blocking_message;
            let now = Instant::now();
            let write = held != stored && count_writes.hold(&stored, &held, now).is_none();
            let written = if write {
                write_status(client, &config.rotation_name, &held, read_at).await
            } else {
                Ok(StatusWrite::Stale)
            };
            // The step's failure is the one to act on: a status write that fails too is only
            // logged beside it.
            if let Err(status_error) = &written {
                tracing::warn!(error = %status_error, step = %error, "could not say in the status why the step failed");
            }
            if let Ok(StatusWrite::Written(_)) = written {
                count_writes.wrote(&stored, &held, now);
                if news {
                    for (warning, reason, message) in failed_step_events(&held, &events) {
                        recorder.say(&reference, warning, reason, message).await;
                    }
                }
            }
            return Err(error);
        }
    }
    // The rotation's version once this look's status is in: the one it was read at when the
    // status is unchanged.
    let mut written_at = read_at.map(str::to_owned);
    let mut requeue = decision.requeue;
    if decision.status != stored {
        let now = Instant::now();
        match count_writes.hold(&stored, &decision.status, now) {
            Some(wait) => requeue = requeue.within(wait),
            None => match write_status(client, &config.rotation_name, &decision.status, read_at)
                .await?
            {
                StatusWrite::Stale => {
                    // The step's writes went through all the same, and a look from a fresh
                    // status will find them done, and neither decide nor say them again: what
                    // they did is said now, each once.
                    let said = events.iter().filter(|e| wrote && announces_a_write(e));
                    for effect in said {
                        if !announced_writes.contains(effect) {
                            announced_writes.push((*effect).clone());
                            recorder.say_effect(&reference, effect).await;
                        }
                    }
                    return Ok(Requeue::Soon);
                }
                StatusWrite::Written(version) => {
                    written_at = version;
                    count_writes.wrote(&stored, &decision.status, now);
                }
            },
        }
    }
    // The metrics follow the status as decided (the counts too when their write waits),
    // without waiting on the Events' writes.
    metrics.record(&status, &decision.status, &observed);
    // Writes said already (a look whose watch has not shown them yet decides them again) are
    // not said again; those this look decided are what the next one must not repeat.
    let decided_writes: Vec<Effect> = (events.iter())
        .filter(|e| announces_a_write(e))
        .map(|e| (*e).clone())
        .collect();
    let events = published.fresh(written_at, events);
    let said = std::mem::replace(announced_writes, decided_writes);
    for effect in events.into_iter().filter(|e| !said.contains(*e)) {
        recorder.say_effect(&reference, effect).await;
    }
    // Every write of the step went through: a partly failed step decided again later is news,
    // and a conflict on the bundle the first of a new run.
    announced_restarts.clear();
    *bundle_conflicts = 0;
    Ok(requeue)
}

/// In `Synced`, a status that differs from the one stored by its pod counts alone is written at
/// most once in this long: on a busy cluster, meshed pods come and go several times a second,
/// and each change would otherwise be a write of the rotation (an etcd write, and an event to
/// every watcher of it). During a rotation the counts are its progress, and every change is
/// written.
const COUNTS_GAP: Duration = Duration::from_secs(5);

/// When the last status write that changed only the counts in `Synced` went in.
#[derive(Debug, Default)]
struct CountWrites {
    last: Option<Instant>,
}

impl CountWrites {
    /// The wait left before `decided` may replace `stored`, when it changes the counts alone
    /// within [`COUNTS_GAP`] of the last such write.
    fn hold(
        &self,
        stored: &TrustAnchorRotationStatus,
        decided: &TrustAnchorRotationStatus,
        now: Instant,
    ) -> Option<Duration> {
        let due = self.last? + COUNTS_GAP;
        (now < due && counts_only_change(stored, decided)).then(|| due - now)
    }

    /// `decided` replaced `stored` at `now`.
    fn wrote(
        &mut self,
        stored: &TrustAnchorRotationStatus,
        decided: &TrustAnchorRotationStatus,
        now: Instant,
    ) {
        self.last = counts_only_change(stored, decided).then_some(now);
    }
}

/// Whether `decided` differs from `stored` only by the pod counts, both in `Synced`.
fn counts_only_change(
    stored: &TrustAnchorRotationStatus,
    decided: &TrustAnchorRotationStatus,
) -> bool {
    let without_counts = |s: &TrustAnchorRotationStatus| TrustAnchorRotationStatus {
        trust_bundle: None,
        workload_certificates: None,
        ..s.clone()
    };
    stored.phase == crate::crd::Phase::Synced
        && decided.phase == crate::crd::Phase::Synced
        && without_counts(stored) == without_counts(decided)
}

/// The status after a step's write failed: the previous one, phase and all, with a
/// blockingMessage naming what failed (after the urgent prefix, if the step carried one).
fn failed_step_status(
    previous: &TrustAnchorRotationStatus,
    decided: &TrustAnchorRotationStatus,
    error: &ReconcileError,
) -> TrustAnchorRotationStatus {
    let mut held = TrustAnchorRotationStatus {
        blocking_message: Some(format!(
            "{}could not carry out the next step, retrying: {error}",
            urgent_prefix(decided),
        )),
        ..previous.clone()
    };
    // Within the same phase the pod counts are what this look saw, whatever became of its
    // step (one workload that cannot be restarted must not freeze `kubectl get tar`); a step
    // into another phase counts against that phase's bundle, so they stay as they were.
    if decided.phase == previous.phase {
        held.trust_bundle = decided.trust_bundle.clone();
        held.workload_certificates = decided.workload_certificates.clone();
    }
    // An issuer renewed out of order is an observation, true whether or not the step's writes
    // land: raised now, with the urgent prefix, not once the step goes through. (The bundle's
    // contest is not: it counts restores, and this one did not happen.)
    if let Some(out_of_order) = decided
        .conditions
        .iter()
        .find(|c| c.type_ == OUT_OF_ORDER_CONDITION)
    {
        held.conditions
            .retain(|c| c.type_ != OUT_OF_ORDER_CONDITION);
        held.conditions.push(out_of_order.clone());
    }
    held
}

/// The events of a look whose step failed, once its held status ([`failed_step_status`]) has
/// landed: `StepFailed`, saying what the status says; and the out-of-order issuer renewal the
/// held status raised, which the next look, seeing the condition raised, would not announce.
/// The step's other events say what it did, and it did not.
fn failed_step_events<'a>(
    held: &'a TrustAnchorRotationStatus,
    events: &[&'a Effect],
) -> Vec<(bool, &'a str, &'a str)> {
    let failed = held.blocking_message.as_deref().unwrap_or_default();
    let raised = events.iter().filter_map(|e| match e {
        Effect::Event {
            warning,
            reason,
            message,
        } if reason == OUT_OF_ORDER_CONDITION => {
            Some((*warning, reason.as_str(), message.as_str()))
        }
        _ => None,
    });
    std::iter::once((true, "StepFailed", failed))
        .chain(raised)
        .collect()
}

/// `URGENT: ...; ` when `status`'s blockingMessage leads with it, for a message that replaces
/// the rest; else nothing.
fn urgent_prefix(status: &TrustAnchorRotationStatus) -> String {
    match status.blocking_message.as_deref() {
        Some(m) if m.starts_with(OUT_OF_ORDER_URGENT) => format!("{OUT_OF_ORDER_URGENT}; "),
        _ => String::new(),
    }
}

/// Who wrote the bundle's `key` over the operator's last write of the ConfigMap (see
/// [`BundleMeta::overwritten_by`]). The operator's write (server-side apply with force) owns
/// the key; a later write of another value takes it away. So the key is overwritten when the
/// operator still manages a field of the ConfigMap (its annotations, which every write sets:
/// [`WRITTEN_BUNDLE_ANNOTATION`]) but no longer the key, and other managers do. One that
/// applied the same value shares the key with the operator, and is no overwrite.
pub fn overwritten_by(cm: &ConfigMap, key: &str) -> Vec<String> {
    let entries = cm.metadata.managed_fields.as_deref().unwrap_or_default();
    let ours: Vec<_> = entries
        .iter()
        .filter(|e| e.manager.as_deref() == Some(MANAGER))
        .collect();
    if ours.is_empty() || ours.iter().any(|e| holds_key(e, key)) {
        return Vec::new();
    }
    key_holders(cm, key)
}

/// The field managers that hold `key` of the ConfigMap's `data` (sorted).
pub fn key_holders(cm: &ConfigMap, key: &str) -> Vec<String> {
    let entries = cm.metadata.managed_fields.as_deref().unwrap_or_default();
    let managers: BTreeSet<String> = entries
        .iter()
        .filter(|e| holds_key(e, key))
        .filter_map(|e| e.manager.clone())
        .collect();
    managers.into_iter().collect()
}

fn holds_key(
    entry: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    key: &str,
) -> bool {
    entry
        .fields_v1
        .as_ref()
        .and_then(|f| f.0.get("f:data"))
        .is_some_and(|data| data.get(format!("f:{key}")).is_some())
}

/// The world as the watches show it. `read_issuing`: also fetch the issuer Certificate's
/// `Issuing` condition (one GET), which only some phases use.
async fn observe(
    client: &Client,
    config: &ReconcilerConfig,
    stores: &Stores,
    refused_restarts: &BTreeMap<Workload, FailedRestart>,
    read_issuing: bool,
    said_certificate: &mut Lasting,
) -> Result<Observed, ReconcileError> {
    let n = &config.names;
    let secret_of = |store: &Store<Secret>, (ns, name): &(String, String)| {
        store.get(&ObjectRef::new(name).within(ns))
    };
    let secret_cert = |secret: &Secret, object: &str, keys: &[&str]| {
        let data = secret.data.clone().unwrap_or_default();
        let Some((key, bytes)) = keys
            .iter()
            .find_map(|k| data.get(*k).map(|v| (*k, v.0.clone())))
        else {
            return Err(Problem {
                object: object.to_owned(),
                message: format!("has none of the keys {}", keys.join(", ")),
            });
        };
        let text = String::from_utf8(bytes).map_err(|_| Problem {
            object: object.to_owned(),
            message: format!("{key} is not text"),
        })?;
        certs::parse_first(object, key, &text)
    };

    let anchor_object = format!("Secret {}/{}", n.anchor_secret.0, n.anchor_secret.1);
    let anchor = match secret_of(&stores.secrets[0], &n.anchor_secret) {
        Some(s) => secret_cert(&s, &anchor_object, &["tls.crt"]),
        None => Err(Problem {
            object: anchor_object,
            message: "not found".to_owned(),
        }),
    };
    let previous_object = format!(
        "Secret {}/{}",
        n.previous_anchor_secret.0, n.previous_anchor_secret.1
    );
    let previous = match secret_of(&stores.secrets[1], &n.previous_anchor_secret) {
        // The operator writes this Secret as `Opaque`, the certificate alone, and a Secret's
        // type cannot change: one of another type (a copy of the anchor's `kubernetes.io/tls`
        // Secret, say) would refuse the write that ends every rotation.
        Some(s) if s.type_.as_deref().is_some_and(|t| t != "Opaque") => Err(Problem {
            object: previous_object.clone(),
            message: format!(
                "has type {}, and a Secret's type cannot change: the operator keeps the previous anchor in an Opaque Secret, the certificate alone; delete this one while the rotation is Synced and the operator writes it again",
                s.type_.as_deref().unwrap_or_default()
            ),
        }),
        Some(s) => secret_cert(&s, &previous_object, &["ca.crt", "tls.crt"]).map(Some),
        None => Ok(None),
    };
    let bundle_object = format!(
        "ConfigMap {}/{}",
        n.bundle_configmap.0, n.bundle_configmap.1
    );
    // One read of the ConfigMap for its anchors and its version, which make the restart
    // marker together.
    let bundle_configmap = stores
        .bundle
        .get(&ObjectRef::new(&n.bundle_configmap.1).within(&n.bundle_configmap.0));
    let bundle_meta = bundle_configmap
        .as_deref()
        .map(|cm| BundleMeta {
            version: cm.resource_version(),
            written_over: cm.annotations().get(WRITTEN_OVER_ANNOTATION).cloned(),
            overwritten_by: overwritten_by(cm, &config.bundle_key),
            annotated: cm.annotations().contains_key(WRITTEN_BUNDLE_ANNOTATION),
            key_holders: key_holders(cm, &config.bundle_key),
        })
        .unwrap_or_default();
    let bundle = match bundle_configmap
        .as_deref()
        .map(|cm| crate::bundle::configmap_text(cm, &config.bundle_key))
    {
        Some(Ok(Some(text))) => {
            certs::parse_bundle(&bundle_object, &config.bundle_key, text).map(Some)
        }
        Some(Ok(None)) | None => Ok(None),
        Some(Err(message)) => Err(Problem {
            object: bundle_object.clone(),
            message,
        }),
    };
    let issuer_object = format!(
        "Secret {}/{}",
        config.issuer_secret.0, config.issuer_secret.1
    );
    let issuer_cert = match secret_of(&stores.secrets[2], &config.issuer_secret) {
        Some(s) => secret_cert(&s, &issuer_object, &["tls.crt"]),
        None => Err(Problem {
            object: issuer_object,
            message: "not found".to_owned(),
        }),
    };
    let mut control_plane: Vec<ControlPlaneDeployment> = stores
        .deployments
        .state()
        .iter()
        .filter(|d| {
            d.namespace().as_deref() == Some(config.linkerd_namespace.as_str())
                && d.labels().get(CONTROL_PLANE_NS_LABEL) == Some(&config.linkerd_namespace)
        })
        .map(|d| ControlPlaneDeployment {
            name: d.name_any(),
            identity_controller: is_identity_controller(d.labels()),
            restarted_for: template_annotation(d.template(), RESTART_ANNOTATION),
            rollout_complete: d.rollout_complete(),
            proxy: control_plane_proxy(d.template()),
            refresh_set_by_operator: template_annotation(d.template(), PROXY_REFRESH_ANNOTATION),
            replicas: (d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
                .max(d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0))
                .try_into()
                .unwrap_or(0),
        })
        .collect();
    // In the order of their names, not the cache's: messages and restarts come the same way on
    // every look.
    control_plane.sort_by(|a, b| a.name.cmp(&b.name));
    let mut anchors_cache = AnchorTexts::default();
    let mut baked_templates = BTreeMap::new();
    let (cache, baked) = (&mut anchors_cache, &mut baked_templates);
    baked_anchors_of(&stores.deployments, config, cache, baked);
    baked_anchors_of(&stores.statefulsets, config, cache, baked);
    baked_anchors_of(&stores.daemonsets, config, cache, baked);
    let mut restart_markers: BTreeMap<Workload, RestartMarkers> = markers_of(&stores.deployments)
        .chain(markers_of(&stores.statefulsets))
        .chain(markers_of(&stores.daemonsets))
        .collect();
    let all_pods = stores.pods.state();
    mark_pods_not_starting(&mut restart_markers, all_pods.iter().map(|p| &**p));
    let now = k8s_openapi::jiff::Timestamp::now();
    let wont_roll = |w: &Workload, p: &Pod| {
        let (name, ns) = (w.name.as_str(), w.namespace.as_str());
        let pod = p.name_any();
        match w.kind.as_str() {
            "Deployment" => match stores.deployments.get(&ObjectRef::new(name).within(ns)) {
                Some(d) => (d.spec.as_ref().and_then(|s| s.paused) == Some(true))
                    .then(|| Unfixable::Paused(w.clone())),
                // Its ReplicaSet was orphaned (`kubectl delete deployment --cascade=orphan`):
                // there is no Deployment to restart. Not for a pod just created, which may
                // come before its Deployment's watch event.
                None => p
                    .creation_timestamp()
                    .is_some_and(|t| now.duration_since(t.0) > ORPHAN_AGE)
                    .then(|| {
                        let replica_set = p
                            .owner_references()
                            .iter()
                            .find(|o| o.controller == Some(true))
                            .map_or(String::new(), |o| o.name.clone());
                        Unfixable::Owner(format!(
                            "ReplicaSet {replica_set}, whose Deployment {name} does not exist"
                        ))
                    }),
            },
            "StatefulSet" => {
                let set = stores.statefulsets.get(&ObjectRef::new(name).within(ns));
                let on_delete = set
                    .as_ref()
                    .and_then(|s| s.spec.as_ref()?.update_strategy.as_ref()?.type_.as_deref())
                    == Some("OnDelete");
                let partition = set.as_deref().map_or(0, partition);
                // A StatefulSet's pods are named `<set>-<ordinal>`.
                let ordinal = pod
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|o| o.parse::<i32>().ok());
                if on_delete {
                    Some(Unfixable::OnDelete(format!("{} {ns}/{name}", w.kind)))
                } else if ordinal.is_some_and(|o| o < partition) {
                    Some(Unfixable::Partitioned {
                        workload: w.clone(),
                        partition,
                    })
                } else {
                    None
                }
            }
            "DaemonSet" => stores
                .daemonsets
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|d| d.spec.as_ref()?.update_strategy.as_ref()?.type_.clone())
                .filter(|t| t == "OnDelete")
                .map(|_| Unfixable::OnDelete(format!("{} {ns}/{name}", w.kind))),
            _ => None,
        }
    };
    let (mut pods, mut starting, mut draining) = (Vec::new(), Vec::new(), Vec::new());
    for p in all_pods.iter() {
        let deleting = p.metadata.deletion_timestamp.as_ref().map(|t| t.0);
        match (live(p), deleting) {
            (true, None) => pods.push(meshed_pod(config, p, &mut anchors_cache, &wont_roll)),
            // Deleted: its containers may still run until its grace period runs out (the API
            // server sets `deletionTimestamp` to the deletion time plus the grace period, on
            // its clock, which the operator's may run ahead of; and the kubelet takes a moment
            // to stop them). Still listed well past that, it is on a node that no longer
            // reports, and would hold the rotation for as long.
            (true, Some(deadline)) if deadline + DRAIN_SLACK > now => {
                draining.push(meshed_pod(config, p, &mut anchors_cache, &wont_roll))
            }
            // Not started yet, and not deleted (a pod deleted before its proxy started never
            // will start it): its anchors count for the bundle all the same.
            (false, None) if phase(p) == Some("Pending") => {
                let pod = meshed_pod(config, p, &mut anchors_cache, &wont_roll);
                if !pod.control_plane {
                    starting.push(pod);
                }
            }
            _ => {}
        }
    }
    // The anchors proxies hold, read from their env: what the signer of the issuer, or an
    // anchor the bundle lost mid-rotation, can be found among (see `Observed::held_anchors`).
    let held_anchors = anchors_cache.certs();
    let issuer = match issuer_cert {
        Ok(cert) => {
            let candidates: Vec<&Cert> = [
                anchor.as_ref().ok(),
                previous.as_ref().ok().and_then(|p| p.as_ref()),
            ]
            .into_iter()
            .flatten()
            .chain(
                bundle
                    .as_ref()
                    .ok()
                    .and_then(|b| b.as_ref())
                    .into_iter()
                    .flatten(),
            )
            .chain(&held_anchors)
            .collect();
            let child = certs::der(&cert.pem).unwrap_or_default();
            let signed_by = certs::signer_of(&child, &candidates).map(|a| a.fingerprint.clone());
            let (issuing, failure) = if read_issuing {
                issuer_issuance(
                    client,
                    &n.issuer_certificate,
                    cert.not_after,
                    said_certificate,
                )
                .await
            } else {
                // Not read: a failure still there in the next rotation is said again.
                said_certificate.forget();
                (false, None)
            };
            Ok(Issuer {
                cert,
                signed_by,
                issuing,
                failure,
            })
        }
        Err(p) => Err(p),
    };

    Ok(Observed {
        now: now.as_second(),
        anchor,
        previous,
        bundle,
        issuer,
        control_plane,
        pods,
        starting,
        draining,
        restart_markers,
        baked_templates,
        refused_restarts: (refused_restarts.iter())
            .map(|(w, failed)| (w.clone(), failed.restart_for.clone()))
            .collect(),
        bundle_meta,
        held_anchors,
        // Set by the leaf probes, which know since when the issuer is seen.
        issuer_reload: None,
    })
}

fn certificate_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// The issuer Certificate's issuance, read with one GET per look in the accelerating phases
/// only (no watch on cert-manager's Certificates, whose CRD may be missing): see
/// [`issuance_of`].
///
/// A failure to read it is logged once, and again only when it changes (`said`): looks come
/// every 2 s, and a lasting one (no permission, say) would otherwise fill the log.
async fn issuer_issuance(
    client: &Client,
    (ns, name): &(String, String),
    cached_not_after: i64,
    said: &mut Lasting,
) -> (bool, Option<IssuanceFailure>) {
    let read = certificate_api(client, ns).get_opt(name).await;
    let failure = read
        .as_ref()
        .err()
        .map(|e| crate::watch::api_words(e).to_string());
    let certificate = format!("{ns}/{name}");
    match said.record(failure) {
        Lasted::Failing(error) => {
            tracing::warn!(%certificate, %error, "reading the issuer Certificate (said again only if the failure changes)")
        }
        Lasted::Cleared => {
            tracing::info!(%certificate, "the issuer Certificate can be read again")
        }
        Lasted::Unchanged => {}
    }
    match read {
        Ok(Some(cert)) => issuance_of(&cert.data["status"], cached_not_after),
        Ok(None) => (false, None),
        // Read as "not issuing, no failure": the worst that follows is the automatic policy
        // setting `Issuing=True` again, which is idempotent (and fails the same way if the API
        // does).
        Err(_) => (false, None),
    }
}

/// From a Certificate's `status`: whether the issuer's renewal is under way, and cert-manager's
/// record of its last failed issuance, if one stands.
///
/// Under way: `Issuing=True`, or an issuance the Certificate records (`notAfter`) that the
/// watched Secret, `cached_not_after`, does not show yet. cert-manager writes the Secret, then
/// clears `Issuing`: a look between the two, from a Secret cache that lags, would otherwise
/// read "not renewed, not issuing" and renew twice.
///
/// Failed: `lastFailureTime`, which cert-manager sets on each failure and clears on success,
/// with `failedIssuanceAttempts` and the reason and message of an `Issuing=False` condition.
fn issuance_of(
    status: &serde_json::Value,
    cached_not_after: i64,
) -> (bool, Option<IssuanceFailure>) {
    let time = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_second())
    };
    let conditions = status["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let issuing_condition = conditions.iter().find(|c| c["type"] == "Issuing");
    let issuing = issuing_condition.is_some_and(|c| c["status"] == "True");
    let issued_since = time(&status["notAfter"]).is_some_and(|t| t > cached_not_after);
    let text = |c: &serde_json::Value, field: &str| c[field].as_str().map(str::to_owned);
    let failure = time(&status["lastFailureTime"]).map(|at| {
        let failed_condition = issuing_condition.filter(|c| c["status"] == "False");
        IssuanceFailure {
            at,
            attempts: status["failedIssuanceAttempts"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok()),
            reason: failed_condition.and_then(|c| text(c, "reason")),
            message: failed_condition.and_then(|c| text(c, "message")),
        }
    });
    (issuing || issued_since, failure)
}

/// A StatefulSet's `rollingUpdate.partition`, 0 without one: replicas with a lower ordinal
/// are never updated by a template change.
fn partition(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| {
            s.update_strategy
                .as_ref()?
                .rolling_update
                .as_ref()?
                .partition
        })
        .unwrap_or(0)
}

/// A pod spec's `linkerd-proxy` container (a sidecar, or a native sidecar), and which list
/// holds it.
fn proxy_container(spec: &PodSpec) -> Option<(ProxyList, &Container)> {
    spec.containers
        .iter()
        .map(|c| (ProxyList::Containers, c))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| (ProxyList::InitContainers, c)),
        )
        .find(|(_, c)| c.name == PROXY_CONTAINER)
}

/// A container's env value for `name`: the last definition wins, as in Kubernetes.
fn env_value(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .as_ref()?
        .iter()
        .rev()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// A control-plane pod template's proxy container: which list holds it, and its refresh
/// interval.
fn control_plane_proxy(template: Option<&PodTemplateSpec>) -> Option<ControlPlaneProxy> {
    let (list, proxy) = proxy_container(template?.spec.as_ref()?)?;
    Some(ControlPlaneProxy {
        list,
        max_refresh: env_value(proxy, MAX_REFRESH_ENV),
    })
}

fn template_annotation(template: Option<&PodTemplateSpec>, name: &str) -> Option<String> {
    template?
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(name)
        .cloned()
}

/// The kinds the operator restarts, alike: their pod template and `kubectl rollout status`.
pub trait Restartable: Resource<DynamicType = ()> + Clone {
    const KIND: &'static str;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn rollout_complete(&self) -> bool;
    /// Pods are still being replaced (see [`RestartMarkers::replacing`]).
    fn rollout_replacing(&self) -> bool;
    /// Why the rollout will not finish by itself, where the workload says so.
    fn rollout_stalled(&self) -> Option<String> {
        None
    }
}

impl Restartable for Deployment {
    const KIND: &'static str = "Deployment";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    /// The controller saw the newest spec, every replica is updated and available, and no old
    /// replica is left.
    fn rollout_complete(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(st) = &self.status else { return false };
        st.observed_generation >= self.metadata.generation
            && st.updated_replicas.unwrap_or(0) == want
            && st.replicas.unwrap_or(0) == want
            && st.available_replicas.unwrap_or(0) == want
    }
    /// The controller has not seen the newest spec, or replicas of an older template are
    /// left, or not every replica runs the newest one.
    fn rollout_replacing(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(st) = &self.status else { return true };
        st.observed_generation < self.metadata.generation
            || st.updated_replicas.unwrap_or(0) < want
            || st.replicas.unwrap_or(0) > st.updated_replicas.unwrap_or(0)
    }
    /// `Progressing=False`: the Deployment controller gave up waiting for the rollout after
    /// `progressDeadlineSeconds` (reason `ProgressDeadlineExceeded`).
    fn rollout_stalled(&self) -> Option<String> {
        let conditions = self.status.as_ref()?.conditions.as_deref()?;
        let c = conditions
            .iter()
            .find(|c| c.type_ == "Progressing" && c.status == "False")?;
        Some(reason_and_message(
            c.reason.as_deref(),
            c.message.as_deref(),
            "Progressing=False",
        ))
    }
}

impl Restartable for StatefulSet {
    const KIND: &'static str = "StatefulSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    /// Every replica updated and ready, on one revision; with a `rollingUpdate.partition`,
    /// every replica the partition lets roll (the others are never updated, so waiting for
    /// them would wait forever; their pods are counted, and named, as not converged).
    fn rollout_complete(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let partition = partition(self).clamp(0, want);
        let Some(st) = &self.status else { return false };
        st.observed_generation >= self.metadata.generation
            && st.updated_replicas.unwrap_or(0) >= want - partition
            && st.ready_replicas.unwrap_or(0) == want
            && (partition > 0 || st.current_revision == st.update_revision)
    }
    /// The controller has not seen the newest spec, or replicas above the partition still run
    /// an older revision.
    fn rollout_replacing(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let partition = partition(self).clamp(0, want);
        let Some(st) = &self.status else { return true };
        st.observed_generation < self.metadata.generation
            || st.updated_replicas.unwrap_or(0) < want - partition
            || (partition == 0 && st.current_revision != st.update_revision)
    }
}

impl Restartable for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    /// Every scheduled pod updated and available.
    fn rollout_complete(&self) -> bool {
        let Some(st) = &self.status else { return false };
        st.observed_generation >= self.metadata.generation
            && st.updated_number_scheduled.unwrap_or(0) == st.desired_number_scheduled
            && st.number_available.unwrap_or(0) == st.desired_number_scheduled
    }
    /// The controller has not seen the newest spec, or nodes still run an older pod.
    fn rollout_replacing(&self) -> bool {
        let Some(st) = &self.status else { return true };
        st.observed_generation < self.metadata.generation
            || st.updated_number_scheduled.unwrap_or(0) < st.desired_number_scheduled
    }
}

/// The operator's restart markers, and the rollout's state, of each workload of one kind that
/// has any.
fn markers_of<K: Restartable>(
    store: &Store<K>,
) -> impl Iterator<Item = (Workload, RestartMarkers)> {
    store.state().into_iter().filter_map(|w| {
        let bundle = template_annotation(w.template(), RESTART_ANNOTATION);
        let issuer = template_annotation(w.template(), LEAF_RESTART_ANNOTATION);
        (bundle.is_some() || issuer.is_some()).then(|| {
            (
                Workload {
                    kind: K::KIND.to_owned(),
                    namespace: w.namespace().unwrap_or_default(),
                    name: w.name_any(),
                },
                RestartMarkers {
                    bundle,
                    issuer,
                    rollout_complete: w.rollout_complete(),
                    replacing: w.rollout_replacing(),
                    stalled: w.rollout_stalled(),
                    not_starting: None,
                },
            )
        })
    })
}

/// Adds to `into` the workloads of `store` whose pod template carries the proxy with literal
/// trust anchors (`linkerd inject`), with the anchors' fingerprints; the control plane's own
/// Deployments, which read the bundle from its ConfigMap and are restarted onto it, are left
/// out.
fn baked_anchors_of<K: Restartable>(
    store: &Store<K>,
    config: &ReconcilerConfig,
    cache: &mut AnchorTexts,
    into: &mut BTreeMap<Workload, Option<BTreeSet<String>>>,
) {
    for w in store.state() {
        let control_plane = w.namespace().as_deref() == Some(config.linkerd_namespace.as_str())
            && w.labels().get(CONTROL_PLANE_NS_LABEL) == Some(&config.linkerd_namespace);
        let text = w
            .template()
            .and_then(|t| t.spec.as_ref())
            .and_then(proxy_container)
            .and_then(|(_, proxy)| env_value(proxy, TRUST_ANCHORS_ENV));
        if let (false, Some(text)) = (control_plane, text) {
            let workload = Workload {
                kind: K::KIND.to_owned(),
                namespace: w.namespace().unwrap_or_default(),
                name: w.name_any(),
            };
            into.insert(workload, cache.fingerprints(text));
        }
    }
}

/// The trust anchors in proxies' literal trust-anchors env, parsed once per distinct text in a
/// look (`None` for a text that does not parse).
#[derive(Default)]
struct AnchorTexts(BTreeMap<String, Option<Vec<Cert>>>);

impl AnchorTexts {
    /// The fingerprints of the anchors in `text` (`None` when they do not parse).
    fn fingerprints(&mut self, text: String) -> Option<BTreeSet<String>> {
        let certs = (self.0.entry(text)).or_insert_with_key(|text| {
            certs::parse_bundle("proxy env", TRUST_ANCHORS_ENV, text).ok()
        });
        let certs = certs.as_ref()?;
        Some(certs.iter().map(|c| c.fingerprint.clone()).collect())
    }

    /// Every anchor read, each once.
    fn certs(self) -> Vec<Cert> {
        let mut seen = BTreeSet::new();
        (self.0.into_values().flatten().flatten())
            .filter(|c| seen.insert(c.fingerprint.clone()))
            .collect()
    }
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref()?.phase.as_deref()
}

/// Its proxy runs: the pod is Running, or Pending with its proxy, a native sidecar, started
/// ahead of the init containers after it.
fn live(p: &Pod) -> bool {
    match phase(p) {
        Some("Running") => true,
        Some("Pending") => p
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .is_some_and(|statuses| {
                statuses
                    .iter()
                    .any(|c| c.name == PROXY_CONTAINER && c.started == Some(true))
            }),
        _ => false,
    }
}

/// The workload whose rollout replaces `p`: its controller, a Deployment through its
/// ReplicaSet (named `<deployment>-<pod-template-hash>`).
fn controller_of(p: &Pod) -> Result<Workload, Unfixable> {
    let namespace = p.namespace().unwrap_or_default();
    let Some(o) = p
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return Err(Unfixable::BarePod);
    };
    match o.kind.as_str() {
        "ReplicaSet" => {
            let hash = p.labels().get("pod-template-hash");
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(d) => Ok(Workload {
                    kind: "Deployment".to_owned(),
                    namespace,
                    name: d.to_owned(),
                }),
                None => Err(Unfixable::Owner(format!("ReplicaSet {}", o.name))),
            }
        }
        "StatefulSet" | "DaemonSet" => Ok(Workload {
            kind: o.kind.clone(),
            namespace,
            name: o.name.clone(),
        }),
        other => Err(Unfixable::Owner(format!("{other} {}", o.name))),
    }
}

/// Why `p` is not starting, in the scheduler's or the kubelet's words: no node will take it
/// (`PodScheduled=False`, reason `Unschedulable`), or a container (init containers first, as
/// they run) waits in a back-off or on an error that does not clear by waiting: a crash loop,
/// an image that cannot be pulled, a configuration that cannot be mounted. Waiting for an
/// image or for the container to be created is starting, not stuck.
fn not_starting(p: &Pod) -> Option<String> {
    /// The kubelet's waiting reasons that a rollout does not get past by itself.
    const STUCK: [&str; 7] = [
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    ];
    let status = p.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Some(reason_and_message(
            c.reason.as_deref(),
            c.message.as_deref(),
            "Unschedulable",
        ));
    }
    let containers = status.init_container_statuses.iter().flatten();
    containers
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            STUCK.contains(&reason).then(|| {
                let why = reason_and_message(Some(reason), waiting.message.as_deref(), reason);
                format!("container {}: {why}", c.name)
            })
        })
}

/// Marks each rollout in progress with one of its new pods (those carrying the template's
/// restart markers: the old ones are being replaced, whatever ails them) that is not starting
/// ([`not_starting`]), so that a rollout Kubernetes reports no stall for still has a cause to
/// read.
fn mark_pods_not_starting<'a>(
    markers: &mut BTreeMap<Workload, RestartMarkers>,
    pods: impl IntoIterator<Item = &'a Pod>,
) {
    if markers.values().all(|m| m.rollout_complete) {
        return;
    }
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // Most pods are starting or running: the cheap test first.
        let Some(why) = not_starting(p) else {
            continue;
        };
        let Ok(workload) = controller_of(p) else {
            continue;
        };
        let Some(m) = markers.get_mut(&workload) else {
            continue;
        };
        let annotation = |name| p.annotations().get(name);
        let new = annotation(RESTART_ANNOTATION) == m.bundle.as_ref()
            && annotation(LEAF_RESTART_ANNOTATION) == m.issuer.as_ref();
        if new && !m.rollout_complete && m.not_starting.is_none() {
            let name = format!("{}/{}", workload.namespace, p.name_any());
            m.not_starting = Some(format!("pod {name} is not starting: {why}"));
        }
    }
}

/// The outcome of a step's restarts, those `done` and those `failed`, as one error (`Ok` when
/// none failed); `reason` is the step's event reason.
fn several(
    reason: &'static str,
    done: Vec<String>,
    mut failed: Vec<ReconcileError>,
) -> Result<(), ReconcileError> {
    let failed = match failed.len() {
        0 => return Ok(()),
        1 => failed.remove(0),
        _ => ReconcileError::Several(failed),
    };
    if done.is_empty() {
        return Err(failed);
    }
    Err(ReconcileError::Partly {
        reason,
        done,
        failed: Box::new(failed),
    })
}

/// Labels of Linkerd's identity controller, its Deployment's and its pods'.
fn is_identity_controller(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get(CONTROL_PLANE_COMPONENT_LABEL)
        .map(String::as_str)
        == Some("identity")
}

fn meshed_pod(
    config: &ReconcilerConfig,
    p: &Pod,
    cache: &mut AnchorTexts,
    wont_roll: &dyn Fn(&Workload, &Pod) -> Option<Unfixable>,
) -> MeshedPod {
    let spec = p.spec.as_ref();
    let proxy = spec.and_then(proxy_container).map(|(_, c)| c);
    let anchors_text = proxy.and_then(|c| env_value(c, TRUST_ANCHORS_ENV));
    let anchors = anchors_text.and_then(|text| cache.fingerprints(text));
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let namespace = p.namespace().unwrap_or_default();
    let created_by = p.annotations().get("linkerd.io/created-by");
    let controller = controller_of(p);
    let control_plane = p.labels().contains_key(CONTROL_PLANE_COMPONENT_LABEL);
    let control_plane_deployment = (controller.as_ref().ok())
        .filter(|w| control_plane && w.kind == "Deployment")
        .filter(|w| w.namespace == config.linkerd_namespace)
        .map(|w| w.name.clone());
    let owner = if created_by.is_some_and(|c| c.starts_with("linkerd/cli")) {
        Err(Unfixable::ManuallyInjected)
    } else {
        controller
    };
    // A workload whose template change would roll nothing cannot be restarted by one.
    let owner = owner.and_then(|w| wont_roll(&w, p).map_or(Ok(w), Err));
    MeshedPod {
        namespace,
        name: p.name_any(),
        control_plane,
        control_plane_deployment,
        identity_controller: is_identity_controller(p.labels()),
        ready,
        anchors,
        restarted_for: p.annotations().get(RESTART_ANNOTATION).cloned(),
        max_refresh: proxy
            .and_then(|c| env_value(c, MAX_REFRESH_ENV))
            .and_then(|v| crate::duration::parse(&v).ok()),
        owner,
        leaf: None,
        addr: p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| std::net::SocketAddr::new(ip, ADMIN_PORT)),
        identity: format!(
            "{}.{}.serviceaccount.identity.{}.{}",
            spec.and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default"),
            p.namespace().unwrap_or_default(),
            config.linkerd_namespace,
            config.trust_domain
        ),
    }
}

/// Pods already seen presenting a leaf from the current issuer, so that each look of
/// RenewingWorkloadCerts probes only the pods still to converge, not every proxy of the mesh.
///
/// A proxy goes back to an earlier issuer's leaf only if a replica of the identity controller
/// that has not loaded the new issuer yet signs its next one: each replica reads the issuer from
/// its own Secret volume, which its node's kubelet updates on its own schedule. So a pod seen
/// before every replica has surely loaded the issuer (the issuer first seen, or an identity
/// controller pod last seen becoming ready, plus `issuer_reload_grace`) is probed once more
/// after that; from then on no replica signs with another issuer (one started since loads the
/// current issuer at start), and a pod seen is not probed again while the issuer stays the
/// same. Keyed by pod and address: a pod created again under the same name at another address
/// is probed anew (one that gets the same address, or whose proxy restarts in place, takes its
/// new leaf from the current issuer).
#[derive(Debug, Default)]
struct SeenLeaves {
    /// The issuer's certificate fingerprint.
    issuer: String,
    /// The first issuer this process saw since it took the lead, in any phase: if it is not
    /// the current one, this process saw the change, and has counted the identity
    /// controller's replicas since.
    first_issuer: Option<String>,
    /// Until when some identity controller replica may not have loaded it (on this process's
    /// monotonic clock), and what the status says of it; `None` once that time is over and the
    /// pods seen before it have been forgotten.
    reloading: Option<(Instant, IssuerReload)>,
    pods: BTreeSet<(String, std::net::SocketAddr)>,
}

impl SeenLeaves {
    /// Starts over when `issuer` is not the one the pods were seen with; once every identity
    /// controller replica (`replicas` of them now, `unready` one of them if it is not ready)
    /// has surely loaded it, forgets the pods seen before, once. Returns what may still be
    /// loading.
    fn for_issuer(
        &mut self,
        issuer: &str,
        (now, unix_now): (Instant, i64),
        grace: Duration,
        (replicas, unready): (usize, Option<String>),
    ) -> Option<IssuerReload> {
        // `unix_now` is the wall clock's second, up to 1 s behind: the time shown is never
        // earlier than the monotonic one.
        let until = || unix_now.saturating_add(grace.as_secs_f64().ceil() as i64 + 1);
        if self.issuer != issuer {
            let first_issuer = self.first_issuer.take();
            *self = Self {
                issuer: issuer.to_owned(),
                reloading: Some((
                    now + grace,
                    IssuerReload {
                        replicas,
                        unwitnessed: first_issuer.as_deref().is_none_or(|f| f == issuer),
                        unready: None,
                        until: until(),
                    },
                )),
                pods: BTreeSet::new(),
                first_issuer: first_issuer.or_else(|| Some(issuer.to_owned())),
            };
        }
        if let Some((over_at, reload)) = &mut self.reloading {
            reload.replicas = reload.replicas.max(replicas);
            if unready.is_some() {
                // A replica on a node cut off keeps its Secret volume as it was: the grace
                // counts once it is back.
                reload.unready = unready;
                return Some(reload.clone());
            }
            if reload.unready.take().is_some() {
                (*over_at, reload.until) = (now + grace, until());
            }
            if now < *over_at {
                return Some(reload.clone());
            }
            self.reloading = None;
            self.pods.clear();
        }
        None
    }

    fn seen(&self, pod: &MeshedPod) -> bool {
        pod.addr
            .is_some_and(|addr| self.pods.contains(&(pod.key(), addr)))
    }

    /// Records the pods seen with a leaf from the issuer now, and forgets those gone.
    fn record(&mut self, pods: &[MeshedPod]) {
        let now: BTreeSet<(String, std::net::SocketAddr)> = pods
            .iter()
            .filter(|p| p.leaf == Some(Leaf::FromIssuer))
            .filter_map(|p| Some((p.key(), p.addr?)))
            .collect();
        self.pods = now;
    }

    /// Forgets every pod and issuer: the rotation is not in RenewingWorkloadCerts, and
    /// `issuer` is the one seen (if any).
    fn clear(&mut self, issuer: Option<&str>) {
        let first_issuer = self.first_issuer.take();
        *self = Self {
            first_issuer: first_issuer.or_else(|| issuer.map(str::to_owned)),
            ..Self::default()
        };
    }
}

/// Probes the live leaf of every pod not yet seen with one from the current issuer: a TLS
/// handshake to `podIP:4191` with its identity as SNI, bounded concurrency, a timeout;
/// unreachable is not converged. Returns what the probes found.
async fn probe_leaves(
    config: &ReconcilerConfig,
    observed: &mut Observed,
    seen: &mut SeenLeaves,
    now: Instant,
) -> Vec<Leaf> {
    let Ok(issuer) = &observed.issuer else {
        return Vec::new();
    };
    let Some(issuer_der) = certs::der(&issuer.cert.pem) else {
        return Vec::new();
    };
    observed.issuer_reload = seen.for_issuer(
        &issuer.cert.fingerprint,
        (now, observed.now),
        config.issuer_reload_grace,
        observed.identity_replicas(),
    );
    let client_config = crate::probe::client_config();
    let mut targets: Vec<(usize, Option<std::net::SocketAddr>, String)> = Vec::new();
    for (i, p) in observed.pods.iter_mut().enumerate() {
        if seen.seen(p) {
            p.leaf = Some(Leaf::FromIssuer);
        } else {
            targets.push((i, p.addr, p.identity.clone()));
        }
    }
    let results: Vec<(usize, Leaf)> = futures::stream::iter(targets)
        .map(|(i, addr, identity)| {
            let (client_config, issuer_der) = (client_config.clone(), issuer_der.clone());
            async move {
                let Some(addr) = addr else {
                    return (i, Leaf::Unreachable("no pod IP yet".to_owned()));
                };
                let leaf = match crate::probe::probe_chain(
                    client_config,
                    addr,
                    &identity,
                    config.probe_timeout,
                )
                .await
                {
                    Ok(chain) => certs::leaf_from(&chain, &issuer_der),
                    Err(e) => Leaf::Unreachable(e.to_string()),
                };
                (i, leaf)
            }
        })
        .buffer_unordered(config.probe_concurrency)
        .collect()
        .await;
    let mut probed = Vec::with_capacity(results.len());
    for (i, leaf) in results {
        probed.push(leaf.clone());
        observed.pods[i].leaf = Some(leaf);
    }
    seen.record(&observed.pods);
    probed
}

async fn execute(
    client: &Client,
    config: &ReconcilerConfig,
    recorder: &EventWriter,
    reference: &ObjectReference,
    effect: &Effect,
    (refused_restarts, retries, unseen_restarts): (
        &mut BTreeMap<Workload, FailedRestart>,
        &mut Retries,
        &mut UnseenRestarts,
    ),
) -> Result<Option<String>, ReconcileError> {
    // The resourceVersion an object the reconciler also watches has after the write.
    let mut written = None;
    match effect {
        Effect::WriteBundle {
            pem,
            fingerprint,
            written_over,
        } => {
            let (ns, name) = &config.names.bundle_configmap;
            tracing::info!(%fingerprint, ?written_over, "writing the trust bundle");
            // `written_over` is `None` when the cache shows no ConfigMap: the annotation is then
            // left out, and server-side apply removes any copy that a stale cache missed.
            // Otherwise it is the version the bundle was decided from, and the write is made
            // only onto it: one that changed since (another writer, or the next leader when
            // this replica has lost the Lease unawares) fails it with a conflict, and the next
            // look decides from what is there now.
            let mut annotations = json!({ WRITTEN_BUNDLE_ANNOTATION: fingerprint });
            let mut metadata = json!({ "name": name });
            if let Some(replaced) = written_over {
                annotations[WRITTEN_OVER_ANNOTATION] = json!(replaced);
                metadata["resourceVersion"] = json!(replaced);
            }
            metadata["annotations"] = annotations;
            let patch = Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": metadata,
                "data": {config.bundle_key.as_str(): pem}}));
            let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
            let what = format!("writing ConfigMap {ns}/{name}");
            let key = format!("{what} {fingerprint} over {written_over:?}");
            written = apply(retries, key, api, name, patch, what).await?;
        }
        Effect::WritePreviousAnchor { pem, fingerprint } => {
            let (ns, name) = &config.names.previous_anchor_secret;
            tracing::info!(%fingerprint, "writing the previous anchor");
            // The certificate only: the operator never copies a private key.
            let patch = Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": MANAGER}},
                "type": "Opaque",
                "stringData": {"ca.crt": pem}}));
            let api = Api::<Secret>::namespaced(client.clone(), ns);
            let what = format!("writing Secret {ns}/{name}");
            let key = format!("{what} {fingerprint}");
            written = apply(retries, key, api, name, patch, what).await?;
        }
        Effect::RestartControlPlane {
            deployments,
            marker,
        } => {
            // Each one is tried, as workloads are: one refused restart holds up no other.
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for d in deployments {
                let key = format!(
                    "restarting {d:?} in {} onto {marker}",
                    config.linkerd_namespace
                );
                let write = restart_control_plane(client, &config.linkerd_namespace, d, marker);
                match attempt(retries, key, write).await {
                    Ok(()) => done.push(format!(
                        "deployment/{}/{}",
                        config.linkerd_namespace, d.name
                    )),
                    Err(e) => failed.push(e),
                }
            }
            several("RestartingControlPlane", done, failed)?;
        }
        Effect::RestartWorkloads {
            workloads,
            restart_for,
            retry,
            retry_room,
        } => {
            let marker = match restart_for {
                RestartFor::Bundle(marker) => (RESTART_ANNOTATION, marker.as_str()),
                RestartFor::Issuer(fingerprint) => (LEAF_RESTART_ANNOTATION, fingerprint.as_str()),
            };
            let key = |w: &Workload| format!("restarting {w} {}={}", marker.0, marker.1);
            let now = || tokio::time::Instant::now().into_std();
            // What each restart of the step failed with last, and when, if it did.
            let before = |w: &Workload| {
                (refused_restarts.get(w))
                    .filter(|before| before.restart_for == *restart_for)
                    .map(|b| (b.failure.clone(), b.at))
            };
            let sent = retried_now(
                retry,
                *retry_room,
                retries,
                key,
                |w| before(w).map(|b| b.1),
                now(),
            );
            // Those not sent again are reported with their last failure, as it was said, so
            // that the step's message stays the same.
            let held_back: BTreeMap<&Workload, String> = (retry.iter())
                .filter(|w| !sent.contains(w))
                .map(|w| {
                    let failure = before(w).map(|b| b.0);
                    (
                        w,
                        failure.unwrap_or_else(|| {
                            "failed before; tried again when a slot is free".to_owned()
                        }),
                    )
                })
                .collect();
            // Each one is tried: one workload that cannot be restarted holds up no other. In
            // the order of their names, so that a failure is said in the same place whether it
            // is new or not tried again.
            let mut all: Vec<&Workload> = workloads.iter().chain(retry).collect();
            all.sort();
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for w in all {
                if let Some(failure) = held_back.get(w) {
                    failed.push(ReconcileError::NotYetRetried(failure.clone()));
                    continue;
                }
                match attempt(retries, key(w), restart(client, w, marker)).await {
                    Ok(()) => {
                        refused_restarts.remove(w);
                        unseen_restarts.made(w, restart_for, now());
                        done.push(w.to_string());
                    }
                    Err(e) => {
                        let failure = FailedRestart {
                            restart_for: restart_for.clone(),
                            failure: e.to_string(),
                            at: now(),
                        };
                        refused_restarts.insert(w.clone(), failure);
                        failed.push(e);
                    }
                }
            }
            several("RestartingWorkloads", done, failed)?;
        }
        Effect::RenewIssuer => {
            let (ns, name) = &config.names.issuer_certificate;
            let key = format!("renewing Certificate {ns}/{name}");
            attempt(retries, key, renew_certificate(client, ns, name)).await?;
        }
        Effect::Event { .. } => recorder.say_effect(reference, effect).await,
    }
    Ok(written)
}

/// Server-side applies `patch` to the object `name` (as [`MANAGER`], forced) as one
/// [`attempt`] (`key`; `what` names it in errors): its resourceVersion after the write.
async fn apply<K>(
    retries: &mut Retries,
    key: String,
    api: Api<K>,
    name: &str,
    patch: Patch<serde_json::Value>,
    what: String,
) -> Result<Option<String>, ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply(MANAGER).force();
    let write = async {
        api.patch(name, &params, &patch)
            .await
            .map_err(kube_err(what))
    };
    Ok(attempt(retries, key, write).await?.resource_version())
}

/// Which of the restarts that failed before (`retry`) are sent again now: those whose wait is
/// over (a refusal's, see [`Retries`]), in the `room` the step leaves, those that failed the
/// longest ago first (`failed_at`), so that none waits for good behind others that keep failing.
/// (The others are reported with their last failure.)
fn retried_now<'a>(
    retry: &'a [Workload],
    room: usize,
    retries: &Retries,
    key: impl Fn(&Workload) -> String,
    failed_at: impl Fn(&Workload) -> Option<std::time::Instant>,
    now: std::time::Instant,
) -> BTreeSet<&'a Workload> {
    let mut due: Vec<&Workload> = (retry.iter())
        .filter(|w| retries.deferred(&key(w), now).is_none())
        .collect();
    due.sort_by_key(|w| failed_at(w));
    due.into_iter().take(room).collect()
}

/// Forgets the failed restarts of workloads that are gone (`exists` says which are not) and
/// have not failed for [`FORGET_AFTER`] (a workload missing from a cache that lags, or a
/// Deployment orphaned moments ago, keeps its failure, so that it is not sent again as a fresh
/// restart, in a slot of its own, at every look), and all of them once the rotation is `Synced`
/// (a failure counts only for the step it was met in, see [`FailedRestart::restart_for`]).
fn forget_restarts(
    failed: &mut BTreeMap<Workload, FailedRestart>,
    phase: crate::crd::Phase,
    exists: impl Fn(&Workload) -> bool,
    now: std::time::Instant,
) {
    if phase == crate::crd::Phase::Synced {
        failed.clear();
    } else {
        failed.retain(|w, f| exists(w) || now.duration_since(f.at) < FORGET_AFTER);
    }
}

/// A workload's restart that failed, as [`Memory`] keeps it.
#[derive(Debug)]
struct FailedRestart {
    restart_for: RestartFor,
    /// The failure, as it was said.
    failure: String,
    at: std::time::Instant,
}

/// Makes `write` (described by `key`: the object and what is written to it) unless an earlier
/// refusal of the same write is still waiting out its [`Retries`] wait, in which case that
/// refusal is the result, and the API server is not asked. Only a refusal waits (see
/// [`ReconcileError::refused`]): a write that timed out or met an API server in trouble is
/// tried again at the next look, as a bundle restore must be.
async fn attempt<T>(
    retries: &mut Retries,
    key: String,
    write: impl Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError> {
    // Tokio's clock, the same as the system's but for tests that pause it.
    let now = || tokio::time::Instant::now().into_std();
    if let Some(failure) = retries.deferred(&key, now()) {
        tracing::debug!(write = key, "refused before; not tried again yet");
        return Err(ReconcileError::NotYetRetried(failure.to_owned()));
    }
    let result = write.await;
    match &result {
        Ok(_) => retries.succeeded(&key),
        // The wait runs from the refusal: a refusal slow to come (a policy webhook timing out)
        // does not use it up.
        Err(e) if e.refused() => retries.failed(&key, e.to_string(), now()),
        Err(_) => {}
    }
    result
}

/// An object the reconciler writes and also reads from a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OwnWrite {
    Bundle,
    PreviousAnchor,
}

impl OwnWrite {
    fn target(effect: &Effect) -> Option<Self> {
        match effect {
            Effect::WriteBundle { .. } => Some(OwnWrite::Bundle),
            Effect::WritePreviousAnchor { .. } => Some(OwnWrite::PreviousAnchor),
            _ => None,
        }
    }

    /// Its kind and (namespace, name).
    fn object(self, config: &ReconcilerConfig) -> (&'static str, &(String, String)) {
        match self {
            OwnWrite::Bundle => ("ConfigMap", &config.names.bundle_configmap),
            OwnWrite::PreviousAnchor => ("Secret", &config.names.previous_anchor_secret),
        }
    }

    /// The object's resourceVersion as the API server has it now (`None`: not there).
    async fn server_version(
        self,
        client: &Client,
        config: &ReconcilerConfig,
    ) -> Result<Option<String>, kube::Error> {
        let (_, (ns, name)) = self.object(config);
        Ok(match self {
            OwnWrite::Bundle => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await?
                .and_then(|o| o.resource_version()),
            OwnWrite::PreviousAnchor => Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await?
                .and_then(|o| o.resource_version()),
        })
    }

    /// The object's resourceVersion as its watch shows it (`None`: not there).
    fn version(self, config: &ReconcilerConfig, stores: &Stores) -> Option<String> {
        let (_, (ns, name)) = self.object(config);
        match self {
            OwnWrite::Bundle => stores
                .bundle
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|o| o.resource_version()),
            OwnWrite::PreviousAnchor => stores.secrets[1]
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|o| o.resource_version()),
        }
    }

    fn describe(self, config: &ReconcilerConfig) -> String {
        let (kind, (ns, name)) = self.object(config);
        format!("{kind} {ns}/{name}")
    }
}

/// What the reconciler remembers from one look to the next (this replica only: a new leader
/// starts afresh, which costs at most one more try of each).
#[derive(Debug, Default)]
struct Memory {
    own_writes: OwnWrites,
    /// Workloads whose last restart by this replica failed (refused by RBAC or a policy
    /// webhook, or unanswered), with what it was for and the failure, kept until one succeeds:
    /// tried again at the next look, or once its wait is over when it was refused (`retries`),
    /// in the restart slots the others leave (see [`Observed::refused_restarts`]); forgotten
    /// once the workload has been gone for a while, or the rotation is over
    /// ([`forget_restarts`]).
    refused_restarts: BTreeMap<Workload, FailedRestart>,
    /// Each refused write's wait before it is tried again.
    retries: Retries,
    unseen_restarts: UnseenRestarts,
    /// The rotation was missing at the last look, and the log has said so.
    said_missing: bool,
    /// The failure to read the issuer Certificate the log said last (see [`issuer_issuance`]).
    said_certificate: Lasting,
    published: Published,
    seen_leaves: SeenLeaves,
    count_writes: CountWrites,
    /// The restarts of steps that partly failed which a Normal event has named, until a look's
    /// writes all go through.
    announced_restarts: BTreeSet<String>,
    /// The events of writes (see [`announces_a_write`]) that the last look which went
    /// through decided, and those published since by looks whose status write was refused as
    /// stale: a look that decides the same write again (its watch has not shown it yet) does
    /// not say it again.
    announced_writes: Vec<Effect>,
    /// Bundle writes refused as conflicts since a look last went through whole or the bundle
    /// was last written (see [`CONFLICT_PATIENCE`]).
    bundle_conflicts: u32,
}

/// The step Events the last look published, and the rotation's version once its status was in.
/// A look whose status changes nothing (read at that same version) and that decides the same
/// step again (a workload restarted, whose watch has not shown the restart yet: the repeated
/// patch is a no-op) does not announce it again.
#[derive(Debug, Default)]
struct Published {
    last: Option<(Option<String>, Vec<Effect>)>,
}

impl Published {
    /// The `events` to publish after a look that left the rotation at `version`, recording
    /// them.
    fn fresh<'e>(&mut self, version: Option<String>, events: Vec<&'e Effect>) -> Vec<&'e Effect> {
        if events.is_empty() {
            return events;
        }
        let owned: Vec<Effect> = events.iter().map(|e| (*e).clone()).collect();
        let repeated = version.is_some()
            && (self.last.as_ref()).is_some_and(|(v, last)| *v == version && *last == owned);
        self.last = Some((version, owned));
        if repeated { Vec::new() } else { events }
    }
}

/// Workload restarts this replica made that the workload watches may not show yet, with what
/// each was for and when it went through. Until a watch shows its marker, a look counts it as
/// the rollout in progress it is: a look from a lagging watch would otherwise see a free slot
/// (the workload's new pod not ready yet holds it back instead of keeping it busy) and restart
/// the next workload in it, past `maxConcurrentWorkloads`.
#[derive(Debug, Default)]
struct UnseenRestarts(BTreeMap<Workload, (RestartFor, std::time::Instant)>);

impl UnseenRestarts {
    fn made(&mut self, workload: &Workload, restart_for: &RestartFor, at: std::time::Instant) {
        self.0.insert(workload.clone(), (restart_for.clone(), at));
    }

    /// Adds to `markers` (as the watches show them) the restarts they do not show yet, as
    /// rollouts in progress. Forgets those they show, and those made longer than
    /// [`OWN_WRITE_PATIENCE`] ago (a workload deleted since, a watch that will not catch up).
    fn show(&mut self, markers: &mut BTreeMap<Workload, RestartMarkers>, now: std::time::Instant) {
        self.0.retain(|workload, (restart_for, at)| {
            let shown = markers.get(workload).is_some_and(|m| m.has(restart_for));
            let unseen = !shown && now.saturating_duration_since(*at) < OWN_WRITE_PATIENCE;
            if unseen {
                let m = markers.entry(workload.clone()).or_default();
                match restart_for {
                    RestartFor::Bundle(marker) => m.bundle = Some(marker.clone()),
                    RestartFor::Issuer(fingerprint) => m.issuer = Some(fingerprint.clone()),
                }
                (m.rollout_complete, m.replacing) = (false, true);
            }
            unseen
        });
    }
}

/// The reconciler's own writes that its watches have not shown yet. Each watch lags on its
/// own: a look right after a pass that wrote the previous anchor and the reduced bundle could
/// see the new bundle beside the old previous anchor, take the rotation for still under way,
/// and write the old anchor back into the bundle. So no look is taken while a watch still shows
/// an object as it was before the reconciler's write (the watch's next event wakes it).
#[derive(Debug, Default)]
struct OwnWrites {
    /// What was written, its resourceVersion before the write, and since when it is awaited.
    pending: Vec<(OwnWrite, Option<String>, std::time::Instant)>,
    warned: bool,
}

impl OwnWrites {
    fn wrote(&mut self, target: OwnWrite, before: Option<String>, after: Option<String>) {
        // A write that changed nothing (the same content applied again) is nothing to await.
        if after.is_some() && after != before {
            self.pending.retain(|(t, _, _)| *t != target);
            self.pending
                .push((target, before, std::time::Instant::now()));
        }
    }

    /// Lets go of the writes awaited for longer than [`OWN_WRITE_CONFIRM`] whose object the
    /// API server shows as its watch does: that watch is not behind, the object has only moved
    /// on since the write (deleted again after the reconciler created it, whose watch then
    /// shows "not there" as it did before the write, forever). A look decides from what is
    /// there. A server that cannot be asked changes nothing.
    async fn confirm(&mut self, client: &Client, config: &ReconcilerConfig, stores: &Stores) {
        let mut caught_up = Vec::new();
        for (target, _, since) in &self.pending {
            if since.elapsed() > OWN_WRITE_CONFIRM
                && let Ok(version) = target.server_version(client, config).await
                && version == target.version(config, stores)
            {
                caught_up.push(*target);
            }
        }
        self.pending.retain(|(t, _, _)| !caught_up.contains(t));
    }

    /// Whether a look must wait: some watch still shows an object as it was before the write.
    /// (Any other version, the write's own or a later one, is caught up.)
    fn awaited(&mut self, config: &ReconcilerConfig, stores: &Stores) -> Awaited {
        self.pending
            .retain(|(target, before, _)| target.version(config, stores) == *before);
        let Some((target, _, since)) = self.pending.first() else {
            self.warned = false;
            return Awaited::No;
        };
        if since.elapsed() > OWN_WRITE_PATIENCE && !self.warned {
            self.warned = true;
            let object = target.describe(config);
            tracing::warn!(
                %object,
                "the watch has not shown the reconciler's own write for {OWN_WRITE_PATIENCE:?}; holding the rotation until it does"
            );
            return Awaited::Overdue(object);
        }
        Awaited::Yes
    }
}

/// Whether a look waits for a watch to show the reconciler's own write.
#[derive(Debug, PartialEq)]
enum Awaited {
    No,
    Yes,
    /// Yes, and for longer than [`OWN_WRITE_PATIENCE`] as of now (said once): the object.
    Overdue(String),
}

/// How long a lagging watch is waited for before the log says so.
const OWN_WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// How long a write is awaited before the API server is asked whether the watch is behind.
const OWN_WRITE_CONFIRM: Duration = Duration::from_secs(5);

/// Sets a restart annotation (`key`, `value`) on a workload's pod template (a merge patch of
/// one key: the same value twice changes nothing, so no second rollout).
async fn restart(
    client: &Client,
    workload: &Workload,
    (key, value): (&str, &str),
) -> Result<(), ReconcileError> {
    let Workload {
        kind,
        namespace,
        name,
    } = workload;
    let patch = Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
        key: value}}}}}));
    let params = patch_params();
    let what = format!("restarting {kind} {namespace}/{name}");
    tracing::info!(%kind, %namespace, %name, annotation = key, %value, "restarting");
    match kind.as_str() {
        "Deployment" => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(|_| ()),
        "StatefulSet" => {
            Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), namespace)
                .patch(name, &params, &patch)
                .await
                .map(|_| ())
        }
        _ => Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(|_| ()),
    }
    .map_err(kube_err(what))
}

/// The control-plane restart: the restart annotation, and the proxy's refresh interval set or
/// removed in the same write (a strategic merge patch, so the container and its env are merged
/// by name and nothing else in them changes).
async fn restart_control_plane(
    client: &Client,
    namespace: &str,
    restart: &ControlPlaneRestart,
    marker: &str,
) -> Result<(), ReconcileError> {
    let patch = control_plane_restart_patch(restart, marker);
    let name = &restart.name;
    tracing::info!(%namespace, %name, refresh = ?restart.proxy_refresh, "restarting the control plane onto the trust bundle");
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch(name, &patch_params(), &Patch::Strategic(patch))
        .await
        .map(|_| ())
        .map_err(kube_err(format!(
            "restarting Deployment {namespace}/{name}"
        )))
}

/// The strategic merge patch for [`restart_control_plane`].
fn control_plane_restart_patch(restart: &ControlPlaneRestart, marker: &str) -> serde_json::Value {
    // The operator's annotation and the env entry it stands for, written or removed together.
    let (annotation, env, list) = match &restart.proxy_refresh {
        ProxyRefresh::Keep => {
            return json!({"spec": {"template": {"metadata": {"annotations": {
                RESTART_ANNOTATION: marker}}}}});
        }
        ProxyRefresh::Set { list, value } => (
            json!(value),
            json!({"name": MAX_REFRESH_ENV, "value": value}),
            list,
        ),
        ProxyRefresh::Remove { list } => (
            serde_json::Value::Null,
            json!({"name": MAX_REFRESH_ENV, "$patch": "delete"}),
            list,
        ),
    };
    json!({"spec": {"template": {
        "metadata": {"annotations": {
            RESTART_ANNOTATION: marker,
            PROXY_REFRESH_ANNOTATION: annotation}},
        "spec": {list.field(): [{"name": PROXY_CONTAINER, "env": [env]}]}}}})
}

/// What `cmctl renew` does: add `Issuing=True` (reason `ManuallyTriggered`) to the
/// Certificate's status conditions.
async fn renew_certificate(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), ReconcileError> {
    let api = certificate_api(client, namespace);
    let what = format!("renewing Certificate {namespace}/{name}");
    let mut cert = api.get(name).await.map_err(kube_err(what.clone()))?;
    let mut conditions: Vec<serde_json::Value> = cert.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c["type"] == "Issuing" && c["status"] == "True")
    {
        return Ok(());
    }
    conditions.retain(|c| c["type"] != "Issuing");
    conditions.push(
        json!({"type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
        "message": "Certificate re-issuance triggered by trust-rotation-operator",
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}),
    );
    cert.data["status"]["conditions"] = serde_json::Value::Array(conditions);
    api.replace_status(name, &post_params(), &cert)
        .await
        .map_err(kube_err(what))?;
    Ok(())
}

/// Whether a status write landed.
#[derive(Debug, PartialEq, Eq)]
enum StatusWrite {
    /// With the rotation's resourceVersion after the write.
    Written(Option<String>),
    /// The object changed after the version the status was decided from (`read_at`): nothing
    /// was written.
    Stale,
}

/// Writes the rotation's status by server-side apply, only onto the version `read_at` (when
/// given), the one it was decided from.
async fn write_status(
    client: &Client,
    name: &str,
    status: &TrustAnchorRotationStatus,
    read_at: Option<&str>,
) -> Result<StatusWrite, ReconcileError> {
    let mut metadata = json!({"name": name});
    if let Some(version) = read_at {
        metadata["resourceVersion"] = json!(version);
    }
    let written = Api::<TrustAnchorRotation>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "trust.linkerd.io/v1alpha1",
                "kind": "TrustAnchorRotation", "metadata": metadata, "status": status})),
        )
        .await;
    match written {
        Ok(rotation) => Ok(StatusWrite::Written(rotation.resource_version())),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!(
                read_at = read_at.unwrap_or_default(),
                "TrustAnchorRotation {name} changed since it was read (the watch has not shown it yet); deciding again"
            );
            Ok(StatusWrite::Stale)
        }
        Err(source) => Err(ReconcileError::Kube {
            what: format!("writing status of TrustAnchorRotation {name}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::ControlPlane;
    use k8s_openapi::api::events::v1::Event;
    use kube::CustomResourceExt;
    use kube::api::ListParams;

    /// A store holding `objects`, as a watch that has shown nothing since.
    fn frozen<K>(objects: Vec<K>) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone,
    {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        reader
    }

    /// Stores of a cluster without meshed workloads: the rotation, the three certificate
    /// Secrets' stores (anchor, previous anchor, issuer) and the bundle's, none fed.
    fn unmeshed(
        rotation: TrustAnchorRotation,
        secrets: Vec<Vec<Secret>>,
        bundle: Vec<ConfigMap>,
    ) -> Stores {
        Stores {
            rotation: frozen(vec![rotation]),
            secrets: secrets.into_iter().map(frozen).collect(),
            bundle: frozen(bundle),
            pods: frozen(vec![]),
            deployments: frozen(vec![]),
            statefulsets: frozen(vec![]),
            daemonsets: frozen(vec![]),
        }
    }

    /// How many Events the API server holds with `reason`.
    async fn events_with_reason(client: &Client, reason: &str) -> usize {
        let events = Api::<Event>::namespaced(client.clone(), EVENTS_NAMESPACE)
            .list(&ListParams::default())
            .await
            .unwrap();
        (events.items.iter())
            .filter(|e| e.reason.as_deref() == Some(reason))
            .count()
    }

    fn test_recorder(client: &Client) -> EventWriter {
        EventWriter {
            api: Api::namespaced(client.clone(), EVENTS_NAMESPACE),
            instance: "test".to_owned(),
        }
    }

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
        serde_json::from_value(value).unwrap()
    }

    fn running_pod(namespace: &str, name: &str, owner: serde_json::Value) -> Pod {
        let mut labels = json!({});
        if owner["kind"] == "ReplicaSet" {
            labels["pod-template-hash"] = json!("5d8f7c");
        }
        object(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                "ownerReferences": [owner]},
            "spec": {"containers": [{"name": "linkerd-proxy", "image": "proxy"}]},
            "status": {"phase": "Running"}}))
    }

    fn created_ago(mut pod: Pod, secs: i64) -> Pod {
        pod.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now()
                    - k8s_openapi::jiff::SignedDuration::from_secs(secs),
            ));
        pod
    }

    /// A self-signed CA certificate (DER) valid from now for an hour.
    fn ca_for_an_hour(common_name: &str) -> Vec<u8> {
        use crate::sim::pki;
        let key = pki::generate_key().unwrap();
        let now = pki::now();
        pki::Template {
            common_name: common_name.to_owned(),
            dns_names: vec![],
            is_ca: true,
            not_before: now,
            not_after: now + Duration::from_secs(3600),
        }
        .self_signed(&key)
        .unwrap()
    }

    fn owned_by(kind: &str, name: &str) -> serde_json::Value {
        json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true})
    }

    /// A running workload pod the leaf probe is to reach at `addr`.
    fn probe_target(name: &str, addr: Option<std::net::SocketAddr>) -> MeshedPod {
        MeshedPod {
            namespace: "app".to_owned(),
            name: name.to_owned(),
            control_plane: false,
            identity_controller: false,
            ready: true,
            anchors: None,
            restarted_for: None,
            control_plane_deployment: None,
            max_refresh: None,
            owner: Err(Unfixable::BarePod),
            leaf: None,
            addr,
            identity: "default.app.serviceaccount.identity.linkerd.cluster.local".to_owned(),
        }
    }

    /// What RenewingWorkloadCerts observes for the leaf probe: `issuer`, and `pods`.
    fn probed(issuer: Cert, pods: Vec<MeshedPod>) -> Observed {
        Observed {
            now: 0,
            anchor: Err(Problem {
                object: "-".to_owned(),
                message: "-".to_owned(),
            }),
            previous: Ok(None),
            bundle: Ok(None),
            issuer: Ok(Issuer {
                cert: issuer,
                signed_by: None,
                issuing: false,
                failure: None,
            }),
            control_plane: vec![],
            pods,
            starting: vec![],
            draining: vec![],
            restart_markers: BTreeMap::new(),
            refused_restarts: BTreeMap::new(),
            bundle_meta: BundleMeta::default(),
            baked_templates: BTreeMap::new(),
            held_anchors: Vec::new(),
            issuer_reload: None,
        }
    }

    /// A step whose restarts partly failed says only what failed (the blockingMessage it becomes
    /// stays the same from batch to batch: one StepFailed per failure), and names those done in
    /// a Normal event of the step's reason, each restart once; one where all failed names none.
    /// Only refusals wait before they are tried again.
    #[test]
    fn a_step_whose_restarts_partly_failed_names_those_done_apart() {
        let refused = |name: &str| ReconcileError::Kube {
            what: format!("restarting Deployment app/{name}"),
            source: kube::Error::Api(
                kube::core::Status::failure("forbidden", "Forbidden")
                    .with_code(403)
                    .boxed(),
            ),
        };
        let done: Vec<String> = (0..7).map(|i| format!("deployment/app/web-{i}")).collect();
        let error = several(
            "RestartingWorkloads",
            done,
            vec![refused("db"), refused("cache")],
        )
        .unwrap_err();
        let alone = ReconcileError::Several(vec![refused("db"), refused("cache")]);
        assert_eq!(error.to_string(), alone.to_string());
        assert!(refused("db").refused());
        let unavailable = ReconcileError::Kube {
            what: "restarting Deployment app/db".to_owned(),
            source: kube::Error::Api(
                kube::core::Status::failure("etcdserver: request timed out", "InternalError")
                    .with_code(500)
                    .boxed(),
            ),
        };
        assert!(!unavailable.refused());
        assert!(!alone.only_not_yet_retried());
        let waiting = ReconcileError::Several(vec![
            ReconcileError::NotYetRetried("a".to_owned()),
            ReconcileError::NotYetRetried("b".to_owned()),
        ]);
        assert!(waiting.only_not_yet_retried());
        let mut announced = BTreeSet::new();
        let (reason, message) = error
            .restarted(&mut announced)
            .expect("those done are named");
        assert_eq!(reason, "RestartingWorkloads");
        assert!(
            message.starts_with(
                "restarted 7 of the step's workloads (deployment/app/web-0, deployment/app/web-1, deployment/app/web-2, deployment/app/web-3, deployment/app/web-4, ...)"
            ),
            "{message}"
        );
        // A look that decides some of them again, before the watch shows them, with one more:
        // that one alone is news.
        let again: Vec<String> = (5..8).map(|i| format!("deployment/app/web-{i}")).collect();
        let error_again = several("RestartingWorkloads", again, vec![refused("db")]).unwrap_err();
        let (_, message) = error_again.restarted(&mut announced).unwrap();
        assert!(
            message.starts_with("restarted 1 of the step's workloads (deployment/app/web-7);"),
            "{message}"
        );
        assert_eq!(error.restarted(&mut announced), None);
        let error = several("RestartingWorkloads", vec![], vec![refused("db")]).unwrap_err();
        assert!(error.restarted(&mut announced).is_none());
        assert!(
            several(
                "RestartingWorkloads",
                vec!["deployment/app/web".to_owned()],
                vec![]
            )
            .is_ok()
        );
    }

    /// A restart that failed without a refusal (here, an API server that is not there) has no
    /// wait: it is sent again at once when a slot is free, and while none is, reported with its
    /// last failure, word for word, without being sent (so the step's message holds and its
    /// event names nothing unsent).
    #[tokio::test]
    async fn a_failed_restart_waiting_for_a_slot_is_reported_with_its_last_failure() {
        let port = crate::testbed::free_port().unwrap();
        let url: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
        let client = Client::try_from(kube::Config::new(url)).unwrap();
        let config = ReconcilerConfig::default();
        let recorder = test_recorder(&client);
        let reference = ObjectReference::default();
        let w = Workload {
            kind: "Deployment".to_owned(),
            namespace: "app".to_owned(),
            name: "web".to_owned(),
        };
        let restart =
            |workloads: Vec<Workload>, retry: Vec<Workload>, retry_room| Effect::RestartWorkloads {
                workloads,
                restart_for: RestartFor::Bundle("b".repeat(64)),
                retry,
                retry_room,
            };
        let (mut refused, mut retries) = (BTreeMap::new(), Retries::default());
        let mut unseen = UnseenRestarts::default();
        let mut run = async |effect: Effect| {
            let memory = (&mut refused, &mut retries, &mut unseen);
            execute(&client, &config, &recorder, &reference, &effect, memory)
                .await
                .unwrap_err()
        };
        let first = run(restart(vec![w.clone()], vec![], 0)).await;
        assert!(matches!(first, ReconcileError::Kube { .. }), "{first:?}");
        assert!(!first.refused());
        let held = run(restart(vec![], vec![w.clone()], 0)).await;
        assert!(
            matches!(&held, ReconcileError::NotYetRetried(m) if *m == first.to_string()),
            "{held:?}"
        );
        assert!(held.only_not_yet_retried());
        let again = run(restart(vec![], vec![w.clone()], 1)).await;
        assert!(
            matches!(again, ReconcileError::Kube { .. }),
            "sent: {again:?}"
        );
        assert_eq!(refused.keys().collect::<Vec<_>>(), [&w]);
    }

    /// A rollout replaces pods until every replica runs the newest template; a replica that is
    /// merely unavailable afterwards (a crash loop) leaves it incomplete, not replacing.
    #[test]
    fn a_rollout_replaces_pods_until_every_replica_runs_the_template() {
        let deployment = |generation: i64, status: serde_json::Value| -> Deployment {
            object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "app", "generation": generation},
                "spec": {"replicas": 3, "selector": {}, "template": {}},
                "status": status}))
        };
        let state = |d: &Deployment| (d.rollout_replacing(), d.rollout_complete());
        let seen = |updated: i32, replicas: i32, available: i32| {
            json!({"observedGeneration": 2, "updatedReplicas": updated,
                "replicas": replicas, "availableReplicas": available})
        };
        // Not seen by the controller yet; old replicas left; new ones still to come; done;
        // done but one replica crash-looping.
        assert_eq!(state(&deployment(3, seen(3, 3, 3))), (true, false));
        assert_eq!(state(&deployment(2, seen(3, 4, 3))), (true, false));
        assert_eq!(state(&deployment(2, seen(1, 3, 3))), (true, false));
        assert_eq!(state(&deployment(2, seen(3, 3, 3))), (false, true));
        assert_eq!(state(&deployment(2, seen(3, 3, 2))), (false, false));
        let daemonset: DaemonSet = object(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "app", "generation": 2},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "desiredNumberScheduled": 2,
                "updatedNumberScheduled": 2, "numberAvailable": 1, "currentNumberScheduled": 2,
                "numberMisscheduled": 0, "numberReady": 1}}));
        assert_eq!(
            (daemonset.rollout_replacing(), daemonset.rollout_complete()),
            (false, false)
        );
        let statefulset: StatefulSet = object(json!({"apiVersion": "apps/v1",
            "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "app", "generation": 2},
            "spec": {"replicas": 2, "serviceName": "db", "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
                "readyReplicas": 2, "currentRevision": "db-1", "updateRevision": "db-2"}}));
        assert_eq!(
            (
                statefulset.rollout_replacing(),
                statefulset.rollout_complete()
            ),
            (true, false)
        );
    }

    /// A restart that went through counts as a rollout in progress while the workload's watch
    /// does not show it yet (so a look from a lagging watch neither gives its slot away nor
    /// restarts it again), and no longer once the watch shows it, or after the patience. Real
    /// API server.
    #[tokio::test]
    async fn a_restart_the_watch_has_not_shown_yet_counts_as_rolling() {
        let (_cp, client) = control_plane_with_crd().await;
        create_namespaces(&client, &["app"]).await;
        let deployments = Api::<Deployment>::namespaced(client.clone(), "app");
        let created = deployments
            .create(
                &PostParams::default(),
                &object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web"},
                    "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "web", "image": "web"}]}}}})),
            )
            .await
            .unwrap();
        let web = Workload {
            kind: "Deployment".to_owned(),
            namespace: "app".to_owned(),
            name: "web".to_owned(),
        };
        let restart_for = RestartFor::Bundle("b".repeat(64));
        let mut unseen = UnseenRestarts::default();
        execute(
            &client,
            &ReconcilerConfig::default(),
            &test_recorder(&client),
            &ObjectReference::default(),
            &Effect::RestartWorkloads {
                workloads: vec![web.clone()],
                restart_for: restart_for.clone(),
                retry: vec![],
                retry_room: 0,
            },
            (&mut BTreeMap::new(), &mut Retries::default(), &mut unseen),
        )
        .await
        .expect("restarted");
        let markers = |deployment: Deployment| {
            markers_of(&frozen(vec![deployment])).collect::<BTreeMap<_, _>>()
        };
        let rolling = |markers: &BTreeMap<Workload, RestartMarkers>| {
            markers
                .get(&web)
                .is_some_and(|m| m.has(&restart_for) && !m.rollout_complete)
        };
        let now = std::time::Instant::now();

        // The watch still shows the Deployment as it was created.
        let mut lagging = markers(created.clone());
        assert!(!rolling(&lagging));
        unseen.show(&mut lagging, now);
        assert!(rolling(&lagging), "{lagging:?}");
        // Shown: the watch says, and there is nothing left to add.
        let mut caught_up = markers(deployments.get("web").await.unwrap());
        assert!(caught_up[&web].has(&restart_for));
        unseen.show(&mut caught_up, now);
        assert!(unseen.0.is_empty(), "{unseen:?}");
        // A watch that never shows it is believed after the patience.
        unseen.made(&web, &restart_for, now);
        let mut never = markers(created);
        unseen.show(&mut never, now + OWN_WRITE_PATIENCE);
        assert!(never.is_empty() && unseen.0.is_empty(), "{never:?}");
    }

    /// A lasting failure to read the issuer Certificate (here, cert-manager's CRD not
    /// installed) is logged once over many looks, not at each; reading it again is said once
    /// too. Real API server.
    #[tokio::test]
    async fn a_lasting_failure_to_read_the_issuer_certificate_is_logged_once() {
        let cp = ControlPlane::start().await.expect("a local control plane");
        let client = cp.client();
        let logs = crate::logging::tests::Buffer::default();
        let _logging = tracing::subscriber::set_default(logs.subscriber());
        let name = ("linkerd".to_owned(), "linkerd-identity-issuer".to_owned());
        let mut said = Lasting::default();
        for _ in 0..5 {
            let read = issuer_issuance(&client, &name, 0, &mut said).await;
            assert_eq!(read, (false, None));
        }
        let text = logs.text();
        assert_eq!(
            text.matches("reading the issuer Certificate").count(),
            1,
            "{text}"
        );
        assert!(text.contains("404"), "{text}");
        // Readable again (no such Certificate is an answer): said once, and forgotten.
        for crd in crate::sim::certmanager::crds() {
            crate::sim::install_crd(&client, &crd).await.unwrap();
        }
        for _ in 0..2 {
            issuer_issuance(&client, &name, 0, &mut said).await;
        }
        assert_eq!(said.current(), None);
        let text = logs.text();
        assert_eq!(text.matches("can be read again").count(), 1, "{text}");
    }

    /// A failed restart is forgotten once its workload has been gone for a while, and every one
    /// once the rotation is over; the others are kept with what they were for.
    #[test]
    fn failed_restarts_are_forgotten_when_their_workload_is_gone_or_the_rotation_over() {
        let w = |name: &str| Workload {
            kind: "Deployment".to_owned(),
            namespace: "app".to_owned(),
            name: name.to_owned(),
        };
        let failed = || {
            [w("kept"), w("deleted")]
                .map(|w| {
                    let failure = FailedRestart {
                        restart_for: RestartFor::Bundle("b".repeat(64)),
                        failure: "forbidden".to_owned(),
                        at: std::time::Instant::now(),
                    };
                    (w, failure)
                })
                .into()
        };
        let workload = |kind: &str, name: &str| -> serde_json::Value {
            json!({"apiVersion": "apps/v1", "kind": kind,
                "metadata": {"name": name, "namespace": "app"},
                "spec": {"selector": {}, "template": {}}})
        };
        let stores = Stores {
            deployments: frozen(vec![object(workload("Deployment", "kept"))]),
            statefulsets: frozen(vec![object(workload("StatefulSet", "db"))]),
            daemonsets: frozen(vec![object(workload("DaemonSet", "agent"))]),
            rotation: frozen(vec![]),
            secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
            bundle: frozen(vec![]),
            pods: frozen(vec![]),
        };
        let kind = |kind: &str, name: &str| Workload {
            kind: kind.to_owned(),
            ..w(name)
        };
        assert!(stores.holds(&kind("StatefulSet", "db")));
        assert!(stores.holds(&kind("DaemonSet", "agent")));
        assert!(!stores.holds(&kind("Deployment", "db")));
        assert!(!stores.holds(&kind("DaemonSet", "kept")));
        let exists = |x: &Workload| stores.holds(x);
        let propagating = crate::crd::Phase::PropagatingTrustRoots;
        let mut during: BTreeMap<Workload, FailedRestart> = failed();
        // Gone a moment ago (a cache that lags): kept.
        let now = std::time::Instant::now();
        forget_restarts(&mut during, propagating, exists, now + FORGET_AFTER / 2);
        assert_eq!(during.len(), 2);
        forget_restarts(&mut during, propagating, exists, now + FORGET_AFTER);
        assert_eq!(during.keys().collect::<Vec<_>>(), [&w("kept")]);
        assert_eq!(during[&w("kept")].failure, "forbidden");
        let mut after: BTreeMap<Workload, FailedRestart> = failed();
        forget_restarts(&mut after, crate::crd::Phase::Synced, exists, now);
        assert!(after.is_empty());
    }

    /// A refused write is not sent again until its wait, which runs from the refusal (one that
    /// took 10 s to come, as from a policy webhook timing out, does not use the wait up), is
    /// over; a write that met a server error is sent again at once.
    #[tokio::test(start_paused = true)]
    async fn only_a_refused_write_waits_and_from_its_refusal() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let sent = AtomicU32::new(0);
        let fails = |code: u16, after: Duration| {
            let sent = &sent;
            async move {
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(after).await;
                Err::<(), _>(ReconcileError::Kube {
                    what: "restarting Deployment app/db".to_owned(),
                    source: kube::Error::Api(
                        kube::core::Status::failure("no", "Reason")
                            .with_code(code)
                            .boxed(),
                    ),
                })
            }
        };
        let mut retries = Retries::default();
        let key = || "restarting deployment/app/db".to_owned();
        let first = attempt(&mut retries, key(), fails(403, Duration::from_secs(10))).await;
        assert!(first.unwrap_err().refused());
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(1500)).await;
        let held = attempt(&mut retries, key(), fails(403, Duration::ZERO)).await;
        assert!(matches!(held, Err(ReconcileError::NotYetRetried(ref m)) if m.contains("(403)")));
        assert_eq!(sent.load(Ordering::SeqCst), 1, "not sent while it waits");
        tokio::time::advance(Duration::from_millis(600)).await;
        attempt(&mut retries, key(), fails(403, Duration::ZERO))
            .await
            .unwrap_err();
        assert_eq!(sent.load(Ordering::SeqCst), 2, "sent once the wait is over");

        let key = || "renewing Certificate linkerd/linkerd-identity-issuer".to_owned();
        for tries in 3..5 {
            attempt(&mut retries, key(), fails(500, Duration::ZERO))
                .await
                .unwrap_err();
            assert_eq!(
                sent.load(Ordering::SeqCst),
                tries,
                "a server error does not wait"
            );
        }
    }

    /// Restarts that failed before are sent again only in the room the step leaves, those whose
    /// wait is over, those that failed the longest ago first: one refused for good at the head
    /// of the list, or one that fails at every try without a wait (a policy webhook that is
    /// down), does not keep the others from their retry.
    #[test]
    fn failed_restarts_are_retried_in_the_room_left_those_that_failed_longest_ago_first() {
        let w = |i: usize| Workload {
            kind: "Deployment".to_owned(),
            namespace: "app".to_owned(),
            name: format!("w{i}"),
        };
        let retry: Vec<Workload> = (0..4).map(w).collect();
        let key = |w: &Workload| format!("restarting {w}");
        let t0 = std::time::Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        // w0 and w1 refused twice, the last time at 1 s (their wait 4 s), w2 refused once at 0
        // (2 s); w3 failed at 1 s with a server error, which has no wait.
        let mut retries = Retries::default();
        for _ in 0..2 {
            retries.failed(&key(&w(0)), "forbidden w0".to_owned(), at(1.0));
            retries.failed(&key(&w(1)), "forbidden w1".to_owned(), at(1.0));
        }
        retries.failed(&key(&w(2)), "forbidden w2".to_owned(), at(0.0));
        let mut failed_at = BTreeMap::from([
            (w(0), at(1.0)),
            (w(1), at(1.0)),
            (w(2), at(0.0)),
            (w(3), at(1.0)),
        ]);
        let pick = |retry: &[Workload], failed_at: &BTreeMap<Workload, _>, room, now| {
            let failed = |w: &Workload| failed_at.get(w).copied();
            retried_now(retry, room, &retries, key, failed, now)
                .into_iter()
                .map(|w| w.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(&retry, &failed_at, 2, at(1.0)), ["w3"]);
        assert_eq!(pick(&retry, &failed_at, 2, at(3.0)), ["w2", "w3"]);
        assert_eq!(pick(&retry, &failed_at, 1, at(3.0)), ["w2"]);
        assert_eq!(pick(&retry, &failed_at, 0, at(9.0)), [] as [String; 0]);
        // All due: the one that failed the longest ago, then the list's order.
        assert_eq!(pick(&retry, &failed_at, 2, at(9.0)), ["w0", "w2"]);
        // w3 failing again at every try goes to the back.
        failed_at.insert(w(3), at(8.0));
        assert_eq!(pick(&retry, &failed_at, 3, at(9.0)), ["w0", "w1", "w2"]);
        // One with no failure on record goes first.
        let mut more = retry.clone();
        more.push(w(4));
        assert_eq!(pick(&more, &failed_at, 1, at(9.0)), ["w4"]);
    }

    /// A pod seen with a leaf from the current issuer is not probed again while the issuer stays
    /// the same, counted at a real TLS server on loopback: a look of RenewingWorkloadCerts
    /// probes only the pods still to converge. A pod at another address (created again under
    /// its name) or another issuer is probed anew; a pod not converged is probed every look.
    /// Once every identity controller replica has surely loaded the issuer (the grace after
    /// it was first seen), every pod is probed once more.
    #[tokio::test]
    async fn a_pod_seen_with_a_leaf_from_the_issuer_is_not_probed_again() {
        use crate::sim::pki;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let now = pki::now();
        let template = |common_name: &str, is_ca| pki::Template {
            common_name: common_name.to_owned(),
            dns_names: if is_ca {
                vec![]
            } else {
                vec!["default.app.serviceaccount.identity.linkerd.cluster.local".to_owned()]
            },
            is_ca,
            not_before: now,
            not_after: now + Duration::from_secs(3600),
        };
        let issuer_key = pki::generate_key().unwrap();
        let issuer_der = template("identity.linkerd.cluster.local", true)
            .self_signed(&issuer_key)
            .unwrap();
        let leaf_key = pki::generate_key().unwrap();
        let leaf_der = template("web", false)
            .signed_by(&leaf_key, &issuer_der, &issuer_key)
            .unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_der.into(), issuer_der.clone().into()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        // Two listeners: the same proxy at two addresses.
        let handshakes = Arc::new(AtomicUsize::new(0));
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let (acceptor, handshakes) = (acceptor.clone(), handshakes.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _ = acceptor.accept(stream).await;
                    });
                }
            });
        }
        let cert = |der: &[u8]| Cert {
            fingerprint: crate::bundle::sha256_hex(der),
            pem: pki::to_pem(der),
            not_after: 0,
        };
        let observed_with =
            |issuer: Cert, addr| probed(issuer, vec![probe_target("web-0", Some(addr))]);
        let config = ReconcilerConfig {
            issuer_reload_grace: Duration::from_secs(10),
            ..ReconcilerConfig::default()
        };
        let mut seen = SeenLeaves::default();
        // Looks, each at a time (seconds from the first), with what it should find, how many
        // handshakes it should cost, and until when (Unix seconds) the identity controller's
        // replicas may still be loading the issuer, if they may.
        let other_issuer = cert(&ca_for_an_hour("identity.linkerd.cluster.local"));
        let looks = [
            (
                0,
                cert(&issuer_der),
                addrs[0],
                Leaf::FromIssuer,
                1,
                Some(11),
            ),
            (
                1,
                cert(&issuer_der),
                addrs[0],
                Leaf::FromIssuer,
                0,
                Some(11),
            ),
            (
                2,
                cert(&issuer_der),
                addrs[0],
                Leaf::FromIssuer,
                0,
                Some(11),
            ),
            (
                3,
                cert(&issuer_der),
                addrs[1],
                Leaf::FromIssuer,
                1,
                Some(11),
            ),
            (
                4,
                other_issuer.clone(),
                addrs[1],
                Leaf::FromOtherIssuer,
                1,
                Some(15),
            ),
            (
                5,
                other_issuer,
                addrs[1],
                Leaf::FromOtherIssuer,
                1,
                Some(15),
            ),
            (
                6,
                cert(&issuer_der),
                addrs[1],
                Leaf::FromIssuer,
                1,
                Some(17),
            ),
            (
                15,
                cert(&issuer_der),
                addrs[1],
                Leaf::FromIssuer,
                0,
                Some(17),
            ),
            // Every replica has loaded the issuer: seen once more, then no more.
            (16, cert(&issuer_der), addrs[1], Leaf::FromIssuer, 1, None),
            (17, cert(&issuer_der), addrs[1], Leaf::FromIssuer, 0, None),
            (30, cert(&issuer_der), addrs[1], Leaf::FromIssuer, 0, None),
        ];
        let start = Instant::now();
        for (n, (secs, issuer, addr, leaf, cost, until)) in looks.into_iter().enumerate() {
            let before = handshakes.load(Ordering::SeqCst);
            let mut observed = observed_with(issuer, addr);
            // Unix seconds, for the status's "until".
            observed.now = 1000 + secs;
            let at = start + Duration::from_secs(secs as u64);
            let probed = probe_leaves(&config, &mut observed, &mut seen, at).await;
            assert_eq!(observed.pods[0].leaf.as_ref(), Some(&leaf), "look {n}");
            let reload = observed.issuer_reload.as_ref();
            assert_eq!(reload.map(|r| r.until - 1000), until, "look {n}");
            // What the look's probes found, which the metric counts: only what was probed.
            assert_eq!(probed.len(), cost, "look {n}");
            // The server counts a connection once it has accepted it: give it the moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(handshakes.load(Ordering::SeqCst) - before, cost, "look {n}");
        }
    }

    /// The most identity controller replicas seen since the issuer was first seen hold until
    /// the grace is over, though one has gone since: before it went it may have signed a
    /// proxy's leaf with the old issuer. A new issuer starts over.
    #[test]
    fn the_most_identity_replicas_seen_since_the_issuer_changed_count_until_the_grace_is_over() {
        let mut seen = SeenLeaves::default();
        let (t0, grace) = (Instant::now(), Duration::from_secs(10));
        let at = |s: u64| (t0 + Duration::from_secs(s), 1000 + s as i64);
        let mut look = |issuer, s, replicas| {
            let reload = seen.for_issuer(issuer, at(s), grace, (replicas, None));
            reload.map(|r| (r.replicas, r.until))
        };
        assert_eq!(look("a", 0, 2), Some((2, 1011)));
        // One replica gone (scaled down, its node drained).
        assert_eq!(look("a", 5, 1), Some((2, 1011)));
        assert_eq!(look("a", 10, 1), None);
        assert_eq!(look("a", 11, 2), None);
        assert_eq!(look("b", 12, 1), Some((1, 1023)));
        assert_eq!(look("b", 13, 3), Some((3, 1023)));
    }

    /// A process that first sees the issuer it rotates to cannot tell which identity controller
    /// replicas ran since it changed (it started, or took the lead, since): it says so. One
    /// that saw another issuer first, in any phase, saw the change.
    #[test]
    fn a_process_that_did_not_see_the_issuer_change_cannot_tell_how_many_replicas_ran() {
        let (now, grace) = ((Instant::now(), 1000), Duration::from_secs(10));
        let unwitnessed = |seen: &mut SeenLeaves, issuer| {
            let reload = seen.for_issuer(issuer, now, grace, (1, None));
            reload.map(|r| r.unwitnessed)
        };
        assert_eq!(unwitnessed(&mut SeenLeaves::default(), "b"), Some(true));
        // Seen in another phase: the issuer the process started with.
        let mut started_on_b = SeenLeaves::default();
        started_on_b.clear(Some("b"));
        assert_eq!(unwitnessed(&mut started_on_b, "b"), Some(true));
        // The issuer changed under this process, before RenewingWorkloadCerts or in it.
        let mut saw_a = SeenLeaves::default();
        saw_a.clear(Some("a"));
        saw_a.clear(Some("b"));
        assert_eq!(unwitnessed(&mut saw_a, "b"), Some(false));
        let mut in_phase = SeenLeaves::default();
        unwitnessed(&mut in_phase, "a");
        assert_eq!(unwitnessed(&mut in_phase, "b"), Some(false));
    }

    /// An identity controller pod not ready (its node cut off, its kubelet not updating its
    /// Secret volume) holds past the grace, and the grace counts again from when it is ready.
    #[test]
    fn an_identity_replica_not_ready_holds_until_the_grace_after_it_is_ready() {
        let mut seen = SeenLeaves::default();
        let (t0, grace) = (Instant::now(), Duration::from_secs(10));
        let at = |s: u64| (t0 + Duration::from_secs(s), 1000 + s as i64);
        let mut look = |s, unready: Option<&str>| {
            let reload = seen.for_issuer("a", at(s), grace, (2, unready.map(str::to_owned)));
            reload.map(|r| (r.unready, r.until))
        };
        let pod = Some("linkerd/identity-1".to_owned());
        assert_eq!(look(0, None), Some((None, 1011)));
        assert_eq!(look(5, pod.as_deref()), Some((pod.clone(), 1011)));
        assert_eq!(look(30, pod.as_deref()), Some((pod.clone(), 1011)));
        assert_eq!(look(31, None), Some((None, 1042)));
        assert_eq!(look(40, None), Some((None, 1042)));
        assert_eq!(look(41, None), None);
        // Over: a replica not ready since had the grace to load it.
        assert_eq!(look(42, pod.as_deref()), None);
    }

    /// A proxy the probe cannot reach is unreachable, with what the probe met: no pod IP, a
    /// refused connection, no TLS answer within the timeout (what a NetworkPolicy that drops
    /// the operator's packets looks like). Real sockets on loopback.
    #[tokio::test]
    async fn an_unreachable_proxy_is_named_with_what_the_probe_met() {
        use crate::sim::pki;
        let issuer_der = ca_for_an_hour("identity.linkerd.cluster.local");
        let issuer = Cert {
            fingerprint: crate::bundle::sha256_hex(&issuer_der),
            pem: pki::to_pem(&issuer_der),
            not_after: 0,
        };
        // A port nothing listens on, and one that accepts but never answers.
        // (Below the ephemeral range, where no connection a parallel test opens can take it.)
        let closed =
            std::net::SocketAddr::from(([127, 0, 0, 1], crate::testbed::free_port().unwrap()));
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let mut observed = probed(
            issuer,
            vec![
                probe_target("unscheduled", None),
                probe_target("refused", Some(closed)),
                probe_target("silent", Some(silent_addr)),
            ],
        );
        let config = ReconcilerConfig {
            probe_timeout: Duration::from_millis(300),
            ..ReconcilerConfig::default()
        };
        probe_leaves(
            &config,
            &mut observed,
            &mut SeenLeaves::default(),
            Instant::now(),
        )
        .await;
        let why: Vec<String> = observed
            .pods
            .iter()
            .map(|p| match &p.leaf {
                Some(Leaf::Unreachable(why)) => why.clone(),
                other => panic!("{}: {other:?}", p.name),
            })
            .collect();
        assert_eq!(why[0], "no pod IP yet");
        assert!(
            why[1].starts_with(&format!("{closed}: connecting: ")),
            "{}",
            why[1]
        );
        assert_eq!(why[2], format!("{silent_addr}: no answer within 300ms"));
    }

    /// What a look outside the accelerating phases observes in `stores`: nothing is asked of
    /// the API server then, so the client points nowhere.
    async fn observe_offline(stores: &Stores) -> Observed {
        let client =
            Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
        observe(
            &client,
            &ReconcilerConfig::default(),
            stores,
            &BTreeMap::new(),
            false,
            &mut Lasting::default(),
        )
        .await
        .unwrap()
    }

    /// A pod no node takes, or whose container waits on something waiting does not fix, is not
    /// starting, in the scheduler's or the kubelet's words; one still pulling its image or
    /// being created, or running, is.
    #[test]
    fn a_pod_not_starting_is_told_from_one_starting() {
        let pod = |status: serde_json::Value| -> Pod {
            object(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "db-2", "namespace": "app"}, "status": status}))
        };
        let waiting = |name: &str, reason: &str| {
            json!({"name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": format!("{reason} message")}}})
        };
        let unschedulable = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
        );
        assert_eq!(
            not_starting(&unschedulable).as_deref(),
            Some("Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.")
        );
        // The init container runs first: its trouble is the one named.
        let pulling = pod(json!({"phase": "Pending",
            "initContainerStatuses": [waiting("linkerd-init", "ImagePullBackOff")],
            "containerStatuses": [waiting("db", "PodInitializing")]}));
        assert_eq!(
            not_starting(&pulling).as_deref(),
            Some("container linkerd-init: ImagePullBackOff: ImagePullBackOff message")
        );
        let crashing = pod(json!({"phase": "Running",
            "containerStatuses": [waiting("linkerd-proxy", "ContainerCreating"),
                waiting("db", "CrashLoopBackOff")]}));
        assert_eq!(
            not_starting(&crashing).as_deref(),
            Some("container db: CrashLoopBackOff: CrashLoopBackOff message")
        );
        for starting in [
            pod(json!({"phase": "Pending"})),
            pod(
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "SchedulingGated"}]}),
            ),
            pod(json!({"phase": "Pending",
                "containerStatuses": [waiting("db", "ContainerCreating")]})),
            pod(
                json!({"phase": "Running", "containerStatuses": [{"name": "db", "image": "i",
                "imageID": "", "ready": true, "restartCount": 3,
                "state": {"running": {}}}]}),
            ),
        ] {
            assert_eq!(not_starting(&starting), None, "{:?}", starting.status);
        }
    }

    /// Workload templates that carry the proxy with literal anchors (`linkerd inject`) are read
    /// with those anchors, a workload scaled to zero too; not one whose proxy reads them from
    /// the ConfigMap, nor the control plane's own.
    #[tokio::test]
    async fn templates_injected_by_linkerd_inject_are_read_with_their_anchors() {
        let pem = std::fs::read_to_string(format!(
            "{}/tests/fixtures/anchor.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let fingerprint = crate::bundle::Bundle::from_pem("anchor", &pem)
            .unwrap()
            .fingerprints()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>();
        let deployment = |ns: &str, name: &str, replicas: i32, env: serde_json::Value| {
            let mut labels = json!({});
            if ns == "linkerd" {
                labels = json!({CONTROL_PLANE_NS_LABEL: "linkerd"});
            }
            object::<Deployment>(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"replicas": replicas, "selector": {},
                    "template": {"spec": {"containers": [
                        {"name": "app", "image": "app"},
                        {"name": PROXY_CONTAINER, "image": "proxy", "env": env}]}}}}))
        };
        let literal = json!([{"name": TRUST_ANCHORS_ENV, "value": pem}]);
        let stores = Stores {
            rotation: frozen(vec![]),
            secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
            bundle: frozen(vec![]),
            pods: frozen(vec![]),
            deployments: frozen(vec![
                // Scaled to zero: its next pods start with what the template says.
                deployment("app", "injected", 0, literal.clone()),
                deployment(
                    "app",
                    "garbled",
                    1,
                    json!([{"name": TRUST_ANCHORS_ENV, "value": "x"}]),
                ),
                deployment(
                    "app",
                    "from-configmap",
                    1,
                    json!([{"name": TRUST_ANCHORS_ENV, "valueFrom": {"configMapKeyRef":
                        {"name": "linkerd-identity-trust-roots", "key": "ca-bundle.crt"}}}]),
                ),
                deployment("linkerd", "linkerd-destination", 1, literal),
            ]),
            statefulsets: frozen(vec![]),
            daemonsets: frozen(vec![]),
        };
        let observed = observe_offline(&stores).await;
        let baked: BTreeMap<&str, Option<BTreeSet<String>>> = observed
            .baked_templates
            .iter()
            .map(|(w, a)| (w.name.as_str(), a.clone()))
            .collect();
        assert_eq!(
            baked,
            BTreeMap::from([("injected", Some(fingerprint.clone())), ("garbled", None)])
        );
        // Where an anchor the bundle lost is found again: the one anchor, once.
        let held: Vec<&str> = (observed.held_anchors.iter())
            .map(|c| c.fingerprint.as_str())
            .collect();
        assert_eq!(held, Vec::from_iter(fingerprint.iter().map(String::as_str)));
        assert!(observed.held_anchors[0].pem.contains("BEGIN CERTIFICATE"));
    }

    /// A rollout in progress is marked with a new pod of it (carrying the template's markers)
    /// that is not starting; not with an old pod (being replaced), nor once the rollout is
    /// complete.
    #[tokio::test]
    async fn a_rollout_is_marked_with_a_new_pod_that_is_not_starting() {
        let statefulset = |name: &str, ready: i32| -> StatefulSet {
            object(json!({"apiVersion": "apps/v1",
                "kind": "StatefulSet", "metadata": {"name": name, "namespace": "app", "generation": 2},
                "spec": {"replicas": 2, "serviceName": name, "selector": {},
                    "template": {"metadata": {"annotations": {RESTART_ANNOTATION: "new"}}}},
                "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": ready,
                    "updatedReplicas": 2, "currentRevision": "r2", "updateRevision": "r2"}}))
        };
        let pod = |set: &str, ordinal: u32, marker: &str, waiting: Option<&str>| -> Pod {
            let mut p = running_pod(
                "app",
                &format!("{set}-{ordinal}"),
                owned_by("StatefulSet", set),
            );
            p.metadata.annotations =
                Some([(RESTART_ANNOTATION.to_owned(), marker.to_owned())].into());
            if let Some(reason) = waiting {
                p.status = Some(object(json!({"phase": "Running", "containerStatuses": [{
                    "name": "db", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": reason, "message": "back-off 40s"}}}]})));
            }
            p
        };
        let stores = Stores {
            rotation: frozen(vec![]),
            secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
            bundle: frozen(vec![]),
            pods: frozen(vec![
                // db: its old pod crashes, its new one is fine: nothing to say.
                pod("db", 0, "old", Some("CrashLoopBackOff")),
                pod("db", 1, "new", None),
                // cache: its new pod crashes.
                pod("cache", 0, "old", None),
                pod("cache", 1, "new", Some("CrashLoopBackOff")),
                // queue: done rolling; a crash now is not the rollout's.
                pod("queue", 0, "new", Some("CrashLoopBackOff")),
            ]),
            deployments: frozen(vec![]),
            statefulsets: frozen(vec![
                statefulset("db", 1),
                statefulset("cache", 1),
                statefulset("queue", 2),
            ]),
            daemonsets: frozen(vec![]),
        };
        let observed = observe_offline(&stores).await;
        let not_starting: BTreeMap<&str, Option<&str>> = observed
            .restart_markers
            .iter()
            .map(|(w, m)| (w.name.as_str(), m.not_starting.as_deref()))
            .collect();
        assert_eq!(
            not_starting,
            BTreeMap::from([
                ("db", None),
                (
                    "cache",
                    Some(
                        "pod app/cache-1 is not starting: container db: CrashLoopBackOff: back-off 40s"
                    )
                ),
                ("queue", None),
            ])
        );
        assert!(
            observed
                .restart_markers
                .values()
                .all(|m| m.stalled.is_none())
        );
    }

    /// A previous-anchor Secret of another type than `Opaque` (a copy of the anchor's TLS
    /// Secret) is a problem naming it: the write that ends every rotation would be refused, as a
    /// Secret's type cannot change. The same certificate in an `Opaque` Secret is read.
    #[tokio::test]
    async fn a_previous_anchor_secret_that_is_not_opaque_is_a_problem() {
        use crate::sim::pki;
        let der = ca_for_an_hour("root.linkerd.cluster.local");
        let secret = |type_: &str| -> Secret {
            let mut s: Secret = object(json!({"metadata": {"name": "linkerd-previous-anchor",
                "namespace": "linkerd"}, "type": type_}));
            s.data = Some(BTreeMap::from([(
                "tls.crt".to_owned(),
                k8s_openapi::ByteString(pki::to_pem(&der).into_bytes()),
            )]));
            s
        };
        let stores = |s: Secret| Stores {
            rotation: frozen(vec![]),
            secrets: vec![frozen(vec![]), frozen(vec![s]), frozen(vec![])],
            bundle: frozen(vec![]),
            pods: frozen(vec![]),
            deployments: frozen(vec![]),
            statefulsets: frozen(vec![]),
            daemonsets: frozen(vec![]),
        };
        let observed = observe_offline(&stores(secret("kubernetes.io/tls"))).await;
        let problem = observed.previous.unwrap_err().to_string();
        assert!(
            problem.starts_with(
                "Secret linkerd/linkerd-previous-anchor: has type kubernetes.io/tls, and a Secret's type cannot change"
            ),
            "{problem}"
        );
        let observed = observe_offline(&stores(secret("Opaque"))).await;
        assert!(observed.previous.unwrap().is_some());
    }

    /// A control-plane pod as `linkerd install` makes it (`linkerd.io/created-by: linkerd/cli
    /// ...`, which reads as injected by the CLI, so no workload restart renews it) still names
    /// the control-plane Deployment whose restart marker tells what bundle it runs with, a
    /// paused one too; a pod labelled as control plane in another namespace, or owned by a
    /// StatefulSet, names none.
    #[tokio::test]
    async fn a_control_plane_pod_names_its_deployment_however_it_was_installed() {
        let control_plane = |mut pod: Pod, created_by: &str| {
            pod.labels_mut().insert(
                CONTROL_PLANE_COMPONENT_LABEL.to_owned(),
                "destination".to_owned(),
            );
            pod.annotations_mut()
                .insert("linkerd.io/created-by".to_owned(), created_by.to_owned());
            pod
        };
        let deployment = |name: &str, paused: bool| -> Deployment {
            object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "linkerd"},
                "spec": {"paused": paused, "selector": {}, "template": {}}}))
        };
        let stores = Stores {
            rotation: frozen(vec![]),
            secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
            bundle: frozen(vec![]),
            pods: frozen(vec![
                control_plane(
                    running_pod(
                        "linkerd",
                        "linkerd-destination-5d8f7c-a",
                        owned_by("ReplicaSet", "linkerd-destination-5d8f7c"),
                    ),
                    "linkerd/cli stable-2.14.10",
                ),
                control_plane(
                    running_pod(
                        "linkerd",
                        "linkerd-identity-5d8f7c-a",
                        owned_by("ReplicaSet", "linkerd-identity-5d8f7c"),
                    ),
                    "linkerd/helm enterprise-2.18.0",
                ),
                control_plane(
                    running_pod(
                        "linkerd-multicluster",
                        "linkerd-gateway-5d8f7c-a",
                        owned_by("ReplicaSet", "linkerd-gateway-5d8f7c"),
                    ),
                    "linkerd/helm enterprise-2.18.0",
                ),
                control_plane(
                    running_pod(
                        "linkerd",
                        "linkerd-mirror-0",
                        owned_by("StatefulSet", "mirror"),
                    ),
                    "linkerd/helm enterprise-2.18.0",
                ),
            ]),
            deployments: frozen(vec![
                deployment("linkerd-destination", false),
                deployment("linkerd-identity", true),
            ]),
            statefulsets: frozen(vec![]),
            daemonsets: frozen(vec![]),
        };
        let observed = observe_offline(&stores).await;
        let named: BTreeMap<String, Option<String>> = observed
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.control_plane_deployment.clone()))
            .collect();
        assert_eq!(
            named,
            BTreeMap::from([
                (
                    "linkerd-destination-5d8f7c-a".to_owned(),
                    Some("linkerd-destination".to_owned())
                ),
                (
                    "linkerd-identity-5d8f7c-a".to_owned(),
                    Some("linkerd-identity".to_owned())
                ),
                ("linkerd-gateway-5d8f7c-a".to_owned(), None),
                ("linkerd-mirror-0".to_owned(), None),
            ])
        );
        let destination = observed
            .pods
            .iter()
            .find(|p| p.name == "linkerd-destination-5d8f7c-a")
            .unwrap();
        assert_eq!(destination.owner, Err(Unfixable::ManuallyInjected));
    }

    /// Pods a template change would not roll (a paused Deployment's, an OnDelete StatefulSet's,
    /// those below a StatefulSet's partition, an orphaned ReplicaSet's) are named as such
    /// instead of being restarted and waited for forever; the rest of a partitioned StatefulSet
    /// is restarted as usual, and so is a pod just created whose Deployment the watch has not
    /// shown yet.
    #[tokio::test]
    async fn workloads_a_restart_would_not_roll_are_told_apart() {
        let deployment = |name: &str, paused: bool| -> Deployment {
            object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "app"},
                "spec": {"paused": paused, "selector": {}, "template": {}}}))
        };
        let statefulset = |name: &str, strategy: serde_json::Value| -> StatefulSet {
            object(json!({"apiVersion": "apps/v1",
                "kind": "StatefulSet", "metadata": {"name": name, "namespace": "app"},
                "spec": {"serviceName": name, "selector": {}, "template": {},
                    "updateStrategy": strategy}}))
        };
        let stores = Stores {
            rotation: frozen(vec![]),
            secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
            bundle: frozen(vec![]),
            pods: frozen(vec![
                running_pod("app", "web-5d8f7c-a", owned_by("ReplicaSet", "web-5d8f7c")),
                running_pod("app", "api-5d8f7c-a", owned_by("ReplicaSet", "api-5d8f7c")),
                running_pod("app", "db-0", owned_by("StatefulSet", "db")),
                running_pod("app", "cache-0", owned_by("StatefulSet", "cache")),
                running_pod("app", "cache-1", owned_by("StatefulSet", "cache")),
                created_ago(
                    running_pod("app", "old-5d8f7c-a", owned_by("ReplicaSet", "old-5d8f7c")),
                    3600,
                ),
                created_ago(
                    running_pod("app", "new-5d8f7c-a", owned_by("ReplicaSet", "new-5d8f7c")),
                    1,
                ),
            ]),
            deployments: frozen(vec![deployment("web", true), deployment("api", false)]),
            statefulsets: frozen(vec![
                statefulset("db", json!({"type": "OnDelete"})),
                statefulset(
                    "cache",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}),
                ),
            ]),
            daemonsets: frozen(vec![]),
        };
        let observed = observe_offline(&stores).await;
        let owners: BTreeMap<String, Result<Workload, Unfixable>> = observed
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.owner.clone()))
            .collect();
        let workload = |kind: &str, name: &str| Workload {
            kind: kind.to_owned(),
            namespace: "app".to_owned(),
            name: name.to_owned(),
        };
        assert_eq!(
            owners,
            BTreeMap::from([
                (
                    "web-5d8f7c-a".to_owned(),
                    Err(Unfixable::Paused(workload("Deployment", "web")))
                ),
                ("api-5d8f7c-a".to_owned(), Ok(workload("Deployment", "api"))),
                (
                    "db-0".to_owned(),
                    Err(Unfixable::OnDelete("StatefulSet app/db".to_owned()))
                ),
                (
                    "cache-0".to_owned(),
                    Err(Unfixable::Partitioned {
                        workload: workload("StatefulSet", "cache"),
                        partition: 1
                    })
                ),
                ("cache-1".to_owned(), Ok(workload("StatefulSet", "cache"))),
                (
                    "old-5d8f7c-a".to_owned(),
                    Err(Unfixable::Owner(
                        "ReplicaSet old-5d8f7c, whose Deployment old does not exist".to_owned()
                    ))
                ),
                ("new-5d8f7c-a".to_owned(), Ok(workload("Deployment", "new"))),
            ])
        );
    }

    /// Which pods count, and as what: a Running pod, or a Pending one whose native-sidecar proxy
    /// has started, is running; a Pending pod whose proxy has not started is starting (its
    /// anchors already count for the bundle); a deleted pod drains only if its proxy ran, and
    /// only until its grace period is over (and a slack for clocks and the kubelet).
    #[tokio::test]
    async fn pods_are_running_starting_or_draining_by_their_proxy() {
        let pod = |name: &str, status: serde_json::Value, deleted_in: Option<i64>| -> Pod {
            let mut p = running_pod("app", name, owned_by("ReplicaSet", "web-5d8f7c"));
            p.status = serde_json::from_value(status).unwrap();
            p.metadata.deletion_timestamp = deleted_in.map(|secs| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now()
                        + k8s_openapi::jiff::SignedDuration::from_secs(secs),
                )
            });
            p
        };
        let pending = json!({"phase": "Pending"});
        let sidecar_started = json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "linkerd-proxy", "image": "proxy", "imageID": "", "ready": false,
             "restartCount": 0, "started": true}]});
        let stores = Stores {
            rotation: frozen(vec![]),
            secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
            bundle: frozen(vec![]),
            pods: frozen(vec![
                pod("running", json!({"phase": "Running"}), None),
                pod("unscheduled", pending.clone(), None),
                pod("sidecar-started", sidecar_started, None),
                pod("deleted-before-start", pending, Some(30)),
                pod("draining", json!({"phase": "Running"}), Some(30)),
                // Past its deadline by less than the slack: the clocks may differ, and the
                // kubelet may still be stopping it.
                pod("stopping", json!({"phase": "Running"}), Some(-5)),
                pod("drained", json!({"phase": "Running"}), Some(-60)),
                pod("succeeded", json!({"phase": "Succeeded"}), None),
            ]),
            deployments: frozen(vec![]),
            statefulsets: frozen(vec![]),
            daemonsets: frozen(vec![]),
        };
        let observed = observe_offline(&stores).await;
        let names = |pods: &[MeshedPod]| -> BTreeSet<String> {
            pods.iter().map(|p| p.name.clone()).collect()
        };
        let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(names(&observed.pods), set(&["running", "sidecar-started"]));
        assert_eq!(names(&observed.starting), set(&["unscheduled"]));
        assert_eq!(names(&observed.draining), set(&["draining", "stopping"]));
    }

    /// A Deployment whose new pods never become available (here no kubelet runs them) is
    /// marked by the real Deployment controller `Progressing=False`, reason
    /// `ProgressDeadlineExceeded`, once its `progressDeadlineSeconds` pass: that is read as a
    /// rollout that will not finish by itself, with the controller's words.
    #[tokio::test]
    async fn a_rollout_past_its_progress_deadline_is_stalled() {
        let cp = ControlPlane::start().await.expect("a local control plane");
        let api = Api::<Deployment>::namespaced(cp.client(), "default");
        let deployment: Deployment = object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 1, "progressDeadlineSeconds": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "web"}]}}}}));
        api.create(&PostParams::default(), &deployment)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let stalled = loop {
            let d = api.get("web").await.unwrap();
            assert!(!d.rollout_complete());
            if let Some(why) = d.rollout_stalled() {
                break why;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never stalled: {:?}",
                d.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            stalled.starts_with("ProgressDeadlineExceeded: ") && stalled.contains("web"),
            "{stalled}"
        );
    }

    /// With a `rollingUpdate.partition`, the replicas below it never update: the rollout is
    /// complete once those above it are updated and every replica is ready.
    #[test]
    fn a_partitioned_statefulset_rollout_completes_without_the_replicas_it_holds_back() {
        let statefulset = |partition: Option<i32>, updated: i32, same_revision: bool| {
            let mut s: StatefulSet = object(json!({"apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": "db", "namespace": "app", "generation": 2},
                "spec": {"replicas": 3, "serviceName": "db", "selector": {}, "template": {},
                    "updateStrategy": {"type": "RollingUpdate"}},
                "status": {"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
                    "updatedReplicas": updated, "currentRevision": "db-1",
                    "updateRevision": if same_revision { "db-1" } else { "db-2" }}}));
            if let Some(p) = partition {
                s.spec
                    .as_mut()
                    .unwrap()
                    .update_strategy
                    .as_mut()
                    .unwrap()
                    .rolling_update = Some(object(json!({ "partition": p })));
            }
            s
        };
        assert!(statefulset(None, 3, true).rollout_complete());
        assert!(!statefulset(None, 2, false).rollout_complete());
        // Partition 1: replicas 1 and 2 roll, replica 0 keeps the old revision.
        assert!(statefulset(Some(1), 2, false).rollout_complete());
        assert!(!statefulset(Some(1), 1, false).rollout_complete());
        // A partition above the replica count holds every replica back.
        assert!(statefulset(Some(5), 0, false).rollout_complete());
    }

    /// The issuer's renewal is under way while `Issuing=True`, and also once the Certificate
    /// records an issuance newer than the Secret the reconciler has seen: its Secret cache
    /// lags, and renewing again would issue twice. Real API server, the stand-in's CRD.
    #[tokio::test]
    async fn an_issuance_the_secret_cache_has_not_shown_counts_as_under_way() {
        let cp = ControlPlane::start().await.expect("a local control plane");
        let client = cp.client();
        for crd in crate::sim::certmanager::crds() {
            crate::sim::install_crd(&client, &crd).await.unwrap();
        }
        let api = certificate_api(&client, "default");
        let certificate: DynamicObject = object(json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": "issuer", "namespace": "default"},
            "spec": {"secretName": "issuer", "commonName": "identity.linkerd.cluster.local",
                "issuerRef": {"name": "anchor", "kind": "Issuer"}}}));
        api.create(&PostParams::default(), &certificate)
            .await
            .unwrap();
        let set_status = |status: serde_json::Value| {
            let api = api.clone();
            async move {
                api.patch_status(
                    "issuer",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
                .unwrap();
            }
        };
        let name = ("default".to_owned(), "issuer".to_owned());
        // The notAfter of the certificate last issued: 2026-11-26T00:00:00Z.
        let issued: i64 = 1_795_651_200;
        set_status(json!({"notAfter": "2026-11-26T00:00:00Z", "conditions": []})).await;
        let issuing = |cached| {
            let client = client.clone();
            let name = name.clone();
            async move {
                issuer_issuance(&client, &name, cached, &mut Lasting::default())
                    .await
                    .0
            }
        };
        assert!(!issuing(issued).await, "the Secret shows the last issuance");
        assert!(
            issuing(issued - 3600).await,
            "the Secret shows an older certificate than the Certificate issued"
        );
        set_status(json!({"conditions": [{"type": "Issuing", "status": "True"}]})).await;
        assert!(issuing(issued).await, "Issuing=True");
        // A failure as cert-manager records it, read back through the API server.
        set_status(json!({"lastFailureTime": "2026-11-24T10:00:00Z", "failedIssuanceAttempts": 2,
            "conditions": [{"type": "Issuing", "status": "False", "reason": "Denied",
                "message": "The certificate request has failed to complete and will be retried: no policy"}]}))
        .await;
        assert_eq!(
            issuer_issuance(&client, &name, issued, &mut Lasting::default()).await,
            (
                false,
                Some(IssuanceFailure {
                    at: 1_795_514_400,
                    attempts: Some(2),
                    reason: Some("Denied".to_owned()),
                    message: Some(
                        "The certificate request has failed to complete and will be retried: no policy"
                            .to_owned()
                    ),
                })
            )
        );
    }

    /// cert-manager re-triggered after a failure: `Issuing=True` again, the failure still on
    /// record (time and count, no reason: the condition now says Issuing); cert-manager before
    /// 1.13 records no count.
    #[test]
    fn a_failure_is_read_from_whatever_status_cert_manager_left() {
        let status = json!({"lastFailureTime": "2026-11-24T10:00:00Z",
            "conditions": [{"type": "Issuing", "status": "True", "reason": "ManuallyTriggered"}]});
        let (issuing, failure) = issuance_of(&status, 0);
        assert!(issuing);
        assert_eq!(
            failure,
            Some(IssuanceFailure {
                at: 1_795_514_400,
                attempts: None,
                reason: None,
                message: None
            })
        );
        assert_eq!(issuance_of(&json!({}), 0), (false, None));
        assert_eq!(issuance_of(&serde_json::Value::Null, 0), (false, None));
    }

    /// A watch task that ends (none should) is named, with how it ended: the reconciler then
    /// stops instead of deciding from a store that no longer changes.
    #[tokio::test]
    async fn a_watch_task_that_ends_is_named() {
        let mut watches = Watches::new(WatchErrors::default(), Gauge::default());
        let ended = watches.tasks.spawn(async {}).id();
        watches.names.insert(ended, "StatefulSets".to_owned());
        assert_eq!(watches.stopped().await, "the watch of StatefulSets ended");
        let panicked = watches
            .tasks
            .spawn(async { panic!("a bug in a watch") })
            .id();
        watches.names.insert(panicked, "Deployments".to_owned());
        assert_eq!(watches.stopped().await, "the watch of Deployments panicked");
        let none_ends = tokio::time::timeout(Duration::from_millis(50), watches.stopped()).await;
        assert!(none_ends.is_err(), "no task left: stopped() waits");
    }

    /// A watch task that ends while the reconciler waits for the stores to list stops the wait
    /// at once, even while a store before its own has not listed (here, none ever does).
    #[tokio::test]
    async fn a_watch_task_that_ends_before_the_stores_list_stops_the_wait() {
        let mut watches = Watches::new(WatchErrors::default(), Gauge::default());
        watches.tasks.spawn(std::future::pending());
        let panicked = watches
            .tasks
            .spawn(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!("a bug in a watch")
            })
            .id();
        watches.names.insert(panicked, "DaemonSets".to_owned());
        let mut synced = std::pin::pin!(std::future::pending::<bool>());
        let (started, mut ticks) = (Instant::now(), 0);
        let stopped = loop {
            match until_synced(&mut watches, synced.as_mut(), Duration::from_millis(20)).await {
                Ok(true) => panic!("nothing listed"),
                Ok(false) => ticks += 1,
                Err(stopped) => break stopped,
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the wait went on"
            );
        };
        assert_eq!(stopped, "the watch of DaemonSets panicked");
        assert!(
            ticks > 0,
            "no turn to look at the failing watches meanwhile"
        );
    }

    /// A watched object deleted wakes the reconciler as one created or changed does.
    #[tokio::test]
    async fn a_deleted_object_wakes_the_reconciler() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let cp = ControlPlane::start().await.expect("a local control plane");
        let client = cp.client();
        let mut watches = Watches::new(WatchErrors::default(), Gauge::default());
        let wake = watches.wake.clone();
        let configmaps = Api::<ConfigMap>::namespaced(client.clone(), "default");
        let store = watches.reflect(
            "ConfigMap bundle".to_owned(),
            configmaps.clone(),
            named("bundle"),
            true,
        );
        // The same object through a store that drops managedFields (its own watches: the
        // wake-ups checked below are the first store's alone).
        let mut lean_watches = Watches::new(WatchErrors::default(), Gauge::default());
        let lean = lean_watches.reflect(
            "ConfigMap".to_owned(),
            configmaps.clone(),
            named("bundle"),
            false,
        );
        store.wait_until_ready().await.expect("synced");
        lean.wait_until_ready().await.expect("synced");
        let bundle: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bundle"},
            "data": {"ca-bundle.crt": "x"}}))
        .unwrap();
        // The list's wake-up is pending (a permit: nobody waited): taken first, so that the
        // next one is the creation's. This test's runtime has one thread, and the watch task
        // wakes right after it has filled the store, without yielding in between.
        tokio::time::timeout(Duration::from_millis(100), wake.notified())
            .await
            .expect("the list's wake-up is pending");
        configmaps
            .create(&PostParams::default(), &bundle)
            .await
            .unwrap();
        let woken = |what: &'static str| {
            let wake = wake.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(30), wake.notified())
                    .await
                    .unwrap_or_else(|_| panic!("not woken by the {what}"));
            }
        };
        woken("creation").await;
        let key = ObjectRef::new("bundle").within("default");
        let kept = store.get(&key).expect("in the store");
        assert!(!kept.managed_fields().is_empty(), "kept where asked for");
        let since = std::time::Instant::now();
        let dropped = loop {
            if let Some(o) = lean.get(&key) {
                break o;
            }
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "not in the lean store"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(dropped.managed_fields().is_empty(), "dropped elsewhere");
        configmaps
            .delete("bundle", &Default::default())
            .await
            .unwrap();
        woken("deletion").await;
        assert!(store.is_empty(), "the store follows the deletion");
        watches.tasks.abort_all();
        lean_watches.tasks.abort_all();
    }

    /// A watch that fails (here: its permission taken away, met when the API server ends the
    /// watch and the watcher starts a new one) is failing, and the reconciler would hold, until
    /// it has listed again: kube's watcher says nothing when a retried watch starts, so a
    /// failed watch lists everything anew, and what it missed meanwhile is in the store then.
    #[tokio::test]
    async fn a_failed_watch_is_failing_until_it_has_listed_again() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        let cp = ControlPlane::start_with_options(crate::testbed::Options {
            plain_users: vec!["watcher".to_owned()],
            ..Default::default()
        })
        .await
        .expect("a local control plane");
        let admin = cp.client();
        let watcher_client =
            crate::testbed::client_from_kubeconfig(&cp.kubeconfig_for("watcher").unwrap())
                .await
                .unwrap();
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]
        }))
        .unwrap();
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "read-configmaps"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "watcher"}]
        }))
        .unwrap();
        let bindings = Api::<RoleBinding>::namespaced(admin.clone(), "default");
        (Api::<Role>::namespaced(admin.clone(), "default"))
            .create(&PostParams::default(), &role)
            .await
            .unwrap();
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
        let configmaps = Api::<ConfigMap>::namespaced(admin.clone(), "default");
        for name in ["kept", "missed"] {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"watched": "yes"}}}),
            )
            .unwrap();
            configmaps
                .create(&PostParams::default(), &cm)
                .await
                .unwrap();
        }

        let gauge = Gauge::default();
        let mut watches = Watches::new(WatchErrors::default(), gauge.clone());
        // The API server ends each watch after a second, and the watcher starts the next one:
        // a lost permission is met within a second.
        let store = watches.reflect(
            "ConfigMaps".to_owned(),
            Api::<ConfigMap>::namespaced(watcher_client, "default"),
            watcher::Config::default().labels("watched=yes").timeout(1),
            false,
        );
        store.wait_until_ready().await.expect("synced");
        let names = || {
            let mut names: Vec<String> = store.state().iter().map(|c| c.name_any()).collect();
            names.sort();
            names
        };
        // Waits until the watch is failing (`true`) or not.
        let until_failing = |failing: bool| {
            let watches = watches.failing.clone();
            async move {
                let since = std::time::Instant::now();
                while watches.describe().is_some() != failing {
                    assert!(
                        since.elapsed() < Duration::from_secs(20),
                        "the watch is still {}failing",
                        if failing { "not " } else { "" }
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(names(), ["kept", "missed"]);
        assert_eq!(watches.failing.describe(), None);

        bindings
            .delete("read-configmaps", &Default::default())
            .await
            .unwrap();
        until_failing(true).await;
        let failing = watches.failing.describe().unwrap();
        assert!(
            failing.starts_with("the watch of ConfigMaps (")
                && failing.contains("User \"watcher\" cannot")
                && failing.ends_with("(403))"),
            "{failing}"
        );
        assert_eq!(gauge.get(), 1);
        // A change it cannot see: the store still shows the object, which is why nothing may
        // be decided from it now.
        configmaps
            .delete("missed", &Default::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(names(), ["kept", "missed"]);
        assert!(watches.failing.describe().is_some());

        bindings
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
        until_failing(false).await;
        assert_eq!(gauge.get(), 0);
        assert_eq!(names(), ["kept"], "the list brought in what was missed");
        watches.tasks.abort_all();
    }

    /// A local control plane with the TrustAnchorRotation CRD served, and its admin client. The
    /// control plane stops when dropped: keep it for the whole test.
    async fn control_plane_with_crd() -> (ControlPlane, Client) {
        let cp = ControlPlane::start().await.expect("a local control plane");
        let client = cp.client();
        crate::sim::install_crd(&client, &TrustAnchorRotation::crd())
            .await
            .expect("the CRD installed");
        (cp, client)
    }

    /// The reconciler decides from its watch cache, which can lag its own last status write.
    /// A look from a cache that still shows the object before that write must neither write
    /// the step again nor announce it twice. Real API server; the lag is a cache that is not
    /// fed, so the second look certainly comes from before the first write.
    #[tokio::test]
    async fn a_look_from_a_cache_older_than_the_last_status_write_writes_and_announces_nothing() {
        let (_cp, client) = control_plane_with_crd().await;
        let rotations = Api::<TrustAnchorRotation>::all(client.clone());
        let rotation: TrustAnchorRotation = serde_json::from_value(json!({
            "apiVersion": "trust.linkerd.io/v1alpha1", "kind": "TrustAnchorRotation",
            "metadata": {"name": "cluster"}, "spec": {}}))
        .unwrap();
        let created = rotations
            .create(&PostParams::default(), &rotation)
            .await
            .unwrap();

        // No certificate Secrets: every look parks the rotation and, the first time, says so.
        let created_version = created.resource_version();
        let stores = unmeshed(created, vec![vec![], vec![], vec![]], vec![]);
        let config = ReconcilerConfig::default();
        let recorder = test_recorder(&client);
        let metrics = ReconcileMetrics::register(&mut Default::default());
        let mut versions = Vec::new();
        for _ in 0..3 {
            reconcile_once(
                &client,
                &config,
                &stores,
                &recorder,
                &metrics,
                &mut Memory::default(),
            )
            .await
            .expect("a look");
            versions.push(rotations.get("cluster").await.unwrap().resource_version());
        }
        // The first look wrote the parked status; the two from the stale cache wrote nothing.
        assert_ne!(versions[0], created_version, "the first look wrote");
        assert_eq!(versions[1..], [versions[0].clone(), versions[0].clone()]);

        let status = rotations.get("cluster").await.unwrap().status.unwrap();
        let blocking = status.blocking_message.unwrap_or_default();
        assert!(blocking.starts_with("parked: "), "{blocking}");
        let events = Api::<Event>::namespaced(client.clone(), EVENTS_NAMESPACE)
            .list(&ListParams::default())
            .await
            .unwrap();
        let parked: Vec<_> = events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RotationParked"))
            .map(|e| e.note.clone().unwrap_or_default())
            .collect();
        assert_eq!(parked.len(), 1, "announced once: {parked:?}");
    }

    /// Labels `name` (`touched: yes`): a change of another writer's that moves its
    /// resourceVersion and nothing the reconciler reads.
    async fn touch<K>(api: &Api<K>, name: &str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    }

    /// Creates the namespaces `names`.
    async fn create_namespaces(client: &Client, names: &[&str]) {
        for ns in names {
            Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &object(json!({"metadata": {"name": ns}})),
                )
                .await
                .unwrap();
        }
    }

    /// A CA certificate's template named `name`, valid from an hour ago for 30 days.
    fn ca_template(name: &str) -> crate::sim::pki::Template {
        let now = time::OffsetDateTime::now_utc();
        crate::sim::pki::Template {
            common_name: name.to_owned(),
            dns_names: Vec::new(),
            is_ca: true,
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(30),
        }
    }

    /// Linkerd as installed, before any rotation: the anchor's and the issuer's Secrets, the
    /// bundle ConfigMap with the anchor, no previous anchor yet; and the `cluster` rotation.
    fn linkerd_as_installed() -> (Secret, Secret, ConfigMap, TrustAnchorRotation) {
        use crate::sim::pki::{generate_key, to_pem};
        let (anchor_key, issuer_key) = (generate_key().unwrap(), generate_key().unwrap());
        let anchor = ca_template("anchor").self_signed(&anchor_key).unwrap();
        let issuer = ca_template("identity.linkerd.cluster.local")
            .signed_by(&issuer_key, &anchor, &anchor_key)
            .unwrap();
        // `data`, as the API server keeps it, so that the objects read the same in a store.
        let secret = |ns: &str, name: &str, der: &[u8]| -> Secret {
            let mut secret: Secret = object(json!({"metadata": {"name": name, "namespace": ns}}));
            let pem = k8s_openapi::ByteString(to_pem(der).into_bytes());
            secret.data = Some(BTreeMap::from([("tls.crt".to_owned(), pem)]));
            secret
        };
        (
            secret("cert-manager", "linkerd-trust-anchor", &anchor),
            secret("linkerd", "linkerd-identity-issuer", &issuer),
            object(json!({"metadata": {"name": "linkerd-identity-trust-roots",
                    "namespace": "linkerd"},
                "data": {"ca-bundle.crt": to_pem(&anchor)}})),
            object(json!({"apiVersion": "trust.linkerd.io/v1alpha1",
                "kind": "TrustAnchorRotation", "metadata": {"name": "cluster"}, "spec": {}})),
        )
    }

    /// A step that fails, whose status write then fails too (here the rotation is gone from
    /// the server, and the namespace the step writes in never was): the look ends with the
    /// step's failure, the one to act on, not the status write's.
    #[tokio::test]
    async fn a_failed_step_whose_status_write_fails_too_ends_with_the_steps_failure() {
        let (_cp, client) = control_plane_with_crd().await;
        let (anchor_secret, issuer_secret, bundle, rotation) = linkerd_as_installed();
        let stores = unmeshed(
            rotation,
            vec![vec![anchor_secret], vec![], vec![issuer_secret]],
            vec![bundle],
        );
        let failed = reconcile_once(
            &client,
            &ReconcilerConfig::default(),
            &stores,
            &test_recorder(&client),
            &ReconcileMetrics::register(&mut Default::default()),
            &mut Memory::default(),
        )
        .await
        .expect_err("a failed step");
        let said = failed.to_string();
        assert!(
            said.contains("Secret linkerd/linkerd-previous-anchor"),
            "{said}"
        );
    }

    /// A look whose writes went through but whose status write was refused as stale (someone
    /// labelled the rotation meanwhile) still says what the writes did: the next look finds
    /// them done, and would never say it. Said once, even by a look from the same stale caches
    /// that decides the write again. Real API server.
    #[tokio::test]
    async fn writes_whose_status_write_was_stale_are_still_announced_once() {
        let (_cp, client) = control_plane_with_crd().await;
        create_namespaces(&client, &["cert-manager", "linkerd"]).await;
        let (anchor_secret, issuer_secret, bundle, rotation) = linkerd_as_installed();
        let mut created = Vec::new();
        for s in [&anchor_secret, &issuer_secret] {
            created.push(
                Api::<Secret>::namespaced(client.clone(), &s.namespace().unwrap())
                    .create(&PostParams::default(), s)
                    .await
                    .unwrap(),
            );
        }
        let bundle = Api::<ConfigMap>::namespaced(client.clone(), "linkerd")
            .create(&PostParams::default(), &bundle)
            .await
            .unwrap();
        let rotations = Api::<TrustAnchorRotation>::all(client.clone());
        let rotation = rotations
            .create(&PostParams::default(), &rotation)
            .await
            .unwrap();
        let stale = unmeshed(
            rotation,
            vec![vec![created[0].clone()], vec![], vec![created[1].clone()]],
            vec![bundle],
        );
        touch(&rotations, "cluster").await;
        let config = ReconcilerConfig::default();
        let recorder = test_recorder(&client);
        let metrics = ReconcileMetrics::register(&mut Default::default());
        let bootstrapped = || events_with_reason(&client, "BootstrappedPreviousAnchor");

        let mut memory = Memory::default();
        for look in 0..2 {
            let requeue =
                reconcile_once(&client, &config, &stale, &recorder, &metrics, &mut memory)
                    .await
                    .expect("a look");
            assert_eq!(requeue, Requeue::Soon);
            // The second look is held until the Secret's watch shows the write: let it go.
            memory.own_writes.pending.clear();
            assert_eq!(
                rotations.get("cluster").await.unwrap().status,
                None,
                "{look}"
            );
            assert_eq!(bootstrapped().await, 1, "look {look}");
        }
        Api::<Secret>::namespaced(client.clone(), "linkerd")
            .get("linkerd-previous-anchor")
            .await
            .expect("the previous anchor written");
    }

    /// Who wrote over the operator's bundle, read from the ConfigMap's managedFields on the
    /// real API server: nobody for the bundle Linkerd was installed with (the operator never
    /// wrote it), right after the operator's write, or for a writer that applied the operator's
    /// own bundle; the writer after it, whether it updated (`helm upgrade`, `kubectl edit`) or
    /// applied server-side with force (Flux); and what a replacement leaves.
    #[tokio::test]
    async fn the_writer_over_the_operators_bundle_is_named_from_managed_fields() {
        let cp = ControlPlane::start().await.expect("a local control plane");
        let client = cp.client();
        let config = ReconcilerConfig::default();
        let (ns, name) = config.names.bundle_configmap.clone();
        crate::sim::linkerd::namespace(&client, &ns, json!({}), json!({}))
            .await
            .unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let key = config.bundle_key.clone();
        let read = || async { overwritten_by(&api.get(&name).await.unwrap(), &key) };
        let version = || async { api.get(&name).await.unwrap().resource_version() };
        let update_as = |manager: &'static str, pem: &'static str| {
            let api = api.clone();
            let (name, key) = (name.clone(), key.clone());
            async move {
                api.patch(
                    &name,
                    &PatchParams {
                        field_manager: Some(manager.to_owned()),
                        ..Default::default()
                    },
                    &Patch::Merge(json!({ "data": { key: pem } })),
                )
                .await
                .unwrap();
            }
        };
        let apply_as = |manager: &'static str, pem: &'static str| {
            let api = api.clone();
            let (name, key) = (name.clone(), key.clone());
            async move {
                api.patch(
                    &name,
                    &PatchParams::apply(manager).force(),
                    &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name}, "data": {key: pem}})),
                )
                .await
                .unwrap();
            }
        };
        let recorder = test_recorder(&client);
        let reference = ObjectReference::default();
        // The operator's write, as the reconciler carries it out.
        let write = |written_over: Option<String>| {
            let (client, config, recorder, reference) = (&client, &config, &recorder, &reference);
            async move {
                let effect = Effect::WriteBundle {
                    pem: "restored".to_owned(),
                    fingerprint: "f".repeat(64),
                    written_over,
                };
                execute(
                    client,
                    config,
                    recorder,
                    reference,
                    &effect,
                    (
                        &mut BTreeMap::new(),
                        &mut Retries::default(),
                        &mut UnseenRestarts::default(),
                    ),
                )
                .await
            }
        };
        let nobody = Vec::<String>::new();

        // Linkerd's install.
        let installed: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "data": {key.as_str(): "installed"}}))
        .unwrap();
        api.create(
            &PostParams {
                field_manager: Some("helm".to_owned()),
                ..Default::default()
            },
            &installed,
        )
        .await
        .unwrap();
        assert_eq!(read().await, nobody, "never written by the operator");

        write(version().await).await.unwrap();
        assert_eq!(read().await, nobody, "the operator's is the latest write");

        update_as("helm", "upgraded").await;
        assert_eq!(read().await, ["helm"]);
        write(version().await).await.unwrap();
        assert_eq!(read().await, nobody);

        // A GitOps controller that applies the operator's own bundle shares it: no overwrite.
        apply_as("kustomize-controller", "restored").await;
        assert_eq!(read().await, nobody);
        // One that applies another, and a hand edit after it: only the last holds the key.
        apply_as("kustomize-controller", "flux").await;
        assert_eq!(read().await, ["kustomize-controller"]);
        update_as("kubectl-edit", "edited").await;
        assert_eq!(read().await, ["kubectl-edit"]);

        // A replacement (a PUT without the operator's annotations: `kubectl replace`, `helm
        // upgrade --force`) takes the operator's annotations and managedFields entry with it:
        // nothing here says the operator wrote the bundle (its status remembers), and the key
        // is held by the replacer.
        write(version().await).await.unwrap();
        let mut replacing: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "data": {key.as_str(): "replaced"}}))
        .unwrap();
        replacing.metadata.resource_version = version().await;
        let replaced = api
            .replace(
                &name,
                &PostParams {
                    field_manager: Some("kubectl-replace".to_owned()),
                    ..Default::default()
                },
                &replacing,
            )
            .await
            .unwrap();
        assert_eq!(overwritten_by(&replaced, &key), nobody);
        assert!(
            !replaced
                .annotations()
                .contains_key(WRITTEN_BUNDLE_ANNOTATION)
        );
        assert_eq!(key_holders(&replaced, &key), ["kubectl-replace"]);

        // A write decided from a version that has changed since is refused as a conflict (the
        // look is then made again), and changes nothing.
        let decided_from = version().await;
        update_as("helm", "changed since").await;
        let stale = write(decided_from).await.unwrap_err();
        assert!(stale.conflict(), "{stale:?}");
        let data = api.get(&name).await.unwrap().data.unwrap();
        assert_eq!(data[&key], "changed since");
        write(version().await).await.unwrap();
        assert_eq!(
            api.get(&name).await.unwrap().data.unwrap()[&key],
            "restored"
        );
    }

    /// A step that failed holds the phase and says why; the pods counted by the look that
    /// tried it still show, within the phase (a workload that cannot be restarted must not
    /// freeze the counts), but not across a transition that did not happen.
    #[test]
    fn a_failed_step_holds_the_phase_and_keeps_the_counts_of_its_phase() {
        use crate::crd::{ConditionStatus, ConvergenceStatus, Phase};
        use crate::reconcile::decide::CONTESTED_CONDITION;
        let previous = TrustAnchorRotationStatus {
            phase: Phase::PropagatingTrustRoots,
            trust_bundle: Some(ConvergenceStatus::new(1, 4)),
            ..Default::default()
        };
        let error = ReconcileError::Kube {
            what: "restarting Deployment app/web".to_owned(),
            source: kube::Error::Api(Box::new(
                kube::core::Status::failure("denied by policy", "Forbidden").with_code(403),
            )),
        };
        let decided = TrustAnchorRotationStatus {
            trust_bundle: Some(ConvergenceStatus::new(3, 4)),
            blocking_message: Some("restarting 1 workload".to_owned()),
            ..previous.clone()
        };
        let held = failed_step_status(&previous, &decided, &error);
        assert_eq!(held.phase, Phase::PropagatingTrustRoots);
        assert_eq!(held.trust_bundle, Some(ConvergenceStatus::new(3, 4)));
        let message = held.blocking_message.unwrap();
        assert!(
            message.starts_with("could not carry out the next step, retrying: restarting Deployment app/web: denied by policy (403)"),
            "{message}"
        );
        let moving_on = TrustAnchorRotationStatus {
            phase: Phase::WaitingForIdentityRotation,
            ..decided
        };
        let held = failed_step_status(&previous, &moving_on, &error);
        assert_eq!(held.phase, Phase::PropagatingTrustRoots);
        assert_eq!(held.trust_bundle, Some(ConvergenceStatus::new(1, 4)));

        // An issuer renewed out of order, first seen by a look whose step fails: the condition
        // is raised with the urgent prefix, not held back with the step; the bundle's contest
        // (its restores, this one not done) stays as it was.
        let condition = |type_: &str, status| crate::crd::Condition {
            type_: type_.to_owned(),
            status,
            reason: "r".to_owned(),
            message: "m".to_owned(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        let previous = TrustAnchorRotationStatus {
            conditions: vec![
                condition(OUT_OF_ORDER_CONDITION, ConditionStatus::False),
                condition(CONTESTED_CONDITION, ConditionStatus::False),
            ],
            ..previous
        };
        let raised = TrustAnchorRotationStatus {
            conditions: vec![
                condition(OUT_OF_ORDER_CONDITION, ConditionStatus::True),
                condition(CONTESTED_CONDITION, ConditionStatus::True),
            ],
            blocking_message: Some(format!("{OUT_OF_ORDER_URGENT}; restarting 1 workload")),
            ..previous.clone()
        };
        let held = failed_step_status(&previous, &raised, &error);
        let status_of = |type_: &str| {
            held.conditions
                .iter()
                .find(|c| c.type_ == type_)
                .map(|c| c.status)
        };
        assert_eq!(
            status_of(OUT_OF_ORDER_CONDITION),
            Some(ConditionStatus::True)
        );
        assert_eq!(status_of(CONTESTED_CONDITION), Some(ConditionStatus::False));
        assert!(
            held.blocking_message
                .as_deref()
                .unwrap()
                .starts_with(&format!("{OUT_OF_ORDER_URGENT}; could not carry out")),
            "{held:?}"
        );

        // Its events: that the step failed, in the held status's words, and the renewal out of
        // order; not the step's own (a phase change, a contest: neither happened).
        let event = |warning, reason: &str, message: &str| Effect::Event {
            warning,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let decided_events = [
            event(true, OUT_OF_ORDER_CONDITION, "the issuer was renewed early"),
            event(
                false,
                "WaitingForIdentityRotation",
                "PropagatingTrustRoots -> WaitingForIdentityRotation: every pod holds the bundle",
            ),
            event(true, "TrustBundleContested", "overwritten again"),
        ];
        let decided_events: Vec<&Effect> = decided_events.iter().collect();
        assert_eq!(
            failed_step_events(&held, &decided_events),
            [
                (
                    true,
                    "StepFailed",
                    held.blocking_message.as_deref().unwrap()
                ),
                (true, OUT_OF_ORDER_CONDITION, "the issuer was renewed early"),
            ]
        );
        // Without it, only the failure.
        assert_eq!(
            failed_step_events(&held, &decided_events[1..]),
            [(
                true,
                "StepFailed",
                held.blocking_message.as_deref().unwrap()
            )]
        );
    }

    /// In `Synced`, a status that changes the pod counts alone waits for its write until
    /// [`COUNTS_GAP`] has passed since the last such write; any other change is written at
    /// once, and is no such write.
    #[test]
    fn only_a_change_of_counts_alone_in_synced_waits_for_its_write() {
        use crate::crd::{ConvergenceStatus, Phase};
        let synced = TrustAnchorRotationStatus {
            phase: Phase::Synced,
            trust_bundle: Some(ConvergenceStatus::new(4, 4)),
            workload_certificates: Some(ConvergenceStatus::new(4, 4)),
            ..Default::default()
        };
        let scaled = TrustAnchorRotationStatus {
            trust_bundle: Some(ConvergenceStatus::new(5, 5)),
            workload_certificates: Some(ConvergenceStatus::new(4, 5)),
            ..synced.clone()
        };
        assert!(counts_only_change(&synced, &scaled));
        let said = TrustAnchorRotationStatus {
            blocking_message: Some("1 meshed pod(s) lack the trust bundle".to_owned()),
            ..scaled.clone()
        };
        assert!(!counts_only_change(&synced, &said));
        let moving = TrustAnchorRotationStatus {
            phase: Phase::PropagatingTrustRoots,
            ..scaled.clone()
        };
        assert!(!counts_only_change(&synced, &moving));
        let propagating = TrustAnchorRotationStatus {
            phase: Phase::PropagatingTrustRoots,
            ..synced.clone()
        };
        assert!(!counts_only_change(
            &propagating,
            &TrustAnchorRotationStatus {
                trust_bundle: Some(ConvergenceStatus::new(5, 5)),
                ..propagating.clone()
            }
        ));
        // The first such write goes in; the next waits out the gap; another change does not
        // wait, and the count change after it goes in at once.
        let mut writes = CountWrites::default();
        let t0 = Instant::now();
        assert_eq!(writes.hold(&synced, &scaled, t0), None);
        writes.wrote(&synced, &scaled, t0);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            writes.hold(&scaled, &synced, t1),
            Some(COUNTS_GAP - Duration::from_secs(2))
        );
        assert_eq!(writes.hold(&scaled, &said, t1), None);
        assert_eq!(writes.hold(&scaled, &synced, t0 + COUNTS_GAP), None);
        writes.wrote(&scaled, &said, t1);
        assert_eq!(
            writes.hold(
                &said,
                &TrustAnchorRotationStatus {
                    trust_bundle: None,
                    ..said.clone()
                },
                t1
            ),
            None
        );
        // The held write is looked at again in time, whatever the decision's own requeue.
        let wait = Duration::from_secs(3);
        assert_eq!(Requeue::Idle.within(wait), Requeue::Within(wait));
        assert_eq!(
            Requeue::Within(Duration::from_secs(60)).within(wait),
            Requeue::Within(wait)
        );
        assert_eq!(
            Requeue::Within(Duration::from_secs(1)).within(wait),
            Requeue::Within(Duration::from_secs(1))
        );
        assert_eq!(Requeue::Soon.within(wait), Requeue::Soon);
    }

    /// A look that leaves the rotation as the last one left it (no status write) and decides
    /// the same step announces it once: its watch of the restarted workload lags, and the
    /// repeated restart is a no-op. Another step, or the same one after the rotation changed,
    /// is announced.
    #[test]
    fn a_step_decided_again_over_an_unchanged_status_is_announced_once() {
        let restarting = |what: &str| Effect::Event {
            warning: false,
            reason: "RestartingWorkloads".to_owned(),
            message: format!("restarting {what}"),
        };
        let (a, b) = (
            restarting("deployment/mesh-0/a"),
            restarting("deployment/mesh-0/b"),
        );
        let v = |n: &str| Some(n.to_owned());
        let mut published = Published::default();
        assert_eq!(published.fresh(v("2"), vec![&a]), [&a]);
        assert!(published.fresh(v("2"), vec![&a]).is_empty(), "repeated");
        assert!(published.fresh(v("2"), vec![]).is_empty());
        assert!(
            published.fresh(v("2"), vec![&a]).is_empty(),
            "still repeated"
        );
        assert_eq!(published.fresh(v("2"), vec![&b]), [&b], "another step");
        assert_eq!(
            published.fresh(v("3"), vec![&b]),
            [&b],
            "the rotation changed"
        );
        // Without a version to tell looks apart, nothing is held back.
        assert_eq!(published.fresh(None, vec![&b]), [&b]);
        assert_eq!(published.fresh(None, vec![&b]), [&b]);
    }

    /// A write awaited for a while is checked against the API server: the reconciler created
    /// the bundle ConfigMap and someone deleted it before the watch showed it; the watch then
    /// shows "not there" as it did before the write, and without asking the server the
    /// rotation would wait forever. The control: a ConfigMap the server has and the watch does
    /// not show yet is still awaited.
    #[tokio::test]
    async fn an_awaited_write_is_let_go_once_the_api_server_shows_what_the_watch_shows() {
        let cp = ControlPlane::start().await.expect("a local control plane");
        let client = cp.client();
        create_namespaces(&client, &["linkerd"]).await;
        let config = ReconcilerConfig::default();
        let watched = Stores {
            rotation: frozen(vec![]),
            secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
            bundle: frozen(vec![]),
            pods: frozen(vec![]),
            deployments: frozen(vec![]),
            statefulsets: frozen(vec![]),
            daemonsets: frozen(vec![]),
        };
        let a_while_ago = || {
            std::time::Instant::now()
                .checked_sub(OWN_WRITE_CONFIRM + Duration::from_secs(1))
                .unwrap()
        };

        let mut writes = OwnWrites::default();
        writes.wrote(OwnWrite::Bundle, None, Some("1".to_owned()));
        // Just written: awaited, the server not asked yet.
        writes.confirm(&client, &config, &watched).await;
        assert_eq!(writes.awaited(&config, &watched), Awaited::Yes);
        // A while later the server has no such ConfigMap either: let go.
        writes.pending[0].2 = a_while_ago();
        writes.confirm(&client, &config, &watched).await;
        assert_eq!(writes.awaited(&config, &watched), Awaited::No);

        let created = Api::<ConfigMap>::namespaced(client.clone(), "linkerd")
            .create(
                &PostParams::default(),
                &object(json!({"metadata": {"name": "linkerd-identity-trust-roots"},
                    "data": {"ca-bundle.crt": ""}})),
            )
            .await
            .unwrap();
        writes.wrote(OwnWrite::Bundle, None, created.resource_version());
        writes.pending[0].2 = a_while_ago();
        writes.confirm(&client, &config, &watched).await;
        assert_eq!(
            writes.awaited(&config, &watched),
            Awaited::Yes,
            "the watch is behind the server"
        );
        let caught_up = Stores {
            bundle: frozen(vec![created]),
            ..watched
        };
        assert_eq!(writes.awaited(&config, &caught_up), Awaited::No);
    }

    /// The reconciler's own write of the bundle, then a look whose ConfigMap watch has not
    /// shown it yet (the other watches have): that look must wait, not decide from the bundle
    /// before the write. Real API server; the lag is a store that is not fed. Beside it, the
    /// same look without the memory of the write does decide from the old bundle, and its write,
    /// made onto the version it read, is refused as a conflict: nothing is written or announced
    /// twice. So is a look decided from a ConfigMap that another writer changed since. A lag
    /// past the patience is said in the status.
    #[tokio::test]
    async fn a_look_waits_for_the_watch_to_show_the_reconcilers_own_write() {
        use crate::sim::pki::{generate_key, to_pem};
        let (_cp, client) = control_plane_with_crd().await;
        create_namespaces(&client, &["cert-manager", "linkerd"]).await;
        let (old_key, new_key, issuer_key) = (
            generate_key().unwrap(),
            generate_key().unwrap(),
            generate_key().unwrap(),
        );
        let old = ca_template("old anchor").self_signed(&old_key).unwrap();
        let new = ca_template("new anchor").self_signed(&new_key).unwrap();
        let issuer = ca_template("identity.linkerd.cluster.local")
            .signed_by(&issuer_key, &old, &old_key)
            .unwrap();
        let secret = |ns: &str, name: &str, key: &str, der: &[u8]| -> Secret {
            object(json!({"metadata": {"name": name, "namespace": ns},
                "stringData": {key: to_pem(der)}}))
        };
        for s in [
            secret("cert-manager", "linkerd-trust-anchor", "tls.crt", &new),
            secret("linkerd", "linkerd-previous-anchor", "ca.crt", &old),
            secret("linkerd", "linkerd-identity-issuer", "tls.crt", &issuer),
        ] {
            Api::<Secret>::namespaced(client.clone(), &s.namespace().unwrap())
                .create(&PostParams::default(), &s)
                .await
                .unwrap();
        }
        let configmaps = Api::<ConfigMap>::namespaced(client.clone(), "linkerd");
        configmaps
            .create(
                &PostParams::default(),
                &object(json!({"metadata": {"name": "linkerd-identity-trust-roots"},
                    "data": {"ca-bundle.crt": to_pem(&old)}})),
            )
            .await
            .unwrap();
        let trust_roots = || async {
            configmaps
                .get("linkerd-identity-trust-roots")
                .await
                .unwrap()
        };
        let rotations = Api::<TrustAnchorRotation>::all(client.clone());
        rotations
            .create(
                &PostParams::default(),
                &object(json!({"apiVersion": "trust.linkerd.io/v1alpha1",
                    "kind": "TrustAnchorRotation", "metadata": {"name": "cluster"},
                    "spec": {"workloadCertificateRefreshInterval": "5m"}})),
            )
            .await
            .unwrap();

        let secrets = |ns: &str, name: &str| {
            let api = Api::<Secret>::namespaced(client.clone(), ns);
            let name = name.to_owned();
            async move { vec![api.get(&name).await.unwrap()] }
        };
        let looks = || async {
            unmeshed(
                rotations.get("cluster").await.unwrap(),
                vec![
                    secrets("cert-manager", "linkerd-trust-anchor").await,
                    secrets("linkerd", "linkerd-previous-anchor").await,
                    secrets("linkerd", "linkerd-identity-issuer").await,
                ],
                vec![trust_roots().await],
            )
        };
        let config = ReconcilerConfig::default();
        let recorder = test_recorder(&client);
        let metrics = ReconcileMetrics::register(&mut Default::default());
        let events = || events_with_reason(&client, "RefreshingControlPlane");

        // A look decided from a ConfigMap that another writer has changed since (here, only
        // a label) writes nothing over it: the bundle write is refused as a conflict, and the
        // look ends asking for another soon, without a status, an event or a failure. Until
        // it has happened CONFLICT_PATIENCE times in a row: then it is a failed step.
        let stale = looks().await;
        touch(&configmaps, "linkerd-identity-trust-roots").await;
        let mut conflicts = Memory::default();
        let mut looks_from_stale = async || {
            reconcile_once(
                &client,
                &config,
                &stale,
                &recorder,
                &metrics,
                &mut conflicts,
            )
            .await
        };
        for _ in 1..CONFLICT_PATIENCE {
            let requeue = looks_from_stale().await;
            assert_eq!(requeue.expect("a look that met a conflict"), Requeue::Soon);
            let untouched = trust_roots().await;
            assert_eq!(untouched.data.unwrap()["ca-bundle.crt"], to_pem(&old));
            assert_eq!(rotations.get("cluster").await.unwrap().status, None);
        }
        let failed = looks_from_stale()
            .await
            .expect_err("a run of conflicts is a failed step");
        assert!(failed.conflict(), "{failed:?}");
        let status = rotations.get("cluster").await.unwrap().status.unwrap();
        let blocking = status.blocking_message.unwrap_or_default();
        assert!(
            blocking.contains("writing ConfigMap linkerd/linkerd-identity-trust-roots"),
            "{blocking}"
        );
        assert_eq!(events().await, 0);

        // The anchor was renewed: the first look writes the expanded bundle and says so.
        let before = looks().await;
        let mut memory = Memory::default();
        reconcile_once(&client, &config, &before, &recorder, &metrics, &mut memory)
            .await
            .expect("a look");
        let status = rotations.get("cluster").await.unwrap().status.unwrap();
        assert_eq!(status.phase, crate::crd::Phase::RefreshingControlPlane);
        assert_eq!(events().await, 1);

        // Every watch but the ConfigMap's has caught up.
        let lagging = Stores {
            bundle: before.bundle.clone(),
            ..looks().await
        };
        let written = trust_roots().await;
        let requeue = reconcile_once(&client, &config, &lagging, &recorder, &metrics, &mut memory)
            .await
            .expect("a look");
        assert_eq!(requeue, Requeue::Soon);
        assert_eq!(events().await, 1, "nothing announced twice");
        let after = trust_roots().await;
        assert_eq!(after.resource_version(), written.resource_version());
        // Lagging for longer than the patience: the status says why nothing moves, once.
        memory.own_writes.pending[0].2 = std::time::Instant::now()
            .checked_sub(OWN_WRITE_PATIENCE + Duration::from_secs(1))
            .unwrap();
        reconcile_once(&client, &config, &lagging, &recorder, &metrics, &mut memory)
            .await
            .expect("a look");
        let held = rotations.get("cluster").await.unwrap().status.unwrap();
        assert_eq!(held.phase, crate::crd::Phase::RefreshingControlPlane);
        let message = held.blocking_message.unwrap_or_default();
        assert!(
            message.starts_with(&format!(
                "{HOLDING}its watch of ConfigMap linkerd/linkerd-identity-trust-roots has not shown its own write of it for 30s"
            )),
            "{message}"
        );
        assert_eq!(
            memory.own_writes.awaited(&config, &lagging),
            Awaited::Yes,
            "said once"
        );
        let current = looks().await;
        assert_eq!(
            memory.own_writes.awaited(&config, &current),
            Awaited::No,
            "caught up"
        );
        // Caught up, a look has nothing to announce (no control plane to restart here).
        reconcile_once(&client, &config, &current, &recorder, &metrics, &mut memory)
            .await
            .expect("a look");
        assert_eq!(events().await, 1);

        // Without the memory of its write, the same look decides from the old bundle: it
        // writes the expanded bundle again, onto the version it read, which the write has
        // replaced. Refused as a conflict, it writes and announces nothing either. Read afresh
        // but for the bundle: the caught-up look wrote the status since `lagging` was read.
        let lagging = Stores {
            bundle: before.bundle.clone(),
            ..looks().await
        };
        let requeue = reconcile_once(
            &client,
            &config,
            &lagging,
            &recorder,
            &metrics,
            &mut Memory::default(),
        )
        .await
        .expect("a look");
        assert_eq!(requeue, Requeue::Soon);
        assert_eq!(events().await, 1, "announced twice");
        let bundle = trust_roots().await;
        assert_eq!(bundle.resource_version(), written.resource_version());
    }
}
