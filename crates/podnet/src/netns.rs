//! Entering network namespaces: for a child process, or for one call on a helper thread.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use crate::{PodNetError, Result};

fn open_netns(path: &Path) -> Result<OwnedFd> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| PodNetError::Netns {
            path: path.to_path_buf(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
}

/// Makes `cmd` start inside the network namespace at `netns_path` (e.g. the handle's
/// `netns_path`), as `ip netns exec` would, but without a shell or a mount namespace.
/// Use it to start QEMU (or passt) on the VM's tap.
pub fn enter_netns_for_child(cmd: &mut Command, netns_path: &Path) -> Result<()> {
    let fd = open_netns(netns_path)?;
    // SAFETY: the closure runs in the forked child before exec; it only calls setns(2),
    // which is async-signal-safe, on an fd opened before the fork and owned by the closure
    // (so it stays open until exec; O_CLOEXEC closes it then). It allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the network namespace at `netns_path`.
/// Sockets created by `f` stay in that namespace after the thread ends, which is how the
/// DHCP socket is made. The calling thread's namespace is never touched.
pub fn run_in_netns<T, F>(netns_path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let fd = open_netns(netns_path)?;
    let path: PathBuf = netns_path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("podnet-netns".into())
        .spawn(move || -> Result<T> {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| PodNetError::Netns {
                path: path.clone(),
                source,
            })?;
            Ok(f())
        })
        .map_err(|e| PodNetError::Netns {
            path: netns_path.to_path_buf(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)),
        })?;
    match thread.join() {
        Ok(r) => r,
        // The panic is the caller's own (from `f`): hand it back unchanged.
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
