//! nftables rulesets, rendered as text for `nft -f -`. Each script replaces its table
//! atomically (declare, delete, recreate in one transaction), so applying twice is harmless.

use std::net::Ipv4Addr;

use crate::PortForward;

/// Table inside each VM's netns.
pub(crate) const NETNS_TABLE: &str = "kubevirt_masq";

/// NAT inside the VM's network namespace, following KubeVirt's masquerade binding:
/// the guest leaves as the pod IP; the pod IP's ports reach the guest, and the guest sees
/// such inbound connections coming from the gateway (10.0.2.1).
pub(crate) fn netns_ruleset(
    pod_iface: &str,
    pod_ip: Ipv4Addr,
    bridge: &str,
    gateway: Ipv4Addr,
    guest: Ipv4Addr,
    ports: &[PortForward],
) -> String {
    let mut dnat = String::new();
    if ports.is_empty() {
        dnat.push_str(&format!(
            "\t\tiifname \"{pod_iface}\" ip daddr {pod_ip} counter dnat to {guest}\n"
        ));
    } else {
        for p in ports {
            dnat.push_str(&format!(
                "\t\tiifname \"{pod_iface}\" ip daddr {pod_ip} {proto} dport {port} counter dnat to {guest}\n",
                proto = p.protocol.nft_name(),
                port = p.port
            ));
        }
    }
    format!(
        "table ip {NETNS_TABLE} {{}}\n\
         delete table ip {NETNS_TABLE}\n\
         table ip {NETNS_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {dnat}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {guest} oifname \"{pod_iface}\" counter masquerade\n\
         \t\toifname \"{bridge}\" ip daddr {guest} ip saddr != {gateway} counter snat to {gateway}\n\
         \t}}\n\
         }}\n"
    )
}

/// Table name on the host for one pod bridge (nft names: letters, digits, underscore).
pub(crate) fn host_table(bridge: &str) -> String {
    let clean: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kubevirt_pods_{clean}")
}

/// Host side: pods leave the node masqueraded behind the node's address. Matching on the
/// destination (not `oifname`) keeps pod-to-pod traffic unNATed even where br_netfilter
/// shows bridged packets to the IP hooks with the bridge port as output interface.
pub(crate) fn host_ruleset(bridge: &str, network: Ipv4Addr, prefix_len: u8) -> String {
    let t = host_table(bridge);
    format!(
        "table ip {t} {{}}\n\
         delete table ip {t}\n\
         table ip {t} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {network}/{prefix_len} ip daddr != {network}/{prefix_len} counter masquerade\n\
         \t}}\n\
         }}\n"
    )
}

pub(crate) fn delete_table(table: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    #[test]
    fn netns_rules_forward_listed_ports() {
        let s = netns_ruleset(
            "eth0",
            Ipv4Addr::new(10, 244, 0, 7),
            "k6t-eth0",
            Ipv4Addr::new(10, 0, 2, 1),
            Ipv4Addr::new(10, 0, 2, 2),
            &[
                PortForward {
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                PortForward {
                    protocol: Protocol::Udp,
                    port: 53,
                },
            ],
        );
        assert!(s.contains(
            "iifname \"eth0\" ip daddr 10.244.0.7 tcp dport 80 counter dnat to 10.0.2.2"
        ));
        assert!(s.contains(
            "iifname \"eth0\" ip daddr 10.244.0.7 udp dport 53 counter dnat to 10.0.2.2"
        ));
        assert!(s.contains("ip saddr 10.0.2.2 oifname \"eth0\" counter masquerade"));
        assert!(s.starts_with("table ip kubevirt_masq {}\ndelete table ip kubevirt_masq\n"));
    }

    #[test]
    fn netns_rules_forward_everything_without_ports() {
        let s = netns_ruleset(
            "eth0",
            Ipv4Addr::new(10, 244, 0, 7),
            "k6t-eth0",
            Ipv4Addr::new(10, 0, 2, 1),
            Ipv4Addr::new(10, 0, 2, 2),
            &[],
        );
        assert!(s.contains("iifname \"eth0\" ip daddr 10.244.0.7 counter dnat to 10.0.2.2\n"));
        assert!(!s.contains("dport"));
    }

    #[test]
    fn host_table_names_are_nft_safe() {
        assert_eq!(host_table("kvrs0"), "kubevirt_pods_kvrs0");
        assert_eq!(host_table("br-x.1"), "kubevirt_pods_br_x_1");
        let s = host_ruleset("kvrs0", Ipv4Addr::new(10, 244, 0, 0), 16);
        assert!(s.contains("ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 counter masquerade"));
    }
}
