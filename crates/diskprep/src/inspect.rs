//! Disk image inspection by content, for images we did not write ourselves.
//!
//! An image's header can make QEMU open other host files: a qcow2 backing file or external
//! data file, VMDK extents and parent hints, a QED backing file. When QEMU probes the format
//! (or is told one chosen from the bytes), whoever wrote the bytes (a registry, a guest
//! writing to its own raw disk) decides which host files QEMU (running as root) opens.
//! [`inspect_image`] reports the format and everything that names another file; the
//! policies in [`ImagePolicy`] decide what is accepted.
//!
//! The parsers follow QEMU's own (block/qcow2.c, qed.c, vmdk.c, qcow.c) where they decide
//! what is opened, and err on the side of reporting: a malformed header is a finding.
//! Reads are bounded (at most [`MAX_READ`] bytes at a time), every offset and length is
//! checked against the file size, and no input panics (see `fuzz/`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{DiskPrepError, Result};
use crate::format::DiskFormat;

/// The largest single read: a qcow2 cluster (QEMU's maximum cluster size is 2 MiB).
pub const MAX_READ: usize = 2 << 20;
/// QEMU reads at most this much of a VMDK descriptor (`vmdk_read_desc`).
const VMDK_DESC_MAX: usize = (1 << 20) - 1;
/// QEMU reads this much at 0x200 of a sparse VMDK looking for `parentFileNameHint`.
const VMDK_PARENT_DESC: usize = 20 * 512;
/// What QEMU's format probes look at.
const PROBE_LEN: usize = 2048;
/// Names longer than this are cut (QEMU refuses them anyway); the finding stays.
const MAX_NAME: usize = 4096;
/// Findings beyond this are dropped (a VMDK descriptor may list thousands of extents).
const MAX_FINDINGS: usize = 32;

/// A disk image format QEMU can open, as identified from the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// Nothing recognised: QEMU would probe it as raw.
    Raw,
    Qcow2,
    /// qcow version 1.
    Qcow,
    Qed,
    /// Sparse (`KDMV`, `COWD`) or a text descriptor.
    Vmdk,
    /// VHD (dynamic or differencing; a fixed VHD starts like raw data).
    Vpc,
    Vhdx,
    Vdi,
    Luks,
    /// Found by its `koly` trailer.
    Dmg,
    Parallels,
    Bochs,
    Cloop,
}

impl ImageFormat {
    /// QEMU's driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Qcow => "qcow",
            ImageFormat::Qed => "qed",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vpc => "vpc",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Vdi => "vdi",
            ImageFormat::Luks => "luks",
            ImageFormat::Dmg => "dmg",
            ImageFormat::Parallels => "parallels",
            ImageFormat::Bochs => "bochs",
            ImageFormat::Cloop => "cloop",
        }
    }

    /// The format we tell QEMU to use, for the two we accept from outside.
    pub fn disk_format(self) -> Option<DiskFormat> {
        match self {
            ImageFormat::Raw => Some(DiskFormat::Raw),
            ImageFormat::Qcow2 => Some(DiskFormat::Qcow2),
            _ => None,
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something in an image's header worth refusing it for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// qcow2/qcow/qed backing file, or a VMDK `parentFileNameHint`.
    BackingFile {
        name: String,
        /// From the qcow2 backing format extension.
        format: Option<String>,
    },
    /// qcow2 external data file: the name from the header extension, or `None` when only the
    /// incompatible feature bit is set (QEMU then wants a `data-file` option).
    DataFile { name: Option<String> },
    /// A VMDK descriptor extent line.
    Extent { name: String },
    /// qcow2 incompatible feature bits QEMU may know and we do not.
    UnknownIncompatibleFeatures { bits: u64 },
    /// qcow2/qcow encryption (`aes`, `luks` or an unknown method number).
    Encrypted { method: String },
    /// A header QEMU would refuse or read differently from us.
    Malformed { reason: String },
}

impl Finding {
    /// True when the finding names (or needs) another file.
    pub fn references_file(&self) -> bool {
        matches!(
            self,
            Finding::BackingFile { .. } | Finding::DataFile { .. } | Finding::Extent { .. }
        )
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::BackingFile { name, format } => {
                write!(f, "names a backing file {}", shown_name(name))?;
                if let Some(fmt) = format {
                    write!(f, " (format {})", shown_name(fmt))?;
                }
                Ok(())
            }
            Finding::DataFile { name: Some(name) } => {
                write!(f, "names an external data file {}", shown_name(name))
            }
            Finding::DataFile { name: None } => f.write_str(
                "needs an external data file (incompatible feature bit 2) without naming it",
            ),
            Finding::Extent { name } => write!(f, "names extent file {}", shown_name(name)),
            Finding::UnknownIncompatibleFeatures { bits } => {
                write!(f, "uses unknown incompatible features {bits:#x}")
            }
            Finding::Encrypted { method } => write!(f, "is encrypted ({method})"),
            Finding::Malformed { reason } => write!(f, "has a malformed header: {reason}"),
        }
    }
}

