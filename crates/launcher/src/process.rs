//! The launcher process: from a VMI file to a supervised QEMU and back to a clean run dir.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use kubevirt_api::v1::VirtualMachineInstance;
use kubevirt_hypervisor::{detect_accelerator, Domain, Hypervisor, QemuHypervisor};

use crate::api::VmiRef;
use crate::client::live_pid;
use crate::prepare::{prepare_volumes, ContainerDiskConfig, PrepareError};
use crate::rundir::{RunDir, DEFAULT_RUN_ROOT};
use crate::translate::{translate, LauncherEnv, TranslateError};
use crate::vm::Vm;

/// Command line of the launcher (`kubevirt-launcher ...` or `kubevirt-rs launcher ...`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kubevirt-launcher",
    about = "Runs one VirtualMachineInstance under QEMU"
)]
pub struct LauncherArgs {
    /// The VirtualMachineInstance as JSON.
    #[arg(long)]
    pub vmi: PathBuf,
    /// Run directory of this VM (default: <run-root>/<ns>_<name>_<uid>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Root of the run directories.
    #[arg(long, default_value = DEFAULT_RUN_ROOT)]
    pub run_root: PathBuf,
    /// Directory for persistent EFI variables and TPM state
    /// (default: /var/lib/kubevirt-rs/vms/<ns>_<name>).
    #[arg(long)]
    pub persistent_dir: Option<PathBuf>,
    /// Seconds to wait for the guest after ACPI shutdown before a hard stop
    /// (default: the VMI's terminationGracePeriodSeconds).
    #[arg(long)]
    pub grace_period: Option<u64>,
    /// Stay attached (no fork, no new session): for running inside a pod.
    #[arg(long)]
    pub foreground: bool,
    /// containerDisk cache directory.
    #[arg(long, default_value = "/var/lib/kubevirt-rs/containerdisks")]
    pub cache_dir: PathBuf,
    /// Registry mapping HOST=TARGET, e.g. `registry:5000=http://127.0.0.1:5000` (repeatable).
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
    /// Registry reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Disk image for a PVC or DataVolume: NAME=PATH (repeatable).
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// JSON file `{secretName: {key: base64}}` with the secrets cloud-init refers to.
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,
    /// Wait for an incoming live migration on this URI (`tcp:HOST:PORT` or `unix:PATH`)
    /// instead of booting the guest.
    #[arg(long)]
    pub incoming: Option<String>,
    /// State directory of the pod network allocator.
    #[arg(long, default_value = "/run/kubevirt-rs/podnet")]
    pub podnet_state_dir: PathBuf,
}

/// Why the launcher could not run the VM.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error("invalid launcher input: {reason}")]
    Input { reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a launcher (pid {pid}) already runs this VM in {run_dir}")]
    AlreadyRunning { pid: u32, run_dir: PathBuf },
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Hypervisor(#[from] kubevirt_hypervisor::HypervisorError),
    #[error("pod network: {reason}")]
    Network { reason: String },
    #[error("launcher start-up failed: {message}")]
    Daemon { message: String },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LauncherError {
    let context = context.into();
    move |source| LauncherError::Io { context, source }
}

fn parse_pairs(items: &[String], what: &str) -> Result<Vec<(String, String)>, LauncherError> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| LauncherError::Input {
                    reason: format!("{what} {s:?} is not NAME=VALUE"),
                })
        })
        .collect()
}

fn read_secrets(
    path: &Option<PathBuf>,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, LauncherError> {
    use base64::Engine;
    let Some(path) = path else {
        return Ok(BTreeMap::new());
    };
    let text = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    let raw: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&text).map_err(|e| LauncherError::Input {
            reason: format!("{}: {e}", path.display()),
        })?;
    let mut out = BTreeMap::new();
    for (name, keys) in raw {
        let mut m = BTreeMap::new();
        for (k, v) in keys {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .map_err(|e| LauncherError::Input {
                    reason: format!("secret {name} key {k}: not base64: {e}"),
                })?;
            m.insert(k, bytes);
        }
        out.insert(name, m);
    }
    Ok(out)
}

