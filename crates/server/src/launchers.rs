//! The node agent's `LauncherOps` over real launcher processes (`kubevirt-launcher`).
//!
//! A launcher is started as `<this binary> launcher --vmi ... --run-dir ...`; it forks a
//! daemon in its own session (so it outlives the server) and the spawned process exits once
//! the VM runs or with the reason it could not start. Its run directory is the record: a live
//! `launcher.pid` plus the socket while it runs, `final-state.json` after it ended.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubevirt_handler::error::{HandlerError, Result};
use kubevirt_handler::ops::{
    BoxFuture, BoxStream, Command, DomainReport, DomainState, InterfaceReport, LauncherOps, VmiKey,
};
use kubevirt_launcher::{live_pid, FinalState, LauncherClient, LauncherState, Phase, RunDir};
use serde_json::Value;

pub struct Launchers {
    pub run_root: PathBuf,
    /// Root for per-VM persistent state (EFI vars, TPM).
    pub persistent_root: PathBuf,
    pub exe: PathBuf,
    /// Passed to every launcher (registry mirrors, cache dir, ...).
    pub extra_args: Vec<String>,
    /// Start-up failures reported by launchers that exited before the VM ran.
    failures: Arc<Mutex<HashMap<String, String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn launcher_err(key: &VmiKey, e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Launcher {
        vmi: key.to_string(),
        reason: e.to_string(),
    }
}

/// qemu-guest-agent's `guest-get-osinfo` keys (`kernel-release`) in upstream's VMI
/// `guestOSInfo` casing (`kernelRelease`).
pub fn guest_os_info_to_status(info: &Value) -> Value {
    let Some(map) = info.get("return").unwrap_or(info).as_object() else {
        return info.clone();
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        let mut key = String::new();
        let mut upper = false;
        for c in k.chars() {
            if c == '-' || c == '_' {
                upper = true;
            } else if upper {
                key.extend(c.to_uppercase());
                upper = false;
            } else {
                key.push(c);
            }
        }
        out.insert(key, v.clone());
    }
    Value::Object(out)
}

/// The reason in a failed launcher's stderr: its `Error:` line, else a panic message, else
/// the last line.
pub fn launcher_failure_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find_map(|l| l.strip_prefix("Error: "))
        .or_else(|| lines.iter().find(|l| l.contains("panicked at")).copied())
        .or_else(|| lines.last().copied())
        .unwrap_or("launcher exited during start-up")
        .to_string()
}

pub fn report_from_state(s: &LauncherState) -> DomainReport {
    let state = match s.phase {
        Phase::Starting => DomainState::Starting,
        Phase::Running => DomainState::Running,
        Phase::Paused => DomainState::Paused,
        Phase::ShuttingDown => DomainState::Stopping,
        Phase::Succeeded => DomainState::Succeeded,
        Phase::Failed => DomainState::Failed,
    };
    let tcg = s.accelerator.kind.as_str() != "kvm";
    DomainReport {
        state,
        software_emulation: tcg.then(|| s.accelerator.reason.clone()),
        interfaces: s
            .interfaces
            .iter()
            .map(|i| InterfaceReport {
                name: i.name.clone(),
                mac: i.mac.clone(),
                ip_addresses: i.ip_address.iter().cloned().collect(),
                interface_name: None,
            })
            .collect(),
        guest_os_info: s.guest_os_info.as_ref().map(guest_os_info_to_status),
        agent_connected: s.guest_os_info.is_some(),
        message: s.reason.clone(),
    }
}

fn report_from_final(f: &FinalState) -> DomainReport {
    DomainReport {
        state: if f.phase == Phase::Succeeded {
            DomainState::Succeeded
        } else {
            DomainState::Failed
        },
        software_emulation: None,
        interfaces: vec![],
        guest_os_info: None,
        agent_connected: false,
        message: Some(f.reason.clone()),
    }
}

