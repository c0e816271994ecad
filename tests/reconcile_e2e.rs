//! The reconciler end to end: the operator binary (webhook + reconciler) on the real control
//! plane, the simulated mesh under continuous mTLS traffic, a trust-anchor renewal the way
//! `cmctl renew` does it, and the rotation carried through every phase back to Synced.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{MANAGER, Operator, install_crd, register_webhook, start_control_plane};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use trust_rotation_operator::crd::{
    ConditionStatus, ConvergenceState, Phase, SourceKind, TrustAnchorRotation,
};
use trust_rotation_operator::sim::runbook::Runbook;
use trust_rotation_operator::sim::traffic::TrafficConfig;
use trust_rotation_operator::sim::{Mesh, SimConfig};

const MAX_REFRESH_ENV: &str = "LINKERD2_PROXY_IDENTITY_MAX_REFRESH";

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

/// A full rotation with both policies Automatic, under continuous traffic: zero failed
/// handshakes; the accelerated refresh reaches the pods restarted while the bundle propagates;
/// their leaves refresh from the new issuer without a further restart; the final status has the
/// reference's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_rotation_from_synced_to_synced_with_zero_failed_handshakes() {
    let cp = start_control_plane().await;
    let client = cp.client();
    let mut mesh = Mesh::start(client.clone(), SimConfig::default())
        .await
        .unwrap_or_else(|e| panic!("starting the simulated mesh: {e}"));
    let ns = namespaces(2);
    mesh.add_workloads(&ns, 2, 2, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("adding workloads: {e}"));

    install_crd(&client).await;
    let tars: Api<TrustAnchorRotation> = Api::all(client.clone());
    tars.patch(
        "cluster",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(
            json!({"apiVersion": "trust.linkerd.io/v1alpha1", "kind": "TrustAnchorRotation",
            "metadata": {"name": "cluster"},
            "spec": {"workloadCertificateRefreshInterval": "3s",
                     "dataPlaneRestart": {"policy": "Automatic", "maxConcurrentWorkloads": 2},
                     "issuerRenewal": {"policy": "Automatic"}}}),
        ),
    )
    .await
    .unwrap();
    let mut op = Operator::start(&cp, &["--reconcile-interval=500ms"]);
    op.wait_ready(Duration::from_secs(60)).await;
    register_webhook(&cp, &op);

    // Bootstrap: the previous-anchor Secret is written and the rotation reports Synced.
    mesh.start_traffic(TrafficConfig::default());
    let rb = Runbook::new(&mesh);
    let old_anchor = rb.anchor().await.unwrap();
    let started = Instant::now();
    loop {
        let status = rotation(&client).await.status.unwrap_or_default();
        if status.previous_anchor_fingerprint.as_deref() == Some(old_anchor.fingerprint.as_str())
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

    let t0 = Instant::now();
    let new_anchor = rb.renew_anchor().await.unwrap();
    eprintln!(
        "[{:5.1}s] anchor renewed: {}",
        t0.elapsed().as_secs_f64(),
        &new_anchor.fingerprint[..12]
    );

    let mut seen: Vec<(Phase, Duration)> = Vec::new();
    let mut accelerated_pods: Option<BTreeSet<String>> = None;
    let mut reduced_checked = false;
    let final_status = loop {
        let status = rotation(&client).await.status.unwrap_or_default();
        if seen.last().map(|(p, _)| *p) != Some(status.phase) {
            eprintln!(
                "[{:5.1}s] {}; traffic: {}; {}",
                t0.elapsed().as_secs_f64(),
                status.phase,
                mesh.traffic().unwrap(),
                status.blocking_message.as_deref().unwrap_or("")
            );
            seen.push((status.phase, t0.elapsed()));
        }
        if status.phase == Phase::RenewingWorkloadCerts && accelerated_pods.is_none() {
            // Every workload pod running now was restarted onto the expanded bundle while the
            // rotation accelerated: the webhook put the fast refresh into its proxy's env.
            let pods = workload_pods(&client, &ns).await;
            for p in &pods {
                assert_eq!(
                    proxy_env(p, MAX_REFRESH_ENV).as_deref(),
                    Some("3s"),
                    "{}",
                    p.name_any()
                );
            }
            accelerated_pods = Some(pods.iter().map(|p| p.name_any()).collect());
        }
        if let Some(accelerated) = &accelerated_pods
            && status.phase == Phase::RefreshingControlPlane
            && !reduced_checked
        {
            // The leaves came from the new issuer by refresh alone: the pods are the same ones.
            let now: BTreeSet<String> = workload_pods(&client, &ns)
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
        if status.phase == Phase::Synced
            && status.previous_anchor_fingerprint.as_deref()
                == Some(new_anchor.fingerprint.as_str())
        {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "rotation did not finish: {status:#?}; traffic {}",
            mesh.traffic().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let took = t0.elapsed();
    let t = mesh.traffic().unwrap();
    eprintln!(
        "rotation Synced -> Synced in {:.1}s; traffic: {t}",
        took.as_secs_f64()
    );
    eprintln!(
        "final status: {}",
        serde_json::to_string_pretty(&final_status).unwrap()
    );

    assert_eq!(t.failed(), 0, "{t}; recent: {:#?}", t.recent);
    assert!(t.successes > 500, "traffic ran throughout: {t}");
    let phases: Vec<Phase> = seen.iter().map(|(p, _)| *p).collect();
    for phase in [
        Phase::RefreshingControlPlane,
        Phase::PropagatingTrustRoots,
        Phase::RenewingWorkloadCerts,
        Phase::RemovingOldTrustRoots,
    ] {
        assert!(phases.contains(&phase), "went through {phase}: {phases:?}");
    }
    let accelerated = accelerated_pods.expect("saw RenewingWorkloadCerts");
    assert!(!accelerated.is_empty());
    assert!(reduced_checked, "saw the reduction");

    // The final status, in the reference's shape.
    let new_issuer = rb.issuer().await.unwrap();
    assert_eq!(
        final_status.active_issuer_fingerprint.as_deref(),
        Some(new_issuer.fingerprint.as_str())
    );
    assert_eq!(final_status.blocking_message, None);
    assert_eq!(final_status.workload_certificate_refresh_interval, None);
    let bundle = final_status.trust_bundle.as_ref().unwrap();
    assert_eq!(bundle.status, ConvergenceState::Converged);
    assert_eq!(bundle.target_pods, 8);
    let certs = final_status.workload_certificates.as_ref().unwrap();
    assert_eq!(certs.status, ConvergenceState::Converged);
    assert_eq!(
        certs.target_pods, 11,
        "8 workload pods and 3 control-plane pods"
    );
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

    // Every proxy ends on the new anchor alone, with a leaf from the new issuer.
    let reduced = trust_rotation_operator::bundle::Bundle::from_pem("new", &new_anchor.pem)
        .unwrap()
        .fingerprint();
    // Old pods still serving their graceful stop are not part of the mesh's future.
    let settle = Instant::now();
    while mesh.proxies().len() != 11 {
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "{} proxies",
            mesh.proxies().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in mesh.proxies() {
        assert_eq!(p.anchors_fingerprint(), reduced, "{}", p.pod);
        assert_eq!(
            p.leaf().unwrap().issuer_fingerprint,
            new_issuer.fingerprint,
            "{}",
            p.pod
        );
    }
    drop(op);
}
