//! VM exports (`export.kubevirt.io/v1beta1` VirtualMachineExport), as virt-controller's export
//! controller and the virt-exportserver pod do upstream, for embedded mode:
//!
//! - The controller ([`run`]) resolves an export's source to claims: a claim; a VM's
//!   `persistentVolumeClaim` and `dataVolume` volumes; a VM snapshot's volume snapshots,
//!   restored into claims `<export>-<claim>` (`dataSource` VolumeSnapshot, owned by the
//!   export, so they go with it). The export is `Ready` once every claim is bound and filled
//!   and none is in use (a running VM keeps it `Pending`, with upstream's condition); it gets
//!   a token Secret `export-token-<export>` unless `tokenSecretRef` names one, and it is
//!   deleted when its TTL (default 2 h) runs out.
//! - Instead of an exporter pod and Service, this server process serves the export on its API
//!   port ([`router`], outside the API's authentication: the export token is the credential,
//!   header or query parameter `x-kubevirt-export-token`), at the paths of upstream's
//!   external links: `.../virtualmachineexports/{name}/volumes/{volume}/disk.img` (raw, with
//!   HEAD and a single Range) and `disk.img.gz` (gzip made on the fly), and `manifests/all`
//!   for a VM. The file served is always the disk of a volume of this server's volumes root,
//!   found through the export's claim and its PersistentVolume, never through the URL.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, Secret,
    TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use kubevirt_api::cdi::annotations as ann;
use kubevirt_api::cdi::DataVolume;
use kubevirt_api::export::{
    self as api, ExportCondition, SourceKind, VirtualMachineExport, VirtualMachineExportLink,
    VirtualMachineExportLinks, VirtualMachineExportManifest, VirtualMachineExportVolume,
    VirtualMachineExportVolumeFormat,
};
use kubevirt_api::snapshot::{VirtualMachineSnapshot, VirtualMachineSnapshotContent};
use kubevirt_api::v1::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase};
use kubevirt_reconcile::events::{EventRecorder, EventType};

use crate::local::LocalVolumes;
use crate::StorageError;

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// How often an export is looked at again while it waits or is served (a VM may start and
/// take its claims back).
const RECHECK: Duration = Duration::from_secs(3);

/// What the controller and the export routes share: the API client, where exports are
/// reached and the CA that verifies them, and the volumes they may serve.
pub struct Exports {
    volumes: LocalVolumes,
    client: OnceLock<Client>,
    external: OnceLock<(String, String)>,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exports")
            .field("volumes", &self.volumes)
            .field("base_url", &self.external.get().map(|e| &e.0))
            .finish()
    }
}

impl Exports {
    pub fn new(volumes: LocalVolumes) -> Self {
        Exports {
            volumes,
            client: OnceLock::new(),
            external: OnceLock::new(),
        }
    }

    /// Once the API server is up: its client, its URL as clients reach it
    /// (`https://host:port`) and its CA (PEM), put in the links.
    pub fn set_server(&self, client: Client, base_url: &str, ca_pem: &str) {
        let _ = self.client.set(client);
        let _ = self.external.set((
            base_url.trim_end_matches('/').to_string(),
            ca_pem.to_string(),
        ));
    }
}

/// The URL path of an export (upstream's external link path).
fn export_path(ns: &str, name: &str) -> String {
    format!(
        "/api/{}/namespaces/{ns}/virtualmachineexports/{name}",
        api::API_VERSION
    )
}

// ---------------------------------------------------------------------------------------
// The controller

pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
    pub exports: Arc<Exports>,
}

/// One claim of an export: the name in the links and the claim behind it.
#[derive(Debug, Clone, PartialEq)]
struct ExportVolume {
    name: String,
    claim: String,
}

/// The source as it stands now.
#[derive(Debug, Default)]
struct Resolved {
    volumes: Vec<ExportVolume>,
    /// Every claim is bound and holds its data.
    populated: bool,
    /// Why the export cannot be served yet (the Ready condition while Pending).
    waiting: Option<(String, String)>,
    /// A second condition about the source (PVCReady, VolumesCreated).
    source_condition: Option<ExportCondition>,
    /// A claim is in use: the export is paused.
    in_use: bool,
    /// The source has nothing to export (phase Skipped).
    no_content: bool,
    vm_name: Option<String>,
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> ExportCondition {
    ExportCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        last_probe_time: None,
        last_transition_time: Some(crate::now()),
        reason: Some(reason.into()),
        message: (!message.is_empty()).then(|| message.into()),
    }
}

