//! Services carry traffic to VMs in embedded mode, as kube-proxy would: `virtctl expose`
//! creates the Service, the API server allocates its cluster IP and node port, and the
//! host reaches the guest's TCP server through 127.0.0.1:<nodePort> and <clusterIP>:80,
//! and its UDP server the same way.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{hostdisk_vm, tail, wait_until, ConsoleCapture, Server};

/// What a UDP server at `addr` answers to `message` (empty on failure).
fn ask_udp(addr: &str, message: &str) -> String {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if sock.send_to(message.as_bytes(), addr).is_err() {
        return String::new();
    }
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

/// What a TCP server at `addr` answers (empty on failure).
fn ask(addr: &str) -> String {
    let Ok(mut s) =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
    else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.trim().to_string()
}

#[test]
fn expose_carries_tcp_and_udp_to_the_guest() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let name = "web";
    server.apply_yaml(&hostdisk_vm(name, "Always", &server.data_dir).replace(
        "  template:\n    spec:\n",
        "  template:\n    metadata:\n      labels: {app: web}\n    spec:\n",
    ));
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    let mut console = ConsoleCapture::start(&server, name);
    console.wait_for(kubevirt_testenv::READY_MARKER);
    console.send(
        "udp-echo 5353 & (while true; do echo hello-from-guest | nc -l -p 8080; done) & until netstat -ltn | grep -q :8080; do sleep 0.2; done; echo listening-$((3+3))\r",
    );
    console.wait_for("listening-6");

    let out = server.virtctl(&[
        "expose",
        "vm",
        name,
        "--name",
        "svc",
        "--port",
        "80",
        "--target-port",
        "8080",
        "--type",
        "NodePort",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Service svc successfully created for vm web"
    );
    let cluster_ip = server.jsonpath("svc", "svc", "{.spec.clusterIP}");
    let node_port = server.jsonpath("svc", "svc", "{.spec.ports[0].nodePort}");
    assert!(cluster_ip.starts_with("10."), "{cluster_ip}");
    let np: u16 = node_port.parse().unwrap();
    assert!((30000..=32767).contains(&np));
    assert_eq!(
        server.jsonpath("svc", "svc", "{.spec.externalTrafficPolicy}"),
        "Cluster"
    );
    assert_eq!(
        server.jsonpath("svc", "svc", "{.metadata.ownerReferences[0].kind}"),
        "VirtualMachine"
    );

    // The pod becomes an endpoint once Ready; the rules follow.
    let pod_ip = server.jsonpath("vmi", name, "{.status.interfaces[0].ipAddress}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.jsonpath("endpoints", "svc", "{.subsets[0].addresses[0].ip}") != pod_ip {
        assert!(
            std::time::Instant::now() < deadline,
            "no endpoint {pod_ip}:\n{}\n{}\n{}",
            String::from_utf8_lossy(
                &server
                    .kubectl(&["get", "endpoints,pods", "-o", "yaml"])
                    .stdout
            ),
            server.kubectl_ok(&["get", "pods", "--show-labels"]),
            tail(&server.log(), 60)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // One address at a time: the guest's `nc` serves one connection, then the loop starts
    // another, so asking both at once races that restart.
    wait_until("the guest answering on the node port", || {
        ask(&format!("127.0.0.1:{np}")) == "hello-from-guest"
    });
    wait_until("the guest answering on the cluster IP", || {
        ask(&format!("{cluster_ip}:80")) == "hello-from-guest"
    });

    // UDP goes through as well: a second Service for the guest's UDP echo server.
    let out = server.virtctl(&[
        "expose",
        "vm",
        name,
        "--name",
        "echo",
        "--port",
        "53",
        "--target-port",
        "5353",
        "--protocol",
        "UDP",
        "--type",
        "NodePort",
    ]);
    assert!(out.status.success(), "{out:?}");
    let udp_ip = server.jsonpath("svc", "echo", "{.spec.clusterIP}");
    let udp_port = server.jsonpath("svc", "echo", "{.spec.ports[0].nodePort}");
    assert_eq!(
        server.jsonpath("svc", "echo", "{.spec.ports[0].protocol}"),
        "UDP"
    );
    wait_until("the guest answering UDP on the node port", || {
        ask_udp(&format!("127.0.0.1:{udp_port}"), "via-node-port") == "echo:via-node-port"
    });
    wait_until("the guest answering UDP on the cluster IP", || {
        ask_udp(&format!("{udp_ip}:53"), "via-cluster-ip") == "echo:via-cluster-ip"
    });

    // Another Service may not take the same node port or cluster IP.
    let out = server.apply_output(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: thief}}\nspec:\n  type: NodePort\n  clusterIP: {cluster_ip}\n  ports: [{{port: 1, nodePort: {np}}}]\n"
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "spec.ports[0].nodePort: Invalid value: {np}: provided port is already allocated"
        )) && err.contains("provided IP is already allocated"),
        "{err}"
    );

    // A hostile spec gets its field path, and no rule.
    let out = server.apply_output(
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 0, nodePort: 22}]\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        ),
        "{err}"
    );

    // Deleting the Service removes its rules and its Endpoints.
    server.kubectl_ok(&["delete", "svc", "svc"]);
    // (Asking the port proves nothing here: it is also refused while the guest restarts
    // its server.)
    wait_until("rules removed", || {
        let table = std::process::Command::new("nft")
            .args(["list", "table", "ip", "kubevirt_services"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&table.stdout);
        !table.contains(&format!("dport {np} ")) && !table.contains(&cluster_ip)
    });
    wait_until("endpoints removed", || {
        !server
            .kubectl(&["get", "endpoints", "svc"])
            .status
            .success()
    });
}
