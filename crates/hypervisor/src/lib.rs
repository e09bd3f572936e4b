//! kubevirt-hypervisor: the Hypervisor Abstraction Layer (see README.md).
//!
//! The API is synchronous and object-safe: a [`Hypervisor`] creates boxed [`Domain`]s and every
//! domain operation is a blocking call that finishes in milliseconds (QMP round trips) or takes
//! an explicit timeout. Async callers run the few long waits ([`Domain::wait_exit`]) on a
//! blocking thread. This keeps the traits usable as `dyn` objects without `async_trait`, and keeps
//! the launcher's footprint small. This crate knows nothing about Kubernetes.

pub mod accel;
pub mod config;
pub mod error;
pub mod qemu;
pub mod qga;
pub mod qmp;
pub mod swtpm;

use std::time::Duration;

pub use accel::{detect_accelerator, Accelerator, AcceleratorKind};
pub use config::*;
pub use error::{HypervisorError, Result};
pub use qemu::QemuHypervisor;

/// Called after each lifecycle event of a domain (and when its VMM exits), on the VMM's
/// event thread: it should only wake up whoever reads [`Domain::events_since`].
pub type EventHook = std::sync::Arc<dyn Fn() + Send + Sync>;

/// A virtualisation backend able to create domains.
pub trait Hypervisor: Send + Sync {
    /// Short backend name, e.g. `qemu`.
    fn name(&self) -> &'static str;
    /// The accelerator domains of this hypervisor will use, with the reason it was chosen.
    fn accelerator(&self) -> &Accelerator;
    /// Validates `cfg` and returns a domain that is defined but not started.
    fn create_domain(&self, cfg: DomainConfig) -> Result<Box<dyn Domain>>;
}

/// One virtual machine's lifecycle. All methods take `&self`: implementations synchronise
/// internally so a domain can be shared (`Arc<dyn Domain>`) between an API server and a reaper.
pub trait Domain: Send + Sync {
    /// The domain name from its config.
    fn name(&self) -> &str;
    /// The config the domain was created from.
    fn config(&self) -> &DomainConfig;
    /// Boots the domain (spawns the VMM and connects its control channel).
    fn start(&self) -> Result<()>;
    /// Starts the VMM waiting for an incoming live migration on `uri` (`tcp:HOST:PORT`, or
    /// `unix:PATH`: the VMM creates that socket as its own user), listening once this
    /// returns. Post-copy is allowed when the host lets the VMM use it. The VMM reports
    /// every change of the migration's status as a `MIGRATION` event, and stays after a
    /// failed migration (status `failed` and why): stop it.
    fn prepare_incoming(&self, uri: &str) -> Result<()>;
    /// Process id of the VMM while it runs.
    fn pid(&self) -> Option<u32>;
    /// Pauses all vCPUs.
    fn pause(&self) -> Result<()>;
    /// Resumes paused vCPUs.
    fn resume(&self) -> Result<()>;
    /// Presses the ACPI power button; the guest decides whether to power off.
    fn acpi_shutdown(&self) -> Result<()>;
    /// Hard stop: asks the VMM to quit, kills it if it does not, and releases helpers (swtpm).
    fn stop(&self) -> Result<()>;
    /// Hard reset of the machine (like the reset button).
    fn reset(&self) -> Result<()>;
    /// Current run state as reported by the VMM.
    fn state(&self) -> Result<DomainState>;
    /// vCPU, block and memory statistics.
    fn stats(&self) -> Result<DomainStats>;
    /// Starts an outgoing live migration with `params`; the VMM reports every change of its
    /// status as a `MIGRATION` event (see also [`Domain::migration_status`]).
    fn migrate_out(&self, to: MigrationTarget, params: &MigrationParams) -> Result<()>;
    /// Aborts the outgoing migration (before post-copy started): the guest keeps running
    /// here. Also succeeds when none is active, so check the status first.
    fn migrate_cancel(&self) -> Result<()>;
    /// Changes [`MigrationParams::downtime_limit_ms`] of the outgoing migration while it
    /// runs: the VMM switches over once it expects to send the rest within the new limit.
    fn set_migration_downtime_limit(&self, ms: u64) -> Result<()>;
    /// Switches an outgoing migration started with [`MigrationParams::post_copy`] to
    /// post-copy: the guest runs on the target from now on and fetches the memory it
    /// misses from here.
    fn migrate_start_postcopy(&self) -> Result<()>;
    /// Progress of the current (outgoing or incoming) migration.
    fn migration_status(&self) -> Result<MigrationStatus>;
    /// Runs a guest-agent command (e.g. `guest-get-osinfo`) and returns its `return` value.
    fn guest_agent(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value>;
    /// Hot-plugs a disk reading `image` (the caller opened it; the VMM gets descriptors).
    /// Fails with `DiskExists` for a taken name and `NoHotplugSlot` when the machine has no
    /// free place on that bus.
    fn attach_disk(&self, disk: &HotplugDisk, image: &DiskImage) -> Result<AttachedDisk>;
    /// Unplugs a hot-plugged disk: waits up to `timeout` for the guest to release it, then
    /// drops its block node and descriptors. After a timeout the request stands; calling
    /// again waits again.
    fn detach_disk(&self, name: &str, timeout: Duration) -> Result<()>;
    /// Tells the VMM that disk `name` (at boot or hot-plugged) is now `size_bytes` long;
    /// the guest sees the new capacity.
    fn resize_disk(&self, name: &str, size_bytes: u64) -> Result<()>;
    /// Ejects the medium of cdrom `name` and inserts `image` instead (`None`: left empty).
    fn change_medium(&self, name: &str, image: Option<&DiskImage>) -> Result<()>;
    /// Block migration, target (waiting for the guest): serves the disks named, writable,
    /// over NBD on unix socket `socket`, one export per disk, named after it.
    fn export_disks(&self, socket: &std::path::Path, disks: &[String]) -> Result<()>;
    /// Block migration, target (the guest arrived): stops serving the disks.
    fn stop_disk_exports(&self) -> Result<()>;
    /// Block migration, source: mirrors each disk named onto the target's export of that
    /// name, through a stream connected to the target's socket; returns once everything
    /// was copied (from then on each write reaches both), or fails within `timeout`.
    fn mirror_disks(
        &self,
        targets: Vec<(String, std::os::fd::OwnedFd)>,
        timeout: Duration,
    ) -> Result<()>;
    /// Block migration, source, in state `pre-switchover` (guest paused): completes the
    /// mirrors, then lets the migration switch over.
    fn finish_disk_mirrors(&self) -> Result<()>;
    /// Block migration, source, after a failure: drops the mirrors (the guest stays).
    fn abort_disk_mirrors(&self);
    /// Waits until the VMM process exits (reaping it). `None` timeout waits forever.
    /// Returns `Ok(None)` on timeout.
    fn wait_exit(&self, timeout: Option<Duration>) -> Result<Option<ExitInfo>>;
    /// Lifecycle events seen so far (STOP, RESUME, RESET, SHUTDOWN, ...), oldest first.
    fn events(&self) -> Vec<DomainEvent>;
    /// Blocks until an event named `name` arrives after index `after` of [`Domain::events`].
    fn wait_event(&self, name: &str, after: usize, timeout: Duration) -> Option<DomainEvent>;
    /// Events from absolute index `after` on, and the index the next event will have: how a
    /// supervisor follows the domain without polling.
    fn events_since(&self, after: usize) -> (Vec<DomainEvent>, usize);
    /// Calls `hook` after each event from now on and when the VMM exits.
    fn set_event_hook(&self, hook: EventHook);
}
