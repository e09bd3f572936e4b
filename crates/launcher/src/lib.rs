//! kubevirt-launcher: one supervising process per VM (see README.md).
//!
//! - [`translate()`]: VirtualMachineInstance -> hypervisor `DomainConfig` + volume/network work.
//! - [`run`]: the launcher process (gets the VMI, prepares disks, starts QEMU, reports its
//!   status as it changes on `launcher.sock`, reaps QEMU, records the final status, cleans up).
//! - [`protocol`] and [`LauncherClient`]: the launcher's API and its client, for the node
//!   agent.

pub mod client;
mod footprint;
mod freeze;
mod guest_net;
mod hotplug;
mod migration;
mod network;
pub mod prepare;
mod privileges;
mod process;
pub mod protocol;
pub mod rundir;
mod server;
mod status;
pub mod translate;
mod vm;
pub mod vmm_user;

pub use client::{final_status, live_pid, ByteStream, ClientError, LauncherClient};
pub use migration::in_progress as migration_in_progress;
pub use process::{run, ExitCode, LauncherArgs, LauncherError};
pub use protocol::{
    AccessCredentialsRequest, AccessCredentialsResult, FailedStep, FilesystemStats, FreezeRequest,
    GuestExecRequest, GuestExecResult, GuestInterface, HotplugBus, HotplugVolumeRequest,
    HotplugVolumeStatus, IncomingMigration, InsertMediumRequest, InsertedMedium, InterfaceStats,
    InterfaceStatus, LauncherStatus, MigrateRequest, MigrationOptions, Stage, StartFailure,
    StopRequest, SyncRequest, VmStats, VmiRef,
};
pub use rundir::{RunDir, DEFAULT_RUN_ROOT};
pub use translate::{translate, LauncherEnv, TranslateError};
