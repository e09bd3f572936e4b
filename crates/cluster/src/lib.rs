//! kubevirt-cluster: what running on a real Kubernetes cluster needs beyond the shared
//! controllers and node agent: the install manifests ([`manifests`], applied by [`apply`]),
//! and virt-api's admission webhooks ([`admission`], [`webhooks`]) served over TLS with a
//! self-managed CA ([`certs`], [`virt_api`]).

pub mod admission;
pub mod apply;
pub mod certs;
pub mod manifests;
pub mod virt_api;
pub mod webhooks;
