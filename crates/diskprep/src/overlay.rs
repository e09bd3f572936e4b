//! Copy-on-write overlays: containerDisk and ephemeral volumes write here, never to the base.

use std::path::Path;

use crate::error::{DiskPrepError, Result};
use crate::format::DiskFormat;

/// Creates a qcow2 at `path` backed by `base` (`qemu-img create -f qcow2 -F fmt -b base`).
///
/// The base is referenced by its absolute path. An existing `path` is an error rather than
/// overwritten: re-creating the overlay of a running VM (e.g. after a launcher restart)
/// would lose its writes. The launcher deletes the overlay together with the VM.
pub fn create_overlay(
    volume: &str,
    base: &Path,
    base_format: DiskFormat,
    path: &Path,
) -> Result<()> {
    let base = std::fs::canonicalize(base)
        .map_err(|e| DiskPrepError::io(volume, "resolving the overlay base", base, e))?;
    if !base.is_file() {
        return Err(DiskPrepError::InvalidPath {
            volume: volume.to_owned(),
            path: base,
            reason: "overlay base is not a regular file".into(),
        });
    }
    if path.symlink_metadata().is_ok() {
        return Err(DiskPrepError::AlreadyExists {
            volume: volume.to_owned(),
            path: path.to_path_buf(),
        });
    }
    crate::qemu_img::run(
        volume,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            base_format.as_str().as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            path.as_os_str(),
        ],
    )?;
    tracing::debug!(volume, base = %base.display(), overlay = %path.display(), "created overlay");
    Ok(())
}
