//! Linkerd identity controller stand-in.
//!
//! One [`IdentityInstance`] per running `linkerd-identity` pod. Like the real controller it loads
//! the trust anchors once, when its container starts, and the issuer from the issuer Secret; it
//! refuses to start on an issuer that does not verify against those anchors. When the Secret
//! changes it re-verifies the new issuer against the anchors it loaded: on success it switches
//! and records `IssuerUpdated`, otherwise it keeps the old issuer and records
//! `IssuerUpdateSkipped`. Leaves are clamped to the issuer's expiry.
//!
//! A real replica sees the changed Secret only when its node's kubelet syncs the Secret volume,
//! up to a minute or two after the change and on each node at its own time. With
//! [`IdentityService::with_reload_lag`], every second instance started sees the change that much
//! later than the others, so for a while the replicas sign with different issuers.
//!
//! Like Linkerd's controller since 2.18, each instance serves `issuer_cert_ttl_seconds` (the
//! seconds its loaded issuer has left) on `podIP:9990/metrics`, unless
//! [`IdentityConfig::metrics`] is off (an older Linkerd).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use rcgen::KeyPair;
use time::OffsetDateTime;

use super::events::{self, EventType};
use super::pki::{self, Template};
use super::proxy::PodRef;
use super::traffic::Failure;

/// The component name on the events, as the real controller reports it.
const COMPONENT: &str = "linkerd-identity";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("issuer Secret {namespace}/{name} not found")]
    IssuerMissing { namespace: String, name: String },
    #[error("issuer Secret {namespace}/{name}: {message}")]
    IssuerInvalid {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("reading issuer Secret {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("trust anchors: {0}")]
    Anchors(pki::PkiError),
    #[error("admin server: {0}")]
    Admin(String),
}

/// Why a certificate request was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertifyError {
    #[error("no identity controller is running")]
    Unavailable,
    #[error("signing the leaf for {identity}: {message}")]
    Sign { identity: String, message: String },
}

/// Where the identity controller finds its issuer and what it issues.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    pub namespace: String,
    pub issuer_secret: String,
    pub identity_deployment: String,
    /// Leaf lifetime (Linkerd's `issuanceLifetime`, 24 h by default).
    pub leaf_lifetime: Duration,
    /// Serve `issuer_cert_ttl_seconds` on `podIP:`[`ADMIN_PORT`] (Linkerd 2.18 and later).
    pub metrics: bool,
}

/// The identity controller's admin port (`-admin-addr`), where it serves its metrics.
pub const ADMIN_PORT: u16 = 9990;

/// An issuer as loaded from its Secret.
struct LoadedIssuer {
    /// `tls.crt`: the issuer certificate first, then any intermediates.
    chain: Vec<Vec<u8>>,
    key: KeyPair,
    info: pki::CertInfo,
}

/// One running identity controller.
pub struct IdentityInstance {
    pub pod_uid: String,
    pub pod_name: String,
    anchors: Vec<Vec<u8>>,
    issuer: RwLock<Arc<LoadedIssuer>>,
    watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The admin server, while it runs.
    admin: Mutex<Option<tokio::task::JoinHandle<()>>>,
    config: IdentityConfig,
    /// How late it sees a changed issuer Secret (its node's kubelet syncing the volume late).
    reload_lag: Mutex<Duration>,
}

