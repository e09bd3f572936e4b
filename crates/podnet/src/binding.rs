//! Which binding a VMI interface on the pod network uses, and whether we can run it.

use serde_json::Value;

use crate::{MacAddr, PodNetError, Result};

/// Transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port the pod IP forwards to the guest (upstream `interfaces[].ports[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortForward {
    pub protocol: Protocol,
    pub port: u16,
}

/// The binding of a pod-network interface, as this project runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// NAT behind the pod IP, a tap in a per-VM netns, DHCP from [`crate::DhcpServer`].
    Masquerade {
        ports: Vec<PortForward>,
        mac: Option<MacAddr>,
    },
    /// User-mode networking by Debian's `passt`; the guest sees the pod's address.
    Passt {
        ports: Vec<PortForward>,
        mac: Option<MacAddr>,
    },
}

/// Binding fields an upstream `Interface` may carry, with why we refuse the ones we refuse.
const REFUSED: &[(&str, &str)] = &[
    (
        "bridge",
        "the pod network has no layer-2 segment to bridge into on this node; use `masquerade: {}` (NAT behind the pod IP) or `binding: {name: passt}`",
    ),
    (
        "sriov",
        "SR-IOV needs a virtual function on a secondary (multus) network, never the pod network",
    ),
    (
        "macvtap",
        "macvtap needs a secondary (multus) network backed by a host interface, never the pod network",
    ),
    (
        "slirp",
        "slirp was removed upstream (KubeVirt v1.3); use `binding: {name: passt}` for user-mode networking",
    ),
];

/// Reads the binding of one upstream `Interface` (as JSON, e.g. `serde_json::to_value` of the
/// API type) attached to the pod network. `path` is the field path of the interface, e.g.
/// `spec.domain.devices.interfaces[0]`, used in error messages.
///
/// No binding at all means masquerade: this project's default for the pod network.
pub fn binding_for(iface: &Value, path: &str) -> Result<Binding> {
    let obj = iface
        .as_object()
        .ok_or_else(|| PodNetError::InvalidInterface {
            field: path.to_string(),
            reason: "must be an object".into(),
        })?;

    let mut kinds: Vec<&str> = Vec::new();
    for (field, reason) in REFUSED {
        if obj.contains_key(*field) {
            return Err(PodNetError::UnsupportedBinding {
                field: format!("{path}.{field}"),
                binding: (*field).to_string(),
                reason: (*reason).to_string(),
            });
        }
    }
    if obj.contains_key("masquerade") {
        kinds.push("masquerade");
    }
    if obj.contains_key("passt") {
        kinds.push("passt");
    }
    if let Some(plugin) = obj.get("binding") {
        let name = plugin.get("name").and_then(Value::as_str).ok_or_else(|| {
            PodNetError::InvalidInterface {
                field: format!("{path}.binding.name"),
                reason: "required string".into(),
            }
        })?;
        match name {
            "passt" => kinds.push("passt"),
            other => {
                return Err(PodNetError::UnsupportedBinding {
                    field: format!("{path}.binding.name"),
                    binding: other.to_string(),
                    reason: "unknown network binding plugin; this project provides `passt`".into(),
                })
            }
        }
    }
    if kinds.len() > 1 {
        return Err(PodNetError::InvalidInterface {
            field: path.to_string(),
            reason: format!("only one binding may be set, found {}", kinds.join(", ")),
        });
    }

    let ports = parse_ports(obj.get("ports"), &format!("{path}.ports"))?;
    let mac = match obj.get("macAddress") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            Some(
                s.parse::<MacAddr>()
                    .map_err(|reason| PodNetError::InvalidInterface {
                        field: format!("{path}.macAddress"),
                        reason,
                    })?,
            )
        }
        Some(_) => {
            return Err(PodNetError::InvalidInterface {
                field: format!("{path}.macAddress"),
                reason: "must be a string".into(),
            })
        }
    };

    Ok(match kinds.first().copied() {
        Some("passt") => Binding::Passt { ports, mac },
        _ => Binding::Masquerade { ports, mac },
    })
}

