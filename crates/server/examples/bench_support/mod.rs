//! What the whole-product benchmarks share: starting a server binary, a client, watching
//! VMs, VMIs and launcher pods to timestamp every step of each VM's start, and reading
//! process memory (RSS and PSS) from /proc.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use kubevirt_api::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase,
    VirtualMachinePrintableStatus,
};

/// The server binary: `KUBEVIRT_RS_BIN`, else `kubevirt-rs` next to this example's target dir.
pub fn server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KUBEVIRT_RS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kubevirt-rs"))
        .context("locating target dir")?;
    if !bin.exists() {
        bail!(
            "{} missing: build it first (cargo build --release -p kubevirt-rs -p kubevirt-launcher)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The number in environment variable `name`, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A VM whose guest never runs (paused, 16 MiB, no devices beyond a serial console), so a
/// benchmark measures the control plane; `cpu` is its CPU request, if any.
pub fn paused_vm(name: &str, cpu: Option<&str>) -> Result<VirtualMachine> {
    let mut vm = serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "startStrategy": "Paused",
            "domain": {
                "devices": {"autoattachPodInterface": false, "autoattachGraphicsDevice": false,
                            "autoattachMemBalloon": false},
                "memory": {"guest": "16Mi"},
                "resources": {"overcommitGuestOverhead": true}
            },
            "terminationGracePeriodSeconds": 0
        }}}
    });
    if let Some(cpu) = cpu {
        vm["spec"]["template"]["spec"]["domain"]["resources"]["requests"] =
            serde_json::json!({ "cpu": cpu });
    }
    Ok(serde_json::from_value(vm)?)
}

/// A running `kubevirt-rs server` in a data dir of its own.
pub struct BenchServer {
    pub child: Child,
    pub dir: PathBuf,
    pub client: Client,
    /// The web console's URL (`https://127.0.0.1:PORT/`).
    pub console_url: String,
}

