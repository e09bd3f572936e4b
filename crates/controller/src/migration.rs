//! The VirtualMachineInstanceMigration controller (upstream's migration controller in
//! virt-controller), the same code in embedded and cluster mode.
//!
//! Phases: Pending (admitted; waits while the VMI is not Running or too many migrations
//! run) -> Scheduling (the target launcher pod is created: the VMI's launcher pod plus
//! `kubevirt.io/migrationJobUID` and `addedNodeSelector`) -> Scheduled (the target pod
//! runs) -> PreparingTarget (handed off: the VMI's `status.migrationState` names the
//! migration, source and target) -> TargetReady (the node agent reports the target
//! listening: `targetNodeAddress`) -> Running (`startTimestamp`) -> Succeeded (`completed`)
//! or Failed (`failed`, the target pod down or gone, the VMI gone or shut down, a cancel).
//! A cancel is a delete: the finalizer holds the migration while the node agent aborts a
//! handed-off migration (`abortRequested`); the source keeps running. Finished migrations
//! beyond the last five of a VMI are deleted, as upstream's garbage collection does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use kubevirt_api::install::KubeVirt;
use kubevirt_api::launcher_pod::{launcher_pod, LauncherPodSettings};
use kubevirt_api::migration::{
    self as rules, MigrationConfiguration, ABORT_REQUESTED_CONDITION, MIGRATION_FINALIZER,
    MIGRATION_JOB_LABEL, MIGRATION_JOB_NAME_ANNOTATION, VMI_NAME_LABEL,
};
use kubevirt_api::v1::well_known::{CREATED_BY_LABEL, MIGRATION_TARGET_NODE_NAME_LABEL};
use kubevirt_api::v1::{
    vmi_condition, ConditionStatus, MigrationPhaseTransitionTimestamp, MigrationState,
    VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationCondition, VirtualMachineInstanceMigrationPhase as Phase,
    VirtualMachineInstanceMigrationStatus, VirtualMachineInstancePhase,
};
use kubevirt_reconcile::events::{EventRecorder, EventType};
use kubevirt_reconcile::{api_call, api_call_on, finalizer, status::write_status};

use crate::operation::now;
use crate::vmi_status::{current_pod, pod_down, pod_ready};
use crate::{ControllerError, Result};

/// Name of the controller in events.
pub const COMPONENT: &str = "migration-controller";

/// Finished migrations kept per VMI (upstream's default garbage-collection buffer).
const FINISHED_KEPT: usize = 5;

/// How long a migration's target pod may stay Pending (upstream's defaults). How many
/// migrations run at once is the cluster's configuration ([`cluster_migrations`]).
#[derive(Clone, Debug)]
pub struct Limits {
    /// A target pod the scheduler cannot place is given up after this long (a migration's
    /// `kubevirt.io/migrationUnschedulablePodTimeoutSeconds` annotation overrides it).
    pub unschedulable_pod_timeout: Duration,
    /// A target pod still Pending for any reason is given up after this long
    /// (`kubevirt.io/migrationPendingPodTimeoutSeconds`).
    pub pending_pod_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            unschedulable_pod_timeout: Duration::from_secs(5 * 60),
            pending_pod_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// Upstream's annotations overriding the pending target pod timeouts, in seconds.
const UNSCHEDULABLE_TIMEOUT_ANNOTATION: &str =
    "kubevirt.io/migrationUnschedulablePodTimeoutSeconds";
const PENDING_TIMEOUT_ANNOTATION: &str = "kubevirt.io/migrationPendingPodTimeoutSeconds";

/// A timeout from the migration's annotation (whole seconds), else the default; an
/// annotation that is not a number is ignored, as upstream does.
fn timeout_of(
    m: &VirtualMachineInstanceMigration,
    annotation: &str,
    default: Duration,
) -> Duration {
    m.annotations()
        .get(annotation)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_secs)
}

