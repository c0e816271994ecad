//! AdmissionReview in, AdmissionReview out: decoding, the Pod-CREATE gate, and the response.
//! Pure: the server wraps it with TLS, metrics and logs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::patch::{PodMutation, RotationView, SkipReason, mutate_pod};

/// The only AdmissionReview version we accept (the webhook configuration asks for v1 only).
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// How one admission ended, for metrics (bounded label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A patch was returned.
    Patched,
    /// A meshed pod that already had everything.
    Unchanged,
    /// Not ours to patch: not a Pod CREATE, not meshed, control plane, mirror, or the view has
    /// not synced yet.
    Skipped,
    /// The body was not a usable AdmissionReview v1.
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Invalid => "invalid",
        }
    }
}

/// Everything the server needs to answer and to account for one request.
#[derive(Debug)]
pub struct Reviewed {
    pub review: AdmissionReview<DynamicObject>,
    pub outcome: Outcome,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Why the request was invalid, why a pod was skipped, or a problem with its annotations,
    /// for the log.
    pub note: Option<String>,
    /// The pod's additional-env annotation was not a JSON list (left untouched).
    pub invalid_additional_env: bool,
}

/// The first look at a body: enough to route it, nothing of the object decoded.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<EnvelopeRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeRequest {
    uid: Option<String>,
    #[serde(default)]
    kind: Option<Gvk>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    object: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// Answers one AdmissionReview body. `view` is `None` until the webhook's watches have synced:
/// then every request is allowed unpatched. `namespace_annotations` looks up a namespace's
/// annotations (for `linkerd.io/inject`).
pub fn review(
    body: &[u8],
    view: Option<&RotationView>,
    namespace_annotations: &dyn Fn(&str) -> Option<BTreeMap<String, String>>,
) -> Reviewed {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => return invalid(None, format!("body is not an AdmissionReview: {e}")),
    };
    let uid = envelope.request.as_ref().and_then(|r| r.uid.clone());
    if envelope.kind.as_deref() != Some("AdmissionReview")
        || envelope.api_version.as_deref() != Some(ADMISSION_API_VERSION)
    {
        return invalid(
            uid,
            format!(
                "expected kind AdmissionReview, apiVersion {ADMISSION_API_VERSION}; got kind {:?}, apiVersion {:?}",
                envelope.kind.unwrap_or_default(),
                envelope.api_version.unwrap_or_default()
            ),
        );
    }
    let Some(header) = envelope.request else {
        return invalid(None, "AdmissionReview has no request".to_owned());
    };
    let is_pod_create = header
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod")
        && header.operation.as_deref() == Some("CREATE")
        && header.sub_resource.is_none();

    if !is_pod_create {
        return match decode::<DynamicObject>(body) {
            Ok(req) => allowed(&req, Outcome::Skipped, Some("not a Pod CREATE".to_owned())),
            Err(e) => invalid(uid, e),
        };
    }
    let req = match decode::<Pod>(body) {
        Ok(req) => req,
        Err(e) => return invalid(uid, e),
    };
    debug_assert_eq!(req.operation, Operation::Create);
    let Some(view) = view else {
        return allowed(
            &req,
            Outcome::Skipped,
            Some("the rotation view has not synced yet".to_owned()),
        );
    };
    let Some(pod) = req.object.as_ref() else {
        return allowed(
            &req,
            Outcome::Skipped,
            Some("CREATE without an object".to_owned()),
        );
    };
    let ns_annotations = namespace_annotations(&req.namespace.clone().unwrap_or_default());
    match mutate_pod(pod, ns_annotations.as_ref(), view) {
        PodMutation::Skipped(reason) => {
            let why = match reason {
                SkipReason::NotMeshed => "not meshed",
                SkipReason::ControlPlane => "Linkerd control-plane pod",
                SkipReason::Mirror => "mirror pod",
            };
            allowed(&req, Outcome::Skipped, Some(why.to_owned()))
        }
        PodMutation::Meshed {
            patch,
            invalid_additional_env,
            invalid_trust_anchors,
        } => {
            let note = [
                invalid_additional_env.as_deref(),
                invalid_trust_anchors.as_deref(),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
            let note = (!note.is_empty()).then_some(note);
            let bad_env = invalid_additional_env.is_some();
            let mut reviewed = if patch.is_empty() {
                allowed(&req, Outcome::Unchanged, note)
            } else {
                match AdmissionResponse::from(&req).with_patch(json_patch::Patch(patch)) {
                    Ok(resp) => finish(&req, resp, Outcome::Patched, note),
                    // Serialising a patch of plain JSON values cannot fail; if it ever did, the
                    // pod is still admitted, unpatched.
                    Err(e) => allowed(&req, Outcome::Skipped, Some(e.to_string())),
                }
            };
            reviewed.invalid_additional_env = bad_env;
            reviewed
        }
    }
}

fn decode<T>(body: &[u8]) -> Result<AdmissionRequest<T>, String>
where
    T: kube::Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<T> = serde_json::from_slice(body)
        .map_err(|e| format!("AdmissionReview request does not decode: {e}"))?;
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
}

fn allowed<T: kube::Resource>(
    req: &AdmissionRequest<T>,
    outcome: Outcome,
    note: Option<String>,
) -> Reviewed {
    finish(req, AdmissionResponse::from(req), outcome, note)
}

fn finish<T: kube::Resource>(
    req: &AdmissionRequest<T>,
    response: AdmissionResponse,
    outcome: Outcome,
    note: Option<String>,
) -> Reviewed {
    Reviewed {
        review: response.into_review(),
        outcome,
        uid: req.uid.clone(),
        namespace: req.namespace.clone().unwrap_or_default(),
        name: req.name.clone(),
        note,
        invalid_additional_env: false,
    }
}

fn invalid(uid: Option<String>, message: String) -> Reviewed {
    let mut response = AdmissionResponse::invalid(&message);
    // Echo the uid whenever the body carried one, so the caller can match the answer.
    response.uid = uid.clone().unwrap_or_default();
    Reviewed {
        review: response.into_review(),
        outcome: Outcome::Invalid,
        uid: uid.unwrap_or_default(),
        namespace: String::new(),
        name: String::new(),
        note: Some(message),
        invalid_additional_env: false,
    }
}
