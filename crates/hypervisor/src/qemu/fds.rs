//! The descriptors QEMU inherits. We open every disk, firmware variable store, serial log
//! and tap device ourselves, before QEMU starts, and QEMU gets the descriptors: it never
//! resolves a host path for them, so it can touch only what it was given, even when it
//! runs as an unprivileged user that could not open those paths at all.
//!
//! Disks and logs travel as fd sets (`-add-fd`, then `filename=/dev/fdset/N`): QEMU dups a
//! descriptor of the set whose access mode matches what it wants, so a writable disk's set
//! holds a read-only and a read-write descriptor. The kernel and initrd are read by QEMU's
//! loaders with plain `open`, so they go by `/proc/self/fd/N` (the file must be readable by
//! QEMU's user; the path leading to it need not be).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::*;
use crate::error::{HypervisorError, Result};

/// What the command line refers to: fd set ids, fd numbers and `/proc/self/fd` paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdRefs {
    /// `(set, fd)` pairs for `-add-fd`.
    pub sets: Vec<(u32, RawFd)>,
    /// Per disk (in `DomainConfig::disks` order): the image's set and its backing image's.
    pub disks: Vec<DiskSets>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// The UEFI variable store's set.
    pub uefi_vars: Option<u32>,
    /// The serial log's set.
    pub serial_log: Option<u32>,
    /// Per NIC (in `DomainConfig::nics` order): the tap descriptor, for tap backends.
    pub taps: Vec<Option<RawFd>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSets {
    /// None for an empty cdrom.
    pub image: Option<u32>,
    pub backing: Option<u32>,
}

impl FdRefs {
    /// Stand-in numbers for a command line that is only looked at, never run.
    #[cfg(test)]
    pub fn placeholders(cfg: &DomainConfig) -> FdRefs {
        let mut next_set = 0u32;
        let mut set = || {
            next_set += 1;
            next_set
        };
        FdRefs {
            sets: Vec::new(),
            disks: cfg
                .disks
                .iter()
                .map(|d| DiskSets {
                    image: d.path.as_ref().map(|_| set()),
                    backing: d.backing.as_ref().map(|_| set()),
                })
                .collect(),
            kernel: cfg
                .kernel_boot
                .as_ref()
                .map(|_| "/proc/self/fd/KERNEL".into()),
            initrd: cfg
                .kernel_boot
                .as_ref()
                .and_then(|k| k.initrd.as_ref())
                .map(|_| "/proc/self/fd/INITRD".into()),
            uefi_vars: matches!(cfg.firmware, Firmware::Uefi { .. }).then(&mut set),
            serial_log: cfg
                .serial
                .as_ref()
                .and_then(|s| s.log_file.as_ref())
                .map(|_| set()),
            taps: cfg
                .nics
                .iter()
                .enumerate()
                .map(|(i, n)| matches!(n.backend, NicBackend::Tap { .. }).then_some(100 + i as i32))
                .collect(),
        }
    }
}

/// The open descriptors (kept open until QEMU has been spawned) and how to name them.
pub struct Passed {
    files: Vec<OwnedFd>,
    pub refs: FdRefs,
}

