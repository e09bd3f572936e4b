//! Volume snapshots of the built-in class: what the external-snapshotter's common controller
//! and a CSI driver's snapshotter sidecar do together, for the driver `kubevirt-rs.io/local`.
//!
//! - A VolumeSnapshot of a bound claim gets a VolumeSnapshotContent `snapcontent-<uid>`
//!   (driver, class, deletion policy of its VolumeSnapshotClass; source `volumeHandle` the
//!   claim's volume), then the volume's disk file is copied to
//!   `<volumes root>/.snapshots/<content>/`: a reflink where the filesystem has one (a
//!   point-in-time copy sharing every block), else a copy of the data segments only (holes
//!   stay holes). Both objects then say `readyToUse: true`, with `restoreSize` and
//!   `creationTime`.
//! - A VolumeSnapshot naming an existing content (`source.volumeSnapshotContentName`, a
//!   pre-provisioned snapshot) binds to it.
//! - Deleting a VolumeSnapshot deletes its content when the policy is `Delete`; deleting a
//!   content removes the stored copy (`Delete`) or leaves it (`Retain`). Finalizers hold both
//!   while they are bound, as the snapshot controller's do.
//! - A claim whose `dataSource` is a VolumeSnapshot is provisioned with the snapshot's data
//!   ([`restore_into`], called by the provisioner).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use kubevirt_api::snapshot::{
    VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent, VolumeSnapshotContentSource,
    VolumeSnapshotContentSpec, VolumeSnapshotContentStatus, VolumeSnapshotError,
    VolumeSnapshotStatus, DEFAULT_CLASS_ANNOTATION,
};
use kubevirt_api::Quantity;
use kubevirt_reconcile::events::{EventRecorder, EventType};
use kubevirt_reconcile::{api_call, finalizer};

use crate::local::{disk_file, LocalVolumes};
use crate::{now, StorageError, PROVISIONER};

/// Held on a VolumeSnapshot bound to a content.
pub const SNAPSHOT_BOUND_PROTECTION: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
/// Held on a content bound to a VolumeSnapshot, until its stored copy is dealt with.
pub const CONTENT_BOUND_PROTECTION: &str =
    "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";
/// The built-in VolumeSnapshotClass.
pub const DEFAULT_SNAPSHOT_CLASS: &str = "local-snapshot";
/// Where stored snapshots live inside the volumes root (no volume name starts with a dot).
const SNAPSHOTS_DIR: &str = ".snapshots";
const RETRY: Duration = Duration::from_secs(5);

type Result<T> = std::result::Result<T, StorageError>;

pub struct Context {
    pub client: Client,
    pub volumes: LocalVolumes,
    pub recorder: EventRecorder,
}