/// Runs the launcher. Without `--foreground` the calling process returns (exit 0) once the VM
/// runs and the API answers, or fails with the reason; the VM keeps running in a detached
/// daemon (own session), so the caller dying does not affect it.
pub fn run(args: LauncherArgs) -> Result<(), LauncherError> {
    let text = std::fs::read(&args.vmi).map_err(io(format!("reading {}", args.vmi.display())))?;
    let mut vmi: VirtualMachineInstance =
        serde_json::from_slice(&text).map_err(|e| LauncherError::Input {
            reason: format!("{}: not a VirtualMachineInstance: {e}", args.vmi.display()),
        })?;
    kubevirt_api::defaults::set_vmi_defaults(&mut vmi);
    let vref = VmiRef {
        namespace: vmi
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: vmi.metadata.name.clone().unwrap_or_default(),
        uid: vmi.metadata.uid.clone().unwrap_or_default(),
    };
    if vref.name.is_empty() {
        return Err(LauncherError::Input {
            reason: "metadata.name: Required value".into(),
        });
    }
    let run_dir = RunDir::new(args.run_dir.clone().unwrap_or_else(|| {
        RunDir::for_vmi(&args.run_root, &vref.namespace, &vref.name, &vref.uid)
            .path()
            .to_path_buf()
    }));
    std::fs::create_dir_all(run_dir.path())
        .map_err(io(format!("creating {}", run_dir.path().display())))?;
    if let Some(pid) = live_pid(&run_dir.pid_file()) {
        if pid != std::process::id() {
            return Err(LauncherError::AlreadyRunning {
                pid,
                run_dir: run_dir.path().to_path_buf(),
            });
        }
    }
    // Read before the run directory is cleaned: the node agent may leave the file there.
    let secrets = read_secrets(&args.secrets_file)?;
    // Left-overs of a launcher that was killed -9.
    kubevirt_hypervisor::qemu::kill_stale_swtpm(&run_dir.path().join("swtpm.pid"));
    run_dir.clean_runtime_files();
    let _ = std::fs::remove_file(run_dir.final_state());
    std::fs::write(run_dir.vmi_file(), &text).map_err(io("writing vmi.json"))?;

    let persistent_dir = args.persistent_dir.clone().unwrap_or_else(|| {
        PathBuf::from("/var/lib/kubevirt-rs/vms").join(format!("{}_{}", vref.namespace, vref.name))
    });
    let accel = detect_accelerator();
    let mut env = LauncherEnv::new(run_dir.clone(), accel.clone(), persistent_dir);
    env.claims = parse_pairs(&args.claims, "--claim")?
        .into_iter()
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect();
    env.secrets = secrets;
    let translation = translate(&vmi, &env)?;
    let grace = args
        .grace_period
        .or(vmi
            .spec
            .termination_grace_period_seconds
            .map(|g| g.max(0) as u64))
        .unwrap_or(30);
    let containerdisks = ContainerDiskConfig {
        cache_dir: args.cache_dir.clone(),
        mirrors: parse_pairs(&args.registry_mirrors, "--registry-mirror")?
            .into_iter()
            .collect::<HashMap<_, _>>(),
        insecure: args.insecure_registries.clone(),
    };

    if let Some(uri) = &args.incoming {
        crate::api::valid_migration_uri(uri).map_err(|reason| LauncherError::Input { reason })?;
    }
    let ready = if args.foreground {
        None
    } else {
        // Fork before any thread exists (the tokio runtime is built in the child).
        Some(daemonize(&run_dir)?)
    };
    let mut ready = Readiness(ready);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("building the runtime"))?;
    let result = rt.block_on(supervise(
        vref,
        run_dir.clone(),
        translation,
        containerdisks,
        grace,
        accel,
        args.podnet_state_dir.clone(),
        args.incoming.clone(),
        &mut ready,
    ));
    if let Err(e) = &result {
        tracing::error!(error = %e, "launcher failed");
        ready.notify(Err(e.to_string()));
        run_dir.clean_runtime_files();
    }
    // Blocking threads (QMP reader, stale agent calls) must not keep the process alive.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// The write end of the start-up pipe to the parent that waits for us.
struct Readiness(Option<OwnedFd>);

impl Readiness {
    fn notify(&mut self, r: Result<(), String>) {
        if let Some(fd) = self.0.take() {
            let mut f = std::fs::File::from(fd);
            let msg = match r {
                Ok(()) => "ok\n".to_string(),
                Err(e) => format!("error: {e}\n"),
            };
            let _ = f.write_all(msg.as_bytes());
        }
    }
}

