//! What the reconciler observes and what it asks the I/O layer to do: plain values, no clients.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::crd::{Phase, RenewalPolicy, RestartPolicy};

/// An anchor or issuer certificate as the decision needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cert {
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    /// PEM of this one certificate (what a bundle or the previous-anchor Secret is built from).
    pub pem: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// A certificate source that could not be used, named for the blocking message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `Secret cert-manager/linkerd-trust-anchor`, `ConfigMap linkerd/linkerd-identity-trust-roots`.
    pub object: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// The identity issuer as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer {
    pub cert: Cert,
    /// Fingerprint of the known anchor (current, previous or in the bundle) that signed it, if
    /// any of them did.
    pub signed_by: Option<String>,
    /// The issuer Certificate carries `Issuing=True` (a renewal is under way). Only the
    /// [`accelerating`] phases, which can renew the issuer or move to waiting for it, read it:
    /// the reconciler fetches it there alone, and it is `false` elsewhere.
    pub issuing: bool,
    /// cert-manager's record of its last failed issuance of the issuer Certificate, while it
    /// stands (the next success clears it). Read where `issuing` is, and `None` elsewhere.
    pub failure: Option<IssuanceFailure>,
}

/// A failed issuance, as cert-manager records it on the Certificate: `status.lastFailureTime`,
/// `status.failedIssuanceAttempts`, and the `Issuing=False` condition carrying the request's
/// reason (`Failed`, `Denied`...) and message. cert-manager itself tries again only after an
/// hour (doubling per further failure), unless `Issuing=True` is set again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuanceFailure {
    /// Unix seconds.
    pub at: i64,
    /// Failures since the last success; `None` before cert-manager 1.13, which does not count.
    pub attempts: Option<u32>,
    /// The `Issuing=False` condition's reason and message, if the condition is there.
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// After a failed issuance of the issuer, the automatic renewal asks again only this long
/// after the failure, doubling with each further failure up to [`ISSUER_RETRY_MAX`]: asking on
/// every look would bypass cert-manager's backoff and repeat a request that fails the same way
/// (one denied by policy, one whose CA is broken) every few seconds.
pub const ISSUER_RETRY_FIRST: Duration = Duration::from_secs(5 * 60);
pub const ISSUER_RETRY_MAX: Duration = Duration::from_secs(60 * 60);

impl IssuanceFailure {
    /// When the automatic renewal asks again (unix seconds).
    pub fn retry_at(&self) -> i64 {
        let doublings = self.attempts.unwrap_or(1).saturating_sub(1).min(8);
        let wait = (ISSUER_RETRY_FIRST.as_secs() << doublings).min(ISSUER_RETRY_MAX.as_secs());
        self.at.saturating_add(wait as i64)
    }
}

/// A workload that owns pods and can be restarted by a pod-template annotation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.kind.to_lowercase(),
            self.namespace,
            self.name
        )
    }
}

/// Why a pod cannot be brought onto a new bundle by restarting its workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unfixable {
    /// No owning workload: only deleting it helps.
    BarePod,
    /// Injected by `linkerd inject`: the anchors are baked into the workload's template.
    ManuallyInjected,
    /// Owned by something the operator does not restart (a Job, a CronJob...).
    Owner(String),
    /// A StatefulSet or DaemonSet with `updateStrategy: OnDelete`: a template change rolls
    /// nothing; its pods must be deleted.
    OnDelete(String),
    /// A paused Deployment: a template change rolls nothing until it is resumed.
    Paused(Workload),
    /// A StatefulSet pod below the set's `rollingUpdate.partition`: a template change never
    /// reaches it.
    Partitioned { workload: Workload, partition: i32 },
}

/// The live leaf of a pod, as probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// Signed by the current issuer.
    FromIssuer,
    /// Signed by another issuer (an older one).
    FromOtherIssuer,
    /// No answer, or no chain: why, as the probe saw it (`10.0.3.7:4191: no answer within 2s`).
    Unreachable(String),
}

