//! The controllers kube-controller-manager runs for identity and RBAC, in-process:
//! - serviceaccounts: every active namespace has a `default` ServiceAccount;
//! - tokens: a Secret of type `kubernetes.io/service-account-token` naming a
//!   ServiceAccount gets `token`, `ca.crt` and `namespace`; one naming a missing
//!   ServiceAccount is deleted;
//! - clusterrole-aggregation: an aggregated ClusterRole's `rules` are the union of the
//!   roles its selectors match.
//!
//! Driven by the store's event stream; a full pass runs at start and after a lag.

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::http::AppState;
use crate::ops::{self, DeleteOpts, Part, PatchType, WriteOpts};
use crate::registry::RBAC_GROUP;
use crate::store::EventType;

pub const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";
const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

pub async fn run(app: Arc<AppState>, ca_pem: String) {
    loop {
        let (all, _rev, mut rx) = app.ops.store.snapshot_and_watch("");
        for (key, obj) in &all {
            handle(&app, &ca_pem, key, obj).await;
        }
        aggregate_cluster_roles(&app).await;
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if ev.kind == EventType::Deleted {
                        if ev
                            .key
                            .starts_with("rbac.authorization.k8s.io/clusterroles/")
                        {
                            aggregate_cluster_roles(&app).await;
                        }
                        continue;
                    }
                    handle(&app, &ca_pem, &ev.key, &ev.obj).await;
                    if ev
                        .key
                        .starts_with("rbac.authorization.k8s.io/clusterroles/")
                    {
                        aggregate_cluster_roles(&app).await;
                    }
                }
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

async fn handle(app: &AppState, ca_pem: &str, key: &str, obj: &Value) {
    if key.starts_with("core/namespaces//") {
        ensure_default_service_account(app, obj).await;
    } else if key.starts_with("core/secrets/")
        && obj["type"].as_str() == Some(SERVICE_ACCOUNT_TOKEN)
    {
        fill_token_secret(app, ca_pem, obj).await;
    }
}

async fn ensure_default_service_account(app: &AppState, ns: &Value) {
    let active = ns.pointer("/status/phase").and_then(Value::as_str) != Some("Terminating")
        && ns.pointer("/metadata/deletionTimestamp").is_none();
    let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) else {
        return;
    };
    let Some(def) = app.ops.registry.find("", "v1", "serviceaccounts") else {
        return;
    };
    if !active || app.ops.get(&def, Some(name), "default").is_ok() {
        return;
    }
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": name}});
    match app
        .ops
        .create(&def, Some(name), sa, WriteOpts::default())
        .await
    {
        Ok(_) => {}
        Err(e) if e.reason == "AlreadyExists" => {}
        // A namespace being deleted refuses new content; nothing to do.
        Err(e) => tracing::debug!(namespace = name, error = %e, "default service account"),
    }
}

async fn fill_token_secret(app: &AppState, ca_pem: &str, secret: &Value) {
    let meta = &secret["metadata"];
    let (Some(ns), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str()) else {
        return;
    };
    if meta.get("deletionTimestamp").is_some() {
        return;
    }
    let Some(sa_name) = meta
        .pointer(&format!(
            "/annotations/{}",
            SA_NAME_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
    else {
        return;
    };
    let Some(secret_def) = app.ops.registry.find("", "v1", "secrets") else {
        return;
    };
    let sa = app
        .ops
        .registry
        .find("", "v1", "serviceaccounts")
        .and_then(|def| app.ops.get(&def, Some(ns), sa_name).ok());
    let Some(sa) = sa else {
        // As kube's tokens controller: a token for no ServiceAccount is removed.
        let _ = app
            .ops
            .delete(&secret_def, Some(ns), name, DeleteOpts::default())
            .await;
        return;
    };
    let sa_uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let has_token = secret.pointer("/data/token").is_some();
    let uid_annotation = meta
        .pointer(&format!(
            "/annotations/{}",
            SA_UID_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str);
    if has_token && uid_annotation == Some(sa_uid) {
        return;
    }
    let token = match app.auth.signer.legacy_token(&sa, secret) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "signing a service account token");
            return;
        }
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let patch = json!({
        "metadata": {"annotations": {SA_UID_ANNOTATION: sa_uid}},
        "data": {"token": b64(&token), "ca.crt": b64(ca_pem), "namespace": b64(ns)},
    });
    if let Err(e) = app
        .ops
        .patch(
            &secret_def,
            Some(ns),
            name,
            PatchType::Merge,
            patch,
            Part::Main,
            WriteOpts::default(),
        )
        .await
    {
        tracing::debug!(namespace = ns, name, error = %e, "filling a service account token");
    }
}

async fn aggregate_cluster_roles(app: &AppState) {
    let Some(def) = app.ops.registry.find(RBAC_GROUP, "v1", "clusterroles") else {
        return;
    };
    let (roles, _) = app
        .ops
        .store
        .list(&crate::store::resource_prefix(RBAC_GROUP, "clusterroles"));
    let roles: Vec<Value> = roles.iter().map(|r| (**r).clone()).collect();
    for (name, rules) in kubevirt_rbac::aggregate(&roles) {
        let patch = json!({"rules": rules});
        if let Err(e) = app
            .ops
            .patch(
                &def,
                None,
                &name,
                ops::PatchType::Merge,
                patch,
                Part::Main,
                WriteOpts::default(),
            )
            .await
        {
            tracing::debug!(role = name, error = %e, "aggregating a cluster role");
        }
    }
}
