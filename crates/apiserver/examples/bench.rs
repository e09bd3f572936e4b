//! Benchmark (not a test): create 10,000 VirtualMachines, list them, and fan watch events
//! out to 50 watchers, through kube-rs over HTTPS against an in-process server.
//!
//!     cargo run -p kubevirt-apiserver --release --example bench [-- COUNT WATCHERS]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{
    Api, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::discovery::ApiResource;
use serde_json::json;

fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_string())
            .unwrap_or_default()
    };
    format!("VmRSS {} (peak {})", get("VmRSS:"), get("VmHWM:"))
}

fn vm(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"bench": "yes"}},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                       "resources": {"requests": {"memory": "64Mi"}}},
            "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/kubevirt/cirros-container-disk-demo"}}]}}}
    }))
    .expect("static VM JSON")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let watchers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let concurrency = 32;
    let dir = tempfile::tempdir()?;
    let mut cfg = kubevirt_apiserver::ServerConfig::new(dir.path(), "127.0.0.1:0".parse()?);
    cfg.store.ring_size = 200_000;
    let handle = kubevirt_apiserver::start(cfg).await?;
    let kc = kube::config::Kubeconfig::read_from(&handle.kubeconfig_path)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let ar = ApiResource {
        group: "kubevirt.io".into(),
        version: "v1".into(),
        api_version: "kubevirt.io/v1".into(),
        kind: "VirtualMachine".into(),
        plural: "virtualmachines".into(),
    };
    let vms: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    println!("rss at start: {}", rss());

    // Creates: `concurrency` clients in parallel, each request answered after fsync.
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let vms = vms.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    return Ok::<(), kube::Error>(());
                }
                vms.create(&PostParams::default(), &vm(&format!("vm-{i:05}")))
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "create {count} VirtualMachines ({concurrency} concurrent clients): {:.1} s, {:.0} ops/s",
        secs,
        count as f64 / secs
    );
    println!("rss after creates: {}", rss());

    let t = Instant::now();
    let list = vms.list(&ListParams::default()).await?;
    println!(
        "list {} VirtualMachines: {} ms",
        list.items.len(),
        t.elapsed().as_millis()
    );
    let t = Instant::now();
    let list = vms
        .list(&ListParams::default().labels("bench=yes").limit(500))
        .await?;
    println!(
        "list first page of 500 (label selector): {} ms",
        t.elapsed().as_millis()
    );
    let rv = list.metadata.resource_version.clone().unwrap_or_default();

    // Watch fan-out: `watchers` watches, then updates; count delivered events.
    let received = Arc::new(AtomicU64::new(0));
    let updates = 1_000usize.min(count);
    let expected = (updates * watchers) as u64;
    let mut ws = Vec::new();
    for _ in 0..watchers {
        let vms = vms.clone();
        let received = received.clone();
        let rv = rv.clone();
        let mut stream = vms
            .watch(&WatchParams::default().timeout(290), &rv)
            .await?
            .boxed();
        ws.push(tokio::spawn(async move {
            let mut mine = 0;
            while let Some(ev) = stream.next().await {
                if let Ok(WatchEvent::Modified(_)) = ev {
                    received.fetch_add(1, Ordering::Relaxed);
                    mine += 1;
                    if mine >= updates {
                        return;
                    }
                }
            }
        }));
    }
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let vms = vms.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= updates {
                    return Ok::<(), kube::Error>(());
                }
                let p = json!({"metadata": {"labels": {"touched": i.to_string()}}});
                vms.patch(
                    &format!("vm-{i:05}"),
                    &PatchParams::default(),
                    &Patch::Merge(p),
                )
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    for w in ws {
        let _ = tokio::time::timeout(Duration::from_secs(120), w).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    println!(
        "watch fan-out: {updates} updates x {watchers} watchers = {got}/{expected} events in {:.2} s, {:.0} events/s",
        secs,
        got as f64 / secs
    );
    println!("rss at end (server + clients, one process): {}", rss());
    handle.shutdown().await;
    Ok(())
}
