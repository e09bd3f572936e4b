//! The VirtualMachineSnapshot controller (upstream's snapshot controller in virt-controller).
//!
//! A snapshot of VM `v` goes:
//! 1. `InProgress`: the VM is locked (`status.snapshotInProgress`, so no restore or other
//!    snapshot runs beside it), the finalizer added;
//! 2. if the VM runs and its guest agent is connected, the guest's filesystems are frozen
//!    through the VMI's `freeze` subresource (indications `Online`, `GuestAgent`); running
//!    without an agent the snapshot is crash-consistent (`Online`, `NoGuestAgent`);
//! 3. a VirtualMachineSnapshotContent `vmsnapshot-content-<uid>` records the VM's spec and,
//!    for each volume on a claim whose class has a VolumeSnapshotClass, a VolumeSnapshot
//!    `vmsnapshot-<uid>-volume-<volume>` (the other volumes are listed as excluded);
//! 4. once every VolumeSnapshot is ready the guest is thawed, the content and the snapshot
//!    say `readyToUse: true` and the snapshot is `Succeeded`; the VM is unlocked.
//!
//! A snapshot not done by its `failureDeadline` (default 5 min) is `Failed` ("snapshot
//! deadline exceeded"), thawed and unlocked. Deleting a snapshot deletes its content
//! (policy `Delete`, the default) with the VolumeSnapshots it owns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, TypedLocalObjectReference};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use kubevirt_api::snapshot::{
    SnapshotClaim, SnapshotCondition, SnapshotError, SnapshotSourceSpec, SnapshotVirtualMachine,
    SnapshotVolumesLists, SourceIndication, VirtualMachineSnapshot, VirtualMachineSnapshotContent,
    VirtualMachineSnapshotContentSpec, VirtualMachineSnapshotContentStatus, VolumeBackup,
    VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotSource, VolumeSnapshotSpec,
    VolumeSnapshotState,
};
use kubevirt_api::v1::{
    vmi_condition, VirtualMachine, VirtualMachineInstance, Volume, VolumeSnapshotStatus,
};
use kubevirt_reconcile::events::EventType;
use kubevirt_reconcile::{api_call, finalizer};

use crate::operation::{now, write_status, Context};
use crate::Result;

pub const SNAPSHOT_FINALIZER: &str = "snapshot.kubevirt.io/vmsnapshot-protection";
const SOURCE_NAME_LABEL: &str = "snapshot.kubevirt.io/source-vm-name";
const SOURCE_NAMESPACE_LABEL: &str = "snapshot.kubevirt.io/source-vm-namespace";
/// How often an operation in progress is looked at (its VolumeSnapshots are not watched).
const POLL: Duration = Duration::from_millis(500);

/// A condition as upstream's snapshot controllers write them: the reason, no message; the
/// transition time kept while the status stays.
pub(crate) fn set_condition(
    conditions: &mut Option<Vec<SnapshotCondition>>,
    type_: &str,
    status: bool,
    reason: &str,
) {
    let list = conditions.get_or_insert_with(Vec::new);
    let status = if status { "True" } else { "False" };
    let transition = list
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    list.retain(|c| c.type_ != type_);
    list.push(SnapshotCondition {
        type_: type_.into(),
        status: status.into(),
        last_probe_time: None,
        last_transition_time: Some(transition),
        reason: Some(reason.into()),
        message: None,
    });
}

fn content_name(s: &VirtualMachineSnapshot) -> String {
    format!(
        "vmsnapshot-content-{}",
        s.metadata.uid.as_deref().unwrap_or_default()
    )
}

