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
