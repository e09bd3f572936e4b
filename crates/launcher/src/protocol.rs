//! The launcher's local API: HTTP/1.1 on `launcher.sock` (hyper on both ends), and the
//! types on it. [`crate::client::LauncherClient`] is its client, beside it.
//!
//! HTTP rather than line-delimited JSON so the node agent can proxy console/VNC streams with
//! a standard `Upgrade` handshake and so `curl --unix-socket` works for debugging.
//!
//! | method | path                | body / answer                                          |
//! |--------|---------------------|--------------------------------------------------------|
//! | GET    | `/v1/status`        | -> [`LauncherStatus`]                                  |
//! | GET    | `/v1/watch`         | -> [`LauncherStatus`] now, then one JSON line per change, until the launcher exits |
//! | POST   | `/v1/sync`          | [`SyncRequest`] -> 202; prepares and starts the VM (once) |
//! | POST   | `/v1/stop`          | [`StopRequest`] -> 202; ACPI, then hard stop           |
//! | POST   | `/v1/pause`         | -> 204                                                 |
//! | POST   | `/v1/unpause`       | -> 204                                                 |
//! | POST   | `/v1/reset`         | -> 204                                                 |
//! | POST   | `/v1/soft-reboot`   | -> 204 (guest agent reboot, else reset)                |
//! | GET    | `/v1/guest-osinfo`  | -> guest agent `guest-get-osinfo` answer               |
//! | GET    | `/v1/guest-fsinfo`  | -> guest agent `guest-get-fsinfo` answer               |
//! | GET    | `/v1/guest-users`   | -> guest agent `guest-get-users` answer                |
//! | GET    | `/v1/guest-ping`    | -> 204 when the guest agent answers `guest-ping`        |
//! | POST   | `/v1/guest-exec`    | [`GuestExecRequest`] -> [`GuestExecResult`]: a command run in the guest by its agent (exec probes) |
//! | GET    | `/v1/stats`         | -> [`VmStats`]: counters of the running VM, for metrics |
//! | POST   | `/v1/migrate`       | [`MigrateRequest`] -> 202 (outgoing live migration); 409 while one is in progress, with hot-plugged volumes, or before an incoming one completed; 502 if a `unix:` target cannot be reached |
//! | GET    | `/v1/migration`     | -> `kubevirt_hypervisor::MigrationStatus`              |
//! | POST   | `/v1/migrate/cancel` | -> 204; the outgoing migration is aborted, the guest stays here; 409 if none is in progress (or post-copy started) |
//! | GET    | `/v1/console`       | `Upgrade: console` -> 101, raw serial stream           |
//! | GET    | `/v1/vnc`           | `Upgrade: vnc` -> 101, raw RFB stream                  |
//! | POST   | `/v1/freeze`        | [`FreezeRequest`] -> 204 once the guest agent froze the filesystems; 409 without an agent; thawed by itself after the timeout (default 300 s) |
//! | POST   | `/v1/unfreeze`      | -> 204 (also when not frozen)                          |
//! | POST   | `/v1/volumes`       | [`HotplugVolumeRequest`] -> 200 [`HotplugVolumeStatus`] once QEMU added the device; 409 for a taken name or no free slot on that bus |
//! | DELETE | `/v1/volumes/{name}` | -> 204 once the guest released the device (waits up to 30 s, else 504); 404 if not hot-plugged |
//! | POST   | `/v1/volumes/{name}/resize` | -> 204 after the disk took its raw file's current size |
//! | POST   | `/v1/volumes/{name}/insert` | [`InsertMediumRequest`] -> 204; a cdrom gets this medium |
//! | POST   | `/v1/volumes/{name}/eject`  | -> 204; a cdrom is left empty                  |
//!
//! The status is facts, not a verdict: where the launcher is ([`Stage`]), the domain state
//! the hypervisor reports, how QEMU exited, whether a stop was requested, and a structured
//! [`StartFailure`] if the VM could not start. The node agent maps these to the VMI's phase
//! and conditions, in one place. Errors: a status code and [`ApiError`] JSON.

use std::collections::BTreeMap;

use kubevirt_hypervisor::{Accelerator, DomainState, ExitInfo};
use serde::{Deserialize, Serialize};

/// Identity of the VMI a launcher runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmiRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for VmiRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where the launcher is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Up, waiting for the node agent to send the VMI (`POST /v1/sync`).
    WaitingForSync,
    /// Preparing disks and network, starting QEMU.
    Preparing,
    /// QEMU runs (see `domain` for running/paused).
    Started,
    /// QEMU is gone (see `exit`, `failure`); the launcher is about to exit.
    Exited,
}

/// Why the VM could not start: which step, the message, and for a VMI this launcher cannot
/// run, each field path with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartFailure {
    pub step: FailedStep,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<crate::translate::FieldIssue>,
}

