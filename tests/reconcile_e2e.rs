//! The reconciler end to end: the operator binary (webhook + reconciler) on the real control
//! plane, the simulated mesh under continuous mTLS traffic, a trust-anchor renewal the way
//! `cmctl renew` does it, and the rotation carried through every phase back to Synced.
//!
//! Every test follows the status while the traffic generator runs, and fails if the
//! generator's success count ever stands still for long (a test that saw no traffic proves
//! nothing about failed handshakes).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{
    MANAGER, Operator, eventually, install_crd, register_webhook, start_control_plane,
    start_control_plane_with,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use trust_rotation_operator::crd::{
    ConditionStatus, ConvergenceState, Phase, SourceKind, TrustAnchorRotation,
    TrustAnchorRotationStatus,
};
use trust_rotation_operator::sim::kubelet::HOLD_ANNOTATION;
use trust_rotation_operator::sim::runbook::{Cert, Runbook};
use trust_rotation_operator::sim::traffic::{FailureReason, TrafficConfig, TrafficSnapshot};
use trust_rotation_operator::sim::{KeyRotation, Mesh, SimConfig};
use trust_rotation_operator::testbed::ControlPlane;

const MAX_REFRESH_ENV: &str = "LINKERD2_PROXY_IDENTITY_MAX_REFRESH";
/// The longest the traffic generator may go without a successful handshake before a test
/// calls the traffic interrupted. The generator makes dozens a second.
const MAX_TRAFFIC_GAP: Duration = Duration::from_secs(5);
const ROTATION_TIMEOUT: Duration = Duration::from_secs(300);

fn namespaces(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("mesh-{i}")).collect()
}

async fn rotation(client: &kube::Client) -> TrustAnchorRotation {
    Api::<TrustAnchorRotation>::all(client.clone())
        .get("cluster")
        .await
        .expect("the cluster rotation")
}

fn proxy_env(pod: &Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let proxy = spec.containers.iter().find(|c| c.name == "linkerd-proxy")?;
    proxy
        .env
        .as_ref()?
        .iter()
        .rev()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// Whether the bundle `pem` holds the anchor `fingerprint`.
fn holds_anchor(pem: &str, fingerprint: &str) -> bool {
    trust_rotation_operator::bundle::Bundle::from_pem("bundle", pem)
        .is_ok_and(|b| b.fingerprints().any(|f| f == fingerprint))
}

async fn workload_pods(client: &kube::Client, namespaces: &[String]) -> Vec<Pod> {
    let mut out = Vec::new();
    for ns in namespaces {
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        out.extend(
            pods.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none()),
        );
    }
    out
}

/// Each control-plane Deployment's proxy refresh interval, from its pod template (the env and
/// the operator's annotation) and from its running pods' proxies: (template env, annotation,
/// pods' env values).
async fn control_plane_refresh(
    client: &kube::Client,
) -> BTreeMap<String, (Option<String>, Option<String>, Vec<Option<String>>)> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), "linkerd")
        .list(&ListParams::default())
        .await
        .unwrap();
    let pods = workload_pods(client, &["linkerd".to_owned()]).await;
    deployments
        .items
        .iter()
        .map(|d| {
            let template = d.spec.as_ref().unwrap().template.clone();
            let annotation = template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get("trust.linkerd.io/proxy-max-refresh").cloned());
            let as_pod = Pod {
                spec: template.spec.clone(),
                ..Pod::default()
            };
            let component = template.metadata.as_ref().unwrap().labels.as_ref().unwrap()
                ["linkerd.io/control-plane-component"]
                .clone();
            let running: Vec<Option<String>> = pods
                .iter()
                .filter(|p| {
                    p.labels().get("linkerd.io/control-plane-component") == Some(&component)
                })
                .map(|p| proxy_env(p, MAX_REFRESH_ENV))
                .collect();
            (
                d.name_any(),
                (proxy_env(&as_pod, MAX_REFRESH_ENV), annotation, running),
            )
        })
        .collect()
}

/// Generation of each Deployment: it grows by one per rollout (per template change).
fn generations(deployments: &[Deployment]) -> BTreeMap<String, i64> {
    deployments
        .iter()
        .map(|d| (d.name_any(), d.metadata.generation.unwrap_or(0)))
        .collect()
}

/// [`generations`] of the control-plane Deployments.
async fn control_plane_generations(client: &kube::Client) -> BTreeMap<String, i64> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), "linkerd")
        .list(&ListParams::default())
        .await
        .unwrap();
    generations(&deployments.items)
}

/// What a [`Rig`] is made of, beyond its workloads.
#[derive(Default)]
struct Setup {
    sim: SimConfig,
    credentials: Credentials,
}

impl From<SimConfig> for Setup {
    /// A simulated mesh configured so, the operator with the admin's credentials.
    fn from(sim: SimConfig) -> Self {
        Setup {
            sim,
            ..Setup::default()
        }
    }
}

/// Whose credentials the operator runs with.
#[derive(Default)]
enum Credentials {
    /// The cluster admin's.
    #[default]
    Admin,
    /// A user with no group, allowed exactly what `rbac/rbac.yaml` grants; with `restart_in`,
    /// the restarter ClusterRole is bound in those namespaces only.
    Rbac { restart_in: Option<Vec<String>> },
}

const OPERATOR_USER: &str = "operator";

/// `trust-rotation-operator rbac`'s objects, for [`OPERATOR_USER`]: workload restarts allowed
/// everywhere, or only in `restart_in` (`rbac --restart-namespace`).
fn operator_rbac(restart_in: Option<&[String]>) -> trust_rotation_operator::rbac::Rbac {
    use trust_rotation_operator::rbac::{RbacConfig, rbac};
    let user = k8s_openapi::api::rbac::v1::Subject {
        kind: "User".to_owned(),
        name: OPERATOR_USER.to_owned(),
        api_group: Some("rbac.authorization.k8s.io".to_owned()),
        namespace: None,
    };
    rbac(&RbacConfig {
        restart_namespaces: restart_in.map(<[String]>::to_vec),
        ..RbacConfig::new(user, "linkerd")
    })
}

async fn apply_rbac(client: &kube::Client, restart_in: Option<&[String]>) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
    let rbac = operator_rbac(restart_in);
    let post = PostParams::default();
    for o in &rbac.cluster_roles {
        Api::<ClusterRole>::all(client.clone())
            .create(&post, o)
            .await
            .unwrap();
    }
    for o in &rbac.cluster_role_bindings {
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&post, o)
            .await
            .unwrap();
    }
    for o in &rbac.roles {
        let ns = o.metadata.namespace.as_deref().unwrap();
        Api::<Role>::namespaced(client.clone(), ns)
            .create(&post, o)
            .await
            .unwrap();
    }
    apply_role_bindings(client, &rbac).await;
}

async fn apply_role_bindings(client: &kube::Client, rbac: &trust_rotation_operator::rbac::Rbac) {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    for o in &rbac.role_bindings {
        let ns = o.metadata.namespace.as_deref().unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), o)
            .await
            .unwrap();
    }
}

/// Binds the restarter ClusterRole to [`OPERATOR_USER`] in `namespace`, as
/// `rbac --restart-namespace` does.
async fn allow_restarts_in(client: &kube::Client, namespace: &str) {
    use trust_rotation_operator::rbac::RESTARTER;
    let mut rbac = operator_rbac(Some(&[namespace.to_owned()]));
    rbac.role_bindings
        .retain(|b| b.metadata.namespace.as_deref() == Some(namespace));
    assert!(
        rbac.role_bindings
            .iter()
            .all(|b| b.role_ref.name == RESTARTER),
        "{:?}",
        rbac.role_bindings
    );
    apply_role_bindings(client, &rbac).await;
}

/// How many of the operator's PATCHes of Deployments the API server has refused as forbidden,
/// from its audit log.
fn forbidden_deployment_patches(cp: &ControlPlane) -> u64 {
    cp.audited(OPERATOR_USER, |event| {
        event["verb"] == "patch"
            && event["objectRef"]["resource"] == "deployments"
            && event["responseStatus"]["code"] == 403
    })
    .unwrap()
}

/// Creates (or updates) the `cluster` rotation with this spec.
async fn apply_rotation(client: &kube::Client, spec: serde_json::Value) {
    Api::<TrustAnchorRotation>::all(client.clone())
        .patch(
            "cluster",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "trust.linkerd.io/v1alpha1",
                "kind": "TrustAnchorRotation", "metadata": {"name": "cluster"},
                "spec": spec})),
        )
        .await
        .unwrap();
}

/// A control plane that knows [`OPERATOR_USER`] (no RBAC for it yet), with the CRD and the
/// `linkerd` and `cert-manager` namespaces.
async fn control_plane_for_operator_user() -> (ControlPlane, kube::Client) {
    let cp = start_control_plane_with(trust_rotation_operator::testbed::Options {
        plain_users: vec![OPERATOR_USER.to_owned()],
        ..Default::default()
    })
    .await;
    let client = cp.client();
    install_crd(&client).await;
    for name in ["linkerd", "cert-manager"] {
        trust_rotation_operator::sim::linkerd::namespace(&client, name, json!({}), json!({}))
            .await
            .unwrap();
    }
    (cp, client)
}

/// A control plane, a mesh with traffic running, the CRD with the `cluster` rotation, and the
/// operator, bootstrapped to Synced.
struct Rig {
    cp: ControlPlane,
    client: kube::Client,
    mesh: Mesh,
    ns: Vec<String>,
    op: Operator,
    op_args: Vec<String>,
    op_kubeconfig: std::path::PathBuf,
    /// The anchor before any renewal.
    first_anchor: Cert,
}

impl Rig {
    async fn start(
        workloads: (usize, usize, i32),
        spec: serde_json::Value,
        op_args: &[&str],
    ) -> Self {
        Self::start_with(Setup::default(), workloads, spec, op_args).await
    }

    async fn start_with(
        Setup { sim, credentials }: Setup,
        (namespaces_n, deployments, replicas): (usize, usize, i32),
        spec: serde_json::Value,
        op_args: &[&str],
    ) -> Self {
        // The operator's user exists either way; only with `Credentials::Rbac` is it used.
        let cp = start_control_plane_with(trust_rotation_operator::testbed::Options {
            plain_users: vec![OPERATOR_USER.to_owned()],
            ..Default::default()
        })
        .await;
        let client = cp.client();
        let mut mesh = Mesh::start(client.clone(), sim)
            .await
            .unwrap_or_else(|e| panic!("starting the simulated mesh: {e}"));
        let ns = namespaces(namespaces_n);
        mesh.add_workloads(&ns, deployments, replicas, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("adding workloads: {e}"));
        install_crd(&client).await;
        apply_rotation(&client, spec).await;
        let op_args: Vec<String> = ["--reconcile-interval=500ms"]
            .iter()
            .chain(op_args)
            .map(|a| (*a).to_owned())
            .collect();
        // RBAC once the mesh and its namespaces exist.
        let op_kubeconfig = match &credentials {
            Credentials::Admin => cp.kubeconfig().to_owned(),
            Credentials::Rbac { restart_in } => {
                apply_rbac(&client, restart_in.as_deref()).await;
                cp.kubeconfig_for(OPERATOR_USER).unwrap()
            }
        };
        let op = start_operator(&op_kubeconfig, &op_args).await;
        register_webhook(&cp, &op);
        mesh.start_traffic(TrafficConfig::default());
        let first_anchor = Runbook::new(&mesh).anchor().await.unwrap();
        let rig = Self {
            cp,
            client,
            mesh,
            ns,
            op,
            op_args,
            op_kubeconfig,
            first_anchor,
        };
        // Bootstrap: the previous-anchor Secret is written and the rotation reports Synced.
        let started = Instant::now();
        loop {
            let status = rotation(&rig.client).await.status.unwrap_or_default();
            if status.previous_anchor_fingerprint.as_deref()
                == Some(rig.first_anchor.fingerprint.as_str())
                && status.phase == Phase::Synced
                && status.trust_bundle.is_some()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no bootstrap: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rig
    }

    fn runbook(&self) -> Runbook<'_> {
        Runbook::new(&self.mesh)
    }

    fn traffic(&self) -> TrafficSnapshot {
        self.mesh.traffic().expect("traffic is running")
    }

    /// SIGKILL, then the same command again (a container restart keeps its pod name, so the
    /// identity in the Lease is the same).
    async fn kill_and_restart_operator(&mut self) {
        self.kill_operator();
        self.start_operator_again().await;
    }

    fn kill_operator(&mut self) {
        self.op.process.signal("KILL").unwrap();
        self.op
            .process
            .wait_timeout(Duration::from_secs(10))
            .expect("the operator exits within 10s of SIGKILL");
    }

    /// The same command again, after [`Self::kill_operator`].
    async fn start_operator_again(&mut self) {
        self.op = start_operator(&self.op_kubeconfig, &self.op_args).await;
        // The webhook registration names the old port and CA: point it at the new process.
        register_webhook(&self.cp, &self.op);
    }

    /// Every proxy ends on `anchor` alone, with a leaf from the current issuer.
    async fn assert_mesh_on(&self, anchor: &Cert, proxies: usize) {
        let reduced = trust_rotation_operator::bundle::Bundle::from_pem("anchor", &anchor.pem)
            .unwrap()
            .fingerprint();
        let issuer = self.runbook().issuer().await.unwrap();
        // Old pods still serving their graceful stop are not part of the mesh's future.
        let settle = Instant::now();
        while self.mesh.proxies().len() != proxies {
            assert!(
                settle.elapsed() < Duration::from_secs(30),
                "{} proxies, want {proxies}",
                self.mesh.proxies().len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for p in self.mesh.proxies() {
            assert_eq!(p.anchors_fingerprint(), reduced, "{}", p.pod);
            assert_eq!(
                p.leaf().unwrap().issuer_fingerprint,
                issuer.fingerprint,
                "{}",
                p.pod
            );
        }
    }
}

async fn start_operator(kubeconfig: &std::path::Path, args: &[String]) -> Operator {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut op = Operator::start_as(kubeconfig, &args);
    op.wait_ready(Duration::from_secs(60)).await;
    op
}

/// Follows the status: logs each phase with the traffic so far; the traffic's longest stretch
/// without a success is timed by the generator itself from `t0` on.
struct Follow {
    t0: Instant,
    phases: Vec<(Phase, Duration)>,
    /// Whether any status read showed `OutOfOrderIssuerRotation=True`.
    out_of_order: bool,
}

impl Follow {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            phases: Vec::new(),
            out_of_order: false,
        }
    }

    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    async fn status(&mut self, rig: &Rig) -> TrustAnchorRotationStatus {
        let status = rotation(&rig.client).await.status.unwrap_or_default();
        let t = rig.traffic();
        self.out_of_order |= status
            .conditions
            .iter()
            .any(|c| c.type_ == "OutOfOrderIssuerRotation" && c.status == ConditionStatus::True);
        if self.phases.last().map(|(p, _)| *p) != Some(status.phase) {
            eprintln!(
                "[{:5.1}s] {}; traffic: {t}; {}",
                self.secs(),
                status.phase,
                status.blocking_message.as_deref().unwrap_or("")
            );
            self.phases.push((status.phase, self.t0.elapsed()));
        }
        assert!(
            self.t0.elapsed() < ROTATION_TIMEOUT,
            "rotation did not finish: {status:#?}; traffic {t}"
        );
        status
    }

