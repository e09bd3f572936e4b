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

    let stats = dom.stats().unwrap();
    assert_eq!(stats.vcpus.len(), 1);
    assert!(stats.vmm_rss_kib > 0);

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
        path: dir.path().join("nope.qcow2"),
        format: DiskFormat::Qcow2,
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

/// Live migration between two QEMUs on this host.
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
    src.migrate_out(&uri).unwrap();
    let deadline = std::time::Instant::now() + T;
    let status = loop {
        let s = src.migration_status().unwrap();
        if s.is_finished() || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
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
