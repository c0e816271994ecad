//! The webhook's rules on recorded-shape AdmissionReview v1 fixtures (tests/fixtures/admission):
//! each patch is applied to the pod it was made for, the result checked, and the result
//! re-submitted to show the webhook is idempotent.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use trust_rotation_operator::crd::Phase;
use trust_rotation_operator::webhook::patch::{
    MAX_REFRESH_ENV, PROXY_ADDITIONAL_ENV_ANNOTATION, RotationView, TRUST_BUNDLE_ANNOTATION,
};
use trust_rotation_operator::webhook::review::{Outcome, Reviewed, review};

const ANCHOR_SHA: &str = "71b03c81ecabaeeaa817f574f7f343490c5a0bd57d33df3857bcb0cbd01dca94";
const DESIRED: &str = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/admission/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn synced_view() -> RotationView {
    RotationView::new(Phase::Synced, Some(DESIRED.to_owned()), None)
}

fn accelerating_view() -> RotationView {
    RotationView::new(
        Phase::PropagatingTrustRoots,
        Some(DESIRED.to_owned()),
        Some("5m".to_owned()),
    )
}

/// `emojivoto` has `linkerd.io/inject: enabled`; every other namespace has no annotations.
fn namespaces(ns: &str) -> Option<String> {
    (ns == "emojivoto").then(|| "enabled".to_owned())
}

fn no_namespace_annotations(_: &str) -> Option<String> {
    None
}

fn run(body: &Value, view: Option<&RotationView>) -> Reviewed {
    review(&serde_json::to_vec(body).unwrap(), view, &namespaces)
}

fn response(r: &Reviewed) -> Value {
    serde_json::to_value(&r.review).unwrap()["response"].clone()
}

