//! Installing the simulated Linkerd: its PKI through the cert-manager stand-in (DESIGN.md
//! section 1, default names), the `linkerd` namespace, the bundle ConfigMap and the three
//! control-plane Deployments; meshed workloads; and the steps of the manual runbook (renew,
//! write the bundle, restart, wait for a rollout), done through the API as a person would.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::certmanager::{Certificate, ClusterIssuer, Issuer};
use super::kubelet::{COMPONENT_LABEL, ENV_IDENTITY_TRUST_ANCHORS, PROXY_CONTAINER};
use super::proxy::{ENV_LOCAL_NAME, ENV_TRUST_ANCHORS};
use super::{MANAGER, SimConfig, SimError};

/// Every name the simulated installation uses; Linkerd's and cert-manager's defaults.
#[derive(Clone, Debug)]
pub struct Names {
    pub linkerd_namespace: String,
    pub cert_manager_namespace: String,
    pub trust_domain: String,
    pub root_issuer: String,
    pub anchor: String,
    pub identity_cluster_issuer: String,
    pub identity_issuer: String,
    pub bundle_configmap: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            linkerd_namespace: "linkerd".into(),
            cert_manager_namespace: "cert-manager".into(),
            trust_domain: "cluster.local".into(),
            root_issuer: "linkerd-trust-root-issuer".into(),
            anchor: "linkerd-trust-anchor".into(),
            identity_cluster_issuer: "linkerd-identity-issuer".into(),
            identity_issuer: "linkerd-identity-issuer".into(),
            bundle_configmap: "linkerd-identity-trust-roots".into(),
        }
    }
}

/// The identity controller's Deployment.
pub const IDENTITY_DEPLOYMENT: &str = "linkerd-identity";

/// The control-plane Deployments and their component labels.
pub const CONTROL_PLANE: [(&str, &str); 3] = [
    (IDENTITY_DEPLOYMENT, "identity"),
    ("linkerd-destination", "destination"),
    ("linkerd-proxy-injector", "proxy-injector"),
];

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> SimError {
    let action = action.into();
    move |source| SimError::Kube { action, source }
}

async fn apply<K>(api: &Api<K>, name: &str, object: serde_json::Value) -> Result<K, SimError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(kube_err(format!("applying {name}")))
}

/// Creates (or updates) a namespace with the given labels and annotations.
pub async fn namespace(
    client: &Client,
    name: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> Result<(), SimError> {
    let api: Api<Namespace> = Api::all(client.clone());
    apply(
        &api,
        name,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels, "annotations": annotations}}),
    )
    .await?;
    Ok(())
}

/// The four objects of the Linkerd PKI: a selfSigned Issuer, the trust-anchor Certificate, a
/// CA ClusterIssuer over it, and the identity-issuer Certificate.
pub async fn install_pki(client: &Client, config: &SimConfig) -> Result<(), SimError> {
    let names = &config.names;
    let cm_ns = &names.cert_manager_namespace;
    namespace(client, cm_ns, json!({}), json!({})).await?;
    namespace(
        client,
        &names.linkerd_namespace,
        json!({"config.linkerd.io/admission-webhooks": "disabled",
               "linkerd.io/is-control-plane": "true",
               "linkerd.io/control-plane-ns": names.linkerd_namespace}),
        json!({}),
    )
    .await?;
    let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
    let issuers: Api<Issuer> = Api::namespaced(client.clone(), cm_ns);
    apply(
        &issuers,
        &names.root_issuer,
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
               "metadata": {"name": names.root_issuer, "namespace": cm_ns},
               "spec": {"selfSigned": {}}}),
    )
    .await?;
    let anchors: Api<Certificate> = Api::namespaced(client.clone(), cm_ns);
    apply(
        &anchors,
        &names.anchor,
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
               "metadata": {"name": names.anchor, "namespace": cm_ns},
               "spec": {"isCA": true, "commonName": format!("root.linkerd.{}", names.trust_domain),
                        "secretName": names.anchor, "duration": secs(config.anchor_duration),
                        "privateKey": {"algorithm": "ECDSA", "rotationPolicy": config.anchor_key.as_str()},
                        "issuerRef": {"name": names.root_issuer, "kind": "Issuer",
                                      "group": "cert-manager.io"}}}),
    )
    .await?;
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
    apply(
        &cluster_issuers,
        &names.identity_cluster_issuer,
        json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
               "metadata": {"name": names.identity_cluster_issuer},
               "spec": {"ca": {"secretName": names.anchor}}}),
    )
    .await?;
    let issuer_certs: Api<Certificate> = Api::namespaced(client.clone(), &names.linkerd_namespace);
    apply(
        &issuer_certs,
        &names.identity_issuer,
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
               "metadata": {"name": names.identity_issuer, "namespace": names.linkerd_namespace},
               "spec": {"isCA": true,
                        "commonName": format!("identity.{}.{}", names.linkerd_namespace, names.trust_domain),
                        "secretName": names.identity_issuer, "duration": secs(config.issuer_duration),
                        "privateKey": {"algorithm": "ECDSA", "rotationPolicy": config.issuer_key.as_str()},
                        "issuerRef": {"name": names.identity_cluster_issuer, "kind": "ClusterIssuer",
                                      "group": "cert-manager.io"}}}),
    )
    .await?;
    Ok(())
}

