//! The pure half of the webhook: (pod, namespace's `linkerd.io/inject`, rotation view) -> JSON
//! Patch.
//!
//! Rules (DESIGN.md "The webhook"): only meshed pods are touched; every meshed pod gets
//! `trust.linkerd.io/trust-bundle-sha256`; while a rotation accelerates, the
//! `LINKERD2_PROXY_IDENTITY_MAX_REFRESH` env is merged into `config.linkerd.io/proxy-additional-env`
//! and, if the proxy is already injected, set on the `linkerd-proxy` container. Idempotent: the
//! output, re-submitted, yields an empty patch. Never denies.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde::Serialize;
use serde_json::{Value, json};

use super::admission::{ContainerIn, PodIn, Str};
use crate::bundle::Bundle;
use crate::crd::Phase;
use crate::duration;

/// The fingerprint of the bundle the pod runs with (ours).
pub const TRUST_BUNDLE_ANNOTATION: &str = "trust.linkerd.io/trust-bundle-sha256";
/// Linkerd 2.20+: JSON list of EnvVar objects the injector appends to the proxy's env.
pub const PROXY_ADDITIONAL_ENV_ANNOTATION: &str = "config.linkerd.io/proxy-additional-env";
/// Linkerd's injection switch, on namespaces and pods.
pub const INJECT_ANNOTATION: &str = "linkerd.io/inject";
/// Labels Linkerd's own control-plane pods; they are restarted by the reconciler, not stamped.
pub const CONTROL_PLANE_COMPONENT_LABEL: &str = "linkerd.io/control-plane-component";
/// Static pods' mirrors: the API server refuses changes to them that the kubelet did not make.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The injected proxy container.
pub const PROXY_CONTAINER: &str = "linkerd-proxy";
/// The proxy's anchors, baked into its env by the injector.
pub const TRUST_ANCHORS_ENV: &str = "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS";
/// Upper bound on the proxy's certificate refresh interval, read at proxy start.
pub const MAX_REFRESH_ENV: &str = "LINKERD2_PROXY_IDENTITY_MAX_REFRESH";

/// A pod's annotations (or labels), as decoded.
type Annotations<'a> = BTreeMap<Str<'a>, Str<'a>>;

/// What the webhook knows of the rotation (kept by every replica from watches).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RotationView {
    pub phase: Phase,
    /// Fingerprint of the canonical bundle in the trust-roots ConfigMap, if it parses.
    pub desired_bundle_fingerprint: Option<String>,
    /// `status.workloadCertificateRefreshInterval` of the `cluster` rotation, if set.
    pub refresh_interval: Option<String>,
}

impl RotationView {
    /// `LINKERD2_PROXY_IDENTITY_MAX_REFRESH` to publish, e.g. `300s`: only in the phases that
    /// wait for proxies to pick up the new issuer's leaves, and only for a valid, non-zero
    /// interval (a zero or malformed one is the reconciler's to report in status).
    pub fn accelerated_max_refresh(&self) -> Option<String> {
        let accelerating = matches!(
            self.phase,
            Phase::PropagatingTrustRoots
                | Phase::WaitingForRemoteClusters
                | Phase::WaitingForIdentityRotation
                | Phase::RenewingWorkloadCerts
        );
        if !accelerating {
            return None;
        }
        let interval = duration::parse(self.refresh_interval.as_deref()?).ok()?;
        (!interval.is_zero()).then(|| duration::to_whole_seconds(interval))
    }
}

/// Why a pod is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Not injected and injection not asked for (or the pod says `disabled`).
    NotMeshed,
    /// A Linkerd control-plane pod.
    ControlPlane,
    /// A static pod's mirror.
    Mirror,
}

/// The result of looking at one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum PodMutation {
    Skipped(SkipReason),
    /// Meshed; the operations to apply (empty when the pod already has everything).
    Meshed {
        patch: Vec<PatchOperation>,
        /// Set when the pod's existing additional-env annotation was not a JSON list: it is left
        /// untouched, and the server logs and counts this.
        invalid_additional_env: Option<String>,
        /// Set when the injected anchors could not be parsed: no fingerprint is stamped.
        invalid_trust_anchors: Option<String>,
    },
}

