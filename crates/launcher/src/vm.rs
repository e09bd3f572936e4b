//! The supervised VM: state shared by the API server, the signal handler and the reaper.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubevirt_hypervisor::{Accelerator, Domain, DomainState, ExitInfo, ExitReason};
use serde_json::Value;

use crate::api::{FinalState, InterfaceStatus, LauncherState, Phase, VmiRef};
use crate::rundir::RunDir;

/// Errors of VM operations requested through the API.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Hypervisor(#[from] kubevirt_hypervisor::HypervisorError),
    #[error("the VM is {phase:?}; {operation} is not possible")]
    WrongPhase { phase: Phase, operation: String },
    #[error("background task failed: {reason}")]
    Task { reason: String },
}

#[derive(Debug)]
struct VmState {
    phase: Phase,
    reason: Option<String>,
    stop_requested: bool,
    exit: Option<ExitInfo>,
    os_info: Option<Value>,
}

/// A running VM and what the launcher knows about it.
pub struct Vm {
    pub vmi: VmiRef,
    pub accelerator: Accelerator,
    pub domain: Arc<dyn Domain>,
    pub default_grace: u64,
    pub run_dir: RunDir,
    pub interfaces: Vec<InterfaceStatus>,
    st: Mutex<VmState>,
    /// The agent channel takes one client at a time.
    agent: Arc<Mutex<()>>,
}

const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

