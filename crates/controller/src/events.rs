//! Events on VMs and VMIs, written as core/v1 Events so `kubectl describe` lists them.
//!
//! kube-runtime's `Recorder` writes `events.k8s.io/v1` objects; `kubectl describe` (1.32)
//! reads core/v1 Events, which every API server serves, so this small recorder writes those.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};

/// Severity of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Publishes core/v1 Events about objects for one component.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    component: String,
    host: Option<String>,
}

impl EventRecorder {
    pub fn new(client: Client, component: &str, host: Option<String>) -> Self {
        EventRecorder {
            client,
            component: component.into(),
            host,
        }
    }

    /// Records an event; failures are logged, never fatal (events are best effort, as in
    /// client-go's recorder).
    pub async fn publish(
        &self,
        obj: &DynamicObject,
        api_version: &str,
        kind: &str,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let namespace = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = obj.metadata.name.clone().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                uid: obj.metadata.uid.clone(),
                resource_version: obj.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: self.host.clone(),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(%namespace, %name, %reason, %error, "could not record event");
        }
    }
}
