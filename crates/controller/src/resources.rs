//! API coordinates of the kinds the controllers work on, and well-known names.
//!
//! The controllers handle VirtualMachine and VirtualMachineInstance as `DynamicObject`s:
//! every field a user wrote (including ones this crate does not model) is carried from the
//! VM template into the VMI unchanged, and a status patch only touches the fields it sets.

use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;

pub const GROUP: &str = "kubevirt.io";
pub const VERSION: &str = "v1";
pub const SUBRESOURCE_GROUP: &str = "subresources.kubevirt.io";

/// Finalizer the VM controller keeps on a VM until its VMI is gone.
pub const VM_FINALIZER: &str = "kubevirt.io/virtualMachineControllerFinalize";
/// Finalizer on a VMI until its node agent has stopped the guest (upstream's name).
pub const VMI_FINALIZER: &str = "foregroundDeleteVirtualMachine";
/// Label the scheduler puts on a VMI so node agents can watch only their own VMIs.
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// Label linking a VMI to the VM that created it (as upstream).
pub const CREATED_BY_LABEL: &str = "kubevirt.io/created-by";
/// Name of the controller in events and managed fields.
pub const VM_CONTROLLER_NAME: &str = "virtualmachine-controller";
pub const VMI_CONTROLLER_NAME: &str = "virtualmachineinstance-controller";

pub fn vm_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "VirtualMachine"),
        "virtualmachines",
    )
}

pub fn vmi_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "VirtualMachineInstance"),
        "virtualmachineinstances",
    )
}

/// Namespace and name of an object, for logs and errors.
pub fn ns_name(obj: &DynamicObject) -> (String, String) {
    (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}
