//! The launcher process: binds its socket, gets the VMI (from `--vmi`, or from the node
//! agent's `POST /v1/sync`), prepares disks and network, starts QEMU, follows it and reports
//! every change, reaps it, records the final status and cleans up.
//!
//! It runs in the foreground: the node agent (or a kubelet, in a pod) is its parent and
//! reads its exit code; the node agent starts it in its own process group so it outlives
//! the agent.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kubevirt_api::v1::VirtualMachineInstance;
use kubevirt_hypervisor::{
    detect_accelerator, Accelerator, Confinement, Domain, DomainState, ExitReason, Hypervisor,
    QemuHypervisor,
};
use tokio::sync::oneshot;

use crate::client::live_pid;
use crate::prepare::{prepare_volumes, ContainerDiskConfig, PrepareError, TakeOver};
use crate::protocol::{FailedStep, LauncherStatus, Stage, StartFailure, SyncRequest, VmiRef};
use crate::rundir::{RunDir, DEFAULT_RUN_ROOT};
use crate::server::Shared;
use crate::status::StatusCell;
use crate::translate::{translate, LauncherEnv, TranslateError};
use crate::vm::Vm;

/// Command line of the launcher (`kubevirt-launcher ...` or `kubevirt-rs launcher ...`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kubevirt-launcher",
    about = "Runs one VirtualMachineInstance under QEMU"
)]
pub struct LauncherArgs {
    /// Start this VirtualMachineInstance (a JSON file) at once instead of waiting for the
    /// node agent to send it.
    #[arg(long)]
    pub vmi: Option<PathBuf>,
    /// Namespace of the VMI this launcher is for (from the launcher pod).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Name of the VMI this launcher is for.
    #[arg(long)]
    pub name: Option<String>,
    /// UID of the VMI this launcher is for: a sync for another VMI is refused.
    #[arg(long)]
    pub uid: Option<String>,
    /// Run directory of this launcher (socket, logs, overlays; default: <run-root>/<uid>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Root of the run directories (used when --run-dir is not given).
    #[arg(long, default_value = DEFAULT_RUN_ROOT)]
    pub run_root: PathBuf,
    /// Directory for persistent EFI variables and TPM state
    /// (default: /var/lib/kubevirt-rs/vms/<ns>_<name>).
    #[arg(long)]
    pub persistent_dir: Option<PathBuf>,
    /// Seconds to wait for the guest after ACPI shutdown before a hard stop
    /// (default: the VMI's terminationGracePeriodSeconds).
    #[arg(long, alias = "grace-period-seconds")]
    pub grace_period: Option<u64>,
    /// containerDisk cache directory.
    #[arg(long, default_value = "/var/lib/kubevirt-rs/containerdisks")]
    pub cache_dir: PathBuf,
    /// Registry mapping HOST=TARGET, e.g. `registry:5000=http://127.0.0.1:5000` (repeatable).
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
    /// Registry reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Directory hostDisks may live in (repeatable; none: hostDisk is off).
    #[arg(long = "host-disk-dir")]
    pub host_disk_dirs: Vec<PathBuf>,
    /// Disk image for a PVC or DataVolume: NAME=PATH (repeatable).
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// With --vmi: JSON file `{secretName: {key: base64}}` with the secrets cloud-init
    /// refers to.
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,
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
    #[error("a launcher (pid {pid}) already runs in {run_dir}")]
    AlreadyRunning { pid: u32, run_dir: PathBuf },
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Hypervisor(#[from] kubevirt_hypervisor::HypervisorError),
    #[error("pod network: {reason}")]
    Network { reason: String },
    #[error(
        "this VMI cannot be live-migrated yet: {}",
        crate::translate::join_issues(issues)
    )]
    NotMigratable {
        issues: Vec<crate::translate::FieldIssue>,
    },
}

