//! A table of invalid manifests and the exact field errors admission returns for them.

use kubevirt_api::admission::{admit, Operation};
use serde_json::{json, Value};

const VMI: &str = r##"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: testvmi
spec:
  domain:
    devices:
      disks:
      - name: containerdisk
        disk: {bus: virtio}
      - name: cloudinitdisk
        disk: {bus: virtio}
      interfaces:
      - name: default
        masquerade: {}
    memory:
      guest: 128Mi
    resources: {}
  networks:
  - name: default
    pod: {}
  volumes:
  - name: containerdisk
    containerDisk: {image: "registry:5000/cirros:devel"}
  - name: cloudinitdisk
    cloudInitNoCloud: {userData: "#!/bin/sh\necho hi\n"}
"##;

fn vmi() -> Value {
    serde_yaml::from_str(VMI).unwrap()
}

/// The VMI wrapped as a VM template.
fn vm() -> Value {
    let v = vmi();
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "testvm"},
        "spec": {"runStrategy": "Always", "template": {"metadata": {}, "spec": v["spec"].clone()}}
    })
}

fn errors(kind: &str, mut obj: Value) -> Vec<String> {
    match admit(kind, Operation::Create, &mut obj, None) {
        Ok(()) => vec![],
        Err(errs) => errs.iter().map(|e| e.to_string()).collect(),
    }
}

fn reasons(kind: &str, mut obj: Value) -> Vec<&'static str> {
    match admit(kind, Operation::Create, &mut obj, None) {
        Ok(()) => vec![],
        Err(errs) => errs.iter().map(|e| e.reason()).collect(),
    }
}

type Case = (
    &'static str,
    &'static str,
    fn() -> Value,
    &'static [&'static str],
);

const QUANTITY_ERR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

