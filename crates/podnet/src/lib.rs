//! kubevirt-podnet: the pod network of a VM on a node without a pod (see README.md).
//!
//! - [`PodNetwork::setup`] builds KubeVirt's masquerade layout for one VM: a network
//!   namespace (`kvrs-<id>`) whose `eth0` holds the "pod IP" on the host bridge `kvrs0`, a
//!   bridge `k6t-eth0` (10.0.2.1/24) with the VM's tap, and nftables NAT between them.
//! - [`DhcpServer`] answers the guest on `k6t-eth0` with 10.0.2.2.
//! - [`Passt`] runs Debian's `passt` for `binding: {name: passt}`.
//! - [`binding_for`] tells which binding an interface uses, refusing those we cannot run.

mod binding;
mod cmd;
mod dhcp;
mod error;
mod ipam;
mod mac;
mod masquerade;
mod netns;
mod nft;
mod passt;
pub mod services;

pub use binding::{binding_for, Binding, PortForward, Protocol};
pub use dhcp::{DhcpConfig, DhcpServer};
pub use error::{PodNetError, Result};
pub use mac::MacAddr;
pub use masquerade::{
    MasqueradeConfig, PodMode, PodNetwork, PodNetworkConfig, PodNetworkHandle, GUEST_GATEWAY,
    GUEST_IP, GUEST_PREFIX_LEN, NETNS_BRIDGE, POD_IFACE, TAP_NAME,
};
pub use netns::{enter_netns_for_child, run_in_netns};
pub use passt::{Passt, PasstConfig, DYNAMIC_LOADER};
