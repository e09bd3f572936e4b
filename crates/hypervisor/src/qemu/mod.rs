//! QEMU backend: spawns `qemu-system-x86_64` and drives it over QMP.

pub mod argv;
mod blockmig;
pub mod cgroup;
pub mod fds;
mod hotplug;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::accel::{detect_accelerator, Accelerator};
use crate::config::*;
use crate::error::{HypervisorError, Result};
use crate::qmp::{self, EventLog, QmpClient};
use crate::swtpm::{self, Swtpm};
use crate::{Domain, Hypervisor};

/// Default emulator binary (looked up in `PATH`).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The QEMU hypervisor.
#[derive(Debug, Clone)]
pub struct QemuHypervisor {
    binary: PathBuf,
    accel: Accelerator,
}

impl QemuHypervisor {
    /// Uses `qemu-system-x86_64` and the detected accelerator.
    pub fn new() -> Self {
        Self::with_accelerator(detect_accelerator())
    }

    /// Uses a given accelerator (tests, operator overrides).
    pub fn with_accelerator(accel: Accelerator) -> Self {
        QemuHypervisor {
            binary: PathBuf::from(QEMU_BINARY),
            accel,
        }
    }

    /// Uses another emulator binary.
    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }
}

impl Default for QemuHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Hypervisor for QemuHypervisor {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accelerator(&self) -> &Accelerator {
        &self.accel
    }

    fn create_domain(&self, cfg: DomainConfig) -> Result<Box<dyn Domain>> {
        argv::validate(&cfg)?;
        Ok(Box::new(QemuDomain {
            cfg,
            accel: self.accel.clone(),
            binary: self.binary.clone(),
            runtime: Mutex::new(None),
            shared: Arc::new(Shared::default()),
            disks: Mutex::new(hotplug::Disks::default()),
            mirrors: Mutex::new(Vec::new()),
        }))
    }
}

/// State shared with the reaper thread.
#[derive(Default)]
struct Shared {
    exit: Mutex<Option<ExitInfo>>,
    exited: Condvar,
    events: Mutex<Option<Arc<EventLog>>>,
    /// Installed on the event log once QMP is up.
    hook: Mutex<Option<crate::EventHook>>,
    swtpm: Mutex<Option<Swtpm>>,
}

struct Running {
    pid: u32,
    qmp: Arc<QmpClient>,
}

/// A QEMU domain.
pub struct QemuDomain {
    cfg: DomainConfig,
    accel: Accelerator,
    binary: PathBuf,
    runtime: Mutex<Option<Running>>,
    shared: Arc<Shared>,
    /// Hot-plugged disks and changed media; held across each QMP sequence.
    disks: Mutex<hotplug::Disks>,
    /// The disks (by index) an outgoing block migration mirrors.
    mirrors: Mutex<Vec<usize>>,
}

impl QemuDomain {
    fn exited(&self) -> bool {
        self.shared
            .exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn qmp(&self) -> Result<Arc<QmpClient>> {
        let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        match rt.as_ref() {
            Some(r) if !self.exited() => Ok(r.qmp.clone()),
            _ => Err(HypervisorError::NotRunning {
                name: self.cfg.name.clone(),
            }),
        }
    }

    /// Files QEMU opens by path itself (firmware code), and the UEFI variable store's
    /// first copy. Disks, kernels and logs are opened in [`fds::Passed::open`].
    fn check_files(&self) -> Result<()> {
        if let Firmware::Uefi {
            code,
            vars_template,
            vars_path,
            ..
        } = &self.cfg.firmware
        {
            if !code.exists() {
                return Err(HypervisorError::MissingFile {
                    what: "UEFI firmware",
                    path: code.clone(),
                });
            }
            if !vars_path.exists() {
                if !vars_template.exists() {
                    return Err(HypervisorError::MissingFile {
                        what: "UEFI variable store template",
                        path: vars_template.clone(),
                    });
                }
                std::fs::copy(vars_template, vars_path).map_err(|e| {
                    HypervisorError::io(format!("creating UEFI vars {}", vars_path.display()), e)
                })?;
            }
        }
        Ok(())
    }

    fn sockets(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cfg.qmp_socket.clone()];
        if let Some(s) = &self.cfg.serial {
            v.push(s.socket.clone());
        }
        v.extend(self.cfg.vnc_socket.iter().cloned());
        v.extend(self.cfg.qga_socket.iter().cloned());
        v
    }

