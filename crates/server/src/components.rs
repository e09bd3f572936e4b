//! The parts every mode runs the same way: the controllers (virt-controller's work) and
//! the node agent (virt-handler's, with the launcher pods' runtime). `server` runs both in
//! one process beside the embedded API server; in cluster mode `virt-controller` and
//! `virt-handler` run them against a real kube-apiserver.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use kube::Client;
use tokio::task::JoinSet;

use kubevirt_api::launcher_pod::LauncherPodSettings;
use kubevirt_handler::launchers::{LauncherConfig, Launchers, Notify};

/// Flags of the node agent, the same in `server` and `virt-handler`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Name of this node (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's address: the Node's InternalIP and its pods' hostIP, where virt-api
    /// reaches this node's subresources and migrations reach its launchers.
    #[arg(long, default_value = kubevirt_handler::node::DEFAULT_NODE_IP)]
    pub node_ip: std::net::IpAddr,
    /// Root of the VMs' run directories.
    #[arg(long, default_value = kubevirt_launcher::DEFAULT_RUN_ROOT)]
    pub run_root: PathBuf,
    /// Registry mapping HOST=TARGET for containerDisks, e.g.
    /// `registry:5000=http://127.0.0.1:5000` (repeatable).
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
    /// Registry reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Directory VMs may use hostDisks in (repeatable). Without one, hostDisk volumes are
    /// refused, as upstream's HostDisk feature gate is off by default: a hostDisk is a file
    /// of this host.
    #[arg(long = "host-disk-dir")]
    pub host_disk_dirs: Vec<PathBuf>,
}

impl NodeArgs {
    pub fn node(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(kubevirt_handler::node::local_node_name)
    }

    /// The hostDisk directories, absolute.
    pub fn host_disk_dirs(&self) -> anyhow::Result<Vec<PathBuf>> {
        self.host_disk_dirs
            .iter()
            .map(|d| {
                std::path::absolute(d).with_context(|| format!("--host-disk-dir {}", d.display()))
            })
            .collect()
    }

    /// `--registry-mirror HOST=URL` flags as a map (the launcher parses the same flags).
    pub fn registry_mirrors(&self) -> anyhow::Result<std::collections::HashMap<String, String>> {
        self.registry_mirrors
            .iter()
            .map(|m| {
                m.split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--registry-mirror {m:?} is not HOST=URL"))
            })
            .collect()
    }
}

