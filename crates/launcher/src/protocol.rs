//! The launcher's local API: HTTP/1.1 on `launcher.sock` (hyper on both ends).
//!
//! HTTP rather than line-delimited JSON so the node agent can proxy console/VNC streams with
//! a standard `Upgrade` handshake and so `curl --unix-socket` works for debugging.
//!
//! | method | path                | body / answer                                   |
//! |--------|---------------------|-------------------------------------------------|
//! | GET    | `/v1/state`         | -> [`LauncherState`]                            |
//! | POST   | `/v1/stop`          | [`StopRequest`] -> 202; ACPI, then hard stop    |
//! | POST   | `/v1/pause`         | -> 204                                          |
//! | POST   | `/v1/unpause`       | -> 204                                          |
//! | POST   | `/v1/reset`         | -> 204                                          |
//! | POST   | `/v1/soft-reboot`   | -> 204 (guest agent reboot, else ACPI reboot)   |
//! | GET    | `/v1/guest-osinfo`  | -> guest agent `guest-get-osinfo` answer        |
//! | POST   | `/v1/migrate`       | [`MigrateRequest`] -> 202 (outgoing live migration) |
//! | GET    | `/v1/migration`     | -> `kubevirt_hypervisor::MigrationStatus`       |
//! | GET    | `/v1/console`       | `Upgrade: console` -> 101, raw serial stream     |
//! | GET    | `/v1/vnc`           | `Upgrade: vnc` -> 101, raw RFB stream            |
//!
//! Errors: a status code and [`ApiError`] JSON.

use kubevirt_hypervisor::{Accelerator, ExitInfo};
use serde::{Deserialize, Serialize};

/// Phase of the VM as the launcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Preparing disks/network or booting QEMU.
    Starting,
    Running,
    Paused,
    /// A stop was requested; waiting for the guest (grace period).
    ShuttingDown,
    /// The guest powered off or was stopped on request.
    Succeeded,
    /// QEMU crashed or was killed without a stop request.
    Failed,
}

impl Phase {
    /// True when the VM will not run again.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// Identity of the VMI a launcher runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmiRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One guest interface as reported to the VMI status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    pub name: String,
    pub mac: Option<String>,
    /// The address the VMI status reports (the pod IP for masquerade).
    pub ip_address: Option<String>,
    /// Binding: `masquerade`, `passt`.
    pub binding: String,
}

/// Answer of `GET /v1/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LauncherState {
    pub vmi: VmiRef,
    pub phase: Phase,
    pub accelerator: Accelerator,
    pub launcher_pid: u32,
    pub qemu_pid: Option<u32>,
    /// `guest-get-osinfo` answer, once the agent answered.
    pub guest_os_info: Option<serde_json::Value>,
    pub interfaces: Vec<InterfaceStatus>,
    /// Set once QEMU exited.
    pub exit: Option<ExitInfo>,
    pub reason: Option<String>,
}

/// Body of `POST /v1/stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StopRequest {
    /// Seconds to wait for the guest after the ACPI power button (default: the VMI's
    /// terminationGracePeriodSeconds). 0 means hard stop at once.
    #[serde(default)]
    pub grace_seconds: Option<u64>,
}

/// Body of `POST /v1/migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrateRequest {
    /// `tcp:HOST:PORT` or `unix:PATH` where the target launcher (`--incoming`) listens.
    pub uri: String,
}

/// Migration URIs the launcher accepts: QEMU also knows `exec:` (runs a shell command),
/// which must never be reachable through the API.
pub fn valid_migration_uri(uri: &str) -> Result<(), String> {
    let ok = (uri.starts_with("tcp:") || uri.starts_with("unix:"))
        && uri.len() < 4096
        && !uri.chars().any(|c| c.is_control() || c == ',');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "migration URI {uri:?} must be tcp:HOST:PORT or unix:PATH"
        ))
    }
}

/// Error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
}

/// Written to `final-state.json` when the VM ended, for the node agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalState {
    pub vmi: VmiRef,
    pub phase: Phase,
    pub reason: String,
    pub exit: Option<ExitInfo>,
    /// RFC 3339.
    pub finished_at: String,
}
