//! The ResourceQuota admission check (apiserver's `admission/plugin/resourcequota`): does a
//! create or update fit every quota of its namespace, and what do the quotas use afterwards.

use std::time::SystemTime;

use serde_json::Value;

use crate::evaluator::Evaluator;
use crate::resources::{
    add, mask, pretty_print, remove_zeros, resource_list, subtract_non_negative, to_json,
    ResourceList,
};
use crate::scope::quota_selectors;

/// What the admission check needs to know about the object being created or updated.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// API group, `""` for core.
    pub group: &'a str,
    /// Plural resource name, e.g. `pods`, `virtualmachines`.
    pub resource: &'a str,
    /// The object as it would be stored.
    pub object: &'a Value,
    /// The stored object, for updates (`None` for creates).
    pub old: Option<&'a Value>,
}

/// Why a quota refuses a request; the texts are kube-apiserver's (the part after
/// `<resource> "<name>" is forbidden: `, see [`forbidden_message`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The request would take usage above a hard limit.
    #[error("exceeded quota: {quota}, requested: {requested}, used: {used}, limited: {limited}")]
    Exceeded {
        quota: String,
        /// `name=quantity` pairs of the exceeded resources, sorted, comma separated.
        requested: String,
        used: String,
        limited: String,
    },
    /// A pod container does not state a cpu/memory resource the quota limits.
    #[error("failed quota: {quota}: {detail}")]
    Constraint { quota: String, detail: String },
    /// The quota's `status.used` lacks a resource it limits (the controller has not counted yet).
    #[error("status unknown for quota: {quota}, resources: {resources}")]
    StatusUnknown { quota: String, resources: String },
    /// The object asks for a negative amount of something.
    #[error("quota usage is negative for resource(s): {resources}")]
    NegativeUsage { resources: String },
}

/// The ResourceQuota admission check for creating (or updating) `subject` against the namespace's
/// `quotas` (with their current `status`).
///
/// `Ok` lists, for each quota whose usage the request changes, its name and new `status.used`
/// (canonical quantities); the caller writes them back before admitting the next request so that
/// two creates cannot both fit the last slot. `Err` is kube-apiserver's 403 text, e.g.
/// `exceeded quota: q, requested: requests.memory=1Gi, used: requests.memory=1536Mi, limited:
/// requests.memory=2Gi`.
///
/// Like upstream, a quota takes part only through `status.hard` (a quota the controller has not
/// synced yet limits nothing), pods are checked on create only (the `resize` subresource is not
/// modelled), object counts on create only, services and claims on create and update, where an
/// update is charged the growth over `old`. Not supported: the plugin's `limitedResources`
/// configuration (resources that may only be consumed under a covering quota).
pub fn admit(subject: &Subject, quotas: &[Value]) -> Result<Vec<(String, Value)>, String> {
    check_request(subject, quotas, SystemTime::now()).map_err(|e| e.to_string())
}

/// [`admit`] with a typed error and an explicit clock (which only matters for an update whose
/// old pod was already deleted).
pub fn check_request(
    subject: &Subject,
    quotas: &[Value],
    now: SystemTime,
) -> Result<Vec<(String, Value)>, AdmissionError> {
    let evaluator = Evaluator::for_resource(subject.group, subject.resource);
    if subject.old.is_some() && !evaluator.tracks_updates() {
        return Ok(Vec::new());
    }

    // The quotas that track this object; the first one the object cannot satisfy refuses it.
    let mut tracking = Vec::new();
    for quota in quotas {
        let name = quota_name(quota);
        let hard = resource_list(quota.pointer("/status/hard"));
        let hard_names: Vec<String> = hard.keys().cloned().collect();
        let restricted = evaluator.matching_resources(&hard_names);
        if restricted.is_empty()
            || !evaluator.matches_scopes(&quota_selectors(quota), subject.object)
        {
            continue;
        }
        evaluator
            .constraints(&restricted, subject.object)
            .map_err(|detail| AdmissionError::Constraint {
                quota: name.clone(),
                detail,
            })?;
        let used = resource_list(quota.pointer("/status/used"));
        if restricted.iter().any(|r| !used.contains_key(r)) {
            return Err(AdmissionError::StatusUnknown {
                quota: name,
                resources: restricted.join(","),
            });
        }
        tracking.push(Tracking {
            quota,
            name,
            hard,
            used,
        });
    }

    let input_usage = evaluator.usage(subject.object, now);
    let negative: Vec<&str> = input_usage
        .iter()
        .filter(|(_, q)| q.is_negative())
        .map(|(k, _)| k.as_str())
        .collect();
    if !negative.is_empty() {
        return Err(AdmissionError::NegativeUsage {
            resources: negative.join(","),
        });
    }

    // An update is charged what it adds over the old object, for quotas that tracked the old
    // object too; an old object without resourceVersion may be a create-on-update, billed whole.
    let update_delta = subject
        .old
        .filter(|old| {
            old.pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|rv| !rv.is_empty())
        })
        .map(|old| {
            (
                old,
                subtract_non_negative(&input_usage, &evaluator.usage(old, now)),
            )
        });

    let mut updates = Vec::new();
    for t in &tracking {
        let delta = match &update_delta {
            Some((old, delta)) if quota_tracks(&evaluator, t.quota, old) => delta,
            _ => &input_usage,
        };
        let delta = remove_zeros(delta);
        if delta.is_empty() {
            continue;
        }
        let requested = mask(&delta, t.hard.keys());
        let new_used = add(&t.used, &requested);
        let exceeded: Vec<&String> = requested
            .keys()
            .filter(|k| match (new_used.get(*k), t.hard.get(*k)) {
                (Some(used), Some(hard)) => used > hard,
                _ => false,
            })
            .collect();
        if !exceeded.is_empty() {
            return Err(AdmissionError::Exceeded {
                quota: t.name.clone(),
                requested: pretty_print(&mask(&requested, exceeded.iter().copied())),
                used: pretty_print(&mask(&t.used, exceeded.iter().copied())),
                limited: pretty_print(&mask(&t.hard, exceeded.iter().copied())),
            });
        }
        if !same_usage(&new_used, &t.used) {
            updates.push((t.name.clone(), to_json(&new_used)));
        }
    }
    Ok(updates)
}

