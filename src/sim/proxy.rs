//! One simulated `linkerd-proxy` per meshed pod.
//!
//! Faithful in what a rotation depends on: the trust anchors come only from the proxy's own
//! environment (`LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS`, read at start, so only a restart changes
//! them); it holds one key for its life and asks the identity service for a leaf for its
//! identity, accepts the answer only if it verifies against its anchors (otherwise keeps the
//! leaf it has), and refreshes at 70 % of the remaining lifetime clamped to
//! `LINKERD2_PROXY_IDENTITY_MIN_REFRESH`/`MAX_REFRESH`. On `podIP:4191` (or the port of
//! `LINKERD2_PROXY_ADMIN_LISTEN_ADDR`) it serves TLS 1.3 with leaf + issuer, verifying a client
//! certificate when one is offered (against its own anchors), and letting a client without one
//! read the chain (what `linkerd identity` and our probe do).
//! Like linkerd2-proxy, it neither offers nor accepts TLS session resumption: every connection
//! is a full handshake.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::identity::IdentityService;
use super::pki;
use super::traffic::{Failure, FailureReason, RejectedBy};

/// The proxy admin port (`linkerd-admin`), where `linkerd identity` reads the live chain.
pub const ADMIN_PORT: u16 = 4191;

/// Env names the proxy reads, Linkerd's own.
pub const ENV_TRUST_ANCHORS: &str = "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS";
pub const ENV_LOCAL_NAME: &str = "LINKERD2_PROXY_IDENTITY_LOCAL_NAME";
pub const ENV_MIN_REFRESH: &str = "LINKERD2_PROXY_IDENTITY_MIN_REFRESH";
pub const ENV_MAX_REFRESH: &str = "LINKERD2_PROXY_IDENTITY_MAX_REFRESH";
/// Where the admin server listens (`0.0.0.0:4191`); the injector sets it from
/// `config.linkerd.io/admin-port`.
pub const ENV_ADMIN_LISTEN_ADDR: &str = "LINKERD2_PROXY_ADMIN_LISTEN_ADDR";

/// The share of a leaf's remaining lifetime after which the proxy asks for a new one
/// (linkerd2-proxy's identity client).
pub const REFRESH_FRACTION: f64 = 0.7;

/// How soon a failed certificate request is retried. The real proxy backs off from 100 ms; a
/// short fixed delay keeps scaled-down tests responsive.
const CERTIFY_RETRY: Duration = Duration::from_millis(250);

/// A connection that never completes its handshake is dropped after this (longer than the
/// traffic generator's own timeout, which then counts the stuck handshake).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// When the next refresh is due: 70 % of the remaining lifetime, clamped.
pub fn refresh_delay(
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    min_refresh: Duration,
    max_refresh: Duration,
) -> Duration {
    let remaining: Duration = (not_after - now).try_into().unwrap_or_default();
    remaining
        .mul_f64(REFRESH_FRACTION)
        .clamp(min_refresh, max_refresh.max(min_refresh))
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("pod {pod}: env {name} is missing")]
    MissingEnv { pod: String, name: &'static str },
    #[error("pod {pod}: env {name}: {message}")]
    InvalidEnv {
        pod: String,
        name: &'static str,
        message: String,
    },
    #[error("pod {pod}: binding {addr}: {source}")]
    Bind {
        pod: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: TLS configuration: {message}")]
    Tls { pod: String, message: String },
}

/// The proxy's settings, read from its container environment at start.
#[derive(Clone, Debug)]
pub struct ProxyEnv {
    pub identity: String,
    pub anchors_pem: String,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// The admin server's port: TLS with the live leaf there.
    pub admin_port: u16,
}

impl ProxyEnv {
    /// Reads the proxy's env; `defaults` are `(min, max)` refresh when the env does not set them
    /// (Linkerd's are 10 s and 24 h; the simulator scales them down).
    pub fn from_env(
        pod: &str,
        env: &[(String, String)],
        defaults: (Duration, Duration),
    ) -> Result<Self, ProxyError> {
        // Kubernetes gives the last of duplicate names; so do we.
        let get = |name: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let need = |name: &'static str| {
            get(name).ok_or_else(|| ProxyError::MissingEnv {
                pod: pod.to_owned(),
                name,
            })
        };
        let duration = |name: &'static str, default: Duration| match get(name) {
            None => Ok(default),
            Some(v) => crate::duration::parse(&v).map_err(|e| ProxyError::InvalidEnv {
                pod: pod.to_owned(),
                name,
                message: e.to_string(),
            }),
        };
        Ok(Self {
            identity: need(ENV_LOCAL_NAME)?,
            anchors_pem: need(ENV_TRUST_ANCHORS)?,
            min_refresh: duration(ENV_MIN_REFRESH, defaults.0)?,
            max_refresh: duration(ENV_MAX_REFRESH, defaults.1)?,
            admin_port: match get(ENV_ADMIN_LISTEN_ADDR) {
                None => ADMIN_PORT,
                Some(v) => v.parse::<SocketAddr>().map(|a| a.port()).map_err(|e| {
                    ProxyError::InvalidEnv {
                        pod: pod.to_owned(),
                        name: ENV_ADMIN_LISTEN_ADDR,
                        message: format!("{v:?}: {e}"),
                    }
                })?,
            },
        })
    }
}

