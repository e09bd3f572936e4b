//! Features the API accepts but this project cannot run yet are reported with their fields.

use kubevirt_api::admission::{admit, Operation};
use kubevirt_api::support::{unsupported_features, unsupported_vmi_features};
use kubevirt_api::v1::VirtualMachineInstance;
use serde_json::Value;

fn example_vmi(file: &str) -> VirtualMachineInstance {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kubevirt-examples")
        .join(file);
    let mut v: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // Reported after admission, as the node agent sees the VMI.
    admit("VirtualMachineInstance", Operation::Create, &mut v, None).unwrap();
    serde_json::from_value(v).unwrap()
}

fn fields(file: &str) -> Vec<String> {
    unsupported_vmi_features(&example_vmi(file))
        .into_iter()
        .map(|f| f.field)
        .collect()
}

#[test]
fn sriov_example_reports_its_fields() {
    assert_eq!(
        fields("vmi-sriov.yaml"),
        vec![
            "spec.domain.devices.interfaces[1].sriov",
            "spec.networks[1].multus",
        ]
    );
}

#[test]
fn gpu_examples_report_their_fields() {
    assert_eq!(fields("vmi-gpu.yaml"), vec!["spec.domain.devices.gpus[0]"]);
    assert_eq!(
        fields("vmi-dra-pgpu.yaml"),
        vec!["spec.domain.devices.gpus[0]", "spec.resourceClaims"]
    );
}

#[test]
fn other_examples() {
    assert_eq!(
        fields("vmi-usb.yaml"),
        vec!["spec.domain.devices.hostDevices[0]"]
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
        vec!["spec.networks[0].multus"]
    );
    assert_eq!(
        fields("vmi-with-sidecar-hook.yaml"),
        vec!["metadata.annotations[hooks.kubevirt.io/hookSidecars]"]
    );
    // Plain guests run as they are.
    for ok in [
        "vmi-fedora.yaml",
        "vmi-masquerade.yaml",
        "vmi-nocloud.yaml",
        "vmi-ephemeral.yaml",
        "vmi-alpine-efi.yaml",
        "vmi-secureboot.yaml",
        "vmi-windows.yaml",
        "vmi-kernel-boot.yaml",
        "vmi-host-disk.yaml",
        "vmi-pvc.yaml",
        "vmi-migratable.yaml",
    ] {
        assert_eq!(fields(ok), Vec::<String>::new(), "{ok}");
    }
}

#[test]
fn reasons_are_human_readable() {
    let vmi = example_vmi("vmi-sriov.yaml");
    let f = unsupported_features(&vmi.spec);
    assert!(f.iter().all(|f| !f.reason.is_empty()));
    let summary = kubevirt_api::support::summary(&f);
    assert!(
        summary.contains("spec.domain.devices.interfaces[1].sriov: SR-IOV"),
        "{summary}"
    );
}

#[test]
fn bridge_on_pod_network_is_reported_but_not_on_multus() {
    let mut vmi = example_vmi("vmi-fedora.yaml");
    let iface = &mut vmi.spec.domain.devices.interfaces.as_mut().unwrap()[0];
    iface.masquerade = None;
    iface.bridge = Some(Default::default());
    let f: Vec<String> = unsupported_features(&vmi.spec)
        .into_iter()
        .map(|f| f.field)
        .collect();
    assert_eq!(f, vec!["spec.domain.devices.interfaces[0].bridge"]);
    let multus = example_vmi("vmi-multus-multiple-net.yaml");
    let f: Vec<String> = unsupported_features(&multus.spec)
        .into_iter()
        .map(|f| f.field)
        .collect();
    assert_eq!(f, vec!["spec.networks[1].multus"]);
}

#[test]
fn unsupported_condition_names_the_fields() {
    let now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
        serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).unwrap();
    let c = kubevirt_api::support::unsupported_condition(&example_vmi("vmi-gpu.yaml"), now.clone())
        .expect("gpu is unsupported");
    assert_eq!(c.type_, "Synchronized");
    assert_eq!(c.status, kubevirt_api::v1::ConditionStatus::False);
    assert_eq!(c.reason.as_deref(), Some("Unsupported"));
    assert!(c.message.unwrap().contains("spec.domain.devices.gpus[0]"));
    assert!(
        kubevirt_api::support::unsupported_condition(&example_vmi("vmi-fedora.yaml"), now)
            .is_none()
    );
}
