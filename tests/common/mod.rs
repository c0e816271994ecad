//! Shared helpers for the integration tests that run against the real local control plane.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use kube::{Client, CustomResourceExt};
use trust_rotation_operator::crd::TrustAnchorRotation;
use trust_rotation_operator::testbed::ControlPlane;

/// Field manager for the tests' server-side applies.
pub const MANAGER: &str = "trust-rotation-operator-tests";

/// Starts a control plane, printing how long the start took (a figure we report).
pub async fn start_control_plane() -> ControlPlane {
    start_control_plane_with(Default::default()).await
}

pub async fn start_control_plane_with(
    options: trust_rotation_operator::testbed::Options,
) -> ControlPlane {
    init_tracing();
    let started = Instant::now();
    let cp = ControlPlane::start_with_options(options)
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
    trust_rotation_operator::sim::install_crd(client, &TrustAnchorRotation::crd())
        .await
        .unwrap_or_else(|e| panic!("installing the TrustAnchorRotation CRD: {e}"));
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

/// The operator binary, run as a real process against the control plane, on free loopback ports,
/// with dev certificates written into `dir`. Killed when dropped.
pub struct Operator {
    pub process: trust_rotation_operator::testbed::Managed,
    pub webhook_port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    /// What it was started with, to start it again on other ports (see [`Operator::wait_ready`]).
    kubeconfig: std::path::PathBuf,
    extra_args: Vec<String>,
}

/// How often an operator that lost a port to another listener is started on other ports.
const START_ATTEMPTS: u32 = 3;

impl Operator {
    pub fn binary() -> std::path::PathBuf {
        env!("CARGO_BIN_EXE_trust-rotation-operator").into()
    }

    /// `trust-rotation-operator certs dev`, then `trust-rotation-operator run`.
    pub fn start(cp: &ControlPlane, extra_args: &[&str]) -> Self {
        Self::start_as(cp.kubeconfig(), extra_args)
    }

    /// As [`Operator::start`], with the credentials of `kubeconfig`.
    pub fn start_as(kubeconfig: &std::path::Path, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = std::process::Command::new(Self::binary())
            .args(["certs", "dev", "--out"])
            .arg(dir.path())
            .status()
            .expect("running certs dev");
        assert!(status.success(), "certs dev failed: {status}");
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let (process, webhook_port, admin_port) = Self::run(dir.path(), kubeconfig, &extra_args);
        Self {
            process,
            webhook_port,
            admin_port,
            dir,
            kubeconfig: kubeconfig.to_owned(),
            extra_args,
        }
    }

    /// `trust-rotation-operator run` on two free ports, with the certificates in `dir`.
    fn run(
        dir: &std::path::Path,
        kubeconfig: &std::path::Path,
        extra_args: &[String],
    ) -> (trust_rotation_operator::testbed::Managed, u16, u16) {
        let port = || trust_rotation_operator::testbed::free_port().expect("free port");
        let (webhook_port, admin_port) = (port(), port());
        let file = |name: &str| dir.join(name).display().to_string();
        let args = vec![
            "run".to_owned(),
            format!("--webhook-addr=127.0.0.1:{webhook_port}"),
            format!("--admin-addr=127.0.0.1:{admin_port}"),
            format!("--tls-cert-file={}", file("tls.crt")),
            format!("--tls-key-file={}", file("tls.key")),
            "--cert-reload-interval=200ms".to_owned(),
        ]
        .into_iter()
        .chain(extra_args.iter().cloned())
        .collect::<Vec<_>>();
        let process = trust_rotation_operator::testbed::Managed::spawn_with_env(
            "trust-rotation-operator",
            &Self::binary(),
            &args,
            dir,
            &[
                ("KUBECONFIG", kubeconfig.as_os_str()),
                ("RUST_LOG", std::ffi::OsStr::new("info")),
            ],
        )
        .expect("starting the operator");
        (process, webhook_port, admin_port)
    }

    pub fn webhook_url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.webhook_port)
    }

    /// GET on the admin server: (status code, body), or `None` if it does not answer.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(("127.0.0.1", self.admin_port), path)
    }

    /// Waits until `/ready` answers 200, failing with the operator's log if it never does.
    ///
    /// Its ports are picked free and then handed to it, so another listener can take one in
    /// between: an operator that exits because it could not bind is started again on other
    /// ports (which is why this is called before anything is told its ports).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            if let Some((200, _)) = self.admin_get("/ready") {
                return;
            }
            if let Err(e) = self.process.check_alive() {
                if attempt < START_ATTEMPTS && e.to_string().contains("Address already in use") {
                    attempt += 1;
                    eprintln!("operator lost a port ({e}); starting it on other ports");
                    (self.process, self.webhook_port, self.admin_port) =
                        Self::run(self.dir.path(), &self.kubeconfig, &self.extra_args);
                    continue;
                }
                panic!("operator exited before ready: {e}");
            }
            if started.elapsed() > timeout {
                panic!(
                    "operator not ready after {timeout:?}: {:?}\nlog:\n{}",
                    self.admin_get("/ready"),
                    self.process.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of one metric sample line, such as
    /// `trust_rotation_webhook_admissions_total{outcome="patched"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics")?;
        server::sample_value(&body, sample)
    }
}