/// The start-up step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailedStep {
    /// The VMI or the launcher's arguments are not usable.
    Input,
    /// The VMI asks for something this launcher cannot build.
    Translate,
    /// A disk could not be prepared (pull, overlay, cloud-init ISO, ...).
    Volumes,
    /// The pod network could not be built.
    Network,
    /// QEMU would not start.
    Hypervisor,
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

/// A network interface as the guest agent reports it (`guest-network-get-interfaces`),
/// loopback left out: what upstream's launcher hands virt-handler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestInterface {
    /// The guest's name for it (`eth0`).
    pub interface_name: String,
    pub mac: Option<String>,
    /// The first IPv4 address, else the first address.
    pub ip: Option<String>,
    pub ips: Vec<String>,
}

/// A command for the guest agent to run (`POST /v1/guest-exec`), as an exec probe's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestExecRequest {
    pub command: String,
    pub args: Vec<String>,
    /// How long the command may run.
    pub timeout_seconds: u64,
}

/// How a guest command ended: its exit code, or none when it ran past its timeout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestExecResult {
    pub exit_code: Option<i64>,
}

/// Credentials for the guest agent to apply (`POST /v1/access-credentials`): each user's
/// complete authorized keys (replacing what the file held) and passwords in clear text.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessCredentialsRequest {
    pub authorized_keys: std::collections::BTreeMap<String, Vec<String>>,
    pub passwords: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for AccessCredentialsRequest {
    /// Names the users only: passwords stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessCredentialsRequest")
            .field("authorized_keys", &self.authorized_keys)
            .field("password_users", &self.passwords.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Whether the guest took the credentials; `message` in upstream's wording on failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessCredentialsResult {
    pub succeeded: bool,
    pub message: String,
}

/// The running VM's counters (`GET /v1/stats`), read when asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmStats {
    pub domain: kubevirt_hypervisor::DomainStats,
    pub interfaces: Vec<InterfaceStats>,
    /// The guest's mounted filesystems, from its agent (empty without one).
    #[serde(default)]
    pub filesystems: Vec<FilesystemStats>,
    /// The outgoing live migration's progress while one runs.
    #[serde(default)]
    pub migration: Option<kubevirt_hypervisor::MigrationStatus>,
}

/// One mounted filesystem as the guest agent reports it (`guest-get-fsinfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemStats {
    pub disk_name: String,
    pub mount_point: String,
    pub file_system_type: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// One guest NIC's traffic, from the guest's side (`rx` is what the guest received).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    /// The interface's name in the VMI spec.
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// What a launcher reports (`GET /v1/status`, each line of `GET /v1/watch`, and
/// `final-state.json` after it exited).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LauncherStatus {
    /// The VMI, once known (from `--vmi` or the sync request).
    pub vmi: Option<VmiRef>,
    pub stage: Stage,
    pub launcher_pid: u32,
    /// Bumped on every change, so a watcher can tell repeats from news.
    pub revision: u64,
    /// The accelerator QEMU uses, and why.
    pub accelerator: Option<Accelerator>,
    /// The domain as the hypervisor reports it, while QEMU runs.
    pub domain: Option<DomainState>,
    pub qemu_pid: Option<u32>,
    /// The guest agent has its channel open.
    pub agent_connected: bool,
    /// `guest-get-osinfo` answer, once the agent answered.
    pub guest_os_info: Option<serde_json::Value>,
    pub interfaces: Vec<InterfaceStatus>,
    /// The guest's interfaces, polled from its agent while it is connected.
    #[serde(default)]
    pub guest_interfaces: Vec<GuestInterface>,
    /// A stop (or delete) was requested: an exit after it is not a crash.
    pub stop_requested: bool,
    /// How QEMU exited.
    pub exit: Option<ExitInfo>,
    /// Why the VM could not start.
    pub failure: Option<StartFailure>,
    /// `frozen` while the guest agent holds the filesystems frozen (upstream's VMI
    /// `status.fsFreezeStatus`), else none.
    #[serde(default)]
    pub fs_freeze_status: Option<String>,
    /// Volumes hot-plugged into the running VM, in the order they came.
    #[serde(default)]
    pub hotplug_volumes: Vec<HotplugVolumeStatus>,
    /// Media inserted into boot cdroms, in the order they came.
    #[serde(default)]
    pub inserted_media: Vec<InsertedMedium>,
    /// On a migration target, from the moment QEMU listens (pushed with stage `Started`
    /// and domain `Incoming`) until the guest arrived (cleared in the same push as
    /// `migration` `completed` and the domain `Running`) or the launcher exits: where the
    /// source launcher sends the guest ([`MigrateRequest::uri`]),
    /// `unix:<target run dir>/vmm/migration.sock`.
    #[serde(default)]
    pub incoming_uri: Option<String>,
    /// On a migration target from another node, while `incoming_uri` is set and the VM has
    /// disks only its node has: where the source copies them (`unix:<target run
    /// dir>/vmm/nbd.sock`, an NBD server with one writable export per disk).
    #[serde(default)]
    pub incoming_storage_uri: Option<String>,
    /// The current or last live migration (outgoing on a source, incoming on a target), as
    /// the hypervisor reports it; pushed on every change of its status word (QEMU's:
    /// `setup`, `active`, `device`, `postcopy-active`, `completed`, `failed`,
    /// `cancelling`, `cancelled`). An outgoing migration cancelled at its completion
    /// timeout says so in `error`; one cut short by QEMU's exit ends `cancelled` (if it
    /// was being cancelled) or `failed`.
    #[serde(default)]
    pub migration: Option<kubevirt_hypervisor::MigrationStatus>,
    /// The guest left this launcher by a completed live migration: set with `migration`
    /// `completed`, then QEMU is stopped and the launcher exits 0. Not a shutdown, and the
    /// pod network stays for the target.
    #[serde(default)]
    pub migrated_out: bool,
}