impl BenchServer {
    pub async fn start(bin: &Path, dir: &Path) -> Result<BenchServer> {
        // VM users pass through `dir` to the run root (the data dir stays root's).
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        let data = dir.join("data");
        let mut child = Command::new(bin)
            .args([
                "server",
                "--stop-vms-on-exit",
                "--listen",
                "127.0.0.1:0",
                "--console-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data)
            .arg("--run-root")
            .arg(dir.join("run"))
            // The start bench's VMs boot from hostDisks here.
            .arg("--host-disk-dir")
            .arg(dir)
            // Launchers inherit it: their start-up lines give the bench its launcher steps.
            .env("RUST_LOG", "warn,kubevirt_launcher=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.join("server.log"))?))
            .spawn()
            .context("starting the server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut console_url = String::new();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("export KUBECONFIG=") => break,
                Some(Ok(l)) if l.starts_with("console: ") => {
                    console_url = l["console: ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                }
                Some(Ok(_)) => {}
                _ => bail!("server exited during start-up"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let kc = Kubeconfig::read_from(data.join("kubeconfig"))?;
        let client = Client::try_from(
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
        )?;
        Ok(BenchServer {
            child,
            dir: dir.to_path_buf(),
            client,
            console_url,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Deletes every VM, waits for them to go, stops the server.
    pub async fn finish(mut self) -> Result<()> {
        let vms: Api<VirtualMachine> = Api::namespaced(self.client.clone(), "default");
        let _ = vms
            .delete_collection(&Default::default(), &Default::default())
            .await;
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline && !vms.list(&Default::default()).await?.items.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        Ok(())
    }
}

/// When each step of one VM's start was seen.
#[derive(Clone, Debug, Default)]
pub struct Steps {
    pub created: Option<Instant>,
    pub vmi: Option<Instant>,
    pub pod: Option<Instant>,
    pub bound: Option<Instant>,
    pub pod_running: Option<Instant>,
    pub scheduled: Option<Instant>,
    pub vmi_running: Option<Instant>,
    pub vm_running: Option<Instant>,
    /// From the launcher's log: it got the VMI, and QEMU runs.
    pub launcher_syncing: Option<Instant>,
    pub qemu_running: Option<Instant>,
    /// The guest's first byte on its serial console.
    pub first_output: Option<Instant>,
}

pub type Timeline = Arc<Mutex<HashMap<String, Steps>>>;

fn mark(t: &Timeline, name: &str, f: impl FnOnce(&mut Steps) -> &mut Option<Instant>) {
    let mut m = t.lock().unwrap();
    let slot = f(m.entry(name.to_string()).or_default());
    slot.get_or_insert_with(Instant::now);
}

/// Watches VMs, VMIs and pods, stamping each VM's steps the first time they are seen.
pub fn watch_steps(client: &Client, t: &Timeline) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let tl = t.clone();
    tasks.push(tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(vms, Default::default()));
        while let Some(Ok(ev)) = s.next().await {
            if let watcher::Event::Apply(vm) | watcher::Event::InitApply(vm) = ev {
                let running = vm.status.as_ref().and_then(|s| s.printable_status)
                    == Some(VirtualMachinePrintableStatus::Running)
                    || vm.status.as_ref().and_then(|s| s.printable_status)
                        == Some(VirtualMachinePrintableStatus::Paused);
                if running {
                    mark(&tl, vm.metadata.name.as_deref().unwrap_or(""), |s| {
                        &mut s.vm_running
                    });
                }
            }
        }
    }));
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let tl = t.clone();
    tasks.push(tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(vmis, Default::default()));
        while let Some(Ok(ev)) = s.next().await {
            if let watcher::Event::Apply(vmi) | watcher::Event::InitApply(vmi) = ev {
                let name = vmi.metadata.name.clone().unwrap_or_default();
                mark(&tl, &name, |s| &mut s.vmi);
                match vmi.phase() {
                    VirtualMachineInstancePhase::Scheduled => {
                        mark(&tl, &name, |s| &mut s.scheduled)
                    }
                    VirtualMachineInstancePhase::Running => {
                        mark(&tl, &name, |s| &mut s.scheduled);
                        mark(&tl, &name, |s| &mut s.vmi_running)
                    }
                    _ => {}
                }
            }
        }
    }));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let tl = t.clone();
    tasks.push(tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(pods, Default::default()));
        while let Some(Ok(ev)) = s.next().await {
            if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = ev {
                let Some(vmi) = pod
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.kind == "VirtualMachineInstance")
                    .map(|o| o.name.clone())
                else {
                    continue;
                };
                mark(&tl, &vmi, |s| &mut s.pod);
                if pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
                {
                    mark(&tl, &vmi, |s| &mut s.bound);
                }
                if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                    mark(&tl, &vmi, |s| &mut s.pod_running);
                }
            }
        }
    }));
    tasks
}

