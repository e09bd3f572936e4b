//! `export.kubevirt.io/v1beta1`: the VirtualMachineExport, a time-limited, token-protected
//! download of a claim, of a VM's claims or of a VM snapshot's volumes.
//!
//! Field names, phases, condition types and reasons are upstream's, so `virtctl vmexport` and
//! scripts written for KubeVirt read the status unchanged. The admission rules (virt-api's
//! export admitter) and the naming rules the controller and the server share are here.

use k8s_openapi::api::core::v1::TypedLocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::admission::{FieldError, FieldErrorKind};

/// API group of the export kind.
pub const GROUP: &str = "export.kubevirt.io";
/// `group/version` of the export kind.
pub const API_VERSION: &str = "export.kubevirt.io/v1beta1";
/// The kinds of `export.kubevirt.io` admission takes.
pub const KINDS: [&str; 1] = ["VirtualMachineExport"];
/// How long an export lives unless `ttlDuration` says otherwise (upstream's default).
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(2 * 60 * 60);
/// The header (or query parameter) carrying the export token.
pub const TOKEN_HEADER: &str = "x-kubevirt-export-token";
/// The key of the token in the token Secret.
pub const TOKEN_KEY: &str = "token";

/// Phases.
pub const PHASE_PENDING: &str = "Pending";
pub const PHASE_READY: &str = "Ready";
pub const PHASE_TERMINATED: &str = "Terminated";
pub const PHASE_SKIPPED: &str = "Skipped";

/// Condition types.
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PVC: &str = "PVCReady";
pub const CONDITION_VOLUMES_CREATED: &str = "VolumesCreated";

/// Volume formats.
pub const FORMAT_RAW: &str = "raw";
pub const FORMAT_GZIP: &str = "gzip";

