//! Defaulting: what virt-api's mutating webhooks (and the VM controller's firmware UUID
//! patch) fill in. Every function is idempotent: applying it twice changes nothing more.

use std::collections::BTreeMap;

use crate::quantity::Quantity;
use crate::v1::*;

/// Machine type used when none is given (upstream's amd64 default).
pub const DEFAULT_MACHINE_TYPE: &str = "q35";
/// Architecture used when none is given.
pub const DEFAULT_ARCHITECTURE: &str = "amd64";
/// Grace period for VMIs without one, in seconds (upstream's default).
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;
/// Name of the interface/network added when a VMI has none.
pub const DEFAULT_NETWORK_NAME: &str = "default";
/// Default kind of `spec.instancetype`.
pub const DEFAULT_INSTANCETYPE_KIND: &str = "VirtualMachineClusterInstancetype";
/// Default kind of `spec.preference`.
pub const DEFAULT_PREFERENCE_KIND: &str = "VirtualMachineClusterPreference";

/// The namespace upstream uses to derive a stable SMBIOS UUID from a VM's name.
const FIRMWARE_UUID_NAMESPACE: uuid::Uuid = uuid::uuid!("6a1a24a1-4061-4607-8bf4-a3963d0c5895");

/// The stable firmware UUID upstream derives from a VM name (`CalculateLegacyUUID`).
pub fn firmware_uuid_for(name: &str) -> String {
    uuid::Uuid::new_v5(&FIRMWARE_UUID_NAMESPACE, name.as_bytes()).to_string()
}

/// Defaults a VirtualMachine: run strategy (`Halted` when neither `running` nor
/// `runStrategy` is set), instancetype/preference kinds, and in the template the machine
/// type, architecture and a stable firmware UUID derived from the VM name.
pub fn set_vm_defaults(vm: &mut VirtualMachine) {
    let spec = &mut vm.spec;
    if spec.running.is_none() && spec.run_strategy.is_none() {
        spec.run_strategy = Some(RunStrategy::Halted);
    }
    if let Some(it) = spec.instancetype.as_mut() {
        if it.kind.as_deref().unwrap_or("").is_empty() {
            it.kind = Some(DEFAULT_INSTANCETYPE_KIND.to_string());
        }
    }
    if let Some(p) = spec.preference.as_mut() {
        if p.kind.as_deref().unwrap_or("").is_empty() {
            p.kind = Some(DEFAULT_PREFERENCE_KIND.to_string());
        }
    }
    let name = vm.metadata.name.clone();
    if let Some(tspec) = spec.template.spec.as_mut() {
        set_machine_type(tspec);
        set_architecture(tspec);
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            set_firmware_uuid(tspec, &name);
        }
    }
}

/// Defaults a VirtualMachineInstance the way virt-api's VMI mutator does.
pub fn set_vmi_defaults(vmi: &mut VirtualMachineInstance) {
    let name = vmi.metadata.name.clone();
    set_vmi_spec_defaults(&mut vmi.spec);
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        set_firmware_uuid(&mut vmi.spec, &name);
    }
}

/// The name-independent part of VMI defaulting (also usable on templates).
pub fn set_vmi_spec_defaults(spec: &mut VirtualMachineInstanceSpec) {
    set_machine_type(spec);
    set_architecture(spec);
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(DEFAULT_GRACE_PERIOD_SECONDS);
    }
    set_cpu_topology(spec);
    set_memory(spec);
    set_volume_disks(spec);
    set_disk_defaults(spec);
    set_network_defaults(spec);
    set_firmware_defaults(spec);
    for probe in [spec.liveness_probe.as_mut(), spec.readiness_probe.as_mut()]
        .into_iter()
        .flatten()
    {
        set_probe_defaults(probe);
    }
}

