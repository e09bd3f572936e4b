//! kubevirt-importer: turns a disk image source into a volume's raw `disk.img`, the way CDI's
//! importer does (see README.md). No Kubernetes here: the caller resolves secrets and
//! ConfigMaps into an [`HttpSource`] and a volume into a [`Target`].
//!
//! - [`import_http`]: HTTP(S) with basic auth, extra CAs, extra headers, checksum, resume.
//! - [`import_stream`]: an upload body, or any byte stream.
//! - [`import_file`]: a local file (a containerDisk already pulled).
//! - [`create_blank`], [`clone_disk`]: blank volumes and clones.
//!
//! Sources may be gzip, xz or zstd compressed (found by magic number) and qcow2, VMDK (also
//! inside an OVA), VHD, VHDX, VDI, raw or ISO. Every image is inspected by
//! `kubevirt_diskprep`'s inspector first; images naming other files are refused. A raw source
//! streams straight into the disk; an image of known length is converted by qemu-img while
//! it downloads (served to it over NBD from the growing scratch file). The disk appears at
//! `Target::disk` only complete: it is written as `<disk>.tmp`, fsynced and renamed.

mod checksum;
mod clone;
mod detect;
mod download;
mod error;
mod http;
mod ingest;
mod job;
mod nbd;
mod process;
mod qemu;
mod sparse;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};

pub use clone::{clone_disk, create_blank};
pub use error::{ImportError, ImportErrorKind, Result};

use checksum::Expected;
use detect::{classify, Kind, HEAD};
use ingest::{ingest, Layout};
use job::{CancelOnDrop, Job, TargetLock};
use process::{process_file, Converted, Count};

/// An HTTP(S) source: a DataVolume's `spec.source.http` with its Secret and ConfigMap read.
#[derive(Debug, Clone, Default)]
pub struct HttpSource {
    pub url: String,
    /// From the DataVolume's secretRef (keys accessKeyId / secretKey): HTTP basic auth.
    pub basic_auth: Option<(String, String)>,
    /// PEM CA bundle from certConfigMap, trusted in addition to the system roots (as CDI
    /// adds the ConfigMap's certificates to the system pool).
    pub ca_pem: Option<Vec<u8>>,
    /// "algorithm:hex", algorithm md5, sha1, sha256 or sha512 (CDI's `checksum` field),
    /// verified over the bytes as served, before decompression.
    pub checksum: Option<String>,
    /// Sent with every request (CDI's extraHeaders and secretExtraHeaders, split at ':').
    pub extra_headers: Vec<(String, String)>,
}

/// Where the disk goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The final file, e.g. `<volume dir>/disk.img`. Written only through `<disk>.tmp` in the
    /// same directory, fsync and rename: a half-written disk is never at `disk`.
    pub disk: PathBuf,
    /// Where partial downloads and intermediate files live (same filesystem as `disk`, e.g.
    /// the volume directory). A partial download survives a killed process and is resumed.
    pub scratch_dir: PathBuf,
    /// Usable bytes of the volume: a larger image is refused before conversion, and the disk
    /// is grown to it (in whole sectors), as CDI resizes an imported image to its PVC.
    pub capacity: u64,
}

/// How far an import got, in bytes of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
}

impl Progress {
    /// CDI's DataVolume progress text, two decimals: "45.32%". `None` while the total is
    /// unknown.
    pub fn percent(&self) -> Option<String> {
        let total = self.total.filter(|&t| t > 0)?;
        let pct = self.done.min(total) as f64 * 100.0 / total as f64;
        Some(format!("{pct:.2}%"))
    }
}

/// A finished import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The image format found: "qcow2", "vmdk", "vpc", "vhdx", "vdi", "raw" or "iso".
    pub source_format: String,
    /// The image's virtual size (the disk itself is grown to the capacity).
    pub virtual_size: u64,
    /// Bytes of the source read (as served: compressed, archived), resumed part included.
    pub bytes_read: u64,
    /// Bytes of a previous, interrupted download that were reused.
    pub resumed_from: u64,
    /// Layers removed before the image, outermost first: "gz", "xz", "zst", "ova".
    pub unpacked: Vec<String>,
}