/// One running meshed pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshedPod {
    pub namespace: String,
    pub name: String,
    /// Linkerd's control plane, judged by its restart marker: a pod labelled
    /// `linkerd.io/control-plane-component`, unless its spec has its anchors and it is not of
    /// a control-plane Deployment the operator restarts (then it counts as a workload pod).
    pub control_plane: bool,
    /// A pod of Linkerd's identity controller (component label `identity`), the one that
    /// signs leaves with the issuer it loaded.
    pub identity_controller: bool,
    pub ready: bool,
    /// Fingerprints of the anchors its proxy holds (from its env, the truth); `None` when they
    /// cannot be read from the spec (control-plane pods read them from the ConfigMap).
    pub anchors: Option<BTreeSet<String>>,
    /// For control-plane pods: the bundle fingerprint their pod template was restarted for.
    pub restarted_for: Option<String>,
    /// For a control-plane pod of the Linkerd namespace whose ReplicaSet a Deployment owns:
    /// that Deployment's name, whatever [`owner`](Self::owner) says (a control plane
    /// installed with `linkerd install` reads as injected by the CLI there).
    pub control_plane_deployment: Option<String>,
    /// Its proxy's `LINKERD2_PROXY_IDENTITY_MAX_REFRESH`, the longest it keeps a leaf before
    /// asking for a new one; `None` when unset or unreadable (then the proxy refreshes at 70 %
    /// of the leaf's lifetime: about 17 h of Linkerd's 24 h leaves).
    pub max_refresh: Option<Duration>,
    /// Who restarts it, or why nobody can.
    pub owner: Result<Workload, Unfixable>,
    /// Probed only while leaves are awaited.
    pub leaf: Option<Leaf>,
    /// `podIP:4191`, where the proxy answers with its live leaf.
    pub addr: Option<std::net::SocketAddr>,
    /// `<sa>.<ns>.serviceaccount.identity.<linkerd-ns>.<trust-domain>`, the probe's SNI.
    pub identity: String,
}

impl MeshedPod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A pod of one of the control-plane Deployments the operator restarts onto each bundle,
    /// whose restart marker says what bundle it runs with.
    pub fn restarted_with(&self, control_plane: &[ControlPlaneDeployment]) -> bool {
        (self.control_plane_deployment.as_ref())
            .is_some_and(|d| control_plane.iter().any(|c| c.name == *d))
    }
}

/// A control-plane Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneDeployment {
    pub name: String,
    /// Linkerd's identity controller (component label `identity`).
    pub identity_controller: bool,
    /// The bundle fingerprint in its pod template's restart annotation.
    pub restarted_for: Option<String>,
    /// `kubectl rollout status` would say complete.
    pub rollout_complete: bool,
    /// Its pod template's `linkerd-proxy` container, if it has one.
    pub proxy: Option<ControlPlaneProxy>,
    /// The proxy refresh interval the operator set on the template (its
    /// `trust.linkerd.io/proxy-max-refresh` annotation), if it did.
    pub refresh_set_by_operator: Option<String>,
    /// The pods it asks for or has, whichever is more (`spec.replicas`, `status.replicas`).
    pub replicas: usize,
}

/// The `linkerd-proxy` container of a control-plane Deployment's pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneProxy {
    pub list: ProxyList,
    /// Its `LINKERD2_PROXY_IDENTITY_MAX_REFRESH` env value, if set.
    pub max_refresh: Option<String>,
}

/// The pod-template list that holds a proxy container: a sidecar in `containers`, or a native
/// sidecar in `initContainers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyList {
    Containers,
    InitContainers,
}

impl ProxyList {
    /// The field's name in a pod spec.
    pub fn field(self) -> &'static str {
        match self {
            ProxyList::Containers => "containers",
            ProxyList::InitContainers => "initContainers",
        }
    }
}

/// One control-plane Deployment to restart, and what the restart does to its proxy's refresh
/// interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneRestart {
    pub name: String,
    pub proxy_refresh: ProxyRefresh,
}

/// `LINKERD2_PROXY_IDENTITY_MAX_REFRESH` on a control-plane proxy. The webhook leaves
/// control-plane pods alone, so the restart onto the expanded bundle carries the accelerated
/// interval into their pod templates itself (no restart of its own), and the restart onto the
/// reduced bundle takes it out again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyRefresh {
    /// Set the env to this value (e.g. `300s`), and the operator's annotation with it.
    Set { list: ProxyList, value: String },
    /// Remove the env and the operator's annotation.
    Remove { list: ProxyList },
    /// Leave the proxy as it is: no proxy container, or an interval the user set.
    Keep,
}

