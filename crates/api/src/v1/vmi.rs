//! `VirtualMachineInstance`: one running (or about to run) guest.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ExecAction, HTTPGetAction, PodDNSConfig, PodResourceClaim, TCPSocketAction,
    Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{ConditionStatus, DomainSpec, EmptyObject, Network, Volume};

/// The desired state of a VirtualMachineInstance.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    doc = "VirtualMachineInstance is *the* VirtualMachineInstance Definition. It represents a virtual machine in the runtime environment of kubernetes.",
    plural = "virtualmachineinstances",
    singular = "virtualmachineinstance",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    shortname = "vmi",
    shortname = "vmis",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.interfaces[0].ipAddress"}"#,
    printcolumn = r#"{"name":"NodeName","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Live-Migratable","type":"string","jsonPath":".status.conditions[?(@.type=='LiveMigratable')].status","priority":1}"#,
    printcolumn = r#"{"name":"Paused","type":"string","jsonPath":".status.conditions[?(@.type=='Paused')].status","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    /// If specified, indicates the VMI's priority (a PriorityClass name).
    pub priority_class_name: Option<String>,
    /// Specification of the desired behavior of the VirtualMachineInstance on the host.
    pub domain: DomainSpec,
    /// Labels a node must have for the VMI to be scheduled on it.
    pub node_selector: Option<BTreeMap<String, String>>,
    /// If specified, the VMI's scheduling constraints.
    pub affinity: Option<Affinity>,
    /// If specified, the VMI is dispatched by this scheduler.
    pub scheduler_name: Option<String>,
    /// Name of the ServiceAccount the VMI's launcher runs as.
    pub service_account_name: Option<String>,
    /// If specified, the VMI's tolerations.
    pub tolerations: Option<Vec<Toleration>>,
    /// How a group of VMIs is spread across topology domains.
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// `LiveMigrate`, `LiveMigrateIfPossible`, `None`, `External`.
    pub eviction_strategy: Option<String>,
    /// `Paused`.
    pub start_strategy: Option<String>,
    /// Grace period after the stop signal before the VMI is force terminated (default 30).
    pub termination_grace_period_seconds: Option<i64>,
    /// Volumes that can be mounted by disks belonging to the VMI.
    pub volumes: Option<Vec<Volume>>,
    /// Periodic probe of the VMI's liveness; the VMI is stopped if it fails.
    pub liveness_probe: Option<Probe>,
    /// Periodic probe of the VMI's readiness to serve.
    pub readiness_probe: Option<Probe>,
    /// Hostname of the guest (default: the VMI name, if DHCP or cloud-init sets it).
    pub hostname: Option<String>,
    /// If specified, the fully qualified hostname is `<hostname>.<subdomain>.<namespace>.svc.<cluster domain>`.
    pub subdomain: Option<String>,
    /// Networks that guest interfaces can be attached to.
    pub networks: Option<Vec<Network>>,
    /// `ClusterFirstWithHostNet`, `ClusterFirst`, `Default`, `None`.
    pub dns_policy: Option<String>,
    /// DNS parameters merged into the generated configuration.
    pub dns_config: Option<PodDNSConfig>,
    /// Credentials (SSH keys, passwords) to inject into the guest.
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_array")]
    pub access_credentials: Option<Vec<serde_json::Value>>,
    /// `amd64`, `arm64`, `s390x`.
    pub architecture: Option<String>,
    /// Dynamic resource allocation claims (alpha upstream).
    pub resource_claims: Option<Vec<PodResourceClaim>>,
    /// Volumes mounted into the launcher without a disk (operational workflows).
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_array")]
    pub utility_volumes: Option<Vec<serde_json::Value>>,
}

/// A liveness/readiness probe, run against the guest.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub exec: Option<ExecAction>,
    pub http_get: Option<HTTPGetAction>,
    pub tcp_socket: Option<TCPSocketAction>,
    pub guest_agent_ping: Option<EmptyObject>,
    pub initial_delay_seconds: Option<i32>,
    pub timeout_seconds: Option<i32>,
    pub period_seconds: Option<i32>,
    pub success_threshold: Option<i32>,
    pub failure_threshold: Option<i32>,
}

/// The lifecycle phase of a VMI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VirtualMachineInstancePhase {
    /// Not yet picked up by any controller (serialised as the empty string).
    #[default]
    #[serde(rename = "")]
    Unset,
    Pending,
    Scheduling,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Unknown,
    WaitingForSync,
}

impl VirtualMachineInstancePhase {
    /// True once the VMI can never run again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "",
            Self::Pending => "Pending",
            Self::Scheduling => "Scheduling",
            Self::Scheduled => "Scheduled",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
            Self::WaitingForSync => "WaitingForSync",
        }
    }
}