    /// Follows the status, the user acting on each, until the rotation is done onto `anchor`.
    async fn with_user_until_done(
        &mut self,
        rig: &Rig,
        user: &mut User,
        anchor: &Cert,
    ) -> TrustAnchorRotationStatus {
        loop {
            let status = self.status(rig).await;
            user.act(rig, &status).await;
            if is_done(&status, anchor) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Follows the status until its blockingMessage says a step could not be carried out.
    async fn until_a_step_fails(&mut self, rig: &Rig) -> TrustAnchorRotationStatus {
        loop {
            let status = self.status(rig).await;
            if status
                .blocking_message
                .as_deref()
                .is_some_and(|m| m.contains("could not carry out the next step"))
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Lets a user finish the rotation onto `anchor`, then checks it ended clean: nothing
    /// blocking, zero failed handshakes, traffic throughout, and all `proxies` on `anchor`.
    async fn finish_clean(&mut self, rig: &Rig, anchor: &Cert, proxies: usize, what: &str) {
        let done = self
            .with_user_until_done(rig, &mut User::default(), anchor)
            .await;
        assert_eq!(done.blocking_message, None);
        let t = rig.traffic();
        eprintln!("{what}: {:.1}s; traffic: {t}", self.secs());
        self.assert_ended_clean(rig, &t, anchor, proxies).await;
    }

    /// Zero failed handshakes in `t`, traffic throughout, and all `proxies` on `anchor`.
    async fn assert_ended_clean(
        &mut self,
        rig: &Rig,
        t: &TrafficSnapshot,
        anchor: &Cert,
        proxies: usize,
    ) {
        assert_eq!(t.failed(), 0, "{t}; recent: {:#?}", t.recent);
        self.assert_traffic_throughout(rig);
        rig.assert_mesh_on(anchor, proxies).await;
    }

    /// Follows the rotation until it is done on `anchor` (within 180 s); returns the first
    /// blockingMessage that said `wait`, if one did.
    async fn until_done_noting(&mut self, rig: &Rig, anchor: &Cert, wait: &str) -> Option<String> {
        let mut said = None;
        loop {
            let status = self.status(rig).await;
            let message = status.blocking_message.as_deref().unwrap_or_default();
            if message.contains(wait) {
                said.get_or_insert_with(|| message.to_owned());
            }
            if is_done(&status, anchor) {
                return said;
            }
            assert!(self.secs() < 180.0, "not done: {status:#?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The traffic generator counted handshakes throughout: never a long stand-still.
    fn assert_traffic_throughout(&mut self, rig: &Rig) {
        let t = rig.traffic();
        let gap = t.longest_gap_since(self.t0);
        eprintln!("longest stretch without a successful handshake: {gap:?}");
        assert!(
            gap < MAX_TRAFFIC_GAP,
            "traffic stood still for {gap:?}: {t}"
        );
    }

    /// Every phase was seen; with automatic issuer renewal WaitingForIdentityRotation can
    /// pass between two looks, so it is asked for only when a person must act in it.
    fn assert_went_through_every_phase(&self, waited_for_issuer: bool) {
        let phases: Vec<Phase> = self.phases.iter().map(|(p, _)| *p).collect();
        if waited_for_issuer {
            assert!(
                phases.contains(&Phase::WaitingForIdentityRotation),
                "{phases:?}"
            );
        }
        for phase in [
            Phase::RefreshingControlPlane,
            Phase::PropagatingTrustRoots,
            Phase::RenewingWorkloadCerts,
            Phase::RemovingOldTrustRoots,
        ] {
            assert!(phases.contains(&phase), "went through {phase}: {phases:?}");
        }
    }
}

/// The rotation's spec with a 3 s refresh and these restart and issuer-renewal policies.
fn spec(restart: &str, issuer: &str) -> serde_json::Value {
    json!({"workloadCertificateRefreshInterval": "3s",
           "dataPlaneRestart": {"policy": restart},
           "issuerRenewal": {"policy": issuer}})
}

/// Both policies automatic, `max_concurrent` workloads restarted at a time.
fn automatic_spec(max_concurrent: u32) -> serde_json::Value {
    let mut spec = spec("Automatic", "Automatic");
    spec["dataPlaneRestart"]["maxConcurrentWorkloads"] = max_concurrent.into();
    spec
}

/// Sets the `cluster` rotation's `spec.paused`.
async fn set_paused(client: &kube::Client, paused: bool) {
    Api::<TrustAnchorRotation>::all(client.clone())
        .patch(
            "cluster",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": paused}})),
        )
        .await
        .unwrap();
}

fn is_done(status: &TrustAnchorRotationStatus, anchor: &Cert) -> bool {
    status.phase == Phase::Synced
        && status.previous_anchor_fingerprint.as_deref() == Some(anchor.fingerprint.as_str())
}

/// Whether Deployment `ns/name`'s pod template carries the operator's bundle restart marker.
async fn restarted_for_bundle(client: &kube::Client, ns: &str, name: &str) -> bool {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .is_some_and(|a| a.contains_key("trust.linkerd.io/restarted-for-bundle"))
}

/// A platform engineer following the status: runs exactly the commands a blockingMessage
/// prints (`kubectl rollout restart ...`, `cmctl renew ...`), each once per phase.
#[derive(Default)]
struct User {
    done: BTreeSet<(&'static str, String)>,
    actions: Vec<String>,
    /// A namespace whose restarts this user leaves undone (a negative control's).
    ignored_namespace: Option<&'static str>,
}

impl User {
    async fn act(&mut self, rig: &Rig, status: &TrustAnchorRotationStatus) {
        let Some(message) = status.blocking_message.as_deref() else {
            return;
        };
        for part in message.split("; ") {
            if let Some(at) = part.find("kubectl rollout restart ") {
                let part = &part[at..];
                let rest = &part["kubectl rollout restart ".len()..];
                // "deployment/<name> -n <namespace>"
                let mut words = rest.split_whitespace();
                let (Some(target), Some("-n"), Some(ns)) =
                    (words.next(), words.next(), words.next())
                else {
                    panic!("unreadable command in {message:?}");
                };
                if Some(ns) == self.ignored_namespace
                    || !self.done.insert((status.phase.as_str(), part.to_owned()))
                {
                    continue;
                }
                let (kind, name) = target.split_once('/').unwrap();
                assert_eq!(kind, "deployment", "{part}");
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                Api::<Deployment>::namespaced(rig.client.clone(), ns)
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations":
                            {"kubectl.kubernetes.io/restartedAt": now}}}}})),
                    )
                    .await
                    .unwrap();
                self.actions.push(format!("{}: {part}", status.phase));
            } else if let Some(at) = part.find("cmctl renew -n ") {
                let command = &part[at..];
                if !self
                    .done
                    .insert((status.phase.as_str(), command.to_owned()))
                {
                    continue;
                }
                assert_eq!(command, "cmctl renew -n linkerd linkerd-identity-issuer");
                rig.runbook().renew_issuer().await.unwrap();
                self.actions.push(format!("{}: {command}", status.phase));
            }
        }
    }
}

/// A full rotation with both policies Automatic, under continuous traffic: zero failed
/// handshakes; the accelerated refresh reaches the pods restarted while the bundle propagates;
/// their leaves refresh from the new issuer without a further restart; the final status has the
/// reference's shape; the metrics say the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_rotation_from_synced_to_synced_with_zero_failed_handshakes() {
    // The operator runs with exactly the permissions of `rbac/rbac.yaml`.
    let rig = Rig::start_with(
        Setup {
            credentials: Credentials::Rbac { restart_in: None },
            ..Setup::default()
        },
        (2, 2, 2),
        automatic_spec(2),
        &[],
    )
    .await;
    let client = rig.client.clone();
    // Those permissions name the Secrets and the ConfigMap it reads: it can read no other, and
    // list or watch them only by name.
    let operator = trust_rotation_operator::testbed::client_from_kubeconfig(&rig.op_kubeconfig)
        .await
        .unwrap();
    let secrets =
        |ns: &str| Api::<k8s_openapi::api::core::v1::Secret>::namespaced(operator.clone(), ns);
    let forbidden = |r: Result<_, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: {:?}", other.map(|_| ())),
    };
    forbidden(
        secrets("linkerd").get("unrelated").await.map(|_| ()),
        "get of a Secret it does not use",
    );
    forbidden(
        secrets("cert-manager")
            .list(&Default::default())
            .await
            .map(|_| ()),
        "list of every Secret",
    );
    let foreign: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
        json!({"metadata": {"name": "linkerd-identity-issuer-copy"}, "stringData": {"k": "v"}}),
    )
    .unwrap();
    forbidden(
        secrets("linkerd")
            .create(&PostParams::default(), &foreign)
            .await
            .map(|_| ()),
        "create of a Secret it does not own",
    );
    let by_name = kube::api::ListParams::default().fields("metadata.name=linkerd-trust-anchor");
    let anchors = secrets("cert-manager").list(&by_name).await.unwrap();
    assert_eq!(anchors.items.len(), 1, "its own Secret, listed by name");
    // A StatefulSet beside the Deployments: restarted and tracked the same way. Its proxy's
    // admin server is on another port (`config.linkerd.io/admin-port`), where the leaf probe
    // must find it: on 4191 nothing answers, and RenewingWorkloadCerts would wait forever.
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), "mesh-0");
    statefulsets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "db"},
                "spec": {"replicas": 1, "serviceName": "db",
                    "selector": {"matchLabels": {"app": "db"}},
                    "template": {"metadata": {"labels": {"app": "db"},
                            "annotations": {"config.linkerd.io/admin-port": "4444"}},
                        "spec": {"containers": [{"name": "db", "image": "sim/db:1"}]}}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    while rig.mesh.ready_proxies().len() < 12 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the StatefulSet's pod never became a ready proxy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let db = Api::<Pod>::namespaced(client.clone(), "mesh-0")
        .get("db-0")
        .await
        .unwrap();
    let db_ip: std::net::IpAddr = db.status.unwrap().pod_ip.unwrap().parse().unwrap();
    assert!(tokio::net::TcpStream::connect((db_ip, 4444)).await.is_ok());
    assert!(
        tokio::net::TcpStream::connect((db_ip, 4191)).await.is_err(),
        "db-0's proxy answers on the default admin port too: the probe's port is not tested"
    );
    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    eprintln!("anchor renewed: {}", &new_anchor.fingerprint[..12]);

    let mut accelerated_pods: Option<BTreeSet<String>> = None;
    let mut reduced_checked = false;
    let mut saw_interval_metric = false;
    let final_status = loop {
        let status = follow.status(&rig).await;
        if status.phase == Phase::RenewingWorkloadCerts && accelerated_pods.is_none() {
            // Every workload pod running now was restarted onto the expanded bundle while the
            // rotation accelerated: the webhook put the fast refresh into its proxy's env.
            let pods = workload_pods(&client, &rig.ns).await;
            for p in &pods {
                assert_eq!(
                    proxy_env(p, MAX_REFRESH_ENV).as_deref(),
                    Some("3s"),
                    "{}",
                    p.name_any()
                );
            }
            accelerated_pods = Some(pods.iter().map(|p| p.name_any()).collect());
            // The control plane, which the webhook leaves alone, took the same interval into
            // its pod templates with the restart onto the expanded bundle.
            let cp = control_plane_refresh(&client).await;
            assert_eq!(cp.len(), 3, "{cp:?}");
            for (name, (env, annotation, running)) in &cp {
                let three = Some("3s".to_owned());
                assert_eq!((env, annotation), (&three, &three), "{name}");
                assert!(
                    !running.is_empty() && running.iter().all(|v| *v == three),
                    "{name}: {running:?}"
                );
            }
            saw_interval_metric |= rig
                .op
                .metric("trust_rotation_workload_certificate_refresh_interval_seconds")
                == Some(3.0);
        }
        if let Some(accelerated) = &accelerated_pods
            && status.phase == Phase::RefreshingControlPlane
            && !reduced_checked
        {
            // The leaves came from the new issuer by refresh alone: the pods are the same ones.
            let now: BTreeSet<String> = workload_pods(&client, &rig.ns)
                .await
                .iter()
                .map(|p| p.name_any())
                .collect();
            assert_eq!(
                &now, accelerated,
                "no workload restart between propagation and reduction"
            );
            reduced_checked = true;
        }
        if is_done(&status, &new_anchor) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let t = rig.traffic();
    eprintln!(
        "rotation Synced -> Synced in {:.1}s; traffic: {t}",
        follow.secs()
    );
    eprintln!(
        "final status: {}",
        serde_json::to_string_pretty(&final_status).unwrap()
    );

    assert_eq!(t.failed(), 0, "{t}; recent: {:#?}", t.recent);
    follow.assert_traffic_throughout(&rig);
    follow.assert_went_through_every_phase(false);
    let accelerated = accelerated_pods.expect("saw RenewingWorkloadCerts");
    assert!(!accelerated.is_empty());
    assert!(reduced_checked, "saw the reduction");
    assert!(
        saw_interval_metric,
        "the refresh-interval gauge read 3 while accelerating"
    );

    // The final status, in the reference's shape.
    let new_issuer = rig.runbook().issuer().await.unwrap();
    assert_eq!(
        final_status.active_issuer_fingerprint.as_deref(),
        Some(new_issuer.fingerprint.as_str())
    );
    assert_eq!(final_status.blocking_message, None);
    assert_eq!(final_status.workload_certificate_refresh_interval, None);
    let bundle = final_status.trust_bundle.as_ref().unwrap();
    assert_eq!(bundle.status, ConvergenceState::Converged);
    assert_eq!(
        bundle.target_pods, 9,
        "8 Deployment pods and 1 StatefulSet pod"
    );
    let certs = final_status.workload_certificates.as_ref().unwrap();
    assert_eq!(certs.status, ConvergenceState::Converged);
    assert_eq!(
        certs.target_pods, 12,
        "9 workload pods and 3 control-plane pods"
    );
    // The operator restarted the StatefulSet onto the reduced bundle, like the Deployments.
    let db = statefulsets.get("db").await.unwrap();
    let restarted_for = db
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()["trust.linkerd.io/restarted-for-bundle"]
        .clone();
    let reduced = trust_rotation_operator::bundle::Bundle::from_pem("new", &new_anchor.pem)
        .unwrap()
        .fingerprint();
    // (Its marker: the bundle's fingerprint and the ConfigMap version that write replaced.)
    let (fingerprint, version) = restarted_for.split_once('.').unwrap();
    assert_eq!(fingerprint, reduced);
    assert!(version.parse::<u64>().is_ok(), "{restarted_for}");
    assert_eq!(final_status.source_fingerprints.len(), 1);
    let source = &final_status.source_fingerprints[0];
    assert_eq!(source.fingerprint, new_anchor.fingerprint);
    assert_eq!(source.kind, SourceKind::Secret);
    assert_eq!(source.name.as_deref(), Some("linkerd-trust-anchor"));
    let ooo = final_status
        .conditions
        .iter()
        .find(|c| c.type_ == "OutOfOrderIssuerRotation")
        .expect("OutOfOrderIssuerRotation condition");
    assert_eq!(
        (ooo.status, ooo.reason.as_str()),
        (ConditionStatus::False, "IssuerRotationInOrder")
    );

    // The metrics, with DESIGN.md's names, agree with the status (recorded just after its
    // write lands, so possibly a moment after this test read it).
    let m = |sample: &str| rig.op.metric(sample);
    eventually(
        "the Synced phase metric",
        Duration::from_secs(10),
        || async { (m("trust_rotation_phase{phase=\"Synced\"}") == Some(1.0)).then_some(()) },
    )
    .await;
    assert_eq!(
        m("trust_rotation_phase{phase=\"RenewingWorkloadCerts\"}"),
        Some(0.0)
    );
    assert_eq!(m("trust_rotation_trust_bundle_converged_pods"), Some(9.0));
    assert_eq!(m("trust_rotation_trust_bundle_target_pods"), Some(9.0));
    assert_eq!(
        m("trust_rotation_workload_certificates_converged_pods"),
        Some(12.0)
    );
    assert_eq!(
        m("trust_rotation_workload_certificates_target_pods"),
        Some(12.0)
    );
    assert_eq!(
        m(&format!(
            "trust_rotation_active_issuer_info{{fingerprint=\"{}\"}}",
            new_issuer.fingerprint
        )),
        Some(1.0)
    );
    assert_eq!(
        m(&format!(
            "trust_rotation_previous_anchor_info{{fingerprint=\"{}\"}}",
            new_anchor.fingerprint
        )),
        Some(1.0)
    );
    assert_eq!(
        m("trust_rotation_workload_certificate_refresh_interval_seconds"),
        Some(0.0)
    );
    assert!(m("trust_rotation_phase_transitions_total").unwrap() >= 6.0);
    assert!(m("trust_rotation_probes_total{result=\"issuer\"}").unwrap() > 0.0);
    assert_eq!(m("trust_rotation_leader"), Some(1.0));

    // An Event on the `cluster` resource for every transition, where `kubectl describe tar
    // cluster` finds them.
    // They are published after the status write that records the step.
    let phases = [
        Phase::RefreshingControlPlane,
        Phase::PropagatingTrustRoots,
        Phase::RenewingWorkloadCerts,
        Phase::RemovingOldTrustRoots,
        Phase::Synced,
    ];
    let events = Api::<k8s_openapi::api::core::v1::Event>::all(client.clone());
    let reasons = || async {
        let events = events
            .list(&ListParams::default().fields("involvedObject.kind=TrustAnchorRotation"))
            .await
            .unwrap();
        let reasons: BTreeSet<String> = events.items.into_iter().filter_map(|e| e.reason).collect();
        reasons
    };
    let waited = Instant::now();
    let reasons = loop {
        let reasons = reasons().await;
        if waited.elapsed() > Duration::from_secs(10)
            || phases.iter().all(|p| reasons.contains(p.as_str()))
        {
            break reasons;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for phase in phases {
        assert!(
            reasons.contains(phase.as_str()),
            "{phase}: {reasons:?}; operator log:\n{}",
            rig.op.process.log_tail()
        );
    }
    // And `kubectl describe tar cluster` lists them under the resource, as the README says.
    let described = rig
        .cp
        .kubectl()
        .expect("kubectl is provisioned with the control plane")
        .args(["describe", "tar", "cluster"])
        .output()
        .expect("running kubectl");
    let described_text = String::from_utf8_lossy(&described.stdout);
    assert!(described.status.success(), "{described:?}");
    let (_, listed) = described_text
        .split_once("\nEvents:")
        .unwrap_or_else(|| panic!("no Events section:\n{described_text}"));
    let listed_reasons: BTreeSet<&str> = listed
        .lines()
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            // Type, Reason, Age, From, Message.
            matches!(columns.next(), Some("Normal" | "Warning")).then(|| columns.next())?
        })
        .collect();
    for phase in phases {
        assert!(
            listed_reasons.contains(phase.as_str()),
            "{phase} not listed by kubectl describe tar cluster:\n{described_text}"
        );
    }

    // Within a phase, no step is announced twice (a look that decides a restart again while
    // its watch of the workload lags repeats a no-op patch, not the Event).
    let mut all =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "kube-system")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
    all.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    assert!(all.len() > phases.len(), "{} events", all.len());
    let mut in_phase = BTreeSet::new();
    for e in &all {
        let reason = e.reason.clone().unwrap_or_default();
        if phases.iter().any(|p| p.as_str() == reason) {
            in_phase.clear();
        }
        let said = (reason, e.note.clone().unwrap_or_default());
        assert!(
            in_phase.insert(said.clone()),
            "announced twice in one phase: {said:?}"
        );
    }

    // Its writes carry its field manager: the restarted Deployments (workloads and control
    // plane) say in their managedFields who restarted them.
    let managed_by_operator = |d: &Deployment| {
        d.managed_fields().iter().any(|e| {
            e.manager.as_deref() == Some(trust_rotation_operator::reconcile::controller::MANAGER)
        })
    };
    for (ns, name) in [
        (rig.ns[0].as_str(), "app-0"),
        ("linkerd", "linkerd-identity"),
    ] {
        let d = Api::<Deployment>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .unwrap();
        assert!(
            managed_by_operator(&d),
            "{ns}/{name}: {:?}",
            d.managed_fields()
        );
    }

    // Every proxy ends on the new anchor alone, with a leaf from the new issuer.
    rig.assert_mesh_on(&new_anchor, 12).await;

    // The restart onto the reduced bundle took the control plane's interval out again.
    for (name, (env, annotation, running)) in control_plane_refresh(&client).await {
        assert_eq!((env, annotation), (None, None), "{name}");
        assert!(
            !running.is_empty() && running.iter().all(Option::is_none),
            "{name}: {running:?}"
        );
    }

    assert_no_private_key_written(&client).await;
}

