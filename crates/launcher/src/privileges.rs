//! The launcher runs as root, but not with all of root's power: before it starts any
//! thread, it keeps only the capabilities its work needs (building the pod network, handing
//! QEMU and passt their own users, opening files for them, signalling them) and drops the
//! rest from its bounding, permitted, effective and inheritable sets. Every thread and
//! every process it starts (`ip`, `nft`, swtpm, passt, QEMU) inherits that ceiling: none of
//! them can load a kernel module, reach raw devices or ptrace another process.

/// What the launcher keeps, by capability number (linux/capability.h).
const KEEP: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),        // the VM's directories and sockets
    (1, "CAP_DAC_OVERRIDE"), // QEMU's own directory, private files
    (2, "CAP_DAC_READ_SEARCH"),
    (3, "CAP_FOWNER"),
    (5, "CAP_KILL"),   // QEMU and passt run as the VM's user
    (6, "CAP_SETGID"), // ... which they are given
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),           // passt drops its own capabilities
    (10, "CAP_NET_BIND_SERVICE"), // the pod network's DHCP server
    (12, "CAP_NET_ADMIN"),        // netns, tap, nftables
    (13, "CAP_NET_RAW"),
    (21, "CAP_SYS_ADMIN"), // entering and mounting network namespaces
    (23, "CAP_SYS_NICE"),  // QEMU's CPU weight
    (24, "CAP_SYS_RESOURCE"),
];

/// Drops every capability not in [`KEEP`]. Call before any other thread exists: Linux
/// capabilities are per thread, and threads inherit them from the one that creates them.
pub fn drop_unneeded() -> std::io::Result<()> {
    let last = last_cap();
    let keep_mask: u64 = KEEP.iter().fold(0, |m, (c, _)| m | (1u64 << c));
    for cap in 0..=last {
        if keep_mask & (1 << cap) == 0 {
            // SAFETY: prctl(2) with integer arguments only.
            let r =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                // EINVAL: a capability this kernel does not have.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
        }
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) fills the two data structs of version 3 we pass.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (i, d) in data.iter_mut().enumerate() {
        let keep = (keep_mask >> (32 * i)) as u32;
        d.effective &= keep;
        d.permitted &= keep;
        d.inheritable &= keep;
    }
    // SAFETY: capset(2) reads the header and the two data structs we pass.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The highest capability this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}
