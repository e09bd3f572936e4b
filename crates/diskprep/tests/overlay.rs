//! Overlays and empty disks through the real qemu-img / qemu-io.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use kubevirt_diskprep::{create_empty_disk, create_overlay, DiskFormat, DiskPrepError};
use sha2::{Digest as _, Sha256};

fn sha256_file(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

fn qemu_io(image: &Path, format: &str, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", format, "-c", cmd])
        .arg(image)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("Pattern verification failed"),
        "qemu-io {cmd}: {text}"
    );
    text
}

fn img_info(image: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn overlay_writes_do_not_touch_the_base() {
    let dir = tempfile::tempdir().unwrap();
    for format in [DiskFormat::Raw, DiskFormat::Qcow2] {
        let base = dir.path().join(format!("base.{format}"));
        create_empty_disk("base", &base, "16Mi", format).unwrap();
        qemu_io(&base, format.as_str(), "write -P 0x11 0 1M");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o444)).unwrap();
        let before = sha256_file(&base);

        let overlay = dir.path().join(format!("overlay-{format}.qcow2"));
        create_overlay("containerdisk", &base, format, &overlay).unwrap();
        let info = img_info(&overlay);
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename-format"], format.as_str());
        assert_eq!(info["virtual-size"], 16 << 20);
        assert_eq!(
            info["backing-filename"],
            base.canonicalize().unwrap().to_str().unwrap()
        );

        // Reads fall through to the base, writes land in the overlay only.
        qemu_io(&overlay, "qcow2", "read -P 0x11 0 1M");
        qemu_io(&overlay, "qcow2", "write -P 0x22 512k 1M");
        qemu_io(&overlay, "qcow2", "read -P 0x22 512k 1M");
        qemu_io(&overlay, "qcow2", "read -P 0x11 0 512k");
        assert_eq!(sha256_file(&base), before, "base changed");
        qemu_io(&base, format.as_str(), "read -P 0x11 0 1M");

        let err = create_overlay("containerdisk", &base, format, &overlay).unwrap_err();
        assert!(matches!(err, DiskPrepError::AlreadyExists { .. }), "{err}");
    }
}

#[test]
fn overlay_errors_name_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let err = create_overlay(
        "ephemeral-pvc",
        &dir.path().join("missing"),
        DiskFormat::Raw,
        &dir.path().join("o.qcow2"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ephemeral-pvc"), "{err}");
    // qemu-img itself refusing (base is not qcow2 while told it is) is reported with stderr.
    let base = dir.path().join("raw.img");
    std::fs::write(&base, vec![0u8; 65536]).unwrap();
    let err = create_overlay(
        "ephemeral-pvc",
        &base,
        DiskFormat::Qcow2,
        &dir.path().join("o.qcow2"),
    )
    .unwrap_err();
    match err {
        DiskPrepError::QemuImg { volume, stderr, .. } => {
            assert_eq!(volume, "ephemeral-pvc");
            assert!(!stderr.is_empty());
        }
        other => panic!("expected QemuImg, got {other:?}"),
    }
}

#[test]
fn empty_qcow2_disk_has_the_capacity_and_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("scratch.qcow2");
    let bytes = create_empty_disk("scratch", &p, "10Gi", DiskFormat::Qcow2).unwrap();
    assert_eq!(bytes, 10 << 30);
    let info = img_info(&p);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 10u64 << 30);
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
    qemu_io(&p, "qcow2", "read -P 0 0 1M");
}
