//! One look: what the stores show, gathered into [`Observed`] for [`decide`], and the probes of
//! proxies' live leaves in RenewingWorkloadCerts.

use super::*;

/// Who wrote the bundle's `key` over the operator's last write of the ConfigMap (see
/// [`BundleMeta::overwritten_by`]). The operator's write (server-side apply with force) owns
/// the key; a later write of another value takes it away. So the key is overwritten when the
/// operator still manages a field of the ConfigMap (its annotations, which every write sets:
/// [`WRITTEN_BUNDLE_ANNOTATION`]) but no longer the key, and other managers do. One that
/// applied the same value shares the key with the operator, and is no overwrite.
pub(super) fn overwritten_by(cm: &ConfigMap, key: &str) -> Vec<String> {
    let entries = cm.metadata.managed_fields.as_deref().unwrap_or_default();
    let ours: Vec<_> = entries
        .iter()
        .filter(|e| e.manager.as_deref() == Some(MANAGER))
        .collect();
    if ours.is_empty() || ours.iter().any(|e| holds_key(e, key)) {
        return Vec::new();
    }
    key_holders(cm, key)
}

/// The field managers that hold `key` of the ConfigMap's `data` (sorted).
pub(super) fn key_holders(cm: &ConfigMap, key: &str) -> Vec<String> {
    let entries = cm.metadata.managed_fields.as_deref().unwrap_or_default();
    let managers: BTreeSet<String> = entries
        .iter()
        .filter(|e| holds_key(e, key))
        .filter_map(|e| e.manager.clone())
        .collect();
    managers.into_iter().collect()
}

pub(super) fn holds_key(
    entry: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    key: &str,
) -> bool {
    entry
        .fields_v1
        .as_ref()
        .and_then(|f| f.0.get("f:data"))
        .is_some_and(|data| data.get(format!("f:{key}")).is_some())
}

