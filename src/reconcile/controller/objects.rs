//! What the reconciler reads from Kubernetes objects, without I/O: a pod's proxy, anchors,
//! owner and state; a workload's restart markers and rollout.

use super::*;

/// A StatefulSet's `rollingUpdate.partition`, 0 without one: replicas with a lower ordinal
/// are never updated by a template change.
pub(super) fn partition(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| {
            s.update_strategy
                .as_ref()?
                .rolling_update
                .as_ref()?
                .partition
        })
        .unwrap_or(0)
}

/// A pod spec's `linkerd-proxy` container (a sidecar, or a native sidecar), and which list
/// holds it.
pub(super) fn proxy_container(spec: &PodSpec) -> Option<(ProxyList, &Container)> {
    spec.containers
        .iter()
        .map(|c| (ProxyList::Containers, c))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| (ProxyList::InitContainers, c)),
        )
        .find(|(_, c)| c.name == PROXY_CONTAINER)
}

/// A container's env value for `name`: the last definition wins, as in Kubernetes.
pub(super) fn env_value(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .as_ref()?
        .iter()
        .rev()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// Where the proxy's admin server listens: its container's port named `linkerd-admin`, which
/// Linkerd's injector sets from `config.linkerd.io/admin-port`, else Linkerd's default.
fn admin_port(proxy: Option<&Container>) -> u16 {
    proxy
        .and_then(|c| c.ports.as_ref())
        .into_iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|port| *port != 0)
        .unwrap_or(ADMIN_PORT)
}

/// A control-plane pod template's proxy container: which list holds it, and its refresh
/// interval.
pub(super) fn control_plane_proxy(template: Option<&PodTemplateSpec>) -> Option<ControlPlaneProxy> {
    let (list, proxy) = proxy_container(template?.spec.as_ref()?)?;
    Some(ControlPlaneProxy {
        list,
        max_refresh: env_value(proxy, MAX_REFRESH_ENV),
    })
}

pub(super) fn template_annotation(
    template: Option<&PodTemplateSpec>,
    name: &str,
) -> Option<String> {
    template?
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(name)
        .cloned()
}

/// The kinds the operator restarts, alike: their pod template and `kubectl rollout status`.
pub trait Restartable: Resource<DynamicType = ()> + Clone {
    const KIND: &'static str;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn rollout_complete(&self) -> bool;
    /// Pods are still being replaced (see [`RestartMarkers::replacing`]).
    fn rollout_replacing(&self) -> bool;
    /// Why the rollout will not finish by itself, where the workload says so.
    fn rollout_stalled(&self) -> Option<String> {
        None
    }
}

impl Restartable for Deployment {
    const KIND: &'static str = "Deployment";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    /// The controller saw the newest spec, every replica is updated and available, and no old
    /// replica is left.
    fn rollout_complete(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(st) = &self.status else { return false };
        st.observed_generation >= self.metadata.generation
            && st.updated_replicas.unwrap_or(0) == want
            && st.replicas.unwrap_or(0) == want
            && st.available_replicas.unwrap_or(0) == want
    }
    /// The controller has not seen the newest spec, or replicas of an older template are
    /// left, or not every replica runs the newest one.
    fn rollout_replacing(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(st) = &self.status else { return true };
        st.observed_generation < self.metadata.generation
            || st.updated_replicas.unwrap_or(0) < want
            || st.replicas.unwrap_or(0) > st.updated_replicas.unwrap_or(0)
    }
    /// `Progressing=False`: the Deployment controller gave up waiting for the rollout after
    /// `progressDeadlineSeconds` (reason `ProgressDeadlineExceeded`).
    fn rollout_stalled(&self) -> Option<String> {
        let conditions = self.status.as_ref()?.conditions.as_deref()?;
        let c = conditions
            .iter()
            .find(|c| c.type_ == "Progressing" && c.status == "False")?;
        Some(reason_and_message(
            c.reason.as_deref(),
            c.message.as_deref(),
            "Progressing=False",
        ))
    }
}

impl Restartable for StatefulSet {
    const KIND: &'static str = "StatefulSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    /// Every replica updated and ready, on one revision; with a `rollingUpdate.partition`,
    /// every replica the partition lets roll (the others are never updated, so waiting for
    /// them would wait forever; their pods are counted, and named, as not converged).
    fn rollout_complete(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let partition = partition(self).clamp(0, want);
        let Some(st) = &self.status else { return false };
        st.observed_generation >= self.metadata.generation
            && st.updated_replicas.unwrap_or(0) >= want - partition
            && st.ready_replicas.unwrap_or(0) == want
            && (partition > 0 || st.current_revision == st.update_revision)
    }
    /// The controller has not seen the newest spec, or replicas above the partition still run
    /// an older revision.
    fn rollout_replacing(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let partition = partition(self).clamp(0, want);
        let Some(st) = &self.status else { return true };
        st.observed_generation < self.metadata.generation
            || st.updated_replicas.unwrap_or(0) < want - partition
            || (partition == 0 && st.current_revision != st.update_revision)
    }
}

