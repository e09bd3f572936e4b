use super::*;
use kubevirt_hypervisor::AcceleratorKind;
use std::collections::BTreeMap;

fn env() -> LauncherEnv {
    let mut env = LauncherEnv::new(
        RunDir::new("/run/kv/ns_vm_uid"),
        Accelerator {
            kind: AcceleratorKind::Tcg,
            reason: "test".into(),
        },
        "/var/lib/kv/ns_vm".into(),
    );
    // These tests are about translation: any hostDisk path is allowed.
    env.host_disks.dirs = vec!["/".into()];
    env
}

#[test]
fn host_disks_only_where_the_operator_allows() {
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": [
            {"name": "a", "disk": {}},
            {"name": "b", "disk": {}}
        ]}},
        "volumes": [
            {"name": "a", "hostDisk": {"path": "/srv/vms/a.img", "type": "Disk"}},
            {"name": "b", "hostDisk": {"path": "/etc/shadow", "type": "Disk"}}
        ]
    }));
    let mut env = env();
    env.host_disks.dirs = vec![];
    let err = translate(&v, &env).unwrap_err();
    let issues: Vec<(String, String)> = err
        .issues()
        .iter()
        .map(|i| (i.field.clone(), i.reason.clone()))
        .collect();
    assert_eq!(
        issues[0],
        (
            "spec.volumes[0]".into(),
            "HostDisk feature gate is not enabled".into()
        )
    );
    env.host_disks.dirs = vec!["/srv/vms".into()];
    let err = translate(&v, &env).unwrap_err();
    let fields: Vec<&str> = err.issues().iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["spec.volumes[1].hostDisk.path"]);
    assert!(
        err.issues()[0].reason.contains("/etc/shadow"),
        "{:?}",
        err.issues()
    );
}

fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
    let mut v: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm", "namespace": "ns", "uid": "uid-1"},
        "spec": spec,
    }))
    .unwrap();
    kubevirt_api::defaults::set_vmi_defaults(&mut v);
    v
}

fn issues(v: &VirtualMachineInstance) -> Vec<String> {
    match translate(v, &env()) {
        Ok(_) => vec![],
        Err(e) => e.issues().iter().map(|i| i.field.clone()).collect(),
    }
}

