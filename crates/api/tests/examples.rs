//! Every kubevirt.io object in upstream's examples decodes, defaults and validates with zero
//! errors and zero unknown fields, and round-trips losslessly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kubevirt_api::admission::{self, Operation, KINDS};
use kubevirt_api::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceReplicaSet,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// kubevirt.io kinds that appear in the examples but whose semantics are out of scope for this
/// crate (for now), with the reason. They are served as storage-only CRDs
/// (`crds::storage_only`), so the manifests still apply. Anything else from a kubevirt.io
/// group must be one of [`KINDS`].
const OUT_OF_SCOPE: &[(&str, &str)] = &[
    (
        "pool.kubevirt.io/v1beta1/VirtualMachinePool",
        "pools are not implemented; the VM template inside is checked as a VirtualMachine",
    ),
    (
        "kubevirt.io/v1/VirtualMachineInstancePreset",
        "deprecated upstream in favour of instancetypes",
    ),
    (
        "instancetype.kubevirt.io/v1beta1/VirtualMachineInstancetype",
        "instancetypes are not implemented yet",
    ),
    (
        "instancetype.kubevirt.io/v1beta1/VirtualMachineClusterInstancetype",
        "instancetypes are not implemented yet",
    ),
    (
        "instancetype.kubevirt.io/v1beta1/VirtualMachinePreference",
        "preferences are not implemented yet",
    ),
    (
        "migrations.kubevirt.io/v1alpha1/MigrationPolicy",
        "migration policies are not implemented yet",
    ),
];

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubevirt-examples")
}

/// (file name, document index, document) for every YAML document of every example.
pub fn documents() -> Vec<(String, usize, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(examples_dir())
        .expect("examples dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() > 40,
        "expected the upstream examples, found {}",
        files.len()
    );
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = Value::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((name.clone(), i, v));
            }
        }
    }
    out
}

fn gvk(v: &Value) -> (String, String) {
    (
        v["apiVersion"].as_str().unwrap_or_default().to_string(),
        v["kind"].as_str().unwrap_or_default().to_string(),
    )
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Value {
    let t: T = serde_json::from_value(v.clone()).unwrap();
    serde_json::to_value(&t).unwrap()
}

fn roundtrip_kind(kind: &str, v: &Value) -> Value {
    match kind {
        "VirtualMachine" => roundtrip::<VirtualMachine>(v),
        "VirtualMachineInstance" => roundtrip::<VirtualMachineInstance>(v),
        "VirtualMachineInstanceMigration" => roundtrip::<VirtualMachineInstanceMigration>(v),
        "VirtualMachineInstanceReplicaSet" => roundtrip::<VirtualMachineInstanceReplicaSet>(v),
        other => panic!("no type for {other}"),
    }
}

/// The in-scope objects, plus VMs extracted from VirtualMachinePool templates.
fn in_scope() -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (file, i, v) in documents() {
        let (api, kind) = gvk(&v);
        let label = format!("{file}#{i} {kind}");
        if api == "kubevirt.io/v1" && KINDS.contains(&kind.as_str()) {
            out.push((label, kind, v));
        } else if kind == "VirtualMachinePool" {
            let t = &v["spec"]["virtualMachineTemplate"];
            let mut vm = serde_json::json!({
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachine",
                "metadata": t["metadata"].clone(),
                "spec": t["spec"].clone(),
            });
            vm["metadata"]["name"] = "pool-member".into();
            out.push((format!("{label} template"), "VirtualMachine".into(), vm));
        }
    }
    out
}

#[test]
fn every_kubevirt_kind_is_covered_or_explicitly_out_of_scope() {
    let mut seen = BTreeSet::new();
    for (file, i, v) in documents() {
        let (api, kind) = gvk(&v);
        if !api.contains("kubevirt.io") {
            continue; // PriorityClass, ResourceClaimTemplate, ...
        }
        let key = format!("{api}/{kind}");
        if api == "kubevirt.io/v1" && KINDS.contains(&kind.as_str()) {
            seen.insert(kind);
        } else {
            assert!(
                OUT_OF_SCOPE.iter().any(|(k, _)| *k == key),
                "{file}#{i}: {key} is neither supported nor listed as out of scope"
            );
        }
    }
    for kind in KINDS {
        assert!(seen.contains(kind), "no example covers {kind}");
    }
}

#[test]
fn examples_round_trip_losslessly() {
    let objs = in_scope();
    assert!(objs.len() >= 36, "found only {} objects", objs.len());
    for (label, kind, v) in objs {
        let back = roundtrip_kind(&kind, &v);
        assert_eq!(back, v, "{label}: round-trip changed the object");
        // And again through YAML, as kubectl sends it.
        let yaml = serde_yaml::to_string(&back).unwrap();
        let again: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(roundtrip_kind(&kind, &again), v, "{label}: YAML round-trip");
    }
}

#[test]
fn examples_have_no_unknown_fields() {
    for (label, kind, v) in in_scope() {
        let unknown = admission::unknown_fields(&kind, &v);
        assert!(unknown.is_empty(), "{label}: unknown fields {unknown:?}");
    }
}

