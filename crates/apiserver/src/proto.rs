//! Decoding of the Kubernetes protobuf encoding for the built-in kinds kubectl's typed
//! commands send that way (`kubectl create namespace|configmap|secret|serviceaccount|
//! role|clusterrole|rolebinding|clusterrolebinding|quota|token`, `kubectl auth can-i|
//! whoami`). Everything else in protobuf is answered with 415 (clients then use JSON).

use base64::Engine;
use serde_json::{json, Map, Value};

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("not a Kubernetes protobuf envelope")]
    NoMagic,
    #[error("truncated or malformed protobuf")]
    Malformed,
    #[error("protobuf decoding of {kind} is not supported; send JSON")]
    Unsupported { kind: String },
}

type Result<T> = std::result::Result<T, ProtoError>;

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(ProtoError::Malformed)?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::Malformed)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = tag >> 3;
        let value = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| ProtoError::Malformed)?;
                if len > self.buf.len() {
                    return Err(ProtoError::Malformed);
                }
                let (b, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(b)
            }
            1 => {
                if self.buf.len() < 8 {
                    return Err(ProtoError::Malformed);
                }
                self.buf = &self.buf[8..];
                Field::Varint(0)
            }
            5 => {
                if self.buf.len() < 4 {
                    return Err(ProtoError::Malformed);
                }
                self.buf = &self.buf[4..];
                Field::Varint(0)
            }
            _ => return Err(ProtoError::Malformed),
        };
        Ok(Some((field, value)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed)
}

/// A `map<string, string|bytes>` entry.
fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value)> {
    let mut k = String::new();
    let mut v = Value::String(String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(x))
            }
            (2, Field::Bytes(x)) => v = json!(string(x)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn insert_map(obj: &mut Map<String, Value>, key: &str, entry: (String, Value)) {
    let m = obj.entry(key.to_string()).or_insert_with(|| json!({}));
    if let Some(m) = m.as_object_mut() {
        m.insert(entry.0, entry.1);
    }
}

fn object_meta(b: &[u8]) -> Result<Value> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                m.insert("name".into(), json!(string(x)?));
            }
            (2, Field::Bytes(x)) => {
                m.insert("generateName".into(), json!(string(x)?));
            }
            (3, Field::Bytes(x)) => {
                m.insert("namespace".into(), json!(string(x)?));
            }
            (6, Field::Bytes(x)) => {
                m.insert("resourceVersion".into(), json!(string(x)?));
            }
            (11, Field::Bytes(x)) => insert_map(&mut m, "labels", map_entry(x, false)?),
            (12, Field::Bytes(x)) => insert_map(&mut m, "annotations", map_entry(x, false)?),
            (14, Field::Bytes(x)) => {
                let f = m.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(a) = f.as_array_mut() {
                    a.push(json!(string(x)?));
                }
            }
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

/// How a protobuf field maps to JSON (the generated.proto of k8s.io/api, by field number).
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    Int,
    /// `ObjectMeta` (its own decoder).
    Meta,
    /// `map<string, string>`.
    StrMap,
    /// `map<string, Quantity>` (a Quantity is a message with its text in field 1).
    QuantityMap,
    Msg(&'static [FieldSpec]),
}