/// The JSON Patch of a response: base64 in the JSON, as the API server encodes `[]byte`.
fn patch_of(r: &Reviewed) -> json_patch::Patch {
    use base64::Engine;
    let resp = response(r);
    assert_eq!(resp["patchType"], "JSONPatch");
    let b64 = resp["patch"].as_str().expect("a base64 patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(r.review.decoded_patch().as_ref(), Some(&patch));
    patch
}

/// Applies the response's patch to the request's pod; returns the new pod and a review of it.
fn apply(body: &Value, r: &Reviewed) -> (Value, Value) {
    let mut pod = body["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch_of(r)).expect("the patch applies");
    let _: Pod = serde_json::from_value(pod.clone()).expect("the result is a valid Pod");
    let mut again = body.clone();
    again["request"]["object"] = pod.clone();
    (pod, again)
}

fn assert_idempotent(again: &Value, view: &RotationView) {
    let second = run(again, Some(view));
    assert_eq!(second.outcome, Outcome::Unchanged, "{:?}", second.note);
    assert!(response(&second)["patch"].is_null());
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod["metadata"]["annotations"][key].as_str()
}

fn proxy_env<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a str> {
    pod["spec"][list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "linkerd-proxy")?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[test]
fn no_annotations_map_in_meshed_namespace_creates_it() {
    let body = fixture("pod-no-annotations");
    assert!(body["request"]["object"]["metadata"]["annotations"].is_null());
    let r = run(&body, Some(&synced_view()));
    assert_eq!(r.outcome, Outcome::Patched);
    assert_eq!(r.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response(&r)["uid"], r.uid, "uid echoed");
    assert_eq!(response(&r)["allowed"], true);
    let ops = serde_json::to_value(patch_of(&r)).unwrap();
    assert_eq!(
        ops,
        json!([{"op": "add", "path": "/metadata/annotations",
                "value": {TRUST_BUNDLE_ANNOTATION: DESIRED}}])
    );
    let (pod, again) = apply(&body, &r);
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), Some(DESIRED));
    assert_idempotent(&again, &synced_view());
}

#[test]
fn pod_without_injection_in_plain_namespace_is_skipped() {
    let body = fixture("pod-no-annotations");
    let r = review(
        &serde_json::to_vec(&body).unwrap(),
        Some(&accelerating_view()),
        &no_namespace_annotations,
    );
    assert_eq!(r.outcome, Outcome::Skipped);
    assert_eq!(response(&r)["allowed"], true);
    assert!(response(&r)["patch"].is_null());
}

#[test]
fn accelerating_phase_adds_max_refresh_to_additional_env() {
    let body = fixture("pod-inject-enabled");
    let r = run(&body, Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Patched);
    let (pod, again) = apply(&body, &r);
    let env: Value =
        serde_json::from_str(annotation(&pod, PROXY_ADDITIONAL_ENV_ANNOTATION).unwrap()).unwrap();
    assert_eq!(env, json!([{"name": MAX_REFRESH_ENV, "value": "300s"}]));
    assert_eq!(annotation(&pod, "linkerd.io/inject"), Some("enabled"));
    assert_idempotent(&again, &accelerating_view());
}

#[test]
fn every_accelerating_phase_and_only_those() {
    let body = fixture("pod-inject-enabled");
    for phase in Phase::ALL {
        let view = RotationView::new(phase, Some(DESIRED.to_owned()), Some("5m".to_owned()));
        let r = run(&body, Some(&view));
        let (pod, _) = apply(&body, &r);
        let accelerating = matches!(
            phase,
            Phase::PropagatingTrustRoots
                | Phase::WaitingForRemoteClusters
                | Phase::WaitingForIdentityRotation
                | Phase::RenewingWorkloadCerts
        );
        assert_eq!(
            annotation(&pod, PROXY_ADDITIONAL_ENV_ANNOTATION).is_some(),
            accelerating,
            "{phase}"
        );
    }
    // An interval that is zero or unset publishes nothing.
    for interval in [None, Some("0s")] {
        let view = RotationView::new(
            Phase::PropagatingTrustRoots,
            Some(DESIRED.to_owned()),
            interval.map(str::to_owned),
        );
        let (pod, _) = apply(&body, &run(&body, Some(&view)));
        assert!(
            annotation(&pod, PROXY_ADDITIONAL_ENV_ANNOTATION).is_none(),
            "{interval:?}"
        );
    }
}

#[test]
fn users_additional_env_entries_are_kept_and_ours_merged_by_name() {
    let body = fixture("pod-user-additional-env");
    let r = run(&body, Some(&accelerating_view()));
    let (pod, again) = apply(&body, &r);
    let env: Value =
        serde_json::from_str(annotation(&pod, PROXY_ADDITIONAL_ENV_ANNOTATION).unwrap()).unwrap();
    assert_eq!(
        env,
        json!([
            {"name": "LINKERD2_PROXY_LOG", "value": "debug"},
            {"name": MAX_REFRESH_ENV, "value": "300s"},
            {"name": "MY_FLAG", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        ]),
        "the user's 24h is replaced in place, everything else kept in order"
    );
    assert_idempotent(&again, &accelerating_view());
}

#[test]
fn invalid_additional_env_json_is_left_untouched_and_reported() {
    let body = fixture("pod-invalid-additional-env");
    let original = annotation(&body["request"]["object"], PROXY_ADDITIONAL_ENV_ANNOTATION)
        .unwrap()
        .to_owned();
    let r = run(&body, Some(&accelerating_view()));
    assert!(r.invalid_additional_env);
    // The log's warning names whose pod it was: a ReplicaSet's pod has no name until after
    // admission, so its generateName stands in.
    assert_eq!(r.name, "web-5d8f7c9b6-");
    assert!(
        r.note.as_deref().unwrap().contains("is not valid JSON"),
        "{:?}",
        r.note
    );
    // Still stamped with the bundle; the annotation itself is not touched.
    assert_eq!(r.outcome, Outcome::Patched);
    let (pod, _) = apply(&body, &r);
    assert_eq!(
        annotation(&pod, PROXY_ADDITIONAL_ENV_ANNOTATION),
        Some(original.as_str())
    );
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), Some(DESIRED));
}

#[test]
fn disabled_pod_in_enabled_namespace_is_not_meshed() {
    let r = run(&fixture("pod-disabled"), Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Skipped);
    assert_eq!(r.note.as_deref(), Some("not meshed"));
}

