//! Shared helpers for the integration tests that run against the real local control plane.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt};
use trust_rotation_operator::crd::TrustAnchorRotation;
use trust_rotation_operator::testbed::ControlPlane;

/// Field manager for the tests' server-side applies.
pub const MANAGER: &str = "trust-rotation-operator-tests";

/// Starts a control plane, printing how long the start took (a figure we report).
pub async fn start_control_plane() -> ControlPlane {
    let started = Instant::now();
    let cp = ControlPlane::start()
        .await
        .unwrap_or_else(|e| panic!("starting the local control plane: {e}"));
    eprintln!(
        "control plane at {} ready in {:.1}s",
        cp.server(),
        started.elapsed().as_secs_f64()
    );
    cp
}

/// Installs the TrustAnchorRotation CRD and waits until the API server serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = TrustAnchorRotation::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .unwrap_or_else(|_| panic!("CRD {name} not Established after 30s"))
    .unwrap();
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
