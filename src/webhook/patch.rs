//! The pure half of the webhook: (pod, namespace's `linkerd.io/inject`, rotation view) -> JSON
//! Patch.
//!
//! Rules (DESIGN.md "The webhook"): only meshed pods are touched; every meshed pod gets
//! `trust.linkerd.io/trust-bundle-sha256`; while a rotation accelerates, the
//! `LINKERD2_PROXY_IDENTITY_MAX_REFRESH` env is merged into `config.linkerd.io/proxy-additional-env`
//! and, if the proxy is already injected, set on the `linkerd-proxy` container. Idempotent: the
//! output, re-submitted, yields an empty patch. Never denies.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::admission::{ContainerIn, JSON_ESCAPE, PodIn, Str, write_escaped, write_json_str};
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
/// Where the ServiceAccount admission plugin mounts the pod's API token; Linkerd's injector
/// does not inject a pod whose first container lacks it.
pub const SERVICE_ACCOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The injected proxy container.
pub const PROXY_CONTAINER: &str = "linkerd-proxy";
/// The proxy's anchors, baked into its env by the injector.
pub const TRUST_ANCHORS_ENV: &str = "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS";
/// Upper bound on the proxy's certificate refresh interval, read at proxy start.
pub const MAX_REFRESH_ENV: &str = "LINKERD2_PROXY_IDENTITY_MAX_REFRESH";

/// [`MAX_REFRESH_ENV`]'s value for a rotation's refresh interval (a Go duration): whole seconds,
/// as `300s`. `None` for a zero or malformed interval, which is the reconciler's to report in
/// status: no proxy is given it, the webhook's nor the control plane's.
pub fn max_refresh_value(interval: &str) -> Option<String> {
    duration::parse(interval)
        .ok()
        .filter(|i| !i.is_zero())
        .map(duration::to_whole_seconds)
}

/// A pod's annotations (or labels), as decoded.
type Annotations<'a> = BTreeMap<Str<'a>, Str<'a>>;

/// What the webhook knows of the rotation (kept by every replica from watches). Built once per
/// watch event and read by every admission, so what the admissions need from it (the refresh
/// interval as the proxy's env value) is worked out when it is built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RotationView {
    phase: Phase,
    desired_bundle_fingerprint: Option<String>,
    refresh_interval: Option<String>,
    accelerated_max_refresh: Option<String>,
    /// The text `desired_bundle_fingerprint` was computed from, surrounding whitespace trimmed.
    desired_bundle_text: Option<String>,
}

impl RotationView {
    /// `phase`, and from the rotation's sources: the fingerprint of the canonical bundle in the
    /// trust-roots ConfigMap (if it parses) and the `cluster` rotation's
    /// `status.workloadCertificateRefreshInterval` (if set).
    pub fn new(
        phase: Phase,
        desired_bundle_fingerprint: Option<String>,
        refresh_interval: Option<String>,
    ) -> Self {
        let accelerating = matches!(
            phase,
            Phase::PropagatingTrustRoots
                | Phase::WaitingForIdentityRotation
                | Phase::WaitingForRemoteClusters
                | Phase::RenewingWorkloadCerts
        );
        let accelerated_max_refresh = refresh_interval
            .as_deref()
            .filter(|_| accelerating)
            .and_then(max_refresh_value);
        Self {
            phase,
            desired_bundle_fingerprint,
            refresh_interval,
            accelerated_max_refresh,
            desired_bundle_text: None,
        }
    }

    /// Records the PEM text the desired fingerprint was computed from (the trust-roots
    /// ConfigMap's). The injector bakes that same text into every proxy it injects, so on the
    /// webhook's second call for a pod (reinvoked after injection) the pod's anchors are
    /// usually this text, and their fingerprint is known without parsing the certificates again
    /// (the parse is some 180,000 instructions per pod). Text outside PEM blocks does not change
    /// the bundle, so surrounding whitespace is ignored.
    pub fn with_desired_bundle_text(mut self, pem: &str) -> Self {
        self.desired_bundle_text = self
            .desired_bundle_fingerprint
            .is_some()
            .then(|| pem.trim().to_owned());
        self
    }