/// The class the server installs beside the `local` StorageClass: snapshots of its
/// volumes, deleted with their VolumeSnapshot.
pub fn default_snapshot_class() -> VolumeSnapshotClass {
    VolumeSnapshotClass {
        metadata: ObjectMeta {
            name: Some(DEFAULT_SNAPSHOT_CLASS.into()),
            annotations: Some([(DEFAULT_CLASS_ANNOTATION.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        driver: PROVISIONER.into(),
        parameters: None,
        deletion_policy: "Delete".into(),
    }
}

/// Creates the built-in snapshot class unless one of that name exists.
pub async fn ensure_default_class(client: &Client) -> Result<()> {
    let classes: Api<VolumeSnapshotClass> = Api::all(client.clone());
    match classes
        .create(&PostParams::default(), &default_snapshot_class())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(StorageError::api(
            "creating snapshot class",
            DEFAULT_SNAPSHOT_CLASS,
            e,
        )),
    }
}

/// The directory holding the stored copy of snapshot `handle`.
fn stored_dir(volumes: &LocalVolumes, handle: &str) -> Option<PathBuf> {
    let ok = !handle.is_empty()
        && handle
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !handle.starts_with('.');
    ok.then(|| volumes.root().join(SNAPSHOTS_DIR).join(handle))
}

/// The stored copy's file (named as the volume's file was: `disk.img` or `block`).
fn stored_file(volumes: &LocalVolumes, handle: &str) -> Option<PathBuf> {
    let dir = stored_dir(volumes, handle)?;
    std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_none_or(|e| e != "tmp") && p.is_file())
}

/// The class a snapshot uses: the one it names, else its driver's default.
async fn class_for(
    client: &Client,
    named: Option<&str>,
    driver: &str,
) -> std::result::Result<Option<VolumeSnapshotClass>, kube::Error> {
    let classes: Api<VolumeSnapshotClass> = Api::all(client.clone());
    if let Some(name) = named {
        return classes.get_opt(name).await;
    }
    let list = classes.list(&Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .find(|c| c.driver == driver && c.is_default()))
}

async fn set_snapshot_status(
    api: &Api<VolumeSnapshot>,
    vs: &VolumeSnapshot,
    status: VolumeSnapshotStatus,
) -> Result<()> {
    if vs.status.as_ref() == Some(&status) {
        return Ok(());
    }
    api.patch_status(
        &vs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(api_call("writing status of", vs))?;
    Ok(())
}

/// Records an error on the snapshot (status and a warning event) and looks again later.
async fn snapshot_error(
    ctx: &Context,
    api: &Api<VolumeSnapshot>,
    vs: &VolumeSnapshot,
    reason: &str,
    message: String,
) -> Result<Action> {
    let mut status = vs.status.clone().unwrap_or_default();
    if status.error.as_ref().and_then(|e| e.message.as_ref()) != Some(&message) {
        ctx.recorder
            .publish(vs, EventType::Warning, reason, &message)
            .await;
        status.error = Some(VolumeSnapshotError {
            time: Some(now()),
            message: Some(message),
        });
        status.ready_to_use = Some(false);
        set_snapshot_status(api, vs, status).await?;
    }
    Ok(Action::requeue(RETRY))
}

pub async fn reconcile_snapshot(vs: Arc<VolumeSnapshot>, ctx: Arc<Context>) -> Result<Action> {
    let ns = vs.namespace().unwrap_or_default();
    let name = vs.name_any();
    let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let bound = vs
        .status
        .as_ref()
        .and_then(|s| s.bound_volume_snapshot_content_name.clone());
    if vs.metadata.deletion_timestamp.is_some() {
        if let Some(content_name) = &bound {
            if let Some(content) = contents
                .get_opt(content_name)
                .await
                .map_err(|e| StorageError::api("reading snapshot content", content_name, e))?
            {
                if content.spec.deletion_policy == "Delete"
                    && content.metadata.deletion_timestamp.is_none()
                {
                    match contents
                        .delete(content_name, &DeleteParams::default())
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => {
                            return Err(StorageError::api(
                                "deleting snapshot content",
                                content_name,
                                e,
                            ))
                        }
                    }
                }
            }
        }
        finalizer::remove(&api, &*vs, SNAPSHOT_BOUND_PROTECTION)
            .await
            .map_err(StorageError::from)?;
        return Ok(Action::await_change());
    }
    if vs
        .status
        .as_ref()
        .is_some_and(|s| s.ready_to_use == Some(true))
    {
        return Ok(Action::await_change());
    }

    // A pre-provisioned snapshot: bind to the content it names.
    if let Some(content_name) = vs.spec.source.volume_snapshot_content_name.as_deref() {
        let Some(content) = contents
            .get_opt(content_name)
            .await
            .map_err(|e| StorageError::api("reading snapshot content", content_name, e))?
        else {
            return snapshot_error(
                &ctx,
                &api,
                &vs,
                "SnapshotContentMissing",
                format!("VolumeSnapshotContent {content_name} is missing"),
            )
            .await;
        };
        let r = &content.spec.volume_snapshot_ref;
        if r.name.as_deref() != Some(&name) || r.namespace.as_deref() != Some(&ns) {
            return snapshot_error(
                &ctx,
                &api,
                &vs,
                "SnapshotBindFailed",
                format!("VolumeSnapshotContent {content_name} is bound to another snapshot"),
            )
            .await;
        }
        let vs = finalizer::add(&api, &*vs, SNAPSHOT_BOUND_PROTECTION)
            .await
            .map_err(StorageError::from)?;
        return mirror_content(&api, &vs, &content).await;
    }

    let Some(claim_name) = vs.spec.source.persistent_volume_claim_name.clone() else {
        return snapshot_error(
            &ctx,
            &api,
            &vs,
            "SnapshotCreationFailed",
            "exactly one of persistentVolumeClaimName and volumeSnapshotContentName must be set"
                .into(),
        )
        .await;
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc = claims
        .get_opt(&claim_name)
        .await
        .map_err(|e| StorageError::api("reading claim", &claim_name, e))?;
    let pv_name = pvc
        .as_ref()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        .and_then(|p| p.spec.as_ref()?.volume_name.clone());
    let Some(pv_name) = pv_name else {
        return snapshot_error(
            &ctx,
            &api,
            &vs,
            "SnapshotCreationFailed",
            format!(
                "the PVC {claim_name} is not yet bound to a PV, will not attempt to take a snapshot"
            ),
        )
        .await;
    };
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = volumes
        .get(&pv_name)
        .await
        .map_err(|e| StorageError::api("reading volume", &pv_name, e))?;
    let driver = pv
        .annotations()
        .get("pv.kubernetes.io/provisioned-by")
        .cloned()
        .unwrap_or_default();
    let class = class_for(
        &ctx.client,
        vs.spec.volume_snapshot_class_name.as_deref(),
        &driver,
    )
    .await
    .map_err(|e| StorageError::api("reading snapshot classes", "", e))?;
    let Some(class) = class else {
        let message = match vs.spec.volume_snapshot_class_name.as_deref() {
            Some(c) => format!("volumesnapshotclass.snapshot.storage.k8s.io \"{c}\" not found"),
            None => format!("cannot find default snapshot class for driver \"{driver}\""),
        };
        return snapshot_error(&ctx, &api, &vs, "GetSnapshotClassFailed", message).await;
    };
    if class.driver != PROVISIONER {
        // Another driver's snapshotter takes it.
        return Ok(Action::await_change());
    }
    if driver != PROVISIONER {
        return snapshot_error(
            &ctx,
            &api,
            &vs,
            "SnapshotCreationFailed",
            format!(
                "the PVC {claim_name} is not a volume of driver \"{PROVISIONER}\" of class \"{}\"",
                class.name_any()
            ),
        )
        .await;
    }
    let Some((source_file, capacity)) = disk_file(&pv) else {
        return snapshot_error(
            &ctx,
            &api,
            &vs,
            "SnapshotCreationFailed",
            format!("volume {pv_name} is not a local volume of this node"),
        )
        .await;
    };
    let vs = finalizer::add(&api, &*vs, SNAPSHOT_BOUND_PROTECTION)
        .await
        .map_err(StorageError::from)?;
    let uid = vs.metadata.uid.clone().unwrap_or_default();
    let content_name = format!("snapcontent-{uid}");
    let content = match contents
        .get_opt(&content_name)
        .await
        .map_err(|e| StorageError::api("reading snapshot content", &content_name, e))?
    {
        Some(c) => c,
        None => {
            let content = VolumeSnapshotContent {
                metadata: ObjectMeta {
                    name: Some(content_name.clone()),
                    finalizers: Some(vec![CONTENT_BOUND_PROTECTION.into()]),
                    ..Default::default()
                },
                spec: VolumeSnapshotContentSpec {
                    volume_snapshot_ref: ObjectReference {
                        api_version: Some("snapshot.storage.k8s.io/v1".into()),
                        kind: Some("VolumeSnapshot".into()),
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        uid: Some(uid.clone()),
                        resource_version: vs.metadata.resource_version.clone(),
                        ..Default::default()
                    },
                    deletion_policy: class.deletion_policy.clone(),
                    driver: PROVISIONER.into(),
                    volume_snapshot_class_name: Some(class.name_any()),
                    source: VolumeSnapshotContentSource {
                        volume_handle: Some(pv_name.clone()),
                        snapshot_handle: None,
                    },
                    source_volume_mode: pv.spec.as_ref().and_then(|s| s.volume_mode.clone()),
                },
                status: None,
            };
            ctx.recorder
                .publish(
                    &vs,
                    EventType::Normal,
                    "CreatingSnapshot",
                    &format!("Waiting for a snapshot {ns}/{name} to be created by the CSI driver."),
                )
                .await;
            match contents.create(&PostParams::default(), &content).await {
                Ok(c) => c,
                Err(kube::Error::Api(e)) if e.code == 409 => contents
                    .get(&content_name)
                    .await
                    .map_err(|e| StorageError::api("reading snapshot content", &content_name, e))?,
                Err(e) => {
                    return Err(StorageError::api(
                        "creating snapshot content",
                        &content_name,
                        e,
                    ))
                }
            }
        }
    };
    set_snapshot_status(
        &api,
        &vs,
        VolumeSnapshotStatus {
            bound_volume_snapshot_content_name: Some(content_name.clone()),
            ready_to_use: Some(false),
            ..vs.status.clone().unwrap_or_default()
        },
    )
    .await?;

    let content = if content
        .status
        .as_ref()
        .is_some_and(|s| s.ready_to_use == Some(true))
    {
        content
    } else {
        let started = std::time::Instant::now();
        let stored = take(&ctx.volumes, &content_name, &source_file, capacity).await;
        let bytes = match stored {
            Ok(b) => b,
            Err(e) => {
                return snapshot_error(
                    &ctx,
                    &api,
                    &vs,
                    "SnapshotCreationFailed",
                    format!("Failed to create snapshot: {e}"),
                )
                .await
            }
        };
        tracing::info!(
            snapshot = %format!("{ns}/{name}"),
            content = %content_name,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "volume snapshot taken"
        );
        let status = VolumeSnapshotContentStatus {
            snapshot_handle: Some(content_name.clone()),
            creation_time: Some(now().0.as_nanosecond() as i64),
            restore_size: Some(capacity as i64),
            ready_to_use: Some(true),
            error: None,
        };
        contents
            .patch_status(
                &content_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(|e| {
                StorageError::api("writing status of snapshot content", &content_name, e)
            })?
    };
    ctx.recorder
        .publish(
            &vs,
            EventType::Normal,
            "SnapshotCreated",
            &format!("Snapshot {ns}/{name} was successfully created by the CSI driver."),
        )
        .await;
    let action = mirror_content(&api, &vs, &content).await?;
    ctx.recorder
        .publish(
            &vs,
            EventType::Normal,
            "SnapshotReady",
            &format!("Snapshot {ns}/{name} is ready to use."),
        )
        .await;
    Ok(action)
}

/// Copies the status of a bound content into the VolumeSnapshot's.
async fn mirror_content(
    api: &Api<VolumeSnapshot>,
    vs: &VolumeSnapshot,
    content: &VolumeSnapshotContent,
) -> Result<Action> {
    let cs = content.status.clone().unwrap_or_default();
    let creation = cs
        .creation_time
        .and_then(|ns| jiff::Timestamp::from_nanosecond(ns as i128).ok().map(Time));
    let status = VolumeSnapshotStatus {
        bound_volume_snapshot_content_name: Some(content.name_any()),
        creation_time: creation,
        ready_to_use: Some(cs.ready_to_use == Some(true)),
        restore_size: cs
            .restore_size
            .map(|b| Quantity::from_int(b, kubevirt_api::quantity::QuantityFormat::BinarySI)),
        error: cs.error,
    };
    set_snapshot_status(api, vs, status).await?;
    Ok(Action::await_change())
}

/// Stores a point-in-time copy of `source` under the content's directory: written to a
/// temporary name and renamed, so a copy is either whole or absent. Returns the bytes copied
/// (0 for a reflink).
async fn take(
    volumes: &LocalVolumes,
    handle: &str,
    source: &Path,
    capacity: u64,
) -> std::result::Result<u64, String> {
    let dir = stored_dir(volumes, handle).ok_or_else(|| format!("bad handle {handle:?}"))?;
    let file_name = source
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or_else(|| format!("{} has no file name", source.display()))?;
    let source = source.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        if !source.exists() {
            // A claim no guest has used yet: its disk is all zeroes.
            crate::local::grow_sparse(&source, capacity)
                .map_err(|e| format!("{}: {e}", source.display()))?;
        }
        let target = kubevirt_importer::Target {
            disk: dir.join(&file_name),
            scratch_dir: dir.clone(),
            capacity: capacity.max(
                std::fs::metadata(&source)
                    .map(|m| m.len())
                    .map_err(|e| format!("{}: {e}", source.display()))?,
            ),
        };
        let stats = kubevirt_importer::clone_disk(&source, &target).map_err(|e| e.to_string())?;
        Ok(if stats.reflinked { 0 } else { stats.bytes })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Fills a new volume's disk file from a ready snapshot of this driver, for a claim whose
/// `dataSource` names it. Errors are worded for the claim's `ProvisioningFailed` event.
pub async fn restore_into(
    client: &Client,
    volumes: &LocalVolumes,
    ns: &str,
    snapshot_name: &str,
    target: &Path,
    capacity: u64,
) -> std::result::Result<(), String> {
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    let vs = snapshots
        .get_opt(snapshot_name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("snapshot {snapshot_name} not found"))?;
    let status = vs.status.clone().unwrap_or_default();
    let content_name = status
        .bound_volume_snapshot_content_name
        .filter(|_| status.ready_to_use == Some(true))
        .ok_or_else(|| format!("snapshot {snapshot_name} not bound or not ready to use"))?;
    let contents: Api<VolumeSnapshotContent> = Api::all(client.clone());
    let content = contents
        .get(&content_name)
        .await
        .map_err(|e| e.to_string())?;
    if content.spec.driver != PROVISIONER {
        return Err(format!(
            "snapshot {snapshot_name} was taken by driver \"{}\", not \"{PROVISIONER}\"",
            content.spec.driver
        ));
    }
    let handle = content
        .status
        .and_then(|s| s.snapshot_handle)
        .ok_or_else(|| format!("snapshot {snapshot_name} has no snapshot handle"))?;
    let stored = stored_file(volumes, &handle)
        .ok_or_else(|| format!("the stored copy of snapshot {snapshot_name} is missing"))?;
    let target = kubevirt_importer::Target {
        disk: target.to_path_buf(),
        scratch_dir: target.parent().map(Path::to_path_buf).unwrap_or_default(),
        capacity,
    };
    tokio::task::spawn_blocking(move || {
        kubevirt_importer::clone_disk(&stored, &target)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A content being deleted: its stored copy goes (policy `Delete`) or stays (`Retain`),
/// then its finalizer.
pub async fn reconcile_content(
    content: Arc<VolumeSnapshotContent>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let api: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    if content.metadata.deletion_timestamp.is_none() {
        // A content whose snapshot is gone for good is deleted as the policy says.
        let r = &content.spec.volume_snapshot_ref;
        if let (Some(ns), Some(name)) = (&r.namespace, &r.name) {
            let snapshots: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), ns);
            let gone = snapshots
                .get_opt(name)
                .await
                .map_err(|e| StorageError::api("reading snapshot", name, e))?
                .is_none_or(|vs| vs.metadata.uid != r.uid && r.uid.is_some());
            if gone
                && content.spec.deletion_policy == "Delete"
                && content.spec.driver == PROVISIONER
                && content.status.is_some()
            {
                api.delete(&content.name_any(), &DeleteParams::default())
                    .await
                    .map_err(|e| {
                        StorageError::api("deleting snapshot content", &content.name_any(), e)
                    })?;
            }
        }
        return Ok(Action::await_change());
    }
    if content.spec.driver == PROVISIONER && content.spec.deletion_policy == "Delete" {
        let handle = content
            .status
            .as_ref()
            .and_then(|s| s.snapshot_handle.clone())
            .unwrap_or_else(|| content.name_any());
        if let Some(dir) = stored_dir(&ctx.volumes, &handle) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(&dir, e)),
            }
        }
    }
    finalizer::remove(&api, &*content, CONTENT_BOUND_PROTECTION)
        .await
        .map_err(StorageError::from)?;
    Ok(Action::await_change())
}

/// Runs the snapshot and content controllers until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    if let Err(e) = ensure_default_class(&ctx.client).await {
        tracing::warn!(error = %e, "could not install the built-in snapshot class");
    }
    let client = ctx.client.clone();
    let shutdown = shutdown.shared();
    let snapshots = Controller::new(
        Api::<VolumeSnapshot>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<VolumeSnapshotContent>::all(client.clone()),
        watcher::Config::default(),
        |c: VolumeSnapshotContent| {
            let r = c.spec.volume_snapshot_ref;
            Some(ObjectRef::new(&r.name?).within(&r.namespace?))
        },
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(reconcile_snapshot, crate::error_policy, ctx.clone())
    .for_each(|_| async {});
    let contents = Controller::new(
        Api::<VolumeSnapshotContent>::all(client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile_content, crate::error_policy, ctx)
    .for_each(|_| async {});
    futures::join!(snapshots, contents);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_copies_stay_under_the_snapshots_dir() {
        let vols = LocalVolumes::new("/v");
        assert_eq!(
            stored_dir(&vols, "snapcontent-1").unwrap(),
            PathBuf::from("/v/.snapshots/snapcontent-1")
        );
        for bad in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(stored_dir(&vols, bad).is_none(), "{bad}");
        }
    }
}
