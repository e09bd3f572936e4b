//! Service load-balancing on the host, as kube-proxy's nftables mode does: one table,
//! `ip kubevirt_services`, replaced whole on every change. Cluster IPs (from pods, through
//! `prerouting`, and from the host, through `output`) and node ports (on every local
//! address, 127.0.0.1 included) are DNATed to a random ready endpoint (`numgen random`).
//!
//! Only numbers and addresses reach the script (never a tenant's names), so a Service
//! cannot inject rules; a port and address set only matches its own traffic: cluster IPs
//! are matched exactly, node ports only towards local addresses.
//!
//! Node-port traffic and a pod reaching itself through a Service are masqueraded
//! (kube-proxy's rules); DNAT of 127.0.0.1 to a pod needs `route_localnet` on the pod
//! bridge, which [`apply`] sets. With it, a packet arriving from outside for 127.0.0.0/8
//! would reach the host's loopback services (CVE-2020-8558): `localnet_guard` drops it
//! before connection tracking (replies to our own DNAT still carry the bridge address
//! there). The table stays when the server stops, as the pods'
//! host table does: running VMs stay reachable.

use std::net::Ipv4Addr;

use crate::{Protocol, Result};

/// The host table.
pub const SERVICES_TABLE: &str = "kubevirt_services";
/// The packet mark bit asking for masquerade (kube-proxy's 0x4000).
const MASQ_MARK: u32 = 0x4000;

/// One port of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub protocol: Protocol,
    /// The cluster IP and port, if the Service has one.
    pub cluster_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints: pod IP and target port.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The table's script for `nft -f -`.
pub fn ruleset(ports: &[ServicePort]) -> String {
    let t = SERVICES_TABLE;
    let mut dispatch = String::new();
    let mut reject = String::new();
    let mut chains = String::new();
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.nft_name();
        if p.endpoints.is_empty() {
            // kube-proxy refuses traffic to a Service without endpoints at once.
            if let Some(ip) = p.cluster_ip {
                reject.push_str(&format!(
                    "\t\tip daddr {ip} {proto} dport {} reject\n",
                    p.port
                ));
            }
            if let Some(np) = p.node_port {
                reject.push_str(&format!(
                    "\t\tfib daddr type local {proto} dport {np} reject\n"
                ));
            }
            continue;
        }
        if let Some(ip) = p.cluster_ip {
            dispatch.push_str(&format!(
                "\t\tip daddr {ip} {proto} dport {} goto svc{i}\n",
                p.port
            ));
        }
        if let Some(np) = p.node_port {
            dispatch.push_str(&format!(
                "\t\tfib daddr type local {proto} dport {np} goto nodeport{i}\n"
            ));
            chains.push_str(&format!(
                "\tchain nodeport{i} {{\n\t\tmeta mark set meta mark or {MASQ_MARK:#x}\n\t\tgoto svc{i}\n\t}}\n"
            ));
        }
        let n = p.endpoints.len();
        let targets: Vec<String> = (0..n).map(|e| format!("{e} : goto ep{i}_{e}")).collect();
        chains.push_str(&format!(
            "\tchain svc{i} {{\n\t\tnumgen random mod {n} vmap {{ {} }}\n\t}}\n",
            targets.join(", ")
        ));
        for (e, (ip, port)) in p.endpoints.iter().enumerate() {
            chains.push_str(&format!(
                "\tchain ep{i}_{e} {{\n\
                 \t\tip saddr {ip} meta mark set meta mark or {MASQ_MARK:#x}\n\
                 \t\tmeta l4proto {proto} dnat to {ip}:{port}\n\t}}\n"
            ));
        }
    }
    format!(
        "{replace}table ip {t} {{\n\
         \tchain services {{\n\
         {dispatch}\
         \t}}\n\
         {chains}\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tjump services\n\
         \t}}\n\
         \tchain localnet_guard {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname != \"lo\" ip daddr 127.0.0.0/8 drop\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tjump services\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark & {:#x} masquerade\n\
         \t}}\n\
         \tchain no_endpoints {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         {reject}\
         \t}}\n\
         \tchain no_endpoints_in {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         {reject}\
         \t}}\n\
         \tchain no_endpoints_fwd {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {reject}\
         \t}}\n\
         }}\n",
        !MASQ_MARK,
        // An empty table first, so the delete never fails: the whole script replaces it.
        replace = crate::nft::delete_table(t),
    )
}

/// Replaces the host's services table with `ports` (atomically), and lets 127.0.0.1 be
/// DNATed onto `bridge` (`route_localnet`).
pub fn apply(bridge: &str, ports: &[ServicePort]) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    if let Err(e) = std::fs::write(&path, "1") {
        // The bridge appears with the first pod; node ports on 127.0.0.1 wait for it.
        tracing::debug!(%path, error = %e, "route_localnet not set");
    }
    crate::cmd::nft(None, &ruleset(ports))
}

/// Removes the table (tests; the server leaves it).
pub fn remove() -> Result<()> {
    crate::cmd::nft(None, &crate::nft::delete_table(SERVICES_TABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cluster_ip_node_port_and_balancing() {
        let s = ruleset(&[
            ServicePort {
                protocol: Protocol::Tcp,
                cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
                port: 80,
                node_port: Some(30080),
                endpoints: vec![
                    (Ipv4Addr::new(10, 244, 0, 5), 8080),
                    (Ipv4Addr::new(10, 244, 0, 6), 8080),
                ],
            },
            ServicePort {
                protocol: Protocol::Udp,
                cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 11)),
                port: 53,
                node_port: None,
                endpoints: vec![],
            },
        ]);
        assert!(s.contains("ip daddr 10.96.0.10 tcp dport 80 goto svc0\n"));
        assert!(s.contains("fib daddr type local tcp dport 30080 goto nodeport0\n"));
        assert!(s.contains("numgen random mod 2 vmap { 0 : goto ep0_0, 1 : goto ep0_1 }"));
        assert!(s.contains("meta l4proto tcp dnat to 10.244.0.6:8080"));
        assert!(s.contains("ip daddr 10.96.0.11 udp dport 53 reject\n"));
        assert!(!s.contains("svc1"));
        assert!(s.contains("iifname != \"lo\" ip daddr 127.0.0.0/8 drop"));
        assert!(s.starts_with("table ip kubevirt_services {}\ndelete table ip kubevirt_services\n"));
    }

    /// The script is what `nft` accepts (check mode changes nothing; needs root and nft).
    #[test]
    fn nft_accepts_the_script() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let script = ruleset(&[
            ServicePort {
                protocol: Protocol::Udp,
                cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
                port: 53,
                node_port: Some(30053),
                endpoints: vec![(Ipv4Addr::new(10, 244, 0, 5), 5353)],
            },
            ServicePort {
                protocol: Protocol::Tcp,
                cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 11)),
                port: 80,
                node_port: Some(30080),
                endpoints: vec![],
            },
        ])
        // Check mode cannot delete a table that is not there.
        .replacen("delete table ip kubevirt_services\n", "", 1);
        let mut cmd = std::process::Command::new("nft");
        cmd.args(["-c", "-f", "-"]);
        match crate::cmd::run_cmd(cmd, Some(&script)) {
            Ok(_) => {}
            Err(crate::PodNetError::Spawn { .. }) => {}
            Err(e) => panic!("{e}\n{script}"),
        }
    }
}
