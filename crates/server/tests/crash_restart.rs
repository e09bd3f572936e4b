//! kill -9 of the server while VMs run: they keep running; after a restart statuses are
//! right and no VM runs twice. A SIGTERM without --stop-vms-on-exit also leaves them running.
//! What a finished launcher left for a pod that is gone is cleaned up on start.

mod common;

use common::*;

#[test]
fn vms_survive_server_crash_and_are_adopted() {
    let mut server = Server::start(&[]);
    let names = ["crash-a", "crash-b"];
    for n in names {
        server.apply_yaml(&hostdisk_vm(n, "Always", &server.data_dir));
    }
    let mut before = Vec::new();
    for n in names {
        server.wait_for("vm", n, "{.status.printableStatus}", "Running");
        let vmi_uid = server.jsonpath("vmi", n, "{.metadata.uid}");
        let uid = server.launcher_pod_uid(&vmi_uid);
        let pids = qemu_pids(&uid);
        assert_eq!(pids.len(), 1, "{n}: one QEMU");
        before.push((n, vmi_uid, uid, pids[0]));
    }

    server.kill9();
    for (n, _, uid, pid) in &before {
        assert_eq!(
            qemu_pids(uid),
            vec![*pid],
            "{n}: QEMU survives the server's death"
        );
    }

    server.restart();
    // A graceful stop (no --stop-vms-on-exit) then another restart: still the same VMs.
    server.stop();
    for (n, _, uid, pid) in &before {
        assert_eq!(
            qemu_pids(uid),
            vec![*pid],
            "{n}: QEMU survives a server stop"
        );
    }
    // What a launcher leaves for a pod deleted while no server ran: removed on start, as
    // the kubelet removes orphaned pods' directories; the live VMs' directories stay.
    let run_root = server.run_root.clone();
    let orphan = run_root.join("5d1c2a0e-0000-4000-8000-00000000dead");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("final-state.json"), "{}").unwrap();
    std::fs::write(orphan.join("launcher.log"), "ended\n").unwrap();
    server.restart();
    for (n, vmi_uid, uid, pid) in &before {
        server.wait_for("vm", n, "{.status.printableStatus}", "Running");
        server.wait_for("vmi", n, "{.status.phase}", "Running");
        assert_eq!(
            &server.jsonpath("vmi", n, "{.metadata.uid}"),
            vmi_uid,
            "{n}: same VMI"
        );
        assert_eq!(
            &server.launcher_pod_uid(vmi_uid),
            uid,
            "{n}: same launcher pod"
        );
        // Give the agent a few reconcile rounds: it must adopt, never start a second QEMU.
        std::thread::sleep(std::time::Duration::from_secs(5));
        assert_eq!(qemu_pids(uid), vec![*pid], "{n}: adopted, not restarted");
    }

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while orphan.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !orphan.exists(),
        "orphaned run directory removed; server log:\n{}",
        server.log()
    );
    for (n, _, uid, _) in &before {
        assert!(run_root.join(uid).is_dir(), "{n}: run directory kept");
    }

    // The adopted VMs are fully controllable. Under load the guest may still be booting
    // (nothing above waited for it): what is typed before its shell runs is lost, so type
    // again until the shell answers.
    let mut console = ConsoleCapture::start(&server, "crash-a");
    wait_until("the adopted guest's shell to answer", || {
        console.send("echo adopted-$((6*7))\r");
        std::thread::sleep(std::time::Duration::from_secs(2));
        console.text().contains("adopted-42")
    });
    drop(console);
    for (n, _, uid, _) in &before {
        server.kubectl_ok(&["delete", "vm", n, "--wait=true", "--timeout=120s"]);
        wait_no_processes(uid);
    }
}