/// Everything the decision looks at, gathered by the I/O layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Unix seconds.
    pub now: i64,
    /// The current anchor A (the cert-manager Secret).
    pub anchor: Result<Cert, Problem>,
    /// The previous anchor P; `Ok(None)` when the Secret does not exist yet.
    pub previous: Result<Option<Cert>, Problem>,
    /// The bundle B; `Ok(None)` when the ConfigMap (or its key) does not exist yet.
    pub bundle: Result<Option<Vec<Cert>>, Problem>,
    pub issuer: Result<Issuer, Problem>,
    pub control_plane: Vec<ControlPlaneDeployment>,
    /// Running meshed pods (not terminating), control plane included; a Pending pod whose proxy
    /// (a native sidecar) has already started counts as running.
    pub pods: Vec<MeshedPod>,
    /// Meshed workload pods not started yet (Pending: unscheduled, pulling images, running
    /// init containers), not terminating. Their proxy has not run, but the anchors it will
    /// trust are already in their spec: one injected with the old anchor alone would, once it
    /// starts, reject every leaf of a renewed issuer. They count for the trust bundle (and are
    /// restarted onto it), not for leaves.
    pub starting: Vec<MeshedPod>,
    /// Meshed pods being deleted whose grace period has not run out: their proxies may still
    /// make and answer connections while they drain.
    pub draining: Vec<MeshedPod>,
    /// What each workload's pod template was last restarted for by the operator, and whether
    /// that rollout is complete (workloads without either marker are left out).
    pub restart_markers: BTreeMap<Workload, RestartMarkers>,
    /// Workloads whose last restart by this replica failed (refused, or unanswered), with what
    /// that restart was for, kept until one succeeds: not seen in the cluster but remembered by
    /// the reconciler. Those asked for the same restart again are decided after the others: a
    /// refused restart starts no rollout, so those at the head of the list would otherwise take
    /// every slot, for good. The I/O layer sends one again only once its wait is over, and only
    /// in the slots the others leave (see [`Effect::RestartWorkloads`]). A failure of another
    /// restart (the last rotation's) counts for nothing.
    pub refused_restarts: BTreeMap<Workload, RestartFor>,
    /// The bundle ConfigMap's version, and the restore it was last written for.
    pub bundle_meta: BundleMeta,
    /// Workloads whose pod template carries its proxy with the trust anchors as a literal
    /// (injected by `linkerd inject`, so no restart renews them), with the fingerprints of
    /// those anchors (`None` when they do not parse). Read from the template, so a workload
    /// scaled to zero, whose next pods would start with them, is there too.
    pub baked_templates: BTreeMap<Workload, Option<BTreeSet<String>>>,
    /// Every anchor that meshed pods' proxies (running, starting or draining) and `linkerd
    /// inject`-ed pod templates carry in their literal trust-anchors env, each once. Not what
    /// must be trusted, but where an anchor is found again by its fingerprint when no Secret
    /// or bundle has it any more: the anchor a second renewal mid-rotation left in the bundle
    /// alone, say, once the bundle's ConfigMap is deleted or written over.
    pub held_anchors: Vec<Cert>,
    /// Set while replicas of the identity controller may not all have loaded the current
    /// issuer yet, as leaves are probed: each reads it from its own Secret volume, which its
    /// node's kubelet updates on its own schedule, so one may still sign with the old issuer
    /// and a proxy seen with a new leaf may take its next one from it.
    pub issuer_reload: Option<IssuerReload>,
}

