//! CDI's DataVolume controller: for each DataVolume a claim of the same name (owned by it),
//! then the data: an import (http(s), registry), a clone of another claim, a blank disk, or
//! an upload. Status, phases, progress, conditions, restart count and events as CDI words
//! them (`Import into data scheduled`, `Successfully imported into PVC data`, ...).
//!
//! Here the transfer runs in-process (one task per DataVolume, with back-off between
//! attempts) into the built-in class's volumes; on a cluster the same steps would run in
//! an importer Pod mounting the claim (see README.md). A claim holds its data once it is
//! annotated `cdi.kubevirt.io/storage.pod.phase: Succeeded`, as CDI marks it; a server
//! restarted mid-import starts the task again and the download resumes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use kubevirt_api::cdi::{
    annotations as ann, DataVolume, DataVolumeCondition, DataVolumePhase, DataVolumeStatus,
    SourceKind,
};
use kubevirt_importer as importer;
use kubevirt_reconcile::api_call;
use kubevirt_reconcile::events::{EventRecorder, EventType};

use crate::local::disk_file;
use crate::{StorageConfig, StorageError};

type Result<T> = std::result::Result<T, StorageError>;

/// The first wait after a failed attempt; it doubles up to [`MAX_BACKOFF`] (a crash-looping
/// importer pod's rhythm).
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Progress is written at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const POD_RUNNING: &str = "Pod is running";

/// What the DataVolume controller shares.
pub struct Context {
    pub client: Client,
    pub config: StorageConfig,
    pub recorder: EventRecorder,
    /// Transfers running now, by DataVolume UID.
    jobs: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl Context {
    pub fn new(client: Client, config: StorageConfig) -> Self {
        Context {
            recorder: EventRecorder::new(client.clone(), "datavolume-controller", None),
            client,
            config,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::AbortHandle>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sets one condition, keeping its transition time unless its status changes.
fn set_condition(
    conds: &mut Vec<DataVolumeCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let t = crate::now();
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(t.clone());
            }
            c.status = status.into();
            c.reason = Some(reason.into()).filter(|r: &String| !r.is_empty());
            c.message = Some(message.into()).filter(|m: &String| !m.is_empty());
            c.last_heartbeat_time = Some(t);
        }
        None => conds.push(DataVolumeCondition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time: Some(t.clone()),
            last_heartbeat_time: Some(t),
            reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
            message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        }),
    }
}

/// Writes the status when it changed (heartbeat times alone do not count).
async fn write_status(client: &Client, dv: &DataVolume, status: DataVolumeStatus) -> Result<()> {
    let strip = |s: &DataVolumeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
            c.last_transition_time = None;
        }
        s
    };
    if dv.status.as_ref().map(strip) == Some(strip(&status)) {
        return Ok(());
    }
    let api: Api<DataVolume> = Api::namespaced(client.clone(), &dv.namespace().unwrap_or_default());
    api.patch_status(
        &dv.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map_err(api_call("writing status of", dv))?;
    Ok(())
}

fn status_of(dv: &DataVolume) -> DataVolumeStatus {
    let mut s = dv.status.clone().unwrap_or_default();
    s.claim_name = Some(dv.claim_name().to_string());
    s
}

/// The phase a transfer is in for this source, scheduled or running.
fn phases(kind: &SourceKind<'_>) -> (DataVolumePhase, DataVolumePhase, &'static str) {
    match kind {
        SourceKind::Pvc(_) => (
            DataVolumePhase::CloneScheduled,
            DataVolumePhase::CloneInProgress,
            "Clone",
        ),
        SourceKind::Upload => (
            DataVolumePhase::UploadScheduled,
            DataVolumePhase::UploadReady,
            "Upload",
        ),
        _ => (
            DataVolumePhase::ImportScheduled,
            DataVolumePhase::ImportInProgress,
            "Import",
        ),
    }
}

