//! kubectl apply -> Running -> console -> stop -> start -> restart -> delete, with the real
//! server, kubectl, virtctl and the test guest under QEMU; the virt-launcher Pod of each VMI
//! (labels, owner, status, `kubectl logs`, deleting it) and VM/VMI status as upstream
//! serialises it.

mod common;

use common::*;

#[test]
fn vm_lifecycle_through_kubectl_and_virtctl() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let name = "lifecycle";
    server.apply_yaml(&hostdisk_vm(name, "Halted", &server.data_dir));
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");
    // False booleans are left out, as upstream's omitempty does.
    let status = server.jsonpath("vm", name, "{.status}");
    assert!(
        !status.contains("\"created\"") && !status.contains("\"ready\""),
        "{status}"
    );

    // Clear errors for a stopped VM and an unknown one.
    let out = server.virtctl(&["stop", name]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VM is not running"), "{err}");
    let out = server.virtctl(&["start", "no-such-vm"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"no-such-vm\" not found"), "{err}");

    // The console waits for the VMI and shows the guest booting.
    let console = ConsoleCapture::start(&server, name);
    let out = server.virtctl(&["start", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    server.wait_for("vmi", name, "{.status.phase}", "Running");
    assert_eq!(
        server.jsonpath("vmi", name, "{.status.nodeName}"),
        kubevirt_handler::node::local_node_name()
    );
    console.wait_for(kubevirt_testenv::READY_MARKER);
    drop(console);
    server.wait_for("vm", name, "{.status.ready}", "true");
    server.wait_for("vmi", name, "{.status.guestOSInfo.id}", "kubevirt-rs-guest");
    // Upstream's conditions only: software emulation is an annotation (and an event).
    let types = server.jsonpath("vmi", name, "{.status.conditions[*].type}");
    assert_eq!(types, "Ready LiveMigratable AgentConnected", "{types}");
    let vmi_uid = server.jsonpath("vmi", name, "{.metadata.uid}");

    // Its virt-launcher Pod, as upstream's: found by the VMI's UID, owned by the VMI,
    // running, with the VM's pod-network address and the launcher's log.
    let pod_uid = server.launcher_pod_uid(&vmi_uid);
    let pod_name = server.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        &format!("kubevirt.io/created-by={vmi_uid}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    assert!(
        pod_name.starts_with(&format!("virt-launcher-{name}-")),
        "{pod_name}"
    );
    let pod = |path: &str| server.jsonpath("pod", &pod_name, path);
    assert_eq!(pod("{.metadata.labels.kubevirt\\.io}"), "virt-launcher");
    assert_eq!(pod("{.metadata.labels.vm\\.kubevirt\\.io/name}"), name);
    assert_eq!(
        pod("{.metadata.ownerReferences[0].kind}"),
        "VirtualMachineInstance"
    );
    assert_eq!(pod("{.metadata.ownerReferences[0].uid}"), vmi_uid);
    assert_eq!(pod("{.status.phase}"), "Running");
    assert_eq!(pod("{.status.containerStatuses[0].name}"), "compute");
    assert_eq!(pod("{.status.containerStatuses[0].ready}"), "true");
    assert_eq!(pod("{.status.containerStatuses[0].restartCount}"), "0");
    server.wait_for(
        "pod",
        &pod_name,
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
    );
    assert!(!pod("{.spec.containers[0].resources.requests.memory}").is_empty());
    assert_eq!(
        server.jsonpath("vmi", name, &format!("{{.status.activePods.{pod_uid}}}")),
        kubevirt_handler::node::local_node_name()
    );
    let logs = server.kubectl_ok(&["logs", &pod_name]);
    assert!(logs.contains("VM running"), "{logs}");
    let err = server.kubectl(&["logs", &pod_name, "-c", "nope"]);
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("container nope is not valid for pod"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
    if !server
        .jsonpath(
            "vmi",
            name,
            "{.metadata.annotations.kubevirt-rs\\.io/software-emulation}",
        )
        .is_empty()
    {
        let events = server.kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"]);
        assert!(events.contains("SoftwareEmulation"), "{events}");
    }
    assert_eq!(qemu_pids(&pod_uid).len(), 1, "exactly one QEMU for the VMI");

    // kubectl describe shows the controllers' events.
    let describe = server.kubectl_ok(&["describe", "vm", name]);
    assert!(describe.contains("SuccessfulCreate"), "{describe}");
    let describe = server.kubectl_ok(&["describe", "vmi", name]);
    assert!(
        describe.contains("Created virtual machine pod"),
        "{describe}"
    );

    // Stop: Stopped, no QEMU, launcher or pod left.
    let out = server.virtctl(&["stop", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");
    server.wait_gone("vmi", name);
    server.wait_gone("pod", &pod_name);
    wait_no_processes(&pod_uid);

    // Start again, then restart: a new VMI (and pod) replaces the old one.
    assert!(server.virtctl(&["start", name]).status.success());
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    let vmi2 = server.jsonpath("vmi", name, "{.metadata.uid}");
    assert_ne!(vmi_uid, vmi2);
    let pod2 = server.launcher_pod_uid(&vmi2);
    let out = server.virtctl(&["restart", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vmi3 = wait_new_running_vmi(&server, name, &vmi2);
    wait_no_processes(&pod2);
    let pod3 = server.launcher_pod_uid(&vmi3);

    // Pause and unpause through the VMI subresources.
    assert!(server.virtctl(&["pause", "vm", name]).status.success());
    server.wait_for("vm", name, "{.status.printableStatus}", "Paused");
    server.wait_for(
        "vmi",
        name,
        "{.status.conditions[?(@.type==\"Paused\")].reason}",
        "PausedByUser",
    );
    assert!(server.virtctl(&["unpause", "vmi", name]).status.success());
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");

    // Deleting the launcher pod stops the VM, as upstream; runStrategy Always brings a new
    // VMI with a new pod.
    server.kubectl_ok(&[
        "delete",
        "pod",
        "-l",
        &format!("kubevirt.io/created-by={vmi3}"),
        "--wait=false",
    ]);
    let vmi4 = wait_new_running_vmi(&server, name, &vmi3);
    wait_no_processes(&pod3);
    let pod4 = server.launcher_pod_uid(&vmi4);

    // A forced stop with no grace period: Stopped, QEMU gone.
    let out = server.virtctl(&["stop", name, "--force", "--grace-period", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");
    wait_no_processes(&pod4);
    let out = server.virtctl(&["stop", name, "--grace-period", "5"]);
    assert!(
        !out.status.success(),
        "--grace-period needs --force, as upstream"
    );

    // Delete: nothing left.
    server.kubectl_ok(&["delete", "vm", name, "--wait=true", "--timeout=120s"]);
    server.wait_gone("vmi", name);
    let pods = server.kubectl_ok(&["get", "pods", "-o", "name"]);
    assert!(pods.trim().is_empty(), "{pods}");
}

/// Waits until the VM has a Running VMI other than `old`; returns its UID.
fn wait_new_running_vmi(server: &Server, name: &str, old: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let uid = server.jsonpath("vmi", name, "{.metadata.uid}");
        let phase = server.jsonpath("vmi", name, "{.status.phase}");
        if !uid.is_empty() && uid != old && phase == "Running" {
            return uid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new running VMI replaced {old}\n{}",
            tail(&server.log(), 40)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
