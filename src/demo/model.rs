//! The demo's sans-IO parts: the mesh layout for `--pods N`, the phase timeline, the summary
//! table and JSON (both from one [`Summary`]), the progress block, and reading the manual
//! actions a person must take out of the rotation's `blockingMessage`.

use std::time::Duration;

use serde::Serialize;

use crate::crd::Phase;

/// Most namespaces, Deployments per namespace and replicas per Deployment the layout uses.
const MAX_NAMESPACES: usize = 10;
const MAX_DEPLOYMENTS: usize = 25;
const MAX_REPLICAS: usize = 10;
/// Largest mesh `--pods` accepts (every bound above at once).
pub const MAX_PODS: usize = MAX_NAMESPACES * MAX_DEPLOYMENTS * MAX_REPLICAS;

/// How the simulated workloads are spread: `namespaces` x `deployments` x `replicas` pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub namespaces: usize,
    pub deployments: usize,
    pub replicas: usize,
}

impl Layout {
    pub fn pods(&self) -> usize {
        self.namespaces * self.deployments * self.replicas
    }

    /// The layout whose pod count is closest to `pods` (exact when it factors within the
    /// bounds), as balanced as possible, with at least two replicas per Deployment when there are
    /// two pods or more (a rolling restart of one replica is not a rolling restart).
    pub fn for_pods(pods: usize) -> Result<Layout, String> {
        if pods == 0 || pods > MAX_PODS {
            return Err(format!("--pods {pods}: must be between 1 and {MAX_PODS}"));
        }
        let mut best: Option<((usize, bool, usize), Layout)> = None;
        for namespaces in 1..=MAX_NAMESPACES {
            for deployments in 1..=MAX_DEPLOYMENTS {
                for replicas in 1..=MAX_REPLICAS {
                    let l = Layout {
                        namespaces,
                        deployments,
                        replicas,
                    };
                    let dims = [namespaces, deployments, replicas];
                    let spread = dims.iter().max().unwrap_or(&0) - dims.iter().min().unwrap_or(&0);
                    let score = (l.pods().abs_diff(pods), pods >= 2 && replicas < 2, spread);
                    if best.as_ref().is_none_or(|(s, _)| score < *s) {
                        best = Some((score, l));
                    }
                }
            }
        }
        best.map(|(_, l)| l)
            .ok_or_else(|| format!("--pods {pods}: no layout"))
    }

    /// `mesh-0`, `mesh-1`, ...
    pub fn namespace_names(&self) -> Vec<String> {
        (0..self.namespaces).map(|i| format!("mesh-{i}")).collect()
    }
}

/// Cumulative counters at one moment of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Rollout restarts issued (pod-template restart annotations that changed).
    pub restarts: u64,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
}

impl Counters {
    fn since(self, earlier: Counters) -> Counters {
        Counters {
            restarts: self.restarts.saturating_sub(earlier.restarts),
            handshakes_ok: self.handshakes_ok.saturating_sub(earlier.handshakes_ok),
            handshakes_failed: self
                .handshakes_failed
                .saturating_sub(earlier.handshakes_failed),
        }
    }
}

/// One stretch of the run spent in one phase, with what happened during it. Times are since the
/// anchor renewal.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub phase: Phase,
    pub start: Duration,
    pub end: Duration,
    pub counts: Counters,
}

/// A time in whole tenths of a second.
pub fn tenths(d: Duration) -> u64 {
    (d.as_secs_f64() * 10.0).round() as u64
}

/// Tenths of a second as `12.3`.
pub fn show_tenths(t: u64) -> String {
    format!("{}.{}", t / 10, t % 10)
}

impl Segment {
    /// Its duration in tenths of a second, rounded at its ends rather than as a whole, so the
    /// rows of a table add up exactly to its total.
    pub fn tenths(&self) -> u64 {
        tenths(self.end).saturating_sub(tenths(self.start))
    }
}

