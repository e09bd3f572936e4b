//! Test fixture builders (feature `testing`), e.g.
//! `VirtualMachine::test("vm1").running().with_container_disk("img")`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::quantity::Quantity;
use crate::v1::*;

/// A minimal valid VMI spec: 128Mi guest, no disks.
pub fn vmi_spec() -> VirtualMachineInstanceSpec {
    VirtualMachineInstanceSpec {
        domain: DomainSpec {
            memory: Some(Memory {
                guest: Some(Quantity::from_bytes(128 << 20)),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn add_container_disk(spec: &mut VirtualMachineInstanceSpec, name: &str, image: &str) {
    spec.domain
        .devices
        .disks
        .get_or_insert_with(Vec::new)
        .push(Disk {
            name: name.to_string(),
            disk: Some(DiskTarget {
                bus: Some("virtio".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: name.to_string(),
        container_disk: Some(ContainerDiskSource {
            image: image.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    });
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some("default".to_string()),
        uid: Some(crate::defaults::firmware_uuid_for(&format!(
            "test-uid/{name}"
        ))),
        ..Default::default()
    }
}

impl VirtualMachine {
    /// A halted VM in namespace `default` with a minimal template.
    pub fn test(name: &str) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert("kubevirt.io/vm".to_string(), name.to_string());
        VirtualMachine {
            metadata: meta(name),
            spec: VirtualMachineSpec {
                run_strategy: Some(RunStrategy::Halted),
                template: VirtualMachineInstanceTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(vmi_spec()),
                },
                ..Default::default()
            },
            status: None,
        }
    }
    /// `runStrategy: Always`.
    pub fn running(self) -> Self {
        self.with_run_strategy(RunStrategy::Always)
    }
    /// `runStrategy: Halted`.
    pub fn halted(self) -> Self {
        self.with_run_strategy(RunStrategy::Halted)
    }
    pub fn with_run_strategy(mut self, rs: RunStrategy) -> Self {
        self.spec.running = None;
        self.spec.run_strategy = Some(rs);
        self
    }
    /// Adds a virtio disk backed by a containerDisk volume of the same name.
    pub fn with_container_disk(mut self, name: &str, image: &str) -> Self {
        if let Some(spec) = self.spec.template.spec.as_mut() {
            add_container_disk(spec, name, image);
        }
        self
    }
    pub fn with_status(mut self, status: VirtualMachineStatus) -> Self {
        self.status = Some(status);
        self
    }
}

impl VirtualMachineInstance {
    /// A VMI in namespace `default` with a minimal spec and no status.
    pub fn test(name: &str) -> Self {
        VirtualMachineInstance {
            metadata: meta(name),
            spec: vmi_spec(),
            status: None,
        }
    }
    pub fn with_container_disk(mut self, name: &str, image: &str) -> Self {
        add_container_disk(&mut self.spec, name, image);
        self
    }
    pub fn with_phase(mut self, phase: VirtualMachineInstancePhase) -> Self {
        self.status.get_or_insert_with(Default::default).phase = Some(phase);
        self
    }
    pub fn on_node(mut self, node: &str) -> Self {
        self.status.get_or_insert_with(Default::default).node_name = Some(node.to_string());
        self
    }
    pub fn with_condition(mut self, type_: &str, status: ConditionStatus) -> Self {
        self.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(VirtualMachineInstanceCondition {
                type_: type_.to_string(),
                status,
                ..Default::default()
            });
        self
    }
    pub fn owned_by(mut self, vm: &VirtualMachine) -> Self {
        use kube::Resource;
        if let Some(oref) = vm.controller_owner_ref(&()) {
            self.metadata.owner_references = Some(vec![oref]);
        }
        self
    }
}

impl VirtualMachineInstanceMigration {
    pub fn test(name: &str, vmi: &str) -> Self {
        VirtualMachineInstanceMigration {
            metadata: meta(name),
            spec: VirtualMachineInstanceMigrationSpec {
                vmi_name: Some(vmi.to_string()),
                ..Default::default()
            },
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_produce_valid_objects() {
        let mut vm = VirtualMachine::test("vm1")
            .running()
            .with_container_disk("root", "img");
        crate::defaults::set_vm_defaults(&mut vm);
        assert_eq!(crate::validation::validate_vm(&vm), vec![]);
        assert_eq!(vm.spec.effective_run_strategy(), RunStrategy::Always);
        let mut vmi = VirtualMachineInstance::test("vmi1")
            .with_container_disk("root", "img")
            .owned_by(&vm)
            .with_phase(VirtualMachineInstancePhase::Running);
        crate::defaults::set_vmi_defaults(&mut vmi);
        assert_eq!(crate::validation::validate_vmi(&vmi), vec![]);
        let m = VirtualMachineInstanceMigration::test("m", "vmi1");
        assert_eq!(crate::validation::validate_migration(&m), vec![]);
    }
}
