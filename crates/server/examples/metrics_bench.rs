//! Metrics benchmark (prints numbers, asserts nothing): the cost of scraping the embedded
//! server's `/metrics` with N running VMs (default 100; started paused, 16 MiB, so only
//! the control plane works). For each of two states, no VMs and N VMs, it scrapes 20
//! times one after another and prints the time per scrape (p50/max), the bytes and series
//! per scrape, and the CPU per scrape of the server and of all launchers together
//! (from /proc). The baseline in the same run: the same scrape with no VMs, and a list
//! of the N VMIs (`GET .../virtualmachineinstances`), an API read of the same objects.
//!
//! `cargo build --release -p kubevirt-rs -p kubevirt-launcher --bins --examples &&
//!  target/release/examples/metrics_bench` (as root). `BENCH_VMS=20` for fewer.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::time::{Duration, Instant};

use anyhow::Result;
use bench_support::*;
use kube::api::{Api, ListParams, PostParams};
use kubevirt_api::v1::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase};

const SCRAPES: usize = 20;

struct Sample {
    p50_ms: f64,
    max_ms: f64,
    bytes: usize,
    series: usize,
    server_cpu_ms: f64,
    launcher_cpu_ms: f64,
}

/// `SCRAPES` requests of `path`, one after another.
async fn measure(server: &BenchServer, dir: &std::path::Path, path: &str) -> Result<Sample> {
    let launcher_pids: Vec<u32> = launchers(dir).iter().map(|l| l.0).collect();
    let launcher_cpu = || launcher_pids.iter().map(|p| cpu_time(*p)).sum::<Duration>();
    let (cpu0, lcpu0) = (cpu_time(server.pid()), launcher_cpu());
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..SCRAPES {
        let req = http::Request::get(path).body(Vec::new())?;
        let t = Instant::now();
        body = server.client.request_text(req).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (cpu1, lcpu1) = (cpu_time(server.pid()), launcher_cpu());
    times.sort_by(f64::total_cmp);
    Ok(Sample {
        p50_ms: percentile(&times, 0.5),
        max_ms: times.last().copied().unwrap_or_default(),
        bytes: body.len(),
        series: body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count(),
        server_cpu_ms: (cpu1 - cpu0).as_secs_f64() * 1000.0 / SCRAPES as f64,
        launcher_cpu_ms: (lcpu1 - lcpu0).as_secs_f64() * 1000.0 / SCRAPES as f64,
    })
}

fn print(what: &str, s: &Sample) {
    println!(
        "{what:<34} p50 {:>7.1} ms  max {:>7.1} ms  {:>8} bytes  {:>6} lines  server CPU {:>6.1} ms  launchers CPU {:>6.1} ms  (per request)",
        s.p50_ms, s.max_ms, s.bytes, s.series, s.server_cpu_ms, s.launcher_cpu_ms
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = env_or("BENCH_VMS", 100);
    let bin = server_binary()?;
    let tmp = tempfile::Builder::new().prefix("kvrs-metrics").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let server = BenchServer::start(&bin, &dir).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let idle = measure(&server, &dir, "/metrics").await?;

    println!("starting {n} paused VMs using {}", bin.display());
    let vms: Api<VirtualMachine> = Api::namespaced(server.client.clone(), "default");
    for i in 0..n {
        let vm = paused_vm(&format!("metrics-{i:03}"), None)?;
        vms.create(&PostParams::default(), &vm).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(server.client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let running = vmis
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|v| {
                v.status.as_ref().and_then(|s| s.phase)
                    == Some(VirtualMachineInstancePhase::Running)
            })
            .count();
        if running == n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {running} of {n} VMIs running after 15 min"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let loaded = measure(&server, &dir, "/metrics").await?;
    let list = measure(
        &server,
        &dir,
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances",
    )
    .await?;
    println!("{SCRAPES} requests each, one after another:");
    print("/metrics, no VMs (baseline)", &idle);
    print(&format!("/metrics, {n} running VMs"), &loaded);
    print(&format!("list of the {n} VMIs (baseline)"), &list);
    println!(
        "with {n} VMs a scrape takes {:.1}x the idle scrape and {:.1}x the VMI list; {:.0} bytes and {:.2} ms of server CPU per VM",
        loaded.p50_ms / idle.p50_ms,
        loaded.p50_ms / list.p50_ms,
        (loaded.bytes - idle.bytes.min(loaded.bytes)) as f64 / n as f64,
        (loaded.server_cpu_ms - idle.server_cpu_ms) / n as f64,
    );
    server.finish().await
}
