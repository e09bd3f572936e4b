//! The neutral domain configuration: what to run, not how a backend spells it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything needed to define a domain. Paths are absolute host paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// Domain name (used as the VMM process name and in logs).
    pub name: String,
    /// SMBIOS system UUID presented to the guest.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Machine type, e.g. `q35`, `pc`, `pc-q35-10.0`.
    pub machine: String,
    pub cpu: CpuConfig,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    #[serde(default)]
    pub firmware: Firmware,
    #[serde(default)]
    pub kernel_boot: Option<KernelBoot>,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// Attach a virtio RNG fed by /dev/urandom.
    #[serde(default)]
    pub rng: bool,
    /// Attach a virtio memory balloon.
    #[serde(default)]
    pub balloon: bool,
    /// Create the vCPUs stopped (resume with `Domain::resume`).
    #[serde(default)]
    pub start_paused: bool,
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
    /// Serial console (ttyS0) on a unix socket, optionally mirrored to a log file.
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    /// VNC server on a unix socket (adds a VGA device).
    #[serde(default)]
    pub vnc_socket: Option<PathBuf>,
    /// Guest agent channel `org.qemu.guest_agent.0` on a unix socket.
    #[serde(default)]
    pub qga_socket: Option<PathBuf>,
    /// Control socket (QMP for QEMU).
    pub qmp_socket: PathBuf,
    /// Network namespace (e.g. `/run/netns/x`) the VMM is started in.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// File receiving the VMM's stdout/stderr.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// Kill the VMM (and swtpm) when the thread that started it exits.
    #[serde(default = "default_true")]
    pub die_with_parent: bool,
    /// Relative CPU weight of the VMM's threads in the kernel scheduler's units (1024 = an
    /// ordinary process), as Kubernetes derives cpu.shares from a pod's CPU request; None
    /// leaves the default. Guests thus never crowd out the control plane.
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// Who the VMM runs as and what bounds it; None runs it as the caller.
    #[serde(default)]
    pub confinement: Option<Confinement>,
}

/// An unprivileged VMM: its own user, no capabilities, no new privileges, and a cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confinement {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (e.g. the group owning `/dev/kvm`).
    #[serde(default)]
    pub groups: Vec<u32>,
    /// Name of the VMM's cgroup, unique on the host (created beneath the caller's own).
    pub cgroup: String,
    /// Memory the VMM may use, in bytes (the cgroup's limit).
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    /// CPU time the VMM may use, in thousandths of a CPU (the cgroup's quota).
    #[serde(default)]
    pub cpu_limit_millis: Option<u64>,
}

fn default_true() -> bool {
    true
}

impl DomainConfig {
    /// A minimal config: 1 vCPU, `memory_mib` MiB, q35, SeaBIOS, no devices.
    pub fn new(name: impl Into<String>, memory_mib: u64, qmp_socket: impl Into<PathBuf>) -> Self {
        DomainConfig {
            name: name.into(),
            uuid: None,
            machine: "q35".into(),
            cpu: CpuConfig::default(),
            memory_mib,
            firmware: Firmware::Bios,
            kernel_boot: None,
            disks: Vec::new(),
            nics: Vec::new(),
            rng: false,
            balloon: false,
            start_paused: false,
            tpm: None,
            serial: None,
            vnc_socket: None,
            qga_socket: None,
            qmp_socket: qmp_socket.into(),
            netns: None,
            log_file: None,
            die_with_parent: true,
            cpu_shares: None,
            confinement: None,
        }
    }
}

/// vCPU topology and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    pub model: CpuModel,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

impl CpuConfig {
    /// Total vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.sockets
            .saturating_mul(self.cores)
            .saturating_mul(self.threads)
    }
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            model: CpuModel::HostModel,
            sockets: 1,
            cores: 1,
            threads: 1,
        }
    }
}

/// CPU model. Host models need KVM; under TCG they become the emulator's `max` model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CpuModel {
    HostModel,
    HostPassthrough,
    Named(String),
}

/// Firmware.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS).
    #[default]
    Bios,
    /// UEFI (OVMF). `vars_path` is created from `vars_template` if it does not exist, so a
    /// persistent path keeps EFI variables across boots.
    Uefi {
        code: PathBuf,
        vars_template: PathBuf,
        vars_path: PathBuf,
        secure_boot: bool,
    },
}

/// Direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
}

/// Disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Bus a disk is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    Virtio,
    Sata,
    Scsi,
}

