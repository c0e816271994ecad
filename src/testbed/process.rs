//! One child process of a test (a control-plane component, or the operator itself), killed when
//! dropped.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{TestbedError, io_err};

/// How much of a log an error quotes: enough for the fatal line and its context.
const LOG_TAIL_BYTES: u64 = 4096;

/// Where util-linux's `setpriv` lives on Debian. With `--pdeathsig KILL` the kernel kills the
/// child when the thread that started it exits, so nothing outlives a test process that was
/// itself killed before its destructors could run.
const SETPRIV: &str = "/usr/bin/setpriv";

/// A command for `binary` that the kernel kills (SIGKILL) when the thread that starts it exits,
/// through `setpriv --pdeathsig` where util-linux has it (else a plain command).
pub fn dying_with_this_thread(binary: &Path) -> Command {
    if Path::new(SETPRIV).exists() {
        let mut c = Command::new(SETPRIV);
        c.args(["--pdeathsig", "KILL", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    }
}

/// A child process whose output goes to `<dir>/<name>.log`. Dropping it kills it (SIGKILL) and
/// reaps it.
pub struct Managed {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Managed {
    pub fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        dir: &Path,
    ) -> Result<Self, TestbedError> {
        Self::spawn_with_env(name, binary, args, dir, &[])
    }

    /// As [`Managed::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &'static str,
        binary: &Path,
        args: &[String],
        dir: &Path,
        env: &[(&str, &OsStr)],
    ) -> Result<Self, TestbedError> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("opening {}", log.display())))?;
        let mut cmd = dying_with_this_thread(binary);
        cmd.args(args)
            .envs(env.iter().copied())
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

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last few KiB of the process's log.
    pub fn log_tail(&self) -> String {
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
    pub fn check_alive(&mut self) -> Result<(), TestbedError> {
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

impl Managed {
    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`, `STOP`, `CONT`), with the system
    /// call itself: no `kill` program needed.
    pub fn signal(&self, signal: &str) -> Result<(), TestbedError> {
        send_signal(self.pid(), signal).map_err(|source| TestbedError::Io {
            context: format!("kill -{signal} {} ({})", self.pid(), self.name),
            source,
        })
    }

    /// SIGSTOP, then waits until every thread of the process is seen stopped (`T` in
    /// `/proc/<pid>/task/*/stat`): a signal is only queued when `kill` returns, and a test that
    /// needs the process frozen must not race its last running thread.
    pub fn freeze(&self) -> Result<(), TestbedError> {
        self.signal("STOP")?;
        let started = Instant::now();
        let tasks = format!("/proc/{}/task", self.pid());
        loop {
            let stopped = std::fs::read_dir(&tasks)
                .map_err(io_err(format!("reading {tasks}")))?
                .filter_map(Result::ok)
                .all(|task| {
                    std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                        // `pid (comm) state ...`: the state follows the last `)`.
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                    })
                });
            if stopped {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(5) {
                return Err(TestbedError::Io {
                    context: format!("kill -STOP {} ({})", self.pid(), self.name),
                    source: std::io::Error::other("some threads still running after 5 s"),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if started.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
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

/// Sends the signal named `signal` (`TERM`, `INT`, `HUP`, `KILL`, `STOP`, `CONT`) to `pid`.
pub fn send_signal(pid: u32, signal: &str) -> std::io::Result<()> {
    use rustix::process::{Pid, Signal, kill_process};
    let signal = match signal {
        "TERM" => Signal::TERM,
        "INT" => Signal::INT,
        "HUP" => Signal::HUP,
        "KILL" => Signal::KILL,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown signal {other:?}"),
            ));
        }
    };
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a pid"))?;
    kill_process(pid, signal).map_err(std::io::Error::from)
}