impl Restartable for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    /// Every scheduled pod updated and available.
    fn rollout_complete(&self) -> bool {
        let Some(st) = &self.status else { return false };
        st.observed_generation >= self.metadata.generation
            && st.updated_number_scheduled.unwrap_or(0) == st.desired_number_scheduled
            && st.number_available.unwrap_or(0) == st.desired_number_scheduled
    }
    /// The controller has not seen the newest spec, or nodes still run an older pod.
    fn rollout_replacing(&self) -> bool {
        let Some(st) = &self.status else { return true };
        st.observed_generation < self.metadata.generation
            || st.updated_number_scheduled.unwrap_or(0) < st.desired_number_scheduled
    }
}

/// The operator's restart markers, and the rollout's state, of each workload of one kind that
/// has any.
pub(super) fn markers_of<K: Restartable>(
    store: &Store<K>,
) -> impl Iterator<Item = (Workload, RestartMarkers)> {
    store.state().into_iter().filter_map(|w| {
        let bundle = template_annotation(w.template(), RESTART_ANNOTATION);
        let issuer = template_annotation(w.template(), LEAF_RESTART_ANNOTATION);
        (bundle.is_some() || issuer.is_some()).then(|| {
            (
                Workload {
                    kind: K::KIND.to_owned(),
                    namespace: w.namespace().unwrap_or_default(),
                    name: w.name_any(),
                },
                RestartMarkers {
                    bundle,
                    issuer,
                    rollout_complete: w.rollout_complete(),
                    replacing: w.rollout_replacing(),
                    stalled: w.rollout_stalled(),
                    not_starting: None,
                },
            )
        })
    })
}

/// Adds to `into` the workloads of `store` whose pod template carries the proxy with literal
/// trust anchors (`linkerd inject`), with the anchors' fingerprints; the control plane's own
/// Deployments, which read the bundle from its ConfigMap and are restarted onto it, are left
/// out.
pub(super) fn baked_anchors_of<K: Restartable>(
    store: &Store<K>,
    config: &ReconcilerConfig,
    cache: &mut AnchorTexts,
    into: &mut BTreeMap<Workload, Option<BTreeSet<String>>>,
) {
    for w in store.state() {
        let control_plane = w.namespace().as_deref() == Some(config.linkerd_namespace.as_str())
            && w.labels().get(CONTROL_PLANE_NS_LABEL) == Some(&config.linkerd_namespace);
        let text = w
            .template()
            .and_then(|t| t.spec.as_ref())
            .and_then(proxy_container)
            .and_then(|(_, proxy)| env_value(proxy, TRUST_ANCHORS_ENV));
        if let (false, Some(text)) = (control_plane, text) {
            let workload = Workload {
                kind: K::KIND.to_owned(),
                namespace: w.namespace().unwrap_or_default(),
                name: w.name_any(),
            };
            into.insert(workload, cache.fingerprints(text));
        }
    }
}

/// The trust anchors in proxies' literal trust-anchors env, parsed once per distinct text in a
/// look (`None` for a text that does not parse).
#[derive(Default)]
pub(super) struct AnchorTexts(pub(super) BTreeMap<String, Option<Vec<Cert>>>);

impl AnchorTexts {
    /// The fingerprints of the anchors in `text` (`None` when they do not parse).
    pub(super) fn fingerprints(&mut self, text: String) -> Option<BTreeSet<String>> {
        let certs = (self.0.entry(text)).or_insert_with_key(|text| {
            certs::parse_bundle("proxy env", TRUST_ANCHORS_ENV, text).ok()
        });
        let certs = certs.as_ref()?;
        Some(certs.iter().map(|c| c.fingerprint.clone()).collect())
    }

    /// Every anchor read, each once.
    pub(super) fn certs(self) -> Vec<Cert> {
        let mut seen = BTreeSet::new();
        (self.0.into_values().flatten().flatten())
            .filter(|c| seen.insert(c.fingerprint.clone()))
            .collect()
    }
}

pub(super) fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref()?.phase.as_deref()
}

/// Its proxy runs: the pod is Running, or Pending with its proxy, a native sidecar, started
/// ahead of the init containers after it.
pub(super) fn live(p: &Pod) -> bool {
    match phase(p) {
        Some("Running") => true,
        Some("Pending") => p
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .is_some_and(|statuses| {
                statuses
                    .iter()
                    .any(|c| c.name == PROXY_CONTAINER && c.started == Some(true))
            }),
        _ => false,
    }
}

/// The workload whose rollout replaces `p`: its controller, a Deployment through its
/// ReplicaSet (named `<deployment>-<pod-template-hash>`).
pub(super) fn controller_of(p: &Pod) -> Result<Workload, Unfixable> {
    let namespace = p.namespace().unwrap_or_default();
    let Some(o) = p
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return Err(Unfixable::BarePod);
    };
    match o.kind.as_str() {
        "ReplicaSet" => {
            let hash = p.labels().get("pod-template-hash");
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(d) => Ok(Workload {
                    kind: "Deployment".to_owned(),
                    namespace,
                    name: d.to_owned(),
                }),
                None => Err(Unfixable::Owner(format!("ReplicaSet {}", o.name))),
            }
        }
        "StatefulSet" | "DaemonSet" => Ok(Workload {
            kind: o.kind.clone(),
            namespace,
            name: o.name.clone(),
        }),
        other => Err(Unfixable::Owner(format!("{other} {}", o.name))),
    }
}