    fn launch(&self, incoming: Option<&str>) -> Result<()> {
        let mut rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if rt.is_some() {
            return Err(HypervisorError::InvalidState {
                name: self.cfg.name.clone(),
                reason: "already started (a domain is started once)".into(),
            });
        }
        self.check_files()?;
        let passed = fds::Passed::open(&self.cfg)?;
        let args = argv::build_argv(&self.cfg, &self.accel, incoming.is_some(), &passed.refs)?;
        for s in self.sockets() {
            let _ = std::fs::remove_file(s);
        }
        if let Some(tpm) = &self.cfg.tpm {
            let owner = self.cfg.confinement.as_ref().map(|c| (c.uid, c.gid));
            let sw = Swtpm::start(tpm, self.cfg.die_with_parent, owner)?;
            *self.shared.swtpm.lock().unwrap_or_else(|p| p.into_inner()) = Some(sw);
        }
        match self.spawn(&args, incoming, &passed) {
            Ok(r) => {
                *rt = Some(r);
                Ok(())
            }
            Err(e) => {
                if let Some(sw) = self
                    .shared
                    .swtpm
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    sw.stop();
                }
                Err(e)
            }
        }
    }

    fn spawn(
        &self,
        args: &[String],
        incoming: Option<&str>,
        passed: &fds::Passed,
    ) -> Result<Running> {
        let program = self.binary.to_string_lossy().to_string();
        let mut cmd = Command::new(&self.binary);
        cmd.args(args).stdin(Stdio::null());
        let log = match &self.cfg.log_file {
            Some(p) => {
                let f = File::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| HypervisorError::io(format!("opening {}", p.display()), e))?;
                let start = f.metadata().map(|m| m.len()).unwrap_or(0);
                let f2 = f
                    .try_clone()
                    .map_err(|e| HypervisorError::io("duplicating log file", e))?;
                cmd.stdout(f).stderr(f2);
                Some((p.clone(), start))
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::piped());
                None
            }
        };
        let netns: Option<OwnedFd> = match &self.cfg.netns {
            Some(p) => Some(
                File::open(p)
                    .map_err(|e| HypervisorError::io(format!("opening netns {}", p.display()), e))?
                    .into(),
            ),
            None => None,
        };
        let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        let die_with_parent = self.cfg.die_with_parent;
        let inherited = passed.inherited();
        let cgroup = self.create_cgroup();
        let cgroup_procs = cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default();
        let ids = self
            .cfg
            .confinement
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.clone()));
        // SAFETY: the closure runs between fork and exec; it only makes async-signal-safe
        // system calls (setns, fcntl, open/write/close, setgroups, setresgid, setresuid,
        // prctl) on descriptors and buffers prepared before the fork, which stay alive in
        // the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for &fd in &inherited {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                cgroup::join_from_child(&cgroup_procs)?;
                if let Some((uid, gid, groups)) = &ids {
                    // Groups first: once the user changes, nothing else may.
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setresgid(*gid, *gid, *gid) != 0
                        || libc::setresuid(*uid, *uid, *uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if die_with_parent
                    && libc::prctl(
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
        tracing::debug!(program, ?args, "starting QEMU");
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.remove();
                }
                return Err(HypervisorError::Spawn {
                    program: program.clone(),
                    source: e,
                });
            }
        };
        drop(netns);
        let pid = child.id();
        let stderr_pipe = child.stderr.take();
        let stderr_buf = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = stderr_pipe {
            let buf = stderr_buf.clone();
            let name = self.cfg.name.clone();
            let _ = std::thread::Builder::new()
                .name("qemu-stderr".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    for line in BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        tracing::warn!(domain = %name, "qemu: {line}");
                        let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                        if b.len() < 8192 {
                            b.push_str(&line);
                            b.push('\n');
                        }
                    }
                });
        }
        // Reaper: waits for the process, classifies the exit and releases helpers.
        let shared = self.shared.clone();
        let socks = self.sockets();
        std::thread::Builder::new()
            .name("qemu-reaper".into())
            .stack_size(128 * 1024)
            .spawn({
                let cgroup = cgroup.clone();
                move || reap(child, shared, socks, cgroup)
            })
            .map_err(|e| HypervisorError::io("spawning reaper thread", e))?;

        let shared = self.shared.clone();
        let early_exit = |shared: &Shared| -> Result<()> {
            let exit = shared
                .exit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match exit {
                None => Ok(()),
                Some(info) => {
                    // Give the stderr reader a moment to collect the last words.
                    std::thread::sleep(Duration::from_millis(50));
                    let stderr = match &log {
                        Some((p, start)) => read_tail(p, *start),
                        None => stderr_buf.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    };
                    Err(HypervisorError::EarlyExit {
                        program: program.clone(),
                        status: format!("{info:?}"),
                        stderr: stderr.trim().to_string(),
                    })
                }
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let connected = QmpClient::connect(&self.cfg.qmp_socket, deadline, || early_exit(&shared));
        let qmp = match connected {
            Ok(q) => Arc::new(q),
            Err(e) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = self.wait_exit(Some(Duration::from_secs(5)));
                early_exit(&shared)?;
                return Err(e);
            }
        };
        let events = qmp.events();
        if let Some(hook) = self
            .shared
            .hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            events.set_hook(hook);
        }
        *self.shared.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(events);
        if let Some(uri) = incoming {
            if let Err(e) = self.listen_for_migration(&qmp, uri) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                return Err(e);
            }
        }
        // QEMU starts at full weight (starting it is on the VM's critical path, and booting
        // guests must not slow the next one's start); once it answers, it takes the
        // domain's CPU weight: its cgroup's, or without one a nice value on its threads
        // (threads it creates later inherit it from the main thread).
        if let Some(shares) = self.cfg.cpu_shares {
            match &cgroup {
                Some(cg) => {
                    if let Err(error) = cg.set_cpu_shares(shares) {
                        tracing::warn!(domain = %self.cfg.name, %error, "cannot set the CPU weight");
                    }
                }
                None => renice_threads(pid, nice_for_shares(shares)),
            }
        }
        if self.cfg.balloon {
            // The guest's balloon driver reports its memory statistics this often; QEMU
            // keeps the last report for `stats`. Ten seconds, as upstream's default.
            let set = qmp.execute_raw(
                "qom-set",
                serde_json::json!({
                    "path": BALLOON_PATH,
                    "property": "guest-stats-polling-interval",
                    "value": BALLOON_STATS_PERIOD_SECS,
                }),
            );
            if let Err(error) = set {
                tracing::warn!(domain = %self.cfg.name, %error, "cannot ask the balloon for the guest's memory statistics");
            }
        }
        tracing::info!(domain = %self.cfg.name, pid, qemu = %qmp.version, accel = self.accel.kind.as_str(), "QEMU started");
        Ok(Running { pid, qmp })
    }

    /// Makes a VMM started with `-incoming defer` listen on `uri`: migration events on,
    /// post-copy allowed when the host lets QEMU's user have it (the source decides whether
    /// to use it), and a failed migration leaves QEMU up to report why.
    fn listen_for_migration(&self, qmp: &QmpClient, uri: &str) -> Result<()> {
        qmp.execute(&qmp::MigrateSetCapabilities::of(&[("events", true)]))?;
        match postcopy_possible(self.cfg.confinement.as_ref()) {
            Ok(()) => {
                let caps = qmp::MigrateSetCapabilities::of(&[("postcopy-ram", true)]);
                if let Err(error) = qmp.execute(&caps) {
                    tracing::warn!(domain = %self.cfg.name, %error, "post-copy is not available to this VMM");
                }
            }
            Err(reason) => {
                tracing::debug!(domain = %self.cfg.name, reason, "no post-copy into this VMM")
            }
        }
        qmp.execute(&qmp::MigrateIncoming {
            uri: uri.to_string(),
            exit_on_error: false,
        })?;
        Ok(())
    }

    /// The VMM's cgroup, when the domain is confined. A host where cgroups cannot be
    /// created runs the VM without one, and says so.
    fn create_cgroup(&self) -> Option<cgroup::VmmCgroup> {
        let c = self.cfg.confinement.as_ref()?;
        let limits = cgroup::Limits {
            memory_bytes: c.memory_limit_bytes,
            cpu_millis: c.cpu_limit_millis,
        };
        match cgroup::VmmCgroup::create(&c.cgroup, limits) {
            Ok(cg) => Some(cg),
            Err(error) => {
                tracing::warn!(domain = %self.cfg.name, %error, "running the VM without a cgroup: its memory and CPU are not bounded");
                None
            }
        }
    }

    fn signal(&self, sig: Signal) {
        let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = rt.as_ref() {
            // The reaper has not collected the process yet, so the pid is still ours.
            if !self.exited() {
                let _ = kill(Pid::from_raw(r.pid as i32), sig);
            }
        }
    }
}

