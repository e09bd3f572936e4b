//! Accelerator detection: "KVM works" rather than "/dev/kvm exists".
//!
//! A `/dev/kvm` can be present yet unusable: on PVM hosts (`kvm_pvm` module) it only runs
//! guests built for PVM, and a non-root user may lack permission. Detection rejects a loaded
//! `kvm_pvm`, then opens `/dev/kvm`, checks the API version and creates (and drops) a VM.
//! The first result is cached for the process.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Which accelerator runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceleratorKind {
    Kvm,
    /// Software emulation (QEMU's tiny code generator).
    Tcg,
}

impl AcceleratorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AcceleratorKind::Kvm => "kvm",
            AcceleratorKind::Tcg => "tcg",
        }
    }
}

/// The chosen accelerator and why; callers surface `reason` (e.g. in a VMI condition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accelerator {
    pub kind: AcceleratorKind,
    pub reason: String,
}

/// Host paths consulted by detection (overridable for tests).
#[derive(Debug, Clone)]
pub struct ProbePaths {
    pub sys_module: PathBuf,
    pub dev_kvm: PathBuf,
}

impl Default for ProbePaths {
    fn default() -> Self {
        ProbePaths {
            sys_module: PathBuf::from("/sys/module"),
            dev_kvm: PathBuf::from("/dev/kvm"),
        }
    }
}

/// Environment variable forcing the accelerator (`tcg` or `kvm`), for operators and tests.
pub const ACCEL_ENV: &str = "KUBEVIRT_RS_ACCEL";

/// Detects the accelerator once per process.
pub fn detect_accelerator() -> Accelerator {
    static CACHE: OnceLock<Accelerator> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let forced = std::env::var(ACCEL_ENV).ok();
            let accel = detect_with(&ProbePaths::default(), forced.as_deref());
            tracing::info!(kind = accel.kind.as_str(), reason = %accel.reason, "accelerator detected");
            accel
        })
        .clone()
}

/// Uncached detection against `paths`; `forced` is the value of [`ACCEL_ENV`] if set.
pub fn detect_with(paths: &ProbePaths, forced: Option<&str>) -> Accelerator {
    match forced.map(str::trim) {
        Some("tcg") => {
            return tcg(format!("{ACCEL_ENV}=tcg forces software emulation"));
        }
        Some("kvm") => {
            return Accelerator {
                kind: AcceleratorKind::Kvm,
                reason: format!("{ACCEL_ENV}=kvm forces KVM without probing"),
            };
        }
        _ => {}
    }
    if paths.sys_module.join("kvm_pvm").exists() {
        return tcg(format!(
            "{} is a kvm_pvm (PVM) device which only runs PVM-enabled guest kernels; \
             using TCG software emulation",
            paths.dev_kvm.display()
        ));
    }
    match probe_kvm(&paths.dev_kvm) {
        Ok(()) => Accelerator {
            kind: AcceleratorKind::Kvm,
            reason: format!("{} accepted KVM_CREATE_VM", paths.dev_kvm.display()),
        },
        Err(why) => tcg(format!(
            "KVM unusable ({why}); using TCG software emulation"
        )),
    }
}

fn tcg(reason: String) -> Accelerator {
    Accelerator {
        kind: AcceleratorKind::Tcg,
        reason,
    }
}

// ioctl numbers from <linux/kvm.h>: _IO(KVMIO=0xAE, 0x00) and _IO(KVMIO, 0x01).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_API_VERSION: libc::c_int = 12;

fn probe_kvm(dev: &Path) -> Result<(), String> {
    if !dev.exists() {
        return Err(format!("{} does not exist", dev.display()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the whole call; the ioctl takes no
    // argument and only returns an integer.
    let version = unsafe { libc::ioctl(fd, KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return Err(format!(
            "KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}"
        ));
    }
    // SAFETY: as above; KVM_CREATE_VM with machine type 0 returns a new fd or -1.
    let vm_fd = unsafe { libc::ioctl(fd, KVM_CREATE_VM as _, 0) };
    if vm_fd < 0 {
        return Err(format!(
            "KVM_CREATE_VM failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `vm_fd` was just returned by the kernel and is owned by nobody else.
    unsafe { libc::close(vm_fd) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_module_means_tcg() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("module/kvm_pvm")).unwrap();
        std::fs::write(dir.path().join("kvm"), b"").unwrap();
        let paths = ProbePaths {
            sys_module: dir.path().join("module"),
            dev_kvm: dir.path().join("kvm"),
        };
        let a = detect_with(&paths, None);
        assert_eq!(a.kind, AcceleratorKind::Tcg);
        assert!(a.reason.contains("kvm_pvm"), "{}", a.reason);
    }

    #[test]
    fn missing_device_means_tcg() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ProbePaths {
            sys_module: dir.path().to_path_buf(),
            dev_kvm: dir.path().join("nokvm"),
        };
        let a = detect_with(&paths, None);
        assert_eq!(a.kind, AcceleratorKind::Tcg);
        assert!(a.reason.contains("does not exist"), "{}", a.reason);
    }

    #[test]
    fn a_regular_file_is_not_kvm() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kvm"), b"").unwrap();
        let paths = ProbePaths {
            sys_module: dir.path().join("none"),
            dev_kvm: dir.path().join("kvm"),
        };
        let a = detect_with(&paths, None);
        assert_eq!(a.kind, AcceleratorKind::Tcg);
        assert!(a.reason.contains("KVM_GET_API_VERSION"), "{}", a.reason);
    }

    #[test]
    fn env_override() {
        let paths = ProbePaths::default();
        assert_eq!(detect_with(&paths, Some("tcg")).kind, AcceleratorKind::Tcg);
        assert_eq!(detect_with(&paths, Some("kvm")).kind, AcceleratorKind::Kvm);
    }
}
