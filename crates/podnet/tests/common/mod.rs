//! Shared helpers for the root-only integration tests: every test gets its own host bridge,
//! pod range, netns prefix and state dir, so tests run in parallel and never touch `kvrs0`.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;

use kubevirt_podnet::{PodNetwork, PodNetworkConfig, PodNetworkHandle};

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests build network namespaces and need root"
    );
}

/// A node-wide pod network private to one test (`tag` 1..=99 picks the /24).
pub struct TestNet {
    pub net: PodNetwork,
    pub state: tempfile::TempDir,
    pub tag: u8,
}

impl TestNet {
    pub fn new(tag: u8) -> TestNet {
        require_root();
        let state = tempfile::tempdir().unwrap();
        let pid = std::process::id() % 100_000;
        let cfg = PodNetworkConfig {
            bridge: format!("kvt{pid}x{tag}"),
            gateway: Ipv4Addr::new(10, 251, tag, 1),
            prefix_len: 24,
            state_dir: state.path().to_path_buf(),
            netns_prefix: "kvt-".into(),
            host_forwarding: false,
        };
        TestNet {
            net: PodNetwork::new(cfg).unwrap(),
            state,
            tag,
        }
    }

    pub fn vm_id(&self, name: &str) -> String {
        format!("test-{}-{}-{name}", std::process::id(), self.tag)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.net.config().gateway
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Best effort, so a failed test leaves nothing behind either.
        if let Ok(list) = self.net.list() {
            for h in list {
                let _ = h.teardown();
            }
        }
        let _ = self.net.teardown_host();
    }
}

/// Runs a command, returning (success, stdout+stderr).
pub fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn ok(cmd: &str) -> String {
    let (success, text) = sh(cmd);
    assert!(success, "`{cmd}` failed: {text}");
    text
}

/// Asserts nothing of `h` is left on the host.
pub fn assert_gone(h: &PodNetworkHandle) {
    assert!(
        !h.netns_path.exists(),
        "{} still exists",
        h.netns_path.display()
    );
    assert!(
        !ok("ip netns list").contains(&h.netns_name),
        "netns still listed"
    );
    let (exists, _) = sh(&format!("ip link show dev {}", h.host_veth));
    assert!(!exists, "host veth {} still exists", h.host_veth);
    assert!(
        !h.state_dir.join("ips").join(h.pod_ip.to_string()).exists(),
        "IP {} still allocated",
        h.pod_ip
    );
    let records = std::fs::read_dir(h.state_dir.join("vms"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .filter(|text| text.contains(&format!("\"vm_id\": \"{}\"", h.vm_id)))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        records,
        0,
        "record of {} left in {}",
        h.vm_id,
        h.state_dir.display()
    );
}

/// A QEMU running the test guest; killed on drop.
pub struct Qemu {
    pub child: std::process::Child,
    pub console: kubevirt_testenv::Console,
    pub dir: tempfile::TempDir,
}

impl Qemu {
    /// Boots the test guest under TCG with `net_args`, inside `netns` if given.
    pub fn boot(netns: Option<&std::path::Path>, net_args: &[String]) -> Qemu {
        let g = kubevirt_testenv::guests();
        let dir = tempfile::tempdir().unwrap();
        let serial = dir.path().join("serial.sock");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&g.vmlinux)
        .arg("-initrd")
        .arg(&g.initramfs)
        .args(["-append", g.kernel_cmdline])
        .arg("-serial")
        .arg(format!("unix:{},server=on,wait=off", serial.display()))
        .args(net_args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("qemu.log")).unwrap());
        if let Some(ns) = netns {
            kubevirt_podnet::enter_netns_for_child(&mut cmd, ns).unwrap();
        }
        let child = cmd.spawn().unwrap();
        let console =
            kubevirt_testenv::Console::connect(&serial, std::time::Duration::from_secs(30))
                .unwrap_or_else(|e| {
                    let log =
                        std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
                    panic!("{e:#}\nqemu log: {log}")
                });
        Qemu {
            child,
            console,
            dir,
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop();
    }
}
