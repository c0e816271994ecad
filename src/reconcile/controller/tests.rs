use super::*;
use crate::testbed::ControlPlane;
use k8s_openapi::api::events::v1::Event;
use kube::CustomResourceExt;
use kube::api::ListParams;

/// A store holding `objects`, as a watch that has shown nothing since.
fn frozen<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// Stores of a cluster without meshed workloads: the rotation, the three certificate
/// Secrets' stores (anchor, previous anchor, issuer) and the bundle's, none fed.
fn unmeshed(
    rotation: TrustAnchorRotation,
    secrets: Vec<Vec<Secret>>,
    bundle: Vec<ConfigMap>,
) -> Stores {
    Stores {
        rotation: frozen(vec![rotation]),
        secrets: secrets.into_iter().map(frozen).collect(),
        bundle: frozen(bundle),
        pods: frozen(vec![]),
        deployments: frozen(vec![]),
        statefulsets: frozen(vec![]),
        daemonsets: frozen(vec![]),
    }
}

/// How many Events the API server holds with `reason`.
async fn events_with_reason(client: &Client, reason: &str) -> usize {
    let events = Api::<Event>::namespaced(client.clone(), EVENTS_NAMESPACE)
        .list(&ListParams::default())
        .await
        .unwrap();
    (events.items.iter())
        .filter(|e| e.reason.as_deref() == Some(reason))
        .count()
}

fn test_recorder(client: &Client) -> EventWriter {
    EventWriter {
        api: Api::namespaced(client.clone(), EVENTS_NAMESPACE),
        instance: "test".to_owned(),
    }
}

fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).unwrap()
}

fn running_pod(namespace: &str, name: &str, owner: serde_json::Value) -> Pod {
    let mut labels = json!({});
    if owner["kind"] == "ReplicaSet" {
        labels["pod-template-hash"] = json!("5d8f7c");
    }
    object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
            "ownerReferences": [owner]},
        "spec": {"containers": [{"name": "linkerd-proxy", "image": "proxy"}]},
        "status": {"phase": "Running"}}))
}

fn created_ago(mut pod: Pod, secs: i64) -> Pod {
    pod.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(secs),
    ));
    pod
}

/// A self-signed CA certificate (DER) valid from now for an hour.
fn ca_for_an_hour(common_name: &str) -> Vec<u8> {
    use crate::sim::pki;
    let key = pki::generate_key().unwrap();
    let now = pki::now();
    pki::Template {
        common_name: common_name.to_owned(),
        dns_names: vec![],
        is_ca: true,
        not_before: now,
        not_after: now + Duration::from_secs(3600),
    }
    .self_signed(&key)
    .unwrap()
}

fn owned_by(kind: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true})
}

/// A running workload pod the leaf probe is to reach at `addr`.
fn probe_target(name: &str, addr: Option<std::net::SocketAddr>) -> MeshedPod {
    MeshedPod {
        namespace: "app".to_owned(),
        name: name.to_owned(),
        control_plane: false,
        identity_controller: false,
        ready: true,
        anchors: None,
        restarted_for: None,
        control_plane_deployment: None,
        max_refresh: None,
        owner: Err(Unfixable::BarePod),
        leaf: None,
        addr,
        identity: "default.app.serviceaccount.identity.linkerd.cluster.local".to_owned(),
    }
}

/// What RenewingWorkloadCerts observes for the leaf probe: `issuer`, and `pods`.
fn probed(issuer: Cert, pods: Vec<MeshedPod>) -> Observed {
    Observed {
        now: 0,
        anchor: Err(Problem {
            object: "-".to_owned(),
            message: "-".to_owned(),
        }),
        previous: Ok(None),
        bundle: Ok(None),
        issuer: Ok(Issuer {
            cert: issuer,
            signed_by: None,
            issuing: false,
            failure: None,
        }),
        control_plane: vec![],
        pods,
        starting: vec![],
        draining: vec![],
        restart_markers: BTreeMap::new(),
        refused_restarts: BTreeMap::new(),
        bundle_meta: BundleMeta::default(),
        baked_templates: BTreeMap::new(),
        held_anchors: Vec::new(),
        issuer_reload: None,
    }
}

/// A step whose restarts partly failed says only what failed (the blockingMessage it becomes
/// stays the same from batch to batch: one StepFailed per failure), and names those done in
/// a Normal event of the step's reason, each restart once; one where all failed names none.
/// Only refusals wait before they are tried again.
#[test]
fn a_step_whose_restarts_partly_failed_names_those_done_apart() {
    let refused = |name: &str| ReconcileError::Kube {
        what: format!("restarting Deployment app/{name}"),
        source: kube::Error::Api(
            kube::core::Status::failure("forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        ),
    };
    let done: Vec<String> = (0..7).map(|i| format!("deployment/app/web-{i}")).collect();
    let error = several(
        "RestartingWorkloads",
        done,
        vec![refused("db"), refused("cache")],
    )
    .unwrap_err();
    let alone = ReconcileError::Several(vec![refused("db"), refused("cache")]);
    assert_eq!(error.to_string(), alone.to_string());
    assert!(refused("db").refused());
    let unavailable = ReconcileError::Kube {
        what: "restarting Deployment app/db".to_owned(),
        source: kube::Error::Api(
            kube::core::Status::failure("etcdserver: request timed out", "InternalError")
                .with_code(500)
                .boxed(),
        ),
    };
    assert!(!unavailable.refused());
    assert!(!alone.only_not_yet_retried());
    let waiting = ReconcileError::Several(vec![
        ReconcileError::NotYetRetried("a".to_owned()),
        ReconcileError::NotYetRetried("b".to_owned()),
    ]);
    assert!(waiting.only_not_yet_retried());
    let mut announced = BTreeSet::new();
    let (reason, message) = error
        .restarted(&mut announced)
        .expect("those done are named");
    assert_eq!(reason, "RestartingWorkloads");
    assert!(
        message.starts_with(
            "restarted 7 of the step's workloads (deployment/app/web-0, deployment/app/web-1, deployment/app/web-2, deployment/app/web-3, deployment/app/web-4, ...)"
        ),
        "{message}"
    );
    // A look that decides some of them again, before the watch shows them, with one more:
    // that one alone is news.
    let again: Vec<String> = (5..8).map(|i| format!("deployment/app/web-{i}")).collect();
    let error_again = several("RestartingWorkloads", again, vec![refused("db")]).unwrap_err();
    let (_, message) = error_again.restarted(&mut announced).unwrap();
    assert!(
        message.starts_with("restarted 1 of the step's workloads (deployment/app/web-7);"),
        "{message}"
    );
    assert_eq!(error.restarted(&mut announced), None);
    let error = several("RestartingWorkloads", vec![], vec![refused("db")]).unwrap_err();
    assert!(error.restarted(&mut announced).is_none());
    assert!(
        several(
            "RestartingWorkloads",
            vec!["deployment/app/web".to_owned()],
            vec![]
        )
        .is_ok()
    );
}

/// A restart that failed without a refusal (here, an API server that is not there) has no
/// wait: it is sent again at once when a slot is free, and while none is, reported with its
/// last failure, word for word, without being sent (so the step's message holds and its
/// event names nothing unsent).
#[tokio::test]
async fn a_failed_restart_waiting_for_a_slot_is_reported_with_its_last_failure() {
    let port = crate::testbed::free_port().unwrap();
    let url: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
    let client = Client::try_from(kube::Config::new(url)).unwrap();
    let config = ReconcilerConfig::default();
    let recorder = test_recorder(&client);
    let reference = ObjectReference::default();
    let w = Workload {
        kind: "Deployment".to_owned(),
        namespace: "app".to_owned(),
        name: "web".to_owned(),
    };
    let restart =
        |workloads: Vec<Workload>, retry: Vec<Workload>, retry_room| Effect::RestartWorkloads {
            workloads,
            restart_for: RestartFor::Bundle("b".repeat(64)),
            retry,
            retry_room,
        };
    let (mut refused, mut retries) = (BTreeMap::new(), Retries::default());
    let mut unseen = UnseenRestarts::default();
    let mut run = async |effect: Effect| {
        let memory = (&mut refused, &mut retries, &mut unseen);
        execute(&client, &config, &recorder, &reference, &effect, memory)
            .await
            .unwrap_err()
    };
    let first = run(restart(vec![w.clone()], vec![], 0)).await;
    assert!(matches!(first, ReconcileError::Kube { .. }), "{first:?}");
    assert!(!first.refused());
    let held = run(restart(vec![], vec![w.clone()], 0)).await;
    assert!(
        matches!(&held, ReconcileError::NotYetRetried(m) if *m == first.to_string()),
        "{held:?}"
    );
    assert!(held.only_not_yet_retried());
    let again = run(restart(vec![], vec![w.clone()], 1)).await;
    assert!(
        matches!(again, ReconcileError::Kube { .. }),
        "sent: {again:?}"
    );
    assert_eq!(refused.keys().collect::<Vec<_>>(), [&w]);
}

/// A rollout replaces pods until every replica runs the newest template; a replica that is
/// merely unavailable afterwards (a crash loop) leaves it incomplete, not replacing.
#[test]
fn a_rollout_replaces_pods_until_every_replica_runs_the_template() {
    let deployment = |generation: i64, status: serde_json::Value| -> Deployment {
        object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "app", "generation": generation},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": status}))
    };
    let state = |d: &Deployment| (d.rollout_replacing(), d.rollout_complete());
    let seen = |updated: i32, replicas: i32, available: i32| {
        json!({"observedGeneration": 2, "updatedReplicas": updated,
            "replicas": replicas, "availableReplicas": available})
    };
    // Not seen by the controller yet; old replicas left; new ones still to come; done;
    // done but one replica crash-looping.
    assert_eq!(state(&deployment(3, seen(3, 3, 3))), (true, false));
    assert_eq!(state(&deployment(2, seen(3, 4, 3))), (true, false));
    assert_eq!(state(&deployment(2, seen(1, 3, 3))), (true, false));
    assert_eq!(state(&deployment(2, seen(3, 3, 3))), (false, true));
    assert_eq!(state(&deployment(2, seen(3, 3, 2))), (false, false));
    let daemonset: DaemonSet = object(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "app", "generation": 2},
        "spec": {"selector": {}, "template": {}},
        "status": {"observedGeneration": 2, "desiredNumberScheduled": 2,
            "updatedNumberScheduled": 2, "numberAvailable": 1, "currentNumberScheduled": 2,
            "numberMisscheduled": 0, "numberReady": 1}}));
    assert_eq!(
        (daemonset.rollout_replacing(), daemonset.rollout_complete()),
        (false, false)
    );
    let statefulset: StatefulSet = object(json!({"apiVersion": "apps/v1",
        "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "app", "generation": 2},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {}, "template": {}},
        "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
            "readyReplicas": 2, "currentRevision": "db-1", "updateRevision": "db-2"}}));
    assert_eq!(
        (
            statefulset.rollout_replacing(),
            statefulset.rollout_complete()
        ),
        (true, false)
    );
}

/// A restart that went through counts as a rollout in progress while the workload's watch
/// does not show it yet (so a look from a lagging watch neither gives its slot away nor
/// restarts it again), and no longer once the watch shows it, or after the patience. Real
/// API server.
#[tokio::test]
async fn a_restart_the_watch_has_not_shown_yet_counts_as_rolling() {
    let (_cp, client) = control_plane_with_crd().await;
    create_namespaces(&client, &["app"]).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), "app");
    let created = deployments
        .create(
            &PostParams::default(),
            &object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "web"}]}}}})),
        )
        .await
        .unwrap();
    let web = Workload {
        kind: "Deployment".to_owned(),
        namespace: "app".to_owned(),
        name: "web".to_owned(),
    };
    let restart_for = RestartFor::Bundle("b".repeat(64));
    let mut unseen = UnseenRestarts::default();
    execute(
        &client,
        &ReconcilerConfig::default(),
        &test_recorder(&client),
        &ObjectReference::default(),
        &Effect::RestartWorkloads {
            workloads: vec![web.clone()],
            restart_for: restart_for.clone(),
            retry: vec![],
            retry_room: 0,
        },
        (&mut BTreeMap::new(), &mut Retries::default(), &mut unseen),
    )
    .await
    .expect("restarted");
    let markers =
        |deployment: Deployment| markers_of(&frozen(vec![deployment])).collect::<BTreeMap<_, _>>();
    let rolling = |markers: &BTreeMap<Workload, RestartMarkers>| {
        markers
            .get(&web)
            .is_some_and(|m| m.has(&restart_for) && !m.rollout_complete)
    };
    let now = std::time::Instant::now();

    // The watch still shows the Deployment as it was created.
    let mut lagging = markers(created.clone());
    assert!(!rolling(&lagging));
    unseen.show(&mut lagging, now);
    assert!(rolling(&lagging), "{lagging:?}");
    // Shown: the watch says, and there is nothing left to add.
    let mut caught_up = markers(deployments.get("web").await.unwrap());
    assert!(caught_up[&web].has(&restart_for));
    unseen.show(&mut caught_up, now);
    assert!(unseen.0.is_empty(), "{unseen:?}");
    // A watch that never shows it is believed after the patience.
    unseen.made(&web, &restart_for, now);
    let mut never = markers(created);
    unseen.show(&mut never, now + OWN_WRITE_PATIENCE);
    assert!(never.is_empty() && unseen.0.is_empty(), "{never:?}");
}

