//! `trust-rotation-operator demo` end to end, as a user runs it: the binary, its real control
//! plane, simulated mesh and operator child process, small meshes to keep CI time modest. Each
//! test checks that every process the demo started is gone when it exits (normally, after
//! Ctrl-C with `--keep`, and after Ctrl-C mid-rotation).

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use trust_rotation_operator::crd::Phase;

/// A running `demo` with its output collected line by line as it comes.
struct Demo {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
    /// The threads reading stdout and stderr; each ends when its pipe does.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        // Killed with this test's thread, should the test process itself be killed.
        let mut child = trust_rotation_operator::testbed::dying_with_this_thread(
            env!("CARGO_BIN_EXE_trust-rotation-operator").as_ref(),
        )
        .arg("demo")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting trust-rotation-operator demo");
        let (tx, lines) = mpsc::channel();
        let collect = |pipe: Box<dyn std::io::Read + Send>, tx: mpsc::Sender<String>| {
            let store = Arc::new(Mutex::new(Vec::new()));
            let s = store.clone();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("demo> {line}");
                    s.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
            (store, reader)
        };
        let (stdout, out_reader) = collect(Box::new(child.stdout.take().unwrap()), tx.clone());
        let (stderr, err_reader) = collect(Box::new(child.stderr.take().unwrap()), tx);
        Self {
            child,
            stdout,
            stderr,
            lines,
            readers: vec![out_reader, err_reader],
        }
    }

    /// Waits for a line (on either stream) containing `needle`.
    fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line containing {needle:?} within {timeout:?}"),
            }
        }
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The readers drain the pipes, which end once nothing the demo started holds
                // them either.
                let drained = Instant::now();
                while !self.readers.iter().all(|r| r.is_finished()) {
                    assert!(
                        drained.elapsed() < Duration::from_secs(30),
                        "the demo's output pipes still open 30s after it exited"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                return status;
            }
            if Instant::now() > deadline {
                // Drop stops it: Ctrl-C first, so it removes what it started.
                panic!("demo did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn interrupt(&self) {
        trust_rotation_operator::testbed::send_signal(self.child.id(), "INT")
            .expect("sending SIGINT to the demo");
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed assertion must not leave a demo (and its control plane) running. Ctrl-C
        // first, so it stops what it started and removes its folders; killed only if that
        // does not end it.
        if let Ok(None) = self.child.try_wait() {
            let _ = trust_rotation_operator::testbed::send_signal(self.child.id(), "INT");
            let deadline = Instant::now() + Duration::from_secs(20);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.wait();
        }
    }
}

/// `processes: etcd=1 kube-apiserver=2 ...` -> [("etcd", 1), ...].
fn processes(lines: &[String]) -> Vec<(String, u32)> {
    let line = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("processes: "))
        .expect("a `processes:` line");
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

/// No process the demo named is running any more (a recycled pid running something else is
/// not ours).
fn assert_all_gone(procs: &[(String, u32)]) {
    assert_eq!(procs.len(), 4, "{procs:?}");
    for (name, pid) in procs {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !cmdline.contains(name.as_str()),
            "{name} (pid {pid}) outlived the demo: {cmdline}"
        );
    }
}

