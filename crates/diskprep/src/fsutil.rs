//! File helpers shared by the modules: atomic writes and path checks.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{DiskPrepError, Result};

/// Writes `data` to a temporary file beside `path`, fsyncs it and renames it into place, so a
/// reader never sees a half-written file.
pub(crate) fn write_atomic(volume: &str, path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile_in(volume, &dir)?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| DiskPrepError::io(volume, "writing", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| DiskPrepError::io(volume, "renaming into", path, e.error))?;
    Ok(())
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(crate) fn tempfile_in(volume: &str, dir: &Path) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".diskprep-")
        .tempfile_in(dir)
        .map_err(|e| DiskPrepError::io(volume, "creating a temporary file in", dir, e))
}

/// Accepts absolute paths without `.`/`..` components (no escaping a mounted directory by
/// a crafted path).
pub(crate) fn check_absolute_clean(volume: &str, path: &Path) -> Result<()> {
    let bad = |reason: &str| DiskPrepError::InvalidPath {
        volume: volume.to_owned(),
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    if !path.is_absolute() {
        return Err(bad("must be absolute"));
    }
    // `Path::components` hides interior `.`; look at the raw segments.
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes
        .split(|b| *b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
    {
        return Err(bad("must not contain '.' or '..' components"));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    Ok(())
}
