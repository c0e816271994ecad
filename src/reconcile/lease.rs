//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does
//! it: the holder renews `renewTime` every few seconds; another replica takes the Lease only
//! once it has itself seen the Lease unchanged (or gone, deleted while another replica held
//! it) for `leaseDurationSeconds`, timed on its own monotonic clock (never by comparing the
//! holder's `renewTime` with its own wall clock, so replicas whose clocks disagree neither
//! steal a live Lease nor wait too long for a dead one). Every write carries the `resourceVersion` it read, so two replicas racing for an
//! expired Lease cannot both win: the API server refuses the second write with 409 Conflict.
//!
//! [`next_step`] is the pure rule; [`Elector`] does the reads and writes. Every replica serves
//! the webhook; only the leader runs the reconciler.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::logging::Lasted;

/// What the Lease says, as plain values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseState {
    pub holder: Option<String>,
    /// Unix milliseconds of the last renewal (or acquisition), as the holder's clock wrote it.
    pub renewed_ms: Option<i64>,
    pub duration: Duration,
}

/// What a replica does with the Lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ours: write a new renewTime.
    Renew,
    /// Free or expired: take it (and bump leaseTransitions).
    Acquire,
    /// Someone else holds it and renewed recently.
    Wait,
}

/// The rule: a Lease is ours to renew, free (or expired) to take, or held. `unchanged_for` is
/// how long this replica has seen this very Lease (holder and renewTime) without a change.
pub fn next_step(lease: &LeaseState, me: &str, unchanged_for: Duration) -> Step {
    match lease.holder.as_deref() {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::Acquire,
        Some(_) if unchanged_for >= lease.duration => Step::Acquire,
        Some(_) => Step::Wait,
    }
}

/// The Lease as this replica last saw it change, and when (its own monotonic clock); and since
/// when it has been seen gone, if it is.
#[derive(Debug, Default)]
struct Observed {
    seen: Option<(LeaseState, std::time::Instant)>,
    gone_since: Option<std::time::Instant>,
}

impl Observed {
    /// How long `state` has been seen unchanged, counting from now if it just changed.
    fn unchanged_for(&mut self, state: &LeaseState, now: std::time::Instant) -> Duration {
        self.gone_since = None;
        match &self.seen {
            Some((last, since)) if last == state => now.saturating_duration_since(*since),
            _ => {
                self.seen = Some((state.clone(), now));
                Duration::ZERO
            }
        }
    }

    /// Whether a Lease now gone must still be waited for: the last one seen was another
    /// replica's, which may lead until its next renewal finds the Lease gone, so it is waited
    /// out as an expired one would be, a full duration from when it was first seen gone
    /// (deleted by hand, or pruned by a GitOps tool). A Lease never seen, or last seen as this
    /// replica's or free, is not waited for.
    fn wait_for_gone(&mut self, me: &str, now: std::time::Instant) -> bool {
        let Some((last, _)) = &self.seen else {
            return false;
        };
        if last
            .holder
            .as_deref()
            .is_none_or(|h| h.is_empty() || h == me)
        {
            return false;
        }
        let since = *self.gone_since.get_or_insert(now);
        now.saturating_duration_since(since) < last.duration
    }
}

/// Lease timing, client-go's defaults: a leader that cannot renew for `duration` loses it;
/// it renews every `retry`, and gives up leading itself after `renew_deadline` without a
/// successful renewal, well before anyone else may take over.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }

    /// Keeps client-go's proportions for another duration: give up leading after 2/3 of it,
    /// retry about 7 times per duration. The Lease holds whole seconds, so the duration is
    /// rounded up to them: a leader must never time itself on less than its Lease tells the
    /// others to wait.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = crate::duration::round_up_to_seconds(duration).max(Duration::from_secs(1));
        self.renew_deadline = self.duration / 3 * 2;
        self.retry = (self.duration / 7).max(Duration::from_millis(100));
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {namespace}/{name}: {}", crate::watch::api_words(.source))]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What one write of the Lease came to, or a [`Elector::try_lead`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Whether this replica holds the Lease after it.
    Held(bool),
    /// Refused with 409: the Lease changed since it was read (for `try_lead`: on every try,
    /// and this replica still held it at the last read). Neither won nor lost.
    Conflict,
}