#[test]
fn basic_vmi_with_disks_cdrom_and_boot_order() {
    let v = vmi(serde_json::json!({
        "domain": {
            "cpu": {"cores": 2},
            "memory": {"guest": "256Mi"},
            "devices": {
                "autoattachPodInterface": false,
                "rng": {},
                "disks": [
                    {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 2},
                    {"name": "iso", "cdrom": {"bus": "sata"}, "bootOrder": 1},
                    {"name": "data", "disk": {"bus": "scsi"}, "serial": "D123"},
                    {"name": "cloudinit", "disk": {}}
                ]
            }
        },
        "volumes": [
            {"name": "root", "hostDisk": {"path": "/img/root.qcow2", "type": "Disk"}},
            {"name": "iso", "hostDisk": {"path": "/img/boot.iso", "type": "Disk"}},
            {"name": "data", "emptyDisk": {"capacity": "1Gi"}},
            {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#!/bin/sh\necho hi\n"}}
        ]
    }));
    let t = translate(&v, &env()).unwrap();
    let d = &t.domain;
    assert_eq!(d.name, "ns_vm");
    assert_eq!(d.machine, "q35");
    assert_eq!(d.cpu.vcpus(), 2);
    assert_eq!(d.memory_mib, 256);
    assert!(d.rng);
    assert!(d.qga_socket.is_some());
    assert!(d.serial.is_some());
    assert!(d.vnc_socket.is_some());
    assert_eq!(d.disks.len(), 4);
    assert_eq!(d.disks[0].bus, DiskBus::Virtio);
    assert_eq!(d.disks[0].boot_order, Some(2));
    assert_eq!(d.disks[1].device, DiskDevice::Cdrom);
    assert_eq!(d.disks[1].bus, DiskBus::Sata);
    assert!(d.disks[1].readonly);
    assert_eq!(d.disks[2].bus, DiskBus::Scsi);
    assert_eq!(d.disks[2].serial.as_deref(), Some("D123"));
    assert_eq!(
        d.disks[2].path,
        Some(PathBuf::from("/run/kv/ns_vm_uid/empty-data.img"))
    );
    assert!(matches!(&t.volumes[2], VolumePrep::EmptyDisk { capacity, .. } if capacity == "1Gi"));
    match &t.volumes[3] {
        VolumePrep::CloudInit {
            config_drive,
            user_data,
            hostname,
            uid,
            ..
        } => {
            assert!(!config_drive);
            assert_eq!(user_data.as_deref(), Some("#!/bin/sh\necho hi\n"));
            assert_eq!(hostname, "vm");
            assert_eq!(uid.as_deref(), Some("uid-1"));
        }
        other => panic!("{other:?}"),
    }
    assert!(t.networks.is_empty());
    // The config is acceptable to the QEMU backend.
    kubevirt_hypervisor::qemu::argv::validate(d).unwrap();
}

#[test]
fn efi_secure_boot_persistent_tpm_and_pod_network() {
    let v = vmi(serde_json::json!({
        "domain": {
            "resources": {"requests": {"memory": "128Mi"}},
            "firmware": {"bootloader": {"efi": {"persistent": true}}},
            "devices": {"tpm": {"persistent": true}, "disks": [{"name": "cd", "disk": {}}],
                        "interfaces": [{"name": "default", "masquerade": {}, "ports": [{"port": 80}]}]}
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [{"name": "cd", "containerDisk": {"image": "registry:5000/kubevirt/cirros-container-disk-demo:devel"}}]
    }));
    let t = translate(&v, &env()).unwrap();
    match &t.domain.firmware {
        Firmware::Uefi {
            secure_boot,
            vars_path,
            code,
            ..
        } => {
            assert!(secure_boot);
            assert_eq!(vars_path, &PathBuf::from("/var/lib/kv/ns_vm/efi-vars.fd"));
            assert!(code.to_string_lossy().contains("secboot"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.domain.tpm.as_ref().unwrap().state_dir,
        PathBuf::from("/var/lib/kv/ns_vm/tpm")
    );
    assert_eq!(
        t.networks,
        vec![NetPrep::Masquerade {
            nic: "default".into(),
            mac: None,
            ports: vec![80]
        }]
    );
    assert_eq!(t.domain.nics.len(), 1);
    assert!(
        matches!(&t.volumes[0], VolumePrep::ContainerDisk { image, .. } if image.contains("cirros"))
    );
}

#[test]
fn cpu_from_resources_and_host_model() {
    let v = vmi(serde_json::json!({
        "domain": {"resources": {"requests": {"memory": "64M", "cpu": "1500m"}},
                   "devices": {"autoattachPodInterface": false}}
    }));
    let t = translate(&v, &env()).unwrap();
    // 64M = 64_000_000 bytes -> rounded up to whole MiB
    assert_eq!(t.domain.memory_mib, 62);
    assert_eq!(t.domain.cpu.model, CpuModel::HostModel);
}

#[test]
fn unsupported_fields_are_reported_with_paths() {
    let v = vmi(serde_json::json!({
        "domain": {
            "memory": {"guest": "128Mi", "hugepages": {"pageSize": "2Mi"}},
            "cpu": {"dedicatedCpuPlacement": true},
            "features": {"hyperv": {"relaxed": {}}},
            "devices": {
                "gpus": [{"name": "g", "deviceName": "nvidia"}],
                "disks": [{"name": "a", "lun": {}}, {"name": "b", "cdrom": {"bus": "virtio"}},
                          {"name": "c", "disk": {"bus": "usb"}}, {"name": "missing"}],
                "interfaces": [{"name": "default", "bridge": {}}]
            }
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [
            {"name": "a", "hostDisk": {"path": "/x", "type": "Disk"}},
            {"name": "b", "hostDisk": {"path": "/y", "type": "Disk"}},
            {"name": "c", "configMap": {"name": "cm"}},
            {"name": "orphan", "persistentVolumeClaim": {"claimName": "nope"}}
        ]
    }));
    let got = issues(&v);
    for want in [
        "spec.domain.memory.hugepages",
        "spec.domain.cpu.dedicatedCpuPlacement",
        "spec.domain.features.hyperv",
        "spec.domain.devices.gpus",
        "spec.domain.devices.disks[0].lun",
        "spec.domain.devices.disks[1].cdrom.bus",
        "spec.domain.devices.disks[2].disk.bus",
        "spec.volumes[2].configMap",
        "spec.domain.devices.interfaces[0].bridge",
    ] {
        assert!(got.iter().any(|g| g == want), "missing {want} in {got:?}");
    }
    let msg = translate(&v, &env()).unwrap_err().to_string();
    assert!(msg.contains("not supported by kubevirt-rs"), "{msg}");
}

#[test]
fn claims_and_secrets_must_be_resolved() {
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "128Mi"}, "devices": {"autoattachPodInterface": false,
            "disks": [{"name": "pvc", "disk": {}}, {"name": "eph", "disk": {}}, {"name": "ci", "disk": {}}]}},
        "volumes": [
            {"name": "pvc", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "eph", "ephemeral": {"persistentVolumeClaim": {"claimName": "base"}}},
            {"name": "ci", "cloudInitConfigDrive": {"secretRef": {"name": "ud"}}}
        ]
    }));
    let got = issues(&v);
    assert!(
        got.contains(&"spec.volumes[0].persistentVolumeClaim.claimName".to_string()),
        "{got:?}"
    );
    assert!(got.contains(&"spec.volumes[1].ephemeral.persistentVolumeClaim.claimName".to_string()));
    assert!(got.contains(&"spec.volumes[2].cloudInitConfigDrive.secretRef".to_string()));

    let mut e = env();
    e.claims.insert("data".into(), "/disks/data.img".into());
    e.claims.insert("base".into(), "/disks/base.qcow2".into());
    e.secrets.insert(
        "ud".into(),
        [("userdata".to_string(), b"#!/bin/sh\necho s\n".to_vec())].into(),
    );
    let t = translate(&v, &e).unwrap();
    assert!(
        matches!(&t.volumes[1], VolumePrep::Ephemeral { base, .. } if base == Path::new("/disks/base.qcow2"))
    );
    match &t.volumes[2] {
        VolumePrep::CloudInit {
            config_drive,
            user_data_secret,
            ..
        } => {
            assert!(config_drive);
            assert_eq!(
                user_data_secret.as_deref(),
                Some(&b"#!/bin/sh\necho s\n"[..])
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn support_issues_come_first_with_the_uniform_prefix() {
    let v = vmi(serde_json::json!({
        "architecture": "arm64",
        "domain": {
            "memory": {"guest": "128Mi"},
            "machine": {"type": "virt"},
            "clock": {"timezone": "Europe/Berlin"},
            "devices": {"autoattachPodInterface": false, "watchdog": {"name": "w", "i6300esb": {}},
                        "disks": [{"name": "pvc", "disk": {}, "cache": "none"}]}
        },
        "volumes": [{"name": "pvc", "persistentVolumeClaim": {"claimName": "data"}}]
    }));
    let err = translate(&v, &env()).unwrap_err();
    let got: Vec<String> = err.issues().iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        vec![
            r#"spec.architecture: Unsupported value: "arm64": supported values: "amd64""#,
            "spec.domain.clock.timezone: not supported by kubevirt-rs: the guest clock runs in UTC",
            r#"spec.domain.machine.type: Unsupported value: "virt": supported values: "q35", "pc-q35-*", "pc", "pc-i440fx-*""#,
            "spec.domain.devices.watchdog: not supported by kubevirt-rs: watchdog devices",
            "spec.domain.devices.disks[0].cache: not supported by kubevirt-rs: cache mode selection",
            // Host-dependent: reported by translate itself, after what support decided.
            r#"spec.volumes[0].persistentVolumeClaim.claimName: Not found: "data": no local disk image for this claim on the node"#,
        ]
    );
    // Exactly what support reports, in the same words.
    let support: Vec<String> = kubevirt_api::support::unsupported_vmi_features(&v)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(support, got[..support.len()]);
}

#[test]
fn machine_types_support_accepts_are_translated() {
    for (asked, runs) in [
        ("q35", "q35"),
        ("pc-q35-rhel9.4.0", "q35"),
        ("pc-q35-8.2", "pc-q35-8.2"),
        ("pc", "pc"),
        ("pc-i440fx-8.2", "pc-i440fx-8.2"),
    ] {
        let v = vmi(serde_json::json!({
            "domain": {"memory": {"guest": "128Mi"}, "machine": {"type": asked},
                       "devices": {"autoattachPodInterface": false}}
        }));
        assert_eq!(
            translate(&v, &env()).unwrap().domain.machine,
            runs,
            "{asked}"
        );
    }
}

/// `support` decides which buses and NIC models run; each of those must translate to its own
/// device, never to a fallback.
#[test]
fn every_supported_bus_and_nic_model_translates() {
    for b in kubevirt_api::support::SUPPORTED_DISK_BUSES {
        assert_eq!(
            bus(Some(b), DiskBus::Virtio),
            bus(Some(b), DiskBus::Sata),
            "{b}"
        );
    }
    for m in kubevirt_api::support::SUPPORTED_NIC_MODELS {
        assert!(nic_model(Some(m)).is_some(), "{m}");
    }
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "128Mi"},
                   "devices": {"interfaces": [{"name": "default", "masquerade": {}, "model": "igb"}]}},
        "networks": [{"name": "default", "pod": {}}]
    }));
    assert_eq!(
        translate(&v, &env()).unwrap_err().to_string(),
        r#"cannot run this VirtualMachineInstance: spec.domain.devices.interfaces[0].model: Unsupported value: "igb": supported values: "virtio", "e1000", "e1000e", "rtl8139""#
    );
}