/// Whether a disk is a hard disk or a CD-ROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskDevice {
    #[default]
    Disk,
    Cdrom,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Device name, unique in the domain (becomes the QEMU device id).
    pub name: String,
    /// The image; none only for a cdrom with an empty tray (a medium comes later through
    /// [`crate::Domain::change_medium`]).
    #[serde(default)]
    pub path: Option<PathBuf>,
    pub format: DiskFormat,
    /// The image beneath a qcow2 overlay. QEMU gets exactly this chain: a backing file
    /// named in an image's header is never followed.
    #[serde(default)]
    pub backing: Option<BackingImage>,
    pub bus: DiskBus,
    #[serde(default)]
    pub device: DiskDevice,
    #[serde(default)]
    pub readonly: bool,
    /// 1-based boot priority (lower boots first).
    #[serde(default)]
    pub boot_order: Option<u32>,
    /// Serial number the guest sees.
    #[serde(default)]
    pub serial: Option<String>,
}

/// A read-only image beneath an overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackingImage {
    pub path: PathBuf,
    pub format: DiskFormat,
}

/// NIC device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    #[default]
    Virtio,
    E1000,
    E1000e,
    Rtl8139,
}

/// Where a NIC's packets go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NicBackend {
    /// An existing tap device (in the domain's network namespace). vhost is off.
    Tap { ifname: String },
    /// A passt instance's unix socket.
    Passt { socket: PathBuf },
    /// QEMU user networking (slirp), with `host_port -> guest_port` TCP forwards on 127.0.0.1.
    User { tcp_forwards: Vec<(u16, u16)> },
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    pub name: String,
    #[serde(default)]
    pub model: NicModel,
    #[serde(default)]
    pub mac: Option<String>,
    pub backend: NicBackend,
    #[serde(default)]
    pub boot_order: Option<u32>,
}

/// A software TPM 2.0 (swtpm) started and stopped with the domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// Directory holding the TPM state (keep it to persist the TPM).
    pub state_dir: PathBuf,
    /// swtpm control socket QEMU connects to.
    pub socket: PathBuf,
    /// swtpm pid file, used to kill a left-over swtpm.
    pub pid_file: PathBuf,
}

/// Serial console wiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    pub socket: PathBuf,
    #[serde(default)]
    pub log_file: Option<PathBuf>,
}

/// Run state of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DomainState {
    /// Defined, VMM not started.
    Defined,
    Running,
    Paused,
    /// Waiting for or receiving an incoming migration.
    Incoming,
    /// Migration finished on the source; the guest runs elsewhere.
    Migrated,
    /// The guest powered off (VMM may still be exiting).
    Shutdown,
    /// Guest panic or VMM internal error.
    Crashed,
    /// The VMM process is gone.
    Exited,
}

/// Statistics of a running domain, read at one moment. Counters only grow while the VMM
/// runs; a field the backend or the guest cannot tell is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainStats {
    pub vcpus: Vec<VcpuStats>,
    pub block: Vec<BlockStats>,
    pub memory: MemoryStats,
    /// Resident memory of the VMM process in KiB.
    pub vmm_rss_kib: u64,
    /// CPU time of the whole VMM process (vCPUs and emulation), user mode, in nanoseconds.
    pub vmm_user_ns: u64,
    /// The same in system mode.
    pub vmm_system_ns: u64,
}

/// One vCPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VcpuStats {
    pub index: u32,
    pub thread_id: i64,
    /// Time the vCPU thread ran on a host CPU, in nanoseconds.
    pub run_ns: Option<u64>,
    /// Time the vCPU thread was runnable but waited for a host CPU, in nanoseconds.
    pub delay_ns: Option<u64>,
}

/// One disk's counters; `name` is the disk's name in the domain config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockStats {
    pub name: String,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
    pub rd_total_time_ns: u64,
    pub wr_total_time_ns: u64,
    pub flush_total_time_ns: u64,
}

/// Memory as the VMM and, through the balloon driver, the guest report it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Memory given to the guest at boot, in bytes.
    pub domain_bytes: u64,
    /// The balloon's current size (memory the guest has), when a balloon is attached.
    pub balloon_actual_bytes: Option<u64>,
    /// What the guest's balloon driver reported last, when it reports.
    pub guest: Option<GuestMemoryStats>,
}

/// The guest's view of its memory (virtio-balloon statistics), in bytes and counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestMemoryStats {
    /// Memory the guest can use in all (MemTotal).
    pub total_bytes: Option<u64>,
    /// Memory left completely unused (MemFree).
    pub free_bytes: Option<u64>,
    /// Memory the guest could give back without swapping (MemAvailable).
    pub available_bytes: Option<u64>,
    /// Reclaimable caches (Buffers + Cached).
    pub disk_caches_bytes: Option<u64>,
    pub swap_in_bytes: Option<u64>,
    pub swap_out_bytes: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
}

/// Progress of a live migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// Backend status word: `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, ...
    pub status: String,
    pub total_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub ram_transferred: Option<u64>,
    pub ram_remaining: Option<u64>,
    pub ram_total: Option<u64>,
    /// Bytes of guest memory dirtied per second (while RAM is being sent).
    #[serde(default)]
    pub dirty_rate_bytes: Option<u64>,
    /// Bytes of memory sent per second.
    #[serde(default)]
    pub transfer_rate_bytes: Option<u64>,
    /// The pause of the guest an outgoing migration's switch-over plans for, in ms, as
    /// the VMM has it now ([`crate::Domain::set_migration_downtime_limit`]).
    #[serde(default)]
    pub downtime_limit_ms: Option<u64>,
    pub error: Option<String>,
}

