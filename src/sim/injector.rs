//! Linkerd proxy-injector stand-in: a real mutating admission webhook, registered as
//! `linkerd-proxy-injector-webhook-config` (CREATE pods, failurePolicy Ignore, no reinvocation).
//!
//! For a pod that asks for injection (`linkerd.io/inject: enabled|ingress` on the pod or its
//! namespace, the pod's `disabled` winning) and has no proxy yet, it adds a `linkerd-proxy`
//! container whose env carries the trust bundle as a literal
//! (`LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS`), the identity name built from `_pod_sa`/`_pod_ns`,
//! the admin port of `config.linkerd.io/admin-port` (pod over namespace, default 4191) as
//! `LINKERD2_PROXY_ADMIN_LISTEN_ADDR` and the port named `linkerd-admin`, and the merged
//! `config.linkerd.io/proxy-additional-env` (namespace < pod) appended; and the
//! meshed labels and annotations, `linkerd.io/trust-root-sha256` among them. The bundle comes
//! from its own copy of the ConfigMap, which follows the ConfigMap only after the kubelet sync
//! delay, as a mounted volume does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, EnvVarSource, Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::kubelet::PROXY_CONTAINER;
use super::proxy::ENV_TRUST_ANCHORS;
use crate::webhook::patch::SERVICE_ACCOUNT_MOUNT_PATH;

pub const WEBHOOK_CONFIG_NAME: &str = "linkerd-proxy-injector-webhook-config";
pub const INJECT_ANNOTATION: &str = "linkerd.io/inject";
pub const ADDITIONAL_ENV_ANNOTATION: &str = "config.linkerd.io/proxy-additional-env";
/// The proxy's admin port, on the pod or its namespace (default 4191).
pub const ADMIN_PORT_ANNOTATION: &str = "config.linkerd.io/admin-port";
pub const TRUST_ROOT_SHA256_ANNOTATION: &str = "linkerd.io/trust-root-sha256";
pub const CREATED_BY_ANNOTATION: &str = "linkerd.io/created-by";
pub const PROXY_VERSION_ANNOTATION: &str = "linkerd.io/proxy-version";
pub const CONTROL_PLANE_NS_LABEL: &str = "linkerd.io/control-plane-ns";
pub const WORKLOAD_NS_LABEL: &str = "linkerd.io/workload-ns";

/// The version the stand-in claims in its annotations.
pub const PROXY_VERSION: &str = "sim-stable";

/// What the injector needs to know about the mesh.
#[derive(Clone, Debug)]
pub struct InjectorConfig {
    pub linkerd_namespace: String,
    pub trust_domain: String,
    pub bundle_configmap: String,
    /// How long after a ConfigMap change the injector's mounted copy follows.
    pub configmap_sync_delay: Duration,
}

/// The injector's copy of the bundle.
#[derive(Default)]
pub struct MountedBundle {
    current: RwLock<(u64, Option<String>)>,
}

impl MountedBundle {
    pub fn get(&self) -> Option<String> {
        self.current.read().expect("not poisoned").1.clone()
    }

    fn set_if_newer(&self, seq: u64, value: Option<String>) {
        let mut current = self.current.write().expect("not poisoned");
        if seq >= current.0 {
            *current = (seq, value);
        }
    }
}

/// Parses an additional-env annotation; `None` for text that is not a JSON list of EnvVars.
pub fn parse_additional_env(text: &str) -> Option<Vec<EnvVar>> {
    serde_json::from_str(text).ok()
}

/// Merges EnvVar lists by name, later lists winning, keeping first-seen order.
pub fn merge_env(layers: &[Vec<EnvVar>]) -> Vec<EnvVar> {
    let mut out: Vec<EnvVar> = Vec::new();
    for layer in layers {
        for var in layer {
            match out.iter_mut().find(|v| v.name == var.name) {
                Some(existing) => *existing = var.clone(),
                None => out.push(var.clone()),
            }
        }
    }
    out
}

