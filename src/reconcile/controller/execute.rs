//! Carrying out a decision's [`Effect`]s: bundle and Secret writes, restarts, the issuer's
//! renewal, each idempotent, with failures kept for the next look.

use super::*;

/// The outcome of a step's restarts, those `done` and those `failed`, as one error (`Ok` when
/// none failed); `reason` is the step's event reason.
pub(super) fn several(
    reason: &'static str,
    done: Vec<String>,
    mut failed: Vec<ReconcileError>,
) -> Result<(), ReconcileError> {
    let failed = match failed.len() {
        0 => return Ok(()),
        1 => failed.remove(0),
        _ => ReconcileError::Several(failed),
    };
    if done.is_empty() {
        return Err(failed);
    }
    Err(ReconcileError::Partly {
        reason,
        done,
        failed: Box::new(failed),
    })
}

pub(super) async fn execute(
    client: &Client,
    config: &ReconcilerConfig,
    recorder: &EventWriter,
    reference: &ObjectReference,
    effect: &Effect,
    (refused_restarts, retries, unseen_restarts): (
        &mut BTreeMap<Workload, FailedRestart>,
        &mut Retries,
        &mut UnseenRestarts,
    ),
) -> Result<Option<String>, ReconcileError> {
    // The resourceVersion an object the reconciler also watches has after the write.
    let mut written = None;
    match effect {
        Effect::WriteBundle {
            pem,
            fingerprint,
            written_over,
        } => {
            let (ns, name) = &config.names.bundle_configmap;
            tracing::info!(%fingerprint, ?written_over, "writing the trust bundle");
            // `written_over` is `None` when the cache shows no ConfigMap: the annotation is then
            // left out, and server-side apply removes any copy that a stale cache missed.
            // Otherwise it is the version the bundle was decided from, and the write is made
            // only onto it: one that changed since (another writer, or the next leader when
            // this replica has lost the Lease unawares) fails it with a conflict, and the next
            // look decides from what is there now.
            let mut annotations = json!({ WRITTEN_BUNDLE_ANNOTATION: fingerprint });
            let mut metadata = json!({ "name": name });
            if let Some(replaced) = written_over {
                annotations[WRITTEN_OVER_ANNOTATION] = json!(replaced);
                metadata["resourceVersion"] = json!(replaced);
            }
            metadata["annotations"] = annotations;
            let patch = Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": metadata,
                "data": {config.bundle_key.as_str(): pem}}));
            let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
            let what = format!("writing ConfigMap {ns}/{name}");
            let key = format!("{what} {fingerprint} over {written_over:?}");
            written = apply(retries, key, api, name, patch, what).await?;
        }
        Effect::WritePreviousAnchor { pem, fingerprint } => {
            let (ns, name) = &config.names.previous_anchor_secret;
            tracing::info!(%fingerprint, "writing the previous anchor");
            // The certificate only: the operator never copies a private key.
            let patch = Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": MANAGER}},
                "type": "Opaque",
                "stringData": {"ca.crt": pem}}));
            let api = Api::<Secret>::namespaced(client.clone(), ns);
            let what = format!("writing Secret {ns}/{name}");
            let key = format!("{what} {fingerprint}");
            written = apply(retries, key, api, name, patch, what).await?;
        }
        Effect::RestartControlPlane {
            deployments,
            marker,
        } => {
            // Each one is tried, as workloads are: one refused restart holds up no other.
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for d in deployments {
                let key = format!(
                    "restarting {d:?} in {} onto {marker}",
                    config.linkerd_namespace
                );
                let write = restart_control_plane(client, &config.linkerd_namespace, d, marker);
                match attempt(retries, key, write).await {
                    Ok(()) => done.push(format!(
                        "deployment/{}/{}",
                        config.linkerd_namespace, d.name
                    )),
                    Err(e) => failed.push(e),
                }
            }
            several("RestartingControlPlane", done, failed)?;
        }
        Effect::RestartWorkloads {
            workloads,
            restart_for,
            retry,
            retry_room,
        } => {
            let marker = match restart_for {
                RestartFor::Bundle(marker) => (RESTART_ANNOTATION, marker.as_str()),
                RestartFor::Issuer(fingerprint) => (LEAF_RESTART_ANNOTATION, fingerprint.as_str()),
            };
            let key = |w: &Workload| format!("restarting {w} {}={}", marker.0, marker.1);
            let now = || tokio::time::Instant::now().into_std();
            // What each restart of the step failed with last, and when, if it did.
            let before = |w: &Workload| {
                (refused_restarts.get(w))
                    .filter(|before| before.restart_for == *restart_for)
                    .map(|b| (b.failure.clone(), b.at))
            };
            let sent = retried_now(
                retry,
                *retry_room,
                retries,
                key,
                |w| before(w).map(|b| b.1),
                now(),
            );
            // Those not sent again are reported with their last failure, as it was said, so
            // that the step's message stays the same.
            let held_back: BTreeMap<&Workload, String> = (retry.iter())
                .filter(|w| !sent.contains(w))
                .map(|w| {
                    let failure = before(w).map(|b| b.0);
                    (
                        w,
                        failure.unwrap_or_else(|| {
                            "failed before; tried again when a slot is free".to_owned()
                        }),
                    )
                })
                .collect();
            // Each one is tried: one workload that cannot be restarted holds up no other. In
            // the order of their names, so that a failure is said in the same place whether it
            // is new or not tried again.
            let mut all: Vec<&Workload> = workloads.iter().chain(retry).collect();
            all.sort();
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for w in all {
                if let Some(failure) = held_back.get(w) {
                    failed.push(ReconcileError::NotYetRetried(failure.clone()));
                    continue;
                }
                match attempt(retries, key(w), restart(client, w, marker)).await {
                    Ok(()) => {
                        refused_restarts.remove(w);
                        unseen_restarts.made(w, restart_for, now());
                        done.push(w.to_string());
                    }
                    Err(e) => {
                        let failure = FailedRestart {
                            restart_for: restart_for.clone(),
                            failure: e.to_string(),
                            at: now(),
                        };
                        refused_restarts.insert(w.clone(), failure);
                        failed.push(e);
                    }
                }
            }
            several("RestartingWorkloads", done, failed)?;
        }
        Effect::RenewIssuer => {
            let (ns, name) = &config.names.issuer_certificate;
            let key = format!("renewing Certificate {ns}/{name}");
            attempt(retries, key, renew_certificate(client, ns, name)).await?;
        }
        Effect::Event { .. } => recorder.say_effect(reference, effect).await,
    }
    Ok(written)
}

