//! Snapshot, restore and hot-plug latency through the real server, kubectl's API and
//! virtctl, with baselines measured in the same run on the same filesystem (medians of 3):
//!
//! 1. A 10 GiB sparse claim holding 1 GiB of data: a VolumeSnapshot (create to
//!    `readyToUse`), a claim restored from it (create to `Bound`), a VirtualMachineSnapshot of
//!    a stopped VM using the claim and a VirtualMachineRestore onto it; against
//!    `cp --reflink=auto --sparse=always`, `qemu-img convert -O raw -S 4k` (each + fsync, as
//!    the stored copy is fsynced) and a qcow2 overlay (`qemu-img create -b`, the
//!    copy-on-write floor). Prints the space the stored snapshot takes against its size.
//! 2. Hot-plug of a 64Mi claim into a running guest: `virtctl addvolume` returning to the
//!    VMI's volume status `Ready` and to the guest seeing `/sys/block/sd*`, then
//!    `removevolume` to the disk leaving the guest; against QEMU's own `blockdev-add` +
//!    `device_add` (a paused QEMU with no guest, over QMP).
//!
//! `cargo build --release -p kubevirt-rs -p kubevirt-launcher --bins --examples &&
//! target/release/examples/snapshot_bench` (as root). `BENCH_DIR=/mnt/xfs` runs it in a
//! temporary directory there (e.g. a reflink filesystem) instead of `$TMPDIR`.

mod bench_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench_support::{server_binary, BenchServer};
use kube::api::{Api, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};

const RUNS: usize = 3;
const GIB: u64 = 1 << 30;
const CLAIM_BYTES: u64 = 10 * GIB;
const TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(10);

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The kinds this bench creates and watches.
struct Kinds {
    pvc: Api<DynamicObject>,
    volume_snapshot: Api<DynamicObject>,
    vm: Api<DynamicObject>,
    vmi: Api<DynamicObject>,
    vm_snapshot: Api<DynamicObject>,
    vm_restore: Api<DynamicObject>,
}

impl Kinds {
    fn new(client: &Client) -> Kinds {
        let api = |ar: ApiResource| Api::namespaced_with(client.clone(), "default", &ar);
        Kinds {
            pvc: api(resource(
                "",
                "v1",
                "PersistentVolumeClaim",
                "persistentvolumeclaims",
            )),
            volume_snapshot: api(resource(
                "snapshot.storage.k8s.io",
                "v1",
                "VolumeSnapshot",
                "volumesnapshots",
            )),
            vm: api(resource(
                "kubevirt.io",
                "v1",
                "VirtualMachine",
                "virtualmachines",
            )),
            vmi: api(resource(
                "kubevirt.io",
                "v1",
                "VirtualMachineInstance",
                "virtualmachineinstances",
            )),
            vm_snapshot: api(resource(
                "snapshot.kubevirt.io",
                "v1beta1",
                "VirtualMachineSnapshot",
                "virtualmachinesnapshots",
            )),
            vm_restore: api(resource(
                "snapshot.kubevirt.io",
                "v1beta1",
                "VirtualMachineRestore",
                "virtualmachinerestores",
            )),
        }
    }
}

async fn create(api: &Api<DynamicObject>, object: Value) -> Result<()> {
    let object: DynamicObject = serde_json::from_value(object)?;
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {}", object.metadata.name.unwrap_or_default()))?;
    Ok(())
}

/// Polls `name` until `done` holds for its body (all but metadata); when it was first seen.
async fn wait(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Instant> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(o) = api.get_opt(name).await? {
            if done(&o.data) {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("{name} never became {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn status_is(pointer: &'static str, want: Value) -> impl Fn(&Value) -> bool {
    move |v| v.pointer(pointer) == Some(&want)
}

fn claim(name: &str, size: &str, snapshot: Option<&str>) -> Value {
    let mut c = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                 "resources": {"requests": {"storage": size}}}
    });
    if let Some(s) = snapshot {
        c["spec"]["dataSource"] =
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": s});
    }
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bytes allocated on disk and apparent size of the files under `path` (a file or a dir).
fn du(path: &Path) -> (u64, u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return (0, 0);
    };
    if meta.is_file() {
        return (meta.blocks() * 512, meta.len());
    }
    let mut total = (0, 0);
    for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let (a, s) = du(&e.path());
        total = (total.0 + a, total.1 + s);
    }
    total
}