fn literal(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn field_ref(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: path.to_owned(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

/// The pure injection: the pod as the injector returns it, or `None` when it does not inject.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    namespace_annotations: &BTreeMap<String, String>,
    bundle_pem: &str,
    config: &InjectorConfig,
) -> Option<Pod> {
    let pod_annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let pod_inject = pod_annotations.get(INJECT_ANNOTATION).map(String::as_str);
    let ns_inject = namespace_annotations
        .get(INJECT_ANNOTATION)
        .map(String::as_str);
    let wanted = match pod_inject {
        Some("disabled") => false,
        Some("enabled" | "ingress") => true,
        _ => matches!(ns_inject, Some("enabled" | "ingress")),
    };
    let spec = pod.spec.as_ref()?;
    let has_proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER);
    // As Linkerd's injector: never in the host's network, nor without the service-account token
    // (turned off on the pod, or not mounted in the first container).
    let token_mounted = spec.automount_service_account_token != Some(false)
        && spec.containers.first().is_some_and(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == SERVICE_ACCOUNT_MOUNT_PATH)
        });
    if !wanted || has_proxy || spec.host_network == Some(true) || !token_mounted {
        return None;
    }
    let additional = |a: &BTreeMap<String, String>| {
        a.get(ADDITIONAL_ENV_ANNOTATION)
            .and_then(|t| parse_additional_env(t))
            .unwrap_or_default()
    };
    let extra = merge_env(&[
        additional(namespace_annotations),
        additional(&pod_annotations),
    ]);
    let mut env = vec![
        field_ref("_pod_name", "metadata.name"),
        field_ref("_pod_ns", "metadata.namespace"),
        field_ref("_pod_sa", "spec.serviceAccountName"),
        literal(
            super::proxy::ENV_LOCAL_NAME,
            &format!(
                "$(_pod_sa).$(_pod_ns).serviceaccount.identity.{}.{}",
                config.linkerd_namespace, config.trust_domain
            ),
        ),
        literal(ENV_TRUST_ANCHORS, bundle_pem),
    ];
    // As Linkerd's injector, the pod's config annotation over the namespace's.
    let admin_port = [&pod_annotations, namespace_annotations]
        .into_iter()
        .find_map(|a| a.get(ADMIN_PORT_ANNOTATION)?.parse::<u16>().ok())
        .unwrap_or(super::proxy::ADMIN_PORT);
    env.push(literal(
        super::proxy::ENV_ADMIN_LISTEN_ADDR,
        &format!("0.0.0.0:{admin_port}"),
    ));
    env.extend(extra);
    let proxy = Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(format!("cr.l5d.io/linkerd/proxy:{PROXY_VERSION}")),
        env: Some(env),
        ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
            name: Some("linkerd-admin".to_owned()),
            container_port: admin_port.into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut out = pod.clone();
    let out_spec = out.spec.as_mut()?;
    // Linkerd puts the proxy first, so that it starts before the application.
    out_spec.containers.insert(0, proxy);
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        CREATED_BY_ANNOTATION.to_owned(),
        format!("linkerd/proxy-injector {PROXY_VERSION}"),
    );
    annotations.insert(
        PROXY_VERSION_ANNOTATION.to_owned(),
        PROXY_VERSION.to_owned(),
    );
    annotations.insert("linkerd.io/identity-mode".to_owned(), "default".to_owned());
    annotations.insert(
        TRUST_ROOT_SHA256_ANNOTATION.to_owned(),
        crate::bundle::sha256_hex(bundle_pem.as_bytes()),
    );
    let labels = out.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(
        CONTROL_PLANE_NS_LABEL.to_owned(),
        config.linkerd_namespace.clone(),
    );
    labels.insert(WORKLOAD_NS_LABEL.to_owned(), namespace.to_owned());
    Some(out)
}

#[derive(Clone)]
struct AppState {
    client: Client,
    config: InjectorConfig,
    bundle: Arc<MountedBundle>,
}

async fn handle(State(state): State<AppState>, body: Bytes) -> Response {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut response = AdmissionResponse::from(&request);
    if let (Some(pod), Some(bundle)) = (&request.object, state.bundle.get()) {
        let namespace = request.namespace.clone().unwrap_or_default();
        let ns_annotations = Api::<Namespace>::all(state.client.clone())
            .get_opt(&namespace)
            .await
            .ok()
            .flatten()
            .map(|n| n.annotations().clone())
            .unwrap_or_default();
        if let Some(injected) = inject(pod, &namespace, &ns_annotations, &bundle, &state.config) {
            let (Ok(before), Ok(after)) =
                (serde_json::to_value(pod), serde_json::to_value(&injected))
            else {
                return Json(response.into_review()).into_response();
            };
            match response
                .clone()
                .with_patch(json_patch::diff(&before, &after))
            {
                Ok(r) => response = r,
                Err(e) => tracing::warn!(error = %e, "proxy-injector stand-in: patch"),
            }
        }
    }
    Json(response.into_review()).into_response()
}

use axum::Json;

