//! Downloading an HTTP source, resumably: the bytes as served go to a partial file (the
//! scratch `.source`, or `<disk>.tmp` directly for a raw image), described by a sidecar
//! holding the URL and its validators. A later attempt asks for the rest with `Range` and
//! `If-Range`; a 206 appends, a 200 (the file changed, or no range support) starts over.

use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{ETAG, IF_RANGE, LAST_MODIFIED, RANGE};

use crate::checksum::Expected;
use crate::detect::{classify, Kind, HEAD};
use crate::error::{ImportError, ImportErrorKind, Result};
use crate::http::{content_range, if_range, request_error, status_error};
use crate::ingest::{ingest, Layout};
use crate::job::{remove_if_exists, Job};
use crate::nbd::Growing;
use crate::sparse::BLOCK;
use crate::HttpSource;

/// What a partial download is of; written before its first byte.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Sidecar {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    /// The complete length, when the server said.
    total: Option<u64>,
    layout: Layout,
    iso: bool,
}

/// A download that can be converted while it arrives: an image qemu-img converts, of known
/// length, being written to the scratch `.source` from its first byte.
pub(crate) struct Overlap {
    pub(crate) size: u64,
    pub(crate) growing: Arc<Growing>,
}

/// A finished download.
pub(crate) struct Downloaded {
    pub(crate) layout: Layout,
    pub(crate) iso: bool,
    /// The source's length.
    pub(crate) bytes: u64,
    /// Bytes that were already there from an interrupted attempt.
    pub(crate) resumed_from: u64,
}

fn read_sidecar(path: &Path) -> Option<Sidecar> {
    let text = std::fs::read(path).ok()?;
    if text.len() > 64 << 10 {
        return None;
    }
    serde_json::from_slice(&text).ok()
}

fn write_sidecar(job: &Job, sidecar: &Sidecar) -> Result<()> {
    let tmp = job.sidecar.with_extension("json.tmp");
    let text = serde_json::to_vec(sidecar).map_err(|e| {
        ImportError::new(ImportErrorKind::Io, format!("encoding download state: {e}"))
    })?;
    std::fs::write(&tmp, text).map_err(|e| ImportError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &job.sidecar).map_err(|e| ImportError::io("rename", &job.sidecar, e))
}

fn partial_path(job: &Job, layout: Layout) -> &Path {
    match layout {
        Layout::Source => &job.source,
        Layout::Target => &job.tmp,
    }
}

fn forget_partial(job: &Job) {
    for p in [&job.sidecar, &job.source, &job.tmp] {
        remove_if_exists(p);
    }
}

/// A partial download of the same URL that can be resumed, with the offset to resume at and
/// the `If-Range` validator.
fn resumable(job: &Job, url: &str) -> Option<(Sidecar, u64, String)> {
    let sidecar = read_sidecar(&job.sidecar).filter(|s| s.url == url)?;
    let validator = if_range(sidecar.etag.as_deref(), sidecar.last_modified.as_deref())?;
    let len = std::fs::metadata(partial_path(job, sidecar.layout))
        .ok()?
        .len();
    // A complete file stays complete; otherwise back off to a block boundary, so the tail
    // of a write cut short by a kill is fetched again.
    let at = if Some(len) == sidecar.total {
        len
    } else {
        len & !(BLOCK as u64 - 1)
    };
    (at > 0).then_some((sidecar, at, validator))
}

fn limit_for(job: &Job, layout: Layout) -> (u64, fn(u64) -> ImportError) {
    match layout {
        Layout::Target => (job.capacity, |l| {
            ImportError::data_too_large("raw image data", l)
        }),
        Layout::Source => (job.scratch_limit(), |l| {
            ImportError::data_too_large("source data", l)
        }),
    }
}

fn body(resp: reqwest::Response, url: &str) -> impl Stream<Item = Result<Bytes>> + Unpin + 'static {
    let url = url.to_owned();
    resp.bytes_stream()
        .map_err(move |e| request_error(&e, &url))
}

