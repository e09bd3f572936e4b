//! Admission: decode, default, validate — what virt-api's webhooks and kube-apiserver's CRD
//! handling do, as pure functions.
//!
//! # Unknown fields
//! The typed structs *tolerate* unknown fields when deserialising (like client-go), so a newer
//! server never breaks an older client. The API server decides what to do with them:
//! [`unknown_fields`] lists their JSON paths, so it can reject them
//! (`fieldValidation=Strict`, kubectl's default) or warn; [`admit`] always *prunes* them,
//! because it rewrites the object from the typed form, exactly like kube-apiserver prunes
//! fields that a structural CRD schema does not declare. Fields under schema nodes with
//! `x-kubernetes-preserve-unknown-fields` (template metadata, DataVolume template specs) are
//! kept and never reported.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceReplicaSet,
};
use crate::{defaults, validation};

/// The admission operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// What is wrong with a field (Kubernetes' `field.ErrorType`).
#[derive(Clone, Debug, PartialEq)]
pub enum FieldErrorKind {
    /// A required field is missing or empty.
    Required,
    /// The value is malformed or out of range.
    Invalid { value: Value },
    /// The value must be unique but is repeated.
    Duplicate { value: Value },
    /// The value refers to something that does not exist.
    NotFound { value: Value },
    /// The value is not one of the supported values.
    NotSupported {
        value: Value,
        supported: Vec<String>,
    },
    /// The field may not be set (in this combination, or on update).
    Forbidden,
    /// The value is too long.
    TooLong,
    /// The list has too many items.
    TooMany,
    /// Invalid, worded as virt-api words some causes: the message alone, no value.
    InvalidMessage,
    /// Missing, worded as virt-api words some causes: the message alone.
    MissingMessage,
}

/// One problem with one field, with its path (`spec.domain.devices.disks[1].name`).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    /// Detail in Kubernetes' wording, without the path and kind prefix (may be empty).
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Required,
            message: message.into(),
        }
    }
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Invalid {
                value: value.into(),
            },
            message: message.into(),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Duplicate {
                value: value.into(),
            },
            message: String::new(),
        }
    }
    pub fn not_found(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::NotFound {
                value: value.into(),
            },
            message: String::new(),
        }
    }
    pub fn not_supported<S: AsRef<str>>(
        field: impl Into<String>,
        value: impl Into<Value>,
        supported: &[S],
    ) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| s.as_ref().to_string()).collect();
        let message = format!(
            "supported values: {}",
            supported
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Self {
            field: field.into(),
            kind: FieldErrorKind::NotSupported {
                value: value.into(),
                supported,
            },
            message,
        }
    }
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Forbidden,
            message: message.into(),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::TooLong,
            message: format!("may not be more than {max} bytes"),
        }
    }
    pub fn too_many(field: impl Into<String>, actual: usize, max: usize) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::TooMany,
            message: format!("{actual}: must have at most {max} items"),
        }
    }

    /// The `metav1.CauseType` string used in a `Status` object's `details.causes[].reason`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid { .. } => "FieldValueInvalid",
            FieldErrorKind::Duplicate { .. } => "FieldValueDuplicate",
            FieldErrorKind::NotFound { .. } => "FieldValueNotFound",
            FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TooMany => "FieldValueTooMany",
            FieldErrorKind::InvalidMessage => "FieldValueInvalid",
            FieldErrorKind::MissingMessage => "FieldValueNotFound",
        }
    }

    /// The error without the leading path (`Not found: "rootdisk"`), i.e. `ErrorBody()`.
    pub fn body(&self) -> String {
        let (head, value) = match &self.kind {
            FieldErrorKind::Required => ("Required value", None),
            FieldErrorKind::Invalid { value } => ("Invalid value", Some(value)),
            FieldErrorKind::Duplicate { value } => ("Duplicate value", Some(value)),
            FieldErrorKind::NotFound { value } => ("Not found", Some(value)),
            FieldErrorKind::NotSupported { value, .. } => ("Unsupported value", Some(value)),
            FieldErrorKind::Forbidden => ("Forbidden", None),
            FieldErrorKind::TooLong => ("Too long", None),
            FieldErrorKind::TooMany => ("Too many", None),
            FieldErrorKind::InvalidMessage | FieldErrorKind::MissingMessage => {
                return self.message.clone()
            }
        };
        let mut s = match value {
            Some(v) => format!("{head}: {}", format_value(v)),
            None => head.to_string(),
        };
        if !self.message.is_empty() {
            s.push_str(": ");
            s.push_str(&self.message);
        }
        s
    }
}