/// A running injector: its server and its ConfigMap watch stop when this is dropped.
pub struct Injector {
    pub addr: SocketAddr,
    pub bundle: Arc<MountedBundle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Injector {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectorError {
    #[error("proxy-injector stand-in: {0}")]
    Setup(String),
    #[error("registering {WEBHOOK_CONFIG_NAME}: {0}")]
    Register(#[source] kube::Error),
}

impl Injector {
    /// Starts the HTTPS server on a free loopback port, follows the bundle ConfigMap and
    /// registers the MutatingWebhookConfiguration pointing at the server.
    pub async fn start(client: Client, config: InjectorConfig) -> Result<Self, InjectorError> {
        let setup = |e: &dyn std::fmt::Display| InjectorError::Setup(e.to_string());
        let (ca_pem, cert_der, key_der) = serving_certificate().map_err(|e| setup(&e))?;
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.into()], key_der)
        .map_err(|e| setup(&e))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| setup(&e))?;
        let addr = listener.local_addr().map_err(|e| setup(&e))?;
        let bundle = Arc::new(MountedBundle::default());
        let state = AppState {
            client: client.clone(),
            config: config.clone(),
            bundle: bundle.clone(),
        };
        let app = Router::new().route("/", post(handle)).with_state(state);
        let server = tokio::spawn(crate::webhook::server::serve_tls(
            listener,
            Arc::new(tls),
            app,
            crate::webhook::deadline::ConnectionTimeouts::default(),
            None,
            std::future::pending(),
        ));
        let follow = tokio::spawn(follow_bundle(
            client.clone(),
            config.clone(),
            bundle.clone(),
        ));

        let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_CONFIG_NAME,
                         "labels": {"linkerd.io/control-plane-component": "proxy-injector",
                                    "linkerd.io/control-plane-ns": config.linkerd_namespace}},
            "webhooks": [{
                "name": "linkerd-proxy-injector.linkerd.io",
                "clientConfig": {"url": format!("https://{addr}/"),
                                 "caBundle": base64_encode(ca_pem.as_bytes())},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "config.linkerd.io/admission-webhooks", "operator": "NotIn", "values": ["disabled"]}
                ]},
                "objectSelector": {"matchExpressions": [
                    {"key": "linkerd.io/control-plane-component", "operator": "DoesNotExist"},
                    {"key": "linkerd.io/cni-resource", "operator": "DoesNotExist"}
                ]},
                "failurePolicy": "Ignore",
                "reinvocationPolicy": "Never",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1", "v1beta1"],
                "timeoutSeconds": 10
            }]
        }))
        .map_err(|e| setup(&e))?;
        Api::<MutatingWebhookConfiguration>::all(client)
            .patch(
                WEBHOOK_CONFIG_NAME,
                &PatchParams::apply(super::MANAGER).force(),
                &Patch::Apply(&mwc),
            )
            .await
            .map_err(InjectorError::Register)?;
        Ok(Self {
            addr,
            bundle,
            tasks: vec![server, follow],
        })
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A throwaway CA and a serving certificate for 127.0.0.1: (CA PEM, cert DER, key DER).
fn serving_certificate()
-> Result<(String, Vec<u8>, rustls::pki_types::PrivateKeyDer<'static>), super::pki::PkiError> {
    let now = super::pki::now();
    let year = Duration::from_secs(365 * 24 * 3600);
    let ca_key = super::pki::generate_key()?;
    let ca = super::pki::Template {
        common_name: "linkerd-proxy-injector stand-in CA".to_owned(),
        dns_names: vec![],
        is_ca: true,
        not_before: now - Duration::from_secs(60),
        not_after: now + year,
    }
    .self_signed(&ca_key)?;
    let key = super::pki::generate_key()?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(|source| {
            super::pki::PkiError::Sign {
                what: "injector serving certificate".to_owned(),
                source,
            }
        })?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let ca_issuer =
        rcgen::Issuer::from_ca_cert_der(&ca.clone().into(), &ca_key).map_err(|source| {
            super::pki::PkiError::Sign {
                what: "injector CA".to_owned(),
                source,
            }
        })?;
    let cert = params
        .signed_by(&key, &ca_issuer)
        .map_err(|source| super::pki::PkiError::Sign {
            what: "injector serving certificate".to_owned(),
            source,
        })?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok((super::pki::to_pem(&ca), cert.der().to_vec(), key_der))
}

