//! Blank disks and clones of a volume's disk, written through `<disk>.tmp` and a rename.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{ImportError, ImportErrorKind, Result};
use crate::job::{remove_if_exists, Job};
use crate::sparse::data_segments;
use crate::{CloneStats, Imported, Target};

/// A sparse raw `disk` of the target's capacity (whole sectors).
pub fn create_blank(target: &Target) -> Result<Imported> {
    let job = Job::new(target, "blank".to_owned())?;
    let _lock = job.lock_blocking()?;
    let result = (|| {
        remove_if_exists(&job.tmp);
        File::create(&job.tmp).map_err(|e| ImportError::io("create", &job.tmp, e))?;
        job.finalize()
    })();
    if let Err(e) = result {
        remove_if_exists(&job.tmp);
        return Err(e);
    }
    Ok(Imported {
        source_format: "raw".to_owned(),
        virtual_size: job.grown_size(),
        bytes_read: 0,
        resumed_from: 0,
        unpacked: Vec::new(),
    })
}

/// Copies the disk file `src` to the target: a reflink (FICLONE) where the filesystem shares
/// extents, else a copy of the data segments only (SEEK_DATA/SEEK_HOLE, copy_file_range), so
/// holes stay holes. The copy grows to the target's capacity when that is larger; a source
/// larger than the capacity is refused.
pub fn clone_disk(src: &Path, target: &Target) -> Result<CloneStats> {
    let job = Job::new(target, src.display().to_string())?;
    let _lock = job.lock_blocking()?;
    let result = clone_into(src, &job);
    if result.is_err() {
        remove_if_exists(&job.tmp);
    }
    result
}

fn clone_into(src: &Path, job: &Job) -> Result<CloneStats> {
    let input = File::open(src).map_err(|e| ImportError::open(src, e))?;
    let meta = input
        .metadata()
        .map_err(|e| ImportError::io("stat", src, e))?;
    if !meta.is_file() {
        return Err(ImportError::new(
            ImportErrorKind::Refused,
            format!("{} is not a regular file", src.display()),
        )
        .retryable(false));
    }
    let len = meta.len();
    if len > job.capacity {
        // CDI's wording (pkg/controller/common/util.go, `ValidateRequestedCloneSize`).
        return Err(ImportError::new(
            ImportErrorKind::TooLarge,
            format!(
                "target resources requests storage size is smaller than the source {} < {len}",
                job.capacity
            ),
        )
        .retryable(false));
    }
    remove_if_exists(&job.tmp);
    let output = File::create(&job.tmp).map_err(|e| ImportError::io("create", &job.tmp, e))?;
    let stats = if reflink(&input, &output) {
        CloneStats {
            bytes: len,
            reflinked: true,
        }
    } else {
        let bytes = copy_segments(&input, src, &output, &job.tmp, len)?;
        output
            .set_len(len)
            .map_err(|e| ImportError::io("write", &job.tmp, e))?;
        CloneStats {
            bytes,
            reflinked: false,
        }
    };
    drop(output);
    job.finalize()?;
    Ok(stats)
}

/// FICLONE: the whole file shares the source's extents (btrfs, XFS with reflink, ...).
fn reflink(input: &File, output: &File) -> bool {
    // SAFETY: FICLONE takes the source descriptor as its argument and touches no memory of
    // ours; both descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(output.as_raw_fd(), libc::FICLONE as _, input.as_raw_fd()) };
    rc == 0
}

/// Copies the data segments of `input` into the same offsets of `output`; the bytes copied.
fn copy_segments(input: &File, src: &Path, output: &File, dst: &Path, len: u64) -> Result<u64> {
    let mut copied = 0;
    for (start, end) in data_segments(input, 0, len) {
        let mut off_in = start as libc::loff_t;
        let mut off_out = start as libc::loff_t;
        while (off_in as u64) < end {
            let want = (end - off_in as u64).min(1 << 30) as usize;
            // SAFETY: both descriptors are open; the offsets are ours and the kernel updates
            // them; no buffer of ours is involved.
            let n = unsafe {
                libc::copy_file_range(
                    input.as_raw_fd(),
                    &mut off_in,
                    output.as_raw_fd(),
                    &mut off_out,
                    want,
                    0,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                        copied += copy_by_reading(input, src, output, dst, off_in as u64, end)?;
                        break;
                    }
                    _ => return Err(ImportError::io("copy", dst, err)),
                }
            }
            if n == 0 {
                // The source shrank under us.
                break;
            }
            copied += n as u64;
        }
    }
    Ok(copied)
}

fn copy_by_reading(
    input: &File,
    src: &Path,
    output: &File,
    dst: &Path,
    mut at: u64,
    end: u64,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let start = at;
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        let got = input
            .read_at(&mut buf[..n], at)
            .map_err(|e| ImportError::io("read", src, e))?;
        if got == 0 {
            break;
        }
        output
            .write_all_at(&buf[..got], at)
            .map_err(|e| ImportError::io("write", dst, e))?;
        at += got as u64;
    }
    Ok(at - start)
}
