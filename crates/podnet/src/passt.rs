//! `binding: {name: passt}`: Debian's passt gives the guest the address of the namespace it
//! runs in (the pod's, or the host's) through its own DHCP, and proxies its traffic
//! through ordinary sockets. QEMU connects with
//! `-netdev stream,id=..,server=off,addr.type=unix,addr.path=<socket_path>`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{PodNetError, PortForward, Protocol, Result};

/// How to run passt for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstConfig {
    /// Namespace to run in (a pod network's `netns_path`); `None` runs in the host's.
    pub netns: Option<PathBuf>,
    /// Holds the socket and passt's log, and belongs to the user passt runs as.
    pub socket_dir: PathBuf,
    /// `(uid, gid)` passt runs as (the VM's own user, so its QEMU may connect and nobody
    /// else); `None`: `nobody`, as passt itself drops to when started as root.
    pub run_as: Option<(u32, u32)>,
    /// Ports of the namespace's address forwarded to the guest.
    pub ports: Vec<PortForward>,
    /// MTU announced by DHCP (passt's default is 65520).
    pub mtu: Option<u16>,
    /// Run passt's portable build instead of its AVX2 build (see [`DYNAMIC_LOADER`]).
    pub portable_build: bool,
}

impl PasstConfig {
    pub fn new(netns: Option<PathBuf>, socket_dir: PathBuf) -> Self {
        PasstConfig {
            netns,
            socket_dir,
            run_as: None,
            ports: Vec::new(),
            mtu: None,
            portable_build: true,
        }
    }
}

/// Debian 12's passt (0.0~git20230309) segfaults in its AVX2 build (`passt.avx2`, which
/// `passt` re-execs from `/proc/self/exe` + ".avx2" when the CPU has AVX2) on the first
/// inbound TCP connection. Started through the dynamic loader, `/proc/self/exe` is the
/// loader, the `.avx2` sibling is not found, and the portable build keeps running.
pub const DYNAMIC_LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
const PASST: &str = "/usr/bin/passt";

/// A running passt, stopped (killed) on [`Passt::stop`] or drop. It also exits by itself
/// when QEMU disconnects (`--one-off`).
#[derive(Debug)]
pub struct Passt {
    child: Child,
    socket_path: PathBuf,
    log_path: PathBuf,
}

fn passt_err(reason: String) -> PodNetError {
    PodNetError::Passt { reason }
}

fn port_list(ports: &[PortForward], proto: Protocol) -> String {
    let list: Vec<String> = ports
        .iter()
        .filter(|p| p.protocol == proto)
        .map(|p| p.port.to_string())
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(",")
    }
}

impl Passt {
    pub fn start(cfg: &PasstConfig) -> Result<Passt> {
        let dir = &cfg.socket_dir;
        let state = |source| PodNetError::State {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(state)?;
        let (uid, gid) = match cfg.run_as {
            Some((uid, gid)) => (
                nix::unistd::Uid::from_raw(uid),
                nix::unistd::Gid::from_raw(gid),
            ),
            None => {
                let nobody = nix::unistd::User::from_name("nobody")
                    .ok()
                    .flatten()
                    .ok_or_else(|| passt_err("user `nobody` does not exist".into()))?;
                (nobody.uid, nobody.gid)
            }
        };
        nix::unistd::chown(dir.as_path(), Some(uid), Some(gid)).map_err(|e| {
            PodNetError::State {
                path: dir.clone(),
                source: e.into(),
            }
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(state)?;

        let socket_path = dir.join("passt.socket");
        let log_path = dir.join("passt.log");
        let _ = fs::remove_file(&socket_path);
        let log = fs::File::create(&log_path).map_err(|source| PodNetError::State {
            path: log_path.clone(),
            source,
        })?;

        let mut cmd = if cfg.portable_build && Path::new(DYNAMIC_LOADER).exists() {
            let mut c = Command::new(DYNAMIC_LOADER);
            c.arg(PASST);
            c
        } else {
            Command::new(PASST)
        };
        cmd.arg("--runas")
            .arg(format!("{uid}:{gid}"))
            .args(["--foreground", "--stderr", "--one-off", "--socket"])
            .arg(&socket_path)
            .args(["-t", &port_list(&cfg.ports, Protocol::Tcp)])
            .args(["-u", &port_list(&cfg.ports, Protocol::Udp)]);
        if let Some(mtu) = cfg.mtu {
            cmd.args(["--mtu", &mtu.to_string()]);
        }
        if let Some(ns) = &cfg.netns {
            crate::netns::enter_netns_for_child(&mut cmd, ns)?;
        }
        let log_err = log.try_clone().map_err(|source| PodNetError::State {
            path: log_path.clone(),
            source,
        })?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = cmd.spawn().map_err(|source| PodNetError::Spawn {
            program: "passt".into(),
            source,
        })?;
        let mut passt = Passt {
            child,
            socket_path,
            log_path,
        };
        passt.wait_for_socket(Duration::from_secs(20))?;
        tracing::info!(socket = %passt.socket_path.display(), pid = passt.child.id(), "passt started");
        Ok(passt)
    }

    fn wait_for_socket(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.socket_path.exists() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = fs::read_to_string(&self.log_path).unwrap_or_default();
                return Err(passt_err(format!(
                    "exited ({status}) before listening: {}",
                    log.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(passt_err(format!(
                    "no socket at {} after {timeout:?}",
                    self.socket_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where QEMU connects.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// QEMU arguments for this NIC.
    pub fn qemu_args(&self, id: &str, mac: &crate::MacAddr) -> Vec<String> {
        vec![
            "-netdev".into(),
            format!(
                "stream,id={id},server=off,addr.type=unix,addr.path={}",
                self.socket_path.display()
            ),
            "-device".into(),
            format!("virtio-net-pci,netdev={id},mac={mac}"),
        ]
    }

    /// Stops passt and removes its socket. Idempotent.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket_path);
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_by_protocol() {
        let ports = [
            PortForward {
                protocol: Protocol::Tcp,
                port: 80,
            },
            PortForward {
                protocol: Protocol::Tcp,
                port: 443,
            },
            PortForward {
                protocol: Protocol::Udp,
                port: 53,
            },
        ];
        assert_eq!(port_list(&ports, Protocol::Tcp), "80,443");
        assert_eq!(port_list(&ports, Protocol::Udp), "53");
        assert_eq!(port_list(&[], Protocol::Tcp), "none");
    }
}