/// Linkerd's injector does not inject a pod in the host's network: nothing to stamp. One that
/// already has a proxy is meshed all the same.
#[test]
fn host_network_pod_is_not_meshed_unless_it_has_a_proxy() {
    let body = fixture("pod-host-network");
    let r = run(&body, Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Skipped);
    assert_eq!(r.note.as_deref(), Some("not meshed"));

    let mut injected = fixture("pod-injected");
    injected["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    let r = run(&injected, Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Patched);
}

/// Linkerd's injector does not inject a pod without its service-account token (the proxy
/// needs it for its identity): `automountServiceAccountToken: false` on the pod, or no token
/// mounted in the first container (the pod's ServiceAccount turned it off, so the
/// ServiceAccount admission plugin mounted nothing). One that already has a proxy is meshed all
/// the same.
#[test]
fn pod_without_a_service_account_token_is_not_meshed_unless_it_has_a_proxy() {
    let not_meshed = |body: &Value, case: &str| {
        let r = run(body, Some(&accelerating_view()));
        assert_eq!(r.outcome, Outcome::Skipped, "{case}");
        assert_eq!(r.note.as_deref(), Some("not meshed"), "{case}");
    };
    not_meshed(&fixture("pod-automount-disabled"), "the recorded pod");

    fn spec(body: &mut Value) -> &mut Value {
        &mut body["request"]["object"]["spec"]
    }
    let mut off_but_mounted = fixture("pod-inject-enabled");
    spec(&mut off_but_mounted)["automountServiceAccountToken"] = json!(false);
    not_meshed(
        &off_but_mounted,
        "automount off on the pod, a token mounted all the same",
    );

    let mut not_mounted = fixture("pod-inject-enabled");
    spec(&mut not_mounted)["containers"][0]["volumeMounts"] =
        json!([{"name": "data", "mountPath": "/data"}]);
    not_meshed(
        &not_mounted,
        "no token mounted (the ServiceAccount turns it off)",
    );

    // The injector looks at the first container only.
    let mut second_only = fixture("pod-inject-enabled");
    let first = spec(&mut second_only)["containers"][0].clone();
    let mut bare = first.clone();
    bare["name"] = json!("init-like");
    bare.as_object_mut().unwrap().remove("volumeMounts");
    spec(&mut second_only)["containers"] = json!([bare, first]);
    not_meshed(&second_only, "token mounted in the second container only");

    let mut on = fixture("pod-inject-enabled");
    spec(&mut on)["automountServiceAccountToken"] = json!(true);
    let r = run(&on, Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Patched, "automount on, token mounted");
    assert_idempotent(&apply(&on, &r).1, &accelerating_view());

    let mut injected = fixture("pod-injected");
    spec(&mut injected)["automountServiceAccountToken"] = json!(false);
    let r = run(&injected, Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Patched, "a proxy already there");
}

/// Meshed or not as Linkerd's injector decides from `linkerd.io/inject` (its truth table in
/// linkerd2's pkg/inject/report.go): the namespace's `enabled`/`ingress` unless the pod says
/// `disabled`; else the pod's; an empty value counts as none; an unknown value on either
/// side means no injection.
#[test]
fn inject_annotation_truth_table_is_linkerds() {
    let cases: [(Option<&str>, Option<&str>, bool); 16] = [
        // (namespace, pod, meshed)
        (Some("enabled"), Some("enabled"), true),
        (Some("enabled"), Some(""), true),
        (Some("enabled"), None, true),
        (Some("ingress"), None, true),
        (Some("enabled"), Some("disabled"), false),
        (Some("disabled"), Some("enabled"), true),
        (Some(""), Some("enabled"), true),
        (None, Some("enabled"), true),
        (None, Some("ingress"), true),
        (Some("disabled"), Some("disabled"), false),
        (Some(""), Some("disabled"), false),
        (Some("disabled"), Some(""), false),
        (Some(""), Some(""), false),
        (None, None, false),
        (Some("yes"), Some("enabled"), false),
        (Some("enabled"), Some("true"), false),
    ];
    for (namespace, pod, meshed) in cases {
        let mut body = fixture("pod-no-annotations");
        if let Some(value) = pod {
            body["request"]["object"]["metadata"]["annotations"] =
                json!({"linkerd.io/inject": value});
        }
        let namespace_inject = move |_: &str| namespace.map(str::to_owned);
        let r = review(
            &serde_json::to_vec(&body).unwrap(),
            Some(&accelerating_view()),
            &namespace_inject,
        );
        let expected = if meshed {
            Outcome::Patched
        } else {
            Outcome::Skipped
        };
        assert_eq!(r.outcome, expected, "namespace {namespace:?}, pod {pod:?}");
    }
}

#[test]
fn injected_pod_gets_fingerprint_of_its_own_anchors_and_env_on_the_proxy() {
    let body = fixture("pod-injected");
    let r = run(&body, Some(&accelerating_view()));
    let (pod, again) = apply(&body, &r);
    assert_eq!(
        annotation(&pod, TRUST_BUNDLE_ANNOTATION),
        Some(ANCHOR_SHA),
        "from the pod's own LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS, not the desired bundle"
    );
    assert_eq!(
        annotation(&pod, "linkerd.io/trust-root-sha256"),
        annotation(&pod, TRUST_BUNDLE_ANNOTATION),
        "our fingerprint equals Linkerd's own for a canonical bundle"
    );
    assert_eq!(proxy_env(&pod, "containers", MAX_REFRESH_ENV), Some("300s"));
    assert_idempotent(&again, &accelerating_view());
}

/// The injected pod, its anchors' env entry replaced by `entry`, already stamped with the
/// desired bundle's fingerprint (as the first call, before injection, stamps it).
fn injected_with_anchors(entry: Value) -> Value {
    let mut body = fixture("pod-injected");
    let object = &mut body["request"]["object"];
    for e in object["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
    {
        if e["name"] == "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS" {
            *e = entry.clone();
        }
    }
    object["metadata"]["annotations"][TRUST_BUNDLE_ANNOTATION] = json!(DESIRED);
    body
}

/// Injected anchors that do not parse: the fingerprint stamped at the first call (from the
/// desired bundle, before injection) is removed rather than left claiming a bundle the proxy
/// does not hold; the env var is still set, and the second run changes nothing.
#[test]
fn unparseable_injected_anchors_take_our_earlier_fingerprint_away() {
    let body = injected_with_anchors(json!({"name": "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
        "value": "not a certificate"}));
    let (pod, again) = apply(&body, &run(&body, Some(&accelerating_view())));
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), None);
    assert_eq!(proxy_env(&pod, "containers", MAX_REFRESH_ENV), Some("300s"));
    assert_idempotent(&again, &accelerating_view());
}