impl IdentityInstance {
    /// Starts an instance for the pod `pod_name` at `ip`: anchors from its resolved
    /// environment, issuer from the Secret. Fails, as the real controller's start does, if the
    /// issuer does not verify against the anchors.
    pub async fn start(
        client: Client,
        pod_uid: &str,
        pod_name: &str,
        ip: std::net::Ipv4Addr,
        anchors_pem: &str,
        config: IdentityConfig,
    ) -> Result<Arc<Self>, IdentityError> {
        let anchors = pki::pem_certs("identity trust anchors", anchors_pem)
            .map_err(IdentityError::Anchors)?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
        let secret = secrets
            .get_opt(&config.issuer_secret)
            .await
            .map_err(|source| IdentityError::Kube {
                namespace: config.namespace.clone(),
                name: config.issuer_secret.clone(),
                source,
            })?
            .ok_or_else(|| IdentityError::IssuerMissing {
                namespace: config.namespace.clone(),
                name: config.issuer_secret.clone(),
            })?;
        let issuer = load_issuer(&secret, &config)?;
        verify_issuer(&issuer, &anchors, &config)?;
        let instance = Arc::new(Self {
            pod_uid: pod_uid.to_owned(),
            pod_name: pod_name.to_owned(),
            anchors,
            issuer: RwLock::new(Arc::new(issuer)),
            watch: Mutex::new(None),
            admin: Mutex::new(None),
            config,
            reload_lag: Mutex::new(Duration::ZERO),
        });
        let watch = tokio::spawn(watch_issuer(client, Arc::downgrade(&instance)));
        *instance.watch.lock().expect("not poisoned") = Some(watch);
        if instance.config.metrics {
            let listener = tokio::net::TcpListener::bind((ip, ADMIN_PORT))
                .await
                .map_err(|e| IdentityError::Admin(format!("binding {ip}:{ADMIN_PORT}: {e}")))?;
            let admin = tokio::spawn(serve_admin(listener, Arc::downgrade(&instance)));
            *instance.admin.lock().expect("not poisoned") = Some(admin);
        }
        tracing::info!(pod = %pod_name, issuer = %instance.issuer_fingerprint(), "identity controller started");
        Ok(instance)
    }

    /// Fingerprint of the issuer certificate currently used for signing.
    pub fn issuer_fingerprint(&self) -> String {
        self.issuer
            .read()
            .expect("not poisoned")
            .info
            .fingerprint
            .clone()
    }

    /// Signs a leaf for `identity` over `public_key`; returns the chain the proxy presents:
    /// leaf, then the issuer's chain.
    pub fn certify(
        &self,
        identity: &str,
        public_key: &KeyPair,
        now: OffsetDateTime,
    ) -> Result<Vec<Vec<u8>>, CertifyError> {
        let issuer = self.issuer.read().expect("not poisoned").clone();
        let not_after = (now + self.config.leaf_lifetime).min(issuer.info.not_after);
        let template = Template {
            common_name: identity.to_owned(),
            dns_names: vec![identity.to_owned()],
            is_ca: false,
            not_before: now,
            not_after,
        };
        let leaf = template
            .signed_by(public_key, &issuer.chain[0], &issuer.key)
            .map_err(|e| CertifyError::Sign {
                identity: identity.to_owned(),
                message: e.to_string(),
            })?;
        let mut chain = vec![leaf];
        chain.extend(issuer.chain.iter().cloned());
        Ok(chain)
    }

    fn stop(&self) {
        for task in [&self.watch, &self.admin] {
            if let Some(task) = task.lock().expect("not poisoned").take() {
                task.abort();
            }
        }
    }

    /// The seconds the issuer it signs with has left, as its `issuer_cert_ttl_seconds` says.
    fn issuer_ttl_seconds(&self) -> f64 {
        let not_after = self.issuer.read().expect("not poisoned").info.not_after;
        (not_after - pki::now()).as_seconds_f64()
    }

