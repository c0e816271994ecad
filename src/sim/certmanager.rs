//! cert-manager stand-in: the `cert-manager.io/v1` Certificate, Issuer and ClusterIssuer kinds
//! and a controller that issues `kubernetes.io/tls` Secrets for Certificates whose issuer is
//! `selfSigned` or `ca`, renews them when due or when `Issuing=True` is set (what `cmctl renew`
//! does), and honours `privateKey.rotationPolicy`.
//!
//! The decision is a pure function ([`decide`]); the controller around it reads the Certificate,
//! its Secret and its issuer, and writes the Secret then the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::pki::{self, Template};

/// Field manager of the stand-in's writes.
pub const MANAGER: &str = "cert-manager-sim";

/// cert-manager's default certificate lifetime when `duration` is unset: 90 days.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// cert-manager's default: renew when two thirds of the lifetime have passed.
const DEFAULT_RENEW_FRACTION: f64 = 1.0 / 3.0;

/// How soon a Certificate whose issuer is not ready yet is looked at again.
const RETRY_NOT_READY: Duration = Duration::from_millis(500);

/// The stand-in's approver: while a Certificate carries this annotation, every request for it
/// is denied with the annotation's value as the reason (what approver-policy does to a request
/// no policy allows). cert-manager then records the failure on the Certificate: `Issuing=False`
/// with the request's reason and message, `lastFailureTime`, `failedIssuanceAttempts`.
pub const DENY_ANNOTATION: &str = "cert-manager-sim.trust.linkerd.io/deny-requests";

/// cert-manager's wait after a failed issuance before it tries again by itself: an hour,
/// doubling with each further failure, at most 32 hours. Setting `Issuing=True` (`cmctl
/// renew`) does not wait.
pub fn failure_backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(5);
    Duration::from_secs(3600 << doublings)
}

/// The kind the stand-in controls.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Certificate",
    namespaced,
    status = "CertificateStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    pub issuer_ref: IssuerRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKey>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CmCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// When the last issuance failed (RFC 3339); cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    /// Failed issuances since the last success (cert-manager 1.13+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_issuance_attempts: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CmCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// `Issuer` (namespaced) and `ClusterIssuer` share a spec; the stand-in knows two kinds.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Issuer",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct IssuerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "ClusterIssuer",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIssuerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaIssuer {
    pub secret_name: String,
}

/// The three CRDs. Their schemas keep unknown fields, so the real cert-manager objects (with
/// every field the stand-in ignores) are accepted unchanged.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let crd = |kind: &str,
               plural: &str,
               scope: &str,
               short: &[&str],
               columns: serde_json::Value| {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.cert-manager.io")},
            "spec": {
                "group": "cert-manager.io",
                "names": {"kind": kind, "listKind": format!("{kind}List"), "plural": plural,
                          "singular": kind.to_lowercase(), "shortNames": short,
                          "categories": ["cert-manager"]},
                "scope": scope,
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                        }
                    }}
                }]
            }
        }))
        .expect("the CRD literal is a valid CustomResourceDefinition")
    };
    let ready = json!({"name": "Ready", "type": "string",
                       "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"});
    let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"});
    vec![
        crd(
            "Certificate",
            "certificates",
            "Namespaced",
            &["cert", "certs"],
            json!([ready, {"name": "Secret", "type": "string", "jsonPath": ".spec.secretName"},
                   {"name": "Revision", "type": "integer", "jsonPath": ".status.revision"},
                   {"name": "NotAfter", "type": "string", "jsonPath": ".status.notAfter"}, age]),
        ),
        crd("Issuer", "issuers", "Namespaced", &[], json!([ready, age])),
        crd(
            "ClusterIssuer",
            "clusterissuers",
            "Cluster",
            &["ciss"],
            json!([ready, age]),
        ),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum CertManagerError {
    #[error("Certificate {namespace}/{name}: {message}")]
    Invalid {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("Certificate {namespace}/{name}: {source}")]
    Pki {
        namespace: String,
        name: String,
        #[source]
        source: pki::PkiError,
    },
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CertManagerError {
    let action = action.into();
    move |source| CertManagerError::Kube { action, source }
}

/// The Secret as the controller sees it.
#[derive(Clone, Debug)]
pub struct IssuedSecret {
    pub cert: pki::CertInfo,
    pub key_pem: String,
}

/// Why a certificate is (re-)issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// No Secret, or one without a usable certificate.
    DoesNotExist,
    /// `Issuing=True` was set (`cmctl renew`).
    ManuallyTriggered,
    /// The renewal time has come.
    Renewing,
    /// The Secret's certificate no longer matches the spec (common name, CA flag).
    SpecChanged,
}

impl IssueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueReason::DoesNotExist => "DoesNotExist",
            IssueReason::ManuallyTriggered => "ManuallyTriggered",
            IssueReason::Renewing => "Renewing",
            IssueReason::SpecChanged => "SpecChanged",
        }
    }
}

