//! The traffic generator: continuous real mTLS handshakes between random pairs of running
//! simulated proxies, each side verifying the other with its own anchors, counted by outcome.
//!
//! A handshake succeeds when the client verified the server's chain for the server's identity
//! *and* the server accepted the client's certificate (it then sends one byte), each in a full
//! handshake: a resumed TLS session checks no certificate, and linkerd2-proxy turns resumption
//! off, so one would be counted as a failure (the simulated proxies offer none). Failures are
//! classified by reason and by which side refused. A peer that stopped between being picked and
//! being dialled is counted apart (`unreachable`): that is a pod going away, not broken mTLS.
//! A peer still ready that refuses or resets the connection is a failure: only a stopped one
//! (`Proxy::stop` lowers its readiness before it closes anything) is "gone".
//!
//! The counters also keep the longest stretch without a successful handshake
//! ([`TrafficSnapshot::longest_gap_since`]), timed at each success rather than sampled, so a
//! stand-still is seen however briefly anyone looked.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::proxy::{PodRef, Proxy};

/// A handshake that takes longer than this on loopback is stuck; counted as a failure. Long
/// enough that a loaded test machine (two control planes and a hundred proxies on two cores)
/// does not pass for broken mTLS; shorter than the proxies' own (`proxy::HANDSHAKE_TIMEOUT`),
/// so a stuck handshake is counted as one here rather than as the server's hang-up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How many failures are kept with their details for reports.
const RECENT_FAILURES: usize = 20;

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureReason {
    /// The peer's chain does not lead to any of our anchors. A renewed anchor keeps its
    /// subject (`root.linkerd.cluster.local`), so webpki often finds an anchor of the right
    /// name whose key did not sign the chain: rustls then reports `BadSignature` (and the
    /// server alerts `decrypt_error`) rather than `UnknownIssuer` (`unknown_ca`). Both mean
    /// the same to a rotation, and both are counted here.
    UnknownIssuer,
    /// A certificate of the peer's chain has expired (or is not yet valid).
    Expired,
    /// The server's leaf is not for the identity we dialled.
    WrongIdentity,
    /// The server had no certificate to present.
    NoCertificate,
    /// The handshake did not finish in time.
    Timeout,
    /// Not a handshake between two proxies: a proxy refused the leaf the identity service
    /// issued it (the issuer's anchor is not among its trust anchors), so it has no new
    /// identity to make or take mTLS connections with. Counted with the failed handshakes.
    LeafRefused,
    /// Anything else, with the error text.
    Other(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::UnknownIssuer => f.write_str("unknown issuer"),
            FailureReason::Expired => f.write_str("certificate expired"),
            FailureReason::WrongIdentity => f.write_str("wrong identity"),
            FailureReason::NoCertificate => f.write_str("no certificate"),
            FailureReason::Timeout => f.write_str("timeout"),
            FailureReason::LeafRefused => f.write_str("leaf from the identity service refused"),
            FailureReason::Other(s) => write!(f, "other: {s}"),
        }
    }
}

/// Which side refused the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectedBy {
    /// The dialling proxy refused the server's certificate.
    Client,
    /// The dialled proxy refused the client's certificate.
    Server,
    /// Neither, or unknown (timeouts, I/O errors).
    Neither,
}

impl fmt::Display for RejectedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectedBy::Client => "rejected by client",
            RejectedBy::Server => "rejected by server",
            RejectedBy::Neither => "no verdict",
        })
    }
}

/// One failed handshake, for reports.
#[derive(Clone, Debug)]
pub struct Failure {
    pub client: PodRef,
    pub server: PodRef,
    pub reason: FailureReason,
    pub rejected_by: RejectedBy,
    pub at: Instant,
}

/// Gaps between successes shorter than this are not kept: the generator makes about a hundred
/// handshakes a second, and only a stand-still of seconds means anything.
const KEPT_GAP: Duration = Duration::from_millis(200);

/// When handshakes succeeded: the last success, and every longer gap before it.
#[derive(Clone, Debug, Default)]
pub struct SuccessClock {
    /// When the generator started (the gap before the first success counts from it).
    started: Option<Instant>,
    last: Option<Instant>,
    /// Gaps of at least [`KEPT_GAP`]: when each ended (the success that ended it) and how long.
    gaps: Vec<(Instant, Duration)>,
}

