//! The foundation on the real control plane: the CRD installs and validates, the example
//! TrustAnchorRotation round-trips (spec, then status through the subresource), `kubectl get tar`
//! prints our columns (and `-o wide` two more), the real controller-manager rolls Deployments,
//! and no process outlives its control plane.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{MANAGER, eventually, install_crd, start_control_plane};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use trust_rotation_operator::crd::{TrustAnchorRotation, TrustAnchorRotationSpec};

const EXAMPLE: &str = include_str!("fixtures/trustanchorrotation-example.yaml");

fn example() -> TrustAnchorRotation {
    serde_yaml::from_str(EXAMPLE).expect("the example fixture parses as a TrustAnchorRotation")
}

#[tokio::test]
async fn crd_installs_example_round_trips_and_kubectl_shows_columns() {
    let cp = start_control_plane().await;
    let client = cp.client();
    install_crd(&client).await;
    let tars: Api<TrustAnchorRotation> = Api::all(client.clone());

    // Spec first, as a user would apply it.
    let example = example();
    assert_eq!(example.metadata.name.as_deref(), Some("cluster"));
    let want_status = example.status.clone().expect("the example has a status");
    let mut spec_only = example.clone();
    spec_only.status = None;
    let applied = tars
        .patch(
            "cluster",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&spec_only),
        )
        .await
        .expect("applying the example's spec");
    assert_eq!(applied.spec, example.spec);
    assert_eq!(
        applied.status, None,
        "status is ignored on the main resource"
    );

    // Then the status, through the status subresource, as the operator writes it.
    let status_patch = json!({
        "apiVersion": "trust.linkerd.io/v1alpha1",
        "kind": "TrustAnchorRotation",
        "status": want_status,
    });
    tars.patch_status(
        "cluster",
        &PatchParams::apply(MANAGER),
        &Patch::Apply(&status_patch),
    )
    .await
    .expect("applying the example's status through the status subresource");

    let read = tars.get("cluster").await.expect("reading back `cluster`");
    assert_eq!(read.spec, example.spec);
    assert_eq!(read.status.as_ref(), Some(&want_status));

    // A spec without the interval gets the default from the schema: sent as raw JSON and read
    // back untyped, since the typed spec would fill the default in on either side by itself.
    let resource = kube::api::ApiResource::erase::<TrustAnchorRotation>(&());
    let raw: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
    let defaulted: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "trust.linkerd.io/v1alpha1",
        "kind": "TrustAnchorRotation",
        "metadata": {"name": "defaulted"},
        "spec": {}
    }))
    .unwrap();
    let created = raw
        .create(&PostParams::default(), &defaulted)
        .await
        .expect("creating a TrustAnchorRotation with an empty spec");
    assert_eq!(
        created.data["spec"]["workloadCertificateRefreshInterval"],
        TrustAnchorRotationSpec::default().workload_certificate_refresh_interval,
        "{:?}",
        created.data
    );

    // Invalid intervals are refused by the API server itself, with a readable message.
    for bad in ["abc", "-5m", "5", "5 m"] {
        let obj: TrustAnchorRotation = serde_json::from_value(json!({
            "apiVersion": "trust.linkerd.io/v1alpha1",
            "kind": "TrustAnchorRotation",
            "metadata": {"name": "invalid"},
            "spec": {"workloadCertificateRefreshInterval": bad}
        }))
        .unwrap();
        let err = tars
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("interval {bad:?} must be refused"));
        let kube::Error::Api(status) = err else {
            panic!("interval {bad:?}: expected an API error, got {err}");
        };
        assert_eq!(status.code, 422, "interval {bad:?}: {status:?}");
        assert!(
            status
                .message
                .contains("spec.workloadCertificateRefreshInterval")
                && status.message.contains("should match"),
            "interval {bad:?}: message does not say which field and why: {}",
            status.message
        );
        eprintln!("refused {bad:?}: {}", status.message);
    }
    // Zero is well-formed; the reconciler, not the API server, refuses it (it parks the rotation:
    // `reconcile_e2e::unusable_material_or_zero_interval_parks_and_writes_nothing`).
    let zero: TrustAnchorRotation = serde_json::from_value(json!({
        "apiVersion": "trust.linkerd.io/v1alpha1",
        "kind": "TrustAnchorRotation",
        "metadata": {"name": "zero"},
        "spec": {"workloadCertificateRefreshInterval": "0s"}
    }))
    .unwrap();
    tars.create(&PostParams::default(), &zero)
        .await
        .expect("a zero interval passes the schema");

    // `kubectl get tar` shows the printer columns with the example's values.
    let mut kubectl = cp
        .kubectl()
        .expect("kubectl is provisioned with the control plane");
    let out = kubectl
        .args(["get", "tar", "cluster"])
        .output()
        .expect("running kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl get tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kubectl get tar cluster:\n{stdout}");
    let mut lines = stdout.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "BUNDLE", "CERTS", "AGE"]);
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    let bundle = want_status.trust_bundle.as_ref().unwrap();
    let certs = want_status.workload_certificates.as_ref().unwrap();
    assert_eq!(row[0], "cluster");
    assert_eq!(row[1], want_status.phase.as_str());
    assert_eq!(
        row[2],
        format!("{}/{}", bundle.converged_pods, bundle.target_pods)
    );
    assert_eq!(
        row[3],
        format!("{}/{}", certs.converged_pods, certs.target_pods)
    );

    // `-o wide` adds how long the phase has lasted and what the rotation waits for.
    let out = cp
        .kubectl()
        .unwrap()
        .args(["get", "tar", "cluster", "-o", "wide"])
        .output()
        .expect("running kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kubectl get tar -o wide: {out:?}");
    eprintln!("kubectl get tar cluster -o wide:\n{stdout}");
    let mut lines = stdout.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "PHASE", "BUNDLE", "CERTS", "AGE", "SINCE", "MESSAGE"
        ]
    );
    let row = lines.next().unwrap();
    let columns: Vec<_> = row.split_whitespace().collect();
    assert_eq!(columns[1], want_status.phase.as_str());
    // The example's transition was days before it was created here: SINCE counts days (or
    // years, as kubectl shortens ages), AGE seconds.
    assert!(
        columns[5].starts_with(|c: char| c.is_ascii_digit()) && columns[5].contains(['d', 'y']),
        "{row}"
    );
    assert!(
        row.trim_end()
            .ends_with(want_status.blocking_message.as_deref().unwrap()),
        "{row}"
    );
    cp.stop();
}