fn fsync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

/// Runs `cmd`, then fsyncs `out`: the time of both.
fn timed(cmd: &mut Command, out: &Path) -> Result<Duration> {
    let t = Instant::now();
    let o = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    fsync(out)?;
    Ok(t.elapsed())
}

/// Makes the claim's disk file sparse at 10 GiB and writes 1 GiB of non-zero data at four
/// offsets, fsynced.
fn fill(disk: &Path) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(disk)
        .with_context(|| disk.display().to_string())?;
    if f.metadata()?.len() < CLAIM_BYTES {
        f.set_len(CLAIM_BYTES)?;
    }
    let mut block = vec![0u8; 1 << 20];
    for (chunk, offset) in [0, 5 * GIB / 2, 5 * GIB, 19 * GIB / 2]
        .into_iter()
        .enumerate()
    {
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))?;
        for i in 0..256u64 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u64)
                    .wrapping_mul(2654435761)
                    .wrapping_add(i + chunk as u64 * 256) as u8
                    | 1;
            }
            f.write_all(&block)?;
        }
    }
    f.sync_all()?;
    Ok(())
}

async fn snapshots(kinds: &Kinds, data: &Path, scratch: &Path) -> Result<()> {
    create(&kinds.pvc, claim("src", "10Gi", None)).await?;
    wait(
        &kinds.pvc,
        "src",
        "Bound",
        status_is("/status/phase", json!("Bound")),
    )
    .await?;
    let pv = kinds.pvc.get("src").await?.data["spec"]["volumeName"]
        .as_str()
        .context("claim src has no volume")?
        .to_string();
    let disk = data.join("volumes").join(&pv).join("disk.img");
    fill(&disk)?;
    let (alloc, size) = du(&disk);
    println!(
        "1. snapshot and restore of a {} GiB claim with {:.2} GiB written (median of {RUNS}):",
        size / GIB,
        alloc as f64 / GIB as f64
    );
    // Never started: a VM-level snapshot of it is an offline one.
    create(
        &kinds.vm,
        json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "snap"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "data", "disk": {"bus": "virtio"}}]},
                           "memory": {"guest": "128Mi"}},
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "src"}}]
            }}}
        }),
    )
    .await?;

    let mut rows: [(&str, Vec<f64>); 7] = [
        ("cp --reflink=auto --sparse=always + fsync", vec![]),
        ("qemu-img convert -O raw -S 4k + fsync", vec![]),
        ("qemu-img create -f qcow2 -b (overlay)", vec![]),
        ("VolumeSnapshot: create -> readyToUse", vec![]),
        ("claim from the snapshot: create -> Bound", vec![]),
        ("VirtualMachineSnapshot: create -> readyToUse", vec![]),
        ("VirtualMachineRestore: create -> complete", vec![]),
    ];
    let (mut stored, mut restored) = ((0, 0), (0, 0));
    for run in 0..RUNS {
        let copy = scratch.join("cp.img");
        let converted = scratch.join("convert.img");
        let overlay = scratch.join("overlay.qcow2");
        rows[0].1.push(ms(timed(
            Command::new("cp")
                .args(["--reflink=auto", "--sparse=always"])
                .arg(&disk)
                .arg(&copy),
            &copy,
        )?));
        rows[1].1.push(ms(timed(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", "-S", "4k"])
                .arg(&disk)
                .arg(&converted),
            &converted,
        )?));
        rows[2].1.push(ms(timed(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&disk)
                .arg(&overlay),
            &overlay,
        )?));
        for f in [&copy, &converted, &overlay] {
            std::fs::remove_file(f)?;
        }

        let vs = format!("vs-{run}");
        let t = Instant::now();
        create(
            &kinds.volume_snapshot,
            json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": vs},
                "spec": {"source": {"persistentVolumeClaimName": "src"}}
            }),
        )
        .await?;
        let done = wait(
            &kinds.volume_snapshot,
            &vs,
            "readyToUse",
            status_is("/status/readyToUse", json!(true)),
        )
        .await?;
        rows[3].1.push(ms(done - t));
        let content = kinds.volume_snapshot.get(&vs).await?.data["status"]
            ["boundVolumeSnapshotContentName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        stored = du(&data.join("volumes/.snapshots").join(&content));

        let restore = format!("from-{run}");
        let t = Instant::now();
        create(&kinds.pvc, claim(&restore, "10Gi", Some(&vs))).await?;
        let done = wait(
            &kinds.pvc,
            &restore,
            "Bound",
            status_is("/status/phase", json!("Bound")),
        )
        .await?;
        rows[4].1.push(ms(done - t));
        if let Some(pv) = kinds.pvc.get(&restore).await?.data["spec"]["volumeName"].as_str() {
            restored = du(&data.join("volumes").join(pv).join("disk.img"));
        }

        let snap = format!("vmsnap-{run}");
        let t = Instant::now();
        create(
            &kinds.vm_snapshot,
            json!({
                "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
                "metadata": {"name": snap},
                "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "snap"}}
            }),
        )
        .await?;
        let done = wait(
            &kinds.vm_snapshot,
            &snap,
            "readyToUse",
            status_is("/status/readyToUse", json!(true)),
        )
        .await?;
        rows[5].1.push(ms(done - t));

        let vmrestore = format!("vmrestore-{run}");
        let t = Instant::now();
        create(
            &kinds.vm_restore,
            json!({
                "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
                "metadata": {"name": vmrestore},
                "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "snap"},
                         "virtualMachineSnapshotName": snap}
            }),
        )
        .await?;
        let done = wait(
            &kinds.vm_restore,
            &vmrestore,
            "complete",
            status_is("/status/complete", json!(true)),
        )
        .await?;
        rows[6].1.push(ms(done - t));
    }
    let cp = median(rows[0].1.clone());
    println!("  {:<48} {:>9} {:>9}", "", "median ms", "x cp");
    for (label, times) in &rows {
        let m = median(times.clone());
        println!("  {label:<48} {m:>9.0} {:>9.2}", m / cp);
    }
    let gib = |b: u64| b as f64 / GIB as f64;
    println!(
        "  stored snapshot: {:.2} GiB allocated of {:.2} GiB apparent; restored claim: {:.2} GiB of {:.2} GiB",
        gib(stored.0),
        gib(stored.1),
        gib(restored.0),
        gib(restored.1)
    );
    Ok(())
}

