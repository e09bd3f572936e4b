//! The node agent as upstream's virt-handler: for each VMI on this node it hands the VMI to
//! its launcher once the VMI is Scheduled (`POST /v1/sync`, with the Secrets its cloud-init
//! volumes name: the launcher never talks to the API), writes the VMI's status from what the
//! launcher pushes (through [`crate::vmi_status`], the one mapping), records the events, and
//! stops the guest with its grace period when the VMI is deleted. It is woken by launcher
//! changes as they happen; a slow resync is the safety net.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use kubevirt_api::v1::well_known::{
    NODE_NAME_LABEL, SOFTWARE_EMULATION_ANNOTATION, STOP_GRACE_ANNOTATION,
};
use kubevirt_api::v1::{
    VirtualMachineInstance, VirtualMachineInstancePhase as Phase, VolumeSource,
};
use kubevirt_hypervisor::AcceleratorKind;
use kubevirt_launcher::{LauncherStatus, Stage, SyncRequest};
use kubevirt_reconcile::events::{EventRecorder, EventType};
use kubevirt_reconcile::{api_call, api_call_on, status::write_status};
use tokio::sync::mpsc;

use crate::error::{HandlerError, Result};
use crate::launchers::Launchers;
use crate::vmi_status::vmi_status;

pub const COMPONENT: &str = "virt-handler";

/// How often a VMI is looked at without news from its launcher.
const RESYNC: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    pub node: String,
    /// The node's address: where migrations to this node's pods are sent.
    pub node_ip: String,
    pub launchers: Arc<Launchers>,
    pub recorder: EventRecorder,
    /// The grace period each stopping VMI's launcher was asked to stop with.
    stopping: Mutex<HashMap<String, u64>>,
    /// VMIs handed to their launcher.
    synced: Mutex<HashSet<String>>,
    /// Migration target pods (by UID) handed their incoming VMI.
    targets_synced: Mutex<HashSet<String>>,
    /// Where this node's VMIs can migrate to, for their `LiveMigratable` condition.
    pub migration_scope: kubevirt_api::migration::Scope,
    /// How migrations reach other nodes (cluster mode); none: only this node's pods.
    pub peers: Option<crate::peer::Peers>,
    /// The source side's stream forwarders of each outgoing migration to another node
    /// (by migration UID), dropped when it ends.
    pub(crate) forwarders: Mutex<HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
    /// Access credentials last applied through each VMI's guest agent.
    credentials: crate::access_credentials::Applied,
}

impl Context {
    pub fn new(client: Client, node: String, node_ip: String, launchers: Arc<Launchers>) -> Self {
        Context {
            recorder: EventRecorder::new(client.clone(), COMPONENT, Some(node.clone())),
            client,
            node,
            node_ip,
            launchers,
            stopping: Mutex::new(HashMap::new()),
            synced: Mutex::new(HashSet::new()),
            targets_synced: Mutex::new(HashSet::new()),
            migration_scope: kubevirt_api::migration::Scope::SameNode,
            peers: None,
            forwarders: Mutex::new(HashMap::new()),
            credentials: Default::default(),
        }
    }

    /// Another node's agents are reachable: VMIs may migrate off this node, which needs
    /// storage every node reaches (`Scope::Cluster`).
    pub fn with_peers(mut self, peers: Option<crate::peer::Peers>) -> Self {
        if peers.is_some() {
            self.migration_scope = kubevirt_api::migration::Scope::Cluster;
        }
        self.peers = peers;
        self
    }

    /// Stops the stream forwarders of migration `uid`.
    pub(crate) fn drop_forwarders(&self, uid: &str) {
        for task in lock(&self.forwarders).remove(uid).unwrap_or_default() {
            task.abort();
        }
    }

    /// Records that the target pod `pod_uid` is being synced; false if it already was.
    pub(crate) fn mark_target_synced(&self, pod_uid: &str) -> bool {
        lock(&self.targets_synced).insert(pod_uid.to_string())
    }