fn header(resp: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(crate) async fn download(
    job: &Arc<Job>,
    src: &HttpSource,
    client: &reqwest::Client,
    expected: Option<&Expected>,
    overlap: tokio::sync::oneshot::Sender<Overlap>,
) -> Result<Downloaded> {
    let mut resume = resumable(job, &src.url);
    if resume.is_none() {
        forget_partial(job);
    }
    loop {
        let mut req = client.get(&src.url);
        if let Some((user, pass)) = &src.basic_auth {
            req = req.basic_auth(user, Some(pass));
        }
        if let Some((_, at, validator)) = &resume {
            req = req
                .header(RANGE, format!("bytes={at}-"))
                .header(IF_RANGE, validator.as_str());
        }
        let resp = req.send().await.map_err(|e| request_error(&e, &src.url))?;
        let status = resp.status().as_u16();
        match (resume.take(), status) {
            (Some((sidecar, at, _)), 206) => {
                let range = content_range(resp.headers());
                let total = sidecar.total;
                match range {
                    Some((start, len)) if start == at && (total.is_none() || len == total) => {
                        tracing::info!(url = %job.source_name, offset = at, "resuming download");
                        return resumed(job, src, expected, sidecar, at, body(resp, &src.url))
                            .await;
                    }
                    _ => {
                        tracing::warn!(url = %job.source_name, ?range, "unusable range response; starting over");
                        forget_partial(job);
                    }
                }
            }
            // Everything was there already: the range starts at the end.
            (Some((sidecar, at, _)), 416) if sidecar.total == Some(at) => {
                drop(resp);
                return resumed(job, src, expected, sidecar, at, futures::stream::empty()).await;
            }
            (previous, 200) => {
                if previous.is_some() {
                    tracing::info!(url = %job.source_name, "source changed or ranges unsupported; starting over");
                    forget_partial(job);
                }
                return fresh(job, src, expected, resp, overlap).await;
            }
            (_, _) => return Err(status_error(resp.status(), 200)),
        }
    }
}

async fn resumed<S>(
    job: &Arc<Job>,
    src: &HttpSource,
    expected: Option<&Expected>,
    sidecar: Sidecar,
    at: u64,
    rest: S,
) -> Result<Downloaded>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    job.set_total(sidecar.total);
    job.set_done(at);
    let (limit, over) = limit_for(job, sidecar.layout);
    let written = ingest(
        job,
        sidecar.layout,
        at,
        expected.map(Expected::hasher),
        Bytes::new(),
        rest,
        limit,
        over,
        None,
    )
    .await?;
    complete(job, src, expected, &sidecar, written, at)
}

async fn fresh(
    job: &Arc<Job>,
    src: &HttpSource,
    expected: Option<&Expected>,
    resp: reqwest::Response,
    overlap: tokio::sync::oneshot::Sender<Overlap>,
) -> Result<Downloaded> {
    let total = resp.content_length();
    let etag = header(&resp, ETAG);
    let last_modified = header(&resp, LAST_MODIFIED);
    let mut stream = body(resp, &src.url);
    let mut head = BytesMut::new();
    while head.len() < HEAD {
        match stream.next().await {
            Some(chunk) => head.extend_from_slice(&chunk?),
            None => break,
        }
    }
    let head = head.freeze();
    let kind = classify(&head[..head.len().min(HEAD)]);
    let (layout, iso) = match kind {
        Kind::Raw { iso } => (Layout::Target, iso),
        _ => (Layout::Source, false),
    };
    if let (Layout::Target, Some(total)) = (layout, total) {
        if total > job.capacity {
            return Err(ImportError::too_large(total, job.capacity));
        }
    }
    let sidecar = Sidecar {
        url: src.url.clone(),
        etag,
        last_modified,
        total,
        layout,
        iso,
    };
    write_sidecar(job, &sidecar)?;
    job.set_total(total);
    job.set_done(0);
    let growing = match total {
        Some(size) if crate::process::overlappable(kind) => {
            // The file exists before the converter is told to read it.
            std::fs::File::create(&job.source)
                .map_err(|e| ImportError::io("create", &job.source, e))?;
            let growing = Growing::new(0);
            let _ = overlap.send(Overlap {
                size,
                growing: growing.clone(),
            });
            Some(growing)
        }
        _ => None,
    };
    let (limit, over) = limit_for(job, layout);
    let written = ingest(
        job,
        layout,
        0,
        expected.map(Expected::hasher),
        head,
        stream,
        limit,
        over,
        growing,
    )
    .await?;
    complete(job, src, expected, &sidecar, written, 0)
}

fn complete(
    job: &Job,
    src: &HttpSource,
    expected: Option<&Expected>,
    sidecar: &Sidecar,
    written: crate::ingest::Written,
    resumed_from: u64,
) -> Result<Downloaded> {
    if let Some(total) = sidecar.total {
        if written.bytes != total {
            return Err(ImportError::new(
                ImportErrorKind::Http,
                format!(
                    "HTTP request errored: Get {:?}: unexpected EOF after {} of {total} bytes",
                    crate::http::redact(&src.url),
                    written.bytes
                ),
            )
            .retryable(true));
        }
    }
    if let (Some(expected), Some(hasher)) = (expected, written.hasher) {
        expected.verify(hasher)?;
    }
    job.set_total(Some(written.bytes));
    job.set_done(written.bytes);
    Ok(Downloaded {
        layout: sidecar.layout,
        iso: sidecar.iso,
        bytes: written.bytes,
        resumed_from,
    })
}
