//! The APIs that answer questions about identity and permission instead of storing
//! objects: TokenRequest (`serviceaccounts/NAME/token`, `kubectl create token`),
//! TokenReview, SelfSubjectReview (`kubectl auth whoami`), SelfSubjectAccessReview,
//! SubjectAccessReview and LocalSubjectAccessReview (`kubectl auth can-i`), and
//! SelfSubjectRulesReview (`kubectl auth can-i --list`). Each is a create that returns
//! the request with its `status` filled in, as kube-apiserver's are.

use std::collections::BTreeMap;

use http::StatusCode;
use kubevirt_rbac::{Policy, Request as RbacRequest, ResourceAttributes};
use serde_json::{json, Value};

use super::UserInfo;
use crate::error::{ApiError, ApiResult, Cause};
use crate::registry::ExtraApi;
use crate::store;

pub const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";
pub const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";

/// Discovery entries of the review APIs.
pub fn discovery() -> Vec<ExtraApi> {
    let create_only = |name: &str, kind: &str, namespaced: bool| {
        json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced,
               "kind": kind, "verbs": ["create"]})
    };
    vec![
        ExtraApi {
            group: AUTHENTICATION_GROUP.into(),
            version: "v1".into(),
            resources: vec![
                create_only("selfsubjectreviews", "SelfSubjectReview", false),
                create_only("tokenreviews", "TokenReview", false),
            ],
        },
        ExtraApi {
            group: AUTHORIZATION_GROUP.into(),
            version: "v1".into(),
            resources: vec![
                create_only(
                    "localsubjectaccessreviews",
                    "LocalSubjectAccessReview",
                    true,
                ),
                create_only("selfsubjectaccessreviews", "SelfSubjectAccessReview", false),
                create_only("selfsubjectrulesreviews", "SelfSubjectRulesReview", false),
                create_only("subjectaccessreviews", "SubjectAccessReview", false),
            ],
        },
    ]
}

/// `status.userInfo` / `status.user` as Kubernetes serialises a UserInfo (empty fields
/// omitted).
pub fn user_info_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.groups.is_empty() {
        v["groups"] = json!(u.groups);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

fn review_response(mut body: Value, api_version: &str, kind: &str, status: Value) -> Value {
    if !body.is_object() {
        body = json!({});
    }
    body["apiVersion"] = json!(api_version);
    body["kind"] = json!(kind);
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    body["status"] = status;
    body
}

fn invalid(kind: &str, group: &str, name: &str, field: &str, value: &str, msg: &str) -> ApiError {
    ApiError::invalid(
        kind,
        group,
        name,
        vec![Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {value}: {msg}"),
            field: field.into(),
        }],
    )
}

/// POST `/apis/authentication.k8s.io/v1/selfsubjectreviews`.
pub fn self_subject_review(user: &UserInfo, body: Value) -> Value {
    review_response(
        body,
        "authentication.k8s.io/v1",
        "SelfSubjectReview",
        json!({"userInfo": user_info_json(user)}),
    )
}

/// POST `/apis/authentication.k8s.io/v1/tokenreviews`.
pub fn token_review(auth: &super::Authenticator, body: Value) -> ApiResult<Value> {
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if token.is_empty() {
        return Err(ApiError::invalid(
            "TokenReview",
            AUTHENTICATION_GROUP,
            "",
            vec![Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: token must not be empty".into(),
                field: "spec.token".into(),
            }],
        ));
    }
    let status = match auth.authenticate_token(&token) {
        Some(u) => json!({"authenticated": true, "user": user_info_json(&u),
                          "audiences": [super::sa_tokens::ISSUER]}),
        None => {
            json!({"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"})
        }
    };
    Ok(review_response(
        body,
        "authentication.k8s.io/v1",
        "TokenReview",
        status,
    ))
}

