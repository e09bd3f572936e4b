//! `VirtualMachine`: a stateful VM whose `runStrategy` decides when a VMI exists.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{ConditionStatus, VirtualMachineInstanceTemplateSpec};

/// The desired state of a VirtualMachine.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    doc = "VirtualMachine handles the VirtualMachines that are not running or are in a stopped state. It is the stateful counterpart of a VirtualMachineInstance.",
    plural = "virtualmachines",
    singular = "virtualmachine",
    namespaced,
    status = "VirtualMachineStatus",
    shortname = "vm",
    shortname = "vms",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","description":"Human Readable Status","jsonPath":".status.printableStatus"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Deprecated: use `runStrategy`. Mutually exclusive with it.
    pub running: Option<bool>,
    pub run_strategy: Option<RunStrategy>,
    /// An instancetype providing CPU and memory for the template.
    pub instancetype: Option<InstancetypeMatcher>,
    /// A preference providing defaults for the template.
    pub preference: Option<PreferenceMatcher>,
    /// The VMI to create when the VM runs.
    pub template: VirtualMachineInstanceTemplateSpec,
    /// DataVolumes created for and owned by the VM.
    pub data_volume_templates: Option<Vec<DataVolumeTemplateSpec>>,
    /// `Replacement` or `Migration`.
    pub update_volumes_strategy: Option<String>,
}

impl VirtualMachineSpec {
    /// The run strategy in effect, mapping the deprecated `running` flag like upstream
    /// (`true` -> Always, `false`/unset -> Halted).
    pub fn effective_run_strategy(&self) -> RunStrategy {
        match (self.run_strategy, self.running) {
            (Some(rs), _) => rs,
            (None, Some(true)) => RunStrategy::Always,
            _ => RunStrategy::Halted,
        }
    }
}

/// When a VM's VMI should exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RunStrategy {
    /// Always keep a VMI running; recreate it whenever it stops.
    Always,
    /// No VMI; stop it if one runs.
    Halted,
    /// Start/stop only via the `start`/`stop` subresources.
    Manual,
    /// Restart the VMI only if it failed.
    RerunOnFailure,
    /// Run the VMI once; do not restart it.
    Once,
    /// Create a VMI that waits to receive a migration.
    WaitAsReceiver,
}

impl RunStrategy {
    /// Every value, in upstream's order.
    pub const ALL: [RunStrategy; 6] = [
        Self::Always,
        Self::Halted,
        Self::Manual,
        Self::RerunOnFailure,
        Self::Once,
        Self::WaitAsReceiver,
    ];
    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::Halted => "Halted",
            Self::Manual => "Manual",
            Self::RerunOnFailure => "RerunOnFailure",
            Self::Once => "Once",
            Self::WaitAsReceiver => "WaitAsReceiver",
        }
    }
}

impl std::fmt::Display for RunStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancetypeMatcher {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub revision_name: Option<String>,
    pub infer_from_volume: Option<String>,
    pub infer_from_volume_failure_policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferenceMatcher {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub revision_name: Option<String>,
    pub infer_from_volume: Option<String>,
    pub infer_from_volume_failure_policy: Option<String>,
}

/// A CDI DataVolume the VM owns. The `spec` is CDI's and is carried as-is.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplateSpec {
    /// Accepted for backwards compatibility (upstream ignores it).
    pub api_version: Option<String>,
    /// Accepted for backwards compatibility (upstream ignores it).
    pub kind: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "super::template_metadata")]
    pub metadata: Option<ObjectMeta>,
    #[schemars(schema_with = "super::preserved_object")]
    pub spec: serde_json::Value,
    /// Upstream's empty "dummy" status, accepted for backwards compatibility.
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub status: Option<serde_json::Value>,
}

/// One volume's entry in the VM's `status.volumeSnapshotStatuses`.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    pub name: String,
    /// Always written, as upstream (no `omitempty`).
    pub enabled: bool,
    pub reason: Option<String>,
}

impl VolumeSnapshotStatus {
    pub fn enabled(name: String) -> Self {
        VolumeSnapshotStatus {
            name,
            enabled: true,
            reason: None,
        }
    }

    pub fn disabled(name: String, reason: String) -> Self {
        VolumeSnapshotStatus {
            name,
            enabled: false,
            reason: Some(reason),
        }
    }
}

/// What `kubectl get vm` shows in STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VirtualMachinePrintableStatus {
    Stopped,
    Provisioning,
    Starting,
    Running,
    Paused,
    Stopping,
    Terminating,
    CrashLoopBackOff,
    Migrating,
    Unknown,
    ErrorUnschedulable,
    ErrImagePull,
    ImagePullBackOff,
    ErrorPvcNotFound,
    DataVolumeError,
    WaitingForVolumeBinding,
    WaitingForReceiver,
}

/// Observed state of a VM.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    pub snapshot_in_progress: Option<String>,
    pub restore_in_progress: Option<String>,
    /// True when the VMI exists.
    pub created: Option<bool>,
    /// True when the VMI is running and ready.
    pub ready: Option<bool>,
    /// Human-readable status (what `kubectl get vm` shows).
    pub printable_status: Option<VirtualMachinePrintableStatus>,
    /// Conditions of the VM (Ready, Failure, Paused, ...).
    pub conditions: Option<Vec<VirtualMachineCondition>>,
    /// Pending start/stop requests.
    pub state_change_requests: Option<Vec<VirtualMachineStateChangeRequest>>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_array")]
    pub volume_requests: Option<Vec<serde_json::Value>>,
    /// Whether a snapshot of the VM can take each volume, and why not.
    pub volume_snapshot_statuses: Option<Vec<VolumeSnapshotStatus>>,
    pub start_failure: Option<VirtualMachineStartFailure>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub memory_dump_request: Option<serde_json::Value>,
    pub observed_generation: Option<i64>,
    pub desired_generation: Option<i64>,
    pub run_strategy: Option<RunStrategy>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub instancetype_ref: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub preference_ref: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub volume_update_state: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub changed_block_tracking: Option<serde_json::Value>,
}

/// A VM condition (`Ready`, `Failure`, `Paused`, `Initialized`, ...).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_probe_time: Option<Time>,
    pub last_transition_time: Option<Time>,
}

/// Well-known VM condition types.
pub mod vm_condition {
    pub const READY: &str = "Ready";
    pub const FAILURE: &str = "Failure";
    pub const PAUSED: &str = "Paused";
    pub const INITIALIZED: &str = "Initialized";
    pub const RESTART_REQUIRED: &str = "RestartRequired";
    pub const LIVE_MIGRATABLE: &str = "LiveMigratable";
    pub const AGENT_CONNECTED: &str = "AgentConnected";
}

/// A pending start/stop request (from `virtctl start|stop|restart`).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStateChangeRequest {
    /// `Start` or `Stop`.
    pub action: String,
    pub data: Option<std::collections::BTreeMap<String, String>>,
    pub uid: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStartFailure {
    #[serde(rename = "lastFailedVMIUID")]
    pub last_failed_vmi_uid: Option<String>,
    pub retry_after_timestamp: Option<Time>,
    pub consecutive_fail_count: Option<i32>,
}