fn pending_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// Upstream's pending target pod timeouts: a target pod that stays Pending (unschedulable
/// for 5 minutes, or for any reason for 15) is deleted, which then fails the migration
/// ("target pod was removed"). Otherwise, when to look again.
async fn pending_pod_timeout(
    ctx: &Context,
    m: &VirtualMachineInstanceMigration,
    vmi: &VirtualMachineInstance,
    pod: &Pod,
) -> Result<Option<Duration>> {
    let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    let Some(created) = pod.metadata.creation_timestamp.as_ref() else {
        return Ok(None);
    };
    if !pending || pod.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let waited = Duration::try_from(jiff::Timestamp::now().duration_since(created.0))
        .unwrap_or(Duration::ZERO);
    let pod_key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let mut expiry = None;
    if pending_unschedulable(pod) {
        ctx.recorder
            .publish(
                m,
                EventType::Warning,
                "migrationTargetPodUnschedulable",
                &format!(
                    "Migration target pod for VMI [{}/{}] is currently unschedulable.",
                    vmi.namespace().unwrap_or_default(),
                    vmi.name_any()
                ),
            )
            .await;
        let limit = timeout_of(
            m,
            UNSCHEDULABLE_TIMEOUT_ANNOTATION,
            ctx.limits.unschedulable_pod_timeout,
        );
        if waited >= limit {
            let reason = format!("unschedulable pod {pod_key} timeout period exceeded");
            delete_timed_out(ctx, m, pod, &reason).await?;
            return Ok(None);
        }
        expiry = Some(limit - waited);
    }
    let limit = timeout_of(
        m,
        PENDING_TIMEOUT_ANNOTATION,
        ctx.limits.pending_pod_timeout,
    );
    if waited >= limit {
        let reason = format!("pending pod {pod_key} timeout period exceeded");
        delete_timed_out(ctx, m, pod, &reason).await?;
        return Ok(None);
    }
    let rest = limit - waited;
    Ok(Some(expiry.map_or(rest, |e| e.min(rest))))
}

async fn delete_timed_out(
    ctx: &Context,
    m: &VirtualMachineInstanceMigration,
    pod: &Pod,
    reason: &str,
) -> Result<()> {
    info!(pod = %pod.name_any(), reason, "deleting the pending migration target pod");
    delete_pod(ctx, m, pod).await?;
    ctx.recorder
        .publish(m, EventType::Normal, "SuccessfulDelete", reason)
        .await;
    Ok(())
}

pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
    pub pod_settings: LauncherPodSettings,
    pub limits: Limits,
}

/// How soon a migration waiting for a slot or for its VMI looks again.
const WAIT: Duration = Duration::from_secs(2);

fn phase_of(m: &VirtualMachineInstanceMigration) -> Phase {
    m.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

/// The target launcher pod of a migration: the VMI's launcher pod, labelled with the
/// migration's UID and named after it, restricted further by `addedNodeSelector`.
pub fn target_pod(
    vmi: &VirtualMachineInstance,
    m: &VirtualMachineInstanceMigration,
    settings: &LauncherPodSettings,
) -> Pod {
    let mut pod = launcher_pod(vmi, settings);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(
            MIGRATION_JOB_LABEL.into(),
            m.metadata.uid.clone().unwrap_or_default(),
        );
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MIGRATION_JOB_NAME_ANNOTATION.into(), m.name_any());
    if let (Some(added), Some(spec)) = (&m.spec.added_node_selector, pod.spec.as_mut()) {
        let sel = spec.node_selector.get_or_insert_with(BTreeMap::new);
        for (k, v) in added {
            sel.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if let (true, Some(spec)) = (settings.migrate_to_other_nodes, pod.spec.as_mut()) {
        // Not where another pod of this VMI (the source) runs.
        let term = PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        CREATED_BY_LABEL.to_string(),
                        vmi.metadata.uid.clone().unwrap_or_default(),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            topology_key: "kubernetes.io/hostname".into(),
            ..Default::default()
        };
        spec.affinity
            .get_or_insert_with(Default::default)
            .pod_anti_affinity
            .get_or_insert_with(Default::default)
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(term);
    }
    pod
}

fn set_abort_requested(st: &mut VirtualMachineInstanceMigrationStatus) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    if !conds.iter().any(|c| c.type_ == ABORT_REQUESTED_CONDITION) {
        conds.push(VirtualMachineInstanceMigrationCondition {
            type_: ABORT_REQUESTED_CONDITION.into(),
            status: ConditionStatus::True,
            last_probe_time: Some(now()),
            ..Default::default()
        });
    }
}