impl Vm {
    pub fn new(
        vmi: VmiRef,
        accelerator: Accelerator,
        domain: Arc<dyn Domain>,
        default_grace: u64,
        run_dir: RunDir,
        interfaces: Vec<InterfaceStatus>,
    ) -> Arc<Vm> {
        let phase = if domain.config().start_paused {
            Phase::Paused
        } else {
            Phase::Running
        };
        Arc::new(Vm {
            vmi,
            accelerator,
            domain,
            default_grace,
            run_dir,
            interfaces,
            st: Mutex::new(VmState {
                phase,
                reason: None,
                stop_requested: false,
                exit: None,
                os_info: None,
            }),
            agent: Arc::new(Mutex::new(())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VmState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current phase (asks QEMU while it runs).
    pub fn phase(&self) -> Phase {
        let (phase, stopping) = {
            let st = self.lock();
            (st.phase, st.stop_requested)
        };
        if phase.is_final() || stopping {
            return phase;
        }
        match self.domain.state() {
            Ok(DomainState::Paused) => Phase::Paused,
            Ok(DomainState::Running) => Phase::Running,
            Ok(DomainState::Shutdown) => Phase::ShuttingDown,
            // Waiting for an incoming migration: not running yet.
            Ok(DomainState::Incoming) => Phase::Starting,
            // The guest moved away; the source's vCPUs stay stopped until it is stopped.
            Ok(DomainState::Migrated) => Phase::Paused,
            _ => phase,
        }
    }

    /// The state for `GET /v1/state`.
    pub fn state(&self) -> LauncherState {
        let phase = self.phase();
        let st = self.lock();
        LauncherState {
            vmi: self.vmi.clone(),
            phase,
            accelerator: self.accelerator.clone(),
            launcher_pid: std::process::id(),
            qemu_pid: self.domain.pid(),
            guest_os_info: st.os_info.clone(),
            interfaces: self.interfaces.clone(),
            exit: st.exit.clone(),
            reason: st.reason.clone(),
        }
    }

    fn require_live(&self, operation: &str) -> Result<(), VmError> {
        let st = self.lock();
        if st.phase.is_final() || st.stop_requested {
            return Err(VmError::WrongPhase {
                phase: st.phase,
                operation: operation.into(),
            });
        }
        Ok(())
    }

    pub fn pause(&self) -> Result<(), VmError> {
        self.require_live("pause")?;
        self.domain.pause()?;
        Ok(())
    }

    pub fn unpause(&self) -> Result<(), VmError> {
        self.require_live("unpause")?;
        self.domain.resume()?;
        Ok(())
    }

    /// Starts a live migration to `uri` (`tcp:HOST:PORT` or `unix:PATH`).
    pub fn migrate(&self, uri: &str) -> Result<(), VmError> {
        self.require_live("migrate")?;
        self.domain.migrate_out(uri)?;
        Ok(())
    }

    /// Progress of the current migration (outgoing or incoming).
    pub fn migration_status(&self) -> Result<kubevirt_hypervisor::MigrationStatus, VmError> {
        Ok(self.domain.migration_status()?)
    }

    pub fn reset(&self) -> Result<(), VmError> {
        self.require_live("reset")?;
        self.domain.reset()?;
        Ok(())
    }

    /// Runs a guest-agent command on a blocking thread.
    pub async fn agent(
        self: &Arc<Self>,
        command: &'static str,
        args: Option<Value>,
    ) -> Result<Value, VmError> {
        self.require_live(command)?;
        let vm = self.clone();
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let _g = agent.lock().unwrap_or_else(|p| p.into_inner());
            vm.domain.guest_agent(command, args, AGENT_TIMEOUT)
        })
        .await
        .map_err(|e| VmError::Task {
            reason: e.to_string(),
        })?
        .map_err(VmError::from)
    }

    /// `guest-get-osinfo`, cached in the state.
    pub async fn guest_osinfo(self: &Arc<Self>) -> Result<Value, VmError> {
        let v = self.agent("guest-get-osinfo", None).await?;
        self.lock().os_info = Some(v.clone());
        Ok(v)
    }

    /// Guest-agent reboot, else ACPI power button... followed by nothing: ACPI has no reboot
    /// button, so without an agent a soft reboot is a `system_reset` (as upstream does for
    /// guests without an agent).
    pub async fn soft_reboot(self: &Arc<Self>) -> Result<(), VmError> {
        match self
            .agent(
                "guest-shutdown",
                Some(serde_json::json!({"mode": "reboot"})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "guest agent reboot failed; resetting");
                self.reset()
            }
        }
    }

    /// Starts a graceful stop: ACPI power button, wait up to `grace` seconds (pressing it
    /// again every 5 s in case the guest was not listening yet), then quit/SIGKILL.
    /// Idempotent: a second request only shortens nothing and returns.
    pub fn request_stop(self: &Arc<Self>, grace: Option<u64>) {
        {
            let mut st = self.lock();
            if st.phase.is_final() || st.stop_requested {
                return;
            }
            st.stop_requested = true;
            st.phase = Phase::ShuttingDown;
        }
        let grace = grace.unwrap_or(self.default_grace);
        tracing::info!(grace, "stop requested");
        let vm = self.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(grace);
            while Instant::now() < deadline {
                if let Err(e) = vm.domain.acpi_shutdown() {
                    tracing::debug!(error = %e, "ACPI power button");
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match vm.domain.wait_exit(Some(left.min(Duration::from_secs(5)))) {
                    Ok(Some(_)) => return,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "waiting for QEMU"),
                }
            }
            tracing::info!("grace period over; hard stop");
            if let Err(e) = vm.domain.stop() {
                tracing::error!(error = %e, "hard stop failed");
            }
        });
    }

    /// Records QEMU's exit and returns the final state for `final-state.json`.
    pub fn finish(&self, exit: Option<ExitInfo>) -> FinalState {
        let mut st = self.lock();
        let (phase, reason) = match (&exit, st.stop_requested) {
            (Some(e), _) if e.reason == ExitReason::GuestShutdown => {
                (Phase::Succeeded, "guest shut down".to_string())
            }
            (Some(e), true) => (
                Phase::Succeeded,
                format!("stopped on request ({:?})", e.reason),
            ),
            (Some(e), false) if e.reason == ExitReason::HostRequest => {
                (Phase::Succeeded, "QEMU quit on request".to_string())
            }
            (Some(e), false) => (
                Phase::Failed,
                format!(
                    "QEMU ended unexpectedly: {:?} (exit code {:?}, signal {:?})",
                    e.reason, e.exit_code, e.signal
                ),
            ),
            (None, _) => (Phase::Failed, "QEMU exit status unknown".to_string()),
        };
        st.phase = phase;
        st.reason = Some(reason.clone());
        st.exit = exit.clone();
        FinalState {
            vmi: self.vmi.clone(),
            phase,
            reason,
            exit,
            finished_at: chrono::Utc::now().to_rfc3339(),
        }
    }
}