/// What the controller does with one Certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Issue now; `reuse_key` when the policy is `Never` and a key exists.
    Issue {
        reason: IssueReason,
        reuse_key: bool,
    },
    /// Up to date; look again after this long (at the renewal time).
    UpToDate { requeue: Duration },
}

/// Lifetime and renew-before of a Certificate, with cert-manager's defaults.
pub fn lifetimes(spec: &CertificateSpec) -> Result<(Duration, Duration), String> {
    let duration = match &spec.duration {
        Some(d) => crate::duration::parse(d).map_err(|e| format!("spec.duration: {e}"))?,
        None => DEFAULT_DURATION,
    };
    let renew_before = match &spec.renew_before {
        Some(d) => crate::duration::parse(d).map_err(|e| format!("spec.renewBefore: {e}"))?,
        None => duration.mul_f64(DEFAULT_RENEW_FRACTION),
    };
    if renew_before >= duration {
        return Err(format!(
            "spec.renewBefore ({renew_before:?}) must be shorter than spec.duration ({duration:?})"
        ));
    }
    Ok((duration, renew_before))
}

/// The pure decision: issue now, or when to look again.
pub fn decide(
    spec: &CertificateSpec,
    status: Option<&CertificateStatus>,
    secret: Option<&IssuedSecret>,
    renew_before: Duration,
    now: OffsetDateTime,
) -> Decision {
    let reuse_key = |secret: Option<&IssuedSecret>| {
        secret.is_some()
            && spec
                .private_key
                .as_ref()
                .and_then(|k| k.rotation_policy.as_deref())
                == Some("Never")
    };
    let issuing = status
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Issuing" && c.status == "True")
        })
        .unwrap_or(false);
    // After a failure cert-manager waits out its backoff before it tries again by itself.
    if !issuing {
        let failed_at = status
            .and_then(|s| s.last_failure_time.as_deref())
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        if let Some(failed_at) = failed_at {
            let attempts = status.and_then(|s| s.failed_issuance_attempts).unwrap_or(1);
            let retry = failed_at + failure_backoff(attempts);
            if now < retry {
                let requeue = (retry - now).try_into().unwrap_or(Duration::ZERO);
                return Decision::UpToDate { requeue };
            }
        }
    }
    let Some(existing) = secret else {
        return Decision::Issue {
            reason: IssueReason::DoesNotExist,
            reuse_key: false,
        };
    };
    if issuing {
        return Decision::Issue {
            reason: IssueReason::ManuallyTriggered,
            reuse_key: reuse_key(secret),
        };
    }
    let wanted_cn = spec.common_name.clone().unwrap_or_default();
    if existing.cert.subject_common_name != wanted_cn
        || existing.cert.is_ca != spec.is_ca.unwrap_or(false)
    {
        return Decision::Issue {
            reason: IssueReason::SpecChanged,
            reuse_key: reuse_key(secret),
        };
    }
    let renewal = existing.cert.not_after - renew_before;
    if now >= renewal {
        return Decision::Issue {
            reason: IssueReason::Renewing,
            reuse_key: reuse_key(secret),
        };
    }
    let wait = (renewal - now).try_into().unwrap_or(Duration::ZERO);
    Decision::UpToDate { requeue: wait }
}