fn parse_ports(ports: Option<&Value>, path: &str) -> Result<Vec<PortForward>> {
    let Some(ports) = ports else {
        return Ok(Vec::new());
    };
    if ports.is_null() {
        return Ok(Vec::new());
    }
    let list = ports
        .as_array()
        .ok_or_else(|| PodNetError::InvalidInterface {
            field: path.to_string(),
            reason: "must be a list".into(),
        })?;
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let port =
            p.get("port")
                .and_then(Value::as_i64)
                .ok_or_else(|| PodNetError::InvalidInterface {
                    field: format!("{field}.port"),
                    reason: "required integer".into(),
                })?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| PodNetError::InvalidInterface {
                field: format!("{field}.port"),
                reason: format!("{port} is not a port number (1-65535)"),
            })?;
        let protocol = match p.get("protocol").and_then(Value::as_str) {
            None | Some("") | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some(other) => {
                return Err(PodNetError::InvalidInterface {
                    field: format!("{field}.protocol"),
                    reason: format!(
                        "unsupported value {other:?}: supported values: \"TCP\", \"UDP\""
                    ),
                })
            }
        };
        let fwd = PortForward { protocol, port };
        if !out.contains(&fwd) {
            out.push(fwd);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: &str = "spec.domain.devices.interfaces[0]";

    #[test]
    fn masquerade_with_ports_and_mac() {
        let b = binding_for(
            &json!({"name": "default", "masquerade": {}, "macAddress": "52:54:00:12:34:56",
                    "ports": [{"port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
            P,
        )
        .unwrap();
        assert_eq!(
            b,
            Binding::Masquerade {
                ports: vec![
                    PortForward {
                        protocol: Protocol::Tcp,
                        port: 80
                    },
                    PortForward {
                        protocol: Protocol::Udp,
                        port: 53
                    }
                ],
                mac: Some("52:54:00:12:34:56".parse().unwrap()),
            }
        );
    }

    #[test]
    fn no_binding_defaults_to_masquerade() {
        let b = binding_for(&json!({"name": "default"}), P).unwrap();
        assert_eq!(
            b,
            Binding::Masquerade {
                ports: vec![],
                mac: None
            }
        );
    }

    #[test]
    fn passt_plugin_and_core_field() {
        for iface in [
            json!({"name": "default", "binding": {"name": "passt"}}),
            json!({"name": "default", "passt": {}}),
        ] {
            assert!(matches!(
                binding_for(&iface, P).unwrap(),
                Binding::Passt { .. }
            ));
        }
    }

    #[test]
    fn refused_bindings_say_why_and_where() {
        for kind in ["bridge", "sriov", "macvtap", "slirp"] {
            let err = binding_for(&json!({"name": "default", kind: {}}), P).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("{P}.{kind}: binding `{kind}`")),
                "{msg}"
            );
            assert!(msg.contains("not supported on the pod network"), "{msg}");
        }
        let err = binding_for(&json!({"name": "default", "bridge": {}}), P).unwrap_err();
        assert!(err.to_string().contains("masquerade"), "{err}");
    }

    #[test]
    fn bad_input_gets_field_paths() {
        let cases = [
            (
                json!({"masquerade": {}, "binding": {"name": "passt"}}),
                P.to_string(),
            ),
            (
                json!({"binding": {"name": "vdpa"}}),
                format!("{P}.binding.name"),
            ),
            (json!({"binding": {}}), format!("{P}.binding.name")),
            (
                json!({"ports": [{"port": 0}]}),
                format!("{P}.ports[0].port"),
            ),
            (
                json!({"ports": [{"port": 70000}]}),
                format!("{P}.ports[0].port"),
            ),
            (
                json!({"ports": [{"port": 1, "protocol": "SCTP"}]}),
                format!("{P}.ports[0].protocol"),
            ),
            (json!({"ports": {}}), format!("{P}.ports")),
            (json!({"macAddress": "zz"}), format!("{P}.macAddress")),
            (json!("x"), P.to_string()),
        ];
        for (iface, field) in cases {
            let err = binding_for(&iface, P).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("{field}: ")),
                "{iface}: {err}"
            );
        }
    }
}
