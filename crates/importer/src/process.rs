//! From a local file (a finished download, an upload, a pulled containerDisk) to the raw
//! `<disk>.tmp`: decompress, pick the VMDK out of an OVA, inspect, check the size, convert.
//! Everything here blocks; the async entry points run it on the blocking pool.

use std::fs::File;
use std::io::{BufReader, Chain, Cursor, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use kubevirt_diskprep::inspect::{inspect_image, Finding, ImageFormat, ImageInfo};

use crate::detect::{classify, Compression, Kind, Window, HEAD};
use crate::error::{ImportError, ImportErrorKind, Result};
use crate::job::{remove_if_exists, Job};
use crate::nbd::{Growing, WaitingReader};
use crate::qemu::{self, Input, Region};
use crate::sparse::{copy_stream, data_segments, read_full, SparseWriter, BUF};

/// At most this many compression layers are peeled (CDI takes each kind once).
const MAX_LAYERS: usize = 3;
/// At most this many tar members are looked at for the VMDK.
const MAX_TAR_MEMBERS: usize = 1000;

/// What became of the source.
#[derive(Debug, Clone)]
pub(crate) struct Converted {
    pub(crate) format: String,
    pub(crate) virtual_size: u64,
    /// Compression and archive layers removed, outermost first.
    pub(crate) unpacked: Vec<String>,
}

/// How progress is counted while processing a local file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// Bytes of the file read (and qemu-img's percentage scaled onto the file's size).
    FileBytes,
    /// Progress was counted while the file arrived (a download); leave it alone.
    Nothing,
}

/// Turns the file at `path` into `job.tmp` (raw, sparse). On failure nothing is left at
/// `job.tmp` or `job.unpacked`; `path` itself is never touched.
pub(crate) fn process_file(job: &Job, path: &Path, count: Count) -> Result<Converted> {
    let result = process_file_inner(job, path, count);
    remove_if_exists(&job.unpacked);
    if result.is_err() {
        remove_if_exists(&job.tmp);
    }
    result
}

fn open(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| ImportError::open(path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| ImportError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(ImportError::new(
            ImportErrorKind::Refused,
            format!("{} is not a regular file", path.display()),
        )
        .retryable(false));
    }
    Ok((file, meta.len()))
}

fn read_head(file: &File, path: &Path, len: u64) -> Result<Vec<u8>> {
    let mut head = vec![0u8; (len.min(HEAD as u64)) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| ImportError::io("read", path, e))?;
    Ok(head)
}

fn process_file_inner(job: &Job, path: &Path, count: Count) -> Result<Converted> {
    // Whatever is there (a stale file, a link) is replaced, never written through.
    remove_if_exists(&job.tmp);
    remove_if_exists(&job.unpacked);
    let (file, len) = open(path)?;
    if count == Count::FileBytes {
        job.set_total(Some(len));
    }
    let head = read_head(&file, path, len)?;
    match classify(&head) {
        Kind::Compressed(c) => {
            let counter = (count == Count::FileBytes).then(|| job.done_counter());
            let reader = CountingReader {
                inner: BufReader::with_capacity(BUF, file),
                counter,
            };
            decompress(job, Box::new(reader), c, path)
        }
        _ => {
            let region = Region {
                path,
                offset: 0,
                len,
                whole: true,
            };
            process_region(job, &file, region, count)
        }
    }
}

struct CountingReader<'a, R> {
    inner: R,
    counter: Option<&'a std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = self.counter {
            c.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }
}

fn decoder<'a>(c: Compression, input: Box<dyn Read + 'a>) -> Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input).map_err(|e| {
            ImportError::new(
                ImportErrorKind::Corrupt,
                format!("could not create zst reader: {e}"),
            )
            .retryable(false)
        })?),
    })
}

fn corrupt_stream(layers: &[String]) -> impl Fn(std::io::Error) -> ImportError + '_ {
    move |e| {
        ImportError::new(
            ImportErrorKind::Corrupt,
            format!(
                "Unable to process data: could not read {} stream: {e}",
                layers.last().map(String::as_str).unwrap_or("compressed")
            ),
        )
        .retryable(false)
    }
}

