//! kubelet (and scheduler) stand-in.
//!
//! Registers fake Nodes, binds every unscheduled pod (but those held by [`HOLD_ANNOTATION`]) to one of them, and
//! "runs" bound pods: after a start delay it resolves each container's environment as the kubelet
//! does (literal values with `$(VAR)` expansion, `fieldRef`, `configMapKeyRef`, `secretKeyRef`,
//! read at container start), starts the pod's simulated proxy and, for `linkerd-identity` pods, an
//! identity controller, gives the pod a unique `127.x.y.z` address and marks it Running, then
//! Ready once its proxy holds a leaf. A pod being deleted keeps serving for the stop delay, then
//! its processes stop and the pod object is removed, so Deployments roll through the real
//! controller-manager exactly as on a cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, Node, ObjectReference, Pod, Secret,
};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::identity::{IdentityConfig, IdentityInstance, IdentityService};
use super::proxy::{PodRef, Proxy, ProxyEnv};

/// Container name of the proxy, Linkerd's.
pub const PROXY_CONTAINER: &str = "linkerd-proxy";

/// A pod with this annotation is left Pending, unscheduled, until the annotation is removed:
/// what a scheduling gate does on Kubernetes 1.26 and later (the testbed's API server, 1.20, has
/// none). Tests use it for a pod created, and injected, long before it starts.
pub const HOLD_ANNOTATION: &str = "sim.trust.linkerd.io/hold";

/// Label that marks control-plane pods and names their component.
pub const COMPONENT_LABEL: &str = "linkerd.io/control-plane-component";

/// Env of the identity container holding the trust anchors (resolved from the bundle
/// ConfigMap at container start, as Linkerd's chart does).
pub const ENV_IDENTITY_TRUST_ANCHORS: &str = "LINKERD_IDENTITY_TRUST_ANCHORS_PEM";

/// How the kubelet stand-in behaves.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub nodes: usize,
    /// From binding to containers started (image pull and container start on a real node).
    pub start_delay: Duration,
    /// From deletion to the pod being gone: it keeps serving meanwhile.
    pub stop_delay: Duration,
    /// Before a failed container start is tried again (CrashLoopBackOff, scaled down).
    pub crash_backoff: Duration,
    /// Proxy refresh bounds when the pod's env does not set them.
    pub default_refresh: (Duration, Duration),
    pub identity: IdentityConfig,
}

/// The processes of one running pod.
#[derive(Default)]
struct Running {
    proxy: Option<Arc<Proxy>>,
    identity: bool,
    stopping: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What the kubelet knows; shared with the traffic generator and tests.
pub struct Kubelet {
    client: Client,
    config: KubeletConfig,
    identity: Arc<IdentityService>,
    pods: Mutex<HashMap<String, Running>>,
    binding: Mutex<HashSet<String>>,
    next_node: AtomicU32,
    node_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("pod {pod}, container {container}: {message}")]
    Env {
        pod: String,
        container: String,
        message: String,
    },
    #[error("pod {pod}: {message}")]
    Start { pod: String, message: String },
    /// The pod's address was taken by another process between its pick and the proxy's bind.
    #[error("pod {pod}: {message}")]
    AddressTaken { pod: String, message: String },
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

impl Kubelet {
    pub fn new(client: Client, config: KubeletConfig, identity: Arc<IdentityService>) -> Arc<Self> {
        let node_names = (0..config.nodes.max(1))
            .map(|i| format!("sim-node-{i}"))
            .collect();
        Arc::new(Self {
            client,
            config,
            identity,
            pods: Mutex::new(HashMap::new()),
            binding: Mutex::new(HashSet::new()),
            next_node: AtomicU32::new(0),
            node_names,
        })
    }

    /// The identity service this kubelet's proxies ask for leaves.
    pub fn identity(&self) -> &IdentityService {
        &self.identity
    }