/// `cmctl renew`: sets the Certificate's `Issuing` condition to True, reason
/// `ManuallyTriggered`, and nothing else.
pub async fn renew(client: &Client, namespace: &str, name: &str) -> Result<(), CertManagerError> {
    let certs: Api<Certificate> = Api::namespaced(client.clone(), namespace);
    let cert = certs
        .get(name)
        .await
        .map_err(kube_err(format!("reading Certificate {namespace}/{name}")))?;
    let mut conditions = cert.status.unwrap_or_default().conditions;
    conditions.retain(|c| c.type_ != "Issuing");
    conditions.push(CmCondition {
        type_: "Issuing".to_owned(),
        status: "True".to_owned(),
        reason: Some("ManuallyTriggered".to_owned()),
        message: Some("Certificate re-issuance manually triggered".to_owned()),
        last_transition_time: Some(rfc3339(pki::now())),
    });
    certs
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
        .map_err(kube_err(format!(
            "setting Issuing=True on Certificate {namespace}/{name}"
        )))?;
    Ok(())
}

/// RFC 3339, as Kubernetes writes times.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Where the controller finds ClusterIssuers' CA Secrets (cert-manager's
/// `--cluster-resource-namespace`, by default its own namespace).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub cluster_resource_namespace: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            cluster_resource_namespace: "cert-manager".to_owned(),
        }
    }
}

struct Ctx {
    client: Client,
    config: ControllerConfig,
}

/// Runs the controller until the returned future is dropped.
pub async fn run(client: Client, config: ControllerConfig) {
    let certs: Api<Certificate> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, config });
    Controller::new(certs, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(cert: Arc<Certificate>, error: &CertManagerError, _: Arc<Ctx>) -> Action {
    tracing::warn!(certificate = %cert.name_any(), %error, "cert-manager stand-in: not issued");
    Action::requeue(RETRY_NOT_READY)
}

async fn reconcile(cert: Arc<Certificate>, ctx: Arc<Ctx>) -> Result<Action, CertManagerError> {
    let namespace = cert.namespace().unwrap_or_default();
    let name = cert.name_any();
    let invalid = |message: String| CertManagerError::Invalid {
        namespace: namespace.clone(),
        name: name.clone(),
        message,
    };
    let (duration, renew_before) = lifetimes(&cert.spec).map_err(invalid)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets
        .get_opt(&cert.spec.secret_name)
        .await
        .map_err(kube_err(format!(
            "reading Secret {namespace}/{}",
            cert.spec.secret_name
        )))?;
    let issued = secret.as_ref().and_then(read_issued);
    let now = pki::now();
    let decision = decide(
        &cert.spec,
        cert.status.as_ref(),
        issued.as_ref(),
        renew_before,
        now,
    );
    let (reason, reuse_key) = match decision {
        Decision::UpToDate { requeue } => {
            // Keep status in step with a Secret issued before (e.g. after a restart).
            return Ok(Action::requeue(requeue.max(Duration::from_millis(100))));
        }
        Decision::Issue { reason, reuse_key } => (reason, reuse_key),
    };
    if let Some(denial) = cert.annotations().get(DENY_ANNOTATION) {
        return fail_issuance(&ctx.client, &cert, "Denied", denial).await;
    }

    let pki_err = |source| CertManagerError::Pki {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    };
    let key = match (reuse_key, &issued) {
        (true, Some(old)) => pki::parse_key("existing tls.key", &old.key_pem).map_err(pki_err)?,
        _ => pki::generate_key().map_err(pki_err)?,
    };
    let template = Template {
        common_name: cert.spec.common_name.clone().unwrap_or_default(),
        dns_names: cert.spec.dns_names.clone(),
        is_ca: cert.spec.is_ca.unwrap_or(false),
        not_before: now,
        not_after: now + duration,
    };
    let Some((tls_crt, ca_crt)) = sign(&ctx, &cert, &namespace, &template, &key).await? else {
        return Ok(Action::requeue(RETRY_NOT_READY));
    };

    let mut annotations = BTreeMap::new();
    for (k, v) in [
        ("cert-manager.io/certificate-name", name.clone()),
        (
            "cert-manager.io/issuer-name",
            cert.spec.issuer_ref.name.clone(),
        ),
        (
            "cert-manager.io/issuer-kind",
            issuer_kind(&cert.spec.issuer_ref).to_owned(),
        ),
        ("cert-manager.io/issuer-group", "cert-manager.io".to_owned()),
        ("cert-manager.io/common-name", template.common_name.clone()),
    ] {
        annotations.insert(k.to_owned(), v);
    }
    let data = BTreeMap::from([
        ("tls.crt".to_owned(), ByteString(tls_crt.into_bytes())),
        (
            "tls.key".to_owned(),
            ByteString(key.serialize_pem().into_bytes()),
        ),
        ("ca.crt".to_owned(), ByteString(ca_crt.into_bytes())),
    ]);
    let new_secret = Secret {
        metadata: ObjectMeta {
            name: Some(cert.spec.secret_name.clone()),
            namespace: Some(namespace.clone()),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Default::default()
    };
    // One write replaces the three keys together: readers never see a new certificate with an
    // old key.
    match secret {
        Some(old) => {
            let mut replacement = new_secret;
            replacement.metadata.resource_version = old.metadata.resource_version;
            replacement.metadata.labels = old.metadata.labels;
            secrets
                .replace(&cert.spec.secret_name, &PostParams::default(), &replacement)
                .await
        }
        None => secrets.create(&PostParams::default(), &new_secret).await,
    }
    .map_err(kube_err(format!(
        "writing Secret {namespace}/{}",
        cert.spec.secret_name
    )))?;

    let revision = cert.status.as_ref().and_then(|s| s.revision).unwrap_or(0) + 1;
    let not_after = template.not_after;
    let renewal_time = not_after - renew_before;
    let mut conditions: Vec<CmCondition> = cert
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "Issuing" && c.type_ != "Ready");
    conditions.push(CmCondition {
        type_: "Ready".to_owned(),
        status: "True".to_owned(),
        reason: Some("Ready".to_owned()),
        message: Some("Certificate is up to date and has not expired".to_owned()),
        last_transition_time: Some(rfc3339(now)),
    });
    let status = CertificateStatus {
        conditions,
        not_before: Some(rfc3339(template.not_before)),
        not_after: Some(rfc3339(not_after)),
        renewal_time: Some(rfc3339(renewal_time)),
        revision: Some(revision),
        ..CertificateStatus::default()
    };
    // A success clears the record of failures before it (explicit nulls: a merge patch).
    let mut patch = json!({ "status": status });
    patch["status"]["lastFailureTime"] = serde_json::Value::Null;
    patch["status"]["failedIssuanceAttempts"] = serde_json::Value::Null;
    let certs: Api<Certificate> = Api::namespaced(ctx.client.clone(), &namespace);
    certs
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_err(format!(
            "writing status of Certificate {namespace}/{name}"
        )))?;
    tracing::info!(
        certificate = %format!("{namespace}/{name}"),
        reason = reason.as_str(),
        revision,
        "cert-manager stand-in: issued"
    );
    let wait: Duration = (renewal_time - pki::now()).try_into().unwrap_or_default();
    Ok(Action::requeue(wait.max(Duration::from_millis(100))))
}