/// Observed state of a VMI, written by the controllers and the node agent.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// Node the VMI is running on.
    pub node_name: Option<String>,
    /// A brief CamelCase reason for the VMI's state.
    pub reason: Option<String>,
    /// Conditions of the VMI (Ready, LiveMigratable, Paused, AgentConnected, ...).
    pub conditions: Option<Vec<VirtualMachineInstanceCondition>>,
    /// Lifecycle phase of the VMI.
    pub phase: Option<VirtualMachineInstancePhase>,
    pub phase_transition_timestamps: Option<Vec<PhaseTransitionTimestamp>>,
    /// Guest network interfaces as observed.
    pub interfaces: Option<Vec<VirtualMachineInstanceNetworkInterface>>,
    #[serde(rename = "guestOSInfo")]
    pub guest_os_info: Option<GuestOsInfo>,
    pub migration_state: Option<MigrationState>,
    /// `LiveMigration` or `BlockMigration`.
    pub migration_method: Option<String>,
    pub migration_transport: Option<String>,
    pub qos_class: Option<String>,
    pub launcher_container_image_version: Option<String>,
    pub evacuation_node_name: Option<String>,
    pub active_pods: Option<BTreeMap<String, String>>,
    pub volume_status: Option<Vec<VolumeStatus>>,
    pub fs_freeze_status: Option<String>,
    pub virtual_machine_revision_name: Option<String>,
    pub runtime_user: Option<u64>,
    #[serde(rename = "VSOCKCID")]
    pub vsock_cid: Option<u32>,
    pub selinux_context: Option<String>,
    pub machine: Option<super::Machine>,
    #[serde(rename = "currentCPUTopology")]
    pub current_cpu_topology: Option<CpuTopology>,
    pub memory: Option<MemoryStatus>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub kernel_boot_status: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub topology_hints: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_array")]
    pub migrated_volumes: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub changed_block_tracking: Option<serde_json::Value>,
}

/// A VMI condition (`Ready`, `LiveMigratable`, `Paused`, `AgentConnected`, `Synchronized`, ...).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// A brief CamelCase reason for the VMI's state.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_probe_time: Option<Time>,
    pub last_transition_time: Option<Time>,
}

/// Well-known VMI condition types.
pub mod vmi_condition {
    pub const READY: &str = "Ready";
    pub const LIVE_MIGRATABLE: &str = "LiveMigratable";
    pub const STORAGE_LIVE_MIGRATABLE: &str = "StorageLiveMigratable";
    pub const PAUSED: &str = "Paused";
    pub const AGENT_CONNECTED: &str = "AgentConnected";
    pub const UNSUPPORTED_AGENT: &str = "AgentVersionNotSupported";
    pub const SYNCHRONIZED: &str = "Synchronized";
    pub const PROVISIONING: &str = "Provisioning";
    pub const FAILURE: &str = "Failure";
    pub const DATA_VOLUMES_READY: &str = "DataVolumesReady";
    /// Reason used with `Synchronized=False` when the spec asks for a feature this project
    /// cannot run yet (see [`crate::support`]).
    pub const REASON_UNSUPPORTED: &str = "Unsupported";
    pub const POD_SCHEDULED: &str = "PodScheduled";
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransitionTimestamp {
    /// Lifecycle phase of the VMI.
    pub phase: Option<VirtualMachineInstancePhase>,
    pub phase_transition_timestamp: Option<Time>,
}

/// A guest NIC as observed (from the domain and the guest agent).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceNetworkInterface {
    pub ip_address: Option<String>,
    pub mac: Option<String>,
    pub name: Option<String>,
    pub ip_addresses: Option<Vec<String>>,
    pub pod_interface_name: Option<String>,
    pub interface_name: Option<String>,
    /// `domain`, `guest-agent`, `multus-status`, comma separated.
    pub info_source: Option<String>,
    pub queue_count: Option<i32>,
    pub link_state: Option<String>,
}

/// What the guest agent reports about the OS.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestOsInfo {
    pub name: Option<String>,
    pub kernel_release: Option<String>,
    pub version: Option<String>,
    pub pretty_name: Option<String>,
    pub version_id: Option<String>,
    pub kernel_version: Option<String>,
    pub machine: Option<String>,
    pub id: Option<String>,
}

/// Progress of the VMI's current/last live migration.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    pub start_timestamp: Option<Time>,
    pub end_timestamp: Option<Time>,
    pub target_node: Option<String>,
    pub target_node_address: Option<String>,
    pub target_node_domain_detected: Option<bool>,
    pub target_node_domain_ready_timestamp: Option<Time>,
    pub target_pod: Option<String>,
    pub target_direct_migration_node_ports: Option<BTreeMap<String, i32>>,
    pub source_node: Option<String>,
    pub source_pod: Option<String>,
    pub completed: Option<bool>,
    pub failed: Option<bool>,
    pub failure_reason: Option<String>,
    pub abort_requested: Option<bool>,
    /// `Succeeded`, `Failed`, `Aborting`.
    pub abort_status: Option<String>,
    pub migration_uid: Option<String>,
    /// `PreCopy`, `PostCopy`.
    pub mode: Option<String>,
    pub migration_policy_name: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub migration_configuration: Option<serde_json::Value>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub name: String,
    pub target: Option<String>,
    pub phase: Option<String>,
    /// A brief CamelCase reason for the VMI's state.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub size: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub persistent_volume_claim_info: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub hotplug_volume: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub memory_dump_volume: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "super::preserved_object")]
    pub container_disk_volume: Option<serde_json::Value>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuTopology {
    pub cores: Option<u32>,
    pub sockets: Option<u32>,
    pub threads: Option<u32>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    pub guest_at_boot: Option<crate::quantity::Quantity>,
    pub guest_current: Option<crate::quantity::Quantity>,
    pub guest_requested: Option<crate::quantity::Quantity>,
}

/// `metadata` + `spec` of a VMI, as embedded in VMs and replica sets.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceTemplateSpec {
    #[serde(default)]
    #[schemars(schema_with = "super::template_metadata")]
    pub metadata: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    pub spec: Option<VirtualMachineInstanceSpec>,
}