/// Reads launcher logs and serial logs under `run_root` into the timeline: when each
/// launcher got its VMI and had QEMU running (log timestamps), and the guest's first output
/// (polled until every VM has some, or `until`).
pub async fn launcher_steps(run_root: &Path, t: &Timeline, until: Instant) {
    let wall0 = SystemTime::now();
    let mono0 = Instant::now();
    let to_instant = |ts: &str| -> Option<Instant> {
        let ts: jiff::Timestamp = ts.parse().ok()?;
        let wall = SystemTime::UNIX_EPOCH + Duration::from_nanos(ts.as_nanosecond() as u64);
        match wall0.duration_since(wall) {
            Ok(ago) => mono0.checked_sub(ago),
            Err(e) => Some(mono0 + e.duration()),
        }
    };
    loop {
        let mut missing = 0;
        for e in std::fs::read_dir(run_root).into_iter().flatten().flatten() {
            let dir = e.path();
            let Some(name) = std::fs::read(dir.join("vmi.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.pointer("/metadata/name")?.as_str().map(str::to_string))
            else {
                continue;
            };
            let have = t.lock().unwrap().get(&name).cloned().unwrap_or_default();
            if have.first_output.is_none() {
                if std::fs::metadata(dir.join("serial.log")).is_ok_and(|m| m.len() > 0) {
                    mark(t, &name, |s| &mut s.first_output);
                } else {
                    missing += 1;
                }
            }
            if have.qemu_running.is_none() {
                let log = std::fs::read_to_string(dir.join("launcher.log")).unwrap_or_default();
                for line in log.lines() {
                    let plain = strip_ansi(line);
                    let ts = plain.split_whitespace().next().unwrap_or("");
                    if plain.contains("starting the VM") {
                        if let Some(i) = to_instant(ts) {
                            t.lock()
                                .unwrap()
                                .entry(name.clone())
                                .or_default()
                                .launcher_syncing = Some(i);
                        }
                    }
                    if plain.contains("VM running") {
                        if let Some(i) = to_instant(ts) {
                            t.lock()
                                .unwrap()
                                .entry(name.clone())
                                .or_default()
                                .qemu_running = Some(i);
                        }
                    }
                }
            }
        }
        if missing == 0 || Instant::now() > until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// p50 and p95 in milliseconds of `to - from` over the VMs that have both.
pub fn step(
    t: &HashMap<String, Steps>,
    from: fn(&Steps) -> Option<Instant>,
    to: fn(&Steps) -> Option<Instant>,
) -> (f64, f64, usize) {
    let mut v: Vec<f64> = t
        .values()
        .filter_map(|s| Some(to(s)?.saturating_duration_since(from(s)?).as_secs_f64() * 1000.0))
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (percentile(&v, 50.0), percentile(&v, 95.0), v.len())
}

/// One line of the breakdown: label, from which step, to which step.
type Row = (
    &'static str,
    fn(&Steps) -> Option<Instant>,
    fn(&Steps) -> Option<Instant>,
);

/// Prints the start of each VM step by step (p50/p95 of each step, in ms).
pub fn print_breakdown(t: &HashMap<String, Steps>) {
    let rows: [Row; 9] = [
        (
            "VM created -> VMI created (VM controller)",
            |s| s.created,
            |s| s.vmi,
        ),
        (
            "VMI -> launcher pod created (VMI controller)",
            |s| s.vmi,
            |s| s.pod,
        ),
        ("pod created -> bound (scheduler)", |s| s.pod, |s| s.bound),
        (
            "bound -> pod Running (node agent starts the launcher)",
            |s| s.bound,
            |s| s.pod_running,
        ),
        (
            "pod Running -> VMI Scheduled (VMI controller)",
            |s| s.pod_running,
            |s| s.scheduled,
        ),
        (
            "Scheduled -> launcher has the VMI (node agent sync)",
            |s| s.scheduled,
            |s| s.launcher_syncing,
        ),
        (
            "launcher has the VMI -> QEMU running (disks, network, QEMU start)",
            |s| s.launcher_syncing,
            |s| s.qemu_running,
        ),
        (
            "QEMU running -> VMI Running -> VM Running (status push, VM controller)",
            |s| s.qemu_running,
            |s| s.vm_running,
        ),
        (
            "QEMU running -> first guest output on the serial console",
            |s| s.qemu_running,
            |s| s.first_output,
        ),
    ];
    println!(
        "  {:<72} {:>8} {:>8} {:>5}",
        "step", "p50 ms", "p95 ms", "VMs"
    );
    for (label, from, to) in rows {
        let (p50, p95, n) = step(t, from, to);
        if n > 0 {
            println!("  {label:<72} {p50:>8.0} {p95:>8.0} {n:>5}");
        }
    }
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// RSS and PSS of a process, in KiB.
pub fn rss_pss_kib(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field_kib(&rollup, "Rss:"), field_kib(&rollup, "Pss:"))
}

/// CPU time of a process so far (user + system).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the ")".
    let ticks: u64 = fields
        .get(11)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Processes whose command line mentions `needle`, with their command line.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Launcher processes under this bench's directory, with RSS and PSS in KiB.
pub fn launchers(dir: &Path) -> Vec<(u32, u64, u64)> {
    processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("kubevirt-launcher ") || cmd.contains(" launcher "))
        .map(|(pid, _)| {
            let (rss, pss) = rss_pss_kib(pid);
            (pid, rss, pss)
        })
        .collect()
}