impl LauncherStatus {
    pub fn new(vmi: Option<VmiRef>) -> Self {
        LauncherStatus {
            vmi,
            stage: Stage::WaitingForSync,
            launcher_pid: std::process::id(),
            revision: 0,
            accelerator: None,
            domain: None,
            qemu_pid: None,
            agent_connected: false,
            guest_os_info: None,
            interfaces: Vec::new(),
            guest_interfaces: Vec::new(),
            stop_requested: false,
            exit: None,
            failure: None,
            fs_freeze_status: None,
            hotplug_volumes: Vec::new(),
            inserted_media: Vec::new(),
            incoming_uri: None,
            incoming_storage_uri: None,
            migration: None,
            migrated_out: false,
        }
    }
}

/// Body of `POST /v1/sync`: the VMI to run and what the node agent resolved for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncRequest {
    /// The VirtualMachineInstance as the API server has it.
    pub vmi: serde_json::Value,
    /// Secrets its cloud-init volumes name: `{secret: {key: base64}}`.
    #[serde(default)]
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Set when this launcher is the target of a live migration on this node: it prepares
    /// the VM and waits for its state instead of booting it.
    #[serde(default)]
    pub incoming: Option<IncomingMigration>,
}

/// What a migration target needs to know of its source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IncomingMigration {
    /// Same node: the source launcher's run directory, beside this launcher's (the same
    /// run root). The disk files it made there (overlays, empty disks, cloud-init ISOs,
    /// UEFI variables) are taken over by hard link, so the target runs on what the guest
    /// wrote. The pod network (same VMI UID) is joined on a tap of the target's own.
    ///
    /// None: the source is on another node. The target makes its disks as for a first boot
    /// and serves the ones the guest writes (`incomingStorageUri`) for the source to copy
    /// what its guest wrote into them while it runs (block migration); it joins the VMI's
    /// pod network if this host has it, else builds one (same MAC, derived from the UID).
    #[serde(default)]
    pub source_run_dir: Option<std::path::PathBuf>,
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
    /// Where the target listens: its launcher's `incomingUri` (`unix:PATH`; this launcher
    /// connects and hands QEMU the stream), or `tcp:HOST:PORT` (QEMU connects itself).
    pub uri: String,
    /// A target on another node: its `incomingStorageUri` (`unix:PATH`), which this
    /// launcher connects to once per disk it copies there before the guest moves.
    #[serde(default)]
    pub storage_uri: Option<String>,
    #[serde(default)]
    pub options: MigrationOptions,
}

/// How to migrate (from the MigrationPolicy and the cluster's migration configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationOptions {
    /// Bandwidth cap in bytes per second (none: unlimited).
    #[serde(default)]
    pub bandwidth_bytes_per_second: Option<u64>,
    /// The longest pause of the guest QEMU may plan for the switch-over, in ms (none:
    /// QEMU's default, 300). The migration starts with a shorter one and raises it toward
    /// this only while it does not converge (`migration::DowntimeRamp`).
    #[serde(default)]
    pub downtime_limit_ms: Option<u64>,
    /// Throttle the guest's vCPUs when memory is dirtied faster than it is sent.
    #[serde(default)]
    pub auto_converge: bool,
    /// Switch to post-copy at the completion timeout instead of cancelling. Needs
    /// userfaultfd for the target's QEMU (`vm.unprivileged_userfaultfd = 1`, or
    /// `/dev/userfaultfd` open to VM users); without it the migration stays pre-copy and
    /// the timeout cancels it, saying so.
    #[serde(default)]
    pub allow_post_copy: bool,
    /// Cancel the migration (the guest stays here; status `cancelled`, error `migration
    /// did not complete within N seconds`) if it has not completed by then.
    #[serde(default)]
    pub completion_timeout_seconds: Option<u64>,
}

