//! What the snapshot, restore and clone controllers share: each drives one operation object
//! (a VirtualMachineSnapshot, Restore or Clone) through its phases with a client and an
//! event recorder, merges its status when it changed, and retries the same way.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use kubevirt_reconcile::api_call;
use kubevirt_reconcile::events::EventRecorder;

use crate::{ControllerError, Result};

pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
}

/// An operation object with an optional status.
pub trait Operation:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    type Status: Serialize + PartialEq;
    fn status(&self) -> Option<&Self::Status>;
}

macro_rules! operation {
    ($kind:ty, $status:ty) => {
        impl Operation for $kind {
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
        }
    };
}
operation!(
    kubevirt_api::snapshot::VirtualMachineSnapshot,
    kubevirt_api::snapshot::VirtualMachineSnapshotStatus
);
operation!(
    kubevirt_api::snapshot::VirtualMachineRestore,
    kubevirt_api::snapshot::VirtualMachineRestoreStatus
);
operation!(
    kubevirt_api::clone::VirtualMachineClone,
    kubevirt_api::clone::VirtualMachineCloneStatus
);

pub(crate) fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Merges `status` into the object's status, unless it already says that.
pub(crate) async fn write_status<K: Operation>(
    api: &Api<K>,
    obj: &K,
    status: &K::Status,
) -> Result<()> {
    if obj.status() == Some(status) {
        return Ok(());
    }
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(api_call("updating status of", obj))?;
    Ok(())
}

pub fn error_policy<K: Operation>(
    obj: Arc<K>,
    error: &ControllerError,
    _ctx: Arc<Context>,
) -> Action {
    kubevirt_reconcile::log_failure(
        &format!("reconciling {}", K::kind(&())),
        &kubevirt_reconcile::object_ref(&*obj),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// Runs the controller of operation kind `K` (events as `component`) until `shutdown`
/// resolves.
pub async fn run<K, F>(
    client: Client,
    component: &str,
    reconcile: fn(Arc<K>, Arc<Context>) -> F,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) where
    K: Operation,
    F: Future<Output = Result<Action>> + Send + 'static,
{
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), component, None),
        client: client.clone(),
    });
    Controller::new(Api::<K>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
