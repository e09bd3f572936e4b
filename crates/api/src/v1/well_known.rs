//! Label, annotation and finalizer names with meaning across components, as upstream
//! KubeVirt spells them (`staging/src/kubevirt.io/api/core/v1/types.go`), plus the few of
//! kubevirt-rs's own (prefix `kubevirt-rs.io/`).

/// Label on launcher pods: `kubevirt.io=virt-launcher`.
pub const APP_LABEL: &str = "kubevirt.io";
/// Value of [`APP_LABEL`] on launcher pods.
pub const APP_LAUNCHER: &str = "virt-launcher";
/// Label on a launcher pod naming the UID of the VMI it runs.
pub const CREATED_BY_LABEL: &str = "kubevirt.io/created-by";
/// Label on a launcher pod with the VMI's (sanitised host) name.
pub const VM_NAME_LABEL: &str = "vm.kubevirt.io/name";
/// Label on a VMI (and its pod) naming the node it runs on; node agents watch by it.
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// On a VMI while it migrates: the target pod's node, whose agent prepares the target and
/// watches VMIs with this label (set at hand-off, removed when the migration ends).
pub const MIGRATION_TARGET_NODE_NAME_LABEL: &str = "kubevirt.io/migrationTargetNodeName";
/// Node label: the node agent runs and can take VMs.
pub const NODE_SCHEDULABLE_LABEL: &str = "kubevirt.io/schedulable";

/// Annotation on a launcher pod naming the VMI's domain.
pub const DOMAIN_ANNOTATION: &str = "kubevirt.io/domain";
/// Annotation telling `kubectl logs`/`exec` which container to use.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Annotation on a VMI: the generation of the VM it was created from.
pub const VM_GENERATION_ANNOTATION: &str = "kubevirt.io/vm-generation";

/// Finalizer on a VMI until no launcher pod of it is left (added on creation).
pub const VMI_FINALIZER: &str = "foregroundDeleteVirtualMachine";
/// Finalizer the VM controller keeps on VMs, and on the VMIs it creates until it has
/// recorded their final state.
pub const VM_CONTROLLER_FINALIZER: &str = "kubevirt.io/virtualMachineControllerFinalize";

/// Name of the launcher pod's main container.
pub const COMPUTE_CONTAINER: &str = "compute";
/// Pod readiness gate kept by the VMI controller: False while the VMI is paused.
pub const UNPAUSED_POD_CONDITION: &str = "kubevirt.io/virtual-machine-unpaused";

/// kubevirt-rs: annotation on a VMI saying the guest runs under software emulation (TCG)
/// and why. Upstream has no such fact; a condition would confuse clients that read "the
/// active condition", so it is an annotation (and an event).
pub const SOFTWARE_EMULATION_ANNOTATION: &str = "kubevirt-rs.io/software-emulation";
/// kubevirt-rs: annotation by which `virtctl stop --grace-period` shortens a VMI's grace
/// period (the VMI spec is immutable here).
pub const STOP_GRACE_ANNOTATION: &str = "kubevirt-rs.io/stop-grace-period-seconds";