/// The world as the watches show it. `read_issuing`: also fetch the issuer Certificate's
/// `Issuing` condition (one GET), which only some phases use.
pub(super) async fn observe(
    client: &Client,
    config: &ReconcilerConfig,
    stores: &Stores,
    refused_restarts: &BTreeMap<Workload, FailedRestart>,
    read_issuing: bool,
    said_certificate: &mut Lasting,
) -> Result<Observed, ReconcileError> {
    let n = &config.names;
    let secret_of = |store: &Store<Secret>, (ns, name): &(String, String)| {
        store.get(&ObjectRef::new(name).within(ns))
    };
    let secret_cert = |secret: &Secret, object: &str, keys: &[&str]| {
        let data = secret.data.clone().unwrap_or_default();
        let Some((key, bytes)) = keys
            .iter()
            .find_map(|k| data.get(*k).map(|v| (*k, v.0.clone())))
        else {
            return Err(Problem {
                object: object.to_owned(),
                message: format!("has none of the keys {}", keys.join(", ")),
            });
        };
        let text = String::from_utf8(bytes).map_err(|_| Problem {
            object: object.to_owned(),
            message: format!("{key} is not text"),
        })?;
        certs::parse_first(object, key, &text)
    };

    let anchor_object = format!("Secret {}/{}", n.anchor_secret.0, n.anchor_secret.1);
    let anchor = match secret_of(&stores.secrets[0], &n.anchor_secret) {
        Some(s) => secret_cert(&s, &anchor_object, &["tls.crt"]),
        None => Err(Problem {
            object: anchor_object,
            message: "not found".to_owned(),
        }),
    };
    let previous_object = format!(
        "Secret {}/{}",
        n.previous_anchor_secret.0, n.previous_anchor_secret.1
    );
    let previous = match secret_of(&stores.secrets[1], &n.previous_anchor_secret) {
        // The operator writes this Secret as `Opaque`, the certificate alone, and a Secret's
        // type cannot change: one of another type (a copy of the anchor's `kubernetes.io/tls`
        // Secret, say) would refuse the write that ends every rotation.
        Some(s) if s.type_.as_deref().is_some_and(|t| t != "Opaque") => Err(Problem {
            object: previous_object.clone(),
            message: format!(
                "has type {}, and a Secret's type cannot change: the operator keeps the previous anchor in an Opaque Secret, the certificate alone; delete this one while the rotation is Synced and the operator writes it again",
                s.type_.as_deref().unwrap_or_default()
            ),
        }),
        Some(s) => secret_cert(&s, &previous_object, &["ca.crt", "tls.crt"]).map(Some),
        None => Ok(None),
    };
    let bundle_object = format!(
        "ConfigMap {}/{}",
        n.bundle_configmap.0, n.bundle_configmap.1
    );
    // One read of the ConfigMap for its anchors and its version, which make the restart
    // marker together.
    let bundle_configmap = stores
        .bundle
        .get(&ObjectRef::new(&n.bundle_configmap.1).within(&n.bundle_configmap.0));
    let bundle_meta = bundle_configmap
        .as_deref()
        .map(|cm| BundleMeta {
            version: cm.resource_version(),
            written_over: cm.annotations().get(WRITTEN_OVER_ANNOTATION).cloned(),
            overwritten_by: overwritten_by(cm, &config.bundle_key),
            annotated: cm.annotations().contains_key(WRITTEN_BUNDLE_ANNOTATION),
            key_holders: key_holders(cm, &config.bundle_key),
        })
        .unwrap_or_default();
    let bundle = match bundle_configmap
        .as_deref()
        .map(|cm| crate::bundle::configmap_text(cm, &config.bundle_key))
    {
        Some(Ok(Some(text))) => {
            certs::parse_bundle(&bundle_object, &config.bundle_key, text).map(Some)
        }
        Some(Ok(None)) | None => Ok(None),
        Some(Err(message)) => Err(Problem {
            object: bundle_object.clone(),
            message,
        }),
    };
    let issuer_object = format!(
        "Secret {}/{}",
        config.issuer_secret.0, config.issuer_secret.1
    );
    let issuer_cert = match secret_of(&stores.secrets[2], &config.issuer_secret) {
        Some(s) => secret_cert(&s, &issuer_object, &["tls.crt"]),
        None => Err(Problem {
            object: issuer_object,
            message: "not found".to_owned(),
        }),
    };
    let mut control_plane: Vec<ControlPlaneDeployment> = stores
        .deployments
        .state()
        .iter()
        .filter(|d| {
            d.namespace().as_deref() == Some(config.linkerd_namespace.as_str())
                && d.labels().get(CONTROL_PLANE_NS_LABEL) == Some(&config.linkerd_namespace)
        })
        .map(|d| ControlPlaneDeployment {
            name: d.name_any(),
            identity_controller: is_identity_controller(d.labels()),
            restarted_for: template_annotation(d.template(), RESTART_ANNOTATION),
            rollout_complete: d.rollout_complete(),
            proxy: control_plane_proxy(d.template()),
            refresh_set_by_operator: template_annotation(d.template(), PROXY_REFRESH_ANNOTATION),
            replicas: (d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
                .max(d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0))
                .try_into()
                .unwrap_or(0),
        })
        .collect();
    // In the order of their names, not the cache's: messages and restarts come the same way on
    // every look.
    control_plane.sort_by(|a, b| a.name.cmp(&b.name));
    let mut anchors_cache = AnchorTexts::default();
    let mut baked_templates = BTreeMap::new();
    let (cache, baked) = (&mut anchors_cache, &mut baked_templates);
    baked_anchors_of(&stores.deployments, config, cache, baked);
    baked_anchors_of(&stores.statefulsets, config, cache, baked);
    baked_anchors_of(&stores.daemonsets, config, cache, baked);
    let mut restart_markers: BTreeMap<Workload, RestartMarkers> = markers_of(&stores.deployments)
        .chain(markers_of(&stores.statefulsets))
        .chain(markers_of(&stores.daemonsets))
        .collect();
    let all_pods = stores.pods.state();
    mark_pods_not_starting(&mut restart_markers, all_pods.iter().map(|p| &**p));
    let now = k8s_openapi::jiff::Timestamp::now();
    let wont_roll = |w: &Workload, p: &Pod| {
        let (name, ns) = (w.name.as_str(), w.namespace.as_str());
        let pod = p.name_any();
        match w.kind.as_str() {
            "Deployment" => match stores.deployments.get(&ObjectRef::new(name).within(ns)) {
                Some(d) => (d.spec.as_ref().and_then(|s| s.paused) == Some(true))
                    .then(|| Unfixable::Paused(w.clone())),
                // Its ReplicaSet was orphaned (`kubectl delete deployment --cascade=orphan`):
                // there is no Deployment to restart. Not for a pod just created, which may
                // come before its Deployment's watch event.
                None => p
                    .creation_timestamp()
                    .is_some_and(|t| now.duration_since(t.0) > ORPHAN_AGE)
                    .then(|| {
                        let replica_set = p
                            .owner_references()
                            .iter()
                            .find(|o| o.controller == Some(true))
                            .map_or(String::new(), |o| o.name.clone());
                        Unfixable::Owner(format!(
                            "ReplicaSet {replica_set}, whose Deployment {name} does not exist"
                        ))
                    }),
            },
            "StatefulSet" => {
                let set = stores.statefulsets.get(&ObjectRef::new(name).within(ns));
                let on_delete = set
                    .as_ref()
                    .and_then(|s| s.spec.as_ref()?.update_strategy.as_ref()?.type_.as_deref())
                    == Some("OnDelete");
                let partition = set.as_deref().map_or(0, partition);
                // A StatefulSet's pods are named `<set>-<ordinal>`.
                let ordinal = pod
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|o| o.parse::<i32>().ok());
                if on_delete {
                    Some(Unfixable::OnDelete(format!("{} {ns}/{name}", w.kind)))
                } else if ordinal.is_some_and(|o| o < partition) {
                    Some(Unfixable::Partitioned {
                        workload: w.clone(),
                        partition,
                    })
                } else {
                    None
                }
            }
            "DaemonSet" => stores
                .daemonsets
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|d| d.spec.as_ref()?.update_strategy.as_ref()?.type_.clone())
                .filter(|t| t == "OnDelete")
                .map(|_| Unfixable::OnDelete(format!("{} {ns}/{name}", w.kind))),
            _ => None,
        }
    };
    // A pod labelled as control plane but not of a control-plane Deployment the operator
    // restarts has no restart marker to be judged by. Where its spec has its anchors (an older
    // Linkerd's, or one labelled by hand), it is judged by them, as a workload pod is: counted
    // for the bundle, restarted by its workload, named. Otherwise nothing tells what it holds.
    let mut meshed = |p: &Pod| {
        let mut pod = meshed_pod(config, p, &mut anchors_cache, &wont_roll);
        if pod.control_plane && pod.anchors.is_some() && !pod.restarted_with(&control_plane) {
            pod.control_plane = false;
        }
        pod
    };
    let (mut pods, mut starting, mut draining) = (Vec::new(), Vec::new(), Vec::new());
    for p in all_pods.iter() {
        let deleting = p.metadata.deletion_timestamp.as_ref().map(|t| t.0);
        match (live(p), deleting) {
            (true, None) => pods.push(meshed(p)),
            // Deleted: its containers may still run until its grace period runs out (the API
            // server sets `deletionTimestamp` to the deletion time plus the grace period, on
            // its clock, which the operator's may run ahead of; and the kubelet takes a moment
            // to stop them). Still listed well past that, it is on a node that no longer
            // reports, and would hold the rotation for as long.
            (true, Some(deadline)) if deadline + DRAIN_SLACK > now => draining.push(meshed(p)),
            // Not started yet, and not deleted (a pod deleted before its proxy started never
            // will start it): its anchors count for the bundle all the same.
            (false, None) if phase(p) == Some("Pending") => {
                let pod = meshed(p);
                if !pod.control_plane {
                    starting.push(pod);
                }
            }
            _ => {}
        }
    }
    // The anchors proxies hold, read from their env: what the signer of the issuer, or an
    // anchor the bundle lost mid-rotation, can be found among (see `Observed::held_anchors`).
    let held_anchors = anchors_cache.certs();
    let issuer = match issuer_cert {
        Ok(cert) => {
            let candidates: Vec<&Cert> = [
                anchor.as_ref().ok(),
                previous.as_ref().ok().and_then(|p| p.as_ref()),
            ]
            .into_iter()
            .flatten()
            .chain(
                bundle
                    .as_ref()
                    .ok()
                    .and_then(|b| b.as_ref())
                    .into_iter()
                    .flatten(),
            )
            .chain(&held_anchors)
            .collect();
            let child = certs::der(&cert.pem).unwrap_or_default();
            let signed_by = certs::signer_of(&child, &candidates).map(|a| a.fingerprint.clone());
            let (issuing, failure) = if read_issuing {
                issuer_issuance(
                    client,
                    &n.issuer_certificate,
                    cert.not_after,
                    said_certificate,
                )
                .await
            } else {
                // Not read: a failure still there in the next rotation is said again.
                said_certificate.forget();
                (false, None)
            };
            Ok(Issuer {
                cert,
                signed_by,
                issuing,
                failure,
            })
        }
        Err(p) => Err(p),
    };

    Ok(Observed {
        now: now.as_second(),
        anchor,
        previous,
        bundle,
        issuer,
        control_plane,
        pods,
        starting,
        draining,
        restart_markers,
        baked_templates,
        refused_restarts: (refused_restarts.iter())
            .map(|(w, failed)| (w.clone(), failed.restart_for.clone()))
            .collect(),
        bundle_meta,
        held_anchors,
        // Set by the leaf probes, which know since when the issuer is seen.
        issuer_reload: None,
    })
}

