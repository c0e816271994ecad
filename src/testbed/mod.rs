//! A real Kubernetes control plane on this machine: etcd + kube-apiserver +
//! kube-controller-manager on free loopback ports in a temporary folder (see TESTBED.md).
//!
//! Used by the integration tests and the demo. No kubelet and no scheduler: the simulator plays
//! the kubelet. Every process is killed when the [`ControlPlane`] is dropped (also on panic), and
//! each is started under `setpriv --pdeathsig KILL` so that it dies with the thread that started
//! it even if this process is killed outright.

mod pki;
mod process;
mod provision;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

pub use provision::{Binaries, provision};

pub use process::{Managed, dying_with_this_thread, send_signal};

/// How long kube-apiserver may take to report `/readyz` ok. Measured here: about 6 s on 2 idle
/// cores; a loaded CI machine running two control planes at once needs several times that.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the controller-manager may take to create the `default` ServiceAccount (and, on
/// v1.20, its token Secret, without which pods are refused).
const CONTROLLER_MANAGER_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Set to keep the control plane's folder (logs, certificates, etcd data) after it stops.
pub const KEEP_ENV: &str = "TRO_KEEP_TESTBED";

/// How often readiness is polled while starting: short, since a start takes seconds.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The static token of the admin user (group `system:masters`). Throwaway: the control plane
/// listens on loopback only and lives as long as one test.
const ADMIN_TOKEN: &str = "admintoken";

/// Errors starting or talking to the local control plane. Each names the component and, where a
/// process failed, ends with the tail of its log.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("provisioning the control-plane binaries failed: {0}")]
    Provision(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the control plane's certificates failed: {0}")]
    Certificates(#[from] rcgen::Error),
    #[error("{component} exited early ({status}); last lines of {log}:\n{tail}")]
    Exited {
        component: &'static str,
        status: String,
        log: String,
        tail: String,
    },
    #[error(
        "{component} was not ready after {waited:?}; last error: {last_error}; last lines of {log}:\n{tail}"
    )]
    NotReady {
        component: &'static str,
        waited: Duration,
        last_error: String,
        log: String,
        tail: String,
    },
    #[error("building a Kubernetes client from {path}: {message}")]
    Client { path: String, message: String },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let context = context.into();
    move |source| TestbedError::Io { context, source }
}

/// A running local control plane.
pub struct ControlPlane {
    // Field order is drop order: the processes are stopped before their folder is removed.
    processes: Vec<Managed>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    server: String,
    client: Client,
    binaries: Binaries,
}

/// How often a control-plane start that lost a port race is tried.
const START_ATTEMPTS: u32 = 3;

/// Optional extras of a control plane.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Extra users (static tokens, group `system:masters`) whose every request the API server
    /// writes to its audit log, one line each: how the demo and the rotation benchmark count the
    /// operator's API requests without instrumenting it. Nobody else's requests are logged, so
    /// the cost is the audited users' traffic only.
    pub audited_users: Vec<String>,
    /// Extra users (static tokens) in no group: RBAC alone decides what they may do. Their
    /// requests are audited too, those refused included.
    pub plain_users: Vec<String>,
}

impl ControlPlane {
    /// Provisions the binaries if needed and starts etcd, kube-apiserver and
    /// kube-controller-manager. Returns once the API server is ready and the controller-manager
    /// has created the `default` ServiceAccount.
    pub async fn start() -> Result<Self, TestbedError> {
        Self::start_with_options(Options::default()).await
    }

