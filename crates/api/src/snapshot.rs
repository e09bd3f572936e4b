//! Snapshots: Kubernetes' volume snapshots (`snapshot.storage.k8s.io/v1`, the CSI snapshot
//! API a storage class implements) and KubeVirt's VM snapshots and restores
//! (`snapshot.kubevirt.io/v1beta1`) built on them.
//!
//! Field names, phases, indications and condition types are upstream's, so manifests and
//! clients written for KubeVirt and the external-snapshotter work unchanged. The pure rules
//! (what a snapshot or restore may say, which of a VM's volumes a snapshot can take) are here
//! so admission and the controllers share them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolumeClaimSpec, TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::admission::{FieldError, FieldErrorKind};
use crate::Quantity;

/// API group of Kubernetes' volume snapshots.
pub const VOLUME_SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
/// API group of KubeVirt's VM snapshots and restores.
pub const GROUP: &str = "snapshot.kubevirt.io";
/// The annotation that makes a VolumeSnapshotClass its driver's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// How long a VM snapshot may take before it fails, unless `failureDeadline` says otherwise.
pub const DEFAULT_FAILURE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

// ---------------------------------------------------------------------------------------
// snapshot.storage.k8s.io/v1

/// A user's request for a snapshot of a claim (or a handle on a snapshot that exists).
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    doc = "VolumeSnapshot is a user's request for either creating a point-in-time snapshot of a persistent volume, or binding to a pre-existing snapshot.",
    plural = "volumesnapshots",
    singular = "volumesnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    shortname = "vs",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"ReadyToUse","type":"boolean","description":"Indicates if the snapshot is ready to be used to restore a volume.","jsonPath":".status.readyToUse"}"#,
    printcolumn = r#"{"name":"SourcePVC","type":"string","description":"If a new snapshot needs to be created, this contains the name of the source PVC from which this snapshot was (or will be) created.","jsonPath":".spec.source.persistentVolumeClaimName"}"#,
    printcolumn = r#"{"name":"SourceSnapshotContent","type":"string","description":"If a snapshot already exists, this contains the name of the existing VolumeSnapshotContent object representing the existing snapshot.","jsonPath":".spec.source.volumeSnapshotContentName"}"#,
    printcolumn = r#"{"name":"RestoreSize","type":"string","description":"Represents the minimum size of volume required to rehydrate from this snapshot.","jsonPath":".status.restoreSize"}"#,
    printcolumn = r#"{"name":"SnapshotClass","type":"string","description":"The name of the VolumeSnapshotClass requested by the VolumeSnapshot.","jsonPath":".spec.volumeSnapshotClassName"}"#,
    printcolumn = r#"{"name":"SnapshotContent","type":"string","description":"Name of the VolumeSnapshotContent object to which the VolumeSnapshot object intends to bind to. Please note that verification of binding actually requires checking both VolumeSnapshot and VolumeSnapshotContent to ensure both are pointing at each other. Binding MUST be verified prior to usage of this object.","jsonPath":".status.boundVolumeSnapshotContentName"}"#,
    printcolumn = r#"{"name":"CreationTime","type":"date","description":"Timestamp when the point-in-time snapshot was taken by the underlying storage system.","jsonPath":".status.creationTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    pub source: VolumeSnapshotSource,
    pub volume_snapshot_class_name: Option<String>,
}

/// Exactly one member: the claim to snapshot, or the content that already holds one.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    pub persistent_volume_claim_name: Option<String>,
    pub volume_snapshot_content_name: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    pub bound_volume_snapshot_content_name: Option<String>,
    pub creation_time: Option<Time>,
    pub ready_to_use: Option<bool>,
    pub restore_size: Option<Quantity>,
    pub error: Option<VolumeSnapshotError>,
}

/// The last error of taking or binding a snapshot.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    pub time: Option<Time>,
    pub message: Option<String>,
}

