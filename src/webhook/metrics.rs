//! The webhook's Prometheus metrics, registered in the one Registry that `run` builds.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::review::Outcome;
use crate::watch::WatchErrors;

/// Admission latency buckets, seconds: from 50 µs (a typical pod) to 250 ms (far beyond the
/// webhook's timeout budget share).
const LATENCY_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum OutcomeValue {
    patched,
    unchanged,
    skipped,
    invalid,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: OutcomeValue,
}

pub struct WebhookMetrics {
    /// The family's four counters, looked up once: a label lookup per admission (a lock and a
    /// SipHash) was a measurable share of the webhook's cost.
    admissions: [Counter; 4],
    latency: Histogram,
    /// Pod CREATEs allowed unpatched because the rotation view had not synced yet.
    pub unsynced_admissions: Counter,
    /// Pods whose `config.linkerd.io/proxy-additional-env` was not JSON, not a list, or not a
    /// list of EnvVars (left untouched).
    pub invalid_additional_env: Counter,
    /// notAfter of the serving certificate, Unix seconds.
    pub serving_certificate_not_after: Gauge,
    /// 1 once the rotation view has synced from its watches.
    pub view_synced: Gauge,
    /// Failed attempts of the view's watches (each retried).
    pub view_watch_errors: WatchErrors,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let family = Family::<OutcomeLabels, Counter>::default();
        let admissions = [
            OutcomeValue::patched,
            OutcomeValue::unchanged,
            OutcomeValue::skipped,
            OutcomeValue::invalid,
        ]
        .map(|outcome| family.get_or_create(&OutcomeLabels { outcome }).clone());
        let m = Arc::new(Self {
            admissions,
            latency: Histogram::new(LATENCY_BUCKETS),
            unsynced_admissions: Counter::default(),
            invalid_additional_env: Counter::default(),
            serving_certificate_not_after: Gauge::default(),
            view_synced: Gauge::default(),
            view_watch_errors: WatchErrors::register(
                registry,
                "trust_rotation_webhook_view_watch_errors",
                "Failed attempts of the webhook view's watches, by resource (each retried with backoff)",
            ),
        });
        registry.register(
            "trust_rotation_webhook_admissions",
            "Admission requests answered, by outcome (patched, unchanged, skipped, invalid)",
            family,
        );
        registry.register(
            "trust_rotation_webhook_admission_duration_seconds",
            "Time to answer one admission request, from body received to response built",
            m.latency.clone(),
        );
        registry.register(
            "trust_rotation_webhook_unsynced_admissions",
            "Pod CREATE requests allowed unpatched because the rotation view had not synced",
            m.unsynced_admissions.clone(),
        );
        registry.register(
            "trust_rotation_webhook_invalid_additional_env",
            "Pods whose config.linkerd.io/proxy-additional-env annotation was not JSON, not a list, or not a list of EnvVars (left untouched)",
            m.invalid_additional_env.clone(),
        );
        registry.register(
            "trust_rotation_webhook_serving_certificate_not_after_seconds",
            "notAfter of the webhook's serving certificate, Unix seconds",
            m.serving_certificate_not_after.clone(),
        );
        registry.register(
            "trust_rotation_webhook_view_synced",
            "1 once the webhook's view of the rotation has synced from its watches",
            m.view_synced.clone(),
        );
        m
    }

    /// A request refused before it reached the handler (413, or a body cut short): counted as
    /// invalid, with no latency (nothing was reviewed).
    pub fn refused(&self) {
        self.count(Outcome::Invalid);
    }

    pub fn observe(&self, outcome: Outcome, elapsed: Duration) {
        self.count(outcome);
        self.latency.observe(elapsed.as_secs_f64());
    }

    fn count(&self, outcome: Outcome) {
        let index = match outcome {
            Outcome::Patched => 0,
            Outcome::Unchanged => 1,
            Outcome::Skipped => 2,
            Outcome::Invalid => 3,
        };
        self.admissions[index].inc();
    }
}
