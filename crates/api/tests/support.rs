//! What kubevirt-rs cannot run is reported with its fields: the upstream examples, and one
//! case per area of `support` (top level, clock, machine, CPU, memory, features, firmware,
//! devices, disks, interfaces, volumes).

use kubevirt_api::admission::{admit, Operation};
use kubevirt_api::support::{unsupported_features, unsupported_vmi_features, UnsupportedKind};
use kubevirt_api::v1::VirtualMachineInstance;
use serde_json::{json, Value};

fn example_vmi(file: &str) -> VirtualMachineInstance {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kubevirt-examples")
        .join(file);
    let v: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    admitted(v)
}

/// Reported after admission, as the node agent and the launcher see the VMI.
fn admitted(mut v: Value) -> VirtualMachineInstance {
    admit("VirtualMachineInstance", Operation::Create, &mut v, None).unwrap();
    serde_json::from_value(v).unwrap()
}

/// A VMI with `spec` (plus guest memory, and no pod network unless networks are given).
fn vmi(mut spec: Value) -> VirtualMachineInstance {
    if spec["domain"]["memory"]["guest"].is_null() {
        spec["domain"]["memory"]["guest"] = json!("128Mi");
    }
    if spec["networks"].is_null() {
        spec["domain"]["devices"]["autoattachPodInterface"] = json!(false);
    }
    admitted(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm", "namespace": "ns"},
        "spec": spec,
    }))
}

fn fields(file: &str) -> Vec<String> {
    field_list(&example_vmi(file))
}

fn field_list(vmi: &VirtualMachineInstance) -> Vec<String> {
    unsupported_vmi_features(vmi)
        .into_iter()
        .map(|f| f.field)
        .collect()
}

#[test]
fn sriov_example_reports_its_fields() {
    assert_eq!(
        fields("vmi-sriov.yaml"),
        vec![
            "spec.domain.devices.interfaces[1].name",
            "spec.domain.devices.interfaces[1].sriov",
        ]
    );
}

#[test]
fn gpu_examples_report_their_fields() {
    assert_eq!(fields("vmi-gpu.yaml"), vec!["spec.domain.devices.gpus"]);
    assert_eq!(
        fields("vmi-dra-pgpu.yaml"),
        vec!["spec.resourceClaims", "spec.domain.devices.gpus"]
    );
}

#[test]
fn other_examples() {
    assert_eq!(
        fields("vmi-usb.yaml"),
        vec!["spec.domain.devices.hostDevices"]
    );
    assert_eq!(
        fields("vmi-fedora-isolated.yaml"),
        vec![
            "spec.domain.cpu.dedicatedCpuPlacement",
            "spec.domain.cpu.isolateEmulatorThread"
        ]
    );
    assert_eq!(
        fields("vmi-multus-ptp.yaml"),
        vec!["spec.domain.devices.interfaces[0].name"]
    );
    assert_eq!(
        fields("vmi-with-sidecar-hook.yaml"),
        vec!["metadata.annotations[hooks.kubevirt.io/hookSidecars]"]
    );
    // Hyper-V enlightenments and timer tuning are not applied.
    assert_eq!(
        fields("vmi-windows.yaml"),
        vec!["spec.domain.clock.timer", "spec.domain.features.hyperv"]
    );
    // Plain guests run as they are.
    for ok in [
        "vmi-fedora.yaml",
        "vmi-masquerade.yaml",
        "vmi-nocloud.yaml",
        "vmi-ephemeral.yaml",
        "vmi-alpine-efi.yaml",
        "vmi-secureboot.yaml",
        "vmi-kernel-boot.yaml",
        "vmi-host-disk.yaml",
        "vmi-pvc.yaml",
        "vmi-migratable.yaml",
        "vmi-sata.yaml",
        "vmi-arm.yaml",
    ] {
        assert_eq!(fields(ok), Vec::<String>::new(), "{ok}");
    }
}