/// A name as it appears in messages: quoted, escaped, cut, and with what QEMU would make of
/// it when it is not a plain file name.
fn shown_name(name: &str) -> String {
    let cut: String = name.chars().take(200).collect();
    let mut s = format!("{cut:?}");
    if cut.len() < name.len() {
        s.push_str("...");
    }
    if name.starts_with("json:") {
        s.push_str(" (a QEMU json: pseudo-filename)");
    } else if let Some(protocol) = protocol_prefix(name) {
        s.push_str(&format!(" (QEMU protocol {protocol:?})"));
    }
    s
}

/// `nbd:`, `http:`, `file:` ...: what QEMU's `path_has_protocol` sees as a protocol prefix.
fn protocol_prefix(name: &str) -> Option<&str> {
    let (prefix, _) = name.split_once(':')?;
    let plain = !prefix.is_empty()
        && !prefix.contains('/')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
    plain.then_some(prefix)
}

/// What an image's content says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    /// In header order; at most 32.
    pub findings: Vec<Finding>,
}

/// Which images are acceptable, by where they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePolicy {
    /// Images from outside the node (containerDisk, imports): raw or a self-contained,
    /// unencrypted, well-formed qcow2 with only incompatible features we know.
    Imported,
    /// Files always opened as raw whatever they hold (hostDisk, written by the guest): any
    /// format may be there (a guest may put LUKS or a nested qcow2 on its disk), but a header
    /// naming other files is refused, so nothing that ever probes the bytes can follow it.
    OpenedAsRaw,
}

impl ImageInfo {
    fn new(format: ImageFormat) -> Self {
        ImageInfo {
            format,
            findings: Vec::new(),
        }
    }

    fn push(&mut self, finding: Finding) {
        if self.findings.len() < MAX_FINDINGS && !self.findings.contains(&finding) {
            self.findings.push(finding);
        }
    }