impl SuccessClock {
    fn started(at: Instant) -> Self {
        Self {
            started: Some(at),
            ..Self::default()
        }
    }

    fn success(&mut self, at: Instant) {
        if let Some(from) = self.last.or(self.started) {
            let gap = at.saturating_duration_since(from);
            if gap >= KEPT_GAP {
                self.gaps.push((at, gap));
            }
        }
        self.last = Some(at);
    }

    /// The longest time within `since..now` without a success: an ended gap counts only its
    /// part after `since`, and the one still open at `now` counts too. Exact from
    /// [`KEPT_GAP`] up; below it, it may read shorter.
    fn longest_gap(&self, since: Instant, now: Instant) -> Duration {
        let open = self
            .last
            .or(self.started)
            .map(|from| now.saturating_duration_since(from.max(since)));
        self.gaps
            .iter()
            .filter(|(end, _)| *end > since)
            .map(|(end, gap)| (*gap).min(end.saturating_duration_since(since)))
            .chain(open)
            .max()
            .unwrap_or_default()
    }
}

/// Counters, readable while the generator runs.
#[derive(Default)]
pub struct TrafficStats {
    /// Handshakes started (each one's number is the count before it); `attempts` counts those
    /// finished.
    begun: AtomicU64,
    /// The numbers of the handshakes under way.
    under_way: Mutex<std::collections::BTreeSet<u64>>,
    attempts: AtomicU64,
    successes: AtomicU64,
    unreachable: AtomicU64,
    failures: Mutex<BTreeMap<(FailureReason, RejectedBy), u64>>,
    recent: Mutex<Vec<Failure>>,
    clock: Mutex<SuccessClock>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct TrafficSnapshot {
    /// Handshakes started (`attempts` are those finished and counted); each one's number is
    /// the count before it.
    pub begun: u64,
    /// The number of the oldest handshake still under way, if any (numbered from the
    /// generator's start, in a [`since`](Self::since) difference too).
    pub oldest_under_way: Option<u64>,
    pub attempts: u64,
    pub successes: u64,
    pub unreachable: u64,
    pub failures: BTreeMap<(FailureReason, RejectedBy), u64>,
    pub recent: Vec<Failure>,
    /// When the copy was taken, and the successes' times up to then.
    pub taken: Option<Instant>,
    pub clock: SuccessClock,
}

impl TrafficSnapshot {
    /// The longest stretch since `since`, up to when this copy was taken, without a single
    /// successful handshake (whether none were tried, or all failed or found their peer gone).
    pub fn longest_gap_since(&self, since: Instant) -> Duration {
        self.clock
            .longest_gap(since, self.taken.unwrap_or_else(Instant::now))
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Failures with this reason, whichever side refused.
    pub fn failed_with(&self, reason: &FailureReason) -> u64 {
        self.failures
            .iter()
            .filter(|((r, _), _)| r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// The counts accumulated since `earlier`.
    pub fn since(&self, earlier: &TrafficSnapshot) -> TrafficSnapshot {
        let mut failures = self.failures.clone();
        for (k, n) in &earlier.failures {
            if let Some(v) = failures.get_mut(k) {
                *v = v.saturating_sub(*n);
            }
        }
        failures.retain(|_, n| *n > 0);
        TrafficSnapshot {
            begun: self.begun - earlier.begun,
            oldest_under_way: self.oldest_under_way,
            attempts: self.attempts - earlier.attempts,
            successes: self.successes - earlier.successes,
            unreachable: self.unreachable - earlier.unreachable,
            failures,
            recent: self.recent.clone(),
            taken: self.taken,
            clock: self.clock.clone(),
        }
    }
}

impl fmt::Display for TrafficSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Refused leaves are failures but not handshakes: said apart.
        let refused = self.failed_with(&FailureReason::LeafRefused);
        write!(
            f,
            "{} handshakes: {} ok, {} failed, {} peer gone",
            self.attempts,
            self.successes,
            self.failed() - refused,
            self.unreachable
        )?;
        if refused > 0 {
            write!(f, "; {refused} leaves refused by their proxy")?;
        }
        for ((reason, by), n) in &self.failures {
            if *reason != FailureReason::LeafRefused {
                write!(f, "; {reason} ({by}): {n}")?;
            }
        }
        Ok(())
    }
}

impl TrafficStats {
    pub fn snapshot(&self) -> TrafficSnapshot {
        // `attempts` before `begun`: a handshake counted finished is then counted begun too.
        let attempts = self.attempts.load(Ordering::SeqCst);
        TrafficSnapshot {
            begun: self.begun.load(Ordering::SeqCst),
            oldest_under_way: self
                .under_way
                .lock()
                .expect("not poisoned")
                .first()
                .copied(),
            attempts,
            successes: self.successes.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
            failures: self.failures.lock().expect("not poisoned").clone(),
            recent: self.recent.lock().expect("not poisoned").clone(),
            taken: Some(Instant::now()),
            clock: self.clock.lock().expect("not poisoned").clone(),
        }
    }

