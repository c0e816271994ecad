//! The simulated mesh (DESIGN.md section 4): the control plane is real, Linkerd and
//! cert-manager are simulated faithfully enough that an unsafe rotation visibly breaks mTLS.
//!
//! - [`certmanager`]: Certificates, Issuers, ClusterIssuers; issuance, renewal by `Issuing=True`,
//!   `rotationPolicy`.
//! - [`injector`], [`identity`], [`linkerd`]: the proxy-injector webhook, the identity controller
//!   with its load-at-start and `IssuerUpdateSkipped` behaviour, the installation.
//! - [`kubelet`]: binds pods to fake nodes, runs them on `127.x.y.z`, honours graceful deletion.
//! - [`proxy`]: one simulated proxy per meshed pod, TLS on `podIP:4191`.
//! - [`traffic`]: real rustls mTLS handshakes between random pairs, failures by reason.
//!
//! [`Mesh`] puts them together; every knob of time is in [`SimConfig`].

pub mod certmanager;
pub mod events;
pub mod identity;
pub mod injector;
pub mod kubelet;
pub mod linkerd;
pub mod pki;
pub mod proxy;
pub mod runbook;
pub mod traffic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::json;

use self::identity::{IdentityConfig, IdentityService};
use self::injector::{Injector, InjectorConfig};
use self::kubelet::{Kubelet, KubeletConfig};
pub use self::linkerd::Names;
use self::proxy::Proxy;
use self::traffic::{Peers, TrafficConfig, TrafficGenerator, TrafficSnapshot};

/// Field manager of the simulator's own writes.
pub const MANAGER: &str = "linkerd-sim";

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error(transparent)]
    Injector(#[from] injector::InjectorError),
    #[error("{0}")]
    Invalid(String),
}

/// Every timescale knob. Linkerd's real values are hours; the simulator's defaults are seconds.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub names: Names,
    pub nodes: usize,
    /// Leaf lifetime issued by the identity controller (Linkerd: 24 h).
    pub leaf_lifetime: Duration,
    /// Proxy refresh bounds when its env does not set them (Linkerd: 10 s and 24 h).
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub pod_start_delay: Duration,
    pub pod_stop_delay: Duration,
    pub crash_backoff: Duration,
    /// The lag of the injector's mounted copy of the bundle ConfigMap (kubelet sync period).
    pub configmap_sync_delay: Duration,
    pub anchor_duration: Duration,
    pub issuer_duration: Duration,
    /// `privateKey.rotationPolicy` of the trust-anchor and identity-issuer Certificates
    /// (cert-manager's default since 1.18 is `Always`; before it was `Never`).
    pub anchor_key: KeyRotation,
    pub issuer_key: KeyRotation,
    pub control_plane_replicas: i32,
    /// How late every second identity controller replica started sees a changed issuer Secret
    /// (its node's kubelet syncing the Secret volume late; up to a minute or two in a real
    /// cluster). Zero: every replica sees it at once.
    pub issuer_reload_lag: Duration,
    /// Each identity controller replica serves `issuer_cert_ttl_seconds` on `podIP:9990`, as
    /// Linkerd's does since 2.18; off, an older Linkerd's, which does not.
    pub identity_metrics: bool,
}

/// cert-manager's `privateKey.rotationPolicy`: a new key on every renewal, or the same key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyRotation {
    #[default]
    Always,
    Never,
}

impl KeyRotation {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRotation::Always => "Always",
            KeyRotation::Never => "Never",
        }
    }
}

impl Default for SimConfig {
    /// Scaled for tests: a leaf lives 20 s and is refreshed after 14 s, so "wait for every
    /// leaf to be re-issued" takes seconds; anchors and issuers outlive any test, so only the
    /// test renews them.
    fn default() -> Self {
        Self {
            names: Names::default(),
            nodes: 3,
            leaf_lifetime: Duration::from_secs(20),
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(24 * 3600),
            pod_start_delay: Duration::from_millis(200),
            pod_stop_delay: Duration::from_millis(300),
            crash_backoff: Duration::from_secs(1),
            configmap_sync_delay: Duration::from_millis(500),
            anchor_duration: Duration::from_secs(365 * 24 * 3600),
            issuer_duration: Duration::from_secs(48 * 3600),
            anchor_key: KeyRotation::Always,
            issuer_key: KeyRotation::Always,
            control_plane_replicas: 1,
            issuer_reload_lag: Duration::ZERO,
            identity_metrics: true,
        }
    }
}

