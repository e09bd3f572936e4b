//! The only process this crate starts: `qemu-img`, for qcow2 creation.

use std::process::Command;

use crate::error::{DiskPrepError, Result};

/// Program name or path; `KUBEVIRT_QEMU_IMG` overrides it (tests, non-standard installs).
pub fn program() -> String {
    std::env::var("KUBEVIRT_QEMU_IMG").unwrap_or_else(|_| "qemu-img".to_owned())
}

pub(crate) fn run(volume: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(volume, args = %shown, "running qemu-img");
    let output =
        Command::new(program())
            .args(args)
            .output()
            .map_err(|e| DiskPrepError::QemuImg {
                volume: volume.to_owned(),
                args: shown.clone(),
                status: "could not start".to_owned(),
                stderr: e.to_string(),
            })?;
    if !output.status.success() {
        return Err(DiskPrepError::QemuImg {
            volume: volume.to_owned(),
            args: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
