//! The VirtualMachineRestore controller (upstream's restore controller in virt-controller).
//!
//! A restore puts a VM back to a ready VirtualMachineSnapshot: the snapshot's own VM (which
//! must be stopped first: `targetReadinessPolicy` says whether to wait, with a 5-minute grace
//! period by default, to stop it, or to fail) or a new VM of another name (created stopped,
//! with the restore's `patches` applied). Each volume backup becomes a new claim provisioned
//! from its VolumeSnapshot (`restore-<restore uid>-<volume>`, or as `volumeRestorePolicy` and
//! `volumeRestoreOverrides` say); DataVolume volumes get a pre-populated DataVolume of the
//! new claim's name. The target VM's spec becomes the snapshot's with its volumes renamed,
//! keeping the target's run strategy; DataVolumes the old spec made and the new one does not
//! name are deleted. The target is locked (`status.restoreInProgress`) meanwhile, so it does
//! not start and no snapshot runs. Then `complete: true`, `restoreTime`, an event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, TypedLocalObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use kubevirt_api::cdi::{annotations as cdi_ann, DataVolume};
use kubevirt_api::snapshot::{
    parse_restore_patch, VirtualMachineRestore, VirtualMachineRestoreStatus,
    VirtualMachineSnapshot, VirtualMachineSnapshotContent, VolumeBackup, VolumeRestore,
    DEFAULT_FAILURE_DEADLINE,
};
use kubevirt_api::v1::{RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineSpec};
use kubevirt_reconcile::events::EventType;
use kubevirt_reconcile::{api_call, api_call_on, finalizer};

use crate::operation::{now, write_status, Context};
use crate::snapshot::set_condition;
use crate::{ControllerError, Result};

pub const RESTORE_FINALIZER: &str = "snapshot.kubevirt.io/vmrestore-protection";
/// On the claims and DataVolumes a restore made, and on a VM it created.
pub const RESTORE_NAME_ANNOTATION: &str = "restore.kubevirt.io/name";
const LAST_RESTORE_ANNOTATION: &str = "restore.kubevirt.io/lastRestoreUID";
const POLL: Duration = Duration::from_millis(500);
const WAIT_GRACE_PERIOD_MESSAGE: &str = "Waiting for target VM to be powered off. Please stop the restore target to proceed with restore, or the operation will fail after 5m0s";
const WAIT_EVENTUALLY_MESSAGE: &str = "Waiting for target VM to be powered off. Please stop the restore target to proceed with restore";
const VMI_EXISTS_EVENT: &str =
    "Restore target VMI still exists, please stop the restore target to proceed with restore";
const STOP_TARGET_MESSAGE: &str = "Automatically stopping restore target for restore operation";

/// Records a problem that may pass (conditions and a warning event) and looks again later;
/// `failed` makes it final (`Failure` condition, upstream's "Operation failed" event).
async fn report(
    ctx: &Context,
    api: &Api<VirtualMachineRestore>,
    r: &VirtualMachineRestore,
    mut status: VirtualMachineRestoreStatus,
    message: &str,
    failed: bool,
) -> Result<Action> {
    let changed = status
        .conditions
        .iter()
        .flatten()
        .all(|c| c.reason.as_deref() != Some(message));
    set_condition(&mut status.conditions, "Progressing", false, message);
    set_condition(&mut status.conditions, "Ready", false, message);
    if failed {
        set_condition(&mut status.conditions, "Failure", true, message);
    }
    if changed {
        let (reason, text) = if failed {
            (
                "Operation failed",
                format!("VirtualMachineRestore failed {message}"),
            )
        } else {
            (
                "VirtualMachineRestoreError",
                format!("VirtualMachineRestore encountered error {message}"),
            )
        };
        ctx.recorder
            .publish(r, EventType::Warning, reason, &text)
            .await;
    }
    write_status(api, r, &status).await?;
    Ok(if failed {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(2))
    })
}

/// Sets or clears the VM's `status.restoreInProgress`; returns the VM as it is now.
async fn set_restore_lock(
    client: &Client,
    vm: &VirtualMachine,
    name: Option<&str>,
) -> Result<VirtualMachine> {
    let current = vm
        .status
        .as_ref()
        .and_then(|s| s.restore_in_progress.as_deref());
    if current == name {
        return Ok(vm.clone());
    }
    let api: Api<VirtualMachine> =
        Api::namespaced(client.clone(), &vm.namespace().unwrap_or_default());
    let updated = api
        .patch_status(
            &vm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": vm.metadata.resource_version},
                "status": {"restoreInProgress": name},
            })),
        )
        .await
        .map_err(api_call("locking", vm))?;
    Ok(updated)
}

