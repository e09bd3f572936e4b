//! Garbage collection by ownerReferences (background, foreground, orphan) and namespace
//! cleanup, driven by the store's event stream.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::ops::{self, DeleteOpts, Propagation};
use crate::store::{EventType, Store};

#[derive(Default)]
struct Index {
    /// uid -> key of every live object.
    uids: HashMap<String, String>,
    /// owner uid -> dependent keys.
    dependents: HashMap<String, HashSet<String>>,
    /// key -> (uid, owner uids), to undo on change.
    owners_of: HashMap<String, (String, Vec<String>)>,
}

fn uid(v: &Value) -> Option<String> {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn owner_uids(v: &Value) -> Vec<String> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has_finalizer(v: &Value, f: &str) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(f)))
}

fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some()
}

impl Index {
    fn remove(&mut self, key: &str) {
        if let Some((u, owners)) = self.owners_of.remove(key) {
            self.uids.remove(&u);
            for o in owners {
                if let Some(set) = self.dependents.get_mut(&o) {
                    set.remove(key);
                    if set.is_empty() {
                        self.dependents.remove(&o);
                    }
                }
            }
        }
    }

    fn insert(&mut self, key: &str, obj: &Value) {
        self.remove(key);
        let Some(u) = uid(obj) else { return };
        let owners = owner_uids(obj);
        for o in &owners {
            self.dependents
                .entry(o.clone())
                .or_default()
                .insert(key.to_string());
        }
        self.uids.insert(u.clone(), key.to_string());
        self.owners_of.insert(key.to_string(), (u, owners));
    }
}

/// Parses `group/plural/ns/name` back into its parts.
fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut it = key.splitn(4, '/');
    let group = it.next()?;
    let plural = it.next()?;
    let _ns = it.next()?;
    let name = it.next()?;
    Some((if group == "core" { "" } else { group }, plural, name))
}

async fn delete(store: &Store, key: &str, propagation: Propagation) {
    let Some((group, plural, name)) = split_key(key) else {
        return;
    };
    let opts = DeleteOpts {
        propagation: Some(propagation),
        ..Default::default()
    };
    match ops::delete_key(store, key.to_string(), plural, group, name, opts).await {
        Ok(_) => tracing::debug!(key, "garbage collected"),
        Err(e) if e.reason == "NotFound" => {}
        Err(e) => tracing::warn!(key, error = %e, "garbage collection delete failed"),
    }
}

