//! The webhook end to end: the real operator binary serving TLS on loopback, registered with
//! the real API server by URL, stamping pods the API server sends it, and a stopped or hung
//! webhook never blocking pod creation.

mod common;

use std::time::{Duration, Instant};

use common::{MANAGER, Operator, eventually, install_crd, register_webhook, start_control_plane};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use trust_rotation_operator::bundle::Bundle;
use trust_rotation_operator::crd::TrustAnchorRotation;
use trust_rotation_operator::testbed::ControlPlane;
use trust_rotation_operator::webhook::patch::{
    MAX_REFRESH_ENV, PROXY_ADDITIONAL_ENV_ANNOTATION, PROXY_CONTAINER, TRUST_ANCHORS_ENV,
    TRUST_BUNDLE_ANNOTATION,
};

const MESHED_NS: &str = "emojivoto";
const PLAIN_NS: &str = "plain";
const OPTED_OUT_NS: &str = "webhooks-off";
const ANCHOR_PEM: &str = include_str!("fixtures/anchor.pem");

fn anchor_fingerprint() -> String {
    Bundle::from_pem("tests/fixtures/anchor.pem", ANCHOR_PEM)
        .unwrap()
        .fingerprint()
}

async fn apply<K>(api: &Api<K>, name: &str, value: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

/// Namespaces, the trust-roots ConfigMap and the `cluster` rotation in an accelerated phase.
async fn seed_cluster(cp: &ControlPlane) {
    let client = cp.client();
    install_crd(&client).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    for (name, annotations, labels) in [
        ("linkerd", json!({}), json!({})),
        (
            MESHED_NS,
            json!({"linkerd.io/inject": "enabled"}),
            json!({}),
        ),
        (PLAIN_NS, json!({}), json!({})),
        (
            OPTED_OUT_NS,
            json!({"linkerd.io/inject": "enabled"}),
            json!({"config.linkerd.io/admission-webhooks": "disabled"}),
        ),
    ] {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": annotations, "labels": labels}});
        apply(&nss, name, ns).await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "linkerd");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "linkerd-identity-trust-roots"},
        "data": {"ca-bundle.crt": ANCHOR_PEM}});
    apply(&cms, "linkerd-identity-trust-roots", cm).await;
    set_rotation_phase(&client, "PropagatingTrustRoots").await;
    // Pods need their namespace's default ServiceAccount, which the controller-manager creates.
    for ns in [MESHED_NS, PLAIN_NS, OPTED_OUT_NS] {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        eventually(
            &format!("ServiceAccount {ns}/default"),
            Duration::from_secs(30),
            || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok().flatten() }
            },
        )
        .await;
    }
}