/// A request to export a claim, a VM's claims or a VM snapshot's volumes.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "export.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineExport",
    doc = "VirtualMachineExport defines the operation of exporting a VM source",
    plural = "virtualmachineexports",
    singular = "virtualmachineexport",
    namespaced,
    status = "VirtualMachineExportStatus",
    shortname = "vmexport",
    shortname = "vmexports",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"SourceKind","type":"string","jsonPath":".spec.source.kind"}"#,
    printcolumn = r#"{"name":"SourceName","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportSpec {
    /// A PersistentVolumeClaim (core group), a kubevirt.io VirtualMachine or a
    /// snapshot.kubevirt.io VirtualMachineSnapshot.
    pub source: TypedLocalObjectReference,
    /// The Secret (key `token`) holding the token; generated when unset.
    pub token_secret_ref: Option<String>,
    /// A Go duration after the export's creation when it is deleted (default 2h).
    pub ttl_duration: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportStatus {
    /// `Pending`, `Ready`, `Terminated` or `Skipped`.
    pub phase: Option<String>,
    pub links: Option<VirtualMachineExportLinks>,
    pub token_secret_ref: Option<String>,
    pub ttl_expiration_time: Option<Time>,
    pub service_name: Option<String>,
    pub virtual_machine_name: Option<String>,
    pub conditions: Option<Vec<ExportCondition>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportLinks {
    pub internal: Option<VirtualMachineExportLink>,
    pub external: Option<VirtualMachineExportLink>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportLink {
    /// The PEM CA a client verifies the server with.
    pub cert: String,
    pub volumes: Option<Vec<VirtualMachineExportVolume>>,
    pub manifests: Option<Vec<VirtualMachineExportManifest>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportVolume {
    pub name: String,
    pub formats: Option<Vec<VirtualMachineExportVolumeFormat>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportVolumeFormat {
    /// `raw` or `gzip` (upstream also has `dir` and `tar.gz`).
    pub format: String,
    pub url: String,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportManifest {
    /// `all` or `auth-header-secret`.
    #[serde(rename = "type")]
    pub type_: String,
    pub url: String,
}

/// `Ready`, `PVCReady` or `VolumesCreated`.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub last_probe_time: Option<Time>,
    pub last_transition_time: Option<Time>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// What an export's source is, as the controller resolves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    PersistentVolumeClaim,
    VirtualMachine,
    VirtualMachineSnapshot,
}

impl VirtualMachineExport {
    /// The source's kind, when the reference names one the project exports.
    pub fn source_kind(&self) -> Option<SourceKind> {
        let s = &self.spec.source;
        match (s.api_group.as_deref().unwrap_or(""), s.kind.as_str()) {
            ("", "PersistentVolumeClaim") => Some(SourceKind::PersistentVolumeClaim),
            ("kubevirt.io", "VirtualMachine") => Some(SourceKind::VirtualMachine),
            (crate::snapshot::GROUP, "VirtualMachineSnapshot") => {
                Some(SourceKind::VirtualMachineSnapshot)
            }
            _ => None,
        }
    }

    /// How long the export lives, counted from its creation.
    pub fn ttl(&self) -> std::time::Duration {
        self.spec
            .ttl_duration
            .as_deref()
            .and_then(|d| crate::snapshot::parse_go_duration(d).ok())
            .unwrap_or(DEFAULT_TTL)
    }

    pub fn phase(&self) -> Option<&str> {
        self.status.as_ref()?.phase.as_deref()
    }
}

/// The name of the token Secret the controller generates (upstream's
/// `export-token-<export>`, shortened with a hash to a DNS-1035 label).
pub fn default_token_secret_name(export: &str) -> String {
    bounded_name("export-token", export, 63)
}

/// The claim a snapshot export restores a volume's claim into (`<export>-<claim>`).
pub fn restored_claim_name(export: &str, claim: &str) -> String {
    format!("{export}-{claim}")
}

/// `<base>-<suffix>`, cut to `max` with a short hash of the whole when too long (as
/// OpenShift's namer does for upstream).
fn bounded_name(base: &str, suffix: &str, max: usize) -> String {
    let name = format!("{base}-{suffix}");
    if name.len() <= max {
        return name;
    }
    // FNV-1a: stable across builds, no dependency.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let hash = format!("{:08x}", hash as u32);
    let keep = max - hash.len() - 1;
    let mut head: String = name.chars().take(keep).collect();
    while head.ends_with('-') {
        head.pop();
    }
    format!("{head}-{hash}")
}

fn cause(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        kind: FieldErrorKind::InvalidMessage,
        message: message.to_string(),
    }
}

/// virt-api's export admitter (create): the source by kind, its name and group.
pub fn validate_vm_export(e: &VirtualMachineExport) -> Vec<FieldError> {
    let s = &e.spec.source;
    let group = s.api_group.as_deref();
    // Upstream's field path names the Go field (`APIGroup`).
    let (name_field, group_field) = ("spec.source.name", "spec.source.APIGroup");
    let mut errors = Vec::new();
    let mut check = |empty_message: &str, group_ok: bool, group_message: &str| {
        if s.name.is_empty() {
            errors.push(cause(name_field, empty_message));
        }
        if !group_ok {
            errors.push(cause(group_field, group_message));
        }
    };
    match s.kind.as_str() {
        "PersistentVolumeClaim" => check(
            "PVC name must not be empty",
            group.is_none_or(str::is_empty),
            "PVC API group must be missing or blank",
        ),
        "VirtualMachineSnapshot" => check(
            "VMSnapshot name must not be empty",
            group == Some(crate::snapshot::GROUP),
            "VMSnapshot API group must be snapshot.kubevirt.io",
        ),
        "VirtualMachine" => check(
            "Virtual Machine name must not be empty",
            group == Some("kubevirt.io"),
            "VM API group must be kubevirt.io",
        ),
        _ => return vec![cause("spec.source.kind", "invalid kind")],
    }
    if let Some(ttl) = e.spec.ttl_duration.as_deref() {
        if let Err(m) = crate::snapshot::parse_go_duration(ttl) {
            errors.push(FieldError::invalid("spec.ttlDuration", ttl, m));
        }
    }
    errors
}

/// The spec never changes after creation.
pub fn validate_vm_export_update(
    new: &VirtualMachineExport,
    old: &VirtualMachineExport,
) -> Vec<FieldError> {
    if new.spec == old.spec {
        Vec::new()
    } else {
        vec![cause("spec", "spec in immutable after creation")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(group: Option<&str>, kind: &str, name: &str) -> VirtualMachineExport {
        VirtualMachineExport::new(
            "e",
            VirtualMachineExportSpec {
                source: TypedLocalObjectReference {
                    api_group: group.map(str::to_string),
                    kind: kind.to_string(),
                    name: name.to_string(),
                },
                ..Default::default()
            },
        )
    }

    fn messages(e: &VirtualMachineExport) -> Vec<String> {
        validate_vm_export(e)
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn sources_as_virt_api_admits_them() {
        assert!(messages(&export(None, "PersistentVolumeClaim", "disk")).is_empty());
        assert!(messages(&export(Some(""), "PersistentVolumeClaim", "disk")).is_empty());
        assert!(messages(&export(Some("kubevirt.io"), "VirtualMachine", "vm")).is_empty());
        assert!(messages(&export(
            Some("snapshot.kubevirt.io"),
            "VirtualMachineSnapshot",
            "s"
        ))
        .is_empty());
        assert_eq!(
            messages(&export(Some("apps"), "PersistentVolumeClaim", "")),
            [
                "spec.source.name: PVC name must not be empty",
                "spec.source.APIGroup: PVC API group must be missing or blank"
            ]
        );
        assert_eq!(
            messages(&export(None, "VirtualMachine", "vm")),
            ["spec.source.APIGroup: VM API group must be kubevirt.io"]
        );
        assert_eq!(
            messages(&export(Some("kubevirt.io"), "VirtualMachineSnapshot", "s")),
            ["spec.source.APIGroup: VMSnapshot API group must be snapshot.kubevirt.io"]
        );
        let e = validate_vm_export(&export(None, "Pod", "p"));
        assert_eq!(e[0].to_string(), "spec.source.kind: invalid kind");
        assert_eq!(e[0].reason(), "FieldValueInvalid");
        let mut e = export(None, "PersistentVolumeClaim", "disk");
        e.spec.ttl_duration = Some("soon".into());
        assert!(messages(&e)[0].starts_with("spec.ttlDuration: Invalid value: \"soon\""));
    }

    #[test]
    fn spec_is_immutable_and_names_fit() {
        let old = export(None, "PersistentVolumeClaim", "disk");
        let mut new = old.clone();
        new.spec.ttl_duration = Some("1h".into());
        assert_eq!(
            validate_vm_export_update(&new, &old)[0].to_string(),
            "spec: spec in immutable after creation"
        );
        assert_eq!(default_token_secret_name("e"), "export-token-e");
        let long = default_token_secret_name(&"x".repeat(80));
        assert_eq!(long.len(), 63);
        assert_ne!(long, default_token_secret_name(&"x".repeat(81)));
        assert_eq!(old.ttl(), DEFAULT_TTL);
        assert_eq!(old.source_kind(), Some(SourceKind::PersistentVolumeClaim));
    }
}
