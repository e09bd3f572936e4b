//! Upload, as CDI serves it: a user allowed to create `uploadtokenrequests`
//! (`upload.cdi.kubevirt.io/v1beta1`) in a namespace gets a short-lived token for one claim
//! awaiting an upload; the upload proxy (`POST /v1beta1/upload`, `/v1beta1/upload-async`)
//! takes the image with that token as its only credential, streams it through the importer
//! into the claim's volume and marks the claim filled, so its DataVolume succeeds.
//!
//! [`token_router`] goes behind the API server's authentication and authorization (RBAC
//! decides who may ask for a token); [`proxy_router`] is served beside it, outside them.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use kubevirt_api::cdi::annotations as ann;
use kubevirt_api::cdi::DataVolume;

/// The API group of the token request.
pub const GROUP: &str = "upload.cdi.kubevirt.io";
pub const VERSION: &str = "v1beta1";
/// How long a token is good for (CDI's upload tokens last minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(5 * 60);

#[derive(Serialize, Deserialize)]
struct Claims {
    namespace: String,
    pvc: String,
    exp: u64,
}

/// Issues and checks upload tokens, and reaches the API for the proxy.
pub struct UploadState {
    key: [u8; 32],
    client: OnceLock<Client>,
}

impl Default for UploadState {
    fn default() -> Self {
        Self::new()
    }
}

impl UploadState {
    /// A fresh signing key: tokens do not outlive the server (they last minutes anyway).
    pub fn new() -> Self {
        UploadState {
            key: rand::random(),
            client: OnceLock::new(),
        }
    }

    /// The client the proxy uses once the API server is up.
    pub fn set_client(&self, client: Client) {
        let _ = self.client.set(client);
    }

    fn issue(&self, namespace: &str, pvc: &str) -> Result<String, String> {
        let exp = jsonwebtoken::get_current_timestamp() + TOKEN_LIFETIME.as_secs();
        let claims = Claims {
            namespace: namespace.into(),
            pvc: pvc.into(),
            exp,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.key),
        )
        .map_err(|e| e.to_string())
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims = ["exp".to_string()].into();
        jsonwebtoken::decode::<Claims>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(&self.key),
            &validation,
        )
        .ok()
        .map(|t| t.claims)
    }
}

/// The resources of `upload.cdi.kubevirt.io/v1beta1` as discovery lists them.
pub fn discovery_resources() -> Vec<Value> {
    vec![json!({
        "name": "uploadtokenrequests", "singularName": "uploadtokenrequest",
        "namespaced": true, "kind": "UploadTokenRequest", "verbs": ["create"],
        "shortNames": ["utr", "utrs"],
    })]
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// `POST /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests`.
pub fn token_router(state: Arc<UploadState>) -> Router {
    Router::new()
        .route(
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests",
            post(token_request),
        )
        .with_state(state)
}

async fn token_request(
    State(state): State<Arc<UploadState>>,
    Path(ns): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(mut req) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the request body is not a JSON UploadTokenRequest",
        );
    };
    let pvc = req
        .pointer("/spec/pvcName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if pvc.is_empty() {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "UploadTokenRequest.upload.cdi.kubevirt.io is invalid: spec.pvcName: Required value",
        );
    }
    match state.issue(&ns, &pvc) {
        Ok(token) => {
            req["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
            req["kind"] = json!("UploadTokenRequest");
            req["metadata"]["namespace"] = json!(ns);
            req["status"] = json!({"token": token});
            (StatusCode::CREATED, Json(req)).into_response()
        }
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e),
    }
}

/// The upload proxy's routes (they authenticate with the upload token alone).
pub fn proxy_router(state: Arc<UploadState>) -> Router {
    Router::new()
        .route("/v1beta1/upload", post(upload))
        .route("/v1beta1/upload-async", post(upload))
        .with_state(state)
}

fn text(code: StatusCode, message: impl Into<String>) -> Response {
    (code, message.into()).into_response()
}

async fn upload(State(state): State<Arc<UploadState>>, headers: HeaderMap, body: Body) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(claims) = token.and_then(|t| state.verify(t.trim())) else {
        return text(
            StatusCode::UNAUTHORIZED,
            "authentication failed: no valid upload token",
        );
    };
    let Some(client) = state.client.get().cloned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the upload proxy is starting",
        );
    };
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claims.namespace);
    let pvc = match claims_api.get_opt(&claims.pvc).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("persistentvolumeclaim \"{}\" not found", claims.pvc),
            )
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let annotations = pvc.metadata.annotations.clone().unwrap_or_default();
    if !annotations.contains_key(ann::UPLOAD_REQUEST) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("PVC {} is not an upload target", claims.pvc),
        );
    }
    if annotations.get(ann::POD_PHASE).map(String::as_str) == Some("Succeeded") {
        return text(
            StatusCode::CONFLICT,
            format!("PVC {} already holds its upload", claims.pvc),
        );
    }
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty());
    let Some(volume) = volume else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "PVC {} is not bound yet; upload server is not ready",
                claims.pvc
            ),
        );
    };
    let pv = match Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
    {
        Ok(pv) => pv,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(target) = crate::datavolume::upload_target(&pv) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the claim's volume is not a local volume of this node",
        );
    };
    let total = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let reader =
        tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let (tx, rx) = tokio::sync::watch::channel(None::<String>);
    let progress = tokio::spawn(write_progress(
        client.clone(),
        claims.namespace.clone(),
        claims.pvc.clone(),
        rx,
    ));
    let report = move |p: kubevirt_importer::Progress| {
        if let Some(pct) = p.percent() {
            tx.send_replace(Some(pct));
        }
    };
    let result = kubevirt_importer::import_stream(reader, total, &target, report).await;
    let _ = progress.await;
    match result {
        Ok(imported) => {
            tracing::info!(claim = %claims.pvc, format = %imported.source_format, bytes = imported.bytes_read, "upload done");
            let marked = claims_api
                .patch(
                    &claims.pvc,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {
                        ann::POD_PHASE: "Succeeded",
                        ann::POPULATED_FOR: claims.pvc,
                    }}})),
                )
                .await;
            match marked {
                Ok(_) => text(StatusCode::OK, ""),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Err(e) => {
            tracing::warn!(claim = %claims.pvc, error = %e.message, "upload failed");
            let code = match e.kind {
                kubevirt_importer::ImportErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
                kubevirt_importer::ImportErrorKind::Io
                | kubevirt_importer::ImportErrorKind::Http => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            text(code, format!("Saving stream failed: {}", e.message))
        }
    }
}

/// Mirrors the upload's progress into the DataVolume of the same name, at most once a second.
async fn write_progress(
    client: Client,
    ns: String,
    name: String,
    mut rx: tokio::sync::watch::Receiver<Option<String>>,
) {
    let dvs: Api<DataVolume> = Api::namespaced(client, &ns);
    while rx.changed().await.is_ok() {
        let pct = rx.borrow_and_update().clone();
        if let Some(pct) = pct {
            let _ = dvs
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"progress": pct}})),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_one_claim_and_only_their_issuer_accepts_them() {
        let a = UploadState::new();
        let b = UploadState::new();
        let t = a.issue("team-a", "disk").unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!((c.namespace.as_str(), c.pvc.as_str()), ("team-a", "disk"));
        assert!(b.verify(&t).is_none(), "another server's key");
        assert!(a.verify(&format!("{t}x")).is_none(), "tampered");
    }
}
