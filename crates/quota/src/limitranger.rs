//! The LimitRanger admission plugin: default container resources from a namespace's
//! LimitRanges, then enforce their min, max and limit/request ratio on containers, pods and
//! claims.

use std::collections::BTreeSet;

use kubevirt_api::quantity::Quantity;
use serde_json::{Map, Value};

use crate::pod::{aggregate, containers};
use crate::resources::{resource_list, ResourceList};

/// The annotation recording what LimitRanger defaulted.
const LIMIT_RANGER_ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// apimachinery's `MaxMilliValue`: above it, milli values overflow and whole units are compared.
const MAX_MILLI_VALUE: i64 = i64::MAX / 1000;

/// One broken LimitRange rule; the texts are kube-apiserver's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitRangeViolation {
    #[error("minimum {resource} usage per {kind} is {min}.  No request is specified")]
    MinNoRequest {
        resource: String,
        kind: String,
        min: String,
    },
    #[error("minimum {resource} usage per {kind} is {min}, but request is {request}")]
    MinRequest {
        resource: String,
        kind: String,
        min: String,
        request: String,
    },
    #[error("minimum {resource} usage per {kind} is {min}, but limit is {limit}")]
    MinLimit {
        resource: String,
        kind: String,
        min: String,
        limit: String,
    },
    #[error("maximum {resource} usage per {kind} is {max}.  No limit is specified")]
    MaxNoLimit {
        resource: String,
        kind: String,
        max: String,
    },
    #[error("maximum {resource} usage per {kind} is {max}.  No request is specified")]
    MaxNoRequest {
        resource: String,
        kind: String,
        max: String,
    },
    #[error("maximum {resource} usage per {kind} is {max}, but limit is {limit}")]
    MaxLimit {
        resource: String,
        kind: String,
        max: String,
        limit: String,
    },
    #[error("maximum {resource} usage per {kind} is {max}, but request is {request}")]
    MaxRequest {
        resource: String,
        kind: String,
        max: String,
        request: String,
    },
    #[error("{resource} max limit to request ratio per {kind} is {ratio}, but no request is specified or request is 0")]
    RatioNoRequest {
        resource: String,
        kind: String,
        ratio: String,
    },
    #[error("{resource} max limit to request ratio per {kind} is {ratio}, but no limit is specified or limit is 0")]
    RatioNoLimit {
        resource: String,
        kind: String,
        ratio: String,
    },
    #[error("{resource} max limit to request ratio per {kind} is {ratio}, but provided ratio is {observed:.6}")]
    Ratio {
        resource: String,
        kind: String,
        ratio: String,
        observed: f64,
    },
}

/// Everything one LimitRange found wrong, printed like apimachinery's error aggregate: one
/// message alone, several as `[first, second]` with duplicates dropped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", aggregate_message(.violations))]
pub struct LimitRangeError {
    pub violations: Vec<LimitRangeViolation>,
}

