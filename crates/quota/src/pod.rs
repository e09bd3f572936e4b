//! What a Pod asks for: requests and limits the way `component-helpers/resource` aggregates them,
//! the quota usage `pods.go` derives from them, and the pod facts quota scopes test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde_json::Value;

use crate::resources::{add, add_into, max_into, one, resource_list, ResourceList};
use crate::scope::{label_selector_matches, ScopeSelector};
use crate::time::{parse_rfc3339_nanos, system_time_nanos};

/// The object-count name for pods, charged even for pods that finished.
pub(crate) const POD_COUNT: &str = "count/pods";

/// Resource names the pod evaluator tracks besides the prefixed and extended ones.
pub(crate) const POD_RESOURCES: &[&str] = &[
    POD_COUNT,
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

/// Resource names a quota may name for every size of huge page.
const POD_RESOURCE_PREFIXES: &[&str] = &["hugepages-", "requests.hugepages-"];

/// Upstream's historic mistake, kept for compatibility: when a quota limits one of these, every
/// container must state it (`must specify ...`). No other resource behaves like this.
const VALIDATION_SET: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// One container's name and resources, with requests already defaulted from limits.
pub(crate) struct Container {
    pub name: String,
    pub requests: ResourceList,
    pub limits: ResourceList,
    /// A sidecar: an init container with `restartPolicy: Always`, which keeps running.
    pub restartable: bool,
}

/// The containers (`spec.containers`) or init containers (`spec.initContainers`) of a pod.
///
/// Requests missing for a resource that has a limit take the limit, as v1 Pod defaulting does at
/// decode time; upstream's quota and LimitRanger only ever see defaulted pods.
pub(crate) fn containers(pod: &Value, field: &str) -> Vec<Container> {
    let Some(list) = pod
        .pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|c| {
            let limits = resource_list(c.pointer("/resources/limits"));
            let mut requests = resource_list(c.pointer("/resources/requests"));
            for (name, q) in &limits {
                requests.entry(name.clone()).or_insert_with(|| q.clone());
            }
            Container {
                name: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                requests,
                limits,
                restartable: c.get("restartPolicy").and_then(Value::as_str) == Some("Always"),
            }
        })
        .collect()
}

/// Resources that may be set for the whole pod (`spec.resources`): cpu, memory and huge pages.
fn is_pod_level_resource(name: &str) -> bool {
    name == "cpu" || name == "memory" || name.starts_with("hugepages-")
}

/// Pod-level requests and limits (`spec.resources`), requests defaulted from limits for the
/// supported resources as v1 defaulting does.
fn pod_level(pod: &Value) -> (ResourceList, ResourceList) {
    let limits = resource_list(pod.pointer("/spec/resources/limits"));
    let mut requests = resource_list(pod.pointer("/spec/resources/requests"));
    for (name, q) in &limits {
        if is_pod_level_resource(name) {
            requests.entry(name.clone()).or_insert_with(|| q.clone());
        }
    }
    (requests, limits)
}

/// Sum of the containers, raised to what any init container needs while it runs (itself plus
/// the sidecars started before it); sidecars also add to the total since they keep running.
pub(crate) fn aggregate(pod: &Value, pick: fn(&Container) -> &ResourceList) -> ResourceList {
    let mut result = ResourceList::new();
    for c in containers(pod, "containers") {
        add_into(&mut result, pick(&c));
    }
    let mut sidecars = ResourceList::new();
    let mut init_peak = ResourceList::new();
    for c in containers(pod, "initContainers") {
        let while_running = if c.restartable {
            add_into(&mut result, pick(&c));
            add_into(&mut sidecars, pick(&c));
            sidecars.clone()
        } else {
            add(pick(&c), &sidecars)
        };
        max_into(&mut init_peak, &while_running);
    }
    max_into(&mut result, &init_peak);
    result
}

/// The pod's effective requests (`PodRequests`): containers as in [`aggregate`], replaced by the
/// pod-level value where one is set, plus `spec.overhead`.
pub(crate) fn pod_requests(pod: &Value) -> ResourceList {
    let mut requests = aggregate(pod, |c| &c.requests);
    let (pod_requests, _) = pod_level(pod);
    for (name, q) in pod_requests {
        if is_pod_level_resource(&name) {
            requests.insert(name, q);
        }
    }
    add_into(&mut requests, &resource_list(pod.pointer("/spec/overhead")));
    requests
}

