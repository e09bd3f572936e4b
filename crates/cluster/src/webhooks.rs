//! The admission webhooks virt-api registers: one table ([`WEBHOOKS`]) from which both the
//! install manifests (the two webhook configurations) and virt-api's routes are made.
//! Names and paths are upstream KubeVirt's, so tooling that looks for them finds them.

/// What a webhook does with the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Applies defaults (a JSON patch); never denies.
    Mutate,
    /// Denies an invalid object with its field causes.
    Validate,
}

/// One webhook of `virt-api-mutator` or `virt-api-validator`.
#[derive(Debug, Clone, Copy)]
pub struct Webhook {
    pub name: &'static str,
    pub role: Role,
    pub group: &'static str,
    pub resource: &'static str,
    pub operations: &'static [&'static str],
    pub path: &'static str,
}

/// The MutatingWebhookConfiguration's name.
pub const MUTATING_CONFIGURATION: &str = "virt-api-mutator";
/// The ValidatingWebhookConfiguration's name.
pub const VALIDATING_CONFIGURATION: &str = "virt-api-validator";

const CREATE: &[&str] = &["CREATE"];
const UPDATE: &[&str] = &["UPDATE"];
const CREATE_UPDATE: &[&str] = &["CREATE", "UPDATE"];

const fn hook(
    name: &'static str,
    role: Role,
    group: &'static str,
    resource: &'static str,
    operations: &'static [&'static str],
    path: &'static str,
) -> Webhook {
    Webhook {
        name,
        role,
        group,
        resource,
        operations,
        path,
    }
}

use Role::{Mutate, Validate};

pub const WEBHOOKS: &[Webhook] = &[
    hook(
        "virtualmachines-mutator.kubevirt.io",
        Mutate,
        "kubevirt.io",
        "virtualmachines",
        CREATE_UPDATE,
        "/virtualmachines-mutate",
    ),
    hook(
        "virtualmachineinstances-mutator.kubevirt.io",
        Mutate,
        "kubevirt.io",
        "virtualmachineinstances",
        CREATE,
        "/virtualmachineinstances-mutate",
    ),
    hook(
        "migrations-mutator.kubevirt.io",
        Mutate,
        "kubevirt.io",
        "virtualmachineinstancemigrations",
        CREATE,
        "/migration-mutate-create",
    ),
    hook(
        "virtualmachineclones-mutator.kubevirt.io",
        Mutate,
        "clone.kubevirt.io",
        "virtualmachineclones",
        CREATE,
        "/vm-clone-mutate-create",
    ),
    hook(
        "virtualmachineinstances-create-validator.kubevirt.io",
        Validate,
        "kubevirt.io",
        "virtualmachineinstances",
        CREATE,
        "/virtualmachineinstances-validate-create",
    ),
    hook(
        "virtualmachineinstances-update-validator.kubevirt.io",
        Validate,
        "kubevirt.io",
        "virtualmachineinstances",
        UPDATE,
        "/virtualmachineinstances-validate-update",
    ),
    hook(
        "virtualmachine-validator.kubevirt.io",
        Validate,
        "kubevirt.io",
        "virtualmachines",
        CREATE_UPDATE,
        "/virtualmachines-validate",
    ),
    hook(
        "virtualmachinereplicaset-validator.kubevirt.io",
        Validate,
        "kubevirt.io",
        "virtualmachineinstancereplicasets",
        CREATE_UPDATE,
        "/virtualmachinereplicaset-validate",
    ),
    hook(
        "migration-create-validator.kubevirt.io",
        Validate,
        "kubevirt.io",
        "virtualmachineinstancemigrations",
        CREATE,
        "/migration-validate-create",
    ),
    hook(
        "migration-update-validator.kubevirt.io",
        Validate,
        "kubevirt.io",
        "virtualmachineinstancemigrations",
        UPDATE,
        "/migration-validate-update",
    ),
    hook(
        "virtualmachinesnapshot-validator.snapshot.kubevirt.io",
        Validate,
        "snapshot.kubevirt.io",
        "virtualmachinesnapshots",
        CREATE_UPDATE,
        "/virtualmachinesnapshots-validate",
    ),
    hook(
        "virtualmachinerestore-validator.snapshot.kubevirt.io",
        Validate,
        "snapshot.kubevirt.io",
        "virtualmachinerestores",
        CREATE_UPDATE,
        "/virtualmachinerestores-validate",
    ),
    hook(
        "virtualmachineexport-validator.export.kubevirt.io",
        Validate,
        "export.kubevirt.io",
        "virtualmachineexports",
        CREATE_UPDATE,
        "/virtualmachineexports-validate",
    ),
    hook(
        "vm-clone-validator.kubevirt.io",
        Validate,
        "clone.kubevirt.io",
        "virtualmachineclones",
        CREATE_UPDATE,
        "/vm-clone-validate-create",
    ),
];

/// The webhook served at `path`, if any.
pub fn by_path(path: &str) -> Option<&'static Webhook> {
    WEBHOOKS.iter().find(|w| w.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_unique_per_role() {
        for (i, a) in WEBHOOKS.iter().enumerate() {
            for b in &WEBHOOKS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.path, b.path, "{} and {}", a.name, b.name);
            }
        }
        assert_eq!(
            by_path("/virtualmachines-validate").map(|w| w.role),
            Some(Role::Validate)
        );
        assert!(by_path("/nope").is_none());
    }
}
