//! Fixtures for the import tests: images made by qemu-img from one small raw disk, served by
//! a real nginx (plain, rate-limited, basic-auth and TLS) on loopback. Built once per test
//! binary under the target directory; nginx dies with the test process.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kubevirt_importer::Target;

pub const MIB: u64 = 1 << 20;
/// The virtual size of the base disk and of most targets.
pub const DISK: u64 = 64 * MIB;
pub const MARKERS: [(u64, &str); 3] = [
    (0, "MARKER-AT-0"),
    (10 * MIB, "MARKER-AT-10MiB"),
    (60 * MIB, "MARKER-AT-60MiB"),
];

pub struct Fixtures {
    pub dir: PathBuf,
    pub www: PathBuf,
    pub port: u16,
    pub tls_port: u16,
    pub ca_pem: Vec<u8>,
    pub access_log: PathBuf,
    pub user: &'static str,
    pub password: &'static str,
}

impl Fixtures {
    pub fn path(&self, name: &str) -> PathBuf {
        self.www.join(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn slow_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/slow/{name}", self.port)
    }

    pub fn auth_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/auth/{name}", self.port)
    }

    pub fn tls_url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.tls_port)
    }

    /// Access log lines mentioning `path`: "<status> <uri> <range header>".
    pub fn log_lines(&self, path: &str) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(path))
            .map(str::to_owned)
            .collect()
    }
}

pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(build)
}