/// Replaces the condition of the same type when it says something else (keeping its
/// transition time when it does not).
fn update_condition(conditions: &mut Vec<ExportCondition>, c: ExportCondition) {
    match conditions.iter_mut().find(|o| o.type_ == c.type_) {
        Some(o) if o.status != c.status || o.reason != c.reason || o.message != c.message => *o = c,
        Some(_) => {}
        None => conditions.push(c),
    }
}

fn claim_bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        && pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty())
}

/// Bound, and filled when CDI fills it (the node agent's rule for handing a claim to a VM).
fn claim_populated(pvc: &PersistentVolumeClaim) -> bool {
    let a = pvc.annotations();
    let filled_by_cdi = a.contains_key(ann::IMPORT_SOURCE) || a.contains_key(ann::UPLOAD_REQUEST);
    claim_bound(pvc)
        && (!filled_by_cdi || a.get(ann::POD_PHASE).map(String::as_str) == Some("Succeeded"))
}

/// Upstream's PVCReady condition: the most severe phase of the claims.
fn pvc_condition(pvcs: &[PersistentVolumeClaim]) -> ExportCondition {
    let phase = |p: &PersistentVolumeClaim| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".into())
    };
    if pvcs.iter().any(|p| phase(p) == "Lost") {
        condition(api::CONDITION_PVC, false, "Unknown", "")
    } else if pvcs.iter().any(|p| phase(p) == "Pending") {
        condition(api::CONDITION_PVC, false, "PVCPending", "")
    } else {
        condition(api::CONDITION_PVC, true, "PVCBound", "")
    }
}

async fn claim_in_use(client: &Client, ns: &str, claim: &str) -> Result<bool> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&Default::default())
        .await
        .map_err(|e| StorageError::api("listing pods", ns, e))?;
    Ok(list.items.iter().any(|p| {
        !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) && crate::claims::pod_claims(p).any(|c| c == claim)
    }))
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| StorageError::api("getting", name, e))
}

async fn resolve_pvc(ctx: &Context, e: &VirtualMachineExport, ns: &str) -> Result<Resolved> {
    let name = &e.spec.source.name;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut r = Resolved {
        volumes: vec![ExportVolume {
            name: name.clone(),
            claim: name.clone(),
        }],
        ..Default::default()
    };
    let Some(pvc) = get_opt(&pvcs, name).await? else {
        r.waiting = Some(("Initializing".into(), String::new()));
        r.source_condition = Some(condition(
            api::CONDITION_PVC,
            false,
            "PVCNotFound",
            &format!("PersistentVolumeClaim {ns}/{name} not found"),
        ));
        return Ok(r);
    };
    r.source_condition = Some(pvc_condition(std::slice::from_ref(&pvc)));
    r.populated = claim_populated(&pvc);
    if !r.populated {
        r.waiting = Some((
            "PVCPending".into(),
            format!("PersistentVolumeClaim {ns}/{name} is not populated"),
        ));
    } else if claim_in_use(&ctx.client, ns, name).await? {
        r.in_use = true;
        r.waiting = Some((
            "InUse".into(),
            format!("PersistentVolumeClaim {ns}/{name} is in use"),
        ));
    }
    Ok(r)
}

/// The claims of a VM's volumes, in the order of its volumes.
fn vm_claims(vm: &VirtualMachine) -> Vec<String> {
    vm.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
                .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()))
        })
        .collect()
}

