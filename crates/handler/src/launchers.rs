//! The launcher processes of this node: one per launcher pod, started here (as a kubelet
//! starts a pod's container) or adopted after a restart, and followed through their status
//! stream (`GET /v1/watch`): every change the launcher pushes lands in its [`Launcher`]
//! entry at once and wakes the pod and VMI reconcilers. Nothing here polls.
//!
//! Run directory of a pod's launcher: `<run root>/<pod uid>/`.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use kubevirt_api::v1::VirtualMachineInstance;
use kubevirt_launcher::{final_status, live_pid, LauncherClient, LauncherStatus, RunDir, Stage};
use tokio::sync::{mpsc, watch};

use crate::error::{HandlerError, Result};

/// Identity of a launcher pod and of the VMI it runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub vmi_name: String,
    pub vmi_uid: String,
    /// The pod is a migration target (`kubevirt.io/migrationJobUID`).
    pub migration_target: bool,
}

/// How the launcher process ended (the `compute` container's termination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub finished_at: Timestamp,
    /// For a failure: the end of the launcher's log, as a kubelet reports it for
    /// `terminationMessagePolicy: FallbackToLogsOnError`.
    pub message: Option<String>,
}

/// The last 80 lines (at most 2048 bytes) of a log, as the kubelet's fallback message.
pub fn log_tail(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let start = text.len().saturating_sub(2048);
    let tail = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = tail.lines().collect();
    let keep = lines[lines.len().saturating_sub(80)..].join("\n");
    (!keep.trim().is_empty()).then_some(keep)
}

/// What is known of one launcher; cheap to clone out.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub pid: Option<u32>,
    pub started_at: Timestamp,
    /// The last status the launcher pushed (None until its socket answered).
    pub status: Option<LauncherStatus>,
    pub exit: Option<Exit>,
}

/// One launcher process and the latest word from it.
pub struct Launcher {
    pub key: PodKey,
    pub run_dir: RunDir,
    pub client: LauncherClient,
    observed: watch::Sender<Observed>,
}

impl Launcher {
    pub fn observed(&self) -> Observed {
        self.observed.borrow().clone()
    }

    /// The launcher has finished (its process exited).
    pub fn exited(&self) -> bool {
        self.observed.borrow().exit.is_some()
    }

    /// Sends `signal` to the launcher process if it still runs.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.observed().pid.filter(|_| !self.exited()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }
}

/// Where launchers live on this node and how they are started.
#[derive(Clone, Debug)]
pub struct LauncherConfig {
    pub run_root: PathBuf,
    /// Root for per-VM persistent state (EFI vars, TPM): `<root>/<ns>_<vmi name>`.
    pub persistent_root: PathBuf,
    /// How to run a launcher: the program and its leading arguments (`kubevirt-launcher`, or
    /// `kubevirt-rs launcher`).
    pub command: Vec<std::ffi::OsString>,
    /// Passed to every launcher (registry mirrors, cache dir, ...).
    pub extra_args: Vec<String>,
}

/// Wakes the reconcilers that care about a launcher's change.
#[derive(Clone)]
pub struct Notify {
    pub pods: mpsc::UnboundedSender<ObjectRef<Pod>>,
    pub vmis: mpsc::UnboundedSender<ObjectRef<VirtualMachineInstance>>,
}

impl Notify {
    fn send(&self, key: &PodKey) {
        let _ = self
            .pods
            .send(ObjectRef::new(&key.name).within(&key.namespace));
        let _ = self
            .vmis
            .send(ObjectRef::new(&key.vmi_name).within(&key.namespace));
    }
}

