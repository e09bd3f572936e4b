//! Boots the real test guest under QEMU (TCG here) through the hypervisor traits.

use std::path::Path;
use std::time::Duration;

use kubevirt_hypervisor::*;
use kubevirt_testenv::{guests, Console, READY_MARKER};

const T: Duration = Duration::from_secs(90);

fn kernel_guest(name: &str, dir: &Path) -> DomainConfig {
    let g = guests();
    let mut cfg = DomainConfig::new(name, 192, dir.join("qmp.sock"));
    cfg.kernel_boot = Some(KernelBoot {
        kernel: g.vmlinux.clone(),
        initrd: Some(g.initramfs.clone()),
        cmdline: g.kernel_cmdline.to_string(),
    });
    cfg.serial = Some(SerialConfig {
        socket: dir.join("serial.sock"),
        log_file: Some(dir.join("serial.log")),
    });
    cfg.log_file = Some(dir.join("qemu.log"));
    cfg
}

fn hv() -> QemuHypervisor {
    QemuHypervisor::new()
}

#[test]
fn accelerator_on_this_host_is_tcg_because_of_kvm_pvm() {
    let a = detect_accelerator();
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(a.kind, AcceleratorKind::Tcg);
        assert!(a.reason.contains("kvm_pvm"), "{}", a.reason);
    }
    assert_eq!(hv().accelerator().kind, a.kind);
    assert_eq!(hv().name(), "qemu");
}

/// One guest for the whole lifecycle: boot, agent, stats, pause/resume, reset, ACPI shutdown.
#[test]
fn lifecycle_pause_resume_reset_agent_and_acpi_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kernel_guest("lifecycle", dir.path());
    cfg.qga_socket = Some(dir.path().join("qga.sock"));
    cfg.rng = true;
    let dom = hv().create_domain(cfg).unwrap();
    assert_eq!(dom.state().unwrap(), DomainState::Defined);
    dom.start().unwrap();
    let pid = dom.pid().expect("running QEMU has a pid");
    let mut con = Console::connect(&dir.path().join("serial.sock"), T).unwrap();
    con.wait_for(READY_MARKER, T).unwrap();
    assert_eq!(dom.state().unwrap(), DomainState::Running);

    // The booted guest's vCPU ran, QEMU used CPU and memory; the guest has its memory.
    let stats = dom.stats().unwrap();
    assert_eq!(stats.vcpus.len(), 1);
    assert!(stats.vcpus[0].run_ns.is_some_and(|ns| ns > 0), "{stats:?}");
    assert!(stats.vmm_rss_kib > 0);
    assert!(stats.vmm_user_ns + stats.vmm_system_ns > 0, "{stats:?}");
    assert_eq!(stats.memory.domain_bytes, dom.config().memory_mib << 20);

    let os = dom
        .guest_agent("guest-get-osinfo", None, Duration::from_secs(30))
        .unwrap();
    assert_eq!(os["id"], "kubevirt-rs-guest", "{os}");

    // Pause: the guest stops consuming console input until resumed.
    let before = dom.events().len();
    dom.pause().unwrap();
    assert_eq!(dom.state().unwrap(), DomainState::Paused);
    assert!(dom.wait_event("STOP", before, T).is_some());
    con.send_line("echo resumed-$((40+2))").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !con.output().contains("resumed-42"),
        "a paused guest must not run commands"
    );
    dom.resume().unwrap();
    assert_eq!(dom.state().unwrap(), DomainState::Running);
    con.wait_for("resumed-42", T).unwrap();

    // Reset: the guest boots again and prints its marker a second time.
    let before = dom.events().len();
    dom.reset().unwrap();
    assert!(dom.wait_event("RESET", before, T).is_some());
    con.wait_for_count(READY_MARKER, 2, T).unwrap();
    // The power button is only heard once acpid runs; a shell round trip proves boot finished.
    con.run("echo booted-again", T).unwrap();

    // ACPI power button: the guest powers off and QEMU exits cleanly.
    dom.acpi_shutdown().unwrap();
    let exit = dom
        .wait_exit(Some(T))
        .unwrap()
        .expect("QEMU exits after ACPI shutdown");
    assert_eq!(exit.reason, ExitReason::GuestShutdown, "{exit:?}");
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(dom.state().unwrap(), DomainState::Exited);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.path().join("qmp.sock").exists());
    assert!(dom.pause().is_err());
    // The serial log kept everything the guest printed, both boots.
    let log = std::fs::read_to_string(dir.path().join("serial.log")).unwrap();
    assert_eq!(log.matches(READY_MARKER).count(), 2, "{log}");
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