/// The pod's effective limits (`PodLimits`): as [`pod_requests`], except that the overhead only
/// raises limits that are set and not zero (an absent limit means unlimited).
pub(crate) fn pod_limits(pod: &Value) -> ResourceList {
    let mut limits = aggregate(pod, |c| &c.limits);
    let (pod_requests, pod_limits) = pod_level(pod);
    let pod_level_set = pod_requests
        .keys()
        .chain(pod_limits.keys())
        .any(|n| is_pod_level_resource(n));
    if pod_level_set {
        for (name, q) in pod_limits {
            if is_pod_level_resource(&name) {
                limits.insert(name, q);
            }
        }
    }
    for (name, q) in resource_list(pod.pointer("/spec/overhead")) {
        if let Some(limit) = limits.get_mut(&name) {
            if !limit.is_zero() {
                *limit = crate::resources::plus(limit, &q);
            }
        }
    }
    limits
}

/// A resource that is not built into Kubernetes (`example.com/gpu`), which quota only tracks as
/// `requests.<name>` because such resources cannot be overcommitted.
fn is_extended_resource(name: &str) -> bool {
    !is_native_resource(name)
        && !name.starts_with("requests.")
        && is_qualified_name(&format!("requests.{name}"))
}

/// Built-in resources have no domain, or a `kubernetes.io/` one.
fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// A quota name for an extended resource (`requests.example.com/gpu`).
fn is_extended_quota_name(name: &str) -> bool {
    !is_native_resource(name) && name.starts_with("requests.")
}

/// apimachinery's `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
fn is_qualified_name(value: &str) -> bool {
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return false;
        }
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    !name.is_empty()
        && name.len() <= 63
        && alnum(name.bytes().next())
        && alnum(name.bytes().last())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The quota names in `input` that the pod evaluator tracks.
pub(crate) fn matching_resources(input: &[String]) -> Vec<String> {
    input
        .iter()
        .filter(|name| {
            POD_RESOURCES.contains(&name.as_str())
                || POD_RESOURCE_PREFIXES.iter().any(|p| name.starts_with(p))
                || is_extended_quota_name(name)
        })
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The quota usage of a set of requests and limits (`podComputeUsageHelper`), for one container
/// or for the whole pod.
pub(crate) fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut result = ResourceList::new();
    result.insert("pods".to_string(), one());
    for resource in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(resource) {
            result.insert(resource.to_string(), q.clone());
            result.insert(format!("requests.{resource}"), q.clone());
        }
        if let Some(q) = limits.get(resource) {
            result.insert(format!("limits.{resource}"), q.clone());
        }
    }
    for (name, q) in requests {
        if name.starts_with("hugepages-") {
            result.insert(name.clone(), q.clone());
            result.insert(format!("requests.{name}"), q.clone());
        }
        if is_extended_resource(name) {
            result.insert(format!("requests.{name}"), q.clone());
        }
    }
    result
}

/// Whether a pod is still charged for compute resources (`QuotaV1Pod`): not once it has finished
/// (`Succeeded`/`Failed`), nor once it has outlived its deletion grace period (a lost node must
/// not block the replacement pods).
///
/// An unreadable `deletionTimestamp` keeps the pod charged: upstream could not have decoded such
/// a pod at all, and over-counting is the safe side.
pub(crate) fn is_charged(pod: &Value, now: SystemTime) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    let deletion = pod
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str);
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    if let (Some(deletion), Some(grace)) = (deletion, grace) {
        if let Some(deleted_at) = parse_rfc3339_nanos(deletion) {
            let deadline = deleted_at + i128::from(grace) * 1_000_000_000;
            if system_time_nanos(now) > deadline {
                return false;
            }
        }
    }
    true
}