    /// A handshake starts: its number.
    fn begin(&self) -> u64 {
        let mut under_way = self.under_way.lock().expect("not poisoned");
        let n = self.begun.fetch_add(1, Ordering::SeqCst);
        under_way.insert(n);
        n
    }

    fn record(&self, n: u64, client: &Proxy, server: &Proxy, outcome: Outcome) {
        match outcome {
            Outcome::Ok => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                self.clock
                    .lock()
                    .expect("not poisoned")
                    .success(Instant::now());
            }
            Outcome::Unreachable => {
                self.unreachable.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(reason, rejected_by) => {
                *self
                    .failures
                    .lock()
                    .expect("not poisoned")
                    .entry((reason.clone(), rejected_by))
                    .or_default() += 1;
                let failure = Failure {
                    client: client.pod.clone(),
                    server: server.pod.clone(),
                    reason,
                    rejected_by,
                    at: Instant::now(),
                };
                keep_recent(&mut self.recent.lock().expect("not poisoned"), failure);
            }
        }
        // Last: a handshake no longer under way, or counted in `attempts`, has its outcome
        // in the counters.
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.under_way.lock().expect("not poisoned").remove(&n);
    }
}

/// Adds `failure` to the latest few kept for reports, the oldest going first.
pub(crate) fn keep_recent(recent: &mut Vec<Failure>, failure: Failure) {
    if recent.len() == RECENT_FAILURES {
        recent.remove(0);
    }
    recent.push(failure);
}

/// The outcome of one handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unreachable,
    Failed(FailureReason, RejectedBy),
}

/// Classifies a rustls error seen by the client: its own verdict on the server's chain, or the
/// alert the server sent about ours.
pub fn classify(error: &rustls::Error) -> (FailureReason, RejectedBy) {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(c) => (certificate_reason(c), RejectedBy::Client),
        E::AlertReceived(alert) => {
            let reason = match alert {
                AlertDescription::UnknownCA | AlertDescription::DecryptError => {
                    FailureReason::UnknownIssuer
                }
                AlertDescription::CertificateExpired => FailureReason::Expired,
                AlertDescription::HandshakeFailure => FailureReason::NoCertificate,
                other => FailureReason::Other(format!("alert {other:?}")),
            };
            (reason, RejectedBy::Server)
        }
        other => (FailureReason::Other(other.to_string()), RejectedBy::Neither),
    }
}

fn certificate_reason(error: &CertificateError) -> FailureReason {
    match error {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            FailureReason::UnknownIssuer
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => FailureReason::Expired,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            FailureReason::WrongIdentity
        }
        other => FailureReason::Other(format!("{other:?}")),
    }
}

/// Why a handshake that checked no certificate counts as failed.
pub const RESUMED: &str = "a resumed TLS session: no certificate was checked";