async fn set_rotation_phase(client: &kube::Client, phase: &str) {
    let tars: Api<TrustAnchorRotation> = Api::all(client.clone());
    let tar = json!({"apiVersion": "trust.linkerd.io/v1alpha1", "kind": "TrustAnchorRotation",
        "metadata": {"name": "cluster"}, "spec": {}});
    apply(&tars, "cluster", tar).await;
    let status = json!({"apiVersion": "trust.linkerd.io/v1alpha1", "kind": "TrustAnchorRotation",
        "metadata": {"name": "cluster"},
        "status": {"phase": phase, "workloadCertificateRefreshInterval": "5m"}});
    tars.patch_status(
        "cluster",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap_or_else(|e| panic!("setting rotation phase {phase}: {e}"));
}

/// A pod as a user writes it: one app container, never scheduled (there is no kubelet).
fn app_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {
            PROXY_ADDITIONAL_ENV_ANNOTATION: r#"[{"name":"USER_SETTING","value":"kept"}]"#}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))
    .unwrap()
}

/// A pod as it leaves Linkerd's proxy injector: with the proxy container and its anchors.
fn injected_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {"linkerd.io/proxy-version": "stable"}},
        "spec": {"automountServiceAccountToken": false, "containers": [
            {"name": "app", "image": "registry.invalid/app:1"},
            {"name": PROXY_CONTAINER, "image": "registry.invalid/proxy:1",
             "env": [{"name": TRUST_ANCHORS_ENV, "value": ANCHOR_PEM}]}
        ]}
    }))
    .unwrap()
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn proxy_env(pod: &Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let proxy = spec.containers.iter().find(|c| c.name == PROXY_CONTAINER)?;
    proxy
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// The API server picks up a new webhook configuration a moment after it is created; probe
/// with throwaway pods until one comes back stamped.
async fn wait_webhook_in_effect(pods: &Api<Pod>) {
    let mut n = 0;
    eventually(
        "the API server to call the webhook",
        Duration::from_secs(30),
        || {
            n += 1;
            let (pods, name) = (pods.clone(), format!("probe-{n}"));
            async move {
                let pod = pods.create(&PostParams::default(), &app_pod(&name)).await;
                let pod = pod.unwrap_or_else(|e| panic!("creating {name}: {e}"));
                let _ = pods.delete(&name, &DeleteParams::default()).await;
                annotation(&pod, TRUST_BUNDLE_ANNOTATION).map(|_| ())
            }
        },
    )
    .await;
}

fn describe(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let out = cp
        .kubectl()
        .expect("kubectl")
        .args(["describe", "pod", "-n", ns, name])
        .output()
        .expect("kubectl describe");
    assert!(out.status.success(), "kubectl describe: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Times a pod creation that the API server first sends to the webhook.
async fn create_timed(pods: &Api<Pod>, pod: &Pod) -> (Pod, Duration) {
    let started = Instant::now();
    let name = pod.metadata.name.clone().unwrap();
    let created = pods
        .create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    (created, started.elapsed())
}

#[tokio::test]
async fn webhook_stamps_pods_and_never_blocks_them() {
    let cp = start_control_plane().await;
    seed_cluster(&cp).await;
    let mut op = Operator::start(&cp, &["--reconciler=false", "--shutdown-delay=10s"]);
    op.wait_ready(Duration::from_secs(60)).await;
    // With the shipped timeout: a hung webhook must cost pod creation no more than that.
    common::register_shipped_webhook(&cp, &op);

    let client = cp.client();
    let meshed: Api<Pod> = Api::namespaced(client.clone(), MESHED_NS);
    wait_webhook_in_effect(&meshed).await;
    let fingerprint = anchor_fingerprint();

    // A user's pod in a meshed namespace, before the proxy injector: annotation, and the
    // accelerated refresh merged into the user's additional env.
    let (pod, _) = create_timed(&meshed, &app_pod("app")).await;
    assert_eq!(
        annotation(&pod, TRUST_BUNDLE_ANNOTATION),
        Some(fingerprint.as_str())
    );
    let env: serde_json::Value =
        serde_json::from_str(annotation(&pod, PROXY_ADDITIONAL_ENV_ANNOTATION).unwrap()).unwrap();
    assert_eq!(
        env,
        json!([{"name": "USER_SETTING", "value": "kept"},
               {"name": MAX_REFRESH_ENV, "value": "300s"}])
    );

    // An injected pod: the env var lands on the proxy container, where `kubectl describe`
    // shows it.
    let (pod, _) = create_timed(&meshed, &injected_pod("injected")).await;
    assert_eq!(proxy_env(&pod, MAX_REFRESH_ENV).as_deref(), Some("300s"));
    assert_eq!(
        annotation(&pod, TRUST_BUNDLE_ANNOTATION),
        Some(fingerprint.as_str())
    );
    let described = describe(&cp, MESHED_NS, "injected");
    let line = described
        .lines()
        .find(|l| l.trim_start().starts_with(MAX_REFRESH_ENV))
        .unwrap_or_else(|| panic!("kubectl describe shows no {MAX_REFRESH_ENV}:\n{described}"));
    assert!(line.trim_end().ends_with("300s"), "{line}");
    eprintln!("kubectl describe pod {MESHED_NS}/injected:\n{described}");

    // Not meshed, and opted out of admission webhooks: untouched.
    let plain: Api<Pod> = Api::namespaced(client.clone(), PLAIN_NS);
    let (pod, _) = create_timed(&plain, &app_pod("plain")).await;
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), None);
    let opted_out: Api<Pod> = Api::namespaced(client.clone(), OPTED_OUT_NS);
    let (pod, _) = create_timed(&opted_out, &app_pod("opted-out")).await;
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), None);

    // The view follows the rotation: once Synced, pods get the annotation but no acceleration.
    set_rotation_phase(&client, "Synced").await;
    let mut n = 0;
    let pod = eventually(
        "the webhook to see phase Synced",
        Duration::from_secs(30),
        || {
            n += 1;
            let meshed = meshed.clone();
            async move {
                let (pod, _) = create_timed(&meshed, &injected_pod(&format!("synced-{n}"))).await;
                proxy_env(&pod, MAX_REFRESH_ENV).is_none().then_some(pod)
            }
        },
    )
    .await;
    assert_eq!(
        annotation(&pod, TRUST_BUNDLE_ANNOTATION),
        Some(fingerprint.as_str())
    );

    // What the operator counted.
    let patched = op
        .metric(r#"trust_rotation_webhook_admissions_total{outcome="patched"}"#)
        .expect("patched count in /metrics");
    let skipped = op
        .metric(r#"trust_rotation_webhook_admissions_total{outcome="skipped"}"#)
        .expect("skipped count in /metrics");
    assert!(patched >= 3.0, "patched = {patched}");
    assert!(skipped >= 1.0, "skipped = {skipped}");
    assert!(
        op.metric("trust_rotation_webhook_serving_certificate_not_after_seconds")
            .unwrap()
            > 0.0
    );
    assert_eq!(
        op.metric("trust_rotation_webhook_serving_certificate_reload_failures_total"),
        Some(0.0)
    );
    assert_eq!(op.metric("trust_rotation_panics_total"), Some(0.0));
    // Every watch of the view has its error counter from the start, at 0 here.
    for kind in ["TrustAnchorRotation", "ConfigMap", "Namespace"] {
        assert_eq!(
            op.metric(&format!(
                "trust_rotation_webhook_view_watch_errors_total{{resource=\"{kind}\"}}"
            )),
            Some(0.0),
            "{kind}"
        );
    }

    // Hung (SIGSTOP: the kernel still accepts connections, nobody answers): the API server gives
    // up after the configured timeout and creates the pod unstamped.
    op.process.freeze().unwrap();
    let (pod, took) = create_timed(&meshed, &app_pod("while-hung")).await;
    op.process.signal("CONT").unwrap();
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), None);
    // The API server did wait for the hung webhook (the shipped 3 s timeout), and not much
    // longer.
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    eprintln!("pod created while the webhook hung: {took:?}");

    // A client's kept-alive connection, as the API server keeps them: open before stopping.
    let ca = std::fs::read(op.dir.path().join("ca.crt")).unwrap();
    let webhook_addr = std::net::SocketAddr::from(([127, 0, 0, 1], op.webhook_port));
    let mut kept = common::tls_client::Connection::open(
        webhook_addr,
        common::tls_client::client_config(&[&ca]),
    )
    .await
    .unwrap();
    let review = hyper::body::Bytes::from(common::server::typical_body());
    let (code, headers, _) = kept
        .post_with_headers("/mutate", review.clone())
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(headers.get("connection"), None, "kept alive while serving");

    // Stopping (SIGTERM): at once not ready, but still serving for the shutdown delay, so an
    // admission sent before the endpoint is gone is still answered.
    op.process.signal("TERM").unwrap();
    let terminated = Instant::now();
    while op.admin_get("/ready").map(|(code, _)| code) != Some(503) {
        assert!(
            terminated.elapsed() < Duration::from_secs(5),
            "/ready: {:?}",
            op.admin_get("/ready")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pod, took) = create_timed(&meshed, &app_pod("while-stopping")).await;
    assert!(
        annotation(&pod, TRUST_BUNDLE_ANNOTATION).is_some(),
        "stamped while not ready but still serving"
    );
    eprintln!(
        "pod created {:?} after SIGTERM, while not ready: {took:?}",
        terminated.elapsed()
    );
    // The kept connection is answered too, and asked to close: the client retires it after
    // this answer rather than have it closed under its next request when the listener drains.
    let (code, headers, _) = kept.post_with_headers("/mutate", review).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "{headers:?}"
    );
    let asked = Instant::now();
    while !kept.is_closed() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the server did not close the connection after asking to"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped: exits cleanly and in time, then pods are created at once, unstamped.
    let status = op
        .process
        .wait_timeout(Duration::from_secs(30))
        .expect("operator exits within 30s of SIGTERM");
    assert!(status.success(), "exit: {status}");
    let (pod, took) = create_timed(&meshed, &app_pod("while-stopped")).await;
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), None);
    // Refused at once: the API server does not wait out the webhook's 3 s timeout (the
    // stalled case above takes it whole).
    assert!(took < Duration::from_secs(3), "took {took:?}");
    eprintln!("pod created while the webhook was stopped: {took:?}");
}