/// Injected anchors given through `valueFrom` (a ConfigMap the webhook does not read): no
/// fingerprint is known true of them. The earlier stamp goes, as for anchors that do not
/// parse, and the log says why; an entry with neither `value` nor `valueFrom` is the empty text,
/// which is no bundle either.
#[test]
fn anchors_from_value_from_or_empty_take_our_earlier_fingerprint_away() {
    for (entry, note) in [
        (
            json!({"name": "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
                "valueFrom": {"configMapKeyRef": {"name": "other", "key": "ca-bundle.crt"}}}),
            "set through valueFrom",
        ),
        (
            json!({"name": "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"}),
            "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
        ),
    ] {
        let body = injected_with_anchors(entry.clone());
        let r = run(&body, Some(&accelerating_view()));
        assert!(
            r.note.as_deref().is_some_and(|n| n.contains(note)),
            "{entry}: {:?}",
            r.note
        );
        let (pod, again) = apply(&body, &r);
        assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), None, "{entry}");
        assert_eq!(proxy_env(&pod, "containers", MAX_REFRESH_ENV), Some("300s"));
        assert_idempotent(&again, &accelerating_view());
    }
}

/// The webhook's second call for a pod (reinvoked after the injector): anchors that are the
/// trust-roots ConfigMap's text get the view's fingerprint without being parsed; other anchors
/// are parsed as before.
#[test]
fn injected_anchors_that_are_the_configmap_text_take_the_known_fingerprint() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use trust_rotation_operator::crd::{TrustAnchorRotation, TrustAnchorRotationStatus};
    use trust_rotation_operator::webhook::view::{ViewConfig, compute_view};

    let body = fixture("pod-injected");
    let anchors = body["request"]["object"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let tar = TrustAnchorRotation {
        status: Some(TrustAnchorRotationStatus {
            phase: Phase::PropagatingTrustRoots,
            workload_certificate_refresh_interval: Some("5m".to_owned()),
            ..Default::default()
        }),
        ..TrustAnchorRotation::new("cluster", Default::default())
    };
    let config_map = |text: &str| ConfigMap {
        data: Some([("ca-bundle.crt".to_owned(), text.to_owned())].into()),
        ..Default::default()
    };
    // From the ConfigMap, as the webhook's watches build it: surrounding whitespace differs
    // from the pod's text and does not matter.
    let (view, problem) = compute_view(
        Some(&tar),
        Some(&config_map(&format!("\n{anchors}\n\n"))),
        &ViewConfig::default(),
    );
    assert_eq!(problem, None);
    assert_eq!(view.desired_bundle_fingerprint(), Some(ANCHOR_SHA));
    let from_view = run(&body, Some(&view));
    let parsed = run(&body, Some(&accelerating_view()));
    assert_eq!(from_view.review.patch_text(), parsed.review.patch_text());

    // The shortcut is what answered: given a view whose fingerprint is not its text's (which
    // `compute_view` never builds), the pod gets that fingerprint.
    let contrived = accelerating_view().with_desired_bundle_text(&anchors);
    let (pod, _) = apply(&body, &run(&body, Some(&contrived)));
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), Some(DESIRED));
    // Any other text is parsed.
    let other = accelerating_view().with_desired_bundle_text("-----BEGIN CERTIFICATE-----");
    let (pod, _) = apply(&body, &run(&body, Some(&other)));
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), Some(ANCHOR_SHA));

    // An unusable bundle gives no fingerprint and says why, naming the ConfigMap: text that is
    // no bundle, or the bundle under binaryData.
    let (view, problem) = compute_view(
        Some(&tar),
        Some(&config_map("junk")),
        &ViewConfig::default(),
    );
    assert_eq!(view.desired_bundle_fingerprint(), None);
    assert_eq!(
        problem.as_deref(),
        Some(
            "ConfigMap linkerd/linkerd-identity-trust-roots key ca-bundle.crt: holds no CERTIFICATE block"
        )
    );
    let binary = ConfigMap {
        binary_data: Some(
            [(
                "ca-bundle.crt".to_owned(),
                k8s_openapi::ByteString(anchors.clone().into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let (view, problem) = compute_view(Some(&tar), Some(&binary), &ViewConfig::default());
    assert_eq!(view.desired_bundle_fingerprint(), None);
    assert!(
        problem.as_deref().is_some_and(|p| p.starts_with(
            "ConfigMap linkerd/linkerd-identity-trust-roots: ca-bundle.crt is under binaryData"
        )),
        "{problem:?}"
    );
    // No ConfigMap, or none with the key: said too (a deletion is not "usable again").
    let (view, problem) = compute_view(Some(&tar), None, &ViewConfig::default());
    assert_eq!(view.desired_bundle_fingerprint(), None);
    assert_eq!(
        problem.as_deref(),
        Some("ConfigMap linkerd/linkerd-identity-trust-roots not found")
    );
    let (_, problem) = compute_view(
        Some(&tar),
        Some(&ConfigMap::default()),
        &ViewConfig::default(),
    );
    assert_eq!(
        problem.as_deref(),
        Some("ConfigMap linkerd/linkerd-identity-trust-roots has no key ca-bundle.crt")
    );
}

#[test]
fn injected_proxy_without_env_list_gets_one() {
    let body = fixture("pod-injected-no-env");
    let r = run(&body, Some(&accelerating_view()));
    let (pod, again) = apply(&body, &r);
    let proxy = &pod["spec"]["containers"][0];
    assert_eq!(proxy["name"], "linkerd-proxy");
    assert_eq!(
        proxy["env"],
        json!([{"name": MAX_REFRESH_ENV, "value": "300s"}])
    );
    assert_idempotent(&again, &accelerating_view());
}

#[test]
fn native_sidecar_proxy_in_init_containers() {
    let body = fixture("pod-native-sidecar");
    let r = run(&body, Some(&accelerating_view()));
    let (pod, again) = apply(&body, &r);
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), Some(ANCHOR_SHA));
    assert_eq!(
        proxy_env(&pod, "initContainers", MAX_REFRESH_ENV),
        Some("300s")
    );
    assert_idempotent(&again, &accelerating_view());
}

#[test]
fn annotation_keys_with_slash_and_tilde_are_escaped_and_kept() {
    let body = fixture("pod-escaped-keys");
    let r = run(&body, Some(&accelerating_view()));
    let ops = serde_json::to_value(patch_of(&r)).unwrap();
    let paths: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/metadata/annotations/trust.linkerd.io~1trust-bundle-sha256"));
    assert!(paths.contains(&"/metadata/annotations/config.linkerd.io~1proxy-additional-env"));
    let (pod, again) = apply(&body, &r);
    for (k, v) in [
        ("example.com/a~b", "tilde"),
        ("example.com/x/y", "slash"),
        ("~1", "looks-escaped"),
    ] {
        assert_eq!(annotation(&pod, k), Some(v), "{k}");
    }
    assert_idempotent(&again, &accelerating_view());
}

#[test]
fn control_plane_and_mirror_pods_are_left_alone() {
    for (name, note) in [
        ("pod-control-plane", "Linkerd control-plane pod"),
        ("pod-mirror", "mirror pod"),
    ] {
        let r = run(&fixture(name), Some(&accelerating_view()));
        assert_eq!(r.outcome, Outcome::Skipped, "{name}");
        assert_eq!(r.note.as_deref(), Some(note), "{name}");
    }
}

#[test]
fn dry_run_gets_the_same_patch() {
    let dry = run(&fixture("pod-dry-run"), Some(&accelerating_view()));
    let real = run(&fixture("pod-inject-enabled"), Some(&accelerating_view()));
    assert_eq!(dry.outcome, Outcome::Patched);
    assert_eq!(patch_of(&dry), patch_of(&real));
}

#[test]
fn updates_and_other_kinds_are_allowed_unchanged() {
    for name in ["pod-update", "deployment-create"] {
        let r = run(&fixture(name), Some(&accelerating_view()));
        assert_eq!(r.outcome, Outcome::Skipped, "{name}");
        let resp = response(&r);
        assert_eq!(resp["allowed"], true, "{name}");
        assert!(resp["patch"].is_null(), "{name}");
        assert_eq!(
            resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
            "{name}"
        );
    }
    // A request that names its pod is logged under that name, not the pod's generateName.
    let r = run(&fixture("pod-update"), Some(&accelerating_view()));
    assert_eq!(r.name, "web-5d8f7c9b6-x2x7q");
}

#[test]
fn wrong_api_version_is_invalid_with_uid_echoed() {
    let r = run(&fixture("wrong-api-version"), Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Invalid);
    let resp = response(&r);
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(
        resp["allowed"], true,
        "an unusable body is answered, never denied"
    );
    assert_eq!(resp["status"]["code"], 400);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("admission.k8s.io/v1beta1"),
        "{resp}"
    );
}

#[test]
fn missing_request_and_garbage_are_invalid_not_errors() {
    let r = run(&fixture("missing-request"), Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Invalid);
    assert_eq!(
        response(&r)["status"]["message"],
        "AdmissionReview has no request"
    );
    for garbage in [&b""[..], b"{", b"[]", b"null", b"\xff\xfe"] {
        let r = review(garbage, Some(&accelerating_view()), &namespaces);
        assert_eq!(r.outcome, Outcome::Invalid, "{garbage:?}");
        assert!(
            response(&r)["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("body is not an AdmissionReview"),
            "{garbage:?}"
        );
    }
}

/// A request field of the wrong type makes the body no AdmissionReview, but its uid, when it
/// is a string, is still echoed.
#[test]
fn a_field_of_the_wrong_type_is_invalid_with_uid_echoed() {
    for (body, uid) in [
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","operation":5}}"#,
            "u1",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":"Pod","uid":"u2"}}"#,
            "u2",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7,"operation":5}}"#,
            "",
        ),
    ] {
        let r = review(body.as_bytes(), Some(&accelerating_view()), &namespaces);
        assert_eq!(r.outcome, Outcome::Invalid, "{body}");
        let resp = response(&r);
        assert_eq!(resp["uid"], uid, "{body}");
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("body is not an AdmissionReview"),
            "{resp}"
        );
    }
}

