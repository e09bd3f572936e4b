//! Adding and removing one finalizer without touching anyone else's.
//!
//! Add: a JSON patch that tests the current list (or its absence) and writes the new one, so
//! a concurrent change fails with 422/409 and the reconcile is retried. Remove: test the
//! element at its index, then remove that index.

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

use crate::error::{ControllerError, Result};
use crate::resources::ns_name;

pub fn has_finalizer(obj: &DynamicObject, finalizer: &str) -> bool {
    obj.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == finalizer))
}

/// The JSON patch that adds `finalizer` to `obj`, or None when it is there already.
pub fn add_patch(obj: &DynamicObject, finalizer: &str) -> Option<Value> {
    if has_finalizer(obj, finalizer) {
        return None;
    }
    Some(match &obj.metadata.finalizers {
        None => json!([
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}
        ]),
        Some(list) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}
        ]),
    })
}

/// The JSON patch that removes `finalizer` from `obj`, or None when it is absent.
pub fn remove_patch(obj: &DynamicObject, finalizer: &str) -> Option<Value> {
    let list = obj.metadata.finalizers.as_ref()?;
    let index = list.iter().position(|f| f == finalizer)?;
    Some(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": finalizer},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")}
    ]))
}

async fn apply(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    kind: &'static str,
    patch: Value,
    action: &'static str,
) -> Result<()> {
    let (namespace, name) = ns_name(obj);
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|source| ControllerError::Serialize {
            kind,
            name: name.clone(),
            source,
        })?;
    match api
        .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing left to guard.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(ControllerError::Api {
            action,
            kind,
            namespace,
            name,
            source: Box::new(source),
        }),
    }
}

pub async fn add(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    kind: &'static str,
    finalizer: &str,
) -> Result<()> {
    match add_patch(obj, finalizer) {
        Some(p) => apply(api, obj, kind, p, "adding finalizer to").await,
        None => Ok(()),
    }
}

pub async fn remove(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    kind: &'static str,
    finalizer: &str,
) -> Result<()> {
    match remove_patch(obj, finalizer) {
        Some(p) => apply(api, obj, kind, p, "removing finalizer from").await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(finalizers: Option<Vec<&str>>) -> DynamicObject {
        let mut o = DynamicObject::new("x", &crate::resources::vm_resource());
        o.metadata.finalizers = finalizers.map(|f| f.into_iter().map(String::from).collect());
        o
    }

    #[test]
    fn add_creates_or_appends_with_test() {
        assert_eq!(
            add_patch(&obj(None), "a").unwrap(),
            json!([{"op": "add", "path": "/metadata/finalizers", "value": ["a"]}])
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
