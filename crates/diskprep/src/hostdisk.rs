//! hostDisk: a disk image file on the node, used in place.

use std::path::{Path, PathBuf};

use crate::error::{DiskPrepError, Result};
use crate::format::DiskFormat;

/// `hostDisk.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDiskType {
    /// The file must exist.
    Disk,
    /// Created as a sparse raw file of `capacity` when missing.
    DiskOrCreate,
}

impl std::str::FromStr for HostDiskType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "Disk" => Ok(HostDiskType::Disk),
            "DiskOrCreate" => Ok(HostDiskType::DiskOrCreate),
            other => Err(format!(
                "unknown hostDisk type {other:?} (expected Disk or DiskOrCreate)"
            )),
        }
    }
}

/// A host disk ready for QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDisk {
    pub path: PathBuf,
    pub format: DiskFormat,
    /// True when this call created the file.
    pub created: bool,
}

/// Validates `hostDisk.path` and, for `DiskOrCreate`, creates the file (and its parent
/// directories) when missing. `capacity` is required to create. An existing file is used as
/// it is; a qcow2 with a backing file is refused.
pub fn prepare_host_disk(
    volume: &str,
    path: &Path,
    kind: HostDiskType,
    capacity: Option<&str>,
) -> Result<HostDisk> {
    crate::fsutil::check_absolute_clean(volume, path)?;
    match std::fs::metadata(path) {
        Ok(md) => {
            if !md.is_file() {
                return Err(DiskPrepError::InvalidPath {
                    volume: volume.to_owned(),
                    path: path.to_path_buf(),
                    reason: "hostDisk.path exists but is not a regular file".into(),
                });
            }
            let format = crate::format::detect_format(volume, path)?;
            Ok(HostDisk {
                path: path.to_path_buf(),
                format,
                created: false,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match kind {
            HostDiskType::Disk => Err(DiskPrepError::HostDiskMissing {
                volume: volume.to_owned(),
                path: path.to_path_buf(),
            }),
            HostDiskType::DiskOrCreate => {
                let capacity = capacity.ok_or_else(|| {
                    DiskPrepError::invalid(
                        volume,
                        "hostDisk.capacity",
                        "required for type DiskOrCreate when the file does not exist",
                    )
                })?;
                let bytes =
                    crate::emptydisk::parse_capacity(volume, "hostDisk.capacity", capacity)?;
                let dir = crate::fsutil::parent_dir(path);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| DiskPrepError::io(volume, "creating directory", &dir, e))?;
                crate::emptydisk::create_sized(volume, path, bytes, DiskFormat::Raw)?;
                tracing::info!(volume, path = %path.display(), bytes, "created hostDisk");
                Ok(HostDisk {
                    path: path.to_path_buf(),
                    format: DiskFormat::Raw,
                    created: true,
                })
            }
        },
        Err(e) => Err(DiskPrepError::io(volume, "inspecting", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing.img");
        let err = prepare_host_disk("host", &p, HostDiskType::Disk, None).unwrap_err();
        assert!(matches!(err, DiskPrepError::HostDiskMissing { .. }));
        assert!(err.to_string().contains("host"));
    }

    #[test]
    fn disk_or_create_creates_sparse_raw_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/disk.img");
        let d = prepare_host_disk("host", &p, HostDiskType::DiskOrCreate, Some("64Mi")).unwrap();
        assert!(d.created);
        assert_eq!(d.format, DiskFormat::Raw);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 64 << 20);
        std::fs::write(&p, b"data that must survive").unwrap();
        let d = prepare_host_disk("host", &p, HostDiskType::DiskOrCreate, Some("64Mi")).unwrap();
        assert!(!d.created);
        assert_eq!(std::fs::read(&p).unwrap(), b"data that must survive");
    }

    #[test]
    fn path_validation() {
        for bad in ["relative/disk.img", "/tmp/../etc/disk.img", "/tmp/./x"] {
            let err =
                prepare_host_disk("host", Path::new(bad), HostDiskType::Disk, None).unwrap_err();
            assert!(
                matches!(err, DiskPrepError::InvalidPath { .. }),
                "{bad}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let err = prepare_host_disk("host", dir.path(), HostDiskType::Disk, None).unwrap_err();
        assert!(err.to_string().contains("not a regular file"));
        let err = prepare_host_disk(
            "host",
            &dir.path().join("n"),
            HostDiskType::DiskOrCreate,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("hostDisk.capacity"));
    }
}
