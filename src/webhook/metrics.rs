//! The webhook's Prometheus metrics, registered in the one Registry that `run` builds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Re-reads of the serving certificate files that could not be used (the served one kept).
    pub serving_certificate_reload_failures: Counter,
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
            serving_certificate_reload_failures: Counter::default(),
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
            "Pod CREATE reviews whose config.linkerd.io/proxy-additional-env annotation was not JSON, not a list, or not a list of EnvVars (left untouched); a pod the injector changes is reviewed twice",
            m.invalid_additional_env.clone(),
        );
        registry.register(
            "trust_rotation_webhook_serving_certificate_not_after_seconds",
            "notAfter of the webhook's serving certificate, Unix seconds",
            m.serving_certificate_not_after.clone(),
        );
        registry.register(
            "trust_rotation_webhook_serving_certificate_reload_failures",
            "Re-reads of the serving certificate files that could not be used (unreadable, not PEM, or a key that is not the certificate's); the certificate in service is kept",
            m.serving_certificate_reload_failures.clone(),
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

/// Why a client's TLS handshake with the webhook failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client refused the serving certificate (its alert says so): a `caBundle` that is
    /// not the certificate's CA, a name the certificate lacks, an expired certificate. The API
    /// server then admits pods without the webhook (`failurePolicy: Ignore`), so this is the
    /// one a person must hear about.
    PeerRejectedCertificate,
    /// No handshake within the server's time limit.
    TimedOut,
    /// Anything else: a client that closed the connection, spoke no TLS, or offered nothing in
    /// common (port scanners, health checks that open and close a socket).
    Other,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 3] = [
        HandshakeFailure::PeerRejectedCertificate,
        HandshakeFailure::TimedOut,
        HandshakeFailure::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            HandshakeFailure::PeerRejectedCertificate => "peer_rejected_certificate",
            HandshakeFailure::TimedOut => "timed_out",
            HandshakeFailure::Other => "other",
        }
    }

    /// What a failed `accept` came to: a certificate alert from the client, or something else.
    pub fn of(error: &std::io::Error) -> Self {
        use rustls::AlertDescription as Alert;
        // Go's client (the API server) sends bad_certificate for a certificate it cannot
        // verify; rustls sends unknown_ca, or decrypt_error when a CA of the same name did not
        // sign it (the signature does not verify).
        let alert = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        match alert {
            Some(rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::DecryptError,
            )) => HandshakeFailure::PeerRejectedCertificate,
            _ => HandshakeFailure::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The webhook's failed TLS handshakes, counted by [`HandshakeFailure`]; a client that refuses
/// the serving certificate is also logged, at most once a minute.
#[derive(Default)]
pub struct HandshakeFailures {
    counters: [Counter; 3],
    /// When the last warning was logged, and the refusals since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl HandshakeFailures {
    /// How often a refused certificate is logged at most.
    const WARN_EVERY: Duration = Duration::from_secs(60);

    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let family = Family::<ReasonLabels, Counter>::default();
        let counters = HandshakeFailure::ALL.map(|failure| {
            family
                .get_or_create(&ReasonLabels {
                    reason: failure.label(),
                })
                .clone()
        });
        registry.register(
            "trust_rotation_webhook_tls_handshake_failures",
            "TLS handshakes with the webhook that failed, by reason (peer_rejected_certificate: the client refused the serving certificate, and the API server admits pods without the webhook meanwhile)",
            family,
        );
        Arc::new(Self {
            counters,
            ..Default::default()
        })
    }

    pub fn record(&self, failure: HandshakeFailure, peer: std::net::SocketAddr, error: &str) {
        self.counters[failure as usize].inc();
        if failure != HandshakeFailure::PeerRejectedCertificate {
            tracing::debug!(%peer, error, reason = failure.label(), "TLS handshake failed");
            return;
        }
        let mut warned = self.warned.lock().expect("handshake warning state");
        warned.1 += 1;
        let now = Instant::now();
        if warned
            .0
            .is_some_and(|at| now.duration_since(at) < Self::WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            %peer,
            error,
            refusals = warned.1,
            "a client refused the webhook's serving certificate; the API server admits pods without this webhook meanwhile (failurePolicy: Ignore): check the MutatingWebhookConfiguration's caBundle and the names and dates of the certificate"
        );
        *warned = (Some(now), 0);
    }
}