fn volume_snapshot_name(s: &VirtualMachineSnapshot, volume: &str) -> String {
    format!(
        "vmsnapshot-{}-volume-{volume}",
        s.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The message upstream gives each indication.
pub fn indication_message(indication: &str) -> &'static str {
    match indication {
        "Online" => "Snapshot taken while the VM was running. Consistency depends on guest-agent quiescing.",
        "GuestAgent" => "Guest agent was active and attempted to quiesce the filesystem for application consistency.",
        "NoGuestAgent" => "Guest agent was not available. Snapshot is crash-consistent and may not be application-consistent.",
        "Paused" => "Snapshot taken while the VM was paused. Snapshot is crash-consistent and may not be application-consistent.",
        _ => "Unknown indication",
    }
}

/// The volumes of the VM's template, in its order.
fn template_volumes(vm: &VirtualMachine) -> Vec<Volume> {
    vm.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
}

/// The claim behind each of the VM's volumes that can have one (`persistentVolumeClaim`,
/// `dataVolume`): volume name -> claim name, in the VM's order.
pub fn claim_volumes(vm: &VirtualMachine) -> Vec<(String, String)> {
    template_volumes(vm)
        .into_iter()
        .filter_map(|v| Some((v.name.clone(), v.claim_name()?.to_string())))
        .collect()
}

/// Sets or clears the VM's `status.snapshotInProgress` (the lock), if it names `name` or
/// nothing.
async fn lock_vm(client: &Client, vm: &VirtualMachine, name: Option<&str>) -> Result<()> {
    let current = vm
        .status
        .as_ref()
        .and_then(|s| s.snapshot_in_progress.as_deref());
    if current == name {
        return Ok(());
    }
    let api: Api<VirtualMachine> =
        Api::namespaced(client.clone(), &vm.namespace().unwrap_or_default());
    // Guarded by the resourceVersion: two snapshots never both take the lock.
    api.patch_status(
        &vm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"resourceVersion": vm.metadata.resource_version},
            "status": {"snapshotInProgress": name},
        })),
    )
    .await
    .map_err(api_call("locking", vm))?;
    Ok(())
}

/// Calls a VMI subresource (`freeze`, `unfreeze`) through the API, as virt-controller does.
pub(crate) async fn vmi_subresource(
    client: &Client,
    ns: &str,
    name: &str,
    action: &str,
    body: serde_json::Value,
) -> std::result::Result<(), String> {
    let url = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{action}"
    );
    let req = http::Request::put(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    client
        .request_text(req)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        })
}

/// Whether the claim's class has a VolumeSnapshotClass (its provisioner is a snapshot
/// driver), so a VolumeSnapshot of it can be taken.
async fn snapshottable(client: &Client, pvc: &PersistentVolumeClaim) -> Result<Option<String>> {
    let Some(class) = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()) else {
        return Ok(None);
    };
    Ok(match snapshot_class_of(client, &class).await? {
        SnapshotClass::One(name) => Some(name),
        SnapshotClass::None | SnapshotClass::Ambiguous(_) => None,
    })
}

/// A claim of the namespace, if it exists.
async fn read_claim(
    claims: &Api<PersistentVolumeClaim>,
    ns: &str,
    claim: &str,
) -> Result<Option<PersistentVolumeClaim>> {
    Ok(claims
        .get_opt(claim)
        .await
        .map_err(kubevirt_reconcile::api_call_on(
            "reading",
            "persistentvolumeclaim",
            ns,
            claim,
        ))?)
}

/// The VolumeSnapshotClass for claims of a StorageClass, as upstream picks it: the one
/// whose driver is the class's provisioner, or the default one among several.
#[derive(Clone)]
enum SnapshotClass {
    /// No such StorageClass, or no class for its provisioner.
    None,
    One(String),
    /// Several, none of them the default: how many.
    Ambiguous(usize),
}