#[test]
fn messages_carry_a_uniform_prefix_and_values_keep_their_wording() {
    let f = unsupported_features(&example_vmi("vmi-sriov.yaml").spec);
    assert!(f.iter().all(|f| !f.reason.is_empty()));
    let sriov = f.iter().find(|f| f.field.ends_with(".sriov")).unwrap();
    assert_eq!(sriov.kind, UnsupportedKind::Feature);
    assert!(
        !sriov.reason.starts_with("not supported"),
        "{}",
        sriov.reason
    );
    assert!(
        sriov.to_string().starts_with(
            "spec.domain.devices.interfaces[1].sriov: not supported by kubevirt-rs: SR-IOV"
        ),
        "{sriov}"
    );

    // Not through admission: upstream knows no start strategy but `Paused` either.
    let spec = serde_json::from_value(json!({
        "architecture": "arm64", "startStrategy": "Later", "domain": {"devices": {}}
    }))
    .unwrap();
    let got: Vec<String> = unsupported_features(&spec)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        vec![
            r#"spec.architecture: Unsupported value: "arm64": supported values: "amd64""#,
            r#"spec.startStrategy: Unsupported value: "Later": supported values: "Paused""#,
        ]
    );
}

#[test]
fn bridge_on_pod_network_is_reported_but_not_on_multus() {
    let mut vmi = example_vmi("vmi-fedora.yaml");
    let iface = &mut vmi.spec.domain.devices.interfaces.as_mut().unwrap()[0];
    iface.masquerade = None;
    iface.bridge = Some(Default::default());
    assert_eq!(
        field_list(&vmi),
        vec!["spec.domain.devices.interfaces[0].bridge"]
    );
    // The Multus interface (bridge, the default there) is reported once, for its network.
    assert_eq!(
        fields("vmi-multus-multiple-net.yaml"),
        vec!["spec.domain.devices.interfaces[1].name"]
    );
}

#[test]
fn top_level_clock_machine_cpu_memory() {
    let v = vmi(json!({
        "accessCredentials": [{"sshPublicKey": {"source": {"secret": {"secretName": "k"}},
            "propagationMethod": {"qemuGuestAgent": {"users": ["u"]}}}}],
        "domain": {
            "ioThreadsPolicy": "auto",
            "chassis": {"asset": "a"},
            "clock": {"timezone": "Europe/Berlin", "utc": {"offsetSeconds": 60}},
            "machine": {"type": "virt"},
            "cpu": {"sockets": 1, "maxSockets": 4, "features": [{"name": "pcid"}],
                    "dedicatedCpuPlacement": true, "numa": {"guestMappingPassthrough": {}}},
            "memory": {"guest": "128Mi", "maxGuest": "1Gi", "hugepages": {"pageSize": "2Mi"}}
        }
    }));
    assert_eq!(
        field_list(&v),
        vec![
            "spec.domain.ioThreadsPolicy",
            "spec.domain.chassis",
            "spec.domain.clock.timezone",
            "spec.domain.clock.utc.offsetSeconds",
            "spec.domain.machine.type",
            "spec.domain.cpu.features",
            "spec.domain.cpu.dedicatedCpuPlacement",
            "spec.domain.cpu.numa",
            "spec.domain.cpu.maxSockets",
            "spec.domain.memory.hugepages",
            "spec.domain.memory.maxGuest",
        ]
    );
    // maxSockets equal to the sockets asks for no hotplug; supported machine types run.
    for machine in ["q35", "pc-q35-rhel9.4.0", "pc", "pc-i440fx-8.2"] {
        let v = vmi(json!({"domain": {"machine": {"type": machine},
                                       "cpu": {"sockets": 2, "maxSockets": 2}}}));
        assert_eq!(field_list(&v), Vec::<String>::new(), "{machine}");
    }
}

#[test]
fn features_and_firmware() {
    let v = vmi(json!({
        "domain": {
            "features": {"acpi": {"enabled": false}, "hyperv": {"relaxed": {}},
                         "kvm": {"hidden": true}, "pvspinlock": {}},
            "firmware": {"serial": "s1", "bootloader": {"bios": {"useSerial": true}},
                         "kernelBoot": {"container": {"image": "k", "kernelPath": "/vmlinuz",
                                                      "imagePullSecret": "pull"}}}
        }
    }));
    assert_eq!(
        field_list(&v),
        vec![
            "spec.domain.features.acpi.enabled",
            "spec.domain.features.hyperv",
            "spec.domain.features.kvm",
            "spec.domain.features.pvspinlock",
            "spec.domain.firmware.serial",
            "spec.domain.firmware.bootloader.bios.useSerial",
            "spec.domain.firmware.kernelBoot.container.imagePullSecret",
        ]
    );
}