/// A finished clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneStats {
    /// Bytes copied: the source's data (holes excluded), or its whole length when reflinked.
    pub bytes: u64,
    /// The copy shares the source's extents (FICLONE).
    pub reflinked: bool,
}

/// Runs `work`, reporting the job's progress at most every 100 ms (only when it changed),
/// and once more at the end of a success.
async fn with_progress<T>(
    job: &Job,
    progress: &(impl Fn(Progress) + Send + Sync),
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Option<Progress> = None;
    loop {
        tokio::select! {
            biased;
            out = &mut work => {
                if out.is_ok() {
                    let p = job.progress();
                    if last != Some(p) {
                        progress(p);
                    }
                }
                return out;
            }
            _ = tick.tick() => {
                let p = job.progress();
                if last != Some(p) {
                    progress(p);
                    last = Some(p);
                }
            }
        }
    }
}

/// Runs `f` on the blocking pool, holding the target's lock until it returns (even when the
/// caller has gone away meanwhile).
async fn blocking<T: Send + 'static>(
    job: &Arc<Job>,
    lock: &Arc<TargetLock>,
    f: impl FnOnce(&Job) -> Result<T> + Send + 'static,
) -> Result<T> {
    let job = job.clone();
    let lock = lock.clone();
    tokio::task::spawn_blocking(move || {
        let _lock = lock;
        f(&job)
    })
    .await
    .map_err(|e| ImportError::new(ImportErrorKind::Io, format!("internal task failed: {e}")))?
}

/// `job.tmp` holds a raw image written by the fast path: check it is raw indeed (a DMG is
/// recognised only by its trailer), then rename it into place.
fn finish_raw_target(job: &Job, iso: bool) -> Result<Converted> {
    let info = kubevirt_diskprep::inspect::inspect_path(&job.source_name, &job.tmp)
        .map_err(|e| ImportError::new(ImportErrorKind::Io, e.to_string()))?;
    if info.format != kubevirt_diskprep::ImageFormat::Raw {
        return Err(ImportError::new(
            ImportErrorKind::Refused,
            format!(
                "Invalid format {} for image {}",
                info.format, job.source_name
            ),
        )
        .retryable(false));
    }
    let len = std::fs::metadata(&job.tmp)
        .map_err(|e| ImportError::io("stat", &job.tmp, e))?
        .len();
    Ok(Converted {
        format: if iso { "iso" } else { "raw" }.to_owned(),
        virtual_size: len,
        unpacked: Vec::new(),
    })
}

/// The last steps once every byte arrived: check an image converted on the fly, or process
/// the stored source, then finalize.
fn finish(
    job: &Job,
    early: Option<(Converted, kubevirt_diskprep::ImageFormat)>,
    layout: Layout,
    iso: bool,
) -> Result<Converted> {
    let converted = match (early, layout) {
        (Some((converted, format)), _) => {
            process::check_downloaded(job, format)?;
            converted
        }
        (None, Layout::Target) => finish_raw_target(job, iso)?,
        (None, Layout::Source) => process_file(job, &job.source.clone(), Count::Nothing)?,
    };
    finalize(job, converted)
}

/// Finalizes unless the caller is gone (a dropped import must not make a disk appear later).
fn finalize(job: &Job, converted: Converted) -> Result<Converted> {
    if job.cancelled() {
        return Err(ImportError::cancelled());
    }
    job.finalize()?;
    Ok(converted)
}

fn imported(converted: Converted, bytes_read: u64, resumed_from: u64) -> Imported {
    Imported {
        source_format: converted.format,
        virtual_size: converted.virtual_size,
        bytes_read,
        resumed_from,
        unpacked: converted.unpacked,
    }
}