/// `virtctl console`, collecting what the guest prints.
struct Console {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Console {
    fn start(virtctl: &Path, kubeconfig: &Path, vm: &str) -> Result<Console> {
        let mut child = Command::new(virtctl)
            .args(["console", vm])
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("virtctl console")?;
        let mut stdout = child.stdout.take().context("console stdout")?;
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Console { child, output })
    }

    fn has(&self, needle: &str) -> bool {
        self.output.lock().unwrap().contains(needle)
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("console stdin")?;
        stdin.write_all(format!("{line}\r").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    async fn wait_for(&self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        while !self.has(needle) {
            if Instant::now() > deadline {
                bail!(
                    "console never showed {needle:?}; got:\n{}",
                    self.output.lock().unwrap()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn volume_phase(vmi: &Value, volume: &str) -> Option<String> {
    vmi.pointer("/status/volumeStatus")?
        .as_array()?
        .iter()
        .find(|v| v["name"] == volume)
        .map(|v| v["phase"].as_str().unwrap_or_default().to_string())
}

fn virtctl(virtctl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(virtctl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .context("virtctl")?;
    if !out.status.success() {
        bail!("virtctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed())
}

/// From `start`, when the VMI's volume status and the guest's console each said `done`.
async fn watch_both(
    kinds: &Kinds,
    console: &Console,
    marker: &str,
    status_done: impl Fn(Option<String>) -> bool,
) -> Result<(Instant, Instant)> {
    let (mut status, mut guest) = (None, None);
    let deadline = Instant::now() + TIMEOUT;
    while status.is_none() || guest.is_none() {
        if guest.is_none() && console.has(marker) {
            guest = Some(Instant::now());
        }
        if status.is_none() {
            let vmi = kinds.vmi.get("hot").await?;
            if status_done(volume_phase(&vmi.data, "hp")) {
                status = Some(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {marker}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok((
        status.unwrap_or_else(Instant::now),
        guest.unwrap_or_else(Instant::now),
    ))
}

async fn hotplug(kinds: &Kinds, dir: &Path, virtctl_bin: &Path, kubeconfig: &Path) -> Result<()> {
    let guest_disk = dir.join("hot.img");
    std::fs::copy(&kubevirt_testenv::guests().disk_raw, &guest_disk)
        .context("copying the guest disk")?;
    create(&kinds.pvc, claim("hp", "64Mi", None)).await?;
    create(
        &kinds.vm,
        json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "hot"},
            "spec": {"runStrategy": "Always", "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                           "memory": {"guest": "256Mi"}},
                "terminationGracePeriodSeconds": 5,
                "volumes": [{"name": "root", "hostDisk": {"path": guest_disk, "type": "Disk"}}]
            }}}
        }),
    )
    .await?;
    wait(
        &kinds.vmi,
        "hot",
        "Running",
        status_is("/status/phase", json!("Running")),
    )
    .await?;
    let mut console = Console::start(virtctl_bin, kubeconfig, "hot")?;
    console.wait_for(kubevirt_testenv::READY_MARKER).await?;
    wait(
        &kinds.pvc,
        "hp",
        "Bound",
        status_is("/status/phase", json!("Bound")),
    )
    .await?;

    let (mut add_cmd, mut ready, mut seen, mut del_cmd, mut gone_status, mut gone) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..RUNS {
        // The guest polls for the disk (shell builtins but `sleep`, every 50 ms); the
        // marker is assembled by the shell so the echo of the typed line does not match.
        console.send(&format!(
            "until set -- /sys/block/sd*; [ -e \"$1\" ]; do sleep 0.05; done; echo HOT''ADD-{round}-$1"
        ))?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        add_cmd.push(ms(virtctl(
            virtctl_bin,
            kubeconfig,
            &["addvolume", "hot", "--volume-name=hp"],
        )?));
        let t = Instant::now();
        let (status, guest) = watch_both(kinds, &console, &format!("HOTADD-{round}-"), |p| {
            p.as_deref() == Some("Ready")
        })
        .await?;
        ready.push(ms(status - t));
        seen.push(ms(guest - t));

        console.send(&format!(
            "while set -- /sys/block/sd*; [ -e \"$1\" ]; do sleep 0.05; done; echo HOT''DEL-{round}-"
        ))?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        del_cmd.push(ms(virtctl(
            virtctl_bin,
            kubeconfig,
            &["removevolume", "hot", "--volume-name=hp"],
        )?));
        let t = Instant::now();
        let (status, guest) = watch_both(kinds, &console, &format!("HOTDEL-{round}-"), |p| {
            p.is_none()
        })
        .await?;
        gone_status.push(ms(status - t));
        gone.push(ms(guest - t));
        // The next addvolume needs the volume out of the VM's spec too.
        wait(&kinds.vm, "hot", "without hp", |v| {
            !v["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .is_some_and(|vs| vs.iter().any(|x| x["name"] == "hp"))
        })
        .await?;
    }
    drop(console);
    let floor = qemu_device_add(dir)?;

    println!("2. hot-plug of a 64Mi claim into a running guest ({RUNS} rounds, ms):");
    println!("  {:<58} {:>7} {:>7}", "", "median", "max");
    let row = |label: &str, v: &[f64]| {
        println!("  {label:<58} {:>7.0} {:>7.0}", median(v.to_vec()), max(v));
    };
    row("virtctl addvolume (the command itself)", &add_cmd);
    row("  it returned -> VMI volumeStatus Ready", &ready);
    row("  it returned -> guest sees /sys/block/sd*", &seen);
    row("virtctl removevolume (the command itself)", &del_cmd);
    row(
        "  it returned -> volume gone from the VMI's status",
        &gone_status,
    );
    row("  it returned -> disk gone in the guest", &gone);
    row(
        "QEMU alone: blockdev-add + device_add scsi-hd (QMP, paused)",
        &floor,
    );
    Ok(())
}

/// A QMP connection: commands and their answers, events skipped.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(POLL),
                Err(e) => return Err(e).context("connecting to QMP"),
            }
        };
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let mut greeting = String::new();
        qmp.reader.read_line(&mut greeting)?;
        qmp.execute(json!({"execute": "qmp_capabilities"}))?;
        Ok(qmp)
    }

    fn execute(&mut self, command: Value) -> Result<Value> {
        writeln!(self.writer, "{command}")?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("QMP closed");
            }
            let v: Value = serde_json::from_str(&line)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("{command}: {e}");
            }
        }
    }
}

/// QEMU's own cost of plugging a SCSI disk: a paused q35 QEMU (TCG) with a virtio-scsi
/// controller, `blockdev-add` + `device_add` timed over QMP, then unplugged again.
fn qemu_device_add(dir: &Path) -> Result<Vec<f64>> {
    let image = dir.join("floor.img");
    std::fs::File::create(&image)?.set_len(64 << 20)?;
    let socket = dir.join("floor-qmp.sock");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "64",
            "-nodefaults",
        ])
        .args([
            "-display",
            "none",
            "-S",
            "-device",
            "virtio-scsi-pci,id=scsi0",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let result = (|| {
        let mut qmp = Qmp::connect(&socket)?;
        let mut times = Vec::new();
        for round in 0..RUNS {
            let node = format!("n{round}");
            let t = Instant::now();
            qmp.execute(json!({"execute": "blockdev-add", "arguments": {
                "driver": "raw", "node-name": node,
                "file": {"driver": "file", "filename": image}}}))?;
            qmp.execute(json!({"execute": "device_add", "arguments": {
                "driver": "scsi-hd", "id": format!("d{round}"), "bus": "scsi0.0",
                "channel": 0, "scsi-id": 0, "lun": 0, "drive": node}}))?;
            times.push(ms(t.elapsed()));
            qmp.execute(
                json!({"execute": "device_del", "arguments": {"id": format!("d{round}")}}),
            )?;
            // SCSI unplug needs no guest: the device is gone once the command returns,
            // and its node is free once the device is finalized.
            let deadline = Instant::now() + Duration::from_secs(10);
            while qmp
                .execute(json!({"execute": "blockdev-del", "arguments": {"node-name": node}}))
                .is_err()
            {
                if Instant::now() > deadline {
                    bail!("node {node} stayed in use");
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(times)
    })();
    let _ = qemu.kill();
    let _ = qemu.wait();
    result
}

fn tool_present(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::main]
async fn main() -> Result<()> {
    let bin = server_binary()?;
    let virtctl_bin = bin.with_file_name("virtctl");
    let parent = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("kvrs-snapshot-bench")
        .tempdir_in(&parent)?;
    let dir = tmp.path();
    // `stat -f` names ext4 "ext2/ext3"; findmnt says what is mounted.
    let fs = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "--target"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mkfs: Vec<&str> = ["mkfs.xfs", "mkfs.btrfs"]
        .into_iter()
        .filter(|t| tool_present(t))
        .collect();
    println!(
        "data dir on {fs} ({}); {}",
        parent.display(),
        if mkfs.is_empty() {
            "no mkfs.xfs or mkfs.btrfs here: no reflink filesystem to compare".to_string()
        } else {
            format!(
                "{} present: BENCH_DIR=<a mounted reflink filesystem> runs it there",
                mkfs.join(", ")
            )
        }
    );
    let server = BenchServer::start(&bin, dir).await?;
    let kubeconfig = dir.join("data/kubeconfig");
    let kinds = Kinds::new(&server.client);
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;

    let result = async {
        snapshots(&kinds, &dir.join("data"), &scratch).await?;
        hotplug(&kinds, dir, &virtctl_bin, &kubeconfig).await
    }
    .await;
    server.finish().await?;
    result
}
