//! What kube-apiserver's admission and validation do for claims and volumes:
//! DefaultStorageClass (a claim without `storageClassName` gets the default class),
//! StorageObjectInUseProtection (the `kubernetes.io/pvc-protection` and `pv-protection`
//! finalizers), the claim update rules (only `resources.requests` of a bound claim may
//! change, and never below its capacity) and PersistentVolumeClaimResize (growing needs a
//! class that allows expansion).

use std::sync::Arc;

use http::StatusCode;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, Cause};
use crate::ops::Operation;
use crate::registry::ResourceDef;
use crate::store::{self, Store};

/// The annotation marking the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

fn is_core(def: &ResourceDef, kind: &str) -> bool {
    def.group.is_empty() && def.kind == kind
}

/// The StorageClasses, read before a claim is written (only then).
pub fn classes_for(store: &Store, def: &ResourceDef) -> Arc<Vec<Arc<Value>>> {
    if !is_core(def, "PersistentVolumeClaim") {
        return Arc::default();
    }
    Arc::new(
        store
            .list(&store::prefix("storage.k8s.io", "storageclasses", None))
            .0,
    )
}

/// The default class as kube-apiserver picks it: the newest class annotated default.
fn default_class(classes: &[Arc<Value>]) -> Option<&str> {
    classes
        .iter()
        .filter(|c| {
            c.pointer("/metadata/annotations")
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true")
        })
        .max_by_key(|c| {
            c.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        })
        .and_then(|c| c.pointer("/metadata/name").and_then(Value::as_str))
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        if !list.iter().any(|f| f == finalizer) {
            list.push(json!(finalizer));
        }
    }
}

/// Kubernetes' defaulting of a field left out (the `status` a client sends on create is
/// dropped, as kube-apiserver does, for the phase every new claim and volume starts in).
fn default_field(obj: &mut Value, parent: &str, field: &str, value: &str) {
    if let Some(Value::Object(p)) = obj.pointer_mut(parent) {
        p.entry(field).or_insert_with(|| json!(value));
    }
}

/// Admission of claims and volumes; `classes` from [`classes_for`].
pub fn admit(
    def: &ResourceDef,
    op: Operation,
    obj: &mut Value,
    old: Option<&Value>,
    classes: &[Arc<Value>],
) -> ApiResult<()> {
    if is_core(def, "PersistentVolume") && op == Operation::Create {
        add_finalizer(obj, PV_PROTECTION);
        default_field(obj, "/spec", "persistentVolumeReclaimPolicy", "Retain");
        default_field(obj, "/spec", "volumeMode", "Filesystem");
        obj["status"] = json!({"phase": "Pending"});
    }
    if !is_core(def, "PersistentVolumeClaim") {
        return Ok(());
    }
    match (op, old) {
        (Operation::Create, _) => {
            if obj
                .pointer("/spec/storageClassName")
                .is_none_or(Value::is_null)
            {
                if let (Some(class), Some(spec)) = (default_class(classes), obj.get_mut("spec")) {
                    spec["storageClassName"] = json!(class);
                }
            }
            add_finalizer(obj, PVC_PROTECTION);
            default_field(obj, "/spec", "volumeMode", "Filesystem");
            obj["status"] = json!({"phase": "Pending"});
            Ok(())
        }
        (Operation::Update, Some(old)) => check_update(def, obj, old, classes),
        (Operation::Update, None) => Ok(()),
    }
}

fn storage_request(pvc: &Value) -> Option<kubevirt_api::Quantity> {
    pvc.pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(|q| kubevirt_api::Quantity::parse(q).ok())
}

