//! ResourceQuota and LimitRange the way kube-apiserver's admission plugins and the
//! resourcequota controller apply them (see README.md).
//!
//! Everything works on the JSON of v1 objects (`serde_json::Value`) and treats it as untrusted:
//! missing or mistyped fields are read as absent, and a malformed quantity counts as zero
//! (upstream rejects such objects at validation, before quota sees them). Nothing here does IO;
//! the only ambient input is the clock in [`usage`], [`status`] and [`admit`], each of which has
//! an explicit-clock variant.
//!
//! - [`usage`]: what one object contributes to each quota resource name.
//! - [`status`]: a quota's recomputed `status` from the objects of its namespace (controller).
//! - [`admit`]: the ResourceQuota admission check and the quotas' new usage.
//! - [`limit_ranges`]: the LimitRanger admission plugin (defaults and min/max/ratio checks).
//! - [`forbidden_message`]: the full 403 text the server returns for either refusal.

mod admission;
mod controller;
mod evaluator;
mod limitranger;
mod pod;
mod pvc;
mod resources;
mod scope;
mod service;
mod time;

use std::collections::BTreeMap;
use std::time::SystemTime;

use kubevirt_api::quantity::Quantity;
use serde_json::Value;

pub use admission::{
    admit, check_request, forbidden_message, object_name, AdmissionError, Subject,
};
pub use controller::{status, status_at};
pub use evaluator::object_count_name;
pub use limitranger::{
    check as check_limit_ranges, default_pod_requests, limit_ranges, LimitRangeError,
    LimitRangeViolation,
};

/// The usage one object contributes to each quota resource name it is tracked under.
///
/// - Pods (`""`/`pods`): `count/pods` always; while the pod is charged also `pods`, `cpu`/`memory`/
///   `ephemeral-storage` (= their `requests.*`), `requests.*`, `limits.*`, huge pages and
///   `requests.<extended resource>`. Requests and limits are aggregated as upstream does: sum of
///   containers (and sidecars), raised to each init container's need, replaced by pod-level
///   `spec.resources` where set, plus `spec.overhead` (only onto set, non-zero limits). A pod is
///   not charged once `Succeeded`/`Failed`, or once `deletionTimestamp` +
///   `deletionGracePeriodSeconds` has passed. Requests missing for a resource with a limit take
///   the limit, as v1 defaulting would have done.
/// - Services: `services`, `count/services`, `services.loadbalancers`, `services.nodeports`.
/// - PersistentVolumeClaims: `persistentvolumeclaims`, `count/persistentvolumeclaims`,
///   `requests.storage` and their `<class>.storageclass.storage.k8s.io/` variants.
/// - ConfigMaps, Secrets, ReplicationControllers, ResourceQuotas: `count/<resource>` and the
///   legacy `<resource>`.
/// - Anything else: `count/<resource>.<group>` (`count/<resource>` for core).
pub fn usage(group: &str, resource: &str, object: &Value) -> BTreeMap<String, Quantity> {
    usage_at(group, resource, object, SystemTime::now())
}

/// [`usage`] with an explicit clock (for a deleted pod's grace period).
pub fn usage_at(
    group: &str,
    resource: &str,
    object: &Value,
    now: SystemTime,
) -> BTreeMap<String, Quantity> {
    evaluator::Evaluator::for_resource(group, resource).usage(object, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn printed(usage: &BTreeMap<String, Quantity>) -> Vec<String> {
        usage
            .iter()
            .map(|(k, v)| format!("{k}={}", v.canonical()))
            .collect()
    }

    #[test]
    fn pod_usage_sums_containers_takes_init_peak_and_adds_overhead() {
        let pod = json!({"spec": {
            "overhead": {"memory": "64Mi", "cpu": "50m"},
            "initContainers": [
                {"name": "migrate", "resources": {"requests": {"cpu": "2", "memory": "128Mi"}}},
            ],
            "containers": [
                {"name": "app", "resources": {
                    "requests": {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
                    "limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "log", "resources": {
                    "requests": {"cpu": "250m", "memory": "512Mi"},
                    "limits": {"memory": "512Mi"}}},
            ],
        }});
        assert_eq!(
            printed(&usage("", "pods", &pod)),
            [
                "count/pods=1",
                // max(500m + 250m, 2) + 50m overhead
                "cpu=2050m",
                "ephemeral-storage=1Gi",
                // only app sets a cpu limit: 1 + 50m overhead
                "limits.cpu=1050m",
                "limits.memory=1600Mi",
                "memory=1088Mi",
                "pods=1",
                "requests.cpu=2050m",
                "requests.ephemeral-storage=1Gi",
                "requests.memory=1088Mi",
            ]
        );
    }

    #[test]
    fn terminal_pods_only_count_as_objects() {
        for phase in ["Succeeded", "Failed"] {
            let pod = json!({"status": {"phase": phase}, "spec": {"containers": [
                {"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
            assert_eq!(printed(&usage("", "pods", &pod)), ["count/pods=1"]);
        }
    }

    #[test]
    fn virtual_machines_are_counted() {
        let vm = json!({"metadata": {"name": "vm"}, "spec": {"running": true}});
        assert_eq!(
            printed(&usage("kubevirt.io", "virtualmachines", &vm)),
            ["count/virtualmachines.kubevirt.io=1"]
        );
        assert_eq!(
            printed(&usage("", "secrets", &vm)),
            ["count/secrets=1", "secrets=1"]
        );
        assert_eq!(
            object_count_name("apps", "deployments"),
            "count/deployments.apps"
        );
    }

    #[test]
    fn malformed_input_never_panics() {
        for object in [
            json!(null),
            json!([1, 2]),
            json!({"spec": {"containers": {"a": 1}, "overhead": "x"}}),
            json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "??"}}}]}}),
            json!({"metadata": {"deletionTimestamp": 5, "deletionGracePeriodSeconds": "x"}}),
        ] {
            for resource in ["pods", "services", "persistentvolumeclaims", "configmaps"] {
                let _ = usage("", resource, &object);
            }
            let _ = status(&object, &[("".into(), "pods".into(), object.clone())]);
        }
        let pod = json!({"spec": {"containers": [{"name": "a",
            "resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}]}});
        assert_eq!(
            printed(&usage("", "pods", &pod)),
            [
                "count/pods=1",
                "cpu=0",
                "memory=1Gi",
                "pods=1",
                "requests.cpu=0",
                "requests.memory=1Gi"
            ]
        );
    }
}