#[test]
fn unsynced_view_patches_nothing() {
    let r = run(&fixture("pod-inject-enabled"), None);
    assert_eq!(r.outcome, Outcome::Skipped);
    assert_eq!(
        r.note.as_deref(),
        Some("the rotation view has not synced yet")
    );
    assert!(response(&r)["patch"].is_null());
    assert!(
        r.unsynced,
        "counted as allowed unpatched for want of the view"
    );
    // What would not have been patched anyway is not counted as unsynced.
    for other in [
        "deployment-create",
        "pod-update",
        "wrong-api-version",
        "missing-request",
    ] {
        let r = run(&fixture(other), None);
        assert!(!r.unsynced, "{other}: {:?}", r.outcome);
    }
    let r = review(b"{not json", None, &namespaces);
    assert_eq!(r.outcome, Outcome::Invalid);
    assert!(!r.unsynced);
}

#[test]
fn one_mebibyte_pod_is_patched() {
    let mut body = fixture("pod-inject-enabled");
    body["request"]["object"]["metadata"]["annotations"]["example.com/large"] =
        Value::String("x".repeat(1024 * 1024));
    let r = run(&body, Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Patched);
    let (pod, again) = apply(&body, &r);
    assert_eq!(
        annotation(&pod, "example.com/large").map(str::len),
        Some(1024 * 1024)
    );
    assert_idempotent(&again, &accelerating_view());
}

