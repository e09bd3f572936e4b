//! Test infrastructure shared by every crate's tests: the guest images (built once per
//! machine by `scripts/build-guests.sh` and cached), a local OCI registry (Debian's
//! `docker-registry`), a serial console reader that waits for what a guest prints, and a
//! real Kubernetes control plane for cluster-mode tests ([`KubeCluster`]).
//!
//! Nothing here is used outside tests.

mod console;
pub mod kube_cluster;
mod registry;

pub use console::Console;
pub use kube_cluster::KubeCluster;
pub use registry::Registry;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Printed by the test guest on its serial port once it has booted (again after each reset).
pub const READY_MARKER: &str = "KUBEVIRT-RS-GUEST-READY";
/// Printed by the test guest's DHCP hook, followed by the address it was given.
pub const GUEST_IP_PREFIX: &str = "guest-ip: ";
/// The name under which upstream KubeVirt's examples reference their demo container disks.
pub const UPSTREAM_DEMO_IMAGE: &str = "kubevirt/cirros-container-disk-demo:devel";

/// Paths of the built guest images. See `scripts/build-guests.sh` for what each one is.
#[derive(Debug, Clone)]
pub struct Guests {
    pub dir: PathBuf,
    /// Debian's bzImage.
    pub vmlinuz: PathBuf,
    /// The same kernel uncompressed (PVH entry, fastest `-kernel` boot under TCG).
    pub vmlinux: PathBuf,
    /// busybox initramfs with the guest's init, modules and qemu-guest-agent.
    pub initramfs: PathBuf,
    /// Hybrid isolinux ISO: boots as a CD-ROM and as a disk.
    pub boot_iso: PathBuf,
    /// The bootable image as qcow2 and as raw.
    pub disk_qcow2: PathBuf,
    pub disk_raw: PathBuf,
    /// OCI image layout holding `disk/disk.qcow2` (tag `devel`), for containerDisk tests.
    pub containerdisk_oci: PathBuf,
    /// Kernel command line that puts the console on ttyS0.
    pub kernel_cmdline: &'static str,
}

/// The repository root, found from this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the guests once (per machine: the script caches its output and takes a lock so
/// parallel test binaries build it once) and returns their paths. Panics with the build
/// log if they cannot be built: every test that needs a guest is meaningless without one.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| build_guests().unwrap_or_else(|e| panic!("building test guests: {e:#}")))
}

fn build_guests() -> Result<Guests> {
    let root = repo_root();
    let dir = std::env::var_os("KUBEVIRT_RS_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/guests"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = dir.with_extension("lock");
    let out = Command::new("flock")
        .arg(&lock)
        .arg("bash")
        .arg(root.join("scripts/build-guests.sh"))
        .arg(&dir)
        .output()
        .context("running scripts/build-guests.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/build-guests.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let guests = Guests {
        vmlinuz: dir.join("vmlinuz"),
        vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio.gz"),
        boot_iso: dir.join("boot.iso"),
        disk_qcow2: dir.join("disk.qcow2"),
        disk_raw: dir.join("disk.raw"),
        containerdisk_oci: dir.join("containerdisk-oci"),
        kernel_cmdline: "console=ttyS0 quiet",
        dir,
    };
    for p in [
        &guests.vmlinuz,
        &guests.vmlinux,
        &guests.initramfs,
        &guests.boot_iso,
        &guests.disk_qcow2,
        &guests.disk_raw,
        &guests.containerdisk_oci,
    ] {
        if !p.exists() {
            bail!("guest build did not produce {}", p.display());
        }
    }
    Ok(guests)
}