/// A leaf the proxy holds.
#[derive(Clone)]
pub struct Leaf {
    pub chain: Vec<Vec<u8>>,
    pub not_after: OffsetDateTime,
    pub issuer_fingerprint: String,
    certified: Arc<CertifiedKey>,
}

/// The current leaf, shared by the server and client sides.
#[derive(Default)]
struct LeafSlot(RwLock<Option<Arc<Leaf>>>);

impl fmt::Debug for LeafSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeafSlot")
    }
}

impl LeafSlot {
    fn get(&self) -> Option<Arc<Leaf>> {
        self.0.read().expect("not poisoned").clone()
    }
}

impl ResolvesServerCert for LeafSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get().map(|l| l.certified.clone())
    }
}

impl ResolvesClientCert for LeafSlot {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get().map(|l| l.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// Which pod a proxy belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A running simulated proxy.
pub struct Proxy {
    pub pod: PodRef,
    pub addr: SocketAddr,
    pub env: ProxyEnv,
    anchors: Vec<Vec<u8>>,
    anchors_fingerprint: String,
    leaf: Arc<LeafSlot>,
    client_config: Arc<ClientConfig>,
    ready: watch::Sender<bool>,
    /// Set first thing by [`Proxy::stop`]: the refresh task, between its last await and its
    /// abort, may still mark the proxy ready, and a stopped proxy must never read as ready.
    stopped: std::sync::atomic::AtomicBool,
    refreshes: AtomicU64,
    last_certify_error: Mutex<Option<String>>,
    /// The issuer whose leaf this proxy last refused, so that each is counted once, not at
    /// every retry.
    refused_issuer: Mutex<Option<String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Proxy {
    /// Binds `ip:4191` (or the admin port its env sets), then starts serving and asking for
    /// leaves.
    pub async fn start(
        pod: PodRef,
        ip: Ipv4Addr,
        env: ProxyEnv,
        identity: Arc<IdentityService>,
    ) -> Result<Arc<Self>, ProxyError> {
        let pod_name = pod.to_string();
        let tls_err = |message: String| ProxyError::Tls {
            pod: pod_name.clone(),
            message,
        };
        let anchors = pki::pem_certs(ENV_TRUST_ANCHORS, &env.anchors_pem).map_err(|e| {
            ProxyError::InvalidEnv {
                pod: pod_name.clone(),
                name: ENV_TRUST_ANCHORS,
                message: e.to_string(),
            }
        })?;
        let anchors_fingerprint = crate::bundle::Bundle::from_pem("anchors", &env.anchors_pem)
            .map(|b| b.fingerprint())
            .unwrap_or_default();
        let mut roots = RootCertStore::empty();
        for der in &anchors {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| tls_err(format!("trust anchor: {e}")))?;
        }
        let roots = Arc::new(roots);
        let leaf = Arc::new(LeafSlot::default());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls_err(e.to_string()))?;
        let mut server_config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(leaf.clone());
        let mut client_config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(leaf.clone());
        // As linkerd2-proxy: no session resumption, so that every connection checks both
        // sides' leaves as they are now (a resumed session checks none, and would let a leaf
        // its peer no longer trusts pass).
        server_config.send_tls13_tickets = 0;
        server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        client_config.resumption = rustls::client::Resumption::disabled();

        let addr = SocketAddr::from((ip, env.admin_port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind {
                pod: pod_name.clone(),
                addr,
                source,
            })?;
        let key = pki::generate_key().map_err(|e| tls_err(e.to_string()))?;
        let (ready, _) = watch::channel(false);
        let proxy = Arc::new(Self {
            pod,
            addr,
            env,
            anchors,
            anchors_fingerprint,
            leaf,
            client_config: Arc::new(client_config),
            ready,
            stopped: std::sync::atomic::AtomicBool::new(false),
            refreshes: AtomicU64::new(0),
            last_certify_error: Mutex::new(None),
            refused_issuer: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        let serve = tokio::spawn(serve(listener, Arc::new(server_config)));
        let refresh = tokio::spawn(refresh_loop(Arc::downgrade(&proxy), key, identity));
        proxy
            .tasks
            .lock()
            .expect("not poisoned")
            .extend([serve, refresh]);
        Ok(proxy)
    }

    /// Stops serving and refreshing; the port is free once this returns.
    pub fn stop(&self) {
        // Unready first: a connection the stopping closes is then "peer gone" to the traffic
        // generator, never a failure of a ready proxy.
        self.stopped.store(true, Ordering::SeqCst);
        self.ready.send_replace(false);
        for task in self.tasks.lock().expect("not poisoned").drain(..) {
            task.abort();
        }
    }

    /// The leaf held now, if any.
    pub fn leaf(&self) -> Option<Arc<Leaf>> {
        self.leaf.get()
    }

    /// Resolves once the proxy holds a leaf (its readiness, like the real proxy's `/ready`).
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() && !self.stopped.load(Ordering::SeqCst)
    }

    /// Fingerprint of the bundle the proxy started with (SHA-256 of its canonical form).
    pub fn anchors_fingerprint(&self) -> &str {
        &self.anchors_fingerprint
    }

    pub fn anchors(&self) -> &[Vec<u8>] {
        &self.anchors
    }

    /// How many leaves it has been issued.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    pub fn last_certify_error(&self) -> Option<String> {
        self.last_certify_error
            .lock()
            .expect("not poisoned")
            .clone()
    }

    /// The client side of an mTLS connection from this proxy: its anchors, its leaf.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, config: Arc<ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(Ok(mut tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                // One byte tells the client its certificate was accepted (with TLS 1.3 the
                // client finishes before the server has judged it).
                let _ = tls.write_all(b"k").await;
                let _ = tls.shutdown().await;
            }
        });
    }
}

