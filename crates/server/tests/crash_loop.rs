//! A VM whose guest cannot start: the VMI fails with the launcher's reason, and
//! RerunOnFailure backs off (CrashLoopBackOff, status.startFailure) instead of spinning.

mod common;

use common::*;

#[test]
fn failing_vm_backs_off_with_the_reason() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let missing = server.data_dir.join("no-such-disk.qcow2");
    server.apply_yaml(&format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: broken
spec:
  runStrategy: RerunOnFailure
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk:
              bus: virtio
        memory:
          guest: 128Mi
      volumes:
      - name: root
        hostDisk:
          path: {}
          type: Disk
"#,
        missing.display()
    ));
    server.wait_for(
        "vm",
        "broken",
        "{.status.printableStatus}",
        "CrashLoopBackOff",
    );
    let count: u32 = server
        .jsonpath(
            "vm",
            "broken",
            "{.status.startFailure.consecutiveFailCount}",
        )
        .parse()
        .unwrap();
    assert!(count >= 1);
    assert!(!server
        .jsonpath("vm", "broken", "{.status.startFailure.retryAfterTimestamp}")
        .is_empty());
    // The launcher's reason reaches the user as a Warning event naming the volume.
    let events = server.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "type=Warning",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("no-such-disk.qcow2"), "{events}");

    // Halting it clears the crash loop: Stopped, nothing running.
    server.kubectl_ok(&[
        "patch",
        "vm",
        "broken",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Halted"}}"#,
    ]);
    server.wait_for("vm", "broken", "{.status.printableStatus}", "Stopped");
    server.wait_gone("vmi", "broken");
}
