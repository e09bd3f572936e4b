//! Launcher process lifecycle with real guests: independence from its parent, adoption
//! through discover(), SIGTERM and SIGKILL cleanup, containerDisk/ephemeral/cdrom volumes.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use kubevirt_launcher::{discover, Phase};
use kubevirt_testenv::{guests, Registry, READY_MARKER, UPSTREAM_DEMO_IMAGE};
use serde_json::json;

/// containerDisk (pulled from a local registry through the `registry:5000` mapping) booted
/// through an overlay, plus an ephemeral overlay over a "PVC". The launcher is started by a
/// parent process group that is then killed -9: the VM keeps running, a new node agent finds
/// it with discover(), and SIGTERM to the launcher stops the guest and cleans everything.
#[test]
fn containerdisk_ephemeral_parent_kill_adoption_and_sigterm() {
    let g = guests();
    let registry = Registry::start().unwrap();
    registry
        .push_guest_containerdisk(UPSTREAM_DEMO_IMAGE)
        .unwrap();
    let images = tempfile::tempdir().unwrap();
    let pvc = copy_to(&g.disk_raw, images.path(), "pvc.raw");
    let pvc_before = std::fs::read(&pvc).unwrap();

    let vmi = vmi(
        "containerdisk",
        json!({"disks": [
            {"name": "containerdisk", "disk": {"bus": "virtio"}, "bootOrder": 1},
            {"name": "eph", "disk": {"bus": "sata"}}
        ]}),
        json!([
            {"name": "containerdisk", "containerDisk": {"image": format!("registry:5000/{UPSTREAM_DEMO_IMAGE}")}},
            {"name": "eph", "ephemeral": {"persistentVolumeClaim": {"claimName": "base-pvc"}}}
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let run_root = dir.path().join("vms");
    let vm = TestVm {
        run_dir: kubevirt_launcher::RunDir::new(
            run_root.join("tests_containerdisk_uid-containerdisk"),
        ),
        client: kubevirt_launcher::LauncherClient::new(
            run_root.join("tests_containerdisk_uid-containerdisk/launcher.sock"),
        ),
        dir,
    };
    std::fs::write(vm.vmi_path(), serde_json::to_vec(&vmi).unwrap()).unwrap();

    // A stand-in node agent: a shell in its own process group that starts the launcher
    // (default run dir under --run-root) and then idles.
    let mut args = vec![
        "--vmi".to_string(),
        vm.vmi_path().display().to_string(),
        "--run-root".into(),
        run_root.display().to_string(),
        "--persistent-dir".into(),
        vm.dir.path().join("persist").display().to_string(),
        "--cache-dir".into(),
        vm.dir.path().join("cache").display().to_string(),
        "--registry-mirror".into(),
        format!("registry:5000=http://{}", registry.host()),
        "--claim".into(),
        format!("base-pvc={}", pvc.display()),
    ];
    args.insert(0, launcher_bin().to_string());
    let script = format!(
        "{} && echo launched; exec sleep 600",
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut agent = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    struct KillGroup(i32);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _agent_guard = KillGroup(agent.id() as i32);
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(agent.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        // The launcher prints its daemon pid, then the shell prints "launched".
        assert!(!line.trim().is_empty(), "launcher printed nothing");
    }
    let log = vm.wait_serial(READY_MARKER, 1);
    assert!(
        log.contains("guest-disk: sda 26624 sectors"),
        "the ephemeral disk is attached: {log}"
    );
    let rt = rt();
    let st = rt.block_on(vm.client.state()).unwrap();
    let qemu_pid = st.qemu_pid.unwrap();

    // kill -9 the whole "node agent" process group.
    let pgid = agent.id() as i32;
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = agent.wait();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let launcher_pid = vm.launcher_pid().expect("launcher survives its parent");
    assert!(alive(qemu_pid));
    let mut con = console(&rt, &vm.client);
    let out = con
        .run(
            "echo still-here-$((3*3)) > /dev/vda; echo still-here-$((3*3))",
            T,
        )
        .unwrap();
    assert!(out.contains("still-here-9"), "{out}");
    // Write through the ephemeral overlay; the PVC image must not change.
    con.run(
        "echo scribble | dd of=/dev/sda bs=512 seek=100 conv=notrunc 2>/dev/null; sync; echo wrote",
        T,
    )
    .unwrap();

    // A new node agent finds and adopts the running launcher.
    let found = rt.block_on(discover(&run_root));
    assert_eq!(found.len(), 1, "{found:?}");
    let info = &found[0];
    assert!(info.is_running(), "{info:?}");
    assert_eq!(info.pid, Some(launcher_pid));
    assert_eq!(info.vmi.as_ref().unwrap().name, "containerdisk");
    assert_eq!(info.state.as_ref().unwrap().phase, Phase::Running);
    let adopted = kubevirt_launcher::LauncherClient::for_run_dir(&info.run_dir);
    assert_eq!(
        rt.block_on(adopted.state()).unwrap().qemu_pid,
        Some(qemu_pid)
    );

    // SIGTERM: graceful stop and full cleanup.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let fin = vm.wait_final();
    assert_eq!(fin.phase, Phase::Succeeded, "{fin:?}");
    wait_dead(qemu_pid);
    assert_eq!(
        vm.leftovers(),
        Vec::<String>::new(),
        "overlays and sockets removed"
    );
    assert_eq!(
        std::fs::read(&pvc).unwrap(),
        pvc_before,
        "the ephemeral base is untouched"
    );
    let found = rt.block_on(discover(&run_root));
    assert!(
        found[0].final_state.is_some() && found[0].pid.is_none(),
        "{found:?}"
    );
}

/// CD-ROM boot (hybrid ISO on SATA, bootOrder 1), ConfigDrive seed, a TPM; then kill -9 of
/// the launcher itself: QEMU and swtpm die with it, and the next launcher for the same run
/// dir cleans the left-overs and starts the VM again.
#[test]
fn cdrom_boot_configdrive_tpm_and_launcher_kill9() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let iso = copy_to(&g.boot_iso, images.path(), "boot.iso");
    let vmi = {
        let mut v = vmi(
            "cdrom",
            json!({
                "tpm": {},
                "disks": [
                    {"name": "iso", "cdrom": {"bus": "sata"}, "bootOrder": 1},
                    {"name": "cfg", "disk": {"bus": "virtio"}}
                ]
            }),
            json!([
                {"name": "iso", "hostDisk": {"path": iso, "type": "Disk"}},
                {"name": "cfg", "cloudInitConfigDrive": {"userDataBase64": "IyEvYmluL3NoCmVjaG8gQ09ORklHLURSSVZFLU9LCg=="}}
            ]),
        );
        v["spec"]["hostname"] = "cd-host".into();
        v
    };
    let vm = launch(vmi.clone(), &[]);
    let rt = rt();
    vm.wait_serial(READY_MARKER, 1);
    let st = rt.block_on(vm.client.state()).unwrap();
    let qemu_pid = st.qemu_pid.unwrap();
    let launcher_pid = vm.launcher_pid().unwrap();
    let swtpm_pid: u32 = std::fs::read_to_string(vm.run_dir.path().join("swtpm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(swtpm_pid));
    let mut con = console(&rt, &vm.client);
    let out = con
        .run(
            "ls /dev/tpm0 /dev/sr0; mount -o ro $(findfs LABEL=config-2) /mnt/seed && \\
             sh /mnt/seed/openstack/latest/user_data; cat /mnt/seed/openstack/latest/meta_data.json; umount /mnt/seed",
            T,
        )
        .unwrap();
    assert!(
        out.contains("/dev/tpm0") && out.contains("/dev/sr0"),
        "{out}"
    );
    assert!(out.contains("CONFIG-DRIVE-OK"), "{out}");
    assert!(out.contains("cd-host"), "{out}");
    drop(con);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_dead(launcher_pid);
    wait_dead(qemu_pid);
    wait_dead(swtpm_pid);
    let found = rt.block_on(discover(vm.run_dir.path().parent().unwrap()));
    let me = found
        .iter()
        .find(|i| i.run_dir.path() == vm.run_dir.path())
        .unwrap();
    assert!(
        me.pid.is_none() && me.state.is_none() && me.final_state.is_none(),
        "{me:?}"
    );

    // The next launcher for this VM cleans up and runs it again.
    let out = Command::new(launcher_bin())
        .args(launcher_args(&vm))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vm.wait_serial(READY_MARKER, 2);
    rt.block_on(vm.client.stop(Some(0))).unwrap();
    let fin = vm.wait_final();
    assert_eq!(fin.phase, Phase::Succeeded, "{fin:?}");
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

/// Live migration between two launchers on this host (shared hostDisk): the target waits
/// with `--incoming`, the source migrates through the API, the guest's memory moves.
#[test]
fn live_migration_between_launchers() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_qcow2, images.path(), "shared.qcow2");
    let v = vmi(
        "migrate",
        json!({"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}),
        json!([{"name": "root", "hostDisk": {"path": root, "type": "Disk"}}]),
    );
    let src = launch(v.clone(), &[]);
    let rt = rt();
    src.wait_serial(READY_MARKER, 1);
    let mut con = console(&rt, &src.client);
    con.run("echo memory-$((5*5)) > /tmp/state", T).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let dst = launch(v, &["--incoming".into(), uri.clone()]);
    assert_eq!(
        rt.block_on(dst.client.state()).unwrap().phase,
        Phase::Starting
    );
    // exec: URIs would run a shell command in QEMU: refused.
    let err = rt.block_on(src.client.migrate("exec:true")).unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");

    rt.block_on(src.client.migrate(&uri)).unwrap();
    let deadline = std::time::Instant::now() + T;
    let status = loop {
        let s = rt.block_on(src.client.migration_status()).unwrap();
        if s.is_finished() || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.status, "completed", "{status:?}");
    let deadline = std::time::Instant::now() + T;
    while rt.block_on(dst.client.state()).unwrap().phase != Phase::Running {
        assert!(std::time::Instant::now() < deadline, "target never ran");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(con);
    let mut dcon = console(&rt, &dst.client);
    let out = dcon.run("cat /tmp/state", T).unwrap();
    assert!(out.contains("memory-25"), "{out}");

    rt.block_on(src.client.stop(Some(0))).unwrap();
    assert_eq!(src.wait_final().phase, Phase::Succeeded);
    rt.block_on(dst.client.stop(Some(0))).unwrap();
    assert_eq!(dst.wait_final().phase, Phase::Succeeded);
    assert_eq!(src.leftovers(), Vec::<String>::new());
    assert_eq!(dst.leftovers(), Vec::<String>::new());
}