pub async fn run(store: Arc<Store>) {
    loop {
        let (keyed, _rev, mut rx) = store.snapshot_and_watch("");
        let mut idx = Index::default();
        let mut terminating: HashSet<String> = HashSet::new();
        for (k, v) in &keyed {
            idx.insert(k, v);
            if let (Some(ns), true) = (namespace_name(k), deleting(v)) {
                terminating.insert(ns.to_string());
            }
        }
        // Objects left mid-deletion by a previous run.
        for (k, v) in &keyed {
            if deleting(v) {
                handle_deleting(&store, &mut idx, k, v).await;
            }
        }
        loop {
            // A terminating namespace is looked at again once the events that may have
            // emptied it are handled (not once per deleted object).
            if rx.is_empty() && !terminating.is_empty() {
                for ns in std::mem::take(&mut terminating) {
                    finish_namespace(&store, &ns).await;
                }
            }
            match rx.recv().await {
                Ok(ev) => {
                    if let Some(ns) = namespace_name(&ev.key) {
                        if deleting(&ev.obj) && ev.kind != EventType::Deleted {
                            terminating.insert(ns.to_string());
                        }
                    } else if let Some(ns) = crate::store::key_namespace(&ev.key) {
                        if ev.kind == EventType::Deleted
                            && store
                                .get(&crate::store::key("", "namespaces", None, ns))
                                .is_some_and(|n| deleting(&n))
                        {
                            terminating.insert(ns.to_string());
                        }
                    }
                    match ev.kind {
                        EventType::Added | EventType::Modified => {
                            idx.insert(&ev.key, &ev.obj);
                            if ev.kind == EventType::Added {
                                let owners = owner_uids(&ev.obj);
                                if !owners.is_empty()
                                    && owners.iter().all(|o| !idx.uids.contains_key(o))
                                {
                                    // Every owner is gone: a dangling dependent.
                                    delete(&store, &ev.key, Propagation::Background).await;
                                    continue;
                                }
                            }
                            if deleting(&ev.obj) {
                                handle_deleting(&store, &mut idx, &ev.key, &ev.obj).await;
                            }
                        }
                        EventType::Deleted => {
                            idx.remove(&ev.key);
                            if let Some(u) = uid(&ev.obj) {
                                let deps: Vec<String> = idx
                                    .dependents
                                    .get(&u)
                                    .map(|s| s.iter().cloned().collect())
                                    .unwrap_or_default();
                                for d in deps {
                                    let other_owner_alive = idx
                                        .owners_of
                                        .get(&d)
                                        .map(|(_, os)| {
                                            os.iter().any(|o| *o != u && idx.uids.contains_key(o))
                                        })
                                        .unwrap_or(false);
                                    if other_owner_alive {
                                        let _ = ops::remove_owner_ref(&store, d.clone(), &u).await;
                                    } else {
                                        delete(&store, &d, Propagation::Background).await;
                                    }
                                }
                            }
                            // A foreground-deleting owner may now have no dependents left.
                            for o in owner_uids(&ev.obj) {
                                let Some(okey) = idx.uids.get(&o).cloned() else {
                                    continue;
                                };
                                if let Some(owner) = store.get(&okey) {
                                    if deleting(&owner) {
                                        handle_deleting(&store, &mut idx, &okey, &owner).await;
                                    }
                                }
                            }
                            if ev
                                .key
                                .starts_with("apiextensions.k8s.io/customresourcedefinitions//")
                            {
                                delete_custom_resources(&store, &ev.obj).await;
                            }
                            if ev.key.starts_with("core/namespaces//") {
                                if let Some(ns) =
                                    ev.obj.pointer("/metadata/name").and_then(Value::as_str)
                                {
                                    clean_namespace(&store, ns).await;
                                }
                            }
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "garbage collector lagged; resyncing");
                    break;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

async fn handle_deleting(store: &Store, idx: &mut Index, key: &str, obj: &Value) {
    let Some(u) = uid(obj) else { return };
    let deps: Vec<String> = idx
        .dependents
        .get(&u)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    if has_finalizer(obj, "orphan") {
        for d in &deps {
            let _ = ops::remove_owner_ref(store, d.clone(), &u).await;
        }
        let _ = ops::remove_finalizer(store, key.to_string(), "orphan").await;
        return;
    }
    if has_finalizer(obj, "foregroundDeletion") {
        if deps.is_empty() {
            let _ = ops::remove_finalizer(store, key.to_string(), "foregroundDeletion").await;
            return;
        }
        for d in deps {
            if let Some(dep) = store.get(&d) {
                if !deleting(&dep) {
                    delete(store, &d, Propagation::Foreground).await;
                }
            }
        }
    }
}

/// A deleted CRD takes its custom resources with it.
async fn delete_custom_resources(store: &Store, crd: &Value) {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if group.is_empty() || plural.is_empty() {
        return;
    }
    let (keyed, _) = store.list_keyed(&crate::store::resource_prefix(group, plural));
    for (k, _) in keyed {
        delete(store, &k, Propagation::Background).await;
    }
}

/// The name of a namespace object's key.
fn namespace_name(key: &str) -> Option<&str> {
    key.strip_prefix("core/namespaces//")
}

/// kube's namespace controller for one terminating namespace: deletes what is in it; once
/// nothing is left, drops the `kubernetes` finalizer and deletes the namespace (if no
/// other finalizer holds it); meanwhile its conditions say what remains.
async fn finish_namespace(store: &Store, ns: &str) {
    let contents = |store: &Store| -> Vec<(String, Arc<Value>)> {
        store
            .list_keyed("")
            .0
            .into_iter()
            .filter(|(k, _)| crate::store::key_namespace(k) == Some(ns))
            .collect()
    };
    for (k, v) in contents(store) {
        if !deleting(&v) {
            delete(store, &k, Propagation::Background).await;
        }
    }
    let remaining = contents(store);
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut finalizer_counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (k, v) in &remaining {
        let mut parts = k.splitn(3, '/');
        let (group, plural) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let group = if group == "core" { "" } else { group };
        // kube words it `resource.group`, with a bare dot for the core group (`pods.`).
        *counts.entry(format!("{plural}.{group}")).or_default() += 1;
        if let Some(fins) = v.pointer("/metadata/finalizers").and_then(Value::as_array) {
            for f in fins.iter().filter_map(Value::as_str) {
                *finalizer_counts.entry(f.to_string()).or_default() += 1;
            }
        }
    }
    let key = crate::store::key("", "namespaces", None, ns);
    let empty = remaining.is_empty();
    let conditions = namespace_conditions(&counts, &finalizer_counts);
    let _ = store
        .write(
            key,
            Box::new(move |cur| {
                let Some(cur) = cur else {
                    return Err(crate::error::ApiError::internal("namespace is gone"));
                };
                if !deleting(cur) {
                    return Ok(crate::store::Mutation::Noop(cur.clone()));
                }
                let mut next = cur.clone();
                next["status"]["conditions"] =
                    keep_transition_times(conditions, cur.pointer("/status/conditions"));
                if empty {
                    let spec_fins: Vec<Value> = cur
                        .pointer("/spec/finalizers")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter(|f| f.as_str() != Some(ops::NAMESPACE_FINALIZER))
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    let meta_fins = cur
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty());
                    if spec_fins.is_empty() && !meta_fins {
                        return Ok(crate::store::Mutation::Delete);
                    }
                    next["spec"]["finalizers"] = Value::Array(spec_fins);
                }
                if next == *cur {
                    return Ok(crate::store::Mutation::Noop(next));
                }
                Ok(crate::store::Mutation::Put(next))
            }),
        )
        .await;
}

/// A condition whose status did not change keeps its `lastTransitionTime` (so an
/// unchanged namespace is not rewritten).
fn keep_transition_times(mut new: Value, old: Option<&Value>) -> Value {
    let old = old.and_then(Value::as_array).cloned().unwrap_or_default();
    for c in new.as_array_mut().into_iter().flatten() {
        if let Some(prev) = old
            .iter()
            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
        {
            c["lastTransitionTime"] = prev["lastTransitionTime"].clone();
        }
    }
    new
}

/// The conditions kube's namespace controller keeps on a terminating namespace.
fn namespace_conditions(
    counts: &std::collections::BTreeMap<String, usize>,
    finalizers: &std::collections::BTreeMap<String, usize>,
) -> Value {
    let now = ops::now();
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        serde_json::json!({"type": type_, "status": if status { "True" } else { "False" },
            "lastTransitionTime": now, "reason": reason, "message": message})
    };
    let content = if counts.is_empty() {
        cond(
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
        )
    } else {
        let list: Vec<String> = counts
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        cond(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", list.join(", ")),
        )
    };
    let fins = if finalizers.is_empty() {
        cond(
            "NamespaceFinalizersRemaining",
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
        )
    } else {
        let list: Vec<String> = finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        cond(
            "NamespaceFinalizersRemaining",
            true,
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                list.join(", ")
            ),
        )
    };
    serde_json::json!([
        cond(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into()
        ),
        cond(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into()
        ),
        cond(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into()
        ),
        content,
        fins,
    ])
}

async fn clean_namespace(store: &Store, ns: &str) {
    let (keyed, _) = store.list_keyed("");
    for (k, _) in keyed {
        let mut parts = k.splitn(4, '/');
        let (_, _, kns) = (parts.next(), parts.next(), parts.next());
        if kns == Some(ns) {
            delete(store, &k, Propagation::Background).await;
        }
    }
}