#[test]
fn devices() {
    let v = vmi(json!({
        "domain": {"devices": {
            "video": {"type": "virtio"},
            "autoattachInputDevice": true,
            "inputs": [{"name": "t", "type": "tablet", "bus": "usb"}],
            "watchdog": {"name": "w", "i6300esb": {"action": "poweroff"}},
            "sound": {"name": "s"},
            "panicDevices": [{"model": "isa"}]
        }}
    }));
    let f = unsupported_features(&v.spec);
    let got: Vec<&str> = f.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "spec.domain.devices.video.type",
            "spec.domain.devices.autoattachInputDevice",
            "spec.domain.devices.inputs",
            "spec.domain.devices.watchdog",
            "spec.domain.devices.panicDevices",
            "spec.domain.devices.sound",
        ]
    );
    assert_eq!(
        f[0].to_string(),
        r#"spec.domain.devices.video.type: Unsupported value: "virtio": supported values: "vga""#
    );
}

#[test]
fn disks_and_volumes() {
    let v = vmi(json!({
        "domain": {"devices": {"disks": [
            {"name": "a", "disk": {"bus": "usb"}, "cache": "writeback"},
            {"name": "b", "cdrom": {"bus": "sata", "tray": "open"}},
            {"name": "c", "disk": {}, "io": "native", "errorPolicy": "stop"},
            {"name": "d", "lun": {}},
            {"name": "e", "disk": {}}
        ]}},
        "volumes": [
            {"name": "a", "containerDisk": {"image": "i", "imagePullSecret": "s"}},
            {"name": "b", "hostDisk": {"path": "/b.iso", "type": "Disk", "shared": true}},
            {"name": "c", "emptyDisk": {"capacity": "1Gi"}},
            {"name": "d", "persistentVolumeClaim": {"claimName": "d", "hotpluggable": true}},
            {"name": "e", "configMap": {"name": "cm"}}
        ]
    }));
    let f = unsupported_features(&v.spec);
    let got: Vec<&str> = f.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "spec.domain.devices.disks[0].disk.bus",
            "spec.domain.devices.disks[0].cache",
            "spec.domain.devices.disks[1].cdrom.tray",
            "spec.domain.devices.disks[2].io",
            "spec.domain.devices.disks[2].errorPolicy",
            "spec.domain.devices.disks[3].lun",
            "spec.volumes[0].containerDisk.imagePullSecret",
            "spec.volumes[1].hostDisk.shared",
            "spec.volumes[4].configMap",
        ]
    );
    assert_eq!(
        f[0].to_string(),
        r#"spec.domain.devices.disks[0].disk.bus: Unsupported value: "usb": supported values: "virtio", "sata", "scsi""#
    );
    assert_eq!(
        f[1].to_string(),
        "spec.domain.devices.disks[0].cache: not supported by kubevirt-rs: cache mode selection"
    );
}

#[test]
fn interfaces() {
    let v = vmi(json!({
        "domain": {"devices": {"interfaces": [{
            "name": "default", "masquerade": {}, "model": "igb", "state": "down",
            "dhcpOptions": {"bootFileName": "pxe"}, "acpiIndex": 3,
            "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]
        }]}},
        "networks": [{"name": "default", "pod": {}}]
    }));
    assert_eq!(
        field_list(&v),
        vec![
            "spec.domain.devices.interfaces[0].model",
            "spec.domain.devices.interfaces[0].dhcpOptions",
            "spec.domain.devices.interfaces[0].acpiIndex",
            "spec.domain.devices.interfaces[0].state",
            "spec.domain.devices.interfaces[0].ports[1].protocol",
        ]
    );
    // The passt binding runs.
    let v = vmi(json!({
        "domain": {"devices": {"interfaces": [{"name": "default", "passt": {}}]}},
        "networks": [{"name": "default", "pod": {}}]
    }));
    assert_eq!(field_list(&v), Vec::<String>::new());
}