/// Forks; the parent waits for the child's readiness message and exits with it. The child
/// starts a new session, detaches stdio (logging to `launcher.log`) and carries on.
fn daemonize(run_dir: &RunDir) -> Result<OwnedFd, LauncherError> {
    use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid, ForkResult};
    // CLOEXEC: QEMU and helpers must not inherit the write end, or the parent never sees EOF.
    let (rx, tx) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| LauncherError::Daemon {
        message: format!("pipe: {e}"),
    })?;
    // SAFETY: no other thread exists yet (the runtime is created after this), so the child
    // may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => Err(LauncherError::Daemon {
            message: format!("fork: {e}"),
        }),
        Ok(ForkResult::Parent { child }) => {
            drop(tx);
            let mut msg = String::new();
            let _ = std::io::BufReader::new(std::fs::File::from(rx)).read_line(&mut msg);
            if msg.trim() == "ok" {
                println!("{}", child.as_raw());
                std::process::exit(0);
            }
            let message = msg.trim().trim_start_matches("error: ").to_string();
            let log = std::fs::read_to_string(run_dir.launcher_log()).unwrap_or_default();
            Err(LauncherError::Daemon {
                message: if message.is_empty() {
                    format!("launcher exited during start-up; log:\n{log}")
                } else {
                    message
                },
            })
        }
        Ok(ForkResult::Child) => {
            drop(rx);
            let _ = setsid();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(run_dir.launcher_log())
                .map_err(io("opening launcher.log"))?;
            let null = std::fs::File::open("/dev/null").map_err(io("opening /dev/null"))?;
            let _ = dup2_stdin(&null);
            let _ = dup2_stdout(&log);
            let _ = dup2_stderr(&log);
            let _ = tx.as_raw_fd();
            Ok(tx)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    vref: VmiRef,
    run_dir: RunDir,
    mut translation: crate::translate::Translation,
    containerdisks: ContainerDiskConfig,
    grace: u64,
    accel: kubevirt_hypervisor::Accelerator,
    podnet_state_dir: PathBuf,
    incoming: Option<String>,
    ready: &mut Readiness,
) -> Result<(), LauncherError> {
    std::fs::write(run_dir.pid_file(), format!("{}\n", std::process::id()))
        .map_err(io("writing launcher.pid"))?;
    tracing::info!(vmi = %format!("{}/{}", vref.namespace, vref.name), accel = accel.kind.as_str(), reason = %accel.reason, "launcher starting");

    prepare_volumes(&mut translation, &containerdisks).await?;
    let net = crate::network::setup(&vref, &run_dir, &mut translation, &podnet_state_dir)?;

    let hv = QemuHypervisor::with_accelerator(accel.clone());
    let domain: Arc<dyn Domain> = Arc::from(hv.create_domain(translation.domain.clone())?);
    // Started on this (the main) thread: QEMU's parent-death signal follows this thread.
    let started = match &incoming {
        Some(uri) => domain.prepare_incoming(uri),
        None => domain.start(),
    };
    if let Err(e) = started {
        net.teardown();
        return Err(e.into());
    }
    let listener = match crate::server::bind(&run_dir.launcher_socket()) {
        Ok(l) => l,
        Err(e) => {
            let _ = domain.stop();
            net.teardown();
            return Err(io("binding launcher.sock")(e));
        }
    };
    let vm = Vm::new(
        vref,
        accel,
        domain.clone(),
        grace,
        run_dir.clone(),
        net.interfaces(),
    );
    let server = tokio::spawn(crate::server::serve(listener, vm.clone()));
    let net_tasks = net.spawn_tasks();
    ready.notify(Ok(()));
    tracing::info!(pid = ?domain.pid(), "VM running");

    // SIGTERM/SIGINT: graceful stop with the default grace period.
    let sig_vm = vm.clone();
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("termination signal");
            sig_vm.request_stop(None);
        }
    });
    // Learn the guest OS once the agent answers (for the VMI status).
    let info_vm = vm.clone();
    let osinfo = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            if info_vm.guest_osinfo().await.is_ok() {
                return;
            }
        }
    });

    let d = domain.clone();
    let exit = tokio::task::spawn_blocking(move || d.wait_exit(None))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let final_state = vm.finish(exit);
    tracing::info!(phase = ?final_state.phase, reason = %final_state.reason, "VM ended");
    osinfo.abort();
    signals.abort();
    server.abort();
    for t in net_tasks {
        t.abort();
    }
    net.teardown();
    let _ = std::fs::remove_file(run_dir.launcher_socket());
    let json = serde_json::to_vec_pretty(&final_state).unwrap_or_default();
    std::fs::write(run_dir.final_state(), json).map_err(io("writing final-state.json"))?;
    run_dir.clean_runtime_files();
    Ok(())
}