/// A lasting failure to read the issuer Certificate (here, cert-manager's CRD not
/// installed) is logged once over many looks, not at each; reading it again is said once
/// too. Real API server.
#[tokio::test]
async fn a_lasting_failure_to_read_the_issuer_certificate_is_logged_once() {
    let cp = ControlPlane::start().await.expect("a local control plane");
    let client = cp.client();
    let logs = crate::logging::tests::Buffer::default();
    let _logging = tracing::subscriber::set_default(logs.subscriber());
    let name = ("linkerd".to_owned(), "linkerd-identity-issuer".to_owned());
    let mut said = Lasting::default();
    for _ in 0..5 {
        let read = issuer_issuance(&client, &name, 0, &mut said).await;
        assert_eq!(read, (false, None));
    }
    let text = logs.text();
    assert_eq!(
        text.matches("reading the issuer Certificate").count(),
        1,
        "{text}"
    );
    assert!(text.contains("404"), "{text}");
    // Readable again (no such Certificate is an answer): said once, and forgotten.
    for crd in crate::sim::certmanager::crds() {
        crate::sim::install_crd(&client, &crd).await.unwrap();
    }
    for _ in 0..2 {
        issuer_issuance(&client, &name, 0, &mut said).await;
    }
    assert_eq!(said.current(), None);
    let text = logs.text();
    assert_eq!(text.matches("can be read again").count(), 1, "{text}");
}

/// A failed restart is forgotten once its workload has been gone for a while, and every one
/// once the rotation is over; the others are kept with what they were for.
#[test]
fn failed_restarts_are_forgotten_when_their_workload_is_gone_or_the_rotation_over() {
    let w = |name: &str| Workload {
        kind: "Deployment".to_owned(),
        namespace: "app".to_owned(),
        name: name.to_owned(),
    };
    let failed = || {
        [w("kept"), w("deleted")]
            .map(|w| {
                let failure = FailedRestart {
                    restart_for: RestartFor::Bundle("b".repeat(64)),
                    failure: "forbidden".to_owned(),
                    at: std::time::Instant::now(),
                };
                (w, failure)
            })
            .into()
    };
    let workload = |kind: &str, name: &str| -> serde_json::Value {
        json!({"apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"selector": {}, "template": {}}})
    };
    let stores = Stores {
        deployments: frozen(vec![object(workload("Deployment", "kept"))]),
        statefulsets: frozen(vec![object(workload("StatefulSet", "db"))]),
        daemonsets: frozen(vec![object(workload("DaemonSet", "agent"))]),
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![]),
    };
    let kind = |kind: &str, name: &str| Workload {
        kind: kind.to_owned(),
        ..w(name)
    };
    assert!(stores.holds(&kind("StatefulSet", "db")));
    assert!(stores.holds(&kind("DaemonSet", "agent")));
    assert!(!stores.holds(&kind("Deployment", "db")));
    assert!(!stores.holds(&kind("DaemonSet", "kept")));
    let exists = |x: &Workload| stores.holds(x);
    let propagating = crate::crd::Phase::PropagatingTrustRoots;
    let mut during: BTreeMap<Workload, FailedRestart> = failed();
    // Gone a moment ago (a cache that lags): kept.
    let now = std::time::Instant::now();
    forget_restarts(&mut during, propagating, exists, now + FORGET_AFTER / 2);
    assert_eq!(during.len(), 2);
    forget_restarts(&mut during, propagating, exists, now + FORGET_AFTER);
    assert_eq!(during.keys().collect::<Vec<_>>(), [&w("kept")]);
    assert_eq!(during[&w("kept")].failure, "forbidden");
    let mut after: BTreeMap<Workload, FailedRestart> = failed();
    forget_restarts(&mut after, crate::crd::Phase::Synced, exists, now);
    assert!(after.is_empty());
}

/// A refused write is not sent again until its wait, which runs from the refusal (one that
/// took 10 s to come, as from a policy webhook timing out, does not use the wait up), is
/// over; a write that met a server error is sent again at once.
#[tokio::test(start_paused = true)]
async fn only_a_refused_write_waits_and_from_its_refusal() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let sent = AtomicU32::new(0);
    let fails = |code: u16, after: Duration| {
        let sent = &sent;
        async move {
            sent.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(after).await;
            Err::<(), _>(ReconcileError::Kube {
                what: "restarting Deployment app/db".to_owned(),
                source: kube::Error::Api(
                    kube::core::Status::failure("no", "Reason")
                        .with_code(code)
                        .boxed(),
                ),
            })
        }
    };
    let mut retries = Retries::default();
    let key = || "restarting deployment/app/db".to_owned();
    let first = attempt(&mut retries, key(), fails(403, Duration::from_secs(10))).await;
    assert!(first.unwrap_err().refused());
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_millis(1500)).await;
    let held = attempt(&mut retries, key(), fails(403, Duration::ZERO)).await;
    assert!(matches!(held, Err(ReconcileError::NotYetRetried(ref m)) if m.contains("(403)")));
    assert_eq!(sent.load(Ordering::SeqCst), 1, "not sent while it waits");
    tokio::time::advance(Duration::from_millis(600)).await;
    attempt(&mut retries, key(), fails(403, Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(sent.load(Ordering::SeqCst), 2, "sent once the wait is over");

    let key = || "renewing Certificate linkerd/linkerd-identity-issuer".to_owned();
    for tries in 3..5 {
        attempt(&mut retries, key(), fails(500, Duration::ZERO))
            .await
            .unwrap_err();
        assert_eq!(
            sent.load(Ordering::SeqCst),
            tries,
            "a server error does not wait"
        );
    }
}

/// Restarts that failed before are sent again only in the room the step leaves, those whose
/// wait is over, those that failed the longest ago first: one refused for good at the head
/// of the list, or one that fails at every try without a wait (a policy webhook that is
/// down), does not keep the others from their retry.
#[test]
fn failed_restarts_are_retried_in_the_room_left_those_that_failed_longest_ago_first() {
    let w = |i: usize| Workload {
        kind: "Deployment".to_owned(),
        namespace: "app".to_owned(),
        name: format!("w{i}"),
    };
    let retry: Vec<Workload> = (0..4).map(w).collect();
    let key = |w: &Workload| format!("restarting {w}");
    let t0 = std::time::Instant::now();
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
    // w0 and w1 refused twice, the last time at 1 s (their wait 4 s), w2 refused once at 0
    // (2 s); w3 failed at 1 s with a server error, which has no wait.
    let mut retries = Retries::default();
    for _ in 0..2 {
        retries.failed(&key(&w(0)), "forbidden w0".to_owned(), at(1.0));
        retries.failed(&key(&w(1)), "forbidden w1".to_owned(), at(1.0));
    }
    retries.failed(&key(&w(2)), "forbidden w2".to_owned(), at(0.0));
    let mut failed_at = BTreeMap::from([
        (w(0), at(1.0)),
        (w(1), at(1.0)),
        (w(2), at(0.0)),
        (w(3), at(1.0)),
    ]);
    let pick = |retry: &[Workload], failed_at: &BTreeMap<Workload, _>, room, now| {
        let failed = |w: &Workload| failed_at.get(w).copied();
        retried_now(retry, room, &retries, key, failed, now)
            .into_iter()
            .map(|w| w.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(pick(&retry, &failed_at, 2, at(1.0)), ["w3"]);
    assert_eq!(pick(&retry, &failed_at, 2, at(3.0)), ["w2", "w3"]);
    assert_eq!(pick(&retry, &failed_at, 1, at(3.0)), ["w2"]);
    assert_eq!(pick(&retry, &failed_at, 0, at(9.0)), [] as [String; 0]);
    // All due: the one that failed the longest ago, then the list's order.
    assert_eq!(pick(&retry, &failed_at, 2, at(9.0)), ["w0", "w2"]);
    // w3 failing again at every try goes to the back.
    failed_at.insert(w(3), at(8.0));
    assert_eq!(pick(&retry, &failed_at, 3, at(9.0)), ["w0", "w1", "w2"]);
    // One with no failure on record goes first.
    let mut more = retry.clone();
    more.push(w(4));
    assert_eq!(pick(&more, &failed_at, 1, at(9.0)), ["w4"]);
}

/// A pod seen with a leaf from the current issuer is not probed again while the issuer stays
/// the same, counted at a real TLS server on loopback: a look of RenewingWorkloadCerts
/// probes only the pods still to converge. A pod at another address (created again under
/// its name) or another issuer is probed anew; a pod not converged is probed every look.
/// Once every identity controller replica has surely loaded the issuer (the grace after
/// it was first seen), every pod is probed once more.
#[tokio::test]
async fn a_pod_seen_with_a_leaf_from_the_issuer_is_not_probed_again() {
    use crate::sim::pki;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let now = pki::now();
    let template = |common_name: &str, is_ca| pki::Template {
        common_name: common_name.to_owned(),
        dns_names: if is_ca {
            vec![]
        } else {
            vec!["default.app.serviceaccount.identity.linkerd.cluster.local".to_owned()]
        },
        is_ca,
        not_before: now,
        not_after: now + Duration::from_secs(3600),
    };
    let issuer_key = pki::generate_key().unwrap();
    let issuer_der = template("identity.linkerd.cluster.local", true)
        .self_signed(&issuer_key)
        .unwrap();
    let leaf_key = pki::generate_key().unwrap();
    let leaf_der = template("web", false)
        .signed_by(&leaf_key, &issuer_der, &issuer_key)
        .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf_der.into(), issuer_der.clone().into()],
        rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    // Two listeners: the same proxy at two addresses.
    let handshakes = Arc::new(AtomicUsize::new(0));
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let (acceptor, handshakes) = (acceptor.clone(), handshakes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                handshakes.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(stream).await;
                });
            }
        });
    }
    let cert = |der: &[u8]| Cert {
        fingerprint: crate::bundle::sha256_hex(der),
        pem: pki::to_pem(der),
        not_after: 0,
    };
    let observed_with =
        |issuer: Cert, addr| probed(issuer, vec![probe_target("web-0", Some(addr))]);
    let config = ReconcilerConfig {
        issuer_reload_grace: Duration::from_secs(10),
        ..ReconcilerConfig::default()
    };
    let mut seen = SeenLeaves::default();
    // Looks, each at a time (seconds from the first), with what it should find, how many
    // handshakes it should cost, and until when (Unix seconds) the identity controller's
    // replicas may still be loading the issuer, if they may.
    let other_issuer = cert(&ca_for_an_hour("identity.linkerd.cluster.local"));
    let looks = [
        (
            0,
            cert(&issuer_der),
            addrs[0],
            Leaf::FromIssuer,
            1,
            Some(11),
        ),
        (
            1,
            cert(&issuer_der),
            addrs[0],
            Leaf::FromIssuer,
            0,
            Some(11),
        ),
        (
            2,
            cert(&issuer_der),
            addrs[0],
            Leaf::FromIssuer,
            0,
            Some(11),
        ),
        (
            3,
            cert(&issuer_der),
            addrs[1],
            Leaf::FromIssuer,
            1,
            Some(11),
        ),
        (
            4,
            other_issuer.clone(),
            addrs[1],
            Leaf::FromOtherIssuer,
            1,
            Some(15),
        ),
        (
            5,
            other_issuer,
            addrs[1],
            Leaf::FromOtherIssuer,
            1,
            Some(15),
        ),
        (
            6,
            cert(&issuer_der),
            addrs[1],
            Leaf::FromIssuer,
            1,
            Some(17),
        ),
        (
            15,
            cert(&issuer_der),
            addrs[1],
            Leaf::FromIssuer,
            0,
            Some(17),
        ),
        // Every replica has loaded the issuer: seen once more, then no more.
        (16, cert(&issuer_der), addrs[1], Leaf::FromIssuer, 1, None),
        (17, cert(&issuer_der), addrs[1], Leaf::FromIssuer, 0, None),
        (30, cert(&issuer_der), addrs[1], Leaf::FromIssuer, 0, None),
    ];
    let start = Instant::now();
    for (n, (secs, issuer, addr, leaf, cost, until)) in looks.into_iter().enumerate() {
        let before = handshakes.load(Ordering::SeqCst);
        let mut observed = observed_with(issuer, addr);
        // Unix seconds, for the status's "until".
        observed.now = 1000 + secs;
        let at = start + Duration::from_secs(secs as u64);
        let probed = probe_leaves(&config, &mut observed, &mut seen, at).await;
        assert_eq!(observed.pods[0].leaf.as_ref(), Some(&leaf), "look {n}");
        let reload = observed.issuer_reload.as_ref();
        assert_eq!(reload.map(|r| r.until - 1000), until, "look {n}");
        // What the look's probes found, which the metric counts: only what was probed.
        assert_eq!(probed.len(), cost, "look {n}");
        // The server counts a connection once it has accepted it: give it the moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(handshakes.load(Ordering::SeqCst) - before, cost, "look {n}");
    }
}

