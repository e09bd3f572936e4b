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

fn qemu_img(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replaces `from` by `to` (same length) in `data`.
fn patched(mut data: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = data
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern");
    data[at..at + to.len()].copy_from_slice(to);
    data
}

/// Disks whose headers name host files (or that are in a format QEMU would interpret) never
/// reach the cache; the reason names what was found. qemu-img only ever sees temporary
/// files: host paths are patched into its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_naming_host_files_are_refused_with_the_reason() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_for(&registry, dir.path());
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    std::fs::create_dir(w.join("xetc")).unwrap();
    qemu_img(
        w,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=xetc/passwd",
            "data.qcow2",
            "1M",
        ],
    );
    let data_file = patched(
        std::fs::read(w.join("data.qcow2")).unwrap(),
        b"xetc/passwd",
        b"/etc/passwd",
    );
    qemu_img(w, &["create", "-q", "-f", "raw", "base.raw", "1M"]);
    qemu_img(
        w,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "backing.qcow2",
        ],
    );
    let backing = patched(
        std::fs::read(w.join("backing.qcow2")).unwrap(),
        b"base.raw",
        b"/dev/sda",
    );
    qemu_img(
        w,
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
    let descriptor = std::fs::read_to_string(w.join("flat.vmdk"))
        .unwrap()
        .replace("\"flat-flat.vmdk\"", "\"/etc/shadow\"");
    qemu_img(w, &["create", "-q", "-f", "vhdx", "d.vhdx", "1M"]);
    let vhdx = std::fs::read(w.join("d.vhdx")).unwrap();

    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "data-file",
            "disk/disk.qcow2",
            data_file.clone(),
            r#"qcow2 image names an external data file "/etc/passwd""#,
        ),
        (
            "backing-file",
            "disk/disk.qcow2",
            backing,
            r#"qcow2 image names a backing file "/dev/sda" (format "raw")"#,
        ),
        (
            "vmdk-descriptor",
            "disk/disk.vmdk",
            descriptor.into_bytes(),
            r#"vmdk image names extent file "/etc/shadow"; vmdk images are not accepted (raw or qcow2 expected)"#,
        ),
        (
            "vhdx",
            "disk/disk.vhdx",
            vhdx,
            "vhdx images are not accepted (raw or qcow2 expected)",
        ),
    ];
    for (name, file, data, reason) in cases {
        push(
            &registry,
            &format!("test/{name}:v1"),
            vec![ImageLayer::oci_v1_gzip(
                gzip(&tar_of(&[(file, &data)])),
                None,
            )],
        )
        .await;
        let image = format!("{}/test/{name}:v1", registry.host());
        let err = cache
            .pull("rootdisk", &image, PullPolicy::IfNotPresent, &|_| {})
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("volume rootdisk: image {image}: /{file} refused: {reason}"),
            "{name}"
        );
        assert!(
            matches!(err, DiskPrepError::UnsafeContainerDisk { .. }),
            "{err:?}"
        );
    }
    assert!(std::fs::read_dir(dir.path().join("disks/sha256"))
        .unwrap()
        .next()
        .is_none());

    // A self-contained qcow2 is accepted; its format is recorded with the cached disk.
    qemu_img(w, &["create", "-q", "-f", "qcow2", "plain.qcow2", "1M"]);
    push(
        &registry,
        "test/plain:v1",
        vec![ImageLayer::oci_v1(
            tar_of(&[(
                "disk/disk.img",
                &std::fs::read(w.join("plain.qcow2")).unwrap(),
            )]),
            None,
        )],
    )
    .await;
    let image = format!("{}/test/plain:v1", registry.host());
    let disk = cache
        .pull("rootdisk", &image, PullPolicy::IfNotPresent, &|_| {})
        .await
        .unwrap();
    assert_eq!(disk.format, DiskFormat::Qcow2);
    assert_eq!(disk.path.file_name().unwrap(), "disk.qcow2");

    // A cached qcow2 from before this policy (here: replaced behind the cache's back) is
    // checked again when it is used.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&disk.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&disk.path, &data_file).unwrap();
    let err = cache
        .pull("rootdisk", &image, PullPolicy::IfNotPresent, &|_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with(r#"refused: qcow2 image names an external data file "/etc/passwd""#),
        "{err}"
    );
}

