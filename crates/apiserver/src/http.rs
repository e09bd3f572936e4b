//! The HTTP layer: parses a request into a route and a verb, hands it to `ops`, renders the
//! answer (object, list, Table, watch stream, discovery, OpenAPI, Status error).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

use crate::decode;
use crate::error::{ApiError, ApiResult};
use crate::openapi::OpenApi;
use crate::ops::{
    DeleteOpts, FieldValidation, Ops, Outcome, Part, PatchType, Propagation, WriteOpts,
};
use crate::registry::{api_resource, ResourceDef};
use crate::store::{self, EventType};
use crate::view::{self, FieldSelector, IncludeObject, LabelSelector};

/// Shared server state for handlers.
pub struct AppState {
    pub ops: Ops,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub openapi: OpenApi,
    pub auth: crate::auth::Authenticator,
    pub authz: Arc<crate::auth::Authorizer>,
    pub bookmark_interval: Duration,
    /// Largest request body read (kube-apiserver's `MaxRequestBodyBytes`).
    pub max_body: usize,
    /// kube-apiserver's `--min-request-timeout`: a watch without `timeoutSeconds` lasts a
    /// random time between this and twice this; `timeoutSeconds` is capped at twice this.
    pub min_request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Version,
    Health,
    /// `/metrics` (Prometheus text).
    Metrics,
    Api,
    Apis,
    ApiGroup(String),
    ResourceList(String, String),
    OpenApiV2,
    OpenApiV3Index,
    OpenApiV3(String, String),
    Resource {
        group: String,
        version: String,
        plural: String,
        ns: Option<String>,
        name: Option<String>,
        sub: Option<String>,
    },
    NotFound,
}

/// Maps a URL path to a route. `namespaced` tells whether `plural` in `group/version` is
/// a namespaced resource (decides `/api/v1/namespaces/x/...` shapes).
pub fn parse_path(path: &str, namespaced: impl Fn(&str, &str, &str) -> bool) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["metrics"] => Route::Metrics,
        ["healthz"] | ["livez"] | ["readyz"] => Route::Health,
        ["healthz", ..] | ["livez", ..] | ["readyz", ..] => Route::Health,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["apis", g] => Route::ApiGroup(g.to_string()),
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3Index,
        ["openapi", "v3", "api", v] => Route::OpenApiV3(String::new(), v.to_string()),
        ["openapi", "v3", "apis", g, v] => Route::OpenApiV3(g.to_string(), v.to_string()),
        ["api", v, rest @ ..] => resource_route("", v, rest, &namespaced),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest, &namespaced),
        _ => Route::NotFound,
    }
}

