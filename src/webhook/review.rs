//! AdmissionReview in, AdmissionReview out: decoding, the Pod-CREATE gate, and the response.
//! Pure: the server wraps it with TLS, metrics and logs.

use serde::de::IgnoredAny;

use super::admission::{PodIn, RequestIn, ReviewIn, ReviewOut, UidIn, from_json};
use super::patch::{PodMutation, RotationView, SkipReason, mutate_pod};
use super::scan;

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
    pub review: ReviewOut,
    pub outcome: Outcome,
    pub uid: String,
    pub namespace: String,
    /// The request's name, or, for a pod not named yet, its `generateName`.
    pub name: String,
    /// Why the request was invalid, why a pod was skipped, or a problem with its annotations,
    /// for the log.
    pub note: Option<String>,
    /// The pod's additional-env annotation was not JSON, not a list, or not a list of EnvVars
    /// (left untouched).
    pub invalid_additional_env: bool,
    /// A Pod CREATE allowed unpatched only because the rotation view had not synced.
    pub unsynced: bool,
}

/// Answers one AdmissionReview body. `view` is `None` until the webhook's watches have synced:
/// then every request is allowed unpatched. `namespace_inject` looks up a namespace's
/// `linkerd.io/inject` annotation.
pub fn review(
    body: &[u8],
    view: Option<&RotationView>,
    namespace_inject: &dyn Fn(&str) -> Option<String>,
) -> Reviewed {
    // The fast path reads a well-formed Pod request in one pass (nearly every request). When it
    // steps aside, serde_json reads the Pod request whole; anything it cannot read that way
    // (another kind, an object of another shape, not an AdmissionReview at all) is read again
    // with the object skipped, to route it and to say exactly what was wrong.
    let fast = std::str::from_utf8(body).ok().and_then(scan::review_in);
    let (envelope, pod_error) = match fast.map_or_else(|| from_json::<ReviewIn<PodIn>>(body), Ok) {
        Ok(envelope) => (envelope, None),
        Err(pod_error) => match from_json::<ReviewIn<IgnoredAny>>(body) {
            Ok(envelope) => (without_object(envelope), Some(pod_error)),
            Err(e) => {
                let uid = from_json::<UidIn>(body)
                    .ok()
                    .and_then(|r| Some(r.request?.uid?.to_string()));
                return invalid(uid, format!("body is not an AdmissionReview: {e}"));
            }
        },
    };
    let uid = envelope
        .request
        .as_ref()
        .and_then(|r| Some(r.uid.as_deref()?.to_owned()));
    if envelope.kind.as_deref() != Some("AdmissionReview")
        || envelope.api_version.as_deref() != Some(ADMISSION_API_VERSION)
    {
        return invalid(
            uid,
            format!(
                "expected kind AdmissionReview, apiVersion {ADMISSION_API_VERSION}; got kind {:?}, apiVersion {:?}",
                envelope.kind.as_deref().unwrap_or_default(),
                envelope.api_version.as_deref().unwrap_or_default()
            ),
        );
    }
    let Some(req) = envelope.request else {
        return invalid(None, "AdmissionReview has no request".to_owned());
    };
    let Some(uid) = uid else {
        return invalid(None, "AdmissionReview request has no uid".to_owned());
    };
    let namespace = req.namespace.as_deref().unwrap_or_default().to_owned();
    // A controller's pod is named by the API server only after admission: until then its
    // generateName (`web-5d8f7c9b6-`) is what tells a person reading the log whose pod it was.
    let name = match req.name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ => req
            .object
            .as_ref()
            .and_then(|pod| pod.metadata.as_ref()?.generate_name.as_deref())
            .unwrap_or_default(),
    }
    .to_owned();
    let answer = |outcome, note: &str| Reviewed {
        review: ReviewOut::allow(&uid),
        outcome,
        uid: uid.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        note: Some(note.to_owned()),
        invalid_additional_env: false,
        unsynced: false,
    };

    let is_pod_create = req
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind.as_str() == "Pod")
        && req.operation.as_deref() == Some("CREATE")
        && req.sub_resource.is_none();
    if !is_pod_create {
        return answer(Outcome::Skipped, "not a Pod CREATE");
    }
    let Some(view) = view else {
        return Reviewed {
            unsynced: true,
            ..answer(Outcome::Skipped, "the rotation view has not synced yet")
        };
    };
    if let Some(e) = pod_error {
        let mut r = invalid(
            Some(uid.clone()),
            format!("request object is not a Pod: {e}"),
        );
        (r.namespace, r.name) = (namespace, name);
        return r;
    }
    let Some(pod) = req.object else {
        return answer(Outcome::Skipped, "CREATE without an object");
    };
    let inject = namespace_inject(&namespace);
    match mutate_pod(&pod, inject.as_deref(), view) {
        PodMutation::Skipped(reason) => answer(
            Outcome::Skipped,
            match reason {
                SkipReason::NotMeshed => "not meshed",
                SkipReason::ControlPlane => "Linkerd control-plane pod",
                SkipReason::Mirror => "mirror pod",
            },
        ),
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
            let (review, outcome) = if patch.is_empty() {
                (ReviewOut::allow(&uid), Outcome::Unchanged)
            } else {
                (ReviewOut::patch(&uid, &patch), Outcome::Patched)
            };
            Reviewed {
                review,
                outcome,
                uid,
                namespace,
                name,
                note: (!note.is_empty()).then_some(note),
                invalid_additional_env: invalid_additional_env.is_some(),
                unsynced: false,
            }
        }
    }
}

fn without_object(envelope: ReviewIn<'_, IgnoredAny>) -> ReviewIn<'_, PodIn<'_>> {
    ReviewIn {
        api_version: envelope.api_version,
        kind: envelope.kind,
        request: envelope.request.map(|r| RequestIn {
            uid: r.uid,
            kind: r.kind,
            operation: r.operation,
            sub_resource: r.sub_resource,
            namespace: r.namespace,
            name: r.name,
            object: None,
        }),
    }
}

fn invalid(uid: Option<String>, message: String) -> Reviewed {
    Reviewed {
        // Echo the uid whenever the body carried one, so the caller can match the answer.
        review: ReviewOut::invalid(uid.as_deref(), &message),
        outcome: Outcome::Invalid,
        uid: uid.unwrap_or_default(),
        namespace: String::new(),
        name: String::new(),
        note: Some(message),
        invalid_additional_env: false,
        unsynced: false,
    }
}