pub(super) fn certificate_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// The issuer Certificate's issuance, read with one GET per look in the accelerating phases
/// only (no watch on cert-manager's Certificates, whose CRD may be missing): see
/// [`issuance_of`].
///
/// A failure to read it is logged once, and again only when it changes (`said`): looks come
/// every 2 s, and a lasting one (no permission, say) would otherwise fill the log.
pub(super) async fn issuer_issuance(
    client: &Client,
    (ns, name): &(String, String),
    cached_not_after: i64,
    said: &mut Lasting,
) -> (bool, Option<IssuanceFailure>) {
    let read = certificate_api(client, ns).get_opt(name).await;
    let failure = read
        .as_ref()
        .err()
        .map(|e| crate::watch::api_words(e).to_string());
    let certificate = format!("{ns}/{name}");
    match said.record(failure) {
        Lasted::Failing(error) => {
            tracing::warn!(%certificate, %error, "reading the issuer Certificate (said again only if the failure changes)")
        }
        Lasted::Cleared => {
            tracing::info!(%certificate, "the issuer Certificate can be read again")
        }
        Lasted::Unchanged => {}
    }
    match read {
        Ok(Some(cert)) => issuance_of(&cert.data["status"], cached_not_after),
        Ok(None) => (false, None),
        // Read as "not issuing, no failure": the worst that follows is the automatic policy
        // setting `Issuing=True` again, which is idempotent (and fails the same way if the API
        // does).
        Err(_) => (false, None),
    }
}

