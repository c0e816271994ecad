//! `cargo bench --bench rotation` (`make bench-rotation`): the automatic rotation at scale.
//!
//! Per mesh size, on one fresh local control plane with the simulated mesh under mTLS traffic:
//!
//! 1. Baseline, no operator at all: every workload Deployment restarted twice by plain
//!    `kubectl rollout restart` (all at once, as fast as a script can), each round waited for.
//! 2. The operator (release binary, child process) rotates the anchor, both policies
//!    Automatic: wall time from `cmctl renew` of the anchor to `Synced`, and the ratio to (1).
//! 3. API requests the operator made from its start to `Synced`, per meshed pod: counted by
//!    the API server's audit log (the operator authenticates as its own user, and only that
//!    user's requests are logged).
//! 4. The operator's peak memory: `VmHWM` of its process.
//! 5. Probe sweep: the reconciler's leaf probe (`crate::probe`, TLS to `podIP:4191` with the
//!    pod identity as SNI) over every meshed pod at the reconciler's default concurrency, run
//!    from here after the rotation; median of 3 sweeps.
//! 6. Failed handshakes during the baseline and during the rotation.
//!
//! Environment: BENCH_PODS (comma-separated sizes, default `100,1000`), BENCH_MAX_CONCURRENT
//! (`spec.dataPlaneRestart.maxConcurrentWorkloads`; default: every Deployment at once, like the
//! baseline), BENCH_REFRESH_INTERVAL (default `3s`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use trust_rotation_operator::crd::{Phase, TrustAnchorRotation};
use trust_rotation_operator::demo::model::Layout;
use trust_rotation_operator::demo::operator::OperatorProcess;
use trust_rotation_operator::demo::{
    DemoConfig, OPERATOR_USER, PolicyMode, World, apply_rotation, install_crd, wait_bootstrapped,
};
use trust_rotation_operator::reconcile::controller::ReconcilerConfig;
use trust_rotation_operator::sim::traffic::TrafficConfig;
use trust_rotation_operator::sim::{Mesh, SimConfig};
use trust_rotation_operator::testbed::{ControlPlane, Options};

type Error = Box<dyn std::error::Error>;

struct Figures {
    pods: usize,
    deployments: usize,
    max_concurrent: u32,
    baseline: Duration,
    rotation: Duration,
    requests: u64,
    peak_kib: Option<u64>,
    sweep: Duration,
    sweep_reached: usize,
    sweep_targets: usize,
    baseline_failed: u64,
    rotation_failed: u64,
    rotation_ok: u64,
}