/// The most identity controller replicas seen since the issuer was first seen hold until
/// the grace is over, though one has gone since: before it went it may have signed a
/// proxy's leaf with the old issuer. A new issuer starts over.
#[test]
fn the_most_identity_replicas_seen_since_the_issuer_changed_count_until_the_grace_is_over() {
    let mut seen = SeenLeaves::default();
    let (t0, grace) = (Instant::now(), Duration::from_secs(10));
    let at = |s: u64| (t0 + Duration::from_secs(s), 1000 + s as i64);
    let mut look = |issuer, s, replicas| {
        let look = IdentityLook {
            replicas,
            ..IdentityLook::default()
        };
        let reload = seen.for_issuer(issuer, at(s), grace, look);
        reload.map(|r| (r.replicas, r.until))
    };
    assert_eq!(look("a", 0, 2), Some((2, 1011)));
    // One replica gone (scaled down, its node drained).
    assert_eq!(look("a", 5, 1), Some((2, 1011)));
    assert_eq!(look("a", 10, 1), None);
    assert_eq!(look("a", 11, 2), None);
    assert_eq!(look("b", 12, 1), Some((1, 1023)));
    assert_eq!(look("b", 13, 3), Some((3, 1023)));
}

/// A process that first sees the issuer it rotates to cannot tell which identity controller
/// replicas ran since it changed (it started, or took the lead, since): it says so. One
/// that saw another issuer first, in any phase, saw the change.
#[test]
fn a_process_that_did_not_see_the_issuer_change_cannot_tell_how_many_replicas_ran() {
    let (now, grace) = ((Instant::now(), 1000), Duration::from_secs(10));
    let unwitnessed = |seen: &mut SeenLeaves, issuer| {
        let look = IdentityLook {
            replicas: 1,
            ..IdentityLook::default()
        };
        let reload = seen.for_issuer(issuer, now, grace, look);
        reload.map(|r| r.unwitnessed)
    };
    assert_eq!(unwitnessed(&mut SeenLeaves::default(), "b"), Some(true));
    // Seen in another phase: the issuer the process started with.
    let mut started_on_b = SeenLeaves::default();
    started_on_b.clear(Some("b"));
    assert_eq!(unwitnessed(&mut started_on_b, "b"), Some(true));
    // The issuer changed under this process, before RenewingWorkloadCerts or in it.
    let mut saw_a = SeenLeaves::default();
    saw_a.clear(Some("a"));
    saw_a.clear(Some("b"));
    assert_eq!(unwitnessed(&mut saw_a, "b"), Some(false));
    let mut in_phase = SeenLeaves::default();
    unwitnessed(&mut in_phase, "a");
    assert_eq!(unwitnessed(&mut in_phase, "b"), Some(false));
}

/// An identity controller pod not ready (its node cut off, its kubelet not updating its
/// Secret volume) holds past the grace, and the grace counts again from when it is ready.
#[test]
fn an_identity_replica_not_ready_holds_until_the_grace_after_it_is_ready() {
    let mut seen = SeenLeaves::default();
    let (t0, grace) = (Instant::now(), Duration::from_secs(10));
    let at = |s: u64| (t0 + Duration::from_secs(s), 1000 + s as i64);
    let mut look = |s, unready: Option<&str>| {
        let look = IdentityLook {
            replicas: 2,
            unready: unready.map(str::to_owned).into_iter().collect(),
            ..IdentityLook::default()
        };
        let reload = seen.for_issuer("a", at(s), grace, look);
        reload.map(|r| (r.unready, r.until))
    };
    let pod = Some("linkerd/identity-1".to_owned());
    assert_eq!(look(0, None), Some((None, 1011)));
    assert_eq!(look(5, pod.as_deref()), Some((pod.clone(), 1011)));
    assert_eq!(look(30, pod.as_deref()), Some((pod.clone(), 1011)));
    assert_eq!(look(31, None), Some((None, 1042)));
    assert_eq!(look(40, None), Some((None, 1042)));
    assert_eq!(look(41, None), None);
    // Over: a replica not ready since had the grace to load it.
    assert_eq!(look(42, pod.as_deref()), None);
}

/// The replicas' metrics decide before the grace does: one that says it signs with another
/// issuer holds past the grace, until its metrics show the issuer or it is gone (a scrape that
/// fails in between keeps it held), and every one showing the issuer ends the hold before the
/// grace (the pods seen before are probed again all the same). With no replica's metrics read,
/// the grace counts.
#[test]
fn identity_replicas_seen_on_an_issuer_by_their_metrics_decide_before_the_grace() {
    let (t0, grace) = (Instant::now(), Duration::from_secs(10));
    let at = |s: u64| (t0 + Duration::from_secs(s), 1000 + s as i64);
    let look = |reads: &[(&str, Option<bool>)]| IdentityLook {
        replicas: 2,
        on_issuer: (reads.iter())
            .map(|(pod, on)| ((*pod).to_owned(), *on))
            .collect(),
        ..IdentityLook::default()
    };
    let lagging = Some(Some("linkerd/identity-1".to_owned()));
    let on_other = |r: Option<IssuerReload>| r.map(|r| r.on_other_issuer);
    let mut seen = SeenLeaves::default();
    let reads = [
        ("linkerd/identity-0", Some(true)),
        ("linkerd/identity-1", Some(false)),
    ];
    assert_eq!(
        on_other(seen.for_issuer("a", at(0), grace, look(&reads))),
        lagging
    );
    // Past the grace, still on the other issuer; then its metrics cannot be read once.
    assert_eq!(
        on_other(seen.for_issuer("a", at(30), grace, look(&reads))),
        lagging
    );
    let unread = [
        ("linkerd/identity-0", Some(true)),
        ("linkerd/identity-1", None),
    ];
    assert_eq!(
        on_other(seen.for_issuer("a", at(31), grace, look(&unread))),
        lagging
    );
    seen.pods
        .insert(("app/web-0".to_owned(), ([127, 0, 0, 1], 4191).into()));
    let shown = [
        ("linkerd/identity-0", Some(true)),
        ("linkerd/identity-1", Some(true)),
    ];
    assert_eq!(seen.for_issuer("a", at(32), grace, look(&shown)), None);
    assert!(
        seen.pods.is_empty(),
        "the pods seen before are probed again"
    );

    // A lagging replica gone (scaled down): it signs no more.
    let mut seen = SeenLeaves::default();
    assert!(seen.for_issuer("b", at(0), grace, look(&reads)).is_some());
    let gone = [("linkerd/identity-0", Some(true))];
    let scaled_down = IdentityLook {
        replicas: 1,
        ..look(&gone)
    };
    assert_eq!(seen.for_issuer("b", at(1), grace, scaled_down), None);
    // Fewer replicas read than there are (one not running yet, its Secret volume filled before
    // the issuer changed): the grace.
    let mut seen = SeenLeaves::default();
    assert!(seen.for_issuer("e", at(0), grace, look(&gone)).is_some());
    assert_eq!(seen.for_issuer("e", at(10), grace, look(&gone)), None);
    // Every replica on the issuer at once: no wait for the grace.
    let mut seen = SeenLeaves::default();
    assert_eq!(seen.for_issuer("c", at(0), grace, look(&shown)), None);
    // No replica's metrics read, or no replica at all: the grace.
    for reads in [&unread[1..], &[]] {
        let mut seen = SeenLeaves::default();
        assert!(seen.for_issuer("d", at(0), grace, look(reads)).is_some());
        assert!(seen.for_issuer("d", at(9), grace, look(reads)).is_some());
        assert_eq!(seen.for_issuer("d", at(10), grace, look(reads)), None);
    }
}

/// Replicas not ready: one whose metrics show the issuer has loaded it; any other holds, the
/// second as well as the first; and the grace counts again once none is left, even on the
/// look where a lagging replica shows the issuer too.
#[test]
fn identity_replicas_not_ready_hold_unless_their_metrics_show_the_issuer() {
    let (t0, grace) = (Instant::now(), Duration::from_secs(10));
    let at = |s: u64| (t0 + Duration::from_secs(s), 1000 + s as i64);
    let look = |unready: &[&str], reads: &[(&str, Option<bool>)]| IdentityLook {
        replicas: 3,
        unready: unready.iter().map(|p| (*p).to_owned()).collect(),
        on_issuer: (reads.iter())
            .map(|(pod, on)| ((*pod).to_owned(), *on))
            .collect(),
    };
    let unready = |r: Option<IssuerReload>| r.and_then(|r| r.unready);
    let mut seen = SeenLeaves::default();
    let reads = [
        ("linkerd/id-0", Some(false)),
        ("linkerd/id-1", Some(true)),
        ("linkerd/id-2", None),
    ];
    let both = ["linkerd/id-1", "linkerd/id-2"];
    assert_eq!(
        unready(seen.for_issuer("a", at(0), grace, look(&both, &reads))),
        Some("linkerd/id-2".to_owned())
    );
    // Past the grace: id-0 now shows the issuer and id-2 is ready, on the same look.
    let later = [
        ("linkerd/id-0", Some(true)),
        ("linkerd/id-1", Some(true)),
        ("linkerd/id-2", None),
    ];
    let reload = seen
        .for_issuer("a", at(20), grace, look(&[], &later))
        .unwrap();
    assert_eq!(
        (reload.unready, reload.on_other_issuer, reload.until),
        (None, None, 1031)
    );
    assert!(
        seen.for_issuer("a", at(29), grace, look(&[], &later))
            .is_some()
    );
    assert_eq!(seen.for_issuer("a", at(30), grace, look(&[], &later)), None);
}

/// A replica counts as signing with the issuer when the expiry its time to live implies is
/// the issuer's, within a few seconds for clocks and the scrape.
#[test]
fn a_replicas_issuer_is_told_by_the_expiry_its_ttl_implies() {
    assert_eq!(on_issuer(1000.4, 5000.0, 6000), Some(true));
    assert_eq!(on_issuer(996.0, 5000.0, 6000), Some(true));
    assert_eq!(on_issuer(900.0, 5000.0, 6000), Some(false));
    assert_eq!(on_issuer(-1.0, 5000.0, 6000), Some(false));
    assert_eq!(on_issuer(f64::NAN, 5000.0, 6000), None);
}

/// A proxy the probe cannot reach is unreachable, with what the probe met: no pod IP, a
/// refused connection, no TLS answer within the timeout (what a NetworkPolicy that drops
/// the operator's packets looks like). Real sockets on loopback.
#[tokio::test]
async fn an_unreachable_proxy_is_named_with_what_the_probe_met() {
    use crate::sim::pki;
    let issuer_der = ca_for_an_hour("identity.linkerd.cluster.local");
    let issuer = Cert {
        fingerprint: crate::bundle::sha256_hex(&issuer_der),
        pem: pki::to_pem(&issuer_der),
        not_after: 0,
    };
    // A port nothing listens on, and one that accepts but never answers.
    // (Below the ephemeral range, where no connection a parallel test opens can take it.)
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], crate::testbed::free_port().unwrap()));
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let mut observed = probed(
        issuer,
        vec![
            probe_target("unscheduled", None),
            probe_target("refused", Some(closed)),
            probe_target("silent", Some(silent_addr)),
        ],
    );
    let config = ReconcilerConfig {
        probe_timeout: Duration::from_millis(300),
        ..ReconcilerConfig::default()
    };
    probe_leaves(
        &config,
        &mut observed,
        &mut SeenLeaves::default(),
        Instant::now(),
    )
    .await;
    let why: Vec<String> = observed
        .pods
        .iter()
        .map(|p| match &p.leaf {
            Some(Leaf::Unreachable(why)) => why.clone(),
            other => panic!("{}: {other:?}", p.name),
        })
        .collect();
    assert_eq!(why[0], "no pod IP yet");
    assert!(
        why[1].starts_with(&format!("{closed}: connecting: ")),
        "{}",
        why[1]
    );
    assert_eq!(why[2], format!("{silent_addr}: no answer within 300ms"));
}

/// What a look outside the accelerating phases observes in `stores`: nothing is asked of
/// the API server then, so the client points nowhere.
async fn observe_offline(stores: &Stores) -> Observed {
    let client =
        Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
    observe(
        &client,
        &ReconcilerConfig::default(),
        stores,
        &BTreeMap::new(),
        false,
        &mut Lasting::default(),
    )
    .await
    .unwrap()
}

/// A pod no node takes, or whose container waits on something waiting does not fix, is not
/// starting, in the scheduler's or the kubelet's words; one still pulling its image or
/// being created, or running, is.
#[test]
fn a_pod_not_starting_is_told_from_one_starting() {
    let pod = |status: serde_json::Value| -> Pod {
        object(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db-2", "namespace": "app"}, "status": status}))
    };
    let waiting = |name: &str, reason: &str| {
        json!({"name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": format!("{reason} message")}}})
    };
    let unschedulable = pod(
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
        "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
    );
    assert_eq!(
        not_starting(&unschedulable).as_deref(),
        Some("Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.")
    );
    // The init container runs first: its trouble is the one named.
    let pulling = pod(json!({"phase": "Pending",
        "initContainerStatuses": [waiting("linkerd-init", "ImagePullBackOff")],
        "containerStatuses": [waiting("db", "PodInitializing")]}));
    assert_eq!(
        not_starting(&pulling).as_deref(),
        Some("container linkerd-init: ImagePullBackOff: ImagePullBackOff message")
    );
    let crashing = pod(json!({"phase": "Running",
        "containerStatuses": [waiting("linkerd-proxy", "ContainerCreating"),
            waiting("db", "CrashLoopBackOff")]}));
    assert_eq!(
        not_starting(&crashing).as_deref(),
        Some("container db: CrashLoopBackOff: CrashLoopBackOff message")
    );
    for starting in [
        pod(json!({"phase": "Pending"})),
        pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "SchedulingGated"}]}),
        ),
        pod(json!({"phase": "Pending",
            "containerStatuses": [waiting("db", "ContainerCreating")]})),
        pod(
            json!({"phase": "Running", "containerStatuses": [{"name": "db", "image": "i",
            "imageID": "", "ready": true, "restartCount": 3,
            "state": {"running": {}}}]}),
        ),
    ] {
        assert_eq!(not_starting(&starting), None, "{:?}", starting.status);
    }
}

