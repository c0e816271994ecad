//! What the reconciler remembers from one look to the next: its own writes until the watches
//! show them, restarts made and refused, the events published.

use super::*;

/// An object the reconciler writes and also reads from a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OwnWrite {
    Bundle,
    PreviousAnchor,
}

impl OwnWrite {
    pub(super) fn target(effect: &Effect) -> Option<Self> {
        match effect {
            Effect::WriteBundle { .. } => Some(OwnWrite::Bundle),
            Effect::WritePreviousAnchor { .. } => Some(OwnWrite::PreviousAnchor),
            _ => None,
        }
    }

    /// Its kind and (namespace, name).
    pub(super) fn object(self, config: &ReconcilerConfig) -> (&'static str, &(String, String)) {
        match self {
            OwnWrite::Bundle => ("ConfigMap", &config.names.bundle_configmap),
            OwnWrite::PreviousAnchor => ("Secret", &config.names.previous_anchor_secret),
        }
    }

    /// The object's resourceVersion as the API server has it now (`None`: not there).
    pub(super) async fn server_version(
        self,
        client: &Client,
        config: &ReconcilerConfig,
    ) -> Result<Option<String>, kube::Error> {
        let (_, (ns, name)) = self.object(config);
        Ok(match self {
            OwnWrite::Bundle => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await?
                .and_then(|o| o.resource_version()),
            OwnWrite::PreviousAnchor => Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await?
                .and_then(|o| o.resource_version()),
        })
    }

    /// The object's resourceVersion as its watch shows it (`None`: not there).
    pub(super) fn version(self, config: &ReconcilerConfig, stores: &Stores) -> Option<String> {
        let (_, (ns, name)) = self.object(config);
        match self {
            OwnWrite::Bundle => stores
                .bundle
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|o| o.resource_version()),
            OwnWrite::PreviousAnchor => stores.secrets[1]
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|o| o.resource_version()),
        }
    }

    pub(super) fn describe(self, config: &ReconcilerConfig) -> String {
        let (kind, (ns, name)) = self.object(config);
        format!("{kind} {ns}/{name}")
    }
}

/// What the reconciler remembers from one look to the next (this replica only: a new leader
/// starts afresh, which costs at most one more try of each).
#[derive(Debug, Default)]
pub(super) struct Memory {
    pub(super) own_writes: OwnWrites,
    /// Workloads whose last restart by this replica failed (refused by RBAC or a policy
    /// webhook, or unanswered), with what it was for and the failure, kept until one succeeds:
    /// tried again at the next look, or once its wait is over when it was refused (`retries`),
    /// in the restart slots the others leave (see [`Observed::refused_restarts`]); forgotten
    /// once the workload has been gone for a while, or the rotation is over
    /// ([`forget_restarts`]).
    pub(super) refused_restarts: BTreeMap<Workload, FailedRestart>,
    /// Each refused write's wait before it is tried again.
    pub(super) retries: Retries,
    pub(super) unseen_restarts: UnseenRestarts,
    /// The rotation was missing at the last look, and the log has said so.
    pub(super) said_missing: bool,
    /// The failure to read the issuer Certificate the log said last (see [`issuer_issuance`]).
    pub(super) said_certificate: Lasting,
    pub(super) published: Published,
    pub(super) seen_leaves: SeenLeaves,
    pub(super) count_writes: CountWrites,
    /// The restarts of steps that partly failed which a Normal event has named, until a look's
    /// writes all go through.
    pub(super) announced_restarts: BTreeSet<String>,
    /// The events of writes (see [`announces_a_write`]) that the last look which went
    /// through decided, and those published since by looks whose status write was refused as
    /// stale: a look that decides the same write again (its watch has not shown it yet) does
    /// not say it again.
    pub(super) announced_writes: Vec<Effect>,
    /// Bundle writes refused as conflicts since a look last went through whole or the bundle
    /// was last written (see [`CONFLICT_PATIENCE`]).
    pub(super) bundle_conflicts: u32,
}

/// The step Events the last look published, and the rotation's version once its status was in.
/// A look whose status changes nothing (read at that same version) and that decides the same
/// step again (a workload restarted, whose watch has not shown the restart yet: the repeated
/// patch is a no-op) does not announce it again.
#[derive(Debug, Default)]
pub(super) struct Published {
    pub(super) last: Option<(Option<String>, Vec<Effect>)>,
}

impl Published {
    /// The `events` to publish after a look that left the rotation at `version`, recording
    /// them.
    pub(super) fn fresh<'e>(
        &mut self,
        version: Option<String>,
        events: Vec<&'e Effect>,
    ) -> Vec<&'e Effect> {
        if events.is_empty() {
            return events;
        }
        let owned: Vec<Effect> = events.iter().map(|e| (*e).clone()).collect();
        let repeated = version.is_some()
            && (self.last.as_ref()).is_some_and(|(v, last)| *v == version && *last == owned);
        self.last = Some((version, owned));
        if repeated { Vec::new() } else { events }
    }
}