/// Computes the patch for a Pod being created.
/// `namespace_inject` is the pod's namespace's `linkerd.io/inject` annotation, if any.
pub fn mutate_pod(pod: &PodIn, namespace_inject: Option<&str>, view: &RotationView) -> PodMutation {
    let metadata = pod.metadata.as_ref();
    let annotations = metadata.and_then(|m| m.annotations.as_ref());
    let labels = metadata.and_then(|m| m.labels.as_ref());
    if labels.is_some_and(|l| l.contains_key(CONTROL_PLANE_COMPONENT_LABEL)) {
        return PodMutation::Skipped(SkipReason::ControlPlane);
    }
    if annotations.is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION)) {
        return PodMutation::Skipped(SkipReason::Mirror);
    }
    let proxy = find_proxy(pod);
    if proxy.is_none() && !injection_requested(annotations, namespace_inject) {
        return PodMutation::Skipped(SkipReason::NotMeshed);
    }

    let mut wanted: BTreeMap<&str, String> = BTreeMap::new();
    let mut invalid_trust_anchors = None;
    let mut invalid_additional_env = None;

    // The bundle the pod will run with: its own injected anchors are the truth; before
    // injection, the bundle the injector is about to bake in.
    let injected_anchors = proxy.and_then(|(_, _, c)| env_value(c, TRUST_ANCHORS_ENV));
    let fingerprint = match injected_anchors {
        Some(pem) => match Bundle::from_pem(TRUST_ANCHORS_ENV, pem) {
            Ok(b) => Some(b.fingerprint()),
            Err(e) => {
                invalid_trust_anchors = Some(e.to_string());
                None
            }
        },
        None => view.desired_bundle_fingerprint.clone(),
    };
    if let Some(fp) = fingerprint {
        wanted.insert(TRUST_BUNDLE_ANNOTATION, fp);
    }

    let max_refresh = view.accelerated_max_refresh();
    if let Some(value) = &max_refresh {
        let existing = annotations.and_then(|a| a.get(PROXY_ADDITIONAL_ENV_ANNOTATION));
        match merge_additional_env(existing.map(Str::as_str), MAX_REFRESH_ENV, value) {
            Ok(merged) => {
                wanted.insert(PROXY_ADDITIONAL_ENV_ANNOTATION, merged);
            }
            Err(problem) => invalid_additional_env = Some(problem),
        }
    }

    let mut patch = annotation_ops(metadata.is_some(), annotations, &wanted);
    if let (Some(value), Some((list, index, container))) = (&max_refresh, proxy) {
        patch.extend(container_env_ops(
            list,
            index,
            container,
            MAX_REFRESH_ENV,
            value,
        ));
    }
    PodMutation::Meshed {
        patch,
        invalid_additional_env,
        invalid_trust_anchors,
    }
}

/// `linkerd.io/inject: enabled|ingress` on the pod or its namespace; the pod's own value wins,
/// so a pod saying `disabled` in an enabled namespace is not meshed.
fn injection_requested(pod: Option<&Annotations>, namespace: Option<&str>) -> bool {
    let value = pod
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .map(Str::as_str)
        .or(namespace);
    matches!(value, Some("enabled" | "ingress"))
}

/// The proxy container: `(list, index, container)`, in `containers` or, for native sidecars,
/// `initContainers`.
fn find_proxy<'p, 'a>(pod: &'p PodIn<'a>) -> Option<(&'static str, usize, &'p ContainerIn<'a>)> {
    let spec = pod.spec.as_ref()?;
    let find = |list: &[ContainerIn]| list.iter().position(|c| c.name.as_str() == PROXY_CONTAINER);
    if let Some(i) = find(&spec.containers) {
        return Some(("containers", i, &spec.containers[i]));
    }
    let init = spec.init_containers.as_deref()?;
    find(init).map(|i| ("initContainers", i, &init[i]))
}

fn env_value<'p>(container: &'p ContainerIn, name: &str) -> Option<&'p str> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name.as_str() == name)?
        .value
        .as_deref()
}