fn read_tail(p: &Path, start: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(p) {
        let _ = f.seek(SeekFrom::Start(start));
        let _ = f.take(8192).read_to_string(&mut s);
    }
    s
}

fn reap(
    mut child: std::process::Child,
    shared: Arc<Shared>,
    sockets: Vec<PathBuf>,
    cgroup: Option<cgroup::VmmCgroup>,
) {
    let status = child.wait();
    if let Some(cg) = &cgroup {
        cg.remove();
    }
    // QEMU sends SHUTDOWN before it exits; let the QMP reader see the end of the stream.
    let events = shared
        .events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(ev) = &events {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !ev.is_closed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let last_shutdown = events.as_ref().and_then(|e| e.last("SHUTDOWN"));
    let panicked = events
        .as_ref()
        .is_some_and(|e| e.last("GUEST_PANICKED").is_some());
    let info = match status {
        Ok(st) => {
            let code = st.code();
            let signal = st.signal();
            let reason = if signal.is_some() {
                ExitReason::Killed
            } else if code != Some(0) || panicked {
                ExitReason::Crashed
            } else if last_shutdown
                .as_ref()
                .and_then(|e| e.data.get("guest"))
                .and_then(Value::as_bool)
                == Some(true)
            {
                ExitReason::GuestShutdown
            } else {
                ExitReason::HostRequest
            };
            ExitInfo {
                reason,
                exit_code: code,
                signal,
            }
        }
        Err(_) => ExitInfo {
            reason: ExitReason::Crashed,
            exit_code: None,
            signal: None,
        },
    };
    tracing::info!(?info, "QEMU exited");
    if let Some(sw) = shared
        .swtpm
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        sw.stop();
    }
    for s in sockets {
        let _ = std::fs::remove_file(s);
    }
    *shared.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
    shared.exited.notify_all();
}