/// A confined QEMU: its own uid and gid, no capabilities, no new privileges, seccomp, a
/// memory-bounded cgroup. It still reaches its disks (a root-only raw disk and a qcow2
/// overlay over a base it may not open by path), because it gets them as descriptors, and
/// the overlay's backing chain is the one we gave it.
#[test]
fn confined_qemu_runs_unprivileged_on_passed_descriptors() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = private.join("data.raw");
    std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
    let base = private.join("base.raw");
    let mut bytes = b"base-marker-7".to_vec();
    bytes.resize(1 << 20, 0);
    std::fs::write(&base, bytes).unwrap();
    let overlay = private.join("overlay.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // QEMU's sockets live in a directory of its own user.
    let vmm = dir.path().join("vmm");
    std::fs::create_dir(&vmm).unwrap();
    std::os::unix::fs::chown(&vmm, Some(41_000), Some(41_000)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    let mut cfg = kernel_guest("confined", &vmm);
    cfg.serial.as_mut().unwrap().log_file = Some(private.join("serial.log"));
    cfg.log_file = Some(private.join("qemu.log"));
    let disk = |name: &str, path: &Path, format| DiskConfig {
        name: name.into(),
        path: Some(path.to_path_buf()),
        format,
        backing: None,
        bus: DiskBus::Virtio,
        device: DiskDevice::Disk,
        readonly: false,
        boot_order: None,
        serial: None,
    };
    cfg.disks.push(disk("data", &data, DiskFormat::Raw));
    let mut top = disk("top", &overlay, DiskFormat::Qcow2);
    top.backing = Some(BackingImage {
        path: base.clone(),
        format: DiskFormat::Raw,
    });
    cfg.disks.push(top);
    let cgroup = format!("test-{}", std::process::id());
    cfg.cpu_shares = Some(102);
    cfg.confinement = Some(Confinement {
        uid: 41_000,
        gid: 41_000,
        groups: vec![],
        cgroup: cgroup.clone(),
        memory_limit_bytes: Some(640 << 20),
        cpu_limit_millis: Some(1500),
    });
    let dom = hv().create_domain(cfg).unwrap();
    dom.start().unwrap();
    let pid = dom.pid().unwrap();
    let mut con = Console::connect(&vmm.join("serial.sock"), T).unwrap();
    con.wait_for(READY_MARKER, T).unwrap();

    assert_eq!(status_field(pid, "Uid"), "41000\t41000\t41000\t41000");
    assert_eq!(status_field(pid, "Gid"), "41000\t41000\t41000\t41000");
    assert_eq!(status_field(pid, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "seccomp filter mode");

    // The memory cgroup holds QEMU, with the limit.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = cgroups
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|x| x == "memory") || c.is_empty())
                && l.contains(&cgroup)
        })
        .unwrap_or_else(|| panic!("QEMU is not in its cgroup: {cgroups}"));
    let rel = line.splitn(3, ':').nth(2).unwrap();
    let limit_file = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .iter()
        .flat_map(|m| {
            [
                format!("{m}{rel}/memory.limit_in_bytes"),
                format!("{m}{rel}/memory.max"),
            ]
        })
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("no memory limit file for {rel}"));
    assert_eq!(
        std::fs::read_to_string(&limit_file).unwrap().trim(),
        (640u64 << 20).to_string()
    );

    // Once QEMU answered, its cgroup carries the domain's CPU weight.
    let cpu = cgroups
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|x| x == "cpu"))
                && l.contains(&cgroup)
        })
        .map(|l| {
            format!(
                "/sys/fs/cgroup/cpu{}/cpu.shares",
                l.splitn(3, ':').nth(2).unwrap()
            )
        });
    if let Some(shares) = cpu.filter(|p| Path::new(p).exists()) {
        assert_eq!(std::fs::read_to_string(shares).unwrap().trim(), "102");
    }

    // The guest reads the base through the overlay and writes the root-only disk.
    let out = con.run("head -c 13 /dev/vdb; echo", T).unwrap();
    assert!(out.contains("base-marker-7"), "{out}");
    con.run("echo from-the-guest > /dev/vda; sync", T).unwrap();
    let written = std::fs::read(&data).unwrap();
    assert!(
        written.starts_with(b"from-the-guest"),
        "guest write reached the disk"
    );

    dom.stop().unwrap();
    let base_after = std::fs::read(&base).unwrap();
    assert!(
        base_after.starts_with(b"base-marker-7"),
        "the base is untouched"
    );
    assert!(
        !Path::new(&limit_file).exists(),
        "the cgroup is removed with QEMU"
    );
}

