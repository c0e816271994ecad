//! `cargo bench --bench webhook`: what the webhook costs.
//!
//! 1. The handler's work (decode the AdmissionReview, build the patch, encode the response)
//!    for a typical pod and a 1 MiB pod, timed per call: median and p99.
//! 2. A load run: concurrent keep-alive TLS clients posting a typical AdmissionReview to the
//!    real server (one server thread = one core), next to a no-op TLS handler on the same stack
//!    measured in the same run, rounds alternating (and which goes first alternating too) so both
//!    see the same machine noise. Reports throughput, client-observed p50/p99, the handler's own
//!    p99 under load, and the ratio.
//! 3. With BENCH_LADDER=1, the load run also measures, in the same rounds, handlers that each do
//!    one more part of the webhook's work (`LoadHandler::LADDER`: a fixed patched answer; JSON
//!    validation only; the fast-path read; the whole pure review), and prints each one's ratio
//!    and its server CPU per request over the no-op's, split into user space and the kernel:
//!    where the gap to the no-op goes; and the webhook's ratio to the `validate` rung, a handler
//!    that only checks its body is JSON.
//!
//! Figures are medians over rounds; the machines are shared and noisy, so read the ratio first.
//! Environment: BENCH_SECONDS (per round, default 3), BENCH_ROUNDS (default 5),
//! BENCH_CONNECTIONS (default 16), BENCH_LADDER (default off).

// The same in-process server and TLS client the tests use (not every item is used here).
#[allow(dead_code)]
#[path = "../tests/common/server.rs"]
mod server;
use server::{LoadHandler, accelerating_view};
#[allow(dead_code)]
#[path = "../tests/common/tls_client.rs"]
mod tls_client;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{self, Next};
use hyper::body::Bytes;
use serde_json::Value;
use trust_rotation_operator::crd::Phase;
use trust_rotation_operator::webhook::patch::RotationView;
use trust_rotation_operator::webhook::review::{Outcome, review};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/admission/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).unwrap()
}

fn no_namespace(_: &str) -> Option<String> {
    None
}

/// Percentile of sorted durations, in milliseconds.
fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times the handler's work on one body: (median ms, p99 ms).
fn time_review(body: &[u8], view: &RotationView, iterations: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let reviewed = review(body, Some(view), &no_namespace);
        let encoded = reviewed.review.to_json();
        times.push(started.elapsed());
        assert_eq!(reviewed.outcome, Outcome::Patched);
        std::hint::black_box(encoded);
    }
    times.sort();
    (pct_ms(&times, 0.5), pct_ms(&times, 0.99))
}

/// CPU time this thread has used (Linux schedstat), to express throughput per core.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// This thread's user and kernel time, in clock ticks (`/proc/thread-self/stat`, fields 14
/// and 15): coarse (10 ms), but enough over a round of seconds to split [`thread_cpu`] into the
/// server's own work and the kernel's (TCP on loopback, waking the clients).
fn thread_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // The name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let field = |n: usize| {
        after_name
            .split_whitespace()
            .nth(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field(14), field(15))
}

/// The server thread's CPU time over a round.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    total: Duration,
    /// The part spent in the kernel, from the tick counts.
    kernel_share: f64,
}

