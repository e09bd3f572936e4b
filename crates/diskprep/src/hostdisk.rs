//! hostDisk: a disk image file on the node, used in place.
//!
//! The guest writes to a hostDisk, so its bytes never decide how QEMU opens it: a hostDisk is
//! always raw (as upstream KubeVirt's). Its content is still inspected, and a header naming
//! other files (a qcow2 data file, VMDK extents ...) is refused, so a guest that wrote one
//! cannot make anything that probes the file open a host file. [`open_host_disk`] also keeps
//! the path beneath the directories the operator allows, symlinks included.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{DiskPrepError, Result};
use crate::format::DiskFormat;
use crate::inspect::ImagePolicy;

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

/// A hostDisk opened beneath an allowed directory, for QEMU to be given by descriptor.
#[derive(Debug)]
pub struct HostDiskFile {
    /// Opened read-write and close-on-exec; positioned at 0.
    pub file: File,
    /// The file as the kernel resolved it (symlinks inside the allowed directory followed).
    pub path: PathBuf,
    /// The allowed directory it lies beneath.
    pub root: PathBuf,
    /// Always [`DiskFormat::Raw`].
    pub format: DiskFormat,
    /// True when this call created the file.
    pub created: bool,
}

/// Opens `hostDisk.path` read-write beneath one of `roots` (the directories the operator
/// allows host disks in; none means hostDisk is disabled). Resolution uses `openat2(2)` with
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` from the directory's descriptor: `..`, absolute
/// symlinks and relative symlinks leaving the directory are refused, relative symlinks
/// staying inside it are followed. For `DiskOrCreate` a missing file is created (parents
/// one by one with `mkdirat`, each resolved beneath the directory the same way; the file with
/// `O_CREAT | O_EXCL`) as a sparse raw file of `capacity`. An existing file is inspected and
/// refused when its content names other files; it is used as raw whatever it holds.
pub fn open_host_disk(
    volume: &str,
    roots: &[PathBuf],
    path: &Path,
    kind: HostDiskType,
    capacity: Option<&str>,
) -> Result<HostDiskFile> {
    crate::fsutil::check_absolute_clean(volume, path)?;
    let not_allowed = || DiskPrepError::HostDiskNotAllowed {
        volume: volume.to_owned(),
        path: path.to_path_buf(),
        allowed: roots.to_vec(),
    };
    // The deepest allowed directory first: it is the strictest.
    let mut candidates: Vec<(&PathBuf, &Path)> = roots
        .iter()
        .filter(|root| root.is_absolute())
        .filter_map(|root| Some((root, path.strip_prefix(root).ok()?)))
        .filter(|(_, rel)| !rel.as_os_str().is_empty())
        .collect();
    candidates.sort_by_key(|(root, _)| std::cmp::Reverse(root.components().count()));
    let mut escaped = None;
    for (root, rel) in candidates {
        match open_beneath(volume, root, rel, path, kind, capacity) {
            Err(Escape::OutOfRoot(e)) => escaped = Some(e),
            Err(Escape::Fatal(e)) => return Err(e),
            Ok(disk) => return Ok(disk),
        }
    }
    Err(escaped.unwrap_or_else(not_allowed))
}

/// Why opening beneath one allowed directory failed: leaving it (another may still work) or
/// anything else.
enum Escape {
    OutOfRoot(DiskPrepError),
    Fatal(DiskPrepError),
}

impl From<DiskPrepError> for Escape {
    fn from(e: DiskPrepError) -> Self {
        Escape::Fatal(e)
    }
}

fn beneath(flags: OFlag) -> OpenHow {
    // openat2 refuses a mode without O_CREAT, and O_PATH with most other flags.
    let mode = if flags.contains(OFlag::O_CREAT) {
        Mode::from_bits_truncate(0o660)
    } else {
        Mode::empty()
    };
    let extra = if flags.contains(OFlag::O_PATH) {
        OFlag::O_CLOEXEC
    } else {
        OFlag::O_CLOEXEC | OFlag::O_NOCTTY
    };
    OpenHow::new()
        .flags(flags | extra)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn open_beneath(
    volume: &str,
    root: &Path,
    rel: &Path,
    path: &Path,
    kind: HostDiskType,
    capacity: Option<&str>,
) -> std::result::Result<HostDiskFile, Escape> {
    let invalid = |reason: String| DiskPrepError::InvalidPath {
        volume: volume.to_owned(),
        path: path.to_path_buf(),
        reason,
    };
    // Errors of openat2 beneath `root`, in words.
    let resolve_error = |errno: Errno| -> Escape {
        match errno {
            Errno::EXDEV => Escape::OutOfRoot(invalid(format!(
                "hostDisk.path leaves the allowed host disk directory {} (through '..' or a symlink; symlinks must be relative and stay inside it)",
                root.display()
            ))),
            Errno::ELOOP => Escape::OutOfRoot(invalid(
                "hostDisk.path goes through a symlink loop or a magic link".into(),
            )),
            Errno::ENOTDIR => Escape::Fatal(invalid(
                "a parent of hostDisk.path is not a directory".into(),
            )),
            Errno::ENOSYS => Escape::Fatal(DiskPrepError::io(
                volume,
                "opening (openat2 needs Linux 5.6 or later)",
                path,
                errno.into(),
            )),
            other => Escape::Fatal(DiskPrepError::io(volume, "opening", path, other.into())),
        }
    };
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| DiskPrepError::io(volume, "opening the host disk directory", root, e.into()))?;

    let (fd, created) = match nix::fcntl::openat2(&root_fd, rel, beneath(OFlag::O_RDWR)) {
        Ok(fd) => (fd, false),
        Err(Errno::ENOENT) if kind == HostDiskType::DiskOrCreate => {
            let bytes = required_capacity(volume, capacity)?;
            (
                create_beneath(volume, &root_fd, rel, path, bytes, resolve_error)?,
                true,
            )
        }
        Err(Errno::ENOENT) => {
            return Err(Escape::Fatal(DiskPrepError::HostDiskMissing {
                volume: volume.to_owned(),
                path: path.to_path_buf(),
            }))
        }
        Err(Errno::EISDIR) => {
            return Err(Escape::Fatal(invalid(
                "hostDisk.path exists but is not a regular file".into(),
            )))
        }
        Err(e) => return Err(resolve_error(e)),
    };
    let file = File::from(fd);
    let md = file
        .metadata()
        .map_err(|e| DiskPrepError::io(volume, "inspecting", path, e))?;
    if !md.is_file() {
        return Err(Escape::Fatal(invalid(
            "hostDisk.path exists but is not a regular file".into(),
        )));
    }
    use std::os::fd::AsRawFd as _;
    let resolved = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .unwrap_or_else(|_| root.join(rel));
    if !created {
        let mut reader = &file;
        let info = crate::inspect::inspect_image(&mut reader)
            .map_err(|e| DiskPrepError::io(volume, "inspecting", &resolved, e))?;
        info.accept(volume, &resolved, ImagePolicy::OpenedAsRaw)?;
        use std::io::Seek as _;
        reader
            .rewind()
            .map_err(|e| DiskPrepError::io(volume, "rewinding", &resolved, e))?;
    } else {
        tracing::info!(volume, path = %resolved.display(), "created hostDisk");
    }
    Ok(HostDiskFile {
        file,
        path: resolved,
        root: root.to_path_buf(),
        format: DiskFormat::Raw,
        created,
    })
}

fn required_capacity(volume: &str, capacity: Option<&str>) -> Result<u64> {
    let capacity = capacity.ok_or_else(|| {
        DiskPrepError::invalid(
            volume,
            "hostDisk.capacity",
            "required for type DiskOrCreate when the file does not exist",
        )
    })?;
    crate::emptydisk::parse_capacity(volume, "hostDisk.capacity", capacity)
}

/// Creates the parents of `rel` and then `rel` beneath `root_fd`, and sizes it sparse.
fn create_beneath(
    volume: &str,
    root_fd: &OwnedFd,
    rel: &Path,
    path: &Path,
    bytes: u64,
    resolve_error: impl Fn(Errno) -> Escape,
) -> std::result::Result<OwnedFd, Escape> {
    let Some(name) = rel.file_name() else {
        return Err(resolve_error(Errno::EISDIR));
    };
    let dir_flags = beneath(OFlag::O_PATH | OFlag::O_DIRECTORY);
    let mut dir = root_fd
        .try_clone()
        .map_err(|e| DiskPrepError::io(volume, "duplicating a descriptor for", path, e))?;
    let mut prefix = PathBuf::new();
    for comp in rel.parent().into_iter().flat_map(Path::components) {
        prefix.push(comp);
        // Each step is resolved from the allowed directory again, so a symlink inside it is
        // followed only while it stays beneath.
        dir = match nix::fcntl::openat2(root_fd, &prefix, dir_flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(
                    &dir,
                    comp.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(Escape::Fatal(DiskPrepError::io(
                            volume,
                            "creating a parent directory of",
                            path,
                            e.into(),
                        )))
                    }
                }
                nix::fcntl::openat2(root_fd, &prefix, dir_flags).map_err(&resolve_error)?
            }
            Err(e) => return Err(resolve_error(e)),
        };
    }
    let fd = nix::fcntl::openat2(
        &dir,
        name,
        beneath(OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL),
    )
    .map_err(|e| match e {
        // A dangling symlink (O_EXCL does not follow it) or a file that appeared meanwhile.
        Errno::EEXIST => Escape::Fatal(DiskPrepError::AlreadyExists {
            volume: volume.to_owned(),
            path: path.to_path_buf(),
        }),
        e => resolve_error(e),
    })?;
    let file = File::from(fd);
    if let Err(e) = file.set_len(bytes) {
        let _ = nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(Escape::Fatal(DiskPrepError::io(volume, "sizing", path, e)));
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [dir.path().to_path_buf()];
        let p = dir.path().join("missing.img");
        let err = open_host_disk("host", &roots, &p, HostDiskType::Disk, None).unwrap_err();
        assert!(
            matches!(err, DiskPrepError::HostDiskMissing { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("host"));
    }

    #[test]
    fn disk_or_create_creates_sparse_raw_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [dir.path().to_path_buf()];
        let p = dir.path().join("sub/dir/disk.img");
        let kind = HostDiskType::DiskOrCreate;
        let d = open_host_disk("host", &roots, &p, kind, Some("64Mi")).unwrap();
        assert!(d.created);
        assert_eq!(d.format, DiskFormat::Raw);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 64 << 20);
        std::fs::write(&p, b"data that must survive").unwrap();
        let d = open_host_disk("host", &roots, &p, kind, Some("64Mi")).unwrap();
        assert!(!d.created);
        assert_eq!(std::fs::read(&p).unwrap(), b"data that must survive");
    }

    #[test]
    fn path_validation() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [dir.path().to_path_buf()];
        for bad in ["relative/disk.img", "/tmp/../etc/disk.img", "/tmp/./x"] {
            let err = open_host_disk("host", &roots, Path::new(bad), HostDiskType::Disk, None)
                .unwrap_err();
            assert!(
                matches!(err, DiskPrepError::InvalidPath { .. }),
                "{bad}: {err}"
            );
        }
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let err = open_host_disk(
            "host",
            &roots,
            &dir.path().join("d"),
            HostDiskType::Disk,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = open_host_disk(
            "host",
            &roots,
            &dir.path().join("n"),
            HostDiskType::DiskOrCreate,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("hostDisk.capacity"), "{err}");
    }

    /// A root and a directory outside it, both temporary.
    fn root_and_outside() -> (tempfile::TempDir, tempfile::TempDir) {
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
    }

    fn open(
        roots: &[PathBuf],
        path: &Path,
        kind: HostDiskType,
        capacity: Option<&str>,
    ) -> Result<HostDiskFile> {
        open_host_disk("host", roots, path, kind, capacity)
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let (root, outside) = root_and_outside();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"host data").unwrap();
        let roots = [root.path().to_path_buf()];
        std::os::unix::fs::symlink(&secret, root.path().join("abs")).unwrap();
        let rel_target = Path::new("..")
            .join(outside.path().file_name().unwrap())
            .join("secret");
        std::os::unix::fs::symlink(&rel_target, root.path().join("rel")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dir")).unwrap();
        for name in ["abs", "rel", "dir/secret"] {
            let err = open(&roots, &root.path().join(name), HostDiskType::Disk, None).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("leaves the allowed host disk directory"),
                "{name}: {msg}"
            );
        }
        // Creating through a symlinked directory is refused too, and nothing appears outside.
        let err = open(
            &roots,
            &root.path().join("dir/new/disk.img"),
            HostDiskType::DiskOrCreate,
            Some("1Mi"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("leaves the allowed"), "{err}");
        assert!(!outside.path().join("new").exists());
        assert_eq!(std::fs::read(&secret).unwrap(), b"host data");
    }

    #[test]
    fn dot_dot_is_refused() {
        let (root, _outside) = root_and_outside();
        let p = root.path().join("../etc/passwd");
        let err = open(&[root.path().to_path_buf()], &p, HostDiskType::Disk, None).unwrap_err();
        assert!(matches!(err, DiskPrepError::InvalidPath { .. }), "{err}");
    }

    #[test]
    fn relative_symlink_inside_the_root_is_followed() {
        let (root, _outside) = root_and_outside();
        std::fs::create_dir(root.path().join("images")).unwrap();
        let real = root.path().join("images/real.img");
        std::fs::write(&real, vec![0u8; 4096]).unwrap();
        std::os::unix::fs::symlink("images/real.img", root.path().join("link.img")).unwrap();
        let d = open(
            &[root.path().to_path_buf()],
            &root.path().join("link.img"),
            HostDiskType::Disk,
            None,
        )
        .unwrap();
        assert_eq!(d.path, real.canonicalize().unwrap());
        assert_eq!(d.format, DiskFormat::Raw);
        assert!(!d.created);
        // Read-write and close-on-exec.
        let flags = nix::fcntl::fcntl(&d.file, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & OFlag::O_ACCMODE.bits(), OFlag::O_RDWR.bits());
        let fd_flags = nix::fcntl::fcntl(&d.file, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(fd_flags & nix::fcntl::FdFlag::FD_CLOEXEC.bits(), 0);
    }

    #[test]
    fn disk_or_create_makes_directories_beneath_the_root() {
        let (root, _outside) = root_and_outside();
        let p = root.path().join("vms/ns/name/disk.img");
        let d = open(
            &[
                PathBuf::from("/nonexistent-root"),
                root.path().to_path_buf(),
            ],
            &p,
            HostDiskType::DiskOrCreate,
            Some("64Mi"),
        )
        .unwrap();
        assert!(d.created);
        assert_eq!(d.root, root.path());
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt as _;
        assert!(md.blocks() * 512 < 1 << 20, "not sparse");
        drop(d);
        let d = open(
            &[root.path().to_path_buf()],
            &p,
            HostDiskType::DiskOrCreate,
            Some("64Mi"),
        )
        .unwrap();
        assert!(!d.created);
        let err = open(
            &[root.path().to_path_buf()],
            &root.path().join("other.img"),
            HostDiskType::Disk,
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, DiskPrepError::HostDiskMissing { .. }),
            "{err}"
        );
    }

    #[test]
    fn paths_outside_the_roots_and_no_roots() {
        let (root, _outside) = root_and_outside();
        let roots = [root.path().to_path_buf()];
        let err = open(&roots, Path::new("/etc/shadow"), HostDiskType::Disk, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "volume host: hostDisk.path \"/etc/shadow\" is not beneath an allowed host disk directory ({:?})",
                root.path()
            )
        );
        // The root itself is a directory, not a disk.
        assert!(open(&roots, root.path(), HostDiskType::Disk, None).is_err());
        let err = open(
            &[],
            &root.path().join("d.img"),
            HostDiskType::DiskOrCreate,
            Some("1Mi"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("hostDisk is disabled on this node"),
            "{err}"
        );
    }

    #[test]
    fn guest_written_qcow2_header_with_a_data_file_is_refused() {
        let (root, _outside) = root_and_outside();
        let p = root.path().join("disk.img");
        // What a guest writes to the start of its raw disk.
        let mut h = vec![0u8; 65536];
        h[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[72..80].copy_from_slice(&4u64.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h[104..108].copy_from_slice(&0x4441_5441u32.to_be_bytes());
        h[108..112].copy_from_slice(&11u32.to_be_bytes());
        h[112..123].copy_from_slice(b"/etc/passwd");
        std::fs::write(&p, &h).unwrap();
        let err = open(&[root.path().to_path_buf()], &p, HostDiskType::Disk, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "volume host: disk image {} refused: qcow2 image names an external data file \"/etc/passwd\"",
                p.display()
            )
        );
        assert!(matches!(err, DiskPrepError::UnsafeImage { .. }), "{err}");
        // Without the data file it is a guest's nested qcow2: used, as raw.
        h[72..80].copy_from_slice(&0u64.to_be_bytes());
        h[104..123].fill(0);
        std::fs::write(&p, &h).unwrap();
        let d = open(&[root.path().to_path_buf()], &p, HostDiskType::Disk, None).unwrap();
        assert_eq!(d.format, DiskFormat::Raw);
    }
}
