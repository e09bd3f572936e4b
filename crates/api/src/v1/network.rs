//! Guest network interfaces (`spec.domain.devices.interfaces`) and the networks they attach to
//! (`spec.networks`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::EmptyObject;

/// A guest NIC. Exactly one binding method (`bridge`, `masquerade`, `sriov`, `slirp`,
/// `macvtap`, `passt`, `binding`) is set; defaulting picks one when none is.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Name of the network (`spec.networks[].name`) this interface is attached to.
    pub name: String,
    /// `virtio`, `e1000`, `e1000e`, `igb`, `ne2k_pci`, `pcnet`, `rtl8139`.
    pub model: Option<String>,
    /// Connect through a Linux bridge.
    pub bridge: Option<EmptyObject>,
    pub slirp: Option<EmptyObject>,
    /// Connect through NAT (the pod network's default here).
    pub masquerade: Option<EmptyObject>,
    /// Pass through an SR-IOV virtual function.
    pub sriov: Option<EmptyObject>,
    pub macvtap: Option<EmptyObject>,
    pub passt: Option<EmptyObject>,
    pub passt_binding: Option<EmptyObject>,
    pub binding: Option<PluginBinding>,
    /// Ports forwarded to the guest (masquerade).
    pub ports: Option<Vec<Port>>,
    /// MAC address, e.g. de:ad:00:00:be:af.
    pub mac_address: Option<String>,
    pub boot_order: Option<u32>,
    pub pci_address: Option<String>,
    pub dhcp_options: Option<DhcpOptions>,
    pub tag: Option<String>,
    pub acpi_index: Option<u32>,
    /// `up`, `down` or `absent`.
    pub state: Option<String>,
}

impl Interface {
    /// The binding method in use, by its field name (`masquerade`, `bridge`, ...).
    pub fn binding_method(&self) -> Option<&'static str> {
        self.binding_methods().first().copied()
    }

    /// All binding methods set (valid interfaces have exactly one).
    pub fn binding_methods(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.bridge.is_some() {
            out.push("bridge");
        }
        if self.slirp.is_some() {
            out.push("slirp");
        }
        if self.masquerade.is_some() {
            out.push("masquerade");
        }
        if self.sriov.is_some() {
            out.push("sriov");
        }
        if self.macvtap.is_some() {
            out.push("macvtap");
        }
        if self.passt.is_some() {
            out.push("passt");
        }
        if self.passt_binding.is_some() {
            out.push("passtBinding");
        }
        if self.binding.is_some() {
            out.push("binding");
        }
        out
    }
}

/// A network binding plugin by name.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginBinding {
    pub name: String,
}

/// A port forwarded to the guest (masquerade/slirp).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub name: Option<String>,
    /// `TCP` (default) or `UDP`.
    pub protocol: Option<String>,
    pub port: i32,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DhcpOptions {
    pub boot_file_name: Option<String>,
    pub tftp_server_name: Option<String>,
    pub ntp_servers: Option<Vec<String>>,
    pub private_options: Option<Vec<DhcpPrivateOption>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DhcpPrivateOption {
    pub option: i32,
    pub value: String,
}

/// A network the VMI can attach interfaces to: the pod network or a Multus network.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub name: String,
    /// The pod network.
    pub pod: Option<PodNetwork>,
    /// A Multus secondary network.
    pub multus: Option<MultusNetwork>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodNetwork {
    #[serde(rename = "vmNetworkCIDR")]
    pub vm_network_cidr: Option<String>,
    #[serde(rename = "vmIPv6NetworkCIDR")]
    pub vm_ipv6_network_cidr: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MultusNetwork {
    /// `<name>` or `<namespace>/<name>` of a NetworkAttachmentDefinition.
    pub network_name: String,
    pub default: Option<bool>,
}
