//! What the resourcequota controller writes into a quota's `status`: the hard limits and the
//! usage recounted from every object of the namespace.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::evaluator::Evaluator;
use crate::resources::{add, mask, resource_list, to_json, zero, ResourceList};
use crate::scope::quota_selectors;

/// Recomputes a quota's `status` (`{"hard": ..., "used": ...}`, canonical quantities) from the
/// namespace's objects, given as `(group, resource, object)`.
///
/// `hard` is `spec.hard`; `used` has an entry for every hard name. Each name is counted by the
/// evaluator that tracks it: pods, services and claims by their own rules, `configmaps`,
/// `secrets`, `replicationcontrollers`, `resourcequotas` and every `count/<resource>[.<group>]`
/// by counting objects. Scopes (`spec.scopes`, `spec.scopeSelector`) are honoured for pods
/// (`Terminating`, `NotTerminating`, `BestEffort`, `NotBestEffort`, `PriorityClass`,
/// `CrossNamespacePodAffinity`) and claims (`VolumeAttributesClass`); like upstream, a scoped
/// quota counts nothing of other kinds.
///
/// Deviation: a hard name no evaluator tracks (a typo, or a resource nothing counts) keeps its
/// previous `status.used` value like upstream, but gets `0` where upstream would leave it out.
pub fn status(quota: &Value, objects: &[(String, String, Value)]) -> Value {
    status_at(quota, objects, SystemTime::now())
}

/// [`status`] with an explicit clock, which decides whether deleted pods have outlived their
/// grace period.
pub fn status_at(quota: &Value, objects: &[(String, String, Value)], now: SystemTime) -> Value {
    let hard = resource_list(quota.pointer("/spec/hard"));
    let hard_names: Vec<String> = hard.keys().cloned().collect();
    let selectors = quota_selectors(quota);

    let evaluators = registry(&hard_names, objects);
    let tracked: BTreeSet<String> = evaluators
        .iter()
        .flat_map(|e| e.matching_resources(&hard_names))
        .collect();
    let tracked: Vec<String> = tracked.into_iter().collect();

    let mut counted = ResourceList::new();
    for evaluator in &evaluators {
        let names = evaluator.matching_resources(&tracked);
        if names.is_empty() {
            continue;
        }
        let mut used: ResourceList = names.iter().map(|n| (n.clone(), zero())).collect();
        let (group, resource) = evaluator.group_resource();
        for (_, _, object) in objects
            .iter()
            .filter(|(g, r, _)| g == group && r == resource)
        {
            if evaluator.matches_scopes(&selectors, object) {
                used = add(&used, &evaluator.usage(object, now));
            }
        }
        counted = add(&counted, &used);
    }
    let counted = mask(&counted, &tracked);

    let mut used = resource_list(quota.pointer("/status/used"));
    used.extend(counted);
    let mut used = mask(&used, &hard_names);
    for name in &hard_names {
        used.entry(name.clone()).or_insert_with(zero);
    }
    json!({"hard": to_json(&hard), "used": to_json(&used)})
}