/// The kernel scheduler's weight of each nice level, -20..=19 (`sched_prio_to_weight`).
const NICE_WEIGHTS: [u64; 40] = [
    88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916, 9548, 7620, 6100, 4904,
    3906, 3121, 2501, 1991, 1586, 1277, 1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87,
    70, 56, 45, 36, 29, 23, 18, 15,
];

/// Sets the nice level of every thread of process `pid`.
fn renice_threads(pid: u32, nice: i32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        if let Ok(tid) = t.file_name().to_string_lossy().parse::<libc::id_t>() {
            // SAFETY: setpriority(2) on a thread id; no memory is passed.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid, nice);
            }
        }
    }
}

/// The nice level whose scheduler weight is closest to `shares`, never above an ordinary
/// process's priority (0) and at most 19.
pub fn nice_for_shares(shares: u64) -> i32 {
    let best = (20..40)
        .min_by_key(|&i| NICE_WEIGHTS[i].abs_diff(shares))
        .unwrap_or(20);
    best as i32 - 20
}

fn map_status(status: &str) -> DomainState {
    match status {
        "running" | "colo" => DomainState::Running,
        "inmigrate" => DomainState::Incoming,
        "postmigrate" => DomainState::Migrated,
        "shutdown" => DomainState::Shutdown,
        "guest-panicked" | "internal-error" => DomainState::Crashed,
        // paused, suspended, debug, io-error, watchdog, prelaunch, finish-migrate, save-vm, ...
        _ => DomainState::Paused,
    }
}

/// The balloon device's QOM path (`id=balloon0` in the arguments).
const BALLOON_PATH: &str = "/machine/peripheral/balloon0";
/// Seconds between the guest's balloon statistics reports.
const BALLOON_STATS_PERIOD_SECS: u64 = 10;

