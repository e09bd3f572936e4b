//! The VirtualMachineClone controller (upstream's clone controller): a VM source is
//! snapshotted first (`tmp-snapshot-<clone uid>`, phase `SnapshotInProgress`), then a restore
//! (`tmp-restore-<clone uid>`, phase `RestoreInProgress`) creates the target VM from the
//! snapshot with the patches that give it a new identity (`kubevirt_api::clone`); once the
//! restore is complete the clone is `Succeeded` and the temporary objects go. A snapshot
//! source is restored directly.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};

use kubevirt_api::clone::{clone_patches, VirtualMachineClone};
use kubevirt_api::snapshot::{
    VirtualMachineRestore, VirtualMachineRestoreSpec, VirtualMachineSnapshot,
    VirtualMachineSnapshotContent, VirtualMachineSnapshotSpec,
};
use kubevirt_api::v1::VirtualMachine;
use kubevirt_reconcile::events::EventType;
use kubevirt_reconcile::{api_call, api_call_on};

use crate::operation::{write_status, Context};
use crate::snapshot::{set_condition, vm_reference};
use crate::Result;

const POLL: Duration = Duration::from_millis(500);

/// Creates `obj` unless it exists; returns whether it was created now.
async fn ensure<K>(api: &Api<K>, obj: &K) -> Result<bool>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(api_call("creating", obj)(e).into()),
    }
}