/// Replicas of the identity controller that may not all have loaded the current issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerReload {
    /// The most identity controller pods (running or draining, or asked for by its Deployment)
    /// seen at once since the operator's first look at the issuer in RenewingWorkloadCerts: one
    /// may have gone since, after signing a proxy's leaf.
    pub replicas: usize,
    /// The operator first saw the issuer after RenewingWorkloadCerts had begun (it started, or
    /// took the lead, since), so it cannot tell which replicas ran between the change and then.
    pub unwitnessed: bool,
    /// An identity controller pod that runs but is not ready, and whose metrics do not show the
    /// issuer (`namespace/name`): its node may be cut off, its kubelet not updating its Secret
    /// volume. The wait starts over once every one is ready.
    pub unready: Option<String>,
    /// An identity controller pod whose metrics (`issuer_cert_ttl_seconds`) last said it signs
    /// with another issuer (`namespace/name`): held for, whatever the time and however many
    /// replicas, until they show the issuer or the pod is gone (no longer listed, or
    /// terminating for 30 s past its deadline, on a node that no longer reports).
    pub on_other_issuer: Option<String>,
    /// When every one has surely loaded it (Unix seconds), where their metrics do not say: the
    /// operator's first look at the issuer in RenewingWorkloadCerts (no earlier than its Secret
    /// changed), or the look that last saw an identity controller pod become ready, plus the
    /// kubelet's delay in updating a Secret volume (`--issuer-reload-grace`).
    pub until: i64,
}

/// How far apart the expiry an identity controller replica's `issuer_cert_ttl_seconds` implies
/// (seconds) and the current issuer's may be for the replica to count as signing with it: the
/// replica's node and the operator's clocks (kept by NTP, within well under a second of each
/// other), and the time the scrape takes. An issuer renewed less than this after the one before
/// could be taken for it.
pub const ISSUER_EXPIRY_SLACK: f64 = 5.0;

impl IssuerReload {
    /// A proxy seen with a leaf from the current issuer may still take its next one from a
    /// replica on the old issuer. Not so with one replica, seen throughout and not seen on
    /// another issuer: it signs with whichever issuer it loaded last, so its leaves never go
    /// back.
    pub fn may_go_back(&self) -> bool {
        self.replicas > 1 || self.unwitnessed || self.on_other_issuer.is_some()
    }
}

impl Observed {
    /// How many replicas the identity controller has now, for [`IssuerReload`]: its pods
    /// running or draining, or as many as its Deployment asks for or has, whichever is more (a
    /// replica evicted, its replacement not running yet, still counts).
    pub fn identity_replicas(&self) -> usize {
        let pods = (self.pods.iter().chain(&self.draining)).filter(|p| p.identity_controller);
        let deployments = (self.control_plane.iter())
            .filter(|d| d.identity_controller)
            .map(|d| d.replicas)
            .sum();
        pods.count().max(deployments)
    }

    /// Every meshed pod whose proxy runs, or will run, with the anchors in its spec: the
    /// running ones and those [`starting`](Self::starting).
    pub fn bundle_holders(&self) -> impl Iterator<Item = &MeshedPod> {
        self.pods.iter().chain(&self.starting)
    }
}

/// The bundle ConfigMap beyond its anchors.
///
/// A bundle can come back to a fingerprint it had before: restored after someone else
/// overwrote it (a `helm upgrade` of Linkerd renders it from its install-time values), or grown
/// back to the same anchors. The control plane and the workloads that restarted onto the
/// foreign bundle meanwhile still carry the restart marker of the bundle before, and would
/// pass for restarted onto it. So each write of the operator's records the version of the
/// ConfigMap it replaced (`trust.linkerd.io/written-over-version`), and restart markers carry
/// it with the fingerprint: every bundle the operator writes has markers of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleMeta {
    /// `metadata.resourceVersion`.
    pub version: Option<String>,
    /// The operator's `trust.linkerd.io/written-over-version` annotation: the version its
    /// last write of the bundle replaced.
    pub written_over: Option<String>,
    /// Who wrote the bundle's key over the operator's last write of the ConfigMap: the other
    /// field managers that hold the key in `managedFields` once the operator's entry no longer
    /// does (sorted). Empty when the operator's write is the latest or shared (another writer
    /// applied the same bundle), and when it never wrote the ConfigMap (the bundle Linkerd was
    /// installed with is not an overwrite).
    pub overwritten_by: Vec<String>,
    /// The ConfigMap carries the operator's `trust.linkerd.io/written-bundle-sha256`
    /// annotation, which every write of the operator's sets (a replacement takes it away).
    pub annotated: bool,
    /// The field managers that hold the bundle's key (sorted).
    pub key_holders: Vec<String>,
}

