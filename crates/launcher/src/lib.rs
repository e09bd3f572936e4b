//! kubevirt-launcher: one supervising process per VM (see README.md).
//!
//! - [`translate()`]: VirtualMachineInstance -> hypervisor `DomainConfig` + volume/network work.
//! - [`run`]: the launcher process (daemonises, prepares disks, starts QEMU, serves the local
//!   API on `launcher.sock`, reaps QEMU, records the final state, cleans up).
//! - [`LauncherClient`] and [`discover`]: what the node agent uses.

pub mod api;
pub mod client;
mod network;
pub mod prepare;
mod process;
pub mod rundir;
mod server;
pub mod translate;
pub mod vm;

pub use api::{FinalState, InterfaceStatus, LauncherState, Phase, StopRequest, VmiRef};
pub use client::{discover, live_pid, ClientError, LauncherClient, LauncherInfo};
pub use process::{run, LauncherArgs, LauncherError};
pub use rundir::{RunDir, DEFAULT_RUN_ROOT};
pub use translate::{translate, LauncherEnv, TranslateError, Translation};