fn owned_by(pvc: &PersistentVolumeClaim, dv: &DataVolume) -> bool {
    pvc.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == dv.metadata.uid.as_ref())
}

/// The claim CDI creates for a DataVolume: same name, owned by it, annotated with its source.
/// In embedded mode the claim is placed on this node at once: the transfer runs here, and a
/// `WaitForFirstConsumer` class would otherwise wait for a VM that waits for the data (CDI
/// without honorWaitForFirstConsumer binds such claims at once too).
fn claim_for(dv: &DataVolume, source_size: Option<String>, node: &str) -> PersistentVolumeClaim {
    let mut spec = dv.spec.claim_spec();
    if spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .is_none()
    {
        if let Some(size) = source_size {
            let resources = spec.resources.get_or_insert_with(Default::default);
            resources
                .requests
                .get_or_insert_with(Default::default)
                .insert(
                    "storage".into(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity(size),
                );
        }
    }
    let mut annotations = BTreeMap::new();
    let (source, endpoint) = match dv.spec.source_kind() {
        SourceKind::Http(h) => ("http", Some(h.url.clone())),
        SourceKind::Registry(r) => ("registry", r.url.clone()),
        SourceKind::Pvc(p) => ("pvc", Some(format!("{}/{}", p.namespace, p.name))),
        SourceKind::Upload => ("upload", None),
        SourceKind::Blank => ("blank", None),
        _ => ("none", None),
    };
    annotations.insert(ann::IMPORT_SOURCE.to_string(), source.to_string());
    if let Some(e) = endpoint {
        let key = if source == "pvc" {
            ann::CLONE_REQUEST
        } else {
            ann::IMPORT_ENDPOINT
        };
        annotations.insert(key.to_string(), e);
    }
    if source == "upload" {
        annotations.insert(ann::UPLOAD_REQUEST.to_string(), String::new());
    }
    annotations.insert(crate::claims::SELECTED_NODE.to_string(), node.to_string());
    annotations.insert(
        ann::CONTENT_TYPE.to_string(),
        dv.spec
            .content_type
            .clone()
            .unwrap_or_else(|| "kubevirt".into()),
    );
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(dv.claim_name().to_string()),
            namespace: dv.namespace(),
            labels: Some(BTreeMap::from([
                ("app".to_string(), "containerized-data-importer".to_string()),
                (
                    "app.kubernetes.io/component".to_string(),
                    "storage".to_string(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "cdi-controller".to_string(),
                ),
            ])),
            annotations: Some(annotations),
            owner_references: dv.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The source claim of a clone, with its namespace defaulted to the DataVolume's.
fn clone_source(dv: &DataVolume) -> Option<(String, String)> {
    match dv.spec.source_kind() {
        SourceKind::Pvc(p) => {
            let ns = if p.namespace.is_empty() {
                dv.namespace().unwrap_or_default()
            } else {
                p.namespace.clone()
            };
            Some((ns, p.name.clone()))
        }
        _ => None,
    }
}

/// Reconciles one DataVolume.
pub async fn reconcile(dv: Arc<DataVolume>, ctx: Arc<Context>) -> Result<Action> {
    let uid = dv.metadata.uid.clone().unwrap_or_default();
    if dv.metadata.deletion_timestamp.is_some() {
        if let Some(job) = ctx.jobs().remove(&uid) {
            job.abort();
        }
        return Ok(Action::await_change());
    }
    let ns = dv.namespace().unwrap_or_default();
    let name = dv.claim_name().to_string();
    let kind = dv.spec.source_kind();
    // A claim filled by someone else (a VM restore): the DataVolume only adopts it.
    let pre_populated = dv.annotations().contains_key(ann::PRE_POPULATED);
    let mut status = status_of(&dv);
    let mut conds = status.conditions.take().unwrap_or_default();
    let unsupported = match &kind {
        SourceKind::Unsupported(field) => Some(*field),
        SourceKind::Missing => Some("spec.source"),
        _ => None,
    };
    if let Some(field) = unsupported.filter(|_| !pre_populated) {
        let message = format!("{field}: not supported by kubevirt-rs (http, registry, pvc, upload and blank sources are)");
        set_condition(
            &mut conds,
            "Running",
            "False",
            "UnsupportedSource",
            &message,
        );
        set_condition(&mut conds, "Ready", "False", "", "");
        status.phase = Some(DataVolumePhase::Failed);
        status.conditions = Some(conds);
        if dv.phase() != Some(DataVolumePhase::Failed) {
            ctx.recorder
                .publish(&*dv, EventType::Warning, "UnsupportedSource", &message)
                .await;
        }
        write_status(&ctx.client, &dv, status).await?;
        return Ok(Action::await_change());
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc = claims
        .get_opt(&name)
        .await
        .map_err(|e| StorageError::api("reading claim", &name, e))?;
    let Some(pvc) = pvc else {
        let source_size = match clone_source(&dv) {
            Some((sns, sname)) => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &sns);
                api.get_opt(&sname)
                    .await
                    .map_err(|e| StorageError::api("reading claim", &sname, e))?
                    .and_then(|p| p.status?.capacity?.get("storage").map(|q| q.0.clone()))
            }
            None => None,
        };
        match claims
            .create(
                &PostParams::default(),
                &claim_for(&dv, source_size, &ctx.config.node),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(StorageError::api("creating claim", &name, e)),
        }
        status.phase = Some(DataVolumePhase::Pending);
        status.progress = Some("N/A".into());
        set_condition(&mut conds, "Bound", "Unknown", "", "No PVC found");
        set_condition(&mut conds, "Ready", "False", "", "");
        set_condition(&mut conds, "Running", "False", "", "");
        status.conditions = Some(conds);
        write_status(&ctx.client, &dv, status).await?;
        return Ok(Action::await_change());
    };
    if !owned_by(&pvc, &dv) && !pre_populated {
        let message =
            format!("Resource \"{name}\" already exists and is not managed by DataVolume");
        ctx.recorder
            .publish(&*dv, EventType::Warning, "ErrResourceExists", &message)
            .await;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if !bound {
        status.phase = Some(DataVolumePhase::Pending);
        status.progress.get_or_insert_with(|| "N/A".into());
        set_condition(
            &mut conds,
            "Bound",
            "False",
            "Pending",
            &format!("PVC {name} Pending"),
        );
        set_condition(&mut conds, "Ready", "False", "", "");
        status.conditions = Some(conds);
        if dv.phase().is_none() {
            ctx.recorder
                .publish(
                    &*dv,
                    EventType::Normal,
                    "Pending",
                    &format!("PVC {name} Pending"),
                )
                .await;
        }
        write_status(&ctx.client, &dv, status).await?;
        return Ok(Action::await_change());
    }
    set_condition(
        &mut conds,
        "Bound",
        "True",
        "Bound",
        &format!("PVC {name} Bound"),
    );
    let populated = pre_populated
        || pvc.annotations().get(ann::POD_PHASE).map(String::as_str) == Some("Succeeded");
    if populated {
        if dv.phase() != Some(DataVolumePhase::Succeeded) && !pre_populated {
            let (_, _, verb) = phases(&kind);
            let (reason, message) = match (&kind, clone_source(&dv)) {
                (SourceKind::Pvc(_), Some((sns, sname))) => (
                    "CloneSucceeded",
                    format!("Successfully cloned from {sns}/{sname} into {ns}/{name}"),
                ),
                _ if verb == "Upload" => (
                    "UploadSucceeded",
                    format!("Successfully uploaded into {name}"),
                ),
                _ => (
                    "ImportSucceeded",
                    format!("Successfully imported into PVC {name}"),
                ),
            };
            ctx.recorder
                .publish(&*dv, EventType::Normal, reason, &message)
                .await;
        }
        status.phase = Some(DataVolumePhase::Succeeded);
        status.progress = Some("100.0%".into());
        set_condition(&mut conds, "Ready", "True", "", "");
        let done = conds
            .iter()
            .any(|c| c.type_ == "Running" && c.reason.as_deref() == Some("Completed"));
        if !done {
            set_condition(&mut conds, "Running", "False", "Completed", "");
        }
        status.conditions = Some(conds);
        write_status(&ctx.client, &dv, status).await?;
        return Ok(Action::await_change());
    }
    if status.phase == Some(DataVolumePhase::Failed) {
        // A permanent failure stays until the DataVolume is recreated, as CDI's fatal errors.
        return Ok(Action::await_change());
    }
    let (scheduled, in_progress, verb) = phases(&kind);
    if matches!(kind, SourceKind::Upload) {
        // The upload endpoint fills the claim (`crate::upload`); the DataVolume waits for it.
        if dv.phase() != Some(in_progress) {
            ctx.recorder
                .publish(
                    &*dv,
                    EventType::Normal,
                    "UploadReady",
                    &format!("Upload into {name} ready"),
                )
                .await;
        }
        status.phase = Some(in_progress);
        status.progress.get_or_insert_with(|| "N/A".into());
        set_condition(&mut conds, "Running", "True", POD_RUNNING, "");
        set_condition(&mut conds, "Ready", "False", "", "");
        status.conditions = Some(conds);
        write_status(&ctx.client, &dv, status).await?;
        return Ok(Action::await_change());
    }
    if ctx.jobs().contains_key(&uid) {
        return Ok(Action::await_change());
    }
    if !matches!(dv.phase(), Some(p) if p == in_progress) {
        ctx.recorder
            .publish(
                &*dv,
                EventType::Normal,
                scheduled.as_str(),
                &format!("{verb} into {name} scheduled"),
            )
            .await;
        status.phase = Some(scheduled);
        status.progress.get_or_insert_with(|| "N/A".into());
        set_condition(&mut conds, "Ready", "False", "", "");
        status.conditions = Some(conds);
        write_status(&ctx.client, &dv, status).await?;
    }
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let volume_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    let pv = volumes
        .get(&volume_name)
        .await
        .map_err(|e| StorageError::api("reading volume", &volume_name, e))?;
    let handle = tokio::spawn(transfer(ctx.clone(), dv.clone(), pvc, pv));
    ctx.jobs().insert(uid, handle.abort_handle());
    Ok(Action::await_change())
}

/// Where a claim's disk is on this node and how much fits.
/// Resolves what a DataVolume's http source needs from Secrets and ConfigMaps.
async fn http_source(
    client: &Client,
    ns: &str,
    h: &kubevirt_api::cdi::DataVolumeSourceHttp,
) -> std::result::Result<importer::HttpSource, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let key = |s: &Secret, k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
    };
    let basic_auth = match &h.secret_ref {
        Some(name) if !name.is_empty() => {
            let s = secrets
                .get(name)
                .await
                .map_err(|e| format!("reading secret {name}: {e}"))?;
            Some((
                key(&s, "accessKeyId").unwrap_or_default(),
                key(&s, "secretKey").unwrap_or_default(),
            ))
        }
        _ => None,
    };
    let ca_pem = match &h.cert_config_map {
        Some(name) if !name.is_empty() => {
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let cm = cms
                .get(name)
                .await
                .map_err(|e| format!("reading configmap {name}: {e}"))?;
            Some(
                cm.data
                    .unwrap_or_default()
                    .into_values()
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes(),
            )
        }
        _ => None,
    };
    let mut extra_headers = Vec::new();
    let mut parse_header = |line: &str| {
        if let Some((k, v)) = line.split_once(':') {
            extra_headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    };
    for line in h.extra_headers.iter().flatten() {
        parse_header(line);
    }
    for name in h.secret_extra_headers.iter().flatten() {
        let s = secrets
            .get(name)
            .await
            .map_err(|e| format!("reading secret {name}: {e}"))?;
        for v in s.data.unwrap_or_default().values() {
            parse_header(&String::from_utf8_lossy(&v.0));
        }
    }
    Ok(importer::HttpSource {
        url: h.url.clone(),
        basic_auth,
        ca_pem,
        checksum: h.checksum.clone().filter(|c| !c.is_empty()),
        extra_headers,
    })
}

/// One attempt at filling the claim.
async fn attempt(
    ctx: &Context,
    dv: &DataVolume,
    pv: &PersistentVolume,
    progress: tokio::sync::watch::Sender<Option<String>>,
) -> std::result::Result<(), importer::ImportError> {
    // What is missing here (a Secret, the source claim) may appear later: retry.
    let io_err = |message: String| importer::ImportError {
        kind: importer::ImportErrorKind::Io,
        message,
        retryable: true,
    };
    let (disk, capacity) = disk_file(pv)
        .ok_or_else(|| io_err("the claim's volume is not a local volume of this node".into()))?;
    let target = importer::Target {
        scratch_dir: disk.parent().map(PathBuf::from).unwrap_or_default(),
        disk,
        capacity,
    };
    let report = move |p: importer::Progress| {
        if let Some(pct) = p.percent() {
            progress.send_replace(Some(pct));
        }
    };
    let ns = dv.namespace().unwrap_or_default();
    match dv.spec.source_kind() {
        SourceKind::Http(h) => {
            let src = http_source(&ctx.client, &ns, h).await.map_err(io_err)?;
            importer::import_http(&src, &target, report)
                .await
                .map(|_| ())
        }
        SourceKind::Registry(r) => {
            let url = r.url.clone().unwrap_or_default();
            let image = url
                .strip_prefix("docker://")
                .ok_or_else(|| io_err(format!("Illegal registry source URL scheme {url}")))?;
            let cache = kubevirt_diskprep::ContainerDiskCache::new(
                ctx.config.cache_dir.clone(),
                ctx.config.registry.clone(),
            );
            let volume = dv.name_any();
            let pulled = cache
                .pull_disk(
                    &volume,
                    image,
                    None,
                    kubevirt_diskprep::PullPolicy::default_for(image),
                    &|_| {},
                )
                .await
                .map_err(|e| io_err(e.to_string()))?;
            importer::import_file(&pulled.path, &target, report)
                .await
                .map(|_| ())
        }
        SourceKind::Pvc(_) => {
            let (sns, sname) = clone_source(dv).unwrap_or_default();
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &sns);
            let src = claims
                .get(&sname)
                .await
                .map_err(|e| io_err(format!("reading source claim {sns}/{sname}: {e}")))?;
            let volume: Option<String> = src
                .spec
                .and_then(|s| s.volume_name)
                .filter(|v| !v.is_empty());
            let Some(volume) = volume else {
                return Err(io_err(format!("source claim {sns}/{sname} is not bound")));
            };
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let spv = pvs
                .get(&volume)
                .await
                .map_err(|e| io_err(format!("reading volume {volume}: {e}")))?;
            let (src_disk, _) = disk_file(&spv).ok_or_else(|| {
                io_err(format!(
                    "source claim {sns}/{sname} is not a local volume of this node"
                ))
            })?;
            let stats = importer::clone_disk(&src_disk, &target)?;
            tracing::info!(
                bytes = stats.bytes,
                reflinked = stats.reflinked,
                "clone done"
            );
            Ok(())
        }
        SourceKind::Blank => importer::create_blank(&target).map(|_| ()),
        SourceKind::Upload | SourceKind::Unsupported(_) | SourceKind::Missing => Ok(()),
    }
}

/// Fills the claim, retrying failures that may pass with back-off, and records the end on
/// the claim and the DataVolume.
async fn transfer(
    ctx: Arc<Context>,
    dv: Arc<DataVolume>,
    pvc: PersistentVolumeClaim,
    pv: PersistentVolume,
) {
    let uid = dv.metadata.uid.clone().unwrap_or_default();
    let name = dv.claim_name().to_string();
    let kind = dv.spec.source_kind();
    let (_, in_progress, verb) = phases(&kind);
    let mut status = status_of(&dv);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut conds = status.conditions.take().unwrap_or_default();
        set_condition(&mut conds, "Running", "True", POD_RUNNING, "");
        status.phase = Some(in_progress);
        status.conditions = Some(conds);
        ctx.recorder
            .publish(
                &*dv,
                EventType::Normal,
                in_progress.as_str(),
                &format!("{verb} into {name} in progress"),
            )
            .await;
        if let Err(e) = write_status(&ctx.client, &dv, status.clone()).await {
            tracing::debug!(error = %e, "datavolume status");
        }
        let (tx, mut rx) = tokio::sync::watch::channel(None::<String>);
        let writer = {
            let (client, dv, status) = (ctx.client.clone(), dv.clone(), status.clone());
            tokio::spawn(async move {
                let mut last = None;
                while rx.changed().await.is_ok() {
                    let pct = rx.borrow_and_update().clone();
                    if pct != last {
                        let mut s = status.clone();
                        s.progress = pct.clone();
                        let _ = write_status(&client, &dv, s).await;
                        last = pct;
                    }
                    tokio::time::sleep(PROGRESS_EVERY).await;
                }
            })
        };
        let result = attempt(&ctx, &dv, &pv, tx).await;
        let _ = writer.await;
        match result {
            Ok(()) => {
                let claims: Api<PersistentVolumeClaim> =
                    Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
                let marked = claims
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"annotations": {
                            ann::POD_PHASE: "Succeeded",
                            ann::POPULATED_FOR: name,
                        }}})),
                    )
                    .await;
                match marked {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, claim = %name, "recording the finished import")
                    }
                }
            }
            Err(e) => {
                let count = status.restart_count.unwrap_or(0) + 1;
                status.restart_count = Some(count);
                let mut conds = status.conditions.take().unwrap_or_default();
                let reason = match e.kind {
                    importer::ImportErrorKind::Checksum => "ChecksumError",
                    _ => "Error",
                };
                // CDI's controller words a full volume this way (simplifyKnownMessage).
                let message = match e.kind {
                    importer::ImportErrorKind::NoSpace => {
                        "DataVolume too small to contain image".to_string()
                    }
                    _ => e.message.clone(),
                };
                set_condition(&mut conds, "Running", "False", reason, &message);
                status.conditions = Some(conds);
                if !e.retryable {
                    status.phase = Some(DataVolumePhase::Failed);
                }
                tracing::warn!(datavolume = %name, error = %e.message, retry = e.retryable, "transfer failed");
                ctx.recorder
                    .publish(
                        &*dv,
                        EventType::Warning,
                        &format!("{verb}Failed"),
                        &format!(
                            "Failed to {} into PVC {name}: {}",
                            verb.to_lowercase(),
                            e.message
                        ),
                    )
                    .await;
                let claims: Api<PersistentVolumeClaim> =
                    Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
                let _ = claims
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"annotations": {ann::POD_RESTARTS: count.to_string()}}})),
                    )
                    .await;
                let _ = write_status(&ctx.client, &dv, status.clone()).await;
                if !e.retryable {
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    ctx.jobs().remove(&uid);
    // The claim's annotation wakes the controller, which writes Succeeded.
}

/// Runs the DataVolume controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    Controller::new(
        Api::<DataVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<PersistentVolumeClaim>::all(client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, crate::error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

/// The disk file an upload writes into, for the claim's volume (`None`: not a local volume).
pub fn upload_target(pv: &PersistentVolume) -> Option<importer::Target> {
    let (disk, capacity) = disk_file(pv)?;
    Some(importer::Target {
        scratch_dir: disk.parent().map(PathBuf::from).unwrap_or_default(),
        disk,
        capacity,
    })
}