    /// The desired bundle's fingerprint, if `pem` is the text it was computed from.
    fn fingerprint_of_desired_text(&self, pem: &str) -> Option<&str> {
        (self.desired_bundle_text.as_deref() == Some(pem.trim()))
            .then_some(self.desired_bundle_fingerprint.as_deref())
            .flatten()
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn desired_bundle_fingerprint(&self) -> Option<&str> {
        self.desired_bundle_fingerprint.as_deref()
    }

    pub fn refresh_interval(&self) -> Option<&str> {
        self.refresh_interval.as_deref()
    }

    /// `LINKERD2_PROXY_IDENTITY_MAX_REFRESH` to publish, e.g. `300s`: only in the phases that
    /// wait for proxies to pick up the new issuer's leaves, and only for a valid, non-zero
    /// interval.
    pub fn accelerated_max_refresh(&self) -> Option<&str> {
        self.accelerated_max_refresh.as_deref()
    }
}

/// Why a pod is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Not injected, and the injector will not inject it: injection not asked for, the pod
    /// says `disabled`, it runs in the host's network, or it has no service-account token.
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
        patch: JsonPatch,
        /// Set when the pod's existing additional-env annotation was not JSON, not a list, or not
        /// a list of EnvVars: it is left untouched, and the server logs and counts this.
        invalid_additional_env: Option<String>,
        /// Set when the injected anchors could not be parsed, or are set through `valueFrom`
        /// (which the webhook does not read): no fingerprint is stamped.
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
    if proxy.is_none() && !injector_injects(pod, annotations, namespace_inject) {
        return PodMutation::Skipped(SkipReason::NotMeshed);
    }

    let mut wanted: BTreeMap<&str, String> = BTreeMap::new();
    let mut invalid_trust_anchors = None;
    let mut invalid_additional_env = None;

    // The bundle the pod will run with: its own injected anchors are the truth; before
    // injection, the bundle the injector is about to bake in.
    let injected_anchors = proxy.map_or(EnvValue::Absent, |(_, _, c)| {
        env_value(c, TRUST_ANCHORS_ENV)
    });
    let fingerprint = match injected_anchors {
        EnvValue::Absent => view.desired_bundle_fingerprint().map(str::to_owned),
        // From a ConfigMap or a Secret the webhook does not read: no fingerprint is known.
        EnvValue::FromSource => {
            invalid_trust_anchors = Some(format!(
                "{TRUST_ANCHORS_ENV} is set through valueFrom, which the webhook does not read"
            ));
            None
        }
        EnvValue::Literal(pem) => match view.fingerprint_of_desired_text(pem) {
            Some(known) => Some(known.to_owned()),
            None => match Bundle::from_pem(TRUST_ANCHORS_ENV, pem) {
                Ok(b) => Some(b.fingerprint()),
                Err(e) => {
                    invalid_trust_anchors = Some(e.to_string());
                    None
                }
            },
        },
    };
    if let Some(fp) = fingerprint {
        wanted.insert(TRUST_BUNDLE_ANNOTATION, fp);
    }

    let max_refresh = view.accelerated_max_refresh();
    if let Some(value) = max_refresh {
        let existing = annotations.and_then(|a| a.get(PROXY_ADDITIONAL_ENV_ANNOTATION));
        match merge_additional_env(existing.map(Str::as_str), MAX_REFRESH_ENV, value) {
            Ok(merged) => {
                wanted.insert(PROXY_ADDITIONAL_ENV_ANNOTATION, merged);
            }
            Err(problem) => invalid_additional_env = Some(problem),
        }
    }

    let mut patch = JsonPatch::new();
    annotation_ops(&mut patch, metadata.is_some(), annotations, &wanted);
    // Injected anchors that do not parse, or that come from elsewhere: no fingerprint is known
    // true of them, so an earlier one (the first admission's, before injection) must not stay
    // behind claiming a bundle.
    if invalid_trust_anchors.is_some()
        && annotations.is_some_and(|a| a.contains_key(TRUST_BUNDLE_ANNOTATION))
    {
        patch.remove(&["metadata", "annotations", TRUST_BUNDLE_ANNOTATION]);
    }
    if let (Some(value), Some((list, index, container))) = (max_refresh, proxy) {
        container_env_ops(&mut patch, list, index, container, MAX_REFRESH_ENV, value);
    }
    PodMutation::Meshed {
        patch,
        invalid_additional_env,
        invalid_trust_anchors,
    }
}

