//! Writing disk data sparsely: all-zero blocks become holes, so a 10 GiB image with 1 GiB of
//! data takes 1 GiB on disk, whether it came over HTTP, out of a decompressor or from a file.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{ImportError, Result};

/// Holes are made at this granularity (the page and usual filesystem block size).
pub(crate) const BLOCK: usize = 4096;
/// Data is gathered into writes of this size.
pub(crate) const BUF: usize = 1 << 20;

/// True when every byte of `data` is zero. The inner fold has no early exit, so it
/// vectorises; the outer loop leaves at the first non-zero 64-byte piece.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    let whole = chunks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0);
    whole && chunks.remainder().iter().all(|&b| b == 0)
}

/// A file written front to back, with all-zero blocks left as holes. The file's length
/// always covers what was written (extended with `set_len` past trailing zeros), so its
/// length says how far a killed import got.
pub(crate) struct SparseWriter {
    file: File,
    path: PathBuf,
    /// Offset of the first byte of `buf`.
    pos: u64,
    /// The file's length as we last made it.
    len: u64,
    buf: Vec<u8>,
    /// Bytes beyond this are refused with `over_limit`.
    limit: u64,
    over_limit: fn(u64) -> ImportError,
    /// Bytes that went to disk as data (not holes).
    pub(crate) data_bytes: u64,
}

impl SparseWriter {
    /// Continues `file` at `pos`: whatever lies beyond is cut off.
    pub(crate) fn new(
        file: File,
        path: &Path,
        pos: u64,
        limit: u64,
        over_limit: fn(u64) -> ImportError,
    ) -> Result<SparseWriter> {
        file.set_len(pos)
            .map_err(|e| ImportError::io("truncate", path, e))?;
        Ok(SparseWriter {
            file,
            path: path.to_path_buf(),
            pos,
            len: pos,
            buf: Vec::with_capacity(BUF),
            limit,
            over_limit,
            data_bytes: 0,
        })
    }

    /// Bytes written out: the file holds everything before this offset.
    pub(crate) fn flushed(&self) -> u64 {
        self.pos
    }

    /// Bytes accepted so far (including any not yet written out).
    pub(crate) fn position(&self) -> u64 {
        self.pos + self.buf.len() as u64
    }

    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<()> {
        let total = self.position().saturating_add(data.len() as u64);
        if total > self.limit {
            return Err((self.over_limit)(self.limit));
        }
        while !data.is_empty() {
            let room = BUF - self.buf.len();
            let take = room.min(data.len());
            // Large aligned pieces skip the copy into `buf`.
            if self.buf.is_empty() && take == BUF {
                self.write_out_slice(&data[..BUF])?;
                self.pos += BUF as u64;
            } else {
                self.buf.extend_from_slice(&data[..take]);
                if self.buf.len() == BUF {
                    self.flush()?;
                }
            }
            data = &data[take..];
        }
        Ok(())
    }

    /// Accepts `len` zero bytes without looking at them (a hole of the source).
    pub(crate) fn write_hole(&mut self, len: u64) -> Result<()> {
        self.flush()?;
        let end = self.pos.saturating_add(len);
        if end > self.limit {
            return Err((self.over_limit)(self.limit));
        }
        self.pos = end;
        if end > self.len {
            self.file
                .set_len(end)
                .map_err(|e| ImportError::io("write", &self.path, e))?;
            self.len = end;
        }
        Ok(())
    }

