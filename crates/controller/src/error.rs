//! Errors of the controllers.

/// Errors raised while reconciling VirtualMachines and VirtualMachineInstances.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A call to the API server failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// An object lacks a field the controller needs (the API server should have refused it).
    #[error("{kind} {namespace}/{name}: {field}: Required value")]
    MissingField {
        kind: &'static str,
        namespace: String,
        name: String,
        field: &'static str,
    },
    /// A field holds a value the controller cannot act on.
    #[error("{field}: Invalid value: {value:?}: {reason}")]
    InvalidField {
        field: String,
        value: String,
        reason: String,
    },
    /// A state change request (start/stop/restart) is not allowed in the VM's current state.
    #[error("{message}")]
    Conflict { message: String },
    /// Serialising a patch failed.
    #[error("building patch for {kind} {name}: {source}")]
    Serialize {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ControllerError {
    /// Transient errors (API unreachable, conflicts on update) are retried quickly; the rest
    /// waits for the object to change.
    pub fn is_transient(&self) -> bool {
        matches!(self, ControllerError::Api { .. })
    }
}

pub type Result<T, E = ControllerError> = std::result::Result<T, E>;