/// Another self-signed CA, to make a second bundle.
fn other_anchor_pem() -> String {
    use trust_rotation_operator::sim::pki;
    let key = pki::generate_key().unwrap();
    let now = pki::now();
    let der = pki::Template {
        common_name: "root.linkerd.cluster.local".to_owned(),
        dns_names: vec![],
        is_ca: true,
        not_before: now - Duration::from_secs(60),
        not_after: now + Duration::from_secs(3600),
    }
    .self_signed(&key)
    .unwrap();
    pki::to_pem(&der)
}

fn has_proxy(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == PROXY_CONTAINER))
}

/// Fingerprint of the anchors the injector baked into the pod's proxy.
fn injected_fingerprint(pod: &Pod) -> String {
    let pem = proxy_env(pod, TRUST_ANCHORS_ENV).expect("injected anchors");
    Bundle::from_pem("injected anchors", &pem)
        .unwrap()
        .fingerprint()
}

/// Creates probe pods (deleted again) until `done` holds for one; returns it.
async fn probe_until(
    pods: &Api<Pod>,
    what: &str,
    label: Option<&str>,
    done: impl Fn(&Pod) -> bool,
) -> Pod {
    let mut n = 0;
    let done = &done;
    eventually(what, Duration::from_secs(30), || {
        n += 1;
        let (pods, name) = (
            pods.clone(),
            format!(
                "probe-{}{n}",
                if label.is_some() { "labelled-" } else { "" }
            ),
        );
        let mut pod = app_pod(&name);
        if let Some(label) = label {
            pod.metadata.labels = Some([(label.to_owned(), "probe".to_owned())].into());
        }
        async move {
            let pod = pods.create(&PostParams::default(), &pod).await;
            let pod = pod.unwrap_or_else(|e| panic!("creating {name}: {e}"));
            let _ = pods.delete(&name, &DeleteParams::default()).await;
            done(&pod).then_some(pod)
        }
    })
    .await
}

