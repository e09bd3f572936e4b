//! A read-only NBD export of a file that is still being downloaded, so `qemu-img convert`
//! can run while the bytes arrive (as CDI pipes its downloads through nbdkit). A read waits
//! until the download has passed its end; if the download fails, it fails with EIO.
//!
//! Each qemu-img gets its own connection: one end of a socketpair, inherited as a numbered
//! descriptor (QEMU's `"server": {"type": "fd"}`), so there is no socket file and no other
//! process can connect. Only what qemu-img asks for is implemented: fixed newstyle
//! handshake, `NBD_OPT_GO`/`INFO`/`EXPORT_NAME`, simple replies, `READ` and `DISC`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How far a file being written is usable.
#[derive(Default)]
pub(crate) struct Growing {
    state: Mutex<GrowState>,
    changed: Condvar,
}

#[derive(Default, Clone, Copy)]
struct GrowState {
    available: u64,
    finished: bool,
    failed: bool,
}

impl Growing {
    pub(crate) fn new(available: u64) -> Arc<Growing> {
        let g = Growing::default();
        if let Ok(mut s) = g.state.lock() {
            s.available = available;
        }
        Arc::new(g)
    }

    fn update(&self, f: impl FnOnce(&mut GrowState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.changed.notify_all();
    }

    /// The file holds every byte before `to`.
    pub(crate) fn advance(&self, to: u64) {
        let moved = self.state.lock().map(|s| to > s.available).unwrap_or(false);
        if moved {
            self.update(|s| s.available = s.available.max(to));
        }
    }

    /// The file is complete.
    pub(crate) fn finish(&self) {
        self.update(|s| s.finished = true);
    }

    /// The file will not grow any more: readers waiting for more fail.
    pub(crate) fn fail(&self) {
        self.update(|s| s.failed = true);
    }

    /// The file will never reach `size`: the download failed or ended short.
    pub(crate) fn starved(&self, size: u64) -> bool {
        self.state
            .lock()
            .map(|s| s.failed || (s.finished && s.available < size))
            .unwrap_or(true)
    }

    /// Waits until the bytes before `end` are there. False when they never will be (the
    /// download failed or ended before `end`) or `cancel` was set.
    pub(crate) fn wait_for(&self, end: u64, cancel: &AtomicBool) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        loop {
            if s.available >= end {
                return true;
            }
            if s.failed || s.finished || cancel.load(Ordering::Relaxed) {
                return false;
            }
            s = match self.changed.wait_timeout(s, Duration::from_millis(100)) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
    }
}

/// A `Read + Seek` view of a growing file of known final `size`, for the inspector: reads
/// wait for their bytes.
pub(crate) struct WaitingReader<'a> {
    pub(crate) file: &'a File,
    pub(crate) size: u64,
    pub(crate) growing: &'a Growing,
    pub(crate) cancel: &'a AtomicBool,
    pub(crate) pos: u64,
}

