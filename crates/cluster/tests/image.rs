//! The container images `install` refers to, built by `scripts/build-image.sh` without Docker:
//! one OCI layout holding `kubevirt-rs:<VERSION>` and `virt-launcher:<VERSION>`. The test
//! builds it (the Debian base layer is cached after the first run), checks the layout with
//! skopeo and by hashing every blob, pushes both images to a real registry and reads them
//! back, and runs the binaries inside the unpacked image with `chroot`.
//!
//! Skipped only when `mmdebstrap` is missing and `KUBEVIRT_RS_REQUIRE_IMAGE` is unset.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, panics with its output unless it succeeds; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// `sha256:<hex>` of everything `r` yields.
fn sha256(mut r: impl Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).expect("reading");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// `sha256:<hex>` of a gzip file's uncompressed content (a layer's diff_id).
fn gunzipped_sha256(path: &Path) -> String {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("running gzip");
    let digest = sha256(child.stdout.take().unwrap());
    assert!(child.wait().unwrap().success(), "gzip -dc {path:?} failed");
    digest
}

fn skopeo_json(args: &[&str]) -> Value {
    serde_json::from_str(&run(Command::new("skopeo").args(args))).expect("skopeo's JSON")
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

#[test]
fn build_push_and_run_images() {
    if !on_path("mmdebstrap") && std::env::var_os("KUBEVIRT_RS_REQUIRE_IMAGE").is_none() {
        eprintln!("skipping: mmdebstrap is not installed (scripts/install-host-deps.sh)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");

    // 1. Build, from the binaries beside this test's (target/debug) when they are there:
    // under `cargo test --workspace` they are, and a build of our own (other features)
    // would replace them under the tests that run them.
    let mut build = Command::new("bash");
    build
        .arg("scripts/build-image.sh")
        .arg("--out")
        .arg(&layout)
        .current_dir(workspace());
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    if let Some(dir) = bin_dir.filter(|d| {
        ["kubevirt-rs", "kubevirt-launcher", "virtctl"]
            .iter()
            .all(|b| d.join(b).is_file())
    }) {
        build.arg("--bin-dir").arg(dir);
    }
    let printed = run(&mut build);
    eprintln!("{printed}");
    let refs = [
        ("kubevirt-rs", "/usr/bin/kubevirt-rs"),
        ("virt-launcher", "/usr/bin/kubevirt-launcher"),
    ];

    // 2. The layout: both refs, their entrypoints, shared layers, every blob intact.
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut manifests = Vec::new();
    let mut verified = std::collections::HashSet::new();
    for (name, entrypoint) in refs {
        let oci = format!("oci:{}:{name}:{VERSION}", layout.display());
        let raw = run(Command::new("skopeo").args(["inspect", "--raw", &oci]));
        let manifest: Value = serde_json::from_str(&raw).unwrap();
        let digest = sha256(raw.as_bytes());
        let listed = index["manifests"].as_array().unwrap().iter().find(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"] == format!("{name}:{VERSION}")
        });
        assert_eq!(
            listed.unwrap()["digest"],
            digest.as_str(),
            "{name} in index.json"
        );
        assert!(
            printed.contains(&digest),
            "the script prints {name}'s digest"
        );
        let config = skopeo_json(&["inspect", "--config", &oci]);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint]),
            "{name}"
        );
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            VERSION
        );
        let layers = manifest["layers"].as_array().unwrap();
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "{name}: a base and a top layer");
        assert_eq!(diff_ids.len(), 2, "{name}");
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            assert_eq!(layer["mediaType"], GZIP_LAYER);
            let path = blob(&layout, layer["digest"].as_str().unwrap());
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                layer["size"].as_u64().unwrap(),
                "{name}: size of {path:?}"
            );
            // The images share their layers: uncompress each once.
            if verified.insert(path.clone()) {
                assert_eq!(gunzipped_sha256(&path), diff_id.as_str().unwrap(), "{name}");
            }
        }
        manifests.push((name, digest, manifest));
    }
    let (_, _, app) = &manifests[0];
    let (_, _, launcher) = &manifests[1];
    assert_eq!(
        app["layers"][0]["digest"], launcher["layers"][0]["digest"],
        "the images share the base layer"
    );
    // And the top one: launcher pods run `/usr/bin/kubevirt-rs launcher`, virt-handler
    // runs the `kubevirt-launcher` beside its binary.
    assert_eq!(app["layers"], launcher["layers"]);
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let digest = sha256(std::fs::File::open(&path).unwrap());
        assert_eq!(digest, format!("sha256:{name}"), "blob {path:?}");
    }

    // 3. A real registry: push both, read the digests back.
    let registry = kubevirt_testenv::Registry::start().unwrap();
    for (name, digest, _) in &manifests {
        let remote = format!("docker://{}/kubevirt-rs/{name}:{VERSION}", registry.host());
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{name}:{VERSION}", layout.display()))
            .arg(&remote));
        let pushed = skopeo_json(&["inspect", "--tls-verify=false", &remote]);
        assert_eq!(pushed["Digest"], digest.as_str(), "{remote}");
    }

    // 4. The kubevirt-rs image's rootfs: its programs find their libraries and firmware.
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    for layer in app["layers"].as_array().unwrap() {
        run(Command::new("tar")
            .arg("-xzf")
            .arg(blob(&layout, layer["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(&rootfs));
    }
    let as_root = run(Command::new("id").arg("-u")).trim() == "0";
    let checks: &[(&[&str], &str)] = &[
        (&["/usr/bin/kubevirt-rs", "--version"], VERSION),
        (&["/usr/bin/kubevirt-launcher", "--help"], "Usage"),
        (&["/usr/bin/virtctl", "--version"], VERSION),
        (
            &["qemu-system-x86_64", "--version"],
            "QEMU emulator version",
        ),
        (&["qemu-img", "--version"], "qemu-img version"),
        (&["swtpm", "--version"], "TPM emulator"),
        (&["nft", "--version"], "nftables"),
    ];
    for (argv, expect) in checks {
        // Not root: a user namespace where we are (the chroot needs CAP_SYS_CHROOT).
        let mut cmd = if as_root {
            Command::new("chroot")
        } else {
            let mut c = Command::new("unshare");
            c.args(["--user", "--map-root-user", "chroot"]);
            c
        };
        cmd.arg(&rootfs)
            .args(*argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let out = run(&mut cmd);
        assert!(out.contains(expect), "{argv:?} printed {out:?}");
    }
    // What runs but cannot be run here (passt needs /proc), and the files the launcher opens.
    for file in [
        "usr/bin/passt",
        "usr/bin/ip",
        "usr/share/OVMF/OVMF_CODE_4M.fd",
        "usr/share/OVMF/OVMF_VARS_4M.fd",
        "usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        "usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        "usr/share/seabios/bios-256k.bin",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(
            rootfs.join(file).exists(),
            "{file} is missing from the image"
        );
    }
}