/// The launchers of this node, by pod UID.
pub struct Launchers {
    pub config: LauncherConfig,
    map: Mutex<HashMap<String, Arc<Launcher>>>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this small map leaves it consistent; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Launchers {
    pub fn new(config: LauncherConfig, notify: Notify) -> Self {
        Launchers {
            config,
            map: Mutex::new(HashMap::new()),
            notify,
        }
    }

    /// Wakes the reconcilers of `key`'s pod and VMI (a probe result changed).
    pub fn notify(&self, key: &PodKey) {
        self.notify.send(key);
    }

    pub fn run_dir(&self, key: &PodKey) -> RunDir {
        RunDir::for_uid(&self.config.run_root, &key.uid)
    }

    pub fn get(&self, pod_uid: &str) -> Option<Arc<Launcher>> {
        lock(&self.map).get(pod_uid).cloned()
    }

    /// The launcher of the pod `namespace/name`.
    pub fn by_pod(&self, namespace: &str, name: &str) -> Option<Arc<Launcher>> {
        lock(&self.map)
            .values()
            .find(|l| l.key.namespace == namespace && l.key.name == name)
            .cloned()
    }

    /// The launcher running `vmi`'s guest here: the pod its migration state names (the
    /// source until a migration completed, then the target), else the VMI's launcher that is
    /// not a migration target: the one not yet exited, else the newest.
    pub fn guest(&self, vmi: &VirtualMachineInstance) -> Option<Arc<Launcher>> {
        let vmi_uid = vmi.metadata.uid.as_deref().unwrap_or_default();
        let map = lock(&self.map);
        if let Some(pod) = kubevirt_api::migration::guest_pod(vmi) {
            return map
                .values()
                .find(|l| l.key.vmi_uid == vmi_uid && l.key.name == pod)
                .cloned();
        }
        let mut found: Vec<&Arc<Launcher>> = map
            .values()
            .filter(|l| l.key.vmi_uid == vmi_uid && !l.key.migration_target)
            .collect();
        found.sort_by_key(|l| (!l.exited(), l.observed().started_at));
        found.last().map(|l| (*l).clone())
    }

    /// Every launcher entry (for shutdown).
    pub fn all(&self) -> Vec<Arc<Launcher>> {
        lock(&self.map).values().cloned().collect()
    }

    /// Whether [`Launchers::ensure`] would start a new process for `key`: none known, none
    /// running from before a restart, none finished.
    pub fn would_start(&self, key: &PodKey) -> bool {
        if lock(&self.map).contains_key(&key.uid) {
            return false;
        }
        let run_dir = self.run_dir(key);
        live_pid(&run_dir.pid_file()).is_none() && final_status(&run_dir).is_none()
    }

    /// The launcher of `key`: the known one, else one still running from before a restart
    /// (adopted), else what a finished one left behind, else a new process when `start`
    /// gives the disks of the pod's claims (claim name -> disk file).
    pub fn ensure(
        &self,
        key: &PodKey,
        start: Option<&[(String, PathBuf)]>,
    ) -> Result<Option<Arc<Launcher>>> {
        // Held throughout: two reconciles of one pod must not both start a launcher.
        let mut map = lock(&self.map);
        if let Some(l) = map.get(&key.uid) {
            return Ok(Some(l.clone()));
        }
        let run_dir = self.run_dir(key);
        let pid = live_pid(&run_dir.pid_file());
        let (child, pid, started_at) = match pid {
            Some(pid) => {
                tracing::info!(pod = %key.name, pid, "adopting a running launcher");
                (None, Some(pid), Timestamp::now())
            }
            None if final_status(&run_dir).is_some() => (None, None, Timestamp::now()),
            None if start.is_some() => {
                let child = self.spawn(key, &run_dir, start.unwrap_or_default())?;
                let pid = child.id();
                (Some(child), pid, Timestamp::now())
            }
            None => return Ok(None),
        };
        let launcher = Arc::new(Launcher {
            key: key.clone(),
            client: LauncherClient::for_run_dir(&run_dir),
            run_dir,
            observed: watch::Sender::new(Observed {
                pid,
                started_at,
                status: None,
                exit: None,
            }),
        });
        map.insert(key.uid.clone(), launcher.clone());
        tokio::spawn(follow(launcher.clone(), child, self.notify.clone()));
        Ok(Some(launcher))
    }

    fn spawn(
        &self,
        key: &PodKey,
        run_dir: &RunDir,
        claims: &[(String, PathBuf)],
    ) -> Result<tokio::process::Child> {
        let io = |source| HandlerError::Io {
            path: run_dir.path().to_path_buf(),
            source,
        };
        // Private to root: the VMI, its logs and sockets are nobody else's business (the
        // launcher later lets the VM's own user pass through to its QEMU's directory).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir.path())
            .map_err(io)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(run_dir.launcher_log())
            .map_err(io)?;
        let log2 = log.try_clone().map_err(io)?;
        let persistent = self
            .config
            .persistent_root
            .join(format!("{}_{}", key.namespace, key.vmi_name));
        let (program, leading) =
            self.config
                .command
                .split_first()
                .ok_or_else(|| HandlerError::Launcher {
                    vmi: format!("{}/{}", key.namespace, key.vmi_name),
                    reason: "no launcher command configured".into(),
                })?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(leading)
            .args([
                "--namespace",
                &key.namespace,
                "--name",
                &key.vmi_name,
                "--uid",
                &key.vmi_uid,
            ])
            .arg("--run-dir")
            .arg(run_dir.path())
            .arg("--persistent-dir")
            .arg(&persistent)
            .args(&self.config.extra_args)
            .args(
                claims.iter().flat_map(|(name, disk)| {
                    ["--claim".into(), format!("{name}={}", disk.display())]
                }),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Its own process group: Ctrl-C on the server's terminal does not reach it, and
            // it outlives the server (the next one adopts it).
            .process_group(0);
        let child = cmd.spawn().map_err(|e| HandlerError::Launcher {
            vmi: format!("{}/{}", key.namespace, key.vmi_name),
            reason: format!("spawning {}: {e}", program.to_string_lossy()),
        })?;
        tracing::info!(pod = %key.name, pid = ?child.id(), "launcher started");
        Ok(child)
    }

    /// Cleans up after pods that are gone while this node agent was down (or whose store was
    /// wiped), as the kubelet cleans up after orphaned pods: a run directory no pod accounts
    /// for (`has_pod(uid)` false) is removed, and a launcher still running there is stopped
    /// first (SIGTERM: it stops its guest within the grace period; SIGKILL to its process
    /// group after [`ORPHAN_STOP_TIMEOUT`]). A VM nobody asked for must not keep its disks
    /// and memory. The run root belongs to this node agent alone.
    pub fn remove_orphans(&self, has_pod: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.config.run_root) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(uid) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Under the lock `ensure` holds while it creates a run directory and starts its
            // launcher, so a launcher being started now is in the map.
            let map = lock(&self.map);
            if map.contains_key(&uid) || has_pod(&uid) || !entry.path().is_dir() {
                continue;
            }
            let run_dir = RunDir::for_uid(&self.config.run_root, &uid);
            tokio::spawn(stop_and_remove(run_dir));
        }
    }

