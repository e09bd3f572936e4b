//! Keeps an idle launcher's resident set small. Starting a VM runs a lot of code once
//! (argument parsing, translation, disk preparation, QEMU start) and reads its constants;
//! afterwards the launcher mostly waits. Those pages stay mapped and counted in its RSS
//! although every launcher shares them through the page cache. Dropping the mappings of
//! file-backed pages that were never written costs only a minor fault if they are used
//! again.

use std::ops::Range;

/// Address ranges of every loaded object's RELRO segment (`PT_GNU_RELRO`): read-only now,
/// but written by the dynamic loader (relocations), so their pages are not the file's.
fn relro_ranges() -> Vec<Range<usize>> {
    unsafe extern "C" fn collect(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for each object and our `data`, a
        // `Vec<Range<usize>>` that outlives the iteration.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<Range<usize>>)) };
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_GNU_RELRO {
                let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
                out.push(start..start + ph.p_memsz as usize);
            }
        }
        0
    }
    let mut out: Vec<Range<usize>> = Vec::new();
    // SAFETY: the callback only reads what the loader hands it and pushes to `out`.
    unsafe {
        libc::dl_iterate_phdr(Some(collect), &mut out as *mut _ as *mut libc::c_void);
    }
    out
}

fn page_down(a: usize) -> usize {
    a & !4095
}

fn page_up(a: usize) -> usize {
    (a + 4095) & !4095
}

/// Parts of `r` not covered by any of `holes` (page-aligned outward).
fn minus(r: Range<usize>, holes: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut parts = vec![r];
    for h in holes {
        let (hs, he) = (page_down(h.start), page_up(h.end));
        parts = parts
            .into_iter()
            .flat_map(|p| {
                let mut keep = Vec::new();
                if p.start < hs.min(p.end) {
                    keep.push(p.start..hs.min(p.end));
                }
                if he.max(p.start) < p.end {
                    keep.push(he.max(p.start)..p.end);
                }
                keep
            })
            .collect();
    }
    parts
}

/// Unmaps the resident pages of the file mappings that hold exactly the file's contents:
/// code (`r-xp`) and read-only data (`r--p`) outside the RELRO segments. Writable mappings
/// and RELRO pages (they hold relocations, which exist only in memory) are left alone.
pub fn release_code_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let relro = relro_ranges();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3).unwrap_or("");
        if !(perms == "r-xp" || perms == "r--p") || !path.starts_with('/') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        for part in minus(start..end, &relro) {
            // SAFETY: `part` lies in a private, never-writable file mapping outside any
            // RELRO segment, so its pages are exactly the file's contents; dropping them only
            // makes the next access fault them back in from the page cache. No Rust
            // reference is invalidated: the memory stays mapped with the same contents.
            unsafe {
                libc::madvise(
                    part.start as *mut libc::c_void,
                    part.end - part.start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_cut_out_page_aligned() {
        let hole = |r: Range<usize>| vec![r];
        assert_eq!(
            minus(0x1000..0x5000, &hole(0x2100..0x2f00)),
            vec![0x1000..0x2000, 0x3000..0x5000]
        );
        assert_eq!(
            minus(0x1000..0x2000, &hole(0x0..0x8000)),
            Vec::<Range<usize>>::new()
        );
        assert_eq!(
            minus(0x1000..0x2000, &hole(0x8000..0x9000)),
            hole(0x1000..0x2000)
        );
    }

    #[test]
    fn this_process_keeps_working_after_releasing_its_pages() {
        assert!(
            !relro_ranges().is_empty(),
            "a PIE test binary has a RELRO segment"
        );
        let before: Vec<String> = (0..100).map(|i| format!("{i:x}")).collect();
        release_code_pages();
        // Code, constants and relocated data (vtables, string tables) still work.
        let after: Vec<String> = (0..100).map(|i| format!("{i:x}")).collect();
        assert_eq!(before, after);
        let v: Box<dyn std::fmt::Debug> = Box::new(42u8);
        assert_eq!(format!("{v:?}"), "42");
    }
}
