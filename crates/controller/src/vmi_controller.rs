//! The VirtualMachineInstance controller in embedded mode: the scheduler of a one-node
//! cluster. It guards new VMIs with the finalizer, assigns them to the node (phase
//! Scheduled, `status.nodeName`, label `kubevirt.io/nodeName`), and releases VMIs that no
//! node agent will ever handle (deleted before scheduling, or already finished).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{json, Value};
use tracing::{info, instrument, warn};

use crate::error::{ControllerError, Result};
use crate::events::{EventRecorder, EventType};
use crate::finalizer;
use crate::model::{VmiPhase, VmiView};
use crate::resources::{
    ns_name, vmi_resource, NODE_NAME_LABEL, VMI_CONTROLLER_NAME, VMI_FINALIZER,
};

pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
    /// The node every VMI is placed on.
    pub node_name: String,
}

/// What the scheduler does with one VMI.
#[derive(Debug, PartialEq, Eq)]
pub enum SchedulerStep {
    /// Release the finalizer: no node agent owns this VMI.
    Release,
    /// Put the finalizer on first.
    Guard,
    /// Assign to the node.
    Schedule,
    Nothing,
}

pub fn next_step(vmi: &VmiView, deleting: bool, has_finalizer: bool) -> SchedulerStep {
    if deleting {
        if has_finalizer && (vmi.node_name.is_none() || vmi.phase.is_final()) {
            return SchedulerStep::Release;
        }
        return SchedulerStep::Nothing;
    }
    if !has_finalizer && !vmi.phase.is_final() {
        return SchedulerStep::Guard;
    }
    if vmi.node_name.is_none() && matches!(vmi.phase, VmiPhase::Pending | VmiPhase::Scheduling) {
        return SchedulerStep::Schedule;
    }
    SchedulerStep::Nothing
}

/// The status patch that places a VMI on `node`.
pub fn schedule_patch(current_status: &Value, node: &str, now: &str) -> Value {
    let mut transitions: Vec<Value> = current_status
        .get("phaseTransitionTimestamps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for phase in ["Pending", "Scheduled"] {
        if !transitions.iter().any(|t| t["phase"] == phase) {
            transitions.push(json!({"phase": phase, "phaseTransitionTimestamp": now}));
        }
    }
    json!({"status": {
        "phase": "Scheduled",
        "nodeName": node,
        "phaseTransitionTimestamps": transitions,
    }})
}

#[instrument(skip(vmi, ctx), fields(namespace = vmi.metadata.namespace.as_deref().unwrap_or(""), name = vmi.metadata.name.as_deref().unwrap_or("")))]
pub async fn reconcile(vmi: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action> {
    let (namespace, name) = ns_name(&vmi);
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &vmi_resource());
    let view = VmiView::from_object(&vmi)?;
    let step = next_step(
        &view,
        vmi.metadata.deletion_timestamp.is_some(),
        finalizer::has_finalizer(&vmi, VMI_FINALIZER),
    );
    let err = |action: &'static str| {
        let (namespace, name) = (namespace.clone(), name.clone());
        move |source| ControllerError::Api {
            action,
            kind: "VirtualMachineInstance",
            namespace,
            name,
            source: Box::new(source),
        }
    };
    match step {
        SchedulerStep::Release => {
            finalizer::remove(&api, &vmi, "VirtualMachineInstance", VMI_FINALIZER).await?
        }
        SchedulerStep::Guard => {
            finalizer::add(&api, &vmi, "VirtualMachineInstance", VMI_FINALIZER).await?
        }
        SchedulerStep::Schedule => {
            let label = json!({"metadata": {"labels": {NODE_NAME_LABEL: ctx.node_name}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&label))
                .await
                .map_err(err("labelling"))?;
            let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let status = vmi.data.get("status").cloned().unwrap_or(Value::Null);
            let patch = schedule_patch(&status, &ctx.node_name, &now);
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err("scheduling"))?;
            info!(node = %ctx.node_name, "scheduled VirtualMachineInstance");
            ctx.recorder
                .publish(
                    &vmi,
                    "kubevirt.io/v1",
                    "VirtualMachineInstance",
                    EventType::Normal,
                    "Scheduled",
                    &format!(
                        "Successfully assigned {namespace}/{name} to {}",
                        ctx.node_name
                    ),
                )
                .await;
        }
        SchedulerStep::Nothing => {}
    }
    Ok(Action::await_change())
}

pub fn error_policy(
    vmi: Arc<DynamicObject>,
    error: &ControllerError,
    _ctx: Arc<Context>,
) -> Action {
    let (namespace, name) = ns_name(&vmi);
    warn!(%namespace, %name, %error, "reconciling VirtualMachineInstance failed");
    if error.is_transient() {
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::requeue(Duration::from_secs(60))
    }
}

/// Runs the embedded scheduler for `node_name` until `shutdown` resolves.
pub async fn run(
    client: Client,
    node_name: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let vmis: Api<DynamicObject> = Api::all_with(client.clone(), &vmi_resource());
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), VMI_CONTROLLER_NAME, None),
        client,
        node_name,
    });
    Controller::new_with(vmis, watcher::Config::default(), vmi_resource())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(error) = res {
                tracing::debug!(%error, "VirtualMachineInstance reconcile");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runstrategy::tests::vmi;

    #[test]
    fn scheduler_steps() {
        let pending = vmi("a", VmiPhase::Pending);
        assert_eq!(next_step(&pending, false, false), SchedulerStep::Guard);
        assert_eq!(next_step(&pending, false, true), SchedulerStep::Schedule);
        assert_eq!(next_step(&pending, true, true), SchedulerStep::Release);
        let mut placed = vmi("a", VmiPhase::Running);
        placed.node_name = Some("n".into());
        assert_eq!(next_step(&placed, false, true), SchedulerStep::Nothing);
        // A deleted VMI on a node waits for that node's agent to stop it.
        assert_eq!(next_step(&placed, true, true), SchedulerStep::Nothing);
        let mut done = placed.clone();
        done.phase = VmiPhase::Succeeded;
        assert_eq!(next_step(&done, true, true), SchedulerStep::Release);
    }

    #[test]
    fn schedule_patch_records_transitions_once() {
        let p = schedule_patch(&json!({}), "node1", "t1");
        assert_eq!(p["status"]["phase"], "Scheduled");
        assert_eq!(p["status"]["nodeName"], "node1");
        assert_eq!(
            p["status"]["phaseTransitionTimestamps"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let again = schedule_patch(&p["status"], "node1", "t2");
        assert_eq!(
            again["status"]["phaseTransitionTimestamps"][0]["phaseTransitionTimestamp"],
            "t1"
        );
    }
}