/// One mTLS handshake from `client` to `server`, as the client's proxy would dial it.
pub async fn handshake(client: &Proxy, server: &Proxy) -> Outcome {
    let attempt = async {
        let tcp = match TcpStream::connect(server.addr).await {
            Ok(t) => t,
            Err(_) => return Outcome::Unreachable,
        };
        let Ok(name) = ServerName::try_from(server.env.identity.clone()) else {
            return Outcome::Failed(
                FailureReason::Other(format!("identity {} is not a name", server.env.identity)),
                RejectedBy::Neither,
            );
        };
        let connector = tokio_rustls::TlsConnector::from(client.client_config());
        let mut tls = match connector.connect(name, tcp).await {
            Ok(t) => t,
            Err(e) => return io_outcome(&e),
        };
        if tls.get_ref().1.handshake_kind() != Some(rustls::HandshakeKind::Full) {
            return Outcome::Failed(
                FailureReason::Other(RESUMED.to_owned()),
                RejectedBy::Neither,
            );
        }
        let mut byte = [0u8; 1];
        match tls.read_exact(&mut byte).await {
            Ok(_) => Outcome::Ok,
            Err(e) => io_outcome(&e),
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(o) => peer_gone_only_if_stopped(o, server.is_ready()),
        Err(_) => Outcome::Failed(FailureReason::Timeout, RejectedBy::Neither),
    }
}

/// A refused, reset or broken connection is the peer gone only if it has stopped; from a peer
/// still ready it is a failed handshake (a server that hung up on a certificate it refused,
/// without an alert, must not pass for a pod going away).
fn peer_gone_only_if_stopped(outcome: Outcome, server_ready: bool) -> Outcome {
    match outcome {
        Outcome::Unreachable if server_ready => Outcome::Failed(
            FailureReason::Other("connection refused or reset by a ready peer".to_owned()),
            RejectedBy::Neither,
        ),
        other => other,
    }
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        let (reason, by) = classify(tls);
        return Outcome::Failed(reason, by);
    }
    match e.kind() {
        // The server went away mid-connection (its pod stopped).
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionRefused
        | std::io::ErrorKind::BrokenPipe => Outcome::Unreachable,
        // Closed without our byte: the server dropped us without an alert.
        _ => Outcome::Failed(FailureReason::Other(e.to_string()), RejectedBy::Neither),
    }
}

/// How hard the generator works.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Concurrent handshake loops.
    pub workers: usize,
    /// Pause between two handshakes of one loop.
    pub pause: Duration,
}

impl Default for TrafficConfig {
    /// About 100 handshakes a second: enough to touch every pair of a small mesh within a
    /// rotation step, little enough to leave the 2 cores to the control plane.
    fn default() -> Self {
        Self {
            workers: 2,
            pause: Duration::from_millis(20),
        }
    }
}

/// Where the generator finds the proxies that can take traffic now.
pub trait Peers: Send + Sync + 'static {
    fn ready_proxies(&self) -> Vec<Arc<Proxy>>;

    /// Leaves proxies refused so far (see [`FailureReason::LeafRefused`]): how many, and the
    /// latest few.
    fn refused_leaves(&self) -> (u64, Vec<Failure>) {
        (0, Vec::new())
    }
}