/// What cert-manager does when a request for `cert` fails (`reason` `Denied` or `Failed`):
/// `Issuing=False` with the request's reason and message, the failure's time and count, and a
/// warning; nothing is issued. It tries again by itself after [`failure_backoff`], or at once
/// when `Issuing=True` is set again.
async fn fail_issuance(
    client: &Client,
    cert: &Certificate,
    reason: &str,
    message: &str,
) -> Result<Action, CertManagerError> {
    let (namespace, name) = (cert.namespace().unwrap_or_default(), cert.name_any());
    let status = cert.status.clone().unwrap_or_default();
    let attempts = status.failed_issuance_attempts.unwrap_or(0) + 1;
    let mut conditions = status.conditions;
    conditions.retain(|c| c.type_ != "Issuing");
    conditions.push(CmCondition {
        type_: "Issuing".to_owned(),
        status: "False".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(format!(
            "The certificate request has failed to complete and will be retried: {message}"
        )),
        last_transition_time: Some(rfc3339(pki::now())),
    });
    let patch = json!({"status": {"conditions": conditions,
        "lastFailureTime": rfc3339(pki::now()), "failedIssuanceAttempts": attempts}});
    Api::<Certificate>::namespaced(client.clone(), &namespace)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_err(format!(
            "writing status of Certificate {namespace}/{name}"
        )))?;
    tracing::warn!(certificate = %format!("{namespace}/{name}"), reason, message, attempts, "cert-manager stand-in: issuance failed");
    Ok(Action::requeue(failure_backoff(attempts)))
}

fn issuer_kind(r: &IssuerRef) -> &str {
    r.kind.as_deref().unwrap_or("Issuer")
}