/// `fs_freeze_status` while frozen.
pub const FS_FROZEN: &str = "frozen";

/// Body of `POST /v1/freeze`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FreezeRequest {
    /// Seconds after which the launcher thaws the guest by itself if no unfreeze came
    /// (default 300).
    #[serde(default)]
    pub unfreeze_timeout_seconds: Option<u64>,
}

/// The bus a hot-plugged disk goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HotplugBus {
    /// The virtio-scsi controller every VM has (`scsi-hd`/`scsi-cd`).
    Scsi,
    /// A virtio-blk device on a spare PCIe root port.
    Virtio,
}

/// Body of `POST /v1/volumes`: a host file (or block device) to attach to the running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HotplugVolumeRequest {
    /// The VMI volume name (a DNS label: `[a-z0-9-]`, at most 63).
    pub name: String,
    /// The image on the host: a regular file or a block device.
    pub path: std::path::PathBuf,
    pub bus: HotplugBus,
    /// Serial number the guest sees (up to 20 of `[A-Za-z0-9_-]`).
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    /// A CD-ROM (read-only, SCSI only).
    #[serde(default)]
    pub cdrom: bool,
    /// `raw` (default) or `qcow2` (self-contained: no backing or data file).
    #[serde(default)]
    pub format: Option<String>,
}

/// A hot-plugged volume, as the status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HotplugVolumeStatus {
    pub name: String,
    pub bus: HotplugBus,
    pub serial: Option<String>,
    /// The device id in QEMU, e.g. `hotplug-data`.
    pub target: String,
    pub read_only: bool,
    pub cdrom: bool,
    /// Size of the image (0 for an ejected cdrom).
    pub size_bytes: u64,
}

/// A medium put into a cdrom of the VM's boot configuration since it started (a cdrom
/// ejected since is not listed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsertedMedium {
    /// The cdrom's (and its volume's) name.
    pub name: String,
    /// The device id in QEMU, `ua-<name>`.
    pub target: String,
    /// The image, as the insert request named it.
    pub path: std::path::PathBuf,
    pub size_bytes: u64,
}

/// Body of `POST /v1/volumes/{name}/insert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InsertMediumRequest {
    /// The image on the host (raw, as CD-ROM images are; or `format`).
    pub path: std::path::PathBuf,
    /// `raw` (default) or `qcow2`.
    #[serde(default)]
    pub format: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_status_from_before_freeze_and_hotplug_still_parses() {
        let mut v = serde_json::to_value(LauncherStatus::new(None)).unwrap();
        let obj = v.as_object_mut().unwrap();
        assert!(obj.remove("fsFreezeStatus").is_some());
        assert!(obj.remove("hotplugVolumes").is_some());
        let st: LauncherStatus = serde_json::from_value(v).unwrap();
        assert_eq!(st.fs_freeze_status, None);
        assert!(st.hotplug_volumes.is_empty());
    }

    #[test]
    fn volume_and_freeze_bodies_on_the_wire() {
        let r: HotplugVolumeRequest = serde_json::from_value(json!({
            "name": "data", "path": "/img/d.raw", "bus": "virtio", "readOnly": true
        }))
        .unwrap();
        assert_eq!(r.bus, HotplugBus::Virtio);
        assert!(r.read_only && !r.cdrom && r.serial.is_none() && r.format.is_none());
        assert!(serde_json::from_value::<HotplugVolumeRequest>(
            json!({"name": "d", "path": "/x", "bus": "sata"})
        )
        .is_err());
        assert!(serde_json::from_value::<HotplugVolumeRequest>(
            json!({"name": "d", "path": "/x", "bus": "scsi", "lun": 1})
        )
        .is_err());
        let f: FreezeRequest =
            serde_json::from_value(json!({"unfreezeTimeoutSeconds": 30})).unwrap();
        assert_eq!(f.unfreeze_timeout_seconds, Some(30));
        assert!(serde_json::from_value::<FreezeRequest>(json!({"timeout": 30})).is_err());
        let st = HotplugVolumeStatus {
            name: "data".into(),
            bus: HotplugBus::Scsi,
            serial: None,
            target: "hotplug-data".into(),
            read_only: false,
            cdrom: false,
            size_bytes: 1,
        };
        assert_eq!(
            serde_json::to_value(&st).unwrap(),
            json!({"name": "data", "bus": "scsi", "serial": null, "target": "hotplug-data",
                   "readOnly": false, "cdrom": false, "sizeBytes": 1})
        );
    }
}
