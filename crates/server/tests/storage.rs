//! Persistent disks end to end, as a user gets them with kubectl: claims of the built-in
//! class bound (and, with `WaitForFirstConsumer`, only once a VM uses them), DataVolumes
//! imported over HTTP from a real server on loopback and made blank, a VM booting from an
//! imported disk whose data disk keeps what the guest wrote across a kill -9 of the server,
//! a restart and a stop/start; claims that grow; import failures worded as CDI words them.

mod common;

use std::process::Command;

use common::*;

/// A DataVolume importing `url` into a claim of `size`.
fn http_data_volume(name: &str, url: &str, size: &str) -> String {
    format!(
        r#"apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: {name}
spec:
  source:
    http:
      url: {url}
  storage:
    resources:
      requests:
        storage: {size}
"#
    )
}

fn vm_with_disks(name: &str, root_url: &str, data_claim: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  dataVolumeTemplates:
  - metadata:
      name: {name}-root
    spec:
      source:
        http:
          url: {root_url}
      storage:
        resources:
          requests:
            storage: 64Mi
  - metadata:
      name: {name}-blank
    spec:
      source:
        blank: {{}}
      storage:
        storageClassName: local-delayed
        resources:
          requests:
            storage: 16Mi
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk: {{bus: virtio}}
          - name: data
            disk: {{bus: virtio}}
          - name: blank
            disk: {{bus: virtio}}
        memory:
          guest: 256Mi
      terminationGracePeriodSeconds: 30
      volumes:
      - name: root
        dataVolume:
          name: {name}-root
      - name: data
        persistentVolumeClaim:
          claimName: {data_claim}
      - name: blank
        dataVolume:
          name: {name}-blank
"#
    )
}