/// A fresh volume directory with a target of `capacity` bytes.
pub fn target(capacity: u64) -> (tempfile::TempDir, Target) {
    let dir = tempfile::tempdir().unwrap();
    let target = Target {
        disk: dir.path().join("disk.img"),
        scratch_dir: dir.path().to_path_buf(),
        capacity,
    };
    (dir, target)
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh(script: &str, dir: &Path) {
    run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
}

/// Bytes allocated on disk.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Asserts `disk` holds the same data as `original` (extra length must read as zeros) and
/// is sparse.
pub fn assert_same_disk(disk: &Path, original: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(original)
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(disk).unwrap().len();
    let used = allocated(disk);
    let data = allocated(original);
    assert!(
        used <= data + MIB && used < size,
        "{} is not sparse: {used} of {size} bytes allocated, the original has {data}",
        disk.display()
    );
}

/// Deterministic noise (xorshift), so compressed fixtures have real data in them.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
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

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fixture directories of earlier runs whose process is gone.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("importer-fixtures-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn tar_member(b: &mut tar::Builder<std::fs::File>, name: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    // Raw name bytes: the tar crate refuses ".." in set_path, a hostile archive does not.
    h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn make_ova(path: &Path, vmdk_name: &[u8], vmdk: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    tar_member(
        &mut b,
        b"disk.ovf",
        b"<?xml version=\"1.0\"?><Envelope><References><File ovf:href=\"disk1.vmdk\"/></References></Envelope>\n",
    );
    tar_member(&mut b, vmdk_name, &std::fs::read(vmdk).unwrap());
    tar_member(&mut b, b"disk.mf", b"SHA256(disk.ovf)= 00\n");
    b.finish().unwrap();
}

fn build() -> Fixtures {
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    remove_stale(&root);
    let dir = root.join(format!("importer-fixtures-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();

    // The base disk: markers, 2 MiB of noise at 20 MiB, zeros elsewhere.
    let base = www.join("base.raw");
    std::fs::File::create(&base).unwrap().set_len(DISK).unwrap();
    for (at, text) in MARKERS {
        write_at(&base, at, text.as_bytes());
    }
    write_at(&base, 20 * MIB, &noise(2 * MIB as usize, 7));

    // 8 MiB with 3 MiB of noise: the rate-limited resume sources.
    let rand = www.join("rand.raw");
    std::fs::File::create(&rand)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    write_at(&rand, MIB, &noise(3 * MIB as usize, 11));
    std::fs::copy(&rand, www.join("rand2.raw")).unwrap();
    std::fs::copy(&rand, www.join("rand3.raw")).unwrap();

    // 30 MiB of data: more than the 20 MiB tmpfs of the ENOSPC tests.
    let full = www.join("full.raw");
    std::fs::File::create(&full)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    write_at(&full, 0, &vec![0x5a; 30 * MIB as usize]);

    sh(
        "qemu-img convert -f raw -O qcow2 base.raw base.qcow2
         qemu-img convert -f raw -O vmdk base.raw base.vmdk
         qemu-img convert -f raw -O vmdk -o subformat=streamOptimized base.raw stream.vmdk
         qemu-img convert -f raw -O vhdx base.raw base.vhdx
         qemu-img convert -f raw -O vpc -o force_size=on base.raw base.vhd
         qemu-img convert -f raw -O vdi base.raw base.vdi
         qemu-img convert -f raw -O qcow2 rand.raw resume.qcow2
         cp resume.qcow2 resume2.qcow2
         cp resume.qcow2 resume3.qcow2
         qemu-img convert -f raw -O qcow2 full.raw full.qcow2
         gzip -1 -c base.raw > base.raw.gz
         zstd -q -1 -c base.raw > base.raw.zst
         xz -0 -T2 -c base.qcow2 > base.qcow2.xz
         gzip -1 -c base.vhdx > base.vhdx.gz
         xz -0 -c base.raw.gz > base.raw.gz.xz
         qemu-img create -q -f qcow2 big.qcow2 1G
         qemu-img create -q -f qcow2 -b base.raw -F raw backed.qcow2
         qemu-img create -q -f vmdk -o subformat=monolithicFlat flat.vmdk 1M
         qemu-img create -q -f qed base.qed 1M
         head -c 1000000 base.qcow2 > truncated.qcow2
         mkdir -p isodir && echo hello > isodir/readme.txt
         genisoimage -quiet -V TESTISO -o cd.iso isodir
         cp base.qcow2 garbage.qcow2
         printf '\\377\\377\\377\\377' | dd of=garbage.qcow2 bs=1 seek=4 conv=notrunc 2>/dev/null",
        &www,
    );
    make_ova(
        &www.join("disk.ova"),
        b"disk1.vmdk",
        &www.join("stream.vmdk"),
    );
    make_ova(
        &www.join("evil.ova"),
        b"../../../../../tmp/importer-evil.vmdk",
        &www.join("stream.vmdk"),
    );

    // TLS: a CA and a certificate for 127.0.0.1 signed by it.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    let ca_pem = ca.pem().into_bytes();

    let (user, password) = ("importer", "s3cret pass");
    let hash = Command::new("openssl")
        .args(["passwd", "-apr1", password])
        .output()
        .unwrap();
    assert!(hash.status.success());
    std::fs::write(
        dir.join("htpasswd"),
        format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim()),
    )
    .unwrap();

    let port = free_port();
    let tls_port = free_port();
    let access_log = dir.join("access.log");
    let d = dir.display();
    let conf = format!(
        r#"
daemon off;
master_process off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format short '$status $request_uri "$http_range" $body_bytes_sent';
    access_log {d}/access.log short;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location /slow/ {{
            alias {d}/www/;
            limit_rate 4m;
        }}
        location /auth/ {{
            alias {d}/www/;
            auth_basic "importer";
            auth_basic_user_file {d}/htpasswd;
        }}
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        root {d}/www;
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    start_nginx(&conf_path, &dir);
    for p in [port, tls_port] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {p}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("fixtures built in {:?}", started.elapsed());
    Fixtures {
        dir,
        www,
        port,
        tls_port,
        ca_pem,
        access_log,
        user,
        password,
    }
}

/// nginx as a child of a thread that never ends, killed (PDEATHSIG) when the test process
/// exits: test threads come and go, and a parent-death signal follows the spawning thread.
fn start_nginx(conf: &Path, dir: &Path) {
    let conf = conf.to_path_buf();
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn();
        let ok = child.is_ok();
        tx.send(child.map(|c| c.id()).map_err(|e| e.to_string()))
            .unwrap();
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv()
        .unwrap()
        .expect("starting nginx (apt-get install nginx-light)");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop; `None` where mounting
/// is not allowed (not root).
pub struct SmallFs {
    pub dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallFs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