async fn resolve_vm(ctx: &Context, e: &VirtualMachineExport, ns: &str) -> Result<Resolved> {
    let name = &e.spec.source.name;
    let mut r = Resolved {
        vm_name: Some(name.clone()),
        ..Default::default()
    };
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), ns);
    let Some(vm) = get_opt(&vms, name).await? else {
        r.waiting = Some((
            "VMNotFound".into(),
            format!("Virtual Machine {ns}/{name} not found"),
        ));
        return Ok(r);
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    r.populated = true;
    for claim in vm_claims(&vm) {
        match get_opt(&pvcs, &claim).await? {
            Some(pvc) => r.populated &= claim_populated(&pvc),
            None => r.populated = false,
        }
        r.volumes.push(ExportVolume {
            name: claim.clone(),
            claim,
        });
    }
    if r.volumes.is_empty() {
        r.no_content = true;
        r.waiting = Some((
            "VMNoVolumes".into(),
            format!("Virtual Machine {ns}/{name} has no volumes"),
        ));
    } else if !r.populated {
        r.waiting = Some((
            "VolumesNotPopulated".into(),
            format!("Not all volumes in the Virtual Machine {ns}/{name} are populated"),
        ));
    } else {
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), ns);
        if let Some(vmi) = get_opt(&vmis, name).await? {
            let phase = vmi.status.as_ref().and_then(|s| s.phase);
            if !matches!(
                phase,
                Some(VirtualMachineInstancePhase::Succeeded | VirtualMachineInstancePhase::Failed)
            ) {
                r.in_use = true;
                r.waiting = Some((
                    "InUse".into(),
                    format!("Virtual Machine {ns}/{name} is running"),
                ));
            }
        }
    }
    Ok(r)
}

