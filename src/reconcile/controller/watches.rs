//! The reconciler's reflectors: named-object watches for the three certificate Secrets and the
//! bundle ConfigMap, meshed pods by label, every Deployment, StatefulSet and DaemonSet, and the
//! `cluster` resource; their stores, and which watch fails and why.

use super::*;

/// Stores the reconciler reads from, kept by watches.
pub(super) struct Stores {
    pub(super) rotation: Store<TrustAnchorRotation>,
    pub(super) secrets: Vec<Store<Secret>>,
    pub(super) bundle: Store<ConfigMap>,
    pub(super) pods: Store<Pod>,
    pub(super) deployments: Store<Deployment>,
    pub(super) statefulsets: Store<StatefulSet>,
    pub(super) daemonsets: Store<DaemonSet>,
}

impl Stores {
    /// Whether `workload` is in the watches' caches.
    pub(super) fn holds(&self, workload: &Workload) -> bool {
        fn held<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, w: &Workload) -> bool {
            store
                .get(&ObjectRef::new(&w.name).within(&w.namespace))
                .is_some()
        }
        match workload.kind.as_str() {
            "Deployment" => held(&self.deployments, workload),
            "StatefulSet" => held(&self.statefulsets, workload),
            "DaemonSet" => held(&self.daemonsets, workload),
            _ => false,
        }
    }
}

/// The reconciler's watches: reflectors that wake it on every change, each task named after
/// what it watches (to say which one stopped), and which of them are failing.
pub(super) struct Watches {
    pub(super) wake: Arc<Notify>,
    pub(super) errors: WatchErrors,
    pub(super) failing: Failing,
    pub(super) tasks: tokio::task::JoinSet<()>,
    pub(super) names: std::collections::HashMap<tokio::task::Id, String>,
}

/// The watches whose last attempt failed and that have not listed since, with what went wrong.
/// A watch that failed may have missed changes, and kube's watcher says nothing when a retried
/// watch starts again; so a failed watch lists everything again, and is counted healthy only
/// once that list is in. Their number is published in `gauge`.
#[derive(Clone)]
pub(super) struct Failing {
    pub(super) watches: Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    pub(super) gauge: Gauge,
}

impl Failing {
    pub(super) fn set(&self, what: &str, failure: Option<String>) {
        let mut failing = self.watches.lock().expect("failing watches");
        match failure {
            Some(error) => failing.insert(what.to_owned(), error),
            None => failing.remove(what),
        };
        self.gauge.set(failing.len() as i64);
    }

    /// `watch of X (error); ...`, or `None` when every watch is healthy.
    pub(super) fn describe(&self) -> Option<String> {
        let failing = self.watches.lock().expect("failing watches");
        (!failing.is_empty()).then(|| {
            (failing.iter())
                .map(|(what, error)| format!("the watch of {what} ({error})"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl Watches {
    /// `failing` counts the watches failing now.
    pub(super) fn new(errors: WatchErrors, failing: Gauge) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            errors,
            failing: Failing {
                watches: Default::default(),
                gauge: failing,
            },
            tasks: tokio::task::JoinSet::new(),
            names: std::collections::HashMap::new(),
        }
    }

    /// A store of what `api` and `config` select, fed by a watch (described as `what` in logs)
    /// whose failed attempts are counted, marked failing and retried with backoff, each retry
    /// listing everything again. `managed_fields`: keep them (who wrote the bundle is read from
    /// them); elsewhere they are dropped (on a large cluster they are much of the memory a
    /// cache of every Deployment and meshed Pod takes).
    pub(super) fn reflect<K>(
        &mut self,
        what: String,
        api: Api<K>,
        config: watcher::Config,
        managed_fields: bool,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (reader, mut writer) = reflector::store();
        self.errors.watching(&K::kind(&()));
        let (wake, errors, failing) =
            (self.wake.clone(), self.errors.clone(), self.failing.clone());
        let task_what = what.clone();
        let id = self
            .tasks
            .spawn(async move {
                // Not `watch::with_backoff` over one watcher: after a failed watch, kube's
                // watcher may resume from its last resourceVersion without listing again, and
                // a watch marked failing is cleared only by a whole new list (`InitDone`). So
                // each failure starts a new watcher, which lists.
                let mut backoff = crate::watch::Backoff::default();
                loop {
                    let mut events = std::pin::pin!(
                        watcher::watcher(api.clone(), config.clone()).modify(move |o: &mut K| {
                            if !managed_fields {
                                o.managed_fields_mut().clear();
                            }
                        })
                    );
                    while let Some(event) = events.next().await {
                        let event = match event {
                            Ok(event) => event,
                            Err(e) => {
                                let brief = errors.report(&K::kind(&()), &task_what, &e);
                                failing.set(&task_what, Some(brief));
                                break;
                            }
                        };
                        writer.apply_watcher_event(&event);
                        match event {
                            // The store now holds the whole list: whatever a failure may have
                            // missed is in.
                            watcher::Event::InitDone => {
                                failing.set(&task_what, None);
                                backoff = crate::watch::Backoff::default();
                            }
                            // Wake once the list is in, not for each object of it.
                            watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                            // Deletions too: a deleted bundle ConfigMap or previous-anchor
                            // Secret is put back at the next look, not after the idle interval.
                            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
                        }
                        wake.notify_one();
                    }
                    wake.notify_one();
                    tokio::time::sleep(backoff.next()).await;
                }
            })
            .id();
        self.names.insert(id, what);
        reader
    }

    /// Waits until a watch task ends (none should: the watcher retries every error) and says
    /// which one and how. Pending forever when there is none.
    pub(super) async fn stopped(&mut self) -> String {
        let Some(ended) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, how) = match ended {
            Ok((id, ())) => (id, "ended".to_owned()),
            Err(e) if e.is_panic() => (e.id(), "panicked".to_owned()),
            Err(e) => (e.id(), e.to_string()),
        };
        let what = self.names.get(&id).map_or("a watch", String::as_str);
        format!("the watch of {what} {how}")
    }
}

/// Waits up to `every` for `synced` (the stores, one after another): `Ok(true)` once they have
/// listed, `Ok(false)` when `every` has passed first, and `Err` with which watch task ended and
/// how if one does: one whose store is further down the list is seen at once, not once those
/// before it have listed.
pub(super) async fn until_synced(
    watches: &mut Watches,
    synced: std::pin::Pin<&mut impl Future<Output = bool>>,
    every: Duration,
) -> Result<bool, String> {
    tokio::select! {
        // A store's wait fails only if its watch's task ended, which `stopped` names.
        synced = synced => if synced { Ok(true) } else { Err(watches.stopped().await) },
        stopped = watches.stopped() => Err(stopped),
        _ = tokio::time::sleep(every) => Ok(false),
    }
}

pub(super) fn named(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}
