//! The supervised VM: operations on the running domain, on behalf of the API server, the
//! signal handler and the event follower. Every state change is published through the
//! launcher's [`StatusCell`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubevirt_hypervisor::{Domain, DomainEvent, DomainState};
use serde_json::Value;

use crate::protocol::Stage;
use crate::status::StatusCell;

/// Errors of VM operations requested through the API.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Hypervisor(#[from] kubevirt_hypervisor::HypervisorError),
    #[error("the VM is {stage:?}; {operation} is not possible")]
    WrongStage { stage: Stage, operation: String },
    #[error("background task failed: {reason}")]
    Task { reason: String },
    /// The node agent maps this exact message.
    #[error("guest agent is not connected")]
    AgentNotConnected,
    #[error(transparent)]
    Hotplug(#[from] crate::hotplug::HotplugError),
    /// Not possible in the VM's current state (the message says why).
    #[error("{0}")]
    Conflict(String),
    /// A migration target's socket could not be connected to.
    #[error("cannot reach the migration target at {uri}: {reason}")]
    TargetUnreachable { uri: String, reason: String },
}

/// The ID of the guest agent's virtio-serial port in the QEMU command line.
const AGENT_PORT_ID: &str = "channel0";
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The guest's filesystems are part of a metrics scrape: they may not hold it up.
const FSINFO_TIMEOUT: Duration = Duration::from_secs(1);

/// A started VM and what the launcher knows about it.
pub struct Vm {
    pub domain: Arc<dyn Domain>,
    pub default_grace: u64,
    pub status: Arc<StatusCell>,
    /// The agent channel takes one client at a time.
    agent: Arc<Mutex<()>>,
    /// Bumped by every freeze and unfreeze: a pending automatic thaw runs only if nothing
    /// happened since its freeze.
    pub(crate) freeze_generation: AtomicU64,
    /// Hot-plugged volumes; held across each hot-plug operation.
    pub(crate) volumes: Arc<Mutex<crate::hotplug::Volumes>>,
    /// The outgoing migration's bookkeeping (its deadline, why it was cancelled).
    pub(crate) outgoing: Mutex<crate::migration::Outgoing>,
    /// Bumped each time the agent's channel opens: a poller of an earlier session stops.
    pub(crate) agent_session: AtomicU64,
    /// The disks only this node has that the guest writes (files in the run directory): what
    /// a migration to another node copies ([`crate::migration::local_disks`]).
    pub(crate) local_disks: Vec<String>,
}

impl Vm {
    pub fn new(
        domain: Arc<dyn Domain>,
        default_grace: u64,
        status: Arc<StatusCell>,
        local_disks: Vec<String>,
    ) -> Arc<Vm> {
        Arc::new(Vm {
            local_disks,
            domain,
            default_grace,
            status,
            agent: Arc::new(Mutex::new(())),
            freeze_generation: AtomicU64::new(0),
            volumes: Arc::default(),
            outgoing: Mutex::default(),
            agent_session: AtomicU64::new(0),
        })
    }

    pub(crate) fn require_live(&self, operation: &str) -> Result<(), VmError> {
        let st = self.status.get();
        if st.stage != Stage::Started || st.stop_requested {
            return Err(VmError::WrongStage {
                stage: st.stage,
                operation: operation.into(),
            });
        }
        if st.incoming_uri.is_some() {
            return Err(VmError::Conflict(format!(
                "the guest has not arrived yet (incoming migration); {operation} is not possible"
            )));
        }
        Ok(())
    }

    /// Asks QEMU for its run state and publishes it. A migration target's domain stays
    /// `Incoming` until the guest arrived: that change comes with the migration's end, in
    /// one update ([`Vm::on_migration_event`]).
    pub async fn refresh_state(self: &Arc<Self>) {
        if let Some(state) = self.current_state().await {
            self.status.update(|s| {
                if s.stage == Stage::Started && s.incoming_uri.is_none() {
                    s.domain = Some(state);
                }
            });
        }
    }