/// (number, JSON name, type, repeated)
type FieldSpec = (u64, &'static str, Ty, bool);

const POLICY_RULE: &[FieldSpec] = &[
    (1, "verbs", Ty::Str, true),
    (2, "apiGroups", Ty::Str, true),
    (3, "resources", Ty::Str, true),
    (4, "resourceNames", Ty::Str, true),
    (5, "nonResourceURLs", Ty::Str, true),
];
const LABEL_SELECTOR_REQUIREMENT: &[FieldSpec] = &[
    (1, "key", Ty::Str, false),
    (2, "operator", Ty::Str, false),
    (3, "values", Ty::Str, true),
];
const LABEL_SELECTOR: &[FieldSpec] = &[
    (1, "matchLabels", Ty::StrMap, false),
    (
        2,
        "matchExpressions",
        Ty::Msg(LABEL_SELECTOR_REQUIREMENT),
        true,
    ),
];
const SUBJECT: &[FieldSpec] = &[
    (1, "kind", Ty::Str, false),
    (2, "apiGroup", Ty::Str, false),
    (3, "name", Ty::Str, false),
    (4, "namespace", Ty::Str, false),
];
const ROLE_REF: &[FieldSpec] = &[
    (1, "apiGroup", Ty::Str, false),
    (2, "kind", Ty::Str, false),
    (3, "name", Ty::Str, false),
];
const ROLE: &[FieldSpec] = &[
    (1, "metadata", Ty::Meta, false),
    (2, "rules", Ty::Msg(POLICY_RULE), true),
];
const CLUSTER_ROLE: &[FieldSpec] = &[
    (1, "metadata", Ty::Meta, false),
    (2, "rules", Ty::Msg(POLICY_RULE), true),
    (
        3,
        "aggregationRule",
        Ty::Msg(&[(1, "clusterRoleSelectors", Ty::Msg(LABEL_SELECTOR), true)]),
        false,
    ),
];
const BINDING: &[FieldSpec] = &[
    (1, "metadata", Ty::Meta, false),
    (2, "subjects", Ty::Msg(SUBJECT), true),
    (3, "roleRef", Ty::Msg(ROLE_REF), false),
];
const SERVICE_ACCOUNT: &[FieldSpec] = &[
    (1, "metadata", Ty::Meta, false),
    (4, "automountServiceAccountToken", Ty::Bool, false),
];
const RESOURCE_QUOTA: &[FieldSpec] = &[
    (1, "metadata", Ty::Meta, false),
    (
        2,
        "spec",
        Ty::Msg(&[
            (1, "hard", Ty::QuantityMap, false),
            (2, "scopes", Ty::Str, true),
        ]),
        false,
    ),
];
const TOKEN_REQUEST: &[FieldSpec] = &[
    (1, "metadata", Ty::Meta, false),
    (
        2,
        "spec",
        Ty::Msg(&[
            (1, "audiences", Ty::Str, true),
            (
                3,
                "boundObjectRef",
                Ty::Msg(&[
                    (1, "kind", Ty::Str, false),
                    (2, "apiVersion", Ty::Str, false),
                    (3, "name", Ty::Str, false),
                    (4, "uid", Ty::Str, false),
                ]),
                false,
            ),
            (4, "expirationSeconds", Ty::Int, false),
        ]),
        false,
    ),
];
const RESOURCE_ATTRIBUTES: &[FieldSpec] = &[
    (1, "namespace", Ty::Str, false),
    (2, "verb", Ty::Str, false),
    (3, "group", Ty::Str, false),
    (4, "version", Ty::Str, false),
    (5, "resource", Ty::Str, false),
    (6, "subresource", Ty::Str, false),
    (7, "name", Ty::Str, false),
];
const NON_RESOURCE_ATTRIBUTES: &[FieldSpec] =
    &[(1, "path", Ty::Str, false), (2, "verb", Ty::Str, false)];
const ACCESS_REVIEW_SPEC: &[FieldSpec] = &[
    (1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES), false),
    (
        2,
        "nonResourceAttributes",
        Ty::Msg(NON_RESOURCE_ATTRIBUTES),
        false,
    ),
    (3, "user", Ty::Str, false),
    (4, "groups", Ty::Str, true),
    (6, "uid", Ty::Str, false),
];
const ACCESS_REVIEW: &[FieldSpec] = &[
    (1, "metadata", Ty::Meta, false),
    (2, "spec", Ty::Msg(ACCESS_REVIEW_SPEC), false),
];
const RULES_REVIEW: &[FieldSpec] = &[
    (1, "metadata", Ty::Meta, false),
    (
        2,
        "spec",
        Ty::Msg(&[(1, "namespace", Ty::Str, false)]),
        false,
    ),
];
const SELF_SUBJECT_REVIEW: &[FieldSpec] = &[(1, "metadata", Ty::Meta, false)];

fn schema_of(api_version: &str, kind: &str) -> Option<&'static [FieldSpec]> {
    Some(match (api_version, kind) {
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "ResourceQuota") => RESOURCE_QUOTA,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => BINDING,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => SELF_SUBJECT_REVIEW,
        (
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview",
        ) => ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => RULES_REVIEW,
        _ => return None,
    })
}

