//! Benchmark (prints numbers, asserts nothing): N small VMs that boot the test guest,
//! created 100 ms apart (default 50): create-to-Running p50/p95, where the time goes step by
//! step (API and controllers, node agent, launcher, QEMU, the guest's first output), and
//! memory per VM (launcher RSS and PSS, the server's growth per VM).
//!
//! `cargo build --release -p kubevirt-rs -p kubevirt-launcher --bins --examples &&
//! target/release/examples/start_bench` (as root). `BENCH_VMS=10` for fewer VMs;
//! `KUBEVIRT_RS_BIN=path` to measure another build of the server (e.g. a baseline) with the
//! same client. Upstream KubeVirt's p50 is ~15-25 s.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bench_support::*;
use kube::api::{Api, PostParams};
use kubevirt_api::v1::VirtualMachine;

const GUEST_MIB: u64 = 128;

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = env_or("BENCH_VMS", 50);
    let bin = server_binary()?;
    let guests = kubevirt_testenv::guests();
    let tmp = tempfile::Builder::new().prefix("kvrs-bench").tempdir()?;
    let dir = tmp.path().to_path_buf();
    // BENCH_KEEP=1 keeps the directory (server and launcher logs) afterwards.
    let _tmp = if std::env::var_os("BENCH_KEEP").is_some() {
        println!("keeping {}", tmp.keep().display());
        None
    } else {
        Some(tmp)
    };
    let server = BenchServer::start(&bin, &dir).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, idle_pss) = rss_pss_kib(server.pid());
    let timeline = Timeline::default();
    let watches = watch_steps(&server.client, &timeline);
    let vms: Api<VirtualMachine> = Api::namespaced(server.client.clone(), "default");

    println!(
        "creating {n} VMs ({GUEST_MIB} MiB guest each, booting the test guest), 100 ms apart, using {}",
        bin.display()
    );
    let cpu_before = cpu_time(server.pid());
    let start = Instant::now();
    let mut next = Instant::now();
    for i in 0..n {
        let name = format!("bench-{i:03}");
        let disk = dir.join(format!("{name}.img"));
        // A full copy per VM: a hostDisk is used in place.
        std::fs::copy(&guests.disk_raw, &disk).context("copying the guest disk")?;
        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"runStrategy": "Always", "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                           "memory": {"guest": format!("{GUEST_MIB}Mi")}},
                "terminationGracePeriodSeconds": 5,
                "volumes": [{"name": "root", "hostDisk": {"path": disk, "type": "Disk"}}]
            }}}
        }))?;
        tokio::time::sleep_until(next.into()).await;
        vms.create(&PostParams::default(), &vm).await?;
        timeline.lock().unwrap().entry(name).or_default().created = Some(Instant::now());
        next += Duration::from_millis(100);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while timeline
        .lock()
        .unwrap()
        .values()
        .filter(|s| s.vm_running.is_some())
        .count()
        < n
    {
        if Instant::now() > deadline {
            println!("gave up after 10 min");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_running = start.elapsed();
    launcher_steps(
        &dir.join("run"),
        &timeline,
        Instant::now() + Duration::from_secs(60),
    )
    .await;
    let steps: HashMap<String, Steps> = timeline.lock().unwrap().clone();
    let (p50, p95, done) = step(&steps, |s| s.created, |s| s.vm_running);
    println!(
        "create-to-Running over {done} VMs: p50 {:.2} s, p95 {:.2} s (all running after {:.1} s)",
        p50 / 1000.0,
        p95 / 1000.0,
        all_running.as_secs_f64()
    );
    print_breakdown(&steps);
    println!(
        "server CPU while starting them: {:.1} ms per VM",
        (cpu_time(server.pid()) - cpu_before).as_secs_f64() * 1000.0 / n as f64
    );

    // Memory, once the guests have booted and settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ls = launchers(&dir);
    let (rss, pss) = rss_pss_kib(server.pid());
    let nl = ls.len().max(1) as f64;
    let l_rss = ls.iter().map(|l| l.1).sum::<u64>() as f64 / nl / 1024.0;
    let l_pss = ls.iter().map(|l| l.2).sum::<u64>() as f64 / nl / 1024.0;
    let s_rss = rss.saturating_sub(idle_rss) as f64 / n as f64 / 1024.0;
    let s_pss = pss.saturating_sub(idle_pss) as f64 / n as f64 / 1024.0;
    println!(
        "memory: server {:.1} MiB RSS ({:.1} idle), {:.1} MiB PSS; {} launchers",
        rss as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        pss as f64 / 1024.0,
        ls.len()
    );
    println!(
        "memory per VM: launcher {l_rss:.2} MiB RSS / {l_pss:.2} MiB PSS + server {s_rss:.2} MiB RSS / {s_pss:.2} MiB PSS = {:.2} MiB RSS / {:.2} MiB PSS",
        l_rss + s_rss,
        l_pss + s_pss
    );
    for w in watches {
        w.abort();
    }
    println!("cleaning up");
    server.finish().await
}
