//! The VirtualMachineInstance controller (upstream's virt-controller VMI loop), the same code
//! in embedded and cluster mode: creates each VMI's virt-launcher Pod, follows the pod to
//! move the VMI through Pending, Scheduling and Scheduled, marks it Failed when the pod dies
//! before the VMI finished, deletes the pods of a deleted VMI, and releases the VMI's
//! finalizer once no pod of it is left. Pod placement is the scheduler's, running the pod the
//! kubelet's (the embedded node agent on one machine); Running and beyond the node agent's.

use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use kubevirt_api::launcher_pod::{launcher_pod, LauncherPodSettings};
use kubevirt_api::v1::well_known::{
    CREATED_BY_LABEL, NODE_NAME_LABEL, UNPAUSED_POD_CONDITION, VMI_FINALIZER,
};
use kubevirt_api::v1::{
    vmi_condition, VirtualMachineInstance, VirtualMachineInstancePhase as Phase,
};
use kubevirt_reconcile::events::{EventRecorder, EventType};
use kubevirt_reconcile::{api_call, api_call_on, finalizer, status::write_status};

use crate::error::{ControllerError, Result};
use crate::vmi_status::{controlled_pods, current_pod, pod_down, vmi_status, SyncError};

/// Name of the controller in events.
pub const COMPONENT: &str = "virtualmachineinstance-controller";

pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
    /// How launcher pods are rendered (image, command, emulation, CPU ratio).
    pub pod_settings: LauncherPodSettings,
}

impl Context {
    pub fn new(client: Client, pod_settings: LauncherPodSettings) -> Self {
        Context {
            recorder: EventRecorder::new(client.clone(), COMPONENT, None),
            client,
            pod_settings,
        }
    }
}

/// The pod condition behind the launcher pod's readiness gate: False while the VMI is paused.
pub fn unpaused_condition(vmi: &VirtualMachineInstance, now: Timestamp) -> PodCondition {
    let paused = vmi.condition_true(vmi_condition::PAUSED);
    PodCondition {
        type_: UNPAUSED_POD_CONDITION.into(),
        status: if paused { "False" } else { "True" }.into(),
        reason: Some(if paused { "Paused" } else { "NotPaused" }.into()),
        message: Some(
            if paused {
                "the virtual machine is paused"
            } else {
                "the virtual machine is not paused"
            }
            .into(),
        ),
        last_transition_time: Some(Time(now)),
        ..Default::default()
    }
}

/// Keeps the pod's readiness-gate condition in line with the VMI (the kubelet folds it into
/// the pod's Ready condition).
async fn sync_unpaused(
    pods: &Api<Pod>,
    pod: &Pod,
    vmi: &VirtualMachineInstance,
    now: Timestamp,
) -> Result<()> {
    let want = unpaused_condition(vmi, now);
    let mut status = pod.status.clone().unwrap_or_default();
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions
        .iter_mut()
        .find(|c| c.type_ == UNPAUSED_POD_CONDITION)
    {
        Some(c) if c.status == want.status => return Ok(()),
        Some(c) => *c = want,
        None => conditions.push(want),
    }
    write_status(pods, pod, pod.status.as_ref(), &status).await?;
    Ok(())
}

/// Whether the VMI's claims can be used: a missing claim is named (upstream's
/// `FailedPvcNotFound`); a DataVolume still filling its claim makes the pod wait.
enum ClaimsReady {
    Yes,
    NotYet,
    Missing(String),
}

async fn claims_ready(client: &kube::Client, vmi: &VirtualMachineInstance) -> Result<ClaimsReady> {
    use kubevirt_api::v1::VolumeSource;
    let ns = vmi.namespace().unwrap_or_default();
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &ns);
    let dvs: Api<kubevirt_api::cdi::DataVolume> = Api::namespaced(client.clone(), &ns);
    for v in &vmi.spec.volumes.clone().unwrap_or_default() {
        let (claim, data_volume) = match v.source() {
            Some(VolumeSource::PersistentVolumeClaim(c)) => (c.claim_name.clone(), false),
            Some(VolumeSource::DataVolume(d)) => (d.name.clone(), true),
            _ => continue,
        };
        if data_volume {
            let dv = dvs.get_opt(&claim).await.map_err(api_call_on(
                "getting",
                "DataVolume",
                &ns,
                &claim,
            ))?;
            if dv.is_some_and(|d| !d.succeeded()) {
                return Ok(ClaimsReady::NotYet);
            }
        }
        let exists = claims
            .get_opt(&claim)
            .await
            .map_err(api_call_on("getting", "PersistentVolumeClaim", &ns, &claim))?
            .is_some();
        if !exists {
            return Ok(ClaimsReady::Missing(claim));
        }
    }
    Ok(ClaimsReady::Yes)
}