/// A running generator; stops when dropped.
pub struct TrafficGenerator {
    stats: Arc<TrafficStats>,
    peers: Arc<dyn Peers>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TrafficGenerator {
    pub fn start(peers: Arc<dyn Peers>, config: TrafficConfig) -> Self {
        let stats = Arc::new(TrafficStats {
            clock: Mutex::new(SuccessClock::started(Instant::now())),
            ..TrafficStats::default()
        });
        let tasks = (0..config.workers.max(1))
            .map(|worker| {
                let (peers, stats, pause) = (peers.clone(), stats.clone(), config.pause);
                tokio::spawn(async move {
                    let mut rng = SplitMix::new(worker as u64);
                    loop {
                        let proxies = peers.ready_proxies();
                        if proxies.len() >= 2 {
                            let a = rng.below(proxies.len());
                            let mut b = rng.below(proxies.len() - 1);
                            if b >= a {
                                b += 1;
                            }
                            let (client, server) = (&proxies[a], &proxies[b]);
                            let n = stats.begin();
                            let outcome = handshake(client, server).await;
                            stats.record(n, client, server, outcome);
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Self {
            stats,
            peers,
            tasks,
        }
    }

    pub fn stats(&self) -> &Arc<TrafficStats> {
        &self.stats
    }

    /// The counters now, with the leaves proxies refused among the failures (each proxy's
    /// refusal of an issuer's leaf once): a proxy left without a leaf fails every handshake it
    /// would make or take, and the pairs sampled would miss a pod that never became ready for
    /// lack of one. They are not handshakes: `begun` and `attempts` leave them out.
    pub fn snapshot(&self) -> TrafficSnapshot {
        let mut snapshot = self.stats.snapshot();
        let (refused, recent) = self.peers.refused_leaves();
        if refused > 0 {
            *(snapshot.failures)
                .entry((FailureReason::LeafRefused, RejectedBy::Client))
                .or_default() += refused;
            snapshot.recent.extend(recent);
            snapshot.recent.sort_by_key(|f| f.at);
            let extra = snapshot.recent.len().saturating_sub(RECENT_FAILURES);
            snapshot.recent.drain(..extra);
        }
        snapshot
    }
}

impl Drop for TrafficGenerator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A small, seedable generator (SplitMix64): pairs need to be spread, not secret.
struct SplitMix(u64);

impl SplitMix {
    fn new(worker: u64) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self(seed ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_client_and_server_verdicts() {
        assert_eq!(
            classify(&rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            )),
            (FailureReason::UnknownIssuer, RejectedBy::Client)
        );
        assert_eq!(
            classify(&rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
            (FailureReason::UnknownIssuer, RejectedBy::Server)
        );
        // A same-named anchor with another key: what a renewed anchor looks like to webpki.
        assert_eq!(
            classify(&rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            )),
            (FailureReason::UnknownIssuer, RejectedBy::Client)
        );
        assert_eq!(
            classify(&rustls::Error::AlertReceived(
                AlertDescription::DecryptError
            )),
            (FailureReason::UnknownIssuer, RejectedBy::Server)
        );
        assert_eq!(
            classify(&rustls::Error::InvalidCertificate(
                CertificateError::Expired
            )),
            (FailureReason::Expired, RejectedBy::Client)
        );
        assert_eq!(
            classify(&rustls::Error::AlertReceived(
                AlertDescription::CertificateExpired
            )),
            (FailureReason::Expired, RejectedBy::Server)
        );
    }

    #[test]
    fn a_hang_up_is_the_peer_gone_only_if_it_stopped() {
        assert_eq!(
            peer_gone_only_if_stopped(Outcome::Unreachable, false),
            Outcome::Unreachable
        );
        assert!(matches!(
            peer_gone_only_if_stopped(Outcome::Unreachable, true),
            Outcome::Failed(FailureReason::Other(_), RejectedBy::Neither)
        ));
        for outcome in [
            Outcome::Ok,
            Outcome::Failed(FailureReason::UnknownIssuer, RejectedBy::Server),
        ] {
            for ready in [false, true] {
                assert_eq!(peer_gone_only_if_stopped(outcome.clone(), ready), outcome);
            }
        }
    }

    #[test]
    fn the_longest_gap_is_timed_at_each_success_not_sampled() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut clock = SuccessClock::started(t0);
        // Successes at 0.1 s, 0.15 s, then none until 3.15 s, then 3.2 s.
        for ms in [100, 150, 3150, 3200] {
            clock.success(at(ms));
        }
        let secs = |ms: u64| Duration::from_millis(ms);
        // Anyone looking only at 0.15 s and 3.2 s sees progress both times; the gap is kept.
        assert_eq!(clock.longest_gap(t0, at(3200)), secs(3000));
        // Counted from a later start, only the part after it.
        assert_eq!(clock.longest_gap(at(1150), at(3200)), secs(2000));
        // Gaps under KEPT_GAP are not kept: read as shorter, never longer.
        assert!(clock.longest_gap(at(3150), at(3200)) < KEPT_GAP);
        // The gap still open counts, up to the time asked about.
        assert_eq!(clock.longest_gap(at(3150), at(9200)), secs(6000));
        // Before any success, from the start of the generator.
        let idle = SuccessClock::started(t0);
        assert_eq!(idle.longest_gap(t0, at(700)), secs(700));
        // Short gaps are not kept, but the open one is still measured.
        let mut busy = SuccessClock::started(t0);
        for ms in (0..100).map(|i| i * 10) {
            busy.success(at(ms));
        }
        assert!(busy.gaps.is_empty());
        assert!(busy.longest_gap(t0, at(990)) < KEPT_GAP);
        assert_eq!(busy.longest_gap(t0, at(1500)), secs(510));
    }

    #[test]
    fn since_subtracts() {
        let mut a = TrafficSnapshot {
            attempts: 10,
            successes: 8,
            unreachable: 1,
            ..Default::default()
        };
        a.failures
            .insert((FailureReason::UnknownIssuer, RejectedBy::Client), 1);
        let mut b = a.clone();
        b.attempts = 15;
        b.successes = 12;
        b.failures
            .insert((FailureReason::UnknownIssuer, RejectedBy::Client), 2);
        let d = b.since(&a);
        assert_eq!((d.attempts, d.successes, d.failed()), (5, 4, 1));
    }
}