impl LauncherError {
    /// The structured record of this failure for the status.
    pub fn to_failure(&self) -> StartFailure {
        let step = match self {
            LauncherError::Input { .. }
            | LauncherError::Io { .. }
            | LauncherError::AlreadyRunning { .. }
            | LauncherError::NotMigratable { .. } => FailedStep::Input,
            LauncherError::Translate(_) => FailedStep::Translate,
            LauncherError::Prepare(_) => FailedStep::Volumes,
            LauncherError::Network { .. } => FailedStep::Network,
            LauncherError::Hypervisor(_) => FailedStep::Hypervisor,
        };
        StartFailure {
            step,
            message: self.to_string(),
            fields: match self {
                LauncherError::Translate(t) => t.issues().to_vec(),
                LauncherError::NotMigratable { issues } => issues.clone(),
                _ => Vec::new(),
            },
        }
    }
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

type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

fn decode_secrets(
    raw: BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Secrets, LauncherError> {
    use base64::Engine;
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

fn read_sync_file(args: &LauncherArgs, path: &PathBuf) -> Result<SyncRequest, LauncherError> {
    let text = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    let vmi = serde_json::from_slice(&text).map_err(|e| LauncherError::Input {
        reason: format!("{}: not JSON: {e}", path.display()),
    })?;
    let secrets = match &args.secrets_file {
        None => BTreeMap::new(),
        Some(p) => {
            let text = std::fs::read(p).map_err(io(format!("reading {}", p.display())))?;
            serde_json::from_slice(&text).map_err(|e| LauncherError::Input {
                reason: format!("{}: {e}", p.display()),
            })?
        }
    };
    Ok(SyncRequest {
        vmi,
        secrets,
        incoming: None,
    })
}

fn identity(args: &LauncherArgs) -> Option<VmiRef> {
    Some(VmiRef {
        namespace: args.namespace.clone()?,
        name: args.name.clone()?,
        uid: args.uid.clone().unwrap_or_default(),
    })
}

/// How the launcher ended: 0 when the VM ended as asked (guest power-off, requested stop)
/// or never had to start, 1 when it crashed or could not start.
pub type ExitCode = i32;

/// Runs the launcher until the VM ended; returns the process exit code.
pub fn run(args: LauncherArgs) -> Result<ExitCode, LauncherError> {
    // Everything the launcher writes (the VMI, seed ISOs with user data, overlays, logs) is
    // root's alone; the VM's own user gets what it needs as descriptors.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    if nix::unistd::geteuid().is_root() {
        crate::privileges::drop_unneeded().map_err(io("dropping capabilities"))?;
    }
    let run_dir = match (&args.run_dir, &args.uid) {
        (Some(d), _) => RunDir::new(d.clone()),
        (None, Some(uid)) if !uid.is_empty() => RunDir::for_uid(&args.run_root, uid),
        _ => {
            return Err(LauncherError::Input {
                reason: "--run-dir (or --uid) is required".into(),
            })
        }
    };
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
    // Left-overs of a launcher that was killed -9.
    kubevirt_hypervisor::qemu::kill_stale_swtpm(&run_dir.path().join("swtpm.pid"));
    run_dir.clean_runtime_files();
    let _ = std::fs::remove_file(run_dir.final_state());
    std::fs::write(run_dir.pid_file(), format!("{}\n", std::process::id()))
        .map_err(io("writing launcher.pid"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("building the runtime"))?;
    let code = rt.block_on(supervise(args, run_dir.clone()));
    // Blocking threads (QMP reader, stale agent calls) must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(1));
    run_dir.clean_runtime_files();
    code
}

async fn supervise(args: LauncherArgs, run_dir: RunDir) -> Result<ExitCode, LauncherError> {
    let accel = detect_accelerator();
    let status = Arc::new(StatusCell::new(LauncherStatus::new(identity(&args))));
    status.update(|s| s.accelerator = Some(accel.clone()));
    let listener =
        crate::server::bind(&run_dir.launcher_socket()).map_err(io("binding launcher.sock"))?;
    let (sync_tx, sync_rx) = oneshot::channel();
    let shared = Arc::new(Shared::new(status.clone(), args.uid.clone(), sync_tx));
    let server = tokio::spawn(crate::server::serve(listener, shared.clone()));
    let (term_tx, mut term_rx) = tokio::sync::watch::channel(false);
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
            let _ = term_tx.send(true);
        }
    });