fn cases() -> Vec<Case> {
    vec![
        ("base VMI is valid", "VirtualMachineInstance", vmi, &[]),
        ("base VM is valid", "VirtualMachine", vm, &[]),
        (
            "disk without volume",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["disks"][1]["name"] = "rootdisk".into();
                v
            },
            &[r#"spec.domain.devices.disks[1].name: Not found: "rootdisk""#],
        ),
        (
            "disk without volume in a VM template",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["template"]["spec"]["domain"]["devices"]["disks"][1]["name"] =
                    "rootdisk".into();
                v
            },
            &[r#"spec.template.spec.domain.devices.disks[1].name: Not found: "rootdisk""#],
        ),
        (
            "junk quantity",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["resources"] = json!({"requests": {"memory": "abc"}});
                v
            },
            &["spec.domain.resources.requests.memory: Invalid value: \"abc\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"],
        ),
        (
            "junk guest memory",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "12Qi".into();
                v
            },
            &["spec.template.spec.domain.memory.guest: Invalid value: \"12Qi\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"],
        ),
        (
            "zero memory",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["memory"]["guest"] = "0".into();
                v
            },
            &[r#"spec.domain.memory.guest: Invalid value: "0": must be greater than 0"#],
        ),
        (
            "no memory at all",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"].as_object_mut().unwrap().remove("memory");
                v
            },
            &["spec.domain.memory.guest: Required value: at least one of 'guest', 'requests.memory' or 'limits.memory' must be set"],
        ),
        (
            "guest above limit",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["resources"] = json!({"limits": {"memory": "64Mi"}});
                v
            },
            &[
                r#"spec.domain.memory.guest: Invalid value: "128Mi": must be less than or equal to memory limit 64Mi"#,
                r#"spec.domain.resources.requests.memory: Invalid value: "128Mi": must be less than or equal to memory limit of 64Mi"#,
            ],
        ),
        (
            "duplicate disk names",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["disks"][1]["name"] = "containerdisk".into();
                v
            },
            &[r#"spec.domain.devices.disks[1].name: Duplicate value: "containerdisk""#],
        ),
        (
            "unsupported bus",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "ide".into();
                v
            },
            &[r#"spec.domain.devices.disks[0].disk.bus: Unsupported value: "ide": supported values: "virtio", "sata", "scsi", "usb""#],
        ),
        (
            "cdrom on virtio",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["disks"][1] =
                    json!({"name": "cloudinitdisk", "cdrom": {"bus": "virtio"}});
                v
            },
            &[r#"spec.domain.devices.disks[1].cdrom.bus: Unsupported value: "virtio": supported values: "sata", "scsi""#],
        ),
        (
            "two disk targets",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["disks"][0]["cdrom"] = json!({});
                v
            },
            &["spec.domain.devices.disks[0].cdrom: Forbidden: only one of disk, lun or cdrom may be set"],
        ),
        (
            "missing disk name",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["disks"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("name");
                v
            },
            &["spec.domain.devices.disks[0].name: Required value"],
        ),
        (
            "missing devices",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"].as_object_mut().unwrap().remove("devices");
                v
            },
            &["spec.domain.devices: Required value"],
        ),
        (
            "missing template",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"].as_object_mut().unwrap().remove("template");
                v
            },
            &["spec.template: Required value"],
        ),
        (
            "volume with two sources",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["volumes"][0]["persistentVolumeClaim"] = json!({"claimName": "pvc"});
                v
            },
            &["spec.volumes[0].persistentVolumeClaim: Forbidden: may not specify more than 1 volume source (found containerDisk, persistentVolumeClaim)"],
        ),
        (
            "volume without source",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["volumes"][1] = json!({"name": "cloudinitdisk"});
                v
            },
            &["spec.volumes[1]: Required value: must specify exactly one volume source (containerDisk, persistentVolumeClaim, dataVolume, cloudInitNoCloud, cloudInitConfigDrive, emptyDisk, ephemeral, hostDisk, configMap, secret, serviceAccount, sysprep, downwardAPI, downwardMetrics, memoryDump)"],
        ),
        (
            "duplicate volumes",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["volumes"][1]["name"] = "containerdisk".into();
                v
            },
            &[
                r#"spec.volumes[1].name: Duplicate value: "containerdisk""#,
                r#"spec.domain.devices.disks[1].name: Not found: "cloudinitdisk""#,
            ],
        ),
        (
            "empty container disk image",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["volumes"][0]["containerDisk"]["image"] = "".into();
                v
            },
            &["spec.volumes[0].containerDisk.image: Required value"],
        ),
        (
            "bad host disk type",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["volumes"][0] =
                    json!({"name": "containerdisk", "hostDisk": {"path": "/d.img", "type": "File"}});
                v
            },
            &[r#"spec.volumes[0].hostDisk.type: Unsupported value: "File": supported values: "Disk", "DiskOrCreate""#],
        ),
        (
            "empty disk without capacity",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["volumes"][0] = json!({"name": "containerdisk", "emptyDisk": {}});
                v
            },
            &["spec.volumes[0].emptyDisk.capacity: Required value"],
        ),
        (
            "interface without network",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["interfaces"][0]["name"] = "other".into();
                v
            },
            &[
                r#"spec.networks[0].name: Required value: network "default" must be used by an interface in spec.domain.devices.interfaces"#,
                r#"spec.domain.devices.interfaces[0].name: Not found: "other""#,
            ],
        ),
        (
            "two binding methods",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["interfaces"][0]["bridge"] = json!({});
                v
            },
            &["spec.domain.devices.interfaces[0].masquerade: Forbidden: may not specify more than 1 binding method"],
        ),
        (
            "unsupported NIC model",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["interfaces"][0]["model"] = "vmxnet3".into();
                v
            },
            &[r#"spec.domain.devices.interfaces[0].model: Unsupported value: "vmxnet3": supported values: "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio""#],
        ),
        (
            "bad MAC",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"] = "02:00".into();
                v
            },
            &[r#"spec.domain.devices.interfaces[0].macAddress: Invalid value: "02:00": must be a valid unicast MAC address (e.g. 02:00:00:00:00:01)"#],
        ),
        (
            "running and runStrategy",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["running"] = true.into();
                v
            },
            &["spec.running: Forbidden: running and runStrategy are mutually exclusive"],
        ),
        (
            "unknown runStrategy",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["runStrategy"] = "Sometimes".into();
                v
            },
            &[r#"spec.runStrategy: Unsupported value: "Sometimes": supported values: "Always", "Halted", "Manual", "RerunOnFailure", "Once", "WaitAsReceiver""#],
        ),
        (
            "WaitAsReceiver without the DecentralizedLiveMigration gate",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["runStrategy"] = "WaitAsReceiver".into();
                v
            },
            &[r#"spec.runStrategy: Invalid value: "WaitAsReceiver": Invalid RunStrategy (WaitAsReceiver), DecentralizedLiveMigration feature gate is not enabled in kubevirt resource"#],
        ),
        (
            "wrong type",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["cpu"] = json!({"cores": "two"});
                v
            },
            &[r#"spec.domain.cpu.cores: Invalid value: "two": spec.domain.cpu.cores in body must be of type integer: "string""#],
        ),
        (
            "negative unsigned number",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["cpu"] = json!({"sockets": -2});
                v
            },
            &["spec.domain.cpu.sockets: Invalid value: -2: must be greater than or equal to 0"],
        ),
        (
            "enum given a number",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["runStrategy"] = 3.into();
                v
            },
            &["spec.runStrategy: Invalid value: 3: spec.runStrategy in body must be of type string: \"number\""],
        ),
        (
            "labels given a list",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["metadata"]["labels"] = json!(["a"]);
                v
            },
            &["metadata.labels: Invalid value: [\"a\"]: metadata.labels in body must be of type object: \"array\""],
        ),
        (
            "LUN on a container disk",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["disks"][0] =
                    json!({"name": "containerdisk", "lun": {}});
                v
            },
            &[r#"spec.domain.devices.disks[0].lun: Invalid value: "containerdisk": can only be mapped to a DataVolume or PersistentVolumeClaim volume"#],
        ),
        (
            "two interfaces on the pod network",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["networks"] = json!([{"name": "default", "pod": {}}, {"name": "second", "pod": {}}]);
                v["spec"]["domain"]["devices"]["interfaces"] =
                    json!([{"name": "default", "masquerade": {}}, {"name": "second", "masquerade": {}}]);
                v
            },
            &[
                "spec.networks[1].pod: Forbidden: more than one pod network is not allowed",
                r#"spec.domain.devices.interfaces[1].name: Duplicate value: "second": more than one interface is connected to a pod network in spec.domain.devices.interfaces"#,
            ],
        ),
        (
            "paused start with a liveness probe",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["startStrategy"] = "Paused".into();
                v["spec"]["livenessProbe"] = json!({"guestAgentPing": {}});
                v
            },
            &["spec.startStrategy: Forbidden: pausing a VMI with a livenessProbe is not supported"],
        ),
        (
            "dedicated CPUs with a fractional CPU request",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["cpu"] = json!({"dedicatedCpuPlacement": true, "threads": 4});
                v["spec"]["domain"]["resources"] = json!({"requests": {"cpu": "1500m"}});
                v
            },
            &[
                r#"spec.domain.resources.requests.cpu: Invalid value: "1500m": must be an integer when dedicatedCpuPlacement is true"#,
                "spec.domain.cpu.threads: Invalid value: 4: must not be greater than 2 when dedicatedCpuPlacement is true",
            ],
        ),
        (
            "NUMA passthrough without dedicated CPUs or hugepages",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["cpu"] = json!({"numa": {"guestMappingPassthrough": {}}});
                v
            },
            &[
                "spec.domain.cpu.numa.guestMappingPassthrough: Forbidden: requires dedicatedCpuPlacement: true",
                "spec.domain.memory.hugepages: Required value: hugepages must be requested when a NUMA topology strategy is set",
            ],
        ),
        (
            "duplicate boot order",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["domain"]["devices"]["disks"][0]["bootOrder"] = 1.into();
                v["spec"]["domain"]["devices"]["disks"][1]["bootOrder"] = 1.into();
                v
            },
            &["spec.domain.devices.disks[1].bootOrder: Duplicate value: 1: also used by spec.domain.devices.disks[0].bootOrder"],
        ),
        (
            "data volume template not referenced",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["dataVolumeTemplates"] = json!([{
                    "metadata": {"name": "dv1"},
                    "spec": {"pvc": {}, "source": {"blank": {}}}
                }]);
                v
            },
            &[r#"spec.dataVolumeTemplates[0].metadata.name: Invalid value: "dv1": must be referenced by a dataVolume or persistentVolumeClaim volume in spec.template.spec.volumes"#],
        ),
        (
            "data volume template without a source",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["dataVolumeTemplates"] = json!([{
                    "metadata": {"name": "containerdisk"},
                    "spec": {"storage": {"resources": {"requests": {"storage": "1Gi"}}}}
                }]);
                v["spec"]["template"]["spec"]["volumes"][0] =
                    json!({"name": "containerdisk", "dataVolume": {"name": "containerdisk"}});
                v
            },
            &["spec.dataVolumeTemplates[0].spec.source: Required value: a DataVolume needs a source, a sourceRef, or to be externally populated"],
        ),
        (
            "VM template without memory or instancetype",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["template"]["spec"]["domain"]
                    .as_object_mut()
                    .unwrap()
                    .remove("memory");
                v
            },
            &["spec.template.spec.domain.memory.guest: Required value: at least one of 'guest', 'requests.memory' or 'limits.memory' must be set"],
        ),
        (
            "VM template without memory but with an instancetype",
            "VirtualMachine",
            || {
                let mut v = vm();
                v["spec"]["template"]["spec"]["domain"]
                    .as_object_mut()
                    .unwrap()
                    .remove("memory");
                v["spec"]["instancetype"] = json!({"name": "u1.small"});
                v
            },
            &[],
        ),
        (
            "negative grace period",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["terminationGracePeriodSeconds"] = (-1).into();
                v
            },
            &["spec.terminationGracePeriodSeconds: Invalid value: -1: must be greater than or equal to 0"],
        ),
        (
            "bad hostname",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["hostname"] = "My_Host".into();
                v
            },
            &["spec.hostname: Invalid value: \"My_Host\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"],
        ),
        (
            "probe without handler",
            "VirtualMachineInstance",
            || {
                let mut v = vmi();
                v["spec"]["readinessProbe"] = json!({"periodSeconds": 5});
                v
            },
            &["spec.readinessProbe: Required value: must specify a handler type (exec, httpGet, tcpSocket or guestAgentPing)"],
        ),
        (
            "migration without VMI",
            "VirtualMachineInstanceMigration",
            || json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration", "metadata": {"name": "m"}, "spec": {}}),
            &["spec.vmiName: Required value: must specify a VMI"],
        ),
        (
            "replica set selector mismatch",
            "VirtualMachineInstanceReplicaSet",
            || {
                let v = vmi();
                json!({
                    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
                    "metadata": {"name": "rs"},
                    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}},
                             "template": {"metadata": {"labels": {"app": "b"}}, "spec": v["spec"].clone()}}
                })
            },
            &[r#"spec.selector: Invalid value: {"matchLabels":{"app":"a"}}: selector does not match labels in spec.template.metadata.labels"#],
        ),
    ]
}

