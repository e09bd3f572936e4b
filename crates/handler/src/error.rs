//! Errors of the node agent.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
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
    /// Talking to or starting a launcher failed.
    #[error("launcher of {vmi}: {reason}")]
    Launcher { vmi: String, reason: String },
    /// No launcher runs for this VMI on this node.
    #[error("VMI {vmi} is not running")]
    NotRunning { vmi: String },
    /// Reading or writing a file in the run directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Controller(#[from] kubevirt_controller::ControllerError),
}

impl HandlerError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HandlerError::Api { .. } | HandlerError::Launcher { .. }
        )
    }
}

pub type Result<T, E = HandlerError> = std::result::Result<T, E>;