/// Builds the phase segments from samples `(time since the anchor renewal, phase, counters)`.
#[derive(Clone, Debug)]
pub struct Timeline {
    closed: Vec<Segment>,
    open: (Phase, Duration, Counters),
    /// Samples that saw the open segment's phase.
    open_samples: usize,
    last: (Duration, Counters),
}

impl Timeline {
    pub fn new(phase: Phase, at: Duration, counters: Counters) -> Self {
        Self {
            closed: Vec::new(),
            open: (phase, at, counters),
            open_samples: 1,
            last: (at, counters),
        }
    }

    /// Records a sample. A new phase closes the current segment at the previous sample: the
    /// transition happened somewhere since then, and what happened in between (restarts, above
    /// all, which the operator issues in reaction to entering a phase) is credited to the new
    /// phase.
    pub fn observe(&mut self, phase: Phase, at: Duration, counters: Counters) {
        if phase != self.open.0 {
            let (p, start, start_counts) = self.open;
            let (end, end_counts) = self.last;
            self.closed.push(Segment {
                phase: p,
                start,
                end,
                counts: end_counts.since(start_counts),
            });
            self.open = (phase, end, end_counts);
            self.open_samples = 0;
        }
        self.open_samples += 1;
        self.last = (at, counters);
    }

    pub fn phase(&self) -> Phase {
        self.open.0
    }

    /// Closes the run at the last sample. A final phase seen by that sample alone (the run
    /// ends as soon as it sees the rotation back in Synced) is not a row of its own: the time
    /// since the sample before stays with the phase before.
    pub fn finish(mut self, pods: usize) -> Summary {
        let (phase, start, start_counts) = self.open;
        let counts = self.last.1.since(start_counts);
        match self.closed.last_mut() {
            Some(prev) if self.open_samples == 1 => {
                prev.end = self.last.0;
                prev.counts = Counters {
                    restarts: prev.counts.restarts + counts.restarts,
                    handshakes_ok: prev.counts.handshakes_ok + counts.handshakes_ok,
                    handshakes_failed: prev.counts.handshakes_failed + counts.handshakes_failed,
                };
            }
            _ => self.closed.push(Segment {
                phase,
                start,
                end: self.last.0,
                counts,
            }),
        }
        Summary {
            segments: self.closed,
            final_phase: phase,
            pods,
            after_synced: None,
            peer_gone: None,
        }
    }
}

/// The traffic after the run saw the rotation back in Synced: the handshakes under way at
/// that moment (each ends within the generator's timeout) and a few seconds of the mesh in its
/// final state, where an anchor dropped too early would show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AfterSynced {
    pub duration: Duration,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
}

/// The outcome of a run; the table and the JSON are both rendered from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub segments: Vec<Segment>,
    pub final_phase: Phase,
    /// Meshed workload pods (the control plane's are not counted).
    pub pods: usize,
    /// The traffic after the rows, once the run has watched it.
    pub after_synced: Option<AfterSynced>,
    /// Handshakes whose peer stopped (its pod replaced) before answering, rows and after
    /// together: neither ok nor failed.
    pub peer_gone: Option<u64>,
}

#[derive(Serialize)]
struct JsonPhase {
    phase: &'static str,
    seconds: f64,
}

#[derive(Serialize)]
struct JsonHandshakes {
    ok: u64,
    failed: u64,
}

#[derive(Serialize)]
struct JsonAfterSynced {
    seconds: f64,
    ok: u64,
    failed: u64,
}

#[derive(Serialize)]
struct JsonSummary {
    final_phase: &'static str,
    phases: Vec<JsonPhase>,
    restarts: u64,
    handshakes: JsonHandshakes,
    pods: usize,
    seconds_total: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    after_synced: Option<JsonAfterSynced>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_gone: Option<u64>,
}

impl Summary {
    pub fn total(&self) -> Counters {
        self.segments
            .iter()
            .fold(Counters::default(), |a, s| Counters {
                restarts: a.restarts + s.counts.restarts,
                handshakes_ok: a.handshakes_ok + s.counts.handshakes_ok,
                handshakes_failed: a.handshakes_failed + s.counts.handshakes_failed,
            })
    }