#[instrument(skip(vmi, ctx), fields(namespace = vmi.metadata.namespace.as_deref().unwrap_or(""), name = %vmi.name_any()))]
pub async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = vmi.namespace().unwrap_or_default();
    let name = vmi.name_any();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let mut pods = pods_api
        .list(&ListParams::default().labels(&format!("{CREATED_BY_LABEL}={uid}")))
        .await
        .map_err(api_call_on(
            "listing pods of",
            "VirtualMachineInstance",
            &namespace,
            &name,
        ))?
        .items;
    let deleting = vmi.metadata.deletion_timestamp.is_some();
    let mut sync_error = None;

    if deleting {
        for pod in controlled_pods(&vmi, &pods) {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let pod_name = pod.name_any();
            match pods_api.delete(&pod_name, &DeleteParams::default()).await {
                Ok(_) => {
                    info!(pod = %pod_name, "deleting launcher pod");
                    ctx.recorder
                        .publish(
                            &*vmi,
                            EventType::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted virtual machine pod {pod_name}"),
                        )
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    ctx.recorder
                        .publish(
                            &*vmi,
                            EventType::Warning,
                            "FailedDelete",
                            &format!("Failed to delete virtual machine pod {pod_name}"),
                        )
                        .await;
                    return Err(api_call("deleting", pod)(e).into());
                }
            }
        }
    } else if current_pod(&vmi, &pods).is_none()
        && matches!(vmi.phase(), Phase::Unset | Phase::Pending)
    {
        match claims_ready(&ctx.client, &vmi).await? {
            ClaimsReady::Yes => {}
            ClaimsReady::NotYet => return Ok(Action::requeue(POD_CREATE_RETRY)),
            ClaimsReady::Missing(claim) => {
                sync_error = Some(SyncError {
                    reason: "FailedPvcNotFound",
                    message: format!(
                        "PVC {namespace}/{claim} does not exist, waiting for it to appear"
                    ),
                });
            }
        }
    }
    if sync_error.is_none()
        && !deleting
        && current_pod(&vmi, &pods).is_none()
        && matches!(vmi.phase(), Phase::Unset | Phase::Pending)
    {
        let pod = launcher_pod(&vmi, &ctx.pod_settings);
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                info!(pod = %created.name_any(), "created launcher pod");
                ctx.recorder
                    .publish(
                        &*vmi,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created virtual machine pod {}", created.name_any()),
                    )
                    .await;
                pods.push(created);
            }
            Err(kube::Error::Api(s)) if s.code < 500 && s.code != 409 && s.code != 429 => {
                // Upstream's words: the event says "Error creating pod", the condition
                // "failed to create virtual machine pod" (e.g. a ResourceQuota refused it).
                let message = format!("Error creating pod: {}", s.message);
                warn!(%message);
                ctx.recorder
                    .publish(&*vmi, EventType::Warning, "FailedCreate", &message)
                    .await;
                sync_error = Some(SyncError {
                    reason: "FailedCreate",
                    message: format!("failed to create virtual machine pod: {}", s.message),
                });
            }
            Err(e) => {
                return Err(api_call_on(
                    "creating pod for",
                    "VirtualMachineInstance",
                    &namespace,
                    &name,
                )(e)
                .into())
            }
        }
    }

    let now = Timestamp::now();
    let outcome = vmi_status(&vmi, &pods, sync_error.as_ref(), now);
    if let Some(node) = &outcome.node_label {
        if vmi.labels().get(NODE_NAME_LABEL) != Some(node) {
            let patch = json!({"metadata": {"labels": {NODE_NAME_LABEL: node}}});
            vmis.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_call("labelling", &*vmi))?;
        }
    }
    write_status(&vmis, &*vmi, vmi.status.as_ref(), &outcome.status).await?;
    if let Some(pod) = current_pod(&vmi, &pods).filter(|p| !pod_down(p)) {
        sync_unpaused(&pods_api, pod, &vmi, now).await?;
    }
    if outcome.release {
        finalizer::remove(&vmis, &*vmi, VMI_FINALIZER).await?;
    }
    if sync_error.is_some() {
        // What refused the pod (a quota, a LimitRange) may allow it later; nothing about
        // the VMI changes then, so look again, as upstream's rate-limited retry does.
        return Ok(Action::requeue(POD_CREATE_RETRY));
    }
    Ok(Action::await_change())
}

/// How soon a launcher pod that could not be created is tried again.
const POD_CREATE_RETRY: std::time::Duration = std::time::Duration::from_secs(15);

pub fn error_policy(
    vmi: Arc<VirtualMachineInstance>,
    error: &ControllerError,
    _ctx: Arc<Context>,
) -> Action {
    kubevirt_reconcile::log_failure(
        "reconciling VirtualMachineInstance",
        &kubevirt_reconcile::object_ref(&*vmi),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// Runs the VMI controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    pod_settings: LauncherPodSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let launcher_pods = watcher::Config::default().labels("kubevirt.io=virt-launcher");
    Controller::new(vmis, watcher::Config::default())
        .owns(pods, launcher_pods)
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            error_policy,
            Arc::new(Context::new(client, pod_settings)),
        )
        .for_each(|res| async move {
            if let Err(error) = res {
                tracing::debug!(%error, "VirtualMachineInstance reconcile");
            }
        })
        .await;
}
