//! `kubevirt-rs`: the multi-call binary.
//!
//! - `server`: the embedded all-in-one (API server, VM and VMI controllers, node agent,
//!   subresources) in one process; VMs run in launcher processes that outlive it.
//! - `launcher`: one VM's supervisor (started by the node agent).
//! - `crds`: prints the CustomResourceDefinitions.
//! - `install`, `uninstall`: everything a Kubernetes cluster needs (printed or applied).
//! - `virt-api`, `virt-controller`, `virt-handler`, `virt-console`: the components of
//!   cluster mode.
//! - `kubeconfig`: writes a client-certificate kubeconfig for a user and groups.
//! - `version`.

mod cluster;
mod components;
mod metrics;
mod update;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use kubevirt_handler::subresources::{router, SubresourceState};

#[derive(Parser, Debug)]
#[command(
    name = "kubevirt-rs",
    version,
    about = "KubeVirt-compatible virtual machines, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the API server, controllers and node agent on this machine.
    Server(ServeArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Write a kubeconfig for a user with a client certificate (CN = user, O = groups)
    /// signed by the embedded server's CA; bind roles to the user or its groups with RBAC.
    Kubeconfig(KubeconfigArgs),
    /// Run one VirtualMachineInstance (started by the node agent; see `launcher --help`).
    Launcher,
    /// Move every running VM onto a fresh launcher and QEMU (after an upgrade) by live
    /// migration, without a guest reboot.
    UpdateVms(update::UpdateArgs),
    /// Print (or `--apply`) everything a Kubernetes cluster needs to run kubevirt-rs.
    Install(cluster::InstallArgs),
    /// Print (or `--apply`: delete) what `install` created.
    Uninstall(cluster::InstallArgs),
    /// Cluster mode: the admission webhooks over TLS, with a self-managed CA.
    VirtApi(cluster::VirtApiArgs),
    /// Cluster mode: the controllers, one leader among the replicas (a Lease).
    VirtController(cluster::VirtControllerArgs),
    /// Cluster mode: the node agent, running the launcher pods bound to its node.
    VirtHandler(cluster::VirtHandlerArgs),
    /// Cluster mode: the web console, in front of kube-apiserver (it holds no credentials;
    /// each user logs in with a token).
    VirtConsole(cluster::VirtConsoleArgs),
    /// Print the version.
    Version,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    api: kubevirt_apiserver::ServerArgs,
    /// Stop the running VMs (ACPI, then hard after their grace period) when the server exits.
    /// By default they keep running and the next server adopts them.
    #[arg(long)]
    stop_vms_on_exit: bool,
    /// Where the web console listens (HTTPS, the API server's certificate); `off` for none.
    /// It reaches the API with each user's own token, so it grants nobody anything.
    #[arg(long, default_value = "127.0.0.1:8006", value_parser = parse_console_listen)]
    console_listen: ConsoleListen,
    #[command(flatten)]
    node: components::NodeArgs,
}

#[derive(Clone, Debug)]
enum ConsoleListen {
    Off,
    At(SocketAddr),
}

fn parse_console_listen(s: &str) -> Result<ConsoleListen, String> {
    if s == "off" {
        return Ok(ConsoleListen::Off);
    }
    s.parse()
        .map(ConsoleListen::At)
        .map_err(|_| format!("{s:?} is neither an address (IP:PORT) nor `off`"))
}

/// Starts the web console in front of the embedded API server; returns its address.
async fn start_console(
    listen: SocketAddr,
    data_dir: &std::path::Path,
    api_url: &str,
    ca_pem: &str,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let tls = kubevirt_apiserver::tls::serving_config_without_client_auth(data_dir)?;
    let upstream = kubevirt_console::Upstream::new(api_url, ca_pem)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("the web console cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tasks.spawn(kubevirt_console::serve(
        listener,
        tls,
        upstream,
        stop.clone(),
    ));
    Ok(addr)
}

