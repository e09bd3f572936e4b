//! Launcher process lifecycle with real guests: independence from its parent, a new client
//! finding it by its run directory, SIGTERM and SIGKILL cleanup, the wait-for-sync mode,
//! containerDisk/ephemeral/cdrom volumes, live migration between two launchers.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use kubevirt_hypervisor::DomainState;
use kubevirt_launcher::{IncomingMigration, LauncherClient, Stage, SyncRequest};
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
    // The containerDisk holds the boot image: the guest sees a disk of its size.
    let sectors = std::fs::metadata(&g.disk_raw).unwrap().len() / 512;
    assert!(
        log.contains(&format!("guest-disk: sda {sectors} sectors")),
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

    // Such a VM, once its pod is gone, leaves a claim naming a missing run directory and
    // an empty VMM cgroup; the next claim on the host drops both.
    use kubevirt_launcher::vmm_user::{cgroup_name, CLAIMS_DIR, VMM_UID_BASE};
    let slot = (0xff00..0xffff)
        .find(|s: &u32| {
            !std::path::Path::new(CLAIMS_DIR)
                .join(s.to_string())
                .exists()
        })
        .unwrap();
    let stale_claim = std::path::Path::new(CLAIMS_DIR).join(slot.to_string());
    std::fs::write(
        &stale_claim,
        format!("/run/kubevirt-rs/gone-{}", std::process::id()),
    )
    .unwrap();
    let leaked = kubevirt_hypervisor::qemu::cgroup::VmmCgroup::create(
        &cgroup_name(VMM_UID_BASE + slot),
        Default::default(),
    )
    .unwrap();
    let procs = leaked.procs_files();
    let present = || {
        procs
            .iter()
            .any(|p| std::path::Path::new(p.to_str().unwrap()).exists())
    };
    assert!(present());

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
    assert!(
        !stale_claim.exists() && !present(),
        "the stale claim and its cgroup are gone"
    );
    vm.wait_serial(READY_MARKER, 2);
    rt.block_on(vm.client.stop(Some(0))).unwrap();
    let (code, fin) = vm.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

/// A VMI on the pod network (masquerade) with a hostDisk root and an emptyDisk (serial
/// `scratch`), as two launcher pods of one node run it during a migration.
fn migratable_vmi(name: &str, root: &std::path::Path) -> serde_json::Value {
    let mut v = vmi(
        name,
        json!({
            "disks": [
                {"name": "root", "disk": {"bus": "virtio"}},
                {"name": "scratch", "disk": {"bus": "virtio"}, "serial": "scratch"}
            ],
            "interfaces": [{"name": "default", "masquerade": {}}]
        }),
        json!([
            {"name": "root", "hostDisk": {"path": root, "type": "Disk"}},
            {"name": "scratch", "emptyDisk": {"capacity": "16Mi"}}
        ]),
    );
    v["spec"]["networks"] = json!([{"name": "default", "pod": {}}]);
    v
}

/// Syncs `vm` with the VMI (as a migration target of `source` if given).
fn sync(rt: &tokio::runtime::Runtime, vm: &TestVm, v: &serde_json::Value, source: Option<&TestVm>) {
    rt.block_on(vm.client.sync(&SyncRequest {
        vmi: v.clone(),
        secrets: Default::default(),
        incoming: source.map(|s| IncomingMigration {
            source_run_dir: Some(s.run_dir.path().to_path_buf()),
        }),
    }))
    .unwrap();
}

/// The pod network of VMI `uid` (podnet's record), if any.
fn pod_network(uid: &str) -> Option<kubevirt_podnet::PodNetworkHandle> {
    kubevirt_podnet::PodNetwork::new(kubevirt_podnet::PodNetworkConfig::default())
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .find(|h| h.vm_id == uid)
}

/// The taps in a pod network's namespace.
fn taps(h: &kubevirt_podnet::PodNetworkHandle) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", &h.netns_name, "-o", "link", "show", "type", "tun"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
        .collect()
}

