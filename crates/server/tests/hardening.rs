//! A guest, a VM author or a local user does not reach the host: QEMU runs as the VM's own
//! unprivileged user under seccomp; files are private; the read-only user cannot type into
//! a console; hostDisks stay in the operator's directories; a header a guest wrote onto its
//! raw disk is refused at the next start instead of being followed.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A qcow2 v3 header (as a guest could write it onto its own raw disk) whose external data
/// file is `/etc/shadow`, as busybox `printf` octal escapes.
fn qcow2_header_naming_shadow() -> String {
    let mut h = Vec::new();
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
    h.extend_from_slice(&16u32.to_be_bytes()); // cluster bits
    h.extend_from_slice(&(64u64 << 20).to_be_bytes()); // size
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt method
    h.extend_from_slice(&1u32.to_be_bytes()); // l1 size
    h.extend_from_slice(&0x30000u64.to_be_bytes()); // l1 table offset
    h.extend_from_slice(&0x10000u64.to_be_bytes()); // refcount table offset
    h.extend_from_slice(&1u32.to_be_bytes()); // refcount table clusters
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    h.extend_from_slice(&4u64.to_be_bytes()); // incompatible: external data file
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order
    h.extend_from_slice(&104u32.to_be_bytes()); // header length
    let name = b"/etc/shadow";
    h.extend_from_slice(&0x4441_5441u32.to_be_bytes()); // data file name extension
    h.extend_from_slice(&(name.len() as u32).to_be_bytes());
    h.extend_from_slice(name);
    h.resize(h.len().div_ceil(8) * 8, 0);
    h.extend_from_slice(&[0; 8]); // end of extensions
    h.iter().map(|b| format!("\\{b:03o}")).collect()
}