impl Observed {
    /// Workloads restarted onto bundle `fingerprint` whose rollout is not complete, whichever
    /// write of it they were restarted for: a rollout started before the bundle was restored
    /// to the same anchors still replaces pods, and still counts.
    pub fn rolling_onto<'a>(
        &'a self,
        fingerprint: &'a str,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.rolling_where(move |m| {
            m.bundle
                .as_deref()
                .is_some_and(|b| marker_fingerprint(b) == fingerprint)
        })
    }

    /// Why `workload`'s rollout will not finish by itself, if its workload says so.
    pub fn stalled(&self, workload: &Workload) -> Option<&str> {
        self.restart_markers.get(workload)?.stalled.as_deref()
    }

    /// `workload` as a rollout's status names it: with why it will not finish by itself if
    /// its workload says so, else with a new pod that is not starting, if there is one.
    pub fn rollout_named(&self, workload: &Workload) -> String {
        let markers = self.restart_markers.get(workload);
        match (
            markers.and_then(|m| m.stalled.as_deref()),
            markers.and_then(|m| m.not_starting.as_deref()),
        ) {
            (Some(why), _) => {
                format!("{workload} (will not finish by itself, look at its new pods: {why})")
            }
            (None, Some(pod)) => format!("{workload} (new {pod})"),
            (None, None) => workload.to_string(),
        }
    }

    /// Workloads restarted for `restart_for` whose rollout is not complete.
    pub fn rolling<'a>(
        &'a self,
        restart_for: &'a RestartFor,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.rolling_where(move |m| m.has(restart_for))
    }

    /// Workloads restarted by the operator for anything (another step, another rotation) whose
    /// pods are still being replaced (see [`RestartMarkers::replacing`]).
    pub fn replacing_for_anything(&self) -> impl Iterator<Item = &Workload> {
        self.rolling_where(|m| m.replacing)
    }

    /// Workloads whose rollout is not complete and whose restart markers satisfy `restarted`.
    fn rolling_where<'a>(
        &'a self,
        restarted: impl Fn(&RestartMarkers) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.restart_markers
            .iter()
            .filter(move |(_, m)| !m.rollout_complete && restarted(m))
            .map(|(w, _)| w)
    }
}

/// The bundle fingerprint of a restart marker (`<fingerprint>` or `<fingerprint>.<version>`).
pub fn marker_fingerprint(marker: &str) -> &str {
    marker
        .split_once('.')
        .map_or(marker, |(fingerprint, _)| fingerprint)
}

/// The operator's restart annotations on a workload's pod template, and its rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartMarkers {
    /// The restart marker of the bundle it was restarted onto (see [`BundleMeta`]).
    pub bundle: Option<String>,
    /// The issuer fingerprint it was restarted for.
    pub issuer: Option<String>,
    /// `kubectl rollout status` would say complete.
    pub rollout_complete: bool,
    /// Pods are still being replaced: the workload's controller has not yet acted on its newest
    /// template, or not every replica runs it yet. Unlike an incomplete rollout, not a replica
    /// that is merely unavailable (a crash loop, a scale-up) once every one runs the template.
    pub replacing: bool,
    /// The rollout will not finish by itself: a Deployment's `Progressing=False` condition
    /// (reason `ProgressDeadlineExceeded`), with its message. Its new pods do not become
    /// available (an image that cannot be pulled, a crash, a quota), which no further restart
    /// changes.
    pub stalled: Option<String>,
    /// A new pod of the rollout (one that carries the template's restart markers) that is not
    /// starting, and why, in the scheduler's or the kubelet's words: `pod app/web-x is not
    /// starting: container web: ImagePullBackOff: ...`. Kubernetes reports no stall for a StatefulSet or a DaemonSet,
    /// nor for a Deployment until its progress deadline (ten minutes by default) has passed.
    pub not_starting: Option<String>,
}

impl RestartMarkers {
    /// Whether the template already carries `restart_for` (asking again would change nothing).
    pub fn has(&self, restart_for: &RestartFor) -> bool {
        match restart_for {
            RestartFor::Bundle(marker) => self.bundle.as_deref() == Some(marker.as_str()),
            RestartFor::Issuer(fp) => self.issuer.as_deref() == Some(fp.as_str()),
        }
    }
}