impl MigrationStatus {
    /// True when the migration reached a terminal state.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// How an outgoing live migration runs ([`crate::Domain::migrate_out`]). Every field is
/// set for each migration, so nothing carries over from an earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationParams {
    /// Bytes per second; `None`: unlimited.
    pub max_bandwidth: Option<u64>,
    /// The longest pause of the guest the switch-over may plan for, in ms (`None`:
    /// [`MigrationParams::DEFAULT_DOWNTIME_LIMIT_MS`]).
    pub downtime_limit_ms: Option<u64>,
    /// Throttle the guest's vCPUs when it dirties memory faster than it is sent.
    pub auto_converge: bool,
    /// Allow [`crate::Domain::migrate_start_postcopy`]. The receiving VMM must allow it too
    /// (see [`crate::qemu::postcopy_possible`]), or the migration fails at once.
    pub post_copy: bool,
    /// Stop in state `pre-switchover` (source paused, its device state not sent yet) until
    /// [`crate::Domain::finish_disk_mirrors`]: disks copied by a block migration must be
    /// complete before the guest runs on the target.
    pub pause_before_switchover: bool,
}

impl MigrationParams {
    /// The downtime limit when none is asked for: QEMU's own default, ms.
    pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
}

/// Where an outgoing live migration goes.
#[derive(Debug)]
pub enum MigrationTarget {
    /// A URI the VMM connects to by itself: `tcp:HOST:PORT` or `unix:PATH`.
    Uri(String),
    /// A stream the caller connected (to a socket the VMM's user may not reach); the VMM
    /// gets the descriptor.
    Connected(std::os::fd::OwnedFd),
}

/// Why the VMM exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExitReason {
    /// The guest powered itself off (or accepted an ACPI shutdown).
    GuestShutdown,
    /// The host asked the VMM to quit (hard stop).
    HostRequest,
    /// The VMM was killed by a signal.
    Killed,
    /// The VMM failed (non-zero exit, guest panic).
    Crashed,
}

/// How the VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub reason: ExitReason,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// An asynchronous lifecycle event from the VMM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    pub name: String,
    pub data: serde_json::Value,
}

/// A disk added to a running domain ([`crate::Domain::attach_disk`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotplugDisk {
    /// Device name, unique in the domain among boot and hot-plugged disks.
    pub name: String,
    /// `Scsi` or `Virtio` (SATA has no hot-plug).
    pub bus: DiskBus,
    #[serde(default)]
    pub device: DiskDevice,
    #[serde(default)]
    pub readonly: bool,
    /// Serial number the guest sees.
    #[serde(default)]
    pub serial: Option<String>,
}

/// What a hot-plugged disk became in the VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedDisk {
    /// The device's id in the VMM (e.g. `hotplug-data`).
    pub device_id: String,
}

/// An image the caller opened for the VMM: it gets descriptors, never a path, so it can
/// reach only this file even though it could not open the path itself.
#[derive(Debug)]
pub struct DiskImage {
    pub format: DiskFormat,
    /// Opened read-only (always there).
    pub read_only: std::os::fd::OwnedFd,
    /// Opened read-write, for a writable disk.
    pub read_write: Option<std::os::fd::OwnedFd>,
}

impl DiskImage {
    /// Opens `path` read-only, and read-write too when `writable`.
    pub fn open(
        path: &std::path::Path,
        format: DiskFormat,
        writable: bool,
    ) -> crate::Result<DiskImage> {
        let open = |write: bool| -> crate::Result<std::os::fd::OwnedFd> {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(path)
                .map(Into::into)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => crate::HypervisorError::MissingFile {
                        what: "disk image",
                        path: path.to_path_buf(),
                    },
                    _ => crate::HypervisorError::Io {
                        context: format!("opening disk image {}", path.display()),
                        source: e,
                    },
                })
        };
        Ok(DiskImage {
            format,
            read_only: open(false)?,
            read_write: if writable { Some(open(true)?) } else { None },
        })
    }

    /// The image's size in bytes now (a regular file's length, a block device's capacity).
    pub fn size(&self) -> std::io::Result<u64> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileTypeExt;
        let file = std::fs::File::from(self.read_only.try_clone()?);
        let meta = file.metadata()?;
        if meta.file_type().is_block_device() {
            // SAFETY: lseek(2) on a descriptor we own; it moves only the shared offset,
            // which nobody relies on (the VMM reads and writes at explicit offsets).
            let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
            if end < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(end as u64)
        } else {
            Ok(meta.len())
        }
    }
}