/// The name of the claim a volume is restored into.
pub fn restore_claim_name(r: &VirtualMachineRestore, backup: &VolumeBackup) -> String {
    let overridden = r
        .spec
        .volume_restore_overrides
        .iter()
        .flatten()
        .find(|o| o.volume_name.as_deref() == Some(&backup.volume_name))
        .and_then(|o| o.restore_name.clone())
        .filter(|n| !n.is_empty());
    if let Some(name) = overridden {
        return name;
    }
    match r.spec.volume_restore_policy.as_deref() {
        Some("InPlace") => backup
            .persistent_volume_claim
            .metadata
            .as_ref()
            .and_then(|m| m.name.clone())
            .unwrap_or_default(),
        Some("PrefixTargetName") => format!("{}-{}", r.spec.target.name, backup.volume_name),
        _ => format!(
            "restore-{}-{}",
            r.metadata.uid.as_deref().unwrap_or_default(),
            backup.volume_name
        ),
    }
}

/// Annotations of the original claim that belong to its binding or its filling, not to
/// its data: a restored claim starts without them.
fn carried_annotation(key: &str) -> bool {
    !(key.starts_with("pv.kubernetes.io/")
        || key.starts_with("volume.kubernetes.io/")
        || key.starts_with("volume.beta.kubernetes.io/")
        || key.starts_with("cdi.kubevirt.io/")
        || key == "k8s.io/CloneRequest"
        || key == RESTORE_NAME_ANNOTATION)
}

fn restored_claim(
    r: &VirtualMachineRestore,
    backup: &VolumeBackup,
    name: &str,
    owner: Option<&VirtualMachine>,
) -> PersistentVolumeClaim {
    let meta = backup
        .persistent_volume_claim
        .metadata
        .clone()
        .unwrap_or_default();
    let override_ = r
        .spec
        .volume_restore_overrides
        .iter()
        .flatten()
        .find(|o| o.volume_name.as_deref() == Some(&backup.volume_name));
    let mut labels = meta.labels.unwrap_or_default();
    labels.extend(override_.and_then(|o| o.labels.clone()).unwrap_or_default());
    let mut annotations: BTreeMap<String, String> = meta
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| carried_annotation(k))
        .collect();
    annotations.extend(
        override_
            .and_then(|o| o.annotations.clone())
            .unwrap_or_default(),
    );
    annotations.insert(RESTORE_NAME_ANNOTATION.into(), r.name_any());
    let mut spec = backup
        .persistent_volume_claim
        .spec
        .clone()
        .unwrap_or_default();
    spec.volume_name = None;
    spec.data_source_ref = None;
    spec.data_source = Some(TypedLocalObjectReference {
        api_group: Some(kubevirt_api::snapshot::VOLUME_SNAPSHOT_GROUP.into()),
        kind: "VolumeSnapshot".into(),
        name: backup.volume_snapshot_name.clone().unwrap_or_default(),
    });
    let owned = r.spec.volume_ownership_policy.as_deref() != Some("None");
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: r.metadata.namespace.clone(),
            labels: Some(labels).filter(|l| !l.is_empty()),
            annotations: Some(annotations),
            owner_references: owner
                .filter(|_| owned)
                .and_then(|vm| vm.controller_owner_ref(&()))
                .map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

