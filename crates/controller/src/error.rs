//! Errors of the controllers.

use std::time::Duration;

use kube::runtime::controller::Action;
use kubevirt_reconcile::ApiCallError;

/// Errors raised while reconciling VirtualMachines and VirtualMachineInstances.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A call to the API server failed.
    #[error(transparent)]
    Api(#[from] ApiCallError),
    /// An object lacks a field the controller needs (admission should have refused it).
    #[error("{kind} {namespace}/{name}: {field}: Required value")]
    MissingField {
        kind: &'static str,
        namespace: String,
        name: String,
        field: &'static str,
    },
    /// What an object asks for cannot be built (a restore patch that does not apply, ...).
    #[error("{0}")]
    Invalid(String),
}

impl ControllerError {
    /// Lost a race with another writer (retried at once).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ControllerError::Api(e) if e.is_conflict())
    }

    /// API failures (unreachable, conflicts) are retried quickly; an object the controller
    /// cannot act on waits for a change, with a slow retry as a safety net.
    pub fn retry_after(&self) -> Action {
        match self {
            ControllerError::Api(e) if e.is_conflict() => {
                Action::requeue(Duration::from_millis(200))
            }
            ControllerError::Api(_) => Action::requeue(Duration::from_secs(2)),
            ControllerError::MissingField { .. } | ControllerError::Invalid(_) => {
                Action::requeue(Duration::from_secs(300))
            }
        }
    }
}

pub type Result<T, E = ControllerError> = std::result::Result<T, E>;
