//! The reconciler's Prometheus metrics (DESIGN.md "Observability"), registered in the one
//! Registry that `run` builds. The names in DESIGN.md are the reference's, kept exactly; the
//! rest are ours. Every label value is bounded: phases are a fixed set, and each `_info`
//! family holds one series at a time (the current fingerprint).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::model::{Leaf, Observed};
use crate::crd::{Phase, TrustAnchorRotationStatus};
use crate::watch::WatchErrors;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FingerprintLabels {
    fingerprint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum CertificateValue {
    trust_anchor,
    previous_anchor,
    identity_issuer,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: CertificateValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ProbeValue {
    /// The live leaf is signed by the active issuer.
    issuer,
    /// A leaf from another issuer (not refreshed yet).
    other_issuer,
    /// No handshake: not converged.
    unreachable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    result: ProbeValue,
}

pub struct ReconcileMetrics {
    phase: Family<PhaseLabels, Gauge>,
    trust_bundle_converged: Gauge,
    trust_bundle_target: Gauge,
    certificates_converged: Gauge,
    certificates_target: Gauge,
    active_issuer: Family<FingerprintLabels, Gauge>,
    previous_anchor: Family<FingerprintLabels, Gauge>,
    refresh_interval_seconds: Gauge,
    not_after: Family<CertificateLabels, Gauge>,
    transitions: Counter,
    bundle_restores: Counter,
    bundle_contested: Gauge,
    probes: Family<ProbeLabels, Counter>,
    /// Reconcile passes that failed on an API error (retried).
    pub errors: Counter,
    /// 1 while this replica holds the leader Lease and runs the reconciler.
    pub leader: Gauge,
    /// Failed attempts of the reconciler's watches (each retried).
    pub watch_errors: WatchErrors,
    /// The reconciler's watches whose last attempt failed: while any does, it decides nothing.
    pub watches_failing: Gauge,
}

impl ReconcileMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Arc::new(Self {
            phase: Family::default(),
            trust_bundle_converged: Gauge::default(),
            trust_bundle_target: Gauge::default(),
            certificates_converged: Gauge::default(),
            certificates_target: Gauge::default(),
            active_issuer: Family::default(),
            previous_anchor: Family::default(),
            refresh_interval_seconds: Gauge::default(),
            not_after: Family::default(),
            transitions: Counter::default(),
            bundle_restores: Counter::default(),
            bundle_contested: Gauge::default(),
            probes: Family::default(),
            errors: Counter::default(),
            leader: Gauge::default(),
            watches_failing: Gauge::default(),
            watch_errors: WatchErrors::register(
                registry,
                "trust_rotation_reconciler_watch_errors",
                "Failed attempts of the reconciler's watches, by resource (each retried with backoff)",
            ),
        });
        let r = registry;
        r.register(
            "trust_rotation_phase",
            "The rotation's phase: 1 for the current one, 0 for the others",
            m.phase.clone(),
        );
        r.register(
            "trust_rotation_trust_bundle_converged_pods",
            "Meshed workload pods (control plane excluded) whose proxy holds the desired trust bundle",
            m.trust_bundle_converged.clone(),
        );
        r.register(
            "trust_rotation_trust_bundle_target_pods",
            "Meshed workload pods counted for trust-bundle convergence: running or starting (Pending), control plane excluded",
            m.trust_bundle_target.clone(),
        );
        r.register(
            "trust_rotation_workload_certificates_converged_pods",
            "Meshed pods whose live leaf is signed by the active issuer",
            m.certificates_converged.clone(),
        );
        r.register(
            "trust_rotation_workload_certificates_target_pods",
            "Running meshed pods counted for workload-certificate convergence, control plane included",
            m.certificates_target.clone(),
        );
        r.register(
            "trust_rotation_active_issuer_info",
            "Fingerprint of the identity issuer in use (one series)",
            m.active_issuer.clone(),
        );
        r.register(
            "trust_rotation_previous_anchor_info",
            "Fingerprint of the anchor in the previous-anchor Secret (one series)",
            m.previous_anchor.clone(),
        );
        r.register(
            "trust_rotation_workload_certificate_refresh_interval_seconds",
            "The rotation's accelerated proxy refresh interval, from PropagatingTrustRoots until RemovingOldTrustRoots (the webhook gives it to new pods through RenewingWorkloadCerts); 0 when none",
            m.refresh_interval_seconds.clone(),
        );
        r.register(
            "trust_rotation_certificate_not_after_seconds",
            "notAfter of the trust anchor, previous anchor and identity issuer, Unix seconds",
            m.not_after.clone(),
        );
        r.register(
            "trust_rotation_phase_transitions",
            "Phase transitions this replica has made",
            m.transitions.clone(),
        );
        r.register(
            "trust_rotation_trust_bundle_restores",
            "Restores of a trust bundle another writer overwrote after the operator wrote it",
            m.bundle_restores.clone(),
        );
        r.register(
            "trust_rotation_trust_bundle_contested",
            "1 while the TrustBundleContested condition is True: another writer keeps overwriting the trust bundle",
            m.bundle_contested.clone(),
        );
        r.register(
            "trust_rotation_probes",
            "TLS probes of proxies' live leaves, by result",
            m.probes.clone(),
        );
        r.register(
            "trust_rotation_reconcile_errors",
            "Reconcile passes that failed on an API error (retried)",
            m.errors.clone(),
        );
        r.register(
            "trust_rotation_leader",
            "1 while this replica holds the leader Lease and runs the reconciler",
            m.leader.clone(),
        );
        r.register(
            "trust_rotation_reconciler_watches_failing",
            "The reconciler's watches whose last attempt failed and that have not listed since; while any does, the reconciler holds",
            m.watches_failing.clone(),
        );
        m
    }

    /// Publishes what one reconcile pass saw and decided.
    pub fn record(
        &self,
        before: &TrustAnchorRotationStatus,
        after: &TrustAnchorRotationStatus,
        observed: &Observed,
    ) {
        for phase in Phase::ALL {
            self.phase
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .set(i64::from(phase == after.phase));
        }
        if before.phase != after.phase {
            self.transitions.inc();
        }
        if after.bundle_overwrites.last() != before.bundle_overwrites.last() {
            self.bundle_restores.inc();
        }
        self.bundle_contested
            .set(i64::from(after.conditions.iter().any(|c| {
                c.type_ == crate::reconcile::decide::CONTESTED_CONDITION
                    && c.status == crate::crd::ConditionStatus::True
            })));
        let (bc, bt) = counts(after.trust_bundle.as_ref());
        self.trust_bundle_converged.set(bc);
        self.trust_bundle_target.set(bt);
        let (cc, ct) = counts(after.workload_certificates.as_ref());
        self.certificates_converged.set(cc);
        self.certificates_target.set(ct);
        one_series(
            &self.active_issuer,
            after.active_issuer_fingerprint.as_deref(),
        );
        one_series(
            &self.previous_anchor,
            after.previous_anchor_fingerprint.as_deref(),
        );
        self.refresh_interval_seconds.set(
            after
                .workload_certificate_refresh_interval
                .as_deref()
                .and_then(|i| crate::duration::parse(i).ok())
                .map_or(0, |d| d.as_secs() as i64),
        );
        let issuer = observed.issuer.as_ref().ok().map(|i| &i.cert);
        let previous = observed.previous.as_ref().ok().and_then(|p| p.as_ref());
        for (which, cert) in [
            (
                CertificateValue::trust_anchor,
                observed.anchor.as_ref().ok(),
            ),
            (CertificateValue::previous_anchor, previous),
            (CertificateValue::identity_issuer, issuer),
        ] {
            let labels = CertificateLabels { certificate: which };
            match cert {
                Some(c) => {
                    self.not_after.get_or_create(&labels).set(c.not_after);
                }
                None => {
                    self.not_after.remove(&labels);
                }
            }
        }
    }

    /// Counts the TLS probes of a look, by what each found (the pods already seen with a leaf
    /// from the current issuer, which are not probed again, are not among them).
    pub fn probed<'l>(&self, leaves: impl IntoIterator<Item = &'l Leaf>) {
        for leaf in leaves {
            let result = match leaf {
                Leaf::FromIssuer => ProbeValue::issuer,
                Leaf::FromOtherIssuer => ProbeValue::other_issuer,
                Leaf::Unreachable(_) => ProbeValue::unreachable,
            };
            self.probes.get_or_create(&ProbeLabels { result }).inc();
        }
    }

    /// What a replica that stopped leading says of the rotation: nothing. Its phase and
    /// fingerprint series go and its gauges fall to 0, as on a replica that never led, so that
    /// dashboards summing or taking the max over replicas see the leader's alone. Counters keep
    /// their counts.
    pub fn forget_rotation(&self) {
        self.phase.clear();
        self.active_issuer.clear();
        self.previous_anchor.clear();
        self.not_after.clear();
        for gauge in [
            &self.trust_bundle_converged,
            &self.trust_bundle_target,
            &self.certificates_converged,
            &self.certificates_target,
            &self.refresh_interval_seconds,
            &self.bundle_contested,
            &self.watches_failing,
        ] {
            gauge.set(0);
        }
    }
}

