//! swtpm (software TPM 2.0) helper process, started before and stopped after QEMU.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::TpmConfig;
use crate::error::{HypervisorError, Result};

/// A running swtpm.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    cfg: TpmConfig,
}

impl Swtpm {
    /// Starts swtpm for `cfg` and waits until its control socket exists.
    pub fn start(
        cfg: &TpmConfig,
        die_with_parent: bool,
        owner: Option<(u32, u32)>,
    ) -> Result<Swtpm> {
        // A swtpm from a crashed run holds a lock on the state directory.
        kill_from_pid_file(&cfg.pid_file);
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| HypervisorError::io(format!("creating {}", cfg.state_dir.display()), e))?;
        let _ = std::fs::remove_file(&cfg.socket);
        let mut cmd = Command::new("swtpm");
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", cfg.state_dir.display()))
            .arg("--ctrl")
            .arg(match owner {
                // Only the VM's QEMU may connect.
                Some((uid, gid)) => format!(
                    "type=unixio,path={},mode=0600,uid={uid},gid={gid}",
                    cfg.socket.display()
                ),
                None => format!("type=unixio,path={}", cfg.socket.display()),
            })
            .arg("--pid")
            .arg(format!("file={}", cfg.pid_file.display()))
            .arg("--terminate")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if die_with_parent {
            set_pdeathsig(&mut cmd);
        }
        let mut child = cmd.spawn().map_err(|e| HypervisorError::Spawn {
            program: "swtpm".into(),
            source: e,
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cfg.socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(HypervisorError::EarlyExit {
                    program: "swtpm".into(),
                    status: status.to_string(),
                    stderr: stderr.trim().to_string(),
                });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HypervisorError::Timeout {
                    what: format!("swtpm socket {}", cfg.socket.display()),
                    seconds: 10.0,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Nobody reads stderr from here on; drop the pipe so swtpm never blocks on it.
        drop(child.stderr.take());
        Ok(Swtpm {
            child,
            cfg: cfg.clone(),
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops swtpm (SIGTERM, then SIGKILL) and removes its socket and pid file.
    pub fn stop(mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.cfg.socket);
        let _ = std::fs::remove_file(&self.cfg.pid_file);
    }
}

/// Kills the swtpm whose pid is in `pid_file`, if that process is still a swtpm.
pub fn kill_from_pid_file(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(raw) = text.trim().parse::<i32>() else {
        return;
    };
    if raw <= 1 {
        return;
    }
    let comm = std::fs::read_to_string(format!("/proc/{raw}/comm")).unwrap_or_default();
    if comm.trim() != "swtpm" {
        let _ = std::fs::remove_file(pid_file);
        return;
    }
    tracing::warn!(pid = raw, "killing left-over swtpm");
    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Path::new(&format!("/proc/{raw}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Makes the child receive SIGKILL when the spawning thread exits.
pub(crate) fn set_pdeathsig(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