    let request = match &args.vmi {
        Some(path) => Some(read_sync_file(&args, path)),
        None => {
            tracing::info!(accel = accel.kind.as_str(), "launcher waiting for the VMI");
            crate::footprint::release_code_pages();
            tokio::select! {
                r = sync_rx => r.ok().map(Ok),
                _ = term_rx.wait_for(|t| *t) => None,
            }
        }
    };
    let code = match request {
        // Terminated before it had anything to run.
        None => {
            status.update(|s| {
                s.stop_requested = true;
                s.stage = Stage::Exited;
            });
            0
        }
        Some(request) => match start(&args, &run_dir, &status, &accel, request).await {
            Err(e) => {
                tracing::error!(error = %e, "the VM could not start");
                status.update(|s| {
                    s.failure = Some(e.to_failure());
                    s.stage = Stage::Exited;
                });
                1
            }
            Ok(running) => {
                let _ = shared.vm.set(running.vm.clone());
                follow(running, &status, term_rx).await
            }
        },
    };
    let last = status.get();
    let json = serde_json::to_vec_pretty(&last).unwrap_or_default();
    std::fs::write(run_dir.final_state(), json).map_err(io("writing final-state.json"))?;
    // Let watchers read the last status before the socket goes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    signals.abort();
    server.abort();
    let _ = std::fs::remove_file(run_dir.launcher_socket());
    Ok(code)
}

/// A started VM and what must be released after it.
struct Running {
    vm: Arc<Vm>,
    net: Arc<crate::network::NetState>,
    _opened_for_qemu: Vec<std::fs::File>,
}