/// The `tls.crt` of a Secret, once it exists.
pub async fn secret_certificate(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, SimError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading Secret {namespace}/{name}")))?;
    Ok(secret
        .and_then(|s| s.data)
        .and_then(|d| d.get("tls.crt").cloned())
        .and_then(|v| String::from_utf8(v.0).ok()))
}

/// Writes the bundle ConfigMap's `ca-bundle.crt`.
pub async fn write_bundle(client: &Client, names: &Names, pem: &str) -> Result<(), SimError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &names.linkerd_namespace);
    apply(
        &api,
        &names.bundle_configmap,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": names.bundle_configmap, "namespace": names.linkerd_namespace},
               "data": {"ca-bundle.crt": pem}}),
    )
    .await?;
    Ok(())
}

/// Reads the bundle ConfigMap's `ca-bundle.crt`.
pub async fn read_bundle(client: &Client, names: &Names) -> Result<Option<String>, SimError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &names.linkerd_namespace);
    Ok(api
        .get_opt(&names.bundle_configmap)
        .await
        .map_err(kube_err("reading the bundle ConfigMap"))?
        .and_then(|c| c.data)
        .and_then(|d| d.get("ca-bundle.crt").cloned()))
}

fn proxy_container_for_control_plane(names: &Names) -> serde_json::Value {
    json!({
        "name": PROXY_CONTAINER,
        "image": format!("cr.l5d.io/linkerd/proxy:{}", super::injector::PROXY_VERSION),
        "env": [
            {"name": "_pod_ns", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "_pod_sa", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": ENV_LOCAL_NAME,
             "value": format!("$(_pod_sa).$(_pod_ns).serviceaccount.identity.{}.{}",
                              names.linkerd_namespace, names.trust_domain)},
            {"name": ENV_TRUST_ANCHORS,
             "valueFrom": {"configMapKeyRef": {"name": names.bundle_configmap, "key": "ca-bundle.crt"}}}
        ],
        "ports": [{"name": "linkerd-admin", "containerPort": super::proxy::ADMIN_PORT}]
    })
}