#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: std::sync::Arc<std::sync::Mutex<Observed>>,
}

fn state_of(lease: &Lease) -> LeaseState {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseState {
        holder: spec.holder_identity,
        renewed_ms: spec
            .renew_time
            .or(spec.acquire_time)
            .map(|t| t.0.as_millisecond()),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64),
    }
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Default::default(),
        }
    }

    fn err(&self) -> impl FnOnce(kube::Error) -> LeaseError + '_ {
        |source| LeaseError::Kube {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    /// One attempt: `Held(true)` when this replica holds the Lease afterwards, `Held(false)`
    /// when another does (or it waits for one that may).
    ///
    /// A write refused with 409 Conflict means the Lease changed between the read and the
    /// write: another replica took it, or anyone else wrote it (an annotation, a label). So
    /// the Lease is read again and the step decided once more: taken, it is "not leader";
    /// still ours, it is renewed. Refused again, it is `Conflict`: not lost, since the last
    /// read still showed it ours, and not renewed; a leader tries again on its next tick until
    /// its renew deadline, as client-go's does. (Stepping down on a conflict would stop a
    /// healthy leader because someone labelled its Lease.)
    pub async fn try_lead(&self) -> Result<Attempt, LeaseError> {
        let mut attempt = Attempt::Conflict;
        for _ in 0..2 {
            attempt = self.attempt(self.read().await?).await?;
            if attempt != Attempt::Conflict {
                break;
            }
        }
        Ok(attempt)
    }

    async fn read(&self) -> Result<Option<Lease>, LeaseError> {
        self.api
            .get_opt(&self.config.name)
            .await
            .map_err(self.err())
    }

    /// The step on the Lease as read (`None`: there is none yet), written with the
    /// resourceVersion it was read at.
    async fn attempt(&self, lease: Option<Lease>) -> Result<Attempt, LeaseError> {
        let now = Timestamp::now();
        let c = &self.config;
        let Some(lease) = lease else {
            let wait = (self.observed.lock().expect("observed lease lock"))
                .wait_for_gone(&c.identity, std::time::Instant::now());
            if wait {
                return Ok(Attempt::Held(false));
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(c.name.clone()),
                    namespace: Some(c.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held(true)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(self.err()(e)),
            };
        };
        let state = state_of(&lease);
        let unchanged_for = self
            .observed
            .lock()
            .expect("observed lease lock")
            .unchanged_for(&state, std::time::Instant::now());
        let spec = lease.spec.clone().unwrap_or_default();
        let new_spec = match next_step(&state, &c.identity, unchanged_for) {
            Step::Wait => return Ok(Attempt::Held(false)),
            Step::Renew => self.spec(
                spec.acquire_time.map_or(now, |t| t.0),
                now,
                spec.lease_transitions.unwrap_or(0),
            ),
            Step::Acquire => self.spec(now, now, spec.lease_transitions.unwrap_or(0) + 1),
        };
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        let mut updated = lease;
        updated.spec = Some(new_spec);
        match self
            .api
            .replace(&c.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(Attempt::Held(true)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(self.err()(e)),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            // Saturating: `as` would wrap a duration over i32::MAX seconds into a short one.
            lease_duration_seconds: Some(
                i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the Lease up on a clean shutdown so another replica need not wait for it to
    /// expire (client-go's ReleaseOnCancel). Bounded by `retry`: a release that cannot be made
    /// quickly is not worth holding the shutdown for (the Lease then simply expires).
    pub async fn release(&self) {
        if tokio::time::timeout(
            self.config.retry.max(Duration::from_secs(1)),
            self.release_now(),
        )
        .await
        .is_err()
        {
            tracing::warn!("releasing the leader Lease: no answer in time; it will expire");
        }
    }

    /// Read, and written back without a holder while it is still this replica's; read again
    /// after a conflict (a renewal sent just before the election stopped may land between the
    /// two), until [`Self::release`]'s time is up.
    async fn release_now(&self) {
        loop {
            let mut lease = match self.api.get_opt(&self.config.name).await {
                Ok(Some(lease)) => lease,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %crate::watch::api_words(&e), "releasing the leader Lease: reading it failed; it will expire");
                    return;
                }
            };
            let Some(spec) = lease.spec.as_mut() else {
                return;
            };
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return;
            }
            spec.holder_identity = None;
            spec.renew_time = None;
            spec.acquire_time = None;
            match (self.api)
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => {
                    tracing::warn!(error = %crate::watch::api_words(&e), "releasing the leader Lease");
                    return;
                }
            }
        }
    }

    /// Runs `lead` while this replica holds the Lease: waits to acquire it, starts `lead`,
    /// renews every `retry`, and stops `lead` (drops its future) as soon as a renewal has not
    /// succeeded within `renew_deadline`; then competes again. `on_change(true|false)` is told.
    /// Returns if `lead` itself returns: the reconciler stopped, which is for the process to
    /// report, not for the election to hide by starting it again.
    ///
    /// A renewal counts from when it was sent, not from when its answer came (the API server
    /// may have committed it long before a slow answer), and an attempt that has not answered
    /// when the deadline comes is given up: the reconciler is not polled while it waits, nor
    /// once the deadline has passed (as after a pause of the whole process).
    pub async fn run<F, Fut>(self, mut lead: F, on_change: impl Fn(bool))
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let c = self.config.clone();
        loop {
            // Follower: try until acquired. A failure that stays the same (no permission on
            // Leases, a namespace that does not exist) is said once, not at every try.
            let mut failing = crate::logging::Lasting::default();
            let mut last_renewed = loop {
                let sent = tokio::time::Instant::now();
                let failure = match tokio::time::timeout(c.renew_deadline, self.try_lead()).await {
                    Ok(Ok(Attempt::Held(true))) => break sent,
                    Ok(Ok(Attempt::Held(false) | Attempt::Conflict)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("the API server did not answer in time".to_owned()),
                };
                match failing.record(failure) {
                    Lasted::Failing(now) => {
                        tracing::warn!(error = %now, "leader election failed; trying again every {:?} (said again only if the failure changes)", c.retry)
                    }
                    Lasted::Cleared => {
                        tracing::info!("leader election: the Lease can be read and written again")
                    }
                    Lasted::Unchanged => {}
                }
                tokio::time::sleep(c.retry).await;
            };
            tracing::info!(identity = %c.identity, lease = %format!("{}/{}", c.namespace, c.name), "became leader");
            on_change(true);
            let leading = lead();
            tokio::pin!(leading);
            let ended = loop {
                tokio::select! {
                    // The deadline is looked at, by the clock, before the reconciler is polled:
                    // after a pause (a stopped process, a starved runtime) the reconciler must
                    // not act on a leadership that may have passed on.
                    biased;
                    () = passed(last_renewed + c.renew_deadline) => {
                        tracing::warn!("could not renew the leader Lease in time");
                        break false;
                    }
                    () = &mut leading => break true,
                    () = tokio::time::sleep(c.retry) => {}
                }
                let sent = tokio::time::Instant::now();
                let left = c.renew_deadline.saturating_sub(sent - last_renewed);
                match tokio::time::timeout(left, self.try_lead()).await {
                    Ok(Ok(Attempt::Held(true))) => last_renewed = sent,
                    Ok(Ok(Attempt::Held(false))) => {
                        tracing::warn!("the leader Lease was taken by another replica");
                        break false;
                    }
                    // Still ours at the last read: tried again next tick, until the deadline.
                    Ok(Ok(Attempt::Conflict)) => tracing::warn!(
                        "renewing the leader Lease: it changed between each read and write; trying again"
                    ),
                    Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader Lease"),
                    // Past the deadline: the first branch above steps down at once.
                    Err(_) => {}
                }
            };
            on_change(false);
            tracing::info!(identity = %c.identity, "stopped leading");
            if ended {
                return;
            }
        }
    }
}

/// Ready once `deadline` has passed by the clock, looked at on every poll. A timer alone is not
/// enough: it comes due only when the runtime's timer driver turns, and after a pause the
/// runtime first runs the tasks already woken (a reconciler woken by a watch event, say),
/// which poll it before the driver has seen the time the pause took.
fn passed(deadline: tokio::time::Instant) -> impl std::future::Future<Output = ()> {
    let mut timer = Box::pin(tokio::time::sleep_until(deadline));
    std::future::poll_fn(move |cx| {
        if tokio::time::Instant::now() >= deadline {
            return std::task::Poll::Ready(());
        }
        timer.as_mut().poll(cx)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::{Patch, PatchParams};
    use serde_json::json;

    fn lease(holder: Option<&str>, renewed_ms: Option<i64>) -> LeaseState {
        LeaseState {
            holder: holder.map(str::to_owned),
            renewed_ms,
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn ours_is_renewed_free_is_taken() {
        assert_eq!(
            next_step(&lease(Some("a"), Some(0)), "a", Duration::ZERO),
            Step::Renew
        );
        assert_eq!(
            next_step(&lease(None, None), "a", Duration::ZERO),
            Step::Acquire
        );
        assert_eq!(
            next_step(&lease(Some(""), Some(0)), "a", Duration::ZERO),
            Step::Acquire
        );
    }

    #[test]
    fn held_is_taken_only_after_it_expires() {
        let held = lease(Some("b"), Some(1_000));
        let ms = Duration::from_millis;
        assert_eq!(next_step(&held, "a", ms(0)), Step::Wait);
        assert_eq!(next_step(&held, "a", ms(14_999)), Step::Wait);
        assert_eq!(next_step(&held, "a", ms(15_000)), Step::Acquire);
    }

    /// Expiry is timed on the follower's own clock from when it saw the Lease change: a
    /// renewTime far in the past (the holder's clock behind) or in the future (ahead) changes
    /// nothing.
    #[test]
    fn expiry_is_timed_from_the_last_change_seen_whatever_the_clocks_say() {
        let t0 = std::time::Instant::now();
        let secs = Duration::from_secs;
        for renewed_ms in [Some(0), Some(i64::MAX / 2), None] {
            let held = lease(Some("b"), renewed_ms);
            let mut observed = Observed::default();
            assert_eq!(observed.unchanged_for(&held, t0), Duration::ZERO);
            assert_eq!(observed.unchanged_for(&held, t0 + secs(14)), secs(14));
            assert_eq!(
                next_step(&held, "a", observed.unchanged_for(&held, t0 + secs(15))),
                Step::Acquire
            );
        }
        // A renewal seen restarts the count.
        let mut observed = Observed::default();
        assert_eq!(
            observed.unchanged_for(&lease(Some("b"), Some(1)), t0),
            Duration::ZERO
        );
        assert_eq!(
            observed.unchanged_for(&lease(Some("b"), Some(1)), t0 + secs(10)),
            secs(10)
        );
        assert_eq!(
            observed.unchanged_for(&lease(Some("b"), Some(2)), t0 + secs(12)),
            Duration::ZERO
        );
        assert_eq!(
            observed.unchanged_for(&lease(Some("b"), Some(2)), t0 + secs(20)),
            secs(8)
        );
    }

    /// The Lease holds whole seconds: a duration with a fraction is rounded up, so the leader
    /// never gives up later than its Lease tells the others to wait.
    #[test]
    fn a_fractional_duration_is_rounded_up_to_the_leases_seconds() {
        let c = LeaseConfig::new("ns", "l", "a").with_duration(Duration::from_millis(1500));
        assert_eq!(c.duration, Duration::from_secs(2));
        assert!(c.renew_deadline < c.duration);
        let c = LeaseConfig::new("ns", "l", "a").with_duration(Duration::from_millis(10));
        assert_eq!(c.duration, Duration::from_secs(1));
    }

    /// A leader whose whole process stood still for longer than its renew deadline (a stopped
    /// process, a starved runtime; here the test blocks the only runtime thread) must not let
    /// its reconciler act once more when it runs again: by then another replica may hold the
    /// Lease. Everything it does after the pause comes after it has stepped down. The
    /// reconciler is woken just before the pause, as an event it watches would wake it: the
    /// runtime then runs it again before its timer driver has seen the time the pause took.
    #[tokio::test]
    async fn a_leader_that_stood_still_past_its_deadline_steps_down_before_acting() {
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Event {
            Leading(bool),
            Acted,
            Resumed,
        }
        let cp = crate::testbed::ControlPlane::start()
            .await
            .expect("a local control plane");
        let config =
            LeaseConfig::new("default", "paused", "a").with_duration(Duration::from_secs(3));
        let pause = config.renew_deadline + Duration::from_millis(500);
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (acts, changes) = (events.clone(), events.clone());
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let woken = wake.clone();
        let election = tokio::spawn(Elector::new(cp.client(), config).run(
            move || {
                let (acts, woken) = (acts.clone(), woken.clone());
                async move {
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(20)) => {}
                            () = woken.notified() => {}
                        }
                        acts.lock().unwrap().push(Event::Acted);
                    }
                }
            },
            move |leading| changes.lock().unwrap().push(Event::Leading(leading)),
        ));
        let count = |e: Event| events.lock().unwrap().iter().filter(|&&x| x == e).count();
        for round in 0..3 {
            let started = std::time::Instant::now();
            while count(Event::Acted) < 3 || count(Event::Leading(true)) <= round {
                assert!(started.elapsed() < Duration::from_secs(30), "{events:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The reconciler woken, as a watch event would wake it: it is to run next. Nothing
            // runs on this runtime while its one thread sleeps; when it wakes, the woken tasks
            // run before its timer driver turns and sees the time gone.
            wake.notify_one();
            std::thread::sleep(pause);
            events.lock().unwrap().push(Event::Resumed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let events = events.lock().unwrap();
            let after = events.iter().rev().take_while(|&&e| e != Event::Resumed);
            let first = after.collect::<Vec<_>>().last().copied().copied();
            assert_eq!(
                first,
                Some(Event::Leading(false)),
                "round {round}: the first thing after the pause must be stepping down: {events:?}"
            );
        }
        election.abort();
    }

    /// A renewal refused with 409 Conflict because someone labelled the Lease between the
    /// read and the write is a Lease still ours: read again, renewed. One refused because
    /// another replica took it is not. Real API server; the stale read is handed in.
    #[tokio::test]
    async fn a_conflict_on_renewal_is_lost_only_if_the_lease_was_taken() {
        let cp = crate::testbed::ControlPlane::start()
            .await
            .expect("a local control plane");
        let client = cp.client();
        let api = Api::<Lease>::namespaced(client.clone(), "default");
        let config = LeaseConfig::new("default", "election", "a");
        let a = Elector::new(client.clone(), config.clone());
        assert_eq!(
            a.try_lead().await.unwrap(),
            Attempt::Held(true),
            "a takes the free Lease"
        );

        let label = |value: &str| {
            let api = api.clone();
            let patch = serde_json::json!({"metadata": {"labels": {"touched": value}}});
            async move {
                api.patch(
                    "election",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await
                .unwrap();
            }
        };
        let stale = a.read().await.unwrap();
        label("1").await;
        assert!(matches!(a.attempt(stale).await.unwrap(), Attempt::Conflict));
        // What `try_lead` does with it: read again, still a's, renewed.
        let before = api.get("election").await.unwrap();
        let stale = a.read().await.unwrap();
        label("2").await;
        assert!(matches!(a.attempt(stale).await.unwrap(), Attempt::Conflict));
        assert_eq!(
            a.try_lead().await.unwrap(),
            Attempt::Held(true),
            "a renews after the conflict"
        );
        let after = api.get("election").await.unwrap().spec.unwrap();
        assert_eq!(after.holder_identity.as_deref(), Some("a"));
        assert!(after.renew_time > before.spec.unwrap().renew_time);

        // Taken by b meanwhile (here written over, as an expired Lease is taken): lost.
        let stale = a.read().await.unwrap();
        let mut taken = api.get("election").await.unwrap();
        taken.spec.as_mut().unwrap().holder_identity = Some("b".to_owned());
        api.replace("election", &PostParams::default(), &taken)
            .await
            .unwrap();
        assert!(matches!(a.attempt(stale).await.unwrap(), Attempt::Conflict));
        assert_eq!(
            a.try_lead().await.unwrap(),
            Attempt::Held(false),
            "b holds it now"
        );
    }

    /// Written over and over by someone else (a tool labelling it in a loop), a leader's
    /// renewals can be refused on the read-again too. That is no reason to step down while the
    /// Lease is still its own: `try_lead` says `Conflict` (the leader tries again next tick,
    /// within its deadline), never "not held". Real API server, hammered from another thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_that_keeps_changing_is_contended_not_lost() {
        let cp = crate::testbed::ControlPlane::start()
            .await
            .expect("a local control plane");
        let client = cp.client();
        let api = Api::<Lease>::namespaced(client.clone(), "default");
        let a = Elector::new(client.clone(), LeaseConfig::new("default", "election", "a"));
        assert_eq!(a.try_lead().await.unwrap(), Attempt::Held(true));

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammer = tokio::spawn({
            let (api, stop) = (api.clone(), stop.clone());
            async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let patch = serde_json::json!({"metadata": {"labels": {"n": n.to_string()}}});
                    let params = kube::api::PatchParams::default();
                    api.patch("election", &params, &kube::api::Patch::Merge(patch))
                        .await
                        .unwrap();
                }
                n
            }
        });
        let mut outcomes = Vec::new();
        let started = std::time::Instant::now();
        while !outcomes.contains(&Attempt::Conflict) && started.elapsed() < Duration::from_secs(20)
        {
            outcomes.push(a.try_lead().await.unwrap());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let patches = hammer.await.unwrap();
        assert!(
            outcomes.contains(&Attempt::Conflict),
            "no try was refused twice in {} tries against {patches} label writes",
            outcomes.len()
        );
        assert!(
            !outcomes.contains(&Attempt::Held(false)),
            "a Lease still ours read as lost: {outcomes:?}"
        );
        let spec = api.get("election").await.unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(a.try_lead().await.unwrap(), Attempt::Held(true));
    }

    /// A Lease deleted while another replica holds it (by hand, or pruned by a GitOps tool) is
    /// not taken at once: its holder may still lead until its next renewal finds it gone, so a
    /// follower waits it out as an expired one. The holder puts it back at once. Gone and not
    /// put back for a whole duration, it is taken. Real API server.
    #[tokio::test]
    async fn a_deleted_lease_is_waited_out_by_a_follower_and_put_back_by_its_holder() {
        let cp = crate::testbed::ControlPlane::start()
            .await
            .expect("a local control plane");
        let client = cp.client();
        let api = Api::<Lease>::namespaced(client.clone(), "default");
        let config = |id: &str| {
            LeaseConfig::new("default", "election", id).with_duration(Duration::from_secs(2))
        };
        let a = Elector::new(client.clone(), config("a"));
        let b = Elector::new(client.clone(), config("b"));
        let delete = || async {
            api.delete("election", &Default::default()).await.unwrap();
        };
        assert_eq!(
            a.try_lead().await.unwrap(),
            Attempt::Held(true),
            "a takes the free Lease"
        );
        assert_eq!(
            b.try_lead().await.unwrap(),
            Attempt::Held(false),
            "b sees a's"
        );

        delete().await;
        assert_eq!(
            b.try_lead().await.unwrap(),
            Attempt::Held(false),
            "b waits: a may still lead"
        );
        assert_eq!(
            a.try_lead().await.unwrap(),
            Attempt::Held(true),
            "a puts its Lease back"
        );
        assert_eq!(
            b.try_lead().await.unwrap(),
            Attempt::Held(false),
            "a's again"
        );

        delete().await;
        assert_eq!(b.try_lead().await.unwrap(), Attempt::Held(false));
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(
            b.try_lead().await.unwrap(),
            Attempt::Held(true),
            "gone for a whole duration: b takes it"
        );
        let spec = api.get("election").await.unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    }

    /// A local control plane, its client, and replica `a`'s election (Lease `default/election`,
    /// 3 s). The control plane stops when dropped.
    async fn election_of_a() -> (crate::testbed::ControlPlane, Client, Elector) {
        let cp = crate::testbed::ControlPlane::start()
            .await
            .expect("a local control plane");
        let client = cp.client();
        let config =
            LeaseConfig::new("default", "election", "a").with_duration(Duration::from_secs(3));
        let elector = Elector::new(client.clone(), config);
        (cp, client, elector)
    }

    /// A release that meets another write of the Lease between its read and its write (a
    /// renewal sent just before the election stopped, or anyone's label) reads it again and
    /// still hands it over, on the real API server.
    #[tokio::test]
    async fn a_release_that_meets_another_write_reads_the_lease_again() {
        let (_cp, client, elector) = election_of_a().await;
        assert_eq!(elector.try_lead().await.unwrap(), Attempt::Held(true));
        let api = Api::<Lease>::namespaced(client, "default");
        // Three writers, each as fast as the API server takes its writes, for a while: a
        // release's read and write have one of them land in between.
        let writers: Vec<_> = (0..3)
            .map(|writer| {
                let api = api.clone();
                tokio::spawn(async move {
                    let (started, mut n) = (tokio::time::Instant::now(), 0u32);
                    while started.elapsed() < Duration::from_millis(400) {
                        let label = json!({"metadata": {"labels": {
                            format!("touched-{writer}"): n.to_string()
                        }}});
                        api.patch("election", &PatchParams::default(), &Patch::Merge(label))
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        elector.release().await;
        let mut n = 0;
        for writer in writers {
            n += writer.await.unwrap();
        }
        let lease = api.get("election").await.unwrap();
        assert_eq!(
            lease.spec.unwrap().holder_identity,
            None,
            "released despite {n} other writes"
        );
    }

    /// A failure that stays the same at every try (here, no API server at all) is logged once,
    /// not every `retry`.
    #[tokio::test]
    async fn an_election_failing_the_same_way_says_so_once() {
        let port = crate::testbed::free_port().unwrap();
        let url: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
        let client = Client::try_from(kube::Config::new(url)).unwrap();
        let mut config = LeaseConfig::new("default", "election", "a");
        config.retry = Duration::from_millis(50);
        let logs = crate::logging::tests::Buffer::default();
        let _logging = tracing::subscriber::set_default(logs.subscriber());
        let elector = Elector::new(client, config);
        let ran = elector.run(|| async {}, |_| {});
        let stopped = tokio::time::timeout(Duration::from_millis(800), ran).await;
        assert!(stopped.is_err(), "led without an API server");
        let text = logs.text();
        let said = text.matches("leader election failed").count();
        assert_eq!(said, 1, "{text}");
        assert!(text.contains("Connection refused"), "{text}");
    }

    /// A reconciler that returns while leading ends the election too (and the Lease is handed
    /// back when the process releases it), on the real API server: restarting it would hide a
    /// stopped part from the process that must report it.
    #[tokio::test]
    async fn a_lead_that_returns_ends_the_election() {
        let (_cp, client, elector) = election_of_a().await;
        let changes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = changes.clone();
        let ran = tokio::time::timeout(
            Duration::from_secs(30),
            elector.clone().run(
                || async {},
                move |leading| seen.lock().unwrap().push(leading),
            ),
        )
        .await;
        assert!(ran.is_ok(), "the election went on after its lead returned");
        assert_eq!(*changes.lock().unwrap(), [true, false]);
        elector.release().await;
        let lease = Api::<Lease>::namespaced(client, "default")
            .get("election")
            .await
            .unwrap();
        assert_eq!(lease.spec.unwrap().holder_identity, None, "released");
    }
}