/// A server on its own thread with a single-threaded runtime: one core's worth of server.
struct ServerThread {
    addr: SocketAddr,
    /// Handler durations (the route, after the request is read), drained per round.
    handler_times: Arc<Mutex<Vec<Duration>>>,
    cpu: Arc<Mutex<CpuUse>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    fn start(tls_dir: &std::path::Path, handler: LoadHandler) -> Self {
        let (cert, key) = (tls_dir.join("tls.crt"), tls_dir.join("tls.key"));
        let handler_times = Arc::new(Mutex::new(Vec::new()));
        let cpu = Arc::new(Mutex::new(CpuUse::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (times, cpu_out) = (handler_times.clone(), cpu.clone());
        // Named, so a profiler can tell the server's samples from the clients'.
        let name = format!("server-{}", handler.name());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let app = server::load_router(handler);
                    let app = app.layer(middleware::from_fn(move |req: Request, next: Next| {
                        let times = times.clone();
                        async move {
                            let started = Instant::now();
                            let response = next.run(req).await;
                            times.lock().unwrap().push(started.elapsed());
                            response
                        }
                    }));
                    let server = server::InProcessWebhook::start_app(
                        &cert,
                        &key,
                        app,
                        Duration::from_secs(3600),
                    )
                    .await;
                    addr_tx.send(server.addr).unwrap();
                    let (cpu_start, ticks_start) = (thread_cpu(), thread_ticks());
                    // Park this runtime's thread in the runtime until told to stop.
                    loop {
                        if stop_rx.try_recv().is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let (user, kernel) = thread_ticks();
                    let (user, kernel) = (
                        user.saturating_sub(ticks_start.0),
                        kernel.saturating_sub(ticks_start.1),
                    );
                    *cpu_out.lock().unwrap() = CpuUse {
                        total: thread_cpu() - cpu_start,
                        kernel_share: kernel as f64 / (user + kernel).max(1) as f64,
                    };
                    server.stop().await;
                });
            })
            .expect("spawning the server thread");
        Self {
            addr: addr_rx.recv().unwrap(),
            handler_times,
            cpu,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the server; returns the CPU time its thread used while serving.
    fn stop(mut self) -> CpuUse {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
        *self.cpu.lock().unwrap()
    }
}

struct Round {
    per_sec: f64,
    per_cpu_sec: f64,
    /// Of the server thread's CPU time, the part spent in the kernel.
    kernel_share: f64,
    latencies: Vec<Duration>,
    handler: Vec<Duration>,
}

/// Runs `connections` keep-alive clients against a fresh server for `seconds`.
fn load_round(
    tls_dir: &std::path::Path,
    handler: LoadHandler,
    body: &Bytes,
    connections: usize,
    seconds: f64,
) -> Round {
    let server = ServerThread::start(tls_dir, handler);
    let ca = std::fs::read(tls_dir.join("ca.crt")).unwrap();
    let config = tls_client::client_config(&[&ca]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (count, latencies) = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..connections {
            conns.push(
                tls_client::Connection::open(server.addr, config.clone())
                    .await
                    .unwrap(),
            );
        }
        // Warm-up, then the measured window.
        let warm = Duration::from_millis(300);
        let measure = Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for mut conn in conns {
            let body = body.clone();
            tasks.spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let t = Instant::now();
                    if t - start > warm + measure {
                        break;
                    }
                    let (status, answer) = conn.post("/mutate", body.clone()).await.unwrap();
                    assert_eq!(status, 200);
                    if lat.is_empty() && handler != LoadHandler::Noop {
                        // Every answer but the no-op's carries the patch.
                        let answer = String::from_utf8_lossy(&answer);
                        assert!(answer.contains(r#""patchType":"JSONPatch""#), "{answer}");
                    }
                    if t - start >= warm {
                        lat.push(t.elapsed());
                    }
                }
                lat
            });
        }
        let mut all = Vec::new();
        while let Some(lat) = tasks.join_next().await {
            all.extend(lat.unwrap());
        }
        (all.len(), all)
    });
    let handler = std::mem::take(&mut *server.handler_times.lock().unwrap());
    let cpu = server.stop();
    let mut latencies = latencies;
    latencies.sort();
    let mut handler = handler;
    handler.sort();
    Round {
        per_sec: count as f64 / seconds,
        // Includes the warm-up's requests in the CPU window; counted the same way for both.
        per_cpu_sec: handler.len() as f64 / cpu.total.as_secs_f64().max(1e-9),
        kernel_share: cpu.kernel_share,
        latencies,
        handler,
    }
}

