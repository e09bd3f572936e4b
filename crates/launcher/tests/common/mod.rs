//! Helpers shared by the launcher tests: start the real launcher binary on a VMI, talk to it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kubevirt_launcher::{LauncherClient, LauncherStatus, RunDir, Stage};
use kubevirt_testenv::Console;

pub const T: Duration = Duration::from_secs(90);

pub fn launcher_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kubevirt-launcher")
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A VM run by a real launcher in a temp dir.
pub struct TestVm {
    pub dir: tempfile::TempDir,
    pub run_dir: RunDir,
    pub client: LauncherClient,
    /// The launcher process, when this test started it.
    pub child: Option<std::process::Child>,
}

impl TestVm {
    pub fn vmi_path(&self) -> PathBuf {
        self.dir.path().join("vmi.json")
    }

    pub fn launcher_pid(&self) -> Option<u32> {
        kubevirt_launcher::live_pid(&self.run_dir.pid_file())
    }

    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(self.run_dir.serial_log()).unwrap_or_default()
    }

    /// Waits until the serial log contains `needle` `count` times.
    pub fn wait_serial(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + T;
        loop {
            let log = self.serial_log();
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} x{count} not seen; serial log:\n{log}\nlauncher log:\n{}",
                std::fs::read_to_string(self.run_dir.launcher_log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the launcher to exit; returns its exit code (when it is this test's child)
    /// and the final status it recorded.
    pub fn wait_final(&mut self) -> (Option<i32>, LauncherStatus) {
        let deadline = Instant::now() + T;
        let code = match self.child.as_mut() {
            Some(c) => loop {
                if let Some(st) = c.try_wait().unwrap() {
                    break st.code();
                }
                assert!(Instant::now() < deadline, "launcher did not exit");
                std::thread::sleep(Duration::from_millis(50));
            },
            None => {
                while self.launcher_pid().is_some() {
                    assert!(Instant::now() < deadline, "launcher did not exit");
                    std::thread::sleep(Duration::from_millis(50));
                }
                None
            }
        };
        let fin = kubevirt_launcher::final_status(&self.run_dir).unwrap_or_else(|| {
            panic!(
                "no final status; launcher log:\n{}",
                std::fs::read_to_string(self.run_dir.launcher_log()).unwrap_or_default()
            )
        });
        assert_eq!(fin.stage, Stage::Exited, "{fin:?}");
        (code, fin)
    }

    /// The status now.
    pub fn status(&self, rt: &tokio::runtime::Runtime) -> LauncherStatus {
        rt.block_on(self.client.status()).unwrap()
    }

    /// Files left in the run dir besides what the node agent reads afterwards.
    pub fn leftovers(&self) -> Vec<String> {
        let keep = [
            "vmi.json",
            "final-state.json",
            "serial.log",
            "qemu.log",
            "launcher.log",
        ];
        std::fs::read_dir(self.run_dir.path())
            .map(|it| {
                it.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !keep.contains(&n.as_str()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestVm {
    /// A failed test must not leave a VM behind: SIGKILL the launcher (QEMU and swtpm die
    /// with it through their parent-death signal).
    fn drop(&mut self) {
        if let Some(pid) = self.launcher_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// Writes the VMI and starts `kubevirt-launcher --vmi` in its own process group (as the node
/// agent does), logging to its run dir; returns once the launcher reports QEMU started.
pub fn launch(vmi: serde_json::Value, extra: &[String]) -> TestVm {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::new(dir.path().join("run"));
    let mut vm = TestVm {
        client: LauncherClient::for_run_dir(&run_dir),
        run_dir,
        dir,
        child: None,
    };
    std::fs::write(vm.vmi_path(), serde_json::to_vec(&vmi).unwrap()).unwrap();
    std::fs::create_dir_all(vm.run_dir.path()).unwrap();
    let log = std::fs::File::create(vm.run_dir.launcher_log()).unwrap();
    use std::os::unix::process::CommandExt;
    vm.child = Some(
        Command::new(launcher_bin())
            .args(launcher_args(&vm))
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    vm.wait_started();
    vm
}

impl TestVm {
    /// Follows the launcher's status stream until QEMU runs (panics if it exits first).
    pub fn wait_started(&self) {
        use futures::StreamExt;
        let rt = rt();
        let deadline = Instant::now() + T;
        let started = rt.block_on(async {
            loop {
                assert!(Instant::now() < deadline, "launcher never answered");
                let Ok(stream) = self.client.watch().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut stream = std::pin::pin!(stream);
                while let Some(Ok(st)) = stream.next().await {
                    match st.stage {
                        Stage::Started => return Ok(st),
                        Stage::Exited => return Err(st),
                        _ => {}
                    }
                }
            }
        });
        if let Err(st) = started {
            panic!(
                "launcher failed: {st:?}\n{}",
                std::fs::read_to_string(self.run_dir.launcher_log()).unwrap_or_default()
            );
        }
    }
}

/// Starts `kubevirt-launcher` for VMI `name`/`uid` in `run_dir` the way the node agent
/// does (no `--vmi`: it waits for the sync; its own process group), logging to its run
/// dir; returns once it answers on its socket.
pub fn start_for_sync(run_dir: RunDir, name: &str, uid: &str) -> TestVm {
    start_for_sync_with(run_dir, name, uid, &[])
}

/// [`start_for_sync`] with more launcher arguments (e.g. `--claim NAME=PATH`).
pub fn start_for_sync_with(run_dir: RunDir, name: &str, uid: &str, extra: &[&str]) -> TestVm {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(run_dir.path()).unwrap();
    let log = std::fs::File::create(run_dir.launcher_log()).unwrap();
    let child = Command::new(launcher_bin())
        .args(["--namespace", "tests", "--name", name, "--uid", uid])
        .arg("--run-dir")
        .arg(run_dir.path())
        .arg("--persistent-dir")
        .arg(dir.path().join("persist"))
        .arg("--host-disk-dir")
        .arg(std::env::temp_dir())
        .args(extra)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    let vm = TestVm {
        client: LauncherClient::for_run_dir(&run_dir),
        run_dir,
        dir,
        child: Some(child),
    };
    let rt = rt();
    let deadline = Instant::now() + T;
    while rt.block_on(vm.client.status()).is_err() {
        assert!(Instant::now() < deadline, "launcher never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    vm
}

/// Follows the launcher's status stream until `done` holds for a status (panics if the
/// launcher exits first); returns that status.
pub fn wait_status(vm: &TestVm, done: impl Fn(&LauncherStatus) -> bool) -> LauncherStatus {
    use futures::StreamExt;
    let rt = rt();
    rt.block_on(async {
        let stream = vm.client.watch().await.unwrap();
        let mut stream = std::pin::pin!(stream);
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let next = tokio::time::timeout_at(deadline, stream.next()).await;
            match next {
                Ok(Some(Ok(st))) if done(&st) => return st,
                Ok(Some(Ok(_))) => {}
                other => panic!(
                    "status never came ({other:?}); launcher log:\n{}",
                    std::fs::read_to_string(vm.run_dir.launcher_log()).unwrap_or_default()
                ),
            }
        }
    })
}

pub fn launcher_args(vm: &TestVm) -> Vec<String> {
    vec![
        "--vmi".into(),
        vm.vmi_path().display().to_string(),
        "--run-dir".into(),
        vm.run_dir.path().display().to_string(),
        "--persistent-dir".into(),
        vm.dir.path().join("persist").display().to_string(),
        "--cache-dir".into(),
        vm.dir.path().join("cache").display().to_string(),
        // The tests' disk images live in temporary directories.
        "--host-disk-dir".into(),
        std::env::temp_dir().display().to_string(),
    ]
}

/// A VMI skeleton: 1 vCPU, 192 MiB, no pod network.
pub fn vmi(
    name: &str,
    devices: serde_json::Value,
    volumes: serde_json::Value,
) -> serde_json::Value {
    let mut devices = devices;
    devices["autoattachPodInterface"] = false.into();
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "tests", "uid": format!("uid-{name}")},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "domain": {"cpu": {"cores": 1}, "memory": {"guest": "192Mi"}, "devices": devices},
            "volumes": volumes
        }
    })
}

pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or("X");
    state != "Z" && state != "X"
}

pub fn wait_dead(pid: u32) {
    let deadline = Instant::now() + T;
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The launcher's console stream as a testenv `Console` (bridged through a socketpair).
pub fn console(rt: &tokio::runtime::Runtime, client: &LauncherClient) -> Console {
    let stream = rt.block_on(client.console()).unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let mut stream = stream;
        let mut b = tokio::net::UnixStream::from_std(b).unwrap();
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut b).await;
    });
    Console::from_stream(a).unwrap()
}

pub fn copy_to(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap();
    dst
}

/// Builds an OCI image layout (tag `devel`) with `files` (path in image -> host file) in one
/// uncompressed tar layer, the way `scripts/build-guests.sh` builds the containerDisk.
pub fn oci_layout(dir: &Path, files: &[(&str, &Path)]) -> PathBuf {
    let root = dir.join("rootfs");
    for (inner, src) in files {
        let dst = root.join(inner);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, &dst).unwrap();
    }
    let layer = dir.join("layer.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&layer)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let oci = dir.join("oci");
    let st = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import hashlib, json, os, sys
oci, layer = sys.argv[1:3]
os.makedirs(os.path.join(oci, "blobs", "sha256"), exist_ok=True)
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(oci, "blobs", "sha256", d), "wb").write(data)
    return "sha256:" + d, len(data)
ld, ls = blob(open(layer, "rb").read())
cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}, "config": {}}).encode()
cd, cs = blob(cfg)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]}).encode()
md, ms = blob(m)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
  "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "devel"}}]},
  open(os.path.join(oci, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(oci, "oci-layout"), "w"))
"#,
        )
        .arg(&oci)
        .arg(&layer)
        .status()
        .unwrap();
    assert!(st.success());
    oci
}
