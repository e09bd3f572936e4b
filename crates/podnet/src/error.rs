use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building, adopting or tearing down a pod network.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    /// An interface asks for a binding this project does not offer on the pod network.
    #[error("{field}: binding `{binding}` is not supported on the pod network: {reason}")]
    UnsupportedBinding {
        field: String,
        binding: String,
        reason: String,
    },
    /// An interface spec is malformed (no binding, two bindings, bad port...).
    #[error("{field}: {reason}")]
    InvalidInterface { field: String, reason: String },
    /// A configuration value is out of range or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// A helper program (`ip`, `nft`, `passt`) could not be started.
    #[error("could not run `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// A helper program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// Every address of the pod range is handed out.
    #[error("no free pod IP left in {cidr}")]
    PoolExhausted { cidr: String },
    /// Reading or writing the state directory failed.
    #[error("state file {path}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A state file exists but cannot be parsed.
    #[error("state file {path} is corrupt")]
    StateCorrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `setup` was called for a VM whose pod network is still in place.
    #[error(
        "VM {vm_id} already has a pod network (netns {netns}); adopt it or tear it down first"
    )]
    AlreadySetUp { vm_id: String, netns: String },
    /// `adopt` found no (complete) pod network for this VM.
    #[error("VM {vm_id} has no pod network to adopt: {reason}")]
    NotFound { vm_id: String, reason: String },
    /// Opening or entering a network namespace failed.
    #[error("network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// Creating or using the DHCP socket failed.
    #[error("DHCP socket on {iface} in {netns}")]
    DhcpSocket {
        netns: PathBuf,
        iface: String,
        #[source]
        source: io::Error,
    },
    /// passt did not come up.
    #[error("passt: {reason}")]
    Passt { reason: String },
}

pub type Result<T, E = PodNetError> = std::result::Result<T, E>;