/// A quota that tracks the subject, with its parsed status.
struct Tracking<'a> {
    quota: &'a Value,
    name: String,
    hard: ResourceList,
    used: ResourceList,
}

fn quota_name(quota: &Value) -> String {
    quota
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Whether a quota tracks `object` (`evaluator.Matches`): it limits something the evaluator
/// counts and the object is in all its scopes.
fn quota_tracks(evaluator: &Evaluator, quota: &Value, object: &Value) -> bool {
    let hard: Vec<String> = resource_list(quota.pointer("/status/hard"))
        .into_keys()
        .collect();
    !evaluator.matching_resources(&hard).is_empty()
        && evaluator.matches_scopes(&quota_selectors(quota), object)
}

/// Numeric equality of two usage lists (`quota.Equals`).
fn same_usage(a: &ResourceList, b: &ResourceList) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// The name upstream puts in a refusal: the object's name, its `generateName` before a name is
/// generated, or `Unknown`.
pub fn object_name(object: &Value) -> String {
    ["/metadata/name", "/metadata/generateName"]
        .iter()
        .filter_map(|p| object.pointer(p).and_then(Value::as_str))
        .find(|n| !n.is_empty())
        .unwrap_or("Unknown")
        .to_string()
}

/// kube-apiserver's full 403 message for an admission refusal (`apierrors.NewForbidden`):
/// `<resource>.<group> "<name>" is forbidden: <msg>` (`pods "web" is forbidden: ...` for core),
/// `<resource> is forbidden: <msg>` without a name, `forbidden: <msg>` without a resource.
/// `resource_qualified` is `resource` or `resource.group`; the name is quoted like Go's `%q`.
pub fn forbidden_message(resource_qualified: &str, name: &str, msg: &str) -> String {
    if resource_qualified.is_empty() {
        format!("forbidden: {msg}")
    } else if name.is_empty() {
        format!("{resource_qualified} is forbidden: {msg}")
    } else {
        format!(
            "{resource_qualified} {} is forbidden: {msg}",
            go_quote(name)
        )
    }
}

/// Go's `strconv.Quote`: double quotes, backslash escapes, non-printable characters as `\x`/`\u`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH
    }

    fn quota(name: &str, hard: Value, used: Value) -> Value {
        json!({"metadata": {"name": name}, "spec": {"hard": hard},
               "status": {"hard": hard, "used": used}})
    }

    fn pod(name: &str, memory: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [
            {"name": "app", "resources": {"requests": {"memory": memory, "cpu": "100m"},
                                          "limits": {"memory": memory}}}]}})
    }

    fn create<'a>(group: &'a str, resource: &'a str, object: &'a Value) -> Subject<'a> {
        Subject {
            group,
            resource,
            object,
            old: None,
        }
    }

    #[test]
    fn object_count_exceeded_message() {
        let q = quota(
            "vms",
            json!({"count/virtualmachines.kubevirt.io": "2"}),
            json!({"count/virtualmachines.kubevirt.io": "2"}),
        );
        let vm = json!({"metadata": {"name": "vm3"}});
        let err = admit(&create("kubevirt.io", "virtualmachines", &vm), &[q]).unwrap_err();
        assert_eq!(
            err,
            "exceeded quota: vms, requested: count/virtualmachines.kubevirt.io=1, \
             used: count/virtualmachines.kubevirt.io=2, limited: count/virtualmachines.kubevirt.io=2"
        );
        assert_eq!(
            forbidden_message("virtualmachines.kubevirt.io", &object_name(&vm), &err),
            "virtualmachines.kubevirt.io \"vm3\" is forbidden: exceeded quota: vms, \
             requested: count/virtualmachines.kubevirt.io=1, used: \
             count/virtualmachines.kubevirt.io=2, limited: count/virtualmachines.kubevirt.io=2"
        );
    }

    #[test]
    fn memory_exceeded_message_uses_canonical_quantities() {
        let q = quota(
            "mem",
            json!({"requests.memory": "2048Mi", "pods": "10"}),
            json!({"requests.memory": "1.5Gi", "pods": "1"}),
        );
        let p = pod("web", "1024Mi");
        let err = admit(&create("", "pods", &p), &[q]).unwrap_err();
        assert_eq!(
            err,
            "exceeded quota: mem, requested: requests.memory=1Gi, used: requests.memory=1536Mi, \
             limited: requests.memory=2Gi"
        );
        assert_eq!(
            forbidden_message("pods", "web", &err),
            format!("pods \"web\" is forbidden: {err}")
        );
    }

    #[test]
    fn admitted_create_returns_incremented_usage() {
        let q = quota(
            "compute",
            json!({"requests.memory": "2Gi", "pods": "10", "count/virtualmachines.kubevirt.io": "5"}),
            json!({"requests.memory": "0", "pods": "0", "count/virtualmachines.kubevirt.io": "0"}),
        );
        let p = pod("web", "1Gi");
        let got = admit(&create("", "pods", &p), std::slice::from_ref(&q)).unwrap();
        assert_eq!(
            got,
            vec![(
                "compute".to_string(),
                json!({"count/virtualmachines.kubevirt.io": "0", "pods": "1",
                       "requests.memory": "1Gi"})
            )]
        );
        // A quota that tracks nothing of this kind is left alone.
        let cm = json!({"metadata": {"name": "c"}});
        assert_eq!(admit(&create("", "configmaps", &cm), &[q]).unwrap(), vec![]);
    }

    #[test]
    fn must_specify_names_resources_and_containers() {
        let q = quota(
            "compute",
            json!({"limits.cpu": "4", "requests.memory": "4Gi", "requests.storage": "1Ti"}),
            json!({"limits.cpu": "0", "requests.memory": "0", "requests.storage": "0"}),
        );
        let p = json!({"metadata": {"name": "web"}, "spec": {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "app", "resources": {"requests": {"memory": "1Gi"}}}],
        }});
        let err = admit(&create("", "pods", &p), &[q]).unwrap_err();
        assert_eq!(
            err,
            "failed quota: compute: must specify limits.cpu for: app,init; requests.memory for: init"
        );
    }

    #[test]
    fn unsynced_status_and_scopes() {
        let mut q = quota("q", json!({"pods": "1"}), json!({}));
        let p = pod("web", "1Gi");
        assert_eq!(
            admit(&create("", "pods", &p), std::slice::from_ref(&q)).unwrap_err(),
            "status unknown for quota: q, resources: pods"
        );
        // A BestEffort-scoped quota does not track a pod with requests.
        q["spec"]["scopes"] = json!(["BestEffort"]);
        assert_eq!(admit(&create("", "pods", &p), &[q]).unwrap(), vec![]);
    }

    #[test]
    fn updates_are_charged_the_growth() {
        let q = quota(
            "storage",
            json!({"requests.storage": "10Gi"}),
            json!({"requests.storage": "8Gi"}),
        );
        let pvc = |size: &str| {
            json!({"metadata": {"name": "disk", "resourceVersion": "7"},
                   "spec": {"resources": {"requests": {"storage": size}}}})
        };
        let (old, new) = (pvc("8Gi"), pvc("10Gi"));
        let update = Subject {
            group: "",
            resource: "persistentvolumeclaims",
            object: &new,
            old: Some(&old),
        };
        assert_eq!(
            check_request(&update, std::slice::from_ref(&q), now()).unwrap(),
            vec![("storage".to_string(), json!({"requests.storage": "10Gi"}))]
        );
        let bigger = pvc("11Gi");
        let update = Subject {
            object: &bigger,
            ..update
        };
        assert_eq!(
            check_request(&update, &[q], now()).unwrap_err().to_string(),
            "exceeded quota: storage, requested: requests.storage=3Gi, used: \
             requests.storage=8Gi, limited: requests.storage=10Gi"
        );
    }

    #[test]
    fn negative_requests_are_refused() {
        let q = quota(
            "q",
            json!({"requests.cpu": "1"}),
            json!({"requests.cpu": "0"}),
        );
        let p = json!({"spec": {"containers": [{"name": "a",
            "resources": {"requests": {"cpu": "-1"}}}]}});
        assert_eq!(
            admit(&create("", "pods", &p), &[q]).unwrap_err(),
            "quota usage is negative for resource(s): cpu,requests.cpu"
        );
    }

    #[test]
    fn forbidden_wrapper_forms() {
        assert_eq!(forbidden_message("", "x", "m"), "forbidden: m");
        assert_eq!(forbidden_message("pods", "", "m"), "pods is forbidden: m");
        assert_eq!(
            forbidden_message("pods", "a\"b\n", "m"),
            "pods \"a\\\"b\\n\" is forbidden: m"
        );
        assert_eq!(
            object_name(&json!({"metadata": {"generateName": "web-"}})),
            "web-"
        );
        assert_eq!(object_name(&json!(null)), "Unknown");
    }
}
