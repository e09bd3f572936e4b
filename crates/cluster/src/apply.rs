//! `install --apply` and `uninstall --apply`: server-side apply of the manifests (one
//! field manager, forced, so a newer install takes over fields an older one set), and
//! deletion in reverse order.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiCapabilities, ApiResource, Scope};
use kube::Client;
use serde_json::Value;

/// The field manager of installs.
pub const FIELD_MANAGER: &str = "kubevirt-rs-install";

fn gvk(obj: &Value) -> anyhow::Result<GroupVersionKind> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    anyhow::ensure!(!kind.is_empty(), "an object without a kind");
    Ok(GroupVersionKind::gvk(group, version, kind))
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

async fn api_for(
    client: &Client,
    obj: &Value,
) -> anyhow::Result<(Api<DynamicObject>, ApiResource, ApiCapabilities)> {
    let gvk = gvk(obj)?;
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| anyhow::anyhow!("{}/{}: {e}", gvk.group, gvk.kind))?;
    let api = match (&caps.scope, obj["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    Ok((api, ar, caps))
}

/// Applies `objects` in order; waits for the CRDs to be established.
pub async fn apply(client: &Client, objects: &[Value]) -> anyhow::Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for obj in objects {
        let (api, ar, _) = api_for(client, obj).await?;
        api.patch(name(obj), &params, &Patch::Apply(obj))
            .await
            .map_err(|e| anyhow::anyhow!("applying {} {}: {e}", ar.kind, name(obj)))?;
        println!("{}/{} applied", ar.plural, name(obj));
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for obj in objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let established = crds.get_opt(name(obj)).await?.is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "CustomResourceDefinition {} is not established after 60 s",
                name(obj)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Deletes `objects` in reverse order (what is already gone is skipped). Refuses while
/// VirtualMachineInstances exist: without the controllers their finalizers would hold the
/// CRDs' deletion forever, and their guests would be killed.
pub async fn uninstall(client: &Client, objects: &[Value]) -> anyhow::Result<()> {
    let vmi = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    );
    let vmis: Api<DynamicObject> = Api::all_with(client.clone(), &vmi);
    match vmis.list(&ListParams::default().limit(20)).await {
        Ok(list) if !list.items.is_empty() => {
            let names: Vec<String> = list
                .items
                .iter()
                .map(|v| {
                    format!(
                        "{}/{}",
                        v.metadata.namespace.as_deref().unwrap_or_default(),
                        v.metadata.name.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            anyhow::bail!(
                "VirtualMachineInstances are running ({}): stop or delete them first",
                names.join(", ")
            );
        }
        // No CRD (never installed or already removed): nothing runs.
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => return Err(e.into()),
    }
    for obj in objects.iter().rev() {
        let (api, ar, _) = match api_for(client, obj).await {
            Ok(a) => a,
            // A kind the cluster no longer serves (its CRD went first): nothing to delete.
            Err(_) => continue,
        };
        match api.delete(name(obj), &DeleteParams::background()).await {
            Ok(_) => println!("{}/{} deleted", ar.plural, name(obj)),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => anyhow::bail!("deleting {} {}: {e}", ar.kind, name(obj)),
        }
    }
    // A CRD is gone once the apiserver has removed its objects; wait for that, as
    // `kubectl delete` waits, so a new install right after does not meet a terminating CRD.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for obj in objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        while crds.get_opt(name(obj)).await?.is_some() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "CustomResourceDefinition {} is still terminating after 120 s",
                name(obj)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