#[test]
fn examples_admit_cleanly_and_defaulting_is_idempotent() {
    for (label, kind, v) in in_scope() {
        let mut obj = v.clone();
        if let Err(errs) = admission::admit(&kind, Operation::Create, &mut obj, None) {
            let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            panic!("{label}: rejected: {msgs:#?}");
        }
        // Defaulting added something to VMs and VMIs (at least the machine type) ...
        if kind == "VirtualMachine" || kind == "VirtualMachineInstance" {
            assert_ne!(obj, v, "{label}: defaulting changed nothing");
        }
        // ... keeps what the user wrote ...
        assert!(
            admission::unknown_fields(&kind, &obj).is_empty(),
            "{label}: defaulted object has unknown fields"
        );
        // ... and is idempotent.
        let mut again = obj.clone();
        admission::admit(&kind, Operation::Create, &mut again, None).unwrap();
        assert_eq!(again, obj, "{label}: second admit changed the object");
        // An update that changes nothing is allowed for every kind.
        let mut upd = obj.clone();
        admission::admit(&kind, Operation::Update, &mut upd, Some(&obj))
            .unwrap_or_else(|e| panic!("{label}: no-op update rejected: {e:?}"));
    }
}

#[test]
fn defaulted_vmis_carry_the_expected_defaults() {
    for (label, kind, v) in in_scope() {
        if kind != "VirtualMachineInstance" {
            continue;
        }
        let mut obj = v.clone();
        admission::admit(&kind, Operation::Create, &mut obj, None).unwrap();
        let vmi: VirtualMachineInstance = serde_json::from_value(obj).unwrap();
        let d = &vmi.spec.domain;
        assert_eq!(
            d.machine.as_ref().and_then(|m| m.machine_type.as_deref()),
            Some("q35"),
            "{label}"
        );
        for disk in d.devices.disks.iter().flatten() {
            let bus = disk
                .disk
                .as_ref()
                .and_then(|t| t.bus.clone())
                .or_else(|| disk.cdrom.as_ref().and_then(|t| t.bus.clone()))
                .or_else(|| disk.lun.as_ref().and_then(|t| t.bus.clone()));
            assert!(bus.is_some(), "{label}: disk {} has no bus", disk.name);
        }
        // Every volume ends up attached (vmi-sata/vmi-windows list volumes without disks).
        for vol in vmi.spec.volumes.iter().flatten() {
            assert!(
                d.devices
                    .disks
                    .iter()
                    .flatten()
                    .any(|dk| dk.name == vol.name),
                "{label}: volume {} has no disk",
                vol.name
            );
        }
        assert!(
            d.firmware.as_ref().and_then(|f| f.uuid.as_ref()).is_some(),
            "{label}"
        );
        let req = d
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("memory"));
        assert!(req.is_some(), "{label}: no memory request");
    }
}

/// Removes `null` values (they mean "unset"; typed objects omit them).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn live(file: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/live")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn objects_as_a_cluster_returns_them_round_trip_with_metadata_and_status() {
    for (file, kind) in [
        ("vm-get-o-yaml.yaml", "VirtualMachine"),
        ("vmi-get-o-yaml.yaml", "VirtualMachineInstance"),
    ] {
        let v = live(file);
        assert_eq!(
            admission::unknown_fields(kind, &v),
            Vec::<String>::new(),
            "{file}"
        );
        let mut want = v.clone();
        strip_nulls(&mut want);
        assert_eq!(roundtrip_kind(kind, &v), want, "{file}");
        let mut obj = v.clone();
        admission::admit(kind, Operation::Create, &mut obj, None)
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        // Status and server-set metadata survive admission.
        assert_eq!(obj["status"], want["status"], "{file}");
        assert_eq!(obj["metadata"]["uid"], want["metadata"]["uid"], "{file}");
    }
    let vmi: VirtualMachineInstance = serde_json::from_value(live("vmi-get-o-yaml.yaml")).unwrap();
    let status = vmi.status.unwrap();
    assert_eq!(
        status.phase,
        Some(kubevirt_api::v1::VirtualMachineInstancePhase::Running)
    );
    assert_eq!(
        status.interfaces.unwrap()[0].ip_address.as_deref(),
        Some("10.244.0.23")
    );
    assert_eq!(status.guest_os_info.unwrap().id.as_deref(), Some("cirros"));
}

#[test]
fn every_kubevirt_document_has_a_served_crd() {
    let served: Vec<(String, String)> = kubevirt_api::crds::all()
        .into_iter()
        .flat_map(|c| {
            let g = c.spec.group.clone();
            let k = c.spec.names.kind.clone();
            c.spec
                .versions
                .iter()
                .map(move |v| (format!("{}/{}", g, v.name), k.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut checked = 0;
    for (file, i, v) in documents() {
        let (api, kind) = gvk(&v);
        if api.contains("kubevirt.io") {
            checked += 1;
            assert!(
                served.contains(&(api.clone(), kind.clone())),
                "{file}#{i}: {api} {kind} not served"
            );
        }
    }
    assert_eq!(checked, 44, "kubevirt documents in the examples");
}
