//! The user a VM's QEMU runs as: one uid (and group) per VM, so a guest that escapes into
//! its QEMU can read or signal no other VM's files and processes, and no host file that is
//! not world-readable.
//!
//! Uids come from a range no distribution hands out (`VMM_UID_BASE`, 65,536 of them). A VM
//! claims one under a lock in a directory shared by every launcher on the host
//! ([`CLAIMS_DIR`]: `<n>` names the claiming run directory), whichever run root it uses; a
//! claim whose run directory is gone is free again, so claims need no separate cleanup.
//! Each claim made drops those stale claims, and with them the VMM cgroups
//! ([`cgroup_name`]) a launcher that died with its QEMU could not remove.
//!
//! The run directory is `root:<vm gid>` 0710: QEMU may pass through it to its own `vmm/`
//! directory (its sockets) and to the sockets made for it, but read nothing else there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::rundir::RunDir;

/// kubevirt-rs' host-wide state directory: the default run root, uid claims and pod
/// networks live beneath it. Whoever creates it first (often a launcher, whose umask is
/// 077) leaves it private; VMs must pass through it to a run root beneath it.
pub const STATE_DIR: &str = "/run/kubevirt-rs";

/// Where uids are claimed, host-wide.
pub const CLAIMS_DIR: &str = "/run/kubevirt-rs/vmm-uids";

/// First uid (and gid) handed to a VM.
pub const VMM_UID_BASE: u32 = 0x6b76_0000;
const SLOTS: u32 = 1 << 16;

/// The cgroup of the QEMU running as VM user `uid` (unique on the host, as the uid is).
pub fn cgroup_name(uid: u32) -> String {
    format!("vm-{uid}")
}

/// Picks this VM's uid, and gives its run directory and QEMU's own `vmm/` directory their
/// owners and modes.
pub fn prepare(run_dir: &RunDir) -> std::io::Result<u32> {
    let mut remove_cgroup = |uid: u32| {
        if let Ok(cg) = kubevirt_hypervisor::qemu::cgroup::VmmCgroup::named(&cgroup_name(uid)) {
            cg.remove();
        }
    };
    prepare_with(
        Path::new(CLAIMS_DIR),
        Path::new(STATE_DIR),
        run_dir,
        &mut remove_cgroup,
    )
}

/// [`prepare`], calling `on_stale` with the uid of each stale claim it drops.
fn prepare_with(
    claims: &Path,
    state_dir: &Path,
    run_dir: &RunDir,
    on_stale: &mut dyn FnMut(u32),
) -> std::io::Result<u32> {
    let root = run_dir
        .path()
        .parent()
        .ok_or_else(|| std::io::Error::other("run directory has no parent"))?;
    // VMs pass through the run root (and our own state directory above it) to their own
    // directory; nobody lists them.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))?;
    let root_abs = std::path::absolute(root)?;
    let state_abs = std::path::absolute(state_dir)?;
    if root_abs.starts_with(&state_abs) && state_abs.is_dir() {
        std::fs::set_permissions(&state_abs, std::fs::Permissions::from_mode(0o711))?;
    }
    reachable(root)?;
    let uid = claim(claims, run_dir, on_stale)?;
    std::os::unix::fs::chown(run_dir.path(), Some(0), Some(uid))?;
    std::fs::set_permissions(run_dir.path(), std::fs::Permissions::from_mode(0o710))?;
    let vmm = run_dir.vmm_dir();
    std::fs::create_dir_all(&vmm)?;
    std::os::unix::fs::chown(&vmm, Some(uid), Some(uid))?;
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o700))?;
    Ok(uid)
}

