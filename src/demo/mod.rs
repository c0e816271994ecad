//! `trust-rotation-operator demo`: the whole story on this machine. A real local control plane
//! (`crate::testbed`), the simulated cert-manager, Linkerd and meshed workloads (`crate::sim`),
//! continuous mTLS traffic, the operator binary as a child process, the `cluster`
//! TrustAnchorRotation, an anchor renewal the way `cmctl renew` does it, live progress until the
//! rotation is back in `Synced`, and a summary. Everything it started is stopped when it ends,
//! normally, on error or on Ctrl-C.
//!
//! The pure parts (layout, timeline, table, JSON, progress rendering, reading the manual steps
//! from the status) are in [`model`].

pub mod model;
pub mod operator;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;

use self::model::{AfterSynced, Counters, Layout, ManualAction, Progress, Summary, Timeline};
use self::operator::OperatorProcess;
use crate::crd::{Phase, TrustAnchorRotation};
use crate::sim::traffic::{TrafficConfig, TrafficSnapshot};
use crate::sim::{Mesh, SimConfig};
use crate::testbed::{ControlPlane, Options};

/// The user the operator authenticates as: its own token, so the API server's audit log counts
/// its requests and nobody else's.
pub const OPERATOR_USER: &str = "trust-rotation-operator";
/// Field manager of the demo's own writes.
const MANAGER: &str = "trust-rotation-operator-demo";
/// Default `--pods`: a few dozen pods in a few namespaces (3 x 3 Deployments x 4 replicas).
pub const DEFAULT_PODS: usize = 36;
/// The accelerated refresh interval the demo asks for. The simulated leaves live 20 s (Linkerd:
/// 24 h) so a 3 s refresh plays the part of BEL's 5 min default against a day-long leaf.
pub const DEFAULT_REFRESH_INTERVAL: &str = "3s";
/// How often the demo looks at the rotation and redraws the progress.
const TICK: Duration = Duration::from_millis(500);
/// On a non-terminal, a progress line is printed when the phase or the restarts change, and at
/// least this often.
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(5);
/// How long the whole rotation may take before the demo gives up, per 100 pods (plus a base).
const TIMEOUT_BASE: Duration = Duration::from_secs(300);
const TIMEOUT_PER_100_PODS: Duration = Duration::from_secs(60);
/// Pod-template annotations that mean "restart": the operator's and `kubectl rollout restart`'s.
const RESTART_ANNOTATIONS: [&str; 2] = [
    crate::reconcile::controller::RESTART_ANNOTATION,
    "kubectl.kubernetes.io/restartedAt",
];

/// Who restarts workloads and renews the issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyMode {
    /// The operator does both.
    Automatic,
    /// A person does both (the demo plays the person, after printing the command).
    Manual,
}

impl PolicyMode {
    fn spec_value(self) -> &'static str {
        match self {
            PolicyMode::Automatic => "Automatic",
            PolicyMode::Manual => "Manual",
        }
    }
}

