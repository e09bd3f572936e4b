//! Errors of the node agent.

use std::path::PathBuf;
use std::time::Duration;

use kube::runtime::controller::Action;
use kubevirt_reconcile::ApiCallError;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A call to the API server failed.
    #[error(transparent)]
    Api(#[from] ApiCallError),
    /// Talking to or starting a launcher failed.
    #[error("launcher of {vmi}: {reason}")]
    Launcher { vmi: String, reason: String },
    /// No launcher runs for this VMI on this node.
    #[error("VMI {vmi} is not running on this node")]
    NotRunning { vmi: String },
    /// Reading or writing a file of a launcher failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HandlerError {
    /// Lost a race with another writer (retried at once).
    pub fn is_conflict(&self) -> bool {
        matches!(self, HandlerError::Api(e) if e.is_conflict())
    }

    /// When to try again: conflicts at once, API and launcher trouble soon, the rest later.
    pub fn retry_after(&self) -> Action {
        match self {
            HandlerError::Api(e) if e.is_conflict() => Action::requeue(Duration::from_millis(100)),
            HandlerError::Api(_) | HandlerError::Launcher { .. } => {
                Action::requeue(Duration::from_secs(2))
            }
            HandlerError::NotRunning { .. } | HandlerError::Io { .. } => {
                Action::requeue(Duration::from_secs(30))
            }
        }
    }
}

pub type Result<T, E = HandlerError> = std::result::Result<T, E>;