/// The quota usage of a pod (`PodUsageFunc`): `count/pods` always; `pods` and compute resources
/// only while [`is_charged`].
pub(crate) fn usage(pod: &Value, now: SystemTime) -> ResourceList {
    let mut result = ResourceList::new();
    result.insert(POD_COUNT.to_string(), one());
    if !is_charged(pod, now) {
        return result;
    }
    add(
        &result,
        &compute_usage(&pod_requests(pod), &pod_limits(pod)),
    )
}

/// True when the pod has a deadline (`activeDeadlineSeconds >= 0`), the `Terminating` scope.
fn is_terminating(pod: &Value) -> bool {
    pod.pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s >= 0)
}

/// True for the BestEffort QoS class: the recorded `status.qosClass` if any, else no positive
/// cpu or memory request or limit (pod-level resources decide alone when `spec.resources` is set).
pub(crate) fn is_best_effort(pod: &Value) -> bool {
    if let Some(class) = pod
        .pointer("/status/qosClass")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        return class == "BestEffort";
    }
    let positive_cpu_or_memory = |list: &ResourceList| {
        ["cpu", "memory"]
            .iter()
            .any(|r| list.get(*r).is_some_and(|q| q > &crate::resources::zero()))
    };
    if pod.pointer("/spec/resources").is_some_and(|r| !r.is_null()) {
        let requests = resource_list(pod.pointer("/spec/resources/requests"));
        let limits = resource_list(pod.pointer("/spec/resources/limits"));
        return !positive_cpu_or_memory(&requests) && !positive_cpu_or_memory(&limits);
    }
    let mut all = containers(pod, "containers");
    all.extend(containers(pod, "initContainers"));
    !all.iter()
        .any(|c| positive_cpu_or_memory(&c.requests) || positive_cpu_or_memory(&c.limits))
}

/// True when an affinity term reaches other namespaces (`namespaces` or `namespaceSelector`
/// set), the `CrossNamespacePodAffinity` scope.
fn uses_cross_namespace_affinity(pod: &Value) -> bool {
    let term_crosses = |term: &Value| {
        term.get("namespaces")
            .and_then(Value::as_array)
            .is_some_and(|n| !n.is_empty())
            || term.get("namespaceSelector").is_some_and(|s| !s.is_null())
    };
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(affinity) = pod.pointer(&format!("/spec/affinity/{kind}")) else {
            return false;
        };
        let required = affinity
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .is_some_and(|terms| terms.iter().any(term_crosses));
        let preferred = affinity
            .get("preferredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .is_some_and(|terms| {
                terms
                    .iter()
                    .filter_map(|t| t.get("podAffinityTerm"))
                    .any(term_crosses)
            });
        required || preferred
    })
}

/// Whether a pod falls in a quota scope (`podMatchesScopeFunc`). The four classic scopes ignore
/// the operator, as upstream does; unknown scopes match nothing.
pub(crate) fn matches_scope(selector: &ScopeSelector, pod: &Value) -> bool {
    match selector.scope_name.as_str() {
        "Terminating" => is_terminating(pod),
        "NotTerminating" => !is_terminating(pod),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "PriorityClass" => {
            let class = pod
                .pointer("/spec/priorityClassName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if selector.operator == "Exists" {
                return !class.is_empty();
            }
            let labels: BTreeMap<&str, &str> = if class.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([("PriorityClass", class)])
            };
            label_selector_matches(selector, &labels)
        }
        "CrossNamespacePodAffinity" => uses_cross_namespace_affinity(pod),
        _ => false,
    }
}

