//! Bytes arriving asynchronously (an HTTP body, an upload) written to a file by a blocking
//! writer: the network side never waits on the disk for longer than a few queued chunks,
//! hashing and zero detection run beside it, and memory stays bounded.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::checksum::Hasher;
use crate::error::{ImportError, ImportErrorKind, Result};
use crate::job::Job;
use crate::nbd::Growing;
use crate::sparse::{SparseWriter, BUF};

/// Where arriving bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Layout {
    /// `<scratch>/<disk>.source`, to be processed once complete.
    Source,
    /// `<disk>.tmp` directly: the source is a raw image (the fast path).
    Target,
}

/// Chunks in flight between the network and the writer (each up to a few hundred KiB).
const QUEUE: usize = 32;

enum Msg {
    Data(Bytes),
    End,
}

pub(crate) struct Written {
    /// The file's length: everything received, including a resumed prefix.
    pub(crate) bytes: u64,
    pub(crate) hasher: Option<Hasher>,
}

/// Writes `first` and then `rest` to the `layout` file from offset `start` (a resumed
/// download keeps what lies before). `hasher` sees every byte of the file, the existing
/// prefix included. Progress is counted into the job. A failure of `rest` is returned as is
/// and leaves what arrived before it in the file.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn ingest<S>(
    job: &Arc<Job>,
    layout: Layout,
    start: u64,
    hasher: Option<Hasher>,
    first: Bytes,
    mut rest: S,
    limit: u64,
    over_limit: fn(u64) -> ImportError,
    growing: Option<Arc<Growing>>,
) -> Result<Written>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    let (tx, rx) = mpsc::channel::<Msg>(QUEUE);
    let writer_job = job.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let result = write_loop(
            &writer_job,
            layout,
            start,
            hasher,
            rx,
            limit,
            over_limit,
            growing.as_deref(),
        );
        if let Some(g) = &growing {
            match &result {
                Ok(_) => g.finish(),
                Err(_) => g.fail(),
            }
        }
        result
    });
    let feed = async move {
        if !first.is_empty() && tx.send(Msg::Data(first)).await.is_err() {
            return Ok(());
        }
        while let Some(chunk) = rest.next().await {
            // The writer stopped: its error is the one to report.
            if tx.send(Msg::Data(chunk?)).await.is_err() {
                return Ok(());
            }
        }
        let _ = tx.send(Msg::End).await;
        Ok(())
    };
    let fed: Result<()> = feed.await;
    let written = writer
        .await
        .map_err(|e| ImportError::new(ImportErrorKind::Io, format!("internal task failed: {e}")))?;
    fed?;
    // CDI's data processor names the phase that failed.
    written.map_err(|e| match layout {
        _ if e.kind == ImportErrorKind::Io && e.retryable => e,
        Layout::Source => e.context("Unable to transfer source data to scratch space"),
        Layout::Target => e.context("Unable to transfer source data to target file"),
    })
}

#[allow(clippy::too_many_arguments)]
fn write_loop(
    job: &Job,
    layout: Layout,
    start: u64,
    mut hasher: Option<Hasher>,
    mut rx: mpsc::Receiver<Msg>,
    limit: u64,
    over_limit: fn(u64) -> ImportError,
    growing: Option<&Growing>,
) -> Result<Written> {
    let path = match layout {
        Layout::Source => &job.source,
        Layout::Target => &job.tmp,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ImportError::io("open", path, e))?;
    if let (Some(h), true) = (hasher.as_mut(), start > 0) {
        let mut buf = vec![0u8; BUF];
        let mut at = 0u64;
        while at < start {
            if job.cancelled() {
                return Err(ImportError::cancelled());
            }
            let n = (start - at).min(BUF as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| ImportError::io("read", path, e))?;
            h.update(&buf[..n]);
            at += n as u64;
        }
    }
    let mut writer = SparseWriter::new(file, path, start, limit, over_limit)?;
    let counter = job.done_counter();
    loop {
        match rx.blocking_recv() {
            Some(Msg::Data(data)) => {
                if let Some(h) = hasher.as_mut() {
                    h.update(&data);
                }
                writer.write(&data)?;
                if let Some(g) = growing {
                    g.advance(writer.flushed());
                }
                counter.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Some(Msg::End) => {
                let (_, bytes) = writer.finish()?;
                if let Some(g) = growing {
                    g.advance(bytes);
                }
                return Ok(Written { bytes, hasher });
            }
            None => {
                // The source failed or the import was dropped: keep what arrived.
                writer.flush()?;
                return Err(ImportError::cancelled());
            }
        }
    }
}