/// Everything `demo` can be told.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub pods: usize,
    pub policies: PolicyMode,
    pub keep: bool,
    pub json: bool,
    /// The `trust-rotation-operator` binary to run as the operator (normally this binary).
    pub operator_binary: PathBuf,
    pub refresh_interval: String,
    /// `spec.dataPlaneRestart.maxConcurrentWorkloads`; `None` leaves the operator's default.
    pub max_concurrent_workloads: Option<u32>,
    /// Replicas of each control-plane Deployment.
    pub control_plane_replicas: i32,
    /// How much later every second identity controller replica loads a renewed issuer.
    pub identity_reload_lag: Duration,
    /// In manual mode, how long the demo "reads" a printed command before running it.
    pub manual_delay: Duration,
    /// A negative control (`break_the_order`): the issuer renewed with the anchor and the
    /// identity controller restarted by hand onto the expanded bundle at once. mTLS then
    /// breaks whatever the operator does, and the demo must count the failures and exit 1.
    pub break_the_order: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            pods: DEFAULT_PODS,
            policies: PolicyMode::Automatic,
            keep: false,
            json: false,
            operator_binary: PathBuf::from("trust-rotation-operator"),
            refresh_interval: DEFAULT_REFRESH_INTERVAL.to_owned(),
            max_concurrent_workloads: None,
            control_plane_replicas: 1,
            identity_reload_lag: Duration::ZERO,
            manual_delay: Duration::from_secs(3),
            break_the_order: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Usage(String),
    #[error("starting the local control plane: {0}")]
    ControlPlane(#[from] crate::testbed::TestbedError),
    #[error("simulated mesh: {0}")]
    Sim(#[from] crate::sim::SimError),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("operator: {0}")]
    Operator(String),
    #[error(
        "the rotation did not reach Synced within {after:?}: phase {phase}, status: {blocking}; traffic: {traffic}"
    )]
    Timeout {
        after: Duration,
        phase: Phase,
        blocking: String,
        traffic: String,
    },
    #[error(
        "the rotation ended in phase {final_phase} with {failed} failed handshakes (want Synced and 0)"
    )]
    Unsafe { final_phase: Phase, failed: u64 },
    #[error("interrupted: everything the demo started has been stopped")]
    Interrupted,
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Kube { what, source }
}

/// What a finished run measured.
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub summary: Summary,
    /// Requests the operator made, from its start to the end of the rotation (audit log).
    pub operator_api_requests: u64,
    /// The operator process's peak resident memory (VmHWM), KiB.
    pub operator_peak_kib: Option<u64>,
}

/// Where the human-readable output goes, and how: a refreshing block on a terminal, plain
/// lines otherwise.
pub struct Ui {
    out: Box<dyn Write + Send>,
    tty: bool,
    width: usize,
    drawn: usize,
    last_plain: Option<(Instant, model::ProgressKey)>,
}

impl Ui {
    pub fn new(out: Box<dyn Write + Send>, tty: bool) -> Self {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .or_else(terminal_columns)
            .unwrap_or(80usize)
            .max(40);
        Self {
            out,
            tty,
            width: width - 1,
            drawn: 0,
            last_plain: None,
        }
    }

    fn clear_block(&mut self) -> std::io::Result<()> {
        if self.drawn > 0 {
            // Up to the block's first line, then clear to the end of the screen.
            write!(self.out, "\x1b[{}A\r\x1b[J", self.drawn)?;
            self.drawn = 0;
        }
        Ok(())
    }

    /// A line that stays (above the progress block, on a terminal).
    pub fn say(&mut self, line: &str) -> std::io::Result<()> {
        self.clear_block()?;
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }

    /// Redraws the progress block (terminal) or prints a line when something moved (else).
    pub fn progress(&mut self, p: &Progress) -> std::io::Result<()> {
        if self.tty {
            self.clear_block()?;
            let lines = p.block(self.width);
            for l in &lines {
                writeln!(self.out, "{l}")?;
            }
            self.drawn = lines.len();
        } else {
            let due = self
                .last_plain
                .as_ref()
                .is_none_or(|(at, key)| *key != p.key() || at.elapsed() >= PLAIN_LINE_EVERY);
            if due {
                writeln!(self.out, "{}", p.line())?;
                self.last_plain = Some((Instant::now(), p.key()));
            }
        }
        self.out.flush()
    }

    /// Leaves the last progress block on screen as it is.
    pub fn freeze(&mut self) {
        self.drawn = 0;
    }
}