async fn snapshot_class_of(client: &Client, storage_class: &str) -> Result<SnapshotClass> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let Some(sc) =
        classes
            .get_opt(storage_class)
            .await
            .map_err(kubevirt_reconcile::api_call_on(
                "reading",
                "storageclass",
                "",
                storage_class,
            ))?
    else {
        return Ok(SnapshotClass::None);
    };
    let snapshot_classes: Api<VolumeSnapshotClass> = Api::all(client.clone());
    let list = snapshot_classes.list(&Default::default()).await.map_err(
        kubevirt_reconcile::api_call_on("listing", "volumesnapshotclasses", "", ""),
    )?;
    let matching: Vec<_> = list
        .items
        .iter()
        .filter(|c| c.driver == sc.provisioner)
        .collect();
    Ok(match matching.as_slice() {
        [] => SnapshotClass::None,
        [one] => SnapshotClass::One(one.name_any()),
        several => match several.iter().find(|c| c.is_default()) {
            Some(c) => SnapshotClass::One(c.name_any()),
            None => SnapshotClass::Ambiguous(several.len()),
        },
    })
}

/// The VM's `status.volumeSnapshotStatuses`, as upstream's snapshot controller keeps them:
/// for each volume, whether a snapshot of the VM can take it and, if not, why (upstream's
/// wording). A claim that does not exist yet is looked up through its DataVolume.
pub(crate) async fn volume_snapshot_statuses(
    client: &Client,
    vm: &VirtualMachine,
) -> Result<Vec<VolumeSnapshotStatus>> {
    let ns = vm.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let mut out = Vec::new();
    let mut known: BTreeMap<String, SnapshotClass> = BTreeMap::new();
    for volume in template_volumes(vm) {
        let name = volume.name.clone();
        let Some(claim) = volume.claim_name().map(str::to_string) else {
            out.push(VolumeSnapshotStatus::disabled(
                name.clone(),
                format!("Snapshot is not supported for this volumeSource type [{name}]"),
            ));
            continue;
        };
        let class = match read_claim(&claims, &ns, &claim).await? {
            Some(pvc) => pvc.spec.and_then(|s| s.storage_class_name),
            None => match template_storage_class(vm, &claim) {
                Some(class) => Some(class),
                None => {
                    out.push(VolumeSnapshotStatus::disabled(name, "PVC not found".into()));
                    continue;
                }
            },
        }
        .unwrap_or_default();
        // One lookup per StorageClass: the VM controller asks on every reconcile.
        let found = match known.get(&class) {
            Some(found) => found.clone(),
            None => {
                let found = snapshot_class_of(client, &class).await?;
                known.insert(class.clone(), found.clone());
                found
            }
        };
        out.push(match found {
            SnapshotClass::One(_) => VolumeSnapshotStatus::enabled(name),
            SnapshotClass::None => VolumeSnapshotStatus::disabled(
                name.clone(),
                format!(
                    "No VolumeSnapshotClass: Volume snapshots are not configured for this \
                     StorageClass [{class}] [{name}]"
                ),
            ),
            SnapshotClass::Ambiguous(n) => VolumeSnapshotStatus::disabled(
                name,
                format!("{n} matching VolumeSnapshotClasses for {class}"),
            ),
        });
    }
    Ok(out)
}

/// The StorageClass a DataVolume template of the VM asks for, by claim name.
fn template_storage_class(vm: &VirtualMachine, claim: &str) -> Option<String> {
    let template = vm
        .spec
        .data_volume_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some(claim))?;
    let spec = &template.spec;
    ["storage", "pvc"]
        .iter()
        .find_map(|form| spec.get(*form)?.get("storageClassName")?.as_str())
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

