//! The CRD shipped in the chart is exactly what `trust-rotation-operator crd` prints, the
//! committed RBAC exactly what `trust-rotation-operator rbac` prints, and the committed webhook
//! configurations exactly what `trust-rotation-operator webhook-config` prints (as `make generate`
//! calls it).

use trust_rotation_operator::crd::crd_yaml;

#[test]
fn committed_rbac_matches_generated() {
    use trust_rotation_operator::rbac::{NAME, RbacConfig, rbac, yaml};
    let generated = yaml(&rbac(&RbacConfig::service_account("linkerd", NAME))).unwrap();
    assert!(
        include_str!("../rbac/rbac.yaml") == generated,
        "rbac/rbac.yaml is stale: run `make generate`"
    );
}

#[test]
fn committed_webhook_configurations_match_generated() {
    use trust_rotation_operator::webhook::config::{
        DEFAULT_LOCAL_URL, DEFAULT_OPERATOR_NAMESPACE, DEFAULT_SERVICE_NAME, Endpoint, render,
    };
    let in_cluster = Endpoint::Service {
        namespace: DEFAULT_OPERATOR_NAMESPACE.to_owned(),
        name: DEFAULT_SERVICE_NAME.to_owned(),
    };
    let local = Endpoint::Url(DEFAULT_LOCAL_URL.to_owned());
    for (committed, file, endpoint) in [
        (
            include_str!("../webhook-config/in-cluster.yaml"),
            "webhook-config/in-cluster.yaml",
            in_cluster,
        ),
        (
            include_str!("../webhook-config/local.yaml"),
            "webhook-config/local.yaml",
            local,
        ),
    ] {
        let generated = render(&endpoint, None, DEFAULT_OPERATOR_NAMESPACE);
        assert!(
            committed == generated,
            "{file} is stale: run `make generate`"
        );
    }
}

const COMMITTED: &str =
    include_str!("../charts/trust-rotation-operator-crds/templates/trustanchorrotations.yaml");

#[test]
fn committed_crd_matches_generated() {
    let generated = crd_yaml().unwrap();
    assert!(
        COMMITTED == generated,
        "charts/trust-rotation-operator-crds/templates/trustanchorrotations.yaml is stale: run `make generate`"
    );
}

#[test]
fn committed_crd_has_the_reference_names() {
    let crd: serde_yaml::Value = serde_yaml::from_str(COMMITTED).unwrap();
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "helm uninstall must not delete the CRD and the rotation's status with it"
    );
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "trust.linkerd.io");
    assert_eq!(spec["scope"], "Cluster");
    assert_eq!(spec["names"]["kind"], "TrustAnchorRotation");
    assert_eq!(spec["names"]["shortNames"][0], "tar");
    let v = &spec["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_mapping());
    let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    let phases: Vec<_> = status["phase"]["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "Synced",
            "RefreshingControlPlane",
            "PropagatingTrustRoots",
            "WaitingForRemoteClusters",
            "WaitingForIdentityRotation",
            "RenewingWorkloadCerts",
            "RemovingOldTrustRoots"
        ]
    );
    for group in ["trustBundle", "workloadCertificates"] {
        let props = &status[group]["properties"];
        assert_eq!(props["status"]["enum"][0], "Converging");
        assert_eq!(props["status"]["enum"][1], "Converged");
        assert_eq!(props["convergedPods"]["type"], "integer");
        assert_eq!(props["targetPods"]["type"], "integer");
    }
    let source = &status["sourceFingerprints"]["items"]["properties"];
    assert_eq!(source["kind"]["default"], "secret");
    let kinds: Vec<_> = source["kind"]["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["secret", "configMap", "inline"]);
    for field in [
        "blockingMessage",
        "activeIssuerFingerprint",
        "previousAnchorFingerprint",
        "lastPhaseTransitionTime",
        "workloadCertificateRefreshInterval",
        "conditions",
    ] {
        assert!(status[field].is_mapping(), "status.{field} missing");
    }
    let cond = &status["conditions"]["items"]["properties"];
    for field in ["type", "status", "reason", "message", "lastTransitionTime"] {
        assert!(cond[field].is_mapping(), "conditions[].{field} missing");
    }
}
