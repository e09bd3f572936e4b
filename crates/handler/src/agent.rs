//! The node agent's VMI reconciler: start, report, stop, release.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{json, Value};
use tracing::{info, instrument, warn};

use kubevirt_controller::events::{EventRecorder, EventType};
use kubevirt_controller::finalizer;
use kubevirt_controller::model::{VmiPhase, VmiView};
use kubevirt_controller::resources::{ns_name, vmi_resource, NODE_NAME_LABEL, VMI_FINALIZER};

use crate::error::{HandlerError, Result};
use crate::ops::{DomainReport, DomainState, LauncherOps, VmiKey};
use crate::status::{unchanged, vmi_status_patch};

/// Upstream's default `terminationGracePeriodSeconds` for a VMI.
pub const DEFAULT_GRACE_SECONDS: u64 = 180;
/// How long a freshly spawned launcher may take to answer before the agent assumes it died.
const START_WINDOW: Duration = Duration::from_secs(120);

pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
    pub node_name: String,
    pub ops: Arc<dyn LauncherOps>,
    /// Launchers spawned by this agent that have not answered yet (never spawn twice).
    started: Mutex<HashMap<String, Instant>>,
    /// VMIs whose launcher was already asked to stop.
    stopping: Mutex<HashSet<String>>,
}

impl Context {
    pub fn new(client: Client, node_name: String, ops: Arc<dyn LauncherOps>) -> Self {
        Context {
            recorder: EventRecorder::new(client.clone(), "virt-handler", Some(node_name.clone())),
            client,
            node_name,
            ops,
            started: Mutex::new(HashMap::new()),
            stopping: Mutex::new(HashSet::new()),
        }
    }
}

pub fn vmi_key(vmi: &DynamicObject) -> VmiKey {
    let (namespace, name) = ns_name(vmi);
    VmiKey {
        namespace,
        name,
        uid: vmi.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Annotation the `stop --grace-period` subresource puts on a VMI to shorten its grace
/// period (the VMI spec itself is immutable after creation).
pub const STOP_GRACE_ANNOTATION: &str = "kubevirt-rs.io/stop-grace-period-seconds";

/// The grace period to stop a VMI with: a `stop --grace-period` override, else the spec's
/// `terminationGracePeriodSeconds`, else upstream's default.
pub fn grace_seconds(vmi: &DynamicObject) -> u64 {
    let spec = vmi
        .data
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let over = vmi
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STOP_GRACE_ANNOTATION))
        .and_then(|v| v.parse::<u64>().ok());
    over.map_or(spec, |o| o.min(spec))
}

fn api_err(action: &'static str, key: &VmiKey) -> impl FnOnce(kube::Error) -> HandlerError {
    let key = key.clone();
    move |source| HandlerError::Api {
        action,
        kind: "VirtualMachineInstance",
        namespace: key.namespace,
        name: key.name,
        source: Box::new(source),
    }
}

async fn publish(ctx: &Context, vmi: &DynamicObject, type_: EventType, reason: &str, msg: &str) {
    ctx.recorder
        .publish(
            vmi,
            "kubevirt.io/v1",
            "VirtualMachineInstance",
            type_,
            reason,
            msg,
        )
        .await;
}

async fn write_status(
    api: &Api<DynamicObject>,
    vmi: &DynamicObject,
    key: &VmiKey,
    report: &DomainReport,
) -> Result<bool> {
    let current = vmi.data.get("status").cloned().unwrap_or(json!({}));
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = vmi_status_patch(&current, report, &now);
    if unchanged(&current, &patch) {
        return Ok(false);
    }
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err("updating status of", key))?;
    Ok(true)
}