/// Peels compression layers off `input`, then writes a raw image straight to `job.tmp` and
/// anything else to `job.unpacked` for [`process_region`].
fn decompress(
    job: &Job,
    input: Box<dyn Read + '_>,
    first: Compression,
    path: &Path,
) -> Result<Converted> {
    let mut layers = vec![first.name().to_owned()];
    let mut reader = decoder(first, input)?;
    // Each layer's output is classified from its first bytes, which are then put back in
    // front of the stream.
    let kind = loop {
        let mut head = vec![0u8; HEAD];
        let n = read_full(&mut reader, &mut head).map_err(corrupt_stream(&layers))?;
        head.truncate(n);
        let kind = classify(&head);
        let chained: Chain<Cursor<Vec<u8>>, Box<dyn Read + '_>> = Cursor::new(head).chain(reader);
        match kind {
            Kind::Compressed(c) if layers.len() < MAX_LAYERS => {
                layers.push(c.name().to_owned());
                reader = decoder(c, Box::new(chained))?;
            }
            _ => {
                reader = Box::new(chained);
                break kind;
            }
        }
    };
    match kind {
        Kind::Raw { iso } => {
            let virtual_size = write_raw_stream(job, &mut reader, &layers)?;
            Ok(Converted {
                format: if iso { "iso" } else { "raw" }.to_owned(),
                virtual_size,
                unpacked: layers,
            })
        }
        Kind::Compressed(_) => Err(ImportError::new(
            ImportErrorKind::Refused,
            format!(
                "Unable to process data: more than {MAX_LAYERS} compression layers in {}",
                path.display()
            ),
        )
        .retryable(false)),
        Kind::Tar | Kind::Image(_) => {
            let out = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&job.unpacked)
                .map_err(|e| ImportError::io("create", &job.unpacked, e))?;
            let mut writer = SparseWriter::new(out, &job.unpacked, 0, job.scratch_limit(), |l| {
                ImportError::data_too_large("decompressed source data", l)
            })?;
            copy_stream(
                &mut reader,
                &mut writer,
                u64::MAX,
                None,
                &job.cancel,
                &corrupt_stream(&layers),
            )?;
            let (file, len) = writer.finish()?;
            drop(reader);
            let region = Region {
                path: &job.unpacked,
                offset: 0,
                len,
                whole: true,
            };
            let mut converted = process_region(job, &file, region, Count::Nothing)?;
            layers.append(&mut converted.unpacked);
            converted.unpacked = layers;
            Ok(converted)
        }
    }
}

/// A decompressed raw image into `job.tmp`, sparse, bounded by the capacity.
fn write_raw_stream(job: &Job, reader: &mut dyn Read, layers: &[String]) -> Result<u64> {
    let out = File::create(&job.tmp).map_err(|e| ImportError::io("create", &job.tmp, e))?;
    let mut writer = SparseWriter::new(out, &job.tmp, 0, job.capacity, |l| {
        ImportError::data_too_large("raw image data", l)
    })?;
    copy_stream(
        reader,
        &mut writer,
        u64::MAX,
        None,
        &job.cancel,
        &corrupt_stream(layers),
    )?;
    let (_, len) = writer.finish()?;
    Ok(len)
}

/// An image lying in `region` of `file`: an OVA is opened to its VMDK, then the image is
/// inspected, size-checked and copied (raw) or converted.
fn process_region(job: &Job, file: &File, region: Region<'_>, count: Count) -> Result<Converted> {
    let mut head = vec![0u8; region.len.min(HEAD as u64) as usize];
    file.read_exact_at(&mut head, region.offset)
        .map_err(|e| ImportError::io("read", region.path, e))?;
    let (region, unpacked) = if classify(&head) == Kind::Tar {
        (ova_member(job, file, &region)?, vec!["ova".to_owned()])
    } else {
        (region, Vec::new())
    };
    let mut window = Window {
        inner: file,
        offset: region.offset,
        len: region.len,
        pos: 0,
    };
    let info =
        inspect_image(&mut window).map_err(|e| ImportError::io("inspect", region.path, e))?;
    refuse_findings(job, &info)?;
    let converted = match info.format {
        ImageFormat::Raw => {
            let mut head = vec![0u8; region.len.min(HEAD as u64) as usize];
            file.read_exact_at(&mut head, region.offset)
                .map_err(|e| ImportError::io("read", region.path, e))?;
            let iso = matches!(classify(&head), Kind::Raw { iso: true });
            copy_raw_region(job, file, &region, count)?;
            Converted {
                format: if iso { "iso" } else { "raw" }.to_owned(),
                virtual_size: region.len,
                unpacked,
            }
        }
        format if convertible(format) => {
            qemu::check(&region, format, &job.source_name, &job.cancel).map_err(converting)?;
            let input = Input::Local(region.clone());
            let progress = (count == Count::FileBytes).then(|| (job.done_counter(), region.len));
            let virtual_size = convert_fitting(job, &input, format, progress)?;
            Converted {
                format: format.as_str().to_owned(),
                virtual_size,
                unpacked,
            }
        }
        // CDI's `isSupportedFormat` allows raw, qcow2, vmdk, vdi, vpc and vhdx only.
        other => return Err(invalid_format(job, other)),
    };
    Ok(converted)
}

