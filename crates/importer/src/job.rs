//! One import into one target: its file names, its lock, its progress counters, its
//! cancellation flag, and the final fsync + rename.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ImportError, ImportErrorKind, Result};
use crate::{Progress, Target};

const UNKNOWN: u64 = u64::MAX;

pub(crate) struct Job {
    pub(crate) disk: PathBuf,
    /// `<disk>.tmp`: the disk being written; renamed to `disk` when complete.
    pub(crate) tmp: PathBuf,
    /// `<scratch>/<disk name>.source`: the source as served (kept across retries).
    pub(crate) source: PathBuf,
    /// `<scratch>/<disk name>.source.json`: what the partial download is of.
    pub(crate) sidecar: PathBuf,
    /// `<scratch>/<disk name>.unpacked`: a decompressed image waiting for conversion.
    pub(crate) unpacked: PathBuf,
    lock: PathBuf,
    pub(crate) capacity: u64,
    /// How the source is named in messages (URL, path, "upload").
    pub(crate) source_name: String,
    pub(crate) cancel: Arc<AtomicBool>,
    done: AtomicU64,
    total: AtomicU64,
}

impl Job {
    pub(crate) fn new(target: &Target, source_name: String) -> Result<Arc<Job>> {
        let name = target
            .disk
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ImportError::new(
                    ImportErrorKind::Io,
                    format!("invalid transfer path {}", target.disk.display()),
                )
                .retryable(false)
            })?;
        let dir = target
            .disk
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for d in [dir, target.scratch_dir.as_path()] {
            std::fs::create_dir_all(d).map_err(|e| ImportError::io("mkdir", d, e))?;
        }
        let scratch = |suffix: &str| target.scratch_dir.join(format!("{name}.{suffix}"));
        Ok(Arc::new(Job {
            disk: target.disk.clone(),
            tmp: dir.join(format!("{name}.tmp")),
            source: scratch("source"),
            sidecar: scratch("source.json"),
            unpacked: scratch("unpacked"),
            lock: scratch("lock"),
            capacity: target.capacity,
            source_name,
            cancel: Arc::new(AtomicBool::new(false)),
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
        }))
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub(crate) fn set_total(&self, total: Option<u64>) {
        self.total
            .store(total.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }

    pub(crate) fn set_done(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }

    pub(crate) fn done_counter(&self) -> &AtomicU64 {
        &self.done
    }

    pub(crate) fn progress(&self) -> Progress {
        let total = self.total.load(Ordering::Relaxed);
        Progress {
            done: self.done.load(Ordering::Relaxed),
            total: (total != UNKNOWN).then_some(total),
        }
    }

    /// Largest intermediate file accepted (a downloaded or decompressed image before
    /// conversion): generous, since a qcow2 may hold internal snapshots, but bounded, so a
    /// hostile source cannot fill the node's disk.
    pub(crate) fn scratch_limit(&self) -> u64 {
        self.capacity.saturating_mul(2).saturating_add(64 << 20)
    }

    /// The size the disk is grown to: the capacity, in whole sectors (CDI resizes the
    /// imported image to the volume's usable size the same way).
    pub(crate) fn grown_size(&self) -> u64 {
        self.capacity & !511
    }

    /// Takes the target's lock, waiting for another import of the same target (or a
    /// cancelled one still winding down) to finish.
    pub(crate) async fn lock(&self) -> Result<Arc<TargetLock>> {
        loop {
            match TargetLock::try_acquire(&self.lock)? {
                Some(lock) => return Ok(Arc::new(lock)),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub(crate) fn lock_blocking(&self) -> Result<TargetLock> {
        loop {
            match TargetLock::try_acquire(&self.lock)? {
                Some(lock) => return Ok(lock),
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// fsyncs `tmp`, grows it to the capacity, renames it to `disk` and fsyncs the directory:
    /// the disk is either absent or complete.
    pub(crate) fn finalize(&self) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.tmp)
            .map_err(|e| ImportError::io("open", &self.tmp, e))?;
        let len = file
            .metadata()
            .map_err(|e| ImportError::io("stat", &self.tmp, e))?
            .len();
        let grown = self.grown_size();
        if grown > len {
            file.set_len(grown)
                .map_err(|e| ImportError::io("resize", &self.tmp, e))?;
        }
        file.sync_all()
            .map_err(|e| ImportError::io("fsync", &self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.disk)
            .map_err(|e| ImportError::io("rename", &self.disk, e))?;
        sync_dir(&self.disk)
    }

    /// Removes what a failed import leaves. `keep_download`: a retryable failure keeps the
    /// partial download (and, for a raw source, the partial disk) for resuming.
    pub(crate) fn clean(&self, keep_download: bool) {
        let mut paths = vec![&self.unpacked];
        if !keep_download {
            paths.extend([&self.tmp, &self.source, &self.sidecar]);
        }
        for p in paths {
            remove_if_exists(p);
        }
    }
}

pub(crate) fn remove_if_exists(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "removing import leftovers");
        }
    }
}

/// fsyncs the directory holding `path`, so a rename in it survives a crash.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ImportError::io("fsync", dir, e))
}

/// An exclusive flock on `<scratch>/<disk>.lock`, removed when released. A waiter that
/// locked a file already removed (or replaced) tries again, so two holders never coexist.
pub(crate) struct TargetLock {
    /// Held for its flock, released when dropped.
    _file: File,
    path: PathBuf,
}

impl TargetLock {
    fn try_acquire(path: &Path) -> Result<Option<TargetLock>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| ImportError::io("open", path, e))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(ImportError::io("lock", path, err));
        }
        let held = file
            .metadata()
            .map_err(|e| ImportError::io("stat", path, e))?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(Some(TargetLock {
                _file: file,
                path: path.to_path_buf(),
            })),
            // Removed or replaced by the previous holder: lock the current file instead.
            _ => Ok(None),
        }
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the descriptor.
        remove_if_exists(&self.path);
    }
}

/// Sets the job's cancellation flag when the import's future is dropped, so the blocking
/// work it started (decompression, qemu-img) stops instead of racing a later import.
pub(crate) struct CancelOnDrop(pub(crate) Arc<Job>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel.store(true, Ordering::Relaxed);
    }
}