/// Resident set (KiB) and user and system CPU time (ns) of process `pid`.
fn proc_stats(pid: u32) -> (u64, u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    let (user, system) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: u64 = f.get(11)?.parse().ok()?;
            let st: u64 = f.get(12)?.parse().ok()?;
            // SAFETY: sysconf has no memory-safety preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            Some((ut * 1_000_000_000 / hz, st * 1_000_000_000 / hz))
        })
        .unwrap_or((0, 0));
    (rss, user, system)
}

/// Time a thread ran and waited to run, in nanoseconds (`/proc/PID/task/TID/schedstat`).
fn thread_schedstat(pid: u32, tid: i64) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// The disk name of a `query-blockstats` entry: its device's `ua-NAME` id.
fn disk_name(qdev: &str, device: &str) -> Option<String> {
    let id = if qdev.is_empty() { device } else { qdev };
    id.split('/')
        .find_map(|part| part.strip_prefix("ua-"))
        .map(str::to_string)
}

/// The guest's balloon report, when the driver sent one (`qom-get ... guest-stats`).
fn guest_memory(qmp: &QmpClient) -> Option<GuestMemoryStats> {
    let v = qmp
        .execute_raw(
            "qom-get",
            serde_json::json!({"path": BALLOON_PATH, "property": "guest-stats"}),
        )
        .ok()?;
    // No report yet: `last-update` is 0 and every value -1.
    if v["last-update"].as_u64().unwrap_or(0) == 0 {
        return None;
    }
    let stat = |key: &str| v["stats"][key].as_i64().and_then(|n| u64::try_from(n).ok());
    Some(GuestMemoryStats {
        total_bytes: stat("stat-total-memory"),
        free_bytes: stat("stat-free-memory"),
        available_bytes: stat("stat-available-memory"),
        disk_caches_bytes: stat("stat-disk-caches"),
        swap_in_bytes: stat("stat-swap-in"),
        swap_out_bytes: stat("stat-swap-out"),
        major_faults: stat("stat-major-faults"),
        minor_faults: stat("stat-minor-faults"),
    })
}

impl Domain for QemuDomain {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn config(&self) -> &DomainConfig {
        &self.cfg
    }

    fn start(&self) -> Result<()> {
        self.launch(None)
    }

    fn prepare_incoming(&self, uri: &str) -> Result<()> {
        self.launch(Some(uri))
    }

    fn pid(&self) -> Option<u32> {
        if self.exited() {
            return None;
        }
        let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        rt.as_ref().map(|r| r.pid)
    }

    fn pause(&self) -> Result<()> {
        self.qmp()?.execute(&qmp::Stop).map(|_| ())
    }

    fn resume(&self) -> Result<()> {
        self.qmp()?.execute(&qmp::Cont).map(|_| ())
    }

    fn acpi_shutdown(&self) -> Result<()> {
        self.qmp()?.execute(&qmp::SystemPowerdown).map(|_| ())
    }

    fn stop(&self) -> Result<()> {
        let started = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !started || self.exited() {
            return Ok(());
        }
        if let Ok(q) = self.qmp() {
            // QEMU may close the socket before answering `quit`; the exit is what counts.
            let _ = q.execute(&qmp::Quit);
        }
        if self.wait_exit(Some(Duration::from_secs(5)))?.is_none() {
            tracing::warn!(domain = %self.cfg.name, "QEMU ignored quit; killing it");
            self.signal(Signal::SIGKILL);
            if self.wait_exit(Some(Duration::from_secs(10)))?.is_none() {
                return Err(HypervisorError::Timeout {
                    what: format!("QEMU of {} to exit after SIGKILL", self.cfg.name),
                    seconds: 10.0,
                });
            }
        }
        Ok(())
    }

    fn reset(&self) -> Result<()> {
        self.qmp()?.execute(&qmp::SystemReset).map(|_| ())
    }