/// The claim a snapshot export restores one volume into: the snapshot's claim spec (size,
/// modes, class) from the VolumeSnapshot, owned by the export.
fn restored_claim(
    e: &VirtualMachineExport,
    name: &str,
    spec: Option<&PersistentVolumeClaimSpec>,
    snapshot: &str,
) -> PersistentVolumeClaim {
    let spec = spec.cloned().unwrap_or_default();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: e.namespace(),
            owner_references: Some(vec![owner(e)]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: spec.access_modes.or(Some(vec!["ReadWriteOnce".into()])),
            resources: spec.resources,
            storage_class_name: spec.storage_class_name,
            volume_mode: spec.volume_mode,
            data_source: Some(TypedLocalObjectReference {
                api_group: Some(kubevirt_api::snapshot::VOLUME_SNAPSHOT_GROUP.into()),
                kind: "VolumeSnapshot".into(),
                name: snapshot.into(),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

async fn resolve_snapshot(ctx: &Context, e: &VirtualMachineExport, ns: &str) -> Result<Resolved> {
    let name = &e.spec.source.name;
    let export = e.name_any();
    let mut r = Resolved::default();
    let no_volumes = || {
        condition(
            api::CONDITION_VOLUMES_CREATED,
            false,
            "VMSnapshotNoVolumes",
            &format!("VirtualMachineSnapshot {ns}/{name} does not contain any volume snapshots"),
        )
    };
    let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let Some(snapshot) = get_opt(&snapshots, name).await? else {
        r.waiting = Some((
            "VMSnapshotNotFound".into(),
            format!("VirtualMachineSnapshot {ns}/{name} not found"),
        ));
        r.source_condition = Some(no_volumes());
        return Ok(r);
    };
    r.vm_name = Some(snapshot.spec.source.name.clone());
    let status = snapshot.status.clone().unwrap_or_default();
    let content_name = status
        .virtual_machine_snapshot_content_name
        .filter(|_| status.ready_to_use == Some(true));
    let Some(content_name) = content_name else {
        let msg = format!("VirtualMachineSnapshot {ns}/{name} is not ready to use");
        r.waiting = Some(("NotAllPVCsCreated".into(), msg.clone()));
        r.source_condition = Some(condition(
            api::CONDITION_VOLUMES_CREATED,
            false,
            "NotAllPVCsCreated",
            &msg,
        ));
        return Ok(r);
    };
    let contents: Api<VirtualMachineSnapshotContent> = Api::namespaced(ctx.client.clone(), ns);
    let backups = get_opt(&contents, &content_name)
        .await?
        .and_then(|c| c.spec.volume_backups)
        .unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    r.populated = true;
    for b in &backups {
        let Some(vs) = &b.volume_snapshot_name else {
            continue;
        };
        let source_claim = b
            .persistent_volume_claim
            .metadata
            .as_ref()
            .and_then(|m| m.name.clone())
            .unwrap_or_else(|| b.volume_name.clone());
        let claim = api::restored_claim_name(&export, &source_claim);
        let pvc = match get_opt(&pvcs, &claim).await? {
            Some(p) => p,
            None => {
                let new = restored_claim(e, &claim, b.persistent_volume_claim.spec.as_ref(), vs);
                match pvcs.create(&PostParams::default(), &new).await {
                    Ok(p) => p,
                    Err(kube::Error::Api(s)) if s.code == 409 => new,
                    Err(err) => return Err(StorageError::api("creating claim", &claim, err)),
                }
            }
        };
        r.populated &= claim_bound(&pvc);
        r.volumes.push(ExportVolume {
            name: source_claim,
            claim,
        });
    }
    if r.volumes.is_empty() {
        r.no_content = true;
        r.source_condition = Some(no_volumes());
        r.waiting = Some(("Initializing".into(), String::new()));
    } else if r.populated {
        r.source_condition = Some(condition(
            api::CONDITION_VOLUMES_CREATED,
            true,
            "AllPVCsReady",
            "",
        ));
    } else {
        r.source_condition = Some(condition(
            api::CONDITION_VOLUMES_CREATED,
            false,
            "NotAllPVCsReady",
            "Not all PVCs have been successfully restored",
        ));
        r.waiting = Some(("Initializing".into(), String::new()));
    }
    Ok(r)
}

fn owner(e: &VirtualMachineExport) -> OwnerReference {
    OwnerReference {
        api_version: api::API_VERSION.into(),
        kind: "VirtualMachineExport".into(),
        name: e.name_any(),
        uid: e.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A 20-character token of letters and digits, as upstream generates them.
fn generate_token() -> String {
    use rand::Rng;
    const ALPHANUMS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char)
        .collect()
}

/// Creates the export's own token Secret (owned by it, so it goes with it).
async fn ensure_token_secret(ctx: &Context, e: &VirtualMachineExport, name: &str) -> Result<()> {
    let ns = e.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    if get_opt(&secrets, name).await?.is_some() {
        return Ok(());
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.clone()),
            owner_references: Some(vec![owner(e)]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            api::TOKEN_KEY.to_string(),
            ByteString(generate_token().into_bytes()),
        )])),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            ctx.recorder
                .publish(
                    e,
                    EventType::Normal,
                    "SecretCreated",
                    &format!("Created default secret {ns}/{name}"),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(err) => Err(StorageError::api("creating secret", name, err)),
    }
}

fn links(
    e: &VirtualMachineExport,
    volumes: &[ExportVolume],
    base_url: &str,
    cert: &str,
    vm: bool,
) -> VirtualMachineExportLinks {
    let ns = e.namespace().unwrap_or_default();
    let base = format!("{base_url}{}", export_path(&ns, &e.name_any()));
    let link = VirtualMachineExportLink {
        cert: cert.to_string(),
        volumes: Some(
            volumes
                .iter()
                .map(|v| VirtualMachineExportVolume {
                    name: v.name.clone(),
                    formats: Some(vec![
                        VirtualMachineExportVolumeFormat {
                            format: api::FORMAT_RAW.into(),
                            url: format!("{base}/volumes/{}/disk.img", v.name),
                        },
                        VirtualMachineExportVolumeFormat {
                            format: api::FORMAT_GZIP.into(),
                            url: format!("{base}/volumes/{}/disk.img.gz", v.name),
                        },
                    ]),
                })
                .collect(),
        ),
        manifests: vm.then(|| {
            vec![VirtualMachineExportManifest {
                type_: "all".into(),
                url: format!("{base}/manifests/all"),
            }]
        }),
    };
    VirtualMachineExportLinks {
        internal: Some(link.clone()),
        external: Some(link),
    }
}

async fn reconcile(e: Arc<VirtualMachineExport>, ctx: Arc<Context>) -> Result<Action> {
    if e.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = e.namespace().unwrap_or_default();
    let name = e.name_any();
    let exports: Api<VirtualMachineExport> = Api::namespaced(ctx.client.clone(), &ns);

    // The TTL counts from creation; past it the export goes (its secret and claims with it).
    let created = e
        .meta()
        .creation_timestamp
        .as_ref()
        .map_or_else(jiff::Timestamp::now, |t| t.0);
    let ttl = jiff::SignedDuration::try_from(e.ttl()).unwrap_or(jiff::SignedDuration::MAX);
    let expires = created.checked_add(ttl).unwrap_or(jiff::Timestamp::MAX);
    let left = expires.duration_since(jiff::Timestamp::now());
    if left <= jiff::SignedDuration::ZERO {
        tracing::info!(namespace = %ns, export = %name, "export expired; deleting it");
        match exports.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(StorageError::api("deleting export", &name, err)),
        }
        return Ok(Action::await_change());
    }

    let Some(kind) = e.source_kind() else {
        return Ok(Action::await_change());
    };
    let r = match kind {
        SourceKind::PersistentVolumeClaim => resolve_pvc(&ctx, &e, &ns).await?,
        SourceKind::VirtualMachine => resolve_vm(&ctx, &e, &ns).await?,
        SourceKind::VirtualMachineSnapshot => resolve_snapshot(&ctx, &e, &ns).await?,
    };

    let old = e.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.ttl_expiration_time = Some(Time(expires));
    status.virtual_machine_name = r.vm_name.clone();
    let available = r.waiting.is_none() && r.populated && !r.in_use && !r.no_content;
    match &e.spec.token_secret_ref {
        Some(secret) => status.token_secret_ref = Some(secret.clone()),
        None if available => {
            let secret = status
                .token_secret_ref
                .clone()
                .unwrap_or_else(|| api::default_token_secret_name(&name));
            ensure_token_secret(&ctx, &e, &secret).await?;
            status.token_secret_ref = Some(secret);
        }
        None => {}
    }
    let mut conditions = status.conditions.take().unwrap_or_default();
    if let Some(c) = r.source_condition.clone() {
        update_condition(&mut conditions, c);
    }
    let served = ctx.exports.external.get();
    if let (true, Some((base_url, cert))) = (available, served) {
        update_condition(
            &mut conditions,
            condition(api::CONDITION_READY, true, "PodReady", ""),
        );
        status.phase = Some(api::PHASE_READY.into());
        status.links = Some(links(
            &e,
            &r.volumes,
            base_url,
            cert,
            kind == SourceKind::VirtualMachine,
        ));
    } else {
        let (reason, message) = r
            .waiting
            .clone()
            .unwrap_or_else(|| ("Initializing".into(), String::new()));
        update_condition(
            &mut conditions,
            condition(api::CONDITION_READY, false, &reason, &message),
        );
        status.phase = Some(
            if r.no_content {
                api::PHASE_SKIPPED
            } else {
                api::PHASE_PENDING
            }
            .into(),
        );
        status.links = Some(VirtualMachineExportLinks::default());
        if old.phase.as_deref() == Some(api::PHASE_READY) && r.in_use {
            ctx.recorder
                .publish(&*e, EventType::Warning, "ExportPaused", &message)
                .await;
        }
    }
    status.conditions = Some(conditions);
    if status != old {
        exports
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(|err| StorageError::api("updating export status", &name, err))?;
    }
    let left = Duration::from_secs(left.as_secs().max(0) as u64 + 1);
    Ok(Action::requeue(left.min(RECHECK)))
}

/// Runs the export controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::new(
        Api::<VirtualMachineExport>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, crate::error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

// ---------------------------------------------------------------------------------------
// Serving

/// The export routes (they authenticate with the export token alone).
pub fn router(exports: Arc<Exports>) -> Router {
    Router::new()
        .route(
            "/api/export.kubevirt.io/v1beta1/namespaces/{ns}/virtualmachineexports/{name}/volumes/{volume}/{file}",
            get(volume),
        )
        .route(
            "/api/export.kubevirt.io/v1beta1/namespaces/{ns}/virtualmachineexports/{name}/manifests/all",
            get(manifests),
        )
        .with_state(exports)
}

fn text(code: StatusCode, message: impl Into<String>) -> Response {
    (code, message.into()).into_response()
}

/// Equal without an early exit on the first differing byte.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The export, once the request's token is the export's; any failure is a bare 401 (as
/// upstream's export server answers), so a caller without the token learns nothing.
async fn authorized(
    exports: &Exports,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> std::result::Result<(Client, VirtualMachineExport), Response> {
    let Some(client) = exports.client.get().cloned() else {
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is starting",
        ));
    };
    let unauthorized = || StatusCode::UNAUTHORIZED.into_response();
    let export = Api::<VirtualMachineExport>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(unauthorized)?;
    let secret_name = export
        .status
        .as_ref()
        .and_then(|s| s.token_secret_ref.clone())
        .ok_or_else(unauthorized)?;
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&secret_name)
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(unauthorized)?;
    let want = secret
        .data
        .as_ref()
        .and_then(|d| d.get(api::TOKEN_KEY))
        .map(|b| b.0.clone())
        .ok_or_else(unauthorized)?;
    let offered = [
        query.get(api::TOKEN_HEADER).map(|s| s.as_bytes().to_vec()),
        headers
            .get(api::TOKEN_HEADER)
            .map(|v| v.as_bytes().to_vec()),
    ];
    if !offered.iter().flatten().any(|t| same_token(t, &want)) {
        return Err(unauthorized());
    }
    if export.phase() != Some(api::PHASE_READY) {
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("VirtualMachineExport {ns}/{name} is not ready"),
        ));
    }
    Ok((client, export))
}

