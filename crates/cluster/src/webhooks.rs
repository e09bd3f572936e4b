//! The admission webhooks virt-api registers: one table ([`WEBHOOKS`]) from which both the
//! install manifests (the two webhook configurations) and virt-api's routes are made, and
//! the launcher-pod eviction webhook ([`LAUNCHER_EVICTION`], served by
//! [`crate::eviction`]). Names and paths are upstream KubeVirt's, so tooling that looks for
//! them finds them.

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
    /// `None`, or `NoneOnDryRun` for a webhook that writes (unless the request is a dry run).
    pub side_effects: &'static str,
    /// Asked only about objects named `virt-launcher-*` (a match condition, as upstream).
    pub only_launchers: bool,
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
        side_effects: "None",
        only_launchers: false,
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
    hook(
        "migration-policy-validator.kubevirt.io",
        Validate,
        "migrations.kubevirt.io",
        "migrationpolicies",
        CREATE_UPDATE,
        "/migration-policy-validate-create",
    ),
    // Upstream's virt-operator serves this one; on updates only, so the install's own
    // create (`kubevirt_controller::install::ensure_object`) never waits for virt-api.
    hook(
        "kubevirt-update-validator.kubevirt.io",
        Validate,
        "kubevirt.io",
        "kubevirts",
        UPDATE,
        "/kubevirt-validate-update",
    ),
];

/// Evictions of launcher pods: refused (429) while the VMI is evacuated by a migration,
/// which this webhook starts by marking the VMI.
pub const LAUNCHER_EVICTION: Webhook = Webhook {
    name: "virt-launcher-eviction-interceptor.kubevirt.io",
    role: Validate,
    group: "",
    resource: "pods/eviction",
    operations: &["*"],
    path: "/pod-eviction-validate",
    side_effects: "NoneOnDryRun",
    only_launchers: true,
};

/// Every webhook of `role`'s configuration.
pub fn of_role(role: Role) -> impl Iterator<Item = &'static Webhook> {
    let eviction = (role == Validate).then_some(&LAUNCHER_EVICTION);
    eviction
        .into_iter()
        .chain(WEBHOOKS.iter().filter(move |w| w.role == role))
}

/// The admission webhook served at `path`, if any.
pub fn by_path(path: &str) -> Option<&'static Webhook> {
    WEBHOOKS.iter().find(|w| w.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_unique_per_role() {
        let all: Vec<&Webhook> = of_role(Mutate).chain(of_role(Validate)).collect();
        assert_eq!(all.len(), WEBHOOKS.len() + 1);
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
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