/// The policies, from the spec, with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Policies {
    pub restart: RestartPolicy,
    pub max_concurrent_workloads: usize,
    pub issuer_renewal: RenewalPolicy,
    pub paused: bool,
    /// `spec.workloadCertificateRefreshInterval`.
    pub refresh_interval: String,
}

/// Two restores of an overwritten bundle less than this apart make the bundle contested: some
/// other writer (a GitOps controller re-applying Linkerd's install-time ConfigMap, say) keeps
/// writing it, and every restore restarts Linkerd's control plane. It stays contested until
/// this long has passed without another.
pub const CONTEST_WINDOW: Duration = Duration::from_secs(15 * 60);

/// How many restores `status.bundleOverwrites` keeps.
pub const BUNDLE_OVERWRITES_KEPT: usize = 5;

/// Default pacing of automatic workload restarts: enough parallelism that a large mesh is not
/// serialised, few enough that a bad restart never takes out more than a handful of services.
pub const DEFAULT_MAX_CONCURRENT_WORKLOADS: usize = 5;

/// What the I/O layer is asked to do, in order. Each is idempotent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Server-side apply the bundle ConfigMap with this canonical PEM; `written_over`: the
    /// version of the ConfigMap it replaces, recorded on it (see [`BundleMeta`]).
    WriteBundle {
        pem: String,
        fingerprint: String,
        written_over: Option<String>,
    },
    /// Create or update the previous-anchor Secret with this certificate (never a key).
    WritePreviousAnchor { pem: String, fingerprint: String },
    /// Set the restart annotation on these control-plane Deployments' pod templates, each with
    /// its proxy's refresh interval set, removed or kept.
    RestartControlPlane {
        deployments: Vec<ControlPlaneRestart>,
        marker: String,
    },
    /// Set a restart annotation on these workloads' pod templates.
    RestartWorkloads {
        workloads: Vec<Workload>,
        restart_for: RestartFor,
        /// Restarts that failed before ([`Observed::refused_restarts`]), tried again: at most
        /// `retry_room` of them are sent (those whose wait for a retry is over, those that
        /// failed the longest ago first), for a refused restart that goes through starts a
        /// rollout like any other; each of the others is reported with its last failure, so the
        /// step's blockingMessage stays the same from look to look.
        retry: Vec<Workload>,
        retry_room: usize,
    },
    /// Set `Issuing=True` on the issuer Certificate, as `cmctl renew` does.
    RenewIssuer,
    /// A Kubernetes Event on the `cluster` resource.
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

/// What a workload restart is for. The I/O layer writes it into the pod template as an
/// annotation, one key per kind of restart, so asking for the same restart again changes
/// nothing and a workload is restarted at most once for each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartFor {
    /// Onto a bundle, by its restart marker (`<fingerprint>[.<replaced version>]`, see
    /// `BundleMeta`): its pods come back holding it.
    Bundle(String),
    /// For a leaf from the issuer with this fingerprint: its pods come back with one, instead
    /// of waiting for a refresh that is hours away.
    Issuer(String),
}

/// How soon to look again when nothing changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// A rotation is moving: poll what is not watched (probes, rollouts).
    Soon,
    /// Steady state, or parked: watches will wake us.
    Idle,
    /// As `Idle`, but something the status says runs out by itself this soon (a contested
    /// bundle's window): look again then, if nothing wakes us first.
    Within(std::time::Duration),
}

impl Requeue {
    /// Also look again within `wait`.
    pub fn within(self, wait: std::time::Duration) -> Self {
        match self {
            Requeue::Soon => Requeue::Soon,
            Requeue::Idle => Requeue::Within(wait),
            Requeue::Within(d) => Requeue::Within(d.min(wait)),
        }
    }
}

/// The phase a rotation is in, with what it means for the bundle.
pub fn accelerating(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::PropagatingTrustRoots
            | Phase::WaitingForRemoteClusters
            | Phase::WaitingForIdentityRotation
            | Phase::RenewingWorkloadCerts
    )
}