    pub(crate) fn unmark_target_synced(&self, pod_uid: &str) {
        lock(&self.targets_synced).remove(pod_uid);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The grace period to stop a VMI with: a `stop --grace-period` override (never longer),
/// else `terminationGracePeriodSeconds`, else the API's default.
pub fn grace_seconds(vmi: &VirtualMachineInstance) -> u64 {
    let spec = vmi
        .spec
        .termination_grace_period_seconds
        .unwrap_or(kubevirt_api::defaults::DEFAULT_GRACE_PERIOD_SECONDS)
        .max(0) as u64;
    let over = vmi
        .annotations()
        .get(STOP_GRACE_ANNOTATION)
        .and_then(|v| v.parse::<u64>().ok());
    over.map_or(spec, |o| o.min(spec))
}

/// Names of the Secrets the VMI's cloud-init volumes refer to, and those of the SSH keys
/// its cloud-init metadata carries (`accessCredentials` through noCloud or configDrive).
pub fn cloud_init_secret_names(vmi: &VirtualMachineInstance) -> Vec<String> {
    use kubevirt_api::access_credentials::{cloud_init_key_secrets, CloudInitSeed};
    let mut names = Vec::new();
    for seed in [CloudInitSeed::NoCloud, CloudInitSeed::ConfigDrive] {
        for name in cloud_init_key_secrets(&vmi.spec, seed) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for v in vmi.spec.volumes.iter().flatten() {
        let source = match v.source() {
            Some(VolumeSource::CloudInitNoCloud(c))
            | Some(VolumeSource::CloudInitConfigDrive(c)) => c,
            _ => continue,
        };
        for r in [&source.secret_ref, &source.network_data_secret_ref]
            .into_iter()
            .flatten()
        {
            if !names.contains(&r.name) {
                names.push(r.name.clone());
            }
        }
    }
    names
}

pub(crate) async fn cloud_init_secrets(
    client: &Client,
    vmi: &VirtualMachineInstance,
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    use base64::Engine;
    let namespace = vmi.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut out = BTreeMap::new();
    for name in cloud_init_secret_names(vmi) {
        let secret = api.get(&name).await.map_err(api_call_on(
            "reading the cloud-init",
            "Secret",
            &namespace,
            &name,
        ))?;
        let data = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v.0)))
            .collect();
        out.insert(name, data);
    }
    Ok(out)
}

async fn publish(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    type_: EventType,
    reason: &str,
    msg: &str,
) {
    ctx.recorder.publish(vmi, type_, reason, msg).await;
}

/// Events for a phase change, as virt-handler records them.
async fn phase_events(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    from: Phase,
    to: Phase,
    status: &LauncherStatus,
) {
    if from == to {
        return;
    }
    match to {
        Phase::Running => {
            publish(
                ctx,
                vmi,
                EventType::Normal,
                "Started",
                "VirtualMachineInstance started.",
            )
            .await
        }
        Phase::Succeeded => {
            publish(
                ctx,
                vmi,
                EventType::Normal,
                "Stopped",
                "The VirtualMachineInstance was shut down.",
            )
            .await
        }
        Phase::Failed => match &status.failure {
            Some(f) => publish(ctx, vmi, EventType::Warning, "SyncFailed", &f.message).await,
            None => {
                publish(
                    ctx,
                    vmi,
                    EventType::Warning,
                    "Stopped",
                    "The VirtualMachineInstance crashed.",
                )
                .await
            }
        },
        _ => {}
    }
}

/// Notes once, on the VMI, that its guest runs under software emulation (an annotation and
/// an event: upstream has no condition for it, and clients read conditions).
async fn note_emulation(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    status: &LauncherStatus,
) -> Result<()> {
    let Some(accel) = status
        .accelerator
        .as_ref()
        .filter(|a| a.kind == AcceleratorKind::Tcg)
    else {
        return Ok(());
    };
    if status.stage != Stage::Started
        || vmi
            .annotations()
            .contains_key(SOFTWARE_EMULATION_ANNOTATION)
    {
        return Ok(());
    }
    let vmis: Api<VirtualMachineInstance> =
        Api::namespaced(ctx.client.clone(), &vmi.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"annotations": {SOFTWARE_EMULATION_ANNOTATION: accel.reason}}});
    vmis.patch(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(api_call("annotating", vmi))?;
    publish(
        ctx,
        vmi,
        EventType::Normal,
        "SoftwareEmulation",
        &format!(
            "The guest runs under software emulation (TCG): {}",
            accel.reason
        ),
    )
    .await;
    Ok(())
}

