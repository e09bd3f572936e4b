//! Registers this host as a Node and keeps its Ready condition fresh.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::error::{HandlerError, Result};

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

fn api_err(action: &'static str, name: &str) -> impl FnOnce(kube::Error) -> HandlerError {
    let name = name.to_string();
    move |source| HandlerError::Api {
        action,
        kind: "Node",
        namespace: String::new(),
        name,
        source: Box::new(source),
    }
}

fn status_patch(now: &str) -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubevirtHandlerReady",
            "message": "kubevirt-rs node agent is running",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "capacity": {"cpu": cpus.to_string()},
        "allocatable": {"cpu": cpus.to_string()},
        "nodeInfo": {
            "architecture": std::env::consts::ARCH, "operatingSystem": std::env::consts::OS,
            "kubeletVersion": concat!("kubevirt-rs-", env!("CARGO_PKG_VERSION")),
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
        },
    }})
}

/// Creates the Node if missing and marks it Ready.
pub async fn register(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes
        .get_opt(name)
        .await
        .map_err(api_err("getting", name))?
        .is_none()
    {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubevirt.io/schedulable": "true",
            }},
        }))
        .map_err(|e| HandlerError::Launcher {
            vmi: name.into(),
            reason: e.to_string(),
        })?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api_err("creating", name)(e)),
        }
    }
    heartbeat(&nodes, name).await
}

async fn heartbeat(nodes: &Api<Node>, name: &str) -> Result<()> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(&now)),
        )
        .await
        .map_err(api_err("updating status of", name))?;
    Ok(())
}

/// Refreshes the Node's heartbeat every 30 s until dropped.
pub async fn heartbeat_loop(client: Client, name: String) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if let Err(error) = heartbeat(&nodes, &name).await {
            tracing::warn!(%error, "node heartbeat failed");
        }
    }
}