/// Our webhook with Linkerd's proxy injector (the simulator's stand-in, registered as
/// `linkerd-proxy-injector-webhook-config`) on the real API server, in both orders:
/// - as shipped, ours sorts first: the injector merges our additional env into the proxy, and
///   the API server reinvokes us after injection, so the annotation is computed from the
///   anchors actually injected, even when the injector's mounted bundle lags the ConfigMap;
/// - renamed to sort after the injector: we see the proxy container at once and set the env on
///   it directly. Either way the pod ends with the accelerated refresh and the right annotation.
#[tokio::test]
async fn ordering_with_the_linkerd_injector_works_both_ways() {
    use trust_rotation_operator::sim::injector::{Injector, InjectorConfig, WEBHOOK_CONFIG_NAME};
    let cp = start_control_plane().await;
    seed_cluster(&cp).await;
    let mut op = Operator::start(&cp, &["--reconciler=false"]);
    op.wait_ready(Duration::from_secs(60)).await;
    register_webhook(&cp, &op);
    let client = cp.client();
    let meshed: Api<Pod> = Api::namespaced(client.clone(), MESHED_NS);
    wait_webhook_in_effect(&meshed).await;
    // The injector's mounted bundle follows the ConfigMap only after an hour: it keeps baking
    // in the bundle it started with.
    let _injector = Injector::start(
        client.clone(),
        InjectorConfig {
            linkerd_namespace: "linkerd".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            bundle_configmap: "linkerd-identity-trust-roots".to_owned(),
            configmap_sync_delay: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    probe_until(
        &meshed,
        "the API server to call the injector",
        None,
        has_proxy,
    )
    .await;
    let a = anchor_fingerprint();

    // Ours first (as shipped).
    let (pod, _) = create_timed(&meshed, &app_pod("ours-first")).await;
    assert!(has_proxy(&pod), "injected");
    assert_eq!(
        proxy_env(&pod, MAX_REFRESH_ENV).as_deref(),
        Some("300s"),
        "merged by the injector"
    );
    assert_eq!(proxy_env(&pod, "USER_SETTING").as_deref(), Some("kept"));
    assert_eq!(injected_fingerprint(&pod), a);
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), Some(a.as_str()));

    // The ConfigMap moves on to a two-anchor bundle; the injector still bakes in the old one.
    let both = format!("{ANCHOR_PEM}{}", other_anchor_pem());
    let ab = Bundle::from_pem("both", &both).unwrap().fingerprint();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "linkerd");
    apply(
        &cms,
        "linkerd-identity-trust-roots",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "linkerd-identity-trust-roots"}, "data": {"ca-bundle.crt": both}}),
    )
    .await;
    // Pods the injector does not touch (its objectSelector skips linkerd.io/cni-resource) show
    // when our view has the new bundle: we stamp the bundle about to be injected.
    probe_until(
        &meshed,
        "the webhook's view to follow the ConfigMap",
        Some("linkerd.io/cni-resource"),
        |p| !has_proxy(p) && annotation(p, TRUST_BUNDLE_ANNOTATION) == Some(ab.as_str()),
    )
    .await;
    // First pass stamps the view's bundle (A+B); the injector bakes in A; the reinvocation
    // corrects the annotation to what the proxy will really trust.
    let (pod, _) = create_timed(&meshed, &app_pod("lagging-injector")).await;
    assert_eq!(
        injected_fingerprint(&pod),
        a,
        "the injector lags the ConfigMap"
    );
    assert_eq!(
        annotation(&pod, TRUST_BUNDLE_ANNOTATION),
        Some(a.as_str()),
        "reinvoked after injection, the webhook stamps the injected anchors, not the ConfigMap's"
    );
    assert_eq!(proxy_env(&pod, MAX_REFRESH_ENV).as_deref(), Some("300s"));

    // The injector first: our configuration renamed to sort after Linkerd's.
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let mut ours = mwcs
        .get("linkerd-identity-trust-rotation-webhook-config")
        .await
        .unwrap();
    mwcs.delete(
        "linkerd-identity-trust-rotation-webhook-config",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    probe_until(&meshed, "our old configuration to be gone", None, |p| {
        has_proxy(p) && annotation(p, TRUST_BUNDLE_ANNOTATION).is_none()
    })
    .await;
    let renamed = "zz-trust-rotation-webhook-config";
    assert!(renamed > WEBHOOK_CONFIG_NAME);
    ours.metadata = kube::api::ObjectMeta {
        name: Some(renamed.to_owned()),
        ..Default::default()
    };
    mwcs.create(&PostParams::default(), &ours).await.unwrap();
    probe_until(
        &meshed,
        "the renamed configuration to be in effect",
        None,
        |p| annotation(p, TRUST_BUNDLE_ANNOTATION).is_some(),
    )
    .await;
    let (pod, _) = create_timed(&meshed, &app_pod("injector-first")).await;
    assert!(has_proxy(&pod), "injected");
    assert_eq!(injected_fingerprint(&pod), a);
    assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), Some(a.as_str()));
    assert_eq!(
        proxy_env(&pod, MAX_REFRESH_ENV).as_deref(),
        Some("300s"),
        "set on the proxy by us"
    );
    assert_eq!(proxy_env(&pod, "USER_SETTING").as_deref(), Some("kept"));
    let env: serde_json::Value =
        serde_json::from_str(annotation(&pod, PROXY_ADDITIONAL_ENV_ANNOTATION).unwrap()).unwrap();
    assert_eq!(
        env,
        json!([{"name": "USER_SETTING", "value": "kept"}, {"name": MAX_REFRESH_ENV, "value": "300s"}]),
        "and recorded in the annotation for whoever reads it later"
    );
    eprintln!(
        "kubectl describe pod {MESHED_NS}/injector-first:\n{}",
        describe(&cp, MESHED_NS, "injector-first")
    );
}

