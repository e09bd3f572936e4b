//! Volume hot-plug end to end with a real guest, virtctl and kubectl: `virtctl addvolume`
//! puts a claim into the running guest (it sees a new SCSI disk and keeps what is written to
//! it) and into the VM's spec, so the disk is there again after a VM restart and after a
//! kill -9 of the server; `removevolume` takes it out of the guest; adding a hot-pluggable
//! volume to the VM's spec by hand reaches the running guest (declarative hot-plug); a claim
//! that grows grows the disk the guest sees; a volume for the VM's empty CD-ROM inserts its
//! medium (kept across a kill -9 and a VM restart) and removing it ejects the medium.

mod common;

use common::*;

fn claim(name: &str, size: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {name}
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: {size}
"#
    )
}

/// The test VM: root on a hostDisk, the claim `data` as a second disk (`/dev/vdb`), and a
/// SATA CD-ROM `cd` with no volume: an empty tray (`/dev/sr0`).
fn vm(server: &Server, name: &str) -> String {
    let mut yaml = hostdisk_vm(name, "Always", &server.data_dir).replace(
        "        memory:\n",
        "          - name: data\n            disk:\n              bus: virtio\n          - name: cd\n            cdrom:\n              bus: sata\n        memory:\n",
    );
    yaml.push_str(
        "      - name: data\n        persistentVolumeClaim:\n          claimName: data\n",
    );
    yaml
}

/// A console on the running guest that runs commands and waits for their output.
struct Guest(ConsoleCapture);

impl Guest {
    fn boot(server: &Server, vm: &str) -> Guest {
        let console = ConsoleCapture::start(server, vm);
        console.wait_for(kubevirt_testenv::READY_MARKER);
        Guest(console)
    }

    /// `virtctl restart` of the VM, then the new guest's console once it booted.
    fn restart(server: &Server, vm: &str) -> Guest {
        let before = server.jsonpath("vmi", vm, "{.metadata.uid}");
        let out = server.virtctl(&["restart", vm]);
        assert!(out.status.success(), "{out:?}");
        wait_until("a new VMI running", || {
            let now = server.jsonpath("vmi", vm, "{.metadata.uid} {.status.phase}");
            !now.starts_with(&before) && now.ends_with(" Running")
        });
        Guest::boot(server, vm)
    }

    fn attach(server: &Server, vm: &str) -> Guest {
        Guest(ConsoleCapture::start(server, vm))
    }

    fn run(&mut self, command: &str, want: &str) {
        self.0.run(command, want);
    }

    /// Waits until the guest sees `n` SCSI disks.
    fn scsi_disks(&mut self, n: usize) {
        let want = format!("scsi-disks-{n}-");
        self.run(
            &format!(
                "for i in $(seq 1 100); do [ $(ls /sys/block | grep -c ^sd) = {n} ] && break; sleep 0.2; done; echo scsi-disks-$(ls /sys/block | grep -c ^sd)-"
            ),
            &want,
        );
    }
}

/// A JSON patch of VM `vm`'s spec.
fn patch_vm(server: &Server, vm: &str, patch: &str) {
    server.kubectl_ok(&["patch", "vm", vm, "--type=json", "-p", patch]);
}

fn volume_phase(server: &Server, vmi: &str, volume: &str) -> String {
    server.jsonpath(
        "vmi",
        vmi,
        &format!("{{.status.volumeStatus[?(@.name==\"{volume}\")].phase}}"),
    )
}