/// Workload restarts this replica made that the workload watches may not show yet, with what
/// each was for and when it went through. Until a watch shows its marker, a look counts it as
/// the rollout in progress it is: a look from a lagging watch would otherwise see a free slot
/// (the workload's new pod not ready yet holds it back instead of keeping it busy) and restart
/// the next workload in it, past `maxConcurrentWorkloads`.
#[derive(Debug, Default)]
pub(super) struct UnseenRestarts(pub(super) BTreeMap<Workload, (RestartFor, std::time::Instant)>);

impl UnseenRestarts {
    pub(super) fn made(
        &mut self,
        workload: &Workload,
        restart_for: &RestartFor,
        at: std::time::Instant,
    ) {
        self.0.insert(workload.clone(), (restart_for.clone(), at));
    }

    /// Adds to `markers` (as the watches show them) the restarts they do not show yet, as
    /// rollouts in progress. Forgets those they show, and those made longer than
    /// [`OWN_WRITE_PATIENCE`] ago (a workload deleted since, a watch that will not catch up).
    pub(super) fn show(
        &mut self,
        markers: &mut BTreeMap<Workload, RestartMarkers>,
        now: std::time::Instant,
    ) {
        self.0.retain(|workload, (restart_for, at)| {
            let shown = markers.get(workload).is_some_and(|m| m.has(restart_for));
            let unseen = !shown && now.saturating_duration_since(*at) < OWN_WRITE_PATIENCE;
            if unseen {
                let m = markers.entry(workload.clone()).or_default();
                match restart_for {
                    RestartFor::Bundle(marker) => m.bundle = Some(marker.clone()),
                    RestartFor::Issuer(fingerprint) => m.issuer = Some(fingerprint.clone()),
                }
                (m.rollout_complete, m.replacing) = (false, true);
            }
            unseen
        });
    }
}

/// The reconciler's own writes that its watches have not shown yet. Each watch lags on its
/// own: a look right after a pass that wrote the previous anchor and the reduced bundle could
/// see the new bundle beside the old previous anchor, take the rotation for still under way,
/// and write the old anchor back into the bundle. So no look is taken while a watch still shows
/// an object as it was before the reconciler's write (the watch's next event wakes it).
#[derive(Debug, Default)]
pub(super) struct OwnWrites {
    /// What was written, its resourceVersion before the write, and since when it is awaited.
    pub(super) pending: Vec<(OwnWrite, Option<String>, std::time::Instant)>,
    pub(super) warned: bool,
}

impl OwnWrites {
    pub(super) fn wrote(
        &mut self,
        target: OwnWrite,
        before: Option<String>,
        after: Option<String>,
    ) {
        // A write that changed nothing (the same content applied again) is nothing to await.
        if after.is_some() && after != before {
            self.pending.retain(|(t, _, _)| *t != target);
            self.pending
                .push((target, before, std::time::Instant::now()));
        }
    }

    /// Lets go of the writes awaited for longer than [`OWN_WRITE_CONFIRM`] whose object the
    /// API server shows as its watch does: that watch is not behind, the object has only moved
    /// on since the write (deleted again after the reconciler created it, whose watch then
    /// shows "not there" as it did before the write, forever). A look decides from what is
    /// there. A server that cannot be asked changes nothing.
    pub(super) async fn confirm(
        &mut self,
        client: &Client,
        config: &ReconcilerConfig,
        stores: &Stores,
    ) {
        let mut caught_up = Vec::new();
        for (target, _, since) in &self.pending {
            if since.elapsed() > OWN_WRITE_CONFIRM
                && let Ok(version) = target.server_version(client, config).await
                && version == target.version(config, stores)
            {
                caught_up.push(*target);
            }
        }
        self.pending.retain(|(t, _, _)| !caught_up.contains(t));
    }

    /// Whether a look must wait: some watch still shows an object as it was before the write.
    /// (Any other version, the write's own or a later one, is caught up.)
    pub(super) fn awaited(&mut self, config: &ReconcilerConfig, stores: &Stores) -> Awaited {
        self.pending
            .retain(|(target, before, _)| target.version(config, stores) == *before);
        let Some((target, _, since)) = self.pending.first() else {
            self.warned = false;
            return Awaited::No;
        };
        if since.elapsed() > OWN_WRITE_PATIENCE && !self.warned {
            self.warned = true;
            let object = target.describe(config);
            tracing::warn!(
                %object,
                "the watch has not shown the reconciler's own write for {OWN_WRITE_PATIENCE:?}; holding the rotation until it does"
            );
            return Awaited::Overdue(object);
        }
        Awaited::Yes
    }
}

/// Whether a look waits for a watch to show the reconciler's own write.
#[derive(Debug, PartialEq)]
pub(super) enum Awaited {
    No,
    Yes,
    /// Yes, and for longer than [`OWN_WRITE_PATIENCE`] as of now (said once): the object.
    Overdue(String),
}

/// How long a lagging watch is waited for before the log says so.
pub(super) const OWN_WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// How long a write is awaited before the API server is asked whether the watch is behind.
pub(super) const OWN_WRITE_CONFIRM: Duration = Duration::from_secs(5);