/// DESIGN.md: the operator never writes a private key. Reads back every Secret and ConfigMap
/// the operator wrote to (its field manager in their managedFields) and the rotation's status.
/// The same scan over cert-manager's anchor Secret must find its key, so a scan that could not
/// see one fails here rather than passing.
async fn assert_no_private_key_written(client: &kube::Client) {
    use trust_rotation_operator::reconcile::controller::MANAGER;
    let has_key = |text: &[u8]| String::from_utf8_lossy(text).contains("PRIVATE KEY");
    let ours = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (meta.managed_fields.iter().flatten()).any(|f| f.manager.as_deref() == Some(MANAGER))
    };
    let (mut written, mut with_key) = (BTreeSet::new(), BTreeSet::new());
    for secret in Api::<Secret>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let name = format!(
            "Secret {}/{}",
            secret.namespace().unwrap(),
            secret.name_any()
        );
        let values = secret.data.iter().flatten().map(|(_, v)| v.0.as_slice());
        if values.clone().any(has_key) {
            with_key.insert(name.clone());
        }
        if ours(&secret.metadata) {
            written.insert(name);
        }
    }
    for cm in Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let name = format!("ConfigMap {}/{}", cm.namespace().unwrap(), cm.name_any());
        let text = (cm.data.iter().flatten()).map(|(_, v)| v.as_bytes());
        let binary = (cm.binary_data.iter().flatten()).map(|(_, v)| v.0.as_slice());
        if text.chain(binary).any(has_key) {
            with_key.insert(name.clone());
        }
        if ours(&cm.metadata) {
            written.insert(name);
        }
    }
    assert!(
        with_key.contains("Secret cert-manager/linkerd-trust-anchor"),
        "the scan finds the anchor's own key: {with_key:?}"
    );
    for expected in [
        "Secret linkerd/linkerd-previous-anchor",
        "ConfigMap linkerd/linkerd-identity-trust-roots",
    ] {
        assert!(written.contains(expected), "{expected}: {written:?}");
    }
    let leaked: Vec<_> = written.intersection(&with_key).collect();
    assert!(
        leaked.is_empty(),
        "the operator wrote a private key into {leaked:?}"
    );
    let status = serde_json::to_vec(&rotation(client).await).unwrap();
    assert!(
        !has_key(&status),
        "the rotation's status holds a private key"
    );
}

/// Both policies Manual (BEL's way): the operator never restarts a workload or renews the
/// issuer; the test plays the platform engineer and runs exactly what the status asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rotation_the_user_acts_only_when_the_status_asks() {
    let rig = Rig::start(
        (2, 2, 1),
        json!({"workloadCertificateRefreshInterval": "3s"}),
        &[],
    )
    .await;
    let mut follow = Follow::new();
    let mut user = User::default();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let final_status = follow
        .with_user_until_done(&rig, &mut user, &new_anchor)
        .await;
    let t = rig.traffic();
    eprintln!(
        "manual rotation in {:.1}s; traffic: {t}; the user ran:\n  {}",
        follow.secs(),
        user.actions.join("\n  ")
    );
    assert_eq!(t.failed(), 0, "{t}; recent: {:#?}", t.recent);
    follow.assert_traffic_throughout(&rig);
    follow.assert_went_through_every_phase(true);
    // Every workload restarted once onto the expanded bundle and once onto the reduced one;
    // the issuer renewed once, when asked.
    let count = |phase: Phase, what: &str| {
        user.actions
            .iter()
            .filter(|a| a.starts_with(phase.as_str()) && a.contains(what))
            .count()
    };
    assert_eq!(count(Phase::PropagatingTrustRoots, "rollout restart"), 4);
    assert_eq!(count(Phase::RemovingOldTrustRoots, "rollout restart"), 4);
    assert_eq!(count(Phase::WaitingForIdentityRotation, "cmctl renew"), 1);
    assert_eq!(user.actions.len(), 9, "{:#?}", user.actions);
    assert_eq!(final_status.blocking_message, None);
    rig.assert_mesh_on(&new_anchor, 7).await;
}

