//! What a source is, from its first bytes: a compression layer, a tar archive (OVA), or a
//! disk image whose format diskprep's inspector names. Never from a file name.

use std::io::{Cursor, Read, Seek, SeekFrom};

use kubevirt_diskprep::inspect::{inspect_image, ImageFormat};

/// How much of a source is looked at before deciding what it is: covers every magic number
/// we test (the ISO 9660 descriptor at 32 KiB is the farthest).
pub(crate) const HEAD: usize = 64 << 10;

/// A compression layer, found by its magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Xz => "xz",
            Compression::Zstd => "zst",
        }
    }

    pub(crate) fn of(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// What the first bytes of a source say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Compressed(Compression),
    /// A POSIX/GNU tar archive: an OVA.
    Tar,
    /// Raw data: the disk itself. `iso` when it carries an ISO 9660 volume descriptor.
    Raw {
        iso: bool,
    },
    /// A disk image format that needs conversion (or refusal).
    Image(ImageFormat),
}

/// Classifies a source from `head`, its first bytes (all of it when shorter than [`HEAD`]).
pub(crate) fn classify(head: &[u8]) -> Kind {
    if let Some(c) = Compression::of(head) {
        return Kind::Compressed(c);
    }
    if head.get(257..262) == Some(b"ustar") {
        return Kind::Tar;
    }
    match inspect_head(head) {
        ImageFormat::Raw => Kind::Raw {
            iso: head.get(0x8001..0x8006) == Some(b"CD001"),
        },
        format => Kind::Image(format),
    }
}

/// The inspector's format for a source of which only `head` is known. The inspector may look
/// at the end of the file (DMG's trailer); the head is presented as the start of a much
/// larger file, so those reads find nothing rather than misreading the head's own end.
fn inspect_head(head: &[u8]) -> ImageFormat {
    let mut reader = HeadReader {
        inner: Cursor::new(head),
        virtual_len: if head.len() < HEAD {
            head.len() as u64
        } else {
            u64::MAX / 4
        },
    };
    inspect_image(&mut reader)
        .map(|info| info.format)
        .unwrap_or(ImageFormat::Raw)
}

struct HeadReader<'a> {
    inner: Cursor<&'a [u8]>,
    virtual_len: u64,
}

impl Read for HeadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Seek for HeadReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match pos {
            SeekFrom::End(d) => {
                let at = self.virtual_len.saturating_add_signed(d);
                self.inner.seek(SeekFrom::Start(at))
            }
            other => self.inner.seek(other),
        }
    }
}

/// A window `[offset, offset + len)` of a file, seen as a whole file: an OVA's member.
pub(crate) struct Window<R> {
    pub(crate) inner: R,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) pos: u64,
}

impl<R: Read + Seek> Read for Window<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let want = (self.len - self.pos).min(buf.len() as u64) as usize;
        self.inner.seek(SeekFrom::Start(self.offset + self.pos))?;
        let n = self.inner.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for Window<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the window",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_magic() {
        assert_eq!(
            classify(&[0x1f, 0x8b, 8, 0]),
            Kind::Compressed(Compression::Gzip)
        );
        assert_eq!(classify(b"\xfd7zXZ\0\0"), Kind::Compressed(Compression::Xz));
        assert_eq!(
            classify(&[0x28, 0xb5, 0x2f, 0xfd, 1]),
            Kind::Compressed(Compression::Zstd)
        );
        let mut tar = vec![0u8; 1024];
        tar[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(classify(&tar), Kind::Tar);
        let mut iso = vec![0u8; HEAD];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(classify(&iso), Kind::Raw { iso: true });
        assert_eq!(classify(b""), Kind::Raw { iso: false });
        assert_eq!(
            classify(b"QFI\xfb\0\0\0\x03"),
            Kind::Image(ImageFormat::Qcow2)
        );
        // A head that happens to end in a DMG trailer is not taken for one.
        let mut head = vec![0u8; HEAD];
        head[HEAD - 512..HEAD - 508].copy_from_slice(b"koly");
        assert_eq!(classify(&head), Kind::Raw { iso: false });
    }

    #[test]
    fn window_reads_only_its_range() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut w = Window {
            inner: Cursor::new(&data[..]),
            offset: 10,
            len: 20,
            pos: 0,
        };
        let mut out = Vec::new();
        w.read_to_end(&mut out).unwrap();
        assert_eq!(out, (10..30u8).collect::<Vec<_>>());
        assert_eq!(w.seek(SeekFrom::End(-5)).unwrap(), 15);
        let mut b = [0u8; 10];
        assert_eq!(w.read(&mut b).unwrap(), 5);
        assert_eq!(b[0], 25);
        assert!(w.seek(SeekFrom::Current(-100)).is_err());
        w.seek(SeekFrom::Start(1000)).unwrap();
        assert_eq!(w.read(&mut b).unwrap(), 0);
    }
}