    /// Forgets a launcher whose pod is gone and removes its run directory.
    pub fn remove(&self, pod_uid: &str) {
        let Some(l) = lock(&self.map).remove(pod_uid) else {
            return;
        };
        if live_pid(&l.run_dir.pid_file()).is_none() && l.run_dir.path().exists() {
            if let Err(e) = std::fs::remove_dir_all(l.run_dir.path()) {
                tracing::warn!(dir = %l.run_dir.path().display(), error = %e, "cannot remove run directory");
            }
        }
    }
}

/// How long an orphaned launcher gets to stop its guest before it is killed.
pub const ORPHAN_STOP_TIMEOUT: Duration = Duration::from_secs(60);

async fn stop_and_remove(run_dir: RunDir) {
    let dir = run_dir.path().display().to_string();
    if let Some(pid) = live_pid(&run_dir.pid_file()) {
        tracing::warn!(dir, pid, "a launcher runs without a pod; stopping it");
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + ORPHAN_STOP_TIMEOUT;
        while live_pid(&run_dir.pid_file()).is_some() {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(dir, "orphaned launcher did not stop; killing it");
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    match std::fs::remove_dir_all(run_dir.path()) {
        Ok(()) => tracing::info!(dir, "removed the run directory of a pod that is gone"),
        Err(e) => tracing::warn!(dir, error = %e, "cannot remove run directory"),
    }
}

/// Follows one launcher until it exits: connects to its status stream (retrying while it
/// comes up), records every status it pushes, and when the stream ends for good records the
/// exit code (from the process, or for an adopted launcher from how the VM ended).
async fn follow(launcher: Arc<Launcher>, child: Option<tokio::process::Child>, notify: Notify) {
    let adopted = child.is_none();
    let mut exited = Box::pin(async move {
        match child {
            Some(mut c) => c.wait().await.ok().and_then(|s| s.code()).unwrap_or(137),
            None => futures::future::pending().await,
        }
    });
    let publish = |f: &dyn Fn(&mut Observed)| {
        launcher.observed.send_modify(|o| f(o));
        notify.send(&launcher.key);
    };
    if launcher.observed().pid.is_none() {
        // A launcher that had finished before we came: its record is all there is.
        let last = final_status(&launcher.run_dir);
        let code = last.as_ref().map_or(1, clean_exit_code);
        let message = (code != 0)
            .then(|| log_tail(&launcher.run_dir.launcher_log()))
            .flatten();
        publish(&|o| {
            o.status = last.clone();
            o.exit = Some(Exit {
                code,
                finished_at: Timestamp::now(),
                message: message.clone(),
            });
        });
        return;
    }
    let mut delay = Duration::from_millis(5);
    let code = 'outer: loop {
        let watch = tokio::select! {
            code = &mut exited => break 'outer Some(code),
            w = launcher.client.watch() => w,
        };
        match watch {
            Ok(stream) => {
                delay = Duration::from_millis(5);
                let mut stream = std::pin::pin!(stream);
                loop {
                    let item = tokio::select! {
                        code = &mut exited => break 'outer Some(code),
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(status)) => {
                            let ended = status.stage == Stage::Exited;
                            publish(&|o| o.status = Some(status.clone()));
                            if ended && adopted {
                                break 'outer None;
                            }
                        }
                        Some(Err(_)) | None => break,
                    }
                }
            }
            Err(_) if adopted && live_pid(&launcher.run_dir.pid_file()).is_none() => break None,
            Err(_) => {}
        }
        tokio::select! {
            code = &mut exited => break Some(code),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(500));
    };
    // An adopted launcher is not our child: wait for it to go, then judge by its record.
    if code.is_none() {
        while live_pid(&launcher.run_dir.pid_file()).is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let last = final_status(&launcher.run_dir).or_else(|| launcher.observed().status);
    let code = code.unwrap_or_else(|| last.as_ref().map_or(1, clean_exit_code));
    tracing::info!(pod = %launcher.key.name, code, "launcher exited");
    let message = (code != 0)
        .then(|| log_tail(&launcher.run_dir.launcher_log()))
        .flatten();
    publish(&|o| {
        if last.is_some() {
            o.status = last.clone();
        }
        o.exit = Some(Exit {
            code,
            finished_at: Timestamp::now(),
            message: message.clone(),
        });
    });
}

/// The exit code a launcher gave for `status` (see `kubevirt_launcher::run`).
fn clean_exit_code(status: &LauncherStatus) -> i32 {
    use kubevirt_hypervisor::ExitReason;
    let clean = status.failure.is_none()
        && (status.stop_requested
            || status.exit.as_ref().is_some_and(|e| {
                matches!(
                    e.reason,
                    ExitReason::GuestShutdown | ExitReason::HostRequest
                )
            })
            || (status.exit.is_none() && status.stage != Stage::Started));
    if clean {
        0
    } else {
        1
    }
}
