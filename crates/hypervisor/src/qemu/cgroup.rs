//! The VMM's cgroup: memory and CPU bounded as the pod's resources say.
//!
//! Created beneath the caller's own cgroup (so whatever bounds the node agent also bounds
//! its VMs, as the kubelet's pods sit under its slice), in `kubevirt-rs/<name>`. Handles a
//! pure cgroup v2 host and a v1 (or hybrid: v1 controllers with a v2 hierarchy mounted
//! beside them) host: v2 is used only where its memory and cpu controllers are available.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::error::{HypervisorError, Result};

/// CFS period the CPU quota is expressed in (the kernel's and Kubernetes' default).
const CPU_PERIOD_US: u64 = 100_000;

/// What the cgroup enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
}

/// A created cgroup (one directory per hierarchy on v1, one on v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmCgroup {
    dirs: Vec<PathBuf>,
}

/// Where the hierarchies are mounted and where this process sits in them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    V2 { dir: PathBuf },
    V1 { memory: PathBuf, cpu: PathBuf },
}

/// This process's cgroup layout, after checking that `name` is one directory's name.
fn own_layout(name: &str) -> Result<Layout> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(HypervisorError::InvalidConfig {
            field: "confinement.cgroup".into(),
            reason: format!("invalid cgroup name {name:?}"),
        });
    }
    let mountinfo = read("/proc/self/mountinfo")?;
    let own = read("/proc/self/cgroup")?;
    layout(&mountinfo, &own).ok_or_else(|| {
        HypervisorError::io(
            "finding the memory and cpu cgroup controllers",
            std::io::Error::other("neither a cgroup v2 hierarchy with memory and cpu nor v1 memory and cpu hierarchies are mounted"),
        )
    })
}

impl VmmCgroup {
    /// The cgroup `name` where [`VmmCgroup::create`] puts it, created or not: to remove
    /// one whose VMM died with its launcher ([`VmmCgroup::remove`] leaves one that still
    /// holds a process, and ignores one that is not there).
    pub fn named(name: &str) -> Result<VmmCgroup> {
        let dirs = match own_layout(name)? {
            Layout::V2 { dir } => vec![dir.join("kubevirt-rs").join(name)],
            Layout::V1 { memory, cpu } if cpu == memory => {
                vec![memory.join("kubevirt-rs").join(name)]
            }
            Layout::V1 { memory, cpu } => vec![
                memory.join("kubevirt-rs").join(name),
                cpu.join("kubevirt-rs").join(name),
            ],
        };
        Ok(VmmCgroup { dirs })
    }

    /// Creates `kubevirt-rs/<name>` beneath this process's cgroup and applies `limits`.
    pub fn create(name: &str, limits: Limits) -> Result<VmmCgroup> {
        let cg = match own_layout(name)? {
            Layout::V2 { dir } => {
                let parent = dir.join("kubevirt-rs");
                mkdir(&parent)?;
                // Children of `kubevirt-rs` get memory and cpu; `kubevirt-rs` itself holds no
                // process, so the controllers may be enabled for its children.
                write(&dir.join("cgroup.subtree_control"), "+memory +cpu")?;
                write(&parent.join("cgroup.subtree_control"), "+memory +cpu")?;
                let d = parent.join(name);
                mkdir(&d)?;
                if let Some(m) = limits.memory_bytes {
                    write(&d.join("memory.max"), &m.to_string())?;
                    write(&d.join("memory.swap.max"), "0").ok();
                }
                if let Some(c) = limits.cpu_millis {
                    write(
                        &d.join("cpu.max"),
                        &format!("{} {CPU_PERIOD_US}", quota_us(c)),
                    )?;
                }
                VmmCgroup { dirs: vec![d] }
            }
            Layout::V1 { memory, cpu } => {
                let m = memory.join("kubevirt-rs").join(name);
                mkdir(&m)?;
                if let Some(b) = limits.memory_bytes {
                    write(&m.join("memory.limit_in_bytes"), &b.to_string())?;
                }
                let mut dirs = vec![m];
                if cpu != memory {
                    let c = cpu.join("kubevirt-rs").join(name);
                    mkdir(&c)?;
                    dirs.push(c);
                }
                let c = dirs.last().expect("one directory at least");
                if let Some(millis) = limits.cpu_millis {
                    write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&c.join("cpu.cfs_quota_us"), &quota_us(millis).to_string())?;
                }
                VmmCgroup { dirs }
            }
        };
        Ok(cg)
    }

    /// The `cgroup.procs` files a process writes `0` to, to join (prepared before fork:
    /// the child may only make async-signal-safe calls).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Sets the relative CPU weight, in cpu.shares units (1024 = an ordinary process).
    pub fn set_cpu_shares(&self, shares: u64) -> Result<()> {
        for d in &self.dirs {
            if d.join("cpu.weight").exists() {
                return write(
                    &d.join("cpu.weight"),
                    &weight_for_shares(shares).to_string(),
                );
            }
            if d.join("cpu.shares").exists() {
                return write(&d.join("cpu.shares"), &shares.clamp(2, 262_144).to_string());
            }
        }
        Ok(())
    }

    /// Removes the directories once no process is left in them.
    pub fn remove(&self) {
        for d in &self.dirs {
            if let Err(e) = std::fs::remove_dir(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot remove cgroup");
                }
            }
        }
    }
}