/// From a Certificate's `status`: whether the issuer's renewal is under way, and cert-manager's
/// record of its last failed issuance, if one stands.
///
/// Under way: `Issuing=True`, or an issuance the Certificate records (`notAfter`) that the
/// watched Secret, `cached_not_after`, does not show yet. cert-manager writes the Secret, then
/// clears `Issuing`: a look between the two, from a Secret cache that lags, would otherwise
/// read "not renewed, not issuing" and renew twice.
///
/// Failed: `lastFailureTime`, which cert-manager sets on each failure and clears on success,
/// with `failedIssuanceAttempts` and the reason and message of an `Issuing=False` condition.
pub(super) fn issuance_of(
    status: &serde_json::Value,
    cached_not_after: i64,
) -> (bool, Option<IssuanceFailure>) {
    let time = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_second())
    };
    let conditions = status["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let issuing_condition = conditions.iter().find(|c| c["type"] == "Issuing");
    let issuing = issuing_condition.is_some_and(|c| c["status"] == "True");
    let issued_since = time(&status["notAfter"]).is_some_and(|t| t > cached_not_after);
    let text = |c: &serde_json::Value, field: &str| c[field].as_str().map(str::to_owned);
    let failure = time(&status["lastFailureTime"]).map(|at| {
        let failed_condition = issuing_condition.filter(|c| c["status"] == "False");
        IssuanceFailure {
            at,
            attempts: status["failedIssuanceAttempts"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok()),
            reason: failed_condition.and_then(|c| text(c, "reason")),
            message: failed_condition.and_then(|c| text(c, "message")),
        }
    });
    (issuing || issued_since, failure)
}

