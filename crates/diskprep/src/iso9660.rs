//! A small ISO 9660 writer with Joliet names, enough for cloud-init seed images.
//!
//! Why our own: the images hold a handful of small files, the format for that is a few
//! hundred lines, and writing it here avoids spawning `xorriso` per VM start. The primary
//! tree carries upper-case level-2 names (what strict ISO 9660 readers see); the Joliet
//! tree carries the real, case-preserved names, which Linux (and so cloud-init) prefers
//! when no Rock Ridge extension is present. Files are stored once and referenced by both.
//!
//! Layout: system area (16 sectors), primary descriptor, Joliet supplementary descriptor,
//! terminator, the four path tables (little/big endian for each tree), the directories of
//! the primary tree, then of the Joliet tree, then file data, then zero padding.

use std::collections::BTreeMap;

const SECTOR: usize = 2048;
/// Trailing zero sectors, as genisoimage does: some readers read ahead past the last file.
const PADDING_SECTORS: usize = 150;
const MAX_JOLIET_NAME: usize = 64;
const MAX_PRIMARY_NAME: usize = 30;

/// Why an ISO image could not be built from the given files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoError {
    #[error("file path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("volume label {label:?}: {reason}")]
    InvalidLabel { label: String, reason: String },
    #[error("{path:?} is both a file and a directory")]
    FileDirConflict { path: String },
    #[error("image would be larger than ISO 9660 allows (4 GiB per file, 2^32 sectors)")]
    TooLarge,
}

/// One file of the image: a `/`-separated relative path and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoFile {
    pub path: String,
    pub data: Vec<u8>,
}

impl IsoFile {
    pub fn new(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        IsoFile {
            path: path.into(),
            data: data.into(),
        }
    }
}

#[derive(Default)]
struct Dir {
    name: String,
    parent: usize,
    subdirs: BTreeMap<String, usize>,
    files: BTreeMap<String, usize>,
    /// Unique primary-tree identifiers of the entries, keyed by (is_file, name).
    primary: BTreeMap<(bool, String), Vec<u8>>,
}