/// Workload templates that carry the proxy with literal anchors (`linkerd inject`) are read
/// with those anchors, a workload scaled to zero too; not one whose proxy reads them from
/// the ConfigMap, nor the control plane's own.
#[tokio::test]
async fn templates_injected_by_linkerd_inject_are_read_with_their_anchors() {
    let pem = std::fs::read_to_string(format!(
        "{}/tests/fixtures/anchor.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let fingerprint = crate::bundle::Bundle::from_pem("anchor", &pem)
        .unwrap()
        .fingerprints()
        .map(str::to_owned)
        .collect::<BTreeSet<_>>();
    let deployment = |ns: &str, name: &str, replicas: i32, env: serde_json::Value| {
        let mut labels = json!({});
        if ns == "linkerd" {
            labels = json!({CONTROL_PLANE_NS_LABEL: "linkerd"});
        }
        object::<Deployment>(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"replicas": replicas, "selector": {},
                "template": {"spec": {"containers": [
                    {"name": "app", "image": "app"},
                    {"name": PROXY_CONTAINER, "image": "proxy", "env": env}]}}}}))
    };
    let literal = json!([{"name": TRUST_ANCHORS_ENV, "value": pem}]);
    let stores = Stores {
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![]),
        deployments: frozen(vec![
            // Scaled to zero: its next pods start with what the template says.
            deployment("app", "injected", 0, literal.clone()),
            deployment(
                "app",
                "garbled",
                1,
                json!([{"name": TRUST_ANCHORS_ENV, "value": "x"}]),
            ),
            deployment(
                "app",
                "from-configmap",
                1,
                json!([{"name": TRUST_ANCHORS_ENV, "valueFrom": {"configMapKeyRef":
                    {"name": "linkerd-identity-trust-roots", "key": "ca-bundle.crt"}}}]),
            ),
            deployment("linkerd", "linkerd-destination", 1, literal),
        ]),
        statefulsets: frozen(vec![]),
        daemonsets: frozen(vec![]),
    };
    let observed = observe_offline(&stores).await;
    let baked: BTreeMap<&str, Option<BTreeSet<String>>> = observed
        .baked_templates
        .iter()
        .map(|(w, a)| (w.name.as_str(), a.clone()))
        .collect();
    assert_eq!(
        baked,
        BTreeMap::from([("injected", Some(fingerprint.clone())), ("garbled", None)])
    );
    // Where an anchor the bundle lost is found again: the one anchor, once.
    let held: Vec<&str> = (observed.held_anchors.iter())
        .map(|c| c.fingerprint.as_str())
        .collect();
    assert_eq!(held, Vec::from_iter(fingerprint.iter().map(String::as_str)));
    assert!(observed.held_anchors[0].pem.contains("BEGIN CERTIFICATE"));
}

/// A rollout in progress is marked with a new pod of it (carrying the template's markers)
/// that is not starting; not with an old pod (being replaced), nor once the rollout is
/// complete.
#[tokio::test]
async fn a_rollout_is_marked_with_a_new_pod_that_is_not_starting() {
    let statefulset = |name: &str, ready: i32| -> StatefulSet {
        object(json!({"apiVersion": "apps/v1",
            "kind": "StatefulSet", "metadata": {"name": name, "namespace": "app", "generation": 2},
            "spec": {"replicas": 2, "serviceName": name, "selector": {},
                "template": {"metadata": {"annotations": {RESTART_ANNOTATION: "new"}}}},
            "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": ready,
                "updatedReplicas": 2, "currentRevision": "r2", "updateRevision": "r2"}}))
    };
    let pod = |set: &str, ordinal: u32, marker: &str, waiting: Option<&str>| -> Pod {
        let mut p = running_pod(
            "app",
            &format!("{set}-{ordinal}"),
            owned_by("StatefulSet", set),
        );
        p.metadata.annotations = Some([(RESTART_ANNOTATION.to_owned(), marker.to_owned())].into());
        if let Some(reason) = waiting {
            p.status = Some(object(json!({"phase": "Running", "containerStatuses": [{
                "name": "db", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": reason, "message": "back-off 40s"}}}]})));
        }
        p
    };
    let stores = Stores {
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![
            // db: its old pod crashes, its new one is fine: nothing to say.
            pod("db", 0, "old", Some("CrashLoopBackOff")),
            pod("db", 1, "new", None),
            // cache: its new pod crashes.
            pod("cache", 0, "old", None),
            pod("cache", 1, "new", Some("CrashLoopBackOff")),
            // queue: done rolling; a crash now is not the rollout's.
            pod("queue", 0, "new", Some("CrashLoopBackOff")),
        ]),
        deployments: frozen(vec![]),
        statefulsets: frozen(vec![
            statefulset("db", 1),
            statefulset("cache", 1),
            statefulset("queue", 2),
        ]),
        daemonsets: frozen(vec![]),
    };
    let observed = observe_offline(&stores).await;
    let not_starting: BTreeMap<&str, Option<&str>> = observed
        .restart_markers
        .iter()
        .map(|(w, m)| (w.name.as_str(), m.not_starting.as_deref()))
        .collect();
    assert_eq!(
        not_starting,
        BTreeMap::from([
            ("db", None),
            (
                "cache",
                Some(
                    "pod app/cache-1 is not starting: container db: CrashLoopBackOff: back-off 40s"
                )
            ),
            ("queue", None),
        ])
    );
    assert!(
        observed
            .restart_markers
            .values()
            .all(|m| m.stalled.is_none())
    );
}

/// A previous-anchor Secret of another type than `Opaque` (a copy of the anchor's TLS
/// Secret) is a problem naming it: the write that ends every rotation would be refused, as a
/// Secret's type cannot change. The same certificate in an `Opaque` Secret is read.
#[tokio::test]
async fn a_previous_anchor_secret_that_is_not_opaque_is_a_problem() {
    use crate::sim::pki;
    let der = ca_for_an_hour("root.linkerd.cluster.local");
    let secret = |type_: &str| -> Secret {
        let mut s: Secret = object(json!({"metadata": {"name": "linkerd-previous-anchor",
            "namespace": "linkerd"}, "type": type_}));
        s.data = Some(BTreeMap::from([(
            "tls.crt".to_owned(),
            k8s_openapi::ByteString(pki::to_pem(&der).into_bytes()),
        )]));
        s
    };
    let stores = |s: Secret| Stores {
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![s]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![]),
        deployments: frozen(vec![]),
        statefulsets: frozen(vec![]),
        daemonsets: frozen(vec![]),
    };
    let observed = observe_offline(&stores(secret("kubernetes.io/tls"))).await;
    let problem = observed.previous.unwrap_err().to_string();
    assert!(
        problem.starts_with(
            "Secret linkerd/linkerd-previous-anchor: has type kubernetes.io/tls, and a Secret's type cannot change"
        ),
        "{problem}"
    );
    let observed = observe_offline(&stores(secret("Opaque"))).await;
    assert!(observed.previous.unwrap().is_some());
}

/// A control-plane pod as `linkerd install` makes it (`linkerd.io/created-by: linkerd/cli
/// ...`, which reads as injected by the CLI, so no workload restart renews it) still names
/// the control-plane Deployment whose restart marker tells what bundle it runs with, a
/// paused one too; a pod labelled as control plane in another namespace, or owned by a
/// StatefulSet, names none.
#[tokio::test]
async fn a_control_plane_pod_names_its_deployment_however_it_was_installed() {
    let control_plane = |mut pod: Pod, created_by: &str| {
        pod.labels_mut().insert(
            CONTROL_PLANE_COMPONENT_LABEL.to_owned(),
            "destination".to_owned(),
        );
        pod.annotations_mut()
            .insert("linkerd.io/created-by".to_owned(), created_by.to_owned());
        pod
    };
    let deployment = |name: &str, paused: bool| -> Deployment {
        object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "linkerd"},
            "spec": {"paused": paused, "selector": {}, "template": {}}}))
    };
    let stores = Stores {
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![
            control_plane(
                running_pod(
                    "linkerd",
                    "linkerd-destination-5d8f7c-a",
                    owned_by("ReplicaSet", "linkerd-destination-5d8f7c"),
                ),
                "linkerd/cli stable-2.14.10",
            ),
            control_plane(
                running_pod(
                    "linkerd",
                    "linkerd-identity-5d8f7c-a",
                    owned_by("ReplicaSet", "linkerd-identity-5d8f7c"),
                ),
                "linkerd/helm enterprise-2.18.0",
            ),
            control_plane(
                running_pod(
                    "linkerd-multicluster",
                    "linkerd-gateway-5d8f7c-a",
                    owned_by("ReplicaSet", "linkerd-gateway-5d8f7c"),
                ),
                "linkerd/helm enterprise-2.18.0",
            ),
            control_plane(
                running_pod(
                    "linkerd",
                    "linkerd-mirror-0",
                    owned_by("StatefulSet", "mirror"),
                ),
                "linkerd/helm enterprise-2.18.0",
            ),
        ]),
        deployments: frozen(vec![
            deployment("linkerd-destination", false),
            deployment("linkerd-identity", true),
        ]),
        statefulsets: frozen(vec![]),
        daemonsets: frozen(vec![]),
    };
    let observed = observe_offline(&stores).await;
    let named: BTreeMap<String, Option<String>> = observed
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.control_plane_deployment.clone()))
        .collect();
    assert_eq!(
        named,
        BTreeMap::from([
            (
                "linkerd-destination-5d8f7c-a".to_owned(),
                Some("linkerd-destination".to_owned())
            ),
            (
                "linkerd-identity-5d8f7c-a".to_owned(),
                Some("linkerd-identity".to_owned())
            ),
            ("linkerd-gateway-5d8f7c-a".to_owned(), None),
            ("linkerd-mirror-0".to_owned(), None),
        ])
    );
    let destination = observed
        .pods
        .iter()
        .find(|p| p.name == "linkerd-destination-5d8f7c-a")
        .unwrap();
    assert_eq!(destination.owner, Err(Unfixable::ManuallyInjected));
}

/// Pods a template change would not roll (a paused Deployment's, an OnDelete StatefulSet's,
/// those below a StatefulSet's partition, an orphaned ReplicaSet's) are named as such
/// instead of being restarted and waited for forever; the rest of a partitioned StatefulSet
/// is restarted as usual, and so is a pod just created whose Deployment the watch has not
/// shown yet.
#[tokio::test]
async fn workloads_a_restart_would_not_roll_are_told_apart() {
    let deployment = |name: &str, paused: bool| -> Deployment {
        object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"paused": paused, "selector": {}, "template": {}}}))
    };
    let statefulset = |name: &str, strategy: serde_json::Value| -> StatefulSet {
        object(json!({"apiVersion": "apps/v1",
            "kind": "StatefulSet", "metadata": {"name": name, "namespace": "app"},
            "spec": {"serviceName": name, "selector": {}, "template": {},
                "updateStrategy": strategy}}))
    };
    let stores = Stores {
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![
            running_pod("app", "web-5d8f7c-a", owned_by("ReplicaSet", "web-5d8f7c")),
            running_pod("app", "api-5d8f7c-a", owned_by("ReplicaSet", "api-5d8f7c")),
            running_pod("app", "db-0", owned_by("StatefulSet", "db")),
            running_pod("app", "cache-0", owned_by("StatefulSet", "cache")),
            running_pod("app", "cache-1", owned_by("StatefulSet", "cache")),
            created_ago(
                running_pod("app", "old-5d8f7c-a", owned_by("ReplicaSet", "old-5d8f7c")),
                3600,
            ),
            created_ago(
                running_pod("app", "new-5d8f7c-a", owned_by("ReplicaSet", "new-5d8f7c")),
                1,
            ),
        ]),
        deployments: frozen(vec![deployment("web", true), deployment("api", false)]),
        statefulsets: frozen(vec![
            statefulset("db", json!({"type": "OnDelete"})),
            statefulset(
                "cache",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}),
            ),
        ]),
        daemonsets: frozen(vec![]),
    };
    let observed = observe_offline(&stores).await;
    let owners: BTreeMap<String, Result<Workload, Unfixable>> = observed
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.owner.clone()))
        .collect();
    let workload = |kind: &str, name: &str| Workload {
        kind: kind.to_owned(),
        namespace: "app".to_owned(),
        name: name.to_owned(),
    };
    assert_eq!(
        owners,
        BTreeMap::from([
            (
                "web-5d8f7c-a".to_owned(),
                Err(Unfixable::Paused(workload("Deployment", "web")))
            ),
            ("api-5d8f7c-a".to_owned(), Ok(workload("Deployment", "api"))),
            (
                "db-0".to_owned(),
                Err(Unfixable::OnDelete("StatefulSet app/db".to_owned()))
            ),
            (
                "cache-0".to_owned(),
                Err(Unfixable::Partitioned {
                    workload: workload("StatefulSet", "cache"),
                    partition: 1
                })
            ),
            ("cache-1".to_owned(), Ok(workload("StatefulSet", "cache"))),
            (
                "old-5d8f7c-a".to_owned(),
                Err(Unfixable::Owner(
                    "ReplicaSet old-5d8f7c, whose Deployment old does not exist".to_owned()
                ))
            ),
            ("new-5d8f7c-a".to_owned(), Ok(workload("Deployment", "new"))),
        ])
    );
}