fn check_update(
    def: &ResourceDef,
    new: &Value,
    old: &Value,
    classes: &[Arc<Value>],
) -> ApiResult<()> {
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let invalid = |field: &str, message: &str| {
        ApiError::invalid(
            &def.kind,
            &def.group,
            name,
            vec![Cause {
                reason: "FieldValueForbidden".into(),
                message: format!("Forbidden: {message}"),
                field: field.into(),
            }],
        )
    };
    // Everything but the requests (and the binding of an unbound claim) is fixed.
    let comparable = |pvc: &Value, volume_name: Option<&Value>| {
        let mut spec = pvc.get("spec").cloned().unwrap_or(json!({}));
        if let Some(requests) = spec.pointer_mut("/resources/requests") {
            *requests = json!(null);
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("volumeAttributesClassName");
            match volume_name {
                Some(v) => spec.insert("volumeName".into(), v.clone()),
                None => spec.remove("volumeName"),
            };
        }
        spec
    };
    let old_volume = old.pointer("/spec/volumeName").filter(|v| !v.is_null());
    let new_volume = new.pointer("/spec/volumeName");
    // An unbound claim may be bound (volumeName set once).
    let binding = old_volume.map_or(new_volume, Some);
    if comparable(new, binding) != comparable(old, binding) {
        return Err(invalid(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let (Some(new_size), Some(old_size)) = (storage_request(new), storage_request(old)) else {
        return Ok(());
    };
    if new_size.value() == old_size.value() {
        return Ok(());
    }
    let bound = old.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
    if !bound {
        return Err(invalid(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let capacity = old
        .pointer("/status/capacity/storage")
        .and_then(Value::as_str)
        .and_then(|q| kubevirt_api::Quantity::parse(q).ok());
    if capacity.is_some_and(|c| new_size.value() < c.value()) {
        return Err(invalid(
            "spec.resources.requests.storage",
            "field can not be less than status.capacity",
        ));
    }
    let class = new
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let expandable = classes.iter().any(|c| {
        c.pointer("/metadata/name").and_then(Value::as_str) == Some(class)
            && c.get("allowVolumeExpansion") == Some(&json!(true))
    });
    if new_size.value() > old_size.value() && !expandable {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "persistentvolumeclaims \"{name}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"
            ),
        )
        .with_resource_details(name, "", "persistentvolumeclaims"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc_def() -> ResourceDef {
        crate::registry::builtins()
            .into_iter()
            .find(|d| d.kind == "PersistentVolumeClaim")
            .unwrap()
    }

    fn class(name: &str, default: bool, expand: bool) -> Arc<Value> {
        let mut c = json!({"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "provisioner": "kubevirt-rs.io/local", "allowVolumeExpansion": expand});
        if default {
            c["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: "true"});
        }
        Arc::new(c)
    }

    fn bound(size: &str) -> Value {
        json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "storageClassName": "local", "volumeName": "pvc-1",
            "resources": {"requests": {"storage": size}}},
            "status": {"phase": "Bound", "capacity": {"storage": size}}})
    }

    #[test]
    fn a_new_claim_gets_the_default_class_and_the_protection_finalizer() {
        let def = pvc_def();
        let classes = [class("other", false, false), class("local", true, true)];
        let mut pvc = json!({"metadata": {"name": "data"}, "spec": {}});
        admit(&def, Operation::Create, &mut pvc, None, &classes).unwrap();
        assert_eq!(pvc["spec"]["storageClassName"], "local");
        assert_eq!(pvc["metadata"]["finalizers"], json!([PVC_PROTECTION]));
        // An explicit "" means "no class" and stays.
        let mut none = json!({"metadata": {"name": "x"}, "spec": {"storageClassName": ""}});
        admit(&def, Operation::Create, &mut none, None, &classes).unwrap();
        assert_eq!(none["spec"]["storageClassName"], "");
    }

    #[test]
    fn bound_claims_grow_only_where_the_class_allows_it() {
        let def = pvc_def();
        let old = bound("1Gi");
        let mut grown = old.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        let expandable = [class("local", true, true)];
        admit(
            &def,
            Operation::Update,
            &mut grown.clone(),
            Some(&old),
            &expandable,
        )
        .unwrap();

        let fixed = [class("local", true, false)];
        let err = admit(&def, Operation::Update, &mut grown, Some(&old), &fixed).unwrap_err();
        assert_eq!(err.code, StatusCode::FORBIDDEN);
        assert!(
            err.message.contains("must support resize"),
            "{}",
            err.message
        );

        let mut shrunk = old.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("512Mi");
        let err = admit(
            &def,
            Operation::Update,
            &mut shrunk,
            Some(&old),
            &expandable,
        )
        .unwrap_err();
        assert!(
            err.message.contains("spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"),
            "{}",
            err.message
        );

        let mut moved = old.clone();
        moved["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        let err = admit(&def, Operation::Update, &mut moved, Some(&old), &expandable).unwrap_err();
        assert!(
            err.message.contains("spec: Forbidden: spec is immutable"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_unbound_claim_may_be_bound_but_not_resized() {
        let def = pvc_def();
        let mut old = bound("1Gi");
        old["spec"].as_object_mut().unwrap().remove("volumeName");
        old["status"] = json!({"phase": "Pending"});
        let mut binding = old.clone();
        binding["spec"]["volumeName"] = json!("pvc-9");
        let classes = [class("local", true, true)];
        admit(&def, Operation::Update, &mut binding, Some(&old), &classes).unwrap();
        let mut grown = old.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(admit(&def, Operation::Update, &mut grown, Some(&old), &classes).is_err());
    }
}