/// Writes the VMI's migration state (the hand-off to the node agent, an abort request, or a
/// failure noted by the controller). A hand-off also clears an evacuation mark: the
/// migration carries it out.
async fn write_vmi_migration_state(
    client: &Client,
    vmi: &VirtualMachineInstance,
    state: MigrationState,
) -> Result<()> {
    let api: Api<VirtualMachineInstance> =
        Api::namespaced(client.clone(), &vmi.namespace().unwrap_or_default());
    let mut status = vmi.status.clone().unwrap_or_default();
    status.evacuation_node_name = None;
    status.migration_state = Some(state);
    write_status(&api, vmi, vmi.status.as_ref(), &status).await?;
    Ok(())
}

/// Sets (or with None removes) the VMI's `kubevirt.io/migrationTargetNodeName` label.
async fn label_target_node(
    client: &Client,
    vmi: &VirtualMachineInstance,
    node: Option<&str>,
) -> Result<()> {
    let api: Api<VirtualMachineInstance> =
        Api::namespaced(client.clone(), &vmi.namespace().unwrap_or_default());
    let patch =
        serde_json::json!({"metadata": {"labels": {MIGRATION_TARGET_NODE_NAME_LABEL: node}}});
    api.patch(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(api_call("labelling", vmi))?;
    Ok(())
}

async fn delete_pod(ctx: &Context, m: &VirtualMachineInstanceMigration, pod: &Pod) -> Result<()> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(api_call("deleting", pod)(e).into()),
    }
    ctx.recorder
        .publish(
            m,
            EventType::Normal,
            "SuccessfulDelete",
            &format!("Deleted migration target pod {}", pod.name_any()),
        )
        .await;
    Ok(())
}

/// Deletes the oldest finished migrations of `vmi_name` beyond [`FINISHED_KEPT`].
async fn collect_garbage(api: &Api<VirtualMachineInstanceMigration>, vmi_name: &str) -> Result<()> {
    let list = api
        .list(&ListParams::default().labels(&format!("{VMI_NAME_LABEL}={vmi_name}")))
        .await
        .map_err(api_call_on(
            "listing migrations of",
            "VirtualMachineInstance",
            "",
            vmi_name,
        ))?;
    let mut finished: Vec<_> = list
        .items
        .into_iter()
        .filter(|m| phase_of(m).is_final() && m.metadata.deletion_timestamp.is_none())
        .collect();
    if finished.len() <= FINISHED_KEPT {
        return Ok(());
    }
    finished.sort_by_key(|m| m.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let excess = finished.len() - FINISHED_KEPT;
    for m in finished.into_iter().take(excess) {
        match api.delete(&m.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_call("deleting", &m)(e).into()),
        }
    }
    Ok(())
}