    /// As [`ControlPlane::start`], with [`Options`].
    pub async fn start_with_options(options: Options) -> Result<Self, TestbedError> {
        let binaries = tokio::task::spawn_blocking(provision)
            .await
            .map_err(|e| TestbedError::Provision(e.to_string()))??;
        // Ports are picked free and then handed to the components, so another listener can take
        // one in between: a start that lost that race is simply tried again.
        let mut attempt = 1;
        loop {
            match Self::start_from(binaries.clone(), &options).await {
                Err(TestbedError::Exited { tail, .. })
                    if attempt < START_ATTEMPTS && tail.contains("address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Starts a control plane from the given binaries.
    pub async fn start_with(binaries: Binaries) -> Result<Self, TestbedError> {
        Self::start_from(binaries, &Options::default()).await
    }

    async fn start_from(binaries: Binaries, options: &Options) -> Result<Self, TestbedError> {
        let dir = tempfile::Builder::new()
            .prefix("tro-control-plane-")
            .tempdir()
            .map_err(io_err("creating the control plane's temporary folder"))?;
        let root = dir.path().to_path_buf();
        let pki = pki::write(&root)?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let apiserver_port = free_port()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");

        let tokens = root.join("tokens.csv");
        let mut token_lines = format!("{ADMIN_TOKEN},admin,admin,system:masters\n");
        for user in &options.audited_users {
            token_lines.push_str(&format!(
                "{},{user},{user},system:masters\n",
                user_token(user)
            ));
        }
        for user in &options.plain_users {
            token_lines.push_str(&format!("{},{user},{user}\n", user_token(user)));
        }
        std::fs::write(&tokens, token_lines)
            .map_err(io_err(format!("writing {}", tokens.display())))?;
        let mut audit_args = Vec::new();
        let audited: Vec<String> = [&options.audited_users, &options.plain_users]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if !audited.is_empty() {
            let policy = root.join("audit-policy.yaml");
            std::fs::write(&policy, audit_policy(&audited))
                .map_err(io_err(format!("writing {}", policy.display())))?;
            audit_args.push(format!("--audit-policy-file={}", policy.display()));
            audit_args.push(format!(
                "--audit-log-path={}",
                root.join(AUDIT_LOG).display()
            ));
        }
        let kubeconfig = root.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &pki.ca_cert))
            .map_err(io_err(format!("writing {}", kubeconfig.display())))?;

        let mut processes = Vec::new();
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        processes.push(Managed::spawn(
            "etcd",
            &binaries.etcd,
            &[
                format!("--data-dir={}", root.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                // Tests create and delete objects quickly; unsynced writes are fine for a
                // throwaway store and spare the shared disk.
                "--unsafe-no-fsync".to_owned(),
            ],
            &root,
        )?);
        processes.push(Managed::spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={apiserver_port}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                format!("--cert-dir={}", root.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                format!("--token-auth-file={}", tokens.display()),
                format!("--service-account-key-file={}", pki.sa_pub.display()),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.sa_key.display()
                ),
                "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
                "--authorization-mode=RBAC".to_owned(),
                "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
                "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook"
                    .to_owned(),
                "--allow-privileged=true".to_owned(),
            ]
            .into_iter()
            .chain(audit_args)
            .collect::<Vec<_>>(),
            &root,
        )?);

        let client = client_from_kubeconfig(&kubeconfig).await?;
        let mut cp = ControlPlane {
            processes,
            dir,
            kubeconfig,
            server,
            client,
            binaries,
        };
        cp.wait_apiserver_ready().await?;

        let mut args = vec![
            format!("--kubeconfig={}", cp.kubeconfig.display()),
            format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ),
            format!("--root-ca-file={}", pki.ca_cert.display()),
            // No kubelet, so no node CIDRs and no node health to manage.
            "--controllers=*,-nodeipam,-nodelifecycle".to_owned(),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            "--secure-port=0".to_owned(),
            // Pods come and go in tests; collect finished ReplicaSets' pods promptly.
            "--concurrent-deployment-syncs=10".to_owned(),
            "--concurrent-replicaset-syncs=10".to_owned(),
        ];
        if cp.binaries.has_insecure_port_flag() {
            args.push("--port=0".to_owned());
        }
        cp.processes.push(Managed::spawn(
            "kube-controller-manager",
            &cp.binaries.kube_controller_manager,
            &args,
            cp.dir.path(),
        )?);
        cp.wait_controller_manager_ready().await?;
        Ok(cp)
    }

    /// A client authenticated as the cluster admin.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig (token auth, CA file beside it).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig for one of [`Options::audited_users`] or [`Options::plain_users`], written
    /// beside the admin one.
    pub fn kubeconfig_for(&self, user: &str) -> Result<PathBuf, TestbedError> {
        let path = self.dir.path().join(format!("{user}.kubeconfig"));
        let ca = self.dir.path().join("ca.crt");
        let text = kubeconfig_yaml(&self.server, &ca).replace(ADMIN_TOKEN, &user_token(user));
        std::fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        Ok(path)
    }