/// Both trees' view of one directory after layout.
#[derive(Clone, Copy, Default)]
struct Placed {
    lba: u32,
    size: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree {
    Primary,
    Joliet,
}

/// Builds the whole image in memory (seed images are small).
pub fn build_iso(label: &str, files: &[IsoFile]) -> Result<Vec<u8>, IsoError> {
    let (primary_label, joliet_label) = encode_label(label)?;
    let mut dirs = build_dir_tree(files)?;
    assign_primary_names(&mut dirs);

    // Path tables and directory order (breadth first, children sorted by encoded name).
    let p_order = bfs_order(&dirs, Tree::Primary);
    let j_order = bfs_order(&dirs, Tree::Joliet);
    let p_pt_size = path_table_size(&dirs, &p_order, Tree::Primary);
    let j_pt_size = path_table_size(&dirs, &j_order, Tree::Joliet);
    let p_pt_sectors = sectors(p_pt_size);
    let j_pt_sectors = sectors(j_pt_size);

    let mut next = 19usize;
    let p_l_table = next;
    next += p_pt_sectors;
    let p_m_table = next;
    next += p_pt_sectors;
    let j_l_table = next;
    next += j_pt_sectors;
    let j_m_table = next;
    next += j_pt_sectors;

    let mut p_dirs = vec![Placed::default(); dirs.len()];
    for &d in &p_order {
        let size = dir_extent_size(&dirs, d, files, Tree::Primary);
        p_dirs[d] = Placed {
            lba: to_u32(next)?,
            size: to_u32(size)?,
        };
        next += size / SECTOR;
    }
    let mut j_dirs = vec![Placed::default(); dirs.len()];
    for &d in &j_order {
        let size = dir_extent_size(&dirs, d, files, Tree::Joliet);
        j_dirs[d] = Placed {
            lba: to_u32(next)?,
            size: to_u32(size)?,
        };
        next += size / SECTOR;
    }
    let mut file_lba = vec![0u32; files.len()];
    for (i, f) in files.iter().enumerate() {
        to_u32(f.data.len())?;
        file_lba[i] = to_u32(next)?;
        next += sectors(f.data.len());
    }
    let total_sectors = next + PADDING_SECTORS;
    let total_u32 = to_u32(total_sectors)?;
    let mut img = vec![
        0u8;
        total_sectors
            .checked_mul(SECTOR)
            .ok_or(IsoError::TooLarge)?
    ];

    let now = now_utc();
    let root_p = dir_record(&[0], p_dirs[0], true, &now);
    let root_j = dir_record(&[0], j_dirs[0], true, &now);
    let descriptor = |kind: u8, label_field: &[u8], root: &[u8], pt: (usize, usize, usize)| {
        let mut s = vec![0u8; SECTOR];
        s[0] = kind;
        s[1..6].copy_from_slice(b"CD001");
        s[6] = 1;
        s[80..88].copy_from_slice(&both32(total_u32));
        s[120..124].copy_from_slice(&both16(1));
        s[124..128].copy_from_slice(&both16(1));
        s[128..132].copy_from_slice(&both16(SECTOR as u16));
        s[132..140].copy_from_slice(&both32(pt.0 as u32));
        s[140..144].copy_from_slice(&(pt.1 as u32).to_le_bytes());
        s[148..152].copy_from_slice(&(pt.2 as u32).to_be_bytes());
        s[156..190].copy_from_slice(root);
        s[40..72].copy_from_slice(label_field);
        let stamp = dec_datetime(&now);
        s[813..830].copy_from_slice(&stamp);
        s[830..847].copy_from_slice(&stamp);
        s[847..864].copy_from_slice(&dec_datetime_unset());
        s[864..881].copy_from_slice(&dec_datetime_unset());
        s[881] = 1;
        s
    };

    // Primary volume descriptor: text fields are space padded a/d-characters.
    let mut pvd = descriptor(
        1,
        &primary_label,
        &root_p,
        (p_pt_size, p_l_table, p_m_table),
    );
    pad_ascii(&mut pvd[8..40], b"LINUX");
    for range in [
        190..318,
        318..446,
        446..574,
        574..702,
        702..739,
        739..776,
        776..813,
    ] {
        pad_ascii(&mut pvd[range], b"");
    }
    pad_ascii(&mut pvd[574..702], b"KUBEVIRT-RS DISKPREP");
    put(&mut img, 16, &pvd);

    // Joliet supplementary descriptor: UCS-2 text fields, escape sequence for level 3.
    let mut svd = descriptor(2, &joliet_label, &root_j, (j_pt_size, j_l_table, j_m_table));
    pad_ucs2(&mut svd[8..40], "LINUX");
    svd[88..91].copy_from_slice(b"%/E");
    for range in [190..318, 318..446, 446..574, 702..738, 739..775, 776..812] {
        pad_ucs2(&mut svd[range], "");
    }
    pad_ucs2(&mut svd[574..702], "KUBEVIRT-RS DISKPREP");
    put(&mut img, 17, &svd);

    let mut term = vec![0u8; SECTOR];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    put(&mut img, 18, &term);

    for (tree, order, placed, l, m) in [
        (Tree::Primary, &p_order, &p_dirs, p_l_table, p_m_table),
        (Tree::Joliet, &j_order, &j_dirs, j_l_table, j_m_table),
    ] {
        let (le, be) = path_tables(&dirs, order, placed, tree);
        put(&mut img, l, &le);
        put(&mut img, m, &be);
        for &d in order.iter() {
            let extent = dir_extent(&dirs, d, files, placed, &file_lba, tree, &now);
            put(&mut img, placed[d].lba as usize, &extent);
        }
    }
    for (i, f) in files.iter().enumerate() {
        put(&mut img, file_lba[i] as usize, &f.data);
    }
    Ok(img)
}

fn put(img: &mut [u8], lba: usize, data: &[u8]) {
    let start = lba * SECTOR;
    img[start..start + data.len()].copy_from_slice(data);
}

fn sectors(bytes: usize) -> usize {
    bytes.div_ceil(SECTOR)
}

fn to_u32(n: usize) -> Result<u32, IsoError> {
    u32::try_from(n).map_err(|_| IsoError::TooLarge)
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn pad_ascii(field: &mut [u8], text: &[u8]) {
    field.fill(b' ');
    field[..text.len()].copy_from_slice(text);
}

fn pad_ucs2(field: &mut [u8], text: &str) {
    for pair in field.chunks_mut(2) {
        pair.copy_from_slice(&[0, b' '][..pair.len()]);
    }
    let enc = ucs2(text);
    field[..enc.len()].copy_from_slice(&enc);
}

fn ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn encode_label(label: &str) -> Result<([u8; 32], [u8; 32]), IsoError> {
    let bad = |reason: &str| IsoError::InvalidLabel {
        label: label.to_owned(),
        reason: reason.to_owned(),
    };
    if label.is_empty() {
        return Err(bad("empty"));
    }
    if label.len() > 16 {
        return Err(bad("longer than 16 characters (the Joliet limit)"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad("only ASCII letters, digits, '-' and '_' are allowed"));
    }
    // Kept as given (lower case included), like genisoimage -V: blkid and cloud-init match
    // the label `cidata` / `config-2` literally.
    let mut primary = [b' '; 32];
    primary[..label.len()].copy_from_slice(label.as_bytes());
    let mut joliet = [0u8; 32];
    pad_ucs2(&mut joliet, label);
    Ok((primary, joliet))
}

fn build_dir_tree(files: &[IsoFile]) -> Result<Vec<Dir>, IsoError> {
    let mut dirs = vec![Dir::default()];
    for (index, file) in files.iter().enumerate() {
        let bad = |reason: &str| IsoError::InvalidPath {
            path: file.path.clone(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = file.path.split('/').collect();
        if parts.len() > 8 {
            return Err(bad("deeper than the 8 directory levels ISO 9660 allows"));
        }
        for part in &parts {
            validate_component(part).map_err(|r| bad(&r))?;
        }
        let (file_name, dir_parts) = parts.split_last().ok_or_else(|| bad("empty"))?;
        let mut cur = 0usize;
        for part in dir_parts {
            if dirs[cur].files.contains_key(*part) {
                return Err(IsoError::FileDirConflict {
                    path: file.path.clone(),
                });
            }
            cur = match dirs[cur].subdirs.get(*part) {
                Some(&d) => d,
                None => {
                    dirs.push(Dir {
                        name: (*part).to_owned(),
                        parent: cur,
                        ..Dir::default()
                    });
                    let id = dirs.len() - 1;
                    dirs[cur].subdirs.insert((*part).to_owned(), id);
                    id
                }
            };
        }
        if dirs[cur].subdirs.contains_key(*file_name) {
            return Err(IsoError::FileDirConflict {
                path: file.path.clone(),
            });
        }
        if dirs[cur]
            .files
            .insert((*file_name).to_owned(), index)
            .is_some()
        {
            return Err(bad("given twice"));
        }
    }
    Ok(dirs)
}

fn validate_component(part: &str) -> Result<(), String> {
    if part.is_empty() || part == "." || part == ".." {
        return Err("empty, '.' or '..' path component".into());
    }
    if part.encode_utf16().count() > MAX_JOLIET_NAME - 2 {
        return Err(format!(
            "component {part:?} longer than {} characters",
            MAX_JOLIET_NAME - 2
        ));
    }
    if let Some(c) = part
        .chars()
        .find(|c| c.is_control() || "*/:;?\\".contains(*c) || u32::from(*c) > 0xFFFF)
    {
        return Err(format!(
            "component {part:?} contains {c:?}, not allowed by Joliet"
        ));
    }
    Ok(())
}

/// Level 2 primary name: upper case d-characters, one dot for files, `;1` version.
fn primary_name(name: &str, is_file: bool, unique: u32) -> Vec<u8> {
    let map = |s: &str| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let suffix = if unique == 0 {
        String::new()
    } else {
        format!("_{unique}")
    };
    if !is_file {
        let mut n = map(name);
        n.truncate(MAX_PRIMARY_NAME - suffix.len());
        return format!("{n}{suffix}").into_bytes();
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (map(s), map(e)),
        _ => (map(name), String::new()),
    };
    let mut ext = ext;
    ext.truncate(8);
    let mut stem = stem;
    stem.truncate(MAX_PRIMARY_NAME - 1 - ext.len() - suffix.len());
    format!("{stem}{suffix}.{ext};1").into_bytes()
}

/// Joliet names carry no `;1` version: Linux strips it anyway, other readers show it.
fn joliet_name(name: &str) -> Vec<u8> {
    ucs2(name)
}

fn encoded(dir: &Dir, tree: Tree, name: &str, is_file: bool) -> Vec<u8> {
    match tree {
        Tree::Primary => dir
            .primary
            .get(&(is_file, name.to_owned()))
            .cloned()
            .unwrap_or_else(|| primary_name(name, is_file, 0)),
        Tree::Joliet => joliet_name(name),
    }
}

/// Gives every entry a primary name unique within its directory: mangling (upper case,
/// truncation) can map different names to one, so clashes get a numeric suffix.
fn assign_primary_names(dirs: &mut [Dir]) {
    for dir in dirs.iter_mut() {
        let mut taken: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        let entries: Vec<(bool, String)> = dir
            .subdirs
            .keys()
            .map(|n| (false, n.clone()))
            .chain(dir.files.keys().map(|n| (true, n.clone())))
            .collect();
        for (is_file, name) in entries {
            let mut n = 0u32;
            let id = loop {
                let candidate = primary_name(&name, is_file, n);
                // A file FOO.;1 and a directory FOO clash too: compare without version/dot.
                let key = base_of(&candidate, is_file);
                if taken.insert(key) {
                    break candidate;
                }
                n += 1;
            };
            dir.primary.insert((is_file, name), id);
        }
    }
}

fn base_of(id: &[u8], is_file: bool) -> Vec<u8> {
    let mut key = id.to_vec();
    if is_file {
        key.truncate(key.len().saturating_sub(2));
        if key.last() == Some(&b'.') {
            key.pop();
        }
    }
    key
}

fn bfs_order(dirs: &[Dir], tree: Tree) -> Vec<usize> {
    let mut order = vec![0usize];
    let mut i = 0;
    while i < order.len() {
        let mut kids: Vec<(Vec<u8>, usize)> = dirs[order[i]]
            .subdirs
            .iter()
            .map(|(n, &d)| (encoded(&dirs[order[i]], tree, n, false), d))
            .collect();
        kids.sort();
        order.extend(kids.into_iter().map(|(_, d)| d));
        i += 1;
    }
    order
}

fn path_record_len(id_len: usize) -> usize {
    8 + id_len + (id_len % 2)
}

fn dir_identifier(dirs: &[Dir], d: usize, tree: Tree) -> Vec<u8> {
    if d == 0 {
        vec![0]
    } else {
        encoded(&dirs[dirs[d].parent], tree, &dirs[d].name, false)
    }
}

fn path_table_size(dirs: &[Dir], order: &[usize], tree: Tree) -> usize {
    order
        .iter()
        .map(|&d| path_record_len(dir_identifier(dirs, d, tree).len()))
        .sum()
}

fn path_tables(dirs: &[Dir], order: &[usize], placed: &[Placed], tree: Tree) -> (Vec<u8>, Vec<u8>) {
    let mut number = vec![0u16; dirs.len()];
    for (i, &d) in order.iter().enumerate() {
        number[d] = (i + 1) as u16;
    }
    let (mut le, mut be) = (Vec::new(), Vec::new());
    for &d in order {
        let id = dir_identifier(dirs, d, tree);
        let parent = number[dirs[d].parent];
        for (out, big) in [(&mut le, false), (&mut be, true)] {
            out.push(id.len() as u8);
            out.push(0);
            if big {
                out.extend_from_slice(&placed[d].lba.to_be_bytes());
                out.extend_from_slice(&parent.to_be_bytes());
            } else {
                out.extend_from_slice(&placed[d].lba.to_le_bytes());
                out.extend_from_slice(&parent.to_le_bytes());
            }
            out.extend_from_slice(&id);
            if id.len() % 2 == 1 {
                out.push(0);
            }
        }
    }
    (le, be)
}

fn dir_record_len(id_len: usize) -> usize {
    33 + id_len + (1 - id_len % 2)
}

/// Entries of a directory in on-disk order: (identifier, is_dir, dir index or file index).
fn dir_entries(dirs: &[Dir], d: usize, tree: Tree) -> Vec<(Vec<u8>, bool, usize)> {
    let mut entries: Vec<(Vec<u8>, bool, usize)> = dirs[d]
        .subdirs
        .iter()
        .map(|(n, &sub)| (encoded(&dirs[d], tree, n, false), true, sub))
        .chain(
            dirs[d]
                .files
                .iter()
                .map(|(n, &f)| (encoded(&dirs[d], tree, n, true), false, f)),
        )
        .collect();
    entries.sort();
    entries
}

/// Records never straddle a sector boundary; the extent is a whole number of sectors.
fn layout_records(lens: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut pos = 0usize;
    for len in lens {
        if pos % SECTOR + len > SECTOR {
            pos = pos.div_ceil(SECTOR) * SECTOR;
        }
        offsets.push(pos);
        pos += len;
    }
    offsets.push(pos);
    offsets
}

fn dir_extent_size(dirs: &[Dir], d: usize, _files: &[IsoFile], tree: Tree) -> usize {
    let entries = dir_entries(dirs, d, tree);
    let lens = [34usize, 34]
        .into_iter()
        .chain(entries.iter().map(|(id, _, _)| dir_record_len(id.len())));
    let offsets = layout_records(lens);
    let end = offsets.last().copied().unwrap_or(0);
    sectors(end).max(1) * SECTOR
}

fn dir_extent(
    dirs: &[Dir],
    d: usize,
    files: &[IsoFile],
    placed: &[Placed],
    file_lba: &[u32],
    tree: Tree,
    now: &Civil,
) -> Vec<u8> {
    let entries = dir_entries(dirs, d, tree);
    let mut records = vec![
        dir_record(&[0], placed[d], true, now),
        dir_record(&[1], placed[dirs[d].parent], true, now),
    ];
    for (id, is_dir, idx) in &entries {
        let target = if *is_dir {
            placed[*idx]
        } else {
            Placed {
                lba: file_lba[*idx],
                size: files[*idx].data.len() as u32,
            }
        };
        records.push(dir_record(id, target, *is_dir, now));
    }
    let offsets = layout_records(records.iter().map(Vec::len));
    let mut out = vec![0u8; placed[d].size as usize];
    for (rec, off) in records.iter().zip(offsets) {
        out[off..off + rec.len()].copy_from_slice(rec);
    }
    out
}

fn dir_record(id: &[u8], target: Placed, is_dir: bool, now: &Civil) -> Vec<u8> {
    let len = dir_record_len(id.len());
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[2..10].copy_from_slice(&both32(target.lba));
    r[10..18].copy_from_slice(&both32(target.size));
    r[18] = (now.year - 1900).clamp(0, 255) as u8;
    r[19] = now.month;
    r[20] = now.day;
    r[21] = now.hour;
    r[22] = now.minute;
    r[23] = now.second;
    r[24] = 0; // UTC
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r[33..33 + id.len()].copy_from_slice(id);
    r
}

struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

fn now_utc() -> Civil {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    civil_from_unix(secs)
}

/// Days-from-epoch to calendar date (Howard Hinnant's algorithm), UTC.
fn civil_from_unix(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u8,
        minute: (rem % 3600 / 60) as u8,
        second: (rem % 60) as u8,
    }
}

fn dec_datetime(c: &Civil) -> [u8; 17] {
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        c.year.clamp(1, 9999),
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second
    );
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(&text.as_bytes()[..16]);
    out
}

fn dec_datetime_unset() -> [u8; 17] {
    let mut out = [b'0'; 17];
    out[16] = 0;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_u32_le(img: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(img[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn descriptors_and_label() {
        let img = build_iso(
            "cidata",
            &[IsoFile::new("user-data", b"#cloud-config\n".to_vec())],
        )
        .unwrap();
        assert_eq!(img.len() % SECTOR, 0);
        let pvd = &img[16 * SECTOR..17 * SECTOR];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(&pvd[40..46], b"cidata");
        assert_eq!(read_u32_le(pvd, 80) as usize * SECTOR, img.len());
        let svd = &img[17 * SECTOR..18 * SECTOR];
        assert_eq!(svd[0], 2);
        assert_eq!(&svd[88..91], b"%/E");
        assert_eq!(&svd[40..52], &ucs2("cidata")[..]);
        assert_eq!(img[18 * SECTOR], 255);
    }

    #[test]
    fn primary_names_are_d_characters() {
        assert_eq!(primary_name("user-data", true, 0), b"USER_DATA.;1");
        assert_eq!(primary_name("meta_data.json", true, 0), b"META_DATA.JSON;1");
        assert_eq!(primary_name("openstack", false, 0), b"OPENSTACK");
        assert_eq!(primary_name(".hidden", true, 0), b"_HIDDEN.;1");
        assert_eq!(primary_name("a-b", true, 2), b"A_B_2.;1");
    }

    #[test]
    fn rejects_bad_input() {
        let f = |p: &str| vec![IsoFile::new(p, Vec::new())];
        assert!(matches!(
            build_iso("cidata", &f("a/../b")),
            Err(IsoError::InvalidPath { .. })
        ));
        assert!(matches!(
            build_iso("cidata", &f("/abs")),
            Err(IsoError::InvalidPath { .. })
        ));
        assert!(matches!(
            build_iso("cidata", &f("a:b")),
            Err(IsoError::InvalidPath { .. })
        ));
        assert!(matches!(
            build_iso("bad label", &f("x")),
            Err(IsoError::InvalidLabel { .. })
        ));
        assert!(matches!(
            build_iso(
                "x",
                &[IsoFile::new("a", vec![]), IsoFile::new("a/b", vec![])]
            ),
            Err(IsoError::FileDirConflict { .. })
        ));
        // Names that mangle to the same primary name get distinct ones.
        let mut dirs =
            build_dir_tree(&[IsoFile::new("a-b", vec![]), IsoFile::new("a_b", vec![])]).unwrap();
        assign_primary_names(&mut dirs);
        let ids: std::collections::BTreeSet<_> = dirs[0].primary.values().cloned().collect();
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn calendar() {
        let c = civil_from_unix(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (2023, 11, 14, 22, 13, 20)
        );
        let c = civil_from_unix(951_782_400); // 2000-02-29
        assert_eq!((c.year, c.month, c.day), (2000, 2, 29));
    }

    proptest! {
        #[test]
        fn arbitrary_paths_never_panic(paths in proptest::collection::vec("\\PC{1,20}(/\\PC{1,10}){0,3}", 0..6)) {
            let files: Vec<IsoFile> = paths.iter().map(|p| IsoFile::new(p.clone(), p.as_bytes().to_vec())).collect();
            let _ = build_iso("cidata", &files);
        }
    }
}
