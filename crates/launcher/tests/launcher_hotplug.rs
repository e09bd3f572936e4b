//! Volumes of a running guest through the launcher's API (TCG): filesystem freeze, SCSI
//! and virtio hot-plug and unplug, online growth of a claim's disk and of a hot-plugged one,
//! CD-ROM media changes (also into a cdrom that booted with an empty tray).

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kubevirt_launcher::{ClientError, HotplugBus, HotplugVolumeRequest};
use kubevirt_testenv::{guests, Console, READY_MARKER};
use serde_json::json;

/// The value the guest's shell prints for `expr` (the text of `$(expr)`).
fn guest_value(con: &mut Console, expr: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let tag = format!("V{}", SEQ.fetch_add(1, Ordering::Relaxed));
    let out = con
        .run(&format!("echo {tag}=[$({expr})]"), T)
        .unwrap_or_else(|e| panic!("{expr}: {e:#}"));
    // The last `TAG=[...]` not followed by `$(` (that is the echo of the typed line).
    out.match_indices(&format!("{tag}=["))
        .filter_map(|(i, m)| {
            let rest = &out[i + m.len()..];
            (!rest.starts_with("$(")).then(|| rest.split(']').next().unwrap_or("").to_string())
        })
        .last()
        .unwrap_or_else(|| panic!("no value for {expr} in {out}"))
}