/// The `linkerd` control plane: ServiceAccounts and the three Deployments, whose proxies (and
/// the identity container) read the bundle ConfigMap at container start.
pub async fn install_control_plane(
    client: &Client,
    names: &Names,
    replicas: i32,
) -> Result<(), SimError> {
    let ns = &names.linkerd_namespace;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for (name, component) in CONTROL_PLANE {
        apply(
            &sas,
            name,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": ns}}),
        )
        .await?;
        let labels = json!({
            COMPONENT_LABEL: component,
            "linkerd.io/control-plane-ns": ns,
            "linkerd.io/proxy-deployment": name,
            "linkerd.io/workload-ns": ns,
        });
        let mut main = json!({"name": component,
                              "image": format!("cr.l5d.io/linkerd/controller:{}", super::injector::PROXY_VERSION)});
        if component == "identity" {
            main["env"] = json!([{"name": ENV_IDENTITY_TRUST_ANCHORS,
                                  "valueFrom": {"configMapKeyRef": {"name": names.bundle_configmap,
                                                                    "key": "ca-bundle.crt"}}}]);
        }
        apply(
            &deployments,
            name,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": name, "namespace": ns, "labels": labels},
                   "spec": {
                       "replicas": replicas,
                       "selector": {"matchLabels": {COMPONENT_LABEL: component,
                                                    "linkerd.io/control-plane-ns": ns}},
                       "template": {
                           "metadata": {"labels": labels,
                                        "annotations": {
                                            // As `linkerd install` writes it (Helm writes
                                            // `linkerd/helm …`): the harder case for the
                                            // operator, whose pods then read as injected by
                                            // the CLI.
                                            "linkerd.io/created-by": format!("linkerd/cli {}", super::injector::PROXY_VERSION),
                                            "linkerd.io/proxy-version": super::injector::PROXY_VERSION}},
                           "spec": {"serviceAccountName": name,
                                    "automountServiceAccountToken": false,
                                    "containers": [proxy_container_for_control_plane(names), main]}}}}),
        )
        .await?;
    }
    Ok(())
}

/// One meshed workload: a Deployment with its own ServiceAccount (so its own identity).
pub async fn install_workload(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Result<(), SimError> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    apply(
        &sas,
        name,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": namespace}}),
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    apply(
        &deployments,
        name,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
               "spec": {
                   "replicas": replicas,
                   "selector": {"matchLabels": {"app": name}},
                   "template": {
                       "metadata": {"labels": {"app": name}},
                       "spec": {"serviceAccountName": name,
                                "containers": [{"name": "app", "image": "sim/app:1"}]}}}}),
    )
    .await?;
    Ok(())
}

/// `kubectl rollout restart`: a new pod-template annotation.
pub async fn restart_deployment(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), SimError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let at = jiff_now();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": at}}}}})),
    )
    .await
    .map_err(kube_err(format!(
        "restarting Deployment {namespace}/{name}"
    )))?;
    Ok(())
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Whether a Deployment's rollout is complete (`kubectl rollout status`), by the reconciler's
/// own rule.
pub fn rollout_complete(d: &Deployment) -> bool {
    crate::reconcile::controller::Restartable::rollout_complete(d)
}

/// Waits for the rollouts of the named Deployments (all of `namespace` when `names` is empty).
pub async fn wait_rollouts(
    client: &Client,
    namespace: &str,
    timeout: Duration,
) -> Result<(), SimError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let started = std::time::Instant::now();
    loop {
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(kube_err(format!("listing Deployments in {namespace}")))?;
        let pending: Vec<String> = list
            .items
            .iter()
            .filter(|d| !rollout_complete(d))
            .map(|d| d.name_any())
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(SimError::Timeout {
                what: format!("rollouts in {namespace}: {}", pending.join(", ")),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restarts every Deployment of `namespace` and waits for the rollouts.
pub async fn restart_namespace(
    client: &Client,
    namespace: &str,
    timeout: Duration,
) -> Result<(), SimError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("listing Deployments in {namespace}")))?;
    for d in &list.items {
        restart_deployment(client, namespace, &d.name_any()).await?;
    }
    // Give the controller a moment to see the new generation before judging completeness.
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_rollouts(client, namespace, timeout).await
}

/// Labels the bundle's anchors in a `BTreeMap` for messages: fingerprint prefix -> subject.
pub fn describe_bundle(pem: &str) -> BTreeMap<String, String> {
    super::pki::pem_certs("bundle", pem)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| super::pki::info("bundle", d).ok())
        .map(|i| (i.fingerprint[..12].to_owned(), i.subject_common_name))
        .collect()
}
