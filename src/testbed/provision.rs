//! Finding (or, once, building) the control-plane binaries.
//!
//! The build itself is `scripts/provision-k8s.sh`, embedded here so the demo binary carries it;
//! `make test` runs the same script before the tests, so the tests normally find the cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::TestbedError;

const PROVISION_SCRIPT: &str = include_str!("../../scripts/provision-k8s.sh");

/// Paths of the control-plane binaries and the Kubernetes minor version they speak.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: Option<PathBuf>,
    /// Minor version of kube-apiserver (20 for v1.20.2), read from `--version`.
    pub minor_version: u32,
}

impl Binaries {
    /// Reads the binaries from a folder (the `KUBEBUILDER_ASSETS` layout). kubectl may be
    /// missing (it is then looked up on `PATH`); the three others are required, the
    /// controller-manager too, though envtest's folders lack it: it creates every namespace's
    /// `default` ServiceAccount, without which no pod is admitted, and runs the Deployments the
    /// tests and the demo rotate.
    pub fn from_dir(dir: &Path) -> Result<Self, TestbedError> {
        // `why`: what the binary is needed for, when the folder lacking it is a surprise.
        let required = |name: &str, why: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(TestbedError::Provision(format!(
                    "{} has no {name}{why}",
                    dir.display()
                )))
            }
        };
        let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        let kube_apiserver = required("kube-apiserver", "")?;
        let etcd = required("etcd", "")?;
        let kube_controller_manager = required(
            "kube-controller-manager",
            " (needed for the default ServiceAccounts and for Deployments)",
        )?;
        Ok(Self {
            minor_version: minor_version(&kube_apiserver)?,
            etcd,
            kube_controller_manager,
            kubectl: optional("kubectl").or_else(|| which("kubectl")),
            kube_apiserver,
        })
    }

    /// kube-controller-manager's insecure `--port` flag was removed in v1.24.
    pub(crate) fn has_insecure_port_flag(&self) -> bool {
        self.minor_version < 24
    }

    /// Before v1.24 the ServiceAccount admission plugin refuses pods until the namespace's
    /// default ServiceAccount has a token Secret.
    pub(crate) fn service_account_needs_token_secret(&self) -> bool {
        self.minor_version < 24
    }
}

/// The binaries: from `KUBEBUILDER_ASSETS` if set, else from the per-user cache that
/// `scripts/provision-k8s.sh` owns, building them there first if needed (several minutes, once;
/// progress goes to stderr). With a warm cache the script answers in milliseconds.
pub fn provision() -> Result<Binaries, TestbedError> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS") {
        return Binaries::from_dir(Path::new(&dir));
    }
    let dir = run_provision_script()?;
    Binaries::from_dir(&dir)
}

fn run_provision_script() -> Result<PathBuf, TestbedError> {
    let fail = |m: String| TestbedError::Provision(m);
    let mut script = tempfile::Builder::new()
        .prefix("provision-k8s-")
        .suffix(".sh")
        .tempfile()
        .map_err(|e| fail(format!("writing the provisioning script: {e}")))?;
    script
        .write_all(PROVISION_SCRIPT.as_bytes())
        .map_err(|e| fail(format!("writing the provisioning script: {e}")))?;
    let out = Command::new("bash")
        .arg(script.path())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("running bash: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "scripts/provision-k8s.sh exited with {} (its progress is above)",
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .ok_or_else(|| fail("scripts/provision-k8s.sh printed no folder".to_owned()))?;
    Ok(PathBuf::from(dir.trim()))
}

fn minor_version(kube_apiserver: &Path) -> Result<u32, TestbedError> {
    let out = Command::new(kube_apiserver)
        .arg("--version")
        .output()
        .map_err(|e| {
            TestbedError::Provision(format!(
                "running {} --version: {e}",
                kube_apiserver.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_minor_version(&text).ok_or_else(|| {
        TestbedError::Provision(format!(
            "{} --version printed {text:?}, not `Kubernetes v1.N.M`",
            kube_apiserver.display()
        ))
    })
}

/// `Kubernetes v1.20.2` -> 20.
fn parse_minor_version(text: &str) -> Option<u32> {
    let v = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v1."))?;
    v.split('.').next()?.parse().ok()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::{Binaries, parse_minor_version};

    /// An envtest folder (kube-apiserver, etcd, kubectl) lacks the controller-manager. The
    /// files are never run: every binary is looked for before any is.
    #[test]
    fn a_folder_without_the_controller_manager_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["kube-apiserver", "etcd", "kubectl"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let err = Binaries::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("has no kube-controller-manager (needed for the default ServiceAccounts and for Deployments)"),
            "{err}"
        );
    }

    #[test]
    fn reads_minor_version() {
        assert_eq!(parse_minor_version("Kubernetes v1.20.2\n"), Some(20));
        assert_eq!(parse_minor_version("Kubernetes v1.33.0-beta.1"), Some(33));
        assert_eq!(parse_minor_version("nonsense"), None);
    }
}
