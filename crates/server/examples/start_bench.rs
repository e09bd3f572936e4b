//! Benchmark (prints numbers, asserts nothing): create-to-Running latency p50/p95 for N
//! small VMs created 100 ms apart (default 50), and the whole process tree's memory per
//! running VM excluding guest RAM.
//!
//! `cargo build --release -p kubevirt-rs && cargo run --release -p kubevirt-rs --example bench`
//! (as root; `BENCH_VMS=10` for fewer VMs). Upstream KubeVirt's p50 is ~15-25 s.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

const GUEST_MIB: u64 = 128;

fn vm_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<kubevirt_api::v1::VirtualMachine>(&())
}

fn server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KUBEVIRT_RS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench -> target/<profile>/kubevirt-rs
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kubevirt-rs"))
        .context("locating target dir")?;
    if !bin.exists() {
        bail!(
            "{} missing: build it first (cargo build [--release] -p kubevirt-rs)",
            bin.display()
        );
    }
    Ok(bin)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// RSS of a QEMU process minus the resident part of its guest-RAM mapping.
fn qemu_overhead_kib(pid: u32, guest_kib: u64) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| kib(&s, "VmRSS:"))
        .unwrap_or(0);
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut guest_rss = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        if line.starts_with("Size:") {
            in_guest = kib(line, "Size:") == guest_kib;
        } else if in_guest && line.starts_with("Rss:") {
            guest_rss += kib(line, "Rss:");
            in_guest = false;
        }
    }
    (rss, rss.saturating_sub(guest_rss))
}

fn processes_mentioning(needles: &[String]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().any(|n| cmd.contains(n.as_str())) {
            out.push((pid, cmd));
        }
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::var("BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let bin = server_binary()?;
    let guests = kubevirt_testenv::guests();
    let tmp = tempfile::Builder::new().prefix("kvrs-bench").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");

    let mut server = Command::new(&bin)
        .args([
            "server",
            "--stop-vms-on-exit",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the server")?;
    let stdout = server.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("export KUBECONFIG=") => break,
            Some(Ok(_)) => {}
            _ => bail!("server exited during start-up"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let kc = Kubeconfig::read_from(data.join("kubeconfig"))?;
    let client =
        Client::try_from(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;
    let vms: Api<DynamicObject> = Api::namespaced_with(client, "default", &vm_resource());

    println!(
        "creating {n} VMs ({GUEST_MIB} MiB guest each), 100 ms apart, using {}",
        bin.display()
    );
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    let mut next = Instant::now();
    let poll = |vms: Api<DynamicObject>| async move {
        let list = vms.list(&ListParams::default()).await?;
        anyhow::Ok(
            list.items
                .into_iter()
                .filter(|vm| {
                    vm.data
                        .pointer("/status/printableStatus")
                        .and_then(|v| v.as_str())
                        == Some("Running")
                })
                .filter_map(|vm| vm.metadata.name)
                .collect::<Vec<_>>(),
        )
    };
    let mut i = 0;
    while running.len() < n {
        if i < n && Instant::now() >= next {
            let name = format!("bench-{i:03}");
            let disk = dir.join(format!("{name}.qcow2"));
            // A full copy: launchers refuse qcow2 images with a backing file as base images.
            std::fs::copy(&guests.disk_qcow2, &disk).context("copying the guest disk")?;
            let vm: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                "metadata": {"name": name},
                "spec": {"runStrategy": "Always", "template": {"spec": {
                    "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                               "memory": {"guest": format!("{GUEST_MIB}Mi")}},
                    "terminationGracePeriodSeconds": 5,
                    "volumes": [{"name": "root", "hostDisk": {"path": disk, "type": "Disk"}}]
                }}}
            }))?;
            vms.create(&PostParams::default(), &vm).await?;
            created.insert(name, Instant::now());
            i += 1;
            next += Duration::from_millis(100);
        }
        for name in poll(vms.clone()).await? {
            running.entry(name).or_insert_with(Instant::now);
        }
        if start.elapsed() > Duration::from_secs(900) {
            println!("gave up after 15 min with {} of {n} running", running.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lat: Vec<f64> = running
        .iter()
        .filter_map(|(k, t)| created.get(k).map(|c| t.duration_since(*c).as_secs_f64()))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "create-to-Running over {} VMs: p50 {:.2} s, p95 {:.2} s, max {:.2} s (all {n} running after {:.1} s)",
        lat.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 95.0),
        lat.last().copied().unwrap_or(f64::NAN),
        start.elapsed().as_secs_f64()
    );

    // Memory: the server, every launcher and every QEMU of these VMs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let needles = vec![dir.display().to_string()];
    let procs = processes_mentioning(&needles);
    let guest_kib = GUEST_MIB * 1024;
    let (mut server_kib, mut launcher_kib, mut qemu_kib, mut qemu_over_kib, mut other_kib) =
        (0, 0, 0, 0, 0);
    let (mut nl, mut nq) = (0, 0);
    for (pid, cmd) in &procs {
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| kib(&s, "VmRSS:"))
            .unwrap_or(0);
        if cmd.starts_with("qemu-system") {
            let (r, o) = qemu_overhead_kib(*pid, guest_kib);
            qemu_kib += r;
            qemu_over_kib += o;
            nq += 1;
        } else if cmd.contains(" launcher ") {
            launcher_kib += rss;
            nl += 1;
        } else if cmd.contains(" server ") {
            server_kib += rss;
        } else {
            other_kib += rss;
        }
    }
    let per_vm =
        (server_kib + launcher_kib + qemu_over_kib + other_kib) as f64 / n.max(1) as f64 / 1024.0;
    println!(
        "memory: server {:.1} MiB; {nl} launchers {:.1} MiB ({:.2} MiB each); {nq} QEMUs {:.1} MiB RSS, {:.1} MiB without guest RAM ({:.1} MiB each); other {:.1} MiB",
        server_kib as f64 / 1024.0,
        launcher_kib as f64 / 1024.0,
        launcher_kib as f64 / 1024.0 / nl.max(1) as f64,
        qemu_kib as f64 / 1024.0,
        qemu_over_kib as f64 / 1024.0,
        qemu_over_kib as f64 / 1024.0 / nq.max(1) as f64,
        other_kib as f64 / 1024.0,
    );
    println!(
        "memory per running VM excluding guest RAM (whole process tree / {n}): {per_vm:.1} MiB"
    );

    println!("cleaning up");
    for vm in vms.list(&ListParams::default()).await?.items {
        if let Some(name) = vm.metadata.name {
            vms.delete(&name, &DeleteParams::default()).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline && !vms.list(&ListParams::default()).await?.items.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let _ = server.wait();
    Ok(())
}
