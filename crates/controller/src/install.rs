//! The install's KubeVirt object (`kubevirt_api::install`), kept the way virt-operator keeps
//! it: the active one (the oldest) says `Deployed` with conditions Available, not
//! Progressing, not Degraded, for its current generation and this version. The components
//! it stands for are this process's, so they run when this runs.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use kubevirt_api::install::{self, KubeVirt};
use kubevirt_reconcile::{api_call, api_call_on};

use crate::{ControllerError, Result};

pub struct Context {
    pub client: Client,
}

pub async fn reconcile(kv: Arc<KubeVirt>, ctx: Arc<Context>) -> Result<Action> {
    if install::deployed(&kv, install::VERSION) {
        return Ok(Action::await_change());
    }
    let all: Api<KubeVirt> = Api::all(ctx.client.clone());
    let list = all
        .list(&ListParams::default())
        .await
        .map_err(api_call_on("listing", "KubeVirt", "", ""))?;
    let active = install::active(&list.items);
    if active.map(|a| a.uid()) != Some(kv.uid()) {
        return Ok(Action::await_change());
    }
    let now = crate::operation::now().0.to_string();
    let status = install::deployed_status(install::VERSION, kv.metadata.generation, &now);
    let api: Api<KubeVirt> =
        Api::namespaced(ctx.client.clone(), &kv.namespace().unwrap_or_default());
    api.patch_status(
        &kv.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .map_err(api_call("writing the status of", &*kv))?;
    info!(kubevirt = %kv.name_any(), version = install::VERSION, "KubeVirt deployed");
    Ok(Action::await_change())
}

pub fn error_policy(kv: Arc<KubeVirt>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    kubevirt_reconcile::log_failure(
        "updating KubeVirt",
        &kubevirt_reconcile::object_ref(&*kv),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// Creates the install's KubeVirt object (`kubevirt` in `namespace`, and the namespace if
/// it is missing) unless one exists anywhere: what applying upstream's operator CR does.
pub async fn ensure_object(client: &Client, namespace: &str) -> Result<()> {
    let all: Api<KubeVirt> = Api::all(client.clone());
    if !all
        .list(&ListParams::default().limit(1))
        .await
        .map_err(api_call_on("listing", "KubeVirt", "", ""))?
        .items
        .is_empty()
    {
        return Ok(());
    }
    let mut kv: KubeVirt = serde_json::from_value(install::initial_object())
        .map_err(|e| ControllerError::Invalid(e.to_string()))?;
    kv.metadata.namespace = Some(namespace.to_string());
    let api: Api<KubeVirt> = Api::namespaced(client.clone(), namespace);
    let creating = api_call_on("creating", "KubeVirt", namespace, install::NAME);
    match api.create(&PostParams::default(), &kv).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(creating(e).into()),
    }
    // No such namespace yet (an embedded install's first start).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(namespace.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(api_call_on("creating", "Namespace", "", namespace)(e).into()),
    }
    match api.create(&PostParams::default(), &kv).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(creating(e).into()),
    }
}

/// Runs the KubeVirt status controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
    });
    Controller::new(Api::<KubeVirt>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