/// Polls `expr` in the guest until `ok` accepts its value.
fn wait_guest(con: &mut Console, expr: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    loop {
        let v = guest_value(con, expr);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{expr}: last value {v:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A raw image of `size` bytes starting with `head`.
fn image(dir: &Path, name: &str, size: u64, head: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(head).unwrap();
    f.set_len(size).unwrap();
    p
}

/// Every block node and fd set the launcher dropped went without complaint.
fn assert_clean_teardowns(vm: &TestVm) {
    let log = std::fs::read_to_string(vm.run_dir.launcher_log()).unwrap_or_default();
    for bad in ["cannot delete block node", "cannot remove fd set"] {
        assert!(!log.contains(bad), "{log}");
    }
}

fn status_code(e: ClientError) -> u16 {
    match e {
        ClientError::Status { status, .. } => status,
        other => panic!("unexpected error {other}"),
    }
}

fn request(name: &str, path: &Path, bus: HotplugBus) -> HotplugVolumeRequest {
    HotplugVolumeRequest {
        name: name.into(),
        path: path.to_path_buf(),
        bus,
        serial: None,
        read_only: false,
        cdrom: false,
        format: None,
    }
}

/// Freeze and thaw through the real guest agent (automatic thaw too), then a SCSI disk
/// hot-plugged, read, grown and unplugged, a claim's disk grown online, and the errors.
#[test]
fn freeze_thaw_scsi_hotplug_resize_and_unplug() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "root.img");
    let claim = image(images.path(), "claim.img", 8 << 20, b"CLAIM");
    let v = vmi(
        "hotplug",
        json!({"disks": [
            {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
            {"name": "data", "disk": {"bus": "virtio"}, "serial": "claim1"}
        ]}),
        json!([
            {"name": "root", "hostDisk": {"path": root, "type": "Disk"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc"}}
        ]),
    );
    let vm = launch(
        v,
        &["--claim".into(), format!("data-pvc={}", claim.display())],
    );
    let rt = rt();
    vm.wait_serial(READY_MARKER, 1);
    let mut con = console(&rt, &vm.client);

    // Freeze needs the agent: wait until the launcher saw it.
    let deadline = Instant::now() + T;
    while !vm.status(&rt).agent_connected {
        assert!(Instant::now() < deadline, "guest agent never connected");
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(vm.client.freeze(None)).unwrap();
    assert_eq!(vm.status(&rt).fs_freeze_status.as_deref(), Some("frozen"));
    rt.block_on(vm.client.freeze(None)).unwrap();
    rt.block_on(vm.client.unfreeze()).unwrap();
    assert_eq!(vm.status(&rt).fs_freeze_status, None);
    rt.block_on(vm.client.unfreeze()).unwrap();
    // Without an unfreeze, the launcher thaws by itself.
    rt.block_on(vm.client.freeze(Some(Duration::from_secs(1))))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while vm.status(&rt).fs_freeze_status.is_some() {
        assert!(Instant::now() < deadline, "never thawed");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SCSI hot-plug: the disk appears with its serial and the host's bytes.
    let hp = image(images.path(), "hp.img", 4 << 20, b"HOTPLUG-DATA-4242");
    let mut req = request("hp-disk", &hp, HotplugBus::Scsi);
    req.serial = Some("HP-SERIAL1".into());
    let st = rt.block_on(vm.client.hotplug_volume(&req)).unwrap();
    assert_eq!(st.target, "hotplug-hp-disk");
    assert_eq!(st.size_bytes, 4 << 20);
    let status = vm.status(&rt);
    assert_eq!(status.hotplug_volumes, vec![st.clone()]);
    wait_guest(&mut con, "cat /sys/block/sda/size 2>/dev/null", |v| {
        v == "8192"
    });
    assert_eq!(
        guest_value(
            &mut con,
            "cat /sys/block/sda/device/vpd_pg80 2>/dev/null | tr -dc A-Z0-9-"
        ),
        "HP-SERIAL1"
    );
    assert_eq!(
        guest_value(&mut con, "mdev -s; head -c 17 /dev/sda"),
        "HOTPLUG-DATA-4242"
    );

    // Refusals: a taken name, a boot disk's name, a bad name, a missing file, a directory.
    let err = rt.block_on(vm.client.hotplug_volume(&req)).unwrap_err();
    assert_eq!(status_code(err), 409);
    let err = rt
        .block_on(
            vm.client
                .hotplug_volume(&request("data", &hp, HotplugBus::Scsi)),
        )
        .unwrap_err();
    assert_eq!(status_code(err), 409);
    let err = rt
        .block_on(
            vm.client
                .hotplug_volume(&request("Bad_Name", &hp, HotplugBus::Scsi)),
        )
        .unwrap_err();
    assert_eq!(status_code(err), 400);
    let missing = images.path().join("missing.img");
    let err = rt
        .block_on(
            vm.client
                .hotplug_volume(&request("m", &missing, HotplugBus::Scsi)),
        )
        .unwrap_err();
    assert_eq!(status_code(err), 400);
    let err = rt
        .block_on(
            vm.client
                .hotplug_volume(&request("d", images.path(), HotplugBus::Scsi)),
        )
        .unwrap_err();
    assert_eq!(status_code(err), 400);
    assert_eq!(
        status_code(rt.block_on(vm.client.unplug_volume("nope")).unwrap_err()),
        404
    );
    assert_eq!(
        status_code(rt.block_on(vm.client.resize_volume("nope")).unwrap_err()),
        404
    );

    // Online growth: the claim's file and the hot-plugged one grow on the host first.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&claim)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    assert_eq!(guest_value(&mut con, "cat /sys/block/vdb/size"), "16384");
    rt.block_on(vm.client.resize_volume("data")).unwrap();
    wait_guest(&mut con, "cat /sys/block/vdb/size", |v| v == "32768");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&hp)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    rt.block_on(vm.client.resize_volume("hp-disk")).unwrap();
    wait_guest(&mut con, "cat /sys/block/sda/size", |v| v == "16384");
    assert_eq!(vm.status(&rt).hotplug_volumes[0].size_bytes, 8 << 20);
    // The root disk is raw too, but a read-only cdrom or an overlay would be refused.

    // Unplug: gone from the guest and from the status.
    rt.block_on(vm.client.unplug_volume("hp-disk")).unwrap();
    wait_guest(&mut con, "ls /sys/block | tr '\\n' ' '", |v| {
        !v.contains("sda")
    });
    assert!(vm.status(&rt).hotplug_volumes.is_empty());
    // The name is free again.
    rt.block_on(
        vm.client
            .hotplug_volume(&request("hp-disk", &hp, HotplugBus::Scsi)),
    )
    .unwrap();
    wait_guest(&mut con, "ls /sys/block | tr '\\n' ' '", |v| {
        v.contains("sd")
    });
    rt.block_on(vm.client.unplug_volume("hp-disk")).unwrap();
    assert_clean_teardowns(&vm);
    drop(con);
    drop(vm);
}

/// A virtio disk on a spare PCIe root port (the guest's pciehp), and CD-ROM media.
#[test]
fn virtio_hotplug_and_cdrom_media() {
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let root = copy_to(&g.disk_raw, images.path(), "root.img");
    let iso0 = image(images.path(), "zero.iso", 1 << 20, b"MEDIUM-ZERO");
    let v = vmi(
        "hotplug-virtio",
        json!({"disks": [
            {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
            {"name": "bootcd", "cdrom": {"bus": "sata"}},
            {"name": "tray", "cdrom": {"bus": "sata"}}
        ]}),
        json!([
            {"name": "root", "hostDisk": {"path": root, "type": "Disk"}},
            {"name": "bootcd", "persistentVolumeClaim": {"claimName": "cd-pvc"}}
        ]),
    );
    let vm = launch(v, &["--claim".into(), format!("cd-pvc={}", iso0.display())]);
    let rt = rt();
    vm.wait_serial(READY_MARKER, 1);
    let mut con = console(&rt, &vm.client);

    let vd = image(images.path(), "vd.img", 2 << 20, b"VIRTIO-HOTPLUG-77");
    let st = rt
        .block_on(
            vm.client
                .hotplug_volume(&request("vd", &vd, HotplugBus::Virtio)),
        )
        .unwrap();
    assert_eq!(st.target, "hotplug-vd");
    wait_guest(&mut con, "cat /sys/block/vdb/size 2>/dev/null", |v| {
        v == "4096"
    });
    assert_eq!(
        guest_value(&mut con, "mdev -s; head -c 17 /dev/vdb"),
        "VIRTIO-HOTPLUG-77"
    );
    // Three spare root ports: the fourth virtio disk has nowhere to go.
    for name in ["vd2", "vd3"] {
        let p = image(images.path(), &format!("{name}.img"), 1 << 20, b"x");
        rt.block_on(
            vm.client
                .hotplug_volume(&request(name, &p, HotplugBus::Virtio)),
        )
        .unwrap();
    }
    let p = image(images.path(), "vd4.img", 1 << 20, b"x");
    let err = rt
        .block_on(
            vm.client
                .hotplug_volume(&request("vd4", &p, HotplugBus::Virtio)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("root ports"), "{err}");
    assert_eq!(status_code(err), 409);
    let started = Instant::now();
    rt.block_on(vm.client.unplug_volume("vd")).unwrap();
    eprintln!("virtio unplug took {:?}", started.elapsed());
    wait_guest(&mut con, "ls /sys/block | tr '\\n' ' '", |v| {
        !v.contains("vdb")
    });
    // Its port is free again.
    rt.block_on(
        vm.client
            .hotplug_volume(&request("vd4", &p, HotplugBus::Virtio)),
    )
    .unwrap();

    // The boot CD-ROM (SATA): eject, then another medium.
    let iso1 = image(images.path(), "one.iso", 1 << 20, b"MEDIUM-ONE");
    let iso2 = image(images.path(), "two.iso", 2 << 20, b"MEDIUM-TWO");
    assert_eq!(
        guest_value(&mut con, "mdev -s; head -c 11 /dev/sr0"),
        "MEDIUM-ZERO"
    );
    rt.block_on(vm.client.eject_medium("bootcd")).unwrap();
    wait_guest(&mut con, "head -c 6 /dev/sr0 2>/dev/null", |v| v.is_empty());
    rt.block_on(vm.client.insert_medium("bootcd", &iso1))
        .unwrap();
    wait_guest(&mut con, "head -c 10 /dev/sr0 2>/dev/null", |v| {
        v == "MEDIUM-ONE"
    });
    assert_eq!(vm.status(&rt).inserted_media[0].name, "bootcd");

    // A cdrom with no volume boots with an empty tray; a medium goes in and out.
    // (Two cdroms; the second reads nothing.)
    let tray = "mdev -s; echo $(ls /sys/block | grep -c ^sr)-$(head -c 10 /dev/sr1 2>/dev/null)";
    assert_eq!(guest_value(&mut con, tray), "2-");
    rt.block_on(vm.client.insert_medium("tray", &iso2)).unwrap();
    wait_guest(&mut con, tray, |v| v == "2-MEDIUM-TWO");
    let inserted = vm.status(&rt).inserted_media;
    assert_eq!(inserted[1].name, "tray");
    assert_eq!(inserted[1].target, "ua-tray");
    assert_eq!(inserted[1].path, iso2);
    assert_eq!(inserted[1].size_bytes, 2 << 20);
    rt.block_on(vm.client.eject_medium("tray")).unwrap();
    wait_guest(&mut con, tray, |v| v == "2-");
    assert_eq!(vm.status(&rt).inserted_media.len(), 1);

    // A CD-ROM hot-plugged on SCSI: eject, insert another medium.
    let mut req = request("cd", &iso1, HotplugBus::Scsi);
    req.cdrom = true;
    let st = rt.block_on(vm.client.hotplug_volume(&req)).unwrap();
    assert!(st.read_only && st.cdrom);
    wait_guest(&mut con, "mdev -s; head -c 10 /dev/sr2 2>/dev/null", |v| {
        v == "MEDIUM-ONE"
    });
    rt.block_on(vm.client.eject_medium("cd")).unwrap();
    assert_eq!(vm.status(&rt).hotplug_volumes.last().unwrap().size_bytes, 0);
    wait_guest(&mut con, "head -c 6 /dev/sr2 2>/dev/null", |v| v.is_empty());
    rt.block_on(vm.client.insert_medium("cd", &iso2)).unwrap();
    wait_guest(&mut con, "head -c 10 /dev/sr2 2>/dev/null", |v| {
        v == "MEDIUM-TWO"
    });
    assert_eq!(
        vm.status(&rt).hotplug_volumes.last().unwrap().size_bytes,
        2 << 20
    );
    // A disk is no cdrom.
    let err = rt.block_on(vm.client.eject_medium("root")).unwrap_err();
    assert_eq!(status_code(err), 409);
    rt.block_on(vm.client.unplug_volume("cd")).unwrap();
    assert_clean_teardowns(&vm);
    drop(con);
    drop(vm);
}