impl Passed {
    /// Opens everything `cfg` names that QEMU reads or writes as a file.
    pub fn open(cfg: &DomainConfig) -> Result<Passed> {
        let mut p = Passed {
            files: Vec::new(),
            refs: FdRefs::default(),
        };
        let mut next_set = 0u32;
        for d in &cfg.disks {
            let writable = !d.readonly && d.device != DiskDevice::Cdrom;
            let image = match &d.path {
                Some(path) => {
                    next_set += 1;
                    p.add_set(next_set, path, "disk image", writable)?;
                    Some(next_set)
                }
                None => None,
            };
            let backing = match &d.backing {
                Some(b) => {
                    next_set += 1;
                    p.add_set(next_set, &b.path, "backing image", false)?;
                    Some(next_set)
                }
                None => None,
            };
            p.refs.disks.push(DiskSets { image, backing });
        }
        if let Some(kb) = &cfg.kernel_boot {
            p.refs.kernel = Some(p.add_plain(&kb.kernel, "kernel")?);
            if let Some(initrd) = &kb.initrd {
                p.refs.initrd = Some(p.add_plain(initrd, "initrd")?);
            }
        }
        if let Firmware::Uefi { vars_path, .. } = &cfg.firmware {
            next_set += 1;
            p.add_set(next_set, vars_path, "UEFI variable store", true)?;
            p.refs.uefi_vars = Some(next_set);
        }
        if let Some(log) = cfg.serial.as_ref().and_then(|s| s.log_file.as_ref()) {
            next_set += 1;
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(log)
                .map_err(|e| HypervisorError::io(format!("opening {}", log.display()), e))?;
            p.refs.sets.push((next_set, f.as_raw_fd()));
            p.files.push(f.into());
            p.refs.serial_log = Some(next_set);
        }
        for n in &cfg.nics {
            let tap = match &n.backend {
                NicBackend::Tap { ifname } => {
                    let fd = open_tap(cfg.netns.as_deref(), ifname)?;
                    let raw = fd.as_raw_fd();
                    p.files.push(fd);
                    Some(raw)
                }
                _ => None,
            };
            p.refs.taps.push(tap);
        }
        Ok(p)
    }

    /// The descriptors QEMU must inherit (their close-on-exec flag is cleared in the child).
    pub fn inherited(&self) -> Vec<RawFd> {
        self.files.iter().map(|f| f.as_raw_fd()).collect()
    }

    fn add_set(&mut self, set: u32, path: &Path, what: &'static str, writable: bool) -> Result<()> {
        let mut modes = vec![false];
        if writable {
            modes.push(true);
        }
        for write in modes {
            let f = open_file(path, what, write)?;
            self.refs.sets.push((set, f.as_raw_fd()));
            self.files.push(f.into());
        }
        Ok(())
    }

    fn add_plain(&mut self, path: &Path, what: &'static str) -> Result<String> {
        let f = open_file(path, what, false)?;
        let name = format!("/proc/self/fd/{}", f.as_raw_fd());
        self.files.push(f.into());
        Ok(name)
    }
}

fn open_file(path: &Path, what: &'static str, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HypervisorError::MissingFile {
                what,
                path: path.to_path_buf(),
            },
            _ => HypervisorError::io(format!("opening {what} {}", path.display()), e),
        })
}

/// Attaches to the existing tap `ifname` in `netns` (from a short-lived thread that enters
/// the namespace; the launcher's other threads stay where they are), with the flags QEMU
/// itself would use.
fn open_tap(netns: Option<&Path>, ifname: &str) -> Result<OwnedFd> {
    let ns = netns
        .map(|p| {
            File::open(p)
                .map_err(|e| HypervisorError::io(format!("opening netns {}", p.display()), e))
        })
        .transpose()?;
    let name = ifname.to_owned();
    std::thread::scope(|s| {
        s.spawn(move || -> std::io::Result<OwnedFd> {
            if let Some(ns) = &ns {
                // SAFETY: setns(2) on an open namespace descriptor; it changes only this
                // thread, which ends right after.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let tun = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")?;
            // SAFETY: an all-zero ifreq is valid; the name is shorter than IFNAMSIZ (checked
            // by the config's validation), so it stays NUL-terminated.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (dst, src) in req
                .ifr_name
                .iter_mut()
                .zip(name.bytes().take(libc::IFNAMSIZ - 1))
            {
                *dst = src as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
            // SAFETY: TUNSETIFF reads the ifreq we own for the duration of the call.
            if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &req) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(tun.into())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("tap thread panicked")))
    })
    .map_err(|e| HypervisorError::io(format!("attaching to tap {ifname}"), e))
}