/// Defaults a migration (nothing to fill in today beyond what the controller sets).
/// What virt-api's migration mutator adds on create: the `kubevirt.io/vmi-name` label (how
/// a VMI's migrations are found) and the finalizer that holds a cancelled migration until its
/// outcome is recorded.
pub fn set_migration_defaults(migration: &mut VirtualMachineInstanceMigration) {
    let vmi = migration.spec.vmi_name.clone().unwrap_or_default();
    migration
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(crate::migration::VMI_NAME_LABEL.to_string(), vmi);
    let finalizers = migration.metadata.finalizers.get_or_insert_with(Vec::new);
    if !finalizers
        .iter()
        .any(|f| f == crate::migration::MIGRATION_FINALIZER)
    {
        finalizers.push(crate::migration::MIGRATION_FINALIZER.to_string());
    }
}

/// Defaults a replica set: `replicas` 1, like upstream.
pub fn set_replicaset_defaults(rs: &mut VirtualMachineInstanceReplicaSet) {
    if rs.spec.replicas.is_none() {
        rs.spec.replicas = Some(1);
    }
}

fn set_machine_type(spec: &mut VirtualMachineInstanceSpec) {
    let machine = spec.domain.machine.get_or_insert_with(Machine::default);
    if machine.machine_type.as_deref().unwrap_or("").is_empty() {
        machine.machine_type = Some(DEFAULT_MACHINE_TYPE.to_string());
    }
}

fn set_architecture(spec: &mut VirtualMachineInstanceSpec) {
    if spec.architecture.as_deref().unwrap_or("").is_empty() {
        spec.architecture = Some(DEFAULT_ARCHITECTURE.to_string());
    }
}

fn set_firmware_uuid(spec: &mut VirtualMachineInstanceSpec, name: &str) {
    let fw = spec.domain.firmware.get_or_insert_with(Firmware::default);
    if fw.uuid.as_deref().unwrap_or("").is_empty() {
        fw.uuid = Some(firmware_uuid_for(name));
    }
}

/// `efi: {}` means Secure Boot on (upstream's default), which needs SMM.
fn set_firmware_defaults(spec: &mut VirtualMachineInstanceSpec) {
    let secure_boot = match spec
        .domain
        .firmware
        .as_mut()
        .and_then(|f| f.bootloader.as_mut())
        .and_then(|b| b.efi.as_mut())
    {
        Some(efi) => *efi.secure_boot.get_or_insert(true),
        None => false,
    };
    if secure_boot {
        let features = spec.domain.features.get_or_insert_with(Features::default);
        features.smm.get_or_insert_with(FeatureState::default);
    }
}

/// Unset topology counts become 1 (upstream `setDefaultCPUTopology`).
fn set_cpu_topology(spec: &mut VirtualMachineInstanceSpec) {
    let cpu = spec.domain.cpu.get_or_insert_with(Cpu::default);
    for v in [&mut cpu.cores, &mut cpu.sockets, &mut cpu.threads] {
        if v.unwrap_or(0) == 0 {
            *v = Some(1);
        }
    }
}

/// Guest memory and the memory request follow each other: a guest size without a request
/// requests the guest size; a request (or limit) without a guest size sizes the guest.
fn set_memory(spec: &mut VirtualMachineInstanceSpec) {
    let domain = &mut spec.domain;
    let guest = domain.memory.as_ref().and_then(|m| m.guest.clone());
    let requested = domain
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .cloned();
    let limited = domain
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|r| r.get("memory"))
        .cloned();
    match (guest, requested, limited) {
        (Some(guest), None, _) => {
            let resources = domain
                .resources
                .get_or_insert_with(ResourceRequirements::default);
            resources
                .requests
                .get_or_insert_with(BTreeMap::new)
                .insert("memory".to_string(), guest);
        }
        (None, Some(q), _) | (None, None, Some(q)) => {
            let memory = domain.memory.get_or_insert_with(Memory::default);
            memory.guest = Some(q);
        }
        _ => {}
    }
    // A limit without a request requests the limit, like the pod defaults.
    if let Some(resources) = domain.resources.as_mut() {
        if let Some(limits) = resources.limits.clone() {
            let requests = resources.requests.get_or_insert_with(BTreeMap::new);
            for (k, v) in limits {
                requests.entry(k).or_insert(v);
            }
        }
    }
}