/// Merges `{"name": name, "value": value}` by name into a JSON list of EnvVar objects, keeping
/// every other entry as it was. Returns the new annotation text (unchanged text if the entry is
/// already there), or why the existing text is unusable.
pub fn merge_additional_env(
    existing: Option<&str>,
    name: &str,
    value: &str,
) -> Result<String, String> {
    let mut list: Vec<Value> = match existing {
        // The common case, written directly: building and printing a `Value` for it was a
        // third of the patch's cost.
        None => {
            // Writing two strings cannot fail; were it ever to, the annotation is left as it is.
            return serde_json::to_string(&[EnvVar { name, value }])
                .map_err(|e| format!("cannot write {PROXY_ADDITIONAL_ENV_ANNOTATION}: {e}"));
        }
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(list)) => list,
            Ok(other) => {
                return Err(format!(
                    "{PROXY_ADDITIONAL_ENV_ANNOTATION} is JSON but not a list (found {})",
                    json_kind(&other)
                ));
            }
            Err(e) => {
                return Err(format!(
                    "{PROXY_ADDITIONAL_ENV_ANNOTATION} is not valid JSON: {e}"
                ));
            }
        },
    };
    let entry = json!({"name": name, "value": value});
    let position = list
        .iter()
        .position(|e| e.get("name").and_then(Value::as_str) == Some(name));
    match position {
        Some(i) if list[i] == entry => return Ok(existing.unwrap_or_default().to_owned()),
        Some(i) => list[i] = entry,
        None => list.push(entry),
    }
    Ok(Value::Array(list).to_string())
}

/// An EnvVar as the merged list holds it (fields in the order a `Value` object prints them).
#[derive(Serialize)]
struct EnvVar<'a> {
    name: &'a str,
    value: &'a str,
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn annotation_ops(
    has_metadata: bool,
    existing: Option<&Annotations>,
    wanted: &BTreeMap<&str, String>,
) -> Vec<PatchOperation> {
    let changed: BTreeMap<&str, &String> = wanted
        .iter()
        .filter(|(k, v)| existing.and_then(|a| a.get(**k)).map(Str::as_str) != Some(v.as_str()))
        .map(|(k, v)| (*k, v))
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    if !has_metadata {
        // No metadata at all (the API server always sends it; other callers may not).
        return vec![add(&["metadata"], json!({ "annotations": changed }))];
    }
    if existing.is_none() {
        // Missing parent: create the map with every key at once.
        return vec![add(&["metadata", "annotations"], json!(changed))];
    }
    changed
        .into_iter()
        .map(|(k, v)| add(&["metadata", "annotations", k], json!(v)))
        .collect()
}

fn container_env_ops(
    list: &str,
    index: usize,
    container: &ContainerIn,
    name: &str,
    value: &str,
) -> Vec<PatchOperation> {
    let idx = index.to_string();
    let entry = json!({"name": name, "value": value});
    let Some(env) = container.env.as_ref() else {
        return vec![add(&["spec", list, &idx, "env"], json!([entry]))];
    };
    match env.iter().position(|e| e.name.as_str() == name) {
        Some(i) if env[i].value.as_deref() == Some(value) && !env[i].value_from => Vec::new(),
        Some(i) => vec![PatchOperation::Replace(ReplaceOperation {
            path: pointer(&["spec", list, &idx, "env", &i.to_string()]),
            value: entry,
        })],
        None => vec![add(&["spec", list, &idx, "env", "-"], entry)],
    }
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

/// A JSON Pointer from unescaped tokens; `~` and `/` in keys are escaped per RFC 6901.
///
/// Written as text and parsed once: `PointerBuf::from_tokens` reallocated per token, and was
/// the largest single cost of building a patch.
fn pointer(tokens: &[&str]) -> PointerBuf {
    let mut text = String::with_capacity(tokens.iter().map(|t| t.len() + 3).sum());
    for token in tokens {
        text.push('/');
        let mut rest = *token;
        while let Some(at) = rest.find(['~', '/']) {
            text.push_str(&rest[..at]);
            text.push_str(if rest.as_bytes()[at] == b'~' {
                "~0"
            } else {
                "~1"
            });
            rest = &rest[at + 1..];
        }
        text.push_str(rest);
    }
    // Every `~` is escaped above, so the text always parses; the tokens' own path is the
    // fallback rather than a panic.
    PointerBuf::parse(text).unwrap_or_else(|_| PointerBuf::from_tokens(tokens.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_escapes_as_from_tokens_does() {
        for tokens in [
            &[
                "metadata",
                "annotations",
                "trust.linkerd.io/trust-bundle-sha256",
            ][..],
            &["a~b", "~0~1/", "", "-", "ü/~"],
            &[],
        ] {
            assert_eq!(
                pointer(tokens),
                PointerBuf::from_tokens(tokens.iter().copied()),
                "{tokens:?}"
            );
        }
    }
}