/// Which pods count, and as what: a Running pod, or a Pending one whose native-sidecar proxy
/// has started, is running; a Pending pod whose proxy has not started is starting (its
/// anchors already count for the bundle); a deleted pod drains only if its proxy ran, and
/// only until its grace period is over (and a slack for clocks and the kubelet).
#[tokio::test]
async fn pods_are_running_starting_or_draining_by_their_proxy() {
    let pod = |name: &str, status: serde_json::Value, deleted_in: Option<i64>| -> Pod {
        let mut p = running_pod("app", name, owned_by("ReplicaSet", "web-5d8f7c"));
        p.status = serde_json::from_value(status).unwrap();
        p.metadata.deletion_timestamp = deleted_in.map(|secs| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now()
                    + k8s_openapi::jiff::SignedDuration::from_secs(secs),
            )
        });
        p
    };
    let pending = json!({"phase": "Pending"});
    let sidecar_started = json!({"phase": "Pending", "initContainerStatuses": [
        {"name": "linkerd-proxy", "image": "proxy", "imageID": "", "ready": false,
         "restartCount": 0, "started": true}]});
    let stores = Stores {
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![
            pod("running", json!({"phase": "Running"}), None),
            pod("unscheduled", pending.clone(), None),
            pod("sidecar-started", sidecar_started, None),
            pod("deleted-before-start", pending, Some(30)),
            pod("draining", json!({"phase": "Running"}), Some(30)),
            // Past its deadline by less than the slack: the clocks may differ, and the
            // kubelet may still be stopping it.
            pod("stopping", json!({"phase": "Running"}), Some(-5)),
            pod("drained", json!({"phase": "Running"}), Some(-60)),
            pod("succeeded", json!({"phase": "Succeeded"}), None),
        ]),
        deployments: frozen(vec![]),
        statefulsets: frozen(vec![]),
        daemonsets: frozen(vec![]),
    };
    let observed = observe_offline(&stores).await;
    let names =
        |pods: &[MeshedPod]| -> BTreeSet<String> { pods.iter().map(|p| p.name.clone()).collect() };
    let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
    assert_eq!(names(&observed.pods), set(&["running", "sidecar-started"]));
    assert_eq!(names(&observed.starting), set(&["unscheduled"]));
    assert_eq!(names(&observed.draining), set(&["draining", "stopping"]));
}

/// A Deployment whose new pods never become available (here no kubelet runs them) is
/// marked by the real Deployment controller `Progressing=False`, reason
/// `ProgressDeadlineExceeded`, once its `progressDeadlineSeconds` pass: that is read as a
/// rollout that will not finish by itself, with the controller's words.
#[tokio::test]
async fn a_rollout_past_its_progress_deadline_is_stalled() {
    let cp = ControlPlane::start().await.expect("a local control plane");
    let api = Api::<Deployment>::namespaced(cp.client(), "default");
    let deployment: Deployment = object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, "progressDeadlineSeconds": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web"}]}}}}));
    api.create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let stalled = loop {
        let d = api.get("web").await.unwrap();
        assert!(!d.rollout_complete());
        if let Some(why) = d.rollout_stalled() {
            break why;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never stalled: {:?}",
            d.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        stalled.starts_with("ProgressDeadlineExceeded: ") && stalled.contains("web"),
        "{stalled}"
    );
}

/// With a `rollingUpdate.partition`, the replicas below it never update: the rollout is
/// complete once those above it are updated and every replica is ready.
#[test]
fn a_partitioned_statefulset_rollout_completes_without_the_replicas_it_holds_back() {
    let statefulset = |partition: Option<i32>, updated: i32, same_revision: bool| {
        let mut s: StatefulSet = object(json!({"apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "app", "generation": 2},
            "spec": {"replicas": 3, "serviceName": "db", "selector": {}, "template": {},
                "updateStrategy": {"type": "RollingUpdate"}},
            "status": {"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
                "updatedReplicas": updated, "currentRevision": "db-1",
                "updateRevision": if same_revision { "db-1" } else { "db-2" }}}));
        if let Some(p) = partition {
            s.spec
                .as_mut()
                .unwrap()
                .update_strategy
                .as_mut()
                .unwrap()
                .rolling_update = Some(object(json!({ "partition": p })));
        }
        s
    };
    assert!(statefulset(None, 3, true).rollout_complete());
    assert!(!statefulset(None, 2, false).rollout_complete());
    // Partition 1: replicas 1 and 2 roll, replica 0 keeps the old revision.
    assert!(statefulset(Some(1), 2, false).rollout_complete());
    assert!(!statefulset(Some(1), 1, false).rollout_complete());
    // A partition above the replica count holds every replica back.
    assert!(statefulset(Some(5), 0, false).rollout_complete());
}

/// The issuer's renewal is under way while `Issuing=True`, and also once the Certificate
/// records an issuance newer than the Secret the reconciler has seen: its Secret cache
/// lags, and renewing again would issue twice. Real API server, the stand-in's CRD.
#[tokio::test]
async fn an_issuance_the_secret_cache_has_not_shown_counts_as_under_way() {
    let cp = ControlPlane::start().await.expect("a local control plane");
    let client = cp.client();
    for crd in crate::sim::certmanager::crds() {
        crate::sim::install_crd(&client, &crd).await.unwrap();
    }
    let api = certificate_api(&client, "default");
    let certificate: DynamicObject = object(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "issuer", "namespace": "default"},
        "spec": {"secretName": "issuer", "commonName": "identity.linkerd.cluster.local",
            "issuerRef": {"name": "anchor", "kind": "Issuer"}}}));
    api.create(&PostParams::default(), &certificate)
        .await
        .unwrap();
    let set_status = |status: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch_status(
                "issuer",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
        }
    };
    let name = ("default".to_owned(), "issuer".to_owned());
    // The notAfter of the certificate last issued: 2026-11-26T00:00:00Z.
    let issued: i64 = 1_795_651_200;
    set_status(json!({"notAfter": "2026-11-26T00:00:00Z", "conditions": []})).await;
    let issuing = |cached| {
        let client = client.clone();
        let name = name.clone();
        async move {
            issuer_issuance(&client, &name, cached, &mut Lasting::default())
                .await
                .0
        }
    };
    assert!(!issuing(issued).await, "the Secret shows the last issuance");
    assert!(
        issuing(issued - 3600).await,
        "the Secret shows an older certificate than the Certificate issued"
    );
    set_status(json!({"conditions": [{"type": "Issuing", "status": "True"}]})).await;
    assert!(issuing(issued).await, "Issuing=True");
    // A failure as cert-manager records it, read back through the API server.
    set_status(json!({"lastFailureTime": "2026-11-24T10:00:00Z", "failedIssuanceAttempts": 2,
        "conditions": [{"type": "Issuing", "status": "False", "reason": "Denied",
            "message": "The certificate request has failed to complete and will be retried: no policy"}]}))
    .await;
    assert_eq!(
        issuer_issuance(&client, &name, issued, &mut Lasting::default()).await,
        (
            false,
            Some(IssuanceFailure {
                at: 1_795_514_400,
                attempts: Some(2),
                reason: Some("Denied".to_owned()),
                message: Some(
                    "The certificate request has failed to complete and will be retried: no policy"
                        .to_owned()
                ),
            })
        )
    );
}

/// cert-manager re-triggered after a failure: `Issuing=True` again, the failure still on
/// record (time and count, no reason: the condition now says Issuing); cert-manager before
/// 1.13 records no count.
#[test]
fn a_failure_is_read_from_whatever_status_cert_manager_left() {
    let status = json!({"lastFailureTime": "2026-11-24T10:00:00Z",
        "conditions": [{"type": "Issuing", "status": "True", "reason": "ManuallyTriggered"}]});
    let (issuing, failure) = issuance_of(&status, 0);
    assert!(issuing);
    assert_eq!(
        failure,
        Some(IssuanceFailure {
            at: 1_795_514_400,
            attempts: None,
            reason: None,
            message: None
        })
    );
    assert_eq!(issuance_of(&json!({}), 0), (false, None));
    assert_eq!(issuance_of(&serde_json::Value::Null, 0), (false, None));
}

/// A watch task that ends (none should) is named, with how it ended: the reconciler then
/// stops instead of deciding from a store that no longer changes.
#[tokio::test]
async fn a_watch_task_that_ends_is_named() {
    let mut watches = Watches::new(WatchErrors::default(), Gauge::default());
    let ended = watches.tasks.spawn(async {}).id();
    watches.names.insert(ended, "StatefulSets".to_owned());
    assert_eq!(watches.stopped().await, "the watch of StatefulSets ended");
    let panicked = watches
        .tasks
        .spawn(async { panic!("a bug in a watch") })
        .id();
    watches.names.insert(panicked, "Deployments".to_owned());
    assert_eq!(watches.stopped().await, "the watch of Deployments panicked");
    let none_ends = tokio::time::timeout(Duration::from_millis(50), watches.stopped()).await;
    assert!(none_ends.is_err(), "no task left: stopped() waits");
}

/// A watch task that ends while the reconciler waits for the stores to list stops the wait
/// at once, even while a store before its own has not listed (here, none ever does).
#[tokio::test]
async fn a_watch_task_that_ends_before_the_stores_list_stops_the_wait() {
    let mut watches = Watches::new(WatchErrors::default(), Gauge::default());
    watches.tasks.spawn(std::future::pending());
    let panicked = watches
        .tasks
        .spawn(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!("a bug in a watch")
        })
        .id();
    watches.names.insert(panicked, "DaemonSets".to_owned());
    let mut synced = std::pin::pin!(std::future::pending::<bool>());
    let (started, mut ticks) = (Instant::now(), 0);
    let stopped = loop {
        match until_synced(&mut watches, synced.as_mut(), Duration::from_millis(20)).await {
            Ok(true) => panic!("nothing listed"),
            Ok(false) => ticks += 1,
            Err(stopped) => break stopped,
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the wait went on"
        );
    };
    assert_eq!(stopped, "the watch of DaemonSets panicked");
    assert!(
        ticks > 0,
        "no turn to look at the failing watches meanwhile"
    );
}

