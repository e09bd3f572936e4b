//! Embedded vs cluster mode, same run (prints numbers, asserts nothing): N VMs (default 50)
//! created 100 ms apart (`BENCH_INTERVAL_MS`), first against `kubevirt-rs server`, then
//! against real Kubernetes components (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler from `scripts/build-k8s.sh`) with kubevirt-rs installed and its
//! virt-api, one virt-controller and one virt-handler running as processes. The VMs are
//! scale_bench's: paused 16 MiB guests, so the control plane is what is measured.
//!
//! Reports create-to-Running (VMI) p50/p95 for each mode with the step breakdown, and the
//! control plane's memory (RSS and PSS, launchers and QEMU excluded) idle and with the VMs.
//! Each VM requests 10m of CPU: kube-scheduler fits pods by their requests (upstream's
//! default, 100m per vCPU, fits 20 VMs on this 2-core host); the embedded scheduler does
//! not count CPU.
//!
//! `cargo build --release -p kubevirt-rs -p kubevirt-launcher --bins --examples &&
//!  target/release/examples/cluster_bench` (as root). `BENCH_VMS=20` for fewer.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bench_support::*;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kubevirt_api::v1::VirtualMachine;
use kubevirt_testenv::kube_cluster::{free_port, host_ip};
use kubevirt_testenv::KubeCluster;