    /// Every finding that names another file.
    pub fn references(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.references_file())
    }

    /// Why `policy` refuses this image (a sentence fragment naming what was found), or
    /// `None` when it is accepted.
    pub fn refusal(&self, policy: ImagePolicy) -> Option<String> {
        let refused: Vec<&Finding> = match policy {
            ImagePolicy::Imported => self.findings.iter().collect(),
            ImagePolicy::OpenedAsRaw => self.references().collect(),
        };
        let mut parts: Vec<String> = refused
            .iter()
            .take(4)
            .map(|f| format!("{} image {f}", self.format))
            .collect();
        if refused.len() > 4 {
            parts.push(format!("and {} more findings", refused.len() - 4));
        }
        if policy == ImagePolicy::Imported && self.format.disk_format().is_none() {
            parts.push(format!(
                "{} images are not accepted (raw or qcow2 expected)",
                self.format
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The format QEMU is to open the image with, or [`DiskPrepError::UnsafeImage`] saying why
    /// `policy` refuses it. [`ImagePolicy::OpenedAsRaw`] always answers raw.
    pub fn accept(&self, volume: &str, path: &Path, policy: ImagePolicy) -> Result<DiskFormat> {
        if let Some(reason) = self.refusal(policy) {
            return Err(DiskPrepError::UnsafeImage {
                volume: volume.to_owned(),
                path: path.to_path_buf(),
                reason,
            });
        }
        Ok(match policy {
            ImagePolicy::OpenedAsRaw => DiskFormat::Raw,
            // Accepted images are raw or qcow2.
            ImagePolicy::Imported => self.format.disk_format().unwrap_or(DiskFormat::Raw),
        })
    }
}

/// Inspects the file at `path` (see [`inspect_image`]).
pub fn inspect_path(volume: &str, path: &Path) -> Result<ImageInfo> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| DiskPrepError::io(volume, "opening for inspection", path, e))?;
    inspect_image(&mut file).map_err(|e| DiskPrepError::io(volume, "inspecting", path, e))
}

/// Identifies the image format of `file` by content and reports what names other files.
/// Reads a few bounded ranges; the position of `file` afterwards is unspecified.
pub fn inspect_image<R: Read + Seek>(file: &mut R) -> std::io::Result<ImageInfo> {
    let size = file.seek(SeekFrom::End(0))?;
    let mut r = Reader { file, size };
    let head = r.read_at(0, PROBE_LEN)?;
    if head.starts_with(b"QFI\xfb") {
        return match be32(&head, 4) {
            Some(1) => qcow1(&mut r, &head),
            _ => qcow2(&mut r, &head),
        };
    }
    if head.starts_with(b"QED\0") {
        return qed(&mut r, &head);
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"COWD") {
        return vmdk_sparse(&mut r, &head);
    }
    let simple: &[(&[u8], ImageFormat)] = &[
        (b"conectix", ImageFormat::Vpc),
        (b"vhdxfile", ImageFormat::Vhdx),
        (b"LUKS\xba\xbe", ImageFormat::Luks),
        (b"WithoutFreeSpace", ImageFormat::Parallels),
        (b"WithouFreSpacExt", ImageFormat::Parallels),
        (b"Bochs Virtual HD Image", ImageFormat::Bochs),
        (b"#!/bin/sh\n#V2.0 Format\n", ImageFormat::Cloop),
    ];
    if let Some((_, format)) = simple.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Ok(ImageInfo::new(*format));
    }
    if vmdk_text_probe(&head) || head.starts_with(b"# Disk DescriptorFile") {
        let desc = r.read_at(0, VMDK_DESC_MAX)?;
        let mut info = ImageInfo::new(ImageFormat::Vmdk);
        vmdk_descriptor(&mut info, &desc, true);
        return Ok(info);
    }
    if le32(&head, 0x40) == Some(0xbeda_107f) {
        return Ok(ImageInfo::new(ImageFormat::Vdi));
    }
    if size >= 512 && r.read_at(size - 512, 4)? == b"koly" {
        return Ok(ImageInfo::new(ImageFormat::Dmg));
    }
    Ok(ImageInfo::new(ImageFormat::Raw))
}

struct Reader<'a, R> {
    file: &'a mut R,
    size: u64,
}

impl<R: Read + Seek> Reader<'_, R> {
    /// Up to `len` (at most [`MAX_READ`]) bytes at `offset`; fewer at the end of the file.
    fn read_at(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let len = (len.min(MAX_READ) as u64).min(self.size - offset);
        self.file.seek(SeekFrom::Start(offset))?;
        // len <= MAX_READ, so the allocation is bounded whatever the header says.
        let mut buf = Vec::with_capacity(len as usize);
        self.file.by_ref().take(len).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Like `read_at`, but the bytes past the end of the file read as zeros (as QEMU's file
    /// driver returns them).
    fn read_padded(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = self.read_at(offset, len)?;
        buf.resize(len.min(MAX_READ), 0);
        Ok(buf)
    }
}

fn bytes<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}
fn be32(buf: &[u8], at: usize) -> Option<u32> {
    bytes(buf, at).map(u32::from_be_bytes)
}
fn be64(buf: &[u8], at: usize) -> Option<u64> {
    bytes(buf, at).map(u64::from_be_bytes)
}
fn le32(buf: &[u8], at: usize) -> Option<u32> {
    bytes(buf, at).map(u32::from_le_bytes)
}
fn le64(buf: &[u8], at: usize) -> Option<u64> {
    bytes(buf, at).map(u64::from_le_bytes)
}