#[derive(clap::Args, Debug)]
struct KubeconfigArgs {
    /// The user name (the certificate's CommonName).
    #[arg(long)]
    user: String,
    /// A group of the user (an Organization of the certificate; repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// The server's data directory (holds its CA).
    #[arg(long, env = "KUBEVIRT_RS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// How long the certificate is valid, in days.
    #[arg(long, default_value_t = 365)]
    days: u64,
    /// Write to this file (mode 0600) instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn write_user_kubeconfig(a: KubeconfigArgs) -> anyhow::Result<()> {
    let dir = a
        .data_dir
        .unwrap_or_else(kubevirt_apiserver::default_data_dir);
    if a.user.is_empty() {
        anyhow::bail!("--user must not be empty");
    }
    let text = kubevirt_apiserver::tls::user_kubeconfig(
        &dir,
        &a.user,
        &a.groups,
        std::time::Duration::from_secs(a.days.saturating_mul(86_400)),
    )?;
    match a.output {
        Some(path) => kubevirt_apiserver::tls::write_kubeconfig(&path, &text)?,
        None => print!("{text}"),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The launcher forks: it must run before any runtime thread exists.
    if args.get(1).is_some_and(|a| a == "launcher") {
        let rest = std::iter::once("kubevirt-rs launcher".into()).chain(args[2..].iter().cloned());
        let largs = <kubevirt_launcher::LauncherArgs as Parser>::parse_from(rest);
        init_tracing();
        let code = kubevirt_launcher::run(largs).map_err(anyhow::Error::from)?;
        std::process::exit(code);
    }
    let cli = Cli::parse();
    match cli.command {
        Cmd::Crds => {
            print!("{}", kubevirt_api::crds::to_yaml());
            Ok(())
        }
        Cmd::Kubeconfig(a) => write_user_kubeconfig(a),
        Cmd::Version => {
            println!("kubevirt-rs {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::Launcher => unreachable!("dispatched above"),
        Cmd::UpdateVms(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the runtime")?
            .block_on(update::run(a)),
        Cmd::Server(s) => multi_thread(server(s)),
        Cmd::Install(a) => multi_thread(cluster::install(a)),
        Cmd::Uninstall(a) => multi_thread(cluster::uninstall(a)),
        Cmd::VirtApi(a) => multi_thread(cluster::virt_api(a)),
        Cmd::VirtController(a) => multi_thread(cluster::virt_controller(a)),
        Cmd::VirtHandler(a) => multi_thread(cluster::virt_handler(a)),
        Cmd::VirtConsole(a) => multi_thread(cluster::virt_console(a)),
    }
}

/// Runs a long-lived command (with logs) on a multi-threaded runtime.
fn multi_thread(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?
        .block_on(f)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn client_from(path: &std::path::Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn subresource_api() -> kubevirt_apiserver::ExtraApi {
    kubevirt_apiserver::ExtraApi {
        group: kubevirt_api::subresources::GROUP.into(),
        version: kubevirt_api::subresources::VERSION.into(),
        resources: kubevirt_api::subresources::api_resources(),
    }
}

/// The core/v1 subresources the node agent serves (listed in discovery).
fn core_api() -> kubevirt_apiserver::ExtraApi {
    kubevirt_apiserver::ExtraApi {
        group: String::new(),
        version: "v1".into(),
        resources: vec![
            json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}),
        ],
    }
}

/// CDI's upload token API (served by the storage crate).
fn upload_api() -> kubevirt_apiserver::ExtraApi {
    kubevirt_apiserver::ExtraApi {
        group: kubevirt_storage::upload::GROUP.into(),
        version: kubevirt_storage::upload::VERSION.into(),
        resources: kubevirt_storage::upload::discovery_resources(),
    }
}

async fn server(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = args.api.into_config();
    let data_dir = cfg.data_dir.clone();
    let accel = kubevirt_hypervisor::detect_accelerator();
    let kvm = accel.kind == kubevirt_hypervisor::AcceleratorKind::Kvm;
    tracing::info!(accel = accel.kind.as_str(), reason = %accel.reason, "guests will use");

    cfg.admission = vec![Arc::new(kubevirt_apiserver::kubevirt::KubevirtAdmission {
        host_disks: kubevirt_api::host_disk::HostDiskPolicy {
            dirs: args.node.host_disk_dirs()?,
        },
    })];
    let agent = components::NodeAgent::new(&args.node, &data_dir)?;
    let node = agent.node.clone();
    let launchers = agent.launchers.clone();
    let sub = SubresourceState::new(launchers.clone());
    let evictions = Arc::new(kubevirt_cluster::eviction::LauncherEviction::default());
    cfg.eviction_checks = vec![evictions.clone()];

    let uploads = Arc::new(kubevirt_storage::upload::UploadState::new());
    cfg.extra_routes = Some(
        router(sub.clone())
            .merge(kubevirt_handler::logs::router(sub.clone()))
            .merge(kubevirt_storage::upload::token_router(uploads.clone())),
    );
    let exports = Arc::new(kubevirt_storage::export::Exports::new(
        kubevirt_storage::LocalVolumes::new(data_dir.join("volumes")),
    ));
    cfg.public_routes = Some(
        kubevirt_storage::upload::proxy_router(uploads.clone())
            .merge(kubevirt_storage::export::router(exports.clone())),
    );
    cfg.extra_apis = vec![subresource_api(), core_api(), upload_api()];
    let vm_metrics = Arc::new(metrics::EmbeddedMetrics::new(
        node.clone(),
        launchers.clone(),
    ));
    cfg.metrics_sources = vec![vm_metrics.clone()];
    let handle = kubevirt_apiserver::start(cfg)
        .await
        .map_err(|e| anyhow::anyhow!("starting the API server: {e} ({e:?})"))?;
    let client = client_from(&handle.kubeconfig_path).await?;
    sub.set_client(client.clone());
    evictions.set_client(client.clone());
    uploads.set_client(client.clone());
    vm_metrics.set_client(client.clone());
    let api_url = kubevirt_apiserver::tls::kubeconfig_server(&data_dir)
        .unwrap_or_else(|_| format!("https://{}", handle.addr));
    exports.set_server(client.clone(), &api_url, &handle.ca_pem);

    // The install's KubeVirt object, as installing upstream's operator CR makes it.
    kubevirt_controller::install::ensure_object(&client, kubevirt_api::install::NAMESPACE).await?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let node_pods = agent.start(&mut tasks, &client, kvm, &stop).await?;
    components::spawn_controllers(
        &mut tasks,
        &client,
        components::pod_settings(components::EMBEDDED_LAUNCHER_IMAGE, !kvm),
        &stop,
    );
    tasks.spawn(kubevirt_handler::scheduler::run(
        client.clone(),
        node.clone(),
        node_pods,
        components::stopped(&stop),
    ));
    // kube-proxy's part: Services carry traffic to the launcher pods on the pod bridge.
    tasks.spawn(kubevirt_handler::services::run(
        client.clone(),
        kubevirt_handler::services::pod_bridge(),
        components::stopped(&stop),
    ));
    tasks.spawn(kubevirt_storage::run(
        client.clone(),
        kubevirt_storage::StorageConfig {
            volumes: kubevirt_storage::LocalVolumes::new(data_dir.join("volumes")),
            node: node.clone(),
            registry: kubevirt_diskprep::RegistryConfig {
                mirrors: args.node.registry_mirrors()?,
                insecure: args.node.insecure_registries.clone(),
            },
            cache_dir: data_dir.join("containerdisks"),
            exports: Some(exports.clone()),
        },
        components::stopped(&stop),
    ));

    if let ConsoleListen::At(listen) = args.console_listen {
        let at = start_console(
            listen,
            &data_dir,
            &api_url,
            &handle.ca_pem,
            &mut tasks,
            &stop,
        )
        .await?;
        // Printed before the KUBECONFIG line, which tells scripts the server is up.
        println!(
            "console: https://{at}/ (log in with a token, e.g. the `admin=` line of {})",
            kubevirt_apiserver::tls::tokens_file(&data_dir).display()
        );
    }
    let addr: SocketAddr = handle.addr;
    println!(
        "kubevirt-rs is running: API https://{addr}, node {node}, data in {}\nexport KUBECONFIG={}",
        data_dir.display(),
        handle.kubeconfig_path.display()
    );

    components::wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if args.stop_vms_on_exit {
        tracing::info!("stopping the VMs");
        components::stop_all(&launchers, 30).await;
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    handle.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "kubevirt-rs",
            "server",
            "--data-dir",
            "/tmp/x",
            "--stop-vms-on-exit",
            "--registry-mirror",
            "registry:5000=http://127.0.0.1:5000",
        ])
        .unwrap();
        match cli.command {
            Cmd::Server(s) => {
                assert!(s.stop_vms_on_exit);
                assert_eq!(s.node.registry_mirrors.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