/// The summary table's rows: (name, seconds, restarts, ok, failed), total last.
fn table_rows(lines: &[String]) -> Vec<(String, f64, u64, u64, u64)> {
    let start = lines
        .iter()
        .position(|l| l.starts_with("phase ") && l.contains("handshakes ok"))
        .expect("the summary table header");
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.starts_with("final phase:"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "table row {l:?}");
            (
                f[0].to_owned(),
                f[1].trim_end_matches('s').parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect()
}

/// Checks the JSON against the table printed before it, and the rotation's outcome.
fn check_summary(json: &Value, human: &[String], pods: u64) {
    assert_eq!(json["final_phase"], "Synced", "{json}");
    assert_eq!(json["pods"], pods, "{json}");
    let failed = json["handshakes"]["failed"].as_u64().unwrap();
    let ok = json["handshakes"]["ok"].as_u64().unwrap();
    assert_eq!(failed, 0, "{json}");
    assert!(ok > 0, "traffic ran: {json}");
    // The mesh in its final state, the handshakes under way at Synced included.
    let after = &json["after_synced"];
    assert!(after["seconds"].as_f64().unwrap() >= 3.0, "{json}");
    assert!(after["ok"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(after["failed"].as_u64(), Some(0), "{json}");
    assert!(json["peer_gone"].is_u64(), "{json}");

    let rows = table_rows(human);
    let (total, phases) = rows.split_last().unwrap();
    let json_phases = json["phases"].as_array().unwrap();
    assert_eq!(phases.len(), json_phases.len(), "{rows:?} vs {json}");
    for (row, p) in phases.iter().zip(json_phases) {
        assert_eq!(p["phase"], row.0.as_str());
        assert_eq!(p["seconds"].as_f64().unwrap(), row.1, "{}", row.0);
    }
    assert_eq!(total.0, "total");
    assert_eq!(json["seconds_total"].as_f64().unwrap(), total.1);
    assert_eq!(json["restarts"].as_u64().unwrap(), total.2);
    assert_eq!((ok, failed), (total.3, total.4));
    // The rows add up to the total.
    let sum: f64 = phases.iter().map(|r| r.1).sum();
    assert!((sum - total.1).abs() < 0.01, "{sum} vs {}", total.1);
    assert_eq!(phases.iter().map(|r| r.2).sum::<u64>(), total.2);
    assert_eq!(phases.iter().map(|r| r.3).sum::<u64>(), total.3);
    let final_line = human
        .iter()
        .find(|l| l.starts_with("final phase:"))
        .unwrap();
    assert!(final_line.contains("Synced"), "{final_line}");

    let names: Vec<&str> = json_phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    for phase in [
        Phase::RefreshingControlPlane,
        Phase::PropagatingTrustRoots,
        Phase::RenewingWorkloadCerts,
        Phase::RemovingOldTrustRoots,
    ] {
        assert!(
            names.contains(&phase.as_str()),
            "went through {phase}: {names:?}"
        );
    }
}

fn json_object(stdout: &[String]) -> Value {
    assert_eq!(
        stdout.len(),
        1,
        "stdout is exactly one JSON object: {stdout:?}"
    );
    serde_json::from_str(&stdout[0]).expect("stdout parses as JSON")
}

/// Control-plane Deployments of the simulated Linkerd.
fn control_plane_deployments() -> u64 {
    trust_rotation_operator::sim::linkerd::CONTROL_PLANE.len() as u64
}

#[test]
fn automatic_demo_json_agrees_with_the_table_and_leaves_nothing_running() {
    let mut demo = Demo::start(&["--pods", "8", "--output", "json"]);
    let status = demo.wait(Duration::from_secs(480));
    let (stdout, stderr) = (demo.stdout(), demo.stderr());
    assert!(
        status.success(),
        "demo failed: {status}\n{}",
        stderr.join("\n")
    );
    let json = json_object(&stdout);
    check_summary(&json, &stderr, 8);
    // 8 pods = 2 namespaces x 2 Deployments x 2 replicas. The operator restarts every
    // Deployment, control plane included, exactly twice: onto the expanded bundle, then onto
    // the reduced one.
    assert_eq!(
        json["restarts"].as_u64().unwrap(),
        2 * (4 + control_plane_deployments()),
        "{json}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("$ cmctl renew -n cert-manager linkerd-trust-anchor")),
        "the renewal is shown"
    );
    assert!(stderr.iter().any(|l| l == "stopped; nothing left running"));
    assert_all_gone(&processes(&stderr));
}

/// The negative control of the demo's own verdict: with the order broken by hand (the issuer
/// renewed with the anchor, the identity controller restarted onto the expanded bundle at
/// once), handshakes fail whatever the operator does. The same counting the clean runs pass
/// through must report them, in the table and the JSON, and end the demo with exit code 1.
#[test]
fn a_demo_whose_order_is_broken_by_hand_reports_failed_handshakes_and_exits_1() {
    let mut demo = Demo::start(&["--pods", "8", "--output", "json", "--break-the-order"]);
    let status = demo.wait(Duration::from_secs(480));
    let (stdout, stderr) = (demo.stdout(), demo.stderr());
    assert_eq!(status.code(), Some(1), "{}", stderr.join("\n"));
    let json = json_object(&stdout);
    let failed = json["handshakes"]["failed"].as_u64().unwrap()
        + json["after_synced"]["failed"].as_u64().unwrap();
    assert!(failed > 0, "{json}");
    let rows = table_rows(&stderr);
    assert_eq!(
        rows.last().unwrap().4,
        json["handshakes"]["failed"].as_u64().unwrap(),
        "{rows:?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("failed handshakes (want Synced and 0)")),
        "{}",
        stderr.join("\n")
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("failed: ") && l.contains("unknown issuer")),
        "the failures are shown with their pods and reason"
    );
    assert!(stderr.iter().any(|l| l == "stopped; nothing left running"));
    assert_all_gone(&processes(&stderr));
}

#[test]
fn manual_demo_prints_the_commands_keeps_the_cluster_and_stops_on_ctrl_c() {
    let mut demo = Demo::start(&[
        "--pods",
        "4",
        "--policies",
        "manual",
        "--output",
        "json",
        "--keep",
    ]);
    let kubeconfig = demo.wait_line("kubeconfig: ", Duration::from_secs(480));
    demo.wait_line("Ctrl-C stops everything.", Duration::from_secs(10));
    let kubeconfig = kubeconfig
        .trim()
        .strip_prefix("kubeconfig: ")
        .unwrap()
        .to_owned();

    // Kept: the cluster still answers, with the rotation Synced.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let phase = rt.block_on(async {
        let client = trust_rotation_operator::testbed::client_from_kubeconfig(
            std::path::Path::new(&kubeconfig),
        )
        .await
        .unwrap();
        let tar = kube::Api::<trust_rotation_operator::crd::TrustAnchorRotation>::all(client)
            .get("cluster")
            .await
            .expect("the kept cluster answers");
        tar.status.unwrap().phase
    });
    assert_eq!(phase, Phase::Synced);
    let procs = processes(&demo.stderr());
    for (name, pid) in &procs {
        // What `assert_all_gone` looks for once the demo has stopped them.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&cmdline).contains(name.as_str()),
            "{name} (pid {pid}) runs while kept"
        );
    }

    demo.interrupt();
    let status = demo.wait(Duration::from_secs(60));
    let (stdout, stderr) = (demo.stdout(), demo.stderr());
    assert!(
        status.success(),
        "Ctrl-C ends a kept demo normally: {status}"
    );
    let json = json_object(&stdout);
    check_summary(&json, &stderr, 4);

    // The person's steps, as the status asked for them, each with the reason.
    let restart = "$ kubectl rollout restart deployment/app-";
    assert!(stderr.iter().any(|l| l.contains(restart)), "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("$ cmctl renew -n linkerd linkerd-identity-issuer")),
        "{stderr:#?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("action needed (PropagatingTrustRoots): ")
                && l.contains("do not hold the expanded trust bundle")),
        "{stderr:#?}"
    );
    // Both workloads (1 namespace x 2 Deployments) restarted by "hand" twice, the control
    // plane twice by the operator.
    assert_eq!(
        json["restarts"].as_u64().unwrap(),
        2 * (2 + control_plane_deployments()),
        "{json}"
    );
    assert_all_gone(&procs);
}

#[test]
fn ctrl_c_mid_rotation_stops_everything() {
    let mut demo = Demo::start(&["--pods", "4"]);
    demo.wait_line("PropagatingTrustRoots", Duration::from_secs(480));
    demo.interrupt();
    let status = demo.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "exit code after Ctrl-C");
    let (stdout, stderr) = (demo.stdout(), demo.stderr());
    assert!(
        stderr.iter().any(|l| l.contains("interrupted")),
        "{stderr:#?}"
    );
    assert!(stdout.iter().any(|l| l == "stopped; nothing left running"));
    assert!(
        !stdout.iter().any(|l| l.starts_with("final phase:")),
        "no summary for an interrupted rotation"
    );
    assert_all_gone(&processes(&stdout));
}
