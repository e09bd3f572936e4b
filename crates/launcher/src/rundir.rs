//! The per-launcher run directory: `/run/kubevirt-rs/vms/<uid>/` (the launcher pod's UID when
//! the node agent starts it). Only the UID, so socket paths stay well under the 108 bytes a
//! unix socket address allows.
//!
//! Holds the launcher's socket and pid file, QEMU's sockets and logs, overlays and generated
//! ISOs, and — after the VM ended — `final-state.json` for the node agent. Everything except
//! `vmi.json`, `final-state.json` and the logs is removed by the launcher when the VM ends.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default root for run dirs.
pub const DEFAULT_RUN_ROOT: &str = "/run/kubevirt-rs/vms";

/// Paths inside one VM's run directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir(path.into())
    }

    /// `<root>/<uid>`.
    pub fn for_uid(root: &Path, uid: &str) -> Self {
        RunDir(root.join(uid))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn launcher_socket(&self) -> PathBuf {
        self.0.join("launcher.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.0.join("launcher.pid")
    }
    pub fn vmi_file(&self) -> PathBuf {
        self.0.join("vmi.json")
    }
    pub fn final_state(&self) -> PathBuf {
        self.0.join("final-state.json")
    }
    /// QEMU's own directory (its user's): the sockets it creates.
    pub fn vmm_dir(&self) -> PathBuf {
        self.0.join("vmm")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.vmm_dir().join("qmp.sock")
    }
    pub fn serial_socket(&self) -> PathBuf {
        self.vmm_dir().join("serial.sock")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.0.join("serial.log")
    }
    pub fn vnc_socket(&self) -> PathBuf {
        self.vmm_dir().join("vnc.sock")
    }
    pub fn qga_socket(&self) -> PathBuf {
        self.vmm_dir().join("qga.sock")
    }
    /// Where a migration target's QEMU waits for the guest (its source's launcher, root,
    /// connects to it for its own QEMU, which could not).
    pub fn migration_socket(&self) -> PathBuf {
        self.vmm_dir().join("migration.sock")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.0.join("qemu.log")
    }
    pub fn launcher_log(&self) -> PathBuf {
        self.0.join("launcher.log")
    }

    /// Removes everything the VM used at run time, keeping `vmi.json`, `final-state.json`
    /// and the logs for the node agent. Persistent state lives elsewhere. The pid file goes
    /// last: whoever sees it gone finds the rest already cleaned.
    pub fn clean_runtime_files(&self) {
        let keep = [
            "vmi.json",
            "final-state.json",
            "serial.log",
            "qemu.log",
            "launcher.log",
            "launcher.pid",
        ];
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if keep.iter().any(|k| name == std::ffi::OsStr::new(k)) {
                continue;
            }
            let p = e.path();
            let res = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(err) = res {
                tracing::warn!(path = %p.display(), %err, "cannot remove run-dir entry");
            }
        }
        let _ = std::fs::remove_file(self.pid_file());
    }
}
