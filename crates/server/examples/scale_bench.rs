//! Scale benchmark (prints numbers, asserts nothing): N VMs (default 1,000) whose guests
//! never run (started paused, 16 MiB, no devices beyond a serial console), created 100 ms
//! apart (`BENCH_INTERVAL_MS`; this 2-core host starts about 10 QEMUs a second, so faster
//! creation measures a queue, not the control plane). Reports create-to-Running p50/p95 with the step-by-step breakdown, then a quiet
//! minute at steady state: API requests per second (from the server's
//! `apiserver_request_total`), store writes per second, CPU of the server and of all
//! launchers, and memory (server RSS/PSS and per-VM growth, launcher RSS/PSS, QEMU PSS).
//!
//! `cargo build --release -p kubevirt-rs -p kubevirt-launcher --bins --examples &&
//!  target/release/examples/scale_bench` (as root). `BENCH_VMS=200` for fewer. It stops
//! creating VMs if the host's available memory falls under 2 GiB and says so.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use bench_support::*;
use kube::api::{Api, ListParams, PostParams};
use kubevirt_api::v1::VirtualMachine;

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Total of `apiserver_request_total` in a /metrics text.
fn total_requests(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn scrape(client: &kube::Client) -> Result<String> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

async fn revision(vms: &Api<VirtualMachine>) -> Result<u64> {
    let list = vms.list(&ListParams::default().limit(1)).await?;
    Ok(list
        .metadata
        .resource_version
        .and_then(|r| r.parse().ok())
        .unwrap_or(0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = env_or("BENCH_VMS", 1000);
    let interval: u64 = env_or("BENCH_INTERVAL_MS", 100);
    let bin = server_binary()?;
    let tmp = tempfile::Builder::new().prefix("kvrs-scale").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let server = BenchServer::start(&bin, &dir).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, idle_pss) = rss_pss_kib(server.pid());
    let timeline = Timeline::default();
    let watches = watch_steps(&server.client, &timeline);
    let vms: Api<VirtualMachine> = Api::namespaced(server.client.clone(), "default");

    println!(
        "creating {n} paused VMs, {interval} ms apart, using {}",
        bin.display()
    );
    let cpu_before = cpu_time(server.pid());
    let start = Instant::now();
    let mut next = Instant::now();
    let mut created = 0;
    for i in 0..n {
        if mem_available_kib() < 2 << 20 {
            println!("stopping at {i} VMs: under 2 GiB of memory left on this host");
            break;
        }
        let vm = paused_vm(&format!("scale-{i:04}"), None)?;
        tokio::time::sleep_until(next.into()).await;
        vms.create(&PostParams::default(), &vm).await?;
        timeline
            .lock()
            .unwrap()
            .entry(format!("scale-{i:04}"))
            .or_default()
            .created = Some(Instant::now());
        created += 1;
        next += Duration::from_millis(interval);
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    while timeline
        .lock()
        .unwrap()
        .values()
        .filter(|s| s.vmi_running.is_some())
        .count()
        < created
    {
        if Instant::now() > deadline {
            println!("gave up waiting after 15 min");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = start.elapsed();
    launcher_steps(&dir.join("run"), &timeline, Instant::now()).await;
    let steps: HashMap<String, Steps> = timeline.lock().unwrap().clone();
    let (p50, p95, done) = step(&steps, |s| s.created, |s| s.vmi_running);
    println!(
        "create-to-Running (VMI) over {done} VMs: p50 {:.2} s, p95 {:.2} s (all running after {:.1} s)",
        p50 / 1000.0,
        p95 / 1000.0,
        all.as_secs_f64()
    );
    print_breakdown(&steps);
    println!(
        "server CPU while starting them: {:.1} ms per VM",
        (cpu_time(server.pid()) - cpu_before).as_secs_f64() * 1000.0 / created.max(1) as f64
    );
    for w in watches {
        w.abort();
    }

    // Steady state: nothing changes; what does the control plane still do?
    tokio::time::sleep(Duration::from_secs(10)).await;
    let window = Duration::from_secs(60);
    let ls = launchers(&dir);
    let launcher_cpu = |ls: &[(u32, u64, u64)]| ls.iter().map(|l| cpu_time(l.0)).sum::<Duration>();
    let (req0, rev0, cpu0, lcpu0) = (
        total_requests(&scrape(&server.client).await?),
        revision(&vms).await?,
        cpu_time(server.pid()),
        launcher_cpu(&ls),
    );
    tokio::time::sleep(window).await;
    let (req1, rev1, cpu1, lcpu1) = (
        total_requests(&scrape(&server.client).await?),
        revision(&vms).await?,
        cpu_time(server.pid()),
        launcher_cpu(&ls),
    );
    let secs = window.as_secs_f64();
    println!(
        "steady state over {secs:.0} s with {created} VMs: {:.2} API requests/s (the two scrapes and a list included), {:.2} store writes/s, server CPU {:.2}%, all launchers' CPU {:.2}%",
        (req1 - req0) as f64 / secs,
        (rev1 - rev0) as f64 / secs,
        (cpu1 - cpu0).as_secs_f64() / secs * 100.0,
        (lcpu1 - lcpu0).as_secs_f64() / secs * 100.0,
    );
    let (rss, pss) = rss_pss_kib(server.pid());
    let nl = ls.len().max(1) as f64;
    let n_f = created.max(1) as f64;
    let qemu: Vec<(u64, u64)> = processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter(|(_, c)| c.starts_with("qemu-system"))
        .map(|(p, _)| rss_pss_kib(p))
        .collect();
    println!(
        "memory: server {:.1} MiB RSS / {:.1} MiB PSS ({:.1} / {:.1} idle) = {:.2} MiB RSS / {:.2} MiB PSS per VM",
        rss as f64 / 1024.0,
        pss as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        idle_pss as f64 / 1024.0,
        rss.saturating_sub(idle_rss) as f64 / n_f / 1024.0,
        pss.saturating_sub(idle_pss) as f64 / n_f / 1024.0,
    );
    println!(
        "memory: {} launchers {:.2} MiB RSS / {:.2} MiB PSS each; {} QEMUs {:.1} MiB PSS each (paused guests: QEMU's own cost)",
        ls.len(),
        ls.iter().map(|l| l.1).sum::<u64>() as f64 / nl / 1024.0,
        ls.iter().map(|l| l.2).sum::<u64>() as f64 / nl / 1024.0,
        qemu.len(),
        qemu.iter().map(|q| q.1).sum::<u64>() as f64 / qemu.len().max(1) as f64 / 1024.0,
    );
    println!("cleaning up");
    server.finish().await
}