/// QEMU, as its own user, must pass through every directory above the run root.
fn reachable(root: &Path) -> std::io::Result<()> {
    for dir in std::path::absolute(root)?.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(std::io::Error::other(format!(
                "the run root {} is not reachable by VM users: {} is not searchable by others \
                 (mode {:o}); put the run root outside private directories",
                root.display(),
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

fn claim(claims: &Path, run_dir: &RunDir, on_stale: &mut dyn FnMut(u32)) -> std::io::Result<u32> {
    std::fs::create_dir_all(claims)?;
    std::fs::set_permissions(claims, std::fs::Permissions::from_mode(0o700))?;
    let lock = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(claims.join(".lock"))?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))
        .and_then(|_guard| {
            let me = std::path::absolute(run_dir.path())?
                .to_string_lossy()
                .into_owned();
            // The VMs of claims whose run directory is gone are over.
            for entry in std::fs::read_dir(claims)?.flatten() {
                let Some(slot) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if read_claim(&entry.path()).is_some_and(|o| o != me && !Path::new(&o).is_dir()) {
                    std::fs::remove_file(entry.path())?;
                    on_stale(VMM_UID_BASE + slot);
                }
            }
            let start = fnv1a(me.as_bytes()) % SLOTS;
            for i in 0..SLOTS {
                let slot = (start + i) % SLOTS;
                let path = claims.join(slot.to_string());
                match read_claim(&path) {
                    // Ours (a launcher restarted for the same pod) or free.
                    Some(owner) if owner == me => return Ok(VMM_UID_BASE + slot),
                    Some(owner) if Path::new(&owner).is_dir() => continue,
                    _ => {
                        let mut f = OpenOptions::new()
                            .create(true)
                            .write(true)
                            .truncate(true)
                            .mode(0o600)
                            .open(&path)?;
                        f.write_all(me.as_bytes())?;
                        return Ok(VMM_UID_BASE + slot);
                    }
                }
            }
            Err(std::io::Error::other("every VM uid is in use"))
        })
}

fn read_claim(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    Some(s)
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn each_run_dir_gets_its_own_uid_until_it_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let claims = tempfile::tempdir().unwrap();
        let stale = std::cell::RefCell::new(Vec::new());
        let prepare = |rd: &RunDir| {
            prepare_with(claims.path(), claims.path(), rd, &mut |uid| {
                stale.borrow_mut().push(uid)
            })
        };
        let a = RunDir::for_uid(root.path(), "pod-a");
        let b = RunDir::for_uid(root.path(), "pod-b");
        std::fs::create_dir_all(a.path()).unwrap();
        std::fs::create_dir_all(b.path()).unwrap();
        let ua = prepare(&a).unwrap();
        let ub = prepare(&b).unwrap();
        assert_ne!(ua, ub);
        assert!(ua >= VMM_UID_BASE && ub >= VMM_UID_BASE);
        assert_eq!(
            prepare(&a).unwrap(),
            ua,
            "a restarted launcher keeps its uid"
        );

        let md = std::fs::metadata(a.path()).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, ua, 0o710));
        let md = std::fs::metadata(a.vmm_dir()).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (ua, ua, 0o700));
        let md = std::fs::metadata(root.path()).unwrap();
        assert_eq!(md.mode() & 0o777, 0o711);

        // Pod a is gone: its uid is free, and the next VM hashing there may take it.
        std::fs::remove_dir_all(a.path()).unwrap();
        let slot = ua - VMM_UID_BASE;
        let claim = claims.path().join(slot.to_string());
        assert_eq!(
            read_claim(&claim).as_deref(),
            a.path().to_str(),
            "claims name the run directory"
        );
        std::fs::create_dir_all(a.path()).unwrap();
        std::fs::write(&claim, root.path().join("pod-gone").to_str().unwrap()).unwrap();
        assert!(stale.borrow().is_empty());
        let c = RunDir::for_uid(root.path(), "pod-a");
        assert_eq!(prepare(&c).unwrap(), ua);
        assert_eq!(*stale.borrow(), [ua], "the stale claim's VM cgroup goes");

        // Pod b's run directory goes while its VM is "running": the next claim, of any
        // run directory, drops b's claim and cgroup.
        std::fs::remove_dir_all(b.path()).unwrap();
        let d = RunDir::for_uid(root.path(), "pod-d");
        std::fs::create_dir_all(d.path()).unwrap();
        prepare(&d).unwrap();
        assert_eq!(*stale.borrow(), [ua, ub]);
        assert!(!claims.path().join((ub - VMM_UID_BASE).to_string()).exists());
    }

    #[test]
    fn a_run_root_inside_a_private_directory_is_refused() {
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let claims = tempfile::tempdir().unwrap();
        let rd = RunDir::for_uid(&private.path().join("runs"), "pod");
        std::fs::create_dir_all(rd.path()).unwrap();
        let err = prepare_with(claims.path(), claims.path(), &rd, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("not reachable by VM users"),
            "{err}"
        );
        assert!(err.to_string().contains("mode 700"), "{err}");
    }

    #[test]
    fn our_own_state_directory_is_opened_for_traversal() {
        // As a launcher with umask 077 leaves /run/kubevirt-rs when it creates it first.
        let state = tempfile::tempdir().unwrap();
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let claims = tempfile::tempdir().unwrap();
        let rd = RunDir::for_uid(&state.path().join("vms"), "pod");
        std::fs::create_dir_all(rd.path()).unwrap();
        prepare_with(claims.path(), state.path(), &rd, &mut |_| {}).unwrap();
        let mode = std::fs::metadata(state.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o711);
    }
}