/// Translates the VMI, prepares its volumes and network, and starts QEMU.
async fn start(
    args: &LauncherArgs,
    run_dir: &RunDir,
    status: &Arc<StatusCell>,
    accel: &Accelerator,
    request: Result<SyncRequest, LauncherError>,
) -> Result<Running, LauncherError> {
    let request = request?;
    let incoming = request.incoming.is_some();
    let mut vmi: VirtualMachineInstance =
        serde_json::from_value(request.vmi.clone()).map_err(|e| LauncherError::Input {
            reason: format!("not a VirtualMachineInstance: {e}"),
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
    status.update(|s| {
        s.vmi = Some(vref.clone());
        s.stage = Stage::Preparing;
    });
    std::fs::write(
        run_dir.vmi_file(),
        serde_json::to_vec(&request.vmi).unwrap_or_default(),
    )
    .map_err(io("writing vmi.json"))?;
    tracing::info!(vmi = %vref, accel = accel.kind.as_str(), reason = %accel.reason, incoming, "starting the VM");
    // A migration target: what it takes over from a source on this node, checked before
    // anything.
    let source = match &request.incoming {
        Some(i) => {
            let source = match &i.source_run_dir {
                Some(dir) => Some(
                    crate::migration::source_run_dir(run_dir, dir)
                        .map_err(|reason| LauncherError::Input { reason })?,
                ),
                None => None,
            };
            let scope = match source {
                Some(_) => kubevirt_api::migration::Scope::SameNode,
                None => kubevirt_api::migration::Scope::Cluster,
            };
            let issues = crate::migration::migration_blockers(&vmi, scope);
            if !issues.is_empty() {
                return Err(LauncherError::NotMigratable { issues });
            }
            source
        }
        None => None,
    };
    let join = match (&request.incoming, &source) {
        (None, _) => crate::network::Join::No,
        (Some(_), Some(_)) => crate::network::Join::Required,
        (Some(_), None) => crate::network::Join::IfPresent,
    };
    let take_over = source.as_ref().map(|s| TakeOver {
        run_dir: run_dir.path(),
        source_run_dir: s.path(),
    });

    let persistent_dir = args.persistent_dir.clone().unwrap_or_else(|| {
        PathBuf::from("/var/lib/kubevirt-rs/vms").join(format!("{}_{}", vref.namespace, vref.name))
    });
    let mut env = LauncherEnv::new(run_dir.clone(), accel.clone(), persistent_dir);
    env.claims = parse_pairs(&args.claims, "--claim")?
        .into_iter()
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect();
    env.secrets = decode_secrets(request.secrets)?;
    env.host_disks = kubevirt_api::host_disk::HostDiskPolicy {
        dirs: args.host_disk_dirs.clone(),
    };
    let mut translation = translate(&vmi, &env)?;
    let grace = args
        .grace_period
        .or(vmi
            .spec
            .termination_grace_period_seconds
            .map(|g| g.max(0) as u64))
        .unwrap_or(kubevirt_api::defaults::DEFAULT_GRACE_PERIOD_SECONDS as u64);
    let containerdisks = ContainerDiskConfig {
        cache_dir: args.cache_dir.clone(),
        mirrors: parse_pairs(&args.registry_mirrors, "--registry-mirror")?
            .into_iter()
            .collect::<HashMap<_, _>>(),
        insecure: args.insecure_registries.clone(),
    };

    // QEMU's own user (and passt's), when the launcher may hand one out.
    let vmm_user = if nix::unistd::geteuid().is_root() {
        Some(crate::vmm_user::prepare(run_dir).map_err(io("giving the VM its own user"))?)
    } else {
        std::fs::create_dir_all(run_dir.vmm_dir()).map_err(io("creating the VMM directory"))?;
        None
    };

    // Disks and network are independent: prepare them side by side.
    let net_task = {
        let (vref, run_dir, networks, state_dir) = (
            vref.clone(),
            run_dir.clone(),
            translation.networks.clone(),
            args.podnet_state_dir.clone(),
        );
        tokio::task::spawn_blocking(move || {
            crate::network::setup(&vref, &run_dir, &networks, &state_dir, vmm_user, join)
        })
    };
    let prepared = prepare_volumes(&mut translation, &containerdisks, take_over).await;
    let net = net_task.await.map_err(|e| LauncherError::Network {
        reason: format!("network setup task: {e}"),
    })?;
    // The hostDisks opened for QEMU stay open while it runs: their `/proc/self/fd` names
    // are how the launcher finds their size when a disk grows.
    let (net, opened_for_qemu) = match (prepared, net) {
        (Ok(files), Ok(net)) => (net, files),
        (Err(e), Ok(net)) => {
            net.release();
            return Err(e.into());
        }
        (_, Err(e)) => return Err(e),
    };
    net.apply(&mut translation.domain);
    translation.domain.confinement = vmm_user.map(|uid| confinement(&vmi, uid, accel));
    let hv = QemuHypervisor::with_accelerator(accel.clone());
    let domain: Arc<dyn Domain> = match hv.create_domain(translation.domain.clone()) {
        Ok(d) => Arc::from(d),
        Err(e) => {
            net.release();
            return Err(e.into());
        }
    };
    // Where a target's QEMU waits for the guest: its own directory, which the source's
    // launcher (root) reaches for its QEMU.
    let socket_uri = |path: PathBuf| -> Result<String, LauncherError> {
        Ok(format!(
            "unix:{}",
            std::path::absolute(path)
                .map_err(io("locating a migration socket"))?
                .display()
        ))
    };
    let incoming_uri = if incoming {
        Some(socket_uri(run_dir.migration_socket())?)
    } else {
        None
    };
    let local_disks = crate::migration::local_disks(&translation.domain, run_dir.path());
    // Started on this (the main) thread: QEMU's parent-death signal follows this thread.
    let started = match &incoming_uri {
        Some(uri) => domain.prepare_incoming(uri),
        None => domain.start(),
    };
    if let Err(e) = started {
        net.release();
        return Err(e.into());
    }
    // A target of another node's source serves the disks the source copies into it.
    let incoming_storage_uri = match (incoming, &source, local_disks.is_empty()) {
        (true, None, false) => {
            let socket = run_dir.vmm_dir().join("nbd.sock");
            if let Err(e) = domain.export_disks(&socket, &local_disks) {
                let _ = domain.stop();
                net.release();
                return Err(e.into());
            }
            Some(socket_uri(socket)?)
        }
        _ => None,
    };
    let vm = Vm::new(domain.clone(), grace, status.clone(), local_disks);
    let net = Arc::new(net);
    // A target's guest runs here only once it arrived.
    if incoming_uri.is_none() {
        net.start_dhcp().await;
    }
    // What QEMU was started as; events from now on keep it current.
    let state = if incoming_uri.is_some() {
        DomainState::Incoming
    } else if translation.domain.start_paused {
        DomainState::Paused
    } else {
        DomainState::Running
    };
    status.update(|s| {
        s.stage = Stage::Started;
        s.domain = Some(state);
        s.qemu_pid = domain.pid();
        s.interfaces = net.interfaces();
        s.incoming_uri = incoming_uri;
        s.incoming_storage_uri = incoming_storage_uri;
    });
    tracing::info!(pid = ?domain.pid(), "VM running");
    crate::footprint::release_code_pages();
    Ok(Running {
        vm,
        net,
        _opened_for_qemu: opened_for_qemu,
    })
}

/// QEMU as the VM's own user, bounded by a cgroup from the pod's resources.
fn confinement(vmi: &VirtualMachineInstance, uid: u32, accel: &Accelerator) -> Confinement {
    let bounds = kubevirt_api::launcher_pod::vmm_bounds(vmi);
    let kvm_group = (accel.kind == kubevirt_hypervisor::AcceleratorKind::Kvm)
        .then(|| {
            std::fs::metadata("/dev/kvm")
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        })
        .flatten();
    // Under software emulation QEMU also holds its translation cache.
    let tcg = if accel.kind == kubevirt_hypervisor::AcceleratorKind::Tcg {
        kubevirt_hypervisor::qemu::argv::TCG_TB_SIZE_MIB << 20
    } else {
        0
    };
    Confinement {
        uid,
        gid: uid,
        groups: kvm_group.into_iter().collect(),
        // The uid is the VM's alone on this host, so is this name.
        cgroup: crate::vmm_user::cgroup_name(uid),
        memory_limit_bytes: bounds.memory_bytes.map(|m| m + tcg),
        cpu_limit_millis: bounds.cpu_millis,
    }
}

/// Follows the running VM until QEMU exits: events from the VMM update the status as they
/// happen, a termination signal stops the guest gracefully. Returns the exit code.
async fn follow(
    running: Running,
    status: &Arc<StatusCell>,
    mut term_rx: tokio::sync::watch::Receiver<bool>,
) -> ExitCode {
    let Running {
        vm,
        net,
        _opened_for_qemu,
    } = running;
    let wake = Arc::new(tokio::sync::Notify::new());
    let hook_wake = wake.clone();
    vm.domain
        .set_event_hook(Arc::new(move || hook_wake.notify_one()));
    let events_vm = vm.clone();
    let events_net = net.clone();
    let events_wake = wake.clone();
    let mut events = tokio::spawn(async move {
        let mut next = 0;
        loop {
            // QEMU's exit is recorded after its last event: once it is, this pass reads
            // everything left (a migration's last word comes just before QEMU goes).
            let gone = matches!(
                events_vm.domain.wait_exit(Some(Duration::ZERO)),
                Ok(Some(_))
            );
            let (evs, after) = events_vm.domain.events_since(next);
            next = after;
            for ev in &evs {
                if events_vm.on_event(ev).await {
                    // An incoming migration completed: the guest is ours to serve.
                    events_net.start_dhcp().await;
                }
            }
            if gone {
                return;
            }
            events_wake.notified().await;
        }
    });
    let stop_vm = vm.clone();
    let stopper = tokio::spawn(async move {
        if term_rx.wait_for(|t| *t).await.is_ok() {
            stop_vm.request_stop(None);
        }
    });
    let d = vm.domain.clone();
    let exit = tokio::task::spawn_blocking(move || d.wait_exit(None))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    stopper.abort();
    wake.notify_one();
    if tokio::time::timeout(Duration::from_secs(10), &mut events)
        .await
        .is_err()
    {
        events.abort();
    }
    net.release();
    let st = status.get();
    // A target whose QEMU went away before the guest arrived, not asked to stop: the
    // migration failed without QEMU saying so (e.g. it crashed).
    let lost =
        (st.incoming_uri.is_some() && st.failure.is_none() && !st.stop_requested).then(|| {
            StartFailure {
                step: FailedStep::Hypervisor,
                message: "incoming live migration failed: QEMU exited before the guest arrived"
                    .into(),
                fields: Vec::new(),
            }
        });
    let clean = st.failure.is_none()
        && lost.is_none()
        && (st.migrated_out
            || st.stop_requested
            || exit.as_ref().is_some_and(|e| {
                matches!(
                    e.reason,
                    ExitReason::GuestShutdown | ExitReason::HostRequest
                )
            }));
    tracing::info!(?exit, st.stop_requested, st.migrated_out, "VM ended");
    status.update(|s| {
        s.stage = Stage::Exited;
        s.domain = None;
        s.qemu_pid = None;
        s.exit = exit;
        s.incoming_uri = None;
        if lost.is_some() {
            s.failure = lost;
        }
        // QEMU went away before saying how its migration ended (e.g. the guest powered
        // off while it was being cancelled): it ended with QEMU.
        if let Some(m) = s.migration.as_mut().filter(|m| !m.is_finished()) {
            let cancelled = m.status == "cancelling";
            m.status = if cancelled { "cancelled" } else { "failed" }.into();
            m.error
                .get_or_insert_with(|| "QEMU exited during the migration".into());
        }
    });
    if clean {
        0
    } else {
        1
    }
}