/// A watched object deleted wakes the reconciler as one created or changed does.
#[tokio::test]
async fn a_deleted_object_wakes_the_reconciler() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cp = ControlPlane::start().await.expect("a local control plane");
    let client = cp.client();
    let mut watches = Watches::new(WatchErrors::default(), Gauge::default());
    let wake = watches.wake.clone();
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let store = watches.reflect(
        "ConfigMap bundle".to_owned(),
        configmaps.clone(),
        named("bundle"),
        true,
    );
    // The same object through a store that drops managedFields (its own watches: the
    // wake-ups checked below are the first store's alone).
    let mut lean_watches = Watches::new(WatchErrors::default(), Gauge::default());
    let lean = lean_watches.reflect(
        "ConfigMap".to_owned(),
        configmaps.clone(),
        named("bundle"),
        false,
    );
    store.wait_until_ready().await.expect("synced");
    lean.wait_until_ready().await.expect("synced");
    let bundle: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bundle"},
        "data": {"ca-bundle.crt": "x"}}))
    .unwrap();
    // The list's wake-up is pending (a permit: nobody waited): taken first, so that the
    // next one is the creation's. This test's runtime has one thread, and the watch task
    // wakes right after it has filled the store, without yielding in between.
    tokio::time::timeout(Duration::from_millis(100), wake.notified())
        .await
        .expect("the list's wake-up is pending");
    configmaps
        .create(&PostParams::default(), &bundle)
        .await
        .unwrap();
    let woken = |what: &'static str| {
        let wake = wake.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), wake.notified())
                .await
                .unwrap_or_else(|_| panic!("not woken by the {what}"));
        }
    };
    woken("creation").await;
    let key = ObjectRef::new("bundle").within("default");
    let kept = store.get(&key).expect("in the store");
    assert!(!kept.managed_fields().is_empty(), "kept where asked for");
    let since = std::time::Instant::now();
    let dropped = loop {
        if let Some(o) = lean.get(&key) {
            break o;
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "not in the lean store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(dropped.managed_fields().is_empty(), "dropped elsewhere");
    configmaps
        .delete("bundle", &Default::default())
        .await
        .unwrap();
    woken("deletion").await;
    assert!(store.is_empty(), "the store follows the deletion");
    watches.tasks.abort_all();
    lean_watches.tasks.abort_all();
}

/// A watch that fails (here: its permission taken away, met when the API server ends the
/// watch and the watcher starts a new one) is failing, and the reconciler would hold, until
/// it has listed again: kube's watcher says nothing when a retried watch starts, so a
/// failed watch lists everything anew, and what it missed meanwhile is in the store then.
#[tokio::test]
async fn a_failed_watch_is_failing_until_it_has_listed_again() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let cp = ControlPlane::start_with_options(crate::testbed::Options {
        plain_users: vec!["watcher".to_owned()],
        ..Default::default()
    })
    .await
    .expect("a local control plane");
    let admin = cp.client();
    let watcher_client =
        crate::testbed::client_from_kubeconfig(&cp.kubeconfig_for("watcher").unwrap())
            .await
            .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "read-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "read-configmaps"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "watcher"}]
    }))
    .unwrap();
    let bindings = Api::<RoleBinding>::namespaced(admin.clone(), "default");
    (Api::<Role>::namespaced(admin.clone(), "default"))
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let configmaps = Api::<ConfigMap>::namespaced(admin.clone(), "default");
    for name in ["kept", "missed"] {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"watched": "yes"}}}),
        )
        .unwrap();
        configmaps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }

    let gauge = Gauge::default();
    let mut watches = Watches::new(WatchErrors::default(), gauge.clone());
    // The API server ends each watch after a second, and the watcher starts the next one:
    // a lost permission is met within a second.
    let store = watches.reflect(
        "ConfigMaps".to_owned(),
        Api::<ConfigMap>::namespaced(watcher_client, "default"),
        watcher::Config::default().labels("watched=yes").timeout(1),
        false,
    );
    store.wait_until_ready().await.expect("synced");
    let names = || {
        let mut names: Vec<String> = store.state().iter().map(|c| c.name_any()).collect();
        names.sort();
        names
    };
    // Waits until the watch is failing (`true`) or not.
    let until_failing = |failing: bool| {
        let watches = watches.failing.clone();
        async move {
            let since = std::time::Instant::now();
            while watches.describe().is_some() != failing {
                assert!(
                    since.elapsed() < Duration::from_secs(20),
                    "the watch is still {}failing",
                    if failing { "not " } else { "" }
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(names(), ["kept", "missed"]);
    assert_eq!(watches.failing.describe(), None);

    bindings
        .delete("read-configmaps", &Default::default())
        .await
        .unwrap();
    until_failing(true).await;
    let failing = watches.failing.describe().unwrap();
    assert!(
        failing.starts_with("the watch of ConfigMaps (")
            && failing.contains("User \"watcher\" cannot")
            && failing.ends_with("(403))"),
        "{failing}"
    );
    assert_eq!(gauge.get(), 1);
    // A change it cannot see: the store still shows the object, which is why nothing may
    // be decided from it now.
    configmaps
        .delete("missed", &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(names(), ["kept", "missed"]);
    assert!(watches.failing.describe().is_some());

    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    until_failing(false).await;
    assert_eq!(gauge.get(), 0);
    assert_eq!(names(), ["kept"], "the list brought in what was missed");
    watches.tasks.abort_all();
}

/// A local control plane with the TrustAnchorRotation CRD served, and its admin client. The
/// control plane stops when dropped: keep it for the whole test.
async fn control_plane_with_crd() -> (ControlPlane, Client) {
    let cp = ControlPlane::start().await.expect("a local control plane");
    let client = cp.client();
    crate::sim::install_crd(&client, &TrustAnchorRotation::crd())
        .await
        .expect("the CRD installed");
    (cp, client)
}

/// The reconciler decides from its watch cache, which can lag its own last status write.
/// A look from a cache that still shows the object before that write must neither write
/// the step again nor announce it twice. Real API server; the lag is a cache that is not
/// fed, so the second look certainly comes from before the first write.
#[tokio::test]
async fn a_look_from_a_cache_older_than_the_last_status_write_writes_and_announces_nothing() {
    let (_cp, client) = control_plane_with_crd().await;
    let rotations = Api::<TrustAnchorRotation>::all(client.clone());
    let rotation: TrustAnchorRotation = serde_json::from_value(json!({
        "apiVersion": "trust.linkerd.io/v1alpha1", "kind": "TrustAnchorRotation",
        "metadata": {"name": "cluster"}, "spec": {}}))
    .unwrap();
    let created = rotations
        .create(&PostParams::default(), &rotation)
        .await
        .unwrap();

    // No certificate Secrets: every look parks the rotation and, the first time, says so.
    let created_version = created.resource_version();
    let stores = unmeshed(created, vec![vec![], vec![], vec![]], vec![]);
    let config = ReconcilerConfig::default();
    let recorder = test_recorder(&client);
    let metrics = ReconcileMetrics::register(&mut Default::default());
    let mut versions = Vec::new();
    for _ in 0..3 {
        reconcile_once(
            &client,
            &config,
            &stores,
            &recorder,
            &metrics,
            &mut Memory::default(),
        )
        .await
        .expect("a look");
        versions.push(rotations.get("cluster").await.unwrap().resource_version());
    }
    // The first look wrote the parked status; the two from the stale cache wrote nothing.
    assert_ne!(versions[0], created_version, "the first look wrote");
    assert_eq!(versions[1..], [versions[0].clone(), versions[0].clone()]);

    let status = rotations.get("cluster").await.unwrap().status.unwrap();
    let blocking = status.blocking_message.unwrap_or_default();
    assert!(blocking.starts_with("parked: "), "{blocking}");
    let events = Api::<Event>::namespaced(client.clone(), EVENTS_NAMESPACE)
        .list(&ListParams::default())
        .await
        .unwrap();
    let parked: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RotationParked"))
        .map(|e| e.note.clone().unwrap_or_default())
        .collect();
    assert_eq!(parked.len(), 1, "announced once: {parked:?}");
}

/// Labels `name` (`touched: yes`): a change of another writer's that moves its
/// resourceVersion and nothing the reconciler reads.
async fn touch<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
}

/// Creates the namespaces `names`.
async fn create_namespaces(client: &Client, names: &[&str]) {
    for ns in names {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &object(json!({"metadata": {"name": ns}})),
            )
            .await
            .unwrap();
    }
}

/// A CA certificate's template named `name`, valid from an hour ago for 30 days.
fn ca_template(name: &str) -> crate::sim::pki::Template {
    let now = time::OffsetDateTime::now_utc();
    crate::sim::pki::Template {
        common_name: name.to_owned(),
        dns_names: Vec::new(),
        is_ca: true,
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(30),
    }
}

/// Linkerd as installed, before any rotation: the anchor's and the issuer's Secrets, the
/// bundle ConfigMap with the anchor, no previous anchor yet; and the `cluster` rotation.
fn linkerd_as_installed() -> (Secret, Secret, ConfigMap, TrustAnchorRotation) {
    use crate::sim::pki::{generate_key, to_pem};
    let (anchor_key, issuer_key) = (generate_key().unwrap(), generate_key().unwrap());
    let anchor = ca_template("anchor").self_signed(&anchor_key).unwrap();
    let issuer = ca_template("identity.linkerd.cluster.local")
        .signed_by(&issuer_key, &anchor, &anchor_key)
        .unwrap();
    // `data`, as the API server keeps it, so that the objects read the same in a store.
    let secret = |ns: &str, name: &str, der: &[u8]| -> Secret {
        let mut secret: Secret = object(json!({"metadata": {"name": name, "namespace": ns}}));
        let pem = k8s_openapi::ByteString(to_pem(der).into_bytes());
        secret.data = Some(BTreeMap::from([("tls.crt".to_owned(), pem)]));
        secret
    };
    (
        secret("cert-manager", "linkerd-trust-anchor", &anchor),
        secret("linkerd", "linkerd-identity-issuer", &issuer),
        object(json!({"metadata": {"name": "linkerd-identity-trust-roots",
                "namespace": "linkerd"},
            "data": {"ca-bundle.crt": to_pem(&anchor)}})),
        object(json!({"apiVersion": "trust.linkerd.io/v1alpha1",
            "kind": "TrustAnchorRotation", "metadata": {"name": "cluster"}, "spec": {}})),
    )
}

/// A step that fails, whose status write then fails too (here the rotation is gone from
/// the server, and the namespace the step writes in never was): the look ends with the
/// step's failure, the one to act on, not the status write's.
#[tokio::test]
async fn a_failed_step_whose_status_write_fails_too_ends_with_the_steps_failure() {
    let (_cp, client) = control_plane_with_crd().await;
    let (anchor_secret, issuer_secret, bundle, rotation) = linkerd_as_installed();
    let stores = unmeshed(
        rotation,
        vec![vec![anchor_secret], vec![], vec![issuer_secret]],
        vec![bundle],
    );
    let failed = reconcile_once(
        &client,
        &ReconcilerConfig::default(),
        &stores,
        &test_recorder(&client),
        &ReconcileMetrics::register(&mut Default::default()),
        &mut Memory::default(),
    )
    .await
    .expect_err("a failed step");
    let said = failed.to_string();
    assert!(
        said.contains("Secret linkerd/linkerd-previous-anchor"),
        "{said}"
    );
}

/// A look whose writes went through but whose status write was refused as stale (someone
/// labelled the rotation meanwhile) still says what the writes did: the next look finds
/// them done, and would never say it. Said once, even by a look from the same stale caches
/// that decides the write again. Real API server.
#[tokio::test]
async fn writes_whose_status_write_was_stale_are_still_announced_once() {
    let (_cp, client) = control_plane_with_crd().await;
    create_namespaces(&client, &["cert-manager", "linkerd"]).await;
    let (anchor_secret, issuer_secret, bundle, rotation) = linkerd_as_installed();
    let mut created = Vec::new();
    for s in [&anchor_secret, &issuer_secret] {
        created.push(
            Api::<Secret>::namespaced(client.clone(), &s.namespace().unwrap())
                .create(&PostParams::default(), s)
                .await
                .unwrap(),
        );
    }
    let bundle = Api::<ConfigMap>::namespaced(client.clone(), "linkerd")
        .create(&PostParams::default(), &bundle)
        .await
        .unwrap();
    let rotations = Api::<TrustAnchorRotation>::all(client.clone());
    let rotation = rotations
        .create(&PostParams::default(), &rotation)
        .await
        .unwrap();
    let stale = unmeshed(
        rotation,
        vec![vec![created[0].clone()], vec![], vec![created[1].clone()]],
        vec![bundle],
    );
    touch(&rotations, "cluster").await;
    let config = ReconcilerConfig::default();
    let recorder = test_recorder(&client);
    let metrics = ReconcileMetrics::register(&mut Default::default());
    let bootstrapped = || events_with_reason(&client, "BootstrappedPreviousAnchor");

    let mut memory = Memory::default();
    for look in 0..2 {
        let requeue = reconcile_once(&client, &config, &stale, &recorder, &metrics, &mut memory)
            .await
            .expect("a look");
        assert_eq!(requeue, Requeue::Soon);
        // The second look is held until the Secret's watch shows the write: let it go.
        memory.own_writes.pending.clear();
        assert_eq!(
            rotations.get("cluster").await.unwrap().status,
            None,
            "{look}"
        );
        assert_eq!(bootstrapped().await, 1, "look {look}");
    }
    Api::<Secret>::namespaced(client.clone(), "linkerd")
        .get("linkerd-previous-anchor")
        .await
        .expect("the previous anchor written");
}

/// Who wrote over the operator's bundle, read from the ConfigMap's managedFields on the
/// real API server: nobody for the bundle Linkerd was installed with (the operator never
/// wrote it), right after the operator's write, or for a writer that applied the operator's
/// own bundle; the writer after it, whether it updated (`helm upgrade`, `kubectl edit`) or
/// applied server-side with force (Flux); and what a replacement leaves.
#[tokio::test]
async fn the_writer_over_the_operators_bundle_is_named_from_managed_fields() {
    let cp = ControlPlane::start().await.expect("a local control plane");
    let client = cp.client();
    let config = ReconcilerConfig::default();
    let (ns, name) = config.names.bundle_configmap.clone();
    crate::sim::linkerd::namespace(&client, &ns, json!({}), json!({}))
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let key = config.bundle_key.clone();
    let read = || async { overwritten_by(&api.get(&name).await.unwrap(), &key) };
    let version = || async { api.get(&name).await.unwrap().resource_version() };
    let update_as = |manager: &'static str, pem: &'static str| {
        let api = api.clone();
        let (name, key) = (name.clone(), key.clone());
        async move {
            api.patch(
                &name,
                &PatchParams {
                    field_manager: Some(manager.to_owned()),
                    ..Default::default()
                },
                &Patch::Merge(json!({ "data": { key: pem } })),
            )
            .await
            .unwrap();
        }
    };
    let apply_as = |manager: &'static str, pem: &'static str| {
        let api = api.clone();
        let (name, key) = (name.clone(), key.clone());
        async move {
            api.patch(
                &name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name}, "data": {key: pem}})),
            )
            .await
            .unwrap();
        }
    };
    let recorder = test_recorder(&client);
    let reference = ObjectReference::default();
    // The operator's write, as the reconciler carries it out.
    let write = |written_over: Option<String>| {
        let (client, config, recorder, reference) = (&client, &config, &recorder, &reference);
        async move {
            let effect = Effect::WriteBundle {
                pem: "restored".to_owned(),
                fingerprint: "f".repeat(64),
                written_over,
            };
            execute(
                client,
                config,
                recorder,
                reference,
                &effect,
                (
                    &mut BTreeMap::new(),
                    &mut Retries::default(),
                    &mut UnseenRestarts::default(),
                ),
            )
            .await
        }
    };
    let nobody = Vec::<String>::new();

    // Linkerd's install.
    let installed: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "data": {key.as_str(): "installed"}}))
    .unwrap();
    api.create(
        &PostParams {
            field_manager: Some("helm".to_owned()),
            ..Default::default()
        },
        &installed,
    )
    .await
    .unwrap();
    assert_eq!(read().await, nobody, "never written by the operator");

    write(version().await).await.unwrap();
    assert_eq!(read().await, nobody, "the operator's is the latest write");

    update_as("helm", "upgraded").await;
    assert_eq!(read().await, ["helm"]);
    write(version().await).await.unwrap();
    assert_eq!(read().await, nobody);

    // A GitOps controller that applies the operator's own bundle shares it: no overwrite.
    apply_as("kustomize-controller", "restored").await;
    assert_eq!(read().await, nobody);
    // One that applies another, and a hand edit after it: only the last holds the key.
    apply_as("kustomize-controller", "flux").await;
    assert_eq!(read().await, ["kustomize-controller"]);
    update_as("kubectl-edit", "edited").await;
    assert_eq!(read().await, ["kubectl-edit"]);

    // A replacement (a PUT without the operator's annotations: `kubectl replace`, `helm
    // upgrade --force`) takes the operator's annotations and managedFields entry with it:
    // nothing here says the operator wrote the bundle (its status remembers), and the key
    // is held by the replacer.
    write(version().await).await.unwrap();
    let mut replacing: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "data": {key.as_str(): "replaced"}}))
    .unwrap();
    replacing.metadata.resource_version = version().await;
    let replaced = api
        .replace(
            &name,
            &PostParams {
                field_manager: Some("kubectl-replace".to_owned()),
                ..Default::default()
            },
            &replacing,
        )
        .await
        .unwrap();
    assert_eq!(overwritten_by(&replaced, &key), nobody);
    assert!(
        !replaced
            .annotations()
            .contains_key(WRITTEN_BUNDLE_ANNOTATION)
    );
    assert_eq!(key_holders(&replaced, &key), ["kubectl-replace"]);

    // A write decided from a version that has changed since is refused as a conflict (the
    // look is then made again), and changes nothing.
    let decided_from = version().await;
    update_as("helm", "changed since").await;
    let stale = write(decided_from).await.unwrap_err();
    assert!(stale.conflict(), "{stale:?}");
    let data = api.get(&name).await.unwrap().data.unwrap();
    assert_eq!(data[&key], "changed since");
    write(version().await).await.unwrap();
    assert_eq!(
        api.get(&name).await.unwrap().data.unwrap()[&key],
        "restored"
    );
}