fn main() {
    // The operator's own log setup (`RUST_LOG`, default `info`), so each admission's span costs
    // here what it costs in a cluster.
    trust_rotation_operator::cli::init_logging(trust_rotation_operator::cli::LogFormat::Plain);
    let seconds: f64 = env_or("BENCH_SECONDS", 3.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let connections: usize = env_or("BENCH_CONNECTIONS", 16);

    println!("== handler work: decode + patch + encode (accelerating phase) ==");
    let typical = server::typical_body();
    let injected_pod = fixture("pod-injected");
    let injected = serde_json::to_vec(&injected_pod).unwrap();
    let mut large = fixture("pod-inject-enabled");
    large["request"]["object"]["metadata"]["annotations"]["example.com/large"] =
        Value::String("x".repeat(1024 * 1024));
    let large = serde_json::to_vec(&large).unwrap();
    // The webhook's second call for a pod, after the injector: its anchors are the trust-roots
    // ConfigMap's text, which the view knows (as `view::compute_view` builds it), or not.
    let anchors = injected_pod["request"]["object"]["spec"]["containers"][0]["env"]
        .as_array()
        .and_then(|env| {
            env.iter()
                .find(|e| e["name"] == "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS")
        })
        .and_then(|e| e["value"].as_str())
        .expect("the injected fixture's anchors");
    let fingerprint = trust_rotation_operator::bundle::Bundle::from_pem("anchors", anchors)
        .unwrap()
        .fingerprint();
    let known_anchors = RotationView::new(
        Phase::PropagatingTrustRoots,
        Some(fingerprint),
        Some("5m".to_owned()),
    )
    .with_desired_bundle_text(anchors);
    let view = accelerating_view();
    for (name, body, view, n) in [
        ("typical pod (before injection)", &typical, &view, 20_000),
        (
            "injected, anchors = ConfigMap's",
            &injected,
            &known_anchors,
            20_000,
        ),
        ("injected, other anchors", &injected, &view, 20_000),
        ("1 MiB pod", &large, &view, 100),
    ] {
        let (p50, p99) = time_review(body, view, n);
        println!(
            "{name:32} {:>9} bytes  median {p50:.4} ms  p99 {p99:.4} ms  ({n} calls)",
            body.len()
        );
    }

    let ladder = env_or("BENCH_LADDER", 0) != 0;
    let mut handlers = vec![LoadHandler::Noop];
    if ladder {
        handlers.extend(LoadHandler::LADDER);
    }
    handlers.push(LoadHandler::Webhook);
    println!(
        "== load: {connections} keep-alive TLS connections, server on one thread, {rounds} x {seconds}s rounds per handler =="
    );
    let tls_dir = tempfile::tempdir().unwrap();
    trust_rotation_operator::devcerts::write(tls_dir.path(), vec!["localhost".to_owned()]).unwrap();
    let body = Bytes::from(typical);
    let mut results: Vec<Vec<Round>> = handlers.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        // Each round starts one handler further on, so that none always runs first or last.
        let order = (0..handlers.len()).map(|i| (i + round - 1) % handlers.len());
        for i in order {
            let handler = handlers[i];
            let r = load_round(tls_dir.path(), handler, &body, connections, seconds);
            println!(
                "round {round} {:8} {:>8.0}/s  {:>8.0}/cpu-s ({:>2.0}% kernel)  p50 {:.3} ms  p99 {:.3} ms  handler p99 {:.4} ms",
                handler.name(),
                r.per_sec,
                r.per_cpu_sec,
                r.kernel_share * 100.0,
                pct_ms(&r.latencies, 0.5),
                pct_ms(&r.latencies, 0.99),
                pct_ms(&r.handler, 0.99),
            );
            results[i].push(r);
        }
    }
    let (noop, hook) = (&results[0], &results[results.len() - 1]);
    let med = |rs: &[Round], f: &dyn Fn(&Round) -> f64| median(rs.iter().map(f).collect());
    let hook_rate = med(hook, &|r| r.per_sec);
    let noop_rate = med(noop, &|r| r.per_sec);
    let hook_cpu_rate = med(hook, &|r| r.per_cpu_sec);
    let noop_cpu_rate = med(noop, &|r| r.per_cpu_sec);
    if ladder {
        // Server CPU per request in microseconds, in user space and in the kernel.
        let user_us = |rs: &[Round]| med(rs, &|r| 1e6 / r.per_cpu_sec * (1.0 - r.kernel_share));
        let kernel_us = |rs: &[Round]| med(rs, &|r| 1e6 / r.per_cpu_sec * r.kernel_share);
        println!(
            "ladder (medians; extra = server CPU per request over the no-op's {:.1} us, of which {:.1} us in user space and {:.1} us in the kernel):",
            1e6 / noop_cpu_rate,
            user_us(noop),
            kernel_us(noop)
        );
        for (handler, rs) in handlers.iter().zip(&results).skip(1) {
            let (rate, cpu_rate) = (med(rs, &|r| r.per_sec), med(rs, &|r| r.per_cpu_sec));
            println!(
                "  {:8} ratio {:.3}  per cpu-second {:.3}  extra {:>5.1} us (user {:>4.1}, kernel {:>4.1})",
                handler.name(),
                rate / noop_rate,
                cpu_rate / noop_cpu_rate,
                1e6 / cpu_rate - 1e6 / noop_cpu_rate,
                user_us(rs) - user_us(noop),
                kernel_us(rs) - kernel_us(noop)
            );
        }
        // The same comparison against a handler that does the least any handler reading its
        // input must: check that the body is JSON.
        let validate = handlers
            .iter()
            .position(|h| *h == LoadHandler::Validate)
            .map(|i| &results[i]);
        if let Some(validate) = validate {
            let rate = med(validate, &|r| r.per_sec);
            println!(
                "webhook against validate: ratio {:.3} (per cpu-second {:.3})",
                med(hook, &|r| r.per_sec) / rate,
                med(hook, &|r| r.per_cpu_sec) / med(validate, &|r| r.per_cpu_sec)
            );
        }
    }
    let p50 = med(hook, &|r| pct_ms(&r.latencies, 0.5));
    let p99 = med(hook, &|r| pct_ms(&r.latencies, 0.99));
    let handler_p99 = med(hook, &|r| pct_ms(&r.handler, 0.99));
    let ratio = hook_rate / noop_rate;
    println!(
        "medians: webhook {hook_rate:.0}/s ({hook_cpu_rate:.0} per server cpu-second), no-op {noop_rate:.0}/s ({noop_cpu_rate:.0} per cpu-second), ratio {ratio:.3} (per cpu-second {:.3})",
        hook_cpu_rate / noop_cpu_rate
    );
    println!(
        "targets: handler p99 {handler_p99:.4} ms (< 1 ms: {}), {hook_rate:.0}/s on one core (>= 3000: {}), ratio {ratio:.3} (>= 0.8: {})",
        handler_p99 < 1.0,
        hook_rate >= 3000.0,
        ratio >= 0.8
    );
    println!(
        "webhook-bench: admissions_per_sec={hook_rate:.0} p50_ms={p50:.3} p99_ms={p99:.3} noop_ratio={ratio:.3}"
    );
}
