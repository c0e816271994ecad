//! The steps of Linkerd's manual trust-anchor rotation runbook, done through the API as a
//! person with `kubectl` and `cmctl` would: renew a certificate and wait for its Secret, write
//! the bundle, restart the control plane or the workloads and wait for the rollouts. The tests
//! use them to prove the simulator is faithful (the right order works, the wrong ones break).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use super::linkerd::{self, Names};
use super::{Mesh, SimError, certmanager, pki, wait_for};

/// A certificate Secret's first certificate: PEM and fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cert {
    pub pem: String,
    pub fingerprint: String,
    /// SHA-256 of the public key: the same after a renewal with `rotationPolicy: Never`.
    pub public_key_fingerprint: String,
}

impl Cert {
    fn from_tls_crt(what: &str, tls_crt: &str) -> Result<Self, SimError> {
        let invalid = |e: pki::PkiError| SimError::Invalid(e.to_string());
        let ders = pki::pem_certs(what, tls_crt).map_err(invalid)?;
        let info = pki::info(what, &ders[0]).map_err(invalid)?;
        Ok(Self {
            pem: pki::to_pem(&ders[0]),
            fingerprint: info.fingerprint,
            public_key_fingerprint: info.public_key_fingerprint,
        })
    }
}

/// The runbook's steps over one mesh.
pub struct Runbook<'a> {
    pub mesh: &'a Mesh,
    /// The most any one step may take.
    pub step_timeout: Duration,
}

impl<'a> Runbook<'a> {
    pub fn new(mesh: &'a Mesh) -> Self {
        Self {
            mesh,
            step_timeout: Duration::from_secs(180),
        }
    }

    fn names(&self) -> &Names {
        self.mesh.names()
    }

    async fn secret_cert(&self, namespace: &str, name: &str) -> Result<Cert, SimError> {
        let pem = linkerd::secret_certificate(self.mesh.client(), namespace, name)
            .await?
            .ok_or_else(|| SimError::Invalid(format!("Secret {namespace}/{name} is missing")))?;
        Cert::from_tls_crt(&format!("Secret {namespace}/{name}"), &pem)
    }

    /// The current trust anchor.
    pub async fn anchor(&self) -> Result<Cert, SimError> {
        let n = self.names();
        self.secret_cert(&n.cert_manager_namespace, &n.anchor).await
    }

    /// The current identity issuer.
    pub async fn issuer(&self) -> Result<Cert, SimError> {
        let n = self.names();
        self.secret_cert(&n.linkerd_namespace, &n.identity_issuer)
            .await
    }

    /// `cmctl renew` on a Certificate, then waits for its Secret to hold a new certificate.
    async fn renew(&self, namespace: &str, name: &str, secret: &str) -> Result<Cert, SimError> {
        let before = self.secret_cert(namespace, secret).await?;
        certmanager::renew(self.mesh.client(), namespace, name)
            .await
            .map_err(|e| SimError::Invalid(e.to_string()))?;
        wait_for(
            &format!("Secret {namespace}/{secret} to be re-issued"),
            self.step_timeout,
            || async {
                let now = self.secret_cert(namespace, secret).await?;
                Ok((now != before).then_some(now))
            },
        )
        .await
    }

    /// `cmctl renew -n cert-manager linkerd-trust-anchor`.
    pub async fn renew_anchor(&self) -> Result<Cert, SimError> {
        let n = self.names().clone();
        self.renew(&n.cert_manager_namespace, &n.anchor, &n.anchor)
            .await
    }

    /// `cmctl renew -n linkerd linkerd-identity-issuer`.
    pub async fn renew_issuer(&self) -> Result<Cert, SimError> {
        let n = self.names().clone();
        self.renew(&n.linkerd_namespace, &n.identity_issuer, &n.identity_issuer)
            .await
    }

    /// Writes the bundle ConfigMap with these anchors (canonical form), then waits until the
    /// proxy injector's mounted copy has it, as a careful operator would before restarting.
    pub async fn write_bundle(&self, anchors: &[&Cert]) -> Result<(), SimError> {
        let sources: Vec<(String, String)> = anchors
            .iter()
            .map(|c| (format!("anchor {}", &c.fingerprint[..12]), c.pem.clone()))
            .collect();
        let bundle = crate::bundle::Bundle::from_sources(&sources)
            .map_err(|e| SimError::Invalid(e.to_string()))?;
        let pem = bundle.to_pem();
        linkerd::write_bundle(self.mesh.client(), self.names(), &pem).await?;
        wait_for(
            "the proxy injector's copy of the bundle",
            self.step_timeout,
            || async {
                Ok((self.mesh.injector_bundle().as_deref() == Some(pem.as_str())).then_some(()))
            },
        )
        .await
    }

    /// `kubectl rollout restart` of the control plane, waiting for it.
    pub async fn restart_control_plane(&self) -> Result<Duration, SimError> {
        let started = Instant::now();
        linkerd::restart_namespace(
            self.mesh.client(),
            &self.names().linkerd_namespace,
            self.step_timeout,
        )
        .await?;
        Ok(started.elapsed())
    }

    /// `kubectl rollout restart` of every Deployment in these namespaces, all at once, waiting
    /// for all of them.
    pub async fn restart_workloads(&self, namespaces: &[String]) -> Result<Duration, SimError> {
        let started = Instant::now();
        let restarts = namespaces
            .iter()
            .map(|ns| linkerd::restart_namespace(self.mesh.client(), ns, self.step_timeout));
        for r in futures::future::join_all(restarts).await {
            r?;
        }
        Ok(started.elapsed())
    }

    /// Events with this reason in the Linkerd namespace.
    pub async fn events(&self, reason: &str) -> Result<Vec<Event>, SimError> {
        let api: Api<Event> =
            Api::namespaced(self.mesh.client().clone(), &self.names().linkerd_namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|source| SimError::Kube {
                action: "listing events in the Linkerd namespace".to_owned(),
                source,
            })?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect())
    }

    /// Waits for at least one event with this reason.
    pub async fn wait_event(&self, reason: &str) -> Result<Event, SimError> {
        wait_for(&format!("a {reason} event"), self.step_timeout, || async {
            Ok(self.events(reason).await?.into_iter().next())
        })
        .await
    }
}