/// Joins the cgroup from a forked child (async-signal-safe: open, write, close).
///
/// # Safety
/// Only to be called between fork and exec with files from [`VmmCgroup::procs_files`].
pub unsafe fn join_from_child(procs: &[CString]) -> std::io::Result<()> {
    for p in procs {
        // SAFETY: a NUL-terminated path; the descriptor is closed before returning.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: writes two bytes from a static buffer to the descriptor opened above.
        let n = unsafe { libc::write(fd, b"0\n".as_ptr().cast(), 2) };
        let err = std::io::Error::last_os_error();
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(fd) };
        if n < 0 {
            return Err(err);
        }
    }
    Ok(())
}

fn quota_us(millis: u64) -> u64 {
    (millis * CPU_PERIOD_US / 1000).max(1000)
}

/// cpu.shares (2..262144) to cpu.weight (1..10000), as the kubelet and runc convert.
fn weight_for_shares(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn layout(mountinfo: &str, own: &str) -> Option<Layout> {
    let mut v2_mount: Option<(PathBuf, String)> = None;
    let mut v1: Vec<(PathBuf, String, Vec<String>)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let (root, mount_point) = (l[3].to_string(), PathBuf::from(l[4]));
        match r[0] {
            "cgroup2" => v2_mount = Some((mount_point, root)),
            "cgroup" => {
                let controllers = r[2]
                    .split(',')
                    .filter(|o| matches!(*o, "memory" | "cpu"))
                    .map(str::to_string)
                    .collect();
                v1.push((mount_point, root, controllers));
            }
            _ => {}
        }
    }
    let own_path = |pred: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            pred(ctrls).then(|| path.to_string())
        })
    };
    let beneath = |mount: &Path, root: &str, path: &str| -> PathBuf {
        let rel = path
            .strip_prefix(root.trim_end_matches('/'))
            .unwrap_or(path)
            .trim_start_matches('/');
        mount.join(rel)
    };
    if let Some((mount, root)) = &v2_mount {
        if let Some(path) = own_path(&|c: &str| c.is_empty()) {
            let dir = beneath(mount, root, &path);
            let available =
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            let words: Vec<&str> = available.split_whitespace().collect();
            if words.contains(&"memory") && words.contains(&"cpu") {
                return Some(Layout::V2 { dir });
            }
        }
    }
    let find = |ctrl: &str| {
        let (mount, root, _) = v1.iter().find(|(_, _, c)| c.iter().any(|x| x == ctrl))?;
        let path = own_path(&|c: &str| c.split(',').any(|x| x == ctrl))?;
        Some(beneath(mount, root, &path))
    };
    Some(Layout::V1 {
        memory: find("memory")?,
        cpu: find("cpu")?,
    })
}

fn read(p: &str) -> Result<String> {
    std::fs::read_to_string(p).map_err(|e| HypervisorError::io(format!("reading {p}"), e))
}

fn mkdir(p: &Path) -> Result<()> {
    match std::fs::create_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) => Err(HypervisorError::io(
            format!("creating cgroup {}", p.display()),
            e,
        )),
    }
}

fn write(p: &Path, value: &str) -> Result<()> {
    std::fs::write(p, value)
        .map_err(|e| HypervisorError::io(format!("writing {value:?} to {}", p.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this host's real hierarchies (the tests run as root).
    #[test]
    fn a_named_cgroup_is_where_create_put_it_and_goes_with_remove() {
        let name = format!("vm-test-{}", std::process::id());
        let made = VmmCgroup::create(&name, Limits::default()).unwrap();
        assert!(made.dirs.iter().all(|d| d.is_dir()), "{made:?}");
        let found = VmmCgroup::named(&name).unwrap();
        assert_eq!(found, made);
        found.remove();
        assert!(made.dirs.iter().all(|d| !d.exists()), "{made:?}");
        found.remove();
        assert!(VmmCgroup::named("../escape").is_err());
    }

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn v1_paths_are_beneath_the_process_own_cgroups() {
        let own = "4:memory:/process_api/abc\n3:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            layout(HYBRID, own),
            Some(Layout::V1 {
                memory: "/sys/fs/cgroup/memory/process_api/abc".into(),
                cpu: "/sys/fs/cgroup/cpu,cpuacct".into(),
            })
        );
    }

    #[test]
    fn a_mount_of_a_subtree_is_resolved_relative_to_its_root() {
        let info = "33 30 0:29 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                    34 30 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let own = "4:memory:/kubepods/pod1\n3:cpu:/x\n";
        assert_eq!(
            layout(info, own),
            Some(Layout::V1 {
                memory: "/sys/fs/cgroup/memory/pod1".into(),
                cpu: "/sys/fs/cgroup/cpu/x".into(),
            })
        );
    }

    #[test]
    fn no_controllers_no_layout() {
        let info = "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(layout(info, "0::/\n"), None);
    }

    #[test]
    fn shares_convert_as_the_kubelet_does() {
        assert_eq!(weight_for_shares(2), 1);
        assert_eq!(weight_for_shares(1024), 39);
        assert_eq!(weight_for_shares(262_144), 10_000);
        assert_eq!(quota_us(500), 50_000);
        assert_eq!(quota_us(2000), 200_000);
    }
}