/// A running simulated mesh. Everything it started stops when it is dropped.
pub struct Mesh {
    client: Client,
    config: SimConfig,
    kubelet: Arc<Kubelet>,
    identity: Arc<IdentityService>,
    injector: Injector,
    traffic: Option<TrafficGenerator>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.traffic = None;
        for t in &self.tasks {
            t.abort();
        }
        for p in self.kubelet.proxies() {
            p.stop();
        }
    }
}

impl Peers for Kubelet {
    fn ready_proxies(&self) -> Vec<Arc<Proxy>> {
        Kubelet::ready_proxies(self)
    }

    fn refused_leaves(&self) -> (u64, Vec<traffic::Failure>) {
        self.identity().refused_leaves()
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> SimError {
    let action = action.into();
    move |source| SimError::Kube { action, source }
}

/// How long the control plane of the simulated Linkerd may take to come up.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Applies a CRD (server-side) and waits until the API server serves it (Established).
pub async fn install_crd(client: &Client, crd: &CustomResourceDefinition) -> Result<(), SimError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .map_err(kube_err(format!("installing CRD {name}")))?;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .map_err(|_| SimError::Timeout {
        what: format!("CRD {name} to be established"),
        after: Duration::from_secs(30),
    })?
    .map_err(|e| SimError::Invalid(format!("watching CRD {name}: {e}")))?;
    Ok(())
}

impl Mesh {
    /// Installs cert-manager's CRDs and starts its stand-in, the kubelet, the identity service
    /// and the proxy injector; installs the Linkerd PKI and control plane; returns once the
    /// control plane's rollouts are complete.
    pub async fn start(client: Client, config: SimConfig) -> Result<Self, SimError> {
        let names = config.names.clone();
        for crd in certmanager::crds() {
            install_crd(&client, &crd).await?;
        }
        let mut tasks = vec![tokio::spawn(certmanager::run(
            client.clone(),
            certmanager::ControllerConfig {
                cluster_resource_namespace: names.cert_manager_namespace.clone(),
            },
        ))];
        let identity = Arc::new(IdentityService::with_reload_lag(config.issuer_reload_lag));
        let kubelet = Kubelet::new(
            client.clone(),
            KubeletConfig {
                nodes: config.nodes,
                start_delay: config.pod_start_delay,
                stop_delay: config.pod_stop_delay,
                crash_backoff: config.crash_backoff,
                default_refresh: (config.min_refresh, config.max_refresh),
                identity: IdentityConfig {
                    namespace: names.linkerd_namespace.clone(),
                    issuer_secret: names.identity_issuer.clone(),
                    identity_deployment: linkerd::CONTROL_PLANE[0].0.to_owned(),
                    leaf_lifetime: config.leaf_lifetime,
                    metrics: config.identity_metrics,
                },
            },
            identity.clone(),
        );
        tasks.push(tokio::spawn(kubelet.clone().run()));

        linkerd::install_pki(&client, &config).await?;
        let anchor = wait_for("the trust-anchor Secret", INSTALL_TIMEOUT, || async {
            linkerd::secret_certificate(&client, &names.cert_manager_namespace, &names.anchor).await
        })
        .await?;
        wait_for("the identity-issuer Secret", INSTALL_TIMEOUT, || async {
            linkerd::secret_certificate(&client, &names.linkerd_namespace, &names.identity_issuer)
                .await
        })
        .await?;
        if linkerd::read_bundle(&client, &names).await?.is_none() {
            let bundle = crate::bundle::Bundle::from_pem("trust anchor Secret tls.crt", &anchor)
                .map_err(|e| SimError::Invalid(e.to_string()))?;
            linkerd::write_bundle(&client, &names, &bundle.to_pem()).await?;
        }
        let injector = Injector::start(
            client.clone(),
            InjectorConfig {
                linkerd_namespace: names.linkerd_namespace.clone(),
                trust_domain: names.trust_domain.clone(),
                bundle_configmap: names.bundle_configmap.clone(),
                configmap_sync_delay: config.configmap_sync_delay,
            },
        )
        .await?;
        linkerd::install_control_plane(&client, &names, config.control_plane_replicas).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        linkerd::wait_rollouts(&client, &names.linkerd_namespace, INSTALL_TIMEOUT).await?;
        Ok(Self {
            client,
            config,
            kubelet,
            identity,
            injector,
            traffic: None,
            tasks,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn names(&self) -> &Names {
        &self.config.names
    }

    /// Address of the proxy-injector stand-in's webhook server.
    pub fn injector_addr(&self) -> std::net::SocketAddr {
        self.injector.addr
    }

    /// Meshed namespaces (`linkerd.io/inject: enabled`) each with `deployments` Deployments of
    /// `replicas` pods, named `app-0`...; returns once their rollouts are complete.
    pub async fn add_workloads(
        &self,
        namespaces: &[String],
        deployments: usize,
        replicas: i32,
        timeout: Duration,
    ) -> Result<(), SimError> {
        for ns in namespaces {
            linkerd::namespace(
                &self.client,
                ns,
                json!({}),
                json!({injector::INJECT_ANNOTATION: "enabled"}),
            )
            .await?;
            for d in 0..deployments {
                linkerd::install_workload(&self.client, ns, &format!("app-{d}"), replicas).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for ns in namespaces {
            linkerd::wait_rollouts(&self.client, ns, timeout).await?;
        }
        Ok(())
    }

    /// The bundle the proxy injector would inject now (its lagging copy of the ConfigMap).
    pub fn injector_bundle(&self) -> Option<String> {
        self.injector.bundle.get()
    }

    /// Running proxies that hold a leaf.
    pub fn ready_proxies(&self) -> Vec<Arc<Proxy>> {
        self.kubelet.ready_proxies()
    }

    /// Every running proxy.
    pub fn proxies(&self) -> Vec<Arc<Proxy>> {
        self.kubelet.proxies()
    }

    /// Issuer fingerprints of the running identity controllers.
    pub fn identity_issuers(&self) -> Vec<String> {
        self.identity.issuer_fingerprints()
    }

    /// Starts (or restarts, with fresh counters) the traffic generator.
    pub fn start_traffic(&mut self, config: TrafficConfig) {
        self.traffic = None;
        self.traffic = Some(TrafficGenerator::start(self.kubelet.clone(), config));
    }

    /// Stops the traffic generator (its counters go with it).
    pub fn stop_traffic(&mut self) {
        self.traffic = None;
    }

    /// The generator's counters, if it runs.
    pub fn traffic(&self) -> Option<TrafficSnapshot> {
        self.traffic.as_ref().map(|t| t.snapshot())
    }

    /// Pods carrying a `linkerd-proxy` container, from the API.
    pub async fn meshed_pods(&self) -> Result<Vec<Pod>, SimError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(kube_err("listing pods"))?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .any(|c| c.name == kubelet::PROXY_CONTAINER)
                })
            })
            .collect())
    }

    /// Waits until every running proxy holds a leaf issued by the issuer with this fingerprint.
    pub async fn wait_leaves_from(
        &self,
        issuer_fingerprint: &str,
        timeout: Duration,
    ) -> Result<Duration, SimError> {
        let started = Instant::now();
        loop {
            let proxies = self.proxies();
            let stale: Vec<String> = proxies
                .iter()
                .filter(|p| {
                    p.leaf()
                        .is_none_or(|l| l.issuer_fingerprint != issuer_fingerprint)
                })
                .map(|p| p.pod.to_string())
                .collect();
            if stale.is_empty() && !proxies.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(SimError::Timeout {
                    what: format!(
                        "{} of {} proxies to hold a leaf from issuer {}: {}",
                        stale.len(),
                        proxies.len(),
                        &issuer_fingerprint[..12.min(issuer_fingerprint.len())],
                        stale.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    ),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Polls `f` until it yields a value.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, SimError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, SimError>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            return Err(SimError::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