/// Hard stop of a guest with a TPM: QEMU and swtpm are gone afterwards.
#[test]
fn hard_stop_with_tpm_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kernel_guest("tpm", dir.path());
    // Direct PVH boot + TPM + SeaBIOS breaks ACPI tables; use the bzImage here.
    cfg.kernel_boot.as_mut().unwrap().kernel = guests().vmlinuz.clone();
    cfg.tpm = Some(TpmConfig {
        state_dir: dir.path().join("tpm"),
        socket: dir.path().join("swtpm.sock"),
        pid_file: dir.path().join("swtpm.pid"),
    });
    let dom = hv().create_domain(cfg).unwrap();
    dom.start().unwrap();
    let qemu_pid = dom.pid().unwrap();
    let swtpm_pid: u32 = std::fs::read_to_string(dir.path().join("swtpm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{swtpm_pid}")).exists());
    let mut con = Console::connect(&dir.path().join("serial.sock"), T).unwrap();
    con.wait_for(READY_MARKER, T).unwrap();
    let out = con.run("ls /dev/tpm* ; echo tpm-listed", T).unwrap();
    assert!(out.contains("/dev/tpm0"), "guest sees a TPM: {out}");

    dom.stop().unwrap();
    let exit = dom.wait_exit(Some(T)).unwrap().unwrap();
    assert_eq!(exit.reason, ExitReason::HostRequest, "{exit:?}");
    assert!(!Path::new(&format!("/proc/{qemu_pid}")).exists());
    assert!(!Path::new(&format!("/proc/{swtpm_pid}")).exists());
    assert!(!dir.path().join("swtpm.sock").exists());
    assert!(!dir.path().join("serial.sock").exists());
    // Stopping again is a no-op.
    dom.stop().unwrap();
}

#[test]
fn start_failures_are_reported_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kernel_guest("bad", dir.path());
    cfg.disks.push(DiskConfig {
        name: "missing".into(),
        path: Some(dir.path().join("nope.qcow2")),
        format: DiskFormat::Qcow2,
        backing: None,
        bus: DiskBus::Virtio,
        device: DiskDevice::Disk,
        readonly: false,
        boot_order: None,
        serial: None,
    });
    let dom = hv().create_domain(cfg.clone()).unwrap();
    let err = dom.start().unwrap_err();
    assert!(matches!(err, HypervisorError::MissingFile { .. }), "{err}");

    // A file that is not qcow2: QEMU refuses it and its message reaches the caller.
    std::fs::write(dir.path().join("nope.qcow2"), b"not a qcow2 image").unwrap();
    let dom = hv().create_domain(cfg).unwrap();
    let err = dom.start().unwrap_err();
    match &err {
        HypervisorError::EarlyExit { stderr, .. } => {
            assert!(
                stderr.contains("qcow2") || stderr.contains("format"),
                "{stderr}"
            )
        }
        other => panic!("expected EarlyExit, got {other}"),
    }
    assert!(dom.pid().is_none());
}

/// Live migration between two QEMUs on this host: throttled to 1 MiB/s it would take a
/// minute, so it switches to post-copy (QEMU runs as root here, so userfaultfd is there).
#[test]
fn live_migration_on_one_host() {
    let src_dir = tempfile::tempdir().unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    let src = hv()
        .create_domain(kernel_guest("mig-src", src_dir.path()))
        .unwrap();
    src.start().unwrap();
    let mut con = Console::connect(&src_dir.path().join("serial.sock"), T).unwrap();
    con.wait_for(READY_MARKER, T).unwrap();
    con.run("echo before-migration > /tmp/state", T).unwrap();

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let uri = format!("tcp:127.0.0.1:{port}");
    let dst = hv()
        .create_domain(kernel_guest("mig-dst", dst_dir.path()))
        .unwrap();
    dst.prepare_incoming(&uri).unwrap();
    assert_eq!(dst.state().unwrap(), DomainState::Incoming);
    assert!(kubevirt_hypervisor::qemu::postcopy_possible(None).is_ok());
    let params = kubevirt_hypervisor::MigrationParams {
        max_bandwidth: Some(1 << 20),
        post_copy: true,
        ..Default::default()
    };
    src.migrate_out(kubevirt_hypervisor::MigrationTarget::Uri(uri), &params)
        .unwrap();
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + T;
        loop {
            let s = src.migration_status().unwrap();
            if s.status == want || s.is_finished() || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let status = wait_for("active");
    assert_eq!(status.status, "active", "{status:?}");
    assert_eq!(
        status.downtime_limit_ms,
        Some(kubevirt_hypervisor::MigrationParams::DEFAULT_DOWNTIME_LIMIT_MS)
    );
    src.set_migration_downtime_limit(123).unwrap();
    assert_eq!(src.migration_status().unwrap().downtime_limit_ms, Some(123));
    src.migrate_start_postcopy().unwrap();
    let status = wait_for("completed");
    assert_eq!(status.status, "completed", "{status:?}");
    assert!(status.ram_total.unwrap_or(0) > 0);
    assert_eq!(src.state().unwrap(), DomainState::Migrated);
    // The destination runs the same guest, with its memory.
    let deadline = std::time::Instant::now() + T;
    while dst.state().unwrap() != DomainState::Running && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(dst.state().unwrap(), DomainState::Running);
    let mut dcon = Console::connect(&dst_dir.path().join("serial.sock"), T).unwrap();
    let out = dcon.run("cat /tmp/state", T).unwrap();
    assert!(out.contains("before-migration"), "{out}");
    src.stop().unwrap();
    dst.stop().unwrap();
}