fn aggregate_message(violations: &[LimitRangeViolation]) -> String {
    let mut seen = BTreeSet::new();
    let messages: Vec<String> = violations
        .iter()
        .map(ToString::to_string)
        .filter(|m| seen.insert(m.clone()))
        .collect();
    match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// LimitRanger for a create of `resource` (`pods` or `persistentvolumeclaims`, core group) in a
/// namespace with `limit_ranges`; other resources pass untouched.
///
/// For pods it first applies the v1 Pod defaulting upstream has done at decode time
/// ([`default_pod_requests`]), then each LimitRange's `Container` `default`/`defaultRequest`
/// (themselves defaulted from `max`/`min` as the API server does when storing a LimitRange) to
/// containers and init containers that lack them, recording what it set in the
/// `kubernetes.io/limit-ranger` annotation, and finally checks `min`/`max`/`maxLimitRequestRatio`
/// of `Container` and `Pod` items. For claims it checks `PersistentVolumeClaim` `min`/`max`
/// against the requested storage. `Err` is upstream's 403 text for the first LimitRange that
/// fails, e.g. `maximum memory usage per Container is 1Gi, but limit is 2Gi`.
///
/// Upstream skips pod updates (containers are immutable) and any object whose old version is
/// being deleted; callers should not call this for those. Rules of one item are checked in
/// resource-name order (upstream's order is Go map order, i.e. random). Not modelled: pod-level
/// `spec.resources` in the `Pod` checks and status-reported (resized) container resources.
pub fn limit_ranges(
    resource: &str,
    object: &mut Value,
    limit_ranges: &[Value],
) -> Result<(), String> {
    check(resource, object, limit_ranges).map_err(|e| e.to_string())
}

/// [`limit_ranges`] with a typed error.
pub fn check(
    resource: &str,
    object: &mut Value,
    limit_ranges: &[Value],
) -> Result<(), LimitRangeError> {
    match resource {
        "pods" => {
            default_pod_requests(object);
            for lr in limit_ranges {
                apply_container_defaults(object, &items(lr));
            }
            for lr in limit_ranges {
                validate_pod(object, &items(lr))?;
            }
            Ok(())
        }
        "persistentvolumeclaims" => {
            for lr in limit_ranges {
                validate_claim(object, &items(lr))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// v1 Pod defaulting of requests: a container (or init container) with a limit but no request
/// for a resource requests its limit, and so does the pod level for cpu, memory and huge pages.
/// Idempotent; values are written in canonical form.
pub fn default_pod_requests(pod: &mut Value) {
    for field in ["containers", "initContainers"] {
        let Some(list) = pod
            .pointer_mut(&format!("/spec/{field}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for container in list {
            if let Some(resources) = container.get_mut("resources") {
                default_requests_from_limits(resources, |_| true);
            }
        }
    }
    if let Some(resources) = pod.pointer_mut("/spec/resources") {
        default_requests_from_limits(resources, |name| {
            name == "cpu" || name == "memory" || name.starts_with("hugepages-")
        });
    }
}

/// Copies `limits` entries accepted by `eligible` into `requests` where missing.
fn default_requests_from_limits(resources: &mut Value, eligible: fn(&str) -> bool) {
    let limits = resource_list(resources.get("limits"));
    let missing: ResourceList = limits
        .into_iter()
        .filter(|(name, _)| eligible(name))
        .filter(|(name, _)| {
            !resources
                .get("requests")
                .and_then(Value::as_object)
                .is_some_and(|r| r.contains_key(name))
        })
        .collect();
    let _ = insert_all(resources, "requests", &missing);
}

/// Inserts `values` (canonical text) into the object at `resources[key]`, creating it when
/// absent or null. `None` when something in the way is not an object (the object is invalid and
/// validation will reject it; nothing is overwritten).
fn insert_all(resources: &mut Value, key: &str, values: &ResourceList) -> Option<()> {
    if values.is_empty() {
        return Some(());
    }
    let resources = resources.as_object_mut()?;
    let target = resources
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if target.is_null() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut()?;
    for (name, q) in values {
        target.insert(name.clone(), Value::String(q.canonical()));
    }
    Some(())
}

/// One `spec.limits` entry of a LimitRange.
struct Item {
    kind: String,
    min: ResourceList,
    max: ResourceList,
    default: ResourceList,
    default_request: ResourceList,
    max_limit_request_ratio: ResourceList,
}

/// The items of a LimitRange, with `Container` defaults filled in as the API server's LimitRange
/// defaulting does: `default` from `max`, then `defaultRequest` from `default` and `min`.
fn items(limit_range: &Value) -> Vec<Item> {
    let Some(list) = limit_range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|item| {
            let mut it = Item {
                kind: item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                min: resource_list(item.get("min")),
                max: resource_list(item.get("max")),
                default: resource_list(item.get("default")),
                default_request: resource_list(item.get("defaultRequest")),
                max_limit_request_ratio: resource_list(item.get("maxLimitRequestRatio")),
            };
            if it.kind == "Container" {
                for (name, q) in &it.max {
                    it.default.entry(name.clone()).or_insert_with(|| q.clone());
                }
                for (name, q) in it.default.iter().chain(&it.min) {
                    it.default_request
                        .entry(name.clone())
                        .or_insert_with(|| q.clone());
                }
            }
            it
        })
        .collect()
}

/// Sets the `Container` defaults of one LimitRange on every container and init container that
/// lacks them, and records them in the annotation (replacing a previous LimitRange's record, as
/// upstream does).
fn apply_container_defaults(pod: &mut Value, items: &[Item]) {
    let mut requests = ResourceList::new();
    let mut limits = ResourceList::new();
    for item in items.iter().filter(|i| i.kind == "Container") {
        requests.extend(item.default_request.clone());
        limits.extend(item.default.clone());
    }
    if requests.is_empty() && limits.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    for (field, label) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(list) = pod
            .pointer_mut(&format!("/spec/{field}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for container in list {
            merge_container(container, &requests, &limits, label, &mut notes);
        }
    }
    if notes.is_empty() {
        return;
    }
    let Some(metadata) = pod.as_object_mut().map(|p| {
        p.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
    }) else {
        return;
    };
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if annotations.is_null() {
        *annotations = Value::Object(Map::new());
    }
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(
            LIMIT_RANGER_ANNOTATION.to_string(),
            Value::String(format!("LimitRanger plugin set: {}", notes.join("; "))),
        );
    }
}

/// Defaults one container, noting `cpu, memory request for container app` style entries.
fn merge_container(
    container: &mut Value,
    requests: &ResourceList,
    limits: &ResourceList,
    label: &str,
    notes: &mut Vec<String>,
) {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(c) = container.as_object_mut() else {
        return;
    };
    let resources = c
        .entry("resources")
        .or_insert_with(|| Value::Object(Map::new()));
    if resources.is_null() {
        *resources = Value::Object(Map::new());
    }
    let missing = |key: &str, defaults: &ResourceList, resources: &Value| -> ResourceList {
        let present = resources.get(key).and_then(Value::as_object);
        defaults
            .iter()
            .filter(|(n, _)| !present.is_some_and(|p| p.contains_key(*n)))
            .map(|(n, q)| (n.clone(), q.clone()))
            .collect()
    };
    let set_limits = missing("limits", limits, resources);
    let set_requests = missing("requests", requests, resources);
    let names = |l: &ResourceList| l.keys().cloned().collect::<Vec<_>>().join(", ");
    if !set_requests.is_empty() && insert_all(resources, "requests", &set_requests).is_some() {
        notes.push(format!(
            "{} request for {label} {name}",
            names(&set_requests)
        ));
    }
    if !set_limits.is_empty() && insert_all(resources, "limits", &set_limits).is_some() {
        notes.push(format!("{} limit for {label} {name}", names(&set_limits)));
    }
    // A container that needed nothing keeps its shape.
    if resources.as_object().is_some_and(Map::is_empty) {
        c.remove("resources");
    }
}

fn validate_pod(pod: &Value, items: &[Item]) -> Result<(), LimitRangeError> {
    let mut violations = Vec::new();
    let mut all = containers(pod, "containers");
    all.extend(containers(pod, "initContainers"));
    for item in items {
        match item.kind.as_str() {
            "Container" => {
                for c in &all {
                    check_item(item, &c.requests, &c.limits, &mut violations);
                }
            }
            "Pod" => {
                let requests = aggregate(pod, |c| &c.requests);
                let limits = aggregate(pod, |c| &c.limits);
                check_item(item, &requests, &limits, &mut violations);
            }
            _ => {}
        }
    }
    into_result(violations)
}

fn validate_claim(pvc: &Value, items: &[Item]) -> Result<(), LimitRangeError> {
    let requests = resource_list(pvc.pointer("/spec/resources/requests"));
    let mut violations = Vec::new();
    for item in items.iter().filter(|i| i.kind == "PersistentVolumeClaim") {
        for (name, min) in &item.min {
            violations.extend(min_constraint(
                &item.kind,
                name,
                min,
                &requests,
                &ResourceList::new(),
            ));
        }
        // Claims have no limits: the max applies to the request.
        for (name, max) in &item.max {
            let kind = &item.kind;
            let Some(request) = requests.get(name) else {
                violations.push(LimitRangeViolation::MaxNoRequest {
                    resource: name.clone(),
                    kind: kind.clone(),
                    max: max.canonical(),
                });
                continue;
            };
            let [observed, enforced] = comparable([request, max]);
            if observed > enforced {
                violations.push(LimitRangeViolation::MaxRequest {
                    resource: name.clone(),
                    kind: kind.clone(),
                    max: max.canonical(),
                    request: request.canonical(),
                });
            }
        }
    }
    into_result(violations)
}

fn into_result(violations: Vec<LimitRangeViolation>) -> Result<(), LimitRangeError> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(LimitRangeError { violations })
    }
}

/// The min, max and ratio rules of one item against one set of requests and limits.
fn check_item(
    item: &Item,
    requests: &ResourceList,
    limits: &ResourceList,
    out: &mut Vec<LimitRangeViolation>,
) {
    for (name, min) in &item.min {
        out.extend(min_constraint(&item.kind, name, min, requests, limits));
    }
    for (name, max) in &item.max {
        out.extend(max_constraint(&item.kind, name, max, requests, limits));
    }
    for (name, ratio) in &item.max_limit_request_ratio {
        out.extend(ratio_constraint(&item.kind, name, ratio, requests, limits));
    }
}

/// Integer values at a common precision: thousandths when none would overflow, else whole units
/// (`requestLimitEnforcedValues`). Missing quantities are zero.
fn comparable<const N: usize>(quantities: [&Quantity; N]) -> [i64; N] {
    if quantities.iter().all(|q| q.value() <= MAX_MILLI_VALUE) {
        quantities.map(Quantity::milli_value)
    } else {
        quantities.map(Quantity::value)
    }
}

fn min_constraint(
    kind: &str,
    name: &str,
    min: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<LimitRangeViolation> {
    let zero = Quantity::default();
    let request = requests.get(name);
    let limit = limits.get(name);
    let [req, lim, enforced] = comparable([request.unwrap_or(&zero), limit.unwrap_or(&zero), min]);
    let (resource, kind, min_text) = (name.to_string(), kind.to_string(), min.canonical());
    let Some(request) = request else {
        return Some(LimitRangeViolation::MinNoRequest {
            resource,
            kind,
            min: min_text,
        });
    };
    if req < enforced {
        return Some(LimitRangeViolation::MinRequest {
            resource,
            kind,
            min: min_text,
            request: request.canonical(),
        });
    }
    match limit {
        Some(limit) if lim < enforced => Some(LimitRangeViolation::MinLimit {
            resource,
            kind,
            min: min_text,
            limit: limit.canonical(),
        }),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    name: &str,
    max: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<LimitRangeViolation> {
    let zero = Quantity::default();
    let request = requests.get(name);
    let limit = limits.get(name);
    let [req, lim, enforced] = comparable([request.unwrap_or(&zero), limit.unwrap_or(&zero), max]);
    let (resource, kind, max_text) = (name.to_string(), kind.to_string(), max.canonical());
    let Some(limit) = limit else {
        return Some(LimitRangeViolation::MaxNoLimit {
            resource,
            kind,
            max: max_text,
        });
    };
    if lim > enforced {
        return Some(LimitRangeViolation::MaxLimit {
            resource,
            kind,
            max: max_text,
            limit: limit.canonical(),
        });
    }
    match request {
        Some(request) if req > enforced => Some(LimitRangeViolation::MaxRequest {
            resource,
            kind,
            max: max_text,
            request: request.canonical(),
        }),
        _ => None,
    }
}

fn ratio_constraint(
    kind: &str,
    name: &str,
    ratio: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<LimitRangeViolation> {
    let zero = Quantity::default();
    let request = requests.get(name);
    let limit = limits.get(name);
    let [req, lim, _] = comparable([request.unwrap_or(&zero), limit.unwrap_or(&zero), ratio]);
    let (resource, kind, ratio_text) = (name.to_string(), kind.to_string(), ratio.canonical());
    if request.is_none() || req == 0 {
        return Some(LimitRangeViolation::RatioNoRequest {
            resource,
            kind,
            ratio: ratio_text,
        });
    }
    if limit.is_none() || lim == 0 {
        return Some(LimitRangeViolation::RatioNoLimit {
            resource,
            kind,
            ratio: ratio_text,
        });
    }
    let observed = lim as f64 / req as f64;
    // Compared in thousandths when the ratio fits, so `1.5` is enforced exactly.
    let (scaled, allowed) = if ratio.value() <= MAX_MILLI_VALUE {
        (observed * 1000.0, ratio.milli_value() as f64)
    } else {
        (observed, ratio.value() as f64)
    };
    (scaled > allowed).then_some(LimitRangeViolation::Ratio {
        resource,
        kind,
        ratio: ratio_text,
        observed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container_range(limit: Value) -> Value {
        json!({"metadata": {"name": "lr"}, "spec": {"limits": [limit]}})
    }

    #[test]
    fn defaults_containers_and_records_them() {
        let lr = container_range(json!({"type": "Container",
            "default": {"cpu": "1", "memory": "512Mi"},
            "defaultRequest": {"cpu": "100m"}}));
        let mut pod = json!({"metadata": {"name": "web"}, "spec": {
            "initContainers": [{"name": "init", "resources": {"limits": {"cpu": "2"}}}],
            "containers": [{"name": "app"}],
        }});
        limit_ranges("pods", &mut pod, &[lr]).unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "100m", "memory": "512Mi"},
                   "limits": {"cpu": "1", "memory": "512Mi"}})
        );
        // The init container's request came from its own limit (pod defaulting) first.
        assert_eq!(
            pod["spec"]["initContainers"][0]["resources"],
            json!({"limits": {"cpu": "2", "memory": "512Mi"},
                   "requests": {"cpu": "2", "memory": "512Mi"}})
        );
        assert_eq!(
            pod["metadata"]["annotations"][LIMIT_RANGER_ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container app; \
             cpu, memory limit for container app; memory request for init container init; \
             memory limit for init container init"
        );
    }

    #[test]
    fn max_violation_message() {
        let lr = container_range(json!({"type": "Container", "max": {"memory": "1Gi"}}));
        let mut pod = json!({"spec": {"containers": [{"name": "app",
            "resources": {"limits": {"memory": "2048Mi"}}}]}});
        assert_eq!(
            limit_ranges("pods", &mut pod, &[lr]).unwrap_err(),
            "maximum memory usage per Container is 1Gi, but limit is 2Gi"
        );
    }

    #[test]
    fn several_violations_are_aggregated() {
        let lr = json!({"spec": {"limits": [
            {"type": "Container", "min": {"cpu": "200m"}, "maxLimitRequestRatio": {"cpu": "2"}},
            {"type": "Pod", "max": {"cpu": "1"}},
        ]}});
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m"}}},
        ]}});
        assert_eq!(
            limit_ranges("pods", &mut pod, &[lr]).unwrap_err(),
            "[minimum cpu usage per Container is 200m, but request is 100m, \
             cpu max limit to request ratio per Container is 2, but provided ratio is 10.000000, \
             cpu max limit to request ratio per Container is 2, but provided ratio is 5.000000, \
             maximum cpu usage per Pod is 1, but limit is 1500m]"
        );
    }

    #[test]
    fn claims_are_bounded_by_request() {
        let lr = json!({"spec": {"limits": [{"type": "PersistentVolumeClaim",
            "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]}});
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        assert!(limit_ranges(
            "persistentvolumeclaims",
            &mut claim("5Gi"),
            std::slice::from_ref(&lr)
        )
        .is_ok());
        assert_eq!(
            limit_ranges(
                "persistentvolumeclaims",
                &mut claim("20Gi"),
                std::slice::from_ref(&lr)
            )
            .unwrap_err(),
            "maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"
        );
        assert_eq!(
            limit_ranges("persistentvolumeclaims", &mut json!({}), &[lr]).unwrap_err(),
            "[minimum storage usage per PersistentVolumeClaim is 1Gi.  No request is specified, \
             maximum storage usage per PersistentVolumeClaim is 10Gi.  No request is specified]"
        );
    }

    #[test]
    fn untrusted_shapes_do_not_panic() {
        let lr = container_range(json!({"type": "Container", "default": {"cpu": "x"}}));
        for mut pod in [
            json!(null),
            json!({"spec": {"containers": "nope"}}),
            json!({"metadata": 3, "spec": {"containers": [7, {"resources": []}, {"resources": null}]}}),
        ] {
            let _ = limit_ranges("pods", &mut pod, std::slice::from_ref(&lr));
        }
        let mut other = json!({"spec": {}});
        assert!(limit_ranges("configmaps", &mut other, &[lr]).is_ok());
    }
}
