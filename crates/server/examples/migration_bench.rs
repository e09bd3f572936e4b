//! Benchmark (prints numbers, asserts nothing): a 256 MiB guest that keeps dirtying memory
//! (a 32 MiB file copied over and over in its tmpfs) migrated N times (default 10), and the
//! same guest migrated N times by bare QEMU (two QEMUs started through the hypervisor crate,
//! as the launcher configures them, over a unix socket, with QEMU's default parameters),
//! interleaved in one run. Downtime and total time are QEMU's own numbers (`query-migrate`);
//! for the product also the time from creating the VirtualMachineInstanceMigration to its
//! `Succeeded`.
//!
//! One migration of each comes first and is printed but not counted: the first migration
//! in a run takes about 1 s whichever of the two guests it moves (bare QEMU's too, when it
//! goes first), so counting it would only say which went first.
//!
//! `cargo build --release -p kubevirt-rs -p kubevirt-launcher --bins --examples &&
//! target/release/examples/migration_bench` (as root). `BENCH_MIGRATIONS=3` for fewer.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench_support::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use kubevirt_api::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationPhase, VirtualMachineInstancePhase,
};
use kubevirt_hypervisor::{
    detect_accelerator, Domain, DomainState, Hypervisor, MigrationParams, MigrationStatus,
    MigrationTarget, QemuHypervisor,
};
use kubevirt_launcher::{translate, LauncherClient, LauncherEnv, RunDir};
use kubevirt_testenv::Console;
use kubevirt_testenv::READY_MARKER;

const T: Duration = Duration::from_secs(120);
/// Started in the guest: a memory dirtier that never converges by itself.
const DIRTIER: &str = "dd if=/dev/urandom of=/tmp/r bs=1M count=32 2>/dev/null; (while true; do cp /tmp/r /tmp/r2; done) & echo dirtying-$((1+1))";

fn vmi_json(name: &str, disk: &Path) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid")},
        "spec": {
            "domain": {
                "memory": {"guest": "256Mi"},
                "devices": {
                    "autoattachPodInterface": false,
                    "disks": [{"name": "root", "disk": {"bus": "virtio"}}]
                }
            },
            "terminationGracePeriodSeconds": 0,
            "volumes": [{"name": "root", "hostDisk": {"path": disk, "type": "Disk"}}]
        }
    })
}

fn percentiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "p50 {:>7.1}  max {:>7.1}",
        percentile(&v, 50.0),
        v[v.len() - 1]
    )
}

/// A console on a launcher's serial stream, as the launcher tests read it.
fn launcher_console(rt: &tokio::runtime::Handle, client: &LauncherClient) -> Result<Console> {
    let stream = rt.block_on(client.console())?;
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    b.set_nonblocking(true)?;
    rt.spawn(async move {
        let mut stream = stream;
        let Ok(mut b) = tokio::net::UnixStream::from_std(b) else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut b).await;
    });
    Console::from_stream(a)
}

/// Bare QEMU: one domain of the guest as the launcher would configure it.
struct BareVm {
    _dir: tempfile::TempDir,
    run: RunDir,
    domain: Box<dyn Domain>,
}

fn bare_vm(disk: &Path, incoming: bool, rt: &tokio::runtime::Handle) -> Result<BareVm> {
    let dir = tempfile::tempdir()?;
    let run = RunDir::new(dir.path());
    let mut env = LauncherEnv::new(run.clone(), detect_accelerator(), dir.path().join("p"));
    env.host_disks.dirs = vec![disk.parent().context("disk dir")?.to_path_buf()];
    let mut vmi: VirtualMachineInstance = serde_json::from_value(vmi_json("bare", disk))?;
    kubevirt_api::defaults::set_vmi_defaults(&mut vmi);
    let mut t = translate(&vmi, &env)?;
    let _files = rt.block_on(kubevirt_launcher::prepare::prepare_volumes(
        &mut t,
        &Default::default(),
        None,
    ))?;
    std::fs::create_dir_all(run.vmm_dir())?;
    let domain = QemuHypervisor::with_accelerator(detect_accelerator()).create_domain(t.domain)?;
    if incoming {
        domain.prepare_incoming(&format!("unix:{}", run.migration_socket().display()))?;
    } else {
        domain.start()?;
    }
    Ok(BareVm {
        _dir: dir,
        run,
        domain,
    })
}