    /// How many requests this audited user has made so far (audit events are written when a
    /// request completes; a watch is counted when its response starts).
    pub fn audited_requests(&self, user: &str) -> Result<u64, TestbedError> {
        self.audited(user, |_| true)
    }

    /// How many of this audited user's requests so far `matches`, given the audit event of
    /// each (`verb`, `objectRef`, `responseStatus.code`, ...).
    pub fn audited(
        &self,
        user: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<u64, TestbedError> {
        let path = self.dir.path().join(AUDIT_LOG);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        Ok(count_audited(&text, user, matches))
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The folder holding the certificates, logs and etcd data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PIDs of the running processes, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Managed::pid).collect()
    }

    /// A `kubectl` command already pointed at this control plane, if kubectl is available.
    pub fn kubectl(&self) -> Option<std::process::Command> {
        let kubectl = self.binaries.kubectl.as_ref()?;
        let mut cmd = std::process::Command::new(kubectl);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        Some(cmd)
    }

    /// Stops every process (controller-manager, then API server, then etcd) and removes the
    /// folder. Dropping does the same; this form makes the end of a test explicit.
    pub fn stop(self) {}

    fn check_alive(&mut self) -> Result<(), TestbedError> {
        for p in &mut self.processes {
            p.check_alive()?;
        }
        Ok(())
    }

    async fn wait_apiserver_ready(&mut self) -> Result<(), TestbedError> {
        let started = Instant::now();
        let mut last_error = String::from("no answer yet");
        while started.elapsed() < APISERVER_READY_TIMEOUT {
            self.check_alive()?;
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            // Each look bounded on its own: one hung connection must not outlast the wait.
            match tokio::time::timeout(Duration::from_secs(5), self.client.request_text(req)).await
            {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => last_error = format!("/readyz said {body:?}"),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "/readyz did not answer within 5s".to_owned(),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(self.not_ready("kube-apiserver", started.elapsed(), last_error))
    }

    async fn wait_controller_manager_ready(&mut self) -> Result<(), TestbedError> {
        let started = Instant::now();
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "default");
        let needs_token_secret = self.binaries.service_account_needs_token_secret();
        let mut last_error = String::from("the default ServiceAccount does not exist yet");
        while started.elapsed() < CONTROLLER_MANAGER_READY_TIMEOUT {
            self.check_alive()?;
            match accounts.get_opt("default").await {
                Ok(Some(sa)) if !needs_token_secret => {
                    let _ = sa;
                    return Ok(());
                }
                Ok(Some(sa)) if sa.secrets.as_ref().is_some_and(|s| !s.is_empty()) => {
                    return Ok(());
                }
                Ok(Some(_)) => {
                    last_error = "the default ServiceAccount has no token Secret yet".to_owned()
                }
                Ok(None) => {}
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(self.not_ready("kube-controller-manager", started.elapsed(), last_error))
    }

    fn not_ready(
        &self,
        component: &'static str,
        waited: Duration,
        last_error: String,
    ) -> TestbedError {
        let managed = self.processes.iter().find(|p| p.name() == component);
        TestbedError::NotReady {
            component,
            waited,
            last_error,
            log: managed
                .map(|p| p.log_path().display().to_string())
                .unwrap_or_default(),
            tail: managed.map(|p| p.log_tail()).unwrap_or_default(),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse start order: controller-manager, kube-apiserver, etcd.
        while let Some(p) = self.processes.pop() {
            drop(p);
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("{KEEP_ENV} is set: kept {}", self.dir.path().display());
        }
    }
}

/// The audit log, in the control plane's folder.
const AUDIT_LOG: &str = "audit.log";

fn user_token(user: &str) -> String {
    format!("{user}-token")
}

/// Logs the audited users' requests at level Metadata, once per request (the first stage a
/// request reaches after being received: `ResponseStarted` for a watch, else
/// `ResponseComplete`), and nothing of anyone else.
fn audit_policy(users: &[String]) -> String {
    let users: Vec<String> = users.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [{}]
- level: None
",
        users.join(", ")
    )
}

/// Distinct audit IDs of this user's requests in an audit log (JSON lines) whose event
/// `matches`.
fn count_audited(log: &str, user: &str, matches: impl Fn(&serde_json::Value) -> bool) -> u64 {
    let mut ids = std::collections::HashSet::new();
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["user"]["username"] == user
            && matches(&event)
            && let Some(id) = event["auditID"].as_str()
        {
            ids.insert(id.to_owned());
        }
    }
    ids.len() as u64
}

/// The lowest port [`free_port`] hands out.
const FIXED_PORTS_FROM: u16 = 20000;

/// A free TCP port on 127.0.0.1 for a component to listen on (probed by binding it, then
/// released).
///
/// Ports come from below the kernel's ephemeral range, which the kernel never picks for an
/// outgoing connection or a bind to port 0. A port picked by binding port 0 could be taken in the
/// gap by any of the hundreds of connections a parallel test opens (CI once lost an operator's
/// admin port that way); these can only be taken by another listener. No port is handed out
/// twice in one process, and each process starts at its own place in the range, so parallel
/// tests do not race each other for one either. Where the ephemeral range leaves no room below
/// it, the kernel picks, as before.
pub fn free_port() -> Result<u16, TestbedError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if let Some(range) = fixed_ports() {
        let span = u32::from(range.end - range.start);
        static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let start = *START.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.subsec_nanos())
                ^ std::process::id().wrapping_mul(2_654_435_761)
        });
        for _ in 0..span {
            let offset = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = range.start + offset as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(io_err("binding a free loopback port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading a bound port"))?
        .port();
    Ok(port)
}