/// A future that resolves once `stop` turns true; one per task that needs it.
pub fn stopped(
    stop: &tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + Sync + 'static {
    let mut rx = stop.clone();
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// The launcher pods' settings: this version's launcher image, the `launcher` command,
/// and whether guests run under software emulation.
pub fn pod_settings(image: &str, emulation: bool) -> LauncherPodSettings {
    LauncherPodSettings {
        emulation,
        ..LauncherPodSettings::new(
            image,
            vec!["/usr/bin/kubevirt-rs".into(), "launcher".into()],
        )
    }
}

/// The embedded launcher image name (what the pods show; nothing pulls it).
pub const EMBEDDED_LAUNCHER_IMAGE: &str =
    concat!("kubevirt-rs/virt-launcher:", env!("CARGO_PKG_VERSION"));

/// Spawns the controllers of virt-controller.
pub fn spawn_controllers(
    tasks: &mut JoinSet<()>,
    client: &Client,
    pods: LauncherPodSettings,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    use kubevirt_controller as c;
    tasks.spawn(c::vm_controller::run(client.clone(), stopped(stop)));
    tasks.spawn(c::snapshot::run(client.clone(), stopped(stop)));
    tasks.spawn(c::restore::run(client.clone(), stopped(stop)));
    tasks.spawn(c::clone::run(client.clone(), stopped(stop)));
    tasks.spawn(c::evacuation::run(client.clone(), stopped(stop)));
    tasks.spawn(c::install::run(client.clone(), stopped(stop)));
    tasks.spawn(c::migration::run(
        client.clone(),
        pods.clone(),
        stopped(stop),
    ));
    tasks.spawn(c::vmi_controller::run(client.clone(), pods, stopped(stop)));
}

/// The node agent: registers the node, runs the launcher pods bound to it (kubelet's part
/// for them) and syncs their VMIs (virt-handler's part).
pub struct NodeAgent {
    pub node: String,
    node_ip: String,
    /// Only launcher pods are this agent's; the node's other pods are a kubelet's (cluster
    /// mode). Else the agent is the node's only runtime and rejects what it cannot run.
    pub launcher_pods_only: bool,
    pub launchers: Arc<Launchers>,
    /// How live migrations reach the other nodes' agents (cluster mode).
    pub peers: Option<kubevirt_handler::peer::Peers>,
    pods_rx: tokio::sync::mpsc::UnboundedReceiver<
        kube::runtime::reflector::ObjectRef<k8s_openapi::api::core::v1::Pod>,
    >,
    vmis_rx: tokio::sync::mpsc::UnboundedReceiver<
        kube::runtime::reflector::ObjectRef<kubevirt_api::v1::VirtualMachineInstance>,
    >,
}

impl NodeAgent {
    /// `data_dir` keeps the VMs' persistent state and the containerDisk cache.
    pub fn new(args: &NodeArgs, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let mut extra = Vec::new();
        for d in args.host_disk_dirs()? {
            extra.push("--host-disk-dir".to_string());
            extra.push(d.display().to_string());
        }
        for m in &args.registry_mirrors {
            extra.push("--registry-mirror".to_string());
            extra.push(m.clone());
        }
        for r in &args.insecure_registries {
            extra.push("--insecure-registry".to_string());
            extra.push(r.clone());
        }
        extra.push("--cache-dir".into());
        extra.push(data_dir.join("containerdisks").display().to_string());
        let (pods_tx, pods_rx) = tokio::sync::mpsc::unbounded_channel();
        let (vmis_tx, vmis_rx) = tokio::sync::mpsc::unbounded_channel();
        let launchers = Arc::new(Launchers::new(
            LauncherConfig {
                run_root: args.run_root.clone(),
                persistent_root: data_dir.join("vms"),
                command: launcher_command()?,
                extra_args: extra,
            },
            Notify {
                pods: pods_tx,
                vmis: vmis_tx,
            },
        ));
        Ok(NodeAgent {
            node: args.node(),
            node_ip: args.node_ip.to_string(),
            launcher_pods_only: false,
            launchers,
            peers: None,
            pods_rx,
            vmis_rx,
        })
    }

    /// Registers the node, then spawns its heartbeat, the launcher pods' runtime and the
    /// VMI agent. Returns the store of this node's pods (the embedded scheduler reads it).
    pub async fn start(
        self,
        tasks: &mut JoinSet<()>,
        client: &Client,
        kvm: bool,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>> {
        let node = self.node;
        kubevirt_handler::node::register(client, &node, &self.node_ip, kvm)
            .await
            .context("registering the node")?;
        tasks.spawn(kubevirt_handler::node::heartbeat_loop(
            client.clone(),
            node.clone(),
            self.node_ip.clone(),
            kvm,
        ));
        let pods = kubevirt_handler::pods::controller(client, &node, self.launcher_pods_only);
        let store = pods.store();
        tasks.spawn(kubevirt_handler::pods::run(
            pods,
            Arc::new(kubevirt_handler::pods::Context::new(
                client.clone(),
                node.clone(),
                self.node_ip.clone(),
                self.launchers.clone(),
            )),
            self.pods_rx,
            stopped(stop),
        ));
        tasks.spawn(kubevirt_handler::agent::run(
            Arc::new(
                kubevirt_handler::agent::Context::new(
                    client.clone(),
                    node,
                    self.node_ip,
                    self.launchers,
                )
                .with_peers(self.peers),
            ),
            self.vmis_rx,
            stopped(stop),
        ));
        Ok(store)
    }
}

/// How the node agent runs a launcher: `kubevirt-launcher` from beside this binary (a
/// binary with nothing but the launcher: a smaller resident set per VM), else this binary's
/// `launcher` subcommand.
fn launcher_command() -> anyhow::Result<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dedicated = exe.with_file_name("kubevirt-launcher");
    Ok(if dedicated.is_file() {
        vec![dedicated.into()]
    } else {
        tracing::info!(
            "no kubevirt-launcher beside {}; launchers run as its subcommand",
            exe.display()
        );
        vec![exe.into(), "launcher".into()]
    })
}

/// Stops every running launcher (ACPI, hard stop after `grace_seconds`) and waits for them.
pub async fn stop_all(launchers: &Launchers, grace_seconds: u64) {
    let running: Vec<_> = launchers
        .all()
        .into_iter()
        .filter(|l| !l.exited())
        .collect();
    for l in &running {
        if let Err(error) = l.client.stop(Some(grace_seconds)).await {
            tracing::warn!(%error, pod = %l.key.name, "could not stop launcher");
        }
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(grace_seconds + 15);
    while tokio::time::Instant::now() < deadline && running.iter().any(|l| !l.exited()) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