/// Pods already seen presenting a leaf from the current issuer, so that each look of
/// RenewingWorkloadCerts probes only the pods still to converge, not every proxy of the mesh.
///
/// A proxy goes back to an earlier issuer's leaf only if a replica of the identity controller
/// that has not loaded the new issuer yet signs its next one: each replica reads the issuer from
/// its own Secret volume, which its node's kubelet updates on its own schedule. So a pod seen
/// before every replica has surely loaded the issuer (each replica's metrics show it; or,
/// where they cannot be read, the issuer first seen, or an identity controller pod last seen
/// becoming ready, plus `issuer_reload_grace`) is probed once more after that; from then on no
/// replica signs with another issuer (one started since loads the current issuer at start),
/// and a pod seen is not probed again while the issuer stays the same. Keyed by pod and
/// address: a pod created again under the same name at another address is probed anew (one
/// that gets the same address, or whose proxy restarts in place, takes its new leaf from the
/// current issuer).
#[derive(Debug, Default)]
pub(super) struct SeenLeaves {
    /// The issuer's certificate fingerprint.
    pub(super) issuer: String,
    /// The first issuer this process saw since it took the lead, in any phase: if it is not
    /// the current one, this process saw the change, and has counted the identity
    /// controller's replicas since.
    pub(super) first_issuer: Option<String>,
    /// While some identity controller replica may not have loaded it; `None` once every one
    /// surely has and the pods seen before have been forgotten.
    pub(super) reloading: Option<Reloading>,
    pub(super) pods: BTreeSet<(String, std::net::SocketAddr)>,
    /// The identity controller pods whose metrics the log said cannot be read, by issuer
    /// expiry.
    pub(super) said_unreadable: BTreeSet<(i64, String)>,
}

/// What a look saw of the identity controller's replicas.
#[derive(Debug, Default)]
pub(super) struct IdentityLook {
    /// How many (see [`Observed::identity_replicas`]).
    pub(super) replicas: usize,
    /// Those running but not ready (`namespace/name`).
    pub(super) unready: Vec<String>,
    /// Each one running or draining, and whether its metrics say it signs with the issuer
    /// (`None`: they could not be read).
    pub(super) on_issuer: Vec<(String, Option<bool>)>,
}

/// While some identity controller replica may not have loaded the issuer.
#[derive(Debug)]
pub(super) struct Reloading {
    /// When the grace is over (on this process's monotonic clock).
    over_at: Instant,
    /// What the status says of it.
    reload: IssuerReload,
    /// Pods whose metrics last said they sign with another issuer, until they show the issuer
    /// or are gone.
    lagging: BTreeSet<String>,
}

impl Reloading {
    /// Takes in a look; whether every replica has surely loaded the issuer now: each one's
    /// metrics show it, or, with none seen on another issuer and none not ready, the grace is
    /// over. The grace counts again from a look that sees no replica not ready after one that
    /// did (`restart`: its new end, and its Unix second for the status).
    fn loaded(&mut self, look: IdentityLook, now: Instant, restart: (Instant, i64)) -> bool {
        let reload = &mut self.reload;
        reload.replicas = reload.replicas.max(look.replicas);
        let present: BTreeSet<&String> = look.on_issuer.iter().map(|(pod, _)| pod).collect();
        self.lagging.retain(|pod| present.contains(pod));
        for (pod, on_issuer) in &look.on_issuer {
            match on_issuer {
                Some(true) => self.lagging.remove(pod),
                Some(false) => self.lagging.insert(pod.clone()),
                None => false,
            };
        }
        reload.on_other_issuer = self.lagging.first().cloned();
        // A replica not ready whose metrics show the issuer has loaded it.
        let shown = |pod: &String| {
            look.on_issuer
                .iter()
                .any(|(p, on)| p == pod && *on == Some(true))
        };
        let unready = look.unready.into_iter().find(|pod| !shown(pod));
        if reload.unready.is_some() && unready.is_none() {
            // A replica on a node cut off keeps its Secret volume as it was: the grace counts
            // once it is back.
            (self.over_at, reload.until) = restart;
        }
        reload.unready = unready;
        // Every replica, a pod not running yet among them (counted by its Deployment, its
        // Secret volume filled before the issuer changed), shows the issuer.
        let all_shown = !look.on_issuer.is_empty()
            && look.on_issuer.len() >= look.replicas
            && look.on_issuer.iter().all(|(_, on)| *on == Some(true));
        self.lagging.is_empty() && (all_shown || (reload.unready.is_none() && now >= self.over_at))
    }
}