pub async fn reconcile(
    m: Arc<VirtualMachineInstanceMigration>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let ns = m.namespace().unwrap_or_default();
    let uid = m.metadata.uid.clone().unwrap_or_default();
    let vmi_name = rules::vmi_name(&m).to_string();
    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if vmi_name.is_empty() {
        // A decentralized migration's receiving side (`spec.receive` without a VMI).
        if phase_of(&m) != Phase::Failed {
            let st = VirtualMachineInstanceMigrationStatus {
                phase: Some(Phase::Failed),
                ..m.status.clone().unwrap_or_default()
            };
            write_status(&api, &*m, m.status.as_ref(), &st).await?;
            ctx.recorder
                .publish(
                    &*m,
                    EventType::Warning,
                    "FailedMigration",
                    "decentralized live migration is not supported by kubevirt-rs",
                )
                .await;
        }
        if finalizer::has_finalizer(&*m, MIGRATION_FINALIZER) {
            finalizer::remove(&api, &*m, MIGRATION_FINALIZER).await?;
        }
        return Ok(Action::await_change());
    }
    let vmi = vmis.get_opt(&vmi_name).await.map_err(api_call_on(
        "getting",
        "VirtualMachineInstance",
        &ns,
        &vmi_name,
    ))?;
    let target = pods
        .list(&ListParams::default().labels(&format!("{MIGRATION_JOB_LABEL}={uid}")))
        .await
        .map_err(api_call("listing target pods of", &*m))?
        .items
        .into_iter()
        .next();
    let old_phase = phase_of(&m);
    let mut st = m.status.clone().unwrap_or_default();
    // The VMI's migration state, if it is this migration's.
    let ours = vmi
        .as_ref()
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.migration_state.clone())
        .filter(|s| s.migration_uid.as_deref() == Some(uid.as_str()));
    let handed_off = ours.is_some();
    let deleting = m.metadata.deletion_timestamp.is_some();
    let mut fail: Option<String> = None;
    let mut requeue = None;

    if old_phase.is_final() {
        // Only the migration state is copied below.
    } else if vmi.is_none() {
        fail = Some("Migration failed because vmi does not exist.".into());
    } else if vmi.as_ref().is_some_and(|v| v.is_final()) {
        fail = Some("Migration failed vmi shutdown during migration.".into());
    } else if deleting && !handed_off {
        set_abort_requested(&mut st);
        fail = Some("Migration failed due to being canceled".into());
    } else if ours.as_ref().is_some_and(|s| s.failed == Some(true)) {
        fail = Some("source node reported migration failed".into());
    } else if ours.as_ref().is_some_and(|s| s.completed == Some(true)) {
        st.phase = Some(Phase::Succeeded);
        ctx.recorder
            .publish(
                &*m,
                EventType::Normal,
                "SuccessfulMigration",
                "Source node reported migration succeeded",
            )
            .await;
    } else if target.as_ref().is_some_and(pod_down) && !deleting {
        fail = Some("Migration failed because target pod shutdown during migration".into());
    } else if target.is_none()
        && matches!(
            old_phase,
            Phase::Scheduling
                | Phase::Scheduled
                | Phase::PreparingTarget
                | Phase::TargetReady
                | Phase::Running
        )
    {
        fail = Some("Migration target pod was removed during active migration.".into());
    } else if deleting {
        // Handed off: the node agent aborts; the source keeps the guest.
        set_abort_requested(&mut st);
        let vmi = vmi.as_ref().expect("checked above");
        let mut state = ours.clone().unwrap_or_default();
        if state.abort_requested != Some(true) {
            state.abort_requested = Some(true);
            write_vmi_migration_state(&ctx.client, vmi, state).await?;
            ctx.recorder
                .publish(
                    &*m,
                    EventType::Normal,
                    "SuccessfulAbortMigration",
                    "Migration is ready to be canceled by virt-handler.",
                )
                .await;
        }
    } else {
        let vmi = vmi.as_ref().expect("checked above");
        match old_phase {
            Phase::Unset => {
                let others = api
                    .list(&ListParams::default().labels(&format!("{VMI_NAME_LABEL}={vmi_name}")))
                    .await
                    .map_err(api_call("listing migrations beside", &*m))?;
                // Of two created together, the older (then the first by name) goes on.
                let order = |o: &VirtualMachineInstanceMigration| {
                    (
                        o.metadata.creation_timestamp.as_ref().map(|t| t.0),
                        o.metadata.name.clone(),
                    )
                };
                let earlier_active = others.items.iter().any(|o| {
                    o.metadata.uid != m.metadata.uid
                        && !phase_of(o).is_final()
                        && (phase_of(o) != Phase::Unset || order(o) < order(&m))
                });
                if earlier_active || rules::in_progress(vmi) {
                    fail = Some("VMI is not eligible for migration because another migration job is in progress.".into());
                } else {
                    st.phase = Some(Phase::Pending);
                }
            }
            Phase::Pending => {
                if let Some(c) = vmi
                    .condition(vmi_condition::LIVE_MIGRATABLE)
                    .filter(|c| c.status == ConditionStatus::False)
                {
                    fail = Some(format!(
                        "Cannot migrate VMI, Reason: {}, Message: {}",
                        c.reason.as_deref().unwrap_or(""),
                        c.message.as_deref().unwrap_or("")
                    ));
                } else if target.is_some() {
                    st.phase = Some(Phase::Scheduling);
                } else if vmi.phase() != VirtualMachineInstancePhase::Running
                    || !slot_free(&ctx, &m, vmi).await?
                {
                    requeue = Some(WAIT);
                } else {
                    let pod = target_pod(vmi, &m, &ctx.pod_settings);
                    match pods.create(&PostParams::default(), &pod).await {
                        Ok(created) => {
                            info!(pod = %created.name_any(), "created migration target pod");
                            ctx.recorder
                                .publish(
                                    &*m,
                                    EventType::Normal,
                                    "SuccessfulCreate",
                                    &format!("Created migration target pod {}", created.name_any()),
                                )
                                .await;
                            st.phase = Some(Phase::Scheduling);
                        }
                        Err(kube::Error::Api(s)) if s.code < 500 && s.code != 409 => {
                            ctx.recorder
                                .publish(
                                    vmi,
                                    EventType::Warning,
                                    "FailedCreate",
                                    &format!("Error creating pod: {}", s.message),
                                )
                                .await;
                            requeue = Some(Duration::from_secs(15));
                        }
                        Err(e) => return Err(api_call("creating the target pod of", &*m)(e).into()),
                    }
                }
            }
            Phase::Scheduling if target.as_ref().is_some_and(pod_ready) => {
                st.phase = Some(Phase::Scheduled);
            }
            Phase::Scheduling => {
                if let Some(pod) = target.as_ref() {
                    requeue = pending_pod_timeout(&ctx, &m, vmi, pod).await?;
                }
            }
            Phase::Scheduled => {
                let target = target.as_ref().expect("checked above");
                let source_pod = source_pod_name(&ctx.client, vmi, &uid).await?;
                let state = MigrationState {
                    migration_uid: Some(uid.clone()),
                    target_node: target.spec.as_ref().and_then(|s| s.node_name.clone()),
                    target_pod: Some(target.name_any()),
                    source_node: vmi.status.as_ref().and_then(|s| s.node_name.clone()),
                    source_pod,
                    mode: Some("PreCopy".into()),
                    ..Default::default()
                };
                let target_node = state.target_node.clone();
                write_vmi_migration_state(&ctx.client, vmi, state).await?;
                // The target node's agent watches VMIs so labelled.
                label_target_node(&ctx.client, vmi, target_node.as_deref()).await?;
                ctx.recorder
                    .publish(
                        &*m,
                        EventType::Normal,
                        "SuccessfulHandOver",
                        "Migration target pod is ready for preparation by virt-handler.",
                    )
                    .await;
                st.phase = Some(Phase::PreparingTarget);
            }
            Phase::PreparingTarget
                if ours
                    .as_ref()
                    .is_some_and(|s| s.target_node_address.is_some()) =>
            {
                st.phase = Some(Phase::TargetReady);
            }
            Phase::TargetReady if ours.as_ref().is_some_and(|s| s.start_timestamp.is_some()) => {
                st.phase = Some(Phase::Running);
            }
            _ => {}
        }
    }

    if let Some(message) = &fail {
        st.phase = Some(Phase::Failed);
        ctx.recorder
            .publish(&*m, EventType::Warning, "FailedMigration", message)
            .await;
        let ended = ours
            .as_ref()
            .is_some_and(|s| s.failed == Some(true) || s.completed == Some(true));
        if let (Some(vmi), Some(mut state), false) = (vmi.as_ref(), ours.clone(), ended) {
            // The node agent has not ended it: note the failure so it drops the target.
            state.failed = Some(true);
            state.end_timestamp = Some(now());
            state
                .failure_reason
                .get_or_insert_with(|| "Target pod is down".into());
            write_vmi_migration_state(&ctx.client, vmi, state).await?;
        }
        if let Some(pod) = &target {
            delete_pod(&ctx, &m, pod).await?;
        }
    }
    if let Some(s) = vmi
        .as_ref()
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.migration_state.clone())
        .filter(|s| s.migration_uid.as_deref() == Some(uid.as_str()))
    {
        st.migration_state = Some(s);
    }
    let phase = st.phase.unwrap_or_default();
    if phase != old_phase {
        let list = st.phase_transition_timestamps.get_or_insert_with(Vec::new);
        if !list.iter().any(|t| t.phase == Some(phase)) {
            list.push(MigrationPhaseTransitionTimestamp {
                phase: Some(phase),
                phase_transition_timestamp: Some(now()),
            });
        }
    }
    write_status(&api, &*m, m.status.as_ref(), &st).await?;
    if phase.is_final() {
        if let Some(vmi) = vmi.as_ref().filter(|v| {
            v.labels().contains_key(MIGRATION_TARGET_NODE_NAME_LABEL)
                && v.status
                    .as_ref()
                    .and_then(|s| s.migration_state.as_ref())
                    .is_none_or(|s| s.migration_uid.as_deref() == Some(uid.as_str()))
        }) {
            label_target_node(&ctx.client, vmi, None).await?;
        }
        if finalizer::has_finalizer(&*m, MIGRATION_FINALIZER) {
            finalizer::remove(&api, &*m, MIGRATION_FINALIZER).await?;
        }
        collect_garbage(&api, &vmi_name).await?;
        return Ok(Action::await_change());
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The source pod's name when the VMI's pods are not at hand: the VMI's launcher pod on
/// its node that is not a migration target.
async fn source_pod_name(
    client: &Client,
    vmi: &VirtualMachineInstance,
    migration_uid: &str,
) -> Result<Option<String>> {
    let ns = vmi.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let vmi_uid = vmi.metadata.uid.clone().unwrap_or_default();
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "{}={vmi_uid}",
            kubevirt_api::v1::well_known::CREATED_BY_LABEL
        )))
        .await
        .map_err(api_call("listing pods of", vmi))?
        .items;
    let list: Vec<Pod> = list
        .into_iter()
        .filter(|p| {
            p.labels().get(MIGRATION_JOB_LABEL).map(String::as_str) != Some(migration_uid)
                && !pod_down(p)
        })
        .collect();
    Ok(current_pod(vmi, &list).map(|p| p.name_any()))
}