/// Creates `n` paused VMs `interval` apart in `default` and waits until their VMIs run.
async fn start_vms(
    client: &Client,
    run_root: &Path,
    n: usize,
    interval: Duration,
) -> Result<HashMap<String, Steps>> {
    let timeline = Timeline::default();
    let watches = watch_steps(client, &timeline);
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let mut next = Instant::now();
    for i in 0..n {
        let name = format!("bench-{i:03}");
        let vm = paused_vm(&name, Some("10m"))?;
        tokio::time::sleep_until(next.into()).await;
        vms.create(&PostParams::default(), &vm).await?;
        timeline.lock().unwrap().entry(name).or_default().created = Some(Instant::now());
        next += interval;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let running = || {
        timeline
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.vmi_running.is_some())
            .count()
    };
    while running() < n {
        if Instant::now() > deadline {
            println!(
                "  gave up waiting after 10 min: {} of {n} running",
                running()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    launcher_steps(run_root, &timeline, Instant::now()).await;
    for w in watches {
        w.abort();
    }
    let steps = timeline.lock().unwrap().clone();
    Ok(steps)
}

/// Deletes the VMs and waits until their VMIs are gone (their launchers stopped).
async fn delete_vms(client: &Client) -> Result<()> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    vms.delete_collection(&Default::default(), &Default::default())
        .await?;
    let vmis: Api<kubevirt_api::v1::VirtualMachineInstance> =
        Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !vmis.list(&Default::default()).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("VMIs still there after 5 min");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// RSS and PSS (KiB) summed over `pids`.
fn memory(pids: &[(String, u32)]) -> (u64, u64) {
    pids.iter()
        .map(|(_, p)| rss_pss_kib(*p))
        .fold((0, 0), |(r, p), (r1, p1)| (r + r1, p + p1))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One mode's numbers.
struct Run {
    p50: f64,
    p95: f64,
    running: usize,
    idle: (u64, u64),
    loaded: (u64, u64),
    per_process: Vec<(String, u64)>,
}

fn report(
    mode: &str,
    steps: &HashMap<String, Steps>,
    idle: (u64, u64),
    pids: &[(String, u32)],
) -> Run {
    let (p50, p95, running) = step(steps, |s| s.created, |s| s.vmi_running);
    let loaded = memory(pids);
    println!(
        "{mode}: create-to-Running (VMI) over {running} VMs: p50 {:.2} s, p95 {:.2} s",
        p50 / 1000.0,
        p95 / 1000.0
    );
    print_breakdown(steps);
    let per_process: Vec<(String, u64)> = pids
        .iter()
        .map(|(n, p)| (n.clone(), rss_pss_kib(*p).0))
        .collect();
    println!(
        "{mode}: control plane {:.1} MiB RSS / {:.1} MiB PSS idle, {:.1} / {:.1} with the VMs ({})",
        mib(idle.0),
        mib(idle.1),
        mib(loaded.0),
        mib(loaded.1),
        per_process
            .iter()
            .map(|(n, r)| format!("{n} {:.1}", mib(*r)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Run {
        p50,
        p95,
        running,
        idle,
        loaded,
        per_process,
    }
}

async fn embedded(n: usize, interval: Duration) -> Result<Run> {
    let bin = server_binary()?;
    let tmp = tempfile::Builder::new()
        .prefix("kvrs-cb-embedded")
        .tempdir()?;
    let server = BenchServer::start(&bin, tmp.path()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids = vec![("kubevirt-rs server".to_string(), server.pid())];
    let idle = memory(&pids);
    let steps = start_vms(&server.client, &tmp.path().join("run"), n, interval).await?;
    let run = report("embedded", &steps, idle, &pids);
    server.finish().await?;
    Ok(run)
}

/// The kubevirt-rs components on the cluster, killed on drop.
struct Components(Vec<(String, Child)>);

impl Drop for Components {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        for (_, c) in &mut self.0 {
            let _ = c.wait();
        }
    }
}

async fn cluster(n: usize, interval: Duration) -> Result<Run> {
    let cluster = KubeCluster::start()?;
    let dir = cluster.dir().to_path_buf();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    let kc = cluster.admin_kubeconfig().to_path_buf();
    let bin = server_binary()?;
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(&bin)
            .args(args)
            .arg("--kubeconfig")
            .arg(&kc)
            .output()?;
        if !out.status.success() {
            bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(&["install", "--apply"])?;
    // No kubelet runs virt-api's pods here: its Service points at the process instead.
    let ip = host_ip()?;
    let port = free_port(&ip)?;
    cluster.serve_service_from("kubevirt", "virt-api", &ip, port)?;
    let run_root = dir.join("run");
    let listen = format!("{ip}:{port}");
    let handler_port = free_port("127.0.0.1")?.to_string();
    let handler_listen = format!("127.0.0.1:{handler_port}");
    let spawn = |name: &str, args: &[&str]| -> Result<(String, Child)> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(&bin)
            .args(args)
            .arg("--kubeconfig")
            .arg(&kc)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn,kubevirt_launcher=info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok((name.to_string(), child))
    };
    let mut parts = Components(Vec::new());
    parts.0.push(spawn(
        "virt-api",
        &[
            "virt-api",
            "--listen",
            &listen,
            "--handler-port",
            &handler_port,
        ],
    )?);
    parts.0.push(spawn(
        "virt-controller",
        &["virt-controller", "--use-emulation"],
    )?);
    parts.0.push(spawn(
        "virt-handler",
        &[
            "virt-handler",
            "--node-name",
            "node-1",
            "--run-root",
            run_root.to_str().unwrap_or_default(),
            "--data-dir",
            dir.join("node-data").to_str().unwrap_or_default(),
            "--listen",
            &handler_listen,
        ],
    )?);
    let client = Client::try_from(
        Config::from_custom_kubeconfig(Kubeconfig::read_from(&kc)?, &KubeConfigOptions::default())
            .await?,
    )?;
    // Ready: the webhooks answer (a VM is admitted) and the node is Ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    let probe = paused_vm("probe", Some("10m"))?;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    loop {
        let node = nodes.get_opt("node-1").await?;
        let admitted = vms.create(&dry_run, &probe).await;
        if node.is_some() && admitted.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let logs: String = ["virt-api", "virt-controller", "virt-handler"]
                .iter()
                .map(|c| {
                    let log =
                        std::fs::read_to_string(dir.join(format!("{c}.log"))).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(10).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!("--- {c}\n{}\n", tail.join("\n"))
                })
                .collect();
            bail!(
                "kubevirt-rs did not come up on the cluster (node registered: {}, a VM admitted: {:?})\n{logs}",
                node.is_some(),
                admitted.err()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids: Vec<(String, u32)> = cluster
        .pids()
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .chain(parts.0.iter().map(|(n, c)| (n.clone(), c.id())))
        .collect();
    let idle = memory(&pids);
    let steps = start_vms(&client, &run_root, n, interval).await?;
    let run = report("cluster", &steps, idle, &pids);
    delete_vms(&client).await?;
    drop(parts);
    Ok(run)
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = env_or("BENCH_VMS", 50);
    let interval = Duration::from_millis(env_or("BENCH_INTERVAL_MS", 100));
    println!(
        "{n} paused VMs, {} ms apart, in each mode",
        interval.as_millis()
    );
    let e = embedded(n, interval).await?;
    let c = cluster(n, interval).await?;
    println!(
        "cluster / embedded: create-to-Running p50 {:.2}x, p95 {:.2}x ({} and {} VMs running); control-plane RSS idle {:.1}x, with the VMs {:.1}x",
        c.p50 / e.p50,
        c.p95 / e.p95,
        c.running,
        e.running,
        c.idle.0 as f64 / e.idle.0.max(1) as f64,
        c.loaded.0 as f64 / e.loaded.0.max(1) as f64,
    );
    let kubevirt: u64 = c
        .per_process
        .iter()
        .filter(|(n, _)| n.starts_with("virt-"))
        .map(|(_, r)| r)
        .sum();
    println!(
        "cluster: kubevirt-rs's own components {:.1} MiB RSS with the VMs (the rest is Kubernetes'); embedded server {:.1} MiB",
        mib(kubevirt),
        mib(e.loaded.0)
    );
    Ok(())
}