    /// Failed handshakes, in the rows and after them.
    pub fn failed(&self) -> u64 {
        self.total().handshakes_failed + self.after_synced.map_or(0, |a| a.handshakes_failed)
    }

    /// From the first segment's start to the last one's end, in tenths of a second: the sum of
    /// the rows.
    pub fn total_tenths(&self) -> u64 {
        self.segments.iter().map(Segment::tenths).sum()
    }

    /// One JSON object, one line.
    pub fn to_json(&self) -> String {
        let total = self.total();
        let json = JsonSummary {
            final_phase: self.final_phase.as_str(),
            phases: self
                .segments
                .iter()
                .map(|s| JsonPhase {
                    phase: s.phase.as_str(),
                    seconds: s.tenths() as f64 / 10.0,
                })
                .collect(),
            restarts: total.restarts,
            handshakes: JsonHandshakes {
                ok: total.handshakes_ok,
                failed: total.handshakes_failed,
            },
            pods: self.pods,
            seconds_total: self.total_tenths() as f64 / 10.0,
            after_synced: self.after_synced.map(|a| JsonAfterSynced {
                seconds: tenths(a.duration) as f64 / 10.0,
                ok: a.handshakes_ok,
                failed: a.handshakes_failed,
            }),
            peer_gone: self.peer_gone,
        };
        serde_json::to_string(&json).expect("plain values serialize")
    }

    /// The summary table, one row per phase segment, a total row, and the final phase.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, name: &str, d: &str, c: &Counters| {
            out.push_str(&format!(
                "{name:<28} {d:>9} {:>9} {:>14} {:>7}\n",
                c.restarts, c.handshakes_ok, c.handshakes_failed
            ));
        };
        out.push_str(&format!(
            "{:<28} {:>9} {:>9} {:>14} {:>7}\n",
            "phase", "duration", "restarts", "handshakes ok", "failed"
        ));
        for s in &self.segments {
            row(
                &mut out,
                s.phase.as_str(),
                &format!("{}s", show_tenths(s.tenths())),
                &s.counts,
            );
        }
        row(
            &mut out,
            "total",
            &format!("{}s", show_tenths(self.total_tenths())),
            &self.total(),
        );
        out.push_str(&format!(
            "final phase: {} ({} meshed pods)\n",
            self.final_phase, self.pods
        ));
        if let Some(a) = self.after_synced {
            out.push_str(&format!(
                "after Synced, {}s more: {} handshakes ok, {} failed (those under way at Synced included)\n",
                show_tenths(tenths(a.duration)),
                a.handshakes_ok,
                a.handshakes_failed
            ));
        }
        if let Some(n) = self.peer_gone {
            out.push_str(&format!(
                "peer gone (its pod stopped before it answered; neither ok nor failed): {n}\n"
            ));
        }
        out
    }
}

/// What makes a plain progress line worth printing at once: a new phase or a new restart
/// (pod counts move with every surge pod, and would print a line per tick).
pub type ProgressKey = (Phase, u64);

/// What the progress block shows, as plain values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    pub phase: Phase,
    /// `(converged, target)` meshed pods holding the desired bundle.
    pub bundle: Option<(u32, u32)>,
    /// `(converged, target)` pods whose leaf is from the active issuer.
    pub certs: Option<(u32, u32)>,
    pub counts: Counters,
    pub blocking: Option<String>,
}

fn fraction(v: Option<(u32, u32)>) -> String {
    v.map(|(c, t)| format!("{c}/{t}"))
        .unwrap_or_else(|| "-".to_owned())
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(width.saturating_sub(3)).collect();
    t.push_str("...");
    t
}

impl Progress {
    /// The refreshing block for a terminal, each line at most `width` characters.
    pub fn block(&self, width: usize) -> Vec<String> {
        let c = &self.counts;
        [
            format!(
                "phase       {}  ({:.1}s since the anchor renewal)",
                self.phase,
                self.elapsed.as_secs_f64()
            ),
            format!(
                "converged   trust bundle {}   leaf certificates {}",
                fraction(self.bundle),
                fraction(self.certs)
            ),
            format!("restarts    {}", c.restarts),
            format!(
                "handshakes  {} ok, {} failed",
                c.handshakes_ok, c.handshakes_failed
            ),
            format!("status      {}", self.blocking.as_deref().unwrap_or("-")),
        ]
        .iter()
        .map(|l| truncate(l, width))
        .collect()
    }