/// Whether Linkerd's proxy injector injects a pod that has no proxy yet (its webhook's report
/// in linkerd2's pkg/inject/report.go): injection requested, not in the host's network, and
/// the service-account token mounted: not turned off on the pod
/// (`automountServiceAccountToken: false`), and mounted in the first container, where the
/// ServiceAccount admission plugin (which runs before every webhook) puts it unless the pod's
/// ServiceAccount turns it off.
fn injector_injects(
    pod: &PodIn,
    annotations: Option<&Annotations>,
    namespace: Option<&str>,
) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let token_mounted = spec.automount_service_account_token != Some(false)
        && spec.containers.first().is_some_and(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path.as_str() == SERVICE_ACCOUNT_MOUNT_PATH)
        });
    spec.host_network != Some(true) && token_mounted && injection_requested(annotations, namespace)
}

/// Whether injection is asked for, as Linkerd's injector reads
/// `linkerd.io/inject` on the pod and its namespace: `enabled` or `ingress` on either, unless
/// the pod says `disabled`; an empty value is no value; a value that is none of these, on
/// either, means no injection.
fn injection_requested(pod: Option<&Annotations>, namespace: Option<&str>) -> bool {
    let valid = |v: &str| matches!(v, "" | "enabled" | "ingress" | "disabled");
    let on = |v: &str| matches!(v, "enabled" | "ingress");
    let pod = pod
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .map_or("", Str::as_str);
    let namespace = namespace.unwrap_or_default();
    if !valid(pod) || !valid(namespace) {
        return false;
    }
    if on(namespace) {
        pod != "disabled"
    } else {
        on(pod)
    }
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

/// What a container's env says of one variable.
enum EnvValue<'p> {
    Absent,
    /// Given in the pod spec (an entry with neither `value` nor `valueFrom` is the empty text).
    Literal(&'p str),
    /// From a ConfigMap, a Secret or a field, through `valueFrom`.
    FromSource,
}

fn env_value<'p>(container: &'p ContainerIn, name: &str) -> EnvValue<'p> {
    // The kubelet lets the last definition of a name win.
    let last = container
        .env
        .as_ref()
        .and_then(|env| env.iter().rfind(|e| e.name.as_str() == name));
    match last {
        None => EnvValue::Absent,
        Some(e) if e.value_from => EnvValue::FromSource,
        Some(e) => EnvValue::Literal(e.value.as_deref().unwrap_or_default()),
    }
}

