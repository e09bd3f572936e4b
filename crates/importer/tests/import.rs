//! Imports from a real nginx on loopback, of images made by qemu-img; results compared with
//! `qemu-img compare` against the original raw disk.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kubevirt_importer::{
    clone_disk, create_blank, import_file, import_http, import_stream, HttpSource, ImportErrorKind,
    Imported, Progress, Target,
};

fn source(url: String) -> HttpSource {
    HttpSource {
        url,
        ..HttpSource::default()
    }
}

async fn http(src: &HttpSource, target: &Target) -> kubevirt_importer::Result<Imported> {
    import_http(src, target, |_| {}).await
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "disk.img")
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_over_http() {
    let f = fixtures();
    let base = f.path("base.raw");
    for (name, format, unpacked) in [
        ("base.raw", "raw", &[][..]),
        ("base.qcow2", "qcow2", &[]),
        ("base.vmdk", "vmdk", &[]),
        ("stream.vmdk", "vmdk", &[]),
        ("base.vhdx", "vhdx", &[]),
        ("base.vhd", "vpc", &[]),
        ("base.vdi", "vdi", &[]),
        ("disk.ova", "vmdk", &["ova"]),
        ("base.raw.gz", "raw", &["gz"]),
        ("base.raw.zst", "raw", &["zst"]),
        ("base.qcow2.xz", "qcow2", &["xz"]),
        ("base.vhdx.gz", "vhdx", &["gz"]),
        ("base.raw.gz.xz", "raw", &["xz", "gz"]),
    ] {
        let (dir, target) = target(DISK);
        let got = http(&source(f.url(name)), &target)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(got.source_format, format, "{name}");
        assert_eq!(got.virtual_size, DISK, "{name}");
        assert_eq!(got.unpacked, unpacked, "{name}");
        assert_eq!(
            got.bytes_read,
            std::fs::metadata(f.path(name)).unwrap().len(),
            "{name}"
        );
        assert_same_disk(&target.disk, &base);
        assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso_is_raw_and_disk_grows_to_capacity() {
    let f = fixtures();
    let (_dir, target) = target(8 * MIB + 100);
    let got = http(&source(f.url("cd.iso")), &target).await.unwrap();
    assert_eq!(got.source_format, "iso");
    let iso_len = std::fs::metadata(f.path("cd.iso")).unwrap().len();
    assert_eq!(got.virtual_size, iso_len);
    // Grown to the capacity in whole sectors, like CDI's resize.
    assert_eq!(std::fs::metadata(&target.disk).unwrap().len(), 8 * MIB);
    let disk = std::fs::read(&target.disk).unwrap();
    assert_eq!(
        &disk[..iso_len as usize],
        &std::fs::read(f.path("cd.iso")).unwrap()[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ova_names_write_nothing_outside() {
    let f = fixtures();
    let (dir, target) = target(DISK);
    let got = http(&source(f.url("evil.ova")), &target).await.unwrap();
    assert_eq!(got.unpacked, vec!["ova".to_owned()]);
    assert_same_disk(&target.disk, &f.path("base.raw"));
    assert!(!Path::new("/tmp/importer-evil.vmdk").exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_cdi_worded_and_final() {
    let f = fixtures();
    let (dir, target) = target(DISK);
    let e = http(&source(f.url("missing.img")), &target)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::NotFound);
    assert_eq!(
        e.message,
        "expected status code 200, got 404. Status: 404 Not Found"
    );
    assert!(!e.retryable);
    assert!(!target.disk.exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, target) = target(DISK);
    let e = http(&source(format!("http://127.0.0.1:{port}/x.img")), &target)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::Http);
    assert!(e.retryable);
    assert!(
        e.message.starts_with("HTTP request errored: "),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_the_ca_bundle() {
    let f = fixtures();
    let (_dir, target) = target(DISK);
    let mut src = source(f.tls_url("base.qcow2"));
    let e = http(&src, &target).await.unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::Tls, "{e:?}");
    assert!(!e.retryable);
    assert!(
        e.message.starts_with("HTTP request errored: "),
        "{}",
        e.message
    );
    assert!(
        e.message.to_lowercase().contains("certificate"),
        "{}",
        e.message
    );

    src.ca_pem = Some(f.ca_pem.clone());
    let got = http(&src, &target).await.unwrap();
    assert_eq!(got.source_format, "qcow2");
    assert_same_disk(&target.disk, &f.path("base.raw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_extra_headers() {
    let f = fixtures();
    let (_dir, target) = target(DISK);
    let mut src = source(f.auth_url("base.vdi"));
    let e = http(&src, &target).await.unwrap_err();
    assert_eq!(
        e.message,
        "expected status code 200, got 401. Status: 401 Unauthorized"
    );
    assert_eq!(e.kind, ImportErrorKind::Http);
    src.basic_auth = Some((f.user.to_owned(), "wrong".to_owned()));
    assert!(http(&src, &target).await.is_err());
    src.basic_auth = Some((f.user.to_owned(), f.password.to_owned()));
    src.extra_headers = vec![("X-Importer-Test".to_owned(), "yes".to_owned())];
    let got = http(&src, &target).await.unwrap();
    assert_eq!(got.source_format, "vdi");
    assert_same_disk(&target.disk, &f.path("base.raw"));
}

fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_over_the_served_bytes() {
    let f = fixtures();
    let (dir, target) = target(DISK);
    let digest = sha256_of(&f.path("base.raw.gz"));
    let mut src = source(f.url("base.raw.gz"));
    src.checksum = Some(format!("sha256:{digest}"));
    http(&src, &target).await.unwrap();
    assert_same_disk(&target.disk, &f.path("base.raw"));

    std::fs::remove_file(&target.disk).unwrap();
    let wrong = "0".repeat(64);
    src.checksum = Some(format!("SHA256:{wrong}"));
    let e = http(&src, &target).await.unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::Checksum);
    assert!(!e.retryable);
    assert_eq!(
        e.message,
        format!(
            "checksum validation failed: checksum mismatch: expected sha256:{wrong}, calculated sha256:{digest}"
        )
    );
    assert!(!target.disk.exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());

    // Converted while downloading: the mismatch, found at the end, still wins.
    let digest = sha256_of(&f.path("base.qcow2"));
    let src_qcow2 = HttpSource {
        checksum: Some(format!("md5:{}", "f".repeat(32))),
        ..source(f.url("base.qcow2"))
    };
    let e = http(&src_qcow2, &target).await.unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::Checksum, "{e:?}");
    assert!(!target.disk.exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    let src_qcow2 = HttpSource {
        checksum: Some(format!("sha256:{digest}")),
        ..src_qcow2
    };
    http(&src_qcow2, &target).await.unwrap();
    assert_same_disk(&target.disk, &f.path("base.raw"));

    src.checksum = Some("sha256:abc".to_owned());
    let e = http(&src, &target).await.unwrap_err();
    assert_eq!(
        e.message,
        "invalid checksum: invalid sha256 hash length: expected 64 hex characters, got 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_images_are_refused() {
    let f = fixtures();
    for (name, needle) in [
        ("truncated.qcow2", "qemu-img check found"),
        ("garbage.qcow2", "unsupported qcow2 version"),
    ] {
        let (dir, target) = target(DISK);
        let e = http(&source(f.url(name)), &target).await.unwrap_err();
        assert_eq!(e.kind, ImportErrorKind::Corrupt, "{name}: {e:?}");
        assert!(!e.retryable);
        assert!(e.message.contains(needle), "{name}: {}", e.message);
        assert!(!target.disk.exists());
        assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_before_conversion() {
    let f = fixtures();
    let (dir, target) = target(DISK);
    let e = http(&source(f.url("big.qcow2")), &target)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::TooLarge);
    assert_eq!(
        e.message,
        format!(
            "virtual image size {} is larger than the reported available storage {DISK}. A larger PVC is required",
            1u64 << 30
        )
    );
    assert!(!target.disk.exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());

    // A raw source is refused from its Content-Length, before any byte is written.
    let (_dir, small) = target_small();
    let e = http(&source(f.url("base.raw")), &small).await.unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::TooLarge);
    assert!(e
        .message
        .starts_with(&format!("virtual image size {DISK} is larger")));
    // Decompressed raw data is bounded by the capacity as it streams.
    let e = http(&source(f.url("base.raw.zst")), &small)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::TooLarge, "{e:?}");
    assert!(e
        .message
        .contains("is larger than the reported available storage"));
}

fn target_small() -> (tempfile::TempDir, Target) {
    target(32 * MIB)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_naming_other_files_are_refused() {
    let f = fixtures();
    for (name, needle) in [
        ("backed.qcow2", "names a backing file"),
        ("flat.vmdk", "names extent file \"flat-flat.vmdk\""),
    ] {
        let (dir, target) = target(DISK);
        let e = http(&source(f.url(name)), &target).await.unwrap_err();
        assert_eq!(e.kind, ImportErrorKind::Refused, "{name}: {e:?}");
        assert!(
            e.message
                .starts_with(&format!("Image {} is invalid because", f.url(name))),
            "{}",
            e.message
        );
        assert!(e.message.contains(needle), "{}", e.message);
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }
    let (_dir, target) = target(DISK);
    let e = http(&source(f.url("base.qed")), &target).await.unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::Refused);
    assert_eq!(
        e.message,
        format!("Invalid format qed for image {}", f.url("base.qed"))
    );
}

/// Starts an import from the rate-limited location and drops it once `at_least` bytes came.
async fn interrupted(src: &HttpSource, target: &Target, at_least: u64) {
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    let import = import_http(src, target, move |p: Progress| {
        seen2.store(p.done, Ordering::Relaxed);
    });
    let watch = async {
        while seen.load(Ordering::Relaxed) < at_least {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = import => panic!("import finished before it was interrupted: {r:?}"),
        _ = watch => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_qcow2_with_range() {
    let f = fixtures();
    let (dir, target) = target(DISK);
    let src = source(f.slow_url("resume.qcow2"));
    interrupted(&src, &target, MIB).await;
    let partial = dir.path().join("disk.img.source");
    let have = std::fs::metadata(&partial)
        .expect("partial download kept")
        .len();
    assert!(have >= MIB, "{have}");
    assert!(dir.path().join("disk.img.source.json").exists());
    assert!(!target.disk.exists());

    let got = http(&src, &target).await.unwrap();
    assert!(got.resumed_from >= MIB - 4096, "{got:?}");
    assert_eq!(
        got.bytes_read,
        std::fs::metadata(f.path("resume.qcow2")).unwrap().len()
    );
    let log = f.log_lines("/slow/resume.qcow2");
    assert!(
        log.iter()
            .any(|l| l.starts_with("206 ") && l.contains("bytes=")),
        "{log:?}"
    );
    assert_same_disk(&target.disk, &f.path("rand.raw"));
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_raw_into_the_disk_itself() {
    let f = fixtures();
    let (dir, target) = target(8 * MIB);
    let mut src = source(f.slow_url("rand2.raw"));
    // The checksum must cover the resumed prefix too.
    src.checksum = Some(format!("sha256:{}", sha256_of(&f.path("rand2.raw"))));
    interrupted(&src, &target, 2 * MIB).await;
    assert!(dir.path().join("disk.img.tmp").exists());
    let got = http(&src, &target).await.unwrap();
    assert!(got.resumed_from >= MIB, "{got:?}");
    let log = f.log_lines("/slow/rand2.raw");
    assert!(log.iter().any(|l| l.starts_with("206 ")), "{log:?}");
    assert_same_disk(&target.disk, &f.path("rand.raw"));
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_source_restarts_from_zero() {
    let f = fixtures();
    let (dir, target) = target(DISK);
    let url = f.url("resume2.qcow2");
    // A partial download recorded with a validator the server no longer has.
    std::fs::write(dir.path().join("disk.img.source"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(
        dir.path().join("disk.img.source.json"),
        format!(
            r#"{{"url":"{url}","etag":"\"stale\"","last_modified":null,"total":null,"layout":"source","iso":false}}"#
        ),
    )
    .unwrap();
    let got = http(&source(url), &target).await.unwrap();
    assert_eq!(got.resumed_from, 0);
    let log = f.log_lines("/resume2.qcow2");
    assert!(
        log.iter()
            .any(|l| l.starts_with("200 ") && l.contains("bytes=1048576-")),
        "{log:?}"
    );
    assert_same_disk(&target.disk, &f.path("rand.raw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_cdi_style() {
    let f = fixtures();
    let (_dir, target) = target(8 * MIB);
    let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let seen2 = seen.clone();
    import_http(&source(f.slow_url("rand3.raw")), &target, move |p| {
        seen2.lock().unwrap().push(p)
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap();
    // 8 MiB at 4 MiB/s: about 20 reports at 100 ms intervals.
    assert!(seen.len() >= 5 && seen.len() <= 60, "{}", seen.len());
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    let last = seen.last().unwrap();
    assert_eq!(last.percent().as_deref(), Some("100.00%"));
    assert!(seen.iter().any(|p| p
        .percent()
        .is_some_and(|s| s != "100.00%" && s != "0.00%" && s.ends_with('%'))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_streams() {
    let f = fixtures();
    for (name, format) in [
        ("base.qcow2", "qcow2"),
        ("base.raw", "raw"),
        ("base.raw.gz", "raw"),
    ] {
        let (dir, target) = target(DISK);
        let file = tokio::fs::File::open(f.path(name)).await.unwrap();
        let len = file.metadata().await.unwrap().len();
        let got = import_stream(file, Some(len), &target, |_| {})
            .await
            .unwrap();
        assert_eq!(got.source_format, format);
        assert_eq!(got.bytes_read, len);
        assert_same_disk(&target.disk, &f.path("base.raw"));
        assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "{name}");
    }
    // A body shorter than announced.
    let (_dir, target) = target(DISK);
    let file = tokio::fs::File::open(f.path("base.qcow2")).await.unwrap();
    let e = import_stream(file, Some(u64::from(u32::MAX)), &target, |_| {})
        .await
        .unwrap_err();
    assert!(e.retryable);
    assert!(e.message.contains("unexpected EOF"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files() {
    let f = fixtures();
    for (name, format) in [
        ("base.vhdx", "vhdx"),
        ("base.raw", "raw"),
        ("disk.ova", "vmdk"),
        ("base.qcow2.xz", "qcow2"),
    ] {
        let (dir, target) = target(DISK);
        let last = Arc::new(Mutex::new(None));
        let last2 = last.clone();
        let got = import_file(&f.path(name), &target, move |p| {
            *last2.lock().unwrap() = Some(p);
        })
        .await
        .unwrap();
        assert_eq!(got.source_format, format);
        assert_same_disk(&target.disk, &f.path("base.raw"));
        let last = last.lock().unwrap().expect("progress reported");
        assert_eq!(last.percent().as_deref(), Some("100.00%"), "{name}");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "{name}");
    }
    let (_dir, target) = target(DISK);
    let e = import_file(Path::new("/nonexistent/disk.qcow2"), &target, |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_filesystem_is_no_space_and_leaves_nothing() {
    let f = fixtures();
    let Some(fs) = SmallFs::mount("20m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    // Raw fast path: the writer hits ENOSPC.
    let vol = fs.path().join("vol1");
    std::fs::create_dir(&vol).unwrap();
    let target = Target {
        disk: vol.join("disk.img"),
        scratch_dir: vol.clone(),
        capacity: DISK,
    };
    let e = http(&source(f.url("full.raw")), &target).await.unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::NoSpace, "{e:?}");
    assert!(
        e.message.contains("no space left on device"),
        "{}",
        e.message
    );
    assert_eq!(leftovers(&vol), Vec::<String>::new());

    // qemu-img convert hits ENOSPC (the source is read from elsewhere).
    let e = import_file(&f.path("full.qcow2"), &target, |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::NoSpace, "{e:?}");
    assert!(
        e.message.contains("No space left on device"),
        "{}",
        e.message
    );
    assert_eq!(leftovers(&vol), Vec::<String>::new());
    assert!(!target.disk.exists());
}

#[test]
fn blank_and_clone() {
    let f = fixtures();
    let (_dir, blank_target) = target(DISK + 1000);
    let blank = create_blank(&blank_target).unwrap();
    assert_eq!(blank.virtual_size, DISK + 512);
    assert_eq!(
        std::fs::metadata(&blank_target.disk).unwrap().len(),
        DISK + 512
    );
    assert_eq!(allocated(&blank_target.disk), 0);

    let (dir, clone_target) = target(2 * DISK);
    let stats = clone_disk(&f.path("base.raw"), &clone_target).unwrap();
    // ext4 and tmpfs have no reflink: the sparse copy is used.
    let fs_has_reflink = stats.reflinked;
    if !fs_has_reflink {
        assert!(stats.bytes < 8 * MIB, "{stats:?}");
    }
    assert_eq!(
        std::fs::metadata(&clone_target.disk).unwrap().len(),
        2 * DISK
    );
    assert_same_disk(&clone_target.disk, &f.path("base.raw"));
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());

    let (_dir, small) = target_small();
    let e = clone_disk(&f.path("base.raw"), &small).unwrap_err();
    assert_eq!(e.kind, ImportErrorKind::TooLarge);
    assert_eq!(
        e.message,
        format!(
            "target resources requests storage size is smaller than the source {} < {DISK}",
            32 * MIB
        )
    );
}

/// Damaged headers of every kind must give an error or a disk, never a panic or a hang, and
/// leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_headers_never_panic() {
    let f = fixtures();
    let work = tempfile::tempdir().unwrap();
    let mut outcomes = (0, 0);
    for (i, name) in [
        "base.qcow2",
        "stream.vmdk",
        "base.vmdk",
        "base.vhdx",
        "base.vhd",
        "base.vdi",
        "disk.ova",
        "base.raw.gz",
        "base.qcow2.xz",
        "base.raw.zst",
    ]
    .iter()
    .enumerate()
    {
        let data = std::fs::read(f.path(name)).unwrap();
        let head_len = data.len().min(64 << 10);
        for round in 0..4u64 {
            let mut bytes = data.clone();
            let noise = noise(64, (i as u64 + 1) * 1000 + round);
            // A few bytes flipped in the first 1 KiB (headers), a few anywhere in the head.
            for (k, b) in noise.iter().enumerate().take(8) {
                let at = if k < 4 {
                    (noise[k + 8] as usize * 4 + k) % 1024
                } else {
                    (u32::from_le_bytes(noise[k * 4..k * 4 + 4].try_into().unwrap()) as usize)
                        % head_len
                };
                bytes[at] ^= b | 1;
            }
            if round == 3 {
                bytes.truncate(head_len / 2);
            }
            let src = work.path().join(format!("{i}-{round}-{name}"));
            std::fs::write(&src, &bytes).unwrap();
            let (dir, target) = target(DISK);
            let result =
                tokio::time::timeout(Duration::from_secs(20), import_file(&src, &target, |_| {}))
                    .await
                    .unwrap_or_else(|_| panic!("{name} round {round}: hung"));
            match result {
                Ok(_) => outcomes.0 += 1,
                Err(e) => {
                    outcomes.1 += 1;
                    assert!(!target.disk.exists());
                    assert!(!e.message.is_empty());
                }
            }
            assert_eq!(
                leftovers(dir.path()),
                Vec::<String>::new(),
                "{name} {round}"
            );
        }
    }
    eprintln!(
        "damaged images: {} imported, {} refused",
        outcomes.0, outcomes.1
    );
    assert!(outcomes.1 > 0);
}

/// The child side of `killed_process_resumes`: runs one import until killed.
#[tokio::test]
#[ignore = "run by killed_process_resumes in a child process"]
async fn child_import_until_killed() {
    let (Ok(url), Ok(dir)) = (
        std::env::var("IMPORTER_CHILD_URL"),
        std::env::var("IMPORTER_CHILD_DIR"),
    ) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let target = Target {
        disk: dir.join("disk.img"),
        scratch_dir: dir.clone(),
        capacity: DISK,
    };
    let _ = http(&source(url), &target).await;
}

#[test]
fn killed_process_resumes() {
    let f = fixtures();
    let (dir, target) = target(DISK);
    let url = f.slow_url("resume3.qcow2");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_import_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("IMPORTER_CHILD_URL", &url)
        .env("IMPORTER_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = dir.path().join("disk.img.source");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < MIB {
        assert!(
            std::time::Instant::now() < deadline,
            "child made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!target.disk.exists());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(http(&source(url), &target)).unwrap();
    assert!(got.resumed_from >= MIB - 4096, "{got:?}");
    assert!(f
        .log_lines("/slow/resume3.qcow2")
        .iter()
        .any(|l| l.starts_with("206 ")));
    assert_same_disk(&target.disk, &f.path("rand.raw"));
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}