fn resource_route(
    group: &str,
    version: &str,
    rest: &[&str],
    namespaced: &impl Fn(&str, &str, &str) -> bool,
) -> Route {
    let mk =
        |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Route::Resource {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            ns: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
        };
    match rest {
        [] => Route::ResourceList(group.to_string(), version.to_string()),
        ["namespaces", ns, plural, tail @ ..] if namespaced(group, version, plural) => match tail {
            [] => mk(plural, Some(ns), None, None),
            [name] => mk(plural, Some(ns), Some(name), None),
            [name, sub] => mk(plural, Some(ns), Some(name), Some(sub)),
            _ => Route::NotFound,
        },
        [plural] => mk(plural, None, None, None),
        [plural, name] => mk(plural, None, Some(name), None),
        [plural, name, sub] => mk(plural, None, Some(name), Some(sub)),
        _ => Route::NotFound,
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn not_found_route() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
    .with_no_details()
    .into_response()
}

impl ApiError {
    fn with_no_details(mut self) -> Self {
        self.details = None;
        self
    }
}

/// What a request does, as kube-apiserver's `RequestInfoFactory` reads it from the path:
/// `/api/v1/namespaces/NS/RESOURCE/NAME/SUBRESOURCE/...` (anything past the subresource,
/// like `vnc/screenshot`, is part of that subresource). Segments are percent-decoded and
/// empty ones dropped, so `%63onsole` or `//` cannot dodge a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    /// The whole subresource path when it has more than one segment (`vnc/screenshot`).
    pub subresource_path: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

pub(crate) fn percent_decode(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The resource attributes of a request, or `None` for non-resource paths (discovery,
/// `/version`, `/healthz`, ...).
pub fn request_info(method: &Method, path: &str, watch: bool) -> Option<RequestInfo> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, mut rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    if rest.is_empty() {
        return None;
    }
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        // `namespaces/NS/status` and `namespaces/NS/finalize` are the namespace's own.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let name = rest.get(1).map(|n| n.to_string());
    let verb = match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if name.is_some() => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => "",
    };
    Some(RequestInfo {
        verb,
        group: group.to_string(),
        resource: rest[0].to_string(),
        subresource: rest.get(2).map(|s| s.to_string()),
        subresource_path: (rest.len() > 3).then(|| rest[2..].join("/")),
        namespace,
        name,
    })
}

impl AppState {
    pub fn is_namespaced(&self, group: &str, version: &str, plural: &str) -> bool {
        let reg = &self.ops.registry;
        match reg.find(group, version, plural) {
            Some(d) => d.namespaced,
            None => reg.extra().iter().any(|e| {
                e.group == group
                    && e.version == version
                    && e.resources
                        .iter()
                        .any(|r| r["name"] == plural && r["namespaced"] == true)
            }),
        }
    }
}

pub(crate) fn query_map(uri: &http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn include_object(q: &HashMap<String, String>) -> IncludeObject {
    match q.get("includeObject").map(String::as_str) {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

/// The catch-all handler for the Kubernetes API.
pub async fn handle(State(app): State<Arc<AppState>>, req: Request) -> Response {
    match handle_inner(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle_inner(app: Arc<AppState>, req: Request) -> ApiResult<Response> {
    let route = parse_path(req.uri().path(), |g, v, p| app.is_namespaced(g, v, p));
    let q = query_map(req.uri());
    let method = req.method().clone();
    if !matches!(route, Route::Resource { .. }) && method != Method::GET && method != Method::HEAD {
        return Ok(not_found_route());
    }
    let reg = &app.ops.registry;
    match route {
        Route::Version => Ok(json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.0-kubevirt-rs",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "rust", "compiler": "rustc",
                "platform": "linux/amd64",
            }),
        )),
        Route::Metrics => Ok(crate::metrics::response(&app.metrics).await),
        Route::Health => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(r)
        }
        Route::Api => Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }),
        )),
        Route::Apis => {
            let groups: Vec<Value> = reg
                .groups()
                .into_iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, vs)| api_group(&g, &vs))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        Route::ApiGroup(g) => match reg.groups().get(&g) {
            Some(vs) if !g.is_empty() => Ok(json_response(StatusCode::OK, &api_group(&g, vs))),
            _ => Ok(not_found_route()),
        },
        Route::ResourceList(g, v) => {
            let mut resources: Vec<Value> = Vec::new();
            for d in reg.all().iter().filter(|d| d.group == g && d.version == v) {
                resources.push(api_resource(d));
                if d.status_subresource {
                    resources.push(json!({"name": format!("{}/status", d.plural), "singularName": "",
                        "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
                }
                if d.group.is_empty() && d.plural == "pods" {
                    resources.push(json!({"name": "pods/binding", "singularName": "",
                        "namespaced": true, "kind": "Binding", "verbs": ["create"]}));
                }
                if d.group.is_empty() && d.plural == "serviceaccounts" {
                    resources.push(json!({"name": "serviceaccounts/token", "singularName": "",
                        "namespaced": true, "group": "authentication.k8s.io", "version": "v1",
                        "kind": "TokenRequest", "verbs": ["create"]}));
                }
            }
            for e in reg
                .extra()
                .into_iter()
                .filter(|e| e.group == g && e.version == v)
            {
                resources.extend(e.resources);
            }
            if resources.is_empty() && !reg.groups().get(&g).is_some_and(|vs| vs.contains(&v)) {
                return Ok(not_found_route());
            }
            let gv = if g.is_empty() {
                v.clone()
            } else {
                format!("{g}/{v}")
            };
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources,
                }),
            ))
        }
        Route::OpenApiV2 => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("*/*");
            if !(accept.contains("json") || accept.contains("*/*")) {
                return Err(ApiError::new(
                    StatusCode::NOT_ACCEPTABLE,
                    "NotAcceptable",
                    "only application/json is served for /openapi/v2",
                ));
            }
            Ok(json_response(StatusCode::OK, &app.openapi.v2(reg)))
        }
        Route::OpenApiV3Index => Ok(json_response(StatusCode::OK, &app.openapi.v3_index(reg))),
        Route::OpenApiV3(g, v) => match app.openapi.v3_group(reg, &g, &v) {
            Some(doc) => Ok(json_response(StatusCode::OK, &doc)),
            None => Ok(not_found_route()),
        },
        Route::NotFound => Ok(not_found_route()),
        Route::Resource {
            group,
            version,
            plural,
            ns,
            name,
            sub,
        } => {
            if let Some(review) =
                Review::of(&group, &version, &plural, name.is_some(), sub.as_deref())
            {
                if method != Method::POST {
                    return Err(ApiError::method_not_allowed(
                        "the server does not allow this method on the requested resource",
                    ));
                }
                return reviews(&app, review, ns.as_deref(), name.as_deref(), req).await;
            }
            let Some(def) = reg.find(&group, &version, &plural) else {
                return Ok(not_found_route());
            };
            if !def.namespaced && ns.is_some() {
                return Ok(not_found_route());
            }
            let part = match sub.as_deref() {
                None => Part::Main,
                Some("status") if def.status_subresource => Part::Status,
                Some("binding") if def.group.is_empty() && def.plural == "pods" => Part::Binding,
                Some("eviction") if def.group.is_empty() && def.plural == "pods" => Part::Eviction,
                Some(_) => return Ok(not_found_route()),
            };
            resource(app.clone(), def, ns, name, part, q, req).await
        }
    }
}