#[test]
fn invalid_manifests_yield_exact_field_errors() {
    let mut failures = Vec::new();
    for (name, kind, make, want) in cases() {
        let got = errors(kind, make());
        if got != want.iter().map(|s| s.to_string()).collect::<Vec<_>>() {
            failures.push(format!("{name}:\n  want {want:#?}\n  got  {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reasons_are_kubernetes_cause_types() {
    let mut v = vmi();
    v["spec"]["domain"]["devices"]["disks"][1]["name"] = "rootdisk".into();
    assert_eq!(
        reasons("VirtualMachineInstance", v),
        vec!["FieldValueNotFound"]
    );
    let mut v = vm();
    v["spec"]["runStrategy"] = "Sometimes".into();
    assert_eq!(reasons("VirtualMachine", v), vec!["FieldValueNotSupported"]);
    let mut v = vmi();
    v["spec"]["domain"]["resources"] = json!({"requests": {"memory": "abc"}});
    assert_eq!(
        reasons("VirtualMachineInstance", v),
        vec!["FieldValueInvalid"]
    );
    assert!(QUANTITY_ERR.starts_with("quantities"));
}

#[test]
fn vmi_spec_is_immutable_but_metadata_and_status_are_not() {
    let mut old = vmi();
    admit("VirtualMachineInstance", Operation::Create, &mut old, None).unwrap();

    let mut changed = old.clone();
    changed["spec"]["domain"]["memory"]["guest"] = "256Mi".into();
    let errs = admit(
        "VirtualMachineInstance",
        Operation::Update,
        &mut changed,
        Some(&old),
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "spec");
    assert_eq!(errs[0].reason(), "FieldValueForbidden");
    assert_eq!(
        errs[0].to_string(),
        "spec: Forbidden: update of VMI object is restricted"
    );

    let mut relabelled = old.clone();
    relabelled["metadata"]["labels"] = json!({"a": "b"});
    relabelled["status"] = json!({"phase": "Running", "nodeName": "local"});
    admit(
        "VirtualMachineInstance",
        Operation::Update,
        &mut relabelled,
        Some(&old),
    )
    .unwrap();
}

#[test]
fn migration_spec_is_immutable() {
    let mut old = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                         "metadata": {"name": "m"}, "spec": {"vmiName": "a"}});
    admit(
        "VirtualMachineInstanceMigration",
        Operation::Create,
        &mut old,
        None,
    )
    .unwrap();
    let mut new = old.clone();
    new["spec"]["vmiName"] = "b".into();
    let errs = admit(
        "VirtualMachineInstanceMigration",
        Operation::Update,
        &mut new,
        Some(&old),
    )
    .unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "spec: Forbidden: update of Migration object's spec is restricted"
    );
}

#[test]
fn vm_spec_may_change() {
    let mut old = vm();
    admit("VirtualMachine", Operation::Create, &mut old, None).unwrap();
    let mut new = old.clone();
    new["spec"]["runStrategy"] = "Halted".into();
    admit("VirtualMachine", Operation::Update, &mut new, Some(&old)).unwrap();
}

#[test]
fn garbage_never_panics() {
    for junk in [
        json!(null),
        json!(1),
        json!("x"),
        json!([]),
        json!({}),
        json!({"metadata": 5}),
        json!({"metadata": {}, "spec": []}),
        json!({"metadata": {}, "spec": {"domain": {"devices": {"disks": "x"}}}}),
        json!({"metadata": {}, "spec": {"template": {"spec": {"domain": null}}}}),
    ] {
        for kind in kubevirt_api::admission::KINDS {
            let mut v = junk.clone();
            let errs = admit(kind, Operation::Create, &mut v, None).unwrap_err();
            assert!(!errs.is_empty());
            // Must not panic; what it reports for junk does not matter.
            let _ = kubevirt_api::admission::unknown_fields(kind, &junk);
        }
    }
}

#[test]
fn admit_prunes_unknown_fields_and_unknown_fields_lists_them() {
    let mut v = vmi();
    v["spec"]["domain"]["foo"] = json!({"bar": 1});
    v["spec"]["volumes"][0]["containerDisk"]["extra"] = true.into();
    assert_eq!(
        kubevirt_api::admission::unknown_fields("VirtualMachineInstance", &v),
        vec!["spec.domain.foo", "spec.volumes[0].containerDisk.extra"]
    );
    admit("VirtualMachineInstance", Operation::Create, &mut v, None).unwrap();
    assert!(v["spec"]["domain"].get("foo").is_none());
    assert!(v["spec"]["volumes"][0]["containerDisk"]
        .get("extra")
        .is_none());
}

#[test]
fn new_vmis_get_the_finalizer_upstream_adds() {
    let mut v = vmi();
    admit("VirtualMachineInstance", Operation::Create, &mut v, None).unwrap();
    assert_eq!(
        v["metadata"]["finalizers"],
        json!(["foregroundDeleteVirtualMachine"])
    );
    // Not added again, and not on updates (a finalizer removed on the way out stays removed).
    admit("VirtualMachineInstance", Operation::Create, &mut v, None).unwrap();
    assert_eq!(
        v["metadata"]["finalizers"],
        json!(["foregroundDeleteVirtualMachine"])
    );
    let old = v.clone();
    v["metadata"]["finalizers"] = json!([]);
    admit(
        "VirtualMachineInstance",
        Operation::Update,
        &mut v,
        Some(&old),
    )
    .unwrap();
    assert_eq!(v["metadata"]["finalizers"], json!([]));
}
