//! The built-in class's controllers, doing what kube-controller-manager's volume binder,
//! an external provisioner and resizer, and the protection controllers do for it:
//!
//! - a claim of class `local` gets a new PersistentVolume (`pvc-<claim uid>`, a directory
//!   under the volumes root) and both are bound (claim `Pending` -> `Bound`); with
//!   `WaitForFirstConsumer` only once the scheduler has picked the node of a pod using it
//!   (`volume.kubernetes.io/selected-node`); without a class, an available volume that fits
//!   is bound, as the binder does for statically made volumes;
//! - a bound claim asking for more storage grows its volume when the class allows expansion;
//! - a deleted claim keeps `kubernetes.io/pvc-protection` until no pod uses it;
//! - a volume whose claim is gone is `Released`, then deleted with its data (reclaim policy
//!   `Delete`) or kept (`Retain`); `kubernetes.io/pv-protection` holds it while bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{
    LocalVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeSpec,
    PersistentVolumeStatus, Pod, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use kubevirt_reconcile::events::{EventRecorder, EventType};
use kubevirt_reconcile::{api_call, finalizer};

use crate::local::{grow_sparse, volume_path, LocalVolumes, VolumeMode, BLOCK_FILE, DISK_IMAGE};
use crate::{StorageError, PROVISIONER};

pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// Set by the scheduler on a `WaitForFirstConsumer` claim: the node of its first pod.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// How often an unprovisionable claim is looked at again (space may have been freed).
const RETRY: Duration = Duration::from_secs(15);

/// What the storage controllers share.
pub struct Context {
    pub client: Client,
    pub volumes: LocalVolumes,
    /// This node: the only node a local volume can be used on.
    pub node: String,
    pub recorder: EventRecorder,
}

type Result<T> = std::result::Result<T, StorageError>;

fn bytes(q: &K8sQuantity) -> Option<u64> {
    kubevirt_api::Quantity::parse(&q.0)
        .ok()
        .map(|q| q.to_bytes())
}

fn requested(pvc: &PersistentVolumeClaim) -> Option<&K8sQuantity> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
}

fn capacity_of(pv: &PersistentVolume) -> Option<&K8sQuantity> {
    pv.spec.as_ref()?.capacity.as_ref()?.get("storage")
}