/// The line the guest's TCP server on port 8080 says to a client connecting to the pod IP
/// (read up to the newline: busybox `nc -l` may keep the connection open after it).
fn ask_guest(pod_ip: &str) -> String {
    use std::io::BufRead;
    let addr: std::net::SocketAddr = format!("{pod_ip}:8080").parse().unwrap();
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Ok(s) =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        {
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut line = String::new();
            if std::io::BufReader::new(s).read_line(&mut line).is_ok() && !line.is_empty() {
                return line;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never answered on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Boots the source (sync like the node agent) and leaves in its guest: a marker in memory,
/// one on the emptyDisk, and a TCP server on port 8080 answering with the memory marker.
/// Returns the launcher and its console (kept: a dropped test console stays connected).
fn boot_source(
    rt: &tokio::runtime::Runtime,
    runs: &std::path::Path,
    v: &serde_json::Value,
    extra: &[&str],
) -> (TestVm, kubevirt_testenv::Console) {
    let uid = v["metadata"]["uid"].as_str().unwrap();
    let name = v["metadata"]["name"].as_str().unwrap();
    let src = start_for_sync_with(
        kubevirt_launcher::RunDir::new(runs.join("pod-src")),
        name,
        uid,
        extra,
    );
    sync(rt, &src, v, None);
    src.wait_started();
    src.wait_serial("guest-ip: 10.0.2.2", 1);
    let mut con = console(rt, &src.client);
    con.run(
        "echo memory-$((5*5)) > /tmp/state; \
         for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = scratch ] && dev=/dev/${d##*/}; done; \
         echo disk-$((6*7)) | dd of=$dev conv=fsync 2>/dev/null",
        T,
    )
    .unwrap();
    con.send_line(
        "(while true; do echo from-$(cat /tmp/state) | nc -l -p 8080; done) >/dev/null 2>&1 &",
    )
    .unwrap();
    con.run("until netstat -ltn | grep -q :8080; do sleep 0.2; done", T)
        .unwrap();
    (src, con)
}

/// Live migration between two launcher pods of one VMI on this node, as the node agent
/// drives it: the target is synced with `incoming` (its run dir beside the source's), takes
/// the source's emptyDisk over and joins the pod network on a tap of its own; the source
/// migrates to the target's `incomingUri` (a socket only root and the target's QEMU reach).
/// The guest keeps its memory, its disk, its pod IP and MAC, and is reachable through the
/// pod IP; the source exits 0 with `migratedOut`, leaving the network to the target, which
/// removes it when it stops.
#[test]
fn live_migration_between_launchers() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "shared.img");
    let v = migratable_vmi("migrate", &root);
    let rt = rt();
    let runs = tempfile::tempdir().unwrap();
    let (mut src, _) = boot_source(&rt, runs.path(), &v, &[]);
    let before = src.status(&rt).interfaces;
    assert!(ask_guest(before[0].ip_address.as_deref().unwrap()).contains("from-memory-25"));

    let mut dst = start_for_sync(
        kubevirt_launcher::RunDir::new(runs.path().join("pod-dst")),
        "migrate",
        "uid-migrate",
    );
    sync(&rt, &dst, &v, Some(&src));
    let waiting = wait_status(&dst, |s| s.incoming_uri.is_some());
    assert_eq!(waiting.stage, Stage::Started);
    assert_eq!(waiting.domain, Some(DomainState::Incoming));
    assert_eq!(waiting.interfaces, before, "same MAC and pod IP");
    let uri = waiting.incoming_uri.unwrap();
    assert_eq!(
        uri,
        format!("unix:{}", dst.run_dir.migration_socket().display())
    );
    // The emptyDisk is the source's file, not a new one.
    let inode = |vm: &TestVm| {
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(vm.run_dir.path().join("empty-scratch.img")).unwrap(),
        )
    };
    assert_eq!(inode(&dst), inode(&src));
    let net = pod_network("uid-migrate").unwrap();
    assert_eq!(taps(&net), ["tap0", "tap1"]);
    // Nothing else than the guest's arrival: no stop grace, no pausing a guest not here.
    let err = rt.block_on(dst.client.pause()).unwrap_err().to_string();
    assert!(err.contains("409") && err.contains("not arrived"), "{err}");
    // exec: URIs would run a shell command in QEMU: refused.
    let err = rt
        .block_on(src.client.migrate(&migrate_to("exec:true")))
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");

    rt.block_on(src.client.migrate(&migrate_to(&uri))).unwrap();
    let (code, fin) = src.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert!(fin.migrated_out, "{fin:?}");
    let m = fin.migration.as_ref().unwrap();
    assert_eq!(m.status, "completed", "{m:?}");
    assert!(
        m.ram_total.unwrap_or(0) > 0 && m.total_time_ms.is_some(),
        "{m:?}"
    );
    assert_eq!(src.leftovers(), Vec::<String>::new());
    assert_eq!(taps(&net), ["tap1"], "the source left its tap only");

    let arrived = wait_status(&dst, |s| s.domain == Some(DomainState::Running));
    assert_eq!(arrived.incoming_uri, None);
    assert_eq!(arrived.migration.as_ref().unwrap().status, "completed");
    assert_eq!(arrived.interfaces, before);
    let mut con = console(&rt, &dst.client);
    let out = con
        .run(
            "cat /tmp/state; echo 3 > /proc/sys/vm/drop_caches; dd if=$dev bs=7 count=1 2>/dev/null; \
             udhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/true >/dev/null 2>&1; echo dhcp-$?",
            T,
        )
        .unwrap();
    assert!(out.contains("memory-25"), "{out}");
    assert!(out.contains("disk-42"), "{out}");
    assert!(
        out.contains("dhcp-0"),
        "the target's DHCP server answers: {out}"
    );
    let pod_ip = before[0].ip_address.as_deref().unwrap();
    assert_eq!(ask_guest(pod_ip).trim(), "from-memory-25");

    rt.block_on(dst.client.stop(Some(0))).unwrap();
    let (code, fin) = dst.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert!(!fin.migrated_out && fin.failure.is_none(), "{fin:?}");
    assert_eq!(dst.leftovers(), Vec::<String>::new());
    assert!(
        pod_network("uid-migrate").is_none(),
        "the last launcher removed it"
    );
}

