//! The operator's API client (`apiclient`) on the real API server: a request on a connection
//! that went quiet fails at its deadline, and the next goes out on a new connection and is
//! answered; a watch that stays quiet for longer than the deadline is left alone.

mod common;

use std::time::{Duration, Instant};

use common::relay::Relay;
use common::start_control_plane;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use trust_rotation_operator::apiclient;
use trust_rotation_operator::testbed::config_from_kubeconfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_unanswered_fails_at_its_deadline_and_a_quiet_watch_does_not() {
    let cp = start_control_plane().await;
    let relay = Relay::to(&cp).await;
    let config = config_from_kubeconfig(&relay.kubeconfig(&cp, "relayed"))
        .await
        .unwrap();
    let deadline = Duration::from_secs(1);
    let bounded = apiclient::from_config(config.clone(), deadline).unwrap();
    // The negative control: the same request, on kube's client as it comes.
    let unbounded = kube::Client::try_from(config).unwrap();
    let (bounded_ns, unbounded_ns) = (
        Api::<Namespace>::all(bounded.clone()),
        Api::<Namespace>::all(unbounded),
    );
    // Each client now holds a connection through the relay, idle in its pool.
    bounded_ns.get("default").await.unwrap();
    unbounded_ns.get("default").await.unwrap();
    let before = relay.connections();

    relay.stall();
    let started = Instant::now();
    let bounded_get = async {
        let result = bounded_ns.get("default").await;
        (result, started.elapsed())
    };
    let waited = 4 * deadline;
    let ((answer, took), unbounded) = tokio::join!(
        bounded_get,
        tokio::time::timeout(waited, unbounded_ns.get("default"))
    );
    let error = answer.expect_err("a request on a stalled connection is not answered");
    assert!(
        error.to_string().contains(
            "GET /api/v1/namespaces/default: no complete answer from the API server within 1s"
        ),
        "{error}"
    );
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(2),
        "failed after {took:?}, not at the 1s deadline"
    );
    assert!(
        unbounded.is_err(),
        "without a deadline, the request on the stalled connection was answered: {unbounded:?}"
    );
    eprintln!(
        "the stalled request failed after {:.2}s; without a deadline it still waited after {waited:?}",
        took.as_secs_f64()
    );

    // The next request does not reuse the stalled connection.
    bounded_ns
        .get("default")
        .await
        .expect("the request after the deadline is answered");
    assert!(relay.connections() > before, "a new connection was opened");

    // A watch that stays quiet for three deadlines keeps going, and delivers the next change.
    let configmaps = Api::<ConfigMap>::namespaced(bounded.clone(), "default");
    let mut events = watcher(configmaps, watcher::Config::default()).boxed();
    loop {
        match events.next().await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("the watch's initial list: {other:?}"),
        }
    }
    let quiet = 3 * deadline;
    let during = tokio::time::timeout(quiet, events.next()).await;
    assert!(during.is_err(), "the quiet watch gave {during:?}");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "after-the-quiet" },
        "data": { "k": "v" },
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(cp.client(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        Ok(Some(Ok(watcher::Event::Apply(cm)))) => {
            assert_eq!(cm.metadata.name.as_deref(), Some("after-the-quiet"))
        }
        other => panic!("after {quiet:?} of quiet, the watch gave {other:?}"),
    }
}
