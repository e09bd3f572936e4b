//! The launcher binary running real guests (TCG): volumes, API, console, stop, cleanup.

mod common;

use std::time::Duration;

use common::*;
use kubevirt_hypervisor::{DomainState, ExitReason};
use kubevirt_testenv::{guests, READY_MARKER};
use serde_json::json;

/// hostDisk boot (raw, as hostDisks are), emptyDisk seen by the guest, NoCloud user data runs,
/// guest agent, pause/unpause, console and VNC streams, graceful stop and cleanup.
#[test]
fn hostdisk_emptydisk_cloudinit_agent_pause_console_vnc_and_stop() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "root.img");
    let vmi = vmi(
        "hostdisk",
        json!({
            "disks": [
                {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
                {"name": "scratch", "disk": {"bus": "virtio"}, "serial": "scratch1"},
                {"name": "cloudinit", "disk": {"bus": "virtio"}}
            ]
        }),
        json!([
            {"name": "root", "hostDisk": {"path": root, "type": "Disk"}},
            {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
            {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#!/bin/sh\necho CLOUD-INIT-HELLO-$((6*7))\n"}}
        ]),
    );
    let mut vm = launch(vmi, &[]);
    let rt = rt();
    let st = vm.status(&rt);
    assert_eq!(st.domain, Some(DomainState::Running));
    assert_eq!(st.vmi.as_ref().unwrap().name, "hostdisk");
    let qemu_pid = st.qemu_pid.unwrap();
    let launcher_pid = vm.launcher_pid().unwrap();
    assert_eq!(st.launcher_pid, launcher_pid);
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(
            st.accelerator.as_ref().unwrap().kind,
            kubevirt_hypervisor::AcceleratorKind::Tcg
        );
    }

    let log = vm.wait_serial(READY_MARKER, 1);
    // 64 MiB empty disk = 131072 sectors, with the serial we gave it.
    assert!(log.contains("131072 sectors serial=scratch1"), "{log}");

    let os = rt.block_on(vm.client.guest_osinfo()).unwrap();
    assert_eq!(os["id"], "kubevirt-rs-guest", "{os}");

    // Interactive console through the launcher.
    let mut con = console(&rt, &vm.client);
    let out = con.run("echo via-console-$((1+1))", T).unwrap();
    assert!(out.contains("via-console-2"), "{out}");
    // The NoCloud seed is found by its label and its user data runs in the guest. (The test
    // guest's init looks labels up with `blkid`, which its busybox lacks, so run it here.)
    let out = con
        .run(
            "mount -o ro $(findfs LABEL=cidata) /mnt/seed && sh /mnt/seed/user-data; \
             sed -n 's/^local-hostname: */host=/p' /mnt/seed/meta-data; umount /mnt/seed",
            T,
        )
        .unwrap();
    assert!(out.contains("CLOUD-INIT-HELLO-42"), "{out}");
    assert!(out.contains("host=hostdisk"), "{out}");

    rt.block_on(vm.client.pause()).unwrap();
    assert_eq!(vm.status(&rt).domain, Some(DomainState::Paused));
    rt.block_on(vm.client.unpause()).unwrap();
    assert_eq!(vm.status(&rt).domain, Some(DomainState::Running));
    let out = con.run("echo after-unpause", T).unwrap();
    assert!(out.contains("after-unpause"));

    // VNC: the RFB server greets with its version.
    let greeting = rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut s = vm.client.vnc().await.unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf
    });
    assert_eq!(&greeting[..4], b"RFB ");

    // Bad requests get clear errors, not crashes.
    assert_eq!(
        post_raw(&vm, "/v1/stop", "{\"graceSeconds\": \"soon\"}"),
        "400"
    );
    assert_eq!(post_raw(&vm, "/v1/nothing", ""), "404");
    assert_eq!(vm.status(&rt).domain, Some(DomainState::Running));

    // Graceful stop: ACPI, the guest powers off, everything is cleaned.
    rt.block_on(vm.client.stop(Some(60))).unwrap();
    let (code, fin) = vm.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert_eq!(
        fin.exit.as_ref().map(|e| e.reason),
        Some(ExitReason::GuestShutdown),
        "{fin:?}"
    );
    wait_dead(qemu_pid);
    assert_eq!(vm.leftovers(), Vec::<String>::new());
    assert!(root.exists(), "a hostDisk is the user's and stays");
    assert!(vm.serial_log().contains("ACPI power button"));
}