#[tokio::test]
async fn controller_manager_runs_deployments_and_rollout_restart() {
    let cp = start_control_plane().await;
    let client = cp.client();
    let ns = "rollout";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();

    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .patch("web", &PatchParams::apply(MANAGER), &Patch::Apply(&deploy))
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels("app=web");
    eventually(
        "3 pods from the Deployment",
        Duration::from_secs(60),
        || {
            let (pods, lp) = (pods.clone(), lp.clone());
            async move {
                let n = pods.list(&lp).await.ok()?.items.len();
                (n == 3).then_some(())
            }
        },
    )
    .await;

    let out = cp
        .kubectl()
        .expect("kubectl is provisioned with the control plane")
        .args(["rollout", "restart", "deployment/web", "-n", ns])
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl rollout restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    eventually(
        "a second ReplicaSet after rollout restart",
        Duration::from_secs(60),
        || {
            let (rs, lp) = (replicasets.clone(), lp.clone());
            async move {
                let n = rs.list(&lp).await.ok()?.items.len();
                (n == 2).then_some(())
            }
        },
    )
    .await;
    let restarted = deployments.get("web").await.unwrap();
    let annotations = restarted
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap_or_default();
    assert!(
        annotations.contains_key("kubectl.kubernetes.io/restartedAt"),
        "rollout restart stamps the template: {annotations:?}"
    );
    cp.stop();
}

/// Whether a process with this PID still exists (a zombie counts as gone: it holds no ports).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn no_process_outlives_its_control_plane_even_on_panic() {
    // Normal end: drop.
    let cp = start_control_plane().await;
    let pids = cp.pids();
    assert_eq!(
        pids.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager"
    );
    assert!(pids.iter().all(|&p| alive(p)));
    drop(cp);
    for p in &pids {
        assert!(!alive(*p), "process {p} outlived its control plane");
    }

    // Panic in the middle of a test: unwinding drops the control plane.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        let cp = start_control_plane().await;
        tx.send(cp.pids()).unwrap();
        panic!("deliberate panic with a running control plane");
    });
    assert!(handle.await.unwrap_err().is_panic());
    let pids = rx.await.unwrap();
    assert_eq!(pids.len(), 3);
    for p in &pids {
        assert!(!alive(*p), "process {p} outlived a panicking test");
    }
}