/// A migration as to another node: the target's run directory is not beside the source's
/// and it is told of no source, so it makes its own emptyDisk and serves it
/// (`incomingStorageUri`); the source copies what its guest wrote there while the guest
/// runs (block migration), then moves the guest. The guest reads its memory and its disk on
/// the target, whose file is not the source's. The root disk is a ReadWriteMany claim both
/// reach; a hostDisk, which only one node has, is refused.
#[test]
fn block_migration_to_a_launcher_of_another_node() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "shared.img");
    let mut v = migratable_vmi("blockmig", &root);
    let rt = rt();
    let incoming = |dst: &TestVm, v: &serde_json::Value| {
        rt.block_on(dst.client.sync(&SyncRequest {
            vmi: v.clone(),
            secrets: Default::default(),
            incoming: Some(IncomingMigration {
                source_run_dir: None,
            }),
        }))
        .unwrap()
    };
    let (src_runs, dst_runs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut refused = start_for_sync(
        kubevirt_launcher::RunDir::new(dst_runs.path().join("pod-refused")),
        "blockmig",
        "uid-blockmig",
    );
    incoming(&refused, &v);
    let (_, fin) = refused.wait_final();
    let failure = fin.failure.unwrap();
    assert_eq!(failure.fields[0].field, "spec.volumes[0]", "{failure:?}");
    assert_eq!(
        failure.fields[0].reason,
        "cannot migrate VMI with non-shared HostDisk"
    );

    v["spec"]["volumes"][0] =
        json!({"name": "root", "persistentVolumeClaim": {"claimName": "root"}});
    v["status"] = json!({"volumeStatus": [{"name": "root",
        "persistentVolumeClaimInfo": {"claimName": "root", "accessModes": ["ReadWriteMany"]}}]});
    let claim = format!("root={}", root.display());
    let (mut src, _) = boot_source(&rt, src_runs.path(), &v, &["--claim", &claim]);
    let before = src.status(&rt).interfaces;

    let mut dst = start_for_sync_with(
        kubevirt_launcher::RunDir::new(dst_runs.path().join("pod-dst")),
        "blockmig",
        "uid-blockmig",
        &["--claim", &claim],
    );
    incoming(&dst, &v);
    let waiting = wait_status(&dst, |s| s.incoming_uri.is_some());
    let storage = waiting.incoming_storage_uri.clone().unwrap();
    assert_eq!(
        storage,
        format!("unix:{}", dst.run_dir.path().join("vmm/nbd.sock").display())
    );
    let file = |vm: &TestVm| vm.run_dir.path().join("empty-scratch.img");
    let inode =
        |vm: &TestVm| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(file(vm)).unwrap());
    assert_ne!(
        inode(&dst),
        inode(&src),
        "the target made its own emptyDisk"
    );
    let mut req = migrate_to(&waiting.incoming_uri.unwrap());
    req.storage_uri = Some(storage);
    rt.block_on(src.client.migrate(&req)).unwrap();
    let (code, fin) = src.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert!(fin.migrated_out, "{fin:?}");
    assert_eq!(fin.migration.as_ref().unwrap().status, "completed");

    let arrived = wait_status(&dst, |s| s.domain == Some(DomainState::Running));
    assert_eq!(arrived.incoming_storage_uri, None);
    assert_eq!(arrived.interfaces, before);
    let mut con = console(&rt, &dst.client);
    let out = con
        .run(
            "cat /tmp/state; for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = scratch ] && dev=/dev/${d##*/}; done; \
             echo 3 > /proc/sys/vm/drop_caches; dd if=$dev bs=7 count=1 2>/dev/null",
            T,
        )
        .unwrap();
    assert!(out.contains("memory-25"), "{out}");
    assert!(out.contains("disk-42"), "{out}");
    // The bytes are in the target's own file.
    let mut head = [0u8; 7];
    std::io::Read::read_exact(&mut std::fs::File::open(file(&dst)).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"disk-42");

    rt.block_on(dst.client.stop(Some(0))).unwrap();
    let (code, fin) = dst.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert_eq!(dst.leftovers(), Vec::<String>::new());
}

