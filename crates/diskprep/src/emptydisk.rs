//! emptyDisk: a blank, sparse disk of the requested capacity, discarded with the VM.

use std::path::Path;

use crate::error::{DiskPrepError, Result};
use crate::format::DiskFormat;

/// Parses a capacity quantity, naming the field on error; zero is rejected.
pub fn parse_capacity(volume: &str, field: &str, capacity: &str) -> Result<u64> {
    let bytes = crate::quantity::parse_bytes(capacity).map_err(|source| {
        DiskPrepError::InvalidQuantity {
            volume: volume.to_owned(),
            field: field.to_owned(),
            value: capacity.to_owned(),
            source,
        }
    })?;
    if bytes == 0 {
        return Err(DiskPrepError::invalid(
            volume,
            field,
            "capacity must be greater than zero",
        ));
    }
    Ok(bytes)
}

/// Creates an empty disk of `capacity` (a Kubernetes quantity like `2Gi`) at `path`.
/// qcow2 is made by `qemu-img create`; raw is a sparse file. Existing files are not touched.
pub fn create_empty_disk(
    volume: &str,
    path: &Path,
    capacity: &str,
    format: DiskFormat,
) -> Result<u64> {
    let bytes = parse_capacity(volume, "emptyDisk.capacity", capacity)?;
    create_sized(volume, path, bytes, format)?;
    Ok(bytes)
}

pub(crate) fn create_sized(
    volume: &str,
    path: &Path,
    bytes: u64,
    format: DiskFormat,
) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(DiskPrepError::AlreadyExists {
            volume: volume.to_owned(),
            path: path.to_path_buf(),
        });
    }
    match format {
        DiskFormat::Qcow2 => crate::qemu_img::run(
            volume,
            &[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                path.as_os_str(),
                bytes.to_string().as_ref(),
            ],
        ),
        DiskFormat::Raw => {
            // create_new: never truncate a file that appeared meanwhile.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| DiskPrepError::io(volume, "creating", path, e))?;
            file.set_len(bytes)
                .map_err(|e| DiskPrepError::io(volume, "sizing", path, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn raw_is_sparse_and_sized() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.img");
        let n = create_empty_disk("scratch", &p, "1Gi", DiskFormat::Raw).unwrap();
        assert_eq!(n, 1 << 30);
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.len(), 1 << 30);
        assert!(
            md.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            md.blocks()
        );
        let err = create_empty_disk("scratch", &p, "1Gi", DiskFormat::Raw).unwrap_err();
        assert!(matches!(err, DiskPrepError::AlreadyExists { .. }));
    }

    #[test]
    fn bad_capacity_names_field() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_empty_disk(
            "scratch",
            &dir.path().join("x"),
            "ten gigs",
            DiskFormat::Qcow2,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("scratch") && msg.contains("emptyDisk.capacity"),
            "{msg}"
        );
        let err = create_empty_disk("scratch", &dir.path().join("x"), "0", DiskFormat::Qcow2)
            .unwrap_err();
        assert!(err.to_string().contains("greater than zero"));
    }
}
