//! Throughput of the importer against the tools it stands in for, measured in one run:
//! `import_http` over loopback nginx vs `qemu-img convert -O raw` of the same local file, and
//! `clone_disk` vs `cp --sparse=always` (+ fsync). 512 MiB virtual, ~200 MiB of data;
//! `BENCH_REPS` repetitions (3), medians. Prints numbers; asserts nothing.
//!
//! cargo run --release -p kubevirt-importer --example import_bench

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubevirt_importer::{clone_disk, import_http, HttpSource, Target};

const MIB: u64 = 1 << 20;
const VIRTUAL: u64 = 512 * MIB;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// 512 MiB with 25 extents of 8 MiB of noise (200 MiB of data), spread over the disk.
fn make_raw(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(VIRTUAL).unwrap();
    for i in 0..25u64 {
        f.write_all_at(&noise(8 * MIB as usize, i + 1), i * 20 * MIB)
            .unwrap();
    }
    f.sync_all().unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(dir: &Path, www: &Path) -> (std::process::Child, u16) {
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{ listen 127.0.0.1:{port}; root {www}; }}
}}
"#,
        www = www.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("starting nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn fresh_target(dir: &Path) -> Target {
    let vol = dir.join("vol");
    let _ = std::fs::remove_dir_all(&vol);
    std::fs::create_dir_all(&vol).unwrap();
    Target {
        disk: vol.join("disk.img"),
        scratch_dir: vol.clone(),
        capacity: VIRTUAL,
    }
}

/// Repetitions: `BENCH_REPS`, 3 by default.
fn reps() -> usize {
    std::env::var("BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3)
}

fn time_reps(mut f: impl FnMut() -> Duration) -> Duration {
    median((0..reps()).map(|_| f()).collect())
}

fn line(what: &str, d: Duration, ours: Duration) {
    println!(
        "  {what:<44} {:>7.3}s {:>8.1} MiB/s virtual   ours/this throughput {:.2}x",
        d.as_secs_f64(),
        mib_s(VIRTUAL, d),
        d.as_secs_f64() / ours.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(base).unwrap();
    let dir = tmp.path();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let raw = www.join("disk.raw");
    let qcow2 = www.join("disk.qcow2");
    let started = Instant::now();
    make_raw(&raw);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    println!(
        "fixtures: {} MiB virtual, qcow2 file {} MiB, made in {:.1}s",
        VIRTUAL / MIB,
        std::fs::metadata(&qcow2).unwrap().len() / MIB,
        started.elapsed().as_secs_f64()
    );
    let (mut nginx, port) = start_nginx(dir, &www);
    let out = dir.join("out.raw");

    let sync = |p: &Path| run(Command::new("sync").arg(p));
    let qemu_convert = |src: &Path, fmt: &str, durable: bool| {
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        run(Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(src)
            .arg(&out));
        if durable {
            sync(&out);
        }
        t.elapsed()
    };
    // What one would do by hand: download, convert, make it durable.
    let curl_convert = |name: &str, fmt: &str| {
        let _ = std::fs::remove_file(&out);
        let scratch = dir.join("scratch.img");
        let t = Instant::now();
        run(Command::new("curl")
            .args(["-sf", "-o"])
            .arg(&scratch)
            .arg(format!("http://127.0.0.1:{port}/{name}")));
        run(Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(&scratch)
            .arg(&out));
        sync(&out);
        let d = t.elapsed();
        let _ = std::fs::remove_file(&scratch);
        d
    };
    let import = |name: &str| {
        let target = fresh_target(dir);
        let src = HttpSource {
            url: format!("http://127.0.0.1:{port}/{name}"),
            ..HttpSource::default()
        };
        async move {
            let t = Instant::now();
            import_http(&src, &target, |_| {}).await.expect("import");
            t.elapsed()
        }
    };

    for (name, path, fmt) in [("disk.qcow2", &qcow2, "qcow2"), ("disk.raw", &raw, "raw")] {
        let (mut ours, mut plain, mut durable, mut by_hand) = (vec![], vec![], vec![], vec![]);
        // Interleaved, so all see the same machine state.
        for _ in 0..reps() {
            ours.push(import(name).await);
            plain.push(qemu_convert(path, fmt, false));
            durable.push(qemu_convert(path, fmt, true));
            by_hand.push(curl_convert(name, fmt));
        }
        let ours = median(ours);
        println!(
            "{fmt}: import_http over loopback nginx {:.3}s ({:.1} MiB/s virtual); medians of {}",
            ours.as_secs_f64(),
            mib_s(VIRTUAL, ours),
            reps()
        );
        line(
            &format!("qemu-img convert -O raw (local {fmt})"),
            median(plain),
            ours,
        );
        line(
            &format!("qemu-img convert -O raw + sync (local {fmt})"),
            median(durable),
            ours,
        );
        line(
            "curl -o scratch + qemu-img convert + sync",
            median(by_hand),
            ours,
        );
    }

    let clone_ours = time_reps(|| {
        let target = fresh_target(dir);
        let t = Instant::now();
        let stats = clone_disk(&raw, &target).expect("clone");
        let d = t.elapsed();
        assert!(!stats.reflinked || stats.bytes == VIRTUAL);
        d
    });
    let cp = time_reps(|| {
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&raw)
            .arg(&out));
        sync(&out);
        t.elapsed()
    });
    println!(
        "raw: clone_disk {:.3}s ({:.1} MiB/s virtual); medians of {}",
        clone_ours.as_secs_f64(),
        mib_s(VIRTUAL, clone_ours),
        reps()
    );
    line("cp --sparse=always + sync", cp, clone_ours);
    let _ = nginx.kill();
    let _ = nginx.wait();
}