    fn state(&self) -> Result<DomainState> {
        if self.exited() {
            return Ok(DomainState::Exited);
        }
        if self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Ok(DomainState::Defined);
        }
        match self.qmp()?.execute(&qmp::QueryStatus) {
            Ok(st) => Ok(map_status(&st.status)),
            Err(_) if self.exited() => Ok(DomainState::Exited),
            Err(e) => Err(e),
        }
    }

    fn stats(&self) -> Result<DomainStats> {
        let q = self.qmp()?;
        let cpus = q.execute(&qmp::QueryCpusFast)?;
        let blocks = q.execute(&qmp::QueryBlockstats)?;
        let pid = self.pid();
        let (vmm_rss_kib, vmm_user_ns, vmm_system_ns) = pid.map(proc_stats).unwrap_or((0, 0, 0));
        let memory = MemoryStats {
            domain_bytes: self.cfg.memory_mib * 1024 * 1024,
            balloon_actual_bytes: self
                .cfg
                .balloon
                .then(|| q.execute(&qmp::QueryBalloon).ok().map(|b| b.actual))
                .flatten(),
            guest: self.cfg.balloon.then(|| guest_memory(&q)).flatten(),
        };
        Ok(DomainStats {
            vcpus: cpus
                .into_iter()
                .map(|c| {
                    let sched = pid.and_then(|p| thread_schedstat(p, c.thread_id));
                    VcpuStats {
                        index: c.cpu_index,
                        thread_id: c.thread_id,
                        run_ns: sched.map(|s| s.0),
                        delay_ns: sched.map(|s| s.1),
                    }
                })
                .collect(),
            block: blocks
                .into_iter()
                .filter_map(|b| {
                    let name = disk_name(&b.qdev, &b.device)?;
                    let s = b.stats;
                    Some(BlockStats {
                        name,
                        rd_bytes: s.rd_bytes,
                        wr_bytes: s.wr_bytes,
                        rd_operations: s.rd_operations,
                        wr_operations: s.wr_operations,
                        flush_operations: s.flush_operations,
                        rd_total_time_ns: s.rd_total_time_ns,
                        wr_total_time_ns: s.wr_total_time_ns,
                        flush_total_time_ns: s.flush_total_time_ns,
                    })
                })
                .collect(),
            memory,
            vmm_rss_kib,
            vmm_user_ns,
            vmm_system_ns,
        })
    }

    fn migrate_out(&self, to: MigrationTarget, params: &MigrationParams) -> Result<()> {
        let qmp = self.qmp()?;
        qmp.execute(&qmp::MigrateSetCapabilities::of(&[
            ("events", true),
            ("auto-converge", params.auto_converge),
            ("postcopy-ram", params.post_copy),
            ("pause-before-switchover", params.pause_before_switchover),
        ]))?;
        qmp.execute(&qmp::MigrateSetParameters {
            max_bandwidth: Some(params.max_bandwidth.unwrap_or(0)),
            downtime_limit: Some(
                params
                    .downtime_limit_ms
                    .unwrap_or(MigrationParams::DEFAULT_DOWNTIME_LIMIT_MS),
            ),
        })?;
        let uri = match to {
            MigrationTarget::Uri(uri) => uri,
            MigrationTarget::Connected(fd) => {
                // QEMU takes the descriptor out of the monitor's table when `migrate` uses
                // it; ours closes when `fd` drops.
                qmp.execute_with_fd(
                    &qmp::GetFd {
                        fdname: MIGRATION_FD_NAME.into(),
                    },
                    std::os::fd::AsFd::as_fd(&fd),
                )?;
                format!("fd:{MIGRATION_FD_NAME}")
            }
        };
        qmp.execute(&qmp::Migrate { uri }).map(|_| ())
    }

    fn migrate_cancel(&self) -> Result<()> {
        self.qmp()?.execute(&qmp::MigrateCancel).map(|_| ())
    }

    fn set_migration_downtime_limit(&self, ms: u64) -> Result<()> {
        self.qmp()?
            .execute(&qmp::MigrateSetParameters {
                downtime_limit: Some(ms),
                ..Default::default()
            })
            .map(|_| ())
    }

    fn export_disks(&self, socket: &Path, disks: &[String]) -> Result<()> {
        blockmig::export(&*self.qmp()?, &self.cfg, socket, disks)
    }

    fn stop_disk_exports(&self) -> Result<()> {
        blockmig::stop_exports(&*self.qmp()?)
    }

    fn mirror_disks(&self, targets: Vec<(String, OwnedFd)>, timeout: Duration) -> Result<()> {
        let mut mirrors = self.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        if !mirrors.is_empty() {
            return Err(HypervisorError::InvalidState {
                name: self.cfg.name.clone(),
                reason: "the disks are being mirrored already".into(),
            });
        }
        *mirrors = blockmig::mirror(&*self.qmp()?, &self.cfg, targets, timeout)?;
        Ok(())
    }

    fn finish_disk_mirrors(&self) -> Result<()> {
        let qmp = self.qmp()?;
        let disks = std::mem::take(&mut *self.mirrors.lock().unwrap_or_else(|p| p.into_inner()));
        blockmig::finish(&qmp, &self.cfg, &disks, Duration::from_secs(60))?;
        qmp.execute(&qmp::MigrateContinue {
            state: "pre-switchover".into(),
        })
        .map(|_| ())
    }

    fn abort_disk_mirrors(&self) {
        let disks = std::mem::take(&mut *self.mirrors.lock().unwrap_or_else(|p| p.into_inner()));
        if let (false, Ok(qmp)) = (disks.is_empty(), self.qmp()) {
            blockmig::abort(&qmp, &disks);
        }
    }

    fn migrate_start_postcopy(&self) -> Result<()> {
        self.qmp()?.execute(&qmp::MigrateStartPostcopy).map(|_| ())
    }

    fn migration_status(&self) -> Result<MigrationStatus> {
        let qmp = self.qmp()?;
        let m = qmp.execute(&qmp::QueryMigrate)?;
        let p = qmp.execute(&qmp::QueryMigrateParameters)?;
        Ok(MigrationStatus {
            status: m.status.unwrap_or_else(|| "none".into()),
            total_time_ms: m.total_time,
            downtime_ms: m.downtime,
            ram_transferred: m.ram.as_ref().map(|r| r.transferred),
            ram_remaining: m.ram.as_ref().map(|r| r.remaining),
            ram_total: m.ram.as_ref().map(|r| r.total),
            dirty_rate_bytes: m
                .ram
                .as_ref()
                .map(|r| r.dirty_pages_rate.saturating_mul(r.page_size)),
            transfer_rate_bytes: m
                .ram
                .as_ref()
                .map(|r| (r.mbps.max(0.0) * 1_000_000.0 / 8.0) as u64),
            downtime_limit_ms: p.downtime_limit,
            error: m.error_desc,
        })
    }

    fn guest_agent(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let Some(sock) = &self.cfg.qga_socket else {
            return Err(HypervisorError::InvalidState {
                name: self.cfg.name.clone(),
                reason: "no guest agent channel configured".into(),
            });
        };
        if self.pid().is_none() {
            return Err(HypervisorError::NotRunning {
                name: self.cfg.name.clone(),
            });
        }
        crate::qga::guest_agent_command(sock, command, arguments, timeout)
    }

    fn attach_disk(&self, disk: &HotplugDisk, image: &DiskImage) -> Result<AttachedDisk> {
        let qmp = self.qmp()?;
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        disks.attach(&qmp, &self.cfg, disk, image)
    }

    fn detach_disk(&self, name: &str, timeout: Duration) -> Result<()> {
        let qmp = self.qmp()?;
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        disks.detach(&qmp, &self.cfg, name, timeout)
    }

    fn resize_disk(&self, name: &str, size_bytes: u64) -> Result<()> {
        let qmp = self.qmp()?;
        let disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        disks.resize(&qmp, &self.cfg, name, size_bytes)
    }

    fn change_medium(&self, name: &str, image: Option<&DiskImage>) -> Result<()> {
        let qmp = self.qmp()?;
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        disks.change_medium(&qmp, &self.cfg, name, image)
    }

    fn wait_exit(&self, timeout: Option<Duration>) -> Result<Option<ExitInfo>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.shared.exit.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(info) = g.as_ref() {
                return Ok(Some(info.clone()));
            }
            match deadline {
                None => {
                    g = self
                        .shared
                        .exited
                        .wait(g)
                        .unwrap_or_else(|p| p.into_inner());
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    g = match self.shared.exited.wait_timeout(g, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            }
        }
    }

    fn events(&self) -> Vec<DomainEvent> {
        match self
            .shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(e) => e.snapshot(),
            None => Vec::new(),
        }
    }

    fn wait_event(&self, name: &str, after: usize, timeout: Duration) -> Option<DomainEvent> {
        let ev = self
            .shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        ev.wait_for(name, after, timeout)
    }

    fn events_since(&self, after: usize) -> (Vec<DomainEvent>, usize) {
        match self
            .shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(e) => e.since(after),
            None => (Vec::new(), after),
        }
    }

    fn set_event_hook(&self, hook: crate::EventHook) {
        *self.shared.hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook.clone());
        if let Some(e) = self
            .shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            e.set_hook(hook);
        }
    }
}