#[tracing::instrument(skip(vmi, ctx), fields(namespace = vmi.metadata.namespace.as_deref().unwrap_or(""), name = %vmi.name_any()))]
pub async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Context>) -> Result<Action> {
    let on_node =
        vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(ctx.node.as_str());
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    if !on_node {
        return Ok(Action::await_change());
    }
    let deleting = vmi.metadata.deletion_timestamp.is_some();
    let migration = match deleting {
        false => crate::migration::sync(&ctx, &vmi).await?,
        true => None,
    };
    // The VMI as it will be once the migration step is written: it decides which launcher
    // runs the guest now.
    let stored = vmi.clone();
    let vmi = match migration {
        Some(state) => {
            let mut next = (*vmi).clone();
            next.status
                .get_or_insert_with(Default::default)
                .migration_state = Some(state);
            Arc::new(next)
        }
        None => vmi,
    };
    let Some(launcher) = ctx.launchers.guest(&vmi) else {
        // Its pod's launcher is not up yet; the pod runtime wakes us when it is.
        return Ok(Action::requeue(RESYNC));
    };
    let Some(status) = launcher.observed().status else {
        return Ok(Action::requeue(RESYNC));
    };
    if status.migrated_out {
        // The guest has left this launcher and the target has not reported it running yet
        // (the migration step above moves the VMI over once it has): its exit is no
        // shutdown. The target's push wakes us.
        return Ok(Action::requeue(RESYNC));
    }
    let live = status.stage != Stage::Exited;

    if deleting && live && !vmi.is_final() {
        let grace = grace_seconds(&vmi);
        let sent = lock(&ctx.stopping).get(&uid).copied();
        if sent.is_none_or(|s| grace < s) {
            launcher
                .client
                .stop(Some(grace))
                .await
                .map_err(|e| HandlerError::Launcher {
                    vmi: vmi.name_any(),
                    reason: e.to_string(),
                })?;
            lock(&ctx.stopping).insert(uid.clone(), grace);
            tracing::info!(grace, "stopping VirtualMachineInstance");
            publish(
                &ctx,
                &vmi,
                EventType::Normal,
                "ShuttingDown",
                "Signaled Graceful Shutdown",
            )
            .await;
        }
    }
    if !deleting
        && vmi.phase() == Phase::Scheduled
        && status.stage == Stage::WaitingForSync
        && !lock(&ctx.synced).contains(&uid)
    {
        let request = match cloud_init_secrets(&ctx.client, &vmi).await {
            Ok(secrets) => SyncRequest {
                vmi: serde_json::to_value(&*vmi).expect("VMIs serialise"),
                secrets,
                incoming: None,
            },
            Err(e) => {
                publish(&ctx, &vmi, EventType::Warning, "SyncFailed", &e.to_string()).await;
                return Err(e);
            }
        };
        launcher
            .client
            .sync(&request)
            .await
            .map_err(|e| HandlerError::Launcher {
                vmi: vmi.name_any(),
                reason: e.to_string(),
            })?;
        lock(&ctx.synced).insert(uid.clone());
        publish(
            &ctx,
            &vmi,
            EventType::Normal,
            "Created",
            "VirtualMachineInstance defined.",
        )
        .await;
    }

    let mut desired = vmi_status(&vmi, &status, Timestamp::now());
    let mut next_look = RESYNC;
    if !deleting && desired.phase == Some(Phase::Running) && status.stage == Stage::Started {
        if let Some(poll) = crate::access_credentials::sync(
            &ctx.client,
            &ctx.recorder,
            &ctx.credentials,
            crate::access_credentials::Target {
                vmi: &vmi,
                launcher: &launcher.client,
                // A paused guest's agent cannot answer.
                agent_connected: status.agent_connected
                    && status.domain == Some(kubevirt_hypervisor::DomainState::Running),
            },
            &mut desired,
        )
        .await
        {
            next_look = poll;
        }
        let volumes = crate::hotplug::sync(&ctx.client, &vmi, &launcher.client, &status).await;
        desired.volume_status = Some(volumes).filter(|v| !v.is_empty());
        let mut with_volumes = (*vmi).clone();
        with_volumes.status = Some(desired.clone());
        let migratable =
            kubevirt_api::migration::live_migratable(&with_volumes, ctx.migration_scope);
        desired.set_condition(
            migratable,
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        desired.migration_method = Some("LiveMigration".into());
    }
    let vmis: Api<VirtualMachineInstance> =
        Api::namespaced(ctx.client.clone(), &vmi.namespace().unwrap_or_default());
    if write_status(&vmis, &*stored, stored.status.as_ref(), &desired).await? {
        let to = desired.phase.unwrap_or_default();
        phase_events(&ctx, &vmi, vmi.phase(), to, &status).await;
    }
    note_emulation(&ctx, &vmi, &status).await?;
    if vmi.is_final() || !live {
        lock(&ctx.stopping).remove(&uid);
        lock(&ctx.synced).remove(&uid);
        ctx.credentials.forget(&uid);
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(next_look))
}

/// A VMI migrating to this node from another (labelled with this node as the migration
/// target): the target's steps of the migration, until the VMI is this node's.
#[tracing::instrument(skip(vmi, ctx), fields(namespace = vmi.metadata.namespace.as_deref().unwrap_or(""), name = %vmi.name_any()))]
pub async fn reconcile_target(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let on_node =
        vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(ctx.node.as_str());
    if on_node || vmi.metadata.deletion_timestamp.is_some() {
        // This node's VMIs are [`reconcile`]'s.
        return Ok(Action::await_change());
    }
    let Some(state) = crate::migration::sync(&ctx, &vmi).await? else {
        return Ok(Action::requeue(RESYNC));
    };
    let mut desired = vmi.status.clone().unwrap_or_default();
    desired.migration_state = Some(state);
    let vmis: Api<VirtualMachineInstance> =
        Api::namespaced(ctx.client.clone(), &vmi.namespace().unwrap_or_default());
    write_status(&vmis, &*vmi, vmi.status.as_ref(), &desired).await?;
    Ok(Action::await_change())
}

pub fn error_policy(
    vmi: Arc<VirtualMachineInstance>,
    error: &HandlerError,
    _ctx: Arc<Context>,
) -> Action {
    kubevirt_reconcile::log_failure(
        "syncing VirtualMachineInstance",
        &kubevirt_reconcile::object_ref(&*vmi),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// Runs the agent for the VMIs labelled for this node (and those migrating to it) until
/// `shutdown` resolves; `changes` wakes it when a launcher reports something.
pub async fn run(
    ctx: Arc<Context>,
    mut changes: mpsc::UnboundedReceiver<ObjectRef<VirtualMachineInstance>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Each launcher report wakes both the VMI's own and its migration target's controller.
    let (to_own, own_changes) = mpsc::unbounded_channel();
    let (to_target, target_changes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(r) = changes.recv().await {
            let _ = to_target.send(r.clone());
            if to_own.send(r).is_err() {
                break;
            }
        }
    });
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let targets = Controller::new(
        Api::<VirtualMachineInstance>::all(ctx.client.clone()),
        watcher::Config::default().labels(&format!(
            "{}={}",
            kubevirt_api::v1::well_known::MIGRATION_TARGET_NODE_NAME_LABEL,
            ctx.node
        )),
    )
    .reconcile_on(crate::pods::tokio_stream_of(target_changes))
    .graceful_shutdown_on(shutdown.clone())
    .run(reconcile_target, error_policy, ctx.clone())
    .for_each(|_| async {});
    let own = run_own(ctx, own_changes, shutdown);
    futures::join!(targets, own);
}

async fn run_own(
    ctx: Arc<Context>,
    changes: mpsc::UnboundedReceiver<ObjectRef<VirtualMachineInstance>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let vmis: Api<VirtualMachineInstance> = Api::all(ctx.client.clone());
    let wc = watcher::Config::default().labels(&format!("{NODE_NAME_LABEL}={}", ctx.node));
    let controller = Controller::new(vmis, wc);
    let store = controller.store();
    // A claim that changes (grows, gets bound or filled) wakes the VMIs using it.
    let claim_users = move |pvc: PersistentVolumeClaim| {
        let ns = pvc.namespace();
        let name = pvc.name_any();
        store
            .state()
            .into_iter()
            .filter(|vmi| {
                vmi.namespace() == ns
                    && vmi
                        .spec
                        .volumes
                        .iter()
                        .flatten()
                        .any(|v| v.claim_name() == Some(name.as_str()))
            })
            .map(|vmi| ObjectRef::from_obj(&*vmi))
            .collect::<Vec<_>>()
    };
    controller
        .watches(
            Api::<PersistentVolumeClaim>::all(ctx.client.clone()),
            watcher::Config::default(),
            claim_users,
        )
        .reconcile_on(crate::pods::tokio_stream_of(changes))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_period_sources() {
        let mut vmi = VirtualMachineInstance::test("v");
        assert_eq!(grace_seconds(&vmi), 30);
        vmi.spec.termination_grace_period_seconds = Some(10);
        assert_eq!(grace_seconds(&vmi), 10);
        let set = |vmi: &mut VirtualMachineInstance, v: &str| {
            vmi.metadata.annotations =
                Some([(STOP_GRACE_ANNOTATION.to_string(), v.to_string())].into());
        };
        set(&mut vmi, "0");
        assert_eq!(grace_seconds(&vmi), 0);
        set(&mut vmi, "100");
        assert_eq!(grace_seconds(&vmi), 10, "an override never lengthens");
        set(&mut vmi, "junk");
        assert_eq!(grace_seconds(&vmi), 10);
    }
}
