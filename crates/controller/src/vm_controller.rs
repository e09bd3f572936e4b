//! The VirtualMachine controller: keeps each VM's VMI in line with its runStrategy and
//! mirrors the VMI into the VM's status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use kubevirt_api::v1::well_known::{VM_CONTROLLER_FINALIZER, VM_GENERATION_ANNOTATION};
use kubevirt_api::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase as Phase,
};
use kubevirt_reconcile::events::{EventRecorder, EventType};
use kubevirt_reconcile::{finalizer, status::write_status};

use crate::datavolumes::{self, VolumesState};
use crate::error::{ControllerError, Result};
use crate::runstrategy::{decide, VmiAction};
use crate::vm_status::{vm_status, SyncFailure};

/// Name of the controller in events.
pub const COMPONENT: &str = "virtualmachine-controller";

/// Shared state of the VM controller's reconcilers.
pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
}

impl Context {
    pub fn new(client: Client) -> Self {
        Context {
            recorder: EventRecorder::new(client.clone(), COMPONENT, None),
            client,
        }
    }
}

/// The VMI a VM's template describes: same name and namespace, owned by the VM (controller,
/// blockOwnerDeletion), the template's labels and annotations plus the VM generation it was
/// made from, and the VM controller's finalizer (kept until the VM status has recorded how
/// the VMI ended).
pub fn vmi_from_vm(vm: &VirtualMachine) -> Result<VirtualMachineInstance> {
    let missing = |field| ControllerError::MissingField {
        kind: "VirtualMachine",
        namespace: vm.namespace().unwrap_or_default(),
        name: vm.name_any(),
        field,
    };
    let spec = vm
        .spec
        .template
        .spec
        .clone()
        .ok_or_else(|| missing("spec.template.spec"))?;
    let owner = vm
        .controller_owner_ref(&())
        .ok_or_else(|| missing("metadata.uid"))?;
    let template = vm.spec.template.metadata.clone().unwrap_or_default();
    let mut annotations = template.annotations.unwrap_or_default();
    if let Some(g) = vm.metadata.generation {
        annotations.insert(VM_GENERATION_ANNOTATION.into(), g.to_string());
    }
    Ok(VirtualMachineInstance {
        metadata: ObjectMeta {
            name: vm.metadata.name.clone(),
            namespace: vm.metadata.namespace.clone(),
            labels: Some(template.labels.unwrap_or_default()).filter(|l| !l.is_empty()),
            annotations: Some(annotations).filter(|a: &BTreeMap<_, _>| !a.is_empty()),
            owner_references: Some(vec![owner]),
            finalizers: Some(vec![VM_CONTROLLER_FINALIZER.into()]),
            ..Default::default()
        },
        spec,
        status: None,
    })
}

/// The VMI of the same name, if this VM controls it (a VMI another owner controls is not
/// ours to manage).
fn owned(
    vm: &VirtualMachine,
    vmi: Option<VirtualMachineInstance>,
) -> Option<VirtualMachineInstance> {
    vmi.filter(|v| {
        v.metadata.owner_references.as_ref().is_none_or(|refs| {
            refs.iter()
                .all(|r| r.controller != Some(true) || Some(&r.uid) == vm.metadata.uid.as_ref())
        })
    })
}