/// Registered with a caBundle of another CA, the webhook is refused by the API server's own
/// TLS client: pods are still created (failurePolicy: Ignore), unstamped, and the operator
/// counts the refusals and says so in its log, instead of staying silent while the mesh goes
/// unstamped.
#[tokio::test]
async fn a_wrong_ca_bundle_is_counted_and_logged() {
    let cp = start_control_plane().await;
    seed_cluster(&cp).await;
    let mut op = Operator::start(&cp, &["--reconciler=false"]);
    op.wait_ready(Duration::from_secs(60)).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = trust_rotation_operator::devcerts::write(other_dir.path(), vec![]).unwrap();
    common::register_webhook_trusting(&cp, &op, &other.ca_cert);

    let pods: Api<Pod> = Api::namespaced(cp.client(), MESHED_NS);
    let refusals =
        "trust_rotation_webhook_tls_handshake_failures_total{reason=\"peer_rejected_certificate\"}";
    let mut n = 0;
    eventually(
        "the API server's refusals counted",
        Duration::from_secs(30),
        || {
            n += 1;
            let (pods, name) = (pods.clone(), format!("refused-{n}"));
            let counted = op.metric(refusals).unwrap_or(0.0);
            async move {
                let pod = pods.create(&PostParams::default(), &app_pod(&name)).await;
                let pod = pod.unwrap_or_else(|e| panic!("creating {name}: {e}"));
                assert_eq!(annotation(&pod, TRUST_BUNDLE_ANNOTATION), None);
                (counted > 0.0).then_some(())
            }
        },
    )
    .await;
    let log = op.process.log_tail();
    assert!(
        log.contains("a client refused the webhook's serving certificate"),
        "{log}"
    );
}
