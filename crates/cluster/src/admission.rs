//! virt-api's admission webhooks (AdmissionReview v1): the embedded server's admission
//! functions ([`kubevirt_apiserver::kubevirt::KubevirtAdmission`]) answering a real
//! kube-apiserver. A mutating webhook returns the defaults as a JSON patch; a validating
//! webhook denies an invalid object with its field causes, in the Status upstream's
//! virt-api returns (422 Invalid, the first ten causes, their messages joined).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::{DynamicObject, Status};
use kubevirt_apiserver::{Admission, Cause};

use crate::webhooks::{self, Role};

/// At most this many causes are returned, as upstream's virt-api does.
const MAX_CAUSES: usize = 10;

#[derive(Clone)]
pub struct Webhooks {
    admission: Arc<dyn Admission>,
}

impl Webhooks {
    pub fn new(admission: Arc<dyn Admission>) -> Self {
        Webhooks { admission }
    }
}

/// `POST /<webhook path>` for every webhook of [`webhooks::WEBHOOKS`].
pub fn router(state: Webhooks) -> Router {
    Router::new()
        .route("/{path}", post(review))
        .with_state(state)
}

async fn review(State(st): State<Webhooks>, Path(path): Path<String>, body: Bytes) -> Response {
    let Some(hook) = webhooks::by_path(&format!("/{path}")) else {
        return (StatusCode::NOT_FOUND, "no such webhook").into_response();
    };
    let req = match decode(&body) {
        Ok(r) => r,
        Err(why) => return Json(AdmissionResponse::invalid(why).into_review()).into_response(),
    };
    Json(answer(st.admission.as_ref(), hook.role, &req).into_review()).into_response()
}

/// The request of an AdmissionReview body, or why the body is none (the webhook answers
/// with [`AdmissionResponse::invalid`]). Every webhook of virt-api reads its body so.
pub(crate) fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    serde_json::from_slice::<AdmissionReview<DynamicObject>>(body)
        .map_err(|e| format!("decoding the AdmissionReview: {e}"))
        .and_then(|r| r.try_into().map_err(|e| format!("{e}")))
}

/// The webhook's answer to one request.
pub fn answer(
    admission: &dyn Admission,
    role: Role,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    let op = match req.operation {
        Operation::Create => kubevirt_apiserver::Operation::Create,
        Operation::Update => kubevirt_apiserver::Operation::Update,
        // Deletes and connects are not ours to judge.
        _ => return allowed,
    };
    let Some(object) = req.object.as_ref() else {
        return allowed;
    };
    let Ok(original) = serde_json::to_value(object) else {
        return allowed.deny("the object cannot be read");
    };
    let old = req
        .old_object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok());
    let mut object = original.clone();
    let result = admission.admit(
        &req.kind.group,
        &req.kind.kind,
        op,
        &mut object,
        old.as_ref(),
    );
    match (role, result) {
        (Role::Mutate, Ok(())) => {
            let patch = json_patch::diff(&original, &object);
            if patch.0.is_empty() {
                return allowed;
            }
            match allowed.clone().with_patch(patch) {
                Ok(r) => r,
                Err(e) => allowed.deny(e),
            }
        }
        // Defaults are applied only to valid objects; the validator says what is wrong.
        (Role::Mutate, Err(_)) | (Role::Validate, Ok(())) => allowed,
        (Role::Validate, Err(causes)) => denied(allowed, &causes),
    }
}