fn claim_phase(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn pv_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Human size for messages (`5Gi`, `312.4Mi`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 {
        format!("{v}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// The claims a pod's volumes name.
pub fn pod_claims(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

fn pod_active(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a pod that has not finished uses the claim (pvc-protection's rule).
async fn in_use(client: &Client, ns: &str, claim: &str) -> Result<bool> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&Default::default())
        .await
        .map_err(|e| StorageError::api("listing pods", ns, e))?;
    Ok(list
        .items
        .iter()
        .any(|p| pod_active(p) && pod_claims(p).any(|c| c == claim)))
}

async fn publish(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    t: EventType,
    reason: &str,
    msg: &str,
) {
    ctx.recorder.publish(pvc, t, reason, msg).await;
}

async fn set_claim_status(
    api: &Api<PersistentVolumeClaim>,
    pvc: &PersistentVolumeClaim,
    status: PersistentVolumeClaimStatus,
) -> Result<()> {
    if pvc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    api.patch_status(
        &pvc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map_err(api_call("writing status of", pvc))?;
    Ok(())
}

async fn set_volume_phase(
    api: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    phase: &str,
) -> Result<()> {
    if pv_phase(pv) == phase {
        return Ok(());
    }
    let status = PersistentVolumeStatus {
        phase: Some(phase.into()),
        last_phase_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        )),
        ..Default::default()
    };
    api.patch_status(
        &pv.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map_err(api_call("writing status of", pv))?;
    Ok(())
}

/// Reconciles one claim.
pub async fn reconcile_claim(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Action> {
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if pvc.metadata.deletion_timestamp.is_some() {
        if finalizer::has_finalizer(&*pvc, PVC_PROTECTION)
            && !in_use(&ctx.client, &ns, &name).await?
        {
            finalizer::remove(&claims, &*pvc, PVC_PROTECTION)
                .await
                .map_err(StorageError::from)?;
        }
        return Ok(Action::await_change());
    }
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let volume_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty());
    if let Some(volume_name) = volume_name {
        let Some(pv) = volumes
            .get_opt(&volume_name)
            .await
            .map_err(|e| StorageError::api("reading volume", &volume_name, e))?
        else {
            if claim_phase(&pvc) == "Bound" {
                publish(
                    &ctx,
                    &pvc,
                    EventType::Warning,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                )
                .await;
                let mut status = pvc.status.clone().unwrap_or_default();
                status.phase = Some("Lost".into());
                set_claim_status(&claims, &pvc, status).await?;
            }
            return Ok(Action::await_change());
        };
        return bind(&ctx, &claims, &volumes, &pvc, &pv).await;
    }
    let class_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default();
    if class_name.is_empty() {
        return bind_static(&ctx, &claims, &volumes, &pvc).await;
    }
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let Some(class) = classes
        .get_opt(&class_name)
        .await
        .map_err(|e| StorageError::api("reading storage class", &class_name, e))?
    else {
        publish(
            &ctx,
            &pvc,
            EventType::Warning,
            "ProvisioningFailed",
            &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        )
        .await;
        return Ok(Action::requeue(RETRY));
    };
    if class.provisioner != PROVISIONER {
        publish(&ctx, &pvc, EventType::Normal, "ExternalProvisioning", &format!(
            "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
            class.provisioner
        )).await;
        return Ok(Action::await_change());
    }
    let wait_for_consumer = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
    let selected = pvc.annotations().get(SELECTED_NODE).cloned();
    if wait_for_consumer && selected.is_none() {
        publish(
            &ctx,
            &pvc,
            EventType::Normal,
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        )
        .await;
        set_claim_status(
            &claims,
            &pvc,
            PersistentVolumeClaimStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            },
        )
        .await?;
        return Ok(Action::await_change());
    }
    if selected.as_deref().is_some_and(|n| n != ctx.node) {
        // Another node's provisioner would take it; there is none for a local class.
        publish(&ctx, &pvc, EventType::Warning, "ProvisioningFailed", &format!(
            "failed to provision volume with StorageClass \"{class_name}\": node \"{}\" has no local volumes of this class",
            selected.unwrap_or_default()
        )).await;
        return Ok(Action::requeue(RETRY));
    }
    provision(&ctx, &claims, &volumes, &pvc, &class).await
}

async fn provision(
    ctx: &Context,
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
) -> Result<Action> {
    let class_name = class.name_any();
    let fail = |reason: String| {
        format!("failed to provision volume with StorageClass \"{class_name}\": {reason}")
    };
    let Some(uid) = pvc.metadata.uid.clone() else {
        return Ok(Action::await_change());
    };
    let Some(size) = requested(pvc).cloned() else {
        publish(
            ctx,
            pvc,
            EventType::Warning,
            "ProvisioningFailed",
            &fail("the claim requests no storage (spec.resources.requests.storage)".into()),
        )
        .await;
        return Ok(Action::await_change());
    };
    let capacity = bytes(&size).unwrap_or(0);
    let pv_name = format!("pvc-{uid}");
    let existing = volumes
        .get_opt(&pv_name)
        .await
        .map_err(|e| StorageError::api("reading volume", &pv_name, e))?;
    let spec = pvc.spec.clone().unwrap_or_default();
    let mode = VolumeMode::parse(spec.volume_mode.as_deref());
    let pv = match existing {
        Some(pv) => pv,
        None => {
            let available = ctx
                .volumes
                .available()
                .map_err(|e| StorageError::io(ctx.volumes.root(), e))?;
            if capacity > available {
                publish(
                    ctx,
                    pvc,
                    EventType::Warning,
                    "ProvisioningFailed",
                    &fail(format!(
                        "not enough space on node \"{}\": requested {}, {} available in {}",
                        ctx.node,
                        size.0,
                        human(available),
                        ctx.volumes.root().display()
                    )),
                )
                .await;
                return Ok(Action::requeue(RETRY));
            }
            let claim = format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any());
            publish(
                ctx,
                pvc,
                EventType::Normal,
                "Provisioning",
                &format!("External provisioner is provisioning volume for claim \"{claim}\""),
            )
            .await;
            let dir = match ctx.volumes.create(&pv_name, mode, capacity) {
                Ok(d) => d,
                Err(e) => {
                    publish(
                        ctx,
                        pvc,
                        EventType::Warning,
                        "ProvisioningFailed",
                        &fail(e.to_string()),
                    )
                    .await;
                    return Ok(Action::requeue(RETRY));
                }
            };
            if let Some(snapshot) = snapshot_source(pvc) {
                let file = match mode {
                    VolumeMode::Filesystem => dir.join(DISK_IMAGE),
                    VolumeMode::Block => dir.join(BLOCK_FILE),
                };
                let ns = pvc.namespace().unwrap_or_default();
                if let Err(e) = crate::snapshots::restore_into(
                    &ctx.client,
                    &ctx.volumes,
                    &ns,
                    snapshot,
                    &file,
                    capacity,
                )
                .await
                {
                    publish(
                        ctx,
                        pvc,
                        EventType::Warning,
                        "ProvisioningFailed",
                        &fail(format!("error getting handle for DataSource Type VolumeSnapshot by Name {snapshot}: {e}")),
                    )
                    .await;
                    let _ = ctx.volumes.remove(&pv_name);
                    return Ok(Action::requeue(RETRY));
                }
            }
            let pv = new_volume(ctx, pvc, class, &pv_name, size, mode, &dir);
            let created = match volumes.create(&PostParams::default(), &pv).await {
                Ok(pv) => pv,
                Err(kube::Error::Api(e)) if e.code == 409 => volumes
                    .get(&pv_name)
                    .await
                    .map_err(|e| StorageError::api("reading volume", &pv_name, e))?,
                Err(e) => return Err(StorageError::api("creating volume", &pv_name, e)),
            };
            publish(
                ctx,
                pvc,
                EventType::Normal,
                "ProvisioningSucceeded",
                &format!("Successfully provisioned volume {pv_name}"),
            )
            .await;
            created
        }
    };
    record_binding(claims, pvc, &pv.name_any(), Some(PROVISIONER)).await?;
    Ok(Action::await_change())
}

/// The VolumeSnapshot a claim is to be made from (`dataSource`, or `dataSourceRef` in the
/// claim's own namespace).
fn snapshot_source(pvc: &PersistentVolumeClaim) -> Option<&str> {
    let spec = pvc.spec.as_ref()?;
    let is_snapshot = |group: Option<&str>, kind: &str| {
        group == Some(kubevirt_api::snapshot::VOLUME_SNAPSHOT_GROUP) && kind == "VolumeSnapshot"
    };
    if let Some(d) = &spec.data_source {
        if is_snapshot(d.api_group.as_deref(), &d.kind) {
            return Some(&d.name);
        }
    }
    let r = spec.data_source_ref.as_ref()?;
    let own_namespace = r.namespace.is_none() || r.namespace == pvc.metadata.namespace;
    (own_namespace && is_snapshot(r.api_group.as_deref(), &r.kind)).then_some(r.name.as_str())
}

/// The reference from a volume to the claim it is bound to.
fn claim_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.namespace(),
        name: Some(pvc.name_any()),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Points an existing volume at the claim.
async fn set_claim_ref(
    volumes: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
) -> Result<()> {
    volumes
        .patch(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"claimRef": claim_ref(pvc)}})),
        )
        .await
        .map_err(api_call("claiming", pv))?;
    Ok(())
}

