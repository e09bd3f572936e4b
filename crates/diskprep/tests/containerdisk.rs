//! containerDisk pulls against a real registry (Debian's docker-registry on loopback) with
//! the test guest's containerDisk image pushed by skopeo.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kubevirt_diskprep::containerdisk::{
    ContainerDiskCache, PullPolicy, PullProgress, RegistryConfig,
};
use kubevirt_diskprep::{DiskFormat, DiskPrepError};
use kubevirt_testenv::{guests, Registry, UPSTREAM_DEMO_IMAGE};
use sha2::{Digest as _, Sha256};

/// What upstream manifests say; mapped to the local registry.
const UPSTREAM_REF: &str = "registry:5000/kubevirt/cirros-container-disk-demo:devel";

fn mapped_config(registry: &Registry) -> RegistryConfig {
    let mut mirrors = HashMap::new();
    mirrors.insert(
        "registry:5000".to_owned(),
        format!("http://{}", registry.host()),
    );
    RegistryConfig {
        mirrors,
        insecure: Vec::new(),
    }
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn recorder() -> (
    Arc<Mutex<Vec<PullProgress>>>,
    impl Fn(PullProgress) + Send + Sync,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, move |p| s.lock().unwrap().push(p))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The registry's storage directory, found through its process's config file (the fixture
/// keeps it private). Used to corrupt a stored blob on purpose.
fn registry_storage(registry: &Registry) -> PathBuf {
    let want = format!("addr: {}", registry.addr);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.len() >= 3 && args[0].ends_with("docker-registry") && args[1] == "serve" {
            let Ok(cfg) = std::fs::read_to_string(&args[2]) else {
                continue;
            };
            if cfg.contains(&want) {
                let root = cfg
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("rootdirectory: "))
                    .unwrap();
                return PathBuf::from(root.trim());
            }
        }
    }
    panic!("docker-registry process for {} not found", registry.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_via_mapping_then_serve_from_cache_without_network() {
    let registry = Registry::start().unwrap();
    registry
        .push_guest_containerdisk(UPSTREAM_DEMO_IMAGE)
        .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ContainerDiskCache::new(cache_dir.path(), mapped_config(&registry));

    let (seen, progress) = recorder();
    let started = std::time::Instant::now();
    let disk = cache
        .pull(
            "containerdisk",
            UPSTREAM_REF,
            PullPolicy::IfNotPresent,
            &progress,
        )
        .await
        .unwrap();
    eprintln!("first pull (download + extract): {:?}", started.elapsed());
    assert!(!disk.from_cache);
    assert_eq!(disk.format, DiskFormat::Qcow2);
    assert_eq!(
        disk.resolved_reference,
        format!("{}/{UPSTREAM_DEMO_IMAGE}", registry.host())
    );
    assert!(disk.manifest_digest.starts_with("sha256:"));
    assert!(disk.path.starts_with(cache_dir.path().join("disks/sha256")));
    // The extracted base is byte-identical to the image that was packed, and read-only.
    assert_eq!(sha256_file(&disk.path), sha256_file(&guests().disk_qcow2));
    assert_eq!(
        std::fs::metadata(&disk.path).unwrap().permissions().mode() & 0o222,
        0
    );

    // Progress: starts at 0, never goes back, ends at the total.
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    let total = seen[0].bytes_total;
    assert!(total > 1_000_000, "{total}");
    assert_eq!(seen[0].bytes_done, 0);
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    assert_eq!(seen.last().unwrap().bytes_done, total);

    // Blobs are stored under their digest.
    for blob in files_under(&cache_dir.path().join("blobs/sha256")) {
        let name = blob.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(sha256_file(&blob), name);
    }
    assert!(files_under(&cache_dir.path().join("tmp")).is_empty());

    // Registry gone: IfNotPresent and Never are served from the cache, Always must fail.
    drop(registry);
    let started = std::time::Instant::now();
    let again = cache
        .pull(
            "containerdisk",
            UPSTREAM_REF,
            PullPolicy::IfNotPresent,
            &|_| {},
        )
        .await
        .unwrap();
    eprintln!("cached pull: {:?}", started.elapsed());
    assert!(again.from_cache);
    assert_eq!(again.path, disk.path);
    let never = cache
        .pull("containerdisk", UPSTREAM_REF, PullPolicy::Never, &|_| {})
        .await
        .unwrap();
    assert_eq!(never.path, disk.path);
    let err = cache
        .pull("containerdisk", UPSTREAM_REF, PullPolicy::Always, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, DiskPrepError::Registry { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_and_never_policy_give_clear_errors() {
    let registry = Registry::start().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ContainerDiskCache::new(cache_dir.path(), mapped_config(&registry));
    let err = cache
        .pull(
            "rootdisk",
            "registry:5000/kubevirt/nothing-here:v1",
            PullPolicy::IfNotPresent,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DiskPrepError::ImageNotFound { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("rootdisk") && msg.contains("nothing-here"),
        "{msg}"
    );

    let err = cache
        .pull(
            "rootdisk",
            "registry:5000/kubevirt/nothing-here:v1",
            PullPolicy::Never,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DiskPrepError::NotCached { .. }), "{err:?}");

    let err = cache
        .pull(
            "rootdisk",
            "UPPER/case:bad tag",
            PullPolicy::IfNotPresent,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DiskPrepError::InvalidImageReference { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_rejected_and_not_cached() {
    let registry = Registry::start().unwrap();
    registry
        .push_guest_containerdisk(UPSTREAM_DEMO_IMAGE)
        .unwrap();
    // Flip bytes of the largest stored blob (the disk layer), keeping its length.
    let storage = registry_storage(&registry);
    let layer = files_under(&storage)
        .into_iter()
        .filter(|p| p.ends_with("data") && p.to_string_lossy().contains("/blobs/sha256/"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&layer, &bytes).unwrap();

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ContainerDiskCache::new(cache_dir.path(), mapped_config(&registry));
    let err = cache
        .pull(
            "containerdisk",
            UPSTREAM_REF,
            PullPolicy::IfNotPresent,
            &|_| {},
        )
        .await
        .unwrap_err();
    match &err {
        DiskPrepError::DigestMismatch {
            expected, actual, ..
        } => assert_ne!(expected, actual),
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("containerdisk"));
    assert!(files_under(&cache_dir.path().join("blobs")).is_empty());
    assert!(files_under(&cache_dir.path().join("disks")).is_empty());
    assert!(files_under(&cache_dir.path().join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_one_cache_entry() {
    let registry = Registry::start().unwrap();
    registry
        .push_guest_containerdisk(UPSTREAM_DEMO_IMAGE)
        .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    // Separate cache objects on one directory: like separate launcher processes.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let cache = ContainerDiskCache::new(cache_dir.path(), mapped_config(&registry));
        tasks.push(tokio::spawn(async move {
            cache
                .pull(
                    &format!("disk{i}"),
                    UPSTREAM_REF,
                    PullPolicy::Always,
                    &|_| {},
                )
                .await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    assert!(results.iter().all(|r| r.path == results[0].path));
    assert_eq!(
        results.iter().filter(|r| !r.from_cache).count(),
        1,
        "exactly one puller downloads"
    );
    assert_eq!(
        sha256_file(&results[0].path),
        sha256_file(&guests().disk_qcow2)
    );
    assert_eq!(
        std::fs::read_dir(cache_dir.path().join("disks/sha256"))
            .unwrap()
            .count(),
        1
    );
    assert!(files_under(&cache_dir.path().join("tmp")).is_empty());
}