/// A step that failed holds the phase and says why; the pods counted by the look that
/// tried it still show, within the phase (a workload that cannot be restarted must not
/// freeze the counts), but not across a transition that did not happen.
#[test]
fn a_failed_step_holds_the_phase_and_keeps_the_counts_of_its_phase() {
    use crate::crd::{ConditionStatus, ConvergenceStatus, Phase};
    use crate::reconcile::decide::CONTESTED_CONDITION;
    let previous = TrustAnchorRotationStatus {
        phase: Phase::PropagatingTrustRoots,
        trust_bundle: Some(ConvergenceStatus::new(1, 4)),
        ..Default::default()
    };
    let error = ReconcileError::Kube {
        what: "restarting Deployment app/web".to_owned(),
        source: kube::Error::Api(Box::new(
            kube::core::Status::failure("denied by policy", "Forbidden").with_code(403),
        )),
    };
    let decided = TrustAnchorRotationStatus {
        trust_bundle: Some(ConvergenceStatus::new(3, 4)),
        blocking_message: Some("restarting 1 workload".to_owned()),
        ..previous.clone()
    };
    let held = failed_step_status(&previous, &decided, &error);
    assert_eq!(held.phase, Phase::PropagatingTrustRoots);
    assert_eq!(held.trust_bundle, Some(ConvergenceStatus::new(3, 4)));
    let message = held.blocking_message.unwrap();
    assert!(
        message.starts_with("could not carry out the next step, retrying: restarting Deployment app/web: denied by policy (403)"),
        "{message}"
    );
    let moving_on = TrustAnchorRotationStatus {
        phase: Phase::WaitingForIdentityRotation,
        ..decided
    };
    let held = failed_step_status(&previous, &moving_on, &error);
    assert_eq!(held.phase, Phase::PropagatingTrustRoots);
    assert_eq!(held.trust_bundle, Some(ConvergenceStatus::new(1, 4)));

    // An issuer renewed out of order, first seen by a look whose step fails: the condition
    // is raised with the urgent prefix, not held back with the step; the bundle's contest
    // (its restores, this one not done) stays as it was.
    let condition = |type_: &str, status| crate::crd::Condition {
        type_: type_.to_owned(),
        status,
        reason: "r".to_owned(),
        message: "m".to_owned(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    };
    let previous = TrustAnchorRotationStatus {
        conditions: vec![
            condition(OUT_OF_ORDER_CONDITION, ConditionStatus::False),
            condition(CONTESTED_CONDITION, ConditionStatus::False),
        ],
        ..previous
    };
    let raised = TrustAnchorRotationStatus {
        conditions: vec![
            condition(OUT_OF_ORDER_CONDITION, ConditionStatus::True),
            condition(CONTESTED_CONDITION, ConditionStatus::True),
        ],
        blocking_message: Some(format!("{OUT_OF_ORDER_URGENT}; restarting 1 workload")),
        ..previous.clone()
    };
    let held = failed_step_status(&previous, &raised, &error);
    let status_of = |type_: &str| {
        held.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status)
    };
    assert_eq!(
        status_of(OUT_OF_ORDER_CONDITION),
        Some(ConditionStatus::True)
    );
    assert_eq!(status_of(CONTESTED_CONDITION), Some(ConditionStatus::False));
    assert!(
        held.blocking_message
            .as_deref()
            .unwrap()
            .starts_with(&format!("{OUT_OF_ORDER_URGENT}; could not carry out")),
        "{held:?}"
    );

    // Its events: that the step failed, in the held status's words, and the renewal out of
    // order; not the step's own (a phase change, a contest: neither happened).
    let event = |warning, reason: &str, message: &str| Effect::Event {
        warning,
        reason: reason.to_owned(),
        message: message.to_owned(),
    };
    let decided_events = [
        event(true, OUT_OF_ORDER_CONDITION, "the issuer was renewed early"),
        event(
            false,
            "WaitingForIdentityRotation",
            "PropagatingTrustRoots -> WaitingForIdentityRotation: every pod holds the bundle",
        ),
        event(true, "TrustBundleContested", "overwritten again"),
    ];
    let decided_events: Vec<&Effect> = decided_events.iter().collect();
    assert_eq!(
        failed_step_events(&held, &decided_events),
        [
            (
                true,
                "StepFailed",
                held.blocking_message.as_deref().unwrap()
            ),
            (true, OUT_OF_ORDER_CONDITION, "the issuer was renewed early"),
        ]
    );
    // Without it, only the failure.
    assert_eq!(
        failed_step_events(&held, &decided_events[1..]),
        [(
            true,
            "StepFailed",
            held.blocking_message.as_deref().unwrap()
        )]
    );
}

/// In `Synced`, a status that changes the pod counts alone waits for its write until
/// [`COUNTS_GAP`] has passed since the last such write; any other change is written at
/// once, and is no such write.
#[test]
fn only_a_change_of_counts_alone_in_synced_waits_for_its_write() {
    use crate::crd::{ConvergenceStatus, Phase};
    let synced = TrustAnchorRotationStatus {
        phase: Phase::Synced,
        trust_bundle: Some(ConvergenceStatus::new(4, 4)),
        workload_certificates: Some(ConvergenceStatus::new(4, 4)),
        ..Default::default()
    };
    let scaled = TrustAnchorRotationStatus {
        trust_bundle: Some(ConvergenceStatus::new(5, 5)),
        workload_certificates: Some(ConvergenceStatus::new(4, 5)),
        ..synced.clone()
    };
    assert!(counts_only_change(&synced, &scaled));
    let said = TrustAnchorRotationStatus {
        blocking_message: Some("1 meshed pod(s) lack the trust bundle".to_owned()),
        ..scaled.clone()
    };
    assert!(!counts_only_change(&synced, &said));
    let moving = TrustAnchorRotationStatus {
        phase: Phase::PropagatingTrustRoots,
        ..scaled.clone()
    };
    assert!(!counts_only_change(&synced, &moving));
    let propagating = TrustAnchorRotationStatus {
        phase: Phase::PropagatingTrustRoots,
        ..synced.clone()
    };
    assert!(!counts_only_change(
        &propagating,
        &TrustAnchorRotationStatus {
            trust_bundle: Some(ConvergenceStatus::new(5, 5)),
            ..propagating.clone()
        }
    ));
    // The first such write goes in; the next waits out the gap; another change does not
    // wait, and the count change after it goes in at once.
    let mut writes = CountWrites::default();
    let t0 = Instant::now();
    assert_eq!(writes.hold(&synced, &scaled, t0), None);
    writes.wrote(&synced, &scaled, t0);
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(
        writes.hold(&scaled, &synced, t1),
        Some(COUNTS_GAP - Duration::from_secs(2))
    );
    assert_eq!(writes.hold(&scaled, &said, t1), None);
    assert_eq!(writes.hold(&scaled, &synced, t0 + COUNTS_GAP), None);
    writes.wrote(&scaled, &said, t1);
    assert_eq!(
        writes.hold(
            &said,
            &TrustAnchorRotationStatus {
                trust_bundle: None,
                ..said.clone()
            },
            t1
        ),
        None
    );
    // The held write is looked at again in time, whatever the decision's own requeue.
    let wait = Duration::from_secs(3);
    assert_eq!(Requeue::Idle.within(wait), Requeue::Within(wait));
    assert_eq!(
        Requeue::Within(Duration::from_secs(60)).within(wait),
        Requeue::Within(wait)
    );
    assert_eq!(
        Requeue::Within(Duration::from_secs(1)).within(wait),
        Requeue::Within(Duration::from_secs(1))
    );
    assert_eq!(Requeue::Soon.within(wait), Requeue::Soon);
}

/// A look that leaves the rotation as the last one left it (no status write) and decides
/// the same step announces it once: its watch of the restarted workload lags, and the
/// repeated restart is a no-op. Another step, or the same one after the rotation changed,
/// is announced.
#[test]
fn a_step_decided_again_over_an_unchanged_status_is_announced_once() {
    let restarting = |what: &str| Effect::Event {
        warning: false,
        reason: "RestartingWorkloads".to_owned(),
        message: format!("restarting {what}"),
    };
    let (a, b) = (
        restarting("deployment/mesh-0/a"),
        restarting("deployment/mesh-0/b"),
    );
    let v = |n: &str| Some(n.to_owned());
    let mut published = Published::default();
    assert_eq!(published.fresh(v("2"), vec![&a]), [&a]);
    assert!(published.fresh(v("2"), vec![&a]).is_empty(), "repeated");
    assert!(published.fresh(v("2"), vec![]).is_empty());
    assert!(
        published.fresh(v("2"), vec![&a]).is_empty(),
        "still repeated"
    );
    assert_eq!(published.fresh(v("2"), vec![&b]), [&b], "another step");
    assert_eq!(
        published.fresh(v("3"), vec![&b]),
        [&b],
        "the rotation changed"
    );
    // Without a version to tell looks apart, nothing is held back.
    assert_eq!(published.fresh(None, vec![&b]), [&b]);
    assert_eq!(published.fresh(None, vec![&b]), [&b]);
}