/// Why `p` is not starting, in the scheduler's or the kubelet's words: no node will take it
/// (`PodScheduled=False`, reason `Unschedulable`), or a container (init containers first, as
/// they run) waits in a back-off or on an error that does not clear by waiting: a crash loop,
/// an image that cannot be pulled, a configuration that cannot be mounted. Waiting for an
/// image or for the container to be created is starting, not stuck.
pub(super) fn not_starting(p: &Pod) -> Option<String> {
    /// The kubelet's waiting reasons that a rollout does not get past by itself.
    const STUCK: [&str; 7] = [
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    ];
    let status = p.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Some(reason_and_message(
            c.reason.as_deref(),
            c.message.as_deref(),
            "Unschedulable",
        ));
    }
    let containers = status.init_container_statuses.iter().flatten();
    containers
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            STUCK.contains(&reason).then(|| {
                let why = reason_and_message(Some(reason), waiting.message.as_deref(), reason);
                format!("container {}: {why}", c.name)
            })
        })
}

/// Marks each rollout in progress with one of its new pods (those carrying the template's
/// restart markers: the old ones are being replaced, whatever ails them) that is not starting
/// ([`not_starting`]), so that a rollout Kubernetes reports no stall for still has a cause to
/// read.
pub(super) fn mark_pods_not_starting<'a>(
    markers: &mut BTreeMap<Workload, RestartMarkers>,
    pods: impl IntoIterator<Item = &'a Pod>,
) {
    if markers.values().all(|m| m.rollout_complete) {
        return;
    }
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // Most pods are starting or running: the cheap test first.
        let Some(why) = not_starting(p) else {
            continue;
        };
        let Ok(workload) = controller_of(p) else {
            continue;
        };
        let Some(m) = markers.get_mut(&workload) else {
            continue;
        };
        let annotation = |name| p.annotations().get(name);
        let new = annotation(RESTART_ANNOTATION) == m.bundle.as_ref()
            && annotation(LEAF_RESTART_ANNOTATION) == m.issuer.as_ref();
        if new && !m.rollout_complete && m.not_starting.is_none() {
            let name = format!("{}/{}", workload.namespace, p.name_any());
            m.not_starting = Some(format!("pod {name} is not starting: {why}"));
        }
    }
}

/// Labels of Linkerd's identity controller, its Deployment's and its pods'.
pub(super) fn is_identity_controller(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get(CONTROL_PLANE_COMPONENT_LABEL)
        .map(String::as_str)
        == Some("identity")
}

pub(super) fn meshed_pod(
    config: &ReconcilerConfig,
    p: &Pod,
    cache: &mut AnchorTexts,
    wont_roll: &dyn Fn(&Workload, &Pod) -> Option<Unfixable>,
) -> MeshedPod {
    let spec = p.spec.as_ref();
    let proxy = spec.and_then(proxy_container).map(|(_, c)| c);
    let anchors_text = proxy.and_then(|c| env_value(c, TRUST_ANCHORS_ENV));
    let anchors = anchors_text.and_then(|text| cache.fingerprints(text));
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let namespace = p.namespace().unwrap_or_default();
    let created_by = p.annotations().get("linkerd.io/created-by");
    let controller = controller_of(p);
    let control_plane = p.labels().contains_key(CONTROL_PLANE_COMPONENT_LABEL);
    let control_plane_deployment = (controller.as_ref().ok())
        .filter(|w| control_plane && w.kind == "Deployment")
        .filter(|w| w.namespace == config.linkerd_namespace)
        .map(|w| w.name.clone());
    let owner = if created_by.is_some_and(|c| c.starts_with("linkerd/cli")) {
        Err(Unfixable::ManuallyInjected)
    } else {
        controller
    };
    // A workload whose template change would roll nothing cannot be restarted by one.
    let owner = owner.and_then(|w| wont_roll(&w, p).map_or(Ok(w), Err));
    MeshedPod {
        namespace,
        name: p.name_any(),
        control_plane,
        control_plane_deployment,
        identity_controller: is_identity_controller(p.labels()),
        ready,
        anchors,
        restarted_for: p.annotations().get(RESTART_ANNOTATION).cloned(),
        max_refresh: proxy
            .and_then(|c| env_value(c, MAX_REFRESH_ENV))
            .and_then(|v| crate::duration::parse(&v).ok()),
        owner,
        leaf: None,
        addr: p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| std::net::SocketAddr::new(ip, admin_port(proxy))),
        identity: format!(
            "{}.{}.serviceaccount.identity.{}.{}",
            spec.and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default"),
            p.namespace().unwrap_or_default(),
            config.linkerd_namespace,
            config.trust_domain
        ),
    }
}