pub async fn reconcile(r: Arc<VirtualMachineRestore>, ctx: Arc<Context>) -> Result<Action> {
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let client = &ctx.client;
    let api: Api<VirtualMachineRestore> = Api::namespaced(client.clone(), &ns);
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let target_name = r.spec.target.name.clone();
    let target = vms.get_opt(&target_name).await.map_err(api_call_on(
        "reading",
        "virtualmachine",
        &ns,
        &target_name,
    ))?;
    let mut status = r.status.clone().unwrap_or_default();
    let complete = status.complete == Some(true);
    let failed = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Failure" && c.status == "True");
    if r.metadata.deletion_timestamp.is_some() || complete || failed {
        if let Some(vm) = &target {
            if vm
                .status
                .as_ref()
                .and_then(|s| s.restore_in_progress.as_deref())
                == Some(&name)
            {
                set_restore_lock(client, vm, None).await?;
            }
        }
        if r.metadata.deletion_timestamp.is_some() {
            finalizer::remove(&api, &*r, RESTORE_FINALIZER).await?;
        }
        return Ok(Action::await_change());
    }
    let r = Arc::new(finalizer::add(&api, &*r, RESTORE_FINALIZER).await?);
    if status.conditions.is_none() {
        set_condition(
            &mut status.conditions,
            "Progressing",
            true,
            "Initializing VirtualMachineRestore",
        );
        set_condition(
            &mut status.conditions,
            "Ready",
            false,
            "Initializing VirtualMachineRestore",
        );
        status.complete = Some(false);
    }

    // The snapshot, ready, and what it holds.
    let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &ns);
    let snapshot_name = &r.spec.virtual_machine_snapshot_name;
    let snapshot = snapshots.get_opt(snapshot_name).await.map_err(api_call_on(
        "reading",
        "virtualmachinesnapshot",
        &ns,
        snapshot_name,
    ))?;
    let content_name = snapshot
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .filter(|st| st.ready_to_use == Some(true))
        .and_then(|st| st.virtual_machine_snapshot_content_name.clone());
    let Some(content_name) = content_name else {
        let message = format!("VirtualMachineSnapshot {snapshot_name} not ready");
        return report(&ctx, &api, &r, status, &message, false).await;
    };
    let contents: Api<VirtualMachineSnapshotContent> = Api::namespaced(client.clone(), &ns);
    let content = contents.get(&content_name).await.map_err(api_call_on(
        "reading",
        "virtualmachinesnapshotcontent",
        &ns,
        &content_name,
    ))?;
    let Some(source) = content.spec.source.virtual_machine.clone() else {
        return report(&ctx, &api, &r, status, "unexpected snapshot source", true).await;
    };
    let source_name = source
        .metadata
        .as_ref()
        .and_then(|m| m.name.clone())
        .unwrap_or_default();
    let in_place = source_name == target_name;

    let mut target = target;
    if let Some(vm) = target.as_mut() {
        let ours = vm.annotations().get(RESTORE_NAME_ANNOTATION) == Some(&name);
        if !in_place && !ours {
            return report(
                &ctx,
                &api,
                &r,
                status,
                "restore source and restore target are different but restore target already exists",
                false,
            )
            .await;
        }
        // The target must be stopped.
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        let running = vmis
            .get_opt(&target_name)
            .await
            .map_err(api_call_on(
                "reading",
                "virtualmachineinstance",
                &ns,
                &target_name,
            ))?
            .is_some();
        if running {
            return target_not_ready(&ctx, &api, &r, status, vm).await;
        }
        *vm = set_restore_lock(client, vm, Some(&name)).await?;
    }

    // The claims, from the volume snapshots.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let mut restores = Vec::new();
    let mut all_bound = true;
    let backups = content.spec.volume_backups.clone().unwrap_or_default();
    for backup in &backups {
        let claim_name = restore_claim_name(&r, backup);
        let existing = claims.get_opt(&claim_name).await.map_err(api_call_on(
            "reading",
            "persistentvolumeclaim",
            &ns,
            &claim_name,
        ))?;
        let pvc = match existing {
            Some(pvc) if pvc.annotations().get(RESTORE_NAME_ANNOTATION) == Some(&name) => pvc,
            Some(pvc) => {
                // InPlace: the old claim goes first (the VM is stopped).
                if pvc.metadata.deletion_timestamp.is_none() {
                    claims
                        .delete(&claim_name, &DeleteParams::default())
                        .await
                        .map_err(api_call_on(
                            "deleting",
                            "persistentvolumeclaim",
                            &ns,
                            &claim_name,
                        ))?;
                }
                all_bound = false;
                continue;
            }
            None => {
                let pvc = restored_claim(&r, backup, &claim_name, target.as_ref());
                claims
                    .create(&PostParams::default(), &pvc)
                    .await
                    .map_err(api_call_on(
                        "creating",
                        "persistentvolumeclaim",
                        &ns,
                        &claim_name,
                    ))?
            }
        };
        if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            all_bound = false;
        }
        restores.push(VolumeRestore {
            volume_name: backup.volume_name.clone(),
            persistent_volume_claim_name: claim_name,
            volume_snapshot_name: backup.volume_snapshot_name.clone().unwrap_or_default(),
            data_volume_name: None,
        });
    }
    status.restores = Some(restores.clone()).filter(|r| !r.is_empty());
    if !all_bound {
        set_condition(
            &mut status.conditions,
            "Progressing",
            true,
            "Creating new PVCs",
        );
        set_condition(
            &mut status.conditions,
            "Ready",
            false,
            "Waiting for new PVCs",
        );
        write_status(&api, &r, &status).await?;
        return Ok(Action::requeue(POLL));
    }

    // The target's new spec.
    let renamed: BTreeMap<String, String> = restores
        .iter()
        .map(|v| {
            (
                v.volume_name.clone(),
                v.persistent_volume_claim_name.clone(),
            )
        })
        .collect();
    let mut spec = source.spec.clone().unwrap_or_default();
    let mut dv_names = BTreeMap::new();
    for volume in spec
        .template
        .spec
        .iter_mut()
        .flat_map(|s| s.volumes.iter_mut().flatten())
    {
        let Some(new) = renamed.get(&volume.name) else {
            continue;
        };
        if let Some(p) = volume.persistent_volume_claim.as_mut() {
            p.claim_name = new.clone();
        }
        if let Some(d) = volume.data_volume.as_mut() {
            dv_names.insert(d.name.clone(), new.clone());
            d.name = new.clone();
        }
    }
    for template in spec.data_volume_templates.iter_mut().flatten() {
        let meta = template.metadata.get_or_insert_with(Default::default);
        if let Some(new) = meta.name.as_ref().and_then(|n| dv_names.get(n)) {
            meta.name = Some(new.clone());
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(cdi_ann::PRE_POPULATED.into(), new.clone());
        }
    }
    for restore in restores.iter_mut() {
        if dv_names
            .values()
            .any(|n| *n == restore.persistent_volume_claim_name)
        {
            restore.data_volume_name = Some(restore.persistent_volume_claim_name.clone());
        }
    }
    status.restores = Some(restores.clone()).filter(|r| !r.is_empty());
    let last_restore = format!("{name}-{}", r.metadata.uid.as_deref().unwrap_or_default());

    let vm = match &target {
        Some(vm) => {
            let mut spec = spec;
            // An existing VM keeps how it runs.
            spec.running = None;
            spec.run_strategy = Some(vm.run_strategy());
            if vm.annotations().get(LAST_RESTORE_ANNOTATION) != Some(&last_restore) {
                let patch = json!([
                    {"op": "test", "path": "/metadata/resourceVersion", "value": vm.metadata.resource_version},
                    {"op": "replace", "path": "/spec", "value": spec},
                    {"op": "add", "path": "/metadata/annotations",
                     "value": merged_annotations(vm, &last_restore)},
                ]);
                let patch: json_patch::Patch = serde_json::from_value(patch)
                    .map_err(|e| ControllerError::Invalid(e.to_string()))?;
                vms.patch(
                    &target_name,
                    &PatchParams::default(),
                    &Patch::Json::<()>(patch),
                )
                .await
                .map_err(api_call("updating", vm))?
            } else {
                vm.clone()
            }
        }
        None => {
            let mut spec = spec;
            spec.running = None;
            spec.run_strategy = Some(RunStrategy::Halted);
            let new_vm = new_vm(&r, &source, spec, &last_restore)?;
            match vms.create(&PostParams::default(), &new_vm).await {
                Ok(vm) => vm,
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(POLL)),
                Err(e) => {
                    let message = match e {
                        kube::Error::Api(s) => s.message,
                        other => other.to_string(),
                    };
                    return report(&ctx, &api, &r, status, &message, true).await;
                }
            }
        }
    };

    // The VM controller makes the DataVolumes of the renamed templates, pre-populated
    // (the template carries the annotation). Claims of a new VM get it as owner.
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &ns);
    if target.is_none() && r.spec.volume_ownership_policy.as_deref() != Some("None") {
        if let Some(owner) = vm.controller_owner_ref(&()) {
            for restore in &restores {
                let patch = json!({"metadata": {"ownerReferences": [owner]}});
                claims
                    .patch(
                        &restore.persistent_volume_claim_name,
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .map_err(api_call_on(
                        "owning",
                        "persistentvolumeclaim",
                        &ns,
                        &restore.persistent_volume_claim_name,
                    ))?;
            }
        }
    }
    // DataVolumes of the old spec that the restored one does not name.
    let mut deleted = Vec::new();
    if let Some(old) = &target {
        let kept: Vec<String> = vm
            .spec
            .data_volume_templates
            .iter()
            .flatten()
            .filter_map(|t| t.metadata.as_ref()?.name.clone())
            .collect();
        for t in old.spec.data_volume_templates.iter().flatten() {
            let Some(old_name) = t.metadata.as_ref().and_then(|m| m.name.clone()) else {
                continue;
            };
            if kept.contains(&old_name) {
                continue;
            }
            match dvs.delete(&old_name, &DeleteParams::default()).await {
                Ok(_) => deleted.push(old_name),
                Err(kube::Error::Api(e)) if e.code == 404 => deleted.push(old_name),
                Err(e) => {
                    return Err(api_call_on("deleting", "datavolume", &ns, &old_name)(e).into())
                }
            }
        }
    }

    status.deleted_data_volumes = Some(deleted).filter(|d| !d.is_empty());
    status.complete = Some(true);
    status.restore_time = Some(now());
    set_condition(
        &mut status.conditions,
        "Progressing",
        false,
        "Operation complete",
    );
    set_condition(&mut status.conditions, "Ready", true, "Operation complete");
    ctx.recorder
        .publish(
            &*r,
            EventType::Normal,
            "VirtualMachineRestoreComplete",
            &format!("Successfully completed VirtualMachineRestore {name}"),
        )
        .await;
    write_status(&api, &r, &status).await?;
    let vm = vms.get(&target_name).await.map_err(api_call_on(
        "reading",
        "virtualmachine",
        &ns,
        &target_name,
    ))?;
    set_restore_lock(client, &vm, None).await?;
    Ok(Action::await_change())
}