fn read_issued(secret: &Secret) -> Option<IssuedSecret> {
    let data = secret.data.as_ref()?;
    let crt = std::str::from_utf8(&data.get("tls.crt")?.0).ok()?;
    let key = std::str::from_utf8(&data.get("tls.key")?.0).ok()?;
    let first = pki::pem_certs("tls.crt", crt).ok()?.into_iter().next()?;
    Some(IssuedSecret {
        cert: pki::info("tls.crt", &first).ok()?,
        key_pem: key.to_owned(),
    })
}

/// Signs with the Certificate's issuer; `None` when the issuer or its CA Secret is not there
/// yet (cert-manager waits, so do we). Returns `(tls.crt, ca.crt)` as PEM.
async fn sign(
    ctx: &Ctx,
    cert: &Certificate,
    namespace: &str,
    template: &Template,
    key: &rcgen::KeyPair,
) -> Result<Option<(String, String)>, CertManagerError> {
    let r = &cert.spec.issuer_ref;
    let (self_signed, ca, ca_namespace) = match issuer_kind(r) {
        "ClusterIssuer" => {
            let api: Api<ClusterIssuer> = Api::all(ctx.client.clone());
            let Some(issuer) = api
                .get_opt(&r.name)
                .await
                .map_err(kube_err(format!("reading ClusterIssuer {}", r.name)))?
            else {
                return Ok(None);
            };
            (
                issuer.spec.self_signed.is_some(),
                issuer.spec.ca,
                ctx.config.cluster_resource_namespace.clone(),
            )
        }
        _ => {
            let api: Api<Issuer> = Api::namespaced(ctx.client.clone(), namespace);
            let Some(issuer) = api
                .get_opt(&r.name)
                .await
                .map_err(kube_err(format!("reading Issuer {namespace}/{}", r.name)))?
            else {
                return Ok(None);
            };
            (
                issuer.spec.self_signed.is_some(),
                issuer.spec.ca,
                namespace.to_owned(),
            )
        }
    };
    let pki_err = |source| CertManagerError::Pki {
        namespace: namespace.to_owned(),
        name: cert.name_any(),
        source,
    };
    if self_signed {
        let pem = pki::to_pem(&template.self_signed(key).map_err(pki_err)?);
        return Ok(Some((pem.clone(), pem)));
    }
    let Some(ca) = ca else {
        return Err(CertManagerError::Invalid {
            namespace: namespace.to_owned(),
            name: cert.name_any(),
            message: format!(
                "{} {} is neither selfSigned nor ca, which the stand-in does not support",
                issuer_kind(r),
                r.name
            ),
        });
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ca_namespace);
    let Some(ca_secret) = secrets
        .get_opt(&ca.secret_name)
        .await
        .map_err(kube_err(format!(
            "reading CA Secret {ca_namespace}/{}",
            ca.secret_name
        )))?
    else {
        return Ok(None);
    };
    let field = |k: &str| {
        ca_secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let (Some(ca_crt), Some(ca_key)) = (field("tls.crt"), field("tls.key")) else {
        return Ok(None);
    };
    let what = format!("CA Secret {ca_namespace}/{}", ca.secret_name);
    let ca_chain = pki::pem_certs(&what, &ca_crt).map_err(pki_err)?;
    let ca_key = pki::parse_key(&what, &ca_key).map_err(pki_err)?;
    let issued = template
        .signed_by(key, &ca_chain[0], &ca_key)
        .map_err(pki_err)?;
    // tls.crt: the new certificate, then the CA's chain unless the CA is its own root;
    // ca.crt: the root of the CA's chain, as cert-manager's CA issuer does.
    let mut tls_crt = pki::to_pem(&issued);
    let ca_is_root = ca_chain.len() == 1 && pki::signed_by(&ca_chain[0], &ca_chain[0]);
    if !ca_is_root {
        for der in &ca_chain {
            tls_crt.push_str(&pki::to_pem(der));
        }
    }
    let root = ca_chain.last().expect("pem_certs returns at least one");
    Ok(Some((tls_crt, pki::to_pem(root))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: Option<&str>) -> CertificateSpec {
        CertificateSpec {
            secret_name: "s".into(),
            common_name: Some("root.linkerd.cluster.local".into()),
            is_ca: Some(true),
            private_key: policy.map(|p| PrivateKey {
                rotation_policy: Some(p.into()),
                algorithm: None,
            }),
            ..Default::default()
        }
    }

    fn secret(not_after: OffsetDateTime) -> IssuedSecret {
        IssuedSecret {
            cert: pki::CertInfo {
                subject_common_name: "root.linkerd.cluster.local".into(),
                not_before: not_after - Duration::from_secs(3600),
                not_after,
                is_ca: true,
                fingerprint: String::new(),
                public_key_fingerprint: String::new(),
            },
            key_pem: String::new(),
        }
    }

    fn issuing() -> CertificateStatus {
        CertificateStatus {
            conditions: vec![CmCondition {
                type_: "Issuing".into(),
                status: "True".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn missing_secret_is_issued_with_a_new_key() {
        let d = decide(
            &spec(Some("Never")),
            None,
            None,
            Duration::from_secs(60),
            pki::now(),
        );
        assert_eq!(
            d,
            Decision::Issue {
                reason: IssueReason::DoesNotExist,
                reuse_key: false
            }
        );
    }

    #[test]
    fn issuing_true_renews_now_and_the_policy_decides_the_key() {
        let now = pki::now();
        let s = secret(now + Duration::from_secs(3600));
        for (policy, reuse) in [
            (None, false),
            (Some("Always"), false),
            (Some("Never"), true),
        ] {
            let d = decide(
                &spec(policy),
                Some(&issuing()),
                Some(&s),
                Duration::from_secs(60),
                now,
            );
            assert_eq!(
                d,
                Decision::Issue {
                    reason: IssueReason::ManuallyTriggered,
                    reuse_key: reuse
                },
                "policy {policy:?}"
            );
        }
    }

    #[test]
    fn renews_at_renewal_time_and_waits_before() {
        let now = pki::now();
        let s = secret(now + Duration::from_secs(100));
        assert_eq!(
            decide(&spec(None), None, Some(&s), Duration::from_secs(40), now),
            Decision::UpToDate {
                requeue: Duration::from_secs(60)
            }
        );
        assert_eq!(
            decide(&spec(None), None, Some(&s), Duration::from_secs(100), now),
            Decision::Issue {
                reason: IssueReason::Renewing,
                reuse_key: false
            }
        );
    }

    /// After a failure cert-manager waits out its backoff (an hour, doubling per further
    /// failure) before it tries again by itself; `Issuing=True` does not wait.
    #[test]
    fn a_failure_holds_issuance_for_the_backoff_unless_issuing_is_set() {
        let now = pki::now();
        let s = secret(now - Duration::from_secs(1));
        let failed = |ago: u64, attempts: u32| CertificateStatus {
            last_failure_time: Some(rfc3339(now - Duration::from_secs(ago))),
            failed_issuance_attempts: Some(attempts),
            ..Default::default()
        };
        let d = |status: &CertificateStatus| {
            decide(
                &spec(None),
                Some(status),
                Some(&s),
                Duration::from_secs(60),
                now,
            )
        };
        assert!(
            matches!(d(&failed(600, 1)), Decision::UpToDate { requeue } if requeue.as_secs() == 3000)
        );
        assert!(matches!(
            d(&failed(3600, 1)),
            Decision::Issue {
                reason: IssueReason::Renewing,
                ..
            }
        ));
        assert!(matches!(d(&failed(3600, 2)), Decision::UpToDate { .. }));
        assert_eq!(failure_backoff(9), Duration::from_secs(32 * 3600));
        let mut manual = failed(600, 1);
        manual.conditions = issuing().conditions;
        assert!(matches!(
            d(&manual),
            Decision::Issue {
                reason: IssueReason::ManuallyTriggered,
                ..
            }
        ));
    }

    #[test]
    fn changed_common_name_reissues() {
        let now = pki::now();
        let mut sp = spec(None);
        sp.common_name = Some("other".into());
        let s = secret(now + Duration::from_secs(3600));
        assert!(matches!(
            decide(&sp, None, Some(&s), Duration::from_secs(60), now),
            Decision::Issue {
                reason: IssueReason::SpecChanged,
                ..
            }
        ));
    }

    #[test]
    fn default_lifetimes_are_cert_managers() {
        let (d, rb) = lifetimes(&spec(None)).unwrap();
        assert_eq!(d, DEFAULT_DURATION);
        assert_eq!(rb, DEFAULT_DURATION / 3);
        let mut sp = spec(None);
        sp.duration = Some("1h".into());
        sp.renew_before = Some("2h".into());
        assert!(lifetimes(&sp).unwrap_err().contains("spec.renewBefore"));
    }
}