/// The create-only APIs answered by `auth::review`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Review {
    SelfSubject,
    Token,
    SelfSubjectAccess,
    SubjectAccess,
    LocalSubjectAccess,
    SelfSubjectRules,
    TokenRequest,
}

impl Review {
    fn of(
        group: &str,
        version: &str,
        plural: &str,
        named: bool,
        sub: Option<&str>,
    ) -> Option<Review> {
        use crate::auth::review::{AUTHENTICATION_GROUP, AUTHORIZATION_GROUP};
        if version != "v1" {
            return None;
        }
        let r = match (group, plural, named, sub) {
            ("", "serviceaccounts", true, Some("token")) => Review::TokenRequest,
            (_, _, true, _) => return None,
            (AUTHENTICATION_GROUP, "selfsubjectreviews", ..) => Review::SelfSubject,
            (AUTHENTICATION_GROUP, "tokenreviews", ..) => Review::Token,
            (AUTHORIZATION_GROUP, "selfsubjectaccessreviews", ..) => Review::SelfSubjectAccess,
            (AUTHORIZATION_GROUP, "subjectaccessreviews", ..) => Review::SubjectAccess,
            (AUTHORIZATION_GROUP, "localsubjectaccessreviews", ..) => Review::LocalSubjectAccess,
            (AUTHORIZATION_GROUP, "selfsubjectrulesreviews", ..) => Review::SelfSubjectRules,
            _ => return None,
        };
        Some(r)
    }
}

async fn reviews(
    app: &AppState,
    review: Review,
    ns: Option<&str>,
    name: Option<&str>,
    req: Request,
) -> ApiResult<Response> {
    use crate::auth::review;
    let user = req
        .extensions()
        .get::<crate::auth::RequestUser>()
        .map(|u| u.0.clone())
        .ok_or_else(ApiError::unauthorized)?;
    let (body, _) = read_body(req, app.max_body).await?;
    let policy = || app.authz.policy();
    let out = match review {
        Review::SelfSubject => review::self_subject_review(&user, body),
        Review::Token => review::token_review(&app.auth, body)?,
        Review::SelfSubjectAccess => {
            review::access_review(&policy(), "SelfSubjectAccessReview", &user, None, body)?
        }
        Review::SubjectAccess => {
            review::access_review(&policy(), "SubjectAccessReview", &user, None, body)?
        }
        Review::LocalSubjectAccess => {
            let ns = ns.ok_or_else(not_found_error)?;
            review::access_review(&policy(), "LocalSubjectAccessReview", &user, Some(ns), body)?
        }
        Review::SelfSubjectRules => review::rules_review(&policy(), &user, &body)?,
        Review::TokenRequest => {
            let (ns, name) = ns.zip(name).ok_or_else(not_found_error)?;
            review::token_request(&app.auth, &app.ops.store, ns, name, body)?
        }
    };
    Ok(json_response(StatusCode::CREATED, &out))
}