/// Every upstream example either translates or names exactly the fields it cannot honour.
#[test]
fn upstream_examples_translate_or_explain() {
    let claim = "spec.volumes[0].persistentVolumeClaim.claimName";
    let hooks = "metadata.annotations[hooks.kubevirt.io/hookSidecars]";
    let expected: BTreeMap<&str, Vec<&str>> = [
        (
            "vmi-dra-pgpu.yaml",
            vec!["spec.resourceClaims", "spec.domain.devices.gpus"],
        ),
        (
            "vmi-fedora-isolated.yaml",
            vec![
                "spec.domain.cpu.dedicatedCpuPlacement",
                "spec.domain.cpu.isolateEmulatorThread",
            ],
        ),
        ("vmi-gpu.yaml", vec!["spec.domain.devices.gpus"]),
        (
            "vmi-multus-multiple-net.yaml",
            vec!["spec.domain.devices.interfaces[1].name"],
        ),
        (
            "vmi-multus-ptp.yaml",
            vec!["spec.domain.devices.interfaces[0].name"],
        ),
        // Host-dependent: no image for the claim in the test environment.
        ("vmi-pvc.yaml", vec![claim]),
        (
            "vmi-sriov.yaml",
            vec![
                "spec.domain.devices.interfaces[1].name",
                "spec.domain.devices.interfaces[1].sriov",
            ],
        ),
        ("vmi-usb.yaml", vec!["spec.domain.devices.hostDevices"]),
        (
            "vmi-windows.yaml",
            vec![
                "spec.domain.clock.timer",
                "spec.domain.features.hyperv",
                claim,
            ],
        ),
        ("vmi-with-sidecar-hook.yaml", vec![hooks]),
        ("vmi-with-sidecar-hook-configmap.yaml", vec![hooks]),
    ]
    .into_iter()
    .collect();
    // The upstream examples, as copied into the API crate's test fixtures.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/tests/fixtures/kubevirt-examples");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut seen = Vec::new();
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        if !text.contains("kind: VirtualMachineInstance\n") {
            continue;
        }
        let Ok(mut v) = serde_yaml_like(&text) else {
            continue;
        };
        kubevirt_api::defaults::set_vmi_defaults(&mut v);
        let file = e.file_name().to_string_lossy().into_owned();
        let got = match translate(&v, &env()) {
            Ok(_) => vec![],
            Err(err) => {
                assert!(err.issues().iter().all(|i| !i.reason.is_empty()), "{file}");
                err.issues().iter().map(|i| i.field.clone()).collect()
            }
        };
        let want = expected.get(file.as_str()).cloned().unwrap_or_default();
        assert_eq!(got, want, "{file}");
        seen.push(file);
    }
    for file in expected.keys() {
        assert!(seen.iter().any(|s| s == file), "{file} was not translated");
    }
}