#[test]
fn object_that_is_not_a_pod_is_invalid_but_allowed() {
    let mut body = fixture("pod-inject-enabled");
    body["request"]["object"]["spec"]["containers"] = json!("not a list");
    let r = run(&body, Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Invalid);
    assert_eq!(r.namespace, "emojivoto");
    let resp = response(&r);
    assert_eq!(resp["uid"], r.uid);
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_null());
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("request object is not a Pod"),
        "{message}"
    );
}

/// Found by the fuzzer: a pod with no metadata at all (never sent by the API server) once got a
/// patch whose parent did not exist.
#[test]
fn pod_without_metadata_gets_it_created() {
    let mut body = fixture("pod-injected");
    body["request"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("metadata");
    let r = run(&body, Some(&accelerating_view()));
    assert_eq!(r.outcome, Outcome::Patched, "{:?}", r.note);
    let ops = serde_json::to_value(patch_of(&r)).unwrap();
    assert_eq!(ops[0]["path"], "/metadata");
    let (pod, again) = apply(&body, &r);
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), Some(ANCHOR_SHA));
    assert_idempotent(&again, &accelerating_view());
}

/// serde's derived structs also read a JSON array, field by field in declaration order: an
/// AdmissionReview, a request or a pod written as arrays was once read as if it were the
/// object. The API server never sends that; the webhook must call it invalid, not patch it.
#[test]
fn arrays_in_place_of_objects_are_invalid() {
    let body = fixture("pod-inject-enabled");
    let request = &body["request"];
    let pod = &request["object"];
    let as_array = |fields: &[&Value]| Value::Array(fields.iter().map(|v| (*v).clone()).collect());
    let request_array = as_array(&[
        &request["uid"],
        &request["kind"],
        &request["operation"],
        &Value::Null,
        &request["namespace"],
        &request["name"],
        pod,
    ]);
    let mut cases = vec![(
        "the review",
        as_array(&[&body["apiVersion"], &body["kind"], request]),
    )];
    let mut with = |what: &'static str, pointer: &str, value: Value| {
        let mut b = body.clone();
        *b.pointer_mut(pointer).unwrap() = value;
        cases.push((what, b));
    };
    with("the request", "/request", request_array);
    with(
        "the request's kind",
        "/request/kind",
        as_array(&[&request["kind"]["group"], &request["kind"]["kind"]]),
    );
    with(
        "the pod",
        "/request/object",
        as_array(&[&pod["metadata"], &pod["spec"]]),
    );
    with(
        "the pod's metadata",
        "/request/object/metadata",
        as_array(&[&pod["metadata"]["annotations"], &pod["metadata"]["labels"]]),
    );
    let container = &pod["spec"]["containers"][0];
    with(
        "a container",
        "/request/object/spec/containers/0",
        as_array(&[&container["name"], &json!([]), &json!([])]),
    );
    for (what, body) in cases {
        let r = run(&body, Some(&accelerating_view()));
        assert_eq!(
            r.outcome,
            Outcome::Invalid,
            "{what} as an array: {:?}",
            r.note
        );
        let message = response(&r)["status"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains("invalid type: sequence, expected an object"),
            "{what}: {message}"
        );
        // Once the request is read, the pod is what is named as wrong.
        if what.starts_with("the pod") || what == "a container" {
            assert!(
                message.starts_with("request object is not a Pod"),
                "{what}: {message}"
            );
            assert_eq!(r.namespace, "emojivoto", "{what}");
        }
    }
}