/// A minimal HTTP/1.0 GET, enough for the admin server's plain-text answers.
pub fn http_get(addr: (&str, u16), path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", addr.0).ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}
pub mod relay;
pub mod server;
pub mod tls_client;

/// Logs at `RUST_LOG` (default `warn`) through the test writer, so a failing test shows what
/// the operator and the simulator complained about.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Registers the operator's webhook with the API server by URL, as `webhook-config` prints it
/// but for a 10 s timeout: the shipped 3 s (failurePolicy Ignore) would admit a pod unstamped
/// if a loaded test machine kept the API server's call waiting that long, and most tests check
/// what the webhook does, not how long the API server waits for it.
pub fn register_webhook(cp: &ControlPlane, op: &Operator) {
    register_webhook_trusting(cp, op, &op.dir.path().join("ca.crt"));
}

/// As [`register_webhook`], with `ca_file` as the configuration's caBundle.
pub fn register_webhook_trusting(cp: &ControlPlane, op: &Operator, ca_file: &std::path::Path) {
    let yaml = webhook_config(op, ca_file);
    let shipped = format!(
        "timeoutSeconds: {}",
        trust_rotation_operator::webhook::config::TIMEOUT_SECONDS
    );
    assert!(yaml.contains(&shipped), "{yaml}");
    kubectl_apply(cp, yaml.replace(&shipped, "timeoutSeconds: 10").as_bytes());
}

/// Registers the operator's webhook exactly as `webhook-config` prints it, shipped timeout and
/// all: for the tests of how pod creation fares when the webhook does not answer.
pub fn register_shipped_webhook(cp: &ControlPlane, op: &Operator) {
    kubectl_apply(
        cp,
        webhook_config(op, &op.dir.path().join("ca.crt")).as_bytes(),
    );
}

/// `trust-rotation-operator webhook-config` for this operator's URL, trusting `ca_file`.
fn webhook_config(op: &Operator, ca_file: &std::path::Path) -> String {
    let out = std::process::Command::new(Operator::binary())
        .args(["webhook-config", "--url", &op.webhook_url(), "--ca-file"])
        .arg(ca_file)
        .output()
        .expect("webhook-config");
    assert!(out.status.success(), "webhook-config: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

pub fn kubectl_apply(cp: &ControlPlane, yaml: &[u8]) {
    use std::io::Write;
    let mut child = cp
        .kubectl()
        .expect("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl apply");
    child.stdin.take().unwrap().write_all(yaml).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply: {out:?}");
}