impl Drop for QemuDomain {
    fn drop(&mut self) {
        // A dropped domain must not leave a VMM behind.
        if self.pid().is_some() {
            let _ = self.stop();
        }
    }
}

/// The name an outgoing migration's connected stream gets in QEMU's monitor.
const MIGRATION_FD_NAME: &str = "migration";

const USERFAULTFD_DEVICE: &str = "/dev/userfaultfd";

/// Whether a VMM running as `confinement`'s user (without one: as this process's) can
/// receive a post-copy migration. The receiving QEMU needs userfaultfd, which Linux gives
/// an unprivileged process only when `vm.unprivileged_userfaultfd` is 1 or through
/// read-write access to `/dev/userfaultfd` (which QEMU tries first). The error says why not.
pub fn postcopy_possible(confinement: Option<&Confinement>) -> std::result::Result<(), String> {
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    if sysctl {
        return Ok(());
    }
    let (uid, gid, groups) = match confinement {
        Some(c) => (c.uid, c.gid, c.groups.clone()),
        None => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
            nix::unistd::getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.as_raw())
                .collect(),
        ),
    };
    let device_open = std::fs::metadata(USERFAULTFD_DEVICE).is_ok_and(|md| {
        use std::os::unix::fs::MetadataExt;
        read_write_for(md.uid(), md.gid(), md.mode(), uid, gid, &groups)
    });
    if device_open {
        return Ok(());
    }
    Err(format!(
        "userfaultfd is not available to the VMM's user {uid}: vm.unprivileged_userfaultfd \
         is 0 and {USERFAULTFD_DEVICE} is not open to it"
    ))
}