/// The snapshot as the storage holds it (cluster-scoped, bound one-to-one to a VolumeSnapshot).
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotContent",
    doc = "VolumeSnapshotContent represents the actual \"on-disk\" snapshot object in the underlying storage system",
    plural = "volumesnapshotcontents",
    singular = "volumesnapshotcontent",
    status = "VolumeSnapshotContentStatus",
    shortname = "vsc",
    shortname = "vscs",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"ReadyToUse","type":"boolean","description":"Indicates if a snapshot is ready to be used to restore a volume.","jsonPath":".status.readyToUse"}"#,
    printcolumn = r#"{"name":"RestoreSize","type":"integer","description":"Represents the complete size of the snapshot in bytes","jsonPath":".status.restoreSize"}"#,
    printcolumn = r#"{"name":"DeletionPolicy","type":"string","description":"Determines whether this VolumeSnapshotContent and its physical snapshot on the underlying storage system should be deleted when its bound VolumeSnapshot is deleted.","jsonPath":".spec.deletionPolicy"}"#,
    printcolumn = r#"{"name":"Driver","type":"string","description":"Name of the CSI driver used to create the physical snapshot on the underlying storage system.","jsonPath":".spec.driver"}"#,
    printcolumn = r#"{"name":"VolumeSnapshotClass","type":"string","description":"Name of the VolumeSnapshotClass to which this snapshot belongs.","jsonPath":".spec.volumeSnapshotClassName"}"#,
    printcolumn = r#"{"name":"VolumeSnapshot","type":"string","description":"Name of the VolumeSnapshot object to which this VolumeSnapshotContent object is bound.","jsonPath":".spec.volumeSnapshotRef.name"}"#,
    printcolumn = r#"{"name":"VolumeSnapshotNamespace","type":"string","description":"Namespace of the VolumeSnapshot object to which this VolumeSnapshotContent object is bound.","jsonPath":".spec.volumeSnapshotRef.namespace"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSpec {
    pub volume_snapshot_ref: ObjectReference,
    /// `Delete` or `Retain`: what happens to the stored snapshot when its VolumeSnapshot goes.
    pub deletion_policy: String,
    pub driver: String,
    pub volume_snapshot_class_name: Option<String>,
    pub source: VolumeSnapshotContentSource,
    pub source_volume_mode: Option<String>,
}

/// Exactly one member: the volume to snapshot (dynamic) or the snapshot that exists (static).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSource {
    pub volume_handle: Option<String>,
    pub snapshot_handle: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    pub snapshot_handle: Option<String>,
    /// Nanoseconds since the epoch, as the CSI API has it.
    pub creation_time: Option<i64>,
    /// Bytes.
    pub restore_size: Option<i64>,
    pub ready_to_use: Option<bool>,
    pub error: Option<VolumeSnapshotError>,
}

/// A class of snapshots for one driver (its fields are top-level: the kind has no `spec`).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClass {
    pub metadata: ObjectMeta,
    pub driver: String,
    pub parameters: Option<BTreeMap<String, String>>,
    /// `Delete` or `Retain`.
    pub deletion_policy: String,
}

impl k8s_openapi::Resource for VolumeSnapshotClass {
    const API_VERSION: &'static str = "snapshot.storage.k8s.io/v1";
    const GROUP: &'static str = VOLUME_SNAPSHOT_GROUP;
    const KIND: &'static str = "VolumeSnapshotClass";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "volumesnapshotclasses";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for VolumeSnapshotClass {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl VolumeSnapshotClass {
    /// The class is the default of its driver.
    pub fn is_default(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}

/// The CRD of VolumeSnapshotClass, written out: the derive needs a `spec`.
pub fn volume_snapshot_class_crd() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "volumesnapshotclasses.snapshot.storage.k8s.io",
            "labels": {"app.kubernetes.io/part-of": "kubevirt-rs"},
        },
        "spec": {
            "group": VOLUME_SNAPSHOT_GROUP,
            "names": {
                "kind": "VolumeSnapshotClass",
                "listKind": "VolumeSnapshotClassList",
                "plural": "volumesnapshotclasses",
                "singular": "volumesnapshotclass",
                "shortNames": ["vsclass", "vsclasses"],
            },
            "scope": "Cluster",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {},
                "additionalPrinterColumns": [
                    {"name": "Driver", "type": "string", "jsonPath": ".driver"},
                    {"name": "DeletionPolicy", "type": "string", "description": "Determines whether a VolumeSnapshotContent created through the VolumeSnapshotClass should be deleted when its bound VolumeSnapshot is deleted.", "jsonPath": ".deletionPolicy"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "VolumeSnapshotClass specifies parameters that a underlying storage system uses when creating a volume snapshot.",
                    "required": ["deletionPolicy", "driver"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "driver": {"type": "string", "description": "driver is the name of the storage driver that handles this VolumeSnapshotClass."},
                        "deletionPolicy": {"type": "string", "enum": ["Delete", "Retain"], "description": "deletionPolicy determines whether a VolumeSnapshotContent created through the VolumeSnapshotClass should be deleted when its bound VolumeSnapshot is deleted."},
                        "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                }},
            }],
        },
    })
}

