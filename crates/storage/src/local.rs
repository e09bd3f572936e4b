//! The built-in class's volumes on disk: one directory per PersistentVolume under the
//! volumes root (`<data dir>/volumes/<pv name>/`). A Filesystem volume holds `disk.img`, as
//! KubeVirt expects of a filesystem claim; a Block volume is the file `block` standing in for
//! the device. Files are sparse: a volume costs what its guest wrote.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PersistentVolume;

/// The disk image of a Filesystem volume, as KubeVirt names it.
pub const DISK_IMAGE: &str = "disk.img";
/// The stand-in device of a Block volume.
pub const BLOCK_FILE: &str = "block";

/// The volumes root of the built-in class.
#[derive(Debug, Clone)]
pub struct LocalVolumes {
    root: PathBuf,
}

/// A volume's mode, as the claim asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeMode {
    Filesystem,
    Block,
}

impl VolumeMode {
    pub fn parse(s: Option<&str>) -> VolumeMode {
        match s {
            Some("Block") => VolumeMode::Block,
            _ => VolumeMode::Filesystem,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeMode::Filesystem => "Filesystem",
            VolumeMode::Block => "Block",
        }
    }
}

impl LocalVolumes {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalVolumes { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of volume `pv` (a name the provisioner made: `pvc-<uid>`).
    pub fn dir(&self, pv: &str) -> PathBuf {
        self.root.join(pv)
    }

    /// Creates the volume's directory (private to root) and, for Block, its sparse file of
    /// `capacity` bytes. A Filesystem volume's `disk.img` is made by whoever fills it (an
    /// import) or, empty, on first use ([`ensure_disk`]).
    pub fn create(&self, pv: &str, mode: VolumeMode, capacity: u64) -> io::Result<PathBuf> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        let dir = self.dir(pv);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if mode == VolumeMode::Block {
            grow_sparse(&dir.join(BLOCK_FILE), capacity)?;
        }
        Ok(dir)
    }

    /// Removes the volume's directory and everything in it (reclaim policy Delete).
    pub fn remove(&self, pv: &str) -> io::Result<()> {
        // Names come from our own PVs, but never follow one outside the root.
        if pv.is_empty() || pv.contains('/') || pv.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a volume name: {pv:?}"),
            ));
        }
        match std::fs::remove_dir_all(self.dir(pv)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Bytes free for new data on the volumes' filesystem (what an unprivileged writer
    /// could use), the root created if missing.
    pub fn available(&self) -> io::Result<u64> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }
}

/// Grows (never shrinks) the sparse file at `path` to `size` bytes, creating it.
pub fn grow_sparse(path: &Path, size: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc_nofollow())
        .open(path)?;
    if f.metadata()?.len() < size {
        f.set_len(size)?;
    }
    f.sync_all()
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// The path of a built-in volume on this host, as the PV names it (`spec.local.path`), and
/// its mode.
pub fn volume_path(pv: &PersistentVolume) -> Option<(PathBuf, VolumeMode)> {
    let spec = pv.spec.as_ref()?;
    let dir = PathBuf::from(&spec.local.as_ref()?.path);
    Some((dir, VolumeMode::parse(spec.volume_mode.as_deref())))
}

/// The disk file a VM uses for this volume: `disk.img` of a Filesystem volume (created
/// sparse, `capacity` bytes, when the volume is still empty, as KubeVirt does for a blank
/// filesystem claim) or a Block volume's file.
pub fn ensure_disk(pv: &PersistentVolume) -> io::Result<PathBuf> {
    let (file, capacity) = disk_file(pv).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the volume is not a local volume of this node",
        )
    })?;
    if !file.exists() {
        grow_sparse(&file, capacity)?;
    }
    Ok(file)
}

/// The disk file of a built-in volume (`disk.img` in a Filesystem volume's directory; a
/// Block volume's path is its file) and the volume's capacity in bytes.
pub fn disk_file(pv: &PersistentVolume) -> Option<(PathBuf, u64)> {
    let (path, mode) = volume_path(pv)?;
    let capacity = pv
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| kubevirt_api::Quantity::parse(&q.0).ok())
        .map_or(0, |q| q.to_bytes());
    let file = match mode {
        VolumeMode::Filesystem => path.join(DISK_IMAGE),
        VolumeMode::Block => path,
    };
    Some((file, capacity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn block_volumes_are_sparse_files_and_removal_stays_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let vols = LocalVolumes::new(tmp.path().join("volumes"));
        let dir = vols.create("pvc-1", VolumeMode::Block, 1 << 30).unwrap();
        let meta = std::fs::metadata(dir.join(BLOCK_FILE)).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(meta.blocks() * 512 < 1 << 20, "sparse");
        assert!(vols.available().unwrap() > 0);
        assert!(vols.remove("../x").is_err());
        vols.remove("pvc-1").unwrap();
        assert!(!dir.exists());
        vols.remove("pvc-1").unwrap();
    }

    #[test]
    fn growing_never_shrinks() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("disk.img");
        grow_sparse(&f, 4096).unwrap();
        grow_sparse(&f, 1024).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 4096);
        grow_sparse(&f, 8192).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 8192);
    }
}
