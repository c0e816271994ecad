//! Property test of the patch builder: for generated pods, namespaces and rotation views, the
//! patch always applies, the result is a valid Pod that keeps everything the user had, and
//! running the webhook again on the result yields an empty patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Value, json};
use trust_rotation_operator::crd::Phase;
use trust_rotation_operator::webhook::admission::PodIn;
use trust_rotation_operator::webhook::patch::{
    MAX_REFRESH_ENV, PROXY_ADDITIONAL_ENV_ANNOTATION, PodMutation, RotationView,
    SERVICE_ACCOUNT_MOUNT_PATH, TRUST_BUNDLE_ANNOTATION, mutate_pod,
};

const ANCHOR: &str = include_str!("fixtures/anchor.pem");

fn annotation_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("linkerd.io/inject".to_owned()),
        Just(PROXY_ADDITIONAL_ENV_ANNOTATION.to_owned()),
        Just(TRUST_BUNDLE_ANNOTATION.to_owned()),
        Just("example.com/a~b".to_owned()),
        Just("~0~1/".to_owned()),
        "[a-z~/.]{1,12}",
    ]
}

fn annotation_value(key: String) -> BoxedStrategy<(String, String)> {
    let value: BoxedStrategy<String> = match key.as_str() {
        "linkerd.io/inject" => {
            prop_oneof![Just("enabled"), Just("ingress"), Just("disabled"), Just("junk")]
                .prop_map(str::to_owned)
                .boxed()
        }
        PROXY_ADDITIONAL_ENV_ANNOTATION => prop_oneof![
            Just("[]".to_owned()),
            Just("not json".to_owned()),
            Just("{\"name\":\"x\"}".to_owned()),
            Just(format!(
                "[{{\"name\":\"{MAX_REFRESH_ENV}\",\"value\":\"24h\"}},{{\"name\":\"A\",\"value\":\"1\"}}]"
            )),
            Just("[{\"name\":\"B\",\"valueFrom\":{\"fieldRef\":{\"fieldPath\":\"metadata.name\"}}}]".to_owned()),
        ]
        .boxed(),
        _ => ".{0,20}".boxed(),
    };
    value.prop_map(move |v| (key.clone(), v)).boxed()
}

fn annotations() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    proptest::option::of(
        proptest::collection::vec(annotation_key().prop_flat_map(annotation_value), 0..6)
            .prop_map(|kv| kv.into_iter().collect()),
    )
}

