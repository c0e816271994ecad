//! Kubernetes Events, written the way client-go's event recorder writes them (core/v1, so
//! `kubectl describe` and `kubectl get events` show them).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// `Normal` or `Warning`, as Kubernetes spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Records one event on `regarding`. Failures are logged, never returned: an event is a
/// courtesy to the reader, and losing one must not stop the component that emits it.
pub async fn emit(
    client: &Client,
    component: &str,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let namespace = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let nanos = now.0.as_nanosecond();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{nanos:x}",
                regarding.name.as_deref().unwrap_or(component)
            )),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: regarding.clone(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        source: Some(EventSource {
            component: Some(component.to_owned()),
            host: None,
        }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(%reason, error = %e, "could not record event");
    }
}