async fn refresh_loop(
    proxy: std::sync::Weak<Proxy>,
    key: rcgen::KeyPair,
    identity: Arc<IdentityService>,
) {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let Ok(signing_key) = provider().key_provider.load_private_key(key_der) else {
        tracing::error!("simulated proxy: could not load its own key");
        return;
    };
    loop {
        let Some(p) = proxy.upgrade() else { return };
        let delay = match identity
            .certify(&p.env.identity, &key)
            .map_err(|e| e.to_string())
            .and_then(|(chain, issued_by)| {
                let now = pki::now();
                let issuer_fingerprint = chain
                    .get(1)
                    .map(|d| crate::bundle::sha256_hex(d))
                    .unwrap_or_default();
                // The proxy accepts a leaf only if it verifies against its own anchors.
                if let Err(e) = pki::verify_chain(&chain, &p.anchors, now) {
                    // Counted once per issuer, not at every retry.
                    let mut refused = p.refused_issuer.lock().expect("not poisoned");
                    if refused.as_deref() != Some(issuer_fingerprint.as_str()) {
                        *refused = Some(issuer_fingerprint);
                        identity.refused(Failure {
                            client: p.pod.clone(),
                            server: issued_by,
                            reason: FailureReason::LeafRefused,
                            rejected_by: RejectedBy::Client,
                            at: std::time::Instant::now(),
                        });
                    }
                    return Err(format!("issued chain does not verify: {e}"));
                }
                let leaf_info = pki::info("leaf", &chain[0]).map_err(|e| e.to_string())?;
                let certified = Arc::new(CertifiedKey::new(
                    chain
                        .iter()
                        .map(|d| CertificateDer::from(d.clone()))
                        .collect(),
                    signing_key.clone(),
                ));
                Ok(Leaf {
                    chain,
                    not_after: leaf_info.not_after,
                    issuer_fingerprint,
                    certified,
                })
            }) {
            Ok(leaf) => {
                let delay = refresh_delay(
                    leaf.not_after,
                    pki::now(),
                    p.env.min_refresh,
                    p.env.max_refresh,
                );
                *p.leaf.0.write().expect("not poisoned") = Some(Arc::new(leaf));
                p.refreshes.fetch_add(1, Ordering::Relaxed);
                *p.last_certify_error.lock().expect("not poisoned") = None;
                *p.refused_issuer.lock().expect("not poisoned") = None;
                p.ready.send_replace(true);
                delay
            }
            Err(e) => {
                tracing::debug!(pod = %p.pod, error = %e, "simulated proxy: certify failed");
                *p.last_certify_error.lock().expect("not poisoned") = Some(e);
                CERTIFY_RETRY
            }
        };
        drop(p);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_seventy_percent_of_remaining_clamped() {
        let now = pki::now();
        let s = Duration::from_secs;
        assert_eq!(refresh_delay(now + s(100), now, s(1), s(3600)), s(70));
        assert_eq!(refresh_delay(now + s(100), now, s(1), s(30)), s(30));
        assert_eq!(refresh_delay(now + s(10), now, s(10), s(3600)), s(10));
        // Already expired: the minimum, never zero.
        assert_eq!(refresh_delay(now - s(10), now, s(1), s(3600)), s(1));
    }

    #[test]
    fn env_defaults_and_overrides() {
        let env = vec![
            (
                ENV_LOCAL_NAME.to_owned(),
                "a.b.serviceaccount.identity.linkerd.cluster.local".to_owned(),
            ),
            (ENV_TRUST_ANCHORS.to_owned(), "pem".to_owned()),
            (ENV_MAX_REFRESH.to_owned(), "24h".to_owned()),
            (ENV_MAX_REFRESH.to_owned(), "300s".to_owned()),
        ];
        let e = ProxyEnv::from_env(
            "p",
            &env,
            (Duration::from_secs(10), Duration::from_secs(86400)),
        )
        .unwrap();
        assert_eq!(e.min_refresh, Duration::from_secs(10));
        assert_eq!(
            e.max_refresh,
            Duration::from_secs(300),
            "the last duplicate wins"
        );
        let err =
            ProxyEnv::from_env("ns/p", &env[1..], (Duration::ZERO, Duration::ZERO)).unwrap_err();
        assert!(err.to_string().contains(ENV_LOCAL_NAME), "{err}");
        // The admin port: Linkerd's default, or the one its listen address names.
        assert_eq!(e.admin_port, ADMIN_PORT);
        let with_admin = |addr: &str| {
            let mut env = env.clone();
            env.push((ENV_ADMIN_LISTEN_ADDR.to_owned(), addr.to_owned()));
            ProxyEnv::from_env("ns/p", &env, (Duration::ZERO, Duration::ZERO))
        };
        assert_eq!(with_admin("0.0.0.0:4444").unwrap().admin_port, 4444);
        let err = with_admin("4444").unwrap_err();
        assert!(err.to_string().contains(ENV_ADMIN_LISTEN_ADDR), "{err}");
    }
}