/// Merges `{"name": name, "value": value}` by name into a JSON list of EnvVar objects, keeping
/// every other entry as it was, byte for byte. Returns the new annotation text (unchanged text
/// if the entry is already there), or why the existing text is unusable: not JSON, not a list,
/// or a list the injector could not read as EnvVars (an entry that is not an object, or whose
/// `name` is not a string). `null` is the empty list, as Go reads it.
pub fn merge_additional_env(
    existing: Option<&str>,
    name: &str,
    value: &str,
) -> Result<String, String> {
    // Built from `&str`s, escaped as serde_json escapes: UTF-8 throughout.
    let written = |out: Vec<u8>| {
        String::from_utf8(out)
            .map_err(|e| format!("cannot write {PROXY_ADDITIONAL_ENV_ANNOTATION}: {e}"))
    };
    // The common case, written directly: building and printing a `Value` for it was a third
    // of the patch's cost.
    let Some(text) = existing else {
        let mut out = Vec::with_capacity(name.len() + value.len() + 32);
        out.push(b'[');
        write_env_var(&mut out, name, value);
        out.push(b']');
        return written(out);
    };
    let mut entry = Vec::with_capacity(name.len() + value.len() + 30);
    write_env_var(&mut entry, name, value);
    let entry = written(entry)?;
    let unusable = |why: String| format!("{PROXY_ADDITIONAL_ENV_ANNOTATION} {why}");
    let list: Option<Vec<&RawValue>> =
        serde_json::from_str(text).map_err(|e| match serde_json::from_str::<Value>(text) {
            Ok(other) => unusable(format!(
                "is JSON but not a list (found {})",
                json_kind(&other)
            )),
            Err(_) => unusable(format!("is not valid JSON: {e}")),
        })?;
    let list = list.unwrap_or_default();
    // Every entry of that name is set (a duplicate left alone could be the one that wins).
    let mut found = false;
    let mut changed = false;
    let mut entries: Vec<&str> = Vec::with_capacity(list.len() + 1);
    for (i, raw) in list.iter().enumerate() {
        let item = raw.get();
        let not_env_var = |why: &str| {
            unusable(format!(
                "is a list, but entry {i} is not an EnvVar ({why}): {}",
                item.chars().take(40).collect::<String>()
            ))
        };
        if !item.starts_with('{') {
            return Err(not_env_var("not an object"));
        }
        let named: EnvVarIn =
            serde_json::from_str(item).map_err(|e| not_env_var(&e.to_string()))?;
        if named.value_from.is_some_and(|v| !v.get().starts_with('{')) {
            return Err(not_env_var("valueFrom is not an object"));
        }
        if named.name.as_deref() == Some(name) {
            found = true;
            // Ours already, whatever its spacing: kept as it is. (On the reinvocation after the
            // injector it is byte for byte what this function wrote: no parse needed then.)
            let same = item == entry
                || serde_json::from_str::<Value>(item).ok()
                    == Some(json!({"name": name, "value": value}));
            changed |= !same;
            entries.push(if same { item } else { &entry });
        } else {
            entries.push(item);
        }
    }
    if !found {
        entries.push(&entry);
    } else if !changed {
        return Ok(text.to_owned());
    }
    Ok(format!("[{}]", entries.join(",")))
}