/// The formats converted with qemu-img (CDI's `isSupportedFormat`, less raw).
/// A format CDI does not import, in its words.
fn invalid_format(job: &Job, format: ImageFormat) -> ImportError {
    ImportError::new(
        ImportErrorKind::Refused,
        format!("Invalid format {format} for image {}", job.source_name),
    )
    .retryable(false)
}

/// CDI's phase name on a failed conversion.
fn converting(e: ImportError) -> ImportError {
    e.context("Unable to convert source data to target format")
}

/// Converts `input` into `job.tmp` once its virtual size is known to fit the volume; returns
/// that size.
fn convert_fitting(
    job: &Job,
    input: &Input<'_>,
    format: ImageFormat,
    progress: Option<(&AtomicU64, u64)>,
) -> Result<u64> {
    let virtual_size =
        qemu::virtual_size(input, format, &job.source_name, &job.cancel).map_err(converting)?;
    if virtual_size > job.capacity {
        return Err(ImportError::too_large(virtual_size, job.capacity));
    }
    qemu::convert(
        input,
        format,
        &job.tmp,
        &job.source_name,
        &job.cancel,
        progress,
    )
    .map_err(converting)?;
    Ok(virtual_size)
}

fn convertible(format: ImageFormat) -> bool {
    matches!(
        format,
        ImageFormat::Qcow2
            | ImageFormat::Vmdk
            | ImageFormat::Vpc
            | ImageFormat::Vhdx
            | ImageFormat::Vdi
    )
}

/// Sources converted while they arrive: images qemu-img converts. (Raw needs no conversion;
/// archives and compressed sources are unpacked first.)
pub(crate) fn overlappable(kind: Kind) -> bool {
    matches!(kind, Kind::Image(format) if convertible(format))
}

/// Inspects, size-checks and converts the image arriving at `job.source` (final length
/// `size`) while it downloads; `qemu-img check` needs the whole file and is left to
/// [`check_downloaded`]. On failure nothing is left at `job.tmp`.
pub(crate) fn convert_growing(
    job: &Job,
    size: u64,
    growing: &Arc<Growing>,
) -> Result<(Converted, ImageFormat)> {
    let result = convert_growing_inner(job, size, growing);
    if result.is_err() {
        remove_if_exists(&job.tmp);
    }
    result
}

fn convert_growing_inner(
    job: &Job,
    size: u64,
    growing: &Arc<Growing>,
) -> Result<(Converted, ImageFormat)> {
    remove_if_exists(&job.tmp);
    let file = File::open(&job.source).map_err(|e| ImportError::open(&job.source, e))?;
    let mut reader = WaitingReader {
        file: &file,
        size,
        growing,
        cancel: &job.cancel,
        pos: 0,
    };
    let info =
        inspect_image(&mut reader).map_err(|e| ImportError::io("inspect", &job.source, e))?;
    refuse_findings(job, &info)?;
    let format = info.format;
    if !convertible(format) {
        return Err(invalid_format(job, format));
    }
    let input = Input::Growing {
        path: &job.source,
        size,
        growing,
    };
    let virtual_size = convert_fitting(job, &input, format, None)?;
    Ok((
        Converted {
            format: format.as_str().to_owned(),
            virtual_size,
            unpacked: Vec::new(),
        },
        format,
    ))
}

