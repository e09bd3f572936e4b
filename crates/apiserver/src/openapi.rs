//! OpenAPI v2 and v3 documents built from the registry, enough for `kubectl explain`,
//! kubectl's field-validation support check, and client-side tooling.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1 as authentication;
use k8s_openapi::api::authorization::v1 as authorization;
use k8s_openapi::api::coordination::v1 as coordination;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::events::v1 as events;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::api::storage::v1 as storage;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::{json, Map, Value};

use crate::registry::{Registry, ResourceDef};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Definitions of the built-in kinds and everything they reference, keyed by the
/// Kubernetes definition name, with `$ref`s into `#/components/schemas/`.
pub(crate) fn builtin_definitions() -> Map<String, Value> {
    let mut gen = schemars::generate::SchemaSettings::openapi3().into_generator();
    gen.subschema_for::<core::Namespace>();
    gen.subschema_for::<core::ConfigMap>();
    gen.subschema_for::<core::Secret>();
    gen.subschema_for::<core::Event>();
    gen.subschema_for::<core::Node>();
    gen.subschema_for::<core::Pod>();
    gen.subschema_for::<core::PersistentVolumeClaim>();
    gen.subschema_for::<core::PersistentVolume>();
    gen.subschema_for::<storage::StorageClass>();
    gen.subschema_for::<core::Service>();
    gen.subschema_for::<core::ServiceAccount>();
    gen.subschema_for::<core::ResourceQuota>();
    gen.subschema_for::<core::LimitRange>();
    gen.subschema_for::<rbac::Role>();
    gen.subschema_for::<rbac::ClusterRole>();
    gen.subschema_for::<rbac::RoleBinding>();
    gen.subschema_for::<rbac::ClusterRoleBinding>();
    gen.subschema_for::<authentication::TokenRequest>();
    gen.subschema_for::<authentication::TokenReview>();
    gen.subschema_for::<authentication::SelfSubjectReview>();
    gen.subschema_for::<authorization::SelfSubjectAccessReview>();
    gen.subschema_for::<authorization::SubjectAccessReview>();
    gen.subschema_for::<authorization::LocalSubjectAccessReview>();
    gen.subschema_for::<authorization::SelfSubjectRulesReview>();
    gen.subschema_for::<events::Event>();
    gen.subschema_for::<coordination::Lease>();
    gen.subschema_for::<apiext::CustomResourceDefinition>();
    gen.subschema_for::<meta::ObjectMeta>();
    gen.subschema_for::<meta::Status>();
    gen.take_definitions(true)
}

/// The create-only kinds of the review APIs (`auth::review`), which are not in the
/// registry: (group, version, kind, definition, create path; TokenRequest is a
/// subresource of ServiceAccounts and has none here).
const REVIEW_KINDS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "authentication.k8s.io",
        "v1",
        "TokenRequest",
        "io.k8s.api.authentication.v1.TokenRequest",
        "",
    ),
    (
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "io.k8s.api.authentication.v1.TokenReview",
        "/apis/authentication.k8s.io/v1/tokenreviews",
    ),
    (
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "io.k8s.api.authentication.v1.SelfSubjectReview",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    ),
    (
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
    ),
    (
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "io.k8s.api.authorization.v1.SubjectAccessReview",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
    ),
    (
        "authorization.k8s.io",
        "v1",
        "LocalSubjectAccessReview",
        "io.k8s.api.authorization.v1.LocalSubjectAccessReview",
        "/apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews",
    ),
    (
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "io.k8s.api.authorization.v1.SelfSubjectRulesReview",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
    ),
];

fn gvk_ext(def: &ResourceDef) -> Value {
    json!([{"group": def.group, "version": def.version, "kind": def.kind}])
}

/// A CRD schema as a definition: metadata points at ObjectMeta, apiVersion/kind described.
fn crd_definition(def: &ResourceDef) -> Value {
    let mut s = def
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    if !s["properties"].is_object() {
        s["properties"] = json!({});
    }
    s["properties"]["metadata"] = json!({
        "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
        "allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}],
    });
    s["properties"]["apiVersion"] = json!({
        "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
        "type": "string"});
    s["properties"]["kind"] = json!({
        "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
        "type": "string"});
    s["x-kubernetes-group-version-kind"] = gvk_ext(def);
    s
}

fn param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string"}, "type": "string", "uniqueItems": true})
}

fn operation(def: &ResourceDef, verb: &str, action: &str) -> Value {
    operation_for(&def.group, &def.version, &def.kind, verb, action)
}

