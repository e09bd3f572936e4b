//! Writing a typed status without clobbering anyone else's.
//!
//! Several components write one object's status (the VMI controller and the node agent both
//! write VMI status). [`status_patch`] turns "the status I read" and "the status I want" into
//! an RFC 6902 JSON patch on `/status` that touches only the top-level fields that changed,
//! guarded by a `test` of the resourceVersion that was read: if anyone changed the object
//! meanwhile the patch fails and the reconcile runs again on fresh data. (Testing the old
//! field values instead would compare the typed re-serialisation with the stored JSON, which
//! differ in harmless ways such as `null` fields.) Fields that become empty are removed, so
//! false/empty values are omitted as upstream's `omitempty` does.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::{api_call, ApiCallError};

fn as_object(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(Value::as_object)
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch that turns `current` (the object's status as read, if any) into `desired`.
/// `resource_version` guards the case of an object that had no status at all. None when
/// nothing changes.
pub fn status_patch(
    current: Option<&Value>,
    desired: &Value,
    resource_version: Option<&str>,
) -> Option<Value> {
    let empty = Map::new();
    let desired = as_object(Some(desired)).unwrap_or(&empty);
    let guard =
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version});
    let Some(current) = as_object(current) else {
        if desired.is_empty() {
            return None;
        }
        return Some(json!([guard, {"op": "add", "path": "/status", "value": desired}]));
    };
    let mut ops = Vec::new();
    for (key, old) in current {
        let path = format!("/status/{}", pointer_segment(key));
        match desired.get(key) {
            Some(new) if new == old => {}
            Some(new) => ops.push(json!({"op": "replace", "path": path, "value": new})),
            None => ops.push(json!({"op": "remove", "path": path})),
        }
    }
    for (key, new) in desired {
        if !current.contains_key(key) {
            let path = format!("/status/{}", pointer_segment(key));
            ops.push(json!({"op": "add", "path": path, "value": new}));
        }
    }
    if ops.is_empty() {
        return None;
    }
    ops.insert(0, guard);
    Some(Value::Array(ops))
}

/// Writes `desired` as `obj`'s status if it differs from what `obj` carries. Returns whether
/// a write happened. A concurrent change to a field being written fails with 409/422.
pub async fn write_status<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    desired: &S,
) -> Result<bool, ApiCallError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let current = current.map(|c| serde_json::to_value(c).expect("status types serialise"));
    let desired = serde_json::to_value(desired).expect("status types serialise");
    let Some(patch) = status_patch(
        current.as_ref(),
        &desired,
        obj.meta().resource_version.as_deref(),
    ) else {
        return Ok(false);
    };
    let patch: json_patch::Patch =
        serde_json::from_value(patch).expect("status_patch builds valid JSON patches");
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch_status(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(api_call("updating status of", obj))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_fields_are_written_and_guarded() {
        let cur = json!({"phase": "Scheduled", "nodeName": "n1", "reason": "x"});
        let want = json!({"phase": "Running", "nodeName": "n1", "interfaces": []});
        let p = status_patch(Some(&cur), &want, Some("5")).unwrap();
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
                {"op": "replace", "path": "/status/phase", "value": "Running"},
                {"op": "remove", "path": "/status/reason"},
                {"op": "add", "path": "/status/interfaces", "value": []},
            ])
        );
        assert_eq!(status_patch(Some(&cur), &cur, Some("5")), None);
    }

    #[test]
    fn missing_status_is_guarded_by_resource_version() {
        let p = status_patch(None, &json!({"ready": true}), Some("9")).unwrap();
        assert_eq!(p[0]["path"], "/metadata/resourceVersion");
        assert_eq!(p[0]["value"], "9");
        assert_eq!(
            p[1],
            json!({"op": "add", "path": "/status", "value": {"ready": true}})
        );
        assert_eq!(status_patch(None, &json!({}), Some("9")), None);
    }

    #[test]
    fn keys_are_escaped() {
        let p = status_patch(Some(&json!({})), &json!({"a/b": 1}), None).unwrap();
        assert_eq!(p[1]["path"], "/status/a~1b");
    }

    #[test]
    fn patch_applies_with_json_patch() {
        let mut doc = json!({"metadata": {"resourceVersion": "5"},
            "status": {"phase": "Scheduled", "reason": "x"}});
        let want = json!({"phase": "Running"});
        let p = status_patch(doc.get("status"), &want, Some("5")).unwrap();
        let p: json_patch::Patch = serde_json::from_value(p).unwrap();
        json_patch::patch(&mut doc, &p).unwrap();
        assert_eq!(doc["status"], want);
        // The same patch on an object someone changed meanwhile fails.
        let mut changed = json!({"metadata": {"resourceVersion": "6"},
            "status": {"phase": "Failed", "reason": "x"}});
        let p = status_patch(
            Some(&json!({"phase": "Scheduled", "reason": "x"})),
            &want,
            Some("5"),
        )
        .unwrap();
        let p: json_patch::Patch = serde_json::from_value(p).unwrap();
        assert!(json_patch::patch(&mut changed, &p).is_err());
    }
}