/// Server-side applies `patch` to the object `name` (as [`MANAGER`], forced) as one
/// [`attempt`] (`key`; `what` names it in errors): its resourceVersion after the write.
pub(super) async fn apply<K>(
    retries: &mut Retries,
    key: String,
    api: Api<K>,
    name: &str,
    patch: Patch<serde_json::Value>,
    what: String,
) -> Result<Option<String>, ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply(MANAGER).force();
    let write = async {
        api.patch(name, &params, &patch)
            .await
            .map_err(kube_err(what))
    };
    Ok(attempt(retries, key, write).await?.resource_version())
}

/// Which of the restarts that failed before (`retry`) are sent again now: those whose wait is
/// over (a refusal's, see [`Retries`]), in the `room` the step leaves, those that failed the
/// longest ago first (`failed_at`), so that none waits for good behind others that keep failing.
/// (The others are reported with their last failure.)
pub(super) fn retried_now<'a>(
    retry: &'a [Workload],
    room: usize,
    retries: &Retries,
    key: impl Fn(&Workload) -> String,
    failed_at: impl Fn(&Workload) -> Option<std::time::Instant>,
    now: std::time::Instant,
) -> BTreeSet<&'a Workload> {
    let mut due: Vec<&Workload> = (retry.iter())
        .filter(|w| retries.deferred(&key(w), now).is_none())
        .collect();
    due.sort_by_key(|w| failed_at(w));
    due.into_iter().take(room).collect()
}

/// Forgets the failed restarts of workloads that are gone (`exists` says which are not) and
/// have not failed for [`FORGET_AFTER`] (a workload missing from a cache that lags, or a
/// Deployment orphaned moments ago, keeps its failure, so that it is not sent again as a fresh
/// restart, in a slot of its own, at every look), and all of them once the rotation is `Synced`
/// (a failure counts only for the step it was met in, see [`FailedRestart::restart_for`]).
pub(super) fn forget_restarts(
    failed: &mut BTreeMap<Workload, FailedRestart>,
    phase: crate::crd::Phase,
    exists: impl Fn(&Workload) -> bool,
    now: std::time::Instant,
) {
    if phase == crate::crd::Phase::Synced {
        failed.clear();
    } else {
        failed.retain(|w, f| exists(w) || now.duration_since(f.at) < FORGET_AFTER);
    }
}

/// A workload's restart that failed, as [`Memory`] keeps it.
#[derive(Debug)]
pub(super) struct FailedRestart {
    pub(super) restart_for: RestartFor,
    /// The failure, as it was said.
    pub(super) failure: String,
    pub(super) at: std::time::Instant,
}

