//! `VirtualMachineInstanceMigration` and `VirtualMachineInstanceReplicaSet`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{ConditionStatus, MigrationState, VirtualMachineInstanceTemplateSpec};

/// A request to live-migrate one VMI.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstanceMigration",
    doc = "VirtualMachineInstanceMigration represents the object tracking a VMI's migration to another host in the cluster",
    plural = "virtualmachineinstancemigrations",
    singular = "virtualmachineinstancemigration",
    namespaced,
    status = "VirtualMachineInstanceMigrationStatus",
    shortname = "vmim",
    shortname = "vmims",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Phase","type":"string","description":"The current phase of VM instance migration","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"VMI","type":"string","description":"The name of the VMI to perform the migration on","jsonPath":".spec.vmiName"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationSpec {
    /// The VMI (same namespace) to migrate.
    pub vmi_name: Option<String>,
    pub added_node_selector: Option<BTreeMap<String, String>>,
    pub receive: Option<MigrationReceive>,
    pub send_to: Option<MigrationSendTo>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReceive {
    #[serde(rename = "migrationID")]
    pub migration_id: String,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSendTo {
    #[serde(rename = "connectURL")]
    pub connect_url: String,
    #[serde(rename = "migrationID")]
    pub migration_id: String,
}

/// Phase of a migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VirtualMachineInstanceMigrationPhase {
    #[default]
    #[serde(rename = "")]
    Unset,
    Pending,
    Scheduling,
    Scheduled,
    PreparingTarget,
    TargetReady,
    Running,
    Succeeded,
    Failed,
    WaitingForSync,
    Synchronizing,
}

impl VirtualMachineInstanceMigrationPhase {
    /// True once the migration is over (either way).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationStatus {
    pub phase: Option<VirtualMachineInstanceMigrationPhase>,
    pub conditions: Option<Vec<VirtualMachineInstanceMigrationCondition>>,
    pub phase_transition_timestamps: Option<Vec<MigrationPhaseTransitionTimestamp>>,
    pub migration_state: Option<MigrationState>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_array")]
    pub synchronization_addresses: Option<Vec<serde_json::Value>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_probe_time: Option<Time>,
    pub last_transition_time: Option<Time>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPhaseTransitionTimestamp {
    pub phase: Option<VirtualMachineInstanceMigrationPhase>,
    pub phase_transition_timestamp: Option<Time>,
}

/// Keeps `replicas` identical VMIs running.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstanceReplicaSet",
    doc = "VirtualMachineInstanceReplicaSet keeps a given number of identical VirtualMachineInstances running",
    plural = "virtualmachineinstancereplicasets",
    singular = "virtualmachineinstancereplicaset",
    namespaced,
    status = "VirtualMachineInstanceReplicaSetStatus",
    shortname = "vmirs",
    shortname = "vmirss",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.labelSelector"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","description":"Number of desired VirtualMachineInstances","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","description":"Number of managed and not final or deleted VirtualMachineInstances","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","description":"Number of managed VirtualMachineInstances which are ready to receive traffic","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceReplicaSetSpec {
    /// Defaults to 1.
    pub replicas: Option<i32>,
    pub selector: LabelSelector,
    pub template: VirtualMachineInstanceTemplateSpec,
    pub paused: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceReplicaSetStatus {
    pub replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub conditions: Option<Vec<VirtualMachineInstanceReplicaSetCondition>>,
    pub label_selector: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceReplicaSetCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_probe_time: Option<Time>,
    pub last_transition_time: Option<Time>,
}
