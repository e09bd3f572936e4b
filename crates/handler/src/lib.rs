//! kubevirt-handler: the node agent. It runs the VMIs scheduled to its node through
//! launchers, reports their state into VMI status, stops them with their grace period when
//! the VMI is deleted, adopts running launchers after a restart, registers the Node, and
//! serves the VM/VMI subresources (start/stop/restart, pause/unpause/softreboot/reset,
//! console/vnc websockets, guestosinfo).

pub mod agent;
pub mod error;
pub mod node;
pub mod ops;
pub mod status;
pub mod subresources;

pub use error::{HandlerError, Result};
