//! Disk image formats and probing by content (never by file name).

use std::path::Path;

use crate::error::Result;

/// The formats QEMU is told to open (`format=` / `-F`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Probes a file's format by content with the [`ImagePolicy::Imported`] rules: raw or a
/// self-contained qcow2, anything naming another host file or in another format is refused
/// ([`DiskPrepError::UnsafeImage`]). Only for files whose content the guest cannot have
/// written (read-only bases); a file a guest writes to has its format decided by the control
/// plane (a hostDisk is raw, see [`crate::hostdisk`]).
///
/// [`ImagePolicy::Imported`]: crate::inspect::ImagePolicy::Imported
/// [`DiskPrepError::UnsafeImage`]: crate::DiskPrepError::UnsafeImage
pub fn detect_format(volume: &str, path: &Path) -> Result<DiskFormat> {
    crate::inspect::inspect_path(volume, path)?.accept(
        volume,
        path,
        crate::inspect::ImagePolicy::Imported,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut q = b"QFI\xfb\0\0\0\x02".to_vec();
        q.extend_from_slice(&[0; 8]);
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 16]);
        q.resize(4096, 0);
        std::fs::write(&p, &q).unwrap();
        assert_eq!(detect_format("v", &p).unwrap(), DiskFormat::Qcow2);
        q[15] = 0x30;
        q[19] = 4;
        q[0x30..0x34].copy_from_slice(b"/etc");
        std::fs::write(&p, &q).unwrap();
        let err = detect_format("v", &p).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "volume v: disk image {} refused: qcow2 image names a backing file \"/etc\"",
                p.display()
            )
        );
        std::fs::write(&p, b"\xeb\x63\x90").unwrap();
        assert_eq!(detect_format("v", &p).unwrap(), DiskFormat::Raw);
        std::fs::write(&p, b"vhdxfile").unwrap();
        let err = detect_format("v", &p).unwrap_err();
        assert!(
            err.to_string().contains("vhdx images are not accepted"),
            "{err}"
        );
    }
}