fn operation_for(group: &str, version: &str, kind: &str, verb: &str, action: &str) -> Value {
    let mut params = vec![param(
        "dryRun",
        "When present, indicates that modifications should not be persisted.",
    )];
    if matches!(verb, "post" | "put" | "patch") {
        params.push(param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."));
        params.push(param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict."));
    }
    if verb == "patch" {
        params.push(param(
            "force",
            "Force is going to \"force\" Apply requests.",
        ));
    }
    json!({
        "description": format!("{action} {kind}"),
        "operationId": format!("{action}{kind}"),
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
    })
}

fn base_path(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        format!("/api/{}", def.version)
    } else {
        format!("/apis/{}/{}", def.group, def.version)
    }
}

fn paths_for(def: &ResourceDef) -> Vec<(String, Value)> {
    let ns = if def.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let coll = format!("{}{ns}/{}", base_path(def), def.plural);
    let item = format!("{coll}/{{name}}");
    let mut out = vec![
        (
            coll,
            json!({"get": operation(def, "get", "list"), "post": operation(def, "post", "post")}),
        ),
        (
            item.clone(),
            json!({
                "get": operation(def, "get", "get"),
                "put": operation(def, "put", "put"),
                "patch": operation(def, "patch", "patch"),
                "delete": operation(def, "delete", "delete"),
            }),
        ),
    ];
    if def.status_subresource {
        out.push((
            format!("{item}/status"),
            json!({
                "get": operation(def, "get", "get"),
                "put": operation(def, "put", "put"),
                "patch": operation(def, "patch", "patch"),
            }),
        ));
    }
    out
}

/// Collects every `#/components/schemas/X` reference reachable from `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    out.push(name.to_string());
                }
            }
            for x in m.values() {
                refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

pub struct OpenApi {
    builtin: Map<String, Value>,
}

impl Default for OpenApi {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenApi {
    pub fn new() -> OpenApi {
        let mut builtin = builtin_definitions();
        // Built-in kinds carry their GVK, as kube-apiserver's spec does.
        for d in crate::registry::builtins() {
            if let Some(name) = &d.builtin_definition {
                if let Some(s) = builtin.get_mut(name) {
                    s["x-kubernetes-group-version-kind"] = gvk_ext(&d);
                }
            }
        }
        for (group, version, kind, name, _) in REVIEW_KINDS {
            if let Some(s) = builtin.get_mut(*name) {
                s["x-kubernetes-group-version-kind"] =
                    json!([{"group": group, "version": version, "kind": kind}]);
            }
        }
        OpenApi { builtin }
    }

    /// Schemas named, plus everything they reference.
    fn closure(&self, mut todo: Vec<String>) -> Map<String, Value> {
        let mut out = Map::new();
        while let Some(name) = todo.pop() {
            if out.contains_key(&name) {
                continue;
            }
            if let Some(s) = self.builtin.get(&name) {
                refs(s, &mut todo);
                out.insert(name, s.clone());
            }
        }
        out
    }

    /// Schemas for the given resources plus everything they reference.
    fn schemas(&self, defs: &[&ResourceDef]) -> Map<String, Value> {
        let mut out = Map::new();
        let mut todo: Vec<String> = Vec::new();
        for d in defs {
            if d.builtin_definition.is_some() {
                todo.push(d.definition_name());
            } else {
                let s = crd_definition(d);
                refs(&s, &mut todo);
                out.insert(d.definition_name(), s);
            }
        }
        todo.push(OBJECT_META.to_string());
        for (name, schema) in self.closure(todo) {
            out.entry(name).or_insert(schema);
        }
        out
    }

    /// `/openapi/v3`: the index of group-version documents.
    pub fn v3_index(&self, reg: &Registry) -> Value {
        let mut paths = BTreeMap::new();
        for (g, vs) in reg.groups() {
            for v in vs {
                let p = if g.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{g}/{v}")
                };
                let hash = format!("{:016X}", fxhash(&format!("{p}{}", reg.all().len())));
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
                );
            }
        }
        json!({"paths": paths})
    }

    /// `/openapi/v3/apis/<group>/<version>` (or `api/v1`).
    pub fn v3_group(&self, reg: &Registry, group: &str, version: &str) -> Option<Value> {
        let all = reg.all();
        let defs: Vec<&ResourceDef> = all
            .iter()
            .filter(|d| d.group == group && d.version == version)
            .map(|d| d.as_ref())
            .collect();
        if defs.is_empty() {
            // The review APIs: schemas only (kubectl validates `create -f` against them).
            // (kubectl checks the create operation for `fieldValidation` to leave
            // validation to the server, and validates against the schemas otherwise.)
            let kinds: Vec<_> = REVIEW_KINDS
                .iter()
                .filter(|(g, v, ..)| *g == group && *v == version)
                .collect();
            if kinds.is_empty() {
                return None;
            }
            let mut paths = Map::new();
            for (g, v, kind, _, path) in kinds.iter().filter(|k| !k.4.is_empty()) {
                paths.insert(
                    path.to_string(),
                    json!({"post": operation_for(g, v, kind, "post", "post")}),
                );
            }
            let names = kinds.iter().map(|k| k.3.to_string()).collect();
            return Some(json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.32.0"},
                "paths": paths,
                "components": {"schemas": self.closure(names)},
            }));
        }
        let mut paths = Map::new();
        for d in &defs {
            for (p, v) in paths_for(d) {
                paths.insert(p, v);
            }
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths,
            "components": {"schemas": self.schemas(&defs)},
        }))
    }

    /// `/openapi/v2` (JSON).
    pub fn v2(&self, reg: &Registry) -> Value {
        let all = reg.all();
        let defs: Vec<&ResourceDef> = all.iter().map(|d| d.as_ref()).collect();
        let mut paths = Map::new();
        for d in &defs {
            for (p, v) in paths_for(d) {
                paths.insert(p, v);
            }
        }
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths,
            "definitions": self.schemas(&defs),
        });
        let text = doc
            .to_string()
            .replace("#/components/schemas/", "#/definitions/");
        serde_json::from_str(&text).unwrap_or(doc)
    }
}