fn main() -> Result<(), Error> {
    let sizes: Vec<usize> = std::env::var("BENCH_PODS")
        .unwrap_or_else(|_| "100,1000".to_owned())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for pods in sizes {
        eprintln!("== {pods} pods");
        match rt.block_on(bench(pods)) {
            Ok(f) => {
                print_figures(&f);
                results.push(Ok(f));
            }
            Err(e) => {
                println!("{pods} pods: FAILED: {e}");
                results.push(Err((pods, e.to_string())));
            }
        }
    }
    println!();
    println!(
        "{:>6} {:>11} {:>11} {:>7} {:>13} {:>10} {:>11} {:>15}",
        "pods",
        "rotation",
        "baseline",
        "ratio",
        "requests/pod",
        "peak RSS",
        "probe sweep",
        "failed (b/r)"
    );
    for r in &results {
        match r {
            Ok(f) => println!(
                "{:>6} {:>10.1}s {:>10.1}s {:>6.2}x {:>13.1} {:>10} {:>10.0}ms {:>15}",
                f.pods,
                f.rotation.as_secs_f64(),
                f.baseline.as_secs_f64(),
                f.rotation.as_secs_f64() / f.baseline.as_secs_f64(),
                f.requests as f64 / f.pods as f64,
                mib(f.peak_kib),
                f.sweep.as_secs_f64() * 1000.0,
                format!("{}/{}", f.baseline_failed, f.rotation_failed)
            ),
            Err((pods, e)) => println!("{pods:>6} failed: {e}"),
        }
    }
    if results.iter().any(Result::is_err) {
        return Err("at least one size failed (see above)".into());
    }
    Ok(())
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn print_figures(f: &Figures) {
    println!(
        "{} pods ({} Deployments), maxConcurrentWorkloads {}:",
        f.pods, f.deployments, f.max_concurrent
    );
    println!(
        "  rotation wall time (renewal -> Synced):        {:.1}s",
        f.rotation.as_secs_f64()
    );
    println!(
        "  plain restarts, every workload twice:          {:.1}s",
        f.baseline.as_secs_f64()
    );
    println!(
        "  ratio:                                         {:.2}x",
        f.rotation.as_secs_f64() / f.baseline.as_secs_f64()
    );
    println!(
        "  operator API requests:                         {} ({:.1} per pod)",
        f.requests,
        f.requests as f64 / f.pods as f64
    );
    println!(
        "  operator peak memory (VmHWM):                  {}",
        mib(f.peak_kib)
    );
    println!(
        "  probe sweep ({} targets, {} answered): {:.0}ms",
        f.sweep_targets,
        f.sweep_reached,
        f.sweep.as_secs_f64() * 1000.0
    );
    println!(
        "  failed handshakes: baseline {}, rotation {} ({} ok during the rotation)",
        f.baseline_failed, f.rotation_failed, f.rotation_ok
    );
}

fn log(started: Instant, what: &str) {
    eprintln!("[{:7.1}s] {what}", started.elapsed().as_secs_f64());
}

async fn bench(pods: usize) -> Result<Figures, Error> {
    let started = Instant::now();
    let layout = Layout::for_pods(pods)?;
    let deployments = layout.namespaces * layout.deployments;
    let max_concurrent: u32 = match std::env::var("BENCH_MAX_CONCURRENT") {
        Ok(v) => v.parse()?,
        Err(_) => deployments as u32,
    };
    let refresh = std::env::var("BENCH_REFRESH_INTERVAL").unwrap_or_else(|_| "3s".to_owned());
    let mut world = World::default();
    let cp = ControlPlane::start_with_options(Options {
        audited_users: vec![OPERATOR_USER.to_owned()],
        ..Default::default()
    })
    .await?;
    let client = cp.client();
    world.control_plane = Some(cp);
    log(started, "control plane ready");
    let mesh = world
        .mesh
        .insert(Mesh::start(client.clone(), SimConfig::default()).await?);
    let namespaces = layout.namespace_names();
    mesh.add_workloads(
        &namespaces,
        layout.deployments,
        layout.replicas as i32,
        Duration::from_secs(120 + pods as u64),
    )
    .await?;
    log(
        started,
        &format!("{} pods running ({layout:?})", layout.pods()),
    );
    mesh.start_traffic(TrafficConfig::default());

    // 1. Baseline: two rounds of plain rollout restarts of every workload, no operator.
    let before = mesh.traffic().unwrap_or_default();
    let t = Instant::now();
    for round in 1..=2 {
        restart_all(&client, &namespaces, Duration::from_secs(600)).await?;
        log(started, &format!("baseline round {round} done"));
    }
    let baseline = t.elapsed();
    let baseline_failed = mesh.traffic().unwrap_or_default().since(&before).failed();

    // 2. The operator's rotation.
    install_crd(&client).await?;
    let config = DemoConfig {
        policies: PolicyMode::Automatic,
        refresh_interval: refresh,
        max_concurrent_workloads: Some(max_concurrent),
        ..Default::default()
    };
    apply_rotation(&client, &config).await?;
    let cp = world.control_plane.as_ref().expect("started");
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trust-rotation-operator"));
    let op = world
        .operator
        .insert(OperatorProcess::start(&binary, cp, &[]).await?);
    op.wait_ready(Duration::from_secs(120)).await?;
    op.register_webhook(&client).await?;
    let old_anchor = {
        let mesh = world.mesh.as_ref().expect("started");
        trust_rotation_operator::sim::runbook::Runbook::new(mesh)
            .anchor()
            .await?
    };
    wait_bootstrapped(&client, &old_anchor.fingerprint, &mut world).await?;
    log(
        started,
        "operator ready, rotation Synced; renewing the anchor",
    );
    let mesh = world.mesh.as_ref().expect("started");
    let names = mesh.names().clone();
    let before = mesh.traffic().unwrap_or_default();
    let t = Instant::now();
    trust_rotation_operator::sim::certmanager::renew(
        &client,
        &names.cert_manager_namespace,
        &names.anchor,
    )
    .await?;
    let tars: Api<TrustAnchorRotation> = Api::all(client.clone());
    let mut phase = Phase::Synced;
    let timeout = Duration::from_secs(300 + pods as u64);
    loop {
        let status = tars.get("cluster").await?.status.unwrap_or_default();
        if status.phase != phase {
            phase = status.phase;
            log(started, &format!("{phase}"));
        }
        if status.phase == Phase::Synced
            && status
                .previous_anchor_fingerprint
                .as_deref()
                .is_some_and(|fp| fp != old_anchor.fingerprint)
        {
            break;
        }
        if t.elapsed() > timeout {
            return Err(format!(
                "rotation not Synced after {timeout:?}: {phase}: {}",
                status.blocking_message.unwrap_or_default()
            )
            .into());
        }
        if let Some(op) = world.operator.as_mut() {
            op.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rotation = t.elapsed();
    let mesh = world.mesh.as_ref().expect("started");
    let during = mesh.traffic().unwrap_or_default().since(&before);
    let op = world.operator.as_ref().expect("started");
    let peak_kib = op.peak_memory_kib();
    let requests = world
        .control_plane
        .as_ref()
        .expect("started")
        .audited_requests(OPERATOR_USER)?;

    // 5. Probe sweeps over every meshed pod, as the reconciler does them.
    let mut sweeps = Vec::new();
    let (mut reached, mut targets) = (0, 0);
    for _ in 0..3 {
        let (d, r, n) = probe_sweep(&client).await?;
        sweeps.push(d);
        (reached, targets) = (r, n);
    }
    sweeps.sort();
    log(started, "done; stopping");
    world.stop();
    Ok(Figures {
        pods: layout.pods(),
        deployments,
        max_concurrent,
        baseline,
        rotation,
        requests,
        peak_kib,
        sweep: sweeps[1],
        sweep_reached: reached,
        sweep_targets: targets,
        baseline_failed,
        rotation_failed: during.failed(),
        rotation_ok: during.successes,
    })
}

/// `kubectl rollout restart deployment -n <ns>` for every namespace at once, then waits until
/// every rollout is complete.
async fn restart_all(
    client: &kube::Client,
    namespaces: &[String],
    timeout: Duration,
) -> Result<(), Error> {
    let restarts = namespaces.iter().map(|ns| async move {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        for d in api.list(&ListParams::default()).await?.items {
            trust_rotation_operator::sim::linkerd::restart_deployment(client, ns, &d.name_any())
                .await
                .map_err(|e| kube::Error::Service(e.to_string().into()))?;
        }
        Ok::<_, kube::Error>(())
    });
    for r in futures::future::join_all(restarts).await {
        r?;
    }
    let started = Instant::now();
    let api: Api<Deployment> = Api::all(client.clone());
    loop {
        // A just-patched Deployment may not have been seen by its controller yet: complete
        // means observed at its latest generation, every replica updated and available.
        let list = api.list(&ListParams::default()).await?;
        let pending = list
            .items
            .iter()
            .filter(|d| namespaces.contains(&d.namespace().unwrap_or_default()))
            .filter(|d| !trust_rotation_operator::sim::linkerd::rollout_complete(d))
            .count();
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!("{pending} rollouts not complete after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One sweep of the reconciler's leaf probe over every running meshed pod: (time, answered,
/// targets).
async fn probe_sweep(client: &kube::Client) -> Result<(Duration, usize, usize), Error> {
    let defaults = ReconcilerConfig::default();
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels("linkerd.io/control-plane-ns"))
        .await?;
    let targets: Vec<(std::net::SocketAddr, String)> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let ip: std::net::IpAddr = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let sa = p
                .spec
                .as_ref()?
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            let identity = format!(
                "{sa}.{}.serviceaccount.identity.{}.{}",
                p.namespace().unwrap_or_default(),
                defaults.linkerd_namespace,
                defaults.trust_domain
            );
            Some((std::net::SocketAddr::new(ip, 4191), identity))
        })
        .collect();
    let n = targets.len();
    let client_config = trust_rotation_operator::probe::client_config();
    let t = Instant::now();
    let reached = futures::stream::iter(targets)
        .map(|(addr, identity)| {
            let cc = client_config.clone();
            async move {
                trust_rotation_operator::probe::probe_chain(
                    cc,
                    addr,
                    &identity,
                    defaults.probe_timeout,
                )
                .await
                .is_ok_and(|chain| !chain.is_empty())
            }
        })
        .buffer_unordered(defaults.probe_concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    Ok((t.elapsed(), reached, n))
}