/// The disk file behind a volume of a Ready export: its claim (named by the export's own
/// rules), the claim's PersistentVolume, that volume's disk, which must lie in this server's
/// volumes root.
async fn volume_file(
    exports: &Exports,
    client: &Client,
    export: &VirtualMachineExport,
    volume: &str,
) -> std::result::Result<PathBuf, Response> {
    let ns = export.namespace().unwrap_or_default();
    let listed = export
        .status
        .as_ref()
        .and_then(|s| s.links.as_ref())
        .and_then(|l| l.external.as_ref())
        .and_then(|l| l.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.name == volume));
    if !listed {
        return Err(text(StatusCode::NOT_FOUND, format!("no volume {volume}")));
    }
    let claim = match export.source_kind() {
        Some(SourceKind::VirtualMachineSnapshot) => {
            api::restored_claim_name(&export.name_any(), volume)
        }
        _ => volume.to_string(),
    };
    let internal = |e: String| text(StatusCode::INTERNAL_SERVER_ERROR, e);
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get(&claim)
        .await
        .map_err(|e| internal(e.to_string()))?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .ok_or_else(|| internal(format!("claim {claim} is not bound")))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .map_err(|e| internal(e.to_string()))?;
    let (dir, _) = crate::local::volume_path(&pv)
        .ok_or_else(|| internal(format!("volume {pv_name} is not a local volume")))?;
    // A volume someone made by hand could name any directory: serve only our own.
    let root =
        std::fs::canonicalize(exports.volumes.root()).map_err(|e| internal(e.to_string()))?;
    let inside = std::fs::canonicalize(&dir).is_ok_and(|d| d.parent() == Some(root.as_path()));
    if !inside {
        return Err(internal(format!(
            "volume {pv_name} is not a volume of this server"
        )));
    }
    crate::local::ensure_disk(&pv).map_err(|e| internal(e.to_string()))
}