/// Decodes one message by its field table; unknown fields are skipped.
fn message(buf: &[u8], schema: &[FieldSpec]) -> Result<Value> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        let Some(&(_, name, ty, repeated)) = schema.iter().find(|s| s.0 == n) else {
            continue;
        };
        let v = match (ty, f) {
            (Ty::Str, Field::Bytes(x)) => json!(string(x)?),
            (Ty::Bool, Field::Varint(v)) => json!(v != 0),
            (Ty::Int, Field::Varint(v)) => json!(v as i64),
            (Ty::Meta, Field::Bytes(x)) => object_meta(x)?,
            (Ty::Msg(inner), Field::Bytes(x)) => message(x, inner)?,
            (Ty::StrMap, Field::Bytes(x)) => {
                insert_map(&mut out, name, map_entry(x, false)?);
                continue;
            }
            (Ty::QuantityMap, Field::Bytes(x)) => {
                let mut key = String::new();
                let mut value = String::new();
                for (en, ef) in fields(x)? {
                    match (en, ef) {
                        (1, Field::Bytes(k)) => key = string(k)?,
                        (2, Field::Bytes(q)) => {
                            for (qn, qf) in fields(q)? {
                                if let (1, Field::Bytes(t)) = (qn, qf) {
                                    value = string(t)?;
                                }
                            }
                        }
                        _ => {}
                    }
                }
                insert_map(&mut out, name, (key, json!(value)));
                continue;
            }
            _ => return Err(ProtoError::Malformed),
        };
        if repeated {
            let list = out.entry(name).or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(v);
            }
        } else {
            out.insert(name.into(), v);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-prefixed body into the JSON object it encodes.
pub fn decode(body: &[u8]) -> Result<Value> {
    let rest = body.strip_prefix(b"k8s\0").ok_or(ProtoError::NoMagic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    match (tn, tf) {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    if let Some(schema) = schema_of(&api_version, &kind) {
        let mut decoded = message(raw, schema)?;
        if let Some(m) = decoded.as_object_mut() {
            obj.append(m);
        }
        return Ok(Value::Object(obj));
    }
    let supported =
        api_version == "v1" && matches!(kind.as_str(), "Namespace" | "ConfigMap" | "Secret");
    if !supported {
        return Err(ProtoError::Unsupported { kind });
    }
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n, f) {
            (_, 1, Field::Bytes(x)) => {
                obj.insert("metadata".into(), object_meta(x)?);
            }
            ("ConfigMap", 2, Field::Bytes(x)) => insert_map(&mut obj, "data", map_entry(x, false)?),
            ("ConfigMap", 3, Field::Bytes(x)) => {
                insert_map(&mut obj, "binaryData", map_entry(x, true)?)
            }
            ("ConfigMap", 4, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", 2, Field::Bytes(x)) => insert_map(&mut obj, "data", map_entry(x, true)?),
            ("Secret", 3, Field::Bytes(x)) => {
                obj.insert("type".into(), json!(string(x)?));
            }
            ("Secret", 4, Field::Bytes(x)) => {
                insert_map(&mut obj, "stringData", map_entry(x, false)?)
            }
            ("Secret", 5, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            ("Namespace", 2, Field::Bytes(spec)) => {
                let mut fins = Vec::new();
                for (sn, sf) in fields(spec)? {
                    if let (1, Field::Bytes(x)) = (sn, sf) {
                        fins.push(json!(string(x)?));
                    }
                }
                obj.insert("spec".into(), json!({"finalizers": fins}));
            }
            _ => {}
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u64, b: &[u8]) -> Vec<u8> {
        let mut v = vec![((field << 3) | 2) as u8, b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn decodes_configmap() {
        let mut meta = ld(1, b"cm1");
        meta.extend(ld(11, &[ld(1, b"app"), ld(2, b"x")].concat()));
        let mut raw = ld(1, &meta);
        raw.extend(ld(2, &[ld(1, b"k"), ld(2, b"v")].concat()));
        let tm = [ld(1, b"v1"), ld(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &raw)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cm1", "labels": {"app": "x"}}, "data": {"k": "v"}})
        );
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        assert!(decode(b"{}").is_err());
    }
}
