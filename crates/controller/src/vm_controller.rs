//! The VirtualMachine controller: keeps each VM's VMI in line with its runStrategy and
//! mirrors the VMI into the VM's status.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{json, Value};
use tracing::{info, instrument, warn};

use crate::error::{ControllerError, Result};
use crate::events::{EventRecorder, EventType};
use crate::finalizer;
use crate::model::{VmView, VmiView};
use crate::resources::{
    ns_name, vm_resource, vmi_resource, VMI_FINALIZER, VM_CONTROLLER_NAME, VM_FINALIZER,
};
use crate::runstrategy::{decide, VmiAction};
use crate::status::vm_status_patch;

const API_VERSION: &str = "kubevirt.io/v1";

/// Shared state of the VM controller's reconcilers.
pub struct Context {
    pub client: Client,
    pub recorder: EventRecorder,
}

/// Builds the VMI a VM's template describes: same name and namespace, owned by the VM
/// (controller, blockOwnerDeletion), carrying the template's metadata and spec unchanged.
pub fn vmi_from_template(vm: &DynamicObject) -> Result<Value> {
    let (namespace, name) = ns_name(vm);
    let uid = vm
        .metadata
        .uid
        .clone()
        .ok_or(ControllerError::MissingField {
            kind: "VirtualMachine",
            namespace: namespace.clone(),
            name: name.clone(),
            field: "metadata.uid",
        })?;
    let template = vm
        .data
        .pointer("/spec/template")
        .ok_or(ControllerError::MissingField {
            kind: "VirtualMachine",
            namespace: namespace.clone(),
            name: name.clone(),
            field: "spec.template",
        })?;
    let tmeta = template.get("metadata").cloned().unwrap_or(json!({}));
    let mut labels = tmeta.get("labels").cloned().unwrap_or(json!({}));
    if !labels.is_object() {
        labels = json!({});
    }
    let mut metadata = json!({
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": API_VERSION,
            "kind": "VirtualMachine",
            "name": name,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }],
        "finalizers": [VMI_FINALIZER],
    });
    if let Some(annotations) = tmeta.get("annotations").filter(|a| a.is_object()) {
        metadata["annotations"] = annotations.clone();
    }
    Ok(json!({
        "apiVersion": API_VERSION,
        "kind": "VirtualMachineInstance",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    }))
}

/// True when every field `patch.status` sets already has that value in `current`.
pub fn status_unchanged(current: &Value, patch: &Value) -> bool {
    let Some(fields) = patch.get("status").and_then(Value::as_object) else {
        return true;
    };
    let status = current.get("status");
    fields.iter().all(|(k, v)| {
        let cur = status.and_then(|s| s.get(k)).unwrap_or(&Value::Null);
        cur == v
    })
}