/// The backward-compatible rule that every container states the cpu/memory resources a quota
/// limits (`podEvaluator.Constraints`). `Err` carries upstream's text after `failed quota: <name>: `,
/// e.g. `must specify limits.cpu for: app; requests.memory for: app,init`.
pub(crate) fn constraints(required: &[String], pod: &Value) -> Result<(), String> {
    let required: BTreeSet<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| VALIDATION_SET.contains(r))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut all = containers(pod, "containers");
    all.extend(containers(pod, "initContainers"));
    for c in &all {
        let provided = compute_usage(&c.requests, &c.limits);
        for resource in &required {
            if !provided.contains_key(*resource) {
                missing.entry(resource).or_default().insert(c.name.clone());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(resource, names)| {
            format!(
                "{resource} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::pretty_print;
    use serde_json::json;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn sidecars_add_and_init_containers_take_the_peak() {
        let pod = json!({"spec": {
            "initContainers": [
                {"name": "side", "restartPolicy": "Always",
                 "resources": {"requests": {"cpu": "100m"}}},
                {"name": "init", "resources": {"requests": {"cpu": "2"}}},
            ],
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "500m"}}}],
        }});
        // Containers 500m + sidecar 100m = 600m; the init container needs 2 + 100m while running.
        assert_eq!(pretty_print(&pod_requests(&pod)), "cpu=2100m");
    }

    #[test]
    fn pod_level_resources_replace_container_sums() {
        let pod = json!({"spec": {
            "resources": {"limits": {"memory": "4Gi"}},
            "containers": [{"name": "app", "resources": {"requests": {"memory": "1Gi", "cpu": "1"}}}],
        }});
        assert_eq!(pretty_print(&pod_requests(&pod)), "cpu=1,memory=4Gi");
        assert_eq!(pretty_print(&pod_limits(&pod)), "memory=4Gi");
    }

    #[test]
    fn overhead_raises_only_set_limits() {
        let pod = json!({"spec": {
            "overhead": {"cpu": "250m", "memory": "120Mi"},
            "containers": [{"name": "app", "resources": {"limits": {"cpu": "1"}}}],
        }});
        assert_eq!(pretty_print(&pod_limits(&pod)), "cpu=1250m");
        assert_eq!(pretty_print(&pod_requests(&pod)), "cpu=1250m,memory=120Mi");
    }

    #[test]
    fn deletion_past_grace_is_not_charged() {
        let pod = |ts: &str| json!({"metadata": {"deletionTimestamp": ts, "deletionGracePeriodSeconds": 30}});
        // now = 2023-11-14T22:13:20Z
        assert!(!is_charged(&pod("2023-11-14T22:12:00Z"), now()));
        assert!(is_charged(&pod("2023-11-14T22:13:00Z"), now()));
        assert!(is_charged(&pod("yesterday"), now()));
        assert!(!is_charged(&json!({"status": {"phase": "Failed"}}), now()));
    }

    #[test]
    fn scopes() {
        let best_effort =
            json!({"spec": {"containers": [{"name": "a"}], "activeDeadlineSeconds": 0}});
        let burstable = json!({"spec": {"containers": [{"name": "a",
            "resources": {"limits": {"memory": "1Gi"}}}], "priorityClassName": "high"}});
        let s = |name: &str, op: &str, values: &[&str]| ScopeSelector {
            scope_name: name.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(matches_scope(&s("BestEffort", "Exists", &[]), &best_effort));
        assert!(matches_scope(
            &s("Terminating", "Exists", &[]),
            &best_effort
        ));
        assert!(matches_scope(
            &s("NotBestEffort", "Exists", &[]),
            &burstable
        ));
        assert!(matches_scope(
            &s("NotTerminating", "Exists", &[]),
            &burstable
        ));
        assert!(matches_scope(
            &s("PriorityClass", "In", &["high"]),
            &burstable
        ));
        assert!(!matches_scope(
            &s("PriorityClass", "In", &["high"]),
            &best_effort
        ));
        assert!(matches_scope(
            &s("PriorityClass", "NotIn", &["high"]),
            &best_effort
        ));
        assert!(!matches_scope(
            &s("PriorityClass", "Exists", &[]),
            &best_effort
        ));
        let recorded = json!({"status": {"qosClass": "BestEffort"},
            "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        assert!(is_best_effort(&recorded), "the recorded class wins");
    }

    #[test]
    fn extended_resources_are_tracked_as_requests() {
        let requests = resource_list(Some(
            &json!({"example.com/gpu": "2", "hugepages-2Mi": "4Mi"}),
        ));
        let usage = compute_usage(&requests, &ResourceList::new());
        assert_eq!(
            pretty_print(&usage),
            "hugepages-2Mi=4Mi,pods=1,requests.example.com/gpu=2,requests.hugepages-2Mi=4Mi"
        );
        assert!(!is_extended_resource("kubernetes.io/foo"));
        assert!(!is_extended_resource("Bad_Domain/x"));
    }
}
