//! The evacuation controller (upstream's, in virt-controller): a running VMI marked for
//! evacuation (`status.evacuationNodeName`, set when the eviction of its launcher pod was
//! refused for its eviction strategy) gets a VirtualMachineInstanceMigration
//! (`kubevirt-evacuation-*`, annotated `kubevirt.io/evacuationMigration: <node>`) unless one
//! is already under way. The migration controller clears the mark when it hands the
//! migration off, so a failed evacuation is retried by the next eviction.

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use kubevirt_api::migration::{self as rules, EVACUATION_ANNOTATION, VMI_NAME_LABEL};
use kubevirt_api::v1::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstancePhase,
};
use kubevirt_reconcile::api_call;
use kubevirt_reconcile::events::{EventRecorder, EventType};

use crate::{ControllerError, Result};

pub const COMPONENT: &str = "evacuation-controller";

pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
}

pub async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Context>) -> Result<Action> {
    let Some(node) = vmi
        .status
        .as_ref()
        .and_then(|s| s.evacuation_node_name.clone())
    else {
        return Ok(Action::await_change());
    };
    if vmi.phase() != VirtualMachineInstancePhase::Running || rules::in_progress(&vmi) {
        return Ok(Action::await_change());
    }
    let ns = vmi.namespace().unwrap_or_default();
    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(ctx.client.clone(), &ns);
    let pending = api
        .list(&ListParams::default().labels(&format!("{VMI_NAME_LABEL}={}", vmi.name_any())))
        .await
        .map_err(api_call("listing migrations of", &*vmi))?
        .items
        .into_iter()
        .any(|m| {
            !m.status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or_default()
                .is_final()
        });
    if pending {
        return Ok(Action::await_change());
    }
    let mut migration = rules::new_migration("kubevirt-evacuation-", &vmi.name_any());
    migration.metadata.annotations =
        Some([(EVACUATION_ANNOTATION.to_string(), node.clone())].into());
    let created = api
        .create(&PostParams::default(), &migration)
        .await
        .map_err(api_call("creating an evacuation migration for", &*vmi))?;
    info!(migration = %created.name_any(), %node, "evacuating VirtualMachineInstance");
    ctx.recorder
        .publish(
            &*vmi,
            EventType::Normal,
            "SuccessfulCreate",
            &format!("Created Migration {} for evacuation", created.name_any()),
        )
        .await;
    Ok(Action::await_change())
}

pub fn error_policy(
    vmi: Arc<VirtualMachineInstance>,
    error: &ControllerError,
    _ctx: Arc<Context>,
) -> Action {
    kubevirt_reconcile::log_failure(
        "evacuating VirtualMachineInstance",
        &kubevirt_reconcile::object_ref(&*vmi),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// Runs the evacuation controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), COMPONENT, None),
        client: client.clone(),
    });
    Controller::new(
        Api::<VirtualMachineInstance>::all(client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}
