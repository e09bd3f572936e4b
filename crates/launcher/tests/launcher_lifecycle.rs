//! Launcher process lifecycle with real guests: independence from its parent, a new client
//! finding it by its run directory, SIGTERM and SIGKILL cleanup, the wait-for-sync mode,
//! containerDisk/ephemeral/cdrom volumes.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use kubevirt_hypervisor::DomainState;
use kubevirt_launcher::{LauncherClient, Stage, SyncRequest};
use kubevirt_testenv::{guests, Registry, READY_MARKER, UPSTREAM_DEMO_IMAGE};
use serde_json::json;

/// containerDisk (pulled from a local registry through the `registry:5000` mapping) booted
/// through an overlay, plus an ephemeral overlay over a "PVC". The launcher is started, in
/// its own process group, by a parent process group that is then killed -9: the VM keeps
/// running, a new client finds it by its run directory, and SIGTERM to the launcher stops
/// the guest and cleans everything.
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
    let mut vm = TestVm {
        run_dir: kubevirt_launcher::RunDir::new(run_root.join("uid-containerdisk")),
        client: kubevirt_launcher::LauncherClient::new(
            run_root.join("uid-containerdisk/launcher.sock"),
        ),
        dir,
        child: None,
    };
    std::fs::write(vm.vmi_path(), serde_json::to_vec(&vmi).unwrap()).unwrap();

    // A stand-in node agent: a shell in its own process group that starts the launcher in a
    // session of its own (default run dir under --run-root, from its identity) and idles.
    let mut args = vec![
        "--namespace".to_string(),
        "tests".into(),
        "--name".into(),
        "containerdisk".into(),
        "--uid".into(),
        "uid-containerdisk".into(),
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
        "setsid {} >/dev/null 2>&1 & echo launched; exec sleep 600",
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
        assert_eq!(line.trim(), "launched");
    }
    let log = vm.wait_serial(READY_MARKER, 1);
    assert!(
        log.contains("guest-disk: sda 26624 sectors"),
        "the ephemeral disk is attached: {log}"
    );
    let rt = rt();
    let st = vm.status(&rt);
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

    // A new client finds the running launcher by its run directory.
    let adopted = LauncherClient::for_run_dir(&vm.run_dir);
    let st = rt.block_on(adopted.status()).unwrap();
    assert_eq!(st.qemu_pid, Some(qemu_pid));
    assert_eq!(st.domain, Some(DomainState::Running));
    assert_eq!(st.vmi.as_ref().unwrap().name, "containerdisk");

    // SIGTERM: graceful stop and full cleanup.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (_, fin) = vm.wait_final();
    assert!(fin.stop_requested && fin.failure.is_none(), "{fin:?}");
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
    assert!(vm.launcher_pid().is_none());
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
    let mut vm = launch(vmi.clone(), &[]);
    let rt = rt();
    vm.wait_serial(READY_MARKER, 1);
    let st = vm.status(&rt);
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
    assert!(vm.launcher_pid().is_none());
    assert!(
        kubevirt_launcher::final_status(&vm.run_dir).is_none(),
        "killed -9: no record"
    );
    let _ = vm.child.take().map(|mut c| c.wait());

    // The next launcher for this VM cleans up and runs it again.
    vm.child = Some(
        Command::new(launcher_bin())
            .args(launcher_args(&vm))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    vm.wait_started();
    vm.wait_serial(READY_MARKER, 2);
    rt.block_on(vm.client.stop(Some(0))).unwrap();
    let (code, fin) = vm.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

/// Live migration between two launchers on this host (shared hostDisk): the target waits
/// with `--incoming`, the source migrates through the API, the guest's memory moves.
#[test]
fn live_migration_between_launchers() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "shared.img");
    let v = vmi(
        "migrate",
        json!({"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}),
        json!([{"name": "root", "hostDisk": {"path": root, "type": "Disk"}}]),
    );
    let mut src = launch(v.clone(), &[]);
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
    let mut dst = launch(v, &["--incoming".into(), uri.clone()]);
    assert_eq!(dst.status(&rt).domain, Some(DomainState::Incoming));
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
    while dst.status(&rt).domain != Some(DomainState::Running) {
        assert!(std::time::Instant::now() < deadline, "target never ran");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(con);
    let mut dcon = console(&rt, &dst.client);
    let out = dcon.run("cat /tmp/state", T).unwrap();
    assert!(out.contains("memory-25"), "{out}");

    rt.block_on(src.client.stop(Some(0))).unwrap();
    assert_eq!(src.wait_final().0, Some(0));
    rt.block_on(dst.client.stop(Some(0))).unwrap();
    assert_eq!(dst.wait_final().0, Some(0));
    assert_eq!(src.leftovers(), Vec::<String>::new());
    assert_eq!(dst.leftovers(), Vec::<String>::new());
}

/// Without `--vmi` the launcher waits for the node agent's sync: it reports WaitingForSync,
/// refuses a VMI it was not started for, runs the one it was, and a SIGTERM while it waits
/// ends it cleanly.
#[test]
fn waits_for_sync_and_runs_only_its_vmi() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "root.img");
    let v = vmi(
        "synced",
        json!({"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}),
        json!([{"name": "root", "hostDisk": {"path": root, "type": "Disk"}}]),
    );
    let rt = rt();
    let start = |dir: &tempfile::TempDir| {
        let run_dir = kubevirt_launcher::RunDir::new(dir.path().join("run"));
        std::fs::create_dir_all(run_dir.path()).unwrap();
        let child = Command::new(launcher_bin())
            .args([
                "--namespace",
                "tests",
                "--name",
                "synced",
                "--uid",
                "uid-synced",
            ])
            .arg("--run-dir")
            .arg(run_dir.path())
            .arg("--persistent-dir")
            .arg(dir.path().join("persist"))
            .arg("--host-disk-dir")
            .arg(std::env::temp_dir())
            .stdout(std::fs::File::create(run_dir.launcher_log()).unwrap())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        (run_dir, child)
    };
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, child) = start(&dir);
    let mut vm = TestVm {
        client: LauncherClient::for_run_dir(&run_dir),
        run_dir,
        dir,
        child: Some(child),
    };
    let deadline = std::time::Instant::now() + T;
    let st = loop {
        if let Ok(st) = rt.block_on(vm.client.status()) {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "launcher never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(st.stage, Stage::WaitingForSync);
    assert_eq!(st.vmi.as_ref().unwrap().uid, "uid-synced");
    let err = rt.block_on(vm.client.pause()).unwrap_err().to_string();
    assert!(err.contains("409"), "nothing runs yet: {err}");
    let mut other = v.clone();
    other["metadata"]["uid"] = json!("someone-else");
    let err = rt
        .block_on(vm.client.sync(&SyncRequest {
            vmi: other,
            secrets: Default::default(),
        }))
        .unwrap_err()
        .to_string();
    assert!(err.contains("409") && err.contains("uid-synced"), "{err}");
    rt.block_on(vm.client.sync(&SyncRequest {
        vmi: v.clone(),
        secrets: Default::default(),
    }))
    .unwrap();
    vm.wait_started();
    vm.wait_serial(READY_MARKER, 1);
    rt.block_on(vm.client.stop(Some(0))).unwrap();
    assert_eq!(vm.wait_final().0, Some(0));

    // Terminated while waiting: nothing to stop, exit 0.
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, child) = start(&dir);
    let mut waiting = TestVm {
        client: LauncherClient::for_run_dir(&run_dir),
        run_dir,
        dir,
        child: Some(child),
    };
    let deadline = std::time::Instant::now() + T;
    while rt.block_on(waiting.client.status()).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "launcher never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = waiting.child.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (code, fin) = waiting.wait_final();
    assert_eq!(code, Some(0));
    assert!(fin.stop_requested && fin.exit.is_none(), "{fin:?}");
}
