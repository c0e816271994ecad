//! The `TrustAnchorRotation` custom resource (`trust.linkerd.io/v1alpha1`, short name `tar`).
//!
//! Field for field the shape of Buoyant Enterprise for Linkerd's resource (DESIGN.md section 2),
//! plus our optional additions to the spec, each with a safe default. The schema must be
//! accepted by Kubernetes v1.20: validation is by OpenAPI `pattern` and `enum`, never CEL.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The one instance the operator reconciles (created by the user; see the README).
pub const CLUSTER_ROTATION_NAME: &str = "cluster";

/// Default accelerated refresh interval published to proxies during a rotation. Five minutes is
/// BEL's default: short enough that every leaf is re-issued by the new issuer within minutes,
/// long enough not to load the identity controller.
pub const DEFAULT_REFRESH_INTERVAL: &str = "5m";

/// A Go-style duration (`300s`, `5m`, `1h30m`, `1.5h`): one or more number+unit pairs, no sign.
/// The API server enforces it, so `abc` and `-5m` never reach the operator. A zero duration
/// passes here (Kubernetes v1.20 has no CEL to compare durations); the reconciler parks the
/// rotation on it with a blockingMessage that names the field and says why.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// Desired behaviour of trust-anchor rotations.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "trust.linkerd.io",
    version = "v1alpha1",
    kind = "TrustAnchorRotation",
    plural = "trustanchorrotations",
    shortname = "tar",
    status = "TrustAnchorRotationStatus",
    doc = "A trust-anchor rotation of the Linkerd mesh: desired behaviour in spec, observed progress in status. The operator reconciles the one named `cluster`.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Current rotation phase"}"#,
    printcolumn = r#"{"name":"Bundle","type":"string","jsonPath":".status.trustBundle.progress","description":"Meshed workload pods (Pending included, control plane excluded) holding the desired trust bundle (converged/target)"}"#,
    printcolumn = r#"{"name":"Certs","type":"string","jsonPath":".status.workloadCertificates.progress","description":"Meshed pods whose leaf is signed by the active issuer (converged/target)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // `-o wide` only: how long the phase has lasted (a rotation stuck for hours shows), and
    // what it waits for.
    printcolumn = r#"{"name":"Since","type":"date","priority":1,"jsonPath":".status.lastPhaseTransitionTime","description":"Time since the last phase transition"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.blockingMessage","description":"What the rotation waits for (status.blockingMessage)"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrustAnchorRotationSpec {
    /// Maximum proxy certificate refresh interval published to meshed pods while a rotation is
    /// in progress (`LINKERD2_PROXY_IDENTITY_MAX_REFRESH`), as a duration such as `5m`.
    #[serde(default = "default_refresh_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"))]
    pub workload_certificate_refresh_interval: String,

    /// How meshed workloads are restarted onto a new trust bundle. Default `Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_restart: Option<DataPlaneRestart>,

    /// How the identity issuer is renewed onto the new anchor. Default `Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_renewal: Option<IssuerRenewal>,

    /// Stop advancing: the operator observes and reports (its status, and the Warning event of
    /// an issuer renewed out of order), but writes nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

fn default_refresh_interval() -> String {
    DEFAULT_REFRESH_INTERVAL.to_owned()
}

impl Default for TrustAnchorRotationSpec {
    fn default() -> Self {
        Self {
            workload_certificate_refresh_interval: default_refresh_interval(),
            data_plane_restart: None,
            issuer_renewal: None,
            paused: None,
        }
    }
}

/// Who restarts meshed workloads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestartPolicy {
    /// The operator waits and names the workloads that need a restart (BEL's behaviour).
    #[default]
    Manual,
    /// The operator restarts them itself, paced.
    Automatic,
}

/// Who renews the identity issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RenewalPolicy {
    /// A person runs `cmctl renew` when the status asks for it (BEL's behaviour).
    #[default]
    Manual,
    /// The operator sets `Issuing=True` on the issuer Certificate once it is safe.
    Automatic,
}

/// Data-plane restart settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneRestart {
    /// `Manual` (default) or `Automatic`.
    #[serde(default)]
    pub policy: RestartPolicy,
    /// With `Automatic`: how many workloads may be restarting at once. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent_workloads: Option<u32>,
}

/// Issuer renewal settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRenewal {
    /// `Manual` (default) or `Automatic`.
    #[serde(default)]
    pub policy: RenewalPolicy,
}

/// Observed progress of the rotation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustAnchorRotationStatus {
    /// Current phase of the rotation state machine.
    #[serde(default)]
    pub phase: Phase,
    /// What the rotation is waiting for, when it cannot advance on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocking_message: Option<String>,
    /// Fingerprint (lowercase hex SHA-256 of the DER) of the identity issuer in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_issuer_fingerprint: Option<String>,
    /// Fingerprint of the anchor held in the previous-anchor Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_anchor_fingerprint: Option<String>,
    /// When `phase` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_phase_transition_time: Option<Time>,
    /// The accelerated refresh interval of the rotation in progress, if any: set from
    /// PropagatingTrustRoots until RemovingOldTrustRoots (the webhook gives it to new pods
    /// through RenewingWorkloadCerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_certificate_refresh_interval: Option<String>,
    /// How many meshed workload pods (Pending included, control plane excluded) hold the
    /// desired trust bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<ConvergenceStatus>,
    /// How many meshed pods hold a leaf signed by the active issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_certificates: Option<ConvergenceStatus>,
    /// The certificates the desired bundle is built from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_fingerprints: Vec<SourceFingerprint>,
    /// Standard conditions, for example `OutOfOrderIssuerRotation` and `TrustBundleContested`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The operator's latest restores of a trust bundle that another writer overwrote after
    /// the operator had written it, oldest first (at most five are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundle_overwrites: Vec<BundleOverwrite>,
    /// Fingerprint of the trust bundle the operator last wrote. A ConfigMap replaced by
    /// another writer (`kubectl replace`, `helm upgrade --force`) loses the operator's
    /// annotations and its managedFields entry with the write: this is what remembers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_bundle_fingerprint: Option<String>,
}

