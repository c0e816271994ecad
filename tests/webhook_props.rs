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
        // A control-plane pod (left alone) one time in five.
        proptest::bool::weighted(0.2),
        1usize..3,
        // Half the pods before the injector has added its proxy, half after.
        prop_oneof![
            2 => Just(ProxyAt::None),
            1 => (0usize..3).prop_map(ProxyAt::Containers),
            1 => Just(ProxyAt::Init)
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
        // Every phase, and the phases that accelerate as often again: they are the ones with
        // the most to check.
        prop_oneof![
            proptest::sample::select(Phase::ALL.to_vec()),
            Just(Phase::PropagatingTrustRoots),
            Just(Phase::RenewingWorkloadCerts),
        ],
        proptest::option::of(Just("ab".repeat(32))),
        proptest::option::weighted(
            0.8,
            prop_oneof![
                Just("5m".to_owned()),
                Just("300s".to_owned()),
                Just("1h30m".to_owned()),
                Just("0s".to_owned()),
                Just("1.5s".to_owned()),
                Just("junk".to_owned()),
            ],
        ),
    )
        .prop_map(|(phase, fp, interval)| RotationView::new(phase, fp, interval))
}

/// The namespace's `linkerd.io/inject`, if it has one.
fn namespace() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(
        prop_oneof![
            2 => Just("enabled"),
            1 => Just("disabled"),
            1 => Just("ingress")
        ]
        .prop_map(str::to_owned),
    )
}

/// What one generated case exercised.
#[derive(Debug, PartialEq)]
enum Case {
    Skipped,
    Meshed { proxy: bool, accelerated: bool },
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn patch_applies_keeps_user_data_and_is_idempotent(pod_json in pod(), view in view(), ns in namespace()) {
        check(pod_json, view, ns)?;
    }
}

const CASES: u32 = 2000;

/// The cases of the property above (as many, from a fixed seed) exercise each kind of pod: a
/// property that held because every pod was skipped would prove nothing.
#[test]
fn generated_cases_cover_every_kind_of_pod() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (pod(), view(), namespace());
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..CASES {
        let tree = strategy.new_tree(&mut runner).unwrap();
        let (pod_json, view, ns) = proptest::strategy::ValueTree::current(&tree);
        let case = check(pod_json, view, ns).unwrap();
        *counts.entry(format!("{case:?}")).or_default() += 1;
    }
    eprintln!("{CASES} cases: {counts:#?}");
    for case in [
        Case::Skipped,
        Case::Meshed {
            proxy: false,
            accelerated: false,
        },
        Case::Meshed {
            proxy: false,
            accelerated: true,
        },
        Case::Meshed {
            proxy: true,
            accelerated: false,
        },
        Case::Meshed {
            proxy: true,
            accelerated: true,
        },
    ] {
        let n = counts
            .get(&format!("{case:?}"))
            .copied()
            .unwrap_or_default();
        assert!(n >= CASES / 20, "{case:?}: {n} of {CASES}");
    }
}

/// The property, on one case.
fn check(pod_json: Value, view: RotationView, ns: Option<String>) -> Result<Case, TestCaseError> {
    let _: Pod = serde_json::from_value(pod_json.clone()).expect("generated pods are Pods");
    // PodIn borrows its strings, so it is decoded from bytes, as the server does.
    let pod_bytes = serde_json::to_vec(&pod_json).unwrap();
    let pod = PodIn::from_json(&pod_bytes).unwrap();
    let PodMutation::Meshed { patch, .. } = mutate_pod(&pod, ns.as_deref(), &view) else {
        return Ok(Case::Skipped);
    };
    let mut patched = pod_json.clone();
    json_patch::patch(&mut patched, &patch.operations())
        .map_err(|e| TestCaseError::fail(format!("patch {patch:?} does not apply: {e}")))?;
    let _: Pod = serde_json::from_value(patched.clone())
        .map_err(|e| TestCaseError::fail(format!("result is not a Pod: {e}")))?;
    let patched_bytes = serde_json::to_vec(&patched).unwrap();
    let patched_pod = PodIn::from_json(&patched_bytes).unwrap();

    // Every annotation the user had is still there, untouched, except the two we own.
    if let Some(before) = pod_json["metadata"]["annotations"].as_object() {
        for (k, v) in before {
            if k != TRUST_BUNDLE_ANNOTATION && k != PROXY_ADDITIONAL_ENV_ANNOTATION {
                prop_assert_eq!(
                    &patched["metadata"]["annotations"][k],
                    v,
                    "annotation {}",
                    k
                );
            }
        }
    }
    // Containers are neither added nor removed nor reordered.
    let names = |p: &Value, list: &str| -> Vec<Value> {
        p["spec"][list]
            .as_array()
            .map(|l| l.iter().map(|c| c["name"].clone()).collect())
            .unwrap_or_default()
    };
    prop_assert_eq!(
        names(&pod_json, "containers"),
        names(&patched, "containers")
    );
    prop_assert_eq!(
        names(&pod_json, "initContainers"),
        names(&patched, "initContainers")
    );

    let mut proxy_present = false;
    let accelerated = view.accelerated_max_refresh();
    if let Some(interval) = &accelerated {
        // While accelerating, the proxy runs with the interval: the last definition of the
        // name (the one the kubelet uses) has it.
        for list in ["containers", "initContainers"] {
            let Some(proxy) = patched["spec"][list]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == "linkerd-proxy"))
            else {
                continue;
            };
            proxy_present = true;
            let effective = proxy["env"]
                .as_array()
                .and_then(|env| env.iter().rev().find(|e| e["name"] == MAX_REFRESH_ENV))
                .map(|e| e["value"].clone());
            prop_assert_eq!(
                effective,
                Some(json!(interval)),
                "{} env: {}",
                list,
                proxy["env"]
            );
        }
        // And so will the proxy the injector adds: the additional-env list has it, unless the
        // user's annotation is not a list, which is left as it was.
        let before = pod_json["metadata"]["annotations"][PROXY_ADDITIONAL_ENV_ANNOTATION].as_str();
        let after = patched["metadata"]["annotations"][PROXY_ADDITIONAL_ENV_ANNOTATION].as_str();
        match before.map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Array(_))) | None => {
                let list: Value = serde_json::from_str(after.unwrap_or_default())
                    .map_err(|e| TestCaseError::fail(format!("additional env {after:?}: {e}")))?;
                let effective = list
                    .as_array()
                    .and_then(|env| env.iter().rev().find(|e| e["name"] == MAX_REFRESH_ENV))
                    .map(|e| e["value"].clone());
                prop_assert_eq!(effective, Some(json!(interval)), "additional env: {}", list);
            }
            Some(_) => prop_assert_eq!(after, before, "an unusable annotation is left as it was"),
        }
    } else {
        proxy_present = ["containers", "initContainers"].iter().any(|list| {
            patched["spec"][list]
                .as_array()
                .is_some_and(|l| l.iter().any(|c| c["name"] == "linkerd-proxy"))
        });
    }

    // Re-running on our own output changes nothing.
    match mutate_pod(&patched_pod, ns.as_deref(), &view) {
        PodMutation::Meshed { patch, .. } => {
            prop_assert!(patch.is_empty(), "second patch: {:?}", patch)
        }
        PodMutation::Skipped(r) => prop_assert!(false, "meshed pod became skipped: {:?}", r),
    }
    Ok(Case::Meshed {
        proxy: proxy_present,
        accelerated: accelerated.is_some(),
    })
}
