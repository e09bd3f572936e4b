//! The real consumer: the test guest boots under QEMU (TCG) and reads what we produced.
//! Two boots: one with both seed ISOs attached, one from a pulled containerDisk overlay.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubevirt_diskprep::cloudinit::{
    write_seed_iso, CloudInitKind, CloudInitSource, InstanceIdentity,
};
use kubevirt_diskprep::containerdisk::{ContainerDiskCache, PullPolicy, RegistryConfig};
use kubevirt_diskprep::create_overlay;
use kubevirt_testenv::{guests, Registry, READY_MARKER, UPSTREAM_DEMO_IMAGE};

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// QEMU with the serial console on stdin/stdout, output collected in the background;
/// killed on drop.
struct Qemu {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Qemu {
    fn start(args: &[&str]) -> Qemu {
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel", "tcg", "-m", "256", "-display", "none", "-serial", "stdio",
            ])
            .args(["-monitor", "none", "-no-reboot", "-nodefaults"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/install-host-deps.sh)");
        let mut stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Qemu { child, output }
    }

    /// Types a line into the guest's root shell on ttyS0.
    fn send_line(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let text = self.output.lock().unwrap().clone();
            if text.contains(needle) {
                return text;
            }
            if Instant::now() > deadline || self.child.try_wait().unwrap().is_some() {
                panic!("{needle:?} not seen on the serial console; output:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drive(path: &Path, format: &str, extra: &str) -> String {
    format!("file={},if=virtio,format={format}{extra}", path.display())
}

#[test]
fn guest_reads_nocloud_and_config_drive_seed_isos() {
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let nocloud = dir.path().join("nocloud.iso");
    let configdrive = dir.path().join("configdrive.iso");
    let ident = |name: &str| InstanceIdentity {
        namespace: "default".into(),
        name: name.into(),
        uid: Some("0b4d8a8e-5d4f-4c6b-9e55-7a8f3c2d1e00".into()),
        hostname: None,
        public_keys: Vec::new(),
    };
    write_seed_iso(
        "cloudinitdisk",
        CloudInitKind::NoCloud,
        &CloudInitSource {
            user_data: Some("#!/bin/sh\necho \"nocloud-says-$((6*7))\"\n".into()),
            ..Default::default()
        },
        &ident("vmi-nocloud"),
        &nocloud,
    )
    .unwrap();
    write_seed_iso(
        "configdrive",
        CloudInitKind::ConfigDrive,
        &CloudInitSource {
            // base64 of "#cloud-config\nruncmd:\n  - echo configdrive-says-hello\n"
            user_data_base64: Some(
                "I2Nsb3VkLWNvbmZpZwpydW5jbWQ6CiAgLSBlY2hvIGNvbmZpZ2RyaXZlLXNheXMtaGVsbG8K".into(),
            ),
            ..Default::default()
        },
        &ident("vmi-configdrive"),
        &configdrive,
    )
    .unwrap();

    let started = Instant::now();
    let mut qemu = Qemu::start(&[
        "-kernel",
        g.vmlinux.to_str().unwrap(),
        "-initrd",
        g.initramfs.to_str().unwrap(),
        "-append",
        g.kernel_cmdline,
        "-drive",
        &drive(&nocloud, "raw", ",readonly=on"),
        "-drive",
        &drive(&configdrive, "raw", ",readonly=on"),
    ]);
    let out = qemu.wait_for(READY_MARKER);
    eprintln!("seed ISO boot to ready marker: {:?}", started.elapsed());
    // The guest's own boot-time detection (its init) runs the user-data when it can read
    // labels; report what it did, but check the media directly through the shell so the
    // test does not depend on the init's label tooling.
    let by_init = out.contains("nocloud-says-42") && out.contains("configdrive-says-hello");
    eprintln!("guest init ran both user-data payloads at boot: {by_init}");

    // Labels as the guest's libblkid-equivalent (busybox volume_id) reads them, then the
    // files through the guest kernel's isofs (Joliet names).
    qemu.send_line(
        "echo L1=$(findfs LABEL=cidata) L2=$(findfs LABEL=config-2); \
         mount -t iso9660 -o ro /dev/vda /mnt/seed && sh /mnt/seed/user-data && \
         sed -n 's/^local-hostname: /nocloud-host=/p' /mnt/seed/meta-data && ls /mnt/seed && umount /mnt/seed; \
         mount -t iso9660 -o ro /dev/vdb /mnt/seed && cat /mnt/seed/openstack/latest/meta_data.json && \
         echo && ls /mnt/seed/openstack/latest && umount /mnt/seed; echo SHELL-DONE-$((40+2))",
    );
    let out = qemu.wait_for("SHELL-DONE-42");
    assert!(out.contains("L1=/dev/vda L2=/dev/vdb"), "{out}");
    assert!(out.contains("nocloud-says-42"), "{out}");
    assert!(out.contains("nocloud-host=vmi-nocloud"), "{out}");
    assert!(out.contains("\"hostname\":\"vmi-configdrive\""), "{out}");
    assert!(
        out.contains("meta_data.json") && out.contains("user_data"),
        "{out}"
    );
    assert!(
        out.contains("network-config") || out.contains("meta-data"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_boots_from_pulled_containerdisk_overlay() {
    let registry = Registry::start().unwrap();
    registry
        .push_guest_containerdisk(UPSTREAM_DEMO_IMAGE)
        .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let mut mirrors = std::collections::HashMap::new();
    mirrors.insert("registry:5000".to_owned(), registry.host());
    let cache = ContainerDiskCache::new(
        cache_dir.path(),
        RegistryConfig {
            mirrors,
            insecure: vec![registry.host()],
        },
    );
    let disk = cache
        .pull(
            "containerdisk",
            "registry:5000/kubevirt/cirros-container-disk-demo:devel",
            PullPolicy::IfNotPresent,
            &|_| {},
        )
        .await
        .unwrap();
    let base_hash = std::fs::read(&disk.path).unwrap();
    let vm_dir = tempfile::tempdir().unwrap();
    let overlay = vm_dir.path().join("containerdisk.qcow2");
    create_overlay("containerdisk", &disk.path, disk.format, &overlay).unwrap();

    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let mut qemu = Qemu::start(&["-drive", &drive(&overlay, "qcow2", "")]);
        qemu.wait_for(READY_MARKER)
    })
    .await
    .unwrap();
    eprintln!(
        "containerDisk overlay boot (SeaBIOS) to ready marker: {:?}",
        started.elapsed()
    );
    assert!(out.contains("guest-disk: vda"), "{out}");
    assert_eq!(
        std::fs::read(&disk.path).unwrap(),
        base_hash,
        "the cached base was modified"
    );
}