/// Converts a source while it arrives (see [`process::convert_growing`]); `None` when it is
/// not converted on the fly.
async fn convert_early(
    job: &Arc<Job>,
    lock: &Arc<TargetLock>,
    overlap: Option<download::Overlap>,
) -> std::result::Result<Option<(Converted, kubevirt_diskprep::ImageFormat)>, Early> {
    let Some(overlap) = overlap else {
        return Ok(None);
    };
    let (size, growing) = (overlap.size, overlap.growing.clone());
    let converted = blocking(job, lock, move |job| {
        process::convert_growing(job, size, &growing)
    })
    .await;
    match converted {
        Ok(c) => Ok(Some(c)),
        Err(e) if overlap.growing.starved(overlap.size) => Err(Early::Starved(e)),
        Err(e) => Err(Early::Own(e)),
    }
}

/// How a conversion overlapping its download failed.
enum Early {
    Own(ImportError),
    Starved(ImportError),
}

/// Runs a download and the conversion overlapping it. The conversion's errors of its own
/// (refused, too large, corrupt) stop the download at once; when the download fails, the
/// conversion starved of data fails too, and the download's error is the one reported.
async fn both<D, E>(
    download: impl Future<Output = Result<D>>,
    early: impl Future<Output = std::result::Result<Option<E>, Early>>,
) -> Result<(D, Option<E>)> {
    let mut download = std::pin::pin!(download);
    let mut early = std::pin::pin!(early);
    tokio::select! {
        dl = &mut download => match dl {
            Ok(dl) => match early.await {
                Ok(converted) => Ok((dl, converted)),
                Err(Early::Own(e) | Early::Starved(e)) => Err(e),
            },
            Err(e) => {
                // Readers waiting for data that will not come are released by the writer's
                // failure; wait for the converter to stop before cleaning up.
                let _ = early.await;
                Err(e)
            }
        },
        converted = &mut early => match converted {
            Ok(converted) => Ok((download.await?, converted)),
            // Refused, too large, corrupt: the rest of the download is not needed.
            Err(Early::Own(e)) => Err(e),
            // Starved by a failed download: that failure is the story.
            Err(Early::Starved(e)) => match download.await {
                Err(download_error) => Err(download_error),
                Ok(_) => Err(e),
            },
        },
    }
}