/// Records the binding on the claim (its volume, and who provisioned it); the next
/// reconcile (the claim changed) finishes it.
async fn record_binding(
    claims: &Api<PersistentVolumeClaim>,
    pvc: &PersistentVolumeClaim,
    volume: &str,
    provisioner: Option<&str>,
) -> Result<()> {
    let mut annotations = json!({BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"});
    if let Some(p) = provisioner {
        annotations[STORAGE_PROVISIONER] = json!(p);
        annotations[STORAGE_PROVISIONER_BETA] = json!(p);
    }
    claims
        .patch(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": annotations},
                "spec": {"volumeName": volume},
            })),
        )
        .await
        .map_err(api_call("binding", pvc))?;
    Ok(())
}

fn new_volume(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    name: &str,
    size: K8sQuantity,
    mode: VolumeMode,
    dir: &std::path::Path,
) -> PersistentVolume {
    let spec = pvc.spec.clone().unwrap_or_default();
    let path = match mode {
        VolumeMode::Filesystem => dir.to_path_buf(),
        VolumeMode::Block => dir.join(BLOCK_FILE),
    };
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.into(),
                PROVISIONER.into(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some(BTreeMap::from([("storage".into(), size)])),
            claim_ref: Some(claim_ref(pvc)),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: Some(class.name_any()),
            volume_mode: Some(mode.as_str().into()),
            local: Some(LocalVolumeSource {
                path: path.display().to_string(),
                fs_type: None,
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![ctx.node.clone()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// A claim without a class: the smallest available class-less volume that fits.
async fn bind_static(
    ctx: &Context,
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
) -> Result<Action> {
    let want = requested(pvc).and_then(bytes).unwrap_or(0);
    let modes = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    let list = volumes
        .list(&Default::default())
        .await
        .map_err(|e| StorageError::api("listing volumes", "", e))?;
    let fit = list
        .items
        .iter()
        .filter(|pv| {
            let spec = pv.spec.clone().unwrap_or_default();
            spec.claim_ref.is_none()
                && spec
                    .storage_class_name
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
                && matches!(pv_phase(pv), "Available" | "Pending")
                && capacity_of(pv).and_then(bytes).unwrap_or(0) >= want
                && modes
                    .iter()
                    .all(|m| spec.access_modes.iter().flatten().any(|x| x == m))
        })
        .min_by_key(|pv| capacity_of(pv).and_then(bytes).unwrap_or(0));
    let Some(pv) = fit else {
        publish(
            ctx,
            pvc,
            EventType::Normal,
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
        )
        .await;
        return Ok(Action::requeue(RETRY));
    };
    set_claim_ref(volumes, pv, pvc).await?;
    record_binding(claims, pvc, &pv.name_any(), None).await?;
    Ok(Action::await_change())
}

/// The claim names its volume: make both say Bound, then grow the volume if asked.
async fn bind(
    ctx: &Context,
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<Action> {
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let ours = claim_ref.is_some_and(|c| {
        c.name.as_deref() == Some(&pvc.name_any())
            && c.namespace == pvc.namespace()
            && (c.uid.is_none() || c.uid == pvc.metadata.uid)
    });
    if !ours {
        if claim_ref.is_some() {
            publish(
                ctx,
                pvc,
                EventType::Warning,
                "FailedBinding",
                &format!(
                    "volume \"{}\" already bound to a different claim.",
                    pv.name_any()
                ),
            )
            .await;
            return Ok(Action::requeue(RETRY));
        }
        set_claim_ref(volumes, pv, pvc).await?;
    }
    set_volume_phase(volumes, pv, "Bound").await?;
    let pv_spec = pv.spec.clone().unwrap_or_default();
    let mut capacity = pv_spec.capacity.clone().unwrap_or_default();
    if let Some(action) = resize(ctx, volumes, pvc, pv, &mut capacity).await? {
        return Ok(action);
    }
    let status = PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        access_modes: pv_spec.access_modes.clone(),
        capacity: Some(capacity),
        ..pvc.status.clone().unwrap_or_default()
    };
    set_claim_status(claims, pvc, status).await?;
    Ok(Action::await_change())
}

/// Grows a built-in volume to what its claim now requests (the class allowing it, which
/// admission checked). Returns an action when the claim must wait.
async fn resize(
    ctx: &Context,
    volumes: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
    capacity: &mut BTreeMap<String, K8sQuantity>,
) -> Result<Option<Action>> {
    let (Some(want), Some(have)) = (requested(pvc), capacity.get("storage").cloned()) else {
        return Ok(None);
    };
    let (Some(want_bytes), Some(have_bytes)) = (bytes(want), bytes(&have)) else {
        return Ok(None);
    };
    if want_bytes <= have_bytes
        || pv.annotations().get(PROVISIONED_BY).map(String::as_str) != Some(PROVISIONER)
    {
        return Ok(None);
    }
    let Some((path, mode)) = volume_path(pv) else {
        return Ok(None);
    };
    let growth = want_bytes - have_bytes;
    let available = ctx
        .volumes
        .available()
        .map_err(|e| StorageError::io(ctx.volumes.root(), e))?;
    if growth > available {
        publish(
            ctx,
            pvc,
            EventType::Warning,
            "VolumeResizeFailed",
            &format!(
            "resize volume \"{}\" by \"{}\" failed: not enough space on node \"{}\": {} available",
            pv.name_any(), ctx.volumes.root().display(), ctx.node, human(available)
        ),
        )
        .await;
        return Ok(Some(Action::requeue(RETRY)));
    }
    publish(
        ctx,
        pvc,
        EventType::Normal,
        "Resizing",
        &format!("External resizer is resizing volume {}", pv.name_any()),
    )
    .await;
    let file = match mode {
        VolumeMode::Filesystem => path.join(DISK_IMAGE),
        VolumeMode::Block => path,
    };
    // An empty filesystem volume gets its disk at first use, already of the new size.
    if file.exists() {
        grow_sparse(&file, want_bytes).map_err(|e| StorageError::io(&file, e))?;
    }
    volumes
        .patch(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"capacity": {"storage": want}}})),
        )
        .await
        .map_err(api_call("resizing", pv))?;
    capacity.insert("storage".into(), want.clone());
    publish(
        ctx,
        pvc,
        EventType::Normal,
        "VolumeResizeSuccessful",
        "Resize volume succeeded",
    )
    .await;
    Ok(None)
}

/// Reconciles one volume: phase, release, reclaim and protection.
pub async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let name = pv.name_any();
    let spec = pv.spec.clone().unwrap_or_default();
    let ours = pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
    let policy = spec
        .persistent_volume_reclaim_policy
        .as_deref()
        .unwrap_or("Retain");
    let claim = match &spec.claim_ref {
        Some(c) => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(
                ctx.client.clone(),
                c.namespace.as_deref().unwrap_or("default"),
            );
            let name = c.name.clone().unwrap_or_default();
            claims
                .get_opt(&name)
                .await
                .map_err(|e| StorageError::api("reading claim", &name, e))?
                .filter(|pvc| c.uid.is_none() || pvc.metadata.uid == c.uid)
        }
        None => None,
    };
    let released = spec.claim_ref.is_some() && claim.is_none();
    if pv.metadata.deletion_timestamp.is_some() {
        if claim.is_none() || pv_phase(&pv) != "Bound" {
            if ours && policy == "Delete" {
                ctx.volumes
                    .remove(&name)
                    .map_err(|e| StorageError::io(&ctx.volumes.dir(&name), e))?;
            }
            finalizer::remove(&volumes, &*pv, PV_PROTECTION)
                .await
                .map_err(StorageError::from)?;
        }
        return Ok(Action::await_change());
    }
    if released {
        set_volume_phase(&volumes, &pv, "Released").await?;
        if policy == "Delete" && ours {
            ctx.volumes
                .remove(&name)
                .map_err(|e| StorageError::io(&ctx.volumes.dir(&name), e))?;
            tracing::info!(volume = %name, "claim gone: volume and its data deleted (reclaim policy Delete)");
            match volumes.delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(StorageError::api("deleting volume", &name, e)),
            }
        }
        return Ok(Action::await_change());
    }
    if spec.claim_ref.is_none() {
        set_volume_phase(&volumes, &pv, "Available").await?;
    }
    Ok(Action::await_change())
}

/// Runs the claim and volume controllers until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let shutdown = shutdown.shared();
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
        |pv: PersistentVolume| {
            let c = pv.spec?.claim_ref?;
            Some(ObjectRef::new(&c.name?).within(&c.namespace?))
        },
    )
    .watches(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            pod_claims(&pod)
                .map(|c| ObjectRef::new(c).within(&ns))
                .collect::<Vec<_>>()
        },
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(reconcile_claim, crate::error_policy, ctx.clone())
    .for_each(|_| async {});
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<PersistentVolumeClaim>::all(client),
        watcher::Config::default(),
        |pvc: PersistentVolumeClaim| {
            let v = pvc.spec?.volume_name.filter(|v| !v.is_empty())?;
            Some(ObjectRef::new(&v))
        },
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile_volume, crate::error_policy, ctx)
    .for_each(|_| async {});
    futures::join!(claims, volumes);
}