/// Makes `write` (described by `key`: the object and what is written to it) unless an earlier
/// refusal of the same write is still waiting out its [`Retries`] wait, in which case that
/// refusal is the result, and the API server is not asked. Only a refusal waits (see
/// [`ReconcileError::refused`]): a write that timed out or met an API server in trouble is
/// tried again at the next look, as a bundle restore must be.
pub(super) async fn attempt<T>(
    retries: &mut Retries,
    key: String,
    write: impl Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError> {
    // Tokio's clock, the same as the system's but for tests that pause it.
    let now = || tokio::time::Instant::now().into_std();
    if let Some(failure) = retries.deferred(&key, now()) {
        tracing::debug!(write = key, "refused before; not tried again yet");
        return Err(ReconcileError::NotYetRetried(failure.to_owned()));
    }
    let result = write.await;
    match &result {
        Ok(_) => retries.succeeded(&key),
        // The wait runs from the refusal: a refusal slow to come (a policy webhook timing out)
        // does not use it up.
        Err(e) if e.refused() => retries.failed(&key, e.to_string(), now()),
        Err(_) => {}
    }
    result
}

/// Sets a restart annotation (`key`, `value`) on a workload's pod template (a merge patch of
/// one key: the same value twice changes nothing, so no second rollout).
pub(super) async fn restart(
    client: &Client,
    workload: &Workload,
    (key, value): (&str, &str),
) -> Result<(), ReconcileError> {
    let Workload {
        kind,
        namespace,
        name,
    } = workload;
    let patch = Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
        key: value}}}}}));
    let params = patch_params();
    let what = format!("restarting {kind} {namespace}/{name}");
    tracing::info!(%kind, %namespace, %name, annotation = key, %value, "restarting");
    match kind.as_str() {
        "Deployment" => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(|_| ()),
        "StatefulSet" => {
            Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), namespace)
                .patch(name, &params, &patch)
                .await
                .map(|_| ())
        }
        _ => Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), namespace)
            .patch(name, &params, &patch)
            .await
            .map(|_| ()),
    }
    .map_err(kube_err(what))
}

/// The control-plane restart: the restart annotation, and the proxy's refresh interval set or
/// removed in the same write (a strategic merge patch, so the container and its env are merged
/// by name and nothing else in them changes).
pub(super) async fn restart_control_plane(
    client: &Client,
    namespace: &str,
    restart: &ControlPlaneRestart,
    marker: &str,
) -> Result<(), ReconcileError> {
    let patch = control_plane_restart_patch(restart, marker);
    let name = &restart.name;
    tracing::info!(%namespace, %name, refresh = ?restart.proxy_refresh, "restarting the control plane onto the trust bundle");
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch(name, &patch_params(), &Patch::Strategic(patch))
        .await
        .map(|_| ())
        .map_err(kube_err(format!(
            "restarting Deployment {namespace}/{name}"
        )))
}

/// The strategic merge patch for [`restart_control_plane`].
pub(super) fn control_plane_restart_patch(
    restart: &ControlPlaneRestart,
    marker: &str,
) -> serde_json::Value {
    // The operator's annotation and the env entry it stands for, written or removed together.
    let (annotation, env, list) = match &restart.proxy_refresh {
        ProxyRefresh::Keep => {
            return json!({"spec": {"template": {"metadata": {"annotations": {
                RESTART_ANNOTATION: marker}}}}});
        }
        ProxyRefresh::Set { list, value } => (
            json!(value),
            json!({"name": MAX_REFRESH_ENV, "value": value}),
            list,
        ),
        ProxyRefresh::Remove { list } => (
            serde_json::Value::Null,
            json!({"name": MAX_REFRESH_ENV, "$patch": "delete"}),
            list,
        ),
    };
    json!({"spec": {"template": {
        "metadata": {"annotations": {
            RESTART_ANNOTATION: marker,
            PROXY_REFRESH_ANNOTATION: annotation}},
        "spec": {list.field(): [{"name": PROXY_CONTAINER, "env": [env]}]}}}})
}

/// What `cmctl renew` does: add `Issuing=True` (reason `ManuallyTriggered`) to the
/// Certificate's status conditions.
pub(super) async fn renew_certificate(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), ReconcileError> {
    let api = certificate_api(client, namespace);
    let what = format!("renewing Certificate {namespace}/{name}");
    let mut cert = api.get(name).await.map_err(kube_err(what.clone()))?;
    let mut conditions: Vec<serde_json::Value> = cert.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c["type"] == "Issuing" && c["status"] == "True")
    {
        return Ok(());
    }
    conditions.retain(|c| c["type"] != "Issuing");
    conditions.push(
        json!({"type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
        "message": "Certificate re-issuance triggered by trust-rotation-operator",
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}),
    );
    cert.data["status"]["conditions"] = serde_json::Value::Array(conditions);
    api.replace_status(name, &post_params(), &cert)
        .await
        .map_err(kube_err(what))?;
    Ok(())
}