    /// Handles a changed issuer Secret: switch if it verifies, skip otherwise.
    async fn issuer_changed(&self, client: &Client, secret: &Secret) {
        let reference = ObjectReference {
            api_version: Some("apps/v1".to_owned()),
            kind: Some("Deployment".to_owned()),
            name: Some(self.config.identity_deployment.clone()),
            namespace: Some(self.config.namespace.clone()),
            ..Default::default()
        };
        let loaded = match load_issuer(secret, &self.config) {
            Ok(l) => l,
            Err(e) => {
                events::emit(
                    client,
                    COMPONENT,
                    &reference,
                    EventType::Warning,
                    "IssuerUpdateSkipped",
                    &format!("Skipping issuer update as certs could not be read from secret: {e}"),
                )
                .await;
                return;
            }
        };
        if loaded.info.fingerprint == self.issuer_fingerprint() {
            return;
        }
        let lag = *self.reload_lag.lock().expect("not poisoned");
        let loaded = if lag.is_zero() {
            loaded
        } else {
            tracing::info!(pod = %self.pod_name, ?lag, "identity: the issuer Secret changed; loading it late");
            tokio::time::sleep(lag).await;
            // The kubelet projects the Secret as it is when it syncs, not as it was when it
            // changed.
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.config.namespace);
            match secrets.get_opt(&self.config.issuer_secret).await {
                Ok(Some(latest)) => load_issuer(&latest, &self.config).unwrap_or(loaded),
                _ => loaded,
            }
        };
        if loaded.info.fingerprint == self.issuer_fingerprint() {
            return;
        }
        match verify_issuer(&loaded, &self.anchors, &self.config) {
            Ok(()) => {
                let fingerprint = loaded.info.fingerprint.clone();
                *self.issuer.write().expect("not poisoned") = Arc::new(loaded);
                tracing::info!(pod = %self.pod_name, issuer = %fingerprint, "identity issuer updated");
                events::emit(
                    client,
                    COMPONENT,
                    &reference,
                    EventType::Normal,
                    "IssuerUpdated",
                    &format!("Updated identity issuer (pod {})", self.pod_name),
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(pod = %self.pod_name, error = %e, "identity issuer update skipped");
                events::emit(
                    client,
                    COMPONENT,
                    &reference,
                    EventType::Warning,
                    "IssuerUpdateSkipped",
                    &format!(
                        "Skipping issuer update as certs could not be verified (pod {}): {e}",
                        self.pod_name
                    ),
                )
                .await;
            }
        }
    }
}

impl Drop for IdentityInstance {
    fn drop(&mut self) {
        self.stop();
    }
}

fn load_issuer(secret: &Secret, config: &IdentityConfig) -> Result<LoadedIssuer, IdentityError> {
    let invalid = |message: String| IdentityError::IssuerInvalid {
        namespace: config.namespace.clone(),
        name: config.issuer_secret.clone(),
        message,
    };
    let field = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| invalid(format!("key {k} is missing")))
    };
    let chain =
        pki::pem_certs("tls.crt", &field("tls.crt")?).map_err(|e| invalid(e.to_string()))?;
    let key = pki::parse_key("tls.key", &field("tls.key")?).map_err(|e| invalid(e.to_string()))?;
    let info = pki::info("tls.crt", &chain[0]).map_err(|e| invalid(e.to_string()))?;
    Ok(LoadedIssuer { chain, key, info })
}

fn verify_issuer(
    issuer: &LoadedIssuer,
    anchors: &[Vec<u8>],
    config: &IdentityConfig,
) -> Result<(), IdentityError> {
    pki::verify_chain(&issuer.chain, anchors, pki::now()).map_err(|e| {
        IdentityError::IssuerInvalid {
            namespace: config.namespace.clone(),
            name: config.issuer_secret.clone(),
            message: format!("does not verify against the trust anchors loaded at start: {e}"),
        }
    })
}

/// The admin server's `/metrics`, in Prometheus' text format as the real controller serves it
/// (its issuer gauge; the rest left out).
async fn serve_admin(
    listener: tokio::net::TcpListener,
    instance: std::sync::Weak<IdentityInstance>,
) {
    let metrics = move || {
        let ttl = instance.upgrade().map(|i| i.issuer_ttl_seconds());
        async move {
            let Some(ttl) = ttl else {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new());
            };
            let body = format!(
                "# HELP issuer_cert_ttl_seconds The remaining time-to-live of the issuer certificate in seconds.\n# TYPE issuer_cert_ttl_seconds gauge\nissuer_cert_ttl_seconds {ttl}\n"
            );
            (axum::http::StatusCode::OK, body)
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(metrics));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "identity: admin server stopped");
    }
}

