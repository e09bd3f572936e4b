//! Upstream KubeVirt example manifests applied unchanged: their `registry:5000/...`
//! containerDisks come from a local registry holding the test guest under those names.

mod common;

use common::*;

/// Upstream's examples, as copied (unchanged) into the API crate's test fixtures.
const EXAMPLES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../api/tests/fixtures/kubevirt-examples"
);

fn example(file: &str) -> String {
    let dir = std::env::var("KUBEVIRT_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    std::fs::read_to_string(format!("{dir}/{file}")).unwrap_or_else(|e| panic!("{dir}/{file}: {e}"))
}

#[test]
fn upstream_examples_run_as_is() {
    let registry = kubevirt_testenv::Registry::start().unwrap();
    for image in [
        "kubevirt/cirros-container-disk-demo:devel",
        "kubevirt/fedora-with-test-tooling-container-disk:devel",
        "kubevirt/alpine-container-disk-demo:devel",
    ] {
        registry.push_guest_containerdisk(image).unwrap();
    }
    let mirror = format!("registry:5000=http://{}", registry.host());
    let server = Server::start(&["--stop-vms-on-exit", "--registry-mirror", &mirror]);

    // vm-cirros: Halted; start it and read its cloud-init output on the console.
    server.apply_yaml(&example("vm-cirros.yaml"));
    server.wait_for("vm", "vm-cirros", "{.status.printableStatus}", "Stopped");
    let mut console = ConsoleCapture::start(&server, "vm-cirros");
    let out = server.virtctl(&["start", "vm-cirros"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for("vm", "vm-cirros", "{.status.printableStatus}", "Running");
    console.wait_for(kubevirt_testenv::READY_MARKER);
    // The guest ran the manifest's NoCloud user data at boot; its output is in the guest's
    // cloud-init log (the console may have attached after it was printed).
    console.send("cat /var/log/cloud-init-output.log\r");
    console.wait_for("\nprinted from cloud-init userdata");
    drop(console);
    let uid = server.launcher_pod_uid(&server.jsonpath("vmi", "vm-cirros", "{.metadata.uid}"));
    server.kubectl_ok(&["delete", "vm", "vm-cirros", "--wait=true", "--timeout=120s"]);
    wait_no_processes(&uid);

    // Bare VMIs: scheduled, run, deleted.
    for (file, name) in [
        ("vmi-nocloud.yaml", "vmi-nocloud"),
        ("vmi-masquerade.yaml", "vmi-masquerade"),
    ] {
        server.apply_yaml(&example(file));
        server.wait_for("vmi", name, "{.status.phase}", "Running");
        let uid = server.launcher_pod_uid(&server.jsonpath("vmi", name, "{.metadata.uid}"));
        assert_eq!(qemu_pids(&uid).len(), 1, "{file}: one QEMU");
        server.kubectl_ok(&["delete", "vmi", name, "--wait=true", "--timeout=120s"]);
        wait_no_processes(&uid);
    }

    // vm-alpine-datavolume: its DataVolume imports the registry's containerDisk into a
    // claim of the class `local`; started, the VM boots from that disk.
    let name = "vm-alpine-datavolume";
    server.apply_yaml(&example("vm-alpine-datavolume.yaml"));
    server.wait_for("dv", "alpine-dv", "{.status.phase}", "Succeeded");
    server.wait_for("pvc", "alpine-dv", "{.spec.storageClassName}", "local");
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");
    let console = ConsoleCapture::start(&server, name);
    let out = server.virtctl(&["start", name]);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    console.wait_for(kubevirt_testenv::READY_MARKER);
    drop(console);
    server.kubectl_ok(&["delete", "vm", name, "--wait=true", "--timeout=120s"]);
    server.wait_gone("dv", "alpine-dv");
    server.wait_gone("pvc", "alpine-dv");
}

/// cloud-init user data from a Secret (`userDataSecretRef` is spelled `secretRef` in the
/// API): the node agent reads the Secret, the guest runs what it holds.
#[test]
fn cloud_init_user_data_from_a_secret() {
    let registry = kubevirt_testenv::Registry::start().unwrap();
    registry
        .push_guest_containerdisk("kubevirt/cirros-container-disk-demo:devel")
        .unwrap();
    let mirror = format!("registry:5000=http://{}", registry.host());
    let server = Server::start(&["--stop-vms-on-exit", "--registry-mirror", &mirror]);
    server.apply_yaml(
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: vmi-secret-userdata
stringData:
  userdata: |
    #!/bin/sh
    echo "from-secret-$((6 * 7))"
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: vmi-secret
spec:
  domain:
    devices:
      disks:
      - name: containerdisk
        disk: {bus: virtio}
      - name: cloudinitdisk
        disk: {bus: virtio}
    resources:
      requests:
        memory: 128Mi
  volumes:
  - name: containerdisk
    containerDisk:
      image: registry:5000/kubevirt/cirros-container-disk-demo:devel
  - name: cloudinitdisk
    cloudInitNoCloud:
      secretRef:
        name: vmi-secret-userdata
"#,
    );
    server.wait_for("vmi", "vmi-secret", "{.status.phase}", "Running");
    let mut console = ConsoleCapture::start(&server, "vmi-secret");
    console.wait_for(kubevirt_testenv::READY_MARKER);
    console.send("cat /var/log/cloud-init-output.log\r");
    console.wait_for("from-secret-42");
    drop(console);
    let uid = server.launcher_pod_uid(&server.jsonpath("vmi", "vmi-secret", "{.metadata.uid}"));
    server.kubectl_ok(&[
        "delete",
        "vmi",
        "vmi-secret",
        "--wait=true",
        "--timeout=120s",
    ]);
    wait_no_processes(&uid);
}