/// A built-in kind's schema with `$ref`s inlined (to `depth`), for unknown-field detection.
/// Free-form objects (`type: object` without properties) and cut-off references accept
/// anything.
fn inline(defs: &Map<String, Value>, v: &Value, depth: usize) -> Value {
    match v {
        Value::Object(m) => {
            let target = m
                .get("$ref")
                .or_else(|| {
                    m.get("allOf")
                        .and_then(Value::as_array)
                        .filter(|a| a.len() == 1)
                        .and_then(|a| a[0].get("$ref"))
                })
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"));
            if let Some(name) = target {
                return match defs.get(name) {
                    Some(d) if depth > 0 => inline(defs, d, depth - 1),
                    _ => json!({"x-kubernetes-preserve-unknown-fields": true}),
                };
            }
            let mut out = Map::new();
            for (k, x) in m {
                let keep = match k.as_str() {
                    "properties" => {
                        let props: Map<String, Value> = x
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(pk, pv)| (pk.clone(), inline(defs, pv, depth)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        Value::Object(props)
                    }
                    "items" | "additionalProperties" if x.is_object() => inline(defs, x, depth),
                    _ => x.clone(),
                };
                out.insert(k.clone(), keep);
            }
            let free_form = out.get("type").and_then(Value::as_str) == Some("object")
                && !out.contains_key("properties")
                && !out.contains_key("additionalProperties");
            if free_form {
                out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Inlined schemas of the built-in kinds, by definition name (computed once).
pub fn builtin_field_schema(definition: &str) -> Option<std::sync::Arc<Value>> {
    static SCHEMAS: std::sync::OnceLock<BTreeMap<String, std::sync::Arc<Value>>> =
        std::sync::OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            let defs = builtin_definitions();
            crate::registry::builtins()
                .iter()
                .filter(|d| d.group != "apiextensions.k8s.io")
                .filter_map(|d| d.builtin_definition.clone())
                .filter_map(|name| {
                    let s = defs.get(&name)?;
                    Some((name, std::sync::Arc::new(inline(&defs, s, 8))))
                })
                .collect()
        })
        .get(definition)
        .cloned()
}

/// A small stable hash for the `?hash=` cache key.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schemas_have_descriptions_and_gvk() {
        let o = OpenApi::new();
        let cm = &o.builtin["io.k8s.api.core.v1.ConfigMap"];
        assert!(cm["properties"]["data"]["description"]
            .as_str()
            .unwrap()
            .contains("configuration data"));
        assert_eq!(
            cm["x-kubernetes-group-version-kind"][0]["kind"],
            "ConfigMap"
        );
        assert!(o.builtin.contains_key(OBJECT_META));
    }

    #[test]
    fn v3_group_doc_has_patch_with_field_validation() {
        let reg = Registry::new(Vec::new());
        let o = OpenApi::new();
        let doc = o.v3_group(&reg, "", "v1").unwrap();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "ConfigMap"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert!(doc["components"]["schemas"][OBJECT_META].is_object());
    }
}

#[cfg(test)]
mod field_schema_tests {
    use super::*;
    use crate::schema;

    #[test]
    fn builtin_unknown_fields() {
        let cm = builtin_field_schema("io.k8s.api.core.v1.ConfigMap").unwrap();
        let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {"x": "y"}},
            "data": {"k": "v"}, "dta": {}});
        assert_eq!(schema::unknown_fields(&cm, &mut o, false), vec!["dta"]);
        let pod = builtin_field_schema("io.k8s.api.core.v1.Pod").unwrap();
        let mut p = json!({"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always",
            "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80}], "typo": 1}]}});
        assert_eq!(
            schema::unknown_fields(&pod, &mut p, false),
            vec!["spec.containers[0].typo"]
        );
    }
}