fn merged_annotations(vm: &VirtualMachine, last_restore: &str) -> BTreeMap<String, String> {
    let mut a = vm.metadata.annotations.clone().unwrap_or_default();
    a.insert(LAST_RESTORE_ANNOTATION.into(), last_restore.into());
    a
}

/// The VM a restore into a new name creates: the snapshot's labels and annotations, its
/// restored spec (stopped), the restore's patches applied.
fn new_vm(
    r: &VirtualMachineRestore,
    source: &kubevirt_api::snapshot::SnapshotVirtualMachine,
    spec: VirtualMachineSpec,
    last_restore: &str,
) -> Result<VirtualMachine> {
    let meta = source.metadata.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(LAST_RESTORE_ANNOTATION.into(), last_restore.into());
    annotations.insert(RESTORE_NAME_ANNOTATION.into(), r.name_any());
    let vm = VirtualMachine {
        metadata: ObjectMeta {
            name: Some(r.spec.target.name.clone()),
            namespace: r.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let mut value =
        serde_json::to_value(&vm).map_err(|e| ControllerError::Invalid(e.to_string()))?;
    for patch in r.spec.patches.iter().flatten() {
        let op = parse_restore_patch(patch).map_err(ControllerError::Invalid)?;
        json_patch::patch(&mut value, &[op])
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
    }
    serde_json::from_value(value).map_err(|e| ControllerError::Invalid(e.to_string()))
}

/// The target VM still runs: wait, stop it, or fail, as the readiness policy says.
async fn target_not_ready(
    ctx: &Context,
    api: &Api<VirtualMachineRestore>,
    r: &VirtualMachineRestore,
    mut status: VirtualMachineRestoreStatus,
    vm: &VirtualMachine,
) -> Result<Action> {
    let policy = r
        .spec
        .target_readiness_policy
        .as_deref()
        .unwrap_or("WaitGracePeriod");
    let age = r
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| jiff::Timestamp::now().duration_since(t.0))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    let (reason, event) = match policy {
        "StopTarget" => {
            let vms: Api<VirtualMachine> =
                Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
            vms.patch(
                &vm.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"running": null, "runStrategy": "Halted"}})),
            )
            .await
            .map_err(api_call("stopping", vm))?;
            (STOP_TARGET_MESSAGE, STOP_TARGET_MESSAGE)
        }
        "FailImmediate" => {
            return report(
                ctx,
                api,
                r,
                status,
                "Restore target VMI must be powered off before restore operation",
                true,
            )
            .await
        }
        "WaitEventually" => (WAIT_EVENTUALLY_MESSAGE, VMI_EXISTS_EVENT),
        _ if age > DEFAULT_FAILURE_DEADLINE => {
            return report(
                ctx,
                api,
                r,
                status,
                "Restore target failed to be ready within 5m0s. Please power off the target VM before attempting restore",
                true,
            )
            .await
        }
        _ => (WAIT_GRACE_PERIOD_MESSAGE, VMI_EXISTS_EVENT),
    };
    let first = status
        .conditions
        .iter()
        .flatten()
        .all(|c| c.reason.as_deref() != Some(reason));
    if first {
        ctx.recorder
            .publish(r, EventType::Warning, "RestoreTargetNotReady", event)
            .await;
    }
    set_condition(&mut status.conditions, "Progressing", false, reason);
    set_condition(&mut status.conditions, "Ready", false, reason);
    write_status(api, r, &status).await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Runs the VirtualMachineRestore controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    crate::operation::run(client, "restore-controller", reconcile, shutdown).await;
}
