//! virt-api's eviction webhook, in process: evicting a running VMI's launcher pod (the
//! Eviction API, as `kubectl drain` calls it) is refused while the VMI's eviction strategy
//! asks for a live migration, and the VMI is marked for evacuation
//! (`status.evacuationNodeName`), which the evacuation controller turns into a migration.
//! The rule itself is `kubevirt_api::migration::eviction`.

use std::sync::OnceLock;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use kubevirt_api::launcher_pod::launcher_pod_vmi;
use kubevirt_api::migration::{eviction, Eviction, MIGRATION_JOB_LABEL};
use kubevirt_api::v1::VirtualMachineInstance;
use serde_json::{json, Value};

/// How upstream's webhook is named in the refusals kube-apiserver passes on.
const WEBHOOK: &str = "virt-launcher-eviction-interceptor.kubevirt.io";

/// The eviction check of launcher pods; the API client is set once the server is up.
#[derive(Default)]
pub struct LauncherEviction {
    client: OnceLock<Client>,
}

impl LauncherEviction {
    pub fn set_client(&self, client: Client) {
        let _ = self.client.set(client);
    }

    async fn decide(&self, pod: &Value, request: &Value) -> Result<(), String> {
        let Ok(pod) = serde_json::from_value::<Pod>(pod.clone()) else {
            return Ok(());
        };
        let completed = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let Some((vmi_name, _)) = launcher_pod_vmi(&pod).filter(|_| !completed) else {
            return Ok(());
        };
        let Some(client) = self.client.get() else {
            return Err("kubevirt failed getting the vmi: the API is starting".into());
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        let vmi = vmis
            .get(&vmi_name)
            .await
            .map_err(|e| format!("kubevirt failed getting the vmi: {e}"))?;
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let is_target = pod
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(MIGRATION_JOB_LABEL));
        match eviction(&vmi, &pod_name, is_target, None) {
            Eviction::Allow => Ok(()),
            Eviction::Refuse(message) => Err(message),
            Eviction::Evacuate(message) => {
                let dry_run = request
                    .pointer("/deleteOptions/dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().any(|v| v == "All"));
                if !dry_run {
                    let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
                    let patch = json!({"status": {"evacuationNodeName": node}});
                    vmis.patch_status(&vmi_name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| {
                            format!("kubevirt failed marking the vmi for eviction: {e}")
                        })?;
                }
                Err(message)
            }
        }
    }
}

impl kubevirt_apiserver::EvictionCheck for LauncherEviction {
    fn check<'a>(
        &'a self,
        pod: &'a Value,
        eviction: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        async move {
            self.decide(pod, eviction)
                .await
                .map_err(|m| format!("admission webhook \"{WEBHOOK}\" denied the request: {m}"))
        }
        .boxed()
    }
}