async fn watch_issuer(client: Client, instance: std::sync::Weak<IdentityInstance>) {
    let Some(config) = instance.upgrade().map(|i| i.config.clone()) else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let selector = format!("metadata.name={}", config.issuer_secret);
    let mut stream = watcher::watcher(secrets, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        let secret = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "identity: issuer watch error");
                continue;
            }
        };
        let Some(instance) = instance.upgrade() else {
            return;
        };
        instance.issuer_changed(&client, &secret).await;
    }
}

/// The identity service the proxies call: any running instance for each request (the
/// `linkerd-identity` Service in front of its pods).
#[derive(Default)]
pub struct IdentityService {
    instances: Mutex<Vec<Arc<IdentityInstance>>>,
    next: AtomicUsize,
    refused: Mutex<RefusedLeaves>,
    /// How late every second instance registered sees a changed issuer Secret.
    reload_lag: Duration,
    registered: AtomicUsize,
}

/// Leaves the identity service issued that the asking proxy refused, as a proxy refuses one
/// that does not verify against its trust anchors: how many, and the latest few.
#[derive(Default)]
struct RefusedLeaves {
    count: u64,
    recent: Vec<Failure>,
}

impl IdentityService {
    /// A proxy refused the leaf an instance issued it. That proxy gets no new identity: a new
    /// pod's proxy never becomes ready, a running one serves its last leaf until it expires.
    /// The traffic generator counts each as a failed exchange (see [`Self::refused_leaves`]).
    pub fn refused(&self, failure: Failure) {
        let mut refused = self.refused.lock().expect("not poisoned");
        refused.count += 1;
        super::traffic::keep_recent(&mut refused.recent, failure);
    }

    /// How many leaves were refused so far, and the latest few.
    pub fn refused_leaves(&self) -> (u64, Vec<Failure>) {
        let refused = self.refused.lock().expect("not poisoned");
        (refused.count, refused.recent.clone())
    }

    /// A service whose every second instance registered (the second, the fourth...) sees a
    /// changed issuer Secret `lag` after the others: replicas on a node whose kubelet syncs
    /// Secret volumes late.
    pub fn with_reload_lag(lag: Duration) -> Self {
        Self {
            reload_lag: lag,
            ..Self::default()
        }
    }

    pub fn register(&self, instance: Arc<IdentityInstance>) {
        if self.registered.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
            *instance.reload_lag.lock().expect("not poisoned") = self.reload_lag;
        }
        self.instances.lock().expect("not poisoned").push(instance);
    }

    pub fn unregister(&self, pod_uid: &str) {
        let mut instances = self.instances.lock().expect("not poisoned");
        for i in instances.iter().filter(|i| i.pod_uid == pod_uid) {
            i.stop();
        }
        instances.retain(|i| i.pod_uid != pod_uid);
    }

    /// Issuer fingerprints of the running instances.
    pub fn issuer_fingerprints(&self) -> Vec<String> {
        self.instances
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|i| i.issuer_fingerprint())
            .collect()
    }

    /// A leaf for `identity` (the chain, leaf first), and the pod of the instance that issued
    /// it.
    pub fn certify(
        &self,
        identity: &str,
        public_key: &KeyPair,
    ) -> Result<(Vec<Vec<u8>>, PodRef), CertifyError> {
        let instance = {
            let instances = self.instances.lock().expect("not poisoned");
            if instances.is_empty() {
                return Err(CertifyError::Unavailable);
            }
            // Each request to any instance, as a proxy's balancer spreads them: a hash of a
            // counter rather than the counter itself, whose turns would fall into step with
            // proxies refreshing at the same interval and send each one to the same instance
            // every time.
            let n = splitmix64(self.next.fetch_add(1, Ordering::Relaxed) as u64)
                % instances.len() as u64;
            instances[n as usize].clone()
        };
        let chain = instance.certify(identity, public_key, pki::now())?;
        let pod = PodRef {
            namespace: instance.config.namespace.clone(),
            name: instance.pod_name.clone(),
            uid: instance.pod_uid.clone(),
        };
        Ok((chain, pod))
    }
}

/// SplitMix64's output for `x`, a well-mixed 64-bit hash: consecutive inputs give unrelated
/// outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