#[test]
fn a_vm_cannot_reach_the_host() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    // The longest name a VM may have (its launcher pod's labels carry it): it starts, since
    // nothing on the host is named after it.
    let name = format!("hardening-{}", "a".repeat(63 - "hardening-".len()));
    server.apply_yaml(&hostdisk_vm(&name, "Always", &server.data_dir));
    server.wait_for("vm", &name, "{.status.printableStatus}", "Running");
    let vmi_uid = server.jsonpath("vmi", &name, "{.metadata.uid}");
    let pod_uid = server.launcher_pod_uid(&vmi_uid);
    let pids = qemu_pids(&pod_uid);
    assert_eq!(pids.len(), 1);
    let qemu = pids[0];

    // QEMU: its own user and group, nothing else, no capabilities, seccomp filtering.
    let uid: u32 = status_field(qemu, "Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(uid >= 0x6b76_0000, "QEMU runs as a VM user, not {uid}");
    assert_eq!(
        status_field(qemu, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    assert_eq!(
        status_field(qemu, "Gid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    for caps in ["CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(status_field(qemu, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(qemu, "NoNewPrivs"), "1");
    assert_eq!(status_field(qemu, "Seccomp"), "2");
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        !cmdline.contains(".img"),
        "QEMU names no disk path: {cmdline}"
    );

    // Files: the store and the run directory are root's; QEMU's group only passes through.
    assert_eq!(mode(&server.data_dir), 0o700);
    assert_eq!(mode(&server.data_dir.join("store.db")), 0o600);
    let run_dir = server.run_root.join(&pod_uid);
    let md = std::fs::metadata(&run_dir).unwrap();
    assert_eq!((md.uid(), md.gid(), mode(&run_dir)), (0, uid, 0o710));
    assert_eq!(mode(&run_dir.join("vmi.json")), 0o600);
    assert_eq!(mode(&run_dir.join("launcher.log")), 0o600);

    // The read-only user cannot attach to the console (it would type as root there).
    let out = std::process::Command::new(virtctl())
        .args(["console", &name])
        .env("KUBECONFIG", server.data_dir.join("kubeconfig-readonly"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "read-only console attached");
    assert!(err.contains("403") || err.contains("forbidden"), "{err}");

    // A launcher that cannot answer for a while (stopped) does not make its VM Failed.
    let launcher: Vec<u32> = pids_mentioning(&pod_uid)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("launcher") && !cmd.contains("qemu-system"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(launcher.len(), 1, "one launcher");
    // The launcher (root) and what it starts cannot load modules, touch raw devices or
    // ptrace: those capabilities are gone from its sets and its bounding set.
    let caps = |pid: u32, key: &str| u64::from_str_radix(&status_field(pid, key), 16).unwrap();
    let forbidden = (1u64 << 16) | (1 << 17) | (1 << 19); // SYS_MODULE, SYS_RAWIO, SYS_PTRACE
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(caps(launcher[0], key) & forbidden, 0, "launcher {key}");
    }
    assert_eq!(caps(qemu, "CapBnd") & forbidden, 0, "QEMU's bounding set");
    assert_ne!(
        caps(launcher[0], "CapEff") & (1 << 12),
        0,
        "the launcher keeps NET_ADMIN"
    );
    let signal = |sig| {
        // SAFETY: kill(2) on the launcher process found above; no memory is touched.
        assert_eq!(unsafe { libc::kill(launcher[0] as i32, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let phase = server.jsonpath("vmi", &name, "{.status.phase}");
    signal(libc::SIGCONT);
    assert_eq!(phase, "Running");
    assert_eq!(qemu_pids(&pod_uid), vec![qemu], "the same QEMU");

    // hostDisk paths outside the operator's directories are refused at admission...
    let outside = hostdisk_vm("shadow", "Halted", &server.data_dir).replace(
        &server.data_dir.join("shadow.img").display().to_string(),
        "/etc/shadow",
    );
    let applied = apply_expecting_error(&server, &outside);
    assert!(
        applied.contains(
            "spec.template.spec.volumes[0].hostDisk.path: Invalid value: \"/etc/shadow\": must be beneath a host disk directory of this node"
        ),
        "{applied}"
    );
    // ...and a link inside them leading out is not followed when the VM starts.
    let link = server.data_dir.join("link.img");
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    let linked = hostdisk_vm("linked", "Always", &server.data_dir).replace(
        &server.data_dir.join("linked.img").display().to_string(),
        &link.display().to_string(),
    );
    server.apply_yaml(&linked);
    server.wait_for(
        "vm",
        "linked",
        "{.status.printableStatus}",
        "CrashLoopBackOff",
    );
    let warnings = warning_events(&server);
    assert!(warnings.contains("link.img"), "{warnings}");

    // The guest writes a qcow2 header naming /etc/shadow onto its own (raw) disk. At the
    // next start the launcher refuses the disk, with the reason, and no QEMU starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_to_string(run_dir.join("serial.log"))
        .unwrap_or_default()
        .contains(kubevirt_testenv::READY_MARKER)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never booted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut console = ConsoleCapture::start(&server, &name);
    console.send(&format!(
        "printf '{}' > /dev/vda && sync && echo header-$((40+2))\r",
        qcow2_header_naming_shadow()
    ));
    console.wait_for("header-42");
    drop(console);
    let out = server.virtctl(&["restart", &name]);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("vm", &name, "{.status.printableStatus}", "CrashLoopBackOff");
    let warnings = warning_events(&server);
    assert!(
        warnings.contains("names an external data file \"/etc/shadow\""),
        "{warnings}"
    );
    // The old QEMU may still be stopping; once it is gone, none runs for this server.
    let qemus = || -> Vec<(u32, String)> {
        pids_mentioning(&server.run_root.display().to_string())
            .into_iter()
            .filter(|(_, cmd)| cmd.starts_with("qemu-system"))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !qemus().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a QEMU runs for a refused disk: {:?}",
            qemus()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

fn warning_events(server: &Server) -> String {
    server.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "type=Warning",
        "-o",
        "jsonpath={.items[*].message}",
    ])
}

fn apply_expecting_error(server: &Server, yaml: &str) -> String {
    let out = server.apply_output(yaml);
    assert!(!out.status.success(), "applied: {yaml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
