//! Cluster mode: `install`/`uninstall`, and the components a cluster runs as workloads
//! (`virt-api`, `virt-controller`, `virt-handler`), each against the cluster's own
//! kube-apiserver (in-cluster credentials, else `--kubeconfig` / `KUBECONFIG`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use kube::api::{Api, ListParams};
use kube::Client;
use kubevirt_api::launcher_pod::LauncherPodSettings;
use kubevirt_api::v1::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration};
use kubevirt_metrics::families::encode_text;
use kubevirt_metrics::Families;

use kubevirt_cluster::manifests::{self, InstallOptions};

use crate::components;

/// Where the cluster's credentials come from.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Kubeconfig of the cluster; by default the in-cluster service account, else `KUBECONFIG`.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

impl ClusterArgs {
    async fn client(&self) -> anyhow::Result<Client> {
        match &self.kubeconfig {
            Some(path) => crate::client_from(path).await,
            None => Ok(Client::try_default().await?),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Apply to the cluster (server-side apply) instead of printing YAML.
    #[arg(long)]
    apply: bool,
    /// Namespace of the components.
    #[arg(long, default_value = "kubevirt")]
    namespace: String,
    /// Image of the components (holds the `kubevirt-rs` binary).
    #[arg(long)]
    image: Option<String>,
    /// Image of the VMs' virt-launcher pods.
    #[arg(long)]
    launcher_image: Option<String>,
}

impl InstallArgs {
    fn objects(&self) -> Vec<serde_json::Value> {
        let mut o = InstallOptions::new(kubevirt_launcher::DEFAULT_RUN_ROOT);
        o.namespace = self.namespace.clone();
        if let Some(i) = &self.image {
            o.image = i.clone();
        }
        if let Some(i) = &self.launcher_image {
            o.launcher_image = i.clone();
        }
        manifests::install(&o)
    }
}

/// Writes the objects as YAML to standard output; a reader that stops early (`| head`)
/// is not an error.
fn print_yaml(objects: &[serde_json::Value]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(manifests::to_yaml(objects).as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `install`: prints the manifests, or applies them.
pub async fn install(args: InstallArgs) -> anyhow::Result<()> {
    let objects = args.objects();
    if !args.apply {
        return print_yaml(&objects);
    }
    let client = args.cluster.client().await?;
    kubevirt_cluster::apply::apply(&client, &objects).await?;
    println!(
        "kubevirt-rs {} installed in namespace {}",
        manifests::VERSION,
        args.namespace
    );
    Ok(())
}

/// `uninstall`: prints what an install consists of, or deletes it.
pub async fn uninstall(args: InstallArgs) -> anyhow::Result<()> {
    let objects = args.objects();
    if !args.apply {
        return print_yaml(&objects);
    }
    let client = args.cluster.client().await?;
    kubevirt_cluster::apply::uninstall(&client, &objects).await
}

#[derive(clap::Args, Debug)]
pub struct VirtApiArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The namespace virt-api runs in (its Service, CA and certificate Secrets).
    #[arg(long, default_value = "kubevirt")]
    namespace: String,
    /// Address of the HTTPS listener (webhooks, `/healthz`).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Directory VMs may use hostDisks in (repeatable): hostDisk volumes are refused
    /// without one, as upstream's HostDisk feature gate is off by default.
    #[arg(long = "host-disk-dir")]
    host_disk_dirs: Vec<PathBuf>,
    /// The port virt-handlers serve the node-level subresources on (console, VNC, ...).
    #[arg(long, default_value_t = kubevirt_cluster::node_api::DEFAULT_PORT)]
    handler_port: u16,
}

pub async fn virt_api(args: VirtApiArgs) -> anyhow::Result<()> {
    let client = args.cluster.client().await?;
    let admission = Arc::new(kubevirt_apiserver::kubevirt::KubevirtAdmission {
        host_disks: kubevirt_api::host_disk::HostDiskPolicy {
            dirs: args.host_disk_dirs,
        },
    });
    let vm_subresources = kubevirt_handler::subresources::SubresourceState::without_node();
    vm_subresources.set_client(client.clone());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let serve = tokio::spawn(kubevirt_cluster::virt_api::run(
        client,
        kubevirt_cluster::virt_api::VirtApiConfig {
            namespace: args.namespace,
            listen: args.listen,
            admission,
            lifetimes: Default::default(),
            handler_port: args.handler_port,
            vm_subresources: kubevirt_handler::subresources::vm_router(vm_subresources),
        },
        stop,
    ));
    tokio::select! {
        r = serve => return r?,
        _ = components::wait_for_signal() => {}
    }
    let _ = stop_tx.send(true);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct VirtControllerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The namespace of the leader-election Lease.
    #[arg(long, default_value = "kubevirt")]
    namespace: String,
    /// Image of the VMs' virt-launcher pods.
    #[arg(long, default_value = components::EMBEDDED_LAUNCHER_IMAGE)]
    launcher_image: String,
    /// Guests run under software emulation (no `devices.kubevirt.io/kvm` request), as
    /// upstream's `useEmulation`.
    #[arg(long)]
    use_emulation: bool,
    /// This replica's identity in the Lease (default: `POD_NAME`, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of the HTTPS `/metrics` listener (the VM and VMI object metrics; served
    /// by the leader, empty on a standby).
    #[arg(long, default_value = METRICS_LISTEN)]
    metrics_listen: SocketAddr,
}

/// Where virt-controller and virt-handler serve `/metrics`, as upstream's (port 8443).
const METRICS_LISTEN: &str = "0.0.0.0:8443";

/// The VM and VMI object metrics, listed from the API when scraped.
async fn object_metrics(client: Client) -> String {
    let lp = ListParams::default();
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let migrations: Api<VirtualMachineInstanceMigration> = Api::all(client);
    let mut families = Families::default();
    match futures::join!(vms.list(&lp), vmis.list(&lp), migrations.list(&lp)) {
        (Ok(vms), Ok(vmis), Ok(migrations)) => kubevirt_metrics::objects::collect(
            &mut families,
            &vms.items,
            &vmis.items,
            &migrations.items,
        ),
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            tracing::warn!(%error, "listing VMs, VMIs and migrations for metrics")
        }
    }
    encode_text(families)
}

/// The Lease the virt-controller replicas elect their leader with (upstream's name).
pub const CONTROLLER_LEASE: &str = "virt-controller";

pub async fn virt_controller(args: VirtControllerArgs) -> anyhow::Result<()> {
    let client = args.cluster.client().await?;
    let identity = args
        .identity
        .unwrap_or_else(kubevirt_handler::node::local_node_name);
    let lease =
        kubevirt_reconcile::leader::LeaseConfig::new(&args.namespace, CONTROLLER_LEASE, &identity);
    let pods = LauncherPodSettings {
        migrate_to_other_nodes: true,
        ..components::pod_settings(&args.launcher_image, args.use_emulation)
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // Only the leader reports: standbys would repeat its series.
    let leading = Arc::new(AtomicBool::new(false));
    let collect: kubevirt_cluster::metrics::Collect = {
        let (client, leading) = (client.clone(), leading.clone());
        Arc::new(move || {
            let (client, leading) = (client.clone(), leading.clone());
            Box::pin(async move {
                if leading.load(Ordering::SeqCst) {
                    object_metrics(client).await
                } else {
                    encode_text(Families::default())
                }
            })
        })
    };
    let metrics = tokio::spawn(kubevirt_cluster::metrics::serve(
        args.metrics_listen,
        "virt-controller",
        kubevirt_cluster::metrics::router(client.clone(), collect),
        stop.clone(),
    ));
    let lead = {
        let (client, stop, namespace) = (client.clone(), stop.clone(), args.namespace.clone());
        move || async move {
            leading.store(true, Ordering::SeqCst);
            // The install's KubeVirt object, as applying upstream's operator CR makes it.
            if let Err(error) =
                kubevirt_controller::install::ensure_object(&client, &namespace).await
            {
                tracing::warn!(%error, "creating the install's KubeVirt object");
            }
            let mut tasks = tokio::task::JoinSet::new();
            components::spawn_controllers(&mut tasks, &client, pods, &stop);
            while tasks.join_next().await.is_some() {}
            leading.store(false, Ordering::SeqCst);
        }
    };
    let elected =
        kubevirt_reconcile::leader::run_as_leader(client, lease, components::stopped(&stop), lead);
    tokio::pin!(elected);
    tokio::select! {
        r = &mut elected => return r.map_err(Into::into),
        _ = components::wait_for_signal() => {}
    }
    let _ = stop_tx.send(true);
    metrics.abort();
    // Stopping releases the Lease, so a standby takes over at once.
    elected.await.map_err(Into::into)
}

#[derive(clap::Args, Debug)]
pub struct VirtHandlerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    node: components::NodeArgs,
    /// The node's persistent state (VMs' data, containerDisk cache).
    #[arg(long, default_value = "/var/lib/kubevirt-rs")]
    data_dir: PathBuf,
    /// The namespace of the install (where virt-api keeps this node's certificate).
    #[arg(long, default_value = "kubevirt")]
    namespace: String,
    /// Address of the node's subresources endpoint (console, VNC, ...), reached by virt-api.
    #[arg(long, default_value = "0.0.0.0:8186")]
    listen: SocketAddr,
    /// Address of the HTTPS `/metrics` listener (this node's VMs' counters).
    #[arg(long, default_value = METRICS_LISTEN)]
    metrics_listen: SocketAddr,
}

/// `virt-handler`: the node agent against a real kube-apiserver. It registers its node and
/// runs the launcher pods kube-scheduler binds to it (kubelet's part for those pods), and
/// syncs their VMIs.
pub async fn virt_handler(args: VirtHandlerArgs) -> anyhow::Result<()> {
    let client = args.cluster.client().await?;
    let accel = kubevirt_hypervisor::detect_accelerator();
    let kvm = accel.kind == kubevirt_hypervisor::AcceleratorKind::Kvm;
    tracing::info!(accel = accel.kind.as_str(), reason = %accel.reason, "guests will use");
    let mut agent = components::NodeAgent::new(&args.node, &args.data_dir)?;
    // The node's other pods (virt-api's, kube-proxy's, ...) are kubelet's to run.
    agent.launcher_pods_only = true;
    // Live migrations to and from other nodes: their streams go between the agents' node
    // endpoints, each presenting this install's virt-handler certificate.
    agent.peers = Some(kubevirt_handler::peer::Peers {
        port: args.listen.port(),
        client_tls: {
            let (client, ns) = (client.clone(), args.namespace.clone());
            Arc::new(move || {
                let (client, ns) = (client.clone(), ns.clone());
                Box::pin(async move {
                    let pki = kubevirt_cluster::certs::read_handler_pki(&client, &ns)
                        .await
                        .ok()??;
                    kubevirt_cluster::certs::handler_client_config(&pki).ok()
                })
            })
        },
        server_name: kubevirt_cluster::certs::HANDLER_SERVER_NAME.into(),
    });
    let node = agent.node.clone();
    let collect: kubevirt_cluster::metrics::Collect = {
        let (client, node, launchers) = (client.clone(), node.clone(), agent.launchers.clone());
        Arc::new(move || {
            let (client, node, launchers) = (client.clone(), node.clone(), launchers.clone());
            Box::pin(async move {
                let vmis: Api<VirtualMachineInstance> = Api::all(client);
                let on_node = ListParams::default().labels(&format!(
                    "{}={node}",
                    kubevirt_api::v1::well_known::NODE_NAME_LABEL
                ));
                let vmis = match vmis.list(&on_node).await {
                    Ok(l) => l.items,
                    Err(error) => {
                        tracing::warn!(%error, "listing this node's VMIs for metrics");
                        Vec::new()
                    }
                };
                encode_text(kubevirt_handler::metrics::collect(&vmis, &node, &launchers).await)
            })
        })
    };
    let sub = kubevirt_handler::subresources::SubresourceState::new(agent.launchers.clone());
    sub.set_client(client.clone());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let launchers = agent.launchers.clone();
    agent.start(&mut tasks, &client, kvm, &stop).await?;
    tasks.spawn(kubevirt_cluster::node_api::serve(
        client.clone(),
        args.namespace,
        args.listen,
        kubevirt_handler::subresources::router(sub.clone())
            .merge(kubevirt_handler::logs::router(sub))
            .merge(kubevirt_handler::peer::router(launchers)),
        stop.clone(),
    ));
    tasks.spawn(kubevirt_cluster::metrics::serve(
        args.metrics_listen,
        "virt-handler",
        kubevirt_cluster::metrics::router(client.clone(), collect),
        stop.clone(),
    ));
    println!("virt-handler is running on node {node}");
    components::wait_for_signal().await;
    let _ = stop_tx.send(true);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct VirtConsoleArgs {
    /// Address of the console's HTTPS listener.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The Kubernetes API server; in a pod, the `kubernetes` Service from its environment.
    #[arg(long)]
    api_server: Option<String>,
    /// The CA bundle of the API server's certificate (the install mounts the
    /// `kube-root-ca.crt` ConfigMap there).
    #[arg(long, default_value = "/etc/kubevirt-rs/api-ca/ca.crt")]
    api_ca: PathBuf,
}

/// The in-cluster API server address, as client-go's in-cluster config finds it.
fn in_cluster_api_server() -> anyhow::Result<String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| anyhow::anyhow!("--api-server is needed outside a pod"))?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    Ok(if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    })
}

pub async fn virt_console(args: VirtConsoleArgs) -> anyhow::Result<()> {
    let api_server = match args.api_server {
        Some(url) => url,
        None => in_cluster_api_server()?,
    };
    let ca = std::fs::read_to_string(&args.api_ca)
        .with_context(|| format!("reading {}", args.api_ca.display()))?;
    let upstream = kubevirt_console::Upstream::new(&api_server, &ca)?;
    let mut tls = kubevirt_cluster::certs::self_signed_server_config(manifests::VIRT_CONSOLE)?;
    // Browsers multiplex the console's watches over HTTP/2.
    if let Some(cfg) = Arc::get_mut(&mut tls) {
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("console: https://{}/", listener.local_addr()?);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let serve = tokio::spawn(kubevirt_console::serve(listener, tls, upstream, stop));
    tokio::select! {
        r = serve => r?,
        _ = components::wait_for_signal() => {}
    }
    let _ = stop_tx.send(true);
    Ok(())
}
