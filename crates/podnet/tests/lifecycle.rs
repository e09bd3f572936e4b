//! Setup, adopt and teardown of real namespaces, links and nft rules (needs root).

mod common;

use std::net::Ipv4Addr;

use common::{assert_gone, ok, sh, TestNet};
use kubevirt_podnet::{MasqueradeConfig, PodNetError, PodNetwork, PortForward, Protocol};

#[test]
fn setup_builds_the_pod_and_teardown_leaves_nothing() {
    let t = TestNet::new(11);
    let mut cfg = MasqueradeConfig::new(t.vm_id("a"), "vm-a");
    cfg.ports = vec![PortForward {
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    let h = t.net.setup(cfg).unwrap();
    let ns = &h.netns_name;

    assert_eq!(h.pod_ip, Ipv4Addr::new(10, 251, 11, 2));
    assert!(h.netns_path.starts_with("/run/netns"));
    assert!(ok("ip netns list").contains(ns.as_str()));
    // `ip netns exec` works on it, for debugging.
    let addrs = ok(&format!("ip netns exec {ns} ip -o -4 addr"));
    assert!(addrs.contains("eth0    inet 10.251.11.2/24"), "{addrs}");
    assert!(addrs.contains("k6t-eth0    inet 10.0.2.1/24"), "{addrs}");
    let tap = ok(&format!("ip -n {ns} -d link show dev tap0"));
    assert!(tap.contains("master k6t-eth0"), "{tap}");
    assert!(tap.contains("tun type tap"), "{tap}");
    let route = ok(&format!("ip -n {ns} route show default"));
    assert!(route.contains("via 10.251.11.1 dev eth0"), "{route}");
    assert_eq!(
        ok(&format!(
            "ip netns exec {ns} cat /proc/sys/net/ipv4/ip_forward"
        ))
        .trim(),
        "1"
    );
    let rules = ok(&format!(
        "ip netns exec {ns} nft list table ip kubevirt_masq"
    ));
    assert!(rules.contains("tcp dport 8080"), "{rules}");
    assert!(rules.contains("dnat to 10.0.2.2"), "{rules}");
    assert!(rules.contains("masquerade"), "{rules}");
    let veth = ok(&format!("ip link show dev {}", h.host_veth));
    assert!(
        veth.contains(&format!("master {}", h.host_bridge)),
        "{veth}"
    );
    let host_rules = ok(&format!(
        "nft list table ip kubevirt_pods_{}",
        h.host_bridge
    ));
    assert!(
        host_rules.contains("ip saddr 10.251.11.0/24"),
        "{host_rules}"
    );
    // The host reaches the pod IP over the bridge.
    ok(&format!("busybox ping -c1 -W5 {}", h.pod_ip));

    // A second setup of the same VM is refused; adopt finds it from the records.
    match t.net.setup(MasqueradeConfig::new(t.vm_id("a"), "vm-a")) {
        Err(PodNetError::AlreadySetUp { .. }) => {}
        other => panic!("expected AlreadySetUp, got {other:?}"),
    }
    let restarted = PodNetwork::new(t.net.config().clone()).unwrap();
    assert_eq!(restarted.adopt(&h.vm_id).unwrap(), h);
    assert_eq!(restarted.list().unwrap(), vec![h.clone()]);

    h.teardown().unwrap();
    assert_gone(&h);
    h.teardown().unwrap(); // idempotent
    match restarted.adopt(&h.vm_id) {
        Err(PodNetError::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }

    assert!(t.net.teardown_host().unwrap());
    let (exists, _) = sh(&format!("ip link show dev {}", h.host_bridge));
    assert!(!exists, "bridge still there");
    let (exists, _) = sh(&format!(
        "nft list table ip kubevirt_pods_{}",
        h.host_bridge
    ));
    assert!(!exists, "host nft table still there");
}

#[test]
fn two_vms_get_different_pod_ips_and_restarts_do_not_reuse_them() {
    let t = TestNet::new(12);
    let a = t
        .net
        .setup(MasqueradeConfig::new(t.vm_id("a"), "a"))
        .unwrap();
    // With a port list only that port goes to the (absent) guest; ICMP stays in the pod.
    let mut cfg_b = MasqueradeConfig::new(t.vm_id("b"), "b");
    cfg_b.ports = vec![PortForward {
        protocol: Protocol::Tcp,
        port: 80,
    }];
    let b = t.net.setup(cfg_b).unwrap();
    assert_ne!(a.pod_ip, b.pod_ip);
    assert_ne!(a.netns_name, b.netns_name);
    assert_ne!(a.mac, b.mac);
    // Pod to pod over the host bridge.
    ok(&format!(
        "ip netns exec {} busybox ping -c1 -W5 {}",
        a.netns_name, b.pod_ip
    ));

    // A new PodNetwork over the same state (a restarted launcher) hands out a third address.
    let restarted = PodNetwork::new(t.net.config().clone()).unwrap();
    let c = restarted
        .setup(MasqueradeConfig::new(t.vm_id("c"), "c"))
        .unwrap();
    assert!(c.pod_ip != a.pod_ip && c.pod_ip != b.pod_ip, "{c:?}");

    // The host bridge stays while VMs use it.
    assert!(!t.net.teardown_host().unwrap());
    for h in [&a, &b, &c] {
        h.teardown().unwrap();
        assert_gone(h);
    }
    assert!(t.net.teardown_host().unwrap());
}

#[test]
fn leftovers_of_a_crashed_setup_are_cleaned_by_the_next_setup() {
    let t = TestNet::new(13);
    let h = t
        .net
        .setup(MasqueradeConfig::new(t.vm_id("a"), "a"))
        .unwrap();
    // Simulate a crash after the record was written but the namespace vanished.
    ok(&format!("ip netns del {}", h.netns_name));
    let again = t
        .net
        .setup(MasqueradeConfig::new(t.vm_id("a"), "a"))
        .unwrap();
    assert_eq!(again.pod_ip, h.pod_ip);
    assert!(again.netns_path.exists());
    again.teardown().unwrap();
    assert_gone(&again);
}

#[test]
fn a_corrupt_record_does_not_block_the_vm_forever() {
    let t = TestNet::new(14);
    let h = t
        .net
        .setup(MasqueradeConfig::new(t.vm_id("a"), "a"))
        .unwrap();
    let record = std::fs::read_dir(t.state.path().join("vms"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&record, b"{ torn").unwrap();
    assert_eq!(t.net.list().unwrap(), vec![]);
    match t.net.adopt(&h.vm_id) {
        Err(PodNetError::StateCorrupt { .. }) => {}
        other => panic!("expected StateCorrupt, got {other:?}"),
    }
    let again = t
        .net
        .setup(MasqueradeConfig::new(t.vm_id("a"), "a"))
        .unwrap();
    assert_eq!(again.pod_ip, h.pod_ip);
    assert_eq!(t.net.adopt(&h.vm_id).unwrap(), again);
    again.teardown().unwrap();
    assert_gone(&again);
}
