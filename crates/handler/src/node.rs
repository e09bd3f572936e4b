//! Registers this host as a Node (labels, capacity, addresses) and keeps its Ready
//! heartbeat.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kubevirt_api::v1::well_known::NODE_SCHEDULABLE_LABEL;
use kubevirt_reconcile::api_call_on;
use serde_json::{json, Value};

use crate::error::Result;

/// The node name in embedded mode: the host name (lower-cased, as kubelet does).
pub fn local_node_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// The node's address by default: loopback, where the embedded API listens. Nodes of a
/// cluster without kubelet say theirs with `--node-ip`.
pub const DEFAULT_NODE_IP: &str = "127.0.0.1";

/// Kubernetes' name for this machine's architecture (`kubernetes.io/arch`).
pub fn kube_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn mem_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Size of the filesystem holding `path`, in bytes.
fn filesystem_bytes(path: &str) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0)
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default()
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Capacity this node offers pods: CPUs, memory, a pod count, and the device resources
/// launcher pods ask for (`devices.kubevirt.io/kvm` only where KVM really works).
pub fn capacity(kvm: bool) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cap = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", mem_total_kib()),
        "ephemeral-storage": filesystem_bytes("/").to_string(),
        "pods": "4096",
        "devices.kubevirt.io/tun": "1k",
    });
    if kvm {
        cap["devices.kubevirt.io/kvm"] = json!("1k");
    }
    if std::path::Path::new("/dev/vhost-net").exists() {
        cap["devices.kubevirt.io/vhost-net"] = json!("1k");
    }
    cap
}

fn status_patch(now: &str, ip: &str, kvm: bool) -> Value {
    let capacity = capacity(kvm);
    json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubevirt-rs node agent is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": local_node_name()},
        ],
        "nodeInfo": {
            "architecture": kube_arch(), "operatingSystem": std::env::consts::OS,
            "kubeletVersion": concat!("kubevirt-rs-", env!("CARGO_PKG_VERSION")),
            "containerRuntimeVersion": concat!("kubevirt-rs://", env!("CARGO_PKG_VERSION")),
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": kernel_version(),
            "osImage": os_image(), "kubeProxyVersion": "",
        },
    }})
}

/// Creates the Node if missing and marks it Ready, with address `ip`. `kvm`: guests can use
/// KVM here.
pub async fn register(client: &Client, name: &str, ip: &str, kvm: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes
        .get_opt(name)
        .await
        .map_err(api_call_on("getting", "Node", "", name))?
        .is_none()
    {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/arch": kube_arch(),
                "kubernetes.io/os": std::env::consts::OS,
                NODE_SCHEDULABLE_LABEL: "true",
            }},
        }))
        .expect("a literal Node");
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api_call_on("creating", "Node", "", name)(e).into()),
        }
    }
    heartbeat(&nodes, name, ip, kvm).await
}

async fn heartbeat(nodes: &Api<Node>, name: &str, ip: &str, kvm: bool) -> Result<()> {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(jiff::Timestamp::now())
        .to_string();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(&now, ip, kvm)),
        )
        .await
        .map_err(api_call_on("updating status of", "Node", "", name))?;
    Ok(())
}

/// Refreshes the Node's heartbeat every 30 s until dropped.
pub async fn heartbeat_loop(client: Client, name: String, ip: String, kvm: bool) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if let Err(error) = heartbeat(&nodes, &name, &ip, kvm).await {
            tracing::warn!(%error, "node heartbeat failed");
        }
    }
}