    /// Writes out what is buffered (the file then holds everything accepted).
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_out_slice(&buf);
        self.pos += buf.len() as u64;
        self.buf = buf;
        self.buf.clear();
        result
    }

    /// Writes `data` at `self.pos` (which the caller advances), runs of non-zero blocks as
    /// single writes, then extends the file over trailing zeros.
    fn write_out_slice(&mut self, data: &[u8]) -> Result<()> {
        let mut run_start: Option<usize> = None;
        let mut at = 0;
        while at < data.len() {
            let end = (at + BLOCK).min(data.len());
            let zero = is_zero(&data[at..end]);
            match (zero, run_start) {
                (false, None) => run_start = Some(at),
                (true, Some(start)) => {
                    self.write_run(start, &data[start..at])?;
                    run_start = None;
                }
                _ => {}
            }
            at = end;
        }
        if let Some(start) = run_start {
            self.write_run(start, &data[start..])?;
        }
        let end = self.pos + data.len() as u64;
        if end > self.len {
            self.file
                .set_len(end)
                .map_err(|e| ImportError::io("write", &self.path, e))?;
            self.len = end;
        }
        Ok(())
    }

    fn write_run(&mut self, start: usize, run: &[u8]) -> Result<()> {
        let offset = self.pos + start as u64;
        self.file
            .write_all_at(run, offset)
            .map_err(|e| ImportError::io("write", &self.path, e))?;
        self.data_bytes += run.len() as u64;
        self.len = self.len.max(offset + run.len() as u64);
        Ok(())
    }

    /// Flushes and hands back the file, its length being everything accepted.
    pub(crate) fn finish(mut self) -> Result<(File, u64)> {
        self.flush()?;
        Ok((self.file, self.pos))
    }
}

/// Copies `len` bytes of `reader` into `writer`, counting into `counter` and giving up when
/// `cancel` is set. Returns the bytes copied (less than `len` at end of input).
pub(crate) fn copy_stream(
    reader: &mut dyn Read,
    writer: &mut SparseWriter,
    len: u64,
    counter: Option<&AtomicU64>,
    cancel: &AtomicBool,
    read_error: &dyn Fn(std::io::Error) -> ImportError,
) -> Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut copied = 0u64;
    while copied < len {
        if cancel.load(Ordering::Relaxed) {
            return Err(ImportError::cancelled());
        }
        let want = (len - copied).min(BUF as u64) as usize;
        let n = read_full(reader, &mut buf[..want]).map_err(read_error)?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n])?;
        copied += n as u64;
        if let Some(counter) = counter {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(copied)
}

/// Reads until `buf` is full or the input ends; the count read.
pub(crate) fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The data segments of `file` within `[start, end)`, by SEEK_DATA/SEEK_HOLE; the whole range
/// when the filesystem cannot tell.
pub(crate) fn data_segments(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut segments = Vec::new();
    let mut at = start;
    while at < end {
        // SAFETY: lseek on a file descriptor we own; it only moves the file position.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                // No data after `at`: the rest is a hole.
                break;
            }
            // SEEK_DATA unsupported: treat everything left as data.
            segments.push((at, end));
            break;
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        segments.push((data, hole));
        at = hole;
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        let mut b = vec![0u8; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        b[4096] = 0;
        b[3] = 9;
        assert!(!is_zero(&b));
    }

    #[test]
    fn writes_holes_and_keeps_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut w =
            SparseWriter::new(file, &path, 0, u64::MAX, |_| ImportError::cancelled()).unwrap();
        let mut data = vec![0u8; 8 << 20];
        data[5 << 20] = 7;
        data[10] = 1;
        // Odd-sized pieces, as a network delivers them.
        for piece in data.chunks(12345) {
            w.write(piece).unwrap();
        }
        w.write(&[0u8; 100]).unwrap();
        let (_, len) = w.finish().unwrap();
        assert_eq!(len, (8 << 20) + 100);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), len);
        assert!(meta.blocks() * 512 <= 4 * 4096, "{} blocks", meta.blocks());
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[..8 << 20], &data[..]);
        assert!(is_zero(&back[8 << 20..]));

        let segs = data_segments(&File::open(&path).unwrap(), 0, len);
        assert!(!segs.is_empty() && segs.len() <= 2, "{segs:?}");
    }

    #[test]
    fn limit_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut w = SparseWriter::new(file, &path, 0, 10, |limit| {
            ImportError::data_too_large("x", limit)
        })
        .unwrap();
        w.write(&[1; 10]).unwrap();
        let err = w.write(&[1]).unwrap_err();
        assert_eq!(err.kind, crate::ImportErrorKind::TooLarge);
    }
}
