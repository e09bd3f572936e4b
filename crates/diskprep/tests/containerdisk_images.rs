//! containerDisk edge cases with images built here and pushed by the Rust OCI client to a
//! real registry: layer order, gzip and plain tar, `containerDisk.path`, and images we refuse.

use std::io::Write as _;
use std::process::Command;

use kubevirt_diskprep::containerdisk::{ContainerDiskCache, PullPolicy, RegistryConfig};
use kubevirt_diskprep::{DiskFormat, DiskPrepError};
use kubevirt_testenv::Registry;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn push(registry: &Registry, repo_tag: &str, layers: Vec<ImageLayer>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: Reference = format!("{}/{repo_tag}", registry.host()).parse().unwrap();
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    client
        .push(&reference, &layers, config, &RegistryAuth::Anonymous, None)
        .await
        .unwrap();
}

fn cache_for(registry: &Registry, dir: &std::path::Path) -> ContainerDiskCache {
    ContainerDiskCache::new(
        dir,
        RegistryConfig {
            mirrors: Default::default(),
            insecure: vec![registry.host()],
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_apply_in_order_and_path_selects_a_file() {
    let registry = Registry::start().unwrap();
    let old = vec![0xAAu8; 8192];
    let new = vec![0x55u8; 12288];
    let custom = vec![0x77u8; 4096];
    push(
        &registry,
        "test/layered:v1",
        vec![
            ImageLayer::oci_v1_gzip(gzip(&tar_of(&[("disk/disk.img", &old)])), None),
            ImageLayer::oci_v1(
                tar_of(&[("./disk/disk.img", &new), ("custom/root.img", &custom)]),
                None,
            ),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_for(&registry, dir.path());
    let image = format!("{}/test/layered:v1", registry.host());

    let disk = cache
        .pull("rootdisk", &image, PullPolicy::IfNotPresent, &|_| {})
        .await
        .unwrap();
    assert_eq!(disk.format, DiskFormat::Raw);
    assert_eq!(
        std::fs::read(&disk.path).unwrap(),
        new,
        "the later layer wins"
    );

    let by_path = cache
        .pull_disk(
            "rootdisk",
            &image,
            Some("/custom/root.img"),
            PullPolicy::IfNotPresent,
            &|_| {},
        )
        .await
        .unwrap();
    assert_ne!(by_path.path, disk.path);
    assert_eq!(std::fs::read(&by_path.path).unwrap(), custom);
    assert!(
        !by_path.from_cache,
        "a different path is a different cache entry"
    );
    assert_eq!(by_path.manifest_digest, disk.manifest_digest);

    let err = cache
        .pull_disk(
            "rootdisk",
            &image,
            Some("/custom/missing.img"),
            PullPolicy::IfNotPresent,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DiskPrepError::NotAContainerDisk { ref reason, .. } if reason.contains("/custom/missing.img")),
        "{err}"
    );
    let err = cache
        .pull_disk(
            "rootdisk",
            &image,
            Some("/custom/../etc/passwd"),
            PullPolicy::IfNotPresent,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("containerDisk.path"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_that_are_not_container_disks_are_refused() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_for(&registry, dir.path());
    let pull = |name: &str| {
        let image = format!("{}/test/{name}:v1", registry.host());
        let cache = &cache;
        async move {
            cache
                .pull("vol", &image, PullPolicy::IfNotPresent, &|_| {})
                .await
                .unwrap_err()
        }
    };

    push(
        &registry,
        "test/two-disks:v1",
        vec![ImageLayer::oci_v1(
            tar_of(&[("disk/a.img", b"a"), ("disk/b.img", b"b")]),
            None,
        )],
    )
    .await;
    let err = pull("two-disks").await;
    let msg = err.to_string();
    assert!(
        msg.contains("/disk/a.img") && msg.contains("/disk/b.img"),
        "{msg}"
    );

    push(
        &registry,
        "test/no-disk:v1",
        vec![ImageLayer::oci_v1(tar_of(&[("etc/hostname", b"x")]), None)],
    )
    .await;
    let err = pull("no-disk").await;
    assert!(err.to_string().contains("no file under /disk/"), "{err}");

    // A qcow2 naming a host file as backing file must never reach QEMU.
    let qdir = tempfile::tempdir().unwrap();
    let q = qdir.path().join("evil.qcow2");
    let st = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/hostname",
            "-u",
        ])
        .arg(&q)
        .arg("1M")
        .status()
        .unwrap();
    assert!(st.success());
    let evil = std::fs::read(&q).unwrap();
    push(
        &registry,
        "test/backing:v1",
        vec![ImageLayer::oci_v1_gzip(
            gzip(&tar_of(&[("disk/disk.qcow2", &evil)])),
            None,
        )],
    )
    .await;
    let err = pull("backing").await;
    assert!(err.to_string().contains("backing file"), "{err}");

    push(
        &registry,
        "test/zstd:v1",
        vec![ImageLayer::new(
            b"(\xb5/\xfd not really zstd".to_vec(),
            "application/vnd.oci.image.layer.v1.tar+zstd".to_owned(),
            None,
        )],
    )
    .await;
    let err = pull("zstd").await;
    assert!(
        matches!(err, DiskPrepError::UnsupportedLayer { .. }),
        "{err:?}"
    );

    push(
        &registry,
        "test/garbage:v1",
        vec![ImageLayer::oci_v1_gzip(
            b"\x1f\x8b not gzip at all".to_vec(),
            None,
        )],
    )
    .await;
    let err = pull("garbage").await;
    assert!(
        matches!(err, DiskPrepError::NotAContainerDisk { .. }),
        "{err:?}"
    );

    // Nothing half-done is left in the cache.
    assert!(std::fs::read_dir(dir.path().join("disks/sha256"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}
