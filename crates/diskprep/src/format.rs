//! Disk image formats and probing by content (never by file name).

use std::io::Read as _;
use std::path::Path;

use crate::error::{DiskPrepError, Result};

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

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// What the first bytes of an image say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    pub format: DiskFormat,
    /// qcow2 only: the image names a backing file.
    pub has_backing_file: bool,
}

pub(crate) fn probe_bytes(header: &[u8]) -> Probe {
    if header.len() >= 16 && &header[..4] == QCOW2_MAGIC {
        let mut off = [0u8; 8];
        off.copy_from_slice(&header[8..16]);
        Probe {
            format: DiskFormat::Qcow2,
            has_backing_file: u64::from_be_bytes(off) != 0,
        }
    } else {
        Probe {
            format: DiskFormat::Raw,
            has_backing_file: false,
        }
    }
}

pub(crate) fn probe_file(volume: &str, path: &Path) -> Result<Probe> {
    let mut header = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut header))
        .map_err(|e| DiskPrepError::io(volume, "reading the header of", path, e))?;
    Ok(probe_bytes(&header))
}

/// Probes a file's format by content. A qcow2 image naming a backing file is reported as
/// an error: QEMU would open that file from the host, which a guest image must not decide.
pub fn detect_format(volume: &str, path: &Path) -> Result<DiskFormat> {
    let probe = probe_file(volume, path)?;
    if probe.has_backing_file {
        return Err(DiskPrepError::InvalidPath {
            volume: volume.to_owned(),
            path: path.to_path_buf(),
            reason: "qcow2 image with a backing file is not accepted as a base image".into(),
        });
    }
    Ok(probe.format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes() {
        let mut q = b"QFI\xfb\0\0\0\x03".to_vec();
        q.extend_from_slice(&[0; 8]);
        assert_eq!(probe_bytes(&q).format, DiskFormat::Qcow2);
        assert!(!probe_bytes(&q).has_backing_file);
        q[15] = 0x30;
        assert!(probe_bytes(&q).has_backing_file);
        assert_eq!(probe_bytes(b"\xeb\x63\x90").format, DiskFormat::Raw);
        assert_eq!(probe_bytes(b"").format, DiskFormat::Raw);
    }
}