/// docker-registry with htpasswd (bcrypt) authentication, and the directory holding the
/// password file (it must outlive the registry).
fn auth_registry(user: &str, password: &str) -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // glibc's crypt (libxcrypt) makes bcrypt hashes; no extra package needed.
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            password,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("{user}:{}\n", hash.trim()),
    )
    .unwrap();
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
        dir.path().join("htpasswd").display()
    );
    (Registry::start_with("", &auth).unwrap(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secret_credentials_are_used() {
    use kubevirt_diskprep::containerdisk::{PullRequest, RegistryCredentials};
    let (registry, _auth_dir) = auth_registry("kubevirt", "s3cret");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pusher = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: Reference = format!("{}/private/disk:v1", registry.host())
        .parse()
        .unwrap();
    let disk = vec![0x42u8; 2048];
    pusher
        .push(
            &reference,
            &[ImageLayer::oci_v1(
                tar_of(&[("disk/disk.img", &disk)]),
                None,
            )],
            Config::oci_v1(b"{}".to_vec(), None),
            &RegistryAuth::Basic("kubevirt".into(), "s3cret".into()),
            None,
        )
        .await
        .unwrap();

    // What the upstream manifest says, mapped; the secret names the registry as written.
    let mut mirrors = std::collections::HashMap::new();
    mirrors.insert(
        "registry:5000".to_owned(),
        format!("http://{}", registry.host()),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = ContainerDiskCache::new(
        dir.path(),
        RegistryConfig {
            mirrors,
            insecure: Vec::new(),
        },
    );
    let image = "registry:5000/private/disk:v1";
    let request = |credentials| PullRequest {
        volume: "private",
        image,
        path: None,
        policy: PullPolicy::Always,
        credentials,
    };

    let err = cache.pull_with(request(None), &|_| {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            DiskPrepError::Unauthorized {
                with_credentials: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("imagePullSecret"), "{err}");

    let wrong = RegistryCredentials {
        username: "kubevirt".into(),
        password: "nope".into(),
    };
    let err = cache
        .pull_with(request(Some(&wrong)), &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DiskPrepError::Unauthorized {
                with_credentials: true,
                ..
            }
        ),
        "{err:?}"
    );

    let secret = format!(r#"{{"auths":{{"registry:5000":{{"auth":"{}"}}}}}}"#, {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("kubevirt:s3cret")
    });
    let creds = RegistryCredentials::from_docker_config("private", image, secret.as_bytes())
        .unwrap()
        .unwrap();
    let pulled = cache
        .pull_with(request(Some(&creds)), &|_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&pulled.path).unwrap(), disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_is_in_use() {
    let registry = Registry::start().unwrap();
    let shared = tar_of(&[("etc/os-release", b"ID=test\n")]);
    for (name, byte) in [("keep", 0x01u8), ("drop", 0x02u8)] {
        push(
            &registry,
            &format!("test/{name}:v1"),
            vec![
                ImageLayer::oci_v1(shared.clone(), None),
                ImageLayer::oci_v1_gzip(gzip(&tar_of(&[("disk/disk.img", &[byte; 4096])])), None),
            ],
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_for(&registry, dir.path());
    let keep_img = format!("{}/test/keep:v1", registry.host());
    let drop_img = format!("{}/test/drop:v1", registry.host());
    let kept = cache
        .pull("a", &keep_img, PullPolicy::IfNotPresent, &|_| {})
        .await
        .unwrap();
    let dropped = cache
        .pull("b", &drop_img, PullPolicy::IfNotPresent, &|_| {})
        .await
        .unwrap();
    let blobs = || {
        std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    assert_eq!(blobs(), 3, "shared layer stored once");

    let keep: std::collections::HashSet<String> = [kept.manifest_digest.clone()].into();
    let stats = cache.prune(&keep).await.unwrap();
    assert_eq!(stats.disks_removed, 1);
    assert_eq!(
        stats.blobs_removed, 1,
        "only the dropped image's own layer goes"
    );
    assert!(stats.bytes_freed > 4096);
    assert!(!dropped.path.exists());
    assert_eq!(blobs(), 2);

    drop(registry);
    let again = cache
        .pull("a", &keep_img, PullPolicy::Never, &|_| {})
        .await
        .unwrap();
    assert_eq!(again.path, kept.path);
    let err = cache
        .pull("b", &drop_img, PullPolicy::Never, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, DiskPrepError::NotCached { .. }), "{err:?}");
}

/// HTTPS is what real registries speak: a TLS docker-registry with a private CA, pulled
/// through rustls with the ring provider this crate installs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registry_with_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    // A private CA and a leaf for 127.0.0.1 signed by it (webpki refuses a CA as the leaf).
    let st = Command::new("bash")
        .arg("-ec")
        .arg(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem
             openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr
             printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out cert.pem",
        )
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        cert.display(),
        key.display()
    );
    let registry = Registry::start_with(&tls, "").unwrap();
    let host = registry.host();
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pusher = oci_client::Client::new(ClientConfig {
            extra_root_certificates: vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: ca.clone(),
            }],
            ..ClientConfig::default()
        });
        let reference: Reference = format!("{host}/tls/disk:v1").parse().unwrap();
        pusher
            .push(
                &reference,
                &[ImageLayer::oci_v1(
                    tar_of(&[("disk/disk.img", &[9u8; 1024])]),
                    None,
                )],
                Config::oci_v1(b"{}".to_vec(), None),
                &RegistryAuth::Anonymous,
                None,
            )
            .await
            .unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let image = format!("{host}/tls/disk:v1");
        // Without the CA the certificate is rejected...
        let untrusted = ContainerDiskCache::new(cache_dir.path(), RegistryConfig::default());
        let err = untrusted
            .pull("tls", &image, PullPolicy::Always, &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DiskPrepError::Registry { .. }), "{err:?}");
        // ...with it the pull works.
        let trusted = ContainerDiskCache::new(cache_dir.path(), RegistryConfig::default())
            .with_extra_root_certificates(vec![ca.clone()]);
        let pulled = trusted
            .pull("tls", &image, PullPolicy::Always, &|_| {})
            .await
            .unwrap();
        assert_eq!(std::fs::read(&pulled.path).unwrap(), vec![9u8; 1024]);
    }
    .await;
}