#[test]
fn a_vm_on_imported_and_claimed_disks_keeps_its_data() {
    let mut server = Server::start(&["--stop-vms-on-exit"]);
    let g = kubevirt_testenv::guests();
    let http = HttpDir::serve(&g.dir);

    // The built-in class is the default; a second class of ours waits for a consumer and
    // keeps its volumes.
    let classes = server.kubectl_ok(&["get", "storageclass"]);
    assert!(classes.contains("local (default)"), "{classes}");
    assert!(classes.contains("kubevirt-rs.io/local"), "{classes}");
    server.apply_yaml(
        r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-delayed
provisioner: kubevirt-rs.io/local
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  storageClassName: local-delayed
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 32Mi
"#,
    );
    wait_until("the WaitForFirstConsumer event", || {
        server
            .events_of("data")
            .contains("waiting for first consumer to be created before binding")
    });
    assert_eq!(server.jsonpath("pvc", "data", "{.status.phase}"), "Pending");

    let name = "pd";
    server.apply_yaml(&vm_with_disks(name, &http.url("disk.qcow2"), "data"));
    server.wait_for(
        "dv",
        &format!("{name}-root"),
        "{.status.phase}",
        "Succeeded",
    );
    server.wait_for(
        "dv",
        &format!("{name}-root"),
        "{.status.progress}",
        "100.0%",
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    server.wait_for("pvc", "data", "{.status.phase}", "Bound");
    let root_events = server.events_of(&format!("{name}-root"));
    for want in [
        "Import into pd-root scheduled",
        "Successfully imported into PVC pd-root",
        "Successfully provisioned volume pvc-",
    ] {
        assert!(root_events.contains(want), "{want}: {root_events}");
    }
    let vm_events = server.events_of(name);
    assert!(
        vm_events.contains("Created DataVolume pd-root"),
        "{vm_events}"
    );
    // The VM owns its DataVolume, which owns its claim.
    assert_eq!(
        server.jsonpath("dv", "pd-root", "{.metadata.ownerReferences[0].kind}"),
        "VirtualMachine"
    );
    assert_eq!(
        server.jsonpath("pvc", "pd-root", "{.metadata.ownerReferences[0].kind}"),
        "DataVolume"
    );
    let pvcs = server.kubectl_ok(&["get", "pvc"]);
    assert!(
        pvcs.contains("RWO") && pvcs.contains("local-delayed"),
        "{pvcs}"
    );

    let mut console = ConsoleCapture::start(&server, name);
    console.wait_for(kubevirt_testenv::READY_MARKER);
    console.send("printf 'persist-%s' $((6*7)) > /dev/vdb && printf 'blank-%s' $((6*7)) > /dev/vdc && sync && echo written-$((1+1))\r");
    console.wait_for("written-2");
    drop(console);

    // A kill -9 of the server, a restart, then the VM stopped and started again.
    server.kill9();
    server.restart();
    server.wait_for("vmi", name, "{.status.phase}", "Running");
    let out = server.virtctl(&["stop", name]);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");
    let out = server.virtctl(&["start", name]);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    let mut console = ConsoleCapture::start(&server, name);
    console.wait_for(kubevirt_testenv::READY_MARKER);
    console.send("echo read-$(head -c 10 /dev/vdb)-$(head -c 8 /dev/vdc)-done\r");
    console.wait_for("read-persist-42-blank-42-done");
    drop(console);

    // Deleting the VM takes its DataVolume, claim and (reclaim Delete) volume with it; the
    // claim it only used stays, and its volume is kept when released (reclaim Retain).
    let root_volume = server.jsonpath("pvc", "pd-root", "{.spec.volumeName}");
    let data_volume = server.jsonpath("pvc", "data", "{.spec.volumeName}");
    server.kubectl_ok(&["delete", "vm", name]);
    server.wait_gone("dv", "pd-root");
    server.wait_gone("pvc", "pd-root");
    server.wait_gone("pv", &root_volume);
    assert!(!server.data_dir.join("volumes").join(&root_volume).exists());
    server.kubectl_ok(&["delete", "pvc", "data", "--wait=false"]);
    server.wait_gone("pvc", "data");
    server.wait_for("pv", &data_volume, "{.status.phase}", "Released");
    assert!(server
        .data_dir
        .join("volumes")
        .join(&data_volume)
        .join("disk.img")
        .exists());
}

/// A small filesystem mounted on the server's volumes directory (as a full disk would be).
struct SmallFilesystem(std::path::PathBuf);

impl SmallFilesystem {
    fn mount(dir: std::path::PathBuf, size: &str) -> SmallFilesystem {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        SmallFilesystem(dir)
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn claims_grow_and_imports_fail_in_cdi_s_words() {
    let server = Server::start(&[]);
    let g = kubevirt_testenv::guests();
    let http = HttpDir::serve(&g.dir);
    // The volumes live on a 96 MiB filesystem.
    let _small = SmallFilesystem::mount(server.data_dir.join("volumes"), "96m");
    server.apply_yaml(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: huge
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
"#,
    );
    wait_until("the ProvisioningFailed event", || {
        server.events_of("huge").contains("not enough space")
    });
    let events = server.events_of("huge");
    assert!(
        events.contains(
            "failed to provision volume with StorageClass \"local\": not enough space on node"
        ) && events.contains("requested 1Gi"),
        "{events}"
    );
    assert_eq!(server.jsonpath("pvc", "huge", "{.status.phase}"), "Pending");
    server.apply_yaml(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: grow
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources:
    requests:
      storage: 16Mi
"#,
    );
    server.wait_for("pvc", "grow", "{.status.capacity.storage}", "16Mi");
    let volume = server.jsonpath("pvc", "grow", "{.spec.volumeName}");
    let block = server.data_dir.join("volumes").join(&volume).join("block");
    assert_eq!(std::fs::metadata(&block).unwrap().len(), 16 << 20);
    server.kubectl_ok(&[
        "patch",
        "pvc",
        "grow",
        "--type=merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"48Mi"}}}}"#,
    ]);
    server.wait_for("pvc", "grow", "{.status.capacity.storage}", "48Mi");
    assert_eq!(std::fs::metadata(&block).unwrap().len(), 48 << 20);
    assert!(server.events_of("grow").contains("Resize volume succeeded"));
    let shrink = server.kubectl(&[
        "patch",
        "pvc",
        "grow",
        "--type=merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"8Mi"}}}}"#,
    ]);
    let err = String::from_utf8_lossy(&shrink.stderr);
    assert!(
        err.contains("spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"),
        "{err}"
    );

    // A source that is not there, and an image larger than its volume.
    server.apply_yaml(&http_data_volume(
        "missing",
        &http.url("no-such-disk.qcow2"),
        "64Mi",
    ));
    server.apply_yaml(&http_data_volume("small", &http.url("disk.qcow2"), "4Mi"));
    server.wait_for("dv", "missing", "{.status.phase}", "Failed");
    let cond = server.jsonpath(
        "dv",
        "missing",
        r#"{.status.conditions[?(@.type=="Running")].message}"#,
    );
    assert!(cond.contains("404"), "{cond}");
    assert_eq!(
        server.jsonpath("dv", "missing", "{.status.restartCount}"),
        "1"
    );
    server.wait_for("dv", "small", "{.status.phase}", "Failed");
    let cond = server.jsonpath(
        "dv",
        "small",
        r#"{.status.conditions[?(@.type=="Running")].message}"#,
    );
    assert!(
        cond.contains("is larger than the reported available storage"),
        "{cond}"
    );
    // Nothing half-written is left where a VM would find its disk.
    let volume = server.jsonpath("pvc", "small", "{.spec.volumeName}");
    assert!(!server
        .data_dir
        .join("volumes")
        .join(volume)
        .join("disk.img")
        .exists());

    // A clone of the grown claim, sized from its source.
    server.apply_yaml(
        r#"apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: copy
spec:
  source:
    pvc:
      name: grow
  storage: {}
"#,
    );
    server.wait_for("dv", "copy", "{.status.phase}", "Succeeded");
    assert!(server
        .events_of("copy")
        .contains("Successfully cloned from default/grow into default/copy"));
    let copy = server.jsonpath("pvc", "copy", "{.spec.volumeName}");
    let copied = server.data_dir.join("volumes").join(copy).join("disk.img");
    assert_eq!(std::fs::metadata(&copied).unwrap().len(), 48 << 20);

    // What a VM shows while its volumes are not usable, in upstream's words.
    for (vm, volume) in [
        ("on-failed-dv", "dataVolume: {name: missing}"),
        ("on-no-claim", "persistentVolumeClaim: {claimName: nope}"),
    ] {
        server.apply_yaml(&format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {vm}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          disks:
          - name: d
            disk: {{bus: virtio}}
        memory:
          guest: 128Mi
      volumes:
      - name: d
        {volume}
"#
        ));
    }
    server.wait_for(
        "vm",
        "on-failed-dv",
        "{.status.printableStatus}",
        "DataVolumeError",
    );
    server.wait_for(
        "vm",
        "on-no-claim",
        "{.status.printableStatus}",
        "ErrorPvcNotFound",
    );
    let cond = server.jsonpath(
        "vmi",
        "on-no-claim",
        r#"{.status.conditions[?(@.type=="Synchronized")].message}"#,
    );
    assert_eq!(
        cond,
        "PVC default/nope does not exist, waiting for it to appear"
    );

    // CDI's admission: a DataVolume without a size, and one changed after creation.
    let out = server.apply_output(
        r#"apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: nosize
spec:
  source:
    blank: {}
  storage: {}
"#,
    );
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Storage size is missing"), "{err}");
}

#[test]
fn an_uploaded_iso_boots() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let g = kubevirt_testenv::guests();
    let out = server.virtctl(&[
        "image-upload",
        "dv",
        "iso",
        "--size=64Mi",
        &format!("--image-path={}", g.boot_iso.display()),
        "--insecure",
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for want in [
        "DataVolume default/iso created",
        "Uploading data to https://",
        "Processing completed successfully",
    ] {
        assert!(printed.contains(want), "{want}: {printed}");
    }
    assert_eq!(server.jsonpath("dv", "iso", "{.status.phase}"), "Succeeded");
    assert!(server
        .events_of("iso")
        .contains("Successfully uploaded into iso"));
    // The token is the upload's only credential: without one the proxy refuses.
    let url = server.kubectl_ok(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let anonymous = Command::new("curl")
        .args([
            "--http1.1",
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--data-binary",
            "x",
        ])
        .arg(format!("{url}/v1beta1/upload"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");

    server.apply_yaml(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: fromiso
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          disks:
          - name: cd
            cdrom: {bus: sata}
        memory:
          guest: 256Mi
      volumes:
      - name: cd
        dataVolume:
          name: iso
"#,
    );
    server.wait_for("vm", "fromiso", "{.status.printableStatus}", "Running");
    let console = ConsoleCapture::start(&server, "fromiso");
    console.wait_for(kubevirt_testenv::READY_MARKER);
}

#[test]
fn an_import_interrupted_by_kill_9_completes_after_restart() {
    let mut server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // A big (sparse) raw image: long enough to download that the server dies halfway.
    let image = dir.path().join("big.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let http = HttpDir::serve(dir.path());
    server.apply_yaml(&http_data_volume("big", &http.url("big.img"), "2Gi"));
    server.wait_for("dv", "big", "{.status.phase}", "ImportInProgress");
    server.kill9();
    server.restart();
    server.wait_for("dv", "big", "{.status.phase}", "Succeeded");
    let volume = server.jsonpath("pvc", "big", "{.spec.volumeName}");
    let disk = server
        .data_dir
        .join("volumes")
        .join(volume)
        .join("disk.img");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 2 << 30);
    // Nothing of the interrupted attempt is left beside the disk.
    let left: Vec<String> = std::fs::read_dir(disk.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["disk.img"]);
}
