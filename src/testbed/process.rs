//! One control-plane process, killed when dropped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{TestbedError, io_err};

/// How much of a log an error quotes: enough for the fatal line and its context.
const LOG_TAIL_BYTES: u64 = 4096;

/// Where util-linux's `setpriv` lives on Debian. With `--pdeathsig KILL` the kernel kills the
/// child when the thread that started it exits, so nothing outlives a test process that was
/// itself killed before its destructors could run.
const SETPRIV: &str = "/usr/bin/setpriv";

pub(crate) struct Managed {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Managed {
    pub(crate) fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        dir: &Path,
    ) -> Result<Self, TestbedError> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("opening {}", log.display())))?;
        let mut cmd = if Path::new(SETPRIV).exists() {
            let mut c = Command::new(SETPRIV);
            c.args(["--pdeathsig", "KILL", "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Own process group: a Ctrl-C at the terminal reaches us, and we stop them in order.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {name} ({})", binary.display())))?;
        Ok(Self { name, child, log })
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last few KiB of the process's log.
    pub(crate) fn log_tail(&self) -> String {
        let Ok(mut f) = File::open(&self.log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Fails if the process has already exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), TestbedError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(TestbedError::Exited {
                component: self.name,
                status: status.to_string(),
                log: self.log.display().to_string(),
                tail: self.log_tail(),
            }),
            Err(e) => Err(TestbedError::Io {
                context: format!("checking on {}", self.name),
                source: e,
            }),
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        // SIGKILL, not SIGTERM: the data is throwaway, and kube-apiserver can hang on SIGTERM
        // once etcd is gone. Waiting reaps the child so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