/// A migration throttled to 1 MiB/s is cancelled through the API: the guest keeps running
/// on the source, the target exits with a failure and leaves no tap behind. A second one
/// runs into its completion timeout, a third into a SIGTERM of the source. A target stopped
/// before anything came stops at once.
#[test]
fn cancelled_and_timed_out_migrations_leave_the_guest_on_the_source() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "shared.img");
    let v = migratable_vmi("nomigrate", &root);
    let rt = rt();
    let runs = tempfile::tempdir().unwrap();
    let (mut src, mut con) = boot_source(&rt, runs.path(), &v, &[]);
    let net = pod_network("uid-nomigrate").unwrap();
    let err = rt
        .block_on(src.client.migrate_cancel())
        .unwrap_err()
        .to_string();
    assert!(err.contains("409"), "nothing to cancel: {err}");
    // A target stopped before anything came: at once, cleanly, leaving only its tap.
    let mut idle = start_for_sync(
        kubevirt_launcher::RunDir::new(runs.path().join("pod-idle")),
        "nomigrate",
        "uid-nomigrate",
    );
    sync(&rt, &idle, &v, Some(&src));
    wait_status(&idle, |s| s.incoming_uri.is_some());
    rt.block_on(idle.client.stop(None)).unwrap();
    let (code, fin) = idle.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert!(
        fin.failure.is_none() && fin.incoming_uri.is_none(),
        "{fin:?}"
    );
    assert_eq!(taps(&net), ["tap0"]);

    let slow = |uri: &str, timeout: Option<u64>| kubevirt_launcher::MigrateRequest {
        uri: uri.into(),
        storage_uri: None,
        options: kubevirt_launcher::MigrationOptions {
            bandwidth_bytes_per_second: Some(1 << 20),
            completion_timeout_seconds: timeout,
            ..Default::default()
        },
    };
    for (pod, timeout) in [("pod-dst1", None), ("pod-dst2", Some(1))] {
        let mut dst = start_for_sync(
            kubevirt_launcher::RunDir::new(runs.path().join(pod)),
            "nomigrate",
            "uid-nomigrate",
        );
        sync(&rt, &dst, &v, Some(&src));
        let uri = wait_status(&dst, |s| s.incoming_uri.is_some())
            .incoming_uri
            .unwrap();
        assert_eq!(taps(&net), ["tap0", "tap1"]);
        rt.block_on(src.client.migrate(&slow(&uri, timeout)))
            .unwrap();
        let st = match timeout {
            None => {
                let active = wait_status(&src, |s| {
                    s.migration.as_ref().is_some_and(|m| m.status == "active")
                });
                // QEMU plans the switch-over with a short pause first.
                assert_eq!(active.migration.unwrap().downtime_limit_ms, Some(20));
                let err = rt
                    .block_on(src.client.migrate(&slow(&uri, None)))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("409") && err.contains("in progress"), "{err}");
                rt.block_on(src.client.migrate_cancel()).unwrap();
                wait_status(&src, |s| {
                    s.migration
                        .as_ref()
                        .is_some_and(|m| m.status == "cancelled")
                })
            }
            // The first migration's `cancelled` is still there: wait for this one's.
            Some(_) => wait_status(&src, |s| {
                s.migration.as_ref().is_some_and(|m| {
                    m.status == "cancelled"
                        && m.error.as_deref() == Some("migration did not complete within 1 seconds")
                })
            }),
        };
        assert_eq!(st.domain, Some(DomainState::Running));
        assert!(!st.migrated_out);
        let (code, fin) = dst.wait_final();
        assert_eq!(code, Some(1), "{fin:?}");
        let failure = fin.failure.expect("the target failed");
        assert_eq!(failure.step, kubevirt_launcher::FailedStep::Hypervisor);
        assert!(
            failure
                .message
                .starts_with("incoming live migration failed: "),
            "{failure:?}"
        );
        assert_eq!(fin.incoming_uri, None);
        assert_eq!(dst.leftovers(), Vec::<String>::new());
        assert_eq!(taps(&net), ["tap0"], "the target left no tap behind");
    }
    // A guest dirtying 16 MiB over and over, sent at 64 MiB/s: no pass leaves less than
    // a switch-over within 80 ms could send, so each pass from the third doubles the
    // downtime limit QEMU plans with, up to the migration's own.
    con.run(
        "dd if=/dev/urandom of=/tmp/d bs=1M count=16 2>/dev/null; \
         (while true; do cp /tmp/d /tmp/d2; done) & echo $! > /tmp/dirtier; echo dirt-$((2+2))",
        T,
    )
    .unwrap();
    let mut dst = start_for_sync(
        kubevirt_launcher::RunDir::new(runs.path().join("pod-ramp")),
        "nomigrate",
        "uid-nomigrate",
    );
    sync(&rt, &dst, &v, Some(&src));
    let uri = wait_status(&dst, |s| s.incoming_uri.is_some())
        .incoming_uri
        .unwrap();
    let mut req = slow(&uri, None);
    req.options.bandwidth_bytes_per_second = Some(64 << 20);
    req.options.downtime_limit_ms = Some(80);
    rt.block_on(src.client.migrate(&req)).unwrap();
    // The last migration's `cancelled` is still there: this one's `active` first.
    wait_status(&src, |s| {
        s.migration.as_ref().is_some_and(|m| m.status == "active")
    });
    let ramped = wait_status(&src, |s| {
        s.migration.as_ref().is_some_and(|m| {
            m.downtime_limit_ms == Some(80) || !kubevirt_launcher::migration_in_progress(&m.status)
        })
    });
    let m = ramped.migration.unwrap();
    assert_eq!(
        (m.status.as_str(), m.downtime_limit_ms),
        ("active", Some(80)),
        "{m:?}"
    );
    rt.block_on(src.client.migrate_cancel()).unwrap();
    wait_status(&src, |s| {
        s.migration
            .as_ref()
            .is_some_and(|m| m.status == "cancelled")
    });
    assert_eq!(dst.wait_final().0, Some(1));
    con.run(
        "kill $(cat /tmp/dirtier); rm /tmp/d /tmp/d2; echo clean-$((2+2))",
        T,
    )
    .unwrap();

    let out = con.run("echo still-$(cat /tmp/state)", T).unwrap();
    assert!(out.contains("still-memory-25"), "{out}");
    assert!(ask_guest(net.pod_ip.to_string().as_str()).contains("from-memory-25"));

    // SIGTERM (as the node agent stops an orphan) during a migration: the source calls it
    // off and shuts its guest down, the target fails; the last one removes the network.
    let mut dst = start_for_sync(
        kubevirt_launcher::RunDir::new(runs.path().join("pod-dst3")),
        "nomigrate",
        "uid-nomigrate",
    );
    sync(&rt, &dst, &v, Some(&src));
    let uri = wait_status(&dst, |s| s.incoming_uri.is_some())
        .incoming_uri
        .unwrap();
    rt.block_on(src.client.migrate(&slow(&uri, None))).unwrap();
    wait_status(&src, |s| {
        s.migration.as_ref().is_some_and(|m| m.status == "active")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(src.launcher_pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (code, fin) = src.wait_final();
    assert_eq!(code, Some(0), "{fin:?}");
    assert!(fin.stop_requested && !fin.migrated_out, "{fin:?}");
    assert_eq!(fin.migration.unwrap().status, "cancelled");
    assert_eq!(dst.wait_final().0, Some(1));
    assert_eq!(src.leftovers(), Vec::<String>::new());
    assert_eq!(dst.leftovers(), Vec::<String>::new());
    assert!(pod_network("uid-nomigrate").is_none());
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
    let runs = tempfile::tempdir().unwrap();
    let start = |pod: &str| {
        start_for_sync(
            kubevirt_launcher::RunDir::new(runs.path().join(pod)),
            "synced",
            "uid-synced",
        )
    };
    let mut vm = start("pod-a");
    let st = vm.status(&rt);
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
            incoming: None,
        }))
        .unwrap_err()
        .to_string();
    assert!(err.contains("409") && err.contains("uid-synced"), "{err}");
    rt.block_on(vm.client.sync(&SyncRequest {
        vmi: v.clone(),
        secrets: Default::default(),
        incoming: None,
    }))
    .unwrap();
    vm.wait_started();
    vm.wait_serial(READY_MARKER, 1);
    rt.block_on(vm.client.stop(Some(0))).unwrap();
    assert_eq!(vm.wait_final().0, Some(0));

    // Terminated while waiting: nothing to stop, exit 0.
    let mut waiting = start("pod-b");
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

fn migrate_to(uri: &str) -> kubevirt_launcher::MigrateRequest {
    kubevirt_launcher::MigrateRequest {
        storage_uri: None,
        uri: uri.into(),
        options: Default::default(),
    }
}