/// The evaluators that could count something for this quota: the built-in kinds, every kind
/// present among the objects, and every kind a `count/` name refers to (which counts 0 when no
/// such object exists, as a known but empty kind does upstream).
fn registry(hard_names: &[String], objects: &[(String, String, Value)]) -> Vec<Evaluator> {
    let mut kinds: BTreeSet<(String, String)> = [
        "pods",
        "services",
        "persistentvolumeclaims",
        "configmaps",
        "secrets",
        "replicationcontrollers",
        "resourcequotas",
    ]
    .iter()
    .map(|r| (String::new(), r.to_string()))
    .collect();
    kinds.extend(objects.iter().map(|(g, r, _)| (g.clone(), r.clone())));
    kinds.extend(hard_names.iter().filter_map(|name| {
        let counted = name.strip_prefix("count/")?;
        let (resource, group) = counted.split_once('.').unwrap_or((counted, ""));
        (!resource.is_empty()).then(|| (group.to_string(), resource.to_string()))
    }));
    kinds
        .iter()
        .map(|(g, r)| Evaluator::for_resource(g, r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(group: &str, resource: &str, object: Value) -> (String, String, Value) {
        (group.to_string(), resource.to_string(), object)
    }

    fn pod(memory: &str, extra: Value) -> Value {
        let mut p = json!({"spec": {"containers": [{"name": "app",
            "resources": {"requests": {"cpu": "250m", "memory": memory},
                          "limits": {"memory": memory}}}]}});
        if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(extra.clone());
        }
        p
    }

    #[test]
    fn counts_several_resources() {
        let quota = json!({"spec": {"hard": {
            "pods": "10", "requests.cpu": "2000m", "requests.memory": "4Gi", "limits.memory": "8Gi",
            "count/virtualmachines.kubevirt.io": "3", "configmaps": "5", "services.nodeports": "2",
            "requests.storage": "100Gi", "count/widgets.example.com": "1", "bogus": "1",
        }}, "status": {"used": {"bogus": "7"}}});
        let objects = vec![
            obj("", "pods", pod("512Mi", json!({}))),
            obj("", "pods", pod("512Mi", json!({}))),
            obj(
                "",
                "pods",
                pod("1Gi", json!({"status": {"phase": "Succeeded"}})),
            ),
            obj("kubevirt.io", "virtualmachines", json!({})),
            obj("kubevirt.io", "virtualmachines", json!({})),
            obj("", "configmaps", json!({})),
            obj(
                "",
                "services",
                json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
            ),
            obj(
                "",
                "persistentvolumeclaims",
                json!({"spec": {"resources": {"requests": {"storage": "10Gi"}}}}),
            ),
        ];
        let got = status_at(&quota, &objects, SystemTime::UNIX_EPOCH);
        assert_eq!(
            got,
            json!({
                "hard": {
                    "bogus": "1", "configmaps": "5", "count/virtualmachines.kubevirt.io": "3",
                    "count/widgets.example.com": "1", "limits.memory": "8Gi", "pods": "10",
                    "requests.cpu": "2", "requests.memory": "4Gi", "requests.storage": "100Gi",
                    "services.nodeports": "2",
                },
                "used": {
                    "bogus": "7", "configmaps": "1", "count/virtualmachines.kubevirt.io": "2",
                    "count/widgets.example.com": "0", "limits.memory": "1Gi", "pods": "2",
                    "requests.cpu": "500m", "requests.memory": "1Gi", "requests.storage": "10Gi",
                    "services.nodeports": "1",
                },
            })
        );
    }

    #[test]
    fn scopes_select_pods() {
        let quota = |scope: &str| {
            json!({"spec": {"hard": {"pods": "5", "count/virtualmachines.kubevirt.io": "5"},
                            "scopes": [scope]}})
        };
        let objects = vec![
            obj("", "pods", pod("1Gi", json!({}))),
            obj("", "pods", json!({"spec": {"containers": [{"name": "a"}]}})),
            obj(
                "",
                "pods",
                json!({"spec": {"containers": [{"name": "a"}],
                                            "activeDeadlineSeconds": 60}}),
            ),
            obj("kubevirt.io", "virtualmachines", json!({})),
        ];
        let used = |scope: &str| {
            status_at(&quota(scope), &objects, SystemTime::UNIX_EPOCH)["used"].clone()
        };
        assert_eq!(
            used("BestEffort"),
            json!({"pods": "2", "count/virtualmachines.kubevirt.io": "0"})
        );
        assert_eq!(used("NotBestEffort")["pods"], "1");
        assert_eq!(used("Terminating")["pods"], "1");
        assert_eq!(used("NotTerminating")["pods"], "2");
    }

    #[test]
    fn deleted_pods_past_grace_are_released() {
        let quota = json!({"spec": {"hard": {"pods": "5", "count/pods": "5"}}});
        let deleted = pod(
            "1Gi",
            json!({"metadata": {
            "deletionTimestamp": "1970-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30}}),
        );
        let objects = vec![obj("", "pods", deleted)];
        let at = |secs| {
            status_at(
                &quota,
                &objects,
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )["used"]
                .clone()
        };
        assert_eq!(at(10), json!({"pods": "1", "count/pods": "1"}));
        assert_eq!(at(31), json!({"pods": "0", "count/pods": "1"}));
    }
}