    /// One plain line, for logs and pipes.
    pub fn line(&self) -> String {
        let c = &self.counts;
        format!(
            "[{:6.1}s] {:<26} bundle {:>9}  certs {:>9}  restarts {:>4}  handshakes {} ok, {} failed",
            self.elapsed.as_secs_f64(),
            self.phase.as_str(),
            fraction(self.bundle),
            fraction(self.certs),
            c.restarts,
            c.handshakes_ok,
            c.handshakes_failed
        )
    }

    /// A new plain line is printed when this changes (and every few seconds regardless).
    pub fn key(&self) -> ProgressKey {
        (self.phase, self.counts.restarts)
    }
}

/// A step a person must take, as read from the rotation's `blockingMessage`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ManualAction {
    /// `kubectl rollout restart <kind>/<name> -n <namespace>`.
    RolloutRestart {
        kind: String,
        name: String,
        namespace: String,
    },
    /// `cmctl renew -n <namespace> <name>`.
    RenewCertificate { namespace: String, name: String },
}

impl ManualAction {
    /// The exact command line a person would type.
    pub fn command(&self) -> String {
        match self {
            ManualAction::RolloutRestart {
                kind,
                name,
                namespace,
            } => format!("kubectl rollout restart {kind}/{name} -n {namespace}"),
            ManualAction::RenewCertificate { namespace, name } => {
                format!("cmctl renew -n {namespace} {name}")
            }
        }
    }
}

fn clean(token: &str) -> &str {
    token.trim_end_matches(['.', ',', ';', ')'])
}

/// The commands a `blockingMessage` asks a person to run, in the order it names them.
pub fn manual_actions(message: &str) -> Vec<ManualAction> {
    let mut out = Vec::new();
    for part in message.split(';') {
        if let Some((_, rest)) = part.split_once("kubectl rollout restart ") {
            let t: Vec<&str> = rest.split_whitespace().collect();
            if let [target, "-n", ns, ..] = t.as_slice()
                && let Some((kind, name)) = clean(target).split_once('/')
            {
                out.push(ManualAction::RolloutRestart {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    namespace: clean(ns).to_owned(),
                });
            }
        }
        if let Some((_, rest)) = part.split_once("cmctl renew ") {
            let t: Vec<&str> = rest.split_whitespace().collect();
            if let ["-n", ns, name, ..] = t.as_slice() {
                out.push(ManualAction::RenewCertificate {
                    namespace: clean(ns).to_owned(),
                    name: clean(name).to_owned(),
                });
            }
        }
    }
    out
}