fn wait_finished(d: &dyn Domain) -> Result<MigrationStatus> {
    let deadline = Instant::now() + T;
    loop {
        let s = d.migration_status()?;
        if s.is_finished() {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("migration not finished: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One bare migration from `src` to a fresh QEMU; returns the new source and QEMU's numbers.
fn bare_migrate(
    src: BareVm,
    disk: &Path,
    rt: &tokio::runtime::Handle,
) -> Result<(BareVm, MigrationStatus)> {
    let dst = bare_vm(disk, true, rt)?;
    let uri = format!("unix:{}", dst.run.migration_socket().display());
    src.domain
        .migrate_out(MigrationTarget::Uri(uri), &MigrationParams::default())?;
    let status = wait_finished(src.domain.as_ref())?;
    if status.status != "completed" {
        bail!("bare migration ended {status:?}");
    }
    let deadline = Instant::now() + T;
    while dst.domain.state()? != DomainState::Running {
        if Instant::now() > deadline {
            bail!("bare target never ran");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = src.domain.stop();
    Ok((dst, status))
}

/// The pod running the VMI's guest and its launcher's final or live status.
async fn launcher_of(client: &kube::Client, run_root: &Path, pod: &str) -> Result<RunDir> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let uid = pods.get(pod).await?.metadata.uid.context("pod uid")?;
    Ok(RunDir::for_uid(run_root, &uid))
}

async fn product_migrate(
    client: &kube::Client,
    run_root: &Path,
    vm: &str,
) -> Result<(MigrationStatus, f64)> {
    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(client.clone(), "default");
    let m = kubevirt_api::migration::new_migration("bench-", vm);
    let start = Instant::now();
    let name = api.create(&PostParams::default(), &m).await?.name_any();
    let deadline = start + T;
    let status = loop {
        let m = api.get(&name).await?;
        let st = m.status.unwrap_or_default();
        match st.phase.unwrap_or_default() {
            VirtualMachineInstanceMigrationPhase::Succeeded => break st,
            VirtualMachineInstanceMigrationPhase::Failed => {
                bail!("migration {name} failed: {st:?}")
            }
            _ if Instant::now() > deadline => bail!("migration {name} not done"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let took = start.elapsed().as_secs_f64() * 1000.0;
    let source = status
        .migration_state
        .and_then(|s| s.source_pod)
        .context("no source pod")?;
    let run = launcher_of(client, run_root, &source).await?;
    // The source launcher's final status carries QEMU's numbers.
    let deadline = Instant::now() + T;
    loop {
        if let Some(st) = kubevirt_launcher::final_status(&run) {
            return Ok((
                st.migration
                    .context("no migration in the source's status")?,
                took,
            ));
        }
        if Instant::now() > deadline {
            bail!("no final status in {}", run.path().display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() -> Result<()> {
    let n: usize = std::env::var("BENCH_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    let bin = server_binary()?;
    let tmp = tempfile::Builder::new().prefix("kvrs-migbench").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let guests = kubevirt_testenv::guests();
    let server = rt.block_on(BenchServer::start(&bin, &dir))?;
    let client = server.client.clone();

    // The product's VM.
    let disk = dir.join("mig.img");
    std::fs::copy(&guests.disk_raw, &disk)?;
    let mut vm_json = vmi_json("mig", &disk);
    let spec = vm_json["spec"].take();
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "mig", "namespace": "default"},
        "spec": {"runStrategy": "Always", "template": {"spec": spec}},
    }))?;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    rt.block_on(vms.create(&PostParams::default(), &vm))?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + T;
    while !rt
        .block_on(vmis.get_opt("mig"))?
        .is_some_and(|v| v.phase() == VirtualMachineInstancePhase::Running)
    {
        if Instant::now() > deadline {
            bail!("VM never ran");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = rt
        .block_on(pods.list(&ListParams::default().labels("kubevirt.io=virt-launcher")))?
        .items
        .into_iter()
        .next()
        .context("no launcher pod")?;
    let run_root = dir.join("run");
    let run = RunDir::for_uid(&run_root, pod.metadata.uid.as_deref().unwrap_or_default());
    let mut con = launcher_console(&handle, &LauncherClient::for_run_dir(&run))?;
    con.wait_for(READY_MARKER, T).context("the VM's guest")?;
    con.run(DIRTIER, T).context("the VM's guest")?;
    drop(con);

    // Bare QEMU's guest, the same disk image (a copy).
    let bare_disk = dir.join("bare.img");
    std::fs::copy(&guests.disk_raw, &bare_disk)?;
    let mut bare = bare_vm(&bare_disk, false, &handle)?;
    let mut con = Console::connect(&bare.run.serial_socket(), T)?;
    con.wait_for(READY_MARKER, T).context("bare QEMU's guest")?;
    con.run(DIRTIER, T).context("bare QEMU's guest")?;
    drop(con);

    println!("{n} migrations each of a 256 MiB guest dirtying memory, interleaved (ms):");
    let (mut pd, mut pt, mut pe, mut bd, mut bt) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..=n {
        let (s, took) = rt.block_on(product_migrate(&client, &run_root, "mig"))?;
        let (next, b) = bare_migrate(bare, &bare_disk, &handle)?;
        bare = next;
        println!(
            "  {:>7}: kubevirt-rs downtime {:>5} total {:>6} (VMIM created -> Succeeded {took:>6.0}) | bare QEMU downtime {:>5} total {:>6}",
            if i == 0 { "warm-up".to_string() } else { i.to_string() },
            s.downtime_ms.unwrap_or(0),
            s.total_time_ms.unwrap_or(0),
            b.downtime_ms.unwrap_or(0),
            b.total_time_ms.unwrap_or(0)
        );
        if i == 0 {
            continue;
        }
        pd.push(s.downtime_ms.unwrap_or(0) as f64);
        pt.push(s.total_time_ms.unwrap_or(0) as f64);
        pe.push(took);
        bd.push(b.downtime_ms.unwrap_or(0) as f64);
        bt.push(b.total_time_ms.unwrap_or(0) as f64);
    }
    let ratio = |a: &[f64], b: &[f64]| {
        let mut a = a.to_vec();
        let mut b = b.to_vec();
        a.sort_by(|x, y| x.total_cmp(y));
        b.sort_by(|x, y| x.total_cmp(y));
        percentile(&a, 50.0) / percentile(&b, 50.0).max(1.0)
    };
    println!(
        "kubevirt-rs  downtime {}  total {}  VMIM end to end {}",
        percentiles(pd.clone()),
        percentiles(pt.clone()),
        percentiles(pe)
    );
    println!(
        "bare QEMU    downtime {}  total {}",
        percentiles(bd.clone()),
        percentiles(bt.clone())
    );
    println!(
        "ratio of p50s (kubevirt-rs / bare QEMU): downtime {:.2}, total {:.2} (goal: downtime < 50 ms, total < 2x bare QEMU)",
        ratio(&pd, &bd),
        ratio(&pt, &bt)
    );
    let _ = bare.domain.stop();
    rt.block_on(server.finish())?;
    Ok(())
}