fn not_found_error() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn api_group(g: &str, vs: &[String]) -> Value {
    let versions: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(json!({})),
    })
}

/// Reads at most `max` bytes of body (413 past that, as kube-apiserver) and decodes it off
/// the async runtime: YAML and JSON parsing is CPU-bound and must not stall other requests.
pub(crate) async fn read_body(req: Request, max: usize) -> ApiResult<(Value, String)> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let bytes = axum::body::to_bytes(req.into_body(), max)
        .await
        .map_err(|e| {
            let over_limit =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if over_limit {
                decode::too_large(format_args!("limit is {max}"))
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            }
        })?;
    let content_type = ct.clone();
    let v = tokio::task::spawn_blocking(move || decode::decode_body(&content_type, &bytes))
        .await
        .map_err(|e| ApiError::internal(format!("decoding the request body: {e}")))??;
    let ct = if decode::Format::from_content_type(&ct) == decode::Format::Protobuf {
        "application/json".to_string()
    } else {
        ct
    };
    Ok((v, ct))
}

fn write_opts(
    q: &HashMap<String, String>,
    user: &Option<Arc<crate::auth::UserInfo>>,
) -> ApiResult<WriteOpts> {
    Ok(WriteOpts {
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        field_validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        user: user.clone(),
    })
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append("Warning", v);
        }
    }
    r
}

fn outcome_response(
    code: StatusCode,
    o: &Outcome,
    def: &ResourceDef,
    table: bool,
    q: &HashMap<String, String>,
) -> Response {
    let body = if table {
        view::table(
            def,
            &[o.obj.as_ref()],
            include_object(q),
            true,
            json!({"resourceVersion": ""}),
        )
    } else {
        (*o.obj).clone()
    };
    with_warnings(json_response(code, &body), &o.warnings)
}