/// Volumes without a disk (or filesystem) get a plain disk of the same name, like
/// upstream's `SetDefaultVolumeDisk`.
fn set_volume_disks(spec: &mut VirtualMachineInstanceSpec) {
    let Some(volumes) = spec.volumes.as_ref() else {
        return;
    };
    let devices = &mut spec.domain.devices;
    let mut used: Vec<String> = devices
        .disks
        .iter()
        .flatten()
        .map(|d| d.name.clone())
        .collect();
    used.extend(devices.filesystems.iter().flatten().map(|f| f.name.clone()));
    let mut added = Vec::new();
    for v in volumes {
        // Volumes that are not block devices for the guest.
        if v.downward_metrics.is_some() || v.memory_dump.is_some() {
            continue;
        }
        if !used.contains(&v.name) {
            used.push(v.name.clone());
            added.push(Disk {
                name: v.name.clone(),
                ..Default::default()
            });
        }
    }
    if !added.is_empty() {
        devices.disks.get_or_insert_with(Vec::new).extend(added);
    }
}

/// Every disk gets a target (`disk: {}` when none), and every target a bus:
/// `virtio` for disks, `scsi` for LUNs, `sata` for CD-ROMs.
fn set_disk_defaults(spec: &mut VirtualMachineInstanceSpec) {
    for disk in spec.domain.devices.disks.iter_mut().flatten() {
        if disk.disk.is_none() && disk.lun.is_none() && disk.cdrom.is_none() {
            disk.disk = Some(DiskTarget::default());
        }
        if let Some(d) = disk.disk.as_mut() {
            if d.bus.as_deref().unwrap_or("").is_empty() {
                d.bus = Some("virtio".to_string());
            }
        }
        if let Some(l) = disk.lun.as_mut() {
            if l.bus.as_deref().unwrap_or("").is_empty() {
                l.bus = Some("scsi".to_string());
            }
        }
        if let Some(c) = disk.cdrom.as_mut() {
            if c.bus.as_deref().unwrap_or("").is_empty() {
                c.bus = Some("sata".to_string());
            }
            if c.readonly.is_none() {
                c.readonly = Some(true);
            }
            if c.tray.is_none() {
                c.tray = Some("closed".to_string());
            }
        }
    }
}

/// No interfaces and no networks: attach the pod network (`default`) with `masquerade`,
/// unless `autoattachPodInterface: false`. Interfaces without a binding get `masquerade` on
/// the pod network and `bridge` on Multus networks. (Upstream's cluster default for the pod
/// network is configurable; masquerade is the one that works without extra privileges and is
/// what this project runs.)
fn set_network_defaults(spec: &mut VirtualMachineInstanceSpec) {
    let autoattach = spec.domain.devices.autoattach_pod_interface.unwrap_or(true);
    let no_interfaces = spec
        .domain
        .devices
        .interfaces
        .as_ref()
        .is_none_or(|i| i.is_empty());
    let no_networks = spec.networks.as_ref().is_none_or(|n| n.is_empty());
    if autoattach && no_interfaces && no_networks {
        spec.domain.devices.interfaces = Some(vec![Interface {
            name: DEFAULT_NETWORK_NAME.to_string(),
            masquerade: Some(EmptyObject {}),
            ..Default::default()
        }]);
        spec.networks = Some(vec![Network {
            name: DEFAULT_NETWORK_NAME.to_string(),
            pod: Some(PodNetwork::default()),
            ..Default::default()
        }]);
    }
    let networks = spec.networks.clone().unwrap_or_default();
    for iface in spec.domain.devices.interfaces.iter_mut().flatten() {
        if iface.binding_methods().is_empty() {
            let on_pod = networks
                .iter()
                .find(|n| n.name == iface.name)
                .is_none_or(|n| n.pod.is_some());
            if on_pod {
                iface.masquerade = Some(EmptyObject {});
            } else {
                iface.bridge = Some(EmptyObject {});
            }
        }
        for port in iface.ports.iter_mut().flatten() {
            if port.protocol.as_deref().unwrap_or("").is_empty() {
                port.protocol = Some("TCP".to_string());
            }
        }
    }
}

