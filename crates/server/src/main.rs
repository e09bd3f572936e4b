//! `kubevirt-rs`: the multi-call binary.
//!
//! - `server`: the embedded all-in-one (API server, VM and VMI controllers, node agent,
//!   subresources) in one process; VMs run in launcher processes that outlive it.
//! - `launcher`: one VM's supervisor (started by the node agent).
//! - `crds`: prints the CustomResourceDefinitions for installing on a real cluster.
//! - `kubeconfig`: writes a client-certificate kubeconfig for a user and groups.
//! - `version`.

mod eviction;
mod update;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use kubevirt_api::launcher_pod::LauncherPodSettings;
use kubevirt_handler::launchers::{LauncherConfig, Launchers, Notify};
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
    /// Name of this node (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Root of the VMs' run directories.
    #[arg(long, default_value = kubevirt_launcher::DEFAULT_RUN_ROOT)]
    run_root: PathBuf,
    /// Registry mapping HOST=TARGET for containerDisks, e.g.
    /// `registry:5000=http://127.0.0.1:5000` (repeatable).
    #[arg(long = "registry-mirror")]
    registry_mirrors: Vec<String>,
    /// Registry reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Directory VMs may use hostDisks in (repeatable). Without one, hostDisk volumes are
    /// refused, as upstream's HostDisk feature gate is off by default: a hostDisk is a file
    /// of this host.
    #[arg(long = "host-disk-dir")]
    host_disk_dirs: Vec<PathBuf>,
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
        Cmd::Server(s) => {
            init_tracing();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("building the runtime")?
                .block_on(server(s))
        }
    }
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
    let r = |name: &str, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": verbs});
    kubevirt_apiserver::ExtraApi {
        group: "subresources.kubevirt.io".into(),
        version: "v1".into(),
        resources: vec![
            r("virtualmachines/start", &["update"]),
            r("virtualmachines/stop", &["update"]),
            r("virtualmachines/restart", &["update"]),
            r("virtualmachines/migrate", &["update"]),
            r("virtualmachineinstances/pause", &["update"]),
            r("virtualmachineinstances/unpause", &["update"]),
            r("virtualmachineinstances/softreboot", &["update"]),
            r("virtualmachineinstances/reset", &["update"]),
            r("virtualmachineinstances/console", &["get"]),
            r("virtualmachineinstances/vnc", &["get"]),
            r("virtualmachineinstances/guestosinfo", &["get"]),
        ],
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

/// `--registry-mirror HOST=URL` flags as a map (the launcher parses the same flags).
fn registry_mirrors(flags: &[String]) -> anyhow::Result<std::collections::HashMap<String, String>> {
    flags
        .iter()
        .map(|m| {
            m.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--registry-mirror {m:?} is not HOST=URL"))
        })
        .collect()
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
    let node = args
        .node_name
        .clone()
        .unwrap_or_else(kubevirt_handler::node::local_node_name);
    let accel = kubevirt_hypervisor::detect_accelerator();
    let kvm = accel.kind == kubevirt_hypervisor::AcceleratorKind::Kvm;
    tracing::info!(accel = accel.kind.as_str(), reason = %accel.reason, "guests will use");

    let host_disk_dirs = args
        .host_disk_dirs
        .iter()
        .map(|d| std::path::absolute(d).with_context(|| format!("--host-disk-dir {}", d.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    cfg.admission = vec![Arc::new(kubevirt_apiserver::kubevirt::KubevirtAdmission {
        host_disks: kubevirt_api::host_disk::HostDiskPolicy {
            dirs: host_disk_dirs.clone(),
        },
    })];
    let mut extra = Vec::new();
    for d in &host_disk_dirs {
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
    let sub = SubresourceState::new(launchers.clone());
    let evictions = Arc::new(eviction::LauncherEviction::default());
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
    let handle = kubevirt_apiserver::start(cfg)
        .await
        .map_err(|e| anyhow::anyhow!("starting the API server: {e} ({e:?})"))?;
    let client = client_from(&handle.kubeconfig_path).await?;
    sub.set_client(client.clone());
    evictions.set_client(client.clone());
    uploads.set_client(client.clone());
    let api_url = kubevirt_apiserver::tls::kubeconfig_server(&data_dir)
        .unwrap_or_else(|_| format!("https://{}", handle.addr));
    exports.set_server(client.clone(), &api_url, &handle.ca_pem);

    kubevirt_handler::node::register(&client, &node, kvm)
        .await
        .context("registering the node")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let pod_settings = LauncherPodSettings {
        emulation: !kvm,
        ..LauncherPodSettings::new(
            concat!("kubevirt-rs/virt-launcher:", env!("CARGO_PKG_VERSION")),
            vec!["/usr/bin/kubevirt-rs".into(), "launcher".into()],
        )
    };
    let pods = kubevirt_handler::pods::controller(&client, &node);
    let node_pods = pods.store();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(kubevirt_handler::node::heartbeat_loop(
        client.clone(),
        node.clone(),
        kvm,
    ));
    tasks.spawn(kubevirt_controller::vm_controller::run(
        client.clone(),
        stopped(),
    ));
    tasks.spawn(kubevirt_controller::snapshot::run(
        client.clone(),
        stopped(),
    ));
    tasks.spawn(kubevirt_controller::restore::run(client.clone(), stopped()));
    tasks.spawn(kubevirt_controller::clone::run(client.clone(), stopped()));
    tasks.spawn(kubevirt_controller::evacuation::run(
        client.clone(),
        stopped(),
    ));
    tasks.spawn(kubevirt_controller::migration::run(
        client.clone(),
        pod_settings.clone(),
        stopped(),
    ));
    tasks.spawn(kubevirt_controller::vmi_controller::run(
        client.clone(),
        pod_settings,
        stopped(),
    ));
    tasks.spawn(kubevirt_handler::scheduler::run(
        client.clone(),
        node.clone(),
        node_pods,
        stopped(),
    ));
    tasks.spawn(kubevirt_handler::pods::run(
        pods,
        Arc::new(kubevirt_handler::pods::Context::new(
            client.clone(),
            node.clone(),
            launchers.clone(),
        )),
        pods_rx,
        stopped(),
    ));
    tasks.spawn(kubevirt_storage::run(
        client.clone(),
        kubevirt_storage::StorageConfig {
            volumes: kubevirt_storage::LocalVolumes::new(data_dir.join("volumes")),
            node: node.clone(),
            registry: kubevirt_diskprep::RegistryConfig {
                mirrors: registry_mirrors(&args.registry_mirrors)?,
                insecure: args.insecure_registries.clone(),
            },
            cache_dir: data_dir.join("containerdisks"),
            exports: Some(exports.clone()),
        },
        stopped(),
    ));
    tasks.spawn(kubevirt_handler::agent::run(
        Arc::new(kubevirt_handler::agent::Context::new(
            client.clone(),
            node.clone(),
            launchers.clone(),
        )),
        vmis_rx,
        stopped(),
    ));

    let addr: SocketAddr = handle.addr;
    println!(
        "kubevirt-rs is running: API https://{addr}, node {node}, data in {}\nexport KUBECONFIG={}",
        data_dir.display(),
        handle.kubeconfig_path.display()
    );

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if args.stop_vms_on_exit {
        tracing::info!("stopping the VMs");
        stop_all(&launchers, 30).await;
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    handle.shutdown().await;
    Ok(())
}

/// Stops every running launcher (ACPI, hard stop after `grace_seconds`) and waits for them.
async fn stop_all(launchers: &Launchers, grace_seconds: u64) {
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

async fn wait_for_signal() {
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
                assert_eq!(s.registry_mirrors.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
