//! The seed ISOs, read back by real ISO tools (isoinfo from genisoimage, xorriso).

use std::path::Path;
use std::process::Command;

use kubevirt_diskprep::cloudinit::{
    write_seed_iso, CloudInitKind, CloudInitSource, InstanceIdentity,
};
use kubevirt_diskprep::iso9660::{build_iso, IsoFile};

fn isoinfo(args: &[&str], iso: &Path) -> Vec<u8> {
    let out = Command::new("isoinfo")
        .args(args)
        .arg("-i")
        .arg(iso)
        .output()
        .expect("isoinfo installed (genisoimage)");
    assert!(
        out.status.success(),
        "isoinfo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn joliet_file(iso: &Path, path: &str) -> Vec<u8> {
    isoinfo(&["-J", "-x", path], iso)
}

fn identity() -> InstanceIdentity {
    InstanceIdentity {
        namespace: "default".into(),
        name: "vmi-nocloud".into(),
        uid: Some("0b4d8a8e-5d4f-4c6b-9e55-7a8f3c2d1e00".into()),
        hostname: None,
        public_keys: Vec::new(),
    }
}

#[test]
fn nocloud_iso_is_readable_by_isoinfo_and_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("seed.iso");
    let user_data = "#cloud-config\npassword: fedora\nchpasswd: { expire: False }\n";
    let network = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";
    let src = CloudInitSource {
        user_data: Some(user_data.into()),
        network_data: Some(network.into()),
        ..Default::default()
    };
    write_seed_iso(
        "cloudinitdisk",
        CloudInitKind::NoCloud,
        &src,
        &identity(),
        &iso,
    )
    .unwrap();

    let pvd = String::from_utf8(isoinfo(&["-d"], &iso)).unwrap();
    assert!(pvd.contains("Volume id: cidata"), "{pvd}");
    assert!(pvd.contains("Joliet with UCS level 3"), "{pvd}");

    let listing = String::from_utf8(isoinfo(&["-J", "-f"], &iso)).unwrap();
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(names, ["/meta-data", "/network-config", "/user-data"]);

    assert_eq!(joliet_file(&iso, "/user-data"), user_data.as_bytes());
    assert_eq!(joliet_file(&iso, "/network-config"), network.as_bytes());
    assert_eq!(
        String::from_utf8(joliet_file(&iso, "/meta-data")).unwrap(),
        "instance-id: 0b4d8a8e-5d4f-4c6b-9e55-7a8f3c2d1e00\nlocal-hostname: vmi-nocloud\n"
    );
    // The plain ISO 9660 tree is there too, for readers without Joliet.
    let primary = String::from_utf8(isoinfo(&["-f"], &iso)).unwrap();
    assert!(primary.contains("/USER_DATA.;1"), "{primary}");
    assert_eq!(
        isoinfo(&["-x", "/USER_DATA.;1"], &iso),
        user_data.as_bytes()
    );

    // xorriso checks the structure more strictly and must not complain.
    let out = Command::new("xorriso")
        .args([
            "-abort_on",
            "WARNING",
            "-return_with",
            "WARNING",
            "32",
            "-indev",
        ])
        .arg(&iso)
        .args(["-ls", "/", "--"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xorriso: {stderr}");
    assert!(stderr.contains("Volume id    : 'cidata'"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for f in ["'meta-data'", "'network-config'", "'user-data'"] {
        assert!(stdout.contains(f), "{stdout}");
    }
}

#[test]
fn config_drive_iso_layout() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("configdrive.iso");
    let user_data = b"#!/bin/sh\necho hello from config drive\n".to_vec();
    let src = CloudInitSource {
        user_data_secret: Some(user_data.clone()),
        network_data_base64: Some("eyJsaW5rcyI6IFtdfQ==".into()), // {"links": []}
        ..Default::default()
    };
    write_seed_iso("cd", CloudInitKind::ConfigDrive, &src, &identity(), &iso).unwrap();
    let pvd = String::from_utf8(isoinfo(&["-d"], &iso)).unwrap();
    assert!(pvd.contains("Volume id: config-2"), "{pvd}");
    let listing = String::from_utf8(isoinfo(&["-J", "-f"], &iso)).unwrap();
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "/openstack",
            "/openstack/latest",
            "/openstack/latest/meta_data.json",
            "/openstack/latest/network_data.json",
            "/openstack/latest/user_data",
        ]
    );
    assert_eq!(joliet_file(&iso, "/openstack/latest/user_data"), user_data);
    assert_eq!(
        joliet_file(&iso, "/openstack/latest/network_data.json"),
        br#"{"links": []}"#
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&joliet_file(&iso, "/openstack/latest/meta_data.json")).unwrap();
    assert_eq!(meta["uuid"], "0b4d8a8e-5d4f-4c6b-9e55-7a8f3c2d1e00");
    assert_eq!(meta["hostname"], "vmi-nocloud");
}

#[test]
fn many_and_large_files_round_trip() {
    // Directories spanning several sectors and files spanning many: exercises record packing.
    let mut files = Vec::new();
    for i in 0..120 {
        let name = format!("dir{}/file-with-a-rather-long-name-{i:03}.txt", i % 3);
        let data: Vec<u8> = (0..(i * 997) % 9000).map(|b| (b * 31 + i) as u8).collect();
        files.push(IsoFile::new(name, data));
    }
    files.push(IsoFile::new(
        "big.bin",
        (0..300_000u32).map(|b| (b % 251) as u8).collect::<Vec<_>>(),
    ));
    files.push(IsoFile::new("empty", Vec::new()));
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("many.iso");
    std::fs::write(&iso, build_iso("TESTVOL", &files).unwrap()).unwrap();
    for f in &files {
        assert_eq!(
            joliet_file(&iso, &format!("/{}", f.path)),
            f.data,
            "{}",
            f.path
        );
    }
    let out = Command::new("xorriso")
        .args([
            "-abort_on",
            "WARNING",
            "-return_with",
            "WARNING",
            "32",
            "-indev",
        ])
        .arg(&iso)
        .args(["-find", "/", "-type", "f", "--"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        files.len()
    );
}
