//! ResourceQuota and LimitRange in the server: the admission step of every create in a
//! namespace, and the resourcequota controller that keeps each quota's `status` current.
//! What counts and what is refused is `kubevirt-quota`'s; this module lists the objects,
//! serialises quota updates and words the 403s.

use std::collections::HashSet;
use std::sync::Arc;

use http::StatusCode;
use kubevirt_quota::Subject;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::error::{qualified, ApiError, ApiResult};
use crate::registry::ResourceDef;
use crate::store::{self, Mutation, Store};

fn list(store: &Store, plural: &str, ns: &str) -> Vec<Value> {
    store
        .list(&store::prefix("", plural, Some(ns)))
        .0
        .iter()
        .map(|v| (**v).clone())
        .collect()
}

/// Everything in `ns`, as the quota status computation wants it.
fn namespace_objects(store: &Store, ns: &str) -> Vec<(String, String, Value)> {
    store
        .list_keyed("")
        .0
        .into_iter()
        .filter_map(|(k, v)| {
            let mut parts = k.splitn(4, '/');
            let (group, plural, kns) = (parts.next()?, parts.next()?, parts.next()?);
            (kns == ns).then(|| {
                let group = if group == "core" { "" } else { group };
                (group.to_string(), plural.to_string(), (*v).clone())
            })
        })
        .collect()
}

fn forbidden(def: &ResourceDef, obj: &Value, message: &str) -> ApiError {
    let name = kubevirt_quota::object_name(obj);
    ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        kubevirt_quota::forbidden_message(&qualified(&def.plural, &def.group), &name, message),
    )
    .with_resource_details(&name, &def.group, &def.plural)
}

fn status_known(quota: &Value) -> bool {
    quota.pointer("/status/hard").is_some()
        && quota.pointer("/status/hard") == quota.pointer("/spec/hard")
}

/// LimitRanger and ResourceQuota admission for creating `obj` in `ns`: applies LimitRange
/// defaults to pods, refuses what breaks a LimitRange or exceeds a quota (403 in
/// kube-apiserver's words) and, unless `dry_run`, charges each quota that counts it.
pub async fn admit_create(
    store: &Store,
    def: &Arc<ResourceDef>,
    ns: &str,
    obj: &mut Value,
    dry_run: bool,
) -> ApiResult<()> {
    if def.group.is_empty() && matches!(def.plural.as_str(), "pods" | "persistentvolumeclaims") {
        let ranges = list(store, "limitranges", ns);
        if !ranges.is_empty() {
            kubevirt_quota::limit_ranges(&def.plural, obj, &ranges)
                .map_err(|m| forbidden(def, obj, &m))?;
        }
    }
    let quotas = list(store, "resourcequotas", ns);
    if quotas.is_empty() {
        return Ok(());
    }
    // A quota the controller has not counted yet is counted here rather than refusing.
    let objects = if quotas.iter().all(status_known) {
        Vec::new()
    } else {
        namespace_objects(store, ns)
    };
    let counted = |q: &Value| -> Value {
        if status_known(q) {
            return q.clone();
        }
        let mut q = q.clone();
        q["status"] = kubevirt_quota::status(&q, &objects);
        q
    };
    let quotas: Vec<Value> = quotas.iter().map(counted).collect();
    let subject = Subject {
        group: &def.group,
        resource: &def.plural,
        object: obj,
        old: None,
    };
    let charged = kubevirt_quota::admit(&subject, &quotas).map_err(|m| forbidden(def, obj, &m))?;
    if dry_run {
        return Ok(());
    }
    // Charge each quota against its stored state, so two creates racing for the last
    // unit cannot both pass.
    for (name, _) in charged {
        let Some(base) = quotas
            .iter()
            .find(|q| q.pointer("/metadata/name").and_then(Value::as_str) == Some(&name))
            .cloned()
        else {
            continue;
        };
        let (def2, obj2) = (def.clone(), obj.clone());
        store
            .write(
                store::key("", "resourcequotas", Some(ns), &name),
                Box::new(move |cur| {
                    let Some(cur) = cur else {
                        return Err(ApiError::internal("quota vanished"));
                    };
                    let current = if status_known(cur) {
                        cur.clone()
                    } else {
                        let mut c = cur.clone();
                        c["status"] = base["status"].clone();
                        c
                    };
                    let subject = Subject {
                        group: &def2.group,
                        resource: &def2.plural,
                        object: &obj2,
                        old: None,
                    };
                    let charged = kubevirt_quota::admit(&subject, std::slice::from_ref(&current))
                        .map_err(|m| forbidden(&def2, &obj2, &m))?;
                    let mut next = current;
                    if let Some((_, used)) = charged.into_iter().next() {
                        next["status"]["used"] = used;
                    }
                    Ok(Mutation::Put(next))
                }),
            )
            .await?;
    }
    Ok(())
}

/// How often every quota is recounted anyway (kube's resourcequota controller resync).
const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

/// The resourcequota controller. Creates are charged at admission; this counts a new or
/// changed quota, releases what deletions free, and every `RESYNC` recounts everything
/// (so a create charged but then refused is not held against the quota for long). It
/// does not recount on creates: a count racing an admitted create would undo the charge.
pub async fn run(store: Arc<Store>) {
    loop {
        let (all, _, mut rx) = store.snapshot_and_watch("");
        let mut dirty: HashSet<String> = all
            .iter()
            .filter(|(k, _)| k.starts_with("core/resourcequotas/"))
            .filter_map(|(k, _)| store::key_namespace(k).map(str::to_string))
            .collect();
        drop(all);
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            if rx.is_empty() && !dirty.is_empty() {
                for ns in std::mem::take(&mut dirty) {
                    recount(&store, &ns).await;
                }
            }
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = resync.tick() => break,
            };
            match ev {
                Ok(ev) => {
                    let Some(ns) = store::key_namespace(&ev.key) else {
                        continue;
                    };
                    let quota_changed =
                        ev.key.starts_with("core/resourcequotas/") && !status_known(&ev.obj);
                    // A pod that finished or is going away no longer uses its requests.
                    let pod_released = ev.key.starts_with("core/pods/")
                        && (ev.obj.pointer("/metadata/deletionTimestamp").is_some()
                            || matches!(
                                ev.obj.pointer("/status/phase").and_then(Value::as_str),
                                Some("Succeeded" | "Failed")
                            ));
                    let released = ev.kind == crate::store::EventType::Deleted || pod_released;
                    if dirty.contains(ns) || !(quota_changed || released) {
                        continue;
                    }
                    let has_quota = !store
                        .list(&store::prefix("", "resourcequotas", Some(ns)))
                        .0
                        .is_empty();
                    if has_quota {
                        dirty.insert(ns.to_string());
                    }
                }
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

async fn recount(store: &Store, ns: &str) {
    let quotas = list(store, "resourcequotas", ns);
    if quotas.is_empty() {
        return;
    }
    let objects = namespace_objects(store, ns);
    for quota in quotas {
        let status = kubevirt_quota::status(&quota, &objects);
        if quota.get("status") == Some(&status) {
            continue;
        }
        let Some(name) = quota.pointer("/metadata/name").and_then(Value::as_str) else {
            continue;
        };
        let _ = store
            .write(
                store::key("", "resourcequotas", Some(ns), name),
                Box::new(move |cur| {
                    let Some(cur) = cur else {
                        return Err(ApiError::internal("quota vanished"));
                    };
                    let mut next = cur.clone();
                    next["status"] = status;
                    if next == *cur {
                        return Ok(Mutation::Noop(next));
                    }
                    Ok(Mutation::Put(next))
                }),
            )
            .await;
    }
}