async fn follow_bundle(client: Client, config: InjectorConfig, bundle: Arc<MountedBundle>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &config.linkerd_namespace);
    let selector = format!("metadata.name={}", config.bundle_configmap);
    let mut stream = watcher::watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let mut seq = 0u64;
    while let Some(event) = stream.next().await {
        let value = match event {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                cm.data.and_then(|d| d.get("ca-bundle.crt").cloned())
            }
            Ok(watcher::Event::Delete(_)) => None,
            _ => continue,
        };
        seq += 1;
        let (bundle, delay, this) = (bundle.clone(), config.configmap_sync_delay, seq);
        if bundle.get().is_none() {
            // The first copy is there when the injector pod starts.
            bundle.set_if_newer(this, value);
            continue;
        }
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            bundle.set_if_newer(this, value);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectorConfig {
        InjectorConfig {
            linkerd_namespace: "linkerd".into(),
            trust_domain: "cluster.local".into(),
            bundle_configmap: "linkerd-identity-trust-roots".into(),
            configmap_sync_delay: Duration::ZERO,
        }
    }

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "volumeMounts": [
                {"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_MOUNT_PATH}
            ]}], "serviceAccountName": "web"}
        }))
        .unwrap()
    }

    fn env_of(p: &Pod) -> Vec<(String, Option<String>)> {
        p.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn admin_port_comes_from_the_pod_over_its_namespace() {
        let admin = |ns_port: Option<&str>, pod_port: Option<&str>| {
            let mut ns = BTreeMap::from([(INJECT_ANNOTATION.to_owned(), "enabled".to_owned())]);
            if let Some(port) = ns_port {
                ns.insert(ADMIN_PORT_ANNOTATION.to_owned(), port.to_owned());
            }
            let p = pod(pod_port.map_or(json!({}), |port| json!({ADMIN_PORT_ANNOTATION: port})));
            let out = inject(&p, "shop", &ns, "BUNDLE\n", &config()).expect("injected");
            let proxy = &out.spec.as_ref().unwrap().containers[0];
            let port = &proxy.ports.as_ref().unwrap()[0];
            assert_eq!(port.name.as_deref(), Some("linkerd-admin"));
            let listen = env_of(&out)
                .into_iter()
                .find(|(n, _)| n == super::super::proxy::ENV_ADMIN_LISTEN_ADDR)
                .and_then(|(_, v)| v);
            assert_eq!(listen, Some(format!("0.0.0.0:{}", port.container_port)));
            port.container_port
        };
        assert_eq!(admin(None, None), 4191);
        assert_eq!(admin(Some("4444"), None), 4444);
        assert_eq!(admin(Some("4444"), Some("4555")), 4555);
    }

    #[test]
    fn injects_bundle_identity_and_merged_env_namespace_below_pod() {
        let ns = BTreeMap::from([
            (INJECT_ANNOTATION.to_owned(), "enabled".to_owned()),
            (
                ADDITIONAL_ENV_ANNOTATION.to_owned(),
                r#"[{"name":"A","value":"ns"},{"name":"B","value":"ns"}]"#.to_owned(),
            ),
        ]);
        let p = pod(json!({ADDITIONAL_ENV_ANNOTATION: r#"[{"name":"B","value":"pod"}]"#}));
        let out = inject(&p, "shop", &ns, "BUNDLE\n", &config()).expect("injected");
        let spec = out.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].name, PROXY_CONTAINER);
        assert_eq!(spec.containers[1].name, "app");
        let env = env_of(&out);
        assert!(env.contains(&(ENV_TRUST_ANCHORS.into(), Some("BUNDLE\n".into()))));
        assert!(env.contains(&("A".into(), Some("ns".into()))));
        assert!(env.contains(&("B".into(), Some("pod".into()))));
        assert!(!env.contains(&("B".into(), Some("ns".into()))));
        let a = out.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            a[TRUST_ROOT_SHA256_ANNOTATION],
            crate::bundle::sha256_hex(b"BUNDLE\n")
        );
        assert_eq!(
            out.metadata.labels.as_ref().unwrap()[CONTROL_PLANE_NS_LABEL],
            "linkerd"
        );
    }

    #[test]
    fn no_injection_without_the_service_account_token_or_in_the_host_network() {
        let ns = BTreeMap::from([(INJECT_ANNOTATION.to_owned(), "enabled".to_owned())]);
        let with_spec = |change: &dyn Fn(&mut k8s_openapi::api::core::v1::PodSpec)| {
            let mut p = pod(json!({}));
            change(p.spec.as_mut().unwrap());
            inject(&p, "n", &ns, "B", &config())
        };
        assert!(with_spec(&|_| {}).is_some());
        assert!(with_spec(&|s| s.automount_service_account_token = Some(false)).is_none());
        assert!(with_spec(&|s| s.containers[0].volume_mounts = None).is_none());
        assert!(with_spec(&|s| s.host_network = Some(true)).is_none());
    }

    #[test]
    fn disabled_pod_wins_and_injected_pod_is_left_alone() {
        let ns = BTreeMap::from([(INJECT_ANNOTATION.to_owned(), "enabled".to_owned())]);
        assert!(
            inject(
                &pod(json!({INJECT_ANNOTATION: "disabled"})),
                "n",
                &ns,
                "B",
                &config()
            )
            .is_none()
        );
        let once = inject(&pod(json!({})), "n", &ns, "B", &config()).unwrap();
        assert!(inject(&once, "n", &ns, "B", &config()).is_none());
        assert!(inject(&pod(json!({})), "n", &BTreeMap::new(), "B", &config()).is_none());
        assert!(
            inject(
                &pod(json!({INJECT_ANNOTATION: "ingress"})),
                "n",
                &BTreeMap::new(),
                "B",
                &config()
            )
            .is_some()
        );
    }
}