impl SeenLeaves {
    /// Starts over when `issuer` is not the one the pods were seen with; once every identity
    /// controller replica has surely loaded it (see [`Reloading::loaded`]), forgets the pods
    /// seen before, once. Returns what may still be loading.
    pub(super) fn for_issuer(
        &mut self,
        issuer: &str,
        (now, unix_now): (Instant, i64),
        grace: Duration,
        look: IdentityLook,
    ) -> Option<IssuerReload> {
        // `unix_now` is the wall clock's second, up to 1 s behind: the time shown is never
        // earlier than the monotonic one.
        let until = unix_now.saturating_add(grace.as_secs_f64().ceil() as i64 + 1);
        if self.issuer != issuer {
            let first_issuer = self.first_issuer.take();
            *self = Self {
                issuer: issuer.to_owned(),
                reloading: Some(Reloading {
                    over_at: now + grace,
                    reload: IssuerReload {
                        replicas: look.replicas,
                        unwitnessed: first_issuer.as_deref().is_none_or(|f| f == issuer),
                        unready: None,
                        on_other_issuer: None,
                        until,
                    },
                    lagging: BTreeSet::new(),
                }),
                pods: BTreeSet::new(),
                first_issuer: first_issuer.or_else(|| Some(issuer.to_owned())),
                // Keyed by the issuer's expiry: what the look that starts over said stays said.
                said_unreadable: std::mem::take(&mut self.said_unreadable),
            };
        }
        let reloading = self.reloading.as_mut()?;
        if !reloading.loaded(look, now, (now + grace, until)) {
            return Some(reloading.reload.clone());
        }
        self.reloading = None;
        self.pods.clear();
        None
    }

    /// Whether the identity controller's replicas are still to be looked at for `issuer`.
    pub(super) fn loading(&self, issuer: &str) -> bool {
        self.issuer != issuer || self.reloading.is_some()
    }

    pub(super) fn seen(&self, pod: &MeshedPod) -> bool {
        pod.addr
            .is_some_and(|addr| self.pods.contains(&(pod.key(), addr)))
    }

    /// Records the pods seen with a leaf from the issuer now, and forgets those gone.
    pub(super) fn record(&mut self, pods: &[MeshedPod]) {
        let now: BTreeSet<(String, std::net::SocketAddr)> = pods
            .iter()
            .filter(|p| p.leaf == Some(Leaf::FromIssuer))
            .filter_map(|p| Some((p.key(), p.addr?)))
            .collect();
        self.pods = now;
    }

    /// Forgets every pod and issuer: the rotation is not in RenewingWorkloadCerts, and
    /// `issuer` is the one seen (if any).
    pub(super) fn clear(&mut self, issuer: Option<&str>) {
        let first_issuer = self.first_issuer.take();
        *self = Self {
            first_issuer: first_issuer.or_else(|| issuer.map(str::to_owned)),
            ..Self::default()
        };
    }
}

