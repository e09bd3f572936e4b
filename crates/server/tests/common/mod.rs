//! End-to-end fixtures: the real `kubevirt-rs server`, real `kubectl`, real `virtctl`.
#![allow(dead_code)]

pub mod monitoring;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(120);

pub fn kubevirt_rs() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubevirt-rs"))
}

/// `virtctl`, built by cargo with this package (its binary lives here).
pub fn virtctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_virtctl"))
}

/// Runs `virtctl` with `kubeconfig`'s cluster and credentials (no input).
pub fn virtctl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(virtctl())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("running virtctl")
}

pub struct Server {
    pub data_dir: PathBuf,
    /// The launchers' run root: beside the data dir (private to root), where the VMs'
    /// own users can reach their QEMU's directory.
    pub run_root: PathBuf,
    pub kubeconfig: PathBuf,
    /// The web console's URL (`https://127.0.0.1:PORT/`), from the server's output.
    pub console_url: String,
    child: Option<Child>,
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server in a fresh data dir. `extra`: more `server` flags.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("kvrs-e2e")
            .tempdir()
            .unwrap();
        // VM users pass through the test's directory to the run root.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let data_dir = tmp.path().join("data");
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&data_dir)
            .unwrap();
        let run_root = tmp.path().join("r");
        // KUBEVIRT_RS_TEST_KEEP=1 keeps the data dir (logs, run dirs) for a post-mortem.
        let tmp = if std::env::var_os("KUBEVIRT_RS_TEST_KEEP").is_some() {
            eprintln!("keeping {}", tmp.keep().display());
            None
        } else {
            Some(tmp)
        };
        let mut s = Server {
            kubeconfig: data_dir.join("kubeconfig"),
            console_url: String::new(),
            data_dir,
            run_root,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: tmp,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut child = Command::new(kubevirt_rs())
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--console-listen", "127.0.0.1:0"])
            // Each server its own launcher run root: a test run never adopts (or is
            // disturbed by) the VMs of another run on the same machine.
            .arg("--run-root")
            .arg(&self.run_root)
            // hostDisks of the tests are in the data dir.
            .arg("--host-disk-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .env("RUST_LOG", "info,kube_runtime=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.data_dir.join("server.log"))
                    .unwrap(),
            ))
            .spawn()
            .expect("starting kubevirt-rs server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "server did not come up");
            match lines.next() {
                Some(Ok(l)) if l.starts_with("export KUBECONFIG=") => break,
                Some(Ok(l)) if l.starts_with("console: ") => {
                    self.console_url = l["console: ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                }
                Some(Ok(_)) => {}
                _ => panic!("server exited during start-up; log:\n{}", self.log()),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// kill -9, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("running kubectl")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`, whatever it answers.
    pub fn apply_output(&self, yaml: &str) -> Output {
        let mut child = Command::new("kubectl")
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn apply_yaml(&self, yaml: &str) {
        let out = self.apply_output(yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn virtctl(&self, args: &[&str]) -> Output {
        virtctl_as(&self.kubeconfig, args)
    }

    pub fn jsonpath(&self, kind: &str, name: &str, path: &str) -> String {
        let out = self.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `kubectl get kind name -o jsonpath=path` prints `want`.
    pub fn wait_for(&self, kind: &str, name: &str, path: &str, want: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.jsonpath(kind, name, path);
            if last == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "{kind}/{name} {path}: wanted {want:?}, last {last:?}\nserver log tail:\n{}",
            tail(&self.log(), 40)
        );
    }

    /// UID of the launcher pod of the VMI with `vmi_uid` (waits for it).
    pub fn launcher_pod_uid(&self, vmi_uid: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.kubectl_ok(&[
                "get",
                "pods",
                "-l",
                &format!("kubevirt.io/created-by={vmi_uid}"),
                "-o",
                "jsonpath={.items[*].metadata.uid}",
            ]);
            if let Some(uid) = out.split_whitespace().last() {
                return uid.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no launcher pod for VMI {vmi_uid}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The events of objects named `name`: type, reason and message per line.
    pub fn events_of(&self, name: &str) -> String {
        self.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
        ])
    }

    pub fn wait_gone(&self, kind: &str, name: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            let out = self.kubectl(&["get", kind, name, "--ignore-not-found", "-o", "name"]);
            if out.status.success() && out.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("{kind}/{name} still exists");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `check` holds (polling), failing the test after [`TIMEOUT`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Pids of processes whose command line mentions `needle` (a launcher pod's UID names its
/// launcher and QEMU, through the run directory).
pub fn pids_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

pub fn qemu_pids(uid: &str) -> Vec<u32> {
    pids_mentioning(uid)
        .into_iter()
        .filter(|(_, c)| c.starts_with("qemu-system"))
        .map(|(p, _)| p)
        .collect()
}

/// Waits until no process mentions `uid`.
pub fn wait_no_processes(uid: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if pids_mentioning(uid).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("processes left for {uid}: {:?}", pids_mentioning(uid));
}

/// A VM booting the test guest from a private copy of its raw disk.
pub fn hostdisk_vm(name: &str, run_strategy: &str, dir: &Path) -> String {
    let g = kubevirt_testenv::guests();
    let disk = dir.join(format!("{name}.img"));
    std::fs::copy(&g.disk_raw, &disk).unwrap();
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {run_strategy}
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk:
              bus: virtio
        memory:
          guest: 256Mi
      terminationGracePeriodSeconds: 30
      volumes:
      - name: root
        hostDisk:
          path: {}
          type: Disk
"#,
        disk.display()
    )
}

/// Runs `virtctl console` in the background, collecting its output.
pub struct ConsoleCapture {
    child: Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl ConsoleCapture {
    pub fn start(server: &Server, vmi: &str) -> ConsoleCapture {
        Self::start_as(&server.kubeconfig, &["console", vmi])
    }

    /// `virtctl ARGS` (a console) with another user's kubeconfig.
    pub fn start_as(kubeconfig: &Path, args: &[&str]) -> ConsoleCapture {
        let mut child = Command::new(virtctl())
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        ConsoleCapture { child, output }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    pub fn send(&mut self, s: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(s.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the guest's shell prompt, pressing Enter each second: a guest that booted
    /// before the console attached prints nothing until asked.
    pub fn wait_for_prompt(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.text().contains("guest#") {
            assert!(
                Instant::now() < deadline,
                "no shell prompt: {}",
                self.text()
            );
            self.send("\r");
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    pub fn wait_for(&self, needle: &str) {
        self.wait_for_after(0, needle);
    }

    /// Types `command` and Enter, then waits for `want` in what the console printed since:
    /// an answer to an earlier command never counts.
    pub fn run(&mut self, command: &str, want: &str) {
        let from = self.output.lock().unwrap().len();
        self.send(&format!("{command}\r"));
        self.wait_for_after(from, want);
    }

    /// Waits for `needle` in the output after its first `from` bytes.
    fn wait_for_after(&self, from: usize, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let since = || String::from_utf8_lossy(&self.output.lock().unwrap()[from..]).into_owned();
        while Instant::now() < deadline {
            if since().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("console never showed {needle:?}; got:\n{}", since());
    }
}

impl Drop for ConsoleCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python's http.server serving `dir` on a free loopback port.
pub struct HttpDir {
    child: Child,
    port: u16,
}

impl HttpDir {
    pub fn serve(dir: &Path) -> HttpDir {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        HttpDir { child, port }
    }

    pub fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.port)
    }
}

impl Drop for HttpDir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl's arguments for opening a websocket as the web console does: HTTP/1.1 upgrade,
/// `plain.kubevirt.io`, and the bearer token as a subprotocol (browsers cannot set headers
/// on a websocket).
pub fn curl_websocket_args(token: &str) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    [
        "--http1.1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "-H",
        &format!(
            "Sec-WebSocket-Protocol: plain.kubevirt.io, base64url.bearer.authorization.k8s.io.{b64}"
        ),
    ]
    .map(str::to_string)
    .to_vec()
}