/// Downloads `src` and writes it to `target` as a raw disk. A partial download left by an
/// earlier attempt (killed process, dropped future, network error) is resumed when the server
/// still serves the same file.
pub async fn import_http(
    src: &HttpSource,
    target: &Target,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<Imported> {
    let job = Job::new(target, http::redact(&src.url))?;
    let _cancel = CancelOnDrop(job.clone());
    let lock = job.lock().await?;
    let result = with_progress(&job, &progress, async {
        let expected = src
            .checksum
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .map(Expected::parse)
            .transpose()?;
        http::check_url(&src.url)?;
        let client = http::client(src)?;
        let (overlap_tx, overlap_rx) = tokio::sync::oneshot::channel();
        let download = download::download(&job, src, &client, expected.as_ref(), overlap_tx);
        // The sender goes away unused when the source is not converted on the fly.
        let early = async { convert_early(&job, &lock, overlap_rx.await.ok()).await };
        let (dl, early) = both(download, early).await?;
        let (layout, iso) = (dl.layout, dl.iso);
        let converted = blocking(&job, &lock, move |job| finish(job, early, layout, iso)).await?;
        Ok(imported(converted, dl.bytes, dl.resumed_from))
    })
    .await;
    match &result {
        Ok(_) => job.clean(false),
        Err(e) => {
            tracing::debug!(url = %job.source_name, error = %e, "import failed");
            job.clean(e.retryable);
        }
    }
    result
}

/// Writes the bytes of `reader` (an upload's body; `total` its length when known) to
/// `target` as a raw disk. A raw stream goes straight to the disk; anything else is stored in
/// the scratch directory first.
pub async fn import_stream<R: AsyncRead + Unpin + Send>(
    mut reader: R,
    total: Option<u64>,
    target: &Target,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<Imported> {
    let job = Job::new(target, "upload".to_owned())?;
    let _cancel = CancelOnDrop(job.clone());
    let lock = job.lock().await?;
    job.clean(false);
    job.set_total(total);
    let result = with_progress(&job, &progress, async {
        let read_error = |e: std::io::Error| {
            ImportError::new(
                ImportErrorKind::Io,
                format!("Unable to transfer source data: reading upload stream: {e}"),
            )
            .retryable(true)
        };
        let mut head = vec![0u8; HEAD];
        let mut n = 0;
        while n < HEAD {
            let got = reader.read(&mut head[n..]).await.map_err(read_error)?;
            if got == 0 {
                break;
            }
            n += got;
        }
        head.truncate(n);
        let (layout, iso, limit, over): (_, _, _, fn(u64) -> ImportError) = match classify(&head) {
            Kind::Raw { iso } => (Layout::Target, iso, job.capacity, |l| {
                ImportError::data_too_large("raw image data", l)
            }),
            _ => (Layout::Source, false, job.scratch_limit(), |l| {
                ImportError::data_too_large("source data", l)
            }),
        };
        if let (Layout::Target, Some(total)) = (layout, total) {
            if total > job.capacity {
                return Err(ImportError::too_large(total, job.capacity));
            }
        }
        let kind = classify(&head);
        let overlap = match total {
            Some(size) if process::overlappable(kind) => {
                // The file exists before the converter is told to read it.
                std::fs::File::create(&job.source)
                    .map_err(|e| ImportError::io("create", &job.source, e))?;
                Some(download::Overlap {
                    size,
                    growing: nbd::Growing::new(0),
                })
            }
            _ => None,
        };
        let growing = overlap.as_ref().map(|o| o.growing.clone());
        let rest =
            tokio_util::io::ReaderStream::with_capacity(&mut reader, 256 << 10).map_err(read_error);
        let upload = async {
            let written = ingest(
                &job,
                layout,
                0,
                None,
                Bytes::from(head),
                rest,
                limit,
                over,
                growing,
            )
            .await?;
            match total {
                Some(total) if written.bytes != total => Err(read_error(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("unexpected EOF after {} of {total} bytes", written.bytes),
                ))),
                _ => Ok(written),
            }
        };
        let early = convert_early(&job, &lock, overlap);
        let (written, early) = both(upload, early).await?;
        let converted = blocking(&job, &lock, move |job| finish(job, early, layout, iso)).await?;
        Ok(imported(converted, written.bytes, 0))
    })
    .await;
    // A stream cannot be resumed: nothing is kept.
    job.clean(false);
    result
}

/// Writes the image file at `path` (left untouched) to `target` as a raw disk.
pub async fn import_file(
    path: &Path,
    target: &Target,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<Imported> {
    let job = Job::new(target, path.display().to_string())?;
    let _cancel = CancelOnDrop(job.clone());
    let lock = job.lock().await?;
    job.clean(false);
    let path = path.to_path_buf();
    let result = with_progress(&job, &progress, async {
        let converted = blocking(&job, &lock, move |job| {
            let converted = process_file(job, &path, Count::FileBytes)?;
            finalize(job, converted)
        })
        .await?;
        let p = job.progress();
        let read = p.total.unwrap_or(p.done);
        job.set_done(read);
        Ok(imported(converted, read, 0))
    })
    .await;
    job.clean(false);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_like_cdi() {
        let p = Progress {
            done: 4532,
            total: Some(10000),
        };
        assert_eq!(p.percent().as_deref(), Some("45.32%"));
        assert_eq!(
            Progress {
                done: 5,
                total: Some(5)
            }
            .percent()
            .as_deref(),
            Some("100.00%")
        );
        assert_eq!(
            Progress {
                done: 5,
                total: None
            }
            .percent(),
            None
        );
        assert_eq!(
            Progress {
                done: 0,
                total: Some(0)
            }
            .percent(),
            None
        );
    }
}
