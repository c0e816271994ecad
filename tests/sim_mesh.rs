//! The simulated mesh on the real control plane (issue 3): it comes up injected, Running and
//! talking; the documented manual runbook rotates it with zero failed handshakes; the two
//! classic mistakes (issuer renewed before any restart, old anchor removed before the leaves
//! refreshed) visibly break mTLS with the right reason.

mod common;

use std::time::{Duration, Instant};

use common::start_control_plane;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use trust_rotation_operator::probe;
use trust_rotation_operator::sim::linkerd;
use trust_rotation_operator::sim::runbook::Runbook;
use trust_rotation_operator::sim::traffic::{FailureReason, TrafficConfig, TrafficSnapshot};
use trust_rotation_operator::sim::{KeyRotation, Mesh, SimConfig, pki};

fn namespaces(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("mesh-{i}")).collect()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Runs the generator until it has made at least `n` handshakes.
async fn traffic_until(mesh: &Mesh, n: u64, timeout: Duration) {
    let started = Instant::now();
    while mesh.traffic().map(|t| t.attempts).unwrap_or(0) < n {
        assert!(
            started.elapsed() < timeout,
            "traffic made fewer than {n} handshakes in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the pods the restarts replaced have stopped: `count` proxies left. A rollout
/// counts as done while they still serve (a grace period), with what they held before.
async fn replaced_pods_stopped(mesh: &Mesh, count: usize) {
    common::eventually(
        &format!("{count} proxies (the replaced pods stopped)"),
        Duration::from_secs(60),
        || async { (mesh.proxies().len() == count).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_comes_up_injected_running_with_leaves_from_the_issuer_and_clean_traffic() {
    let cp = start_control_plane().await;
    let started = Instant::now();
    let mut mesh = Mesh::start(cp.client(), SimConfig::default())
        .await
        .unwrap_or_else(|e| panic!("starting the simulated mesh: {e}"));
    mesh.add_workloads(&namespaces(3), 3, 2, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("adding workloads: {e}"));
    eprintln!(
        "mesh of 3x3x2 up in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let names = mesh.names().clone();
    let issuer_pem = linkerd::secret_certificate(
        mesh.client(),
        &names.linkerd_namespace,
        &names.identity_issuer,
    )
    .await
    .unwrap()
    .expect("issuer Secret");
    let issuer = pki::pem_certs("issuer", &issuer_pem).unwrap().remove(0);

    let pods = mesh.meshed_pods().await.unwrap();
    let workloads: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.namespace().unwrap().starts_with("mesh-"))
        .collect();
    assert_eq!(
        workloads.len(),
        18,
        "3 namespaces x 3 deployments x 2 replicas"
    );
    assert_eq!(pods.len(), 21, "plus the 3 control-plane pods");
    let config = probe::client_config();
    for pod in &pods {
        let name = format!("{}/{}", pod.namespace().unwrap(), pod.name_any());
        assert_eq!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running"),
            "{name}"
        );
        assert!(pod_ready(pod), "{name} is Ready");
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("podIP");
        assert!(ip.starts_with("127."), "{name}: {ip}");
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap();
        let identity = format!(
            "{sa}.{}.serviceaccount.identity.linkerd.cluster.local",
            pod.namespace().unwrap()
        );
        let chain = probe::probe_chain(
            config.clone(),
            format!("{ip}:4191").parse().unwrap(),
            &identity,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("probing {name}: {e}"));
        assert!(
            pki::signed_by(&chain[0], &issuer),
            "{name}: the live leaf is signed by the issuer"
        );
        assert_eq!(
            pki::info("leaf", &chain[0]).unwrap().subject_common_name,
            identity
        );
    }
    for pod in &workloads {
        let a = pod.annotations();
        assert!(
            a.contains_key("linkerd.io/trust-root-sha256"),
            "{} injected",
            pod.name_any()
        );
        assert_eq!(
            a.get("linkerd.io/created-by").map(String::as_str),
            Some("linkerd/proxy-injector sim-stable")
        );
    }

    mesh.start_traffic(TrafficConfig::default());
    traffic_until(&mesh, 300, Duration::from_secs(60)).await;
    let t = mesh.traffic().unwrap();
    eprintln!("traffic: {t}");
    assert_eq!(t.failed(), 0, "{t}; recent: {:?}", t.recent);
    assert!(t.successes >= 290, "{t}");
}

/// Starts a control plane and a mesh of `ns` namespaces x `deployments` x `replicas` with traffic
/// running, and reports how long the mesh took to come up.
async fn mesh_with_traffic(
    config: SimConfig,
    ns: usize,
    deployments: usize,
    replicas: i32,
) -> (
    trust_rotation_operator::testbed::ControlPlane,
    Mesh,
    Duration,
) {
    let cp = start_control_plane().await;
    let started = Instant::now();
    let mut mesh = Mesh::start(cp.client(), config)
        .await
        .unwrap_or_else(|e| panic!("starting the simulated mesh: {e}"));
    mesh.add_workloads(
        &namespaces(ns),
        deployments,
        replicas,
        Duration::from_secs(300),
    )
    .await
    .unwrap_or_else(|e| panic!("adding workloads: {e}"));
    let up = started.elapsed();
    mesh.start_traffic(TrafficConfig::default());
    traffic_until(&mesh, 100, Duration::from_secs(60)).await;
    let t = mesh.traffic().unwrap();
    assert_eq!(t.failed(), 0, "a fresh mesh talks cleanly: {t}");
    (cp, mesh, up)
}

/// Waits (at most 60 s) until `n` failures with `reason` have been counted since `before`;
/// the traffic since then.
async fn failures_since(
    mesh: &Mesh,
    before: &TrafficSnapshot,
    reason: &FailureReason,
    n: u64,
) -> TrafficSnapshot {
    let started = Instant::now();
    loop {
        let t = mesh.traffic().unwrap().since(before);
        if t.failed_with(reason) >= n {
            return t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "fewer than {n} failures with {reason}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn step(started: Instant, mesh: &Mesh, what: &str) {
    eprintln!(
        "[{:6.1}s] {what}; traffic: {}",
        started.elapsed().as_secs_f64(),
        mesh.traffic().unwrap()
    );
}

/// Positive control, on a mesh of 100 workload pods: the documented manual runbook, in order,
/// ends with zero failed handshakes, every proxy on the new anchor and a leaf from the new
/// issuer. Also shows `IssuerUpdated` when the issuer is renewed after the identity controller
/// restarted onto the expanded bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_runbook_in_order_rotates_a_100_pod_mesh_with_zero_failed_handshakes() {
    let (_cp, mesh, up) = mesh_with_traffic(SimConfig::default(), 4, 5, 5).await;
    let pods = mesh.ready_proxies().len();
    eprintln!(
        "100-pod mesh ({pods} proxies with the control plane) up in {:.1}s",
        up.as_secs_f64()
    );
    assert_eq!(pods, 103);
    let ns = namespaces(4);
    let rb = Runbook::new(&mesh);
    let t0 = Instant::now();
    let start = mesh.traffic().unwrap();

    let old_anchor = rb.anchor().await.unwrap();
    let new_anchor = rb.renew_anchor().await.unwrap();
    step(t0, &mesh, "1. anchor renewed");
    rb.write_bundle(&[&old_anchor, &new_anchor]).await.unwrap();
    step(t0, &mesh, "2. bundle expanded with the previous anchor");
    rb.restart_control_plane().await.unwrap();
    step(t0, &mesh, "3. control plane restarted");
    rb.restart_workloads(&ns).await.unwrap();
    replaced_pods_stopped(&mesh, pods).await;
    step(
        t0,
        &mesh,
        "4. every workload restarted, the replaced pods stopped",
    );
    let new_issuer = rb.renew_issuer().await.unwrap();
    rb.wait_event("IssuerUpdated").await.unwrap();
    assert!(rb.events("IssuerUpdateSkipped").await.unwrap().is_empty());
    step(t0, &mesh, "5. issuer renewed (IssuerUpdated)");
    let waited = mesh
        .wait_leaves_from(&new_issuer.fingerprint, Duration::from_secs(120))
        .await
        .unwrap();
    step(
        t0,
        &mesh,
        &format!(
            "6. every leaf refreshed from the new issuer ({:.1}s)",
            waited.as_secs_f64()
        ),
    );
    rb.write_bundle(&[&new_anchor]).await.unwrap();
    step(t0, &mesh, "7. bundle reduced to the new anchor");
    rb.restart_control_plane().await.unwrap();
    rb.restart_workloads(&ns).await.unwrap();
    replaced_pods_stopped(&mesh, pods).await;
    step(t0, &mesh, "8. control plane and workloads restarted");
    let rotation = t0.elapsed();
    traffic_until(
        &mesh,
        mesh.traffic().unwrap().attempts + 200,
        Duration::from_secs(60),
    )
    .await;

    let t = mesh.traffic().unwrap();
    eprintln!(
        "full manual rotation of the 100-pod mesh: {:.1}s; traffic: {t}",
        rotation.as_secs_f64()
    );
    assert_eq!(t.failed(), 0, "{t}; recent: {:#?}", t.recent);
    let during = t.since(&start);
    assert!(
        during.successes > 1000,
        "enough traffic during the rotation to mean something: {during}"
    );
    let reduced = trust_rotation_operator::bundle::Bundle::from_pem("new", &new_anchor.pem)
        .unwrap()
        .fingerprint();
    let proxies = mesh.proxies();
    assert_eq!(proxies.len(), 103);
    for p in proxies {
        assert_eq!(
            p.anchors_fingerprint(),
            reduced,
            "{} holds only the new anchor",
            p.pod
        );
        assert_eq!(
            p.leaf().unwrap().issuer_fingerprint,
            new_issuer.fingerprint,
            "{}",
            p.pod
        );
    }
}

/// Negative control (a), the published CronJob's order: the issuer is renewed right after the
/// anchor, before any restart. The identity controller, holding only the old anchor, skips the
/// new issuer (`IssuerUpdateSkipped`); once the control plane is restarted onto the expanded
/// bundle it signs with the new issuer, and proxies that still trust only the old anchor reject
/// those leaves: unknown issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_renewed_before_any_restart_breaks_mtls_with_unknown_issuer() {
    let (_cp, mesh, _) = mesh_with_traffic(SimConfig::default(), 2, 2, 2).await;
    let rb = Runbook::new(&mesh);
    let t0 = Instant::now();
    let old_anchor = rb.anchor().await.unwrap();
    let new_anchor = rb.renew_anchor().await.unwrap();
    let new_issuer = rb.renew_issuer().await.unwrap();
    let skipped = rb.wait_event("IssuerUpdateSkipped").await.unwrap();
    step(
        t0,
        &mesh,
        "anchor and issuer renewed; identity skipped the issuer",
    );
    eprintln!("event: {:?} {:?}", skipped.reason, skipped.message);
    assert!(rb.events("IssuerUpdated").await.unwrap().is_empty());
    assert_eq!(
        mesh.traffic().unwrap().failed(),
        0,
        "nothing breaks while the old issuer is kept"
    );

    rb.write_bundle(&[&old_anchor, &new_anchor]).await.unwrap();
    let before = mesh.traffic().unwrap();
    rb.restart_control_plane().await.unwrap();
    // The rollout is complete while the old identity pod still serves its graceful stop.
    let started = Instant::now();
    while mesh.identity_issuers() != vec![new_issuer.fingerprint.clone()] {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the restarted identity signs with the new issuer only: {:?}",
            mesh.identity_issuers()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step(
        t0,
        &mesh,
        "control plane restarted onto the expanded bundle",
    );
    let t = failures_since(&mesh, &before, &FailureReason::UnknownIssuer, 5).await;
    step(t0, &mesh, "failures seen");
    assert!(t.failed_with(&FailureReason::UnknownIssuer) >= 5, "{t}");
    // And the proxies trusting the old anchor alone refuse the leaves they are issued at their
    // next refresh (20 s leaves, refreshed at 70%): counted with the failures, so that a pod
    // that never becomes ready for lack of a leaf, and so never takes traffic, is not missed.
    let t = failures_since(&mesh, &before, &FailureReason::LeafRefused, 1).await;
    assert!(
        t.recent
            .iter()
            .any(|f| f.reason == FailureReason::LeafRefused
                && f.server.name.starts_with("linkerd-identity")),
        "{:#?}",
        t.recent
    );
}

/// Negative control (b): the runbook in order until the issuer is renewed, then the old anchor
/// is removed and pods restarted before the leaves refreshed. Restarted proxies trust only the
/// new anchor and reject the old issuer's leaves still in use: unknown issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_anchor_removed_before_leaves_refreshed_breaks_mtls_with_unknown_issuer() {
    old_anchor_removed_before_leaves_refreshed(KeyRotation::Always).await;
}

/// Negative control (c): the same with an issuer renewed with its old key (`rotationPolicy:
/// Never`, cert-manager's default before 1.18). A leaf of the old issuer still verifies under
/// the renewed issuer's key, but the chain its proxy presents (leaf, old issuer) does not verify
/// under the new anchor alone: the same failures. So a rotation that took "signed by the
/// issuer's key" for "from the new issuer" would break mTLS, and the e2e test of that case
/// (`issuer_renewed_with_its_old_key_still_zero_failed_handshakes`) can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_issuers_old_key_too_old_anchor_removed_early_breaks_mtls() {
    old_anchor_removed_before_leaves_refreshed(KeyRotation::Never).await;
}

async fn old_anchor_removed_before_leaves_refreshed(issuer_key: KeyRotation) {
    let config = SimConfig {
        // Leaves outlive the steps below, so none is refreshed before the bundle is reduced.
        leaf_lifetime: Duration::from_secs(300),
        issuer_key,
        ..SimConfig::default()
    };
    let (_cp, mesh, _) = mesh_with_traffic(config, 2, 2, 2).await;
    let ns = namespaces(2);
    let rb = Runbook::new(&mesh);
    let t0 = Instant::now();
    let old_anchor = rb.anchor().await.unwrap();
    let old_issuer = rb.issuer().await.unwrap();
    let new_anchor = rb.renew_anchor().await.unwrap();
    rb.write_bundle(&[&old_anchor, &new_anchor]).await.unwrap();
    rb.restart_control_plane().await.unwrap();
    rb.restart_workloads(&ns).await.unwrap();
    let new_issuer = rb.renew_issuer().await.unwrap();
    assert_ne!(new_issuer.fingerprint, old_issuer.fingerprint);
    assert_eq!(
        new_issuer.public_key_fingerprint == old_issuer.public_key_fingerprint,
        issuer_key == KeyRotation::Never,
        "the issuer's key: {issuer_key:?}"
    );
    rb.wait_event("IssuerUpdated").await.unwrap();
    step(t0, &mesh, "runbook in order up to the issuer renewal");
    assert_eq!(mesh.traffic().unwrap().failed(), 0, "so far so good");

    let before = mesh.traffic().unwrap();
    rb.write_bundle(&[&new_anchor]).await.unwrap();
    rb.restart_control_plane().await.unwrap();
    rb.restart_workloads(&ns[..1]).await.unwrap();
    step(
        t0,
        &mesh,
        "bundle reduced and pods restarted before the leaves refreshed",
    );
    let t = failures_since(&mesh, &before, &FailureReason::UnknownIssuer, 5).await;
    assert!(t.failed_with(&FailureReason::UnknownIssuer) >= 5, "{t}");
}
