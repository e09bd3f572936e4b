//! The inspector against images made by the real `qemu-img`, cross-checked with what
//! `qemu-img info` itself says, and hostDisks written through the real `qemu-io`.
//!
//! qemu-img is only ever pointed at files in temporary directories: `create -o data_file=`
//! creates (truncates) the data file, so host paths such as `/etc/passwd` are patched into
//! the headers afterwards, never given to qemu-img.

use std::path::{Path, PathBuf};
use std::process::Command;

use kubevirt_diskprep::inspect::{inspect_path, Finding, ImageFormat, ImagePolicy};
use kubevirt_diskprep::{open_host_disk, DiskFormat, DiskPrepError, HostDiskType};

fn qemu_img(dir: &Path, args: &[&str]) {
    let out = Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img info` (probing the format) on an image that names only files in `dir`.
fn qemu_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .current_dir(path.parent().unwrap())
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn inspect(path: &Path) -> kubevirt_diskprep::ImageInfo {
    inspect_path("vol", path).unwrap()
}

/// Replaces `from` by `to` (same length) in the first `limit` bytes of the file.
fn patch(path: &Path, from: &[u8], to: &[u8], limit: usize) {
    assert_eq!(from.len(), to.len());
    let mut data = std::fs::read(path).unwrap();
    let at = data[..limit.min(data.len())]
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in header");
    data[at..at + to.len()].copy_from_slice(to);
    std::fs::write(path, data).unwrap();
}

#[test]
fn qcow2_plain_data_file_and_backing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    qemu_img(d, &["create", "-q", "-f", "qcow2", "plain.qcow2", "16M"]);
    let info = inspect(&d.join("plain.qcow2"));
    assert_eq!(info.format, ImageFormat::Qcow2);
    assert!(info.findings.is_empty(), "{info:?}");
    assert_eq!(
        info.accept("vol", &d.join("plain.qcow2"), ImagePolicy::Imported)
            .unwrap(),
        DiskFormat::Qcow2
    );

    // Same length as "/etc/passwd", so the name can be patched in afterwards.
    std::fs::create_dir(d.join("xetc")).unwrap();
    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=xetc/passwd,data_file_raw=on",
            "data.qcow2",
            "1M",
        ],
    );
    let img = d.join("data.qcow2");
    let qemu_says = qemu_info(&img);
    assert_eq!(
        qemu_says["format-specific"]["data"]["data-file"],
        "xetc/passwd"
    );
    assert_eq!(
        inspect(&img).findings,
        vec![Finding::DataFile {
            name: Some("xetc/passwd".into())
        }]
    );
    patch(&img, b"xetc/passwd", b"/etc/passwd", 65536);
    let info = inspect(&img);
    assert_eq!(
        info.refusal(ImagePolicy::Imported).as_deref(),
        Some(r#"qcow2 image names an external data file "/etc/passwd""#)
    );
    let err = info
        .accept("vol", &img, ImagePolicy::OpenedAsRaw)
        .unwrap_err();
    assert!(matches!(err, DiskPrepError::UnsafeImage { .. }), "{err}");

    qemu_img(d, &["create", "-q", "-f", "raw", "base.raw", "1M"]);
    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "over.qcow2",
        ],
    );
    assert_eq!(
        qemu_info(&d.join("over.qcow2"))["backing-filename"],
        "base.raw"
    );
    assert_eq!(
        inspect(&d.join("over.qcow2")).findings,
        vec![Finding::BackingFile {
            name: "base.raw".into(),
            format: Some("raw".into())
        }]
    );

    // -u: qemu-img does not open these backing files (it could not).
    for (name, expect) in [
        (
            r#"json:{"driver":"file","filename":"/etc/shadow"}"#,
            "a QEMU json: pseudo-filename",
        ),
        ("nbd:127.0.0.1:10809", r#"QEMU protocol "nbd""#),
        ("http://example.invalid/disk.img", r#"QEMU protocol "http""#),
    ] {
        let img = d.join("proto.qcow2");
        let _ = std::fs::remove_file(&img);
        qemu_img(
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                name,
                "-F",
                "raw",
                "proto.qcow2",
                "1M",
            ],
        );
        let msg = inspect(&img).refusal(ImagePolicy::Imported).unwrap();
        assert!(
            msg.contains("names a backing file") && msg.contains(expect),
            "{msg}"
        );
    }
}

#[test]
fn vmdk_sparse_flat_and_a_descriptor_naming_etc_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    qemu_img(d, &["create", "-q", "-f", "vmdk", "sparse.vmdk", "1M"]);
    assert_eq!(qemu_info(&d.join("sparse.vmdk"))["format"], "vmdk");
    let info = inspect(&d.join("sparse.vmdk"));
    assert_eq!(info.format, ImageFormat::Vmdk);
    // Its embedded descriptor names the file itself; QEMU reads that descriptor's extents
    // only when the header's capacity is 0, so nothing here names another file.
    assert_eq!(info.findings, vec![]);

    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            "flat.vmdk",
            "1M",
        ],
    );
    let info = inspect(&d.join("flat.vmdk"));
    assert_eq!(info.format, ImageFormat::Vmdk);
    assert_eq!(
        info.findings,
        vec![Finding::Extent {
            name: "flat-flat.vmdk".into()
        }]
    );
    // The descriptor qemu-img wrote, with its extent now naming a host file.
    let desc = std::fs::read_to_string(d.join("flat.vmdk")).unwrap();
    assert!(desc.starts_with("# Disk DescriptorFile"));
    let evil = d.join("evil.vmdk");
    std::fs::write(&evil, desc.replace("\"flat-flat.vmdk\"", "\"/etc/shadow\"")).unwrap();
    let msg = inspect(&evil).refusal(ImagePolicy::OpenedAsRaw).unwrap();
    assert_eq!(msg, r#"vmdk image names extent file "/etc/shadow""#);
    let msg = inspect(&evil).refusal(ImagePolicy::Imported).unwrap();
    assert_eq!(
        msg,
        r#"vmdk image names extent file "/etc/shadow"; vmdk images are not accepted (raw or qcow2 expected)"#
    );

    // The sparse image's embedded descriptor (at 0x200) rewritten the same way.
    let sparse = d.join("sparse.vmdk");
    let mut data = std::fs::read(&sparse).unwrap();
    let text = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/shadow\" 0\n";
    data[0x200..0x200 + 1024].fill(0);
    data[0x200..0x200 + text.len()].copy_from_slice(text);
    std::fs::write(&sparse, &data).unwrap();
    // With a capacity in the header QEMU never opens those extent lines...
    assert_eq!(inspect(&sparse).findings, vec![]);
    // ...with capacity 0 it opens the descriptor (at sector 1) as the image's own.
    data[12..20].copy_from_slice(&0u64.to_le_bytes());
    data[28..36].copy_from_slice(&1u64.to_le_bytes());
    std::fs::write(&sparse, &data).unwrap();
    assert_eq!(
        inspect(&sparse).findings,
        vec![Finding::Extent {
            name: "/etc/shadow".into()
        }]
    );
}

#[test]
fn other_formats_made_by_qemu_img_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qemu_img(d, &["create", "-q", "-f", "raw", "base.raw", "1M"]);
    let cases: &[(&str, &[&str], ImageFormat)] = &[
        ("vpc", &[], ImageFormat::Vpc),
        ("vhdx", &[], ImageFormat::Vhdx),
        ("vdi", &[], ImageFormat::Vdi),
        ("qed", &[], ImageFormat::Qed),
        ("qcow", &[], ImageFormat::Qcow),
        ("parallels", &[], ImageFormat::Parallels),
        (
            "luks",
            &[
                "--object",
                "secret,id=sec0,data=key",
                "-o",
                "key-secret=sec0",
            ],
            ImageFormat::Luks,
        ),
    ];
    for (fmt, extra, expect) in cases {
        let name = format!("img.{fmt}");
        let mut args = vec!["create", "-q", "-f", fmt];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&name, "1M"]);
        qemu_img(d, &args);
        let path = d.join(&name);
        if *fmt != "luks" {
            assert_eq!(qemu_info(&path)["format"], *fmt, "qemu-img probes {fmt}");
        }
        let info = inspect(&path);
        assert_eq!(info.format, *expect, "{fmt}");
        let msg = info.refusal(ImagePolicy::Imported).unwrap();
        assert!(
            msg.ends_with(&format!(
                "{fmt} images are not accepted (raw or qcow2 expected)"
            )),
            "{msg}"
        );
        assert_eq!(
            info.refusal(ImagePolicy::OpenedAsRaw),
            None,
            "{fmt}: {info:?}"
        );
    }

    qemu_img(
        d,
        &[
            "create", "-q", "-f", "qed", "-b", "base.raw", "-F", "raw", "over.qed",
        ],
    );
    assert_eq!(
        qemu_info(&d.join("over.qed"))["backing-filename"],
        "base.raw"
    );
    let info = inspect(&d.join("over.qed"));
    assert_eq!(info.format, ImageFormat::Qed);
    assert_eq!(
        info.refusal(ImagePolicy::OpenedAsRaw).as_deref(),
        Some(r#"qed image names a backing file "base.raw""#)
    );
    let info = inspect(&d.join("base.raw"));
    assert_eq!(info.format, ImageFormat::Raw);
    assert_eq!(info.refusal(ImagePolicy::Imported), None);
}

/// The issue's scenario: the guest writes a qcow2 header with an external data file onto its
/// raw hostDisk (here through QEMU's own block layer, `qemu-io -f raw`); on the next start the
/// disk is still raw and the VM is refused with the reason instead of QEMU opening the file.
#[test]
fn guest_written_qcow2_header_on_a_host_disk_refuses_the_start() {
    let root = tempfile::tempdir().unwrap();
    let roots = [root.path().to_path_buf()];
    let disk = root.path().join("vm/disk.img");
    let d = open_host_disk(
        "hostdisk",
        &roots,
        &disk,
        HostDiskType::DiskOrCreate,
        Some("16Mi"),
    )
    .unwrap();
    assert!(d.created);
    drop(d);

    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("xetc")).unwrap();
    qemu_img(
        work.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=xetc/passwd",
            "h.qcow2",
            "16M",
        ],
    );
    let header: PathBuf = work.path().join("h.qcow2");
    patch(&header, b"xetc/passwd", b"/etc/passwd", 65536);
    let len = std::fs::metadata(&header).unwrap().len().to_string();
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("write -s {} 0 {len}", header.display()))
        .arg(&disk)
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let err = open_host_disk("hostdisk", &roots, &disk, HostDiskType::Disk, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "volume hostdisk: disk image {} refused: qcow2 image names an external data file \"/etc/passwd\"",
            disk.canonicalize().unwrap().display()
        )
    );
    // The launcher's content probe for read-only bases refuses it as well.
    let err = kubevirt_diskprep::format::detect_format("hostdisk", &disk).unwrap_err();
    assert!(err.to_string().contains("/etc/passwd"), "{err}");
}