fn env_list() -> impl Strategy<Value = Option<Vec<Value>>> {
    let entry = prop_oneof![
        Just(json!({"name": "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", "value": ANCHOR})),
        Just(json!({"name": "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", "value": "garbage"})),
        Just(json!({"name": MAX_REFRESH_ENV, "value": "24h"})),
        Just(json!({"name": MAX_REFRESH_ENV, "value": "300s"})),
        Just(
            json!({"name": MAX_REFRESH_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        ),
        "[A-Z_]{1,8}".prop_map(|n| json!({"name": n, "value": "v"})),
    ];
    // Duplicate names included: the API server accepts them (with a warning) and the kubelet
    // lets the last one win.
    proptest::option::of(proptest::collection::vec(entry, 0..5))
}

/// Where the proxy is: absent, in containers at some position, or a native sidecar.
#[derive(Clone, Debug)]
enum ProxyAt {
    None,
    Containers(usize),
    Init,
}

/// The pod's service-account token: mounted (mostly), not mounted, or turned off on the pod
/// (and mounted all the same, which the injector also refuses).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Token {
    Mounted,
    NotMounted,
    TurnedOff,
}

fn token() -> impl Strategy<Value = Token> {
    prop_oneof![
        8 => Just(Token::Mounted),
        1 => Just(Token::NotMounted),
        1 => Just(Token::TurnedOff),
    ]
}

fn pod() -> impl Strategy<Value = Value> {
    (
        annotations(),
        any::<bool>(),
        1usize..3,
        prop_oneof![
            Just(ProxyAt::None),
            (0usize..3).prop_map(ProxyAt::Containers),
            Just(ProxyAt::Init)
        ],
        env_list(),
        token(),
    )
        .prop_map(|(annotations, control_plane, apps, proxy_at, proxy_env, token)| {
            let mut metadata = json!({"name": "p", "namespace": "ns", "labels": {"app": "x"}});
            if let Some(a) = annotations {
                metadata["annotations"] = json!(a);
            }
            if control_plane {
                metadata["labels"]["linkerd.io/control-plane-component"] = json!("identity");
            }
            let mut containers: Vec<Value> = (0..apps)
                .map(|i| json!({"name": format!("app{i}"), "image": "app"}))
                .collect();
            if token != Token::NotMounted {
                // As the ServiceAccount admission plugin mounts it, in every app container.
                for c in &mut containers {
                    c["volumeMounts"] = json!([{"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_MOUNT_PATH}]);
                }
            }
            let mut proxy = json!({"name": "linkerd-proxy", "image": "proxy"});
            if let Some(env) = proxy_env {
                proxy["env"] = json!(env);
            }
            let mut spec = json!({});
            match proxy_at {
                ProxyAt::None => {}
                ProxyAt::Containers(i) => containers.insert(i.min(containers.len()), proxy),
                ProxyAt::Init => {
                    proxy["restartPolicy"] = json!("Always");
                    spec["initContainers"] = json!([proxy]);
                }
            }
            spec["containers"] = json!(containers);
            if token == Token::TurnedOff {
                spec["automountServiceAccountToken"] = json!(false);
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
        })
}

fn view() -> impl Strategy<Value = RotationView> {
    (
        proptest::sample::select(Phase::ALL.to_vec()),
        proptest::option::of(Just("ab".repeat(32))),
        proptest::option::of(prop_oneof![
            Just("5m".to_owned()),
            Just("300s".to_owned()),
            Just("1h30m".to_owned()),
            Just("0s".to_owned()),
            Just("1.5s".to_owned()),
            Just("junk".to_owned()),
        ]),
    )
        .prop_map(|(phase, fp, interval)| RotationView::new(phase, fp, interval))
}

/// The namespace's `linkerd.io/inject`, if it has one.
fn namespace() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(
        prop_oneof![Just("enabled"), Just("disabled"), Just("ingress")].prop_map(str::to_owned),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn patch_applies_keeps_user_data_and_is_idempotent(pod_json in pod(), view in view(), ns in namespace()) {
        let _: Pod = serde_json::from_value(pod_json.clone()).expect("generated pods are Pods");
        // PodIn borrows its strings, so it is decoded from bytes, as the server does.
        let pod_bytes = serde_json::to_vec(&pod_json).unwrap();
        let pod = PodIn::from_json(&pod_bytes).unwrap();
        let PodMutation::Meshed { patch, .. } = mutate_pod(&pod, ns.as_deref(), &view) else {
            return Ok(());
        };
        let mut patched = pod_json.clone();
        json_patch::patch(&mut patched, &patch.operations()).map_err(|e| {
            TestCaseError::fail(format!("patch {patch:?} does not apply: {e}"))
        })?;
        let _: Pod = serde_json::from_value(patched.clone())
            .map_err(|e| TestCaseError::fail(format!("result is not a Pod: {e}")))?;
        let patched_bytes = serde_json::to_vec(&patched).unwrap();
        let patched_pod = PodIn::from_json(&patched_bytes).unwrap();

        // Every annotation the user had is still there, untouched, except the two we own.
        if let Some(before) = pod_json["metadata"]["annotations"].as_object() {
            for (k, v) in before {
                if k != TRUST_BUNDLE_ANNOTATION && k != PROXY_ADDITIONAL_ENV_ANNOTATION {
                    prop_assert_eq!(&patched["metadata"]["annotations"][k], v, "annotation {}", k);
                }
            }
        }
        // Containers are neither added nor removed nor reordered.
        let names = |p: &Value, list: &str| -> Vec<Value> {
            p["spec"][list].as_array().map(|l| l.iter().map(|c| c["name"].clone()).collect()).unwrap_or_default()
        };
        prop_assert_eq!(names(&pod_json, "containers"), names(&patched, "containers"));
        prop_assert_eq!(names(&pod_json, "initContainers"), names(&patched, "initContainers"));

        // While accelerating, the proxy runs with the interval: the last definition of the
        // name (the one the kubelet uses) has it.
        if let Some(interval) = view.accelerated_max_refresh() {
            for list in ["containers", "initContainers"] {
                let Some(proxy) = patched["spec"][list]
                    .as_array()
                    .and_then(|l| l.iter().find(|c| c["name"] == "linkerd-proxy"))
                else {
                    continue;
                };
                let effective = proxy["env"]
                    .as_array()
                    .and_then(|env| env.iter().rev().find(|e| e["name"] == MAX_REFRESH_ENV))
                    .map(|e| e["value"].clone());
                prop_assert_eq!(effective, Some(json!(interval)), "{} env: {}", list, proxy["env"]);
            }
        }

        // Re-running on our own output changes nothing.
        match mutate_pod(&patched_pod, ns.as_deref(), &view) {
            PodMutation::Meshed { patch, .. } => prop_assert!(patch.is_empty(), "second patch: {:?}", patch),
            PodMutation::Skipped(r) => prop_assert!(false, "meshed pod became skipped: {:?}", r),
        }
    }
}
