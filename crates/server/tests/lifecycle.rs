//! kubectl apply -> Running -> console -> stop -> start -> restart -> delete, with the real
//! server, kubectl, virtctl and the test guest under QEMU.

mod common;

use common::*;

#[test]
fn vm_lifecycle_through_kubectl_and_virtctl() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let name = "lifecycle";
    server.apply_yaml(&hostdisk_vm(name, "Halted", &server.data_dir));
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");

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
    assert_eq!(
        server.jsonpath(
            "vmi",
            name,
            "{.status.conditions[?(@.type==\"SoftwareEmulation\")].status}"
        ),
        "True"
    );
    server.wait_for("vmi", name, "{.status.guestOSInfo.id}", "kubevirt-rs-guest");
    let uid1 = server.jsonpath("vmi", name, "{.metadata.uid}");
    assert_eq!(qemu_pids(&uid1).len(), 1, "exactly one QEMU for the VMI");

    // kubectl describe shows the controller's events.
    let describe = server.kubectl_ok(&["describe", "vm", name]);
    assert!(describe.contains("SuccessfulCreate"), "{describe}");

    // Stop: Stopped, no QEMU or launcher left.
    let out = server.virtctl(&["stop", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");
    server.wait_gone("vmi", name);
    wait_no_processes(&uid1);

    // Start again, then restart: a new VMI replaces the old one.
    assert!(server.virtctl(&["start", name]).status.success());
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    let uid2 = server.jsonpath("vmi", name, "{.metadata.uid}");
    assert_ne!(uid1, uid2);
    let out = server.virtctl(&["restart", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let uid = server.jsonpath("vmi", name, "{.metadata.uid}");
        let phase = server.jsonpath("vmi", name, "{.status.phase}");
        if !uid.is_empty() && uid != uid2 && phase == "Running" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restart did not produce a new running VMI"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    wait_no_processes(&uid2);
    let uid3 = server.jsonpath("vmi", name, "{.metadata.uid}");

    // Pause and unpause through the VMI subresources.
    assert!(server.virtctl(&["pause", "vm", name]).status.success());
    server.wait_for("vm", name, "{.status.printableStatus}", "Paused");
    assert!(server.virtctl(&["unpause", "vmi", name]).status.success());
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");

    // A forced stop with no grace period: Stopped, QEMU gone.
    let out = server.virtctl(&["stop", name, "--force", "--grace-period", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");
    wait_no_processes(&uid3);
    let out = server.virtctl(&["stop", name, "--grace-period", "5"]);
    assert!(
        !out.status.success(),
        "--grace-period needs --force, as upstream"
    );

    // Delete: nothing left.
    server.kubectl_ok(&["delete", "vm", name, "--wait=true", "--timeout=120s"]);
    server.wait_gone("vmi", name);
    wait_no_processes(&uid3);
}
