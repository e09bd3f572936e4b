//! The launcher-pod eviction check (upstream's `virt-launcher-eviction-interceptor`):
//! evicting a running VMI's launcher pod (the Eviction API, as `kubectl drain` calls it) is
//! refused while the VMI's eviction strategy asks for a live migration, and the VMI is
//! marked for evacuation (`status.evacuationNodeName`), which the evacuation controller
//! turns into a migration. The rule itself is `kubevirt_api::migration::eviction`.
//!
//! One decision, two ways in: the embedded API server calls [`LauncherEviction`] in
//! process; on a cluster kube-apiserver asks virt-api's webhook ([`router`]).

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::core::{DynamicObject, Status};
use kube::{Api, Client};
use kubevirt_api::launcher_pod::launcher_pod_vmi;
use kubevirt_api::migration::{eviction, Eviction, MIGRATION_JOB_LABEL};
use kubevirt_api::v1::VirtualMachineInstance;
use serde_json::{json, Value};

use crate::webhooks::LAUNCHER_EVICTION;

/// Whether evicting `pod` may go ahead; `Err` is the refusal's message. A refusal that
/// evacuates the VMI marks it first (unless `dry_run`).
pub async fn decide(client: &Client, pod: &Pod, dry_run: bool) -> Result<(), String> {
    let completed = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let Some((vmi_name, _)) = launcher_pod_vmi(pod).filter(|_| !completed) else {
        return Ok(());
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    let vmi = vmis
        .get(&vmi_name)
        .await
        .map_err(|e| format!("kubevirt failed getting the vmi: {e}"))?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let is_target = pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(MIGRATION_JOB_LABEL));
    match eviction(&vmi, &pod_name, is_target, None) {
        Eviction::Allow => Ok(()),
        Eviction::Refuse(message) => Err(message),
        Eviction::Evacuate(message) => {
            if !dry_run {
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let patch = json!({"status": {"evacuationNodeName": node}});
                vmis.patch_status(&vmi_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| format!("kubevirt failed marking the vmi for eviction: {e}"))?;
            }
            Err(message)
        }
    }
}

/// Whether an Eviction body asks for a dry run (`deleteOptions.dryRun: [All]`).
fn eviction_is_dry_run(eviction: &Value) -> bool {
    eviction
        .pointer("/deleteOptions/dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|v| v == "All"))
}

/// The embedded API server's check; its API client is set once the server is up.
#[derive(Default)]
pub struct LauncherEviction {
    client: OnceLock<Client>,
}

impl LauncherEviction {
    pub fn set_client(&self, client: Client) {
        let _ = self.client.set(client);
    }
}

impl kubevirt_apiserver::EvictionCheck for LauncherEviction {
    fn check<'a>(
        &'a self,
        pod: &'a Value,
        eviction: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let Ok(pod) = serde_json::from_value::<Pod>(pod.clone()) else {
                return Ok(());
            };
            let result = match self.client.get() {
                Some(client) => decide(client, &pod, eviction_is_dry_run(eviction)).await,
                None => Err("kubevirt failed getting the vmi: the API is starting".into()),
            };
            // kube-apiserver words a webhook's refusal so; the embedded server does the same.
            result.map_err(|m| {
                format!(
                    "admission webhook \"{}\" denied the request: {m}",
                    LAUNCHER_EVICTION.name
                )
            })
        }
        .boxed()
    }
}

/// `POST /pod-eviction-validate`: the webhook kube-apiserver calls for `pods/eviction`.
pub fn router(client: Client) -> Router {
    Router::new()
        .route(LAUNCHER_EVICTION.path, post(review))
        .with_state(client)
}

async fn review(State(client): State<Client>, body: Bytes) -> Response {
    let request = match crate::admission::decode(&body) {
        Ok(r) => r,
        Err(why) => return Json(AdmissionResponse::invalid(why).into_review()).into_response(),
    };
    Json(answer(&client, &request).await.into_review()).into_response()
}

async fn answer(client: &Client, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    let Some(ns) = req.namespace.as_deref() else {
        return allowed;
    };
    // As upstream: a pod that cannot be read is not ours to hold back.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(pod) = pods.get(&req.name).await else {
        return allowed;
    };
    let dry_run = req.dry_run
        || req
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
            .is_some_and(|o| eviction_is_dry_run(&o));
    match decide(client, &pod, dry_run).await {
        Ok(()) => allowed,
        Err(message) => refused(allowed, message),
    }
}

/// Upstream's refusal: 429, so `kubectl drain` retries until the VMI has moved.
fn refused(mut resp: AdmissionResponse, message: String) -> AdmissionResponse {
    resp.allowed = false;
    resp.result = Status {
        code: 429,
        message,
        ..Status::default()
    };
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;

    #[tokio::test]
    async fn hostile_bodies_are_refused_before_anything_is_read() {
        use tower::Service;
        // An API server nobody listens on: a body that is no review never reaches it.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let mut svc = router(Client::try_from(config).unwrap()).into_service();
        for body in [&b""[..], b"not json", b"{\"request\":{\"uid\":7}}"] {
            let req = axum::http::Request::post(LAUNCHER_EVICTION.path)
                .body(axum::body::Body::from(body))
                .unwrap();
            let resp = svc.call(req).await.unwrap();
            assert_eq!(resp.status(), axum::http::StatusCode::OK);
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let review: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(review["response"]["allowed"], false, "{body:?}: {review}");
            assert!(review["response"]["status"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn dry_run_is_read_from_delete_options() {
        assert!(eviction_is_dry_run(
            &json!({"deleteOptions": {"dryRun": ["All"]}})
        ));
        assert!(!eviction_is_dry_run(&json!({"deleteOptions": {}})));
        assert!(!eviction_is_dry_run(
            &json!({"deleteOptions": {"dryRun": "All"}})
        ));
    }

    #[test]
    fn a_refusal_is_429_with_the_message() {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "7c1e0c51-0000-4000-8000-000000000001",
                "kind": {"group": "policy", "version": "v1", "kind": "Eviction"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "subResource": "eviction",
                "operation": "CREATE",
                "name": "virt-launcher-db-abcde",
                "namespace": "default",
                "userInfo": {"username": "alice"},
                "object": {"apiVersion": "policy/v1", "kind": "Eviction",
                           "metadata": {"name": "virt-launcher-db-abcde"}},
            },
        }))
        .unwrap();
        let req: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
        let r = refused(AdmissionResponse::from(&req), "moving".into());
        assert!(!r.allowed);
        assert_eq!(r.uid, "7c1e0c51-0000-4000-8000-000000000001");
        assert_eq!((r.result.code, r.result.message.as_str()), (429, "moving"));
    }
}