/// A write awaited for a while is checked against the API server: the reconciler created
/// the bundle ConfigMap and someone deleted it before the watch showed it; the watch then
/// shows "not there" as it did before the write, and without asking the server the
/// rotation would wait forever. The control: a ConfigMap the server has and the watch does
/// not show yet is still awaited.
#[tokio::test]
async fn an_awaited_write_is_let_go_once_the_api_server_shows_what_the_watch_shows() {
    let cp = ControlPlane::start().await.expect("a local control plane");
    let client = cp.client();
    create_namespaces(&client, &["linkerd"]).await;
    let config = ReconcilerConfig::default();
    let watched = Stores {
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![]),
        deployments: frozen(vec![]),
        statefulsets: frozen(vec![]),
        daemonsets: frozen(vec![]),
    };
    let a_while_ago = || {
        std::time::Instant::now()
            .checked_sub(OWN_WRITE_CONFIRM + Duration::from_secs(1))
            .unwrap()
    };

    let mut writes = OwnWrites::default();
    writes.wrote(OwnWrite::Bundle, None, Some("1".to_owned()));
    // Just written: awaited, the server not asked yet.
    writes.confirm(&client, &config, &watched).await;
    assert_eq!(writes.awaited(&config, &watched), Awaited::Yes);
    // A while later the server has no such ConfigMap either: let go.
    writes.pending[0].2 = a_while_ago();
    writes.confirm(&client, &config, &watched).await;
    assert_eq!(writes.awaited(&config, &watched), Awaited::No);

    let created = Api::<ConfigMap>::namespaced(client.clone(), "linkerd")
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": "linkerd-identity-trust-roots"},
                "data": {"ca-bundle.crt": ""}})),
        )
        .await
        .unwrap();
    writes.wrote(OwnWrite::Bundle, None, created.resource_version());
    writes.pending[0].2 = a_while_ago();
    writes.confirm(&client, &config, &watched).await;
    assert_eq!(
        writes.awaited(&config, &watched),
        Awaited::Yes,
        "the watch is behind the server"
    );
    let caught_up = Stores {
        bundle: frozen(vec![created]),
        ..watched
    };
    assert_eq!(writes.awaited(&config, &caught_up), Awaited::No);
}

/// The reconciler's own write of the bundle, then a look whose ConfigMap watch has not
/// shown it yet (the other watches have): that look must wait, not decide from the bundle
/// before the write. Real API server; the lag is a store that is not fed. Beside it, the
/// same look without the memory of the write does decide from the old bundle, and its write,
/// made onto the version it read, is refused as a conflict: nothing is written or announced
/// twice. So is a look decided from a ConfigMap that another writer changed since. A lag
/// past the patience is said in the status.
#[tokio::test]
async fn a_look_waits_for_the_watch_to_show_the_reconcilers_own_write() {
    use crate::sim::pki::{generate_key, to_pem};
    let (_cp, client) = control_plane_with_crd().await;
    create_namespaces(&client, &["cert-manager", "linkerd"]).await;
    let (old_key, new_key, issuer_key) = (
        generate_key().unwrap(),
        generate_key().unwrap(),
        generate_key().unwrap(),
    );
    let old = ca_template("old anchor").self_signed(&old_key).unwrap();
    let new = ca_template("new anchor").self_signed(&new_key).unwrap();
    let issuer = ca_template("identity.linkerd.cluster.local")
        .signed_by(&issuer_key, &old, &old_key)
        .unwrap();
    let secret = |ns: &str, name: &str, key: &str, der: &[u8]| -> Secret {
        object(json!({"metadata": {"name": name, "namespace": ns},
            "stringData": {key: to_pem(der)}}))
    };
    for s in [
        secret("cert-manager", "linkerd-trust-anchor", "tls.crt", &new),
        secret("linkerd", "linkerd-previous-anchor", "ca.crt", &old),
        secret("linkerd", "linkerd-identity-issuer", "tls.crt", &issuer),
    ] {
        Api::<Secret>::namespaced(client.clone(), &s.namespace().unwrap())
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), "linkerd");
    configmaps
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": "linkerd-identity-trust-roots"},
                "data": {"ca-bundle.crt": to_pem(&old)}})),
        )
        .await
        .unwrap();
    let trust_roots = || async {
        configmaps
            .get("linkerd-identity-trust-roots")
            .await
            .unwrap()
    };
    let rotations = Api::<TrustAnchorRotation>::all(client.clone());
    rotations
        .create(
            &PostParams::default(),
            &object(json!({"apiVersion": "trust.linkerd.io/v1alpha1",
                "kind": "TrustAnchorRotation", "metadata": {"name": "cluster"},
                "spec": {"workloadCertificateRefreshInterval": "5m"}})),
        )
        .await
        .unwrap();

    let secrets = |ns: &str, name: &str| {
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        let name = name.to_owned();
        async move { vec![api.get(&name).await.unwrap()] }
    };
    let looks = || async {
        unmeshed(
            rotations.get("cluster").await.unwrap(),
            vec![
                secrets("cert-manager", "linkerd-trust-anchor").await,
                secrets("linkerd", "linkerd-previous-anchor").await,
                secrets("linkerd", "linkerd-identity-issuer").await,
            ],
            vec![trust_roots().await],
        )
    };
    let config = ReconcilerConfig::default();
    let recorder = test_recorder(&client);
    let metrics = ReconcileMetrics::register(&mut Default::default());
    let events = || events_with_reason(&client, "RefreshingControlPlane");

    // A look decided from a ConfigMap that another writer has changed since (here, only
    // a label) writes nothing over it: the bundle write is refused as a conflict, and the
    // look ends asking for another soon, without a status, an event or a failure. Until
    // it has happened CONFLICT_PATIENCE times in a row: then it is a failed step.
    let stale = looks().await;
    touch(&configmaps, "linkerd-identity-trust-roots").await;
    let mut conflicts = Memory::default();
    let mut looks_from_stale = async || {
        reconcile_once(
            &client,
            &config,
            &stale,
            &recorder,
            &metrics,
            &mut conflicts,
        )
        .await
    };
    for _ in 1..CONFLICT_PATIENCE {
        let requeue = looks_from_stale().await;
        assert_eq!(requeue.expect("a look that met a conflict"), Requeue::Soon);
        let untouched = trust_roots().await;
        assert_eq!(untouched.data.unwrap()["ca-bundle.crt"], to_pem(&old));
        assert_eq!(rotations.get("cluster").await.unwrap().status, None);
    }
    let failed = looks_from_stale()
        .await
        .expect_err("a run of conflicts is a failed step");
    assert!(failed.conflict(), "{failed:?}");
    let status = rotations.get("cluster").await.unwrap().status.unwrap();
    let blocking = status.blocking_message.unwrap_or_default();
    assert!(
        blocking.contains("writing ConfigMap linkerd/linkerd-identity-trust-roots"),
        "{blocking}"
    );
    assert_eq!(events().await, 0);

    // The anchor was renewed: the first look writes the expanded bundle and says so.
    let before = looks().await;
    let mut memory = Memory::default();
    reconcile_once(&client, &config, &before, &recorder, &metrics, &mut memory)
        .await
        .expect("a look");
    let status = rotations.get("cluster").await.unwrap().status.unwrap();
    assert_eq!(status.phase, crate::crd::Phase::RefreshingControlPlane);
    assert_eq!(events().await, 1);

    // Every watch but the ConfigMap's has caught up.
    let lagging = Stores {
        bundle: before.bundle.clone(),
        ..looks().await
    };
    let written = trust_roots().await;
    let requeue = reconcile_once(&client, &config, &lagging, &recorder, &metrics, &mut memory)
        .await
        .expect("a look");
    assert_eq!(requeue, Requeue::Soon);
    assert_eq!(events().await, 1, "nothing announced twice");
    let after = trust_roots().await;
    assert_eq!(after.resource_version(), written.resource_version());
    // Lagging for longer than the patience: the status says why nothing moves, once.
    memory.own_writes.pending[0].2 = std::time::Instant::now()
        .checked_sub(OWN_WRITE_PATIENCE + Duration::from_secs(1))
        .unwrap();
    reconcile_once(&client, &config, &lagging, &recorder, &metrics, &mut memory)
        .await
        .expect("a look");
    let held = rotations.get("cluster").await.unwrap().status.unwrap();
    assert_eq!(held.phase, crate::crd::Phase::RefreshingControlPlane);
    let message = held.blocking_message.unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "{HOLDING}its watch of ConfigMap linkerd/linkerd-identity-trust-roots has not shown its own write of it for 30s"
        )),
        "{message}"
    );
    assert_eq!(
        memory.own_writes.awaited(&config, &lagging),
        Awaited::Yes,
        "said once"
    );
    let current = looks().await;
    assert_eq!(
        memory.own_writes.awaited(&config, &current),
        Awaited::No,
        "caught up"
    );
    // Caught up, a look has nothing to announce (no control plane to restart here).
    reconcile_once(&client, &config, &current, &recorder, &metrics, &mut memory)
        .await
        .expect("a look");
    assert_eq!(events().await, 1);

    // Without the memory of its write, the same look decides from the old bundle: it
    // writes the expanded bundle again, onto the version it read, which the write has
    // replaced. Refused as a conflict, it writes and announces nothing either. Read afresh
    // but for the bundle: the caught-up look wrote the status since `lagging` was read.
    let lagging = Stores {
        bundle: before.bundle.clone(),
        ..looks().await
    };
    let requeue = reconcile_once(
        &client,
        &config,
        &lagging,
        &recorder,
        &metrics,
        &mut Memory::default(),
    )
    .await
    .expect("a look");
    assert_eq!(requeue, Requeue::Soon);
    assert_eq!(events().await, 1, "announced twice");
    let bundle = trust_roots().await;
    assert_eq!(bundle.resource_version(), written.resource_version());
}

/// The leaf probe goes to the port the proxy container names `linkerd-admin` (Linkerd's
/// injector sets it from `config.linkerd.io/admin-port`), else to Linkerd's default 4191.
#[test]
fn the_leaf_probe_goes_to_the_proxy_containers_admin_port() {
    let probed_at = |ports: serde_json::Value| {
        let mut pod = running_pod("app", "web-x", owned_by("ReplicaSet", "web-5d8f7c"));
        pod.spec.as_mut().unwrap().containers[0].ports = object(ports);
        pod.status.as_mut().unwrap().pod_ip = Some("10.0.0.7".to_owned());
        let pod = meshed_pod(
            &ReconcilerConfig::default(),
            &pod,
            &mut AnchorTexts::default(),
            &|_, _| None,
        );
        pod.addr.map(|a| a.to_string())
    };
    let admin = |port: i32| {
        json!([{"name": "linkerd-proxy", "containerPort": 4143},
        {"name": "linkerd-admin", "containerPort": port}])
    };
    assert_eq!(probed_at(admin(4444)).as_deref(), Some("10.0.0.7:4444"));
    assert_eq!(probed_at(admin(4191)).as_deref(), Some("10.0.0.7:4191"));
    assert_eq!(probed_at(json!(null)).as_deref(), Some("10.0.0.7:4191"));
    // A port number no socket can have is not taken.
    assert_eq!(probed_at(admin(70000)).as_deref(), Some("10.0.0.7:4191"));
    assert_eq!(
        probed_at(json!([{"name": "http", "containerPort": 8080}])).as_deref(),
        Some("10.0.0.7:4191")
    );
}

/// A pod labelled as control plane that no control-plane restart of the operator's reaches is
/// judged by the anchors in its spec, as a workload pod is; one whose anchors are not in its
/// spec, or that a restart of a control-plane Deployment reaches, is judged by its marker.
#[tokio::test]
async fn a_control_plane_labelled_pod_no_restart_reaches_counts_by_its_anchors() {
    let pem = std::fs::read_to_string(format!(
        "{}/tests/fixtures/anchor.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let literal = json!([{"name": TRUST_ANCHORS_ENV, "value": pem}]);
    let from_configmap = json!([{"name": TRUST_ANCHORS_ENV, "valueFrom": {"configMapKeyRef":
        {"name": "linkerd-identity-trust-roots", "key": "ca-bundle.crt"}}}]);
    let pod = |namespace: &str, deployment: &str, env: &serde_json::Value| {
        let mut pod = running_pod(
            namespace,
            &format!("{deployment}-5d8f7c-x"),
            owned_by("ReplicaSet", &format!("{deployment}-5d8f7c")),
        );
        (pod.metadata.labels.as_mut().unwrap()).insert(
            CONTROL_PLANE_COMPONENT_LABEL.to_owned(),
            "gateway".to_owned(),
        );
        pod.spec.as_mut().unwrap().containers[0].env = object(env.clone());
        pod
    };
    let destination = object::<Deployment>(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "linkerd-destination", "namespace": "linkerd",
            "labels": {CONTROL_PLANE_NS_LABEL: "linkerd"}},
        "spec": {"selector": {}, "template": {"spec": {"containers": []}}}}));
    let stores = Stores {
        rotation: frozen(vec![]),
        secrets: vec![frozen(vec![]), frozen(vec![]), frozen(vec![])],
        bundle: frozen(vec![]),
        pods: frozen(vec![
            pod("linkerd-multicluster", "gateway", &literal),
            pod("linkerd-multicluster", "reads-configmap", &from_configmap),
            pod("linkerd", "linkerd-destination", &literal),
        ]),
        deployments: frozen(vec![destination]),
        statefulsets: frozen(vec![]),
        daemonsets: frozen(vec![]),
    };
    let observed = observe_offline(&stores).await;
    let judged: BTreeMap<String, (bool, bool)> = (observed.pods.iter())
        .map(|p| (p.key(), (p.control_plane, p.anchors.is_some())))
        .collect();
    assert_eq!(
        judged,
        BTreeMap::from([
            // Counted by its anchors, as a workload pod.
            (
                "linkerd-multicluster/gateway-5d8f7c-x".to_owned(),
                (false, true)
            ),
            // Nothing in its spec to count it by.
            (
                "linkerd-multicluster/reads-configmap-5d8f7c-x".to_owned(),
                (true, false)
            ),
            // Restarted onto each bundle by the operator: known by its marker.
            (
                "linkerd/linkerd-destination-5d8f7c-x".to_owned(),
                (true, true)
            ),
        ])
    );
}