/// The terminal's width from `stty size` (shells rarely export `COLUMNS`): a block line that
/// wraps would break the cursor arithmetic of the refresh.
fn terminal_columns() -> Option<usize> {
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(tty)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Everything the demo started, stopped in order by [`World::stop`] (or, if the demo itself is
/// killed, by the kernel: each process runs under `setpriv --pdeathsig KILL`).
#[derive(Default)]
pub struct World {
    pub control_plane: Option<ControlPlane>,
    pub mesh: Option<Mesh>,
    pub operator: Option<OperatorProcess>,
}

impl World {
    /// PIDs of every process started, named.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut out: Vec<(&'static str, u32)> = Vec::new();
        if let Some(cp) = &self.control_plane {
            let names = ["etcd", "kube-apiserver", "kube-controller-manager"];
            out.extend(names.iter().copied().zip(cp.pids()));
        }
        if let Some(op) = &self.operator {
            out.push(("trust-rotation-operator", op.pid()));
        }
        out
    }

    /// Traffic and proxies, then the operator (SIGTERM, so it drains), then the simulated
    /// mesh, then the control plane (controller-manager, API server, etcd).
    pub fn stop(&mut self) {
        if let Some(mesh) = &mut self.mesh {
            mesh.stop_traffic();
        }
        if let Some(op) = self.operator.take() {
            op.stop();
        }
        self.mesh = None;
        self.control_plane = None;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the demo until the rotation is done (and, with `keep`, until `shutdown`), writing the
/// human output to `ui` and the JSON (if asked) to `json_out`. `shutdown` is Ctrl-C in the CLI:
/// before the end it interrupts the demo; with `keep` it is the normal end.
pub async fn run(
    config: DemoConfig,
    ui: &mut Ui,
    json_out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<DemoReport, DemoError> {
    let layout = Layout::for_pods(config.pods).map_err(DemoError::Usage)?;
    let mut world = World::default();
    let mut shutdown = std::pin::pin!(shutdown);
    let outcome = tokio::select! {
        r = scenario(&config, layout, &mut world, ui, json_out) => r,
        _ = &mut shutdown => Err(DemoError::Interrupted),
    };
    let outcome = match outcome {
        Ok(report) if config.keep => {
            keep_instructions(&world, ui)?;
            shutdown.await;
            Ok(report)
        }
        other => other,
    };
    ui.freeze();
    let pids = world.pids();
    // Said as it happens, but not at the cost of the outcome: after SIGHUP the terminal may
    // be gone, and the run still ends as interrupted, everything stopped.
    let _ = ui.say(&format!(
        "stopping: traffic, operator, simulated mesh, control plane ({} processes)",
        pids.len()
    ));
    world.stop();
    let left: Vec<String> = pids
        .iter()
        .filter(|(_, pid)| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .map(|(n, pid)| format!("{n} ({pid})"))
        .collect();
    let _ = if left.is_empty() {
        ui.say("stopped; nothing left running")
    } else {
        ui.say(&format!("still running after stop: {}", left.join(", ")))
    };
    outcome
}

fn keep_instructions(world: &World, ui: &mut Ui) -> Result<(), DemoError> {
    let (Some(cp), Some(op)) = (&world.control_plane, &world.operator) else {
        return Ok(());
    };
    let kubectl = cp
        .kubectl()
        .map(|c| c.get_program().to_string_lossy().into_owned())
        .unwrap_or_else(|| "kubectl".to_owned());
    let kc = cp.kubeconfig().display().to_string();
    for line in [
        String::new(),
        "--keep: the cluster, the mesh, the traffic and the operator keep running.".to_owned(),
        format!("kubeconfig: {kc}"),
        "try:".to_owned(),
        format!("  export KUBECONFIG={kc}"),
        format!("  {kubectl} get tar -o wide"),
        format!("  {kubectl} describe tar cluster"),
        format!("  {kubectl} get pods -n mesh-0"),
        format!(
            "  {kubectl} describe pod -n mesh-0 $({kubectl} get pods -n mesh-0 -o name | head -1 | cut -d/ -f2)   # the injected linkerd-proxy env"
        ),
        format!("  curl -s http://{}/metrics", op.admin_addr()),
        format!("operator log: {}", op.log_path().display()),
        "Ctrl-C stops everything.".to_owned(),
    ] {
        ui.say(&line)?;
    }
    Ok(())
}

fn took(started: Instant) -> String {
    format!("{:.1}s", started.elapsed().as_secs_f64())
}

async fn scenario(
    config: &DemoConfig,
    layout: Layout,
    world: &mut World,
    ui: &mut Ui,
    json_out: &mut (dyn Write + Send),
) -> Result<DemoReport, DemoError> {
    ui.say(&format!(
        "trust-rotation-operator demo: {} meshed pods ({} namespaces x {} Deployments x {} replicas), policies {}",
        layout.pods(),
        layout.namespaces,
        layout.deployments,
        layout.replicas,
        config.policies.spec_value().to_lowercase()
    ))?;
    let sim = SimConfig {
        control_plane_replicas: config.control_plane_replicas,
        issuer_reload_lag: config.identity_reload_lag,
        ..SimConfig::default()
    };
    ui.say(&format!(
        "timescale: leaf certificates live {}s (Linkerd: 24h), refresh interval during the rotation {}",
        sim.leaf_lifetime.as_secs(),
        config.refresh_interval
    ))?;
    if config.control_plane_replicas > 1 {
        ui.say(&format!(
            "control plane: {} replicas of each Deployment; every second identity controller replica loads a renewed issuer {:?} late",
            config.control_plane_replicas, config.identity_reload_lag
        ))?;
    }

    let started = Instant::now();
    ui.say("[1/5] starting the local control plane (etcd, kube-apiserver, kube-controller-manager; the first run builds them, about 10 minutes)")?;
    let cp = ControlPlane::start_with_options(Options {
        audited_users: vec![OPERATOR_USER.to_owned()],
        ..Default::default()
    })
    .await?;
    let client = cp.client();
    let server = cp.server().to_owned();
    world.control_plane = Some(cp);
    ui.say(&format!(
        "      control plane at {server} ready in {}",
        took(started)
    ))?;

    let step = Instant::now();
    ui.say("[2/5] starting the simulated cert-manager and Linkerd control plane")?;
    let mesh = world.mesh.insert(Mesh::start(client.clone(), sim).await?);
    ui.say(&format!(
        "      trust anchor, identity issuer and control plane up in {}",
        took(step)
    ))?;

    let step = Instant::now();
    let namespaces = layout.namespace_names();
    ui.say(&format!(
        "[3/5] deploying {} meshed pods in {}",
        layout.pods(),
        namespaces.join(", ")
    ))?;
    let rollout_timeout =
        Duration::from_secs(120) + Duration::from_millis(300 * layout.pods() as u64);
    mesh.add_workloads(
        &namespaces,
        layout.deployments,
        layout.replicas as i32,
        rollout_timeout,
    )
    .await?;
    ui.say(&format!(
        "      {} pods running in {}",
        layout.pods(),
        took(step)
    ))?;

    let step = Instant::now();
    ui.say("[4/5] installing the operator: CRD, TrustAnchorRotation `cluster`, operator, webhook")?;
    install_crd(&client).await?;
    apply_rotation(&client, config).await?;
    let cp = world.control_plane.as_ref().expect("started above");
    let op = world.operator.insert(start_operator(config, cp).await?);
    op.register_webhook(&client).await?;
    let old_anchor = {
        let mesh = world.mesh.as_ref().expect("started above");
        crate::sim::runbook::Runbook::new(mesh).anchor().await?
    };
    wait_bootstrapped(&client, &old_anchor.fingerprint, world).await?;
    ui.say(&format!(
        "      operator running (pid {}), webhook registered, rotation Synced on anchor {} in {}",
        world.operator.as_ref().map(|o| o.pid()).unwrap_or_default(),
        &old_anchor.fingerprint[..12],
        took(step)
    ))?;
    let pids: Vec<String> = world
        .pids()
        .iter()
        .map(|(n, p)| format!("{n}={p}"))
        .collect();
    ui.say(&format!("      processes: {}", pids.join(" ")))?;

    let mesh = world.mesh.as_mut().expect("started above");
    mesh.start_traffic(TrafficConfig::default());
    // A moment of traffic before the renewal shows the mesh healthy to begin with.
    tokio::time::sleep(Duration::from_secs(1)).await;

    ui.say("[5/5] renewing the trust anchor, as cert-manager does on schedule:")?;
    let names = mesh.names().clone();
    ui.say(&format!(
        "      $ cmctl renew -n {} {}",
        names.cert_manager_namespace, names.anchor
    ))?;
    let counter = RestartCounter::start(&client).await?;
    let t0 = Instant::now();
    let base_traffic = traffic(world);
    crate::sim::certmanager::renew(&client, &names.cert_manager_namespace, &names.anchor)
        .await
        .map_err(|e| DemoError::Sim(crate::sim::SimError::Invalid(e.to_string())))?;
    if config.break_the_order {
        let mesh = world.mesh.as_ref().expect("started above");
        break_the_order(&client, mesh, ui).await?;
    }
    let mut summary = follow(
        config,
        &client,
        world,
        ui,
        counter,
        t0,
        &base_traffic,
        &old_anchor.fingerprint,
        layout,
    )
    .await?;
    summary.after_synced = Some(after_synced(world, &summary, &base_traffic).await);
    summary.peer_gone = Some(traffic(world).since(&base_traffic).unreachable);
    ui.freeze();
    ui.say("")?;
    for line in summary.table().lines() {
        ui.say(line)?;
    }
    let op = world.operator.as_mut().expect("started above");
    op.check_alive()?;
    let peak = op.peak_memory_kib();
    let cp = world.control_plane.as_ref().expect("started above");
    let requests = cp.audited_requests(OPERATOR_USER)?;
    ui.say(&format!(
        "operator: {requests} API requests ({:.1} per meshed pod), peak memory {}",
        requests as f64 / layout.pods() as f64,
        peak.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "unknown".to_owned())
    ))?;
    if config.json {
        writeln!(json_out, "{}", summary.to_json())?;
        json_out.flush()?;
    }
    let failed = summary.failed();
    if summary.final_phase != Phase::Synced || failed > 0 {
        if world.mesh.is_some() {
            let t = traffic(world).since(&base_traffic);
            ui.say(&format!("traffic since the renewal: {t}"))?;
            let recent: Vec<_> = t.recent.iter().filter(|f| f.at >= t0).collect();
            if !recent.is_empty() {
                ui.say(&format!(
                    "the last {} of {} failed handshakes:",
                    recent.len(),
                    t.failed()
                ))?;
            }
            for f in recent {
                ui.say(&format!(
                    "  failed: {} -> {}: {} ({}), {:.1}s after the renewal",
                    f.client,
                    f.server,
                    f.reason,
                    f.rejected_by,
                    f.at.saturating_duration_since(t0).as_secs_f64()
                ))?;
            }
        }
        return Err(DemoError::Unsafe {
            final_phase: summary.final_phase,
            failed,
        });
    }
    Ok(DemoReport {
        summary,
        operator_api_requests: requests,
        operator_peak_kib: peak,
    })
}

/// Starts the operator and waits until it is ready. Its ports are picked free, but another
/// process can bind one before it does: then it is started again on others, as the tests'
/// operators are.
async fn start_operator(
    config: &DemoConfig,
    cp: &ControlPlane,
) -> Result<OperatorProcess, DemoError> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        let mut op = OperatorProcess::start(&config.operator_binary, cp, &[]).await?;
        match op.wait_ready(Duration::from_secs(60)).await {
            Ok(()) => return Ok(op),
            Err(e) if attempt < ATTEMPTS && e.to_string().contains("Address already in use") => {
                tracing::info!(
                    attempt,
                    "the operator's port was taken; starting it on others"
                );
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn traffic(world: &World) -> TrafficSnapshot {
    world
        .mesh
        .as_ref()
        .and_then(|m| m.traffic())
        .unwrap_or_default()
}

/// The negative control: what a person in a hurry does, and no operator can undo. The issuer
/// is renewed right after the anchor, and once the operator has written the expanded bundle
/// (and the injector has it), the identity controller is restarted by hand onto it: it takes
/// the new issuer up at once, and its leaves reach proxies that do not trust the new anchor
/// yet.
async fn break_the_order(client: &Client, mesh: &Mesh, ui: &mut Ui) -> Result<(), DemoError> {
    let names = mesh.names();
    let runbook = crate::sim::runbook::Runbook::new(mesh);
    let new_anchor = runbook.anchor().await?;
    let renew = ManualAction::RenewCertificate {
        namespace: names.linkerd_namespace.clone(),
        name: names.identity_issuer.clone(),
    };
    ui.say(&format!(
        "      $ {}   (negative control: the issuer before any restart)",
        renew.command()
    ))?;
    // Waited for until its Secret holds the new issuer: an identity controller restarted
    // before that loads the old one, and on a busy machine the workloads could all be
    // restarted onto the expanded bundle before it loads the new one, breaking nothing.
    runbook.renew_issuer().await?;
    // Restarted before the injector has the new anchor, identity would skip the new issuer
    // (`IssuerUpdateSkipped`), and nothing would break.
    crate::sim::wait_for(
        "the proxy injector's copy of the expanded bundle",
        Duration::from_secs(60),
        || async {
            let copy = mesh.injector_bundle().unwrap_or_default();
            let has = crate::bundle::Bundle::from_pem("the injector's bundle", &copy)
                .is_ok_and(|b| b.contains(&new_anchor.fingerprint));
            Ok(has.then_some(()))
        },
    )
    .await?;
    let restart = ManualAction::RolloutRestart {
        kind: "deployment".to_owned(),
        name: crate::sim::linkerd::IDENTITY_DEPLOYMENT.to_owned(),
        namespace: names.linkerd_namespace.clone(),
    };
    ui.say(&format!(
        "      $ {}   (negative control: onto the expanded bundle at once)",
        restart.command()
    ))?;
    perform(client, &restart).await
}

/// How long the mesh is watched in its final state after the rotation is back in Synced.
const AFTER_SYNCED: Duration = Duration::from_secs(3);

/// Watches the traffic after the rotation was seen back in Synced, for [`AFTER_SYNCED`] and
/// until every handshake begun by then has ended (within the generator's timeout): a failure
/// still under way when the rows closed is counted, not dropped. `base` is the traffic the rows
/// count from, so what they do not hold is what came after.
async fn after_synced(world: &World, summary: &Summary, base: &TrafficSnapshot) -> AfterSynced {
    let started = Instant::now();
    // Every handshake begun before this mark must have ended (and been counted) before the
    // watch ends: the oldest one still under way, if any, is past it.
    let mark = traffic(world).begun;
    let give_up = AFTER_SYNCED.max(crate::sim::traffic::HANDSHAKE_TIMEOUT + Duration::from_secs(2));
    loop {
        let t = traffic(world).since(base);
        let waited = started.elapsed();
        let ended = t.oldest_under_way.is_none_or(|oldest| oldest >= mark);
        if (waited >= AFTER_SYNCED && ended) || waited >= give_up {
            let rows = summary.total();
            return AfterSynced {
                duration: waited,
                handshakes_ok: t.successes - rows.handshakes_ok,
                handshakes_failed: t.failed() - rows.handshakes_failed,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts rollout restarts: a Deployment whose pod-template restart annotations changed since
/// the last look was restarted once more (by the operator or by the demo playing a person).
struct RestartCounter {
    api: Api<Deployment>,
    seen: BTreeMap<(String, String), Vec<Option<String>>>,
    restarts: u64,
}

fn restart_marks(d: &Deployment) -> Vec<Option<String>> {
    let annotations = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    RESTART_ANNOTATIONS
        .iter()
        .map(|k| annotations.get(*k).cloned())
        .collect()
}

impl RestartCounter {
    async fn start(client: &Client) -> Result<Self, DemoError> {
        let mut c = Self {
            api: Api::all(client.clone()),
            seen: BTreeMap::new(),
            restarts: 0,
        };
        c.look().await?;
        c.restarts = 0;
        Ok(c)
    }

    async fn look(&mut self) -> Result<u64, DemoError> {
        let list = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(kube_err("listing Deployments"))?;
        for d in &list.items {
            let key = (d.namespace().unwrap_or_default(), d.name_any());
            let marks = restart_marks(d);
            match self.seen.insert(key, marks.clone()) {
                Some(before) if before != marks => self.restarts += 1,
                _ => {}
            }
        }
        Ok(self.restarts)
    }
}

#[allow(clippy::too_many_arguments)]
async fn follow(
    config: &DemoConfig,
    client: &Client,
    world: &mut World,
    ui: &mut Ui,
    mut counter: RestartCounter,
    t0: Instant,
    base: &TrafficSnapshot,
    old_anchor: &str,
    layout: Layout,
) -> Result<Summary, DemoError> {
    let tars: Api<TrustAnchorRotation> = Api::all(client.clone());
    let timeout = TIMEOUT_BASE + TIMEOUT_PER_100_PODS * (layout.pods() as u32).div_ceil(100);
    let counts = |world: &World, restarts: u64| {
        let t = traffic(world).since(base);
        Counters {
            restarts,
            handshakes_ok: t.successes,
            handshakes_failed: t.failed(),
        }
    };
    let mut timeline = Timeline::new(Phase::Synced, Duration::ZERO, Counters::default());
    let mut manual = ManualPlayer::new(config.manual_delay);
    let mut said = String::new();
    loop {
        // Deployments before status: the operator issues restarts and then writes the status
        // that explains them, so a restart seen here belongs to the phase read next (reading
        // the other way round would credit it to the phase before).
        let restarts = counter.look().await?;
        let status = rotation_status(&tars).await?;
        let at = t0.elapsed();
        let now = counts(world, restarts);
        timeline.observe(status.phase, at, now);
        let progress = Progress {
            elapsed: at,
            phase: status.phase,
            bundle: status
                .trust_bundle
                .as_ref()
                .map(|c| (c.converged_pods, c.target_pods)),
            certs: status
                .workload_certificates
                .as_ref()
                .map(|c| (c.converged_pods, c.target_pods)),
            counts: now,
            blocking: status.blocking_message.clone(),
        };
        ui.progress(&progress)?;
        // The wait for the identity controller's replicas, said where a plain progress line
        // does not show the status.
        let message = status.blocking_message.as_deref().unwrap_or_default();
        if message.contains(crate::reconcile::decide::IDENTITY_RELOAD_HOLD) && said != message {
            ui.say(&format!("           {message}"))?;
            message.clone_into(&mut said);
        }
        let done = status.phase == Phase::Synced
            && status
                .previous_anchor_fingerprint
                .as_deref()
                .is_some_and(|fp| fp != old_anchor);
        if done {
            return Ok(timeline.finish(layout.pods()));
        }
        if let Some(op) = world.operator.as_mut() {
            op.check_alive()?;
        }
        if config.policies == PolicyMode::Manual {
            manual
                .step(client, ui, status.phase, status.blocking_message.as_deref())
                .await?;
        }
        if at > timeout {
            let traffic = world
                .mesh
                .as_ref()
                .and_then(|m| m.traffic())
                .map(|t| t.to_string())
                .unwrap_or_default();
            return Err(DemoError::Timeout {
                after: timeout,
                phase: status.phase,
                blocking: status.blocking_message.unwrap_or_default(),
                traffic,
            });
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Plays the person at the keyboard in `--policies manual`: reads the commands the status asks
/// for, prints them with the reason, and runs each once, `delay` later.
struct ManualPlayer {
    delay: Duration,
    phase: Phase,
    done: BTreeSet<ManualAction>,
    due: Vec<(Instant, ManualAction)>,
}

impl ManualPlayer {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            phase: Phase::Synced,
            done: BTreeSet::new(),
            due: Vec::new(),
        }
    }

    async fn step(
        &mut self,
        client: &Client,
        ui: &mut Ui,
        phase: Phase,
        blocking: Option<&str>,
    ) -> Result<(), DemoError> {
        if phase != self.phase {
            // A new phase asks anew (the reduction restarts the same workloads again).
            self.phase = phase;
            self.done.clear();
            self.due.clear();
        }
        if let Some(message) = blocking {
            let new: Vec<ManualAction> = model::manual_actions(message)
                .into_iter()
                .filter(|a| !self.done.contains(a))
                .collect();
            if !new.is_empty() {
                ui.say(&format!(
                    "action needed ({phase}): {}",
                    model::reason(message)
                ))?;
                for a in &new {
                    ui.say(&format!("  $ {}", a.command()))?;
                }
                ui.say(&format!(
                    "  (a person would run {} now; the demo does in {}s)",
                    if new.len() == 1 { "this" } else { "these" },
                    self.delay.as_secs()
                ))?;
                let at = Instant::now() + self.delay;
                for a in new {
                    self.done.insert(a.clone());
                    self.due.push((at, a));
                }
            }
        }
        let now = Instant::now();
        let (ready, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(at, _)| *at <= now);
        self.due = later;
        for (_, action) in ready {
            perform(client, &action).await?;
            ui.say(&format!("  ran: {}", action.command()))?;
        }
        Ok(())
    }
}

/// Does what the command does, through the API.
async fn perform(client: &Client, action: &ManualAction) -> Result<(), DemoError> {
    match action {
        ManualAction::RolloutRestart {
            kind,
            name,
            namespace,
        } if kind.eq_ignore_ascii_case("deployment") => {
            crate::sim::linkerd::restart_deployment(client, namespace, name).await?;
        }
        ManualAction::RolloutRestart {
            kind,
            name,
            namespace,
        } => {
            return Err(DemoError::Usage(format!(
                "the status asks to restart {kind}/{name} in {namespace}: the demo only restarts Deployments"
            )));
        }
        ManualAction::RenewCertificate { namespace, name } => {
            crate::sim::certmanager::renew(client, namespace, name)
                .await
                .map_err(|e| DemoError::Sim(crate::sim::SimError::Invalid(e.to_string())))?;
        }
    }
    Ok(())
}

/// Installs the TrustAnchorRotation CRD and waits until it is served.
pub async fn install_crd(client: &Client) -> Result<(), DemoError> {
    crate::sim::install_crd(client, &TrustAnchorRotation::crd()).await?;
    Ok(())
}

/// The `cluster` rotation's status (empty until the operator has written one).
async fn rotation_status(
    tars: &Api<TrustAnchorRotation>,
) -> Result<crate::crd::TrustAnchorRotationStatus, DemoError> {
    Ok(tars
        .get(crate::crd::CLUSTER_ROTATION_NAME)
        .await
        .map_err(kube_err("reading TrustAnchorRotation cluster"))?
        .status
        .unwrap_or_default())
}

/// The `cluster` TrustAnchorRotation with the demo's policies.
pub async fn apply_rotation(client: &Client, config: &DemoConfig) -> Result<(), DemoError> {
    let policy = config.policies.spec_value();
    let mut restart = json!({"policy": policy});
    if let Some(n) = config.max_concurrent_workloads {
        restart["maxConcurrentWorkloads"] = json!(n);
    }
    Api::<TrustAnchorRotation>::all(client.clone())
        .patch(
            crate::crd::CLUSTER_ROTATION_NAME,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "trust.linkerd.io/v1alpha1",
                "kind": "TrustAnchorRotation",
                "metadata": {"name": crate::crd::CLUSTER_ROTATION_NAME},
                "spec": {"workloadCertificateRefreshInterval": config.refresh_interval,
                         "dataPlaneRestart": restart,
                         "issuerRenewal": {"policy": policy}}})),
        )
        .await
        .map_err(kube_err("applying TrustAnchorRotation cluster"))?;
    Ok(())
}

/// Waits until the operator has bootstrapped: Synced, bundle counted, previous anchor written.
pub async fn wait_bootstrapped(
    client: &Client,
    anchor_fingerprint: &str,
    world: &mut World,
) -> Result<(), DemoError> {
    let tars: Api<TrustAnchorRotation> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let status = rotation_status(&tars).await?;
        if status.phase == Phase::Synced
            && status.trust_bundle.is_some()
            && status.previous_anchor_fingerprint.as_deref() == Some(anchor_fingerprint)
        {
            return Ok(());
        }
        if let Some(op) = world.operator.as_mut() {
            op.check_alive()?;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(DemoError::Operator(format!(
                "TrustAnchorRotation cluster not bootstrapped after 60s: phase {}, status {:?}",
                status.phase, status.blocking_message
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