/// The issuer renewed while the bundle is still propagating (the published CronJob's order)
/// raises `OutOfOrderIssuerRotation=True` with an urgent blockingMessage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_renewed_out_of_order_is_flagged() {
    let rig = Rig::start(
        (1, 2, 1),
        json!({"workloadCertificateRefreshInterval": "3s"}),
        &[],
    )
    .await;
    let mut follow = Follow::new();
    let mut user = User::default();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let mut renewed_early = false;
    let flagged = loop {
        let status = follow.status(&rig).await;
        if status.phase == Phase::PropagatingTrustRoots && !renewed_early {
            // Nobody has restarted a workload yet: the user renews the issuer too early.
            rig.runbook().renew_issuer().await.unwrap();
            renewed_early = true;
        }
        let ooo = status
            .conditions
            .iter()
            .find(|c| c.type_ == "OutOfOrderIssuerRotation");
        if let Some(c) = ooo
            && c.status == ConditionStatus::True
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("flagged: {:#?}", flagged.conditions);
    let message = flagged.blocking_message.clone().unwrap_or_default();
    assert!(
        message.to_lowercase().contains("out of order") || message.contains("URGENT"),
        "an urgent blockingMessage: {message:?}"
    );
    // The rotation still finishes once the user restarts what it asks for, and the condition
    // clears with it.
    let done = follow
        .with_user_until_done(&rig, &mut user, &new_anchor)
        .await;
    let ooo = done
        .conditions
        .iter()
        .find(|c| c.type_ == "OutOfOrderIssuerRotation")
        .unwrap();
    assert_eq!(ooo.status, ConditionStatus::False, "{done:#?}");
    assert_eq!(done.blocking_message, None);
    follow.assert_traffic_throughout(&rig);
    // The Warning that `assert_no_event` looks for in the tests of issuers renewed in order.
    let warned = common::eventually(
        "an OutOfOrderIssuerRotation Event",
        Duration::from_secs(10),
        || async {
            let events = events_of(&rig.client, "OutOfOrderIssuerRotation").await;
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    assert!(
        warned.iter().all(|e| e.type_.as_deref() == Some("Warning")),
        "{warned:#?}"
    );
    eprintln!("out-of-order rotation finished; traffic: {}", rig.traffic());
}

/// The operator installed after cert-manager (or a CronJob, or a person) renewed both the anchor
/// and the issuer, the bundle still on the old anchor: Linkerd's identity controller skipped
/// the new issuer (`IssuerUpdateSkipped`) and signs with its earlier one. The operator takes
/// the bundle's anchor as the one in use, expands the bundle, restarts the control plane but
/// the identity controller, propagates, and restarts the identity controller (which then
/// takes up the new issuer) only once every proxy trusts the new anchor: zero failed
/// handshakes. The negative control is `issuer_renewed_before_any_restart_breaks_mtls_with_
/// unknown_issuer` in `sim_mesh.rs`: the same state, the identity controller restarted onto
/// the expanded bundle at once, fails handshakes with an unknown issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_after_an_early_issuer_renewal_rotates_with_zero_failed_handshakes() {
    let mut rig = Rig::start((1, 2, 1), automatic_spec(5), &[]).await;
    // No operator, and nothing it recorded: its previous-anchor Secret and its rotation's status.
    rig.kill_operator();
    Api::<Secret>::namespaced(rig.client.clone(), "linkerd")
        .delete("linkerd-previous-anchor", &Default::default())
        .await
        .unwrap();
    let rotations = Api::<TrustAnchorRotation>::all(rig.client.clone());
    rotations
        .delete("cluster", &Default::default())
        .await
        .unwrap();
    while rotations.get_opt("cluster").await.unwrap().is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    apply_rotation(&rig.client, automatic_spec(5)).await;

    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let new_issuer = rig.runbook().renew_issuer().await.unwrap();
    rig.runbook()
        .wait_event("IssuerUpdateSkipped")
        .await
        .unwrap();
    assert_ne!(
        rig.mesh.identity_issuers(),
        vec![new_issuer.fingerprint.clone()]
    );
    assert_eq!(rig.traffic().failed(), 0, "{}", rig.traffic());

    // Installed now.
    rig.start_operator_again().await;
    let mut follow = Follow::new();
    let mut user = User::default();
    let mut identity_held_seen = false;
    let done = loop {
        let status = follow.status(&rig).await;
        let message = status.blocking_message.clone().unwrap_or_default();
        if message.contains("the identity controller (linkerd-identity) is held") {
            identity_held_seen = true;
            assert_ne!(
                rig.mesh.identity_issuers(),
                vec![new_issuer.fingerprint.clone()],
                "held: {message}"
            );
        }
        user.act(&rig, &status).await;
        if is_done(&status, &new_anchor) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let t = rig.traffic();
    eprintln!(
        "installed after an early renewal: {:?}; traffic: {t}",
        follow.phases
    );
    assert_eq!(t.failed(), 0, "{t}; recent: {:#?}", t.recent);
    assert!(identity_held_seen, "the hold was never reported");
    assert_eq!(done.blocking_message, None);
    follow.assert_traffic_throughout(&rig);
    // Two workload proxies and three of the control plane.
    rig.assert_mesh_on(&new_anchor, 5).await;
}

/// A second anchor renewal while the first expansion is propagating: the rotation expands
/// again without dropping an anchor in use, and ends Synced on the newest anchor with zero
/// failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_anchor_renewal_mid_rotation_still_ends_synced() {
    let rig = Rig::start((2, 2, 1), automatic_spec(1), &[]).await;
    let mut follow = Follow::new();
    let second = rig.runbook().renew_anchor().await.unwrap();
    let mut third: Option<Cert> = None;
    loop {
        let status = follow.status(&rig).await;
        if status.phase == Phase::PropagatingTrustRoots && third.is_none() {
            let renewed = rig.runbook().renew_anchor().await.unwrap();
            eprintln!(
                "[{:5.1}s] anchor renewed again mid-rotation: {}",
                follow.secs(),
                &renewed.fingerprint[..12]
            );
            third = Some(renewed);
        }
        if let Some(third) = &third
            && is_done(&status, third)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t = rig.traffic();
    eprintln!(
        "two renewals, one rotation, {:.1}s; traffic: {t}",
        follow.secs()
    );
    assert_ne!(second.fingerprint, third.as_ref().unwrap().fingerprint);
    follow
        .assert_ended_clean(&rig, &t, third.as_ref().unwrap(), 7)
        .await;
}

/// A second anchor renewal after the issuer was renewed onto the first renewal's anchor, and
/// the bundle ConfigMap deleted then: the anchor the issuer chains to is in no Secret any more,
/// only in the proxies' env. The operator finds it there and writes the bundle back with all
/// three anchors, and the rotation ends Synced on the newest one with zero failed handshakes.
/// (Before, it parked, telling the user to renew the issuer onto the newest anchor, which no
/// pod held yet; this test's user follows such advice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_deleted_after_a_second_renewal_comes_back_with_the_anchor_the_issuer_chains_to() {
    use trust_rotation_operator::bundle::Bundle;
    let rig = Rig::start((2, 2, 1), spec("Automatic", "Manual"), &[]).await;
    let names = rig.mesh.names();
    let pause = |paused: bool| set_paused(&rig.client, paused);
    let mut follow = Follow::new();
    let second = rig.runbook().renew_anchor().await.unwrap();
    // The rotation waits for the issuer's renewal (policy Manual): held there.
    while follow.status(&rig).await.phase != Phase::WaitingForIdentityRotation {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pause(true).await;
    let issuer = rig.runbook().renew_issuer().await.unwrap();
    let third = rig.runbook().renew_anchor().await.unwrap();
    Api::<ConfigMap>::namespaced(rig.client.clone(), "linkerd")
        .delete(&names.bundle_configmap, &Default::default())
        .await
        .unwrap();
    eprintln!(
        "[{:5.1}s] issuer {} on anchor {}, anchor renewed again to {}, bundle ConfigMap deleted",
        follow.secs(),
        &issuer.fingerprint[..12],
        &second.fingerprint[..12],
        &third.fingerprint[..12]
    );
    pause(false).await;

    let all_three: BTreeSet<String> = [&rig.first_anchor, &second, &third]
        .iter()
        .map(|c| c.fingerprint.clone())
        .collect();
    common::eventually(
        "the bundle written back with all three anchors",
        Duration::from_secs(30),
        || async {
            let pem = trust_rotation_operator::sim::linkerd::read_bundle(&rig.client, names)
                .await
                .unwrap()?;
            let held: BTreeSet<String> = Bundle::from_pem("cm", &pem)
                .ok()?
                .fingerprints()
                .map(str::to_owned)
                .collect();
            (held == all_three).then_some(())
        },
    )
    .await;
    let what = "second renewal, bundle deleted with the issuer on the first renewal's anchor";
    follow.finish_clean(&rig, &third, 7, what).await;
}

/// A workload started while the control plane refreshes onto the expanded bundle: the injector
/// already gives it that bundle, so propagation has no reason to restart it, but the rotation
/// had not yet published its interval, so its proxies keep Linkerd's natural refresh (70 % of
/// the leaf's lifetime, here 42 minutes of an hour). The operator restarts it for a leaf from
/// the renewed issuer, once, and the rotation finishes in seconds with zero failed handshakes.
/// Without that restart the rotation would wait for the natural refresh, in
/// RenewingWorkloadCerts, and this test fails at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_started_before_the_interval_was_published_is_restarted_for_its_leaf() {
    const LATE: &str = "mesh-late";
    let sim = SimConfig {
        leaf_lifetime: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let rig = Rig::start_with(sim.into(), (1, 1, 2), spec("Automatic", "Automatic"), &[]).await;
    let pause = |paused: bool| set_paused(&rig.client, paused);
    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    // Hold the rotation in the expanding control-plane refresh.
    loop {
        let status = follow.status(&rig).await;
        if status.phase == Phase::RefreshingControlPlane {
            pause(true).await;
            break;
        }
        assert_eq!(status.phase, Phase::Synced, "missed RefreshingControlPlane");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = follow.status(&rig).await;
    assert_eq!(
        status.phase,
        Phase::RefreshingControlPlane,
        "paused too late: {status:#?}"
    );
    // Once the injector's copy of the bundle holds the new anchor, a new workload starts.
    let holds_new = |pem: &str| holds_anchor(pem, &new_anchor.fingerprint);
    let waited = Instant::now();
    while !rig.mesh.injector_bundle().is_some_and(|b| holds_new(&b)) {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "injector kept the old bundle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.mesh
        .add_workloads(&[LATE.to_owned()], 1, 2, Duration::from_secs(120))
        .await
        .unwrap();
    let late = workload_pods(&rig.client, &[LATE.to_owned()]).await;
    assert_eq!(late.len(), 2);
    for pod in &late {
        let anchors = proxy_env(pod, "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS").unwrap();
        assert!(
            holds_new(&anchors),
            "{} holds the expanded bundle",
            pod.name_any()
        );
        assert_eq!(proxy_env(pod, MAX_REFRESH_ENV), None, "{}", pod.name_any());
    }
    pause(false).await;

    let mut asked = None;
    let done = loop {
        let status = follow.status(&rig).await;
        let message = status.blocking_message.as_deref().unwrap_or_default();
        if asked.is_none() && message.contains("will not refresh their leaf within 3s") {
            asked = Some(message.to_owned());
        }
        if is_done(&status, &new_anchor) {
            break status;
        }
        // A natural refresh (70% of the hour-long leaf) would take 42 minutes.
        assert!(
            follow.secs() < ROTATION_TIMEOUT.as_secs_f64(),
            "the rotation waits for a natural leaf refresh: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let t = rig.traffic();
    eprintln!(
        "rotation with a workload started before the interval: {:.1}s; asked: {asked:?}; traffic: {t}",
        follow.secs()
    );
    assert_eq!(done.blocking_message, None);
    let asked = asked.expect("the status named the workload that refreshes too late");
    assert!(asked.contains(&format!("{LATE}/app-0-")), "{asked}");
    let issuer = rig.runbook().issuer().await.unwrap();
    let template = Api::<Deployment>::namespaced(rig.client.clone(), LATE)
        .get("app-0")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template;
    assert_eq!(
        template
            .metadata
            .unwrap()
            .annotations
            .unwrap_or_default()
            .get("trust.linkerd.io/restarted-for-issuer"),
        Some(&issuer.fingerprint)
    );
    follow.assert_ended_clean(&rig, &t, &new_anchor, 7).await;
}

/// One namespace of two single-pod Deployments whose pods take 12 s to stop (against a 3 s
/// refresh interval: long enough that a slow machine still sees them stopping when the
/// rotation awaits the issuer), restarted automatically; the issuer renewed by
/// `issuer_policy`.
async fn slow_stopping_rig(issuer_policy: &str) -> Rig {
    let sim = SimConfig {
        pod_stop_delay: Duration::from_secs(12),
        ..SimConfig::default()
    };
    Rig::start_with(sim.into(), (1, 2, 1), spec("Automatic", issuer_policy), &[]).await
}

/// Pods that take their time to stop (a grace period; 12 s here, against a 3 s refresh
/// interval): the pods the propagation's restarts replaced still serve with the old anchor
/// alone when every running pod holds the expanded bundle. The automatic issuer renewal waits
/// until they have stopped, or their proxies would reject the renewed issuer's leaves: zero
/// failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automatic_issuer_renewal_waits_for_replaced_pods_to_stop() {
    let rig = slow_stopping_rig("Automatic").await;
    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let held = follow
        .until_done_noting(&rig, &new_anchor, "terminating pod(s) without it to stop")
        .await;
    let t = rig.traffic();
    eprintln!(
        "rotation with pods stopping in 12s: {:.1}s; held: {held:?}; traffic: {t}",
        follow.secs()
    );
    assert!(held.is_some(), "the renewal waited for the replaced pods");
    follow.assert_ended_clean(&rig, &t, &new_anchor, 5).await;
}

/// The negative control of the test above: the same slow-stopping pods, the issuer renewed by
/// hand as soon as the rotation waits for it, without heeding the hold. The replaced pods,
/// still serving with the old anchor alone, reject the renewed issuer's leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_the_issuer_while_replaced_pods_drain_fails_handshakes() {
    let rig = slow_stopping_rig("Manual").await;
    let mut follow = Follow::new();
    rig.runbook().renew_anchor().await.unwrap();
    // Once renewed: the traffic then, and the pods then stopping.
    let mut renewed: Option<(TrafficSnapshot, Vec<(String, String)>)> = None;
    loop {
        let status = follow.status(&rig).await;
        if status.phase == Phase::WaitingForIdentityRotation && renewed.is_none() {
            let message = status.blocking_message.as_deref().unwrap_or_default();
            assert!(
                message.contains("terminating pod(s) without it to stop"),
                "the pods replaced by propagation are still stopping: {message}"
            );
            let draining: Vec<(String, String)> = Api::<Pod>::all(rig.client.clone())
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_some())
                .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            assert!(!draining.is_empty(), "{message}");
            let before = rig.traffic();
            assert_eq!(
                before.failed(),
                0,
                "no failures before the renewal: {before}"
            );
            rig.runbook().renew_issuer().await.unwrap();
            eprintln!(
                "[{:5.1}s] issuer renewed while {draining:?} stop",
                follow.secs()
            );
            renewed = Some((before, draining));
        }
        if let Some((before, draining)) = &renewed {
            let t = rig.traffic();
            if t.since(before).failed_with(&FailureReason::UnknownIssuer) >= 5 {
                eprintln!(
                    "[{:5.1}s] replaced pods reject the renewed issuer's leaves: {t}",
                    follow.secs()
                );
                // Every failure has a pod that was stopping at the renewal on one side.
                for f in &t.recent {
                    assert!(
                        [&f.client, &f.server]
                            .iter()
                            .any(|p| draining.contains(&(p.namespace.clone(), p.name.clone()))),
                        "a failure without a stopping pod: {f:?}"
                    );
                }
                break;
            }
        }
        assert!(
            follow.secs() < 120.0,
            "no unknown-issuer failures: {}; {status:#?}",
            rig.traffic()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A mesh whose control plane runs two replicas of each Deployment, the second identity
/// controller replica loading a changed issuer Secret 30 s after the first (its node's kubelet
/// updating the Secret volume late), against a 10 s refresh interval: for 30 s the replicas
/// sign with different issuers, a proxy seen with the new issuer's leaf may take its next one
/// from the old, and keep it for up to 10 s after. Both policies automatic; `grace` is the
/// operator's `--issuer-reload-grace`; with `metrics` each identity replica serves
/// `issuer_cert_ttl_seconds` (Linkerd 2.18 and later), without, it does not.
async fn lagging_identity_replica_rig(grace: &str, metrics: bool) -> Rig {
    let sim = SimConfig {
        control_plane_replicas: 2,
        issuer_reload_lag: Duration::from_secs(30),
        identity_metrics: metrics,
        ..SimConfig::default()
    };
    let grace = format!("--issuer-reload-grace={grace}");
    let mut spec = automatic_spec(2);
    spec["workloadCertificateRefreshInterval"] = "10s".into();
    Rig::start_with(sim.into(), (1, 2, 2), spec, &[&grace]).await
}

/// Rotates with the lagging identity replica, noting the status that says `wait`: zero failed
/// handshakes, and that status seen.
async fn rotate_past_a_lagging_identity_replica(rig: &Rig, wait: &str) {
    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let held = follow.until_done_noting(rig, &new_anchor, wait).await;
    let t = rig.traffic();
    eprintln!(
        "rotation with an identity replica 30 s late: {:.1}s; held: {held:?}; traffic: {t}",
        follow.secs()
    );
    assert!(
        held.is_some(),
        "the reduction waited for the lagging replica"
    );
    follow.assert_ended_clean(rig, &t, &new_anchor, 10).await;
}

/// The lagging replica's metrics say it still signs with the old issuer: the old anchor stays
/// in the bundle, with no grace at all (`--issuer-reload-grace=0s`), until they show it on the
/// new one, and every leaf is checked again after that (a proxy that took an old leaf from it
/// just before it loaded the issuer still holds it then). Zero failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_identity_replica_seen_by_its_metrics_keeps_the_old_anchor_until_it_loads_the_issuer()
 {
    let rig = lagging_identity_replica_rig("0s", true).await;
    rotate_past_a_lagging_identity_replica(&rig, "still signs with another issuer").await;
}

/// An identity controller without the metric (Linkerd before 2.18): the old anchor stays until
/// every replica has surely loaded the issuer (`--issuer-reload-grace` 31 s), and every leaf
/// is checked again after that. Zero failed handshakes; the status said what it waited for.
/// (Checked by hand: without the second check, 123 failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_metrics_a_lagging_identity_replica_keeps_the_old_anchor_for_the_grace() {
    let rig = lagging_identity_replica_rig("31s", false).await;
    rotate_past_a_lagging_identity_replica(&rig, "the identity controller has run 2 replicas")
        .await;
}

/// The negative control of the two tests above: the same lagging replica, without its metrics,
/// and the operator told that every replica loads the issuer at once
/// (`--issuer-reload-grace=0s`). Proxies seen with the new issuer's leaf take their next one
/// from the lagging replica, the old anchor leaves the bundle meanwhile, and proxies restarted
/// onto the reduced bundle reject those leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unseen_and_without_the_grace_a_lagging_identity_replica_fails_handshakes() {
    let rig = lagging_identity_replica_rig("0s", false).await;
    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    loop {
        let status = follow.status(&rig).await;
        let t = rig.traffic();
        if t.failed_with(&FailureReason::UnknownIssuer) >= 3 {
            eprintln!(
                "[{:5.1}s] leaves of the lagging replica rejected: {t}",
                follow.secs()
            );
            assert!(
                matches!(
                    status.phase,
                    Phase::RefreshingControlPlane | Phase::RemovingOldTrustRoots
                ),
                "failures only once the bundle is reduced: {status:#?}"
            );
            break;
        }
        assert!(
            !is_done(&status, &new_anchor) && follow.secs() < 180.0,
            "no unknown-issuer failures: {t}; {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A meshed namespace with one Deployment (`app-0`, one replica) whose pods wait, Pending,
/// held by the simulated scheduler (`HOLD_ANNOTATION`, as a scheduling gate would): created,
/// and injected, now; started only once the hold is lifted. Returns once its pod exists with
/// the proxy the injector gave it.
async fn held_workload(client: &kube::Client, ns: &str) -> Pod {
    trust_rotation_operator::sim::linkerd::namespace(
        client,
        ns,
        json!({}),
        json!({"linkerd.io/inject": "enabled"}),
    )
    .await
    .unwrap();
    let deployment = json!({"metadata": {"name": "app-0"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "late"}},
            "template": {"metadata": {"labels": {"app": "late"},
                                      "annotations": {HOLD_ANNOTATION: "until the test lifts it"}},
                "spec": {"containers": [{"name": "app", "image": "sim/app:1"}]}}}});
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment).unwrap(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        if let [pod] = &workload_pods(client, &[ns.to_owned()]).await[..]
            && proxy_env(pod, "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS").is_some()
        {
            return pod.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the held pod was not created and injected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// From now on, lifts the hold from every pod of `ns` that has it (those a restart creates
/// too), until the returned task is aborted.
fn lift_holds(client: &kube::Client, ns: &str) -> tokio::task::JoinHandle<()> {
    lift_holds_where(client, ns, |_| true)
}

/// [`lift_holds`], for the pods `lift` picks only.
fn lift_holds_where(
    client: &kube::Client,
    ns: &str,
    lift: impl Fn(&Pod) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    tokio::spawn(async move {
        loop {
            for pod in pods.list(&ListParams::default()).await.unwrap().items {
                if pod.annotations().contains_key(HOLD_ANNOTATION) && lift(&pod) {
                    pods.patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({"metadata": {"annotations": {HOLD_ANNOTATION: null}}}),
                        ),
                    )
                    .await
                    .unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Waits until the pod `name` of `ns` runs a ready proxy.
async fn wait_proxy_ready(rig: &Rig, ns: &str, name: &str) {
    let started = Instant::now();
    while !rig
        .mesh
        .ready_proxies()
        .iter()
        .any(|p| p.pod.namespace == ns && p.pod.name == name)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{ns}/{name} never ran a ready proxy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The negative control of the test below: a pod created before the rotation and Pending since
/// (held by the simulated scheduler), with the old anchor alone in its spec. The user restarts
/// what the status names except that pod's workload; the pod starts, and the user renews the
/// issuer without waiting for it. Its proxy rejects the renewed issuer's leaves: the traffic
/// counts unknown-issuer failures, each with the late pod on one side, and the status raises
/// OutOfOrderIssuerRotation (the pod counted for the bundle while it was Pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_pod_without_the_expanded_bundle_fails_handshakes_once_the_issuer_is_renewed() {
    const LATE: &str = "mesh-late";
    let rig = Rig::start((1, 1, 2), spec("Manual", "Manual"), &[]).await;
    let stale = held_workload(&rig.client, LATE).await;
    let mut follow = Follow::new();
    let mut user = User {
        ignored_namespace: Some(LATE),
        ..User::default()
    };
    rig.runbook().renew_anchor().await.unwrap();
    // The user restarts what propagation names but the late pod's workload, until only that
    // pod lacks the new anchor and the pods it replaced have stopped.
    loop {
        let status = follow.status(&rig).await;
        let message = status.blocking_message.as_deref().unwrap_or_default();
        // (`workload_pods` leaves out the pods being deleted.)
        let draining = Api::<Pod>::namespaced(rig.client.clone(), "mesh-0")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some());
        if status.phase == Phase::PropagatingTrustRoots
            && message.starts_with("1 of 3 meshed pods do not hold the expanded trust bundle")
            && message.contains(&stale.name_any())
            && message.contains("1 of them Pending")
            && !draining
        {
            break;
        }
        user.act(&rig, &status).await;
        assert!(follow.secs() < 120.0, "{status:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The pod starts (its proxy gets a leaf from the issuer still in place), and the user
    // renews the issuer without waiting for it.
    let lifter = lift_holds(&rig.client, LATE);
    wait_proxy_ready(&rig, LATE, &stale.name_any()).await;
    rig.runbook().renew_issuer().await.unwrap();
    let before = rig.traffic();
    assert_eq!(before.failed(), 0, "no failures before: {before}");
    loop {
        let status = follow.status(&rig).await;
        let t = rig.traffic();
        if t.failed_with(&FailureReason::UnknownIssuer) >= 5 && follow.out_of_order {
            eprintln!(
                "[{:5.1}s] the late pod rejects the renewed issuer's leaves: {t}; {}",
                follow.secs(),
                status.blocking_message.as_deref().unwrap_or_default()
            );
            // Every failure has the late pod on one side.
            for f in &t.recent {
                assert!(
                    [&f.client, &f.server]
                        .iter()
                        .any(|p| p.namespace == LATE && p.name == stale.name_any()),
                    "a failure without the late pod: {f:?}"
                );
            }
            break;
        }
        assert!(
            follow.secs() < 120.0,
            "no unknown-issuer failures or no OutOfOrderIssuerRotation: {t}; {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    lifter.abort();
}

/// The late pod of the test above, under both policies Automatic, where the issuer renewal
/// follows the bundle's convergence in the same look: still Pending (unscheduled, or pulling
/// its image) with the old anchor alone in its spec, it would start after the renewal and
/// reject every leaf of the renewed issuer (the negative control above shows those failures).
/// The operator counts a pod not started yet by the anchors in its spec: it names it, restarts
/// its workload onto the expanded bundle, and renews the issuer only once it is gone. The
/// replacement, held too, is let start (it holds the expanded bundle); the stale pod never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_pod_without_the_expanded_bundle_holds_back_an_automatic_issuer_renewal() {
    const LATE: &str = "mesh-late";
    let rig = Rig::start((1, 1, 2), spec("Automatic", "Automatic"), &[]).await;
    let stale = held_workload(&rig.client, LATE).await;
    let old_issuer = rig.runbook().issuer().await.unwrap();
    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let new_fingerprint = new_anchor.fingerprint.clone();
    let lifter = lift_holds_where(&rig.client, LATE, move |pod| {
        proxy_env(pod, "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS")
            .is_some_and(|pem| holds_anchor(&pem, &new_fingerprint))
    });
    let pods = Api::<Pod>::namespaced(rig.client.clone(), LATE);
    let mut named = None;
    let done = loop {
        let status = follow.status(&rig).await;
        let message = status.blocking_message.as_deref().unwrap_or_default();
        if message.contains(&stale.name_any()) && message.contains("Pending") {
            named.get_or_insert_with(|| message.to_owned());
        }
        if pods.get_opt(&stale.name_any()).await.unwrap().is_some() {
            let issuer = rig.runbook().issuer().await.unwrap();
            assert_eq!(
                issuer.fingerprint,
                old_issuer.fingerprint,
                "the issuer was renewed while {} was Pending with the old anchor alone: {status:#?}",
                stale.name_any()
            );
        }
        if is_done(&status, &new_anchor) {
            break status;
        }
        assert!(follow.secs() < 180.0, "{status:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    lifter.abort();
    let named = named.expect("the status named the Pending pod");
    eprintln!("named: {named}");
    let t = rig.traffic();
    eprintln!(
        "rotation with a Pending pod: {:.1}s; traffic: {t}",
        follow.secs()
    );
    assert_eq!(done.blocking_message, None);
    assert!(!follow.out_of_order, "the issuer was renewed out of order");
    assert_no_event(&rig.client, "OutOfOrderIssuerRotation").await;
    follow.assert_ended_clean(&rig, &t, &new_anchor, 6).await;
}

/// The issuer Certificate's `Issuing` condition (status, reason) and its
/// `failedIssuanceAttempts`, as cert-manager (here its stand-in) records them.
async fn issuer_issuance(client: &kube::Client) -> (Option<(String, String)>, Option<u64>) {
    use trust_rotation_operator::sim::certmanager::Certificate;
    let cert = Api::<Certificate>::namespaced(client.clone(), "linkerd")
        .get("linkerd-identity-issuer")
        .await
        .unwrap();
    let status = cert.status.unwrap_or_default();
    let issuing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Issuing")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()));
    (issuing, status.failed_issuance_attempts.map(u64::from))
}

/// The operator's Events of `reason` on the `cluster` rotation (cluster-scoped: they are
/// written in `kube-system`).
async fn events_of(
    client: &kube::Client,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// [`events_of`], asserted to be exactly one Warning.
async fn warning_events(
    client: &kube::Client,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let events = events_of(client, reason).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    events
}

/// No Event of `reason` on the `cluster` rotation: a condition raised and cleared between two
/// status reads still leaves its Warning (`issuer_renewed_out_of_order_is_flagged` finds it).
async fn assert_no_event(client: &kube::Client, reason: &str) {
    let events = events_of(client, reason).await;
    assert!(events.is_empty(), "{events:#?}");
}

/// cert-manager refuses the automatic issuer renewal (its approver denies every request for
/// the issuer Certificate, as approver-policy does one no policy allows). The operator asks
/// once; then it names cert-manager's reason in the status and waits out its own backoff,
/// instead of setting `Issuing=True` again on every look: cert-manager's count of failures
/// stays at one while the operator looks a dozen times. (Before, it asked on every look, and
/// the count grew with each.) Once the cause is gone, the `cmctl renew` the status offers
/// finishes the rotation, with zero failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_automatic_issuer_renewal_says_why_and_is_not_asked_again_at_once() {
    use trust_rotation_operator::sim::certmanager::{Certificate, DENY_ANNOTATION};
    let rig = Rig::start((1, 2, 1), automatic_spec(5), &[]).await;
    let certificates = Api::<Certificate>::namespaced(rig.client.clone(), "linkerd");
    let deny = |reason: Option<&str>| {
        let certificates = certificates.clone();
        let patch = json!({"metadata": {"annotations": {DENY_ANNOTATION: reason}}});
        async move {
            certificates
                .patch(
                    "linkerd-identity-issuer",
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
                .unwrap();
        }
    };
    deny(Some("no policy approved this request")).await;
    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let refused = loop {
        let status = follow.status(&rig).await;
        let message = status.blocking_message.unwrap_or_default();
        if message
            .contains("cert-manager failed to re-issue Certificate linkerd/linkerd-identity-issuer")
        {
            assert_eq!(status.phase, Phase::WaitingForIdentityRotation);
            break message;
        }
        let (issuing, attempts) = issuer_issuance(&rig.client).await;
        assert!(
            attempts <= Some(1),
            "asked again at once: {issuing:?}, {attempts:?} failures; {message}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("[{:5.1}s] refused: {refused}", follow.secs());
    for part in [
        "(attempt 1): Denied: The certificate request has failed to complete and will be retried: no policy approved this request",
        "the operator asks again at ",
        "run: cmctl renew -n linkerd linkerd-identity-issuer",
    ] {
        assert!(refused.contains(part), "{part:?} in {refused}");
    }
    // Eight seconds: sixteen looks at the operator's 500 ms interval. Each request asked for
    // would fail again and count.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(8) {
        let status = follow.status(&rig).await;
        assert_eq!(status.phase, Phase::WaitingForIdentityRotation);
        assert_eq!(status.blocking_message.as_deref(), Some(refused.as_str()));
        let (issuing, attempts) = issuer_issuance(&rig.client).await;
        assert_eq!(attempts, Some(1), "asked again: {issuing:?}");
        assert_eq!(issuing.map(|(status, _)| status).as_deref(), Some("False"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let warned = warning_events(&rig.client, "IssuerRenewalFailed").await;
    assert!(warned[0].series.is_none(), "warned once: {warned:#?}");

    // The cause gone, the person runs what the status offers; the rotation finishes.
    deny(None).await;
    let mut user = User::default();
    let done = follow
        .with_user_until_done(&rig, &mut user, &new_anchor)
        .await;
    assert_eq!(
        user.actions,
        ["WaitingForIdentityRotation: cmctl renew -n linkerd linkerd-identity-issuer"]
    );
    assert_eq!(done.blocking_message, None);
    assert_eq!(
        issuer_issuance(&rig.client).await.1,
        None,
        "a success clears the failures"
    );
    let t = rig.traffic();
    eprintln!(
        "rotation with the issuer renewal refused, then renewed by hand: {:.1}s; traffic: {t}",
        follow.secs()
    );
    follow.assert_ended_clean(&rig, &t, &new_anchor, 5).await;
}

/// An identity issuer renewed with its old key (`rotationPolicy: Never`, cert-manager's default
/// before 1.18) while the anchor gets a new one: a leaf from the old issuer still verifies under
/// the new issuer's key, but its chain (leaf, old issuer) does not verify under the new anchor.
/// The rotation must wait until every proxy presents the new issuer's certificate, or the
/// reduction to the new anchor fails the proxies still on the old chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_renewed_with_its_old_key_still_zero_failed_handshakes() {
    let sim = SimConfig {
        issuer_key: KeyRotation::Never,
        ..SimConfig::default()
    };
    let rig = Rig::start_with(sim.into(), (1, 2, 2), automatic_spec(2), &[]).await;
    let mut follow = Follow::new();
    let old_issuer = rig.runbook().issuer().await.unwrap();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let mut user = User::default();
    let done = follow
        .with_user_until_done(&rig, &mut user, &new_anchor)
        .await;
    let new_issuer = rig.runbook().issuer().await.unwrap();
    assert_ne!(old_issuer.fingerprint, new_issuer.fingerprint);
    assert_eq!(
        old_issuer.public_key_fingerprint, new_issuer.public_key_fingerprint,
        "the issuer kept its key"
    );
    let t = rig.traffic();
    eprintln!(
        "rotation with an issuer that keeps its key: {:.1}s; traffic: {t}",
        follow.secs()
    );
    assert_eq!(t.failed(), 0, "{t}; recent: {:#?}", t.recent);
    assert_eq!(done.blocking_message, None);
    follow.assert_traffic_throughout(&rig);
    rig.assert_mesh_on(&new_anchor, 7).await;
}

/// Both Certificates renewed with their old keys (cert-manager's default before 1.18): the new
/// anchor has the old one's key, so the old issuer verifies under it too. That is not an issuer
/// renewed out of order, and the rotation must not say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_renewed_with_its_old_key_raises_no_false_alarm() {
    let sim = SimConfig {
        anchor_key: KeyRotation::Never,
        issuer_key: KeyRotation::Never,
        ..SimConfig::default()
    };
    let rig = Rig::start_with(sim.into(), (1, 1, 2), spec("Automatic", "Automatic"), &[]).await;
    let mut follow = Follow::new();
    let old_issuer = rig.runbook().issuer().await.unwrap();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    assert_eq!(
        rig.first_anchor.public_key_fingerprint, new_anchor.public_key_fingerprint,
        "the anchor kept its key"
    );
    let mut user = User::default();
    let done = follow
        .with_user_until_done(&rig, &mut user, &new_anchor)
        .await;
    let t = rig.traffic();
    eprintln!(
        "rotation with an anchor that keeps its key: {:.1}s; traffic: {t}",
        follow.secs()
    );
    assert_eq!(t.failed(), 0, "{t}; recent: {:#?}", t.recent);
    follow.assert_traffic_throughout(&rig);
    follow.assert_went_through_every_phase(false);
    assert!(
        !follow.out_of_order,
        "OutOfOrderIssuerRotation was raised for an issuer renewed in order"
    );
    // Between two status reads too.
    assert_no_event(&rig.client, "OutOfOrderIssuerRotation").await;
    assert!(
        done.conditions
            .iter()
            .all(|c| c.status != ConditionStatus::True),
        "{done:#?}"
    );
    // The old issuer verifies under the new anchor's key too, but it was issued before the new
    // anchor existed: the rotation still had the issuer renewed onto it.
    let new_issuer = rig.runbook().issuer().await.unwrap();
    assert_ne!(
        new_issuer.fingerprint, old_issuer.fingerprint,
        "the issuer was renewed"
    );
    rig.assert_mesh_on(&new_anchor, 5).await;
}

/// A rig whose operator may restart workloads in `mesh-1` only (RBAC), with the given layout,
/// rotating automatically one workload at a time.
async fn rig_restarting_only_in_mesh_1(layout: (usize, usize, i32)) -> Rig {
    Rig::start_with(
        Setup {
            credentials: Credentials::Rbac {
                restart_in: Some(vec!["mesh-1".to_owned()]),
            },
            ..Setup::default()
        },
        layout,
        automatic_spec(1),
        &[],
    )
    .await
}

/// The operator may restart workloads in `mesh-1` only (its restarter ClusterRole bound there
/// alone), one workload at a time: the restart it may not do, first in its list, is named in
/// the status with the API server's refusal, once (one Warning event, not one per retry), and
/// takes no slot from the other, which is restarted; once allowed, the rotation finishes with
/// zero failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_the_operator_may_not_do_is_named_in_status() {
    let rig = rig_restarting_only_in_mesh_1((2, 1, 1)).await;
    let mut follow = Follow::new();
    assert_eq!(forbidden_deployment_patches(&rig.cp), 0);
    let renewed = Instant::now();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let held = follow.until_a_step_fails(&rig).await;
    let message = held.blocking_message.clone().unwrap();
    eprintln!("blockingMessage: {message}");
    assert_eq!(held.phase, Phase::PropagatingTrustRoots);
    assert!(
        message.contains("restarting Deployment mesh-0/app-0") && message.contains("(403)"),
        "{message}"
    );
    assert!(message.contains("forbidden"), "{message}");
    // The restart it may do is done, though the refused one comes first and one slot is all
    // there is.
    common::eventually(
        "mesh-1/app-0 restarted (the refused restart must not keep the only slot)",
        Duration::from_secs(30),
        || async {
            restarted_for_bundle(&rig.client, "mesh-1", "app-0")
                .await
                .then_some(())
        },
    )
    .await;
    assert!(!restarted_for_bundle(&rig.client, "mesh-0", "app-0").await);
    // And announced: the step's own event is not published when part of it fails, so a Normal
    // event of its reason names the restart that went ahead.
    common::eventually(
        "a RestartingWorkloads event naming mesh-1/app-0",
        Duration::from_secs(30),
        || async {
            events_of(&rig.client, "RestartingWorkloads")
                .await
                .iter()
                .any(|e| {
                    let note = e.note.as_deref().unwrap_or_default();
                    e.type_.as_deref() == Some("Normal")
                        && note.contains("deployment/mesh-1/app-0")
                        && note.contains("the others were refused")
                })
                .then_some(())
        },
    )
    .await;
    // Said once, though the looks that follow may decide the same restart again until the
    // watch shows it.
    let partly = |events: Vec<k8s_openapi::api::events::v1::Event>| {
        events
            .iter()
            .filter(|e| {
                e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("the others were refused"))
            })
            .count()
    };
    // Still held a few retries later, and said once; meanwhile the restarted workload's new
    // pods, holding the bundle, are counted.
    let converged =
        |s: &TrustAnchorRotationStatus| s.trust_bundle.as_ref().map(|c| c.converged_pods);
    let mut status = follow.status(&rig).await;
    let since = Instant::now();
    while converged(&status) <= converged(&held) {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the counts froze while the step was held: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        status = follow.status(&rig).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = follow.status(&rig).await;
    assert_eq!(status.phase, Phase::PropagatingTrustRoots);
    assert_eq!(status.blocking_message.as_deref(), Some(message.as_str()));
    warning_events(&rig.client, "StepFailed").await;
    assert_eq!(
        partly(events_of(&rig.client, "RestartingWorkloads").await),
        1
    );
    // The refused restart is tried again after a wait that doubles (2 s, 4 s, 8 s, ... up to
    // 30 s), not on every look: looks came every 500 ms, and 100 ms after each of the rollout's
    // watch events. At most the tries that schedule allows since the rotation began (the first
    // refusal came later).
    let tried = forbidden_deployment_patches(&rig.cp);
    let (elapsed, mut allowed, mut at, mut wait) = (renewed.elapsed(), 1, Duration::ZERO, 2);
    while at + Duration::from_secs(wait) <= elapsed {
        (at, allowed, wait) = (
            at + Duration::from_secs(wait),
            allowed + 1,
            (wait * 2).min(30),
        );
    }
    eprintln!("refused restart tried {tried} times in {elapsed:?} (at most {allowed})");
    assert!(
        (1..=allowed).contains(&tried),
        "tried {tried} times in {elapsed:?}; the schedule allows {allowed}"
    );

    // Allowed: the rotation moves on and finishes.
    allow_restarts_in(&rig.client, "mesh-0").await;
    follow
        .finish_clean(
            &rig,
            &new_anchor,
            5,
            "rotation with a restart refused, then allowed",
        )
        .await;
}

/// Restarts refused in one namespace (the operator's restarter role bound in the other only),
/// then allowed: they go through at the pace of `maxConcurrentWorkloads` (here one), since a
/// refused restart that goes through starts a rollout like any other. Sampled every 50 ms while
/// the bundle propagates, never two rollouts at once, in either namespace; the rotation then
/// finishes clean. (They once went through one per look, whatever was rolling.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_restarts_once_allowed_go_through_at_the_pace_of_the_others() {
    let rig = rig_restarting_only_in_mesh_1((2, 3, 1)).await;
    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    // Every restart in mesh-1 done, one at a time; all three in mesh-0 refused meanwhile.
    for name in ["app-0", "app-1", "app-2"] {
        common::eventually(
            &format!("mesh-1/{name} restarted"),
            Duration::from_secs(60),
            || async {
                restarted_for_bundle(&rig.client, "mesh-1", name)
                    .await
                    .then_some(())
            },
        )
        .await;
    }
    let status = follow.status(&rig).await;
    assert_eq!(status.phase, Phase::PropagatingTrustRoots);
    let message = status.blocking_message.unwrap_or_default();
    for name in ["app-0", "app-1", "app-2"] {
        assert!(
            message.contains(&format!("restarting Deployment mesh-0/{name}")),
            "{message}"
        );
    }

    allow_restarts_in(&rig.client, "mesh-0").await;
    // While the bundle propagates, every rollout onto it counts, in both namespaces.
    let (mut most, mut restarted) = (0, 0);
    while follow.status(&rig).await.phase == Phase::PropagatingTrustRoots {
        let mut rolling = Vec::new();
        restarted = 0;
        for ns in ["mesh-0", "mesh-1"] {
            let deployments = Api::<Deployment>::namespaced(rig.client.clone(), ns);
            for d in deployments.list(&ListParams::default()).await.unwrap() {
                let marked = (d.spec.as_ref())
                    .and_then(|s| s.template.metadata.as_ref()?.annotations.as_ref())
                    .is_some_and(|a| a.contains_key("trust.linkerd.io/restarted-for-bundle"));
                if !marked {
                    continue;
                }
                restarted += 1;
                if !trust_rotation_operator::sim::linkerd::rollout_complete(&d) {
                    rolling.push(format!("{ns}/{}", d.name_any()));
                }
            }
        }
        if rolling.len() > most {
            most = rolling.len();
            eprintln!("[{:5.1}s] rolling: {rolling:?}", follow.secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("at most {most} rollouts at once; {restarted} workloads restarted");
    assert_eq!(restarted, 6, "every workload restarted onto the bundle");
    assert_eq!(most, 1, "maxConcurrentWorkloads is 1");
    follow
        .finish_clean(&rig, &new_anchor, 9, "restarts refused, then allowed")
        .await;
}

/// In Synced, meshed pods come and go with the cluster's own work (scaling, rollouts). The
/// status counts them, but a change of the counts alone is written at most once every 5 s, not
/// once per pod: here a Deployment scaled up one pod at a time, five times in four seconds,
/// costs at most the writes that gap allows (read from the API server's audit log), and the
/// status still ends with every pod counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_synced_pods_coming_and_going_are_counted_without_a_write_for_each() {
    let rig = Rig::start_with(
        Setup {
            credentials: Credentials::Rbac { restart_in: None },
            ..Setup::default()
        },
        (1, 1, 1),
        automatic_spec(1),
        &[],
    )
    .await;
    let status_writes = || {
        rig.cp
            .audited(OPERATOR_USER, |event| {
                event["verb"] == "patch"
                    && event["objectRef"]["resource"] == "trustanchorrotations"
                    && event["objectRef"]["subresource"] == "status"
            })
            .unwrap()
    };
    let before = status_writes();
    let started = Instant::now();
    let deployments = Api::<Deployment>::namespaced(rig.client.clone(), &rig.ns[0]);
    for replicas in 2..=6 {
        let scale = json!({"spec": {"replicas": replicas}});
        deployments
            .patch("app-0", &PatchParams::default(), &Patch::Merge(scale))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let counted = common::eventually(
        "the six pods counted in the status",
        Duration::from_secs(30),
        || async {
            let status = rotation(&rig.client).await.status.unwrap_or_default();
            let bundle = status.trust_bundle?;
            (bundle.converged_pods == 6 && bundle.target_pods == 6).then_some(())
        },
    );
    counted.await;
    let (elapsed, writes) = (started.elapsed(), status_writes() - before);
    let allowed = 1 + elapsed.as_secs() / 5;
    eprintln!("{writes} status writes in {elapsed:?} (at most {allowed})");
    assert!(
        (1..=allowed).contains(&writes),
        "{writes} status writes in {elapsed:?}; one per 5 s allows {allowed}"
    );
    assert_eq!(
        rotation(&rig.client).await.status.unwrap().phase,
        Phase::Synced
    );
}

/// A control-plane restart the API server refuses (here the operator's Role in `linkerd` lets it
/// patch every control-plane Deployment but the identity controller's) holds the phase with a
/// message naming it, and holds up no other: the rest of the control plane is restarted. Once
/// allowed, the rotation finishes with zero failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_control_plane_restart_holds_up_no_other() {
    use k8s_openapi::api::rbac::v1::Role;
    let rig = Rig::start_with(
        Setup {
            credentials: Credentials::Rbac {
                restart_in: Some(vec!["mesh-0".to_owned()]),
            },
            ..Setup::default()
        },
        (1, 1, 1),
        automatic_spec(5),
        &[],
    )
    .await;
    let roles = Api::<Role>::namespaced(rig.client.clone(), "linkerd");
    let role_name = "trust-rotation-operator-linkerd";
    let granted = roles.get(role_name).await.unwrap();
    let mut narrowed = granted.clone();
    let deployments = narrowed
        .rules
        .iter_mut()
        .flatten()
        .find(|r| r.resources.as_deref() == Some(&["deployments".to_owned()][..]))
        .expect("the Role's rule for control-plane restarts");
    deployments.resource_names = Some(vec![
        "linkerd-destination".to_owned(),
        "linkerd-proxy-injector".to_owned(),
    ]);
    roles
        .replace(role_name, &PostParams::default(), &narrowed)
        .await
        .unwrap();

    let mut follow = Follow::new();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let held = follow.until_a_step_fails(&rig).await;
    let message = held.blocking_message.clone().unwrap();
    eprintln!("blockingMessage: {message}");
    assert_eq!(held.phase, Phase::RefreshingControlPlane);
    assert!(
        message.contains("restarting Deployment linkerd/linkerd-identity")
            && message.contains("(403)"),
        "{message}"
    );
    let restarted = |name| restarted_for_bundle(&rig.client, "linkerd", name);
    for name in ["linkerd-destination", "linkerd-proxy-injector"] {
        common::eventually(
            &format!("linkerd/{name} restarted beside the refused restart"),
            Duration::from_secs(30),
            || async { restarted(name).await.then_some(()) },
        )
        .await;
    }
    assert!(!restarted("linkerd-identity").await);

    // Allowed again: the rotation finishes.
    let mut allowed = roles.get(role_name).await.unwrap();
    allowed.rules = granted.rules;
    roles
        .replace(role_name, &PostParams::default(), &allowed)
        .await
        .unwrap();
    let what = "rotation with a control-plane restart refused, then allowed";
    follow.finish_clean(&rig, &new_anchor, 4, what).await;
}

/// The bundle ConfigMap deleted, and put back by the operator: a ConfigMap it created itself.
/// Another manager then writes the key, keeping the anchor in use and adding one: still an
/// overwrite (the operator's write sets an annotation too, so the API server keeps its
/// managedFields entry when the key is taken), restored to the anchor in use, and recorded.
/// Then it is replaced outright, annotations and all: restored and recorded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_the_operator_created_and_another_overwrote_is_restored() {
    use trust_rotation_operator::bundle::Bundle;
    let rig = Rig::start((1, 1, 1), automatic_spec(2), &[]).await;
    let names = rig.mesh.names();
    let configmaps: Api<ConfigMap> = Api::namespaced(rig.client.clone(), "linkerd");
    let bundle = || async {
        trust_rotation_operator::sim::linkerd::read_bundle(&rig.client, names)
            .await
            .unwrap()
            .and_then(|pem| Bundle::from_pem("cm", &pem).ok())
            .map(|b| b.fingerprint())
    };
    let in_use = Bundle::from_pem("anchor", &rig.first_anchor.pem)
        .unwrap()
        .fingerprint();
    let before = rig.traffic();
    configmaps
        .delete(&names.bundle_configmap, &Default::default())
        .await
        .unwrap();
    common::eventually(
        "the bundle ConfigMap put back by the operator",
        Duration::from_secs(30),
        || async { (bundle().await.as_deref() == Some(in_use.as_str())).then_some(()) },
    )
    .await;

    let extra = std::fs::read_to_string(format!(
        "{}/tests/fixtures/anchor.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    trust_rotation_operator::sim::linkerd::write_bundle(
        &rig.client,
        names,
        &format!("{}{extra}", rig.first_anchor.pem),
    )
    .await
    .unwrap();
    let status = common::eventually(
        "the overwrite restored and recorded",
        Duration::from_secs(30),
        || async {
            let status = rotation(&rig.client).await.status.unwrap_or_default();
            (bundle().await.as_deref() == Some(in_use.as_str())
                && !status.bundle_overwrites.is_empty())
            .then_some(status)
        },
    )
    .await;
    assert_eq!(
        status.bundle_overwrites[0].field_managers,
        [trust_rotation_operator::sim::MANAGER],
        "{status:#?}"
    );

    // Then replaced outright (a PUT without the operator's annotations, as `kubectl replace`
    // or `helm upgrade --force` writes), with the anchor in use and the extra one: the
    // operator's managedFields entry goes with it, and its status is what remembers the
    // bundle it wrote. Restored and recorded all the same, naming the replacer.
    let mut replacing = configmaps.get(&names.bundle_configmap).await.unwrap();
    replacing.metadata.annotations = None;
    replacing.metadata.managed_fields = None;
    replacing.data = Some(
        [(
            "ca-bundle.crt".to_owned(),
            format!("{}{extra}", rig.first_anchor.pem),
        )]
        .into(),
    );
    configmaps
        .replace(
            &names.bundle_configmap,
            &PostParams {
                field_manager: Some("kubectl-replace".to_owned()),
                ..Default::default()
            },
            &replacing,
        )
        .await
        .unwrap();
    let status = common::eventually(
        "the replacement restored and recorded",
        Duration::from_secs(30),
        || async {
            let status = rotation(&rig.client).await.status.unwrap_or_default();
            (bundle().await.as_deref() == Some(in_use.as_str())
                && status.bundle_overwrites.len() == 2)
                .then_some(status)
        },
    )
    .await;
    assert_eq!(
        status.bundle_overwrites[1].field_managers,
        ["kubectl-replace"],
        "{status:#?}"
    );
    let t = rig.traffic().since(&before);
    assert_eq!(t.failed(), 0, "{t}");
    assert!(t.successes > 0, "the mesh kept talking: {t}");
}

/// An anchor Secret that does not parse parks the rotation: a blockingMessage naming the
/// Secret and the problem, and not one write (bundle, previous anchor, control plane). Once
/// the Secret is fixed the rotation un-parks. So do a zero refresh interval and a bundle
/// ConfigMap that holds a private key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_material_or_zero_interval_parks_and_writes_nothing() {
    let rig = Rig::start((1, 1, 2), json!({}), &[]).await;
    let mut follow = Follow::new();
    let client = rig.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "cert-manager");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "linkerd");
    let linkerd_secrets: Api<Secret> = Api::namespaced(client.clone(), "linkerd");
    let versions = || async {
        (
            configmaps
                .get("linkerd-identity-trust-roots")
                .await
                .unwrap()
                .resource_version(),
            linkerd_secrets
                .get("linkerd-previous-anchor")
                .await
                .unwrap()
                .resource_version(),
            control_plane_generations(&client).await,
        )
    };
    let before = versions().await;

    let original = secrets.get("linkerd-trust-anchor").await.unwrap();
    let mut broken = original.clone();
    broken.data.as_mut().unwrap().insert(
        "tls.crt".to_owned(),
        k8s_openapi::ByteString(
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".to_vec(),
        ),
    );
    secrets
        .replace("linkerd-trust-anchor", &PostParams::default(), &broken)
        .await
        .unwrap();
    let parked = loop {
        let status = follow.status(&rig).await;
        if status.blocking_message.is_some() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let message = parked.blocking_message.clone().unwrap();
    eprintln!("blockingMessage: {message}");
    assert!(
        message.contains("Secret cert-manager/linkerd-trust-anchor"),
        "{message}"
    );
    assert!(message.contains("tls.crt"), "{message}");
    assert_eq!(parked.phase, Phase::Synced);
    // Parked for a while: still nothing written.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = follow.status(&rig).await;
    assert_eq!(status.blocking_message.as_deref(), Some(message.as_str()));
    assert_eq!(versions().await, before, "nothing was written while parked");

    // Fixed: un-parked, still Synced, still nothing to write.
    let mut fixed = secrets.get("linkerd-trust-anchor").await.unwrap();
    fixed.data = original.data.clone();
    secrets
        .replace("linkerd-trust-anchor", &PostParams::default(), &fixed)
        .await
        .unwrap();
    loop {
        let status = follow.status(&rig).await;
        if status.blocking_message.is_none() {
            assert_eq!(status.phase, Phase::Synced);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(versions().await, before);

    // A zero refresh interval in the spec parks it the same way, naming the field; putting the
    // interval back un-parks it.
    let tars: Api<TrustAnchorRotation> = Api::all(client.clone());
    let set_interval = |interval: &'static str| {
        let tars = tars.clone();
        async move {
            tars.patch(
                "cluster",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"workloadCertificateRefreshInterval": interval}})),
            )
            .await
            .unwrap();
        }
    };
    set_interval("0s").await;
    let message = loop {
        let status = follow.status(&rig).await;
        if let Some(message) = status.blocking_message {
            assert_eq!(status.phase, Phase::Synced);
            break message;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("blockingMessage: {message}");
    assert!(
        message.contains("spec.workloadCertificateRefreshInterval is \"0s\""),
        "{message}"
    );
    set_interval("5m").await;
    loop {
        let status = follow.status(&rig).await;
        if status.blocking_message.is_none() {
            assert_eq!(status.phase, Phase::Synced);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(versions().await, before);

    // A bundle ConfigMap that carries a private key (the anchor's, pasted in by mistake) parks
    // it too, as the webhook refuses that bundle: before, the key was skipped and the status
    // said Synced while pods went unstamped.
    let bundle = configmaps
        .get("linkerd-identity-trust-roots")
        .await
        .unwrap();
    let key = String::from_utf8(original.data.as_ref().unwrap()["tls.key"].0.clone()).unwrap();
    let mut leaked = bundle.clone();
    leaked
        .data
        .as_mut()
        .unwrap()
        .get_mut("ca-bundle.crt")
        .unwrap()
        .push_str(&key);
    configmaps
        .replace(
            "linkerd-identity-trust-roots",
            &PostParams::default(),
            &leaked,
        )
        .await
        .unwrap();
    let leaked_versions = versions().await;
    let started = Instant::now();
    let message = loop {
        let status = follow.status(&rig).await;
        if let Some(message) = status.blocking_message {
            assert_eq!(status.phase, Phase::Synced);
            break message;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a bundle holding a private key did not park the rotation: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("blockingMessage: {message}");
    assert!(
        message.contains(
            "ConfigMap linkerd/linkerd-identity-trust-roots: ca-bundle.crt: PEM block 2 of 2 is a PRIVATE KEY"
        ),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        versions().await,
        leaked_versions,
        "nothing written while parked"
    );

    // The bundle moved under binaryData parks it too, saying where it is: before, it was taken
    // for no bundle at all, and a write to data would be refused while the key is there.
    let mut binary = configmaps
        .get("linkerd-identity-trust-roots")
        .await
        .unwrap();
    let text = bundle.data.as_ref().unwrap()["ca-bundle.crt"].clone();
    binary.data = None;
    binary.binary_data = Some(
        [(
            "ca-bundle.crt".to_owned(),
            k8s_openapi::ByteString(text.into_bytes()),
        )]
        .into(),
    );
    configmaps
        .replace(
            "linkerd-identity-trust-roots",
            &PostParams::default(),
            &binary,
        )
        .await
        .unwrap();
    let binary_versions = versions().await;
    let expected = "ConfigMap linkerd/linkerd-identity-trust-roots: ca-bundle.crt is under binaryData; the bundle is read and written under data";
    let started = Instant::now();
    loop {
        let status = follow.status(&rig).await;
        let message = status.blocking_message.clone().unwrap_or_default();
        if message.contains(expected) {
            assert_eq!(status.phase, Phase::Synced);
            eprintln!("blockingMessage: {message}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a bundle under binaryData did not park the rotation: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        versions().await,
        binary_versions,
        "nothing written while parked"
    );
    // The operator's log says it too, once, as a warning with the event's reason (beside the
    // webhook's own warning that it stamps no bundle fingerprint from that ConfigMap).
    let log = std::fs::read_to_string(rig.op.process.log_path()).unwrap();
    let said = |marker: &str| -> Vec<&str> {
        log.lines()
            .filter(|l| l.contains(expected) && l.contains(marker))
            .collect()
    };
    let parked = said("reason=RotationParked");
    assert_eq!(parked.len(), 1, "{log}");
    assert!(parked[0].contains(" WARN "), "{}", parked[0]);
    assert!(!said("trust bundle unusable").is_empty(), "{log}");

    let mut fixed = configmaps
        .get("linkerd-identity-trust-roots")
        .await
        .unwrap();
    fixed.data = bundle.data.clone();
    fixed.binary_data = None;
    configmaps
        .replace(
            "linkerd-identity-trust-roots",
            &PostParams::default(),
            &fixed,
        )
        .await
        .unwrap();
    loop {
        let status = follow.status(&rig).await;
        if status.blocking_message.is_none() && status.phase == Phase::Synced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let t = rig.traffic();
    assert_eq!(t.failed(), 0, "{t}");
    follow.assert_traffic_throughout(&rig);
}

/// SIGKILL the operator as soon as each phase is seen: the restarted process resumes from the
/// status, the rotation still ends Synced with zero failed handshakes, and the control plane
/// rolled out exactly twice (expansion and reduction), never a third time. The process started
/// in RenewingWorkloadCerts, which did not see the issuer change, says so and holds the old
/// anchor for the grace (the identity controller's metrics left out, which would end it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_every_phase_resumes_without_an_extra_rollout() {
    // An identity controller without the issuer metric (Linkerd before 2.18), which would show
    // the restarted process every replica on the issuer at once and end its hold.
    let sim = SimConfig {
        identity_metrics: false,
        ..SimConfig::default()
    };
    // The restarted process holds the old anchor for the grace: 10 s, not 3 m.
    let mut rig = Rig::start_with(
        sim.into(),
        (1, 2, 1),
        json!({"workloadCertificateRefreshInterval": "3s"}),
        &["--identity=operator-0", "--issuer-reload-grace=10s"],
    )
    .await;
    let generations = control_plane_generations(&rig.client).await;
    let mut follow = Follow::new();
    let mut user = User::default();
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let mut killed_in: Vec<(Phase, usize)> = Vec::new();
    // The process started in RenewingWorkloadCerts did not see the issuer change.
    let mut held_unwitnessed = false;
    loop {
        let status = follow.status(&rig).await;
        if is_done(&status, &new_anchor) {
            break;
        }
        let message = status.blocking_message.as_deref().unwrap_or_default();
        if !held_unwitnessed && message.contains("the operator started after the issuer changed") {
            eprintln!("[{:5.1}s] {message}", follow.secs());
            held_unwitnessed = true;
        }
        // Each phase entry (the control-plane refresh comes twice) gets its kill.
        let entries = follow.phases.len();
        if status.phase != Phase::Synced && killed_in.last().map(|(_, n)| *n) != Some(entries) {
            eprintln!("[{:5.1}s] SIGKILL in {}", follow.secs(), status.phase);
            rig.kill_and_restart_operator().await;
            killed_in.push((status.phase, entries));
            continue;
        }
        user.act(&rig, &status).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t = rig.traffic();
    let killed: Vec<Phase> = killed_in.iter().map(|(p, _)| *p).collect();
    eprintln!("killed in {killed:?}; traffic: {t}");
    for phase in [
        Phase::RefreshingControlPlane,
        Phase::PropagatingTrustRoots,
        Phase::WaitingForIdentityRotation,
        Phase::RenewingWorkloadCerts,
        Phase::RemovingOldTrustRoots,
    ] {
        assert!(killed.contains(&phase), "killed in {phase}: {killed:?}");
    }
    assert_eq!(
        killed
            .iter()
            .filter(|p| **p == Phase::RefreshingControlPlane)
            .count(),
        2,
        "killed in both control-plane refreshes"
    );
    assert!(
        held_unwitnessed,
        "the restarted process held the old anchor for the grace"
    );
    let after = control_plane_generations(&rig.client).await;
    for (name, generation) in &generations {
        assert_eq!(
            after[name],
            generation + 2,
            "Deployment linkerd/{name}: exactly two rollouts"
        );
    }
    follow.assert_ended_clean(&rig, &t, &new_anchor, 5).await;
}

/// The operator installed without the right to list Pods (its ClusterRole edited down, say):
/// its reconciler cannot sync its watch of Pods. The status says which watch fails and why,
/// where `kubectl describe tar` shows it, instead of staying silent; once the permission is
/// back the reconciler syncs, and its first decision replaces the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_the_operator_may_not_list_is_named_in_status() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use trust_rotation_operator::reconcile::controller::HOLDING;
    let (cp, client) = control_plane_for_operator_user().await;
    apply_rotation(&client, json!({})).await;
    apply_rbac(&client, None).await;
    let roles = Api::<ClusterRole>::all(client.clone());
    let name = trust_rotation_operator::rbac::NAME;
    let granted = roles.get(name).await.unwrap();
    let mut without_pods = granted.clone();
    for rule in without_pods.rules.iter_mut().flatten() {
        if let Some(resources) = rule.resources.as_mut() {
            resources.retain(|r| r != "pods");
        }
    }
    roles
        .replace(name, &PostParams::default(), &without_pods)
        .await
        .unwrap();

    let args = replica_args("op-0", "15s");
    let _op = start_operator(&cp.kubeconfig_for(OPERATOR_USER).unwrap(), &args).await;
    let message = |status: Option<TrustAnchorRotationStatus>| {
        status.and_then(|s| s.blocking_message).unwrap_or_default()
    };
    let started = Instant::now();
    let holding = loop {
        let said = message(rotation(&client).await.status);
        if said.contains(HOLDING) {
            break said;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the status never said the reconciler holds: {said:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("holding: {holding}");
    assert!(
        holding.starts_with("the reconciler holds: the watch of Pods labelled linkerd.io/control-plane-ns (listing failed: ")
            && holding.contains(r#"User "operator" cannot list resource "pods""#)
            && holding.ends_with("nothing is decided until it has listed again"),
        "{holding}"
    );

    // The permission back: the reconciler syncs and decides (the rotation parks: there is no
    // anchor), and that decision is what the status says.
    let mut restored = granted;
    restored.metadata.resource_version = None;
    roles
        .replace(name, &PostParams::default(), &restored)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let said = message(rotation(&client).await.status);
        if !said.contains(HOLDING) {
            assert!(
                said.starts_with("parked: Secret cert-manager/linkerd-trust-anchor"),
                "{said}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the reconciler never resumed: {said:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A control plane with the CRD, the `linkerd` namespace and the `cluster` rotation (which parks:
/// there is no anchor), for the leader-election tests.
async fn election_control_plane() -> ControlPlane {
    let cp = start_control_plane().await;
    let client = cp.client();
    install_crd(&client).await;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "linkerd"}})).unwrap(),
        )
        .await
        .unwrap();
    apply_rotation(&client, json!({})).await;
    cp
}

fn replica_args(id: &str, lease_duration: &str) -> Vec<String> {
    vec![
        format!("--identity={id}"),
        format!("--lease-duration={lease_duration}"),
        "--reconcile-interval=500ms".to_owned(),
    ]
}

/// Whether a replica's metrics speak for the rotation (only the leader's do).
fn reports_rotation(op: &Operator) -> bool {
    op.admin_get("/metrics")
        .unwrap()
        .1
        .contains("trust_rotation_phase{")
}

/// The leader Lease's holder and transitions.
async fn lease_holder(client: &kube::Client) -> (Option<String>, Option<i32>) {
    let lease = Api::<Lease>::namespaced(client.clone(), "linkerd")
        .get_opt("trust-rotation-operator")
        .await
        .unwrap();
    let spec = lease.and_then(|l| l.spec).unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions)
}

/// Waits, at most `within`, until `replica-b` holds the Lease, says it leads and reconciles:
/// how long that took.
async fn takes_over(client: &kube::Client, b: &Operator, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if lease_holder(client).await.0.as_deref() == Some("replica-b")
            && b.metric("trust_rotation_leader") == Some(1.0)
            && reports_rotation(b)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "b did not take over within {within:?}; holder {:?}",
            lease_holder(client).await.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas: one holds the Lease and reconciles, the other serves the webhook only and
/// writes nothing; SIGKILL the leader and the other takes over once the Lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_reconciles_and_the_other_takes_over() {
    let cp = election_control_plane().await;
    let client = cp.client();
    // Lease 6s: the leader steps down only after 4s without a renewal, which even a loaded
    // machine's API server answers well within.
    let args = |id: &str| replica_args(id, "6s");
    let a = start_operator(cp.kubeconfig(), &args("replica-a")).await;
    let b = start_operator(cp.kubeconfig(), &args("replica-b")).await;
    let holder = || async { lease_holder(&client).await.0 };
    // a started first and took the Lease; its reconciler runs (the rotation parks: there is
    // no anchor in this cluster) and b's does not.
    let started = Instant::now();
    loop {
        let status = rotation(&client).await.status.unwrap_or_default();
        if status.blocking_message.is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(holder().await.as_deref(), Some("replica-a"));
    assert_eq!(a.metric("trust_rotation_leader"), Some(1.0));
    assert_eq!(b.metric("trust_rotation_leader"), Some(0.0));
    eventually(
        "the leader's phase metric",
        Duration::from_secs(10),
        || async { reports_rotation(&a).then_some(()) },
    )
    .await;
    // A few renewals later, b has still not reconciled once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!reports_rotation(&b), "the follower never reconciled");
    assert_eq!(holder().await.as_deref(), Some("replica-a"));
    // Both serve the webhook.
    assert_eq!(a.admin_get("/ready").map(|r| r.0), Some(200));
    assert_eq!(b.admin_get("/ready").map(|r| r.0), Some(200));

    a.process.signal("KILL").unwrap();
    let took = takes_over(&client, &b, Duration::from_secs(20)).await;
    eprintln!(
        "replica-b took over {:.1}s after replica-a was killed (Lease 6s)",
        took.as_secs_f64()
    );
    assert_eq!(lease_holder(&client).await.1, Some(1));
}

/// SIGTERM to the leader: its reconciler stops and hands the Lease over at once, while its
/// webhook is still serving out its shutdown delay (not ready), so the other replica leads
/// within a poll of the Lease instead of after the delay and the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_told_to_stop_hands_the_lease_over_before_its_webhook_stops() {
    let cp = election_control_plane().await;
    let client = cp.client();
    let args = |id: &str| {
        let mut args = replica_args(id, "6s");
        args.push("--shutdown-delay=10s".to_owned());
        args
    };
    let mut a = start_operator(cp.kubeconfig(), &args("replica-a")).await;
    let b = start_operator(cp.kubeconfig(), &args("replica-b")).await;
    let holder = || async { lease_holder(&client).await.0 };
    eventually("replica-a leads", Duration::from_secs(30), || async {
        (holder().await.as_deref() == Some("replica-a") && reports_rotation(&a)).then_some(())
    })
    .await;
    a.process.signal("TERM").unwrap();
    let took = takes_over(&client, &b, Duration::from_secs(5)).await;
    // a is still there, serving out its delay: not ready, and no longer leading.
    assert!(a.process.check_alive().is_ok(), "a exited first");
    assert_eq!(a.admin_get("/ready").map(|r| r.0), Some(503));
    assert_eq!(a.metric("trust_rotation_leader"), Some(0.0));
    eprintln!(
        "replica-b led {:.1}s after replica-a's SIGTERM (shutdown delay 10s, Lease 6s)",
        took.as_secs_f64()
    );
    let status = a
        .process
        .wait_timeout(Duration::from_secs(30))
        .expect("a exits within 30s of SIGTERM");
    assert!(status.success(), "a's exit: {status}");
    assert_eq!(holder().await.as_deref(), Some("replica-b"));
}

/// The leader loses the API server (a partition of its own: requests hang, nothing is refused)
/// while the other replica still reaches it. The leader stops reconciling within its renew
/// deadline, two thirds of the Lease, from its last renewal; the other takes the Lease only once
/// it has seen it unchanged for the whole Lease: at no moment do both lead. When the partition
/// heals, what the old leader sent into it arrives late, and it finds the Lease held: it stays a
/// follower, and the new leader keeps the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_the_other_takes_over() {
    use common::relay::Relay;
    let cp = election_control_plane().await;
    let client = cp.client();
    let relay = Relay::to(&cp).await;
    let kubeconfig_a = relay.kubeconfig(&cp, "replica-a");
    // Lease 6s: the leader gives up after 4s without a renewal, and renews about every 0.9s.
    let (lease, renew_deadline) = ("6s", Duration::from_secs(4));
    let a = start_operator(&kubeconfig_a, &replica_args("replica-a", lease)).await;
    let leading = |op: &Operator| op.metric("trust_rotation_leader") == Some(1.0);
    common::eventually("replica-a leads", Duration::from_secs(30), || async {
        leading(&a).then_some(())
    })
    .await;
    let b = start_operator(cp.kubeconfig(), &replica_args("replica-b", lease)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(leading(&a) && !leading(&b));
    assert_eq!(lease_holder(&client).await.0.as_deref(), Some("replica-a"));
    // Only the leader speaks for the rotation.
    assert!(reports_rotation(&a) && !reports_rotation(&b));

    relay.cut(true);
    let cut = Instant::now();
    let (mut a_stopped, mut b_started) = (None, None);
    while b_started.is_none() {
        let (a_leads, b_leads) = (leading(&a), leading(&b));
        assert!(
            !(a_leads && b_leads),
            "both replicas lead {:.1}s into the partition",
            cut.elapsed().as_secs_f64()
        );
        if !a_leads && a_stopped.is_none() {
            a_stopped = Some(cut.elapsed());
        }
        if b_leads {
            b_started = Some(cut.elapsed());
        }
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "replica-b never took over; replica-a stopped leading after {a_stopped:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (a_stopped, b_started) = (a_stopped.unwrap(), b_started.unwrap());
    eprintln!(
        "partition: replica-a stopped leading after {:.1}s, replica-b took over after {:.1}s \
         (Lease {lease}, renew deadline {renew_deadline:?})",
        a_stopped.as_secs_f64(),
        b_started.as_secs_f64()
    );
    assert!(a_stopped < b_started);
    // Its last renewal was sent at most one retry before the cut, so it steps down within
    // its renew deadline of it; this loop's looks at the two replicas take their time on a
    // loaded machine, so the bound is the Lease's duration, past which another may take it.
    assert!(
        a_stopped < renew_deadline + Duration::from_secs(2),
        "replica-a led on for {a_stopped:?} without renewing (Lease {lease})"
    );
    let log = std::fs::read_to_string(a.process.log_path()).unwrap();
    assert!(
        log.contains("could not renew the leader Lease in time"),
        "{log}"
    );
    assert_eq!(lease_holder(&client).await.0.as_deref(), Some("replica-b"));
    assert!(
        !reports_rotation(&a),
        "replica-a still reports the rotation after it stopped leading"
    );
    common::eventually(
        "replica-b reports the rotation",
        Duration::from_secs(10),
        || async { reports_rotation(&b).then_some(()) },
    )
    .await;

    relay.cut(false);
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(5) {
        assert!(leading(&b) && !leading(&a), "after the partition healed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        lease_holder(&client).await,
        (Some("replica-b".to_owned()), Some(1))
    );
    assert_eq!(a.admin_get("/ready").map(|r| r.0), Some(200));
}

/// A `helm upgrade` of Linkerd after a rotation: it renders the bundle ConfigMap from its
/// install-time values (the retired anchor) and rolls the control plane, whose pod templates
/// keep the operator's restart marker. The operator restores the bundle, to the very
/// fingerprint it had, and still restarts the control plane onto it: the marker of the restore
/// differs from the one the upgraded control plane carries.
///
/// Then a GitOps controller re-applies the install-time bundle a moment later: the bundle is
/// contested. The operator restores it and restarts the control plane onto it again, and the
/// status names the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_rewritten_by_others_is_restored_and_who_keeps_writing_it_is_named() {
    use trust_rotation_operator::bundle::Bundle;
    use trust_rotation_operator::reconcile::controller::{
        RESTART_ANNOTATION, WRITTEN_OVER_ANNOTATION,
    };
    use trust_rotation_operator::reconcile::decide::CONTESTED_CONDITION;
    let rig = Rig::start((1, 2, 1), automatic_spec(2), &[]).await;
    let new_anchor = rig.runbook().renew_anchor().await.unwrap();
    let started = Instant::now();
    while !is_done(
        &rotation(&rig.client).await.status.unwrap_or_default(),
        &new_anchor,
    ) {
        assert!(
            started.elapsed() < ROTATION_TIMEOUT,
            "the rotation never ended"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deployments: Api<Deployment> = Api::namespaced(rig.client.clone(), "linkerd");
    let markers = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap_or_default()
            .get(RESTART_ANNOTATION)
            .cloned()
    };
    let list_control_plane = || async {
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    };
    let control_plane: Vec<Deployment> = list_control_plane().await;
    let before: BTreeSet<Option<String>> = control_plane.iter().map(markers).collect();
    assert_eq!(before.len(), 1, "{before:?}");
    // The upgrade changes each template once, and the operator once more (whichever comes
    // first).
    let before_upgrade = generations(&control_plane);

    // The upgrade: the retired anchor in the bundle, the control plane rolled onto it.
    let names = rig.mesh.names();
    let retired = Bundle::from_pem("first anchor", &rig.first_anchor.pem).unwrap();
    trust_rotation_operator::sim::linkerd::write_bundle(&rig.client, names, &retired.to_pem())
        .await
        .unwrap();
    for d in &control_plane {
        trust_rotation_operator::sim::linkerd::restart_deployment(
            &rig.client,
            "linkerd",
            &d.name_any(),
        )
        .await
        .unwrap();
    }

    // The bundle restored, the control plane restarted onto it with the restore's marker, and
    // every control-plane pod running under it.
    let restored = Bundle::from_pem("new anchor", &new_anchor.pem)
        .unwrap()
        .fingerprint();
    let configmaps: Api<ConfigMap> = Api::namespaced(rig.client.clone(), "linkerd");
    let pods: Api<Pod> = Api::namespaced(rig.client.clone(), "linkerd");
    let started = Instant::now();
    loop {
        let cm = configmaps.get(&names.bundle_configmap).await.unwrap();
        let bundle = cm
            .data
            .as_ref()
            .and_then(|d| d.get("ca-bundle.crt").cloned());
        let bundle = bundle.and_then(|pem| Bundle::from_pem("cm", &pem).ok());
        let marker = cm
            .annotations()
            .get(WRITTEN_OVER_ANNOTATION)
            .map(|v| format!("{restored}.{v}"));
        let now: Vec<Deployment> = list_control_plane().await;
        let cp_markers: BTreeSet<Option<String>> = now.iter().map(markers).collect();
        let restarted_since = generations(&now)
            .iter()
            .all(|(name, g)| *g >= before_upgrade[name] + 2);
        let running: Vec<Pod> = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let pods_on_marker = !running.is_empty()
            && running
                .iter()
                .all(|p| p.annotations().get(RESTART_ANNOTATION) == marker.as_ref());
        let status = rotation(&rig.client).await.status.unwrap_or_default();
        if bundle.as_ref().map(Bundle::fingerprint).as_deref() == Some(restored.as_str())
            && marker.is_some()
            && cp_markers == BTreeSet::from([marker.clone()])
            && pods_on_marker
            && restarted_since
            && status.phase == Phase::Synced
        {
            assert!(
                !before.contains(&marker),
                "the restore's marker is new: {marker:?}"
            );
            eprintln!(
                "bundle restored and control plane restarted onto it in {:.1}s; traffic: {}",
                started.elapsed().as_secs_f64(),
                rig.traffic()
            );
            // Once: no restart after it.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(
                generations(&list_control_plane().await),
                generations(&now),
                "the control plane was restarted again"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "bundle {:?}, marker {marker:?}, control plane {cp_markers:?}, restarted since the upgrade: {restarted_since}, pods on it: {pods_on_marker}, status {status:?}",
            bundle.map(|b| b.fingerprint())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The GitOps controller's overwrite, well within the contest window of the upgrade's.
    let before_contest = generations(&list_control_plane().await);
    configmaps
        .patch(
            &names.bundle_configmap,
            &PatchParams {
                field_manager: Some("argocd-application-controller".to_owned()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"ca-bundle.crt": retired.to_pem()}})),
        )
        .await
        .unwrap();
    let overwritten = Instant::now();
    let mut restored_at = None;
    loop {
        let status = rotation(&rig.client).await.status.unwrap_or_default();
        let bundle = trust_rotation_operator::sim::linkerd::read_bundle(&rig.client, names)
            .await
            .unwrap()
            .and_then(|pem| Bundle::from_pem("cm", &pem).ok())
            .map(|b| b.fingerprint());
        if restored_at.is_none() && bundle.as_deref() == Some(restored.as_str()) {
            restored_at = Some(overwritten.elapsed());
        }
        let generations_now = generations(&list_control_plane().await);
        let contested = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONTESTED_CONDITION)
            .filter(|c| c.status == ConditionStatus::True)
            .map(|c| c.message.clone());
        let restarted_once = generations_now
            .iter()
            .all(|(name, g)| *g == before_contest[name] + 1);
        if restored_at.is_some()
            && restarted_once
            && status.phase == Phase::Synced
            && let Some(message) = contested
        {
            assert!(
                message.contains("argocd-application-controller"),
                "{message}"
            );
            let managers: Vec<Vec<String>> = status
                .bundle_overwrites
                .iter()
                .map(|o| o.field_managers.clone())
                .collect();
            assert_eq!(
                managers,
                [
                    vec![trust_rotation_operator::sim::MANAGER.to_owned()],
                    vec!["argocd-application-controller".to_owned()]
                ]
            );
            let restored_in = restored_at.unwrap_or_default();
            eprintln!(
                "contested bundle restored in {:.1}s and the control plane restarted onto it, Synced after {:.1}s: {message}; traffic: {}",
                restored_in.as_secs_f64(),
                overwritten.elapsed().as_secs_f64(),
                rig.traffic()
            );
            // The overwrite's watch event wakes the reconciler: a restore is a look away, not
            // a resync (0.3 s here; the bound leaves room for a loaded machine).
            assert!(
                restored_in < Duration::from_secs(5),
                "restored only after {restored_in:?}"
            );
            break;
        }
        assert!(
            overwritten.elapsed() < Duration::from_secs(60),
            "bundle {bundle:?}, control plane {before_contest:?} -> {generations_now:?}, status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An operator started before its permissions (RBAC applied after the Deployment, or cut down
/// by mistake) is not ready, names in its log the watches the API server refuses and counts
/// them by resource, and starts on its own once they are granted: nothing to restart by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_without_its_permissions_names_the_refused_watches_and_starts_once_granted() {
    let (cp, client) = control_plane_for_operator_user().await;
    // Without leader election, so that the reconciler's own watches start (with it, the
    // reconciler waits for the Lease, whose refusal the elector logs).
    let mut op = Operator::start_as(
        &cp.kubeconfig_for(OPERATOR_USER).unwrap(),
        &["--reconcile-interval=500ms", "--leader-elect=false"],
    );

    let refused = [
        ("webhook_view", "TrustAnchorRotation"),
        ("webhook_view", "ConfigMap"),
        ("webhook_view", "Namespace"),
        ("reconciler", "TrustAnchorRotation"),
        ("reconciler", "ConfigMap"),
        ("reconciler", "Secret"),
        ("reconciler", "Pod"),
        ("reconciler", "Deployment"),
        ("reconciler", "StatefulSet"),
        ("reconciler", "DaemonSet"),
    ]
    .map(|(who, kind)| format!("trust_rotation_{who}_watch_errors_total{{resource=\"{kind}\"}}"));
    let started = Instant::now();
    let counts = loop {
        op.process
            .check_alive()
            .expect("the operator keeps running");
        let counts: Vec<f64> = refused
            .iter()
            .map(|s| op.metric(s).unwrap_or(0.0))
            .collect();
        if counts.iter().all(|&c| c >= 1.0) {
            break counts;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not every refused watch counted: {refused:?} = {counts:?}\n{}",
            op.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("watch errors before the RBAC: {counts:?}");
    // Each of the reconciler's nine watches is failing (the counts above are by kind: three of
    // them watch a Secret).
    common::eventually(
        "all nine reconciler watches failing",
        Duration::from_secs(10),
        || async {
            (op.metric("trust_rotation_reconciler_watches_failing") == Some(9.0)).then_some(())
        },
    )
    .await;
    assert_ne!(
        op.admin_get("/ready").map(|(code, _)| code),
        Some(200),
        "ready without a synced view"
    );
    assert_eq!(op.metric("trust_rotation_webhook_view_synced"), Some(0.0));
    let log = std::fs::read_to_string(op.process.log_path()).unwrap();
    for watch in [
        "watch=\"TrustAnchorRotation cluster\"",
        "watch=\"ConfigMap linkerd/linkerd-identity-trust-roots\"",
        "watch=\"Namespaces (metadata)\"",
        "watch=\"Secret cert-manager/linkerd-trust-anchor\"",
        "watch=\"Deployments\"",
    ] {
        assert!(
            log.lines().any(|l| l.contains(watch)
                && l.contains("watch failed; retrying with backoff")
                && l.contains("listing failed: ")
                && l.contains("is forbidden: User \"operator\" cannot list")
                && l.ends_with("(403)")),
            "no refusal logged for {watch}:\n{log}"
        );
    }

    let granted = Instant::now();
    apply_rbac(&client, None).await;
    op.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(op.metric("trust_rotation_webhook_view_synced"), Some(1.0));
    common::eventually("the reconciler synced", Duration::from_secs(60), || async {
        let log = std::fs::read_to_string(op.process.log_path()).unwrap();
        log.contains("reconciler synced").then_some(())
    })
    .await;
    eprintln!(
        "ready and synced {:.1}s after the RBAC was applied",
        granted.elapsed().as_secs_f64()
    );
    assert_eq!(
        op.metric("trust_rotation_reconciler_watches_failing"),
        Some(0.0)
    );
    op.process.check_alive().expect("the operator kept running");
}

/// An operator started before its CRD is installed, or before the rotation exists, says so
/// in its log, with what to do: it is otherwise synced, ready and silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_crd_or_rotation_is_named_in_the_log() {
    let cp = start_control_plane().await;
    let op = Operator::start(&cp, &["--leader-elect=false", "--reconcile-interval=500ms"]);
    let log = || std::fs::read_to_string(op.process.log_path()).unwrap_or_default();
    let logged = |text: &'static str| {
        let log = &log;
        async move { log().contains(text).then_some(()) }
    };
    let minute = Duration::from_secs(60);
    eventually("the missing CRD named", minute, || {
        logged("is the CRD installed? (`trust-rotation-operator crd | kubectl apply -f -`)")
    })
    .await;
    install_crd(&cp.client()).await;
    // The watch tries again within its backoff (at most 30 s).
    eventually("the missing rotation named", minute, || {
        logged("TrustAnchorRotation cluster not found: nothing is rotated until it exists")
    })
    .await;
    apply_rotation(&cp.client(), json!({})).await;
    eventually("the rotation found", minute, || {
        logged("TrustAnchorRotation cluster found")
    })
    .await;
    let said = log()
        .matches("TrustAnchorRotation cluster not found")
        .count();
    assert_eq!(said, 1, "said once:\n{}", log());
}
