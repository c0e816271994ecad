//! The reconciler's I/O: reflectors gather [`Observed`] (named-object watches for the three
//! certificate Secrets and the bundle ConfigMap; meshed pods, the control plane's included, by
//! label; every Deployment, StatefulSet and DaemonSet; the `cluster` resource), the pure
//! [`decide`] picks the step, and this module executes its [`Effect`]s idempotently, then
//! writes status by server-side apply onto the resourceVersion it decided from, and publishes
//! the step's events once that has landed.
//!
//! Here: the loop (`run`, `reconcile_once`), the status write and the events. Around it:
//! `watches` (the reflectors and their stores), `observe` (one look, and the probes of
//! proxies' leaves), `objects` (what a pod or workload says, read without I/O), `execute`
//! (the effects) and `memory` (what is kept from one look to the next).

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

mod execute;
mod memory;
mod objects;
mod observe;
mod watches;

use execute::*;
use memory::*;
use objects::*;
use observe::*;
use watches::*;

pub use objects::Restartable;

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
/// The proxy admin port, where a TLS handshake returns the live leaf chain, unless the proxy
/// container names another (`linkerd-admin`).
const ADMIN_PORT: u16 = super::decide::PROXY_ADMIN_PORT;
const ADMIN_PORT_NAME: &str = "linkerd-admin";

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
    /// next (one `StepFailed` per failure); those done are announced by
    /// `ReconcileError::restarted`.
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
mod tests;
