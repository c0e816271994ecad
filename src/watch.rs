//! What the webhook's view and the reconciler share about their watches: a failed watch is
//! retried after a growing wait (`with_backoff`, or the reconciler's own loop), logged
//! naming what was watched, and counted by resource, so that a watch that keeps failing (permissions missing, a CRD not
//! installed, an API server out of reach) is visible before anything else goes wrong.

use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    /// The kind watched (`ConfigMap`, `Pod`, ...): a fixed set, from the code.
    resource: String,
}

/// Failed watch attempts (each retried), by the kind of resource watched.
#[derive(Clone, Default)]
pub struct WatchErrors {
    family: Family<ResourceLabels, Counter>,
}

impl WatchErrors {
    /// Registers the counter as `<name>_total`.
    pub fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let errors = Self::default();
        registry.register(name, help, errors.family.clone());
        errors
    }

    /// Shows the counter for `kind` at 0 from the start, so that a rate or an increase over it
    /// has a series to work on before the first failure.
    pub fn watching(&self, kind: &str) {
        let _created = self.family.get_or_create(&ResourceLabels {
            resource: kind.to_owned(),
        });
    }

    /// Logs and counts one failed attempt of the watch of `what` (a `kind` resource); returns
    /// the error as logged (`brief`).
    pub fn report(&self, kind: &str, what: &str, error: &watcher::Error) -> String {
        let mut brief = brief(error);
        if kind == "TrustAnchorRotation" && not_found(error) {
            brief.push_str(
                "; is the CRD installed? (`trust-rotation-operator crd | kubectl apply -f -`)",
            );
        }
        tracing::warn!(watch = what, error = %brief, "watch failed; retrying with backoff");
        self.family
            .get_or_create(&ResourceLabels {
                resource: kind.to_owned(),
            })
            .inc();
        brief
    }
}

/// Between attempts of a failed watch: 1 s, doubling up to 30 s; back to 1 s once it lists.
pub(crate) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_secs(1))
    }
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(30);

    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        wait
    }
}

/// A watcher's events, each failed attempt followed by a [`Backoff`] wait before the watcher is
/// asked again, the wait reset only by progress: a whole list (`InitDone`), or a change seen
/// by a watch the watcher resumed without listing again. kube's own `default_backoff` resets on
/// any event, and a relist begins with one (`Init`), so against an API server that fails every
/// list it retried about once a second forever.
pub(crate) fn with_backoff<K, S>(
    events: S,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let state = (Box::pin(events), Backoff::default(), None::<Duration>);
    futures::stream::unfold(state, |(mut events, mut backoff, wait)| async move {
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
        let event = events.next().await?;
        let wait = match &event {
            Err(_) => Some(backoff.next()),
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                backoff = Backoff::default();
                None
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
        };
        Some((event, (events, backoff, wait)))
    })
}

/// `doing: ` and what went wrong, as [`api_words`] says it.
pub(crate) fn in_api_words(doing: &str, error: &kube::Error) -> String {
    format!("{doing}: {}", api_words(error))
}

/// What went wrong with a request: in the API server's own words when it answered (its
/// message and code), without the client's debug dump of the whole Status; else the error with
/// every cause under it, down to the one that says why (`Connection refused`, a certificate
/// the kubeconfig's CA did not sign), which kube's own text leaves out.
pub(crate) fn api_words(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status_words(status),
        other => with_causes(other),
    }
}

/// `error: cause: cause...`, each cause once (an error that already quotes its cause is not
/// made to repeat it).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = e.source();
    }
    text
}

fn status_words(status: &kube::core::Status) -> String {
    format!("{} ({})", status.message, status.code)
}

/// Whether the API server answered a list or watch with 404: for a custom resource, its CRD is
/// not installed.
fn not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 404,
        watcher::Error::WatchError(status) => status.code == 404,
        _ => false,
    }
}

/// What went wrong with a watch, as [`in_api_words`] says it.
pub(crate) fn brief(error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(e) => in_api_words("listing failed", e),
        watcher::Error::WatchStartFailed(e) => in_api_words("starting the watch failed", e),
        watcher::Error::WatchFailed(e) => in_api_words("the watch failed", e),
        watcher::Error::WatchError(status) => {
            format!("the API server ended the watch: {}", status_words(status))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Events = Vec<Result<watcher::Event<()>, watcher::Error>>;

    /// The API server failing a request with 500, as a watch error `wrap` makes of it.
    fn failure(
        wrap: fn(kube::Error) -> watcher::Error,
    ) -> Result<watcher::Event<()>, watcher::Error> {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 500, "message": "etcd is away"
        }))
        .unwrap();
        Err(wrap(kube::Error::Api(status.into())))
    }

    /// The second (of paused time) at which each of `events` comes out of [`with_backoff`].
    async fn seconds_seen(events: Events) -> Vec<u64> {
        let start = tokio::time::Instant::now();
        with_backoff(futures::stream::iter(events))
            .map(|_| start.elapsed().as_secs())
            .collect()
            .await
    }

    /// Failed attempts wait 1 s, 2 s, 4 s...; the `Init` that begins every relist does not
    /// reset that (kube's `default_backoff` did, so it retried every second forever); a whole
    /// list (`InitDone`) does.
    #[tokio::test(start_paused = true)]
    async fn a_watch_that_keeps_failing_waits_longer_each_time_until_it_lists() {
        use watcher::Event;
        let failed = || failure(watcher::Error::InitialListFailed);
        let events: Events = vec![
            failed(),
            failed(),
            failed(),
            Ok(Event::Init),
            failed(),
            Ok(Event::Init),
            Ok(Event::InitDone),
            failed(),
            Ok(Event::Init),
        ];
        // Each item comes after the wait its predecessor earned.
        assert_eq!(seconds_seen(events).await, [0, 1, 3, 7, 7, 15, 15, 15, 16]);
    }

    /// A watch the watcher resumed after a failure, without listing again, resets the wait
    /// with the first change it delivers: the next failure waits 1 s again, not twice as long.
    #[tokio::test(start_paused = true)]
    async fn a_resumed_watch_that_delivers_a_change_resets_the_wait() {
        use watcher::Event;
        let failed = || failure(watcher::Error::WatchFailed);
        let events: Events = vec![
            failed(),
            failed(),
            Ok(Event::Apply(())),
            failed(),
            Ok(Event::Delete(())),
        ];
        assert_eq!(seconds_seen(events).await, [0, 1, 3, 3, 4]);
    }

    /// An API server that cannot be reached is named with why: kube's own text stops at
    /// "client error (Connect)".
    #[tokio::test]
    async fn an_unreachable_api_server_says_why() {
        // A port nothing listens on: from below the ephemeral range, where no connection a
        // parallel test opens can take it in the meantime.
        let port = crate::testbed::free_port().unwrap();
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let error = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
            .list(&Default::default())
            .await
            .unwrap_err();
        let words = in_api_words("listing namespaces", &error);
        assert!(words.starts_with("listing namespaces: "), "{words}");
        assert!(words.contains("Connection refused"), "{words}");
        assert!(!error.to_string().contains("Connection refused"), "{error}");
    }

    #[test]
    fn a_refusal_reads_as_the_api_servers_message() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "namespaces is forbidden: User \"operator\" cannot list resource \"namespaces\""
        }))
        .unwrap();
        let error = watcher::Error::InitialListFailed(kube::Error::Api(status.into()));
        assert_eq!(
            brief(&error),
            "listing failed: namespaces is forbidden: User \"operator\" cannot list resource \"namespaces\" (403)"
        );
    }
}