fn serde_yaml_like(text: &str) -> Result<VirtualMachineInstance, ()> {
    // Examples are YAML; the launcher only needs JSON, so tests convert through serde_yaml
    // when the api crate's dev tooling is not available.
    let v: serde_json::Value = serde_yaml::from_str(text).map_err(|_| ())?;
    serde_json::from_value(v).map_err(|_| ())
}

#[test]
fn cdroms_without_a_boot_medium_start_with_an_empty_tray() {
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": [
            {"name": "root", "disk": {}},
            {"name": "tray", "cdrom": {"bus": "sata"}},
            {"name": "iso", "cdrom": {"bus": "scsi"}},
            {"name": "hp", "disk": {"bus": "scsi"}}
        ]}},
        "volumes": [
            {"name": "root", "hostDisk": {"path": "/img/root.img", "type": "Disk"}},
            {"name": "iso", "persistentVolumeClaim": {"claimName": "iso", "hotpluggable": true}},
            {"name": "hp", "persistentVolumeClaim": {"claimName": "hp", "hotpluggable": true}}
        ]
    }));
    let t = translate(&v, &env()).unwrap();
    let disks: Vec<(&str, bool, DiskBus)> = t
        .domain
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.path.is_some(), d.bus))
        .collect();
    // The inserted medium and the hot-plugged disk come from the node agent, once it runs.
    assert_eq!(
        disks,
        [
            ("root", true, DiskBus::Virtio),
            ("tray", false, DiskBus::Sata),
            ("iso", false, DiskBus::Scsi)
        ]
    );
    assert!(t.domain.disks[1..]
        .iter()
        .all(|d| d.device == DiskDevice::Cdrom && d.readonly));
    assert_eq!(t.volumes.len(), 1);
    // A disk is no tray.
    let mut v = v;
    v.spec.volumes.as_mut().unwrap().remove(0);
    let err = translate(&v, &env()).unwrap_err();
    let got: Vec<String> = err.issues().iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [r#"spec.domain.devices.disks[0].name: Not found: "root": no volume of that name"#]
    );
}
