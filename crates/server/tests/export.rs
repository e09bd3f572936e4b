//! VM exports end to end, with kubectl, virtctl, curl and a real guest: a claim filled with
//! the test guest's disk is downloaded raw and gzipped by `virtctl vmexport download`
//! (creating and deleting the export) and both are identical to the claim's file; the export
//! token is the only way in (a wrong one gets 401); deleting an export, or its TTL running
//! out, removes it and its token Secret; a VM export stays Pending while the VM runs and is
//! Ready once it stops, serving the VM's claim and its manifest; a VM snapshot's volumes are
//! restored into claims of the export and served from there.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// The file behind claim `pvc` in the server's volumes.
fn claim_file(server: &Server, pvc: &str) -> PathBuf {
    let pv = server.jsonpath("pvc", pvc, "{.spec.volumeName}");
    assert!(!pv.is_empty(), "claim {pvc} is not bound");
    server.data_dir.join("volumes").join(pv).join("disk.img")
}

fn identical(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` against an export URL, verifying with the export's CA; prints the status code.
fn curl(ca: &Path, url: &str, extra: &[&str], body: &Path) -> String {
    let out = Command::new("curl")
        .args(["--http1.1", "-s", "-o"])
        .arg(body)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn base64_decode(s: &str) -> String {
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn a_claim_is_downloaded_raw_and_gzipped_with_the_export_token() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let g = kubevirt_testenv::guests();
    ok(&server.virtctl(&[
        "image-upload",
        "pvc",
        "disk",
        "--size=64Mi",
        &format!("--image-path={}", g.disk_raw.display()),
        "--insecure",
    ]));
    let source = claim_file(&server, "disk");

    // Raw: the export is made for the download and deleted after it.
    let raw = tmp.path().join("raw.img");
    let out = ok(&server.virtctl(&[
        "vmexport",
        "download",
        "exp-raw",
        "--pvc=disk",
        "--format=raw",
        &format!("--output={}", raw.display()),
    ]));
    for want in [
        "VirtualMachineExport 'default/exp-raw' created successfully",
        "Download finished successfully",
        "VirtualMachineExport 'default/exp-raw' deleted successfully",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    identical(&raw, &source);
    server.wait_gone("vmexport", "exp-raw");
    server.wait_gone("secret", "secret-exp-raw");

    // gzip (the default format), made on the fly by the server.
    let gz = tmp.path().join("disk.img.gz");
    ok(&server.virtctl(&[
        "vmexport",
        "download",
        "exp-gz",
        "--pvc=disk",
        &format!("--output={}", gz.display()),
    ]));
    let unpacked = tmp.path().join("gz.img");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gunzip -c {} > {}",
            gz.display(),
            unpacked.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    identical(&unpacked, &source);

    // The token is the only credential; the status' CA verifies the server.
    let out = ok(&server.virtctl(&["vmexport", "create", "exp-tok", "--pvc=disk"]));
    assert!(
        out.contains("VirtualMachineExport 'default/exp-tok' created successfully"),
        "{out}"
    );
    server.wait_for("vmexport", "exp-tok", "{.status.phase}", "Ready");
    let listed = server.kubectl_ok(&["get", "vmexport"]);
    assert!(
        listed.contains("SOURCEKIND")
            && listed.contains("exp-tok   PersistentVolumeClaim   disk         Ready"),
        "{listed}"
    );
    let ca = tmp.path().join("ca.crt");
    std::fs::write(
        &ca,
        server.jsonpath("vmexport", "exp-tok", "{.status.links.external.cert}"),
    )
    .unwrap();
    let url = server.jsonpath(
        "vmexport",
        "exp-tok",
        "{.status.links.external.volumes[0].formats[?(@.format==\"raw\")].url}",
    );
    assert!(
        url.starts_with("https://")
            && url.ends_with("/api/export.kubevirt.io/v1beta1/namespaces/default/virtualmachineexports/exp-tok/volumes/disk/disk.img"),
        "{url}"
    );
    let token = base64_decode(&server.jsonpath("secret", "secret-exp-tok", "{.data.token}"));
    assert_eq!(token.len(), 20);
    let body = tmp.path().join("body");
    assert_eq!(
        curl(&ca, &url, &["-H", "x-kubevirt-export-token: wrong"], &body),
        "401"
    );
    assert_eq!(curl(&ca, &url, &[], &body), "401");
    // The token as a query parameter, one range of the disk.
    let ranged = format!("{url}?x-kubevirt-export-token={token}");
    assert_eq!(curl(&ca, &ranged, &["-r", "0-4095"], &body), "206");
    let got = std::fs::read(&body).unwrap();
    let want = std::fs::read(&source).unwrap();
    assert_eq!(got, want[..4096]);
    let out = ok(&server.virtctl(&["vmexport", "delete", "exp-tok"]));
    assert!(
        out.contains("VirtualMachineExport 'default/exp-tok' deleted successfully"),
        "{out}"
    );
    server.wait_gone("vmexport", "exp-tok");
    server.wait_gone("secret", "secret-exp-tok");

    // Admission as virt-api's.
    let refused = server.apply_output(
        "apiVersion: export.kubevirt.io/v1beta1\nkind: VirtualMachineExport\nmetadata:\n  name: bad\nspec:\n  source:\n    kind: Pod\n    name: p\n",
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("spec.source.kind: invalid kind"), "{err}");

    // Without tokenSecretRef the controller makes the token Secret; the TTL ends it all.
    server.apply_yaml(
        "apiVersion: export.kubevirt.io/v1beta1\nkind: VirtualMachineExport\nmetadata:\n  name: exp-ttl\nspec:\n  ttlDuration: 10s\n  source:\n    apiGroup: \"\"\n    kind: PersistentVolumeClaim\n    name: disk\n",
    );
    server.wait_for(
        "vmexport",
        "exp-ttl",
        "{.status.tokenSecretRef}",
        "export-token-exp-ttl",
    );
    assert!(server
        .events_of("exp-ttl")
        .contains("Created default secret default/export-token-exp-ttl"));
    assert!(!server
        .jsonpath("vmexport", "exp-ttl", "{.status.ttlExpirationTime}")
        .is_empty());
    server.wait_gone("vmexport", "exp-ttl");
    server.wait_gone("secret", "export-token-exp-ttl");
}

#[test]
fn a_vm_export_waits_for_the_vm_to_stop() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let tmp = tempfile::tempdir().unwrap();
    server.apply_yaml(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 16Mi\n",
    );
    let name = "exp-vm";
    let mut vm = hostdisk_vm(name, "Always", &server.data_dir).replace(
        "        memory:\n",
        "          - name: data\n            disk:\n              bus: virtio\n        memory:\n",
    );
    vm.push_str("      - name: data\n        persistentVolumeClaim:\n          claimName: data\n");
    server.apply_yaml(&vm);
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");

    ok(&server.virtctl(&["vmexport", "create", "vmexp", "--vm", name]));
    server.wait_for(
        "vmexport",
        "vmexp",
        "{.status.phase} {.status.conditions[?(@.type==\"Ready\")].reason}",
        "Pending InUse",
    );
    assert_eq!(
        server.jsonpath(
            "vmexport",
            "vmexp",
            "{.status.conditions[?(@.type==\"Ready\")].message}"
        ),
        "Virtual Machine default/exp-vm is running"
    );

    ok(&server.virtctl(&["stop", name]));
    server.wait_gone("vmi", name);
    server.wait_for("vmexport", "vmexp", "{.status.phase}", "Ready");
    assert_eq!(
        server.jsonpath(
            "vmexport",
            "vmexp",
            "{.status.virtualMachineName} {.status.links.external.volumes[*].name}"
        ),
        "exp-vm data"
    );
    // An export that was there before the download stays after it.
    let raw = tmp.path().join("data.img");
    ok(&server.virtctl(&[
        "vmexport",
        "download",
        "vmexp",
        "--volume=data",
        "--format=raw",
        &format!("--output={}", raw.display()),
    ]));
    identical(&raw, &claim_file(&server, "data"));
    let manifest = ok(&server.virtctl(&["vmexport", "download", "vmexp", "--manifest"]));
    assert!(
        manifest.contains("kind: VirtualMachine") && manifest.contains("name: exp-vm"),
        "{manifest}"
    );

    // A VM snapshot's volumes are restored into claims of the export, deleted with it.
    server.apply_yaml(&format!(
        "apiVersion: snapshot.kubevirt.io/v1beta1\nkind: VirtualMachineSnapshot\nmetadata:\n  name: snap\nspec:\n  source:\n    apiGroup: kubevirt.io\n    kind: VirtualMachine\n    name: {name}\n"
    ));
    server.wait_for("vmsnapshot", "snap", "{.status.readyToUse}", "true");
    let from_snapshot = tmp.path().join("snap.img");
    ok(&server.virtctl(&[
        "vmexport",
        "download",
        "snapexp",
        "--snapshot=snap",
        "--format=raw",
        &format!("--output={}", from_snapshot.display()),
    ]));
    identical(&from_snapshot, &claim_file(&server, "data"));
    server.wait_gone("vmexport", "snapexp");
    server.wait_gone("pvc", "snapexp-data");

    // The VM takes its claim back: the export pauses.
    ok(&server.virtctl(&["start", name]));
    server.wait_for("vmexport", "vmexp", "{.status.phase}", "Pending");
    assert!(server.events_of("vmexp").contains("ExportPaused"));
}