fn api_err(
    action: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ControllerError {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    move |source| ControllerError::Api {
        action,
        kind,
        namespace,
        name,
        source: Box::new(source),
    }
}

#[instrument(skip(vm, ctx), fields(namespace = vm.metadata.namespace.as_deref().unwrap_or(""), name = vm.metadata.name.as_deref().unwrap_or("")))]
pub async fn reconcile(vm: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action> {
    let (namespace, name) = ns_name(&vm);
    let vms: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &vm_resource());
    let vmis: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &vmi_resource());

    let view = match VmView::from_object(&vm) {
        Ok(v) => v,
        Err(e @ ControllerError::InvalidField { .. }) => {
            ctx.recorder
                .publish(
                    &vm,
                    API_VERSION,
                    "VirtualMachine",
                    EventType::Warning,
                    "InvalidSpec",
                    &e.to_string(),
                )
                .await;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    if !view.deleting {
        finalizer::add(&vms, &vm, "VirtualMachine", VM_FINALIZER).await?;
    }

    let vmi_obj = vmis.get_opt(&name).await.map_err(api_err(
        "getting",
        "VirtualMachineInstance",
        &namespace,
        &name,
    ))?;
    // A VMI of the same name that another owner controls is not ours to manage.
    let vmi_obj = vmi_obj.filter(|v| {
        v.metadata.owner_references.as_ref().is_none_or(|refs| {
            refs.iter()
                .all(|r| r.controller != Some(true) || r.uid == view.uid)
        })
    });
    let vmi_view = vmi_obj.as_ref().map(VmiView::from_object).transpose()?;
    let now = Utc::now();
    let decision = decide(&view, vmi_view.as_ref(), now);

    let mut failure = None;
    match &decision.action {
        VmiAction::None => {}
        VmiAction::Create => {
            let body = vmi_from_template(&vm)?;
            let obj: DynamicObject =
                serde_json::from_value(body).map_err(|source| ControllerError::Serialize {
                    kind: "VirtualMachineInstance",
                    name: name.clone(),
                    source,
                })?;
            match vmis.create(&PostParams::default(), &obj).await {
                Ok(created) => {
                    info!("created VirtualMachineInstance");
                    let uid = created.metadata.uid.unwrap_or_default();
                    ctx.recorder
                        .publish(&vm, API_VERSION, "VirtualMachine", EventType::Normal, "SuccessfulCreate",
                            &format!("Started the virtual machine by creating the new virtual machine instance {name} ({uid})"))
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                    let message =
                        format!("failed to create virtual machine instance: {}", s.message);
                    warn!(%message);
                    ctx.recorder
                        .publish(
                            &vm,
                            API_VERSION,
                            "VirtualMachine",
                            EventType::Warning,
                            "FailedCreate",
                            &message,
                        )
                        .await;
                    failure = Some(message);
                }
                Err(e) => {
                    return Err(api_err(
                        "creating",
                        "VirtualMachineInstance",
                        &namespace,
                        &name,
                    )(e))
                }
            }
        }
        VmiAction::Delete { reason } => {
            let uid = vmi_view.as_ref().map(|v| v.uid.clone()).unwrap_or_default();
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match vmis.delete(&name, &params).await {
                Ok(_) => {
                    info!(%reason, "deleting VirtualMachineInstance");
                    ctx.recorder
                        .publish(&vm, API_VERSION, "VirtualMachine", EventType::Normal, "SuccessfulDelete",
                            &format!("Stopped the virtual machine by deleting the virtual machine instance {uid} ({reason})"))
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    return Err(api_err(
                        "deleting",
                        "VirtualMachineInstance",
                        &namespace,
                        &name,
                    )(e))
                }
            }
        }
    }

    if !view.deleting {
        let patch = vm_status_patch(&view, vmi_view.as_ref(), &decision, failure.as_deref(), now);
        if !status_unchanged(&vm.data, &patch) {
            vms.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(
                    "updating status of",
                    "VirtualMachine",
                    &namespace,
                    &name,
                ))?;
        }
    } else if vmi_view.is_none() {
        finalizer::remove(&vms, &vm, "VirtualMachine", VM_FINALIZER).await?;
    }

    Ok(match decision.backoff_remaining {
        Some(wait) => Action::requeue(wait.to_std().unwrap_or(Duration::from_secs(1))),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

pub fn error_policy(vm: Arc<DynamicObject>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    let (namespace, name) = ns_name(&vm);
    warn!(%namespace, %name, %error, "reconciling VirtualMachine failed");
    if error.is_transient() {
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::requeue(Duration::from_secs(60))
    }
}

/// Runs the VM controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let vms: Api<DynamicObject> = Api::all_with(client.clone(), &vm_resource());
    let vmis: Api<DynamicObject> = Api::all_with(client.clone(), &vmi_resource());
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), VM_CONTROLLER_NAME, None),
        client,
    });
    Controller::new_with(vms, watcher::Config::default(), vm_resource())
        .owns_with(vmis, vmi_resource(), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(error) = res {
                tracing::debug!(%error, "VirtualMachine reconcile");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmi_carries_template_and_owner() {
        let vm: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "testvm", "namespace": "ns1", "uid": "u1"},
            "spec": {"runStrategy": "Always", "template": {
                "metadata": {"labels": {"kubevirt.io/vm": "testvm"}, "annotations": {"a": "b"}},
                "spec": {"domain": {"devices": {}, "unknownField": 1}}
            }}
        }))
        .unwrap();
        let vmi = vmi_from_template(&vm).unwrap();
        assert_eq!(vmi["metadata"]["name"], "testvm");
        assert_eq!(vmi["metadata"]["namespace"], "ns1");
        assert_eq!(vmi["metadata"]["labels"]["kubevirt.io/vm"], "testvm");
        assert_eq!(vmi["metadata"]["annotations"]["a"], "b");
        let owner = &vmi["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], "u1");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert_eq!(vmi["metadata"]["finalizers"][0], VMI_FINALIZER);
        assert_eq!(vmi["spec"]["domain"]["unknownField"], 1);
    }

    #[test]
    fn vmi_from_template_requires_template() {
        let vm: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "testvm", "namespace": "ns1", "uid": "u1"},
            "spec": {}
        }))
        .unwrap();
        let err = vmi_from_template(&vm).unwrap_err().to_string();
        assert!(err.contains("spec.template"), "{err}");
    }

    #[test]
    fn unchanged_status_is_detected() {
        let cur = json!({"status": {"printableStatus": "Running", "ready": true}});
        assert!(status_unchanged(
            &cur,
            &json!({"status": {"ready": true, "startFailure": null}})
        ));
        assert!(!status_unchanged(
            &cur,
            &json!({"status": {"ready": false}})
        ));
    }
}