/// The ports [`free_port`] hands out: from [`FIXED_PORTS_FROM`] up to the kernel's ephemeral
/// range, or none where that leaves fewer than 1000.
fn fixed_ports() -> Option<std::ops::Range<u16>> {
    let below = ephemeral_ports_from().unwrap_or(32768);
    (below >= FIXED_PORTS_FROM.saturating_add(1000)).then_some(FIXED_PORTS_FROM..below)
}

/// The first port of the kernel's ephemeral range, if this system says.
fn ephemeral_ports_from() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn kubeconfig_yaml(server: &str, ca_cert: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: local
  context:
    cluster: local
    user: admin
current-context: local
",
        ca = ca_cert.display()
    )
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, TestbedError> {
    let config = config_from_kubeconfig(path).await?;
    Client::try_from(config).map_err(|e| client_error(path, e))
}

/// The client configuration a kubeconfig file describes.
pub async fn config_from_kubeconfig(path: &Path) -> Result<Config, TestbedError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| client_error(path, e))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| client_error(path, e))
}

fn client_error(path: &Path, error: impl std::fmt::Display) -> TestbedError {
    TestbedError::Client {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod audit_tests {
    use super::{audit_policy, count_audited};

    #[test]
    fn counts_one_users_distinct_requests() {
        let log = r#"{"auditID":"a","stage":"ResponseStarted","user":{"username":"op"}}
{"auditID":"a","stage":"ResponseComplete","user":{"username":"op"}}
{"auditID":"b","stage":"ResponseComplete","user":{"username":"op"}}
{"auditID":"c","stage":"ResponseComplete","user":{"username":"admin"}}
{"auditID":"d","stage":"ResponseComplete","user":{"username":"op"},"responseStatus":{"code":403}}
not json
"#;
        let all = |_: &serde_json::Value| true;
        assert_eq!(count_audited(log, "op", all), 3);
        assert_eq!(count_audited(log, "admin", all), 1);
        assert_eq!(count_audited(log, "nobody", all), 0);
        let refused = |e: &serde_json::Value| e["responseStatus"]["code"] == 403;
        assert_eq!(count_audited(log, "op", refused), 1);
    }

    #[test]
    fn policy_names_the_users() {
        let p = audit_policy(&["op".to_owned()]);
        assert!(p.contains("users: [\"op\"]"), "{p}");
        assert!(p.trim_end().ends_with("- level: None"), "{p}");
    }
}

#[cfg(test)]
mod port_tests {
    use super::{fixed_ports, free_port};

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        match fixed_ports() {
            Some(range) => assert!(
                ports.iter().all(|p| range.contains(p)),
                "{ports:?} not in {range:?}"
            ),
            None => eprintln!("no room below the ephemeral range: the kernel picks ports"),
        }
        let listeners: Vec<_> = ports[..20]
            .iter()
            .map(|p| std::net::TcpListener::bind(("127.0.0.1", *p)))
            .collect();
        assert!(listeners.iter().all(Result::is_ok), "{listeners:?}");
    }
}
