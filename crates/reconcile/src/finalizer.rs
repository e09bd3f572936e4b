//! Adding and removing one finalizer without touching anyone else's.
//!
//! Add: a JSON patch that tests the current list (or its absence) and writes the new one, so
//! a concurrent change fails and the reconcile is retried. Remove: test the element at its
//! index, then remove that index.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::{api_call, ApiCallError};

pub fn has_finalizer<K: Resource>(obj: &K, finalizer: &str) -> bool {
    obj.meta()
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == finalizer))
}

/// The JSON patch that adds `finalizer` to `obj`, or None when it is there already.
pub fn add_patch<K: Resource>(obj: &K, finalizer: &str) -> Option<Value> {
    if has_finalizer(obj, finalizer) {
        return None;
    }
    Some(match &obj.meta().finalizers {
        None => json!([
            // No list to test: test the whole object's version instead.
            {"op": "test", "path": "/metadata/resourceVersion", "value": obj.meta().resource_version},
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}
        ]),
        Some(list) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}
        ]),
    })
}

/// The JSON patch that removes `finalizer` from `obj`, or None when it is absent.
pub fn remove_patch<K: Resource>(obj: &K, finalizer: &str) -> Option<Value> {
    let list = obj.meta().finalizers.as_ref()?;
    let index = list.iter().position(|f| f == finalizer)?;
    Some(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": finalizer},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")}
    ]))
}

async fn apply<K>(
    api: &Api<K>,
    obj: &K,
    patch: Value,
    action: &'static str,
) -> Result<Option<K>, ApiCallError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let patch: json_patch::Patch = serde_json::from_value(patch)
        .expect("finalizer patches are built from valid JSON-patch literals");
    match api
        .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(updated) => Ok(Some(updated)),
        // Already gone: nothing left to guard.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(source) => Err(api_call(action, obj)(source)),
    }
}

/// Adds `finalizer` to `obj` unless it is there; returns the object as it is now (what the
/// API answered, or `obj` itself), so later writes start from the current version.
pub async fn add<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<K, ApiCallError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    match add_patch(obj, finalizer) {
        Some(p) => Ok(apply(api, obj, p, "adding finalizer to")
            .await?
            .unwrap_or_else(|| obj.clone())),
        None => Ok(obj.clone()),
    }
}

/// Removes `finalizer` from `obj` if it is there.
pub async fn remove<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), ApiCallError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    match remove_patch(obj, finalizer) {
        Some(p) => apply(api, obj, p, "removing finalizer from")
            .await
            .map(|_| ()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn obj(finalizers: Option<Vec<&str>>) -> ConfigMap {
        let mut o = ConfigMap::default();
        o.metadata.resource_version = Some("7".into());
        o.metadata.finalizers = finalizers.map(|f| f.into_iter().map(String::from).collect());
        o
    }

    #[test]
    fn add_creates_or_appends_with_test() {
        assert_eq!(
            add_patch(&obj(None), "a").unwrap(),
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                {"op": "add", "path": "/metadata/finalizers", "value": ["a"]}
            ])
        );
        let p = add_patch(&obj(Some(vec!["other"])), "a").unwrap();
        assert_eq!(p[0]["op"], "test");
        assert_eq!(p[1]["path"], "/metadata/finalizers/-");
        assert!(add_patch(&obj(Some(vec!["a"])), "a").is_none());
    }

    #[test]
    fn remove_targets_only_our_entry() {
        let p = remove_patch(&obj(Some(vec!["other", "a", "third"])), "a").unwrap();
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": "a"},
                {"op": "remove", "path": "/metadata/finalizers/1"}
            ])
        );
        assert!(remove_patch(&obj(Some(vec!["other"])), "a").is_none());
        assert!(remove_patch(&obj(None), "a").is_none());
    }
}