    /// Registers the Nodes (Ready), then runs until dropped.
    pub async fn run(self: Arc<Self>) {
        if let Err(e) = self.register_nodes().await {
            tracing::error!(error = %e, "kubelet stand-in: registering nodes");
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut stream = watcher::watcher(pods, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    self.clone().observe(pod)
                }
                Ok(watcher::Event::Delete(pod)) => self.gone(&pod.uid().unwrap_or_default()),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "kubelet stand-in: pod watch"),
            }
        }
    }

    /// The proxies that can take traffic now: running, holding a leaf.
    pub fn ready_proxies(&self) -> Vec<Arc<Proxy>> {
        let pods = self.pods.lock().expect("not poisoned");
        let mut proxies: Vec<_> = pods
            .values()
            .filter_map(|r| r.proxy.clone())
            .filter(|p| p.is_ready())
            .collect();
        proxies.sort_by(|a, b| a.pod.cmp(&b.pod));
        proxies
    }

    /// Every running proxy, ready or not.
    pub fn proxies(&self) -> Vec<Arc<Proxy>> {
        let pods = self.pods.lock().expect("not poisoned");
        pods.values().filter_map(|r| r.proxy.clone()).collect()
    }

    async fn register_nodes(&self) -> Result<(), KubeletError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for name in &self.node_names {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([
                        ("kubernetes.io/hostname".to_owned(), name.clone()),
                        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                        (
                            "node.trust.linkerd.io/simulated".to_owned(),
                            "true".to_owned(),
                        ),
                    ])),
                    ..Default::default()
                },
                ..Default::default()
            };
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(source) => {
                    return Err(KubeletError::Kube {
                        action: format!("creating Node {name}"),
                        source,
                    });
                }
            }
            let now = super::certmanager::rfc3339(super::pki::now());
            nodes
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                        "message": "simulated kubelet is posting ready status",
                                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
                        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                      {"type": "Hostname", "address": name}],
                        "nodeInfo": {"kubeletVersion": "sim", "kubeProxyVersion": "sim",
                                     "operatingSystem": "linux", "architecture": "amd64",
                                     "containerRuntimeVersion": "sim://1", "kernelVersion": "",
                                     "osImage": "simulated", "machineID": "", "systemUUID": "",
                                     "bootID": ""}
                    }})),
                )
                .await
                .map_err(|source| KubeletError::Kube {
                    action: format!("marking Node {name} Ready"),
                    source,
                })?;
        }
        Ok(())
    }

    fn observe(self: Arc<Self>, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let held = pod.annotations().contains_key(HOLD_ANNOTATION);
        match node {
            // Bind each pending pod once; the API server removes unbound pods on deletion by
            // itself.
            None if !deleting
                && !held
                && self
                    .binding
                    .lock()
                    .expect("not poisoned")
                    .insert(uid.clone()) =>
            {
                tokio::spawn(async move { self.bind(pod).await });
            }
            None => {}
            Some(node) if self.node_names.contains(&node) => {
                let mut pods = self.pods.lock().expect("not poisoned");
                match (pods.get_mut(&uid), deleting) {
                    (None, false) => {
                        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                            // Running before we (re)started: its processes are gone; the pod
                            // object is replaced by its controller after we delete it.
                            let this = self.clone();
                            tokio::spawn(async move { this.force_delete(&pod).await });
                            return;
                        }
                        let this = self.clone();
                        let task = tokio::spawn(async move { this.start(pod).await });
                        pods.insert(
                            uid,
                            Running {
                                task: Some(task),
                                ..Default::default()
                            },
                        );
                    }
                    (Some(running), true) if !running.stopping => {
                        running.stopping = true;
                        let this = self.clone();
                        tokio::spawn(async move { this.stop(pod).await });
                    }
                    (None, true) => {
                        let this = self.clone();
                        tokio::spawn(async move { this.force_delete(&pod).await });
                    }
                    _ => {}
                }
            }
            Some(_) => {}
        }
    }

    async fn bind(&self, pod: Pod) {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let n = self.next_node.fetch_add(1, Ordering::Relaxed) as usize % self.node_names.len();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.node_names[n].clone()),
                ..Default::default()
            },
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let result: Result<serde_json::Value, _> = pods
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await;
        if let Err(e) = result {
            tracing::debug!(pod = %format!("{namespace}/{name}"), error = %e, "kubelet stand-in: bind");
        }
        self.binding.lock().expect("not poisoned").remove(&uid);
    }

    fn allocate_ip(&self) -> Ipv4Addr {
        allocate_pod_ip()
    }

    async fn start(self: Arc<Self>, pod: Pod) {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let pod_ref = PodRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
        };
        tokio::time::sleep(self.config.start_delay).await;
        let mut ip = self.allocate_ip();
        let started_at = super::certmanager::rfc3339(super::pki::now());
        let mut restarts = 0;
        let proxy = loop {
            match self.start_containers(&pod, &pod_ref, ip).await {
                Ok(proxy) => break proxy,
                // Not the pod's fault: it gets another address, at once.
                Err(e @ KubeletError::AddressTaken { .. }) => {
                    tracing::warn!(pod = %pod_ref, error = %e, "kubelet stand-in: address taken; picking another");
                    ip = self.allocate_ip();
                }
                Err(e) => {
                    restarts += 1;
                    tracing::warn!(pod = %pod_ref, error = %e, restarts, "kubelet stand-in: container start failed; backing off");
                    self.patch_status(&pod, ip, &started_at, false, restarts, Some(&e.to_string()))
                        .await;
                    tokio::time::sleep(self.config.crash_backoff).await;
                }
            }
        };
        if let Some(p) = &proxy
            && let Some(r) = self.pods.lock().expect("not poisoned").get_mut(&uid)
        {
            r.proxy = Some(p.clone());
        }
        self.patch_status(&pod, ip, &started_at, proxy.is_none(), restarts, None)
            .await;
        if let Some(p) = proxy {
            p.wait_ready().await;
            self.patch_status(&pod, ip, &started_at, true, restarts, None)
                .await;
        }
    }

    /// Resolves env and starts the pod's processes; an error is a failed container start.
    async fn start_containers(
        &self,
        pod: &Pod,
        pod_ref: &PodRef,
        ip: Ipv4Addr,
    ) -> Result<Option<Arc<Proxy>>, KubeletError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter());
        let mut proxy_env = None;
        let mut identity_anchors = None;
        for container in containers {
            let env = self.resolve_env(pod, container, ip).await?;
            if container.name == PROXY_CONTAINER {
                proxy_env = Some(env.clone());
            }
            if let Some((_, v)) = env
                .iter()
                .rev()
                .find(|(n, _)| n == ENV_IDENTITY_TRUST_ANCHORS)
            {
                identity_anchors = Some(v.clone());
            }
        }
        let is_identity = pod.labels().get(COMPONENT_LABEL).map(String::as_str) == Some("identity");
        if is_identity {
            let anchors = identity_anchors.ok_or_else(|| KubeletError::Start {
                pod: pod_ref.to_string(),
                message: format!("identity container has no {ENV_IDENTITY_TRUST_ANCHORS}"),
            })?;
            let instance = IdentityInstance::start(
                self.client.clone(),
                &pod_ref.uid,
                &pod_ref.name,
                ip,
                &anchors,
                self.config.identity.clone(),
            )
            .await
            .map_err(|e| KubeletError::Start {
                pod: pod_ref.to_string(),
                message: e.to_string(),
            })?;
            self.identity.register(instance);
            if let Some(r) = self
                .pods
                .lock()
                .expect("not poisoned")
                .get_mut(&pod_ref.uid)
            {
                r.identity = true;
            }
        }
        let Some(env) = proxy_env else {
            return Ok(None);
        };
        let env = ProxyEnv::from_env(&pod_ref.to_string(), &env, self.config.default_refresh)
            .map_err(|e| KubeletError::Start {
                pod: pod_ref.to_string(),
                message: e.to_string(),
            })?;
        let proxy = Proxy::start(pod_ref.clone(), ip, env, self.identity.clone())
            .await
            .map_err(|e| {
                let (pod, message) = (pod_ref.to_string(), e.to_string());
                match e {
                    super::proxy::ProxyError::Bind { source, .. }
                        if source.kind() == std::io::ErrorKind::AddrInUse =>
                    {
                        KubeletError::AddressTaken { pod, message }
                    }
                    _ => KubeletError::Start { pod, message },
                }
            })?;
        Ok(Some(proxy))
    }

    /// A container's environment, resolved now, in order.
    async fn resolve_env(
        &self,
        pod: &Pod,
        container: &Container,
        ip: Ipv4Addr,
    ) -> Result<Vec<(String, String)>, KubeletError> {
        let namespace = pod.namespace().unwrap_or_default();
        let env_err = |message: String| KubeletError::Env {
            pod: format!("{namespace}/{}", pod.name_any()),
            container: container.name.clone(),
            message,
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for var in container.env.iter().flatten() {
            let value = if let Some(from) = &var.value_from {
                if let Some(f) = &from.field_ref {
                    let spec = pod.spec.as_ref();
                    match f.field_path.as_str() {
                        "metadata.name" => pod.name_any(),
                        "metadata.namespace" => namespace.clone(),
                        "metadata.uid" => pod.uid().unwrap_or_default(),
                        "spec.serviceAccountName" => spec
                            .and_then(|s| s.service_account_name.clone())
                            .unwrap_or_else(|| "default".to_owned()),
                        "spec.nodeName" => {
                            spec.and_then(|s| s.node_name.clone()).unwrap_or_default()
                        }
                        "status.podIP" => ip.to_string(),
                        other => {
                            return Err(env_err(format!(
                                "env {}: fieldRef {other} is not simulated",
                                var.name
                            )));
                        }
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
                    let cm = api.get_opt(&r.name).await.map_err(|e| {
                        env_err(format!(
                            "env {}: reading ConfigMap {}: {e}",
                            var.name, r.name
                        ))
                    })?;
                    match cm.and_then(|c| c.data).and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(env_err(format!(
                                "env {}: key {} of ConfigMap {namespace}/{} not found",
                                var.name, r.key, r.name
                            )));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                    let s = api.get_opt(&r.name).await.map_err(|e| {
                        env_err(format!("env {}: reading Secret {}: {e}", var.name, r.name))
                    })?;
                    match s
                        .and_then(|s| s.data)
                        .and_then(|d| d.get(&r.key).cloned())
                        .and_then(|v| String::from_utf8(v.0).ok())
                    {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(env_err(format!(
                                "env {}: key {} of Secret {namespace}/{} not found",
                                var.name, r.key, r.name
                            )));
                        }
                    }
                } else {
                    return Err(env_err(format!(
                        "env {}: this valueFrom is not simulated",
                        var.name
                    )));
                }
            } else {
                expand(var.value.as_deref().unwrap_or_default(), &out)
            };
            out.push((var.name.clone(), value));
        }
        Ok(out)
    }

    async fn patch_status(
        &self,
        pod: &Pod,
        ip: Ipv4Addr,
        started_at: &str,
        ready: bool,
        restarts: i32,
        waiting: Option<&str>,
    ) {
        let namespace = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let now = super::certmanager::rfc3339(super::pki::now());
        let flag = |b: bool| if b { "True" } else { "False" };
        let spec = pod.spec.clone().unwrap_or_default();
        let statuses: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                let state = match waiting {
                    Some(message) => {
                        json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}})
                    }
                    None => json!({"running": {"startedAt": started_at}}),
                };
                json!({"name": c.name, "image": c.image.clone().unwrap_or_default(),
                       "imageID": "", "ready": ready, "started": waiting.is_none(),
                       "restartCount": restarts, "state": state})
            })
            .collect();
        let patch = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": started_at,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": started_at},
                {"type": "Ready", "status": flag(ready), "lastTransitionTime": now},
                {"type": "ContainersReady", "status": flag(ready), "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started_at}
            ],
            "containerStatuses": statuses
        }});
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            tracing::debug!(pod = %format!("{namespace}/{}", pod.name_any()), error = %e, "kubelet stand-in: status");
        }
    }

    async fn stop(&self, pod: Pod) {
        // The old pod keeps serving until it is gone.
        tokio::time::sleep(self.config.stop_delay).await;
        self.gone(&pod.uid().unwrap_or_default());
        self.force_delete(&pod).await;
    }

    /// Stops the pod's processes (idempotent).
    fn gone(&self, uid: &str) {
        let running = self.pods.lock().expect("not poisoned").remove(uid);
        if let Some(r) = running {
            if let Some(t) = r.task {
                t.abort();
            }
            if let Some(p) = r.proxy {
                p.stop();
            }
            if r.identity {
                self.identity.unregister(uid);
            }
        }
    }

    async fn force_delete(&self, pod: &Pod) {
        let namespace = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api.delete(&pod.name_any(), &params).await {
            tracing::debug!(pod = %format!("{namespace}/{}", pod.name_any()), error = %e, "kubelet stand-in: delete");
        }
    }
}