fn owned_by(c: &VirtualMachineClone, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: c.metadata.namespace.clone(),
        owner_references: c.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// A target name for a clone that names none: `clone-<source>-<5 random>`.
fn generated_target(source: &str, uid: &str) -> String {
    let suffix: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(5)
        .collect();
    let mut base = format!("clone-{source}");
    base.truncate(63 - 6);
    format!("{base}-{suffix}")
}

pub async fn reconcile(c: Arc<VirtualMachineClone>, ctx: Arc<Context>) -> Result<Action> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let uid = c.metadata.uid.clone().unwrap_or_default();
    let client = &ctx.client;
    let api: Api<VirtualMachineClone> = Api::namespaced(client.clone(), &ns);
    let mut status = c.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    if c.metadata.deletion_timestamp.is_some() || phase == "Succeeded" || phase == "Failed" {
        return Ok(Action::await_change());
    }
    let Some(source) = c.spec.source.clone() else {
        return Ok(Action::await_change());
    };
    status
        .creation_time
        .get_or_insert_with(|| Time(jiff::Timestamp::now()));
    let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &ns);
    let from_vm = source.kind == "VirtualMachine";

    // 1. The snapshot to clone from.
    let snapshot_name = if from_vm {
        let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
        if vms
            .get_opt(&source.name)
            .await
            .map_err(api_call_on("reading", "virtualmachine", &ns, &source.name))?
            .is_none()
        {
            let message = format!("Source VM {ns}/{} does not exist", source.name);
            if status.phase.is_none() {
                ctx.recorder
                    .publish(&*c, EventType::Warning, "SourceDoesNotExist", &message)
                    .await;
            }
            set_condition(&mut status.conditions, "Ready", false, &message);
            write_status(&api, &c, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        let snapshot_name = format!("tmp-snapshot-{uid}");
        let snapshot = VirtualMachineSnapshot {
            metadata: owned_by(&c, &snapshot_name),
            spec: VirtualMachineSnapshotSpec {
                source: vm_reference(&source.name),
                ..Default::default()
            },
            status: None,
        };
        if ensure(&snapshots, &snapshot).await? {
            ctx.recorder
                .publish(
                    &*c,
                    EventType::Normal,
                    "SnapshotCreated",
                    &format!("created snapshot {snapshot_name} for clone {name}"),
                )
                .await;
        }
        status.snapshot_name = Some(snapshot_name.clone());
        snapshot_name
    } else {
        source.name.clone()
    };
    let snapshot = snapshots
        .get_opt(&snapshot_name)
        .await
        .map_err(api_call_on(
            "reading",
            "virtualmachinesnapshot",
            &ns,
            &snapshot_name,
        ))?;
    let ready_content = snapshot
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .filter(|s| s.ready_to_use == Some(true))
        .and_then(|s| s.virtual_machine_snapshot_content_name.clone());
    let failed = snapshot
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .is_some_and(|s| s.phase.as_deref() == Some("Failed"));
    if failed {
        status.phase = Some("Failed".into());
        set_condition(&mut status.conditions, "Ready", false, "Snapshot failed");
        set_condition(
            &mut status.conditions,
            "Progressing",
            false,
            "Snapshot failed",
        );
        write_status(&api, &c, &status).await?;
        return Ok(Action::await_change());
    }
    let Some(content_name) = ready_content else {
        status.phase = Some("SnapshotInProgress".into());
        set_condition(
            &mut status.conditions,
            "Progressing",
            true,
            "Still processing",
        );
        set_condition(&mut status.conditions, "Ready", false, "Still processing");
        write_status(&api, &c, &status).await?;
        return Ok(Action::requeue(POLL));
    };

    // 2. The restore that makes the target.
    let contents: Api<VirtualMachineSnapshotContent> = Api::namespaced(client.clone(), &ns);
    let content = contents.get(&content_name).await.map_err(api_call_on(
        "reading",
        "virtualmachinesnapshotcontent",
        &ns,
        &content_name,
    ))?;
    let Some(snap_vm) = content.spec.source.virtual_machine.clone() else {
        ctx.recorder
            .publish(
                &*c,
                EventType::Warning,
                "SnapshotContentInvalid",
                &format!("snapshot content {content_name} holds no VM"),
            )
            .await;
        return Ok(Action::await_change());
    };
    let source_vm = VirtualMachine {
        metadata: snap_vm.metadata.clone().unwrap_or_default(),
        spec: snap_vm.spec.clone().unwrap_or_default(),
        status: None,
    };
    let target_name = status
        .target_name
        .clone()
        .or_else(|| {
            c.spec
                .target
                .as_ref()
                .map(|t| t.name.clone())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| generated_target(&source_vm.name_any(), &uid));
    status.target_name = Some(target_name.clone());
    let restores: Api<VirtualMachineRestore> = Api::namespaced(client.clone(), &ns);
    let restore_name = format!("tmp-restore-{uid}");
    let restore = VirtualMachineRestore {
        metadata: owned_by(&c, &restore_name),
        spec: VirtualMachineRestoreSpec {
            target: vm_reference(&target_name),
            virtual_machine_snapshot_name: snapshot_name.clone(),
            volume_restore_policy: c.spec.volume_name_policy.clone(),
            patches: Some(clone_patches(&source_vm, &c.spec)).filter(|p| !p.is_empty()),
            ..Default::default()
        },
        status: None,
    };
    if ensure(&restores, &restore).await? {
        ctx.recorder
            .publish(
                &*c,
                EventType::Normal,
                "RestoreCreated",
                &format!("created restore {restore_name} for clone {name}"),
            )
            .await;
    }
    status.restore_name = Some(restore_name.clone());
    let restore = restores.get_opt(&restore_name).await.map_err(api_call_on(
        "reading",
        "virtualmachinerestore",
        &ns,
        &restore_name,
    ))?;
    let restore_failed = restore
        .as_ref()
        .and_then(|r| r.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "Failure" && c.status == "True")
        })
        .and_then(|c| c.reason.clone());
    if let Some(reason) = restore_failed {
        status.phase = Some("Failed".into());
        set_condition(&mut status.conditions, "Ready", false, &reason);
        set_condition(&mut status.conditions, "Progressing", false, &reason);
        write_status(&api, &c, &status).await?;
        return Ok(Action::await_change());
    }
    let complete = restore
        .as_ref()
        .and_then(|r| r.status.as_ref())
        .is_some_and(|s| s.complete == Some(true));
    if !complete {
        status.phase = Some("RestoreInProgress".into());
        set_condition(
            &mut status.conditions,
            "Progressing",
            true,
            "Still processing",
        );
        set_condition(&mut status.conditions, "Ready", false, "Still processing");
        write_status(&api, &c, &status).await?;
        return Ok(Action::requeue(POLL));
    }
    ctx.recorder
        .publish(
            &*c,
            EventType::Normal,
            "RestoreReady",
            &format!("restore {restore_name} for clone {name} is ready"),
        )
        .await;

    // 3. Done: the temporary objects go.
    let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
    if let Err(e) = restores
        .delete(&restore_name, &DeleteParams::default())
        .await
    {
        if !gone(&e) {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
    }
    if from_vm {
        match snapshots
            .delete(&snapshot_name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                ctx.recorder
                    .publish(
                        &*c,
                        EventType::Normal,
                        "SnapshotDeleted",
                        &format!("deleted snapshot {snapshot_name} for clone {name}"),
                    )
                    .await;
            }
            Err(e) if gone(&e) => {}
            Err(_) => return Ok(Action::requeue(Duration::from_secs(2))),
        }
    }
    status.phase = Some("Succeeded".into());
    set_condition(&mut status.conditions, "Progressing", false, "Ready");
    set_condition(&mut status.conditions, "Ready", true, "Ready");
    write_status(&api, &c, &status).await?;
    Ok(Action::await_change())
}

/// Runs the VirtualMachineClone controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    crate::operation::run(client, "clone-controller", reconcile, shutdown).await;
}