impl Launchers {
    pub fn new(
        run_root: PathBuf,
        persistent_root: PathBuf,
        exe: PathBuf,
        extra_args: Vec<String>,
    ) -> Self {
        Launchers {
            run_root,
            persistent_root,
            exe,
            extra_args,
            failures: Arc::default(),
        }
    }

    pub fn run_dir(&self, key: &VmiKey) -> RunDir {
        RunDir::for_vmi(&self.run_root, &key.namespace, &key.name, &key.uid)
    }

    fn client(&self, key: &VmiKey) -> Result<LauncherClient> {
        let rd = self.run_dir(key);
        if live_pid(&rd.pid_file()).is_none() {
            return Err(HandlerError::NotRunning {
                vmi: key.to_string(),
            });
        }
        Ok(LauncherClient::for_run_dir(&rd))
    }

    async fn report_inner(&self, key: &VmiKey) -> Result<Option<DomainReport>> {
        if let Some(message) = lock(&self.failures).get(&key.uid).cloned() {
            return Ok(Some(DomainReport {
                state: DomainState::Failed,
                software_emulation: None,
                interfaces: vec![],
                guest_os_info: None,
                agent_connected: false,
                message: Some(message),
            }));
        }
        let rd = self.run_dir(key);
        if !rd.path().exists() {
            return Ok(None);
        }
        if live_pid(&rd.pid_file()).is_some() {
            let client = LauncherClient::for_run_dir(&rd);
            return Ok(Some(
                match tokio::time::timeout(Duration::from_secs(5), client.state()).await {
                    Ok(Ok(s)) => report_from_state(&s),
                    // Alive but not answering yet (preparing disks, booting).
                    _ => DomainReport {
                        state: DomainState::Starting,
                        software_emulation: None,
                        interfaces: vec![],
                        guest_os_info: None,
                        agent_connected: false,
                        message: None,
                    },
                },
            ));
        }
        let fin = std::fs::read(rd.final_state())
            .ok()
            .and_then(|b| serde_json::from_slice::<FinalState>(&b).ok());
        Ok(fin.as_ref().map(report_from_final))
    }

