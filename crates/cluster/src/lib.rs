//! kubevirt-cluster: what running on a real Kubernetes cluster needs beyond the shared
//! controllers and node agent: the install manifests ([`manifests`], applied by [`apply`]),
//! and virt-api's admission webhooks ([`admission`], [`eviction`], [`webhooks`]) served
//! over TLS with a self-managed CA ([`certs`], [`virt_api`]), its `subresources.kubevirt.io` API for the
//! aggregator ([`subresources`]) and virt-handler's end of it ([`node_api`]).

pub mod admission;
pub mod apply;
pub mod certs;
pub mod eviction;
pub mod manifests;
pub mod metrics;
pub mod node_api;
pub mod subresources;
pub mod virt_api;
pub mod webhooks;