#[instrument(skip(vmi, ctx), fields(namespace = vmi.metadata.namespace.as_deref().unwrap_or(""), name = vmi.metadata.name.as_deref().unwrap_or("")))]
pub async fn reconcile(vmi: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action> {
    let key = vmi_key(&vmi);
    let view = VmiView::from_object(&vmi)?;
    if view.node_name.as_deref() != Some(ctx.node_name.as_str()) {
        return Ok(Action::await_change());
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &key.namespace, &vmi_resource());
    let report = ctx.ops.report(&key).await?;
    if report.is_some() {
        lock(&ctx.started).remove(&key.uid);
    }

    if vmi.metadata.deletion_timestamp.is_some() {
        return match report {
            Some(r) if !r.state.is_final() => {
                let first = lock(&ctx.stopping).insert(key.uid.clone());
                if first {
                    let grace = grace_seconds(&vmi);
                    ctx.ops.stop(&key, grace).await?;
                    info!(grace, "stopping VirtualMachineInstance");
                    publish(
                        &ctx,
                        &vmi,
                        EventType::Normal,
                        "ShuttingDown",
                        "Signaled Graceful Shutdown",
                    )
                    .await;
                }
                Ok(Action::requeue(Duration::from_secs(1)))
            }
            other => {
                if lock(&ctx.started).contains_key(&key.uid) {
                    // Spawned but not answering yet: wait for it so it can be stopped.
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                if !view.phase.is_final() {
                    let fin = other.unwrap_or(DomainReport {
                        state: DomainState::Succeeded,
                        software_emulation: None,
                        interfaces: vec![],
                        guest_os_info: None,
                        agent_connected: false,
                        message: None,
                    });
                    write_status(&api, &vmi, &key, &fin).await?;
                }
                ctx.ops.forget(&key).await?;
                finalizer::remove(&api, &vmi, "VirtualMachineInstance", VMI_FINALIZER).await?;
                lock(&ctx.stopping).remove(&key.uid);
                publish(
                    &ctx,
                    &vmi,
                    EventType::Normal,
                    "Stopped",
                    "The VirtualMachineInstance was shut down.",
                )
                .await;
                Ok(Action::await_change())
            }
        };
    }

    match report {
        Some(r) => {
            let was_running = view.phase == VmiPhase::Running;
            write_status(&api, &vmi, &key, &r).await?;
            if !was_running && matches!(r.state, DomainState::Running | DomainState::Paused) {
                publish(
                    &ctx,
                    &vmi,
                    EventType::Normal,
                    "Started",
                    "VirtualMachineInstance started.",
                )
                .await;
            }
            if r.state.is_final() {
                if !view.phase.is_final() {
                    let (type_, reason) = if r.state == DomainState::Succeeded {
                        (EventType::Normal, "Stopped")
                    } else {
                        (EventType::Warning, "Failed")
                    };
                    let msg = r
                        .message
                        .clone()
                        .unwrap_or_else(|| "The VirtualMachineInstance stopped.".into());
                    publish(&ctx, &vmi, type_, reason, &msg).await;
                }
                Ok(Action::await_change())
            } else {
                Ok(Action::requeue(Duration::from_secs(3)))
            }
        }
        None => match view.phase {
            VmiPhase::Scheduled => {
                let recently = lock(&ctx.started)
                    .get(&key.uid)
                    .is_some_and(|t| t.elapsed() < START_WINDOW);
                if !recently {
                    let body = serde_json::to_value(&*vmi).map_err(|e| HandlerError::Launcher {
                        vmi: key.to_string(),
                        reason: format!("serialising the VMI: {e}"),
                    })?;
                    let secrets = match cloud_init_secrets(&ctx.client, &key.namespace, &body).await
                    {
                        Ok(s) => s,
                        Err(e) => {
                            publish(&ctx, &vmi, EventType::Warning, "SyncFailed", &e.to_string())
                                .await;
                            return Err(e);
                        }
                    };
                    lock(&ctx.started).insert(key.uid.clone(), Instant::now());
                    if let Err(e) = ctx.ops.start(&key, &body, &secrets).await {
                        lock(&ctx.started).remove(&key.uid);
                        publish(&ctx, &vmi, EventType::Warning, "SyncFailed", &e.to_string()).await;
                        return Err(e);
                    }
                    info!("launcher started");
                    publish(
                        &ctx,
                        &vmi,
                        EventType::Normal,
                        "Created",
                        "VirtualMachineInstance defined.",
                    )
                    .await;
                }
                Ok(Action::requeue(Duration::from_millis(500)))
            }
            VmiPhase::Running => {
                if lock(&ctx.started).contains_key(&key.uid) {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                warn!("launcher vanished without a record");
                let lost = DomainReport {
                    state: DomainState::Failed,
                    software_emulation: None,
                    interfaces: vec![],
                    guest_os_info: None,
                    agent_connected: false,
                    message: Some("the VM's launcher is gone from this node".into()),
                };
                write_status(&api, &vmi, &key, &lost).await?;
                publish(
                    &ctx,
                    &vmi,
                    EventType::Warning,
                    "Failed",
                    "the VM's launcher is gone from this node",
                )
                .await;
                Ok(Action::await_change())
            }
            _ => Ok(Action::await_change()),
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these small maps leaves them consistent; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn error_policy(vmi: Arc<DynamicObject>, error: &HandlerError, _ctx: Arc<Context>) -> Action {
    let (namespace, name) = ns_name(&vmi);
    warn!(%namespace, %name, %error, "node agent reconcile failed");
    if error.is_transient() {
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::requeue(Duration::from_secs(30))
    }
}

/// Runs the node agent for `node_name` until `shutdown` resolves. Watches only the VMIs the
/// scheduler labelled for this node.
pub async fn run(
    client: Client,
    node_name: String,
    ops: Arc<dyn LauncherOps>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let vmis: Api<DynamicObject> = Api::all_with(client.clone(), &vmi_resource());
    let wc = watcher::Config::default().labels(&format!("{NODE_NAME_LABEL}={node_name}"));
    let ctx = Arc::new(Context::new(client, node_name, ops));
    Controller::new_with(vmis, wc, vmi_resource())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(error) = res {
                tracing::debug!(%error, "node agent reconcile");
            }
        })
        .await;
}

/// The Secrets the VMI's cloud-init volumes refer to (`secretRef`, `networkDataSecretRef`),
/// read from the VMI's namespace, as `{name: {key: base64}}` for the launcher: the launcher
/// never talks to the API.
pub async fn cloud_init_secrets(client: &Client, namespace: &str, vmi: &Value) -> Result<Value> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    let mut out = serde_json::Map::new();
    for name in cloud_init_secret_names(vmi) {
        let secret = api.get(&name).await.map_err(|source| HandlerError::Api {
            action: "reading the cloud-init",
            kind: "Secret",
            namespace: namespace.to_string(),
            name: name.clone(),
            source: Box::new(source),
        })?;
        let data = serde_json::to_value(secret.data.unwrap_or_default()).unwrap_or_default();
        out.insert(name, data);
    }
    Ok(Value::Object(out))
}

/// Names of the Secrets referenced by `spec.volumes[*].cloudInitNoCloud|cloudInitConfigDrive`.
pub fn cloud_init_secret_names(vmi: &Value) -> Vec<String> {
    let mut names = Vec::new();
    let volumes = vmi["spec"]["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for volume in volumes {
        for source in ["cloudInitNoCloud", "cloudInitConfigDrive"] {
            for reference in ["secretRef", "networkDataSecretRef"] {
                if let Some(name) = volume[source][reference]["name"].as_str() {
                    if !names.iter().any(|n| n == name) {
                        names.push(name.to_string());
                    }
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(grace: Option<u64>, annotation: Option<&str>) -> DynamicObject {
        let mut o = DynamicObject::new("v", &vmi_resource());
        if let Some(g) = grace {
            o.data = json!({"spec": {"terminationGracePeriodSeconds": g}});
        }
        if let Some(a) = annotation {
            o.metadata.annotations =
                Some([(STOP_GRACE_ANNOTATION.to_string(), a.to_string())].into());
        }
        o
    }

    #[test]
    fn grace_period_sources() {
        assert_eq!(grace_seconds(&vmi(None, None)), DEFAULT_GRACE_SECONDS);
        assert_eq!(grace_seconds(&vmi(Some(30), None)), 30);
        assert_eq!(grace_seconds(&vmi(Some(30), Some("0"))), 0);
        assert_eq!(
            grace_seconds(&vmi(Some(30), Some("100"))),
            30,
            "an override never lengthens"
        );
        assert_eq!(grace_seconds(&vmi(Some(30), Some("junk"))), 30);
    }
}