    async fn start_inner(&self, key: &VmiKey, vmi: &Value, secrets: &Value) -> Result<()> {
        let rd = self.run_dir(key);
        if live_pid(&rd.pid_file()).is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(rd.path()).map_err(|source| HandlerError::Io {
            path: rd.path().to_path_buf(),
            source,
        })?;
        let vmi_file = rd.vmi_file();
        let body = serde_json::to_vec(vmi).map_err(|e| launcher_err(key, e))?;
        std::fs::write(&vmi_file, body).map_err(|source| HandlerError::Io {
            path: vmi_file.clone(),
            source,
        })?;
        let persistent = self
            .persistent_root
            .join(format!("{}_{}", key.namespace, key.name));
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("launcher")
            .arg("--vmi")
            .arg(&vmi_file)
            .arg("--run-dir")
            .arg(rd.path())
            .arg("--persistent-dir")
            .arg(&persistent)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Keep Ctrl-C on the server's terminal away from the launcher.
            .process_group(0);
        if secrets.as_object().is_some_and(|m| !m.is_empty()) {
            // Readable by root only; removed with the run directory.
            let secrets_file = rd.path().join("secrets.json");
            let body = serde_json::to_vec(secrets).map_err(|e| launcher_err(key, e))?;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&secrets_file)
                .and_then(|mut f| f.write_all(&body))
                .map_err(|source| HandlerError::Io {
                    path: secrets_file.clone(),
                    source,
                })?;
            cmd.arg("--secrets-file").arg(&secrets_file);
        }
        let child = cmd
            .spawn()
            .map_err(|e| launcher_err(key, format!("spawning {}: {e}", self.exe.display())))?;
        let failures = self.failures.clone();
        let uid = key.uid.clone();
        let name = key.to_string();
        tokio::spawn(async move {
            match child.wait_with_output().await {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let msg = launcher_failure_message(&stderr);
                    tracing::error!(vmi = %name, %msg, "launcher failed to start the VM");
                    lock(&failures).insert(uid, msg);
                }
                Err(e) => {
                    lock(&failures).insert(uid, format!("waiting for the launcher: {e}"));
                }
            }
        });
        Ok(())
    }

    /// Stops every running launcher under the run root and waits for them to exit.
    pub async fn stop_all(&self, grace_seconds: u64) {
        let infos = kubevirt_launcher::discover(&self.run_root).await;
        let mut waiting = Vec::new();
        for info in infos.into_iter().filter(|i| i.pid.is_some()) {
            let client = LauncherClient::for_run_dir(&info.run_dir);
            if let Err(error) = client.stop(Some(grace_seconds)).await {
                tracing::warn!(%error, dir = %info.run_dir.path().display(), "could not stop launcher");
            }
            waiting.push(info.run_dir);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace_seconds + 15);
        while tokio::time::Instant::now() < deadline
            && waiting.iter().any(|rd| live_pid(&rd.pid_file()).is_some())
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl LauncherOps for Launchers {
    fn report<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<Option<DomainReport>>> {
        Box::pin(self.report_inner(key))
    }

    fn start<'a>(
        &'a self,
        key: &'a VmiKey,
        vmi: &'a Value,
        secrets: &'a Value,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.start_inner(key, vmi, secrets))
    }

    fn stop<'a>(&'a self, key: &'a VmiKey, grace_seconds: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let client = self.client(key)?;
            client
                .stop(Some(grace_seconds))
                .await
                .map_err(|e| launcher_err(key, e))
        })
    }

    fn command<'a>(&'a self, key: &'a VmiKey, command: Command) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let client = self.client(key)?;
            match command {
                Command::Pause => client.pause().await,
                Command::Unpause => client.unpause().await,
                Command::Reset => client.reset().await,
                Command::SoftReboot => client.soft_reboot().await,
            }
            .map_err(|e| launcher_err(key, e))
        })
    }

    fn guest_os_info<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<Value>> {
        Box::pin(async move {
            let client = self.client(key)?;
            let info = client
                .guest_osinfo()
                .await
                .map_err(|e| launcher_err(key, e))?;
            Ok(guest_os_info_to_status(&info))
        })
    }

    fn console<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<BoxStream>> {
        Box::pin(async move {
            let client = self.client(key)?;
            let s = client.console().await.map_err(|e| launcher_err(key, e))?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn vnc<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<BoxStream>> {
        Box::pin(async move {
            let client = self.client(key)?;
            let s = client.vnc().await.map_err(|e| launcher_err(key, e))?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn forget<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            lock(&self.failures).remove(&key.uid);
            let rd = self.run_dir(key);
            if live_pid(&rd.pid_file()).is_none() && rd.path().exists() {
                std::fs::remove_dir_all(rd.path()).map_err(|source| HandlerError::Io {
                    path: rd.path().to_path_buf(),
                    source,
                })?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failure_message_prefers_the_error_line() {
        let stderr = "INFO starting\nError: volume root: path x: not accepted\n\nStack backtrace:\n  20: _start\n";
        assert_eq!(
            launcher_failure_message(stderr),
            "volume root: path x: not accepted"
        );
        assert_eq!(launcher_failure_message("a\nb\n"), "b");
        assert_eq!(
            launcher_failure_message(""),
            "launcher exited during start-up"
        );
    }

    #[test]
    fn guest_os_info_keys_are_camel_cased() {
        let v = guest_os_info_to_status(
            &json!({"kernel-release": "6.1", "pretty-name": "x", "id": "kubevirt-rs-guest"}),
        );
        assert_eq!(
            v,
            json!({"kernelRelease": "6.1", "prettyName": "x", "id": "kubevirt-rs-guest"})
        );
    }
}