/// Whether a migration of `vmi` may start now: fewer than the cluster's limit of
/// migrations are past Pending, and fewer than the per-node limit leave the VMI's node.
async fn slot_free(
    ctx: &Context,
    m: &VirtualMachineInstanceMigration,
    vmi: &VirtualMachineInstance,
) -> Result<bool> {
    let all: Api<VirtualMachineInstanceMigration> = Api::all(ctx.client.clone());
    let list = all
        .list(&ListParams::default())
        .await
        .map_err(api_call("listing migrations beside", m))?;
    let running: Vec<_> = list
        .items
        .iter()
        .filter(|o| {
            let p = phase_of(o);
            p != Phase::Unset && p != Phase::Pending && !p.is_final()
        })
        .collect();
    let config = cluster_migrations(&ctx.client).await?;
    let limit = |n: Option<u32>| n.map_or(usize::MAX, |n| n as usize);
    if running.len() >= limit(config.parallel_migrations_per_cluster) {
        return Ok(false);
    }
    let node = vmi.status.as_ref().and_then(|s| s.node_name.clone());
    let mut outbound = 0;
    for other in running {
        let ns = other.namespace().unwrap_or_default();
        let name = rules::vmi_name(other);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
        let Some(other_vmi) = vmis.get_opt(name).await.map_err(api_call_on(
            "getting",
            "VirtualMachineInstance",
            &ns,
            name,
        ))?
        else {
            continue;
        };
        let status = other_vmi.status.as_ref();
        let source = status
            .and_then(|s| s.migration_state.as_ref())
            .and_then(|s| s.source_node.clone());
        if node.is_some() && (status.and_then(|s| s.node_name.clone()) == node || source == node) {
            outbound += 1;
        }
    }
    Ok(outbound < limit(config.parallel_outbound_migrations_per_node))
}