/// Opens the disk read-only, refusing a symbolic link in its place.
fn open_disk(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// `bytes=A-B`, `bytes=A-`, `bytes=-N` (one range) within `len`.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.checked_sub(n.min(len))?, len.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, len.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(len.checked_sub(1)?),
        ),
    };
    (start <= end && end < len).then_some((start, end))
}

async fn volume(
    State(exports): State<Arc<Exports>>,
    Path((ns, name, volume, file)): Path<(String, String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let (client, export) = match authorized(&exports, &ns, &name, &headers, &query).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if file != "disk.img" && file != "disk.img.gz" {
        return text(StatusCode::NOT_FOUND, format!("no {file}"));
    }
    let path = match volume_file(&exports, &client, &export, &volume).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let f = match open_disk(&path) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if file == "disk.img.gz" {
        return gzip_response(f, method == Method::HEAD);
    }
    raw_response(f, method == Method::HEAD, headers.get(header::RANGE))
}

fn raw_response(f: std::fs::File, head: bool, range: Option<&header::HeaderValue>) -> Response {
    use std::io::{Seek, SeekFrom};
    let len = match f.metadata() {
        Ok(m) => m.len(),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes");
    let (start, count) = match range.and_then(|r| r.to_str().ok()) {
        Some(r) => match parse_range(r, len) {
            Some((start, end)) => {
                builder = builder
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
                (start, end - start + 1)
            }
            None => {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .body(Body::empty())
                    .unwrap_or_default();
            }
        },
        None => (0, len),
    };
    builder = builder.header(header::CONTENT_LENGTH, count);
    if head {
        return builder.body(Body::empty()).unwrap_or_default();
    }
    let mut f = f;
    if let Err(e) = f.seek(SeekFrom::Start(start)) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(f), count);
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20);
    builder.body(Body::from_stream(stream)).unwrap_or_default()
}