/// Probes the live leaf of every pod not yet seen with one from the current issuer: a TLS
/// handshake to `podIP:4191` with its identity as SNI, bounded concurrency, a timeout;
/// unreachable is not converged. Returns what the probes found.
pub(super) async fn probe_leaves(
    config: &ReconcilerConfig,
    observed: &mut Observed,
    seen: &mut SeenLeaves,
    now: Instant,
) -> Vec<Leaf> {
    let Ok(issuer) = &observed.issuer else {
        return Vec::new();
    };
    let Some(issuer_der) = certs::der(&issuer.cert.pem) else {
        return Vec::new();
    };
    let look = if seen.loading(&issuer.cert.fingerprint) {
        identity_look(
            config,
            observed,
            issuer.cert.not_after,
            &mut seen.said_unreadable,
        )
        .await
    } else {
        IdentityLook::default()
    };
    observed.issuer_reload = seen.for_issuer(
        &issuer.cert.fingerprint,
        (now, observed.now),
        config.issuer_reload_grace,
        look,
    );
    let client_config = crate::probe::client_config();
    let mut targets: Vec<(usize, Option<std::net::SocketAddr>, String)> = Vec::new();
    for (i, p) in observed.pods.iter_mut().enumerate() {
        if seen.seen(p) {
            p.leaf = Some(Leaf::FromIssuer);
        } else {
            targets.push((i, p.addr, p.identity.clone()));
        }
    }
    let results: Vec<(usize, Leaf)> = futures::stream::iter(targets)
        .map(|(i, addr, identity)| {
            let (client_config, issuer_der) = (client_config.clone(), issuer_der.clone());
            async move {
                let Some(addr) = addr else {
                    return (i, Leaf::Unreachable("no pod IP yet".to_owned()));
                };
                let leaf = match crate::probe::probe_chain(
                    client_config,
                    addr,
                    &identity,
                    config.probe_timeout,
                )
                .await
                {
                    Ok(chain) => certs::leaf_from(&chain, &issuer_der),
                    Err(e) => Leaf::Unreachable(e.to_string()),
                };
                (i, leaf)
            }
        })
        .buffer_unordered(config.probe_concurrency)
        .collect()
        .await;
    let mut probed = Vec::with_capacity(results.len());
    for (i, leaf) in results {
        probed.push(leaf.clone());
        observed.pods[i].leaf = Some(leaf);
    }
    seen.record(&observed.pods);
    probed
}

/// Whether an identity controller replica whose issuer had `ttl` seconds left at `read_at`
/// (Unix seconds) signs with the issuer expiring at `not_after`; `None` when `ttl` says
/// nothing.
pub(super) fn on_issuer(ttl: f64, read_at: f64, not_after: i64) -> Option<bool> {
    let expiry = read_at + ttl;
    expiry
        .is_finite()
        .then(|| (expiry - not_after as f64).abs() <= ISSUER_EXPIRY_SLACK)
}

/// Reads each identity controller replica's issuer from its metrics (`podIP:9990`,
/// `issuer_cert_ttl_seconds`, Linkerd 2.18 and later): whether each one signs with the issuer
/// expiring at `not_after`. A replica whose metrics cannot be read (an older Linkerd, a
/// NetworkPolicy or a default inbound policy that turns the operator away, no pod IP) says
/// nothing, and the grace alone counts for it; the log says so once per issuer and pod.
async fn identity_look(
    config: &ReconcilerConfig,
    observed: &Observed,
    not_after: i64,
    said: &mut BTreeSet<(i64, String)>,
) -> IdentityLook {
    let pods: Vec<&MeshedPod> = (observed.pods.iter().chain(&observed.draining))
        .filter(|p| p.identity_controller)
        .collect();
    let reads = futures::future::join_all(pods.iter().map(|p| async move {
        let Some(addr) = p.addr else {
            return Err("no pod IP yet".to_owned());
        };
        let addr = std::net::SocketAddr::new(addr.ip(), crate::probe::IDENTITY_ADMIN_PORT);
        let ttl = crate::probe::issuer_ttl_seconds(addr, config.probe_timeout).await;
        let read_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let read_at = read_at.map_or(0.0, |d| d.as_secs_f64());
        ttl.map(|ttl| on_issuer(ttl, read_at, not_after))
            .map_err(|e| e.to_string())
    }))
    .await;
    let mut on_issuer = Vec::with_capacity(pods.len());
    for (p, read) in pods.iter().zip(reads) {
        let read = read.unwrap_or_else(|e| {
            if said.insert((not_after, p.key())) {
                tracing::info!(pod = %p.key(), error = %e, "the identity controller replica's issuer cannot be read from its metrics: the old anchor stays --issuer-reload-grace for it");
            }
            None
        });
        on_issuer.push((p.key(), read));
    }
    IdentityLook {
        replicas: observed.identity_replicas(),
        // In order of name, so that the one the status names does not change from one look to
        // the next.
        unready: (observed.pods.iter())
            .filter(|p| p.identity_controller && !p.ready)
            .map(MeshedPod::key)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        on_issuer,
    }
}