/// A file name as stored in a header: up to the first NUL, lossily decoded.
fn name_of(raw: &[u8]) -> String {
    let raw = &raw[..raw.len().min(MAX_NAME)];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn malformed(reason: impl Into<String>) -> Finding {
    Finding::Malformed {
        reason: reason.into(),
    }
}

const QCOW2_EXT_END: u32 = 0;
const QCOW2_EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// dirty, corrupt, external data file, compression type, extended L2 entries.
const QCOW2_INCOMPAT_KNOWN: u64 = 0x1f;

/// qcow2 (versions 2 and 3), after `qcow2_do_open` and `qcow2_read_extensions`.
fn qcow2<R: Read + Seek>(r: &mut Reader<'_, R>, head: &[u8]) -> std::io::Result<ImageInfo> {
    let mut info = ImageInfo::new(ImageFormat::Qcow2);
    let (Some(version), Some(backing_offset), Some(backing_len), Some(cluster_bits), Some(crypt)) = (
        be32(head, 4),
        be64(head, 8),
        be32(head, 16),
        be32(head, 20),
        be32(head, 32),
    ) else {
        info.push(malformed("the file is shorter than a qcow2 header"));
        return Ok(info);
    };
    if version != 2 && version != 3 {
        info.push(malformed(format!("unsupported qcow2 version {version}")));
    }
    let (incompatible, header_len) = if version >= 3 {
        match (be64(head, 72), be32(head, 100)) {
            (Some(incompatible), Some(header_len)) => (incompatible, u64::from(header_len)),
            _ => {
                info.push(malformed(
                    "the file is shorter than a qcow2 version 3 header",
                ));
                (0, 104)
            }
        }
    } else {
        (0, 72)
    };
    if !(9..=21).contains(&cluster_bits) {
        info.push(malformed(format!(
            "cluster_bits {cluster_bits} is out of range"
        )));
    }
    // Keep reading what we can: the bounds below hold for any cluster_bits.
    let cluster_size: u64 = 1 << cluster_bits.clamp(9, 21);
    if version >= 3 && header_len < 104 {
        info.push(malformed(format!(
            "header length {header_len} is below 104"
        )));
    }
    if header_len > cluster_size {
        info.push(malformed(format!(
            "header length {header_len} exceeds the cluster size"
        )));
    }
    match crypt {
        0 => {}
        1 => info.push(Finding::Encrypted {
            method: "aes".into(),
        }),
        2 => info.push(Finding::Encrypted {
            method: "luks".into(),
        }),
        n => info.push(Finding::Encrypted {
            method: format!("unknown method {n}"),
        }),
    }

    // Header extensions run from the end of the header to the backing file name (or the end
    // of the first cluster); QEMU reads bytes past the end of the file as zeros.
    let ext_end = if backing_offset != 0 {
        backing_offset.min(cluster_size)
    } else {
        cluster_size
    };
    // ext_end <= 2 MiB, so these casts are lossless and the buffer bounded.
    let cluster = r.read_padded(0, ext_end as usize)?;
    let ext_end = cluster.len();
    let mut backing_format = None;
    let mut data_files = Vec::new();
    let mut offset = usize::try_from(header_len).unwrap_or(usize::MAX);
    while offset < ext_end {
        let (Some(magic), Some(len)) = (be32(&cluster, offset), be32(&cluster, offset + 4)) else {
            info.push(malformed(format!(
                "header extension at {offset} is cut by the end of the extension area"
            )));
            break;
        };
        offset += 8;
        let len = len as usize;
        if len > ext_end - offset {
            info.push(malformed(format!(
                "header extension {magic:#x} at {} is larger than the extension area",
                offset - 8
            )));
            break;
        }
        let data = &cluster[offset..offset + len];
        match magic {
            QCOW2_EXT_END => break,
            QCOW2_EXT_BACKING_FORMAT => backing_format = Some(name_of(data)),
            QCOW2_EXT_DATA_FILE if data_files.len() < MAX_FINDINGS => {
                data_files.push(name_of(data))
            }
            _ => {}
        }
        // len <= 2 MiB: no overflow.
        offset += len.next_multiple_of(8);
    }

    if backing_offset != 0 {
        if backing_offset > cluster_size {
            info.push(malformed(format!(
                "backing file name offset {backing_offset} is beyond the first cluster"
            )));
        }
        if backing_len > 1023 {
            info.push(malformed(format!(
                "backing file name length {backing_len} exceeds 1023"
            )));
        }
        let raw = r.read_at(backing_offset, (backing_len as usize).min(MAX_NAME))?;
        info.push(Finding::BackingFile {
            name: name_of(&raw),
            format: backing_format,
        });
    }
    if data_files.is_empty() && incompatible & QCOW2_INCOMPAT_DATA_FILE != 0 {
        info.push(Finding::DataFile { name: None });
    }
    for name in data_files {
        info.push(Finding::DataFile { name: Some(name) });
    }
    let unknown = incompatible & !QCOW2_INCOMPAT_KNOWN;
    if unknown != 0 {
        info.push(Finding::UnknownIncompatibleFeatures { bits: unknown });
    }
    Ok(info)
}

/// qcow version 1 (block/qcow.c): a backing file name and encryption.
fn qcow1<R: Read + Seek>(r: &mut Reader<'_, R>, head: &[u8]) -> std::io::Result<ImageInfo> {
    let mut info = ImageInfo::new(ImageFormat::Qcow);
    let (Some(backing_offset), Some(backing_len), Some(crypt)) =
        (be64(head, 8), be32(head, 16), be32(head, 36))
    else {
        info.push(malformed("the file is shorter than a qcow header"));
        return Ok(info);
    };
    if crypt != 0 {
        info.push(Finding::Encrypted {
            method: format!("method {crypt}"),
        });
    }
    if backing_offset != 0 {
        let raw = r.read_at(backing_offset, (backing_len as usize).min(MAX_NAME))?;
        info.push(Finding::BackingFile {
            name: name_of(&raw),
            format: None,
        });
    }
    Ok(info)
}

const QED_F_BACKING_FILE: u64 = 0x01;

/// QED (block/qed.c): a backing file when the feature bit says so.
fn qed<R: Read + Seek>(r: &mut Reader<'_, R>, head: &[u8]) -> std::io::Result<ImageInfo> {
    let mut info = ImageInfo::new(ImageFormat::Qed);
    let (Some(features), Some(name_offset), Some(name_len)) =
        (le64(head, 16), le32(head, 56), le32(head, 60))
    else {
        info.push(malformed("the file is shorter than a QED header"));
        return Ok(info);
    };
    if features & QED_F_BACKING_FILE != 0 {
        let raw = r.read_at(u64::from(name_offset), (name_len as usize).min(MAX_NAME))?;
        info.push(Finding::BackingFile {
            name: name_of(&raw),
            format: None,
        });
    }
    Ok(info)
}

/// Sparse VMDK (`KDMV` version 4, `COWD` version 3). QEMU opens the descriptor embedded at
/// `desc_offset` as a full descriptor (extents included) only when the capacity is zero
/// (`vmdk_open_vmdk4`); otherwise the file is its own single extent and the embedded
/// descriptor's extent lines (which name the file itself, as in every monolithicSparse or
/// streamOptimized image) are never opened. `parentFileNameHint` is looked for in the
/// descriptor at 0x200 either way (`vmdk_parent_open`).
fn vmdk_sparse<R: Read + Seek>(r: &mut Reader<'_, R>, head: &[u8]) -> std::io::Result<ImageInfo> {
    let mut info = ImageInfo::new(ImageFormat::Vmdk);
    // (offset, bytes QEMU reads there, whether its extent lines are opened)
    let mut descriptors = vec![(0x200u64, VMDK_PARENT_DESC, false)];
    if head.starts_with(b"KDMV") {
        match (le64(head, 12), le64(head, 28)) {
            (Some(0), Some(0)) | (Some(1..), Some(_)) => {}
            (Some(0), Some(sectors)) => match sectors.checked_mul(512) {
                Some(0x200) => descriptors[0] = (0x200, VMDK_DESC_MAX, true),
                Some(at) if at < r.size => descriptors.push((at, VMDK_DESC_MAX, true)),
                _ => info.push(malformed(format!(
                    "descriptor offset {sectors} (sectors) is beyond the end of the file"
                ))),
            },
            _ => info.push(malformed("the file is shorter than a VMDK header")),
        }
    }
    for (at, len, extents) in descriptors {
        let desc = r.read_at(at, len)?;
        vmdk_descriptor(&mut info, &desc, extents);
    }
    Ok(info)
}

/// QEMU's `vmdk_probe` for text descriptors: comment and blank lines, then `version=N`.
fn vmdk_text_probe(buf: &[u8]) -> bool {
    let mut p = 0;
    while p < buf.len() {
        match buf[p] {
            b'#' => {
                while p < buf.len() && buf[p] != b'\n' {
                    p += 1;
                }
                p += 1;
            }
            b' ' => {
                while p < buf.len() && buf[p] == b' ' {
                    p += 1;
                }
                if p < buf.len() && buf[p] == b'\r' {
                    p += 1;
                }
                if p == buf.len() || buf[p] != b'\n' {
                    return false;
                }
                p += 1;
            }
            _ => {
                let rest = &buf[p..];
                return rest.len() >= 10
                    && rest.starts_with(b"version=")
                    && matches!(rest[8], b'1'..=b'3')
                    && (rest[9] == b'\n' || rest[9..].starts_with(b"\r\n"));
            }
        }
    }
    false
}

/// Extent lines (`RW 2048 FLAT "file" 0`, when `extents`) and `parentFileNameHint="file"` of
/// a descriptor. QEMU treats the descriptor as a C string: it ends at the first NUL.
fn vmdk_descriptor(info: &mut ImageInfo, desc: &[u8], extents: bool) {
    let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    let desc = &desc[..end];
    // vmdk_parse_description / vmdk_parent_open: the first occurrence, then skip `="`.
    const HINT: &[u8] = b"parentFileNameHint";
    if let Some(at) = desc.windows(HINT.len()).position(|w| w == HINT) {
        let rest = desc.get(at + HINT.len() + 2..).unwrap_or_default();
        let name_end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
        info.push(Finding::BackingFile {
            name: name_of(&rest[..name_end]),
            format: None,
        });
    }
    if !extents {
        return;
    }
    for line in desc.split(|&b| b == b'\n' || b == b'\r') {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_whitespace();
        if !matches!(words.next(), Some("RW" | "RDONLY" | "NOACCESS")) {
            continue;
        }
        // The name is the first quoted string; QEMU stops it at a quote or line end.
        if let Some((_, quoted)) = text.split_once('"') {
            let name = quoted.split('"').next().unwrap_or_default();
            info.push(Finding::Extent {
                name: name_of(name.as_bytes()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn inspect(bytes: &[u8]) -> ImageInfo {
        inspect_image(&mut Cursor::new(bytes)).unwrap()
    }

    /// A qcow2 v3 header (64 KiB clusters) with the given extensions, padded to 64 KiB.
    fn qcow2_v3(incompatible: u64, extensions: &[(u32, &[u8])]) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        for (magic, data) in extensions {
            h.extend_from_slice(&magic.to_be_bytes());
            h.extend_from_slice(&(data.len() as u32).to_be_bytes());
            h.extend_from_slice(data);
            h.resize(h.len().next_multiple_of(8), 0);
        }
        h.extend_from_slice(&[0; 8]);
        h.resize(65536, 0);
        h
    }

    fn with_backing(mut h: Vec<u8>, name: &[u8]) -> Vec<u8> {
        let at = 4096usize;
        h[8..16].copy_from_slice(&(at as u64).to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[at..at + name.len()].copy_from_slice(name);
        h
    }

    #[test]
    fn plain_qcow2_and_raw_are_accepted() {
        let info = inspect(&qcow2_v3(0, &[]));
        assert_eq!(info.format, ImageFormat::Qcow2);
        assert!(info.findings.is_empty(), "{info:?}");
        assert_eq!(info.refusal(ImagePolicy::Imported), None);
        // Dirty and corrupt bits are QEMU's business, not a reference.
        assert!(inspect(&qcow2_v3(0b11, &[])).findings.is_empty());
        for raw in [&b""[..], b"\xeb\x63\x90", &[0u8; 4096]] {
            let info = inspect(raw);
            assert_eq!(info.format, ImageFormat::Raw);
            assert!(info.findings.is_empty());
        }
    }

    #[test]
    fn qcow2_data_file_by_extension_or_bit() {
        let info = inspect(&qcow2_v3(
            QCOW2_INCOMPAT_DATA_FILE,
            &[(QCOW2_EXT_DATA_FILE, b"/etc/passwd")],
        ));
        assert_eq!(
            info.findings,
            vec![Finding::DataFile {
                name: Some("/etc/passwd".into())
            }]
        );
        assert_eq!(
            info.refusal(ImagePolicy::Imported).unwrap(),
            r#"qcow2 image names an external data file "/etc/passwd""#
        );
        assert!(info.refusal(ImagePolicy::OpenedAsRaw).is_some());
        // The extension alone (QEMU would complain) and the bit alone are both findings.
        let ext_only = inspect(&qcow2_v3(0, &[(QCOW2_EXT_DATA_FILE, b"/dev/sda")]));
        assert!(ext_only.references().count() == 1, "{ext_only:?}");
        let bit_only = inspect(&qcow2_v3(QCOW2_INCOMPAT_DATA_FILE, &[]));
        assert_eq!(bit_only.findings, vec![Finding::DataFile { name: None }]);
        // An unknown extension before it does not hide it.
        let info = inspect(&qcow2_v3(
            QCOW2_INCOMPAT_DATA_FILE,
            &[(0x1234_5678, b"abc"), (QCOW2_EXT_DATA_FILE, b"x")],
        ));
        assert_eq!(
            info.findings,
            vec![Finding::DataFile {
                name: Some("x".into())
            }]
        );
    }

    #[test]
    fn qcow2_backing_names_and_protocols() {
        let h = with_backing(
            qcow2_v3(0, &[(QCOW2_EXT_BACKING_FORMAT, b"raw")]),
            b"/etc/hostname",
        );
        let info = inspect(&h);
        assert_eq!(
            info.findings,
            vec![Finding::BackingFile {
                name: "/etc/hostname".into(),
                format: Some("raw".into())
            }]
        );
        let msg = info.refusal(ImagePolicy::Imported).unwrap();
        assert_eq!(
            msg,
            r#"qcow2 image names a backing file "/etc/hostname" (format "raw")"#
        );
        let json = inspect(&with_backing(
            qcow2_v3(0, &[]),
            br#"json:{"driver":"file","filename":"/etc/shadow"}"#,
        ));
        let msg = json.refusal(ImagePolicy::OpenedAsRaw).unwrap();
        assert!(msg.contains("json: pseudo-filename"), "{msg}");
        let nbd = inspect(&with_backing(qcow2_v3(0, &[]), b"nbd:127.0.0.1:10809"));
        let msg = nbd.refusal(ImagePolicy::Imported).unwrap();
        assert!(msg.contains(r#"QEMU protocol "nbd""#), "{msg}");
    }

    #[test]
    fn qcow2_unknown_features_encryption_and_bad_headers() {
        let info = inspect(&qcow2_v3(1 << 40, &[]));
        assert_eq!(
            info.findings,
            vec![Finding::UnknownIncompatibleFeatures { bits: 1 << 40 }]
        );
        assert!(info.refusal(ImagePolicy::Imported).is_some());
        assert_eq!(info.refusal(ImagePolicy::OpenedAsRaw), None);

        let mut enc = qcow2_v3(0, &[]);
        enc[35] = 2;
        assert!(inspect(&enc)
            .refusal(ImagePolicy::Imported)
            .unwrap()
            .contains("encrypted (luks)"));

        // An extension running past the extension area.
        let mut h = qcow2_v3(0, &[]);
        h[112..116].copy_from_slice(&QCOW2_EXT_DATA_FILE.to_be_bytes());
        h[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        let info = inspect(&h);
        assert!(matches!(info.findings[..], [Finding::Malformed { .. }]));

        // Truncated: the extension area reads as zeros past the end, like QEMU.
        let info = inspect(&qcow2_v3(0, &[])[..104]);
        assert!(info.findings.is_empty(), "{info:?}");
        let info = inspect(b"QFI\xfb\0\0\0\x03");
        assert!(matches!(info.findings[..], [Finding::Malformed { .. }]));
        let mut v9 = qcow2_v3(0, &[]);
        v9[7] = 9;
        assert!(inspect(&v9).refusal(ImagePolicy::Imported).is_some());
    }

    #[test]
    fn vmdk_text_descriptor_extents() {
        let desc = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
            createType=\"monolithicFlat\"\n\n# Extent description\n\
            RW 2048 FLAT \"/etc/shadow\" 0\nRDONLY 100 FLAT \"rel.img\" 0\n";
        let info = inspect(desc);
        assert_eq!(info.format, ImageFormat::Vmdk);
        assert_eq!(
            info.findings,
            vec![
                Finding::Extent {
                    name: "/etc/shadow".into()
                },
                Finding::Extent {
                    name: "rel.img".into()
                }
            ]
        );
        let msg = info.refusal(ImagePolicy::Imported).unwrap();
        assert!(
            msg.starts_with(r#"vmdk image names extent file "/etc/shadow""#)
                && msg.ends_with("vmdk images are not accepted (raw or qcow2 expected)"),
            "{msg}"
        );
        // QEMU's probe: blank and comment lines first, then version=.
        assert_eq!(
            inspect(b"  \r\n#x\nversion=2\r\nRW 1 FLAT \"a\" 0\n").findings,
            vec![Finding::Extent { name: "a".into() }]
        );
        assert_eq!(inspect(b"#x\nhello\nversion=1\n").format, ImageFormat::Raw);
    }

    #[test]
    fn vmdk_sparse_embedded_descriptor_and_parent() {
        let mut h = vec![0u8; 8192];
        h[..4].copy_from_slice(b"KDMV");
        h[4] = 1;
        h[28..36].copy_from_slice(&8u64.to_le_bytes());
        let desc = b"# Disk DescriptorFile\nversion=1\nRW 8 FLAT \"/dev/sda\" 0\n";
        h[4096..4096 + desc.len()].copy_from_slice(desc);
        let parent = b"parentFileNameHint=\"/var/lib/base.vmdk\"\n";
        h[512..512 + parent.len()].copy_from_slice(parent);
        let info = inspect(&h);
        assert_eq!(
            info.findings,
            vec![
                Finding::BackingFile {
                    name: "/var/lib/base.vmdk".into(),
                    format: None
                },
                Finding::Extent {
                    name: "/dev/sda".into()
                }
            ]
        );
        h[28..36].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(inspect(&h)
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Malformed { .. })));

        // A non-zero capacity makes the file its own extent (monolithicSparse,
        // streamOptimized): QEMU opens no extent line, but still follows the parent hint.
        h[12..20].copy_from_slice(&2048u64.to_le_bytes());
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        let own = b"# Disk DescriptorFile\nversion=1\nRW 2048 SPARSE \"disk.vmdk\"\n";
        h[512..512 + own.len()].copy_from_slice(own);
        h[512 + own.len()..1024].fill(0);
        assert!(inspect(&h).findings.is_empty(), "{:?}", inspect(&h));
        h[512 + own.len()..512 + own.len() + parent.len()].copy_from_slice(parent);
        assert_eq!(
            inspect(&h).findings,
            vec![Finding::BackingFile {
                name: "/var/lib/base.vmdk".into(),
                format: None
            }]
        );
    }

    #[test]
    fn qed_backing_and_other_formats() {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(b"QED\0");
        h[16..24].copy_from_slice(&QED_F_BACKING_FILE.to_le_bytes());
        h[56..60].copy_from_slice(&1024u32.to_le_bytes());
        h[60..64].copy_from_slice(&8u32.to_le_bytes());
        h[1024..1032].copy_from_slice(b"http:x/y");
        let info = inspect(&h);
        assert_eq!(info.format, ImageFormat::Qed);
        assert!(info
            .refusal(ImagePolicy::OpenedAsRaw)
            .unwrap()
            .contains(r#"qed image names a backing file "http:x/y" (QEMU protocol "http")"#));

        let mut vdi = vec![0u8; 512];
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        let mut dmg = vec![0u8; 4096];
        dmg[4096 - 512..4096 - 508].copy_from_slice(b"koly");
        for (bytes, format) in [
            (b"conectix".to_vec(), ImageFormat::Vpc),
            (b"vhdxfile".to_vec(), ImageFormat::Vhdx),
            (b"LUKS\xba\xbe\0\x01".to_vec(), ImageFormat::Luks),
            (b"WithoutFreeSpace".to_vec(), ImageFormat::Parallels),
            (b"Bochs Virtual HD Image\0".to_vec(), ImageFormat::Bochs),
            (
                b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0".to_vec(),
                ImageFormat::Cloop,
            ),
            (vdi, ImageFormat::Vdi),
            (dmg, ImageFormat::Dmg),
            (b"QFI\xfb\0\0\0\x01".to_vec(), ImageFormat::Qcow),
        ] {
            let info = inspect(&bytes);
            assert_eq!(info.format, format);
            let msg = info.refusal(ImagePolicy::Imported).unwrap();
            assert!(
                msg.contains(&format!("{format} images are not accepted")),
                "{msg}"
            );
            // A guest may put any of these on a raw disk; none names a file.
            assert_eq!(info.refusal(ImagePolicy::OpenedAsRaw), None, "{format}");
        }
    }
}
