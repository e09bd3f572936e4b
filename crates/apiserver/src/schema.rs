//! Structural-schema handling for custom resources, as kube-apiserver does it: find (and
//! prune) fields the schema does not know, and check types, enums and required fields.

use serde_json::{Map, Value};

use crate::error::Cause;

/// Fields of `ObjectMeta` a client may send.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Walks `obj` against `schema`; records unknown field paths and removes them if `prune`.
fn walk(schema: &Value, obj: &mut Value, path: &str, prune: bool, out: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
        && schema.get("properties").is_none()
    {
        return;
    }
    match obj {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if props.is_none() && additional.is_none() {
                // `type: object` with no properties: kube prunes everything unless preserved.
                if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
                    || schema.get("type").is_none()
                {
                    return;
                }
            }
            let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let sub_path = join(path, &k);
                if let Some(sub) = props.and_then(|p| p.get(&k)) {
                    if let Some(v) = map.get_mut(&k) {
                        walk(sub, v, &sub_path, prune, out);
                    }
                } else if let Some(add) = additional {
                    if add.is_object() {
                        if let Some(v) = map.get_mut(&k) {
                            walk(add, v, &sub_path, prune, out);
                        }
                    }
                } else if !preserve {
                    out.push(sub_path);
                    if prune {
                        map.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    walk(item_schema, v, &format!("{path}[{i}]"), prune, out);
                }
            }
        }
        _ => {}
    }
}

/// Unknown fields of a whole object against a CRD `openAPIV3Schema` (paths like
/// `spec.template.foo`); removes them when `prune`.
pub fn unknown_fields(schema: &Value, obj: &mut Value, prune: bool) -> Vec<String> {
    let mut out = Vec::new();
    let Some(map) = obj.as_object_mut() else {
        return out;
    };
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        let keys: Vec<String> = meta.keys().cloned().collect();
        for k in keys {
            if !OBJECT_META_FIELDS.contains(&k.as_str()) {
                out.push(format!("metadata.{k}"));
                if prune {
                    meta.remove(&k);
                }
            }
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(&k)) {
            Some(sub) => {
                if let Some(v) = map.get_mut(&k) {
                    walk(sub, v, &k, prune, &mut out);
                }
            }
            None => {
                if schema["x-kubernetes-preserve-unknown-fields"].as_bool() != Some(true) {
                    out.push(k.clone());
                    if prune {
                        map.remove(&k);
                    }
                }
            }
        }
    }
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        o => o.to_string(),
    }
}

fn check(schema: &Value, v: &Value, path: &str, out: &mut Vec<Cause>) {
    if v.is_null() {
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let got = type_name(v);
        let ok = int_or_string && matches!(got, "integer" | "string")
            || got == want
            || (want == "number" && got == "integer");
        if !ok {
            out.push(Cause {
                reason: "FieldValueTypeInvalid".into(),
                message: format!(
                    "Invalid value: {}: {path} in body must be of type {want}: \"{got}\"",
                    short(v)
                ),
                field: path.to_string(),
            });
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(short).collect();
            out.push(Cause {
                reason: "FieldValueNotSupported".into(),
                message: format!(
                    "Unsupported value: {}: supported values: {}",
                    short(v),
                    list.join(", ")
                ),
                field: path.to_string(),
            });
        }
    }
    match v {
        Value::Object(map) => {
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        out.push(Cause {
                            reason: "FieldValueRequired".into(),
                            message: "Required value".into(),
                            field: join(path, r),
                        });
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, sub_v) in map {
                if let Some(sub) = props.and_then(|p| p.get(k)).or(additional) {
                    check(sub, sub_v, &join(path, k), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, it) in items.iter().enumerate() {
                    check(item_schema, it, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Type, enum and required checks of the object's non-metadata fields against its schema.
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let empty = Map::new();
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if let Some(map) = obj.as_object() {
        if let Some(req) = schema.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    out.push(Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value".into(),
                        field: r.to_string(),
                    });
                }
            }
        }
        for (k, v) in map {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(sub) = props.get(k) {
                check(sub, v, k, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer"},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            }},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }})
    }

    #[test]
    fn finds_and_prunes_unknown_fields() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "bogus": 1},
            "spec": {"size": 1, "foo": 2, "items": [{"n": "x", "m": 1}], "free": {"any": 1},
                     "labels": {"k": "v"}},
            "extra": true});
        let unknown = unknown_fields(&schema(), &mut o.clone(), false);
        assert_eq!(
            unknown,
            vec!["metadata.bogus", "spec.foo", "spec.items[0].m", "extra"]
        );
        unknown_fields(&schema(), &mut o, true);
        assert!(o["spec"].get("foo").is_none());
        assert!(o.get("extra").is_none());
        assert_eq!(o["spec"]["free"]["any"], 1);
    }

    #[test]
    fn validates_types_enums_required() {
        let o = json!({"spec": {"mode": "c", "items": [{"n": 5}]}});
        let causes = validate(&schema(), &o);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.size", "spec.mode", "spec.items[0].n"]);
        assert_eq!(causes[1].reason, "FieldValueNotSupported");
        assert!(
            causes[2].message.contains("must be of type string"),
            "{}",
            causes[2].message
        );
    }
}