/// A write of the trust bundle by someone else, which the operator undid.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleOverwrite {
    /// When the operator restored the bundle.
    pub restored_at: Time,
    /// The ConfigMap's `resourceVersion` the restore replaced: the other writer's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_version: Option<String>,
    /// The field managers that held the bundle's key in the ConfigMap's `managedFields` when
    /// it was restored: who wrote over it (`helm`, `kubectl-client-side-apply`, a GitOps
    /// controller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub field_managers: Vec<String>,
}

/// The phases of a rotation (DESIGN.md section 2).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    #[default]
    Synced,
    RefreshingControlPlane,
    PropagatingTrustRoots,
    WaitingForRemoteClusters,
    WaitingForIdentityRotation,
    RenewingWorkloadCerts,
    RemovingOldTrustRoots,
}

impl Phase {
    /// Every phase, in rotation order.
    pub const ALL: [Phase; 7] = [
        Phase::Synced,
        Phase::RefreshingControlPlane,
        Phase::PropagatingTrustRoots,
        Phase::WaitingForRemoteClusters,
        Phase::WaitingForIdentityRotation,
        Phase::RenewingWorkloadCerts,
        Phase::RemovingOldTrustRoots,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Synced => "Synced",
            Phase::RefreshingControlPlane => "RefreshingControlPlane",
            Phase::PropagatingTrustRoots => "PropagatingTrustRoots",
            Phase::WaitingForRemoteClusters => "WaitingForRemoteClusters",
            Phase::WaitingForIdentityRotation => "WaitingForIdentityRotation",
            Phase::RenewingWorkloadCerts => "RenewingWorkloadCerts",
            Phase::RemovingOldTrustRoots => "RemovingOldTrustRoots",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a group of pods has caught up.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConvergenceState {
    #[default]
    Converging,
    Converged,
}

/// Progress of one convergence group.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConvergenceStatus {
    /// `Converging` or `Converged`.
    pub status: ConvergenceState,
    /// Pods that hold what is desired.
    pub converged_pods: u32,
    /// Pods that must hold it.
    pub target_pods: u32,
    /// `converged/target`, for `kubectl get tar` (a printer column shows one field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

impl ConvergenceStatus {
    pub fn new(converged_pods: u32, target_pods: u32) -> Self {
        let status = if converged_pods >= target_pods {
            ConvergenceState::Converged
        } else {
            ConvergenceState::Converging
        };
        Self {
            status,
            converged_pods,
            target_pods,
            progress: Some(format!("{converged_pods}/{target_pods}")),
        }
    }
}

/// Where a certificate of the desired bundle comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SourceKind {
    #[default]
    Secret,
    ConfigMap,
    Inline,
}

/// One certificate of the desired bundle and its source object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceFingerprint {
    /// Lowercase hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    /// `secret` (default), `configMap` or `inline`.
    #[serde(default)]
    pub kind: SourceKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A standard status condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// For example `OutOfOrderIssuerRotation`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// CamelCase reason, for example `IssuerRotationInOrder`.
    pub reason: String,
    /// Human-readable detail (may be empty). Required, as in `metav1.Condition`: an
    /// empty-string schema default is rejected by the v1.20 API server.
    pub message: String,
    pub last_transition_time: Time,
}

/// The value of a condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// The CRD as YAML, exactly as `trust-rotation-operator crd` prints it and the chart ships it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = TrustAnchorRotation::crd();
    // `helm uninstall` of the CRD chart would otherwise delete the CRD, and with it the
    // `cluster` resource whose status is the only record of a rotation in progress.
    crd.metadata
        .annotations
        .get_or_insert_default()
        .insert("helm.sh/resource-policy".to_owned(), "keep".to_owned());
    let yaml = serde_yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated by `trust-rotation-operator crd`; do not edit by hand.\n{yaml}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn pattern_constant_matches_schema_attribute() {
        // The attribute needs a literal; this keeps the documented constant honest.
        let crd = serde_json::to_value(TrustAnchorRotation::crd()).unwrap();
        let pattern = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["workloadCertificateRefreshInterval"]["pattern"];
        assert_eq!(pattern, DURATION_PATTERN);
    }

    #[test]
    fn spec_defaults_to_five_minutes_and_manual_policies() {
        let spec: TrustAnchorRotationSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, TrustAnchorRotationSpec::default());
        assert_eq!(spec.workload_certificate_refresh_interval, "5m");
        assert!(spec.data_plane_restart.is_none() && spec.issuer_renewal.is_none());
    }

    #[test]
    fn status_defaults_to_synced() {
        let status: TrustAnchorRotationStatus = serde_json::from_str("{}").unwrap();
        assert_eq!(status.phase, Phase::Synced);
    }

    #[test]
    fn convergence_status_derives_state_and_progress() {
        let c = ConvergenceStatus::new(3, 5);
        assert_eq!(c.status, ConvergenceState::Converging);
        assert_eq!(c.progress.as_deref(), Some("3/5"));
        assert_eq!(
            ConvergenceStatus::new(5, 5).status,
            ConvergenceState::Converged
        );
    }

    #[test]
    fn phase_names_round_trip() {
        for phase in Phase::ALL {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{}\"", phase.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), phase);
        }
    }
}
