//! Errors of the hypervisor layer.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;

/// Everything that can go wrong while configuring or driving a domain.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The domain configuration is not acceptable.
    #[error("invalid domain config: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// A file the domain needs does not exist.
    #[error("{what} {path:?} does not exist")]
    MissingFile { what: &'static str, path: PathBuf },
    /// Spawning a process failed.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited during start-up.
    #[error("{program} exited during start-up ({status}): {stderr}")]
    EarlyExit {
        program: String,
        status: String,
        stderr: String,
    },
    /// An I/O error on a file or socket.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The QMP peer sent something that is not QMP.
    #[error("QMP protocol error: {detail}")]
    QmpProtocol { detail: String },
    /// QEMU rejected a QMP command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    QmpCommand {
        command: String,
        class: String,
        desc: String,
    },
    /// No answer in time.
    #[error("timed out after {seconds:.1}s waiting for {what}")]
    Timeout { what: String, seconds: f64 },
    /// The guest agent answered with an error or not at all.
    #[error("guest agent command {command} failed: {desc}")]
    GuestAgent { command: String, desc: String },
    /// The operation needs a running domain.
    #[error("domain {name} is not running")]
    NotRunning { name: String },
    /// No disk of that name (at boot or hot-plugged).
    #[error("domain {domain} has no disk {disk}")]
    NoSuchDisk { domain: String, disk: String },
    /// A disk or device of that name exists already.
    #[error("domain {domain} already has a device named {disk}")]
    DiskExists { domain: String, disk: String },
    /// The machine has no free place for a disk on that bus.
    #[error("cannot hot-plug disk {disk}: {reason}")]
    NoHotplugSlot { disk: String, reason: String },
    /// The operation is not valid in the current state.
    #[error("domain {name}: {reason}")]
    InvalidState { name: String, reason: String },
}

impl HypervisorError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HypervisorError::Io {
            context: context.into(),
            source,
        }
    }
}