/// Sends what the encoder writes to the response, chunk by chunk.
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(buf.to_vec()))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The file gzipped on the fly in a blocking thread, never held whole in memory.
fn gzip_response(mut f: std::fs::File, head: bool) -> Response {
    let builder = Response::builder().header(header::CONTENT_TYPE, "application/gzip");
    if head {
        return builder.body(Body::empty()).unwrap_or_default();
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(8);
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(1 << 20, ChannelWriter(tx.clone()));
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        let mut buf = vec![0u8; 1 << 20];
        let result = (|| -> std::io::Result<()> {
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                std::io::Write::write_all(&mut gz, &buf[..n])?;
            }
            let mut out = gz.finish()?;
            std::io::Write::flush(&mut out)
        })();
        if let Err(e) = result {
            // The client is gone (BrokenPipe) or the disk failed: end the body with an error.
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    builder.body(Body::from_stream(stream)).unwrap_or_default()
}

/// `manifests/all` of a VM export: the VM and its DataVolumes as YAML (JSON with
/// `Accept: application/json`), without status and server-set metadata.
async fn manifests(
    State(exports): State<Arc<Exports>>,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (client, export) = match authorized(&exports, &ns, &name, &headers, &query).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if export.source_kind() != Some(SourceKind::VirtualMachine) {
        return text(StatusCode::NOT_FOUND, "only a VM export has manifests");
    }
    let internal = |e: kube::Error| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let vm = match Api::<VirtualMachine>::namespaced(client.clone(), &ns)
        .get(&export.spec.source.name)
        .await
    {
        Ok(vm) => vm,
        Err(e) => return internal(e),
    };
    let mut docs = vec![clean(serde_json::to_value(&vm).unwrap_or_default())];
    let dvs: Api<DataVolume> = Api::namespaced(client, &ns);
    let owned: Vec<String> = vm
        .spec
        .data_volume_templates
        .iter()
        .flatten()
        .filter_map(|t| t.metadata.as_ref().and_then(|m| m.name.clone()))
        .collect();
    for claim in vm_claims(&vm) {
        if owned.contains(&claim) {
            continue;
        }
        if let Ok(Some(dv)) = dvs.get_opt(&claim).await {
            docs.push(clean(serde_json::to_value(&dv).unwrap_or_default()));
        }
    }
    let json_wanted = headers
        .get(header::ACCEPT)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if json_wanted {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
        return (
            [(header::CONTENT_TYPE, "application/json")],
            list.to_string(),
        )
            .into_response();
    }
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&d).unwrap_or_default());
    }
    ([(header::CONTENT_TYPE, "application/yaml")], out).into_response()
}

/// An object as a manifest to create elsewhere: no status, no server-set metadata.
fn clean(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "ownerReferences",
            "finalizers",
            "namespace",
        ] {
            m.remove(k);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=0-5000", 1000), Some((0, 999)));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("bytes=5-1", 1000), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("bytes=0-1", 0), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
        assert!(!same_token(b"", b""));
        let t = generate_token();
        assert_eq!(t.len(), 20);
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn conditions_keep_their_time_when_unchanged() {
        let mut cs = vec![];
        let mut first = condition("Ready", false, "InUse", "x");
        first.last_transition_time = None;
        update_condition(&mut cs, first.clone());
        update_condition(&mut cs, condition("Ready", false, "InUse", "x"));
        assert_eq!(cs, vec![first]);
        update_condition(&mut cs, condition("Ready", true, "PodReady", ""));
        assert_eq!(cs[0].reason.as_deref(), Some("PodReady"));
        assert_eq!(cs.len(), 1);
    }
}