async fn resource(
    app: Arc<AppState>,
    def: Arc<ResourceDef>,
    ns: Option<String>,
    name: Option<String>,
    part: Part,
    q: HashMap<String, String>,
    req: Request,
) -> ApiResult<Response> {
    let ops = &app.ops;
    let method = req.method().clone();
    let table = wants_table(req.headers());
    let ns_ref = ns.as_deref();
    let user = req
        .extensions()
        .get::<crate::auth::RequestUser>()
        .map(|u| u.0.clone());
    if part == Part::Eviction {
        return match (method, name, ns_ref) {
            (Method::POST, Some(name), Some(ns)) => {
                let (body, _) = read_body(req, app.max_body).await?;
                ops.evict(&def, ns, &name, body).await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        };
    }
    if part == Part::Binding {
        return match (method, name, ns_ref) {
            (Method::POST, Some(name), Some(ns)) => {
                let (body, _) = read_body(req, app.max_body).await?;
                ops.bind(&def, ns, &name, body).await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        };
    }
    match (method, name) {
        (Method::GET, None) => {
            let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
            if watch {
                watch_response(app.clone(), def, ns, q, table)
            } else {
                list(&app, &def, ns_ref, &q, table)
            }
        }
        (Method::POST, None) => {
            if def.namespaced && ns.is_none() {
                return Ok(not_found_route());
            }
            let (body, _) = read_body(req, app.max_body).await?;
            let o = ops
                .create(&def, ns_ref, body, write_opts(&q, &user)?)
                .await?;
            Ok(outcome_response(StatusCode::CREATED, &o, &def, false, &q))
        }
        (Method::DELETE, None) => {
            let opts = delete_opts(&q, Value::Null)?;
            let ls =
                LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let fs =
                FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
            let prefix = store::prefix(crate::convert::storage_group(&def), &def.plural, ns_ref);
            let (items, _) = ops.store.list(&prefix);
            let mut deleted = Vec::new();
            for it in items.iter().filter(|o| ls.matches(o) && fs.matches(o)) {
                let n = it
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let ins = it.pointer("/metadata/namespace").and_then(Value::as_str);
                if let Ok(o) = ops.delete(&def, ins, n, opts.clone()).await {
                    deleted.push((*o.obj).clone());
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": def.list_kind(), "apiVersion": def.api_version(),
                    "metadata": {"resourceVersion": ops.store.revision().to_string()}, "items": deleted,
                }),
            ))
        }
        (Method::GET, Some(name)) => {
            let o = ops.get(&def, ns_ref, &name)?;
            if table {
                return Ok(json_response(
                    StatusCode::OK,
                    &view::table(
                        &def,
                        &[&o],
                        include_object(&q),
                        true,
                        json!({"resourceVersion": o.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))}),
                    ),
                ));
            }
            Ok(json_response(StatusCode::OK, &o))
        }
        (Method::PUT, Some(name)) => {
            let (body, _) = read_body(req, app.max_body).await?;
            let o = ops
                .update(&def, ns_ref, &name, body, part, write_opts(&q, &user)?)
                .await?;
            Ok(outcome_response(StatusCode::OK, &o, &def, false, &q))
        }
        (Method::PATCH, Some(name)) => {
            let (body, ct) = read_body(req, app.max_body).await?;
            let pt = PatchType::from_content_type(&ct)?;
            let o = ops
                .patch(&def, ns_ref, &name, pt, body, part, write_opts(&q, &user)?)
                .await?;
            let code = if o.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(outcome_response(code, &o, &def, false, &q))
        }
        (Method::DELETE, Some(name)) => {
            if part != Part::Main {
                return Err(ApiError::method_not_allowed(
                    "delete is not supported on subresources",
                ));
            }
            let (body, _) = read_body(req, app.max_body).await?;
            let opts = delete_opts(&q, body)?;
            let o = ops.delete(&def, ns_ref, &name, opts).await?;
            let code = if o.deleted {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok(json_response(code, &o.obj))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn delete_opts(q: &HashMap<String, String>, body: Value) -> ApiResult<DeleteOpts> {
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| q.get("propagationPolicy").cloned());
    let propagation = match policy.as_deref() {
        None | Some("") => None,
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some("Orphan") => Some(Propagation::Orphan),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            )))
        }
    };
    let orphan = body
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| q.get("orphanDependents").map(|s| s == "true"));
    let propagation = match (propagation, orphan) {
        (None, Some(true)) => Some(Propagation::Orphan),
        (p, _) => p,
    };
    let dry = body
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == "All"))
        || q.get("dryRun").is_some_and(|d| d == "All");
    let grace_period = match body.get("gracePeriodSeconds") {
        Some(Value::Null) | None => q.get("gracePeriodSeconds").map(|g| {
            g.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}"))
            })
        }),
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("gracePeriodSeconds: invalid value {v}"))
        })),
    }
    .transpose()?;
    Ok(DeleteOpts {
        propagation,
        grace_period,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: dry,
    })
}

fn continue_token(key: &str, rev: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{rev}\n{key}"))
}

fn parse_continue(tok: &str) -> ApiResult<String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tok)
        .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
    let s =
        String::from_utf8(raw).map_err(|_| ApiError::bad_request("continue key is not valid"))?;
    s.split_once('\n')
        .map(|(_, k)| k.to_string())
        .ok_or_else(|| ApiError::bad_request("continue key is not valid"))
}

fn list(
    app: &AppState,
    def: &Arc<ResourceDef>,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    table: bool,
) -> ApiResult<Response> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let limit: usize = match q.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let after = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => Some(parse_continue(c)?),
        None => None,
    };
    let prefix = store::prefix(
        crate::convert::storage_group(def),
        &def.plural,
        if def.namespaced { ns } else { None },
    );
    let (items, rev) = app.ops.store.list_keyed(&prefix);
    let mut out: Vec<Value> = Vec::new();
    let mut next: Option<String> = None;
    let mut remaining = 0usize;
    for (k, o) in items.iter() {
        if after.as_ref().is_some_and(|a| k <= a) {
            continue;
        }
        if !(ls.matches(o) && fs.matches(o)) {
            continue;
        }
        if limit > 0 && out.len() >= limit {
            remaining += 1;
            continue;
        }
        if limit > 0 && out.len() + 1 == limit {
            next = Some(k.clone());
        }
        out.push(Ops::present(def, o));
    }
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if remaining > 0 {
        if let Some(k) = next {
            meta["continue"] = json!(continue_token(&k, rev));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    if table {
        let refs: Vec<&Value> = out.iter().collect();
        return Ok(json_response(
            StatusCode::OK,
            &view::table(def, &refs, include_object(q), true, meta),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": meta, "items": out,
        }),
    ))
}

