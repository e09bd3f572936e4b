//! A real guest (the busybox test guest under TCG) on the pod network (needs root).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{assert_gone, Qemu, TestNet};
use kubevirt_podnet::{MasqueradeConfig, Passt, PasstConfig, PodMode, PortForward, Protocol};

const BOOT: Duration = Duration::from_secs(90);
const CMD: Duration = Duration::from_secs(30);

/// Connects to `addr` until it answers (the guest's listener may restart between
/// connections), sends a request line, and returns what comes back before the close.
/// The client speaks first, like HTTP: Debian 12's passt only connects an inbound
/// connection through to the guest once the client has sent data.
fn request(addr: SocketAddr, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(b"hello-from-host\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if !text.is_empty() {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing from {addr} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masquerade_guest_gets_dhcp_reaches_host_and_is_reached_through_pod_ip() {
    let t = TestNet::new(21);
    let mut cfg = MasqueradeConfig::new(t.vm_id("guest"), "podnet-guest");
    cfg.ports = vec![PortForward {
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    let h = t.net.setup(cfg).unwrap();
    let dhcp = tokio::spawn(h.dhcp_server().unwrap().serve());

    let mut vm = {
        let h = h.clone();
        tokio::task::spawn_blocking(move || Qemu::boot(Some(&h.netns_path), &h.qemu_args("net0")))
            .await
            .unwrap()
    };
    let console = &mut vm.console;
    // The guest prints the address its DHCP client was given (from our server).
    console.wait_for("guest-ip: 10.0.2.2\r\n", BOOT).unwrap();
    console.wait_for("KUBEVIRT-RS-GUEST-READY", BOOT).unwrap();
    let resolv = console.run("cat /etc/resolv.conf; ip route", CMD).unwrap();
    assert!(resolv.contains("default via 10.0.2.1"), "{resolv}");
    for dns in &h.dns {
        assert!(resolv.contains(&format!("nameserver {dns}")), "{resolv}");
    }

    // Guest -> host: a TCP server on the pod gateway (the host bridge address) sees the
    // guest arrive masqueraded as the pod IP.
    let listener = TcpListener::bind((t.gateway(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        (peer, text)
    });
    console
        .run(
            &format!("echo hello-from-guest | nc {} {port}", t.gateway()),
            CMD,
        )
        .unwrap();
    let (peer, text) = server.join().unwrap();
    assert_eq!(text.trim(), "hello-from-guest");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(h.pod_ip));

    // Host -> guest: the pod IP's port 8080 is DNATed to the guest.
    console
        .send_line("while true; do echo guest-says-hi | nc -l -p 8080; done &")
        .unwrap();
    // Connect once the guest listens, so the first attempt already tests the path.
    console
        .run(
            "until netstat -ltn | grep -q :8080; do sleep 0.2; done",
            CMD,
        )
        .unwrap();
    let got = request(SocketAddr::from((h.pod_ip, 8080)), CMD);
    assert_eq!(got.trim(), "guest-says-hi");
    console.wait_for("hello-from-host", CMD).unwrap();
    // Inbound connections reach the guest from the gateway (SNAT), as in KubeVirt.
    let rules = common::ok(&format!(
        "ip netns exec {} nft list table ip kubevirt_masq",
        h.netns_name
    ));
    let snat = rules
        .lines()
        .find(|l| l.contains("snat to 10.0.2.1"))
        .unwrap_or_else(|| panic!("{rules}"));
    assert!(
        !snat.contains("packets 0 "),
        "SNAT rule never matched: {snat}"
    );

    vm.stop();
    dhcp.abort();
    let _ = dhcp.await;
    h.teardown().unwrap();
    assert_gone(&h);
}

#[test]
fn passt_gives_the_guest_the_pod_address_and_forwards_ports() {
    let t = TestNet::new(22);
    let mut cfg = MasqueradeConfig::new(t.vm_id("passt"), "passt-guest");
    cfg.mode = PodMode::Passt;
    let h = t.net.setup(cfg).unwrap();
    let (has_tap, _) = common::sh(&format!("ip -n {} link show dev tap0", h.netns_name));
    assert!(!has_tap, "a passt pod has no tap");
    let sockets = tempfile::tempdir().unwrap();
    let mut pc = PasstConfig::new(Some(h.netns_path.clone()), sockets.path().join("passt"));
    pc.ports = vec![PortForward {
        protocol: Protocol::Tcp,
        port: 8081,
    }];
    let mut passt = Passt::start(&pc).unwrap();
    let mut vm = Qemu::boot(None, &passt.qemu_args("net0", &h.mac));
    let console = &mut vm.console;
    // passt's own DHCP hands out the address of the namespace it runs in: the pod IP.
    console
        .wait_for(&format!("guest-ip: {}\r\n", h.pod_ip), BOOT)
        .unwrap();
    console.wait_for("KUBEVIRT-RS-GUEST-READY", BOOT).unwrap();

    // The pod IP's port 8081 reaches the guest through passt.
    console
        .send_line("while true; do echo passt-says-hi | nc -l -p 8081; done &")
        .unwrap();
    // Connect once the guest listens, so the first attempt already tests the path.
    console
        .run(
            "until netstat -ltn | grep -q :8081; do sleep 0.2; done",
            CMD,
        )
        .unwrap();
    let got = request(SocketAddr::from((h.pod_ip, 8081)), CMD);
    assert_eq!(got.trim(), "passt-says-hi");

    vm.stop();
    passt.stop();
    assert!(!passt.socket_path().exists());
    h.teardown().unwrap();
    assert_gone(&h);
}
