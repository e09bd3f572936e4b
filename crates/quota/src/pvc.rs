//! PersistentVolumeClaim usage (`persistent_volume_claims.go`): claims and storage, in total and
//! per storage class (`<class>.storageclass.storage.k8s.io/<resource>`).

use std::collections::{BTreeMap, BTreeSet};

use kubevirt_api::quantity::Quantity;
use serde_json::Value;

use crate::resources::{one, quantity, ResourceList};
use crate::scope::{label_selector_matches, ScopeSelector};

/// The object-count name for claims.
const PVC_COUNT: &str = "count/persistentvolumeclaims";

/// Quota names that may also be qualified by a storage class.
const PVC_RESOURCES: &[&str] = &["persistentvolumeclaims", "requests.storage"];

/// The infix of per-storage-class quota names.
const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// The beta annotation that still overrides `spec.storageClassName`.
const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// The quota names in `input` that the claim evaluator tracks.
pub(crate) fn matching_resources(input: &[String]) -> Vec<String> {
    input
        .iter()
        .filter(|name| {
            name.as_str() == PVC_COUNT
                || PVC_RESOURCES.contains(&name.as_str())
                || PVC_RESOURCES
                    .iter()
                    .any(|r| name.ends_with(&format!("{STORAGE_CLASS_SUFFIX}{r}")))
        })
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The claim's storage class: the beta annotation first, then `spec.storageClassName`.
fn storage_class(pvc: &Value) -> &str {
    pvc.pointer("/metadata/annotations")
        .and_then(|a| a.get(BETA_STORAGE_CLASS_ANNOTATION))
        .and_then(Value::as_str)
        .or_else(|| {
            pvc.pointer("/spec/storageClassName")
                .and_then(Value::as_str)
        })
        .unwrap_or_default()
}

/// Storage is charged in whole bytes (a fractional request rounds up) so the quota's own
/// validation accepts the sum.
fn whole_bytes(q: Quantity) -> Quantity {
    let rounded = Quantity::from_int(q.value(), q.format());
    if rounded == q {
        q
    } else {
        rounded
    }
}

/// The storage charged: the request, or what was allocated when that is larger (a shrink in
/// progress keeps the larger size charged).
fn storage_usage(pvc: &Value) -> Option<Quantity> {
    let requested = pvc
        .pointer("/spec/resources/requests/storage")
        .map(|v| whole_bytes(quantity(v)))?;
    let allocated = pvc
        .pointer("/status/allocatedResources/storage")
        .map(quantity);
    match allocated {
        Some(allocated) if allocated > requested => Some(whole_bytes(allocated)),
        _ => Some(requested),
    }
}

/// The quota usage of a claim.
pub(crate) fn usage(pvc: &Value) -> ResourceList {
    let mut result = ResourceList::from([
        ("persistentvolumeclaims".to_string(), one()),
        (PVC_COUNT.to_string(), one()),
    ]);
    let class = storage_class(pvc);
    if !class.is_empty() {
        result.insert(
            format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
            one(),
        );
    }
    if let Some(storage) = storage_usage(pvc) {
        if !class.is_empty() {
            result.insert(
                format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"),
                storage.clone(),
            );
        }
        result.insert("requests.storage".to_string(), storage);
    }
    result
}

/// Every VolumeAttributesClass the claim refers to: wanted, current and being switched to.
fn volume_attributes_classes(pvc: &Value) -> BTreeSet<&str> {
    [
        "/spec/volumeAttributesClassName",
        "/status/currentVolumeAttributesClassName",
        "/status/modifyVolumeStatus/targetVolumeAttributesClassName",
    ]
    .iter()
    .filter_map(|p| pvc.pointer(p).and_then(Value::as_str))
    .filter(|name| !name.is_empty())
    .collect()
}

/// Whether a claim falls in a quota scope: only `VolumeAttributesClass` applies to claims.
pub(crate) fn matches_scope(selector: &ScopeSelector, pvc: &Value) -> bool {
    if selector.scope_name != "VolumeAttributesClass" {
        return false;
    }
    let classes = volume_attributes_classes(pvc);
    if selector.operator == "Exists" {
        return !classes.is_empty();
    }
    if classes.is_empty() {
        return label_selector_matches(selector, &BTreeMap::new());
    }
    classes.iter().any(|class| {
        label_selector_matches(
            selector,
            &BTreeMap::from([("VolumeAttributesClass", *class)]),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::pretty_print;
    use serde_json::json;

    #[test]
    fn charges_claims_and_storage_per_class() {
        let pvc = json!({
            "spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "1.5"}}},
            "status": {"allocatedResources": {"storage": "1"}},
        });
        assert_eq!(
            pretty_print(&usage(&pvc)),
            "count/persistentvolumeclaims=1,\
             gold.storageclass.storage.k8s.io/persistentvolumeclaims=1,\
             gold.storageclass.storage.k8s.io/requests.storage=2,\
             persistentvolumeclaims=1,requests.storage=2"
        );
        let expanding = json!({
            "metadata": {"annotations": {BETA_STORAGE_CLASS_ANNOTATION: "silver"}},
            "spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"allocatedResources": {"storage": "2Gi"}},
        });
        let got = usage(&expanding);
        assert_eq!(
            got["silver.storageclass.storage.k8s.io/requests.storage"].canonical(),
            "2Gi"
        );
        assert_eq!(
            matching_resources(&[
                "gold.storageclass.storage.k8s.io/requests.storage".into(),
                "requests.cpu".into(),
                PVC_COUNT.into(),
            ]),
            vec![
                PVC_COUNT.to_string(),
                "gold.storageclass.storage.k8s.io/requests.storage".into()
            ]
        );
    }

    #[test]
    fn volume_attributes_class_scope() {
        let pvc = json!({"spec": {"volumeAttributesClassName": "fast"}});
        let sel = |op: &str, values: &[&str]| ScopeSelector {
            scope_name: "VolumeAttributesClass".into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(matches_scope(&sel("Exists", &[]), &pvc));
        assert!(matches_scope(&sel("In", &["fast"]), &pvc));
        assert!(!matches_scope(&sel("In", &["slow"]), &pvc));
        assert!(matches_scope(&sel("DoesNotExist", &[]), &json!({})));
    }
}