/// How long a watch runs. As kube-apiserver: `timeoutSeconds` if given, else a random
/// time in [min, 2*min) so that watches started together do not all end (and re-list)
/// together. Unlike kube-apiserver, a `timeoutSeconds` above 2*min is cut to 2*min, so no
/// client holds a watch open for days.
fn watch_timeout(param: Option<&String>, min: Duration) -> ApiResult<Duration> {
    use rand::Rng;
    let max = min.saturating_mul(2);
    let asked = match param.map(String::as_str) {
        None | Some("") => 0,
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}")))?,
    };
    if asked > 0 {
        return Ok(Duration::from_secs(asked).min(max));
    }
    Ok(min.mul_f64(1.0 + rand::rng().random_range(0.0..1.0)))
}

struct WatchFilter {
    prefix: String,
    ls: LabelSelector,
    fs: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, key: &str, o: &Value) -> bool {
        key.starts_with(&self.prefix) && self.ls.matches(o) && self.fs.matches(o)
    }
}

fn event_line(
    def: &ResourceDef,
    kind: &str,
    obj: &Value,
    table: bool,
    include: IncludeObject,
) -> Bytes {
    let object = if table && kind != "BOOKMARK" && kind != "ERROR" {
        view::table(
            def,
            &[obj],
            include,
            true,
            json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))}),
        )
    } else if kind == "ERROR" || kind == "BOOKMARK" {
        obj.clone()
    } else {
        Ops::present(def, obj)
    };
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(def: &ResourceDef, rev: i64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta})
}