/// The cluster's migration configuration: the install's KubeVirt object's
/// `spec.configuration.migrations` over upstream's defaults.
pub async fn cluster_migrations(client: &Client) -> Result<MigrationConfiguration> {
    let all: Api<KubeVirt> = Api::all(client.clone());
    let list = all
        .list(&ListParams::default())
        .await
        .map_err(api_call_on("listing", "KubeVirt", "", ""))?;
    Ok(kubevirt_api::install::cluster_migrations(&list.items))
}

pub fn error_policy(
    m: Arc<VirtualMachineInstanceMigration>,
    error: &ControllerError,
    _ctx: Arc<Context>,
) -> Action {
    kubevirt_reconcile::log_failure(
        "reconciling VirtualMachineInstanceMigration",
        &kubevirt_reconcile::object_ref(&*m),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// Runs the migration controller until `shutdown` resolves. A VMI's change wakes its
/// migrations (through the `kubevirt.io/vmi-name` label); a target pod's change wakes its
/// migration (through `kubevirt.io/migrationJobName`).
pub async fn run(
    client: Client,
    pod_settings: LauncherPodSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let migrations: Api<VirtualMachineInstanceMigration> = Api::all(client.clone());
    let controller = Controller::new(migrations, watcher::Config::default());
    let store = controller.store();
    let of_vmi = move |vmi: VirtualMachineInstance| {
        let ns = vmi.namespace();
        let name = vmi.name_any();
        store
            .state()
            .into_iter()
            .filter(|m| m.namespace() == ns && rules::vmi_name(m) == name)
            .map(|m| ObjectRef::from_obj(&*m))
            .collect::<Vec<_>>()
    };
    let of_pod = |pod: Pod| {
        let ns = pod.namespace().unwrap_or_default();
        pod.annotations()
            .get(MIGRATION_JOB_NAME_ANNOTATION)
            .map(|name| ObjectRef::new(name).within(&ns))
    };
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), COMPONENT, None),
        client: client.clone(),
        pod_settings,
        limits: Limits::default(),
    });
    controller
        .watches(
            Api::<VirtualMachineInstance>::all(client.clone()),
            watcher::Config::default(),
            of_vmi,
        )
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default().labels(MIGRATION_JOB_LABEL),
            of_pod,
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_api::v1::VirtualMachineInstanceMigrationSpec;

    #[test]
    fn pending_timeouts_come_from_annotations_else_defaults() {
        let mut m = VirtualMachineInstanceMigration::new("mig", Default::default());
        let limits = Limits::default();
        let unschedulable = |m: &VirtualMachineInstanceMigration| {
            timeout_of(
                m,
                UNSCHEDULABLE_TIMEOUT_ANNOTATION,
                limits.unschedulable_pod_timeout,
            )
        };
        assert_eq!(unschedulable(&m), Duration::from_secs(300));
        for (value, want) in [("30", 30), (" 7 ", 7), ("soon", 300), ("-1", 300)] {
            m.metadata.annotations =
                Some([(UNSCHEDULABLE_TIMEOUT_ANNOTATION.to_string(), value.into())].into());
            assert_eq!(unschedulable(&m), Duration::from_secs(want), "{value}");
        }
        assert_eq!(
            timeout_of(&m, PENDING_TIMEOUT_ANNOTATION, limits.pending_pod_timeout),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn target_pod_is_the_launcher_pod_marked_for_the_migration() {
        let mut vmi = VirtualMachineInstance::test("v");
        vmi.metadata.uid = Some("vmi-uid".into());
        let mut m = VirtualMachineInstanceMigration::new(
            "mig",
            VirtualMachineInstanceMigrationSpec {
                vmi_name: Some("v".into()),
                added_node_selector: Some([("zone".to_string(), "b".to_string())].into()),
                ..Default::default()
            },
        );
        m.metadata.uid = Some("mig-uid".into());
        let settings = LauncherPodSettings::new("img", vec!["launcher".into()]);
        let pod = target_pod(&vmi, &m, &settings);
        assert_eq!(pod.labels().get(MIGRATION_JOB_LABEL).unwrap(), "mig-uid");
        assert_eq!(
            pod.annotations()
                .get(MIGRATION_JOB_NAME_ANNOTATION)
                .unwrap(),
            "mig"
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap().get("zone").unwrap(), "b");
        assert!(spec.affinity.is_none(), "one node: the target may share it");
        assert_eq!(
            kubevirt_api::launcher_pod::launcher_pod_vmi(&target_pod(&vmi, &m, &settings)),
            Some(("v".into(), "vmi-uid".into())),
            "the target is a launcher pod of the same VMI"
        );
        // Cluster mode: never beside another pod of the VMI (upstream's anti-affinity).
        let cluster = LauncherPodSettings {
            migrate_to_other_nodes: true,
            ..settings
        };
        let anti =
            serde_json::to_value(target_pod(&vmi, &m, &cluster).spec.unwrap().affinity).unwrap();
        assert_eq!(
            anti,
            serde_json::json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"kubevirt.io/created-by": "vmi-uid"}},
                 "topologyKey": "kubernetes.io/hostname"}
            ]}})
        );
    }
}