/// Why the rotation waits: the message up to its first `;` (the rest is the how).
pub fn reason(message: &str) -> &str {
    message.split(';').next().unwrap_or(message).trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn l(namespaces: usize, deployments: usize, replicas: usize) -> Layout {
        Layout {
            namespaces,
            deployments,
            replicas,
        }
    }

    #[test]
    fn layouts_are_exact_when_they_factor_and_balanced() {
        assert_eq!(Layout::for_pods(36).unwrap().pods(), 36);
        assert_eq!(Layout::for_pods(36).unwrap(), l(3, 3, 4));
        assert_eq!(Layout::for_pods(1000).unwrap(), l(10, 10, 10));
        assert_eq!(Layout::for_pods(100).unwrap().pods(), 100);
        assert_eq!(Layout::for_pods(8).unwrap(), l(2, 2, 2));
        assert_eq!(Layout::for_pods(1).unwrap(), l(1, 1, 1));
        // 37 is prime: the closest layout with real rolling restarts.
        let p = Layout::for_pods(37).unwrap();
        assert_eq!(p.pods().abs_diff(37), 1, "{p:?}");
        assert!(p.replicas >= 2);
        assert!(Layout::for_pods(0).is_err());
        assert!(
            Layout::for_pods(MAX_PODS + 1)
                .unwrap_err()
                .contains("--pods")
        );
        assert_eq!(
            l(2, 1, 1).namespace_names(),
            vec!["mesh-0".to_owned(), "mesh-1".to_owned()]
        );
    }

    fn c(restarts: u64, ok: u64, failed: u64) -> Counters {
        Counters {
            restarts,
            handshakes_ok: ok,
            handshakes_failed: failed,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn sample_summary() -> Summary {
        let mut t = Timeline::new(Phase::Synced, secs(0.0), c(0, 100, 0));
        t.observe(Phase::Synced, secs(0.75), c(0, 170, 0));
        t.observe(Phase::RefreshingControlPlane, secs(1.0), c(3, 190, 0));
        t.observe(Phase::RefreshingControlPlane, secs(3.0), c(3, 400, 0));
        t.observe(Phase::PropagatingTrustRoots, secs(3.5), c(5, 450, 0));
        t.observe(Phase::PropagatingTrustRoots, secs(12.26), c(12, 1300, 1));
        t.observe(Phase::Synced, secs(12.7), c(12, 1340, 1));
        t.finish(36)
    }

    #[test]
    fn timeline_segments_carry_their_own_counts() {
        let s = sample_summary();
        assert_eq!(
            s.segments,
            vec![
                Segment {
                    phase: Phase::Synced,
                    start: secs(0.0),
                    end: secs(0.75),
                    counts: c(0, 70, 0)
                },
                Segment {
                    phase: Phase::RefreshingControlPlane,
                    start: secs(0.75),
                    end: secs(3.0),
                    counts: c(3, 230, 0)
                },
                // Back in Synced at the last sample: the run ends there.
                Segment {
                    phase: Phase::PropagatingTrustRoots,
                    start: secs(3.0),
                    end: secs(12.7),
                    counts: c(9, 940, 1)
                },
            ]
        );
        assert_eq!(s.final_phase, Phase::Synced);
        assert_eq!(s.total(), c(12, 1240, 1));
        assert_eq!(s.total_tenths(), 127);
        assert_eq!(
            s.segments.iter().map(Segment::tenths).collect::<Vec<_>>(),
            vec![8, 22, 97]
        );
    }

    #[test]
    fn a_run_that_never_moved_has_one_row() {
        let t = Timeline::new(Phase::Synced, secs(0.0), c(0, 0, 0));
        let s = t.finish(4);
        assert_eq!(s.segments.len(), 1);
        assert_eq!(s.total_tenths(), 0);
    }

    #[test]
    fn an_unfinished_run_keeps_its_last_phase() {
        let mut t = Timeline::new(Phase::Synced, secs(0.0), c(0, 0, 0));
        t.observe(Phase::RenewingWorkloadCerts, secs(1.0), c(0, 10, 0));
        t.observe(Phase::RenewingWorkloadCerts, secs(4.0), c(0, 40, 2));
        let s = t.finish(4);
        assert_eq!(s.final_phase, Phase::RenewingWorkloadCerts);
        assert_eq!(s.segments.last().unwrap().counts, c(0, 40, 2));
        assert_eq!(s.segments.len(), 2);
    }

    #[test]
    fn json_has_the_issue_shape_and_the_table_numbers() {
        let s = sample_summary();
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "final_phase": "Synced",
                "phases": [
                    {"phase": "Synced", "seconds": 0.8},
                    {"phase": "RefreshingControlPlane", "seconds": 2.2},
                    {"phase": "PropagatingTrustRoots", "seconds": 9.7}
                ],
                "restarts": 12,
                "handshakes": {"ok": 1240, "failed": 1},
                "pods": 36,
                "seconds_total": 12.7
            })
        );
        assert_eq!(
            s.table(),
            "\
phase                         duration  restarts  handshakes ok  failed
Synced                            0.8s         0             70       0
RefreshingControlPlane            2.2s         3            230       0
PropagatingTrustRoots             9.7s         9            940       1
total                            12.7s        12           1240       1
final phase: Synced (36 meshed pods)
"
        );
    }

    #[test]
    fn the_traffic_after_synced_is_shown_apart_and_its_failures_count() {
        let mut s = sample_summary();
        s.after_synced = Some(AfterSynced {
            duration: secs(3.04),
            handshakes_ok: 280,
            handshakes_failed: 2,
        });
        s.peer_gone = Some(1);
        // The rows' failure and the two after them.
        assert_eq!(s.failed(), 3);
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(
            v["handshakes"],
            serde_json::json!({"ok": 1240, "failed": 1})
        );
        assert_eq!(
            v["after_synced"],
            serde_json::json!({"seconds": 3.0, "ok": 280, "failed": 2})
        );
        assert_eq!(v["peer_gone"], 1);
        let table = s.table();
        let tail: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with("final phase:"))
            .collect();
        assert_eq!(
            tail,
            [
                "final phase: Synced (36 meshed pods)",
                "after Synced, 3.0s more: 280 handshakes ok, 2 failed (those under way at Synced included)",
                "peer gone (its pod stopped before it answered; neither ok nor failed): 1",
            ]
        );
    }

    #[test]
    fn progress_renders_block_and_line() {
        let p = Progress {
            elapsed: secs(4.25),
            phase: Phase::PropagatingTrustRoots,
            bundle: Some((12, 36)),
            certs: None,
            counts: c(6, 420, 0),
            blocking: Some("24 of 36 meshed pods do not hold the expanded trust bundle yet".into()),
        };
        assert_eq!(
            p.block(70),
            vec![
                "phase       PropagatingTrustRoots  (4.2s since the anchor renewal)",
                "converged   trust bundle 12/36   leaf certificates -",
                "restarts    6",
                "handshakes  420 ok, 0 failed",
                "status      24 of 36 meshed pods do not hold the expanded trust bun...",
            ]
        );
        assert!(p.block(60).iter().all(|l| l.chars().count() <= 60));
        assert_eq!(
            p.line(),
            "[   4.2s] PropagatingTrustRoots      bundle     12/36  certs         -  restarts    6  handshakes 420 ok, 0 failed"
        );
    }

    #[test]
    fn reads_manual_actions_from_the_status() {
        let m = "5 of 8 meshed pods do not hold the expanded trust bundle yet (e.g. mesh-0/app-0-x, mesh-0/app-1-y, mesh-1/app-0-z, ...); restart their 4 workload(s): kubectl rollout restart deployment/app-0 -n mesh-0; kubectl rollout restart deployment/app-1 -n mesh-0; kubectl rollout restart deployment/app-0 -n mesh-1; ...";
        let d = |name: &str, ns: &str| ManualAction::RolloutRestart {
            kind: "deployment".into(),
            name: name.into(),
            namespace: ns.into(),
        };
        assert_eq!(
            manual_actions(m),
            vec![
                d("app-0", "mesh-0"),
                d("app-1", "mesh-0"),
                d("app-0", "mesh-1")
            ]
        );
        assert_eq!(
            reason(m),
            "5 of 8 meshed pods do not hold the expanded trust bundle yet (e.g. mesh-0/app-0-x, mesh-0/app-1-y, mesh-1/app-0-z, ...)"
        );
        let m = "the trust bundle has converged on every meshed pod; renew the identity issuer now: cmctl renew -n linkerd linkerd-identity-issuer";
        let a = manual_actions(m);
        assert_eq!(
            a,
            vec![ManualAction::RenewCertificate {
                namespace: "linkerd".into(),
                name: "linkerd-identity-issuer".into()
            }]
        );
        assert_eq!(
            a[0].command(),
            "cmctl renew -n linkerd linkerd-identity-issuer"
        );
        assert_eq!(
            d("app-0", "mesh-0").command(),
            "kubectl rollout restart deployment/app-0 -n mesh-0"
        );
        assert!(manual_actions("waiting for 3 of 11 proxies to present a leaf").is_empty());
    }
}