fn watch_response(
    app: Arc<AppState>,
    def: Arc<ResourceDef>,
    ns: Option<String>,
    q: HashMap<String, String>,
    table: bool,
) -> ApiResult<Response> {
    let filter = WatchFilter {
        prefix: store::prefix(
            crate::convert::storage_group(&def),
            &def.plural,
            if def.namespaced { ns.as_deref() } else { None },
        ),
        ls: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fs: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let send_initial = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = watch_timeout(q.get("timeoutSeconds"), app.min_request_timeout)?;
    let include = include_object(&q);
    let rv = q.get("resourceVersion").cloned().unwrap_or_default();
    let store = app.ops.store.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);

    // Register before answering so no event is missed between the answer and the task.
    let mut initial: Vec<Bytes> = Vec::new();
    let (mut events, start_rev, backlog) = if rv.is_empty() || rv == "0" || send_initial {
        let (items, rev, rx) = store.snapshot_and_watch(&filter.prefix);
        for (k, o) in &items {
            if filter.matches(k, o) {
                initial.push(event_line(&def, "ADDED", o, table, include));
            }
        }
        if send_initial {
            initial.push(event_line(
                &def,
                "BOOKMARK",
                &bookmark(&def, rev, true),
                false,
                include,
            ));
        }
        (rx, rev, Vec::new())
    } else {
        let from: i64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
        match store.watch_from(from) {
            Ok((backlog, rx)) => (rx, from, backlog),
            Err(e) => {
                // As kube-apiserver: a 200 watch whose only event is a 410 Expired error.
                let line = event_line(&def, "ERROR", &e.to_status(), false, include);
                let body = Body::from(line);
                let mut r = Response::new(body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return Ok(r);
            }
        }
    };
    let def2 = def.clone();
    tokio::spawn(async move {
        let def = def2;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(app.bookmark_interval);
        tick.tick().await;
        let mut seen = start_rev;
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let handle = |ev: &store::Event| -> Option<Bytes> {
            let now = filter.matches(&ev.key, &ev.obj);
            let before = ev.prev.as_ref().is_some_and(|p| filter.matches(&ev.key, p));
            let kind = match ev.kind {
                EventType::Added if now => "ADDED",
                EventType::Modified if now && before => "MODIFIED",
                EventType::Modified if now => "ADDED",
                EventType::Modified if before => "DELETED",
                EventType::Deleted if now => "DELETED",
                _ => return None,
            };
            Some(event_line(&def, kind, &ev.obj, table, include))
        };
        for ev in backlog {
            seen = ev.rev;
            if let Some(line) = handle(&ev) {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        }
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(event_line(&def, "BOOKMARK", &bookmark(&def, seen, false), false, include)).await.is_err() {
                        return;
                    }
                }
                r = events.recv() => match r {
                    Ok(ev) => {
                        if ev.rev <= seen { continue; }
                        seen = ev.rev;
                        if let Some(line) = handle(&ev) {
                            if tx.send(line).await.is_err() { return; }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::expired("watch fell too far behind; relist");
                        let _ = tx.send(event_line(&def, "ERROR", &e.to_status(), false, include)).await;
                        return;
                    }
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_info_reads_subresources_like_kube() {
        let info = request_info(
            &Method::GET,
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/vm/vnc/screenshot",
            false,
        )
        .unwrap();
        assert_eq!(info.verb, "get");
        assert_eq!(info.group, "subresources.kubevirt.io");
        assert_eq!(info.resource, "virtualmachineinstances");
        assert_eq!(info.subresource.as_deref(), Some("vnc"));
        assert_eq!(info.namespace.as_deref(), Some("ns"));
        assert_eq!(info.name.as_deref(), Some("vm"));
        let sneaky =
            request_info(&Method::GET, "/api//v1/namespaces/ns/pods/p/%65xec", false).unwrap();
        assert_eq!(sneaky.subresource.as_deref(), Some("exec"));
        let ns = request_info(&Method::DELETE, "/api/v1/namespaces/ns", false).unwrap();
        assert_eq!((ns.verb, ns.resource.as_str()), ("delete", "namespaces"));
        assert!(request_info(&Method::GET, "/apis/kubevirt.io/v1", false).is_none());
        assert!(request_info(&Method::GET, "/version", false).is_none());
    }

    #[test]
    fn watch_timeouts_are_randomized_and_capped() {
        let min = Duration::from_secs(1800);
        for _ in 0..100 {
            let t = watch_timeout(None, min).unwrap();
            assert!(t >= min && t < min * 2, "{t:?}");
        }
        let asked = |s: &str| watch_timeout(Some(&s.to_string()), min);
        assert_eq!(asked("5").unwrap(), Duration::from_secs(5));
        assert_eq!(asked("99999999999").unwrap(), min * 2);
        assert!(asked("0").unwrap() >= min);
        assert_eq!(asked("x").unwrap_err().code, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn routes() {
        let ns = |_: &str, _: &str, p: &str| p != "namespaces" && p != "nodes";
        assert_eq!(
            parse_path("/api/v1/namespaces", ns),
            Route::Resource {
                group: "".into(),
                version: "v1".into(),
                plural: "namespaces".into(),
                ns: None,
                name: None,
                sub: None
            }
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/default", ns),
            Route::Resource {
                group: "".into(),
                version: "v1".into(),
                plural: "namespaces".into(),
                ns: None,
                name: Some("default".into()),
                sub: None
            }
        );
        assert_eq!(
            parse_path(
                "/apis/kubevirt.io/v1/namespaces/d/virtualmachines/x/status",
                ns
            ),
            Route::Resource {
                group: "kubevirt.io".into(),
                version: "v1".into(),
                plural: "virtualmachines".into(),
                ns: Some("d".into()),
                name: Some("x".into()),
                sub: Some("status".into())
            }
        );
        assert_eq!(
            parse_path("/apis/kubevirt.io/v1", ns),
            Route::ResourceList("kubevirt.io".into(), "v1".into())
        );
        assert_eq!(
            parse_path("/openapi/v3/apis/kubevirt.io/v1", ns),
            Route::OpenApiV3("kubevirt.io".into(), "v1".into())
        );
        assert_eq!(parse_path("/nope", ns), Route::NotFound);
    }
}