pub async fn reconcile(s: Arc<VirtualMachineSnapshot>, ctx: Arc<Context>) -> Result<Action> {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let client = &ctx.client;
    let api: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &ns);
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    let contents: Api<VirtualMachineSnapshotContent> = Api::namespaced(client.clone(), &ns);
    let vm_name = s.spec.source.name.clone();
    let vm = vms
        .get_opt(&vm_name)
        .await
        .map_err(kubevirt_reconcile::api_call_on(
            "reading",
            "virtualmachine",
            &ns,
            &vm_name,
        ))?;
    let mut status = s.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    let locked_by_us = vm.as_ref().is_some_and(|vm| {
        vm.status
            .as_ref()
            .and_then(|st| st.snapshot_in_progress.as_deref())
            == Some(&name)
    });

    if s.metadata.deletion_timestamp.is_some() || phase == "Succeeded" || phase == "Failed" {
        if let Some(vm) = vm.as_ref().filter(|_| locked_by_us) {
            thaw(client, &ns, vm).await;
            lock_vm(client, vm, None).await?;
        }
        if s.metadata.deletion_timestamp.is_some() {
            if phase != "Deleting" {
                status.phase = Some("Deleting".into());
                set_condition(
                    &mut status.conditions,
                    "Progressing",
                    false,
                    "VM snapshot is deleting",
                );
                // The object may already be going; a failed write here changes nothing.
                let _ = write_status(&api, &s, &status).await;
            }
            finalizer::remove(&api, &*s, SNAPSHOT_FINALIZER).await?;
        }
        return Ok(Action::await_change());
    }

    let s = Arc::new(finalizer::add(&api, &*s, SNAPSHOT_FINALIZER).await?);
    if status.phase.is_none() {
        status.phase = Some("InProgress".into());
        status.ready_to_use = Some(false);
        status.source_uid = vm.as_ref().and_then(|vm| vm.metadata.uid.clone());
    }
    let deadline = s
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .and_then(|t| t.checked_add(s.failure_deadline()).ok());
    if deadline.is_some_and(|d| d < jiff::Timestamp::now()) {
        status.phase = Some("Failed".into());
        status.error = Some(SnapshotError {
            time: Some(now()),
            message: Some("snapshot deadline exceeded".into()),
        });
        set_condition(
            &mut status.conditions,
            "Progressing",
            false,
            "Operation failed",
        );
        set_condition(
            &mut status.conditions,
            "Failure",
            true,
            "snapshot deadline exceeded",
        );
        ctx.recorder
            .publish(
                &*s,
                EventType::Warning,
                "VirtualMachineSnapshotFailed",
                "snapshot deadline exceeded",
            )
            .await;
        write_status(&api, &s, &status).await?;
        return Ok(Action::requeue(POLL));
    }
    let Some(vm) = vm else {
        set_condition(
            &mut status.conditions,
            "Progressing",
            false,
            "Source does not exist",
        );
        set_condition(&mut status.conditions, "Ready", false, "Not ready");
        write_status(&api, &s, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    };

    // The lock: one snapshot or restore of a VM at a time.
    let vm_status = vm.status.clone().unwrap_or_default();
    let busy = match (
        &vm_status.snapshot_in_progress,
        &vm_status.restore_in_progress,
    ) {
        (Some(other), _) if *other != name => Some(format!("snapshot {other:?} in progress")),
        (_, Some(r)) => Some(format!("restore {r:?} in progress")),
        _ => None,
    };
    if let Some(why) = busy {
        set_condition(
            &mut status.conditions,
            "Progressing",
            false,
            &format!("Source not locked: source {ns}/{vm_name} {why}"),
        );
        set_condition(&mut status.conditions, "Ready", false, "Not ready");
        write_status(&api, &s, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    lock_vm(client, &vm, Some(&name)).await?;

    let vmi = vmis
        .get_opt(&vm_name)
        .await
        .map_err(kubevirt_reconcile::api_call_on(
            "reading",
            "virtualmachineinstance",
            &ns,
            &vm_name,
        ))?
        .filter(|v| v.metadata.deletion_timestamp.is_none() && !v.is_final());
    let online = vmi.is_some();
    let agent = vmi
        .as_ref()
        .is_some_and(|v| v.condition_true(vmi_condition::AGENT_CONNECTED));
    let paused = vmi
        .as_ref()
        .is_some_and(|v| v.condition_true(vmi_condition::PAUSED));

    let content_name = content_name(&s);
    let content =
        contents
            .get_opt(&content_name)
            .await
            .map_err(kubevirt_reconcile::api_call_on(
                "reading",
                "virtualmachinesnapshotcontent",
                &ns,
                &content_name,
            ))?;
    let content = match content {
        Some(c) => c,
        None => {
            let mut indications = Vec::new();
            if online {
                indications.push("Online");
                if paused {
                    indications.push("Paused");
                } else if agent {
                    indications.push("GuestAgent");
                } else {
                    indications.push("NoGuestAgent");
                }
            }
            if online && agent && !paused {
                let body =
                    json!({"unfreezeTimeout": format!("{}s", s.failure_deadline().as_secs())});
                if let Err(e) = vmi_subresource(client, &ns, &vm_name, "freeze", body).await {
                    // Upstream retries the freeze until the deadline; so do we.
                    set_condition(
                        &mut status.conditions,
                        "Progressing",
                        true,
                        &format!("Failed freezing vm: {e}"),
                    );
                    write_status(&api, &s, &status).await?;
                    return Ok(Action::requeue(Duration::from_secs(2)));
                }
            }
            let (backups, excluded) = plan_backups(client, &s, &vm).await?;
            status.indications = Some(indications.iter().map(|i| i.to_string()).collect())
                .filter(|v: &Vec<String>| !v.is_empty());
            status.source_indications = Some(
                indications
                    .iter()
                    .map(|i| SourceIndication {
                        indication: i.to_string(),
                        message: indication_message(i).into(),
                    })
                    .collect(),
            )
            .filter(|v: &Vec<_>| !v.is_empty());
            status.snapshot_volumes = Some(SnapshotVolumesLists {
                included_volumes: Some(backups.iter().map(|b| b.volume_name.clone()).collect())
                    .filter(|v: &Vec<String>| !v.is_empty()),
                excluded_volumes: Some(excluded).filter(|v| !v.is_empty()),
            });
            let content = new_content(&s, &vm, &content_name, backups);
            let created = match contents.create(&PostParams::default(), &content).await {
                Ok(c) => c,
                Err(kube::Error::Api(e)) if e.code == 409 => contents
                    .get(&content_name)
                    .await
                    .map_err(kubevirt_reconcile::api_call_on(
                        "reading",
                        "virtualmachinesnapshotcontent",
                        &ns,
                        &content_name,
                    ))?,
                Err(e) => {
                    return Err(kubevirt_reconcile::api_call_on(
                        "creating",
                        "virtualmachinesnapshotcontent",
                        &ns,
                        &content_name,
                    )(e)
                    .into())
                }
            };
            ctx.recorder
                .publish(
                    &*s,
                    EventType::Normal,
                    "SuccessfulVirtualMachineSnapshotContentCreate",
                    &format!("Successfully created VirtualMachineSnapshotContent {content_name}"),
                )
                .await;
            created
        }
    };
    status.virtual_machine_snapshot_content_name = Some(content_name.clone());
    set_condition(
        &mut status.conditions,
        "Progressing",
        true,
        "Source locked and operation in progress",
    );
    set_condition(&mut status.conditions, "Ready", false, "Not ready");

    // The VolumeSnapshots, owned by the content.
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
    let mut states = Vec::new();
    let mut error = None;
    for backup in content.spec.volume_backups.iter().flatten() {
        let Some(vs_name) = backup.volume_snapshot_name.clone() else {
            continue;
        };
        let vs =
            match snapshots
                .get_opt(&vs_name)
                .await
                .map_err(kubevirt_reconcile::api_call_on(
                    "reading",
                    "volumesnapshot",
                    &ns,
                    &vs_name,
                ))? {
                Some(vs) => vs,
                None => {
                    let vs = new_volume_snapshot(&content, backup, &vs_name);
                    let vs = match snapshots.create(&PostParams::default(), &vs).await {
                        Ok(vs) => vs,
                        Err(kube::Error::Api(e)) if e.code == 409 => snapshots
                            .get(&vs_name)
                            .await
                            .map_err(kubevirt_reconcile::api_call_on(
                                "reading",
                                "volumesnapshot",
                                &ns,
                                &vs_name,
                            ))?,
                        Err(e) => {
                            return Err(kubevirt_reconcile::api_call_on(
                                "creating",
                                "volumesnapshot",
                                &ns,
                                &vs_name,
                            )(e)
                            .into())
                        }
                    };
                    ctx.recorder
                        .publish(
                            &*s,
                            EventType::Normal,
                            "SuccessfulVolumeSnapshotCreate",
                            &format!("Successfully created VolumeSnapshot {vs_name}"),
                        )
                        .await;
                    vs
                }
            };
        let vst = vs.status.clone().unwrap_or_default();
        if let Some(message) = vst.error.as_ref().and_then(|e| e.message.clone()) {
            error = Some(format!("VolumeSnapshot {vs_name} error: {message}"));
        }
        states.push(VolumeSnapshotState {
            volume_snapshot_name: vs_name,
            creation_time: vst.creation_time.clone(),
            ready_to_use: Some(vst.ready_to_use == Some(true)),
            error: vst.error.as_ref().map(|e| SnapshotError {
                time: e.time.clone(),
                message: e.message.clone(),
            }),
        });
    }
    let ready = states.iter().all(|v| v.ready_to_use == Some(true));
    let content_status = VirtualMachineSnapshotContentStatus {
        creation_time: content
            .status
            .as_ref()
            .and_then(|c| c.creation_time.clone())
            .or_else(|| ready.then(now)),
        ready_to_use: Some(ready),
        error: error.as_ref().filter(|_| !ready).map(|m| SnapshotError {
            time: Some(now()),
            message: Some(m.clone()),
        }),
        volume_snapshot_status: Some(states).filter(|v| !v.is_empty()),
    };
    if content.status.as_ref() != Some(&content_status) {
        contents
            .patch_status(
                &content_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": content_status })),
            )
            .await
            .map_err(api_call("updating status of", &content))?;
    }
    if !ready {
        status.error = content_status.error.clone();
        write_status(&api, &s, &status).await?;
        return Ok(Action::requeue(POLL));
    }

    thaw(client, &ns, &vm).await;
    status.phase = Some("Succeeded".into());
    status.ready_to_use = Some(true);
    status.creation_time = content_status.creation_time.clone();
    status.error = None;
    set_condition(
        &mut status.conditions,
        "Progressing",
        false,
        "Operation complete",
    );
    set_condition(&mut status.conditions, "Ready", true, "Ready");
    write_status(&api, &s, &status).await?;
    // The VM as it is now (the lock changed it since it was read).
    let vm = vms
        .get(&vm_name)
        .await
        .map_err(kubevirt_reconcile::api_call_on(
            "reading",
            "virtualmachine",
            &ns,
            &vm_name,
        ))?;
    lock_vm(client, &vm, None).await?;
    Ok(Action::await_change())
}

/// Thaws the VM's guest if it runs (unfreezing a guest that is not frozen is a no-op).
async fn thaw(client: &Client, ns: &str, vm: &VirtualMachine) {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let Ok(Some(vmi)) = vmis.get_opt(&vm.name_any()).await else {
        return;
    };
    if vmi
        .status
        .as_ref()
        .and_then(|s| s.fs_freeze_status.as_deref())
        != Some("frozen")
    {
        return;
    }
    if let Err(e) = vmi_subresource(client, ns, &vm.name_any(), "unfreeze", json!({})).await {
        tracing::warn!(vm = %vm.name_any(), error = %e, "could not thaw the guest");
    }
}

/// The volume backups of a snapshot (claims that can be snapshotted) and the names of the
/// VM's other volumes.
async fn plan_backups(
    client: &Client,
    s: &VirtualMachineSnapshot,
    vm: &VirtualMachine,
) -> Result<(Vec<VolumeBackup>, Vec<String>)> {
    let ns = vm.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim_volumes: BTreeMap<String, String> = claim_volumes(vm).into_iter().collect();
    let mut backups = Vec::new();
    let mut excluded = Vec::new();
    for volume in template_volumes(vm) {
        let Some(claim) = claim_volumes.get(&volume.name) else {
            excluded.push(volume.name);
            continue;
        };
        let Some(pvc) = read_claim(&claims, &ns, claim).await? else {
            excluded.push(volume.name);
            continue;
        };
        if snapshottable(client, &pvc).await?.is_none() {
            excluded.push(volume.name);
            continue;
        }
        let mut spec = pvc.spec.clone().unwrap_or_default();
        spec.volume_name = None;
        spec.data_source = None;
        spec.data_source_ref = None;
        backups.push(VolumeBackup {
            volume_snapshot_name: Some(volume_snapshot_name(s, &volume.name)),
            volume_name: volume.name,
            persistent_volume_claim: SnapshotClaim {
                metadata: Some(ObjectMeta {
                    name: pvc.metadata.name.clone(),
                    namespace: pvc.metadata.namespace.clone(),
                    labels: pvc.metadata.labels.clone(),
                    annotations: pvc.metadata.annotations.clone(),
                    ..Default::default()
                }),
                spec: Some(spec),
            },
        });
    }
    Ok((backups, excluded))
}

fn owner(obj: &impl Resource<DynamicType = ()>) -> OwnerReference {
    obj.controller_owner_ref(&()).unwrap_or_default()
}

fn new_content(
    s: &VirtualMachineSnapshot,
    vm: &VirtualMachine,
    name: &str,
    backups: Vec<VolumeBackup>,
) -> VirtualMachineSnapshotContent {
    let delete_with_snapshot = s.spec.deletion_policy.as_deref() != Some("Retain");
    VirtualMachineSnapshotContent {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: s.metadata.namespace.clone(),
            owner_references: delete_with_snapshot.then(|| vec![owner(s)]),
            labels: Some(
                [
                    (SOURCE_NAME_LABEL.to_string(), vm.name_any()),
                    (
                        SOURCE_NAMESPACE_LABEL.to_string(),
                        vm.namespace().unwrap_or_default(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: VirtualMachineSnapshotContentSpec {
            virtual_machine_snapshot_name: Some(s.name_any()),
            source: SnapshotSourceSpec {
                virtual_machine: Some(SnapshotVirtualMachine {
                    metadata: Some(ObjectMeta {
                        name: vm.metadata.name.clone(),
                        namespace: vm.metadata.namespace.clone(),
                        uid: vm.metadata.uid.clone(),
                        generation: vm.metadata.generation,
                        labels: vm.metadata.labels.clone(),
                        annotations: vm.metadata.annotations.clone(),
                        ..Default::default()
                    }),
                    spec: Some(vm.spec.clone()),
                    status: None,
                }),
            },
            volume_backups: Some(backups).filter(|b| !b.is_empty()),
        },
        status: None,
    }
}

fn new_volume_snapshot(
    content: &VirtualMachineSnapshotContent,
    backup: &VolumeBackup,
    name: &str,
) -> VolumeSnapshot {
    VolumeSnapshot {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: content.metadata.namespace.clone(),
            owner_references: Some(vec![owner(content)]),
            ..Default::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: backup
                    .persistent_volume_claim
                    .metadata
                    .as_ref()
                    .and_then(|m| m.name.clone()),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: None,
        },
        status: None,
    }
}

/// A reference to a kubevirt.io VirtualMachine, as snapshots and restores hold one.
pub fn vm_reference(name: &str) -> TypedLocalObjectReference {
    TypedLocalObjectReference {
        api_group: Some("kubevirt.io".into()),
        kind: "VirtualMachine".into(),
        name: name.into(),
    }
}

/// Runs the VirtualMachineSnapshot controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    crate::operation::run(client, "snapshot-controller", reconcile, shutdown).await;
}