/// `qemu-img check` of the downloaded `job.source`, after [`convert_growing`]: a damaged
/// image's conversion is thrown away.
pub(crate) fn check_downloaded(job: &Job, format: ImageFormat) -> Result<()> {
    let result = (|| {
        let (_, len) = open(&job.source)?;
        let region = Region {
            path: &job.source,
            offset: 0,
            len,
            whole: true,
        };
        qemu::check(&region, format, &job.source_name, &job.cancel).map_err(converting)
    })();
    if result.is_err() {
        remove_if_exists(&job.tmp);
    }
    result
}

/// Refuses images naming other files (backing or data files, extents), encrypted ones and
/// ones using features we do not know; a malformed header is a corrupt image.
fn refuse_findings(job: &Job, info: &ImageInfo) -> Result<()> {
    if info.findings.is_empty() {
        return Ok(());
    }
    let corrupt_only = info
        .findings
        .iter()
        .all(|f| matches!(f, Finding::Malformed { .. }));
    let what: Vec<String> = info
        .findings
        .iter()
        .take(4)
        .map(|f| format!("the {} image {f}", info.format))
        .collect();
    let kind = if corrupt_only {
        ImportErrorKind::Corrupt
    } else {
        ImportErrorKind::Refused
    };
    Err(ImportError::new(
        kind,
        format!(
            "Image {} is invalid because {}",
            job.source_name,
            what.join("; ")
        ),
    )
    .retryable(false))
}

/// The first regular `*.vmdk` member of the tar in `region`, as a region of the same file.
/// Member names are only compared, never used as paths.
fn ova_member<'a>(job: &Job, file: &File, region: &Region<'a>) -> Result<Region<'a>> {
    let corrupt = |e: std::io::Error| {
        ImportError::new(
            ImportErrorKind::Corrupt,
            format!(
                "Unable to process data: reading OVA archive {}: {e}",
                job.source_name
            ),
        )
        .retryable(false)
    };
    let window = Window {
        inner: file,
        offset: region.offset,
        len: region.len,
        pos: 0,
    };
    let mut archive = tar::Archive::new(window);
    for (i, entry) in archive.entries_with_seek().map_err(corrupt)?.enumerate() {
        if i >= MAX_TAR_MEMBERS || job.cancelled() {
            break;
        }
        let entry = entry.map_err(corrupt)?;
        let header = entry.header();
        let regular = matches!(
            header.entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        );
        let name = entry.path_bytes();
        let is_vmdk = name.len() >= 5 && name[name.len() - 5..].eq_ignore_ascii_case(b".vmdk");
        if !(regular && is_vmdk) {
            continue;
        }
        let offset = entry.raw_file_position();
        let len = entry.size();
        if offset.checked_add(len).is_none_or(|end| end > region.len) {
            return Err(corrupt(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the VMDK member extends past the end of the archive",
            )));
        }
        return Ok(Region {
            path: region.path,
            offset: region.offset + offset,
            len,
            whole: false,
        });
    }
    Err(ImportError::new(
        ImportErrorKind::Refused,
        format!(
            "Unable to process data: no .vmdk disk found in OVA archive {}",
            job.source_name
        ),
    )
    .retryable(false))
}

/// A raw image in `region` of `file` into `job.tmp`: only its data segments are read, and
/// zero blocks within them are skipped too.
fn copy_raw_region(job: &Job, file: &File, region: &Region<'_>, count: Count) -> Result<()> {
    if region.len > job.capacity {
        return Err(ImportError::too_large(region.len, job.capacity));
    }
    let out = File::create(&job.tmp).map_err(|e| ImportError::io("create", &job.tmp, e))?;
    let mut writer = SparseWriter::new(out, &job.tmp, 0, job.capacity, |l| {
        ImportError::data_too_large("raw image data", l)
    })?;
    let end = region.offset + region.len;
    let read_error = |e| ImportError::io("read", region.path, e);
    let counter = (count == Count::FileBytes).then(|| job.done_counter());
    let mut at = region.offset;
    for (start, stop) in data_segments(file, region.offset, end) {
        if start > at {
            writer.write_hole(start - at)?;
            if let Some(c) = counter {
                c.fetch_add(start - at, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let mut reader = Window {
            inner: file,
            offset: start,
            len: stop - start,
            pos: 0,
        };
        copy_stream(
            &mut reader,
            &mut writer,
            stop - start,
            counter,
            &job.cancel,
            &read_error,
        )?;
        at = stop;
    }
    if end > at {
        writer.write_hole(end - at)?;
    }
    writer.finish()?;
    Ok(())
}
