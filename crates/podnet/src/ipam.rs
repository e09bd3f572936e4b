//! The pod IP allocator: one file per handed-out address under `<state_dir>/ips/`, created
//! with O_EXCL so two launchers (or a restarted one) never hand out the same address.

use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::{PodNetError, Result};

pub(crate) struct Ipam {
    dir: PathBuf,
    gateway: Ipv4Addr,
    prefix_len: u8,
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> PodNetError + '_ {
    move |source| PodNetError::State {
        path: path.to_path_buf(),
        source,
    }
}

impl Ipam {
    pub(crate) fn new(state_dir: &Path, gateway: Ipv4Addr, prefix_len: u8) -> Self {
        Ipam {
            dir: state_dir.join("ips"),
            gateway,
            prefix_len,
        }
    }

    fn range(&self) -> (u32, u32) {
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        };
        let net = u32::from(self.gateway) & mask;
        let bcast = net | !mask;
        (net + 1, bcast.saturating_sub(1))
    }

    fn cidr(&self) -> String {
        let (first, _) = self.range();
        format!("{}/{}", Ipv4Addr::from(first - 1), self.prefix_len)
    }

    /// Addresses currently handed out, with their owners.
    pub(crate) fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(state_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(state_err(&self.dir))?;
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            let owner = fs::read_to_string(entry.path()).unwrap_or_default();
            out.push((ip, owner));
        }
        Ok(out)
    }

    /// The address of `vm_id`, allocating the lowest free one if it has none yet.
    pub(crate) fn allocate(&self, vm_id: &str) -> Result<Ipv4Addr> {
        fs::create_dir_all(&self.dir).map_err(state_err(&self.dir))?;
        let taken = self.allocations()?;
        if let Some((ip, _)) = taken.iter().find(|(_, owner)| owner == vm_id) {
            return Ok(*ip);
        }
        let taken: HashSet<Ipv4Addr> = taken.into_iter().map(|(ip, _)| ip).collect();
        let (first, last) = self.range();
        for n in first..=last {
            let ip = Ipv4Addr::from(n);
            if ip == self.gateway || taken.contains(&ip) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(vm_id.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(state_err(&path))?;
                    return Ok(ip);
                }
                // Another process took it between our listing and now.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(state_err(&path)(e)),
            }
        }
        Err(PodNetError::PoolExhausted { cidr: self.cidr() })
    }

    /// Frees `ip` if `vm_id` holds it. Freeing an address that is not held is not an error.
    pub(crate) fn release(&self, ip: Ipv4Addr, vm_id: &str) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(owner) if owner == vm_id => fs::remove_file(&path).or_else(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(state_err(&path)(e))
                }
            }),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(state_err(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_addresses_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let gw: Ipv4Addr = "10.244.0.1".parse().unwrap();
        let a = Ipam::new(dir.path(), gw, 16);
        let ip1 = a.allocate("vm-1").unwrap();
        let ip2 = a.allocate("vm-2").unwrap();
        assert_eq!(ip1, Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(ip2, Ipv4Addr::new(10, 244, 0, 3));
        // Same VM asks again: same address.
        assert_eq!(a.allocate("vm-1").unwrap(), ip1);
        // A new allocator over the same state (a restarted launcher) does not reuse them.
        let b = Ipam::new(dir.path(), gw, 16);
        assert_eq!(b.allocate("vm-3").unwrap(), Ipv4Addr::new(10, 244, 0, 4));
        // Freed addresses come back; someone else's address is not freed.
        b.release(ip1, "vm-2").unwrap();
        assert_eq!(b.allocate("vm-4").unwrap(), Ipv4Addr::new(10, 244, 0, 5));
        b.release(ip1, "vm-1").unwrap();
        b.release(ip1, "vm-1").unwrap();
        assert_eq!(b.allocate("vm-5").unwrap(), ip1);
    }

    #[test]
    fn small_pool_exhausts_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // /30: network .0, gateway .1, one host .2, broadcast .3
        let a = Ipam::new(dir.path(), Ipv4Addr::new(10, 9, 0, 1), 30);
        assert_eq!(a.allocate("x").unwrap(), Ipv4Addr::new(10, 9, 0, 2));
        let err = a.allocate("y").unwrap_err();
        assert_eq!(err.to_string(), "no free pod IP left in 10.9.0.0/30");
    }
}