fn denied(mut resp: AdmissionResponse, causes: &[Cause]) -> AdmissionResponse {
    let shown = &causes[..causes.len().min(MAX_CAUSES)];
    let mut message = shown
        .iter()
        .map(|c| c.message.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if causes.len() > MAX_CAUSES {
        message.push_str(&format!(
            ", and {} more validation errors",
            causes.len() - MAX_CAUSES
        ));
    }
    resp.allowed = false;
    resp.result = Status {
        status: None,
        code: 422,
        message,
        metadata: None,
        reason: "Invalid".into(),
        details: Some(StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            retry_after_seconds: 0,
            causes: shown
                .iter()
                .map(|c| StatusCause {
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    field: c.field.clone(),
                })
                .collect(),
        }),
    };
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_apiserver::kubevirt::KubevirtAdmission;
    use serde_json::{json, Value};

    fn request(kind: &str, object: Value) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0f6e1d2c-1111-2222-3333-444455556666",
                "kind": {"group": "kubevirt.io", "version": "v1", "kind": kind},
                "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
                "operation": "CREATE",
                "name": "vm",
                "namespace": "default",
                "userInfo": {"username": "alice"},
                "object": object,
            },
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn vm(disk: &str, volume: &str) -> Value {
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "vm", "namespace": "default"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": disk, "disk": {"bus": "virtio"}}]},
                           "memory": {"guest": "64Mi"}},
                "volumes": [{"name": volume, "containerDisk": {"image": "registry:5000/x"}}],
            }}},
        })
    }

    #[test]
    fn validator_denies_with_field_causes_and_mutator_patches() {
        let adm = KubevirtAdmission::default();
        let bad = request("VirtualMachine", vm("root", "other"));
        let r = answer(&adm, Role::Validate, &bad);
        assert!(!r.allowed);
        assert_eq!(r.uid, "0f6e1d2c-1111-2222-3333-444455556666");
        assert_eq!(r.result.code, 422);
        assert_eq!(r.result.reason, "Invalid");
        let causes = &r.result.details.as_ref().unwrap().causes;
        assert!(
            causes.iter().any(|c| c
                .field
                .starts_with("spec.template.spec.domain.devices.disks[0]")),
            "{causes:?}"
        );
        // The mutator lets the invalid object through to the validator, unpatched.
        let m = answer(&adm, Role::Mutate, &bad);
        assert!(m.allowed && m.patch.is_none());

        let good = request("VirtualMachine", vm("root", "root"));
        assert!(answer(&adm, Role::Validate, &good).allowed);
        let m = answer(&adm, Role::Mutate, &good);
        assert!(m.allowed);
        let patch: Value = serde_json::from_slice(m.patch.as_deref().unwrap()).unwrap();
        assert!(
            patch.as_array().is_some_and(|ops| !ops.is_empty()),
            "defaults are patched in: {patch}"
        );
    }

    /// What virt-api answers `body` posted to `path`: the status and the response's JSON.
    async fn post(path: &str, body: &'static [u8]) -> (StatusCode, Value) {
        use tower::Service;
        let mut svc = router(Webhooks::new(Arc::new(KubevirtAdmission::default()))).into_service();
        let req = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        let resp = svc.call(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn hostile_reviews_are_refused_not_crashed_on() {
        let path = "/virtualmachines-validate";
        for body in [
            &b""[..],
            b"not json",
            b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
            b"{\"request\":{\"uid\":7}}",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ] {
            let (status, review) = post(path, body).await;
            assert_eq!(status, StatusCode::OK, "{body:?}");
            assert_eq!(review["response"]["allowed"], false, "{body:?}: {review}");
            assert!(
                review["response"]["status"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{review}"
            );
        }
        // A review whose object is not a VM at all is refused by the validator, not
        // allowed through.
        let (_, review) = post(
            path,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
                "uid":"u1","kind":{"group":"kubevirt.io","version":"v1","kind":"VirtualMachine"},
                "resource":{"group":"kubevirt.io","version":"v1","resource":"virtualmachines"},
                "operation":"CREATE","userInfo":{},
                "object":{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine",
                          "metadata":{"name":"x"},"spec":{"template":"nope"}}}}"#,
        )
        .await;
        assert_eq!(review["response"]["uid"], "u1");
        assert_eq!(review["response"]["allowed"], false, "{review}");
        // Paths that are no webhook are not found.
        let (status, _) = post("/no-such-webhook", b"{}").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn causes_beyond_ten_are_counted_not_listed() {
        let causes: Vec<Cause> = (0..12)
            .map(|i| Cause {
                reason: "FieldValueInvalid".into(),
                message: format!("m{i}"),
                field: format!("f{i}"),
            })
            .collect();
        let r = denied(
            AdmissionResponse::from(&request("VirtualMachine", vm("a", "a"))),
            &causes,
        );
        assert_eq!(r.result.details.unwrap().causes.len(), 10);
        assert!(r
            .result
            .message
            .ends_with("m9, and 2 more validation errors"));
    }
}
