//! The operator as a child process of the demo (or the benchmark): `trust-rotation-operator
//! run` on free loopback ports, with throwaway serving certificates, authenticated as its own
//! audited user, its webhook registered by URL. Its peak memory is read from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::{DemoError, OPERATOR_USER};
use crate::testbed::{ControlPlane, Managed, free_port};

/// How long the operator has to drain after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running operator process; killed when dropped.
pub struct OperatorProcess {
    process: Managed,
    webhook_addr: SocketAddr,
    admin_addr: SocketAddr,
    ca_pem: String,
    // Last: the certificates and the log outlive the process.
    dir: tempfile::TempDir,
}

impl OperatorProcess {
    /// Writes dev certificates and starts `binary run` against `cp` as [`OPERATOR_USER`],
    /// reconciling every 500 ms (the simulated mesh moves in seconds, not minutes).
    pub async fn start(
        binary: &Path,
        cp: &ControlPlane,
        extra_args: &[String],
    ) -> Result<Self, DemoError> {
        let dir = tempfile::Builder::new()
            .prefix("tro-operator-")
            .tempdir()
            .map_err(|e| DemoError::Operator(format!("creating a temporary folder: {e}")))?;
        let names = crate::devcerts::serving_names(
            crate::webhook::config::DEFAULT_SERVICE_NAME,
            crate::webhook::config::DEFAULT_OPERATOR_NAMESPACE,
        );
        let certs = crate::devcerts::write(dir.path(), names)
            .map_err(|e| DemoError::Operator(format!("writing dev certificates: {e}")))?;
        let ca_pem = std::fs::read_to_string(&certs.ca_cert).map_err(|e| {
            DemoError::Operator(format!("reading {}: {e}", certs.ca_cert.display()))
        })?;
        let kubeconfig = cp.kubeconfig_for(OPERATOR_USER)?;
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let webhook_addr = loopback(free_port()?);
        let admin_addr = loopback(free_port()?);
        let mut args = vec![
            "run".to_owned(),
            format!("--webhook-addr={webhook_addr}"),
            format!("--admin-addr={admin_addr}"),
            format!("--tls-cert-file={}", certs.cert.display()),
            format!("--tls-key-file={}", certs.key.display()),
            "--reconcile-interval=500ms".to_owned(),
            // Registered by URL, not behind a Service: no endpoint to drain before stopping.
            "--shutdown-delay=0s".to_owned(),
        ];
        args.extend(extra_args.iter().cloned());
        let rust_log = std::env::var_os("RUST_LOG").unwrap_or_else(|| "info".into());
        let process = Managed::spawn_with_env(
            "trust-rotation-operator",
            binary,
            &args,
            dir.path(),
            &[
                ("KUBECONFIG", kubeconfig.as_os_str()),
                ("RUST_LOG", rust_log.as_os_str()),
            ],
        )?;
        Ok(Self {
            process,
            webhook_addr,
            admin_addr,
            ca_pem,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Fails with the tail of the operator's log if it has exited.
    pub fn check_alive(&mut self) -> Result<(), DemoError> {
        self.process
            .check_alive()
            .map_err(|e| DemoError::Operator(e.to_string()))
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), DemoError> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            let addr = self.admin_addr;
            let code = tokio::task::spawn_blocking(move || http_status(addr, "/ready"))
                .await
                .ok()
                .flatten();
            if code == Some(200) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(DemoError::Operator(format!(
                    "not ready after {timeout:?} (GET /ready: {code:?}); last lines of {}:\n{}",
                    self.process.log_path().display(),
                    self.process.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers the webhook with the API server by URL (`webhook-config --url ... --ca-file`).
    pub async fn register_webhook(&self, client: &Client) -> Result<(), DemoError> {
        use crate::webhook::config::{DEFAULT_OPERATOR_NAMESPACE, Endpoint, render};
        let url = format!("https://{}/mutate", self.webhook_addr);
        let yaml = render(
            &Endpoint::Url(url),
            Some(&self.ca_pem),
            DEFAULT_OPERATOR_NAMESPACE,
        );
        let config: MutatingWebhookConfiguration = serde_yaml::from_str(&yaml).map_err(|e| {
            DemoError::Operator(format!("parsing the generated webhook configuration: {e}"))
        })?;
        let name = config.name_any();
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(
                &name,
                &PatchParams::apply(super::MANAGER).force(),
                &Patch::Apply(&config),
            )
            .await
            .map_err(super::kube_err(format!(
                "registering MutatingWebhookConfiguration {name}"
            )))?;
        Ok(())
    }

    /// Peak resident set size so far (`VmHWM` in `/proc/<pid>/status`), KiB.
    pub fn peak_memory_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        parse_vm_hwm(&status)
    }

    /// SIGTERM, a few seconds to drain, then SIGKILL (on drop).
    pub fn stop(mut self) {
        if self.process.signal("TERM").is_ok() {
            let _ = self.process.wait_timeout(STOP_GRACE);
        }
    }
}

/// `VmHWM:    12345 kB` -> 12345.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Status code of a plain HTTP/1.0 GET on loopback.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", addr.ip()).ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_vm_hwm;

    #[test]
    fn reads_vm_hwm() {
        let status =
            "Name:\ttrust-rotation\nVmPeak:\t  900000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t 20000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(23456));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }
}