/// POSTs a raw body with curl (a client that does not know our types) and returns the status.
fn post_raw(vm: &TestVm, path: &str, body: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(vm.run_dir.launcher_socket())
        .args(["-X", "POST", "-d", body])
        .arg(format!("http://launcher{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// kernelBoot from a container image (kernel and initrd pulled from a local registry),
/// soft reboot through the guest agent, reset, and a guest that ignores the power button
/// being hard-stopped when the grace period runs out.
#[test]
fn kernel_boot_soft_reboot_reset_and_grace_period_hard_stop() {
    let g = guests();
    let registry = kubevirt_testenv::Registry::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let layout = oci_layout(
        work.path(),
        &[
            ("boot/vmlinuz", g.vmlinuz.as_path()),
            ("boot/initramfs.cpio.gz", g.initramfs.as_path()),
        ],
    );
    registry
        .push_oci_layout(&layout, "kubevirt-rs/kernel-boot:devel")
        .unwrap();
    let mut v = vmi("kernelboot", json!({"disks": []}), json!([]));
    v["spec"]["domain"]["firmware"] = json!({
        "kernelBoot": {
            "kernelArgs": g.kernel_cmdline,
            "container": {
                "image": "registry:5000/kubevirt-rs/kernel-boot:devel",
                "kernelPath": "/boot/vmlinuz",
                "initrdPath": "/boot/initramfs.cpio.gz"
            }
        }
    });
    let mut vm = launch(
        v,
        &[
            "--registry-mirror".into(),
            format!("registry:5000=http://{}", registry.host()),
        ],
    );
    let rt = rt();
    vm.wait_serial(READY_MARKER, 1);
    // Wait for the agent before asking it to reboot the guest.
    let deadline = std::time::Instant::now() + T;
    while rt.block_on(vm.client.guest_osinfo()).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "guest agent never answered"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    rt.block_on(vm.client.soft_reboot()).unwrap();
    vm.wait_serial(READY_MARKER, 2);
    rt.block_on(vm.client.reset()).unwrap();
    vm.wait_serial(READY_MARKER, 3);
    assert_eq!(vm.status(&rt).domain, Some(DomainState::Running));

    // The guest stops listening to the power button: the grace period decides.
    let mut con = console(&rt, &vm.client);
    let out = con.run("killall acpid; echo acpid-gone", T).unwrap();
    assert!(out.contains("acpid-gone"), "{out}");
    let started = std::time::Instant::now();
    rt.block_on(vm.client.stop(Some(3))).unwrap();
    assert!(vm.status(&rt).stop_requested);
    // Operations during shutdown are refused with a conflict.
    let err = rt.block_on(vm.client.pause()).unwrap_err().to_string();
    assert!(err.contains("409"), "{err}");
    let (code, fin) = vm.wait_final();
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(code, Some(0), "a requested stop is not a crash: {fin:?}");
    assert!(fin.stop_requested, "{fin:?}");
    assert_ne!(
        fin.exit.as_ref().map(|e| e.reason),
        Some(ExitReason::GuestShutdown),
        "hard stop: {fin:?}"
    );
    assert!(!vm.serial_log().contains("ACPI power button"));
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

/// The pod network (masquerade): the guest gets 10.0.2.2 from the launcher's DHCP server,
/// the state reports the pod IP, and the network is gone after the VM stops.
#[test]
fn masquerade_pod_network_dhcp_and_teardown() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "root.img");
    let mut v = vmi(
        "podnet",
        json!({
            "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
            "interfaces": [{"name": "default", "masquerade": {}}]
        }),
        json!([{"name": "root", "hostDisk": {"path": root, "type": "Disk"}}]),
    );
    v["spec"]["networks"] = json!([{"name": "default", "pod": {}}]);
    let mut vm = launch(v, &[]);
    let rt = rt();
    let log = vm.wait_serial("guest-ip: ", 1);
    assert!(log.contains("guest-ip: 10.0.2.2"), "{log}");
    let st = vm.status(&rt);
    assert_eq!(st.interfaces.len(), 1, "{st:?}");
    let iface = &st.interfaces[0];
    assert_eq!(iface.binding, "masquerade");
    assert!(
        iface
            .ip_address
            .as_deref()
            .unwrap_or("")
            .starts_with("10.244."),
        "{iface:?}"
    );
    let pods = || {
        kubevirt_podnet::PodNetwork::new(kubevirt_podnet::PodNetworkConfig::default())
            .unwrap()
            .list()
            .unwrap()
            .into_iter()
            .filter(|h| h.vm_id == "uid-podnet")
            .count()
    };
    assert_eq!(pods(), 1);
    rt.block_on(vm.client.stop(Some(30))).unwrap();
    let (code, fin) = vm.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert_eq!(pods(), 0, "pod network torn down");
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

/// The pod network through passt, which runs as the VM's own user beside its QEMU: the guest
/// gets the pod's address from passt's DHCP.
#[test]
fn passt_pod_network_runs_as_the_vm_user() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "root.img");
    let mut v = vmi(
        "passt",
        json!({
            "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
            "interfaces": [{"name": "default", "passt": {}}]
        }),
        json!([{"name": "root", "hostDisk": {"path": root, "type": "Disk"}}]),
    );
    v["spec"]["networks"] = json!([{"name": "default", "pod": {}}]);
    let mut vm = launch(v, &[]);
    let rt = rt();
    let st = vm.status(&rt);
    let pod_ip = st.interfaces[0].ip_address.clone().expect("pod IP");
    let log = vm.wait_serial("guest-ip: ", 1);
    assert!(log.contains(&format!("guest-ip: {pod_ip}")), "{log}");
    let qemu = st.qemu_pid.unwrap();
    let uid_of = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|u| u.split_whitespace().next().unwrap().to_string())
            })
            .unwrap()
    };
    let passt: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains(&vm.run_dir.path().display().to_string())
                    && c.contains("/usr/bin/passt")
                    && !c.contains("qemu-system")
            })
        })
        .collect();
    assert_eq!(passt.len(), 1, "one passt for this VM");
    assert_eq!(
        uid_of(passt[0]),
        uid_of(qemu),
        "passt runs as the VM's user"
    );
    assert_ne!(uid_of(qemu), "0");
    rt.block_on(vm.client.stop(Some(30))).unwrap();
    let (code, fin) = vm.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}
