//! `clone.kubevirt.io/v1beta1` VirtualMachineClone: a new VM from a VM (through a temporary
//! snapshot) or from a VM snapshot, with a new identity. The patches that give the clone its
//! identity and filter its labels and annotations are made here, as upstream makes them, so
//! the controller only sequences snapshot, restore and clean-up.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::TypedLocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_with::skip_serializing_none;

use crate::admission::{FieldError, FieldErrorKind};
use crate::snapshot::SnapshotCondition;
use crate::v1::VirtualMachine;

pub const GROUP: &str = "clone.kubevirt.io";
pub const KINDS: [&str; 1] = ["VirtualMachineClone"];

#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "clone.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineClone",
    doc = "VirtualMachineClone is a CRD that clones one VM into another.",
    plural = "virtualmachineclones",
    singular = "virtualmachineclone",
    namespaced,
    status = "VirtualMachineCloneStatus",
    shortname = "vmclone",
    shortname = "vmclones",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"SourceVirtualMachine","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"TargetVirtualMachine","type":"string","jsonPath":".spec.target.name"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineCloneSpec {
    /// A kubevirt.io VirtualMachine or a snapshot.kubevirt.io VirtualMachineSnapshot.
    pub source: Option<TypedLocalObjectReference>,
    /// A kubevirt.io VirtualMachine; a name is generated when none is given.
    pub target: Option<TypedLocalObjectReference>,
    pub annotation_filters: Option<Vec<String>>,
    pub label_filters: Option<Vec<String>>,
    pub template: Option<CloneTemplateFilters>,
    /// Interface name -> MAC address; interfaces not named get none (a new one is made).
    pub new_mac_addresses: Option<BTreeMap<String, String>>,
    #[serde(rename = "newSMBiosSerial")]
    pub new_smbios_serial: Option<String>,
    pub patches: Option<Vec<String>>,
    /// `RandomizeNames` (default) or `PrefixTargetName`.
    pub volume_name_policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloneTemplateFilters {
    pub annotation_filters: Option<Vec<String>>,
    pub label_filters: Option<Vec<String>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineCloneStatus {
    pub creation_time: Option<Time>,
    /// `SnapshotInProgress`, `CreatingTargetVM`, `RestoreInProgress`, `Succeeded`, `Failed`.
    pub phase: Option<String>,
    pub conditions: Option<Vec<SnapshotCondition>>,
    pub snapshot_name: Option<String>,
    pub restore_name: Option<String>,
    pub target_name: Option<String>,
}

fn cause(field: &str, message: String) -> FieldError {
    FieldError {
        field: field.into(),
        kind: FieldErrorKind::InvalidMessage,
        message,
    }
}

fn check_filters(field: &str, filters: &Option<Vec<String>>, out: &mut Vec<FieldError>) {
    for filter in filters.iter().flatten() {
        if filter.len() == 1 {
            if filter == "!" {
                out.push(cause(
                    field,
                    "a negation character is not a valid filter".into(),
                ));
            }
            continue;
        }
        let pattern = "{field} filter {filter} is invalid: cannot contain a {what} character ({c}); FilterRules: {rule}";
        let render = |what: &str, c: &str, rule: &str| {
            pattern
                .replace("{field}", field)
                .replace("{filter}", filter)
                .replace("{what}", what)
                .replace("{c}", c)
                .replace("{rule}", rule)
        };
        if filter[1..].contains('!') {
            out.push(cause(
                field,
                render(
                    "negation",
                    "!",
                    "NegationChar can be only used at the beginning of the filter",
                ),
            ));
        }
        if filter[..filter.len() - 1].contains('*') {
            out.push(cause(
                field,
                render(
                    "wildcard",
                    "*",
                    "WildcardChar can be only at the end of the filter",
                ),
            ));
        }
    }
}

/// virt-api's rules for a clone, with its messages and (capitalised) field paths.
pub fn validate_clone(c: &VirtualMachineClone) -> Vec<FieldError> {
    let mut out = Vec::new();
    match &c.spec.source {
        None => out.push(cause("spec.Source", "Source cannot be nil".into())),
        Some(s) => {
            if s.api_group.as_deref().unwrap_or("").is_empty() {
                out.push(cause(
                    "spec.Source.APIGroup",
                    "Source's APIGroup cannot be empty".into(),
                ));
            }
            if s.kind.is_empty() {
                out.push(cause("spec.Source", "Source's Kind cannot be empty".into()));
            } else if !matches!(s.kind.as_str(), "VirtualMachine" | "VirtualMachineSnapshot") {
                out.push(cause(
                    "spec.Source.Kind",
                    "Source kind is not supported".into(),
                ));
            }
            if s.name.is_empty() {
                out.push(cause(
                    "spec.Source.Name",
                    "Source's name cannot be empty".into(),
                ));
            }
        }
    }
    if let Some(t) = &c.spec.target {
        if t.kind != "VirtualMachine" {
            out.push(cause(
                "spec.Target.Kind",
                "Target kind is not supported".into(),
            ));
        }
        let same = c
            .spec
            .source
            .as_ref()
            .is_some_and(|s| s.kind == "VirtualMachine" && s.name == t.name);
        if same {
            out.push(cause(
                "spec.Target.Name",
                "Target name cannot be equal to source name when both are VirtualMachines".into(),
            ));
        }
    }
    check_filters("spec.LabelFilters", &c.spec.label_filters, &mut out);
    check_filters(
        "spec.AnnotationFilters",
        &c.spec.annotation_filters,
        &mut out,
    );
    if let Some(t) = &c.spec.template {
        check_filters("spec.Template.LabelFilters", &t.label_filters, &mut out);
        check_filters(
            "spec.Template.AnnotationFilters",
            &t.annotation_filters,
            &mut out,
        );
    }
    if let Some(p) = c.spec.volume_name_policy.as_deref() {
        if !matches!(p, "RandomizeNames" | "PrefixTargetName") {
            out.push(FieldError::not_supported(
                "spec.volumeNamePolicy",
                p,
                &["RandomizeNames", "PrefixTargetName"],
            ));
        }
    }
    out
}

pub fn validate_clone_update(
    new: &VirtualMachineClone,
    old: &VirtualMachineClone,
) -> Vec<FieldError> {
    if new.spec == old.spec {
        Vec::new()
    } else {
        vec![cause("spec", "spec in immutable after creation".into())]
    }
}

/// RFC 6901 escaping of one path segment.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Removal patches for the keys of `m` the filters leave out (filters are regular
/// expressions matched anywhere in the key, `*` alone means all, `!` negates; negations win).
fn filter_patches(
    m: Option<&BTreeMap<String, String>>,
    filters: &Option<Vec<String>>,
    base: &str,
    out: &mut Vec<String>,
) {
    let (Some(m), Some(filters)) = (m, filters) else {
        return;
    };
    let compile = |f: &str| regex::Regex::new(if f == "*" { ".*" } else { f }).ok();
    let (negations, regular): (Vec<&String>, Vec<&String>) =
        filters.iter().partition(|f| f.starts_with('!'));
    let regular: Vec<regex::Regex> = regular.iter().filter_map(|f| compile(f)).collect();
    let negations: Vec<regex::Regex> = negations.iter().filter_map(|f| compile(&f[1..])).collect();
    for key in m.keys() {
        let included =
            regular.iter().any(|r| r.is_match(key)) && !negations.iter().any(|r| r.is_match(key));
        if !included {
            out.push(
                json!({"op": "remove", "path": format!("{base}/{}", escape(key))}).to_string(),
            );
        }
    }
}

/// The restore patches that make `source` into the clone `spec` asks for (`add`, which
/// also replaces, so a field the source leaves out is no error): new MAC
/// addresses and SMBIOS serial, no firmware UUID (a new one follows from the new name),
/// labels and annotations filtered, then the clone's own patches.
pub fn clone_patches(source: &VirtualMachine, spec: &VirtualMachineCloneSpec) -> Vec<String> {
    let mut out = Vec::new();
    let template = source.spec.template.spec.as_ref();
    let interfaces = template
        .and_then(|t| t.domain.devices.interfaces.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, iface) in interfaces.iter().enumerate() {
        let mac = spec
            .new_mac_addresses
            .as_ref()
            .and_then(|m| m.get(&iface.name))
            .cloned()
            .unwrap_or_default();
        out.push(
            json!({"op": "add", "path": format!("/spec/template/spec/domain/devices/interfaces/{i}/macAddress"), "value": mac})
                .to_string(),
        );
    }
    if let Some(firmware) = template.and_then(|t| t.domain.firmware.as_ref()) {
        out.push(
            json!({"op": "add", "path": "/spec/template/spec/domain/firmware/serial", "value": spec.new_smbios_serial.clone().unwrap_or_default()})
                .to_string(),
        );
        if firmware.uuid.is_some() {
            out.push(
                json!({"op": "add", "path": "/spec/template/spec/domain/firmware/uuid", "value": ""})
                    .to_string(),
            );
        }
    }
    filter_patches(
        source.metadata.labels.as_ref(),
        &spec.label_filters,
        "/metadata/labels",
        &mut out,
    );
    let mut annotations = source.metadata.annotations.clone().unwrap_or_default();
    annotations.remove("restore.kubevirt.io/lastRestoreUID");
    filter_patches(
        Some(&annotations),
        &spec.annotation_filters,
        "/metadata/annotations",
        &mut out,
    );
    let tmeta = source.spec.template.metadata.as_ref();
    let tfilters = spec.template.clone().unwrap_or_default();
    filter_patches(
        tmeta.and_then(|m| m.labels.as_ref()),
        &tfilters.label_filters,
        "/spec/template/metadata/labels",
        &mut out,
    );
    filter_patches(
        tmeta.and_then(|m| m.annotations.as_ref()),
        &tfilters.annotation_filters,
        "/spec/template/metadata/annotations",
        &mut out,
    );
    out.extend(spec.patches.iter().flatten().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clone(v: serde_json::Value) -> VirtualMachineClone {
        serde_json::from_value(json!({
            "apiVersion": "clone.kubevirt.io/v1beta1", "kind": "VirtualMachineClone",
            "metadata": {"name": "c"}, "spec": v
        }))
        .unwrap()
    }

    #[test]
    fn validation_speaks_virt_api() {
        let ok = clone(
            json!({"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "a"},
                               "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "b"}}),
        );
        assert!(validate_clone(&ok).is_empty());
        let bad = clone(
            json!({"source": {"apiGroup": "kubevirt.io", "kind": "Pod", "name": "a"},
                                "target": {"kind": "VirtualMachine", "name": "a"},
                                "labelFilters": ["a*b", "x!y"]}),
        );
        let e: Vec<String> = validate_clone(&bad).iter().map(|e| e.to_string()).collect();
        assert_eq!(e[0], "spec.Source.Kind: Source kind is not supported");
        assert!(e[1].contains(
            "spec.LabelFilters filter a*b is invalid: cannot contain a wildcard character (*)"
        ));
        assert!(e[2].contains("NegationChar can be only used at the beginning of the filter"));
        let same = clone(
            json!({"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "a"},
                                 "target": {"kind": "VirtualMachine", "name": "a"}}),
        );
        assert_eq!(
            validate_clone(&same)[0].to_string(),
            "spec.Target.Name: Target name cannot be equal to source name when both are VirtualMachines"
        );
    }

    #[test]
    fn patches_give_a_new_identity_and_filter_metadata() {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "labels": {"app": "db", "team/owner": "x"}, "annotations": {"keep": "1"}},
            "spec": {"template": {"spec": {"domain": {
                "devices": {"interfaces": [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}]},
                "firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223"}
            }}}}
        }))
        .unwrap();
        let spec = clone(json!({"labelFilters": ["*", "!team/"]})).spec;
        let p = clone_patches(&vm, &spec);
        assert!(p.contains(&r#"{"op":"add","path":"/spec/template/spec/domain/devices/interfaces/0/macAddress","value":""}"#.to_string()), "{p:?}");
        assert!(
            p.contains(
                &r#"{"op":"add","path":"/spec/template/spec/domain/firmware/uuid","value":""}"#
                    .to_string()
            ),
            "{p:?}"
        );
        assert!(
            p.contains(&r#"{"op":"remove","path":"/metadata/labels/team~1owner"}"#.to_string()),
            "{p:?}"
        );
        assert!(
            !p.iter().any(|p| p.contains("/metadata/labels/app")),
            "{p:?}"
        );
        assert!(
            !p.iter().any(|p| p.contains("/metadata/annotations")),
            "{p:?}"
        );
    }
}