/// An EnvVar as the injector (Go, into Kubernetes' type) reads one: `name` and `value` strings
/// and `valueFrom` an object, each possibly null or absent; other fields are skipped. A value of
/// another type fails the injector's whole list. The merge needs only the name.
#[derive(serde::Deserialize)]
struct EnvVarIn<'a> {
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    /// Read only to check that it is a string.
    #[serde(borrow, default, rename = "value")]
    _value: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, rename = "valueFrom")]
    value_from: Option<&'a RawValue>,
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
    patch: &mut JsonPatch,
    has_metadata: bool,
    existing: Option<&Annotations>,
    wanted: &BTreeMap<&str, String>,
) {
    let changed = || {
        wanted
            .iter()
            .filter(|(k, v)| existing.and_then(|a| a.get(**k)).map(Str::as_str) != Some(v.as_str()))
    };
    if changed().next().is_none() {
        return;
    }
    if !has_metadata {
        // No metadata at all (the API server always sends it; other callers may not).
        patch.add(&["metadata"], |out| {
            out.extend_from_slice(br#"{"annotations":"#);
            write_string_map(out, changed());
            out.push(b'}');
        });
    } else if existing.is_none() {
        // Missing parent: create the map with every key at once.
        patch.add(&["metadata", "annotations"], |out| {
            write_string_map(out, changed());
        });
    } else {
        for (k, v) in changed() {
            patch.add(&["metadata", "annotations", k], |out| {
                write_json_str(out, v)
            });
        }
    }
}

fn container_env_ops(
    patch: &mut JsonPatch,
    list: &str,
    index: usize,
    container: &ContainerIn,
    name: &str,
    value: &str,
) {
    let idx = index.to_string();
    let entry = |out: &mut Vec<u8>| write_env_var(out, name, value);
    let Some(env) = container.env.as_ref() else {
        patch.add(&["spec", list, &idx, "env"], |out| {
            out.push(b'[');
            entry(out);
            out.push(b']');
        });
        return;
    };
    // Every entry of that name is set: the kubelet lets the last one win, and a duplicate left
    // alone could be it.
    let mut found = false;
    for (i, e) in env
        .iter()
        .enumerate()
        .filter(|(_, e)| e.name.as_str() == name)
    {
        found = true;
        if e.value.as_deref() != Some(value) || e.value_from {
            patch.replace(&["spec", list, &idx, "env", &i.to_string()], entry);
        }
    }
    if !found {
        patch.add(&["spec", list, &idx, "env", "-"], entry);
    }
}

/// `{"name":…,"value":…}`, as serde_json writes an EnvVar.
fn write_env_var(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(br#"{"name":"#);
    write_json_str(out, name);
    out.extend_from_slice(br#","value":"#);
    write_json_str(out, value);
    out.push(b'}');
}

/// A JSON object of strings, keys in the order given (sorted, as serde_json's map writes them).
fn write_string_map<'k>(
    out: &mut Vec<u8>,
    entries: impl Iterator<Item = (&'k &'k str, &'k String)>,
) {
    out.push(b'{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, k);
        out.push(b':');
        write_json_str(out, v);
    }
    out.push(b'}');
}

/// A JSON Patch (RFC 6902) as the webhook makes them: `add` and `replace` operations written
/// straight to their JSON text, byte for byte what serde_json writes for the same operations.
///
/// Building `json_patch` operations (a validated `PointerBuf` and a `serde_json::Value` each)
/// and printing them cost more than deciding what to patch; the text is all the API server
/// needs. [`JsonPatch::operations`] parses it back for tests and tools.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPatch {
    /// Always a complete JSON list: `[]`, `[op]`, `[op,op]`.
    json: Vec<u8>,
    len: usize,
}

impl Default for JsonPatch {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonPatch {
    pub fn new() -> Self {
        // Room for the few operations the webhook makes, so they are written without regrowing.
        let mut json = Vec::with_capacity(512);
        json.extend_from_slice(b"[]");
        Self { json, len: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many operations.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.json
    }

    /// The operations, parsed from the text.
    pub fn operations(&self) -> json_patch::Patch {
        serde_json::from_slice(&self.json).expect("a JsonPatch is always a valid JSON Patch")
    }

    /// Appends `add` at the pointer made of `tokens`; `value` writes the value's JSON.
    pub(crate) fn add(&mut self, tokens: &[&str], value: impl FnOnce(&mut Vec<u8>)) {
        self.push("add", tokens, Some(value));
    }

    pub(crate) fn replace(&mut self, tokens: &[&str], value: impl FnOnce(&mut Vec<u8>)) {
        self.push("replace", tokens, Some(value));
    }

    pub(crate) fn remove(&mut self, tokens: &[&str]) {
        self.push("remove", tokens, None::<fn(&mut Vec<u8>)>);
    }

    /// One operation; `value` writes the value's JSON (`None` for `remove`, which has none).
    fn push(&mut self, op: &str, tokens: &[&str], value: Option<impl FnOnce(&mut Vec<u8>)>) {
        let out = &mut self.json;
        out.pop();
        if self.len > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"op":""#);
        out.extend_from_slice(op.as_bytes());
        out.extend_from_slice(br#"","path":"#);
        write_pointer(out, tokens);
        if let Some(value) = value {
            out.extend_from_slice(br#","value":"#);
            value(out);
        }
        out.extend_from_slice(b"}]");
        self.len += 1;
    }
}

impl std::fmt::Debug for JsonPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.json))
    }
}

/// A JSON Pointer from unescaped tokens, as a JSON string: `~` and `/` in tokens escaped per
/// RFC 6901, then the text escaped as serde_json escapes it. Written in place, without building
/// the pointer first.
fn write_pointer(out: &mut Vec<u8>, tokens: &[&str]) {
    /// The bytes a token cannot carry as they are: RFC 6901's `~` and `/`, JSON's escapes.
    const POINTER_STOP: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = JSON_ESCAPE[b] != 0 || b == b'~' as usize || b == b'/' as usize;
            b += 1;
        }
        table
    };
    out.push(b'"');
    for token in tokens {
        out.push(b'/');
        // Runs of plain bytes are copied whole; the bytes between them escaped one by one.
        let mut rest = token.as_bytes();
        while let Some(at) = rest.iter().position(|&b| POINTER_STOP[usize::from(b)]) {
            out.extend_from_slice(&rest[..at]);
            match rest[at] {
                b'~' => out.extend_from_slice(b"~0"),
                b'/' => out.extend_from_slice(b"~1"),
                _ => write_escaped(out, &rest[at..=at]),
            }
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    use json_patch::jsonptr::PointerBuf;

    /// The user's entries come back byte for byte: numbers serde_json would round or refuse,
    /// odd spacing, key order. `null` is the empty list, as Go reads it. A list the injector
    /// could not read as EnvVars is unusable, as text that is not JSON is.
    #[test]
    fn additional_env_keeps_other_entries_byte_for_byte() {
        let merge = |text: &str| merge_additional_env(Some(text), "MAX", "300s");
        let ours = r#"{"name":"MAX","value":"300s"}"#;
        for kept in [
            r#"{"name":"A","value":"1","x":0.10000000000000000001}"#,
            r#"{"name":"B","x":1e400}"#,
            r#"{ "value" : "2", "name" : "C" }"#,
            r#"{"name":null}"#,
            r#"{"name":"D","value":null,"valueFrom":null}"#,
            r#"{"name":"E","valueFrom":{"fieldRef":{"fieldPath":"spec.nodeName"}}}"#,
            r#"{"name":"F","value":"a\"b"}"#,
        ] {
            assert_eq!(merge(&format!("[{kept}]")), Ok(format!("[{kept},{ours}]")));
        }
        // Ours replaced in place, others untouched; already ours in any spacing: unchanged.
        assert_eq!(
            merge(r#"[{"name":"A","x":1e400},{"name":"MAX","value":"60s"}]"#),
            Ok(format!(r#"[{{"name":"A","x":1e400}},{ours}]"#))
        );
        let spaced = r#"[ {"value": "300s", "name": "MAX"} ]"#;
        assert_eq!(merge(spaced), Ok(spaced.to_owned()));
        assert_eq!(merge("null"), Ok(format!("[{ours}]")));
        for unusable in [
            r#"[1,{"name":"A"}]"#,
            r#"[["MAX"]]"#,
            r#"[{"name":5}]"#,
            // Go reads none of these into an EnvVar, and then none of the list.
            r#"[{"name":"FOO","value":5}]"#,
            r#"[{"name":"FOO","value":{"x":1}}]"#,
            r#"[{"name":"FOO","valueFrom":"x"}]"#,
            r#"[{"name":"FOO","valueFrom":[]}]"#,
            "{}",
            "[",
            "\"x\"",
        ] {
            assert!(merge(unusable).is_err(), "{unusable}");
        }
    }

    #[test]
    fn pointer_escapes_as_from_tokens_then_serde_json_do() {
        for tokens in [
            &[
                "metadata",
                "annotations",
                "trust.linkerd.io/trust-bundle-sha256",
            ][..],
            &["a~b", "~0~1/", "", "-", "ü/~"],
            &["q\"b\\c\n\u{1}/~"],
            &[],
        ] {
            let mut out = Vec::new();
            write_pointer(&mut out, tokens);
            let expected = PointerBuf::from_tokens(tokens.iter().copied());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(expected.as_str()).unwrap(),
                "{tokens:?}"
            );
        }
    }

    #[test]
    fn json_patch_writes_what_serde_json_writes_for_its_operations() {
        let mut patch = JsonPatch::new();
        assert_eq!(patch.as_bytes(), b"[]");
        assert_eq!(serde_json::to_vec(&patch.operations()).unwrap(), b"[]");
        let wanted: BTreeMap<&str, String> =
            [("b~/\"", "1\n".to_owned()), ("a", "[{\"x\"}]".to_owned())]
                .into_iter()
                .collect();
        patch.add(&["metadata"], |out| {
            out.extend_from_slice(br#"{"annotations":"#);
            write_string_map(out, wanted.iter());
            out.push(b'}');
        });
        patch.add(&["metadata", "annotations", "k/~\u{1}é"], |out| {
            write_json_str(out, "v\t\"")
        });
        patch.replace(&["spec", "containers", "0", "env", "2"], |out| {
            write_env_var(out, "N", "300s")
        });
        patch.add(&["spec", "initContainers", "1", "env", "-"], |out| {
            write_env_var(out, "\\", "\u{7f}")
        });
        assert_eq!(patch.len(), 4);
        assert_eq!(
            String::from_utf8(patch.as_bytes().to_vec()).unwrap(),
            serde_json::to_string(&patch.operations()).unwrap()
        );
    }
}