// ---------------------------------------------------------------------------------------
// snapshot.kubevirt.io/v1beta1

/// A snapshot of a VirtualMachine: its spec and the snapshots of its volumes.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "snapshot.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineSnapshot",
    doc = "VirtualMachineSnapshot defines the operation of snapshotting a VM",
    plural = "virtualmachinesnapshots",
    singular = "virtualmachinesnapshot",
    namespaced,
    status = "VirtualMachineSnapshotStatus",
    shortname = "vmsnapshot",
    shortname = "vmsnapshots",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"SourceKind","type":"string","jsonPath":".spec.source.kind"}"#,
    printcolumn = r#"{"name":"SourceName","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"ReadyToUse","type":"boolean","jsonPath":".status.readyToUse"}"#,
    printcolumn = r#"{"name":"CreationTime","type":"date","jsonPath":".status.creationTime"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error.message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotSpec {
    pub source: TypedLocalObjectReference,
    /// `Delete` (default) or `Retain`: whether the content goes with the snapshot.
    pub deletion_policy: Option<String>,
    /// A Go duration (`5m`); the snapshot fails if not done by then.
    pub failure_deadline: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotStatus {
    #[serde(rename = "sourceUID")]
    pub source_uid: Option<String>,
    pub virtual_machine_snapshot_content_name: Option<String>,
    pub creation_time: Option<Time>,
    /// `InProgress`, `Succeeded`, `Failed`, `Deleting`, `Unknown`.
    pub phase: Option<String>,
    pub ready_to_use: Option<bool>,
    pub error: Option<SnapshotError>,
    pub conditions: Option<Vec<SnapshotCondition>>,
    /// `Online`, `GuestAgent`, `NoGuestAgent`, `QuiesceTimeout`, `Paused`.
    pub indications: Option<Vec<String>>,
    pub source_indications: Option<Vec<SourceIndication>>,
    pub snapshot_volumes: Option<SnapshotVolumesLists>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceIndication {
    pub indication: String,
    pub message: String,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotVolumesLists {
    pub included_volumes: Option<Vec<String>>,
    pub excluded_volumes: Option<Vec<String>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotError {
    pub time: Option<Time>,
    pub message: Option<String>,
}

/// `Ready`, `Progressing` or `Failure`.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub last_probe_time: Option<Time>,
    pub last_transition_time: Option<Time>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// What a VM snapshot holds: the VM as it was and one volume snapshot per included volume.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "snapshot.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineSnapshotContent",
    doc = "VirtualMachineSnapshotContent contains the snapshot data",
    plural = "virtualmachinesnapshotcontents",
    singular = "virtualmachinesnapshotcontent",
    namespaced,
    status = "VirtualMachineSnapshotContentStatus",
    shortname = "vmsnapshotcontent",
    shortname = "vmsnapshotcontents",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"ReadyToUse","type":"boolean","jsonPath":".status.readyToUse"}"#,
    printcolumn = r#"{"name":"CreationTime","type":"date","jsonPath":".status.creationTime"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error.message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotContentSpec {
    pub virtual_machine_snapshot_name: Option<String>,
    pub source: SnapshotSourceSpec,
    pub volume_backups: Option<Vec<VolumeBackup>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSourceSpec {
    pub virtual_machine: Option<SnapshotVirtualMachine>,
}

/// The VM as it was when snapshotted (metadata trimmed to what a restore uses).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotVirtualMachine {
    #[serde(default)]
    #[schemars(schema_with = "crate::v1::preserved_object")]
    pub metadata: Option<ObjectMeta>,
    #[serde(default)]
    #[schemars(schema_with = "crate::v1::preserved_object")]
    pub spec: Option<crate::v1::VirtualMachineSpec>,
    #[serde(default)]
    #[schemars(schema_with = "crate::v1::preserved_object")]
    pub status: Option<serde_json::Value>,
}

/// One volume of the VM: the claim it had and the VolumeSnapshot of it.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackup {
    pub volume_name: String,
    pub persistent_volume_claim: SnapshotClaim,
    pub volume_snapshot_name: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotClaim {
    #[serde(default)]
    #[schemars(schema_with = "crate::v1::preserved_object")]
    pub metadata: Option<ObjectMeta>,
    #[serde(default)]
    #[schemars(schema_with = "crate::v1::preserved_object")]
    pub spec: Option<PersistentVolumeClaimSpec>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotContentStatus {
    pub creation_time: Option<Time>,
    pub ready_to_use: Option<bool>,
    pub error: Option<SnapshotError>,
    pub volume_snapshot_status: Option<Vec<VolumeSnapshotState>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotState {
    pub volume_snapshot_name: String,
    pub creation_time: Option<Time>,
    pub ready_to_use: Option<bool>,
    pub error: Option<SnapshotError>,
}

/// Puts a VM (the snapshot's own, or a new one) back to a snapshot.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "snapshot.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineRestore",
    doc = "VirtualMachineRestore defines the operation of restoring a VM",
    plural = "virtualmachinerestores",
    singular = "virtualmachinerestore",
    namespaced,
    status = "VirtualMachineRestoreStatus",
    shortname = "vmrestore",
    shortname = "vmrestores",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"TargetKind","type":"string","jsonPath":".spec.target.kind"}"#,
    printcolumn = r#"{"name":"TargetName","type":"string","jsonPath":".spec.target.name"}"#,
    printcolumn = r#"{"name":"Complete","type":"boolean","jsonPath":".status.complete"}"#,
    printcolumn = r#"{"name":"RestoreTime","type":"date","jsonPath":".status.restoreTime"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error.message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineRestoreSpec {
    pub target: TypedLocalObjectReference,
    pub virtual_machine_snapshot_name: String,
    /// `StopTarget`, `WaitGracePeriod` (default: 5 minutes), `FailImmediate`,
    /// `WaitEventually`.
    pub target_readiness_policy: Option<String>,
    /// `RandomizeNames` (default), `InPlace`, `PrefixTargetName`.
    pub volume_restore_policy: Option<String>,
    /// `Vm` (default: the restored claims are owned by the VM) or `None`.
    pub volume_ownership_policy: Option<String>,
    pub volume_restore_overrides: Option<Vec<VolumeRestoreOverride>>,
    /// JSON patches (`{"op": "replace", "path": "/spec/...", "value": ...}`) applied to the
    /// restored VM.
    pub patches: Option<Vec<String>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreOverride {
    pub volume_name: Option<String>,
    pub restore_name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineRestoreStatus {
    pub restores: Option<Vec<VolumeRestore>>,
    pub restore_time: Option<Time>,
    pub deleted_data_volumes: Option<Vec<String>>,
    pub complete: Option<bool>,
    pub conditions: Option<Vec<SnapshotCondition>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestore {
    pub volume_name: String,
    #[serde(rename = "persistentVolumeClaim")]
    pub persistent_volume_claim_name: String,
    pub volume_snapshot_name: String,
    pub data_volume_name: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Admission (virt-api's and the snapshot webhook's rules that need no lookups)

/// The kinds of `snapshot.kubevirt.io` admission takes.
pub const KINDS: [&str; 3] = [
    "VirtualMachineSnapshot",
    "VirtualMachineSnapshotContent",
    "VirtualMachineRestore",
];

fn message(field: &str, kind: FieldErrorKind, message: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        kind,
        message: message.to_string(),
    }
}

/// `spec.source` (snapshot) or `spec.target` (restore) must name a kubevirt.io
/// VirtualMachine; virt-api's words.
fn check_vm_reference(field: &str, r: &TypedLocalObjectReference) -> Vec<FieldError> {
    match r.api_group.as_deref() {
        None => vec![message(
            &format!("{field}.apiGroup"),
            FieldErrorKind::MissingMessage,
            "missing apiGroup",
        )],
        Some("kubevirt.io") if r.kind == "VirtualMachine" => Vec::new(),
        Some("kubevirt.io") => vec![message(
            &format!("{field}.kind"),
            FieldErrorKind::InvalidMessage,
            "invalid kind",
        )],
        Some(_) => vec![message(
            &format!("{field}.apiGroup"),
            FieldErrorKind::InvalidMessage,
            "invalid apiGroup",
        )],
    }
}

fn immutable_spec<T: PartialEq>(new: &T, old: &T) -> Vec<FieldError> {
    if new == old {
        Vec::new()
    } else {
        vec![message(
            "spec",
            FieldErrorKind::InvalidMessage,
            "spec in immutable after creation",
        )]
    }
}

pub fn validate_vm_snapshot(s: &VirtualMachineSnapshot) -> Vec<FieldError> {
    let mut errors = check_vm_reference("spec.source", &s.spec.source);
    if let Some(p) = s.spec.deletion_policy.as_deref() {
        if !matches!(p, "Delete" | "Retain") {
            errors.push(FieldError::not_supported(
                "spec.deletionPolicy",
                p,
                &["Delete", "Retain"],
            ));
        }
    }
    if let Some(d) = s.spec.failure_deadline.as_deref() {
        if let Err(e) = parse_go_duration(d) {
            errors.push(FieldError::invalid("spec.failureDeadline", d, e));
        }
    }
    errors
}

pub fn validate_vm_snapshot_update(
    new: &VirtualMachineSnapshot,
    old: &VirtualMachineSnapshot,
) -> Vec<FieldError> {
    immutable_spec(&new.spec, &old.spec)
}

pub fn validate_vm_snapshot_content(_: &VirtualMachineSnapshotContent) -> Vec<FieldError> {
    Vec::new()
}

pub fn validate_vm_snapshot_content_update(
    new: &VirtualMachineSnapshotContent,
    old: &VirtualMachineSnapshotContent,
) -> Vec<FieldError> {
    immutable_spec(&new.spec, &old.spec)
}

pub fn validate_vm_restore(r: &VirtualMachineRestore) -> Vec<FieldError> {
    let mut errors = check_vm_reference("spec.target", &r.spec.target);
    if r.spec.virtual_machine_snapshot_name.is_empty() {
        errors.push(FieldError::required("spec.virtualMachineSnapshotName", ""));
    }
    let policies: [(&str, &Option<String>, &[&str]); 3] = [
        (
            "spec.targetReadinessPolicy",
            &r.spec.target_readiness_policy,
            &[
                "StopTarget",
                "WaitGracePeriod",
                "FailImmediate",
                "WaitEventually",
            ],
        ),
        (
            "spec.volumeRestorePolicy",
            &r.spec.volume_restore_policy,
            &["RandomizeNames", "InPlace", "PrefixTargetName"],
        ),
        (
            "spec.volumeOwnershipPolicy",
            &r.spec.volume_ownership_policy,
            &["Vm", "None"],
        ),
    ];
    for (field, value, allowed) in policies {
        if let Some(v) = value.as_deref() {
            if !allowed.contains(&v) {
                errors.push(FieldError::not_supported(field, v, allowed));
            }
        }
    }
    for (i, o) in r.spec.volume_restore_overrides.iter().flatten().enumerate() {
        let field = format!("spec.volumeRestoreOverrides[{i}]");
        if o.volume_name.as_deref().unwrap_or("").is_empty() {
            errors.push(message(
                &format!("{field}.volumeName"),
                FieldErrorKind::InvalidMessage,
                "must provide a volume name",
            ));
        }
        if o.restore_name.is_none() && o.labels.is_none() && o.annotations.is_none() {
            errors.push(message(
                &field,
                FieldErrorKind::InvalidMessage,
                "must provide at least one overriden field",
            ));
        }
    }
    for patch in r.spec.patches.iter().flatten() {
        if let Err(e) = parse_restore_patch(patch) {
            errors.push(message("spec.patches", FieldErrorKind::InvalidMessage, &e));
        }
    }
    errors
}

pub fn validate_vm_restore_update(
    new: &VirtualMachineRestore,
    old: &VirtualMachineRestore,
) -> Vec<FieldError> {
    immutable_spec(&new.spec, &old.spec)
}

/// One restore patch, a JSON patch operation as a string; only paths under `/spec/`, labels
/// and annotations may be patched (virt-api's rule).
pub fn parse_restore_patch(patch: &str) -> Result<json_patch::PatchOperation, String> {
    let op: json_patch::PatchOperation = serde_json::from_str(patch)
        .map_err(|e| format!("patch format is not valid: {patch}: {e}"))?;
    let path = op.path().to_string();
    let allowed = ["/spec/", "/metadata/labels/", "/metadata/annotations/"];
    if !allowed.iter().any(|p| path.starts_with(p)) {
        return Err(format!(
            "patching is valid only for elements under /spec/ only: {patch}"
        ));
    }
    Ok(op)
}

/// A Go duration as metav1.Duration takes it (`300ms`, `1.5h`, `2h45m`, `5m`, `30s`).
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

impl VirtualMachineSnapshot {
    /// When the snapshot gives up, counted from its creation.
    pub fn failure_deadline(&self) -> std::time::Duration {
        self.spec
            .failure_deadline
            .as_deref()
            .and_then(|d| parse_go_duration(d).ok())
            .unwrap_or(DEFAULT_FAILURE_DEADLINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(group: Option<&str>, kind: &str) -> VirtualMachineSnapshot {
        VirtualMachineSnapshot::new(
            "s",
            VirtualMachineSnapshotSpec {
                source: TypedLocalObjectReference {
                    api_group: group.map(str::to_string),
                    kind: kind.to_string(),
                    name: "vm".to_string(),
                },
                ..Default::default()
            },
        )
    }

    #[test]
    fn snapshot_source_must_be_a_kubevirt_vm() {
        assert!(validate_vm_snapshot(&snapshot(Some("kubevirt.io"), "VirtualMachine")).is_empty());
        let e = validate_vm_snapshot(&snapshot(None, "VirtualMachine"));
        assert_eq!(e[0].to_string(), "spec.source.apiGroup: missing apiGroup");
        assert_eq!(e[0].reason(), "FieldValueNotFound");
        let e = validate_vm_snapshot(&snapshot(Some("kubevirt.io"), "Pod"));
        assert_eq!(e[0].to_string(), "spec.source.kind: invalid kind");
        let e = validate_vm_snapshot(&snapshot(Some("apps"), "VirtualMachine"));
        assert_eq!(e[0].to_string(), "spec.source.apiGroup: invalid apiGroup");
    }

    #[test]
    fn snapshot_spec_is_immutable() {
        let old = snapshot(Some("kubevirt.io"), "VirtualMachine");
        let mut new = old.clone();
        new.spec.source.name = "other".into();
        let e = validate_vm_snapshot_update(&new, &old);
        assert_eq!(e[0].to_string(), "spec: spec in immutable after creation");
        assert!(validate_vm_snapshot_update(&old, &old).is_empty());
    }

    #[test]
    fn restore_rules() {
        let mut r = VirtualMachineRestore::new(
            "r",
            VirtualMachineRestoreSpec {
                target: TypedLocalObjectReference {
                    api_group: Some("kubevirt.io".into()),
                    kind: "VirtualMachine".into(),
                    name: "vm".into(),
                },
                virtual_machine_snapshot_name: "s".into(),
                ..Default::default()
            },
        );
        assert!(validate_vm_restore(&r).is_empty());
        r.spec.volume_restore_policy = Some("Sometimes".into());
        r.spec.patches = Some(vec![
            r#"{"op":"replace","path":"/metadata/name","value":"x"}"#.into(),
            r#"{"op":"replace","path":"/spec/running","value":false}"#.into(),
        ]);
        r.spec.volume_restore_overrides = Some(vec![VolumeRestoreOverride::default()]);
        let e: Vec<String> = validate_vm_restore(&r)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("spec.volumeRestorePolicy: Unsupported value: \"Sometimes\""));
        assert_eq!(
            e[1],
            "spec.volumeRestoreOverrides[0].volumeName: must provide a volume name"
        );
        assert!(e[3].contains("patching is valid only for elements under /spec/ only"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_go_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_go_duration("1.5s").unwrap().as_millis(), 1500);
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("5 minutes").is_err());
    }
}