impl Read for WaitingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size {
            return Ok(0);
        }
        let n = (self.size - self.pos).min(buf.len() as u64) as usize;
        if !self.growing.wait_for(self.pos + n as u64, self.cancel) {
            return Err(std::io::Error::other("the download stopped"));
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for WaitingReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const FLAG_C_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;

const INFO_EXPORT: u16 = 0;
/// NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY.
const TRANSMISSION_FLAGS: u16 = 1 | 2;

const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;

/// QEMU never asks for more than 32 MiB at once; anything larger is refused.
const MAX_READ: u32 = 32 << 20;
/// Option payloads larger than this are not read.
const MAX_OPTION: u32 = 64 << 10;

/// Serves `path` (final size `size`) on a new socketpair; returns qemu-img's end and the
/// thread serving ours. The thread ends when qemu-img disconnects or goes away.
pub(crate) fn serve(
    path: &Path,
    size: u64,
    growing: Arc<Growing>,
    cancel: Arc<AtomicBool>,
) -> std::io::Result<(UnixStream, std::thread::JoinHandle<()>)> {
    let file = File::open(path)?;
    // std creates both ends close-on-exec: only the qemu-img it is handed to inherits one.
    let (ours, theirs) = UnixStream::pair()?;
    let handle = std::thread::Builder::new()
        .name("importer-nbd".into())
        .spawn(move || {
            if let Err(e) = session(ours, &file, size, &growing, &cancel) {
                tracing::debug!(error = %e, "NBD session ended");
            }
        })?;
    Ok((theirs, handle))
}

fn read_u32(s: &mut UnixStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn option_reply(s: &mut UnixStream, option: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    s.write_all(&out)
}

fn session(
    mut s: UnixStream,
    file: &File,
    size: u64,
    growing: &Growing,
    cancel: &AtomicBool,
) -> std::io::Result<()> {
    // QEMU's NBD client hangs on an export whose size is not a whole number of sectors;
    // the tail reads as zeros, as past the end of a file.
    let export = size.next_multiple_of(512);
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let client_flags = read_u32(&mut s)?;

    // Option haggling, until GO or EXPORT_NAME.
    loop {
        let mut head = [0u8; 16];
        s.read_exact(&mut head)?;
        let magic = u64::from_be_bytes(head[..8].try_into().unwrap_or_default());
        let option = u32::from_be_bytes(head[8..12].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(head[12..16].try_into().unwrap_or_default());
        if magic != IHAVEOPT || len > MAX_OPTION {
            return Err(std::io::Error::other("bad NBD option header"));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                let mut out = Vec::with_capacity(10 + 124);
                out.extend_from_slice(&export.to_be_bytes());
                out.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if client_flags & FLAG_C_NO_ZEROES == 0 {
                    out.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&out)?;
                break;
            }
            OPT_INFO | OPT_GO => {
                // Name length, name, number of info requests, the requests.
                let name_len = data
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()) as usize);
                if name_len.is_none_or(|n| data.len() < 4 + n + 2) {
                    option_reply(&mut s, option, REP_ERR_INVALID, &[])?;
                    continue;
                }
                let mut info = Vec::with_capacity(12);
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&export.to_be_bytes());
                info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                option_reply(&mut s, option, REP_INFO, &info)?;
                option_reply(&mut s, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    break;
                }
            }
            OPT_ABORT => {
                let _ = option_reply(&mut s, option, REP_ACK, &[]);
                return Ok(());
            }
            // Structured replies, extended headers, meta contexts...: not offered.
            _ => option_reply(&mut s, option, REP_ERR_UNSUP, &[])?,
        }
    }

    // Transmission: compact requests, simple replies, served in order.
    let mut buf = Vec::new();
    loop {
        let mut req = [0u8; 28];
        match s.read_exact(&mut req) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let magic = u32::from_be_bytes(req[0..4].try_into().unwrap_or_default());
        let kind = u16::from_be_bytes(req[6..8].try_into().unwrap_or_default());
        let cookie = &req[8..16];
        let offset = u64::from_be_bytes(req[16..24].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(req[24..28].try_into().unwrap_or_default());
        if magic != REQUEST_MAGIC {
            return Err(std::io::Error::other("bad NBD request magic"));
        }
        let reply = |s: &mut UnixStream, error: u32, data: &[u8]| {
            let mut out = Vec::with_capacity(16);
            out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&error.to_be_bytes());
            out.extend_from_slice(cookie);
            s.write_all(&out)?;
            s.write_all(data)
        };
        match kind {
            CMD_DISC => return Ok(()),
            CMD_READ => {
                let end = offset.checked_add(u64::from(len));
                let Some(end) = end.filter(|&e| e <= export && len <= MAX_READ) else {
                    reply(&mut s, EINVAL, &[])?;
                    continue;
                };
                let data_end = end.min(size);
                if !growing.wait_for(data_end, cancel) {
                    reply(&mut s, EIO, &[])?;
                    continue;
                }
                buf.clear();
                buf.resize(len as usize, 0);
                let in_file = data_end.saturating_sub(offset) as usize;
                match file.read_exact_at(&mut buf[..in_file], offset) {
                    Ok(()) => reply(&mut s, 0, &buf)?,
                    Err(_) => reply(&mut s, EIO, &[])?,
                }
            }
            CMD_FLUSH => reply(&mut s, 0, &[])?,
            // Read-only export: writes, trims and zeroing are not permitted.
            1 | 4 | 6 => reply(&mut s, EPERM, &[])?,
            _ => reply(&mut s, EINVAL, &[])?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_follows_the_download() {
        let g = Growing::new(10);
        let cancel = AtomicBool::new(false);
        assert!(g.wait_for(10, &cancel));
        let g2 = g.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            g2.advance(100);
        });
        assert!(g.wait_for(60, &AtomicBool::new(false)));
        t.join().unwrap();
        g.finish();
        assert!(!g.wait_for(101, &cancel));
        let g = Growing::new(0);
        g.fail();
        assert!(!g.wait_for(1, &cancel));
        let g = Growing::new(0);
        cancel.store(true, Ordering::Relaxed);
        assert!(!g.wait_for(1, &cancel));
    }
}