/// Kubernetes' `$(VAR)` expansion against the variables defined before; `$$` escapes; an
/// unknown reference is left as written.
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Pod addresses: one counter for every mesh in the process (parallel tests run several), never
/// reused, so a stale connection can never reach a new pod. Each process starts in its own
/// block of 127.x.0.0/16 chosen by its pid, so a demo and a test run side by side do not meet
/// either; an address whose proxy port is still taken (by another process) is skipped.
fn allocate_pod_ip() -> Ipv4Addr {
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    /// 127.10.0.0 up to 127.209.255.255: 200 blocks of 254 x 254 addresses.
    const BLOCKS: u32 = 200;
    const PER_BLOCK: u32 = 254 * 254;
    let next = NEXT.get_or_init(|| AtomicU32::new((std::process::id() % BLOCKS) * PER_BLOCK));
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed) % (BLOCKS * PER_BLOCK);
        let ip = Ipv4Addr::new(
            127,
            10 + (n / PER_BLOCK) as u8,
            ((n / 254) % 254) as u8,
            (n % 254 + 1) as u8,
        );
        if std::net::TcpListener::bind((ip, super::proxy::ADMIN_PORT)).is_ok() {
            return ip;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_like_kubernetes() {
        let defined = vec![
            ("_pod_sa".to_owned(), "web".to_owned()),
            ("_pod_ns".to_owned(), "shop".to_owned()),
        ];
        assert_eq!(
            expand(
                "$(_pod_sa).$(_pod_ns).serviceaccount.identity.linkerd.cluster.local",
                &defined
            ),
            "web.shop.serviceaccount.identity.linkerd.cluster.local"
        );
        assert_eq!(
            expand("$$(_pod_sa) $(missing) $", &defined),
            "$(_pod_sa) $(missing) $"
        );
    }
}