    /// QEMU's run state, unless it is gone.
    pub(crate) async fn current_state(self: &Arc<Self>) -> Option<DomainState> {
        let vm = self.clone();
        tokio::task::spawn_blocking(move || vm.domain.state())
            .await
            .ok()
            .and_then(Result::ok)
            .filter(|s| *s != DomainState::Exited)
    }

    /// Reacts to one event from the VMM: run-state changes are re-read from QEMU, the guest
    /// agent channel opening or closing sets `agentConnected` (and fetches the guest OS),
    /// migration events go to [`Vm::on_migration_event`]. Returns true when an incoming
    /// migration just completed (the guest now runs here).
    pub async fn on_event(self: &Arc<Self>, ev: &DomainEvent) -> bool {
        match ev.name.as_str() {
            "MIGRATION" => {
                let word = ev.data.get("status").and_then(Value::as_str);
                return self.on_migration_event(word.unwrap_or("unknown")).await;
            }
            "MIGRATION_PASS" => {
                if let Some(pass) = ev.data.get("pass").and_then(Value::as_u64) {
                    self.on_migration_pass(pass).await;
                }
            }
            "STOP" | "RESUME" | "SHUTDOWN" | "RESET" | "GUEST_PANICKED" => {
                if ev.name == "RESET" {
                    // A guest that starts over has nothing frozen.
                    self.status.update(|s| s.fs_freeze_status = None);
                }
                self.refresh_state().await
            }
            "VSERPORT_CHANGE"
                if ev.data.get("id").and_then(Value::as_str) == Some(AGENT_PORT_ID) =>
            {
                let open = ev
                    .data
                    .get("open")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                self.status.update(|s| {
                    s.agent_connected = open;
                    if !open {
                        // No agent, nothing holds the filesystems frozen, nor reports the
                        // guest's interfaces.
                        s.fs_freeze_status = None;
                        s.guest_interfaces.clear();
                    }
                });
                if open {
                    let session = self.agent_session.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::spawn(crate::guest_net::poll(self.clone(), session));
                    let vm = self.clone();
                    // The agent needs a moment after opening the port before it answers.
                    tokio::spawn(async move {
                        for _ in 0..10 {
                            if vm.guest_osinfo().await.is_ok() {
                                // The guest is up and known: the launcher idles from here.
                                crate::footprint::release_code_pages();
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    });
                }
            }
            _ => {}
        }
        false
    }

    pub async fn pause(self: &Arc<Self>) -> Result<(), VmError> {
        self.require_live("pause")?;
        self.domain.pause()?;
        self.refresh_state().await;
        Ok(())
    }

    pub async fn unpause(self: &Arc<Self>) -> Result<(), VmError> {
        self.require_live("unpause")?;
        self.domain.resume()?;
        self.refresh_state().await;
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

    /// Whether asking the guest agent can get an answer: its channel is open and the guest
    /// runs (a paused guest's agent would only hold the channel until the timeout).
    pub(crate) fn agent_can_answer(st: &crate::protocol::LauncherStatus) -> bool {
        st.agent_connected && st.domain == Some(DomainState::Running)
    }

    /// Runs a guest-agent command on a blocking thread.
    pub async fn agent(
        self: &Arc<Self>,
        command: &'static str,
        args: Option<Value>,
    ) -> Result<Value, VmError> {
        self.agent_within(command, args, AGENT_TIMEOUT).await
    }

    /// Runs a guest-agent command that may take up to `timeout`.
    pub async fn agent_within(
        self: &Arc<Self>,
        command: &'static str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, VmError> {
        self.require_live(command)?;
        let vm = self.clone();
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let _g = agent.lock().unwrap_or_else(|p| p.into_inner());
            vm.domain.guest_agent(command, args, timeout)
        })
        .await
        .map_err(|e| VmError::Task {
            reason: e.to_string(),
        })?
        .map_err(VmError::from)
    }

    /// Runs `command` in the guest through its agent (`guest-exec`), waiting up to
    /// `timeout` for it to end. `exit_code` is None when it did not end in time.
    pub async fn guest_exec(
        self: &Arc<Self>,
        req: crate::protocol::GuestExecRequest,
    ) -> Result<crate::protocol::GuestExecResult, VmError> {
        let deadline = Instant::now() + Duration::from_secs(req.timeout_seconds.max(1));
        let started = self
            .agent(
                "guest-exec",
                Some(serde_json::json!({"path": req.command, "arg": req.args, "capture-output": true})),
            )
            .await?;
        let pid = started["pid"].as_i64().ok_or_else(|| VmError::Task {
            reason: format!("guest-exec answered without a pid: {started}"),
        })?;
        loop {
            let status = self
                .agent("guest-exec-status", Some(serde_json::json!({"pid": pid})))
                .await?;
            if status["exited"].as_bool() == Some(true) {
                return Ok(crate::protocol::GuestExecResult {
                    // Killed by a signal: no exit code, a failure all the same.
                    exit_code: Some(status["exitcode"].as_i64().unwrap_or(-1)),
                });
            }
            if Instant::now() >= deadline {
                return Ok(crate::protocol::GuestExecResult { exit_code: None });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The VM's counters: the hypervisor's, and each tap NIC's traffic as the kernel
    /// counts it in QEMU's network namespace.
    pub async fn stats(self: &Arc<Self>) -> Result<crate::protocol::VmStats, VmError> {
        self.require_live("stats")?;
        // A slow or absent agent costs the scrape its filesystems, nothing else; a paused
        // guest's agent cannot answer, so it is not asked.
        let st = self.status.get();
        let filesystems = if Self::agent_can_answer(&st) {
            self.agent_within("guest-get-fsinfo", None, FSINFO_TIMEOUT)
                .await
                .map(|v| crate::guest_net::filesystems(&v))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let migrating_out =
            st.incoming_uri.is_none() && st.migration.as_ref().is_some_and(|m| !m.is_finished());
        let vm = self.clone();
        let mut stats = tokio::task::spawn_blocking(move || {
            let domain = vm.domain.stats()?;
            let migration = migrating_out
                .then(|| vm.domain.migration_status().ok())
                .flatten();
            let net_dev = vm
                .domain
                .pid()
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok())
                .unwrap_or_default();
            let interfaces = vm
                .domain
                .config()
                .nics
                .iter()
                .filter_map(|n| match &n.backend {
                    kubevirt_hypervisor::NicBackend::Tap { ifname } => {
                        tap_stats(&net_dev, ifname, &n.name)
                    }
                    _ => None,
                })
                .collect();
            Ok::<_, VmError>(crate::protocol::VmStats {
                domain,
                interfaces,
                filesystems: Vec::new(),
                migration,
            })
        })
        .await
        .map_err(|e| VmError::Task {
            reason: e.to_string(),
        })??;
        stats.filesystems = filesystems;
        Ok(stats)
    }

    /// Applies access credentials through the guest agent, as upstream's launcher does:
    /// each user's authorized keys replace the file's (`guest-ssh-add-authorized-keys`
    /// with `reset`), passwords are set with `guest-set-user-password`. Failures are
    /// reported, not returned, in upstream's words: they become the VMI's
    /// `AccessCredentialsSynchronized` condition.
    pub async fn apply_access_credentials(
        self: &Arc<Self>,
        req: crate::protocol::AccessCredentialsRequest,
    ) -> crate::protocol::AccessCredentialsResult {
        use base64::Engine as _;
        let failed = |message: String| crate::protocol::AccessCredentialsResult {
            succeeded: false,
            message,
        };
        if self.agent("guest-ping", None).await.is_err() {
            return failed("Guest agent is offline".into());
        }
        for (user, keys) in &req.authorized_keys {
            let args = serde_json::json!({"username": user, "keys": keys, "reset": true});
            if let Err(e) = self
                .agent("guest-ssh-add-authorized-keys", Some(args))
                .await
            {
                return failed(format!(
                    "Error encountered writing ssh pub key access credentials for user [{user}]: {e}"
                ));
            }
        }
        for (user, password) in &req.passwords {
            let encoded = base64::engine::general_purpose::STANDARD.encode(password);
            let args = serde_json::json!({"username": user, "password": encoded, "crypted": false});
            if let Err(e) = self.agent("guest-set-user-password", Some(args)).await {
                return failed(format!(
                    "Error encountered setting password for user [{user}]: {e}"
                ));
            }
        }
        crate::protocol::AccessCredentialsResult {
            succeeded: true,
            message: String::new(),
        }
    }

    /// `guest-get-osinfo`, published in the status.
    pub async fn guest_osinfo(self: &Arc<Self>) -> Result<Value, VmError> {
        let v = self.agent("guest-get-osinfo", None).await?;
        self.status.update(|s| s.guest_os_info = Some(v.clone()));
        Ok(v)
    }

    /// Guest-agent reboot; without an agent a soft reboot is a `system_reset` (ACPI has no
    /// reboot button), as upstream does for guests without an agent.
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
    /// A later request with a shorter grace period shortens the wait. A migration target
    /// still waiting for the guest has nothing to shut down: it stops at once; a source
    /// calls its migration off first.
    pub fn request_stop(self: &Arc<Self>, grace: Option<u64>) {
        let grace = if self.status.get().incoming_uri.is_some() {
            0
        } else {
            grace.unwrap_or(self.default_grace)
        };
        let first = {
            let mut first = false;
            self.status.update(|s| {
                first = !s.stop_requested;
                s.stop_requested = true;
            });
            first
        };
        if self.status.get().stage != Stage::Started {
            return;
        }
        tracing::info!(grace, first, "stop requested");
        let vm = self.clone();
        tokio::task::spawn_blocking(move || {
            if first {
                vm.call_off_outgoing_migration();
            }
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
}

/// A tap's counters from `/proc/PID/net/dev`, turned to the guest's side: what the tap
/// sent, the guest received.
fn tap_stats(net_dev: &str, ifname: &str, name: &str) -> Option<crate::protocol::InterfaceStats> {
    let line = net_dev.lines().find_map(|l| {
        let (dev, counters) = l.split_once(':')?;
        (dev.trim() == ifname).then_some(counters)
    })?;
    // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit:
    // bytes packets errs drop ...
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if f.len() < 12 {
        return None;
    }
    Some(crate::protocol::InterfaceStats {
        name: name.to_string(),
        rx_bytes: f[8],
        rx_packets: f[9],
        rx_errors: f[10],
        rx_dropped: f[11],
        tx_bytes: f[0],
        tx_packets: f[1],
        tx_errors: f[2],
        tx_dropped: f[3],
    })
}

#[cfg(test)]
mod tests {
    use super::tap_stats;

    #[test]
    fn tap_counters_are_turned_to_the_guest_side() {
        let net_dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
tap0a1b:    1000      10    1    2    0     0          0         0     5000      50    3    4    0     0       0          0
";
        let s = tap_stats(net_dev, "tap0a1b", "default").unwrap();
        assert_eq!(s.name, "default");
        assert_eq!(
            (s.rx_bytes, s.rx_packets, s.rx_errors, s.rx_dropped),
            (5000, 50, 3, 4)
        );
        assert_eq!(
            (s.tx_bytes, s.tx_packets, s.tx_errors, s.tx_dropped),
            (1000, 10, 1, 2)
        );
        assert!(tap_stats(net_dev, "tap", "default").is_none());
        assert!(tap_stats("tap0a1b: 1 2", "tap0a1b", "default").is_none());
    }
}
