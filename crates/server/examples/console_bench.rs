//! The web console against the command line, same server, same VM, alternating rounds:
//! - the console page's first load in a fresh browser profile (bytes over the wire and
//!   milliseconds to the load event);
//! - clicking Start on a stopped VM until the console's list says Running (Debian's
//!   Chromium through `web/tests/bench.mjs`), against `virtctl start` followed by
//!   `kubectl wait` for printableStatus Running.
//!
//! `bash scripts/build-web.sh && cargo build --release -p kubevirt-rs -p kubevirt-launcher --bins --examples && target/release/examples/console_bench [ROUNDS]`

mod bench_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bench_support::{percentile, server_binary, BenchServer};

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_status(kubeconfig: &Path, vm: &str, status: &str) -> Result<()> {
    run(
        Command::new("kubectl")
            .args(["wait", &format!("vm/{vm}"), "--timeout=180s"])
            .arg(format!(
                "--for=jsonpath={{.status.printableStatus}}={status}"
            ))
            .env("KUBECONFIG", kubeconfig),
        "kubectl wait",
    )
    .map(drop)
}

fn summary(name: &str, mut v: Vec<f64>, unit: &str) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let p50 = percentile(&v, 50.0);
    println!(
        "  {name:<44} p50 {p50:8.0} {unit}  max {:8.0} {unit}  (n={})",
        v.last().copied().unwrap_or(0.0),
        v.len()
    );
    p50
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let bin = server_binary()?;
    let virtctl = bin.with_file_name("virtctl");
    let web = kubevirt_testenv::repo_root().join("web");
    if !web.join("node_modules/playwright-core").is_dir() {
        bail!("web/node_modules is missing: run scripts/build-web.sh");
    }
    let tmp = tempfile::Builder::new()
        .prefix("kvrs-console-bench")
        .tempdir()?;
    let server = BenchServer::start(&bin, tmp.path()).await?;
    let kubeconfig = tmp.path().join("data/kubeconfig");
    let tokens = std::fs::read_to_string(tmp.path().join("data/tokens"))?;
    let admin = tokens
        .lines()
        .find_map(|l| l.strip_prefix("admin="))
        .context("no admin token")?
        .to_string();

    // A stopped VM booting the test guest from its own copy of the disk.
    let vm = "bench";
    let disk = tmp.path().join("bench.img");
    std::fs::copy(&kubevirt_testenv::guests().disk_raw, &disk)?;
    let manifest = tmp.path().join("vm.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {{name: {vm}}}\nspec:\n  runStrategy: Halted\n  template:\n    spec:\n      domain:\n        devices: {{disks: [{{name: root, disk: {{bus: virtio}}}}]}}\n        memory: {{guest: 256Mi}}\n      terminationGracePeriodSeconds: 5\n      volumes: [{{name: root, hostDisk: {{path: {}, type: Disk}}}}]\n",
            disk.display()
        ),
    )?;
    run(
        Command::new("kubectl")
            .arg("apply")
            .arg("-f")
            .arg(&manifest)
            .env("KUBECONFIG", &kubeconfig),
        "kubectl apply",
    )?;
    wait_status(&kubeconfig, vm, "Stopped")?;

    let mut cli = Vec::new();
    let mut browser: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        let t = Instant::now();
        run(
            Command::new(&virtctl)
                .args(["start", vm])
                .env("KUBECONFIG", &kubeconfig),
            "virtctl start",
        )?;
        wait_status(&kubeconfig, vm, "Running")?;
        cli.push(t.elapsed().as_secs_f64() * 1000.0);
        run(
            Command::new(&virtctl)
                .args(["stop", vm])
                .env("KUBECONFIG", &kubeconfig),
            "virtctl stop",
        )?;
        wait_status(&kubeconfig, vm, "Stopped")?;

        let out = run(
            Command::new("node")
                .arg(web.join("tests/bench.mjs"))
                .current_dir(&web)
                .env("CONSOLE_URL", &server.console_url)
                .env("ADMIN_TOKEN", &admin)
                .env("VM", vm),
            "the browser round (web/tests/bench.mjs)",
        )?;
        for line in out.lines() {
            if let Some((name, value)) = line.split_once(' ') {
                if let Ok(v) = value.trim().parse::<f64>() {
                    browser.entry(name.to_string()).or_default().push(v);
                }
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
        wait_status(&kubeconfig, vm, "Stopped")?;
    }

    println!("web console vs kubectl + virtctl, {rounds} alternating rounds, one TCG guest:");
    let take = |b: &mut BTreeMap<String, Vec<f64>>, k: &str| b.remove(k).unwrap_or_default();
    summary(
        "console first load (fresh profile)",
        take(&mut browser, "console_first_load_bytes"),
        "B ",
    );
    summary(
        "console first load to the load event",
        take(&mut browser, "console_first_load_ms"),
        "ms",
    );
    let ui = summary(
        "click Start -> list shows Running",
        take(&mut browser, "console_start_to_running_ms"),
        "ms",
    );
    let cmd = summary("virtctl start + kubectl wait Running", cli, "ms");
    println!("  ratio console/command line: {:.2}x", ui / cmd);
    server.finish().await
}