fn counts(c: Option<&crate::crd::ConvergenceStatus>) -> (i64, i64) {
    c.map_or((0, 0), |c| {
        (i64::from(c.converged_pods), i64::from(c.target_pods))
    })
}

/// Keeps exactly one series (the current value) in an `_info` family, or none.
fn one_series(family: &Family<FingerprintLabels, Gauge>, fingerprint: Option<&str>) {
    let current = fingerprint.map(|f| FingerprintLabels {
        fingerprint: f.to_owned(),
    });
    let stale = current
        .as_ref()
        .is_none_or(|labels| family.get(labels).is_none());
    if stale {
        family.clear();
    }
    if let Some(labels) = current {
        family.get_or_create(&labels).set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ConvergenceStatus;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    fn observed() -> Observed {
        Observed {
            now: 0,
            anchor: Err(super::super::model::Problem {
                object: "Secret linkerd/linkerd-trust-anchor".to_owned(),
                message: "not found".to_owned(),
            }),
            previous: Ok(None),
            bundle: Ok(None),
            issuer: Err(super::super::model::Problem {
                object: "Secret linkerd/linkerd-identity-issuer".to_owned(),
                message: "not found".to_owned(),
            }),
            control_plane: vec![],
            pods: vec![],
            starting: vec![],
            draining: vec![],
            restart_markers: Default::default(),
            refused_restarts: Default::default(),
            held_anchors: Vec::new(),
            bundle_meta: Default::default(),
            baked_templates: Default::default(),
            issuer_reload: None,
        }
    }

    #[test]
    fn the_reference_names_and_one_series_per_info_family() {
        let mut registry = Registry::default();
        let m = ReconcileMetrics::register(&mut registry);
        let before = TrustAnchorRotationStatus::default();
        let mut after = TrustAnchorRotationStatus {
            phase: Phase::PropagatingTrustRoots,
            active_issuer_fingerprint: Some("aa".to_owned()),
            previous_anchor_fingerprint: Some("bb".to_owned()),
            workload_certificate_refresh_interval: Some("5m".to_owned()),
            trust_bundle: Some(ConvergenceStatus {
                converged_pods: 3,
                target_pods: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        m.record(&before, &after, &observed());
        let t = text(&registry);
        for line in [
            "trust_rotation_phase{phase=\"PropagatingTrustRoots\"} 1",
            "trust_rotation_phase{phase=\"Synced\"} 0",
            "trust_rotation_trust_bundle_converged_pods 3",
            "trust_rotation_trust_bundle_target_pods 7",
            "trust_rotation_workload_certificates_target_pods 0",
            "trust_rotation_active_issuer_info{fingerprint=\"aa\"} 1",
            "trust_rotation_previous_anchor_info{fingerprint=\"bb\"} 1",
            "trust_rotation_workload_certificate_refresh_interval_seconds 300",
            "trust_rotation_phase_transitions_total 1",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }

        // A new issuer replaces the old series instead of adding one; no interval is 0.
        let before = after.clone();
        after.active_issuer_fingerprint = Some("cc".to_owned());
        after.workload_certificate_refresh_interval = None;
        m.record(&before, &after, &observed());
        let t = text(&registry);
        assert!(t.contains("trust_rotation_active_issuer_info{fingerprint=\"cc\"} 1"));
        assert!(!t.contains("fingerprint=\"aa\""), "{t}");
        assert!(t.contains("trust_rotation_workload_certificate_refresh_interval_seconds 0"));
        assert!(
            t.contains("trust_rotation_phase_transitions_total 1"),
            "{t}"
        );
        assert!(
            t.contains("trust_rotation_trust_bundle_restores_total 0"),
            "{t}"
        );
        assert!(t.contains("trust_rotation_trust_bundle_contested 0"), "{t}");
    }

    /// A restore is counted once, on the pass that made it; the contest gauge follows the
    /// condition.
    #[test]
    fn restores_are_counted_and_the_contest_shown() {
        use crate::crd::{BundleOverwrite, Condition, ConditionStatus};
        let mut registry = Registry::default();
        let m = ReconcileMetrics::register(&mut registry);
        let at = |s| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(s).unwrap(),
            )
        };
        let before = TrustAnchorRotationStatus::default();
        let mut after = before.clone();
        after.bundle_overwrites.push(BundleOverwrite {
            restored_at: at(100),
            replaced_version: Some("1".to_owned()),
            field_managers: vec!["helm".to_owned()],
        });
        m.record(&before, &after, &observed());
        m.record(&after, &after, &observed());
        let mut contested = after.clone();
        contested.bundle_overwrites.push(BundleOverwrite {
            restored_at: at(160),
            replaced_version: Some("2".to_owned()),
            field_managers: vec!["helm".to_owned()],
        });
        contested.conditions.push(Condition {
            type_: crate::reconcile::decide::CONTESTED_CONDITION.to_owned(),
            status: ConditionStatus::True,
            reason: "OverwrittenRepeatedly".to_owned(),
            message: String::new(),
            last_transition_time: at(160),
        });
        m.record(&after, &contested, &observed());
        let t = text(&registry);
        assert!(
            t.contains("trust_rotation_trust_bundle_restores_total 2"),
            "{t}"
        );
        assert!(t.contains("trust_rotation_trust_bundle_contested 1"), "{t}");
    }
}