#[test]
fn hot_plugged_volumes_reach_the_guest_and_stay_across_restarts() {
    let mut server = Server::start(&["--stop-vms-on-exit"]);
    server.apply_yaml(&claim("data", "16Mi"));
    server.apply_yaml(&claim("hp", "16Mi"));
    server.apply_yaml(&claim("decl", "8Mi"));
    let name = "hot";
    server.apply_yaml(&vm(&server, name));
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    let mut guest = Guest::boot(&server, name);
    guest.scsi_disks(0);

    // virtctl addvolume: the guest sees a SCSI disk with the serial asked for.
    let out = server.virtctl(&["addvolume", name, "--volume-name=hp", "--serial=HP1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Successfully submitted add volume request to VM hot for volume hp"
    );
    server.wait_for(
        "vmi",
        name,
        "{.status.volumeStatus[?(@.name==\"hp\")].phase}",
        "Ready",
    );
    assert_eq!(
        server.jsonpath(
            "vmi",
            name,
            "{.status.volumeStatus[?(@.name==\"hp\")].message}"
        ),
        "Successfully attach hotplugged volume hp to VM"
    );
    guest.scsi_disks(1);
    guest.run(
        "cat /sys/block/sda/device/vpd_pg80 | tr -dc A-Z0-9 | sed 's/^/serial-/'; echo",
        "serial-HP1",
    );
    guest.run(
        "printf 'hot-%s' plugged > /dev/sda && sync && echo wrote-$((3+3))",
        "wrote-6",
    );
    // It is in the VM's spec, hot-pluggable.
    assert_eq!(
        server.jsonpath(
            "vm",
            name,
            "{.spec.template.spec.volumes[?(@.name==\"hp\")].persistentVolumeClaim.hotpluggable}"
        ),
        "true"
    );
    let again = server.virtctl(&["addvolume", name, "--volume-name=hp"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("Unable to add volume [hp] because volume with that name already exists"),
        "{again:?}"
    );
    let not_hot = server.virtctl(&["removevolume", name, "--volume-name=data"]);
    assert!(
        String::from_utf8_lossy(&not_hot.stderr)
            .contains("Unable to remove volume [data] because it is not hotpluggable"),
        "{not_hot:?}"
    );

    // A kill -9 of the server: the guest keeps its disk, nothing is plugged twice.
    drop(guest);
    server.kill9();
    server.restart();
    server.wait_for(
        "vmi",
        name,
        "{.status.volumeStatus[?(@.name==\"hp\")].phase}",
        "Ready",
    );
    let mut guest = Guest::attach(&server, name);
    guest.scsi_disks(1);
    guest.run(
        "echo read-$(head -c 11 /dev/sda)-end",
        "read-hot-plugged-end",
    );

    // A VM restart: the volume comes back with what was written.
    drop(guest);
    let mut guest = Guest::restart(&server, name);
    server.wait_for(
        "vmi",
        name,
        "{.status.volumeStatus[?(@.name==\"hp\")].phase}",
        "Ready",
    );
    guest.scsi_disks(1);
    guest.run(
        "echo back-$(head -c 11 /dev/sda)-end",
        "back-hot-plugged-end",
    );

    // Declarative: a hot-pluggable volume added to the VM's spec reaches the guest.
    patch_vm(
        &server,
        name,
        r#"[{"op":"add","path":"/spec/template/spec/volumes/-","value":{"name":"decl","persistentVolumeClaim":{"claimName":"decl","hotpluggable":true}}},
            {"op":"add","path":"/spec/template/spec/domain/devices/disks/-","value":{"name":"decl","disk":{"bus":"scsi"}}}]"#,
    );
    server.wait_for(
        "vmi",
        name,
        "{.status.volumeStatus[?(@.name==\"decl\")].phase}",
        "Ready",
    );
    guest.scsi_disks(2);

    // removevolume: gone from the guest and the specs.
    let out = server.virtctl(&["removevolume", name, "--volume-name=hp"]);
    assert!(out.status.success(), "{out:?}");
    wait_until("hp to leave the VMI", || {
        volume_phase(&server, name, "hp").is_empty()
    });
    guest.scsi_disks(1);
    assert_eq!(
        server.jsonpath(
            "vm",
            name,
            "{.spec.template.spec.volumes[?(@.name==\"hp\")].name}"
        ),
        ""
    );

    // A claim that grows grows the disk the guest sees (16Mi = 32768 sectors).
    guest.run("echo size-$(cat /sys/block/vdb/size)-", "size-32768-");
    server.kubectl_ok(&[
        "patch",
        "pvc",
        "data",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"32Mi"}}}}"#,
    ]);
    server.wait_for("pvc", "data", "{.status.capacity.storage}", "32Mi");
    guest.run(
        "for i in $(seq 1 100); do [ $(cat /sys/block/vdb/size) = 65536 ] && break; sleep 0.2; done; echo size-$(cat /sys/block/vdb/size)-",
        "size-65536-",
    );

    // CD-ROM: the empty tray reads nothing; a hot-pluggable volume for it in the VM's spec
    // inserts the claim hp (which holds what the guest wrote to it) as its medium.
    let read_cd = "mdev -s; echo cd-$(head -c 11 /dev/sr0 2>/dev/null)-end";
    guest.run(read_cd, "cd--end");
    patch_vm(
        &server,
        name,
        r#"[{"op":"add","path":"/spec/template/spec/volumes/-","value":{"name":"cd","persistentVolumeClaim":{"claimName":"hp","hotpluggable":true}}}]"#,
    );
    server.wait_for(
        "vmi",
        name,
        "{.status.volumeStatus[?(@.name==\"cd\")].target}",
        "ua-cd",
    );
    assert_eq!(volume_phase(&server, name, "cd"), "Ready");
    // Waits until the guest reads `want` from the tray ("" for an empty one).
    let wait_cd = |guest: &mut Guest, want: &str| {
        guest.run(
            &format!("for i in $(seq 1 100); do [ \"$(head -c 11 /dev/sr0 2>/dev/null)\" = '{want}' ] && break; sleep 0.2; done; {read_cd}"),
            &format!("cd-{want}-end"),
        )
    };
    wait_cd(&mut guest, "hot-plugged");
    // No new device: the VMI's cdrom is the one it booted with.
    assert_eq!(
        server.jsonpath(
            "vmi",
            name,
            "{.spec.domain.devices.disks[?(@.name==\"cd\")].cdrom.bus}"
        ),
        "sata"
    );

    // A kill -9 of the server: the medium stays, nothing is inserted twice.
    drop(guest);
    server.kill9();
    server.restart();
    server.wait_for(
        "vmi",
        name,
        "{.status.volumeStatus[?(@.name==\"cd\")].phase}",
        "Ready",
    );
    let mut guest = Guest::attach(&server, name);
    wait_cd(&mut guest, "hot-plugged");
    assert_eq!(server.log().matches("cdrom medium inserted").count(), 1);

    // A VM restart: the new guest boots with the empty tray and gets the medium back.
    drop(guest);
    let mut guest = Guest::restart(&server, name);
    wait_cd(&mut guest, "hot-plugged");

    // removevolume ejects: the tray stays in both specs, empty.
    let out = server.virtctl(&["removevolume", name, "--volume-name=cd"]);
    assert!(out.status.success(), "{out:?}");
    wait_until("cd to leave the VMI", || {
        volume_phase(&server, name, "cd").is_empty()
    });
    wait_cd(&mut guest, "");
    for kind in ["vm", "vmi"] {
        let path = if kind == "vm" {
            "{.spec.template.spec.domain.devices.disks[?(@.name==\"cd\")].cdrom.bus}"
        } else {
            "{.spec.domain.devices.disks[?(@.name==\"cd\")].cdrom.bus}"
        };
        assert_eq!(server.jsonpath(kind, name, path), "sata", "{kind}");
    }
}
