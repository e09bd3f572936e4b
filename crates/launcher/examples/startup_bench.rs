//! Startup benchmark: the same guest started by QEMU alone (through the hypervisor crate,
//! as the launcher configures it) and by the launcher, time from spawn to the guest's serial marker (medians of N runs), and the
//! launcher's RSS next to QEMU's.
//!
//! `cargo run -p kubevirt-launcher --release --example startup_bench [-- RUNS]`
//! (build the launcher binary first: `cargo build -p kubevirt-launcher --release`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubevirt_hypervisor::{detect_accelerator, Hypervisor, QemuHypervisor};
use kubevirt_launcher::{translate, LauncherClient, LauncherEnv, RunDir};
use kubevirt_testenv::{guests, READY_MARKER};

fn vmi(disk: &Path) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "bench", "namespace": "bench", "uid": "bench-uid"},
        "spec": {
            "domain": {
                "cpu": {"cores": 1},
                "memory": {"guest": "192Mi"},
                "devices": {
                    "autoattachPodInterface": false,
                    "disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}]
                }
            },
            "volumes": [{"name": "root", "hostDisk": {"path": disk, "type": "Disk"}}]
        }
    })
}

fn wait_marker(log: &Path, deadline: Instant) -> Result<(), String> {
    loop {
        if std::fs::read_to_string(log).is_ok_and(|s| s.contains(READY_MARKER)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no marker in {}", log.display()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Anonymous (per-VM, not shareable) memory of a process in KiB.
fn pss_anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss_Anon:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn launcher_binary() -> PathBuf {
    // target/<profile>/examples/startup_bench -> target/<profile>/kubevirt-launcher
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("kubevirt-launcher")
}

fn bare_run(disk: &Path, rt: &tokio::runtime::Runtime) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let rd = RunDir::new(dir.path());
    let mut env = LauncherEnv::new(rd.clone(), detect_accelerator(), dir.path().join("p"));
    env.host_disks.dirs = vec![std::env::temp_dir()];
    let v: kubevirt_api::v1::VirtualMachineInstance = {
        let mut v = serde_json::from_value(vmi(disk)).unwrap();
        kubevirt_api::defaults::set_vmi_defaults(&mut v);
        v
    };
    let mut t = translate(&v, &env).unwrap();
    // The same volume preparation as the launcher, outside the timing.
    let _opened_for_qemu = rt
        .block_on(kubevirt_launcher::prepare::prepare_volumes(
            &mut t,
            &Default::default(),
            None,
        ))
        .unwrap();
    // QEMU as the launcher would run it, started straight through the hypervisor crate.
    std::fs::create_dir_all(rd.vmm_dir()).unwrap();
    let domain = QemuHypervisor::with_accelerator(detect_accelerator())
        .create_domain(t.domain.clone())
        .unwrap();
    let start = Instant::now();
    domain.start().unwrap();
    if let Err(e) = wait_marker(&rd.serial_log(), start + Duration::from_secs(120)) {
        let _ = domain.stop();
        panic!(
            "bare QEMU: {e}: {}",
            std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default()
        );
    }
    let took = start.elapsed().as_secs_f64();
    let _ = domain.stop();
    took
}

fn launcher_run(bin: &Path, disk: &Path, rt: &tokio::runtime::Runtime) -> (f64, u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let vmi_path = dir.path().join("vmi.json");
    std::fs::write(&vmi_path, serde_json::to_vec(&vmi(disk)).unwrap()).unwrap();
    let rd = RunDir::new(dir.path().join("run"));
    let start = Instant::now();
    let mut child = Command::new(bin)
        .arg("--vmi")
        .arg(&vmi_path)
        .arg("--run-dir")
        .arg(rd.path())
        .arg("--persistent-dir")
        .arg(dir.path().join("p"))
        .arg("--host-disk-dir")
        .arg(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Err(e) = wait_marker(&rd.serial_log(), start + Duration::from_secs(120)) {
        let _ = child.kill();
        panic!("launcher run failed: {e}");
    }
    let took = start.elapsed().as_secs_f64();
    let client = LauncherClient::for_run_dir(&rd);
    let st = rt.block_on(client.status()).unwrap();
    let launcher_rss = rss_kib(st.launcher_pid);
    let launcher_anon = pss_anon_kib(st.launcher_pid);
    let qemu_rss = st.qemu_pid.map(rss_kib).unwrap_or(0);
    rt.block_on(client.stop(Some(0))).unwrap();
    let _ = child.wait();
    (took, launcher_rss, launcher_anon, qemu_rss)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let bin = launcher_binary();
    assert!(
        bin.exists(),
        "{} missing: cargo build -p kubevirt-launcher --release",
        bin.display()
    );
    let g = guests();
    let images = tempfile::tempdir().unwrap();
    let disk = images.path().join("bench.img");
    std::fs::copy(&g.disk_raw, &disk).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let accel = detect_accelerator();
    println!(
        "guest: {} (SeaBIOS disk boot), accelerator {} ({})",
        disk.display(),
        accel.kind.as_str(),
        accel.reason
    );
    let (mut bare, mut launched, mut lrss, mut lanon, mut qrss) =
        (vec![], vec![], vec![], vec![], vec![]);
    // Interleave so machine load affects both sides alike.
    for i in 0..runs {
        let b = bare_run(&disk, &rt);
        let (l, lr, la, qr) = launcher_run(&bin, &disk, &rt);
        println!(
            "run {}: bare {b:.3}s  launcher {l:.3}s  launcher RSS {lr} KiB (anon {la} KiB)  QEMU RSS {qr} KiB",
            i + 1
        );
        lanon.push(la as f64);
        bare.push(b);
        launched.push(l);
        lrss.push(lr as f64);
        qrss.push(qr as f64);
    }
    let (b, l) = (median(bare), median(launched));
    println!("median time to {READY_MARKER}: bare qemu {b:.3}s, launcher {l:.3}s, ratio {:.3} (target <= 1.05)", l / b);
    println!(
        "median RSS: launcher {:.0} KiB ({:.2} MiB, target < 5 MiB; {:.0} KiB of it anonymous, the rest \
         shared binary/libc pages), QEMU {:.0} KiB ({:.1} MiB)",
        median(lrss.clone()),
        median(lrss) / 1024.0,
        median(lanon),
        median(qrss.clone()),
        median(qrss) / 1024.0
    );
}