fn set_probe_defaults(probe: &mut Probe) {
    probe.timeout_seconds.get_or_insert(1);
    probe.period_seconds.get_or_insert(10);
    probe.success_threshold.get_or_insert(1);
    probe.failure_threshold.get_or_insert(3);
}

/// Bytes of guest memory a spec asks for (guest, else request, else limit).
pub fn guest_memory(spec: &VirtualMachineInstanceSpec) -> Option<Quantity> {
    let d = &spec.domain;
    d.memory
        .as_ref()
        .and_then(|m| m.guest.clone())
        .or_else(|| {
            d.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("memory").cloned())
        })
        .or_else(|| {
            d.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|r| r.get("memory").cloned())
        })
}

/// What upstream's VMI mutating webhook adds on creation: the finalizer that keeps a VMI
/// until no launcher pod of it is left.
pub fn add_vmi_finalizer(vmi: &mut VirtualMachineInstance) {
    let finalizers = vmi.metadata.finalizers.get_or_insert_with(Vec::new);
    if !finalizers
        .iter()
        .any(|f| f == crate::v1::well_known::VMI_FINALIZER)
    {
        finalizers.push(crate::v1::well_known::VMI_FINALIZER.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(yaml: &str) -> VirtualMachineInstance {
        serde_yaml::from_str(yaml).unwrap()
    }

    const MINIMAL: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: t}
spec:
  domain:
    devices: {}
    memory: {guest: 128Mi}
  volumes:
  - name: root
    containerDisk: {image: img}
"#;

    #[test]
    fn fills_in_like_virt_api() {
        let mut v = vmi(MINIMAL);
        set_vmi_defaults(&mut v);
        let s = &v.spec;
        assert_eq!(
            s.domain.machine.as_ref().unwrap().machine_type.as_deref(),
            Some("q35")
        );
        let disks = s.domain.devices.disks.as_ref().unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "root");
        assert_eq!(
            disks[0].disk.as_ref().unwrap().bus.as_deref(),
            Some("virtio")
        );
        let ifaces = s.domain.devices.interfaces.as_ref().unwrap();
        assert_eq!(ifaces[0].binding_method(), Some("masquerade"));
        assert!(s.networks.as_ref().unwrap()[0].pod.is_some());
        let req = s
            .domain
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert_eq!(req["memory"].to_bytes(), 128 << 20);
        assert_eq!(
            s.domain.firmware.as_ref().unwrap().uuid.as_deref(),
            Some(firmware_uuid_for("t").as_str())
        );
        assert_eq!(s.termination_grace_period_seconds, Some(30));
    }

    #[test]
    fn firmware_uuid_is_upstreams() {
        // uuid.NewSHA1(6a1a24a1-..., "testvm") as computed by upstream's CalculateLegacyUUID.
        let u = firmware_uuid_for("testvm");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "5", "version 5 (SHA-1) UUID");
        assert_eq!(u, firmware_uuid_for("testvm"));
        assert_ne!(u, firmware_uuid_for("other"));
    }

    #[test]
    fn idempotent() {
        let mut v = vmi(MINIMAL);
        set_vmi_defaults(&mut v);
        let once = v.clone();
        set_vmi_defaults(&mut v);
        assert_eq!(
            serde_json::to_value(&once).unwrap(),
            serde_json::to_value(&v).unwrap()
        );
    }

    #[test]
    fn memory_from_request() {
        let mut v = vmi(r#"
metadata: {name: t}
spec:
  domain:
    devices: {}
    resources: {requests: {memory: 64M}}
"#);
        set_vmi_defaults(&mut v);
        assert_eq!(
            v.spec.domain.memory.unwrap().guest.unwrap().to_bytes(),
            64_000_000
        );
    }

    #[test]
    fn autoattach_off_means_no_network() {
        let mut v = vmi(r#"
metadata: {name: t}
spec:
  domain:
    devices: {autoattachPodInterface: false}
    memory: {guest: 1Gi}
"#);
        set_vmi_defaults(&mut v);
        assert!(v.spec.domain.devices.interfaces.is_none());
        assert!(v.spec.networks.is_none());
    }
}
