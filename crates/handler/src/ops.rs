//! What the node agent needs from the launchers on its node, behind a trait.
//!
//! The real implementation ([`crate::launchers`] once wired, over `kubevirt_launcher`)
//! spawns and talks to launcher processes; the agent's reconcile logic and the subresource
//! handlers are generic over this trait so they stay testable without QEMU.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::Result;

/// Identity of a VMI on this node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VmiKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for VmiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Lifecycle of a domain as its launcher reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainState {
    /// The launcher runs, QEMU is not up yet.
    Starting,
    Running,
    Paused,
    /// A graceful stop is in progress.
    Stopping,
    /// The guest powered off (or was stopped on request).
    Succeeded,
    /// QEMU or the launcher failed.
    Failed,
}

impl DomainState {
    pub fn is_final(self) -> bool {
        matches!(self, DomainState::Succeeded | DomainState::Failed)
    }
}

/// A guest network interface as seen by the launcher / guest agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceReport {
    pub name: String,
    pub mac: Option<String>,
    pub ip_addresses: Vec<String>,
    pub interface_name: Option<String>,
}

/// Everything the node agent puts into a VMI's status.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainReport {
    pub state: DomainState,
    /// None while unknown; Some(reason) when the guest runs under software emulation.
    pub software_emulation: Option<String>,
    pub interfaces: Vec<InterfaceReport>,
    /// `guest-get-osinfo` in upstream's `guestOSInfo` shape.
    pub guest_os_info: Option<Value>,
    pub agent_connected: bool,
    /// Why the domain failed or what features it could not honour.
    pub message: Option<String>,
}

/// Imperative requests on a running domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Pause,
    Unpause,
    Reset,
    SoftReboot,
}

/// A bidirectional byte stream (serial console or VNC).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

pub type BoxStream = Box<dyn ByteStream>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The launchers of one node. Object-safe (boxed futures) so the agent and the
/// subresource router can share one `Arc<dyn LauncherOps>`.
pub trait LauncherOps: Send + Sync + 'static {
    /// The domain of `key`: None when no launcher for this VMI uid ran on this node (or its
    /// record was forgotten); a final state when it ran and exited.
    fn report<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<Option<DomainReport>>>;
    /// Starts a launcher for the VMI (its full JSON), with the Secrets its cloud-init
    /// volumes refer to (`{name: {key: base64}}`). Must not start a second launcher for a
    /// uid that already has one.
    fn start<'a>(
        &'a self,
        key: &'a VmiKey,
        vmi: &'a Value,
        secrets: &'a Value,
    ) -> BoxFuture<'a, Result<()>>;
    /// Asks the launcher to stop: ACPI power-off, hard stop after `grace_seconds`.
    fn stop<'a>(&'a self, key: &'a VmiKey, grace_seconds: u64) -> BoxFuture<'a, Result<()>>;
    fn command<'a>(&'a self, key: &'a VmiKey, command: Command) -> BoxFuture<'a, Result<()>>;
    fn guest_os_info<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<Value>>;
    fn console<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<BoxStream>>;
    fn vnc<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<BoxStream>>;
    /// Drops what is left of a finished launcher (its run directory and final record).
    fn forget<'a>(&'a self, key: &'a VmiKey) -> BoxFuture<'a, Result<()>>;
}
