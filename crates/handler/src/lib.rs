//! kubevirt-handler: the node agent. On its node it is both upstream's virt-handler and, in
//! embedded mode, the kubelet of launcher pods:
//!
//! - [`node`]: registers the Node (labels, capacity) and keeps its heartbeat;
//! - [`scheduler`]: embedded mode's stand-in for kube-scheduler (binds pods to the node);
//! - [`launchers`]: the launcher processes of this node, started or adopted, followed
//!   through the status they push;
//! - [`pods`] with [`pod_status`] and [`probes`]: runs launcher pods, probes their
//!   containers and reports their status; refuses other pods;
//! - [`agent`] with [`vmi_status`]: hands each Scheduled VMI to its launcher, writes VMI
//!   status from the launcher's reports, stops deleted VMIs; [`hotplug`]: attaches and
//!   detaches hot-pluggable volumes, grows disks whose claims grew; [`migration`]: the
//!   source's and target's steps of a live migration;
//! - [`metrics`]: the node's VM metrics, read from the launchers when scraped;
//! - [`subresources`] and [`logs`]: `subresources.kubevirt.io` (start/stop/restart,
//!   pause/unpause/softreboot/reset, console/vnc, guestosinfo) and `pods/log`.

pub mod access_credentials;
pub mod agent;
pub mod error;
pub mod hotplug;
pub mod launchers;
pub mod logs;
pub mod metrics;
pub mod migration;
pub mod node;
pub mod peer;
pub mod pod_status;
pub mod pods;
pub mod portforward;
pub mod probes;
pub mod scheduler;
pub mod services;
pub mod subresources;
pub mod vmi_status;

pub use error::{HandlerError, Result};
