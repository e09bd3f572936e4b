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

/// Addresses are reused (lowest free first): the host forgets the old pod's MAC, so the
/// new pod is reachable at once rather than when the neighbour entry ages out.
#[test]
fn a_reused_pod_ip_is_reachable_at_once() {
    let t = TestNet::new(16);
    // Another pod keeps the bridge's carrier up: a bridge losing its last port would
    // flush its neighbours by itself.
    let other = t
        .net
        .setup(MasqueradeConfig::new(t.vm_id("other"), "other"))
        .unwrap();
    let a = t
        .net
        .setup(MasqueradeConfig::new(t.vm_id("a"), "a"))
        .unwrap();
    a.teardown().unwrap();
    let ip = a.pod_ip;
    let br = &a.host_bridge;
    ok(&format!(
        "ip neigh replace {ip} lladdr 02:00:00:00:00:01 dev {br} nud reachable"
    ));
    // With a port list, ICMP stays in the pod (it answers the ping).
    let mut cfg = MasqueradeConfig::new(t.vm_id("b"), "b");
    cfg.ports = vec![PortForward {
        protocol: Protocol::Tcp,
        port: 80,
    }];
    let b = t.net.setup(cfg).unwrap();
    assert_eq!(b.pod_ip, ip);
    let neigh = ok(&format!("ip neigh show {ip} dev {br}"));
    assert!(!neigh.contains("02:00:00:00:00:01"), "{neigh}");
    ok(&format!("busybox ping -c1 -W5 {ip}"));
    b.teardown().unwrap();
    other.teardown().unwrap();
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

/// Opens `tap` in `netns` as QEMU does: the tap's carrier is on while the descriptor lives.
fn attach(netns: &std::path::Path, tap: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let name = tap.to_string();
    kubevirt_podnet::run_in_netns(netns, move || {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        // SAFETY: an all-zero ifreq is valid; the name is shorter than IFNAMSIZ.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
        // SAFETY: TUNSETIFF reads the ifreq we own for the duration of the call.
        assert_eq!(
            unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &req) },
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        tun
    })
    .unwrap()
}

/// A migration target on this node gets a tap of its own on the same bridge; whoever's
/// QEMU ends first leaves the network to the other, the last one removes it.
#[test]
fn a_second_tap_for_a_migration_target_and_release_by_the_last_user() {
    let t = TestNet::new(15);
    let source = t
        .net
        .setup(MasqueradeConfig::new(t.vm_id("a"), "a"))
        .unwrap();
    let ns = source.netns_name.clone();
    let gateway_mac = || {
        let link = ok(&format!("ip -n {ns} -br link show dev k6t-eth0"));
        link.split_whitespace().nth(2).unwrap().to_string()
    };
    let gateway = gateway_mac();
    let target = source.add_tap().unwrap();
    assert_eq!(target.tap_name, "tap1");
    assert_eq!((target.mac, target.pod_ip), (source.mac, source.pod_ip));
    let tap = ok(&format!("ip -n {ns} -d link show dev tap1"));
    assert!(tap.contains("master k6t-eth0"), "{tap}");
    assert!(tap.contains("tun type tap"), "{tap}");
    assert_eq!(source.taps_in_use().unwrap(), Vec::<String>::new());

    let source_qemu = attach(&source.netns_path, "tap0");
    let target_qemu = attach(&target.netns_path, "tap1");
    assert_eq!(source.taps_in_use().unwrap(), vec!["tap0", "tap1"]);

    // The source's QEMU ends (the guest moved): it leaves, the network stays.
    drop(source_qemu);
    assert!(!source.release().unwrap(), "kept for the target");
    let (has_tap0, _) = sh(&format!("ip -n {ns} link show dev tap0"));
    assert!(!has_tap0, "the source's tap is gone");
    assert_eq!(gateway_mac(), gateway, "the guest's gateway keeps its MAC");
    assert!(source.netns_path.exists());
    // A later launcher of this VM finds it without tap0, and the next target gets tap0.
    let adopted = t.net.adopt(&source.vm_id).unwrap();
    assert_eq!(adopted.pod_ip, source.pod_ip);
    let next = target.add_tap().unwrap();
    assert_eq!(next.tap_name, "tap0");
    next.remove_tap().unwrap();
    next.remove_tap().unwrap(); // gone already: fine

    // A running QEMU keeps its network even from a launcher that would rebuild it.
    assert_eq!(adopted.taps_in_use().unwrap(), vec!["tap1"]);
    drop(target_qemu);
    assert_eq!(adopted.taps_in_use().unwrap(), Vec::<String>::new());
    assert!(target.release().unwrap(), "the last user removes it");
    assert_gone(&target);
    assert!(target.release().unwrap(), "again: nothing left to do");
}