#[instrument(skip(vm, ctx), fields(namespace = vm.metadata.namespace.as_deref().unwrap_or(""), name = %vm.name_any()))]
pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleting = vm.metadata.deletion_timestamp.is_some();
    let vm = if deleting {
        vm
    } else {
        Arc::new(finalizer::add(&vms, &*vm, VM_CONTROLLER_FINALIZER).await?)
    };

    let vmi = vmis
        .get_opt(&name)
        .await
        .map_err(kubevirt_reconcile::api_call_on(
            "getting",
            "VirtualMachineInstance",
            &namespace,
            &name,
        ))?;
    let vmi = owned(&vm, vmi);
    let now = Timestamp::now();
    let mut decision = decide(&vm, vmi.as_ref(), now);
    let volumes = if deleting {
        VolumesState::Ready
    } else {
        datavolumes::sync(&ctx.client, &ctx.recorder, &vm).await?
    };
    // The VMI waits for the VM's DataVolumes (their claims watched through the DataVolumes).
    // A restore in progress holds the VM stopped until its disks are back.
    let restoring = vm
        .status
        .as_ref()
        .is_some_and(|s| s.restore_in_progress.is_some());
    let held =
        decision.action == VmiAction::Create && (volumes != VolumesState::Ready || restoring);
    if held {
        decision.action = VmiAction::None;
    }

    let mut failure = None;
    match &decision.action {
        VmiAction::None => {}
        VmiAction::Create => match vmis
            .create(&PostParams::default(), &vmi_from_vm(&vm)?)
            .await
        {
            Ok(created) => {
                info!("created VirtualMachineInstance");
                let uid = created.metadata.uid.unwrap_or_default();
                ctx.recorder
                    .publish(&*vm, EventType::Normal, "SuccessfulCreate",
                        &format!("Started the virtual machine by creating the new virtual machine instance {uid}"))
                    .await;
            }
            // Created meanwhile: the next reconcile sees it.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 || s.code == 403 => {
                let message = format!("Error creating virtual machine instance: {}", s.message);
                warn!(%message);
                ctx.recorder
                    .publish(&*vm, EventType::Warning, "FailedCreate", &message)
                    .await;
                failure = Some(SyncFailure {
                    reason: "FailedCreate",
                    message,
                });
            }
            Err(e) => {
                return Err(kubevirt_reconcile::api_call_on(
                    "creating",
                    "VirtualMachineInstance",
                    &namespace,
                    &name,
                )(e)
                .into())
            }
        },
        VmiAction::Delete { reason } => {
            let uid = vmi
                .as_ref()
                .and_then(|v| v.metadata.uid.clone())
                .unwrap_or_default();
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match vmis.delete(&name, &params).await {
                Ok(_) => {
                    info!(%reason, "deleting VirtualMachineInstance");
                    ctx.recorder
                        .publish(&*vm, EventType::Normal, "SuccessfulDelete",
                            &format!("Stopped the virtual machine by deleting the virtual machine instance {uid}"))
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    return Err(kubevirt_reconcile::api_call_on(
                        "deleting",
                        "VirtualMachineInstance",
                        &namespace,
                        &name,
                    )(e)
                    .into())
                }
            }
        }
    }

    // Declarative hot-plug: the running VMI gets the hot-pluggable volumes of the template.
    if let Some(v) = vmi.as_ref().filter(|v| {
        !deleting && v.metadata.deletion_timestamp.is_none() && v.phase() == Phase::Running
    }) {
        let template = vm.spec.template.spec.clone().unwrap_or_default();
        let mut spec = v.spec.clone();
        if kubevirt_api::hotplug::sync_from_template(&mut spec, &template) {
            let patch = serde_json::json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": v.metadata.resource_version},
                {"op": "replace", "path": "/spec", "value": spec},
            ]);
            let patch: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| crate::ControllerError::Invalid(e.to_string()))?;
            vmis.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
                .map_err(kubevirt_reconcile::api_call("updating volumes of", v))?;
            info!("hot-pluggable volumes of the VirtualMachineInstance updated");
        }
    }

    if !deleting {
        let mut desired = vm_status(&vm, vmi.as_ref(), &decision, failure.as_ref(), now);
        desired.volume_snapshot_statuses =
            Some(crate::snapshot::volume_snapshot_statuses(&ctx.client, &vm).await?)
                .filter(|v| !v.is_empty());
        if held {
            desired.printable_status = volumes.printable().or(desired.printable_status);
        }
        write_status(&vms, &*vm, vm.status.as_ref(), &desired).await?;
    }
    // The VM status has seen how this VMI ended: it may go.
    if let Some(v) = vmi.as_ref().filter(|v| v.is_final()) {
        finalizer::remove(&vmis, v, VM_CONTROLLER_FINALIZER).await?;
    }
    if deleting && vmi.is_none() {
        finalizer::remove(&vms, &*vm, VM_CONTROLLER_FINALIZER).await?;
    }

    Ok(match decision.backoff_remaining {
        Some(wait) => Action::requeue(
            Duration::try_from(wait).unwrap_or(Duration::from_secs(1)) + Duration::from_millis(50),
        ),
        None => Action::await_change(),
    })
}

pub fn error_policy(
    vm: Arc<VirtualMachine>,
    error: &ControllerError,
    _ctx: Arc<Context>,
) -> Action {
    kubevirt_reconcile::log_failure(
        "reconciling VirtualMachine",
        &kubevirt_reconcile::object_ref(&*vm),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// Runs the VM controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let dvs: Api<kubevirt_api::cdi::DataVolume> = Api::all(client.clone());
    Controller::new(vms, watcher::Config::default())
        .owns(vmis, watcher::Config::default())
        .owns(dvs, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(Context::new(client)))
        .for_each(|res| async move {
            if let Err(error) = res {
                tracing::debug!(%error, "VirtualMachine reconcile");
            }
        })
        .await;
}