/// The attributes of an access review's spec as an RBAC request; `Err` names the field.
fn review_request(spec: &Value, kind: &str) -> ApiResult<RbacRequest> {
    let res = spec.get("resourceAttributes").filter(|v| v.is_object());
    let non = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    match (res, non) {
        (Some(r), None) => Ok(RbacRequest::Resource {
            verb: s(r, "verb"),
            attrs: ResourceAttributes {
                namespace: s(r, "namespace"),
                api_group: s(r, "group"),
                resource: s(r, "resource"),
                subresource: s(r, "subresource"),
                name: s(r, "name"),
            },
        }),
        (None, Some(n)) => Ok(RbacRequest::NonResource {
            verb: s(n, "verb"),
            path: s(n, "path"),
        }),
        (Some(_), Some(_)) => Err(invalid(
            kind,
            AUTHORIZATION_GROUP,
            "",
            "spec.nonResourceAttributes",
            "\"\"",
            "cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => Err(invalid(
            kind,
            AUTHORIZATION_GROUP,
            "",
            "spec.resourceAttributes",
            "\"null\"",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn access_status(policy: &Policy, user: &UserInfo, req: &RbacRequest) -> Value {
    // kube-apiserver's privileged-group authorizer allows system:masters with no reason.
    if user.groups.iter().any(|g| g == super::MASTERS) {
        return json!({"allowed": true});
    }
    let d = policy.authorize(user, req);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    status
}

/// POST `selfsubjectaccessreviews`, `subjectaccessreviews` or
/// `namespaces/NS/localsubjectaccessreviews`. `self_user` is the requester for the
/// self review; the others name their subject in `spec`.
pub fn access_review(
    policy: &Policy,
    kind: &str,
    self_user: &UserInfo,
    namespace: Option<&str>,
    body: Value,
) -> ApiResult<Value> {
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let req = review_request(&spec, kind)?;
    if let (Some(ns), RbacRequest::Resource { attrs, .. }) = (namespace, &req) {
        if attrs.namespace != ns {
            return Err(invalid(
                kind,
                AUTHORIZATION_GROUP,
                "",
                "spec.resourceAttributes.namespace",
                &serde_json::to_string(&attrs.namespace).unwrap_or_default(),
                "must match metadata.namespace",
            ));
        }
    }
    let user = if kind == "SelfSubjectAccessReview" {
        self_user.clone()
    } else {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let name = spec["user"].as_str().unwrap_or_default().to_string();
        let groups = strings(&spec["groups"]);
        if name.is_empty() && groups.is_empty() {
            return Err(invalid(
                kind,
                AUTHORIZATION_GROUP,
                "",
                "spec.user",
                "\"\"",
                "at least one of user or group must be specified",
            ));
        }
        let extra: BTreeMap<String, Vec<String>> = spec["extra"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
            .unwrap_or_default();
        UserInfo {
            name,
            uid: spec["uid"].as_str().unwrap_or_default().to_string(),
            groups,
            extra,
        }
    };
    let api_version = "authorization.k8s.io/v1";
    Ok(review_response(
        body,
        api_version,
        kind,
        access_status(policy, &user, &req),
    ))
}

/// POST `selfsubjectrulesreviews`: every rule that applies to the requester in
/// `spec.namespace`, as kube's RBAC rule resolver lists them.
pub fn rules_review(policy: &Policy, user: &UserInfo, body: &Value) -> ApiResult<Value> {
    let ns = body
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if ns.is_empty() {
        return Err(ApiError::bad_request("no namespace on request"));
    }
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in policy.rules_for(user, &ns) {
        if !rule.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}));
        } else {
            let mut r = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups, "resources": rule.resources});
            if !rule.resource_names.is_empty() {
                r["resourceNames"] = json!(rule.resource_names);
            }
            resource_rules.push(r);
        }
    }
    // kube answers with the status only; the spec is not echoed.
    Ok(json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {},
        "status": {"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
                   "incomplete": false},
    }))
}

/// kube-apiserver's default and bounds for `spec.expirationSeconds`.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
const MIN_TOKEN_SECONDS: i64 = 600;
const MAX_TOKEN_SECONDS: i64 = 1 << 32;

/// POST `/api/v1/namespaces/NS/serviceaccounts/NAME/token`.
pub fn token_request(
    auth: &super::Authenticator,
    store: &store::Store,
    ns: &str,
    sa_name: &str,
    body: Value,
) -> ApiResult<Value> {
    let sa = store
        .get(&store::key("", "serviceaccounts", Some(ns), sa_name))
        .ok_or_else(|| ApiError::not_found("serviceaccounts", "", sa_name))?;
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_TOKEN_SECONDS,
        Some(v) => v.as_i64().unwrap_or(0),
    };
    let too_short = seconds < MIN_TOKEN_SECONDS;
    if too_short || seconds > MAX_TOKEN_SECONDS {
        return Err(invalid(
            "TokenRequest",
            AUTHENTICATION_GROUP,
            sa_name,
            "spec.expirationSeconds",
            &seconds.to_string(),
            if too_short {
                "may not specify a duration less than 10 minutes"
            } else {
                "may not specify a duration larger than 2^32 seconds"
            },
        ));
    }
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![super::sa_tokens::ISSUER.to_string()]);
    let bound = match spec.get("boundObjectRef").filter(|b| b.is_object()) {
        None => None,
        Some(b) => {
            let kind = b["kind"].as_str().unwrap_or_default().to_string();
            let name = b["name"].as_str().unwrap_or_default().to_string();
            let plural = match kind.as_str() {
                "Secret" => "secrets",
                "Pod" => "pods",
                _ => {
                    return Err(invalid(
                        "TokenRequest",
                        AUTHENTICATION_GROUP,
                        sa_name,
                        "spec.boundObjectRef.kind",
                        &serde_json::to_string(&kind).unwrap_or_default(),
                        "supported values: \"Pod\", \"Secret\"",
                    ))
                }
            };
            let obj = store
                .get(&store::key("", plural, Some(ns), &name))
                .ok_or_else(|| ApiError::not_found(plural, "", &name))?;
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if b["uid"].as_str().is_some_and(|u| !u.is_empty() && u != uid) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated", b["uid"].as_str().unwrap_or_default()),
                ));
            }
            Some((kind, name, uid))
        }
    };
    let now = super::authn::unix_now();
    let (token, exp) = auth
        .signer
        .bound_token(
            &sa,
            &audiences,
            seconds,
            bound
                .as_ref()
                .map(|(k, n, u)| (k.as_str(), n.as_str(), u.as_str())),
            now,
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut out = body;
    if !out.is_object() {
        out = json!({});
    }
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenRequest");
    out["metadata"] =
        json!({"name": sa_name, "namespace": ns, "creationTimestamp": crate::ops::now()});
    out["spec"]["audiences"] = json!(audiences);
    out["spec"]["expirationSeconds"] = json!(seconds);
    out["status"] = json!({
        "token": token,
        "expirationTimestamp": chrono::DateTime::from_timestamp(exp, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    });
    Ok(out)
}