/// Whether a file owned by `owner:group` with `mode` may be opened read-write by
/// `uid`/`gid`/`groups` (root: always).
fn read_write_for(owner: u32, group: u32, mode: u32, uid: u32, gid: u32, groups: &[u32]) -> bool {
    let bits = if uid == 0 {
        return true;
    } else if owner == uid {
        mode >> 6
    } else if group == gid || groups.contains(&group) {
        mode >> 3
    } else {
        mode
    };
    bits & 0o6 == 0o6
}

/// Kills a left-over swtpm recorded in `pid_file` (after a crash of the supervisor).
pub fn kill_stale_swtpm(pid_file: &Path) {
    swtpm::kill_from_pid_file(pid_file);
}

#[cfg(test)]
mod tests {
    use super::{nice_for_shares, read_write_for};

    #[test]
    fn userfaultfd_device_access_follows_the_mode_bits() {
        // Debian's default: root's alone.
        assert!(!read_write_for(0, 0, 0o20600, 1000, 1000, &[]));
        assert!(read_write_for(0, 0, 0o20600, 0, 0, &[]));
        // A group the VMM's user is given.
        assert!(read_write_for(0, 36, 0o20660, 1000, 1000, &[36]));
        assert!(!read_write_for(0, 36, 0o20640, 1000, 1000, &[36]));
        assert!(!read_write_for(0, 36, 0o20660, 1000, 1000, &[]));
        assert!(read_write_for(0, 0, 0o20666, 1000, 1000, &[]));
    }

    #[test]
    fn shares_map_to_the_nearest_nice_level_never_above_normal() {
        assert_eq!(nice_for_shares(1024), 0);
        assert_eq!(
            nice_for_shares(4096),
            0,
            "never more than an ordinary process"
        );
        assert_eq!(nice_for_shares(102), 10, "100m, as Kubernetes maps it");
        assert_eq!(nice_for_shares(409), 4);
        assert_eq!(nice_for_shares(1), 19);
    }
}