/// Go's `%v`/`%q` rendering of a bad value as apimachinery prints it.
fn format_value(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

impl std::error::Error for FieldError {}

/// Joins errors the way kube-apiserver does in an `Invalid` Status message:
/// `[a: ..., b: ...]` for several, the bare error for one.
pub fn aggregate(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The kinds [`admit`] understands.
pub const KINDS: [&str; 4] = [
    "VirtualMachine",
    "VirtualMachineInstance",
    "VirtualMachineInstanceMigration",
    "VirtualMachineInstanceReplicaSet",
];

/// Kinds stored as given ([`crate::crds::storage_only`]) whose part kubevirt-rs reads
/// [`admit`] checks, by group and kind; it never rewrites them.
pub const CHECKED_STORED_KINDS: [(&str, &str); 2] = [
    ("kubevirt.io", "KubeVirt"),
    ("migrations.kubevirt.io", "MigrationPolicy"),
];

/// The `cdi.kubevirt.io` kinds [`admit`] takes (CDI's webhook rules).
pub const CDI_KINDS: [&str; 1] = ["DataVolume"];

/// Decodes `obj` as `kind`, applies defaults (rewriting `obj`, pruning unknown fields),
/// then validates, including update rules against `old` when `op` is `Update`.
pub fn admit(
    kind: &str,
    op: Operation,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), Vec<FieldError>> {
    match kind {
        "VirtualMachine" => admit_typed::<VirtualMachine>(
            obj,
            old,
            op,
            defaults::set_vm_defaults,
            validation::validate_vm,
            validation::validate_vm_update,
        ),
        "VirtualMachineInstance" => admit_typed::<VirtualMachineInstance>(
            obj,
            old,
            op,
            |vmi: &mut VirtualMachineInstance| {
                defaults::set_vmi_defaults(vmi);
                if op == Operation::Create {
                    defaults::add_vmi_finalizer(vmi);
                }
            },
            validation::validate_vmi,
            validation::validate_vmi_update,
        ),
        "VirtualMachineInstanceMigration" => admit_typed::<VirtualMachineInstanceMigration>(
            obj,
            old,
            op,
            |m: &mut VirtualMachineInstanceMigration| {
                if op == Operation::Create {
                    defaults::set_migration_defaults(m);
                }
            },
            validation::validate_migration,
            validation::validate_migration_update,
        ),
        "VirtualMachineInstanceReplicaSet" => admit_typed::<VirtualMachineInstanceReplicaSet>(
            obj,
            old,
            op,
            defaults::set_replicaset_defaults,
            validation::validate_replicaset,
            validation::validate_replicaset_update,
        ),
        "DataVolume" => admit_typed::<crate::cdi::DataVolume>(
            obj,
            old,
            op,
            |_| {},
            crate::cdi::validate_data_volume,
            crate::cdi::validate_data_volume_update,
        ),
        "VirtualMachineSnapshot" => admit_typed::<crate::snapshot::VirtualMachineSnapshot>(
            obj,
            old,
            op,
            |_| {},
            crate::snapshot::validate_vm_snapshot,
            crate::snapshot::validate_vm_snapshot_update,
        ),
        "VirtualMachineSnapshotContent" => {
            admit_typed::<crate::snapshot::VirtualMachineSnapshotContent>(
                obj,
                old,
                op,
                |_| {},
                crate::snapshot::validate_vm_snapshot_content,
                crate::snapshot::validate_vm_snapshot_content_update,
            )
        }
        "VirtualMachineClone" => admit_typed::<crate::clone::VirtualMachineClone>(
            obj,
            old,
            op,
            |_| {},
            crate::clone::validate_clone,
            crate::clone::validate_clone_update,
        ),
        "VirtualMachineRestore" => admit_typed::<crate::snapshot::VirtualMachineRestore>(
            obj,
            old,
            op,
            |_| {},
            crate::snapshot::validate_vm_restore,
            crate::snapshot::validate_vm_restore_update,
        ),
        "VirtualMachineExport" => admit_typed::<crate::export::VirtualMachineExport>(
            obj,
            old,
            op,
            |_| {},
            crate::export::validate_vm_export,
            crate::export::validate_vm_export_update,
        ),
        // CHECKED_STORED_KINDS.
        "KubeVirt" => check_typed(obj, crate::install::validate_kubevirt),
        "MigrationPolicy" => check_typed(obj, crate::migration::validate_migration_policy),
        other => Err(vec![FieldError::not_supported("kind", other, &KINDS)]),
    }
}

/// Validates `obj` as `T` and leaves it as it is: `T` reads part of a kind whose other
/// fields are kept. (These kinds have no rules that compare with the old object.)
fn check_typed<T: DeserializeOwned>(
    obj: &Value,
    validate: fn(&T) -> Vec<FieldError>,
) -> Result<(), Vec<FieldError>> {
    let errors = validate(&decode(obj)?);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn admit_typed<T: DeserializeOwned + Serialize>(
    obj: &mut Value,
    old: Option<&Value>,
    op: Operation,
    default: impl Fn(&mut T),
    validate: fn(&T) -> Vec<FieldError>,
    validate_update: fn(&T, &T) -> Vec<FieldError>,
) -> Result<(), Vec<FieldError>> {
    let mut typed: T = decode(obj)?;
    default(&mut typed);
    let mut errors = validate(&typed);
    if op == Operation::Update {
        if let Some(old) = old {
            let mut old_typed: T = decode(old)?;
            // Stored objects were defaulted on create; default again so that objects stored
            // before a default existed compare equal.
            default(&mut old_typed);
            errors.extend(validate_update(&typed, &old_typed));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    *obj = serde_json::to_value(&typed)
        .map_err(|e| vec![FieldError::invalid("", "", e.to_string())])?;
    Ok(())
}

/// Deserialises `obj` into `T`, turning a decode failure into a field error with the path of
/// the offending field.
pub fn decode<T: DeserializeOwned>(obj: &Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(obj).map_err(|e| vec![decode_error(obj, &e)])
}

enum Seg {
    Key(String),
    Index(usize),
}

fn render_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn lookup<'a>(obj: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    let mut cur = obj;
    for s in segs {
        cur = match s {
            Seg::Key(k) => cur.get(k.as_str())?,
            Seg::Index(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

/// Backticked names in a serde message (`unknown variant `x`, expected `a` or `b``).
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, p)| p.to_string())
        .collect()
}

fn decode_error(obj: &Value, err: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    use serde_path_to_error::Segment;
    let mut segs: Vec<Seg> = Vec::new();
    for seg in err.path().iter() {
        match seg {
            Segment::Seq { index } => segs.push(Seg::Index(*index)),
            Segment::Map { key } => segs.push(Seg::Key(key.clone())),
            Segment::Enum { variant } => segs.push(Seg::Key(variant.clone())),
            Segment::Unknown => {}
        }
    }
    let inner = err.inner().to_string();
    // serde_json appends " at line L column C"; Values have no positions, but be safe.
    let msg = match inner.find(" at line ") {
        Some(i) => inner[..i].to_string(),
        None => inner,
    };
    let value = lookup(obj, &segs).cloned().unwrap_or(Value::Null);
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let name = rest.trim_matches('`').to_string();
        segs.push(Seg::Key(name));
        return FieldError::required(render_path(&segs), "");
    }
    if msg.starts_with("unknown variant ") {
        let names = backticked(&msg);
        let (bad, supported) = names
            .split_first()
            .map_or((String::new(), vec![]), |(b, s)| (b.clone(), s.to_vec()));
        let value = if value.is_null() {
            Value::String(bad)
        } else {
            value
        };
        return FieldError::not_supported(render_path(&segs), value, &supported);
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        let expected = rest.split(", expected ").nth(1).unwrap_or("another type");
        let ty = json_type_name(expected);
        let path = render_path(&segs);
        return FieldError::invalid(
            path.clone(),
            value.clone(),
            format!("{path} in body must be of type {ty}: {}", type_of(&value)),
        );
    }
    if let Some(rest) = msg.strip_prefix("invalid value: ") {
        // e.g. "integer `-1`, expected u32": an out-of-range number.
        let expected = rest.split(", expected ").nth(1).unwrap_or("");
        let detail = match expected {
            "u8" | "u16" | "u32" | "u64" | "usize" if value.as_i64().is_some_and(|v| v < 0) => {
                "must be greater than or equal to 0".to_string()
            }
            "u8" => format!("must be less than or equal to {}", u8::MAX),
            "u16" => format!("must be less than or equal to {}", u16::MAX),
            "u32" => format!("must be less than or equal to {}", u32::MAX),
            "i8" | "i16" | "i32" => format!("must fit in a {}-bit integer", &expected[1..]),
            _ => msg.clone(),
        };
        return FieldError::invalid(render_path(&segs), value, detail);
    }
    FieldError::invalid(render_path(&segs), value, msg)
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "\"null\"",
        Value::Bool(_) => "\"boolean\"",
        Value::Number(_) => "\"number\"",
        Value::String(_) => "\"string\"",
        Value::Array(_) => "\"array\"",
        Value::Object(_) => "\"object\"",
    }
}

/// Maps serde's "expected ..." text to an OpenAPI type name.
fn json_type_name(expected: &str) -> &'static str {
    let e = expected.to_ascii_lowercase();
    if e.contains("sequence") || e.contains("vec") || e.contains("array") {
        "array"
    } else if e.contains("bool") {
        "boolean"
    } else if e.starts_with('i') || e.starts_with('u') || e.contains("integer") {
        "integer"
    } else if e.contains("string") || e.contains("quantity") || e.contains("variant") {
        "string"
    } else if e.contains("f64") || e.contains("f32") || e.contains("number") {
        "number"
    } else {
        "object"
    }
}

/// JSON paths of fields in `obj` that the typed `kind` does not know (e.g.
/// `spec.template.spec.domain.foo`), metadata and status included. `null` values are ignored
/// (they mean "unset"). If `obj` does not decode at all, returns an empty list: the decode
/// error is reported by [`admit`].
pub fn unknown_fields(kind: &str, obj: &Value) -> Vec<String> {
    let typed = match kind {
        "VirtualMachine" => roundtrip::<VirtualMachine>(obj),
        "VirtualMachineInstance" => roundtrip::<VirtualMachineInstance>(obj),
        "VirtualMachineInstanceMigration" => roundtrip::<VirtualMachineInstanceMigration>(obj),
        "VirtualMachineInstanceReplicaSet" => roundtrip::<VirtualMachineInstanceReplicaSet>(obj),
        "DataVolume" => roundtrip::<crate::cdi::DataVolume>(obj),
        "VirtualMachineSnapshot" => roundtrip::<crate::snapshot::VirtualMachineSnapshot>(obj),
        "VirtualMachineSnapshotContent" => {
            roundtrip::<crate::snapshot::VirtualMachineSnapshotContent>(obj)
        }
        "VirtualMachineRestore" => roundtrip::<crate::snapshot::VirtualMachineRestore>(obj),
        "VirtualMachineClone" => roundtrip::<crate::clone::VirtualMachineClone>(obj),
        "VirtualMachineExport" => roundtrip::<crate::export::VirtualMachineExport>(obj),
        _ => None,
    };
    let Some(typed) = typed else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff_unknown(obj, &typed, &mut Vec::new(), &mut out);
    out
}

fn roundtrip<T: DeserializeOwned + Serialize>(obj: &Value) -> Option<Value> {
    let t: T = serde_json::from_value(obj.clone()).ok()?;
    serde_json::to_value(&t).ok()
}

fn diff_unknown(input: &Value, typed: &Value, path: &mut Vec<Seg>, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                path.push(Seg::Key(k.clone()));
                match b.get(k) {
                    Some(tv) => diff_unknown(v, tv, path, out),
                    None => out.push(render_path(path)),
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, tv)) in a.iter().zip(b.iter()).enumerate() {
                path.push(Seg::Index(i));
                diff_unknown(v, tv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn display_matches_kubernetes_wording() {
        let e = FieldError::not_found(
            "spec.template.spec.domain.devices.disks[1].name",
            "rootdisk",
        );
        assert_eq!(
            e.to_string(),
            "spec.template.spec.domain.devices.disks[1].name: Not found: \"rootdisk\""
        );
        assert_eq!(e.reason(), "FieldValueNotFound");
        let e = FieldError::forbidden(
            "spec.running",
            "running and runStrategy are mutually exclusive",
        );
        assert_eq!(
            e.to_string(),
            "spec.running: Forbidden: running and runStrategy are mutually exclusive"
        );
        let e = FieldError::not_supported("spec.x", "ide", &["virtio", "sata"]);
        assert_eq!(
            e.to_string(),
            "spec.x: Unsupported value: \"ide\": supported values: \"virtio\", \"sata\""
        );
        let e = FieldError::required("spec.template", "");
        assert_eq!(e.to_string(), "spec.template: Required value");
        let e = FieldError::invalid("spec.n", 5, "must be positive");
        assert_eq!(e.to_string(), "spec.n: Invalid value: 5: must be positive");
        assert_eq!(
            FieldError::too_many("a", 300, 256).reason(),
            "FieldValueTooMany"
        );
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let mut v = json!({});
        let errs = admit("Pod", Operation::Create, &mut v, None).unwrap_err();
        assert_eq!(errs[0].field, "kind");
        assert_eq!(errs[0].reason(), "FieldValueNotSupported");
    }

    #[test]
    fn unknown_fields_found_everywhere() {
        let obj = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "x", "bogus": 1, "creationTimestamp": null},
            "spec": {"domain": {"devices": {"disks": [{"name": "a", "foo": true}]}, "foo": {}},
                     "volumes": [{"name": "a", "containerDisk": {"image": "i", "x": 1}}]},
            "status": {"phase": "Running", "nope": "x"}
        });
        let mut got = unknown_fields("VirtualMachineInstance", &obj);
        got.sort();
        assert_eq!(
            got,
            vec![
                "metadata.bogus",
                "spec.domain.devices.disks[0].foo",
                "spec.domain.foo",
                "spec.volumes[0].containerDisk.x",
                "status.nope",
            ]
        );
    }
}
